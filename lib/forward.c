/* forward: the transformer forward pass of lib/model.h in fp32 on the cpu
 * backend — Llama, Qwen2, Qwen3 and Gemma 3 text, in the order of operations of
 * transformers' modeling_llama / qwen2 / qwen3 / gemma3 — plus the KV cache and
 * RoPE's inverse frequencies.
 *
 * One decoder layer, x[n × dim] the residual stream:
 *   h = norm(x); q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ (+ bias: Qwen2)
 *   q, k = norm per head (Qwen3, Gemma 3); q, k = rope(q, k)
 *   a = attention(q, K, V)·Woᵀ; a = norm(a) (Gemma 3); x += a
 *   h = norm(x); f = (act(h·Wgateᵀ) * h·Wupᵀ)·Wdownᵀ; f = norm(f) (Gemma 3); x += f
 * then logits = norm(x)·Eᵀ (or lm_head), softcapped when configured.
 *
 * For the backward pass (training issue): per layer it will keep x at the
 * block's entry, q and k after RoPE, v, the attention output and gate/up
 * before the GLU — the buffers of struct acts, one set per layer — or
 * recompute them from x (gradient checkpointing).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "lora.h"
#include "model.h"

/* transformers' _compute_default_rope_parameters and the linear and llama3
 * variants, step by step in fp32 as torch evaluates them (a python number
 * against an fp32 tensor is an fp32 operation; `c / t` is reciprocal(t) * c). */
void rope_inv_freq(const struct rope_config *rc, int head_dim, float *inv_freq)
{
	const int half = head_dim / 2;
	const float base = (float)rc->theta;
	for (int i = 0; i < half; i++) {
		float e = (float)(2 * i) / (float)head_dim;
		inv_freq[i] = 1.0f / powf(base, e);
	}
	if (rc->kind == ROPE_LINEAR) {
		for (int i = 0; i < half; i++)
			inv_freq[i] = inv_freq[i] / (float)rc->factor;
	} else if (rc->kind == ROPE_LLAMA3) {
		const float factor = (float)rc->factor;
		const float lo = (float)rc->low_freq_factor, hi = (float)rc->high_freq_factor;
		const double old = rc->original_max_pos;
		const float low_wavelen = (float)(old / rc->low_freq_factor);
		const float high_wavelen = (float)(old / rc->high_freq_factor);
		const float two_pi = (float)(2 * M_PI);
		for (int i = 0; i < half; i++) {
			float f = inv_freq[i];
			float wavelen = (1.0f / f) * two_pi;
			float scaled = wavelen > low_wavelen ? f / factor : f;
			float smooth = ((1.0f / wavelen) * (float)old - lo) / (hi - lo);
			float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
			int medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
			inv_freq[i] = medium ? smoothed : scaled;
		}
	}
	if (rc->freq_factors)
		for (int i = 0; i < half; i++)
			inv_freq[i] = inv_freq[i] / rc->freq_factors[i];
}

struct kv_cache *kv_cache_new(const struct model_config *cfg, int max_seq, struct err *err)
{
	if (max_seq <= 0)
		return err_set(err, "kv cache: max_seq %d is not positive", max_seq), NULL;
	struct kv_cache *kv = calloc(1, sizeof *kv);
	if (!kv)
		return err_sys(err, "kv cache:"), NULL;
	kv->max_seq = max_seq;
	kv->n_layers = cfg->n_layers;
	kv->kv_dim = cfg->n_kv_heads * cfg->head_dim;
	size_t count = (size_t)kv->n_layers * (size_t)max_seq * (size_t)kv->kv_dim;
	if (count == 0 || count > SIZE_MAX / 2 / sizeof(float)) {
		err_set(err, "kv cache: size %d × %d × %d out of range", kv->n_layers, max_seq, kv->kv_dim);
		free(kv);
		return NULL;
	}
	kv->k = malloc(count * sizeof(float));
	kv->v = malloc(count * sizeof(float));
	if (!kv->k || !kv->v) {
		err_sys(err, "kv cache of %zu MB:", count * 2 * sizeof(float) >> 20);
		kv_cache_free(kv);
		return NULL;
	}
	return kv;
}

void kv_cache_free(struct kv_cache *kv)
{
	if (!kv)
		return;
	free(kv->k);
	free(kv->v);
	free(kv);
}

/* Activations of one call, one allocation split into named buffers. */
struct acts {
	float *x;     /* n × dim: the residual stream */
	float *h;     /* n × dim: normed input of a block, then its output */
	float *q;     /* n × q_dim */
	float *att;   /* n × q_dim: attention output before o */
	float *k, *v; /* n × kv_dim: this call's keys and values when there is no cache */
	float *gate;  /* n × ffn, then act(gate) * up */
	float *up;    /* n × ffn */
	float *lr;    /* n × rank: x·Aᵀ of a LoRA pair; NULL without an adapter */
	float *ly;    /* n × max(dim, q_dim, ffn): its ·Bᵀ before scaling */
	int32_t *pos; /* n positions */
	float *inv_global, *inv_local; /* head_dim / 2 each */
	void *mem;
};

static int acts_alloc(struct acts *a, const struct model_config *c, int rank, int n, int own_kv,
		      struct err *err)
{
	size_t nn = (size_t)n;
	size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
	size_t widest = (size_t)c->dim > qd ? (size_t)c->dim : qd;
	if ((size_t)c->ffn > widest)
		widest = (size_t)c->ffn;
	size_t sizes[] = {nn * c->dim, nn * c->dim, nn * qd, nn * qd, own_kv ? nn * kvd : 0, own_kv ? nn * kvd : 0,
			  nn * c->ffn, nn * c->ffn, nn * (size_t)rank, rank ? nn * widest : 0, nn,
			  (size_t)c->head_dim / 2 + 1, (size_t)c->head_dim / 2 + 1};
	size_t total = 0;
	for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
		total += (sizes[i] + 15) / 16 * 16; /* 64-byte aligned pieces */
	float *m = aligned_alloc(64, total * sizeof(float));
	if (!m)
		return err_sys(err, "forward: %zu MB of activations:", total * sizeof(float) >> 20);
	float **ptr[] = {&a->x, &a->h, &a->q, &a->att, &a->k, &a->v, &a->gate, &a->up, &a->lr, &a->ly, NULL,
			 &a->inv_global, &a->inv_local};
	size_t off = 0;
	for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
		if (ptr[i])
			*ptr[i] = m + off;
		else
			a->pos = (int32_t *)(m + off);
		off += (sizes[i] + 15) / 16 * 16;
	}
	a->mem = m;
	if (!rank)
		a->lr = a->ly = NULL;
	return 0;
}

/* y[n × out] = x·Wᵀ (+ bias), plus scale·(x·Aᵀ)·Bᵀ when the adapter targets
 * this projection (no dropout: inference). */
static void project(const struct backend *be, struct acts *a, const struct lora *lo, int layer, int target,
		    float *y, const float *x, const struct weight *w, const float *bias, int n)
{
	be->matmul(y, x, w, bias, n);
	const struct lora_pair *p = lo ? &lo->pairs[layer][target] : NULL;
	if (!p || !p->a)
		return;
	const int r = lo->cfg.rank;
	struct weight wa = {.fmt = WFMT_F32, .rows = r, .cols = p->in, .f32 = p->a};
	struct weight wb = {.fmt = WFMT_F32, .rows = p->out, .cols = r, .f32 = p->b};
	be->matmul(a->lr, x, &wa, NULL, n);
	be->matmul(a->ly, a->lr, &wb, NULL, n);
	be->axpy(y, a->ly, lo->scale, (int64_t)n * p->out);
}

/* The checks of a call: tokens in the vocabulary, caches of this model with
 * room for what the call appends. */
static int check_call(const struct model_config *c, struct kv_cache *const *kvs, int n_seq, const int32_t *tokens,
		      int n, const struct lora *lo, struct err *err)
{
	const int kvd = c->n_kv_heads * c->head_dim;
	if (n <= 0)
		return err_set(err, "forward: %d tokens", n);
	for (int t = 0; t < n; t++)
		if (tokens[t] < 0 || tokens[t] >= c->vocab)
			return err_set(err, "forward: token %d (position %d) is outside the vocabulary of %d",
				       (int)tokens[t], t, c->vocab);
	for (int b = 0; b < n_seq; b++) {
		const struct kv_cache *kv = kvs[b];
		if (!kv)
			continue;
		if (kv->n_layers != c->n_layers || kv->kv_dim != kvd)
			return err_set(err, "forward: the kv cache (%d layers × %d) is not this model's (%d × %d)",
				       kv->n_layers, kv->kv_dim, c->n_layers, kvd);
		int adds = n_seq == 1 ? n : 1;
		if (adds > kv->max_seq - kv->n)
			return err_set(err, "forward: the kv cache is full (%d + %d positions, room for %d)",
				       kv->n, adds, kv->max_seq);
		for (int e = 0; e < b; e++)
			if (kvs[e] == kv)
				return err_set(err, "forward: sequences %d and %d share one kv cache", e, b);
	}
	if (lo && lo->n_layers != c->n_layers)
		return err_set(err, "forward: the adapter has %d layers, the model %d", lo->n_layers, c->n_layers);
	return 0;
}

/* Rows tokens[0..n) are either n consecutive positions of one sequence
 * (n_seq 1; kvs[0] its cache or NULL) or the next position of each of n
 * sequences (n_seq = n > 1, each with its cache): the projections take all
 * rows at once, attention runs per sequence. */
static int forward(const struct model *m, const struct lora *lo, struct kv_cache *const *kvs, int n_seq,
		   const int32_t *tokens, int n, float *logits, int all_logits, struct err *err)
{
	const struct backend *be = &backend_cpu;
	const struct model_config *c = &m->cfg;
	const int dim = c->dim, hd = c->head_dim;
	const int qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;
	if (check_call(c, kvs, n_seq, tokens, n, lo, err) < 0)
		return -1;
	struct kv_cache *kv = n_seq == 1 ? kvs[0] : NULL; /* the one sequence's cache */
	const int p0 = kv ? kv->n : 0;
	struct acts a = {0};
	if (acts_alloc(&a, c, lo ? lo->cfg.rank : 0, n, n_seq > 1 || kv == NULL, err) < 0)
		return -1;
	for (int t = 0; t < n; t++)
		a.pos[t] = n_seq == 1 ? p0 + t : kvs[t]->n;
	rope_inv_freq(&c->rope, hd, a.inv_global);
	/* a sliding layer takes rope_local when one is configured (Gemma 3) */
	rope_inv_freq(c->rope_local.theta > 0 ? &c->rope_local : &c->rope, hd, a.inv_local);

	be->embed(a.x, &m->embed, tokens, n, c->embed_scale);
	for (int l = 0; l < c->n_layers; l++) {
		const struct layer_weights *L = &m->layers[l];
		const int sliding = c->layer_sliding && c->layer_sliding[l] && c->sliding_window > 0;
		const int window = sliding ? c->sliding_window : 0;
		size_t layer_off = kv ? (size_t)l * kv->max_seq * kvd : 0;
		float *K = kv ? kv->k + layer_off : a.k; /* keys of positions 0 .. p0 + n */
		float *V = kv ? kv->v + layer_off : a.v;
		float *k_new = K + (size_t)p0 * kvd, *v_new = V + (size_t)p0 * kvd;

		/* attention block */
		be->rmsnorm(a.h, a.x, L->attn_norm, n, dim, c->norm_eps, c->norm_plus_one);
		project(be, &a, lo, l, LORA_Q, a.q, a.h, &L->q, c->qkv_bias ? L->q_bias : NULL, n);
		project(be, &a, lo, l, LORA_K, k_new, a.h, &L->k, c->qkv_bias ? L->k_bias : NULL, n);
		project(be, &a, lo, l, LORA_V, v_new, a.h, &L->v, c->qkv_bias ? L->v_bias : NULL, n);
		if (c->qk_norm) {
			be->rmsnorm(a.q, a.q, L->q_norm, n * c->n_heads, hd, c->norm_eps, c->norm_plus_one);
			be->rmsnorm(k_new, k_new, L->k_norm, n * c->n_kv_heads, hd, c->norm_eps, c->norm_plus_one);
		}
		const float *inv = sliding ? a.inv_local : a.inv_global;
		be->rope(a.q, n, c->n_heads, hd, a.pos, inv);
		be->rope(k_new, n, c->n_kv_heads, hd, a.pos, inv);
		if (n_seq == 1) {
			be->attention(a.att, a.q, K, V, n, p0 + n, a.pos, NULL, c->n_heads, c->n_kv_heads, hd,
				      c->attn_scale, window, c->attn_softcap);
		} else {
			for (int b = 0; b < n; b++) {
				struct kv_cache *sb = kvs[b];
				float *Kb = sb->k + (size_t)l * sb->max_seq * kvd, *Vb = sb->v + (size_t)l * sb->max_seq * kvd;
				memcpy(Kb + (size_t)sb->n * kvd, k_new + (size_t)b * kvd, (size_t)kvd * sizeof(float));
				memcpy(Vb + (size_t)sb->n * kvd, v_new + (size_t)b * kvd, (size_t)kvd * sizeof(float));
				be->attention(a.att + (size_t)b * qd, a.q + (size_t)b * qd, Kb, Vb, 1, sb->n + 1,
					      &a.pos[b], NULL, c->n_heads, c->n_kv_heads, hd, c->attn_scale, window,
					      c->attn_softcap);
			}
		}
		project(be, &a, lo, l, LORA_O, a.h, a.att, &L->o, NULL, n);
		if (c->sandwich_norm)
			be->rmsnorm(a.h, a.h, L->post_attn_norm, n, dim, c->norm_eps, c->norm_plus_one);
		be->axpy(a.x, a.h, 1, (int64_t)n * dim);

		/* feed-forward block */
		be->rmsnorm(a.h, a.x, L->ffn_norm, n, dim, c->norm_eps, c->norm_plus_one);
		project(be, &a, lo, l, LORA_GATE, a.gate, a.h, &L->gate, NULL, n);
		project(be, &a, lo, l, LORA_UP, a.up, a.h, &L->up, NULL, n);
		be->glu(a.gate, a.gate, a.up, (int64_t)n * c->ffn, c->act);
		project(be, &a, lo, l, LORA_DOWN, a.h, a.gate, &L->down, NULL, n);
		if (c->sandwich_norm)
			be->rmsnorm(a.h, a.h, L->post_ffn_norm, n, dim, c->norm_eps, c->norm_plus_one);
		be->axpy(a.x, a.h, 1, (int64_t)n * dim);
	}

	/* the final norm and the output projection, for all rows or the last */
	int rows = all_logits ? n : 1;
	const float *xin = a.x + (size_t)(n - rows) * dim;
	be->rmsnorm(a.h, xin, m->final_norm, rows, dim, c->norm_eps, c->norm_plus_one);
	const struct weight *out = c->tied_embeddings ? &m->embed : &m->lm_head;
	be->matmul(logits, a.h, out, NULL, rows);
	if (c->final_softcap > 0)
		be->softcap(logits, (int64_t)rows * c->vocab, c->final_softcap);
	if (kv)
		kv->n += n;
	else if (n_seq > 1)
		for (int b = 0; b < n; b++)
			kvs[b]->n++;
	free(a.mem);
	return 0;
}

int model_forward(const struct model *m, const struct lora *lo, struct kv_cache *kv, const int32_t *tokens, int n,
		  float *logits, int all_logits, struct err *err)
{
	return forward(m, lo, &kv, 1, tokens, n, logits, all_logits, err);
}

int model_forward_batch(const struct model *m, const struct lora *lo, struct kv_cache *const *kvs,
			const int32_t *tokens, int n_seq, float *logits, struct err *err)
{
	if (n_seq <= 0)
		return err_set(err, "forward: %d sequences", n_seq);
	for (int b = 0; b < n_seq; b++)
		if (!kvs[b])
			return err_set(err, "forward: sequence %d has no kv cache", b);
	return forward(m, lo, kvs, n_seq, tokens, n_seq, logits, 1, err);
}
