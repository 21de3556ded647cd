/* lib/jsonschema: schemas of OpenAI tool definitions, and arguments checked against them. */
#include <string.h>

#include "check.h"
#include "jsonl.h"
#include "jsonschema.h"

static jv parse(const char *s)
{
	jv v = jv_parse(s);
	if (!jv_is_valid(v)) {
		fprintf(stderr, "bad test JSON: %s\n", s);
		exit(2);
	}
	return v;
}

/* validate(schema, value): 0 or -1 with the message in e. */
static int validate(const char *schema, const char *value, struct err *e)
{
	jv s = parse(schema), v = parse(value);
	int rc = jsonschema_validate(s, v, "arguments", e);
	jv_free(s), jv_free(v);
	return rc;
}

static const char card[] = "{\"type\":\"object\",\"properties\":{\"card_last4\":{\"type\":\"string\",\"minLength\":4,"
			   "\"maxLength\":4,\"pattern\":\"^[0-9]+$\"},\"limit\":{\"type\":\"integer\",\"minimum\":1,"
			   "\"maximum\":50},\"kind\":{\"enum\":[\"debit\",\"credit\"]},\"tags\":{\"type\":\"array\","
			   "\"items\":{\"type\":\"string\"},\"maxItems\":2}},\"required\":[\"card_last4\"],"
			   "\"additionalProperties\":false}";

static void test_valid_arguments(void)
{
	struct err e;
	const char *good[] = {"{\"card_last4\":\"1234\"}", "{\"card_last4\":\"0000\",\"limit\":5}",
			      "{\"card_last4\":\"0000\",\"limit\":5.0,\"kind\":\"credit\",\"tags\":[\"a\",\"b\"]}"};
	for (size_t i = 0; i < sizeof good / sizeof *good; i++)
		CHECK(validate(card, good[i], &e) == 0, "%s refused: %s", good[i], e.msg);
	CHECK(validate("{\"type\":\"object\",\"properties\":{}}", "{}", &e) == 0, "{} refused: %s", e.msg);
	CHECK(validate("{\"type\":\"object\"}", "{\"anything\":[1,{\"x\":null}]}", &e) == 0,
	      "free object refused: %s", e.msg);
	CHECK(validate("{\"type\":[\"string\",\"null\"]}", "null", &e) == 0, "type list refused null: %s", e.msg);
	CHECK(validate("{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"string\"}]}", "\"x\"", &e) == 0,
	      "anyOf refused: %s", e.msg);
	CHECK(validate("{\"type\":\"string\",\"minLength\":2}", "\"ёж\"", &e) == 0,
	      "lengths count characters, not bytes: %s", e.msg);
}

static void test_invalid_arguments(void)
{
	struct {
		const char *value, *msg;
	} bad[] = {
		{"{}", "arguments.card_last4: required, missing"},
		{"{\"card_last4\":1234}", "arguments.card_last4: expected a string, got a number"},
		{"{\"card_last4\":\"123\"}", "arguments.card_last4: shorter than 4 characters"},
		{"{\"card_last4\":\"12345\"}", "arguments.card_last4: longer than 4 characters"},
		{"{\"card_last4\":\"12a4\"}", "arguments.card_last4: does not match the pattern ^[0-9]+$"},
		{"{\"card_last4\":\"1234\",\"limit\":2.5}", "arguments.limit: expected an integer, got a number"},
		{"{\"card_last4\":\"1234\",\"limit\":0}", "arguments.limit: 0 is below the minimum 1"},
		{"{\"card_last4\":\"1234\",\"limit\":51}", "arguments.limit: 51 is above the maximum 50"},
		{"{\"card_last4\":\"1234\",\"kind\":\"gold\"}", "arguments.kind: not one of the allowed values"},
		{"{\"card_last4\":\"1234\",\"tags\":[\"a\",1]}", "arguments.tags[1]: expected a string, got a number"},
		{"{\"card_last4\":\"1234\",\"tags\":[\"a\",\"b\",\"c\"]}", "arguments.tags: more than 2 items"},
		{"{\"card_last4\":\"1234\",\"extra\":true}", "arguments.extra: not a property of the schema"},
		{"[]", "arguments: expected an object, got an array"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		struct err e = {0};
		int rc = validate(card, bad[i].value, &e);
		CHECK(rc < 0 && !strcmp(e.msg, bad[i].msg), "%s: rc %d, message \"%s\", expected \"%s\"", bad[i].value, rc,
		      e.msg, bad[i].msg);
	}
}

static void test_schema_check(void)
{
	struct err e;
	jv good = parse(card);
	CHECK(jsonschema_check(good, &e) == 0, "a good schema refused: %s", e.msg);
	jv_free(good);
	struct {
		const char *schema, *msg;
	} bad[] = {
		{"{\"type\":\"int\"}", "type: unknown type \"int\""},
		{"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"strng\"}}}", "properties.a.type: unknown type \"strng\""},
		{"{\"type\":\"object\",\"required\":\"a\"}", "required: must be an array of property names"},
		{"{\"type\":\"object\",\"properties\":[]}", "properties: must be an object"},
		{"{\"enum\":[]}", "enum: must be a non-empty array"},
		{"{\"type\":\"array\",\"items\":{\"type\":\"lst\"}}", "items.type: unknown type \"lst\""},
		{"{\"type\":\"string\",\"maxLength\":\"4\"}", "maxLength: must be a number"},
		{"{\"type\":\"string\",\"pattern\":\"([\"}", "pattern: bad regular expression: "},
		{"\"object\"", "schema: a schema must be an object, got a string"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		jv s = parse(bad[i].schema);
		struct err e2 = {0};
		int rc = jsonschema_check(s, &e2);
		CHECK(rc < 0 && !strncmp(e2.msg, bad[i].msg, strlen(bad[i].msg)), "%s: rc %d, \"%s\", expected \"%s...\"",
		      bad[i].schema, rc, e2.msg, bad[i].msg);
		jv_free(s);
	}
}

/* enum and const compare numbers by their exact values: integers past 2^53
 * (drawn afresh, 18 and 19 digits) that one double holds differ, 1 is 1.0. */
static void test_big_integers(void)
{
	check_seed_init();
	for (int c = 0; c < 500 && !check_case_failed; c++) {
		long x = 100000000000000000L + (long)(rng_next(check_rng()) % 9000000000000000000UL / 2 * 2);
		if (c & 1)
			x = -x;
		long other = x + (c % 3 ? 2 : 1); /* within a double's step of x */
		char schema[160], same[80], near[80];
		snprintf(schema, sizeof schema, c % 2 ? "{\"enum\":[\"a\",%ld]}" : "{\"const\":{\"n\":[%ld]}}", x);
		snprintf(same, sizeof same, c % 2 ? "%ld" : "{\"n\":[%ld]}", x);
		snprintf(near, sizeof near, c % 2 ? "%ld" : "{\"n\":[%ld]}", other);
		jv sv = jsonl_parse_value(schema, strlen(schema));
		jv a = jsonl_parse_value(same, strlen(same)), b = jsonl_parse_value(near, strlen(near));
		struct err e = {0}, e2 = {0};
		CHECK(jsonschema_validate(sv, a, "v", &e) == 0, "%s refused %s: %s", schema, same, e.msg);
		CHECK(jsonschema_validate(sv, b, "v", &e2) < 0, "%s took %s", schema, near);
		jv_free(sv), jv_free(a), jv_free(b);
		/* bounds too, and the message gives the digits */
		snprintf(schema, sizeof schema, "{\"type\":\"integer\",\"maximum\":%ld}", x);
		snprintf(same, sizeof same, "%ld", x - 1);
		snprintf(near, sizeof near, "%ld", x + 1);
		char want[160];
		snprintf(want, sizeof want, "v: %ld is above the maximum %ld", x + 1, x);
		sv = jsonl_parse_value(schema, strlen(schema));
		a = jsonl_parse_value(same, strlen(same)), b = jsonl_parse_value(near, strlen(near));
		CHECK(jsonschema_validate(sv, a, "v", &e) == 0, "%s refused %s: %s", schema, same, e.msg);
		CHECK(jsonschema_validate(sv, b, "v", &e2) < 0 && !strcmp(e2.msg, want), "%s took %s (%s)", schema, near,
		      e2.msg);
		jv_free(sv), jv_free(a), jv_free(b);
	}
	struct err e = {0};
	jv sv = jsonl_parse_value("{\"enum\":[1,[2.0]]}", 18), a = jsonl_parse_value("1.0", 3),
	   b = jsonl_parse_value("[2]", 3);
	CHECK(jsonschema_validate(sv, a, "v", &e) == 0 && jsonschema_validate(sv, b, "v", &e) == 0, "1 is 1.0: %s", e.msg);
	jv_free(sv), jv_free(a), jv_free(b);
}

int main(void)
{
	RUN(test_valid_arguments);
	RUN(test_invalid_arguments);
	RUN(test_schema_check);
	RUN(test_big_integers);
	return check_done();
}
