/* model_weights_driver: what lib/model loads, written out, for
 * tests/ref/test_model_gguf.py (a model read from a Hugging Face folder and
 * from a GGUF must hold the same tensors).
 *
 *   model_weights_driver dump MODEL OUT.safetensors [LINEAR [EMBED]]
 *       loads MODEL (LINEAR, EMBED: f32 bf16 nf4 int8; default f32), writes
 *       every in-memory tensor as F32 under its Hugging Face name (norms as
 *       stored: Gemma's are w, the forward applies 1 + w) and prints the
 *       configuration as one JSON line
 *   model_weights_driver config MODEL
 *       model_config_load only; the same JSON line
 * Exit 0, 1 on a runtime failure, 2 on bad input or usage.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "safetensors.h"

static void print_rope(const char *key, const struct rope_config *r)
{
	static const char *const kind[] = {"default", "linear", "llama3"};
	printf("\"%s\":{\"kind\":\"%s\",\"theta\":%.17g,\"factor\":%.17g,\"low_freq_factor\":%.17g,"
	       "\"high_freq_factor\":%.17g,\"original_max_pos\":%d}",
	       key, kind[r->kind], r->theta, r->factor, r->low_freq_factor, r->high_freq_factor, r->original_max_pos);
}

static void print_config(const struct model_config *c)
{
	printf("{\"arch\":\"%s\",\"vocab\":%d,\"dim\":%d,\"n_layers\":%d,\"n_heads\":%d,\"n_kv_heads\":%d,"
	       "\"head_dim\":%d,\"ffn\":%d,\"norm_eps\":%.9g,\"norm_plus_one\":%d,\"act\":\"%s\",\"qkv_bias\":%d,"
	       "\"qk_norm\":%d,\"sandwich_norm\":%d,\"tied_embeddings\":%d,\"embed_scale\":%.9g,"
	       "\"attn_scale\":%.9g,\"attn_softcap\":%.9g,\"final_softcap\":%.9g,",
	       model_arch_name(c->arch), c->vocab, c->dim, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->ffn,
	       c->norm_eps, c->norm_plus_one, c->act == ACT_SILU ? "silu" : "gelu_tanh", c->qkv_bias, c->qk_norm,
	       c->sandwich_norm, c->tied_embeddings, c->embed_scale, c->attn_scale, c->attn_softcap, c->final_softcap);
	print_rope("rope", &c->rope);
	printf(",");
	print_rope("rope_local", &c->rope_local);
	printf(",\"sliding_window\":%d,\"layer_sliding\":", c->sliding_window);
	if (!c->layer_sliding) {
		printf("null");
	} else {
		for (int i = 0; i < c->n_layers; i++)
			printf("%c%d", i ? ',' : '[', c->layer_sliding[i]);
		printf("]");
	}
	printf(",\"max_pos\":%d,\"bos_id\":%d,\"eos_ids\":[", c->max_pos, c->bos_id);
	for (int i = 0; i < c->n_eos; i++)
		printf("%s%d", i ? "," : "", c->eos_ids[i]);
	printf("]}\n");
}

/* ---- the tensors, by Hugging Face name ---- */

struct dump {
	struct st_out *t;
	size_t n, cap;
	char **names;
	float **bufs;
};

static int add(struct dump *d, const char *name, const float *v, int64_t rows, int64_t cols, const struct weight *w)
{
	if (!v && !w)
		return 0;
	if (d->n == d->cap) {
		d->cap = d->cap * 2 + 64;
		d->t = realloc(d->t, d->cap * sizeof *d->t);
		d->names = realloc(d->names, d->cap * sizeof *d->names);
		d->bufs = realloc(d->bufs, d->cap * sizeof *d->bufs);
		if (!d->t || !d->names || !d->bufs)
			return -1;
	}
	int64_t n = rows * (cols ? cols : 1);
	float *buf = malloc((size_t)n * sizeof *buf);
	char *nm = strdup(name);
	if (!buf || !nm)
		return -1;
	if (w)
		weight_rows_f32(w, 0, rows, buf);
	else
		memcpy(buf, v, (size_t)n * sizeof *buf);
	struct st_out *o = &d->t[d->n];
	memset(o, 0, sizeof *o);
	o->name = nm;
	o->dtype = ST_F32;
	o->n_dims = cols ? 2 : 1;
	o->shape[0] = rows;
	o->shape[1] = cols;
	o->data = buf;
	d->names[d->n] = nm;
	d->bufs[d->n] = buf;
	d->n++;
	return 0;
}

static int collect(const struct model *m, struct dump *d)
{
	const struct model_config *c = &m->cfg;
	int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
	int rc = add(d, "model.embed_tokens.weight", NULL, m->embed.rows, m->embed.cols, &m->embed);
	if (!c->tied_embeddings)
		rc |= add(d, "lm_head.weight", NULL, m->lm_head.rows, m->lm_head.cols, &m->lm_head);
	rc |= add(d, "model.norm.weight", m->final_norm, c->dim, 0, NULL);
	for (int i = 0; i < c->n_layers; i++) {
		const struct layer_weights *l = &m->layers[i];
		char n[128];
#define W(s, w) (snprintf(n, sizeof n, "model.layers.%d.%s", i, s), add(d, n, NULL, (w)->rows, (w)->cols, w))
#define V(s, v, len) (snprintf(n, sizeof n, "model.layers.%d.%s", i, s), add(d, n, v, len, 0, NULL))
		rc |= V("input_layernorm.weight", l->attn_norm, c->dim);
		rc |= W("self_attn.q_proj.weight", &l->q);
		rc |= W("self_attn.k_proj.weight", &l->k);
		rc |= W("self_attn.v_proj.weight", &l->v);
		rc |= W("self_attn.o_proj.weight", &l->o);
		rc |= V("self_attn.q_proj.bias", l->q_bias, q);
		rc |= V("self_attn.k_proj.bias", l->k_bias, kv);
		rc |= V("self_attn.v_proj.bias", l->v_bias, kv);
		rc |= V("self_attn.q_norm.weight", l->q_norm, c->head_dim);
		rc |= V("self_attn.k_norm.weight", l->k_norm, c->head_dim);
		if (c->sandwich_norm) {
			rc |= V("post_attention_layernorm.weight", l->post_attn_norm, c->dim);
			rc |= V("pre_feedforward_layernorm.weight", l->ffn_norm, c->dim);
			rc |= V("post_feedforward_layernorm.weight", l->post_ffn_norm, c->dim);
		} else {
			rc |= V("post_attention_layernorm.weight", l->ffn_norm, c->dim);
		}
		rc |= W("mlp.gate_proj.weight", &l->gate);
		rc |= W("mlp.up_proj.weight", &l->up);
		rc |= W("mlp.down_proj.weight", &l->down);
#undef W
#undef V
	}
	return rc;
}

static void dump_free(struct dump *d)
{
	for (size_t i = 0; i < d->n; i++) {
		free(d->names[i]);
		free(d->bufs[i]);
	}
	free(d->t);
	free(d->names);
	free(d->bufs);
}

static int parse_fmt(const char *s, enum wfmt *f)
{
	int v = wfmt_parse(s);
	if (v < 0) {
		fprintf(stderr, "model_weights_driver: unknown format '%s' (f32 bf16 nf4 int8)\n", s);
		return -1;
	}
	*f = (enum wfmt)v;
	return 0;
}

int main(int argc, char **argv)
{
	struct err err = {{0}, 0};
	if (argc == 3 && !strcmp(argv[1], "config")) {
		struct model_config c;
		if (model_config_load(argv[2], &c, &err) < 0) {
			fprintf(stderr, "model_weights_driver: %s\n", err.msg);
			return err.code ? err.code : 2;
		}
		print_config(&c);
		model_config_free(&c);
		return 0;
	}
	if (argc < 4 || argc > 6 || strcmp(argv[1], "dump")) {
		fprintf(stderr, "usage: model_weights_driver dump MODEL OUT.safetensors [LINEAR [EMBED]]\n"
				"       model_weights_driver config MODEL\n");
		return 2;
	}
	struct model_load_opts o = {WFMT_F32, WFMT_F32};
	if ((argc > 4 && parse_fmt(argv[4], &o.linear) < 0) || (argc > 5 && parse_fmt(argv[5], &o.embed) < 0))
		return 2;
	struct model *m = model_load(argv[2], &o, &err);
	if (!m) {
		fprintf(stderr, "model_weights_driver: %s\n", err.msg);
		return err.code ? err.code : 2;
	}
	struct dump d = {0};
	int rc = 0;
	if (collect(m, &d) < 0) {
		fprintf(stderr, "model_weights_driver: out of memory\n");
		rc = 1;
	} else if (st_write(argv[3], d.t, d.n, NULL, &err) < 0) {
		fprintf(stderr, "model_weights_driver: %s\n", err.msg);
		rc = 1;
	} else {
		print_config(&m->cfg);
	}
	dump_free(&d);
	model_free(m);
	return rc;
}
