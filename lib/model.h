/* model: a decoder-only transformer — its configuration, its frozen weights
 * loaded from a Hugging Face folder or a GGUF file into one in-memory form —
 * and its forward pass in fp32.
 *
 * Families (the architecture comes from config.json's model_type /
 * architectures, or GGUF's general.architecture, never from the name):
 *   llama   Llama 2/3.x, Mistral, SmolLM2: RMSNorm, SwiGLU, RoPE (with the
 *           "llama3" and "linear" scalings), GQA, tied or untied embeddings
 *   qwen2   as llama, with bias on q, k and v
 *   qwen3   as llama, with an RMSNorm over each head of q and of k (before RoPE)
 *   gemma3  Gemma 3 text (also the text part of Gemma3ForConditionalGeneration):
 *           RMSNorm as x*(1+w), GeGLU with tanh GELU, norms before and after
 *           attention and MLP, q/k norms, embeddings scaled by sqrt(dim),
 *           attention scale query_pre_attn_scalar^-1/2, sliding-window layers
 *           with their own RoPE base, tied embeddings
 *
 * In memory every tensor is in Hugging Face's layout: a projection is
 * out × in (torch Linear.weight), q and k rows in HF's rotate-half order (the
 * GGUF loader undoes llama.cpp's interleaving permutation of llama-architecture
 * q/k), norms are fp32 vectors as stored (Gemma's 1+w is applied by the op).
 */
#ifndef LORAPIPE_MODEL_H
#define LORAPIPE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "msg.h"
#include "quant.h"

enum model_arch { ARCH_LLAMA, ARCH_QWEN2, ARCH_QWEN3, ARCH_GEMMA3 };
enum model_act { ACT_SILU, ACT_GELU_TANH };
enum rope_kind { ROPE_DEFAULT, ROPE_LINEAR, ROPE_LLAMA3 };

#define MODEL_MAX_EOS 8

struct rope_config {
	enum rope_kind kind;
	double theta;
	double factor;           /* linear, llama3 */
	double low_freq_factor;  /* llama3 */
	double high_freq_factor; /* llama3 */
	int original_max_pos;    /* llama3: original_max_position_embeddings */
	/* head_dim/2 divisors of the inverse frequencies, applied after kind's
	 * scaling (GGUF's rope_freqs.weight: Llama 3.1+ carry their llama3 scaling
	 * so); NULL: none. Owned by the model_config's global rope (freed by
	 * model_config_free); rope_local may point to the same array. */
	float *freq_factors;
};

struct model_config {
	enum model_arch arch;
	int vocab;       /* rows of the embedding */
	int dim;         /* hidden_size */
	int n_layers;
	int n_heads;
	int n_kv_heads;
	int head_dim;    /* may differ from dim / n_heads (Gemma 3, Qwen3) */
	int ffn;         /* intermediate_size */
	float norm_eps;
	int norm_plus_one;   /* RMSNorm weight applied as (1 + w): Gemma */
	enum model_act act;
	int qkv_bias;        /* bias on q, k, v: Qwen2 */
	int qk_norm;         /* RMSNorm over each head of q and k: Qwen3, Gemma 3 */
	int sandwich_norm;   /* post-attention, pre- and post-feedforward norms: Gemma 3 */
	int tied_embeddings; /* the output projection is the embedding */
	float embed_scale;   /* 1, or sqrt(dim) rounded to fp32 (Gemma) */
	float attn_scale;    /* 1/sqrt(head_dim), or query_pre_attn_scalar^-1/2 */
	float attn_softcap;  /* 0: none */
	float final_softcap; /* 0: none */
	struct rope_config rope;        /* global layers */
	struct rope_config rope_local;  /* sliding-window layers (Gemma 3) */
	int sliding_window;  /* keys at most this far back, itself included: pos - key_pos < window; 0: none */
	uint8_t *layer_sliding; /* n_layers flags, 1 for a sliding-window layer; NULL when none is */
	int max_pos;         /* max_position_embeddings */
	int bos_id;          /* -1 when unknown */
	int n_eos;
	int eos_ids[MODEL_MAX_EOS]; /* from generation_config.json / config.json, or GGUF (eos, eot) */
};

const char *model_arch_name(enum model_arch a); /* "llama", "qwen2", "qwen3", "gemma3" */

struct layer_weights {
	float *attn_norm;              /* dim: input_layernorm */
	struct weight q, k, v, o;      /* q: n_heads*head_dim × dim; k, v: n_kv_heads*head_dim × dim; o: dim × n_heads*head_dim */
	float *q_bias, *k_bias, *v_bias; /* qkv_bias only */
	float *q_norm, *k_norm;        /* head_dim each; qk_norm only */
	float *post_attn_norm;         /* dim; sandwich_norm only */
	float *ffn_norm;               /* dim: post_attention_layernorm (llama naming) or pre_feedforward_layernorm (Gemma) */
	float *post_ffn_norm;          /* dim; sandwich_norm only */
	struct weight gate, up, down;  /* gate, up: ffn × dim; down: dim × ffn */
};

struct model {
	struct model_config cfg;
	struct weight embed;     /* vocab × dim */
	struct weight lm_head;   /* vocab × dim; unused (fmt F32, no data) when tied */
	float *final_norm;       /* dim */
	struct layer_weights *layers;
	char *source;            /* the path it was loaded from */
};

/* How to store what is loaded. The seven projections of every layer take
 * `linear` (QLoRA: WFMT_NF4); embeddings and the output projection take
 * `embed` (F32 or BF16; bitsandbytes never quantizes them). */
struct model_load_opts {
	enum wfmt linear;
	enum wfmt embed;
};

/* Loads a model: a folder with config.json and safetensors (one file or
 * shards), a .safetensors file with config.json beside it, or a .gguf file.
 * o may be NULL (everything fp32). Errors name the file and the tensor or
 * key: "model/config.json: num_attention_heads (7) does not divide hidden_size (64)",
 * "x.gguf: tensor blk.3.attn_q.weight: shape [64, 32], expected [64, 64]". */
struct model *model_load(const char *path, const struct model_load_opts *o, struct err *err);
void model_free(struct model *m);

/* Reads only the configuration (config.json or GGUF metadata). cfg->layer_sliding
 * is allocated: free it with model_config_free. */
int model_config_load(const char *path, struct model_config *cfg, struct err *err);
void model_config_free(struct model_config *cfg);

/* Parameters and bytes of the frozen weights (embedding and output counted
 * once when tied). */
void model_size(const struct model *m, int64_t *n_params, size_t *bytes);

/* ---- forward (lib/forward.c) ---- */

/* The head_dim/2 inverse frequencies of a RoPE, computed as transformers'
 * ROPE_INIT_FUNCTIONS do (default, linear, llama3), in fp32, then divided by
 * rc->freq_factors when there are some (as llama.cpp's rope does). */
void rope_inv_freq(const struct rope_config *rc, int head_dim, float *inv_freq);

/* Keys and values of the positions run so far, for generation. */
struct kv_cache {
	int max_seq; /* positions it can hold */
	int n;       /* positions it holds */
	int n_layers, kv_dim; /* kv_dim = n_kv_heads * head_dim */
	float *k, *v; /* n_layers × max_seq × kv_dim each */
};

struct kv_cache *kv_cache_new(const struct model_config *cfg, int max_seq, struct err *err);
void kv_cache_free(struct kv_cache *kv);

struct lora;

/* Runs tokens[0..n) at positions kv->n .. kv->n + n - 1 and appends their keys
 * and values to kv (kv NULL: a fresh sequence at positions 0 .. n - 1, nothing
 * kept), with the LoRA adapter lo applied (NULL: the base model; lib/lora.h).
 * logits receives n × vocab values when all_logits, else the last position's
 * vocab values. Returns 0, or -1 with err (a token out of the vocabulary, the
 * cache full, an adapter of another model, out of memory). */
int model_forward(const struct model *m, const struct lora *lo, struct kv_cache *kv, const int32_t *tokens, int n,
		  float *logits, int all_logits, struct err *err);

/* One decoding step of n_seq sequences at once: tokens[b] is appended to
 * sequence b at position kvs[b]->n (each sequence its own cache, none
 * shared); logits receives n_seq × vocab values. The projections read each
 * weight once for all the sequences; every value is what model_forward gives
 * the sequence alone, bit for bit. */
int model_forward_batch(const struct model *m, const struct lora *lo, struct kv_cache *const *kvs,
			const int32_t *tokens, int n_seq, float *logits, struct err *err);

#endif
