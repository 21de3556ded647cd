/* lora_driver: lib/lora + lib/adapter as a command, for tests/ref/test_peft_adapter.py.
 *
 *   lora_driver save MODEL DIR --rank R --alpha A --targets LIST [--rslora]
 *                [--dropout P] [--seed S] [--base NAME]
 *       an adapter for MODEL (only its config is read) with A drawn by
 *       lora_init and B drawn from the same seed too (uniform in
 *       [-0.5, 0.5), so that the adapter changes the logits), saved with
 *       lora_save_peft as DIR (the multimodal layout when
 *       peft_model_multimodal says so)
 *   lora_driver logits MODEL [--adapter DIR] < ids.txt > out.f32
 *       whitespace-separated token ids in; raw little-endian fp32 logits of
 *       every position out (n × vocab), through model_forward with the
 *       adapter read by lora_load_peft (none: the base model)
 *   lora_driver resave MODEL DIR OUT
 *       reads the adapter DIR with lora_load_peft and writes it again as OUT
 *       (same layout, base model name kept)
 * Exit 0, 1 on a runtime failure, 2 on bad input or usage; errors on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "backend.h"
#include "lora.h"
#include "model.h"
#include "opt.h"
#include "rng.h"

static const struct opt opts[] = {
	{"rank", 0, OPT_INT, "R", "rank", .min = 1},
	{"alpha", 0, OPT_FLOAT, "A", "alpha", .fmin = 1e-6},
	{"targets", 0, OPT_STRING, "LIST", "adapted projections"},
	{"rslora", 0, OPT_FLAG, NULL, "alpha / sqrt(rank)"},
	{"dropout", 0, OPT_FLOAT, "P", "dropout"},
	{"seed", 0, OPT_INT, "S", "seed"},
	{"base", 0, OPT_STRING, "NAME", "base_model_name_or_path"},
	{"adapter", 0, OPT_STRING, "DIR", "logits: the adapter"},
	{0},
};

static int32_t *read_ids(int *n)
{
	size_t cap = 256, len = 0;
	int32_t *ids = malloc(cap * sizeof *ids);
	long v;
	while (ids && scanf("%ld", &v) == 1) {
		if (len == cap)
			ids = realloc(ids, (cap *= 2) * sizeof *ids);
		if (ids)
			ids[len++] = (int32_t)v;
	}
	if (!ids)
		msg_die(EXIT_RUNTIME, "out of memory");
	if (!feof(stdin))
		msg_die(EXIT_USAGE, "stdin: expected whitespace-separated integers");
	*n = (int)len;
	return ids;
}

static int do_save(const struct opt_result *r, struct err *err)
{
	struct model_config mc;
	if (model_config_load(r->args[1], &mc, err) < 0)
		return -1;
	struct lora_config lc = {0};
	lc.rank = (int)opt_int(r, "rank", 8);
	lc.alpha = (float)opt_float(r, "alpha", 16);
	lc.dropout = (float)opt_float(r, "dropout", 0);
	lc.rslora = opt_flag(r, "rslora") > 0;
	int rc = -1;
	struct lora *lo = NULL;
	if (lora_targets_parse(opt_str(r, "targets", "all-linear"), &lc.targets, err) < 0 ||
	    !(lo = lora_new(&mc, &lc, err)))
		goto out;
	uint64_t seed = (uint64_t)opt_int(r, "seed", 1);
	lora_init(lo, seed);
	uint64_t s = seed ^ 0x5eedb5eedb5eedb5ull;
	for (int l = 0; l < lo->n_layers; l++)
		for (int t = 0; t < LORA_N_TARGETS; t++) {
			struct lora_pair *p = &lo->pairs[l][t];
			for (size_t i = 0; p->b && i < (size_t)p->out * lc.rank; i++)
				p->b[i] = (float)(rng_uniform(&s) - 0.5);
		}
	struct peft_save_opts so = {opt_str(r, "base", NULL), 0};
	if (peft_model_multimodal(r->args[1], &so.multimodal, err) < 0)
		goto out;
	rc = lora_save_peft(lo, r->args[2], &so, err);
out:
	lora_free(lo);
	model_config_free(&mc);
	return rc;
}

static int do_logits(const struct opt_result *r, struct err *err)
{
	struct model *m = model_load(r->args[1], NULL, err);
	if (!m)
		return -1;
	struct lora *lo = NULL;
	float *logits = NULL;
	int32_t *ids = NULL;
	int rc = -1, n;
	const char *dir = opt_str(r, "adapter", NULL);
	if (dir && !(lo = lora_load_peft(dir, &m->cfg, NULL, err)))
		goto out;
	ids = read_ids(&n);
	if (n == 0) {
		err_set(err, "stdin: no token ids");
		goto out;
	}
	size_t count = (size_t)n * (size_t)m->cfg.vocab;
	if (!(logits = malloc(count * sizeof *logits))) {
		err_sys(err, "logits:");
		goto out;
	}
	if (model_forward(m, lo, NULL, ids, n, logits, 1, err) < 0)
		goto out;
	if (fwrite(logits, sizeof *logits, count, stdout) != count || fflush(stdout) != 0) {
		err_sys(err, "stdout:");
		goto out;
	}
	rc = 0;
out:
	free(ids);
	free(logits);
	lora_free(lo);
	model_free(m);
	return rc;
}

static int do_resave(const struct opt_result *r, struct err *err)
{
	struct model_config mc;
	if (model_config_load(r->args[1], &mc, err) < 0)
		return -1;
	struct peft_info info;
	struct lora *lo = lora_load_peft(r->args[2], &mc, &info, err);
	int rc = -1;
	if (lo) {
		struct peft_save_opts so = {info.base_model[0] ? info.base_model : NULL, info.multimodal};
		rc = lora_save_peft(lo, r->args[3], &so, err);
	}
	lora_free(lo);
	model_config_free(&mc);
	return rc;
}

int main(int argc, char **argv)
{
	msg_init(argv[0]);
	struct err err = {0};
	struct opt_result r;
	if (opt_parse(opts, argc, argv, &r, &err) < 0)
		msg_die_err(&err);
	backend_cpu_threads(1);
	int rc;
	if (r.nargs == 3 && !strcmp(r.args[0], "save"))
		rc = do_save(&r, &err);
	else if (r.nargs == 2 && !strcmp(r.args[0], "logits"))
		rc = do_logits(&r, &err);
	else if (r.nargs == 4 && !strcmp(r.args[0], "resave"))
		rc = do_resave(&r, &err);
	else
		msg_die(EXIT_USAGE, "usage: lora_driver save MODEL DIR [--rank R --alpha A --targets LIST --rslora "
				    "--dropout P --seed S --base NAME] | logits MODEL [--adapter DIR] | resave MODEL DIR OUT");
	if (rc < 0)
		msg_die_err(&err);
	return 0;
}
