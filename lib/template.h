/* template: Jinja2 chat templates, rendered exactly as transformers'
 * apply_chat_template renders them, with the origin of every output byte.
 *
 * The environment is transformers': trim_blocks and lstrip_blocks on, its
 * raise_exception(), tojson (ensure_ascii off, sort_keys off), strftime_now(),
 * the {% generation %} extension, loop controls. Templates are untrusted: no
 * file or network access, bounded output, step and recursion limits; anything
 * unsupported is an error naming the template line.
 *
 * Provenance: every value under ctx.messages[i] carries its origin (message i
 * and the key it hangs from). Filters, methods, slicing and concatenation keep
 * the origin of each byte they copy; turning a value into text (printing it,
 * tojson, string) gives every byte produced the value's origin, so
 * `tool_call.arguments | tojson` is wholly TMPL_MSG_TOOL_CALLS, braces included.
 * Bytes the template makes itself (its text, literals) are TMPL_LITERAL.
 */
#ifndef LORAPIPE_TEMPLATE_H
#define LORAPIPE_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>

#include <jv.h>

#include "jdoc.h"
#include "msg.h"

struct tmpl;

/* Parses a template; name is used in messages ("chat_template:12: ..."). */
struct tmpl *tmpl_compile(const char *src, size_t len, const char *name, struct err *err);
void tmpl_free(struct tmpl *t);
/* Whether t names add_generation_prompt anywhere: when not, a rendering
 * is the same bytes with the flag or without. */
int tmpl_reads_agp(const struct tmpl *t);

struct tmpl_limits {
	size_t max_output;  /* bytes; 0 = 16 MiB */
	uint64_t max_steps; /* evaluation steps; 0 = 10 million */
	int max_depth;      /* macro/call recursion; 0 = 64 */
};

enum tmpl_origin {
	TMPL_LITERAL = 0,    /* the template's own text and literals */
	TMPL_MSG_CONTENT,    /* messages[i].content (string, or text parts of a list) */
	TMPL_MSG_TOOL_CALLS, /* anything under messages[i].tool_calls */
	TMPL_MSG_OTHER,      /* any other key of messages[i] (role, name, reasoning_content ...) */
	TMPL_INPUT,          /* any other context variable (tools, bos_token, eos_token ...) */
};

/* A run of output bytes [start, end) of one origin; msg is the message index
 * for TMPL_MSG_*, else -1. Runs cover the output in order, without gaps. */
struct tmpl_run {
	uint32_t start, end;
	int32_t msg;
	enum tmpl_origin origin;
	const char *var; /* TMPL_INPUT: the top-level variable name ("eos_token"), else NULL */
};

/* A rendering: the text in one block, its other arrays in another (mem),
 * which tmpl_output_free frees. */
struct tmpl_output {
	char *text;
	size_t len;
	struct tmpl_run *runs;
	size_t nruns;
	uint32_t (*gen)[2]; /* output ranges inside {% generation %} blocks */
	size_t ngen;
	/* Output lengths, ascending, at which a statement of the template's body
	 * that prints ({{ ... }} or template text, outside any capture) ended:
	 * the places a rendering falls into its pieces. */
	uint32_t *cuts;
	size_t ncuts;
	/* With runs: each turn of a loop over the messages that this rendering
	 * ran (a prefix rendering's copied turns are not among them), in the
	 * order the turns ended: the message it iterated and what it printed,
	 * when it printed to the output (not into a capture or a macro's text).
	 * A turn says which of a message's bytes are its own: a later turn may
	 * print them again (gpt-oss names the last tool call in the header of
	 * the tool's result). Not compared by tmpl_output_equal. */
	struct tmpl_turn {
		int32_t msg;
		uint32_t start, end;
	} *turns;
	size_t nturns;
	void *mem; /* the block holding runs, gen, cuts and turns */
};

/* Renders t with the context ctx (a jv object, consumed): messages, tools,
 * add_generation_prompt, bos_token, eos_token and any extra variables.
 * lim may be NULL for the defaults. Returns 0, or -1 with err set: an exception
 * the template raised ("template raised: <its message>"), an unsupported
 * construct or a limit ("chat_template:LINE: ..."). */
int tmpl_render(const struct tmpl *t, jv ctx, const struct tmpl_limits *lim, struct tmpl_output *out,
		struct err *err);
void tmpl_output_free(struct tmpl_output *o);
/* Whether a and b are the same rendering: text, runs (variable names compared
 * as text), generation ranges and cuts. */
int tmpl_output_equal(const struct tmpl_output *a, const struct tmpl_output *b);

/* v as JSON text the way transformers' tojson filter writes it (json.dumps
 * with ensure_ascii off: ", " and ": ", non-ASCII kept, floats as Python
 * prints them): 0 with *out a string in a, or -1 with err set. */
int tmpl_tojson(const struct jd *v, struct jd_arena *a, struct jd *out, struct err *err);

/* Frees the blocks the calling thread keeps for its next renders: a thread
 * that renders calls it before it ends. */
void tmpl_thread_release(void);

/* A context (consumed) converted once for several renders; NULL with err set. */
struct tmpl_ctx;
struct tmpl_ctx *tmpl_ctx_new(jv ctx, struct err *err);
void tmpl_ctx_free(struct tmpl_ctx *c);
/* tmpl_render with c: only its first nmsg messages (SIZE_MAX: all), and
 * add_generation_prompt set to agp (-1: as in c, which must hold it as a
 * boolean for agp to apply). The same output as tmpl_render of that context. */
int tmpl_render_ctx(const struct tmpl *t, const struct tmpl_ctx *c, size_t nmsg, int agp,
		    const struct tmpl_limits *lim, struct tmpl_output *out, struct err *err);

/* Prefix renderings that copy turns. ds-fmt renders a conversation whole and
 * again up to each learned turn. tmpl_render_traced is tmpl_render_ctx of all
 * messages that also records, for each turn of the template's loop over the
 * messages, what it printed and whether it read anything the rendering of a
 * prefix could see differently: add_generation_prompt, the number of
 * messages (loop.last, loop.length, messages | length, messages[-1]), a
 * message past the prefix, or state an earlier turn left (namespace
 * attributes, cyclers, joiners, loop.changed); and the variables the loop
 * started with. tmpl_render_prefix renders the first nmsg messages with
 * add_generation_prompt agp; when its loop starts with the same variables
 * (equal values of equal origins) and output length, it copies from full
 * (the traced rendering of c) the leading turns that read none of the above
 * and runs the rest. When what the whole rendering ran before its loop
 * read none of the above (nor a message past the prefix) and left only
 * plain values, the prefix's rendering does not run it again: it copies
 * its output and starts at the loop with those values. And when such a
 * rendering without runs copied every turn and what follows the loop read
 * only add_generation_prompt (and messages the prefix has), what it printed
 * there is kept in trace: the next prefixes with that add_generation_prompt
 * whose turns would all be copied are made from it, the template not run at
 * all. Its output is
 * tmpl_render_ctx's, text, origins, cuts and generation ranges alike
 * (what is copied takes no steps against lim).
 * *trace is NULL (every prefix then rendered in full) when the template lets
 * the messages reach code the check cannot watch (template_prefix.c) or its
 * loop did not run over them. Free with tmpl_trace_free. With runs 0 the
 * output has no runs (runs NULL, nruns 0), only text, cuts and generation
 * ranges: what ds-fmt asks of a prefix, made without copying the runs of
 * the turns copied, whose number grows with the conversation. */
struct tmpl_trace;
int tmpl_render_traced(const struct tmpl *t, const struct tmpl_ctx *c, int agp, const struct tmpl_limits *lim,
		       struct tmpl_output *out, struct tmpl_trace **trace, struct err *err);
int tmpl_render_prefix(const struct tmpl *t, const struct tmpl_ctx *c, size_t nmsg, int agp,
		       const struct tmpl_output *full, struct tmpl_trace *trace, int runs, const struct tmpl_limits *lim,
		       struct tmpl_output *out, struct err *err);
void tmpl_trace_free(struct tmpl_trace *tr);
/* Turns the prefix renderings that used tr copied, those renderings that
 * started at the loop, and those made without running the template (for
 * tests and benchmarks). */
unsigned long long tmpl_trace_copied(const struct tmpl_trace *tr);
unsigned long long tmpl_trace_resumed(const struct tmpl_trace *tr);
unsigned long long tmpl_trace_tailed(const struct tmpl_trace *tr);

/* Watching the renderings of one context for chat's memo, which formats
 * the next records of the same shape (the same messages but for their
 * contents' text) without rendering them: it takes each rendering to be
 * its literal text with each message's content printed whole, or trimmed
 * (trim, strip()), where the origins put it. That holds when the renderings
 * used the contents only that way, and otherwise only to ask whether they
 * are empty (after a trim) or what type they are; to pass them on as
 * names, to macros, through `default`, or as the messages that hold them
 * (their fields, get(), their number, a slice, a loop over them), or to
 * print it whole through tojson. Any
 * other use (a comparison, a test, a filter, a method, `in`, a
 * container made of them, printing a message) sets unreplayable, with
 * the template line and what it was. strftime_now's texts are kept
 * (TMPL_WATCH_CLOCKS of them), for a replay to check that the clock still
 * reads the same. Two messages compared (== or !=) that are equal but
 * for their contents are kept too (TMPL_WATCH_SAMES pairs; more make the
 * rendering unreplayable): their numbers and whether the contents were
 * the same, which a replay must find again. */
#define TMPL_WATCH_CLOCKS 4
#define TMPL_WATCH_SAMES 64
struct tmpl_watch {
	int unreplayable;
	int line;
	const char *why;
	unsigned nclock, nsame;
	struct {
		char fmt[64], out[128];
	} clock[TMPL_WATCH_CLOCKS];
	struct tmpl_same {
		int32_t a, b; /* a < b */
		int same;
	} same[TMPL_WATCH_SAMES];
};
/* Renderings with c are watched into w (NULL: not). */
void tmpl_ctx_watch(struct tmpl_ctx *c, struct tmpl_watch *w);
/* tojson's text of the UTF-8 string s[0..n) (ensure_ascii off), quotes
 * included, into out (6n + 2 bytes): its length. */
size_t tmpl_json_text(const char *s, size_t n, char *out);
/* strftime_now(fmt)'s text, in buf (n bytes): its length (0 when it does not fit). */
size_t tmpl_strftime_now(const char *fmt, char *buf, size_t n);
/* Where Python's str.strip() (and so trim) cuts the UTF-8 text s: the
 * bytes [lo, hi) remain. */
void tmpl_strip_span(const char *s, size_t n, size_t *lo, size_t *hi);

/* Converted values one thread keeps from one context to the next: a
 * variable (other than messages) whose array or object is a jd_shared
 * block's value (jd_shared_of) that a recent context had under that name is
 * not converted again, and tojson's text of it is made once. A data set's
 * repeated tool list, read with a jsonl memo, is such a value. The output is
 * the same with or without a cache. A context made with a cache must be
 * freed before the next one is made with it. */
struct tmpl_cache;
struct tmpl_cache *tmpl_cache_new(void);
void tmpl_cache_free(struct tmpl_cache *c);
/* One variable of a record's context: its name (copied) and value,
 * borrowed: the context reads its strings where they lie, so the value
 * must outlive the context. */
struct tmpl_var {
	const char *name;
	const struct jd *value;
};
/* The context of vars (nvars distinct names) over the variables of more
 * over those of base (JSON objects, consumed, or jv_invalid() for none; a
 * name in a higher layer wins): ds-fmt's special tokens, --var values and
 * each record's messages and tools. The lower two are converted once while
 * the same jv values (jv_identical) come back with the same cache (which
 * may be NULL), and the context must not outlive the cache. */
struct tmpl_ctx *tmpl_ctx_new_layered(jv base, jv more, const struct tmpl_var *vars, size_t nvars,
				      struct tmpl_cache *cache, struct err *err);
/* Values used again, tojson texts used again (for tests and benchmarks). */
void tmpl_cache_stats(const struct tmpl_cache *c, unsigned long long *hits, unsigned long long *json_hits);

#endif
