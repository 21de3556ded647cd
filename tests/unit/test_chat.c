/* chat: input forms, validation, tool-call arguments, and span derivation from
 * hand-made provenance (no template engine needed for any of these). */
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "check.h"
#include "jsonl.h"

/* Values live in one arena for the whole test. */
static struct jd_arena ar;

static struct jd J(const char *s)
{
	struct jd v = jd_null();
	struct err err = {0};
	CHECK(jsonl_parse_jd(s, strlen(s), &ar, &v, &err) == 0, "%s: %s", s, err.msg);
	return v;
}

/* True when a equals the JSON text b. */
static int eq(const struct jd *a, const char *b)
{
	struct jd w = J(b);
	return jd_equal(a, &w);
}

static const char *dump(const struct jd *v)
{
	static char buf[2048];
	struct jsonl_buf b = {0};
	jsonl_put_jd(&b, v);
	snprintf(buf, sizeof buf, "%.*s", (int)b.n, b.p ? b.p : "");
	free(b.p);
	return buf;
}

/* The same for jv values (consumed). */
static int jvtext_eq(jv a, const char *b) { return jv_is_valid(a) ? jv_equal(a, jv_parse(b)) : (jv_free(a), 0); }

static const char *jvtext(jv v)
{
	static char buf[2048];
	jv s = jv_dump_string(v, 0);
	snprintf(buf, sizeof buf, "%s", jv_is_valid(s) ? jv_string_value(s) : "(invalid)");
	jv_free(s);
	return buf;
}

static void test_input_parse(void)
{
	CHECK(chat_input_parse("auto") == CHAT_INPUT_AUTO, "auto");
	CHECK(chat_input_parse("sharegpt") == CHAT_INPUT_SHAREGPT, "sharegpt");
	CHECK(chat_input_parse("csv") == -1, "csv");
	CHECK(chat_key_consumed("instruction") && chat_key_consumed("messages") && !chat_key_consumed("id"), "keys");
}

static void test_openai(void)
{
	struct err err = {0};
	struct jd m, t, r = J("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":[],\"id\":3}");
	CHECK(chat_to_messages(&r, CHAT_INPUT_AUTO, &ar, &m, &t, &err) == 0, "%s", err.msg);
	CHECK(eq(&m, "[{\"role\":\"user\",\"content\":\"hi\"}]") && eq(&t, "[]"), "%s", dump(&m));
	r = J("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":null}");
	CHECK(chat_to_messages(&r, CHAT_INPUT_AUTO, &ar, &m, &t, &err) == 0 && t.kind == JD_NULL, "no tools: %s",
	      dump(&t));
	r = J("{\"messages\":{}}");
	CHECK(chat_to_messages(&r, CHAT_INPUT_AUTO, &ar, &m, &t, &err) < 0 && strstr(err.msg, "must be an array"), "%s",
	      err.msg);
	r = J("{\"messages\":[],\"tools\":5}");
	CHECK(chat_to_messages(&r, CHAT_INPUT_AUTO, &ar, &m, &t, &err) < 0 && strstr(err.msg, "\"tools\" must be"), "%s",
	      err.msg);
	r = J("{\"prompt\":1}");
	CHECK(chat_to_messages(&r, CHAT_INPUT_AUTO, &ar, &m, &t, &err) < 0 && strstr(err.msg, "--jq"), "%s", err.msg);
}

static void test_alpaca(void)
{
	struct err err = {0};
	struct jd m, t, r = J("{\"instruction\":\"Translate\",\"input\":\"кот\",\"output\":\"cat\",\"system\":\"S\"}");
	CHECK(chat_to_messages(&r, CHAT_INPUT_AUTO, &ar, &m, &t, &err) == 0 && t.kind == JD_NULL, "%s", err.msg);
	CHECK(eq(&m, "[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":"
		     "\"Translate\\nкот\"},{\"role\":\"assistant\",\"content\":\"cat\"}]"),
	      "%s", dump(&m));
	r = J("{\"instruction\":\"Hi\",\"input\":\"\",\"output\":\"Yo\"}");
	CHECK(chat_to_messages(&r, CHAT_INPUT_ALPACA, &ar, &m, &t, &err) == 0, "%s", err.msg);
	CHECK(eq(&m, "[{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Yo\"}]"), "%s",
	      dump(&m));
	r = J("{\"instruction\":5}");
	CHECK(chat_to_messages(&r, CHAT_INPUT_ALPACA, &ar, &m, &t, &err) < 0 && strstr(err.msg, "instruction"), "%s",
	      err.msg);
	r = J("{\"instruction\":\"i\",\"output\":[]}");
	CHECK(chat_to_messages(&r, CHAT_INPUT_ALPACA, &ar, &m, &t, &err) < 0 && strstr(err.msg, "\"output\""), "%s",
	      err.msg);
}

static void test_sharegpt(void)
{
	struct err err = {0};
	struct jd m, t, r = J(
		"{\"system\":\"S\",\"tools\":\"[{\\\"name\\\":\\\"f\\\"}]\",\"conversations\":[{\"from\":\"human\",\"value\":\"q\"},"
		"{\"from\":\"function_call\",\"value\":\"{\\\"name\\\":\\\"f\\\",\\\"arguments\\\":{\\\"a\\\":1}}\"},"
		"{\"from\":\"observation\",\"value\":\"r\"},{\"from\":\"gpt\",\"value\":\"a\"}]}");
	CHECK(chat_to_messages(&r, CHAT_INPUT_AUTO, &ar, &m, &t, &err) == 0, "%s", err.msg);
	CHECK(eq(&m, "[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"q\"},"
		     "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"type\":\"function\",\"function\":"
		     "{\"name\":\"f\",\"arguments\":{\"a\":1}}}]},{\"role\":\"tool\",\"content\":\"r\"},"
		     "{\"role\":\"assistant\",\"content\":\"a\"}]") &&
		      eq(&t, "[{\"name\":\"f\"}]"),
	      "%s", dump(&m));
	/* the keys in the order a Python script would have written them */
	CHECK(!strcmp(dump(&m.u.items[2]), "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"type\":\"function\","
					   "\"function\":{\"name\":\"f\",\"arguments\":{\"a\":1}}}]}"),
	      "%s", dump(&m.u.items[2]));
	r = J("{\"conversations\":[{\"from\":\"bot\",\"value\":\"q\"}]}");
	CHECK(chat_to_messages(&r, CHAT_INPUT_AUTO, &ar, &m, &t, &err) < 0 &&
		      strstr(err.msg, "turn 0: unknown \"from\": \"bot\""),
	      "%s", err.msg);
	r = J("{\"conversations\":[{\"from\":\"function_call\",\"value\":\"[1\"}]}");
	CHECK(chat_to_messages(&r, CHAT_INPUT_AUTO, &ar, &m, &t, &err) < 0 && strstr(err.msg, "not a JSON object or array"),
	      "%s", err.msg);
	r = J("{\"conversations\":[],\"tools\":\"{}\"}");
	CHECK(chat_to_messages(&r, CHAT_INPUT_AUTO, &ar, &m, &t, &err) < 0 && strstr(err.msg, "not a JSON array"), "%s",
	      err.msg);
}

/* validate: the message text of each kind of problem, with its index. */
static void test_validate(void)
{
	static const struct {
		const char *msgs, *want; /* want NULL: valid */
	} cases[] = {
		{"[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\","
		 "\"content\":\"a\"}]",
		 NULL},
		{"[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"u\"}]},{\"role\":\"assistant\",\"content\":"
		 "null,\"tool_calls\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
		 "{\"role\":\"tool\",\"content\":\"r\"},{\"role\":\"tool\",\"content\":\"r2\"}]",
		 NULL},
		{"[]", "empty"},
		{"{}", "\"messages\" must be an array"},
		{"[5]", "message 0: expected an object"},
		{"[{\"content\":\"x\"}]", "message 0: \"role\" must be a string"},
		{"[{\"role\":\"robot\",\"content\":\"x\"}]", "message 0: unknown role \"robot\""},
		{"[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"assistant\",\"content\":\"a\"}]",
		 "message 1: the first message after the system prompt is the assistant's"},
		{"[{\"role\":\"user\",\"content\":\"\"}]", "message 0: empty content"},
		{"[{\"role\":\"user\"}]", "message 0: empty content"},
		{"[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"content\":null}]", "message 1: empty content"},
		{"[{\"role\":\"user\",\"content\":5}]", "message 0: bad content"},
		{"[{\"role\":\"user\",\"content\":[{\"text\":\"u\"}]}]", "message 0: bad content"},
		{"[{\"role\":\"user\",\"content\":\" \\n\\t\"}]", "message 0: empty content (white space"},
		/* white space as a template's trim (Python's) sees it */
		{"[{\"role\":\"user\",\"content\":\"\\u3000\\u2028\\u00a0\\u001c\\u000b\\u0085\"}]", "message 0: empty content"},
		{"[{\"role\":\"user\",\"content\":\"\\u200b\"},{\"role\":\"assistant\",\"content\":\"a\"}]", NULL}, /* ZWSP: not white space */
		{"[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"tool\",\"content\":\"r\"}]",
		 "message 1: a tool result without a preceding assistant tool call"},
		{"[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":{}}]",
		 "message 1: \"tool_calls\" must be a non-empty array"},
		{"[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[5]}]",
		 "message 1: tool call 0: expected {\"type\""},
		{"[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"function\":"
		 "{\"arguments\":{}}}]}]",
		 "message 1: tool call 0: \"function.name\""},
		{"[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"function\":"
		 "{\"name\":\"f\",\"arguments\":[1]}}]}]",
		 "message 1: tool call 0: \"function.arguments\""},
		{"[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"type\":"
		 "\"fn\",\"function\":{\"name\":\"f\",\"arguments\":{}}}]}]",
		 "message 1: tool call 0: \"type\" must be \"function\""},
		{"[{\"role\":\"user\",\"content\":\"u\",\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":{}}}]}]",
		 "message 0: only assistant messages carry tool_calls"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		struct err err = {0};
		struct jd m = J(cases[i].msgs);
		int rc = chat_validate(&m, &err);
		if (!cases[i].want)
			CHECK(rc == 0, "case %zu: %s", i, err.msg);
		else
			CHECK(rc < 0 && strstr(err.msg, cases[i].want), "case %zu: rc %d, '%s'", i, rc, err.msg);
	}
}

static void test_args(void)
{
	struct err err = {0};
	const char *in = "[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":"
			 "\"f\",\"arguments\":\"{\\\"city\\\": \\\"Москва\\\", \\\"n\\\": [1, 2]}\"}},{\"name\":\"g\","
			 "\"arguments\":{\"a\":{}}}]}]";
	struct jd src = J(in), o, s, back, bad;
	CHECK(chat_args_normalize(&src, CHAT_ARGS_OBJECT, &ar, &o, &err) == 0, "%s", err.msg);
	CHECK(!strcmp(dump(&o), "[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"tool_calls\":[{\"function\":"
				"{\"name\":\"f\",\"arguments\":{\"city\":\"Москва\",\"n\":[1,2]}}},{\"name\":\"g\",\"arguments\":"
				"{\"a\":{}}}]}]"),
	      "%s", dump(&o));
	/* what did not change is shared, what did is new: the input is as it was */
	CHECK(o.u.items[0].u.members == src.u.items[0].u.members, "the unchanged message was copied");
	char was[1024];
	struct jd again = J(in);
	snprintf(was, sizeof was, "%s", dump(&again));
	CHECK(!strcmp(dump(&src), was), "the input changed: %s", dump(&src));
	CHECK(chat_args_normalize(&o, CHAT_ARGS_STRING, &ar, &s, &err) == 0, "%s", err.msg);
	CHECK(eq(&s, "[{\"role\":\"user\",\"content\":\"u\"},{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":"
		     "\"f\",\"arguments\":\"{\\\"city\\\": \\\"Москва\\\", \\\"n\\\": [1, 2]}\"}},{\"name\":\"g\",\"arguments\":"
		     "\"{\\\"a\\\": {}}\"}]}]"),
	      "%s", dump(&s));
	/* and back again: the same value */
	CHECK(chat_args_normalize(&s, CHAT_ARGS_OBJECT, &ar, &back, &err) == 0 && jd_equal(&back, &o), "round trip");
	struct jd b = J("[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"{oops\"}}]}]");
	CHECK(chat_args_normalize(&b, CHAT_ARGS_OBJECT, &ar, &bad, &err) < 0 &&
		      strstr(err.msg, "message 0: tool call 0: \"arguments\" is not JSON"),
	      "%s", err.msg);
}

static void test_json_find(void)
{
	const char *t = "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": [1, {\"b\": \"}\"}]}}</tool_call>";
	struct jd want = J("{\"a\":[1,{\"b\":\"}\"}]}"), other = J("{\"a\":[2]}"), one = J("{\"a\":1}"),
		  one_float = J("{\"a\":1.0}");
	CHECK(chat_json_find(t, strlen(t), &want) == 1, "nested value found");
	CHECK(chat_json_find(t, strlen(t), &other) == 0, "absent value not found");
	CHECK(chat_json_find("{'a': 1}", 8, &one) == 0, "a Python dict is not JSON");
	/* jq's equality: numbers by value, members in any order */
	CHECK(chat_json_find("x {\"a\": 1.0} y", 14, &one) == 1 && chat_json_find("{\"a\": 1}", 8, &one_float) == 1,
	      "1 and 1.0 are the same number");
	struct jd two = J("{\"b\":2,\"a\":1}");
	CHECK(chat_json_find("[{\"a\": 1, \"b\": 2}]", 18, &two) == 1, "members in another order");
}

static void test_vars(void)
{
	struct err err = {0};
	jv v = chat_var_add(jv_object(), "enable_thinking=false", &err);
	v = chat_var_add(v, "date_string=\"26 Jul 2024\"", &err);
	CHECK(jvtext_eq(jv_copy(v), "{\"enable_thinking\":false,\"date_string\":\"26 Jul 2024\"}"), "%s", jvtext(jv_copy(v)));
	v = chat_var_add(v, "x=abc", &err);
	CHECK(!jv_is_valid(v) && strstr(err.msg, "not JSON"), "%s", err.msg);
	v = chat_var_add(jv_object(), "messages=[]", &err);
	CHECK(!jv_is_valid(v) && strstr(err.msg, "set by ds-fmt"), "%s", err.msg);
	v = chat_var_add(jv_object(), "noequals", &err);
	CHECK(!jv_is_valid(v) && strstr(err.msg, "NAME=JSON"), "%s", err.msg);
}

static void test_builtins(void)
{
	const char *names[] = {"chatml", "llama3", "gemma", "mistral", "alpaca"};
	for (int i = 0; i < 5; i++)
		CHECK(chat_builtin_template(names[i]) != NULL, "%s", names[i]);
	CHECK(chat_builtin_template("vicuna") == NULL, "unknown name");
}

/* A hand-made rendering with provenance, as the engine would give it for
 * a ChatML conversation: user, assistant (content), tool call, tool, assistant. */
struct fake {
	char text[1024];
	struct tmpl_run runs[64];
	struct tmpl_output out;
};

static void fake_put(struct fake *f, const char *s, int msg, enum tmpl_origin o)
{
	size_t n = strlen(s), at = f->out.len;
	memcpy(f->text + at, s, n);
	f->runs[f->out.nruns++] = (struct tmpl_run){(uint32_t)at, (uint32_t)(at + n), msg, o, NULL};
	f->out.len += n;
	f->out.text = f->text;
	f->out.runs = f->runs;
}

static const char *mk_s[] = {"<|im_start|>", "<|im_end|>", "<|endoftext|>"};
static size_t mk_len[] = {12, 10, 13};
static const struct chat_markers mk = {mk_s, mk_len, 3, 3, NULL};

static void build_fake(struct fake *f)
{
	memset(f, 0, sizeof *f);
	fake_put(f, "<|im_start|>", -1, TMPL_LITERAL);
	fake_put(f, "user", 0, TMPL_MSG_OTHER);
	fake_put(f, "\n", -1, TMPL_LITERAL);
	fake_put(f, "hi", 0, TMPL_MSG_CONTENT);
	fake_put(f, "<|im_end|>\n<|im_start|>assistant\n", -1, TMPL_LITERAL); /* body of 1 starts after this */
	fake_put(f, "Sure", 1, TMPL_MSG_CONTENT);
	fake_put(f, "\n<tool_call>\n{\"name\": \"", -1, TMPL_LITERAL);
	fake_put(f, "f", 1, TMPL_MSG_TOOL_CALLS);
	fake_put(f, "\", \"arguments\": ", -1, TMPL_LITERAL);
	fake_put(f, "{\"a\": 1}", 1, TMPL_MSG_TOOL_CALLS);
	fake_put(f, "}\n</tool_call>  <|im_end|>\n<|im_start|>tool\n", -1, TMPL_LITERAL);
	fake_put(f, "ok", 2, TMPL_MSG_CONTENT);
	fake_put(f, "<|im_end|>\n<|im_start|>assistant\n", -1, TMPL_LITERAL);
	fake_put(f, "Done.", 3, TMPL_MSG_CONTENT);
	fake_put(f, "<|im_end|>\n", -1, TMPL_LITERAL);
}

static const char *span_text(const struct fake *f, const long *spans, int k, char *buf)
{
	long a = spans[2 * k], b = spans[2 * k + 1];
	memcpy(buf, f->text + a, (size_t)(b - a));
	buf[b - a] = 0;
	return buf;
}

static void test_spans(void)
{
	struct fake f;
	build_fake(&f);
	unsigned char trained[4] = {0, 1, 0, 1};
	long *spans = NULL;
	size_t nspans = 0;
	struct err err = {0};
	char buf[512];
	CHECK(chat_spans(&f.out, trained, NULL, 1, 4, &mk, &spans, &nspans, &err) == 0, "%s", err.msg);
	CHECK(nspans == 2, "%zu spans", nspans);
	CHECK(!strcmp(span_text(&f, spans, 0, buf),
		      "Sure\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>  <|im_end|>"),
	      "[%s]", buf);
	CHECK(!strcmp(span_text(&f, spans, 1, buf), "Done.<|im_end|>"), "[%s]", buf);
	free(spans);

	/* --train-turns last */
	trained[1] = 0;
	CHECK(chat_spans(&f.out, trained, NULL, 1, 4, &mk, &spans, &nspans, &err) == 0, "%s", err.msg);
	CHECK(nspans == 1 && !strcmp(span_text(&f, spans, 0, buf), "Done.<|im_end|>"), "%zu spans", nspans);
	free(spans);
}

static int cmp_store(const void *a, const void *b) { return strcmp(a, b); }
static int cmp_store_reversed(const void *a, const void *b) { return strcmp(b, a); }

/* chat_markers_rank against a brute force over random marker sets (from two
 * letters, so that one often begins another; of 1 to 4 bytes and of 6 to 21,
 * some with 7 bytes in common); and the spans found with the
 * ranks, whose closer hint must not shorten a marker another extends. */
static void test_markers_rank(void)
{
	for (int round = 0; round < 1200 && !check_case_failed; round++) {
		char store[40][24]; /* up to 40: the merge sort's runs of 1 to 32 */
		const char *s[40];
		size_t len[40], n = 2 + rng_below(check_rng(), round % 5 ? 10 : 38);
		for (size_t k = 0; k < n; k++) {
			/* short ones, and past the 8 and 16 bytes the sort compares first */
			len[k] = round % 2 ? 1 + rng_below(check_rng(), 4) : 6 + rng_below(check_rng(), 16);
			/* in one round of four, first bytes shared: 7, 15 or 16 */
			size_t shared = round % 4 ? 0 : (size_t[]){7, 15, 16}[(round / 4) % 3];
			for (size_t i = 0; i < len[k]; i++)
				store[k][i] = i < shared ? 'a' : "ab"[rng_below(check_rng(), 2)];
			store[k][len[k]] = 0;
		}
		/* in some rounds two chains, each marker of one beginning the next
		 * (only the longest of each is maximal), in a random order */
		if (round % 7 == 6)
			for (size_t k = 0; k < n; k++) {
				size_t j = rng_below(check_rng(), k + 1), lj = k / 2 + 1;
				memmove(store[k], store[j], sizeof *store);
				memset(store[j], "ab"[k % 2], lj);
				store[j][lj] = 0;
			}
		/* in two rounds of three, already in order, or in the reverse order */
		else if (round % 3 == 1 || round % 3 == 2)
			qsort(store, n, sizeof *store, round % 3 == 1 ? cmp_store : cmp_store_reversed);
		for (size_t k = 0; k < n; k++)
			s[k] = store[k], len[k] = strlen(store[k]);
		struct chat_markers m = {s, len, n, rng_below(check_rng(), n + 1), NULL};
		struct err err = {0};
		CHECK(chat_markers_rank(&m, &err) == 0, "%s", err.msg);
		for (size_t k = 0; m.maximal && k < n; k++) {
			size_t k0 = k < m.nfirst ? 0 : m.nfirst, k1 = k < m.nfirst ? m.nfirst : n;
			int want = 1;
			for (size_t j = k0; j < k1; j++)
				if (j != k && len[j] > len[k] && !memcmp(s[j], s[k], len[k]))
					want = 0;
			CHECK(m.maximal[k] == want, "round %d: marker %zu (%s): %d, want %d", round, k, s[k], m.maximal[k],
			      want);
		}
		free(m.maximal);
	}
	/* "<end>" closes the first turn; the second's "<end>\n" is longer: learned whole */
	static const char *es[] = {"<end>", "<end>\n", "<x>"};
	static size_t elen[] = {5, 6, 3};
	struct chat_markers em = {es, elen, 3, 3, NULL};
	struct err err = {0};
	CHECK(chat_markers_rank(&em, &err) == 0 && em.maximal && !em.maximal[0] && em.maximal[1] && em.maximal[2],
	      "ranks");
	for (int twice = 0; twice < 2; twice++) {
		struct fake f;
		memset(&f, 0, sizeof f);
		fake_put(&f, "<x>", -1, TMPL_LITERAL);
		fake_put(&f, "a", 0, TMPL_MSG_CONTENT);
		fake_put(&f, "<end>X<x>", -1, TMPL_LITERAL);
		fake_put(&f, "b", 1, TMPL_MSG_CONTENT);
		fake_put(&f, "<end>\n", -1, TMPL_LITERAL);
		unsigned char trained[2] = {1, 1};
		long *spans = NULL;
		size_t nspans = 0;
		char buf[64];
		CHECK(chat_spans(&f.out, trained, NULL, 1, 2, &em, &spans, &nspans, &err) == 0, "%s", err.msg);
		CHECK(nspans == 2 && !strcmp(span_text(&f, spans, 0, buf), "a<end>") &&
			      !strcmp(span_text(&f, spans, 1, buf), "b<end>\n"),
		      "round %d: %zu spans, the last [%s]", twice, nspans, nspans ? span_text(&f, spans, (int)nspans - 1, buf) : "");
		free(spans);
	}
	free(em.maximal);
}

/* A tool-call-only turn: the body starts where the generation prompt ends, so
 * the <tool_call> wrapper before the first tool_calls byte is learned too. */
static void test_spans_body(void)
{
	struct fake f;
	memset(&f, 0, sizeof f);
	fake_put(&f, "<|im_start|>user\n", -1, TMPL_LITERAL);
	fake_put(&f, "q", 0, TMPL_MSG_CONTENT);
	fake_put(&f, "<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"", -1, TMPL_LITERAL);
	long body = (long)strlen("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n");
	fake_put(&f, "f", 1, TMPL_MSG_TOOL_CALLS);
	fake_put(&f, "\"}\n</tool_call><|im_end|>\n", -1, TMPL_LITERAL);
	unsigned char trained[2] = {0, 1};
	long bodies[2] = {-1, body};
	long *spans = NULL;
	size_t nspans = 0;
	struct err err = {0};
	char buf[512];
	CHECK(chat_spans(&f.out, trained, bodies, 1, 2, &mk, &spans, &nspans, &err) == 0, "%s", err.msg);
	CHECK(!strcmp(span_text(&f, spans, 0, buf), "<tool_call>\n{\"name\": \"f\"}\n</tool_call><|im_end|>"), "[%s]",
	      buf);
	free(spans);
	/* a template that ignores add_generation_prompt: the rendering before
	 * the turn ends before its header, which prints the role: not learned */
	memset(&f, 0, sizeof f);
	fake_put(&f, "U: ", -1, TMPL_LITERAL);
	fake_put(&f, "q", 0, TMPL_MSG_CONTENT);
	fake_put(&f, "<|im_end|>", -1, TMPL_LITERAL);
	bodies[1] = (long)f.out.len;
	fake_put(&f, "assistant", 1, TMPL_MSG_OTHER);
	fake_put(&f, ": ", -1, TMPL_LITERAL);
	fake_put(&f, "a", 1, TMPL_MSG_CONTENT);
	fake_put(&f, "<|im_end|>", -1, TMPL_LITERAL);
	CHECK(chat_spans(&f.out, trained, bodies, 0, 2, &mk, &spans, &nspans, &err) == 0, "%s", err.msg);
	CHECK(!strcmp(span_text(&f, spans, 0, buf), "a<|im_end|>"), "[%s]", buf);
	free(spans);
	/* without the body: only from the first tool_calls byte */
	CHECK(chat_spans(&f.out, trained, NULL, 1, 2, &mk, &spans, &nspans, &err) == 0, "%s", err.msg);
	CHECK(!strcmp(span_text(&f, spans, 0, buf), "a<|im_end|>"), "[%s]", buf);
	free(spans);
	/* a generation prompt that ends inside the content (Nemotron 3's
	 * "<think>\n", with which the content begins): from there; past the
	 * content's first run, not used */
	memset(&f, 0, sizeof f);
	fake_put(&f, "<|im_start|>assistant\n", -1, TMPL_LITERAL);
	fake_put(&f, "<think>\nr</think>a", 0, TMPL_MSG_CONTENT);
	fake_put(&f, "<|im_end|>", -1, TMPL_LITERAL);
	unsigned char one[1] = {1};
	long in_content[1] = {(long)strlen("<|im_start|>assistant\n<think>\n")};
	CHECK(chat_spans(&f.out, one, in_content, 1, 1, &mk, &spans, &nspans, &err) == 0, "%s", err.msg);
	CHECK(!strcmp(span_text(&f, spans, 0, buf), "r</think>a<|im_end|>"), "[%s]", buf);
	free(spans);
	in_content[0] = (long)f.out.len - 3;
	CHECK(chat_spans(&f.out, one, in_content, 1, 1, &mk, &spans, &nspans, &err) == 0, "%s", err.msg);
	CHECK(!strcmp(span_text(&f, spans, 0, buf), "<think>\nr</think>a<|im_end|>"), "[%s]", buf);
	free(spans);
}

/* Markers are looked for only in the closing text right after the content:
 * a marker inside the content, or one far later, is never taken. */
static void test_spans_no_marker(void)
{
	struct fake f;
	memset(&f, 0, sizeof f);
	fake_put(&f, "U: ", -1, TMPL_LITERAL);
	fake_put(&f, "q", 0, TMPL_MSG_CONTENT);
	fake_put(&f, "\nA: ", -1, TMPL_LITERAL);
	fake_put(&f, "say <|im_end|> now", 1, TMPL_MSG_CONTENT);
	fake_put(&f, "\n\n", -1, TMPL_LITERAL);
	fake_put(&f, "next", 2, TMPL_MSG_CONTENT);
	fake_put(&f, "<|im_end|>", -1, TMPL_LITERAL);
	unsigned char trained[3] = {0, 1, 0};
	long *spans = NULL;
	size_t nspans = 0;
	struct err err = {0};
	CHECK(chat_spans(&f.out, trained, NULL, 1, 3, &mk, &spans, &nspans, &err) < 0 && strstr(err.msg, "message 1: no end-of-turn"),
	      "%s", err.msg);
	free(spans);
}

static void test_spans_generation(void)
{
	struct fake f;
	build_fake(&f);
	unsigned char trained[4] = {0, 1, 0, 1};
	uint32_t gen[2][2];
	/* generation blocks covering both turns with their closers: agree */
	const char *t = f.text;
	gen[0][0] = (uint32_t)(strstr(t, "Sure") - t);
	gen[0][1] = (uint32_t)(strstr(t, "<|im_end|>\n<|im_start|>tool") - t + 10);
	gen[1][0] = (uint32_t)(strstr(t, "Done.") - t);
	gen[1][1] = (uint32_t)f.out.len;
	f.out.gen = gen;
	f.out.ngen = 2;
	long *spans = NULL;
	size_t nspans = 0;
	struct err err = {0};
	CHECK(chat_spans(&f.out, trained, NULL, 1, 4, &mk, &spans, &nspans, &err) == 0, "%s", err.msg);
	free(spans);
	/* a block that stops before the end-of-turn marker: disagree */
	gen[1][1] = gen[1][0] + 5;
	spans = NULL;
	CHECK(chat_spans(&f.out, trained, NULL, 1, 4, &mk, &spans, &nspans, &err) < 0 && strstr(err.msg, "generation"), "%s",
	      err.msg);
	free(spans);
}

/* gpt-oss's shape: the tool result's header names the last tool call again,
 * in a later turn. Without the turns, message 1's bytes run into that header
 * and its closer is the header's <|channel|>; with them, its turn ends at
 * <|call|>. A turn that does not hold the message's first byte (a loop
 * inside another, over later messages) is not its turn. */
static void test_spans_later_turn(void)
{
	static const char *hs[] = {"<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|call|>", "<|return|>"};
	static size_t hl[] = {9, 11, 11, 7, 8, 10};
	const struct chat_markers hm = {hs, hl, 6, 6, NULL};
	struct fake f;
	memset(&f, 0, sizeof f);
	fake_put(&f, "<|start|>user<|message|>", -1, TMPL_LITERAL);
	fake_put(&f, "Hi", 0, TMPL_MSG_CONTENT);
	fake_put(&f, "<|end|><|start|>assistant", -1, TMPL_LITERAL);
	uint32_t t1 = (uint32_t)f.out.len; /* message 1's turn */
	fake_put(&f, " to=functions.", -1, TMPL_LITERAL);
	fake_put(&f, "f", 1, TMPL_MSG_TOOL_CALLS);
	fake_put(&f, "<|channel|>commentary json<|message|>", -1, TMPL_LITERAL);
	fake_put(&f, "{\"a\": 1}", 1, TMPL_MSG_TOOL_CALLS);
	fake_put(&f, "<|call|>", -1, TMPL_LITERAL);
	uint32_t t2 = (uint32_t)f.out.len; /* message 2's */
	fake_put(&f, "<|start|>functions.", -1, TMPL_LITERAL);
	fake_put(&f, "f", 1, TMPL_MSG_TOOL_CALLS);
	fake_put(&f, " to=assistant<|channel|>commentary<|message|>", -1, TMPL_LITERAL);
	fake_put(&f, "ok", 2, TMPL_MSG_CONTENT);
	fake_put(&f, "<|end|>", -1, TMPL_LITERAL);
	uint32_t t3 = (uint32_t)f.out.len;
	struct tmpl_turn turns[] = {{2, t2 + 1, t2 + 9}, {1, t1, t2}, {2, t2, t3}};
	unsigned char trained[3] = {0, 1, 0};
	long *spans = NULL;
	size_t nspans = 0;
	struct err err = {0};
	char buf[512];
	CHECK(chat_spans(&f.out, trained, NULL, 1, 3, &hm, &spans, &nspans, &err) == 0, "%s", err.msg);
	CHECK(nspans == 1 && strstr(span_text(&f, spans, 0, buf), "to=assistant<|channel|>"), "without turns: [%s]", buf);
	free(spans);
	f.out.turns = turns;
	f.out.nturns = 3;
	CHECK(chat_spans(&f.out, trained, NULL, 1, 3, &hm, &spans, &nspans, &err) == 0, "%s", err.msg);
	CHECK(nspans == 1 && !strcmp(span_text(&f, spans, 0, buf), "f<|channel|>commentary json<|message|>{\"a\": 1}<|call|>"),
	      "[%s]", buf);
	free(spans);
	/* only a turn that holds the first byte counts: one of message 1 after it is ignored */
	turns[1] = (struct tmpl_turn){1, t2, t2 + 5};
	CHECK(chat_spans(&f.out, trained, NULL, 1, 3, &hm, &spans, &nspans, &err) == 0, "%s", err.msg);
	CHECK(nspans == 1 && strstr(span_text(&f, spans, 0, buf), "to=assistant<|channel|>"), "[%s]", buf);
	free(spans);
}

/* A turn's closer is the first marker that ends generation in its closing
 * text, where one is (Command R7B: <|END_RESPONSE|><|END_OF_TURN_TOKEN|>,
 * only the latter stops), else the first marker; Phi's "<|end|>\n" and eos
 * stop at <|end|>. */
static void test_spans_stop_closer(void)
{
	static const char *cs[] = {"<|END_RESPONSE|>", "<|END_OF_TURN_TOKEN|>", "<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>",
				   "<|end|>", "<|endoftext|>"};
	static size_t cl[] = {16, 21, 23, 14, 7, 13};
	static size_t stops[] = {1, 4, 5};
	static const struct {
		const char *closing, *learned;
		size_t nstop;
	} cases[] = {
		{"<|END_RESPONSE|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>",
		 "a<|END_RESPONSE|><|END_OF_TURN_TOKEN|>", 3},
		{"<|END_RESPONSE|>\n<|END_OF_TURN_TOKEN|>", "a<|END_RESPONSE|>\n<|END_OF_TURN_TOKEN|>", 3},
		{"<|END_RESPONSE|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>", "a<|END_RESPONSE|>", 3},
		{"x<|END_OF_TURN_TOKEN|>", "ax<|END_OF_TURN_TOKEN|>", 3},
		{"<|end|>\n<|endoftext|>", "a<|end|>", 3},
		{"<|end|><|endoftext|>", "a<|end|>", 3},
		{"<|END_RESPONSE|><|END_OF_TURN_TOKEN|>", "a<|END_RESPONSE|>", 0},
	};
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		struct chat_markers cm = {cs, cl, 6, 6, NULL, stops, cases[c].nstop};
		struct fake f;
		memset(&f, 0, sizeof f);
		fake_put(&f, "U:", -1, TMPL_LITERAL);
		fake_put(&f, "q", 0, TMPL_MSG_CONTENT);
		fake_put(&f, "A:", -1, TMPL_LITERAL);
		fake_put(&f, "a", 1, TMPL_MSG_CONTENT);
		fake_put(&f, cases[c].closing, -1, TMPL_LITERAL);
		fake_put(&f, "next", 2, TMPL_MSG_CONTENT);
		unsigned char trained[3] = {0, 1, 0};
		long *spans = NULL;
		size_t nspans = 0;
		struct err err = {0};
		char buf[512];
		CHECK(chat_spans(&f.out, trained, NULL, 1, 3, &cm, &spans, &nspans, &err) == 0, "%s", err.msg);
		CHECK(nspans == 1 && !strcmp(span_text(&f, spans, 0, buf), cases[c].learned), "case %zu: [%s]", c, buf);
		free(spans);
	}
}

/* A message's learned bytes end at a marker that ends generation between
 * them when its turn prints another message's content after it: Gemma 4
 * inlines the tool's results after <|tool_response>, headed by the call's
 * name. gpt-oss's analysis, <|end|>, then the call, in a turn of its own:
 * all learned. */
static void test_spans_stop_between(void)
{
	static const char *gs[] = {"<|\"|>", "<tool_call|>", "<|tool_response>", "<tool_response|>", "<turn|>", "<|end|>",
				   "<|call|>"};
	static size_t gl[] = {5, 12, 16, 16, 7, 7, 8};
	static size_t stops[] = {2, 4, 5, 6};
	const struct chat_markers gm = {gs, gl, 7, 7, NULL, stops, 4};
	struct fake f;
	memset(&f, 0, sizeof f);
	fake_put(&f, "<|turn>model\n<|tool_call>call:", -1, TMPL_LITERAL);
	uint32_t t0 = 0;
	fake_put(&f, "check", 0, TMPL_MSG_TOOL_CALLS);
	fake_put(&f, "{user_id:<|\"|>", -1, TMPL_LITERAL);
	fake_put(&f, "u-42", 0, TMPL_MSG_TOOL_CALLS);
	fake_put(&f, "<|\"|>}<tool_call|><|tool_response>response:", -1, TMPL_LITERAL);
	fake_put(&f, "check", 0, TMPL_MSG_TOOL_CALLS);
	fake_put(&f, "{value:<|\"|>", -1, TMPL_LITERAL);
	fake_put(&f, "ok", 1, TMPL_MSG_CONTENT);
	fake_put(&f, "<|\"|>}<tool_response|>", -1, TMPL_LITERAL);
	uint32_t t1 = (uint32_t)f.out.len;
	fake_put(&f, "Done.", 2, TMPL_MSG_CONTENT);
	fake_put(&f, "<turn|>", -1, TMPL_LITERAL);
	struct tmpl_turn turns[] = {{0, t0, t1}, {2, t1, (uint32_t)f.out.len}};
	f.out.turns = turns;
	f.out.nturns = 2;
	unsigned char trained[3] = {1, 0, 1};
	long *spans = NULL;
	size_t nspans = 0;
	struct err err = {0};
	char buf[512];
	CHECK(chat_spans(&f.out, trained, NULL, 1, 3, &gm, &spans, &nspans, &err) == 0, "%s", err.msg);
	CHECK(nspans == 2 && !strcmp(span_text(&f, spans, 0, buf), "check{user_id:<|\"|>u-42<|\"|>}<tool_call|><|tool_response>"),
	      "[%s]", buf);
	CHECK(nspans == 2 && !strcmp(span_text(&f, spans, 1, buf), "Done.<turn|>"), "[%s]", buf);
	free(spans);

	memset(&f, 0, sizeof f);
	fake_put(&f, "<|start|>assistant<|channel|>analysis<|message|>", -1, TMPL_LITERAL);
	fake_put(&f, "think", 0, TMPL_MSG_CONTENT);
	fake_put(&f, "<|end|><|start|>assistant to=functions.", -1, TMPL_LITERAL);
	fake_put(&f, "f", 0, TMPL_MSG_TOOL_CALLS);
	fake_put(&f, "<|channel|>commentary json<|message|>", -1, TMPL_LITERAL);
	fake_put(&f, "{}", 0, TMPL_MSG_TOOL_CALLS);
	fake_put(&f, "<|call|>", -1, TMPL_LITERAL);
	t1 = (uint32_t)f.out.len;
	fake_put(&f, "<|start|>functions.", -1, TMPL_LITERAL);
	fake_put(&f, "f", 0, TMPL_MSG_TOOL_CALLS);
	fake_put(&f, " to=assistant<|channel|>commentary<|message|>", -1, TMPL_LITERAL);
	fake_put(&f, "ok", 1, TMPL_MSG_CONTENT);
	fake_put(&f, "<|end|>", -1, TMPL_LITERAL);
	struct tmpl_turn oturns[] = {{0, 0, t1}, {1, t1, (uint32_t)f.out.len}};
	f.out.turns = oturns;
	f.out.nturns = 2;
	spans = NULL;
	unsigned char otrained[2] = {1, 0};
	CHECK(chat_spans(&f.out, otrained, NULL, 1, 2, &gm, &spans, &nspans, &err) == 0, "%s", err.msg);
	CHECK(nspans == 1 && !strcmp(span_text(&f, spans, 0, buf),
				     "think<|end|><|start|>assistant to=functions.f<|channel|>commentary json<|message|>{}<|call|>"),
	      "[%s]", buf);
	free(spans);
}

/* A clone equals its source, keys in the same order, and shares no reference
 * count with it (what a worker thread relies on). */
static void test_jv_clone(void)
{
	const char *text = "{\"b\": [1, -2.5, \"x\\u00e9\", null, true, false, {}], \"a\": {\"k\": \"v\"}}";
	jv src = jv_parse(text);
	jv c = chat_jv_clone(jv_copy(src));
	char want[256];
	snprintf(want, sizeof want, "%s", jvtext(jv_copy(src)));
	CHECK(!strcmp(jvtext(jv_copy(c)), want), "clone %s", jvtext(jv_copy(c)));
	jv sb = jv_object_get(jv_copy(src), jv_string("b")), cb = jv_object_get(jv_copy(c), jv_string("b"));
	CHECK(jv_get_refcnt(sb) == 2 && jv_get_refcnt(cb) == 2, "shared reference counts: %d %d", jv_get_refcnt(sb),
	      jv_get_refcnt(cb));
	jv_free(sb), jv_free(cb);
	jv_free(c);
	CHECK(jvtext_eq(src, text), "source changed");
}

int main(void)
{
	RUN(test_input_parse);
	RUN(test_openai);
	RUN(test_alpaca);
	RUN(test_sharegpt);
	RUN(test_validate);
	RUN(test_args);
	RUN(test_json_find);
	RUN(test_vars);
	RUN(test_builtins);
	RUN(test_spans);
	RUN(test_spans_body);
	RUN(test_markers_rank);
	RUN(test_spans_no_marker);
	RUN(test_spans_generation);
	RUN(test_spans_later_turn);
	RUN(test_spans_stop_closer);
	RUN(test_spans_stop_between);
	RUN(test_jv_clone);
	jd_arena_free(&ar);
	return check_done();
}
