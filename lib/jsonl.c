#include "jsonl.h"

#include <errno.h>
#include <pthread.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include <utf8proc.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "wholefile.h"

/* Blocks a reader keeps: a new one would be fresh pages (a fault and a
 * zeroing each) and, freed, an unmapping that stops every other thread. */
#define KEPT_BLOCKS 8

struct jsonl_reader {
	FILE *f;
	int own;      /* opened by jsonl_open, so closed by jsonl_close */
	char *name;
	struct jsonl_block *blk; /* what was read: the lines handed out point into it */
	struct jsonl_block *lent[KEPT_BLOCKS]; /* blocks moved off while lent, kept to read into again */
	int nlent;
	int mapped; /* buf is the whole file, mapped: lines are not NUL-terminated */
	char *buf;               /* blk's bytes, */
	size_t cap, beg, end;    /* its size; the bytes not yet handed out: [beg, end) */
	int eof;
	long lineno;  /* lines read so far */
	long recline; /* line of the record (or bad line) last returned */
};

#define READ_BUFFER (128 << 10) /* the least a read asks for: what two of them hold stays in L2 */

struct jsonl_reader *jsonl_from_file(FILE *f, const char *name)
{
	struct jsonl_reader *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	r->name = strdup(name ? name : "<stdin>");
	if (!r->name) {
		free(r);
		return NULL;
	}
	r->f = f;
	return r;
}

struct jsonl_reader *jsonl_open(const char *path, struct err *err)
{
	int std = !path || strcmp(path, "-") == 0;
	FILE *f = std ? stdin : fopen(path, "r");
	if (!f) {
		err_sys(err, "%s:", path);
		return NULL;
	}
	struct jsonl_reader *r = jsonl_from_file(f, std ? "<stdin>" : path);
	if (!r) {
		err_sys(err, "%s:", std ? "<stdin>" : path);
		if (!std)
			fclose(f);
		return NULL;
	}
	r->own = !std;
	/* The reader reads large blocks into its own buffer: through stdio's
	 * each byte would be copied once more. Standard input keeps its
	 * buffer: a caller may have read from it (tok looks at its first byte). */
	if (!std)
		setvbuf(f, NULL, _IONBF, 0);
	return r;
}

void jsonl_close(struct jsonl_reader *r)
{
	if (!r)
		return;
	if (r->own)
		fclose(r->f);
	jsonl_block_release(r->blk);
	for (int k = 0; k < r->nlent; k++)
		jsonl_block_release(r->lent[k]);
	free(r->name);
	free(r);
}

long jsonl_line(const struct jsonl_reader *r) { return r->recline; }

const char *jsonl_name(const struct jsonl_reader *r) { return r->name; }

int jsonl_errf(const struct jsonl_reader *r, struct err *err, const char *fmt, ...)
{
	if (!err)
		return -1;
	char what[sizeof err->msg];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof what, fmt, ap);
	va_end(ap);
	return err_set(err, "%s:%ld: %s", r->name, r->recline, what);
}

/* What string_scan found in the bytes before the stop: a 7F (which a JSON
 * string escapes), bytes that are not UTF-8. */
enum { SCAN_DEL = 1, SCAN_BAD = 2 };

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1

/* The AVX2 check of well-formed UTF-8: 1 when s[0..n) is. Each byte is
 * judged with the one before it through three 16-entry tables (Keiser and
 * Lemire, "Validating UTF-8 in less than one instruction per byte", 2021):
 * the high and low nibbles of the byte before and the high nibble of the
 * byte itself each give the errors that pair could be, and a pair is wrong
 * where all three agree on one. Which continuation bytes must follow a lead
 * two or three back is checked apart: TWO_CONTS marks a continuation after
 * a continuation, right exactly where a three- or four-byte lead is two or
 * three bytes back. Blocks of 32 bytes; one all ASCII passes at once. */
enum {
	TOO_SHORT = 1 << 0,      /* a lead, then no continuation */
	TOO_LONG = 1 << 1,       /* ASCII, then a continuation */
	OVERLONG_3 = 1 << 2,     /* E0 80-9F */
	TOO_LARGE = 1 << 3,      /* F4 90-BF, F5-FF */
	SURROGATE = 1 << 4,      /* ED A0-BF */
	OVERLONG_2 = 1 << 5,     /* C0, C1 */
	TOO_LARGE_1000 = 1 << 6, /* F5-FF 80-8F */
	OVERLONG_4 = 1 << 6,     /* F0 80-8F */
	TWO_CONTS = 1 << 7,      /* a continuation, then one */
	CARRY = TOO_SHORT | TOO_LONG | TWO_CONTS,
};

/* The tables, by the byte before's high nibble, its low nibble, and the byte's own high nibble. */
static const unsigned char before_high_tab[16] = {
	TOO_LONG, TOO_LONG, TOO_LONG, TOO_LONG, TOO_LONG, TOO_LONG, TOO_LONG, TOO_LONG,
	TWO_CONTS, TWO_CONTS, TWO_CONTS, TWO_CONTS,
	TOO_SHORT | OVERLONG_2, TOO_SHORT, TOO_SHORT | OVERLONG_3 | SURROGATE,
	TOO_SHORT | TOO_LARGE | TOO_LARGE_1000 | OVERLONG_4};
static const unsigned char before_low_tab[16] = {
	CARRY | OVERLONG_3 | OVERLONG_2 | OVERLONG_4, CARRY | OVERLONG_2, CARRY, CARRY, CARRY | TOO_LARGE,
	CARRY | TOO_LARGE | TOO_LARGE_1000, CARRY | TOO_LARGE | TOO_LARGE_1000, CARRY | TOO_LARGE | TOO_LARGE_1000,
	CARRY | TOO_LARGE | TOO_LARGE_1000, CARRY | TOO_LARGE | TOO_LARGE_1000, CARRY | TOO_LARGE | TOO_LARGE_1000,
	CARRY | TOO_LARGE | TOO_LARGE_1000, CARRY | TOO_LARGE | TOO_LARGE_1000,
	CARRY | TOO_LARGE | TOO_LARGE_1000 | SURROGATE, CARRY | TOO_LARGE | TOO_LARGE_1000,
	CARRY | TOO_LARGE | TOO_LARGE_1000};
static const unsigned char own_high_tab[16] = {
	TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT,
	TOO_LONG | OVERLONG_2 | TWO_CONTS | OVERLONG_3 | TOO_LARGE_1000 | OVERLONG_4,
	TOO_LONG | OVERLONG_2 | TWO_CONTS | OVERLONG_3 | TOO_LARGE,
	TOO_LONG | OVERLONG_2 | TWO_CONTS | SURROGATE | TOO_LARGE,
	TOO_LONG | OVERLONG_2 | TWO_CONTS | SURROGATE | TOO_LARGE, TOO_SHORT, TOO_SHORT, TOO_SHORT, TOO_SHORT};
/* a lead in the last three bytes whose character the block does not finish: above these */
static const unsigned char last_max_tab[32] = {
	0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
	0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xEF, 0xDF, 0xBF};

/* The 32 bytes before each byte of x by k (1 to 3), prev the block before. */
#define BEFORE(x, prev, k) _mm256_alignr_epi8(x, _mm256_permute2x128_si256(prev, x, 0x21), 16 - (k))
#define TABLE16(t) _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)(t)))

/* The errors of block x's bytes, each judged with the three before it
 * (prev: the block before): zero where they are well-formed so far. */
__attribute__((target("avx2"))) static inline __m256i utf8_errors_avx2(__m256i x, __m256i prev)
{
	const __m256i before_high = TABLE16(before_high_tab), before_low = TABLE16(before_low_tab),
		      own_high = TABLE16(own_high_tab);
	const __m256i nibble = _mm256_set1_epi8(0x0F), b80 = _mm256_set1_epi8((char)0x80);
	const __m256i third = _mm256_set1_epi8(0xE0 - 0x80), fourth = _mm256_set1_epi8(0xF0 - 0x80);
	__m256i p1 = BEFORE(x, prev, 1);
	__m256i pairs = _mm256_and_si256(
		_mm256_and_si256(_mm256_shuffle_epi8(before_high, _mm256_and_si256(_mm256_srli_epi16(p1, 4), nibble)),
				 _mm256_shuffle_epi8(before_low, _mm256_and_si256(p1, nibble))),
		_mm256_shuffle_epi8(own_high, _mm256_and_si256(_mm256_srli_epi16(x, 4), nibble)));
	__m256i must = _mm256_and_si256(
		_mm256_or_si256(_mm256_subs_epu8(BEFORE(x, prev, 2), third), _mm256_subs_epu8(BEFORE(x, prev, 3), fourth)),
		b80);
	return _mm256_xor_si256(must, pairs);
}

__attribute__((target("avx2"))) static int utf8_valid_avx2(const unsigned char *s, size_t n)
{
	const __m256i last_max = _mm256_loadu_si256((const __m256i *)(const void *)last_max_tab);
	__m256i prev = _mm256_setzero_si256(), bad = prev, unfinished = prev;
	unsigned char tail[32];
	for (size_t i = 0; i < n; i += 32) {
		const unsigned char *p = s + i;
		if (n - i < 32) { /* the last bytes, then ASCII: a character they cut is too short */
			memset(tail, 0, sizeof tail);
			memcpy(tail, p, n - i);
			p = tail;
		}
		__m256i x = _mm256_loadu_si256((const __m256i *)(const void *)p);
		if (!_mm256_movemask_epi8(x)) { /* ASCII: right unless the block before left a character unfinished */
			bad = _mm256_or_si256(bad, unfinished);
			unfinished = _mm256_setzero_si256();
			prev = x;
			continue;
		}
		bad = _mm256_or_si256(bad, utf8_errors_avx2(x, prev));
		unfinished = _mm256_subs_epu8(x, last_max);
		prev = x;
	}
	bad = _mm256_or_si256(bad, unfinished);
	return _mm256_testz_si256(bad, bad);
}

/* Bytes i < k of upto + 32 - k are FF, the rest 0: a block's first k bytes. */
static const unsigned char upto[64] = {
	0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
	0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};

/* The 32 bytes at q, those at end and after read as zeros (a control
 * byte: a stop). Fewer than 32 left (at least one) are read whole where
 * the 32 bytes lie in q's page (as glibc's string functions read: a page is
 * mapped or not whole), else through a copy. The sanitizers are not to
 * count the bytes past end, read but never used, as a use of what lies
 * there (ThreadSanitizer took a freed neighbour's for a use after free). */
__attribute__((target("avx2"), no_sanitize_address, no_sanitize_thread)) static inline __m256i
block_at(const char *q, const char *end)
{
	if (end - q >= 32)
		return _mm256_loadu_si256((const __m256i *)(const void *)q);
	if (q >= end) /* q may be the next page's first byte */
		return _mm256_setzero_si256();
	if (((uintptr_t)q & 4095) <= 4096 - 32)
		return _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)q),
					_mm256_loadu_si256((const __m256i *)(const void *)(upto + 32 - (end - q))));
	unsigned char tail[32] = {0};
	memcpy(tail, q, (size_t)(end - q));
	return _mm256_loadu_si256((const __m256i *)(const void *)tail);
}

/* Where in block x a string's plain run stops: its quotes, backslashes and control bytes. */
__attribute__((target("avx2"))) static inline unsigned stops_avx2(__m256i x)
{
	const __m256i quote = _mm256_set1_epi8('"'), bslash = _mm256_set1_epi8('\\'), ctl = _mm256_set1_epi8(0x1f);
	return (unsigned)_mm256_movemask_epi8(_mm256_or_si256(
		_mm256_or_si256(_mm256_cmpeq_epi8(x, quote), _mm256_cmpeq_epi8(x, bslash)),
		_mm256_cmpeq_epi8(_mm256_min_epu8(x, ctl), x)));
}

/* What string_scan_avx2 carries from block to block: the block before
 * (for the characters that cross into the next), the errors and DELs seen,
 * and whether the last block left a character unfinished. */
struct scan_state {
	__m256i prev, bad, unfinished, dels;
};

/* A run of 128 bytes or more with no stop in its first block, 128 bytes a
 * step: where the first step with a stop begins (or fewer than 128 are
 * left). The ASCII test is taken over all four blocks: on mixed text (Latin
 * and Cyrillic) a test per block is mispredicted often, and over four it is
 * taken or not for long stretches (8 KB of such text: 8.5 -> 10.2 GB/s,
 * ASCII 12.6 -> 32 GB/s). A function of its own: inlined, it made the
 * short strings' path spill its registers. */
__attribute__((target("avx2"), noinline)) static const char *scan_steps_avx2(const char *q, const char *end,
									   struct scan_state *st)
{
	const __m256i del = _mm256_set1_epi8(0x7f);
	const __m256i last_max = _mm256_loadu_si256((const __m256i *)(const void *)last_max_tab);
	__m256i prev = st->prev, bad = st->bad, unfinished = st->unfinished, dels = st->dels;
	for (; end - q >= 128; q += 128) {
		const __m256i *v = (const __m256i *)(const void *)q;
		__m256i a = _mm256_loadu_si256(v), b = _mm256_loadu_si256(v + 1), c = _mm256_loadu_si256(v + 2),
			d = _mm256_loadu_si256(v + 3);
		if (stops_avx2(a) | stops_avx2(b) | stops_avx2(c) | stops_avx2(d))
			break;
		dels = _mm256_or_si256(dels, _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(a, del), _mm256_cmpeq_epi8(b, del)),
							     _mm256_or_si256(_mm256_cmpeq_epi8(c, del), _mm256_cmpeq_epi8(d, del))));
		if (_mm256_movemask_epi8(_mm256_or_si256(_mm256_or_si256(a, b), _mm256_or_si256(c, d)))) {
			bad = _mm256_or_si256(bad, _mm256_or_si256(_mm256_or_si256(utf8_errors_avx2(a, prev), utf8_errors_avx2(b, a)),
								   _mm256_or_si256(utf8_errors_avx2(c, b), utf8_errors_avx2(d, c))));
			unfinished = _mm256_subs_epu8(d, last_max);
		} else { /* ASCII: right unless the block before left a character unfinished */
			bad = _mm256_or_si256(bad, unfinished);
			unfinished = _mm256_setzero_si256();
		}
		prev = d;
	}
	st->prev = prev, st->bad = bad, st->unfinished = unfinished, st->dels = dels;
	return q;
}

/* string_scan where AVX2 is: the stop found and the bytes before it checked
 * as UTF-8 in one pass, 32 at a time (a long run first 128 a step). The
 * block that holds the stop is checked up to the stop, an ASCII byte, which
 * a character may not cut; the bytes after it count as zeros, as do those
 * at end and after: a stop at end. */
__attribute__((target("avx2"))) static const char *string_scan_avx2(const char *q, const char *end, unsigned *flags)
{
	const __m256i del = _mm256_set1_epi8(0x7f);
	const __m256i last_max = _mm256_loadu_si256((const __m256i *)(const void *)last_max_tab);
	__m256i x = block_at(q, end);
	unsigned m = stops_avx2(x);
	__m256i prev = _mm256_setzero_si256(), bad = prev, unfinished = prev, dels = prev;
	if (!m && end - q >= 128) {
		struct scan_state st = {prev, bad, unfinished, dels};
		q = scan_steps_avx2(q, end, &st);
		prev = st.prev, bad = st.bad, unfinished = st.unfinished, dels = st.dels;
		x = block_at(q, end);
		m = stops_avx2(x);
	}
	for (;;) {
		if (m) /* the stop and the bytes before it */
			x = _mm256_and_si256(x, _mm256_loadu_si256((const __m256i *)(const void *)(upto + 31 - __builtin_ctz(m))));
		dels = _mm256_or_si256(dels, _mm256_cmpeq_epi8(x, del));
		if (_mm256_movemask_epi8(x)) {
			bad = _mm256_or_si256(bad, utf8_errors_avx2(x, prev));
			unfinished = _mm256_subs_epu8(x, last_max);
		} else { /* ASCII: right unless the block before left a character unfinished */
			bad = _mm256_or_si256(bad, unfinished);
			unfinished = _mm256_setzero_si256();
		}
		if (m)
			break;
		prev = x;
		q += 32;
		x = block_at(q, end);
		m = stops_avx2(x);
	}
	*flags |= (_mm256_testz_si256(dels, dels) ? 0 : SCAN_DEL) | (_mm256_testz_si256(bad, bad) ? 0 : SCAN_BAD);
	return q + __builtin_ctz(m);
}

#undef BEFORE
#undef TABLE16

/* The same check 64 bytes at a time where AVX-512 is: the bytes before each
 * 16-byte lane are the lane before's (the block before's last, for the
 * first), and the last block is loaded masked, zeros after it. */
__attribute__((target("avx512f,avx512bw,bmi2"))) static int utf8_valid_avx512(const unsigned char *s, size_t n)
{
	const __m512i before_high = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)before_high_tab)),
		      before_low = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)before_low_tab)),
		      own_high = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)own_high_tab));
	/* last_max_tab's top half: the limits of the last three bytes */
	const __m512i last_max = _mm512_inserti64x4(_mm512_set1_epi8((char)0xFF),
						    _mm256_loadu_si256((const __m256i *)(const void *)last_max_tab), 1);
	const __m512i nibble = _mm512_set1_epi8(0x0F), b80 = _mm512_set1_epi8((char)0x80);
	const __m512i third = _mm512_set1_epi8(0xE0 - 0x80), fourth = _mm512_set1_epi8(0xF0 - 0x80);
	const __m512i lanes_before = _mm512_set_epi64(13, 12, 11, 10, 9, 8, 7, 6);
	__m512i prev = _mm512_setzero_si512(), bad = prev, unfinished = prev;
	for (size_t i = 0; i < n; i += 64) {
		__m512i x = n - i >= 64 ? _mm512_loadu_si512(s + i) : _mm512_maskz_loadu_epi8(_bzhi_u64(~0ull, (unsigned)(n - i)), s + i);
		__m512i before = _mm512_permutex2var_epi64(prev, lanes_before, x);
		__m512i p1 = _mm512_alignr_epi8(x, before, 15);
		__m512i pairs = _mm512_and_si512(
			_mm512_and_si512(_mm512_shuffle_epi8(before_high, _mm512_and_si512(_mm512_srli_epi16(p1, 4), nibble)),
					 _mm512_shuffle_epi8(before_low, _mm512_and_si512(p1, nibble))),
			_mm512_shuffle_epi8(own_high, _mm512_and_si512(_mm512_srli_epi16(x, 4), nibble)));
		__m512i must = _mm512_and_si512(_mm512_or_si512(_mm512_subs_epu8(_mm512_alignr_epi8(x, before, 14), third),
								_mm512_subs_epu8(_mm512_alignr_epi8(x, before, 13), fourth)),
						b80);
		bad = _mm512_ternarylogic_epi64(bad, must, pairs, 0xF6); /* bad | (must ^ pairs) */
		unfinished = _mm512_subs_epu8(x, last_max);
		prev = x;
	}
	bad = _mm512_or_si512(bad, unfinished);
	return _mm512_test_epi64_mask(bad, bad) == 0;
}

/* glibc's own reading of the CPU, made at start-up for its string
 * functions: __builtin_cpu_supports would add a constructor that asks the
 * CPU again at every start, and in a virtual machine each cpuid is a trap. */
#if __has_include(<sys/platform/x86.h>)
#include <sys/platform/x86.h>
#define CPU_AVX2() CPU_FEATURE_ACTIVE(AVX2)
#define CPU_AVX512() (CPU_FEATURE_ACTIVE(AVX512F) && CPU_FEATURE_ACTIVE(AVX512BW) && CPU_FEATURE_ACTIVE(BMI2))
#else
#define CPU_AVX2() __builtin_cpu_supports("avx2")
#define CPU_AVX512() (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("bmi2"))
#endif
static int cpu_simd(void) { return CPU_AVX2() ? CPU_AVX512() ? 2 : 1 : 0; }

/* The level in use + 1 (0: not yet read): the CPU's, or less where
 * jsonl_simd_limit says so. */
static int simd_state;

__attribute__((noinline)) static int simd_first(void)
{
	int st = 1 + cpu_simd();
	__atomic_store_n(&simd_state, st, __ATOMIC_RELAXED);
	return st;
}

/* The vector instructions used: 0 (SSE2), 1 AVX2, 2 AVX-512. */
static inline int simd_level(void)
{
	int st = __atomic_load_n(&simd_state, __ATOMIC_RELAXED);
	return (st ? st : simd_first()) - 1;
}
static int have_avx2(void) { return simd_level() >= 1; }
static int have_avx512(void) { return simd_level() >= 2; }

int jsonl_simd_limit(int level)
{
	int cpu = cpu_simd();
	__atomic_store_n(&simd_state, 1 + (level < cpu ? level : cpu), __ATOMIC_RELAXED);
	return simd_level();
}
#undef CPU_AVX2
#undef CPU_AVX512
#else
int jsonl_simd_limit(int level)
{
	(void)level;
	return 0;
}
#endif

/* Offset of the first byte that is not part of well-formed UTF-8 (RFC 3629:
 * no overlongs, no surrogates, nothing above U+10FFFF), or -1. jq would
 * silently turn such bytes into U+FFFD, which would move every byte offset
 * after them; a record is refused instead. */
static long bad_utf8_at(const unsigned char *s, size_t n)
{
#ifdef HAVE_AVX2_PATH
	/* where AVX2 or AVX-512 is, its check says whether; the offset of a
	 * bad byte (rare) is then found below */
	int valid = n >= 64 && have_avx512() ? utf8_valid_avx512(s, n)
		  : n >= 32 && have_avx2()   ? utf8_valid_avx2(s, n)
					     : 0;
	if (valid)
		return -1;
#endif
	size_t i = 0;
	while (i < n) {
		/* ASCII, two-byte characters (Cyrillic, Greek ...) and three-byte
		 * ones (CJK ...), sixteen bytes at a time: most of any record is. A
		 * window starts at a character; it passes when each byte past ASCII
		 * is a lead C2-DF followed by one continuation 80-BF, a lead E1-EC
		 * or EE-EF followed by two (their second byte may be any
		 * continuation: E0's and ED's may not), or such a continuation, and
		 * it moves on past its last whole character. A window that does not
		 * pass is read a character at a time, then the windows go on. */
#if defined(__SSE2__)
		const __m128i c0 = _mm_set1_epi8((char)0xC0), b80 = _mm_set1_epi8((char)0x80),
			      c2 = _mm_set1_epi8((char)0xC2), span2 = _mm_set1_epi8(0xDF - 0xC2),
			      e1 = _mm_set1_epi8((char)0xE1), span3 = _mm_set1_epi8(0xEC - 0xE1),
			      ee = _mm_set1_epi8((char)0xEE), one = _mm_set1_epi8(1), zero = _mm_setzero_si128();
		while (i + 16 <= n) {
			__m128i x = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
			unsigned high = (unsigned)_mm_movemask_epi8(x);
			if (!high) {
				i += 16;
				continue;
			}
#define IN_RANGE(lo, span) (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_subs_epu8(_mm_sub_epi8(x, lo), span), zero))
			unsigned cont = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_and_si128(x, c0), b80));
			unsigned lead2 = IN_RANGE(c2, span2), lead3 = 0;
			if ((high & ~(cont | lead2)) || cont != ((lead2 << 1) & 0xFFFF)) { /* not two-byte alone */
				lead3 = IN_RANGE(e1, span3) | IN_RANGE(ee, one);
				if ((high & ~(cont | lead2 | lead3)) || cont != (((lead2 | lead3) << 1 | lead3 << 2) & 0xFFFF))
					break;
			}
#undef IN_RANGE
			/* a character cut by the window's end starts the next one */
			i += (lead2 | lead3) & 0x8000 ? 15 : lead3 & 0x4000 ? 14 : 16;
		}
#endif
		/* A character at a time: the window that did not pass, or the last
		 * bytes (all of them where SSE2 is not). */
		for (size_t stop = n - i > 16 ? i + 16 : n; i < stop;) {
			unsigned char c = s[i];
			size_t len;
			unsigned char lo = 0x80, hi = 0xBF;
			if (c < 0x80) {
				i++;
				continue;
			} else if (c >= 0xC2 && c <= 0xDF) {
				len = 2;
			} else if (c >= 0xE0 && c <= 0xEF) {
				len = 3;
				if (c == 0xE0)
					lo = 0xA0;
				else if (c == 0xED)
					hi = 0x9F;
			} else if (c >= 0xF0 && c <= 0xF4) {
				len = 4;
				if (c == 0xF0)
					lo = 0x90;
				else if (c == 0xF4)
					hi = 0x8F;
			} else {
				return (long)i;
			}
			if (i + len > n || s[i + 1] < lo || s[i + 1] > hi)
				return (long)i;
			for (size_t k = 2; k < len; k++)
				if (s[i + k] < 0x80 || s[i + k] > 0xBF)
					return (long)i;
			i += len;
		}
	}
	return -1;
}

long jsonl_utf8_bad_at(const char *s, size_t n) { return bad_utf8_at((const unsigned char *)s, n); }

/* Works around a leak in jq 1.6 (Debian's libjq): a string that follows
 * another value inside an array or object without a separator ('{"a" "b"}',
 * '[1 "x"]') is never freed, as value() in its jv_parse.c returns "Expected
 * separator between values" without freeing it (newer jq frees it). Such a
 * line is refused here, with jq's own message, before jq sees it. Returns the
 * offset of the offending string's closing quote, where jq reports it, or -1. */
static long missing_separator_at(const char *s, size_t n)
{
	long depth = 0;
	char prev = 0; /* last byte outside strings that is not white space */
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == '"') {
			/* the closing quote: the first one after an even run of backslashes */
			size_t j = i + 1;
			for (;;) {
				const char *q = j < n ? memchr(s + j, '"', n - j) : NULL;
				if (!q)
					return -1; /* unfinished: jq reports that without leaking */
				j = (size_t)(q - s);
				size_t bs = 0;
				while (j - bs > i + 1 && s[j - bs - 1] == '\\')
					bs++;
				if (bs % 2 == 0)
					break;
				j++;
			}
			if (depth > 0 && prev && !strchr("{[,:", prev))
				return (long)j;
			prev = '"';
			i = j;
		} else if (c == '[' || c == '{') {
			depth++;
			prev = c;
		} else if (c == ']' || c == '}') {
			depth--;
			prev = c;
		} else if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
			prev = c;
		}
	}
	return -1;
}

/* jq's message without what only repeats our context: its " (while parsing
 * '<the whole line>')" tail, and "line 1," since a record is always one line. */
static void jsonl_jq_message(jv v, char *out, size_t size)
{
	jv msg = jv_invalid_get_msg(v);
	const char *s = jv_get_kind(msg) == JV_KIND_STRING ? jv_string_value(msg) : "unknown error";
	size_t n = strlen(s);
	const char *tail = strstr(s, " (while parsing '");
	if (tail)
		n = (size_t)(tail - s);
	const char *at = strstr(s, " at line 1, column ");
	if (at && (size_t)(at - s) < n) {
		size_t head = (size_t)(at - s);
		const char *rest = at + strlen(" at line 1, column ");
		snprintf(out, size, "%.*s at column %.*s", (int)head, s, (int)(n - (size_t)(rest - s)), rest);
	} else {
		snprintf(out, size, "%.*s", (int)n, s);
	}
	jv_free(msg);
}

long jsonl_unsafe_at(const char *s, size_t n, const char **why)
{
	const char *nul = memchr(s, '\0', n);
	if (nul) {
		*why = "NUL byte";
		return (long)(nul - s);
	}
	long at = bad_utf8_at((const unsigned char *)s, n);
	if (at >= 0) {
		*why = "not valid UTF-8";
		return at;
	}
	at = missing_separator_at(s, n);
	if (at >= 0)
		*why = "not valid JSON: Expected separator between values";
	return at;
}

/* Eight bytes of text at a time, the first in the lowest byte of w. Each
 * returns the bytes of w that it looks for as high bits set in them; only
 * the lowest set byte is exact (a borrow can flag bytes above it), which is
 * all the scanners need: they go to the first byte flagged (the zero-byte
 * test of "Bit Twiddling Hacks"). */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull
static uint64_t bytes_eq(uint64_t w, unsigned char c)
{
	uint64_t v = w ^ (ONES * c);
	return (v - ONES) & ~v & HIGHS;
}

/* A quote, a backslash or a control byte: where a plain run of a JSON string ends. */
static uint64_t word_stops_string(uint64_t w)
{
	return ((w - ONES * 0x20) & ~w & HIGHS) | bytes_eq(w, '"') | bytes_eq(w, '\\');
}

/* Those and DEL: what jq escapes when it writes a string. */
static uint64_t word_special(uint64_t w) { return word_stops_string(w) | bytes_eq(w, 0x7f); }

#undef HIGHS
#undef ONES
#define WORDS_LE (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)

/* A direct parser for the JSON that records are made of, several times
 * faster than jq 1.6's byte-at-a-time one, building jd values (jdoc.h) with
 * jq's meaning: a repeated key keeps its first place and its last value. It
 * takes only what it is sure to read exactly as jq does; anything else
 * (integers past 64 bits, \u escapes of NUL or of a surrogate not
 * in a pair, control bytes in strings, deep nesting, every error) makes it
 * give up, and jq parses the line. It also marks the numbers json.loads
 * would make floats (jd is_float, jsonl_number_is_float on a jv), which jq
 * cannot. */
#define JSONL_FLOAT_MARK 0x46 /* in a number's pad_: see jsonl_number_is_float */
#define JSONL_EXACT_MARK 0x49 /* in a number's pad_, its size the integer less the double: see jsonl_number_exact */

struct fastp {
	const char *s, *end;
	int depth;
	struct jsonl_memo *memo; /* NULL: none */
	int check_only;          /* nothing is built: jsonl_is_json */
	struct jd_arena *a;
	/* the items and members of the containers still open, moved into the
	 * arena, sized, when each closes */
	struct jd *items;
	struct jd_member *mems;
	size_t nitems, citems, nmems, cmems;
	char *scratch; /* where escaped strings are decoded */
	size_t cscratch;
	/* objects at depth keep_depth keep only the members named in keep
	 * (the others are checked, not built); keep_depth 0: all kept */
	const char *const *keep;
	size_t nkeep;
	int keep_depth;
	struct shape *shape; /* NULL: objects are not read against the last one (see fp_shaped) */
};

/* The memo: for each of a few top-level keys, the text of its last long
 * value and that value, in a block of its own (it is parsed into the memo's
 * scratch arena, whose blocks the kept value takes over). A value's text is
 * self-delimiting (an object, an array or a string), so a line holding the
 * same bytes at that place holds the same value, parsed at the same depth:
 * sharing it is exact. A key whose values do not come again (the
 * messages) has its values parsed into the record's arena and not kept,
 * but for one in MEMO_RETRY, so that a value that starts repeating is
 * caught: its score falls by one a miss, rises by MEMO_HIT a hit (so a key
 * must find its last value again once in three to keep its values). */
#define MEMO_KEYS 8
#define MEMO_MIN 256 /* shorter values are cheaper to parse than to compare */
#define MEMO_HIT 2
#define MEMO_RETRY 64
struct jsonl_memo {
	struct memo_entry {
		char *key, *text;
		size_t klen, len;
		struct jd_shared *v;
		int score;       /* > 0: a new value is kept */
		unsigned misses; /* since the score fell to 0 */
	} e[MEMO_KEYS];
	int n;
	unsigned long long hits;
	struct jd_arena scratch; /* a top-level value being parsed to be kept */
};

struct jsonl_memo *jsonl_memo_new(void) { return calloc(1, sizeof(struct jsonl_memo)); }

void jsonl_memo_free(struct jsonl_memo *m)
{
	if (!m)
		return;
	for (int i = 0; i < m->n; i++) {
		free(m->e[i].key), free(m->e[i].text);
		jd_shared_unref(m->e[i].v);
	}
	jd_arena_free(&m->scratch);
	free(m);
}

unsigned long long jsonl_memo_hits(const struct jsonl_memo *m) { return m ? m->hits : 0; }

/* The entry for the key k; a new one when add is set and there is room. */
static struct memo_entry *memo_find(struct jsonl_memo *m, const struct jd *k, int add)
{
	for (int i = 0; i < m->n; i++)
		if (m->e[i].klen == k->n && !memcmp(m->e[i].key, k->u.s, k->n))
			return &m->e[i];
	if (!add || m->n == MEMO_KEYS)
		return NULL;
	struct memo_entry *e = &m->e[m->n];
	if (!(e->key = malloc((size_t)k->n + 1)))
		return NULL;
	memcpy(e->key, k->u.s, (size_t)k->n + 1);
	e->klen = k->n, e->text = NULL, e->len = 0, e->v = NULL, e->score = 1, e->misses = 0;
	m->n++;
	return e;
}

static int fp_value(struct fastp *p, struct jd *out);

/* A top-level member's value, from the memo when its text is the same. */
static int fp_member(struct fastp *p, const struct jd *k, struct jd *out)
{
	int memo = p->memo && p->depth == 1 && p->s < p->end && (*p->s == '{' || *p->s == '[' || *p->s == '"');
	if (!memo)
		return fp_value(p, out);
	struct memo_entry *e = memo_find(p->memo, k, 0);
	if (e && e->v && (size_t)(p->end - p->s) >= e->len && !memcmp(p->s, e->text, e->len)) {
		p->s += e->len;
		p->memo->hits++;
		e->score = e->score + MEMO_HIT < 16 ? e->score + MEMO_HIT : 16;
		*out = *jd_shared_value(e->v);
		return 0;
	}
	if (e && e->score <= 0 && ++e->misses % MEMO_RETRY)
		return fp_value(p, out); /* values that do not come again: parsed in place, not kept */
	/* parsed into the memo's scratch arena, whose blocks a long value takes over */
	const char *start = p->s;
	struct jd_arena *rec = p->a;
	jd_arena_reset(&p->memo->scratch);
	p->a = &p->memo->scratch;
	int rc = fp_value(p, out);
	p->a = rec;
	if (rc < 0)
		return -1;
	size_t n = (size_t)(p->s - start);
	char *t = n >= MEMO_MIN && (e || (e = memo_find(p->memo, k, 1))) ? realloc(e->text, n) : NULL;
	if (t) { /* kept */
		if (e->score > 0)
			e->score--;
		memcpy(t, start, n);
		e->text = t, e->len = n;
		jd_shared_unref(e->v);
		if ((e->v = jd_shared_adopt(&p->memo->scratch, out)))
			*out = *jd_shared_value(e->v);
		return e->v ? 0 : -1;
	}
	struct jd v = *out; /* short: into the record's arena */
	return jd_copy(rec, &v, out);
}

#define FASTP_MAX_DEPTH 200 /* below jq's own limit, which jq reports */

/* Takes the byte c if it comes next. */
static int fp_eat(struct fastp *p, char c)
{
	if (p->s < p->end && *p->s == c) {
		p->s++;
		return 1;
	}
	return 0;
}

static void fp_ws(struct fastp *p)
{
	while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r'))
		p->s++;
}

int jsonl_hex4(const char *s, unsigned *u)
{
	*u = 0;
	for (int k = 0; k < 4; k++) {
		char c = s[k];
		unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
			     : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
			     : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10)
						    : 16u;
		if (d > 15)
			return -1;
		*u = *u << 4 | d;
	}
	return 0;
}

/* jv_string_sized checks the UTF-8 a byte at a time, through a function
 * call per character: an eighth of ds-fmt's time. Text checked already
 * (bad_utf8_at, eight ASCII bytes at a time) is copied into an empty string
 * of that capacity instead, whose length is then set where libjq keeps it:
 * in jq 1.6 and 1.7 a string's text follows a header ending in two 32-bit
 * words, the length shifted left by one and the capacity. That is private to
 * libjq, so the first use checks it on a string jq made, and on one made
 * here against jq's (length, bytes, equality, hash); where it does not hold,
 * jv_string_sized is used. */
static int layout_checked(void)
{
	static int state; /* 0 unchecked, 1 holds, -1 does not */
	int st = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
	if (st)
		return st > 0;
	jv ref = jv_string_sized("lorapipe", 8);
	const char *d = jv_string_value(ref);
	uint32_t lh, cap;
	memcpy(&lh, d - 8, 4), memcpy(&cap, d - 4, 4);
	int ok = lh == 8u << 1 && cap == 8;
	if (ok) {
		jv t = jv_string_empty(8);
		char *td = (char *)jv_string_value(t);
		memcpy(td, "lorapipe", 9);
		lh = 8u << 1;
		memcpy(td - 8, &lh, 4);
		ok = jv_string_length_bytes(jv_copy(t)) == 8 && jv_equal(jv_copy(t), jv_copy(ref)) &&
		     jv_string_hash(jv_copy(t)) == jv_string_hash(jv_copy(ref));
		jv_free(t);
	}
	jv_free(ref);
	__atomic_store_n(&state, ok ? 1 : -1, __ATOMIC_RELEASE);
	return ok;
}

/* The jv string of s[0..n), which is UTF-8 (checked). */
static jv string_checked(const char *s, size_t n)
{
	if (n > INT_MAX / 2 || !layout_checked())
		return jv_string_sized(s, (int)n);
	jv v = jv_string_empty((int)n);
	char *d = (char *)jv_string_value(v);
	memcpy(d, s, n);
	d[n] = 0;
	uint32_t lh = (uint32_t)n << 1;
	memcpy(d - 8, &lh, 4);
	return v;
}

/* The first quote, backslash or control byte in [q, end), or end: where a
 * plain run of a JSON string stops (string_scan's search where AVX2 is
 * not). *high is set when a byte before it is 7F or above: a run without
 * one is ASCII with no DEL and needs no UTF-8 check. */
static const char *string_stop(const char *q, const char *end, unsigned *high)
{
	unsigned hi = 0;
#if defined(__SSE2__)
	const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'), ctl = _mm_set1_epi8(0x1f),
		      one = _mm_set1_epi8(1);
	for (; end - q >= 16; q += 16) {
		__m128i x = _mm_loadu_si128((const __m128i *)(const void *)q);
		__m128i sp = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)),
					  _mm_cmpeq_epi8(_mm_min_epu8(x, ctl), x));
		unsigned m = (unsigned)_mm_movemask_epi8(sp), hb = (unsigned)_mm_movemask_epi8(_mm_adds_epu8(x, one));
		if (m) {
			*high |= hi | (hb & ((m & -m) - 1)); /* the bytes before the stop */
			return q + __builtin_ctz(m);
		}
		hi |= hb;
	}
#endif
#if WORDS_LE
	for (uint64_t w, m; end - q >= 8; q += 8) {
		memcpy(&w, q, 8);
		uint64_t hw = (w & 0x8080808080808080ull) | bytes_eq(w, 0x7f); /* may flag more above a 7F: only checked more */
		if ((m = word_stops_string(w))) {
			int k = __builtin_ctzll(m) >> 3;
			*high |= hi | (k && (hw & (~0ull >> (64 - 8 * k))));
			return q + k;
		}
		hi |= hw != 0;
	}
#endif
	while (q < end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20)
		hi |= (unsigned char)*q++ >= 0x7f;
	*high |= hi;
	return q;
}

/* The first quote, backslash or control byte in [q, end), or end, with
 * what the bytes before it hold added to *flags (SCAN_*). */
static const char *string_scan(const char *q, const char *end, unsigned *flags)
{
#ifdef HAVE_AVX2_PATH
	if (have_avx2())
		return string_scan_avx2(q, end, flags);
#endif
	unsigned high = 0;
	const char *r = string_stop(q, end, &high);
	if (high) {
		*flags |= (memchr(q, 0x7f, (size_t)(r - q)) ? SCAN_DEL : 0) |
			  (bad_utf8_at((const unsigned char *)q, (size_t)(r - q)) >= 0 ? SCAN_BAD : 0);
	}
	return r;
}

long jsonl_string_decode(const char *s, size_t n, char *out, const char **text, size_t *len, int *plain)
{
	if (plain)
		*plain = 0;
	if (!n)
		return -1;
	const char *end = s + n, *b = s + 1;
	unsigned flags = 0;
	const char *q = string_scan(b, end, &flags);
	if (q < end && *q == '"') { /* no escapes: the common case */
		if (flags & SCAN_BAD)
			return -1;
		*text = b, *len = (size_t)(q - b);
		if (plain)
			*plain = !(flags & SCAN_DEL);
		return q + 1 - s;
	}
	if (!out)
		return 0;
	/* With escapes: the plain runs between them copied whole; an escape
	 * of k bytes decodes to at most k, so out never passes what was read.
	 * Escapes decode to whole characters: only the runs need checking, and
	 * a run may not end inside one. */
	char *o = out;
	for (q = b;;) {
		const char *r = string_scan(q, end, &flags);
		if (flags & SCAN_BAD)
			return -1;
		memcpy(o, q, (size_t)(r - q));
		o += r - q;
		if (r >= end)
			return -1;
		q = r;
		if (*q == '"')
			break;
		if (*q != '\\' || ++q >= end) /* a control byte, or the line ends */
			return -1;
		unsigned u;
		switch (*q) {
		case '"': case '\\': case '/': *o++ = *q; break;
		case 'b': *o++ = '\b'; break;
		case 'f': *o++ = '\f'; break;
		case 'n': *o++ = '\n'; break;
		case 'r': *o++ = '\r'; break;
		case 't': *o++ = '\t'; break;
		case 'u':
			if (end - q < 5 || jsonl_hex4(q + 1, &u) < 0 || u == 0 || (u >= 0xDC00 && u <= 0xDFFF))
				return -1;
			q += 4;
			if (u >= 0xD800 && u <= 0xDBFF) { /* only as the first of a pair */
				unsigned lo;
				if (end - q < 7 || q[1] != '\\' || q[2] != 'u' || jsonl_hex4(q + 3, &lo) < 0 ||
				    lo < 0xDC00 || lo > 0xDFFF)
					return -1;
				q += 6;
				u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
			}
			o += utf8proc_encode_char((utf8proc_int32_t)u, (utf8proc_uint8_t *)o);
			break;
		default: return -1;
		}
		q++;
	}
	*text = out, *len = (size_t)(o - out);
	return q + 1 - s;
}

/* A string at p->s ('"'), or -1 when it is not of the kind jsonl_string_decode takes. */
static int fp_string(struct fastp *p, struct jd *out)
{
	size_t room = (size_t)(p->end - p->s), len;
	const char *text;
	/* the scratch, once grown for a string, has room for every later one */
	long k = jsonl_string_decode(p->s, room, room <= p->cscratch ? p->scratch : NULL, &text, &len, NULL);
	if (k == 0) { /* escapes: decoded into the scratch, the rest of the line's size at most */
		if (room > p->cscratch) {
			char *nb = realloc(p->scratch, room);
			if (!nb)
				return -1;
			p->scratch = nb, p->cscratch = room;
		}
		k = jsonl_string_decode(p->s, room, p->scratch, &text, &len, NULL);
	}
	if (k <= 0)
		return -1;
	p->s += k;
	if (p->check_only) {
		*out = jd_null();
		return 0;
	}
	*out = jd_string(p->a, text, len);
	return out->kind == JD_STRING ? 0 : -1;
}

/* Room for one more item or member on p's stacks; -1 when out of memory. */
static int stack_room(void **v, size_t n, size_t *cap, size_t size)
{
	if (n < *cap)
		return 0;
	size_t ncap = *cap ? 2 * *cap : 64;
	void *nv = realloc(*v, ncap * size);
	if (!nv)
		return -1;
	*v = nv, *cap = ncap;
	return 0;
}

/* A closing container: its n parts (of size bytes each), from index first
 * of a stack on, moved into the arena, *parts pointing at them (NULL when
 * none: the stack itself may be NULL then). 0, or -1 when out of memory. */
static int parts_to_arena(struct fastp *p, const void *stack, size_t first, size_t n, size_t size,
			  const void **parts)
{
	*parts = NULL;
	if (!n)
		return 0;
	void *to = jd_alloc(p->a, n * size);
	if (!to)
		return -1;
	memcpy(to, (const char *)stack + first * size, n * size);
	*parts = to;
	return 0;
}

static int fp_array(struct fastp *p, struct jd *out)
{
	p->s++;
	size_t base = p->nitems;
	fp_ws(p);
	if (!fp_eat(p, ']'))
		for (;;) {
			struct jd v;
			if (fp_value(p, &v) < 0)
				goto fail;
			if (!p->check_only) {
				if (stack_room((void **)&p->items, p->nitems, &p->citems, sizeof *p->items) < 0)
					goto fail;
				p->items[p->nitems++] = v;
			}
			fp_ws(p);
			if (fp_eat(p, ','))
				continue;
			if (fp_eat(p, ']'))
				break;
			goto fail;
		}
	*out = (struct jd){.kind = p->check_only ? JD_NULL : JD_ARRAY, .n = (uint32_t)(p->nitems - base)};
	const void *items;
	if (parts_to_arena(p, p->items, base, out->n, sizeof *p->items, &items) < 0)
		goto fail;
	out->u.items = items;
	p->nitems = base;
	return 0;
fail:
	p->nitems = base;
	return -1;
}

static int same_key(const struct jd_member *a, const struct jd_member *b)
{
	return a->key.n == b->key.n && !memcmp(a->key.u.s, b->key.u.s, a->key.n);
}

/* m[0..n) with each repeated key dropped, its value given to the first one
 * (jq's jv_object_set): the number left, or -1 when out of memory. */
static long dedup_members(struct jd_member *m, size_t n)
{
	if (n < 2)
		return (long)n;
	if (n <= 16) { /* the usual object: a few members, compared pairwise */
		size_t k = 0;
		for (size_t i = 0; i < n; i++) {
			size_t j = 0;
			while (j < k && !same_key(&m[j], &m[i]))
				j++;
			if (j < k)
				m[j].val = m[i].val;
			else
				m[k++] = m[i];
		}
		return (long)k;
	}
	size_t size = 32;
	while (size < 2 * n)
		size *= 2;
	uint32_t *slot = calloc(size, sizeof *slot); /* index + 1 of the kept member, 0 when empty */
	if (!slot)
		return -1;
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		uint32_t h = 2166136261u; /* FNV-1a */
		for (uint32_t b = 0; b < m[i].key.n; b++)
			h = (h ^ (unsigned char)m[i].key.u.s[b]) * 16777619u;
		size_t at = h & (size - 1);
		while (slot[at] && !same_key(&m[slot[at] - 1], &m[i]))
			at = (at + 1) & (size - 1);
		if (slot[at]) {
			m[slot[at] - 1].val = m[i].val;
		} else {
			m[k] = m[i];
			slot[at] = (uint32_t)++k;
		}
	}
	free(slot);
	return (long)k;
}

static size_t scan_string(const char *s, size_t n);
static int key_is(const char *s, size_t k, const char *key, size_t kn);

/* Whether the member whose key string begins at p->s is one its object
 * keeps (see struct fastp). */
static int fp_kept(const struct fastp *p)
{
	if (p->check_only || p->depth != p->keep_depth)
		return 1;
	const char *q = p->s + 1;
	while (q < p->end && *q != '"' && *q != '\\')
		q++;
	size_t kn = (size_t)(q - p->s - 1);
	if (q < p->end && *q == '"') { /* a key as written: the usual case */
		for (size_t i = 0; i < p->nkeep; i++)
			if (p->keep[i][0] == (kn ? p->s[1] : 0) && strlen(p->keep[i]) == kn && !memcmp(p->keep[i], p->s + 1, kn))
				return 1; /* lengths compared first: a key may hold a NUL (then it is not JSON) */
		return 0;
	}
	size_t k = scan_string(p->s, (size_t)(p->end - p->s)); /* with escapes: compared decoded */
	for (size_t i = 0; k && i < p->nkeep; i++)
		if (key_is(p->s, k, p->keep[i], strlen(p->keep[i])))
			return 1;
	return 0;
}

static int fp_object(struct fastp *p, struct jd *out)
{
	p->s++;
	size_t base = p->nmems;
	fp_ws(p);
	if (!fp_eat(p, '}'))
		for (;;) {
			struct jd_member m;
			fp_ws(p);
			if (p->s >= p->end || *p->s != '"')
				goto fail;
			int kept = fp_kept(p), check_only = p->check_only;
			p->check_only = check_only || !kept; /* a member not kept: its key and value only checked */
			int rc = fp_string(p, &m.key);
			fp_ws(p);
			if (rc < 0 || !fp_eat(p, ':'))
				rc = -1;
			fp_ws(p);
			if (rc == 0)
				rc = fp_member(p, &m.key, &m.val);
			p->check_only = check_only;
			if (rc < 0)
				goto fail;
			if (kept && !p->check_only) {
				if (stack_room((void **)&p->mems, p->nmems, &p->cmems, sizeof *p->mems) < 0)
					goto fail;
				p->mems[p->nmems++] = m;
			}
			fp_ws(p);
			if (fp_eat(p, ','))
				continue;
			if (fp_eat(p, '}'))
				break;
			goto fail;
		}
	long n = p->nmems > base ? dedup_members(p->mems + base, p->nmems - base) : 0; /* mems may be NULL */
	if (n < 0)
		goto fail;
	*out = (struct jd){.kind = p->check_only ? JD_NULL : JD_OBJECT, .n = (uint32_t)n};
	const void *members;
	if (parts_to_arena(p, p->mems, base, (size_t)n, sizeof *p->mems, &members) < 0)
		goto fail;
	out->u.members = members;
	p->nmems = base;
	return 0;
fail:
	p->nmems = base;
	return -1;
}

int jsonl_number_is_float(jv v)
{
	return jv_get_kind(v) == JV_KIND_NUMBER && v.pad_ == JSONL_FLOAT_MARK;
}

jv jsonl_float(double d)
{
	jv v = jv_number(d);
	v.pad_ = JSONL_FLOAT_MARK;
	return v;
}

/* Past 2^53 even an integer the double holds is marked: jq writes 17
 * digits (2^63 as 9223372036854775800). long double holds any int64 and any
 * double exactly on x86-64 (64-bit mantissa), so their difference is exact;
 * it is at most half a double's step near 2^63, 2^10. */
jv jsonl_exact(long i)
{
	double d = (double)i;
	jv v = jv_number(d);
	if (i > (1L << 53) || i < -(1L << 53)) {
		v.pad_ = JSONL_EXACT_MARK;
		v.size = (int)(long)((long double)i - (long double)d);
	}
	return v;
}

int jsonl_number_exact(jv v, long *i)
{
	if (jv_get_kind(v) != JV_KIND_NUMBER || v.pad_ != JSONL_EXACT_MARK)
		return 0;
	*i = (long)((long double)jv_number_value(v) + v.size);
	return 1;
}

long double jsonl_number_ld(jv v)
{
	long i;
	return jsonl_number_exact(v, &i) ? (long double)i : (long double)jv_number_value(v);
}

int jsonl_equal(jv a, jv b)
{
	int eq = jv_get_kind(a) == jv_get_kind(b);
	if (eq && jv_get_kind(a) == JV_KIND_NUMBER)
		eq = jsonl_number_ld(a) == jsonl_number_ld(b);
	else if (eq && jv_get_kind(a) == JV_KIND_ARRAY) {
		int n = jv_array_length(jv_copy(a));
		eq = n == jv_array_length(jv_copy(b));
		for (int i = 0; eq && i < n; i++)
			eq = jsonl_equal(jv_array_get(jv_copy(a), i), jv_array_get(jv_copy(b), i));
	} else if (eq && jv_get_kind(a) == JV_KIND_OBJECT) {
		eq = jv_object_length(jv_copy(a)) == jv_object_length(jv_copy(b));
		jv_object_foreach(a, k, x) {
			if (eq) {
				jv y = jv_object_get(jv_copy(b), jv_copy(k));
				eq = jv_is_valid(y) && jsonl_equal(jv_copy(x), y);
			}
			jv_free(k), jv_free(x);
		}
	} else if (eq)
		eq = jv_equal(jv_copy(a), jv_copy(b));
	jv_free(a), jv_free(b);
	return eq;
}

static int is_digit(const char *q, const char *end) { return q < end && *q >= '0' && *q <= '9'; }

/* strtod of the number s[0..n) (not NUL-terminated): 0, or -1 when out of memory. */
static int literal_double(const char *s, size_t n, double *d)
{
	char small[64];
	char *buf = n < sizeof small ? small : malloc(n + 1);
	if (!buf)
		return -1;
	memcpy(buf, s, n);
	buf[n] = 0;
	*d = strtod(buf, NULL);
	if (buf != small)
		free(buf);
	return 0;
}

/* Integers of up to 15 digits (exact as doubles, printed back the same),
 * integers of up to 19 that fit 64 bits held whole (json.loads' ints: a
 * double would round them), and numbers with a fraction or an exponent,
 * which are marked as floats; the double is strtod's, correctly rounded as
 * jq's own. Longer integers go to jq. A check only takes every number JSON
 * allows. */
static int fp_number(struct fastp *p, struct jd *out)
{
	const char *q = p->s, *end = p->end;
	int neg = q < end && *q == '-';
	q += neg;
	uint64_t v = 0;
	int nd = 0;
	for (; is_digit(q, end); q++, nd++)
		if (nd < 20)
			v = v * 10 + (uint64_t)(*q - '0'); /* wraps past 19 digits: not used then */
	if (nd == 0 || (nd > 1 && p->s[neg] == '0'))
		return -1;
	int frac = q < end && *q == '.', exp = 0;
	if (frac) {
		if (!is_digit(++q, end))
			return -1;
		while (is_digit(q, end))
			q++;
	}
	if (q < end && (*q == 'e' || *q == 'E')) {
		exp = 1;
		q += q + 1 < end && (q[1] == '+' || q[1] == '-') ? 2 : 1;
		if (!is_digit(q, end))
			return -1;
		while (is_digit(q, end))
			q++;
	}
	if (p->check_only) { /* the syntax is all that is asked: HF configs hold 31-digit integers */
		p->s = q;
		*out = jd_null();
		return 0;
	}
	if (!frac && !exp) {
		if (nd > 19 || v > (uint64_t)INT64_MAX + neg)
			return -1;
		p->s = q;
		if (nd <= 15) /* "-0" too: -0.0 as jq reads it, an int 0 to a template, written back "-0" as jq does */
			*out = jd_number(neg ? -(double)v : (double)v, 0);
		else
			*out = jd_int(neg ? (int64_t)(0 - v) : (int64_t)v);
		return 0;
	}
	double d;
	if (literal_double(p->s, (size_t)(q - p->s), &d) < 0 || !isfinite(d))
		return -1; /* not finite: jq's business (it clamps, json.loads gives inf) */
	p->s = q;
	*out = jd_number(d, 1);
	return 0;
}

int jsonl_number_decode(const char *s, size_t n, struct jd *out)
{
	/* an integer of up to 15 digits (an id, a count) read here, as fp_number reads it */
	size_t neg = n && *s == '-', nd = n - neg;
	if (nd && nd <= 15 && (s[neg] != '0' || nd == 1)) {
		uint64_t x = 0;
		size_t i = neg;
		while (i < n && s[i] >= '0' && s[i] <= '9')
			x = 10 * x + (uint64_t)(s[i++] - '0');
		if (i == n) {
			*out = jd_number(neg ? -(double)x : (double)x, 0);
			return 0;
		}
	}
	struct fastp p = {.s = s, .end = s + n};
	return fp_number(&p, out) == 0 && p.s == p.end ? 0 : -1;
}

static int fp_word(struct fastp *p, const char *w, size_t n)
{
	if ((size_t)(p->end - p->s) < n || memcmp(p->s, w, n))
		return 0;
	p->s += n;
	return 1;
}

/* The elements of a long list are often objects of one shape, written
 * alike: tokenizer.json's added tokens, tokenizer_config.json's
 * added_tokens_decoder (6,415 each in Gemma 3's, pretty-printed). The last
 * flat object parsed below the top level (no array or object in it, each
 * key once) is kept as a shape: its text around the values (keys, white
 * space, punctuation), compared whole, and each value's kind. An object
 * at the same depth is first read against it, each value parsed where it
 * stands; where every piece matches, it is the object fp_object makes of
 * those bytes (the same keys, in the same order, kept or only checked as
 * they were), else it is parsed as any other and becomes the shape. Only
 * for texts of shape_min bytes or more: a record's line has few objects
 * of a shape, and its parse keeps its one-pass cost. */
enum { SHAPE_MEMBERS = 16 };
struct shape {
	int depth;      /* of the object (its members'); 0: none yet */
	int check_only; /* the object was only checked */
	uint32_t n;
	const char *text; /* the object learned from, where its pieces are compared */
	struct {
		uint32_t off, len; /* the text before the value, in text */
		char kind;         /* '"' a string, 'w' true, false or null, '0' a number */
		uint8_t kept;      /* built (not only checked), its key built as key */
		struct jd key;
	} v[SHAPE_MEMBERS];
	uint32_t tail_off, tail_len; /* after the last value, to the closing brace */
};

static size_t shape_min = 64 << 10;

size_t jsonl_shape_min(size_t bytes)
{
	size_t was = shape_min;
	shape_min = bytes;
	return was;
}

static int fp_kept(const struct fastp *p);
static int container_next(const char *s, size_t n, int obj, size_t *at, size_t *ka, size_t *kb, size_t *a, size_t *b);

/* The object just parsed from s0 to p->s into obj, as the shape; left
 * without one where it is empty or not flat, has more than SHAPE_MEMBERS
 * members or repeats a kept key. */
static void shape_learn(struct fastp *p, const char *s0, const struct jd *obj)
{
	struct shape *t = p->shape;
	const char *end = p->s;
	size_t len = (size_t)(end - s0), at = 0, ka, kb, a, b, lit = 0;
	uint32_t n = 0, k = 0, built = obj->kind == JD_OBJECT ? obj->n : 0;
	int r;
	t->depth = 0;
	while ((r = container_next(s0, len, 1, &at, &ka, &kb, &a, &b)) > 0 && n < SHAPE_MEMBERS) {
		char c = s0[a], kind = c == '"' ? '"' : c == 't' || c == 'f' || c == 'n' ? 'w' : c == '{' || c == '[' ? 0 : '0';
		p->s = s0 + ka; /* fp_kept reads the key there */
		int kept = kind && fp_kept(p) && !p->check_only;
		if (!kind || (kept && k == built))
			break; /* not flat; a repeated key (fewer members than keys) */
		t->v[n].off = (uint32_t)lit, t->v[n].len = (uint32_t)(a - lit), t->v[n].kind = kind;
		t->v[n].kept = (uint8_t)kept;
		t->v[n].key = kept ? obj->u.members[k++].key : jd_null();
		n++, lit = b;
	}
	if (r == 0 && n) { /* every member seen (a kept key repeated stops the loop: k never passes built) */
		t->tail_off = (uint32_t)lit, t->tail_len = (uint32_t)(len - lit);
		t->text = s0, t->n = n, t->check_only = p->check_only, t->depth = p->depth;
	}
	p->s = end;
}

/* The object at p->s read against the shape: 1 with it in out, 0 where a
 * piece differs (p->s where it was), -1 out of memory. */
static int fp_shaped(struct fastp *p, struct jd *out)
{
	const struct shape *t = p->shape;
	const char *s0 = p->s;
	struct jd_member m[SHAPE_MEMBERS];
	uint32_t k = 0;
	int co = p->check_only;
	for (uint32_t i = 0; i < t->n; i++) {
		if ((size_t)(p->end - p->s) <= t->v[i].len || memcmp(p->s, t->text + t->v[i].off, t->v[i].len))
			goto differs;
		p->s += t->v[i].len;
		char c = *p->s, kind = t->v[i].kind;
		if (kind == '"' ? c != '"' : kind == 'w' ? c != 't' && c != 'f' && c != 'n' : c != '-' && (c < '0' || c > '9'))
			goto differs;
		struct jd v;
		p->check_only = co || !t->v[i].kept;
		int rc = kind == '"' ? fp_string(p, &v) : kind == 'w' ? fp_value(p, &v) : fp_number(p, &v);
		p->check_only = co;
		if (rc < 0)
			goto differs; /* fp_object says what is wrong */
		if (t->v[i].kept)
			m[k++] = (struct jd_member){t->v[i].key, v};
	}
	if ((size_t)(p->end - p->s) < t->tail_len || memcmp(p->s, t->text + t->tail_off, t->tail_len))
		goto differs;
	p->s += t->tail_len;
	*out = (struct jd){.kind = co ? JD_NULL : JD_OBJECT, .n = k};
	const void *members;
	if (parts_to_arena(p, m, 0, k, sizeof *m, &members) < 0)
		return -1;
	out->u.members = members;
	return 1;
differs:
	p->s = s0;
	return 0;
}

static int fp_value(struct fastp *p, struct jd *out)
{
	fp_ws(p);
	if (p->s >= p->end)
		return -1;
	int rc;
	switch (*p->s) {
	case '"': return fp_string(p, out);
	case '{':
	case '[':
		if (++p->depth > FASTP_MAX_DEPTH)
			return -1;
		if (*p->s == '[') {
			rc = fp_array(p, out);
		} else if (p->shape && p->depth > 1) { /* the top level's members go through the memo */
			const char *s0 = p->s;
			int shaped = p->shape->depth == p->depth && p->shape->check_only == p->check_only ? fp_shaped(p, out) : 0;
			rc = shaped < 0 ? -1 : shaped ? 0 : fp_object(p, out);
			if (!shaped && rc == 0)
				shape_learn(p, s0, out);
		} else {
			rc = fp_object(p, out);
		}
		p->depth--;
		return rc;
	case 't': *out = jd_bool(1); return fp_word(p, "true", 4) ? 0 : -1;
	case 'f': *out = jd_bool(0); return fp_word(p, "false", 5) ? 0 : -1;
	case 'n': *out = jd_null(); return fp_word(p, "null", 4) ? 0 : -1;
	default: return fp_number(p, out);
	}
}

/* p's text, one value with white space around it: 0, or -1. */
static int fast_run(struct fastp *p, struct jd *out)
{
	int rc = fp_value(p, out);
	fp_ws(p);
	/* after true/false/null/a number jq wants a delimiter ("nullx" is an error) */
	if (rc == 0 && p->s != p->end)
		rc = -1;
	free(p->items), free(p->mems), free(p->scratch);
	return rc;
}

/* s[0..n): 0 with its one value (white space around it allowed) in a, or
 * -1 for jq to parse (after jsonl_unsafe_at) and to word the error. */
static int fast_parse(const char *s, size_t n, struct jsonl_memo *memo, struct jd_arena *a, int check_only,
		      struct jd *out)
{
	struct shape shape = {0};
	struct fastp p = {.s = s, .end = s + n, .memo = memo, .check_only = check_only, .a = a, .shape = n >= shape_min ? &shape : NULL};
	return fast_run(&p, out);
}

int jsonl_parse_jd_keep(const char *s, size_t n, const char *const *keep, size_t nkeep, int depth,
			struct jd_arena *a, struct jd *out, size_t *used)
{
	struct shape shape = {0};
	struct fastp p = {.s = s, .end = s + n, .a = a, .keep = keep, .nkeep = nkeep, .keep_depth = depth,
			  .shape = n >= shape_min ? &shape : NULL};
	if (n > INT_MAX)
		return -1;
	if (!used)
		return fast_run(&p, out);
	int rc = fp_value(&p, out);
	*used = (size_t)(p.s - s);
	free(p.items), free(p.mems), free(p.scratch);
	return rc;
}

int jsonl_is_direct(const char *s, size_t n)
{
	struct jd_arena a = {0};
	struct jd v;
	int direct = n <= INT_MAX && fast_parse(s, n, NULL, &a, 0, &v) == 0;
	jd_arena_free(&a);
	return direct;
}

int jsonl_is_json(const char *s, size_t n)
{
	struct jd v;
	return fast_parse(s, n, NULL, NULL, 1, &v) == 0;
}

/* s[0..n) (at most INT_MAX bytes) parsed: the direct parser takes only valid
 * JSON with UTF-8 strings (outside them only ASCII is JSON), so the checks of
 * jsonl_unsafe_at are needed only for text it leaves to jq. Returns 1 with
 * *out in a when the direct parser read it, else 0: with *at where those
 * checks failed (*why says what), or with *at -1 and *jqv what jq made of
 * the text (its value, or invalid with its message). */
static int parse_text(const char *s, size_t n, struct jsonl_memo *memo, struct jd_arena *a, struct jd *out,
		      const char **why, long *at, jv *jqv)
{
	*at = -1;
	*jqv = jv_invalid();
	if (fast_parse(s, n, memo, a, 0, out) == 0)
		return 1;
	if ((*at = jsonl_unsafe_at(s, n, why)) >= 0)
		return 0;
	*jqv = jv_parse_sized(s, (int)n);
	return 0;
}

/* "NAME:LINE: <fmt...>" into err; returns -1. */
static int line_errf(const char *name, long lineno, struct err *err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static int line_errf(const char *name, long lineno, struct err *err, const char *fmt, ...)
{
	if (!err)
		return -1;
	char what[sizeof err->msg];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof what, fmt, ap);
	va_end(ap);
	return name ? err_set(err, "%s:%ld: %s", name, lineno, what) : err_set(err, "%s", what);
}

static const char *kind_name(enum jd_kind k)
{
	static const char *const names[] = {"null", "boolean", "boolean", "number", "string", "array", "object"};
	return names[k];
}

static size_t scan_string(const char *s, size_t n);
static size_t scan_value(const char *s, size_t n);
static int is_json_space(char c);

/* The numbers of v, which jq read from the text s[0..n) at *i (valid JSON:
 * jq took it), made what the direct parser makes of them, as jq's doubles
 * are not json.loads' numbers: a fraction or an exponent marks a float, an
 * integer of 16 to 19 digits is held whole, and one past 64 bits is marked
 * rounded (json.loads keeps it whole; jq's double is kept). v may be NULL
 * (a value jq did not keep: a repeated key's first, whose numbers are told
 * from the last's by their values). Returns the rounded integers' count;
 * where the text is one of jq's extensions (".5", 01, nan), the walk stops
 * and *i is n. Its depth is jq's (256 at most). */
static size_t numbers_as_written(const char *s, size_t n, size_t *i, struct jd *v)
{
	while (*i < n && is_json_space(s[*i]))
		(*i)++;
	if (*i >= n)
		return 0;
	char c = s[*i];
	size_t rounded = 0;
	if (c == '[' || c == '{') {
		uint32_t k = 0;
		for ((*i)++; *i < n;) {
			while (*i < n && (is_json_space(s[*i]) || s[*i] == ','))
				(*i)++;
			if (*i >= n || s[*i] == ']' || s[*i] == '}') {
				(*i)++;
				return rounded;
			}
			struct jd *item = NULL;
			if (c == '{') { /* the member of the key, whose value is the last one written */
				size_t kn = scan_string(s + *i, n - *i);
				char small[256];
				const char *key;
				size_t klen;
				if (!kn) {
					*i = n;
					return rounded;
				}
				long d = jsonl_string_decode(s + *i, kn, kn <= sizeof small ? small : NULL, &key, &klen, NULL);
				for (uint32_t m = 0; d > 0 && v && v->kind == JD_OBJECT && m < v->n && !item; m++)
					if (v->u.members[m].key.n == klen && !memcmp(v->u.members[m].key.u.s, key, klen))
						item = (struct jd *)&v->u.members[m].val; /* jsonl_jd_of's, in the caller's arena */
				*i += kn;
				while (*i < n && (is_json_space(s[*i]) || s[*i] == ':'))
					(*i)++;
			} else if (v && v->kind == JD_ARRAY && k < v->n) {
				item = (struct jd *)&v->u.items[k];
			}
			k++;
			rounded += numbers_as_written(s, n, i, item);
		}
		return rounded;
	}
	size_t len = c == '"' ? scan_string(s + *i, n - *i) : scan_value(s + *i, n - *i);
	struct jd num;
	if (len && v && v->kind == JD_NUMBER && c != '"' && c != 't' && c != 'f' && c != 'n') {
		const char *d = s + *i + (c == '-');
		size_t nd = len - (c == '-'), digits = 0; /* s is not NUL-terminated */
		while (digits < nd && d[digits] >= '0' && d[digits] <= '9')
			digits++;
		if (jsonl_number_decode(s + *i, len, &num) == 0) {
			if (jd_num(&num) == jd_num(v)) /* else a repeated key's earlier value */
				*v = num;
		} else if (nd > 1 && d[0] != '0' && digits == nd) { /* JSON's integer, past 64 bits */
			double dv;
			if (literal_double(s + *i, len, &dv) == 0 && dv == v->u.num) /* else a repeated key's earlier value */
				v->rounded = 1, rounded++;
		} else {
			len = 0; /* jq's extension (01) or a float past a double (1e999), as jq read it */
		}
	}
	*i = len ? *i + len : n;
	return rounded;
}

/* jq's value v (consumed) of the text s[0..n) as a jd in a, its numbers as
 * written (numbers_as_written): 0, or -1 when out of memory. */
static int jd_of_jq(const char *s, size_t n, jv v, struct jd_arena *a, struct jd *out)
{
	int rc = jsonl_jd_of(v, a, out);
	jv_free(v);
	if (rc < 0)
		return -1;
	size_t i = 0;
	a->rounded |= numbers_as_written(s, n, &i, out) > 0;
	return 0;
}

int jsonl_parse_record_jd(const char *name, long lineno, const char *line, size_t len, struct jsonl_memo *memo,
			  struct jd_arena *a, struct jd *out, struct err *err)
{
	if (len > INT_MAX)
		return line_errf(name, lineno, err, "line too long (%zu bytes)", len);
	const char *why;
	long at;
	jv v;
	if (!parse_text(line, len, memo, a, out, &why, &at, &v)) {
		if (at >= 0)
			return line_errf(name, lineno, err, "%s at column %ld", why, at + 1);
		if (!jv_is_valid(v)) {
			char msg[512];
			jsonl_jq_message(v, msg, sizeof msg);
			if (strcmp(msg, "Unexpected extra JSON values") == 0)
				return line_errf(name, lineno, err, "more than one JSON value on the line");
			return line_errf(name, lineno, err, "not valid JSON: %s", msg);
		}
		if (jd_of_jq(line, len, v, a, out) < 0) {
			line_errf(name, lineno, err, "out of memory");
			if (err)
				err->code = EXIT_RUNTIME;
			return -1;
		}
	}
	if (out->kind != JD_OBJECT)
		return line_errf(name, lineno, err, "expected an object, got %s", kind_name((enum jd_kind)out->kind));
	return 1;
}

int jsonl_parse_record(const char *name, long lineno, const char *line, size_t len, jv *out, struct err *err)
{
	struct jd_arena a = {0};
	struct jd v;
	int rc = jsonl_parse_record_jd(name, lineno, line, len, NULL, &a, &v, err);
	if (rc > 0)
		*out = jsonl_jv_of(&v);
	jd_arena_free(&a);
	return rc;
}

jv jsonl_jv_of(const struct jd *d)
{
	switch (d->kind) {
	case JD_TRUE: return jv_true();
	case JD_FALSE: return jv_false();
	case JD_NUMBER: /* jq's is a double: the floats and the integers past 2^53 marked */
		return d->is_float ? jsonl_float(d->u.num) : d->exact ? jsonl_exact(d->u.i) : jv_number(d->u.num);
	case JD_STRING: return string_checked(d->u.s, d->n);
	case JD_ARRAY: {
		jv a = jv_array();
		for (uint32_t i = 0; i < d->n; i++)
			a = jv_array_append(a, jsonl_jv_of(&d->u.items[i]));
		return a;
	}
	case JD_OBJECT: {
		jv o = jv_object();
		for (uint32_t i = 0; i < d->n; i++)
			o = jv_object_set(o, jsonl_jv_of(&d->u.members[i].key), jsonl_jv_of(&d->u.members[i].val));
		return o;
	}
	default: return jv_null();
	}
}

int jsonl_jd_of(jv v, struct jd_arena *a, struct jd *out)
{
	switch (jv_get_kind(v)) {
	case JV_KIND_TRUE: *out = jd_bool(1); return 0;
	case JV_KIND_FALSE: *out = jd_bool(0); return 0;
	case JV_KIND_NUMBER: {
		long i;
		*out = jsonl_number_exact(v, &i) ? jd_int(i) : jd_number(jv_number_value(v), jsonl_number_is_float(v));
		return 0;
	}
	case JV_KIND_STRING:
		*out = jd_string(a, jv_string_value(v), (size_t)jv_string_length_bytes(jv_copy(v)));
		return out->kind == JD_STRING ? 0 : -1;
	case JV_KIND_ARRAY: {
		uint32_t n = (uint32_t)jv_array_length(jv_copy(v));
		struct jd *items = n ? jd_alloc(a, n * sizeof *items) : NULL;
		if (n && !items)
			return -1;
		for (uint32_t i = 0; i < n; i++) {
			jv x = jv_array_get(jv_copy(v), (int)i);
			int rc = jsonl_jd_of(x, a, &items[i]);
			jv_free(x);
			if (rc < 0)
				return -1;
		}
		*out = (struct jd){.kind = JD_ARRAY, .n = n, .u.items = items};
		return 0;
	}
	case JV_KIND_OBJECT: {
		uint32_t n = (uint32_t)jv_object_length(jv_copy(v)), k = 0;
		struct jd_member *m = n ? jd_alloc(a, n * sizeof *m) : NULL;
		if (n && !m)
			return -1;
		/* jv's iteration order is insertion order, which is the document's */
		for (int it = jv_object_iter(v); k < n && jv_object_iter_valid(v, it); it = jv_object_iter_next(v, it), k++) {
			jv key = jv_object_iter_key(v, it), x = jv_object_iter_value(v, it);
			int rc = jsonl_jd_of(key, a, &m[k].key) < 0 || jsonl_jd_of(x, a, &m[k].val) < 0 ? -1 : 0;
			jv_free(key), jv_free(x);
			if (rc < 0)
				return -1;
		}
		*out = (struct jd){.kind = JD_OBJECT, .n = k, .u.members = m};
		return 0;
	}
	default: *out = jd_null(); return 0;
	}
}

struct jsonl_block {
	int refs;
	size_t cap;
	char *map; /* a mapped file's bytes (cap of them), unmapped at the end; else data */
	size_t released; /* of the map, the bytes from its start unmapped already (jsonl_mapped_done): the
			  * end unmaps only the rest, as others' mappings may lie where those were */
	char data[];
};

struct jsonl_block *jsonl_line_block(const struct jsonl_reader *r) { return r->blk; }

struct jsonl_block *jsonl_block_ref(struct jsonl_block *b)
{
	b->refs++;
	return b;
}

void jsonl_block_release(struct jsonl_block *b)
{
	if (b && --b->refs == 0) {
		if (b->map && b->cap > b->released)
			munmap(b->map + b->released, b->cap - b->released);
		free(b);
	}
}

struct jsonl_reader *jsonl_open_mapped(const char *path, struct err *err)
{
	int std = !path || !strcmp(path, "-");
	const char *name = std ? "<stdin>" : path;
	int fd = std ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	/* standard input from its offset (a script may have read lines of it
	 * before), mapped from the page that holds it */
	off_t at = std ? lseek(fd, 0, SEEK_CUR) : 0;
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || at < 0 || st.st_size <= at ||
	    (uintmax_t)st.st_size > SIZE_MAX / 2) { /* not a file to map: read, errors worded as jsonl_open's */
		if (fd >= 0 && !std)
			close(fd);
		return jsonl_open(path, err);
	}
	off_t base = at - at % sysconf(_SC_PAGESIZE);
	size_t size = (size_t)(st.st_size - base), skip = (size_t)(at - base);
	char *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, base);
	if (!std)
		close(fd);
	if (map == MAP_FAILED)
		return jsonl_open(path, err);
	if (std) /* read to its end, as a reader would leave it */
		lseek(fd, st.st_size, SEEK_SET);
	madvise(map, size, MADV_SEQUENTIAL);
	struct jsonl_reader *r = jsonl_from_file(NULL, name);
	struct jsonl_block *b = r ? malloc(sizeof *b) : NULL;
	if (!b) {
		munmap(map, size);
		free(r ? r->name : NULL), free(r);
		err_sys(err, "%s: out of memory", name);
		return NULL;
	}
	*b = (struct jsonl_block){.refs = 1, .cap = size, .map = map};
	r->blk = b, r->buf = map + skip, r->cap = r->end = size - skip, r->eof = 1, r->mapped = 1;
	return r;
}

/* Reads more into r->buf, keeping [beg, end) at its front: 1, 0 at the
 * end of the input, -1 on a read error. A file's reads go straight into
 * buf (one copy, where getline made three). A block a caller still holds
 * lines of is left to it: the unfinished line moves to a new one. */
static int read_more(struct jsonl_reader *r)
{
	size_t keep = r->end - r->beg;
	int lent = r->blk && r->blk->refs > 1;
	if (r->beg && !lent)
		memmove(r->buf, r->buf + r->beg, keep);
	if (lent || r->cap - keep < READ_BUFFER + 1) { /* + 1: the NUL after a last line without a newline */
		size_t cap = r->cap ? r->cap : 2 * (size_t)READ_BUFFER;
		while (cap - keep < READ_BUFFER + 1)
			cap *= 2;
		struct jsonl_block *b = NULL;
		for (int k = 0; lent && !b && k < r->nlent; k++)
			if (r->lent[k]->refs == 1 && r->lent[k]->cap >= cap) { /* no line of it is held now */
				b = r->lent[k];
				r->lent[k] = r->lent[--r->nlent];
				cap = b->cap;
			}
		if (!b)
			b = lent ? malloc(sizeof *b + cap) : realloc(r->blk, sizeof *b + cap);
		if (!b) {
			errno = ENOMEM;
			return -1;
		}
		if (lent) {
			memcpy(b->data, r->buf + r->beg, keep);
			if (r->nlent < KEPT_BLOCKS) /* its reference kept, to read into once it is given back */
				r->lent[r->nlent++] = r->blk;
			else
				jsonl_block_release(r->blk);
		}
		if (lent || !r->blk)
			b->refs = 1;
		b->cap = cap, b->map = NULL;
		r->blk = b, r->buf = b->data, r->cap = cap;
	}
	r->beg = 0, r->end = keep;
	size_t n = fread(r->buf + r->end, 1, r->cap - r->end - 1, r->f);
	r->end += n;
	if (n)
		return 1;
	return ferror(r->f) ? -1 : 0;
}

/* A line of n bytes (its '\n' included, if any) as it is handed out: its
 * ending (LF or CRLF) taken off, and on the first line a byte-order mark
 * some editors put at the top of a file. 0 when what is left is blank
 * (blank lines separate nothing but are common at the end). */
static int line_trim(const char **line, size_t *n, int first)
{
	const char *s = *line;
	size_t len = *n;
	if (len && s[len - 1] == '\n')
		len--;
	if (len && s[len - 1] == '\r') /* files written on Windows */
		len--;
	if (first && len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
		s += 3, len -= 3;
	size_t k = 0;
	while (k < len && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r'))
		k++;
	*line = s, *n = len;
	return k < len;
}

int jsonl_next_line(struct jsonl_reader *r, const char **out, size_t *outlen, struct err *err)
{
	for (;;) {
		char *nl = r->end > r->beg ? memchr(r->buf + r->beg, '\n', r->end - r->beg) : NULL;
		if (!nl && !r->eof) {
			errno = 0;
			int rc = read_more(r);
			if (rc < 0) {
				r->recline = r->lineno + 1;
				return err_sys(err, "%s:%ld: read error:", r->name, r->recline);
			}
			r->eof = rc == 0;
			continue;
		}
		if (!nl && r->beg == r->end)
			return 0;
		const char *line = r->buf + r->beg;
		size_t n = nl ? (size_t)(nl - line) + 1 : r->end - r->beg;
		r->beg += n;
		r->lineno++;
		r->recline = r->lineno;
		if (!line_trim(&line, &n, r->lineno == 1))
			continue;
		if (!r->mapped)
			((char *)line)[n] = '\0'; /* where its ending was, or the room read_more leaves */
		*out = line;
		*outlen = n;
		return 1;
	}
}

int jsonl_mapped(const struct jsonl_reader *r, const char **s, size_t *n)
{
	if (!r->mapped)
		return 0;
	*s = r->buf, *n = r->end;
	return 1;
}

void jsonl_mapped_done(struct jsonl_reader *r, size_t upto)
{
	if (!r->mapped)
		return;
	size_t page = (size_t)sysconf(_SC_PAGESIZE), base = (size_t)(r->buf - r->blk->map); /* r->buf: past the skip */
	size_t lo = r->blk->released, hi = (base + (upto < r->end ? upto : r->end)) / page * page;
	if (hi > lo && hi - lo >= (4 << 20)) {
		munmap(r->blk->map + lo, hi - lo);
		r->blk->released = hi;
	}
}

enum { LINES_AHEAD = 4096 };

void jsonl_lines_start(struct jsonl_lines *g, const char *s, size_t n, size_t from, size_t to)
{
	g->s = s, g->n = n, g->to = to < n ? to : n, g->lineno = 0;
	g->at = g->ahead = from;
	if (from > 0 && from < g->to) { /* the first line that starts at or after from */
		const char *nl = memchr(s + from - 1, '\n', g->to - from + 1);
		g->at = nl ? (size_t)(nl - s) + 1 : g->to;
	}
}

int jsonl_lines_next(struct jsonl_lines *g, const char **out, size_t *outlen)
{
	while (g->at < g->to) {
		const char *line = g->s + g->at;
		const char *nl = memchr(line, '\n', g->n - g->at);
		size_t n = nl ? (size_t)(nl - line) + 1 : g->n - g->at;
		int first = g->at == 0;
		g->at += n;
		g->lineno++;
		/* The next lines asked of memory while this one is formatted: the
		 * search for their ends is what first reads them. */
		for (size_t end = g->at + LINES_AHEAD < g->n ? g->at + LINES_AHEAD : g->n; g->ahead < end; g->ahead += 64)
			__builtin_prefetch(g->s + g->ahead);
		if (line_trim(&line, &n, first)) {
			*out = line, *outlen = n;
			return 1;
		}
	}
	return 0;
}

int jsonl_next(struct jsonl_reader *r, jv *out, struct err *err)
{
	const char *line;
	size_t len;
	int rc = jsonl_next_line(r, &line, &len, err);
	return rc <= 0 ? rc : jsonl_parse_record(r->name, r->recline, line, len, out, err);
}

/* The writer: a record is serialized straight into a reused buffer, the same
 * bytes jq 1.6's jv_dump_string(v, 0) gives (compact, keys in their order,
 * UTF-8 kept rather than \u escapes, so byte offsets into text stay
 * meaningful; numbers read as floats keep a fraction) at several times its
 * speed, as it builds no jv strings. */
/* After a failure every put does nothing, and the block keeps what it held
 * before: the caller reports it and drops the line it was writing. */
int jsonl_reserve(struct jsonl_buf *b, size_t more)
{
	if (b->oom)
		return -1;
	if (b->n + more <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 1 << 16;
	while (cap < b->n + more)
		cap *= 2;
	char *p = realloc(b->p, cap);
	if (!p) {
		b->oom = 1;
		return -1;
	}
	b->p = p, b->cap = cap;
	return 0;
}

void jsonl_put_grow(struct jsonl_buf *b, const char *s, size_t n)
{
	if (n == 0 || jsonl_reserve(b, n) < 0) /* n 0: b->p may still be NULL */
		return;
	memcpy(b->p + b->n, s, n);
	b->n += n;
}

/* jq's string escaping: " and \\ escaped, \\b \\t \\r \\n \\f, other controls
 * and DEL as \\u00xx; everything else (UTF-8, valid in a jv string) as it is.
 * Written in blocks, each with room for its worst case (six bytes a byte). */
/* Copies s[0..n) to o up to the first byte jq escapes (or all of it) and
 * returns how many bytes that is; o has room for n bytes. Eight bytes at a
 * time, then one: what jsonl_put_string's 16-byte windows leave, or all of
 * it where SSE2 is not. */
static size_t copy_plain(char *o, const char *s, size_t n)
{
	size_t k = 0;
#if WORDS_LE
	for (; k + 8 <= n; k += 8) {
		uint64_t w;
		memcpy(&w, s + k, 8);
		memcpy(o + k, &w, 8);
		uint64_t m = word_special(w);
		if (m)
			return k + ((size_t)__builtin_ctzll(m) >> 3);
	}
#endif
	for (; k < n; k++) {
		unsigned char c = (unsigned char)s[k];
		if (c < 0x20 || c == '"' || c == '\\' || c == 0x7f)
			break;
		o[k] = (char)c;
	}
	return k;
}

/* Writes the escape of c, a byte jq escapes, at o; returns the end. */
static char *put_escape(char *o, unsigned char c)
{
	static const char hex[] = "0123456789abcdef";
	*o++ = '\\';
	switch (c) {
	case '"': *o++ = '"'; break;
	case '\\': *o++ = '\\'; break;
	case '\b': *o++ = 'b'; break;
	case '\t': *o++ = 't'; break;
	case '\r': *o++ = 'r'; break;
	case '\n': *o++ = 'n'; break;
	case '\f': *o++ = 'f'; break;
	default: *o++ = 'u', *o++ = '0', *o++ = '0', *o++ = hex[c >> 4], *o++ = hex[c & 15];
	}
	return o;
}

void jsonl_put_string(struct jsonl_buf *b, const char *s, size_t n)
{
	jsonl_put(b, "\"", 1);
	jsonl_put_escaped(b, s, n);
	jsonl_put(b, "\"", 1);
}

void jsonl_put_escaped(struct jsonl_buf *b, const char *s, size_t n)
{
	enum { BLOCK = 4096 };
	for (size_t i = 0; i < n;) {
		size_t end = n - i > BLOCK ? i + BLOCK : n;
		if (jsonl_reserve(b, 6 * (end - i) + 16) < 0) /* 16: a window stored whole past what it adds */
			return;
		char *o = b->p + b->n;
#if defined(__SSE2__)
		/* Sixteen bytes a window; the escapes in one are written in turn
		 * from the bytes between them, without going back to the search:
		 * JSON inside a text has a quote every few bytes. */
		const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'), del = _mm_set1_epi8(0x7f),
			      ctl = _mm_set1_epi8(0x1f);
		for (; i + 16 <= end; i += 16) {
			__m128i x = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
			_mm_storeu_si128((__m128i *)(void *)o, x);
			__m128i sp = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)),
						  _mm_or_si128(_mm_cmpeq_epi8(x, del), _mm_cmpeq_epi8(_mm_min_epu8(x, ctl), x)));
			unsigned m = (unsigned)_mm_movemask_epi8(sp);
			if (!m) {
				o += 16;
				continue;
			}
			unsigned from = 0; /* the window's bytes before from are written */
			for (;;) {
				unsigned j = m ? (unsigned)__builtin_ctz(m) : 16;
				if (from) { /* the plain bytes [from, j): sixteen at once where s has them */
					if (n - (i + from) >= 16)
						_mm_storeu_si128((__m128i *)(void *)o,
								 _mm_loadu_si128((const __m128i *)(const void *)(s + i + from)));
					else
						memcpy(o, s + i + from, j - from);
				}
				o += j - from;
				if (j == 16)
					break;
				o = put_escape(o, (unsigned char)s[i + j]);
				from = j + 1;
				m &= m - 1;
			}
		}
#endif
		while (i < end) {
			size_t k = copy_plain(o, s + i, end - i);
			o += k, i += k;
			if (i == end)
				break;
			o = put_escape(o, (unsigned char)s[i++]);
		}
		b->n = (size_t)(o - b->p);
	}
}

/* x in decimal at q (20 bytes at most): past its last digit. Two digits a
 * step from a table (snprintf costs ~700 instructions a number, and a span
 * list is most of a short record's numbers). */
static char *put_digits(char *q, long x)
{
	static const char pairs[] = "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
				    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
				    "8081828384858687888990919293949596979899";
	unsigned long u = x < 0 ? 0ul - (unsigned long)x : (unsigned long)x;
	if (x < 0)
		*q++ = '-';
	int len = 1;
	for (unsigned long t = u; t >= 10; t /= 10)
		len++;
	char *e = q + len;
	for (q = e; u >= 100; u /= 100) {
		unsigned k = (unsigned)(u % 100) * 2;
		*--q = pairs[k + 1], *--q = pairs[k];
	}
	if (u >= 10)
		*--q = pairs[2 * u + 1], *--q = pairs[2 * u];
	else
		*--q = (char)('0' + u);
	return e;
}

void jsonl_put_long(struct jsonl_buf *b, long x)
{
	if (jsonl_reserve(b, 20) == 0)
		b->n = (size_t)(put_digits(b->p + b->n, x) - b->p);
}

void jsonl_put_pairs(struct jsonl_buf *b, const long *v, size_t npairs)
{
	if (npairs > (SIZE_MAX - 2) / 44 || jsonl_reserve(b, 2 + 44 * npairs) < 0)
		return;
	char *q = b->p + b->n;
	*q++ = '[';
	for (size_t k = 0; k < npairs; k++) {
		if (k)
			*q++ = ',';
		*q++ = '[';
		q = put_digits(q, v[2 * k]);
		*q++ = ',';
		q = put_digits(q, v[2 * k + 1]);
		*q++ = ']';
	}
	*q++ = ']';
	b->n = (size_t)(q - b->p);
}

/* A number as jq prints it, except that one read as a float stays one
 * ("100.0", where jq writes 100). */
static void put_number(struct jsonl_buf *b, double d, int is_float)
{
	/* span offsets and ids: plain digits, as jq prints them (not -0) */
	if (!is_float && d > -1e9 && d < 1e9 && d == (double)(long)d && !(d == 0 && signbit(d))) {
		jsonl_put_long(b, (long)d);
		return;
	}
	jv s = jv_dump_string(jv_number(d), 0);
	const char *t = jv_string_value(s);
	jsonl_put(b, t, strlen(t));
	if (is_float && isfinite(d) && !strpbrk(t, ".eE"))
		jsonl_put(b, ".0", 2);
	jv_free(s);
}

/* Consumes v. */
void jsonl_put_value(struct jsonl_buf *b, jv v)
{
	switch (jv_get_kind(v)) {
	case JV_KIND_STRING:
		jsonl_put_string(b, jv_string_value(v), (size_t)jv_string_length_bytes(jv_copy(v)));
		break;
	case JV_KIND_ARRAY:
		jsonl_put(b, "[", 1);
		jv_array_foreach(v, i, x) {
			if (i)
				jsonl_put(b, ",", 1);
			jsonl_put_value(b, x);
		}
		jsonl_put(b, "]", 1);
		break;
	case JV_KIND_OBJECT: {
		int first = 1;
		jsonl_put(b, "{", 1);
		jv_object_foreach(v, k, x) {
			if (!first)
				jsonl_put(b, ",", 1);
			first = 0;
			jsonl_put_string(b, jv_string_value(k), (size_t)jv_string_length_bytes(jv_copy(k)));
			jsonl_put(b, ":", 1);
			jsonl_put_value(b, x);
			jv_free(k);
		}
		jsonl_put(b, "}", 1);
		break;
	}
	case JV_KIND_NULL: jsonl_put(b, "null", 4); break;
	case JV_KIND_TRUE: jsonl_put(b, "true", 4); break;
	case JV_KIND_FALSE: jsonl_put(b, "false", 5); break;
	case JV_KIND_NUMBER: {
		long i;
		if (jsonl_number_exact(v, &i))
			jsonl_put_long(b, i);
		else
			put_number(b, jv_number_value(v), jsonl_number_is_float(v));
		break;
	}
	default: { /* invalid: what jq writes for it */
		jv s = jv_dump_string(jv_copy(v), 0);
		jsonl_put(b, jv_string_value(s), strlen(jv_string_value(s)));
		jv_free(s);
	}
	}
	jv_free(v);
}

void jsonl_put_jd(struct jsonl_buf *b, const struct jd *d)
{
	switch (d->kind) {
	case JD_STRING: jsonl_put_string(b, d->u.s, d->n); break;
	case JD_ARRAY:
		jsonl_put(b, "[", 1);
		for (uint32_t i = 0; i < d->n; i++) {
			if (i)
				jsonl_put(b, ",", 1);
			jsonl_put_jd(b, &d->u.items[i]);
		}
		jsonl_put(b, "]", 1);
		break;
	case JD_OBJECT:
		jsonl_put(b, "{", 1);
		for (uint32_t i = 0; i < d->n; i++) {
			if (i)
				jsonl_put(b, ",", 1);
			jsonl_put_string(b, d->u.members[i].key.u.s, d->u.members[i].key.n);
			jsonl_put(b, ":", 1);
			jsonl_put_jd(b, &d->u.members[i].val);
		}
		jsonl_put(b, "}", 1);
		break;
	case JD_NULL: jsonl_put(b, "null", 4); break;
	case JD_TRUE: jsonl_put(b, "true", 4); break;
	case JD_FALSE: jsonl_put(b, "false", 5); break;
	default:
		if (d->exact)
			jsonl_put_long(b, d->u.i);
		else
			put_number(b, d->u.num, d->is_float);
	}
}

jv jsonl_parse_value(const char *s, size_t n)
{
	if (n > INT_MAX)
		return jv_invalid_with_msg(jv_string_fmt("more than %d bytes", INT_MAX));
	const char *why;
	long at;
	struct jd_arena a = {0};
	struct jd d;
	jv v;
	if (parse_text(s, n, NULL, &a, &d, &why, &at, &v))
		v = jsonl_jv_of(&d);
	else if (at >= 0)
		v = jv_invalid_with_msg(jv_string_fmt("%s at byte %ld", why, at));
	else if (jv_is_valid(v)) /* its numbers as written, as the direct parser's */
		v = jd_of_jq(s, n, v, &a, &d) == 0 ? jsonl_jv_of(&d) : jv_invalid_with_msg(jv_string("out of memory"));
	jd_arena_free(&a);
	return v;
}

int jsonl_parse_jd(const char *s, size_t n, struct jd_arena *a, struct jd *out, struct err *err)
{
	if (n > INT_MAX)
		return err_set(err, "more than %d bytes", INT_MAX);
	const char *why;
	long at;
	jv v;
	if (parse_text(s, n, NULL, a, out, &why, &at, &v))
		return 0;
	if (at >= 0)
		return err_set(err, "%s at byte %ld", why, at);
	if (!jv_is_valid(v)) {
		jv msg = jv_invalid_get_msg(v);
		err_set(err, "%s", jv_get_kind(msg) == JV_KIND_STRING ? jv_string_value(msg) : "parse error");
		jv_free(msg);
		return -1;
	}
	return jd_of_jq(s, n, v, a, out) < 0 ? err_sys(err, "out of memory") : 0;
}

int jsonl_parse(const char *s, size_t n, const char *name, jv *out, struct err *err)
{
	jv v = jsonl_parse_value(s, n);
	if (!jv_is_valid(v)) {
		jv msg = jv_invalid_get_msg(v);
		err_set(err, "%s: bad JSON: %s", name,
			jv_get_kind(msg) == JV_KIND_STRING ? jv_string_value(msg) : "parse error");
		jv_free(msg);
		return -1;
	}
	*out = v;
	return 0;
}

int jsonl_load(const char *path, size_t max, jv *out, struct err *err)
{
	return jsonl_load_text(path, max, out, NULL, NULL, err);
}

int jsonl_load_text(const char *path, size_t max, jv *out, char **text, size_t *len, struct err *err)
{
	if (text)
		*text = NULL;
	if (!max)
		max = (size_t)1 << 30;
	size_t n;
	char *buf = wholefile_read(path, max, &n, err);
	if (!buf)
		return -1;
	int rc = jsonl_parse(buf, n, path, out, err);
	if (rc == 0 && text)
		*text = buf, *len = n;
	else
		free(buf);
	return rc;
}

int jsonl_format(jv v, char **buf, size_t *len, size_t *cap, struct err *err)
{
	if (!jv_is_valid(v)) {
		jv_free(v);
		return err_set(err, "cannot write an invalid JSON value");
	}
	struct jsonl_buf b = {*buf, *len, *cap, 0};
	jsonl_put_value(&b, v);
	jsonl_put(&b, "\n", 1);
	*buf = b.p, *cap = b.cap;
	if (b.oom)
		return err_sys(err, "out of memory");
	*len = b.n;
	return 0;
}

jv jsonl_text(jv v)
{
	struct jsonl_buf b = {0};
	jsonl_put_value(&b, v);
	jv s = b.oom ? jv_invalid() : jv_string_sized(b.p ? b.p : "", (int)b.n);
	free(b.p);
	return s;
}

int jsonl_write(FILE *f, jv v, struct err *err)
{
	static _Thread_local char *buf;
	static _Thread_local size_t cap;
	size_t len = 0;
	if (jsonl_format(v, &buf, &len, &cap, err) < 0)
		return -1;
	if (fwrite(buf, 1, len, f) != len)
		return err_sys(err, "write error:");
	return 0;
}

/* ---- finding a value in a JSON text without parsing the rest ---- */

static int is_json_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* The length of the JSON string s[0..n) begins with ('"' first) up to and
 * including its closing quote, or 0 when it does not end. */
static size_t scan_string(const char *s, size_t n)
{
	for (size_t i = 1; i < n;) {
		const char *q = memchr(s + i, '"', n - i);
		if (!q)
			return 0;
		size_t k = (size_t)(q - s), bs = 0;
		while (s[k - 1 - bs] == '\\')
			bs++;
		if (bs % 2 == 0)
			return k + 1;
		i = k + 1;
	}
	return 0;
}

/* The length of the JSON value s[0..n) begins with, its syntax checked only
 * as far as finding its end takes, or 0. Inside a container only quotes and
 * brackets matter: the scan jumps from one to the next (a tokenizer.json is
 * megabytes of vocabulary and merges to pass over). */
static size_t scan_value(const char *s, size_t n)
{
	static const unsigned char structural[256] = {['"'] = 1, ['{'] = 1, ['}'] = 1, ['['] = 1, [']'] = 1};
	if (n == 0 || s[0] == '}' || s[0] == ']')
		return 0;
	if (s[0] != '"' && s[0] != '{' && s[0] != '[') { /* a number, true, false or null */
		if (!strchr("-0123456789tfn", s[0]) || !s[0])
			return 0;
		size_t i = 1;
		while (i < n && !is_json_space(s[i]) && s[i] != ',' && s[i] != ':' && s[i] != ']' && s[i] != '}' && s[i])
			i++;
		return i;
	}
	size_t depth = 0, i = 0;
	for (;;) {
		while (i < n && !structural[(unsigned char)s[i]])
			i++;
		if (i >= n)
			return 0;
		if (s[i] == '"') {
			size_t k = scan_string(s + i, n - i);
			if (!k)
				return 0;
			i += k;
		} else if (s[i] == '{' || s[i] == '[') {
			depth++, i++;
		} else if (depth-- == 0) {
			return 0;
		} else {
			i++;
		}
		if (depth == 0)
			return i;
	}
}

size_t jsonl_value_len(const char *s, size_t n) { return scan_value(s, n); }

static size_t scan_ws(const char *s, size_t n, size_t i)
{
	while (i < n && is_json_space(s[i]))
		i++;
	return i;
}

/* Whether the JSON string text s[0..k) (quotes included) is key[0..kn). */
static int key_is(const char *s, size_t k, const char *key, size_t kn)
{
	if (!memchr(s, '\\', k))
		return k == kn + 2 && !memcmp(s + 1, key, kn);
	jv v; /* an escaped key: ask jq what it says */
	struct err e = {0};
	if (jsonl_parse(s, k, "key", &v, &e) < 0)
		return 0;
	int is = jv_get_kind(v) == JV_KIND_STRING && (size_t)jv_string_length_bytes(jv_copy(v)) == kn &&
		 !memcmp(jv_string_value(v), key, kn);
	jv_free(v);
	return is;
}

/* The first place in [p, to) that may hold the key: its rarest byte c
 * between its neighbours b and a (a 33 MB tokenizer.json holds thousands of
 * '_' but one "d_t"), or a backslash before a 'u'; NULL when there is none.
 * The bytes from lo to end are read, one past each side of [p, to). */
#ifdef HAVE_AVX2_PATH
__attribute__((target("avx2"))) static const char *key_hit_avx2(const char *p, const char *to, const char *end, char b,
								 char c, char a)
{
	const __m256i vb = _mm256_set1_epi8(b), vc = _mm256_set1_epi8(c), va = _mm256_set1_epi8(a),
		      bs = _mm256_set1_epi8('\\'), u = _mm256_set1_epi8('u');
	for (; to - p >= 32 && end - p >= 33; p += 32) {
		__m256i x = _mm256_loadu_si256((const __m256i *)(const void *)p);
		__m256i vcx = _mm256_cmpeq_epi8(x, vc), bsx = _mm256_cmpeq_epi8(x, bs);
		if (_mm256_testz_si256(_mm256_or_si256(vcx, bsx), _mm256_or_si256(vcx, bsx)))
			continue; /* the usual block: neither byte; else the neighbours are looked at */
		__m256i before = _mm256_loadu_si256((const __m256i *)(const void *)(p - 1));
		__m256i after = _mm256_loadu_si256((const __m256i *)(const void *)(p + 1));
		__m256i key = _mm256_and_si256(_mm256_and_si256(vcx, _mm256_cmpeq_epi8(before, vb)), _mm256_cmpeq_epi8(after, va));
		__m256i esc = _mm256_and_si256(bsx, _mm256_cmpeq_epi8(after, u));
		unsigned m = (unsigned)_mm256_movemask_epi8(_mm256_or_si256(key, esc));
		if (m)
			return p + __builtin_ctz(m);
	}
	return p;
}
#endif

static const char *key_hit(const char *lo, const char *p, const char *to, const char *end, char b, char c, char a)
{
	if (p == lo && p < to) { /* nothing before it: an escape only */
		if (*p == '\\' && end - p >= 2 && p[1] == 'u')
			return p;
		p++;
	}
#ifdef HAVE_AVX2_PATH
	if (have_avx2()) {
		p = key_hit_avx2(p, to, end, b, c, a);
		if (to - p >= 32 && end - p >= 33)
			return p;
	}
#endif
#if defined(__SSE2__)
	const __m128i vb = _mm_set1_epi8(b), vc = _mm_set1_epi8(c), va = _mm_set1_epi8(a), bs = _mm_set1_epi8('\\'),
		      u = _mm_set1_epi8('u');
	for (; to - p >= 16 && end - p >= 17; p += 16) {
		__m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
		__m128i before = _mm_loadu_si128((const __m128i *)(const void *)(p - 1));
		__m128i after = _mm_loadu_si128((const __m128i *)(const void *)(p + 1));
		__m128i key = _mm_and_si128(_mm_and_si128(_mm_cmpeq_epi8(x, vc), _mm_cmpeq_epi8(before, vb)),
					    _mm_cmpeq_epi8(after, va));
		__m128i esc = _mm_and_si128(_mm_cmpeq_epi8(x, bs), _mm_cmpeq_epi8(after, u));
		unsigned m = (unsigned)_mm_movemask_epi8(_mm_or_si128(key, esc));
		if (m)
			return p + __builtin_ctz(m);
	}
#endif
	for (; p < to; p++) {
		int next = end - p >= 2;
		if ((*p == c && p[-1] == b && next && p[1] == a) || (*p == '\\' && next && p[1] == 'u'))
			return p;
	}
	return NULL;
}

/* Whether the \\u escape at q (a backslash, then 'u') may stand for a
 * character of key[0..kn): it is cut short, not hex, or of one of them. */
static int escape_may_name(const char *q, const char *end, const char *key, size_t kn)
{
	unsigned u;
	return end - q < 6 || jsonl_hex4(q + 2, &u) < 0 || (u < 0x80 && memchr(key, (int)u, kn));
}

/* key_may_recur's pass over the text from..to of s..end (the bytes past to
 * read where a key or an escape begun before it runs on): the quoted key
 * q[0..qn), found by its rare byte q[r] and that byte's neighbours, or a
 * \\u escape that may stand for one of key's characters. A backslash
 * begins an escape when an even run of them comes before it. */
static int recur_scan(const char *s, const char *from, const char *to, const char *end, const char *q, size_t qn,
		      size_t r, const char *key, size_t kn)
{
	for (const char *p = from; (p = key_hit(s, p, to, end, q[r - 1], q[r], q[r + 1])) != NULL; p++) {
		if (*p != '\\') { /* the rare byte: the key around it? */
			if ((size_t)(p - s) >= r && (size_t)(end - p) >= qn - r && !memcmp(p - r, q, qn))
				return 1;
			continue;
		}
		size_t run = 0;
		while (p - run > s && p[-1 - (long)run] == '\\')
			run++;
		if (run % 2 == 0 && escape_may_name(p, end, key, kn))
			return 1;
	}
	return 0;
}

/* A text of megabytes (a tokenizer.json past its added_tokens) is scanned
 * in parts at once, one per CPU the process may use and of RECUR_PART
 * bytes at least: start-up waits on it, and the other cores idle. */
enum { RECUR_PART = 2 << 20, RECUR_PARTS = 16 };

static int recur_parts_fixed; /* 0: by size and CPUs */

int jsonl_recur_parts(int parts)
{
	int was = recur_parts_fixed;
	recur_parts_fixed = parts < 0 ? 0 : parts > RECUR_PARTS ? RECUR_PARTS : parts;
	return was;
}

struct recur_part {
	const char *s, *from, *to, *end, *q, *key;
	size_t qn, r, kn;
	int found, running;
	pthread_t th;
};

static void *recur_part_main(void *arg)
{
	struct recur_part *p = arg;
	p->found = recur_scan(p->s, p->from, p->to, p->end, p->q, p->qn, p->r, p->key, p->kn);
	return NULL;
}

/* recur_scan of s..end, its parts after the first on threads of their own
 * (a part whose thread cannot start is scanned here). */
static int recur_in_parts(const char *s, const char *end, const char *q, size_t qn, size_t r, const char *key,
			  size_t kn)
{
	size_t n = (size_t)(end - s), k = n / RECUR_PART, cpus = (size_t)msg_cpus();
	if (k > cpus)
		k = cpus;
	if (k > RECUR_PARTS)
		k = RECUR_PARTS;
	if (recur_parts_fixed)
		k = (size_t)recur_parts_fixed;
	if (k < 2)
		return recur_scan(s, s, end, end, q, qn, r, key, kn);
	struct recur_part part[RECUR_PARTS];
	for (size_t i = 0; i < k; i++) {
		part[i] = (struct recur_part){s, s + n * i / k, s + n * (i + 1) / k, end, q, key, qn, r, kn, 0, 0};
		if (i > 0)
			part[i].running = msg_thread_start(&part[i].th, recur_part_main, &part[i]) == 0;
	}
	int found = 0;
	for (size_t i = 0; i < k; i++) {
		if (part[i].running)
			pthread_join(part[i].th, NULL);
		else
			recur_part_main(&part[i]);
		found |= part[i].found;
	}
	return found;
}

/* Whether the JSON text s[0..n) may name the key key[0..kn) again: it holds
 * "key" written plainly, or a \\u escape of one of its characters, the
 * only escape that can stand for a letter, a digit or most punctuation. A
 * key with a quote, a backslash, a slash, a control byte or a byte past
 * ASCII may be written in more ways, and may always recur. One pass over
 * the text (megabytes of a tokenizer.json after its added_tokens) for its
 * \u escapes and for the key's byte rarest in JSON text (rarer than
 * lowercase letters, quotes and spaces: "added_tokens"' '_') between its
 * neighbours (recur_scan); memmem for a key without one. */
static int key_may_recur(const char *s, size_t n, const char *key, size_t kn)
{
	for (size_t k = 0; k < kn; k++) {
		unsigned char c = (unsigned char)key[k];
		if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '/')
			return 1;
	}
	char q[258];
	size_t qn = kn + 2, r = 0;
	if (qn > sizeof q)
		return 1;
	q[0] = '"', memcpy(q + 1, key, kn), q[kn + 1] = '"';
	while (r < qn && ((q[r] >= 'a' && q[r] <= 'z') || q[r] == '"' || q[r] == ' '))
		r++;
	const char *end = s + n;
	if (r == qn) { /* no rare byte: the key, then the backslashes */
		if (memmem(s, n, q, qn))
			return 1;
		for (const char *p = s; (p = memchr(p, '\\', (size_t)(end - p))) != NULL && end - p >= 2; p += 2)
			if (p[1] == 'u' && escape_may_name(p, end, key, kn))
				return 1;
		return 0;
	}
	return recur_in_parts(s, end, q, qn, r, key, kn);
}

/* In the container at s[*i] ('{' or '['): the value of the last member named
 * key (an object) or element number idx (an array; key NULL) into [*a, *b).
 * Returns 1, 0 when there is none, -1 when the scan finds no valid container. */
static int scan_in(const char *s, size_t n, size_t i, const char *key, size_t kn, long idx, int start, size_t *a,
		   size_t *b, size_t *end)
{
	int obj = s[i] == '{', found = 0;
	if ((key != NULL) != obj)
		return 0;
	i = scan_ws(s, n, i + 1);
	if (i < n && s[i] == (obj ? '}' : ']')) {
		*end = i + 1;
		return 0;
	}
	for (long at = 0;; at++) {
		int hit = !obj && at == idx;
		if (obj) {
			size_t k = i < n && s[i] == '"' ? scan_string(s + i, n - i) : 0;
			if (!k)
				return -1;
			hit = key_is(s + i, k, key, kn);
			i = scan_ws(s, n, i + k);
			if (i >= n || s[i] != ':')
				return -1;
			i = scan_ws(s, n, i + 1);
		}
		if (hit && start) { /* its start alone: the value not scanned */
			*a = *b = i, *end = 0;
			return 1;
		}
		size_t v = scan_value(s + i, n - i);
		if (!v)
			return -1;
		if (hit)
			*a = i, *b = i + v, found = 1;
		i = scan_ws(s, n, i + v);
		if (hit && i < n && (s[i] == ',' || s[i] == (obj ? '}' : ']')) &&
		    (!obj || !key_may_recur(s + i, n - i, key, kn))) {
			*end = 0; /* not scanned to its end */
			return 1;
		}
		if (i < n && s[i] == (obj ? '}' : ']')) {
			*end = i + 1;
			return found;
		}
		if (i >= n || s[i] != ',')
			return -1;
		i = scan_ws(s, n, i + 1);
	}
}

/* The next member of the object (obj) or element of the array at s[0..n):
 * jsonl_array_next and jsonl_object_next. */
static int container_next(const char *s, size_t n, int obj, size_t *at, size_t *ka, size_t *kb, size_t *a, size_t *b)
{
	char open = obj ? '{' : '[', close = obj ? '}' : ']';
	size_t i = scan_ws(s, n, *at);
	if (*at == 0) { /* the opening bracket */
		if (i >= n || s[i] != open)
			return -1;
		i = scan_ws(s, n, i + 1);
		if (i < n && s[i] == close)
			return *at = n, scan_ws(s, n, i + 1) == n ? 0 : -1;
	} else if (*at >= n) {
		return 0;
	}
	if (obj) {
		size_t k = i < n && s[i] == '"' ? scan_string(s + i, n - i) : 0;
		if (!k)
			return -1;
		*ka = i, *kb = i + k;
		i = scan_ws(s, n, i + k);
		if (i >= n || s[i] != ':')
			return -1;
		i = scan_ws(s, n, i + 1);
	}
	size_t v = i < n ? scan_value(s + i, n - i) : 0;
	if (!v)
		return -1;
	*a = i, *b = i + v;
	i = scan_ws(s, n, i + v);
	if (i < n && s[i] == ',')
		*at = i + 1;
	else if (i < n && s[i] == close && scan_ws(s, n, i + 1) == n)
		*at = n;
	else
		return -1;
	return 1;
}

int jsonl_array_next(const char *s, size_t n, size_t *at, size_t *a, size_t *b)
{
	return container_next(s, n, 0, at, NULL, NULL, a, b);
}

int jsonl_object_next(const char *s, size_t n, size_t *at, size_t *ka, size_t *kb, size_t *a, size_t *b)
{
	return container_next(s, n, 1, at, ka, kb, a, b);
}

int jsonl_key_is(const char *s, size_t n, const char *key) { return key_is(s, n, key, strlen(key)); }

int jsonl_key_may_recur(const char *s, size_t n, const char *key) { return key_may_recur(s, n, key, strlen(key)); }

/* jsonl_locate; start: where the last key's first member's value begins,
 * the value not scanned, the rest not searched for the key again. */
static int locate(const char *s, size_t n, const char *path, int start, size_t *a, size_t *b)
{
	size_t i = scan_ws(s, n, 0);
	if (!*path) { /* the whole text: one value, then only white space */
		size_t v = i < n ? scan_value(s + i, n - i) : 0;
		if (!v || scan_ws(s, n, i + v) != n)
			return -1;
		*a = i, *b = i + v;
		return 1;
	}
	*a = i, *b = n;
	int top = 1;
	const char *p = path;
	while (*p) {
		char key[256];
		size_t kn = 0;
		long idx = -1;
		if (*p == '.')
			p++;
		if (*p == '[') {
			char *e;
			idx = strtol(p + 1, &e, 10);
			if (e == p + 1 || *e != ']' || idx < 0)
				return 0;
			p = e + 1;
		} else if (*p == '"') {
			for (p++; *p && *p != '"' && kn < sizeof key; p++)
				key[kn++] = *p;
			if (*p++ != '"')
				return 0;
		} else {
			for (; *p && *p != '.' && *p != '[' && kn < sizeof key; p++)
				key[kn++] = *p;
			if (!kn || kn == sizeof key)
				return 0;
		}
		size_t na = 0, nb = 0, end = 0;
		if (*a >= n || (s[*a] != '{' && s[*a] != '[')) { /* a scalar names nothing inside */
			if (!top)
				return 0;
			size_t v = *a < n ? scan_value(s + *a, n - *a) : 0;
			return v && scan_ws(s, n, *a + v) == n ? 0 : -1;
		}
		int r = scan_in(s, n, *a, idx < 0 ? key : NULL, kn, idx, start && !*p, &na, &nb, &end);
		/* Only white space may follow the top-level value; where its scan
		 * stopped early, it must at least end in its closing bracket. */
		if (top && r >= 0 && end && scan_ws(s, n, end) != n)
			r = -1;
		if (top && r >= 0 && !end) {
			size_t z = n;
			while (z > 0 && is_json_space(s[z - 1]))
				z--;
			if (!(z > 0 && s[z - 1] == (s[*a] == '{' ? '}' : ']')))
				r = -1;
		}
		top = 0;
		if (r <= 0)
			return r;
		*a = na, *b = nb;
	}
	return 1;
}

int jsonl_locate(const char *s, size_t n, const char *path, size_t *a, size_t *b) { return locate(s, n, path, 0, a, b); }

int jsonl_locate_start(const char *s, size_t n, const char *key, size_t *a)
{
	size_t b;
	if (!*key || strpbrk(key, ".[\"") || strlen(key) >= 256) /* not a plain name: the whole search */
		return jsonl_locate(s, n, key, a, &b);
	return locate(s, n, key, 1, a, &b);
}

long jsonl_line_at(const char *s, size_t off)
{
	long line = 1;
	for (const char *q = s; (q = memchr(q, '\n', (size_t)(s + off - q))) != NULL; q++)
		line++;
	return line;
}

void jsonl_err_line(struct err *err, const char *file, const char *s, size_t n)
{
	size_t fl = strlen(file);
	if (strncmp(err->msg, file, fl) || strncmp(err->msg + fl, ": ", 2))
		return;
	const char *path = err->msg + fl + 2, *end = strstr(path, ": ");
	if (!end || end == path || end - path >= 512 || memchr(path, ' ', (size_t)(end - path)))
		return;
	char p[512];
	memcpy(p, path, (size_t)(end - path));
	p[end - path] = 0;
	/* the first part of the path must be there; the line is that of the deepest part found */
	size_t a, b;
	char first[512];
	size_t k = strcspn(p, ".[");
	memcpy(first, p, k);
	first[k] = 0;
	if (jsonl_locate(s, n, first, &a, &b) != 1)
		return;
	for (;;) {
		if (jsonl_locate(s, n, p, &a, &b) == 1)
			break;
		char *cut = p + strlen(p);
		while (cut > p && *cut != '.' && *cut != '[')
			cut--;
		*cut = 0;
	}
	char msg[sizeof err->msg];
	snprintf(msg, sizeof msg, "%s:%ld: %s", file, jsonl_line_at(s, a), path);
	snprintf(err->msg, sizeof err->msg, "%s", msg);
}
