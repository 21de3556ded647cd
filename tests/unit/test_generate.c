/* test_generate: lib/generate's sampling on random logits (greedy ties,
 * top-k, top-p, the temperature distribution, seeds) and its text side —
 * end tokens, max_new, stop strings across tokens, streaming that holds back
 * partial UTF-8 characters and possible stop-string starts — on hand-made
 * tokenizers (byte-level, and SentencePiece-style with byte fallback).
 *
 * The model is a stand-in: this file defines model_forward, kv_cache_new and
 * kv_cache_free itself (the linker then takes them from here, not from the
 * library), returning logits from a script, so generate() runs without
 * weights. Agreement of real generations with llama.cpp is
 * tests/ref/test_generate_llamacpp.py.
 *
 * Random inputs come from a seed printed on failure (GEN_TEST_SEED overrides).
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "generate.h"
#include "tokjson.h"

static uint64_t seed0;

static uint64_t rnd(uint64_t *s) /* the test's own generator (xorshift64*) */
{
	*s ^= *s >> 12, *s ^= *s << 25, *s ^= *s >> 27;
	return *s * 0x2545F4914F6CDD1Dull;
}
static double rnd01(uint64_t *s) { return (double)(rnd(s) >> 11) * 0x1.0p-53; }

static void random_logits(float *x, int n, uint64_t *s)
{
	for (int i = 0; i < n; i++)
		x[i] = (float)(rnd01(s) * 8 - 4);
}

static int32_t ref_argmax(const float *x, int n)
{
	int32_t b = 0;
	for (int i = 1; i < n; i++)
		if (x[i] > x[b])
			b = i;
	return b;
}

/* ------------------------------------------------------------ sampling cases */

static void test_greedy_ties_lowest_id(void)
{
	uint64_t s = seed0 ^ 1;
	enum { V = 1000 };
	float x[V];
	struct gen_opts o = {.temperature = 0, .top_p = 1};
	for (int trial = 0; trial < 200; trial++) {
		random_logits(x, V, &s);
		int a = (int)(rnd(&s) % V), b = (int)(rnd(&s) % V), c = (int)(rnd(&s) % V);
		x[a] = x[b] = x[c] = 5; /* three-way tie at the top */
		int want = a < b ? (a < c ? a : c) : (b < c ? b : c);
		uint64_t rng = 7;
		int32_t got = gen_sample(x, V, &o, &rng);
		CHECK(got == want, "seed %" PRIu64 " trial %d: greedy gave %d, want %d", seed0, trial, got, want);
		CHECK(rng == 7, "greedy used the generator");
	}
}

static void test_top_k1_is_greedy(void)
{
	uint64_t s = seed0 ^ 2;
	enum { V = 500 };
	float x[V], y[V];
	for (int trial = 0; trial < 200; trial++) {
		random_logits(x, V, &s);
		if (trial % 2)
			x[(int)(rnd(&s) % V)] = x[ref_argmax(x, V)]; /* a tie half the time */
		memcpy(y, x, sizeof x);
		struct gen_opts o = {.temperature = (float)(0.3 + 2 * rnd01(&s)), .top_k = 1,
				     .top_p = trial % 3 ? 1.0f : 0.5f};
		uint64_t rng = s;
		int32_t got = gen_sample(y, V, &o, &rng), want = ref_argmax(x, V);
		CHECK(got == want, "seed %" PRIu64 " trial %d: top-k 1 gave %d, greedy %d", seed0, trial, got, want);
	}
}

/* Expected probabilities after top-k, temperature, softmax and top-p, by the
 * rule written out plainly: sort everything, cut, renormalize. */
static void ref_probs(const float *x, int n, int k, double temp, double top_p, double *p)
{
	int *ord = malloc((size_t)n * sizeof *ord);
	for (int i = 0; i < n; i++)
		ord[i] = i;
	for (int i = 1; i < n; i++) /* insertion sort: higher logit, then lower id */
		for (int j = i; j > 0 && (x[ord[j]] > x[ord[j - 1]] || (x[ord[j]] == x[ord[j - 1]] && ord[j] < ord[j - 1])); j--) {
			int t = ord[j];
			ord[j] = ord[j - 1], ord[j - 1] = t;
		}
	int keep = k > 0 && k < n ? k : n;
	double z = 0;
	for (int i = 0; i < n; i++)
		p[i] = 0;
	for (int i = 0; i < keep; i++)
		z += p[ord[i]] = exp((x[ord[i]] - x[ord[0]]) / temp);
	double cum = 0;
	int kept = keep;
	for (int i = 0; i < keep; i++) {
		cum += p[ord[i]] / z;
		if (cum >= top_p) {
			kept = i + 1;
			break;
		}
	}
	double z2 = 0;
	for (int i = 0; i < keep; i++) {
		if (i >= kept)
			p[ord[i]] = 0;
		z2 += p[ord[i]];
	}
	for (int i = 0; i < n; i++)
		p[i] /= z2;
	free(ord);
}

/* Draws `draws` tokens and compares the counts with p by Pearson's chi-square
 * over the tokens p keeps; fails when a token p drops is drawn, or when the
 * statistic passes its 1e-6 critical value (so a correct sampler fails one
 * seed in a million). Returns the statistic. */
static double chi_square(const float *x, int n, const struct gen_opts *o, const double *p, int draws, uint64_t rng,
			 const char *what)
{
	long *count = calloc((size_t)n, sizeof *count);
	float *y = malloc((size_t)n * sizeof *y);
	for (int d = 0; d < draws; d++) {
		memcpy(y, x, (size_t)n * sizeof *y);
		int32_t t = gen_sample(y, n, o, &rng);
		CHECK(t >= 0 && t < n, "%s: token %d out of range", what, t);
		if (t >= 0 && t < n)
			count[t]++;
	}
	/* Tokens expected fewer than 5 times are pooled into one cell (the
	 * statistic is only chi-square distributed when each cell expects a few:
	 * one draw of a token expected 0.05 times would add 18 on its own). */
	double stat = 0, e_pool = 0;
	long n_pool = 0;
	int dof = -1;
	for (int i = 0; i < n; i++) {
		if (p[i] == 0) {
			CHECK(count[i] == 0, "seed %" PRIu64 " %s: token %d drawn %ld times, but it is cut", seed0, what, i,
			      count[i]);
			continue;
		}
		double e = p[i] * draws;
		if (e < 5) {
			e_pool += e, n_pool += count[i];
			continue;
		}
		stat += (count[i] - e) * (count[i] - e) / e;
		dof++;
	}
	if (e_pool >= 5) {
		stat += (n_pool - e_pool) * (n_pool - e_pool) / e_pool;
		dof++;
	} else if (e_pool > 0) {
		/* too rare even pooled: the pooled count must stay plausible (Poisson tail at ~1e-6) */
		CHECK(n_pool <= 5 + 10 * e_pool + 6 * sqrt(e_pool + 1),
		      "seed %" PRIu64 " %s: tokens expected %.2f times in all drawn %ld times", seed0, what, e_pool, n_pool);
	}
	/* Critical values of chi-square at p = 1e-6 for 1..15 degrees of freedom. */
	static const double crit[] = {0, 23.93, 27.63, 30.66, 33.38, 35.89, 38.26, 40.52,
				      42.70, 44.81, 46.86, 48.87, 50.83, 52.76, 54.65, 56.49};
	if (dof >= 1 && dof <= 15)
		CHECK(stat < crit[dof], "seed %" PRIu64 " %s: chi-square %.2f with %d degrees of freedom (limit %.2f)",
		      seed0, what, stat, dof, crit[dof]);
	free(count), free(y);
	return stat;
}

static void test_temperature_distribution(void)
{
	uint64_t s = seed0 ^ 3;
	enum { V = 8, DRAWS = 40000 };
	float x[V];
	double p[V];
	static const float temps[] = {0.5f, 1.0f, 1.7f};
	for (int i = 0; i < 3; i++) {
		random_logits(x, V, &s);
		struct gen_opts o = {.temperature = temps[i], .top_p = 1};
		ref_probs(x, V, 0, temps[i], 1, p);
		char what[64];
		snprintf(what, sizeof what, "temperature %.1f", temps[i]);
		chi_square(x, V, &o, p, DRAWS, s, what);
	}
	/* with top-k: only the k best, renormalized */
	random_logits(x, V, &s);
	struct gen_opts o = {.temperature = 0.8f, .top_k = 3, .top_p = 1};
	ref_probs(x, V, 3, 0.8, 1, p);
	chi_square(x, V, &o, p, DRAWS, s, "top-k 3");
	/* a big vocabulary through the same path */
	enum { BIG = 5000 };
	float *bx = malloc(BIG * sizeof *bx);
	double *bp = malloc(BIG * sizeof *bp);
	random_logits(bx, BIG, &s);
	bx[17] = 9, bx[4000] = 8.5f, bx[2] = 8; /* three tokens hold most of the mass */
	struct gen_opts ob = {.temperature = 1.0f, .top_k = 10, .top_p = 1};
	ref_probs(bx, BIG, 10, 1.0, 1, bp);
	chi_square(bx, BIG, &ob, bp, 10000, s, "top-k 10 of 5000");
	free(bx), free(bp);
}

static void test_top_p_mass_rule(void)
{
	/* probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1 */
	float x[4] = {logf(0.15f), logf(0.5f), logf(0.05f), logf(0.3f)};
	double p[4];
	struct {
		float top_p;
		int kept; /* how many of the most likely stay */
	} cases[] = {{0.79f, 2}, {0.81f, 3}, {0.49f, 1}, {0.01f, 1}, {0.96f, 4}};
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		struct gen_opts o = {.temperature = 1, .top_p = cases[c].top_p};
		ref_probs(x, 4, 0, 1, cases[c].top_p, p);
		int kept = 0;
		for (int i = 0; i < 4; i++)
			kept += p[i] > 0;
		CHECK(kept == cases[c].kept, "reference keeps %d at top_p %.2f", kept, cases[c].top_p);
		char what[64];
		snprintf(what, sizeof what, "top-p %.2f", cases[c].top_p);
		chi_square(x, 4, &o, p, 20000, seed0 + c, what);
	}
	/* random logits over a big vocabulary, with and without top-k */
	uint64_t s = seed0 ^ 4;
	enum { V = 3000 };
	float *bx = malloc(V * sizeof *bx);
	double *bp = malloc(V * sizeof *bp);
	for (int trial = 0; trial < 4; trial++) {
		random_logits(bx, V, &s);
		for (int i = 0; i < 6; i++)
			bx[rnd(&s) % V] = 7 + (float)rnd01(&s) * 3; /* a head of a few likely tokens */
		double tp = 0.5 + 0.4 * rnd01(&s);
		int k = trial % 2 ? 50 : 0;
		struct gen_opts o = {.temperature = 0.9f, .top_k = k, .top_p = (float)tp};
		ref_probs(bx, V, k, 0.9, (float)tp, bp);
		char what[64];
		snprintf(what, sizeof what, "top-p %.3f top-k %d over %d", tp, k, V);
		chi_square(bx, V, &o, bp, 10000, s + trial, what);
	}
	free(bx), free(bp);
}

static void test_same_seed_same_draws(void)
{
	uint64_t s = seed0 ^ 5;
	enum { V = 300, N = 200 };
	float x[V], y[V];
	random_logits(x, V, &s);
	struct gen_opts kinds[] = {{.temperature = 1, .top_p = 1}, {.temperature = 0.7f, .top_k = 40, .top_p = 1},
				   {.temperature = 1.2f, .top_p = 0.9f}, {.temperature = 1, .top_k = 20, .top_p = 0.8f}};
	for (int k = 0; k < 4; k++) {
		int32_t a[N], b[N], c[N];
		uint64_t ra = 42, rb = 42, rc = 43;
		for (int i = 0; i < N; i++) {
			memcpy(y, x, sizeof x), a[i] = gen_sample(y, V, &kinds[k], &ra);
			memcpy(y, x, sizeof x), b[i] = gen_sample(y, V, &kinds[k], &rb);
			memcpy(y, x, sizeof x), c[i] = gen_sample(y, V, &kinds[k], &rc);
		}
		CHECK(!memcmp(a, b, sizeof a), "kind %d: seed 42 twice gave different draws", k);
		CHECK(memcmp(a, c, sizeof a), "kind %d: seeds 42 and 43 gave the same %d draws", k, N);
	}
}

/* ------------------------------------------------------- the stand-in model */

/* Scripted logits: prompt token p (the first of the prompt) selects script p;
 * step t of the generation gets logits with script[p][t] highest, or random
 * logits when the script says -1. */
#define FAKE_MAX 64
static int32_t fake_script[4][FAKE_MAX];
static int fake_calls, fake_vocab, fake_max_batch;
static uint64_t fake_rng;

/* A cache of the stand-in model: where its sequence is in its script. */
struct fake_kv {
	struct kv_cache kv;
	int prompt, step;
};

struct kv_cache *kv_cache_new(const struct model_config *cfg, int max_seq, struct err *err)
{
	struct fake_kv *f = calloc(1, sizeof *f);
	if (!f) {
		err_sys(err, "out of memory");
		return NULL;
	}
	f->kv.max_seq = max_seq;
	f->kv.n_layers = cfg->n_layers;
	return &f->kv;
}

void kv_cache_free(struct kv_cache *kv) { free(kv); }

static int fake_run(const struct model *m, struct kv_cache *kv, const int32_t *tokens, int n, float *logits,
		    struct err *err)
{
	struct fake_kv *f = (struct fake_kv *)kv;
	if (kv->n + n > kv->max_seq)
		return err_set(err, "stand-in model: cache full (%d + %d > %d)", kv->n, n, kv->max_seq);
	for (int i = 0; i < n; i++)
		if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab)
			return err_set(err, "stand-in model: token %d out of the vocabulary", tokens[i]);
	if (kv->n == 0)
		f->prompt = tokens[0] & 3, f->step = 0;
	kv->n += n;
	int32_t want = f->step < FAKE_MAX ? fake_script[f->prompt][f->step] : 0;
	f->step++;
	for (int i = 0; i < m->cfg.vocab; i++)
		logits[i] = want < 0 ? (float)(rnd01(&fake_rng) * 4) : 0;
	if (want >= 0)
		logits[want] = 10;
	return 0;
}

int model_forward(const struct model *m, const struct lora *lo, struct kv_cache *kv, const int32_t *tokens, int n,
		  float *logits, int all_logits, struct err *err)
{
	if (!kv || all_logits)
		return err_set(err, "stand-in model: called without a cache or for all logits");
	fake_calls++;
	return fake_run(m, kv, tokens, n, logits, err);
}

int model_forward_batch(const struct model *m, const struct lora *lo, struct kv_cache *const *kvs,
			const int32_t *tokens, int n_seq, float *logits, struct err *err)
{
	fake_calls++;
	if (n_seq > fake_max_batch)
		fake_max_batch = n_seq;
	for (int b = 0; b < n_seq; b++)
		if (fake_run(m, kvs[b], tokens + b, 1, logits + (size_t)b * m->cfg.vocab, err) < 0)
			return -1;
	return 0;
}

static void fake_model(struct model *m, int vocab, int eos)
{
	memset(m, 0, sizeof *m);
	m->cfg.vocab = vocab;
	m->cfg.n_layers = 1;
	m->cfg.max_pos = 1000;
	m->cfg.n_eos = 1;
	m->cfg.eos_ids[0] = eos;
	fake_vocab = vocab;
	fake_calls = 0;
}

/* ------------------------------------------------------------- tokenizers */

/* Byte-level: ids 0..255 are the bytes, then the added token <eos> (256) and
 * the words below (257...). */
static const char *WORDS[] = {"Hel", "lo\\u0120ST", "OP\\u0120more", "\\u0120world", "</", "end", ">", NULL};
enum { EOS = 256, W_HEL, W_LOST, W_OPMORE, W_WORLD, W_LT, W_END, W_GT };

static struct tokenizer *bytelevel(void)
{
	struct buf b = {0};
	put(&b, "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":256,\"content\":\"<eos>\",\"special\":true}],"
		"\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
		"\"trim_offsets\":true,\"use_regex\":true},\"post_processor\":null,"
		"\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true},"
		"\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"continuing_subword_prefix\":null,"
		"\"end_of_word_suffix\":null,\"fuse_unk\":false,\"byte_fallback\":false,\"ignore_merges\":false,"
		"\"vocab\":{");
	char num[32];
	put_byte_vocab(&b);
	put(&b, ",\"<eos>\":256");
	for (int i = 0; WORDS[i]; i++) {
		put(&b, ",\"");
		put(&b, WORDS[i]);
		snprintf(num, sizeof num, "\":%d", 257 + i);
		put(&b, num);
	}
	put(&b, "},\"merges\":[]}}");
	struct err err = {0};
	struct tokenizer *tk = tokenizer_from_json(b.p, b.n, "bytelevel", &err);
	if (!tk)
		printf("# tokenizer: %s\n", err.msg);
	free(b.p);
	return tk;
}

/* SentencePiece-style, as Llama 2 decodes: "▁" to space, byte fallback, the
 * first space stripped. */
static const char *SP_JSON =
	"{\"version\":\"1.0\",\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},"
	"{\"id\":1,\"content\":\"</s>\",\"special\":true}],"
	"\"normalizer\":{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"},"
	"\"pre_tokenizer\":null,\"post_processor\":null,"
	"\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\\u2581\"},"
	"\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},"
	"{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
	"\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,\"byte_fallback\":true,"
	"\"vocab\":{\"<unk>\":0,\"</s>\":1,\"<0xE2>\":2,\"<0x82>\":3,\"<0xAC>\":4,\"\\u2581Hello\":5,"
	"\"\\u2581world\":6,\"\\u2581\":7,\"<0xF0>\":8,\"<0x9F>\":9,\"<0x99>\":10,\"<0x83>\":11},"
	"\"merges\":[]}}";

/* What on_text received, per prompt. */
struct streamed {
	char text[8][512];
	size_t len[8];
	int calls[8];
	int bad_utf8;     /* a piece that began or ended inside a character */
	const char *forbid; /* a string no piece may hold a prefix of at its end */
};

static int utf8_whole(const char *s, size_t n)
{
	if (n && ((unsigned char)s[0] & 0xC0) == 0x80)
		return 0;
	size_t i = n;
	int cont = 0;
	while (i > 0 && ((unsigned char)s[i - 1] & 0xC0) == 0x80)
		i--, cont++;
	if (i == 0)
		return cont == 0;
	unsigned char lead = (unsigned char)s[i - 1];
	int need = lead < 0x80 ? 0 : lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : 1;
	return need == cont;
}

static void on_text(void *ctx, int prompt, const char *text, size_t len)
{
	struct streamed *st = ctx;
	if (!utf8_whole(text, len))
		st->bad_utf8 = 1;
	if (st->len[prompt] + len < sizeof st->text[0]) {
		memcpy(st->text[prompt] + st->len[prompt], text, len);
		st->len[prompt] += len;
		st->text[prompt][st->len[prompt]] = 0;
	}
	st->calls[prompt]++;
}

static void script(int p, const int32_t *ids, int n)
{
	for (int i = 0; i < FAKE_MAX; i++)
		fake_script[p][i] = i < n ? ids[i] : 0;
}

#define SCRIPT(p, ...)                                                                  \
	do {                                                                            \
		const int32_t ids_[] = {__VA_ARGS__};                                   \
		script(p, ids_, (int)(sizeof ids_ / sizeof ids_[0]));                   \
	} while (0)

/* Runs one prompt (its first token selects the script). */
static int run1(const struct model *m, const struct tokenizer *tk, int p, struct gen_opts *o, struct streamed *st,
		struct gen_result *r, struct err *err)
{
	int32_t prompt[3] = {p, p, p};
	const int32_t *ps[1] = {prompt};
	int lens[1] = {3};
	if (st) {
		memset(st, 0, sizeof *st);
		o->on_text = on_text, o->ctx = st;
	}
	return generate(m, tk, ps, lens, 1, o, r, err);
}

/* ------------------------------------------------------- generation cases */

static void test_eos_stop_ids_and_max_new(void)
{
	struct tokenizer *tk = bytelevel();
	CHECK(tk, "tokenizer");
	if (!tk)
		return;
	struct model m;
	fake_model(&m, 264, EOS);
	struct err err = {0};
	struct gen_result r;
	struct streamed st;

	SCRIPT(0, 'h', 'i', EOS, 'x');
	struct gen_opts o = {.max_new = 10, .top_p = 1};
	if (run1(&m, tk, 0, &o, &st, &r, &err) != 0) {
		CHECK(0, "generate: %s", err.msg);
		return;
	}
	CHECK(r.stop == GEN_EOS && r.n_ids == 2 && !strcmp(r.text, "hi") && r.len == 2,
	      "EOS: stop %d, %d ids, text '%s'", r.stop, r.n_ids, r.text);
	CHECK(!strcmp(st.text[0], "hi"), "streamed '%s'", st.text[0]);
	CHECK(fake_calls == 3, "%d forward calls for a prompt and 2 tokens, want 3", fake_calls);
	gen_result_free(&r);

	/* a stop id ends like EOS and is not in the text */
	int32_t stop_ids[] = {'!'};
	SCRIPT(0, 'o', 'k', '!', 'x');
	o.stop_ids = stop_ids, o.n_stop_ids = 1;
	if (run1(&m, tk, 0, &o, &st, &r, &err) != 0) {
		CHECK(0, "generate: %s", err.msg);
		return;
	}
	CHECK(r.stop == GEN_EOS && r.n_ids == 2 && !strcmp(r.text, "ok"), "stop id: stop %d, text '%s'", r.stop, r.text);
	gen_result_free(&r);
	o.stop_ids = NULL, o.n_stop_ids = 0;

	/* max_new: exactly that many, and no forward call after the last */
	SCRIPT(0, 'a', 'b', 'c', 'd', 'e', 'f');
	o.max_new = 4;
	fake_calls = 0;
	if (run1(&m, tk, 0, &o, &st, &r, &err) != 0) {
		CHECK(0, "generate: %s", err.msg);
		return;
	}
	CHECK(r.stop == GEN_LENGTH && r.n_ids == 4 && !strcmp(r.text, "abcd"), "max_new: stop %d, text '%s'", r.stop,
	      r.text);
	CHECK(fake_calls == 4, "%d forward calls for max_new 4, want 4 (prefill + 3)", fake_calls);
	CHECK(!strcmp(st.text[0], "abcd"), "streamed '%s'", st.text[0]);
	gen_result_free(&r);

	/* max_new 0: nothing, no forward call */
	o.max_new = 0;
	fake_calls = 0;
	if (run1(&m, tk, 0, &o, NULL, &r, &err) != 0) {
		CHECK(0, "generate: %s", err.msg);
		return;
	}
	CHECK(r.stop == GEN_LENGTH && r.n_ids == 0 && r.text && !*r.text && fake_calls == 0,
	      "max_new 0: stop %d, %d ids, %d calls", r.stop, r.n_ids, fake_calls);
	gen_result_free(&r);

	/* the model's context ends first: stop at max_pos, cache never overfilled */
	m.cfg.max_pos = 5;
	o.max_new = 10;
	if (run1(&m, tk, 0, &o, NULL, &r, &err) != 0) {
		CHECK(0, "generate: %s", err.msg);
		return;
	}
	CHECK(r.stop == GEN_LENGTH && r.n_ids == 2, "context 5, prompt 3: %d ids, stop %d", r.n_ids, r.stop);
	gen_result_free(&r);
	m.cfg.max_pos = 2;
	CHECK(run1(&m, tk, 0, &o, NULL, &r, &err) < 0 && strstr(err.msg, "context"),
	      "a prompt longer than the context: '%s'", err.msg);
	tokenizer_free(tk);
}

static void test_stop_strings(void)
{
	struct tokenizer *tk = bytelevel();
	CHECK(tk, "tokenizer");
	if (!tk)
		return;
	struct model m;
	fake_model(&m, 264, EOS);
	struct err err = {0};
	struct gen_result r;
	struct streamed st;

	/* "Hel" "lo ST" "OP more": the stop string spans two tokens */
	const char *stop1[] = {"STOP"};
	SCRIPT(0, W_HEL, W_LOST, W_OPMORE, W_WORLD);
	struct gen_opts o = {.max_new = 10, .top_p = 1, .stop = stop1, .n_stop = 1};
	if (run1(&m, tk, 0, &o, &st, &r, &err) != 0) {
		CHECK(0, "generate: %s", err.msg);
		return;
	}
	CHECK(r.stop == GEN_STOP_STRING && !strcmp(r.text, "Hello ") && r.len == 6 && r.n_ids == 3,
	      "spanning stop: stop %d, %d ids, text '%s'", r.stop, r.n_ids, r.text);
	CHECK(!strcmp(st.text[0], "Hello "), "streamed '%s', want 'Hello '", st.text[0]);
	gen_result_free(&r);

	/* the earliest of several stop strings wins; one that never comes does nothing */
	const char *stop2[] = {"more", "zzz", "lo"};
	o.stop = stop2, o.n_stop = 3;
	if (run1(&m, tk, 0, &o, &st, &r, &err) != 0) {
		CHECK(0, "generate: %s", err.msg);
		return;
	}
	CHECK(r.stop == GEN_STOP_STRING && !strcmp(r.text, "Hel"), "earliest stop: text '%s'", r.text);
	CHECK(!strcmp(st.text[0], "Hel"), "streamed '%s'", st.text[0]);
	gen_result_free(&r);

	/* a possible start is held back: "a</" is streamed as "a" until "</end>" shows */
	const char *stop3[] = {"</end>"};
	SCRIPT(0, 'a', W_LT, W_END, W_GT, 'b');
	o.stop = stop3, o.n_stop = 1;
	if (run1(&m, tk, 0, &o, &st, &r, &err) != 0) {
		CHECK(0, "generate: %s", err.msg);
		return;
	}
	CHECK(r.stop == GEN_STOP_STRING && !strcmp(r.text, "a"), "held start: text '%s'", r.text);
	CHECK(!strcmp(st.text[0], "a") && st.calls[0] == 1, "streamed '%s' in %d calls", st.text[0], st.calls[0]);
	gen_result_free(&r);

	/* a held start that turns out not to be one is streamed when it is clear */
	SCRIPT(0, 'a', W_LT, W_GT, 'b', EOS);
	if (run1(&m, tk, 0, &o, &st, &r, &err) != 0) {
		CHECK(0, "generate: %s", err.msg);
		return;
	}
	CHECK(r.stop == GEN_EOS && !strcmp(r.text, "a</>b"), "false start: text '%s'", r.text);
	CHECK(!strcmp(st.text[0], "a</>b"), "streamed '%s'", st.text[0]);
	gen_result_free(&r);

	/* a stop string at the very start gives empty text */
	const char *stop4[] = {"Hel"};
	SCRIPT(0, W_HEL, 'x');
	o.stop = stop4;
	if (run1(&m, tk, 0, &o, &st, &r, &err) != 0) {
		CHECK(0, "generate: %s", err.msg);
		return;
	}
	CHECK(r.stop == GEN_STOP_STRING && r.len == 0 && st.calls[0] == 0, "stop first: text '%s', %d calls", r.text,
	      st.calls[0]);
	gen_result_free(&r);
	tokenizer_free(tk);
}

static void test_utf8_hold_back(void)
{
	struct tokenizer *tk = bytelevel();
	CHECK(tk, "tokenizer");
	if (!tk)
		return;
	struct model m;
	fake_model(&m, 264, EOS);
	struct err err = {0};
	struct gen_result r;
	struct streamed st;
	/* "é" "€" "🙂" one byte per token, with ASCII between */
	SCRIPT(0, 'a', 0xC3, 0xA9, 'b', 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x99, 0x82, 'c', EOS);
	struct gen_opts o = {.max_new = 20, .top_p = 1};
	if (run1(&m, tk, 0, &o, &st, &r, &err) != 0) {
		CHECK(0, "generate: %s", err.msg);
		return;
	}
	const char *want = "a\xc3\xa9" "b\xe2\x82\xac\xf0\x9f\x99\x82" "c";
	CHECK(r.stop == GEN_EOS && !strcmp(r.text, want), "text '%s'", r.text);
	CHECK(!strcmp(st.text[0], want), "streamed '%s'", st.text[0]);
	CHECK(!st.bad_utf8, "a streamed piece split a character");
	CHECK(!strstr(st.text[0], "\xef\xbf\xbd"), "U+FFFD was streamed");
	gen_result_free(&r);

	/* cut short by max_new inside a character: the text is what the tokenizer
	 * decodes (U+FFFD), streamed at the end */
	SCRIPT(0, 'a', 0xE2, 0x82, 'x');
	o.max_new = 3;
	if (run1(&m, tk, 0, &o, &st, &r, &err) != 0) {
		CHECK(0, "generate: %s", err.msg);
		return;
	}
	CHECK(r.stop == GEN_LENGTH && !strcmp(r.text, "a\xef\xbf\xbd"), "cut char: text '%s'", r.text);
	CHECK(!strcmp(st.text[0], r.text), "streamed '%s'", st.text[0]);
	gen_result_free(&r);

	/* a stop string made of a whole character, reached byte by byte */
	const char *stop[] = {"\xe2\x82\xac"};
	SCRIPT(0, 'a', 0xE2, 0x82, 0xAC, 'b');
	o.max_new = 10, o.stop = stop, o.n_stop = 1;
	if (run1(&m, tk, 0, &o, &st, &r, &err) != 0) {
		CHECK(0, "generate: %s", err.msg);
		return;
	}
	CHECK(r.stop == GEN_STOP_STRING && !strcmp(r.text, "a") && !strcmp(st.text[0], "a"), "euro stop: '%s' '%s'",
	      r.text, st.text[0]);
	gen_result_free(&r);
	tokenizer_free(tk);
}

static void test_sentencepiece_stream(void)
{
	struct err err = {0};
	struct tokenizer *tk = tokenizer_from_json(SP_JSON, strlen(SP_JSON), "sp", &err);
	CHECK(tk, "tokenizer: %s", err.msg);
	if (!tk)
		return;
	struct model m;
	fake_model(&m, 12, 1);
	struct gen_result r;
	struct streamed st;
	/* ▁Hello ▁world ▁ <E2><82><AC> ▁ <F0><9F><99><83> </s> */
	SCRIPT(0, 5, 6, 7, 2, 3, 4, 7, 8, 9, 10, 11, 1);
	struct gen_opts o = {.max_new = 20, .top_p = 1};
	if (run1(&m, tk, 0, &o, &st, &r, &err) != 0) {
		CHECK(0, "generate: %s", err.msg);
		return;
	}
	const char *want = "Hello world \xe2\x82\xac \xf0\x9f\x99\x83";
	CHECK(r.stop == GEN_EOS && !strcmp(r.text, want), "text '%s', want '%s'", r.text, want);
	CHECK(!strcmp(st.text[0], want), "streamed '%s'", st.text[0]);
	CHECK(!st.bad_utf8 && !strstr(st.text[0], "\xef\xbf\xbd"), "a partial character was streamed");
	gen_result_free(&r);
	tokenizer_free(tk);
}

/* Several prompts in one call; sampled ones draw from seed + prompt index. */
static void test_prompts_and_seeds(void)
{
	struct tokenizer *tk = bytelevel();
	CHECK(tk, "tokenizer");
	if (!tk)
		return;
	struct model m;
	fake_model(&m, 264, EOS);
	struct err err = {0};
	for (int p = 0; p < 4; p++)
		for (int i = 0; i < FAKE_MAX; i++)
			fake_script[p][i] = -1; /* random logits */
	struct gen_opts o = {.max_new = 30, .temperature = 1, .top_p = 0.95f, .seed = 1000};
	int32_t pr[3][2] = {{0, 'a'}, {1, 'b'}, {2, 'c'}};
	const int32_t *ps[3] = {pr[0], pr[1], pr[2]};
	int lens[3] = {2, 2, 2};
	struct gen_result a[3], b[3], c[1];
	struct streamed st = {0};
	o.on_text = on_text, o.ctx = &st;
	fake_rng = 99; /* the stand-in's logits repeat with its generator */
	CHECK(generate(&m, tk, ps, lens, 3, &o, a, &err) == 0, "generate: %s", err.msg);
	o.on_text = NULL;
	fake_rng = 99;
	CHECK(generate(&m, tk, ps, lens, 3, &o, b, &err) == 0, "generate: %s", err.msg);
	for (int i = 0; i < 3; i++) {
		CHECK(a[i].n_ids == b[i].n_ids && !memcmp(a[i].ids, b[i].ids, (size_t)a[i].n_ids * sizeof(int32_t)),
		      "prompt %d: the same seed gave different ids", i);
		CHECK(a[i].len == st.len[i] && !memcmp(a[i].text, st.text[i], a[i].len),
		      "prompt %d: streamed text differs from the result", i);
	}
	/* prompt 1 of seed 1000 draws as prompt 0 of seed 1001 given the same
	 * logits: replay the stand-in's generator up to where prompt 1 began
	 * (one vocabulary of numbers per forward call) */
	fake_rng = 99;
	int skip = (a[0].stop == GEN_LENGTH ? a[0].n_ids : a[0].n_ids + 1) * m.cfg.vocab;
	for (int i = 0; i < skip; i++)
		rnd01(&fake_rng);
	o.seed = 1001;
	CHECK(generate(&m, tk, ps, lens, 1, &o, c, &err) == 0, "generate: %s", err.msg);
	CHECK(c[0].n_ids == a[1].n_ids && !memcmp(c[0].ids, a[1].ids, (size_t)c[0].n_ids * sizeof(int32_t)),
	      "prompt 0 with seed 1001 differs from prompt 1 with seed 1000");
	int same = a[0].n_ids == a[1].n_ids && !memcmp(a[0].ids, a[1].ids, (size_t)a[0].n_ids * sizeof(int32_t));
	CHECK(!same, "prompts 0 and 1 drew the same %d ids", a[0].n_ids);
	for (int i = 0; i < 3; i++)
		gen_result_free(&a[i]), gen_result_free(&b[i]);
	gen_result_free(&c[0]);
	tokenizer_free(tk);
}

/* Prompts decoded in batches get what they get one at a time: ids, text,
 * stop reason and streamed pieces (the stand-in's logits depend only on the
 * prompt and the step), in fewer forward calls. */
static void test_batches(void)
{
	struct tokenizer *tk = bytelevel();
	CHECK(tk, "tokenizer");
	if (!tk)
		return;
	struct model m;
	fake_model(&m, 264, EOS);
	struct err err = {0};
	SCRIPT(0, 'h', 'i', EOS);
	SCRIPT(1, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l');
	SCRIPT(2, EOS);
	SCRIPT(3, 'x', 'y', 'S', 'T', 'O', 'P', 'z');
	const char *stop[] = {"STOP"};
	int32_t pr[5][3] = {{0, 1, 2}, {1, 1}, {2}, {3, 3, 3}, {1}};
	const int32_t *ps[5] = {pr[0], pr[1], pr[2], pr[3], pr[4]};
	int lens[5] = {3, 2, 1, 3, 1};
	const int batches[] = {1, 3, 8};
	struct gen_result r[3][5];
	struct streamed st[3];
	int calls[3];
	for (int k = 0; k < 3; k++) {
		struct gen_opts o = {.max_new = 9, .top_p = 1, .stop = stop, .n_stop = 1, .batch = batches[k]};
		memset(&st[k], 0, sizeof st[k]);
		o.on_text = on_text, o.ctx = &st[k];
		fake_calls = 0, fake_max_batch = 0;
		CHECK(generate(&m, tk, ps, lens, 5, &o, r[k], &err) == 0, "batch %d: %s", batches[k], err.msg);
		calls[k] = fake_calls;
		/* prompt 2 ends at its first token, before any decoding step */
		const int together[] = {1, 2, 4};
		CHECK(fake_max_batch == together[k], "batch %d: at most %d prompts decoded together, want %d",
		      batches[k], fake_max_batch, together[k]);
	}
	for (int k = 1; k < 3; k++)
		for (int i = 0; i < 5; i++) {
			CHECK(r[k][i].n_ids == r[0][i].n_ids &&
				      (!r[0][i].n_ids ||
				       !memcmp(r[k][i].ids, r[0][i].ids, (size_t)r[0][i].n_ids * sizeof(int32_t))) &&
				      r[k][i].stop == r[0][i].stop && r[k][i].len == r[0][i].len &&
				      !memcmp(r[k][i].text, r[0][i].text, r[0][i].len),
			      "batch %d, prompt %d: \"%s\" (stop %d), one at a time \"%s\" (stop %d)", batches[k], i,
			      r[k][i].text, r[k][i].stop, r[0][i].text, r[0][i].stop);
			CHECK(i > 3 || (st[k].len[i] == st[0].len[i] && !memcmp(st[k].text[i], st[0].text[i], st[0].len[i])),
			      "batch %d, prompt %d: streamed text differs", batches[k], i);
		}
	CHECK(!strcmp(r[0][0].text, "hi") && r[0][0].stop == GEN_EOS && r[0][2].n_ids == 0 &&
		      !strcmp(r[0][3].text, "xy") && r[0][3].stop == GEN_STOP_STRING &&
		      r[0][1].stop == GEN_LENGTH && r[0][1].n_ids == 9,
	      "one at a time: \"%s\" %d, %d ids, \"%s\" %d, %d/%d", r[0][0].text, r[0][0].stop, r[0][2].n_ids,
	      r[0][3].text, r[0][3].stop, r[0][1].stop, r[0][1].n_ids);
	CHECK(calls[1] < calls[0] && calls[2] < calls[1], "forward calls: %d, %d, %d for batches 1, 3, 8", calls[0],
	      calls[1], calls[2]);
	for (int k = 0; k < 3; k++)
		for (int i = 0; i < 5; i++)
			gen_result_free(&r[k][i]);
	tokenizer_free(tk);
}

int main(void)
{
	const char *env = getenv("GEN_TEST_SEED");
	seed0 = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
	printf("# seed %" PRIu64 " (GEN_TEST_SEED to repeat)\n", seed0);
	RUN(test_greedy_ties_lowest_id);
	RUN(test_top_k1_is_greedy);
	RUN(test_temperature_distribution);
	RUN(test_top_p_mass_rule);
	RUN(test_same_seed_same_draws);
	RUN(test_eos_stop_ids_and_max_new);
	RUN(test_stop_strings);
	RUN(test_utf8_hold_back);
	RUN(test_sentencepiece_stream);
	RUN(test_prompts_and_seeds);
	RUN(test_batches);
	return check_done();
}
