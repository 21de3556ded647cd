/* backend_cpu: the reference implementation of lib/backend.h's forward ops —
 * fp32 on the CPU, matrix products through BLAS (cblas_sgemm, single-threaded,
 * on slices of the work) or our own small-n kernel, the other loops in plain
 * C, all spread over a few pthreads of ours (a pool kept between ops). Every
 * output element is computed by one thread in a fixed order: the same inputs
 * and thread count give the same bits. The backward ops are in
 * backend_cpu_grad.c, sharing the pool through backend_cpu_impl.h.
 *
 * Legend: n positions (rows of activations), d a row's width, w.rows × w.cols
 * a weight (out × in).
 *
 * The ops cannot report failure (backend.h returns void). The two that need
 * scratch memory (matmul of a non-fp32 weight: a tile per thread, a few
 * hundred KB; attention: 64 × n_keys floats per thread) fill their output
 * with NaN when malloc fails, so the caller sees it in the logits.
 */
#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "backend_cpu_impl.h"
#include "model.h"

/* ---- threads ---- */

int cpu_threads = 1;

static void blas_threads_set(int n)
{
#ifdef OPENBLAS_VERSION
	openblas_set_num_threads(n);
#else
	(void)n;
#endif
}

void backend_cpu_threads(int n)
{
	if (n <= 0) {
		long c = sysconf(_SC_NPROCESSORS_ONLN);
		n = c > 0 ? (int)c : 1;
	}
	if (n > 64)
		n = 64;
	cpu_threads = n;
	/* Our threads split every product (by rows of the weight, by heads and
	 * query blocks in attention) and BLAS runs single-threaded inside them:
	 * no BLAS worker spins between calls while our loops want the cores
	 * (measured: as fast as OpenBLAS's threads alone when the machine is
	 * idle, faster when it is shared). */
	blas_threads_set(1);
}

struct par_job {
	par_fn *fn;
	void *ctx;
	int64_t lo, hi;
	int tid;
};

/* The workers stay between calls: starting a thread per op costs tens of
 * microseconds, a large share of a decoding step that runs ~200 small
 * products. A worker spins a little for the next job (ops come back to back),
 * then sleeps on the condition variable. One op runs at a time per process. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;        /* a new dispatch */
	pthread_cond_t done;      /* the workers' jobs of a dispatch are done */
	int n_workers;            /* started; worker i runs job i (1-based) */
	struct par_job *jobs;     /* the current dispatch: n_workers + 1 jobs, fn NULL for none */
	_Atomic unsigned gen;     /* bumped once per dispatch */
	_Atomic int pending;      /* jobs of the dispatch not yet done by workers */
	unsigned born[65];        /* gen when worker i was started: the dispatches it is not part of */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER};

/* A worker waits for the next op with POOL_SPINS pause loops, then
 * POOL_YIELDS sched_yield calls, then sleeps. Measured on 2 cores (SmolLM2
 * decoding, tokens/s, idle / with `yes` holding a core): 1000 pauses alone
 * 25 / 14, 20000 pauses 31 / 9.5, 1000 pauses + 200 yields 38 / 16. */
#define POOL_SPINS 1000
#define POOL_YIELDS 200

static void *pool_worker(void *arg)
{
	int id = (int)(intptr_t)arg;
	/* Not 0: a worker started after earlier dispatches (the pool grows when
	 * an op wants more threads than the ones before) would take the last
	 * one, whose jobs lay on a stack long gone, for its own. */
	unsigned seen = pool.born[id];
	for (;;) {
		unsigned g;
		int spins = 0;
		while ((g = atomic_load_explicit(&pool.gen, memory_order_acquire)) == seen) {
			if (++spins < POOL_SPINS) {
				_mm_pause();
				continue;
			}
			if (spins < POOL_SPINS + POOL_YIELDS) {
				sched_yield(); /* stay ready without holding a core another process wants */
				continue;
			}
			pthread_mutex_lock(&pool.mu);
			while ((g = atomic_load_explicit(&pool.gen, memory_order_acquire)) == seen)
				pthread_cond_wait(&pool.cv, &pool.mu);
			pthread_mutex_unlock(&pool.mu);
			break;
		}
		seen = g;
		struct par_job *j = &pool.jobs[id];
		if (j->fn)
			j->fn(j->ctx, j->lo, j->hi, j->tid);
		if (atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_acq_rel) == 1) {
			pthread_mutex_lock(&pool.mu);
			pthread_cond_signal(&pool.done);
			pthread_mutex_unlock(&pool.mu);
		}
	}
	return NULL;
}

/* Starts workers up to `want`; returns how many there are. */
static int pool_grow(int want)
{
	while (pool.n_workers < want) {
		pthread_t t;
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		/* between dispatches: gen stands still, and pthread_create publishes born */
		pool.born[pool.n_workers + 1] = atomic_load_explicit(&pool.gen, memory_order_relaxed);
		int ok = pthread_create(&t, &attr, pool_worker, (void *)(intptr_t)(pool.n_workers + 1)) == 0;
		pthread_attr_destroy(&attr);
		if (!ok)
			break;
		pool.n_workers++;
	}
	return pool.n_workers;
}

void par_for_nt(int64_t n, int nt, par_fn *fn, void *ctx)
{
	if (nt > n)
		nt = (int)n;
	if (nt > 1 && 1 + pool_grow(nt - 1) < nt)
		nt = 1 + pool.n_workers;
	if (nt <= 1) {
		if (n > 0)
			fn(ctx, 0, n, 0);
		return;
	}
	/* Every worker takes part in every dispatch (those past nt with no
	 * work), so none can still be reading the previous one's jobs. */
	struct par_job job[65] = {{0}};
	for (int i = 0; i < nt; i++)
		job[i] = (struct par_job){fn, ctx, n * i / nt, n * (i + 1) / nt, i};
	pool.jobs = job;
	atomic_store_explicit(&pool.pending, pool.n_workers, memory_order_relaxed);
	pthread_mutex_lock(&pool.mu);
	atomic_fetch_add_explicit(&pool.gen, 1, memory_order_release);
	pthread_cond_broadcast(&pool.cv);
	pthread_mutex_unlock(&pool.mu);
	fn(ctx, job[0].lo, job[0].hi, 0);
	for (int spins = 0; spins < POOL_SPINS && atomic_load_explicit(&pool.pending, memory_order_acquire) > 0; spins++)
		_mm_pause();
	pthread_mutex_lock(&pool.mu);
	while (atomic_load_explicit(&pool.pending, memory_order_acquire) > 0)
		pthread_cond_wait(&pool.done, &pool.mu);
	pthread_mutex_unlock(&pool.mu);
}

void par_for(int64_t n, int64_t min_chunk, par_fn *fn, void *ctx)
{
	int64_t nt = cpu_threads;
	if (min_chunk < 1)
		min_chunk = 1;
	if (nt > n / min_chunk)
		nt = n / min_chunk;
	par_for_nt(n, (int)(nt < 1 ? 1 : nt), fn, ctx);
}

void fill_nan(float *x, int64_t count)
{
	for (int64_t i = 0; i < count; i++)
		x[i] = NAN;
}

/* ---- exp: the one transcendental of softmax, SiLU and GELU ----
 * glibc's expf is one call per value; this one does 8 at a time with AVX2
 * where the CPU has it. exp(x) = 2^k · e^r, k = round(x / ln 2), |r| <= ln 2 / 2,
 * e^r by its Taylor polynomial of degree 7 (error below 1e-8 relative).
 * Within 2 ulp of expf; below -87.3 it gives 0, above 88.7 it saturates at
 * 2^127·e^(88.7 - 127 ln 2) (≈ FLT_MAX), never inf. */

#define EXP_LO (-87.33f)
#define EXP_HI 88.72f

static float exp_one(float x)
{
	if (x != x) /* NaN in, NaN out (and no float-to-int conversion of it below) */
		return x;
	if (x < EXP_LO)
		return 0;
	if (x > EXP_HI)
		x = EXP_HI;
	float k = nearbyintf(x * 1.44269504088896341f);
	float r = fmaf(k, -0.693145751953125f, x); /* ln 2 in two parts */
	r = fmaf(k, -1.428606765330187e-06f, r);
	float p = 1.0f / 5040;
	p = fmaf(p, r, 1.0f / 720);
	p = fmaf(p, r, 1.0f / 120);
	p = fmaf(p, r, 1.0f / 24);
	p = fmaf(p, r, 1.0f / 6);
	p = fmaf(p, r, 0.5f);
	p = fmaf(p, r, 1.0f);
	p = fmaf(p, r, 1.0f);
	return ldexpf(p, (int)k);
}

#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static inline __m256 exp8(__m256 v)
{
	const float c[8] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
	__m256 under = _mm256_cmp_ps(v, _mm256_set1_ps(EXP_LO), _CMP_LT_OQ);
	v = _mm256_min_ps(v, _mm256_set1_ps(EXP_HI));
	__m256 k = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.44269504088896341f)),
				   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m256 r = _mm256_fmadd_ps(k, _mm256_set1_ps(-0.693145751953125f), v);
	r = _mm256_fmadd_ps(k, _mm256_set1_ps(-1.428606765330187e-06f), r);
	__m256 p = _mm256_set1_ps(c[0]);
	for (int j = 1; j < 8; j++)
		p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c[j]));
	/* 2^k: k + 127 in the exponent field; k >= -126 here, and k = 128
	 * (v near EXP_HI) is done as 2^127 · 2 */
	__m256i ki = _mm256_cvtps_epi32(k);
	__m256i big = _mm256_cmpgt_epi32(ki, _mm256_set1_epi32(127));
	ki = _mm256_sub_epi32(ki, _mm256_and_si256(big, _mm256_set1_epi32(1)));
	__m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ki, _mm256_set1_epi32(127)), 23));
	p = _mm256_mul_ps(p, scale);
	p = _mm256_add_ps(p, _mm256_and_ps(_mm256_castsi256_ps(big), p));
	return _mm256_andnot_ps(under, p);
}

AVX2 static void exp_avx2(float *y, const float *x, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, exp8(_mm256_loadu_ps(x + i)));
	for (; i < n; i++)
		y[i] = exp_one(x[i]);
}

AVX2 static float hsum8(__m256 v)
{
	__m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	a = _mm_add_ps(a, _mm_movehl_ps(a, a));
	a = _mm_add_ss(a, _mm_movehdup_ps(a));
	return _mm_cvtss_f32(a);
}

AVX2 static float hmax8(__m256 v)
{
	__m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	a = _mm_max_ps(a, _mm_movehl_ps(a, a));
	a = _mm_max_ss(a, _mm_movehdup_ps(a));
	return _mm_cvtss_f32(a);
}

/* x[n] = softmax(x[n]), n >= 1, 8 lanes at a time */
AVX2 static void softmax_avx2(float *x, int64_t n)
{
	int64_t i;
	__m256 vm = _mm256_set1_ps(-INFINITY);
	for (i = 0; i + 8 <= n; i += 8)
		vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
	float mx = hmax8(vm);
	for (; i < n; i++)
		mx = x[i] > mx ? x[i] : mx;
	__m256 vmx = _mm256_set1_ps(mx), vs = _mm256_setzero_ps();
	for (i = 0; i + 8 <= n; i += 8) {
		__m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmx));
		_mm256_storeu_ps(x + i, e);
		vs = _mm256_add_ps(vs, e);
	}
	float sum = hsum8(vs);
	for (; i < n; i++) {
		x[i] = exp_one(x[i] - mx);
		sum += x[i];
	}
	__m256 inv = _mm256_set1_ps(1.0f / sum);
	for (i = 0; i + 8 <= n; i += 8)
		_mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
	for (; i < n; i++)
		x[i] *= 1.0f / sum;
}

static int have_avx2 = -1;

void exp_vec(float *y, const float *x, int64_t n)
{
	if (have_avx2 < 0)
		have_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
	if (have_avx2) {
		exp_avx2(y, x, n);
		return;
	}
	for (int64_t i = 0; i < n; i++)
		y[i] = exp_one(x[i]);
}

void softmax_vec(float *x, int64_t n)
{
	if (have_avx2 < 0)
		have_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
	if (have_avx2) {
		softmax_avx2(x, n);
		return;
	}
	float mx = x[0];
	for (int64_t i = 1; i < n; i++)
		mx = x[i] > mx ? x[i] : mx;
	for (int64_t i = 0; i < n; i++)
		x[i] -= mx;
	exp_vec(x, x, n);
	float sum = 0;
	for (int64_t i = 0; i < n; i++)
		sum += x[i];
	float inv = 1.0f / sum;
	for (int64_t i = 0; i < n; i++)
		x[i] *= inv;
}

/* ---- matmul: y[n × w.rows] = x[n × w.cols] · wᵀ (+ bias) ----
 * Backward: dx = dy · w (the same tiles, sgemm NoTrans), and for a LoRA or a
 * trained weight dw = dyᵀ · x; needs x. */

/* Rows of a non-fp32 weight dequantized per tile: about this many bytes of
 * fp32 per thread, so a tile stays in cache while sgemm packs it. */
#define MATMUL_TILE_BYTES (256 * 1024)

/* Products with few rows of x: decoding steps (one row per sequence) and short
 * prompts. They are limited by memory bandwidth, so each row of w is read
 * once for up to MATMUL_SMALL_N rows of x: eight-wide fused multiply-adds, one
 * accumulator per (row of w, row of x), summed across lanes at the end. Every
 * output element is computed in the same order whatever n is, so a sequence
 * decoded in a batch gets the same bits as decoded alone. With one row of x,
 * four rows of w share each load of x (about 10% more bandwidth than
 * OpenBLAS's sgemv here). */
#define MATMUL_SMALL_N 32

AVX2 static float dot_tail(__m256 acc, const float *w, const float *x, int64_t c, int64_t cols)
{
	float s = hsum8(acc);
	for (; c < cols; c++)
		s += w[c] * x[c];
	return s;
}

/* y[t × ldy + r] = x[t] · w[r] for t < n, r < m */
AVX2 static void matmul_small_avx2(float *y, const float *x, const float *w, int n, int64_t m, int64_t cols,
				   int64_t ldy)
{
	const int64_t c8 = cols / 8 * 8;
	if (n == 1) {
		int64_t r = 0;
		for (; r + 4 <= m; r += 4) {
			const float *w0 = w + r * cols, *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
			__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
			for (int64_t c = 0; c < c8; c += 8) {
				__m256 xv = _mm256_loadu_ps(x + c);
				a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + c), xv, a0);
				a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + c), xv, a1);
				a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + c), xv, a2);
				a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + c), xv, a3);
			}
			y[r] = dot_tail(a0, w0, x, c8, cols);
			y[r + 1] = dot_tail(a1, w1, x, c8, cols);
			y[r + 2] = dot_tail(a2, w2, x, c8, cols);
			y[r + 3] = dot_tail(a3, w3, x, c8, cols);
		}
		for (; r < m; r++) {
			const float *wr = w + r * cols;
			__m256 a = _mm256_setzero_ps();
			for (int64_t c = 0; c < c8; c += 8)
				a = _mm256_fmadd_ps(_mm256_loadu_ps(wr + c), _mm256_loadu_ps(x + c), a);
			y[r] = dot_tail(a, wr, x, c8, cols);
		}
		return;
	}
	for (int t0 = 0; t0 < n; t0 += 8) {
		const int nb = n - t0 < 8 ? n - t0 : 8;
		const float *xb = x + (int64_t)t0 * cols;
		for (int64_t r = 0; r < m; r++) {
			const float *wr = w + r * cols;
			__m256 a[8];
			for (int t = 0; t < nb; t++)
				a[t] = _mm256_setzero_ps();
			for (int64_t c = 0; c < c8; c += 8) {
				__m256 wv = _mm256_loadu_ps(wr + c);
				for (int t = 0; t < nb; t++)
					a[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xb + t * cols + c), a[t]);
			}
			for (int t = 0; t < nb; t++)
				y[(int64_t)(t0 + t) * ldy + r] = dot_tail(a[t], wr, xb + t * cols, c8, cols);
		}
	}
}

/* y[n × m] (row stride ldy) = x[n × cols] · w[m × cols]ᵀ on this thread */
static void mul_rows(float *y, const float *x, const float *w, int n, int64_t m, int64_t cols, int64_t ldy)
{
	if (n <= MATMUL_SMALL_N && have_avx2 > 0)
		matmul_small_avx2(y, x, w, n, m, cols, ldy);
	else if (n == 1)
		cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)m, (int)cols, 1.0f, w, (int)cols, x, 1, 0.0f, y, 1);
	else
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)m, (int)cols, 1.0f, x, (int)cols, w,
			    (int)cols, 0.0f, y, (int)ldy);
}

struct qmatmul {
	float *y;
	const float *x;
	const struct weight *w;
	int n;
	int64_t piece; /* rows per tile */
	float *tiles;  /* one tile (piece × cols) per thread */
};

/* Tiles [lo, hi) of the weight: dequantize one, multiply it (BLAS on this
 * thread only), go on. A tile's rows and shapes do not depend on the thread
 * count, so neither do the results. */
static void qmatmul_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct qmatmul *q = ctx;
	const int64_t rows = q->w->rows, cols = q->w->cols;
	float *tile = q->tiles + tid * q->piece * cols;
	for (int64_t i = lo; i < hi; i++) {
		int64_t r0 = i * q->piece;
		int64_t m = rows - r0 < q->piece ? rows - r0 : q->piece;
		weight_rows_f32(q->w, r0, m, tile);
		mul_rows(q->y + r0, q->x, tile, q->n, m, cols, rows);
	}
}

/* Slices [lo, hi) of `piece` rows of an fp32 weight, used in place. */
static void f32_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct qmatmul *q = ctx;
	const int64_t rows = q->w->rows, cols = q->w->cols;
	for (int64_t i = lo; i < hi; i++) {
		int64_t r0 = i * q->piece;
		int64_t m = rows - r0 < q->piece ? rows - r0 : q->piece;
		mul_rows(q->y + r0, q->x, q->w->f32 + r0 * cols, q->n, m, cols, rows);
	}
}

static void cpu_matmul(float *y, const float *x, const struct weight *w, const float *bias, int n)
{
	const int64_t rows = w->rows, cols = w->cols;
	if (n <= 0 || rows <= 0)
		return;
	if (have_avx2 < 0)
		have_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
	if (w->fmt == WFMT_F32) {
		/* in place: each thread one slice of rows (columns of y) */
		int64_t nt = rows / 64 < cpu_threads ? rows / 64 : cpu_threads;
		if (nt < 1)
			nt = 1;
		int64_t per = ((rows + nt - 1) / nt + 15) / 16 * 16;
		struct qmatmul q = {y, x, w, n, per, NULL};
		par_for_nt((rows + per - 1) / per, (int)nt, f32_part, &q);
	} else {
		/* tiles of `piece` rows, the threads taking contiguous runs of them */
		int64_t piece = MATMUL_TILE_BYTES / (cols * 4);
		piece = piece < 8 ? 8 : piece / 8 * 8;
		if (piece > rows)
			piece = rows;
		int64_t n_tiles = (rows + piece - 1) / piece;
		int nt = cpu_threads < n_tiles ? cpu_threads : (int)n_tiles;
		float *tiles = malloc((size_t)(nt * piece * cols) * sizeof *tiles);
		if (!tiles) {
			fill_nan(y, (int64_t)n * rows);
			return;
		}
		struct qmatmul q = {y, x, w, n, piece, tiles};
		par_for_nt(n_tiles, nt, qmatmul_part, &q);
		free(tiles);
	}
	if (bias)
		for (int t = 0; t < n; t++) {
			float *yt = y + (int64_t)t * rows;
			for (int64_t i = 0; i < rows; i++)
				yt[i] += bias[i];
		}
}

/* ---- rmsnorm: y[rows × dim] = x / sqrt(mean(x²) + eps) * (w or 1 + w) ----
 * The sum of squares is accumulated in double and the mean rounded to fp32,
 * so it is the correctly rounded fp32 mean (torch's fp32 reduction is within
 * an ulp or two of it). Backward: needs x and w (1/rms is recomputed). */

struct rmsnorm_job {
	float *y;
	const float *x, *w;
	int dim, plus_one;
	float eps;
};

static void rmsnorm_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct rmsnorm_job *j = ctx;
	const int d = j->dim;
	for (int64_t r = lo; r < hi; r++) {
		const float *x = j->x + r * d;
		float *y = j->y + r * d;
		double ss = 0;
		for (int i = 0; i < d; i++)
			ss += (double)x[i] * x[i];
		float mean = (float)(ss / d);
		float inv = 1.0f / sqrtf(mean + j->eps);
		if (j->plus_one)
			for (int i = 0; i < d; i++)
				y[i] = (x[i] * inv) * (1.0f + j->w[i]);
		else
			for (int i = 0; i < d; i++)
				y[i] = j->w[i] * (x[i] * inv);
	}
}

static void cpu_rmsnorm(float *y, const float *x, const float *w, int rows, int dim, float eps, int plus_one)
{
	struct rmsnorm_job j = {y, x, w, dim, plus_one, eps};
	par_for(rows, 1 + 16384 / (dim > 0 ? dim : 1), rmsnorm_part, &j);
}

/* ---- rope: x[n × n_heads × head_dim] rotated in place ----
 * out_i = x_i·cos - x_{i+h}·sin, out_{i+h} = x_{i+h}·cos + x_i·sin (h =
 * head_dim/2). Backward: the same rotation by -angle; needs only pos. */

struct rope_job {
	float *x;
	const int32_t *pos;
	const float *inv_freq;
	int n_heads, head_dim;
	float dir; /* 1: by +angle (forward), -1: by -angle (backward) */
};

static void rope_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct rope_job *j = ctx;
	const int half = j->head_dim / 2;
	float cs[512], sn[512]; /* head_dim/2 <= 512 */
	for (int64_t t = lo; t < hi; t++) {
		/* transformers: freqs = inv_freq * position in fp32, then cos, sin */
		float p = (float)j->pos[t];
		for (int i = 0; i < half; i++) {
			float f = j->inv_freq[i] * p;
			cs[i] = cosf(f);
			sn[i] = j->dir * sinf(f); /* exact: the sign alone */
		}
		float *row = j->x + t * j->n_heads * j->head_dim;
		for (int h = 0; h < j->n_heads; h++) {
			float *a = row + h * j->head_dim, *b = a + half;
			for (int i = 0; i < half; i++) {
				float x1 = a[i], x2 = b[i];
				a[i] = x1 * cs[i] - x2 * sn[i];
				b[i] = x2 * cs[i] + x1 * sn[i];
			}
		}
	}
}

void cpu_rope_rotate(float *x, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq,
		     float dir)
{
	if (head_dim / 2 > 512) {
		fill_nan(x, (int64_t)n * n_heads * head_dim);
		return;
	}
	struct rope_job j = {x, pos, inv_freq, n_heads, head_dim, dir};
	par_for(n, 1 + 8192 / (n_heads * head_dim + 1), rope_part, &j);
}

static void cpu_rope(float *x, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq)
{
	cpu_rope_rotate(x, n, n_heads, head_dim, pos, inv_freq, 1);
}

/* ---- attention ----
 * Work items are (head, block of qb query rows); each is done by one thread:
 * S = scale · Q·Kᵀ over the keys any row of the block may see (sgemm), then
 * softcap, mask and softmax per row, then out = P·V (sgemm). BLAS runs
 * single-threaded inside the items (the threads are ours here), so every
 * output depends only on its item: the same bits at any thread count.
 * Backward: recomputes P per item from q, k (as flash attention does) and
 * needs q, k, v, out; dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P∘(dP - rowsum(dO∘O)). */

struct attn_args {
	float *out;
	const float *q, *k, *v;
	const int32_t *q_pos, *first_key;
	int n, n_keys, n_heads, group, head_dim, window, qb, n_blocks, nt;
	float scale, softcap;
	float *s;    /* scratch: threads × qb × n_keys */
	int64_t s_per_thread;
};

/* Rows t of S (m × nk, first key klo): mask, softcap, softmax in place. */
static void attn_softmax(float *s, const int32_t *pos, const int32_t *first, int m, int nk, int64_t klo, int window,
			 float softcap)
{
	for (int t = 0; t < m; t++, s += nk) {
		/* visible keys: columns [a, b] */
		int64_t p = pos[t];
		int64_t a = 0, b = p - klo;
		if (window > 0 && p - window + 1 - klo > a)
			a = p - window + 1 - klo;
		if (first && first[t] - klo > a)
			a = first[t] - klo;
		if (b > nk - 1)
			b = nk - 1;
		if (a > b) { /* nothing visible: only with a bad q_pos */
			for (int c = 0; c < nk; c++)
				s[c] = NAN;
			continue;
		}
		if (softcap > 0)
			for (int64_t c = a; c <= b; c++)
				s[c] = softcap * tanhf(s[c] / softcap);
		softmax_vec(s + a, b - a + 1);
		memset(s, 0, (size_t)a * sizeof *s);
		memset(s + b + 1, 0, (size_t)(nk - 1 - b) * sizeof *s);
	}
}

/* Thread tid takes items tid, tid + nt, ...: early query blocks (few keys)
 * and late ones (many) alternate, so the threads get similar work. */
static void attn_thread(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct attn_args *A = ctx;
	const int hd = A->head_dim, qs = A->n_heads * hd, ks = A->n_heads / A->group * hd;
	const int64_t items = (int64_t)A->n_heads * A->n_blocks;
	float *s = A->s + A->s_per_thread * tid;
	for (int64_t it = tid; it < items; it += A->nt) {
		int h = (int)(it % A->n_heads), g = h / A->group;
		int t0 = (int)(it / A->n_heads) * A->qb;
		int m = A->n - t0 < A->qb ? A->n - t0 : A->qb;
		/* keys any row of the block can see: [klo, khi] */
		int64_t klo = INT64_MAX, khi = -1;
		for (int t = t0; t < t0 + m; t++) {
			int64_t p = A->q_pos[t];
			int64_t a = A->window > 0 ? p - A->window + 1 : 0;
			if (a < 0)
				a = 0;
			if (A->first_key && A->first_key[t] > a)
				a = A->first_key[t];
			if (a < klo)
				klo = a;
			if (p > khi)
				khi = p;
		}
		if (khi > A->n_keys - 1)
			khi = A->n_keys - 1;
		if (klo > khi)
			klo = khi = 0;
		int nk = (int)(khi - klo + 1);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nk, hd, A->scale,
			    A->q + (int64_t)t0 * qs + h * hd, qs, A->k + klo * ks + g * hd, ks, 0.0f, s, nk);
		attn_softmax(s, A->q_pos + t0, A->first_key ? A->first_key + t0 : NULL, m, nk, klo, A->window,
			     A->softcap);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, hd, nk, 1.0f, s, nk,
			    A->v + klo * ks + g * hd, ks, 0.0f, A->out + (int64_t)t0 * qs + h * hd, qs);
	}
}

/* Query rows per work item. */
#define ATTN_QB 64

static void cpu_attention(float *out, const float *q, const float *k, const float *v, int n, int n_keys,
			  const int32_t *q_pos, const int32_t *first_key, int n_heads, int n_kv_heads, int head_dim,
			  float scale, int window, float softcap)
{
	if (n <= 0)
		return;
	int qb = n < ATTN_QB ? n : ATTN_QB;
	int n_blocks = (n + qb - 1) / qb;
	int64_t items = (int64_t)n_heads * n_blocks;
	int nt = cpu_threads < items ? cpu_threads : (int)items;
	int64_t per = (int64_t)qb * n_keys;
	float *s = malloc((size_t)(nt * per) * sizeof *s);
	if (!s) {
		fill_nan(out, (int64_t)n * n_heads * head_dim);
		return;
	}
	struct attn_args A = {out, q, k, v, q_pos, first_key, n, n_keys, n_heads, n_heads / n_kv_heads, head_dim,
			      window, qb, n_blocks, nt, scale, softcap, s, per};
	par_for_nt(nt, nt, attn_thread, &A);
	free(s);
}

/* ---- glu: h[count] = act(gate) * up ----
 * Backward: needs gate and up (act' from gate). */

struct glu_job {
	float *h;
	const float *gate, *up;
	int act;
};

static void glu_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct glu_job *j = ctx;
	/* SiLU: x / (1 + e^-x), as torch. GELU: torch's tanh formula,
	 * 0.5·x·(1 + tanh(u)) with u = √(2/π)·(x + 0.044715·x³), and
	 * tanh(u) = ±(1 - E) / (1 + E), E = e^(-2|u|), within 2 ulp of tanhf. */
	const float beta = (float)(M_SQRT2 * M_2_SQRTPI * 0.5), kappa = 0.044715f;
	float e[256];
	for (int64_t i0 = lo; i0 < hi; i0 += 256) {
		int m = hi - i0 < 256 ? (int)(hi - i0) : 256;
		const float *g = j->gate + i0, *u = j->up + i0;
		float *h = j->h + i0;
		if (j->act == ACT_GELU_TANH) {
			float uu[256];
			for (int i = 0; i < m; i++) {
				uu[i] = beta * (g[i] + kappa * (g[i] * g[i] * g[i]));
				e[i] = -2.0f * fabsf(uu[i]);
			}
			exp_vec(e, e, m);
			for (int i = 0; i < m; i++) {
				float t = copysignf((1.0f - e[i]) / (1.0f + e[i]), uu[i]);
				h[i] = 0.5f * g[i] * (1.0f + t) * u[i];
			}
		} else {
			for (int i = 0; i < m; i++)
				e[i] = -g[i];
			exp_vec(e, e, m);
			for (int i = 0; i < m; i++)
				h[i] = g[i] / (1.0f + e[i]) * u[i];
		}
	}
}

static void cpu_glu(float *h, const float *gate, const float *up, int64_t count, int act)
{
	struct glu_job j = {h, gate, up, act};
	par_for(count, 32768, glu_part, &j);
}

/* ---- embed: x[n × e.cols] = e[tok[t]] · scale ----
 * Frozen: no backward. */

static void cpu_embed(float *x, const struct weight *e, const int32_t *tok, int n, float scale)
{
	const int64_t d = e->cols;
	for (int t = 0; t < n; t++) {
		float *row = x + (int64_t)t * d;
		if (e->fmt == WFMT_F32)
			memcpy(row, e->f32 + (int64_t)tok[t] * d, (size_t)d * sizeof *row);
		else
			weight_rows_f32(e, tok[t], 1, row);
		if (scale != 1.0f)
			for (int64_t i = 0; i < d; i++)
				row[i] *= scale;
	}
}

/* ---- elementwise ---- */

struct ew_job {
	float *y;
	const float *x;
	float cap; /* softcap's cap, axpy's alpha */
};

static void axpy_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct ew_job *j = ctx;
	if (j->cap == 1)
		for (int64_t i = lo; i < hi; i++)
			j->y[i] += j->x[i];
	else
		for (int64_t i = lo; i < hi; i++)
			j->y[i] += j->cap * j->x[i];
}

static void cpu_axpy(float *y, const float *x, float alpha, int64_t count)
{
	struct ew_job j = {y, x, alpha};
	par_for(count, 262144, axpy_part, &j);
}

static void softcap_part(void *ctx, int64_t lo, int64_t hi, int tid)
{
	struct ew_job *j = ctx;
	for (int64_t i = lo; i < hi; i++)
		j->y[i] = j->cap * tanhf(j->y[i] / j->cap);
}

static void cpu_softcap(float *x, int64_t count, float cap)
{
	struct ew_job j = {x, NULL, cap};
	par_for(count, 32768, softcap_part, &j);
}

const struct backend backend_cpu = {
	.name = "cpu",
	.matmul = cpu_matmul,
	.rmsnorm = cpu_rmsnorm,
	.rope = cpu_rope,
	.attention = cpu_attention,
	.glu = cpu_glu,
	.embed = cpu_embed,
	.axpy = cpu_axpy,
	.softcap = cpu_softcap,
	.matmul_dx = cpu_matmul_dx,
	.gemm = cpu_gemm,
	.rmsnorm_dx = cpu_rmsnorm_dx,
	.rope_dx = cpu_rope_dx,
	.attention_dx = cpu_attention_dx,
	.glu_dx = cpu_glu_dx,
	.dropout = cpu_dropout,
	.softcap_dx = cpu_softcap_dx,
	.cross_entropy = cpu_cross_entropy,
};
