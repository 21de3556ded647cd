/* model_driver: lib/model + lib/forward as a command, for the reference tests
 * and benches (tests/ref/test_model_hf.py, tests/bench/bench_forward.py).
 *
 *   model_driver logits MODEL [options] < ids.txt > out.f32
 *       whitespace-separated token ids in; raw little-endian fp32 logits out,
 *       n × vocab (1 × vocab with --last)
 *   model_driver bench MODEL [options] --n N [--reps R] [--decode D]
 *       times a forward of N tokens (made-up ids, all logits), best of R
 *       after one warm-up; with --decode, then D more tokens one at a time
 *       through the KV cache (last logits only); one JSON line:
 *       {"n":N,"s":S,"tok_s":T,"reps":R[,"decode":D,"decode_tok_s":T2]}
 *   model_driver info MODEL [options]
 *       loads and prints one JSON line: config, parameters, bytes, load time,
 *       peak resident memory after one forward of 8 tokens: VmHWM of
 *       /proc/self/status (ru_maxrss would carry over the high-water mark of
 *       the process that exec'd us) and the current VmRSS
 *
 * options: --fmt f32|bf16|nf4|int8 (the seven projections of each layer),
 *          --embed f32|bf16 (embedding and output), --threads N (default 1),
 *          --chunk K (logits: feed the KV cache K tokens at a time),
 *          --last (logits: only the last position's)
 * Exit 0, 1 on a runtime failure, 2 on bad input or usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "model.h"
#include "opt.h"
#include "procstat.h"

static const struct opt opts[] = {
	{"fmt", 0, OPT_CHOICE, "F", "format of the linear layers", .choices = "f32|bf16|nf4|int8"},
	{"embed", 0, OPT_CHOICE, "F", "format of the embedding and output", .choices = "f32|bf16"},
	{"threads", 0, OPT_INT, "N", "threads", .min = 1, .max = 256},
	{"chunk", 0, OPT_INT, "K", "feed the KV cache K tokens at a time", .min = 1},
	{"last", 0, OPT_FLAG, NULL, "only the last position's logits"},
	{"n", 0, OPT_INT, "N", "bench: tokens", .min = 1},
	{"reps", 0, OPT_INT, "R", "bench: repetitions", .min = 1},
	{"decode", 0, OPT_INT, "D", "bench: tokens decoded one at a time after the prefill", .min = 1},
	{0},
};

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int32_t *read_ids(int *n, int vocab_hint)
{
	size_t cap = 256, len = 0;
	int32_t *ids = malloc(cap * sizeof *ids);
	long v;
	int c;
	while (ids && (c = scanf("%ld", &v)) == 1) {
		if (len == cap)
			ids = realloc(ids, (cap *= 2) * sizeof *ids);
		if (!ids)
			break;
		ids[len++] = (int32_t)(v < INT32_MIN ? INT32_MIN : v > INT32_MAX ? INT32_MAX : v);
	}
	if (!ids) {
		fprintf(stderr, "model_driver: out of memory\n");
		exit(1);
	}
	if (!feof(stdin)) {
		fprintf(stderr, "model_driver: stdin: expected whitespace-separated integers\n");
		exit(2);
	}
	(void)vocab_hint;
	*n = (int)len;
	return ids;
}

static int do_logits(const struct model *m, const struct opt_result *r, struct err *err)
{
	int n;
	int32_t *ids = read_ids(&n, m->cfg.vocab);
	if (n == 0) {
		free(ids);
		return err_set(err, "stdin: no token ids");
	}
	int last = opt_flag(r, "last");
	int chunk = (int)opt_int(r, "chunk", 0);
	const size_t V = (size_t)m->cfg.vocab;
	float *logits = malloc((size_t)n * V * sizeof *logits);
	int rc = -1;
	if (!logits) {
		err_sys(err, "logits:");
		goto out;
	}
	if (!chunk) {
		rc = model_forward(m, NULL, NULL, ids, n, logits, !last, err);
	} else {
		struct kv_cache *kv = kv_cache_new(&m->cfg, n, err);
		rc = kv ? 0 : -1;
		for (int at = 0; rc == 0 && at < n; at += chunk) {
			int len = n - at < chunk ? n - at : chunk;
			rc = model_forward(m, NULL, kv, ids + at, len, last ? logits : logits + (size_t)at * V, !last, err);
		}
		kv_cache_free(kv);
	}
	if (rc == 0) {
		size_t rows = last ? 1 : (size_t)n;
		if (fwrite(logits, sizeof *logits, rows * V, stdout) != rows * V || fflush(stdout) != 0)
			rc = err_sys(err, "stdout:");
	}
out:
	free(logits);
	free(ids);
	return rc;
}

static int do_bench(const struct model *m, const struct opt_result *r, struct err *err)
{
	int n = (int)opt_int(r, "n", 512), reps = (int)opt_int(r, "reps", 3);
	int32_t *ids = malloc((size_t)n * sizeof *ids);
	float *logits = malloc((size_t)n * m->cfg.vocab * sizeof *logits);
	int rc = -1;
	if (!ids || !logits) {
		err_sys(err, "bench:");
		goto out;
	}
	for (int t = 0; t < n; t++)
		ids[t] = (int32_t)((t * 7919 + 1) % m->cfg.vocab);
	double best = 1e30;
	for (int i = 0; i <= reps; i++) {
		double t0 = now();
		if (model_forward(m, NULL, NULL, ids, n, logits, 1, err) < 0)
			goto out;
		double dt = now() - t0;
		if (i > 0 && dt < best) /* the first run warms up */
			best = dt;
	}
	printf("{\"n\":%d,\"s\":%.6f,\"tok_s\":%.2f,\"reps\":%d", n, best, n / best, reps);
	int decode = (int)opt_int(r, "decode", 0);
	if (decode) {
		struct kv_cache *kv = kv_cache_new(&m->cfg, n + decode, err);
		if (!kv || model_forward(m, NULL, kv, ids, n, logits, 0, err) < 0) {
			kv_cache_free(kv);
			goto out;
		}
		double t0 = now();
		for (int i = 0; i < decode; i++) {
			int32_t next = (int32_t)((i * 31 + 7) % m->cfg.vocab);
			if (model_forward(m, NULL, kv, &next, 1, logits, 0, err) < 0) {
				kv_cache_free(kv);
				goto out;
			}
		}
		double dt = now() - t0;
		kv_cache_free(kv);
		printf(",\"decode\":%d,\"decode_tok_s\":%.2f", decode, decode / dt);
	}
	printf("}\n");
	rc = 0;
out:
	free(ids);
	free(logits);
	return rc;
}

static int do_info(const struct model *m, double load_s, struct err *err)
{
	int32_t ids[8] = {0, 1, 2, 3, 4, 5, 6, 7};
	float *logits = malloc((size_t)8 * m->cfg.vocab * sizeof *logits);
	if (!logits)
		return err_sys(err, "info:");
	int rc = model_forward(m, NULL, NULL, ids, 8, logits, 1, err);
	free(logits);
	if (rc < 0)
		return -1;
	int64_t params;
	size_t bytes;
	model_size(m, &params, &bytes);
	const struct model_config *c = &m->cfg;
	printf("{\"arch\":\"%s\",\"vocab\":%d,\"dim\":%d,\"layers\":%d,\"heads\":%d,\"kv_heads\":%d,"
	       "\"head_dim\":%d,\"ffn\":%d,\"params\":%lld,\"bytes\":%zu,\"load_s\":%.3f,\"peak_rss_kb\":%ld,"
	       "\"rss_kb\":%ld}\n",
	       model_arch_name(c->arch), c->vocab, c->dim, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim,
	       c->ffn, (long long)params, bytes, load_s, status_kb("VmHWM:"), status_kb("VmRSS:"));
	return 0;
}

int main(int argc, char **argv)
{
	msg_init(argv[0]);
	struct err err = {0};
	struct opt_result r;
	if (opt_parse(opts, argc, argv, &r, &err) < 0)
		msg_die_err(&err);
	if (r.nargs != 2 || (strcmp(r.args[0], "logits") && strcmp(r.args[0], "bench") && strcmp(r.args[0], "info")))
		msg_die(EXIT_USAGE, "usage: model_driver logits|bench|info MODEL [--fmt f32|bf16|nf4|int8] "
				    "[--embed f32|bf16] [--threads N] [--chunk K] [--last] [--n N] [--reps R]");
	struct model_load_opts lo = {WFMT_F32, WFMT_F32};
	lo.linear = (enum wfmt)wfmt_parse(opt_str(&r, "fmt", "f32"));
	lo.embed = (enum wfmt)wfmt_parse(opt_str(&r, "embed", "f32"));
	backend_cpu_threads((int)opt_int(&r, "threads", 1));
	double t0 = now();
	struct model *m = model_load(r.args[1], &lo, &err);
	if (!m)
		msg_die_err(&err);
	double load_s = now() - t0;
	int rc;
	if (!strcmp(r.args[0], "logits"))
		rc = do_logits(m, &r, &err);
	else if (!strcmp(r.args[0], "bench"))
		rc = do_bench(m, &r, &err);
	else
		rc = do_info(m, load_s, &err);
	model_free(m);
	if (rc < 0)
		msg_die_err(&err);
	return 0;
}
