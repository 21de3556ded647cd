/* half: IEEE binary16 (f16) and bfloat16 (bf16) to and from fp32, as torch and
 * numpy convert them (round to nearest even; NaN stays NaN, keeping the sign).
 * Header-only: the loaders, the quantizers and the backends all need them in
 * their inner loops. */
#ifndef LORAPIPE_HALF_H
#define LORAPIPE_HALF_H

#include <stdint.h>
#include <string.h>

static inline float half_bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static inline uint32_t half_f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static inline float bf16_to_f32(uint16_t h)
{
	return half_bits_f32((uint32_t)h << 16);
}

static inline uint16_t f32_to_bf16(float f)
{
	uint32_t u = half_f32_bits(f);
	if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet and signed */
		return (uint16_t)((u >> 16) | 0x40);
	return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

static inline float f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
	if (exp == 0x1f) /* inf, NaN */
		return half_bits_f32(sign | 0x7f800000u | (man << 13));
	if (exp == 0) {
		if (man == 0)
			return half_bits_f32(sign);
		/* subnormal: exact in fp32 */
		float f = (float)man * (1.0f / 16777216.0f); /* man * 2^-24 */
		return sign ? -f : f;
	}
	return half_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

static inline uint16_t f32_to_f16(float f)
{
	uint32_t u = half_f32_bits(f);
	uint32_t sign = (u >> 16) & 0x8000;
	uint32_t a = u & 0x7fffffffu;
	if (a > 0x7f800000u) /* NaN */
		return (uint16_t)(sign | 0x7e00 | ((a >> 13) & 0x3ff));
	if (a >= 0x477ff000u) /* rounds to >= 65520: inf */
		return (uint16_t)(sign | 0x7c00);
	if (a < 0x38800000u) { /* below 2^-14: subnormal or zero */
		/* a + 0.5 in fp32 puts the f16 subnormal bits at the bottom, rounded to even */
		float t = half_bits_f32(a) + 0.5f;
		return (uint16_t)(sign | (half_f32_bits(t) - 0x3f000000u));
	}
	uint32_t r = a + 0xc8000fffu + ((a >> 13) & 1); /* rebias (-112 << 23) and round */
	return (uint16_t)(sign | (r >> 13));
}

#endif
