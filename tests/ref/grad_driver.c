/* grad_driver: lib/train as a command, for tests/ref/test_grad_torch.py and
 * for measuring a training step.
 *
 *   grad_driver grad MODEL [options] < batch.txt > out.bin
 *       one micro-batch of the examples (packed into one row with --pack,
 *       else one train_step per example, accumulated), gradients scaled by
 *       1 / (learned tokens of all examples); out.bin, little-endian:
 *       f64 loss sum, i64 learned tokens, i64 n_params, f32 grads[n_params]
 *       (lora.h's order), i64 tokens, i64 dim, f32 d_embed[tokens × dim]
 *       (the gradient w.r.t. the scaled input embeddings, examples in order)
 *   grad_driver logits MODEL [options] < batch.txt
 *       train_logits against model_forward (same adapter) on each example
 *       alone and on the packed row; one line:
 *       {"alone_rel":E1,"packed_rel":E2} (max |a - b| / max |b|)
 *   grad_driver bench MODEL [options] --n N
 *       one warm-up and --reps timed train_steps on N made-up tokens, all
 *       learned; one JSON line with the best step time (wall and the
 *       process's CPU time, which another process's load disturbs less),
 *       VmHWM (peak resident memory of this process), the trainer's bytes
 *
 * batch.txt: whitespace-separated integers: the number of examples E, then
 * per example its length n, its n token ids and its n labels (-100: not
 * learned).
 * options: --fmt f32|bf16|nf4|int8 (the seven projections), --embed f32|bf16,
 *          --threads N, --targets LIST (lora_targets_parse), --rank R,
 *          --alpha A, --rslora, --dropout P, --seed S (dropout and, without
 *          --params, the adapter), --params FILE (raw f32 lora->params),
 *          --checkpoint, --pack
 * Exit 0, 1 on a runtime failure, 2 on bad input or usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "lora.h"
#include "model.h"
#include "opt.h"
#include "rng.h"
#include "train.h"
#include "procstat.h"

static const struct opt opts[] = {
	{"fmt", 0, OPT_CHOICE, "F", "format of the linear layers", .choices = "f32|bf16|nf4|int8"},
	{"embed", 0, OPT_CHOICE, "F", "format of the embedding and output", .choices = "f32|bf16"},
	{"threads", 0, OPT_INT, "N", "threads", .min = 1, .max = 256},
	{"targets", 0, OPT_STRING, "LIST", "LoRA targets"},
	{"rank", 0, OPT_INT, "R", "LoRA rank", .min = 1, .max = 4096},
	{"alpha", 0, OPT_FLOAT, "A", "LoRA alpha"},
	{"rslora", 0, OPT_FLAG, NULL, "scale alpha / sqrt(rank)"},
	{"dropout", 0, OPT_FLOAT, "P", "LoRA dropout"},
	{"seed", 0, OPT_INT, "S", "seed", .min = 0},
	{"params", 0, OPT_STRING, "FILE", "the adapter's parameters, raw f32"},
	{"checkpoint", 0, OPT_FLAG, NULL, "gradient checkpointing"},
	{"pack", 0, OPT_FLAG, NULL, "pack the examples into one row"},
	{"n", 0, OPT_INT, "N", "bench: tokens", .min = 1},
	{"reps", 0, OPT_INT, "R", "bench: repetitions", .min = 1},
	{0},
};

static double clock_s(clockid_t id)
{
	struct timespec t;
	clock_gettime(id, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double now(void) { return clock_s(CLOCK_MONOTONIC); }

/* The examples of stdin, concatenated: tokens, labels, starts. */
struct examples {
	int n_ex, total;
	int32_t *tokens, *labels, *starts;
};

static int read_int(long *v)
{
	if (scanf("%ld", v) != 1) {
		fprintf(stderr, "grad_driver: stdin: expected an integer\n");
		exit(2);
	}
	return 0;
}

static void read_examples(struct examples *ex)
{
	long e, n, v;
	read_int(&e);
	if (e < 1 || e > 100000)
		exit(2);
	ex->n_ex = (int)e;
	ex->starts = malloc((size_t)e * sizeof *ex->starts);
	ex->tokens = ex->labels = NULL;
	ex->total = 0;
	for (int i = 0; i < e; i++) {
		read_int(&n);
		if (n < 1 || n > 1000000)
			exit(2);
		ex->starts[i] = ex->total;
		ex->tokens = realloc(ex->tokens, (size_t)(ex->total + n) * sizeof *ex->tokens);
		ex->labels = realloc(ex->labels, (size_t)(ex->total + n) * sizeof *ex->labels);
		if (!ex->starts || !ex->tokens || !ex->labels)
			exit(1);
		for (int t = 0; t < n; t++)
			read_int(&v), ex->tokens[ex->total + t] = (int32_t)v;
		for (int t = 0; t < n; t++)
			read_int(&v), ex->labels[ex->total + t] = (int32_t)v;
		ex->total += (int)n;
	}
}

static struct train_batch example(const struct examples *ex, int i)
{
	int end = i + 1 < ex->n_ex ? ex->starts[i + 1] : ex->total;
	return (struct train_batch){end - ex->starts[i], ex->tokens + ex->starts[i], ex->labels + ex->starts[i], 1,
				    NULL};
}

static struct train_batch packed(const struct examples *ex)
{
	return (struct train_batch){ex->total, ex->tokens, ex->labels, ex->n_ex, ex->starts};
}

static struct lora *make_lora(const struct model *m, const struct opt_result *r, struct err *err)
{
	struct lora_config lc = {0};
	if (lora_targets_parse(opt_str(r, "targets", "all-linear"), &lc.targets, err) < 0)
		return NULL;
	lc.rank = (int)opt_int(r, "rank", 4);
	lc.alpha = (float)opt_float(r, "alpha", 8);
	lc.rslora = opt_flag(r, "rslora");
	lc.dropout = (float)opt_float(r, "dropout", 0);
	struct lora *lo = lora_new(&m->cfg, &lc, err);
	if (!lo)
		return NULL;
	const char *path = opt_str(r, "params", NULL);
	if (!path) {
		/* A as PEFT initializes it, B nonzero so that both get gradients */
		uint64_t s = (uint64_t)opt_int(r, "seed", 1);
		lora_init(lo, s);
		for (int l = 0; l < lo->n_layers; l++)
			for (int t = 0; t < LORA_N_TARGETS; t++)
				if (lo->pairs[l][t].b)
					for (int i = 0; i < lo->pairs[l][t].out * lc.rank; i++)
						lo->pairs[l][t].b[i] = (float)(rng_uniform(&s) - 0.5) * 0.1f;
		return lo;
	}
	FILE *f = fopen(path, "rb");
	size_t got = f ? fread(lo->params, sizeof(float), lo->n_params, f) : 0;
	int extra = f ? fgetc(f) != EOF : 0;
	if (f)
		fclose(f);
	if (!f || got != lo->n_params || extra) {
		err_set(err, "%s: expected %zu f32 parameters", path, lo->n_params);
		lora_free(lo);
		return NULL;
	}
	return lo;
}

static int put(const void *p, size_t size, size_t count)
{
	return fwrite(p, size, count, stdout) == count ? 0 : -1;
}

static int do_grad(const struct model *m, struct lora *lo, const struct opt_result *r, struct err *err)
{
	struct examples ex;
	read_examples(&ex);
	const int dim = m->cfg.dim, pack = opt_flag(r, "pack");
	struct train_opts to = {.checkpointing = opt_flag(r, "checkpoint")};
	int longest = 0;
	for (int i = 0; i < ex.n_ex; i++)
		if (example(&ex, i).n > longest)
			longest = example(&ex, i).n;
	struct trainer *tr = trainer_new(m, lo, pack ? ex.total : longest, &to, err);
	float *d_embed = malloc((size_t)ex.total * dim * sizeof *d_embed);
	int rc = -1;
	if (!tr || !d_embed)
		goto out;
	struct train_batch all = packed(&ex);
	int64_t learned = train_batch_learned(&all);
	float grad_scale = learned ? 1.0f / (float)learned : 0.0f;
	uint64_t seed = (uint64_t)opt_int(r, "seed", 1);
	double loss = 0;
	int64_t count = 0;
	lora_zero_grads(lo);
	if (pack) {
		struct train_result res;
		if (train_step(tr, &all, grad_scale, seed, &res, d_embed, err) < 0)
			goto out;
		loss = res.loss_sum, count = res.n_learned;
	} else {
		for (int i = 0; i < ex.n_ex; i++) {
			struct train_batch b = example(&ex, i);
			struct train_result res;
			if (train_step(tr, &b, grad_scale, rng_next(&seed), &res, d_embed + (size_t)ex.starts[i] * dim,
				       err) < 0)
				goto out;
			loss += res.loss_sum, count += res.n_learned;
		}
	}
	int64_t np = (int64_t)lo->n_params, tokens = ex.total, d = dim;
	if (put(&loss, sizeof loss, 1) || put(&count, sizeof count, 1) || put(&np, sizeof np, 1) ||
	    put(lo->grads, sizeof(float), lo->n_params) || put(&tokens, sizeof tokens, 1) || put(&d, sizeof d, 1) ||
	    put(d_embed, sizeof(float), (size_t)ex.total * dim) || fflush(stdout))
		rc = err_sys(err, "stdout:");
	else
		rc = 0;
out:
	trainer_free(tr);
	free(d_embed);
	free(ex.tokens), free(ex.labels), free(ex.starts);
	return rc;
}

/* max |a - b| / max |b| */
static double rel_err(const float *a, const float *b, int64_t count)
{
	double md = 0, mb = 0;
	for (int64_t i = 0; i < count; i++) {
		double d = a[i] > b[i] ? (double)a[i] - b[i] : (double)b[i] - a[i];
		if (!(d <= md))
			md = d;
		double ab = b[i] < 0 ? -(double)b[i] : b[i];
		if (ab > mb)
			mb = ab;
	}
	return mb > 0 ? md / mb : md;
}

static int do_logits(const struct model *m, struct lora *lo, const struct opt_result *r, struct err *err)
{
	struct examples ex;
	read_examples(&ex);
	const size_t V = (size_t)m->cfg.vocab;
	struct train_opts to = {.checkpointing = opt_flag(r, "checkpoint")};
	struct trainer *tr = trainer_new(m, lo, ex.total, &to, err);
	float *a = malloc((size_t)ex.total * V * sizeof *a), *b = malloc((size_t)ex.total * V * sizeof *b);
	float *p = malloc((size_t)ex.total * V * sizeof *p);
	int rc = -1;
	if (!tr || !a || !b || !p)
		goto out;
	struct train_batch all = packed(&ex);
	if (train_logits(tr, &all, p, err) < 0)
		goto out;
	for (int i = 0; i < ex.n_ex; i++) {
		struct train_batch e = example(&ex, i);
		size_t at = (size_t)ex.starts[i] * V;
		if (train_logits(tr, &e, a + at, err) < 0 ||
		    model_forward(m, lo, NULL, e.tokens, e.n, b + at, 1, err) < 0)
			goto out;
	}
	printf("{\"alone_rel\":%.3g,\"packed_rel\":%.3g}\n", rel_err(a, b, (int64_t)ex.total * V),
	       rel_err(p, b, (int64_t)ex.total * V));
	rc = 0;
out:
	trainer_free(tr);
	free(a), free(b), free(p);
	free(ex.tokens), free(ex.labels), free(ex.starts);
	return rc;
}

static int do_bench(const struct model *m, struct lora *lo, const struct opt_result *r, struct err *err)
{
	int n = (int)opt_int(r, "n", 512), reps = (int)opt_int(r, "reps", 2);
	struct train_opts to = {.checkpointing = opt_flag(r, "checkpoint")};
	int32_t *ids = malloc((size_t)n * sizeof *ids);
	if (!ids)
		return err_sys(err, "bench:");
	for (int t = 0; t < n; t++)
		ids[t] = (int32_t)((t * 7919 + 1) % m->cfg.vocab);
	struct trainer *tr = trainer_new(m, lo, n, &to, err);
	int rc = -1;
	if (!tr)
		goto out;
	struct train_batch b = {n, ids, ids, 1, NULL};
	double best = 1e30, best_cpu = 1e30, loss = 0;
	for (int i = 0; i <= reps; i++) {
		struct train_result res;
		double t0 = now(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
		if (train_step(tr, &b, 1.0f / (float)(n - 1), (uint64_t)i, &res, NULL, err) < 0)
			goto out;
		double dt = now() - t0, dc = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
		if (i > 0 && dt < best)
			best = dt;
		if (i > 0 && dc < best_cpu)
			best_cpu = dc;
		loss = res.loss_sum / (double)res.n_learned;
	}
	printf("{\"n\":%d,\"checkpoint\":%d,\"step_s\":%.3f,\"cpu_s\":%.3f,\"tok_s\":%.1f,\"loss\":%.4f,"
	       "\"trainer_mb\":%.1f,\"peak_rss_mb\":%.1f}\n",
	       n, to.checkpointing, best, best_cpu, n / best, loss, trainer_bytes(tr) / 1048576.0,
	       status_kb("VmHWM:") / 1024.0);
	rc = 0;
out:
	trainer_free(tr);
	free(ids);
	return rc;
}

int main(int argc, char **argv)
{
	msg_init(argv[0]);
	struct err err = {0};
	struct opt_result r;
	if (opt_parse(opts, argc, argv, &r, &err) < 0)
		msg_die_err(&err);
	if (r.nargs != 2 || (strcmp(r.args[0], "grad") && strcmp(r.args[0], "logits") && strcmp(r.args[0], "bench")))
		msg_die(EXIT_USAGE, "usage: grad_driver grad|logits|bench MODEL [--fmt F] [--embed F] [--threads N] "
				    "[--targets LIST] [--rank R] [--alpha A] [--rslora] [--dropout P] [--seed S] "
				    "[--params FILE] [--checkpoint] [--pack] [--n N] [--reps R]");
	struct model_load_opts mo = {WFMT_F32, WFMT_F32};
	mo.linear = (enum wfmt)wfmt_parse(opt_str(&r, "fmt", "f32"));
	mo.embed = (enum wfmt)wfmt_parse(opt_str(&r, "embed", "f32"));
	backend_cpu_threads((int)opt_int(&r, "threads", 1));
	struct model *m = model_load(r.args[1], &mo, &err);
	if (!m)
		msg_die_err(&err);
	struct lora *lo = make_lora(m, &r, &err);
	int rc = -1;
	if (lo) {
		if (!strcmp(r.args[0], "grad"))
			rc = do_grad(m, lo, &r, &err);
		else if (!strcmp(r.args[0], "logits"))
			rc = do_logits(m, lo, &r, &err);
		else
			rc = do_bench(m, lo, &r, &err);
	}
	lora_free(lo);
	model_free(m);
	if (rc < 0)
		msg_die_err(&err);
	return 0;
}
