/* backend: the operations a transformer is made of, one function each, behind
 * a table so that the CUDA backend (kernels/) can stand in for the cpu one.
 * lib/backend_cpu.c is the reference: plain C in fp32, BLAS (OpenBLAS,
 * multi-threaded) for matrix products, deterministic for a given thread count.
 *
 * Shapes are given as [rows × cols], row-major, fp32. n is the number of
 * positions (tokens) in the call. The backward of each op joins the table with
 * the training issue; the forward ops here are the ones the model needs.
 */
#ifndef LORAPIPE_BACKEND_H
#define LORAPIPE_BACKEND_H

#include <stdint.h>

#include "quant.h"

struct backend {
	const char *name;

	/* y[n × w.rows] = x[n × w.cols] · wᵀ (+ bias[w.rows] when not NULL).
	 * Quantized weights are dequantized tile by tile, never as a whole. */
	void (*matmul)(float *y, const float *x, const struct weight *w, const float *bias, int n);

	/* y[rows × dim] = x / sqrt(mean(x²) + eps) * g, per row, with g = w or
	 * 1 + w (plus_one); y may be x. The mean is taken in fp32 as torch does. */
	void (*rmsnorm)(float *y, const float *x, const float *w, int rows, int dim, float eps, int plus_one);

	/* Rotates x[n × n_heads × head_dim] in place, rotate-half convention
	 * (pairs i and i + head_dim/2), position pos[t] for row t; inv_freq has
	 * head_dim/2 entries (see rope_inv_freq). cos and sin are computed in fp32
	 * from pos * inv_freq as transformers does. */
	void (*rope)(float *x, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq);

	/* Causal attention with grouped heads.
	 * q[n × n_heads × head_dim] at positions q_pos[0..n);
	 * k, v[n_keys × n_kv_heads × head_dim], key j at position j;
	 * query t attends keys j <= q_pos[t] (and q_pos[t] - j < window when window > 0;
	 * q_pos[t] < n_keys),
	 * scores scaled by scale (then softcap·tanh(s/softcap) when softcap > 0),
	 * softmax in fp32; out[n × n_heads × head_dim]. Head h reads kv head
	 * h / (n_heads / n_kv_heads). */
	void (*attention)(float *out, const float *q, const float *k, const float *v, int n, int n_keys,
			  const int32_t *q_pos, int n_heads, int n_kv_heads, int head_dim, float scale, int window,
			  float softcap);

	/* h[n × ffn] = act(gate) * up: SiLU or tanh-approximated GELU (act is an
	 * enum model_act: ACT_SILU, ACT_GELU_TANH); h may be gate. */
	void (*glu)(float *h, const float *gate, const float *up, int64_t count, int act);

	/* x[n × e.cols] = rows tok[0..n) of e, times scale. */
	void (*embed)(float *x, const struct weight *e, const int32_t *tok, int n, float scale);

	/* y[count] += alpha · x[count] (the product rounded, then the sum: torch's
	 * y + x * alpha) */
	void (*axpy)(float *y, const float *x, float alpha, int64_t count);

	/* x[count] = cap * tanh(x / cap) */
	void (*softcap)(float *x, int64_t count, float cap);
};

extern const struct backend backend_cpu;

/* Threads the cpu backend uses (0: the number of cores; 1 until called): its
 * own threads split every op, BLAS included (OpenBLAS is set to one thread).
 * One op at a time per process. */
void backend_cpu_threads(int n);

#endif
