/* quant: storage formats of frozen weights — NF4 with double quantization,
 * bit-compatible with bitsandbytes 0.50 on the CPU, and 8-bit row-wise — and
 * the one type every consumer sees, struct weight.
 *
 * NF4 (bitsandbytes quantize_4bit, quant_type "nf4", blocksize 64,
 * compress_statistics True), for a tensor of n elements in row-major order:
 *   - blocks of 64 consecutive elements (the last one may be short); each has
 *     absmax = max |x| of the block (fp32);
 *   - each element is scaled to [-1, 1] (x * (1 / absmax) in a full block,
 *     x / absmax in the short last one; a divisor below 1e-38 is raised to
 *     1e-38, and the short block also stores that raised absmax) and becomes
 *     the number of NF4 midpoints (t[i] + t[i + 1]) / 2 below it (torch's
 *     bucketize); two codes per byte, the first element in the high nibble;
 *     an odd n pads the last low nibble with the code of 0 (7);
 *   - double quantization: offset = mean of all absmax (fp32, summed in
 *     torch's one-thread order); absmax - offset is quantized blockwise in
 *     blocks of 256 against bitsandbytes' signed dynamic map
 *     (create_dynamic_map(signed=True), 256 values): per block an fp32
 *     absmax2 = max |absmax - offset|, and per absmax one byte found the way
 *     bitsandbytes' CPU kernel finds it (a 65536-bin lookup, see quant.c);
 *   - dequantization, exactly as bitsandbytes: absmax' = map[q] * absmax2 + offset,
 *     x' = nf4_table[code] * absmax' (fp32 arithmetic in that order).
 *
 * INT8 (bitsandbytes int8_vectorwise_quant, LLM.int8's weight format): per row
 * scale = max |x| of the row; q = round-half-even(x * (127 / scale)) as int8
 * (a zero row gives 0); x' = q * scale * 7.874015718698502e-3 (fp32, left to
 * right, as int8_vectorwise_dequant).
 */
#ifndef LORAPIPE_QUANT_H
#define LORAPIPE_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "msg.h"

#define NF4_BLOCK 64
#define NF4_BLOCK2 256

extern const float nf4_table[16];
/* bitsandbytes' signed dynamic map, 256 values in its (ascending) order. */
extern const float nf4_dynamic_map[256];

struct nf4 {
	int64_t n;          /* elements */
	uint8_t *codes;     /* (n + 1) / 2 bytes */
	uint8_t *absmax_q;  /* ceil(n / 64) bytes */
	float *absmax2;     /* ceil(ceil(n / 64) / 256) scales */
	float offset;       /* mean of the block absmax values */
};

/* Quantizes x[0..n). Returns 0, or -1 with err (out of memory). */
int nf4_quantize(const float *x, int64_t n, struct nf4 *q, struct err *err);
/* Dequantizes elements [start, start + count) into out; start need not be
 * block-aligned. */
void nf4_dequantize(const struct nf4 *q, int64_t start, int64_t count, float *out);
void nf4_free(struct nf4 *q);

struct q8 {
	int64_t rows, cols;
	int8_t *q;      /* rows × cols */
	float *scale;   /* rows: max |x| of each row */
};

int q8_quantize(const float *x, int64_t rows, int64_t cols, struct q8 *q, struct err *err);
void q8_dequantize_rows(const struct q8 *q, int64_t row0, int64_t nrows, float *out);
void q8_free(struct q8 *q);

/* A frozen matrix of rows × cols (out_features × in_features: torch's
 * Linear.weight layout), in one of the formats. */
enum wfmt { WFMT_F32, WFMT_BF16, WFMT_NF4, WFMT_INT8 };

struct weight {
	enum wfmt fmt;
	int64_t rows, cols;
	float *f32;       /* WFMT_F32 */
	uint16_t *bf16;   /* WFMT_BF16 */
	struct nf4 nf4;   /* WFMT_NF4: the whole matrix as one tensor, row-major */
	struct q8 q8;     /* WFMT_INT8 */
};

/* "f32", "bf16", "nf4", "int8"; wfmt_parse returns -1 for another name. */
const char *wfmt_name(enum wfmt f);
int wfmt_parse(const char *name);

/* Stores x (rows × cols fp32, not taken over) as fmt. */
int weight_from_f32(struct weight *w, enum wfmt fmt, const float *x, int64_t rows, int64_t cols, struct err *err);
/* Rows [row0, row0 + nrows) as fp32 into out (nrows × cols). */
void weight_rows_f32(const struct weight *w, int64_t row0, int64_t nrows, float *out);
/* Bytes the weight holds (codes, scales, statistics). */
size_t weight_bytes(const struct weight *w);
void weight_free(struct weight *w);

#endif
