#include "chat.h"
#include "chat_memo.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jq.h>

#include "gguf.h"
#include "jsonl.h"
#include "tokenizer.h"
#include "wholefile.h"

#define CHAT_MAX_FILE (64u << 20) /* a template or config larger than this is not one */

/* ------------------------------------------------------------------ helpers */

/* jv lookups of the model's configuration, at load time. */
static jv obj_get(jv o, const char *key) { return jv_object_get(jv_copy(o), jv_string(key)); }

static jv msg_new(const char *role, jv content)
{
	return JV_OBJECT(jv_string("role"), jv_string(role), jv_string("content"), content);
}

/* A record's values are jd (jdoc.h) in the record's arena a; what the steps
 * change is made anew there, sharing what it does not change. Allocation
 * failures are seen once, in a->oom, at the end of each step. */

static struct jd jd_lit(struct jd_arena *a, const char *s) { return jd_string(a, s, strlen(s)); }

/* {"role": role, "content": content} */
static struct jd jd_message(struct jd_arena *a, const char *role, struct jd content)
{
	struct jd_member *m = jd_alloc(a, 2 * sizeof *m);
	if (!m)
		return jd_null();
	m[0] = (struct jd_member){jd_lit(a, "role"), jd_lit(a, role)};
	m[1] = (struct jd_member){jd_lit(a, "content"), content};
	return (struct jd){.kind = JD_OBJECT, .n = 2, .u.members = m};
}

/* o (an object) with key's value v: in its place when o has key, else
 * added last, as jv_object_set does. */
static struct jd jd_with(struct jd_arena *a, const struct jd *o, const char *key, struct jd v)
{
	uint32_t at = 0;
	while (at < o->n && !jd_is(&o->u.members[at].key, key))
		at++;
	uint32_t n = o->n + (at == o->n);
	struct jd_member *m = jd_alloc(a, (size_t)n * sizeof *m);
	if (!m)
		return jd_null();
	if (o->n)
		memcpy(m, o->u.members, (size_t)o->n * sizeof *m);
	if (at == o->n)
		m[at].key = jd_lit(a, key);
	m[at].val = v;
	return (struct jd){.kind = JD_OBJECT, .n = n, .u.members = m};
}

/* A copy of the items of the array v, to change. */
static struct jd *items_copy(struct jd_arena *a, const struct jd *v)
{
	struct jd *items = jd_alloc(a, ((size_t)v->n + 1) * sizeof *items);
	if (items && v->n)
		memcpy(items, v->u.items, (size_t)v->n * sizeof *items);
	return items;
}

static struct jd jd_array_of(struct jd *items, uint32_t n)
{
	return (struct jd){.kind = JD_ARRAY, .n = n, .u.items = items};
}

/* ------------------------------------------------------------- input forms */

int chat_input_parse(const char *name)
{
	static const char *names[] = {"auto", "openai", "alpaca", "sharegpt"};
	for (int i = 0; i < 4; i++)
		if (!strcmp(name, names[i]))
			return i;
	return -1;
}

int chat_key_consumed(const char *key)
{
	static const char *keys[] = {"messages", "tools", "conversations", "instruction", "input", "output", "system"};
	for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
		if (key[0] == keys[i][0] && !strcmp(key, keys[i])) /* most keys differ in their first byte */
			return 1;
	return 0;
}

static int out_of_memory(struct jd_arena *a, struct err *err)
{
	return a->oom ? err_sys(err, "out of memory") : 0;
}

/* Alpaca: system?, user = instruction (+ "\n" + input when non-empty, as
 * LLaMA-Factory joins them), assistant = output. */
static int from_alpaca(const struct jd *rec, struct jd_arena *a, struct jd *msgs, struct err *err)
{
	const struct jd *ins = jd_get(rec, "instruction"), *in = jd_get(rec, "input"), *out = jd_get(rec, "output"),
			*sys = jd_get(rec, "system");
	if (!ins || ins->kind != JD_STRING)
		return err_set(err, "alpaca record: \"instruction\" must be a string");
	if (in && in->kind != JD_STRING && in->kind != JD_NULL)
		return err_set(err, "alpaca record: \"input\" must be a string");
	if (out && out->kind != JD_STRING && out->kind != JD_NULL)
		return err_set(err, "alpaca record: \"output\" must be a string");
	struct jd *m = jd_alloc(a, 3 * sizeof *m);
	if (!m)
		return err_sys(err, "out of memory");
	uint32_t n = 0;
	if (sys && sys->kind == JD_STRING && sys->n > 0)
		m[n++] = jd_message(a, "system", *sys);
	struct jd user = *ins;
	if (in && in->kind == JD_STRING && in->n > 0) {
		char *s = jd_alloc(a, (size_t)ins->n + 1 + in->n + 1);
		if (s) {
			memcpy(s, ins->u.s, ins->n);
			s[ins->n] = '\n';
			memcpy(s + ins->n + 1, in->u.s, (size_t)in->n + 1);
			user = (struct jd){.kind = JD_STRING, .n = ins->n + 1 + in->n, .u.s = s};
		}
	}
	m[n++] = jd_message(a, "user", user);
	if (out && out->kind == JD_STRING)
		m[n++] = jd_message(a, "assistant", *out);
	*msgs = jd_array_of(m, n);
	return out_of_memory(a, err);
}

/* ShareGPT as LLaMA-Factory reads it: human/user, gpt/assistant, system,
 * observation/tool (tool results), function_call (a JSON {"name","arguments"}
 * or a list of them, becoming the assistant's tool_calls). A "system" key
 * gives the system prompt; "tools" may be an array or JSON text of one. */
static int from_sharegpt(const struct jd *rec, struct jd_arena *a, struct jd *msgs, struct jd *tools,
			 struct err *err)
{
	const struct jd *conv = jd_get(rec, "conversations");
	if (!conv || conv->kind != JD_ARRAY)
		return err_set(err, "sharegpt record: \"conversations\" must be an array");
	struct jd *m = jd_alloc(a, ((size_t)conv->n + 1) * sizeof *m);
	if (!m)
		return err_sys(err, "out of memory");
	uint32_t n = 0;
	const struct jd *sys = jd_get(rec, "system");
	if (sys && sys->kind == JD_STRING && sys->n > 0)
		m[n++] = jd_message(a, "system", *sys);
	for (uint32_t i = 0; i < conv->n; i++) {
		const struct jd *t = &conv->u.items[i];
		const struct jd *from = jd_get(t, "from"), *value = jd_get(t, "value");
		const char *role = NULL;
		int is_call = 0;
		if (from && from->kind == JD_STRING) {
			const char *f = from->u.s;
			if (!strcmp(f, "human") || !strcmp(f, "user"))
				role = "user";
			else if (!strcmp(f, "gpt") || !strcmp(f, "assistant"))
				role = "assistant";
			else if (!strcmp(f, "system"))
				role = "system";
			else if (!strcmp(f, "tool") || !strcmp(f, "observation") || !strcmp(f, "function_response"))
				role = "tool";
			else if (!strcmp(f, "function_call"))
				role = "assistant", is_call = 1;
		}
		if (t->kind != JD_OBJECT || !role || !value || value->kind != JD_STRING) {
			if (from && from->kind == JD_STRING && !role)
				return err_set(err, "sharegpt turn %u: unknown \"from\": \"%s\" (human, gpt, system, tool, "
						    "function_call, observation)", i, from->u.s);
			return err_set(err, "sharegpt turn %u: expected {\"from\": string, \"value\": string}", i);
		}
		if (!is_call) {
			m[n++] = jd_message(a, role, *value);
			continue;
		}
		struct jd calls;
		struct err e2 = {0};
		if (jsonl_parse_jd(value->u.s, value->n, a, &calls, &e2) < 0)
			calls = jd_null();
		if (calls.kind == JD_OBJECT) {
			struct jd *one = jd_alloc(a, sizeof *one);
			if (!one)
				return err_sys(err, "out of memory");
			*one = calls;
			calls = jd_array_of(one, 1);
		}
		if (calls.kind != JD_ARRAY)
			return err_set(err, "sharegpt turn %u: function_call value is not a JSON object or array", i);
		struct jd *tc = jd_alloc(a, ((size_t)calls.n + 1) * sizeof *tc);
		struct jd_member *mm = jd_alloc(a, 3 * sizeof *mm);
		if (!tc || !mm)
			return err_sys(err, "out of memory");
		for (uint32_t k = 0; k < calls.n; k++) {
			struct jd_member *c = jd_alloc(a, 2 * sizeof *c);
			if (!c)
				return err_sys(err, "out of memory");
			c[0] = (struct jd_member){jd_lit(a, "type"), jd_lit(a, "function")};
			c[1] = (struct jd_member){jd_lit(a, "function"), calls.u.items[k]};
			tc[k] = (struct jd){.kind = JD_OBJECT, .n = 2, .u.members = c};
		}
		mm[0] = (struct jd_member){jd_lit(a, "role"), jd_lit(a, "assistant")};
		mm[1] = (struct jd_member){jd_lit(a, "content"), jd_null()};
		mm[2] = (struct jd_member){jd_lit(a, "tool_calls"), jd_array_of(tc, calls.n)};
		m[n++] = (struct jd){.kind = JD_OBJECT, .n = 3, .u.members = mm};
	}
	*msgs = jd_array_of(m, n);
	const struct jd *tl = jd_get(rec, "tools");
	struct jd tv = tl ? *tl : jd_null();
	if (tv.kind == JD_STRING) {
		struct err e2 = {0};
		if (jsonl_parse_jd(tl->u.s, tl->n, a, &tv, &e2) < 0 || tv.kind != JD_ARRAY)
			return err_set(err, "sharegpt record: \"tools\" text is not a JSON array");
	}
	if (tv.kind == JD_ARRAY)
		*tools = tv;
	else if (tv.kind != JD_NULL)
		return err_set(err, "sharegpt record: \"tools\" must be an array or its JSON text");
	return out_of_memory(a, err);
}

int chat_to_messages(const struct jd *rec, enum chat_input fmt, struct jd_arena *a, struct jd *msgs, struct jd *tools,
		     struct err *err)
{
	*tools = jd_null();
	if (rec->kind != JD_OBJECT)
		return err_set(err, "expected an object");
	if (fmt == CHAT_INPUT_AUTO) {
		fmt = jd_get(rec, "messages")	     ? CHAT_INPUT_OPENAI
		      : jd_get(rec, "conversations") ? CHAT_INPUT_SHAREGPT
		      : jd_get(rec, "instruction")   ? CHAT_INPUT_ALPACA
						     : CHAT_INPUT_AUTO;
		if (fmt == CHAT_INPUT_AUTO)
			return err_set(err, "no \"messages\", \"conversations\" or \"instruction\": not an OpenAI, "
					    "ShareGPT or Alpaca record (map it with --jq)");
	}
	if (fmt == CHAT_INPUT_ALPACA)
		return from_alpaca(rec, a, msgs, err);
	if (fmt == CHAT_INPUT_SHAREGPT)
		return from_sharegpt(rec, a, msgs, tools, err);
	const struct jd *m = jd_get(rec, "messages"), *t = jd_get(rec, "tools");
	if (!m || m->kind != JD_ARRAY)
		return err_set(err, "\"messages\" must be an array");
	if (t && t->kind == JD_ARRAY)
		*tools = *t;
	else if (t && t->kind != JD_NULL)
		return err_set(err, "\"tools\" must be an array");
	*msgs = *m;
	return 0;
}

/* -------------------------------------------------------------- validation */

/* Content that is only white space counts as empty: templates trim it to
 * nothing, and an answer of nothing teaches nothing. White space as their
 * trim sees it, Python's (U+3000, U+2028 ... too). */
static int blank(const struct jd *s)
{
	size_t lo, hi;
	tmpl_strip_span(s->u.s, s->n, &lo, &hi);
	return lo == hi;
}

static int content_ok(const struct jd *c)
{
	if (c && c->kind == JD_STRING)
		return !blank(c);
	if (!c || c->kind != JD_ARRAY || c->n == 0)
		return 0;
	/* OpenAI content parts: each an object with a "type". */
	for (uint32_t i = 0; i < c->n; i++)
		if (c->u.items[i].kind != JD_OBJECT || !jd_get(&c->u.items[i], "type"))
			return 0;
	return 1;
}

/* The function object of a tool call: tc.function, or tc itself for the flat
 * {"name","arguments"} form some datasets use. */
static const struct jd *call_function(const struct jd *tc)
{
	const struct jd *f = jd_get(tc, "function");
	return f ? f : tc;
}

static int check_tool_calls(const struct jd *calls, int mi, struct err *err)
{
	if (calls->kind != JD_ARRAY || calls->n == 0)
		return err_set(err, "message %d: \"tool_calls\" must be a non-empty array", mi);
	for (uint32_t j = 0; j < calls->n; j++) {
		const struct jd *tc = &calls->u.items[j];
		const struct jd *f = tc->kind == JD_OBJECT ? call_function(tc) : NULL;
		if (!f || f->kind != JD_OBJECT)
			return err_set(err, "message %d: tool call %u: expected {\"type\": \"function\", \"function\": "
					    "{\"name\", \"arguments\"}}", mi, j);
		const struct jd *name = jd_get(f, "name"), *args = jd_get(f, "arguments"), *type = jd_get(tc, "type");
		if (!name || name->kind != JD_STRING || name->n == 0)
			return err_set(err, "message %d: tool call %u: \"function.name\" must be a non-empty string", mi, j);
		if (!args || (args->kind != JD_OBJECT && args->kind != JD_STRING))
			return err_set(err, "message %d: tool call %u: \"function.arguments\" must be an object or JSON text",
				       mi, j);
		if (type && type->kind != JD_NULL && (type->kind != JD_STRING || strcmp(type->u.s, "function")))
			return err_set(err, "message %d: tool call %u: \"type\" must be \"function\"", mi, j);
	}
	return 0;
}

enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, ROLE_TOOL };
static const char *const role_names[] = {"system", "user", "assistant", "tool"};

/* The ROLE_* of r, or -1. */
static int role_code(const char *r)
{
	for (int k = 0; k < 4; k++)
		if (!strcmp(r, role_names[k]))
			return k;
	return -1;
}

/* chat_validate, also setting roles[i] to message i's ROLE_* and calls[i]
 * to whether it carries tool calls when roles and calls are not NULL (room
 * for every message). */
static int validate(const struct jd *messages, unsigned char *roles, unsigned char *calls_out, struct err *err)
{
	if (messages->kind != JD_ARRAY)
		return err_set(err, "\"messages\" must be an array");
	if (messages->n == 0)
		return err_set(err, "\"messages\" is empty");
	int seen_turn = 0;
	int call_open = 0; /* a tool call awaits results */
	for (uint32_t u = 0; u < messages->n; u++) {
		int i = (int)u;
		const struct jd *m = &messages->u.items[u];
		if (m->kind != JD_OBJECT)
			return err_set(err, "message %d: expected an object", i);
		const struct jd *role = NULL, *content = NULL, *calls = NULL;
		for (uint32_t k = 0; k < m->n; k++) { /* the three keys looked at, in one pass */
			const struct jd *key = &m->u.members[k].key;
			if (key->n == 4 && !memcmp(key->u.s, "role", 4))
				role = &m->u.members[k].val;
			else if (key->n == 7 && !memcmp(key->u.s, "content", 7))
				content = &m->u.members[k].val;
			else if (key->n == 10 && !memcmp(key->u.s, "tool_calls", 10))
				calls = &m->u.members[k].val;
		}
		int has_calls = calls && calls->kind != JD_NULL;
		const char *r = role && role->kind == JD_STRING ? role->u.s : NULL;
		int code = r ? role_code(r) : -1;
		int empty = !content || content->kind == JD_STRING || content->kind == JD_NULL;
		if (!r)
			return err_set(err, "message %d: \"role\" must be a string", i);
		if (code < 0)
			return err_set(err, "message %d: unknown role \"%s\" (system, user, assistant, tool)", i, r);
		if (code == ROLE_ASSISTANT && !seen_turn)
			return err_set(err, "message %d: the first message after the system prompt is the assistant's; "
					    "a conversation starts with the user", i);
		if (has_calls && code != ROLE_ASSISTANT)
			return err_set(err, "message %d: only assistant messages carry tool_calls (role \"%s\")", i, r);
		if (has_calls && check_tool_calls(calls, i, err) < 0)
			return -1;
		if (!content_ok(content) && !(has_calls && empty))
			return err_set(err, "message %d: %s content%s", i, empty ? "empty" : "bad",
				       empty ? " (white space only counts as empty; null is allowed beside tool_calls)"
					     : ": expected a string or an array of content parts");
		if (code == ROLE_TOOL && !call_open)
			return err_set(err, "message %d: a tool result without a preceding assistant tool call", i);
		if (roles)
			roles[i] = (unsigned char)code, calls_out[i] = (unsigned char)has_calls;
		if (code != ROLE_SYSTEM)
			seen_turn = 1;
		if (code == ROLE_ASSISTANT)
			call_open = has_calls;
		else if (code == ROLE_USER)
			call_open = 0;
	}
	return 0;
}

int chat_validate(const struct jd *messages, struct err *err) { return validate(messages, NULL, NULL, err); }

/* ------------------------------------------------------ tool-call arguments */

/* chat_args_normalize looking only at the messages with calls_at[i] set
 * (all when calls_at is NULL). */
static int args_normalize(const struct jd *messages, enum chat_args mode, const unsigned char *calls_at,
			  struct jd_arena *a, struct jd *out, struct err *err)
{
	*out = *messages;
	struct jd *items = NULL; /* the messages, copied at the first change */
	for (uint32_t i = 0; i < messages->n; i++) {
		if (calls_at && !calls_at[i])
			continue;
		const struct jd *m = &messages->u.items[i];
		const struct jd *calls = jd_get(m, "tool_calls");
		if (!calls || calls->kind != JD_ARRAY)
			continue;
		struct jd *nc = NULL; /* the calls, copied at the first change */
		for (uint32_t j = 0; j < calls->n; j++) {
			const struct jd *tc = &calls->u.items[j], *f = call_function(tc);
			const struct jd *args = jd_get(f, "arguments");
			int is_string = args && args->kind == JD_STRING;
			if (!args || (mode == CHAT_ARGS_OBJECT ? !is_string : is_string)) /* as the template wants them */
				continue;
			struct jd v;
			struct err e2 = {0};
			if (mode == CHAT_ARGS_OBJECT) {
				if (jsonl_parse_jd(args->u.s, args->n, a, &v, &e2) < 0)
					return err_set(err, "message %u: tool call %u: \"arguments\" is not JSON text: %s", i, j,
						       e2.msg);
			} else if (tmpl_tojson(args, a, &v, &e2) < 0) { /* as a Python dataset would hold them */
				return err_set(err, "message %u: tool call %u: \"arguments\" cannot be written as JSON: %s", i,
					       j, e2.msg);
			}
			struct jd nf = jd_with(a, f, "arguments", v);
			if (!nc && !(nc = items_copy(a, calls)))
				return err_sys(err, "out of memory");
			nc[j] = f == tc ? nf : jd_with(a, tc, "function", nf);
		}
		if (!nc) /* copies of unchanged objects would only cost */
			continue;
		if (!items && !(items = items_copy(a, messages)))
			return err_sys(err, "out of memory");
		items[i] = jd_with(a, m, "tool_calls", jd_array_of(nc, calls->n));
	}
	if (items)
		out->u.items = items;
	return out_of_memory(a, err);
}

int chat_args_normalize(const struct jd *messages, enum chat_args mode, struct jd_arena *a, struct jd *out,
			struct err *err)
{
	return args_normalize(messages, mode, NULL, a, out, err);
}

/* The end of the JSON value that starts at s[i] ('{' or '['), or 0. */
static size_t json_value_end(const char *s, size_t len, size_t i)
{
	int depth = 0, in_str = 0;
	for (size_t k = i; k < len; k++) {
		char c = s[k];
		if (in_str) {
			if (c == '\\')
				k++;
			else if (c == '"')
				in_str = 0;
		} else if (c == '"') {
			in_str = 1;
		} else if (c == '{' || c == '[') {
			if (++depth > 256)
				return 0;
		} else if (c == '}' || c == ']') {
			if (--depth == 0)
				return k + 1;
		}
	}
	return 0;
}

int chat_json_find(const char *text, size_t len, const struct jd *want)
{
	struct jd_arena a = {0};
	int found = 0;
	for (size_t i = 0; i < len && !found; i++) {
		if (text[i] != '{' && text[i] != '[')
			continue;
		size_t end = json_value_end(text, len, i);
		if (!end)
			continue;
		struct jd v;
		struct err e = {0};
		found = jsonl_parse_jd(text + i, end - i, &a, &v, &e) == 0 && jd_equal(&v, want);
		jd_arena_reset(&a);
	}
	jd_arena_free(&a);
	return found;
}

/* ------------------------------------------------------------------- model */

struct chat_model {
	int borrowed;          /* a thread's copy: the templates and markers are the original's */
	struct tmpl *tmpl;     /* the template, or the "default" of a list */
	struct tmpl *tool_use; /* the "tool_use" one of a list, used when tools are given */
	jv tokens;             /* the special tokens map */
	struct chat_markers mk;
	const char **mk_store;   /* the markers' texts, in mk_text (one block for thousands, */
	size_t *mk_len;
	struct jd_arena mk_text;
	struct jd_arena mk_list; /* or in tokenizer.json's added tokens as parsed: Gemma 3 has 6,415) */
	enum chat_args args, args_tool_use;
	int agp, agp_tool_use; /* the template honors add_generation_prompt */
	int args_json, args_json_tool_use; /* the probe saw the template print arguments as JSON */
	struct tmpl_cache *cache; /* this model's own (each thread's copy has one): values records repeat */
	struct chat_memo *memo;   /* the same: shapes of record (chat_memo.h) */
	struct gguf *gguf;        /* while loading from a GGUF: it, opened once for the template and the markers */
};

/* A token value of tokenizer_config.json: a string or an AddedToken object. */
static jv token_string(jv v)
{
	if (jv_get_kind(v) == JV_KIND_OBJECT) {
		jv c = obj_get(v, "content");
		jv_free(v);
		v = c;
	}
	if (jv_get_kind(v) == JV_KIND_STRING && jv_string_length_bytes(jv_copy(v)) > 0)
		return v;
	jv_free(v);
	return jv_invalid();
}

static const char *const token_attrs[] = {"bos_token", "eos_token", "unk_token", "sep_token",
					  "pad_token", "cls_token", "mask_token"};

/* special_tokens_map as transformers 4.57 builds it: the seven attributes set
 * to a non-empty string, additional_special_tokens when non-empty, then the
 * extra_special_tokens' names. */
static jv config_tokens(jv cfg)
{
	jv map = jv_object();
	for (size_t i = 0; i < sizeof token_attrs / sizeof *token_attrs; i++) {
		jv s = token_string(obj_get(cfg, token_attrs[i]));
		if (jv_is_valid(s))
			map = jv_object_set(map, jv_string(token_attrs[i]), s);
		else
			jv_free(s);
	}
	jv add = obj_get(cfg, "additional_special_tokens");
	if (jv_get_kind(add) == JV_KIND_ARRAY && jv_array_length(jv_copy(add)) > 0) {
		jv list = jv_array();
		jv_array_foreach(add, i, t) {
			jv s = token_string(t);
			if (jv_is_valid(s))
				list = jv_array_append(list, s);
			else
				jv_free(s);
			(void)i;
		}
		map = jv_object_set(map, jv_string("additional_special_tokens"), list);
	}
	jv_free(add);
	jv extra = obj_get(cfg, "extra_special_tokens");
	if (jv_get_kind(extra) == JV_KIND_OBJECT) {
		jv_object_foreach(extra, k, t) {
			jv s = token_string(t);
			if (jv_is_valid(s))
				map = jv_object_set(map, k, s);
			else
				jv_free(s), jv_free(k);
		}
	}
	jv_free(extra);
	return map;
}

/* tokenizer_config.json's members read here (token_attrs, the lists of more
 * special tokens and the template) built alone: the rest, a megabyte of
 * added_tokens_decoder in Gemma 3's, is only checked to be JSON. Text the
 * direct parser does not take is parsed whole, which says what is wrong
 * where. */
static int load_config(const char *path, jv *cfg, struct err *err)
{
	enum { NATTRS = sizeof token_attrs / sizeof *token_attrs };
	const char *keep[NATTRS + 3] = {[NATTRS] = "additional_special_tokens", "extra_special_tokens", "chat_template"};
	memcpy(keep, token_attrs, sizeof token_attrs);
	/* mapped, not read: a megabyte copied into fresh pages costs a millisecond */
	const void *map;
	size_t n;
	if (wholefile_map(path, &map, &n, err) < 0)
		return -1;
	if (n > CHAT_MAX_FILE) {
		wholefile_unmap(map, n);
		return err_set(err, "%s: not a regular file of at most %u bytes", path, CHAT_MAX_FILE);
	}
	const char *text = map ? map : "";
	struct jd_arena a = {0};
	struct jd d;
	int r = 0;
	if (jsonl_parse_jd_keep(text, n, keep, sizeof keep / sizeof *keep, 1, &a, &d, NULL) == 0 && d.kind == JD_OBJECT) {
		*cfg = jv_object();
		for (uint32_t i = 0; i < d.n; i++)
			*cfg = jv_object_set(*cfg, jv_string(d.u.members[i].key.u.s), jsonl_jv_of(&d.u.members[i].val));
	} else {
		r = jsonl_parse(text, n, path, cfg, err);
	}
	jd_arena_free(&a);
	wholefile_unmap(map, n);
	return r;
}

static int compile_into(struct tmpl **t, const char *src, size_t len, const char *name, struct err *err)
{
	*t = tmpl_compile(src, len, name, err);
	return *t ? 0 : -1;
}

/* Loads a Hugging Face folder's template(s) and tokens map. */
static int load_folder(struct chat_model *m, const char *dir, int want_template, struct err *err)
{
	char path[4096];
	size_t len;
	snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
	jv cfg = jv_object();
	int have_cfg = access(path, F_OK) == 0;
	if (have_cfg) {
		jv_free(cfg);
		if (load_config(path, &cfg, err) < 0)
			return -1;
		if (jv_get_kind(cfg) != JV_KIND_OBJECT) {
			jv_free(cfg);
			return err_set(err, "%s: not a JSON object", path);
		}
	}
	m->tokens = config_tokens(cfg);
	int rc = 0;
	if (want_template) {
		/* transformers reads chat_template.jinja over the config's chat_template. */
		char jpath[4096];
		snprintf(jpath, sizeof jpath, "%s/chat_template.jinja", dir);
		struct err e2 = {0};
		char *src = access(jpath, R_OK) == 0 ? wholefile_read(jpath, CHAT_MAX_FILE, &len, &e2) : NULL;
		jv ct = obj_get(cfg, "chat_template");
		if (src) {
			rc = compile_into(&m->tmpl, src, len, "chat_template.jinja", err);
			free(src);
		} else if (jv_get_kind(ct) == JV_KIND_STRING) {
			rc = compile_into(&m->tmpl, jv_string_value(ct), jv_string_length_bytes(jv_copy(ct)),
					  "chat_template", err);
		} else if (jv_get_kind(ct) == JV_KIND_ARRAY) {
			jv_array_foreach(ct, i, e) {
				jv name = obj_get(e, "name"), src2 = obj_get(e, "template");
				if (rc == 0 && jv_get_kind(name) == JV_KIND_STRING && jv_get_kind(src2) == JV_KIND_STRING) {
					const char *nm = jv_string_value(name);
					struct tmpl **slot = !strcmp(nm, "default")    ? &m->tmpl
							     : !strcmp(nm, "tool_use") ? &m->tool_use
										       : NULL;
					if (slot && !*slot)
						rc = compile_into(slot, jv_string_value(src2),
								  jv_string_length_bytes(jv_copy(src2)), nm, err);
				}
				jv_free(name), jv_free(src2), jv_free(e);
				(void)i;
			}
			if (rc == 0 && !m->tmpl && !m->tool_use)
				rc = err_set(err, "%s: chat_template lists no \"default\" or \"tool_use\" template", path);
		} else if (!have_cfg) {
			rc = err_set(err, "%s: no tokenizer_config.json or chat_template.jinja (or name a --template)", dir);
		} else {
			rc = err_set(err, "%s: no chat_template (name one with --template, e.g. --template chatml)", path);
		}
		jv_free(ct);
	}
	jv_free(cfg);
	return rc;
}

static int load_gguf(struct chat_model *m, const char *file, int want_template, struct err *err)
{
	struct gguf *g = gguf_open(file, err);
	if (!g)
		return -1;
	static const char *const keys[] = {"bos_token_id", "eos_token_id", "unknown_token_id", "seperator_token_id",
					   "padding_token_id", "cls_token_id", "mask_token_id"};
	m->tokens = jv_object();
	char key[128];
	for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
		snprintf(key, sizeof key, "tokenizer.ggml.%s", keys[i]);
		uint32_t id;
		struct err e2 = {0};
		if (gguf_find_key(g, key) < 0 || gguf_get_u32(g, key, &id, &e2) < 0)
			continue;
		size_t len;
		const char *s = gguf_get_arr_str(g, "tokenizer.ggml.tokens", id, &len);
		if (s && len)
			m->tokens = jv_object_set(m->tokens, jv_string(token_attrs[i]), jv_string_sized(s, (int)len));
	}
	int rc = 0;
	if (want_template) {
		const char *src;
		size_t len;
		if (gguf_find_key(g, "tokenizer.chat_template") < 0)
			rc = err_set(err, "%s: no tokenizer.chat_template (name one with --template, e.g. --template chatml)",
				     file);
		else if (gguf_get_str(g, "tokenizer.chat_template", &src, &len, err) < 0)
			rc = -1;
		else
			rc = compile_into(&m->tmpl, src, len, "tokenizer.chat_template", err);
	}
	m->gguf = g; /* for the markers; chat_model_load closes it */
	return rc;
}

static int is_gguf(const char *path)
{
	size_t n = strlen(path);
	return n > 5 && !strcmp(path + n - 5, ".gguf");
}

/* Appends a copy of s (n bytes) to the list v of *len strings. */
static int strs_add(char ***v, size_t *len, size_t *cap, const char *s, size_t n, struct err *err)
{
	if (*len == *cap) {
		size_t c = *cap ? 2 * *cap : 16;
		char **p = realloc(*v, c * sizeof *p);
		if (!p)
			return err_sys(err, "out of memory");
		*v = p, *cap = c;
	}
	if (!((*v)[*len] = strndup(s, n)))
		return err_sys(err, "out of memory");
	(*len)++;
	return 0;
}

/* Keeps a copy of s[0..n) (up to a NUL) as marker number m->mk.n; or,
 * with kept, s itself, a text of m->mk_list (n bytes, no NUL, one after). */
static int marker_add(struct chat_model *m, size_t *cap, const char *s, size_t n, int kept, struct err *err)
{
	if (m->mk.n == *cap) {
		size_t c = *cap ? 2 * *cap : 16;
		const char **p = realloc(m->mk_store, c * sizeof *p);
		if (p)
			m->mk_store = p;
		size_t *l = p ? realloc(m->mk_len, c * sizeof *l) : NULL;
		if (!l)
			return err_sys(err, "out of memory");
		m->mk_len = l, *cap = c;
	}
	if (!kept) {
		n = strnlen(s, n);
		char *t = jd_alloc(&m->mk_text, n + 1);
		if (!t)
			return err_sys(err, "out of memory");
		memcpy(t, s, n);
		t[n] = 0;
		s = t;
	}
	m->mk_store[m->mk.n] = s, m->mk_len[m->mk.n] = n;
	m->mk.n++;
	return 0;
}

/* tokenizer.json's added_tokens, read on a thread of their own while the
 * main thread reads tokenizer_config.json and compiles the template (the
 * rest of a 33 MB tokenizer.json is searched for a repeat of the key: see
 * added_read). */
struct added {
	char path[4096];
	int json;    /* the folder has a tokenizer.json */
	int running; /* read on th, not yet joined */
	pthread_t th;
	int state; /* 1 read; 0 not of the simple form (the tokenizer's loader says why); -1 out of memory */
	uint32_t n;
	struct jd_arena ar;
	const struct jd **content;   /* each entry's content */
	unsigned char *first, *special; /* first entry of its content; special: any entry of it is */
};

/* The list of added tokens at s[0..n) (null: none) parsed into d->ar, of
 * each entry only the two members read (the rest checked, not built: a
 * third of the time of building all seven). used NULL: s[0..n) is the
 * list; else it begins s, and *used is set to its length. 1, or 0 when it
 * is not a JSON array the direct parser takes (the tokenizer's loader then
 * says why). */
static int added_parse(struct added *d, const char *s, size_t n, struct jd *list, size_t *used)
{
	static const char *const keep[] = {"content", "special"};
	jd_arena_reset(&d->ar);
	if (jsonl_parse_jd_keep(s, n, keep, 2, 2, &d->ar, list, used) < 0)
		return 0;
	if (list->kind == JD_NULL)
		*list = (struct jd){.kind = JD_ARRAY};
	return list->kind == JD_ARRAY;
}

/* jsonl_key_may_recur on a thread of its own. */
struct recur_check {
	const char *s;
	size_t n;
	int may;
};

static void *recur_check_main(void *arg)
{
	struct recur_check *r = arg;
	r->may = jsonl_key_may_recur(r->s, r->n, "added_tokens");
	return NULL;
}

/* Past the JSON white space of text[at..len). */
static size_t past_ws(const char *text, size_t at, size_t len)
{
	while (at < len && (text[at] == ' ' || text[at] == '\t' || text[at] == '\r' || text[at] == '\n'))
		at++;
	return at;
}

static void added_read(struct added *d)
{
	/* mapped, not read: of tens of megabytes only the added tokens are parsed,
	 * and copying the rest would cost more than scanning it. A file that
	 * cannot be mapped is left to the tokenizer's loader, which says why. */
	const void *map;
	size_t len;
	struct err ignored = {0};
	d->state = 0;
	if (wholefile_map(d->path, &map, &len, &ignored) < 0)
		return;
	const char *text = map;
	size_t a = 0, at = text ? past_ws(text, 0, len) : 0;
	int found = text && at < len && text[at] == '{' ? jsonl_locate_start(text, len, "added_tokens", &a) : -1;
	if (found < 0) {
		wholefile_unmap(map, len);
		return;
	}
	/* The text from the list on (33 MB of Gemma 3's) is searched for a
	 * repeat of the key while the first list is parsed (its end found by
	 * the parse: one pass over it, not two); a repeated key means its last
	 * value, which jsonl_locate then finds. */
	struct recur_check rc = {0};
	if (found)
		rc.s = text + a, rc.n = len - a;
	pthread_t th;
	int running = found && msg_thread_start(&th, recur_check_main, &rc) == 0;
	struct jd list;
	size_t used = 0;
	int ok = found ? added_parse(d, text + a, len - a, &list, &used) : added_parse(d, "[]", 2, &list, NULL);
	if (found && ok) { /* the member ends there, as jsonl_locate would have it */
		size_t i = past_ws(text, a + used, len);
		ok = i < len && (text[i] == ',' || text[i] == '}');
	}
	if (running)
		pthread_join(th, NULL);
	else if (found)
		recur_check_main(&rc);
	size_t a2, b2;
	if (rc.may) {
		int again = jsonl_locate(text, len, "added_tokens", &a2, &b2);
		if (again < 0)
			ok = 0;
		else if (again && a2 != a)
			ok = added_parse(d, text + a2, b2 - a2, &list, NULL);
	}
	wholefile_unmap(map, len);
	uint32_t n = ok ? list.n : 0;
	size_t size = 16;
	while (size < 2 * (size_t)n)
		size *= 2;
	uint32_t *slot = calloc(size, sizeof *slot); /* index + 1 of the first entry of a content */
	d->first = calloc((size_t)n + 1, 2), d->special = d->first + n + 1;
	d->content = malloc(((size_t)n + 1) * sizeof *d->content);
	if (!slot || !d->first || !d->content) {
		free(slot);
		d->state = -1;
		return;
	}
	for (uint32_t i = 0; ok && i < n; i++) {
		const struct jd *e = &list.u.items[i], *c = jd_get(e, "content"), *sp = jd_get(e, "special");
		ok = e->kind == JD_OBJECT && c && c->kind == JD_STRING &&
		     (!sp || sp->kind == JD_TRUE || sp->kind == JD_FALSE || sp->kind == JD_NULL);
		if (!ok)
			break;
		d->content[i] = c;
		uint32_t h = 2166136261u; /* FNV-1a */
		for (uint32_t k = 0; k < c->n; k++)
			h = (h ^ (unsigned char)c->u.s[k]) * 16777619u;
		size_t s = h & (size - 1);
		while (slot[s] && !(d->content[slot[s] - 1]->n == c->n && !memcmp(d->content[slot[s] - 1]->u.s, c->u.s, c->n)))
			s = (s + 1) & (size - 1);
		if (!slot[s])
			slot[s] = i + 1, d->first[i] = 1;
		d->special[slot[s] - 1] |= sp && sp->kind == JD_TRUE; /* special when any entry of it is */
	}
	free(slot);
	d->n = n;
	d->state = ok;
}

static void *added_main(void *arg)
{
	added_read(arg);
	return NULL;
}

/* Starts reading folder model's tokenizer.json's added tokens on a thread
 * (or here, if none can start); added_wait has them. */
static void added_start(struct added *d, const char *model)
{
	struct stat st;
	snprintf(d->path, sizeof d->path, "%s/tokenizer.json", model);
	d->json = stat(model, &st) == 0 && S_ISDIR(st.st_mode) && stat(d->path, &st) == 0;
	if (!d->json)
		return;
	d->running = msg_thread_start(&d->th, added_main, d) == 0;
	if (!d->running)
		added_read(d);
}

static void added_wait(struct added *d)
{
	if (d->running)
		pthread_join(d->th, NULL);
	d->running = 0;
}

static void added_free(struct added *d)
{
	added_wait(d);
	free(d->first), free(d->content);
	jd_arena_free(&d->ar);
}

/* The markers from tokenizer.json's added_tokens alone, which say all the
 * loaded tokenizer would: an added token is special when any entry with its
 * content is. Returns 1 when done, 0 when the file is not of the simple form
 * (the caller loads the tokenizer, which says what is wrong), or -1. */
static int markers_from_json(struct chat_model *m, struct added *d, struct err *err)
{
	added_wait(d);
	if (d->state < 0)
		return err_sys(err, "out of memory");
	if (!d->state)
		return 0;
	/* The special ones first, then eos_token, then the rest. The contents
	 * are the parse's (the direct parser takes no \u0000: a content is a
	 * text of n bytes), kept with the model, not copied. */
	size_t cap = 0;
	int rc = 0;
	for (int tier = 0; tier < 2 && rc == 0; tier++) {
		for (uint32_t i = 0; i < d->n && rc == 0; i++)
			if (d->first[i] && d->content[i]->n && d->special[i] == !tier)
				rc = marker_add(m, &cap, d->content[i]->u.s, d->content[i]->n, 1, err);
		jv eos = obj_get(m->tokens, "eos_token");
		if (tier == 0 && rc == 0 && jv_get_kind(eos) == JV_KIND_STRING && *jv_string_value(eos))
			rc = marker_add(m, &cap, jv_string_value(eos), strlen(jv_string_value(eos)), 0, err);
		jv_free(eos);
		if (tier == 0)
			m->mk.nfirst = m->mk.n;
	}
	m->mk_list = d->ar, d->ar = (struct jd_arena){0};
	return rc < 0 ? -1 : 1;
}

static int markers_lengths(struct chat_model *m, struct err *err);

/* A GGUF's added tokens, read without building its tokenizer: the special
 * ones become markers at once, the others wait in rest for the second tier. */
struct gguf_markers {
	struct chat_model *m;
	size_t cap;
	char **rest;
	size_t nrest, rest_cap;
	struct err *err;
};

static int gguf_marker(void *arg, uint32_t id, const char *s, size_t n, int special)
{
	struct gguf_markers *g = arg;
	(void)id;
	if (n == 0 || !*s)
		return 0;
	return special ? marker_add(g->m, &g->cap, s, n, 0, g->err) : strs_add(&g->rest, &g->nrest, &g->rest_cap, s, n, g->err);
}

static int markers_from_gguf(struct chat_model *m, const char *path, struct err *err)
{
	struct gguf_markers g = {.m = m, .err = err};
	int rc = m->gguf ? tokenizer_gguf_added_of(m->gguf, path, gguf_marker, &g, err)
			 : tokenizer_gguf_added(path, gguf_marker, &g, err);
	jv eos = obj_get(m->tokens, "eos_token");
	if (rc == 0 && jv_get_kind(eos) == JV_KIND_STRING && *jv_string_value(eos))
		rc = marker_add(m, &g.cap, jv_string_value(eos), strlen(jv_string_value(eos)), 0, err);
	jv_free(eos);
	m->mk.nfirst = m->mk.n;
	for (size_t i = 0; i < g.nrest; i++) {
		if (rc == 0)
			rc = marker_add(m, &g.cap, g.rest[i], strlen(g.rest[i]), 0, err);
		free(g.rest[i]);
	}
	free(g.rest);
	return rc < 0 ? -1 : markers_lengths(m, err);
}

/* The end-of-turn candidates: every special added token and eos_token first,
 * then the other added tokens (see struct chat_markers). */
static int load_markers(struct chat_model *m, const char *model, struct added *added, struct err *err)
{
	struct stat st;
	int dir = stat(model, &st) == 0 && S_ISDIR(st.st_mode);
	int json = added->json;
	if (json) {
		int rc = markers_from_json(m, added, err);
		if (rc < 0)
			return -1;
		if (rc > 0)
			return markers_lengths(m, err);
		jd_arena_reset(&m->mk_text);
		m->mk.n = m->mk.nfirst = 0;
	}
	if (is_gguf(model))
		return markers_from_gguf(m, model, err);
	int count;
	char *gguf = dir && !json ? tokenizer_folder_gguf(model, &count) : NULL; /* as tokenizer_load finds it */
	if (gguf) {
		int rc = markers_from_gguf(m, gguf, err);
		free(gguf);
		return rc;
	}
	struct tokenizer *tk = tokenizer_load(model, err);
	if (!tk)
		return -1;
	uint32_t nv = tokenizer_vocab_size(tk);
	size_t cap = 0;
	int rc = 0;
	jv eos = obj_get(m->tokens, "eos_token");
	for (int tier = 0; tier < 2 && rc == 0; tier++) {
		for (uint32_t id = 0; id <= nv && rc == 0; id++) {
			const char *s = NULL;
			if (id < nv && tokenizer_is_added(tk, id) && tokenizer_is_special(tk, id) == !tier)
				s = tokenizer_token(tk, id);
			else if (id == nv && tier == 0 && jv_get_kind(eos) == JV_KIND_STRING)
				s = jv_string_value(eos);
			if (s && *s)
				rc = marker_add(m, &cap, s, strlen(s), 0, err);
		}
		if (tier == 0)
			m->mk.nfirst = m->mk.n;
	}
	jv_free(eos);
	tokenizer_free(tk);
	if (rc < 0)
		return -1;
	return markers_lengths(m, err);
}

static int markers_lengths(struct chat_model *m, struct err *err)
{
	if (!m->mk_len && !(m->mk_len = malloc(sizeof *m->mk_len)))
		return err_sys(err, "out of memory");
	m->mk.s = m->mk_store, m->mk.len = m->mk_len;
	m->mk.stop = malloc((m->mk.n + 1) * sizeof *m->mk.stop);
	if (!m->mk.stop)
		return err_sys(err, "out of memory");
	jv eos = obj_get(m->tokens, "eos_token");
	const char *es = jv_get_kind(eos) == JV_KIND_STRING ? jv_string_value(eos) : NULL;
	size_t en = es ? strlen(es) : 0;
	for (size_t i = 0; i < m->mk.n; i++) {
		if (tokenizer_eog_text(m->mk.s[i], m->mk.len[i]) || (es && m->mk.len[i] == en && !memcmp(m->mk.s[i], es, en)))
			m->mk.stop[m->mk.nstop++] = i;
	}
	jv_free(eos);
	return chat_markers_rank(&m->mk, err);
}

/* A marker in the sort of chat_markers_rank: its first 16 bytes as two
 * big-endian numbers (zeros past its end; a marker holds no NUL), which
 * order nearly every pair without a look at the text (Gemma 3 has 6,415,
 * "<unused0>" to "<unused6241>"). */
struct ranked {
	uint64_t head, next;
	size_t k, len;
};

static int cmp_ranked(const void *a, const void *b, void *arg)
{
	const struct ranked *x = a, *y = b;
	if (x->head != y->head)
		return x->head < y->head ? -1 : 1;
	if (x->next != y->next)
		return x->next < y->next ? -1 : 1;
	const struct chat_markers *mk = arg;
	size_t li = x->len, lj = y->len;
	int c = li > 16 && lj > 16 ? memcmp(mk->s[x->k] + 16, mk->s[y->k] + 16, (li < lj ? li : lj) - 16) : 0;
	return c ? c : (li > lj) - (li < lj);
}

/* Bytes [at, at + 8) of s[0..n) as a big-endian number, zeros past n. */
static uint64_t be8(const char *s, size_t n, size_t at)
{
	uint64_t h = 0;
	for (size_t i = at; i < at + 8; i++)
		h = h << 8 | (i < n ? (unsigned char)s[i] : 0);
	return h;
}

/* ix[0..n) in the order of cmp_ranked, through tmp (as long): a merge sort
 * whose comparisons are inlined, which qsort_r's cannot be (Gemma 3's 6,406
 * markers of one tier: 0.55 ms with qsort_r). */
static void sort_ranked(struct ranked *ix, struct ranked *tmp, size_t n, const struct chat_markers *mk)
{
	struct ranked *from = ix, *to = tmp;
	for (size_t w = 1; w < n; w *= 2) {
		for (size_t lo = 0; lo < n; lo += 2 * w) {
			size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
			size_t i = lo, j = mid, k = lo;
			while (i < mid && j < hi)
				to[k++] = cmp_ranked(&from[j], &from[i], (void *)mk) < 0 ? from[j++] : from[i++];
			while (i < mid)
				to[k++] = from[i++];
			while (j < hi)
				to[k++] = from[j++];
		}
		struct ranked *t = from;
		from = to, to = t;
	}
	if (from != ix)
		memcpy(ix, from, n * sizeof *ix);
}

int chat_markers_rank(struct chat_markers *mk, struct err *err)
{
	struct ranked *ix = malloc(2 * (mk->n + 1) * sizeof *ix), *tmp = ix + mk->n + 1;
	mk->maximal = malloc(mk->n + 1);
	if (!ix || !mk->maximal) {
		free(ix), free(mk->maximal);
		mk->maximal = NULL;
		return err_sys(err, "out of memory");
	}
	/* in byte order, the markers that begin with one follow it at once */
	for (int tier = 0; tier < 2; tier++) {
		size_t k0 = tier ? mk->nfirst : 0, k1 = tier ? mk->n : mk->nfirst;
		for (size_t k = k0; k < k1; k++)
			ix[k - k0] = (struct ranked){be8(mk->s[k], mk->len[k], 0), be8(mk->s[k], mk->len[k], 8), k, mk->len[k]};
		sort_ranked(ix, tmp, k1 - k0, mk);
		for (size_t r = 0; r < k1 - k0; r++) {
			size_t k = ix[r].k, q = r + 1; /* past copies of it, the next one */
			while (q < k1 - k0 && mk->len[ix[q].k] == mk->len[k] && !memcmp(mk->s[ix[q].k], mk->s[k], mk->len[k]))
				q++;
			mk->maximal[k] = !(q < k1 - k0 && mk->len[ix[q].k] > mk->len[k] &&
					   !memcmp(mk->s[ix[q].k], mk->s[k], mk->len[k]));
		}
	}
	free(ix);
	return 0;
}

/* The tool list of the probe conversations. */
static jv probe_tools(void)
{
	return JV_ARRAY(JV_OBJECT(
		jv_string("type"), jv_string("function"), jv_string("function"),
		JV_OBJECT(jv_string("name"), jv_string("probe_fn"), jv_string("description"), jv_string("probe"),
			  jv_string("parameters"),
			  JV_OBJECT(jv_string("type"), jv_string("object"), jv_string("properties"), jv_object()))));
}

/* Which argument form a template wants, found by rendering a probe
 * conversation with the arguments as an object: if the output holds them as
 * JSON, the template serializes them itself (| tojson), so it wants objects;
 * if it holds their value but not as Python prints a dict, the template
 * prints them field by field (Gemma 4's key:<|"|>value<|"|>, Qwen3-Coder's
 * <parameter=key>), so it wants objects too. Otherwise the arguments as JSON
 * text: if that text shows up, it wants strings (an object would have been
 * printed as a Python dict). A template that prints neither gets objects, the
 * form transformers documents. */
static void probe_args(const struct tmpl *t, jv tokens, enum chat_args *mode, int *json)
{
	static const char want_text[] = "{\"probe_key\": \"probe value\"}";
	struct jd_arena a = {0};
	struct jd want, text;
	struct err e0 = {0};
	*mode = CHAT_ARGS_OBJECT;
	*json = 0;
	if (jsonl_parse_jd(want_text, strlen(want_text), &a, &want, &e0) < 0 || tmpl_tojson(&want, &a, &text, &e0) < 0) {
		jd_arena_free(&a);
		return; /* out of memory: objects */
	}
	/* Content null first, then "": some templates print tool calls only
	 * beside null content (DeepSeek V3), others fail on null. */
	for (int pass = 0; pass < 4; pass++) {
		jv args = jsonl_jv_of(pass % 2 == 0 ? &want : &text);
		jv call = JV_OBJECT(jv_string("id"), jv_string("call12345"), jv_string("type"), jv_string("function"),
				    jv_string("function"),
				    JV_OBJECT(jv_string("name"), jv_string("probe_fn"), jv_string("arguments"), args));
		jv msgs = JV_ARRAY(msg_new("user", jv_string("probe")),
				   JV_OBJECT(jv_string("role"), jv_string("assistant"), jv_string("content"),
					     pass < 2 ? jv_null() : jv_string(""),
					     jv_string("tool_calls"), JV_ARRAY(call)));
		jv tools = probe_tools();
		jv ctx = jv_object_merge(JV_OBJECT(jv_string("messages"), msgs, jv_string("tools"), tools,
						   jv_string("documents"), jv_null(), jv_string("add_generation_prompt"),
						   jv_false()),
					 jv_copy(tokens));
		struct tmpl_output out = {0};
		struct err e = {0};
		int ok = tmpl_render(t, ctx, NULL, &out, &e) == 0;
		if (ok && chat_json_find(out.text, out.len, &want)) {
			*mode = pass % 2 == 0 ? CHAT_ARGS_OBJECT : CHAT_ARGS_STRING;
			*json = 1;
			tmpl_output_free(&out);
			break;
		}
		static const char value[] = "probe value", repr[] = "'probe_key': 'probe value'";
		if (ok && pass % 2 == 0 && memmem(out.text, out.len, value, sizeof value - 1) &&
		    !memmem(out.text, out.len, repr, sizeof repr - 1)) {
			tmpl_output_free(&out);
			break; /* objects, printed field by field */
		}
		tmpl_output_free(&out);
	}
	jd_arena_free(&a);
}

/* Whether a template writes a generation prompt: one user message rendered
 * with add_generation_prompt must differ from the same without it. Only then
 * does the prompt rendering before a turn say where the turn's body starts (a
 * template that ignores the flag would put the assistant header in the span).
 * Tried with a tool list first, then without, since some templates iterate
 * tools whenever it is defined. */
static int probe_agp(const struct tmpl *t, jv tokens)
{
	for (int with_tools = 1; with_tools >= 0; with_tools--) {
		struct tmpl_output o[2] = {{0}};
		int ok = 1;
		for (int k = 0; k < 2; k++) {
			jv ctx = jv_object_merge(
				JV_OBJECT(jv_string("messages"), JV_ARRAY(msg_new("user", jv_string("probe"))),
					  jv_string("tools"), with_tools ? probe_tools() : jv_null(), jv_string("documents"),
					  jv_null(), jv_string("add_generation_prompt"), k ? jv_true() : jv_false()),
				jv_copy(tokens));
			struct err e = {0};
			if (tmpl_render(t, ctx, NULL, &o[k], &e) < 0)
				ok = 0;
		}
		int differ = ok && (o[0].len != o[1].len || memcmp(o[0].text, o[1].text, o[0].len));
		tmpl_output_free(&o[0]);
		tmpl_output_free(&o[1]);
		if (ok)
			return differ;
	}
	return 0;
}

/* Whether folder dir holds any of the files of a Hugging Face model that ds-fmt reads. */
static int hf_folder(const char *dir)
{
	static const char *const names[] = {"tokenizer_config.json", "chat_template.jinja", "tokenizer.json"};
	char path[4096];
	for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
		snprintf(path, sizeof path, "%s/%s", dir, names[i]);
		if (access(path, F_OK) == 0)
			return 1;
	}
	return 0;
}

struct chat_model *chat_model_load(const char *model, const char *template, struct err *err)
{
	struct chat_model *m = calloc(1, sizeof *m);
	if (!m || !(m->cache = tmpl_cache_new()) || !(m->memo = chat_memo_new())) {
		if (m)
			tmpl_cache_free(m->cache);
		free(m);
		return err_sys(err, "out of memory"), NULL;
	}
	m->tokens = jv_invalid();
	struct added added = {0};
	added_start(&added, model);
	int rc, count;
	struct stat st;
	char *gguf = NULL; /* a folder's only file of a model: a GGUF */
	if (stat(model, &st) < 0)
		rc = err_set(err, "%s: no such model folder or file", model);
	else if (S_ISDIR(st.st_mode) && !hf_folder(model) && (gguf = tokenizer_folder_gguf(model, &count)))
		rc = load_gguf(m, model = gguf, !template, err);
	else if (S_ISDIR(st.st_mode))
		rc = load_folder(m, model, !template, err);
	else if (is_gguf(model))
		rc = load_gguf(m, model, !template, err);
	else
		rc = err_set(err, "%s: not a model folder or a .gguf file", model);
	if (rc == 0 && template) {
		const char *src = chat_builtin_template(template);
		if (src) {
			rc = compile_into(&m->tmpl, src, strlen(src), template, err);
		} else if (strchr(template, '/') || strchr(template, '.')) {
			size_t len;
			char *text = wholefile_read(template, CHAT_MAX_FILE, &len, err);
			rc = text ? compile_into(&m->tmpl, text, len, template, err) : -1;
			free(text);
		} else {
			rc = err_set(err, "--template %s: no such file, and not a built-in name (chatml, llama3, gemma, "
					  "mistral, alpaca)", template);
		}
	}
	if (rc == 0 && m->tmpl) { /* while the added tokens are read */
		probe_args(m->tmpl, m->tokens, &m->args, &m->args_json);
		m->agp = probe_agp(m->tmpl, m->tokens);
	}
	if (rc == 0 && m->tool_use) {
		probe_args(m->tool_use, m->tokens, &m->args_tool_use, &m->args_json_tool_use);
		m->agp_tool_use = probe_agp(m->tool_use, m->tokens);
	}
	if (rc == 0)
		rc = load_markers(m, model, &added, err);
	added_free(&added);
	gguf_close(m->gguf);
	m->gguf = NULL;
	free(gguf);
	if (rc < 0) {
		chat_model_free(m);
		return NULL;
	}
	return m;
}

jv chat_jv_clone(jv v)
{
	switch (jv_get_kind(v)) {
	case JV_KIND_STRING: {
		jv c = jv_string_sized(jv_string_value(v), jv_string_length_bytes(jv_copy(v)));
		jv_free(v);
		return c;
	}
	case JV_KIND_ARRAY: {
		jv c = jv_array();
		jv_array_foreach(v, i, e) {
			c = jv_array_append(c, chat_jv_clone(e));
			(void)i;
		}
		jv_free(v);
		return c;
	}
	case JV_KIND_OBJECT: {
		jv c = jv_object();
		jv_object_foreach(v, k, e)
			c = jv_object_set(c, chat_jv_clone(k), chat_jv_clone(e));
		jv_free(v);
		return c;
	}
	default:
		return v; /* numbers (their float mark kept), null, true, false and invalid hold no reference count */
	}
}

struct chat_model *chat_model_for_thread(const struct chat_model *m, struct err *err)
{
	struct chat_model *c = malloc(sizeof *c);
	if (!c)
		return err_sys(err, "out of memory"), NULL;
	*c = *m;
	c->borrowed = 1;
	c->tokens = chat_jv_clone(jv_copy(m->tokens));
	c->memo = chat_memo_new();
	if (!(c->cache = tmpl_cache_new()) || !c->memo) {
		tmpl_cache_free(c->cache);
		chat_memo_free(c->memo);
		jv_free(c->tokens);
		free(c);
		return err_sys(err, "out of memory"), NULL;
	}
	return c;
}

void chat_model_free(struct chat_model *m)
{
	if (!m)
		return;
	tmpl_cache_free(m->cache);
	chat_memo_free(m->memo);
	if (m->borrowed) {
		jv_free(m->tokens);
		free(m);
		return;
	}
	tmpl_free(m->tmpl);
	tmpl_free(m->tool_use);
	jv_free(m->tokens);
	free(m->mk_store);
	free(m->mk_len);
	jd_arena_free(&m->mk_text);
	jd_arena_free(&m->mk_list);
	free(m->mk.maximal);
	free(m->mk.stop);
	free(m);
}

jv chat_model_tokens(const struct chat_model *m) { return jv_copy(m->tokens); }
enum chat_args chat_model_args(const struct chat_model *m) { return m->tmpl ? m->args : m->args_tool_use; }

/* ------------------------------------------------------------------- spans */

static int cmp_span(const void *a, const void *b)
{
	const long *x = a, *y = b;
	return x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : (x[1] > y[1]) - (x[1] < y[1]);
}

/* Whether text[p..) begins with the marker s[0..len). Added tokens often
 * share their first bytes (<|im_start|>, <|im_end|>, ...): eight at once
 * tell most of them apart before memcmp. */
static int marker_at(const char *text, size_t n, size_t p, const char *s, size_t len)
{
	if (len > n - p || text[p] != s[0])
		return 0;
	if (len >= 8) {
		uint64_t a, b;
		memcpy(&a, text + p, 8);
		memcpy(&b, s, 8);
		if (a != b)
			return 0;
	}
	return !memcmp(text + p, s, len);
}

/* The end of the longest marker that ends generation beginning at p and
 * ending by lim, or 0. */
static size_t stop_at(const struct tmpl_output *out, size_t p, size_t lim, const struct chat_markers *mk)
{
	size_t best = 0;
	for (size_t j = 0; j < mk->nstop; j++) {
		size_t k = mk->stop[j];
		if (mk->len[k] > best && p + mk->len[k] <= lim && marker_at(out->text, out->len, p, mk->s[k], mk->len[k]))
			best = mk->len[k];
	}
	return best ? p + best : 0;
}

/* The marker that closed the calling thread's last turn, and of which list. */
static _Thread_local struct {
	const struct chat_markers *mk;
	size_t k;
} closer_hint;

/* Appends the learned span of message i, whose content and tool-call bytes
 * lie in runs first to last (SIZE_MAX: none), to sp (pairs), or returns -1. */
static int message_span(const struct tmpl_output *out, long i, size_t first, size_t last, long body, int agp,
			const struct chat_markers *mk, long *sp, size_t *nsp, struct err *err)
{
	if (first == SIZE_MAX)
		return err_set(err, "message %ld: the template does not print the assistant's content", i);
	/* The body: from where the generation prompt ends (when the bytes up to
	 * the first content byte are template text or this message's own), so a
	 * tool call's wrapper (<tool_call>{"name": ...) is learned too. */
	long start = out->runs[first].start;
	if (body >= 0 && body <= start) {
		int clean = 1;
		size_t r0 = 0, hi = first; /* the first run ending past body: runs before it do not matter */
		while (r0 < hi) {
			size_t mid = r0 + (hi - r0) / 2;
			if ((long)out->runs[mid].end <= body)
				r0 = mid + 1;
			else
				hi = mid;
		}
		for (size_t r = r0; r < first; r++) {
			const struct tmpl_run *run = &out->runs[r];
			if ((long)run->end > body && run->msg >= 0 && run->msg != i)
				clean = 0;
			/* Without a generation prompt the rendering before the turn
			 * stops before its header; a header prints the role. */
			if (!agp && (long)run->end > body && run->msg == i && run->origin == TMPL_MSG_OTHER)
				clean = 0;
		}
		if (clean)
			start = body;
	} else if (body > start && body < (long)out->runs[first].end) {
		/* The generation prompt ends inside the content: the content begins
		 * with what the prompt already holds (Nemotron 3's "<think>\n"). */
		start = body;
	}
	/* Inside a {% generation %} block, the block says where the turn starts. */
	for (size_t g = 0; g < out->ngen; g++)
		if (out->gen[g][0] <= out->runs[first].start && out->runs[first].start < out->gen[g][1] &&
		    start < (long)out->gen[g][0])
			start = out->gen[g][0];
	/* Between first and last, another message's bytes split the span. */
	long s0 = start;
	for (size_t r = first; r <= last; r++) {
		const struct tmpl_run *run = &out->runs[r];
		if (run->msg >= 0 && run->msg != i) {
			if ((long)run->start > s0) {
				sp[2 * *nsp] = s0, sp[2 * *nsp + 1] = run->start;
				++*nsp;
			}
			s0 = -1;
		} else if (s0 < 0 && run->msg == i &&
			   (run->origin == TMPL_MSG_CONTENT || run->origin == TMPL_MSG_TOOL_CALLS)) {
			s0 = run->start;
		}
	}
	long end = out->runs[last].end;
	/* The closer: template text after the last learned byte, up to and
	 * including the first end-of-turn marker that begins in it. */
	size_t cend = end;
	for (size_t r = last + 1; r < out->nruns; r++) {
		const struct tmpl_run *run = &out->runs[r];
		if (run->origin != TMPL_LITERAL && run->origin != TMPL_INPUT)
			break;
		cend = run->end;
	}
	long mend = -1;
	for (size_t p = end; p < cend && mend < 0; p++) {
		size_t e = stop_at(out, p, cend, mk);
		if (e)
			mend = (long)e;
	}
	for (int tier = 0; tier < 2 && mend < 0; tier++) {
		size_t k0 = tier ? mk->nfirst : 0, k1 = tier ? mk->n : mk->nfirst;
		for (size_t p = end; p < cend && mend < 0; p++) {
			size_t best = 0, h = closer_hint.k;
			/* the marker that closed the thread's last turn, first: when
			 * none extends it, it is the longest that begins here */
			if (closer_hint.mk == mk && mk->maximal && h >= k0 && h < k1 && mk->maximal[h] &&
			    marker_at(out->text, out->len, p, mk->s[h], mk->len[h])) {
				best = mk->len[h];
			} else {
				for (size_t k = k0; k < k1; k++)
					if (mk->len[k] > best && marker_at(out->text, out->len, p, mk->s[k], mk->len[k]))
						best = mk->len[k], h = k;
				if (best)
					closer_hint.mk = mk, closer_hint.k = h;
			}
			if (best)
				mend = (long)(p + best);
		}
	}
	if (mend < 0)
		return err_set(err, "message %ld: no end-of-turn marker (an added token) in the template text "
				    "after the assistant's turn", i);
	if (s0 >= 0) {
		sp[2 * *nsp] = s0, sp[2 * *nsp + 1] = mend;
		++*nsp;
	}
	return 0;
}

/* Whether run r holds content or tool-call bytes of one of the nmsg messages. */
static int learned_run(const struct tmpl_output *out, size_t r, size_t nmsg)
{
	const struct tmpl_run *run = &out->runs[r];
	return run->msg >= 0 && (size_t)run->msg < nmsg &&
	       (run->origin == TMPL_MSG_CONTENT || run->origin == TMPL_MSG_TOOL_CALLS) && run->end > run->start;
}

/* Message i's last learned run, of first..last, before a marker that ends
 * generation in the template text between them, where its turn (to
 * turn_end) prints another message's content or tool calls after that
 * marker: Gemma 4 follows a call with <|tool_response> and the results of
 * the tool messages that follow, headed by the call's name. Else last. */
static size_t last_before_stop(const struct tmpl_output *out, size_t i, size_t first, size_t last, size_t turn_end,
			       size_t nmsg, const struct chat_markers *mk)
{
	size_t prev = first;
	for (size_t r = first + 1; r < last; r++) {
		const struct tmpl_run *run = &out->runs[r];
		if (learned_run(out, r, nmsg) && (size_t)run->msg == i)
			prev = r;
		if (run->origin != TMPL_LITERAL && run->origin != TMPL_INPUT)
			continue;
		int stop = 0;
		for (size_t p = run->start; p < run->end && !stop; p++)
			stop = stop_at(out, p, run->end, mk) != 0;
		if (!stop)
			continue;
		for (size_t q = r + 1; q < out->nruns && out->runs[q].start < turn_end; q++)
			if (learned_run(out, q, nmsg) && (size_t)out->runs[q].msg != i)
				return prev;
		return last;
	}
	return last;
}

int chat_spans(const struct tmpl_output *out, const unsigned char *trained, const long *body_start, int agp,
	       size_t nmsg, const struct chat_markers *mk, long **spans, size_t *nspans, struct err *err)
{
	size_t cap = 2 * (out->nruns + nmsg + 1);
	long *sp = malloc(cap * 2 * sizeof *sp);
	size_t *first = malloc((nmsg + 1) * 3 * sizeof *first);
	if (!sp || !first) {
		free(sp), free(first);
		return err_sys(err, "out of memory");
	}
	size_t *last = first + nmsg + 1, *turn_end = last + nmsg + 1;
	/* each message's first run of content or tool-call bytes; the end of
	 * the turn that printed it (the outermost, as a loop over the messages
	 * may run inside another); its last run in that turn */
	for (size_t i = 0; i < nmsg; i++)
		first[i] = SIZE_MAX, last[i] = 0, turn_end[i] = 0;
	for (size_t r = 0; r < out->nruns; r++)
		if (learned_run(out, r, nmsg) && first[out->runs[r].msg] == SIZE_MAX)
			first[out->runs[r].msg] = r;
	for (size_t k = 0; k < out->nturns; k++) {
		const struct tmpl_turn *t = &out->turns[k];
		if (t->msg < 0 || (size_t)t->msg >= nmsg || first[t->msg] == SIZE_MAX)
			continue;
		uint32_t at = out->runs[first[t->msg]].start;
		if (t->start <= at && at < t->end && t->end > turn_end[t->msg])
			turn_end[t->msg] = t->end;
	}
	for (size_t r = 0; r < out->nruns; r++) {
		size_t i = (size_t)out->runs[r].msg;
		if (learned_run(out, r, nmsg) && (!turn_end[i] || out->runs[r].start < turn_end[i]))
			last[i] = r;
	}
	for (size_t i = 0; i < nmsg; i++)
		if (trained[i] && turn_end[i] && mk->nstop)
			last[i] = last_before_stop(out, i, first[i], last[i], turn_end[i], nmsg, mk);
	size_t nsp = 0;
	for (size_t i = 0; i < nmsg; i++) {
		if (trained[i] && message_span(out, (long)i, first[i], last[i], body_start ? body_start[i] : -1, agp, mk, sp,
					       &nsp, err) < 0) {
			free(sp), free(first);
			return -1;
		}
	}
	free(first);
	qsort(sp, nsp, 2 * sizeof *sp, cmp_span);
	size_t n = 0;
	for (size_t k = 0; k < nsp; k++) {
		if (n && sp[2 * k] <= sp[2 * (n - 1) + 1]) {
			if (sp[2 * k + 1] > sp[2 * (n - 1) + 1])
				sp[2 * (n - 1) + 1] = sp[2 * k + 1];
		} else {
			sp[2 * n] = sp[2 * k], sp[2 * n + 1] = sp[2 * k + 1];
			n++;
		}
	}
	/* {% generation %} blocks mark what transformers' assistant mask learns:
	 * every learned byte must lie in one. */
	if (out->ngen) {
		for (size_t k = 0; k < n; k++) {
			long a = sp[2 * k], b = sp[2 * k + 1];
			while (a < b) {
				long next = -1;
				for (size_t g = 0; g < out->ngen; g++)
					if ((long)out->gen[g][0] <= a && a < (long)out->gen[g][1])
						next = out->gen[g][1];
				if (next < 0) {
					free(sp);
					return err_set(err, "learned byte %ld lies outside the template's {%% generation %%} "
							    "blocks: the template and its generation marks disagree", a);
				}
				a = next;
			}
		}
	}
	*spans = sp;
	*nspans = n;
	return 0;
}

/* ------------------------------------------------------------- one record */

/* A record's own variables. apply_chat_template renders with
 * {**special_tokens_map, **kwargs}, then messages, tools (None when absent),
 * documents (None), add_generation_prompt: the first two are the layers
 * under these (tmpl_ctx_new_layered), converted once per thread. */
static struct tmpl_ctx *record_ctx(const struct chat_model *m, const struct chat_opts *o, const struct jd *msgs,
				   const struct jd *tools, struct err *err)
{
	struct jd none = jd_null(), agp = jd_bool(o->add_generation_prompt);
	struct tmpl_var vars[] = {
		{"messages", msgs},
		{"tools", tools},
		{"documents", &none},
		{"add_generation_prompt", &agp},
	};
	return tmpl_ctx_new_layered(jv_copy(m->tokens), jv_copy(o->vars), vars, sizeof vars / sizeof *vars, m->cache,
				    err);
}

/* Checks that each tool call's arguments, as printed, parse back to the value given. */
static int check_args_roundtrip(const struct tmpl_output *out, const struct jd *msgs, struct jd_arena *ja,
				struct err *err)
{
	uint32_t n = msgs->n;
	long *ab = malloc(2 * ((size_t)n + 1) * sizeof *ab); /* each message's tool-call bytes [a, b) */
	if (!ab)
		return err_sys(err, "out of memory");
	for (uint32_t i = 0; i < n; i++)
		ab[2 * i] = ab[2 * i + 1] = -1;
	for (size_t r = 0; r < out->nruns; r++) {
		const struct tmpl_run *run = &out->runs[r];
		if (run->origin == TMPL_MSG_TOOL_CALLS && run->msg >= 0 && (uint32_t)run->msg < n) {
			if (ab[2 * run->msg] < 0)
				ab[2 * run->msg] = run->start;
			ab[2 * run->msg + 1] = run->end;
		}
	}
	int rc = 0;
	for (uint32_t i = 0; i < n && rc == 0; i++) {
		long a = ab[2 * i], b = ab[2 * i + 1];
		const struct jd *calls = a < 0 ? NULL : jd_get(&msgs->u.items[i], "tool_calls");
		for (uint32_t j = 0; calls && calls->kind == JD_ARRAY && j < calls->n && rc == 0; j++) {
			const struct jd *args = jd_get(call_function(&calls->u.items[j]), "arguments");
			struct jd v;
			struct err e2 = {0};
			if (args && args->kind == JD_STRING && jsonl_parse_jd(args->u.s, args->n, ja, &v, &e2) == 0)
				args = &v;
			else if (args && args->kind == JD_STRING)
				args = NULL; /* not JSON: found nowhere */
			if (!args || !chat_json_find(out->text + a, (size_t)(b - a), args))
				rc = err_set(err, "message %u: tool call %u: the arguments the template printed do not "
						  "parse back to the same JSON value", i, j);
		}
	}
	free(ab);
	return rc;
}

/* When the generation prompt ends with text the turn lacks in the full
 * rendering (Qwen3 with enable_thinking false prompts with an empty think
 * block that earlier turns do not have): the turn's body starts at the last
 * place where a statement of the prefix rendering po ended and which the
 * full rendering ro still shares, if that place lies inside the generation
 * prompt (past the rendering of the earlier messages alone, so no header of
 * the turn is learned); else -1. */
static long prompt_shared(const struct tmpl *t, const struct tmpl_ctx *cx, int i, const struct tmpl_output *po,
			  const struct tmpl_output *ro, struct tmpl_trace *trace)
{
	size_t same = 0;
	while (same < po->len && same < ro->len && po->text[same] == ro->text[same])
		same++;
	long cut = -1;
	for (size_t k = 0; k < po->ncuts && po->cuts[k] <= same; k++)
		cut = (long)po->cuts[k];
	if (cut < 0)
		return -1;
	struct tmpl_output p0;
	struct err e2 = {0};
	if (tmpl_render_prefix(t, cx, (size_t)i, 0, ro, trace, 0, NULL, &p0, &e2) < 0)
		return -1;
	int inside = p0.len < (size_t)cut && !memcmp(p0.text, ro->text, p0.len);
	tmpl_output_free(&p0);
	return inside ? cut : -1;
}

/* What one record formats into: the rendering, its spans, the expected
 * answer (--add-generation-prompt), and the record itself, whose other keys
 * pass through. */
struct formatted {
	struct tmpl_output ro;
	long *spans; /* nspans [start, end) pairs */
	size_t nspans;
	const struct jd *expected; /* or NULL */
	const struct jd *rec;
	int written; /* the text was written from the memo (ro is empty), the spans came from it */
	const struct memo_shape *shape; /* the memo's shape the record took, or NULL */
};

static void formatted_free(struct formatted *f)
{
	tmpl_output_free(&f->ro);
	free(f->spans);
}

/* Whether an input key passes through: not one the conversion consumed,
 * nor one of the output's own ("text", "train", "expected" when there is
 * one), which the input's would otherwise overwrite. */
static int passes(const char *key, const struct jd *expected)
{
	/* told first by their first byte: strcmp is a call each */
	return !chat_key_consumed(key) && !(key[0] == 't' && (!strcmp(key, "text") || !strcmp(key, "train"))) &&
	       !(expected && key[0] == 'e' && !strcmp(key, "expected"));
}

int chat_opts_check(const struct chat_opts *o, struct err *err)
{
	long bad = o->system ? jsonl_utf8_bad_at(o->system, strlen(o->system)) : -1;
	return bad >= 0 ? err_set(err, "--system: not valid UTF-8 at byte %ld", bad) : 0;
}

/* Why an integer past 64 bits is refused where a template would print it. */
static const char rounded_why[] = "an integer of more than 19 digits, past 64 bits (json.loads keeps it whole, "
				  "ds-fmt would round it): write it as a string";

/* The first number in v marked rounded, or NULL. */
static const struct jd *rounded_in(const struct jd *v)
{
	uint32_t n = v->kind == JD_ARRAY || v->kind == JD_OBJECT ? v->n : 0;
	for (uint32_t i = 0; i < n; i++) {
		const struct jd *r = rounded_in(v->kind == JD_ARRAY ? &v->u.items[i] : &v->u.members[i].val);
		if (r)
			return r;
	}
	return v->kind == JD_NUMBER && v->rounded ? v : NULL;
}

/* An integer past 64 bits in the messages or the tools (jq read it, and
 * jsonl marked it rounded): json.loads keeps it whole, and the template
 * would print jq's rounding of it. added: --system's message is first. */
static int rounded_check(const struct jd *msgs, const struct jd *tools, int added, struct err *err)
{
	for (uint32_t i = 0; i < msgs->n; i++)
		if (rounded_in(&msgs->u.items[i]))
			return err_set(err, "message %u: %s", i - (uint32_t)added, rounded_why);
	return rounded_in(tools) ? err_set(err, "\"tools\": %s", rounded_why) : 0;
}

/* b: where the memo may write the record's text, a JSON string (NULL: not). */
static int format_record(const struct chat_model *m, const struct chat_opts *o, const struct jd *rec,
			 struct jd_arena *ja, struct jsonl_buf *b, struct formatted *f, struct err *err)
{
	*f = (struct formatted){.rec = rec};
	struct jd msgs, tools;
	if (chat_to_messages(rec, o->input, ja, &msgs, &tools, err) < 0)
		return -1;
	if (tools.kind != JD_ARRAY && o->tools)
		tools = *o->tools;
	int rc = 0;
	struct tmpl_output ro = {0};
	struct tmpl_ctx *cx = NULL;
	struct tmpl_trace *trace = NULL;
	unsigned char *roles = NULL, *calls = NULL, *trained = NULL;
	long *body = NULL;
	struct memo_shape *me = NULL;
	struct memo_learn *ml = NULL;
	struct tmpl_watch watch = { 0 };
	/* room for every message and --system's */
	uint32_t n = msgs.n;
	roles = malloc(3 * ((size_t)n + 2));
	body = malloc(((size_t)n + 2) * sizeof *body);
	if (!roles || !body) {
		err_sys(err, "out of memory");
		goto fail;
	}
	trained = roles + n + 2, calls = trained + n + 2;
	if (validate(&msgs, roles, calls, err) < 0)
		goto fail;
	/* --system: only when the record has no system prompt. */
	int added = o->system && roles[0] != ROLE_SYSTEM;
	if (added) {
		struct jd *items = jd_alloc(ja, ((size_t)n + 1) * sizeof *items);
		if (!items) {
			err_sys(err, "out of memory");
			goto fail;
		}
		items[0] = jd_message(ja, "system", jd_lit(ja, o->system));
		memcpy(items + 1, msgs.u.items, (size_t)n * sizeof *items);
		msgs = jd_array_of(items, n + 1);
		memmove(roles + 1, roles, n);
		memmove(calls + 1, calls, n++);
		roles[0] = ROLE_SYSTEM, calls[0] = 0;
	}
	if (o->add_generation_prompt && roles[n - 1] == ROLE_ASSISTANT) {
		f->expected = &msgs.u.items[n - 1];
		msgs.n = --n;
	}
	const struct tmpl *t = m->tmpl;
	enum chat_args mode = m->args;
	int json = m->args_json, agp = m->agp;
	if (tools.kind != JD_NULL && m->tool_use)
		t = m->tool_use, mode = m->args_tool_use, json = m->args_json_tool_use, agp = m->agp_tool_use;
	if (!t) { /* as transformers: a list without "default" serves only records with tools */
		err_set(err, "the model's chat templates have no \"default\", only \"tool_use\" (for records with tools)");
		goto fail;
	}
	if (args_normalize(&msgs, mode, calls, ja, &msgs, err) < 0)
		goto fail;
	if (ja->rounded && rounded_check(&msgs, &tools, added, err) < 0)
		goto fail;
	int last_asst = -1;
	for (uint32_t i = 0; i < n; i++) {
		trained[i] = roles[i] == ROLE_ASSISTANT;
		if (trained[i])
			last_asst = (int)i;
		body[i] = -1;
	}
	if (o->add_generation_prompt)
		memset(trained, 0, n);
	else if (last_asst < 0) {
		err_set(err, "no assistant message to learn (for prompts, use --add-generation-prompt)");
		goto fail;
	} else if (o->train_last)
		for (int i = 0; i < last_asst; i++)
			trained[i] = 0;
	/* A shape seen before is written without rendering; the first record of
	 * a shape is watched and learned from. */
	if (b && !o->no_memo && (me = chat_memo_find(m->memo, t, &msgs, &tools)) &&
	    chat_memo_put(m->memo, me, &msgs, CHAT_MAX_OUTPUT, b, &f->spans, &f->nspans) == 0) {
		f->written = 1;
		goto done;
	}
	int learn = me && chat_memo_untried(me), unlearnable = 0;
	/* One conversion of the context serves the render and the prefix renders. */
	cx = record_ctx(m, o, &msgs, &tools, err);
	if (cx && learn)
		tmpl_ctx_watch(cx, &watch);
	if (!cx || tmpl_render_traced(t, cx, -1, NULL, &ro, &trace, err) < 0)
		goto fail;
	if (json && check_args_roundtrip(&ro, &msgs, ja, err) < 0)
		goto fail;
	if (learn)
		unlearnable = !(ml = chat_memo_learn_begin(&ro, &msgs, json));
	/* Where each learned turn's body begins: the end of the rendering of the
	 * messages before it with the generation prompt, when that is a prefix.
	 * Those renderings copy the turns they share with ro (tmpl_render_prefix),
	 * so a conversation costs about one rendering, not one per turn. */
	struct err ignored; /* a prefix that fails to render leaves its turn's start unknown; not zeroed per turn (1 KiB) */
	for (uint32_t i = 0; i < n; i++) {
		if (!trained[i])
			continue;
		struct tmpl_output po;
		if (tmpl_render_prefix(t, cx, i, 1, &ro, trace, learn, NULL, &po, &ignored) == 0) {
			if (po.len <= ro.len && !memcmp(po.text, ro.text, po.len)) {
				body[i] = (long)po.len;
				if (ml)
					chat_memo_learn_prefix(ml, &po);
			} else if (!tmpl_reads_agp(t)) {
				/* prompt_shared's -1: without the flag, the rendering
				 * before the prompt is po itself */
				if (ml)
					chat_memo_learn_apart(ml, &po);
			} else {
				body[i] = prompt_shared(t, cx, (int)i, &po, &ro, trace);
				unlearnable = 1;
			}
			tmpl_output_free(&po);
		} else {
			unlearnable = 1;
		}
	}
	if (chat_spans(&ro, trained, body, agp, n, &m->mk, &f->spans, &f->nspans, err) < 0)
		goto fail;
	if (learn)
		chat_memo_learn_end(m->memo, me, ml, f->spans, f->nspans, &watch, unlearnable);
	ml = NULL;
	f->ro = ro;
	ro = (struct tmpl_output){0};
	goto done;
fail:
	rc = -1;
	formatted_free(f);
done:
	if (rc == 0)
		f->shape = me;
	if (ml) /* learning cut short by an error: the shape is tried again */
		chat_memo_learn_end(m->memo, NULL, ml, NULL, 0, &watch, 1);
	tmpl_output_free(&ro);
	tmpl_trace_free(trace);
	tmpl_ctx_free(cx);
	free(roles), free(body); /* trained and calls lie in roles' block */
	return rc;
}

int chat_format_record(const struct chat_model *m, const struct chat_opts *o, jv rec, jv *out, struct err *err)
{
	struct jd_arena ja = {0};
	struct jd r;
	struct formatted f;
	int rc = jsonl_jd_of(rec, &ja, &r);
	jv_free(rec);
	if (rc < 0) {
		jd_arena_free(&ja);
		return err_sys(err, "out of memory");
	}
	if (format_record(m, o, &r, &ja, NULL, &f, err) < 0) {
		jd_arena_free(&ja);
		return -1;
	}
	jv spans = jv_array();
	for (size_t k = 0; k < f.nspans; k++)
		spans = jv_array_append(spans, JV_ARRAY(jv_number(f.spans[2 * k]), jv_number(f.spans[2 * k + 1])));
	jv res = JV_OBJECT(jv_string("text"), jv_string_sized(f.ro.text, (int)f.ro.len), jv_string("train"), spans);
	if (f.expected)
		res = jv_object_set(res, jv_string("expected"), jsonl_jv_of(f.expected));
	for (uint32_t i = 0; i < r.n; i++)
		if (passes(r.u.members[i].key.u.s, f.expected))
			res = jv_object_set(res, jsonl_jv_of(&r.u.members[i].key), jsonl_jv_of(&r.u.members[i].val));
	formatted_free(&f);
	jd_arena_free(&ja);
	*out = res;
	return 0;
}

/* What follows a record's text: its spans, the expected answer (or
 * NULL), the input's members that pass through, and the line's end. */
static void put_rest(struct jsonl_buf *b, const long *spans, size_t nspans, const struct jd *expected,
		     const struct jd_member *mb, size_t n)
{
	jsonl_put(b, ",\"train\":", 9);
	jsonl_put_pairs(b, spans, nspans);
	if (expected) {
		jsonl_put(b, ",\"expected\":", 12);
		jsonl_put_jd(b, expected);
	}
	for (size_t i = 0; i < n; i++) {
		if (!passes(mb[i].key.u.s, expected))
			continue;
		jsonl_put(b, ",", 1);
		jsonl_put_string(b, mb[i].key.u.s, mb[i].key.n);
		jsonl_put(b, ":", 1);
		jsonl_put_jd(b, &mb[i].val);
	}
	jsonl_put(b, "}\n", 2);
}

/* Whether the line memo may take o's records: OpenAI ones, no prompts. */
static int line_memo_on(const struct chat_opts *o)
{
	return !o->no_memo && !o->add_generation_prompt && (o->input == CHAT_INPUT_AUTO || o->input == CHAT_INPUT_OPENAI);
}

int chat_format_seen(const struct chat_model *m, const struct chat_opts *o, const char *line, size_t len,
		     struct jsonl_buf *b)
{
	if (!line_memo_on(o))
		return 0;
	size_t start = b->n, ntop;
	long *spans;
	size_t nspans;
	const struct jd_member *top;
	jsonl_put(b, "{\"text\":", 8);
	if (chat_memo_line_put(m->memo, line, len, o->system, CHAT_MAX_OUTPUT, b, &spans, &nspans, &top, &ntop) < 0) {
		b->n = start;
		return 0;
	}
	put_rest(b, spans, nspans, NULL, top, ntop); /* no array or object among them passes: see chat_format_line */
	if (b->oom) {
		b->n = start;
		return 0;
	}
	return 1;
}

int chat_format_line(const struct chat_model *m, const struct chat_opts *o, const struct jd *rec, const char *line,
		     size_t len, struct jd_arena *a, struct jsonl_buf *b, struct err *err)
{
	struct formatted f;
	size_t start = b->n;
	jsonl_put(b, "{\"text\":", 8);
	if (format_record(m, o, rec, a, b, &f, err) < 0) {
		b->n = start;
		return -1;
	}
	if (!f.written)
		jsonl_put_string(b, f.ro.text, f.ro.len);
	put_rest(b, f.spans, f.nspans, f.expected, rec->u.members, rec->n);
	/* The line memo hands back arrays and objects by their kind alone: a
	 * line with one that passes through is not one to learn (nor, then,
	 * any line of its skeleton). */
	int learn = line && line_memo_on(o);
	for (uint32_t i = 0; learn && i < rec->n; i++)
		learn = !((rec->u.members[i].val.kind == JD_ARRAY || rec->u.members[i].val.kind == JD_OBJECT) &&
			  passes(rec->u.members[i].key.u.s, NULL));
	if (learn)
		chat_memo_line_learn(m->memo, line, len, f.shape, jd_get(rec, "messages"), o->system);
	formatted_free(&f);
	if (b->oom) {
		b->n = start;
		return err_sys(err, "out of memory");
	}
	return 0;
}

/* ------------------------------------------------------------ tool options */

jv chat_var_add(jv vars, const char *arg, struct err *err)
{
	const char *eq = strchr(arg, '=');
	if (!eq || eq == arg) {
		jv_free(vars);
		return err_set(err, "--var %s: expected NAME=JSON", arg), jv_invalid();
	}
	jv name = jv_string_sized(arg, (int)(eq - arg));
	static const char *const reserved[] = {"messages", "tools", "documents", "add_generation_prompt"};
	for (size_t i = 0; i < sizeof reserved / sizeof *reserved; i++)
		if (!strcmp(jv_string_value(name), reserved[i])) {
			jv_free(name), jv_free(vars);
			return err_set(err, "--var %s: %s is set by ds-fmt itself", arg, reserved[i]), jv_invalid();
		}
	jv v = jsonl_parse_value(eq + 1, strlen(eq + 1));
	if (!jv_is_valid(v)) {
		jv msg = jv_invalid_get_msg(v);
		err_set(err, "--var %s: the value is not JSON (%s); a string needs quotes: NAME='\"text\"'", arg,
			jv_get_kind(msg) == JV_KIND_STRING ? jv_string_value(msg) : "?");
		jv_free(msg), jv_free(name), jv_free(vars);
		return jv_invalid();
	}
	return jv_object_set(vars, name, v);
}

struct jd_shared *chat_tools_load(const char *path, struct err *err)
{
	size_t len;
	char *text = wholefile_read(path, CHAT_MAX_FILE, &len, err);
	if (!text)
		return NULL;
	/* read as records are, numbers as json.loads reads them */
	struct jd_arena a = {0};
	struct jd d;
	struct err ignored = {0};
	struct jd_shared *sh = NULL;
	jv v;
	if (jsonl_parse_jd(text, len, &a, &d, &ignored) < 0) {
		if (jsonl_parse(text, len, path, &v, err) == 0) /* it says where the text is not JSON; else memory ran short */
			jv_free(v), err_sys(err, "out of memory");
	} else if (d.kind != JD_ARRAY) {
		err_set(err, "--tools %s: expected a JSON array of tools", path);
	} else if (a.rounded) {
		err_set(err, "--tools %s: %s", path, rounded_why);
	} else if (!(sh = jd_shared_new(&d))) {
		err_sys(err, "out of memory");
	}
	jd_arena_free(&a);
	free(text);
	return sh;
}

/* ---------------------------------------------------------------------- jq */

struct chat_jq {
	jq_state *jq;
	char msg[512];
	const char *filter;
};

static void jq_err_cb(void *data, jv msg)
{
	struct chat_jq *q = data;
	if (!q->msg[0]) {
		if (jv_get_kind(msg) == JV_KIND_STRING)
			snprintf(q->msg, sizeof q->msg, "%s", jv_string_value(msg));
		else
			snprintf(q->msg, sizeof q->msg, "jq error");
	}
	jv_free(msg);
}

struct chat_jq *chat_jq_new(const char *filter, struct err *err)
{
	struct chat_jq *q = calloc(1, sizeof *q);
	if (!q || !(q->jq = jq_init())) {
		free(q);
		return err_sys(err, "out of memory"), NULL;
	}
	q->filter = filter;
	jq_set_error_cb(q->jq, jq_err_cb, q);
	if (!jq_compile(q->jq, filter)) {
		err_set(err, "--jq: cannot compile '%s': %s", filter, q->msg[0] ? q->msg : "syntax error");
		chat_jq_free(q);
		return NULL;
	}
	return q;
}

void chat_jq_free(struct chat_jq *q)
{
	if (!q)
		return;
	jq_teardown(&q->jq);
	free(q);
}

jv chat_jq_run(struct chat_jq *q, jv rec, struct err *err)
{
	q->msg[0] = 0;
	jq_start(q->jq, rec, 0);
	jv res = jv_array();
	for (;;) {
		jv v = jq_next(q->jq);
		if (!jv_is_valid(v)) {
			jv msg = jv_invalid_get_msg(v);
			if (jv_get_kind(msg) == JV_KIND_NULL) {
				jv_free(msg);
				break;
			}
			jv_free(res);
			if (jv_get_kind(msg) == JV_KIND_STRING)
				err_set(err, "--jq '%s': %s", q->filter, jv_string_value(msg));
			else
				err_set(err, "--jq '%s': error", q->filter);
			jv_free(msg);
			return jv_invalid();
		}
		if (jv_get_kind(v) != JV_KIND_OBJECT) {
			err_set(err, "--jq '%s' gave %s, not an object", q->filter, jv_kind_name(jv_get_kind(v)));
			jv_free(v), jv_free(res);
			return jv_invalid();
		}
		res = jv_array_append(res, v);
	}
	return res;
}

struct chat_memo_stats chat_model_memo_stats(const struct chat_model *m) { return chat_memo_stats(m->memo); }
