/* lora: the adapter in memory (see lora.h). */
#include "lora.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

static const char *const short_names[LORA_N_TARGETS] = {"q", "k", "v", "o", "gate", "up", "down"};
static const char *const names[LORA_N_TARGETS] = {"q_proj", "k_proj", "v_proj", "o_proj",
						  "gate_proj", "up_proj", "down_proj"};
static const char *const modules[LORA_N_TARGETS] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
						    "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
						    "mlp.down_proj"};

const char *lora_target_name(enum lora_target t) { return names[t]; }
const char *lora_target_module(enum lora_target t) { return modules[t]; }

int lora_targets_parse(const char *list, unsigned *targets, struct err *err)
{
	unsigned mask = 0;
	const char *p = list;
	for (;;) {
		size_t len = strcspn(p, ",");
		if (len == 10 && !memcmp(p, "all-linear", 10)) {
			mask |= (1u << LORA_N_TARGETS) - 1;
		} else {
			int found = -1;
			for (int t = 0; t < LORA_N_TARGETS && found < 0; t++)
				if ((strlen(short_names[t]) == len && !memcmp(p, short_names[t], len)) ||
				    (strlen(names[t]) == len && !memcmp(p, names[t], len)))
					found = t;
			if (found < 0)
				return err_set(err, "lora targets: unknown target '%.*s' (q, k, v, o, gate, up, down, "
						    "their _proj names, or all-linear)",
					       (int)len, p);
			mask |= 1u << found;
		}
		if (!p[len])
			break;
		p += len + 1;
	}
	*targets = mask;
	return 0;
}

/* in and out of projection t in a model of configuration mc */
static void shape(const struct model_config *mc, int t, int *in, int *out)
{
	const int qd = mc->n_heads * mc->head_dim, kvd = mc->n_kv_heads * mc->head_dim;
	switch (t) {
	case LORA_Q: *in = mc->dim, *out = qd; break;
	case LORA_K:
	case LORA_V: *in = mc->dim, *out = kvd; break;
	case LORA_O: *in = qd, *out = mc->dim; break;
	case LORA_GATE:
	case LORA_UP: *in = mc->dim, *out = mc->ffn; break;
	default: *in = mc->ffn, *out = mc->dim; break;
	}
}

struct lora *lora_new(const struct model_config *mc, const struct lora_config *lc, struct err *err)
{
	if (lc->rank < 1)
		return err_set(err, "lora: rank %d is not positive", lc->rank), NULL;
	if (!(lc->targets & ((1u << LORA_N_TARGETS) - 1)))
		return err_set(err, "lora: no projection is targeted"), NULL;
	if (!(lc->dropout >= 0 && lc->dropout < 1))
		return err_set(err, "lora: dropout %g is outside [0, 1)", lc->dropout), NULL;
	if (!(lc->alpha > 0) || !isfinite(lc->alpha))
		return err_set(err, "lora: alpha %g is not a positive number", lc->alpha), NULL;
	if (mc->n_layers < 1)
		return err_set(err, "lora: the model has %d layers", mc->n_layers), NULL;
	struct lora *lo = calloc(1, sizeof *lo);
	if (!lo)
		return err_sys(err, "lora:"), NULL;
	lo->cfg = *lc;
	lo->scale = lc->rslora ? lc->alpha / sqrtf((float)lc->rank) : lc->alpha / (float)lc->rank;
	lo->n_layers = mc->n_layers;
	size_t n = 0;
	for (int l = 0; l < mc->n_layers; l++)
		for (int t = 0; t < LORA_N_TARGETS; t++)
			if (lc->targets & (1u << t)) {
				int in, out;
				shape(mc, t, &in, &out);
				n += (size_t)lc->rank * ((size_t)in + (size_t)out);
			}
	lo->n_params = n;
	lo->pairs = calloc((size_t)mc->n_layers, sizeof *lo->pairs);
	lo->params = calloc(n, sizeof(float));
	if (!lo->pairs || !lo->params) {
		lora_free(lo);
		return err_sys(err, "lora: %zu parameters:", n), NULL;
	}
	float *p = lo->params;
	for (int l = 0; l < mc->n_layers; l++)
		for (int t = 0; t < LORA_N_TARGETS; t++)
			if (lc->targets & (1u << t)) {
				struct lora_pair *pr = &lo->pairs[l][t];
				shape(mc, t, &pr->in, &pr->out);
				pr->a = p, p += (size_t)lc->rank * pr->in;
				pr->b = p, p += (size_t)lc->rank * pr->out;
			}
	return lo;
}

void lora_init(struct lora *lo, uint64_t seed)
{
	uint64_t s = seed;
	memset(lo->params, 0, lo->n_params * sizeof(float));
	for (int l = 0; l < lo->n_layers; l++)
		for (int t = 0; t < LORA_N_TARGETS; t++) {
			struct lora_pair *pr = &lo->pairs[l][t];
			if (!pr->a)
				continue;
			const double bound = 1.0 / sqrt((double)pr->in);
			for (size_t i = 0; i < (size_t)lo->cfg.rank * pr->in; i++)
				pr->a[i] = (float)((2 * rng_uniform(&s) - 1) * bound);
		}
}

int lora_alloc_grads(struct lora *lo, struct err *err)
{
	if (!lo->grads) {
		lo->grads = calloc(lo->n_params, sizeof(float));
		if (!lo->grads)
			return err_sys(err, "lora: gradients of %zu parameters:", lo->n_params);
	}
	for (int l = 0; l < lo->n_layers; l++)
		for (int t = 0; t < LORA_N_TARGETS; t++) {
			struct lora_pair *pr = &lo->pairs[l][t];
			if (pr->a) {
				pr->ga = lo->grads + (pr->a - lo->params);
				pr->gb = lo->grads + (pr->b - lo->params);
			}
		}
	return 0;
}

void lora_zero_grads(struct lora *lo)
{
	if (lo->grads)
		memset(lo->grads, 0, lo->n_params * sizeof(float));
}

void lora_free(struct lora *lo)
{
	if (!lo)
		return;
	free(lo->pairs);
	free(lo->params);
	free(lo->grads);
	free(lo);
}
