/* test_half: lib/half.h's fp16 and bf16 conversions against references
 * written here a different way (double arithmetic with rint, which rounds
 * half to even in the default rounding mode).
 *
 * Covered exhaustively: every f16 pattern to fp32 and back; every midpoint
 * between neighbouring f16 and bf16 values, and the fp32 values one ulp on
 * either side of it (ties to even, carries into the exponent, overflow to
 * infinity, the subnormal range); NaN keeps being NaN with its sign. Plus a
 * few million random fp32 patterns. The comparison with numpy's float16 and
 * torch's bfloat16 is in tests/ref/test_quant_bnb.py. */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>

#include "check.h"
#include "half.h"

/* The fp32 value of f16 pattern h, from its definition. */
static double f16_value(uint16_t h)
{
	int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
	double v;
	if (exp == 31)
		v = man ? NAN : INFINITY;
	else if (exp == 0)
		v = ldexp(man, -24);
	else
		v = ldexp(1024 + man, exp - 25);
	return sign ? -v : v;
}

/* The nearest f16 to a finite or infinite x, ties to even. */
static uint16_t f16_nearest(float x)
{
	uint16_t sign = signbit(x) ? 0x8000 : 0;
	double a = fabs((double)x);
	if (isinf(a))
		return sign | 0x7c00;
	if (a < ldexp(1, -14)) /* subnormal step 2^-24; rounding up to 0x400 gives the smallest normal */
		return (uint16_t)(sign | (uint16_t)rint(a * 16777216.0));
	int e;
	frexp(a, &e); /* a = f * 2^e, f in [0.5, 1) */
	e -= 1;       /* a in [2^e, 2^(e+1)) */
	double m = rint(ldexp(a, 10 - e)); /* 1024..2048 */
	if (m == 2048) {
		m = 1024;
		e++;
	}
	if (e > 15)
		return sign | 0x7c00;
	return (uint16_t)(sign | (uint16_t)((e + 15) << 10) | (uint16_t)(m - 1024));
}

/* The nearest bf16 to a non-NaN x: keep the top 16 bits, rounding the rest
 * by comparing it with half of the dropped range. */
static uint16_t bf16_nearest(float x)
{
	uint32_t u = half_f32_bits(x), rest = u & 0xffff, top = u >> 16;
	if (rest > 0x8000 || (rest == 0x8000 && (top & 1)))
		top++;
	return (uint16_t)top;
}

static uint64_t rng = 0x243f6a8885a308d3u;
static uint32_t rng32(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 16);
}

static int bad_count;
#define CHECK_SOME(cond, ...)                                                    \
	do {                                                                     \
		if (!(cond) && bad_count++ < 5)                                  \
			CHECK(cond, __VA_ARGS__);                                \
	} while (0)

static void test_f16_to_f32_all(void)
{
	bad_count = 0;
	for (uint32_t h = 0; h < 65536; h++) {
		float f = f16_to_f32((uint16_t)h);
		double v = f16_value((uint16_t)h);
		if (isnan(v))
			CHECK_SOME(isnan(f) && !!signbit(f) == (h >> 15), "f16 0x%04x: %g is no NaN of that sign", h, f);
		else
			CHECK_SOME((double)f == v && !!signbit(f) == (h >> 15), "f16 0x%04x: %.9g, expected %.17g", h, f,
				   v);
	}
}

static void test_f16_roundtrip_all(void)
{
	bad_count = 0;
	for (uint32_t h = 0; h < 65536; h++) {
		uint16_t back = f32_to_f16(f16_to_f32((uint16_t)h));
		if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) /* NaN: stays NaN, same sign */
			CHECK_SOME((back & 0x7c00) == 0x7c00 && (back & 0x3ff) && (back & 0x8000) == (h & 0x8000),
				   "NaN 0x%04x came back 0x%04x", h, back);
		else
			CHECK_SOME(back == h, "f16 0x%04x came back 0x%04x", h, back);
	}
}

/* For each pair of neighbouring non-negative f16 values (and the step past
 * the largest one, toward infinity): the midpoint and one fp32 ulp around it,
 * positive and negative. */
static void test_f32_to_f16_midpoints(void)
{
	bad_count = 0;
	for (uint32_t h = 0; h < 0x7c00; h++) {
		double lo = f16_value((uint16_t)h), hi = h == 0x7bff ? 65536.0 : f16_value((uint16_t)(h + 1));
		float mid = (float)((lo + hi) / 2); /* exact: f16 midpoints fit in fp32 */
		float probes[3] = {nextafterf(mid, 0), mid, nextafterf(mid, INFINITY)};
		for (int k = 0; k < 3; k++)
			for (int s = 0; s < 2; s++) {
				float x = s ? -probes[k] : probes[k];
				uint16_t got = f32_to_f16(x), want = f16_nearest(x);
				CHECK_SOME(got == want, "f32 %a: f16 0x%04x, expected 0x%04x", x, got, want);
			}
	}
}

static void test_f32_to_f16_edges(void)
{
	static const struct {
		float x;
		uint16_t h;
	} cases[] = {
		{0.0f, 0x0000},
		{-0.0f, 0x8000},
		{1.0f, 0x3c00},
		{65504.0f, 0x7bff},
		{65519.99f, 0x7bff},
		{65520.0f, 0x7c00}, /* the tie between 65504 and 65536 goes to even: infinity */
		{1e10f, 0x7c00},
		{-1e10f, 0xfc00},
		{INFINITY, 0x7c00},
		{-INFINITY, 0xfc00},
		{0x1p-24f, 0x0001},
		{0x1p-25f, 0x0000},           /* tie: to even 0 */
		{0x1.000002p-25f, 0x0001},    /* just above the tie */
		{0x1.8p-24f, 0x0002},         /* 1.5 steps: to even 2 */
		{0x1p-14f, 0x0400},           /* smallest normal */
		{0x1.ffcp-15f, 0x0400},       /* the tie below it rounds up into the normals */
		{0x1p-30f, 0x0000},
		{-0x1p-24f, 0x8001},
		{0x1.002p+0f, 0x3c00},        /* 1 + 2^-11: tie, to even */
		{0x1.006p+0f, 0x3c02},        /* 1 + 3 * 2^-11: tie, to even */
		{2047.5f, 0x6800},            /* spacing 1 below 2048: the tie goes to even 2048 */
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		uint16_t want = cases[i].h, got = f32_to_f16(cases[i].x);
		CHECK(got == want, "f32 %a: 0x%04x, expected 0x%04x", cases[i].x, got, want);
	}
	float nan = half_bits_f32(0x7fc00000u), snan = half_bits_f32(0xff800001u);
	uint16_t a = f32_to_f16(nan), b = f32_to_f16(snan);
	CHECK((a & 0x7c00) == 0x7c00 && (a & 0x3ff) && !(a & 0x8000), "quiet NaN: 0x%04x", a);
	CHECK((b & 0x7c00) == 0x7c00 && (b & 0x3ff) && (b & 0x8000), "signalling negative NaN: 0x%04x", b);
}

static void test_f32_to_f16_random(void)
{
	bad_count = 0;
	for (int i = 0; i < 4000000; i++) {
		uint32_t u = rng32();
		if (i % 2) /* half of them in f16's range of exponents */
			u = (u & 0x807fffffu) | (uint32_t)(0x60 + rng32() % 0x40) << 23;
		float x = half_bits_f32(u);
		if (isnan(x))
			continue;
		uint16_t got = f32_to_f16(x), want = f16_nearest(x);
		CHECK_SOME(got == want, "f32 0x%08x: 0x%04x, expected 0x%04x", u, got, want);
	}
}

static void test_bf16_all(void)
{
	bad_count = 0;
	for (uint32_t h = 0; h < 65536; h++) {
		float f = bf16_to_f32((uint16_t)h);
		CHECK_SOME(half_f32_bits(f) == h << 16, "bf16 0x%04x: %a", h, f);
		uint16_t back = f32_to_bf16(f);
		if (isnan(f)) {
			CHECK_SOME(isnan(bf16_to_f32(back)) && (back & 0x8000) == (h & 0x8000), "NaN 0x%04x came back 0x%04x",
				   h, back);
			continue;
		}
		CHECK_SOME(back == h, "bf16 0x%04x came back 0x%04x", h, back);
		/* the midpoint to the next pattern and its neighbours */
		if ((h & 0x7fff) >= 0x7f80)
			continue;
		uint32_t mid = h << 16 | 0x8000;
		for (uint32_t u = mid - 1; u <= mid + 1; u++) {
			float x = half_bits_f32(u);
			CHECK_SOME(f32_to_bf16(x) == bf16_nearest(x), "f32 0x%08x: 0x%04x, expected 0x%04x", u,
				   f32_to_bf16(x), bf16_nearest(x));
		}
	}
	CHECK(f32_to_bf16(3.4028235e38f) == 0x7f80, "max float: 0x%04x (rounds to infinity)", f32_to_bf16(3.4028235e38f));
	CHECK(f32_to_bf16(-INFINITY) == 0xff80, "-inf: 0x%04x", f32_to_bf16(-INFINITY));
	CHECK(f32_to_bf16(0x1p-149f) == 0x0000, "smallest subnormal: 0x%04x", f32_to_bf16(0x1p-149f));
	CHECK(f32_to_bf16(0x1.01p-127f) == 0x0040, "subnormal: 0x%04x", f32_to_bf16(0x1.01p-127f));
	uint16_t n = f32_to_bf16(half_bits_f32(0xff800001u));
	CHECK(isnan(bf16_to_f32(n)) && (n & 0x8000), "signalling negative NaN: 0x%04x", n);
	n = f32_to_bf16(half_bits_f32(0x7f800001u));
	CHECK(isnan(bf16_to_f32(n)) && !(n & 0x8000), "NaN with only a low payload bit: 0x%04x", n);
}

static void test_bf16_random(void)
{
	bad_count = 0;
	for (int i = 0; i < 4000000; i++) {
		float x = half_bits_f32(rng32());
		if (isnan(x))
			continue;
		CHECK_SOME(f32_to_bf16(x) == bf16_nearest(x), "f32 %a: 0x%04x, expected 0x%04x", x, f32_to_bf16(x),
			   bf16_nearest(x));
	}
}

int main(void)
{
	RUN(test_f16_to_f32_all);
	RUN(test_f16_roundtrip_all);
	RUN(test_f32_to_f16_midpoints);
	RUN(test_f32_to_f16_edges);
	RUN(test_f32_to_f16_random);
	RUN(test_bf16_all);
	RUN(test_bf16_random);
	return check_done();
}
