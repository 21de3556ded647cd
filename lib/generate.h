/* generate: text generation with a KV cache — greedy or sampled (temperature,
 * top-k, top-p, seed), stopping at end-of-sequence tokens or stop strings,
 * streaming decoded text, several prompts in one call, decoded in batches.
 *
 * Greedy picks the highest logit, the lowest id among equals (llama.cpp's and
 * torch.argmax's rule). Sampling applies, in this order, top-k, temperature,
 * softmax, top-p (the smallest set of most likely tokens whose probability
 * reaches top_p, at least one), then draws from what is left with the
 * generator seeded by seed (one stream per prompt: seed + prompt index), so
 * the same seed gives the same text.
 */
#ifndef LORAPIPE_GENERATE_H
#define LORAPIPE_GENERATE_H

#include <stdint.h>

#include "model.h"
#include "tokenizer.h"

struct gen_opts {
	const struct lora *lora; /* adapter applied to the model; NULL: none */
	int max_new;         /* tokens to generate at most per prompt */
	int batch;           /* prompts decoded together (0 or 1: one at a time) */
	float temperature;   /* 0: greedy */
	int top_k;           /* 0: off */
	float top_p;         /* 1: off */
	uint64_t seed;
	const int32_t *stop_ids; /* end tokens besides the model's EOS list; the end token is not part of the text */
	int n_stop_ids;
	const char *const *stop; /* stop strings: the text ends before the first one */
	int n_stop;
	/* Called with each piece of text as soon as it is final (a stop string
	 * may still cut what follows); NULL for none. */
	void (*on_text)(void *ctx, int prompt, const char *text, size_t len);
	void *ctx;
};

enum gen_stop { GEN_EOS, GEN_STOP_STRING, GEN_LENGTH };

struct gen_result {
	int32_t *ids;   /* generated ids, the end token excluded */
	int n_ids;
	char *text;     /* decoded, cut at a stop string; NUL-terminated */
	size_t len;
	enum gen_stop stop;
};

/* Generates a continuation of each of n prompts (token ids, BOS already in
 * place when the template puts it there). results[0..n) are filled; free them
 * with gen_result_free. Returns 0, or -1 with err. */
int generate(const struct model *m, const struct tokenizer *tk, const int32_t *const *prompts, const int *lens,
	     int n, const struct gen_opts *o, struct gen_result *results, struct err *err);
void gen_result_free(struct gen_result *r);

/* Picks the next token from vocab logits (modified in place) as described
 * above; rng is the generator state (updated). Exposed for tests. */
int32_t gen_sample(float *logits, int vocab, const struct gen_opts *o, uint64_t *rng);

#endif
