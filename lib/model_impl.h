/* model_impl: what the two loaders (lib/model.c for Hugging Face folders,
 * lib/model_gguf.c for GGUF files) share. Private to lib/model*.c. */
#ifndef LORAPIPE_MODEL_IMPL_H
#define LORAPIPE_MODEL_IMPL_H

#include "gguf.h"
#include "model.h"

/* The names a source gives the sizes, for messages: "config.json" names
 * "hidden_size", GGUF names "llama.embedding_length". */
struct cfg_keys {
	char vocab[64], dim[64], n_layers[64], n_heads[64], n_kv_heads[64], head_dim[64], ffn[64], eps[64],
		rope_theta[64], window[64];
};

/* Checks the sizes of a filled configuration (positive, heads divisible,
 * head_dim even, bounded so that every product fits); errors read
 * "NAME: KEY ...". */
int model_config_check(const struct model_config *cfg, const char *name, const struct cfg_keys *keys,
		       struct err *err);

/* A model with cfg (taken over, layer_sliding and rope.freq_factors included:
 * cfg is cleared) and its layer array, every tensor empty. */
struct model *model_new(struct model_config *cfg, const char *source, struct err *err);

/* The load options with NULL made explicit (everything fp32), checked. */
int model_opts(const struct model_load_opts *o, struct model_load_opts *out, struct err *err);

/* A scratch buffer of at least n floats, grown as needed (reused across
 * tensors so a load holds one fp32 tensor at a time beside the model). */
struct scratch {
	float *p;
	size_t n;
};
float *scratch_get(struct scratch *s, size_t n, struct err *err);
/* Frees it: after the embedding and the output projection, by far the
 * largest tensors, so that their fp32 copy does not stay beside the model. */
void scratch_release(struct scratch *s);

/* The GGUF side (lib/model_gguf.c). */
int model_gguf_config(const struct gguf *g, struct model_config *cfg, struct err *err);
struct model *model_gguf_load(const char *path, const struct model_load_opts *o, struct err *err);

#endif
