/* fit: a whole LoRA / QLoRA training run — data, loop, evaluation,
 * checkpoints, resume, logs — on top of lib/train (one row's forward and
 * backward), lib/optim (AdamW, schedules, clipping) and lib/adapter (the
 * PEFT folder). bin/qlora-fit only fills struct fit_settings and calls
 * fit_run.
 *
 * DATA. Every record of the token stream is read into memory (8 bytes a
 * token). Records longer than seq_len follow `overflow`: an error naming the
 * record, the first seq_len tokens kept, or the record dropped (counted).
 * Validation: `val_file`, another stream under the same checks, or a split
 * of val_split: n_val = ceil(val_split · N) examples (at least 1, at most
 * N - 1), the first n_val of a Fisher–Yates permutation of 0..N-1 drawn with
 * rng state seed ^ FIT_SPLIT_SALT; the training examples keep stream order.
 *
 * EPOCH ORDER. Epoch e (from 0) takes the training examples in stream order,
 * shuffled (unless shuffle is 0) by Fisher–Yates over that list p[0..n):
 *     s = seed ^ (0x9e3779b97f4a7c15 · (e + 1));
 *     for i = n-1 down to 1: j = rng_below(&s, i + 1); swap(p[i], p[j])
 * (lib/rng.h, 64-bit wrapping arithmetic).
 *
 * ROWS. Packing: a row takes the next examples in epoch order while their
 * total length stays <= seq_len (greedy, no reordering); each example
 * restarts its positions and attends only to itself (train.h). No packing:
 * one example per row, unpadded (padding after an example changes neither
 * its logits nor the loss: attention is causal and pads are not learned).
 *
 * STEPS. A micro-batch is the next `batch` rows, a window the next
 * grad_accum micro-batches; each window makes one optimizer step. Windows
 * never cross an epoch; the last one of an epoch may be short. Before the
 * window's backward passes its learned tokens L are counted
 * (train_batch_learned); each row runs train_step with grad_scale 1/L, so
 * the gradient is d(sum of the window's token losses)/dθ / L (DESIGN.md,
 * trap 5), and the logged loss is that sum / L. Then clip_grad_norm (torch's,
 * per lora tensor; skipped with max_grad_norm 0: the norm is still logged),
 * then adamw_step with lr_at(step) for the 0-based optimizer step. A window
 * with no learned token makes a step with a zero gradient.
 * Dropout: each row (each train_step) takes seed rng_next(&r) from the run's
 * stream r, which starts at seed ^ FIT_DROPOUT_SALT and is saved in
 * checkpoints. Total steps: max_steps when > 0 (epochs then repeat as
 * needed), else the windows of `epochs` epochs.
 *
 * EVALUATION. The validation loss is the sum over the validation examples'
 * learned tokens of -log p over their count, each example alone in a row,
 * no dropout (train_eval: train.h's forward pass and loss, no backward).
 * It runs after optimizer step s when eval_steps > 0 and s % eval_steps == 0,
 * when eval_steps is 0 after the last step of each epoch, and after the
 * last step. The adapter with the lowest validation loss is kept in best/.
 *
 * OUTPUT (out/): adapter_config.json + adapter_model.safetensors (the final
 * adapter, lora_save_peft), training_args.json (every resolved setting, the
 * fingerprints), log.jsonl (one line per logged step: step, epoch, loss, lr,
 * grad_norm, learned_tokens, tokens_per_s, ms_per_step, mem_mb; eval lines
 * step, epoch, val_loss, val_tokens), best/ and checkpoint-STEP/.
 *
 * CHECKPOINTS. checkpoint-STEP/ (STEP = optimizer steps done) holds the
 * adapter files, optimizer.safetensors (adamw_save) and state.json:
 *     {"format":"lorapipe-checkpoint","version":1,"step":S,"epoch":E,
 *      "window":W,"rng":"<16 hex digits>","log_bytes":B,
 *      "best_val_loss":x|null,"best_step":k,"eval_pending":false,
 *      "fingerprints":{"settings":..,"model":..,"data":..},"settings":{...}}
 * (E, W: the next window to run; B: the length of log.jsonl then). A
 * checkpoint is written as a hidden folder and renamed into place, so it is
 * whole or absent; every save_steps steps and after the last; the newest
 * two are kept. resume continues from the newest: a different settings,
 * model or data fingerprint is refused (naming the first differing setting)
 * unless force. A run killed and resumed ends with the same bytes as one
 * that was not (cpu backend, same thread count). An interrupt (msg_interrupted)
 * drops the window in progress, writes the checkpoint of the last finished
 * step and returns FIT_INTERRUPTED.
 *
 * Console: the start-up table, the step lines, notes and the progress bar go
 * to settings.console (the caller's stderr; NULL: silent); nothing else is
 * printed. For tests, the environment variable LORAPIPE_FIT_TEST_SIGNAL=
 * KILL@S, INT@S or TERM@S raises that signal after the first row of the
 * window that follows optimizer step S.
 *
 * Fingerprints (FNV-1a 64): data: the vocabulary size, tokenizer fingerprint
 * and every record of the training and validation streams; model: config.json
 * and each weight file's name, size, first and last MiB; settings: the
 * settings that change the trained adapter (not threads, logging, saving,
 * eval_steps, output or console options).
 */
#ifndef LORAPIPE_FIT_H
#define LORAPIPE_FIT_H

#include <stdint.h>
#include <stdio.h>

#include "msg.h"
#include "optim.h"
#include "quant.h"

#define FIT_SPLIT_SALT 0x76616c5f73706c74ull   /* "val_splt" */
#define FIT_DROPOUT_SALT 0x64726f706f757473ull /* "dropouts" */
#define FIT_INTERRUPTED 130                   /* fit_run's status after an interrupt */

enum fit_overflow { FIT_OVERFLOW_ERROR, FIT_OVERFLOW_TRUNCATE, FIT_OVERFLOW_DROP };
enum fit_ckpt { FIT_CKPT_AUTO, FIT_CKPT_ON, FIT_CKPT_OFF };

struct fit_settings {
	const char *model, *data, *out;
	const char *val_file;     /* NULL: none */
	const char *init_adapter; /* NULL: a fresh adapter from seed */
	int64_t epochs;           /* 1 */
	int64_t max_steps;        /* 0: from epochs */
	double lr;                /* 2e-4 */
	enum lr_kind scheduler;   /* LR_COSINE */
	int64_t warmup_steps;     /* -1: from warmup_ratio */
	double warmup_ratio;      /* 0 */
	double min_lr_ratio;      /* 0.1 (cosine_with_min_lr) */
	struct adamw_hparams adam; /* 0.9, 0.999, 1e-8, weight decay 0 */
	double max_grad_norm;     /* 1; 0: no clipping */
	int rank;                 /* 16 */
	double alpha;             /* 32 */
	double dropout;           /* 0.05 */
	int rslora;
	unsigned targets;         /* lora.h bits; all seven */
	/* which of rank, alpha, targets, rslora were given (flags or config): an
	 * init adapter's differing value is then an error */
	int given_rank, given_alpha, given_targets, given_rslora;
	int seq_len;              /* 0: min(2048, the model's context) */
	int batch, grad_accum;    /* 1, 1 */
	int packing, shuffle;     /* 1, 1 */
	enum fit_overflow overflow;
	enum wfmt quant;          /* linear weights: WFMT_NF4 */
	double val_split;         /* 0: none */
	int64_t eval_steps;       /* 0: each epoch's end */
	int64_t save_steps;       /* 0: only at the end */
	int64_t logging_steps;    /* 1 */
	enum fit_ckpt checkpointing;
	uint64_t seed;            /* 42 */
	const char *device;       /* "cpu" (the caller resolved auto) */
	int threads;              /* 0: all cores */
	int resume, force;
	/* console: start-up table, step lines, notes (NULL: silent) */
	FILE *console;
	int progress;             /* progress_start's mode */
	const char *config_file;  /* recorded in training_args.json */
};

/* The defaults listed above. */
void fit_settings_default(struct fit_settings *s);

/* The whole run. Returns 0 when done, FIT_INTERRUPTED after an interrupt
 * (err then says which checkpoint was written), or -1 with err (code EXIT_USAGE for bad settings
 * or input — then nothing is written —, EXIT_RUNTIME otherwise, a memory
 * estimate over what is available included). */
int fit_run(const struct fit_settings *s, struct err *err);

#endif
