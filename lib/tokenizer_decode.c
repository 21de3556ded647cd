/* tokenizer_decode: ids -> text as Hugging Face tokenizers' decode does: the
 * token strings (added tokens first, unknown ids dropped, special ones dropped
 * on request), passed through the decoder chain (each decoder maps a list of
 * strings to a list of strings), then concatenated; with no decoder the
 * strings are joined with spaces.
 */
#include "tokenizer_impl.h"

#include <stdlib.h>
#include <string.h>

/* A list of strings in one buffer. */
struct tlist {
	char *buf;
	size_t len, cap;
	size_t *off, *ln;
	size_t n, ncap;
};

static void tl_free(struct tlist *t)
{
	free(t->buf);
	free(t->off);
	free(t->ln);
	memset(t, 0, sizeof *t);
}

static int tl_bytes(struct tlist *t, const char *s, size_t n)
{
	if (t->len + n + 1 > t->cap) {
		size_t cap = t->cap ? t->cap : 256;
		while (cap < t->len + n + 1)
			cap *= 2;
		char *b = realloc(t->buf, cap);
		if (!b)
			return -1;
		t->buf = b;
		t->cap = cap;
	}
	memcpy(t->buf + t->len, s, n);
	t->len += n;
	return 0;
}

/* Starts a new string; bytes appended with tl_bytes go to it. */
static int tl_begin(struct tlist *t)
{
	if (t->n == t->ncap) {
		size_t c = t->ncap ? t->ncap * 2 : 64;
		size_t *o = realloc(t->off, c * sizeof *o);
		if (!o)
			return -1;
		t->off = o;
		size_t *l = realloc(t->ln, c * sizeof *l);
		if (!l)
			return -1;
		t->ln = l;
		t->ncap = c;
	}
	if (!t->buf && tl_bytes(t, "", 0) < 0) /* strings always point into a buffer, even empty ones */
		return -1;
	t->off[t->n] = t->len;
	t->ln[t->n] = 0;
	t->n++;
	return 0;
}

static void tl_end(struct tlist *t)
{
	t->ln[t->n - 1] = t->len - t->off[t->n - 1];
}

static int tl_add(struct tlist *t, const char *s, size_t n)
{
	if (tl_begin(t) < 0 || tl_bytes(t, s, n) < 0)
		return -1;
	tl_end(t);
	return 0;
}

/* Appends s as valid UTF-8, each maximal invalid subpart becoming U+FFFD
 * (Rust's String::from_utf8_lossy). */
static int tl_lossy(struct tlist *t, const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, run = 0;
	while (i < n) {
		size_t bad, k = tk_utf8_valid(u + i, n - i, &bad);
		if (k) {
			i += k;
			continue;
		}
		if (tl_bytes(t, s + run, i - run) < 0 || tl_bytes(t, "\xEF\xBF\xBD", 3) < 0)
			return -1;
		i += bad;
		run = i;
	}
	return tl_bytes(t, s + run, n - run);
}

static int dec_bytelevel(const struct tlist *in, struct tlist *out)
{
	int16_t inv[0x144];
	tk_bytelevel_inverse(inv);
	struct tlist raw = { 0 };
	for (size_t i = 0; i < in->n; i++) {
		const char *s = in->buf + in->off[i];
		size_t n = in->ln[i], start = raw.len;
		int ok = 1;
		for (size_t k = 0; k < n;) {
			size_t cl;
			uint32_t cp = tk_utf8_get(s + k, &cl);
			if (cp >= 0x144 || inv[cp] < 0) {
				ok = 0;
				break;
			}
			char b = (char)inv[cp];
			if (tl_bytes(&raw, &b, 1) < 0)
				goto oom;
			k += cl;
		}
		if (!ok) {
			raw.len = start;
			if (tl_bytes(&raw, s, n) < 0)
				goto oom;
		}
	}
	if (tl_begin(out) < 0 || tl_lossy(out, raw.buf ? raw.buf : "", raw.len) < 0)
		goto oom;
	tl_end(out);
	tl_free(&raw);
	return 0;
oom:
	tl_free(&raw);
	return -1;
}

static int dec_replace(const struct tk_dec *d, const struct tlist *in, struct tlist *out, struct tk_scratch *sc,
		       struct err *err)
{
	for (size_t i = 0; i < in->n; i++) {
		const char *s = in->buf + in->off[i];
		size_t n = in->ln[i], last = 0, from = 0;
		if (tl_begin(out) < 0)
			return err_sys(err, "out of memory");
		for (;;) {
			size_t ms, me;
			int r;
			if (d->re) {
				r = tk_regex_next(d->re, s, n, from, sc, &ms, &me, err);
				if (r < 0)
					return -1;
			} else {
				const char *p = d->pat_len && n - from >= d->pat_len && from <= n
							? memmem(s + from, n - from, d->pat, d->pat_len)
							: NULL;
				r = p != NULL;
				ms = p ? (size_t)(p - s) : 0;
				me = ms + d->pat_len;
			}
			if (!r)
				break;
			if (tl_bytes(out, s + last, ms - last) < 0 || tl_bytes(out, d->content, d->content_len) < 0)
				return err_sys(err, "out of memory");
			last = me;
			if (me > ms)
				from = me;
			else if (me < n)
				from = me + (((unsigned char)s[me] < 0x80) ? 1 : ((unsigned char)s[me] < 0xE0) ? 2
					     : ((unsigned char)s[me] < 0xF0) ? 3 : 4);
			else
				break;
		}
		if (tl_bytes(out, s + last, n - last) < 0)
			return err_sys(err, "out of memory");
		tl_end(out);
	}
	return 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int flush_bytes(struct tlist *out, const char *b, size_t n)
{
	if (!n)
		return 0;
	const unsigned char *u = (const unsigned char *)b;
	size_t i = 0;
	while (i < n) {
		size_t bad, k = tk_utf8_valid(u + i, n - i, &bad);
		if (!k)
			break;
		i += k;
	}
	if (i == n)
		return tl_add(out, b, n);
	/* Not UTF-8: one U+FFFD per byte, as HF does. */
	for (size_t k = 0; k < n; k++)
		if (tl_add(out, "\xEF\xBF\xBD", 3) < 0)
			return -1;
	return 0;
}

static int dec_bytefallback(const struct tlist *in, struct tlist *out)
{
	char *bytes = malloc(in->n + 1);
	size_t nb = 0;
	if (!bytes)
		return -1;
	for (size_t i = 0; i < in->n; i++) {
		const char *s = in->buf + in->off[i];
		size_t n = in->ln[i];
		int hi, lo;
		if (n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && (hi = hexval(s[3])) >= 0 &&
		    (lo = hexval(s[4])) >= 0) {
			bytes[nb++] = (char)(hi << 4 | lo);
			continue;
		}
		if (flush_bytes(out, bytes, nb) < 0 || tl_add(out, s, n) < 0)
			goto oom;
		nb = 0;
	}
	if (flush_bytes(out, bytes, nb) < 0)
		goto oom;
	free(bytes);
	return 0;
oom:
	free(bytes);
	return -1;
}

static int dec_fuse(const struct tlist *in, struct tlist *out)
{
	if (tl_begin(out) < 0)
		return -1;
	for (size_t i = 0; i < in->n; i++)
		if (tl_bytes(out, in->buf + in->off[i], in->ln[i]) < 0)
			return -1;
	tl_end(out);
	return 0;
}

static int dec_strip(const struct tk_dec *d, const struct tlist *in, struct tlist *out)
{
	for (size_t i = 0; i < in->n; i++) {
		const char *s = in->buf + in->off[i];
		size_t n = in->ln[i], nch = 0;
		size_t *pos = malloc((n + 1) * sizeof *pos);
		uint32_t *cps = malloc((n + 1) * sizeof *cps);
		if (!pos || !cps) {
			free(pos);
			free(cps);
			return -1;
		}
		for (size_t k = 0; k < n;) {
			size_t cl;
			pos[nch] = k;
			cps[nch++] = tk_utf8_get(s + k, &cl);
			k += cl;
		}
		pos[nch] = n;
		size_t start_cut = 0, stop_cut = nch;
		for (size_t k = 0; k < d->start && k < nch; k++) {
			if (cps[k] != d->strip_char)
				break;
			start_cut = k + 1;
		}
		for (size_t k = 0; k < d->stop && k < nch; k++) {
			size_t idx = nch - k - 1;
			if (cps[idx] != d->strip_char)
				break;
			stop_cut = idx;
		}
		if (stop_cut < start_cut)
			stop_cut = start_cut;
		int rc = tl_add(out, s + pos[start_cut], pos[stop_cut] - pos[start_cut]);
		free(pos);
		free(cps);
		if (rc < 0)
			return -1;
	}
	return 0;
}

static int dec_metaspace(const struct tk_dec *d, const struct tlist *in, struct tlist *out)
{
	for (size_t i = 0; i < in->n; i++) {
		const char *s = in->buf + in->off[i];
		size_t n = in->ln[i];
		if (tl_begin(out) < 0)
			return -1;
		for (size_t k = 0; k < n;) {
			size_t cl;
			uint32_t cp = tk_utf8_get(s + k, &cl);
			if (cp == d->repl) {
				/* HF drops every replacement char of the first token. */
				if (!(i == 0 && d->prepend != TK_PREPEND_NEVER) && tl_bytes(out, " ", 1) < 0)
					return -1;
			} else if (tl_bytes(out, s + k, cl) < 0) {
				return -1;
			}
			k += cl;
		}
		tl_end(out);
	}
	return 0;
}

int tk_decode_tokens(const struct tokenizer *tk, const char **toks, const size_t *lens, size_t n, char **text,
		     size_t *len, struct err *err)
{
	struct tlist cur = { 0 }, next = { 0 };
	struct tk_scratch *sc = NULL;
	int rc = -1;
	for (size_t i = 0; i < n; i++)
		if (tl_add(&cur, toks[i], lens[i]) < 0)
			goto oom;
	if (!tk->has_decoder) {
		struct tlist j = { 0 };
		if (tl_begin(&j) < 0)
			goto oom;
		for (size_t i = 0; i < cur.n; i++)
			if ((i && tl_bytes(&j, " ", 1) < 0) || tl_bytes(&j, cur.buf + cur.off[i], cur.ln[i]) < 0) {
				tl_free(&j);
				goto oom;
			}
		tl_end(&j);
		tl_free(&cur);
		cur = j;
	}
	for (size_t k = 0; tk->has_decoder && k < tk->ndec; k++) {
		const struct tk_dec *d = &tk->dec[k];
		int r = 0;
		switch (d->kind) {
		case TK_DEC_BYTELEVEL:
			r = dec_bytelevel(&cur, &next);
			break;
		case TK_DEC_REPLACE:
			if (d->re && !sc && !(sc = tk_scratch_new()))
				goto oom;
			if (dec_replace(d, &cur, &next, sc, err) < 0)
				goto fail;
			break;
		case TK_DEC_BYTEFALLBACK:
			r = dec_bytefallback(&cur, &next);
			break;
		case TK_DEC_FUSE:
			r = dec_fuse(&cur, &next);
			break;
		case TK_DEC_STRIP:
			r = dec_strip(d, &cur, &next);
			break;
		case TK_DEC_METASPACE:
			r = dec_metaspace(d, &cur, &next);
			break;
		}
		if (r < 0)
			goto oom;
		tl_free(&cur);
		cur = next;
		memset(&next, 0, sizeof next);
	}
	size_t total = 0;
	for (size_t i = 0; i < cur.n; i++)
		total += cur.ln[i];
	char *t = malloc(total + 1);
	if (!t)
		goto oom;
	size_t p = 0;
	for (size_t i = 0; i < cur.n; i++) {
		if (cur.ln[i])
			memcpy(t + p, cur.buf + cur.off[i], cur.ln[i]);
		p += cur.ln[i];
	}
	t[p] = 0;
	*text = t;
	*len = p;
	rc = 0;
	goto fail;
oom:
	err_sys(err, "out of memory");
fail:
	tl_free(&cur);
	tl_free(&next);
	tk_scratch_free(sc);
	return rc;
}

int tokenizer_decode(const struct tokenizer *tk, const uint32_t *ids, size_t n, int skip_special, char **text,
		     size_t *len, struct err *err)
{
	const char **toks = malloc((n + 1) * sizeof *toks);
	size_t *lens = malloc((n + 1) * sizeof *lens), k = 0;
	if (!toks || !lens) {
		free(toks);
		free(lens);
		return err_sys(err, "out of memory");
	}
	for (size_t i = 0; i < n; i++) {
		uint32_t id = ids[i];
		if (id >= tk->vocab_size || !tk->id_str[id])
			continue; /* HF drops ids it does not know */
		if (skip_special && tk->id_special[id])
			continue;
		toks[k] = tk->id_str[id];
		lens[k++] = tk->id_len[id];
	}
	int rc = tk_decode_tokens(tk, toks, lens, k, text, len, err);
	free(toks);
	free(lens);
	return rc;
}
