/* lora: target lists, the layout of the parameter vector for every family's
 * shapes, and PEFT's initialization drawn from our seed. */
#include <math.h>
#include <string.h>

#include "check.h"
#include "lora.h"

#define ALL ((1u << LORA_N_TARGETS) - 1)

static void test_targets_parse(void)
{
	static const struct {
		const char *list;
		unsigned mask;
	} good[] = {
		{"q", 1u << LORA_Q},
		{"q,k,v,o", 0xf},
		{"gate,up,down", 0x70},
		{"q_proj,v_proj", (1u << LORA_Q) | (1u << LORA_V)},
		{"down_proj,q", (1u << LORA_DOWN) | (1u << LORA_Q)},
		{"all-linear", ALL},
		{"q,all-linear", ALL},
		{"v,v,v", 1u << LORA_V},
		{"gate_proj,up_proj,down_proj,q_proj,k_proj,v_proj,o_proj", ALL},
	};
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		struct err err = {0};
		unsigned mask = 0;
		int rc = lora_targets_parse(good[i].list, &mask, &err);
		CHECK(rc == 0 && mask == good[i].mask, "'%s': rc %d mask %#x, expected %#x (%s)", good[i].list, rc, mask,
		      good[i].mask, err.msg);
	}
	static const struct {
		const char *list, *named;
	} bad[] = {
		{"x", "'x'"},           {"", "''"},           {"q,,v", "''"},        {"qproj", "'qproj'"},
		{"q_", "'q_'"},         {"all-linea", "'all-linea'"}, {"Q", "'Q'"}, {"q,k,lm_head", "'lm_head'"},
		{"q ", "'q '"},         {"q,", "''"},          {"fc1", "'fc1'"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct err err = {0};
		unsigned mask = 0xdead;
		int rc = lora_targets_parse(bad[i].list, &mask, &err);
		CHECK(rc == -1 && strstr(err.msg, bad[i].named), "'%s': rc %d, message '%s' should name %s", bad[i].list,
		      rc, err.msg, bad[i].named);
		CHECK(mask == 0xdead, "'%s': the mask was changed on an error", bad[i].list);
	}
	CHECK(!strcmp(lora_target_name(LORA_GATE), "gate_proj") && !strcmp(lora_target_module(LORA_K), "self_attn.k_proj") &&
		      !strcmp(lora_target_module(LORA_DOWN), "mlp.down_proj"),
	      "names: %s %s %s", lora_target_name(LORA_GATE), lora_target_module(LORA_K), lora_target_module(LORA_DOWN));
}

/* The shapes of tinymodels' families: GQA, MQA, head_dim != dim / heads
 * (Qwen3, Gemma 3), a square MLP. */
static struct model_config shape(int dim, int heads, int kv, int head_dim, int ffn, int layers)
{
	struct model_config c = {0};
	c.dim = dim, c.n_heads = heads, c.n_kv_heads = kv, c.head_dim = head_dim, c.ffn = ffn, c.n_layers = layers;
	c.vocab = 11;
	return c;
}

static void expected_io(const struct model_config *c, int t, int *in, int *out)
{
	int q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
	int ins[] = {c->dim, c->dim, c->dim, q, c->dim, c->dim, c->ffn};
	int outs[] = {q, kv, kv, c->dim, c->ffn, c->ffn, c->dim};
	*in = ins[t], *out = outs[t];
}

static void test_new_layout(void)
{
	struct model_config shapes[] = {
		shape(64, 4, 2, 16, 96, 3),  /* llama GQA */
		shape(64, 4, 1, 16, 96, 3),  /* MQA */
		shape(64, 4, 2, 24, 96, 3),  /* qwen3: head_dim 24 */
		shape(64, 4, 2, 32, 96, 4),  /* gemma3: head_dim 32 */
		shape(48, 6, 6, 8, 48, 1),   /* MHA, square MLP, one layer */
	};
	unsigned masks[] = {ALL, 1u << LORA_Q, (1u << LORA_V) | (1u << LORA_DOWN), 0x70, 0x0f, 0x55};
	int ranks[] = {1, 4, 7};
	for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
		for (size_t k = 0; k < sizeof masks / sizeof masks[0]; k++)
			for (size_t ri = 0; ri < 3; ri++) {
				const struct model_config *c = &shapes[s];
				int r = ranks[ri];
				struct lora_config lc = {masks[k], r, 16.0f, 0.1f, (int)(k & 1)};
				struct err err = {0};
				struct lora *lo = lora_new(c, &lc, &err);
				CHECK(lo, "shape %zu mask %#x rank %d: %s", s, masks[k], r, err.msg);
				if (!lo)
					continue;
				size_t at = 0;
				int bad = 0;
				for (int l = 0; l < c->n_layers; l++)
					for (int t = 0; t < LORA_N_TARGETS; t++) {
						const struct lora_pair *p = &lo->pairs[l][t];
						if (!(masks[k] & (1u << t))) {
							bad += p->a || p->b;
							continue;
						}
						int in, out;
						expected_io(c, t, &in, &out);
						bad += !p->a || p->a != lo->params + at || p->in != in || p->out != out;
						at += (size_t)r * in;
						bad += p->b != lo->params + at;
						at += (size_t)r * out;
					}
				CHECK(!bad && at == lo->n_params, "shape %zu mask %#x rank %d: %d misplaced pairs, %zu of %zu "
								  "parameters laid out",
				      s, masks[k], r, bad, at, lo->n_params);
				float want = lc.rslora ? 16.0f / sqrtf((float)r) : 16.0f / (float)r;
				CHECK(lo->scale == want, "scale %g, expected %g", (double)lo->scale, (double)want);
				int nonzero = 0;
				for (size_t i = 0; i < lo->n_params; i++)
					nonzero += lo->params[i] != 0;
				CHECK(nonzero == 0 && !lo->grads, "a new adapter: %d nonzero, grads %p", nonzero, (void *)lo->grads);
				CHECK(lora_alloc_grads(lo, &err) == 0, "%s", err.msg);
				for (int l = 0; l < c->n_layers; l++)
					for (int t = 0; t < LORA_N_TARGETS; t++) {
						const struct lora_pair *p = &lo->pairs[l][t];
						if (p->a)
							bad += p->ga != lo->grads + (p->a - lo->params) ||
							       p->gb != lo->grads + (p->b - lo->params);
						else
							bad += p->ga || p->gb;
					}
				CHECK(!bad, "gradient pointers do not mirror the parameters");
				lora_free(lo);
			}
	lora_free(NULL);
}

static void test_new_errors(void)
{
	struct model_config c = shape(64, 4, 2, 16, 96, 2);
	static const struct {
		struct lora_config lc;
		const char *says;
	} bad[] = {
		{{ALL, 0, 16, 0, 0}, "rank"},
		{{ALL, -3, 16, 0, 0}, "rank"},
		{{0, 8, 16, 0, 0}, "no projection"},
		{{1u << 9, 8, 16, 0, 0}, "no projection"},
		{{ALL, 8, 16, 1.0f, 0}, "dropout"},
		{{ALL, 8, 16, -0.1f, 0}, "dropout"},
		{{ALL, 8, 16, NAN, 0}, "dropout"},
		{{ALL, 8, 0, 0, 0}, "alpha"},
		{{ALL, 8, -2, 0, 0}, "alpha"},
		{{ALL, 8, INFINITY, 0, 0}, "alpha"},
		{{ALL, 8, NAN, 0, 0}, "alpha"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct err err = {0};
		struct lora *lo = lora_new(&c, &bad[i].lc, &err);
		CHECK(!lo && strstr(err.msg, bad[i].says), "case %zu: %p, message '%s' should say %s", i, (void *)lo,
		      err.msg, bad[i].says);
		lora_free(lo);
	}
}

static void test_init(void)
{
	struct model_config c = shape(256, 8, 2, 32, 384, 2);
	struct lora_config lc = {ALL, 16, 32, 0, 0};
	struct err err = {0};
	struct lora *a = lora_new(&c, &lc, &err), *b = lora_new(&c, &lc, &err), *d = lora_new(&c, &lc, &err);
	CHECK(a && b && d, "%s", err.msg);
	if (!a || !b || !d)
		goto out;
	uint64_t seed = (uint64_t)check_seed_init();
	for (size_t i = 0; i < b->n_params; i++) /* init must clear what was there */
		b->params[i] = 1.0f;
	lora_init(a, seed);
	lora_init(b, seed);
	lora_init(d, seed + 1);
	CHECK(!memcmp(a->params, b->params, a->n_params * sizeof(float)), "the same seed gave different adapters");
	size_t same = 0;
	for (size_t i = 0; i < a->n_params; i++)
		same += a->params[i] == d->params[i];
	size_t b_count = 0;
	for (int l = 0; l < a->n_layers; l++)
		for (int t = 0; t < LORA_N_TARGETS; t++)
			b_count += (size_t)lc.rank * a->pairs[l][t].out;
	/* every B is zero in both, so those agree; of the A values hardly any may */
	CHECK(same < b_count + 50, "seeds %llu and %llu: %zu of %zu values equal (%zu are B zeros)",
	      (unsigned long long)seed, (unsigned long long)seed + 1, same, a->n_params, b_count);
	for (int l = 0; l < a->n_layers; l++)
		for (int t = 0; t < LORA_N_TARGETS; t++) {
			const struct lora_pair *p = &a->pairs[l][t];
			const double bound = 1.0 / sqrt((double)p->in);
			size_t n = (size_t)lc.rank * p->in, outside = 0, nonzero_b = 0;
			double sum = 0, sq = 0, maxabs = 0;
			for (size_t i = 0; i < n; i++) {
				double x = p->a[i];
				outside += !(x >= -bound && x < bound);
				sum += x, sq += x * x;
				maxabs = fmax(maxabs, fabs(x));
			}
			for (size_t i = 0; i < (size_t)lc.rank * p->out; i++)
				nonzero_b += p->b[i] != 0;
			/* uniform on [-b, b): mean 0 (sd b / sqrt(3n)), variance b²/3 (sd about b²·0.3/sqrt(n)) */
			double mean = sum / (double)n, var = sq / (double)n - mean * mean;
			double mean_tol = 5 * bound / sqrt(3.0 * (double)n), var_tol = 5 * 0.3 * bound * bound / sqrt((double)n);
			CHECK(!outside && !nonzero_b, "layer %d %s: %zu of A outside ±%g, %zu of B nonzero", l,
			      lora_target_name(t), outside, bound, nonzero_b);
			CHECK(fabs(mean) < mean_tol && fabs(var - bound * bound / 3) < var_tol && maxabs > 0.99 * bound,
			      "layer %d %s (seed %llu): mean %g (tol %g), variance %g (expected %g ± %g), max |a| %g of %g",
			      l, lora_target_name(t), (unsigned long long)seed, mean, mean_tol, var, bound * bound / 3,
			      var_tol, maxabs, bound);
		}
out:
	lora_free(a);
	lora_free(b);
	lora_free(d);
}

int main(void)
{
	RUN(test_targets_parse);
	RUN(test_new_layout);
	RUN(test_new_errors);
	RUN(test_init);
	return check_done();
}
