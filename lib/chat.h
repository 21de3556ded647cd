/* chat: conversations turned into format-2 records with the model's own chat
 * template, and the byte spans the model must learn.
 *
 * One record goes through these steps, each usable alone (the tests do):
 *   chat_to_messages   OpenAI, Alpaca or ShareGPT record -> {"messages","tools"}
 *   chat_validate      roles, order, content, tool calls (errors name the message)
 *   chat_args_normalize tool-call arguments as the template wants them (object or JSON text)
 *   tmpl_render        the context transformers' apply_chat_template would build
 *   chat_spans         train spans from the provenance of every output byte
 * chat_format_line() runs them all with a chat_model and chat_opts; a
 * record of a shape the thread has seen is written from what the first one
 * taught (chat_memo.h), the same bytes without rendering, and
 * chat_format_seen() writes a line of a skeleton it has seen without
 * parsing it.
 *
 * A record is a jd (jdoc.h); what the steps make lives in the arena they are
 * given, beside it. Where jv values are taken (the model's tokens, --var
 * values), ownership follows jq's rule: functions consume the jv arguments
 * they are given and return new references. Errors are left in err without
 * a record position; the caller prefixes "FILE:LINE: ".
 */
#ifndef LORAPIPE_CHAT_H
#define LORAPIPE_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include <jv.h>

#include "chat_memo.h"
#include "jdoc.h"
#include "msg.h"
#include "template.h"

struct jsonl_buf;

enum chat_input {
	CHAT_INPUT_AUTO = 0, /* per record: "messages", "conversations", or "instruction" */
	CHAT_INPUT_OPENAI,
	CHAT_INPUT_ALPACA,
	CHAT_INPUT_SHAREGPT,
};

/* "auto|openai|alpaca|sharegpt" -> enum; -1 for anything else. */
int chat_input_parse(const char *name);

/* A record's messages (an array) and its tools (an array, or null when it
 * has none), made in a where they are not the record's own; an
 * Alpaca/ShareGPT record's "system" becomes the first message. Returns 0,
 * or -1 with err set when the record is not of the form. */
int chat_to_messages(const struct jd *rec, enum chat_input fmt, struct jd_arena *a, struct jd *msgs, struct jd *tools,
		     struct err *err);

/* The keys of an input record that are not passed through to the output. */
int chat_key_consumed(const char *key);

/* Checks messages: an array of objects with a known role
 * (system, user, assistant, tool), a first non-system message that is not the
 * assistant's, non-empty content (null allowed beside tool_calls), tool calls
 * of the OpenAI shape on assistant messages only, and tool messages only after
 * a tool call. Returns 0 or -1 ("message 3: ...", 0-based). */
int chat_validate(const struct jd *messages, struct err *err);

/* How a template wants tool_calls[].function.arguments. */
enum chat_args {
	CHAT_ARGS_OBJECT = 0, /* a JSON value: the template serializes it (| tojson) */
	CHAT_ARGS_STRING,     /* JSON text: the template prints it as it is */
};

/* Every tool call's arguments (and a flat {"name","arguments"} tool call's)
 * of the valid messages turned into mode: JSON text is parsed into its value
 * for OBJECT; a value is written as JSON text (tojson) for STRING. *out is
 * the messages with what changed made anew in a. Returns 0, or -1 with err
 * set when a string is not JSON ("message 2: tool call 0: arguments ..."). */
int chat_args_normalize(const struct jd *messages, enum chat_args mode, struct jd_arena *a, struct jd *out,
			struct err *err);

/* Whether a complete JSON value in text[0..len) equals want (jq's equality):
 * 1 when one does, 0 when not. Used to check that the arguments the template
 * printed parse back to the same value. */
int chat_json_find(const char *text, size_t len, const struct jd *want);

/* A model's template and tokens: the template (a Hugging Face folder's
 * chat_template.jinja or tokenizer_config.json chat_template, a GGUF's
 * tokenizer.chat_template, a .jinja file or a built-in name), the special
 * tokens map transformers passes to templates, and the tokenizer's special
 * token strings (the end-of-turn candidates). */
struct chat_model;

/* model: folder or .gguf; template: NULL, a file or a built-in name.
 * Returns NULL with err set. */
struct chat_model *chat_model_load(const char *model, const char *template, struct err *err);
void chat_model_free(struct chat_model *m);
/* The built-in template of a name ("chatml", "llama3", "gemma", "mistral",
 * "alpaca"), or NULL. */
const char *chat_builtin_template(const char *name);
/* jv's reference counts are not atomic: a thread formatting records needs
 * its own copy of m (sharing the compiled templates and markers, which
 * rendering only reads) and of every jv and jd_shared it shares (chat_opts'
 * vars and tools). chat_model_free frees such a copy; the original must
 * outlive it. */
struct chat_model *chat_model_for_thread(const struct chat_model *m, struct err *err);
/* A deep copy of v (consumed) with reference counts of its own. */
jv chat_jv_clone(jv v);
/* The special tokens map (bos_token, eos_token, ... as strings), a new reference. */
jv chat_model_tokens(const struct chat_model *m);
/* The argument mode the model's template expects (probed once at load). */
enum chat_args chat_model_args(const struct chat_model *m);

struct chat_opts {
	const char *system;        /* default system prompt, or NULL */
	const struct jd *tools;    /* default tool list (a jd_shared block's value, the thread's own), or NULL */
	jv vars;                   /* extra template variables, an object (owned by the caller) */
	int add_generation_prompt; /* render a prompt: last assistant message becomes "expected" */
	int train_last;            /* learn only the last assistant message */
	enum chat_input input;
	int no_memo;               /* render every record (chat_format_line): no shapes remembered (chat_memo.h) */
};
/* The renderer's output limit (tmpl_limits' default), which the memo's records keep too. */
#define CHAT_MAX_OUTPUT ((size_t)16 << 20)

/* The options' own checks, once before the records: a --system text that is
 * not UTF-8 (it would be written into the output as it is). 0 or -1. */
int chat_opts_check(const struct chat_opts *o, struct err *err);

/* What the memo did in this thread's copy of m (chat_memo.h). */
struct chat_memo_stats chat_model_memo_stats(const struct chat_model *m);

/* Formats one record (consumed) into a format-2 record in *out:
 * {"text","train",["expected"], other keys of the input}; an input key of
 * the same name as one of the output's own is dropped. Returns 0 or -1. */
int chat_format_record(const struct chat_model *m, const struct chat_opts *o, jv rec, jv *out,
		       struct err *err);
/* chat_format_record of the record rec, written as a line (newline
 * included) at the end of b: the bytes jsonl_format would write for its
 * result. What the steps make goes into a (rec's arena, say). On error b is
 * as it was. line[0..len): the text rec was parsed from, after
 * chat_format_seen said 0 for it (the line memo then learns it), or NULL. */
int chat_format_line(const struct chat_model *m, const struct chat_opts *o, const struct jd *rec, const char *line,
		     size_t len, struct jd_arena *a, struct jsonl_buf *b, struct err *err);
/* The line of a record: 1 when it was written at the end of b from the
 * line memo (chat_memo.h), the bytes chat_format_line would write for its
 * parse; 0 when it is to be parsed and given to chat_format_line. */
int chat_format_seen(const struct chat_model *m, const struct chat_opts *o, const char *line, size_t len,
		     struct jsonl_buf *b);

/* End-of-turn markers: strings of which the first one to begin in a turn's
 * closing template text ends the learned span. The first nfirst (special
 * tokens and eos_token) are looked for first; the rest (other added tokens)
 * only where none of those closes the turn: DeepSeek V3 ends a tool-call turn
 * with <｜tool▁call▁end｜>, an added token not marked special. */
struct chat_markers {
	const char **s;
	size_t *len;
	size_t n, nfirst;
	/* NULL, or for each marker whether no other of its tier begins with it
	 * (chat_markers_rank): then where it begins no longer one can, and a
	 * turn's closer is found without trying every marker (Llama 3 has 256) */
	unsigned char *maximal;
	/* The markers that end generation (nstop of them, by index): eos_token
	 * and those llama.cpp takes for an end of generation. A turn's closer is
	 * the first of these in its closing text, where one is (Command R7B
	 * closes a turn with <|END_RESPONSE|><|END_OF_TURN_TOKEN|>, only the
	 * latter stops it); and a message's learned bytes end before one that
	 * template text between them holds (Gemma 4 prints a tool call, then
	 * <|tool_response>, at which generation stops, then the results headed
	 * by the call's name). */
	size_t *stop;
	size_t nstop;
};
/* Sets mk->maximal (malloc'd; the owner of mk frees it): 0, or -1 with err
 * set when out of memory. */
int chat_markers_rank(struct chat_markers *mk, struct err *err);

/* The train spans of a rendering. trained[i] is set for each message i to
 * learn (nmsg messages); body_start[i] is where message i's turn body begins
 * (the length of the rendering of the messages before it with the generation
 * prompt, when that is a prefix of this one), or -1 when unknown; agp says
 * whether the template honors add_generation_prompt (if not, a body start
 * with the message's role after it is a header and is not used). For each
 * trained message: the bytes from the start of its body (when only template
 * text and the message's own bytes lie between) or else from its first
 * content/tool_calls byte, to its last content/tool_calls byte in its turn
 * (out->turns; before a stop marker after which the turn prints another
 * message's content), then the template text after it up to and including
 * the first stop marker there, else the first marker (struct chat_markers).
 * Spans start no earlier than the {% generation %} block holding the
 * first content byte; adjacent spans are merged, and every learned byte must
 * lie in a generation block when the template has them.
 * *spans is a new malloc'ed array of *nspans [start, end) pairs, ascending.
 * Returns 0 or -1. */
int chat_spans(const struct tmpl_output *out, const unsigned char *trained, const long *body_start, int agp,
	       size_t nmsg, const struct chat_markers *mk, long **spans, size_t *nspans, struct err *err);

/* Adds one --var NAME=JSON to vars (an object, consumed; returned). The
 * names transformers passes itself (messages, tools, documents,
 * add_generation_prompt) are refused. Invalid with err set. */
jv chat_var_add(jv vars, const char *arg, struct err *err);
/* Reads a --tools FILE: a JSON array of tool schemas, in a block of its own
 * (one reference), or NULL with err set. */
struct jd_shared *chat_tools_load(const char *path, struct err *err);

/* A user's jq filter that maps any record to the messages form. */
struct chat_jq;
/* Compiles filter; NULL with err "--jq: cannot compile FILTER: <jq's message>". */
struct chat_jq *chat_jq_new(const char *filter, struct err *err);
void chat_jq_free(struct chat_jq *q);
/* Runs the filter on rec (consumed): a new array of the results (each must be
 * an object), or invalid with err set. */
jv chat_jq_run(struct chat_jq *q, jv rec, struct err *err);

#endif
