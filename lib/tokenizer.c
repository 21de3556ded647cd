/* tokenizer: loading a Hugging Face tokenizer.json, and the public API.
 *
 * Loading follows tokenizers' own deserialization (tokenizer/serialization.rs,
 * models/bpe/serialization.rs): the added tokens' ids are not taken from the
 * file but given as AddedVocabulary::add_tokens gives them (the id of the
 * same string in the vocabulary, else the next free id), merges get their
 * index as rank (a repeated pair keeps the later rank), and the two tries of
 * added tokens (matched on the raw text, and on the normalized text) hold
 * the special tokens first, then the others, in file order.
 *
 * Anything the encoder does not implement exactly is refused at load with the
 * JSON path of the part ("pre_tokenizer.pretokenizers[1].type: ...").
 *
 * The fingerprint is FNV-1a (64-bit) over: a format tag; the vocabulary as
 * (id, string) in id order; the merges as id pairs in rank order; the added
 * tokens as given (string and flags); the normalizer, pre-tokenizer,
 * post-processor and the model's settings (everything in "model" except vocab
 * and merges) as canonical JSON (sorted keys). The decoder is left out: it
 * does not change ids.
 */
#include "jsonl.h"
#include "tokenizer_impl.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- jv helpers: obj is borrowed, results are owned ---- */

static jv jfield(jv obj, const char *key)
{
	if (jv_get_kind(obj) != JV_KIND_OBJECT)
		return jv_invalid();
	return jv_object_get(jv_copy(obj), jv_string(key));
}

/* Kind of obj[key]; JV_KIND_INVALID when missing. */
static jv_kind jfield_kind(jv obj, const char *key)
{
	jv v = jfield(obj, key);
	jv_kind k = jv_get_kind(v);
	jv_free(v);
	return k;
}

/* A boolean field: missing or null gives dflt; another kind is an error. */
static int jbool(jv obj, const char *key, int dflt, const char *path, struct err *err)
{
	jv v = jfield(obj, key);
	int r;
	switch (jv_get_kind(v)) {
	case JV_KIND_INVALID:
	case JV_KIND_NULL:
		r = dflt;
		break;
	case JV_KIND_TRUE:
		r = 1;
		break;
	case JV_KIND_FALSE:
		r = 0;
		break;
	default:
		r = -1;
		err_set(err, "%s.%s: expected a boolean", path, key);
	}
	jv_free(v);
	return r;
}

/* A string field copied into *out (NULL when missing or null and !required). */
static int jstr(jv obj, const char *key, int required, char **out, size_t *len, const char *path, struct err *err)
{
	jv v = jfield(obj, key);
	*out = NULL;
	if (len)
		*len = 0;
	if (jv_get_kind(v) == JV_KIND_STRING) {
		int n = jv_string_length_bytes(jv_copy(v));
		*out = malloc((size_t)n + 1);
		if (!*out) {
			jv_free(v);
			return err_sys(err, "out of memory");
		}
		memcpy(*out, jv_string_value(v), (size_t)n);
		(*out)[n] = 0;
		if (len)
			*len = (size_t)n;
		jv_free(v);
		return 0;
	}
	jv_kind k = jv_get_kind(v);
	jv_free(v);
	if ((k == JV_KIND_INVALID || k == JV_KIND_NULL) && !required)
		return 0;
	return err_set(err, "%s.%s: expected a string", path, key);
}

/* A non-negative integer field. */
static int jsize(jv obj, const char *key, size_t dflt, size_t *out, const char *path, struct err *err)
{
	jv v = jfield(obj, key);
	jv_kind k = jv_get_kind(v);
	if (k == JV_KIND_INVALID || k == JV_KIND_NULL) {
		*out = dflt;
		jv_free(v);
		return 0;
	}
	double d = k == JV_KIND_NUMBER ? jv_number_value(v) : -1;
	jv_free(v);
	if (d < 0 || d > 4294967295.0 || d != (double)(uint64_t)d)
		return err_set(err, "%s.%s: expected a non-negative integer", path, key);
	*out = (size_t)d;
	return 0;
}

/* The "type" of a component; err when missing. */
static int jtype(jv obj, char *buf, size_t cap, const char *path, struct err *err)
{
	if (jv_get_kind(obj) != JV_KIND_OBJECT)
		return err_set(err, "%s: expected an object", path);
	jv t = jfield(obj, "type");
	if (jv_get_kind(t) != JV_KIND_STRING) {
		jv_free(t);
		return err_set(err, "%s.type: missing", path);
	}
	snprintf(buf, cap, "%s", jv_string_value(t));
	jv_free(t);
	return 0;
}

/* The single char of a string field (Metaspace replacement, Strip content). */
static int jchar(jv obj, const char *key, uint32_t *cp, char utf8[4], int *ulen, const char *path, struct err *err)
{
	char *s;
	size_t n;
	if (jstr(obj, key, 1, &s, &n, path, err) < 0)
		return -1;
	size_t bad, k = n ? tk_utf8_valid((const unsigned char *)s, n, &bad) : 0;
	if (!k || k != n) {
		free(s);
		return err_set(err, "%s.%s: expected a single character", path, key);
	}
	size_t cl;
	*cp = tk_utf8_get(s, &cl);
	if (utf8)
		memcpy(utf8, s, n);
	if (ulen)
		*ulen = (int)n;
	free(s);
	return 0;
}

static int valid_utf8(const char *s, size_t n)
{
	for (size_t i = 0; i < n;) {
		size_t bad, k = tk_utf8_valid((const unsigned char *)s + i, n - i, &bad);
		if (!k)
			return 0;
		i += k;
	}
	return 1;
}

/* A pattern {"String": s} or {"Regex": r}: a literal or a compiled regex. */
static int jpattern(jv obj, const char *path, char **lit, size_t *lit_len, pcre2_code **re, struct err *err)
{
	char where[512];
	*lit = NULL;
	*re = NULL;
	jv p = jfield(obj, "pattern");
	if (jv_get_kind(p) != JV_KIND_OBJECT) {
		jv_free(p);
		return err_set(err, "%s.pattern: expected {\"String\": ...} or {\"Regex\": ...}", path);
	}
	snprintf(where, sizeof where, "%s.pattern", path);
	int rc = 0;
	if (jfield_kind(p, "String") == JV_KIND_STRING) {
		rc = jstr(p, "String", 1, lit, lit_len, where, err);
		if (rc == 0 && *lit_len == 0)
			rc = err_set(err, "%s.String: an empty pattern is not supported", where);
	} else if (jfield_kind(p, "Regex") == JV_KIND_STRING) {
		char *r;
		size_t rl;
		rc = jstr(p, "Regex", 1, &r, &rl, where, err);
		if (rc == 0) {
			char w2[600];
			snprintf(w2, sizeof w2, "%s.Regex", where);
			*re = tk_regex_compile(r, rl, w2, err);
			free(r);
			if (!*re)
				rc = -1;
		}
	} else {
		rc = err_set(err, "%s: expected {\"String\": ...} or {\"Regex\": ...}", where);
	}
	jv_free(p);
	return rc;
}

/* ---- fingerprint ---- */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const unsigned char *s = p;
	for (size_t i = 0; i < n; i++) {
		h ^= s[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

static uint64_t fnv_u32(uint64_t h, uint32_t v)
{
	unsigned char b[4] = { (unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
			       (unsigned char)(v >> 24) };
	return fnv(h, b, 4);
}

static uint64_t fnv_jv(uint64_t h, jv v)
{
	if (!jv_is_valid(v)) {
		jv_free(v);
		v = jv_null();
	}
	jv s = jv_dump_string(v, JV_PRINT_SORTED);
	h = fnv(h, jv_string_value(s), (size_t)jv_string_length_bytes(jv_copy(s)));
	jv_free(s);
	return fnv(h, "\x1e", 1);
}

/* ---- components ---- */

static void *grow(void *p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return p;
	size_t c = *cap ? *cap * 2 : 8;
	while (c < need)
		c *= 2;
	void *q = realloc(p, c * elem);
	if (q)
		*cap = c;
	return q;
}

struct loader {
	struct tokenizer *tk;
	size_t norm_cap, pre_cap, post_cap, dec_cap;
	struct err *err;
};

static struct tk_norm *norm_new(struct loader *L)
{
	struct tokenizer *tk = L->tk;
	struct tk_norm *v = grow(tk->norm, &L->norm_cap, tk->nnorm + 1, sizeof *v);
	if (!v) {
		err_sys(L->err, "out of memory");
		return NULL;
	}
	tk->norm = v;
	memset(&v[tk->nnorm], 0, sizeof *v);
	return &v[tk->nnorm++];
}

static int parse_normalizer(struct loader *L, jv n, const char *path)
{
	char type[64];
	if (jtype(n, type, sizeof type, path, L->err) < 0)
		return -1;
	if (!strcmp(type, "Sequence")) {
		jv arr = jfield(n, "normalizers");
		if (jv_get_kind(arr) != JV_KIND_ARRAY) {
			jv_free(arr);
			return err_set(L->err, "%s.normalizers: expected an array", path);
		}
		int len = jv_array_length(jv_copy(arr)), rc = 0;
		for (int i = 0; i < len && rc == 0; i++) {
			char sub[512];
			snprintf(sub, sizeof sub, "%s.normalizers[%d]", path, i);
			jv item = jv_array_get(jv_copy(arr), i);
			rc = parse_normalizer(L, item, sub);
			jv_free(item);
		}
		jv_free(arr);
		return rc;
	}
	struct tk_norm *nm;
	if (!strcmp(type, "NFC") || !strcmp(type, "NFD") || !strcmp(type, "NFKC") || !strcmp(type, "NFKD")) {
		if (!(nm = norm_new(L)))
			return -1;
		nm->kind = type[2] == 'C' ? TK_NORM_NFC
			 : type[2] == 'D' ? TK_NORM_NFD
			 : type[3] == 'C' ? TK_NORM_NFKC
					  : TK_NORM_NFKD;
		return 0;
	}
	if (!strcmp(type, "Lowercase")) {
		if (!(nm = norm_new(L)))
			return -1;
		nm->kind = TK_NORM_LOWERCASE;
		return 0;
	}
	if (!strcmp(type, "Strip")) {
		if (!(nm = norm_new(L)))
			return -1;
		nm->kind = TK_NORM_STRIP;
		if ((nm->left = jbool(n, "strip_left", 1, path, L->err)) < 0 ||
		    (nm->right = jbool(n, "strip_right", 1, path, L->err)) < 0)
			return -1;
		return 0;
	}
	if (!strcmp(type, "Prepend")) {
		if (!(nm = norm_new(L)))
			return -1;
		nm->kind = TK_NORM_PREPEND;
		if (jstr(n, "prepend", 1, &nm->content, &nm->content_len, path, L->err) < 0)
			return -1;
		if (!valid_utf8(nm->content, nm->content_len))
			return err_set(L->err, "%s.prepend: not UTF-8", path);
		return 0;
	}
	if (!strcmp(type, "Replace")) {
		if (!(nm = norm_new(L)))
			return -1;
		nm->kind = TK_NORM_REPLACE;
		if (jstr(n, "content", 1, &nm->content, &nm->content_len, path, L->err) < 0 ||
		    jpattern(n, path, &nm->pat, &nm->pat_len, &nm->re, L->err) < 0)
			return -1;
		if (!valid_utf8(nm->content, nm->content_len))
			return err_set(L->err, "%s.content: not UTF-8", path);
		return 0;
	}
	return err_set(L->err, "%s.type: normalizer \"%s\" is not supported", path, type);
}

static struct tk_pre *pre_new(struct loader *L)
{
	struct tokenizer *tk = L->tk;
	struct tk_pre *v = grow(tk->pre, &L->pre_cap, tk->npre + 1, sizeof *v);
	if (!v) {
		err_sys(L->err, "out of memory");
		return NULL;
	}
	tk->pre = v;
	memset(&v[tk->npre], 0, sizeof *v);
	return &v[tk->npre++];
}

static int parse_behavior(jv p, const char *path, enum tk_behavior *b, struct err *err)
{
	char *s;
	if (jstr(p, "behavior", 1, &s, NULL, path, err) < 0)
		return -1;
	int rc = 0;
	if (!strcmp(s, "Removed"))
		*b = TK_SPLIT_REMOVED;
	else if (!strcmp(s, "Isolated"))
		*b = TK_SPLIT_ISOLATED;
	else if (!strcmp(s, "MergedWithPrevious"))
		*b = TK_SPLIT_MERGED_PREV;
	else if (!strcmp(s, "MergedWithNext"))
		*b = TK_SPLIT_MERGED_NEXT;
	else if (!strcmp(s, "Contiguous"))
		*b = TK_SPLIT_CONTIGUOUS;
	else
		rc = err_set(err, "%s.behavior: unknown behavior \"%s\"", path, s);
	free(s);
	return rc;
}

static int parse_prepend_scheme(jv p, const char *path, enum tk_prepend *out, struct err *err)
{
	char *s;
	if (jstr(p, "prepend_scheme", 0, &s, NULL, path, err) < 0)
		return -1;
	int rc = 0;
	if (!s || !strcmp(s, "always"))
		*out = TK_PREPEND_ALWAYS;
	else if (!strcmp(s, "first"))
		*out = TK_PREPEND_FIRST;
	else if (!strcmp(s, "never"))
		*out = TK_PREPEND_NEVER;
	else
		rc = err_set(err, "%s.prepend_scheme: unknown scheme \"%s\"", path, s);
	free(s);
	if (rc == 0) {
		int aps = jbool(p, "add_prefix_space", -2, path, err);
		if (aps == -1)
			return -1;
		if (aps == 0) {
			if (*out != TK_PREPEND_NEVER)
				return err_set(err, "%s: add_prefix_space does not match declared prepend_scheme", path);
			*out = TK_PREPEND_NEVER;
		}
	}
	return rc;
}

static int parse_pretok(struct loader *L, jv p, const char *path)
{
	char type[64];
	if (jtype(p, type, sizeof type, path, L->err) < 0)
		return -1;
	if (L->tk->npre && L->tk->pre[L->tk->npre - 1].kind == TK_PRE_BYTELEVEL)
		return err_set(L->err, "%s: a pre-tokenizer after ByteLevel is not supported", path);
	if (!strcmp(type, "Sequence")) {
		jv arr = jfield(p, "pretokenizers");
		if (jv_get_kind(arr) != JV_KIND_ARRAY) {
			jv_free(arr);
			return err_set(L->err, "%s.pretokenizers: expected an array", path);
		}
		int len = jv_array_length(jv_copy(arr)), rc = 0;
		for (int i = 0; i < len && rc == 0; i++) {
			char sub[512];
			snprintf(sub, sizeof sub, "%s.pretokenizers[%d]", path, i);
			jv item = jv_array_get(jv_copy(arr), i);
			rc = parse_pretok(L, item, sub);
			jv_free(item);
		}
		jv_free(arr);
		return rc;
	}
	struct tk_pre *pt = pre_new(L);
	if (!pt)
		return -1;
	if (!strcmp(type, "Split")) {
		pt->kind = TK_PRE_SPLIT;
		if (jpattern(p, path, &pt->lit, &pt->lit_len, &pt->re, L->err) < 0 ||
		    parse_behavior(p, path, &pt->behavior, L->err) < 0 ||
		    (pt->invert = jbool(p, "invert", 0, path, L->err)) < 0)
			return -1;
		return 0;
	}
	if (!strcmp(type, "ByteLevel")) {
		pt->kind = TK_PRE_BYTELEVEL;
		if ((pt->add_prefix_space = jbool(p, "add_prefix_space", 1, path, L->err)) < 0 ||
		    (pt->use_regex = jbool(p, "use_regex", 1, path, L->err)) < 0)
			return -1;
		if (pt->use_regex && !L->tk->re_gpt2) {
			static const char gpt2[] =
				"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
			L->tk->re_gpt2 = tk_regex_compile(gpt2, sizeof gpt2 - 1, path, L->err);
			if (!L->tk->re_gpt2)
				return -1;
		}
		return 0;
	}
	if (!strcmp(type, "Metaspace")) {
		pt->kind = TK_PRE_METASPACE;
		uint32_t cp;
		if (jchar(p, "replacement", &cp, pt->repl, &pt->repl_len, path, L->err) < 0 ||
		    parse_prepend_scheme(p, path, &pt->prepend, L->err) < 0 ||
		    (pt->split = jbool(p, "split", 1, path, L->err)) < 0)
			return -1;
		return 0;
	}
	if (!strcmp(type, "Digits")) {
		pt->kind = TK_PRE_DIGITS;
		if ((pt->individual = jbool(p, "individual_digits", 0, path, L->err)) < 0)
			return -1;
		return 0;
	}
	if (!strcmp(type, "Whitespace")) {
		static const char ws[] = "\\w+|[^\\w\\s]+";
		pt->kind = TK_PRE_WHITESPACE;
		pt->re = tk_regex_compile(ws, sizeof ws - 1, path, L->err);
		return pt->re ? 0 : -1;
	}
	if (!strcmp(type, "WhitespaceSplit")) {
		pt->kind = TK_PRE_WSSPLIT;
		return 0;
	}
	if (!strcmp(type, "Punctuation")) {
		pt->kind = TK_PRE_PUNCT;
		pt->behavior = TK_SPLIT_ISOLATED;
		if (jfield_kind(p, "behavior") == JV_KIND_STRING && parse_behavior(p, path, &pt->behavior, L->err) < 0)
			return -1;
		return 0;
	}
	L->tk->npre--;
	return err_set(L->err, "%s.type: pre-tokenizer \"%s\" is not supported", path, type);
}

static struct tk_post *post_new(struct loader *L)
{
	struct tokenizer *tk = L->tk;
	struct tk_post *v = grow(tk->post, &L->post_cap, tk->npost + 1, sizeof *v);
	if (!v) {
		err_sys(L->err, "out of memory");
		return NULL;
	}
	tk->post = v;
	memset(&v[tk->npost], 0, sizeof *v);
	return &v[tk->npost++];
}

/* Appends the ids and tokens of special token `name` of a template. */
static int template_special(jv specials, const char *name, uint32_t **ids, char ***toks, size_t *n,
			    const char *path, struct err *err)
{
	jv sp = jfield(specials, name);
	if (jv_get_kind(sp) != JV_KIND_OBJECT) {
		jv_free(sp);
		return err_set(err, "%s.special_tokens: no entry for \"%s\"", path, name);
	}
	jv a = jfield(sp, "ids"), t = jfield(sp, "tokens");
	int rc = 0;
	if (jv_get_kind(a) != JV_KIND_ARRAY || jv_get_kind(t) != JV_KIND_ARRAY ||
	    jv_array_length(jv_copy(a)) != jv_array_length(jv_copy(t))) {
		rc = err_set(err, "%s.special_tokens.%s: expected ids and tokens of the same length", path, name);
	} else {
		int len = jv_array_length(jv_copy(a));
		uint32_t *ni = realloc(*ids, (*n + (size_t)len + 1) * sizeof *ni);
		if (ni)
			*ids = ni;
		char **nt = realloc(*toks, (*n + (size_t)len + 1) * sizeof *nt);
		if (nt)
			*toks = nt;
		if (!ni || !nt)
			rc = err_sys(err, "out of memory");
		for (int i = 0; i < len && rc == 0; i++) {
			jv x = jv_array_get(jv_copy(a), i), y = jv_array_get(jv_copy(t), i);
			double d = jv_get_kind(x) == JV_KIND_NUMBER ? jv_number_value(x) : -1;
			if (d < 0 || d > 4294967295.0 || jv_get_kind(y) != JV_KIND_STRING) {
				rc = err_set(err, "%s.special_tokens.%s: bad ids or tokens", path, name);
			} else {
				(*ids)[*n] = (uint32_t)d;
				(*toks)[*n] = strdup(jv_string_value(y));
				if (!(*toks)[*n])
					rc = err_sys(err, "out of memory");
				else
					(*n)++;
			}
			jv_free(x);
			jv_free(y);
		}
	}
	jv_free(a);
	jv_free(t);
	jv_free(sp);
	return rc;
}

static int parse_post(struct loader *L, jv p, const char *path)
{
	char type[64];
	if (jtype(p, type, sizeof type, path, L->err) < 0)
		return -1;
	if (!strcmp(type, "Sequence")) {
		jv arr = jfield(p, "processors");
		if (jv_get_kind(arr) != JV_KIND_ARRAY) {
			jv_free(arr);
			return err_set(L->err, "%s.processors: expected an array", path);
		}
		int len = jv_array_length(jv_copy(arr)), rc = 0;
		for (int i = 0; i < len && rc == 0; i++) {
			char sub[512];
			snprintf(sub, sizeof sub, "%s.processors[%d]", path, i);
			jv item = jv_array_get(jv_copy(arr), i);
			rc = parse_post(L, item, sub);
			jv_free(item);
		}
		jv_free(arr);
		return rc;
	}
	if (!strcmp(type, "ByteLevel")) {
		struct tk_post *pp = post_new(L);
		if (!pp)
			return -1;
		pp->kind = TK_POST_BYTELEVEL;
		if ((pp->trim_offsets = jbool(p, "trim_offsets", 1, path, L->err)) < 0 ||
		    (pp->add_prefix_space = jbool(p, "add_prefix_space", 1, path, L->err)) < 0)
			return -1;
		return 0;
	}
	if (!strcmp(type, "TemplateProcessing")) {
		struct tk_post *pp = post_new(L);
		if (!pp)
			return -1;
		pp->kind = TK_POST_TEMPLATE;
		jv single = jfield(p, "single"), specials = jfield(p, "special_tokens");
		int rc = 0, seen_a = 0;
		if (jv_get_kind(single) != JV_KIND_ARRAY) {
			rc = err_set(L->err, "%s.single: expected an array of pieces", path);
		} else {
			int len = jv_array_length(jv_copy(single));
			for (int i = 0; i < len && rc == 0; i++) {
				jv piece = jv_array_get(jv_copy(single), i);
				jv st = jfield(piece, "SpecialToken"), sq = jfield(piece, "Sequence");
				if (jv_get_kind(st) == JV_KIND_OBJECT) {
					char *name;
					char sub[512];
					snprintf(sub, sizeof sub, "%s.single[%d].SpecialToken", path, i);
					rc = jstr(st, "id", 1, &name, NULL, sub, L->err);
					if (rc == 0) {
						rc = seen_a ? template_special(specials, name, &pp->post_ids, &pp->post_toks,
									       &pp->npost, path, L->err)
							    : template_special(specials, name, &pp->pre_ids, &pp->pre_toks,
									       &pp->npre, path, L->err);
						free(name);
					}
				} else if (jv_get_kind(sq) == JV_KIND_OBJECT) {
					char *id;
					char sub[512];
					snprintf(sub, sizeof sub, "%s.single[%d].Sequence", path, i);
					rc = jstr(sq, "id", 1, &id, NULL, sub, L->err);
					if (rc == 0 && (strcmp(id, "A") != 0 || seen_a))
						rc = err_set(L->err, "%s.id: only one sequence A is supported in single", sub);
					free(id);
					seen_a = 1;
				} else {
					rc = err_set(L->err, "%s.single[%d]: expected SpecialToken or Sequence", path, i);
				}
				jv_free(st);
				jv_free(sq);
				jv_free(piece);
			}
			if (rc == 0 && !seen_a)
				rc = err_set(L->err, "%s.single: no sequence A", path);
		}
		jv_free(single);
		jv_free(specials);
		return rc;
	}
	return err_set(L->err, "%s.type: post-processor \"%s\" is not supported", path, type);
}

static struct tk_dec *dec_new(struct loader *L)
{
	struct tokenizer *tk = L->tk;
	struct tk_dec *v = grow(tk->dec, &L->dec_cap, tk->ndec + 1, sizeof *v);
	if (!v) {
		err_sys(L->err, "out of memory");
		return NULL;
	}
	tk->dec = v;
	memset(&v[tk->ndec], 0, sizeof *v);
	return &v[tk->ndec++];
}

static int parse_decoder(struct loader *L, jv d, const char *path)
{
	char type[64];
	if (jtype(d, type, sizeof type, path, L->err) < 0)
		return -1;
	if (!strcmp(type, "Sequence")) {
		jv arr = jfield(d, "decoders");
		if (jv_get_kind(arr) != JV_KIND_ARRAY) {
			jv_free(arr);
			return err_set(L->err, "%s.decoders: expected an array", path);
		}
		int len = jv_array_length(jv_copy(arr)), rc = 0;
		for (int i = 0; i < len && rc == 0; i++) {
			char sub[512];
			snprintf(sub, sizeof sub, "%s.decoders[%d]", path, i);
			jv item = jv_array_get(jv_copy(arr), i);
			rc = parse_decoder(L, item, sub);
			jv_free(item);
		}
		jv_free(arr);
		return rc;
	}
	struct tk_dec *dc = dec_new(L);
	if (!dc)
		return -1;
	if (!strcmp(type, "ByteLevel")) {
		dc->kind = TK_DEC_BYTELEVEL;
		return 0;
	}
	if (!strcmp(type, "ByteFallback")) {
		dc->kind = TK_DEC_BYTEFALLBACK;
		return 0;
	}
	if (!strcmp(type, "Fuse")) {
		dc->kind = TK_DEC_FUSE;
		return 0;
	}
	if (!strcmp(type, "Replace")) {
		dc->kind = TK_DEC_REPLACE;
		if (jstr(d, "content", 1, &dc->content, &dc->content_len, path, L->err) < 0 ||
		    jpattern(d, path, &dc->pat, &dc->pat_len, &dc->re, L->err) < 0)
			return -1;
		return 0;
	}
	if (!strcmp(type, "Strip")) {
		dc->kind = TK_DEC_STRIP;
		if (jchar(d, "content", &dc->strip_char, NULL, NULL, path, L->err) < 0 ||
		    jsize(d, "start", 0, &dc->start, path, L->err) < 0 || jsize(d, "stop", 0, &dc->stop, path, L->err) < 0)
			return -1;
		return 0;
	}
	if (!strcmp(type, "Metaspace")) {
		dc->kind = TK_DEC_METASPACE;
		if (jchar(d, "replacement", &dc->repl, NULL, NULL, path, L->err) < 0 ||
		    parse_prepend_scheme(d, path, &dc->prepend, L->err) < 0)
			return -1;
		return 0;
	}
	L->tk->ndec--;
	return err_set(L->err, "%s.type: decoder \"%s\" is not supported", path, type);
}

/* ---- the model ---- */

/* GPT-2's byte-to-unicode map, inverted: code point -> byte, -1 if none. */
void tk_bytelevel_inverse(int16_t inv[0x144])
{
	for (int i = 0; i < 0x144; i++)
		inv[i] = -1;
	int next = 0;
	for (int b = 0; b < 256; b++) {
		int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
		if (printable)
			inv[b] = (int16_t)b;
		else
			inv[0x100 + next++] = (int16_t)b;
	}
}

static int split_merge(jv m, const char **a, size_t *al, const char **b, size_t *bl, char **tmp)
{
	*tmp = NULL;
	if (jv_get_kind(m) == JV_KIND_STRING) {
		const char *s = jv_string_value(m);
		size_t n = (size_t)jv_string_length_bytes(jv_copy(m));
		const char *sp = memchr(s, ' ', n);
		if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s)))
			return -1;
		*a = s;
		*al = (size_t)(sp - s);
		*b = sp + 1;
		*bl = n - *al - 1;
		return 0;
	}
	if (jv_get_kind(m) == JV_KIND_ARRAY && jv_array_length(jv_copy(m)) == 2) {
		jv x = jv_array_get(jv_copy(m), 0), y = jv_array_get(jv_copy(m), 1);
		int ok = jv_get_kind(x) == JV_KIND_STRING && jv_get_kind(y) == JV_KIND_STRING;
		if (ok) {
			size_t xl = (size_t)jv_string_length_bytes(jv_copy(x));
			size_t yl = (size_t)jv_string_length_bytes(jv_copy(y));
			*tmp = malloc(xl + yl + 2);
			if (*tmp) {
				memcpy(*tmp, jv_string_value(x), xl);
				memcpy(*tmp + xl + 1, jv_string_value(y), yl);
				*a = *tmp;
				*al = xl;
				*b = *tmp + xl + 1;
				*bl = yl;
			}
		}
		jv_free(x);
		jv_free(y);
		return ok && *tmp ? 0 : -1;
	}
	return -1;
}

static int parse_model(struct loader *L, jv m, uint64_t *fp)
{
	struct tokenizer *tk = L->tk;
	struct tk_bpe *b = &tk->bpe;
	struct err *err = L->err;
	if (jv_get_kind(m) != JV_KIND_OBJECT)
		return err_set(err, "model: expected an object");
	jv t = jfield(m, "type");
	if (jv_get_kind(t) == JV_KIND_STRING && strcmp(jv_string_value(t), "BPE") != 0) {
		err_set(err, "model.type: model \"%s\" is not supported (only BPE)", jv_string_value(t));
		jv_free(t);
		return -1;
	}
	jv_free(t);
	jv dropout = jfield(m, "dropout");
	int bad_dropout = jv_get_kind(dropout) == JV_KIND_NUMBER && jv_number_value(dropout) != 0;
	jv_free(dropout);
	if (bad_dropout)
		return err_set(err, "model.dropout: BPE dropout is not supported");
	char *unk = NULL;
	int rc = -1;
	if ((b->fuse_unk = jbool(m, "fuse_unk", 0, "model", err)) < 0 ||
	    (b->byte_fallback = jbool(m, "byte_fallback", 0, "model", err)) < 0 ||
	    (b->ignore_merges = jbool(m, "ignore_merges", 0, "model", err)) < 0 ||
	    jstr(m, "unk_token", 0, &unk, NULL, "model", err) < 0 ||
	    jstr(m, "continuing_subword_prefix", 0, &b->prefix, &b->prefix_len, "model", err) < 0 ||
	    jstr(m, "end_of_word_suffix", 0, &b->suffix, &b->suffix_len, "model", err) < 0)
		goto out;
	if (b->prefix && !b->prefix_len) {
		free(b->prefix);
		b->prefix = NULL;
	}
	if (b->suffix && !b->suffix_len) {
		free(b->suffix);
		b->suffix = NULL;
	}
	jv settings = jv_object_delete(jv_object_delete(jv_copy(m), jv_string("vocab")), jv_string("merges"));
	*fp = fnv_jv(*fp, settings);

	jv vocab = jfield(m, "vocab");
	if (jv_get_kind(vocab) != JV_KIND_OBJECT) {
		jv_free(vocab);
		err_set(err, "model.vocab: expected an object");
		goto out;
	}
	int bad = 0;
	jv_object_foreach(vocab, key, val)
	{
		if (!bad) {
			double d = jv_get_kind(val) == JV_KIND_NUMBER ? jv_number_value(val) : -1;
			if (d < 0 || d >= 2147483647.0 || d != (double)(uint32_t)d) {
				err_set(err, "model.vocab[\"%.200s\"]: expected an id", jv_string_value(key));
				bad = 1;
			} else if (tk_strmap_put(&b->vocab, jv_string_value(key), (size_t)jv_string_length_bytes(jv_copy(key)),
						 (uint32_t)d, 1) < 0) {
				err_sys(err, "out of memory");
				bad = 1;
			}
		}
		jv_free(key);
		jv_free(val);
	}
	jv_free(vocab);
	if (bad)
		goto out;
	b->unk_id = -1;
	if (unk) {
		b->unk_id = tk_strmap_get(&b->vocab, unk, strlen(unk));
		/* HF fails on an unknown unk token only when it needs it; so do we, by not using it. */
	}

	jv merges = jfield(m, "merges");
	jv_kind mk = jv_get_kind(merges);
	if (mk != JV_KIND_ARRAY && mk != JV_KIND_NULL && mk != JV_KIND_INVALID) {
		jv_free(merges);
		err_set(err, "model.merges: expected an array");
		goto out;
	}
	int nm = mk == JV_KIND_ARRAY ? jv_array_length(jv_copy(merges)) : 0;
	uint32_t rank = 0;
	char *cat = NULL;
	size_t cat_cap = 0;
	for (int i = 0; i < nm && !bad; i++) {
		jv item = jv_array_get(jv_copy(merges), i);
		const char *sa, *sb;
		size_t la, lb;
		char *tmp;
		if (jv_get_kind(item) == JV_KIND_STRING && !strncmp(jv_string_value(item), "#version", 8)) {
			jv_free(item);
			continue;
		}
		if (split_merge(item, &sa, &la, &sb, &lb, &tmp) < 0) {
			err_set(err, "model.merges[%d]: expected \"a b\" or [\"a\", \"b\"]", i);
			bad = 1;
		} else {
			int64_t ia = tk_strmap_get(&b->vocab, sa, la), ib = tk_strmap_get(&b->vocab, sb, lb);
			size_t skip = b->prefix_len <= lb ? b->prefix_len : lb;
			if (la + lb + 1 > cat_cap) {
				cat_cap = (la + lb + 1) * 2;
				char *nc = realloc(cat, cat_cap);
				if (!nc) {
					err_sys(err, "out of memory");
					bad = 1;
				}
				cat = nc ? nc : cat;
			}
			int64_t in = -1;
			if (!bad) {
				memcpy(cat, sa, la);
				memcpy(cat + la, sb + skip, lb - skip);
				in = tk_strmap_get(&b->vocab, cat, la + lb - skip);
			}
			if (!bad && (ia < 0 || ib < 0 || in < 0)) {
				const char *what = ia < 0 ? sa : ib < 0 ? sb : cat;
				size_t wl = ia < 0 ? la : ib < 0 ? lb : la + lb - skip;
				err_set(err, "model.merges[%d]: token \"%.*s\" is not in the vocabulary", i,
					(int)(wl < 100 ? wl : 100), what);
				bad = 1;
			}
			if (!bad) {
				uint64_t key = (uint64_t)ia << 32 | (uint64_t)ib;
				if (tk_u64map_put(&b->merges, key, (uint64_t)rank << 32 | (uint64_t)in) < 0) {
					err_sys(err, "out of memory");
					bad = 1;
				}
				*fp = fnv_u32(fnv_u32(*fp, (uint32_t)ia), (uint32_t)ib);
				rank++;
			}
		}
		free(tmp);
		jv_free(item);
	}
	free(cat);
	jv_free(merges);
	if (bad)
		goto out;
	for (int k = 0; k < 256; k++) {
		char name[8];
		snprintf(name, sizeof name, "<0x%02X>", k);
		int64_t id = b->byte_fallback ? tk_strmap_get(&b->vocab, name, 6) : -1;
		b->fallback_id[k] = (int32_t)id;
	}
	rc = 0;
out:
	free(unk);
	return rc;
}

/* Byte-level models: the vocabulary in raw bytes, for the encoder. */
static int build_raw_vocab(struct tokenizer *tk, struct err *err)
{
	struct tk_bpe *b = &tk->bpe;
	int16_t inv[0x144];
	tk_bytelevel_inverse(inv);
	char *buf = NULL;
	size_t cap = 0;
	for (size_t e = 0; e < b->vocab.n; e++) {
		const struct tk_strent *en = &b->vocab.ents[e];
		const char *s = b->vocab.keys + en->off;
		if (en->len + 1 > cap) {
			cap = en->len * 2 + 16;
			char *nb = realloc(buf, cap);
			if (!nb) {
				free(buf);
				return err_sys(err, "out of memory");
			}
			buf = nb;
		}
		size_t n = 0, i = 0;
		int ok = 1;
		while (i < en->len) {
			size_t bad, k = tk_utf8_valid((const unsigned char *)s + i, en->len - i, &bad);
			size_t cl;
			uint32_t cp = k ? tk_utf8_get(s + i, &cl) : 0xFFFFFFFF;
			if (!k || cp >= 0x144 || inv[cp] < 0) {
				ok = 0;
				break;
			}
			buf[n++] = (char)inv[cp];
			i += k;
		}
		if (ok && n && tk_strmap_put(&b->raw, buf, n, en->val, 1) < 0) {
			free(buf);
			return err_sys(err, "out of memory");
		}
	}
	free(buf);
	for (int k = 0; k < 256; k++) {
		char c = (char)k;
		b->byte_id[k] = (int32_t)tk_strmap_get(&b->raw, &c, 1);
		if (b->byte_id[k] < 0 && b->byte_fallback)
			return err_set(err, "model: byte-level vocabulary without byte %d and byte_fallback: not supported", k);
	}
	if (b->prefix || b->suffix)
		return err_set(err, "model: continuing_subword_prefix / end_of_word_suffix with ByteLevel: not supported");
	return 0;
}

/* Char models: a direct table for the single-char tokens of the BMP, so the
 * encoder finds a word's first symbols without hashing. */
static int build_char_table(struct tokenizer *tk, struct err *err)
{
	struct tk_bpe *b = &tk->bpe;
	if (b->prefix || b->suffix)
		return 0; /* symbols are then not single chars */
	b->char_id = malloc(0x10000 * sizeof *b->char_id);
	if (!b->char_id)
		return err_sys(err, "out of memory");
	memset(b->char_id, 0xff, 0x10000 * sizeof *b->char_id);
	for (size_t e = 0; e < b->vocab.n; e++) {
		const struct tk_strent *en = &b->vocab.ents[e];
		const char *s = b->vocab.keys + en->off;
		size_t bad, k = en->len ? tk_utf8_valid((const unsigned char *)s, en->len, &bad) : 0;
		if (!k || k != en->len || k == 4)
			continue;
		size_t cl;
		uint32_t cp = tk_utf8_get(s, &cl);
		b->char_id[cp] = (int32_t)en->val;
	}
	return 0;
}

/* ---- added tokens ---- */

static int trie_insert(struct tk_trie *t, const char *s, size_t n, uint32_t id)
{
	if (!t->term) {
		t->cap = 64;
		t->term = malloc(t->cap * sizeof *t->term);
		if (!t->term)
			return -1;
		t->term[0] = -1;
		t->nnodes = 1;
	}
	uint64_t node = 0, child;
	for (size_t i = 0; i < n; i++) {
		uint64_t key = node << 8 | (unsigned char)s[i];
		if (!tk_u64map_get(&t->edges, key, &child)) {
			if (t->nnodes == t->cap) {
				int32_t *nt = realloc(t->term, t->cap * 2 * sizeof *nt);
				if (!nt)
					return -1;
				t->term = nt;
				t->cap *= 2;
			}
			child = t->nnodes++;
			t->term[child] = -1;
			if (tk_u64map_put(&t->edges, key, child) < 0)
				return -1;
		}
		node = child;
	}
	if (n)
		t->first[(unsigned char)s[0]] = 1;
	if (t->term[node] < 0) /* the first of equal patterns wins, as in the Aho-Corasick automaton */
		t->term[node] = (int32_t)id;
	return 0;
}

static int64_t token_to_id(const struct tokenizer *tk, const char *s, size_t n)
{
	int64_t id = tk_strmap_get(&tk->added_map, s, n);
	return id >= 0 ? id : tk_strmap_get(&tk->bpe.vocab, s, n);
}

static int parse_added(struct loader *L, jv arr, uint64_t *fp)
{
	struct tokenizer *tk = L->tk;
	struct err *err = L->err;
	if (jv_get_kind(arr) == JV_KIND_NULL || jv_get_kind(arr) == JV_KIND_INVALID)
		return 0;
	if (jv_get_kind(arr) != JV_KIND_ARRAY)
		return err_set(err, "added_tokens: expected an array");
	*fp = fnv_jv(*fp, jv_copy(arr));
	int len = jv_array_length(jv_copy(arr));
	struct tk_added *all = calloc((size_t)len + 1, sizeof *all);
	if (!all)
		return err_sys(err, "out of memory");
	tk->added = all;
	tk->nadded = (size_t)len;
	int rc = 0;
	for (int i = 0; i < len && rc == 0; i++) {
		char path[64];
		snprintf(path, sizeof path, "added_tokens[%d]", i);
		jv t = jv_array_get(jv_copy(arr), i);
		struct tk_added *a = &all[i];
		int f;
		if (jv_get_kind(t) != JV_KIND_OBJECT) {
			rc = err_set(err, "%s: expected an object", path);
		} else if (jstr(t, "content", 1, &a->content, &a->len, path, err) < 0) {
			rc = -1;
		} else if (!valid_utf8(a->content, a->len)) {
			rc = err_set(err, "%s.content: not UTF-8", path);
		} else {
			if ((f = jbool(t, "special", 0, path, err)) < 0)
				rc = -1;
			a->special = f > 0;
			if (rc == 0 && (f = jbool(t, "lstrip", 0, path, err)) < 0)
				rc = -1;
			a->lstrip = f > 0;
			if (rc == 0 && (f = jbool(t, "rstrip", 0, path, err)) < 0)
				rc = -1;
			a->rstrip = f > 0;
			if (rc == 0 && (f = jbool(t, "single_word", 0, path, err)) < 0)
				rc = -1;
			a->single_word = f > 0;
			if (rc == 0 && (f = jbool(t, "normalized", !a->special, path, err)) < 0)
				rc = -1;
			a->normalized = f > 0;
		}
		jv_free(t);
	}
	/* HF's AddedVocabulary::add_tokens, step by step. */
	struct tk_strmap seen = { 0 }; /* flags + content of every token kept */
	uint32_t *special_list = malloc(((size_t)len + 1) * sizeof *special_list);
	uint32_t *classic_list = malloc(((size_t)len + 1) * sizeof *classic_list);
	size_t nspecial = 0, nclassic = 0;
	int64_t max_added = -1;
	uint32_t vocab_len = (uint32_t)tk->bpe.vocab.n;
	char *key = NULL;
	if (rc == 0 && (!special_list || !classic_list))
		rc = err_sys(err, "out of memory");
	for (int i = 0; i < len && rc == 0; i++) {
		struct tk_added *a = &all[i];
		if (a->special && a->len && tk_strmap_get(&tk->special_set, a->content, a->len) < 0) {
			if (tk_strmap_put(&tk->special_set, a->content, a->len, (uint32_t)i, 0) < 0)
				rc = err_sys(err, "out of memory");
			special_list[nspecial++] = (uint32_t)i;
		}
	}
	for (int i = 0; i < len && rc == 0; i++) {
		struct tk_added *a = &all[i];
		if (!a->len)
			continue;
		free(key);
		key = malloc(a->len + 1);
		if (!key) {
			rc = err_sys(err, "out of memory");
			break;
		}
		key[0] = (char)(a->special | a->lstrip << 1 | a->rstrip << 2 | a->single_word << 3 | a->normalized << 4);
		memcpy(key + 1, a->content, a->len);
		int64_t prev = tk_strmap_get(&seen, key, a->len + 1);
		if (prev >= 0) {
			/* an equal token is registered; HF ignores this one unless it was replaced since */
			uint64_t idx;
			if (tk_u64map_get(&tk->added_by_id, (uint64_t)prev, &idx) && idx < (uint64_t)i &&
			    all[idx].special == a->special && all[idx].lstrip == a->lstrip && all[idx].rstrip == a->rstrip &&
			    all[idx].single_word == a->single_word && all[idx].normalized == a->normalized &&
			    all[idx].len == a->len && !memcmp(all[idx].content, a->content, a->len))
				continue;
		}
		int64_t id = token_to_id(tk, a->content, a->len);
		if (id < 0) {
			if (max_added < 0)
				id = vocab_len;
			else if (max_added >= (int64_t)vocab_len || vocab_len == 0)
				id = max_added + 1;
			else
				id = vocab_len;
		}
		if (id > UINT32_MAX - 2) {
			rc = err_set(err, "added_tokens[%d]: id out of range", i);
			break;
		}
		a->id = (uint32_t)id;
		int64_t old = tk_strmap_get(&tk->added_map, a->content, a->len);
		if (tk_strmap_put(&tk->added_map, a->content, a->len, (uint32_t)id, 1) < 0 ||
		    tk_u64map_put(&tk->added_by_id, (uint64_t)id, (uint64_t)i) < 0 ||
		    tk_strmap_put(&seen, key, a->len + 1, (uint32_t)id, 1) < 0) {
			rc = err_sys(err, "out of memory");
			break;
		}
		/* the max over the map's values, recomputed only when the max itself went down */
		if (old >= 0 && old == max_added && id < old) {
			max_added = -1;
			for (size_t e = 0; e < tk->added_map.n; e++)
				if ((int64_t)tk->added_map.ents[e].val > max_added)
					max_added = tk->added_map.ents[e].val;
		} else if (id > max_added) {
			max_added = id;
		}
		if (tk_strmap_get(&tk->special_set, a->content, a->len) < 0)
			classic_list[nclassic++] = (uint32_t)i;
	}
	free(key);
	/* The tries: special tokens first, then the others; normalized ones are
	 * matched in their normalized form. */
	for (size_t k = 0; k < nspecial + nclassic && rc == 0; k++) {
		struct tk_added *a = &all[k < nspecial ? special_list[k] : classic_list[k - nspecial]];
		int64_t id = token_to_id(tk, a->content, a->len);
		if (id < 0)
			continue;
		if (!a->normalized) {
			if (trie_insert(&tk->trie_raw, a->content, a->len, (uint32_t)id) < 0)
				rc = err_sys(err, "out of memory");
			continue;
		}
		char *nc;
		size_t nl;
		if (tk_normalize_plain(tk, a->content, a->len, &nc, &nl, err) < 0) {
			rc = -1;
			break;
		}
		if (nl && trie_insert(&tk->trie_norm, nc, nl, (uint32_t)id) < 0)
			rc = err_sys(err, "out of memory");
		free(nc);
	}
	tk_strmap_free(&seen);
	free(special_list);
	free(classic_list);
	return rc;
}

/* ---- the tokenizer ---- */

static void free_norms(struct tokenizer *tk)
{
	for (size_t i = 0; i < tk->nnorm; i++) {
		free(tk->norm[i].pat);
		free(tk->norm[i].content);
		pcre2_code_free(tk->norm[i].re);
	}
	free(tk->norm);
	for (size_t i = 0; i < tk->npre; i++) {
		free(tk->pre[i].lit);
		pcre2_code_free(tk->pre[i].re);
	}
	free(tk->pre);
	for (size_t i = 0; i < tk->npost; i++) {
		struct tk_post *p = &tk->post[i];
		for (size_t k = 0; k < p->npre; k++)
			free(p->pre_toks[k]);
		for (size_t k = 0; k < p->npost; k++)
			free(p->post_toks[k]);
		free(p->pre_ids);
		free(p->post_ids);
		free(p->pre_toks);
		free(p->post_toks);
	}
	free(tk->post);
	for (size_t i = 0; i < tk->ndec; i++) {
		free(tk->dec[i].pat);
		free(tk->dec[i].content);
		pcre2_code_free(tk->dec[i].re);
	}
	free(tk->dec);
}

void tokenizer_free(struct tokenizer *tk)
{
	if (!tk)
		return;
	free(tk->name);
	tk_strmap_free(&tk->bpe.vocab);
	tk_strmap_free(&tk->bpe.raw);
	tk_u64map_free(&tk->bpe.merges);
	free(tk->bpe.char_id);
	free(tk->bpe.prefix);
	free(tk->bpe.suffix);
	for (size_t i = 0; i < tk->nadded; i++)
		free(tk->added[i].content);
	free(tk->added);
	tk_u64map_free(&tk->added_by_id);
	tk_strmap_free(&tk->added_map);
	tk_strmap_free(&tk->special_set);
	tk_u64map_free(&tk->trie_raw.edges);
	free(tk->trie_raw.term);
	tk_u64map_free(&tk->trie_norm.edges);
	free(tk->trie_norm.term);
	free_norms(tk);
	free(tk->id_str);
	free(tk->id_len);
	free(tk->id_special);
	pcre2_code_free(tk->re_gpt2);
	tk_scratch_free(tk->scratch);
	pthread_mutex_destroy(&tk->lock);
	free(tk);
}

static int build_id_table(struct tokenizer *tk, struct err *err)
{
	uint64_t max = 0;
	int any = 0;
	for (size_t e = 0; e < tk->bpe.vocab.n; e++) {
		any = 1;
		if (tk->bpe.vocab.ents[e].val > max)
			max = tk->bpe.vocab.ents[e].val;
	}
	for (size_t e = 0; e < tk->added_map.n; e++) {
		any = 1;
		if (tk->added_map.ents[e].val > max)
			max = tk->added_map.ents[e].val;
	}
	/* Ids number the tokens from 0 (they index the embedding's rows): one far
	 * past their count would only make the id tables huge. Added tokens get
	 * ids next to the vocabulary's (parse_added), so only it can hold one. */
	size_t count = tk->bpe.vocab.n + tk->added_map.n;
	if (any && max >= 2 * (uint64_t)count + 65536)
		return err_set(err, "model.vocab: token id %llu is far past the %zu tokens listed (ids number them from 0)",
			       (unsigned long long)max, count);
	tk->vocab_size = any ? (uint32_t)max + 1 : 0;
	size_t n = tk->vocab_size ? tk->vocab_size : 1;
	tk->id_str = calloc(n, sizeof *tk->id_str);
	tk->id_len = calloc(n, sizeof *tk->id_len);
	tk->id_special = calloc(n, 1);
	if (!tk->id_str || !tk->id_len || !tk->id_special)
		return err_sys(err, "out of memory");
	for (size_t e = 0; e < tk->bpe.vocab.n; e++) {
		const struct tk_strent *en = &tk->bpe.vocab.ents[e];
		tk->id_str[en->val] = tk->bpe.vocab.keys + en->off;
		tk->id_len[en->val] = en->len;
	}
	for (size_t i = 0; i < tk->nadded; i++) {
		uint64_t idx;
		const struct tk_added *a = &tk->added[i];
		if (!a->len || !tk_u64map_get(&tk->added_by_id, a->id, &idx) || idx != i)
			continue;
		tk->id_str[a->id] = a->content;
		tk->id_len[a->id] = (uint32_t)a->len;
	}
	for (uint32_t id = 0; id < tk->vocab_size; id++)
		if (tk->id_str[id] && tk_strmap_get(&tk->special_set, tk->id_str[id], tk->id_len[id]) >= 0)
			tk->id_special[id] = 1;
	return 0;
}

struct tokenizer *tokenizer_from_jv(jv config, const char *name, struct err *err)
{
	struct tokenizer *tk = NULL;
	if (jv_get_kind(config) != JV_KIND_OBJECT) {
		err_set(err, "%s: not a tokenizer.json (expected a JSON object)", name);
		goto fail;
	}
	tk = calloc(1, sizeof *tk);
	if (!tk) {
		err_sys(err, "out of memory");
		goto fail;
	}
	pthread_mutex_init(&tk->lock, NULL);
	if (!(tk->name = strdup(name ? name : "tokenizer"))) {
		err_sys(err, "out of memory");
		goto fail;
	}
	tk->bos_id = -1;
	struct loader L = { .tk = tk, .err = err };
	uint64_t fp = 0xcbf29ce484222325ull;
	fp = fnv(fp, "lorapipe-tokenizer-1", 20);

	jv version = jfield(config, "version");
	int bad_version = jv_get_kind(version) == JV_KIND_STRING && strcmp(jv_string_value(version), "1.0") != 0;
	jv_free(version);
	if (bad_version) {
		err_set(err, "version: unknown tokenizer version (expected \"1.0\")");
		goto wrap;
	}
	jv trunc = jfield(config, "truncation");
	jv_kind tkind = jv_get_kind(trunc);
	jv_free(trunc);
	if (tkind != JV_KIND_NULL && tkind != JV_KIND_INVALID) {
		err_set(err, "truncation: truncation at encode is not supported (set it to null)");
		goto wrap;
	}
	jv pad = jfield(config, "padding");
	if (jv_get_kind(pad) == JV_KIND_OBJECT) {
		jv strat = jfield(pad, "strategy");
		int fixed = jv_get_kind(strat) == JV_KIND_OBJECT; /* {"Fixed": n}; "BatchLongest" pads nothing alone */
		jv_free(strat);
		if (fixed) {
			jv_free(pad);
			err_set(err, "padding.strategy: fixed-length padding is not supported");
			goto wrap;
		}
	}
	jv_free(pad);

	jv model = jfield(config, "model");
	int rc = parse_model(&L, model, &fp);
	jv_free(model);
	if (rc < 0)
		goto wrap;

	jv norm = jfield(config, "normalizer");
	fp = fnv_jv(fp, jv_copy(norm));
	rc = (jv_get_kind(norm) == JV_KIND_NULL || jv_get_kind(norm) == JV_KIND_INVALID) ? 0
											: parse_normalizer(&L, norm, "normalizer");
	jv_free(norm);
	if (rc < 0)
		goto wrap;

	jv pre = jfield(config, "pre_tokenizer");
	fp = fnv_jv(fp, jv_copy(pre));
	rc = (jv_get_kind(pre) == JV_KIND_NULL || jv_get_kind(pre) == JV_KIND_INVALID) ? 0
										      : parse_pretok(&L, pre, "pre_tokenizer");
	jv_free(pre);
	if (rc < 0)
		goto wrap;
	tk->byte_level = tk->npre > 0 && tk->pre[tk->npre - 1].kind == TK_PRE_BYTELEVEL;
	if (tk->byte_level && build_raw_vocab(tk, err) < 0)
		goto wrap;
	if (!tk->byte_level && build_char_table(tk, err) < 0)
		goto wrap;

	jv post = jfield(config, "post_processor");
	fp = fnv_jv(fp, jv_copy(post));
	rc = (jv_get_kind(post) == JV_KIND_NULL || jv_get_kind(post) == JV_KIND_INVALID)
		     ? 0
		     : parse_post(&L, post, "post_processor");
	jv_free(post);
	if (rc < 0)
		goto wrap;

	jv dec = jfield(config, "decoder");
	tk->has_decoder = jv_get_kind(dec) != JV_KIND_NULL && jv_get_kind(dec) != JV_KIND_INVALID;
	rc = tk->has_decoder ? parse_decoder(&L, dec, "decoder") : 0;
	jv_free(dec);
	if (rc < 0)
		goto wrap;

	jv added = jfield(config, "added_tokens");
	rc = parse_added(&L, added, &fp);
	jv_free(added);
	if (rc < 0)
		goto wrap;
	if (build_id_table(tk, err) < 0)
		goto wrap;
	/* The vocabulary, in id order, closes the fingerprint. */
	for (uint32_t id = 0; id < tk->vocab_size; id++) {
		if (!tk->id_str[id])
			continue;
		fp = fnv(fnv_u32(fp, id), tk->id_str[id], tk->id_len[id]);
	}
	tk->fingerprint = fp;
	for (size_t i = 0; i < tk->npost && tk->bos_id < 0; i++)
		if (tk->post[i].kind == TK_POST_TEMPLATE && tk->post[i].npre)
			tk->bos_id = tk->post[i].pre_ids[0];
	jv_free(config);
	return tk;
wrap:
	err_wrap(err, "%s", name ? name : "tokenizer");
fail:
	jv_free(config);
	tokenizer_free(tk);
	return NULL;
}

struct tokenizer *tokenizer_from_json(const char *json, size_t len, const char *name, struct err *err)
{
	jv v;
	if (jsonl_parse(json, len, name, &v, err) < 0)
		return NULL;
	return tokenizer_from_jv(v, name, err);
}

static int ends_with(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);
	return a >= b && !strcmp(s + a - b, suf);
}

/* The BOS of tokenizer_config.json beside the file, when the post-processor names none. */
static void bos_from_config(struct tokenizer *tk, const char *dir)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
	struct err e;
	jv v;
	if (jsonl_load(path, 0, &v, &e) < 0)
		return; /* the config only adds the BOS; tokenizer.json decides the rest */
	jv bos = jfield(v, "bos_token");
	if (jv_get_kind(bos) == JV_KIND_OBJECT) {
		jv c = jfield(bos, "content");
		jv_free(bos);
		bos = c;
	}
	if (jv_get_kind(bos) == JV_KIND_STRING)
		tk->bos_id = tokenizer_id(tk, jv_string_value(bos));
	jv_free(bos);
	jv_free(v);
}

char *tokenizer_folder_gguf(const char *dir, int *count)
{
	char *file = NULL;
	DIR *d = opendir(dir);
	struct dirent *de;
	*count = 0;
	while (d && (de = readdir(d))) {
		if (!ends_with(de->d_name, ".gguf"))
			continue;
		++*count;
		free(file);
		size_t m = strlen(dir) + strlen(de->d_name) + 2;
		file = malloc(m);
		if (file)
			snprintf(file, m, "%s/%s", dir, de->d_name);
	}
	if (d)
		closedir(d);
	if (*count != 1) {
		free(file);
		return NULL;
	}
	return file;
}

struct tokenizer *tokenizer_load(const char *path, struct err *err)
{
	struct stat st;
	if (stat(path, &st) < 0) {
		/* a model that is not there is the caller's input at fault: EXIT_USAGE */
		if (errno == ENOENT || errno == ENOTDIR)
			err_set(err, "%s: %s", path, strerror(errno));
		else
			err_sys(err, "%s:", path);
		return NULL;
	}
	char *file = NULL, *dir = NULL;
	if (S_ISDIR(st.st_mode)) {
		size_t n = strlen(path) + 32;
		file = malloc(n);
		if (!file) {
			err_sys(err, "out of memory");
			return NULL;
		}
		snprintf(file, n, "%s/tokenizer.json", path);
		if (stat(file, &st) < 0) {
			/* No tokenizer.json: a folder holding one GGUF file will do. */
			free(file);
			int count;
			file = tokenizer_folder_gguf(path, &count);
			if (file) {
				struct tokenizer *tk = tokenizer_load_gguf(file, err);
				free(file);
				return tk;
			}
			err_set(err, "%s: no tokenizer.json%s", path,
				count > 1 ? " and more than one .gguf file" : " and no .gguf file");
			return NULL;
		}
		dir = strdup(path);
	} else {
		file = strdup(path);
		if (file) {
			char *slash = strrchr(file, '/');
			dir = slash ? strndup(file, (size_t)(slash - file)) : strdup(".");
		}
	}
	if (!file || !dir) {
		free(file);
		free(dir);
		err_sys(err, "out of memory");
		return NULL;
	}
	int is_gguf = ends_with(file, ".gguf");
	if (!is_gguf) {
		FILE *f = fopen(file, "rb");
		char magic[4] = { 0 };
		if (f) {
			is_gguf = fread(magic, 1, 4, f) == 4 && !memcmp(magic, "GGUF", 4);
			fclose(f);
		}
	}
	struct tokenizer *tk = NULL;
	if (is_gguf) {
		tk = tokenizer_load_gguf(file, err);
	} else {
		jv v;
		if (jsonl_load(file, 0, &v, err) == 0) {
			tk = tokenizer_from_jv(v, file, err);
			if (tk && tk->bos_id < 0)
				bos_from_config(tk, dir);
		}
	}
	free(file);
	free(dir);
	return tk;
}

uint32_t tokenizer_vocab_size(const struct tokenizer *tk) { return tk->vocab_size; }

const char *tokenizer_token(const struct tokenizer *tk, uint32_t id)
{
	return id < tk->vocab_size ? tk->id_str[id] : NULL;
}

int64_t tokenizer_id(const struct tokenizer *tk, const char *token)
{
	return token_to_id(tk, token, strlen(token));
}

int tokenizer_is_special(const struct tokenizer *tk, uint32_t id)
{
	return id < tk->vocab_size && tk->id_special[id];
}

int tokenizer_is_added(const struct tokenizer *tk, uint32_t id)
{
	uint64_t idx;
	return tk_u64map_get(&tk->added_by_id, id, &idx);
}

int64_t tokenizer_bos_id(const struct tokenizer *tk) { return tk->bos_id; }

int tokenizer_adds_bos(const struct tokenizer *tk)
{
	for (size_t i = 0; i < tk->npost; i++)
		if (tk->post[i].kind == TK_POST_TEMPLATE && tk->post[i].npre > 0 && tk->bos_id >= 0 &&
		    tk->post[i].pre_ids[0] == (uint64_t)tk->bos_id)
			return 1;
	return 0;
}

uint64_t tokenizer_fingerprint(const struct tokenizer *tk) { return tk->fingerprint; }
