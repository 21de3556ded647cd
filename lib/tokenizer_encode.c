/* tokenizer_encode: text -> ids with byte offsets, as Hugging Face tokenizers'
 * TokenizerImpl::encode does (added vocabulary, normalizer, pre-tokenizer,
 * model, post-processor), offsets included.
 *
 * Invalid UTF-8. The text is first made valid: each maximal invalid
 * subsequence (the lead byte and the continuation bytes that could still
 * have completed it, as Python's bytes.decode("utf-8", "replace") and Rust's
 * String::from_utf8_lossy cut them) becomes U+FFFD, and that U+FFFD maps back
 * to exactly those bytes. The ids are therefore those HF gives for the
 * replaced string, and the offsets point at the caller's original bytes.
 *
 * Offsets follow HF's NormalizedString alignments: every byte of the
 * normalized text maps to the original range of the character it came from,
 * and a token's range is the union of its first and last bytes' ranges. So a
 * token that holds only part of a character (a byte-level token taking one
 * byte of "é", or one <0xNN> byte-fallback token) gets the whole character's
 * bytes, as HF reports it (HF's Python char offsets, mapped to bytes, agree).
 * Where a normalizer moves characters (NFC composition, reordering of marks)
 * the alignments are computed with HF's transform rules (each output
 * character with a change of 0 / +1 / -N), so they match HF's, quirks
 * included.
 *
 * Regexes: HF compiles Split and Replace patterns with Oniguruma. PCRE2 (UTF,
 * UCP, JIT) gives the same matches for the patterns of the supported models
 * once \s and \S are rewritten to Oniguruma's set (Unicode White_Space; PCRE2's
 * own \s also takes U+180E) and \w, \W to Unicode's Word set (PCRE2's leaves
 * out marks). \d (Nd in both) and POSIX classes are left to PCRE2.
 */
#include "tokenizer_impl.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- UTF-8 ---- */

size_t tk_utf8_valid(const unsigned char *s, size_t n, size_t *bad)
{
	unsigned c = s[0];
	if (c < 0x80)
		return 1;
	size_t need;
	unsigned lo = 0x80, hi = 0xBF;
	if (c >= 0xC2 && c <= 0xDF)
		need = 1;
	else if (c == 0xE0)
		need = 2, lo = 0xA0;
	else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
		need = 2;
	else if (c == 0xED)
		need = 2, hi = 0x9F;
	else if (c == 0xF0)
		need = 3, lo = 0x90;
	else if (c >= 0xF1 && c <= 0xF3)
		need = 3;
	else if (c == 0xF4)
		need = 3, hi = 0x8F;
	else {
		*bad = 1;
		return 0;
	}
	size_t i = 1;
	for (; i <= need && i < n; i++) {
		unsigned b = s[i];
		if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
			break;
	}
	if (i == need + 1)
		return need + 1;
	*bad = i;
	return 0;
}

size_t tk_utf8_put(char *d, uint32_t cp)
{
	if (cp < 0x80) {
		d[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		d[0] = (char)(0xC0 | cp >> 6);
		d[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		d[0] = (char)(0xE0 | cp >> 12);
		d[1] = (char)(0x80 | (cp >> 6 & 0x3F));
		d[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	d[0] = (char)(0xF0 | cp >> 18);
	d[1] = (char)(0x80 | (cp >> 12 & 0x3F));
	d[2] = (char)(0x80 | (cp >> 6 & 0x3F));
	d[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

uint32_t tk_utf8_get(const char *p, size_t *len)
{
	const unsigned char *s = (const unsigned char *)p;
	if (s[0] < 0x80) {
		*len = 1;
		return s[0];
	}
	if (s[0] < 0xE0) {
		*len = 2;
		return (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
	}
	if (s[0] < 0xF0) {
		*len = 3;
		return (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
	}
	*len = 4;
	return (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 | (uint32_t)(s[2] & 0x3F) << 6 |
	       (s[3] & 0x3F);
}

static inline size_t utf8_len(unsigned char c)
{
	return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

/* Unicode White_Space, what Rust's char::is_whitespace and Oniguruma's \s take. */
int tk_is_white_space(uint32_t c)
{
	return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
	       (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
	       c == 0x3000;
}

/* Rust regex's \w, close enough: letters, marks, decimal digits, letter
 * numbers, connector punctuation, the joiners. */
static int is_word_char(uint32_t c)
{
	if (c < 0x80)
		return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
	if (c == 0x200C || c == 0x200D)
		return 1;
	switch (utf8proc_category((utf8proc_int32_t)c)) {
	case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
	case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
	case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
	case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
		return 1;
	default:
		return 0;
	}
}

static int is_numeric(uint32_t c)
{
	if (c < 0x80)
		return c >= '0' && c <= '9';
	utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
	return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

static int is_punct(uint32_t c)
{
	if (c < 0x80)
		return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
	utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
	return k >= UTF8PROC_CATEGORY_PC && k <= UTF8PROC_CATEGORY_PO;
}

/* ---- regex ---- */

/* Oniguruma's \s: Unicode White_Space. */
static const char WS_CLASS[] = "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
			       "\\x{202F}\\x{205F}\\x{3000}";
/* Oniguruma's (and Rust regex's) \w: Unicode's Word (UTS #18); PCRE2's leaves out marks. */
static const char WORD_CLASS[] = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}";

pcre2_code *tk_regex_compile(const char *pat, size_t len, const char *where, struct err *err)
{
	size_t cap = len * 4 + sizeof WS_CLASS * 4 + 16, n = 0;
	char *buf = malloc(cap);
	if (!buf) {
		err_sys(err, "out of memory");
		return NULL;
	}
	int in_class = 0;
	size_t class_start = 0;
	for (size_t i = 0; i < len; i++) {
		if (n + sizeof WS_CLASS + 8 > cap) {
			cap *= 2;
			char *nb = realloc(buf, cap);
			if (!nb) {
				free(buf);
				err_sys(err, "out of memory");
				return NULL;
			}
			buf = nb;
		}
		char c = pat[i];
		if (c == '\\' && i + 1 < len) {
			char d = pat[i + 1];
			if (d == 's' || d == 'S' || d == 'w' || d == 'W') {
				int neg = d == 'S' || d == 'W';
				const char *cls = d == 's' || d == 'S' ? WS_CLASS : WORD_CLASS;
				size_t cl = strlen(cls);
				if (in_class && neg) {
					free(buf);
					err_set(err, "%s: \\%c inside a character class is not supported", where, d);
					return NULL;
				}
				if (!in_class)
					n += (size_t)sprintf(buf + n, "[%s", neg ? "^" : "");
				memcpy(buf + n, cls, cl);
				n += cl;
				if (!in_class)
					buf[n++] = ']';
				i++;
				continue;
			}
			buf[n++] = c;
			buf[n++] = d;
			i++;
			continue;
		}
		if (!in_class && c == '[') {
			in_class = 1;
			class_start = n + 1;
		} else if (in_class && c == ']') {
			/* A ']' first in the class (or right after its '^') is a literal. */
			int literal = n == class_start || (n == class_start + 1 && buf[class_start] == '^');
			if (!literal)
				in_class = 0;
		}
		buf[n++] = c;
	}
	int ec;
	PCRE2_SIZE eo;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)buf, n, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
	free(buf);
	if (!re) {
		char msg[256];
		pcre2_get_error_message(ec, (PCRE2_UCHAR *)msg, sizeof msg);
		err_set(err, "%s: bad regex: %s", where, msg);
		return NULL;
	}
	pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* without JIT the interpreter runs: same matches */
	return re;
}

int tk_regex_next(const pcre2_code *re, const char *s, size_t n, size_t from, struct tk_scratch *sc,
		  size_t *ms, size_t *me, struct err *err)
{
	if (from > n)
		return 0;
	int rc = pcre2_match(re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, sc->md, sc->mctx);
	if (rc == PCRE2_ERROR_NOMATCH)
		return 0;
	if (rc < 0 && rc != 0) {
		char msg[256];
		pcre2_get_error_message(rc, (PCRE2_UCHAR *)msg, sizeof msg);
		return err_set(err, "regex match failed: %s", msg);
	}
	PCRE2_SIZE *ov = pcre2_get_ovector_pointer(sc->md);
	*ms = ov[0];
	*me = ov[1];
	return 1;
}

/* ---- pieces of text and their alignments ---- */

/* A piece of (possibly normalized) text. al holds, per byte, the range of the
 * clean text it came from (start, end); with al NULL the piece is a slice of
 * the clean text itself, starting at clean offset base, and each byte maps to
 * its character's range. */
struct piece {
	const char *s;
	const uint32_t *al;
	uint32_t n, base;
};

static inline uint32_t al_start(const struct piece *p, size_t i)
{
	if (p->al)
		return p->al[2 * i];
	while (i > 0 && ((unsigned char)p->s[i] & 0xC0) == 0x80)
		i--;
	return p->base + (uint32_t)i;
}

static inline uint32_t al_end(const struct piece *p, size_t i)
{
	if (p->al)
		return p->al[2 * i + 1];
	i++;
	while (i < p->n && ((unsigned char)p->s[i] & 0xC0) == 0x80)
		i++;
	return p->base + (uint32_t)i;
}

static struct piece piece_slice(const struct piece *p, size_t a, size_t b)
{
	struct piece q = { p->s + a, p->al ? p->al + 2 * a : NULL, (uint32_t)(b - a), p->base + (uint32_t)a };
	return q;
}

struct enc {
	const struct tokenizer *tk;
	struct tk_scratch *sc;
	const char *clean;
	size_t clean_n;
	const uint32_t *omap; /* per clean byte: original start, end; NULL when the input was valid */
	size_t orig_n;
	struct tok_encoding *out;
	struct err *err;
};

int tk_encoding_push(struct tok_encoding *out, uint32_t id, uint32_t start, uint32_t end)
{
	if (out->n == out->cap) {
		size_t cap = out->cap ? out->cap * 2 : 64;
		uint32_t *ids = realloc(out->ids, cap * sizeof *ids);
		if (!ids)
			return -1;
		out->ids = ids;
		uint32_t(*offs)[2] = realloc(out->offsets, cap * sizeof *offs);
		if (!offs)
			return -1;
		out->offsets = offs;
		out->cap = cap;
	}
	out->ids[out->n] = id;
	out->offsets[out->n][0] = start;
	out->offsets[out->n][1] = end;
	out->n++;
	return 0;
}

/* Pushes a token covering clean bytes [cs, ce). */
static int enc_push(struct enc *e, uint32_t id, uint32_t cs, uint32_t ce)
{
	uint32_t os = cs, oe = ce;
	if (e->omap) {
		if (cs < ce) {
			os = e->omap[2 * cs];
			oe = e->omap[2 * (ce - 1) + 1];
		} else {
			os = oe = cs < e->clean_n ? e->omap[2 * cs] : (uint32_t)e->orig_n;
		}
	}
	if (tk_encoding_push(e->out, id, os, oe) < 0)
		return err_sys(e->err, "out of memory");
	return 0;
}

/* A growing normalized string with its alignments, in the call's arena. */
struct xbuf {
	char *s;
	uint32_t *al;
	size_t n, cap;
};

static int xb_reserve(struct enc *e, struct xbuf *x, size_t more)
{
	if (x->n + more <= x->cap)
		return 0;
	size_t cap = x->cap ? x->cap * 2 : 64;
	while (cap < x->n + more)
		cap *= 2;
	char *s = tk_arena_alloc(&e->sc->arena, cap);
	uint32_t *al = tk_arena_alloc(&e->sc->arena, cap * 2 * sizeof *al);
	if (!s || !al)
		return err_sys(e->err, "out of memory");
	if (x->n) {
		memcpy(s, x->s, x->n);
		memcpy(al, x->al, x->n * 2 * sizeof *al);
	}
	x->s = s;
	x->al = al;
	x->cap = cap;
	return 0;
}

static int xb_put(struct enc *e, struct xbuf *x, uint32_t cp, uint32_t a0, uint32_t a1)
{
	if (xb_reserve(e, x, 4) < 0)
		return -1;
	size_t k = tk_utf8_put(x->s + x->n, cp);
	for (size_t i = 0; i < k; i++) {
		x->al[2 * (x->n + i)] = a0;
		x->al[2 * (x->n + i) + 1] = a1;
	}
	x->n += k;
	return 0;
}

/* Copies bytes [a, b) of p with their alignments. */
static int xb_copy(struct enc *e, struct xbuf *x, const struct piece *p, size_t a, size_t b)
{
	if (b <= a)
		return 0;
	if (xb_reserve(e, x, b - a) < 0)
		return -1;
	memcpy(x->s + x->n, p->s + a, b - a);
	if (p->al) {
		memcpy(x->al + 2 * x->n, p->al + 2 * a, (b - a) * 2 * sizeof *x->al);
	} else {
		for (size_t i = a; i < b;) {
			size_t cl = utf8_len((unsigned char)p->s[i]);
			for (size_t k = 0; k < cl && i + k < b; k++) {
				x->al[2 * (x->n + i - a + k)] = p->base + (uint32_t)i;
				x->al[2 * (x->n + i - a + k) + 1] = p->base + (uint32_t)(i + cl);
			}
			i += cl;
		}
	}
	x->n += b - a;
	return 0;
}

static struct piece xb_piece(const struct xbuf *x)
{
	struct piece p = { x->s, x->al, (uint32_t)x->n, 0 };
	return p;
}

/* HF's NormalizedString::transform: the new text as (char, change) steps over
 * the old one; change 0 replaces the next old char, +1 inserts (taking the
 * alignment of the previous old byte), -k replaces the next old char and
 * drops the k after it. */
struct xform {
	struct xbuf x;
	const struct piece *src;
	size_t off;
};

static int xf_step(struct enc *e, struct xform *t, uint32_t cp, int change)
{
	const struct piece *p = t->src;
	uint32_t a0, a1;
	if (change > 0) {
		if (t->off < 1) {
			a0 = a1 = al_start(p, 0);
		} else {
			size_t o = t->off - 1 < p->n ? t->off - 1 : p->n - 1;
			a0 = al_start(p, o);
			a1 = al_end(p, o);
		}
	} else {
		size_t o = t->off < p->n ? t->off : p->n - 1;
		a0 = al_start(p, o);
		a1 = al_end(p, o);
		for (int k = 0; k <= -change && t->off < p->n; k++)
			t->off += utf8_len((unsigned char)p->s[t->off]);
	}
	return xb_put(e, &t->x, cp, a0, a1);
}

/* ---- normalizers ---- */

struct cpch {
	uint32_t cp;
	int change;
	int ccc;
};

static int ccc_of(uint32_t cp)
{
	return cp < 0x300 ? 0 : utf8proc_get_property((utf8proc_int32_t)cp)->combining_class;
}

/* True when NFC / NFKC / NFD / NFKD leaves this char alone whatever surrounds it. */
static int nf_inert(uint32_t cp, int compat, int compose)
{
	if (cp < 0xA0)
		return 1;
	if (cp < 0x300 && compose && !compat)
		return 1; /* Latin-1 and friends recompose to themselves; no mark below U+0300 */
	const utf8proc_property_t *pr = utf8proc_get_property((utf8proc_int32_t)cp);
	if (pr->combining_class)
		return 0;
	if (pr->decomp_seqindex != UINT16_MAX && (compat || pr->decomp_type == 0))
		return 0;
	if ((cp >= 0xAC00 && cp <= 0xD7A3) || (cp >= 0x1100 && cp <= 0x11FF))
		return 0; /* Hangul composes algorithmically */
	if (compose && pr->comb_index != UINT16_MAX && pr->comb_index >= 0x8000)
		return 0; /* can be the second char of a composition */
	return 1;
}

static uint32_t nf_compose(uint32_t a, uint32_t b)
{
	if (b < 0x300)
		return 0; /* no char below U+0300 is the second of a composition */
	if (a >= 0x1100 && a < 0x1100 + 19 && b >= 0x1161 && b < 0x1161 + 21)
		return 0xAC00 + ((a - 0x1100) * 21 + (b - 0x1161)) * 28;
	if (a >= 0xAC00 && a <= 0xD7A3 && (a - 0xAC00) % 28 == 0 && b > 0x11A7 && b < 0x11A7 + 28)
		return a + (b - 0x11A7);
	const utf8proc_property_t *pb = utf8proc_get_property((utf8proc_int32_t)b);
	if (pb->comb_index == UINT16_MAX || pb->comb_index < 0x8000)
		return 0; /* b never comes second in a composition */
	utf8proc_int32_t buf[2] = { (utf8proc_int32_t)a, (utf8proc_int32_t)b };
	if (utf8proc_normalize_utf32(buf, 2, UTF8PROC_COMPOSE | UTF8PROC_STABLE) == 1)
		return (uint32_t)buf[0];
	return 0;
}

static int cp_push(struct cpch **v, size_t *n, size_t *cap, uint32_t cp, int change, int ccc)
{
	if (*n == *cap) {
		size_t c = *cap ? *cap * 2 : 64;
		struct cpch *nv = realloc(*v, c * sizeof *nv);
		if (!nv)
			return -1;
		*v = nv;
		*cap = c;
	}
	(*v)[(*n)++] = (struct cpch){ cp, change, ccc };
	return 0;
}

/* The (char, change) steps unicode-normalization-alignments yields: full
 * decomposition, canonical reordering of each run of marks (changes travel
 * with their chars), then, for the composed forms, its recomposition. */
static int nf_steps(const struct piece *p, int compat, int compose, struct cpch **outv, size_t *outn)
{
	struct cpch *d = NULL, *o = NULL, *buf = NULL;
	size_t nd = 0, capd = 0, no = 0, capo = 0, nb = 0, capb = 0;
	utf8proc_option_t opt = UTF8PROC_DECOMPOSE | (compat ? UTF8PROC_COMPAT : 0);
	size_t seg = 0;
	for (size_t i = 0; i < p->n;) {
		size_t cl;
		uint32_t cp = tk_utf8_get(p->s + i, &cl);
		i += cl;
		utf8proc_int32_t dec[32];
		int last = 0;
		utf8proc_ssize_t k = utf8proc_decompose_char((utf8proc_int32_t)cp, dec, 32, opt, &last);
		if (k < 1 || k > 32) {
			dec[0] = (utf8proc_int32_t)cp;
			k = 1;
		}
		for (utf8proc_ssize_t j = 0; j < k; j++) {
			int c = ccc_of((uint32_t)dec[j]);
			if (c == 0) {
				/* stable sort of the pending run by combining class */
				for (size_t a = seg + 1; a < nd; a++) {
					struct cpch t = d[a];
					size_t b = a;
					while (b > seg && d[b - 1].ccc > t.ccc) {
						d[b] = d[b - 1];
						b--;
					}
					d[b] = t;
				}
				seg = nd;
			}
			if (cp_push(&d, &nd, &capd, (uint32_t)dec[j], j ? 1 : 0, c) < 0)
				goto oom;
		}
	}
	for (size_t a = seg + 1; a < nd; a++) {
		struct cpch t = d[a];
		size_t b = a;
		while (b > seg && d[b - 1].ccc > t.ccc) {
			d[b] = d[b - 1];
			b--;
		}
		d[b] = t;
	}
	if (!compose) {
		*outv = d;
		*outn = nd;
		return 0;
	}
	int have_k = 0, have_last = 0, last_ccc = 0;
	struct cpch k = { 0, 0, 0 };
	for (size_t i = 0; i < nd; i++) {
		struct cpch ch = d[i];
		if (!have_k) {
			if (ch.ccc != 0) {
				if (cp_push(&o, &no, &capo, ch.cp, ch.change, ch.ccc) < 0)
					goto oom;
				continue;
			}
			k = ch;
			have_k = 1;
			continue;
		}
		if (!have_last) {
			uint32_t r = nf_compose(k.cp, ch.cp);
			if (r) {
				k.cp = r;
				k.change = k.change + ch.change - 1;
				continue;
			}
			if (ch.ccc == 0) {
				if (cp_push(&o, &no, &capo, k.cp, k.change, 0) < 0)
					goto oom;
				k = ch;
				continue;
			}
			if (cp_push(&buf, &nb, &capb, ch.cp, ch.change, ch.ccc) < 0)
				goto oom;
			have_last = 1;
			last_ccc = ch.ccc;
			continue;
		}
		if (last_ccc >= ch.ccc) {
			if (ch.ccc == 0) {
				if (cp_push(&o, &no, &capo, k.cp, k.change, 0) < 0)
					goto oom;
				for (size_t j = 0; j < nb; j++)
					if (cp_push(&o, &no, &capo, buf[j].cp, buf[j].change, buf[j].ccc) < 0)
						goto oom;
				nb = 0;
				k = ch;
				have_last = 0;
				continue;
			}
			if (cp_push(&buf, &nb, &capb, ch.cp, ch.change, ch.ccc) < 0)
				goto oom;
			last_ccc = ch.ccc;
			continue;
		}
		uint32_t r = nf_compose(k.cp, ch.cp);
		if (r) {
			k.cp = r;
			k.change = k.change + ch.change - 1;
			continue;
		}
		if (cp_push(&buf, &nb, &capb, ch.cp, ch.change, ch.ccc) < 0)
			goto oom;
		last_ccc = ch.ccc;
	}
	if (have_k && cp_push(&o, &no, &capo, k.cp, k.change, 0) < 0)
		goto oom;
	for (size_t j = 0; j < nb; j++)
		if (cp_push(&o, &no, &capo, buf[j].cp, buf[j].change, buf[j].ccc) < 0)
			goto oom;
	free(d);
	free(buf);
	*outv = o;
	*outn = no;
	return 0;
oom:
	free(d);
	free(o);
	free(buf);
	return -1;
}

static int norm_nf(struct enc *e, const struct tk_norm *nm, const struct piece *in, struct piece *out)
{
	int compat = nm->kind == TK_NORM_NFKC || nm->kind == TK_NORM_NFKD;
	int compose = nm->kind == TK_NORM_NFC || nm->kind == TK_NORM_NFKC;
	size_t i = 0;
	while (i < in->n) {
		unsigned char c = (unsigned char)in->s[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t cl;
		uint32_t cp = tk_utf8_get(in->s + i, &cl);
		if (!nf_inert(cp, compat, compose))
			break;
		i += cl;
	}
	if (i == in->n) {
		*out = *in;
		return 0;
	}
	struct cpch *v;
	size_t nv;
	if (nf_steps(in, compat, compose, &v, &nv) < 0)
		return err_sys(e->err, "out of memory");
	struct xform t = { { 0 }, in, 0 };
	for (size_t k = 0; k < nv; k++) {
		if (xf_step(e, &t, v[k].cp, v[k].change) < 0) {
			free(v);
			return -1;
		}
	}
	free(v);
	*out = xb_piece(&t.x);
	return 0;
}

static int find_literal(const char *s, size_t n, size_t from, const char *pat, size_t pl, size_t *ms)
{
	if (pl == 0 || from > n || n - from < pl)
		return 0;
	const char *p = memmem(s + from, n - from, pat, pl);
	if (!p)
		return 0;
	*ms = (size_t)(p - s);
	return 1;
}

/* Replace: every match becomes content, each of its chars aligned with the last byte of the match. */
static int norm_replace(struct enc *e, const struct tk_norm *nm, const struct piece *in, struct piece *out)
{
	struct xbuf x = { 0 };
	size_t last = 0, from = 0;
	int any = 0;
	for (;;) {
		size_t ms, me;
		int r;
		if (nm->re) {
			r = tk_regex_next(nm->re, in->s, in->n, from, e->sc, &ms, &me, e->err);
			if (r < 0)
				return -1;
		} else {
			r = find_literal(in->s, in->n, from, nm->pat, nm->pat_len, &ms);
			me = ms + nm->pat_len;
		}
		if (r == 0)
			break;
		any = 1;
		if (xb_copy(e, &x, in, last, ms) < 0)
			return -1;
		uint32_t a0, a1;
		if (me >= 1) {
			a0 = al_start(in, me - 1);
			a1 = al_end(in, me - 1);
		} else {
			a0 = a1 = al_start(in, 0);
		}
		for (size_t i = 0; i < nm->content_len;) {
			size_t cl;
			uint32_t cp = tk_utf8_get(nm->content + i, &cl);
			if (xb_put(e, &x, cp, a0, a1) < 0)
				return -1;
			i += cl;
		}
		last = me;
		from = me > ms ? me : me + (me < in->n ? utf8_len((unsigned char)in->s[me]) : 1);
	}
	if (!any) {
		*out = *in;
		return 0;
	}
	if (xb_copy(e, &x, in, last, in->n) < 0)
		return -1;
	*out = xb_piece(&x);
	return 0;
}

/* Prepend (and the prefix of Metaspace / ByteLevel): the new chars and the first
 * old char all take the first char's alignment. */
static int piece_prepend(struct enc *e, const struct piece *in, const char *pre, size_t pl, struct piece *out)
{
	if (in->n == 0) {
		*out = *in;
		return 0;
	}
	struct xbuf x = { 0 };
	uint32_t a0 = al_start(in, 0), a1 = al_end(in, 0);
	for (size_t i = 0; i < pl;) {
		size_t cl;
		uint32_t cp = tk_utf8_get(pre + i, &cl);
		if (xb_put(e, &x, cp, a0, a1) < 0)
			return -1;
		i += cl;
	}
	size_t fl = utf8_len((unsigned char)in->s[0]);
	if (xb_reserve(e, &x, fl) < 0)
		return -1;
	for (size_t k = 0; k < fl; k++) {
		x.s[x.n] = in->s[k];
		x.al[2 * x.n] = a0;
		x.al[2 * x.n + 1] = a1;
		x.n++;
	}
	if (xb_copy(e, &x, in, fl, in->n) < 0)
		return -1;
	*out = xb_piece(&x);
	return 0;
}

static int norm_lowercase(struct enc *e, const struct piece *in, struct piece *out)
{
	size_t i = 0;
	for (; i < in->n;) {
		size_t cl;
		uint32_t cp = tk_utf8_get(in->s + i, &cl);
		if (cp == 0x130 || (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp) != cp)
			break;
		i += cl;
	}
	if (i == in->n) {
		*out = *in;
		return 0;
	}
	struct xform t = { { 0 }, in, 0 };
	for (i = 0; i < in->n;) {
		size_t cl;
		uint32_t cp = tk_utf8_get(in->s + i, &cl);
		i += cl;
		if (cp == 0x130) { /* Rust's to_lowercase: "i\u0307" */
			if (xf_step(e, &t, 'i', 0) < 0 || xf_step(e, &t, 0x307, 1) < 0)
				return -1;
		} else if (xf_step(e, &t, (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp), 0) < 0) {
			return -1;
		}
	}
	*out = xb_piece(&t.x);
	return 0;
}

/* Strip keeps the alignments of the chars it keeps: a slice. */
static void norm_strip(const struct tk_norm *nm, const struct piece *in, struct piece *out)
{
	size_t a = 0, b = in->n;
	if (nm->left) {
		while (a < b) {
			size_t cl;
			uint32_t cp = tk_utf8_get(in->s + a, &cl);
			if (!tk_is_white_space(cp))
				break;
			a += cl;
		}
	}
	if (nm->right) {
		while (b > a) {
			size_t s = b - 1;
			while (s > a && ((unsigned char)in->s[s] & 0xC0) == 0x80)
				s--;
			size_t cl;
			uint32_t cp = tk_utf8_get(in->s + s, &cl);
			if (!tk_is_white_space(cp))
				break;
			b = s;
		}
	}
	*out = piece_slice(in, a, b);
}

static int normalize(struct enc *e, const struct piece *in, struct piece *out)
{
	struct piece cur = *in;
	for (size_t i = 0; i < e->tk->nnorm; i++) {
		const struct tk_norm *nm = &e->tk->norm[i];
		struct piece next;
		if (cur.n == 0)
			break;
		switch (nm->kind) {
		case TK_NORM_NFC:
		case TK_NORM_NFD:
		case TK_NORM_NFKC:
		case TK_NORM_NFKD:
			if (norm_nf(e, nm, &cur, &next) < 0)
				return -1;
			break;
		case TK_NORM_REPLACE:
			if (norm_replace(e, nm, &cur, &next) < 0)
				return -1;
			break;
		case TK_NORM_PREPEND:
			if (piece_prepend(e, &cur, nm->content, nm->content_len, &next) < 0)
				return -1;
			break;
		case TK_NORM_LOWERCASE:
			if (norm_lowercase(e, &cur, &next) < 0)
				return -1;
			break;
		case TK_NORM_STRIP:
			norm_strip(nm, &cur, &next);
			break;
		default:
			next = cur;
		}
		cur = next;
	}
	*out = cur;
	return 0;
}

/* ---- pre-tokenizers ---- */

static int pre_run(struct enc *e, size_t level, const struct piece *p);

/* HF's split behaviors, folded as the matches stream by. */
struct splitter {
	struct enc *e;
	size_t level;
	const struct piece *p;
	enum tk_behavior behavior;
	int have, held_match, prev_match;
	size_t ha, hb;
};

static int sp_emit(struct splitter *s, size_t a, size_t b)
{
	if (b <= a)
		return 0;
	struct piece q = piece_slice(s->p, a, b);
	return pre_run(s->e, s->level + 1, &q);
}

static int sp_feed(struct splitter *s, size_t a, size_t b, int is_match)
{
	switch (s->behavior) {
	case TK_SPLIT_ISOLATED:
		return sp_emit(s, a, b);
	case TK_SPLIT_REMOVED:
		return is_match ? 0 : sp_emit(s, a, b);
	case TK_SPLIT_MERGED_PREV:
		if (is_match && !s->prev_match && s->have) {
			s->hb = b;
		} else {
			if (s->have && sp_emit(s, s->ha, s->hb) < 0)
				return -1;
			s->have = 1;
			s->ha = a;
			s->hb = b;
		}
		s->prev_match = is_match;
		return 0;
	case TK_SPLIT_MERGED_NEXT:
		if (s->have) {
			s->have = 0;
			if (!is_match)
				return sp_emit(s, s->ha, b);
			if (sp_emit(s, s->ha, s->hb) < 0)
				return -1;
		}
		if (is_match) {
			s->have = 1;
			s->ha = a;
			s->hb = b;
			return 0;
		}
		return sp_emit(s, a, b);
	case TK_SPLIT_CONTIGUOUS:
		if (is_match == s->prev_match && s->have) {
			s->hb = b;
		} else {
			if (s->have && sp_emit(s, s->ha, s->hb) < 0)
				return -1;
			s->have = 1;
			s->ha = a;
			s->hb = b;
		}
		s->prev_match = is_match;
		return 0;
	}
	return 0;
}

static int sp_finish(struct splitter *s)
{
	if (s->behavior != TK_SPLIT_ISOLATED && s->behavior != TK_SPLIT_REMOVED && s->have) {
		s->have = 0;
		return sp_emit(s, s->ha, s->hb);
	}
	return 0;
}

/* Feeds the match/gap sequence of HF's Pattern::find_matches. */
static int sp_match(struct splitter *s, size_t *prev, size_t ms, size_t me, int invert)
{
	if (*prev != ms && sp_feed(s, *prev, ms, invert) < 0)
		return -1;
	if (sp_feed(s, ms, me, !invert) < 0)
		return -1;
	*prev = me;
	return 0;
}

static int split_regex(struct enc *e, size_t level, const struct piece *p, const pcre2_code *re,
		       enum tk_behavior beh, int invert)
{
	struct splitter s = { e, level, p, beh, 0, 0, 0, 0, 0 };
	size_t prev = 0, from = 0, last_end = (size_t)-1;
	while (from <= p->n) {
		size_t ms, me;
		int r = tk_regex_next(re, p->s, p->n, from, e->sc, &ms, &me, e->err);
		if (r < 0)
			return -1;
		if (r == 0)
			break;
		if (me == ms) {
			/* Oniguruma's iterator: an empty match right after a match is skipped,
			 * and the search moves on by one char. */
			size_t step = ms < p->n ? utf8_len((unsigned char)p->s[ms]) : 1;
			if (ms != last_end && sp_match(&s, &prev, ms, me, invert) < 0)
				return -1;
			from = ms + step;
			continue;
		}
		if (sp_match(&s, &prev, ms, me, invert) < 0)
			return -1;
		from = last_end = me;
	}
	if (prev != p->n && sp_feed(&s, prev, p->n, invert) < 0)
		return -1;
	return sp_finish(&s);
}

static int split_literal(struct enc *e, size_t level, const struct piece *p, const char *lit, size_t ll,
			 enum tk_behavior beh, int invert)
{
	struct splitter s = { e, level, p, beh, 0, 0, 0, 0, 0 };
	size_t prev = 0, from = 0, ms;
	while (find_literal(p->s, p->n, from, lit, ll, &ms)) {
		if (sp_match(&s, &prev, ms, ms + ll, invert) < 0)
			return -1;
		from = ms + ll;
	}
	if (prev != p->n && sp_feed(&s, prev, p->n, invert) < 0)
		return -1;
	return sp_finish(&s);
}

/* Char-predicate patterns: each matching char is a match of its own. */
static int split_chars(struct enc *e, size_t level, const struct piece *p, int (*pred)(uint32_t),
		       uint32_t one, enum tk_behavior beh)
{
	struct splitter s = { e, level, p, beh, 0, 0, 0, 0, 0 };
	size_t prev = 0;
	for (size_t i = 0; i < p->n;) {
		size_t cl;
		uint32_t cp = tk_utf8_get(p->s + i, &cl);
		if (pred ? pred(cp) : cp == one) {
			if (sp_match(&s, &prev, i, i + cl, 0) < 0)
				return -1;
		}
		i += cl;
	}
	if (prev != p->n && sp_feed(&s, prev, p->n, 0) < 0)
		return -1;
	return sp_finish(&s);
}

static int pre_metaspace(struct enc *e, size_t level, const struct tk_pre *pt, const struct piece *p)
{
	struct xbuf x = { 0 };
	size_t last = 0;
	int any = 0;
	for (size_t i = 0; i < p->n; i++) {
		if (p->s[i] != ' ')
			continue;
		any = 1;
		if (xb_copy(e, &x, p, last, i) < 0 || xb_reserve(e, &x, (size_t)pt->repl_len) < 0)
			return -1;
		uint32_t a0 = al_start(p, i), a1 = al_end(p, i);
		for (int k = 0; k < pt->repl_len; k++) {
			x.s[x.n] = pt->repl[k];
			x.al[2 * x.n] = a0;
			x.al[2 * x.n + 1] = a1;
			x.n++;
		}
		last = i + 1;
	}
	struct piece cur = *p;
	if (any) {
		if (xb_copy(e, &x, p, last, p->n) < 0)
			return -1;
		cur = xb_piece(&x);
	}
	int starts = cur.n >= (uint32_t)pt->repl_len && memcmp(cur.s, pt->repl, (size_t)pt->repl_len) == 0;
	int prepend = 0;
	if (pt->prepend == TK_PREPEND_ALWAYS)
		prepend = !starts;
	else if (pt->prepend == TK_PREPEND_FIRST)
		prepend = !starts && cur.n > 0 && al_start(&cur, 0) == 0;
	if (prepend) {
		struct piece q;
		if (piece_prepend(e, &cur, pt->repl, (size_t)pt->repl_len, &q) < 0)
			return -1;
		cur = q;
	}
	if (!pt->split)
		return cur.n ? pre_run(e, level + 1, &cur) : 0;
	size_t rl;
	uint32_t rcp = tk_utf8_get(pt->repl, &rl);
	return split_chars(e, level, &cur, NULL, rcp, TK_SPLIT_MERGED_NEXT);
}

static int model_run(struct enc *e, const struct piece *p)
{
	const uint32_t *t;
	size_t nt;
	if (tk_bpe_word(e->tk, e->sc, p->s, p->n, &t, &nt, e->err) < 0)
		return -1;
	size_t pos = 0;
	for (size_t k = 0; k < nt; k++) {
		size_t a = pos, b = pos + t[2 * k + 1];
		pos = b;
		if (b > p->n)
			b = p->n;
		if (a > b)
			a = b;
		uint32_t cs, ce;
		if (a < b) {
			cs = al_start(p, a);
			ce = al_end(p, b - 1);
		} else {
			cs = ce = a < p->n ? al_start(p, a) : al_end(p, p->n - 1);
		}
		if (enc_push(e, t[2 * k], cs, ce) < 0)
			return -1;
	}
	return 0;
}

static int pre_run(struct enc *e, size_t level, const struct piece *p)
{
	if (p->n == 0)
		return 0;
	if (level == e->tk->npre)
		return model_run(e, p);
	const struct tk_pre *pt = &e->tk->pre[level];
	switch (pt->kind) {
	case TK_PRE_SPLIT:
		if (pt->re)
			return split_regex(e, level, p, pt->re, pt->behavior, pt->invert);
		return split_literal(e, level, p, pt->lit, pt->lit_len, pt->behavior, pt->invert);
	case TK_PRE_BYTELEVEL: {
		struct piece cur = *p;
		if (pt->add_prefix_space && p->s[0] != ' ' && piece_prepend(e, p, " ", 1, &cur) < 0)
			return -1;
		if (pt->use_regex)
			return split_regex(e, level, &cur, e->tk->re_gpt2, TK_SPLIT_ISOLATED, 0);
		return pre_run(e, level + 1, &cur);
	}
	case TK_PRE_METASPACE:
		return pre_metaspace(e, level, pt, p);
	case TK_PRE_DIGITS:
		return split_chars(e, level, p, is_numeric, 0,
				   pt->individual ? TK_SPLIT_ISOLATED : TK_SPLIT_CONTIGUOUS);
	case TK_PRE_WHITESPACE:
		return split_regex(e, level, p, pt->re, TK_SPLIT_REMOVED, 1);
	case TK_PRE_WSSPLIT:
		return split_chars(e, level, p, tk_is_white_space, 0, TK_SPLIT_REMOVED);
	case TK_PRE_PUNCT:
		return split_chars(e, level, p, is_punct, 0, pt->behavior);
	}
	return 0;
}

/* ---- added tokens ---- */

static int32_t trie_longest(const struct tk_trie *t, const char *s, size_t n, size_t p, size_t *mlen)
{
	uint64_t node = 0, child;
	int32_t best = -1;
	for (size_t i = p; i < n; i++) {
		if (!tk_u64map_get(&t->edges, node << 8 | (unsigned char)s[i], &child))
			break;
		node = child;
		if (t->term[node] >= 0) {
			best = t->term[node];
			*mlen = i + 1 - p;
		}
	}
	return best;
}

static const struct tk_added *added_of(const struct tokenizer *tk, uint32_t id)
{
	uint64_t v;
	return tk_u64map_get(&tk->added_by_id, id, &v) ? &tk->added[v] : NULL;
}

/* One segment of HF's AddedVocabulary::find_matches. */
struct seg {
	size_t a, b;
	int64_t id; /* -1: text */
};

static int seg_push(struct seg **v, size_t *n, size_t *cap, size_t a, size_t b, int64_t id)
{
	if (*n == *cap) {
		size_t c = *cap ? *cap * 2 : 16;
		struct seg *nv = realloc(*v, c * sizeof *nv);
		if (!nv)
			return -1;
		*v = nv;
		*cap = c;
	}
	(*v)[(*n)++] = (struct seg){ a, b, id };
	return 0;
}

static int last_char_is_word(const char *s, size_t end)
{
	if (end == 0)
		return 0;
	size_t i = end - 1;
	while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80)
		i--;
	size_t cl;
	return is_word_char(tk_utf8_get(s + i, &cl));
}

static int find_added(const struct tokenizer *tk, const struct tk_trie *t, const char *s, size_t n,
		      struct seg **v, size_t *nv, size_t *cap)
{
	*nv = 0;
	size_t start_offset = 0, p = 0;
	if (t->nnodes > 1) {
		while (p < n) {
			size_t q = p, len = 0;
			int32_t id = -1;
			for (; q < n; q++) {
				if (!t->first[(unsigned char)s[q]])
					continue;
				id = trie_longest(t, s, n, q, &len);
				if (id >= 0)
					break;
			}
			if (id < 0)
				break;
			size_t start = q, stop = q + len;
			p = stop;
			const struct tk_added *at = added_of(tk, (uint32_t)id);
			if (at && at->single_word) {
				size_t cl;
				int start_space = start == 0 || !last_char_is_word(s, start);
				int stop_space = stop == n || !is_word_char(tk_utf8_get(s + stop, &cl));
				if (!start_space || !stop_space)
					continue;
			}
			if (at && at->lstrip) {
				size_t ns = start;
				while (ns > 0) {
					size_t b = ns - 1;
					while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80)
						b--;
					size_t cl;
					if (!tk_is_white_space(tk_utf8_get(s + b, &cl)))
						break;
					ns = b;
				}
				start = ns > start_offset ? ns : start_offset;
			}
			if (at && at->rstrip) {
				while (stop < n) {
					size_t cl;
					if (!tk_is_white_space(tk_utf8_get(s + stop, &cl)))
						break;
					stop += cl;
				}
			}
			if (start_offset < start && seg_push(v, nv, cap, start_offset, start, -1) < 0)
				return -1;
			if (seg_push(v, nv, cap, start, stop, id) < 0)
				return -1;
			start_offset = stop;
		}
	}
	if (start_offset < n && seg_push(v, nv, cap, start_offset, n, -1) < 0)
		return -1;
	return 0;
}

/* ---- the whole encode ---- */

/* Makes the input valid UTF-8; see the top of this file. */
static int clean_input(struct enc *e, const char *text, size_t len)
{
	const unsigned char *s = (const unsigned char *)text;
	size_t i = 0;
	while (i < len) {
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		size_t bad, k = tk_utf8_valid(s + i, len - i, &bad);
		if (!k)
			break;
		i += k;
	}
	e->orig_n = len;
	if (i == len) {
		e->clean = text;
		e->clean_n = len;
		e->omap = NULL;
		return 0;
	}
	if (len > UINT32_MAX / 4)
		return err_set(e->err, "text too long");
	char *c = tk_arena_alloc(&e->sc->arena, len * 3 + 4);
	uint32_t *m = tk_arena_alloc(&e->sc->arena, (len * 3 + 4) * 2 * sizeof *m);
	if (!c || !m)
		return err_sys(e->err, "out of memory");
	size_t n = 0;
	for (i = 0; i < len;) {
		size_t bad = 0, k = tk_utf8_valid(s + i, len - i, &bad);
		if (k) {
			memcpy(c + n, s + i, k);
			for (size_t j = 0; j < k; j++) {
				m[2 * (n + j)] = (uint32_t)i;
				m[2 * (n + j) + 1] = (uint32_t)(i + k);
			}
			n += k;
			i += k;
		} else {
			memcpy(c + n, "\xEF\xBF\xBD", 3);
			for (size_t j = 0; j < 3; j++) {
				m[2 * (n + j)] = (uint32_t)i;
				m[2 * (n + j) + 1] = (uint32_t)(i + bad);
			}
			n += 3;
			i += bad;
		}
	}
	e->clean = c;
	e->clean_n = n;
	e->omap = m;
	return 0;
}

/* A text segment of the clean text: normalize, split on normalized added
 * tokens, pre-tokenize, run the model. */
static int encode_segment(struct enc *e, size_t a, size_t b, struct seg **v, size_t *cap)
{
	struct piece raw = { e->clean + a, NULL, (uint32_t)(b - a), (uint32_t)a }, p;
	if (normalize(e, &raw, &p) < 0)
		return -1;
	if (p.n == 0)
		return 0;
	if (e->tk->trie_norm.nnodes <= 1)
		return pre_run(e, 0, &p);
	size_t nv;
	if (find_added(e->tk, &e->tk->trie_norm, p.s, p.n, v, &nv, cap) < 0)
		return err_sys(e->err, "out of memory");
	for (size_t i = 0; i < nv; i++) {
		struct seg sg = (*v)[i];
		if (sg.b <= sg.a)
			continue;
		if (sg.id >= 0) {
			if (enc_push(e, (uint32_t)sg.id, al_start(&p, sg.a), al_end(&p, sg.b - 1)) < 0)
				return -1;
		} else {
			struct piece q = piece_slice(&p, sg.a, sg.b);
			if (pre_run(e, 0, &q) < 0)
				return -1;
		}
	}
	return 0;
}

/* ByteLevel post-processing with trim_offsets: the offsets leave out the
 * leading and trailing spaces of each token (counted in characters, as HF's
 * Python offsets are). */
static void post_trim(const struct tokenizer *tk, const struct tk_post *pp, struct tok_encoding *out, size_t n0,
		      const char *text, size_t len)
{
	for (size_t i = n0; i < out->n; i++) {
		uint32_t id = out->ids[i];
		if (id >= tk->vocab_size || !tk->id_str[id])
			continue;
		const char *s = tk->id_str[id];
		size_t sl = tk->id_len[id], lead = 0, trail = 0;
		for (size_t k = 0; k < sl;) {
			size_t cl;
			uint32_t cp = tk_utf8_get(s + k, &cl);
			if (cp != 0x120 && !tk_is_white_space(cp))
				break;
			lead++;
			k += cl;
		}
		for (size_t k = sl; k > 0;) {
			size_t b = k - 1;
			while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80)
				b--;
			size_t cl;
			uint32_t cp = tk_utf8_get(s + b, &cl);
			if (cp != 0x120 && !tk_is_white_space(cp))
				break;
			trail++;
			k = b;
		}
		uint32_t *o = out->offsets[i];
		if (!lead && !trail)
			continue;
		/* The token's characters in the caller's text (an invalid subsequence
		 * counts as one, as its U+FFFD did): their boundaries from o[0] to o[1]. */
		uint32_t bnd[64];
		size_t nb = 0;
		for (uint32_t p = o[0]; p < o[1] && nb < 64;) {
			size_t bad = 1, k = tk_utf8_valid((const unsigned char *)text + p, len - p, &bad);
			p += (uint32_t)(k ? k : bad);
			bnd[nb++] = p < o[1] ? p : o[1];
		}
		uint32_t start = o[0], end = o[1];
		if (lead) {
			int is_first = i == n0 || o[0] == 0;
			if (is_first && pp->add_prefix_space && lead == 1)
				lead = 0;
			if (lead)
				start = lead <= nb ? bnd[lead - 1] : o[1];
		}
		if (trail && o[1] >= trail) {
			uint32_t e = trail < nb ? bnd[nb - trail - 1] : o[0];
			end = e > start ? e : start;
		}
		if (start > end)
			start = end;
		o[0] = start;
		o[1] = end;
	}
}

static int post_template(const struct tk_post *pp, struct tok_encoding *out, size_t n0, struct err *err)
{
	size_t body = out->n - n0;
	for (size_t i = 0; i < pp->npre + pp->npost; i++)
		if (tk_encoding_push(out, 0, 0, 0) < 0)
			return err_sys(err, "out of memory");
	memmove(out->ids + n0 + pp->npre, out->ids + n0, body * sizeof *out->ids);
	memmove(out->offsets + n0 + pp->npre, out->offsets + n0, body * sizeof *out->offsets);
	for (size_t i = 0; i < pp->npre; i++) {
		out->ids[n0 + i] = pp->pre_ids[i];
		out->offsets[n0 + i][0] = out->offsets[n0 + i][1] = 0;
	}
	for (size_t i = 0; i < pp->npost; i++) {
		size_t k = n0 + pp->npre + body + i;
		out->ids[k] = pp->post_ids[i];
		out->offsets[k][0] = out->offsets[k][1] = 0;
	}
	return 0;
}


int tokenizer_encode(const struct tokenizer *tk, const char *text, size_t len, int add_special,
		     struct tok_encoding *out, struct err *err)
{
	if (len > UINT32_MAX / 8)
		return err_set(err, "text too long to encode (%zu bytes)", len);
	if (!text)
		text = "";
	/* One call at a time uses the tokenizer's scratch and word cache; a call
	 * that finds them taken runs with its own scratch and no cache, so
	 * concurrent calls are safe and never wait. */
	struct tokenizer *mtk = (struct tokenizer *)tk;
	struct tk_scratch *sc = NULL;
	int locked = pthread_mutex_trylock(&mtk->lock) == 0;
	if (locked) {
		if (!mtk->scratch) {
			mtk->scratch = tk_scratch_new();
			if (mtk->scratch)
				mtk->scratch->cache = tk_cache_new();
		}
		sc = mtk->scratch;
	}
	int own = 0;
	if (!sc) {
		sc = tk_scratch_new();
		own = 1;
		if (!sc) {
			if (locked)
				pthread_mutex_unlock(&mtk->lock);
			return err_sys(err, "out of memory");
		}
	}
	struct enc e = { tk, sc, NULL, 0, NULL, 0, out, err };
	struct seg *v = NULL, *v2 = NULL;
	size_t nv = 0, cap = 0, cap2 = 0, n0 = out->n;
	int rc = -1;
	if (clean_input(&e, text, len) < 0)
		goto done;
	if (find_added(tk, &tk->trie_raw, e.clean, e.clean_n, &v, &nv, &cap) < 0) {
		err_sys(err, "out of memory");
		goto done;
	}
	for (size_t i = 0; i < nv; i++) {
		struct seg sg = v[i];
		if (sg.b <= sg.a)
			continue;
		if (sg.id >= 0) {
			if (enc_push(&e, (uint32_t)sg.id, (uint32_t)sg.a, (uint32_t)sg.b) < 0)
				goto done;
		} else if (encode_segment(&e, sg.a, sg.b, &v2, &cap2) < 0) {
			goto done;
		}
	}
	for (size_t i = 0; i < tk->npost; i++) {
		const struct tk_post *pp = &tk->post[i];
		if (pp->kind == TK_POST_BYTELEVEL && pp->trim_offsets)
			post_trim(tk, pp, out, n0, text, len);
		else if (pp->kind == TK_POST_TEMPLATE && add_special && post_template(pp, out, n0, err) < 0)
			goto done;
	}
	rc = 0;
done:
	if (rc < 0)
		out->n = n0;
	free(v);
	free(v2);
	if (own) {
		tk_scratch_free(sc);
	} else {
		tk_arena_reset(&sc->arena);
	}
	if (locked)
		pthread_mutex_unlock(&mtk->lock);
	return rc;
}

void tok_encoding_free(struct tok_encoding *e)
{
	if (!e)
		return;
	free(e->ids);
	free(e->offsets);
	e->ids = NULL;
	e->offsets = NULL;
	e->n = e->cap = 0;
}

/* The normalizer over a plain string, for added-token patterns at load. */
int tk_normalize_plain(const struct tokenizer *tk, const char *s, size_t n, char **out, size_t *out_len,
		       struct err *err)
{
	struct tk_scratch *sc = tk_scratch_new();
	if (!sc)
		return err_sys(err, "out of memory");
	struct tok_encoding dummy = { 0 };
	struct enc e = { tk, sc, s, n, NULL, n, &dummy, err };
	struct piece in = { s, NULL, (uint32_t)n, 0 }, p;
	int rc = normalize(&e, &in, &p);
	if (rc == 0) {
		*out = malloc(p.n + 1);
		if (!*out) {
			rc = err_sys(err, "out of memory");
		} else {
			memcpy(*out, p.s, p.n);
			(*out)[p.n] = 0;
			*out_len = p.n;
		}
	}
	tk_scratch_free(sc);
	return rc;
}
