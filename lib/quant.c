/* quant: frozen-weight storage — fp32, bf16, NF4 with double quantization
 * (bitsandbytes' layout and rounding) and 8-bit row-wise. The formats are
 * described in quant.h.
 *
 * weight_rows_f32 sits in the forward pass's inner loop (one call per tile
 * of a matrix product), so it branches on the format once per call and each
 * format expands whole runs: NF4 scales the 16-entry table once per block of
 * 64 and then only looks values up.
 */
#include "quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"

/* ---- NF4 ---- */

/* The NF4 values as bitsandbytes stores them (fp32). */
#define NF4_0 -1.0f
#define NF4_1 -0.6961928009986877f
#define NF4_2 -0.5250730514526367f
#define NF4_3 -0.39491748809814453f
#define NF4_4 -0.28444138169288635f
#define NF4_5 -0.18477343022823334f
#define NF4_6 -0.09105003625154495f
#define NF4_7 0.0f
#define NF4_8 0.07958029955625534f
#define NF4_9 0.16093020141124725f
#define NF4_10 0.24611230194568634f
#define NF4_11 0.33791524171829224f
#define NF4_12 0.44070982933044434f
#define NF4_13 0.5626170039176941f
#define NF4_14 0.7229568362236023f
#define NF4_15 1.0f
const float nf4_table[16] = {
	NF4_0,
	NF4_1,
	NF4_2,
	NF4_3,
	NF4_4,
	NF4_5,
	NF4_6,
	NF4_7,
	NF4_8,
	NF4_9,
	NF4_10,
	NF4_11,
	NF4_12,
	NF4_13,
	NF4_14,
	NF4_15,
};

/* Boundaries between neighbouring NF4 values, (t[i] + t[i + 1]) / 2 in fp32
 * (constant-folded with the same rounding). bitsandbytes 0.50 assigns codes
 * with torch.bucketize over these midpoints, which is not always the value
 * nearest in fp32 distance: the midpoints are what must match. */
static const float nf4_bounds[15] = {
	(NF4_0 + NF4_1) / 2.0f,
	(NF4_1 + NF4_2) / 2.0f,
	(NF4_2 + NF4_3) / 2.0f,
	(NF4_3 + NF4_4) / 2.0f,
	(NF4_4 + NF4_5) / 2.0f,
	(NF4_5 + NF4_6) / 2.0f,
	(NF4_6 + NF4_7) / 2.0f,
	(NF4_7 + NF4_8) / 2.0f,
	(NF4_8 + NF4_9) / 2.0f,
	(NF4_9 + NF4_10) / 2.0f,
	(NF4_10 + NF4_11) / 2.0f,
	(NF4_11 + NF4_12) / 2.0f,
	(NF4_12 + NF4_13) / 2.0f,
	(NF4_13 + NF4_14) / 2.0f,
	(NF4_14 + NF4_15) / 2.0f,
};

/* bitsandbytes' create_dynamic_map(signed=True) as torch computes it in fp32:
 * ±10^(i-6) × the midpoints of linspace(0.1, 1, 2^i + 1) for i = 0..6, then
 * 0 and 1, sorted (254 + 2 values). Taken from bitsandbytes 0.50.2. */
const float nf4_dynamic_map[256] = {
	-0x1.fc6666p-1f, -0x1.f53334p-1f, -0x1.eep-1f, -0x1.e6ccccp-1f,
	-0x1.df999ap-1f, -0x1.d86666p-1f, -0x1.d13334p-1f, -0x1.cap-1f,
	-0x1.c2ccccp-1f, -0x1.bb999ap-1f, -0x1.b46666p-1f, -0x1.ad3334p-1f,
	-0x1.a6p-1f, -0x1.9eccccp-1f, -0x1.97999ap-1f, -0x1.906666p-1f,
	-0x1.893334p-1f, -0x1.82p-1f, -0x1.7accccp-1f, -0x1.73999ap-1f,
	-0x1.6c6668p-1f, -0x1.653334p-1f, -0x1.5ep-1f, -0x1.56ccccp-1f,
	-0x1.4f999ap-1f, -0x1.486668p-1f, -0x1.413334p-1f, -0x1.3ap-1f,
	-0x1.32ccccp-1f, -0x1.2b999ap-1f, -0x1.246668p-1f, -0x1.1d3334p-1f,
	-0x1.16p-1f, -0x1.0eccccp-1f, -0x1.079998p-1f, -0x1.006666p-1f,
	-0x1.f26664p-2f, -0x1.e4p-2f, -0x1.d59998p-2f, -0x1.c73334p-2f,
	-0x1.b8ccccp-2f, -0x1.aa6666p-2f, -0x1.9cp-2f, -0x1.8d9998p-2f,
	-0x1.7f3334p-2f, -0x1.70ccccp-2f, -0x1.626666p-2f, -0x1.54p-2f,
	-0x1.459998p-2f, -0x1.373334p-2f, -0x1.28ccccp-2f, -0x1.1a6668p-2f,
	-0x1.0cp-2f, -0x1.fb3332p-3f, -0x1.de6666p-3f, -0x1.c1999ap-3f,
	-0x1.a4ccccp-3f, -0x1.88p-3f, -0x1.6b3334p-3f, -0x1.4e6666p-3f,
	-0x1.31999ap-3f, -0x1.14ccccp-3f, -0x1.fp-4f, -0x1.b66668p-4f,
	-0x1.93d70ap-4f, -0x1.8851eep-4f, -0x1.7ccccep-4f, -0x1.7147aep-4f,
	-0x1.65c29p-4f, -0x1.5a3d7p-4f, -0x1.4eb854p-4f, -0x1.433334p-4f,
	-0x1.37ae14p-4f, -0x1.2c28f6p-4f, -0x1.20a3d6p-4f, -0x1.151ebap-4f,
	-0x1.09999ap-4f, -0x1.fc28f6p-5f, -0x1.e51ebap-5f, -0x1.ce147ap-5f,
	-0x1.b70a3ep-5f, -0x1.ap-5f, -0x1.88f5c2p-5f, -0x1.71eb86p-5f,
	-0x1.5ae146p-5f, -0x1.43d70ap-5f, -0x1.2ccccep-5f, -0x1.15c29p-5f,
	-0x1.fd70a4p-6f, -0x1.cf5c2ap-6f, -0x1.a147aep-6f, -0x1.733334p-6f,
	-0x1.451ebap-6f, -0x1.170a3ep-6f, -0x1.d1eb86p-7f, -0x1.75c29p-7f,
	-0x1.3e76c8p-7f, -0x1.2c083p-7f, -0x1.19999ap-7f, -0x1.072b02p-7f,
	-0x1.e978d4p-8f, -0x1.c49ba6p-8f, -0x1.9fbe76p-8f, -0x1.7ae148p-8f,
	-0x1.56041ap-8f, -0x1.3126e8p-8f, -0x1.0c49bap-8f, -0x1.ced914p-9f,
	-0x1.851eb8p-9f, -0x1.3b645ap-9f, -0x1.e353f8p-10f, -0x1.4fdf3ap-10f,
	-0x1.eecbfep-11f, -0x1.b3d07cp-11f, -0x1.78d5p-11f, -0x1.3dd982p-11f,
	-0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f,
	-0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f,
	-0x1.040bfep-17f, -0x1.b43528p-19f, -0x1.27476ep-21f, 0x0p+0f,
	0x1.27476ep-21f, 0x1.b43528p-19f, 0x1.040bfep-17f, 0x1.64840cp-16f,
	0x1.6f0068p-15f, 0x1.15df66p-14f, 0x1.743e96p-14f, 0x1.47ae16p-13f,
	0x1.19ce0ap-12f, 0x1.8fc506p-12f, 0x1.02de02p-11f, 0x1.3dd982p-11f,
	0x1.78d5p-11f, 0x1.b3d07cp-11f, 0x1.eecbfep-11f, 0x1.4fdf3ap-10f,
	0x1.e353f8p-10f, 0x1.3b645ap-9f, 0x1.851eb8p-9f, 0x1.ced914p-9f,
	0x1.0c49bap-8f, 0x1.3126e8p-8f, 0x1.56041ap-8f, 0x1.7ae148p-8f,
	0x1.9fbe76p-8f, 0x1.c49ba6p-8f, 0x1.e978d4p-8f, 0x1.072b02p-7f,
	0x1.19999ap-7f, 0x1.2c083p-7f, 0x1.3e76c8p-7f, 0x1.75c29p-7f,
	0x1.d1eb86p-7f, 0x1.170a3ep-6f, 0x1.451ebap-6f, 0x1.733334p-6f,
	0x1.a147aep-6f, 0x1.cf5c2ap-6f, 0x1.fd70a4p-6f, 0x1.15c29p-5f,
	0x1.2ccccep-5f, 0x1.43d70ap-5f, 0x1.5ae146p-5f, 0x1.71eb86p-5f,
	0x1.88f5c2p-5f, 0x1.ap-5f, 0x1.b70a3ep-5f, 0x1.ce147ap-5f,
	0x1.e51ebap-5f, 0x1.fc28f6p-5f, 0x1.09999ap-4f, 0x1.151ebap-4f,
	0x1.20a3d6p-4f, 0x1.2c28f6p-4f, 0x1.37ae14p-4f, 0x1.433334p-4f,
	0x1.4eb854p-4f, 0x1.5a3d7p-4f, 0x1.65c29p-4f, 0x1.7147aep-4f,
	0x1.7ccccep-4f, 0x1.8851eep-4f, 0x1.93d70ap-4f, 0x1.b66668p-4f,
	0x1.fp-4f, 0x1.14ccccp-3f, 0x1.31999ap-3f, 0x1.4e6666p-3f,
	0x1.6b3334p-3f, 0x1.88p-3f, 0x1.a4ccccp-3f, 0x1.c1999ap-3f,
	0x1.de6666p-3f, 0x1.fb3332p-3f, 0x1.0cp-2f, 0x1.1a6668p-2f,
	0x1.28ccccp-2f, 0x1.373334p-2f, 0x1.459998p-2f, 0x1.54p-2f,
	0x1.626666p-2f, 0x1.70ccccp-2f, 0x1.7f3334p-2f, 0x1.8d9998p-2f,
	0x1.9cp-2f, 0x1.aa6666p-2f, 0x1.b8ccccp-2f, 0x1.c73334p-2f,
	0x1.d59998p-2f, 0x1.e4p-2f, 0x1.f26664p-2f, 0x1.006666p-1f,
	0x1.079998p-1f, 0x1.0eccccp-1f, 0x1.16p-1f, 0x1.1d3334p-1f,
	0x1.246668p-1f, 0x1.2b999ap-1f, 0x1.32ccccp-1f, 0x1.3ap-1f,
	0x1.413334p-1f, 0x1.486668p-1f, 0x1.4f999ap-1f, 0x1.56ccccp-1f,
	0x1.5ep-1f, 0x1.653334p-1f, 0x1.6c6668p-1f, 0x1.73999ap-1f,
	0x1.7accccp-1f, 0x1.82p-1f, 0x1.893334p-1f, 0x1.906666p-1f,
	0x1.97999ap-1f, 0x1.9eccccp-1f, 0x1.a6p-1f, 0x1.ad3334p-1f,
	0x1.b46666p-1f, 0x1.bb999ap-1f, 0x1.c2ccccp-1f, 0x1.cap-1f,
	0x1.d13334p-1f, 0x1.d86666p-1f, 0x1.df999ap-1f, 0x1.e6ccccp-1f,
	0x1.eep-1f, 0x1.f53334p-1f, 0x1.fc6666p-1f, 0x1p+0f,
};

static int64_t ceil_div(int64_t a, int64_t b)
{
	return (a + b - 1) / b;
}

/* torch.bucketize(v, bounds, right=False): the number of bounds below v,
 * found the way torch searches (a NaN ends at 15). */
static uint8_t nf4_code(float v)
{
	int lo = 0, hi = 15;
	while (lo < hi) {
		int mid = lo + (hi - lo) / 2;
		if (!(nf4_bounds[mid] >= v))
			lo = mid + 1;
		else
			hi = mid;
	}
	return (uint8_t)lo;
}

static float clamp1(float v)
{
	return v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v; /* keeps NaN, as torch.clamp */
}

/* max |x| over n values as torch.max does: a NaN wins. Eight running maxima
 * (a plain elementwise select, which vectorizes) over the whole runs of 8. */
static float absmax_of(const float *x, int64_t n)
{
	float acc[8] = {0};
	int nan = 0;
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		for (int l = 0; l < 8; l++) {
			float a = fabsf(x[i + l]);
			acc[l] = a > acc[l] ? a : acc[l];
			nan |= a != a;
		}
	float m = 0;
	for (int l = 0; l < 8; l++)
		m = acc[l] > m ? acc[l] : m;
	for (; i < n; i++) {
		float a = fabsf(x[i]);
		m = a > m ? a : m;
		nan |= a != a;
	}
	return nan ? NAN : m;
}

/* Index into the dynamic map as bitsandbytes 0.50's CPU kernel
 * (quantize_cpu_impl) assigns it: v in [-1, 1] goes to one of 65536 evenly
 * spaced bins, (uint16)fma((v + 1) * 0.5, 65535, 0.5) (the library is built
 * with -mfma and contracts that expression), and the bin's value
 * 2 * bin / 65535 - 1 gets the index of the first map midpoint
 * 0.5 * (map[k] + map[k + 1]) that is not below it. Not always the nearest
 * map value: the bins are what must match. */
static uint8_t dynamic_code(float v)
{
	v = v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v;
	float t = fmaf((v + 1.0f) * 0.5f, 65535.0f, 0.5f);
	uint16_t bin = (uint16_t)(t == t ? (int32_t)t : 0); /* NaN: cvttss2si gives 0x80000000 */
	float val = (2.0f * (float)bin) / 65535.0f - 1.0f;
	int lo = 0, hi = 255; /* count the midpoints below val */
	while (lo < hi) {
		int mid = lo + (hi - lo) / 2;
		if (0.5f * (nf4_dynamic_map[mid] + nf4_dynamic_map[mid + 1]) < val)
			lo = mid + 1;
		else
			hi = mid;
	}
	return (uint8_t)lo;
}

/* The codes of one full block, packed: the same count of midpoints below
 * each value as nf4_code, written so that gcc vectorizes it. */
static void nf4_full_block(const float *restrict x, float inv, uint8_t *restrict out)
{
	float v[NF4_BLOCK];
	uint8_t c[NF4_BLOCK];
	for (int j = 0; j < NF4_BLOCK; j++) {
		float a = x[j] * inv;
		a = a < -1.0f ? -1.0f : a;
		v[j] = a > 1.0f ? 1.0f : a;
		c[j] = 0;
	}
	for (int t = 0; t < 15; t++) {
		float bt = nf4_bounds[t];
		for (int j = 0; j < NF4_BLOCK; j++)
			c[j] = (uint8_t)(c[j] + (bt < v[j]));
	}
	for (int j = 0; j < NF4_BLOCK; j++)
		c[j] = v[j] != v[j] ? 15 : c[j];
	for (int j = 0; j < NF4_BLOCK / 2; j++)
		out[j] = (uint8_t)(c[2 * j] << 4 | c[2 * j + 1]);
}

/* torch's fp32 sum of a contiguous vector on the CPU (at::sum, one thread,
 * 8-lane vectors as with AVX2): a cascade of partial sums, reproduced step by
 * step because bitsandbytes' offset is absmax.mean() and one ulp there can move
 * an absmax code. See SumKernel.cpp: multi_row_sum / row_sum /
 * vectorized_inner_sum. */
#define TORCH_LANES 8

static int64_t ceil_log2(int64_t x)
{
	if (x <= 2)
		return 1;
	int64_t r = 0;
	for (uint64_t v = (uint64_t)(x - 1); v; v >>= 1)
		r++;
	return r;
}

/* row_sum over `size` items of `lanes` floats each (item i at x + i * lanes),
 * into acc[lanes]: four interleaved accumulators, each summed in a cascade of
 * four levels. */
static void cascade_row_sum(const float *x, int64_t size, int lanes, float *out)
{
	float acc[4][4][TORCH_LANES] = {{{0}}}; /* [level][row][lane] */
	int64_t rows = size / 4;
	int64_t power = ceil_log2(rows) / 4 > 4 ? ceil_log2(rows) / 4 : 4;
	int64_t step = (int64_t)1 << power, mask = step - 1;
	int64_t i = 0;
	for (; i + step <= rows;) {
		for (int64_t j = 0; j < step; j++, i++)
			for (int k = 0; k < 4; k++)
				for (int l = 0; l < lanes; l++)
					acc[0][k][l] += x[(i * 4 + k) * lanes + l];
		for (int j = 1; j < 4; j++) {
			for (int k = 0; k < 4; k++)
				for (int l = 0; l < lanes; l++) {
					acc[j][k][l] += acc[j - 1][k][l];
					acc[j - 1][k][l] = 0;
				}
			if (i & (mask << (j * power)))
				break;
		}
	}
	for (; i < rows; i++)
		for (int k = 0; k < 4; k++)
			for (int l = 0; l < lanes; l++)
				acc[0][k][l] += x[(i * 4 + k) * lanes + l];
	for (int j = 1; j < 4; j++)
		for (int k = 0; k < 4; k++)
			for (int l = 0; l < lanes; l++)
				acc[0][k][l] += acc[j][k][l];
	for (int64_t t = rows * 4; t < size; t++)
		for (int l = 0; l < lanes; l++)
			acc[0][0][l] += x[t * lanes + l];
	for (int k = 1; k < 4; k++)
		for (int l = 0; l < lanes; l++)
			acc[0][0][l] += acc[0][k][l];
	for (int l = 0; l < lanes; l++)
		out[l] = acc[0][0][l];
}

static float torch_sum(const float *x, int64_t n)
{
	float part[TORCH_LANES];
	if (n < TORCH_LANES) { /* scalar path */
		cascade_row_sum(x, n, 1, part);
		return 0.0f + part[0];
	}
	int64_t vecs = n / TORCH_LANES;
	cascade_row_sum(x, vecs, TORCH_LANES, part);
	float total = 0;
	for (int64_t i = vecs * TORCH_LANES; i < n; i++)
		total += x[i];
	for (int l = 0; l < TORCH_LANES; l++)
		total += part[l];
	return 0.0f + total;
}

int nf4_quantize(const float *x, int64_t n, struct nf4 *q, struct err *err)
{
	memset(q, 0, sizeof *q);
	int64_t nblocks = ceil_div(n, NF4_BLOCK), nblocks2 = ceil_div(nblocks, NF4_BLOCK2);
	float *absmax = malloc((size_t)(nblocks ? nblocks : 1) * sizeof *absmax);
	q->codes = calloc((size_t)(n + 1) / 2 + 1, 1);
	q->absmax_q = malloc((size_t)nblocks + 1);
	q->absmax2 = malloc((size_t)(nblocks2 ? nblocks2 : 1) * sizeof *q->absmax2);
	if (!absmax || !q->codes || !q->absmax_q || !q->absmax2) {
		free(absmax);
		nf4_free(q);
		return err_sys(err, "nf4: out of memory for %lld elements", (long long)n);
	}
	q->n = n;
	/* bitsandbytes' quantize_4bit (its torch code): a full block is scaled by
	 * the fp32 reciprocal of its absmax, the short last block is divided by
	 * its absmax; both clamp to [-1, 1]. A divisor below 1e-38 (a zero block)
	 * is raised to 1e-38, and the short block also stores that raised value.
	 * An odd count is padded with a scaled 0. */
	const float tiny = 1e-38f;
	for (int64_t b = 0; b < nblocks; b++) {
		int64_t lo = b * NF4_BLOCK, len = n - lo < NF4_BLOCK ? n - lo : NF4_BLOCK;
		float m = absmax_of(x + lo, len), d = m < tiny ? tiny : m;
		if (len == NF4_BLOCK) {
			nf4_full_block(x + lo, 1.0f / d, q->codes + lo / 2);
			absmax[b] = m;
			continue;
		}
		for (int64_t i = lo; i < lo + len; i++) {
			uint8_t c = nf4_code(clamp1(x[i] / d));
			q->codes[i / 2] |= (uint8_t)(i % 2 ? c : c << 4);
		}
		absmax[b] = d;
	}
	if (n % 2)
		q->codes[n / 2] |= nf4_code(0.0f);
	/* double quantization (quantize_blockwise, bitsandbytes' CPU kernel):
	 * offset is the mean absmax (torch's sum order); each 256 block of
	 * absmax - offset is multiplied by the fp32 reciprocal of its max |.|; a
	 * block that is all 0 gets codes 0 */
	q->offset = nblocks ? torch_sum(absmax, nblocks) / (float)nblocks : 0.0f;
	for (int64_t b2 = 0; b2 < nblocks2; b2++) {
		int64_t lo = b2 * NF4_BLOCK2, hi = lo + NF4_BLOCK2 < nblocks ? lo + NF4_BLOCK2 : nblocks;
		float m = 0;
		for (int64_t i = lo; i < hi; i++) {
			absmax[i] -= q->offset;
			m = fmaxf(m, fabsf(absmax[i]));
		}
		q->absmax2[b2] = m;
		float inv = 1.0f / m;
		for (int64_t i = lo; i < hi; i++)
			q->absmax_q[i] = m == 0 ? 0 : dynamic_code(absmax[i] * inv);
	}
	free(absmax);
	return 0;
}

static float nf4_block_absmax(const struct nf4 *q, int64_t b)
{
	return nf4_dynamic_map[q->absmax_q[b]] * q->absmax2[b / NF4_BLOCK2] + q->offset;
}

void nf4_dequantize(const struct nf4 *q, int64_t start, int64_t count, float *out)
{
	int64_t i = start, end = start + count;
	while (i < end) {
		int64_t b = i / NF4_BLOCK, bend = (b + 1) * NF4_BLOCK < end ? (b + 1) * NF4_BLOCK : end;
		float a = nf4_block_absmax(q, b), t[16];
		for (int k = 0; k < 16; k++)
			t[k] = nf4_table[k] * a;
		if (i % 2) { /* odd start: the low nibble of a byte */
			*out++ = t[q->codes[i / 2] & 15];
			i++;
		}
		const uint8_t *c = q->codes + i / 2;
		for (; i + 1 < bend; i += 2, c++) {
			out[0] = t[*c >> 4];
			out[1] = t[*c & 15];
			out += 2;
		}
		if (i < bend) { /* odd end */
			*out++ = t[*c >> 4];
			i++;
		}
	}
}

void nf4_free(struct nf4 *q)
{
	free(q->codes);
	free(q->absmax_q);
	free(q->absmax2);
	memset(q, 0, sizeof *q);
}

/* ---- INT8 row-wise ---- */

int q8_quantize(const float *x, int64_t rows, int64_t cols, struct q8 *q, struct err *err)
{
	memset(q, 0, sizeof *q);
	q->q = malloc((size_t)(rows * cols) + 1);
	q->scale = malloc((size_t)(rows ? rows : 1) * sizeof *q->scale);
	if (!q->q || !q->scale) {
		q8_free(q);
		return err_sys(err, "int8: out of memory for %lld x %lld", (long long)rows, (long long)cols);
	}
	q->rows = rows;
	q->cols = cols;
	/* bitsandbytes' int8_vectorwise_quant: round-half-even(x * (127.0 / absmax)),
	 * where torch computes a number over a tensor as the tensor's reciprocal
	 * times the number (two roundings; a single division decides some near
	 * ties the other way). A zero row has 1 / 0 = inf and 0 * inf = NaN,
	 * which torch turns into 0. */
	for (int64_t r = 0; r < rows; r++) {
		const float *xr = x + r * cols;
		float m = absmax_of(xr, cols), k = (1.0f / m) * 127.0f;
		q->scale[r] = m;
		for (int64_t c = 0; c < cols; c++) {
			float v = nearbyintf(xr[c] * k);
			q->q[r * cols + c] = v == v ? (int8_t)v : 0;
		}
	}
	return 0;
}

/* The expansion loops run over fixed runs of 64 so that gcc -O2 (whose cheap
 * cost model skips loops of unknown length) vectorizes them. */
#define RUN 64

static void q8_row(const int8_t *restrict q, float s, int64_t n, float *restrict out)
{
	/* bitsandbytes' int8_vectorwise_dequant: A * stats * 7.874015718698502e-3,
	 * left to right in fp32 */
	const float inv127 = 7.874015718698502e-3f;
	int64_t i = 0;
	for (; i + RUN <= n; i += RUN)
		for (int j = 0; j < RUN; j++)
			out[i + j] = (float)q[i + j] * s * inv127;
	for (; i < n; i++)
		out[i] = (float)q[i] * s * inv127;
}

void q8_dequantize_rows(const struct q8 *q, int64_t row0, int64_t nrows, float *out)
{
	for (int64_t r = row0; r < row0 + nrows; r++, out += q->cols)
		q8_row(q->q + r * q->cols, q->scale[r], q->cols, out);
}

void q8_free(struct q8 *q)
{
	free(q->q);
	free(q->scale);
	memset(q, 0, sizeof *q);
}

/* ---- struct weight ---- */

static const char *const wfmt_names[] = {
	[WFMT_F32] = "f32",
	[WFMT_BF16] = "bf16",
	[WFMT_NF4] = "nf4",
	[WFMT_INT8] = "int8",
};

const char *wfmt_name(enum wfmt f)
{
	return (unsigned)f < sizeof wfmt_names / sizeof *wfmt_names ? wfmt_names[f] : "?";
}

int wfmt_parse(const char *name)
{
	for (size_t i = 0; i < sizeof wfmt_names / sizeof *wfmt_names; i++)
		if (name && strcmp(name, wfmt_names[i]) == 0)
			return (int)i;
	return -1;
}

int weight_from_f32(struct weight *w, enum wfmt fmt, const float *x, int64_t rows, int64_t cols, struct err *err)
{
	memset(w, 0, sizeof *w);
	if (rows < 0 || cols < 0)
		return err_set(err, "weight: bad shape %lld x %lld", (long long)rows, (long long)cols);
	size_t n = (size_t)(rows * cols);
	w->fmt = fmt;
	w->rows = rows;
	w->cols = cols;
	switch (fmt) {
	case WFMT_F32:
		w->f32 = malloc(n ? n * sizeof *w->f32 : 1);
		if (!w->f32)
			break;
		if (n)
			memcpy(w->f32, x, n * sizeof *w->f32);
		return 0;
	case WFMT_BF16:
		w->bf16 = malloc(n ? n * sizeof *w->bf16 : 1);
		if (!w->bf16)
			break;
		for (size_t i = 0; i < n; i++)
			w->bf16[i] = f32_to_bf16(x[i]);
		return 0;
	case WFMT_NF4:
		return nf4_quantize(x, rows * cols, &w->nf4, err);
	case WFMT_INT8:
		return q8_quantize(x, rows, cols, &w->q8, err);
	default:
		return err_set(err, "weight: unknown format %d", (int)fmt);
	}
	return err_sys(err, "weight: out of memory for %lld x %lld", (long long)rows, (long long)cols);
}

static void bf16_run(const uint16_t *restrict s, int64_t n, float *restrict out)
{
	int64_t i = 0;
	for (; i + RUN <= n; i += RUN)
		for (int j = 0; j < RUN; j++)
			out[i + j] = bf16_to_f32(s[i + j]);
	for (; i < n; i++)
		out[i] = bf16_to_f32(s[i]);
}

void weight_rows_f32(const struct weight *w, int64_t row0, int64_t nrows, float *out)
{
	int64_t cols = w->cols, n = nrows * cols;
	switch (w->fmt) {
	case WFMT_F32:
		if (n)
			memcpy(out, w->f32 + row0 * cols, (size_t)n * sizeof *out);
		break;
	case WFMT_BF16:
		bf16_run(w->bf16 + row0 * cols, n, out);
		break;
	case WFMT_NF4:
		nf4_dequantize(&w->nf4, row0 * cols, n, out);
		break;
	case WFMT_INT8:
		q8_dequantize_rows(&w->q8, row0, nrows, out);
		break;
	}
}

size_t weight_bytes(const struct weight *w)
{
	size_t n = (size_t)(w->rows * w->cols);
	switch (w->fmt) {
	case WFMT_F32:
		return n * 4;
	case WFMT_BF16:
		return n * 2;
	case WFMT_NF4: {
		size_t nb = (size_t)ceil_div((int64_t)n, NF4_BLOCK), nb2 = (size_t)ceil_div((int64_t)nb, NF4_BLOCK2);
		return (n + 1) / 2 + nb + nb2 * sizeof(float) + sizeof(float);
	}
	case WFMT_INT8:
		return n + (size_t)w->rows * sizeof(float);
	}
	return 0;
}

void weight_free(struct weight *w)
{
	free(w->f32);
	free(w->bf16);
	nf4_free(&w->nf4);
	q8_free(&w->q8);
	memset(w, 0, sizeof *w);
}
