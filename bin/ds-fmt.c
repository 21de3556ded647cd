/* ds-fmt — render conversations (format 1) with the model's own chat template
 * into format-2 records: the text and the byte spans the model must learn.
 *
 *   ds-fmt --model M < pairs.jsonl > text.jsonl
 *
 * Only wiring lives here: input forms, validation, rendering and spans in
 * lib/chat, the Jinja engine in lib/template.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "jsonl.h"
#include "msg.h"
#include "opt.h"
#include "outfile.h"
#include "progress.h"

#define DSFMT_VERSION "0.1.0"

static const struct opt opts[] = {
	{"model", 'm', OPT_STRING, "M", "model folder (tokenizer.json, tokenizer_config.json) or GGUF file"},
	{"template", 't', OPT_STRING, "FILE|NAME",
	 "use this .jinja file or built-in template (chatml, llama3, gemma, mistral, alpaca)"},
	{"input-format", 0, OPT_CHOICE, "FORMAT", "input records: auto (default), openai, alpaca or sharegpt",
	 .choices = "auto|openai|alpaca|sharegpt"},
	{"jq", 0, OPT_STRING, "FILTER", "map each input record to the messages form with this jq filter"},
	{"system", 0, OPT_STRING, "TEXT", "system prompt for records that have none"},
	{"tools", 0, OPT_STRING, "FILE", "tool list (a JSON array) for records that have none"},
	{"add-generation-prompt", 0, OPT_FLAG, NULL,
	 "render prompts: a final assistant message becomes \"expected\", nothing is learned"},
	{"train-turns", 0, OPT_CHOICE, "WHICH", "assistant turns to learn: all (default) or last",
	 .choices = "all|last"},
	{"var", 0, OPT_STRING, "NAME=JSON", "an extra template variable (repeatable), e.g. enable_thinking=false",
	 .repeat = 1},
	{"skip-bad", 0, OPT_FLAG, NULL, "skip and count bad records instead of stopping"},
	{"output", 'o', OPT_STRING, "FILE", "write here (atomically) instead of standard output"},
	OPT_COMMON_ROWS,
	{0},
};

static const char usage[] = "ds-fmt --model M [OPTIONS] [FILE]";
static const char about[] =
	"Renders conversations (OpenAI messages, Alpaca or ShareGPT records, one per line) from FILE or\n"
	"standard input with the model's own chat template, as transformers' apply_chat_template does,\n"
	"and writes {\"text\":...,\"train\":[[start,end],...]} lines: the byte ranges of each assistant\n"
	"turn and its end-of-turn marker, found from where every rendered byte came from. Other keys\n"
	"of the input pass through. Exit status: 0 done, 1 runtime failure, 2 bad usage or bad input.";


int main(int argc, char **argv)
{
	msg_init(argv[0]);
	msg_atexit(outfile_abort_all);
	struct err err = {0};
	struct opt_result r;
	int status = opt_start(opts, argc, argv, usage, about, DSFMT_VERSION, &r);
	if (status >= 0)
		return status;
	if (r.nargs > 1)
		msg_die(EXIT_USAGE, "one input file at most (got %d; try --help)", r.nargs);
	const char *model = opt_str(&r, "model", NULL);
	if (!model)
		msg_die(EXIT_USAGE, "--model is required (try --help)");
	const char *input = r.nargs ? r.args[0] : "-";
	int skip_bad = opt_flag(&r, "skip-bad");

	struct chat_opts o = {
		.system = opt_str(&r, "system", NULL),
		.tools = jv_null(),
		.vars = jv_object(),
		.add_generation_prompt = opt_flag(&r, "add-generation-prompt"),
		.train_last = !strcmp(opt_str(&r, "train-turns", "all"), "last"),
		.input = chat_input_parse(opt_str(&r, "input-format", "auto")),
	};
	for (int i = 0; opt_str_at(&r, "var", i); i++) {
		o.vars = chat_var_add(o.vars, opt_str_at(&r, "var", i), &err);
		msg_die_if(!jv_is_valid(o.vars), &err);
	}
	if (opt_str(&r, "tools", NULL)) {
		o.tools = chat_tools_load(opt_str(&r, "tools", NULL), &err);
		msg_die_if(!jv_is_valid(o.tools), &err);
	}
	struct chat_jq *jq = NULL;
	if (opt_str(&r, "jq", NULL)) {
		jq = chat_jq_new(opt_str(&r, "jq", NULL), &err);
		msg_die_if(!jq, &err);
	}
	struct chat_model *m = chat_model_load(model, opt_str(&r, "template", NULL), &err);
	msg_die_if(!m, &err);
	struct jsonl_reader *in = jsonl_open(input, &err);
	msg_die_if(!in, &err);
	struct outfile *out = outfile_open(opt_str(&r, "output", "-"), 0, &err);
	msg_die_if(!out, &err);

	msg_catch_signals();

	struct progress prog;
	progress_start(&prog, "records", 0, opt_progress(&r));
	unsigned long long done = 0, bad = 0;
	jv rec;
	int rc;
	while (!msg_interrupted && (rc = jsonl_next(in, &rec, &err)) != 0) {
		jv recs = rc > 0 ? (jq ? chat_jq_run(jq, rec, &err) : JV_ARRAY(rec)) : jv_invalid();
		if (rc > 0 && !jv_is_valid(recs))
			rc = jsonl_errf(in, &err, "%s", err.msg);
		/* All of a record's results are made before any is written, so a
		 * skipped record leaves nothing behind. */
		jv results = jv_array();
		if (rc > 0) {
			jv_array_foreach(recs, i, one) {
				jv res;
				if (rc > 0 && chat_format_record(m, &o, one, &res, &err) < 0)
					rc = jsonl_errf(in, &err, "%s", err.msg);
				else if (rc > 0)
					results = jv_array_append(results, res);
				else
					jv_free(one);
				(void)i;
			}
		}
		jv_free(recs);
		if (rc > 0) {
			jv_array_foreach(results, i, res) {
				msg_die_if(jsonl_write(out->f, res, &err) < 0, &err);
				(void)i;
			}
		}
		jv_free(results);
		if (rc < 0 && msg_interrupted)
			break;
		if (rc < 0) {
			if (!skip_bad)
				msg_die_err(&err);
			msg_warn("skipped %s", err.msg);
			bad++;
			continue;
		}
		progress_update(&prog, ++done, 0);
	}
	progress_end(&prog);
	if (msg_interrupted)
		msg_die(130, "interrupted: no output written");
	jsonl_close(in);
	msg_die_if(outfile_commit(out, &err) < 0, &err);
	if (bad)
		msg_warn("%llu bad records were skipped", bad);
	chat_model_free(m);
	chat_jq_free(jq);
	jv_free(o.tools), jv_free(o.vars);
	return EXIT_OK;
}
