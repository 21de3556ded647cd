#include "jsonl.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

struct jsonl_reader {
	FILE *f;
	int own;      /* opened by jsonl_open, so closed by jsonl_close */
	char *name;
	char *buf;    /* getline's buffer, reused: lines may be of any length */
	size_t cap;
	long lineno;  /* lines read so far */
	long recline; /* line of the record (or bad line) last returned */
};

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
	return r;
}

void jsonl_close(struct jsonl_reader *r)
{
	if (!r)
		return;
	if (r->own)
		fclose(r->f);
	free(r->buf);
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

/* Offset of the first byte that is not part of well-formed UTF-8 (RFC 3629:
 * no overlongs, no surrogates, nothing above U+10FFFF), or -1. jq would
 * silently turn such bytes into U+FFFD, which would move every byte offset
 * after them; a record is refused instead. */
static long bad_utf8_at(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
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
	return -1;
}

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
			size_t j = i + 1;
			while (j < n && s[j] != '"')
				j += s[j] == '\\' ? 2 : 1;
			if (j >= n)
				return -1; /* unfinished: jq reports that without leaking */
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

static int jsonl_parse_line(struct jsonl_reader *r, char *line, size_t len, jv *out, struct err *err)
{
	if (len > INT_MAX)
		return jsonl_errf(r, err, "line too long (%zu bytes)", len);
	const char *why;
	long at = jsonl_unsafe_at(line, len, &why);
	if (at >= 0)
		return jsonl_errf(r, err, "%s at column %ld", why, at + 1);
	jv v = jv_parse_sized(line, (int)len);
	if (!jv_is_valid(v)) {
		char why[512];
		jsonl_jq_message(v, why, sizeof why);
		if (strcmp(why, "Unexpected extra JSON values") == 0)
			return jsonl_errf(r, err, "more than one JSON value on the line");
		return jsonl_errf(r, err, "not valid JSON: %s", why);
	}
	if (jv_get_kind(v) != JV_KIND_OBJECT) {
		jv_kind k = jv_get_kind(v);
		jv_free(v);
		return jsonl_errf(r, err, "expected an object, got %s", jv_kind_name(k));
	}
	*out = v;
	return 1;
}

int jsonl_next(struct jsonl_reader *r, jv *out, struct err *err)
{
	for (;;) {
		errno = 0;
		ssize_t n = getline(&r->buf, &r->cap, r->f);
		if (n < 0) {
			if (ferror(r->f)) {
				r->recline = r->lineno + 1;
				return err_sys(err, "%s:%ld: read error:", r->name, r->recline);
			}
			return 0;
		}
		r->lineno++;
		r->recline = r->lineno;
		char *line = r->buf;
		size_t len = (size_t)n;
		if (len && line[len - 1] == '\n')
			len--;
		if (len && line[len - 1] == '\r') /* files written on Windows */
			len--;
		line[len] = '\0';
		/* A byte-order mark some editors put at the top of a file. */
		if (r->lineno == 1 && len >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) {
			line += 3;
			len -= 3;
		}
		size_t k = 0;
		while (k < len && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r'))
			k++;
		if (k == len)
			continue; /* blank lines separate nothing but are common at the end */
		return jsonl_parse_line(r, line, len, out, err);
	}
}

int jsonl_write(FILE *f, jv v, struct err *err)
{
	if (!jv_is_valid(v)) {
		jv_free(v);
		return err_set(err, "cannot write an invalid JSON value");
	}
	/* flags 0: compact, keys in their order, and no JV_PRINT_ASCII, so text
	 * stays UTF-8 rather than \u escapes (byte offsets into it stay meaningful). */
	jv s = jv_dump_string(v, 0);
	const char *p = jv_string_value(s);
	size_t n = (size_t)jv_string_length_bytes(jv_copy(s));
	int ok = fwrite(p, 1, n, f) == n && putc('\n', f) != EOF;
	jv_free(s);
	if (!ok)
		return err_sys(err, "write error:");
	return 0;
}
