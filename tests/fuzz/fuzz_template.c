/* fuzz_template: any bytes as a chat template, compiled and rendered with a
 * small fixed conversation under tight limits. Compiling either fails with a
 * message or gives a template; rendering either fails with a message or gives
 * an output whose runs tile it exactly and whose generation ranges lie
 * inside it. Every prefix of the conversation rendered with turns copied
 * from the traced whole rendering (tmpl_render_prefix) comes out as its
 * plain rendering does, or the plain one ran out of steps. No crash, no
 * leak, no hang. */
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
	} else if (!err.msg[0])
		abort();
	tmpl_free(t);
	return 0;
}
