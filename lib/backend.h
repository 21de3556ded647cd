/* backend: the operations a transformer is made of, one function each, behind
 * a table so that the CUDA backend (kernels/) can stand in for the cpu one.
 * lib/backend_cpu.c is the reference: plain C in fp32, BLAS (OpenBLAS,
 * multi-threaded) for matrix products, deterministic for a given thread count.
 *
 * Shapes are given as [rows × cols], row-major, fp32. n is the number of
 * positions (tokens) in the call. The forward ops are the ones the model
 * needs; the backward ops after them (lib/backend_cpu_grad.c on the cpu) are
 * the ones LoRA training needs: gradients of activations through frozen
 * weights, dense products for the adapter's own gradients, the loss, dropout.
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
	 * q_pos[t] < n_keys) and j >= first_key[t] (packing: the first key of
	 * query t's example, q_pos[t] then being t's own key index, not its RoPE
	 * position; first_key NULL: from key 0),
	 * scores scaled by scale (then softcap·tanh(s/softcap) when softcap > 0),
	 * softmax in fp32; out[n × n_heads × head_dim]. Head h reads kv head
	 * h / (n_heads / n_kv_heads). */
	void (*attention)(float *out, const float *q, const float *k, const float *v, int n, int n_keys,
			  const int32_t *q_pos, const int32_t *first_key, int n_heads, int n_kv_heads, int head_dim,
			  float scale, int window, float softcap);

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

	/* ---- backward (lib/backend_cpu_grad.c) ----
	 * d<name> is the gradient of the loss with respect to <name>. Ops with an
	 * `accumulate` flag add to their output when it is set, else overwrite. */

	/* dx[n × w.cols] (+)= dy[n × w.rows] · w: the input gradient of matmul
	 * with a frozen weight (no gradient for w or the bias), any format,
	 * dequantized tile by tile as in matmul. */
	void (*matmul_dx)(float *dx, const float *dy, const struct weight *w, int n, int accumulate);

	/* c[m × n] = alpha · op(a) · op(b) + beta · c, dense fp32, row-major:
	 * op(a) is a[m × k] or, trans_a, aᵀ with a[k × m]; op(b) is b[k × n] or,
	 * trans_b, bᵀ with b[n × k]. beta 0 ignores c's contents (as BLAS). For
	 * the LoRA products and their gradients. */
	void (*gemm)(float *c, const float *a, const float *b, int m, int n, int k, int trans_a, int trans_b,
		     float alpha, float beta);

	/* dx[rows × dim] (+)= the gradient through rmsnorm(x, w) given
	 * dy[rows × dim]; w frozen. dx must not be dy or x. */
	void (*rmsnorm_dx)(float *dx, const float *dy, const float *x, const float *w, int rows, int dim, float eps,
			   int plus_one, int accumulate);

	/* dx[n × n_heads × head_dim]: the gradient before rope from the one
	 * after it, in place (the rotation by -angle); same arguments as rope. */
	void (*rope_dx)(float *dx, int n, int n_heads, int head_dim, const int32_t *pos, const float *inv_freq);

	/* Gradients of attention (same arguments as attention, n_keys keys; the
	 * probabilities are recomputed from q and k): dq[n × n_heads × head_dim]
	 * and dk, dv[n_keys × n_kv_heads × head_dim] are overwritten, dout is
	 * [n × n_heads × head_dim]. */
	void (*attention_dx)(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
			     const float *v, int n, int n_keys, const int32_t *q_pos, const int32_t *first_key,
			     int n_heads, int n_kv_heads, int head_dim, float scale, int window, float softcap);

	/* dgate, dup[count] from dh[count] through h = act(gate) * up, with
	 * torch's derivative formulas (SiLU; GELU tanh); dgate may be dh. */
	void (*glu_dx)(float *dgate, float *dup, const float *dh, const float *gate, const float *up, int64_t count,
		       int act);

	/* y[rows × width] = x ∘ mask / (1 - p) (y may be x): inverted dropout.
	 * Row t's mask comes from its own lib/rng.h stream, state seed ^
	 * (t + 1)·0xd1b54a32d192ed03, one draw d per element in order: the
	 * element is dropped when (d >> 11) · 2⁻⁵³ < p. The same seed gives the
	 * same mask at any thread count and on any backend; the backward is the
	 * same op on the gradient with the same seed. */
	void (*dropout)(float *y, const float *x, int rows, int width, uint64_t seed, float p);

	/* dx[count] *= 1 - (y / cap)²: through softcap, given its output y. */
	void (*softcap_dx)(float *dx, const float *y, int64_t count, float cap);

	/* Softmax cross-entropy of rows of logits[rows × vocab] against
	 * target[rows] (a negative target: the row is not learned). Returns the
	 * sum over learned rows of -log softmax(row)[target] (in double); writes
	 * dlogits[rows × vocab] = (softmax(row) - onehot(target)) · grad_scale for
	 * learned rows and 0 for the others. dlogits may be logits. */
	double (*cross_entropy)(float *dlogits, const float *logits, const int32_t *target, int rows, int vocab,
				float grad_scale);
};

extern const struct backend backend_cpu;

/* Threads the cpu backend uses (0: the number of cores; 1 until called): its
 * own threads split every op, BLAS included (OpenBLAS is set to one thread).
 * One op at a time per process. */
void backend_cpu_threads(int n);

#endif
