/* test_backend_grad: every backward op of the cpu backend against central
 * finite differences of a double-precision forward, on fresh random inputs
 * (the seed is printed; LORAPIPE_SEED replays one).
 *
 * For an op y = f(x) and a random upstream gradient R, the loss is
 * L(x) = Σ R·f(x) evaluated in double; each checked input coordinate j gets
 * (L(x + h·e_j) - L(x - h·e_j)) / 2h with h = 1e-4 (truncation ~h² ~ 1e-8
 * relative), and the op's fp32 gradient is compared over those coordinates:
 * max |ours - fd| / max |fd| < TOL = 1e-4 (fp32 rounding of the backward's
 * sums is ~1e-6). Large inputs check a random subset of FD_SAMPLES
 * coordinates. gemm is a product, compared with the double product; the
 * cross-entropy's loss is compared with the double loss as well; dropout
 * with its definition (it has no derivative of its own: its backward is
 * itself with the same seed). Ops that
 * split work over threads run at 1, 2 and 3 threads and must repeat their
 * bits at a given thread count. Packing (first_key) is also checked in the
 * forward attention against the double reference.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "backend.h"
#include "check.h"
#include "model.h"

#define TOL 1e-4
#define FD_H 1e-4
#define FD_SAMPLES 160

static unsigned long long seed;

static float *rnd(int64_t count, double scale)
{
	float *x = malloc((size_t)count * sizeof *x);
	for (int64_t i = 0; i < count; i++)
		x[i] = (float)((check_urand() * 2 - 1) * scale);
	return x;
}

static double *to_double(const float *x, int64_t count)
{
	double *d = malloc((size_t)count * sizeof *d);
	for (int64_t i = 0; i < count; i++)
		d[i] = x[i];
	return d;
}

/* max |a - b| / max |b| */
static double rel_err(const float *a, const double *b, int64_t count)
{
	double md = 0, mb = 0;
	for (int64_t i = 0; i < count; i++) {
		double d = fabs(a[i] - b[i]);
		if (!(d <= md))
			md = d;
		if (fabs(b[i]) > mb)
			mb = fabs(b[i]);
	}
	return mb > 0 ? md / mb : md;
}

typedef double loss_fn(void *ctx);

/* max |grad - fd| / max |fd| over the checked coordinates of x: the n_at
 * ones of `at`, then all of x or FD_SAMPLES drawn at random; x is the double
 * input loss reads. */
static double fd_err_at(double *x, int64_t count, const float *grad, loss_fn *loss, void *ctx, const int64_t *at,
			int64_t n_at)
{
	int64_t k = n_at + (count <= FD_SAMPLES ? count : FD_SAMPLES);
	double md = 0, mf = 0;
	for (int64_t s = 0; s < k; s++) {
		int64_t j = s < n_at ? at[s] : s - n_at;
		if (s >= n_at && count > FD_SAMPLES)
			j = (int64_t)(check_urand() * (double)count);
		double x0 = x[j];
		x[j] = x0 + FD_H;
		double lp = loss(ctx);
		x[j] = x0 - FD_H;
		double lm = loss(ctx);
		x[j] = x0;
		double fd = (lp - lm) / (2 * FD_H);
		double d = fabs(grad[j] - fd);
		if (!(d <= md))
			md = d;
		if (fabs(fd) > mf)
			mf = fabs(fd);
	}
	return mf > 0 ? md / mf : md;
}

static double fd_err(double *x, int64_t count, const float *grad, loss_fn *loss, void *ctx)
{
	return fd_err_at(x, count, grad, loss, ctx, NULL, 0);
}

static int same_bits(const float *a, const float *b, int64_t count)
{
	return !memcmp(a, b, (size_t)count * sizeof *a);
}

static const int thread_counts[] = {1, 2, 3};
#define N_THREADS (int)(sizeof thread_counts / sizeof *thread_counts)

/* ---- matmul_dx: y = x·Wᵀ with W as weight_rows_f32 dequantizes it ---- */

struct mm_ctx {
	double *x, *w, *r;
	int n, rows, cols;
};

static double mm_loss(void *p)
{
	struct mm_ctx *c = p;
	double L = 0;
	for (int t = 0; t < c->n; t++)
		for (int o = 0; o < c->rows; o++) {
			double y = 0;
			for (int i = 0; i < c->cols; i++)
				y += c->x[(int64_t)t * c->cols + i] * c->w[(int64_t)o * c->cols + i];
			L += c->r[(int64_t)t * c->rows + o] * y;
		}
	return L;
}

static void check_matmul_dx(enum wfmt fmt, int n, int rows, int cols)
{
	struct err err = {0};
	float *wf = rnd((int64_t)rows * cols, 0.5);
	struct weight w;
	CHECK(weight_from_f32(&w, fmt, wf, rows, cols, &err) == 0, "%s", err.msg);
	float *wd = malloc((size_t)rows * cols * sizeof *wd);
	weight_rows_f32(&w, 0, rows, wd);
	float *x = rnd((int64_t)n * cols, 1), *dy = rnd((int64_t)n * rows, 1), *init = rnd((int64_t)n * cols, 1);
	float *dx = malloc((size_t)n * cols * sizeof *dx), *dx1 = malloc((size_t)n * cols * sizeof *dx1);
	struct mm_ctx c = {to_double(x, (int64_t)n * cols), to_double(wd, (int64_t)rows * cols),
			   to_double(dy, (int64_t)n * rows), n, rows, cols};
	for (int ti = 0; ti < N_THREADS; ti++) {
		backend_cpu_threads(thread_counts[ti]);
		backend_cpu.matmul_dx(dx, dy, &w, n, 0);
		double e = fd_err(c.x, (int64_t)n * cols, dx, mm_loss, &c);
		CHECK(e < TOL, "seed %llu: %s %d×%d n %d, %d threads: rel err %.3g", seed, wfmt_name(fmt), rows, cols,
		      n, thread_counts[ti], e);
		backend_cpu.matmul_dx(dx1, dy, &w, n, 0);
		CHECK(same_bits(dx, dx1, (int64_t)n * cols), "%s: two runs at %d threads differ", wfmt_name(fmt),
		      thread_counts[ti]);
		/* accumulate: init + the same gradient */
		memcpy(dx1, init, (size_t)n * cols * sizeof *dx1);
		backend_cpu.matmul_dx(dx1, dy, &w, n, 1);
		double md = 0;
		for (int64_t i = 0; i < (int64_t)n * cols; i++)
			md = fmax(md, fabs(dx1[i] - init[i] - dx[i]));
		CHECK(md < 1e-4, "%s: accumulate adds %.3g off", wfmt_name(fmt), md);
	}
	weight_free(&w);
	free(wf), free(wd), free(x), free(dy), free(init), free(dx), free(dx1);
	free(c.x), free(c.w), free(c.r);
}

/* several tiles (non-fp32: rows > 256 KB / (cols·4)), so the per-thread
 * partial sums are exercised; fp32: several column slices */
static void test_matmul_dx_f32(void) { check_matmul_dx(WFMT_F32, 7, 70, 200); }
static void test_matmul_dx_bf16(void) { check_matmul_dx(WFMT_BF16, 5, 600, 256); }
static void test_matmul_dx_nf4(void) { check_matmul_dx(WFMT_NF4, 5, 600, 256); }
static void test_matmul_dx_int8(void) { check_matmul_dx(WFMT_INT8, 3, 300, 512); }

/* ---- gemm against the double product ---- */

static void check_gemm(int m, int n, int k, int ta, int tb, float alpha, float beta)
{
	float *a = rnd((int64_t)m * k, 1), *b = rnd((int64_t)k * n, 1), *c0 = rnd((int64_t)m * n, 1);
	float *c = malloc((size_t)m * n * sizeof *c), *c1 = malloc((size_t)m * n * sizeof *c1);
	double *want = malloc((size_t)m * n * sizeof *want);
	for (int i = 0; i < m; i++)
		for (int j = 0; j < n; j++) {
			double s = 0;
			for (int p = 0; p < k; p++) {
				double av = ta ? a[(int64_t)p * m + i] : a[(int64_t)i * k + p];
				double bv = tb ? b[(int64_t)j * k + p] : b[(int64_t)p * n + j];
				s += av * bv;
			}
			want[(int64_t)i * n + j] = alpha * s + (beta != 0 ? beta * (double)c0[(int64_t)i * n + j] : 0);
		}
	for (int ti = 0; ti < N_THREADS; ti++) {
		backend_cpu_threads(thread_counts[ti]);
		memcpy(c, c0, (size_t)m * n * sizeof *c);
		if (beta == 0) /* beta 0 must ignore c, NaN included */
			for (int64_t i = 0; i < (int64_t)m * n; i++)
				c[i] = NAN;
		backend_cpu.gemm(c, a, b, m, n, k, ta, tb, alpha, beta);
		double e = rel_err(c, want, (int64_t)m * n);
		CHECK(e < 1e-5, "seed %llu: gemm %d×%d×%d ta %d tb %d alpha %g beta %g, %d threads: rel err %.3g",
		      seed, m, n, k, ta, tb, alpha, beta, thread_counts[ti], e);
		memcpy(c1, c0, (size_t)m * n * sizeof *c1);
		if (beta == 0)
			memcpy(c1, c, (size_t)m * n * sizeof *c1);
		backend_cpu.gemm(c1, a, b, m, n, k, ta, tb, alpha, beta);
		CHECK(same_bits(c, c1, (int64_t)m * n), "gemm: two runs at %d threads differ", thread_counts[ti]);
	}
	free(a), free(b), free(c0), free(c), free(c1), free(want);
}

static void test_gemm(void)
{
	for (int ta = 0; ta < 2; ta++)
		for (int tb = 0; tb < 2; tb++) {
			check_gemm(300, 40, 200, ta, tb, 1.0f, 0.0f);   /* split by rows */
			check_gemm(8, 576, 512, ta, tb, 0.5f, 1.0f);    /* LoRA gA: split by columns */
			check_gemm(13, 7, 5, ta, tb, 2.0f, 0.25f);      /* small: one thread */
		}
}

/* ---- rmsnorm_dx ---- */

struct rms_ctx {
	double *x, *r;
	const float *w;
	int rows, dim, plus_one;
	float eps;
};

static double rms_loss(void *p)
{
	struct rms_ctx *c = p;
	double L = 0;
	for (int r = 0; r < c->rows; r++) {
		const double *x = c->x + (int64_t)r * c->dim;
		double ss = 0;
		for (int i = 0; i < c->dim; i++)
			ss += x[i] * x[i];
		double inv = 1 / sqrt(ss / c->dim + c->eps);
		for (int i = 0; i < c->dim; i++)
			L += c->r[(int64_t)r * c->dim + i] * x[i] * inv * (c->plus_one ? 1 + (double)c->w[i] : c->w[i]);
	}
	return L;
}

static void check_rmsnorm(int rows, int dim, int plus_one)
{
	float *x = rnd((int64_t)rows * dim, 2), *w = rnd(dim, 1), *dy = rnd((int64_t)rows * dim, 1);
	float *init = rnd((int64_t)rows * dim, 1);
	float *dx = malloc((size_t)rows * dim * sizeof *dx), *acc = malloc((size_t)rows * dim * sizeof *acc);
	struct rms_ctx c = {to_double(x, (int64_t)rows * dim), to_double(dy, (int64_t)rows * dim), w, rows, dim,
			    plus_one, 1e-6f};
	backend_cpu_threads(2);
	backend_cpu.rmsnorm_dx(dx, dy, x, w, rows, dim, 1e-6f, plus_one, 0);
	double e = fd_err(c.x, (int64_t)rows * dim, dx, rms_loss, &c);
	CHECK(e < TOL, "seed %llu: rmsnorm %d×%d plus_one %d: rel err %.3g", seed, rows, dim, plus_one, e);
	memcpy(acc, init, (size_t)rows * dim * sizeof *acc);
	backend_cpu.rmsnorm_dx(acc, dy, x, w, rows, dim, 1e-6f, plus_one, 1);
	double md = 0;
	for (int64_t i = 0; i < (int64_t)rows * dim; i++)
		md = fmax(md, fabs(acc[i] - init[i] - dx[i]));
	CHECK(md < 1e-5, "rmsnorm: accumulate adds %.3g off", md);
	free(x), free(w), free(dy), free(init), free(dx), free(acc), free(c.x), free(c.r);
}

static void test_rmsnorm_dx(void)
{
	check_rmsnorm(9, 64, 0);
	check_rmsnorm(40, 24, 1);
	check_rmsnorm(300, 96, 0); /* rows over several threads */
}

/* ---- rope_dx ---- */

struct rope_ctx {
	double *x, *r;
	const int32_t *pos;
	const float *inv;
	int n, heads, hd;
};

static double rope_loss(void *p)
{
	struct rope_ctx *c = p;
	const int half = c->hd / 2;
	double L = 0;
	for (int t = 0; t < c->n; t++)
		for (int h = 0; h < c->heads; h++) {
			int64_t o = ((int64_t)t * c->heads + h) * c->hd;
			for (int i = 0; i < half; i++) {
				/* the angle as the op computes it (fp32 product, fp32 cos/sin) */
				float f = c->inv[i] * (float)c->pos[t];
				double cs = cosf(f), sn = sinf(f);
				double x1 = c->x[o + i], x2 = c->x[o + i + half];
				L += c->r[o + i] * (x1 * cs - x2 * sn) + c->r[o + i + half] * (x2 * cs + x1 * sn);
			}
		}
	return L;
}

static void test_rope_dx(void)
{
	const int n = 11, heads = 3, hd = 16;
	struct rope_config rc = {.kind = ROPE_DEFAULT, .theta = 10000.0};
	float inv[8];
	rope_inv_freq(&rc, hd, inv);
	int32_t pos[11];
	for (int t = 0; t < n; t++)
		pos[t] = (int32_t)(check_urand() * 300);
	int64_t count = (int64_t)n * heads * hd;
	float *dy = rnd(count, 1), *dx = malloc((size_t)count * sizeof *dx);
	memcpy(dx, dy, (size_t)count * sizeof *dx);
	backend_cpu.rope_dx(dx, n, heads, hd, pos, inv);
	float *x = rnd(count, 1);
	struct rope_ctx c = {to_double(x, count), to_double(dy, count), pos, inv, n, heads, hd};
	double e = fd_err(c.x, count, dx, rope_loss, &c);
	CHECK(e < TOL, "seed %llu: rope: rel err %.3g", seed, e);
	free(dy), free(dx), free(x), free(c.x), free(c.r);
}

/* ---- attention ---- */

struct attn_case {
	const char *what;
	int n, heads, kv_heads, hd, window;
	float softcap;
	int n_examples; /* > 1: packed, with boundaries at random places */
};

struct attn_ctx {
	const struct attn_case *c;
	double *q, *k, *v, *r;
	const int32_t *qpos, *first;
	float scale;
};

/* out = attention in double (the same masks as backend.h describes); L =
 * Σ r·out, or out written when out is not NULL */
static double attn_ref(struct attn_ctx *a, double *out)
{
	const struct attn_case *c = a->c;
	const int qs = c->heads * c->hd, ks = c->kv_heads * c->hd, group = c->heads / c->kv_heads;
	double *s = malloc((size_t)c->n * sizeof *s);
	double L = 0;
	for (int t = 0; t < c->n; t++)
		for (int h = 0; h < c->heads; h++) {
			int g = h / group, p = a->qpos[t];
			int lo = c->window > 0 ? p - c->window + 1 : 0;
			if (lo < 0)
				lo = 0;
			if (a->first && a->first[t] > lo)
				lo = a->first[t];
			double mx = -INFINITY;
			for (int j = lo; j <= p; j++) {
				double d = 0;
				const double *qt = a->q + (int64_t)t * qs + h * c->hd;
				const double *kj = a->k + (int64_t)j * ks + g * c->hd;
				for (int i = 0; i < c->hd; i++)
					d += qt[i] * kj[i];
				d *= a->scale;
				if (c->softcap > 0)
					d = c->softcap * tanh(d / c->softcap);
				s[j] = d;
				mx = fmax(mx, d);
			}
			double sum = 0;
			for (int j = lo; j <= p; j++)
				sum += (s[j] = exp(s[j] - mx));
			for (int i = 0; i < c->hd; i++) {
				double o = 0;
				for (int j = lo; j <= p; j++)
					o += s[j] / sum * a->v[(int64_t)j * ks + g * c->hd + i];
				int64_t at = (int64_t)t * qs + h * c->hd + i;
				if (out)
					out[at] = o;
				else
					L += a->r[at] * o;
			}
		}
	free(s);
	return L;
}

static double attn_loss(void *p) { return attn_ref(p, NULL); }

static void check_attention(const struct attn_case *c)
{
	const int n = c->n, qs = c->heads * c->hd, ks = c->kv_heads * c->hd;
	const int64_t nq = (int64_t)n * qs, nk = (int64_t)n * ks;
	float *q = rnd(nq, 1), *k = rnd(nk, 1), *v = rnd(nk, 1), *dout = rnd(nq, 1);
	int32_t *pos = malloc((size_t)n * sizeof *pos), *first = malloc((size_t)n * sizeof *first);
	/* example boundaries: n_examples - 1 distinct starts in [1, n) */
	int start = 0;
	for (int t = 0, e = 1; t < n; t++) {
		if (t > 0 && e < c->n_examples && check_urand() < (double)(c->n_examples - e) / (n - t))
			start = t, e++;
		pos[t] = t;
		first[t] = start;
	}
	const int32_t *fk = c->n_examples > 1 ? first : NULL;
	const float scale = 1.0f / sqrtf((float)c->hd);
	struct attn_ctx a = {c, to_double(q, nq), to_double(k, nk), to_double(v, nk), to_double(dout, nq), pos, fk,
			     scale};
	float *dq = malloc((size_t)nq * sizeof *dq), *dk = malloc((size_t)nk * sizeof *dk);
	float *dv = malloc((size_t)nk * sizeof *dv), *dq1 = malloc((size_t)nq * sizeof *dq1);
	float *dk1 = malloc((size_t)nk * sizeof *dk1), *dv1 = malloc((size_t)nk * sizeof *dv1);
	float *out = malloc((size_t)nq * sizeof *out);
	double *want = malloc((size_t)nq * sizeof *want);
	attn_ref(&a, want);
	for (int ti = 0; ti < N_THREADS; ti++) {
		backend_cpu_threads(thread_counts[ti]);
		/* the forward with the same masks */
		backend_cpu.attention(out, q, k, v, n, n, pos, fk, c->heads, c->kv_heads, c->hd, scale, c->window,
				      c->softcap);
		double ef = rel_err(out, want, nq);
		CHECK(ef < 1e-5, "seed %llu: %s forward, %d threads: rel err %.3g", seed, c->what, thread_counts[ti],
		      ef);
		backend_cpu.attention_dx(dq, dk, dv, dout, q, k, v, n, n, pos, fk, c->heads, c->kv_heads, c->hd, scale,
					 c->window, c->softcap);
		double eq = fd_err(a.q, nq, dq, attn_loss, &a), ek = fd_err(a.k, nk, dk, attn_loss, &a);
		double ev = fd_err(a.v, nk, dv, attn_loss, &a);
		CHECK(eq < TOL && ek < TOL && ev < TOL, "seed %llu: %s, %d threads: rel err dq %.3g dk %.3g dv %.3g",
		      seed, c->what, thread_counts[ti], eq, ek, ev);
		backend_cpu.attention_dx(dq1, dk1, dv1, dout, q, k, v, n, n, pos, fk, c->heads, c->kv_heads, c->hd,
					 scale, c->window, c->softcap);
		CHECK(same_bits(dq, dq1, nq) && same_bits(dk, dk1, nk) && same_bits(dv, dv1, nk),
		      "%s: two runs at %d threads differ", c->what, thread_counts[ti]);
	}
	free(q), free(k), free(v), free(dout), free(pos), free(first), free(dq), free(dk), free(dv);
	free(dq1), free(dk1), free(dv1), free(out), free(want);
	free(a.q), free(a.k), free(a.v), free(a.r);
}

static void test_attention_dx_mha(void) { check_attention(&(struct attn_case){"mha", 9, 2, 2, 8, 0, 0, 1}); }
static void test_attention_dx_gqa(void) { check_attention(&(struct attn_case){"gqa 4/2", 70, 4, 2, 8, 0, 0, 1}); }
static void test_attention_dx_mqa(void) { check_attention(&(struct attn_case){"mqa 3/1", 20, 3, 1, 8, 0, 0, 1}); }
static void test_attention_dx_window(void)
{
	check_attention(&(struct attn_case){"window 5", 70, 4, 2, 8, 5, 0, 1});
	check_attention(&(struct attn_case){"window 1", 10, 2, 1, 8, 1, 0, 1});
}
static void test_attention_dx_softcap(void)
{
	check_attention(&(struct attn_case){"softcap 2", 25, 2, 2, 8, 0, 2.0f, 1});
	check_attention(&(struct attn_case){"softcap + window", 30, 4, 2, 8, 7, 3.0f, 1});
}
static void test_attention_dx_packed(void)
{
	check_attention(&(struct attn_case){"packed 3", 40, 4, 2, 8, 0, 0, 3});
	check_attention(&(struct attn_case){"packed 5 + window + softcap", 75, 2, 1, 8, 6, 4.0f, 5});
	check_attention(&(struct attn_case){"packed 1-token examples", 12, 2, 2, 8, 0, 0, 12});
}

/* ---- glu_dx, softcap_dx ---- */

struct ew_ctx {
	double *g, *u, *r;
	int64_t count;
	int act;
	float cap;
};

static double glu_loss(void *p)
{
	struct ew_ctx *c = p;
	double L = 0;
	for (int64_t i = 0; i < c->count; i++) {
		double x = c->g[i], a;
		if (c->act == ACT_GELU_TANH)
			a = 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
		else
			a = x / (1 + exp(-x));
		L += c->r[i] * a * c->u[i];
	}
	return L;
}

static void check_glu(int act)
{
	const int64_t count = 5000;
	float *g = rnd(count, 6), *u = rnd(count, 2), *dh = rnd(count, 1);
	float *dg = malloc((size_t)count * sizeof *dg), *du = malloc((size_t)count * sizeof *du);
	struct ew_ctx c = {to_double(g, count), to_double(u, count), to_double(dh, count), count, act, 0};
	backend_cpu_threads(2);
	backend_cpu.glu_dx(dg, du, dh, g, u, count, act);
	/* elementwise: each coordinate checked alone (FD_SAMPLES of them) */
	double eg = fd_err(c.g, count, dg, glu_loss, &c), eu = fd_err(c.u, count, du, glu_loss, &c);
	CHECK(eg < TOL && eu < TOL, "seed %llu: glu act %d: rel err dgate %.3g dup %.3g", seed, act, eg, eu);
	/* dgate may be dh */
	memcpy(dg, dh, (size_t)count * sizeof *dg);
	float *du2 = malloc((size_t)count * sizeof *du2), *dg2 = malloc((size_t)count * sizeof *dg2);
	backend_cpu.glu_dx(dg2, du2, dh, g, u, count, act);
	backend_cpu.glu_dx(dg, du, dg, g, u, count, act);
	CHECK(same_bits(dg, dg2, count) && same_bits(du, du2, count), "glu_dx in place differs");
	free(g), free(u), free(dh), free(dg), free(du), free(du2), free(dg2), free(c.g), free(c.u), free(c.r);
}

static void test_glu_dx(void)
{
	check_glu(ACT_SILU);
	check_glu(ACT_GELU_TANH);
}

static double softcap_loss(void *p)
{
	struct ew_ctx *c = p;
	double L = 0;
	for (int64_t i = 0; i < c->count; i++)
		L += c->r[i] * c->cap * tanh(c->g[i] / c->cap);
	return L;
}

static void test_softcap_dx(void)
{
	const int64_t count = 3000;
	const float cap = 30;
	float *x = rnd(count, 80), *dy = rnd(count, 1), *y = malloc((size_t)count * sizeof *y);
	float *dx = malloc((size_t)count * sizeof *dx);
	memcpy(y, x, (size_t)count * sizeof *y);
	backend_cpu.softcap(y, count, cap);
	memcpy(dx, dy, (size_t)count * sizeof *dx);
	backend_cpu.softcap_dx(dx, y, count, cap);
	struct ew_ctx c = {to_double(x, count), NULL, to_double(dy, count), count, 0, cap};
	double e = fd_err(c.g, count, dx, softcap_loss, &c);
	CHECK(e < TOL, "seed %llu: softcap: rel err %.3g", seed, e);
	free(x), free(dy), free(y), free(dx), free(c.g), free(c.r);
}

/* ---- dropout ----
 * Not a derivative: the mask is checked against its definition in backend.h
 * (row t's stream, dropped when the draw's top 53 bits · 2⁻⁵³ < p), kept
 * values are x / (1 - p) in fp32, the bits do not depend on the thread count
 * or on y being x, and the share dropped is p within 5 standard deviations. */
static void test_dropout(void)
{
	const int rows = 301, width = 333;
	const int64_t count = (int64_t)rows * width;
	const float p = 0.3f;
	const uint64_t dseed = (uint64_t)(check_urand() * 0x1p53);
	float *x = rnd(count, 1), *y = malloc((size_t)count * sizeof *y), *y1 = malloc((size_t)count * sizeof *y1);
	int64_t dropped = 0, wrong = 0;
	for (int t = 0; t < rows; t++) {
		uint64_t st = dseed ^ ((uint64_t)(t + 1) * 0xd1b54a32d192ed03ull);
		for (int i = 0; i < width; i++) {
			int drop = rng_uniform(&st) < p;
			dropped += drop;
			y1[(int64_t)t * width + i] = drop ? 0.0f : x[(int64_t)t * width + i] * (1.0f / (1.0f - p));
		}
	}
	for (int ti = 0; ti < N_THREADS; ti++) {
		backend_cpu_threads(thread_counts[ti]);
		backend_cpu.dropout(y, x, rows, width, dseed, p);
		for (int64_t i = 0; i < count; i++)
			wrong += y[i] != y1[i];
		memcpy(y, x, (size_t)count * sizeof *y);
		backend_cpu.dropout(y, y, rows, width, dseed, p);
		CHECK(same_bits(y, y1, count), "%d threads: in place differs", thread_counts[ti]);
	}
	CHECK(wrong == 0, "seed %llu: %lld values differ from the definition", seed, (long long)wrong);
	double share = (double)dropped / (double)count, sd = sqrt(p * (1 - p) / (double)count);
	CHECK(fabs(share - p) < 5 * sd, "seed %llu: dropped %.4f, p %.2f", seed, share, p);
	backend_cpu.dropout(y, x, rows, width, dseed + 1, p);
	CHECK(!same_bits(y, y1, count), "another seed gives the same mask");
	free(x), free(y), free(y1);
}

/* ---- cross_entropy ---- */

struct ce_ctx {
	double *l;
	const int32_t *target;
	int rows, vocab;
	float scale;
};

static double ce_loss(void *p)
{
	struct ce_ctx *c = p;
	double L = 0;
	for (int r = 0; r < c->rows; r++) {
		if (c->target[r] < 0)
			continue;
		const double *l = c->l + (int64_t)r * c->vocab;
		double mx = l[0], s = 0;
		for (int i = 1; i < c->vocab; i++)
			mx = fmax(mx, l[i]);
		for (int i = 0; i < c->vocab; i++)
			s += exp(l[i] - mx);
		L += mx + log(s) - l[c->target[r]];
	}
	return L * c->scale;
}

static void test_cross_entropy(void)
{
	const int rows = 37, vocab = 1000;
	const int64_t count = (int64_t)rows * vocab;
	float *l = rnd(count, 8), *dl = malloc((size_t)count * sizeof *dl), *dl2 = malloc((size_t)count * sizeof *dl2);
	int32_t target[37];
	for (int r = 0; r < rows; r++)
		target[r] = check_urand() < 0.25 ? -100 : (int32_t)(check_urand() * vocab);
	target[0] = -100, target[1] = vocab - 1;
	const float scale = 1.0f / 29;
	struct ce_ctx c = {to_double(l, count), target, rows, vocab, scale};
	for (int ti = 0; ti < N_THREADS; ti++) {
		backend_cpu_threads(thread_counts[ti]);
		double loss = backend_cpu.cross_entropy(dl, l, target, rows, vocab, scale);
		double want = ce_loss(&c) / scale;
		CHECK(fabs(loss - want) < 1e-6 * fabs(want), "seed %llu: loss %.9g, want %.9g", seed, loss, want);
		/* the target logits, where the one-hot term sits, and random others */
		int64_t at[37], n_at = 0;
		for (int r = 0; r < rows; r++)
			if (target[r] >= 0)
				at[n_at++] = (int64_t)r * vocab + target[r];
		double e = fd_err_at(c.l, count, dl, ce_loss, &c, at, n_at);
		CHECK(e < TOL, "seed %llu: cross-entropy, %d threads: rel err %.3g", seed, thread_counts[ti], e);
		double z = 0;
		for (int r = 0; r < rows; r++)
			if (target[r] < 0)
				for (int i = 0; i < vocab; i++)
					z = fmax(z, fabs(dl[(int64_t)r * vocab + i]));
		CHECK(z == 0, "ignored rows have gradient %g", z);
		/* in place */
		memcpy(dl2, l, (size_t)count * sizeof *dl2);
		double loss2 = backend_cpu.cross_entropy(dl2, dl2, target, rows, vocab, scale);
		CHECK(loss2 == loss && same_bits(dl, dl2, count), "cross-entropy in place differs");
	}
	free(l), free(dl), free(dl2), free(c.l);
}

int main(void)
{
	seed = check_seed_init();
	RUN(test_matmul_dx_f32);
	RUN(test_matmul_dx_bf16);
	RUN(test_matmul_dx_nf4);
	RUN(test_matmul_dx_int8);
	RUN(test_gemm);
	RUN(test_rmsnorm_dx);
	RUN(test_rope_dx);
	RUN(test_attention_dx_mha);
	RUN(test_attention_dx_gqa);
	RUN(test_attention_dx_mqa);
	RUN(test_attention_dx_window);
	RUN(test_attention_dx_softcap);
	RUN(test_attention_dx_packed);
	RUN(test_glu_dx);
	RUN(test_softcap_dx);
	RUN(test_dropout);
	RUN(test_cross_entropy);
	return check_done();
}
