/* test_chat_memo: the memo of shapes (lib/chat_memo.h). Conversations that
 * differ only in their contents' text share a shape; anything else the
 * renderings see (a role, a key, a tool call, the template, the tool list,
 * white space around a content) makes another; content parts and long
 * contents make none. A shape learned from a watched rendering (trim,
 * strip(), truth, tojson) writes
 * another record of it as rendering that record gives (text and spans), on
 * random contents; a rendering that compared a content teaches nothing. A
 * full table starts over. The line memo writes a line of a skeleton it
 * learned as rendering its parse gives, and refuses lines the parser
 * would read otherwise. tests/ref/test_dsfmt_memo.py checks ds-fmt's
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

/* A rendering of t with the messages msgs (and tools, or NULL), watched into w (or not). */
/* The rendering of msgs' first nmsg messages (SIZE_MAX: all), watched into w (NULL: not). */
static int render_n(const struct tmpl *t, const struct jd *msgs, const struct jd *tools, size_t nmsg,
		    struct tmpl_watch *w, struct tmpl_output *out)
{
	struct err err = {0};
	struct tmpl_var vars[] = { { "messages", msgs }, { "tools", tools } };
	struct tmpl_ctx *c = tmpl_ctx_new_layered(jv_invalid(), jv_invalid(), vars, tools ? 2 : 1, NULL, &err);
	CHECK(c, "%s", err.msg);
	if (!c)
		return -1;
	tmpl_ctx_watch(c, w);
	int rc = tmpl_render_ctx(t, c, nmsg, -1, NULL, out, &err);
	CHECK(rc == 0, "%s", err.msg);
	tmpl_ctx_free(c);
	return rc;
}

static int render_with(const struct tmpl *t, const struct jd *msgs, const struct jd *tools, struct tmpl_watch *w,
		       struct tmpl_output *out)
{
	return render_n(t, msgs, tools, SIZE_MAX, w, out);
}

static int render(const struct tmpl *t, const struct jd *msgs, struct tmpl_watch *w, struct tmpl_output *out)
{
	return render_with(t, msgs, NULL, w, out);
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
		struct chat_memo_stats st = chat_memo_stats(m);
		CHECK(st.replayed > 50 && st.learned > 0 && !st.refused, "%llu written, %llu learned, %llu refused",
		      st.replayed, st.learned, st.refused);
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

/* Puts msgs through shape e: when written, the text must be o's as a JSON
 * string and (span not NULL) its one span span. Returns whether written. */
static int put_checked(struct chat_memo *m, struct memo_shape *e, const struct jd *msgs, const struct tmpl_output *o,
		       const long *span, const char *what)
{
	struct jsonl_buf got = {0}, want = {0};
	long *sp = NULL;
	size_t nsp = 0;
	int written = chat_memo_put(m, e, msgs, 1 << 20, &got, &sp, &nsp) == 0;
	jsonl_put_string(&want, o->text, o->len);
	CHECK(!written || (got.n == want.n && !memcmp(got.p, want.p, got.n)), "%s: %.*s, rendered %.*s", what,
	      (int)got.n, got.p, (int)want.n, want.p);
	CHECK(!written || !span || (nsp == 1 && sp[0] == span[0] && sp[1] == span[1]), "%s: the span", what);
	free(got.p), free(want.p), free(sp);
	return written;
}

/* Two messages compared that are equal but for their contents: the watch
 * keeps the pair and whether they were the same; a record where they are
 * not as they were is not written, the others are as rendering gives.
 * More pairs than the watch holds make the rendering unreplayable. */
static void test_sames(void)
{
	const char *src = "{% for m in messages %}{% if m == messages[0] %}F{% endif %}{{ m.content }};{% endfor %}";
	struct err err = {0};
	struct tmpl *t = tmpl_compile(src, strlen(src), "t", &err);
	struct chat_memo *m = chat_memo_new();
	struct jd_arena a = {0};
	struct jd none = jd_null();
	int learned_same = -1, written = 0, declined = 0;
	for (int round = 0; t && round < 200; round++) {
		const char *w[] = {"x", "y"};
		int u0 = rng_below(check_rng(), 2), u2 = rng_below(check_rng(), 2);
		char json[300];
		snprintf(json, sizeof json,
			 "[{\"role\":\"user\",\"content\":\"%s\"},{\"role\":\"assistant\",\"content\":\"a\"},"
			 "{\"role\":\"user\",\"content\":\"%s\"}]",
			 w[u0], w[u2]);
		jd_arena_reset(&a);
		struct jd msgs = parse(&a, json);
		struct memo_shape *e = chat_memo_find(m, t, &msgs, &none);
		struct tmpl_output o;
		struct tmpl_watch wt = {0};
		if (!e || render(t, &msgs, &wt, &o) < 0)
			continue;
		CHECK(!wt.unreplayable && wt.nsame == 1 && wt.same[0].a == 0 && wt.same[0].b == 2 &&
			      wt.same[0].same == (u0 == u2),
		      "%s: %u pairs kept (%d %d %d), unreplayable %d", json, wt.nsame, wt.same[0].a, wt.same[0].b,
		      wt.same[0].same, wt.unreplayable);
		if (chat_memo_untried(e)) {
			long spans[2] = {0, (long)o.len};
			chat_memo_learn_end(m, e, chat_memo_learn_begin(&o, &msgs, 0), spans, 1, &wt, 0);
			learned_same = u0 == u2;
		} else {
			int put = put_checked(m, e, &msgs, &o, NULL, json);
			CHECK(put == ((u0 == u2) == learned_same), "%s: written %d, contents the same %d, learned %d", json,
			      put, u0 == u2, learned_same);
			written += put, declined += !put;
		}
		tmpl_output_free(&o);
	}
	CHECK(written > 20 && declined > 20, "%d written, %d not", written, declined);
	tmpl_free(t);
	/* every user message with every other: 78 pairs */
	src = "{% for m in messages %}{% for k in messages %}{% if m == k %}={% endif %}{% endfor %}{% endfor %}";
	t = tmpl_compile(src, strlen(src), "t", &err);
	char j[1024];
	size_t n = 0;
	for (int i = 0; i < 13; i++)
		n += (size_t)snprintf(j + n, sizeof j - n, "%s{\"role\":\"user\",\"content\":\"%d\"}", i ? "," : "[", i);
	snprintf(j + n, sizeof j - n, "]");
	jd_arena_reset(&a);
	struct jd msgs = parse(&a, j);
	struct tmpl_watch wt = {0};
	struct tmpl_output o;
	if (t && render(t, &msgs, &wt, &o) == 0) {
		CHECK(wt.unreplayable && wt.nsame == TMPL_WATCH_SAMES, "78 pairs: unreplayable %d, %u kept", wt.unreplayable,
		      wt.nsame);
		tmpl_output_free(&o);
	}
	CHECK(t, "%s", err.msg);
	jd_arena_free(&a);
	chat_memo_free(m);
	tmpl_free(t);
}

/* A prefix's rendering that is not the text's beginning (the system
 * prompt printed in the last user message only): a record is written as
 * rendering gives, text and span, unless that prefix's rendering with its
 * contents begins its text after all (system "p]q", user "p", answer
 * "q p]r"), which it declines. A second such prefix whose contents are not
 * pieces (printed from its second byte) leaves the shape refused, its
 * kept prefixes freed once (ASan). */
static void test_apart(void)
{
	const char *src = "{%- for m in messages %}{% if m.role == 'user' %}[{% if loop.last and messages[0].role == "
			  "'system' %}{{ messages[0].content }} {% endif %}{{ m.content }}]{% elif m.role == 'assistant' "
			  "%}{{ m.content }};{% endif %}{% endfor %}";
	struct err err = {0};
	struct tmpl *t = tmpl_compile(src, strlen(src), "t", &err);
	struct chat_memo *m = chat_memo_new();
	struct jd_arena a = {0};
	struct jd none = jd_null();
	int written = 0, declined = 0;
	for (int round = 0; t && round < 300; round++) {
		static const char *const sys[] = {"sys", "p]q"}, *const user[] = {"u", "p"}, *const ans[] = {"ans", "q p]r"};
		/* k = 7: "[p]q p]" is the beginning of "[p]q p]r;", the text,
		 * by its bytes: the first three records teach nothing */
		int k = round < 3 ? 7 : round == 3 ? 0 : rng_below(check_rng(), 8);
		char json[300];
		snprintf(json, sizeof json,
			 "[{\"role\":\"system\",\"content\":\"%s\"},{\"role\":\"user\",\"content\":\"%s\"},"
			 "{\"role\":\"assistant\",\"content\":\"%s\"}]",
			 sys[k & 1], user[k >> 1 & 1], ans[k >> 2 & 1]);
		jd_arena_reset(&a);
		struct jd msgs = parse(&a, json);
		struct memo_shape *e = chat_memo_find(m, t, &msgs, &none);
		struct tmpl_output o, po;
		struct tmpl_watch w = {0};
		if (!e || render_with(t, &msgs, NULL, &w, &o) < 0)
			continue;
		if (render_n(t, &msgs, NULL, 2, &w, &po) < 0) {
			tmpl_output_free(&o);
			continue;
		}
		int begins = po.len <= o.len && !memcmp(po.text, o.text, po.len);
		long spans[2] = {(long)(o.len - strlen(ans[k >> 2 & 1]) - 1), (long)o.len};
		if (chat_memo_untried(e)) { /* as chat.c learns */
			CHECK(begins == (round < 3) && !w.unreplayable && round <= 3, "round %d: begins %d", round, begins);
			struct memo_learn *l = chat_memo_learn_begin(&o, &msgs, 0);
			if (begins)
				chat_memo_learn_prefix(l, &po);
			else
				chat_memo_learn_apart(l, &po);
			chat_memo_learn_end(m, e, l, spans, 1, &w, 0);
			CHECK(chat_memo_untried(e) == begins, "round %d: untried %d", round, chat_memo_untried(e));
		} else {
			int put = put_checked(m, e, &msgs, &o, spans, json);
			CHECK(put == !begins, "%s: written %d, the prefix begins the text %d", json, put, begins);
			written += put, declined += !put;
		}
		tmpl_output_free(&po);
		tmpl_output_free(&o);
	}
	CHECK(written > 50 && declined > 10 && chat_memo_stats(m).refused == 0, "%d written, %d declined", written,
	      declined);
	/* a shape whose prefix begins the text by its bytes in record after
	 * record is refused at the fourth */
	struct chat_memo *m4 = chat_memo_new();
	for (int round = 0; t && round < 4; round++) {
		jd_arena_reset(&a);
		struct jd msgs = parse(&a, "[{\"role\":\"system\",\"content\":\"p]q\"},{\"role\":\"user\","
					   "\"content\":\"p\"},{\"role\":\"assistant\",\"content\":\"q p]r\"}]");
		struct memo_shape *e = chat_memo_find(m4, t, &msgs, &none);
		struct tmpl_output o, po;
		struct tmpl_watch w = {0};
		if (!e || !chat_memo_untried(e) || render_with(t, &msgs, NULL, &w, &o) < 0)
			break;
		if (render_n(t, &msgs, NULL, 2, &w, &po) == 0) {
			struct memo_learn *l = chat_memo_learn_begin(&o, &msgs, 0);
			chat_memo_learn_prefix(l, &po);
			long spans[2] = {(long)po.len, (long)o.len};
			chat_memo_learn_end(m4, e, l, spans, 1, &w, 0);
			tmpl_output_free(&po);
		}
		tmpl_output_free(&o);
		CHECK(chat_memo_untried(e) == (round < 3) && chat_memo_stats(m4).refused == (round == 3),
		      "round %d: untried %d, refused %llu", round, chat_memo_untried(e), chat_memo_stats(m4).refused);
	}
	chat_memo_free(m4);
	tmpl_free(t);
	/* a second prefix whose content is printed from its second byte: not pieces */
	src = "{%- for m in messages %}{% if m.role == 'user' %}[{% if loop.last and messages[0].role == 'system' %}"
	      "{{ messages[0].content }} {% endif %}{% if loop.last and loop.index > 2 %}{{ m.content[1:] }}{% else %}"
	      "{{ m.content }}{% endif %}]{% elif m.role == 'assistant' %}{{ m.content }};{% endif %}{% endfor %}";
	t = tmpl_compile(src, strlen(src), "t", &err);
	jd_arena_reset(&a);
	struct jd msgs = parse(&a, "[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"u\"},"
				   "{\"role\":\"assistant\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"vw\"},"
				   "{\"role\":\"assistant\",\"content\":\"b\"}]");
	struct memo_shape *e = t ? chat_memo_find(m, t, &msgs, &none) : NULL;
	struct tmpl_output o, p1, p2;
	struct tmpl_watch w = {0};
	if (e && render_with(t, &msgs, NULL, &w, &o) == 0) {
		struct memo_learn *l = chat_memo_learn_begin(&o, &msgs, 0);
		if (render_n(t, &msgs, NULL, 2, &w, &p1) == 0) {
			chat_memo_learn_apart(l, &p1);
			tmpl_output_free(&p1);
		}
		if (render_n(t, &msgs, NULL, 4, &w, &p2) == 0) {
			chat_memo_learn_apart(l, &p2);
			tmpl_output_free(&p2);
		}
		long spans[2] = {0, (long)o.len};
		chat_memo_learn_end(m, e, l, spans, 1, &w, 0);
		CHECK(!chat_memo_untried(e) && chat_memo_stats(m).refused == 1, "refused: %llu",
		      chat_memo_stats(m).refused);
		tmpl_output_free(&o);
	}
	CHECK(t && e, "%s", err.msg);
	jd_arena_free(&a);
	chat_memo_free(m);
	tmpl_free(t);
}

/* A line the line memo did not write, as ds-fmt goes on with it: its
 * shape found (and learned, the first time, from a watched rendering with
 * one span over it all), then the line learned. */
static void learn_line(struct chat_memo *m, const struct tmpl *t, const char *line, const struct jd *msgs,
		       const struct jd *tools)
{
	struct memo_shape *e = chat_memo_find(m, t, msgs, tools);
	struct tmpl_watch w = {0};
	struct tmpl_output o;
	if (e && chat_memo_untried(e) && render_with(t, msgs, tools, &w, &o) == 0) {
		long spans[2] = {0, (long)o.len};
		chat_memo_learn_end(m, e, chat_memo_learn_begin(&o, msgs, 0), spans, 1, &w, 0);
		tmpl_output_free(&o);
	}
	chat_memo_line_learn(m, line, strlen(line), e, msgs, NULL);
}

/* Puts line through the line memo: written, it must be what rendering its
 * parse gives (text, span, top-level members but "messages"); else it is
 * learned. Returns whether it was written. */
static int put_line(struct chat_memo *m, const struct tmpl *t, struct jd_arena *a, const char *line)
{
	jd_arena_reset(a);
	struct jd rec = parse(a, line);
	const struct jd *msgs = jd_get(&rec, "messages"), *tools = jd_get(&rec, "tools");
	struct jsonl_buf got = {0};
	long *sp = NULL;
	size_t nsp = 0, ntop = 0;
	const struct jd_member *top = NULL;
	int written = chat_memo_line_put(m, line, strlen(line), NULL, 1 << 20, &got, &sp, &nsp, &top, &ntop) == 0;
	if (written) {
		struct jsonl_buf want = {0}, gtop = {0}, wtop = {0};
		struct tmpl_output o;
		if (render_with(t, msgs, tools, NULL, &o) == 0) {
			jsonl_put_string(&want, o.text, o.len);
			CHECK(got.n == want.n && !memcmp(got.p, want.p, got.n), "%s: %.*s, rendered %.*s", line, (int)got.n,
			      got.p, (int)want.n, want.p);
			CHECK(nsp == 1 && sp[0] == 0 && sp[1] == (long)o.len, "%s: the span", line);
			tmpl_output_free(&o);
		}
		for (size_t k = 0; k < ntop; k++) /* the members but "messages", as parsed */
			if (top[k].val.kind != JD_ARRAY)
				jsonl_put_string(&gtop, top[k].key.u.s, top[k].key.n), jsonl_put_jd(&gtop, &top[k].val);
		for (uint32_t k = 0; k < rec.n; k++)
			if (strcmp(rec.u.members[k].key.u.s, "messages") && rec.u.members[k].val.kind != JD_ARRAY)
				jsonl_put_string(&wtop, rec.u.members[k].key.u.s, rec.u.members[k].key.n),
					jsonl_put_jd(&wtop, &rec.u.members[k].val);
		CHECK(ntop == rec.n - 1 && gtop.n == wtop.n && !memcmp(gtop.p, wtop.p, gtop.n), "%s: its members %.*s",
		      line, (int)gtop.n, gtop.p);
		free(want.p), free(gtop.p), free(wtop.p);
	} else {
		learn_line(m, t, line, msgs, tools);
	}
	free(got.p); /* sp is the memo's */
	return written;
}

/* Lines the memo must not take, though their skeleton is that of a line it
 * learned; each after a line of that skeleton, put twice (a run of lines of
 * one key, read against its key first). */
static void refuse_lines(struct chat_memo *m, const struct tmpl *t, struct jd_arena *a)
{
	static const char *const refused[] = {
		"{\"id\": 1, \"messages\": " CONV("a\\u0000", "b") ", \"src\": \"s\\n\", \"tools\": []}", /* jq's */
		"{\"id\": 1, \"messages\": " CONV("a\\ud800", "b") ", \"src\": \"s\\n\", \"tools\": []}",
		"{\"id\": 1, \"messages\": " CONV("a\xff", "b") ", \"src\": \"s\\n\", \"tools\": []}",  /* not UTF-8 */
		"{\"id\": 1, \"messages\": " CONV("a\x01", "b") ", \"src\": \"s\\n\", \"tools\": []}",  /* a control byte */
		"{\"id\": 123456789012345678901, \"messages\": " CONV("a", "b") ", \"src\": \"s\\n\", \"tools\": []}",
		"{\"id\": 1, \"messages\": " CONV("a", "b") ", \"src\": \"s\\u0000\", \"tools\": []}",
		"{\"id\": 1, \"messages\": " CONV("a", "b") ", \"src\": \"s\\n\", \"tools\": [], \"id\": 2}",
		"{\"\\u0069d\": 1, \"messages\": " CONV("a", "b") ", \"src\": \"s\\n\", \"tools\": []}",
		"{\"id\": 1, \"messages\": " CONV("a", "b") ", \"src\": \"s\\n\", \"tools\": []} x",
		"{\"id\": 1, \"messages\": " CONV("a", "b") ", \"src\": \"s\\n\", \"tools\": []",
		"{\"id\": 1, \"src\": \"s\\n\", \"tools\": []}",
		"[{\"id\": 1}]",
		"{\"id\": 1, \"messages\": " CONV("a", "b") ", \"src\": \"s\\n\", \"tools\": [], \"x\": 1}",
		"{\"id\": 1, \"messages\": " CONV("a", "b") ", \"src\": \"s\", \"tools\": [1]}",
		/* one byte changed before a hole: a number's white space, a content's quote */
		"{\"id\":+1, \"messages\": " CONV("a", "b") ", \"src\": \"s\\n\", \"tools\": []}",
		"{\"id\": 1, \"messages\": [{\"role\":\"user\",\"content\": a\"},{\"role\":\"assistant\",\"content\":\"b\"}], "
		"\"src\": \"s\\n\", \"tools\": []}",
	};
	const char *good = "{\"id\": 7, \"messages\": " CONV("c", "d") ", \"src\": \"t\\n\", \"tools\": []}";
	for (int k = 0; k < 3; k++) /* learned, then written */
		put_line(m, t, a, good);
	/* an id a double would round is a hole like any other, written whole */
	const char *big = "{\"id\": -1234567890123456789, \"messages\": " CONV("e", "f") ", \"src\": \"u\\n\", \"tools\": []}";
	CHECK(put_line(m, t, a, big), "a 19-digit id: not written");
	struct jsonl_buf bb = {0}, id = {0};
	long *bsp = NULL;
	size_t bnsp = 0, bntop = 0;
	const struct jd_member *btop = NULL;
	if (chat_memo_line_put(m, big, strlen(big), NULL, 1 << 20, &bb, &bsp, &bnsp, &btop, &bntop) == 0)
		for (size_t k = 0; k < bntop; k++)
			if (jd_is(&btop[k].key, "id"))
				jsonl_put_jd(&id, &btop[k].val);
	CHECK(id.n == 20 && !memcmp(id.p, "-1234567890123456789", 20), "the id written %.*s", (int)id.n, id.p);
	free(bb.p), free(id.p);
	/* ids of each form a number takes, each written as its parse is (put_line compares) */
	static const char *const ids[] = {"0", "-0", "9", "-9", "123456789012345", "-123456789012345", "1234567890123456",
					  "1.5", "-0.0", "1e3", "2E-2", "10", "100000000000000"};
	for (size_t k = 0; k < sizeof ids / sizeof *ids; k++) {
		char line[256];
		snprintf(line, sizeof line, "{\"id\": %s, \"messages\": " CONV("g", "h") ", \"src\": \"v\\n\", \"tools\": []}",
			 ids[k]);
		CHECK(put_line(m, t, a, line), "id %s: not written", ids[k]);
	}
	static const char *const not_numbers[] = {"05", "-", "1.", "+1", "1e", "--1", "1-2", "0x1"};
	for (size_t k = 0; k < sizeof not_numbers / sizeof *not_numbers; k++) {
		char line[256];
		snprintf(line, sizeof line, "{\"id\": %s, \"messages\": " CONV("g", "h") ", \"src\": \"v\\n\", \"tools\": []}",
			 not_numbers[k]);
		struct jsonl_buf nb = {0};
		long *nsp = NULL;
		size_t nnsp = 0, nntop = 0;
		const struct jd_member *ntop = NULL;
		CHECK(chat_memo_line_put(m, line, strlen(line), NULL, 1 << 20, &nb, &nsp, &nnsp, &ntop, &nntop) < 0 && !nb.n,
		      "id %s: written", not_numbers[k]);
		free(nb.p);
	}
	for (size_t k = 0; k < sizeof refused / sizeof *refused; k++) {
		CHECK(put_line(m, t, a, good) && put_line(m, t, a, good), "a line of the skeleton is not written");
		struct jsonl_buf b = {0};
		long *sp = NULL;
		size_t nsp = 0, ntop = 0;
		const struct jd_member *top = NULL;
		CHECK(chat_memo_line_put(m, refused[k], strlen(refused[k]), NULL, 1 << 20, &b, &sp, &nsp, &top, &ntop) < 0 &&
			      !b.n,
		      "refused: %s", refused[k]);
		free(b.p);
	}
}

/* A line's random text: mostly of one class (no white space at its ends,
 * not empty), so that lines of one key come in runs; at times any. */
static void line_text(char *s, size_t cap)
{
	if (rng_below(check_rng(), 8) == 0) {
		random_text(s, cap);
		return;
	}
	static const char *const parts[] = {"a", "\xd0\x96", "\\n", "\\\"", "x", "\\\\", "<|e|>", "\\u00e9"};
	size_t n = (size_t)snprintf(s, cap, "b");
	for (size_t i = 0, k = (size_t)rng_below(check_rng(), 6); i < k; i++)
		n += (size_t)snprintf(s + n, cap - n, "%s", parts[(size_t)rng_below(check_rng(), 8)]);
	snprintf(s + n, cap - n, "e");
}

/* The line memo: lines of one skeleton, their contents and top-level
 * strings and numbers random, are written as rendering their parse gives
 * once one was learned; lines it must not take are refused even when their
 * skeleton is one it knows. runs: lines of one key in a row (their tool
 * list changing every 10 lines, not every line), read against the key of
 * the line before. */
static void lines_of_one_skeleton(int runs)
{
	const char *src = "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}</{{ m.role }}>\n{% endfor %}"
			  "{{ tools | tojson }}";
	struct err err = {0};
	struct tmpl *t = tmpl_compile(src, strlen(src), "t", &err);
	CHECK(t, "%s", err.msg);
	struct chat_memo *m = chat_memo_new();
	struct jd_arena a = {0};
	int written = 0;
	/* tool lists kept by the line memo: two of the same beginning */
	static const char *const tool_lists[] = {
		"",
		"{\"type\": \"function\", \"function\": {\"name\": \"get_balance\", \"description\": \"The balance of "
		"the user's account, in euros, as the bank's ledger holds it today.\"}}",
		"{\"type\": \"function\", \"function\": {\"name\": \"get_balance\", \"description\": \"The balance of "
		"the user's account, in euros, as the bank's ledger held it yesterday.\"}}",
	};
	for (int round = 0; round < 300; round++) {
		char u[256], r[256], line[1000];
		if (runs)
			line_text(u, sizeof u), line_text(r, sizeof r);
		else
			random_text(u, sizeof u), random_text(r, sizeof r);
		int list = runs ? round / 10 % 3 : round % 3, id = round - 100 + (runs ? (int)rng_below(check_rng(), 3) * 1000 : 0);
		snprintf(line, sizeof line,
			 "{\"id\": %d, \"messages\": " CONV("%s", "%s") ", \"src\": \"s%d\\n\", \"tools\": [%s]}", id, u, r,
			 round, tool_lists[list]);
		written += put_line(m, t, &a, line);
	}
	CHECK(written > 150 && chat_memo_stats(m).unparsed == (unsigned long long)written, "%d of 300 lines written",
	      written);
	refuse_lines(m, t, &a);
	jd_arena_free(&a);
	chat_memo_free(m);
	tmpl_free(t);
}

static void test_lines(void) { lines_of_one_skeleton(0); }
static void test_lines_in_runs(void) { lines_of_one_skeleton(1); }

/* The memo starts over (a full table) between a line's scan and its
 * learning: the line's key names kept texts that are gone, and a later
 * line whose other tool list took the same number must not be written
 * from the shape of the first. */
static void test_lines_start_over(void)
{
	const char *src = "{% for m in messages %}{{ m.content }};{% endfor %}{{ tools | tojson }}";
	struct err err = {0};
	struct tmpl *t = tmpl_compile(src, strlen(src), "t", &err);
	struct chat_memo *m = chat_memo_new();
	struct jd_arena a = {0};
	struct jd none = jd_null();
	const char *fmt = "{\"messages\": " CONV("%s", "b") ", \"tools\": [{\"type\": \"function\", \"function\": "
			  "{\"name\": \"%s\", \"description\": \"a tool list long enough to be kept by the line memo, "
			  "named by its number in the key\"}}]}";
	char l1[600], l2[600], l3[600];
	snprintf(l1, sizeof l1, fmt, "q", "first");
	snprintf(l2, sizeof l2, fmt, "q", "other");
	snprintf(l3, sizeof l3, fmt, "r", "other");
	struct jsonl_buf b = {0};
	long *sp = NULL;
	size_t nsp = 0, ntop = 0;
	const struct jd_member *top;
	int written = 0;
	/* a full table of shapes */
	for (int i = 0; i < 4096; i++) {
		char json[200];
		snprintf(json, sizeof json, "[{\"role\":\"user\",\"content\":\"x\",\"n\":%d}]", i);
		jd_arena_reset(&a);
		struct jd msgs = parse(&a, json);
		chat_memo_find(m, t, &msgs, &none);
	}
	/* l1: scanned (its tool list kept), then its shape starts the memo over, then learned */
	const char *lines[] = {l1, l2, l3};
	for (int k = 0; k < 3; k++) {
		jd_arena_reset(&a);
		struct jd rec = parse(&a, lines[k]);
		const struct jd *msgs = jd_get(&rec, "messages"), *tools = jd_get(&rec, "tools");
		b.n = 0;
		if (chat_memo_line_put(m, lines[k], strlen(lines[k]), NULL, 1 << 20, &b, &sp, &nsp, &top, &ntop) == 0) {
			struct tmpl_output o;
			struct jsonl_buf want = {0};
			written |= 1 << k;
			if (render_with(t, msgs, tools, NULL, &o) == 0) {
				jsonl_put_string(&want, o.text, o.len);
				CHECK(b.n == want.n && !memcmp(b.p, want.p, b.n), "line %d: %.*s, rendered %.*s", k + 1, (int)b.n,
				      b.p, (int)want.n, want.p);
				tmpl_output_free(&o);
			}
			free(want.p);
		} else {
			learn_line(m, t, lines[k], msgs, tools);
		}
	}
	/* l2 learned afresh after the start over; l3, of its tool list, written from it */
	CHECK(written == 1 << 2, "lines written: %#x, want line 3 alone", written);
	free(b.p);
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
	RUN(test_sames);
	RUN(test_apart);
	RUN(test_lines);
	RUN(test_lines_in_runs);
	RUN(test_lines_start_over);
	tmpl_thread_release();
	return check_done();
}
