/* test_train: lib/train on tiny models built here (tests/unit/tinymodel.h),
 * one per family, with a random adapter (A and B nonzero) on all seven
 * projections. Checks:
 *   - train_logits equals model_forward bit for bit on one example (the two
 *     forward passes cannot drift), and within 1e-5 on a packed row;
 *   - packing: the loss of the examples packed into one row equals the sum
 *     of their losses run one by one (1e-6 relative), the gradients too
 *     (1e-5 relative: max |a - b| / max |b|);
 *   - gradient checkpointing gives the same bits as keeping the activations,
 *     with dropout on (the masks are redrawn, not stored);
 *   - the gradient is the derivative of the loss: the directional finite
 *     difference of the fp32 loss along a random direction v of all LoRA
 *     parameters — central differences (L(p + hv) - L(p - hv)) / 2h at
 *     h = 6e-3 and 3e-3, Richardson-extrapolated (the softcapped tiny models
 *     are far from linear: ~2% truncation error at h = 1e-2 without it) —
 *     equals g·v within 1e-2 · max(|g·v|, |g|·|v| / sqrt(count)), with dropout
 *     0.3 (fixed seed: the masks are a fixed function of it) and without,
 *     on Gemma 3 with both softcaps;
 *   - dropout: the same seed repeats the bits, another seed changes them;
 *     gradients accumulate over steps; train_eval gives train_step's loss
 *     and no gradient; bad batches are errors.
 * Matching torch autograd is tests/ref/test_grad_torch.py. Seed printed;
 * LORAPIPE_SEED replays it. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "backend.h"
#include "check.h"
#include "lora.h"
#include "model.h"
#include "tinymodel.h"
#include "train.h"

static unsigned long long seed;

static struct lora *random_lora(const struct model *m, float dropout)
{
	struct err err = {0};
	struct lora_config lc = {(1u << LORA_N_TARGETS) - 1, 4, 8, dropout, 0};
	struct lora *lo = lora_new(&m->cfg, &lc, &err);
	if (!lo) {
		printf("# lora_new: %s\n", err.msg);
		abort();
	}
	for (size_t i = 0; i < lo->n_params; i++)
		lo->params[i] = (float)((check_urand() * 2 - 1) * 0.2);
	return lo;
}

/* Three examples (lengths 9, 5, 12: longer than Gemma's window of 4), labels
 * = tokens with the first two and a few others -100. */
#define N_EX 3
#define N_TOK 26
static const int32_t starts[N_EX] = {0, 9, 14};

static void make_batch(int32_t *tok, int32_t *lab, int vocab)
{
	for (int t = 0; t < N_TOK; t++) {
		tok[t] = (int32_t)(check_urand() * vocab);
		lab[t] = check_urand() < 0.2 ? -100 : tok[t];
	}
	for (int e = 0; e < N_EX; e++)
		lab[starts[e]] = lab[starts[e] + 1] = -100;
}

static struct train_batch example(const int32_t *tok, const int32_t *lab, int e)
{
	int end = e + 1 < N_EX ? starts[e + 1] : N_TOK;
	return (struct train_batch){end - starts[e], tok + starts[e], lab + starts[e], 1, NULL};
}

static void check_logits(enum model_arch arch, enum wfmt fmt)
{
	struct err err = {0};
	struct model *m = tiny(arch, fmt);
	struct lora *lo = random_lora(m, 0);
	struct trainer *tr = trainer_new(m, lo, N_TOK, NULL, &err);
	CHECK(tr, "%s", err.msg);
	int32_t tok[N_TOK], lab[N_TOK];
	make_batch(tok, lab, m->cfg.vocab);
	const int V = m->cfg.vocab;
	float *a = malloc((size_t)N_TOK * V * sizeof *a), *b = malloc((size_t)N_TOK * V * sizeof *b);
	float *p = malloc((size_t)N_TOK * V * sizeof *p);
	for (int e = 0; e < N_EX; e++) {
		struct train_batch x = example(tok, lab, e);
		CHECK(train_logits(tr, &x, a + (size_t)starts[e] * V, &err) == 0, "%s", err.msg);
		CHECK(model_forward(m, lo, NULL, x.tokens, x.n, b + (size_t)starts[e] * V, 1, &err) == 0, "%s",
		      err.msg);
	}
	CHECK(!memcmp(a, b, (size_t)N_TOK * V * sizeof *a), "seed %llu: %s %s: train_logits differs from model_forward "
	      "(rel err %.3g)", seed, model_arch_name(arch), wfmt_name(fmt), check_rel_err(a, b, (int64_t)N_TOK * V));
	struct train_batch all = {N_TOK, tok, lab, N_EX, starts};
	CHECK(train_logits(tr, &all, p, &err) == 0, "%s", err.msg);
	double e = check_rel_err(p, b, (int64_t)N_TOK * V);
	CHECK(e < 1e-5, "seed %llu: %s: packed logits rel err %.3g", seed, model_arch_name(arch), e);
	free(a), free(b), free(p);
	trainer_free(tr);
	lora_free(lo);
	tiny_free(m);
}

static void test_logits_llama(void) { check_logits(ARCH_LLAMA, WFMT_F32); }
static void test_logits_qwen2(void) { check_logits(ARCH_QWEN2, WFMT_F32); }
static void test_logits_qwen3(void) { check_logits(ARCH_QWEN3, WFMT_F32); }
static void test_logits_gemma3(void) { check_logits(ARCH_GEMMA3, WFMT_F32); }
static void test_logits_nf4(void) { check_logits(ARCH_LLAMA, WFMT_NF4); }

/* loss sum and gradients (lo->grads, d_embed[N_TOK × dim]) of the batch
 * packed into one row or run one example at a time */
static double run(struct trainer *tr, const struct model *m, struct lora *lo, const int32_t *tok, const int32_t *lab,
		  int pack, uint64_t dseed, float *d_embed, int64_t *learned)
{
	struct err err = {0};
	struct train_batch all = {N_TOK, tok, lab, N_EX, starts};
	float scale = 1.0f / (float)train_batch_learned(&all);
	struct train_result res = {0};
	double loss = 0;
	*learned = 0;
	lora_zero_grads(lo);
	if (pack) {
		CHECK(train_step(tr, &all, scale, dseed, &res, d_embed, &err) == 0, "%s", err.msg);
		*learned = res.n_learned;
		return res.loss_sum;
	}
	for (int e = 0; e < N_EX; e++) {
		struct train_batch x = example(tok, lab, e);
		float *de = d_embed ? d_embed + (size_t)starts[e] * m->cfg.dim : NULL;
		CHECK(train_step(tr, &x, scale, dseed + (uint64_t)e, &res, de, &err) == 0, "%s", err.msg);
		loss += res.loss_sum;
		*learned += res.n_learned;
	}
	return loss;
}

static void check_packing(enum model_arch arch)
{
	struct err err = {0};
	struct model *m = tiny(arch, WFMT_F32);
	struct lora *lo = random_lora(m, 0);
	struct trainer *tr = trainer_new(m, lo, N_TOK, NULL, &err);
	CHECK(tr, "%s", err.msg);
	int32_t tok[N_TOK], lab[N_TOK];
	make_batch(tok, lab, m->cfg.vocab);
	const size_t np = lo->n_params, ne = (size_t)N_TOK * m->cfg.dim;
	float *g1 = malloc(np * sizeof *g1), *e1 = malloc(ne * sizeof *e1), *e2 = malloc(ne * sizeof *e2);
	int64_t n1, n2;
	double l1 = run(tr, m, lo, tok, lab, 0, 1, e1, &n1);
	memcpy(g1, lo->grads, np * sizeof *g1);
	double l2 = run(tr, m, lo, tok, lab, 1, 1, e2, &n2);
	struct train_batch all = {N_TOK, tok, lab, N_EX, starts};
	CHECK(n1 == n2 && n1 == train_batch_learned(&all), "learned %lld / %lld / %lld", (long long)n1,
	      (long long)n2, (long long)train_batch_learned(&all));
	CHECK(fabs(l1 - l2) <= 1e-6 * fabs(l1), "seed %llu: %s: loss unpacked %.9g, packed %.9g", seed,
	      model_arch_name(arch), l1, l2);
	double eg = check_rel_err(lo->grads, g1, (int64_t)np), ee = check_rel_err(e2, e1, (int64_t)ne);
	CHECK(eg < 1e-5 && ee < 1e-5, "seed %llu: %s: packed vs unpacked rel err grads %.3g, d_embed %.3g", seed,
	      model_arch_name(arch), eg, ee);
	free(g1), free(e1), free(e2);
	trainer_free(tr);
	lora_free(lo);
	tiny_free(m);
}

static void test_packing_llama(void) { check_packing(ARCH_LLAMA); }
static void test_packing_qwen2(void) { check_packing(ARCH_QWEN2); }
static void test_packing_qwen3(void) { check_packing(ARCH_QWEN3); }
static void test_packing_gemma3(void) { check_packing(ARCH_GEMMA3); }

/* checkpointing on and off, dropout 0.3, packed and not: the same bits */
static void check_checkpointing(enum model_arch arch)
{
	struct err err = {0};
	struct model *m = tiny(arch, WFMT_NF4);
	struct lora *lo = random_lora(m, 0.3f);
	struct train_opts on = {.checkpointing = 1};
	struct trainer *t0 = trainer_new(m, lo, N_TOK, NULL, &err), *t1 = trainer_new(m, lo, N_TOK, &on, &err);
	CHECK(t0 && t1, "%s", err.msg);
	CHECK(trainer_bytes(t1) < trainer_bytes(t0), "checkpointing holds %zu bytes, without %zu", trainer_bytes(t1),
	      trainer_bytes(t0));
	int32_t tok[N_TOK], lab[N_TOK];
	make_batch(tok, lab, m->cfg.vocab);
	const size_t np = lo->n_params, ne = (size_t)N_TOK * m->cfg.dim;
	float *g0 = malloc(np * sizeof *g0), *e0 = malloc(ne * sizeof *e0), *e1 = malloc(ne * sizeof *e1);
	for (int pack = 0; pack < 2; pack++) {
		int64_t n0, n1;
		double l0 = run(t0, m, lo, tok, lab, pack, 7, e0, &n0);
		memcpy(g0, lo->grads, np * sizeof *g0);
		double l1 = run(t1, m, lo, tok, lab, pack, 7, e1, &n1);
		CHECK(l0 == l1 && !memcmp(g0, lo->grads, np * sizeof *g0) && !memcmp(e0, e1, ne * sizeof *e0),
		      "seed %llu: %s pack %d: checkpointing changes the result (loss %.9g / %.9g, grads rel err %.3g)",
		      seed, model_arch_name(arch), pack, l0, l1, check_rel_err(lo->grads, g0, (int64_t)np));
	}
	free(g0), free(e0), free(e1);
	trainer_free(t0);
	trainer_free(t1);
	lora_free(lo);
	tiny_free(m);
}

static void test_checkpointing_qwen3(void) { check_checkpointing(ARCH_QWEN3); }
static void test_checkpointing_gemma3(void) { check_checkpointing(ARCH_GEMMA3); }

/* g·v against (L(p + hv) - L(p - hv)) / 2h, all LoRA parameters moved along v */
static void check_directional(enum model_arch arch, float dropout)
{
	struct err err = {0};
	struct model *m = tiny(arch, WFMT_F32);
	struct lora *lo = random_lora(m, dropout);
	struct trainer *tr = trainer_new(m, lo, N_TOK, NULL, &err);
	CHECK(tr, "%s", err.msg);
	int32_t tok[N_TOK], lab[N_TOK];
	make_batch(tok, lab, m->cfg.vocab);
	const size_t np = lo->n_params;
	float *p0 = malloc(np * sizeof *p0), *v = malloc(np * sizeof *v);
	memcpy(p0, lo->params, np * sizeof *p0);
	for (size_t i = 0; i < np; i++)
		v[i] = (float)(check_urand() * 2 - 1);
	int64_t n;
	/* grad_scale 1: the gradient of the loss sum itself */
	struct train_batch all = {N_TOK, tok, lab, N_EX, starts};
	struct train_result res;
	lora_zero_grads(lo);
	CHECK(train_step(tr, &all, 1.0f, 3, &res, NULL, &err) == 0, "%s", err.msg);
	double gv = 0, gg = 0, vv = 0;
	for (size_t i = 0; i < np; i++) {
		gv += (double)lo->grads[i] * v[i];
		gg += (double)lo->grads[i] * lo->grads[i];
		vv += (double)v[i] * v[i];
	}
	/* the typical size of g·v for a random v, |g|·|v| / sqrt(count): a
	 * direction where g·v cancels to near 0 is not held to a tighter bound */
	const double typical = sqrt(gg * vv / (double)np);
	/* central differences at h and h/2, Richardson-extrapolated: the h² term
	 * of the truncation error cancels */
	const double h = 6e-3;
	double d[2];
	for (int k = 0; k < 2; k++) {
		double hk = k ? h / 2 : h, l[2];
		for (int s = 0; s < 2; s++) {
			for (size_t i = 0; i < np; i++)
				lo->params[i] = p0[i] + (float)((s ? -hk : hk) * v[i]);
			l[s] = run(tr, m, lo, tok, lab, 1, 3, NULL, &n);
		}
		d[k] = (l[0] - l[1]) / (2 * hk);
	}
	double fd = (4 * d[1] - d[0]) / 3;
	CHECK(fabs(fd - gv) < 1e-2 * fmax(fabs(gv), typical),
	      "seed %llu: %s dropout %g: g·v %.7g, finite difference %.7g (typical |g·v| %.3g)", seed,
	      model_arch_name(arch), dropout, gv, fd, typical);
	free(p0), free(v);
	trainer_free(tr);
	lora_free(lo);
	tiny_free(m);
}

static void test_directional_gemma3(void) { check_directional(ARCH_GEMMA3, 0); }
static void test_directional_gemma3_dropout(void) { check_directional(ARCH_GEMMA3, 0.3f); }
static void test_directional_qwen2_dropout(void) { check_directional(ARCH_QWEN2, 0.3f); }

static void test_dropout_seed(void)
{
	struct err err = {0};
	struct model *m = tiny(ARCH_LLAMA, WFMT_F32);
	struct lora *lo = random_lora(m, 0.3f);
	struct trainer *tr = trainer_new(m, lo, N_TOK, NULL, &err);
	int32_t tok[N_TOK], lab[N_TOK];
	make_batch(tok, lab, m->cfg.vocab);
	const size_t np = lo->n_params;
	float *g = malloc(np * sizeof *g);
	int64_t n;
	double a = run(tr, m, lo, tok, lab, 1, 11, NULL, &n);
	memcpy(g, lo->grads, np * sizeof *g);
	double b = run(tr, m, lo, tok, lab, 1, 11, NULL, &n);
	CHECK(a == b && !memcmp(g, lo->grads, np * sizeof *g), "the same seed gives other results");
	double c = run(tr, m, lo, tok, lab, 1, 12, NULL, &n);
	CHECK(c != a && memcmp(g, lo->grads, np * sizeof *g), "another seed gives the same results");
	/* accumulation: two steps without zeroing add up */
	struct train_batch all = {N_TOK, tok, lab, N_EX, starts};
	struct train_result res;
	lora_zero_grads(lo);
	CHECK(train_step(tr, &all, 0.5f, 11, &res, NULL, &err) == 0, "%s", err.msg);
	CHECK(train_step(tr, &all, 0.5f, 11, &res, NULL, &err) == 0, "%s", err.msg);
	run(tr, m, lo, tok, lab, 1, 11, NULL, &n); /* scale 1 / learned */
	memcpy(g, lo->grads, np * sizeof *g);
	lora_zero_grads(lo);
	float scale = 1.0f / (float)n;
	CHECK(train_step(tr, &all, scale / 2, 11, &res, NULL, &err) == 0, "%s", err.msg);
	CHECK(train_step(tr, &all, scale / 2, 11, &res, NULL, &err) == 0, "%s", err.msg);
	double e = check_rel_err(lo->grads, g, (int64_t)np);
	CHECK(e < 1e-6, "two half steps vs one: rel err %.3g", e);
	free(g);
	trainer_free(tr);
	lora_free(lo);
	tiny_free(m);
}

/* train_eval: train_step's loss, no gradient */
static void test_eval(void)
{
	struct err err = {0};
	struct model *m = tiny(ARCH_GEMMA3, WFMT_F32);
	struct lora *lo = random_lora(m, 0);
	struct trainer *tr = trainer_new(m, lo, N_TOK, NULL, &err);
	int32_t tok[N_TOK], lab[N_TOK];
	make_batch(tok, lab, m->cfg.vocab);
	struct train_batch all = {N_TOK, tok, lab, N_EX, starts};
	struct train_result a, b;
	lora_zero_grads(lo);
	CHECK(train_eval(tr, &all, &a, &err) == 0, "%s", err.msg);
	double z = 0;
	for (size_t i = 0; i < lo->n_params; i++)
		z = fmax(z, fabs(lo->grads[i]));
	CHECK(z == 0, "train_eval changed the gradients (%g)", z);
	CHECK(train_step(tr, &all, 1, 0, &b, NULL, &err) == 0, "%s", err.msg);
	CHECK(a.loss_sum == b.loss_sum && a.n_learned == b.n_learned, "eval %.9g (%lld), step %.9g (%lld)", a.loss_sum,
	      (long long)a.n_learned, b.loss_sum, (long long)b.n_learned);
	trainer_free(tr);
	lora_free(lo);
	tiny_free(m);
}

static void test_bad_batches(void)
{
	struct err err = {0};
	struct model *m = tiny(ARCH_QWEN2, WFMT_F32);
	struct lora *lo = random_lora(m, 0);
	struct trainer *tr = trainer_new(m, lo, 8, NULL, &err);
	int32_t tok[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, lab[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
	struct train_result res;
	struct train_batch b = {9, tok, lab, 1, NULL};
	CHECK(train_step(tr, &b, 1, 0, &res, NULL, &err) < 0, "9 tokens in a trainer of 8");
	b.n = 4;
	tok[2] = 97;
	CHECK(train_step(tr, &b, 1, 0, &res, NULL, &err) < 0 && strstr(err.msg, "vocabulary"), "token 97: %s",
	      err.msg);
	tok[2] = 3;
	int32_t bad[2] = {0, 0};
	b.n_examples = 2, b.starts = bad;
	CHECK(train_step(tr, &b, 1, 0, &res, NULL, &err) < 0, "starts 0, 0");
	bad[1] = 4;
	CHECK(train_step(tr, &b, 1, 0, &res, NULL, &err) < 0, "a start at the end");
	bad[1] = 3;
	CHECK(train_step(tr, &b, 1, 0, &res, NULL, &err) == 0, "%s", err.msg);
	/* examples [0, 3) and [3, 4): learned 1, 2 (labels 2, 3), not 3 (first of its example) */
	CHECK(res.n_learned == 2 && train_batch_learned(&b) == 2, "learned %lld", (long long)res.n_learned);
	struct lora_config lc = {1u << LORA_Q, 2, 4, 0, 0};
	struct model_config other = m->cfg;
	other.n_layers = 2;
	struct lora *lo2 = lora_new(&other, &lc, &err);
	CHECK(!trainer_new(m, lo2, 8, NULL, &err) && strstr(err.msg, "layers"), "an adapter of 2 layers: %s", err.msg);
	lora_free(lo2);
	trainer_free(tr);
	lora_free(lo);
	tiny_free(m);
}

int main(void)
{
	seed = check_seed_init();
	backend_cpu_threads(2);
	RUN(test_logits_llama);
	RUN(test_logits_qwen2);
	RUN(test_logits_qwen3);
	RUN(test_logits_gemma3);
	RUN(test_logits_nf4);
	RUN(test_packing_llama);
	RUN(test_packing_qwen2);
	RUN(test_packing_qwen3);
	RUN(test_packing_gemma3);
	RUN(test_checkpointing_qwen3);
	RUN(test_checkpointing_gemma3);
	RUN(test_directional_gemma3);
	RUN(test_directional_gemma3_dropout);
	RUN(test_directional_qwen2_dropout);
	RUN(test_dropout_seed);
	RUN(test_eval);
	RUN(test_bad_batches);
	return check_done();
}
