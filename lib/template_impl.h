/* template_impl: the template engine's private parts, shared by lib/template*.c only.
 *
 * The files:
 *   template_parse.c  lexer (trim_blocks, lstrip_blocks, whitespace control) and parser
 *   template_value.c  the arena, strings with per-byte origins, values, str()/repr()/json
 *   template_eval.c   the evaluator, filters, tests, methods, the public API
 *   template_prefix.c which loop's turns prefix renderings may copy (the check of the tree)
 *
 * Memory: everything a compile makes lives in the template's arena, everything
 * a render makes in the render's arena; both are freed whole. Errors unwind
 * with longjmp to the public entry point, which is safe because nothing
 * outside the arena is held across a call that may fail.
 */
#ifndef LORAPIPE_TEMPLATE_IMPL_H
#define LORAPIPE_TEMPLATE_IMPL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "template.h"

/* ---- arena ---- */
struct tp_arena {
	struct tp_block *head;
	size_t used, cap;   /* bytes handed out in all; the cap (0 = none) */
	jmp_buf *fail;      /* where to go when the cap is hit or malloc fails */
	struct err *err;
};
struct tp_block {
	struct tp_block *next;
	size_t used, size;
	_Alignas(16) char data[];
};
/* tp_alloc_raw's way when the current block lacks room (n rounded up). */
void *tp_alloc_slow(struct tp_arena *a, size_t n);
/* Not zeroed: for blocks written before they are read. Inline, as a
 * rendering takes hundreds of small blocks. */
static inline void *tp_alloc_raw(struct tp_arena *a, size_t n)
{
	n = n ? (n + 15) & ~(size_t)15 : 16;
	struct tp_block *b = a->head;
	if (b && b->size - b->used >= n && (!a->cap || a->used + n <= a->cap)) {
		void *p = b->data + b->used;
		b->used += n;
		a->used += n;
		return p;
	}
	return tp_alloc_slow(a, n);
}
static inline void *tp_alloc(struct tp_arena *a, size_t n)
{
	void *p = tp_alloc_raw(a, n);
	memset(p, 0, (n + 15) & ~(size_t)15);
	return p;
}
void *tp_realloc(struct tp_arena *a, void *p, size_t old, size_t n);
char *tp_strndup(struct tp_arena *a, const char *s, size_t n);
void tp_arena_free(struct tp_arena *a);
_Noreturn void tp_fail(struct tp_arena *a, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* tp_fail with the template's position in front: "NAME:LINE: message". */
_Noreturn void tp_fail_at(struct tp_arena *a, const char *name, int line, const char *fmt, va_list ap);

/* ---- strings with origins ---- */
struct tp_org {
	int32_t msg;
	uint8_t kind;    /* enum tmpl_origin */
	const char *var; /* TMPL_INPUT only */
};
/* The bytes before end (and after the previous run's end) have origin o. */
struct tp_orun {
	uint32_t end;
	struct tp_org o;
};
struct tp_str {
	const char *s;
	uint32_t len, nruns;
	const struct tp_orun *runs;
};
/* A growing string; the output and every capture are one. */
struct tp_sb {
	char *s;
	uint32_t len, cap;
	struct tp_orun *runs;
	uint32_t nruns, rcap;
	size_t max; /* bytes; beyond it the render fails */
	int heap;   /* the bytes are malloc'd, not in the arena: the rendering's output, handed over whole */
};
extern const struct tp_org tp_literal;
int tp_org_eq(struct tp_org a, struct tp_org b);
void tp_sb_put(struct tp_arena *a, struct tp_sb *b, const char *s, size_t n, struct tp_org o);
void tp_sb_str(struct tp_arena *a, struct tp_sb *b, struct tp_str s);
/* Makes room for n more bytes and nruns more runs (or fails as tp_sb_put does). */
void tp_sb_reserve(struct tp_arena *a, struct tp_sb *b, size_t n, size_t nruns);
/* The bytes after the last run's end, written into b->s with b->len moved
 * past them, have origin o. */
void tp_sb_org(struct tp_arena *a, struct tp_sb *b, struct tp_org o);
/* Appends s[from, to) keeping its origins. */
void tp_sb_sub(struct tp_arena *a, struct tp_sb *b, struct tp_str s, uint32_t from, uint32_t to);
struct tp_str tp_sb_done(struct tp_sb *b);
struct tp_str tp_str_lit(struct tp_arena *a, const char *s, size_t n, struct tp_org o);
/* The origin of byte i of s. */
struct tp_org tp_str_org(struct tp_str s, uint32_t i);

/* ---- values ---- */
enum tp_type {
	TP_UNDEF,
	TP_NONE,
	TP_BOOL,
	TP_INT,
	TP_FLOAT,
	TP_STR,
	TP_LIST,  /* lists and tuples */
	TP_DICT,
	TP_NS,    /* namespace(): a dict whose attributes can be set */
	TP_MACRO, /* macros and caller */
	TP_FUNC,  /* a global function or a bound method */
	TP_LOOP,
};
struct tp_val;
/* What jinja2 gives as another Python type than a list: map, select,
 * unique ... are generators, used up as they are read (v[at..n) is what is
 * left; true even when empty, no len, no json, no index); a dict's items(),
 * keys() and values() are views (read again at will, no json, no index,
 * printed as dict_items([...])); range() is a range (no json, equal to no
 * list, printed as range(0, 3) from the start, stop and step it keeps). */
enum tp_lazy { LAZY_NO, LAZY_GEN, LAZY_ITEMS, LAZY_KEYS, LAZY_VALUES, LAZY_RANGE };
struct tp_list {
	struct tp_val *v;
	uint32_t n;
	uint8_t tuple;
	uint8_t lazy; /* enum tp_lazy */
	uint32_t at;  /* LAZY_GEN: the items read */
	const char *poison; /* LAZY_GEN: the error its first read raises (map over a number), or NULL */
	int64_t range[3]; /* LAZY_RANGE: start, stop, step, as Python prints them */
};
struct tp_dict {
	struct tp_val *k, *v;
	uint32_t n, cap;
};
struct tp_val {
	uint8_t type;
	/* TP_STR: a jinja2 Markup (|safe, |escape): its + escapes the other
	 * side's &<>"' and it keeps the mark where Markup's methods do */
	uint8_t markup;
	struct tp_org o; /* the origin of the value's text when it is turned into text */
	union {
		int b;
		int64_t i;
		double f;
		struct tp_str s;
		struct tp_list *l;
		struct tp_dict *d;
		struct tp_macro *m;
		struct tp_func *fn;
		struct tp_loop *loop;
		const char *undef; /* the name, for messages */
	} u;
};
struct tp_val tp_mk_str(struct tp_str s);
struct tp_val tp_mk_int(int64_t i);
struct tp_val tp_mk_bool(int b);
struct tp_val tp_mk_none(void);
struct tp_val tp_mk_undef(const char *name);
struct tp_val tp_mk_float(double f);
struct tp_val tp_mk_list(struct tp_arena *a, uint32_t n, int tuple);
struct tp_val tp_mk_dict(struct tp_arena *a);
struct tp_val *tp_dict_get(const struct tp_dict *d, struct tp_val k);
struct tp_val *tp_dict_gets(const struct tp_dict *d, const char *k, size_t n);
void tp_dict_set(struct tp_arena *a, struct tp_dict *d, struct tp_val k, struct tp_val v);
/* Appends a key known not to be in d (the keys of a JSON object). */
void tp_dict_push(struct tp_arena *a, struct tp_dict *d, struct tp_val k, struct tp_val v);
/* Room for n members in all. */
void tp_dict_reserve(struct tp_arena *a, struct tp_dict *d, uint32_t n);
int tp_truthy(struct tp_val v);
int tp_equal(struct tp_val a, struct tp_val b);
const char *tp_type_name(struct tp_val v);
/* str(v) and repr(v) into b; the text of a non-string takes the origin of
 * the value that made it, element by element. */
void tp_str_of(struct tp_arena *a, struct tp_sb *b, struct tp_val v);
/* Why v's text cannot be jinja2's (a generator, a range), or NULL. */
const char *tp_unprintable(struct tp_val v);
void tp_repr_of(struct tp_arena *a, struct tp_sb *b, struct tp_val v);
struct json_opts {
	const char *indent; /* NULL: none */
	const char *item_sep, *key_sep;
	int sort_keys, ensure_ascii;
};
/* json.dumps; returns -1 (with *why) for a value JSON cannot hold. */
int tp_json_of(struct tp_arena *a, struct tp_sb *b, struct tp_val v, const struct json_opts *jo, int depth,
	       const char **why);
void tp_float_repr(char *buf, size_t n, double f);
/* A JSON value -> value with origin o (strings copied into a). */
struct tp_val tp_from_jd(struct tp_arena *a, const struct jd *v, struct tp_org o);
/* The same with v's strings not copied: v must outlive the value (a
 * record's variables, which the context borrows). */
struct tp_val tp_from_jd_borrowed(struct tp_arena *a, const struct jd *v, struct tp_org o);
/* s, a JD_STRING, as a string of origin o, its bytes not copied (as above). */
struct tp_str tp_str_borrowed(struct tp_arena *a, const struct jd *s, struct tp_org o);

/* ---- values kept from one context to the next (template_cache.c) ---- */
/* The next context is being made: slots the previous one used may go. */
void tp_cache_next(struct tmpl_cache *c);
/* Variable name's value for v: the value converted for v's jd_shared block
 * before, or converted now into a slot. Returns 1 with *out set, 0 when the
 * cache does not take v (not an array or object of a jd_shared block; no
 * slot free). A failure longjmps to fail with err set; the caller then calls
 * tp_cache_abandon. */
int tp_cache_value(struct tmpl_cache *c, const char *name, const struct jd *v, struct tp_val *out, jmp_buf *fail,
		   struct err *err);
void tp_cache_abandon(struct tmpl_cache *c);
/* The converted variables of the layers base and more (tmpl_ctx_new_layered)
 * when they are the very jv values of the last time (1), else 0. */
int tp_cache_base(struct tmpl_cache *c, jv base, jv more, const char ***names, struct tp_val **vals, uint32_t *n);
/* Forgets the kept layers and returns the arena to convert base and more
 * into (failing to fail, as tp_cache_value); tp_cache_base_end keeps what was
 * made, tp_cache_abandon drops a conversion cut short. */
struct tp_arena *tp_cache_base_begin(struct tmpl_cache *c, jv base, jv more, jmp_buf *fail, struct err *err);
void tp_cache_base_end(struct tmpl_cache *c, const char **names, struct tp_val *vals, uint32_t n);
/* tojson of a cached container (with the origin the cache gave it): the text
 * made before with the same options (1, *out set), or 0. */
int tp_cache_json_get(struct tmpl_cache *c, struct tp_val v, const struct json_opts *jo, struct tp_str *out);
/* Keeps text as v's tojson with options jo when v is a cached container;
 * returns the kept copy (or text itself). */
struct tp_str tp_cache_json_put(struct tmpl_cache *c, struct tp_val v, const struct json_opts *jo, struct tp_str text,
				jmp_buf *fail, struct err *err);

/* ---- syntax tree ---- */
enum tp_nk {
	N_LIT, N_NAME, N_LIST, N_TUPLE, N_DICT, N_ATTR, N_SUB, N_SLICE, N_CALL, N_FILTER, N_TEST,
	N_NEG, N_POS, N_NOT, N_AND, N_OR, N_BIN, N_CMP, N_COND, N_CONCAT,
};
enum tp_op { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FDIV, OP_MOD, OP_POW };
enum tp_cmp { C_EQ, C_NE, C_LT, C_LE, C_GT, C_GE, C_IN, C_NOTIN };
struct tp_node {
	uint8_t kind, op, neg; /* op: N_BIN's enum tp_op, N_ATTR's code of its name (template_eval.c); neg: `is not` */
	uint16_t depth;            /* of the subtree: evaluation recurses this deep */
	int line;
	struct tp_node *a, *b, *c; /* operands; N_SLICE: a[b:c:d] with d in args[0] */
	struct tp_node **args;     /* call/filter/test arguments; list items; dict keys then values */
	const char **kw;           /* keyword argument names, NULL for positional */
	uint32_t nargs;
	uint8_t *cmps;             /* N_CMP: the operators between args */
	const char *name;          /* N_NAME, N_ATTR, N_FILTER, N_TEST */
	struct tp_val lit;
};
enum tp_sk {
	S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_SETBLOCK, S_MACRO, S_CALLBLOCK, S_FILTERBLOCK, S_BREAK,
	S_CONTINUE, S_GEN, S_WITH,
};
struct tp_stmt {
	uint8_t kind;
	uint8_t recursive;              /* S_FOR: {% for ... recursive %} */
	int line;
	struct tp_stmt *next;
	struct tp_node *e, *cond;       /* S_OUT/S_SET/S_IF/S_FOR iterable, S_FOR filter */
	struct tp_node *target;         /* S_SET: N_NAME, N_TUPLE or N_ATTR */
	const char **names;             /* S_FOR targets, S_MACRO/S_CALLBLOCK parameters */
	struct tp_node **defaults;      /* parameter defaults (NULL where none) */
	uint32_t nnames;
	const char *name;               /* S_MACRO, S_SETBLOCK */
	struct tp_stmt *body, *orelse;
	struct tp_str text;             /* S_TEXT */
};
struct tmpl {
	struct tp_arena arena;
	struct tp_stmt *body;
	const char *name;
	const struct tp_stmt *turns; /* the loop whose turns prefix renderings may copy, or NULL */
	const char *loop_name;       /* "loop", the very string the template's names use (see intern) */
	int reads_agp;               /* a name reads add_generation_prompt somewhere */
};
/* Parses into t (its arena set up); returns -1 with err set. */
int tp_parse(struct tmpl *t, const char *src, size_t len, struct err *err);
/* The loop over the messages whose turns a prefix's rendering may copy from
 * the whole rendering's, or NULL (template_prefix.c says when). */
const struct tp_stmt *tp_prefix_loop(const struct tp_stmt *body);

#endif
