/* fuzz_template: any bytes as a chat template, compiled and rendered with a
 * small fixed conversation under tight limits. Compiling either fails with a
 * message or gives a template; rendering either fails with a message or gives
 * an output whose runs tile it exactly and whose generation ranges lie
 * inside it. Every prefix of the conversation rendered with turns copied
 * from the traced whole rendering (tmpl_render_prefix) comes out as its
 * plain rendering does, or the plain one ran out of steps. A rendering
 * watched for chat's memo (tmpl_ctx_watch) is the same rendering; when
 * the watch finds it replayable, the conversation with other contents of
 * the same kinds (empty or not, white space around them or not) renders as
 * the first one's text with each content put in its place, whole, trimmed
 * or as tojson as there. No crash, no leak, no hang. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "template.h"

static const char CTX[] =
	"{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
	" {\"role\": \"user\", \"content\": \"  Hi \\u00e9 <tool_response>\\n\"},"
	" {\"role\": \"assistant\", \"content\": \"<think>\\nx\\n</think>\\n\\nok\", \"tool_calls\": [{\"type\": \"function\","
	" \"function\": {\"name\": \"f\", \"arguments\": {\"a\": [1, 2.5, null, true], \"b\": \"s\"}}}]},"
	" {\"role\": \"tool\", \"content\": \"{\\\"r\\\": 1}\"}],"
	" \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {\"type\": \"object\"}}}],"
	" \"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}";

/* CTX with other contents, each of the same kind. */
static const char CTX_B[] =
	"{\"messages\": [{\"role\": \"system\", \"content\": \"Talk at length, please\"},"
	" {\"role\": \"user\", \"content\": \" \\u3000ok\\t\"},"
	" {\"role\": \"assistant\", \"content\": \"x\", \"tool_calls\": [{\"type\": \"function\","
	" \"function\": {\"name\": \"f\", \"arguments\": {\"a\": [1, 2.5, null, true], \"b\": \"s\"}}}]},"
	" {\"role\": \"tool\", \"content\": \"plain, not JSON\"}],"
	" \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {\"type\": \"object\"}}}],"
	" \"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}";

/* The four messages' contents of CTX ([0]) and CTX_B ([1]), read once. */
static char *contents[2][4];

static void contents_read(void)
{
	for (int k = 0; k < 2 && !contents[k][0]; k++) {
		jv msgs = jv_object_get(jv_parse(k ? CTX_B : CTX), jv_string("messages"));
		for (int i = 0; i < 4; i++) {
			jv c = jv_object_get(jv_array_get(jv_copy(msgs), i), jv_string("content"));
			contents[k][i] = strdup(jv_string_value(c));
			jv_free(c);
		}
		jv_free(msgs);
	}
}

/* The watched rendering against the plain one and against CTX_B's. */
static void watched(const struct tmpl *t, const struct tmpl_limits *lim)
{
	struct err err = {0}, e2 = {0}, e3 = {0};
	struct tmpl_ctx *ca = tmpl_ctx_new(jv_parse(CTX), &err), *cb = tmpl_ctx_new(jv_parse(CTX_B), &err);
	if (!ca || !cb)
		abort();
	struct tmpl_watch w = {0};
	tmpl_ctx_watch(ca, &w);
	struct tmpl_output a, p, b;
	int ra = tmpl_render_ctx(t, ca, SIZE_MAX, -1, lim, &a, &err);
	tmpl_ctx_watch(ca, NULL);
	int rp = tmpl_render_ctx(t, ca, SIZE_MAX, -1, lim, &p, &e2);
	if (ra != rp || (ra == 0 && !tmpl_output_equal(&a, &p)) || (ra && strcmp(err.msg, e2.msg)))
		abort();
	int rb = tmpl_render_ctx(t, cb, SIZE_MAX, -1, lim, &b, &e3);
	if (ra == 0 && !w.unreplayable) {
		if (rb != 0 && !strstr(e3.msg, "output"))
			abort(); /* the same shape renders, unless its longer contents pass the output limit */
		contents_read();
		char *want = malloc(a.len + a.nruns * 6 * 32 + 1); /* each content of CTX_B is under 32 bytes */
		size_t n = 0;
		int checkable = rb == 0;
		for (size_t r = 0; r < a.nruns && checkable; r++) {
			const struct tmpl_run *run = &a.runs[r];
			const char *x = a.text + run->start;
			size_t len = run->end - run->start;
			if (run->origin != TMPL_MSG_CONTENT) {
				memcpy(want + n, x, len), n += len;
				continue;
			}
			const char *sa = contents[0][run->msg], *sb = contents[1][run->msg];
			size_t na = strlen(sa), nb = strlen(sb), lo, hi, blo, bhi;
			char ta[6 * 64 + 2], tb[6 * 32 + 2]; /* tojson's texts */
			size_t tan = na < 64 ? tmpl_json_text(sa, na, ta) : 0, tbn = tmpl_json_text(sb, nb, tb);
			tmpl_strip_span(sa, na, &lo, &hi);
			tmpl_strip_span(sb, nb, &blo, &bhi);
			if (len == na && !memcmp(x, sa, na))
				memcpy(want + n, sb, nb), n += nb;
			else if (len == hi - lo && !memcmp(x, sa + lo, len))
				memcpy(want + n, sb + blo, bhi - blo), n += bhi - blo;
			else if (tan && len == tan && !memcmp(x, ta, len))
				memcpy(want + n, tb, tbn), n += tbn;
			else if (tan && len == tan - 2 && !memcmp(x, ta + 1, len))
				memcpy(want + n, tb + 1, tbn - 2), n += tbn - 2;
			else
				checkable = 0; /* not a content whole, trimmed or as tojson: the memo refuses it */
		}
		if (checkable && (n != b.len || memcmp(want, b.text, n)))
			abort();
		free(want);
	}
	if (ra == 0)
		tmpl_output_free(&a);
	if (rp == 0)
		tmpl_output_free(&p);
	if (rb == 0)
		tmpl_output_free(&b);
	tmpl_ctx_free(ca);
	tmpl_ctx_free(cb);
}

/* The prefixes of the conversation, plain and with turns copied. */
/* a rendering without runs (b) against one with them (a) */
static int text_equal(const struct tmpl_output *a, const struct tmpl_output *b)
{
	return !b->runs && !b->nruns && a->len == b->len && !memcmp(a->text, b->text, a->len) && a->ncuts == b->ncuts &&
	       !memcmp(a->cuts, b->cuts, a->ncuts * sizeof *a->cuts) && a->ngen == b->ngen &&
	       !memcmp(a->gen, b->gen, a->ngen * sizeof *a->gen);
}

static void prefixes(const struct tmpl *t, const struct tmpl_limits *lim)
{
	struct err err = {0};
	struct tmpl_ctx *c = tmpl_ctx_new(jv_parse(CTX), &err);
	if (!c)
		abort();
	struct tmpl_output full;
	struct tmpl_trace *tr = NULL;
	if (tmpl_render_traced(t, c, 0, lim, &full, &tr, &err) == 0) {
		for (size_t m = 0; m <= 4; m++) {
			for (int agp = 0; agp < 2; agp++) {
				struct tmpl_output a, b;
				struct err e1 = {0}, e2 = {0};
				int r1 = tmpl_render_ctx(t, c, m, agp, lim, &a, &e1);
				int r2 = tmpl_render_prefix(t, c, m, agp, &full, tr, agp, lim, &b, &e2); /* runs or not */
				/* copied turns take no steps: only the plain rendering may run out of them */
				if (r1 == 0 ? r2 != 0 || !(agp ? tmpl_output_equal(&a, &b) : text_equal(&a, &b))
					    : r2 == 0 ? !strstr(e1.msg, "steps") : strcmp(e1.msg, e2.msg) && !strstr(e1.msg, "steps"))
					abort();
				if (r1 == 0)
					tmpl_output_free(&a);
				if (r2 == 0)
					tmpl_output_free(&b);
			}
		}
		tmpl_output_free(&full);
	}
	tmpl_trace_free(tr);
	tmpl_ctx_free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct err err;
	err.msg[0] = 0;
	struct tmpl *t = tmpl_compile((const char *)data, size, "chat_template", &err);
	if (!t) {
		if (!err.msg[0])
			abort(); /* a failure always says why */
		return 0;
	}
	struct tmpl_limits lim = { .max_output = 1 << 16, .max_steps = 200000, .max_depth = 16 };
	struct tmpl_output out;
	err.msg[0] = 0;
	if (tmpl_render(t, jv_parse(CTX), &lim, &out, &err) == 0) {
		uint32_t at = 0;
		for (size_t i = 0; i < out.nruns; i++) {
			if (out.runs[i].start != at || out.runs[i].end <= at)
				abort();
			at = out.runs[i].end;
		}
		if (at != out.len || out.len > lim.max_output)
			abort();
		for (size_t i = 0; i < out.ngen; i++)
			if (out.gen[i][0] > out.gen[i][1] || out.gen[i][1] > out.len)
				abort();
		tmpl_output_free(&out);
		prefixes(t, &lim);
		watched(t, &lim);
	} else if (!err.msg[0])
		abort();
	tmpl_free(t);
	return 0;
}
