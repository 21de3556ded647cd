/* test_quant: frozen-weight formats (lib/quant.c) and ggml block formats
 * (lib/gguf_dequant.c) on inputs made here.
 *
 * Exactness against bitsandbytes and gguf-py is tests/ref/test_quant_bnb.py and
 * tests/ref/test_ggml_dequant.py; this test checks what needs no reference:
 * fp32 and bf16 storage are exact (bf16 as half.h rounds), NF4 and INT8 stay
 * within their rounding error, every NF4 code is the nearest table value (up
 * to an ulp: bitsandbytes rounds at fp32 midpoints), a zero block comes back
 * as zeros, partial and unaligned ranges equal the matching slice of a whole
 * dequantization, and each ggml format decodes hand-made blocks whose values
 * are known, with range and type errors reported. */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "gguf.h"
#include "half.h"
#include "quant.h"

static uint64_t seed;

/* check.h's seeded stream */
static uint64_t next64(void) { return rng_next(check_rng()); }

static float uniform01(void) /* [0, 1) */
{
	return (float)(next64() >> 40) / 16777216.0f;
}

static float rng_normal(void)
{
	float u = uniform01() + 1e-7f, v = uniform01();
	return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

static float *random_matrix(int64_t n, int heavy)
{
	float *x = malloc((size_t)(n ? n : 1) * sizeof *x);
	if (!x)
		abort();
	for (int64_t i = 0; i < n; i++) {
		float v = rng_normal();
		if (heavy) /* a few large outliers, as in real weights */
			v *= uniform01() < 0.01f ? 50.0f : 0.05f;
		x[i] = v;
	}
	return x;
}

/* ---- names ---- */

static void test_wfmt_names(void)
{
	for (int f = WFMT_F32; f <= WFMT_INT8; f++)
		CHECK(wfmt_parse(wfmt_name((enum wfmt)f)) == f, "format %d: name %s", f, wfmt_name((enum wfmt)f));
	CHECK(wfmt_parse("fp32") == -1 && wfmt_parse("") == -1 && wfmt_parse("NF4") == -1, "unknown names accepted");
	CHECK(strcmp(wfmt_name(WFMT_NF4), "nf4") == 0, "nf4 name %s", wfmt_name(WFMT_NF4));
}

/* ---- fp32 and bf16 ---- */

static void check_rows(const struct weight *w, const float *expect, const char *what)
{
	int64_t rows = w->rows, cols = w->cols;
	float *out = malloc((size_t)(rows * cols + 1) * sizeof *out);
	weight_rows_f32(w, 0, rows, out);
	int64_t bad = -1;
	for (int64_t i = 0; i < rows * cols && bad < 0; i++)
		if (half_f32_bits(out[i]) != half_f32_bits(expect[i]))
			bad = i;
	CHECK(bad < 0, "%s: element %" PRId64 " is %.9g, expected %.9g (seed %" PRIu64 ")", what, bad,
	      bad >= 0 ? out[bad] : 0, bad >= 0 ? expect[bad] : 0, seed);
	/* every sub-range of rows equals the slice of the whole */
	for (int64_t r0 = 0; r0 < rows; r0 += 3)
		for (int64_t nr = 1; r0 + nr <= rows && nr <= 4; nr++) {
			float *part = malloc((size_t)(nr * cols + 1) * sizeof *part);
			weight_rows_f32(w, r0, nr, part);
			CHECK(memcmp(part, expect + r0 * cols, (size_t)(nr * cols) * sizeof *part) == 0,
			      "%s: rows [%" PRId64 ", %" PRId64 ") differ from the whole", what, r0, r0 + nr);
			free(part);
		}
	free(out);
}

static void test_weight_f32(void)
{
	int64_t rows = 7, cols = 13;
	float *x = random_matrix(rows * cols, 0);
	struct weight w;
	struct err err;
	CHECK(weight_from_f32(&w, WFMT_F32, x, rows, cols, &err) == 0, "%s", err.msg);
	CHECK(w.fmt == WFMT_F32 && w.rows == rows && w.cols == cols, "shape");
	CHECK(weight_bytes(&w) == (size_t)(rows * cols * 4), "bytes %zu", weight_bytes(&w));
	check_rows(&w, x, "f32");
	weight_free(&w);
	free(x);
}

static void test_weight_bf16(void)
{
	int64_t rows = 9, cols = 31;
	float *x = random_matrix(rows * cols, 1), *expect = malloc((size_t)(rows * cols) * sizeof *expect);
	x[0] = 1.00390625f; /* exactly between two bf16 values: ties to even, down */
	x[1] = 1.01171875f; /* tie, up to even */
	x[2] = -0.0f;
	for (int64_t i = 0; i < rows * cols; i++)
		expect[i] = bf16_to_f32(f32_to_bf16(x[i]));
	CHECK(expect[0] == 1.0f && expect[1] == 1.015625f, "bf16 ties: %.9g %.9g", expect[0], expect[1]);
	struct weight w;
	struct err err;
	CHECK(weight_from_f32(&w, WFMT_BF16, x, rows, cols, &err) == 0, "%s", err.msg);
	CHECK(weight_bytes(&w) == (size_t)(rows * cols * 2), "bytes %zu", weight_bytes(&w));
	check_rows(&w, expect, "bf16");
	weight_free(&w);
	free(x);
	free(expect);
}

static void test_weight_empty(void)
{
	struct weight w;
	struct err err;
	for (int f = WFMT_F32; f <= WFMT_INT8; f++) {
		CHECK(weight_from_f32(&w, (enum wfmt)f, NULL, 0, 8, &err) == 0, "%s: %s", wfmt_name((enum wfmt)f),
		      err.msg);
		weight_rows_f32(&w, 0, 0, NULL);
		weight_free(&w);
	}
	CHECK(weight_from_f32(&w, WFMT_F32, NULL, -1, 8, &err) == -1, "negative rows accepted");
	weight_free(&w);
}

/* ---- NF4 ---- */

static int nearest_index(const float *t, int n, float v)
{
	int best = 0;
	for (int i = 1; i < n; i++)
		if (fabsf(v - t[i]) < fabsf(v - t[best]))
			best = i;
	return best;
}

static void check_nf4(const float *x, int64_t n, const char *what)
{
	struct nf4 q;
	struct err err;
	if (nf4_quantize(x, n, &q, &err)) {
		CHECK(0, "%s: %s", what, err.msg);
		return;
	}
	int64_t nb = (n + NF4_BLOCK - 1) / NF4_BLOCK;
	float *y = malloc((size_t)(n + 1) * sizeof *y);
	nf4_dequantize(&q, 0, n, y);
	double sum = 0;
	int64_t bad_code = -1, bad_err = -1;
	for (int64_t b = 0; b < nb; b++) {
		float m = 0;
		for (int64_t i = b * NF4_BLOCK; i < n && i < (b + 1) * NF4_BLOCK; i++)
			m = fmaxf(m, fabsf(x[i]));
		sum += m;
		for (int64_t i = b * NF4_BLOCK; i < n && i < (b + 1) * NF4_BLOCK; i++) {
			int c = i % 2 ? q.codes[i / 2] & 15 : q.codes[i / 2] >> 4;
			/* bitsandbytes rounds at fp32 midpoints: nearest up to an ulp */
			float s = x[i] / m;
			if (m > 0 && bad_code < 0 &&
			    fabsf(s - nf4_table[c]) > fabsf(s - nf4_table[nearest_index(nf4_table, 16, s)]) + 1e-6f)
				bad_code = i;
			/* code rounding (half the widest NF4 gap, 0.152) plus the 8-bit
			 * scale error (map steps are under 1% near 1, absmax2 bounds the
			 * rest) */
			double tol = 0.16 * m + 0.01 * q.absmax2[b / NF4_BLOCK2] + 1e-6;
			if (bad_err < 0 && fabs((double)y[i] - x[i]) > tol)
				bad_err = i;
		}
	}
	CHECK(bad_code < 0, "%s: element %" PRId64 " (%.9g) has no nearest code (seed %" PRIu64 ")", what, bad_code,
	      bad_code >= 0 ? x[bad_code] : 0, seed);
	CHECK(bad_err < 0, "%s: element %" PRId64 " is %.9g, was %.9g (seed %" PRIu64 ")", what, bad_err,
	      bad_err >= 0 ? y[bad_err] : 0, bad_err >= 0 ? x[bad_err] : 0, seed);
	CHECK(nb == 0 || fabsf(q.offset - (float)(sum / (double)nb)) <= 1e-6f * (float)(sum / (double)nb),
	      "%s: offset %.9g, mean absmax %.9g", what, q.offset, sum / (double)nb);
	if (n % 2) /* bitsandbytes pads with a 0, code 7 */
		CHECK((q.codes[n / 2] & 15) == 7, "%s: the unused last nibble is %d", what, q.codes[n / 2] & 15);
	/* any start, any count equals the slice */
	int64_t bad_range = -1;
	float *part = malloc((size_t)(n + 1) * sizeof *part);
	for (int k = 0; k < 200 && n > 0; k++) {
		int64_t s = (int64_t)(next64() % (uint64_t)n), c = (int64_t)(next64() % (uint64_t)(n - s + 1));
		if (k < 4) { /* the edges */
			s = k < 2 ? 0 : n - 1 - (k % 2);
			c = s < 0 ? 0 : n - s;
			if (s < 0)
				s = 0;
		}
		nf4_dequantize(&q, s, c, part);
		if (memcmp(part, y + s, (size_t)c * sizeof *part) && bad_range < 0)
			bad_range = s;
	}
	CHECK(bad_range < 0, "%s: dequantizing from %" PRId64 " differs from the whole", what, bad_range);
	free(part);
	free(y);
	nf4_free(&q);
}

static void test_nf4_sizes(void)
{
	static const int64_t sizes[] = {1, 2, 63, 64, 65, 127, 128, 1000, 64 * 256, 64 * 256 + 1, 64 * 300 + 17, 100003};
	for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++)
		for (int heavy = 0; heavy < 2; heavy++) {
			float *x = random_matrix(sizes[k], heavy);
			char what[64];
			snprintf(what, sizeof what, "n=%" PRId64 "%s", sizes[k], heavy ? " heavy" : "");
			check_nf4(x, sizes[k], what);
			free(x);
		}
}

static void test_nf4_table_values(void)
{
	/* the table's own values quantize to themselves when the block's absmax is 1 */
	float x[64];
	for (int i = 0; i < 64; i++)
		x[i] = nf4_table[i % 16];
	struct nf4 q;
	struct err err;
	CHECK(nf4_quantize(x, 64, &q, &err) == 0, "%s", err.msg);
	for (int i = 0; i < 64; i++) {
		int c = i % 2 ? q.codes[i / 2] & 15 : q.codes[i / 2] >> 4;
		CHECK(c == i % 16, "element %d: code %d", i, c);
	}
	/* one block: offset is its absmax, absmax - offset is 0 */
	CHECK(q.offset == 1.0f, "offset %.9g", q.offset);
	nf4_free(&q);
	CHECK(nf4_table[0] == -1.0f && nf4_table[7] == 0.0f && nf4_table[15] == 1.0f, "table ends");
	for (int i = 1; i < 256; i++)
		CHECK(nf4_dynamic_map[i - 1] <= nf4_dynamic_map[i], "dynamic map not sorted at %d", i);
	CHECK(nf4_dynamic_map[0] < -0.99f && nf4_dynamic_map[255] == 1.0f, "dynamic map ends %.9g %.9g",
	      nf4_dynamic_map[0], nf4_dynamic_map[255]);
}

static void test_nf4_zero_block(void)
{
	/* a whole block of zeros among normal ones comes back as +0 (code 7) */
	float *x = random_matrix(64 * 5, 0);
	memset(x + 128, 0, 64 * sizeof *x);
	struct nf4 q;
	struct err err;
	CHECK(nf4_quantize(x, 64 * 5, &q, &err) == 0, "%s", err.msg);
	float y[64 * 5];
	nf4_dequantize(&q, 0, 64 * 5, y);
	for (int i = 128; i < 192; i++)
		CHECK(half_f32_bits(y[i]) == 0, "zero block element %d is %.9g", i, y[i]);
	nf4_free(&q);
	free(x);
}

static void test_weight_nf4(void)
{
	int64_t rows = 37, cols = 45; /* rows do not start on block boundaries */
	float *x = random_matrix(rows * cols, 0), *expect = malloc((size_t)(rows * cols) * sizeof *expect);
	struct weight w;
	struct err err;
	CHECK(weight_from_f32(&w, WFMT_NF4, x, rows, cols, &err) == 0, "%s", err.msg);
	nf4_dequantize(&w.nf4, 0, rows * cols, expect);
	int64_t nb = (rows * cols + 63) / 64;
	CHECK(weight_bytes(&w) == (size_t)((rows * cols + 1) / 2 + nb + 4 + 4), "bytes %zu", weight_bytes(&w));
	check_rows(&w, expect, "nf4");
	weight_free(&w);
	free(x);
	free(expect);
}

/* ---- INT8 ---- */

static void test_q8(void)
{
	int64_t rows = 11, cols = 77;
	float *x = random_matrix(rows * cols, 1);
	memset(x + 3 * cols, 0, (size_t)cols * sizeof *x); /* a zero row */
	struct weight w;
	struct err err;
	CHECK(weight_from_f32(&w, WFMT_INT8, x, rows, cols, &err) == 0, "%s", err.msg);
	CHECK(weight_bytes(&w) == (size_t)(rows * cols + rows * 4), "bytes %zu", weight_bytes(&w));
	float *y = malloc((size_t)(rows * cols) * sizeof *y);
	weight_rows_f32(&w, 0, rows, y);
	for (int64_t r = 0; r < rows; r++) {
		float m = 0;
		for (int64_t c = 0; c < cols; c++)
			m = fmaxf(m, fabsf(x[r * cols + c]));
		CHECK(w.q8.scale[r] == m, "row %" PRId64 ": scale %.9g, absmax %.9g", r, w.q8.scale[r], m);
		for (int64_t c = 0; c < cols; c++) {
			float v = x[r * cols + c], got = y[r * cols + c];
			int q = w.q8.q[r * cols + c];
			CHECK(q >= -127 && q <= 127, "code %d", q);
			/* half a step of m/127, plus fp32 rounding */
			CHECK(fabsf(got - v) <= m / 254.0f * 1.0001f + 1e-30f, "row %" PRId64 " col %" PRId64 ": %.9g for %.9g",
			      r, c, got, v);
			if (fabsf(v) == m && m > 0)
				CHECK(abs(q) == 127, "the row's absmax has code %d", q);
		}
	}
	check_rows(&w, y, "int8");
	weight_free(&w);
	free(x);
	free(y);
}

/* ---- ggml block formats ---- */

static void put_f16(uint8_t *p, float v)
{
	uint16_t h = f32_to_f16(v);
	p[0] = (uint8_t)h;
	p[1] = (uint8_t)(h >> 8);
}

static int dequant(enum ggml_type type, const uint8_t *data, size_t nbytes, int64_t n, float *out, struct err *err)
{
	struct gguf_tensor t = {.name = "t", .n_dims = 1, .ne = {n, 1, 1, 1}, .type = type, .data = data, .nbytes = nbytes};
	return gguf_dequantize(&t, 0, n, out, err);
}

static void test_ggml_simple(void)
{
	struct err err;
	float out[256];
	/* F32, F16, BF16 */
	float f[3] = {1.5f, -2.25f, 3e-8f};
	CHECK(dequant(GGML_TYPE_F32, (const uint8_t *)f, sizeof f, 3, out, &err) == 0 && memcmp(out, f, sizeof f) == 0,
	      "f32");
	uint8_t h[6];
	for (int i = 0; i < 3; i++)
		put_f16(h + 2 * i, f[i]);
	CHECK(dequant(GGML_TYPE_F16, h, 6, 3, out, &err) == 0, "%s", err.msg);
	for (int i = 0; i < 3; i++)
		CHECK(out[i] == f16_to_f32(f32_to_f16(f[i])), "f16 %d: %.9g", i, out[i]);
	uint8_t bf[4] = {0x80, 0x3f, 0x20, 0xc0}; /* 1.0, -2.5 */
	CHECK(dequant(GGML_TYPE_BF16, bf, 4, 2, out, &err) == 0 && out[0] == 1.0f && out[1] == -2.5f, "bf16 %g %g",
	      out[0], out[1]);
	/* Q8_0: d = 0.5, qs = -16..15 */
	uint8_t q8[34];
	put_f16(q8, 0.5f);
	for (int j = 0; j < 32; j++)
		q8[2 + j] = (uint8_t)(int8_t)(j - 16);
	CHECK(dequant(GGML_TYPE_Q8_0, q8, 34, 32, out, &err) == 0, "%s", err.msg);
	for (int j = 0; j < 32; j++)
		CHECK(out[j] == 0.5f * (float)(j - 16), "q8_0 %d: %g", j, out[j]);
	/* Q4_0 and Q4_1: low nibbles are elements 0..15, high ones 16..31 */
	uint8_t q4[20];
	put_f16(q4, 2.0f);
	put_f16(q4 + 2, -1.0f);
	for (int j = 0; j < 16; j++)
		q4[4 + j] = (uint8_t)(j | (15 - j) << 4);
	uint8_t q40[18];
	put_f16(q40, 2.0f);
	memcpy(q40 + 2, q4 + 4, 16);
	CHECK(dequant(GGML_TYPE_Q4_0, q40, 18, 32, out, &err) == 0, "%s", err.msg);
	for (int j = 0; j < 16; j++)
		CHECK(out[j] == 2.0f * (float)(j - 8) && out[j + 16] == 2.0f * (float)(7 - j), "q4_0 %d: %g %g", j,
		      out[j], out[j + 16]);
	CHECK(dequant(GGML_TYPE_Q4_1, q4, 20, 32, out, &err) == 0, "%s", err.msg);
	for (int j = 0; j < 16; j++)
		CHECK(out[j] == 2.0f * (float)j - 1.0f && out[j + 16] == 2.0f * (float)(15 - j) - 1.0f, "q4_1 %d", j);
	/* Q5_0: qh bit j is the 5th bit of element j */
	uint8_t q5[22] = {0};
	put_f16(q5, 1.0f);
	uint32_t qh = 0x80000001u; /* elements 0 and 31 */
	memcpy(q5 + 2, &qh, 4);
	for (int j = 0; j < 16; j++)
		q5[6 + j] = 0x33;
	CHECK(dequant(GGML_TYPE_Q5_0, q5, 22, 32, out, &err) == 0, "%s", err.msg);
	for (int j = 0; j < 32; j++)
		CHECK(out[j] == (float)((j == 0 || j == 31 ? 16 : 0) + 3 - 16), "q5_0 %d: %g", j, out[j]);
}

static void test_ggml_q4_k(void)
{
	/* Q4_K: d = 1, dmin = 0.5; scales of group j = j + 1, mins = 2j (six bits,
	 * groups 4..7 split over the high bits) */
	uint8_t b[144] = {0};
	put_f16(b, 1.0f);
	put_f16(b + 2, 0.5f);
	uint8_t *s = b + 4;
	int sc[8], mn[8];
	for (int j = 0; j < 8; j++) {
		sc[j] = j * 9; /* up to 63: uses the high bits */
		mn[j] = 63 - j * 7;
	}
	for (int j = 0; j < 4; j++) {
		s[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
		s[j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
		s[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
	}
	for (int l = 0; l < 128; l++)
		b[16 + l] = (uint8_t)((l % 16) | ((l * 7) % 16) << 4);
	float out[256];
	struct err err;
	CHECK(dequant(GGML_TYPE_Q4_K, b, 144, 256, out, &err) == 0, "%s", err.msg);
	for (int i = 0; i < 256; i++) {
		int g = i / 32, chunk = i / 64, l = i % 32, byte = chunk * 32 + l;
		int q = g % 2 ? (byte * 7) % 16 : byte % 16;
		float expect = 1.0f * (float)sc[g] * (float)q - 0.5f * (float)mn[g];
		CHECK(out[i] == expect, "element %d: %g, expected %g", i, out[i], expect);
	}
}

static void test_ggml_errors(void)
{
	struct err err;
	float out[64];
	uint8_t z[96] = {0};
	struct gguf_tensor t = {.name = "blk.0.w", .n_dims = 1, .ne = {64, 1, 1, 1}, .type = GGML_TYPE_IQ2_XS,
				.data = z, .nbytes = 64};
	CHECK(gguf_dequantize(&t, 0, 64, out, &err) == -1 && strcmp(err.msg, "blk.0.w: type IQ2_XS is not supported") == 0,
	      "message: %s", err.msg);
	CHECK(!gguf_can_dequantize(GGML_TYPE_IQ2_XS) && gguf_can_dequantize(GGML_TYPE_Q6_K) &&
		      !gguf_can_dequantize((enum ggml_type)200),
	      "can_dequantize");
	t.type = GGML_TYPE_Q8_0;
	t.nbytes = 68;
	CHECK(gguf_dequantize(&t, 16, 32, out, &err) == -1, "unaligned start accepted");
	CHECK(gguf_dequantize(&t, 32, 64, out, &err) == -1, "range past the end accepted");
	CHECK(gguf_dequantize(&t, 32, 32, out, &err) == 0, "%s", err.msg);
	t.nbytes = 40;
	CHECK(gguf_dequantize(&t, 32, 32, out, &err) == -1, "short data accepted");
}

int main(void)
{
	seed = check_seed_init();
	RUN(test_wfmt_names);
	RUN(test_weight_f32);
	RUN(test_weight_bf16);
	RUN(test_weight_empty);
	RUN(test_nf4_table_values);
	RUN(test_nf4_sizes);
	RUN(test_nf4_zero_block);
	RUN(test_weight_nf4);
	RUN(test_q8);
	RUN(test_ggml_simple);
	RUN(test_ggml_q4_k);
	RUN(test_ggml_errors);
	return check_done();
}
