/* optim: AdamW against its closed forms, its state files (round trip and
 * refusals), the schedules' landmarks, clipping. The bit-level comparison
 * with torch and transformers is tests/ref/test_optim_torch.py. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "lora.h"
#include "optim.h"
#include "safetensors.h"

static char root[] = "/tmp/test_optim.XXXXXX";

static const char *at(const char *name)
{
	static char buf[4][512];
	static int k;
	k = (k + 1) % 4;
	snprintf(buf[k], sizeof buf[k], "%s/%s", root, name);
	return buf[k];
}

static const struct adamw_hparams torch_defaults = {0.9, 0.999, 1e-8, 0.01};

/* Step 1 with no decay: m̂ = g, v̂ = g², so p moves by lr·g / (|g| + eps). */
static void test_first_step(void)
{
	enum { N = 1000 };
	float p[N], g[N], p0[N];
	for (int i = 0; i < N; i++) {
		p0[i] = p[i] = (float)(check_urand() - 0.5);
		g[i] = (float)((check_urand() - 0.5) * pow(10, 4 * check_urand() - 2));
	}
	g[7] = 0;
	struct err err = {0};
	struct adamw *o = adamw_new(N, &err);
	CHECK(o && o->step == 0, "%s", err.msg);
	if (!o)
		return;
	struct adamw_hparams h = {0.9, 0.999, 1e-8, 0};
	adamw_step(o, p, g, 1e-3, &h);
	double worst = 0;
	for (int i = 0; i < N; i++) {
		/* exact in double; allowed: the last bit of p twice, and 1e-5 of the step */
		double want = p0[i] - 1e-3 * g[i] / (fabs(g[i]) + 1e-8);
		worst = fmax(worst, fabs(p[i] - want) / (1e-3 * 1e-5 + 2 * fabs(want) * 0x1p-24));
	}
	CHECK(o->step == 1 && worst <= 1, "step %lld, worst error %g of the allowance", (long long)o->step, worst);
	CHECK(p[7] == p0[7] && o->m[7] == 0 && o->v[7] == 0, "a zero gradient moved p[7]");
	adamw_free(o);
	adamw_free(NULL);
}

/* Zero gradients leave only the decay: p·(1 - lr·wd), exactly. */
static void test_decay_only(void)
{
	float p[5] = {1, -2, 0.5f, 3e-8f, 0}, g[5] = {0};
	struct err err = {0};
	struct adamw *o = adamw_new(5, &err);
	adamw_step(o, p, g, 0.1, &torch_defaults);
	const float f = (float)(1 - 0.1 * 0.01);
	CHECK(p[0] == f && p[1] == -2 * f && p[2] == 0.5f * f && p[3] == 3e-8f * f && p[4] == 0, "%g %g %g %g %g",
	      (double)p[0], (double)p[1], (double)p[2], (double)p[3], (double)p[4]);
	adamw_free(o);
}

static void test_state_files(void)
{
	enum { N = 77 };
	float p[N], g[N];
	struct err err = {0};
	struct adamw *o = adamw_new(N, &err);
	for (int s = 0; s < 3; s++) {
		for (int i = 0; i < N; i++)
			g[i] = (float)(check_urand() - 0.5), p[i] = (float)check_urand();
		adamw_step(o, p, g, 1e-2, &torch_defaults);
	}
	CHECK(adamw_save(o, at("state.safetensors"), &err) == 0, "%s", err.msg);
	struct adamw *back = adamw_load(at("state.safetensors"), N, &err);
	CHECK(back && back->n == N && back->step == 3 && !memcmp(back->m, o->m, sizeof(float) * N) &&
		      !memcmp(back->v, o->v, sizeof(float) * N),
	      "round trip: %s", back ? "differs" : err.msg);
	adamw_free(back);
	back = adamw_load(at("state.safetensors"), 0, &err);
	CHECK(back && back->n == N, "any length: %s", err.msg);
	adamw_free(back);
	back = adamw_load(at("state.safetensors"), N + 1, &err);
	CHECK(!back && strstr(err.msg, "state.safetensors") && strstr(err.msg, "77 values, the parameters are 78"), "%s",
	      err.msg);
	adamw_free(back);

	/* files that are not a state, or a broken one */
	static const struct {
		const char *meta[8];
		int drop, bad_value;
		const char *says;
	} cases[] = {
		{{"format", "pt", "version", "1", "step", "3", NULL}, -1, 0, "not an AdamW state"},
		{{"version", "1", "step", "3", NULL}, -1, 0, "missing"},
		{{"format", "lorapipe-adamw", "version", "2", "step", "3", NULL}, -1, 0, "version 2"},
		{{"format", "lorapipe-adamw", "version", "1", "step", "-1", NULL}, -1, 0, "step '-1'"},
		{{"format", "lorapipe-adamw", "version", "1", "step", "3x", NULL}, -1, 0, "step '3x'"},
		{{"format", "lorapipe-adamw", "version", "1", "step", "3", NULL}, 1, 0, "'exp_avg_sq' is missing"},
		{{"format", "lorapipe-adamw", "version", "1", "step", "3", NULL}, -1, 1, "'exp_avg': value 4 is nan"},
		{{"format", "lorapipe-adamw", "version", "1", "step", "3", NULL}, -1, 2, "'exp_avg_sq': value 4 is -1"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		float m[N], v[N];
		memcpy(m, o->m, sizeof m);
		memcpy(v, o->v, sizeof v);
		if (cases[i].bad_value == 1)
			m[4] = NAN;
		if (cases[i].bad_value == 2)
			v[4] = -1;
		struct st_out t[2] = {{"exp_avg", ST_F32, 1, {N}, m}, {"exp_avg_sq", ST_F32, 1, {N}, v}};
		CHECK(st_write(at("bad.safetensors"), t, cases[i].drop == 1 ? 1 : 2, cases[i].meta, &err) == 0, "%s",
		      err.msg);
		back = adamw_load(at("bad.safetensors"), N, &err);
		CHECK(!back && strstr(err.msg, "bad.safetensors") && strstr(err.msg, cases[i].says),
		      "case %zu: message '%s' lacks '%s'", i, err.msg, cases[i].says);
		adamw_free(back);
	}
	/* a third tensor */
	struct st_out t3[3] = {{"exp_avg", ST_F32, 1, {N}, o->m}, {"exp_avg_sq", ST_F32, 1, {N}, o->v},
			       {"extra", ST_F32, 1, {N}, o->v}};
	const char *meta[] = {"format", "lorapipe-adamw", "version", "1", "step", "3", NULL};
	st_write(at("bad.safetensors"), t3, 3, meta, &err);
	back = adamw_load(at("bad.safetensors"), N, &err);
	CHECK(!back && strstr(err.msg, "3 tensors"), "%s", err.msg);
	adamw_free(back);
	back = adamw_load(at("absent.safetensors"), N, &err);
	CHECK(!back && strstr(err.msg, "absent.safetensors"), "%s", err.msg);
	adamw_free(back);
	adamw_free(o);
	unlink(at("state.safetensors"));
	unlink(at("bad.safetensors"));
}

static void test_schedules(void)
{
	struct err err = {0};
	enum lr_kind k;
	static const char *const names[] = {"linear", "cosine", "cosine_with_min_lr", "constant_with_warmup"};
	for (int i = 0; i < 4; i++)
		CHECK(lr_kind_parse(names[i], &k, &err) == 0 && !strcmp(lr_kind_name(k), names[i]), "%s", names[i]);
	CHECK(lr_kind_parse("cosine_with_restarts", &k, &err) == -1 && strstr(err.msg, "cosine_with_restarts"), "%s",
	      err.msg);

	struct lr_schedule s = {LR_LINEAR, 2e-4, 10, 110, 0.5, 0};
	CHECK(lr_at(&s, 0) == 0 && lr_at(&s, 5) == 1e-4 && lr_at(&s, 10) == 2e-4 && lr_at(&s, 60) == 1e-4 &&
		      lr_at(&s, 110) == 0 && lr_at(&s, 200) == 0,
	      "linear: %g %g %g %g %g", lr_at(&s, 0), lr_at(&s, 5), lr_at(&s, 10), lr_at(&s, 60), lr_at(&s, 110));
	s.kind = LR_COSINE;
	CHECK(lr_at(&s, 10) == 2e-4 && fabs(lr_at(&s, 60) - 1e-4) < 1e-18 && lr_at(&s, 110) == 0, "cosine: %g %g %g",
	      lr_at(&s, 10), lr_at(&s, 60), lr_at(&s, 110));
	s.kind = LR_COSINE_MIN, s.min_lr_rate = 0.1;
	double lo = 1;
	for (int i = 10; i <= 110; i++)
		lo = fmin(lo, lr_at(&s, i));
	CHECK(fabs(lr_at(&s, 110) - 2e-5) < 1e-18 && lo >= 2e-5 * (1 - 1e-12) && lr_at(&s, 10) == 2e-4,
	      "cosine with a floor: end %g, lowest %g", lr_at(&s, 110), lo);
	s.kind = LR_CONSTANT;
	CHECK(lr_at(&s, 3) == 2e-4 * 0.3 && lr_at(&s, 10) == 2e-4 && lr_at(&s, 500) == 2e-4, "constant: %g %g",
	      lr_at(&s, 3), lr_at(&s, 500));
	s.warmup = 0, s.kind = LR_LINEAR;
	CHECK(lr_at(&s, 0) == 2e-4, "no warm-up starts at the peak: %g", lr_at(&s, 0));
}

static void test_clip(void)
{
	float g[2] = {3, 4};
	float norm = clip_grad_norm(g, 2, NULL, 0, 1.0);
	CHECK(norm == 5 && fabsf(g[0] - 0.6f) < 1e-6f && fabsf(g[1] - 0.8f) < 1e-6f, "norm %g, g %g %g", (double)norm,
	      (double)g[0], (double)g[1]);
	float h[9] = {1, -2, 3, -4, 5, -6, 7, -8, 9}, h0[9];
	memcpy(h0, h, sizeof h);
	size_t seg[3] = {2, 3, 4};
	norm = clip_grad_norm(h, 9, seg, 3, 100);
	CHECK(fabsf(norm - sqrtf(285)) < 1e-5f && !memcmp(h, h0, sizeof h), "unclipped: norm %g, g changed",
	      (double)norm);
	CHECK(grad_norm(h, 9, seg, 0) == 0, "no segments: norm 0");
	float big[3] = {INFINITY, 1, 1};
	norm = clip_grad_norm(big, 3, NULL, 0, 1.0);
	CHECK(isinf(norm) && big[1] == 0, "an infinite gradient: norm %g, g[1] %g", (double)norm, (double)big[1]);

	struct model_config c = {0};
	c.dim = 64, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 16, c.ffn = 96, c.n_layers = 2, c.vocab = 5;
	struct lora_config lc = {(1u << LORA_Q) | (1u << LORA_DOWN), 4, 8, 0, 0};
	struct err err = {0};
	struct lora *lo = lora_new(&c, &lc, &err);
	size_t len[8], total = 0;
	size_t n = lo ? lora_segments(lo, len) : 0;
	for (size_t i = 0; i < n; i++)
		total += len[i];
	CHECK(n == 8 && len[0] == 4 * 64 && len[1] == 64 * 4 && len[2] == 4 * 96 && len[3] == 64 * 4 && lo &&
		      total == lo->n_params && lora_segments(lo, NULL) == 8,
	      "segments: %zu, total %zu", n, total);
	lora_free(lo);
}

int main(void)
{
	check_seed_init();
	if (!mkdtemp(root)) {
		perror(root);
		return 1;
	}
	RUN(test_first_step);
	RUN(test_decay_only);
	RUN(test_state_files);
	RUN(test_schedules);
	RUN(test_clip);
	rmdir(root);
	return check_done();
}
