/* check: the unit-test harness. Each test program runs its cases with RUN(fn);
 * a case reports "ok - name" or "not ok - name: why" on stdout, which tests/run
 * counts. CHECK records a failure and goes on; the program exits 1 if any failed.
 *
 *   static void test_roundtrip(void) { CHECK(x == 1, "x is %d", x); }
 *   int main(void) { RUN(test_roundtrip); return check_done(); }
 */
#ifndef LORAPIPE_CHECK_H
#define LORAPIPE_CHECK_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "rng.h"

static int check_failed_cases;
static int check_case_failed;
static const char *check_case_name;

#define CHECK(cond, ...)                                                         \
	do {                                                                     \
		if (!(cond)) {                                                   \
			if (!check_case_failed)                                  \
				printf("not ok - %s: ", check_case_name);        \
			else                                                     \
				printf("    also: ");                            \
			printf("%s:%d: ", __FILE__, __LINE__);                   \
			printf(__VA_ARGS__);                                     \
			printf("\n");                                            \
			check_case_failed = 1;                                   \
		}                                                                \
	} while (0)

#define RUN(fn) RUN_AS(fn, #fn)
/* RUN under a name of the caller's (a case run once per setting). */
#define RUN_AS(fn, name)                                                         \
	do {                                                                     \
		check_case_name = (name);                                        \
		check_case_failed = 0;                                           \
		fn();                                                            \
		if (check_case_failed)                                           \
			check_failed_cases++;                                    \
		else                                                             \
			printf("ok - %s\n", check_case_name);                     \
		fflush(stdout);                                                  \
	} while (0)

/* A case that cannot run here says so; it is counted as skipped, never passed. */
#define SKIP(fn, reason) printf("skip - %s: %s\n", #fn, reason)

static inline int check_done(void) { return check_failed_cases ? 1 : 0; }

/* Fresh random inputs: one lib/rng.h stream, seeded from $LORAPIPE_SEED or
 * the clock. check_seed_init() prints the seed so that a failure can be
 * replayed, and returns it. */
static inline uint64_t *check_rng(void)
{
	static uint64_t state;
	return &state;
}

static inline unsigned long long check_seed_init(void)
{
	const char *s = getenv("LORAPIPE_SEED");
	unsigned long long seed = s ? strtoull(s, NULL, 10) : (unsigned long long)time(NULL);
	*check_rng() = seed;
	printf("# seed %llu (LORAPIPE_SEED=%llu replays it)\n", seed, seed);
	return seed;
}

/* Uniform in [0, 1). */
static inline double check_urand(void) { return rng_uniform(check_rng()); }

/* max |a - b| / max |b| over count values (a NaN in a counts as infinite). */
static inline double check_rel_err(const float *a, const float *b, int64_t count)
{
	double md = 0, mb = 0;
	for (int64_t i = 0; i < count; i++) {
		double d = fabs((double)a[i] - b[i]);
		if (!(d <= md))
			md = d;
		if (fabs(b[i]) > mb)
			mb = fabs(b[i]);
	}
	return mb > 0 ? md / mb : md;
}

#endif
