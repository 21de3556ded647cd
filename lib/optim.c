/* optim: AdamW, schedules, clipping (see optim.h for the arithmetic and why
 * each rounding is where it is). */
#include "optim.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora.h"
#include "safetensors.h"

struct adamw *adamw_new(size_t n, struct err *err)
{
	struct adamw *o = calloc(1, sizeof *o);
	if (!o)
		return err_sys(err, "adamw:"), NULL;
	o->n = n;
	o->m = calloc(n ? n : 1, sizeof(float));
	o->v = calloc(n ? n : 1, sizeof(float));
	if (!o->m || !o->v) {
		adamw_free(o);
		return err_sys(err, "adamw: state of %zu parameters:", n), NULL;
	}
	return o;
}

void adamw_free(struct adamw *o)
{
	if (!o)
		return;
	free(o->m);
	free(o->v);
	free(o);
}

/* torch's vectorized lerp (aten/src/ATen/native/cpu/LerpKernel.cpp, lerp_vec):
 * one fused multiply-add from the nearer end. fmaf is exact on every machine
 * (libm emulates it where the processor has none). */
static inline float lerp_fused(float start, float end, float w)
{
	return fabsf(w) < 0.5f ? fmaf(w, end - start, start) : fmaf(w - 1.0f, end - start, end);
}

void adamw_step(struct adamw *o, float *params, const float *grads, double lr, const struct adamw_hparams *h)
{
	o->step++;
	const double t = (double)o->step;
	/* Python scalars: doubles, rounded to fp32 by the tensor op they feed. */
	const float decay = (float)(1 - lr * h->weight_decay);
	const float w1 = (float)(1 - h->beta1);
	const float b2 = (float)h->beta2, one_minus_b2 = (float)(1 - h->beta2);
	const double bc1 = 1 - pow(h->beta1, t), bc2 = 1 - pow(h->beta2, t);
	const float bc2_sqrt = (float)pow(bc2, 0.5); /* Python's bc2 ** 0.5 is C pow */
	const float neg_step_size = (float)(-(lr / bc1));
	const float eps = (float)h->eps;
	const int decays = h->weight_decay != 0;
	for (size_t i = 0; i < o->n; i++) {
		float p = params[i], g = grads[i];
		if (decays)
			p = p * decay;
		float m = lerp_fused(o->m[i], g, w1);
		/* torch's vectorized addcmul_: fmadd(value · g, g, v) */
		float v = fmaf(one_minus_b2 * g, g, o->v[i] * b2);
		float denom = sqrtf(v) / bc2_sqrt + eps;
		params[i] = p + neg_step_size * m / denom;
		o->m[i] = m;
		o->v[i] = v;
	}
}

/* ---- state files ---- */

#define ADAMW_FORMAT "lorapipe-adamw"
#define ADAMW_VERSION "1"

int adamw_save(const struct adamw *o, const char *path, struct err *err)
{
	char step[32];
	snprintf(step, sizeof step, "%" PRId64, o->step);
	const char *meta[] = {"format", ADAMW_FORMAT, "version", ADAMW_VERSION, "step", step, NULL};
	struct st_out t[2] = {
		{"exp_avg", ST_F32, 1, {(int64_t)o->n}, o->m},
		{"exp_avg_sq", ST_F32, 1, {(int64_t)o->n}, o->v},
	};
	return st_write(path, t, 2, meta, err);
}

/* Tensor name of st, F32 of shape [n] (any n when want is 0), all finite
 * (v also not negative), into dst (allocated when *dst is NULL). */
static int load_moment(const struct safetensors *st, const char *path, const char *name, size_t want, int nonneg,
		       size_t *n, float **dst, struct err *err)
{
	const struct st_tensor *t = st_find(st, name);
	if (!t)
		return err_set(err, "%s: tensor '%s' is missing", path, name);
	if (t->dtype != ST_F32 || t->n_dims != 1)
		return err_set(err, "%s: tensor '%s': expected F32 of one dimension", path, name);
	if (want && (uint64_t)t->shape[0] != want)
		return err_set(err, "%s: tensor '%s': %" PRId64 " values, the parameters are %zu", path, name,
			       t->shape[0], want);
	if (*n != (size_t)-1 && (size_t)t->shape[0] != *n)
		return err_set(err, "%s: tensors 'exp_avg' and 'exp_avg_sq' differ in length", path);
	*n = (size_t)t->shape[0];
	if (!*dst && !(*dst = calloc(*n ? *n : 1, sizeof(float))))
		return err_sys(err, "%s:", path);
	if (st_read_f32(t, 0, t->shape[0], *dst, err) < 0)
		return err_wrap(err, "%s", path);
	for (size_t i = 0; i < *n; i++)
		if (!isfinite((*dst)[i]) || (nonneg && (*dst)[i] < 0))
			return err_set(err, "%s: tensor '%s': value %zu is %g", path, name, i, (double)(*dst)[i]);
	return 0;
}

struct adamw *adamw_load(const char *path, size_t n, struct err *err)
{
	struct safetensors *st = st_open(path, err);
	if (!st)
		return NULL;
	struct adamw *o = NULL;
	float *m = NULL, *v = NULL;
	size_t len = (size_t)-1;
	const char *fmt = st_metadata(st, "format"), *ver = st_metadata(st, "version"), *step = st_metadata(st, "step");
	char *end = NULL;
	long long s = step ? strtoll(step, &end, 10) : -1;
	if (!fmt || strcmp(fmt, ADAMW_FORMAT)) {
		err_set(err, "%s: not an AdamW state (metadata format is %s%s%s, expected \"" ADAMW_FORMAT "\")", path,
			fmt ? "\"" : "", fmt ? fmt : "missing", fmt ? "\"" : "");
		goto fail;
	}
	if (!ver || strcmp(ver, ADAMW_VERSION)) {
		err_set(err, "%s: AdamW state version %s, this build reads " ADAMW_VERSION, path, ver ? ver : "missing");
		goto fail;
	}
	if (!step || !*step || *end || s < 0) {
		err_set(err, "%s: metadata step '%s' is not a count", path, step ? step : "");
		goto fail;
	}
	if (load_moment(st, path, "exp_avg", n, 0, &len, &m, err) < 0 ||
	    load_moment(st, path, "exp_avg_sq", n, 1, &len, &v, err) < 0)
		goto fail;
	if (st_n_tensors(st) != 2) {
		err_set(err, "%s: %" PRId64 " tensors, expected exp_avg and exp_avg_sq only", path, st_n_tensors(st));
		goto fail;
	}
	if (!(o = calloc(1, sizeof *o))) {
		err_sys(err, "%s:", path);
		goto fail;
	}
	o->n = len, o->step = s, o->m = m, o->v = v;
	st_close(st);
	return o;
fail:
	free(m);
	free(v);
	st_close(st);
	return NULL;
}

/* ---- schedules ---- */

static const char *const lr_names[] = {"constant_with_warmup", "linear", "cosine", "cosine_with_min_lr"};

int lr_kind_parse(const char *name, enum lr_kind *kind, struct err *err)
{
	for (int k = 0; k < (int)(sizeof lr_names / sizeof lr_names[0]); k++)
		if (!strcmp(name, lr_names[k])) {
			*kind = (enum lr_kind)k;
			return 0;
		}
	return err_set(err, "unknown learning-rate schedule '%s' (linear, cosine, cosine_with_min_lr, "
			    "constant_with_warmup)", name);
}

const char *lr_kind_name(enum lr_kind kind) { return lr_names[kind]; }

static int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }

/* transformers/optimization.py's lambdas, term by term in Python's order
 * (doubles; Python's int → float conversions are exact below 2^53). */
static double lr_lambda(const struct lr_schedule *s, int64_t step)
{
	if (step < s->warmup)
		return (double)step / (double)max_i64(1, s->warmup);
	switch (s->kind) {
	case LR_CONSTANT:
		return 1.0;
	case LR_LINEAR: {
		double f = (double)(s->total - step) / (double)max_i64(1, s->total - s->warmup);
		return f > 0.0 ? f : 0.0;
	}
	default: {
		/* One function serves both cosines in 4.57 (min_lr_rate 0 for plain cosine). */
		double rate = s->kind == LR_COSINE_MIN ? s->min_lr_rate : 0.0;
		double progress = (double)(step - s->warmup) / (double)max_i64(1, s->total - s->warmup);
		double f = 0.5 * (1.0 + cos(M_PI * s->num_cycles * 2.0 * progress));
		f = f * (1 - rate) + rate;
		return f > 0 ? f : 0.0;
	}
	}
}

double lr_at(const struct lr_schedule *s, int64_t step) { return s->lr * lr_lambda(s, step); }

/* ---- clipping ---- */

/* torch's CPU 2-norm of a contiguous fp32 tensor (ReduceOpsKernel.cpp, the
 * last-dimension vectorized path): eight fp32 lanes of x² sums over whole
 * groups of eight, the lanes added in order, then the tail, then the square
 * root in fp32. The tail is a scalar loop as torch's compiler emitted it:
 * four plain multiply-then-add steps when four or more elements remain, then
 * fused multiply-adds (found by matching torch 2.15 on x86-64 bit for bit). */
#define NORM_LANES 8
static float norm_tail(float sum, const float *x, size_t n)
{
	size_t d = 0;
	if (n >= 4)
		for (; d < 4; d++)
			sum = sum + x[d] * x[d];
	for (; d < n; d++)
		sum = fmaf(x[d], x[d], sum);
	return sum;
}

static float norm_fp32(const float *x, size_t n)
{
	float lane[NORM_LANES] = {0};
	size_t d = 0;
	for (; d + NORM_LANES <= n; d += NORM_LANES)
		for (int j = 0; j < NORM_LANES; j++)
			lane[j] = lane[j] + x[d + j] * x[d + j];
	float sum = lane[0];
	for (int j = 1; j < NORM_LANES; j++)
		sum = sum + lane[j];
	return sqrtf(norm_tail(sum, x + d, n - d));
}

float grad_norm(const float *g, size_t n, const size_t *seg_len, size_t n_seg)
{
	if (!seg_len)
		n_seg = 1;
	/* torch stacks the tensors' norms and takes the norm of that vector:
	 * the same reduction, fed here as the norms come (whole groups of eight
	 * into the lanes, the rest kept for after the lanes are added). */
	const size_t whole = n_seg - n_seg % NORM_LANES;
	float lane[NORM_LANES] = {0}, rest[NORM_LANES];
	size_t at = 0;
	for (size_t i = 0; i < n_seg; i++) {
		size_t len = seg_len ? seg_len[i] : n;
		float x = norm_fp32(g + at, len);
		at += len;
		if (i < whole)
			lane[i % NORM_LANES] = lane[i % NORM_LANES] + x * x;
		else
			rest[i - whole] = x;
	}
	float sum = lane[0];
	for (int j = 1; j < NORM_LANES; j++)
		sum = sum + lane[j];
	return sqrtf(norm_tail(sum, rest, n_seg - whole));
}

float clip_grad_norm(float *g, size_t n, const size_t *seg_len, size_t n_seg, double max_norm)
{
	float total = grad_norm(g, n, seg_len, n_seg);
	/* max_norm / tensor is tensor.reciprocal() * max_norm in torch. */
	float coef = (1.0f / (total + (float)1e-6)) * (float)max_norm;
	if (coef > 1.0f) /* torch.clamp(max=1.0) keeps a NaN */
		coef = 1.0f;
	for (size_t i = 0; i < n; i++)
		g[i] = g[i] * coef;
	return total;
}

size_t lora_segments(const struct lora *lo, size_t *len)
{
	size_t k = 0;
	for (int l = 0; l < lo->n_layers; l++)
		for (int t = 0; t < LORA_N_TARGETS; t++) {
			const struct lora_pair *p = &lo->pairs[l][t];
			if (!p->a)
				continue;
			if (len) {
				len[k] = (size_t)lo->cfg.rank * (size_t)p->in;
				len[k + 1] = (size_t)lo->cfg.rank * (size_t)p->out;
			}
			k += 2;
		}
	return k;
}
