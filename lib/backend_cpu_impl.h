/* backend_cpu_impl: what lib/backend_cpu.c (the forward ops and the thread
 * pool) shares with lib/backend_cpu_grad.c (the backward ops). Internal to
 * the cpu backend; nothing else includes it.
 */
#ifndef LORAPIPE_BACKEND_CPU_IMPL_H
#define LORAPIPE_BACKEND_CPU_IMPL_H

#include <stdint.h>

#include "quant.h"

/* Threads the ops use (backend_cpu_threads sets it). */
extern int cpu_threads;

/* fn(ctx, lo, hi, tid) over [0, n) in nt contiguous chunks, chunk tid on
 * thread tid; the caller's thread runs chunk 0. One dispatch at a time. */
typedef void par_fn(void *ctx, int64_t lo, int64_t hi, int tid);
void par_for_nt(int64_t n, int nt, par_fn *fn, void *ctx);
/* par_for_nt with as many threads as there are chunks of min_chunk items, at
 * most cpu_threads: small work stays on the caller's thread. */
void par_for(int64_t n, int64_t min_chunk, par_fn *fn, void *ctx);

void fill_nan(float *x, int64_t count);
/* y[n] = exp(x[n]); y may be x (within 2 ulp of expf) */
void exp_vec(float *y, const float *x, int64_t n);
/* x[n] = softmax(x[n]), n >= 1 */
void softmax_vec(float *x, int64_t n);

/* x rotated in place by RoPE's angles (dir 1, the forward op) or by their
 * negatives (dir -1: the transpose, rope's backward); the same cos and sin. */
void cpu_rope_rotate(float *x, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq,
		     float dir);

/* The backward ops (lib/backend_cpu_grad.c), for the table in backend_cpu.c;
 * their contracts are in backend.h. */
void cpu_matmul_dx(float *dx, const float *dy, const struct weight *w, int n, int accumulate);
void cpu_gemm(float *c, const float *a, const float *b, int m, int n, int k, int trans_a, int trans_b, float alpha,
	      float beta);
void cpu_rmsnorm_dx(float *dx, const float *dy, const float *x, const float *w, int rows, int dim, float eps,
		    int plus_one, int accumulate);
void cpu_rope_dx(float *dx, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq);
void cpu_attention_dx(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
		      const float *v, int n, int n_keys, const int32_t *q_pos, const int32_t *first_key, int n_heads,
		      int n_kv_heads, int head_dim, float scale, int window, float softcap);
void cpu_glu_dx(float *dgate, float *dup, const float *dh, const float *gate, const float *up, int64_t count, int act);
void cpu_softcap_dx(float *dx, const float *y, int64_t count, float cap);
void cpu_dropout(float *y, const float *x, int rows, int width, uint64_t seed, float p);
double cpu_cross_entropy(float *dlogits, const float *logits, const int32_t *target, int rows, int vocab,
			 float grad_scale);

#endif
