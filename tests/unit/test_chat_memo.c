/* test_chat_memo: the memo of shapes (lib/chat_memo.h). Conversations that
 * differ only in their contents' text share a shape; anything else the
 * renderings see (a role, a key, a tool call, the template, the tool list,
 * white space around a content) makes another; content parts and long
 * contents make none. A shape learned from a watched rendering (trim,
 * strip(), truth, tojson) writes
 * another record of it as rendering that record gives (text and spans), on
 * random contents; a rendering that compared a content teaches nothing. A
 * full table starts over. tests/ref/test_dsfmt_memo.py checks ds-fmt's
 * output with and without the memo on real templates. */
#include <stdio.h>
#include <string.h>

#include "chat_memo.h"
#include "check.h"
#include "jsonl.h"
#include "template.h"

static struct jd parse(struct jd_arena *a, const char *json)
{
	struct jd d = jd_null();
	struct err e = {0};
	CHECK(jsonl_parse_jd(json, strlen(json), a, &d, &e) == 0, "%s: %s", json, e.msg);
	return d;
}

#define CONV(u, a) "[{\"role\":\"user\",\"content\":\"" u "\"},{\"role\":\"assistant\",\"content\":\"" a "\"}]"

static void test_shapes(void)
{
	struct chat_memo *m = chat_memo_new();
	struct jd_arena a = {0};
	struct jd none = jd_null(), tools = parse(&a, "[{\"type\":\"function\"}]");
	int t1, t2; /* two templates: only their addresses matter */
	struct jd c1 = parse(&a, CONV("hi", "yes")), c2 = parse(&a, CONV("what is it?", "a \\\"quote\\\"\\nand more"));
	struct memo_shape *e1 = chat_memo_find(m, &t1, &c1, &none);
	CHECK(e1 && chat_memo_untried(e1), "a new shape");
	CHECK(chat_memo_find(m, &t1, &c2, &none) == e1, "other contents: the same shape");
	const char *other[] = {
		"[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yes\",\"name\":\"x\"}]",
		"[{\"role\":\"system\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yes\"}]",
		CONV(" hi", "yes"),
		CONV("hi", "yes\\n"),
		CONV("", "yes"),
		CONV("hi\\u3000", "yes"),
		"[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[1]}]",
		"[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[2]}]",
		"[{\"role\":\"user\",\"content\":\"hi\"}]",
	};
	struct memo_shape *seen[sizeof other / sizeof *other];
	for (size_t i = 0; i < sizeof other / sizeof *other; i++) {
		struct jd c = parse(&a, other[i]);
		seen[i] = chat_memo_find(m, &t1, &c, &none);
		CHECK(seen[i] && seen[i] != e1, "%s: another shape", other[i]);
		for (size_t j = 0; j < i; j++)
			CHECK(seen[i] != seen[j], "%s and %s: two shapes", other[i], other[j]);
	}
	CHECK(chat_memo_find(m, &t2, &c1, &none) != e1, "another template: another shape");
	CHECK(chat_memo_find(m, &t1, &c1, &tools) != e1, "a tool list: another shape");
	struct jd parts = parse(&a, "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}]");
	CHECK(!chat_memo_find(m, &t1, &parts, &none), "content parts: no shape");
	static char big[70000 + 200];
	int n = snprintf(big, sizeof big, "[{\"role\":\"user\",\"content\":\"");
	memset(big + n, 'a', 70000);
	snprintf(big + n + 70000, sizeof big - (size_t)n - 70000, "\"}]");
	struct jd long_one = parse(&a, big);
	CHECK(!chat_memo_find(m, &t1, &long_one, &none), "contents over 64 KiB: no shape");
	/* more shapes than the table holds: it starts over, and goes on working */
	int ok = 1;
	for (int i = 0; i < 5000 && ok; i++) {
		char role[160];
		snprintf(role, sizeof role, "[{\"role\":\"r%d\",\"content\":\"x\"}]", i);
		jd_arena_reset(&a);
		struct jd c = parse(&a, role);
		ok = chat_memo_find(m, &t1, &c, &none) != NULL;
	}
	CHECK(ok, "a shape found with the table full");
	jd_arena_reset(&a);
	c1 = parse(&a, CONV("hi", "yes"));
	struct memo_shape *again = chat_memo_find(m, &t1, &c1, &none);
	CHECK(again && chat_memo_untried(again), "after the table started over, the shape is new again");
	jd_arena_free(&a);
	chat_memo_free(m);
}

/* A rendering of t with the messages msgs, watched into w (or not). */
static int render(const struct tmpl *t, const struct jd *msgs, struct tmpl_watch *w, struct tmpl_output *out)
{
	struct err err = {0};
	struct tmpl_var vars[] = { { "messages", msgs } };
	struct tmpl_ctx *c = tmpl_ctx_new_layered(jv_invalid(), jv_invalid(), vars, 1, NULL, &err);
	CHECK(c, "%s", err.msg);
	if (!c)
		return -1;
	tmpl_ctx_watch(c, w);
	int rc = tmpl_render_ctx(t, c, SIZE_MAX, -1, NULL, out, &err);
	CHECK(rc == 0, "%s", err.msg);
	tmpl_ctx_free(c);
	return rc;
}

static void random_text(char *s, size_t cap)
{
	static const char *const parts[] = { "a", "\xd0\x96", " ", "\\n", "\\\"", "\\t", "\\u3000", "x", "\\\\", "<|e|>" };
	size_t n = 0, k = 1 + (size_t)rng_below(check_rng(), 8);
	for (size_t i = 0; i < k; i++)
		n += (size_t)snprintf(s + n, cap - n, "%s", parts[(size_t)rng_below(check_rng(), 10)]);
}

static void test_learn_and_write(void)
{
	static const char *const tpls[] = {
		"{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}</{{ m.role }}>\n{% endfor %}",
		"{% for m in messages %}{% if m.content %}[{{ m.content }}]{% endif %}{{ m.content.strip() }};{% endfor %}",
		"{% for m in messages %}{{ m.content | tojson }}{% endfor %}",
	};
	for (size_t ti = 0; ti < sizeof tpls / sizeof *tpls; ti++) {
		struct err err = {0};
		struct tmpl *t = tmpl_compile(tpls[ti], strlen(tpls[ti]), "t", &err);
		CHECK(t, "%s", err.msg);
		struct chat_memo *m = chat_memo_new();
		struct jd_arena a = {0};
		struct jd none = jd_null();
		for (int round = 0; round < 200; round++) {
			char u[256], r[256], json[700];
			random_text(u, sizeof u), random_text(r, sizeof r);
			snprintf(json, sizeof json, CONV("%s", "%s"), u, r);
			jd_arena_reset(&a);
			struct jd msgs = parse(&a, json);
			struct memo_shape *e = chat_memo_find(m, t, &msgs, &none);
			struct tmpl_output o;
			CHECK(e, "%s: a shape", json);
			if (!e)
				continue;
			if (chat_memo_untried(e)) {
				struct tmpl_watch w = {0};
				if (render(t, &msgs, &w, &o) < 0)
					continue;
				struct memo_learn *l = chat_memo_learn_begin(&o, &msgs, 0);
				long spans[2] = { 0, (long)o.len };
				chat_memo_learn_end(m, e, l, spans, 1, &w, 0);
				CHECK(!chat_memo_untried(e), "learned");
				tmpl_output_free(&o);
				continue;
			}
			struct jsonl_buf got = {0}, want = {0};
			long *sp = NULL, *none = NULL;
			size_t nsp = 0, nnone = 0;
			CHECK(chat_memo_put(m, e, &msgs, (size_t)16 << 20, &got, &sp, &nsp) == 0, "%s: written from its shape",
			      json);
			if (render(t, &msgs, NULL, &o) == 0) {
				jsonl_put_string(&want, o.text, o.len);
				CHECK(got.n == want.n && !memcmp(got.p, want.p, got.n), "%s: %.*s, rendered %.*s", json,
				      (int)got.n, got.p, (int)want.n, want.p);
				CHECK(nsp == 1 && sp && sp[0] == 0 && sp[1] == (long)o.len, "%s: the span [0, %zu)", json, o.len);
				size_t n0 = got.n;
				CHECK((chat_memo_put(m, e, &msgs, o.len ? o.len - 1 : 0, &got, &none, &nnone) < 0 && got.n == n0) ||
					      !o.len,
				      "over the output limit: not written");
				tmpl_output_free(&o);
			}
			free(got.p), free(want.p), free(sp), free(none);
		}
		unsigned long long replayed, learned, refused;
		chat_memo_stats(m, &replayed, &learned, &refused);
		CHECK(replayed > 50 && learned > 0 && !refused, "%llu written, %llu learned, %llu refused", replayed, learned,
		      refused);
		jd_arena_free(&a);
		chat_memo_free(m);
		tmpl_free(t);
	}
}

static void test_refused(void)
{
	const char *src = "{% for m in messages %}{% if m.content == 'x' %}X{% endif %}{{ m.content }}{% endfor %}";
	struct err err = {0};
	struct tmpl *t = tmpl_compile(src, strlen(src), "t", &err);
	struct chat_memo *m = chat_memo_new();
	struct jd_arena a = {0};
	struct jd none = jd_null(), msgs = parse(&a, CONV("x", "y"));
	struct memo_shape *e = chat_memo_find(m, t, &msgs, &none);
	struct tmpl_watch w = {0};
	struct tmpl_output o;
	if (e && render(t, &msgs, &w, &o) == 0) {
		CHECK(w.unreplayable && w.why && w.line == 1, "a comparison makes it unreplayable (%s, line %d)",
		      w.why ? w.why : "-", w.line);
		long spans[2] = { 0, (long)o.len };
		chat_memo_learn_end(m, e, chat_memo_learn_begin(&o, &msgs, 0), spans, 1, &w, 0);
		tmpl_output_free(&o);
		struct jsonl_buf b = {0};
		long *sp = NULL;
		size_t nsp = 0;
		CHECK(!chat_memo_untried(e) && chat_memo_put(m, e, &msgs, 1 << 20, &b, &sp, &nsp) < 0 && !b.n,
		      "refused: not written, not tried again");
		free(b.p), free(sp);
	}
	CHECK(e, "a shape");
	jd_arena_free(&a);
	chat_memo_free(m);
	tmpl_free(t);
}

int main(void)
{
	check_seed_init();
	RUN(test_shapes);
	RUN(test_learn_and_write);
	RUN(test_refused);
	tmpl_thread_release();
	return check_done();
}
