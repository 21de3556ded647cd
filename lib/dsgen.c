/* dsgen: spec, buckets, prompts, reply checking and record assembly (see dsgen.h). */
#include "dsgen.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jq.h>
#include <utf8proc.h>

#include "jsonl.h"
#include "jsonschema.h"

#define MAX_TEXT_CHARS 2000 /* a user message longer than this is not an utterance */

/* ------------------------------------------------------------------ helpers */

static jv get(jv obj, const char *key)
{
	return jv_get_kind(obj) == JV_KIND_OBJECT ? jv_object_get(jv_copy(obj), jv_string(key)) : jv_invalid();
}

/* obj.a.b, obj not consumed. */
static jv get2(jv obj, const char *a, const char *b)
{
	jv mid = get(obj, a);
	jv r = get(mid, b);
	jv_free(mid);
	return r;
}

static char *dup_or_null(jv s)
{
	char *r = jv_get_kind(s) == JV_KIND_STRING ? strdup(jv_string_value(s)) : NULL;
	jv_free(s);
	return r;
}

uint64_t dsgen_hash(uint64_t seed, const char *key, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ull ^ (seed * 0x9e3779b97f4a7c15ull);
	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)key[i];
		h *= 0x100000001b3ull;
	}
	/* a final mix, so that near keys give unrelated ids */
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	return h ^ (h >> 33);
}

void dsgen_hex(uint64_t h, char out[17])
{
	snprintf(out, 17, "%016llx", (unsigned long long)h);
}

int dsgen_set_add(struct dsgen_set *s, uint64_t h)
{
	if (h == 0)
		h = 1; /* 0 marks an empty cell */
	if ((s->n + 1) * 2 > s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 256;
		uint64_t *v = calloc(cap, sizeof *v);
		if (!v)
			return -1;
		for (size_t i = 0; i < s->cap; i++)
			if (s->v[i]) {
				size_t j = s->v[i] & (cap - 1);
				while (v[j])
					j = (j + 1) & (cap - 1);
				v[j] = s->v[i];
			}
		free(s->v);
		s->v = v, s->cap = cap;
	}
	size_t j = h & (s->cap - 1);
	while (s->v[j]) {
		if (s->v[j] == h)
			return 0;
		j = (j + 1) & (s->cap - 1);
	}
	s->v[j] = h;
	s->n++;
	return 1;
}

int dsgen_set_has(const struct dsgen_set *s, uint64_t h)
{
	if (h == 0)
		h = 1;
	if (!s->cap)
		return 0;
	for (size_t j = h & (s->cap - 1); s->v[j]; j = (j + 1) & (s->cap - 1))
		if (s->v[j] == h)
			return 1;
	return 0;
}

void dsgen_set_free(struct dsgen_set *s)
{
	free(s->v);
	*s = (struct dsgen_set){0};
}

char *dsgen_normalize(const char *s)
{
	utf8proc_uint8_t *folded = NULL;
	utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)s, 0, &folded,
					  UTF8PROC_NULLTERM | UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_CASEFOLD |
						  UTF8PROC_STRIPMARK | UTF8PROC_COMPAT);
	if (n < 0)
		return NULL;
	char *out = malloc((size_t)n + 1);
	if (!out) {
		free(folded);
		return NULL;
	}
	size_t o = 0;
	int space = 0;
	for (utf8proc_ssize_t i = 0; i < n;) {
		utf8proc_int32_t cp;
		utf8proc_ssize_t k = utf8proc_iterate(folded + i, n - i, &cp);
		if (k <= 0)
			break;
		utf8proc_category_t cat = utf8proc_category(cp);
		int word = (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
			   (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
		if (word) {
			if (space && o)
				out[o++] = ' ';
			space = 0;
			memcpy(out + o, folded + i, (size_t)k);
			o += (size_t)k;
		} else {
			space = 1;
		}
		i += k;
	}
	out[o] = 0;
	free(folded);
	return out;
}

/* The end of the JSON value starting at s[0] ('{' or '['), or 0: brackets
 * counted outside strings. */
static size_t bracket_end(const char *s, size_t n)
{
	int depth = 0, str = 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (str) {
			if (c == '\\')
				i++;
			else if (c == '"')
				str = 0;
		} else if (c == '"') {
			str = 1;
		} else if (c == '{' || c == '[') {
			depth++;
		} else if (c == '}' || c == ']') {
			if (--depth == 0)
				return i + 1;
		}
	}
	return 0;
}

int dsgen_extract_json(const char *text, size_t len, jv *out)
{
	struct err e;
	if (jsonl_parse(text, len, "reply", out, &e) == 0) {
		if (jv_get_kind(*out) == JV_KIND_OBJECT || jv_get_kind(*out) == JV_KIND_ARRAY)
			return 0;
		jv_free(*out);
	}
	for (size_t i = 0; i < len; i++) {
		if (text[i] != '{' && text[i] != '[')
			continue;
		size_t end = bracket_end(text + i, len - i);
		if (end && jsonl_parse(text + i, end, "reply", out, &e) == 0)
			return 0;
	}
	return -1;
}

/* --------------------------------------------------------------------- spec */

static const struct {
	const char *code, *name;
	int cyrillic; /* 1 Cyrillic script, 0 Latin script, -1 not checked */
} lang_table[] = {
	{"en", "English", 0},   {"ru", "Russian", 1},    {"uk", "Ukrainian", 1}, {"be", "Belarusian", 1},
	{"bg", "Bulgarian", 1}, {"kk", "Kazakh", 1},     {"sr", "Serbian", -1},  {"de", "German", 0},
	{"fr", "French", 0},    {"es", "Spanish", 0},    {"it", "Italian", 0},   {"pt", "Portuguese", 0},
	{"nl", "Dutch", 0},     {"pl", "Polish", 0},     {"tr", "Turkish", 0},   {"zh", "Chinese", -1},
	{"ja", "Japanese", -1}, {"ko", "Korean", -1},    {"ar", "Arabic", -1},   {"hi", "Hindi", -1},
};

static int lang_script(const char *code)
{
	for (size_t i = 0; i < sizeof lang_table / sizeof *lang_table; i++)
		if (!strcmp(code, lang_table[i].code))
			return lang_table[i].cyrillic;
	return -1;
}

void dsgen_spec_free(struct dsgen_spec *s)
{
	if (!s)
		return;
	for (int i = 0; i < s->nlangs; i++)
		free(s->langs[i].code), free(s->langs[i].name);
	for (int i = 0; i < s->nitems; i++) {
		struct dsgen_item *it = &s->items[i];
		free(it->name), free(it->tool), free(it->description), free(it->hints);
		jv_free(it->params), jv_free(it->examples);
	}
	free(s->langs), free(s->items);
	free(s->system), free(s->path);
	jv_free(s->tools);
	free(s);
}

/* The examples of an intent or negative, each as {"text"[,"arguments"]}. */
static int load_examples(struct dsgen_spec *s, struct dsgen_item *it, jv ex, const char *where, struct err *err)
{
	it->examples = jv_array();
	if (!jv_is_valid(ex)) {
		jv_free(ex);
		return 0;
	}
	if (jv_get_kind(ex) != JV_KIND_ARRAY) {
		jv_free(ex);
		return err_set(err, "%s: %s.examples: must be an array of strings or {\"text\", \"arguments\"} objects",
			       s->path, where);
	}
	int rc = 0;
	jv_array_foreach(ex, i, e) {
		if (rc) {
			jv_free(e);
			continue;
		}
		jv text = jv_get_kind(e) == JV_KIND_STRING ? jv_copy(e) : get(e, "text");
		jv args = get(e, "arguments");
		if (jv_get_kind(text) != JV_KIND_STRING || !jv_string_length_bytes(jv_copy(text))) {
			rc = err_set(err, "%s: %s.examples[%d]: must be a non-empty string or an object with \"text\"",
				     s->path, where, i);
		} else if (jv_is_valid(args) && it->negative) {
			rc = err_set(err, "%s: %s.examples[%d].arguments: a negative calls no tool", s->path, where, i);
		} else if (jv_is_valid(args)) {
			struct err e2;
			if (jsonschema_validate(it->params, args, "arguments", &e2) < 0)
				rc = err_set(err, "%s: %s.examples[%d]: %s (tool %s)", s->path, where, i, e2.msg, it->tool);
		}
		if (rc == 0) {
			jv o = JV_OBJECT(jv_string("text"), jv_copy(text));
			if (jv_is_valid(args))
				o = jv_object_set(o, jv_string("arguments"), jv_copy(args));
			it->examples = jv_array_append(it->examples, o);
		}
		jv_free(text), jv_free(args), jv_free(e);
	}
	jv_free(ex);
	return rc;
}

static const char *const spec_keys[] = {"system", "tools", "intents", "negatives", "languages", "conversations",
					"negative_share", "per_request", "tool_call_format", "description", NULL};
static const char *const intent_keys[] = {"name", "tool", "description", "examples", "hints", "weight", NULL};
static const char *const negative_keys[] = {"name", "description", "examples", "weight", NULL};

/* Unknown keys are typos more often than not: refuse them. */
static int check_keys(const struct dsgen_spec *s, jv obj, const char *const *known, const char *where,
		      struct err *err)
{
	int rc = 0;
	jv_object_foreach(obj, k, v) {
		int found = 0;
		for (int i = 0; known[i]; i++)
			found |= !strcmp(known[i], jv_string_value(k));
		if (!found && rc == 0) {
			char list[400] = "";
			for (int i = 0; known[i]; i++)
				snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", known[i]);
			rc = err_set(err, "%s: %s%s\"%s\": unknown key (known: %s)", s->path, where, *where ? "." : "",
				     jv_string_value(k), list);
		}
		jv_free(k), jv_free(v);
	}
	return rc;
}

static double weight_of(const struct dsgen_spec *s, jv obj, const char *where, struct err *err)
{
	jv w = get(obj, "weight");
	double d = 1;
	if (jv_is_valid(w)) {
		if (jv_get_kind(w) != JV_KIND_NUMBER || !(jv_number_value(w) > 0) || !isfinite(jv_number_value(w)))
			d = -1, err_set(err, "%s: %s.weight: must be a number above 0", s->path, where);
		else
			d = jv_number_value(w);
	}
	jv_free(w);
	return d;
}

static int load_tools(struct dsgen_spec *s, struct err *err)
{
	if (jv_get_kind(s->tools) != JV_KIND_ARRAY || !jv_array_length(jv_copy(s->tools)))
		return err_set(err, "%s: tools: must be a non-empty array of OpenAI tool definitions "
				    "({\"type\": \"function\", \"function\": {\"name\", \"description\", \"parameters\"}})",
			       s->path);
	int rc = 0;
	jv_array_foreach(s->tools, i, t) {
		jv f = get(t, "function");
		jv name = get(f, "name"), params = get(f, "parameters"), type = get(t, "type");
		struct err e2;
		if (rc == 0) {
			if (jv_get_kind(f) != JV_KIND_OBJECT)
				rc = err_set(err, "%s: tools[%d]: expected {\"type\": \"function\", \"function\": {...}}", s->path, i);
			else if (jv_is_valid(type) && (jv_get_kind(type) != JV_KIND_STRING || strcmp(jv_string_value(type), "function")))
				rc = err_set(err, "%s: tools[%d].type: must be \"function\"", s->path, i);
			else if (jv_get_kind(name) != JV_KIND_STRING || !jv_string_length_bytes(jv_copy(name)))
				rc = err_set(err, "%s: tools[%d].function.name: must be a non-empty string", s->path, i);
			else if (jv_is_valid(params) && jsonschema_check(params, &e2) < 0)
				rc = err_set(err, "%s: tools[%d].function.parameters.%s", s->path, i, e2.msg);
			else if (jv_is_valid(params) && jv_get_kind(params) == JV_KIND_OBJECT) {
				jv pt = get(params, "type");
				if (jv_is_valid(pt) && (jv_get_kind(pt) != JV_KIND_STRING || strcmp(jv_string_value(pt), "object")))
					rc = err_set(err, "%s: tools[%d].function.parameters.type: must be \"object\"", s->path, i);
				jv_free(pt);
			}
			for (int j = 0; rc == 0 && j < i; j++) {
				jv other = jv_array_get(jv_copy(s->tools), j);
				jv on = get2(other, "function", "name");
				if (jv_equal(jv_copy(on), jv_copy(name)))
					rc = err_set(err, "%s: tools[%d].function.name: \"%s\" is also tools[%d]", s->path, i,
						     jv_string_value(name), j);
				jv_free(on), jv_free(other);
			}
		}
		jv_free(f), jv_free(name), jv_free(params), jv_free(type), jv_free(t);
	}
	return rc;
}

/* The parameters schema of a tool by name, or invalid. */
static jv tool_params(const struct dsgen_spec *s, const char *name)
{
	jv found = jv_invalid();
	jv_array_foreach(s->tools, i, t) {
		jv f = get(t, "function");
		jv n = get(f, "name");
		if (!jv_is_valid(found) && jv_get_kind(n) == JV_KIND_STRING && !strcmp(jv_string_value(n), name)) {
			found = get(f, "parameters");
			if (!jv_is_valid(found))
				found = JV_OBJECT(jv_string("type"), jv_string("object"), jv_string("properties"), jv_object());
		}
		jv_free(n), jv_free(f), jv_free(t);
		(void)i;
	}
	return found;
}

static char *tool_list(const struct dsgen_spec *s)
{
	static char buf[300];
	buf[0] = 0;
	jv_array_foreach(s->tools, i, t) {
		jv n = get2(t, "function", "name");
		if (jv_get_kind(n) == JV_KIND_STRING)
			snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "%s%s", i ? ", " : "", jv_string_value(n));
		jv_free(n), jv_free(t);
	}
	return buf;
}

static int load_items(struct dsgen_spec *s, jv list, int negative, struct err *err)
{
	const char *what = negative ? "negatives" : "intents";
	if (!jv_is_valid(list) && negative) {
		jv_free(list);
		return 0;
	}
	if (jv_get_kind(list) != JV_KIND_ARRAY || (!negative && !jv_array_length(jv_copy(list)))) {
		jv_free(list);
		return err_set(err, "%s: %s: must be a%s array of objects", s->path, what, negative ? "n" : " non-empty");
	}
	int n = jv_array_length(jv_copy(list));
	struct dsgen_item *items = realloc(s->items, (size_t)(s->nitems + n) * sizeof *items);
	if (!items) {
		jv_free(list);
		return err_sys(err, "out of memory");
	}
	s->items = items;
	int rc = 0;
	for (int i = 0; i < n && rc == 0; i++) {
		char where[64];
		snprintf(where, sizeof where, "%s[%d]", what, i);
		jv o = jv_array_get(jv_copy(list), i);
		struct dsgen_item *it = &s->items[s->nitems];
		*it = (struct dsgen_item){.negative = negative, .params = jv_null(), .examples = jv_array()};
		s->nitems++;
		if (jv_get_kind(o) != JV_KIND_OBJECT) {
			jv_free(o);
			rc = err_set(err, "%s: %s: must be an object", s->path, where);
			break;
		}
		if ((rc = check_keys(s, o, negative ? negative_keys : intent_keys, where, err)) < 0) {
			jv_free(o);
			break;
		}
		jv name = get(o, "name"), tool = get(o, "tool"), desc = get(o, "description"), hints = get(o, "hints");
		if (!negative && jv_get_kind(tool) != JV_KIND_STRING)
			rc = err_set(err, "%s: %s.tool: must be the name of one of the tools (%s)", s->path, where, tool_list(s));
		else if (jv_is_valid(name) && (jv_get_kind(name) != JV_KIND_STRING || !jv_string_length_bytes(jv_copy(name))))
			rc = err_set(err, "%s: %s.name: must be a non-empty string", s->path, where);
		else if (negative && !jv_is_valid(name))
			rc = err_set(err, "%s: %s.name: required", s->path, where);
		else if (negative && jv_get_kind(desc) != JV_KIND_STRING)
			rc = err_set(err, "%s: %s.description: required: the topic, in a few words", s->path, where);
		else if (jv_is_valid(desc) && jv_get_kind(desc) != JV_KIND_STRING)
			rc = err_set(err, "%s: %s.description: must be a string", s->path, where);
		else if (jv_is_valid(hints) && jv_get_kind(hints) != JV_KIND_STRING)
			rc = err_set(err, "%s: %s.hints: must be a string", s->path, where);
		if (rc == 0 && !negative) {
			jv_free(it->params);
			it->params = tool_params(s, jv_string_value(tool));
			if (!jv_is_valid(it->params))
				rc = err_set(err, "%s: %s.tool: unknown tool \"%s\" (tools: %s)", s->path, where,
					     jv_string_value(tool), tool_list(s));
		}
		if (rc == 0) {
			it->name = dup_or_null(jv_is_valid(name) ? jv_copy(name) : jv_copy(tool));
			it->tool = negative ? NULL : dup_or_null(jv_copy(tool));
			it->description = dup_or_null(jv_copy(desc));
			it->hints = dup_or_null(jv_copy(hints));
			jv req = get(it->params, "required");
			it->has_required = jv_get_kind(req) == JV_KIND_ARRAY && jv_array_length(jv_copy(req)) > 0;
			jv_free(req);
			if ((it->weight = weight_of(s, o, where, err)) < 0)
				rc = -1;
		}
		if (rc == 0) {
			jv_free(it->examples);
			rc = load_examples(s, it, get(o, "examples"), where, err);
		}
		for (int j = 0; rc == 0 && j < s->nitems - 1; j++)
			if (s->items[j].negative == negative && !strcmp(s->items[j].name, it->name))
				rc = err_set(err, "%s: %s.name: \"%s\" is used twice%s", s->path, where, it->name,
					     negative ? "" : " (two intents of one tool need names of their own)");
		jv_free(name), jv_free(tool), jv_free(desc), jv_free(hints), jv_free(o);
	}
	jv_free(list);
	return rc;
}

static int load_langs(struct dsgen_spec *s, jv list, struct err *err)
{
	if (!jv_is_valid(list)) {
		jv_free(list);
		list = JV_ARRAY(jv_string("en"));
	}
	if (jv_get_kind(list) != JV_KIND_ARRAY || !jv_array_length(jv_copy(list))) {
		jv_free(list);
		return err_set(err, "%s: languages: must be a non-empty array of codes (\"en\") or {\"code\", \"name\"}",
			       s->path);
	}
	int n = jv_array_length(jv_copy(list));
	s->langs = calloc((size_t)n, sizeof *s->langs);
	if (!s->langs) {
		jv_free(list);
		return err_sys(err, "out of memory");
	}
	int rc = 0;
	for (int i = 0; i < n && rc == 0; i++) {
		jv l = jv_array_get(jv_copy(list), i);
		jv code = jv_get_kind(l) == JV_KIND_STRING ? jv_copy(l) : get(l, "code");
		jv name = get(l, "name");
		if (jv_get_kind(code) != JV_KIND_STRING || !jv_string_length_bytes(jv_copy(code)) ||
		    strpbrk(jv_string_value(code), ": \t\n"))
			rc = err_set(err, "%s: languages[%d]: expected a language code such as \"en\" (no spaces or ':') "
					  "or {\"code\", \"name\"}", s->path, i);
		else if (jv_is_valid(name) && jv_get_kind(name) != JV_KIND_STRING)
			rc = err_set(err, "%s: languages[%d].name: must be a string", s->path, i);
		if (rc == 0) {
			s->langs[i].code = strdup(jv_string_value(code));
			const char *nm = jv_is_valid(name) ? jv_string_value(name) : NULL;
			for (size_t k = 0; !nm && k < sizeof lang_table / sizeof *lang_table; k++)
				if (!strcmp(lang_table[k].code, s->langs[i].code))
					nm = lang_table[k].name;
			s->langs[i].name = strdup(nm ? nm : s->langs[i].code);
			s->nlangs++;
			for (int j = 0; rc == 0 && j < i; j++)
				if (!strcmp(s->langs[j].code, s->langs[i].code))
					rc = err_set(err, "%s: languages[%d]: \"%s\" is listed twice", s->path, i, s->langs[i].code);
		}
		jv_free(l), jv_free(code), jv_free(name);
	}
	jv_free(list);
	return rc;
}

struct dsgen_spec *dsgen_spec_load(const char *path, struct err *err)
{
	jv root;
	char *text;
	size_t len;
	if (jsonl_load_text(path, 16 << 20, &root, &text, &len, err) < 0)
		return NULL;
	struct dsgen_spec *s = calloc(1, sizeof *s);
	if (!s) {
		jv_free(root), free(text);
		return err_sys(err, "out of memory"), NULL;
	}
	s->path = strdup(path);
	s->tools = jv_null();
	int rc = 0;
	if (jv_get_kind(root) != JV_KIND_OBJECT)
		rc = err_set(err, "%s: the spec must be a JSON object", path);
	if (rc == 0)
		rc = check_keys(s, root, spec_keys, "", err);
	if (rc == 0) {
		jv sys = get(root, "system");
		if (jv_is_valid(sys) && jv_get_kind(sys) != JV_KIND_STRING)
			rc = err_set(err, "%s: system: must be a string (the assistant's system prompt)", path);
		s->system = dup_or_null(sys);
	}
	if (rc == 0) {
		jv_free(s->tools);
		s->tools = get(root, "tools");
		rc = load_tools(s, err);
	}
	if (rc == 0)
		rc = load_langs(s, get(root, "languages"), err);
	if (rc == 0)
		rc = load_items(s, get(root, "intents"), 0, err);
	if (rc == 0)
		rc = load_items(s, get(root, "negatives"), 1, err);
	int nneg = 0;
	for (int i = 0; i < s->nitems; i++)
		nneg += s->items[i].negative;
	if (rc == 0) {
		jv c = get(root, "conversations");
		s->conversations = 100;
		if (jv_is_valid(c) && (jv_get_kind(c) != JV_KIND_NUMBER || jv_number_value(c) < 1 ||
				       jv_number_value(c) > 1e8 || jv_number_value(c) != floor(jv_number_value(c))))
			rc = err_set(err, "%s: conversations: must be a whole number from 1 to 100000000", path);
		else if (jv_is_valid(c))
			s->conversations = (long)jv_number_value(c);
		jv_free(c);
	}
	if (rc == 0) {
		jv c = get(root, "negative_share");
		s->negative_share = nneg ? 0.25 : 0;
		if (jv_is_valid(c) && (jv_get_kind(c) != JV_KIND_NUMBER || !(jv_number_value(c) >= 0) || jv_number_value(c) >= 1))
			rc = err_set(err, "%s: negative_share: must be a number from 0 up to (not including) 1", path);
		else if (jv_is_valid(c) && jv_number_value(c) > 0 && !nneg)
			rc = err_set(err, "%s: negative_share: %g, but the spec has no negatives", path, jv_number_value(c));
		else if (jv_is_valid(c))
			s->negative_share = jv_number_value(c);
		jv_free(c);
	}
	if (rc == 0) {
		jv c = get(root, "per_request");
		s->per_request = 5;
		if (jv_is_valid(c) && (jv_get_kind(c) != JV_KIND_NUMBER || jv_number_value(c) < 1 || jv_number_value(c) > 50 ||
				       jv_number_value(c) != floor(jv_number_value(c))))
			rc = err_set(err, "%s: per_request: must be a whole number from 1 to 50", path);
		else if (jv_is_valid(c))
			s->per_request = (int)jv_number_value(c);
		jv_free(c);
	}
	if (rc == 0) {
		jv c = get(root, "tool_call_format");
		if (jv_is_valid(c) && (jv_get_kind(c) != JV_KIND_STRING ||
				       (strcmp(jv_string_value(c), "object") && strcmp(jv_string_value(c), "string"))))
			rc = err_set(err, "%s: tool_call_format: must be \"object\" (arguments as a JSON object) or "
					  "\"string\" (arguments as JSON text, as the OpenAI API returns them)", path);
		else if (jv_is_valid(c))
			s->args_string = !strcmp(jv_string_value(c), "string");
		jv_free(c);
	}
	jv_free(root);
	if (rc) /* "spec.json: intents[1].tool: ..." -> "spec.json:14: intents[1].tool: ..." */
		jsonl_err_line(err, path, text, len);
	free(text);
	if (rc) {
		dsgen_spec_free(s);
		return NULL;
	}
	return s;
}

/* ----------------------------------------------------------- output reading */

long dsgen_scan_output(const char *path, int (*fn)(void *ctx, jv rec, long line, struct err *err), void *ctx,
		       long *cut, struct err *err)
{
	*cut = 0;
	FILE *f = fopen(path, "r+b");
	if (!f && errno == ENOENT)
		return 0;
	if (!f)
		return err_sys(err, "%s: cannot open to resume:", path);
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	long lineno = 0, count = 0;
	off_t good = 0; /* the end of the last complete, valid line */
	int rc = 0, bad_line = 0;
	while (rc == 0 && (n = getline(&line, &cap, f)) > 0) {
		lineno++;
		int complete = line[n - 1] == '\n';
		size_t len = (size_t)n - complete;
		jv rec;
		struct err e;
		int blank = strspn(line, " \t\r\n") == (size_t)n;
		if (blank && complete) {
			good += n;
			continue;
		}
		int parsed = !blank && jsonl_parse_record(path, lineno, line, len, &rec, &e) > 0;
		if (!complete || !parsed) {
			/* only the last line may be cut short */
			if (bad_line == 0)
				bad_line = lineno;
			if (parsed)
				jv_free(rec);
			if (complete && !feof(f) && getc(f) != EOF) {
				rc = err_set(err, "%s:%ld: not a record of ds-gen (%s); refusing to append to this file", path,
					     lineno, parsed ? "no final newline" : e.msg);
			}
			break;
		}
		good += n;
		count++;
		if (fn(ctx, rec, lineno, err) < 0)
			rc = -1;
	}
	free(line);
	if (rc == 0 && ferror(f))
		rc = err_sys(err, "%s: read error:", path);
	if (rc == 0 && bad_line) {
		struct stat st;
		if (fstat(fileno(f), &st) == 0)
			*cut = (long)(st.st_size - good);
		if (ftruncate(fileno(f), good) < 0)
			rc = err_sys(err, "%s: cannot cut off the partial last line:", path);
	}
	fclose(f);
	return rc ? -1 : count;
}

/* ------------------------------------------------------------- jq --validate */

struct dsgen_filter {
	jq_state *jq;
	char msg[512];
};

static void filter_err(void *data, jv msg)
{
	struct dsgen_filter *f = data;
	if (jv_get_kind(msg) == JV_KIND_STRING)
		snprintf(f->msg, sizeof f->msg, "%s", jv_string_value(msg));
	jv_free(msg);
}

struct dsgen_filter *dsgen_filter_new(const char *program, struct err *err)
{
	struct dsgen_filter *f = calloc(1, sizeof *f);
	if (!f || !(f->jq = jq_init())) {
		free(f);
		return err_sys(err, "out of memory"), NULL;
	}
	jq_set_error_cb(f->jq, filter_err, f);
	if (!jq_compile(f->jq, program)) {
		err_set(err, "--validate: cannot compile \"%s\": %s", program, f->msg[0] ? f->msg : "syntax error");
		dsgen_filter_free(f);
		return NULL;
	}
	return f;
}

void dsgen_filter_free(struct dsgen_filter *f)
{
	if (!f)
		return;
	jq_teardown(&f->jq);
	free(f);
}

int dsgen_filter_accepts(struct dsgen_filter *f, jv rec, struct err *err)
{
	f->msg[0] = 0;
	jq_start(f->jq, jv_copy(rec), 0);
	jv r = jq_next(f->jq);
	int rc;
	if (jv_is_valid(r)) {
		rc = jv_get_kind(r) != JV_KIND_FALSE && jv_get_kind(r) != JV_KIND_NULL;
	} else if (jv_invalid_has_msg(jv_copy(r))) {
		jv m = jv_invalid_get_msg(jv_copy(r));
		rc = err_set(err, "--validate: %s", jv_get_kind(m) == JV_KIND_STRING ? jv_string_value(m) : "error");
		jv_free(m);
	} else {
		rc = 0; /* no output: not accepted */
	}
	jv_free(r);
	return rc;
}

/* --------------------------------------------------------------- generation */

struct bucket {
	int item, lang;
	long target, have;
	unsigned char *filled; /* [target] */
	uint64_t *ids;         /* [target] the record ids of the slots */
	long promised;         /* utterances asked for by requests in flight */
	long first_free;       /* no empty slot below this one */
	long requests, max_requests;
};

/* What dsgen hands http as req->user. */
struct request_tag {
	int bucket;
	long number, asked;
	char name[160];
};

/* A slot found by its record id (the index a resumed run looks ids up in). */
struct slot_ref {
	uint64_t id;
	int bucket;
	long k;
};

struct dsgen {
	const struct dsgen_spec *spec;
	struct dsgen_opts o;
	struct bucket *b;
	int nb, rr;
	struct slot_ref *index; /* every slot, sorted by id */
	struct dsgen_set texts;
	struct dsgen_counts c;
	jv gen_system;
};

static void slot_key(const struct dsgen *g, const struct bucket *b, long k, char *out, size_t n)
{
	const struct dsgen_item *it = &g->spec->items[b->item];
	snprintf(out, n, "%s:%s:%s:%ld", it->negative ? "negative" : "intent", it->name, g->spec->langs[b->lang].code, k);
}

/* Splits total over n shares by weight (largest remainder; ties to the earlier). */
static void apportion(long total, const double *w, int n, long *out)
{
	double sum = 0;
	for (int i = 0; i < n; i++)
		sum += w[i];
	long given = 0;
	double *rem = malloc((size_t)n * sizeof *rem);
	for (int i = 0; i < n; i++) {
		double exact = sum > 0 ? total * w[i] / sum : 0;
		out[i] = (long)floor(exact);
		given += out[i];
		if (rem)
			rem[i] = exact - out[i];
	}
	while (given < total && rem) {
		int best = 0;
		for (int i = 1; i < n; i++)
			if (rem[i] > rem[best] + 1e-12)
				best = i;
		out[best]++;
		rem[best] = -1;
		given++;
	}
	free(rem);
}

static int cmp_slot_ref(const void *a, const void *b)
{
	uint64_t x = ((const struct slot_ref *)a)->id, y = ((const struct slot_ref *)b)->id;
	return x < y ? -1 : x > y;
}

struct dsgen *dsgen_new(const struct dsgen_spec *spec, const struct dsgen_opts *o, struct err *err)
{
	struct dsgen *g = calloc(1, sizeof *g);
	if (!g)
		return err_sys(err, "out of memory"), NULL;
	g->spec = spec;
	g->o = *o;
	g->gen_system = jv_string("You write realistic, varied messages that users send to a chat assistant, to "
				  "train that assistant. You always reply with JSON only.");
	if (!g->o.per_request)
		g->o.per_request = spec->per_request;
	long total = o->conversations ? o->conversations : spec->conversations;
	int nneg = 0, nint = 0;
	for (int i = 0; i < spec->nitems; i++)
		spec->items[i].negative ? nneg++ : nint++;
	long negs = nneg ? lround(total * spec->negative_share) : 0;
	long ints = total - negs;
	double *w = calloc((size_t)spec->nitems + (size_t)spec->nlangs, sizeof *w);
	long *per_item = calloc((size_t)spec->nitems, sizeof *per_item);
	long *per_lang = calloc((size_t)spec->nlangs, sizeof *per_lang);
	g->nb = spec->nitems * spec->nlangs;
	g->b = calloc((size_t)g->nb, sizeof *g->b);
	if (!w || !per_item || !per_lang || !g->b) {
		free(w), free(per_item), free(per_lang);
		dsgen_free(g);
		return err_sys(err, "out of memory"), NULL;
	}
	/* intents and negatives each get their total by weight */
	for (int neg = 0; neg < 2; neg++) {
		int idx[spec->nitems > 0 ? spec->nitems : 1], n = 0;
		for (int i = 0; i < spec->nitems; i++)
			if (spec->items[i].negative == neg)
				w[n] = spec->items[i].weight, idx[n++] = i;
		long got[n > 0 ? n : 1];
		if (n)
			apportion(neg ? negs : ints, w, n, got);
		for (int k = 0; k < n; k++)
			per_item[idx[k]] = got[k];
	}
	/* each item's count over the languages; the odd ones rotate so languages stay even overall */
	int rot = 0;
	for (int i = 0; i < spec->nitems; i++) {
		for (int l = 0; l < spec->nlangs; l++)
			w[l] = 1;
		apportion(per_item[i], w, spec->nlangs, per_lang);
		long extra = per_item[i] % spec->nlangs;
		for (int l = 0; l < spec->nlangs; l++) {
			int lang = (l + rot) % spec->nlangs;
			struct bucket *b = &g->b[i * spec->nlangs + lang];
			b->item = i, b->lang = lang;
			b->target = per_lang[l];
		}
		rot = (int)((rot + extra) % spec->nlangs);
	}
	free(w), free(per_item), free(per_lang);
	for (int i = 0; i < g->nb; i++) {
		struct bucket *b = &g->b[i];
		b->filled = calloc((size_t)b->target + 1, 1);
		b->ids = calloc((size_t)b->target + 1, sizeof *b->ids);
		if (!b->filled || !b->ids) {
			dsgen_free(g);
			return err_sys(err, "out of memory"), NULL;
		}
		for (long k = 0; k < b->target; k++) {
			char key[300];
			slot_key(g, b, k, key, sizeof key);
			b->ids[k] = dsgen_hash(o->seed, key, strlen(key));
		}
		g->c.target += b->target;
	}
	if (!(g->index = malloc(((size_t)g->c.target + 1) * sizeof *g->index))) {
		dsgen_free(g);
		return err_sys(err, "out of memory"), NULL;
	}
	long n = 0;
	for (int i = 0; i < g->nb; i++)
		for (long k = 0; k < g->b[i].target; k++)
			g->index[n++] = (struct slot_ref){.id = g->b[i].ids[k], .bucket = i, .k = k};
	qsort(g->index, (size_t)n, sizeof *g->index, cmp_slot_ref);
	return g;
}

void dsgen_free(struct dsgen *g)
{
	if (!g)
		return;
	for (int i = 0; g->b && i < g->nb; i++)
		free(g->b[i].filled), free(g->b[i].ids);
	free(g->b);
	free(g->index);
	dsgen_set_free(&g->texts);
	jv_free(g->gen_system);
	free(g);
}

const struct dsgen_counts *dsgen_get_counts(const struct dsgen *g)
{
	return &g->c;
}

/* Parses a record id of 16 hex digits; 0 when it is not one. */
static uint64_t parse_id(jv id)
{
	if (jv_get_kind(id) != JV_KIND_STRING || jv_string_length_bytes(jv_copy(id)) != 16)
		return 0;
	char *end;
	uint64_t h = strtoull(jv_string_value(id), &end, 16);
	return *end ? 0 : h;
}

static void text_hash_add(struct dsgen *g, const char *text)
{
	char *norm = dsgen_normalize(text);
	if (norm) {
		dsgen_set_add(&g->texts, dsgen_hash(0, norm, strlen(norm)));
		free(norm);
	}
}

void dsgen_add_existing(struct dsgen *g, jv rec)
{
	jv id = get(rec, "id");
	uint64_t h = parse_id(id);
	jv_free(id);
	int placed = 0;
	struct slot_ref key = {.id = h};
	struct slot_ref *r = h ? bsearch(&key, g->index, (size_t)g->c.target, sizeof *g->index, cmp_slot_ref) : NULL;
	if (r && !g->b[r->bucket].filled[r->k]) {
		struct bucket *b = &g->b[r->bucket];
		b->filled[r->k] = 1;
		b->have++;
		g->c.present++;
		placed = 1;
	}
	if (!placed)
		g->c.unknown_ids++;
	/* the user's text joins the duplicate check either way */
	jv msgs = get(rec, "messages");
	if (jv_get_kind(msgs) == JV_KIND_ARRAY)
		jv_array_foreach(msgs, i, m) {
			jv role = get(m, "role"), content = get(m, "content");
			if (jv_get_kind(role) == JV_KIND_STRING && !strcmp(jv_string_value(role), "user") &&
			    jv_get_kind(content) == JV_KIND_STRING)
				text_hash_add(g, jv_string_value(content));
			jv_free(role), jv_free(content), jv_free(m);
			(void)i;
		}
	jv_free(msgs);
	jv_free(rec);
}

/* The response_format asking for {"items":[...]} of this item's shape. */
static jv items_schema(const struct dsgen_item *it, long n)
{
	jv props = JV_OBJECT(jv_string("text"), JV_OBJECT(jv_string("type"), jv_string("string")));
	jv req = JV_ARRAY(jv_string("text"));
	if (it->negative) {
		props = jv_object_set(props, jv_string("answer"), JV_OBJECT(jv_string("type"), jv_string("string")));
		req = jv_array_append(req, jv_string("answer"));
	} else {
		props = jv_object_set(props, jv_string("arguments"), jv_copy(it->params));
		req = jv_array_append(req, jv_string("arguments"));
	}
	jv item = JV_OBJECT(jv_string("type"), jv_string("object"), jv_string("properties"), props,
			    jv_string("required"), req);
	return JV_OBJECT(jv_string("type"), jv_string("object"), jv_string("properties"),
			 JV_OBJECT(jv_string("items"), JV_OBJECT(jv_string("type"), jv_string("array"),
								 jv_string("items"), item, jv_string("minItems"),
								 jv_number((double)n), jv_string("maxItems"), jv_number((double)n))),
			 jv_string("required"), JV_ARRAY(jv_string("items")));
}

/* The prompt: what to write, in which language, with examples and the reply's shape. */
static char *prompt(const struct dsgen *g, const struct bucket *b, long n)
{
	const struct dsgen_item *it = &g->spec->items[b->item];
	const struct dsgen_lang *l = &g->spec->langs[b->lang];
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return NULL;
	if (g->spec->system)
		fprintf(f, "The assistant's instructions are: \"%s\"\n\n", g->spec->system);
	if (!it->negative) {
		jv fn = jv_invalid();
		jv_array_foreach(g->spec->tools, i, t) {
			jv nm = get2(t, "function", "name");
			if (!jv_is_valid(fn) && jv_get_kind(nm) == JV_KIND_STRING && !strcmp(jv_string_value(nm), it->tool))
				fn = get(t, "function");
			jv_free(nm), jv_free(t);
			(void)i;
		}
		jv desc = get(fn, "description");
		fprintf(f, "The assistant has a tool \"%s\"%s%s. Its parameters (JSON schema): ", it->tool,
			jv_get_kind(desc) == JV_KIND_STRING ? ": " : "",
			jv_get_kind(desc) == JV_KIND_STRING ? jv_string_value(desc) : "");
		jv_free(desc), jv_free(fn);
		jv ps = jsonl_text(jv_copy(it->params)); /* the numbers as the spec writes them */
		fprintf(f, "%s\n\n", jv_string_value(ps));
		jv_free(ps);
		fprintf(f, "Write %ld different messages in %s that a user sends to the assistant and that need this tool", n,
			l->name);
		if (it->description)
			fprintf(f, " (%s)", it->description);
		fprintf(f, ". Vary the wording, length, tone and formality; write as real users do.\n");
		if (it->hints)
			fprintf(f, "Arguments: %s\n", it->hints);
		fprintf(f, "For each message give the tool's arguments that the message implies, as a JSON object valid "
			   "for the schema ({} when the message gives none%s).\n",
			it->has_required ? "; every message must give the required ones" : "");
	} else {
		fprintf(f, "Write %ld different messages in %s that a user sends to the assistant on this topic: %s. "
			   "They may look related to the assistant's tools (", n, l->name, it->description);
		jv_array_foreach(g->spec->tools, i, t) {
			jv nm = get2(t, "function", "name");
			if (jv_get_kind(nm) == JV_KIND_STRING)
				fprintf(f, "%s%s", i ? ", " : "", jv_string_value(nm));
			jv_free(nm), jv_free(t);
		}
		fprintf(f, ") but need none of them: the assistant answers from general knowledge. Vary the wording, "
			   "length and tone.\nFor each message also write the assistant's answer: short, helpful, in %s.\n",
			l->name);
	}
	if (jv_array_length(jv_copy(it->examples))) {
		fprintf(f, "Examples of such messages (write new ones, do not copy these):\n");
		jv_array_foreach(it->examples, i, e) {
			jv t = get(e, "text"), a = get(e, "arguments");
			fprintf(f, "- %s", jv_string_value(t));
			if (jv_is_valid(a)) {
				jv s = jsonl_text(jv_copy(a));
				fprintf(f, "  (arguments: %s)", jv_string_value(s));
				jv_free(s);
			}
			fputc('\n', f);
			jv_free(t), jv_free(a), jv_free(e);
			(void)i;
		}
	}
	/* The reply's shape shown with a real example: small models copy
	 * placeholders such as "<message>" literally. */
	jv ex = jv_array_length(jv_copy(it->examples)) ? jv_array_get(jv_copy(it->examples), 0) : jv_object();
	jv ex_text = get(ex, "text"), ex_args = get(ex, "arguments");
	jv shape = JV_OBJECT(jv_string("text"), jv_is_valid(ex_text) ? ex_text : jv_string("..."));
	if (it->negative)
		shape = jv_object_set(shape, jv_string("answer"), jv_string("..."));
	else
		shape = jv_object_set(shape, jv_string("arguments"), jv_is_valid(ex_args) ? jv_copy(ex_args) : jv_object());
	if (!jv_is_valid(ex_text))
		jv_free(ex_text);
	jv_free(ex_args), jv_free(ex);
	jv shown = jsonl_text(JV_OBJECT(jv_string("items"), JV_ARRAY(shape)));
	fprintf(f, "\nReply with a JSON object only, of this shape, with %ld new messages: %s", n, jv_string_value(shown));
	jv_free(shown);
	fclose(f);
	return buf;
}

static struct bucket *pick_bucket(struct dsgen *g)
{
	for (int k = 0; k < g->nb; k++) {
		struct bucket *b = &g->b[(g->rr + k) % g->nb];
		long want = b->target - b->have;
		if (want <= 0 || b->promised >= want)
			continue;
		if (!b->max_requests)
			b->max_requests = (want + g->o.per_request - 1) / g->o.per_request + g->o.item_retries;
		if (b->requests >= b->max_requests)
			continue;
		g->rr = (int)((b - g->b) + 1) % g->nb;
		return b;
	}
	return NULL;
}

int dsgen_next(struct dsgen *g, struct http_request *req)
{
	struct bucket *b = pick_bucket(g);
	if (!b)
		return 0;
	const struct dsgen_item *it = &g->spec->items[b->item];
	long want = b->target - b->have - b->promised;
	long n = want < g->o.per_request ? want : g->o.per_request;
	struct request_tag *tag = calloc(1, sizeof *tag);
	char *text = prompt(g, b, n);
	if (!tag || !text) {
		free(tag), free(text);
		return -1;
	}
	tag->bucket = (int)(b - g->b);
	tag->number = b->requests++;
	tag->asked = n;
	b->promised += n;
	snprintf(tag->name, sizeof tag->name, "%s:%s:%s:r%ld", it->negative ? "negative" : "intent", it->name,
		 g->spec->langs[b->lang].code, tag->number);
	uint64_t h = dsgen_hash(g->o.seed, tag->name, strlen(tag->name));
	dsgen_hex(h, req->id);
	jv body = jv_object();
	if (g->o.model)
		body = jv_object_set(body, jv_string("model"), jv_string(g->o.model));
	body = jv_object_set(body, jv_string("messages"),
			     JV_ARRAY(JV_OBJECT(jv_string("role"), jv_string("system"), jv_string("content"), jv_copy(g->gen_system)),
				      JV_OBJECT(jv_string("role"), jv_string("user"), jv_string("content"), jv_string(text))));
	if (g->o.temperature >= 0)
		body = jv_object_set(body, jv_string("temperature"), jv_number(g->o.temperature));
	if (g->o.max_tokens > 0)
		body = jv_object_set(body, jv_string("max_tokens"), jv_number((double)g->o.max_tokens));
	body = jv_object_set(body, jv_string("seed"), jv_number((double)(h & 0x7fffffff)));
	if (g->o.format == DSGEN_FORMAT_JSON_SCHEMA)
		body = jv_object_set(body, jv_string("response_format"),
				     JV_OBJECT(jv_string("type"), jv_string("json_schema"), jv_string("json_schema"),
					       JV_OBJECT(jv_string("name"), jv_string("items"), jv_string("schema"),
							 items_schema(it, n))));
	else if (g->o.format == DSGEN_FORMAT_JSON_OBJECT_SCHEMA)
		body = jv_object_set(body, jv_string("response_format"),
				     JV_OBJECT(jv_string("type"), jv_string("json_object"), jv_string("schema"), items_schema(it, n)));
	else if (g->o.format == DSGEN_FORMAT_JSON_OBJECT)
		body = jv_object_set(body, jv_string("response_format"),
				     JV_OBJECT(jv_string("type"), jv_string("json_object")));
	jv s = jsonl_text(body);
	req->len = (size_t)jv_string_length_bytes(jv_copy(s));
	req->body = strdup(jv_string_value(s));
	jv_free(s);
	free(text);
	req->est_tokens = (long)(req->len / 4) + (g->o.max_tokens > 0 ? g->o.max_tokens : 60 * n);
	req->user = tag;
	return req->body ? 1 : -1;
}

const char *dsgen_request_name(const struct http_request *req)
{
	return ((const struct request_tag *)req->user)->name;
}

/* Share of a text's letters in the language's script: 1 fine, 0 not. */
static int script_ok(const char *text, const char *lang)
{
	int want = lang_script(lang);
	if (want < 0)
		return 1;
	long cyr = 0, lat = 0;
	utf8proc_ssize_t n = (utf8proc_ssize_t)strlen(text);
	for (utf8proc_ssize_t i = 0; i < n;) {
		utf8proc_int32_t cp;
		utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)text + i, n - i, &cp);
		if (k <= 0)
			return 0;
		if (cp >= 0x400 && cp <= 0x4FF)
			cyr++;
		else if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= 0xC0 && cp <= 0x24F))
			lat++;
		i += k;
	}
	if (cyr + lat == 0)
		return 1; /* digits and signs only: no opinion */
	return want ? cyr * 2 >= cyr + lat : lat * 2 >= cyr + lat;
}

/* "<message>", "<message_1>": small models copy the reply's shape from the prompt. */
static int placeholder(const char *text)
{
	while (*text == ' ')
		text++;
	size_t n = strlen(text);
	while (n && text[n - 1] == ' ')
		n--;
	return n >= 2 && text[0] == '<' && text[n - 1] == '>' && !memchr(text + 1, '<', n - 2);
}

static void reject(jv *rejects, const struct request_tag *tag, const char *reason, jv item)
{
	*rejects = jv_array_append(*rejects, JV_OBJECT(jv_string("request"), jv_string(tag->name), jv_string("reason"),
						       jv_string(reason), jv_string("item"), item));
}

/* The list of utterances in a parsed reply: {"items": [...]}, a bare array,
 * one object with "text", or the first array value of an object. */
static jv reply_items(jv v)
{
	if (jv_get_kind(v) == JV_KIND_ARRAY)
		return v;
	jv items = get(v, "items");
	if (jv_get_kind(items) == JV_KIND_ARRAY) {
		jv_free(v);
		return items;
	}
	jv_free(items);
	jv text = get(v, "text");
	if (jv_get_kind(text) == JV_KIND_STRING) {
		jv_free(text);
		return JV_ARRAY(v);
	}
	jv_free(text);
	jv found = jv_invalid();
	jv_object_foreach(v, k, e) {
		if (!jv_is_valid(found) && jv_get_kind(e) == JV_KIND_ARRAY)
			found = jv_copy(e);
		jv_free(k), jv_free(e);
	}
	jv_free(v);
	return found;
}

/* The record of slot k of bucket b. */
static jv assemble(const struct dsgen *g, const struct bucket *b, long k, const char *text, jv args,
		   const char *answer)
{
	const struct dsgen_item *it = &g->spec->items[b->item];
	char id[17];
	dsgen_hex(b->ids[k], id);
	jv msgs = jv_array();
	if (g->spec->system)
		msgs = jv_array_append(msgs, JV_OBJECT(jv_string("role"), jv_string("system"), jv_string("content"),
						       jv_string(g->spec->system)));
	msgs = jv_array_append(msgs, JV_OBJECT(jv_string("role"), jv_string("user"), jv_string("content"), jv_string(text)));
	if (it->negative) {
		jv_free(args);
		msgs = jv_array_append(msgs, JV_OBJECT(jv_string("role"), jv_string("assistant"), jv_string("content"),
						       jv_string(answer)));
	} else {
		if (g->spec->args_string) /* a float keeps its fraction, a long integer its digits */
			args = jsonl_text(args);
		jv call = JV_OBJECT(jv_string("type"), jv_string("function"), jv_string("function"),
				    JV_OBJECT(jv_string("name"), jv_string(it->tool), jv_string("arguments"), args));
		msgs = jv_array_append(msgs, JV_OBJECT(jv_string("role"), jv_string("assistant"), jv_string("content"),
						       jv_string(""), jv_string("tool_calls"), JV_ARRAY(call)));
	}
	return JV_OBJECT(jv_string("id"), jv_string(id), jv_string("messages"), msgs, jv_string("tools"),
			 jv_copy(g->spec->tools), jv_string(it->negative ? "negative" : "intent"), jv_string(it->name),
			 jv_string("lang"), jv_string(g->spec->langs[b->lang].code));
}

/* Checks one utterance; on success fills a slot and appends its record. */
static void take_item(struct dsgen *g, struct bucket *b, const struct request_tag *tag, jv item, jv *records,
		      jv *rejects)
{
	const struct dsgen_item *it = &g->spec->items[b->item];
	const char *lang = g->spec->langs[b->lang].code;
	if (jv_get_kind(item) == JV_KIND_STRING)
		item = JV_OBJECT(jv_string("text"), item);
	jv text = get(item, "text");
	if (jv_get_kind(text) != JV_KIND_STRING) {
		jv_free(text);
		text = get(item, "message");
	}
	jv args = get(item, "arguments"), answer = get(item, "answer");
	char why[700] = "";
	if (jv_get_kind(item) != JV_KIND_OBJECT || jv_get_kind(text) != JV_KIND_STRING)
		snprintf(why, sizeof why, "no \"text\" string");
	else if (strspn(jv_string_value(text), " \t\r\n") == (size_t)jv_string_length_bytes(jv_copy(text)))
		snprintf(why, sizeof why, "empty text");
	else if (jv_string_length_codepoints(jv_copy(text)) > MAX_TEXT_CHARS)
		snprintf(why, sizeof why, "text longer than %d characters", MAX_TEXT_CHARS);
	else if (placeholder(jv_string_value(text)))
		snprintf(why, sizeof why, "a placeholder copied from the prompt, not a message");
	else if (!script_ok(jv_string_value(text), lang))
		snprintf(why, sizeof why, "text is not in %s", g->spec->langs[b->lang].name);
	else if (it->negative && (jv_get_kind(answer) != JV_KIND_STRING ||
				  strspn(jv_string_value(answer), " \t\r\n") == (size_t)jv_string_length_bytes(jv_copy(answer))))
		snprintf(why, sizeof why, "no \"answer\" for a negative");
	if (!why[0] && !it->negative) {
		if (jv_get_kind(args) == JV_KIND_STRING) {
			jv parsed;
			struct err e;
			if (jsonl_parse(jv_string_value(args), (size_t)jv_string_length_bytes(jv_copy(args)), "arguments",
					&parsed, &e) < 0)
				snprintf(why, sizeof why, "arguments are not JSON");
			else
				jv_free(args), args = parsed;
		} else if (!jv_is_valid(args) || jv_get_kind(args) == JV_KIND_NULL) {
			jv_free(args);
			args = jv_object(); /* {} is all a tool with no required argument needs */
		}
		struct err e;
		if (!why[0] && jsonschema_validate(it->params, args, "arguments", &e) < 0)
			snprintf(why, sizeof why, "tool %s: %.600s", it->tool, e.msg);
	}
	char *norm = NULL;
	uint64_t th = 0;
	if (!why[0]) {
		norm = dsgen_normalize(jv_string_value(text));
		if (!norm || !*norm)
			snprintf(why, sizeof why, "no words in the text");
		else if (dsgen_set_has(&g->texts, th = dsgen_hash(0, norm, strlen(norm)))) {
			snprintf(why, sizeof why, "duplicate");
			g->c.duplicates++;
		}
	}
	long k = -1;
	if (!why[0]) {
		while (b->first_free < b->target && b->filled[b->first_free])
			b->first_free++;
		if (b->first_free < b->target)
			k = b->first_free;
		if (k < 0) {
			g->c.surplus++; /* the bucket filled up: a good utterance left over */
			free(norm);
			jv_free(text), jv_free(args), jv_free(answer), jv_free(item);
			return;
		}
	}
	jv rec = jv_invalid();
	if (!why[0]) {
		rec = assemble(g, b, k, jv_string_value(text), jv_copy(args),
			       jv_get_kind(answer) == JV_KIND_STRING ? jv_string_value(answer) : "");
		if (g->o.validate) {
			struct err e;
			int ok = dsgen_filter_accepts(g->o.validate, rec, &e);
			if (ok <= 0)
				snprintf(why, sizeof why, "%.600s", ok < 0 ? e.msg : "--validate filter said no");
		}
	}
	if (why[0]) {
		g->c.rejected++;
		jv_free(rec);
		reject(rejects, tag, why, item);
	} else {
		b->filled[k] = 1;
		b->have++;
		g->c.written++;
		dsgen_set_add(&g->texts, th);
		*records = jv_array_append(*records, rec);
		jv_free(item);
	}
	free(norm);
	jv_free(text), jv_free(args), jv_free(answer);
}

void dsgen_answer(struct dsgen *g, struct http_request *req, const struct http_result *res, jv *records,
		  jv *rejects)
{
	struct request_tag *tag = req->user;
	struct bucket *b = &g->b[tag->bucket];
	*records = jv_array();
	*rejects = jv_array();
	b->promised -= tag->asked;
	if (res->outcome != HTTP_OK) {
		if (res->outcome != HTTP_ABANDONED) {
			g->c.failed_requests++;
			reject(rejects, tag, res->error, jv_null());
		} else {
			b->requests--; /* never answered: a rerun (or this run) may ask again */
		}
		free(tag);
		req->user = NULL;
		return;
	}
	jv choices = get(res->response, "choices");
	jv first = jv_get_kind(choices) == JV_KIND_ARRAY ? jv_array_get(jv_copy(choices), 0) : jv_invalid();
	jv msg = get(first, "message");
	jv_free(first), jv_free(choices);
	jv content = get(msg, "content");
	jv parsed;
	if (jv_get_kind(content) != JV_KIND_STRING) {
		g->c.rejected++;
		reject(rejects, tag, "the reply has no text content", jv_copy(msg));
	} else if (dsgen_extract_json(jv_string_value(content), (size_t)jv_string_length_bytes(jv_copy(content)),
				      &parsed) < 0) {
		g->c.rejected++;
		reject(rejects, tag, "no JSON in the reply", jv_copy(content));
	} else {
		jv items = reply_items(parsed);
		if (jv_get_kind(items) != JV_KIND_ARRAY) {
			g->c.rejected++;
			reject(rejects, tag, "no list of messages in the reply's JSON", jv_copy(content));
			jv_free(items);
		} else {
			jv_array_foreach(items, i, item) {
				take_item(g, b, tag, item, records, rejects);
				(void)i;
			}
			jv_free(items);
		}
	}
	jv_free(content), jv_free(msg);
	free(tag);
	req->user = NULL;
}
