/* lora-eval — run a model on conversations and (later) score its tool calls.
 *
 *   lora-eval --generate --model M < conversations.jsonl > completions.jsonl
 *
 * Only --generate exists so far: each conversation is rendered with the
 * model's chat template and the generation prompt (as ds-fmt
 * --add-generation-prompt does), tokenized and continued. Only wiring lives
 * here: rendering in lib/chat, the model in lib/model, generation in
 * lib/generate.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "backend.h"
#include "chat.h"
#include "generate.h"
#include "jsonl.h"
#include "lora.h"
#include "model.h"
#include "msg.h"
#include "opt.h"
#include "outfile.h"
#include "progress.h"
#include "tokenizer.h"

#define LORAEVAL_VERSION "0.1.0"

static const struct opt opts[] = {
	{"model", 'm', OPT_STRING, "M", "model folder (config.json, safetensors, tokenizer) or GGUF file"},
	{"generate", 0, OPT_FLAG, NULL, "write a completion for each conversation"},
	{"template", 't', OPT_STRING, "FILE|NAME",
	 "use this .jinja file or built-in template (chatml, llama3, gemma, mistral, alpaca)"},
	{"input-format", 0, OPT_CHOICE, "FORMAT", "input records: auto (default), openai, alpaca or sharegpt",
	 .choices = "auto|openai|alpaca|sharegpt"},
	{"system", 0, OPT_STRING, "TEXT", "system prompt for records that have none"},
	{"tools", 0, OPT_STRING, "FILE", "tool list (a JSON array) for records that have none"},
	{"var", 0, OPT_STRING, "NAME=JSON", "an extra template variable (repeatable), e.g. enable_thinking=false",
	 .repeat = 1},
	{"max-new", 'n', OPT_INT, "N", "generate at most N tokens per conversation (default 256)", .min = 0,
	 .max = 1 << 24},
	{"max-new-tokens", 0, OPT_INT, "N", "the same as --max-new", .min = 0, .max = 1 << 24, .hidden = 1},
	{"temperature", 0, OPT_FLOAT, "X", "sampling temperature; 0 (default) picks the most likely token",
	 .fmin = 0, .fmax = 100},
	{"top-k", 0, OPT_INT, "K", "sample from the K most likely tokens only (default 0: all)", .min = 0,
	 .max = INT32_MAX},
	{"top-p", 0, OPT_FLOAT, "P", "sample from the most likely tokens holding probability P (default 1: all)",
	 .fmin = 0, .fmax = 1},
	{"seed", 0, OPT_INT, "S", "random seed of the sampling (default 0); conversation i uses S + i"},
	{"stop", 0, OPT_STRING, "STR", "end the completion before this text (repeatable)", .repeat = 1},
	{"fmt", 0, OPT_CHOICE, "FMT", "how linear weights are held: f32 (default), bf16, nf4 or int8",
	 .choices = "f32|bf16|nf4|int8"},
	{"adapter", 'a', OPT_STRING, "DIR", "apply this LoRA adapter (a PEFT folder, as qlora-fit writes it)"},
	{"batch", 'b', OPT_INT, "N", "conversations decoded together (default 8): faster, the same text", .min = 1,
	 .max = 256},
	{"threads", 0, OPT_INT, "N", "CPU threads (default 0: one per core)", .min = 0, .max = 1024},
	{"ids", 0, OPT_FLAG, NULL, "add prompt_ids and completion_ids (token ids) to each line"},
	{"output", 'o', OPT_STRING, "FILE", "write here (atomically) instead of standard output"},
	OPT_COMMON_ROWS,
	{0},
};

static const char usage[] = "lora-eval --generate --model M [OPTIONS] [FILE]";
static const char about[] =
	"Renders each conversation (OpenAI messages, Alpaca or ShareGPT records, one per line) from\n"
	"FILE or standard input with the model's chat template and its generation prompt, continues\n"
	"it with the model, and writes one JSON line per conversation: the record's other keys (id ...),\n"
	"\"prompt\", \"completion\", \"expected\" (a final assistant message, taken out of the prompt),\n"
	"\"stop\" (eos, stop or length), \"prompt_tokens\" and \"completion_tokens\". Greedy unless\n"
	"--temperature is above 0. Exit status: 0 done, 1 runtime failure, 2 bad usage or bad input.";

/* One conversation, rendered and tokenized. */
struct item {
	jv rec;        /* the format-2 record chat_format_record made */
	int32_t *ids;
	int n;
	long line;
};

static const char *const stop_names[] = {[GEN_EOS] = "eos", [GEN_STOP_STRING] = "stop", [GEN_LENGTH] = "length"};

static jv ids_array(const int32_t *ids, int n)
{
	jv a = jv_array();
	for (int i = 0; i < n; i++)
		a = jv_array_append(a, jv_number(ids[i]));
	return a;
}

/* The output line: the record's own keys first (id ...), then the results. */
static jv result_line(const struct item *it, const struct gen_result *g, int with_ids)
{
	jv out = jv_object();
	jv_object_foreach(it->rec, k, v) {
		const char *key = jv_string_value(k);
		if (!strcmp(key, "text") || !strcmp(key, "train") || !strcmp(key, "expected"))
			jv_free(k), jv_free(v);
		else
			out = jv_object_set(out, k, v);
	}
	jv rec = it->rec;
	out = jv_object_set(out, jv_string("prompt"), jv_object_get(jv_copy(rec), jv_string("text")));
	out = jv_object_set(out, jv_string("completion"), jv_string_sized(g->text, (int)g->len));
	if (jv_object_has(jv_copy(rec), jv_string("expected")))
		out = jv_object_set(out, jv_string("expected"), jv_object_get(jv_copy(rec), jv_string("expected")));
	out = jv_object_set(out, jv_string("stop"), jv_string(stop_names[g->stop]));
	out = jv_object_set(out, jv_string("prompt_tokens"), jv_number(it->n));
	out = jv_object_set(out, jv_string("completion_tokens"), jv_number(g->n_ids));
	if (with_ids) {
		out = jv_object_set(out, jv_string("prompt_ids"), ids_array(it->ids, it->n));
		out = jv_object_set(out, jv_string("completion_ids"), ids_array(g->ids, g->n_ids));
	}
	return out;
}

/* The prompt's ids: the rendered text as it is (its special-token strings
 * become their ids), with the BOS put first when the tokenizer would add one
 * and the template did not write it — one BOS either way, as llama.cpp ends up with. */
static int tokenize(const struct tokenizer *tk, const char *text, size_t len, struct item *it, struct err *err)
{
	struct tok_encoding e = {0};
	if (tokenizer_encode(tk, text, len, 0, &e, err) < 0)
		return -1;
	int64_t bos = tokenizer_bos_id(tk);
	int add = tokenizer_adds_bos(tk) && bos >= 0 && (e.n == 0 || e.ids[0] != (uint32_t)bos);
	it->n = (int)e.n + add;
	it->ids = malloc(((size_t)it->n + 1) * sizeof *it->ids);
	if (!it->ids) {
		tok_encoding_free(&e);
		return err_sys(err, "out of memory");
	}
	if (add)
		it->ids[0] = (int32_t)bos;
	for (size_t i = 0; i < e.n; i++)
		it->ids[add + i] = (int32_t)e.ids[i];
	tok_encoding_free(&e);
	return 0;
}

/* Reads, renders and tokenizes every record before any generation, so bad
 * input stops the run at once, with its line, and leaves no output. */
static struct item *read_all(const char *input, const struct chat_model *cm, const struct chat_opts *co,
			     const struct tokenizer *tk, const struct model *m, int *count)
{
	struct err err = {0};
	struct jsonl_reader *in = jsonl_open(input, &err);
	msg_die_if(!in, &err);
	struct item *items = NULL;
	int n = 0, cap = 0;
	jv rec;
	int rc;
	while (!msg_interrupted && (rc = jsonl_next(in, &rec, &err)) != 0) {
		if (rc < 0 && msg_interrupted)
			break;
		msg_die_if(rc < 0, &err);
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			items = realloc(items, (size_t)cap * sizeof *items);
			if (!items)
				msg_die(EXIT_RUNTIME, "out of memory");
		}
		struct item *it = &items[n];
		it->line = jsonl_line(in);
		if (chat_format_record(cm, co, rec, &it->rec, &err) < 0)
			msg_die_if(jsonl_errf(in, &err, "%s", err.msg), &err);
		jv text = jv_object_get(jv_copy(it->rec), jv_string("text"));
		if (tokenize(tk, jv_string_value(text), (size_t)jv_string_length_bytes(jv_copy(text)), it, &err) < 0)
			msg_die_if(jsonl_errf(in, &err, "%s", err.msg), &err);
		jv_free(text);
		if (it->n == 0)
			msg_die_if(jsonl_errf(in, &err, "the prompt is empty"), &err);
		if (m->cfg.max_pos > 0 && it->n > m->cfg.max_pos)
			msg_die_if(jsonl_errf(in, &err, "the prompt has %d tokens, more than the model's context of %d",
					      it->n, m->cfg.max_pos), &err);
		n++;
	}
	if (msg_interrupted)
		msg_die(130, "interrupted: no output written");
	jsonl_close(in);
	*count = n;
	return items;
}

static void run_generate(const struct opt_result *r, const char *input)
{
	struct err err = {0};
	const char *model = opt_str(r, "model", NULL);
	struct chat_opts co = {
		.system = opt_str(r, "system", NULL),
		.vars = jv_object(),
		.add_generation_prompt = 1,
		.input = chat_input_parse(opt_str(r, "input-format", "auto")),
	};
	msg_die_if(chat_opts_check(&co, &err) < 0, &err);
	for (int i = 0; opt_str_at(r, "var", i); i++) {
		co.vars = chat_var_add(co.vars, opt_str_at(r, "var", i), &err);
		msg_die_if(!jv_is_valid(co.vars), &err);
	}
	struct jd_shared *tools = NULL;
	if (opt_str(r, "tools", NULL)) {
		tools = chat_tools_load(opt_str(r, "tools", NULL), &err);
		msg_die_if(!tools, &err);
		co.tools = jd_shared_value(tools);
	}
	const char *stops[OPT_MAX_SEEN];
	int n_stop = 0;
	for (int i = 0; opt_str_at(r, "stop", i); i++) {
		stops[n_stop] = opt_str_at(r, "stop", i);
		if (!*stops[n_stop++])
			msg_die(EXIT_USAGE, "--stop: the text is empty");
	}
	struct gen_opts go = {
		.max_new = (int)opt_int(r, "max-new-tokens", opt_int(r, "max-new", 256)),
		.temperature = (float)opt_float(r, "temperature", 0),
		.top_k = (int)opt_int(r, "top-k", 0),
		.top_p = (float)opt_float(r, "top-p", 1),
		.seed = (uint64_t)opt_int(r, "seed", 0),
		.stop = stops,
		.n_stop = n_stop,
	};
	enum wfmt fmt = (enum wfmt)wfmt_parse(opt_str(r, "fmt", "f32"));
	struct model_load_opts mo = {.linear = fmt, .embed = fmt == WFMT_BF16 ? WFMT_BF16 : WFMT_F32};
	backend_cpu_threads((int)opt_int(r, "threads", 0));

	struct chat_model *cm = chat_model_load(model, opt_str(r, "template", NULL), &err);
	msg_die_if(!cm, &err);
	struct tokenizer *tk = tokenizer_load(model, &err);
	msg_die_if(!tk, &err);
	struct model *m = model_load(model, &mo, &err);
	msg_die_if(!m, &err);
	struct lora *lo = NULL;
	if (opt_str(r, "adapter", NULL)) {
		lo = lora_load_peft(opt_str(r, "adapter", NULL), &m->cfg, NULL, &err);
		msg_die_if(!lo, &err);
		go.lora = lo;
	}
	struct outfile *out = outfile_open(opt_str(r, "output", "-"), 0, &err);
	msg_die_if(!out, &err);

	msg_catch_signals();
	int n;
	struct item *items = read_all(input, cm, &co, tk, m, &n);

	struct progress prog;
	progress_start(&prog, "records", (uint64_t)n, opt_progress(r));
	if (prog.enabled) {
		int64_t params;
		size_t bytes;
		model_size(m, &params, &bytes);
		fprintf(stderr, "%s: %s: %s, %.1fM parameters, %.1f MB frozen (%.2f bytes/parameter, linear %s)\n",
			msg_prog(), model, model_arch_name(m->cfg.arch), params / 1e6, bytes / 1e6,
			params ? (double)bytes / (double)params : 0.0, wfmt_name(fmt));
	}
	/* Groups of --batch conversations: each group's lines are written when it
	 * ends, in input order. Conversation i draws with seed + i, as alone. */
	const int batch = (int)opt_int(r, "batch", 8);
	const int32_t **ptrs = malloc((size_t)batch * sizeof *ptrs);
	int *lens = malloc((size_t)batch * sizeof *lens);
	struct gen_result *g = malloc((size_t)batch * sizeof *g);
	if (!ptrs || !lens || !g)
		msg_die(EXIT_RUNTIME, "out of memory");
	for (int first = 0; first < n && !msg_interrupted; first += batch) {
		const int k = n - first < batch ? n - first : batch;
		for (int b = 0; b < k; b++)
			ptrs[b] = items[first + b].ids, lens[b] = items[first + b].n;
		go.seed = (uint64_t)opt_int(r, "seed", 0) + (uint64_t)first;
		go.batch = k;
		if (generate(m, tk, ptrs, lens, k, &go, g, &err) < 0) {
			if (msg_interrupted)
				break;
			int which = 0, skip = 0; /* "prompt B: why" names the conversation */
			if (sscanf(err.msg, "prompt %d: %n", &which, &skip) < 1 || !skip || which < 0 || which >= k)
				which = 0, skip = 0;
			msg_die(err.code, "%s:%ld: %s", strcmp(input, "-") ? input : "<stdin>", items[first + which].line,
				err.msg + skip);
		}
		for (int b = 0; b < k; b++) {
			msg_die_if(jsonl_write(out->f, result_line(&items[first + b], &g[b], opt_flag(r, "ids")), &err) < 0,
				   &err);
			gen_result_free(&g[b]);
		}
		progress_update(&prog, (uint64_t)(first + k), 0);
	}
	free(ptrs);
	free(lens);
	free(g);
	progress_end(&prog);
	if (msg_interrupted)
		msg_die(130, "interrupted: no output written");
	msg_die_if(outfile_commit(out, &err) < 0, &err);
	for (int i = 0; i < n; i++) {
		jv_free(items[i].rec);
		free(items[i].ids);
	}
	free(items);
	lora_free(lo);
	model_free(m);
	tokenizer_free(tk);
	chat_model_free(cm);
	jd_shared_unref(tools);
	jv_free(co.vars);
}

int main(int argc, char **argv)
{
	msg_init(argv[0]);
	msg_atexit(outfile_abort_all);
	struct opt_result r;
	int status = opt_start(opts, argc, argv, usage, about, LORAEVAL_VERSION, &r);
	if (status >= 0)
		return status;
	if (r.nargs > 1)
		msg_die(EXIT_USAGE, "one input file at most (got %d; try --help)", r.nargs);
	if (!opt_flag(&r, "generate"))
		msg_die(EXIT_USAGE, "say --generate: scoring is not written yet (try --help)");
	if (!opt_str(&r, "model", NULL))
		msg_die(EXIT_USAGE, "--model is required (try --help)");
	run_generate(&r, r.nargs ? r.args[0] : "-");
	return EXIT_OK;
}
