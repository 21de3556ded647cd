/* optim_driver: lib/optim as a command, for tests/ref/test_optim_torch.py.
 * Binary data is little-endian, on standard input and output.
 *
 *   optim_driver adamw N STEPS BETA1 BETA2 EPS WD [RESUME_AT STATE_FILE]
 *       in:  N f32 parameters, then per step an f64 lr and N f32 gradients
 *       out: N f32 parameters, N f32 exp_avg, N f32 exp_avg_sq after all steps
 *       With RESUME_AT K: after step K the state is saved to STATE_FILE,
 *       freed and loaded again (adamw_save / adamw_load) before going on.
 *   optim_driver lr KIND LR WARMUP TOTAL NUM_CYCLES MIN_LR_RATE STEPS
 *       out: lr_at(step) for step 0 .. STEPS-1, f64 each
 *   optim_driver clip MAX_NORM LEN[,LEN...]
 *       in:  sum(LEN) f32 gradients
 *       out: the f32 norm before clipping, then the clipped gradients
 * Exit 0, 1 on a runtime failure, 2 on bad usage or input.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim.h"

static void die(int status, const char *fmt, const char *arg)
{
	fprintf(stderr, "optim_driver: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n");
	exit(status);
}

static double num(const char *s)
{
	char *end;
	double v = strtod(s, &end);
	if (!*s || *end)
		die(2, "'%s' is not a number", s);
	return v;
}

static void *alloc(size_t n)
{
	void *p = calloc(n ? n : 1, 1);
	if (!p)
		die(1, "out of memory%s", "");
	return p;
}

static void get(void *p, size_t size, size_t n)
{
	if (fread(p, size, n, stdin) != n)
		die(2, "stdin: short input%s", "");
}

static void put(const void *p, size_t size, size_t n)
{
	if (fwrite(p, size, n, stdout) != n)
		die(1, "stdout: write error%s", "");
}

static int do_adamw(int argc, char **argv)
{
	if (argc != 8 && argc != 10)
		die(2, "usage: optim_driver adamw N STEPS BETA1 BETA2 EPS WD [RESUME_AT STATE_FILE]%s", "");
	size_t n = (size_t)num(argv[2]);
	long steps = (long)num(argv[3]);
	struct adamw_hparams h = {num(argv[4]), num(argv[5]), num(argv[6]), num(argv[7])};
	long resume_at = argc == 10 ? (long)num(argv[8]) : -1;
	struct err err = {0};
	struct adamw *o = adamw_new(n, &err);
	if (!o)
		die(1, "%s", err.msg);
	float *p = alloc(n * sizeof *p), *g = alloc(n * sizeof *g);
	get(p, sizeof *p, n);
	for (long s = 0; s < steps; s++) {
		double lr;
		get(&lr, sizeof lr, 1);
		get(g, sizeof *g, n);
		adamw_step(o, p, g, lr, &h);
		if (s + 1 == resume_at) {
			if (adamw_save(o, argv[9], &err) < 0)
				die(1, "%s", err.msg);
			adamw_free(o);
			if (!(o = adamw_load(argv[9], n, &err)))
				die(1, "%s", err.msg);
		}
	}
	put(p, sizeof *p, n);
	put(o->m, sizeof *o->m, n);
	put(o->v, sizeof *o->v, n);
	adamw_free(o);
	free(p);
	free(g);
	return fflush(stdout) ? 1 : 0;
}

static int do_lr(int argc, char **argv)
{
	if (argc != 9)
		die(2, "usage: optim_driver lr KIND LR WARMUP TOTAL NUM_CYCLES MIN_LR_RATE STEPS%s", "");
	struct err err = {0};
	struct lr_schedule s = {0};
	if (lr_kind_parse(argv[2], &s.kind, &err) < 0)
		die(2, "%s", err.msg);
	s.lr = num(argv[3]);
	s.warmup = (int64_t)num(argv[4]);
	s.total = (int64_t)num(argv[5]);
	s.num_cycles = num(argv[6]);
	s.min_lr_rate = num(argv[7]);
	long steps = (long)num(argv[8]);
	for (long i = 0; i < steps; i++) {
		double lr = lr_at(&s, i);
		put(&lr, sizeof lr, 1);
	}
	return fflush(stdout) ? 1 : 0;
}

static int do_clip(int argc, char **argv)
{
	if (argc != 4)
		die(2, "usage: optim_driver clip MAX_NORM LEN[,LEN...]%s", "");
	double max_norm = num(argv[2]);
	size_t cap = 16, k = 0, n = 0;
	size_t *len = alloc(cap * sizeof *len);
	for (char *s = strtok(argv[3], ","); s; s = strtok(NULL, ",")) {
		if (k == cap && !(len = realloc(len, (cap *= 2) * sizeof *len)))
			die(1, "out of memory%s", "");
		len[k] = (size_t)num(s);
		n += len[k++];
	}
	float *g = alloc(n * sizeof *g);
	get(g, sizeof *g, n);
	float norm = clip_grad_norm(g, n, len, k, max_norm);
	put(&norm, sizeof norm, 1);
	put(g, sizeof *g, n);
	free(g);
	free(len);
	return fflush(stdout) ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "adamw"))
		return do_adamw(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "lr"))
		return do_lr(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "clip"))
		return do_clip(argc, argv);
	die(2, "usage: optim_driver adamw|lr|clip ...%s", "");
}
