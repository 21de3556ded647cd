/* train: the forward and backward pass of one micro-batch of LoRA training
 * on the cpu backend — the loss and the gradients of the adapter's A and B.
 * The frozen base gets no gradients. The trainer loop (optimizer, schedule,
 * accumulation, checkpoints) calls train_step once per micro-batch.
 *
 * A micro-batch is one row of n tokens holding one or more examples packed
 * back to back. Each example restarts its positions at 0 and attends only to
 * its own tokens. Labels follow transformers' convention: labels[t] is the
 * token learned at position t, predicted from the logits of position t - 1
 * of the same example (the first label of an example is never learned: the
 * shift happens inside each example, as if every example ran alone);
 * a negative label (-100) is not learned.
 *
 * The loss of a step is the sum over learned tokens of -log p(label); the
 * gradients are those of that sum times grad_scale, which the caller sets to
 * 1 / (learned tokens of the whole accumulation window) (DESIGN.md, known
 * trap 5), and are added to lo->grads: zero them once per optimizer step
 * (lora_zero_grads), not per micro-batch.
 *
 * The order of operations is lib/forward.c's (a test checks that the logits
 * of train_logits equal model_forward's). Activations kept per layer: its
 * input, the normed inputs of both blocks, q/k before their norm (Qwen3,
 * Gemma 3), q and k after RoPE, v, the attention output, the outputs of o
 * and down before their norms (Gemma 3), the residual between the blocks,
 * gate, up and act(gate)·up, and x·Aᵀ of each adapted projection. With
 * gradient checkpointing only each layer's input is kept, and the layer is
 * run again during the backward pass. Dropout masks are drawn from
 * lib/rng.h with a seed per step and redrawn, not stored, for the backward
 * pass (dropout 0 draws nothing).
 */
#ifndef LORAPIPE_TRAIN_H
#define LORAPIPE_TRAIN_H

#include <stdint.h>

#include "lora.h"
#include "model.h"
#include "msg.h"

struct train_batch {
	int n;                 /* tokens in the row */
	const int32_t *tokens; /* n */
	const int32_t *labels; /* n; negative: not learned */
	int n_examples;        /* examples packed in the row (0 is taken as 1) */
	const int32_t *starts; /* n_examples offsets of their first tokens: starts[0] = 0, increasing;
				  NULL: one example */
};

struct train_opts {
	int checkpointing; /* keep only each layer's input; recompute the layer in the backward pass */
	int logit_rows;    /* rows of logits computed at once (memory: 2 × logit_rows × vocab floats);
			      0: 2^22 / vocab, within [8, 256] */
};

struct train_result {
	double loss_sum;   /* sum over learned tokens of -log p(label) */
	int64_t n_learned; /* learned tokens */
};

struct trainer;

/* A trainer for micro-batches of up to max_tokens tokens, model m, adapter
 * lo (its grads are allocated when they are not). Both must outlive the
 * trainer; the adapter's parameters may change between steps. o may be NULL
 * (no checkpointing). Errors: an adapter of another model, out of memory
 * (the message gives the size). */
struct trainer *trainer_new(const struct model *m, struct lora *lo, int max_tokens, const struct train_opts *o,
			    struct err *err);
void trainer_free(struct trainer *tr);

/* Bytes the trainer holds (activations and scratch), for the reports. */
size_t trainer_bytes(const struct trainer *tr);

/* The tokens of b that are learned: those with a label >= 0 that are not the
 * first of their example (the normalizer counts these). */
int64_t train_batch_learned(const struct train_batch *b);

/* Forward and backward of b: res gets the loss sum and the learned tokens;
 * lo->grads += grad_scale · d(loss sum)/d(A, B). dropout_seed seeds the
 * masks of this step (draw it from the run's lib/rng.h stream). d_embed:
 * NULL, or n × dim floats that receive the gradient with respect to the
 * input embeddings after their scaling (Gemma's sqrt(dim)), i.e. transformers'
 * inputs_embeds, times grad_scale. Errors: a token outside the vocabulary, a
 * bad batch (n, starts), out of memory. */
int train_step(struct trainer *tr, const struct train_batch *b, float grad_scale, uint64_t dropout_seed,
	       struct train_result *res, float *d_embed, struct err *err);

/* The loss of b without gradients and without dropout (validation): the
 * forward pass of train_step and its loss, nothing added to lo->grads. */
int train_eval(struct trainer *tr, const struct train_batch *b, struct train_result *res, struct err *err);

/* The training forward pass alone, without dropout: logits[n × vocab] of
 * every position (for tests: it must equal model_forward's). */
int train_logits(struct trainer *tr, const struct train_batch *b, float *logits, struct err *err);

#endif
