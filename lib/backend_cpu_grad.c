/* backend_cpu_grad: the backward ops of the cpu backend (lib/backend.h),
 * beside the forward ones of lib/backend_cpu.c and on the same pool of
 * threads: BLAS (single-threaded) for every product, each output element
 * computed by one thread in an order fixed by the shapes and the thread
 * count, so a run is repeatable bit for bit at a given thread count.
 *
 * Legend as in backend_cpu.c: n positions, d a row's width, w.rows × w.cols a
 * frozen weight (out × in). Every formula is the derivative of the forward
 * op as transformers/torch evaluate it; the unit test checks each one against
 * finite differences of a double-precision forward.
 *
 * Like the forward ops these cannot report failure: the two that need
 * scratch memory (matmul_dx of a non-fp32 weight, attention_dx) fill their
 * outputs with NaN when malloc fails, and the caller sees it in the loss.
 * Their scratch is kept between calls (one op runs at a time): allocating a
 * few MB per call cost ~5% of a training step in page faults.
 */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_cpu_impl.h"
#include "model.h"
#include "rng.h"

/* ---- scratch kept between calls ---- */

static struct {
	float *p;
	size_t cap; /* floats */
} kept;

/* count floats, contents undefined; NULL when out of memory */
static float *scratch_get(size_t count)
{
	if (count > kept.cap) {
		free(kept.p);
		kept.p = malloc(count * sizeof *kept.p);
		kept.cap = kept.p ? count : 0;
	}
	return kept.p;
}

/* ---- matmul_dx: dx[n × cols] (+)= dy[n × rows] · w[rows × cols] ----
 * fp32 weights: each thread one slice of columns of dx, used in place. Other
 * formats: the weight's rows in tiles, dequantized once each (as the forward
 * does); thread tid sums the products of its run of tiles into its own
 * partial dx (thread 0 into dx itself), and the partials are added in thread
 * order at the end. */

#define DX_TILE_BYTES (256 * 1024)

struct mdx {
	float *dx;
	const float *dy;
	const struct weight *w;
	int n, accumulate;
	int64_t piece;  /* f32: columns per slice; else rows per tile */
	float *tiles;   /* one tile (piece × cols) per thread */
	float *part;    /* threads 1 .. nt-1: n × cols each */
	int nt;
	char touched[64];
};

static void mdx_f32_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct mdx *q = ctx;
	const int64_t rows = q->w->rows, cols = q->w->cols;
	for (int64_t i = lo; i < hi; i++) {
		int64_t c0 = i * q->piece;
		int64_t m = cols - c0 < q->piece ? cols - c0 : q->piece;
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, q->n, (int)m, (int)rows, 1.0f, q->dy, (int)rows,
			    q->w->f32 + c0, (int)cols, q->accumulate ? 1.0f : 0.0f, q->dx + c0, (int)cols);
	}
}

static void mdx_tile_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct mdx *q = ctx;
	const int64_t rows = q->w->rows, cols = q->w->cols;
	float *tile = q->tiles + tid * q->piece * cols;
	float *out = tid == 0 ? q->dx : q->part + (int64_t)(tid - 1) * q->n * cols;
	float beta = tid == 0 && q->accumulate ? 1.0f : 0.0f;
	for (int64_t i = lo; i < hi; i++, beta = 1.0f) {
		int64_t r0 = i * q->piece;
		int64_t m = rows - r0 < q->piece ? rows - r0 : q->piece;
		weight_rows_f32(q->w, r0, m, tile);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, q->n, (int)cols, (int)m, 1.0f, q->dy + r0,
			    (int)rows, tile, (int)cols, beta, out, (int)cols);
	}
	q->touched[tid] = lo < hi;
}

/* dx[i] += the partials of threads 1 .. nt-1, in thread order */
static void mdx_sum_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct mdx *q = ctx;
	const int64_t count = (int64_t)q->n * q->w->cols;
	for (int t = 1; t < q->nt; t++) {
		if (!q->touched[t])
			continue;
		const float *p = q->part + (int64_t)(t - 1) * count;
		for (int64_t i = lo; i < hi; i++)
			q->dx[i] += p[i];
	}
}

void cpu_matmul_dx(float *dx, const float *dy, const struct weight *w, int n, int accumulate)
{
	const int64_t rows = w->rows, cols = w->cols;
	if (n <= 0 || cols <= 0)
		return;
	if (rows <= 0) {
		if (!accumulate)
			memset(dx, 0, (size_t)n * cols * sizeof *dx);
		return;
	}
	struct mdx q = {.dx = dx, .dy = dy, .w = w, .n = n, .accumulate = accumulate};
	if (w->fmt == WFMT_F32) {
		int64_t nt = cols / 64 < cpu_threads ? cols / 64 : cpu_threads;
		if (nt < 1)
			nt = 1;
		q.piece = ((cols + nt - 1) / nt + 15) / 16 * 16;
		par_for_nt((cols + q.piece - 1) / q.piece, (int)nt, mdx_f32_part, &q);
		return;
	}
	int64_t piece = DX_TILE_BYTES / (cols * 4);
	piece = piece < 8 ? 8 : piece / 8 * 8;
	if (piece > rows)
		piece = rows;
	int64_t n_tiles = (rows + piece - 1) / piece;
	int nt = cpu_threads < n_tiles ? cpu_threads : (int)n_tiles;
	if (nt > 64)
		nt = 64;
	q.piece = piece;
	q.nt = nt;
	size_t n_tile = (size_t)(nt * piece * cols), n_part = (size_t)((nt - 1) * (int64_t)n * cols);
	q.tiles = scratch_get(n_tile + n_part);
	if (!q.tiles) {
		fill_nan(dx, (int64_t)n * cols);
		return;
	}
	q.part = q.tiles + n_tile;
	par_for_nt(n_tiles, nt, mdx_tile_part, &q);
	if (nt > 1)
		par_for((int64_t)n * cols, 65536, mdx_sum_part, &q);
}

/* ---- gemm: c[m × n] = alpha · op(a) · op(b) + beta · c ----
 * Split over the longer of c's two sides, 16-aligned slices, one per
 * thread: each element is one BLAS dot product over all of k. */

struct gemm_job {
	float *c;
	const float *a, *b;
	int m, n, k, trans_a, trans_b, by_rows;
	int64_t piece;
	float alpha, beta;
};

static void gemm_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct gemm_job *g = ctx;
	const int lda = g->trans_a ? g->m : g->k, ldb = g->trans_b ? g->k : g->n;
	const CBLAS_TRANSPOSE ta = g->trans_a ? CblasTrans : CblasNoTrans, tb = g->trans_b ? CblasTrans : CblasNoTrans;
	for (int64_t i = lo; i < hi; i++) {
		int64_t s0 = i * g->piece, len = (g->by_rows ? g->m : g->n) - s0;
		if (len > g->piece)
			len = g->piece;
		if (g->by_rows) {
			const float *a = g->a + (g->trans_a ? s0 : s0 * g->k);
			cblas_sgemm(CblasRowMajor, ta, tb, (int)len, g->n, g->k, g->alpha, a, lda, g->b, ldb, g->beta,
				    g->c + s0 * g->n, g->n);
		} else {
			const float *b = g->b + (g->trans_b ? s0 * g->k : s0);
			cblas_sgemm(CblasRowMajor, ta, tb, g->m, (int)len, g->k, g->alpha, g->a, lda, b, ldb, g->beta,
				    g->c + s0, g->n);
		}
	}
}

void cpu_gemm(float *c, const float *a, const float *b, int m, int n, int k, int trans_a, int trans_b, float alpha,
	      float beta)
{
	if (m <= 0 || n <= 0)
		return;
	if (k <= 0) {
		for (int64_t i = 0; i < (int64_t)m * n; i++)
			c[i] = beta == 0 ? 0 : beta * c[i];
		return;
	}
	struct gemm_job g = {c, a, b, m, n, k, trans_a, trans_b, m >= n, 0, alpha, beta};
	int64_t side = g.by_rows ? m : n;
	/* a thread per ~64 rows or columns and at least ~2 M multiply-adds */
	int64_t nt = side / 64;
	int64_t work = (int64_t)m * n * k;
	if (nt > work / (1 << 21))
		nt = work / (1 << 21);
	if (nt > cpu_threads)
		nt = cpu_threads;
	if (nt < 1)
		nt = 1;
	g.piece = ((side + nt - 1) / nt + 15) / 16 * 16;
	par_for_nt((side + g.piece - 1) / g.piece, (int)nt, gemm_part, &g);
}

/* ---- rmsnorm_dx ----
 * y = x·r·g with r = 1/sqrt(mean(x²) + eps), g = w or 1 + w:
 * dx = r·(g∘dy) - x·r³·Σ(g∘dy∘x)/d; r as the forward computes it, the
 * rest in double. */

struct rms_dx_job {
	float *dx;
	const float *dy, *x, *w;
	int dim, plus_one, accumulate;
	float eps;
};

static void rmsnorm_dx_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct rms_dx_job *j = ctx;
	const int d = j->dim;
	for (int64_t r = lo; r < hi; r++) {
		const float *x = j->x + r * d, *dy = j->dy + r * d;
		float *dx = j->dx + r * d;
		double ss = 0, dot = 0;
		for (int i = 0; i < d; i++) {
			double g = j->plus_one ? 1.0 + (double)j->w[i] : (double)j->w[i];
			ss += (double)x[i] * x[i];
			dot += g * dy[i] * x[i];
		}
		float mean = (float)(ss / d);
		double inv = 1.0f / sqrtf(mean + j->eps);
		double c = inv * inv * inv * dot / d;
		for (int i = 0; i < d; i++) {
			double g = j->plus_one ? 1.0 + (double)j->w[i] : (double)j->w[i];
			float v = (float)(inv * g * dy[i] - c * x[i]);
			dx[i] = j->accumulate ? dx[i] + v : v;
		}
	}
}

void cpu_rmsnorm_dx(float *dx, const float *dy, const float *x, const float *w, int rows, int dim, float eps,
		    int plus_one, int accumulate)
{
	struct rms_dx_job j = {dx, dy, x, w, dim, plus_one, accumulate, eps};
	par_for(rows, 1 + 16384 / (dim > 0 ? dim : 1), rmsnorm_dx_part, &j);
}

/* ---- rope_dx: the transpose of the rotation, i.e. the rotation by -angle:
 * dx_i = d_i·cos + d_{i+h}·sin, dx_{i+h} = d_{i+h}·cos - d_i·sin, with cos and
 * sin computed exactly as the forward computes them. */

void cpu_rope_dx(float *dx, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq)
{
	cpu_rope_rotate(dx, n, n_heads, head_dim, pos, inv_freq, -1);
}

/* ---- attention_dx ----
 * Each thread takes a contiguous run of query heads, each head over blocks of ADX_QB
 * query rows (memory: 3 × ADX_QB × n_keys floats per thread): recompute
 * S = scale·Q·Kᵀ over the block's visible keys, C = softcap(S), P =
 * softmax(C) as the forward does; then
 *   dP = dO·Vᵀ, dV_h += Pᵀ·dO, dC = P∘(dP - rowsum(P∘dP)) (rowsum(P∘dP) =
 *   rowsum(dO∘O)), dS = dC∘(1 - tanh²) (softcap), dQ = scale·dS·K,
 *   dK_h += scale·dSᵀ·Q.
 * dK_h and dV_h are per query head (scratch), summed over each kv head's
 * group in head order at the end, so no two threads write one value. */

#define ADX_QB 64

struct adx_args {
	float *dq, *dk, *dv;
	const float *dout, *q, *k, *v;
	const int32_t *q_pos, *first_key;
	int n, n_keys, n_heads, group, head_dim, window, qb, nt;
	float scale, softcap;
	float *scratch;     /* per thread: 3 × qb × n_keys */
	float *dkh, *dvh;   /* n_heads × n_keys × head_dim each */
};

/* the visible keys of query t: [*a, *b] (a > b: none) */
static void adx_range(const struct adx_args *A, int t, int64_t *a, int64_t *b)
{
	int64_t p = A->q_pos[t];
	int64_t lo = A->window > 0 ? p - A->window + 1 : 0;
	if (lo < 0)
		lo = 0;
	if (A->first_key && A->first_key[t] > lo)
		lo = A->first_key[t];
	*a = lo;
	*b = p < A->n_keys - 1 ? p : A->n_keys - 1;
}

static void adx_heads(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct adx_args *A = ctx;
	const int hd = A->head_dim, qs = A->n_heads * hd, ks = A->n_heads / A->group * hd;
	const int64_t per = (int64_t)A->qb * A->n_keys;
	float *P = A->scratch + 3 * per * tid, *dP = P + per, *T = dP + per;
	for (int h = (int)lo; h < (int)hi; h++) {
		const int g = h / A->group;
		float *dkh = A->dkh + (int64_t)h * A->n_keys * hd, *dvh = A->dvh + (int64_t)h * A->n_keys * hd;
		memset(dkh, 0, (size_t)A->n_keys * hd * sizeof *dkh);
		memset(dvh, 0, (size_t)A->n_keys * hd * sizeof *dvh);
		for (int t0 = 0; t0 < A->n; t0 += A->qb) {
			const int m = A->n - t0 < A->qb ? A->n - t0 : A->qb;
			int64_t klo = INT64_MAX, khi = -1;
			for (int t = t0; t < t0 + m; t++) {
				int64_t a, b;
				adx_range(A, t, &a, &b);
				if (a > b)
					continue;
				klo = a < klo ? a : klo;
				khi = b > khi ? b : khi;
			}
			float *dq = A->dq + (int64_t)t0 * qs + h * hd;
			if (khi < 0) { /* no row of the block sees a key */
				for (int t = 0; t < m; t++)
					memset(dq + (int64_t)t * qs, 0, (size_t)hd * sizeof *dq);
				continue;
			}
			const int nk = (int)(khi - klo + 1);
			const float *qb = A->q + (int64_t)t0 * qs + h * hd, *dob = A->dout + (int64_t)t0 * qs + h * hd;
			const float *kb = A->k + klo * ks + g * hd, *vb = A->v + klo * ks + g * hd;
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nk, hd, A->scale, qb, qs, kb, ks, 0.0f,
				    P, nk);
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nk, hd, 1.0f, dob, qs, vb, ks, 0.0f, dP,
				    nk);
			for (int t = 0; t < m; t++) {
				float *p = P + (int64_t)t * nk, *dp = dP + (int64_t)t * nk, *th = T + (int64_t)t * nk;
				int64_t a, b;
				adx_range(A, t0 + t, &a, &b);
				a -= klo, b -= klo;
				if (a > b) {
					memset(p, 0, (size_t)nk * sizeof *p);
					memset(dp, 0, (size_t)nk * sizeof *dp);
					continue;
				}
				if (A->softcap > 0)
					for (int64_t c = a; c <= b; c++) {
						th[c] = tanhf(p[c] / A->softcap);
						p[c] = A->softcap * th[c];
					}
				softmax_vec(p + a, b - a + 1);
				double D = 0;
				for (int64_t c = a; c <= b; c++)
					D += (double)p[c] * dp[c];
				float Df = (float)D;
				memset(p, 0, (size_t)a * sizeof *p);
				memset(p + b + 1, 0, (size_t)(nk - 1 - b) * sizeof *p);
				/* dP becomes dS, already times scale */
				for (int64_t c = 0; c < nk; c++) {
					if (c < a || c > b) {
						dp[c] = 0;
						continue;
					}
					float ds = p[c] * (dp[c] - Df);
					if (A->softcap > 0)
						ds *= 1.0f - th[c] * th[c];
					dp[c] = ds * A->scale;
				}
			}
			/* dV_h[klo..] += Pᵀ·dO; dQ = dS·K; dK_h[klo..] += dSᵀ·Q */
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hd, m, 1.0f, P, nk, dob, qs, 1.0f,
				    dvh + klo * hd, hd);
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, hd, nk, 1.0f, dP, nk, kb, ks, 0.0f,
				    dq, qs);
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hd, m, 1.0f, dP, nk, qb, qs, 1.0f,
				    dkh + klo * hd, hd);
		}
	}
}

/* dk, dv rows [lo, hi): the per-head gradients summed over each group */
static void adx_sum_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct adx_args *A = ctx;
	const int hd = A->head_dim, n_kv = A->n_heads / A->group, ks = n_kv * hd;
	for (int64_t j = lo; j < hi; j++)
		for (int g = 0; g < n_kv; g++) {
			float *dk = A->dk + j * ks + g * hd, *dv = A->dv + j * ks + g * hd;
			for (int i = 0; i < hd; i++)
				dk[i] = dv[i] = 0;
			for (int h = g * A->group; h < (g + 1) * A->group; h++) {
				const float *sk = A->dkh + ((int64_t)h * A->n_keys + j) * hd;
				const float *sv = A->dvh + ((int64_t)h * A->n_keys + j) * hd;
				for (int i = 0; i < hd; i++) {
					dk[i] += sk[i];
					dv[i] += sv[i];
				}
			}
		}
}

void cpu_attention_dx(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
		      const float *v, int n, int n_keys, const int32_t *q_pos, const int32_t *first_key, int n_heads,
		      int n_kv_heads, int head_dim, float scale, int window, float softcap)
{
	if (n <= 0 || n_keys <= 0)
		return;
	int qb = n < ADX_QB ? n : ADX_QB;
	int nt = cpu_threads < n_heads ? cpu_threads : n_heads;
	int64_t per = (int64_t)qb * n_keys, kv_each = (int64_t)n_heads * n_keys * head_dim;
	float *dkh = scratch_get((size_t)(3 * nt * per + 2 * kv_each));
	if (!dkh) {
		fill_nan(dq, (int64_t)n * n_heads * head_dim);
		fill_nan(dk, (int64_t)n_keys * n_kv_heads * head_dim);
		fill_nan(dv, (int64_t)n_keys * n_kv_heads * head_dim);
		return;
	}
	float *blocks = dkh + 2 * kv_each;
	struct adx_args A = {dq, dk, dv, dout, q, k, v, q_pos, first_key, n, n_keys, n_heads, n_heads / n_kv_heads,
			     head_dim, window, qb, nt, scale, softcap, blocks, dkh, dkh + kv_each};
	par_for_nt(n_heads, nt, adx_heads, &A);
	par_for(n_keys, 1 + 16384 / (n_kv_heads * head_dim * 2), adx_sum_part, &A);
}

/* ---- glu_dx: h = act(gate) * up ----
 * dup = dh·act(gate), dgate = dh·up·act'(gate), act' as torch's backward:
 * SiLU: σ·(1 + x·(1 - σ)), σ = 1 / (1 + e^-x);
 * GELU tanh: 0.5·(1 + t) + 0.5·x·(1 - t²)·β·(1 + 3κx²), t = tanh(β(x + κx³)). */

struct glu_dx_job {
	float *dgate, *dup;
	const float *dh, *gate, *up;
	int act;
};

static void glu_dx_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct glu_dx_job *j = ctx;
	const float beta = (float)(M_SQRT2 * M_2_SQRTPI * 0.5), kappa = 0.044715f;
	for (int64_t i = lo; i < hi; i++) {
		float x = j->gate[i], u = j->up[i], d = j->dh[i];
		float act, dact;
		if (j->act == ACT_GELU_TANH) {
			float x2 = x * x;
			float t = tanhf(beta * (x + kappa * (x2 * x)));
			act = 0.5f * x * (1.0f + t);
			dact = 0.5f * (1.0f + t) + 0.5f * x * ((1.0f - t * t) * beta * (1.0f + 3.0f * kappa * x2));
		} else {
			float s = 1.0f / (1.0f + expf(-x));
			act = x * s;
			dact = s * (1.0f + x * (1.0f - s));
		}
		j->dup[i] = d * act;
		j->dgate[i] = d * u * dact;
	}
}

void cpu_glu_dx(float *dgate, float *dup, const float *dh, const float *gate, const float *up, int64_t count, int act)
{
	struct glu_dx_job j = {dgate, dup, dh, gate, up, act};
	par_for(count, 32768, glu_dx_part, &j);
}

/* ---- softcap_dx: y = cap·tanh(x/cap), dx = dy·(1 - (y/cap)²) ---- */

struct softcap_dx_job {
	float *dx;
	const float *y;
	float cap;
};

static void softcap_dx_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct softcap_dx_job *j = ctx;
	for (int64_t i = lo; i < hi; i++) {
		float t = j->y[i] / j->cap;
		j->dx[i] *= 1.0f - t * t;
	}
}

void cpu_softcap_dx(float *dx, const float *y, int64_t count, float cap)
{
	struct softcap_dx_job j = {dx, y, cap};
	par_for(count, 32768, softcap_dx_part, &j);
}

/* ---- dropout: y = x ∘ mask / (1 - p), a stream per row (backend.h) ---- */

struct dropout_job {
	float *y;
	const float *x;
	int width;
	uint64_t seed, threshold; /* dropped when the draw's top 53 bits are below threshold */
	float keep;
};

static void dropout_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct dropout_job *j = ctx;
	for (int64_t t = lo; t < hi; t++) {
		uint64_t s = j->seed ^ ((uint64_t)(t + 1) * 0xd1b54a32d192ed03ull);
		const float *x = j->x + t * j->width;
		float *y = j->y + t * j->width;
		for (int i = 0; i < j->width; i++)
			y[i] = (rng_next(&s) >> 11) < j->threshold ? 0.0f : x[i] * j->keep;
	}
}

void cpu_dropout(float *y, const float *x, int rows, int width, uint64_t seed, float p)
{
	/* (d >> 11) · 2⁻⁵³ < p  ⟺  (d >> 11) < ceil(p · 2⁵³), exact in double */
	struct dropout_job j = {y, x, width, seed, (uint64_t)ceil((double)p * 0x1p53), 1.0f / (1.0f - p)};
	par_for(rows, 1 + 32768 / (width > 0 ? width : 1), dropout_part, &j);
}

/* ---- cross_entropy ----
 * Per row: m = max, E = Σ e^(l - m) (exp in fp32, the sum in double),
 * loss = m + log E - l[target], dl = (e^(l - m) / E - onehot)·grad_scale.
 * Row losses are summed in row order after the parallel part. */

struct ce_job {
	float *dl;
	const float *l;
	const int32_t *target;
	int vocab;
	float grad_scale;
	double *row_loss;
};

static void ce_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct ce_job *j = ctx;
	const int V = j->vocab;
	for (int64_t r = lo; r < hi; r++) {
		const float *l = j->l + r * V;
		float *dl = j->dl + r * V;
		int32_t y = j->target[r];
		if (y < 0 || y >= V) {
			memset(dl, 0, (size_t)V * sizeof *dl);
			j->row_loss[r] = y < 0 ? 0 : NAN;
			continue;
		}
		float mx = l[0];
		for (int i = 1; i < V; i++)
			mx = l[i] > mx ? l[i] : mx;
		float ly = l[y];
		for (int i = 0; i < V; i++)
			dl[i] = l[i] - mx;
		exp_vec(dl, dl, V);
		double sum = 0;
		for (int i = 0; i < V; i++)
			sum += dl[i];
		j->row_loss[r] = (double)mx + log(sum) - (double)ly;
		float k = (float)(j->grad_scale / sum);
		for (int i = 0; i < V; i++)
			dl[i] *= k;
		dl[y] -= j->grad_scale;
	}
}

double cpu_cross_entropy(float *dlogits, const float *logits, const int32_t *target, int rows, int vocab,
			 float grad_scale)
{
	if (rows <= 0)
		return 0;
	double *row_loss = malloc((size_t)rows * sizeof *row_loss);
	if (!row_loss) {
		fill_nan(dlogits, (int64_t)rows * vocab);
		return NAN;
	}
	struct ce_job j = {dlogits, logits, target, vocab, grad_scale, row_loss};
	par_for(rows, 1 + 65536 / (vocab > 0 ? vocab : 1), ce_part, &j);
	double total = 0;
	for (int r = 0; r < rows; r++)
		total += row_loss[r];
	free(row_loss);
	return total;
}
