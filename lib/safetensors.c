/* safetensors: the reader and the writer. The layout is described in
 * safetensors.h.
 *
 * Reading checks a file in four passes, each trusting only what the one
 * before it proved: the header length against the file; the JSON through
 * jsonl_parse (NUL bytes, UTF-8, syntax); a strict re-scan of the same text
 * for what jq 1.6 lets through or hides (duplicate keys, which it silently
 * merges; "nan", raw control characters and lone surrogates, which the Rust
 * library refuses); then each entry's dtype, shape and offsets, and last the
 * coverage of the data section. The coverage rule is the Rust library's
 * (safetensors 0.8, Metadata::validate): entries sorted by (begin, end) must
 * each begin where the one before ended, starting at 0, and the last must end
 * at the end of the file, so no byte is shared and none is left over.
 *
 * Numbers come from jq as doubles; every integer this format holds (a
 * dimension, an offset) is accepted only up to 2^53, where doubles are exact.
 * The Rust library accepts up to 2^64 - 1, but a larger offset cannot point
 * into a real file, and a larger dimension only fits a zero-size tensor.
 *
 * Writing reproduces the Rust library's serializer byte for byte: tensors in
 * descending order of its Dtype enum (roughly: widest first), then by name;
 * compact JSON with "__metadata__" first and each entry's keys in the order
 * dtype, shape, data_offsets; strings escaped as serde_json does; the header
 * padded with spaces to a multiple of 8.
 */
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <utf8proc.h>

#include "half.h"
#include "jsonl.h"
#include "outfile.h"
#include "wholefile.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c reads little-endian values by copying them; port the byte order first"
#endif

#define ST_HEADER_MAX 100000000u /* the Rust library's MAX_HEADER_SIZE */
#define ST_INT_MAX 9007199254740992.0 /* 2^53: integers above are not exact in a double */
#define ST_INDEX_MAX ((size_t)64 << 20)

/* ---- dtypes ---- */

static const struct {
	const char *name;
	size_t size;
	int rank; /* position in the Rust library's Dtype enum: the writer's order */
} dtypes[ST_DTYPE_COUNT] = {
	[ST_BOOL] = {"BOOL", 1, 0},
	[ST_U8] = {"U8", 1, 4},
	[ST_I8] = {"I8", 1, 5},
	[ST_F8_E5M2] = {"F8_E5M2", 1, 6},
	[ST_F8_E4M3] = {"F8_E4M3", 1, 7},
	[ST_I16] = {"I16", 2, 11},
	[ST_U16] = {"U16", 2, 12},
	[ST_F16] = {"F16", 2, 13},
	[ST_BF16] = {"BF16", 2, 14},
	[ST_I32] = {"I32", 4, 15},
	[ST_U32] = {"U32", 4, 16},
	[ST_F32] = {"F32", 4, 17},
	[ST_F64] = {"F64", 8, 19},
	[ST_I64] = {"I64", 8, 20},
	[ST_U64] = {"U64", 8, 21},
};

/* Names the format defines that lorapipe does not read, for a clearer refusal. */
static const char *const unsupported_dtypes[] = {
	"F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64",
};

const char *st_dtype_name(enum st_dtype t)
{
	return (unsigned)t < ST_DTYPE_COUNT ? dtypes[t].name : "?";
}

int st_dtype_parse(const char *name)
{
	for (int i = 0; i < ST_DTYPE_COUNT; i++)
		if (strcmp(name, dtypes[i].name) == 0)
			return i;
	return -1;
}

size_t st_dtype_size(enum st_dtype t)
{
	return (unsigned)t < ST_DTYPE_COUNT ? dtypes[t].size : 0;
}

/* ---- the reader's state ---- */

struct st_file {
	char *name;     /* the path, as messages show it */
	const void *map; /* NULL for st_open_mem */
	size_t map_len;
	const uint8_t *base;
	size_t size;
};

struct safetensors {
	struct st_file *files;
	int n_files;
	struct st_tensor *t; /* sorted by name once all files are read */
	int64_t n, cap;
	char **meta; /* key, value, key, value ... sorted by key */
	size_t n_meta;
};

static void *xrealloc(void *p, size_t n, struct err *err)
{
	void *q = realloc(p, n ? n : 1);
	if (!q)
		err_sys(err, "out of memory");
	return q;
}

static char *xstrndup(const char *s, size_t n, struct err *err)
{
	char *p = malloc(n + 1);
	if (!p) {
		err_sys(err, "out of memory");
		return NULL;
	}
	memcpy(p, s, n);
	p[n] = 0;
	return p;
}

/* ---- the strict re-scan ---- */

/* A recursive-descent pass over text jq has already accepted, holding it to
 * RFC 8259 and finding duplicate keys. Nesting deeper than a header needs
 * (root, entry, shape) is refused before the recursion can grow. */
struct scan {
	const char *s;
	size_t n, i;
	const char *file;
	struct err *err;
	size_t frac_at; /* first number written with a fraction or exponent, or SIZE_MAX */
	size_t frac_len;
};

#define SCAN_DEPTH 8

static int scan_fail(struct scan *x, const char *what)
{
	return err_set(x->err, "%s: bad JSON: %s at byte %zu", x->file, what, x->i);
}

static void scan_ws(struct scan *x)
{
	while (x->i < x->n && (x->s[x->i] == ' ' || x->s[x->i] == '\t' || x->s[x->i] == '\n' || x->s[x->i] == '\r'))
		x->i++;
}

/* A string at x->i, decoded into a new buffer (*out, *len) when out is set. */
static int scan_string(struct scan *x, char **out, size_t *len)
{
	if (x->i >= x->n || x->s[x->i] != '"')
		return scan_fail(x, "expected a string");
	size_t start = ++x->i, end = start;
	while (end < x->n && x->s[end] != '"')
		end += x->s[end] == '\\' ? 2 : 1;
	if (end >= x->n)
		return scan_fail(x, "unfinished string");
	char *o = NULL;
	size_t k = 0;
	if (out) {
		o = malloc(end - start + 1);
		if (!o)
			return err_sys(x->err, "out of memory");
	}
	while (x->i < end) {
		unsigned char c = (unsigned char)x->s[x->i];
		if (c < 0x20) {
			free(o);
			return scan_fail(x, "control character in a string");
		}
		if (c != '\\') {
			if (o)
				o[k++] = (char)c;
			x->i++;
			continue;
		}
		char e = x->s[x->i + 1];
		const char *simple = strchr("\"\\/bfnrt", e);
		if (e && simple) {
			static const char decoded[] = "\"\\/\b\f\n\r\t";
			if (o)
				o[k++] = decoded[simple - "\"\\/bfnrt"];
			x->i += 2;
			continue;
		}
		unsigned cp, lo;
		if (e != 'u' || x->i + 6 > end || jsonl_hex4(x->s + x->i + 2, &cp) < 0) {
			free(o);
			return scan_fail(x, "bad escape in a string");
		}
		x->i += 6;
		if (cp >= 0xdc00 && cp < 0xe000) {
			free(o);
			return scan_fail(x, "lone low surrogate escape");
		}
		if (cp >= 0xd800 && cp < 0xdc00) {
			if (x->i + 6 > end || x->s[x->i] != '\\' || x->s[x->i + 1] != 'u' ||
			    jsonl_hex4(x->s + x->i + 2, &lo) < 0 || lo < 0xdc00 || lo >= 0xe000) {
				free(o);
				return scan_fail(x, "lone high surrogate escape");
			}
			x->i += 6;
			cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
		}
		if (o)
			k += (size_t)utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)o + k);
	}
	x->i = end + 1;
	if (o) {
		o[k] = 0;
		*out = o;
		*len = k;
	}
	return 0;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int scan_number(struct scan *x)
{
	size_t start = x->i;
	int plain = 1;
	if (x->i < x->n && x->s[x->i] == '-')
		x->i++;
	if (x->i >= x->n || !is_digit(x->s[x->i]))
		return scan_fail(x, "bad number");
	if (x->s[x->i] == '0')
		x->i++;
	else
		while (x->i < x->n && is_digit(x->s[x->i]))
			x->i++;
	if (x->i < x->n && x->s[x->i] == '.') {
		plain = 0;
		x->i++;
		if (x->i >= x->n || !is_digit(x->s[x->i]))
			return scan_fail(x, "bad number");
		while (x->i < x->n && is_digit(x->s[x->i]))
			x->i++;
	}
	if (x->i < x->n && (x->s[x->i] == 'e' || x->s[x->i] == 'E')) {
		plain = 0;
		x->i++;
		if (x->i < x->n && (x->s[x->i] == '+' || x->s[x->i] == '-'))
			x->i++;
		if (x->i >= x->n || !is_digit(x->s[x->i]))
			return scan_fail(x, "bad number");
		while (x->i < x->n && is_digit(x->s[x->i]))
			x->i++;
	}
	if (!plain && x->frac_at == SIZE_MAX) {
		x->frac_at = start;
		x->frac_len = x->i - start;
	}
	return 0;
}

struct key {
	char *s;
	size_t len;
};

static int cmp_key(const void *a, const void *b)
{
	const struct key *p = a, *q = b;
	int c = memcmp(p->s, q->s, p->len < q->len ? p->len : q->len);
	return c ? c : (p->len > q->len) - (p->len < q->len);
}

static int scan_value(struct scan *x, int depth, const char *parent);

/* Reports a duplicate key: at the top a tensor name, below it a key of the
 * entry (or of __metadata__) named parent. */
static int scan_duplicate(struct scan *x, const char *parent, const struct key *k)
{
	if (!parent) {
		if (strcmp(k->s, "__metadata__") == 0)
			return err_set(x->err, "%s: __metadata__ appears twice in the header", x->file);
		return err_set(x->err, "%s: tensor '%s': appears twice in the header", x->file, k->s);
	}
	if (strcmp(parent, "__metadata__") == 0)
		return err_set(x->err, "%s: __metadata__: key '%s' appears twice", x->file, k->s);
	return err_set(x->err, "%s: tensor '%s': key '%s' appears twice", x->file, parent, k->s);
}

static int scan_object(struct scan *x, int depth, const char *parent)
{
	struct key *keys = NULL;
	size_t n = 0, cap = 0;
	int rc = -1;
	x->i++; /* { */
	scan_ws(x);
	if (x->i < x->n && x->s[x->i] == '}') {
		x->i++;
		return 0;
	}
	for (;;) {
		if (n == cap) {
			cap = cap ? cap * 2 : 8;
			struct key *k = xrealloc(keys, cap * sizeof *keys, x->err);
			if (!k)
				goto out;
			keys = k;
		}
		scan_ws(x);
		if (scan_string(x, &keys[n].s, &keys[n].len) < 0)
			goto out;
		n++;
		scan_ws(x);
		if (x->i >= x->n || x->s[x->i] != ':') {
			scan_fail(x, "expected ':'");
			goto out;
		}
		x->i++;
		scan_ws(x);
		/* Below the top, the context is the tensor (or __metadata__) this value belongs to. */
		if (scan_value(x, depth + 1, parent ? parent : keys[n - 1].s) < 0)
			goto out;
		scan_ws(x);
		if (x->i < x->n && x->s[x->i] == ',') {
			x->i++;
			continue;
		}
		if (x->i < x->n && x->s[x->i] == '}') {
			x->i++;
			break;
		}
		scan_fail(x, "expected ',' or '}'");
		goto out;
	}
	qsort(keys, n, sizeof *keys, cmp_key);
	for (size_t j = 1; j < n; j++)
		if (cmp_key(&keys[j - 1], &keys[j]) == 0) {
			scan_duplicate(x, parent, &keys[j]);
			goto out;
		}
	rc = 0;
out:
	for (size_t j = 0; j < n; j++)
		free(keys[j].s);
	free(keys);
	return rc;
}

static int scan_array(struct scan *x, int depth, const char *parent)
{
	x->i++; /* [ */
	scan_ws(x);
	if (x->i < x->n && x->s[x->i] == ']') {
		x->i++;
		return 0;
	}
	for (;;) {
		scan_ws(x);
		if (scan_value(x, depth + 1, parent) < 0)
			return -1;
		scan_ws(x);
		if (x->i < x->n && x->s[x->i] == ',') {
			x->i++;
			continue;
		}
		if (x->i < x->n && x->s[x->i] == ']') {
			x->i++;
			return 0;
		}
		return scan_fail(x, "expected ',' or ']'");
	}
}

static int scan_literal(struct scan *x, const char *word)
{
	size_t len = strlen(word);
	if (x->n - x->i < len || memcmp(x->s + x->i, word, len) != 0)
		return scan_fail(x, "not a JSON value");
	x->i += len;
	return 0;
}

static int scan_value(struct scan *x, int depth, const char *parent)
{
	if (depth > SCAN_DEPTH)
		return scan_fail(x, "nested too deeply");
	if (x->i >= x->n)
		return scan_fail(x, "expected a value");
	switch (x->s[x->i]) {
	case '{':
		return scan_object(x, depth, parent);
	case '[':
		return scan_array(x, depth, parent);
	case '"':
		return scan_string(x, NULL, NULL);
	case 't':
		return scan_literal(x, "true");
	case 'f':
		return scan_literal(x, "false");
	case 'n':
		return scan_literal(x, "null");
	default:
		return scan_number(x);
	}
}

static int scan_header(const char *s, size_t n, const char *file, size_t *frac_at, size_t *frac_len,
		       struct err *err)
{
	struct scan x = {s, n, 0, file, err, SIZE_MAX, 0};
	scan_ws(&x);
	if (scan_value(&x, 0, NULL) < 0)
		return -1;
	scan_ws(&x);
	if (x.i != n)
		return scan_fail(&x, "more after the header's object");
	*frac_at = x.frac_at;
	*frac_len = x.frac_len;
	return 0;
}

/* ---- entries ---- */

/* An integer of the header: a JSON number, integral, 0 <= v <= 2^53. */
static int get_uint(jv v, uint64_t *out)
{
	if (jv_get_kind(v) != JV_KIND_NUMBER)
		return -1;
	double d = jv_number_value(v);
	if (!(d >= 0 && d <= ST_INT_MAX) || d != floor(d))
		return -1;
	*out = (uint64_t)d;
	return 0;
}

static void describe(jv v, char *buf, size_t n)
{
	if (jv_get_kind(v) == JV_KIND_NUMBER)
		snprintf(buf, n, "%.15g", jv_number_value(v));
	else
		snprintf(buf, n, "a JSON %s", jv_kind_name(jv_get_kind(v)));
}

static int parse_dtype(jv v, const char *file, const char *name, enum st_dtype *out, struct err *err)
{
	if (jv_get_kind(v) != JV_KIND_STRING)
		return err_set(err, "%s: tensor '%s': dtype is a JSON %s, not a string", file, name,
			       jv_kind_name(jv_get_kind(v)));
	const char *s = jv_string_value(v);
	int t = st_dtype_parse(s);
	if (t >= 0 && (size_t)jv_string_length_bytes(jv_copy(v)) == strlen(s)) {
		*out = (enum st_dtype)t;
		return 0;
	}
	for (size_t i = 0; i < sizeof unsupported_dtypes / sizeof *unsupported_dtypes; i++)
		if (strcmp(s, unsupported_dtypes[i]) == 0)
			return err_set(err, "%s: tensor '%s': dtype %s is not supported", file, name, s);
	return err_set(err, "%s: tensor '%s': unknown dtype '%.40s'", file, name, s);
}

static int parse_shape(jv v, const char *file, struct st_tensor *t, struct err *err)
{
	if (jv_get_kind(v) != JV_KIND_ARRAY)
		return err_set(err, "%s: tensor '%s': shape is a JSON %s, not an array", file, t->name,
			       jv_kind_name(jv_get_kind(v)));
	int n = jv_array_length(jv_copy(v));
	if (n > ST_MAX_DIMS)
		return err_set(err, "%s: tensor '%s': shape has %d dimensions, more than %d", file, t->name, n,
			       ST_MAX_DIMS);
	/* The element count folds as the Rust library's does (overflow is an
	 * error even when a later dimension is 0). */
	uint64_t elems = 1;
	int overflow = 0;
	for (int i = 0; i < n; i++) {
		jv d = jv_array_get(jv_copy(v), i);
		uint64_t u;
		int bad = get_uint(d, &u);
		char what[64];
		describe(d, what, sizeof what);
		jv_free(d);
		if (bad)
			return err_set(err, "%s: tensor '%s': shape[%d] is %s, not an integer in [0, 2^53]", file,
				       t->name, i, what);
		t->shape[i] = (int64_t)u;
		if (__builtin_mul_overflow(elems, u, &elems))
			overflow = 1;
	}
	t->n_dims = n;
	if (overflow || elems > (uint64_t)INT64_MAX || elems > UINT64_MAX / 8 / dtypes[t->dtype].size)
		return err_set(err, "%s: tensor '%s': the element count of its shape overflows", file, t->name);
	t->n_elems = (int64_t)elems;
	return 0;
}

static int parse_offsets(jv v, const char *file, const struct st_tensor *t, uint64_t *begin, uint64_t *end,
			 struct err *err)
{
	if (jv_get_kind(v) != JV_KIND_ARRAY || jv_array_length(jv_copy(v)) != 2)
		return err_set(err, "%s: tensor '%s': data_offsets is not an array of two integers", file, t->name);
	uint64_t o[2];
	for (int i = 0; i < 2; i++) {
		jv d = jv_array_get(jv_copy(v), i);
		char what[64];
		describe(d, what, sizeof what);
		int bad = get_uint(d, &o[i]);
		jv_free(d);
		if (bad)
			return err_set(err, "%s: tensor '%s': data_offsets[%d] is %s, not an integer in [0, 2^53]",
				       file, t->name, i, what);
	}
	*begin = o[0];
	*end = o[1];
	return 0;
}

/* Appends the tensor NAME described by entry (both consumed) to st. */
static int add_tensor(struct safetensors *st, const struct st_file *f, size_t data_start, jv name, jv entry,
		      struct err *err)
{
	const char *file = f->name;
	int rc = -1;
	struct st_tensor t = {0};
	const char *nm = jv_string_value(name);
	if ((size_t)jv_string_length_bytes(jv_copy(name)) != strlen(nm)) {
		err_set(err, "%s: tensor '%s': name holds a NUL character", file, nm);
		goto out;
	}
	if (!nm[0]) {
		err_set(err, "%s: a tensor has an empty name", file);
		goto out;
	}
	if (jv_get_kind(entry) != JV_KIND_OBJECT) {
		err_set(err, "%s: tensor '%s': entry is a JSON %s, not an object", file, nm,
			jv_kind_name(jv_get_kind(entry)));
		goto out;
	}
	static const char *const fields[] = {"dtype", "shape", "data_offsets"};
	jv have[3];
	for (int i = 0; i < 3; i++)
		have[i] = jv_object_get(jv_copy(entry), jv_string(fields[i]));
	const char *unknown = NULL;
	jv unknown_key = jv_null();
	jv_object_foreach(entry, k, val)
	{
		const char *ks = jv_string_value(k);
		if (!unknown && strcmp(ks, "dtype") && strcmp(ks, "shape") && strcmp(ks, "data_offsets")) {
			unknown_key = jv_copy(k);
			unknown = jv_string_value(unknown_key);
		}
		jv_free(k);
		jv_free(val);
	}
	uint64_t begin = 0, end = 0;
	if (unknown)
		err_set(err, "%s: tensor '%s': unknown key '%.40s' in its entry", file, nm, unknown);
	else if (!jv_is_valid(have[0]) || !jv_is_valid(have[1]) || !jv_is_valid(have[2]))
		err_set(err, "%s: tensor '%s': entry lacks '%s'", file, nm,
			!jv_is_valid(have[0]) ? "dtype" : !jv_is_valid(have[1]) ? "shape" : "data_offsets");
	else {
		t.name = nm;
		if (parse_dtype(have[0], file, nm, &t.dtype, err) == 0 && parse_shape(have[1], file, &t, err) == 0 &&
		    parse_offsets(have[2], file, &t, &begin, &end, err) == 0)
			rc = 0;
	}
	jv_free(unknown_key);
	for (int i = 0; i < 3; i++)
		jv_free(have[i]);
	if (rc < 0)
		goto out;
	rc = -1;
	size_t data_len = f->size - data_start;
	t.nbytes = (size_t)t.n_elems * dtypes[t.dtype].size;
	if (end < begin) {
		err_set(err, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin", file,
			nm, begin, end);
		goto out;
	}
	if (end > data_len) {
		err_set(err, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] run past the end of the data (%zu bytes)",
			file, nm, begin, end, data_len);
		goto out;
	}
	if (end - begin != t.nbytes) {
		err_set(err, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
			     " bytes, its dtype and shape need %zu",
			file, nm, begin, end, end - begin, t.nbytes);
		goto out;
	}
	t.data = f->base + data_start + begin;
	t.file = f->name;
	if (st->n == st->cap) {
		int64_t cap = st->cap ? st->cap * 2 : 16;
		struct st_tensor *p = xrealloc(st->t, (size_t)cap * sizeof *p, err);
		if (!p)
			goto out;
		st->t = p;
		st->cap = cap;
	}
	t.name = xstrndup(nm, strlen(nm), err);
	if (!t.name)
		goto out;
	st->t[st->n++] = t;
	rc = 0;
out:
	jv_free(name);
	jv_free(entry);
	return rc;
}

/* __metadata__ (consumed): an object of strings, kept when keep is set. */
static int parse_metadata(struct safetensors *st, const char *file, jv v, int keep, struct err *err)
{
	if (jv_get_kind(v) != JV_KIND_OBJECT) {
		err_set(err, "%s: __metadata__ is a JSON %s, not an object", file, jv_kind_name(jv_get_kind(v)));
		jv_free(v);
		return -1;
	}
	int rc = 0;
	jv_object_foreach(v, k, val)
	{
		const char *ks = jv_string_value(k);
		if (rc < 0) {
		} else if ((size_t)jv_string_length_bytes(jv_copy(k)) != strlen(ks)) {
			rc = err_set(err, "%s: __metadata__: a key holds a NUL character", file);
		} else if (jv_get_kind(val) != JV_KIND_STRING) {
			rc = err_set(err, "%s: __metadata__: value of '%s' is a JSON %s, not a string", file, ks,
				     jv_kind_name(jv_get_kind(val)));
		} else if ((size_t)jv_string_length_bytes(jv_copy(val)) != strlen(jv_string_value(val))) {
			rc = err_set(err, "%s: __metadata__: value of '%s' holds a NUL character", file, ks);
		} else if (keep) {
			char **m = xrealloc(st->meta, (st->n_meta + 1) * 2 * sizeof *m, err);
			if (!m) {
				rc = -1;
			} else {
				st->meta = m;
				m[2 * st->n_meta] = xstrndup(ks, strlen(ks), err);
				m[2 * st->n_meta + 1] = xstrndup(jv_string_value(val), strlen(jv_string_value(val)), err);
				st->n_meta++;
				if (!m[2 * st->n_meta - 2] || !m[2 * st->n_meta - 1])
					rc = -1;
			}
		}
		jv_free(k);
		jv_free(val);
	}
	jv_free(v);
	return rc;
}

static int cmp_range(const void *a, const void *b)
{
	const struct st_tensor *p = *(const struct st_tensor *const *)a, *q = *(const struct st_tensor *const *)b;
	const uint8_t *pe = (const uint8_t *)p->data + p->nbytes, *qe = (const uint8_t *)q->data + q->nbytes;
	if (p->data != q->data)
		return (const uint8_t *)p->data < (const uint8_t *)q->data ? -1 : 1;
	if (pe != qe)
		return pe < qe ? -1 : 1;
	return strcmp(p->name, q->name);
}

/* The Rust library's rule: sorted by (begin, end), each tensor begins where
 * the one before ended, and the last ends at the end of the file. */
static int check_coverage(struct st_tensor *t, int64_t n, const struct st_file *f, size_t data_start,
			  struct err *err)
{
	const struct st_tensor **by = malloc((size_t)(n ? n : 1) * sizeof *by);
	if (!by)
		return err_sys(err, "out of memory");
	for (int64_t i = 0; i < n; i++)
		by[i] = &t[i];
	qsort(by, (size_t)n, sizeof *by, cmp_range);
	size_t at = 0;
	int rc = 0;
	for (int64_t i = 0; i < n && rc == 0; i++) {
		size_t begin = (size_t)((const uint8_t *)by[i]->data - (f->base + data_start));
		if (begin < at)
			rc = err_set(err, "%s: tensor '%s': its data [%zu, %zu) overlaps tensor '%s'", f->name,
				     by[i]->name, begin, begin + by[i]->nbytes, by[i - 1]->name);
		else if (begin > at)
			rc = err_set(err, "%s: tensor '%s': a hole of %zu bytes no tensor covers lies before its data",
				     f->name, by[i]->name, begin - at);
		at = begin + by[i]->nbytes;
	}
	if (rc == 0 && at != f->size - data_start)
		rc = err_set(err, "%s: %zu bytes after the last tensor's data are covered by no tensor", f->name,
			     f->size - data_start - at);
	free(by);
	return rc;
}

/* Reads one file's header and appends its tensors to st. Messages start with the file's name. */
static int parse_file(struct safetensors *st, const struct st_file *f, int keep_meta, struct err *err)
{
	if (f->size < 8)
		return err_set(err, "%s: %zu bytes, too short for the 8-byte header length", f->name, f->size);
	uint64_t n;
	memcpy(&n, f->base, 8);
	if (n > ST_HEADER_MAX)
		return err_set(err, "%s: header length %" PRIu64 " is over the limit of %u bytes", f->name, n,
			       ST_HEADER_MAX);
	if (n > f->size - 8)
		return err_set(err, "%s: header length %" PRIu64 " runs past the end of the file (%zu bytes)", f->name,
			       n, f->size);
	const char *text = (const char *)f->base + 8;
	jv root;
	if (jsonl_parse(text, (size_t)n, f->name, &root, err) < 0)
		return -1;
	if (jv_get_kind(root) != JV_KIND_OBJECT) {
		err_set(err, "%s: header is a JSON %s, not an object", f->name, jv_kind_name(jv_get_kind(root)));
		jv_free(root);
		return -1;
	}
	size_t frac_at = SIZE_MAX, frac_len = 0;
	if (scan_header(text, (size_t)n, f->name, &frac_at, &frac_len, err) < 0) {
		jv_free(root);
		return -1;
	}
	int64_t first = st->n;
	size_t data_start = 8 + (size_t)n;
	int rc = 0;
	jv_object_foreach(root, k, val)
	{
		if (rc < 0) {
			jv_free(k);
			jv_free(val);
		} else if (strcmp(jv_string_value(k), "__metadata__") == 0) {
			jv_free(k);
			rc = parse_metadata(st, f->name, val, keep_meta, err);
		} else {
			rc = add_tensor(st, f, data_start, k, val, err);
		}
	}
	jv_free(root);
	if (rc == 0 && frac_at != SIZE_MAX)
		rc = err_set(err, "%s: bad JSON: the number %.*s at byte %zu is not written as an integer", f->name,
			     (int)(frac_len < 40 ? frac_len : 40), text + frac_at, frac_at);
	if (rc == 0)
		rc = check_coverage(st->n > first ? st->t + first : NULL, st->n - first, f, data_start, err); /* no tensors: st->t may be NULL */
	return rc;
}

/* ---- opening ---- */

static int map_file(struct st_file *f, const char *path, struct err *err)
{
	memset(f, 0, sizeof *f);
	f->name = xstrndup(path, strlen(path), err);
	if (!f->name)
		return -1;
	const void *map;
	if (wholefile_map(path, &map, &f->size, err) < 0)
		return -1;
	static const uint8_t none[1]; /* an empty file: a header length cannot be read, which is said */
	f->map = map;
	f->map_len = f->size;
	f->base = map ? map : none;
	return 0;
}

void st_close(struct safetensors *st)
{
	if (!st)
		return;
	for (int64_t i = 0; i < st->n; i++)
		free((char *)st->t[i].name);
	free(st->t);
	for (size_t i = 0; i < 2 * st->n_meta; i++)
		free(st->meta[i]);
	free(st->meta);
	for (int i = 0; i < st->n_files; i++) {
		wholefile_unmap(st->files[i].map, st->files[i].map_len);
		free(st->files[i].name);
	}
	free(st->files);
	free(st);
}

static int cmp_tensor_name(const void *a, const void *b)
{
	return strcmp(((const struct st_tensor *)a)->name, ((const struct st_tensor *)b)->name);
}

static int cmp_meta(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorts the name space; a name in two files is an error. */
static int finish(struct safetensors *st, struct err *err)
{
	if (st->n)
		qsort(st->t, (size_t)st->n, sizeof *st->t, cmp_tensor_name);
	for (int64_t i = 1; i < st->n; i++)
		if (strcmp(st->t[i - 1].name, st->t[i].name) == 0)
			return err_set(err, "tensor '%s': in both %s and %s", st->t[i].name, st->t[i - 1].file,
				       st->t[i].file);
	/* pairs sort as one unit: key and value are adjacent */
	if (st->n_meta) {
		struct {
			char *k, *v;
		} *pairs = (void *)st->meta;
		qsort(pairs, st->n_meta, sizeof *pairs, cmp_meta);
	}
	return 0;
}

static struct safetensors *st_new(int n_files, struct err *err)
{
	struct safetensors *st = calloc(1, sizeof *st);
	if (st)
		st->files = calloc((size_t)n_files, sizeof *st->files);
	if (!st || !st->files) {
		free(st);
		err_sys(err, "out of memory");
		return NULL;
	}
	return st;
}

struct safetensors *st_open_mem(const void *buf, size_t len, const char *name, struct err *err)
{
	struct safetensors *st = st_new(1, err);
	if (!st)
		return NULL;
	static const uint8_t none[1];
	struct st_file *f = &st->files[0];
	st->n_files = 1;
	f->name = xstrndup(name, strlen(name), err);
	f->base = buf ? buf : none;
	f->size = buf ? len : 0;
	if (!f->name || parse_file(st, f, 1, err) < 0 || finish(st, err) < 0) {
		st_close(st);
		return NULL;
	}
	return st;
}

static struct safetensors *open_file(const char *path, struct err *err)
{
	struct safetensors *st = st_new(1, err);
	if (!st)
		return NULL;
	st->n_files = 1;
	if (map_file(&st->files[0], path, err) < 0 || parse_file(st, &st->files[0], 1, err) < 0 ||
	    finish(st, err) < 0) {
		st_close(st);
		return NULL;
	}
	return st;
}

static char *join(const char *dir, const char *name, struct err *err)
{
	size_t a = strlen(dir), b = strlen(name);
	char *p = malloc(a + b + 2);
	if (!p) {
		err_sys(err, "out of memory");
		return NULL;
	}
	memcpy(p, dir, a);
	size_t k = a;
	if (a && dir[a - 1] != '/')
		p[k++] = '/';
	memcpy(p + k, name, b + 1);
	return p;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A shard name from the index: a relative path inside the folder. */
static int bad_shard_name(const char *s)
{
	if (!s[0] || s[0] == '/')
		return 1;
	for (const char *p = s; *p; p = strchr(p, '/') ? strchr(p, '/') + 1 : p + strlen(p))
		if (p[0] == '.' && p[1] == '.' && (p[2] == '/' || !p[2]))
			return 1;
	return 0;
}

/* The folder's shards as its index lists them: each name in exactly one
 * shard, which must hold it, and each shard's tensors all listed for it. */
static struct safetensors *open_index(const char *dir, const char *index, struct err *err)
{
	jv root, map = jv_invalid();
	char **shards = NULL;
	size_t n_shards = 0;
	struct safetensors *st = NULL;
	if (jsonl_load(index, ST_INDEX_MAX, &root, err) < 0)
		return NULL;
	if (jv_get_kind(root) == JV_KIND_OBJECT)
		map = jv_object_get(jv_copy(root), jv_string("weight_map"));
	if (jv_get_kind(map) != JV_KIND_OBJECT) {
		err_set(err, "%s: no \"weight_map\" object", index);
		goto fail;
	}
	int n = jv_object_length(jv_copy(map));
	shards = calloc((size_t)n + 1, sizeof *shards);
	if (!shards) {
		err_sys(err, "out of memory");
		goto fail;
	}
	int bad = 0;
	jv_object_foreach(map, k, v)
	{
		if (bad) {
		} else if (jv_get_kind(v) != JV_KIND_STRING) {
			bad = err_set(err, "%s: tensor '%s': shard is a JSON %s, not a file name", index,
				      jv_string_value(k), jv_kind_name(jv_get_kind(v)));
		} else if (bad_shard_name(jv_string_value(v)) ||
			   (size_t)jv_string_length_bytes(jv_copy(v)) != strlen(jv_string_value(v))) {
			bad = err_set(err, "%s: tensor '%s': shard '%s' is not a file in the folder", index,
				      jv_string_value(k), jv_string_value(v));
		} else {
			shards[n_shards] = xstrndup(jv_string_value(v), strlen(jv_string_value(v)), err);
			if (!shards[n_shards++])
				bad = -1;
		}
		jv_free(k);
		jv_free(v);
	}
	if (bad)
		goto fail;
	if (n_shards == 0) {
		err_set(err, "%s: the weight_map lists no tensor", index);
		goto fail;
	}
	qsort(shards, n_shards, sizeof *shards, cmp_str);
	size_t u = 0;
	for (size_t i = 0; i < n_shards; i++) {
		if (u && strcmp(shards[u - 1], shards[i]) == 0) {
			free(shards[i]);
			continue;
		}
		shards[u++] = shards[i];
	}
	n_shards = u;
	st = st_new((int)n_shards, err);
	if (!st)
		goto fail;
	for (size_t i = 0; i < n_shards; i++) {
		char *path = join(dir, shards[i], err);
		if (!path)
			goto fail;
		int rc = map_file(&st->files[i], path, err);
		free(path);
		st->n_files = (int)i + 1;
		if (rc < 0 || parse_file(st, &st->files[i], i == 0, err) < 0)
			goto fail;
	}
	/* every tensor of every shard is listed for that shard */
	for (int64_t i = 0; i < st->n; i++) {
		jv want = jv_object_get(jv_copy(map), jv_string(st->t[i].name));
		const char *base = st->t[i].file + strlen(dir) + (dir[strlen(dir) - 1] != '/');
		if (jv_get_kind(want) != JV_KIND_STRING) {
			err_set(err, "%s: tensor '%s': in shard %s but not in the index", index, st->t[i].name, base);
			jv_free(want);
			goto fail;
		}
		if (strcmp(jv_string_value(want), base) != 0) {
			err_set(err, "%s: tensor '%s': the index places it in %s, but shard %s holds it", index,
				st->t[i].name, jv_string_value(want), base);
			jv_free(want);
			goto fail;
		}
		jv_free(want);
	}
	if (finish(st, err) < 0)
		goto fail;
	/* every listed name is there (its shard, checked above, is the right one) */
	jv_object_foreach(map, k, v)
	{
		if (!bad && !st_find(st, jv_string_value(k)))
			bad = err_set(err, "%s: tensor '%s': shard %s does not hold it", index, jv_string_value(k),
				      jv_string_value(v));
		jv_free(k);
		jv_free(v);
	}
	if (bad)
		goto fail;
	for (size_t i = 0; i < n_shards; i++)
		free(shards[i]);
	free(shards);
	jv_free(map);
	jv_free(root);
	return st;
fail:
	for (size_t i = 0; shards && i < n_shards; i++)
		free(shards[i]);
	free(shards);
	jv_free(map);
	jv_free(root);
	st_close(st);
	return NULL;
}

static int ends_with(const char *s, const char *tail)
{
	size_t a = strlen(s), b = strlen(tail);
	return a >= b && strcmp(s + a - b, tail) == 0;
}

/* A folder without an index: model.safetensors, else its only *.safetensors. */
static struct safetensors *open_single_in(const char *dir, struct err *err)
{
	char *path = join(dir, "model.safetensors", err);
	if (!path)
		return NULL;
	struct stat sb;
	if (stat(path, &sb) == 0) {
		struct safetensors *st = open_file(path, err);
		free(path);
		return st;
	}
	free(path);
	DIR *d = opendir(dir);
	if (!d) {
		err_set(err, "%s: %s", dir, strerror(errno));
		return NULL;
	}
	char **names = NULL;
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!ends_with(e->d_name, ".safetensors") || e->d_name[0] == '.')
			continue;
		char **p = xrealloc(names, (n + 1) * sizeof *names, err);
		if (!p || !(p[n] = xstrndup(e->d_name, strlen(e->d_name), err))) {
			names = p ? p : names;
			goto fail;
		}
		names = p;
		n++;
	}
	closedir(d);
	d = NULL;
	struct safetensors *st = NULL;
	if (n == 0) {
		err_set(err, "%s: no model.safetensors.index.json and no .safetensors file", dir);
	} else if (n > 1) {
		qsort(names, n, sizeof *names, cmp_str);
		char list[512] = "";
		size_t k = 0;
		for (size_t i = 0; i < n && k < sizeof list - 1; i++)
			k += (size_t)snprintf(list + k, sizeof list - k, "%s%s", i ? ", " : "", names[i]);
		err_set(err, "%s: %zu .safetensors files and no model.safetensors.index.json to join them: %s", dir, n,
			list);
	} else if ((path = join(dir, names[0], err))) {
		st = open_file(path, err);
		free(path);
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return st;
fail:
	if (d)
		closedir(d);
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return NULL;
}

struct safetensors *st_open(const char *path, struct err *err)
{
	struct stat sb;
	if (stat(path, &sb) < 0) {
		err_set(err, "%s: %s", path, strerror(errno));
		return NULL;
	}
	if (!S_ISDIR(sb.st_mode))
		return open_file(path, err);
	char *index = join(path, "model.safetensors.index.json", err);
	if (!index)
		return NULL;
	struct safetensors *st;
	if (stat(index, &sb) == 0)
		st = open_index(path, index, err);
	else
		st = open_single_in(path, err);
	free(index);
	return st;
}

/* ---- lookups ---- */

int64_t st_n_tensors(const struct safetensors *st) { return st->n; }

const struct st_tensor *st_tensor(const struct safetensors *st, int64_t i)
{
	return i >= 0 && i < st->n ? &st->t[i] : NULL;
}

const struct st_tensor *st_find(const struct safetensors *st, const char *name)
{
	int64_t lo = 0, hi = st->n;
	while (lo < hi) {
		int64_t mid = lo + (hi - lo) / 2;
		int c = strcmp(st->t[mid].name, name);
		if (c == 0)
			return &st->t[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

const char *st_metadata(const struct safetensors *st, const char *key)
{
	size_t lo = 0, hi = st->n_meta;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(st->meta[2 * mid], key);
		if (c == 0)
			return st->meta[2 * mid + 1];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

int st_read_f32(const struct st_tensor *t, int64_t start, int64_t n, float *out, struct err *err)
{
	if (start < 0 || n < 0 || start > t->n_elems || n > t->n_elems - start)
		return err_set(err, "%s: elements [%" PRId64 ", %" PRId64 ") are outside its %" PRId64, t->name,
			       start, start + n, t->n_elems);
	const uint8_t *p = (const uint8_t *)t->data + (size_t)start * dtypes[t->dtype].size;
	switch (t->dtype) {
	case ST_F32:
		if (n)
			memcpy(out, p, (size_t)n * 4);
		return 0;
	case ST_F16:
	case ST_BF16:
		for (int64_t i = 0; i < n; i++) {
			uint16_t h;
			memcpy(&h, p + 2 * i, 2);
			out[i] = t->dtype == ST_F16 ? f16_to_f32(h) : bf16_to_f32(h);
		}
		return 0;
	case ST_F64:
		for (int64_t i = 0; i < n; i++) {
			double d;
			memcpy(&d, p + 8 * i, 8);
			out[i] = (float)d;
		}
		return 0;
	default:
		return err_set(err, "%s: dtype %s is not a float type", t->name, st_dtype_name(t->dtype));
	}
}

void st_release(const struct safetensors *st, const struct st_tensor *t)
{
	long page = sysconf(_SC_PAGESIZE);
	if (!st || !t || t->nbytes == 0 || page <= 0)
		return;
	uintptr_t p = (uintptr_t)t->data, mask = (uintptr_t)page - 1;
	for (int i = 0; i < st->n_files; i++) {
		const struct st_file *f = &st->files[i];
		uintptr_t lo = (uintptr_t)f->map;
		if (!f->map || p < lo || p - lo >= f->map_len || t->nbytes > f->map_len - (p - lo))
			continue;
		/* whole pages, outward: a neighbour's bytes are re-read if needed */
		uintptr_t a = p & ~mask, b = (p + t->nbytes + mask) & ~mask;
		madvise((void *)a, (size_t)(b - a), MADV_DONTNEED);
		return;
	}
}

/* ---- writing ---- */

struct sbuf {
	char *p;
	size_t n, cap;
	int oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->n + n + 1 > b->cap) {
		size_t cap = (b->n + n + 1) * 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = 1;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
}

static void sb_str(struct sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* A JSON string as serde_json writes it: UTF-8 kept, '"' and '\\' escaped,
 * control characters as \b \t \n \f \r or \u00xx with lower-case hex. */
static void sb_json_str(struct sbuf *b, const char *s)
{
	sb_put(b, "\"", 1);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		char e[8];
		if (*p == '"' || *p == '\\') {
			e[0] = '\\';
			e[1] = (char)*p;
			sb_put(b, e, 2);
		} else if (*p < 0x20) {
			const char *short_form = *p == '\b' ? "\\b" : *p == '\t' ? "\\t" : *p == '\n' ? "\\n"
						 : *p == '\f' ? "\\f" : *p == '\r' ? "\\r" : NULL;
			if (short_form)
				sb_str(b, short_form);
			else {
				snprintf(e, sizeof e, "\\u%04x", *p);
				sb_str(b, e);
			}
		} else {
			sb_put(b, (const char *)p, 1);
		}
	}
	sb_put(b, "\"", 1);
}

static void sb_u64(struct sbuf *b, uint64_t v)
{
	char s[24];
	snprintf(s, sizeof s, "%" PRIu64, v);
	sb_str(b, s);
}

/* Bytes of tensor t, or -1 with err for a shape that is negative or overflows. */
static int64_t out_nbytes(const struct st_out *t, struct err *err)
{
	if ((unsigned)t->dtype >= ST_DTYPE_COUNT)
		return err_set(err, "tensor '%s': dtype %d is not a dtype", t->name, (int)t->dtype);
	if (t->n_dims < 0 || t->n_dims > ST_MAX_DIMS)
		return err_set(err, "tensor '%s': %d dimensions, not 0 to %d", t->name, t->n_dims, ST_MAX_DIMS);
	int64_t n = 1;
	for (int i = 0; i < t->n_dims; i++) {
		if (t->shape[i] < 0 || t->shape[i] > (int64_t)ST_INT_MAX)
			return err_set(err, "tensor '%s': shape[%d] is %" PRId64, t->name, i, t->shape[i]);
		if (__builtin_mul_overflow(n, t->shape[i], &n))
			return err_set(err, "tensor '%s': its shape overflows", t->name);
	}
	int64_t bytes;
	if (__builtin_mul_overflow(n, (int64_t)dtypes[t->dtype].size, &bytes) || bytes > (int64_t)ST_INT_MAX)
		return err_set(err, "tensor '%s': its shape overflows", t->name);
	return bytes;
}

static int cmp_out_name(const void *a, const void *b, void *base)
{
	const struct st_out *t = base;
	return strcmp(t[*(const size_t *)a].name, t[*(const size_t *)b].name);
}

/* The Rust library's order: descending Dtype enum position, then name. */
static int cmp_out(const void *a, const void *b, void *base)
{
	const struct st_out *t = base, *p = &t[*(const size_t *)a], *q = &t[*(const size_t *)b];
	int rp = dtypes[p->dtype].rank, rq = dtypes[q->dtype].rank;
	if (rp != rq)
		return rq - rp;
	return strcmp(p->name, q->name);
}

static int check_out(const struct st_out *t, size_t n, const char *const *meta, struct err *err)
{
	for (size_t i = 0; i < n; i++) {
		if (!t[i].name || !t[i].name[0])
			return err_set(err, "tensor %zu has no name", i);
		if (strcmp(t[i].name, "__metadata__") == 0)
			return err_set(err, "a tensor cannot be named __metadata__");
		if (out_nbytes(&t[i], err) < 0)
			return -1;
	}
	for (size_t i = 0; meta && meta[i]; i += 2) {
		if (!meta[i + 1])
			return err_set(err, "metadata '%s' has no value", meta[i]);
		for (size_t j = 0; j < i; j += 2)
			if (strcmp(meta[i], meta[j]) == 0)
				return err_set(err, "metadata '%s' given twice", meta[i]);
	}
	return 0;
}

static int write_all(FILE *f, const void *p, size_t n)
{
	return n == 0 || fwrite(p, 1, n, f) == n ? 0 : -1;
}

int st_write(const char *path, const struct st_out *t, size_t n, const char *const *meta, struct err *err)
{
	const char *shown = !path || strcmp(path, "-") == 0 ? "<stdout>" : path;
	if (check_out(t, n, meta, err) < 0)
		return err_wrap(err, "%s", shown);
	size_t *order = malloc((n ? n : 1) * sizeof *order);
	if (!order)
		return err_sys(err, "out of memory");
	for (size_t i = 0; i < n; i++)
		order[i] = i;
	int rc = -1;
	struct sbuf b = {0};
	qsort_r(order, n, sizeof *order, cmp_out_name, (void *)t);
	for (size_t i = 1; i < n; i++)
		if (strcmp(t[order[i - 1]].name, t[order[i]].name) == 0) {
			err_set(err, "%s: tensor '%s' given twice", shown, t[order[i]].name);
			goto out;
		}
	qsort_r(order, n, sizeof *order, cmp_out, (void *)t);
	sb_put(&b, "{", 1);
	if (meta) {
		sb_str(&b, "\"__metadata__\":{");
		for (size_t i = 0; meta[i]; i += 2) {
			if (i)
				sb_put(&b, ",", 1);
			sb_json_str(&b, meta[i]);
			sb_put(&b, ":", 1);
			sb_json_str(&b, meta[i + 1]);
		}
		sb_put(&b, "}", 1);
	}
	uint64_t offset = 0;
	for (size_t k = 0; k < n; k++) {
		const struct st_out *o = &t[order[k]];
		uint64_t bytes = (uint64_t)out_nbytes(o, err);
		if (meta || k)
			sb_put(&b, ",", 1);
		sb_json_str(&b, o->name);
		sb_str(&b, ":{\"dtype\":\"");
		sb_str(&b, dtypes[o->dtype].name);
		sb_str(&b, "\",\"shape\":[");
		for (int d = 0; d < o->n_dims; d++) {
			if (d)
				sb_put(&b, ",", 1);
			sb_u64(&b, (uint64_t)o->shape[d]);
		}
		sb_str(&b, "],\"data_offsets\":[");
		sb_u64(&b, offset);
		sb_put(&b, ",", 1);
		sb_u64(&b, offset + bytes);
		sb_str(&b, "]}");
		offset += bytes;
	}
	sb_put(&b, "}", 1);
	while (!b.oom && b.n % 8)
		sb_put(&b, " ", 1);
	if (b.oom) {
		err_sys(err, "out of memory");
		goto out;
	}
	const char *why;
	if (jsonl_unsafe_at(b.p, b.n, &why) >= 0) {
		err_set(err, "%s: a tensor name or metadata string is not valid UTF-8", shown);
		goto out;
	}
	if (b.n > ST_HEADER_MAX) {
		err_set(err, "%s: header of %zu bytes is over the limit of %u", shown, b.n, ST_HEADER_MAX);
		goto out;
	}
	struct outfile *of = outfile_open(path, 1, err);
	if (!of)
		goto out;
	uint64_t hlen = b.n;
	int bad = write_all(of->f, &hlen, 8) || write_all(of->f, b.p, b.n);
	for (size_t k = 0; k < n && !bad; k++) {
		const struct st_out *o = &t[order[k]];
		bad = write_all(of->f, o->data, (size_t)out_nbytes(o, err));
	}
	if (bad) {
		err_sys(err, "%s: write error:", shown);
		outfile_abort(of);
		goto out;
	}
	rc = outfile_commit(of, err);
out:
	free(b.p);
	free(order);
	return rc;
}
