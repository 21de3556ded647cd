/* fuzz_chat_lines: the line memo (chat_memo_line_put) against parsing.
 * Each line of the input is offered to the line memo first; a line it
 * writes must parse, and what it wrote must be the rendering of that parse
 * (the text as a JSON string, its one span) and the parse's top-level
 * members. A line it does not take is parsed, rendered through the memo of
 * shapes and learned from, as ds-fmt does, so that later lines of the same
 * skeleton are written from it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chat_memo.h"
#include "jsonl.h"
#include "template.h"

/* the message comparison: a shape whose contents must be the same, or not, as they were */
static const char SRC[] = "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}|{{ m.content }}"
			  "{% if m.content %}!{% endif %}{% if m == messages[0] %}F{% endif %}</{{ m.role }}>{% endfor %}"
			  "{{ tools | tojson }}";

static int render(const struct tmpl *t, const struct jd *msgs, const struct jd *tools, struct tmpl_watch *w,
		  struct tmpl_output *out)
{
	struct err err = {0};
	struct jd null = jd_null();
	struct tmpl_var vars[] = {{"messages", msgs}, {"tools", tools ? tools : &null}};
	struct tmpl_ctx *c = tmpl_ctx_new_layered(jv_invalid(), jv_invalid(), vars, 2, NULL, &err);
	if (!c)
		return -1;
	if (w)
		tmpl_ctx_watch(c, w);
	int rc = tmpl_render_ctx(t, c, 1 << 20, -1, NULL, out, &err);
	tmpl_ctx_free(c);
	return rc;
}

/* The members of rec but "messages" as line_put hands them back: arrays and objects by their kind. */
static void put_members(struct jsonl_buf *b, const struct jd_member *mb, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (!strcmp(mb[i].key.u.s, "messages"))
			continue;
		jsonl_put_string(b, mb[i].key.u.s, mb[i].key.n);
		if (mb[i].val.kind == JD_ARRAY || mb[i].val.kind == JD_OBJECT)
			jsonl_put(b, mb[i].val.kind == JD_ARRAY ? "[]" : "{}", 2);
		else
			jsonl_put_jd(b, &mb[i].val);
	}
}

static void one_line(struct chat_memo *m, const struct tmpl *t, const char *line, size_t len, struct jd_arena *a)
{
	struct jsonl_buf got = {0}, want = {0};
	long *sp = NULL;
	size_t nsp = 0, ntop = 0;
	const struct jd_member *top = NULL;
	int written = chat_memo_line_put(m, line, len, NULL, 1 << 20, &got, &sp, &nsp, &top, &ntop) == 0;
	struct jd rec;
	struct err e = {0};
	int parsed = jsonl_parse_record_jd("f", 1, line, len, NULL, a, &rec, &e) > 0;
	const struct jd *msgs = parsed ? jd_get(&rec, "messages") : NULL, *tools = parsed ? jd_get(&rec, "tools") : NULL;
	if (written && (!msgs || msgs->kind != JD_ARRAY))
		abort(); /* written, but not a record of messages */
	if (written) {
		struct tmpl_output o;
		if (render(t, msgs, tools, NULL, &o) < 0)
			abort();
		jsonl_put_string(&want, o.text, o.len);
		if (got.n != want.n || memcmp(got.p, want.p, got.n) || nsp != 1 || sp[0] != 0 || sp[1] != (long)o.len)
			abort(); /* not the rendering of the line's parse */
		tmpl_output_free(&o);
		struct jsonl_buf gm = {0}, wm = {0};
		put_members(&gm, top, ntop);
		put_members(&wm, rec.u.members, rec.n);
		if (gm.n != wm.n || (gm.n && memcmp(gm.p, wm.p, gm.n)))
			abort(); /* not the parse's members */
		free(gm.p), free(wm.p);
	} else if (msgs && msgs->kind == JD_ARRAY) {
		struct memo_shape *s = chat_memo_find(m, t, msgs, tools ? tools : &(struct jd){0});
		struct tmpl_watch w = {0};
		struct tmpl_output o;
		if (s && chat_memo_untried(s) && render(t, msgs, tools, &w, &o) == 0) {
			long spans[2] = {0, (long)o.len};
			chat_memo_learn_end(m, s, chat_memo_learn_begin(&o, msgs, 0), spans, 1, &w, 0);
			tmpl_output_free(&o);
		}
		chat_memo_line_learn(m, line, len, s, msgs, NULL);
	}
	free(got.p), free(want.p); /* sp is the memo's */
	jd_arena_reset(a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct tmpl *t;
	struct err err = {0};
	if (!t && !(t = tmpl_compile(SRC, strlen(SRC), "t", &err)))
		abort();
	struct chat_memo *m = chat_memo_new();
	struct jd_arena a = {0};
	char *copy = malloc(size + 1);
	if (!m || !copy)
		abort();
	memcpy(copy, data, size);
	copy[size] = 0;
	for (char *s = copy, *end = copy + size; s < end;) {
		char *nl = memchr(s, '\n', (size_t)(end - s));
		size_t n = nl ? (size_t)(nl - s) : (size_t)(end - s);
		s[n] = 0; /* a line ends in NUL, as the reader hands it out */
		one_line(m, t, s, n, &a);
		s += n + 1;
	}
	jd_arena_free(&a);
	chat_memo_free(m);
	free(copy);
	return 0;
}
