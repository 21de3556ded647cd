/* test_backend_cpu: every op of the cpu backend against a naive implementation
 * in double precision, on fresh random inputs (the seed is printed; set
 * LORAPIPE_SEED to replay one). Tolerance: max |ours - naive| / max |naive|
 * over the output below TOL (fp32 rounding of sums of a few hundred terms;
 * elementwise ops: per element, relative with a floor of 1e-2, 5e-5 for
 * GELU, where torch's own fp32 formula is 1.5e-5 off);
 * quantized weights are compared with weight_rows_f32's dequantization of the
 * same weight through the naive product, at the same tolerance. Matmul and
 * attention run at 1, 2 and 3 threads: twice at the same thread count must
 * give the same bits, and so must every thread count for attention and for
 * non-fp32 weights (their work items do not depend on it). */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "check.h"
#include "model.h"

#define TOL 1e-5

static unsigned long long seed;

static float *rnd(int64_t count, double scale)
{
	float *x = malloc((size_t)count * sizeof *x);
	for (int64_t i = 0; i < count; i++)
		x[i] = (float)((check_urand() * 2 - 1) * scale);
	return x;
}

/* max |a - b| / max |b| */
static double rel_err(const float *a, const double *b, int64_t count)
{
	double md = 0, mb = 0;
	for (int64_t i = 0; i < count; i++) {
		double d = fabs(a[i] - b[i]);
		if (!(d <= md)) /* catches NaN */
			md = d;
		if (fabs(b[i]) > mb)
			mb = fabs(b[i]);
	}
	return mb > 0 ? md / mb : md;
}

/* max |a - b| / max(|b|, 1e-2) per element (elementwise ops; the floor spares
 * GELU's far tail, where torch's 1 + tanh(u) cancels in fp32: there ours and
 * torch's may differ by ~1e-7 absolute) */
static double rel_err_elem(const float *a, const double *b, int64_t count)
{
	double m = 0;
	for (int64_t i = 0; i < count; i++) {
		double e = fabs(a[i] - b[i]) / (fabs(b[i]) > 1e-2 ? fabs(b[i]) : 1e-2);
		if (!(e <= m))
			m = e;
	}
	return m;
}

static const int thread_counts[] = {1, 2, 3};

/* ---- matmul ---- */

static void naive_matmul(double *y, const float *x, const float *w, const float *bias, int n, int rows, int cols)
{
	for (int t = 0; t < n; t++)
		for (int r = 0; r < rows; r++) {
			double s = bias ? bias[r] : 0;
			for (int c = 0; c < cols; c++)
				s += (double)x[t * cols + c] * w[(int64_t)r * cols + c];
			y[(int64_t)t * rows + r] = s;
		}
}

static void check_matmul(enum wfmt fmt, int n, int rows, int cols, int with_bias)
{
	struct err err;
	float *wf = rnd((int64_t)rows * cols, 0.5), *x = rnd((int64_t)n * cols, 1.0);
	float *bias = with_bias ? rnd(rows, 0.3) : NULL;
	struct weight w;
	if (weight_from_f32(&w, fmt, wf, rows, cols, &err) < 0) {
		CHECK(0, "weight_from_f32 %s: %s", wfmt_name(fmt), err.msg);
		goto out;
	}
	/* the reference sees the dequantized weight */
	float *wd = malloc((size_t)rows * cols * sizeof *wd);
	weight_rows_f32(&w, 0, rows, wd);
	double *want = malloc((size_t)n * rows * sizeof *want);
	naive_matmul(want, x, wd, bias, n, rows, cols);
	float *y = malloc((size_t)n * rows * sizeof *y), *y2 = malloc((size_t)n * rows * sizeof *y2);
	float *y1 = malloc((size_t)n * rows * sizeof *y1);
	for (size_t i = 0; i < sizeof thread_counts / sizeof *thread_counts; i++) {
		backend_cpu_threads(thread_counts[i]);
		backend_cpu.matmul(y, x, &w, bias, n);
		/* tiles do not depend on the thread count: neither do the bits */
		if (i == 0)
			memcpy(y1, y, (size_t)n * rows * sizeof *y);
		else if (fmt != WFMT_F32)
			CHECK(!memcmp(y, y1, (size_t)n * rows * sizeof *y), "%s: %d threads differ from 1",
			      wfmt_name(fmt), thread_counts[i]);
		double e = rel_err(y, want, (int64_t)n * rows);
		CHECK(e < TOL, "seed %llu: %s n=%d %d×%d bias=%d threads=%d: rel err %.3g", seed, wfmt_name(fmt), n,
		      rows, cols, with_bias, thread_counts[i], e);
		backend_cpu.matmul(y2, x, &w, bias, n);
		CHECK(!memcmp(y, y2, (size_t)n * rows * sizeof *y), "%s: two runs differ at %d threads", wfmt_name(fmt),
		      thread_counts[i]);
	}
	free(y);
	free(y1);
	free(y2);
	free(want);
	free(wd);
	weight_free(&w);
out:
	free(wf);
	free(x);
	free(bias);
}

/* Rows decoded together get the bits they get alone (decoding in a batch
 * changes no token): for every n the small-batch path handles, each row of
 * y equals a product with that row of x alone. */
static void test_matmul_rows_independent(void)
{
	const int rows = 45, cols = 83;
	const int ns[] = {2, 5, 8, 9, 17, 32};
	float *wf = rnd((int64_t)rows * cols, 0.5), *x = rnd((int64_t)32 * cols, 1.0);
	float *y = malloc((size_t)32 * rows * sizeof *y), *y1 = malloc((size_t)rows * sizeof *y1);
	const enum wfmt fmts[] = {WFMT_F32, WFMT_NF4};
	for (size_t f = 0; f < 2; f++) {
		struct weight w;
		struct err err;
		if (weight_from_f32(&w, fmts[f], wf, rows, cols, &err) < 0) {
			CHECK(0, "weight_from_f32: %s", err.msg);
			continue;
		}
		backend_cpu_threads(2);
		for (size_t i = 0; i < sizeof ns / sizeof *ns; i++) {
			backend_cpu.matmul(y, x, &w, NULL, ns[i]);
			int same = 1;
			for (int t = 0; t < ns[i] && same; t++) {
				backend_cpu.matmul(y1, x + (int64_t)t * cols, &w, NULL, 1);
				same = !memcmp(y1, y + (int64_t)t * rows, (size_t)rows * sizeof *y1);
			}
			CHECK(same, "%s n=%d: a row of the product differs from its product alone", wfmt_name(fmts[f]),
			      ns[i]);
		}
		weight_free(&w);
	}
	free(wf);
	free(x);
	free(y);
	free(y1);
}

static void test_matmul_f32(void)
{
	check_matmul(WFMT_F32, 7, 37, 29, 0);
	check_matmul(WFMT_F32, 1, 37, 29, 1);
	check_matmul(WFMT_F32, 19, 64, 128, 1);
	/* 300 rows: split in row slices between 2 and 3 threads */
	check_matmul(WFMT_F32, 19, 300, 64, 1);
	check_matmul(WFMT_F32, 1, 300, 64, 0);
}

/* 300 rows of 512 are more than one tile (256 KB of fp32 per thread): the
 * tiles' seams are crossed. */
static void test_matmul_bf16(void)
{
	check_matmul(WFMT_BF16, 5, 300, 512, 1);
	check_matmul(WFMT_BF16, 1, 300, 512, 0);
}

static void test_matmul_nf4(void)
{
	check_matmul(WFMT_NF4, 5, 300, 512, 0);
	check_matmul(WFMT_NF4, 1, 300, 512, 1);
	check_matmul(WFMT_NF4, 3, 13, 70, 0); /* blocks across rows */
}

static void test_matmul_int8(void)
{
	check_matmul(WFMT_INT8, 5, 300, 512, 0);
	check_matmul(WFMT_INT8, 1, 300, 512, 1);
}

/* ---- rmsnorm ---- */

static void check_rmsnorm(int rows, int dim, int plus_one, int in_place)
{
	float *x = rnd((int64_t)rows * dim, 2.0), *w = rnd(dim, 1.0);
	const float eps = 1e-6f;
	double *want = malloc((size_t)rows * dim * sizeof *want);
	for (int r = 0; r < rows; r++) {
		double ss = 0;
		for (int i = 0; i < dim; i++)
			ss += (double)x[r * dim + i] * x[r * dim + i];
		double inv = 1 / sqrt(ss / dim + eps);
		for (int i = 0; i < dim; i++)
			want[r * dim + i] = x[r * dim + i] * inv * (plus_one ? 1.0 + w[i] : (double)w[i]);
	}
	float *y = in_place ? x : malloc((size_t)rows * dim * sizeof *y);
	backend_cpu_threads(2);
	backend_cpu.rmsnorm(y, x, w, rows, dim, eps, plus_one);
	double e = rel_err(y, want, (int64_t)rows * dim);
	CHECK(e < TOL, "seed %llu: rows=%d dim=%d plus_one=%d in_place=%d: rel err %.3g", seed, rows, dim, plus_one,
	      in_place, e);
	if (!in_place)
		free(y);
	free(x);
	free(w);
	free(want);
}

static void test_rmsnorm(void)
{
	check_rmsnorm(5, 64, 0, 0);
	check_rmsnorm(300, 96, 1, 0);
	check_rmsnorm(700, 32, 0, 1);
	check_rmsnorm(3, 576, 1, 1);
}

/* ---- rope ---- */

static void test_rope(void)
{
	const int n = 40, heads = 3, hd = 16, half = hd / 2;
	struct rope_config rc = {ROPE_DEFAULT, 10000, 1, 1, 1, 0};
	float inv[8];
	rope_inv_freq(&rc, hd, inv);
	int32_t pos[40];
	for (int t = 0; t < n; t++)
		pos[t] = 100 + 3 * t;
	float *x = rnd((int64_t)n * heads * hd, 1.0);
	double *want = malloc((size_t)n * heads * hd * sizeof *want);
	for (int t = 0; t < n; t++)
		for (int h = 0; h < heads; h++)
			for (int i = 0; i < half; i++) {
				const float *a = x + (t * heads + h) * hd;
				double f = (float)pos[t] * inv[i]; /* the angle as transformers rounds it */
				double c = cos(f), s = sin(f);
				want[(t * heads + h) * hd + i] = a[i] * c - a[i + half] * s;
				want[(t * heads + h) * hd + i + half] = a[i + half] * c + a[i] * s;
			}
	backend_cpu_threads(2);
	backend_cpu.rope(x, n, heads, hd, pos, inv);
	double e = rel_err(x, want, (int64_t)n * heads * hd);
	CHECK(e < TOL, "seed %llu: rel err %.3g", seed, e);
	/* inv_freq itself: 1 / theta^(2i/d) */
	for (int i = 0; i < half; i++) {
		double w = 1 / pow(10000, 2.0 * i / hd);
		CHECK(fabs(inv[i] - w) <= 2e-7 * w, "inv_freq[%d] = %.9g, want %.9g", i, inv[i], w);
	}
	free(x);
	free(want);
}

/* ---- attention ---- */

struct attn_case {
	const char *what;
	int n, n_keys, n_heads, n_kv_heads, head_dim, window;
	float softcap;
};

static void naive_attention(double *out, const float *q, const float *k, const float *v, const struct attn_case *c,
			    const int32_t *pos, float scale)
{
	const int qs = c->n_heads * c->head_dim, ks = c->n_kv_heads * c->head_dim;
	double *s = malloc((size_t)c->n_keys * sizeof *s);
	for (int t = 0; t < c->n; t++)
		for (int h = 0; h < c->n_heads; h++) {
			int g = h / (c->n_heads / c->n_kv_heads);
			double mx = -INFINITY, sum = 0;
			for (int j = 0; j < c->n_keys; j++) {
				int vis = j <= pos[t] && (c->window <= 0 || pos[t] - j < c->window);
				if (!vis) {
					s[j] = -INFINITY;
					continue;
				}
				double d = 0;
				for (int i = 0; i < c->head_dim; i++)
					d += (double)q[t * qs + h * c->head_dim + i] * k[j * ks + g * c->head_dim + i];
				d *= scale;
				if (c->softcap > 0)
					d = c->softcap * tanh(d / c->softcap);
				s[j] = d;
				if (d > mx)
					mx = d;
			}
			for (int j = 0; j < c->n_keys; j++) {
				s[j] = s[j] == -INFINITY ? 0 : exp(s[j] - mx);
				sum += s[j];
			}
			for (int i = 0; i < c->head_dim; i++) {
				double o = 0;
				for (int j = 0; j < c->n_keys; j++)
					o += s[j] * v[j * ks + g * c->head_dim + i];
				out[t * qs + h * c->head_dim + i] = o / sum;
			}
		}
	free(s);
}

static void check_attention(const struct attn_case *c)
{
	const int qs = c->n_heads * c->head_dim, ks = c->n_kv_heads * c->head_dim;
	float *q = rnd((int64_t)c->n * qs, 1.0), *k = rnd((int64_t)c->n_keys * ks, 1.0);
	float *v = rnd((int64_t)c->n_keys * ks, 1.0);
	int32_t *pos = malloc((size_t)c->n * sizeof *pos);
	for (int t = 0; t < c->n; t++) /* the last n of the keys' positions: a cache when n_keys > n */
		pos[t] = c->n_keys - c->n + t;
	float scale = 1 / sqrtf((float)c->head_dim) * 2; /* sharper than uniform softmax */
	double *want = malloc((size_t)c->n * qs * sizeof *want);
	naive_attention(want, q, k, v, c, pos, scale);
	float *out = malloc((size_t)c->n * qs * sizeof *out), *out2 = malloc((size_t)c->n * qs * sizeof *out2);
	float *out1 = malloc((size_t)c->n * qs * sizeof *out1);
	for (size_t i = 0; i < sizeof thread_counts / sizeof *thread_counts; i++) {
		backend_cpu_threads(thread_counts[i]);
		backend_cpu.attention(out, q, k, v, c->n, c->n_keys, pos, NULL, c->n_heads, c->n_kv_heads, c->head_dim,
				      scale, c->window, c->softcap);
		if (i == 0)
			memcpy(out1, out, (size_t)c->n * qs * sizeof *out);
		else
			CHECK(!memcmp(out, out1, (size_t)c->n * qs * sizeof *out), "%s: %d threads differ from 1",
			      c->what, thread_counts[i]);
		double e = rel_err(out, want, (int64_t)c->n * qs);
		CHECK(e < TOL, "seed %llu: %s, threads %d: rel err %.3g", seed, c->what, thread_counts[i], e);
		backend_cpu.attention(out2, q, k, v, c->n, c->n_keys, pos, NULL, c->n_heads, c->n_kv_heads, c->head_dim,
				      scale, c->window, c->softcap);
		CHECK(!memcmp(out, out2, (size_t)c->n * qs * sizeof *out), "%s: two runs differ", c->what);
	}
	free(q);
	free(k);
	free(v);
	free(pos);
	free(want);
	free(out);
	free(out1);
	free(out2);
}

static void test_attention_mha(void)
{
	check_attention(&(struct attn_case){"mha", 9, 9, 2, 2, 16, 0, 0});
}

static void test_attention_gqa(void)
{
	/* more rows than one query block (64) */
	check_attention(&(struct attn_case){"gqa 6/2", 150, 150, 6, 2, 32, 0, 0});
	check_attention(&(struct attn_case){"mqa 4/1", 20, 20, 4, 1, 8, 0, 0});
}

static void test_attention_window(void)
{
	check_attention(&(struct attn_case){"window 7", 130, 130, 4, 2, 16, 7, 0});
	check_attention(&(struct attn_case){"window 1", 10, 10, 2, 1, 16, 1, 0});
	check_attention(&(struct attn_case){"window 64 cache", 5, 200, 4, 2, 16, 64, 0});
}

static void test_attention_softcap(void)
{
	check_attention(&(struct attn_case){"softcap 5", 30, 30, 4, 4, 16, 0, 5.0f});
	check_attention(&(struct attn_case){"softcap + window", 70, 70, 2, 1, 16, 9, 3.0f});
}

static void test_attention_cache(void)
{
	check_attention(&(struct attn_case){"n_keys > n", 7, 40, 4, 2, 16, 0, 0});
	check_attention(&(struct attn_case){"one query", 1, 333, 6, 3, 64, 0, 0});
}

/* ---- glu, embed, add, softcap ---- */

static void test_glu(void)
{
	const int64_t count = 100003; /* several threads' chunks */
	float *g = rnd(count, 6.0), *u = rnd(count, 2.0), *h = malloc((size_t)count * sizeof *h);
	double *want = malloc((size_t)count * sizeof *want);
	for (int act = 0; act < 2; act++) {
		for (int64_t i = 0; i < count; i++) {
			double x = g[i];
			double a = act == ACT_GELU_TANH
					   ? 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)))
					   : x / (1 + exp(-x));
			want[i] = a * u[i];
		}
		backend_cpu_threads(2);
		backend_cpu.glu(h, g, u, count, act);
		/* GELU: torch's fp32 formula is itself ~1.5e-5 from the exact value
		 * by this measure (1 + tanh(u) cancels for negative x): 5 TOL */
		double e = rel_err_elem(h, want, count);
		CHECK(e < (act == ACT_GELU_TANH ? 5 * TOL : TOL), "seed %llu: act %d: rel err %.3g", seed, act, e);
	}
	free(g);
	free(u);
	free(h);
	free(want);
}

static void test_embed(void)
{
	struct err err;
	const int vocab = 50, dim = 24, n = 9;
	float *e = rnd((int64_t)vocab * dim, 1.0);
	int32_t tok[9] = {0, 49, 3, 3, 17, 25, 1, 48, 0};
	const enum wfmt fmts[] = {WFMT_F32, WFMT_BF16};
	for (int f = 0; f < 2; f++) {
		struct weight w;
		if (weight_from_f32(&w, fmts[f], e, vocab, dim, &err) < 0) {
			CHECK(0, "%s", err.msg);
			continue;
		}
		float *rows = malloc((size_t)vocab * dim * sizeof *rows), *x = malloc((size_t)n * dim * sizeof *x);
		weight_rows_f32(&w, 0, vocab, rows);
		double want[9 * 24];
		const float scale = sqrtf((float)dim);
		for (int t = 0; t < n; t++)
			for (int i = 0; i < dim; i++)
				want[t * dim + i] = (double)rows[tok[t] * dim + i] * scale;
		backend_cpu.embed(x, &w, tok, n, scale);
		double err_rel = rel_err(x, want, n * dim);
		CHECK(err_rel < 1e-7, "seed %llu: %s: rel err %.3g", seed, wfmt_name(fmts[f]), err_rel);
		free(rows);
		free(x);
		weight_free(&w);
	}
	free(e);
}

static void test_axpy_softcap(void)
{
	const int64_t count = 300001;
	float *y = rnd(count, 40.0), *x = rnd(count, 3.0);
	double *want = malloc((size_t)count * sizeof *want);
	for (int64_t i = 0; i < count; i++)
		want[i] = (double)y[i] + x[i];
	backend_cpu_threads(2);
	backend_cpu.axpy(y, x, 1, count);
	double e = rel_err(y, want, count);
	CHECK(e < 1e-7, "seed %llu: axpy with alpha 1: rel err %.3g", seed, e);
	for (int64_t i = 0; i < count; i++)
		want[i] = (double)y[i] + (double)(float)(-0.37f * x[i]);
	backend_cpu.axpy(y, x, -0.37f, count);
	e = rel_err(y, want, count);
	CHECK(e < 1e-7, "seed %llu: axpy with alpha -0.37: rel err %.3g", seed, e);
	for (int64_t i = 0; i < count; i++)
		want[i] = 30.0 * tanh(y[i] / 30.0);
	backend_cpu.softcap(y, count, 30.0f);
	e = rel_err_elem(y, want, count);
	CHECK(e < TOL, "seed %llu: softcap: rel err %.3g", seed, e);
	free(y);
	free(x);
	free(want);
}

int main(void)
{
	seed = check_seed_init();
	RUN(test_matmul_f32);
	RUN(test_matmul_rows_independent);
	RUN(test_matmul_bf16);
	RUN(test_matmul_nf4);
	RUN(test_matmul_int8);
	RUN(test_rmsnorm);
	RUN(test_rope);
	RUN(test_attention_mha);
	RUN(test_attention_gqa);
	RUN(test_attention_window);
	RUN(test_attention_softcap);
	RUN(test_attention_cache);
	RUN(test_glu);
	RUN(test_embed);
	RUN(test_axpy_softcap);
	return check_done();
}
