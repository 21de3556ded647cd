/* test_jdoc: jd values against jq's on fresh random JSON: the same values
 * (repeated keys, float marks, \u escapes), jq's equality, the writer's
 * bytes; the arena across blocks; shared blocks known by their value. One
 * atom, an integer of 18 digits, is held whole where jq rounds it (jdoc.h):
 * jq's texts are read with its digits put back (as_written). */
#include <string.h>

#include "check.h"
#include "jdoc.h"
#include "jsonl.h"

static const char *const atoms[] = {"0", "-7", "12345", "1.0", "2.5e-3", "-0.0", "1e16", "true", "false", "null",
				    "\"\"", "\"a\"", "\"\\u00e9t\\u00e9\"", "\"\\ud83d\\ude00\"", "\"x\\ny\\t\\\"q\\\"\"",
				    "\"кот\"", "\"a\\u0000b\"", "123456789012345678"};
static const char *const keys[] = {"a", "b", "role", "content", "tool_calls", "x y", "\\u0061", "é"};

/* jq's text of the 18-digit atom (rounded to a double), and the atom. */
static const char rounded_atom[] = "123456789012345680", whole_atom[] = "123456789012345678";

/* t (NUL-terminated) with jq's rounding of the 18-digit atom put back. */
static void as_written(char *t)
{
	for (char *p = t; (p = strstr(p, rounded_atom)) != NULL; p += sizeof whole_atom - 1)
		memcpy(p, whole_atom, sizeof whole_atom - 1);
}

/* Random JSON text into b (at most cap bytes); objects repeat keys now and then. */
static size_t random_json(char *b, size_t cap, int depth)
{
	uint64_t *r = check_rng();
	size_t n = 0;
	int kind = depth > 3 ? 0 : (int)rng_below(r, 4);
	if (cap < 64)
		kind = 0;
	if (kind <= 1) {
		const char *a = atoms[rng_below(r, sizeof atoms / sizeof *atoms)];
		return (size_t)snprintf(b, cap, "%s", a);
	}
	int obj = kind == 3, items = (int)rng_below(r, obj && rng_below(r, 4) == 0 ? 40 : 5);
	b[n++] = obj ? '{' : '[';
	for (int i = 0; i < items && cap - n > 64; i++) {
		if (i)
			b[n++] = ',';
		if (obj)
			n += (size_t)snprintf(b + n, cap - n, "\"%s%d\":", keys[rng_below(r, sizeof keys / sizeof *keys)],
					      (int)rng_below(r, items > 8 ? 12 : 2));
		n += random_json(b + n, cap - n - 2, depth + 1);
	}
	b[n++] = obj ? '}' : ']';
	b[n] = 0;
	return n;
}

/* Parsed both ways, written both ways: the same bytes; made from the jv: equal. */
static void test_values_as_jq(void)
{
	unsigned long long seed = check_seed_init();
	struct jd_arena a = {0};
	char text[8192];
	for (int i = 0; i < 3000 && !check_case_failed; i++) {
		size_t n = random_json(text, sizeof text, 0);
		jv v = jsonl_parse_value(text, n);
		struct jd d;
		struct err err = {0};
		int rc = jsonl_parse_jd(text, n, &a, &d, &err);
		CHECK((rc == 0) == jv_is_valid(v), "seed %llu: %s: jd %d (%s), jv %d", seed, text, rc, err.msg,
		      jv_is_valid(v));
		if (rc == 0 && jv_is_valid(v)) {
			struct jsonl_buf x = {0}, y = {0}, w = {0};
			jsonl_put_value(&x, jv_copy(v));
			jsonl_put_jd(&y, &d);
			jsonl_put(&w, x.p, x.n);
			jsonl_put(&w, "", 1);
			as_written(w.p);
			CHECK(x.n == y.n && !memcmp(w.p, y.p, x.n), "seed %llu: %s: written\n  jv %.*s\n  jd %.*s", seed, text,
			      (int)x.n, x.p, (int)y.n, y.p);
			free(w.p);
			struct jd e;
			CHECK(jsonl_jd_of(v, &a, &e) == 0 && jd_equal(&d, &e), "seed %llu: %s: made from the jv", seed, text);
			jv back = jsonl_jv_of(&d);
			struct jsonl_buf z = {0};
			jsonl_put_value(&z, back);
			CHECK(z.n == x.n && !memcmp(z.p, x.p, x.n), "seed %llu: %s: the jv of the jd", seed, text);
			free(x.p), free(y.p), free(z.p);
		}
		jv_free(v);
		jd_arena_reset(&a);
	}
	jd_arena_free(&a);
}

/* jd_equal says what jv_equal says, over pairs that are often equal. */
static void test_equal_as_jq(void)
{
	unsigned long long seed = check_seed_init();
	struct jd_arena a = {0};
	char t1[4096], t2[4096];
	int same = 0;
	for (int i = 0; i < 4000 && !check_case_failed; i++) {
		size_t n1 = random_json(t1, sizeof t1, 1), n2;
		if (rng_below(check_rng(), 2)) { /* the same value, members in another order or numbers spelt otherwise */
			jv v = jv_parse_sized(t1, (int)n1);
			if (!jv_is_valid(v)) {
				jv_free(v);
				continue;
			}
			jv s = jv_dump_string(v, JV_PRINT_SORTED);
			n2 = (size_t)snprintf(t2, sizeof t2, "%s", jv_string_value(s));
			as_written(t2);
			jv_free(s);
		} else {
			n2 = random_json(t2, sizeof t2, 1);
		}
		jv v1 = jv_parse_sized(t1, (int)n1), v2 = jv_parse_sized(t2, (int)n2);
		struct jd d1, d2;
		struct err err = {0};
		if (!jv_is_valid(v1) || !jv_is_valid(v2) || jsonl_parse_jd(t1, n1, &a, &d1, &err) < 0 ||
		    jsonl_parse_jd(t2, n2, &a, &d2, &err) < 0) {
			jv_free(v1), jv_free(v2);
			continue;
		}
		int want = jv_equal(v1, v2);
		same += want;
		CHECK(jd_equal(&d1, &d2) == want, "seed %llu: %s vs %s: jq says %d", seed, t1, t2, want);
		jd_arena_reset(&a);
	}
	CHECK(same > 100, "seed %llu: %d equal pairs (the case is not exercised)", seed, same);
	jd_arena_free(&a);
}

/* A repeated key keeps its first place and its last value, as jq's, in
 * small objects and in the large ones that dedup with a table. */
static void test_repeated_keys(void)
{
	struct jd_arena a = {0};
	const char *small = "{\"a\":1,\"b\":2,\"a\":3,\"c\":{\"x\":1,\"x\":[2]}}";
	char big[4096];
	size_t n = (size_t)snprintf(big, sizeof big, "{");
	for (int i = 0; i < 100; i++)
		n += (size_t)snprintf(big + n, sizeof big - n, "%s\"k%d\":%d", i ? "," : "", i % 37, i);
	snprintf(big + n, sizeof big - n, "}");
	const char *texts[] = {small, big};
	for (int t = 0; t < 2; t++) {
		struct jd d;
		struct err err = {0};
		CHECK(jsonl_parse_jd(texts[t], strlen(texts[t]), &a, &d, &err) == 0, "%s", err.msg);
		jv want = jv_dump_string(jv_parse(texts[t]), 0);
		struct jsonl_buf b = {0};
		jsonl_put_jd(&b, &d);
		CHECK(b.n == (size_t)jv_string_length_bytes(jv_copy(want)) && !memcmp(b.p, jv_string_value(want), b.n),
		      "%.*s\n  jq: %s", (int)b.n, b.p, jv_string_value(want));
		CHECK(d.n == (t ? 37u : 3u), "%u members", d.n);
		jv_free(want);
		free(b.p);
	}
	jd_arena_free(&a);
}

/* Lookups compare whole keys, NUL bytes and all. */
static void test_get(void)
{
	struct jd_arena a = {0};
	struct jd d;
	struct err err = {0};
	const char *text = "{\"ab\":1,\"a\\u0000b\":2,\"a\":3,\"\":4}";
	CHECK(jsonl_parse_jd(text, strlen(text), &a, &d, &err) == 0, "%s", err.msg);
	CHECK(jd_get(&d, "a")->u.num == 3 && jd_get(&d, "ab")->u.num == 1 && jd_get(&d, "")->u.num == 4, "lookups");
	CHECK(d.u.members[1].key.n == 3 && !jd_is(&d.u.members[1].key, "a"), "a key holding NUL is not \"a\"");
	CHECK(!jd_get(&d, "b") && !jd_get(&d.u.members[0].val, "a"), "absent key, not an object");
	jd_arena_free(&a);
}

/* Values across blocks, one larger than a block, aligned; a reset empties. */
static void test_arena(void)
{
	struct jd_arena a = {0};
	for (int round = 0; round < 3; round++) {
		char *p[600];
		for (int i = 0; i < 600; i++) {
			size_t n = i == 300 ? 200000 : (size_t)(i % 97) * 3 + 1;
			p[i] = jd_alloc(&a, n);
			CHECK(p[i] && ((uintptr_t)p[i] & 7) == 0, "allocation %d", i);
			memset(p[i], i & 0xff, n);
		}
		for (int i = 0; i < 600; i++)
			CHECK((unsigned char)p[i][0] == (i & 0xff), "allocation %d overwritten", i);
		jd_arena_reset(&a);
	}
	struct jd s = jd_string(&a, "a\0b", 3);
	CHECK(s.kind == JD_STRING && s.n == 3 && s.u.s[3] == 0 && s.u.s[1] == 0, "string");
	jd_arena_free(&a);
}

/* A shared block is known from its value and from any copy of that struct,
 * not from its parts nor from an equal value elsewhere; it outlives the
 * arena it was copied from. */
static void test_shared(void)
{
	struct jd_arena a = {0};
	struct jd d;
	struct err err = {0};
	const char *text = "[{\"type\":\"function\",\"function\":{\"name\":\"f\"}},\"s\",1.5]";
	CHECK(jsonl_parse_jd(text, strlen(text), &a, &d, &err) == 0, "%s", err.msg);
	struct jd_shared *s = jd_shared_new(&d);
	CHECK(s != NULL, "jd_shared_new");
	jd_arena_free(&a);
	const struct jd *v = jd_shared_value(s);
	struct jd copy = *v;
	CHECK(jd_shared_of(v) == s && jd_shared_of(&copy) == s, "known by its value");
	CHECK(!jd_shared_of(&v->u.items[0]) && !jd_shared_of(&v->u.items[1]), "not by its parts");
	struct jd_arena b = {0};
	struct jd again;
	CHECK(jsonl_parse_jd(text, strlen(text), &b, &again, &err) == 0 && jd_equal(&again, v) && !jd_shared_of(&again),
	      "an equal value is not the block's");
	struct jsonl_buf w = {0};
	jsonl_put_jd(&w, v);
	CHECK(w.n == strlen("[{\"type\":\"function\",\"function\":{\"name\":\"f\"}},\"s\",1.5]") && !memcmp(w.p, text, w.n),
	      "%.*s", (int)w.n, w.p);
	free(w.p);
	struct jd str = jd_string(&b, "a long string", 13);
	struct jd_shared *t = jd_shared_new(&str);
	CHECK(t && jd_shared_of(jd_shared_value(t)) == t && jd_is(jd_shared_value(t), "a long string"), "a string");
	struct jd num = jd_number(2, 0);
	struct jd_shared *u = jd_shared_new(&num);
	CHECK(u && !jd_shared_of(jd_shared_value(u)), "a number has no block to be known by");
	jd_arena_free(&b);
	CHECK(jd_shared_ref(s) == s, "ref");
	jd_shared_unref(s);
	CHECK(jd_shared_of(v) == s, "still held");
	jd_shared_unref(s), jd_shared_unref(t), jd_shared_unref(u);
	jd_shared_unref(NULL);
	/* a value taken over with its arena: the same value, the arena empty,
	 * the block known by it; a copy out of it is the same and its own */
	struct jd_arena c = {0}, dst = {0};
	struct jd made, out;
	CHECK(jsonl_parse_jd(text, strlen(text), &c, &made, &err) == 0, "%s", err.msg);
	struct jd_shared *w2 = jd_shared_adopt(&c, &made);
	CHECK(w2 && !c.head && jd_shared_of(jd_shared_value(w2)) == w2, "adopted");
	CHECK(jd_copy(&dst, jd_shared_value(w2), &out) == 0 && !jd_shared_of(&out), "copied");
	jd_shared_unref(w2);
	struct jsonl_buf w3 = {0};
	jsonl_put_jd(&w3, &out);
	CHECK(w3.n == strlen(text) && !memcmp(w3.p, text, w3.n), "the copy after the block is gone: %.*s", (int)w3.n,
	      w3.p);
	free(w3.p);
	jd_arena_free(&dst);
}

int main(void)
{
	RUN(test_values_as_jq);
	RUN(test_equal_as_jq);
	RUN(test_repeated_keys);
	RUN(test_get);
	RUN(test_arena);
	RUN(test_shared);
	return check_done();
}
