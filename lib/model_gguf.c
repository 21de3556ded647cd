/* model_gguf: a GGUF file (as llama.cpp's convert_hf_to_gguf.py writes one)
 * into struct model, in Hugging Face's layout.
 *
 * The converter changes three things on the way, undone here:
 *   - names: token_embd, blk.N.attn_q ... output_norm, output (gguf-py's
 *     tensor_mapping.py), and every 2-D tensor's shape is given fastest
 *     dimension first: ne = [in, out] for torch's [out, in] Linear.weight,
 *     which is the same bytes in the same order;
 *   - llama-architecture q and k rows: within each head the rotate-half order
 *     (first halves, then second halves) becomes interleaved pairs, GGUF row
 *     2i + j of a head holding HF row j·head_dim/2 + i (LlamaModel.permute);
 *   - Gemma norms are stored as 1 + w; we subtract the 1 so that every source
 *     gives the same in-memory model and the forward applies (1 + w). For a
 *     stored s >= 0.5, s - 1 and then 1 + (s - 1) are exact in fp32, so the
 *     forward multiplies by s itself, as transformers loading the GGUF does.
 *
 * Configuration comes from the "{arch}." keys, as llama.cpp's
 * llama_model_loader reads them; what GGUF cannot say is what llama.cpp
 * assumes: Gemma 3 slides on five layers of six with RoPE base 10000 on them,
 * and scales attention by key_length^-1/2 (n_embd/n_head for the 62-layer
 * 27B, whose query_pre_attn_scalar differs).
 */
#include "model_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
	const char *name;
	enum model_arch arch;
} gguf_archs[] = {
	{"llama", ARCH_LLAMA},
	{"qwen2", ARCH_QWEN2},
	{"qwen3", ARCH_QWEN3},
	{"gemma3", ARCH_GEMMA3},
};

/* "{arch}.suffix" */
struct akey {
	char buf[128];
};
static const char *ak(struct akey *k, const char *arch, const char *suffix)
{
	snprintf(k->buf, sizeof k->buf, "%s.%s", arch, suffix);
	return k->buf;
}

/* An integer key that must fit an int: dflt when absent (required: error). */
static int kint(const struct gguf *g, const char *key, int required, int dflt, int *out, struct err *err)
{
	uint32_t v;
	if (gguf_find_key(g, key) < 0) {
		if (required)
			return err_set(err, "%s: key '%s' is missing", gguf_name(g), key);
		*out = dflt;
		return 0;
	}
	if (gguf_get_u32(g, key, &v, err) < 0)
		return -1;
	if (v > (uint32_t)INT32_MAX)
		return err_set(err, "%s: key '%s': %u is too large", gguf_name(g), key, v);
	*out = (int)v;
	return 0;
}

static int kf64(const struct gguf *g, const char *key, int required, double dflt, double *out, struct err *err)
{
	if (gguf_find_key(g, key) < 0) {
		if (required)
			return err_set(err, "%s: key '%s' is missing", gguf_name(g), key);
		*out = dflt;
		return 0;
	}
	return gguf_get_f64(g, key, out, err);
}

/* general.architecture */
static int gguf_arch(const struct gguf *g, enum model_arch *arch, const char **name, struct err *err)
{
	const char *s;
	size_t len;
	if (gguf_find_key(g, "general.architecture") < 0)
		return err_set(err, "%s: key 'general.architecture' is missing", gguf_name(g));
	if (gguf_get_str(g, "general.architecture", &s, &len, err) < 0)
		return -1;
	for (size_t i = 0; i < sizeof gguf_archs / sizeof gguf_archs[0]; i++)
		if (!strcmp(s, gguf_archs[i].name)) {
			*arch = gguf_archs[i].arch;
			*name = gguf_archs[i].name;
			return 0;
		}
	return err_set(err, "%s: general.architecture '%s' is not supported (llama, qwen2, qwen3, gemma3)",
		       gguf_name(g), s);
}

/* rope.scaling.type "none" | "linear" (rope.scaling.factor, or the older
 * rope.scale_linear). Llama 3's scaling travels as a tensor instead, read by
 * gguf_rope_freqs. */
static int gguf_rope(const struct gguf *g, const char *a, struct model_config *cfg, struct err *err)
{
	struct akey k;
	cfg->rope.kind = ROPE_DEFAULT;
	if (kf64(g, ak(&k, a, "rope.freq_base"), 0, 10000.0, &cfg->rope.theta, err) < 0)
		return -1;
	const char *type = "none";
	size_t len;
	if (gguf_find_key(g, ak(&k, a, "rope.scaling.type")) >= 0 && gguf_get_str(g, k.buf, &type, &len, err) < 0)
		return -1;
	if (!strcmp(type, "linear")) {
		cfg->rope.kind = ROPE_LINEAR;
		if (kf64(g, ak(&k, a, "rope.scaling.factor"), 1, 0, &cfg->rope.factor, err) < 0)
			return -1;
	} else if (strcmp(type, "none")) {
		return err_set(err, "%s: key '%s.rope.scaling.type': '%s' is not supported (none, linear)", gguf_name(g),
			       a, type);
	} else if (gguf_find_key(g, ak(&k, a, "rope.scale_linear")) >= 0) {
		double f;
		if (gguf_get_f64(g, k.buf, &f, err) < 0)
			return -1;
		if (f != 0 && f != 1.0) { /* llama.cpp: 0 and 1 both mean none */
			cfg->rope.kind = ROPE_LINEAR;
			cfg->rope.factor = f;
		}
	}
	int rot;
	if (kint(g, ak(&k, a, "rope.dimension_count"), 0, cfg->head_dim, &rot, err) < 0)
		return -1;
	if (rot != cfg->head_dim)
		return err_set(err, "%s: key '%s': RoPE on %d of %d dimensions is not supported", gguf_name(g), k.buf, rot,
			       cfg->head_dim);
	cfg->rope_local = cfg->rope;
	return 0;
}

/* rope_freqs.weight: head_dim/2 fp32 divisors of the inverse frequencies,
 * which convert_hf_to_gguf.py computes from a "llama3" rope_scaling (1 for
 * the high frequencies, factor for the low, 1 / ((1 - s) / factor + s)
 * between) and llama.cpp's rope divides by; the llama architecture only, as
 * in llama.cpp. Called once the sizes are checked (head_dim even, bounded). */
static int gguf_rope_freqs(const struct gguf *g, struct model_config *cfg, struct err *err)
{
	static const char name[] = "rope_freqs.weight";
	int64_t i = gguf_find_tensor(g, name);
	if (i < 0)
		return 0;
	if (cfg->arch != ARCH_LLAMA)
		return err_set(err, "%s: tensor %s: RoPE frequency factors are supported for llama only, not %s",
			       gguf_name(g), name, model_arch_name(cfg->arch));
	const struct gguf_tensor *t = gguf_tensor(g, i);
	int64_t half = cfg->head_dim / 2;
	if (t->n_dims != 1 || t->ne[0] != half)
		return err_set(err, "%s: tensor %s: expected one dimension of %lld (head_dim / 2)", gguf_name(g), name,
			       (long long)half);
	if (!gguf_can_dequantize(t->type)) {
		const char *tn = gguf_ggml_type_name(t->type);
		return err_set(err, "%s: tensor %s: type %s is not supported", gguf_name(g), name, tn ? tn : "unknown");
	}
	float *f = malloc((size_t)half * sizeof *f);
	if (!f)
		return err_sys(err, "out of memory");
	if (gguf_dequantize(t, 0, half, f, err) < 0) {
		free(f);
		return err_wrap(err, "%s", gguf_name(g));
	}
	for (int64_t j = 0; j < half; j++)
		if (!(f[j] > 0) || !isfinite(f[j])) {
			err_set(err, "%s: tensor %s: element %lld (%g) is not a positive number", gguf_name(g), name,
				(long long)j, (double)f[j]);
			free(f);
			return -1;
		}
	cfg->rope.freq_factors = f;
	cfg->rope_local.freq_factors = f; /* the same RoPE on every layer */
	return 0;
}

/* Gemma 3's local layers, as llama.cpp sets them: a window when the key
 * says one, five sliding layers in six, RoPE base 10000 without scaling. */
static int gguf_sliding(const struct gguf *g, const char *a, struct model_config *cfg, struct err *err)
{
	struct akey k;
	if (cfg->arch != ARCH_GEMMA3)
		return 0;
	if (kint(g, ak(&k, a, "attention.sliding_window"), 0, 0, &cfg->sliding_window, err) < 0)
		return -1;
	if (cfg->sliding_window <= 0)
		return 0;
	memset(&cfg->rope_local, 0, sizeof cfg->rope_local);
	cfg->rope_local.kind = ROPE_DEFAULT;
	if (kf64(g, ak(&k, a, "rope.freq_base_swa"), 0, 10000.0, &cfg->rope_local.theta, err) < 0)
		return -1;
	cfg->layer_sliding = malloc((size_t)cfg->n_layers);
	if (!cfg->layer_sliding)
		return err_sys(err, "out of memory");
	/* attention.sliding_window_pattern, when written: a period n (layer i
	 * slides when i % n < n - 1, llama.cpp's set_swa_pattern) or one bool per
	 * layer; llama.cpp's Gemma 3 default is the period 6. */
	int64_t pk = gguf_find_key(g, ak(&k, a, "attention.sliding_window_pattern"));
	int period = 6;
	if (pk >= 0 && gguf_kv_type(g, pk) == GGUF_TYPE_ARRAY) {
		uint64_t n;
		const uint8_t *v = gguf_get_arr_data(g, k.buf, GGUF_TYPE_BOOL, &n, err);
		if (!v)
			return -1;
		if (n != (uint64_t)cfg->n_layers)
			return err_set(err, "%s: key '%s': %llu flags for %d layers", gguf_name(g), k.buf,
				       (unsigned long long)n, cfg->n_layers);
		memcpy(cfg->layer_sliding, v, (size_t)n);
		return 0;
	}
	if (pk >= 0 && kint(g, k.buf, 1, 0, &period, err) < 0)
		return -1;
	for (int i = 0; i < cfg->n_layers; i++)
		cfg->layer_sliding[i] = period == 0 || i % period < period - 1;
	return 0;
}

static void add_stop(struct model_config *cfg, int id)
{
	for (int j = 0; j < cfg->n_eos; j++)
		if (cfg->eos_ids[j] == id)
			return;
	if (id >= 0 && cfg->n_eos < MODEL_MAX_EOS)
		cfg->eos_ids[cfg->n_eos++] = id;
}

/* bos; and as stop ids what llama.cpp's vocabulary treats as end of
 * generation: eos, eot and eom from the metadata, then every token spelled
 * like an end-of-turn marker (llama_vocab's EOG list), which is how it stops
 * Gemma at <end_of_turn> although the file names no eot id. */
static int gguf_special(const struct gguf *g, struct model_config *cfg, struct err *err)
{
	static const char *const stop[] = {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
					   "tokenizer.ggml.eom_token_id"};
	static const char *const eog_text[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>",
					       "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>",
					       "<|end_of_text|>", "<end_of_utterance>"};
	if (kint(g, "tokenizer.ggml.bos_token_id", 0, -1, &cfg->bos_id, err) < 0)
		return -1;
	cfg->n_eos = 0;
	for (size_t i = 0; i < sizeof stop / sizeof stop[0]; i++) {
		int id;
		if (kint(g, stop[i], 0, -1, &id, err) < 0)
			return -1;
		add_stop(cfg, id);
	}
	int64_t tk = gguf_find_key(g, "tokenizer.ggml.tokens");
	uint64_t n = tk >= 0 && gguf_kv_arr_type(g, tk) == GGUF_TYPE_STRING ? gguf_kv_arr_n(g, tk) : 0;
	for (uint64_t i = 0; i < n && i <= INT32_MAX; i++) {
		size_t len;
		const char *t = gguf_kv_arr_str(g, tk, i, &len);
		if (!t || len < 5 || len > 20 || (t[0] != '<' && t[0] != '_'))
			continue;
		for (size_t j = 0; j < sizeof eog_text / sizeof eog_text[0]; j++)
			if (len == strlen(eog_text[j]) && !memcmp(t, eog_text[j], len))
				add_stop(cfg, (int)i);
	}
	return 0;
}

static int gguf_sizes(const struct gguf *g, const char *a, struct model_config *cfg, struct err *err)
{
	struct akey k;
	double eps;
	if (kint(g, ak(&k, a, "embedding_length"), 1, 0, &cfg->dim, err) < 0 ||
	    kint(g, ak(&k, a, "block_count"), 1, 0, &cfg->n_layers, err) < 0 ||
	    kint(g, ak(&k, a, "feed_forward_length"), 1, 0, &cfg->ffn, err) < 0 ||
	    kint(g, ak(&k, a, "attention.head_count"), 1, 0, &cfg->n_heads, err) < 0 ||
	    kint(g, ak(&k, a, "attention.head_count_kv"), 0, cfg->n_heads, &cfg->n_kv_heads, err) < 0 ||
	    kint(g, ak(&k, a, "context_length"), 1, 0, &cfg->max_pos, err) < 0 ||
	    kf64(g, ak(&k, a, "attention.layer_norm_rms_epsilon"), 1, 0, &eps, err) < 0)
		return -1;
	cfg->norm_eps = (float)eps;
	if (cfg->n_heads <= 0)
		return err_set(err, "%s: key '%s.attention.head_count' is 0", gguf_name(g), a);
	int derived = cfg->dim % cfg->n_heads ? 0 : cfg->dim / cfg->n_heads, vlen;
	if (kint(g, ak(&k, a, "attention.key_length"), 0, derived, &cfg->head_dim, err) < 0)
		return -1;
	if (!cfg->head_dim)
		return err_set(err, "%s: key '%s.attention.head_count' (%d) does not divide '%s.embedding_length' (%d)",
			       gguf_name(g), a, cfg->n_heads, a, cfg->dim);
	if (kint(g, ak(&k, a, "attention.value_length"), 0, cfg->head_dim, &vlen, err) < 0)
		return -1;
	if (vlen != cfg->head_dim)
		return err_set(err, "%s: key '%s' (%d) differs from key_length (%d)", gguf_name(g), k.buf, vlen,
			       cfg->head_dim);
	/* The vocabulary is the embedding's rows. */
	int64_t te = gguf_find_tensor(g, "token_embd.weight");
	if (te < 0)
		return err_set(err, "%s: tensor token_embd.weight is missing", gguf_name(g));
	const struct gguf_tensor *t = gguf_tensor(g, te);
	if (t->n_dims != 2 || t->ne[1] > INT32_MAX)
		return err_set(err, "%s: tensor token_embd.weight: expected 2 dimensions [dim, vocab]", gguf_name(g));
	cfg->vocab = (int)t->ne[1];
	return 0;
}

static int gguf_family(const struct gguf *g, const char *a, struct model_config *cfg, struct err *err)
{
	struct akey k;
	double cap;
	cfg->act = cfg->arch == ARCH_GEMMA3 ? ACT_GELU_TANH : ACT_SILU;
	cfg->qkv_bias = cfg->arch == ARCH_QWEN2;
	cfg->qk_norm = cfg->arch == ARCH_QWEN3 || cfg->arch == ARCH_GEMMA3;
	cfg->sandwich_norm = cfg->norm_plus_one = cfg->arch == ARCH_GEMMA3;
	cfg->tied_embeddings = gguf_find_tensor(g, "output.weight") < 0;
	cfg->embed_scale = cfg->arch == ARCH_GEMMA3 ? (float)pow(cfg->dim, 0.5) : 1.0f;
	cfg->attn_scale = (float)pow(cfg->head_dim, -0.5);
	if (cfg->arch == ARCH_GEMMA3 && cfg->n_layers == 62) /* llama.cpp's Gemma 3 27B */
		cfg->attn_scale = (float)pow(cfg->dim / cfg->n_heads, -0.5);
	if (kf64(g, ak(&k, a, "attn_logit_softcapping"), 0, 0, &cap, err) < 0)
		return -1;
	cfg->attn_softcap = (float)cap;
	if (kf64(g, ak(&k, a, "final_logit_softcapping"), 0, 0, &cap, err) < 0)
		return -1;
	cfg->final_softcap = (float)cap;
	return 0;
}

int model_gguf_config(const struct gguf *g, struct model_config *cfg, struct err *err)
{
	const char *a = "";
	struct cfg_keys keys;
	memset(cfg, 0, sizeof *cfg);
	if (gguf_arch(g, &cfg->arch, &a, err) < 0)
		return -1;
	snprintf(keys.vocab, sizeof keys.vocab, "token_embd.weight rows");
	snprintf(keys.dim, sizeof keys.dim, "%s.embedding_length", a);
	snprintf(keys.n_layers, sizeof keys.n_layers, "%s.block_count", a);
	snprintf(keys.n_heads, sizeof keys.n_heads, "%s.attention.head_count", a);
	snprintf(keys.n_kv_heads, sizeof keys.n_kv_heads, "%s.attention.head_count_kv", a);
	snprintf(keys.head_dim, sizeof keys.head_dim, "%s.attention.key_length", a);
	snprintf(keys.ffn, sizeof keys.ffn, "%s.feed_forward_length", a);
	snprintf(keys.eps, sizeof keys.eps, "%s.attention.layer_norm_rms_epsilon", a);
	snprintf(keys.rope_theta, sizeof keys.rope_theta, "%s.rope.freq_base", a);
	snprintf(keys.window, sizeof keys.window, "%s.attention.sliding_window", a);
	if (gguf_sizes(g, a, cfg, err) < 0 || gguf_family(g, a, cfg, err) < 0 || gguf_rope(g, a, cfg, err) < 0 ||
	    model_config_check(cfg, gguf_name(g), &keys, err) < 0 || gguf_rope_freqs(g, cfg, err) < 0 ||
	    gguf_sliding(g, a, cfg, err) < 0 || gguf_special(g, cfg, err) < 0) {
		model_config_free(cfg);
		return -1;
	}
	return 0;
}

/* ---- tensors ---- */

struct gl {
	const struct gguf *g;
	struct model_load_opts o;
	struct scratch s, s2;
};

/* The tensor called name with ne [n0] (n1 0) or [n0, n1], of a type we can
 * dequantize. */
static const struct gguf_tensor *gl_tensor(struct gl *l, const char *name, int64_t n0, int64_t n1, struct err *err)
{
	int64_t i = gguf_find_tensor(l->g, name);
	if (i < 0) {
		err_set(err, "%s: tensor %s is missing", gguf_name(l->g), name);
		return NULL;
	}
	const struct gguf_tensor *t = gguf_tensor(l->g, i);
	uint32_t nd = n1 ? 2 : 1;
	if (t->n_dims != nd || t->ne[0] != n0 || (nd == 2 && t->ne[1] != n1)) {
		char got[160];
		size_t at = (size_t)snprintf(got, sizeof got, "[");
		for (uint32_t d = 0; d < t->n_dims && at < sizeof got; d++)
			at += (size_t)snprintf(got + at, sizeof got - at, "%s%lld", d ? ", " : "", (long long)t->ne[d]);
		if (nd == 2)
			err_set(err, "%s: tensor %s: shape %s], expected [%lld, %lld]", gguf_name(l->g), name, got,
				(long long)n0, (long long)n1);
		else
			err_set(err, "%s: tensor %s: shape %s], expected [%lld]", gguf_name(l->g), name, got,
				(long long)n0);
		return NULL;
	}
	if (!gguf_can_dequantize(t->type)) {
		const char *tn = gguf_ggml_type_name(t->type);
		err_set(err, "%s: tensor %s: type %s is not supported", gguf_name(l->g), name, tn ? tn : "unknown");
		return NULL;
	}
	return t;
}

static int gl_read(struct gl *l, const struct gguf_tensor *t, float *out, int64_t n, struct err *err)
{
	int rc = gguf_dequantize(t, 0, n, out, err);
	gguf_release_tensor(l->g, t); /* its mapped pages are not needed again */
	if (rc < 0)
		return err_wrap(err, "%s", gguf_name(l->g));
	return 0;
}

/* A vector of n floats, owned by the caller; minus one for Gemma's norms. */
static int gl_vec(struct gl *l, const char *name, int64_t n, int minus_one, float **out, struct err *err)
{
	const struct gguf_tensor *t = gl_tensor(l, name, n, 0, err);
	if (!t)
		return -1;
	*out = malloc((size_t)n * sizeof **out);
	if (!*out)
		return err_sys(err, "out of memory");
	if (gl_read(l, t, *out, n, err) < 0)
		return -1;
	if (minus_one)
		for (int64_t i = 0; i < n; i++)
			(*out)[i] -= 1.0f;
	return 0;
}

/* Undoes LlamaModel.permute on rows × cols: within each head of hd rows, GGUF
 * row 2i + j holds HF row j·hd/2 + i. */
static void unpermute(const float *in, float *out, int64_t rows, int64_t cols, int hd)
{
	int half = hd / 2;
	for (int64_t h0 = 0; h0 < rows; h0 += hd)
		for (int i = 0; i < half; i++)
			for (int j = 0; j < 2; j++)
				memcpy(out + (h0 + (int64_t)j * half + i) * cols, in + (h0 + 2 * i + j) * cols,
				       (size_t)cols * sizeof *out);
}

/* A rows × cols matrix (ne [cols, rows]); permute_hd > 0: undo the q/k permutation. */
static int gl_mat(struct gl *l, const char *name, int64_t rows, int64_t cols, enum wfmt fmt, int permute_hd,
		  struct weight *w, struct err *err)
{
	const struct gguf_tensor *t = gl_tensor(l, name, cols, rows, err);
	if (!t)
		return -1;
	size_t n = (size_t)(rows * cols);
	float *x = scratch_get(&l->s, n, err);
	if (!x || gl_read(l, t, x, rows * cols, err) < 0)
		return -1;
	if (permute_hd) {
		float *y = scratch_get(&l->s2, n, err);
		if (!y)
			return -1;
		unpermute(x, y, rows, cols, permute_hd);
		x = y;
	}
	if (weight_from_f32(w, fmt, x, rows, cols, err) < 0)
		return err_wrap(err, "%s: tensor %s", gguf_name(l->g), name);
	return 0;
}

static int gl_layer(struct gl *l, const struct model_config *c, int i, struct layer_weights *w, struct err *err)
{
	char n[GGUF_MAX_NAME + 32];
	int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
	enum wfmt f = l->o.linear;
	int g1 = c->norm_plus_one, perm = c->arch == ARCH_LLAMA ? c->head_dim : 0;
#define NAME(s) (snprintf(n, sizeof n, "blk.%d.%s", i, s), n)
	if (gl_vec(l, NAME("attn_norm.weight"), c->dim, g1, &w->attn_norm, err) < 0 ||
	    gl_mat(l, NAME("attn_q.weight"), q, c->dim, f, perm, &w->q, err) < 0 ||
	    gl_mat(l, NAME("attn_k.weight"), kv, c->dim, f, perm, &w->k, err) < 0 ||
	    gl_mat(l, NAME("attn_v.weight"), kv, c->dim, f, 0, &w->v, err) < 0 ||
	    gl_mat(l, NAME("attn_output.weight"), c->dim, q, f, 0, &w->o, err) < 0)
		return -1;
	if (c->qkv_bias && (gl_vec(l, NAME("attn_q.bias"), q, 0, &w->q_bias, err) < 0 ||
			    gl_vec(l, NAME("attn_k.bias"), kv, 0, &w->k_bias, err) < 0 ||
			    gl_vec(l, NAME("attn_v.bias"), kv, 0, &w->v_bias, err) < 0))
		return -1;
	if (c->qk_norm && (gl_vec(l, NAME("attn_q_norm.weight"), c->head_dim, g1, &w->q_norm, err) < 0 ||
			   gl_vec(l, NAME("attn_k_norm.weight"), c->head_dim, g1, &w->k_norm, err) < 0))
		return -1;
	if (c->sandwich_norm && (gl_vec(l, NAME("post_attention_norm.weight"), c->dim, g1, &w->post_attn_norm, err) < 0 ||
				 gl_vec(l, NAME("post_ffw_norm.weight"), c->dim, g1, &w->post_ffn_norm, err) < 0))
		return -1;
	if (gl_vec(l, NAME("ffn_norm.weight"), c->dim, g1, &w->ffn_norm, err) < 0 ||
	    gl_mat(l, NAME("ffn_gate.weight"), c->ffn, c->dim, f, 0, &w->gate, err) < 0 ||
	    gl_mat(l, NAME("ffn_up.weight"), c->ffn, c->dim, f, 0, &w->up, err) < 0 ||
	    gl_mat(l, NAME("ffn_down.weight"), c->dim, c->ffn, f, 0, &w->down, err) < 0)
		return -1;
#undef NAME
	return 0;
}

static int gl_weights(struct gl *l, struct model *m, struct err *err)
{
	const struct model_config *c = &m->cfg;
	if (gl_mat(l, "token_embd.weight", c->vocab, c->dim, l->o.embed, 0, &m->embed, err) < 0)
		return -1;
	scratch_release(&l->s);
	for (int i = 0; i < c->n_layers; i++)
		if (gl_layer(l, c, i, &m->layers[i], err) < 0)
			return -1;
	if (gl_vec(l, "output_norm.weight", c->dim, c->norm_plus_one, &m->final_norm, err) < 0)
		return -1;
	if (!c->tied_embeddings && gl_mat(l, "output.weight", c->vocab, c->dim, l->o.embed, 0, &m->lm_head, err) < 0)
		return -1;
	return 0;
}

struct model *model_gguf_load(const char *path, const struct model_load_opts *o, struct err *err)
{
	struct gl l = {0};
	struct model_config cfg;
	if (model_opts(o, &l.o, err) < 0)
		return NULL;
	struct gguf *g = gguf_open(path, err);
	if (!g)
		return NULL;
	l.g = g;
	struct model *m = NULL;
	if (model_gguf_config(g, &cfg, err) == 0) {
		m = model_new(&cfg, path, err);
		model_config_free(&cfg);
	}
	if (m && gl_weights(&l, m, err) < 0) {
		model_free(m);
		m = NULL;
	}
	scratch_release(&l.s);
	scratch_release(&l.s2);
	gguf_close(g);
	return m;
}
