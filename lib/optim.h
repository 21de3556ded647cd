/* optim: AdamW, the learning-rate schedules and gradient clipping, on one flat
 * fp32 parameter vector (lora.params / lora.grads), computed as the Python
 * stack computes them so that a run can be checked against it step by step.
 *
 * AdamW is torch.optim.AdamW (torch 2.15; amsgrad, maximize off) on its
 * single-tensor CPU path, operation by operation in fp32 with the scalars
 * rounded where torch rounds them (Python doubles, cast to fp32 when they
 * meet a tensor), and the two fused multiply-adds of torch's vectorized
 * kernels (lerp_, addcmul_) fused here too (fmaf):
 *   p  = p * (float)(1 - lr·wd)                       (only when wd != 0)
 *   m  = fma(w, g - m, m), w = (float)(1 - beta1)      (lerp; fma(w - 1, g - m, g) when w >= 0.5)
 *   v  = fma((float)(1 - beta2) · g, g, v * (float)beta2)
 *   bc1 = 1 - beta1^t,  bc2 = 1 - beta2^t            (double, t = step after incrementing)
 *   d  = sqrt(v) / (float)bc2^0.5 + (float)eps
 *   p  = p + ((float)(-lr / bc1) · m) / d
 * m and v come out bit-identical to torch's. p can differ in the last bit
 * now and then: our sqrt is IEEE's correctly rounded one, while torch on x86
 * takes MKL's vectorized sqrt, which is off by one unit in the last place for
 * about one value in six (tests/ref/test_optim_torch.py measures both, and
 * checks that with a correctly rounded sqrt torch's own ops give our p bit
 * for bit). transformers' Trainer picks "adamw_torch_fused" by default with
 * torch >= 2.8; that CPU kernel takes a correctly rounded sqrt and agrees with
 * us on all but a few values in ten thousand after 60 steps (measured by the
 * same test).
 *
 * State: the moments m (exp_avg) and v (exp_avg_sq), n fp32 each, and the
 * step count. adamw_save writes them as a safetensors file (tensors
 * "exp_avg" and "exp_avg_sq", F32, shape [n]; metadata "format":
 * "lorapipe-adamw", "version": "1", "step": decimal), readable by any
 * safetensors reader; adamw_load checks all of it.
 *
 * Schedules are transformers 4.57's get_scheduler lambdas times the base lr,
 * as LambdaLR applies them: the lr of optimizer step s (0-based: the Trainer
 * steps the scheduler after each optimizer step, so step 0 uses lambda(0)).
 *
 * Clipping is torch.nn.utils.clip_grad_norm_ (norm 2): the norm of each
 * tensor in fp32 as torch's CPU reduction computes it (eight fp32 lanes over
 * whole groups of eight, the lanes added in order, then the tail), the norm
 * of those norms the same way, then coef = min(1, (1 / (total + 1e-6)) ·
 * max_norm) in fp32 and g *= coef: norm and clipped gradients bit-identical
 * to torch 2.15 on x86-64 (tests/ref/test_optim_torch.py). "Tensor" means a
 * segment of the flat vector: pass the lengths of the separate parameters
 * (each lora A and B: lora_segments) to reduce as torch reduces its
 * parameter list.
 */
#ifndef LORAPIPE_OPTIM_H
#define LORAPIPE_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "msg.h"

struct lora;

struct adamw_hparams {
	double beta1, beta2; /* torch's defaults 0.9, 0.999 */
	double eps;          /* 1e-8 */
	double weight_decay; /* decoupled; torch's default 0.01, the Trainer's 0 */
};

struct adamw {
	size_t n;
	int64_t step; /* updates done */
	float *m;     /* exp_avg, n */
	float *v;     /* exp_avg_sq, n */
};

/* Moments zero, step 0. NULL with err when out of memory. */
struct adamw *adamw_new(size_t n, struct err *err);
void adamw_free(struct adamw *o);

/* One update of params[0..n) with grads[0..n) at learning rate lr (the
 * schedule's value for this step). */
void adamw_step(struct adamw *o, float *params, const float *grads, double lr, const struct adamw_hparams *h);

/* Writes the state to path atomically (outfile). */
int adamw_save(const struct adamw *o, const char *path, struct err *err);
/* Reads a state written by adamw_save; refuses another format, version, a
 * length other than n (when n > 0), non-finite moments. Errors name the file. */
struct adamw *adamw_load(const char *path, size_t n, struct err *err);

/* ---- learning-rate schedules ---- */

enum lr_kind {
	LR_CONSTANT,   /* "constant_with_warmup" */
	LR_LINEAR,     /* "linear" */
	LR_COSINE,     /* "cosine" (num_cycles 0.5) */
	LR_COSINE_MIN, /* "cosine_with_min_lr": floor min_lr_rate · lr */
};

struct lr_schedule {
	enum lr_kind kind;
	double lr;          /* the base (peak) learning rate */
	int64_t warmup;     /* warm-up steps; the Trainer's ceil(total · warmup_ratio) when given a ratio */
	int64_t total;      /* training steps (optimizer updates) */
	double num_cycles;  /* cosine kinds; 0.5 is a half cosine down to the floor */
	double min_lr_rate; /* LR_COSINE_MIN; from an absolute min_lr: min_lr / lr, as transformers computes it */
};

/* "constant_with_warmup", "linear", "cosine", "cosine_with_min_lr"; -1 with err otherwise. */
int lr_kind_parse(const char *name, enum lr_kind *kind, struct err *err);
const char *lr_kind_name(enum lr_kind kind);
/* The learning rate of optimizer step `step` (0-based). */
double lr_at(const struct lr_schedule *s, int64_t step);

/* ---- gradient clipping ---- */

/* The 2-norm of the n_seg segments of g (lengths seg_len; NULL: one segment
 * of n) as clip_grad_norm_ computes it, in fp32. */
float grad_norm(const float *g, size_t n, const size_t *seg_len, size_t n_seg);
/* Scales g by min(1, max_norm / (norm + 1e-6)) as torch does and returns
 * the norm before clipping (what the training log prints). A non-finite
 * norm scales by NaN as torch does (error_if_nonfinite=False); callers check
 * the returned norm. */
float clip_grad_norm(float *g, size_t n, const size_t *seg_len, size_t n_seg, double max_norm);

/* The lengths of lo's tensors in torch's parameter order (layer, target, A
 * then B), into len (2 · targeted pairs values; NULL: only counted).
 * Returns the count. */
size_t lora_segments(const struct lora *lo, size_t *len);

#endif
