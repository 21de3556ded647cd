/* tinymodel: tiny random models of each family built in memory (no files),
 * for the unit tests of the forward and training passes: dim 32, 4 heads of
 * 16 (q_dim 64 != dim), 2 kv heads, 3 layers, vocabulary 97; Gemma 3 with
 * both softcaps, a sliding window of 4 on layers 0 and 1 and its own local
 * RoPE base; llama with llama3 RoPE scaling. Weights from check.h's seeded
 * stream.
 */
#ifndef LORAPIPE_TINYMODEL_H
#define LORAPIPE_TINYMODEL_H

#include <math.h>
#include <stdlib.h>

#include "check.h"
#include "model.h"

static float *tiny_rnd(int64_t count, double scale, double center)
{
	float *x = malloc((size_t)count * sizeof *x);
	for (int64_t i = 0; i < count; i++)
		x[i] = (float)(center + (check_urand() * 2 - 1) * scale);
	return x;
}

static void tiny_weight(struct weight *w, enum wfmt fmt, int rows, int cols, double scale)
{
	struct err err;
	float *x = tiny_rnd((int64_t)rows * cols, scale, 0);
	if (weight_from_f32(w, fmt, x, rows, cols, &err) < 0) {
		printf("# weight_from_f32: %s\n", err.msg);
		abort();
	}
	free(x);
}

/* A tiny model of the family: dim 32, 4 heads of 16 (q_dim 64 ≠ dim), 2 kv heads. */
static struct model *tiny(enum model_arch arch, enum wfmt fmt)
{
	struct model *m = calloc(1, sizeof *m);
	struct model_config *c = &m->cfg;
	c->arch = arch;
	c->vocab = 97;
	c->dim = 32;
	c->n_layers = 3;
	c->n_heads = 4;
	c->n_kv_heads = 2;
	c->head_dim = 16;
	c->ffn = 48;
	c->norm_eps = 1e-6f;
	c->act = ACT_SILU;
	c->embed_scale = 1;
	c->attn_scale = 0.25f;
	c->rope = (struct rope_config){ROPE_DEFAULT, 10000, 1, 1, 1, 0};
	c->rope_local = c->rope;
	c->max_pos = 512;
	c->bos_id = -1;
	if (arch == ARCH_QWEN2)
		c->qkv_bias = 1;
	if (arch == ARCH_QWEN3)
		c->qk_norm = 1;
	if (arch == ARCH_LLAMA)
		c->rope = (struct rope_config){ROPE_LLAMA3, 500000, 8, 1, 4, 64};
	if (arch == ARCH_GEMMA3) {
		c->norm_plus_one = 1;
		c->act = ACT_GELU_TANH;
		c->qk_norm = 1;
		c->sandwich_norm = 1;
		c->tied_embeddings = 1;
		c->embed_scale = sqrtf(32);
		c->attn_scale = 1 / sqrtf(24);
		c->final_softcap = 30;
		c->attn_softcap = 20;
		c->sliding_window = 4;
		c->layer_sliding = calloc(3, 1);
		c->layer_sliding[0] = c->layer_sliding[1] = 1;
		c->rope_local.theta = 10;
	}
	const int qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
	enum wfmt efmt = fmt == WFMT_F32 ? WFMT_F32 : WFMT_BF16;
	tiny_weight(&m->embed, efmt, c->vocab, c->dim, 1.0);
	if (!c->tied_embeddings)
		tiny_weight(&m->lm_head, efmt, c->vocab, c->dim, 0.3);
	double norm_center = c->norm_plus_one ? 0 : 1;
	m->final_norm = tiny_rnd(c->dim, 0.2, norm_center);
	m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
	for (int l = 0; l < c->n_layers; l++) {
		struct layer_weights *L = &m->layers[l];
		L->attn_norm = tiny_rnd(c->dim, 0.2, norm_center);
		L->ffn_norm = tiny_rnd(c->dim, 0.2, norm_center);
		tiny_weight(&L->q, fmt, qd, c->dim, 0.3);
		tiny_weight(&L->k, fmt, kvd, c->dim, 0.3);
		tiny_weight(&L->v, fmt, kvd, c->dim, 0.3);
		tiny_weight(&L->o, fmt, c->dim, qd, 0.3);
		tiny_weight(&L->gate, fmt, c->ffn, c->dim, 0.3);
		tiny_weight(&L->up, fmt, c->ffn, c->dim, 0.3);
		tiny_weight(&L->down, fmt, c->dim, c->ffn, 0.3);
		if (c->qkv_bias) {
			L->q_bias = tiny_rnd(qd, 0.2, 0);
			L->k_bias = tiny_rnd(kvd, 0.2, 0);
			L->v_bias = tiny_rnd(kvd, 0.2, 0);
		}
		if (c->qk_norm) {
			L->q_norm = tiny_rnd(c->head_dim, 0.2, norm_center);
			L->k_norm = tiny_rnd(c->head_dim, 0.2, norm_center);
		}
		if (c->sandwich_norm) {
			L->post_attn_norm = tiny_rnd(c->dim, 0.2, norm_center);
			L->post_ffn_norm = tiny_rnd(c->dim, 0.2, norm_center);
		}
	}
	return m;
}

static void tiny_free(struct model *m)
{
	weight_free(&m->embed);
	if (!m->cfg.tied_embeddings)
		weight_free(&m->lm_head);
	free(m->final_norm);
	for (int l = 0; l < m->cfg.n_layers; l++) {
		struct layer_weights *L = &m->layers[l];
		struct weight *w[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
		for (int i = 0; i < 7; i++)
			weight_free(w[i]);
		float *f[] = {L->attn_norm, L->ffn_norm, L->q_bias, L->k_bias, L->v_bias,
			      L->q_norm, L->k_norm, L->post_attn_norm, L->post_ffn_norm};
		for (int i = 0; i < 9; i++)
			free(f[i]);
	}
	free(m->layers);
	free(m->cfg.layer_sliding);
	free(m);
}

#endif
