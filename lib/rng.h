/* rng: the one random number generator of the library — splitmix64 (Steele,
 * Lea and Flood 2014): a 64-bit state advanced by the golden-ratio constant
 * and mixed by two xor-shift-multiply rounds. Everything that depends on a
 * --seed (sampling, LoRA initialization, dropout, shuffling) draws from it,
 * so a seed gives the same output on every machine; the state is one
 * uint64_t, which a checkpoint stores as it is.
 */
#ifndef LORAPIPE_RNG_H
#define LORAPIPE_RNG_H

#include <stdint.h>

static inline uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* A double in [0, 1): the top 53 bits. */
static inline double rng_uniform(uint64_t *s) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

/* An integer in [0, n), n > 0 (Lemire's multiply-shift; the bias is below 2^-32 for n < 2^32). */
static inline uint64_t rng_below(uint64_t *s, uint64_t n)
{
	return (uint64_t)(((unsigned __int128)rng_next(s) * n) >> 64);
}

#endif
