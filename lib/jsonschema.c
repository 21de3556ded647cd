/* jsonschema: a small JSON Schema checker for tool-call arguments (see jsonschema.h). */
#include "jsonschema.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "jsonl.h"

static const char *const type_names[] = {"string", "number", "integer", "boolean", "object", "array", "null"};

static jv get(jv obj, const char *key)
{
	return jv_object_get(jv_copy(obj), jv_string(key));
}

static int has(jv obj, const char *key)
{
	jv v = get(obj, key);
	int h = jv_is_valid(v);
	jv_free(v);
	return h;
}

static const char *kind_name(jv v)
{
	switch (jv_get_kind(v)) {
	case JV_KIND_STRING: return "a string";
	case JV_KIND_NUMBER: return "a number";
	case JV_KIND_TRUE:
	case JV_KIND_FALSE: return "a boolean";
	case JV_KIND_OBJECT: return "an object";
	case JV_KIND_ARRAY: return "an array";
	case JV_KIND_NULL: return "null";
	default: return "nothing";
	}
}

static int known_type(const char *t)
{
	for (size_t i = 0; i < sizeof type_names / sizeof *type_names; i++)
		if (!strcmp(t, type_names[i]))
			return 1;
	return 0;
}

static int is_type(jv v, const char *t)
{
	jv_kind k = jv_get_kind(v);
	if (!strcmp(t, "string")) return k == JV_KIND_STRING;
	if (!strcmp(t, "number")) return k == JV_KIND_NUMBER;
	if (!strcmp(t, "integer")) {
		if (k != JV_KIND_NUMBER)
			return 0;
		double d = jv_number_value(v);
		return isfinite(d) && d == floor(d);
	}
	if (!strcmp(t, "boolean")) return k == JV_KIND_TRUE || k == JV_KIND_FALSE;
	if (!strcmp(t, "object")) return k == JV_KIND_OBJECT;
	if (!strcmp(t, "array")) return k == JV_KIND_ARRAY;
	if (!strcmp(t, "null")) return k == JV_KIND_NULL;
	return 0;
}

/* "a.b" or "b" when a is empty. */
static void join(char *out, size_t n, const char *a, const char *b)
{
	if (a && *a)
		snprintf(out, n, "%.250s.%.250s", a, b);
	else
		snprintf(out, n, "%.500s", b);
}

static int pattern_compile(const char *pat, pcre2_code **code, char *why, size_t n)
{
	int ec;
	PCRE2_SIZE off;
	*code = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &ec, &off, NULL);
	if (*code)
		return 0;
	PCRE2_UCHAR buf[200];
	pcre2_get_error_message(ec, buf, sizeof buf);
	snprintf(why, n, "%s at offset %zu", (const char *)buf, (size_t)off);
	return -1;
}

static int check_at(jv s, const char *at, struct err *err)
{
	char where[512];
	if (jv_get_kind(s) == JV_KIND_TRUE || jv_get_kind(s) == JV_KIND_FALSE)
		return 0;
	if (jv_get_kind(s) != JV_KIND_OBJECT)
		return err_set(err, "%s: a schema must be an object, got %s", *at ? at : "schema", kind_name(s));
	int rc = 0;
	jv t = get(s, "type");
	if (jv_get_kind(t) == JV_KIND_STRING) {
		if (!known_type(jv_string_value(t))) {
			join(where, sizeof where, at, "type");
			rc = err_set(err, "%s: unknown type \"%s\"", where, jv_string_value(t));
		}
	} else if (jv_get_kind(t) == JV_KIND_ARRAY) {
		jv_array_foreach(t, i, e) {
			if (rc == 0 && (jv_get_kind(e) != JV_KIND_STRING || !known_type(jv_string_value(e)))) {
				join(where, sizeof where, at, "type");
				rc = err_set(err, "%s: entry %d is not a known type name", where, i);
			}
			jv_free(e);
		}
	} else if (jv_is_valid(t)) {
		join(where, sizeof where, at, "type");
		rc = err_set(err, "%s: must be a type name or a list of them", where);
	}
	jv_free(t);
	if (rc)
		return rc;
	jv props = get(s, "properties");
	if (jv_is_valid(props) && jv_get_kind(props) != JV_KIND_OBJECT) {
		join(where, sizeof where, at, "properties");
		rc = err_set(err, "%s: must be an object", where);
	} else if (jv_is_valid(props)) {
		jv_object_foreach(props, k, v) {
			if (rc == 0) {
				char sub[512];
				join(sub, sizeof sub, at, "properties");
				join(where, sizeof where, sub, jv_string_value(k));
				rc = check_at(v, where, err);
			}
			jv_free(k), jv_free(v);
		}
	}
	jv_free(props);
	if (rc)
		return rc;
	jv req = get(s, "required");
	if (jv_is_valid(req)) {
		join(where, sizeof where, at, "required");
		if (jv_get_kind(req) != JV_KIND_ARRAY)
			rc = err_set(err, "%s: must be an array of property names", where);
		else
			jv_array_foreach(req, i, e) {
				if (rc == 0 && jv_get_kind(e) != JV_KIND_STRING)
					rc = err_set(err, "%s: entry %d is not a string", where, i);
				jv_free(e);
			}
	}
	jv_free(req);
	if (rc)
		return rc;
	jv en = get(s, "enum");
	if (jv_is_valid(en) && (jv_get_kind(en) != JV_KIND_ARRAY || jv_array_length(jv_copy(en)) == 0)) {
		join(where, sizeof where, at, "enum");
		rc = err_set(err, "%s: must be a non-empty array", where);
	}
	jv_free(en);
	const char *subs[] = {"items", "additionalProperties"};
	for (int i = 0; i < 2 && rc == 0; i++) {
		jv sub = get(s, subs[i]);
		if (jv_is_valid(sub)) {
			join(where, sizeof where, at, subs[i]);
			rc = check_at(sub, where, err);
		}
		jv_free(sub);
	}
	jv any = get(s, "anyOf");
	if (rc == 0 && jv_is_valid(any)) {
		join(where, sizeof where, at, "anyOf");
		if (jv_get_kind(any) != JV_KIND_ARRAY)
			rc = err_set(err, "%s: must be an array of schemas", where);
		else
			jv_array_foreach(any, i, e) {
				if (rc == 0) {
					char w2[560];
					snprintf(w2, sizeof w2, "%.500s[%d]", where, i);
					rc = check_at(e, w2, err);
				}
				jv_free(e);
			}
	}
	jv_free(any);
	const char *nums[] = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
			      "minLength", "maxLength", "minItems", "maxItems"};
	for (size_t i = 0; i < sizeof nums / sizeof *nums && rc == 0; i++) {
		jv n = get(s, nums[i]);
		if (jv_is_valid(n) && jv_get_kind(n) != JV_KIND_NUMBER) {
			join(where, sizeof where, at, nums[i]);
			rc = err_set(err, "%s: must be a number", where);
		}
		jv_free(n);
	}
	jv pat = get(s, "pattern");
	if (rc == 0 && jv_is_valid(pat)) {
		join(where, sizeof where, at, "pattern");
		pcre2_code *code;
		char why[300];
		if (jv_get_kind(pat) != JV_KIND_STRING)
			rc = err_set(err, "%s: must be a string", where);
		else if (pattern_compile(jv_string_value(pat), &code, why, sizeof why) < 0)
			rc = err_set(err, "%s: bad regular expression: %s", where, why);
		else
			pcre2_code_free(code);
	}
	jv_free(pat);
	return rc;
}

int jsonschema_check(jv schema, struct err *err)
{
	return check_at(schema, "", err);
}

static size_t utf8_chars(const char *s)
{
	size_t n = 0;
	for (; *s; s++)
		n += ((unsigned char)*s & 0xC0) != 0x80;
	return n;
}

/* The number s[key], exact (an integer past 2^53 whole); *present says whether there is one. */
static long double num_or(jv s, const char *key, int *present)
{
	jv n = get(s, key);
	*present = jv_get_kind(n) == JV_KIND_NUMBER;
	long double x = *present ? jsonl_number_ld(n) : 0;
	jv_free(n);
	return x;
}

/* x for a message: a whole number in its digits, else as %g. */
static const char *num_text(char buf[40], long double x)
{
	if (x == floorl(x) && fabsl(x) < 0x1p63L)
		snprintf(buf, 40, "%lld", (long long)x);
	else
		snprintf(buf, 40, "%g", (double)x);
	return buf;
}

static int validate_at(jv s, jv v, const char *at, struct err *err)
{
	const char *place = *at ? at : "value";
	char where[512];
	if (jv_get_kind(s) == JV_KIND_TRUE)
		return 0;
	if (jv_get_kind(s) == JV_KIND_FALSE)
		return err_set(err, "%s: not allowed here", place);
	if (jv_get_kind(s) != JV_KIND_OBJECT)
		return 0;
	jv t = get(s, "type");
	int rc = 0;
	if (jv_get_kind(t) == JV_KIND_STRING) {
		if (!is_type(v, jv_string_value(t)))
			rc = err_set(err, "%s: expected %s %s, got %s", place,
				     strchr("aeiou", jv_string_value(t)[0]) ? "an" : "a", jv_string_value(t), kind_name(v));
	} else if (jv_get_kind(t) == JV_KIND_ARRAY) {
		int okk = 0;
		jv_array_foreach(t, i, e) {
			if (jv_get_kind(e) == JV_KIND_STRING && is_type(v, jv_string_value(e)))
				okk = 1;
			jv_free(e);
			(void)i;
		}
		if (!okk)
			rc = err_set(err, "%s: %s is not of the allowed types", place, kind_name(v));
	}
	jv_free(t);
	if (rc)
		return rc;
	jv en = get(s, "enum");
	if (jv_get_kind(en) == JV_KIND_ARRAY) {
		int found = 0;
		jv_array_foreach(en, i, e) {
			found |= jsonl_equal(e, jv_copy(v));
			(void)i;
		}
		if (!found)
			rc = err_set(err, "%s: not one of the allowed values", place);
	}
	jv_free(en);
	jv cst = get(s, "const");
	if (rc == 0 && jv_is_valid(cst) && !jsonl_equal(jv_copy(cst), jv_copy(v)))
		rc = err_set(err, "%s: not the required value", place);
	jv_free(cst);
	if (rc)
		return rc;
	int p;
	if (jv_get_kind(v) == JV_KIND_NUMBER) {
		long double d = jsonl_number_ld(v), lim; /* exact: 2^53 + 1 is above a maximum of 2^53 */
		char a[40], b[40];
		if ((lim = num_or(s, "minimum", &p)), p && d < lim)
			return err_set(err, "%s: %s is below the minimum %s", place, num_text(a, d), num_text(b, lim));
		if ((lim = num_or(s, "maximum", &p)), p && d > lim)
			return err_set(err, "%s: %s is above the maximum %s", place, num_text(a, d), num_text(b, lim));
		if ((lim = num_or(s, "exclusiveMinimum", &p)), p && d <= lim)
			return err_set(err, "%s: %s is not above %s", place, num_text(a, d), num_text(b, lim));
		if ((lim = num_or(s, "exclusiveMaximum", &p)), p && d >= lim)
			return err_set(err, "%s: %s is not below %s", place, num_text(a, d), num_text(b, lim));
	}
	if (jv_get_kind(v) == JV_KIND_STRING) {
		double n = (double)utf8_chars(jv_string_value(v)), lim;
		if ((lim = num_or(s, "minLength", &p)), p && n < lim)
			return err_set(err, "%s: shorter than %g characters", place, lim);
		if ((lim = num_or(s, "maxLength", &p)), p && n > lim)
			return err_set(err, "%s: longer than %g characters", place, lim);
		jv pat = get(s, "pattern");
		if (jv_get_kind(pat) == JV_KIND_STRING) {
			pcre2_code *code;
			char why[300];
			if (pattern_compile(jv_string_value(pat), &code, why, sizeof why) == 0) {
				pcre2_match_data *md = pcre2_match_data_create_from_pattern(code, NULL);
				int m = md ? pcre2_match(code, (PCRE2_SPTR)jv_string_value(v), PCRE2_ZERO_TERMINATED, 0, 0,
							 md, NULL)
					   : -1;
				pcre2_match_data_free(md);
				pcre2_code_free(code);
				if (m < 0)
					rc = err_set(err, "%s: does not match the pattern %s", place, jv_string_value(pat));
			}
		}
		jv_free(pat);
		if (rc)
			return rc;
	}
	if (jv_get_kind(v) == JV_KIND_ARRAY) {
		double n = jv_array_length(jv_copy(v)), lim;
		if ((lim = num_or(s, "minItems", &p)), p && n < lim)
			return err_set(err, "%s: fewer than %g items", place, lim);
		if ((lim = num_or(s, "maxItems", &p)), p && n > lim)
			return err_set(err, "%s: more than %g items", place, lim);
		jv items = get(s, "items");
		if (jv_is_valid(items))
			jv_array_foreach(v, i, e) {
				if (rc == 0) {
					snprintf(where, sizeof where, "%.490s[%d]", place, i);
					rc = validate_at(items, e, where, err);
				}
				jv_free(e);
			}
		jv_free(items);
		if (rc)
			return rc;
	}
	if (jv_get_kind(v) == JV_KIND_OBJECT) {
		jv props = get(s, "properties");
		jv req = get(s, "required");
		if (jv_get_kind(req) == JV_KIND_ARRAY)
			jv_array_foreach(req, i, k) {
				if (rc == 0 && jv_get_kind(k) == JV_KIND_STRING && !has(v, jv_string_value(k))) {
					join(where, sizeof where, at, jv_string_value(k));
					rc = err_set(err, "%s: required, missing", where);
				}
				jv_free(k);
				(void)i;
			}
		jv addl = get(s, "additionalProperties");
		jv_object_foreach(v, k, e) {
			if (rc == 0) {
				join(where, sizeof where, at, jv_string_value(k));
				jv ps = jv_get_kind(props) == JV_KIND_OBJECT ? get(props, jv_string_value(k)) : jv_invalid();
				if (jv_is_valid(ps))
					rc = validate_at(ps, e, where, err);
				else if (jv_get_kind(addl) == JV_KIND_FALSE)
					rc = err_set(err, "%s: not a property of the schema", where);
				else if (jv_get_kind(addl) == JV_KIND_OBJECT)
					rc = validate_at(addl, e, where, err);
				jv_free(ps);
			}
			jv_free(k), jv_free(e);
		}
		jv_free(addl), jv_free(props), jv_free(req);
		if (rc)
			return rc;
	}
	jv any = get(s, "anyOf");
	if (jv_get_kind(any) == JV_KIND_ARRAY) {
		int okk = 0;
		struct err e2;
		jv_array_foreach(any, i, e) {
			if (!okk && validate_at(e, v, at, &e2) == 0)
				okk = 1;
			jv_free(e);
			(void)i;
		}
		if (!okk)
			rc = err_set(err, "%s: matches none of anyOf", place);
	}
	jv_free(any);
	return rc;
}

int jsonschema_validate(jv schema, jv value, const char *where, struct err *err)
{
	return validate_at(schema, value, where ? where : "", err);
}
