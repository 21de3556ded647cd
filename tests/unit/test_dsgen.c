/* lib/dsgen (and http_retry_after): normalized text, JSON in replies, the
 * output scan of a resumed run, spec checks, balancing and ids, and a reply
 * turned into records. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "dsgen.h"
#include "http.h"

static char tmpdir[] = "/tmp/test_dsgen.XXXXXX";

static char *write_file(const char *name, const char *text)
{
	static char path[512];
	snprintf(path, sizeof path, "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "wb");
	fputs(text, f);
	fclose(f);
	return path;
}

static void test_normalize(void)
{
	struct {
		const char *a, *b;
		int same;
	} cases[] = {
		{"Is my access active?", "is my ACCESS   active", 1},
		{"Мой доступ активен?", "мой доступ — активен!", 1},
		{"Ещё раз", "еще раз", 1},   /* ё and е: the same word, as users type it */
		{"Café", "cafe", 1},
		{"block card 1234", "block card 1235", 0},
		{"Привет", "Прив", 0},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		char *a = dsgen_normalize(cases[i].a), *b = dsgen_normalize(cases[i].b);
		CHECK(a && b && (strcmp(a, b) == 0) == cases[i].same, "\"%s\" -> \"%s\", \"%s\" -> \"%s\": expected %s",
		      cases[i].a, a ? a : "NULL", cases[i].b, b ? b : "NULL", cases[i].same ? "equal" : "different");
		free(a), free(b);
	}
	char *n = dsgen_normalize("  Hello,   World!! ");
	CHECK(n && !strcmp(n, "hello world"), "got \"%s\"", n ? n : "NULL");
	free(n);
}

static void test_extract_json(void)
{
	const char *ok_texts[] = {
		"{\"items\":[{\"text\":\"a\"}]}",
		"Sure! Here:\n```json\n{\"items\":[{\"text\":\"a } ] {\"}]}\n```\nBye.",
		"[{\"text\":\"a\"}] trailing words",
		"noise { not json } then {\"items\":[]}",
	};
	for (size_t i = 0; i < sizeof ok_texts / sizeof *ok_texts; i++) {
		jv v;
		int rc = dsgen_extract_json(ok_texts[i], strlen(ok_texts[i]), &v);
		CHECK(rc == 0 && (jv_get_kind(v) == JV_KIND_OBJECT || jv_get_kind(v) == JV_KIND_ARRAY),
		      "no JSON found in %s", ok_texts[i]);
		if (rc == 0)
			jv_free(v);
	}
	const char *bad[] = {"", "no json here", "{\"items\": [{\"text\": \"cut sh", "42"};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		jv v;
		int rc = dsgen_extract_json(bad[i], strlen(bad[i]), &v);
		CHECK(rc < 0, "found JSON in \"%s\"", bad[i]);
		if (rc == 0)
			jv_free(v);
	}
}

static void test_retry_after(void)
{
	CHECK(http_retry_after("2", 0) == 2, "seconds");
	CHECK(http_retry_after(" 0.5 ", 0) == 0.5, "fractions");
	double d = http_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0);
	CHECK(d > 9.9 && d < 10.1, "an HTTP date 10 s ahead gives %g", d);
	CHECK(http_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490.0) == 0, "a date past is 0");
	CHECK(http_retry_after("soon", 0) < 0, "junk is -1");
	CHECK(http_retry_after("-3", 0) < 0, "negative is -1");
}

static int count_rec(void *ctx, jv rec, long line, struct err *err)
{
	(*(int *)ctx)++;
	jv_free(rec);
	return 0;
}

static void test_scan_output(void)
{
	struct err e;
	long cut;
	int n = 0;
	char *p = write_file("missing-is-empty.jsonl", "");
	unlink(p);
	CHECK(dsgen_scan_output(p, count_rec, &n, &cut, &e) == 0 && n == 0, "a missing file is an empty one");
	p = write_file("cut.jsonl", "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"c\",\"mess");
	long got = dsgen_scan_output(p, count_rec, &n, &cut, &e);
	CHECK(got == 2 && n == 2 && cut == 15, "got %ld records (%d seen), cut %ld: %s", got, n, cut, got < 0 ? e.msg : "");
	FILE *f = fopen(p, "rb");
	char buf[100] = {0};
	size_t len = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	CHECK(len == 22 && !strcmp(buf, "{\"id\":\"a\"}\n{\"id\":\"b\"}\n"), "file after the cut: \"%s\"", buf);
	/* a whole last line without its newline is cut too: it may be half of a longer one */
	n = 0;
	p = write_file("nonl.jsonl", "{\"id\":\"a\"}\n{\"id\":\"b\"}");
	got = dsgen_scan_output(p, count_rec, &n, &cut, &e);
	CHECK(got == 1 && cut == 10, "got %ld, cut %ld", got, cut);
	/* garbage before the last line is not ours to cut */
	n = 0;
	p = write_file("bad.jsonl", "{\"id\":\"a\"}\nnot json\n{\"id\":\"b\"}\n");
	got = dsgen_scan_output(p, count_rec, &n, &cut, &e);
	CHECK(got < 0 && strstr(e.msg, "bad.jsonl:2: not a record of ds-gen"), "got %ld: %s", got, e.msg);
}

static const char spec_text[] =
	"{\"system\":\"S\",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"t1\",\"parameters\":"
	"{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\"}},\"required\":[\"n\"]}}},"
	"{\"type\":\"function\",\"function\":{\"name\":\"t2\"}}],"
	"\"languages\":[\"en\",{\"code\":\"ru\",\"name\":\"Russian\"}],\"conversations\":10,\"negative_share\":0.3,"
	"\"intents\":[{\"tool\":\"t1\",\"weight\":3},{\"tool\":\"t2\"}],"
	"\"negatives\":[{\"name\":\"chat\",\"description\":\"small talk\"}]}";

static void test_plan(void)
{
	struct err e;
	struct dsgen_spec *s = dsgen_spec_load(write_file("spec.json", spec_text), &e);
	CHECK(s, "spec refused: %s", e.msg);
	if (!s)
		return;
	struct dsgen_opts o = {.seed = 7, .temperature = 1, .per_request = 2, .item_retries = 1};
	struct dsgen *g = dsgen_new(s, &o, &e);
	CHECK(g && dsgen_get_counts(g)->target == 10, "target %ld", g ? dsgen_get_counts(g)->target : -1);
	/* 3 negatives (0.3 of 10), 7 intents split 3:1 -> 5 and 2; each over en and ru */
	int asked[3][2] = {{0}};
	struct http_request reqs[64];
	int nreq = 0;
	while (nreq < 64 && dsgen_next(g, &reqs[nreq]) == 1) {
		const char *name = dsgen_request_name(&reqs[nreq]);
		int item = !strncmp(name, "intent:t1:", 10) ? 0 : !strncmp(name, "intent:t2:", 10) ? 1 : 2;
		int ru = strstr(name, ":ru:") != NULL;
		jv body = jv_parse(reqs[nreq].body);
		jv content = jv_getpath(jv_copy(body), JV_ARRAY(jv_string("messages"), jv_number(1), jv_string("content")));
		const char *w = strstr(jv_string_value(content), "Write ");
		asked[item][ru] += w ? atoi(w + 6) : 0;
		jv seed = jv_object_get(body, jv_string("seed"));
		CHECK(jv_get_kind(seed) == JV_KIND_NUMBER, "no seed in the request");
		jv_free(seed), jv_free(content);
		nreq++;
	}
	int want[3][2] = {{3, 2}, {1, 1}, {1, 2}};
	for (int i = 0; i < 3; i++)
		for (int l = 0; l < 2; l++)
			CHECK(asked[i][l] == want[i][l], "item %d lang %d: asked for %d utterances, expected %d", i, l, asked[i][l],
			      want[i][l]);
	/* a reply: one good utterance, one duplicate, one with bad arguments */
	int found = 0;
	for (int i = 0; i < nreq; i++) {
		const char *name = dsgen_request_name(&reqs[i]);
		jv recs, rej;
		if (!found && !strcmp(name, "intent:t1:en:r0")) {
			found = 1;
			struct http_result res = {.outcome = HTTP_OK};
			res.response = jv_parse("{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":"
						"\"Here: {\\\"items\\\":[{\\\"text\\\":\\\"Do it 5 times\\\",\\\"arguments\\\":{\\\"n\\\":5}},"
						"{\\\"text\\\":\\\"do it, 5 times!\\\",\\\"arguments\\\":{\\\"n\\\":5}},"
						"{\\\"text\\\":\\\"Do it twice\\\",\\\"arguments\\\":{\\\"n\\\":\\\"2\\\"}}]}\"}}]}");
			dsgen_answer(g, &reqs[i], &res, &recs, &rej);
			jv_free(res.response);
			CHECK(jv_array_length(jv_copy(recs)) == 1 && jv_array_length(jv_copy(rej)) == 2, "%d records, %d rejects",
			      jv_array_length(jv_copy(recs)), jv_array_length(jv_copy(rej)));
			jv r0 = jv_array_get(jv_copy(recs), 0);
			jv dumped = jv_dump_string(jv_copy(r0), 0);
			CHECK(strstr(jv_string_value(dumped), "\"tool_calls\":[{\"type\":\"function\",\"function\":{\"name\":\"t1\","
							      "\"arguments\":{\"n\":5}}}]") &&
				      strstr(jv_string_value(dumped), "\"intent\":\"t1\",\"lang\":\"en\""),
			      "record %s", jv_string_value(dumped));
			jv_free(dumped), jv_free(r0);
			jv dump = jv_dump_string(jv_copy(rej), 0);
			CHECK(strstr(jv_string_value(dump), "\"duplicate\"") &&
				      strstr(jv_string_value(dump), "arguments.n: expected an integer, got a string"),
			      "rejects %s", jv_string_value(dump));
			jv_free(dump);
		} else {
			struct http_result res = {.outcome = HTTP_ABANDONED, .response = jv_invalid()};
			dsgen_answer(g, &reqs[i], &res, &recs, &rej);
		}
		jv_free(recs), jv_free(rej);
		free(reqs[i].body);
	}
	CHECK(found, "no request for intent:t1:en:r0");
	CHECK(dsgen_get_counts(g)->written == 1 && dsgen_get_counts(g)->duplicates == 1, "written %ld, duplicates %ld",
	      dsgen_get_counts(g)->written, dsgen_get_counts(g)->duplicates);
	dsgen_free(g);
	/* the same seed gives the same record ids; another seed others */
	char id7[17], id8[17];
	dsgen_hex(dsgen_hash(7, "intent:t1:en:0", 14), id7);
	dsgen_hex(dsgen_hash(8, "intent:t1:en:0", 14), id8);
	CHECK(strcmp(id7, id8) && strlen(id7) == 16, "ids %s %s", id7, id8);
	dsgen_spec_free(s);
}

static void test_spec_errors(void)
{
	struct {
		const char *edit, *msg;
	} cases[] = {
		{"{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\"}}],\n\"intents\":[\n{\"tool\":\n\"b\"}]}",
		 "4: intents[0].tool: unknown tool \"b\" (tools: a)"}, /* the line of the value */
		{"{\"tools\":[],\"intents\":[{\"tool\":\"b\"}]}", "tools: must be a non-empty array"},
		{"{\"tools\":[{\"function\":{\"name\":\"a\",\"parameters\":{\"type\":\"object\",\"properties\":"
		 "{\"x\":{\"type\":\"float\"}}}}}],\"intents\":[{\"tool\":\"a\"}]}",
		 "tools[0].function.parameters.properties.x.type: unknown type \"float\""},
		{"{\"tools\":[{\"function\":{\"name\":\"a\"}}],\"intents\":[{\"tool\":\"a\",\"weight\":0}]}",
		 "intents[0].weight: must be a number above 0"},
		{"{\"tools\":[{\"function\":{\"name\":\"a\"}}],\"intents\":[{\"tool\":\"a\"}],\"negatives\":[{\"name\":\"n\"}]}",
		 "negatives[0].description: required"},
		{"{\"tools\":[{\"function\":{\"name\":\"a\"}}],\"intents\":[{\"tool\":\"a\",\"example\":[]}]}",
		 "intents[0].\"example\": unknown key"},
		{"{\"tools\":[{\"function\":{\"name\":\"a\"}}],\"intents\":[{\"tool\":\"a\"}],\"negative_share\":0.2}",
		 "negative_share: 0.2, but the spec has no negatives"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		struct err e = {0};
		char *p = write_file("bad.json", cases[i].edit);
		struct dsgen_spec *s = dsgen_spec_load(p, &e);
		char want[600];
		/* "FILE:LINE: field: what"; the cases are one line but the first */
		snprintf(want, sizeof want, "%s:%s%s", p, i ? "1: " : "", cases[i].msg);
		CHECK(!s && !strncmp(e.msg, want, strlen(want)), "case %zu: \"%s\", expected \"%s...\"", i, e.msg, want);
		dsgen_spec_free(s);
	}
}

int main(void)
{
	if (!mkdtemp(tmpdir))
		return 2;
	RUN(test_normalize);
	RUN(test_extract_json);
	RUN(test_retry_after);
	RUN(test_scan_output);
	RUN(test_plan);
	RUN(test_spec_errors);
	char cmd[600];
	snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
	if (system(cmd) != 0)
		return 2;
	return check_done();
}
