/* test_model: lib/model's loaders on small models this test writes into a
 * temporary folder — Hugging Face folders (config.json, generation_config.json,
 * model.safetensors written here by hand) and the same weights as GGUF files
 * written the way convert_hf_to_gguf.py lays them out (llama q/k rows
 * permuted, Gemma norms stored as 1 + w). Both sources must give the same
 * in-memory model; broken models (missing or bad config, unknown model type,
 * missing tensor, wrong shape or dtype, truncated file, GGUF without a key or
 * a tensor, an unsupported tensor type) must give errors naming the file and
 * the key or tensor, never a crash (the ASan build runs this too). A GGUF
 * rope_freqs.weight (Llama 3.1's RoPE scaling) is read and divides the
 * inverse frequencies, and bad ones are refused; releasing a read tensor's
 * pages (st_release, gguf_release_tensor) leaves its bytes readable and never
 * touches an image in memory. The comparison with transformers and llama.cpp
 * is tests/ref/test_model_gguf.py. */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "gguf.h"
#include "half.h"
#include "model.h"
#include "safetensors.h"

static char tmpdir[256];
static unsigned long long seed = 20261201;

static float frand(void)
{
	seed = seed * 6364136223846793005ull + 1442695040888963407ull;
	return (float)((seed >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

/* ---- tensors of a model in Hugging Face naming ---- */

#define MAX_T 256

struct tens {
	char name[128];
	int nd;
	int64_t shape[2];
	float *x;
	const char *dtype; /* "F32" unless a test breaks it */
};

struct tset {
	struct tens t[MAX_T];
	int n;
};

static struct tens *tset_add(struct tset *s, const char *name, int64_t r, int64_t c)
{
	struct tens *t = &s->t[s->n++];
	snprintf(t->name, sizeof t->name, "%s", name);
	t->nd = c ? 2 : 1;
	t->shape[0] = r;
	t->shape[1] = c;
	t->dtype = "F32";
	int64_t n = r * (c ? c : 1);
	t->x = malloc((size_t)n * sizeof(float));
	for (int64_t i = 0; i < n; i++)
		t->x[i] = frand() * (t->nd == 1 ? 0.5f : 0.2f);
	return t;
}

static struct tens *tset_find(struct tset *s, const char *name)
{
	for (int i = 0; i < s->n; i++)
		if (!strcmp(s->t[i].name, name))
			return &s->t[i];
	return NULL;
}

static void tset_drop(struct tset *s, const char *name)
{
	struct tens *t = tset_find(s, name);
	if (!t)
		return;
	free(t->x);
	*t = s->t[--s->n];
}

static void tset_free(struct tset *s)
{
	for (int i = 0; i < s->n; i++)
		free(s->t[i].x);
	s->n = 0;
}

enum fam { F_LLAMA, F_QWEN2, F_QWEN3, F_GEMMA3 };

struct spec {
	enum fam fam;
	int vocab, dim, layers, heads, kv, hd, ffn;
	int tied;
	const char *prefix; /* "model." */
	const char *lm_head;
};

static const struct spec llama = {F_LLAMA, 40, 16, 2, 4, 2, 4, 24, 0, "model.", "lm_head.weight"};
static const struct spec qwen2 = {F_QWEN2, 40, 16, 2, 4, 2, 4, 24, 1, "model.", "lm_head.weight"};
static const struct spec qwen3 = {F_QWEN3, 40, 16, 2, 4, 1, 8, 24, 0, "model.", "lm_head.weight"};
static const struct spec gemma3 = {F_GEMMA3, 40, 16, 7, 2, 1, 8, 24, 1, "model.", "lm_head.weight"};

static void make_tensors(const struct spec *sp, struct tset *s)
{
	char n[160];
	int q = sp->heads * sp->hd, kv = sp->kv * sp->hd;
	s->n = 0;
#define ADD(r, c, ...) (snprintf(n, sizeof n, __VA_ARGS__), tset_add(s, n, r, c))
	ADD(sp->vocab, sp->dim, "%sembed_tokens.weight", sp->prefix);
	for (int i = 0; i < sp->layers; i++) {
		const char *p = sp->prefix;
		ADD(sp->dim, 0, "%slayers.%d.input_layernorm.weight", p, i);
		ADD(q, sp->dim, "%slayers.%d.self_attn.q_proj.weight", p, i);
		ADD(kv, sp->dim, "%slayers.%d.self_attn.k_proj.weight", p, i);
		ADD(kv, sp->dim, "%slayers.%d.self_attn.v_proj.weight", p, i);
		ADD(sp->dim, q, "%slayers.%d.self_attn.o_proj.weight", p, i);
		if (sp->fam == F_QWEN2) {
			ADD(q, 0, "%slayers.%d.self_attn.q_proj.bias", p, i);
			ADD(kv, 0, "%slayers.%d.self_attn.k_proj.bias", p, i);
			ADD(kv, 0, "%slayers.%d.self_attn.v_proj.bias", p, i);
		}
		if (sp->fam == F_QWEN3 || sp->fam == F_GEMMA3) {
			ADD(sp->hd, 0, "%slayers.%d.self_attn.q_norm.weight", p, i);
			ADD(sp->hd, 0, "%slayers.%d.self_attn.k_norm.weight", p, i);
		}
		ADD(sp->dim, 0, "%slayers.%d.post_attention_layernorm.weight", p, i);
		if (sp->fam == F_GEMMA3) {
			ADD(sp->dim, 0, "%slayers.%d.pre_feedforward_layernorm.weight", p, i);
			ADD(sp->dim, 0, "%slayers.%d.post_feedforward_layernorm.weight", p, i);
		}
		ADD(sp->ffn, sp->dim, "%slayers.%d.mlp.gate_proj.weight", p, i);
		ADD(sp->ffn, sp->dim, "%slayers.%d.mlp.up_proj.weight", p, i);
		ADD(sp->dim, sp->ffn, "%slayers.%d.mlp.down_proj.weight", p, i);
	}
	ADD(sp->dim, 0, "%snorm.weight", sp->prefix);
	if (!sp->tied)
		ADD(sp->vocab, sp->dim, "%s", sp->lm_head);
#undef ADD
}

static const char *fam_type(enum fam f)
{
	static const char *const t[] = {"llama", "qwen2", "qwen3", "gemma3_text"};
	return t[f];
}

/* config.json for sp, with extra keys (a JSON fragment starting with ',' or ""). */
static void config_json(const struct spec *sp, const char *extra, char *buf, size_t cap)
{
	snprintf(buf, cap,
		 "{\"model_type\": \"%s\", \"vocab_size\": %d, \"hidden_size\": %d, \"num_hidden_layers\": %d, "
		 "\"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d, "
		 "\"intermediate_size\": %d, \"tie_word_embeddings\": %s, \"rms_norm_eps\": 1e-5, "
		 "\"max_position_embeddings\": 128, \"rope_theta\": 5000.0, \"bos_token_id\": 1, "
		 "\"eos_token_id\": 2%s}",
		 fam_type(sp->fam), sp->vocab, sp->dim, sp->layers, sp->heads, sp->kv, sp->hd, sp->ffn,
		 sp->tied ? "true" : "false", extra);
}

/* ---- files ---- */

static void path_in(char *buf, size_t cap, const char *sub, const char *name)
{
	snprintf(buf, cap, "%s/%s%s%s", tmpdir, sub, *sub ? "/" : "", name);
}

static int write_file(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		return -1;
	size_t w = fwrite(p, 1, n, f);
	return fclose(f) || w != n ? -1 : 0;
}

static char *mkmodel_dir(const char *sub)
{
	static char d[512];
	path_in(d, sizeof d, sub, "");
	mkdir(d, 0755);
	return d;
}

static void write_text(const char *sub, const char *name, const char *text)
{
	char p[512];
	mkmodel_dir(sub);
	path_in(p, sizeof p, sub, name);
	write_file(p, text, strlen(text));
}

/* model.safetensors of s, each tensor in its dtype (F32, BF16, or I64 to
 * break a model); cut > 0 drops that many bytes from the end. */
static void write_safetensors_file(const char *sub, const char *file, const struct tset *s, int from, int to,
				   size_t cut);

static void write_safetensors(const char *sub, const struct tset *s, size_t cut)
{
	write_safetensors_file(sub, "model.safetensors", s, 0, s->n, cut);
}

/* Tensors [from, to) of s into sub/file. */
static void write_safetensors_file(const char *sub, const char *file, const struct tset *s, int from, int to,
				   size_t cut)
{
	size_t cap = 1 << 16, hn = 0, off = 0;
	char *h = malloc(cap);
	hn += (size_t)snprintf(h + hn, cap - hn, "{\"__metadata__\": {\"format\": \"pt\"}");
	for (int i = from; i < to; i++) {
		const struct tens *t = &s->t[i];
		int64_t n = t->shape[0] * (t->nd == 2 ? t->shape[1] : 1);
		size_t es = !strcmp(t->dtype, "BF16") ? 2 : !strcmp(t->dtype, "I64") ? 8 : 4;
		hn += (size_t)snprintf(h + hn, cap - hn, ", \"%s\": {\"dtype\": \"%s\", \"shape\": [%lld", t->name,
				       t->dtype, (long long)t->shape[0]);
		if (t->nd == 2)
			hn += (size_t)snprintf(h + hn, cap - hn, ", %lld", (long long)t->shape[1]);
		hn += (size_t)snprintf(h + hn, cap - hn, "], \"data_offsets\": [%zu, %zu]}", off,
				       off + (size_t)n * es);
		off += (size_t)n * es;
	}
	hn += (size_t)snprintf(h + hn, cap - hn, "}");
	while (hn % 8)
		h[hn++] = ' ';
	size_t total = 8 + hn + off;
	uint8_t *f = malloc(total);
	uint64_t hl = hn;
	memcpy(f, &hl, 8);
	memcpy(f + 8, h, hn);
	uint8_t *d = f + 8 + hn;
	for (int i = from; i < to; i++) {
		const struct tens *t = &s->t[i];
		int64_t n = t->shape[0] * (t->nd == 2 ? t->shape[1] : 1);
		for (int64_t j = 0; j < n; j++) {
			if (!strcmp(t->dtype, "BF16")) {
				uint16_t v = f32_to_bf16(t->x[j]);
				memcpy(d, &v, 2);
				d += 2;
			} else if (!strcmp(t->dtype, "I64")) {
				int64_t v = (int64_t)t->x[j];
				memcpy(d, &v, 8);
				d += 8;
			} else {
				memcpy(d, &t->x[j], 4);
				d += 4;
			}
		}
	}
	char p[512];
	mkmodel_dir(sub);
	path_in(p, sizeof p, sub, file);
	write_file(p, f, total - cut);
	free(f);
	free(h);
}

static void write_hf(const char *sub, const struct spec *sp, const struct tset *s, const char *extra)
{
	char cfg[4096];
	config_json(sp, extra, cfg, sizeof cfg);
	write_text(sub, "config.json", cfg);
	write_safetensors(sub, s, 0);
}

/* ---- a GGUF writer ---- */

struct buf {
	uint8_t *p;
	size_t n, cap;
};

static void put(struct buf *b, const void *d, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		if (!b->p)
			abort();
	}
	memcpy(b->p + b->n, d, n);
	b->n += n;
}
static void put_u32(struct buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(struct buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(struct buf *b, const char *s)
{
	put_u64(b, strlen(s));
	put(b, s, strlen(s));
}
static void kv_u32(struct buf *b, const char *k, uint32_t v)
{
	put_str(b, k);
	put_u32(b, GGUF_TYPE_UINT32);
	put_u32(b, v);
}
static void kv_f32(struct buf *b, const char *k, float v)
{
	put_str(b, k);
	put_u32(b, GGUF_TYPE_FLOAT32);
	put(b, &v, 4);
}
static void kv_str(struct buf *b, const char *k, const char *v)
{
	put_str(b, k);
	put_u32(b, GGUF_TYPE_STRING);
	put_str(b, v);
}

/* HF name → GGUF name, as gguf-py's tensor_mapping.py maps them. */
static int gguf_name_of(const char *hf, enum fam fam, char *out, size_t cap)
{
	static const char *const map[][2] = {
		{"input_layernorm.weight", "attn_norm.weight"},
		{"self_attn.q_proj.weight", "attn_q.weight"},
		{"self_attn.k_proj.weight", "attn_k.weight"},
		{"self_attn.v_proj.weight", "attn_v.weight"},
		{"self_attn.o_proj.weight", "attn_output.weight"},
		{"self_attn.q_proj.bias", "attn_q.bias"},
		{"self_attn.k_proj.bias", "attn_k.bias"},
		{"self_attn.v_proj.bias", "attn_v.bias"},
		{"self_attn.q_norm.weight", "attn_q_norm.weight"},
		{"self_attn.k_norm.weight", "attn_k_norm.weight"},
		{"pre_feedforward_layernorm.weight", "ffn_norm.weight"},
		{"post_feedforward_layernorm.weight", "post_ffw_norm.weight"},
		{"mlp.gate_proj.weight", "ffn_gate.weight"},
		{"mlp.up_proj.weight", "ffn_up.weight"},
		{"mlp.down_proj.weight", "ffn_down.weight"},
	};
	int layer, at;
	if (!strcmp(hf, "model.embed_tokens.weight"))
		return snprintf(out, cap, "token_embd.weight"), 0;
	if (!strcmp(hf, "model.norm.weight"))
		return snprintf(out, cap, "output_norm.weight"), 0;
	if (!strcmp(hf, "lm_head.weight"))
		return snprintf(out, cap, "output.weight"), 0;
	if (!strcmp(hf, "rope_freqs.weight")) /* no HF name: the converter makes it */
		return snprintf(out, cap, "rope_freqs.weight"), 0;
	if (sscanf(hf, "model.layers.%d.%n", &layer, &at) != 1)
		return -1;
	const char *rest = hf + at;
	if (!strcmp(rest, "post_attention_layernorm.weight"))
		return snprintf(out, cap, "blk.%d.%s", layer, fam == F_GEMMA3 ? "post_attention_norm.weight" : "ffn_norm.weight"), 0;
	for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
		if (!strcmp(rest, map[i][0]))
			return snprintf(out, cap, "blk.%d.%s", layer, map[i][1]), 0;
	return -1;
}

/* What the converter does to a tensor's values: llama's q/k permutation,
 * Gemma's 1 + w on norms. out holds the converted copy. */
static void convert_values(const struct spec *sp, const struct tens *t, float *out)
{
	int64_t rows = t->shape[0], cols = t->nd == 2 ? t->shape[1] : 1, n = rows * cols;
	memcpy(out, t->x, (size_t)n * sizeof *out);
	if (sp->fam == F_GEMMA3 && strstr(t->name, "norm.weight"))
		for (int64_t i = 0; i < n; i++)
			out[i] = t->x[i] + 1.0f;
	if (sp->fam == F_LLAMA && (strstr(t->name, "q_proj.weight") || strstr(t->name, "k_proj.weight"))) {
		int half = sp->hd / 2;
		for (int64_t h0 = 0; h0 < rows; h0 += sp->hd)
			for (int i = 0; i < half; i++)
				for (int j = 0; j < 2; j++)
					memcpy(out + (h0 + 2 * i + j) * cols, t->x + (h0 + (int64_t)j * half + i) * cols,
					       (size_t)cols * sizeof *out);
	}
}

enum gguf_break { GB_NONE, GB_NO_BLOCK_COUNT, GB_NO_TENSOR, GB_I8_TENSOR, GB_F16 };

static const char *gguf_arch_of(enum fam f)
{
	static const char *const a[] = {"llama", "qwen2", "qwen3", "gemma3"};
	return a[f];
}

static void write_gguf(const char *file, const struct spec *sp, const struct tset *s, enum gguf_break brk)
{
	struct buf b = {0};
	const char *a = gguf_arch_of(sp->fam);
	char k[128];
	int n_t = 0;
	for (int i = 0; i < s->n; i++)
		n_t += !(brk == GB_NO_TENSOR && strstr(s->t[i].name, "layers.1.mlp.up_proj"));
	int n_kv = 13 + (sp->fam == F_GEMMA3) - (brk == GB_NO_BLOCK_COUNT);
	put(&b, "GGUF", 4);
	put_u32(&b, 3);
	put_u64(&b, (uint64_t)n_t);
	put_u64(&b, (uint64_t)n_kv);
	kv_str(&b, "general.architecture", a);
#define KU(s, v) (snprintf(k, sizeof k, "%s.%s", a, s), kv_u32(&b, k, (uint32_t)(v)))
	KU("context_length", 128);
	KU("embedding_length", sp->dim);
	if (brk != GB_NO_BLOCK_COUNT)
		KU("block_count", sp->layers);
	KU("feed_forward_length", sp->ffn);
	KU("attention.head_count", sp->heads);
	KU("attention.head_count_kv", sp->kv);
	KU("attention.key_length", sp->hd);
	KU("attention.value_length", sp->hd);
	if (sp->fam == F_GEMMA3)
		KU("attention.sliding_window", 3);
#undef KU
	snprintf(k, sizeof k, "%s.attention.layer_norm_rms_epsilon", a);
	kv_f32(&b, k, 1e-5f);
	snprintf(k, sizeof k, "%s.rope.freq_base", a);
	kv_f32(&b, k, sp->fam == F_GEMMA3 ? 1e6f : 5000.0f);
	kv_u32(&b, "tokenizer.ggml.bos_token_id", 1);
	kv_u32(&b, "tokenizer.ggml.eos_token_id", 2);
	/* tensor infos */
	uint64_t off = 0;
	int64_t *offs = calloc((size_t)s->n, sizeof *offs);
	for (int i = 0; i < s->n; i++) {
		const struct tens *t = &s->t[i];
		char gn[128];
		if (brk == GB_NO_TENSOR && strstr(t->name, "layers.1.mlp.up_proj"))
			continue;
		if (gguf_name_of(t->name, sp->fam, gn, sizeof gn) < 0)
			abort();
		int64_t n = t->shape[0] * (t->nd == 2 ? t->shape[1] : 1);
		uint32_t type = GGML_TYPE_F32;
		size_t es = 4;
		if (brk == GB_I8_TENSOR && strstr(gn, "blk.0.attn_v.weight"))
			type = GGML_TYPE_I8, es = 1;
		if (brk == GB_F16 && t->nd == 2)
			type = GGML_TYPE_F16, es = 2;
		put_str(&b, gn);
		put_u32(&b, (uint32_t)t->nd);
		if (t->nd == 2) {
			put_u64(&b, (uint64_t)t->shape[1]);
			put_u64(&b, (uint64_t)t->shape[0]);
		} else {
			put_u64(&b, (uint64_t)t->shape[0]);
		}
		put_u32(&b, type);
		put_u64(&b, off);
		offs[i] = (int64_t)off;
		off += ((uint64_t)n * es + 31) / 32 * 32;
	}
	while (b.n % 32)
		put(&b, "", 1);
	size_t data = b.n;
	for (int i = 0; i < s->n; i++) {
		const struct tens *t = &s->t[i];
		if (brk == GB_NO_TENSOR && strstr(t->name, "layers.1.mlp.up_proj"))
			continue;
		int64_t n = t->shape[0] * (t->nd == 2 ? t->shape[1] : 1);
		float *v = malloc((size_t)n * sizeof *v);
		convert_values(sp, t, v);
		while (b.n < data + (size_t)offs[i])
			put(&b, "", 1);
		char gn[128];
		gguf_name_of(t->name, sp->fam, gn, sizeof gn);
		for (int64_t j = 0; j < n; j++) {
			if (brk == GB_I8_TENSOR && strstr(gn, "blk.0.attn_v.weight")) {
				int8_t q = (int8_t)(v[j] * 100);
				put(&b, &q, 1);
			} else if (brk == GB_F16 && t->nd == 2) {
				uint16_t h = f32_to_f16(v[j]);
				put(&b, &h, 2);
			} else {
				put(&b, &v[j], 4);
			}
		}
		free(v);
	}
	while (b.n % 32)
		put(&b, "", 1);
	char p[512];
	path_in(p, sizeof p, "", file);
	write_file(p, b.p, b.n);
	free(b.p);
	free(offs);
}

/* ---- what a model holds, by HF name ---- */

/* The fp32 values of the in-memory tensor called name (HF naming), into a new
 * buffer; NULL when the model has no such tensor. */
static float *model_values(const struct model *m, const char *name, int64_t *n)
{
	const struct model_config *c = &m->cfg;
	const struct weight *w = NULL;
	const float *v = NULL;
	int64_t vn = 0;
	int layer, at;
	if (!strcmp(name, "model.embed_tokens.weight"))
		w = &m->embed;
	else if (!strcmp(name, "lm_head.weight"))
		w = c->tied_embeddings ? NULL : &m->lm_head;
	else if (!strcmp(name, "model.norm.weight"))
		v = m->final_norm, vn = c->dim;
	else if (sscanf(name, "model.layers.%d.%n", &layer, &at) == 1 && layer >= 0 && layer < c->n_layers) {
		const struct layer_weights *l = &m->layers[layer];
		const char *r = name + at;
		int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
		struct {
			const char *n;
			const struct weight *w;
			const float *v;
			int64_t vn;
		} tab[] = {
			{"input_layernorm.weight", NULL, l->attn_norm, c->dim},
			{"self_attn.q_proj.weight", &l->q, NULL, 0},
			{"self_attn.k_proj.weight", &l->k, NULL, 0},
			{"self_attn.v_proj.weight", &l->v, NULL, 0},
			{"self_attn.o_proj.weight", &l->o, NULL, 0},
			{"self_attn.q_proj.bias", NULL, l->q_bias, q},
			{"self_attn.k_proj.bias", NULL, l->k_bias, kv},
			{"self_attn.v_proj.bias", NULL, l->v_bias, kv},
			{"self_attn.q_norm.weight", NULL, l->q_norm, c->head_dim},
			{"self_attn.k_norm.weight", NULL, l->k_norm, c->head_dim},
			{"post_attention_layernorm.weight", NULL, c->sandwich_norm ? l->post_attn_norm : l->ffn_norm, c->dim},
			{"pre_feedforward_layernorm.weight", NULL, c->sandwich_norm ? l->ffn_norm : NULL, c->dim},
			{"post_feedforward_layernorm.weight", NULL, l->post_ffn_norm, c->dim},
			{"mlp.gate_proj.weight", &l->gate, NULL, 0},
			{"mlp.up_proj.weight", &l->up, NULL, 0},
			{"mlp.down_proj.weight", &l->down, NULL, 0},
		};
		for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
			if (!strcmp(r, tab[i].n))
				w = tab[i].w, v = tab[i].v, vn = tab[i].vn;
	}
	if (w) {
		*n = w->rows * w->cols;
		float *out = malloc((size_t)*n * sizeof *out);
		weight_rows_f32(w, 0, w->rows, out);
		return out;
	}
	if (!v)
		return NULL;
	*n = vn;
	float *out = malloc((size_t)vn * sizeof *out);
	memcpy(out, v, (size_t)vn * sizeof *out);
	return out;
}

/* Every tensor of s against the model: equal (gemma_norms: compared as the
 * 1 + w the forward uses), or within tol when tol > 0. */
static void check_weights(const struct model *m, const struct tset *s, int gemma_norms, float tol, const char *what)
{
	for (int i = 0; i < s->n; i++) {
		const struct tens *t = &s->t[i];
		int64_t n = 0, want = t->shape[0] * (t->nd == 2 ? t->shape[1] : 1);
		float *v = model_values(m, t->name, &n);
		if (!v) {
			CHECK(!strcmp(t->name, "lm_head.weight") && m->cfg.tied_embeddings, "%s: %s not in the model", what,
			      t->name);
			continue;
		}
		CHECK(n == want, "%s: %s has %lld values, expected %lld", what, t->name, (long long)n, (long long)want);
		int bad = 0;
		int norm = gemma_norms && strstr(t->name, "norm.weight");
		for (int64_t j = 0; j < n && j < want && !bad; j++) {
			float a = v[j], b = t->x[j];
			if (norm) {
				a = 1.0f + a;
				b = 1.0f + b;
			}
			if (tol > 0 ? fabsf(a - b) > tol : a != b) {
				CHECK(0, "%s: %s[%lld] = %.9g, expected %.9g (seed %llu)", what, t->name, (long long)j, a, b,
				      seed);
				bad = 1;
			}
		}
		free(v);
	}
}

/* ---- loading that works ---- */

static struct model *load(const char *sub, const struct model_load_opts *o, struct err *e)
{
	char p[512];
	path_in(p, sizeof p, sub, "");
	p[strlen(p) - 1] = 0; /* no trailing slash */
	return model_load(p, o, e);
}

static void test_llama_folder(void)
{
	struct tset s;
	struct err e = {{0}, 0};
	make_tensors(&llama, &s);
	write_hf("llama", &llama, &s, "");
	write_text("llama", "generation_config.json", "{\"eos_token_id\": [2, 7], \"bos_token_id\": 1}");
	struct model *m = load("llama", NULL, &e);
	CHECK(m, "load: %s", e.msg);
	if (m) {
		const struct model_config *c = &m->cfg;
		CHECK(c->arch == ARCH_LLAMA && !strcmp(model_arch_name(c->arch), "llama"), "arch %d", c->arch);
		CHECK(c->vocab == 40 && c->dim == 16 && c->n_layers == 2 && c->n_heads == 4 && c->n_kv_heads == 2 &&
			      c->head_dim == 4 && c->ffn == 24,
		      "sizes %d %d %d %d %d %d %d", c->vocab, c->dim, c->n_layers, c->n_heads, c->n_kv_heads,
		      c->head_dim, c->ffn);
		CHECK(c->norm_eps == 1e-5f && c->rope.theta == 5000.0 && c->rope.kind == ROPE_DEFAULT, "eps/rope");
		CHECK(c->act == ACT_SILU && !c->qkv_bias && !c->qk_norm && !c->sandwich_norm && !c->norm_plus_one &&
			      !c->tied_embeddings,
		      "flags");
		CHECK(c->embed_scale == 1.0f && c->attn_scale == 0.5f, "scales %g %g", c->embed_scale, c->attn_scale);
		CHECK(c->sliding_window == 0 && !c->layer_sliding, "sliding");
		CHECK(c->n_eos == 2 && c->eos_ids[0] == 2 && c->eos_ids[1] == 7 && c->bos_id == 1, "eos %d", c->n_eos);
		CHECK(c->max_pos == 128, "max_pos %d", c->max_pos);
		check_weights(m, &s, 0, 0, "llama");
		int64_t np;
		size_t bytes;
		model_size(m, &np, &bytes);
		int64_t want = 0;
		for (int i = 0; i < s.n; i++)
			want += s.t[i].shape[0] * (s.t[i].nd == 2 ? s.t[i].shape[1] : 1);
		CHECK(np == want && bytes == (size_t)want * 4, "size %lld params %zu bytes, expected %lld",
		      (long long)np, bytes, (long long)want);
	}
	model_free(m);
	tset_free(&s);
}

static void test_qwen2_bias_tied(void)
{
	struct tset s;
	struct err e = {{0}, 0};
	make_tensors(&qwen2, &s);
	/* a tied model whose file also holds lm_head.weight: ignored */
	tset_add(&s, "lm_head.weight", qwen2.vocab, qwen2.dim);
	write_hf("qwen2", &qwen2, &s, "");
	struct model *m = load("qwen2", NULL, &e);
	CHECK(m, "load: %s", e.msg);
	if (m) {
		CHECK(m->cfg.arch == ARCH_QWEN2 && m->cfg.qkv_bias && m->cfg.tied_embeddings, "flags");
		CHECK(m->cfg.n_eos == 1 && m->cfg.eos_ids[0] == 2, "eos from config.json");
		CHECK(!m->lm_head.f32 && !m->lm_head.bf16, "lm_head loaded although tied");
		check_weights(m, &s, 0, 0, "qwen2");
	}
	model_free(m);
	tset_free(&s);
}

static void test_qwen3_bf16(void)
{
	struct tset s;
	struct err e = {{0}, 0};
	make_tensors(&qwen3, &s);
	for (int i = 0; i < s.n; i++) { /* stored as bf16: values must be what bf16 holds */
		s.t[i].dtype = "BF16";
		int64_t n = s.t[i].shape[0] * (s.t[i].nd == 2 ? s.t[i].shape[1] : 1);
		for (int64_t j = 0; j < n; j++)
			s.t[i].x[j] = bf16_to_f32(f32_to_bf16(s.t[i].x[j]));
	}
	write_hf("qwen3", &qwen3, &s, ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}");
	struct model *m = load("qwen3", NULL, &e);
	CHECK(m, "load: %s", e.msg);
	if (m) {
		CHECK(m->cfg.arch == ARCH_QWEN3 && m->cfg.qk_norm && !m->cfg.qkv_bias && m->cfg.head_dim == 8,
		      "flags");
		CHECK(m->cfg.rope.kind == ROPE_LINEAR && m->cfg.rope.factor == 2.0, "rope %d %g", m->cfg.rope.kind,
		      m->cfg.rope.factor);
		check_weights(m, &s, 0, 0, "qwen3");
	}
	model_free(m);
	tset_free(&s);
}

static void check_gemma_cfg(const struct model_config *c, int window)
{
	CHECK(c->arch == ARCH_GEMMA3 && c->norm_plus_one && c->sandwich_norm && c->qk_norm && c->tied_embeddings &&
		      c->act == ACT_GELU_TANH,
	      "flags");
	CHECK(c->embed_scale == 4.0f, "embed_scale %g", c->embed_scale);
	CHECK(c->sliding_window == window && c->layer_sliding, "window %d", c->sliding_window);
	for (int i = 0; c->layer_sliding && i < c->n_layers; i++)
		CHECK(c->layer_sliding[i] == (i != 5), "layer %d sliding %d", i, c->layer_sliding[i]);
	CHECK(c->rope.theta == 1e6 && c->rope_local.theta == 10000.0 && c->rope_local.kind == ROPE_DEFAULT,
	      "rope %g %g", c->rope.theta, c->rope_local.theta);
}

static void test_gemma3_folder(void)
{
	struct tset s;
	struct err e = {{0}, 0};
	make_tensors(&gemma3, &s);
	write_hf("gemma3", &gemma3, &s,
		 ", \"rope_theta\": 1000000.0, \"query_pre_attn_scalar\": 16, \"sliding_window\": 3, "
		 "\"final_logit_softcapping\": 30.0, \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 8.0}");
	struct model *m = load("gemma3", NULL, &e);
	CHECK(m, "load: %s", e.msg);
	if (m) {
		const struct model_config *c = &m->cfg;
		check_gemma_cfg(c, 3);
		CHECK(c->attn_scale == 0.25f && c->final_softcap == 30.0f && c->attn_softcap == 0, "scale %g cap %g",
		      c->attn_scale, c->final_softcap);
		CHECK(c->rope.kind == ROPE_LINEAR && c->rope.factor == 8.0, "global rope scaled");
		check_weights(m, &s, 0, 0, "gemma3");
	}
	model_free(m);
	tset_free(&s);
}

/* Gemma3ForConditionalGeneration: the text model under text_config, its
 * tensors under either naming of transformers, a vision tower ignored. */
static void test_gemma3_multimodal(void)
{
	static const char *const prefixes[2][2] = {{"model.language_model.", "lm_head.weight"},
						   {"language_model.model.", "language_model.lm_head.weight"}};
	for (int v = 0; v < 2; v++) {
		struct spec sp = gemma3;
		struct tset s;
		struct err e = {{0}, 0};
		sp.prefix = prefixes[v][0];
		sp.lm_head = prefixes[v][1];
		make_tensors(&sp, &s);
		tset_add(&s, v ? "vision_tower.vision_model.post_layernorm.weight" : "model.vision_tower.x.weight", 8, 0);
		char cfg[4096], text[3000];
		config_json(&sp, ", \"sliding_window\": 3, \"rope_theta\": 1000000.0", text, sizeof text);
		snprintf(cfg, sizeof cfg,
			 "{\"model_type\": \"gemma3\", \"architectures\": [\"Gemma3ForConditionalGeneration\"], "
			 "\"eos_token_id\": [1, 106], \"text_config\": %s, \"vision_config\": {\"hidden_size\": 8}}",
			 text);
		write_text("mm", "config.json", cfg);
		write_safetensors("mm", &s, 0);
		struct model *m = load("mm", NULL, &e);
		CHECK(m, "naming %d: load: %s", v, e.msg);
		if (m) {
			check_gemma_cfg(&m->cfg, 3);
			CHECK(m->cfg.n_eos == 2 && m->cfg.eos_ids[1] == 106, "eos from the top level");
			CHECK(m->cfg.attn_scale == (float)pow(256, -0.5), "query_pre_attn_scalar default 256");
			/* compare under the text model's own names */
			for (int i = 0; i < s.n; i++) {
				char *t = s.t[i].name;
				if (!strncmp(t, sp.prefix, strlen(sp.prefix))) {
					char tmp[128];
					snprintf(tmp, sizeof tmp, "model.%s", t + strlen(sp.prefix));
					snprintf(t, 128, "%s", tmp);
				}
			}
			tset_drop(&s, v ? "vision_tower.vision_model.post_layernorm.weight" : "model.vision_tower.x.weight");
			check_weights(m, &s, 0, 0, "gemma3 multimodal");
		}
		model_free(m);
		tset_free(&s);
	}
}

/* A .safetensors file named directly (config.json beside it), and a folder
 * of two shards with model.safetensors.index.json. */
static void test_file_and_shards(void)
{
	struct tset s;
	struct err e = {{0}, 0};
	char p[512], cfg[4096];
	make_tensors(&llama, &s);
	write_hf("file", &llama, &s, "");
	path_in(p, sizeof p, "file", "model.safetensors");
	struct model *m = model_load(p, NULL, &e);
	CHECK(m, "file: %s", e.msg);
	if (m) {
		CHECK(!strcmp(m->source, p), "source %s", m->source);
		check_weights(m, &s, 0, 0, "file");
	}
	model_free(m);

	config_json(&llama, "", cfg, sizeof cfg);
	write_text("shards", "config.json", cfg);
	int half = s.n / 2;
	write_safetensors_file("shards", "model-00001-of-00002.safetensors", &s, 0, half, 0);
	write_safetensors_file("shards", "model-00002-of-00002.safetensors", &s, half, s.n, 0);
	char idx[16384];
	size_t at = (size_t)snprintf(idx, sizeof idx, "{\"metadata\": {}, \"weight_map\": {");
	for (int i = 0; i < s.n; i++)
		at += (size_t)snprintf(idx + at, sizeof idx - at, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"",
				       i ? ", " : "", s.t[i].name, i < half ? 1 : 2);
	snprintf(idx + at, sizeof idx - at, "}}");
	write_text("shards", "model.safetensors.index.json", idx);
	m = load("shards", NULL, &e);
	CHECK(m, "shards: %s", e.msg);
	if (m)
		check_weights(m, &s, 0, 0, "shards");
	model_free(m);
	tset_free(&s);
}

/* Keys absent from config.json take transformers' class defaults. */
static void test_config_defaults(void)
{
	struct model_config c;
	struct err e = {{0}, 0};
	char p[512];
	write_text("def", "config.json",
		   "{\"model_type\": \"qwen3\", \"hidden_size\": 64, \"num_attention_heads\": 32, "
		   "\"num_hidden_layers\": 2, \"intermediate_size\": 8, \"vocab_size\": 10}");
	path_in(p, sizeof p, "def", "config.json");
	CHECK(model_config_load(p, &c, &e) == 0, "%s", e.msg);
	CHECK(c.head_dim == 128 && c.n_kv_heads == 32 && c.rope.theta == 10000.0 && c.norm_eps == 1e-6f &&
		      c.max_pos == 32768 && !c.tied_embeddings && c.n_eos == 0 && c.bos_id == -1,
	      "qwen3 defaults: head_dim %d kv %d", c.head_dim, c.n_kv_heads);
	model_config_free(&c);

	write_text("def", "config.json",
		   "{\"model_type\": \"qwen2\", \"hidden_size\": 64, \"num_attention_heads\": 4, "
		   "\"num_key_value_heads\": null, \"num_hidden_layers\": 2, \"intermediate_size\": 8, "
		   "\"vocab_size\": 10, \"rope_scaling\": {\"type\": \"linear\", \"rope_type\": \"default\", "
		   "\"factor\": 3.0}}");
	CHECK(model_config_load(p, &c, &e) == 0, "%s", e.msg);
	CHECK(c.n_kv_heads == 4 && c.head_dim == 16 && c.qkv_bias && c.rope.kind == ROPE_LINEAR && c.rope.factor == 3,
	      "qwen2: null kv heads %d, rope %d (\"type\" wins for Qwen2)", c.n_kv_heads, c.rope.kind);
	model_config_free(&c);

	write_text("def", "config.json",
		   "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"num_attention_heads\": 8, "
		   "\"num_key_value_heads\": null, \"head_dim\": null, \"num_hidden_layers\": 2, "
		   "\"intermediate_size\": 8, \"vocab_size\": 10, "
		   "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
		   "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}");
	CHECK(model_config_load(p, &c, &e) == 0, "%s", e.msg);
	CHECK(c.arch == ARCH_LLAMA && c.head_dim == 8 && c.n_kv_heads == 8 && c.bos_id == 1 && c.n_eos == 1 &&
		      c.eos_ids[0] == 2 && c.max_pos == 2048,
	      "llama defaults");
	CHECK(c.rope.kind == ROPE_LLAMA3 && c.rope.factor == 8 && c.rope.low_freq_factor == 1 &&
		      c.rope.high_freq_factor == 4 && c.rope.original_max_pos == 8192,
	      "llama3 rope");
	model_config_free(&c);

	write_text("def", "config.json",
		   "{\"model_type\": \"mistral\", \"hidden_size\": 64, \"num_attention_heads\": 8, "
		   "\"num_hidden_layers\": 3, \"intermediate_size\": 8, \"vocab_size\": 10}");
	CHECK(model_config_load(p, &c, &e) == 0, "%s", e.msg);
	CHECK(c.arch == ARCH_LLAMA && c.n_kv_heads == 8 && c.sliding_window == 4096 && c.layer_sliding &&
		      c.layer_sliding[2],
	      "mistral: window %d", c.sliding_window);
	model_config_free(&c);

	write_text("def", "config.json",
		   "{\"model_type\": \"gemma3_text\", \"hidden_size\": 64, \"num_attention_heads\": 4, "
		   "\"num_hidden_layers\": 3, \"intermediate_size\": 8, \"vocab_size\": 10, "
		   "\"layer_types\": [\"full_attention\", \"sliding_attention\", \"full_attention\"]}");
	CHECK(model_config_load(p, &c, &e) == 0, "%s", e.msg);
	CHECK(c.head_dim == 256 && c.n_kv_heads == 4 && c.sliding_window == 4096 && c.tied_embeddings &&
		      c.layer_sliding && !c.layer_sliding[0] && c.layer_sliding[1] && !c.layer_sliding[2] &&
		      c.bos_id == 2 && c.n_eos == 1 && c.eos_ids[0] == 1 && c.attn_scale == 1.0f / 16,
	      "gemma3 defaults");
	model_config_free(&c);
}

static void test_nf4_storage(void)
{
	struct tset s;
	struct err e = {{0}, 0};
	struct model_load_opts o = {WFMT_NF4, WFMT_BF16};
	make_tensors(&llama, &s);
	write_hf("nf4", &llama, &s, "");
	struct model *m = load("nf4", &o, &e);
	CHECK(m, "load: %s", e.msg);
	if (m) {
		CHECK(m->layers[0].q.fmt == WFMT_NF4 && m->layers[1].down.fmt == WFMT_NF4 &&
			      m->embed.fmt == WFMT_BF16 && m->lm_head.fmt == WFMT_BF16,
		      "formats");
		/* NF4 keeps each value within half a code step of absmax (< 0.2 here) */
		check_weights(m, &s, 0, 0.05f, "nf4");
		int64_t np;
		size_t bytes;
		model_size(m, &np, &bytes);
		CHECK(bytes < (size_t)np * 3, "%zu bytes for %lld params", bytes, (long long)np);
	}
	model_free(m);
	struct model_load_opts bad = {WFMT_F32, WFMT_NF4};
	m = load("nf4", &bad, &e);
	CHECK(!m && strstr(e.msg, "embeddings"), "nf4 embeddings: %s", e.msg);
	model_free(m);
	tset_free(&s);
}

/* ---- GGUF ---- */

static void gguf_same(const struct spec *sp, const char *file, const char *sub, enum gguf_break brk)
{
	struct tset s;
	struct err e = {{0}, 0};
	char p[512];
	make_tensors(sp, &s);
	write_gguf(file, sp, &s, brk);
	write_hf(sub, sp, &s, sp->fam == F_GEMMA3 ? ", \"rope_theta\": 1000000.0, \"sliding_window\": 3, \"query_pre_attn_scalar\": 8" : "");
	path_in(p, sizeof p, "", file);
	struct model *g = model_load(p, NULL, &e);
	CHECK(g, "%s: %s", file, e.msg);
	struct model *h = load(sub, NULL, &e);
	CHECK(h, "%s: %s", sub, e.msg);
	if (g && h) {
		const struct model_config *a = &g->cfg, *b = &h->cfg;
		CHECK(a->arch == b->arch && a->vocab == b->vocab && a->dim == b->dim && a->n_layers == b->n_layers &&
			      a->n_heads == b->n_heads && a->n_kv_heads == b->n_kv_heads && a->head_dim == b->head_dim &&
			      a->ffn == b->ffn && a->norm_eps == b->norm_eps && a->act == b->act &&
			      a->qkv_bias == b->qkv_bias && a->qk_norm == b->qk_norm &&
			      a->sandwich_norm == b->sandwich_norm && a->norm_plus_one == b->norm_plus_one &&
			      a->tied_embeddings == b->tied_embeddings && a->embed_scale == b->embed_scale &&
			      a->attn_scale == b->attn_scale && a->rope.theta == b->rope.theta &&
			      a->rope_local.theta == b->rope_local.theta && a->sliding_window == b->sliding_window &&
			      a->max_pos == b->max_pos && a->bos_id == b->bos_id && a->n_eos == b->n_eos,
		      "%s: configurations differ", file);
		for (int i = 0; i < a->n_layers && a->layer_sliding && b->layer_sliding; i++)
			CHECK(a->layer_sliding[i] == b->layer_sliding[i], "%s: layer %d sliding", file, i);
		CHECK(!a->layer_sliding == !b->layer_sliding, "%s: sliding layers", file);
		if (brk == GB_F16) {
			/* F16 in the file: compare against the f16-rounded source */
			for (int i = 0; i < s.n; i++) {
				int64_t n = s.t[i].shape[0] * (s.t[i].nd == 2 ? s.t[i].shape[1] : 1);
				for (int64_t j = 0; s.t[i].nd == 2 && j < n; j++)
					s.t[i].x[j] = f16_to_f32(f32_to_f16(s.t[i].x[j]));
			}
		}
		check_weights(g, &s, sp->fam == F_GEMMA3, 0, file);
	}
	model_free(g);
	model_free(h);
	tset_free(&s);
}

static void test_gguf_llama(void) { gguf_same(&llama, "llama.gguf", "llama_g", GB_NONE); }
static void test_gguf_llama_f16(void) { gguf_same(&llama, "llama16.gguf", "llama_g", GB_F16); }
static void test_gguf_qwen2(void) { gguf_same(&qwen2, "qwen2.gguf", "qwen2_g", GB_NONE); }
static void test_gguf_qwen3(void) { gguf_same(&qwen3, "qwen3.gguf", "qwen3_g", GB_NONE); }
static void test_gguf_gemma3(void) { gguf_same(&gemma3, "gemma3.gguf", "gemma3_g", GB_NONE); }

/* ---- broken models ---- */

#define REFUSED(m, e, ...)                                                                            \
	do {                                                                                          \
		CHECK(!(m), "accepted a broken model");                                               \
		const char *want_[] = {__VA_ARGS__};                                                  \
		for (size_t i_ = 0; i_ < sizeof want_ / sizeof want_[0]; i_++)                        \
			CHECK(!(m) && strstr((e).msg, want_[i_]), "message \"%s\" lacks \"%s\"", (e).msg, want_[i_]); \
		model_free(m);                                                                        \
	} while (0)

static void broken_config(const char *cfg, const char *w1, const char *w2)
{
	struct err e = {{0}, 0};
	write_text("bad", "config.json", cfg);
	struct model *m = load("bad", NULL, &e);
	REFUSED(m, e, "bad/config.json", w1, w2);
}

static void test_bad_config(void)
{
	struct err e = {{0}, 0};
	struct model *m = load("nowhere", NULL, &e);
	REFUSED(m, e, "nowhere");
	mkmodel_dir("empty");
	m = load("empty", NULL, &e);
	REFUSED(m, e, "empty/config.json", "cannot open");
	broken_config("{\"model_type\": \"llama\", ", "bad JSON", "");
	broken_config("[1, 2]", "expected a JSON object", "");
	broken_config("{\"model_type\": \"gpt2\"}", "model_type 'gpt2' is not supported", "");
	broken_config("{\"architectures\": [\"BertModel\"]}", "no model_type", "");
	broken_config("{\"model_type\": \"llama\", \"hidden_size\": 64, \"num_attention_heads\": 7}",
		      "num_attention_heads (7) does not divide hidden_size (64)", "");
	broken_config("{\"model_type\": \"llama\", \"hidden_size\": 64, \"num_attention_heads\": 8, "
		      "\"num_key_value_heads\": 3}",
		      "num_key_value_heads (3) does not divide num_attention_heads (8)", "");
	broken_config("{\"model_type\": \"llama\", \"hidden_size\": -4}", "hidden_size", "");
	broken_config("{\"model_type\": \"llama\", \"hidden_size\": \"big\"}", "hidden_size: expected a number", "");
	broken_config("{\"model_type\": \"llama\", \"hidden_size\": 64.5}", "hidden_size: expected an integer", "");
	broken_config("{\"model_type\": \"llama\", \"hidden_act\": \"relu\"}", "hidden_act", "'relu' is not supported");
	broken_config("{\"model_type\": \"qwen2\", \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4}}",
		      "rope_scaling", "'yarn' is not supported");
	broken_config("{\"model_type\": \"llama\", \"rope_scaling\": {\"type\": \"linear\"}}", "rope_scaling.factor",
		      "");
	broken_config("{\"model_type\": \"llama\", \"attention_bias\": true}", "attention_bias", "not supported");
	broken_config("{\"model_type\": \"gemma3\", \"text_config\": {\"num_attention_heads\": 0}}",
		      "text_config.num_attention_heads", "");
	broken_config("{\"model_type\": \"gemma3_text\", \"num_hidden_layers\": 2, \"layer_types\": [\"full_attention\"]}",
		      "layer_types", "");
	broken_config("{\"model_type\": \"llama\", \"eos_token_id\": \"x\"}", "eos_token_id", "");
	write_text("bad", "config.json", "{\"model_type\": \"llama\"}");
	write_text("bad", "generation_config.json", "{\"eos_token_id\": [1, ");
	m = load("bad", NULL, &e);
	REFUSED(m, e, "bad/generation_config.json", "bad JSON");
	char p[512];
	path_in(p, sizeof p, "bad", "generation_config.json");
	unlink(p);
}

static void broken_tensors(const char *sub, struct tset *s, const struct spec *sp, const char *w1, const char *w2)
{
	struct err e = {{0}, 0};
	write_hf(sub, sp, s, "");
	struct model *m = load(sub, NULL, &e);
	REFUSED(m, e, w1, w2);
}

static void test_bad_tensors(void)
{
	struct tset s;
	make_tensors(&llama, &s);
	tset_drop(&s, "model.layers.1.mlp.up_proj.weight");
	broken_tensors("bt", &s, &llama, "tensor 'model.layers.1.mlp.up_proj.weight' is missing", "bt");
	tset_free(&s);

	make_tensors(&llama, &s);
	tset_drop(&s, "lm_head.weight");
	broken_tensors("bt", &s, &llama, "tensor 'lm_head.weight' is missing", "");
	tset_free(&s);

	make_tensors(&llama, &s);
	struct tens *t = tset_find(&s, "model.layers.1.self_attn.q_proj.weight");
	t->shape[1] = 8; /* [16, 8]: half the values */
	broken_tensors("bt", &s, &llama,
		       "bt/model.safetensors: tensor 'model.layers.1.self_attn.q_proj.weight': shape [16, 8], "
		       "expected [16, 16]",
		       "");
	tset_free(&s);

	make_tensors(&llama, &s);
	tset_find(&s, "model.norm.weight")->nd = 2; /* [16, 0]... */
	tset_find(&s, "model.norm.weight")->shape[1] = 1;
	broken_tensors("bt", &s, &llama, "tensor 'model.norm.weight': shape [16, 1], expected [16]", "");
	tset_free(&s);

	make_tensors(&llama, &s);
	tset_find(&s, "model.layers.0.mlp.down_proj.weight")->dtype = "I64";
	broken_tensors("bt", &s, &llama, "model.layers.0.mlp.down_proj.weight", "I64");
	tset_free(&s);

	/* a truncated file: refused by the reader, whatever the cut */
	make_tensors(&llama, &s);
	write_hf("bt", &llama, &s, "");
	size_t cuts[] = {1, 100, 4000};
	for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
		struct err e = {{0}, 0};
		write_safetensors("bt", &s, cuts[i]);
		struct model *m = load("bt", NULL, &e);
		REFUSED(m, e, "model.safetensors");
	}
	tset_free(&s);

	/* no safetensors at all */
	{
		struct err e = {{0}, 0};
		char p[512];
		path_in(p, sizeof p, "bt", "model.safetensors");
		unlink(p);
		struct model *m = load("bt", NULL, &e);
		REFUSED(m, e, "bt");
	}
}

static void gguf_refused(const struct spec *sp, enum gguf_break brk, const char *w1, const char *w2)
{
	struct tset s;
	struct err e = {{0}, 0};
	char p[512];
	make_tensors(sp, &s);
	write_gguf("bad.gguf", sp, &s, brk);
	path_in(p, sizeof p, "", "bad.gguf");
	struct model *m = model_load(p, NULL, &e);
	REFUSED(m, e, "bad.gguf", w1, w2);
	tset_free(&s);
}

static void test_bad_gguf(void)
{
	gguf_refused(&llama, GB_NO_BLOCK_COUNT, "key 'llama.block_count' is missing", "");
	gguf_refused(&qwen2, GB_NO_TENSOR, "tensor blk.1.ffn_up.weight is missing", "");
	gguf_refused(&qwen3, GB_I8_TENSOR, "blk.0.attn_v.weight", "type I8 is not supported");
	/* a different architecture, and a truncated file */
	struct tset s;
	struct err e = {{0}, 0};
	char p[512];
	make_tensors(&llama, &s);
	write_gguf("bad.gguf", &llama, &s, GB_NONE);
	path_in(p, sizeof p, "", "bad.gguf");
	FILE *f = fopen(p, "r+b");
	if (f) { /* "llama" → "llamb" in general.architecture */
		fseek(f, 24 + 8 + strlen("general.architecture") + 4 + 8 + 4, SEEK_SET);
		fputc('b', f);
		fclose(f);
	}
	struct model *m = model_load(p, NULL, &e);
	REFUSED(m, e, "bad.gguf", "general.architecture 'llamb' is not supported");
	struct model_config c;
	CHECK(model_config_load(p, &c, &e) < 0 && strstr(e.msg, "llamb"), "config: %s", e.msg);
	write_gguf("bad.gguf", &llama, &s, GB_NONE);
	if (truncate(p, 1000) == 0) {
		m = model_load(p, NULL, &e);
		REFUSED(m, e, "bad.gguf");
	}
	tset_free(&s);
}

/* ---- Llama 3 RoPE factors (rope_freqs.weight) ---- */

/* A GGUF of sp with a rope_freqs.weight of n values f[0..n) first, as the
 * converter puts it. */
static void write_gguf_freqs(const char *file, const struct spec *sp, const float *f, int n)
{
	struct tset s;
	make_tensors(sp, &s);
	struct tens *t = tset_add(&s, "rope_freqs.weight", n, 0);
	memcpy(t->x, f, (size_t)n * sizeof *f);
	write_gguf(file, sp, &s, GB_NONE);
	tset_free(&s);
}

static void test_gguf_rope_freqs(void)
{
	struct err e = {{0}, 0};
	char p[512];
	const float f[2] = {1.0f, 8.0f}; /* head_dim 4: two frequencies */
	write_gguf_freqs("freqs.gguf", &llama, f, 2);
	path_in(p, sizeof p, "", "freqs.gguf");
	struct model_config c;
	CHECK(model_config_load(p, &c, &e) == 0, "config: %s", e.msg);
	if (!e.msg[0]) {
		CHECK(c.rope.freq_factors && c.rope.freq_factors[0] == 1.0f && c.rope.freq_factors[1] == 8.0f &&
			      c.rope_local.freq_factors == c.rope.freq_factors && c.rope.kind == ROPE_DEFAULT,
		      "factors not read");
		float inv[2], plain[2];
		struct rope_config r = c.rope;
		rope_inv_freq(&r, 4, inv);
		r.freq_factors = NULL;
		rope_inv_freq(&r, 4, plain);
		CHECK(inv[0] == plain[0] && inv[1] == plain[1] / 8.0f, "inv_freq %g %g, plain %g %g", inv[0], inv[1],
		      plain[0], plain[1]);
		model_config_free(&c);
		CHECK(!c.rope.freq_factors && !c.rope_local.freq_factors, "freed");
	}
	struct model *m = model_load(p, NULL, &e);
	CHECK(m && m->cfg.rope.freq_factors && m->cfg.rope.freq_factors[1] == 8.0f, "load: %s", e.msg);
	if (m) {
		int32_t ids[3] = {1, 5, 9};
		float *logits = malloc((size_t)m->cfg.vocab * sizeof *logits);
		CHECK(model_forward(m, NULL, NULL, ids, 3, logits, 0, &e) == 0, "forward: %s", e.msg);
		free(logits);
	}
	model_free(m);

	/* bad factors: refused, naming the tensor */
	const float zero[2] = {1.0f, 0.0f}, nan_[2] = {NAN, 1.0f}, three[3] = {1, 2, 3};
	write_gguf_freqs("bad.gguf", &llama, zero, 2);
	path_in(p, sizeof p, "", "bad.gguf");
	m = model_load(p, NULL, &e);
	REFUSED(m, e, "bad.gguf", "rope_freqs.weight: element 1 (0) is not a positive number");
	write_gguf_freqs("bad.gguf", &llama, nan_, 2);
	m = model_load(p, NULL, &e);
	REFUSED(m, e, "bad.gguf", "rope_freqs.weight: element 0");
	write_gguf_freqs("bad.gguf", &llama, three, 3);
	m = model_load(p, NULL, &e);
	REFUSED(m, e, "bad.gguf", "rope_freqs.weight: expected one dimension of 2");
	write_gguf_freqs("bad.gguf", &qwen2, f, 2);
	m = model_load(p, NULL, &e);
	REFUSED(m, e, "bad.gguf", "rope_freqs.weight", "llama only, not qwen2");
}

/* ---- dropping a read tensor's pages ---- */

static uint8_t *read_all(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	uint8_t *b = NULL;
	if (f && fseek(f, 0, SEEK_END) == 0) {
		long len = ftell(f);
		b = len > 0 ? malloc((size_t)len) : NULL;
		rewind(f);
		if (b && fread(b, 1, (size_t)len, f) != (size_t)len) {
			free(b);
			b = NULL;
		}
		*n = b ? (size_t)len : 0;
	}
	if (f)
		fclose(f);
	return b;
}

/* Each tensor's bytes are the same after its release, from a mapped file
 * (read again from the file) and from a memory image (left alone). */
static void test_release(void)
{
	struct tset s;
	struct err e = {{0}, 0};
	char p[512];
	make_tensors(&llama, &s);
	write_gguf("rel.gguf", &llama, &s, GB_NONE);
	write_hf("rel", &llama, &s, "");
	tset_free(&s);

	path_in(p, sizeof p, "", "rel.gguf");
	size_t n;
	uint8_t *img = read_all(p, &n);
	struct gguf *g[2] = {gguf_open(p, &e), img ? gguf_open_mem(img, n, "rel", &e) : NULL};
	CHECK(g[0] && g[1], "open: %s", e.msg);
	for (int k = 0; k < 2 && g[0] && g[1]; k++)
		for (int64_t i = 0; i < gguf_n_tensors(g[k]); i++) {
			const struct gguf_tensor *t = gguf_tensor(g[k], i);
			uint8_t *copy = malloc(t->nbytes);
			memcpy(copy, t->data, t->nbytes);
			gguf_release_tensor(g[k], t);
			CHECK(!memcmp(copy, t->data, t->nbytes), "%s: gguf %s changed", k ? "memory" : "file", t->name);
			free(copy);
		}
	gguf_close(g[0]);
	gguf_close(g[1]);
	free(img);

	path_in(p, sizeof p, "rel", "model.safetensors");
	img = read_all(p, &n);
	struct safetensors *st[2] = {st_open(p, &e), img ? st_open_mem(img, n, "rel", &e) : NULL};
	CHECK(st[0] && st[1], "open: %s", e.msg);
	for (int k = 0; k < 2 && st[0] && st[1]; k++)
		for (int64_t i = 0; i < st_n_tensors(st[k]); i++) {
			const struct st_tensor *t = st_tensor(st[k], i);
			uint8_t *copy = malloc(t->nbytes);
			memcpy(copy, t->data, t->nbytes);
			st_release(st[k], t);
			CHECK(!memcmp(copy, t->data, t->nbytes), "%s: safetensors %s changed", k ? "memory" : "file",
			      t->name);
			free(copy);
		}
	if (st[0] && st[1]) /* a tensor of another set: nothing happens */
		st_release(st[0], st_tensor(st[1], 0));
	st_close(st[0]);
	st_close(st[1]);
	free(img);
}

static void rm_rf(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		char p[1024];
		snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
		struct stat st;
		if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
			rm_rf(p);
		else
			unlink(p);
	}
	closedir(d);
	rmdir(dir);
}

int main(void)
{
	snprintf(tmpdir, sizeof tmpdir, "%s/test_model.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	RUN(test_llama_folder);
	RUN(test_qwen2_bias_tied);
	RUN(test_qwen3_bf16);
	RUN(test_gemma3_folder);
	RUN(test_gemma3_multimodal);
	RUN(test_file_and_shards);
	RUN(test_config_defaults);
	RUN(test_nf4_storage);
	RUN(test_gguf_llama);
	RUN(test_gguf_llama_f16);
	RUN(test_gguf_qwen2);
	RUN(test_gguf_qwen3);
	RUN(test_gguf_gemma3);
	RUN(test_bad_config);
	RUN(test_bad_tensors);
	RUN(test_bad_gguf);
	RUN(test_gguf_rope_freqs);
	RUN(test_release);
	rm_rf(tmpdir);
	return check_done();
}
