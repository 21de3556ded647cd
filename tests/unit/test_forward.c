/* test_forward: model_forward on tiny models built here (no files), one per
 * family: the KV-cache path fed in pieces gives the logits of one full pass
 * (max |a - b| / max |b| below 1e-5, since sgemm of other shapes rounds
 * differently), tokens out of the vocabulary and a full or foreign cache are
 * errors, and a model whose blocks add nothing (o and down zero) gives
 * norm(embedding)·Eᵀ, checked in double. Matching transformers is
 * tests/ref/test_model_hf.py. Seed printed; LORAPIPE_SEED replays it. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "check.h"
#include "model.h"
#include "tinymodel.h"

static unsigned long long seed;

/* The full pass against the cache fed in pieces of 5, 1, 1, 7, 3 ... */
static void check_cache(enum model_arch arch, enum wfmt fmt, int threads)
{
	struct err err;
	struct model *m = tiny(arch, fmt);
	const int n = 23, V = m->cfg.vocab;
	int32_t tok[23];
	for (int t = 0; t < n; t++)
		tok[t] = (int32_t)(check_urand() * V);
	backend_cpu_threads(threads);
	float *full = malloc((size_t)n * V * sizeof *full), *part = malloc((size_t)n * V * sizeof *part);
	float *last = malloc((size_t)V * sizeof *last);
	int rc = model_forward(m, NULL, NULL, tok, n, full, 1, &err);
	CHECK(rc == 0, "%s: full pass: %s", model_arch_name(arch), err.msg);
	int finite = 1;
	for (int64_t i = 0; i < (int64_t)n * V; i++)
		finite &= isfinite(full[i]) != 0;
	CHECK(finite, "%s: logits not finite", model_arch_name(arch));
	/* only the last row */
	rc = model_forward(m, NULL, NULL, tok, n, last, 0, &err);
	CHECK(rc == 0 && check_rel_err(last, full + (n - 1) * V, V) < 1e-6, "%s: last-row logits differ",
	      model_arch_name(arch));

	struct kv_cache *kv = kv_cache_new(&m->cfg, 32, &err);
	CHECK(kv != NULL, "kv_cache_new: %s", err.msg);
	static const int pieces[] = {5, 1, 1, 7, 3, 1, 5};
	int at = 0;
	for (size_t i = 0; kv && i < sizeof pieces / sizeof *pieces && at < n; i++) {
		int len = pieces[i] < n - at ? pieces[i] : n - at;
		rc = model_forward(m, NULL, kv, tok + at, len, part + (int64_t)at * V, 1, &err);
		CHECK(rc == 0, "%s: piece at %d: %s", model_arch_name(arch), at, err.msg);
		at += len;
	}
	CHECK(kv && kv->n == n, "cache holds %d positions, want %d", kv ? kv->n : -1, n);
	double e = check_rel_err(part, full, (int64_t)n * V);
	CHECK(e < 1e-5, "seed %llu: %s %s threads %d: cache vs full pass: rel err %.3g", seed, model_arch_name(arch),
	      wfmt_name(fmt), threads, e);
	/* full: one more position does not fit */
	if (kv) {
		kv->n = kv->max_seq;
		rc = model_forward(m, NULL, kv, tok, 1, last, 0, &err);
		CHECK(rc < 0 && strstr(err.msg, "full"), "a full cache: rc %d, \"%s\"", rc, rc < 0 ? err.msg : "");
	}
	kv_cache_free(kv);
	free(full);
	free(part);
	free(last);
	tiny_free(m);
}

/* Decoding several sequences in one call (model_forward_batch) gives each the
 * logits of decoding it alone, bit for bit: prompts of different lengths
 * (one past Gemma's sliding window), then steps with a batch that shrinks. */
static void check_batch(enum model_arch arch, enum wfmt fmt)
{
	struct err err;
	struct model *m = tiny(arch, fmt);
	const int V = m->cfg.vocab, S = 4, steps = 6;
	const int lens[4] = {3, 9, 1, 14};
	struct kv_cache *alone[4], *batch[4];
	float *la = malloc((size_t)V * sizeof *la), *lb = malloc((size_t)S * V * sizeof *lb);
	int32_t tok[4][32];
	backend_cpu_threads(2);
	int ok = 1;
	for (int b = 0; b < S; b++) {
		for (int t = 0; t < 32; t++)
			tok[b][t] = (int32_t)(check_urand() * V);
		alone[b] = kv_cache_new(&m->cfg, 32, &err);
		batch[b] = kv_cache_new(&m->cfg, 32, &err);
		ok &= model_forward(m, NULL, alone[b], tok[b], lens[b], la, 0, &err) == 0;
		ok &= model_forward(m, NULL, batch[b], tok[b], lens[b], la, 0, &err) == 0;
	}
	CHECK(ok, "%s: prefill: %s", model_arch_name(arch), err.msg);
	int same = 1;
	for (int s = 0; s < steps && ok; s++) {
		int n = s < 3 ? S : S - 1; /* the last sequence leaves the batch after 3 steps */
		int32_t next[4];
		for (int b = 0; b < n; b++)
			next[b] = tok[b][lens[b] + s];
		ok &= model_forward_batch(m, NULL, batch, next, n, lb, &err) == 0;
		for (int b = 0; b < n && ok; b++) {
			ok &= model_forward(m, NULL, alone[b], &next[b], 1, la, 0, &err) == 0;
			same &= !memcmp(la, lb + (size_t)b * V, (size_t)V * sizeof *la);
		}
	}
	CHECK(ok, "%s: decoding: %s", model_arch_name(arch), err.msg);
	CHECK(same, "seed %llu: %s %s: a sequence decoded in a batch differs from it decoded alone", seed,
	      model_arch_name(arch), wfmt_name(fmt));
	/* one cache for two sequences is refused */
	struct kv_cache *twice[2] = {batch[0], batch[0]};
	int32_t two[2] = {1, 2};
	CHECK(model_forward_batch(m, NULL, twice, two, 2, lb, &err) < 0 && strstr(err.msg, "share"),
	      "a shared cache is not refused");
	for (int b = 0; b < S; b++) {
		kv_cache_free(alone[b]);
		kv_cache_free(batch[b]);
	}
	free(la);
	free(lb);
	tiny_free(m);
}

static void test_batch_llama(void) { check_batch(ARCH_LLAMA, WFMT_F32); }
static void test_batch_gemma3_nf4(void) { check_batch(ARCH_GEMMA3, WFMT_NF4); }
static void test_batch_qwen3_bf16(void) { check_batch(ARCH_QWEN3, WFMT_BF16); }

static void test_cache_llama(void) { check_cache(ARCH_LLAMA, WFMT_F32, 2); }
static void test_cache_qwen2(void) { check_cache(ARCH_QWEN2, WFMT_F32, 1); }
static void test_cache_qwen3(void) { check_cache(ARCH_QWEN3, WFMT_F32, 3); }
static void test_cache_gemma3(void) { check_cache(ARCH_GEMMA3, WFMT_F32, 2); }
static void test_cache_nf4(void) { check_cache(ARCH_LLAMA, WFMT_NF4, 2); }
static void test_cache_int8_gemma3(void) { check_cache(ARCH_GEMMA3, WFMT_INT8, 2); }
static void test_cache_bf16_qwen2(void) { check_cache(ARCH_QWEN2, WFMT_BF16, 2); }

static void test_bad_tokens(void)
{
	struct err err;
	struct model *m = tiny(ARCH_QWEN3, WFMT_F32);
	float *logits = malloc((size_t)4 * m->cfg.vocab * sizeof *logits);
	int32_t bad1[] = {1, 2, -1, 3}, bad2[] = {1, 97, 2, 3}, good[] = {0, 96, 5, 6};
	int rc = model_forward(m, NULL, NULL, bad1, 4, logits, 1, &err);
	CHECK(rc < 0 && strstr(err.msg, "-1"), "token -1: rc %d, \"%s\"", rc, rc < 0 ? err.msg : "");
	rc = model_forward(m, NULL, NULL, bad2, 4, logits, 1, &err);
	CHECK(rc < 0 && strstr(err.msg, "97"), "token 97 of 97: rc %d, \"%s\"", rc, rc < 0 ? err.msg : "");
	rc = model_forward(m, NULL, NULL, good, 0, logits, 1, &err);
	CHECK(rc < 0, "no tokens is an error");
	rc = model_forward(m, NULL, NULL, good, 4, logits, 1, &err);
	CHECK(rc == 0, "good tokens: %s", err.msg);
	/* a cache of another shape */
	struct model_config other = m->cfg;
	other.n_kv_heads = 4;
	struct kv_cache *kv = kv_cache_new(&other, 8, &err);
	rc = model_forward(m, NULL, kv, good, 4, logits, 1, &err);
	CHECK(rc < 0 && strstr(err.msg, "cache"), "foreign cache: rc %d", rc);
	kv_cache_free(kv);
	CHECK(kv_cache_new(&m->cfg, 0, &err) == NULL, "a cache of 0 positions");
	free(logits);
	tiny_free(m);
}

/* o and down zero: every block adds 0, so logits = norm(embed · scale) · Eᵀ. */
static void check_identity(enum model_arch arch)
{
	struct err err;
	struct model *m = tiny(arch, WFMT_F32);
	const struct model_config *c = &m->cfg;
	for (int l = 0; l < c->n_layers; l++) {
		memset(m->layers[l].o.f32, 0, (size_t)c->dim * c->n_heads * c->head_dim * sizeof(float));
		memset(m->layers[l].down.f32, 0, (size_t)c->dim * c->ffn * sizeof(float));
	}
	const int n = 6, V = c->vocab, D = c->dim;
	int32_t tok[6] = {3, 1, 4, 1, 5, 9};
	float *logits = malloc((size_t)n * V * sizeof *logits), *want = malloc((size_t)n * V * sizeof *want);
	const float *E = m->embed.f32, *H = c->tied_embeddings ? E : m->lm_head.f32;
	for (int t = 0; t < n; t++) {
		double x[64], ss = 0;
		for (int i = 0; i < D; i++) {
			x[i] = (double)E[tok[t] * D + i] * c->embed_scale;
			ss += x[i] * x[i];
		}
		double inv = 1 / sqrt(ss / D + c->norm_eps);
		for (int i = 0; i < D; i++)
			x[i] *= inv * (c->norm_plus_one ? 1.0 + m->final_norm[i] : m->final_norm[i]);
		for (int r = 0; r < V; r++) {
			double s = 0;
			for (int i = 0; i < D; i++)
				s += x[i] * H[r * D + i];
			if (c->final_softcap > 0)
				s = c->final_softcap * tanh(s / c->final_softcap);
			want[t * V + r] = (float)s;
		}
	}
	backend_cpu_threads(2);
	int rc = model_forward(m, NULL, NULL, tok, n, logits, 1, &err);
	CHECK(rc == 0, "%s", err.msg);
	double e = check_rel_err(logits, want, (int64_t)n * V);
	CHECK(e < 1e-5, "seed %llu: %s: rel err %.3g", seed, model_arch_name(arch), e);
	free(logits);
	free(want);
	tiny_free(m);
}

static void test_identity_llama(void) { check_identity(ARCH_LLAMA); }
static void test_identity_gemma3(void) { check_identity(ARCH_GEMMA3); }

/* llama3 and linear scaling against the formulas in double */
static void test_rope_scaling(void)
{
	float inv[32];
	struct rope_config lin = {ROPE_LINEAR, 10000, 4, 0, 0, 0};
	rope_inv_freq(&lin, 64, inv);
	for (int i = 0; i < 32; i++) {
		double w = 1 / pow(10000, 2.0 * i / 64) / 4;
		CHECK(fabs(inv[i] - w) <= 4e-7 * w, "linear [%d] %.9g want %.9g", i, inv[i], w);
	}
	struct rope_config l3 = {ROPE_LLAMA3, 500000, 32, 1, 4, 8192};
	rope_inv_freq(&l3, 64, inv);
	int lows = 0, mids = 0, highs = 0;
	for (int i = 0; i < 32; i++) {
		double f = 1 / pow(500000, 2.0 * i / 64), wl = 2 * M_PI / f, w;
		if (wl < 8192 / 4.0)
			w = f, highs++;
		else if (wl > 8192 / 1.0)
			w = f / 32, lows++;
		else {
			double s = (8192 / wl - 1) / (4 - 1);
			w = (1 - s) * f / 32 + s * f;
			mids++;
		}
		CHECK(fabs(inv[i] - w) <= 4e-6 * w, "llama3 [%d] %.9g want %.9g", i, inv[i], w);
	}
	CHECK(lows && mids && highs, "llama3 cases: %d low, %d medium, %d high", lows, mids, highs);
}

int main(void)
{
	seed = check_seed_init();
	RUN(test_cache_llama);
	RUN(test_cache_qwen2);
	RUN(test_cache_qwen3);
	RUN(test_cache_gemma3);
	RUN(test_cache_nf4);
	RUN(test_cache_int8_gemma3);
	RUN(test_cache_bf16_qwen2);
	RUN(test_batch_llama);
	RUN(test_batch_gemma3_nf4);
	RUN(test_batch_qwen3_bf16);
	RUN(test_bad_tokens);
	RUN(test_identity_llama);
	RUN(test_identity_gemma3);
	RUN(test_rope_scaling);
	return check_done();
}
