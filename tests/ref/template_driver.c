/* template_driver: our side of tests/ref/test_template_jinja.py. Reads JSON
 * Lines {"template": T, "context": C} on stdin and writes one line per case:
 * {"text": OUT, "runs": [[start, end, origin, msg, var]...], "gen": [[s, e]...]}
 * or {"error": MSG}. Origins are numbers (enum tmpl_origin). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonl.h"
#include "msg.h"
#include "template.h"

int main(int argc, char **argv)
{
	msg_init(argv[0]);
	struct err err;
	struct jsonl_reader *r = jsonl_from_file(stdin, "<stdin>");
	if (!r)
		msg_die(EXIT_RUNTIME, "out of memory");
	jv rec;
	int rc;
	while ((rc = jsonl_next(r, &rec, &err)) != 0) {
		if (rc < 0)
			msg_die_err(&err);
		jv src = jv_object_get(jv_copy(rec), jv_string("template"));
		jv ctx = jv_object_get(jv_copy(rec), jv_string("context"));
		jv_free(rec);
		jv res = jv_object();
		if (jv_get_kind(src) != JV_KIND_STRING) {
			res = jv_object_set(res, jv_string("error"), jv_string("no template"));
			jv_free(ctx);
		} else {
			struct tmpl *t = tmpl_compile(jv_string_value(src), (size_t)jv_string_length_bytes(jv_copy(src)),
						      "chat_template", &err);
			struct tmpl_output out;
			if (!t) {
				res = jv_object_set(res, jv_string("error"), jv_string(err.msg));
				jv_free(ctx);
			} else if (tmpl_render(t, ctx, NULL, &out, &err) < 0) {
				res = jv_object_set(res, jv_string("error"), jv_string(err.msg));
			} else {
				jv runs = jv_array();
				for (size_t i = 0; i < out.nruns; i++) {
					const struct tmpl_run *ru = &out.runs[i];
					jv x = jv_array();
					x = jv_array_append(x, jv_number(ru->start));
					x = jv_array_append(x, jv_number(ru->end));
					x = jv_array_append(x, jv_number(ru->origin));
					x = jv_array_append(x, jv_number(ru->msg));
					x = jv_array_append(x, ru->var ? jv_string(ru->var) : jv_null());
					runs = jv_array_append(runs, x);
				}
				jv gen = jv_array();
				for (size_t i = 0; i < out.ngen; i++)
					gen = jv_array_append(
						gen, jv_array_append(jv_array_append(jv_array(), jv_number(out.gen[i][0])),
								     jv_number(out.gen[i][1])));
				res = jv_object_set(res, jv_string("text"), jv_string_sized(out.text, (int)out.len));
				res = jv_object_set(res, jv_string("runs"), runs);
				res = jv_object_set(res, jv_string("gen"), gen);
				tmpl_output_free(&out);
			}
			tmpl_free(t);
		}
		jv_free(src);
		if (jsonl_write(stdout, res, &err) < 0)
			msg_die_err(&err);
		fflush(stdout);
	}
	jsonl_close(r);
	return 0;
}
