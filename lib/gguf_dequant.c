/* gguf_dequant: ggml's tensor storage formats to fp32, value for value as
 * ggml's dequantize_row_* functions compute them (ggml-quants.c).
 *
 * Each block format has one function that expands nb whole blocks. The
 * arithmetic keeps ggml's order and types (an int code converted to float,
 * multiplied by the fp32 scale, then the fp32 minimum subtracted or added, each
 * step rounded to fp32 on its own, no fused multiply-add), so the results
 * are bit-identical to ggml's scalar code. Block layouts (little-endian, no
 * padding; d, m, dmin are fp16):
 *
 *   Q4_0  d, qs[16]                 32 values; low nibbles first, then high
 *   Q4_1  d, m, qs[16]              y = q * d + m
 *   Q5_0  d, qh[4], qs[16]          5th bit of value j in bit j of qh (u32)
 *   Q5_1  d, m, qh[4], qs[16]
 *   Q8_0  d, qs[32] (int8)
 *   Q2_K  scales[16], qs[64], d, dmin                 256 values, 16 groups
 *   Q3_K  hmask[32], qs[64], scales[12], d            6-bit signed scales
 *   Q4_K  d, dmin, scales[12], qs[128]                8 groups, 6-bit scales/mins
 *   Q5_K  d, dmin, scales[12], qh[32], qs[128]
 *   Q6_K  ql[128], qh[64], scales[16] (int8), d
 */
#include "gguf.h"

#include <inttypes.h>
#include <string.h>

#include "half.h"

#define QK 32
#define QK_K 256

static float f16_at(const uint8_t *p)
{
	return f16_to_f32((uint16_t)(p[0] | p[1] << 8));
}

static void dq_f32(const uint8_t *b, int64_t nb, float *y)
{
	memcpy(y, b, (size_t)nb * 4);
}

static void dq_f16(const uint8_t *b, int64_t nb, float *y)
{
	for (int64_t i = 0; i < nb; i++)
		y[i] = f16_at(b + 2 * i);
}

static void dq_bf16(const uint8_t *b, int64_t nb, float *y)
{
	for (int64_t i = 0; i < nb; i++)
		y[i] = bf16_to_f32((uint16_t)(b[2 * i] | b[2 * i + 1] << 8));
}

static void dq_q4_0(const uint8_t *b, int64_t nb, float *y)
{
	for (int64_t i = 0; i < nb; i++, b += 18, y += QK) {
		float d = f16_at(b);
		const uint8_t *qs = b + 2;
		for (int j = 0; j < QK / 2; j++) {
			y[j] = (float)((qs[j] & 0x0f) - 8) * d;
			y[j + QK / 2] = (float)((qs[j] >> 4) - 8) * d;
		}
	}
}

static void dq_q4_1(const uint8_t *b, int64_t nb, float *y)
{
	for (int64_t i = 0; i < nb; i++, b += 20, y += QK) {
		float d = f16_at(b), m = f16_at(b + 2);
		const uint8_t *qs = b + 4;
		for (int j = 0; j < QK / 2; j++) {
			y[j] = (float)(qs[j] & 0x0f) * d + m;
			y[j + QK / 2] = (float)(qs[j] >> 4) * d + m;
		}
	}
}

static uint32_t u32_at(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void dq_q5_0(const uint8_t *b, int64_t nb, float *y)
{
	for (int64_t i = 0; i < nb; i++, b += 22, y += QK) {
		float d = f16_at(b);
		uint32_t qh = u32_at(b + 2);
		const uint8_t *qs = b + 6;
		for (int j = 0; j < QK / 2; j++) {
			int hi0 = (int)((qh >> j) << 4 & 0x10);
			int hi1 = (int)(qh >> (j + 12) & 0x10);
			y[j] = (float)(((qs[j] & 0x0f) | hi0) - 16) * d;
			y[j + QK / 2] = (float)(((qs[j] >> 4) | hi1) - 16) * d;
		}
	}
}

static void dq_q5_1(const uint8_t *b, int64_t nb, float *y)
{
	for (int64_t i = 0; i < nb; i++, b += 24, y += QK) {
		float d = f16_at(b), m = f16_at(b + 2);
		uint32_t qh = u32_at(b + 4);
		const uint8_t *qs = b + 8;
		for (int j = 0; j < QK / 2; j++) {
			int hi0 = (int)((qh >> j) << 4 & 0x10);
			int hi1 = (int)(qh >> (j + 12) & 0x10);
			y[j] = (float)((qs[j] & 0x0f) | hi0) * d + m;
			y[j + QK / 2] = (float)((qs[j] >> 4) | hi1) * d + m;
		}
	}
}

static void dq_q8_0(const uint8_t *b, int64_t nb, float *y)
{
	for (int64_t i = 0; i < nb; i++, b += 34, y += QK) {
		float d = f16_at(b);
		for (int j = 0; j < QK; j++)
			y[j] = (float)(int8_t)b[2 + j] * d;
	}
}

static void dq_q2_k(const uint8_t *b, int64_t nb, float *y)
{
	for (int64_t i = 0; i < nb; i++, b += 84) {
		const uint8_t *scales = b, *q = b + 16;
		float d = f16_at(b + 80), dmin = f16_at(b + 82);
		int is = 0;
		for (int n = 0; n < QK_K; n += 128, q += 32)
			for (int shift = 0; shift < 8; shift += 2)
				for (int half = 0; half < 2; half++) {
					uint8_t sc = scales[is++];
					float dl = d * (float)(sc & 0x0f), ml = dmin * (float)(sc >> 4);
					for (int l = 0; l < 16; l++)
						*y++ = dl * (float)(q[l + 16 * half] >> shift & 3) - ml;
				}
	}
}

/* Q3_K's 16 scales: 6-bit values, low 4 bits in bytes 0..7 (two per byte),
 * high 2 bits in bytes 8..11, stored with a bias of 32. */
static void q3_k_scales(const uint8_t *p, int sc[16])
{
	for (int j = 0; j < 16; j++) {
		int lo = j < 8 ? p[j] & 0x0f : p[j - 8] >> 4;
		int hi = p[8 + j % 4] >> (2 * (j / 4)) & 3;
		sc[j] = (lo | hi << 4) - 32;
	}
}

static void dq_q3_k(const uint8_t *b, int64_t nb, float *y)
{
	for (int64_t i = 0; i < nb; i++, b += 110) {
		const uint8_t *hm = b, *q = b + 32;
		float d = f16_at(b + 108);
		int sc[16], is = 0;
		q3_k_scales(b + 96, sc);
		uint8_t m = 1;
		for (int n = 0; n < QK_K; n += 128, q += 32)
			for (int shift = 0; shift < 8; shift += 2, m = (uint8_t)(m << 1))
				for (int half = 0; half < 2; half++) {
					float dl = d * (float)sc[is++];
					for (int l = 0; l < 16; l++) {
						int k = l + 16 * half;
						int v = (q[k] >> shift & 3) - (hm[k] & m ? 0 : 4);
						*y++ = dl * (float)v;
					}
				}
	}
}

/* Scale and minimum j (0..7) of a Q4_K/Q5_K block: 6 bits each, packed in 12 bytes. */
static void k4_scale_min(int j, const uint8_t *q, int *sc, int *mn)
{
	if (j < 4) {
		*sc = q[j] & 63;
		*mn = q[j + 4] & 63;
	} else {
		*sc = (q[j + 4] & 0x0f) | (q[j - 4] >> 6) << 4;
		*mn = (q[j + 4] >> 4) | (q[j] >> 6) << 4;
	}
}

/* The scales and mins of sub-blocks is and is + 1 of a Q4_K/Q5_K block. */
static void k4_pair(int is, const uint8_t *scales, float d, float dmin, float *d1, float *m1, float *d2, float *m2)
{
	int sc, mn;
	k4_scale_min(is, scales, &sc, &mn);
	*d1 = d * (float)sc, *m1 = dmin * (float)mn;
	k4_scale_min(is + 1, scales, &sc, &mn);
	*d2 = d * (float)sc, *m2 = dmin * (float)mn;
}

static void dq_q4_k(const uint8_t *b, int64_t nb, float *y)
{
	for (int64_t i = 0; i < nb; i++, b += 144) {
		float d = f16_at(b), dmin = f16_at(b + 2);
		const uint8_t *scales = b + 4, *q = b + 16;
		for (int is = 0; is < 8; is += 2, q += 32) {
			float d1, m1, d2, m2;
			k4_pair(is, scales, d, dmin, &d1, &m1, &d2, &m2);
			for (int l = 0; l < 32; l++)
				*y++ = d1 * (float)(q[l] & 0x0f) - m1;
			for (int l = 0; l < 32; l++)
				*y++ = d2 * (float)(q[l] >> 4) - m2;
		}
	}
}

static void dq_q5_k(const uint8_t *b, int64_t nb, float *y)
{
	for (int64_t i = 0; i < nb; i++, b += 176) {
		float d = f16_at(b), dmin = f16_at(b + 2);
		const uint8_t *scales = b + 4, *qh = b + 16, *ql = b + 48;
		uint8_t u1 = 1, u2 = 2;
		for (int is = 0; is < 8; is += 2, ql += 32, u1 = (uint8_t)(u1 << 2), u2 = (uint8_t)(u2 << 2)) {
			float d1, m1, d2, m2;
			k4_pair(is, scales, d, dmin, &d1, &m1, &d2, &m2);
			for (int l = 0; l < 32; l++)
				*y++ = d1 * (float)((ql[l] & 0x0f) + (qh[l] & u1 ? 16 : 0)) - m1;
			for (int l = 0; l < 32; l++)
				*y++ = d2 * (float)((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
		}
	}
}

static void dq_q6_k(const uint8_t *b, int64_t nb, float *y)
{
	for (int64_t i = 0; i < nb; i++, b += 210) {
		const uint8_t *ql = b, *qh = b + 128;
		const int8_t *sc = (const int8_t *)(b + 192);
		float d = f16_at(b + 208);
		for (int n = 0; n < QK_K; n += 128, y += 128, ql += 64, qh += 32, sc += 8)
			for (int l = 0; l < 32; l++) {
				int is = l / 16;
				int q1 = ((ql[l] & 0x0f) | (qh[l] & 3) << 4) - 32;
				int q2 = ((ql[l + 32] & 0x0f) | (qh[l] >> 2 & 3) << 4) - 32;
				int q3 = ((ql[l] >> 4) | (qh[l] >> 4 & 3) << 4) - 32;
				int q4 = ((ql[l + 32] >> 4) | (qh[l] >> 6 & 3) << 4) - 32;
				/* ggml: d * sc * q, i.e. (d * sc) * q */
				y[l] = d * (float)sc[is] * (float)q1;
				y[l + 32] = d * (float)sc[is + 2] * (float)q2;
				y[l + 64] = d * (float)sc[is + 4] * (float)q3;
				y[l + 96] = d * (float)sc[is + 6] * (float)q4;
			}
	}
}

typedef void dq_fn(const uint8_t *blocks, int64_t nb, float *out);

static dq_fn *const dq_table[GGML_TYPE_COUNT] = {
	[GGML_TYPE_F32] = dq_f32,   [GGML_TYPE_F16] = dq_f16,   [GGML_TYPE_BF16] = dq_bf16,
	[GGML_TYPE_Q4_0] = dq_q4_0, [GGML_TYPE_Q4_1] = dq_q4_1, [GGML_TYPE_Q5_0] = dq_q5_0,
	[GGML_TYPE_Q5_1] = dq_q5_1, [GGML_TYPE_Q8_0] = dq_q8_0, [GGML_TYPE_Q2_K] = dq_q2_k,
	[GGML_TYPE_Q3_K] = dq_q3_k, [GGML_TYPE_Q4_K] = dq_q4_k, [GGML_TYPE_Q5_K] = dq_q5_k,
	[GGML_TYPE_Q6_K] = dq_q6_k,
};

int gguf_can_dequantize(enum ggml_type type)
{
	return (unsigned)type < GGML_TYPE_COUNT && dq_table[type] != NULL;
}

int gguf_dequantize(const struct gguf_tensor *t, int64_t start, int64_t n, float *out, struct err *err)
{
	const struct ggml_type_traits *tr = gguf_ggml_traits(t->type);
	if (!gguf_can_dequantize(t->type) || !tr) {
		const char *name = gguf_ggml_type_name(t->type);
		if (name)
			return err_set(err, "%s: type %s is not supported", t->name, name);
		return err_set(err, "%s: type %u is not supported", t->name, (unsigned)t->type);
	}
	int64_t total = 1;
	for (int i = 0; i < GGUF_MAX_DIMS; i++)
		total *= t->ne[i];
	int64_t bs = tr->blck_size;
	if (start < 0 || n < 0 || start > total || n > total - start)
		return err_set(err, "%s: elements [%" PRId64 ", %" PRId64 ") out of range (%" PRId64 " elements)",
			       t->name, start, start + n, total);
	if (start % bs || n % bs)
		return err_set(err, "%s: elements [%" PRId64 ", %" PRId64 ") are not whole %s blocks of %" PRId64,
			       t->name, start, start + n, tr->name, bs);
	if ((uint64_t)((start + n) / bs) * tr->type_size > t->nbytes)
		return err_set(err, "%s: tensor data is shorter than its %" PRId64 " elements", t->name, total);
	if (n > 0)
		dq_table[t->type]((const uint8_t *)t->data + (size_t)(start / bs) * tr->type_size, n / bs, out);
	return 0;
}
