/* model: configuration and weights of a Hugging Face model folder
 * (config.json, generation_config.json, safetensors) into struct model, and
 * what both loaders share. The GGUF side is lib/model_gguf.c.
 *
 * config.json is read the way transformers 4.57 builds its config classes
 * (configuration_llama/mistral/qwen2/qwen3/gemma3.py): a key that is absent
 * or null takes the class's default, which differs between families (Qwen2
 * and Qwen3 default to 32 key/value heads, Qwen3 and Gemma 3 to a fixed
 * head_dim, Gemma 3 ties its embeddings, Mistral slides a 4096 window). Keys
 * the forward pass cannot honour (bias on o_proj, bidirectional attention,
 * RoPE types other than default/linear/llama3) are refused, not ignored.
 *
 * Weights are read one tensor at a time into an fp32 scratch buffer and stored
 * in the requested format before the next one is read, and the file's pages
 * of each tensor are dropped once it is read (st_release), so the peak memory
 * is the final model plus its largest tensor in fp32 and in the file.
 */
#include "jsonl.h"
#include "model_impl.h"
#include "safetensors.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *model_arch_name(enum model_arch a)
{
	switch (a) {
	case ARCH_LLAMA: return "llama";
	case ARCH_QWEN2: return "qwen2";
	case ARCH_QWEN3: return "qwen3";
	case ARCH_GEMMA3: return "gemma3";
	}
	return "?";
}

/* ---- shared by both loaders ---- */

/* Bounds that keep every size product of the forward pass inside int64 and
 * every count inside int, far above any model of these families. */
#define MAX_DIM (1 << 20)
#define MAX_VOCAB (1 << 24)
#define MAX_LAYERS 4096
#define MAX_HEADS 4096

int model_config_check(const struct model_config *c, const char *name, const struct cfg_keys *k, struct err *err)
{
	struct {
		int v, max;
		const char *key;
	} pos[] = {
		{c->vocab, MAX_VOCAB, k->vocab},       {c->dim, MAX_DIM, k->dim},
		{c->n_layers, MAX_LAYERS, k->n_layers}, {c->n_heads, MAX_HEADS, k->n_heads},
		{c->n_kv_heads, MAX_HEADS, k->n_kv_heads}, {c->head_dim, 1 << 16, k->head_dim},
		{c->ffn, MAX_DIM, k->ffn},
	};
	for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
		if (pos[i].v <= 0 || pos[i].v > pos[i].max)
			return err_set(err, "%s: %s (%d) is not in 1..%d", name, pos[i].key, pos[i].v, pos[i].max);
	if (c->n_heads % c->n_kv_heads)
		return err_set(err, "%s: %s (%d) does not divide %s (%d)", name, k->n_kv_heads, c->n_kv_heads,
			       k->n_heads, c->n_heads);
	if (c->head_dim % 2)
		return err_set(err, "%s: %s (%d) is odd; RoPE needs pairs", name, k->head_dim, c->head_dim);
	if ((int64_t)c->n_heads * c->head_dim > MAX_DIM)
		return err_set(err, "%s: %s (%d) × %s (%d) is too large", name, k->n_heads, c->n_heads, k->head_dim,
			       c->head_dim);
	if (!(c->norm_eps > 0) || !isfinite(c->norm_eps))
		return err_set(err, "%s: %s (%g) is not a positive number", name, k->eps, c->norm_eps);
	const struct rope_config *r[2] = {&c->rope, &c->rope_local};
	for (int i = 0; i < 2; i++) {
		if (!(r[i]->theta > 0) || !isfinite(r[i]->theta))
			return err_set(err, "%s: %s (%g) is not a positive number", name, k->rope_theta, r[i]->theta);
		if (r[i]->kind != ROPE_DEFAULT && (!(r[i]->factor > 0) || !isfinite(r[i]->factor)))
			return err_set(err, "%s: RoPE scaling factor (%g) is not a positive number", name,
				       r[i]->factor);
	}
	if (c->sliding_window < 0)
		return err_set(err, "%s: %s (%d) is negative", name, k->window, c->sliding_window);
	return 0;
}

int model_opts(const struct model_load_opts *o, struct model_load_opts *out, struct err *err)
{
	struct model_load_opts d = {WFMT_F32, WFMT_F32};
	*out = o ? *o : d;
	if ((unsigned)out->linear > WFMT_INT8)
		return err_set(err, "unknown weight format %d", (int)out->linear);
	if (out->embed != WFMT_F32 && out->embed != WFMT_BF16)
		return err_set(err, "embeddings are stored as f32 or bf16, not %s",
			       (unsigned)out->embed <= WFMT_INT8 ? wfmt_name(out->embed) : "?");
	return 0;
}

struct model *model_new(struct model_config *cfg, const char *source, struct err *err)
{
	struct model *m = calloc(1, sizeof *m);
	if (m)
		m->layers = calloc((size_t)cfg->n_layers, sizeof *m->layers);
	if (m)
		m->source = strdup(source);
	if (!m || !m->layers || !m->source) {
		if (m) {
			free(m->layers);
			free(m->source);
		}
		free(m);
		err_sys(err, "out of memory");
		return NULL;
	}
	m->cfg = *cfg;
	cfg->layer_sliding = NULL;
	cfg->rope.freq_factors = cfg->rope_local.freq_factors = NULL;
	return m;
}

float *scratch_get(struct scratch *s, size_t n, struct err *err)
{
	if (n <= s->n)
		return s->p;
	float *p = realloc(s->p, n * sizeof *p);
	if (!p) {
		err_sys(err, "out of memory (%zu floats)", n);
		return NULL;
	}
	s->p = p;
	s->n = n;
	return p;
}

void scratch_release(struct scratch *s)
{
	free(s->p);
	s->p = NULL;
	s->n = 0;
}

void model_config_free(struct model_config *cfg)
{
	if (!cfg)
		return;
	free(cfg->layer_sliding);
	cfg->layer_sliding = NULL;
	free(cfg->rope.freq_factors); /* rope_local's, if any, is the same array */
	cfg->rope.freq_factors = cfg->rope_local.freq_factors = NULL;
}

void model_free(struct model *m)
{
	if (!m)
		return;
	weight_free(&m->embed);
	weight_free(&m->lm_head);
	free(m->final_norm);
	for (int i = 0; m->layers && i < m->cfg.n_layers; i++) {
		struct layer_weights *l = &m->layers[i];
		struct weight *w[] = {&l->q, &l->k, &l->v, &l->o, &l->gate, &l->up, &l->down};
		for (size_t j = 0; j < sizeof w / sizeof w[0]; j++)
			weight_free(w[j]);
		float *v[] = {l->attn_norm, l->q_bias, l->k_bias, l->v_bias, l->q_norm, l->k_norm, l->post_attn_norm,
			      l->ffn_norm, l->post_ffn_norm};
		for (size_t j = 0; j < sizeof v / sizeof v[0]; j++)
			free(v[j]);
	}
	free(m->layers);
	free(m->source);
	model_config_free(&m->cfg);
	free(m);
}

static void add_vec(const float *p, int64_t n, int64_t *params, size_t *bytes)
{
	if (!p)
		return;
	*params += n;
	*bytes += (size_t)n * sizeof(float);
}

static void add_weight(const struct weight *w, int64_t *params, size_t *bytes)
{
	*params += w->rows * w->cols;
	*bytes += weight_bytes(w);
}

void model_size(const struct model *m, int64_t *n_params, size_t *bytes)
{
	const struct model_config *c = &m->cfg;
	int64_t p = 0;
	size_t b = 0;
	add_weight(&m->embed, &p, &b);
	if (!c->tied_embeddings)
		add_weight(&m->lm_head, &p, &b);
	add_vec(m->final_norm, c->dim, &p, &b);
	int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
	for (int i = 0; i < c->n_layers; i++) {
		const struct layer_weights *l = &m->layers[i];
		const struct weight *w[] = {&l->q, &l->k, &l->v, &l->o, &l->gate, &l->up, &l->down};
		for (size_t j = 0; j < sizeof w / sizeof w[0]; j++)
			add_weight(w[j], &p, &b);
		add_vec(l->attn_norm, c->dim, &p, &b);
		add_vec(l->q_bias, q, &p, &b);
		add_vec(l->k_bias, kv, &p, &b);
		add_vec(l->v_bias, kv, &p, &b);
		add_vec(l->q_norm, c->head_dim, &p, &b);
		add_vec(l->k_norm, c->head_dim, &p, &b);
		add_vec(l->post_attn_norm, c->dim, &p, &b);
		add_vec(l->ffn_norm, c->dim, &p, &b);
		add_vec(l->post_ffn_norm, c->dim, &p, &b);
	}
	if (n_params)
		*n_params = p;
	if (bytes)
		*bytes = b;
}

/* ---- where the files are ---- */

static int is_gguf_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return 0;
	char magic[4];
	int yes = fread(magic, 1, 4, f) == 4 && memcmp(magic, "GGUF", 4) == 0;
	fclose(f);
	return yes;
}

/* "DIR/NAME" in buf, DIR being path when it is a folder, else the folder of
 * the file path (NAME alone for a file in the current folder). */
static int path_beside(const char *path, int is_dir, const char *name, char *buf, size_t cap, struct err *err)
{
	size_t n = strlen(path);
	if (!is_dir) {
		const char *slash = strrchr(path, '/');
		n = !slash ? 0 : slash == path ? 1 : (size_t)(slash - path);
	}
	while (n > 1 && path[n - 1] == '/')
		n--;
	const char *sep = n == 0 || (n == 1 && path[0] == '/') ? "" : "/";
	if ((size_t)snprintf(buf, cap, "%.*s%s%s", (int)n, path, sep, name) >= cap)
		return err_set(err, "%s: path too long", path);
	return 0;
}

/* ---- config.json ---- */

/* transformers' defaults for a key that is absent (4.57 configuration_*.py). */
struct family {
	const char *model_type;
	enum model_arch arch;
	int vocab, dim, ffn, n_layers, n_heads;
	int n_kv_heads;   /* -1: as many as n_heads */
	int head_dim;     /* 0: dim / n_heads */
	int max_pos;
	double rope_theta;
	int tie;
	int bos, eos;     /* -1: none */
	const char *act_key, *act;
	int window;       /* sliding_window's default */
};

static const struct family families[] = {
	{"llama", ARCH_LLAMA, 32000, 4096, 11008, 32, 32, -1, 0, 2048, 10000.0, 0, 1, 2, "hidden_act", "silu", 0},
	{"mistral", ARCH_LLAMA, 32000, 4096, 14336, 32, 32, 8, 0, 4096 * 32, 10000.0, 0, 1, 2, "hidden_act", "silu",
	 4096},
	{"qwen2", ARCH_QWEN2, 151936, 4096, 22016, 32, 32, 32, 0, 32768, 10000.0, 0, -1, -1, "hidden_act", "silu",
	 4096},
	{"qwen3", ARCH_QWEN3, 151936, 4096, 22016, 32, 32, 32, 128, 32768, 10000.0, 0, -1, -1, "hidden_act", "silu",
	 4096},
	{"gemma3_text", ARCH_GEMMA3, 262208, 2304, 9216, 26, 8, 4, 256, 131072, 1000000.0, 1, 2, 1,
	 "hidden_activation", "gelu_pytorch_tanh", 4096},
};

/* model_type from the class name in "architectures", for configs without it. */
static const struct {
	const char *cls, *model_type;
} arch_classes[] = {
	{"LlamaForCausalLM", "llama"},     {"MistralForCausalLM", "mistral"},
	{"Qwen2ForCausalLM", "qwen2"},     {"Qwen3ForCausalLM", "qwen3"},
	{"Gemma3ForCausalLM", "gemma3_text"}, {"Gemma3ForConditionalGeneration", "gemma3"},
};

/* A JSON object of the text model's keys, and how messages name them. */
struct jcfg {
	jv obj;             /* borrowed */
	const char *file;   /* "dir/config.json" */
	const char *prefix; /* "" or "text_config." */
};

static jv jfield(jv obj, const char *key)
{
	if (jv_get_kind(obj) != JV_KIND_OBJECT)
		return jv_invalid();
	return jv_object_get(jv_copy(obj), jv_string(key));
}

/* A number: *have 0 when absent or null. */
static int jnum(const struct jcfg *c, const char *key, int *have, double *out, struct err *err)
{
	jv v = jfield(c->obj, key);
	jv_kind k = jv_get_kind(v);
	*have = k != JV_KIND_INVALID && k != JV_KIND_NULL;
	if (k == JV_KIND_NUMBER)
		*out = jv_number_value(v);
	jv_free(v);
	if (*have && k != JV_KIND_NUMBER)
		return err_set(err, "%s: %s%s: expected a number", c->file, c->prefix, key);
	return 0;
}

static int jdouble(const struct jcfg *c, const char *key, double dflt, double *out, struct err *err)
{
	int have;
	if (jnum(c, key, &have, out, err) < 0)
		return -1;
	if (!have)
		*out = dflt;
	return 0;
}

static int jint(const struct jcfg *c, const char *key, int dflt, int *out, struct err *err)
{
	int have;
	double d;
	if (jnum(c, key, &have, &d, err) < 0)
		return -1;
	if (!have) {
		*out = dflt;
		return 0;
	}
	if (d != floor(d) || d < INT_MIN || d > INT_MAX)
		return err_set(err, "%s: %s%s: expected an integer, got %g", c->file, c->prefix, key, d);
	*out = (int)d;
	return 0;
}

static int jbool(const struct jcfg *c, const char *key, int dflt, int *out, struct err *err)
{
	jv v = jfield(c->obj, key);
	jv_kind k = jv_get_kind(v);
	jv_free(v);
	if (k == JV_KIND_TRUE || k == JV_KIND_FALSE)
		*out = k == JV_KIND_TRUE;
	else if (k == JV_KIND_INVALID || k == JV_KIND_NULL)
		*out = dflt;
	else
		return err_set(err, "%s: %s%s: expected true or false", c->file, c->prefix, key);
	return 0;
}

/* A string into buf ("" when absent or null). */
static int jstring(const struct jcfg *c, const char *key, char *buf, size_t cap, struct err *err)
{
	jv v = jfield(c->obj, key);
	jv_kind k = jv_get_kind(v);
	buf[0] = 0;
	if (k == JV_KIND_STRING)
		snprintf(buf, cap, "%s", jv_string_value(v));
	jv_free(v);
	if (k != JV_KIND_STRING && k != JV_KIND_INVALID && k != JV_KIND_NULL)
		return err_set(err, "%s: %s%s: expected a string", c->file, c->prefix, key);
	return 0;
}

static int parse_act(const struct jcfg *c, const struct family *f, enum model_act *act, struct err *err)
{
	char name[64];
	if (jstring(c, f->act_key, name, sizeof name, err) < 0)
		return -1;
	if (!name[0])
		snprintf(name, sizeof name, "%s", f->act);
	/* transformers' ACT2FN: "silu" and "swish" are one function; "gelu_new"
	 * and "gelu_pytorch_tanh" both compute the tanh approximation. */
	if (!strcmp(name, "silu") || !strcmp(name, "swish"))
		*act = ACT_SILU;
	else if (!strcmp(name, "gelu_pytorch_tanh") || !strcmp(name, "gelu_new"))
		*act = ACT_GELU_TANH;
	else
		return err_set(err, "%s: %s%s: activation '%s' is not supported (silu, gelu_pytorch_tanh)", c->file,
			       c->prefix, f->act_key, name);
	return 0;
}

/* rope_scaling: null, or {"rope_type" (or the older "type"): "default" |
 * "linear" | "llama3", "factor", ...}. */
static int parse_rope_scaling(const struct jcfg *c, int rope_type_first, struct rope_config *r, struct err *err)
{
	jv rs = jfield(c->obj, "rope_scaling");
	jv_kind k = jv_get_kind(rs);
	if (k == JV_KIND_INVALID || k == JV_KIND_NULL) {
		jv_free(rs);
		return 0;
	}
	char pfx[64];
	snprintf(pfx, sizeof pfx, "%srope_scaling.", c->prefix);
	struct jcfg s = {rs, c->file, pfx};
	char type[64] = "";
	int rc = -1;
	if (k != JV_KIND_OBJECT) {
		err_set(err, "%s: %srope_scaling: expected an object or null", c->file, c->prefix);
		goto out;
	}
	/* Both spellings: the Llama, Qwen2 and Qwen3 configs copy "type" over
	 * "rope_type"; Gemma 3's rotary embedding prefers "rope_type". */
	const char *first = rope_type_first ? "rope_type" : "type", *second = rope_type_first ? "type" : "rope_type";
	if (jstring(&s, first, type, sizeof type, err) < 0)
		goto out;
	if (!type[0] && jstring(&s, second, type, sizeof type, err) < 0)
		goto out;
	if (!type[0] || !strcmp(type, "default")) {
		r->kind = ROPE_DEFAULT;
	} else if (!strcmp(type, "linear")) {
		r->kind = ROPE_LINEAR;
		if (jdouble(&s, "factor", 0, &r->factor, err) < 0)
			goto out;
	} else if (!strcmp(type, "llama3")) {
		r->kind = ROPE_LLAMA3;
		if (jdouble(&s, "factor", 0, &r->factor, err) < 0 ||
		    jdouble(&s, "low_freq_factor", 0, &r->low_freq_factor, err) < 0 ||
		    jdouble(&s, "high_freq_factor", 0, &r->high_freq_factor, err) < 0 ||
		    jint(&s, "original_max_position_embeddings", 0, &r->original_max_pos, err) < 0)
			goto out;
		if (!(r->low_freq_factor > 0) || !(r->high_freq_factor > r->low_freq_factor) ||
		    r->original_max_pos <= 0) {
			err_set(err, "%s: %srope_scaling: llama3 needs low_freq_factor > 0, high_freq_factor > "
				     "low_freq_factor and original_max_position_embeddings > 0",
				c->file, c->prefix);
			goto out;
		}
	} else {
		err_set(err, "%s: %srope_scaling: rope_type '%s' is not supported (default, linear, llama3)", c->file,
			c->prefix, type);
		goto out;
	}
	if (r->kind != ROPE_DEFAULT && !(r->factor > 0)) {
		err_set(err, "%s: %srope_scaling.factor: expected a positive number", c->file, c->prefix);
		goto out;
	}
	rc = 0;
out:
	jv_free(rs);
	return rc;
}

/* A key that must not be true: the forward pass has no such part. */
static int refuse_true(const struct jcfg *c, const char *key, const char *why, struct err *err)
{
	int v;
	if (jbool(c, key, 0, &v, err) < 0)
		return -1;
	if (v)
		return err_set(err, "%s: %s%s: true is not supported (%s)", c->file, c->prefix, key, why);
	return 0;
}

/* Per-layer kinds from "layer_types" (["sliding_attention", "full_attention", ...]);
 * *have 0 when absent. */
static int parse_layer_types(const struct jcfg *c, struct model_config *cfg, int *have, struct err *err)
{
	jv lt = jfield(c->obj, "layer_types");
	jv_kind k = jv_get_kind(lt);
	*have = 0;
	int rc = 0;
	if (k == JV_KIND_INVALID || k == JV_KIND_NULL)
		goto out;
	if (k != JV_KIND_ARRAY || jv_array_length(jv_copy(lt)) != cfg->n_layers) {
		rc = err_set(err, "%s: %slayer_types: expected an array of %d strings", c->file, c->prefix,
			     cfg->n_layers);
		goto out;
	}
	*have = 1;
	for (int i = 0; i < cfg->n_layers && !rc; i++) {
		jv t = jv_array_get(jv_copy(lt), i);
		if (jv_get_kind(t) == JV_KIND_STRING && !strcmp(jv_string_value(t), "sliding_attention"))
			cfg->layer_sliding[i] = 1;
		else if (jv_get_kind(t) == JV_KIND_STRING && !strcmp(jv_string_value(t), "full_attention"))
			cfg->layer_sliding[i] = 0;
		else
			rc = err_set(err, "%s: %slayer_types[%d]: expected \"sliding_attention\" or \"full_attention\"",
				     c->file, c->prefix, i);
		jv_free(t);
	}
out:
	jv_free(lt);
	return rc;
}

/* Which layers slide, and how far: per family, as the modeling code decides. */
static int parse_sliding(const struct jcfg *c, const struct family *f, struct model_config *cfg, struct err *err)
{
	int window, have_types = 0, use = 1;
	if (jint(c, "sliding_window", f->window, &window, err) < 0)
		return -1;
	if (f->arch == ARCH_LLAMA && strcmp(f->model_type, "mistral"))
		window = 0; /* LlamaConfig has no sliding window */
	if ((f->arch == ARCH_QWEN2 || f->arch == ARCH_QWEN3) && jbool(c, "use_sliding_window", 0, &use, err) < 0)
		return -1;
	if (!use || window <= 0) {
		cfg->sliding_window = 0;
		return 0;
	}
	cfg->sliding_window = window;
	cfg->layer_sliding = calloc((size_t)cfg->n_layers, 1);
	if (!cfg->layer_sliding)
		return err_sys(err, "out of memory");
	if (f->arch == ARCH_LLAMA) { /* Mistral: every layer */
		memset(cfg->layer_sliding, 1, (size_t)cfg->n_layers);
		return 0;
	}
	if (parse_layer_types(c, cfg, &have_types, err) < 0)
		return -1;
	if (have_types)
		return 0;
	if (f->arch == ARCH_GEMMA3) {
		int pattern;
		if (jint(c, "sliding_window_pattern", 6, &pattern, err) < 0)
			return -1;
		if (pattern <= 0)
			return err_set(err, "%s: %ssliding_window_pattern (%d) is not positive", c->file, c->prefix,
				       pattern);
		for (int i = 0; i < cfg->n_layers; i++)
			cfg->layer_sliding[i] = (i + 1) % pattern != 0;
	} else {
		int from;
		if (jint(c, "max_window_layers", 28, &from, err) < 0)
			return -1;
		for (int i = 0; i < cfg->n_layers; i++)
			cfg->layer_sliding[i] = i >= from;
	}
	return 0;
}

/* eos_token_id / bos_token_id of one object: *found 1 when the key is there. */
static int parse_special(const struct jcfg *c, struct model_config *cfg, int *found_eos, int *found_bos,
			 struct err *err)
{
	jv e = jfield(c->obj, "eos_token_id");
	jv_kind k = jv_get_kind(e);
	int rc = 0;
	*found_eos = k == JV_KIND_NUMBER || k == JV_KIND_ARRAY;
	if (k == JV_KIND_NUMBER || k == JV_KIND_ARRAY) {
		int n = k == JV_KIND_ARRAY ? jv_array_length(jv_copy(e)) : 1;
		cfg->n_eos = 0;
		for (int i = 0; i < n && !rc; i++) {
			jv x = k == JV_KIND_ARRAY ? jv_array_get(jv_copy(e), i) : jv_copy(e);
			double d = jv_get_kind(x) == JV_KIND_NUMBER ? jv_number_value(x) : -1;
			jv_free(x);
			if (d < 0 || d > INT_MAX || d != floor(d))
				rc = err_set(err, "%s: %seos_token_id: expected a token id or a list of them", c->file,
					     c->prefix);
			else if (cfg->n_eos == MODEL_MAX_EOS)
				rc = err_set(err, "%s: %seos_token_id: more than %d ids", c->file, c->prefix,
					     MODEL_MAX_EOS);
			else
				cfg->eos_ids[cfg->n_eos++] = (int)d;
		}
	} else if (k != JV_KIND_INVALID && k != JV_KIND_NULL) {
		rc = err_set(err, "%s: %seos_token_id: expected a token id or a list of them", c->file, c->prefix);
	}
	jv_free(e);
	if (rc)
		return rc;
	int bos;
	if (jint(c, "bos_token_id", INT_MIN, &bos, err) < 0)
		return -1;
	*found_bos = bos != INT_MIN;
	if (*found_bos)
		cfg->bos_id = bos;
	return 0;
}

/* The special ids: generation_config.json first (what generate() uses), then
 * config.json (top level, then text_config), then the family's default. */
static int load_special(const char *path, int is_dir, const struct jcfg *top, const struct jcfg *text,
			const struct family *f, struct model_config *cfg, struct err *err)
{
	int got_eos = 0, got_bos = 0, e, b;
	char gpath[4096];
	if (path_beside(path, is_dir, "generation_config.json", gpath, sizeof gpath, err) < 0)
		return -1;
	if (access(gpath, F_OK) == 0) {
		jv g;
		if (jsonl_load(gpath, 1 << 20, &g, err) < 0)
			return -1;
		struct jcfg gc = {g, gpath, ""};
		int rc = jv_get_kind(g) == JV_KIND_OBJECT ? parse_special(&gc, cfg, &got_eos, &got_bos, err)
							   : err_set(err, "%s: expected a JSON object", gpath);
		jv_free(g);
		if (rc < 0)
			return -1;
	}
	const struct jcfg *src[2] = {top, text};
	for (int i = 0; i < 2 && (!got_eos || !got_bos); i++) {
		if (i == 1 && !*text->prefix) /* the text keys are the top level */
			break;
		struct model_config tmp = *cfg;
		if (parse_special(src[i], &tmp, &e, &b, err) < 0)
			return -1;
		if (!got_eos && e) {
			cfg->n_eos = tmp.n_eos;
			memcpy(cfg->eos_ids, tmp.eos_ids, sizeof cfg->eos_ids);
			got_eos = 1;
		}
		if (!got_bos && b) {
			cfg->bos_id = tmp.bos_id;
			got_bos = 1;
		}
	}
	if (!got_eos && f->eos >= 0) {
		cfg->n_eos = 1;
		cfg->eos_ids[0] = f->eos;
	}
	if (!got_bos)
		cfg->bos_id = f->bos;
	return 0;
}

static const struct family *find_family(const char *model_type)
{
	for (size_t i = 0; i < sizeof families / sizeof families[0]; i++)
		if (!strcmp(families[i].model_type, model_type))
			return &families[i];
	return NULL;
}

/* The family of config.json, and the object holding the text model's keys
 * (text_config for Gemma3ForConditionalGeneration). *multimodal set for it. */
static int config_family(const struct jcfg *top, const struct family **f, jv *text, int *multimodal,
			 struct err *err)
{
	char mt[64];
	if (jstring(top, "model_type", mt, sizeof mt, err) < 0)
		return -1;
	if (!mt[0]) {
		jv a = jfield(top->obj, "architectures");
		if (jv_get_kind(a) == JV_KIND_ARRAY && jv_array_length(jv_copy(a)) > 0) {
			jv c = jv_array_get(jv_copy(a), 0);
			for (size_t i = 0; jv_get_kind(c) == JV_KIND_STRING && i < sizeof arch_classes / sizeof arch_classes[0]; i++)
				if (!strcmp(arch_classes[i].cls, jv_string_value(c)))
					snprintf(mt, sizeof mt, "%s", arch_classes[i].model_type);
			jv_free(c);
		}
		jv_free(a);
		if (!mt[0])
			return err_set(err, "%s: no model_type, and no known class in architectures", top->file);
	}
	*multimodal = !strcmp(mt, "gemma3");
	if (*multimodal) {
		jv t = jfield(top->obj, "text_config");
		jv_kind k = jv_get_kind(t);
		if (k == JV_KIND_INVALID || k == JV_KIND_NULL) { /* Gemma3Config: a default Gemma3TextConfig */
			jv_free(t);
			t = jv_object();
		} else if (k != JV_KIND_OBJECT) {
			jv_free(t);
			return err_set(err, "%s: text_config: expected an object", top->file);
		}
		*text = t;
		snprintf(mt, sizeof mt, "gemma3_text");
	} else {
		*text = jv_copy(top->obj);
	}
	*f = find_family(mt);
	if (!*f) {
		jv_free(*text);
		return err_set(err,
			       "%s: model_type '%s' is not supported (llama, mistral, qwen2, qwen3, gemma3_text, gemma3)",
			       top->file, mt);
	}
	return 0;
}

static int read_sizes(const struct jcfg *c, const struct family *f, struct model_config *cfg, struct err *err)
{
	if (jint(c, "vocab_size", f->vocab, &cfg->vocab, err) < 0 ||
	    jint(c, "hidden_size", f->dim, &cfg->dim, err) < 0 ||
	    jint(c, "intermediate_size", f->ffn, &cfg->ffn, err) < 0 ||
	    jint(c, "num_hidden_layers", f->n_layers, &cfg->n_layers, err) < 0 ||
	    jint(c, "num_attention_heads", f->n_heads, &cfg->n_heads, err) < 0 ||
	    jint(c, "num_key_value_heads", f->n_kv_heads, &cfg->n_kv_heads, err) < 0 ||
	    jint(c, "head_dim", f->head_dim, &cfg->head_dim, err) < 0 ||
	    jint(c, "max_position_embeddings", f->max_pos, &cfg->max_pos, err) < 0)
		return -1;
	/* Every config class turns an explicit null into num_attention_heads;
	 * only an absent key takes the class default (32 for Qwen2 and Qwen3). */
	jv kv = jfield(c->obj, "num_key_value_heads");
	if (cfg->n_kv_heads < 0 || jv_get_kind(kv) == JV_KIND_NULL)
		cfg->n_kv_heads = cfg->n_heads;
	jv_free(kv);
	if (cfg->head_dim == 0 && cfg->n_heads > 0) {
		if (cfg->dim % cfg->n_heads)
			return err_set(err, "%s: %snum_attention_heads (%d) does not divide %shidden_size (%d)", c->file,
				       c->prefix, cfg->n_heads, c->prefix, cfg->dim);
		cfg->head_dim = cfg->dim / cfg->n_heads;
	}
	double eps;
	if (jdouble(c, "rms_norm_eps", 1e-6, &eps, err) < 0)
		return -1;
	cfg->norm_eps = (float)eps;
	return 0;
}

static int read_rope(const struct jcfg *c, const struct family *f, struct model_config *cfg, struct err *err)
{
	cfg->rope.kind = ROPE_DEFAULT;
	if (jdouble(c, "rope_theta", f->rope_theta, &cfg->rope.theta, err) < 0 ||
	    parse_rope_scaling(c, f->arch == ARCH_GEMMA3, &cfg->rope, err) < 0)
		return -1;
	cfg->rope_local = cfg->rope;
	if (f->arch == ARCH_GEMMA3) { /* local layers: their own base, no scaling */
		memset(&cfg->rope_local, 0, sizeof cfg->rope_local);
		cfg->rope_local.kind = ROPE_DEFAULT;
		if (jdouble(c, "rope_local_base_freq", 10000.0, &cfg->rope_local.theta, err) < 0)
			return -1;
	}
	return 0;
}

static int read_family_parts(const struct jcfg *c, const struct family *f, struct model_config *cfg,
			     struct err *err)
{
	cfg->arch = f->arch;
	if (parse_act(c, f, &cfg->act, err) < 0 || jbool(c, "tie_word_embeddings", f->tie, &cfg->tied_embeddings, err) < 0)
		return -1;
	cfg->qkv_bias = f->arch == ARCH_QWEN2; /* Qwen2Attention: bias=True on q, k, v, always */
	cfg->qk_norm = f->arch == ARCH_QWEN3 || f->arch == ARCH_GEMMA3;
	cfg->sandwich_norm = cfg->norm_plus_one = f->arch == ARCH_GEMMA3;
	cfg->embed_scale = 1.0f;
	cfg->attn_scale = (float)pow(cfg->head_dim, -0.5);
	if (f->arch != ARCH_QWEN2 && refuse_true(c, "attention_bias", "bias on o_proj", err) < 0)
		return -1;
	if (f->arch == ARCH_LLAMA && refuse_true(c, "mlp_bias", "bias on the MLP", err) < 0)
		return -1;
	if (f->arch == ARCH_GEMMA3) {
		double qs, cap;
		if (refuse_true(c, "use_bidirectional_attention", "bidirectional attention", err) < 0 ||
		    jdouble(c, "query_pre_attn_scalar", 256, &qs, err) < 0)
			return -1;
		if (!(qs > 0))
			return err_set(err, "%s: %squery_pre_attn_scalar (%g) is not positive", c->file, c->prefix, qs);
		cfg->attn_scale = (float)pow(qs, -0.5);
		cfg->embed_scale = (float)pow(cfg->dim, 0.5);
		if (jdouble(c, "attn_logit_softcapping", 0, &cap, err) < 0)
			return -1;
		cfg->attn_softcap = (float)cap;
		if (jdouble(c, "final_logit_softcapping", 0, &cap, err) < 0)
			return -1;
		cfg->final_softcap = (float)cap;
		if (cfg->attn_softcap < 0 || cfg->final_softcap < 0)
			return err_set(err, "%s: %s*_logit_softcapping: expected a positive number or null", c->file,
				       c->prefix);
	}
	return 0;
}

static void hf_keys(struct cfg_keys *k, const char *p)
{
#define KEY(f, s) snprintf(k->f, sizeof k->f, "%s%s", p, s)
	KEY(vocab, "vocab_size");
	KEY(dim, "hidden_size");
	KEY(n_layers, "num_hidden_layers");
	KEY(n_heads, "num_attention_heads");
	KEY(n_kv_heads, "num_key_value_heads");
	KEY(head_dim, "head_dim");
	KEY(ffn, "intermediate_size");
	KEY(eps, "rms_norm_eps");
	KEY(rope_theta, "rope_theta");
	KEY(window, "sliding_window");
#undef KEY
}

static int hf_config_parse(const char *path, int is_dir, const struct jcfg *top, struct model_config *cfg,
			   int *multimodal, struct err *err)
{
	const struct family *f;
	jv text;
	struct cfg_keys keys;
	if (config_family(top, &f, &text, multimodal, err) < 0)
		return -1;
	struct jcfg c = {text, top->file, *multimodal ? "text_config." : ""};
	hf_keys(&keys, c.prefix);
	int rc = read_sizes(&c, f, cfg, err) < 0 || read_family_parts(&c, f, cfg, err) < 0 ||
			 read_rope(&c, f, cfg, err) < 0 || model_config_check(cfg, top->file, &keys, err) < 0 ||
			 parse_sliding(&c, f, cfg, err) < 0 || load_special(path, is_dir, top, &c, f, cfg, err) < 0
		 ? -1
		 : 0;
	jv_free(text);
	return rc;
}

/* Reads path's config.json (path: the folder, or a file inside it). */
static int hf_config(const char *path, int is_dir, struct model_config *cfg, int *multimodal, struct err *err)
{
	char file[4096];
	jv root;
	memset(cfg, 0, sizeof *cfg);
	cfg->bos_id = -1;
	if (path_beside(path, is_dir, "config.json", file, sizeof file, err) < 0 ||
	    jsonl_load(file, 16 << 20, &root, err) < 0)
		return -1;
	struct jcfg top = {root, file, ""};
	int rc = jv_get_kind(root) == JV_KIND_OBJECT ? hf_config_parse(path, is_dir, &top, cfg, multimodal, err)
						      : err_set(err, "%s: expected a JSON object", file);
	jv_free(root);
	if (rc)
		model_config_free(cfg);
	return rc;
}

/* ---- paths ---- */

enum src_kind { SRC_DIR, SRC_SAFETENSORS, SRC_GGUF };

static int classify(const char *path, enum src_kind *kind, struct err *err)
{
	struct stat st;
	if (stat(path, &st) < 0)
		return err_set(err, "%s: %s", path, strerror(errno));
	if (S_ISDIR(st.st_mode))
		*kind = SRC_DIR;
	else if (is_gguf_file(path))
		*kind = SRC_GGUF;
	else
		*kind = SRC_SAFETENSORS;
	return 0;
}

int model_config_load(const char *path, struct model_config *cfg, struct err *err)
{
	enum src_kind kind;
	int mm;
	memset(cfg, 0, sizeof *cfg);
	if (classify(path, &kind, err) < 0)
		return -1;
	if (kind != SRC_GGUF)
		return hf_config(path, kind == SRC_DIR, cfg, &mm, err);
	struct gguf *g = gguf_open(path, err);
	if (!g)
		return -1;
	int rc = model_gguf_config(g, cfg, err);
	gguf_close(g);
	return rc;
}

/* ---- safetensors weights ---- */

struct hf {
	struct safetensors *st;
	const char *path;     /* what the user named, for "missing" messages */
	const char *prefix;   /* of the text model's tensors: "model." ... */
	const char *lm_head;  /* name of the output projection */
	struct model_load_opts o;
	struct scratch s;
};

static void shape_str(char *buf, size_t cap, int n, const int64_t *d)
{
	size_t at = (size_t)snprintf(buf, cap, "[");
	for (int i = 0; i < n && at < cap; i++)
		at += (size_t)snprintf(buf + at, cap - at, "%s%lld", i ? ", " : "", (long long)d[i]);
	if (at < cap)
		snprintf(buf + at, cap - at, "]");
}

/* The tensor called name with shape [rows] (cols 0) or [rows, cols], of a float dtype. */
static const struct st_tensor *hf_tensor(struct hf *h, const char *name, int64_t rows, int64_t cols, struct err *err)
{
	const struct st_tensor *t = st_find(h->st, name);
	if (!t) {
		err_set(err, "%s: tensor '%s' is missing", h->path, name);
		return NULL;
	}
	int nd = cols ? 2 : 1;
	int64_t want[2] = {rows, cols};
	if (t->n_dims != nd || t->shape[0] != rows || (nd == 2 && t->shape[1] != cols)) {
		char got[200], exp[64];
		shape_str(got, sizeof got, t->n_dims, t->shape);
		shape_str(exp, sizeof exp, nd, want);
		err_set(err, "%s: tensor '%s': shape %s, expected %s", t->file, name, got, exp);
		return NULL;
	}
	if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64) {
		err_set(err, "%s: tensor '%s': dtype %s is not a float type (F32, F16, BF16, F64)", t->file, name,
			st_dtype_name(t->dtype));
		return NULL;
	}
	return t;
}

static int hf_read(struct hf *h, const struct st_tensor *t, float *out, struct err *err)
{
	int rc = st_read_f32(t, 0, t->n_elems, out, err);
	st_release(h->st, t); /* its mapped pages are not needed again */
	if (rc < 0)
		return err_wrap(err, "%s", t->file);
	return 0;
}

/* A vector of n floats, owned by the caller. */
static int hf_vec(struct hf *h, const char *name, int64_t n, float **out, struct err *err)
{
	const struct st_tensor *t = hf_tensor(h, name, n, 0, err);
	if (!t)
		return -1;
	*out = malloc((size_t)n * sizeof **out);
	if (!*out)
		return err_sys(err, "out of memory");
	return hf_read(h, t, *out, err);
}

static int hf_mat(struct hf *h, const char *name, int64_t rows, int64_t cols, enum wfmt fmt, struct weight *w,
		  struct err *err)
{
	const struct st_tensor *t = hf_tensor(h, name, rows, cols, err);
	if (!t)
		return -1;
	float *x = scratch_get(&h->s, (size_t)(rows * cols), err);
	if (!x || hf_read(h, t, x, err) < 0)
		return -1;
	if (weight_from_f32(w, fmt, x, rows, cols, err) < 0)
		return err_wrap(err, "%s: tensor '%s'", t->file, name);
	return 0;
}

static int hf_layer(struct hf *h, const struct model_config *c, int i, struct layer_weights *l, struct err *err)
{
	char n[256];
	int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
	enum wfmt f = h->o.linear;
#define NAME(s) (snprintf(n, sizeof n, "%slayers.%d.%s", h->prefix, i, s), n)
	if (hf_vec(h, NAME("input_layernorm.weight"), c->dim, &l->attn_norm, err) < 0 ||
	    hf_mat(h, NAME("self_attn.q_proj.weight"), q, c->dim, f, &l->q, err) < 0 ||
	    hf_mat(h, NAME("self_attn.k_proj.weight"), kv, c->dim, f, &l->k, err) < 0 ||
	    hf_mat(h, NAME("self_attn.v_proj.weight"), kv, c->dim, f, &l->v, err) < 0 ||
	    hf_mat(h, NAME("self_attn.o_proj.weight"), c->dim, q, f, &l->o, err) < 0)
		return -1;
	if (c->qkv_bias && (hf_vec(h, NAME("self_attn.q_proj.bias"), q, &l->q_bias, err) < 0 ||
			    hf_vec(h, NAME("self_attn.k_proj.bias"), kv, &l->k_bias, err) < 0 ||
			    hf_vec(h, NAME("self_attn.v_proj.bias"), kv, &l->v_bias, err) < 0))
		return -1;
	if (c->qk_norm && (hf_vec(h, NAME("self_attn.q_norm.weight"), c->head_dim, &l->q_norm, err) < 0 ||
			   hf_vec(h, NAME("self_attn.k_norm.weight"), c->head_dim, &l->k_norm, err) < 0))
		return -1;
	if (c->sandwich_norm) {
		if (hf_vec(h, NAME("post_attention_layernorm.weight"), c->dim, &l->post_attn_norm, err) < 0 ||
		    hf_vec(h, NAME("pre_feedforward_layernorm.weight"), c->dim, &l->ffn_norm, err) < 0 ||
		    hf_vec(h, NAME("post_feedforward_layernorm.weight"), c->dim, &l->post_ffn_norm, err) < 0)
			return -1;
	} else if (hf_vec(h, NAME("post_attention_layernorm.weight"), c->dim, &l->ffn_norm, err) < 0) {
		return -1;
	}
	if (hf_mat(h, NAME("mlp.gate_proj.weight"), c->ffn, c->dim, f, &l->gate, err) < 0 ||
	    hf_mat(h, NAME("mlp.up_proj.weight"), c->ffn, c->dim, f, &l->up, err) < 0 ||
	    hf_mat(h, NAME("mlp.down_proj.weight"), c->dim, c->ffn, f, &l->down, err) < 0)
		return -1;
#undef NAME
	return 0;
}

/* Where the text model's tensors live. Gemma3ForConditionalGeneration has
 * saved them under two names over time (transformers' conversion mapping:
 * "language_model.model." before 4.52, "model.language_model." since), its
 * output as "language_model.lm_head." or "lm_head.". */
static int hf_names(struct hf *h, int multimodal, struct err *err)
{
	static const char *const text[][2] = {{"model.", "lm_head.weight"}};
	static const char *const mm[][2] = {
		{"model.language_model.", "lm_head.weight"},
		{"language_model.model.", "language_model.lm_head.weight"},
		{"model.", "lm_head.weight"},
	};
	const char *const(*c)[2] = multimodal ? mm : text;
	size_t n = multimodal ? sizeof mm / sizeof mm[0] : 1;
	for (size_t i = 0; i < n; i++) {
		char name[128];
		snprintf(name, sizeof name, "%sembed_tokens.weight", c[i][0]);
		if (st_find(h->st, name)) {
			h->prefix = c[i][0];
			h->lm_head = c[i][1];
			if (i == 1 && !st_find(h->st, h->lm_head) && st_find(h->st, "lm_head.weight"))
				h->lm_head = "lm_head.weight";
			return 0;
		}
	}
	return err_set(err, "%s: tensor '%sembed_tokens.weight' is missing", h->path, c[0][0]);
}

static int hf_weights(struct hf *h, struct model *m, int multimodal, struct err *err)
{
	const struct model_config *c = &m->cfg;
	char n[256];
	if (hf_names(h, multimodal, err) < 0)
		return -1;
	snprintf(n, sizeof n, "%sembed_tokens.weight", h->prefix);
	if (hf_mat(h, n, c->vocab, c->dim, h->o.embed, &m->embed, err) < 0)
		return -1;
	scratch_release(&h->s);
	for (int i = 0; i < c->n_layers; i++)
		if (hf_layer(h, c, i, &m->layers[i], err) < 0)
			return -1;
	snprintf(n, sizeof n, "%snorm.weight", h->prefix);
	if (hf_vec(h, n, c->dim, &m->final_norm, err) < 0)
		return -1;
	/* Tied: an lm_head.weight in the file is ignored, as transformers' tying
	 * makes the output share the embedding whatever the file holds. */
	if (!c->tied_embeddings && hf_mat(h, h->lm_head, c->vocab, c->dim, h->o.embed, &m->lm_head, err) < 0)
		return -1;
	return 0;
}

static struct model *hf_load(const char *path, int is_dir, const struct model_load_opts *o, struct err *err)
{
	struct model_config cfg;
	int multimodal;
	struct hf h = {.path = path};
	if (model_opts(o, &h.o, err) < 0 || hf_config(path, is_dir, &cfg, &multimodal, err) < 0)
		return NULL;
	struct model *m = model_new(&cfg, path, err);
	model_config_free(&cfg);
	if (!m)
		return NULL;
	h.st = st_open(path, err);
	if (!h.st || hf_weights(&h, m, multimodal, err) < 0) {
		model_free(m);
		m = NULL;
	}
	st_close(h.st);
	scratch_release(&h.s);
	return m;
}

struct model *model_load(const char *path, const struct model_load_opts *o, struct err *err)
{
	enum src_kind kind;
	if (classify(path, &kind, err) < 0)
		return NULL;
	if (kind == SRC_GGUF)
		return model_gguf_load(path, o, err);
	return hf_load(path, kind == SRC_DIR, o, err);
}
