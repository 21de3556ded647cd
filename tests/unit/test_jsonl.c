/* jsonl: records, blank lines, CRLF, and every kind of bad line with its exact line number. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include <utf8proc.h>

#include "check.h"
#include "jsonl.h"

static char dir[] = "/tmp/test_jsonl.XXXXXX";
static char path[256];

/* Writes n bytes to a fresh file in the scratch folder; path names it. */
static void put(const char *name, const char *data, size_t n)
{
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
		printf("not ok - cannot write %s\n", path);
		exit(1);
	}
}

#define PUT(name, lit) put(name, lit, sizeof lit - 1)

/* Reads the whole file; returns the number of records, or -(line of the error). */
static long read_all(const char *p, struct err *err, long *lines, int nlines)
{
	struct jsonl_reader *r = jsonl_open(p, err);
	if (!r)
		return -1000;
	long n = 0;
	jv v;
	int rc;
	while ((rc = jsonl_next(r, &v, err)) == 1) {
		if (n < nlines)
			lines[n] = jsonl_line(r);
		n++;
		jv_free(v);
	}
	if (rc < 0)
		n = -jsonl_line(r);
	jsonl_close(r);
	return n;
}

static void test_records_and_line_numbers(void)
{
	PUT("good.jsonl", "{\"a\":1}\n"
			  "\n"
			  "   \t \n"
			  "{\"b\":[1,2,{\"c\":null}]}\r\n"
			  "\r\n"
			  "  {\"text\":\"Мой доступ активен?\"}  \n"
			  "{}"); /* no final newline */
	struct err err = {{0}, 0};
	long lines[8] = {0};
	long n = read_all(path, &err, lines, 8);
	CHECK(n == 4, "%ld records: %s", n, err.msg);
	CHECK(lines[0] == 1 && lines[1] == 4 && lines[2] == 6 && lines[3] == 7, "lines %ld %ld %ld %ld", lines[0],
	      lines[1], lines[2], lines[3]);
}

static void test_values(void)
{
	PUT("values.jsonl", "\xEF\xBB\xBF{\"text\":\"é\",\"n\":2.5,\"t\":true}\r\n");
	struct err err;
	struct jsonl_reader *r = jsonl_open(path, &err);
	jv v = jv_null();
	int rc = r ? jsonl_next(r, &v, &err) : -1;
	CHECK(rc == 1, "rc %d: %s", rc, err.msg);
	if (rc == 1) {
		jv t = jv_object_get(jv_copy(v), jv_string("text"));
		CHECK(jv_get_kind(t) == JV_KIND_STRING && strcmp(jv_string_value(t), "é") == 0, "text");
		jv_free(t);
		jv num = jv_object_get(jv_copy(v), jv_string("n"));
		CHECK(jv_get_kind(num) == JV_KIND_NUMBER && jv_number_value(num) == 2.5, "n");
		jv_free(num);
		jv_free(v);
	}
	CHECK(r && jsonl_next(r, &v, &err) == 0, "end");
	CHECK(r && jsonl_next(r, &v, &err) == 0, "end again");
	CHECK(r && strcmp(jsonl_name(r), path) == 0, "name");
	jsonl_close(r);
}

/* A random JSON number literal, valid or nearly so. */
static void random_number(char *buf, size_t cap)
{
	static const char *const parts[] = {"-", "0", "1", "9", "25", "100", "007", ".", ".5", ".0", "e", "E",
					    "e+", "e-", "3", "308", "400", "123456789012345678", " "};
	size_t n = 0;
	buf[0] = 0;
	for (int k = 1 + (int)(check_urand() * 5); k > 0; k--) {
		const char *p = parts[(int)(check_urand() * 19)];
		if (n + strlen(p) + 1 >= cap)
			break;
		memcpy(buf + n, p, strlen(p) + 1);
		n += strlen(p);
	}
	if (!n || check_urand() < 0.5) /* half of them well formed */
		snprintf(buf, cap, "%s%d%s%s", check_urand() < 0.3 ? "-" : "", (int)(check_urand() * 1000),
			 check_urand() < 0.6 ? ".25" : "", check_urand() < 0.4 ? "e-3" : "");
}

/* Whether s is a number as RFC 8259 writes one, with a fraction or an
 * exponent (json.loads makes a float of it): a walk of its grammar. */
static int json_float_literal(const char *s)
{
	int digits = 0, fancy = 0;
	while (*s == ' ')
		s++;
	if (*s == '-')
		s++;
	if (*s == '0')
		s++, digits = 1;
	else
		while (*s >= '0' && *s <= '9')
			s++, digits++;
	if (!digits)
		return 0;
	if (*s == '.') {
		s++, fancy = 1;
		if (!(*s >= '0' && *s <= '9'))
			return 0;
		while (*s >= '0' && *s <= '9')
			s++;
	}
	if (*s == 'e' || *s == 'E') {
		s++, fancy = 1;
		if (*s == '+' || *s == '-')
			s++;
		if (!(*s >= '0' && *s <= '9'))
			return 0;
		while (*s >= '0' && *s <= '9')
			s++;
	}
	while (*s == ' ')
		s++;
	return fancy && !*s;
}

/* Whether s (spaces around it) is an integer as RFC 8259 writes one: 1 with
 * *v its value, -1 when 64 bits cannot hold it, 0 when it is none. */
static int json_integer(const char *s, int64_t *v)
{
	while (*s == ' ')
		s++;
	int neg = *s == '-';
	const char *d = s + neg;
	size_t nd = strspn(d, "0123456789");
	if (!nd || (nd > 1 && d[0] == '0') || d[nd + strspn(d + nd, " ")])
		return 0;
	if (nd > 19)
		return -1;
	unsigned long long u = strtoull(d, NULL, 10); /* 19 digits fit */
	if (u > (unsigned long long)INT64_MAX + (unsigned)neg)
		return -1;
	*v = neg ? (int64_t)(0 - u) : (int64_t)u;
	return 1;
}

/* Numbers and \u escapes read as jq reads them, and a number written with a
 * fraction or an exponent marked as a float (json.loads's float), in the jd
 * and in its jv, through arrays, objects and the memo; an integer json.loads
 * keeps whole held whole, or marked rounded when 64 bits cannot hold it. The
 * same through jq, which reads the line when a string holds \u0000. */
static void test_number_literals(void)
{
	static const char *const edges[] = {"9223372036854775807", "-9223372036854775808", "9223372036854775808",
					    "-9223372036854775809", "9007199254740993", "-0", "1234567890123456789",
					    "10000000000000000000", "0", "-1234567890123456", "123456789012345"};
	check_seed_init();
	struct jsonl_memo *memo = jsonl_memo_new();
	struct jd_arena ar = {0};
	for (int i = 0; i < 8000 && !check_case_failed; i++) {
		char lit[64], line[160];
		if (i / 2 < (int)(sizeof edges / sizeof *edges))
			snprintf(lit, sizeof lit, "%s", edges[i / 2]);
		else
			random_number(lit, sizeof lit);
		int nul = i % 4 >= 2; /* jq parses it */
		snprintf(line, sizeof line, "{\"x\":[%s],\"s\":\"a\\u00e9\\ud83d\\ude00\\u20ac%s\"}", lit,
			 nul ? "\\u0000" : "");
		jv want = jv_parse(line);
		struct jd got;
		struct err err = {0};
		int64_t iv = 0;
		int integer = json_integer(lit, &iv);
		int rc = jsonl_parse_record_jd("t", 1, line, strlen(line), i % 2 ? memo : NULL, &ar, &got, &err);
		CHECK((rc == 1) == jv_is_valid(want), "%s: ours %d (%s), jq %s", line, rc, err.msg,
		      jv_is_valid(want) ? "parses" : "refuses");
		if (rc == 1 && jd_get(&got, "x")->n) { /* past 64 bits: jq's double, marked rounded, and the arena says so */
			const struct jd *x = &jd_get(&got, "x")->u.items[0];
			CHECK(x->rounded == (integer < 0) && ar.rounded == (integer < 0), "%s: rounded %d, the arena's %d",
			      line, x->rounded, ar.rounded);
		}
		if (rc == 1 && integer > 0) {
			const struct jd *x = &jd_get(&got, "x")->u.items[0];
			CHECK(x->kind == JD_NUMBER && !x->is_float && (x->exact ? x->u.i == iv : x->u.num == (double)iv),
			      "%s: read %lld", line, x->exact ? (long long)x->u.i : (long long)x->u.num);
		}
		if (rc == 1 && jv_is_valid(want)) {
			jv gv = jsonl_jv_of(&got);
			CHECK(jv_equal(jv_copy(gv), jv_copy(want)), "%s: values differ", line);
			jv x = jv_array_get(jv_object_get(gv, jv_string("x")), 0);
			/* a float json.loads would make is marked; jq's extensions (".5") are not */
			int is_float = json_float_literal(lit) && isfinite(jv_number_value(x));
			CHECK(jsonl_number_is_float(x) == is_float, "%s: marked %d", lit, jsonl_number_is_float(x));
			const struct jd *xs = jd_get(&got, "x"); /* [] when lit is only white space */
			CHECK(xs->n ? xs->u.items[0].is_float == is_float : !is_float, "%s: the jd marked %d", lit,
			      xs->n ? xs->u.items[0].is_float : 0);
			jv_free(x);
		}
		jv_free(want);
		jd_arena_reset(&ar);
	}
	jsonl_memo_free(memo);
	/* through jq (a \u0000), a repeated key's value is its last, marks and all,
	 * even where the walk of the text stops early (jq's 01) */
	static const struct {
		const char *line, *want;
		int rounded;
	} rep[] = {
		{"{\"a\":123456789012345678901,\"a\":5,\"s\":\"\\u0000\"}", "{\"a\":5,\"s\":\"\\u0000\"}", 0},
		{"{\"a\":5,\"a\":123456789012345678901}", "{\"a\":123456789012345680000}", 1},
		{"{\"a\":2.5,\"b\":[01],\"a\":1,\"s\":\"\\u0000\"}", "{\"a\":1,\"b\":[1],\"s\":\"\\u0000\"}"},
		{"{\"a\":1,\"a\":1.0,\"s\":\"\\u0000\"}", "{\"a\":1.0,\"s\":\"\\u0000\"}"},
		{"{\"a\":{\"x\":1.5},\"a\":{\"x\":2},\"s\":\"\\u0000\"}", "{\"a\":{\"x\":2},\"s\":\"\\u0000\"}"},
		{"{\"x\":[1.0,12345678901234567,-0],\"s\":\"\\u0000\"}", "{\"x\":[1.0,12345678901234567,-0],\"s\":\"\\u0000\"}"},
	};
	for (size_t k = 0; k < sizeof rep / sizeof *rep; k++) {
		struct jd got;
		struct jsonl_buf b = {0};
		struct err e = {0};
		int rc = jsonl_parse_record_jd("t", 1, rep[k].line, strlen(rep[k].line), NULL, &ar, &got, &e);
		if (rc == 1)
			jsonl_put_jd(&b, &got);
		CHECK(rc == 1 && b.n == strlen(rep[k].want) && !memcmp(b.p, rep[k].want, b.n) && ar.rounded == rep[k].rounded,
		      "%s: %d %.*s %s, rounded %d", rep[k].line, rc, (int)b.n, b.p, e.msg, ar.rounded);
		free(b.p);
		jd_arena_reset(&ar);
	}
	jd_arena_free(&ar);
	/* a lone surrogate goes to jq, which refuses it, as before */
	const char *lone = "{\"s\":\"\\ud83d x\"}";
	jv a, b = jv_parse(lone);
	struct err err = {0};
	CHECK(!jv_is_valid(b) && jsonl_parse_record("t", 1, lone, strlen(lone), &a, &err) == -1 &&
		      strstr(err.msg, "surrogate"), "lone surrogate: %s", err.msg);
	jv_free(b);
	/* the mark lasts through what the pipeline does to a record */
	const char *doc = "{\"a\":[1.0,2],\"b\":{\"c\":1e2}}";
	jv v = jsonl_parse_value(doc, strlen(doc));
	jv arr = jv_array_append(jv_array(), jv_object_get(jv_copy(v), jv_string("a")));
	jv one = jv_array_get(jv_array_get(jv_copy(arr), 0), 0), two = jv_array_get(jv_array_get(arr, 0), 1);
	jv c = jv_object_get(jv_object_get(jv_object_set(jv_copy(v), jv_string("z"), jv_null()), jv_string("b")),
			     jv_string("c"));
	CHECK(jsonl_number_is_float(one) && !jsonl_number_is_float(two) && jsonl_number_is_float(c) &&
		      jv_number_value(c) == 100,
	      "marks after copies");
	CHECK(!jsonl_number_is_float(jv_number(1.0)) && jsonl_number_is_float(jsonl_float(1.0)), "made numbers");
	jv_free(v), jv_free(one), jv_free(two), jv_free(c);
	/* written back, a float stays one: "100.0", not jq's 100 */
	const char *in = "{\"a\":100.0,\"b\":[2.0,1e2,-0.0,1.5,3,1E16,1e17,0.25e1],\"c\":7}";
	const char *want = "{\"a\":100.0,\"b\":[2.0,100.0,-0.0,1.5,3,1e+16,1e+17,2.5],\"c\":7}\n";
	char *buf = NULL;
	size_t len = 0, cap = 0;
	CHECK(jsonl_format(jsonl_parse_value(in, strlen(in)), &buf, &len, &cap, &err) == 0 && len == strlen(want) &&
		      !memcmp(buf, want, len), "wrote %.*s", (int)len, buf ? buf : "");
	free(buf);
}

/* An integer past 2^53 (an order id of 19 digits) read into a jv comes back
 * whole from jsonl_format and jsonl_jd_of, as json.loads keeps it, though jq
 * sees the double; through jq's parser (a \u0000) too. The reference is the
 * integer itself, drawn afresh. */
static void test_exact_integers_through_jv(void)
{
	static const long edge[] = {LONG_MAX, LONG_MIN, LONG_MAX - 1, LONG_MIN + 1, 9007199254740993L, -9007199254740993L,
				    9007199254740992L, 1000000000000000000L, 1234567890123456789L};
	check_seed_init();
	for (int c = 0; c < 4000 && !check_case_failed; c++) {
		long x;
		if (c < (int)(sizeof edge / sizeof *edge))
			x = edge[c];
		else {
			int digits = 16 + (int)rng_below(check_rng(), 4); /* 16 to 19 */
			uint64_t lo = digits == 16 ? 1000000000000000ULL : (uint64_t)pow(10, digits - 1);
			uint64_t span = digits == 19 ? (uint64_t)LONG_MAX - lo : 9 * lo;
			x = (long)(lo + rng_next(check_rng()) % span);
			if (rng_below(check_rng(), 2))
				x = -x;
		}
		char line[256];
		snprintf(line, sizeof line, "{\"x\":[%ld,{\"y\":%ld},2.0],\"s\":\"%s\"}", x, x, c % 2 ? "\\u0000" : "a");
		jv v = jsonl_parse_value(line, strlen(line));
		jv first = jv_array_get(jv_object_get(jv_copy(v), jv_string("x")), 0);
		long back = 0;
		int marked = jsonl_number_exact(first, &back);
		CHECK(jv_number_value(first) == (double)x, "%ld: jq sees %.17g", x, jv_number_value(first));
		CHECK(marked == (x > (1L << 53) || x < -(1L << 53)) && (!marked || back == x),
		      "%ld: marked %d, %ld", x, marked, back);
		jv_free(first);
		/* copied, put in other arrays and objects, then written */
		jv moved = jv_object_set(jv_object(), jv_string("m"), jv_object_get(jv_copy(v), jv_string("x")));
		char *buf = NULL, want[256];
		size_t len = 0, cap = 0;
		struct err err = {0};
		snprintf(want, sizeof want, "{\"m\":[%ld,{\"y\":%ld},2.0]}\n", x, x);
		CHECK(jsonl_format(moved, &buf, &len, &cap, &err) == 0 && len == strlen(want) && !memcmp(buf, want, len),
		      "wrote %.*s for %s", (int)len, buf ? buf : "", want);
		/* into a jd (what ds-fmt renders) and written from it */
		struct jd_arena ar = {0};
		struct jd d;
		struct jsonl_buf b = {0};
		CHECK(jsonl_jd_of(v, &ar, &d) == 0, "jd_of");
		jsonl_put_jd(&b, jd_get(&d, "x"));
		snprintf(want, sizeof want, "[%ld,{\"y\":%ld},2.0]", x, x);
		CHECK(b.n == strlen(want) && !memcmp(b.p, want, b.n), "jd wrote %.*s for %s", (int)b.n, b.p, want);
		free(b.p), free(buf);
		jd_arena_free(&ar);
		jv_free(v);
	}
	/* what jq computes is not marked; an integer a double holds is written as jq writes it */
	long i;
	CHECK(!jsonl_number_exact(jv_number(1e19), &i) && !jsonl_number_exact(jsonl_exact(9007199254740992L), &i) &&
		      jsonl_number_exact(jsonl_exact(LONG_MIN), &i) && i == LONG_MIN &&
		      jsonl_number_exact(jsonl_exact(9007199254740993L), &i) && i == 9007199254740993L,
	      "made numbers");
}

/* One bad line among good ones: the message names the file and the line. */
static void test_bad_lines(void)
{
	static const struct {
		const char *data;
		size_t size;
		const char *msg; /* after "PATH:" */
	} cases[] = {
#define C(data, msg) {data, sizeof data - 1, msg}
		C("{}\n\n{\"a\":\n{}\n", "3: not valid JSON: Unfinished JSON term at EOF at column 5"),
		C("{\"a\":1,}\n", "1: not valid JSON: Expected another key-value pair at column 8"),
		C("{}\r\n{\"a\":tru}\r\n", "2: not valid JSON: Invalid literal at column 9"),
		C("{}\n{}\n[1,2]\n", "3: expected an object, got array"),
		C("\"text\"\n", "1: expected an object, got string"),
		C("{}\n 42 \n", "2: expected an object, got number"),
		C("null\n", "1: expected an object, got null"),
		C("true\n", "1: expected an object, got boolean"),
		C("{}\n{} {}\n", "2: more than one JSON value on the line"),
		C("{\"a\":1}{\"b\":2}\n", "1: more than one JSON value on the line"),
		C("{\"a\":1} x\n", "1: not valid JSON: Invalid numeric literal at EOF at column 9"),
		C("{\"a\":1}}\n", "1: not valid JSON: Unmatched '}' at column 8"),
		C("{}\n{\"a\0\":1}\n", "2: NUL byte at column 4"),
		C("\0\n", "1: NUL byte at column 1"),
		C("{\"a\":\"\xff\"}\n", "1: not valid UTF-8 at column 7"),
		C("{}\n{}\n{\"a\":\"\xC0\x80\"}\n", "3: not valid UTF-8 at column 7"),       /* overlong */
		C("{\"a\":\"\xED\xA0\x80\"}\n", "1: not valid UTF-8 at column 7"),           /* surrogate */
		C("{\"a\":\"\xF4\x90\x80\x80\"}\n", "1: not valid UTF-8 at column 7"),       /* > U+10FFFF */
		C("{\"a\":\"\xE2\x82\"}\n", "1: not valid UTF-8 at column 7"),               /* cut short */
		C("{\"a\":\"\xE2\x82", "1: not valid UTF-8 at column 7"),                    /* at the end */
		C("{\"a\":\"\\ud800\"}\n", "1: not valid JSON: Invalid \\uXXXX\\uXXXX surrogate pair escape at column 13"),
		/* jq 1.6 leaks the second string of these; jsonl refuses them first
		 * with jq's message (and the sanitizer build checks nothing leaks). */
		C("{\"a\" \"c\"}\n", "1: not valid JSON: Expected separator between values at column 8"),
		C("{}\n[1, \"x\" \"y\"]\n", "2: not valid JSON: Expected separator between values at column 11"),
		C("{\"a\":[1 \"x\\\"\"]}\n", "1: not valid JSON: Expected separator between values at column 13"),
		C("{\"a\":1 \"b\":2}\n", "1: not valid JSON: Expected separator between values at column 10"),
		C("{\"a\":{}\"b\":2}\n", "1: not valid JSON: Expected separator between values at column 10"),
		C("{\"a\":true\"b\"}\n", "1: not valid JSON: Expected separator between values at column 12"),
		C("{\"a\":\"x\" \"y\n", "1: not valid JSON: Unfinished string at EOF at column 11"),
		C("{} \"x\"\n", "1: more than one JSON value on the line"),
#undef C
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		put("bad.jsonl", cases[i].data, cases[i].size);
		struct err err = {{0}, 0};
		long lines[1];
		long n = read_all(path, &err, lines, 1);
		char want[512];
		snprintf(want, sizeof want, "%s:%s", path, cases[i].msg);
		CHECK(n < 0, "case %zu: no error (%ld records)", i, n);
		CHECK(strcmp(err.msg, want) == 0, "case %zu:\n      got  \"%s\"\n      want \"%s\"", i, err.msg, want);
		CHECK(err.code == EXIT_USAGE, "case %zu: code %d", i, err.code);
	}
}

/* After a bad line, reading goes on (--skip-bad), and line numbers stay right. */
static void test_skip_bad(void)
{
	PUT("skip.jsonl", "{\"i\":1}\n[]\n\n{\"i\":2}\nnope\n{\"i\":3}\n");
	struct err err;
	struct jsonl_reader *r = jsonl_open(path, &err);
	long good[4] = {0}, bad[4] = {0};
	int ngood = 0, nbad = 0, rc;
	jv v;
	while ((rc = jsonl_next(r, &v, &err)) != 0) {
		if (rc < 0) {
			if (nbad < 4)
				bad[nbad] = jsonl_line(r);
			nbad++;
			continue;
		}
		if (ngood < 4)
			good[ngood] = jsonl_line(r);
		ngood++;
		jv_free(v);
	}
	jsonl_close(r);
	CHECK(ngood == 3 && good[0] == 1 && good[1] == 4 && good[2] == 6, "good %d: %ld %ld %ld", ngood, good[0],
	      good[1], good[2]);
	CHECK(nbad == 2 && bad[0] == 2 && bad[1] == 5, "bad %d: %ld %ld", nbad, bad[0], bad[1]);
}

static void test_long_line(void)
{
	size_t n = 3u << 20;
	char *data = malloc(n + 16);
	memcpy(data, "{\"t\":\"", 6);
	memset(data + 6, 'x', n);
	memcpy(data + 6 + n, "\"}\n{}\n", 6);
	put("long.jsonl", data, n + 12);
	free(data);
	struct err err;
	struct jsonl_reader *r = jsonl_open(path, &err);
	jv v;
	CHECK(jsonl_next(r, &v, &err) == 1, "long record: %s", err.msg);
	jv t = jv_object_get(v, jv_string("t"));
	CHECK(jv_get_kind(t) == JV_KIND_STRING && (size_t)jv_string_length_bytes(jv_copy(t)) == n, "length");
	jv_free(t);
	CHECK(jsonl_next(r, &v, &err) == 1 && jsonl_line(r) == 2, "next line");
	jv_free(v);
	jsonl_close(r);
}

/* Lines whose block is held stay as they were while the reader reads on
 * (into other blocks), and the blocks are freed with their last holder:
 * 3000 lines of random lengths, some past a block's size, each kept. */
static void test_held_blocks(void)
{
	enum { N = 3000 };
	size_t total = 0, len[N];
	for (int i = 0; i < N; i++)
		total += (len[i] = i % 700 == 5 ? 300000 + (size_t)i : 1 + (size_t)rng_below(check_rng(), 3000)) + 1;
	char *data = malloc(total), *at = data;
	for (int i = 0; i < N; i++) {
		for (size_t k = 0; k < len[i]; k++)
			at[k] = (char)('a' + (i + k) % 26);
		at += len[i];
		*at++ = '\n';
	}
	put("held.jsonl", data, total);
	struct err err;
	struct jsonl_reader *r = jsonl_open(path, &err);
	const char **line = malloc(N * sizeof *line);
	struct jsonl_block **held = malloc(N * sizeof *held);
	int n = 0, blocks = 0;
	size_t got;
	for (; n < N && jsonl_next_line(r, &line[n], &got, &err) == 1; n++) {
		CHECK(got == len[n], "line %d: %zu bytes, want %zu", n + 1, got, len[n]);
		held[n] = jsonl_block_ref(jsonl_line_block(r));
		blocks += !n || held[n] != held[n - 1];
	}
	CHECK(n == N, "%d lines", n);
	at = data;
	for (int i = 0; i < n; i++) {
		CHECK(!memcmp(line[i], at, len[i]), "line %d changed after the reader read on", i + 1);
		at += len[i] + 1;
		jsonl_block_release(held[i]);
	}
	CHECK(blocks > 3, "the lines lie in %d blocks: the case is not exercised", blocks);
	jsonl_close(r);
	free(held), free((void *)line), free(data);
}

/* Lines whose blocks are held a while (the last W read) and then given
 * back: the reader reads into blocks given back again, never into one a
 * line is still held in; and the same file mapped (jsonl_open_mapped) gives
 * the same lines, unterminated, in one block. */
static void test_blocks_given_back(void)
{
	enum { N = 4000, W = 7 };
	size_t total = 0, len[N];
	for (int i = 0; i < N; i++)
		total += (len[i] = 1 + (size_t)rng_below(check_rng(), i % 500 == 7 ? 200000 : 4000)) + 1;
	char *data = malloc(total), *at = data;
	for (int i = 0; i < N; i++) {
		for (size_t k = 0; k < len[i]; k++)
			at[k] = (char)('a' + (i * 7 + k) % 26);
		at += len[i];
		*at++ = '\n';
	}
	put("given-back.jsonl", data, total);
	struct err err;
	for (int mapped = 0; mapped < 2; mapped++) {
		struct jsonl_reader *r = mapped ? jsonl_open_mapped(path, &err) : jsonl_open(path, &err);
		const char **line = malloc(N * sizeof *line);
		size_t *off = malloc(N * sizeof *off);
		struct jsonl_block **held = malloc(N * sizeof *held);
		int n = 0, bad = 0;
		size_t got, o = 0;
		for (; n < N && jsonl_next_line(r, &line[n], &got, &err) == 1; n++) {
			CHECK(got == len[n], "line %d: %zu bytes, want %zu", n + 1, got, len[n]);
			off[n] = o, o += len[n] + 1;
			held[n] = jsonl_block_ref(jsonl_line_block(r));
			if (n >= W) { /* the oldest held line, still as read, given back */
				bad += memcmp(line[n - W], data + off[n - W], len[n - W]) != 0;
				jsonl_block_release(held[n - W]);
			}
		}
		CHECK(n == N && !bad, "%s: %d lines, %d changed while held", mapped ? "mapped" : "read", n, bad);
		for (int i = n > W ? n - W : 0; i < n; i++)
			jsonl_block_release(held[i]);
		if (mapped)
			CHECK(line[0] == line[1] - len[0] - 1, "mapped: the lines lie where the file has them");
		jsonl_close(r);
		free(held), free(off), free((void *)line);
	}
	free(data);
}

/* A mapped file that shrinks under the reader: msg_catch_bus ends the
 * process with its message and status 1 (in a child). Standard input and
 * an empty file are read, not mapped. */
static void test_mapped_shrinks(void)
{
	char big[20000];
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = i % 100 == 99 ? '\n' : (char)('a' + i % 26);
	put("shrinks.jsonl", big, sizeof big);
	char errpath[300];
	snprintf(errpath, sizeof errpath, "%s/shrinks.err", dir);
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(fd, 2);
		struct err err;
		struct jsonl_reader *r = jsonl_open_mapped(path, &err);
		msg_catch_bus(jsonl_name(r));
		const char *line;
		size_t len;
		if (truncate(path, 0) != 0)
			_exit(3);
		while (jsonl_next_line(r, &line, &len, &err) == 1)
			;
		_exit(0); /* the shrunk file was read to its old end */
	}
	int status = 0;
	waitpid(pid, &status, 0);
	char msg[512] = "";
	FILE *f = fopen(errpath, "r");
	size_t k = f ? fread(msg, 1, sizeof msg - 1, f) : 0;
	msg[k] = 0;
	if (f)
		fclose(f);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1 && strstr(msg, "shrinks.jsonl: the file shrank while it was read"),
	      "status %d, said: %s", status, msg);
	PUT("empty.jsonl", "");
	struct err err;
	struct jsonl_reader *r = jsonl_open_mapped(path, &err);
	const char *line;
	size_t len;
	CHECK(r && jsonl_next_line(r, &line, &len, &err) == 0, "an empty file: no line");
	jsonl_close(r);
}

/* Standard input that is a regular file is mapped from its offset (lines
 * a script read before are not the reader's), at fresh offsets in and
 * past the first pages; its offset is left at the end, as a reader leaves
 * it; an offset at the end gives no line. */
static void test_stdin_mapped(void)
{
	check_seed_init();
	enum { N = 3000 };
	size_t total = 0, start[N + 1];
	char *data = malloc(N * 40);
	for (int i = 0; i < N; i++) {
		start[i] = total;
		total += (size_t)sprintf(data + total, "{\"n\":%d,\"pad\":\"%.*s\"}\n", i, (int)rng_below(check_rng(), 12), "xxxxxxxxxxxx");
	}
	start[N] = total;
	put("stdin.jsonl", data, total);
	int saved = dup(STDIN_FILENO), fd = open(path, O_RDONLY);
	CHECK(saved >= 0 && fd >= 0 && dup2(fd, STDIN_FILENO) == STDIN_FILENO, "cannot put the file on standard input");
	for (int round = 0; round < 20 && !check_case_failed; round++) {
		int first = round == 0 ? 0 : round == 1 ? N : (int)rng_below(check_rng(), N);
		lseek(STDIN_FILENO, (off_t)start[first], SEEK_SET);
		struct err err;
		struct jsonl_reader *r = jsonl_open_mapped("-", &err);
		const char *s, *line;
		size_t n, len;
		CHECK(r && !strcmp(jsonl_name(r), "<stdin>"), "name");
		CHECK(r && (first == N || jsonl_mapped(r, &s, &n)), "from line %d: not mapped", first + 1);
		CHECK(lseek(STDIN_FILENO, 0, SEEK_CUR) == (off_t)total, "the offset is not left at the end");
		int k = first;
		while (r && jsonl_next_line(r, &line, &len, &err) == 1 && k < N) {
			if (len != start[k + 1] - start[k] - 1 || memcmp(line, data + start[k], len))
				break;
			k++;
		}
		CHECK(k == N, "from line %d: line %d differs", first + 1, k + 1);
		CHECK(r && jsonl_line(r) == N - first, "from line %d: %ld lines counted", first + 1, r ? jsonl_line(r) : -1L);
		jsonl_close(r);
	}
	dup2(saved, STDIN_FILENO);
	close(saved), close(fd);
	free(data);
}

/* A mapped file cut into random ranges, each range's lines found as
 * jsonl_lines_next finds them: together, every line jsonl_next_line gives,
 * once, in order, with its number (the ranges' counts added up). Lines of
 * every ending, blank ones, a byte-order mark, lines longer than a range
 * and a last line with and without a newline. */
static void test_lines_in_ranges(void)
{
	check_seed_init();
	static const char *pieces[] = {"{\"a\":1}", "", " \t", "\r", "x", "\xEF\xBB\xBF{}", "[1, 2]"};
	for (int round = 0; round < 200; round++) {
		size_t cap = 1 << 16, n = 0;
		char *text = malloc(cap);
		if (check_urand() < 0.3)
			memcpy(text, "\xEF\xBB\xBF", 3), n = 3;
		int nlines = 1 + (int)(check_urand() * 60);
		for (int i = 0; i < nlines; i++) {
			const char *p = pieces[(int)(check_urand() * 7)];
			size_t k = strlen(p), reps = check_urand() < 0.1 ? 1 + (size_t)(check_urand() * 400) : 1;
			for (size_t r = 0; r < reps && n + k + 2 < cap; r++)
				memcpy(text + n, p, k), n += k;
			if (i + 1 < nlines || check_urand() < 0.5) {
				if (check_urand() < 0.3)
					text[n++] = '\r';
				text[n++] = '\n';
			}
		}
		put("ranges.jsonl", text, n);
		struct err err;
		struct jsonl_reader *r = jsonl_open_mapped(path, &err);
		const char *s = NULL;
		size_t size = 0;
		int mapped = r && jsonl_mapped(r, &s, &size);
		CHECK(n == 0 || (mapped && size == n), "round %d: mapped, %zu bytes of %zu", round, size, n);
		if (!mapped) {
			jsonl_close(r), free(text);
			continue;
		}
		/* the lines as the reader gives them, read from a second reader */
		struct jsonl_reader *r2 = jsonl_open_mapped(path, &err);
		const char *s2 = NULL, *line, *want;
		CHECK(r2 && jsonl_mapped(r2, &s2, &size), "round %d: mapped again", round);
		size_t len, wlen;
		long before = 0;
		int bad = 0;
		for (size_t from = 0; from < size && !bad;) {
			size_t to = from + 1 + (size_t)(check_urand() * (check_urand() < 0.5 ? 8 : 3000));
			struct jsonl_lines g;
			jsonl_lines_start(&g, s, size, from, to);
			while (!bad && jsonl_lines_next(&g, &line, &len)) {
				bad = jsonl_next_line(r2, &want, &wlen, &err) != 1 || wlen != len || want - s2 != line - s ||
				      jsonl_line(r2) != before + g.lineno;
				CHECK(!bad, "round %d: range [%zu, %zu): line %ld of it (%zu bytes) is the reader's line %ld (%zu bytes)",
				      round, from, to, g.lineno, len, jsonl_line(r2), wlen);
			}
			before += g.lineno;
			from = to;
		}
		CHECK(bad || jsonl_next_line(r2, &want, &wlen, &err) == 0, "round %d: the ranges left lines out", round);
		jsonl_close(r2), jsonl_close(r), free(text);
	}
	PUT("read.jsonl", "{}\n");
	struct err err;
	struct jsonl_reader *r = jsonl_open("-", &err);
	const char *s;
	size_t size;
	CHECK(r && !jsonl_mapped(r, &s, &size), "standard input is read, not mapped");
	jsonl_close(r);
}

/* A mapped file read in ranges as ds-fmt reads it, each range's bytes
 * given back once its lines are read (all but the byte before the next
 * range, which the next range's start looks at): every line is the one a
 * second reader reads, and the pages given back are no longer mapped. */
static void test_mapped_done(void)
{
	size_t cap = 12 << 20, n = 0;
	char *text = malloc(cap);
	CHECK(text != NULL, "memory");
	if (!text)
		return;
	for (long i = 0; n + 200 < cap; i++)
		n += (size_t)snprintf(text + n, cap - n, "{\"id\": %ld, \"text\": \"%.*s\"}\n", i, (int)(i % 150),
				      "the quick brown fox jumps over the lazy dog, the quick brown fox jumps over the lazy dog, "
				      "the quick brown fox jumps over the lazy dog, the quick brown fox jumps");
	put("done.jsonl", text, n);
	struct err err;
	struct jsonl_reader *r = jsonl_open_mapped(path, &err), *r2 = jsonl_open_mapped(path, &err);
	const char *s = NULL, *s2 = NULL, *line, *want;
	size_t size = 0, size2 = 0, len, wlen;
	CHECK(r && r2 && jsonl_mapped(r, &s, &size) && jsonl_mapped(r2, &s2, &size2) && size == n, "mapped");
	int bad = !s || !s2;
	for (size_t from = 0; from < size && !bad; from += 64 << 10) {
		struct jsonl_lines g;
		jsonl_lines_start(&g, s, size, from, from + (64 << 10));
		while (!bad && jsonl_lines_next(&g, &line, &len))
			bad = jsonl_next_line(r2, &want, &wlen, &err) != 1 || wlen != len || memcmp(line, want, len);
		CHECK(!bad, "range at %zu: a line differs from the reader's", from);
		jsonl_mapped_done(r, from + (64 << 10) - 1);
	}
	unsigned char vec[1];
	long page = sysconf(_SC_PAGESIZE);
	const char *first = (const char *)((uintptr_t)s / (uintptr_t)page * (uintptr_t)page);
	CHECK(!bad && mincore((void *)first, (size_t)page, vec) < 0 && errno == ENOMEM,
	      "the first page is still mapped after the whole file was read");
	/* What the process maps next may lie where those pages were (malloc's
	 * large blocks do): the reader's end must leave it mapped. */
	void *other = bad ? MAP_FAILED
			  : mmap((void *)first, (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
				 -1, 0);
	CHECK(other == (void *)first, "no mapping could be placed where the released pages were");
	jsonl_close(r2), jsonl_close(r), free(text);
	if (other != MAP_FAILED) {
		CHECK(mincore(other, (size_t)page, vec) == 0, "jsonl_close unmapped a mapping made after the pages were released");
		munmap(other, (size_t)page);
	}
}

static void test_open_errors(void)
{
	struct err err = {{0}, 0};
	char p[256];
	snprintf(p, sizeof p, "%s/missing.jsonl", dir);
	CHECK(jsonl_open(p, &err) == NULL, "missing file opened");
	char want[512];
	snprintf(want, sizeof want, "%s: No such file or directory", p);
	CHECK(strcmp(err.msg, want) == 0 && err.code == EXIT_RUNTIME, "got \"%s\" code %d", err.msg, err.code);

	/* A folder opens for reading but cannot be read. */
	struct jsonl_reader *r = jsonl_open(dir, &err);
	CHECK(r != NULL, "folder: %s", err.msg);
	if (r) {
		jv v;
		memset(&err, 0, sizeof err);
		CHECK(jsonl_next(r, &v, &err) == -1, "read of a folder succeeded");
		snprintf(want, sizeof want, "%s:1: read error: Is a directory", dir);
		CHECK(strcmp(err.msg, want) == 0 && err.code == EXIT_RUNTIME, "got \"%s\"", err.msg);
		jsonl_close(r);
	}
}

static void test_stdin_name_and_errf(void)
{
	FILE *f = fopen("/dev/null", "r");
	struct jsonl_reader *r = jsonl_from_file(f, NULL);
	CHECK(r && strcmp(jsonl_name(r), "<stdin>") == 0, "name");
	jsonl_close(r); /* leaves f to its owner */
	CHECK(fcntl(fileno(f), F_GETFD) != -1, "jsonl_close closed a file it was handed");
	fclose(f);

	PUT("errf.jsonl", "\n{\"train\":[[4,2]]}\n");
	struct err err;
	r = jsonl_open(path, &err);
	jv v;
	CHECK(jsonl_next(r, &v, &err) == 1, "read");
	jv_free(v);
	CHECK(jsonl_errf(r, &err, "key \"%s\": span [%d,%d) is backwards", "train", 4, 2) == -1, "returns -1");
	char want[512];
	snprintf(want, sizeof want, "%s:2: key \"train\": span [4,2) is backwards", path);
	CHECK(strcmp(err.msg, want) == 0, "got \"%s\"", err.msg);
	jsonl_close(r);
}

static void test_empty_inputs(void)
{
	static const char *inputs[] = {"", "\n", "\n\n  \n\r\n", "\xEF\xBB\xBF\n"};
	for (size_t i = 0; i < sizeof inputs / sizeof *inputs; i++) {
		put("empty.jsonl", inputs[i], strlen(inputs[i]));
		struct err err;
		long lines[1];
		long n = read_all(path, &err, lines, 1);
		CHECK(n == 0, "input %zu: %ld (%s)", i, n, err.msg);
	}
}

static void test_write(void)
{
	char *buf = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&buf, &size);
	struct err err;
	jv rec = jv_parse("{\"text\":\"Привет — hi\",\"train\":[[0,12]],\"x\":0.1,\"nested\":{\"b\":null}}");
	CHECK(jsonl_write(f, jv_copy(rec), &err) == 0, "write: %s", err.msg);
	CHECK(jsonl_write(f, jv_object(), &err) == 0, "write empty");
	CHECK(jsonl_write(f, jv_invalid(), &err) == -1, "an invalid value was written");
	fclose(f);
	const char *want = "{\"text\":\"Привет — hi\",\"train\":[[0,12]],\"x\":0.1,\"nested\":{\"b\":null}}\n{}\n";
	CHECK(strcmp(buf, want) == 0, "got \"%s\"", buf);

	/* What was written reads back as the same values. */
	FILE *in = fmemopen(buf, strlen(buf), "r");
	struct jsonl_reader *r = jsonl_from_file(in, "mem");
	jv v;
	CHECK(jsonl_next(r, &v, &err) == 1 && jv_equal(v, jv_copy(rec)), "round trip");
	CHECK(jsonl_next(r, &v, &err) == 1 && jv_equal(v, jv_object()), "second record");
	CHECK(jsonl_next(r, &v, &err) == 0, "end");
	jsonl_close(r);
	fclose(in);
	jv_free(rec);
	free(buf);
}

static void test_write_error(void)
{
	FILE *f = fopen("/dev/full", "w");
	setvbuf(f, NULL, _IONBF, 0); /* so the write itself fails, not a later flush */
	struct err err = {{0}, 0};
	CHECK(jsonl_write(f, jv_parse("{\"a\":1}"), &err) == -1, "write to a full device succeeded");
	CHECK(strcmp(err.msg, "write error: No space left on device") == 0 && err.code == EXIT_RUNTIME, "got \"%s\"",
	      err.msg);
	fclose(f);
}

/* A random JSON value: every ASCII byte and multi-byte UTF-8 in strings,
 * whole and fractional numbers, nesting. */
static jv random_value(int depth)
{
	static const char *utf8[] = {"\xd0\x9f", "\xe4\xb8\xad", "\xf0\x9f\x99\x82", "\xe2\x96\x81"};
	int kind = rand() % (depth > 3 ? 5 : 7);
	switch (kind) {
	case 0: return jv_null();
	case 1: return rand() % 2 ? jv_true() : jv_false();
	case 2: {
		static const double nums[] = {0, 1, -1, 7, 42, 1e9, 1e9 - 1, 123456789012.0, 0.5, -2.25, 1e-7, 3e300};
		return jv_number(rand() % 3 ? nums[rand() % 12] : (double)(rand() % 100000));
	}
	case 3:
	case 4: {
		char buf[64];
		size_t n = 0;
		int len = rand() % 12;
		for (int i = 0; i < len; i++) {
			if (rand() % 4 == 0) {
				const char *u = utf8[rand() % 4];
				memcpy(buf + n, u, strlen(u));
				n += strlen(u);
			} else {
				buf[n++] = (char)(1 + rand() % 127);
			}
		}
		return jv_string_sized(buf, (int)n);
	}
	case 5: {
		jv a = jv_array();
		for (int i = rand() % 4; i > 0; i--)
			a = jv_array_append(a, random_value(depth + 1));
		return a;
	}
	default: {
		jv o = jv_object();
		for (int i = rand() % 4; i > 0; i--) {
			jv k = random_value(4);
			if (jv_get_kind(k) != JV_KIND_STRING) {
				jv_free(k);
				k = jv_string("k");
			}
			o = jv_object_set(o, k, random_value(depth + 1));
		}
		return o;
	}
	}
}

/* jsonl_write writes what jq's own printer writes, byte for byte. */
static void test_write_matches_jq(void)
{
	unsigned seed = (unsigned)time(NULL);
	srand(seed);
	for (int i = 0; i < 3000 && !check_case_failed; i++) {
		jv v = random_value(0);
		jv want = jv_dump_string(jv_copy(v), 0);
		char *got = NULL;
		size_t n = 0;
		FILE *f = open_memstream(&got, &n);
		struct err err = {0};
		int rc = jsonl_write(f, v, &err);
		fclose(f);
		size_t wn = (size_t)jv_string_length_bytes(jv_copy(want));
		CHECK(rc == 0 && n == wn + 1 && !memcmp(got, jv_string_value(want), wn) && got[wn] == '\n',
		      "seed %u value %d: wrote '%.*s', jq writes '%s'", seed, i, (int)n, got, jv_string_value(want));
		jv_free(want);
		free(got);
	}
}

/* Numbers as jq's printer writes them, among them those written without it
 * (integers below 1e9 in magnitude, not -0). */
static void test_write_numbers_match_jq(void)
{
	static const double fixed[] = {0, -0.0, 1, -1, 999999999, -999999999, 1e9, -1e9, 1e15, -1e17, 0.5, 1e-7};
	uint64_t *g = check_rng();
	for (int i = 0; i < 2000 && !check_case_failed; i++) {
		double d = i < (int)(sizeof fixed / sizeof *fixed) ? fixed[i]
			   : i % 2 ? (double)((int64_t)rng_below(g, 4000000001ull) - 2000000000)
				   : (double)((int64_t)rng_below(g, 2001) - 1000);
		jv want = jv_dump_string(jv_number(d), 0);
		char *got = NULL;
		size_t n = 0;
		FILE *f = open_memstream(&got, &n);
		struct err err = {0};
		int rc = jsonl_write(f, jv_number(d), &err);
		fclose(f);
		size_t wn = (size_t)jv_string_length_bytes(jv_copy(want));
		CHECK(rc == 0 && n == wn + 1 && !memcmp(got, jv_string_value(want), wn),
		      "%.17g written '%.*s', jq writes '%s'", d, (int)n, got, jv_string_value(want));
		jv_free(want);
		free(got);
	}
}

/* jsonl_put_string on long strings (runs of plain bytes between bytes to
 * escape, across its 8-byte words and 4096-byte blocks) writes what jq
 * writes, after what the buffer already held. */
static void test_put_string_matches_jq(void)
{
	unsigned seed = (unsigned)time(NULL);
	srand(seed);
	static const char *odd[] = {"\"", "\\", "\n", "\t", "\x01", "\x1f", "\x7f", "\xd0\x9f", "\xf0\x9f\x99\x82", "\b\f\r"};
	char *s = malloc(20000), filler[10000];
	memset(filler, 'x', sizeof filler);
	struct jsonl_buf b = {0};
	for (int i = 0; i < 300 && !check_case_failed && s; i++) {
		size_t n = 0, want_n = (size_t)(rand() % (i < 100 ? 100 : 16000));
		int plain = 1 + rand() % 40; /* mean run of plain bytes */
		while (n < want_n) {
			if (rand() % plain) {
				s[n++] = (char)(' ' + rand() % 95);
			} else {
				const char *u = odd[rand() % 10];
				memcpy(s + n, u, strlen(u));
				n += strlen(u);
			}
		}
		jv want = jv_dump_string(jv_string_sized(s, (int)n), 0);
		size_t before = (size_t)(rand() % 3) * 5000; /* what the buffer held stays */
		b.n = 0;
		jsonl_put(&b, filler, before);
		jsonl_put_string(&b, s, n);
		size_t wn = (size_t)jv_string_length_bytes(jv_copy(want));
		CHECK(!b.oom && b.n == before + wn && !memcmp(b.p, filler, before) &&
			      !memcmp(b.p + before, jv_string_value(want), wn),
		      "seed %u case %d: %zu bytes: wrote %zu bytes, jq %zu", seed, i, n, b.n - before, wn);
		jv_free(want);
	}
	free(b.p);
	free(s);
}

/* Strings the direct parser makes (copied, not built by jq, see
 * string_checked in lib/jsonl.c) are jq's in every use: the same value,
 * length, hash, use as an object key, and growth by appending. Random texts
 * of plain bytes, escapes and 2-4 byte characters, as jq writes them and
 * raw. Text that is not UTF-8 (overlongs, surrogates, past U+10FFFF, cut
 * short) is refused, as jq would change it. */
static void test_parsed_strings_are_jqs(void)
{
	static const char *pieces[] = {"a", "Zq", "lorapipe ", "\\\"", "\\\\", "\\n", "\\t", "\\u00e9", "\\ud83d\\ude00",
				       "\\u0001", "\\/", "é", "Погода", "🌦", "\\u20ac", "\\u007f", "€", "\x7f", "x\\by\\fz\\r"};
	unsigned seed = (unsigned)time(NULL);
	srand(seed);
	char *text = malloc(64 * 1024);
	for (int i = 0; i < 2000 && !check_case_failed && text; i++) {
		size_t n = 0, want = (size_t)(rand() % (i < 1000 ? 40 : 6000));
		text[n++] = '"';
		while (n < want + 1) {
			const char *p = pieces[rand() % (sizeof pieces / sizeof *pieces)];
			memcpy(text + n, p, strlen(p));
			n += strlen(p);
		}
		text[n++] = '"';
		jv ref = jv_parse_sized(text, (int)n);
		jv got = jsonl_parse_value(text, n);
		CHECK(jv_get_kind(got) == JV_KIND_STRING && jv_equal(jv_copy(got), jv_copy(ref)),
		      "seed %u case %d: %.60s", seed, i, text);
		if (jv_get_kind(got) != JV_KIND_STRING || jv_get_kind(ref) != JV_KIND_STRING) {
			jv_free(got), jv_free(ref);
			break;
		}
		CHECK(jv_string_length_bytes(jv_copy(got)) == jv_string_length_bytes(jv_copy(ref)) &&
			      jv_string_hash(jv_copy(got)) == jv_string_hash(jv_copy(ref)),
		      "seed %u case %d: length or hash differ", seed, i);
		jv o = jv_object_set(jv_object(), jv_copy(got), jv_number(i));
		jv at = jv_object_get(o, jv_copy(ref));
		CHECK(jv_get_kind(at) == JV_KIND_NUMBER && jv_number_value(at) == i, "seed %u case %d: as a key", seed, i);
		jv_free(at);
		jv grown = jv_string_append_str(jv_string_append_str(jv_copy(got), "tail"), "€ and more text");
		jv grown_ref = jv_string_append_str(jv_string_append_str(jv_copy(ref), "tail"), "€ and more text");
		CHECK(jv_equal(grown, grown_ref), "seed %u case %d: appended", seed, i);
		jv_free(got), jv_free(ref);
	}
	free(text);
	static const char *bad[] = {"\"\xc0\x80\"", "\"a\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"", "\"\xf5\x80\x80\x80\"",
				    "\"\xe2\x82\"", "\"\xff\"", "\"plain then \x80\"", "\"\xc3\""};
	for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
		jv v = jsonl_parse_value(bad[k], strlen(bad[k]));
		CHECK(!jv_is_valid(v), "bad UTF-8 case %zu was read", k);
		jv_free(v);
	}
}

/* One odd piece at every offset of a string of 1 to 260 bytes (across
 * the vector scans' blocks and their ends), alone or with an escape some
 * bytes after it, in ASCII or in two- and three-byte characters (Cyrillic,
 * CJK): bytes that are not UTF-8 are refused, before a stop as after one,
 * as are characters the piece cuts; the rest reads as jq reads it (a
 * control byte is refused, but jq 1.6 reads 1F). */
static long utf8proc_bad_at(const char *s, size_t n);

static void test_string_scan_at_every_offset(void)
{
	/* UTF-8 or not, the text with the piece in it says (a piece may end or
	 * start a filler's character); a control byte is refused */
	static const char *const pieces[] = {"\x1f", "\x01", "\xff", "\xc3", "\xed\xa0\x80", "\xe2\x82", "\x7f", "é",
					     "\xf0\x9f\x99\x82", "\\n", "\\u00e9", "~", "\x80", "\xf4\x90\x80\x80",
					     "\xe0\x9f\xbf"};
	static const char *const fillers[] = {"a", "я", "語"};
	char text[1100];
	for (size_t fi = 0; fi < sizeof fillers / sizeof *fillers; fi++) {
		size_t fl = strlen(fillers[fi]);
		for (size_t n = 1; n <= 260 && !check_case_failed; n++)
			for (size_t k = 0; k < sizeof pieces / sizeof *pieces && !check_case_failed; k++)
				for (size_t at = 0, pn = strlen(pieces[k]); at + pn <= n && !check_case_failed; at++) {
					/* n bytes: the filler's characters, the piece at byte at (a
					 * character it lands in is cut: its bytes before, then after) */
					text[0] = '"';
					for (size_t i = 0; i < n; i++)
						text[1 + i] = fillers[fi][i % fl];
					memcpy(text + 1 + at, pieces[k], pn);
					size_t esc = 1 + at + pn + (at * 7 + n) % 70; /* an escape after the piece, or none */
					int with_escape = at % 2 && esc + 2 <= n + 1;
					if (with_escape)
						memcpy(text + esc, "\\t", 2);
					text[n + 1] = '"';
					jv ref = jv_parse_sized(text, (int)n + 2);
					/* UTF-8 as utf8proc reads it: a cut character, a piece that is not */
					int utf8 = utf8proc_bad_at(text, n + 2) < 0;
					int control = pieces[k][0] > 0 && pieces[k][0] < 0x20;
					int bad = !utf8 ? 1 : control ? 2 : 0;
					/* nothing a JSON string escapes: no escape, no 7F */
					int plain_ref = !memchr(text + 1, '\\', n) && !memchr(text + 1, 0x7f, n);
					jv got = jsonl_parse_value(text, n + 2);
					/* the record parser's own reading: not a control byte, nor what is not UTF-8 */
					char out[1100];
					const char *t;
					size_t tn;
					int plain;
					long taken = jsonl_string_decode(text, n + 2, out, &t, &tn, &plain);
					/* what follows the string on its line is not the string's: a 7F, a byte not UTF-8 */
					memcpy(text + n + 2, "\x7f\xff", 2);
					const char *t2;
					size_t tn2;
					int plain2;
					long taken2 = jsonl_string_decode(text, n + 4, out + 550, &t2, &tn2, &plain2);
					CHECK(taken2 == taken && (taken <= 0 || (tn2 == tn && plain2 == plain)),
					      "filler %zu, piece %zu at %zu of %zu bytes: with bytes after the string %ld, %ld alone",
					      fi, k, at, n, taken2, taken);
					CHECK((taken > 0) == !bad && (taken <= 0 || plain == plain_ref),
					      "filler %zu, piece %zu at %zu of %zu bytes%s: the record parser's reading %ld, plain %d",
					      fi, k, at, n, with_escape ? " (an escape after)" : "", taken, plain);
					if (bad == 1) {
						CHECK(!jv_is_valid(got), "filler %zu, piece %zu at %zu of %zu bytes%s: read", fi, k, at,
						      n, with_escape ? " (an escape after)" : "");
					} else {
						CHECK(jv_is_valid(got) == jv_is_valid(ref) &&
							      (!jv_is_valid(got) || jv_equal(jv_copy(got), jv_copy(ref))),
						      "filler %zu, piece %zu at %zu of %zu bytes%s: %s, jq's %s", fi, k, at, n,
						      with_escape ? " (an escape after)" : "", jv_is_valid(got) ? "read" : "refused",
						      jv_is_valid(ref) ? "read" : "refused");
					}
					CHECK(taken <= 0 || (tn == (size_t)jv_string_length_bytes(jv_copy(ref)) &&
							     !memcmp(t, jv_string_value(ref), tn)),
					      "filler %zu, piece %zu at %zu of %zu bytes: the text differs from jq's", fi, k, at, n);
					jv_free(ref);
					jv_free(got);
				}
	}
}

/* Strings that end at the end of a page whose next page is not mapped
 * (a mapped file's last page, a buffer's): each of 1 to 70 bytes, ASCII or
 * not, closed or not, is read as in the middle of a buffer, and nothing
 * past the page is read (it would fault). */
static void test_string_scan_at_page_end(void)
{
	long page = sysconf(_SC_PAGESIZE);
	char *map = mmap(NULL, 2 * (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(map != MAP_FAILED && mprotect(map + page, (size_t)page, PROT_NONE) == 0, "two pages, the second unmapped");
	if (map == MAP_FAILED)
		return;
	char *end = map + page, mid[200];
	static const char *const fillers[] = {"a", "я", "a\\nb"};
	for (size_t fi = 0; fi < sizeof fillers / sizeof *fillers && !check_case_failed; fi++)
		for (size_t n = 1; n <= 70 && !check_case_failed; n++)
			for (int closed = 0; closed < 2; closed++) {
				/* '"', then n filler bytes (a character cut at the end is not UTF-8), then '"' or nothing */
				size_t len = 1 + n + (size_t)closed;
				char *s = end - len;
				s[0] = '"';
				for (size_t i = 0; i < n; i++)
					s[1 + i] = fillers[fi][i % strlen(fillers[fi])];
				if (closed)
					end[-1] = '"';
				memcpy(mid, s, len);
				memset(mid + len, ' ', 64);
				const char *t1, *t2;
				size_t n1 = 0, n2 = 0;
				int p1, p2;
				char out1[200], out2[200];
				long k1 = jsonl_string_decode(s, len, out1, &t1, &n1, &p1);
				long k2 = jsonl_string_decode(mid, len, out2, &t2, &n2, &p2);
				CHECK(k1 == k2 && (k1 <= 0 || (n1 == n2 && !memcmp(t1, t2, n1) && p1 == p2)),
				      "filler %zu, %zu bytes%s at the page's end: %ld, in a buffer %ld", fi, n,
				      closed ? ", closed" : "", k1, k2);
				CHECK(closed || k1 <= 0, "filler %zu, %zu bytes: an unclosed string was read", fi, n);
			}
	munmap(map, 2 * (size_t)page);
}

/* jsonl_array_next gives each element of random arrays (as jq prints them,
 * and spaced out) as the text of the value jq has there; broken arrays end in
 * -1. */
static void test_array_next(void)
{
	unsigned seed = (unsigned)time(NULL);
	srand(seed);
	for (int i = 0; i < 500 && !check_case_failed; i++) {
		jv arr = jv_array();
		for (int k = rand() % 6; k > 0; k--)
			arr = jv_array_append(arr, random_value(1));
		jv text = jv_dump_string(jv_copy(arr), i % 2 ? JV_PRINT_PRETTY : 0);
		const char *t = jv_string_value(text);
		size_t n = (size_t)jv_string_length_bytes(jv_copy(text)), at = 0, a, b;
		int r, k = 0;
		while ((r = jsonl_array_next(t, n, &at, &a, &b)) > 0 && !check_case_failed) {
			jv got = jsonl_parse_value(t + a, b - a);
			CHECK(k < jv_array_length(jv_copy(arr)) && jv_equal(got, jv_array_get(jv_copy(arr), k)),
			      "seed %u array %d element %d: '%.*s'", seed, i, k, (int)(b - a), t + a);
			k++;
		}
		CHECK(r == 0 && k == jv_array_length(jv_copy(arr)), "seed %u array %d: %d of %d elements, then %d", seed, i,
		      k, jv_array_length(jv_copy(arr)), r);
		jv_free(text), jv_free(arr);
	}
	static const struct {
		const char *s;
		int n; /* elements before the end (0) or the error (-1) */
		int end;
	} cases[] = {{"[]", 0, 0},	   {" [ ] ", 0, 0},	{"[1, \"]\", [2]]", 3, 0}, {"[1,]", 1, -1},
		     {"[1 2]", 0, -1},	   {"[", 0, -1},	{"{}", 0, -1},		    {"[1]x", 0, -1},
		     {"[[1,2],{\"a\":[]}]", 2, 0}, {"[\"x\" ", 0, -1}};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		size_t at = 0, a, b, n = strlen(cases[i].s);
		int r, k = 0;
		while ((r = jsonl_array_next(cases[i].s, n, &at, &a, &b)) > 0)
			k++;
		CHECK(r == cases[i].end && k == cases[i].n, "%s: %d elements, then %d", cases[i].s, k, r);
	}
}

/* The reference: the offset of the first byte utf8proc does not read as UTF-8, or -1. */
static long utf8proc_bad_at(const char *s, size_t n)
{
	for (size_t k = 0; k < n;) {
		utf8proc_int32_t c;
		utf8proc_ssize_t m = utf8proc_iterate((const utf8proc_uint8_t *)s + k, (utf8proc_ssize_t)(n - k), &c);
		if (m <= 0)
			return (long)k;
		k += (size_t)m;
	}
	return -1;
}

/* The first byte that is not UTF-8, as jsonl_unsafe_at finds it, is the
 * first that utf8proc cannot read, on random texts of ASCII, two- to
 * four-byte characters, long runs of two-byte or three-byte text (the
 * validator's short way) and broken sequences (lone continuations, overlongs, surrogates, past
 * U+10FFFF, cut short), at every alignment. */
static void test_utf8_offsets(void)
{
	unsigned seed = (unsigned)time(NULL);
	srand(seed);
	static const char *good[] = {"a", " ", ",", "\xd0\x9f", "\xd1\x8f", "\xc2\x80", "\xdf\xbf", "\xe4\xb8\xad",
				     "\xe0\xa0\x80", "\xed\x9f\xbf", "\xef\xbf\xbf", "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf"};
	static const char *good3[] = {"a", " ", "\xe4\xb8\xad", "\xe1\x80\x80", "\xec\xbf\xbf", "\xef\xbf\xbf"};
	static const char *bad[] = {"\x80", "\xbf", "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xed\xa0\x80",
				    "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xff", "\xd0", "\xe4\xb8", "\xf0\x9f\x99", "\xd0" "a"};
	char s[600];
	int broken = 0;
	for (int i = 0; i < 20000 && !check_case_failed; i++) {
		size_t n = 0, want_n = (size_t)(rand() % 500);
		int nbad = rand() % 3;
		while (n < want_n) {
			/* all kinds, or ASCII and two-byte, or ASCII and three-byte (each the validator's short way) */
			int kind = rand() % 3;
			const char *u = rand() % 60 < nbad ? bad[rand() % 13]
				      : kind == 0      ? good[rand() % 13]
				      : kind == 1      ? good[rand() % 5]
						       : good3[rand() % 6];
			memcpy(s + n, u, strlen(u));
			n += strlen(u);
		}
		long want = utf8proc_bad_at(s, n);
		broken += want >= 0;
		const char *why = NULL;
		long got = jsonl_unsafe_at(s, n, &why);
		CHECK(got == want, "seed %u case %d (%zu bytes): first bad byte %ld, utf8proc %ld", seed, i, n, got, want);
	}
	CHECK(broken > 5000 && broken < 15000, "seed %u: %d of 20000 texts broken (the cases are not exercised)", seed,
	      broken);
}

/* Every character, good and bad, at every offset of ASCII texts of 31 to
 * 200 bytes: across the 32- and 64-byte blocks of the vector checks, at
 * their ends, before blocks all ASCII and at the text's end. */
static void test_utf8_at_every_offset(void)
{
	static const char *pieces[] = {"\xd0\x9f", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf", "\xed\x9f\xbf",
				       "\x80", "\xc1\xbf", "\xe0\x9f\xbf", "\xed\xa0\x80", "\xf0\x8f\xbf\xbf", "\xf4\x90\x80\x80",
				       "\xf5\x80\x80\x80", "\xff", "\xd0", "\xe4\xb8", "\xf0\x9f\x98", "\xd0\x9f\x9f"};
	char s[208];
	for (size_t n = 31; n <= 200; n++)
		for (size_t k = 0; k < sizeof pieces / sizeof *pieces; k++)
			for (size_t at = 0; at + strlen(pieces[k]) <= n; at++) {
				memset(s, 'a', n);
				memcpy(s + at, pieces[k], strlen(pieces[k]));
				long want = utf8proc_bad_at(s, n);
				const char *why = NULL;
				long got = jsonl_unsafe_at(s, n, &why);
				CHECK(got == want, "piece %zu at %zu of %zu bytes: first bad byte %ld, utf8proc %ld", k, at, n, got, want);
				if (got != want)
					return;
			}
}

/* jsonl_is_json says 1 for what jq prints, and never for what jq refuses or
 * what is not UTF-8 (jq takes bad bytes as U+FFFD, records may not hold
 * them): random values, then the same texts with a byte deleted or replaced. */
static void test_is_json(void)
{
	unsigned seed = (unsigned)time(NULL);
	srand(seed);
	int refused = 0;
	for (int i = 0; i < 3000 && !check_case_failed; i++) {
		jv v = random_value(i % 3);
		jv text = jv_dump_string(v, i % 2 ? JV_PRINT_PRETTY : 0);
		const char *t = jv_string_value(text);
		size_t n = (size_t)jv_string_length_bytes(jv_copy(text));
		CHECK(jsonl_is_json(t, n) == 1, "seed %u value %d: %s", seed, i, t);
		char m[8192];
		if (n > 0 && n < sizeof m) {
			memcpy(m, t, n);
			size_t at = (size_t)rand() % n, mn = n;
			if (rand() % 2)
				memmove(m + at, m + at + 1, n - at - 1), mn--;
			else
				m[at] = (char)(rand() % 256);
			/* jq is asked only about what we take: libjq 1.6 leaks on some texts it refuses */
			if (jsonl_is_json(m, mn)) {
				jv back = jv_parse_sized(m, (int)mn);
				CHECK(jv_is_valid(back) && utf8proc_bad_at(m, mn) < 0,
				      "seed %u value %d: we take what is not JSON in UTF-8: %.*s", seed, i, (int)mn, m);
				jv_free(back);
			} else {
				refused++;
			}
		}
		jv_free(text);
	}
	CHECK(refused > 100, "seed %u: only %d broken texts (the case is not exercised)", seed, refused);
	/* numbers the parser leaves to jq are JSON all the same (Llama 3's
	 * model_max_length); broken ones are not */
	static const struct {
		const char *t;
		int want;
	} fixed[] = {{"{\"model_max_length\": 1000000000000000019884624838656}", 1},
		     {"[-0, -0.0, 1e999, 12345678901234567, 0e0, -1E-5]", 1},
		     {"[01]", 0}, {"[1.]", 0}, {"[.5]", 0}, {"[1e]", 0}, {"[-]", 0}, {"[+1]", 0}, {"[1e+]", 0}};
	for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) {
		jv back = fixed[i].want ? jv_parse_sized(fixed[i].t, (int)strlen(fixed[i].t)) : jv_true();
		CHECK(jsonl_is_json(fixed[i].t, strlen(fixed[i].t)) == fixed[i].want && jv_is_valid(back),
		      "%s: not %d", fixed[i].t, fixed[i].want);
		jv_free(back);
	}
}

/* Whether the trees a and b are the same to the byte: kinds, flags,
 * numbers' bits, strings, keys, in order. */
static int same_jd(const struct jd *a, const struct jd *b)
{
	if (a->kind != b->kind || a->n != b->n || a->is_float != b->is_float || a->exact != b->exact ||
	    a->rounded != b->rounded)
		return 0;
	switch (a->kind) {
	case JD_NUMBER: return !memcmp(&a->u, &b->u, sizeof a->u);
	case JD_STRING: return !memcmp(a->u.s, b->u.s, a->n + 1);
	case JD_ARRAY:
		for (uint32_t i = 0; i < a->n; i++)
			if (!same_jd(&a->u.items[i], &b->u.items[i]))
				return 0;
		return 1;
	case JD_OBJECT:
		for (uint32_t i = 0; i < a->n; i++)
			if (!same_jd(&a->u.members[i].key, &b->u.members[i].key) || !same_jd(&a->u.members[i].val, &b->u.members[i].val))
				return 0;
		return 1;
	default: return 1;
	}
}

/* A value for a member of the objects test_shapes repeats: mostly of its
 * kind (k: '"', 'w', '0'), at times another or a container; where bad,
 * once in 200 not JSON. */
static size_t shape_value(char *t, size_t cap, char k, int bad)
{
	static const char *const strings[] = {"\"<pad>\"", "\"<unused12>\"", "\"съешь\"", "\"a\\\"b\"", "\"\\u00e9\\n\"",
					      "\"\"", "\"\\ud83d\\ude00\"", "\"tab\there\"", "\"\\x\"", "\"open", "1\"", "x\""};
	static const char *const words[] = {"true", "false", "null", "nul", "truex", "True"};
	static const char *const numbers[] = {"0",  "17", "-3", "262144", "1.5", "-0.0", "1e3", "2E-2",
					      "01", "-",  "1.", "12345678901234567890123" /* JSON, but left to jq */};
	int r = rand() % 20, wrong = bad && rand() % 200 == 0;
	if (r == 0)
		return (size_t)snprintf(t, cap, "%s", rand() % 2 ? "{\"x\": [1, 2]}" : "[]");
	if (r == 1)
		k = "\"w0"[rand() % 3];
	if (k == '"')
		return (size_t)snprintf(t, cap, "%s", strings[wrong ? 7 + rand() % 5 : rand() % 7]);
	if (k == 'w')
		return (size_t)snprintf(t, cap, "%s", words[wrong ? 3 + rand() % 3 : rand() % 3]);
	return (size_t)snprintf(t, cap, "%s", numbers[wrong ? 8 + rand() % 4 : rand() % 8]);
}

/* Long lists of objects of one shape, as tokenizer files hold them, are
 * read against the last object (past jsonl_shape_min's size): the same
 * trees, to the byte, and the same refusals as without it, built or only
 * checked, whatever is kept at whichever depth, the list in an array or
 * an object's members, with members that change kind, keys that change
 * or repeat, containers and broken values among them. */
static void test_shapes(void)
{
	unsigned seed = (unsigned)time(NULL);
	srand(seed);
	static const char *const keys[] = {"id", "content", "special", "lstrip", "c\\u006fntent", "content"};
	static const char *const keep[] = {"content", "special", "q"};
	static const char *const gaps[] = {"", " ", "\n    ", "\n      ", "\t"};
	size_t cap = 1 << 20, was = jsonl_shape_min(0);
	char *t = malloc(cap);
	int shaped = 0, refused = 0;
	for (int i = 0; i < 500 && t && !check_case_failed; i++) {
		size_t n = 0;
		int nmem = 1 + rand() % 6, in_object = i % 3 == 0, nested = i % 4 == 0;
		char kinds[8], key[8];
		for (int k = 0; k < nmem; k++)
			kinds[k] = "\"w0"[rand() % 3], key[k] = (char)(rand() % (i % 5 ? 4 : 6));
		const char *gap = gaps[rand() % 5];
		n += (size_t)snprintf(t + n, cap - n, "%s%s", nested ? "{\"v\": 1, \"list\": " : "", in_object ? "{" : "[");
		size_t list = n - 1;
		int count = 1 + rand() % 400;
		for (int e = 0; e < count && n + 4096 < cap; e++) {
			if (rand() % 40 == 0) /* a new shape from here on */
				kinds[rand() % nmem] = "\"w0"[rand() % 3], key[rand() % nmem] = (char)(rand() % 6);
			if (in_object)
				n += (size_t)snprintf(t + n, cap - n, "%s%s\"%d\": ", e ? "," : "", gap, e);
			else
				n += (size_t)snprintf(t + n, cap - n, "%s%s", e ? "," : "", gap);
			n += (size_t)snprintf(t + n, cap - n, "{");
			int m = rand() % 50 ? nmem : rand() % 8; /* at times fewer or more members */
			for (int k = 0; k < m; k++) {
				n += (size_t)snprintf(t + n, cap - n, "%s%s  \"%s\":%s", k ? "," : "", gap, keys[(int)key[k % nmem]],
						      rand() % 60 ? " " : "");
				n += shape_value(t + n, cap - n, kinds[k % nmem], i % 2);
			}
			n += (size_t)snprintf(t + n, cap - n, "%s}", m ? gap : "");
			if (i % 2 && rand() % 3000 == 0) /* a missing comma, a stray byte */
				t[n++] = rand() % 2 ? ' ' : 'x';
		}
		n += (size_t)snprintf(t + n, cap - n, "%s%s", gap, in_object ? "}" : "]");
		if (nested && 3 * (n - list) + 64 < cap - n) {
			/* the same list again where it is kept at depth 1 ("content"),
			 * and one deeper: its objects are read against a shape learned
			 * where they were only checked, or at another depth */
			size_t ln = n - list;
			n += (size_t)snprintf(t + n, cap - n, ", \"content\": ");
			memmove(t + n, t + list, ln), n += ln;
			n += (size_t)snprintf(t + n, cap - n, ", \"q\": [");
			memmove(t + n, t + list, ln), n += ln;
			n += (size_t)snprintf(t + n, cap - n, "]");
		}
		n += (size_t)snprintf(t + n, cap - n, "%s", nested ? "}" : "");
		int depth = 1 + rand() % 4;
		struct jd_arena a1 = {0}, a2 = {0};
		struct jd v1, v2;
		size_t u1 = 0, u2 = 0;
		jsonl_shape_min(0);
		int r1 = jsonl_parse_jd_keep(t, n, keep, 3, depth, &a1, &v1, i % 2 ? &u1 : NULL);
		int c1 = jsonl_is_json(t, n), d1 = jsonl_is_direct(t, n);
		jsonl_shape_min(SIZE_MAX);
		int r2 = jsonl_parse_jd_keep(t, n, keep, 3, depth, &a2, &v2, i % 2 ? &u2 : NULL);
		int c2 = jsonl_is_json(t, n), d2 = jsonl_is_direct(t, n);
		CHECK(r1 == r2 && u1 == u2 && c1 == c2 && d1 == d2 && (r1 < 0 || same_jd(&v1, &v2)),
		      "seed %u text %d (depth %d): with shapes %d %zu %d %d, without %d %zu %d %d", seed, i, depth, r1, u1, c1,
		      d1, r2, u2, c2, d2);
		shaped += r1 == 0, refused += r1 < 0;
		jd_arena_free(&a1), jd_arena_free(&a2);
	}
	CHECK(shaped > 30 && refused > 30, "seed %u: %d texts parsed, %d refused (a case is not exercised)", seed, shaped,
	      refused);
	printf("# %d texts parsed, %d refused\n", shaped, refused);
	jsonl_shape_min(was);
	free(t);
}

/* jsonl_object_next gives each member of random objects (as jq prints them,
 * compact and pretty), keys escaped or not, in order, and stops at broken ones. */
static void test_object_next(void)
{
	unsigned seed = (unsigned)time(NULL);
	srand(seed);
	static const char *const keys[] = {"a", "content", "special", "k\\u00e9", "\\u0063ontent", "q\\\\", ""};
	static const char *const names[] = {"a", "content", "special", "k\xc3\xa9", "content", "q\\", ""};
	for (int i = 0; i < 500 && !check_case_failed; i++) {
		/* the text written by hand (keys may repeat and be escaped), each value jq's */
		char t[8192];
		size_t n = 0;
		int members = rand() % 6, pick[6];
		jv vals[6];
		n += (size_t)snprintf(t + n, sizeof t - n, i % 3 ? "{" : " {\n ");
		for (int k = 0; k < members; k++) {
			pick[k] = rand() % 7;
			vals[k] = random_value(2);
			jv d = jv_dump_string(jv_copy(vals[k]), 0);
			n += (size_t)snprintf(t + n, sizeof t - n, "%s\"%s\"%s%s", k ? (i % 2 ? ", " : ",\n  ") : "",
					      keys[pick[k]], i % 2 ? ": " : ":", jv_string_value(d));
			jv_free(d);
		}
		n += (size_t)snprintf(t + n, sizeof t - n, i % 3 ? "}" : "\n} ");
		size_t at = 0, ka, kb, a, b;
		int r, k = 0;
		while ((r = jsonl_object_next(t, n, &at, &ka, &kb, &a, &b)) > 0 && !check_case_failed) {
			jv got = jsonl_parse_value(t + a, b - a);
			char want_key[32];
			snprintf(want_key, sizeof want_key, "\"%s\"", k < members ? keys[pick[k]] : "?");
			int named = k < members;
			for (int w = 0; named && w < 7; w++) /* the key is exactly the names its text stands for */
				if (jsonl_key_is(t + ka, kb - ka, names[w]) != !strcmp(names[w], names[pick[k]]))
					named = 0;
			CHECK(k < members && kb - ka == strlen(want_key) && !memcmp(t + ka, want_key, kb - ka) && named &&
				      jv_equal(got, jv_copy(vals[k])),
			      "seed %u object %d member %d: '%.*s': '%.*s'", seed, i, k, (int)(kb - ka), t + ka,
			      (int)(b - a), t + a);
			k++;
		}
		CHECK(r == 0 && k == members, "seed %u object %d: %d of %d members, then %d: %s", seed, i, k, members,
		      r, t);
		for (int m = 0; m < members; m++)
			jv_free(vals[m]);
	}
	static const struct {
		const char *s;
		int n; /* members before the end (0) or the error (-1) */
		int end;
	} cases[] = {{"{}", 0, 0},	      {" { } ", 0, 0},	      {"{\"a\": \"}\", \"b\": {}}", 2, 0},
		     {"{\"a\": 1,}", 1, -1}, {"{\"a\" 1}", 0, -1},    {"{\"a\": 1 \"b\": 2}", 0, -1},
		     {"{", 0, -1},	      {"[]", 0, -1},	      {"{\"a\": 1}x", 0, -1},
		     {"{1: 2}", 0, -1},       {"{\"a\": }", 0, -1}, {"{\"a\": 1, \"a\": 2}", 2, 0}};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		size_t at = 0, ka, kb, a, b, n = strlen(cases[i].s);
		int r, k = 0;
		while ((r = jsonl_object_next(cases[i].s, n, &at, &ka, &kb, &a, &b)) > 0)
			k++;
		CHECK(r == cases[i].end && k == cases[i].n, "%s: %d members, then %d", cases[i].s, k, r);
	}
}

/* v with the members of its objects at depth depth (1: v itself) that keep
 * does not name dropped, built with jq's own values: the reference of
 * jsonl_parse_jd_keep. at: v's depth. */
static jv keep_only(jv v, int depth, int at, const char *const *keep, size_t nkeep)
{
	if (jv_get_kind(v) == JV_KIND_ARRAY) {
		jv out = jv_array();
		jv_array_foreach(v, i, e) {
			out = jv_array_append(out, keep_only(e, depth, at + 1, keep, nkeep));
			(void)i;
		}
		jv_free(v);
		return out;
	}
	if (jv_get_kind(v) != JV_KIND_OBJECT)
		return v;
	jv out = jv_object();
	jv_object_foreach(v, k, e) {
		int kept = at != depth;
		for (size_t i = 0; i < nkeep && !kept; i++)
			kept = !strcmp(jv_string_value(k), keep[i]);
		if (kept)
			out = jv_object_set(out, k, keep_only(e, depth, at + 1, keep, nkeep));
		else
			jv_free(k), jv_free(e);
	}
	jv_free(v);
	return out;
}

/* jsonl_parse_jd_keep builds what jq parses, less the members not kept at
 * the depth asked: random objects (keys escaped or not, repeated), alone or
 * in arrays, compact and pretty, at depths 1 to 3; it takes numbers the
 * direct parser leaves to jq only where they are not kept; and it never
 * takes what jsonl_is_json refuses (the same texts, a byte deleted or
 * replaced). */
static void test_parse_jd_keep(void)
{
	unsigned seed = (unsigned)time(NULL);
	srand(seed);
	static const char *const keys[] = {"a", "content", "special", "k\\u00e9", "\\u0063ontent", "q\\\\", "", "contents"};
	static const char *const keep[] = {"content", "special", "q\\"};
	int refused = 0, dropped = 0;
	for (int i = 0; i < 2000 && !check_case_failed; i++) {
		char t[16384];
		size_t n = 0;
		int objects = i % 4 ? 1 + rand() % 4 : 1, in_array = i % 4 != 0;
		n += (size_t)snprintf(t + n, sizeof t - n, in_array ? "[" : "");
		for (int o = 0; o < objects; o++) {
			n += (size_t)snprintf(t + n, sizeof t - n, "%s%s", o ? "," : "", i % 3 ? "{" : " {\n ");
			int members = rand() % 6;
			for (int k = 0; k < members; k++) {
				jv d = jv_dump_string(random_value(2), i % 5 ? 0 : JV_PRINT_PRETTY);
				n += (size_t)snprintf(t + n, sizeof t - n, "%s\"%s\"%s%s", k ? (i % 2 ? ", " : ",\n  ") : "",
						      keys[rand() % 8], i % 2 ? ": " : ":", jv_string_value(d));
				jv_free(d);
			}
			n += (size_t)snprintf(t + n, sizeof t - n, i % 3 ? "}" : "\n} ");
		}
		n += (size_t)snprintf(t + n, sizeof t - n, in_array ? "]" : "");
		CHECK(n < sizeof t - 1, "seed %u text %d: the buffer is too small", seed, i);
		int depth = 1 + rand() % 3;
		jv want = keep_only(jv_parse_sized(t, (int)n), depth, 1, keep, 3);
		struct jd_arena a = {0};
		struct jd got;
		int rc = jsonl_parse_jd_keep(t, n, keep, 3, depth, &a, &got, NULL);
		jv gv = rc == 0 ? jsonl_jv_of(&got) : jv_invalid();
		{ /* the same text as a prefix, more text after it: the same value, its length */
			char pt[16400];
			size_t lead = (size_t)(i % 3), used = 0;
			memset(pt, ' ', lead);
			memcpy(pt + lead, t, n);
			memcpy(pt + lead + n, "], {\"x\": 1}", 12);
			struct jd_arena pa = {0};
			struct jd pg;
			int prc = jsonl_parse_jd_keep(pt, lead + n + 12, keep, 3, depth, &pa, &pg, &used);
			jv pv = prc == 0 ? jsonl_jv_of(&pg) : jv_invalid();
			size_t vn = n; /* the value's end: before the white space after it */
			while (vn > 0 && strchr(" \n\t\r", t[vn - 1]))
				vn--;
			CHECK(prc == 0 && used == lead + vn && jv_equal(jv_copy(pv), jv_copy(want)),
			      "seed %u text %d: as a prefix %d, %zu bytes of %zu", seed, i, prc, used, lead + vn);
			jv_free(pv);
			jd_arena_free(&pa);
		}
		jv full = jv_parse_sized(t, (int)n);
		dropped += rc == 0 && !jv_equal(jv_copy(gv), jv_copy(full));
		jv_free(full);
		CHECK(rc == 0 && jv_equal(jv_copy(gv), jv_copy(want)), "seed %u text %d depth %d: %d, not as jq: %s", seed,
		      i, depth, rc, t);
		jv_free(gv), jv_free(want);
		char m[16384];
		size_t at = (size_t)rand() % n, mn = n;
		memcpy(m, t, n);
		if (rand() % 2)
			memmove(m + at, m + at + 1, n - at - 1), mn--;
		else
			m[at] = (char)(rand() % 256);
		jd_arena_reset(&a);
		int taken = jsonl_parse_jd_keep(m, mn, keep, 3, depth, &a, &got, NULL) == 0;
		refused += !taken;
		CHECK(!taken || jsonl_is_json(m, mn), "seed %u text %d: taken, but not JSON: %.*s", seed, i, (int)mn, m);
		jd_arena_free(&a);
	}
	CHECK(refused > 100 && dropped > 100, "seed %u: %d broken texts refused, %d texts with members dropped (the "
	      "cases are not exercised)", seed, refused, dropped);
	static const struct {
		const char *t;
		int depth, rc;
		const char *want;
	} fixed[] = {{"{\"id\": 1000000000000000019884624838656, \"content\": \"x\"}", 1, 0, "{\"content\": \"x\"}"},
		     {"{\"content\": 1000000000000000019884624838656}", 1, -1, NULL},
		     {"[{\"special\": true, \"id\": [1, {\"content\": 2}]}, 3]", 2, 0, "[{\"special\": true}, 3]"},
		     {"{\"a\": {\"content\": 1, \"b\": 2}, \"content\": {\"b\": 3}}", 2, 0, "{\"a\": {\"content\": 1}, \"content\": {}}"},
		     {"{\"content\": 1, \"content\": 2}", 1, 0, "{\"content\": 2}"},
		     {"{\"a\": 1,}", 1, -1, NULL}, {"{\"a\": nul}", 1, -1, NULL}, {"{\"a\": \"\\u0000\"}", 1, -1, NULL}};
	for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) {
		struct jd_arena a = {0};
		struct jd got;
		int rc = jsonl_parse_jd_keep(fixed[i].t, strlen(fixed[i].t), keep, 3, fixed[i].depth, &a, &got, NULL);
		jv gv = rc == 0 ? jsonl_jv_of(&got) : jv_null();
		jv want = fixed[i].want ? jv_parse(fixed[i].want) : jv_null();
		CHECK(rc == fixed[i].rc && jv_equal(gv, want), "%s at depth %d: %d", fixed[i].t, fixed[i].depth, rc);
		jd_arena_free(&a);
	}
}

/* A long value (>= 256 bytes of JSON) of kind k: 0 array, 1 object, 2 string. */
static jv long_value(int k)
{
	for (;;) {
		jv v = k == 0 ? jv_array() : k == 1 ? jv_object() : jv_string("");
		for (int i = 0; i < 40; i++) {
			if (k == 0)
				v = jv_array_append(v, random_value(1));
			else if (k == 1)
				v = jv_object_set(v, jv_string_fmt("k%d", rand() % 60), random_value(1));
			else
				v = jv_string_concat(v, rand() % 8 ? jv_string("tool \"x\" ") : jv_string("\xd0\x9f\n"));
		}
		jv d = jv_dump_string(jv_copy(v), 0);
		int n = jv_string_length_bytes(d);
		if (n >= 300)
			return v;
		jv_free(v);
	}
}

/* The memo gives the values a plain parse gives, shares a repeated long
 * member's value (the same jd_shared block) and never a value whose text
 * differs, even by a last byte or where one text begins another. */
static void test_parse_memo(void)
{
	unsigned seed = (unsigned)time(NULL);
	srand(seed);
	jv pool[6];
	for (int i = 0; i < 6; i++)
		pool[i] = long_value(i % 3);
	struct jsonl_memo *memo = jsonl_memo_new();
	struct jd_arena ar = {0};
	/* the last long tool list: its block is held, so that no later one can take its address */
	struct jd_shared *last_long = NULL;
	jv last_text = jv_invalid();
	int repeats = 0, kept = 0;
	static const char *const keys[] = {"tools", "messages", "meta", "id"};
	for (int rec = 0; rec < 400 && !check_case_failed; rec++) {
		/* a record of some of the keys, values from the pool, sometimes changed */
		jv o = jv_object();
		int pick[4];
		for (int k = 0; k < 4; k++) {
			pick[k] = rand() % 7; /* 6: a fresh value */
			if (rand() % 3 == 0)
				continue;
			jv v = pick[k] < 6 ? jv_copy(pool[pick[k]]) : random_value(0);
			if (pick[k] < 6 && rand() % 5 == 0) { /* one byte more at the end */
				pick[k] = 6;
				if (jv_get_kind(v) == JV_KIND_ARRAY)
					v = jv_array_append(v, jv_number(1));
				else if (jv_get_kind(v) == JV_KIND_OBJECT)
					v = jv_object_set(v, jv_string("zz"), jv_null());
				else
					v = jv_string_concat(v, jv_string("!"));
			}
			o = jv_object_set(o, jv_string(keys[k]), v);
		}
		jv text = jv_dump_string(jv_copy(o), 0);
		const char *line = jv_string_value(text);
		size_t len = (size_t)jv_string_length_bytes(jv_copy(text));
		jv plain;
		struct jd got;
		struct err e = {0};
		int a = jsonl_parse_record("t", rec + 1, line, len, &plain, &e);
		int b = jsonl_parse_record_jd("t", rec + 1, line, len, memo, &ar, &got, &e);
		CHECK(a == 1 && b == 1, "seed %u record %d: %s", seed, rec, e.msg);
		if (a == 1 && b == 1) {
			CHECK(jv_equal(jv_copy(plain), jsonl_jv_of(&got)), "seed %u record %d: the memo changed the value",
			      seed, rec);
			/* shared (the same block) exactly when its text is that of the last long one */
			const struct jd *t = jd_get(&got, "tools");
			jv tt = t ? jv_dump_string(jsonl_jv_of(t), 0) : jv_string("");
			int is_long = t && (t->kind == JD_ARRAY || t->kind == JD_OBJECT || t->kind == JD_STRING) &&
				      jv_string_length_bytes(jv_copy(tt)) >= 256;
			if (is_long) {
				/* shared: kept now or found; not kept: not the text last kept */
				int same_text = last_long && jv_equal(jv_copy(tt), jv_copy(last_text));
				if (!jd_shared_of(t)) {
					CHECK(!same_text, "seed %u record %d: the text last kept not shared", seed, rec);
					jv_free(tt);
				} else {
					int ident = jd_shared_of(t) == last_long;
					CHECK(ident == same_text, "seed %u record %d: %s", seed, rec,
					      ident ? "a different text shared" : "the same text not shared");
					repeats += same_text;
					kept++;
					jd_shared_unref(last_long);
					jv_free(last_text);
					last_long = jd_shared_ref(jd_shared_of(t));
					last_text = tt;
				}
			} else {
				jv_free(tt);
			}
		}
		if (a == 1)
			jv_free(plain);
		jv_free(text), jv_free(o);
		jd_arena_reset(&ar);
	}
	CHECK(repeats > 0 && kept > repeats, "seed %u: no tool list repeated, or none kept anew (%d, %d)", seed, repeats,
	      kept);
	/* a fresh memo: values that come again keep being shared */
	jsonl_memo_free(memo);
	memo = jsonl_memo_new();
	/* the tool list of ds-gen's lines, three times, then with one byte changed */
	char tools[1024], line[1200];
	int n = snprintf(tools, sizeof tools, "[");
	for (int i = 0; i < 8; i++)
		n += snprintf(tools + n, sizeof tools - (size_t)n, "%s{\"type\": \"function\", \"name\": \"f%d\", \"n\": %d}",
			      i ? ", " : "", i, i);
	snprintf(tools + n, sizeof tools - (size_t)n, "]");
	struct jd_shared *first = NULL;
	unsigned long long hits0 = jsonl_memo_hits(memo);
	for (int i = 0; i < 4; i++) {
		if (i == 3)
			tools[strlen(tools) - 3] = '9'; /* "n": 7 -> 9 */
		snprintf(line, sizeof line, "{\"id\": %d, \"tools\": %s}", i, tools);
		struct jd v;
		struct err e = {0};
		CHECK(jsonl_parse_record_jd("t", 1, line, strlen(line), memo, &ar, &v, &e) == 1, "%s", e.msg);
		struct jd_shared *t = jd_shared_of(jd_get(&v, "tools"));
		if (i == 0)
			first = jd_shared_ref(t);
		else
			CHECK((first == t) == (i < 3), "line %d: shared %d", i, i < 3);
		jd_arena_reset(&ar);
	}
	jd_shared_unref(first);
	CHECK(jsonl_memo_hits(memo) == hits0 + 2, "hits %llu", jsonl_memo_hits(memo) - hits0);
	/* values that never come again are seldom kept; one that then repeats is kept and shared within 64 */
	int kept_new = 0, shared_after = -1;
	for (int i = 0; i < 300 && shared_after < 0; i++) {
		char msgs[400];
		snprintf(msgs, sizeof msgs, "[{\"role\": \"user\", \"content\": \"%0250d\"}]", i < 200 ? i : 200);
		snprintf(line, sizeof line, "{\"id\": %d, \"messages\": %s}", i, msgs);
		struct jd v;
		struct err e = {0};
		unsigned long long h = jsonl_memo_hits(memo);
		CHECK(jsonl_parse_record_jd("t", 1, line, strlen(line), memo, &ar, &v, &e) == 1, "%s", e.msg);
		if (i < 200)
			kept_new += jd_shared_of(jd_get(&v, "messages")) != NULL;
		else if (jsonl_memo_hits(memo) > h)
			shared_after = i - 200;
		jd_arena_reset(&ar);
	}
	CHECK(kept_new >= 1 && kept_new <= 2 + 200 / 64, "%d of 200 values that never came again kept", kept_new);
	CHECK(shared_after >= 0 && shared_after <= 65, "a repeated value shared after %d records", shared_after);
	jd_shared_unref(last_long);
	jv_free(last_text);
	jd_arena_free(&ar);
	jsonl_memo_free(memo);
	for (int i = 0; i < 6; i++)
		jv_free(pool[i]);
}

/* The text after a key's first value is scanned for a repeat of the key in
 * parts at once (of 2 MB or more, one per CPU; 5 MB: two on a machine of two
 * CPUs or more), or cut as jsonl_recur_parts says. Around every border
 * between parts, at every offset: a repeat written plainly or with an
 * escape is found and its value given; an escape whose backslashes begin
 * in the part before is one, and a backslash escaped there is none; a text
 * without a repeat gives the first value. */
static void test_locate_parts(void)
{
	static const struct {
		size_t n;
		int parts, k, border[3]; /* parts 0: as by default (k of them), and the borders tried */
	} cut[] = {{5 << 20, 0, 2, {1}}, {40 << 10, 3, 3, {1, 2}}, {40 << 10, 16, 16, {15}}};
	static const struct {
		const char *text; /* at the border, in the pad string, or (a key) as a member after it */
		int key, may;
	} form[] = {
		{"\"added_tokens\"", 1, 1},
		{"\"added\\u005ftokens\"", 1, 1},
		{"x\\u005f", 0, 1},       /* \u005f: an escape, of '_' */
		{"\\\\u005f", 0, 0},     /* \\ then u005f */
		{"\\\\\\u005f", 0, 1}, /* \\ then \u005f */
		{"", 0, 0},
	};
	const char *head = "{\"added_tokens\": [1], \"pad\": \"";
	size_t hn = strlen(head), S = hn - strlen(", \"pad\": \""); /* the scan for a repeat starts at the ',' */
	char *t = malloc(5 << 20);
	for (size_t c = 0; c < sizeof cut / sizeof *cut && !check_case_failed; c++) {
		int was = jsonl_recur_parts(cut[c].parts);
		size_t n = cut[c].n;
		for (int j = 0; j < 3 && cut[c].border[j] && !check_case_failed; j++)
			for (size_t f = 0; f < sizeof form / sizeof *form && !check_case_failed; f++)
				for (int shift = -16; shift <= 4 && !check_case_failed; shift++) {
					int i = cut[c].border[j];
					size_t border = S + (n - S) * (size_t)i / (size_t)cut[c].k;
					size_t at = (size_t)((long)border + shift), len = strlen(form[f].text);
					memcpy(t, head, hn);
					memset(t + hn, 'a', n - hn);
					size_t k = at;
					if (form[f].key) { /* the pad string ends before it, then ", " */
						memcpy(t + at - 3, "\", ", 3);
						memcpy(t + k, form[f].text, len);
						k += len;
						memcpy(t + k, ": [2]", 5), k += 5;
					} else { /* the end of the pad string */
						memcpy(t + k, form[f].text, len);
						k += len;
						t[k++] = '"';
					}
					memset(t + k, ' ', n - 1 - k); /* the rest white space, then the end */
					t[n - 1] = '}';
					int may = jsonl_key_may_recur(t + S, n - S, "added_tokens");
					CHECK(may == form[f].may, "%zu bytes in %d parts, '%s' at border %d %+d: may recur %d",
					      n, cut[c].parts, form[f].text, i, shift, may);
					if (form[f].may && !form[f].key) /* jsonl_locate parses it whole: not the point here */
						continue;
					size_t a, b;
					int rc = jsonl_locate(t, n, "added_tokens", &a, &b);
					const char *want = form[f].key ? "[2]" : "[1]";
					CHECK(rc == 1 && b - a == 3 && !memcmp(t + a, want, 3),
					      "%zu bytes in %d parts, '%s' at border %d %+d: %d '%.*s'", n, cut[c].parts,
					      form[f].text, i, shift, rc, rc == 1 ? (int)(b - a) : 0, rc == 1 ? t + a : "");
				}
		jsonl_recur_parts(was);
	}
	free(t);
}

/* Integers as printf writes them: the span lists' numbers, one and in pairs. */
static void test_put_integers(void)
{
	check_seed_init();
	static const long edge[] = {0, 9, 10, 99, 100, 101, 999, 1000, 65535, 99999999, 100000000, -1, -9, -10, -100,
				    2147483647L, -2147483648L, LONG_MAX, LONG_MIN, LONG_MAX - 1, LONG_MIN + 1};
	long v[64];
	for (int c = 0; c < 3000 && !check_case_failed; c++) {
		size_t n = 1 + (size_t)rng_below(check_rng(), 64);
		for (size_t i = 0; i < n; i++) {
			uint64_t r = rng_next(check_rng());
			int digits = 1 + (int)rng_below(check_rng(), 19); /* short and long numbers alike */
			long x = c < 2 ? edge[(size_t)(c * 64 + (int)i) % (sizeof edge / sizeof *edge)]
				       : (long)(r % (uint64_t)(digits >= 19 ? LONG_MAX : (long)pow(10, digits)));
			v[i] = rng_below(check_rng(), 4) || x == LONG_MIN ? x : -x; /* -LONG_MIN is no long */
		}
		struct jsonl_buf b = {0};
		char want[64 * 21 + 8];
		int k = 0;
		jsonl_put_long(&b, v[0]);
		k += snprintf(want + k, sizeof want - (size_t)k, "%ld", v[0]);
		CHECK(b.n == (size_t)k && !memcmp(b.p, want, b.n), "case %d: %ld written as '%.*s'", c, v[0], (int)b.n, b.p);
		b.n = 0, k = 0;
		size_t pairs = n / 2;
		jsonl_put_pairs(&b, v, pairs);
		k += snprintf(want + k, sizeof want - (size_t)k, "[");
		for (size_t i = 0; i < pairs; i++)
			k += snprintf(want + k, sizeof want - (size_t)k, "%s[%ld,%ld]", i ? "," : "", v[2 * i], v[2 * i + 1]);
		k += snprintf(want + k, sizeof want - (size_t)k, "]");
		CHECK(b.n == (size_t)k && !memcmp(b.p, want, b.n), "case %d: '%s' written as '%.*s'", c, want, (int)b.n, b.p);
		free(b.p);
	}
}

/* jsonl_locate finds a path's value by scanning; jsonl_err_line puts its line in a message. */
static void test_locate(void)
{
	const char *t = "{\n \"a\": {\"b\": [10, {\"c\": \"x\\\"y\"}, [1]]},\n \"a\": {\"b\": [20, {\"c\": 7}]},\n"
			" \"k\\u0065y\": 3, \"odd key\": [true]\n}\n";
	size_t n = strlen(t), a, b;
	struct {
		const char *path;
		int rc;
		const char *want;
	} cases[] = {
		{"", 1, NULL},
		{"a.b[1].c", 1, "7"},           /* a repeated key: its last value, as jq keeps */
		{"a.b[0]", 1, "20"},
		{"key", 1, "3"},                /* an escaped key */
		{"\"odd key\"[0]", 1, "true"},
		{"a.b[2]", 0, NULL},
		{"a.z", 0, NULL},
		{"a[0]", 0, NULL},              /* an index into an object names nothing */
		{"key.x", 0, NULL},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		int rc = jsonl_locate(t, n, cases[i].path, &a, &b);
		CHECK(rc == cases[i].rc, "%s: %d", cases[i].path, rc);
		if (rc == 1 && cases[i].want)
			CHECK(b - a == strlen(cases[i].want) && !memcmp(t + a, cases[i].want, b - a), "%s: '%.*s'", cases[i].path,
			      (int)(b - a), t + a);
	}
	CHECK(jsonl_locate("{\"a\": [1, }", 11, "a", &a, &b) == -1, "broken text");
	CHECK(jsonl_locate("{\"a\": 1} x", 10, "a", &a, &b) == -1, "text after the value");
	/* The scan stops at a key's value when the rest cannot name the key
	 * again; a repeat written plainly, escaped, or only possibly (the key's
	 * text inside a string) makes it go on to the last. */
	static const struct {
		const char *text, *path;
		int rc;
		const char *want;
	} early[] = {
		{"{\"ab\": 1, \"x\": 2, \"\\u0061b\": 3}", "ab", 1, "3"},
		{"{\"ab\": 1, \"x\": 2, \"a\\u0062\": [3]}", "ab", 1, "[3]"},
		{"{\"ab\": 1, \"x\": \"ab\"}", "ab", 1, "1"},
		{"{\"ab\": 1, \"x\": {\"ab\": 2}}", "x.ab", 1, "2"},
		{"{\"ab\": 1, \"x\": \"\\u0078\\\\u0061\"}", "ab", 1, "1"},
		{"{\"ab\": 1, \"x\": [1, }", "ab", 1, "1"}, /* broken past the value found: not seen */
		{"{\"ab\": 1, \"x\": [1,", "ab", -1, NULL},  /* but cut short is */
		{"{\"ab\": 1 \"x\": 2}", "ab", -1, NULL},     /* as is a missing comma after it */
		{"[5, [6, 7], 8", "[1][0]", -1, NULL},
		{"[5, [6, 7], 8]", "[1][0]", 1, "6"},
		/* a key with a byte rarer than letters: searched for by that byte */
		{"{\"a_b\": 1, \"x\": 2, \"a_b\": 3}", "a_b", 1, "3"},
		{"{\"a_b\": 1,\"a_b\":[2]}", "a_b", 1, "[2]"},
		{"{\"a_b\": 1, \"x\": \"_ a_b _\"}", "a_b", 1, "1"},
		{"{\"a_b\": 1, \"_\": \"a_c\", \"y\": \"_b\"}", "a_b", 1, "1"},
	};
	for (size_t i = 0; i < sizeof early / sizeof *early; i++) {
		int rc = jsonl_locate(early[i].text, strlen(early[i].text), early[i].path, &a, &b);
		CHECK(rc == early[i].rc && (rc != 1 || (b - a == strlen(early[i].want) && !memcmp(early[i].text + a, early[i].want, b - a))),
		      "'%s' %s: %d '%.*s'", early[i].text, early[i].path, rc, rc == 1 ? (int)(b - a) : 0, early[i].text + a);
	}
	/* What may name the key again: an escape of one of its characters, not
	 * an escaped backslash before a 'u', nor the key's rare byte elsewhere. */
	static const struct {
		const char *rest;
		int may;
	} again[] = {
		{", \"x\": \"\\u0061\"}", 1},         /* \u0061: 'a' */
		{", \"x\": \"\\\\u0061\"}", 0},       /* \\ then u0061 */
		{", \"x\": \"\\\\\\u0061\"}", 1},     /* \\ then \u0061 */
		{", \"x\": \"\\u0078 a_c _b\"}", 0}, /* \u0078: 'x'; '_' between other bytes */
		{", \"x\": \"a_b\"}", 1},              /* the key's text, in a string: maybe */
		{"\\u005f", 1},                          /* an escape at the start */
		{", \"x\": \"\\u00", 1},               /* cut short */
	};
	for (size_t i = 0; i < 2 * sizeof again / sizeof *again; i++) {
		const char *rest = again[i / 2].rest;
		const char *key = "a_b"; /* found by its '_' */
		char text[256];
		int pad = i % 2 && *rest == ',' ? 100 : 0; /* white space first: the vector paths */
		snprintf(text, sizeof text, "%*s%s", pad, "", rest);
		CHECK(jsonl_key_may_recur(text, strlen(text), key) == again[i / 2].may, "%s in '%s': not %d", key, text,
		      again[i / 2].may);
	}
	/* Random objects with repeated keys, plain and escaped: the value found is jq's. */
	unsigned seed = (unsigned)time(NULL);
	srand(seed);
	static const char *keys[] = {"ab", "a\\u0062", "\\u0061b", "ba", "k", "\\u006b", "a_b", "a\\u005fb"};
	static const char *names[] = {"ab", "ab", "ab", "ba", "k", "k", "a_b", "a_b"};
	char doc[4096];
	int settled = 0; /* found first, with no repeat possible */
	for (int c = 0; c < 2000 && !check_case_failed; c++) {
		size_t m = 0;
		int members = 1 + rand() % 6;
		m += (size_t)snprintf(doc + m, sizeof doc - m, "{");
		for (int k = 0; k < members; k++) {
			int w = rand() % 8;
			m += (size_t)snprintf(doc + m, sizeof doc - m, "%s\"%s\": ", k ? ", " : "", keys[w]);
			switch (rand() % 3) {
			case 0: m += (size_t)snprintf(doc + m, sizeof doc - m, "%d", k); break;
			case 1: m += (size_t)snprintf(doc + m, sizeof doc - m, "[%d, \"%s\"]", k, keys[rand() % 8]); break;
			default: m += (size_t)snprintf(doc + m, sizeof doc - m, "{\"%s\": %d}", keys[rand() % 8], k);
			}
		}
		m += (size_t)snprintf(doc + m, sizeof doc - m, "}\n");
		const char *name = names[rand() % 8];
		jv whole = jv_parse_sized(doc, (int)m);
		jv want = jv_object_get(jv_copy(whole), jv_string(name));
		int rc = jsonl_locate(doc, m, name, &a, &b);
		jv got = rc == 1 ? jv_parse_sized(doc + a, (int)(b - a)) : jv_invalid();
		CHECK(jv_is_valid(whole) && (jv_is_valid(want) ? rc == 1 && jv_equal(jv_copy(got), jv_copy(want)) : rc == 0),
		      "seed %u case %d: %s: rc %d in %s", seed, c, name, rc, doc);
		/* In two steps: where the first member's value starts, that value
		 * parsed as a prefix of the rest (ending where jsonl_locate's ends when
		 * it is the one found), which is jq's unless a repeat may follow; a
		 * repeat is never missed. */
		size_t fa = 0, used = 0;
		int frc = jsonl_locate_start(doc, m, name, &fa);
		struct jd_arena ar = {0};
		struct jd pv;
		int prc = frc == 1 ? jsonl_parse_jd_keep(doc + fa, m - fa, NULL, 0, 0, &ar, &pv, &used) : -1;
		size_t fb = fa + used;
		int may = frc == 1 && prc == 0 && jsonl_key_may_recur(doc + fb, m - fb, name);
		jv first = prc == 0 ? jsonl_jv_of(&pv) : jv_invalid();
		CHECK(frc == rc && (frc != 1 || (prc == 0 && (may || (fa == a && fb == b && jv_equal(jv_copy(first), jv_copy(want)))))),
		      "seed %u case %d: %s: start rc %d at %zu, prefix %d of %zu bytes, may recur %d in %s", seed, c, name, frc,
		      fa, prc, used, may, doc);
		settled += frc == 1 && !may;
		jd_arena_free(&ar);
		jv_free(first), jv_free(got), jv_free(want), jv_free(whole);
	}
	CHECK(settled > 0, "seed %u: no key found first without a possible repeat", seed);
	CHECK(jsonl_line_at(t, 0) == 1 && jsonl_line_at(t, 2) == 2 && jsonl_line_at(t, n) == 6, "lines");
	struct err e = {0};
	err_set(&e, "f.json: a.b[1].c: must be a string");
	jsonl_err_line(&e, "f.json", t, n);
	CHECK(!strcmp(e.msg, "f.json:3: a.b[1].c: must be a string"), "%s", e.msg);
	err_set(&e, "f.json: a.b[9].c: missing");
	jsonl_err_line(&e, "f.json", t, n); /* the deepest part found: a.b */
	CHECK(!strcmp(e.msg, "f.json:3: a.b[9].c: missing"), "%s", e.msg);
	err_set(&e, "f.json: nothing: here");
	jsonl_err_line(&e, "f.json", t, n);
	CHECK(!strcmp(e.msg, "f.json: nothing: here"), "%s", e.msg);
	err_set(&e, "f.json: the spec must be an object");
	jsonl_err_line(&e, "f.json", t, n);
	CHECK(!strcmp(e.msg, "f.json: the spec must be an object"), "%s", e.msg);
}

int main(void)
{
	if (!mkdtemp(dir)) {
		printf("not ok - mkdtemp\n");
		return 1;
	}
	RUN(test_records_and_line_numbers);
	RUN(test_values);
	RUN(test_bad_lines);
	RUN(test_number_literals);
	RUN(test_exact_integers_through_jv);
	RUN(test_skip_bad);
	RUN(test_long_line);
	RUN(test_held_blocks);
	RUN(test_blocks_given_back);
	RUN(test_mapped_shrinks);
	RUN(test_stdin_mapped);
	RUN(test_lines_in_ranges);
	RUN(test_mapped_done);
	RUN(test_open_errors);
	RUN(test_stdin_name_and_errf);
	RUN(test_empty_inputs);
	RUN(test_write);
	RUN(test_write_matches_jq);
	RUN(test_write_numbers_match_jq);
	RUN(test_put_string_matches_jq);
	RUN(test_parse_memo);
	RUN(test_put_integers);
	RUN(test_locate);
	RUN(test_locate_parts);
	RUN(test_array_next);
	RUN(test_object_next);
	RUN(test_parse_jd_keep);
	RUN(test_is_json);
	RUN(test_shapes);
	/* the string scans and the UTF-8 check on each vector path this CPU has */
	for (int level = jsonl_simd_limit(2); level >= 0; level--) {
		static const char *const names[] = {"SSE2", "AVX2", "AVX-512"};
		char name[5][96];
		jsonl_simd_limit(level);
		snprintf(name[0], sizeof name[0], "test_utf8_offsets (%s)", names[level]);
		snprintf(name[1], sizeof name[1], "test_utf8_at_every_offset (%s)", names[level]);
		snprintf(name[2], sizeof name[2], "test_parsed_strings_are_jqs (%s)", names[level]);
		snprintf(name[3], sizeof name[3], "test_string_scan_at_every_offset (%s)", names[level]);
		RUN_AS(test_utf8_offsets, name[0]);
		RUN_AS(test_utf8_at_every_offset, name[1]);
		RUN_AS(test_parsed_strings_are_jqs, name[2]);
		RUN_AS(test_string_scan_at_every_offset, name[3]);
		snprintf(name[4], sizeof name[4], "test_string_scan_at_page_end (%s)", names[level]);
		RUN_AS(test_string_scan_at_page_end, name[4]);
	}
	jsonl_simd_limit(2);
	if (access("/dev/full", W_OK) == 0)
		RUN(test_write_error);
	else
		SKIP(test_write_error, "no /dev/full");
	char cmd[4200];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		printf("    could not remove %s\n", dir);
	return check_done();
}
