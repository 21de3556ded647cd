/* lora: a LoRA adapter in memory — which projections it adapts, its A and B
 * matrices in fp32, their gradients — and its place in the forward pass.
 *
 * For a targeted projection W (out × in) of layer l, the adapted output is
 *   y = x·Wᵀ + scale · (dropout(x)·Aᵀ)·Bᵀ,   A: rank × in, B: out × rank,
 * scale = alpha / rank, or alpha / sqrt(rank) with rsLoRA (PEFT's
 * use_rslora), exactly as PEFT's lora.Linear computes it (dropout on the
 * input of A only, training only).
 *
 * Every A and B lives in one fp32 vector, `params`, in a fixed order: layer by
 * layer, in each layer the targets in enum order (q, k, v, o, gate, up, down),
 * for each A then B. The optimizer, gradient clipping and checkpoints work on
 * that vector as a whole; `grads` has the same layout.
 *
 * Initialization as PEFT's default (init_lora_weights=True): B = 0 and A
 * Kaiming-uniform with a = sqrt(5), which is uniform in [-1/sqrt(in),
 * 1/sqrt(in)) — drawn from lib/rng.h with the seed, not torch's generator,
 * so the same seed gives the same adapter on every machine.
 */
#ifndef LORAPIPE_LORA_H
#define LORAPIPE_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "msg.h"

enum lora_target { LORA_Q, LORA_K, LORA_V, LORA_O, LORA_GATE, LORA_UP, LORA_DOWN, LORA_N_TARGETS };

struct lora_config {
	unsigned targets; /* bit (1u << LORA_Q) ... set for each adapted projection */
	int rank;
	float alpha;
	float dropout;    /* probability, training only */
	int rslora;       /* scale alpha / sqrt(rank) instead of alpha / rank */
};

/* One adapted projection: pointers into lora.params (a, b) and lora.grads
 * (ga, gb); all NULL when the projection is not targeted. */
struct lora_pair {
	float *a, *b;   /* rank × in, out × rank */
	float *ga, *gb; /* gradients, same shapes; NULL until lora_alloc_grads */
	int in, out;
};

struct lora {
	struct lora_config cfg;
	float scale;
	int n_layers;
	struct lora_pair (*pairs)[LORA_N_TARGETS]; /* n_layers rows */
	float *params;  /* n_params values */
	float *grads;   /* n_params values, or NULL */
	size_t n_params;
};

/* "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
 * and the module path under a layer: "self_attn.q_proj" ... "mlp.down_proj". */
const char *lora_target_name(enum lora_target t);
const char *lora_target_module(enum lora_target t);

/* Parses a comma-separated list of targets: short names (q,k,v,o,gate,up,down),
 * PEFT's module names (q_proj ...) or "all-linear" (all seven). Errors name
 * the unknown entry. */
int lora_targets_parse(const char *list, unsigned *targets, struct err *err);

/* An adapter for a model of configuration mc, all parameters zero. Errors:
 * rank < 1, no target, dropout outside [0, 1), out of memory. */
struct lora *lora_new(const struct model_config *mc, const struct lora_config *lc, struct err *err);
/* Draws every A as described above (B stays zero) from seed. */
void lora_init(struct lora *lo, uint64_t seed);
/* Allocates grads (zeroed). */
int lora_alloc_grads(struct lora *lo, struct err *err);
void lora_zero_grads(struct lora *lo);
void lora_free(struct lora *lo);

#endif
