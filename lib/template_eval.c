/* template_eval: runs a parsed template with Jinja2 3.1's semantics under
 * transformers' ImmutableSandboxedEnvironment: Python values, Jinja's default
 * Undefined, the built-in filters and tests chat templates use, Python's str
 * and dict methods (mutating methods are refused, as the sandbox does).
 *
 * Loops as Jinja has them: loop.cycle(), loop.changed(), recursive for loops
 * (loop(items), loop.depth; nested no deeper than macro calls may be), the
 * globals cycler() and joiner(), the filters groupby (sorted, (grouper, list)
 * tuples) and slice.
 * Refused with an error rather than rendered differently: lipsum, str.format
 * specs, %-formats other than %s %r %d %i, the filters striptags, urlize,
 * urlencode, wordwrap, xmlattr, pprint, filesizeformat, random.
 * Known differences: range() is a list (prints as one), dict.items() and
 * friends print as lists, and so do the generators of map, select, slice and
 * the like; cycler and joiner objects and bound methods print as <function>
 * (Jinja prints an address); a groupby tuple is not equal to a plain tuple;
 * JSON numbers come through libjq 1.6, which cannot tell 1.0 from 1 (a whole
 * number is an int) and keeps 53 bits. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <utf8proc.h>

#include "jsonl.h"
#include "template_impl.h"

struct frame {
	struct frame *parent;
	const char **names;
	struct tp_val *vals;
	uint32_t n, cap;
};

struct tp_macro {
	const struct tp_stmt *def; /* names, defaults, body */
	struct frame *closure;
	struct tp_val caller;      /* the caller of a call block, or undefined */
	const char *name;
};

enum fn_id { F_RANGE, F_NAMESPACE, F_DICT, F_RAISE, F_STRFTIME, F_METHOD, F_CYCLE, F_CHANGED, F_CYCLER, F_JOINER };
struct tp_func {
	int id;
	const char *name;
	struct tp_val self; /* F_METHOD */
	/* F_CYCLER/F_JOINER: obj for the object cycler()/joiner() made (else the global function);
	 * a cycler's items and position; a joiner's separator in self and whether it was called */
	int obj, used;
	struct tp_list *items;
	uint32_t pos;
};

struct tp_loop {
	struct tp_list *items;
	uint32_t i;
	/* for loop(...) of a recursive loop: the statement, the frame it runs in, its depth (1 = outermost) */
	const struct tp_stmt *s;
	struct frame *f;
	int depth;
	struct tp_val changed; /* the arguments of the last loop.changed(), a tuple; undefined before */
};

/* What a turn reads that the rendering of a prefix of the messages may see
 * differently (see tmpl_render_traced): add_generation_prompt, the number
 * of messages, messages past the prefix, loop.last and its kin on the
 * turns' loop, and state one turn leaves to the next (namespace attributes,
 * cyclers, joiners). template_prefix.c makes sure the messages reach the
 * template only where the evaluator watches them. What precedes the loop
 * may read anything: the prefix's rendering runs it, and copies turns only
 * when the variables the loop starts with come out the same (same_val). */
struct turn {
	uint32_t end, ncuts, ngen; /* the output, cuts and generation ranges when the turn ended */
	int64_t max;               /* the highest message index it read */
	uint8_t clean;             /* it read nothing else a prefix sees differently, and did not break */
};
struct track {
	const struct tp_val *agp;  /* the root frame's add_generation_prompt */
	const struct tp_list **lists; /* the messages and slices of them, each with its first message's index */
	uint32_t *offs, nlists, lcap;
	const struct tp_loop *loop; /* the turns' loop, once it has started */
	uint32_t off;                /* the index of its first message */
	int taint, bad;
	int64_t max;
	/* recording (tmpl_render_traced) */
	int record;
	uint32_t start, ncuts, ngen; /* at the loop's start */
	const char **names;           /* the variables of the loop's frame then, values copied */
	struct tp_val *vals;
	uint32_t nvars;
	int resumable;                /* a prefix's rendering may start at the loop from these (see resume) */
	int64_t pre_max;              /* the highest message index read before the loop */
	struct turn *turns;
	uint32_t nturns, tcap;
	/* copying (tmpl_render_prefix) */
	const struct tmpl_output *full;
	struct tmpl_trace *use;
	size_t nmsg;
	int post;                        /* past the loop: add_generation_prompt read is no taint (see tail) */
	int post_cut0;                   /* a statement past the loop tried to cut where it began */
	uint32_t post_start, post_ncuts, post_ngen;
};

/* What a prefix's rendering printed after the turns' loop, when it started
 * at the loop (resume), the loop had turns, and what followed read nothing
 * a prefix sees differently but add_generation_prompt and the messages up to
 * max: the same for every such prefix with that add_generation_prompt (the
 * turns change no variable it can read), so those whose turns would all be
 * copied are made from it without running the template (prefix_from_tail). */
struct tail {
	int ok, cut0;   /* cut0: a cut where it begins (see cut_at) */
	int64_t max;
	char *text;     /* one block: text, then cuts, then generation ranges */
	uint32_t len, ncuts, ngen;
	uint32_t *cuts; /* after where it begins, relative to it */
	uint32_t (*gen)[2];
};

struct tmpl_trace {
	struct tp_arena a; /* the whole rendering's: its variables and tracked lists live there */
	const struct tp_list **lists;
	uint32_t *offs, nlists;
	const char **names;
	struct tp_val *vals;
	uint32_t nvars;
	uint32_t off, start, ncuts, ngen;
	int resumable;
	int64_t pre_max;
	struct tail tail[2]; /* by add_generation_prompt */
	unsigned long long copied, resumed, tailed;
	uint32_t n;
	struct turn turn[];
};

struct rt {
	struct tp_arena a;
	const struct tmpl *t;
	struct tp_sb *out, *main;
	struct frame *root;
	uint64_t steps, max_steps;
	int line; /* the last step's */
	size_t max_out;
	int depth, max_depth;
	uint32_t (*gen)[2];
	size_t ngen, gcap;
	uint32_t *cuts; /* see tmpl_output */
	size_t ncuts, ccap;
	struct tmpl_turn *turns; /* see tmpl_output */
	size_t nturns, tcap;
	struct tmpl_cache *cache; /* the context's, or NULL */
	struct track *tk;         /* NULL unless recording or copying turns */
	int text_only;            /* the output's runs are not asked for: copied turns leave theirs behind */
	/* Watching (tmpl_ctx_watch): NULL, or where to say that the rendering
	 * used a message's content other than as text to print whole. saw: an
	 * operand of the node being evaluated held content; allow: the node's
	 * use of it is one of those the shape replays (see eval_watched). */
	struct tmpl_watch *watch;
	const struct tp_list *holes; /* the messages whose contents are watched */
	int saw, allow;
};

_Noreturn static void rt_err(struct rt *r, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void rt_err(struct rt *r, int line, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	tp_fail_at(&r->a, r->t->name, line, fmt, ap);
}

static void step(struct rt *r, int line)
{
	r->line = line;
	if (++r->steps > r->max_steps)
		rt_err(r, line, "template took more than %llu steps", (unsigned long long)r->max_steps);
}

/* Work that is not one step: n steps' worth, so that the step limit also
 * bounds time spent scanning long lists and strings. */
static void charge(struct rt *r, int line, uint64_t n)
{
	r->steps += n;
	step(r, line);
}

static struct tp_sb sb_new(struct rt *r)
{
	struct tp_sb b = { 0 };
	b.max = r->max_out;
	return b;
}

static struct tp_val str_val(struct rt *r, const char *s, struct tp_org o)
{
	return tp_mk_str(tp_str_lit(&r->a, s, strlen(s), o));
}

/* ---- frames ---- */

static struct frame *frame_new(struct rt *r, struct frame *parent)
{
	struct frame *f = tp_alloc(&r->a, sizeof *f);
	f->parent = parent;
	return f;
}

/* The template's names are interned (template_parse.c): most that match
 * are the same pointer, and most that differ differ in their first byte. */
static inline int same_name(const char *a, const char *b)
{
	return a == b || (a[0] == b[0] && !strcmp(a, b));
}

static void frame_set(struct rt *r, struct frame *f, const char *name, struct tp_val v)
{
	for (uint32_t i = 0; i < f->n; i++)
		if (same_name(f->names[i], name)) {
			f->vals[i] = v;
			return;
		}
	if (f->n == f->cap) {
		uint32_t cap = f->cap ? f->cap * 2 : 8;
		f->names = tp_realloc(&r->a, f->names, f->n * sizeof *f->names, cap * sizeof *f->names);
		f->vals = tp_realloc(&r->a, f->vals, f->n * sizeof *f->vals, cap * sizeof *f->vals);
		f->cap = cap;
	}
	f->names[f->n] = name;
	f->vals[f->n] = v;
	f->n++;
}

static struct tp_val *frame_get(struct frame *f, const char *name)
{
	for (; f; f = f->parent)
		for (uint32_t i = f->n; i-- > 0;)
			if (same_name(f->names[i], name))
				return &f->vals[i];
	return NULL;
}

static struct tp_val mk_func(struct rt *r, int id, const char *name, struct tp_val self)
{
	struct tp_val v = { .type = TP_FUNC, .o = tp_literal };
	v.u.fn = tp_alloc(&r->a, sizeof *v.u.fn);
	v.u.fn->id = id;
	v.u.fn->name = name;
	v.u.fn->self = self;
	return v;
}

/* ---- what prefixes see differently (struct track) ---- */

/* The index of l among lists (the messages and slices of them), or -1. */
static int list_index(const struct tp_list *const *lists, uint32_t n, const struct tp_list *l)
{
	for (uint32_t i = n; i-- > 0;)
		if (lists[i] == l)
			return (int)i;
	return -1;
}

static int track_find(const struct track *k, const struct tp_list *l) { return list_index(k->lists, k->nlists, l); }

static void track_add(struct rt *r, const struct tp_list *l, uint32_t off)
{
	struct track *k = r->tk;
	if (k->nlists == k->lcap) {
		uint32_t cap = k->lcap ? k->lcap * 2 : 8;
		k->lists = tp_realloc(&r->a, k->lists, k->nlists * sizeof *k->lists, cap * sizeof *k->lists);
		k->offs = tp_realloc(&r->a, k->offs, k->nlists * sizeof *k->offs, cap * sizeof *k->offs);
		k->lcap = cap;
	}
	k->lists[k->nlists] = l;
	k->offs[k->nlists++] = off;
}

/* l[key] read: a message index, or (a negative index) the number of messages. */
static void track_index(struct rt *r, const struct tp_list *l, struct tp_val key)
{
	int li = track_find(r->tk, l);
	if (li < 0)
		return;
	int64_t i = key.type == TP_INT ? key.u.i : key.type == TP_BOOL ? key.u.b : -1;
	if (i < 0)
		r->tk->taint = 1;
	else if ((int64_t)r->tk->offs[li] + i > r->tk->max)
		r->tk->max = (int64_t)r->tk->offs[li] + i;
}

static void taint(struct rt *r)
{
	if (r->tk)
		r->tk->taint = 1;
}

/* ---- watching a rendering for chat's memo (tmpl_ctx_watch) ---- */

/* Whether v holds bytes of a message's content, anywhere inside. */
static int held(struct tp_val v, int depth)
{
	if (depth > 32)
		return 1;
	switch (v.type) {
	case TP_STR:
		for (uint32_t i = 0; i < v.u.s.nruns; i++)
			if (v.u.s.runs[i].o.kind == TMPL_MSG_CONTENT)
				return 1;
		return 0;
	case TP_LIST:
		for (uint32_t i = 0; i < v.u.l->n; i++)
			if (held(v.u.l->v[i], depth + 1))
				return 1;
		return 0;
	case TP_DICT:
	case TP_NS:
		for (uint32_t i = 0; i < v.u.d->n; i++)
			if (held(v.u.d->k[i], depth + 1) || held(v.u.d->v[i], depth + 1))
				return 1;
		return 0;
	case TP_FUNC:
		return held(v.u.fn->self, depth + 1) ||
		       (v.u.fn->items && held((struct tp_val){ .type = TP_LIST, .u.l = v.u.fn->items }, depth + 1));
	case TP_LOOP: return held((struct tp_val){ .type = TP_LIST, .u.l = v.u.loop->items }, depth + 1);
	default: return 0;
	}
}

static void unreplayable(struct rt *r, int line, const char *what)
{
	if (r->watch && !r->watch->unreplayable) {
		r->watch->unreplayable = 1;
		r->watch->line = line;
		r->watch->why = what;
	}
}

/* Whether s is message i's content itself, whole (what trim may take). */
static int whole_content(const struct rt *r, struct tp_str s)
{
	if (s.nruns != 1 || s.runs[0].o.kind != TMPL_MSG_CONTENT || !r->holes || s.runs[0].o.msg < 0 ||
	    (uint32_t)s.runs[0].o.msg >= r->holes->n)
		return 0;
	struct tp_val m = r->holes->v[s.runs[0].o.msg];
	const struct tp_val *c = m.type == TP_DICT ? tp_dict_gets(m.u.d, "content", 7) : NULL;
	return c && c->type == TP_STR && c->u.s.s == s.s && c->u.s.len == s.len;
}

static struct tp_val lookup(struct rt *r, struct frame *f, const char *name)
{
	struct tp_val *v = frame_get(f, name);
	if (v) {
		if (r->tk && v == r->tk->agp && !r->tk->post)
			r->tk->taint = 1;
		return *v;
	}
	static const struct {
		const char *name;
		int id;
	} builtins[] = { { "range", F_RANGE },		 { "namespace", F_NAMESPACE },	 { "dict", F_DICT },
			 { "raise_exception", F_RAISE }, { "strftime_now", F_STRFTIME }, { "cycler", F_CYCLER },
			 { "joiner", F_JOINER } };
	for (size_t i = 0; i < sizeof builtins / sizeof *builtins; i++)
		if (!strcmp(builtins[i].name, name))
			return mk_func(r, builtins[i].id, builtins[i].name, tp_mk_none());
	return tp_mk_undef(name);
}

/* ---- UTF-8 ---- */

static uint32_t u8_dec(const char *s, uint32_t n, uint32_t *i)
{
	utf8proc_int32_t cp;
	utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + *i, n - *i, &cp);
	if (k <= 0) {
		(*i)++;
		return 0xfffd;
	}
	*i += (uint32_t)k;
	return (uint32_t)cp;
}

/* Byte offsets of each character and the end: off[0..ncp]. */
static uint32_t *cp_offsets(struct rt *r, struct tp_str s, uint32_t *ncp)
{
	uint32_t *off = tp_alloc_raw(&r->a, ((size_t)s.len + 1) * sizeof *off), n = 0, i = 0;
	while (i < s.len) {
		off[n++] = i;
		if ((unsigned char)s.s[i] < 0x80) /* a character of its own, however the rest decodes */
			i++;
		else
			u8_dec(s.s, s.len, &i);
	}
	off[n] = s.len;
	*ncp = n;
	return off;
}

static uint32_t cp_len(struct tp_str s)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < s.len; i++)
		if (((unsigned char)s.s[i] & 0xc0) != 0x80)
			n++;
	return n;
}

static int py_space(uint32_t c)
{
	return (c >= 9 && c <= 13) || c == ' ' || (c >= 0x1c && c <= 0x1f) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
	       (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
	       c == 0x3000;
}

/* ---- conversions ---- */

/* A list, a tuple or a range: what has Python's __getitem__ (an iterator
 * or a dict view has not). */
static int indexed(const struct tp_list *l) { return l->lazy == LAZY_NO || l->lazy == LAZY_RANGE; }

/* tp_unprintable's refusal, at the template's line (nested, text_of's has none). */
static void printable(struct rt *r, struct tp_val v)
{
	const char *why = tp_unprintable(v);
	if (why)
		rt_err(r, r->line, "%s", why);
}

static struct tp_str to_str(struct rt *r, struct tp_val v)
{
	if (v.type == TP_STR)
		return v.u.s;
	printable(r, v);
	struct tp_sb b = sb_new(r);
	tp_str_of(&r->a, &b, v);
	return tp_sb_done(&b);
}

static int is_num(struct tp_val v) { return v.type == TP_BOOL || v.type == TP_INT || v.type == TP_FLOAT; }
static double num_f(struct tp_val v) { return v.type == TP_FLOAT ? v.u.f : v.type == TP_INT ? (double)v.u.i : v.u.b; }
static int64_t num_i(struct tp_val v) { return v.type == TP_INT ? v.u.i : v.type == TP_BOOL ? v.u.b : (int64_t)v.u.f; }

static const char *tname(struct tp_val v) { return tp_type_name(v); }

static void check_defined(struct rt *r, int line, struct tp_val v)
{
	if (v.type == TP_UNDEF)
		rt_err(r, line, "'%s' is undefined", v.u.undef ? v.u.undef : "value");
}

/* Items of an iterable: list items, dict keys, characters of a string. */
static struct tp_list *iter_list(struct rt *r, int line, struct tp_val v)
{
	static struct tp_list empty;
	switch (v.type) {
	case TP_UNDEF: return &empty;
	case TP_LIST: {
		struct tp_list *l = v.u.l;
		if (l->lazy != LAZY_GEN)
			return l;
		if (l->poison)
			rt_err(r, line, "%s", l->poison);
		struct tp_list *rest = tp_alloc(&r->a, sizeof *rest); /* what is left, then nothing */
		rest->v = l->v + l->at, rest->n = l->n - l->at;
		l->at = l->n;
		return rest;
	}
	case TP_DICT: {
		struct tp_val l = tp_mk_list(&r->a, v.u.d->n, 0);
		for (uint32_t i = 0; i < v.u.d->n; i++)
			l.u.l->v[i] = v.u.d->k[i];
		return l.u.l;
	}
	case TP_STR: {
		uint32_t n, *off = cp_offsets(r, v.u.s, &n);
		struct tp_val l = tp_mk_list(&r->a, n, 0);
		for (uint32_t i = 0; i < n; i++) {
			struct tp_sb b = sb_new(r);
			tp_sb_sub(&r->a, &b, v.u.s, off[i], off[i + 1]);
			l.u.l->v[i] = tp_mk_str(tp_sb_done(&b));
		}
		return l.u.l;
	}
	default: rt_err(r, line, "'%s' object is not iterable", tname(v));
	}
}

/* ---- arithmetic and comparison ---- */

static int cmp_at(struct rt *r, int line, struct tp_val a, struct tp_val b, int depth);
static int cmp_vals(struct rt *r, int line, struct tp_val a, struct tp_val b) { return cmp_at(r, line, a, b, 0); }

static int cmp_at(struct rt *r, int line, struct tp_val a, struct tp_val b, int depth)
{
	if (depth > 500)
		rt_err(r, line, "values nested too deep to compare");
	if (is_num(a) && is_num(b)) {
		if (a.type != TP_FLOAT && b.type != TP_FLOAT) {
			int64_t x = num_i(a), y = num_i(b);
			return (x > y) - (x < y);
		}
		double x = num_f(a), y = num_f(b);
		return (x > y) - (x < y);
	}
	if (a.type == TP_STR && b.type == TP_STR) {
		uint32_t n = a.u.s.len < b.u.s.len ? a.u.s.len : b.u.s.len;
		int c = memcmp(a.u.s.s, b.u.s.s, n);
		if (c)
			return c < 0 ? -1 : 1;
		return (a.u.s.len > b.u.s.len) - (a.u.s.len < b.u.s.len);
	}
	/* lists with lists and tuples with tuples: not iterators, views or ranges */
	if (a.type == TP_LIST && b.type == TP_LIST && !a.u.l->lazy && !b.u.l->lazy && a.u.l->tuple == b.u.l->tuple) {
		for (uint32_t i = 0; i < a.u.l->n && i < b.u.l->n; i++) {
			step(r, line);
			if (!tp_equal(a.u.l->v[i], b.u.l->v[i]))
				return cmp_at(r, line, a.u.l->v[i], b.u.l->v[i], depth + 1);
		}
		return (a.u.l->n > b.u.l->n) - (a.u.l->n < b.u.l->n);
	}
	check_defined(r, line, a);
	check_defined(r, line, b);
	rt_err(r, line, "'<' not supported between instances of '%s' and '%s'", tname(a), tname(b));
}

static int contains(struct rt *r, int line, struct tp_val hay, struct tp_val needle)
{
	switch (hay.type) {
	case TP_STR:
		if (needle.type != TP_STR)
			rt_err(r, line, "'in <string>' requires string as left operand, not %s", tname(needle));
		charge(r, line, hay.u.s.len / 64);
		return needle.u.s.len == 0 || memmem(hay.u.s.s, hay.u.s.len, needle.u.s.s, needle.u.s.len) != NULL;
	case TP_LIST: {
		struct tp_list *l = hay.u.l;
		if (l->poison)
			rt_err(r, line, "%s", l->poison);
		charge(r, line, l->n);
		for (uint32_t i = l->lazy == LAZY_GEN ? l->at : 0; i < l->n; i++)
			if (tp_equal(l->v[i], needle)) {
				if (l->lazy == LAZY_GEN) /* read up to the item found */
					l->at = i + 1;
				return 1;
			}
		if (l->lazy == LAZY_GEN)
			l->at = l->n;
		return 0;
	}
	case TP_DICT:
	case TP_NS:
		if (needle.type == TP_DICT || needle.type == TP_NS || (needle.type == TP_LIST && !needle.u.l->tuple))
			rt_err(r, line, "unhashable type: '%s'", tname(needle)); /* a dict's key must hash */
		charge(r, line, hay.u.d->n);
		return tp_dict_get(hay.u.d, needle) != NULL;
	case TP_UNDEF: return 0; /* Undefined iterates as empty */
	default: rt_err(r, line, "argument of type '%s' is not iterable", tname(hay));
	}
}

static struct tp_val concat_str(struct rt *r, struct tp_str a, struct tp_str b)
{
	struct tp_sb s = sb_new(r);
	tp_sb_str(&r->a, &s, a);
	tp_sb_str(&r->a, &s, b);
	return tp_mk_str(tp_sb_done(&s));
}

static struct tp_val html_escape(struct rt *r, struct tp_str s);

/* s[i, j) with its origins. */
static struct tp_str str_sub(struct rt *r, struct tp_str s, uint32_t i, uint32_t j)
{
	struct tp_sb o = sb_new(r);
	tp_sb_sub(&r->a, &o, s, i, j);
	return tp_sb_done(&o);
}

/* s padded with fill (one code point) to width code points, as Python's
 * str.center ('c'), ljust ('l'), rjust ('r') and the center filter do. */
static struct tp_val str_pad(struct rt *r, int line, struct tp_str s, int64_t width, struct tp_str fill, char how)
{
	int64_t n = cp_len(s);
	if (width <= n)
		return tp_mk_str(s);
	int64_t pad = width - n, left = how == 'c' ? pad / 2 + (pad & width & 1) : how == 'r' ? pad : 0;
	if ((uint64_t)pad > r->max_out / (fill.len ? fill.len : 1))
		rt_err(r, line, "output too long");
	charge(r, line, (uint32_t)(pad / 64));
	struct tp_sb o = sb_new(r);
	for (int64_t i = 0; i < left; i++)
		tp_sb_str(&r->a, &o, fill);
	tp_sb_str(&r->a, &o, s);
	for (int64_t i = left; i < pad; i++)
		tp_sb_str(&r->a, &o, fill);
	return tp_mk_str(tp_sb_done(&o));
}

/* Python's printf-style str % args, for the format filter and the % operator:
 * %s %r %d %i and %%; anything else is refused rather than rendered wrong.
 * markup: the format is a Markup, whose % escapes what %s and %r write of
 * each argument (not a Markup's %s) and gives a Markup, as markupsafe's. */
static struct tp_val py_percent(struct rt *r, int line, struct tp_str f0, const struct tp_val *av, uint32_t an,
			       int lenient, int markup)
{
	struct tp_sb o = sb_new(r);
	uint32_t i = 0, ai = 0;
	while (i < f0.len) {
		const char *pc = memchr(f0.s + i, '%', f0.len - i);
		uint32_t e = pc ? (uint32_t)(pc - f0.s) : f0.len;
		tp_sb_sub(&r->a, &o, f0, i, e);
		if (!pc)
			break;
		if (e + 1 >= f0.len)
			rt_err(r, line, "incomplete format");
		char c = f0.s[e + 1];
		if (c == '%') {
			tp_sb_sub(&r->a, &o, f0, e, e + 1);
		} else if (c == 's' || c == 'r' || c == 'd' || c == 'i') {
			if (ai >= an)
				rt_err(r, line, "not enough arguments for format string");
			struct tp_val x1 = av[ai++];
			if (markup && (c == 'r' || !(x1.type == TP_STR && x1.markup))) {
				if (r->watch && held(x1, 0))
					unreplayable(r, line, "content escaped by a Markup's %");
				if (c == 'd' || c == 'i') { /* markupsafe takes int() of it: int('3') is 3 */
					if (!is_num(x1))
						rt_err(r, line, "%%%c of a %s in a Markup's %% is not supported", c, tname(x1));
				} else {
					struct tp_sb t = sb_new(r);
					(c == 's' ? tp_str_of : tp_repr_of)(&r->a, &t, x1);
					tp_sb_str(&r->a, &o, html_escape(r, tp_sb_done(&t)).u.s);
					i = e + 2;
					continue;
				}
			}
			if (c == 's')
				tp_str_of(&r->a, &o, x1);
			else if (c == 'r')
				tp_repr_of(&r->a, &o, x1);
			else {
				if (!is_num(x1))
					rt_err(r, line, "%%%c format: a real number is required, not %s", c, tname(x1));
				char buf[320]; /* DBL_MAX has 309 digits */
				if (x1.type != TP_FLOAT)
					snprintf(buf, sizeof buf, "%lld", (long long)num_i(x1));
				else if (isnan(x1.u.f))
					rt_err(r, line, "cannot convert float NaN to integer");
				else if (isinf(x1.u.f))
					rt_err(r, line, "cannot convert float infinity to integer");
				else if (fabs(x1.u.f) < 9.2e18)
					snprintf(buf, sizeof buf, "%lld", (long long)trunc(x1.u.f));
				else /* an integer already; glibc prints a double's exact decimal, as Python's int() */
					snprintf(buf, sizeof buf, "%.0f", x1.u.f);
				tp_sb_put(&r->a, &o, buf, strlen(buf), x1.o);
			}
		} else
			rt_err(r, line, "the %%%c conversion of str %% args is not supported", c);
		i = e + 2;
	}
	if (ai < an && !lenient)
		rt_err(r, line, "not all arguments converted during string formatting");
	struct tp_val x = tp_mk_str(tp_sb_done(&o));
	x.markup = markup;
	return x;
}

/* Markup + str: the str's text escaped first, as jinja2's Markup does on
 * either side (what a template's "..."|safe + x prints under transformers). */
static struct tp_val markup_add(struct rt *r, int line, struct tp_val a, struct tp_val b)
{
	struct tp_val *plain = a.markup ? &b : &a;
	if (r->watch && held(*plain, 0))
		unreplayable(r, line, "content escaped by a Markup's +");
	*plain = html_escape(r, plain->u.s);
	struct tp_val s = concat_str(r, a.u.s, b.u.s);
	s.markup = 1;
	return s;
}

static struct tp_val arith(struct rt *r, int line, int op, struct tp_val a, struct tp_val b)
{
	if (op == OP_ADD && a.type == TP_STR && b.type == TP_STR) {
		if (a.markup != b.markup)
			return markup_add(r, line, a, b);
		struct tp_val s = concat_str(r, a.u.s, b.u.s);
		s.markup = a.markup;
		return s;
	}
	if (op == OP_MOD && a.type == TP_STR) {
		if (b.type == TP_LIST && b.u.l->tuple)
			return py_percent(r, line, a.u.s, b.u.l->v, b.u.l->n, 0, a.markup);
		if (b.type == TP_DICT || b.type == TP_UNDEF)
			rt_err(r, line, "str %% %s is not supported", tname(b));
		/* Python takes a list (it has __getitem__) as a mapping: one
		 * argument, and no complaint when the format uses none */
		return py_percent(r, line, a.u.s, &b, 1, b.type == TP_LIST && indexed(b.u.l), a.markup);
	}
	if ((a.type == TP_LIST && a.u.l->lazy) || (b.type == TP_LIST && b.u.l->lazy))
		rt_err(r, line, "unsupported operand type(s) for %s: an iterator (map, select, items() ...)",
		       op == OP_ADD ? "+" : op == OP_MUL ? "*" : "this operator");
	if (op == OP_ADD && a.type == TP_LIST && b.type == TP_LIST) {
		if (a.u.l->tuple != b.u.l->tuple)
			rt_err(r, line, "can only concatenate %s (not \"%s\") to %s", a.u.l->tuple ? "tuple" : "list",
			       b.u.l->tuple ? "tuple" : "list", a.u.l->tuple ? "tuple" : "list");
		struct tp_val l = tp_mk_list(&r->a, a.u.l->n + b.u.l->n, a.u.l->tuple);
		memcpy(l.u.l->v, a.u.l->v, a.u.l->n * sizeof(struct tp_val));
		memcpy(l.u.l->v + a.u.l->n, b.u.l->v, b.u.l->n * sizeof(struct tp_val));
		return l;
	}
	if (op == OP_MUL && ((a.type == TP_STR && (b.type == TP_INT || b.type == TP_BOOL)) ||
			     (b.type == TP_STR && (a.type == TP_INT || a.type == TP_BOOL)))) {
		struct tp_str s = a.type == TP_STR ? a.u.s : b.u.s;
		int64_t n = a.type == TP_STR ? num_i(b) : num_i(a);
		struct tp_sb o = sb_new(r);
		for (int64_t i = 0; i < n; i++) {
			step(r, line);
			tp_sb_str(&r->a, &o, s);
		}
		struct tp_val x = tp_mk_str(tp_sb_done(&o));
		x.markup = a.type == TP_STR ? a.markup : b.markup;
		return x;
	}
	if (op == OP_MUL && ((a.type == TP_LIST && (b.type == TP_INT || b.type == TP_BOOL)) ||
			     (b.type == TP_LIST && (a.type == TP_INT || a.type == TP_BOOL)))) {
		struct tp_list *l = a.type == TP_LIST ? a.u.l : b.u.l;
		int64_t n = a.type == TP_LIST ? num_i(b) : num_i(a);
		if (n < 0)
			n = 0;
		if (l->n && (uint64_t)n * l->n > r->max_out)
			rt_err(r, line, "list too long");
		struct tp_val o = tp_mk_list(&r->a, (uint32_t)(n * l->n), l->tuple);
		for (int64_t i = 0; i < n; i++) {
			step(r, line);
			memcpy(o.u.l->v + i * l->n, l->v, l->n * sizeof *l->v);
		}
		return o;
	}
	if (!is_num(a) || !is_num(b)) {
		check_defined(r, line, a);
		check_defined(r, line, b);
		static const char *ops[] = { "+", "-", "*", "/", "//", "%", "**" };
		rt_err(r, line, "unsupported operand type(s) for %s: '%s' and '%s'", ops[op], tname(a), tname(b));
	}
	if (op == OP_DIV) {
		if (num_f(b) == 0)
			rt_err(r, line, "division by zero");
		return tp_mk_float(num_f(a) / num_f(b));
	}
	if (a.type != TP_FLOAT && b.type != TP_FLOAT) {
		int64_t x = num_i(a), y = num_i(b), z;
		switch (op) {
		case OP_ADD:
			if (__builtin_add_overflow(x, y, &z))
				goto big;
			return tp_mk_int(z);
		case OP_SUB:
			if (__builtin_sub_overflow(x, y, &z))
				goto big;
			return tp_mk_int(z);
		case OP_MUL:
			if (__builtin_mul_overflow(x, y, &z))
				goto big;
			return tp_mk_int(z);
		case OP_FDIV:
		case OP_MOD:
			if (y == 0)
				rt_err(r, line, "integer division or modulo by zero");
			if (x == INT64_MIN && y == -1)
				goto big;
			z = x / y;
			if ((x % y != 0) && ((x < 0) != (y < 0)))
				z--;
			return op == OP_FDIV ? tp_mk_int(z) : tp_mk_int(x - z * y);
		case OP_POW:
			if (y < 0)
				return tp_mk_float(pow((double)x, (double)y));
			z = 1;
			for (int64_t i = 0; i < y; i++) {
				if (__builtin_mul_overflow(z, x, &z))
					goto big;
				if (z == 0 || z == 1)
					break;
			}
			if (z == -1 && (y & 1) == 0)
				z = 1;
			return tp_mk_int(z);
		}
	big:
		rt_err(r, line, "integer too large");
	}
	double x = num_f(a), y = num_f(b);
	switch (op) {
	case OP_ADD: return tp_mk_float(x + y);
	case OP_SUB: return tp_mk_float(x - y);
	case OP_MUL: return tp_mk_float(x * y);
	case OP_FDIV:
	case OP_MOD: {
		if (y == 0)
			rt_err(r, line, "float division by zero");
		/* Python's float_divmod */
		double m = fmod(x, y), d = (x - m) / y;
		if (m != 0 && ((m < 0) != (y < 0))) {
			m += y;
			d -= 1.0;
		} else if (m == 0)
			m = copysign(0.0, y); /* 0 % -2.0 is -0.0 */
		if (op == OP_MOD)
			return tp_mk_float(m);
		if (d == 0)
			return tp_mk_float(copysign(0.0, x / y));
		double fd = floor(d);
		if (d - fd > 0.5)
			fd += 1.0;
		return tp_mk_float(fd);
	}
	default: return tp_mk_float(pow(x, y));
	}
}

/* ---- slicing and indexing ---- */

static void slice_ix(int64_t n, int has_lo, int64_t lo, int has_hi, int64_t hi, int64_t st, int64_t *plo, int64_t *phi)
{
	if (st > 0) {
		lo = !has_lo ? 0 : lo < 0 ? (lo + n < 0 ? 0 : lo + n) : (lo > n ? n : lo);
		hi = !has_hi ? n : hi < 0 ? (hi + n < 0 ? 0 : hi + n) : (hi > n ? n : hi);
	} else {
		lo = !has_lo ? n - 1 : lo < 0 ? (lo + n < 0 ? -1 : lo + n) : (lo >= n ? n - 1 : lo);
		hi = !has_hi ? -1 : hi < 0 ? (hi + n < 0 ? -1 : hi + n) : (hi >= n ? n - 1 : hi);
	}
	*plo = lo;
	*phi = hi;
}

static struct tp_val do_slice(struct rt *r, int line, struct tp_val v, struct tp_val lo, struct tp_val hi, struct tp_val st)
{
	int64_t step_ = 1, a, b;
	if (st.type != TP_NONE && st.type != TP_UNDEF) {
		if (st.type != TP_INT)
			rt_err(r, line, "slice indices must be integers");
		step_ = st.u.i;
		if (step_ == 0)
			rt_err(r, line, "slice step cannot be zero");
	}
	int hl = lo.type != TP_NONE && lo.type != TP_UNDEF, hh = hi.type != TP_NONE && hi.type != TP_UNDEF;
	if ((hl && lo.type != TP_INT && lo.type != TP_BOOL) || (hh && hi.type != TP_INT && hi.type != TP_BOOL))
		rt_err(r, line, "slice indices must be integers or None");
	if (v.type == TP_LIST) {
		int64_t n = v.u.l->n;
		slice_ix(n, hl, hl ? num_i(lo) : 0, hh, hh ? num_i(hi) : 0, step_, &a, &b);
		uint32_t cnt = 0;
		for (int64_t i = a; step_ > 0 ? i < b : i > b; i += step_)
			cnt++;
		struct tp_val l = tp_mk_list(&r->a, cnt, v.u.l->tuple);
		l.o = v.o;
		cnt = 0;
		for (int64_t i = a; step_ > 0 ? i < b : i > b; i += step_)
			l.u.l->v[cnt++] = v.u.l->v[i];
		if (v.u.l->lazy == LAZY_RANGE) { /* a range's slice is a range, its ends as Python computes them */
			const int64_t *g = v.u.l->range;
			__int128 e[3] = {(__int128)g[0] + (__int128)a * g[2], (__int128)g[0] + (__int128)b * g[2],
					 (__int128)g[2] * step_};
			for (int k = 0; k < 3; k++) {
				if (e[k] < INT64_MIN || e[k] > INT64_MAX)
					rt_err(r, line, "a range whose ends pass 64 bits is not supported");
				l.u.l->range[k] = (int64_t)e[k];
			}
			l.u.l->lazy = LAZY_RANGE;
		}
		int li = r->tk ? track_find(r->tk, v.u.l) : -1;
		if (li >= 0) { /* messages[K:] is tracked too; any other slice tells the number of messages */
			if (step_ == 1 && !hh && (!hl || num_i(lo) >= 0))
				track_add(r, l.u.l, r->tk->offs[li] + (uint32_t)a);
			else
				r->tk->taint = 1;
		}
		return l;
	}
	if (v.type == TP_STR) {
		uint32_t n, *off = cp_offsets(r, v.u.s, &n);
		slice_ix(n, hl, hl ? num_i(lo) : 0, hh, hh ? num_i(hi) : 0, step_, &a, &b);
		struct tp_sb o = sb_new(r);
		if (step_ == 1) {
			if (b > a)
				tp_sb_sub(&r->a, &o, v.u.s, off[a], off[b]);
		} else
			for (int64_t i = a; step_ > 0 ? i < b : i > b; i += step_)
				tp_sb_sub(&r->a, &o, v.u.s, off[i], off[i + 1]);
		return tp_mk_str(tp_sb_done(&o));
	}
	check_defined(r, line, v);
	/* Jinja compiles a slice to a plain Python subscript: no Undefined here */
	rt_err(r, line, "'%s' object is not subscriptable", tname(v));
}

static const char *dict_methods[] = { "items", "keys", "values", "get", "pop", "update", "copy", "setdefault", "clear",
				      "popitem", NULL };
static const char *str_methods[] = { "strip",	   "lstrip",	 "rstrip",     "split",	  "rsplit",  "startswith",
				     "endswith",   "replace",	 "upper",      "lower",	  "title",   "capitalize",
				     "find",	   "rfind",	 "count",      "format",  "join",    "splitlines",
				     "isdigit",	   "isalpha",	 "isalnum",    "isspace", "islower", "isupper",
				     "index",	   "rindex",	 "removeprefix", "removesuffix", "swapcase", "casefold",
				     "center", "ljust", "rjust", "zfill", "partition", "rpartition", "encode", NULL };
static const char *list_methods[] = { "append", "extend", "insert", "pop", "remove", "clear", "sort",
				      "reverse", "index", "count", "copy", NULL };

static int in_names(const char **names, const char *n)
{
	for (; *names; names++)
		if (**names == *n && !strcmp(*names, n)) /* most names differ in their first byte */
			return 1;
	return 0;
}

/* What an attribute name is, worked out once per name in the template (its
 * N_ATTR node's op) instead of at every lookup: which loop attribute, and
 * whose method it is. */
enum {
	LA_INDEX = 1, LA_INDEX0, LA_REVINDEX, LA_REVINDEX0, LA_FIRST, LA_LAST, LA_LENGTH, LA_DEPTH, LA_DEPTH0,
	LA_PREVITEM, LA_NEXTITEM, LA_CYCLE, LA_CHANGED,
	LA_MASK = 15,
	DICT_METHOD = 16, STR_METHOD = 32, LIST_METHOD = 64,
	ATTR_KNOWN = 128, /* the code has been worked out */
};

static int attr_code(const char *name)
{
	static const char *const loop_names[] = { "index", "index0", "revindex", "revindex0", "first", "last", "length",
						  "depth", "depth0", "previtem", "nextitem", "cycle", "changed" };
	int c = ATTR_KNOWN;
	for (int i = 0; i < (int)(sizeof loop_names / sizeof *loop_names); i++)
		if (!strcmp(loop_names[i], name))
			c |= i + 1;
	c |= in_names(dict_methods, name) ? DICT_METHOD : 0;
	c |= in_names(str_methods, name) ? STR_METHOD : 0;
	c |= in_names(list_methods, name) ? LIST_METHOD : 0;
	return c;
}

static struct tp_val loop_attr(struct rt *r, int line, struct tp_loop *lp, const char *name, int code);
static struct tp_val cycler_attr(struct rt *r, struct tp_val c, const char *name);

static struct tp_val get_item(struct rt *r, int line, struct tp_val v, struct tp_val k)
{
	if (v.type == TP_LIST && !indexed(v.u.l))
		return tp_mk_undef("item of an iterator");
	switch (v.type) {
	case TP_LIST:
		if (r->tk)
			track_index(r, v.u.l, k);
		if (k.type == TP_INT || k.type == TP_BOOL) {
			int64_t i = num_i(k);
			if (i < 0)
				i += v.u.l->n;
			if (i < 0 || i >= v.u.l->n)
				return tp_mk_undef("list index");
			return v.u.l->v[i];
		}
		return tp_mk_undef("list index");
	case TP_DICT:
	case TP_NS: {
		struct tp_val *p = tp_dict_get(v.u.d, k);
		if (p)
			return *p;
		if (k.type == TP_STR && v.type == TP_DICT) {
			char *nm = tp_strndup(&r->a, k.u.s.s, k.u.s.len);
			if (in_names(dict_methods, nm))
				return mk_func(r, F_METHOD, nm, v);
		}
		return tp_mk_undef(k.type == TP_STR ? tp_strndup(&r->a, k.u.s.s, k.u.s.len) : "key");
	}
	case TP_STR:
		if (k.type == TP_INT || k.type == TP_BOOL) {
			uint32_t n, *off = cp_offsets(r, v.u.s, &n);
			int64_t i = num_i(k);
			if (i < 0)
				i += n;
			if (i < 0 || i >= n)
				return tp_mk_undef("string index");
			struct tp_sb o = sb_new(r);
			tp_sb_sub(&r->a, &o, v.u.s, off[i], off[i + 1]);
			struct tp_val c = tp_mk_str(tp_sb_done(&o));
			c.markup = v.markup;
			return c;
		}
		return tp_mk_undef("string index");
	case TP_LOOP:
		if (k.type == TP_STR) {
			const char *nm = tp_strndup(&r->a, k.u.s.s, k.u.s.len);
			return loop_attr(r, line, v.u.loop, nm, attr_code(nm));
		}
		return tp_mk_undef("loop");
	case TP_UNDEF: rt_err(r, line, "'%s' is undefined", v.u.undef ? v.u.undef : "value");
	default: return tp_mk_undef("item");
	}
}

/* v.name; code is attr_code(name), or 0 for it to be worked out here. */
static struct tp_val get_attr(struct rt *r, int line, struct tp_val v, const char *name, int code)
{
	if (!code)
		code = attr_code(name);
	switch (v.type) {
	case TP_DICT:
		/* Jinja tries the attribute first: d.items is the method. */
		if (code & DICT_METHOD)
			return mk_func(r, F_METHOD, name, v);
		{
			struct tp_val *p = tp_dict_gets(v.u.d, name, strlen(name));
			return p ? *p : tp_mk_undef(name);
		}
	case TP_NS: {
		struct tp_val *p = tp_dict_gets(v.u.d, name, strlen(name));
		return p ? *p : tp_mk_undef(name);
	}
	case TP_STR:
		if (code & STR_METHOD)
			return mk_func(r, F_METHOD, name, v);
		return tp_mk_undef(name);
	case TP_LIST:
		if (v.u.l->tuple == 2 && (!strcmp(name, "grouper") || !strcmp(name, "list")))
			return v.u.l->v[name[0] == 'l']; /* groupby's (grouper, list) tuples */
		/* a tuple and a range have count and index only */
		if ((code & LIST_METHOD) && indexed(v.u.l) &&
		    ((!v.u.l->tuple && !v.u.l->lazy) || !strcmp(name, "count") || !strcmp(name, "index")))
			return mk_func(r, F_METHOD, name, v);
		return tp_mk_undef(name);
	case TP_LOOP: return loop_attr(r, line, v.u.loop, name, code);
	case TP_FUNC:
		if (v.u.fn->id == F_CYCLER && v.u.fn->obj)
			return cycler_attr(r, v, name);
		return tp_mk_undef(name);
	case TP_UNDEF: rt_err(r, line, "'%s' is undefined", v.u.undef ? v.u.undef : "value");
	default: return tp_mk_undef(name);
	}
}

static struct tp_val loop_attr(struct rt *r, int line, struct tp_loop *lp, const char *name, int code)
{
	int64_t i = lp->i, n = lp->items->n;
	int id = code & LA_MASK;
	if (r->tk && lp == r->tk->loop && id != LA_INDEX && id != LA_INDEX0 && id != LA_FIRST && id != LA_PREVITEM &&
	    id != LA_CYCLE && id != LA_DEPTH && id != LA_DEPTH0)
		r->tk->taint = 1; /* last, length, revindex, nextitem: the number of messages; changed: state */
	struct tp_val self = { .type = TP_LOOP, .o = tp_literal, .u.loop = lp };
	switch (id) {
	case LA_INDEX: return tp_mk_int(i + 1);
	case LA_INDEX0: return tp_mk_int(i);
	case LA_REVINDEX: return tp_mk_int(n - i);
	case LA_REVINDEX0: return tp_mk_int(n - i - 1);
	case LA_FIRST: return tp_mk_bool(i == 0);
	case LA_LAST: return tp_mk_bool(i == n - 1);
	case LA_LENGTH: return tp_mk_int(n);
	case LA_DEPTH: return tp_mk_int(lp->depth);
	case LA_DEPTH0: return tp_mk_int(lp->depth - 1);
	case LA_PREVITEM: return i > 0 ? lp->items->v[i - 1] : tp_mk_undef("previtem");
	case LA_NEXTITEM: return i + 1 < n ? lp->items->v[i + 1] : tp_mk_undef("nextitem");
	case LA_CYCLE: return mk_func(r, F_CYCLE, "cycle", self);
	case LA_CHANGED: return mk_func(r, F_CHANGED, "changed", self);
	default: return tp_mk_undef(name);
	}
}

/* Jinja's Cycler: c.current, c.items, c.pos; c.next() and c.reset() are bound methods. */
static struct tp_val cycler_attr(struct rt *r, struct tp_val c, const char *name)
{
	struct tp_func *fn = c.u.fn;
	taint(r); /* a cycler's position is state one turn leaves to the next */
	if (!strcmp(name, "current"))
		return fn->items->v[fn->pos];
	if (!strcmp(name, "items")) {
		struct tp_val l = tp_mk_list(&r->a, 0, 1);
		l.u.l = fn->items;
		return l;
	}
	if (!strcmp(name, "pos"))
		return tp_mk_int(fn->pos);
	if (!strcmp(name, "next") || !strcmp(name, "reset"))
		return mk_func(r, F_METHOD, name[0] == 'n' ? "next" : "reset", c);
	return tp_mk_undef(name);
}

/* ---- arguments ---- */

struct args {
	struct tp_val *v;
	const char **kw;
	uint32_t n;
	uint32_t used; /* bitmask of arguments taken, to refuse unknown ones */
};

/* Positional argument pos (-1: keyword only) or keyword name. */
static int arg(struct args *a, int pos, const char *name, struct tp_val *out)
{
	int p = 0;
	for (uint32_t i = 0; i < a->n; i++) {
		if (a->kw[i]) {
			if (name && !strcmp(a->kw[i], name)) {
				*out = a->v[i];
				a->used |= 1u << (i < 31 ? i : 31);
				return 1;
			}
		} else if (p++ == pos) {
			*out = a->v[i];
			a->used |= 1u << (i < 31 ? i : 31);
			return 1;
		}
	}
	return 0;
}

static void args_done(struct rt *r, int line, struct args *a, const char *what)
{
	for (uint32_t i = 0; i < a->n && i < 31; i++)
		if (!(a->used & (1u << i))) {
			if (a->kw[i])
				rt_err(r, line, "%s got an unexpected keyword argument '%s'", what, a->kw[i]);
			rt_err(r, line, "%s got too many arguments", what);
		}
}

static struct tp_val eval_kind(struct rt *r, struct frame *f, const struct tp_node *n);
static struct tp_val eval_watched(struct rt *r, struct frame *f, const struct tp_node *n);

/* A literal or a name without the call into eval_kind, whose frame is
 * large: they are half the nodes a chat template evaluates. */
static inline struct tp_val eval(struct rt *r, struct frame *f, const struct tp_node *n)
{
	if (n->kind == N_LIT) {
		step(r, n->line);
		return n->lit;
	}
	if (n->kind == N_NAME) {
		step(r, n->line);
		struct tp_val v = lookup(r, f, n->name);
		if (r->watch && held(v, 0))
			r->saw = 1;
		return v;
	}
	return r->watch ? eval_watched(r, f, n) : eval_kind(r, f, n);
}

static void eval_args(struct rt *r, struct frame *f, const struct tp_node *n, uint32_t from, struct args *a)
{
	a->n = n->nargs > from ? n->nargs - from : 0;
	a->v = tp_alloc(&r->a, (a->n + 1) * sizeof *a->v);
	a->kw = n->kw ? n->kw + from : NULL;
	a->used = 0;
	if (!a->kw)
		a->kw = tp_alloc(&r->a, (a->n + 1) * sizeof *a->kw);
	for (uint32_t i = 0; i < a->n; i++)
		a->v[i] = eval(r, f, n->args[from + i]);
	if (a->n > 31)
		rt_err(r, n->line, "too many arguments");
}

static struct tp_str need_str(struct rt *r, int line, struct tp_val v, const char *what)
{
	if (v.type != TP_STR)
		rt_err(r, line, "%s must be a string, not %s", what, tname(v));
	return v.u.s;
}

/* ---- string operations (keeping origins) ---- */

static int in_chars(uint32_t c, const struct tp_str *chars)
{
	if (!chars)
		return py_space(c);
	uint32_t i = 0;
	while (i < chars->len)
		if (u8_dec(chars->s, chars->len, &i) == c)
			return 1;
	return 0;
}

/* Byte offsets lo and hi of s stripped; the common case (ASCII at the right
 * end) decodes only what is taken off. */
static struct tp_val str_strip(struct rt *r, struct tp_str s, const struct tp_str *chars, int left, int right)
{
	uint32_t lo = 0, hi = s.len;
	if (left)
		while (lo < hi) {
			uint32_t i = lo;
			if (!in_chars(u8_dec(s.s, s.len, &i), chars))
				break;
			lo = i;
		}
	while (right && hi > lo) {
		if ((unsigned char)s.s[hi - 1] >= 0x80) { /* where the last character starts: decode from lo */
			struct tp_str rest = { s.s + lo, hi - lo, 0, NULL };
			uint32_t n, *off = cp_offsets(r, rest, &n);
			while (n > 0) {
				uint32_t i = lo + off[n - 1];
				if (!in_chars(u8_dec(s.s, s.len, &i), chars))
					break;
				n--;
			}
			hi = lo + off[n];
			break;
		}
		if (!in_chars((unsigned char)s.s[hi - 1], chars))
			break;
		hi--;
	}
	if (lo == 0 && hi == s.len)
		return tp_mk_str(s);
	struct tp_sb o = sb_new(r);
	tp_sb_sub(&r->a, &o, s, lo, hi);
	return tp_mk_str(tp_sb_done(&o));
}

static struct tp_val substr(struct rt *r, struct tp_str s, uint32_t a, uint32_t b)
{
	struct tp_sb o = sb_new(r);
	tp_sb_sub(&r->a, &o, s, a, b);
	return tp_mk_str(tp_sb_done(&o));
}

static void list_push(struct rt *r, struct tp_val *l, struct tp_val v, uint32_t *cap)
{
	if (l->u.l->n == *cap) {
		uint32_t c = *cap ? *cap * 2 : 8;
		l->u.l->v = tp_realloc(&r->a, l->u.l->v, l->u.l->n * sizeof(struct tp_val), c * sizeof(struct tp_val));
		*cap = c;
	}
	l->u.l->v[l->u.l->n++] = v;
}

static struct tp_val str_split(struct rt *r, int line, struct tp_str s, struct tp_val sep, int64_t maxsplit)
{
	struct tp_val l = tp_mk_list(&r->a, 0, 0);
	uint32_t cap = 0;
	if (sep.type == TP_NONE || sep.type == TP_UNDEF) {
		uint32_t i = 0;
		for (;;) {
			uint32_t j;
			while (i < s.len) {
				j = i;
				if (!py_space(u8_dec(s.s, s.len, &j)))
					break;
				i = j;
			}
			if (i >= s.len)
				break;
			if (maxsplit >= 0 && (int64_t)l.u.l->n >= maxsplit) {
				/* the rest as it is, trailing white space included */
				list_push(r, &l, substr(r, s, i, s.len), &cap);
				break;
			}
			uint32_t st = i;
			while (i < s.len) {
				j = i;
				if (py_space(u8_dec(s.s, s.len, &j)))
					break;
				i = j;
			}
			list_push(r, &l, substr(r, s, st, i), &cap);
			step(r, line);
		}
		return l;
	}
	struct tp_str d = need_str(r, line, sep, "separator");
	if (d.len == 0)
		rt_err(r, line, "empty separator");
	uint32_t i = 0;
	for (;;) {
		const char *p = NULL;
		if (maxsplit < 0 || (int64_t)l.u.l->n < maxsplit)
			p = memmem(s.s + i, s.len - i, d.s, d.len);
		if (!p) {
			list_push(r, &l, substr(r, s, i, s.len), &cap);
			break;
		}
		uint32_t at = (uint32_t)(p - s.s);
		list_push(r, &l, substr(r, s, i, at), &cap);
		i = at + d.len;
		step(r, line);
	}
	return l;
}

static struct tp_val str_replace(struct rt *r, int line, struct tp_str s, struct tp_str old, struct tp_str new_,
				 int64_t count)
{
	struct tp_sb o = sb_new(r);
	if (old.len == 0) {
		/* Python inserts the replacement between every character. */
		uint32_t n, *off = cp_offsets(r, s, &n);
		for (uint32_t i = 0; i <= n; i++) {
			if (count < 0 || (int64_t)i < count)
				tp_sb_str(&r->a, &o, new_);
			if (i < n)
				tp_sb_sub(&r->a, &o, s, off[i], off[i + 1]);
			step(r, line);
		}
		return tp_mk_str(tp_sb_done(&o));
	}
	uint32_t i = 0;
	int64_t done = 0;
	for (;;) {
		const char *p = count < 0 || done < count ? memmem(s.s + i, s.len - i, old.s, old.len) : NULL;
		if (!p) {
			tp_sb_sub(&r->a, &o, s, i, s.len);
			break;
		}
		uint32_t at = (uint32_t)(p - s.s);
		tp_sb_sub(&r->a, &o, s, i, at);
		tp_sb_str(&r->a, &o, new_);
		i = at + old.len;
		done++;
		step(r, line);
	}
	return tp_mk_str(tp_sb_done(&o));
}

/* mode: 'u' upper, 'l' lower, 'c' capitalize, 't' str.title, 'j' Jinja's title filter, 's' swapcase */
static struct tp_val str_case(struct rt *r, struct tp_str s, int mode)
{
	struct tp_sb o = sb_new(r);
	uint32_t i = 0;
	int word = 0, first = 1;
	while (i < s.len) {
		uint32_t at = i;
		uint32_t c = u8_dec(s.s, s.len, &i), m = c;
		switch (mode) {
		case 'u': m = (uint32_t)utf8proc_toupper((utf8proc_int32_t)c); break;
		case 'l': m = (uint32_t)utf8proc_tolower((utf8proc_int32_t)c); break;
		case 'c': m = (uint32_t)(first ? utf8proc_totitle((utf8proc_int32_t)c) : utf8proc_tolower((utf8proc_int32_t)c)); break;
		case 's':
			m = (uint32_t)(utf8proc_isupper((utf8proc_int32_t)c) ? utf8proc_tolower((utf8proc_int32_t)c)
									   : utf8proc_toupper((utf8proc_int32_t)c));
			break;
		case 't': {
			utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
			int cased = k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT;
			m = (uint32_t)(word ? utf8proc_tolower((utf8proc_int32_t)c) : utf8proc_totitle((utf8proc_int32_t)c));
			word = cased;
			break;
		}
		case 'j': {
			int delim = py_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
			m = (uint32_t)(word ? utf8proc_tolower((utf8proc_int32_t)c) : utf8proc_toupper((utf8proc_int32_t)c));
			word = !delim;
			break;
		}
		}
		first = 0;
		uint8_t buf[8];
		utf8proc_ssize_t k = utf8proc_encode_char((utf8proc_int32_t)m, buf);
		if (c == 0xfffd && m == c) /* keep a bad byte as it was */
			tp_sb_sub(&r->a, &o, s, at, i);
		else
			tp_sb_put(&r->a, &o, (const char *)buf, (size_t)k, tp_str_org(s, at));
	}
	return tp_mk_str(tp_sb_done(&o));
}

static int64_t str_find(struct tp_str s, struct tp_str sub, int rev)
{
	/* returns a character index, as Python does */
	const char *p = NULL;
	if (!rev)
		p = memmem(s.s, s.len, sub.s, sub.len);
	else
		for (uint32_t i = s.len + 1; i-- > 0;)
			if (i + sub.len <= s.len && memcmp(s.s + i, sub.s, sub.len) == 0) {
				p = s.s + i;
				break;
			}
	if (!p)
		return -1;
	struct tp_str pre = { s.s, (uint32_t)(p - s.s), 0, NULL };
	return cp_len(pre);
}

static int affix(struct rt *r, int line, struct tp_str s, struct tp_val a, int end)
{
	if (a.type == TP_LIST) {
		for (uint32_t i = 0; i < a.u.l->n; i++)
			if (affix(r, line, s, a.u.l->v[i], end))
				return 1;
		return 0;
	}
	struct tp_str x = need_str(r, line, a, end ? "endswith's argument" : "startswith's argument");
	if (x.len > s.len)
		return 0;
	return memcmp(end ? s.s + s.len - x.len : s.s, x.s, x.len) == 0;
}

static struct tp_val str_join(struct rt *r, int line, struct tp_str sep, struct tp_list *l)
{
	struct tp_sb o = sb_new(r);
	for (uint32_t i = 0; i < l->n; i++) {
		if (i)
			tp_sb_str(&r->a, &o, sep);
		struct tp_val v = l->v[i];
		if (v.type == TP_STR)
			tp_sb_str(&r->a, &o, v.u.s);
		else
			tp_str_of(&r->a, &o, v);
		step(r, line);
	}
	return tp_mk_str(tp_sb_done(&o));
}

/* str.format with {} {0} {name} fields and no format specs. */
static struct tp_val str_format(struct rt *r, int line, struct tp_str s, struct args *a)
{
	struct tp_sb o = sb_new(r);
	uint32_t i = 0, auto_ix = 0;
	a->used = ~0u;
	while (i < s.len) {
		char c = s.s[i];
		if ((c == '{' || c == '}') && i + 1 < s.len && s.s[i + 1] == c) {
			tp_sb_sub(&r->a, &o, s, i, i + 1);
			i += 2;
			continue;
		}
		if (c == '}')
			rt_err(r, line, "single '}' encountered in format string");
		if (c != '{') {
			uint32_t j = i;
			while (j < s.len && s.s[j] != '{' && s.s[j] != '}')
				j++;
			tp_sb_sub(&r->a, &o, s, i, j);
			i = j;
			continue;
		}
		const char *e = memchr(s.s + i, '}', s.len - i);
		if (!e)
			rt_err(r, line, "single '{' encountered in format string");
		uint32_t fs = i + 1, fe = (uint32_t)(e - s.s);
		for (uint32_t q = fs; q < fe; q++)
			if (s.s[q] == ':' || s.s[q] == '!' || s.s[q] == '.' || s.s[q] == '[')
				rt_err(r, line, "format specs and conversions in str.format are not supported");
		struct tp_val v = tp_mk_undef("format");
		int found = 0;
		if (fe == fs) {
			found = arg(a, (int)auto_ix++, NULL, &v);
		} else if (s.s[fs] >= '0' && s.s[fs] <= '9') {
			found = arg(a, atoi(tp_strndup(&r->a, s.s + fs, fe - fs)), NULL, &v);
		} else
			found = arg(a, -1, tp_strndup(&r->a, s.s + fs, fe - fs), &v);
		if (!found)
			rt_err(r, line, "str.format: missing argument for field %d", (int)auto_ix);
		if (v.type == TP_STR)
			tp_sb_str(&r->a, &o, v.u.s);
		else
			tp_str_of(&r->a, &o, v);
		i = fe + 1;
	}
	return tp_mk_str(tp_sb_done(&o));
}

static int64_t int_arg(struct rt *r, int line, struct tp_val v, const char *what)
{
	if (v.type != TP_INT && v.type != TP_BOOL)
		rt_err(r, line, "%s must be an integer, not %s", what, tname(v));
	return num_i(v);
}

static struct tp_val call_str_method(struct rt *r, int line, struct tp_str s, const char *m, struct args *a)
{
	struct tp_val x, y;
	if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
		struct tp_str chars, *cp = NULL;
		if (arg(a, 0, "chars", &x) && x.type != TP_NONE) {
			chars = need_str(r, line, x, "strip's argument");
			cp = &chars;
		}
		args_done(r, line, a, m);
		return str_strip(r, s, cp, m[0] != 'r', m[0] != 'l');
	}
	if (!strcmp(m, "split")) {
		struct tp_val sep = tp_mk_none();
		int64_t max = -1;
		arg(a, 0, "sep", &sep);
		if (arg(a, 1, "maxsplit", &x))
			max = int_arg(r, line, x, "maxsplit");
		args_done(r, line, a, m);
		return str_split(r, line, s, sep, max);
	}
	if (!strcmp(m, "rsplit")) {
		struct tp_val sep = tp_mk_none();
		arg(a, 0, "sep", &sep);
		if (arg(a, 1, "maxsplit", &x) && int_arg(r, line, x, "maxsplit") >= 0) {
			/* rsplit with a limit splits from the right */
			int64_t max = int_arg(r, line, x, "maxsplit");
			if (sep.type != TP_STR)
				rt_err(r, line, "rsplit with maxsplit needs a separator here");
			struct tp_str d = sep.u.s;
			if (d.len == 0)
				rt_err(r, line, "empty separator");
			struct tp_val parts[64];
			uint32_t np = 0, end = s.len;
			while (np < max && np < 62) {
				int64_t at = -1;
				for (uint32_t i = end + 1; i-- > 0;)
					if (i + d.len <= end && memcmp(s.s + i, d.s, d.len) == 0) {
						at = i;
						break;
					}
				if (at < 0)
					break;
				parts[np++] = substr(r, s, (uint32_t)at + d.len, end);
				end = (uint32_t)at;
			}
			parts[np++] = substr(r, s, 0, end);
			struct tp_val l = tp_mk_list(&r->a, np, 0);
			for (uint32_t i = 0; i < np; i++)
				l.u.l->v[i] = parts[np - 1 - i];
			args_done(r, line, a, m);
			return l;
		}
		args_done(r, line, a, m);
		return str_split(r, line, s, sep, -1);
	}
	if (!strcmp(m, "splitlines")) {
		args_done(r, line, a, m);
		struct tp_val l = tp_mk_list(&r->a, 0, 0);
		uint32_t cap = 0, i = 0, st = 0;
		while (i < s.len) {
			if (s.s[i] == '\n' || s.s[i] == '\r') {
				list_push(r, &l, substr(r, s, st, i), &cap);
				if (s.s[i] == '\r' && i + 1 < s.len && s.s[i + 1] == '\n')
					i++;
				st = ++i;
			} else
				i++;
		}
		if (st < s.len)
			list_push(r, &l, substr(r, s, st, s.len), &cap);
		return l;
	}
	if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
		if (!arg(a, 0, NULL, &x))
			rt_err(r, line, "%s takes an argument", m);
		args_done(r, line, a, m);
		return tp_mk_bool(affix(r, line, s, x, m[0] == 'e'));
	}
	if (!strcmp(m, "removeprefix") || !strcmp(m, "removesuffix")) {
		if (!arg(a, 0, NULL, &x))
			rt_err(r, line, "%s takes an argument", m);
		args_done(r, line, a, m);
		struct tp_str p = need_str(r, line, x, m);
		if (!affix(r, line, s, x, m[6] == 's'))
			return tp_mk_str(s);
		return m[6] == 's' ? substr(r, s, 0, s.len - p.len) : substr(r, s, p.len, s.len);
	}
	if (!strcmp(m, "replace")) {
		int64_t count = -1;
		if (!arg(a, 0, NULL, &x) || !arg(a, 1, NULL, &y))
			rt_err(r, line, "replace takes two arguments");
		struct tp_val c;
		if (arg(a, 2, "count", &c))
			count = int_arg(r, line, c, "count");
		args_done(r, line, a, m);
		return str_replace(r, line, s, need_str(r, line, x, "replace's argument"),
				   need_str(r, line, y, "replace's argument"), count);
	}
	if (!strcmp(m, "upper") || !strcmp(m, "lower") || !strcmp(m, "title") || !strcmp(m, "capitalize") ||
	    !strcmp(m, "swapcase") || !strcmp(m, "casefold")) {
		args_done(r, line, a, m);
		int mode = !strcmp(m, "upper") ? 'u' : !strcmp(m, "lower") || !strcmp(m, "casefold") ? 'l'
			 : !strcmp(m, "title") ? 't' : !strcmp(m, "capitalize") ? 'c' : 's';
		return str_case(r, s, mode);
	}
	if (!strcmp(m, "find") || !strcmp(m, "rfind") || !strcmp(m, "index") || !strcmp(m, "rindex")) {
		if (!arg(a, 0, NULL, &x))
			rt_err(r, line, "%s takes an argument", m);
		args_done(r, line, a, m);
		int64_t at = str_find(s, need_str(r, line, x, m), m[0] == 'r');
		if (at < 0 && (!strcmp(m, "index") || !strcmp(m, "rindex")))
			rt_err(r, line, "substring not found");
		return tp_mk_int(at);
	}
	if (!strcmp(m, "count")) {
		if (!arg(a, 0, NULL, &x))
			rt_err(r, line, "count takes an argument");
		args_done(r, line, a, m);
		struct tp_str sub = need_str(r, line, x, "count's argument");
		if (sub.len == 0)
			return tp_mk_int(cp_len(s) + 1);
		int64_t n = 0;
		for (uint32_t i = 0; i + sub.len <= s.len;) {
			const char *p = memmem(s.s + i, s.len - i, sub.s, sub.len);
			if (!p)
				break;
			n++;
			i = (uint32_t)(p - s.s) + sub.len;
		}
		return tp_mk_int(n);
	}
	if (!strcmp(m, "format"))
		return str_format(r, line, s, a);
	if (!strcmp(m, "center") || !strcmp(m, "ljust") || !strcmp(m, "rjust") || !strcmp(m, "zfill")) {
		struct tp_val fill = tp_mk_str(tp_str_lit(&r->a, m[0] == 'z' ? "0" : " ", 1, tp_literal));
		if (!arg(a, 0, NULL, &x))
			rt_err(r, line, "%s expected an argument", m);
		int64_t w = int_arg(r, line, x, "width");
		if (m[0] != 'z' && arg(a, 1, NULL, &fill) && (fill.type != TP_STR || cp_len(fill.u.s) != 1))
			rt_err(r, line, "The fill character must be exactly one character long");
		args_done(r, line, a, m);
		if (m[0] != 'z')
			return str_pad(r, line, s, w, fill.u.s, m[0] == 'c' ? 'c' : m[0] == 'l' ? 'l' : 'r');
		/* zfill: the zeros go after a leading sign */
		if (!(s.len && (s.s[0] == '+' || s.s[0] == '-')) || (int64_t)cp_len(s) >= w)
			return str_pad(r, line, s, w, fill.u.s, 'r');
		struct tp_sb o = sb_new(r);
		tp_sb_sub(&r->a, &o, s, 0, 1);
		tp_sb_str(&r->a, &o, str_pad(r, line, str_sub(r, s, 1, s.len), w - 1, fill.u.s, 'r').u.s);
		return tp_mk_str(tp_sb_done(&o));
	}
	if (!strcmp(m, "partition") || !strcmp(m, "rpartition")) {
		if (!arg(a, 0, NULL, &x) || x.type != TP_STR)
			rt_err(r, line, "%s takes a string", m);
		args_done(r, line, a, m);
		if (!x.u.s.len)
			rt_err(r, line, "empty separator");
		const char *at = NULL;
		if (m[0] == 'p')
			at = memmem(s.s, s.len, x.u.s.s, x.u.s.len);
		else
			for (uint32_t i = s.len >= x.u.s.len ? s.len - x.u.s.len + 1 : 0; !at && i-- > 0;)
				if (!memcmp(s.s + i, x.u.s.s, x.u.s.len))
					at = s.s + i;
		struct tp_val t = tp_mk_list(&r->a, 3, 1);
		struct tp_str none = { "", 0, 0, NULL };
		if (!at) {
			t.u.l->v[0] = tp_mk_str(m[0] == 'p' ? s : none);
			t.u.l->v[1] = tp_mk_str(none);
			t.u.l->v[2] = tp_mk_str(m[0] == 'p' ? none : s);
		} else {
			uint32_t i = (uint32_t)(at - s.s);
			t.u.l->v[0] = tp_mk_str(str_sub(r, s, 0, i));
			t.u.l->v[1] = tp_mk_str(str_sub(r, s, i, i + x.u.s.len));
			t.u.l->v[2] = tp_mk_str(str_sub(r, s, i + x.u.s.len, s.len));
		}
		return t;
	}
	if (!strcmp(m, "join")) {
		if (!arg(a, 0, NULL, &x))
			rt_err(r, line, "join takes an argument");
		args_done(r, line, a, m);
		struct tp_list *l = iter_list(r, line, x);
		for (uint32_t i = 0; i < l->n; i++)
			if (l->v[i].type != TP_STR)
				rt_err(r, line, "sequence item %u: expected str instance, %s found", i, tname(l->v[i]));
		return str_join(r, line, s, l);
	}
	if (!strncmp(m, "is", 2)) {
		args_done(r, line, a, m);
		uint32_t i = 0;
		int ok = s.len > 0, has_cased = 0;
		while (i < s.len) {
			utf8proc_int32_t c = (utf8proc_int32_t)u8_dec(s.s, s.len, &i);
			utf8proc_category_t k = utf8proc_category(c);
			int alpha = k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
			int digit = k == UTF8PROC_CATEGORY_ND;
			if (!strcmp(m, "isdigit"))
				ok &= digit;
			else if (!strcmp(m, "isalpha"))
				ok &= alpha;
			else if (!strcmp(m, "isalnum"))
				ok &= alpha || digit || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
			else if (!strcmp(m, "isspace"))
				ok &= py_space((uint32_t)c);
			else if (!strcmp(m, "islower")) {
				if (k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LT)
					ok = 0;
				has_cased |= k == UTF8PROC_CATEGORY_LL;
			} else if (!strcmp(m, "isupper")) {
				if (k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT)
					ok = 0;
				has_cased |= k == UTF8PROC_CATEGORY_LU;
			}
		}
		if (!strcmp(m, "islower") || !strcmp(m, "isupper"))
			ok = ok && has_cased;
		return tp_mk_bool(ok);
	}
	rt_err(r, line, "str.%s is not supported", m);
}

/* loop.changed(*values): true when the values differ from the last call's (or on the first call). */
static struct tp_val loop_changed(struct rt *r, int line, struct tp_loop *lp, struct args *a)
{
	struct tp_val t = tp_mk_list(&r->a, a->n, 1);
	for (uint32_t i = 0; i < a->n; i++) {
		if (a->kw[i])
			rt_err(r, line, "changed() got an unexpected keyword argument '%s'", a->kw[i]);
		t.u.l->v[i] = a->v[i];
		if (a->v[i].type == TP_LIST)
			charge(r, line, a->v[i].u.l->n);
		else if (a->v[i].type == TP_DICT || a->v[i].type == TP_NS)
			charge(r, line, a->v[i].u.d->n);
	}
	a->used = ~0u;
	if (lp->changed.type == TP_LIST && tp_equal(lp->changed, t))
		return tp_mk_bool(0);
	lp->changed = t;
	return tp_mk_bool(1);
}

/* A method of a Markup string, as markupsafe 3.0 has them: replace escapes
 * its new text and join its items, and they give Markup back, as do the
 * case and strip methods and split's parts; the str ones it does not wrap
 * (find, startswith ...) answer of the text. Others are refused. */
static struct tp_val call_markup_method(struct rt *r, int line, struct tp_str s, const char *m, struct args *a)
{
	static const char *keep[] = {"upper", "lower", "title", "capitalize", "swapcase", "casefold", "split", "rsplit",
				     "splitlines", "strip", "lstrip", "rstrip", "removeprefix", "removesuffix", NULL};
	static const char *plain[] = {"startswith", "endswith", "find", "rfind", "index", "rindex", "count",
				      "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper", NULL};
	int mark = in_names(keep, m) ? 1 : in_names(plain, m) ? 0 : -1;
	if (!strcmp(m, "replace") && a->n >= 2) {
		mark = 1;
		if (a->v[1].type == TP_STR && !a->v[1].markup)
			a->v[1] = html_escape(r, a->v[1].u.s);
	}
	if (!strcmp(m, "join") && a->n >= 1) {
		mark = 1;
		struct tp_list *l = iter_list(r, line, a->v[0]);
		struct tp_val e = tp_mk_list(&r->a, l->n, 0);
		for (uint32_t k = 0; k < l->n; k++)
			e.u.l->v[k] = l->v[k].type == TP_STR && !l->v[k].markup ? html_escape(r, l->v[k].u.s) : l->v[k];
		a->v[0] = e;
	}
	if (mark < 0)
		rt_err(r, line, "str.%s of a Markup (|safe) string is not supported", m);
	struct tp_val x = call_str_method(r, line, s, m, a);
	if (mark && x.type == TP_STR)
		x.markup = 1;
	if (mark && x.type == TP_LIST)
		for (uint32_t i = 0; i < x.u.l->n; i++)
			x.u.l->v[i].markup = x.u.l->v[i].type == TP_STR;
	return x;
}

static struct tp_val call_method(struct rt *r, int line, struct tp_func *fn, struct args *a)
{
	struct tp_val self = fn->self, x;
	const char *m = fn->name;
	if (self.type == TP_STR && self.markup)
		return call_markup_method(r, line, self.u.s, m, a);
	if (self.type == TP_STR)
		return call_str_method(r, line, self.u.s, m, a);
	if (self.type == TP_DICT) {
		struct tp_dict *d = self.u.d;
		if (!strcmp(m, "items") || !strcmp(m, "keys") || !strcmp(m, "values")) {
			args_done(r, line, a, m);
			struct tp_val l = tp_mk_list(&r->a, d->n, 0);
			for (uint32_t i = 0; i < d->n; i++) {
				if (m[0] == 'k')
					l.u.l->v[i] = d->k[i];
				else if (m[0] == 'v')
					l.u.l->v[i] = d->v[i];
				else {
					struct tp_val t = tp_mk_list(&r->a, 2, 1);
					t.o = self.o;
					t.u.l->v[0] = d->k[i];
					t.u.l->v[1] = d->v[i];
					l.u.l->v[i] = t;
				}
			}
			l.o = self.o;
			l.u.l->lazy = m[0] == 'k' ? LAZY_KEYS : m[0] == 'v' ? LAZY_VALUES : LAZY_ITEMS;
			return l;
		}
		if (!strcmp(m, "get")) {
			struct tp_val def = tp_mk_none();
			if (!arg(a, 0, NULL, &x))
				rt_err(r, line, "get takes a key");
			arg(a, 1, NULL, &def);
			args_done(r, line, a, m);
			struct tp_val *p = tp_dict_get(d, x);
			return p ? *p : def;
		}
		if (!strcmp(m, "copy")) {
			struct tp_val c = tp_mk_dict(&r->a);
			for (uint32_t i = 0; i < d->n; i++)
				tp_dict_set(&r->a, c.u.d, d->k[i], d->v[i]);
			c.o = self.o;
			return c;
		}
	}
	if (self.type == TP_LIST) {
		struct tp_list *l = self.u.l;
		if (!strcmp(m, "index") || !strcmp(m, "count")) {
			if (!arg(a, 0, NULL, &x))
				rt_err(r, line, "%s takes an argument", m);
			args_done(r, line, a, m);
			int64_t c = 0;
			for (uint32_t i = 0; i < l->n; i++)
				if (tp_equal(l->v[i], x)) {
					if (m[0] == 'i')
						return tp_mk_int(i);
					c++;
				}
			if (m[0] == 'i')
				rt_err(r, line, "value is not in list");
			return tp_mk_int(c);
		}
		if (!strcmp(m, "copy"))
			return self;
	}
	if (self.type == TP_LOOP && fn->id == F_CYCLE) {
		if (a->n == 0)
			rt_err(r, line, "no items for cycling given");
		a->used = ~0u;
		return a->v[self.u.loop->i % a->n];
	}
	if (self.type == TP_LOOP && fn->id == F_CHANGED)
		return loop_changed(r, line, self.u.loop, a);
	if (self.type == TP_FUNC && self.u.fn->id == F_CYCLER && self.u.fn->obj) {
		struct tp_func *c = self.u.fn;
		args_done(r, line, a, m);
		if (m[0] == 'r') {
			c->pos = 0;
			return tp_mk_none();
		}
		x = c->items->v[c->pos];
		c->pos = (c->pos + 1) % c->items->n;
		return x;
	}
	/* What is left mutates a list or dict: the immutable sandbox refuses it. */
	rt_err(r, line, "access to attribute '%s' of '%s' object is unsafe", m, tname(self));
}

/* ---- macros ---- */

static int exec_body(struct rt *r, struct frame *f, const struct tp_stmt *s);

static struct tp_val call_macro(struct rt *r, int line, struct tp_macro *m, struct args *a, struct tp_val caller)
{
	if (++r->depth > r->max_depth)
		rt_err(r, line, "macro calls nested more than %d deep", r->max_depth);
	struct frame *f = frame_new(r, m->closure);
	const struct tp_stmt *d = m->def;
	uint32_t npos = 0;
	for (uint32_t i = 0; i < a->n; i++)
		if (!a->kw[i])
			npos++;
	struct tp_val varargs = tp_mk_list(&r->a, npos > d->nnames ? npos - d->nnames : 0, 1);
	uint32_t vi = 0, pi = 0;
	for (uint32_t i = 0; i < a->n; i++)
		if (!a->kw[i]) {
			if (pi >= d->nnames)
				varargs.u.l->v[vi++] = a->v[i];
			pi++;
		}
	struct tp_val kwargs = tp_mk_dict(&r->a);
	for (uint32_t i = 0; i < a->n; i++) {
		if (!a->kw[i])
			continue;
		uint32_t k;
		for (k = 0; k < d->nnames; k++)
			if (!strcmp(d->names[k], a->kw[i]))
				break;
		if (k == d->nnames)
			tp_dict_set(&r->a, kwargs.u.d, str_val(r, a->kw[i], tp_literal), a->v[i]);
	}
	for (uint32_t k = 0; k < d->nnames; k++) {
		struct tp_val v;
		if (!arg(a, (int)k, d->names[k], &v)) {
			if (d->defaults[k])
				v = eval(r, f, d->defaults[k]);
			else
				v = tp_mk_undef(d->names[k]);
		}
		frame_set(r, f, d->names[k], v);
	}
	frame_set(r, f, "varargs", varargs);
	frame_set(r, f, "kwargs", kwargs);
	if (caller.type != TP_UNDEF)
		frame_set(r, f, "caller", caller);
	struct tp_sb *save = r->out, b = sb_new(r);
	r->out = &b;
	exec_body(r, f, d->body);
	r->out = save;
	r->depth--;
	return tp_mk_str(tp_sb_done(&b));
}

static int exec_for(struct rt *r, struct frame *f, const struct tp_stmt *s, const struct tp_val *rec, int depth);

/* loop(iterable) in a recursive for loop: the loop's body run over iterable, one level deeper, as text. */
static struct tp_val loop_call(struct rt *r, int line, struct tp_loop *lp, struct args *a)
{
	struct tp_val it;
	if (!lp->s || !lp->s->recursive)
		rt_err(r, line, "The loop must be marked 'recursive' to be called recursively.");
	if (!arg(a, 0, "iterable", &it))
		rt_err(r, line, "loop() missing 1 required positional argument: 'iterable'");
	args_done(r, line, a, "loop");
	if (++r->depth > r->max_depth)
		rt_err(r, line, "recursive loop calls nested more than %d deep", r->max_depth);
	struct tp_sb *save = r->out, b = sb_new(r);
	r->out = &b;
	exec_for(r, lp->f, lp->s, &it, lp->depth + 1);
	r->out = save;
	r->depth--;
	return tp_mk_str(tp_sb_done(&b));
}

/* cycler(*items) and joiner(sep=", ") make an object; joiner's is called for its separator. */
static struct tp_val call_cycler_joiner(struct rt *r, int line, struct tp_func *fn, struct args *a)
{
	if (fn->obj) {
		/* a joiner object: "" the first time, then its separator */
		taint(r);
		if (fn->id != F_JOINER)
			rt_err(r, line, "'Cycler' object is not callable");
		args_done(r, line, a, "joiner");
		if (!fn->used) {
			fn->used = 1;
			return tp_mk_str((struct tp_str){ "", 0, 0, NULL });
		}
		return fn->self;
	}
	struct tp_val obj = mk_func(r, fn->id, fn->name, tp_mk_none());
	struct tp_func *o = obj.u.fn;
	if (fn->id == F_JOINER) {
		o->self = str_val(r, ", ", tp_literal);
		arg(a, 0, "sep", &o->self);
		args_done(r, line, a, "joiner");
		o->obj = 1;
		return obj;
	}
	for (uint32_t i = 0; i < a->n; i++)
		if (a->kw[i])
			rt_err(r, line, "cycler() got an unexpected keyword argument '%s'", a->kw[i]);
	if (a->n == 0)
		rt_err(r, line, "at least one item has to be provided");
	a->used = ~0u;
	o->obj = 1;
	o->items = tp_alloc(&r->a, sizeof *o->items);
	o->items->n = a->n;
	o->items->tuple = 1; /* c.items is the tuple of arguments */
	o->items->v = tp_alloc(&r->a, a->n * sizeof *o->items->v);
	memcpy(o->items->v, a->v, a->n * sizeof *o->items->v);
	return obj;
}

/* Watching: strftime_now printed out for fmt; a replay checks that the
 * clock still reads the same (a text read before is kept once). */
static void watch_clock(struct rt *r, int line, const char *fmt, const char *out)
{
	struct tmpl_watch *w = r->watch;
	for (unsigned k = 0; k < w->nclock; k++)
		if (!strcmp(w->clock[k].fmt, fmt) && !strcmp(w->clock[k].out, out))
			return;
	if (w->nclock == TMPL_WATCH_CLOCKS || strlen(fmt) >= sizeof w->clock[0].fmt ||
	    strlen(out) >= sizeof w->clock[0].out) {
		unreplayable(r, line, "strftime_now");
		return;
	}
	strcpy(w->clock[w->nclock].fmt, fmt);
	strcpy(w->clock[w->nclock].out, out);
	w->nclock++;
}

static struct tp_val call_value(struct rt *r, struct frame *f, int line, struct tp_val fv, struct args *a,
				struct tp_val caller)
{
	if (fv.type == TP_MACRO)
		return call_macro(r, line, fv.u.m, a, caller);
	if (fv.type == TP_LOOP)
		return loop_call(r, line, fv.u.loop, a);
	if (fv.type == TP_UNDEF)
		rt_err(r, line, "'%s' is undefined", fv.u.undef ? fv.u.undef : "value");
	if (fv.type != TP_FUNC)
		rt_err(r, line, "'%s' object is not callable", tname(fv));
	struct tp_func *fn = fv.u.fn;
	struct tp_val x;
	switch (fn->id) {
	case F_METHOD:
	case F_CYCLE:
	case F_CHANGED: return call_method(r, line, fn, a);
	case F_CYCLER:
	case F_JOINER: return call_cycler_joiner(r, line, fn, a);
	case F_RAISE: {
		struct tp_str s = arg(a, 0, "message", &x) ? to_str(r, x) : (struct tp_str){ "", 0, 0, NULL };
		tp_fail(&r->a, EXIT_USAGE, "template raised: %.*s", (int)(s.len > 900 ? 900 : s.len), s.s);
	}
	case F_STRFTIME: {
		if (!arg(a, 0, "format", &x) || x.type != TP_STR)
			rt_err(r, line, "strftime_now takes a format string");
		args_done(r, line, a, "strftime_now");
		char fmt[256], buf[512];
		snprintf(fmt, sizeof fmt, "%.*s", (int)x.u.s.len, x.u.s.s);
		size_t n = tmpl_strftime_now(fmt, buf, sizeof buf);
		buf[n] = 0; /* strftime leaves it undefined when the text does not fit */
		if (r->watch)
			watch_clock(r, line, fmt, buf);
		return tp_mk_str(tp_str_lit(&r->a, buf, n, tp_literal));
	}
	case F_RANGE: {
		int64_t lo = 0, hi, st = 1;
		if (a->n == 1)
			hi = int_arg(r, line, a->v[0], "range's argument");
		else if (a->n == 2 || a->n == 3) {
			lo = int_arg(r, line, a->v[0], "range's argument");
			hi = int_arg(r, line, a->v[1], "range's argument");
			if (a->n == 3)
				st = int_arg(r, line, a->v[2], "range's argument");
		} else
			rt_err(r, line, "range expects 1 to 3 arguments");
		a->used = ~0u;
		if (st == 0)
			rt_err(r, line, "range() arg 3 must not be zero");
		__int128 n = st > 0 ? (hi > lo ? ((__int128)hi - lo + st - 1) / st : 0)
				    : (lo > hi ? ((__int128)lo - hi - st - 1) / -(__int128)st : 0);
		/* The sandbox's limit. */
		if (n > 100000)
			rt_err(r, line, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
		struct tp_val l = tp_mk_list(&r->a, (uint32_t)n, 0);
		for (int64_t i = 0; i < n; i++)
			l.u.l->v[i] = tp_mk_int(lo + i * st);
		l.u.l->lazy = LAZY_RANGE;
		l.u.l->range[0] = lo, l.u.l->range[1] = hi, l.u.l->range[2] = st;
		return l;
	}
	case F_NAMESPACE:
	case F_DICT: {
		struct tp_val d = tp_mk_dict(&r->a);
		if (fn->id == F_NAMESPACE)
			d.type = TP_NS;
		for (uint32_t i = 0; i < a->n; i++) {
			if (a->kw[i])
				tp_dict_set(&r->a, d.u.d, str_val(r, a->kw[i], tp_literal), a->v[i]);
			else if (a->v[i].type == TP_DICT || a->v[i].type == TP_NS) {
				for (uint32_t k = 0; k < a->v[i].u.d->n; k++)
					tp_dict_set(&r->a, d.u.d, a->v[i].u.d->k[k], a->v[i].u.d->v[k]);
			} else
				rt_err(r, line, "%s() takes keyword arguments or a dict", fn->name);
		}
		a->used = ~0u;
		return d;
	}
	}
	(void)f;
	rt_err(r, line, "cannot call this");
}

/* ---- tests ---- */

static int run_test(struct rt *r, int line, const char *name, struct tp_val v, struct args *a)
{
	struct tp_val x;
	int has = arg(a, 0, NULL, &x);
	a->used = ~0u;
#define IS(n) (!strcmp(name, n))
	if (IS("defined"))
		return v.type != TP_UNDEF;
	if (IS("undefined"))
		return v.type == TP_UNDEF;
	if (IS("none"))
		return v.type == TP_NONE;
	if (IS("string"))
		return v.type == TP_STR;
	if (IS("mapping"))
		return v.type == TP_DICT;
	if (IS("iterable"))
		return v.type == TP_STR || v.type == TP_LIST || v.type == TP_DICT || v.type == TP_UNDEF;
	if (IS("sequence")) /* Undefined has a len() and a __getitem__ */
		return v.type == TP_STR || (v.type == TP_LIST && indexed(v.u.l)) || v.type == TP_DICT || v.type == TP_UNDEF;
	if (IS("number"))
		return is_num(v);
	if (IS("integer"))
		return v.type == TP_INT;
	if (IS("float"))
		return v.type == TP_FLOAT;
	if (IS("boolean"))
		return v.type == TP_BOOL;
	if (IS("true"))
		return v.type == TP_BOOL && v.u.b;
	if (IS("false"))
		return v.type == TP_BOOL && !v.u.b;
	if (IS("callable"))
		return v.type == TP_MACRO || v.type == TP_LOOP ||
		       (v.type == TP_FUNC && !(v.u.fn->id == F_CYCLER && v.u.fn->obj)); /* a Cycler has no __call__ */
	if (IS("escaped"))
		return 0;
	if (IS("lower") || IS("upper")) {
		/* str(value).islower() / .isupper() */
		struct args none = { NULL, NULL, 0, 0 };
		return call_str_method(r, line, to_str(r, v), IS("lower") ? "islower" : "isupper", &none).u.b;
	}
	if (IS("odd") || IS("even") || IS("divisibleby")) {
		/* value % 2 == 1, value % 2 == 0, value % num == 0, with Python's % */
		if (IS("divisibleby") && !has)
			rt_err(r, line, "divisibleby needs an argument");
		struct tp_val m = arith(r, line, OP_MOD, v, IS("divisibleby") ? x : tp_mk_int(2));
		return tp_equal(m, tp_mk_int(IS("odd") ? 1 : 0));
	}
	static const char *const binary[] = { "equalto", "eq", "==", "sameas", "ne", "!=", "in", "lt", "lessthan", "<",
					      "le", "<=", "gt", "greaterthan", ">", "ge", ">=", NULL };
	if (!in_names((const char **)binary, name))
		rt_err(r, line, "no test named '%s'", name);
	if (!has)
		rt_err(r, line, "test '%s' needs an argument", name);
	if (IS("equalto") || IS("eq") || IS("==") || IS("sameas"))
		return IS("sameas") ? (v.type == x.type && tp_equal(v, x)) : tp_equal(v, x);
	if (IS("ne") || IS("!="))
		return !tp_equal(v, x);
	if (IS("in"))
		return contains(r, line, x, v);
	if (IS("lt") || IS("lessthan") || IS("<"))
		return cmp_vals(r, line, v, x) < 0;
	if (IS("le") || IS("<="))
		return cmp_vals(r, line, v, x) <= 0;
	if (IS("gt") || IS("greaterthan") || IS(">"))
		return cmp_vals(r, line, v, x) > 0;
	if (IS("ge") || IS(">="))
		return cmp_vals(r, line, v, x) >= 0;
#undef IS
	rt_err(r, line, "no test named '%s'", name);
}

/* ---- filters ---- */

static struct tp_val apply_filter(struct rt *r, struct frame *f, int line, const char *name, struct tp_val v,
				  struct args *a);
static struct tp_val filter_body(struct rt *r, struct frame *f, int line, const char *name, struct tp_val v,
				 struct args *a);

/* Jinja's attribute paths for map/sort/...: "a.b.0". */
static struct tp_val attr_path(struct rt *r, int line, struct tp_val v, struct tp_str path)
{
	uint32_t i = 0;
	while (i <= path.len) {
		const char *dot = memchr(path.s + i, '.', path.len - i);
		uint32_t e = dot ? (uint32_t)(dot - path.s) : path.len;
		char *part = tp_strndup(&r->a, path.s + i, e - i);
		char *end;
		long ix = strtol(part, &end, 10);
		if (*part && !*end)
			v = get_item(r, line, v, tp_mk_int(ix));
		else if (v.type == TP_UNDEF)
			return v;
		else {
			struct tp_val k = tp_mk_str(tp_str_lit(&r->a, part, e - i, tp_literal));
			v = v.type == TP_DICT || v.type == TP_NS ? get_item(r, line, v, k) : get_attr(r, line, v, part, 0);
		}
		if (!dot)
			break;
		i = e + 1;
	}
	return v;
}

static struct tp_val ensure_list(struct rt *r, int line, struct tp_val v)
{
	struct tp_list *l = iter_list(r, line, v);
	struct tp_val out = tp_mk_list(&r->a, l->n, 0);
	if (l->n) /* an empty list may have no storage: memcpy from NULL is undefined */
		memcpy(out.u.l->v, l->v, l->n * sizeof(struct tp_val));
	out.o = v.o;
	return out;
}

struct sort_ctx {
	struct rt *r;
	int line, ci, rev;
	struct tp_val *keys;
};

static struct tp_val sort_key(struct rt *r, struct tp_val v, int ci)
{
	if (ci && v.type == TP_STR)
		return str_case(r, v.u.s, 'l');
	return v;
}

/* A stable merge sort: Python's sort is stable and qsort is not. */
static void msort(struct sort_ctx *c, uint32_t *ix, uint32_t *tmp, uint32_t n)
{
	if (n < 2)
		return;
	uint32_t h = n / 2;
	msort(c, ix, tmp, h);
	msort(c, ix + h, tmp, n - h);
	uint32_t i = 0, j = h, k = 0;
	while (i < h && j < n) {
		int cmp = cmp_vals(c->r, c->line, c->keys[ix[j]], c->keys[ix[i]]);
		if (c->rev)
			cmp = -cmp;
		if (cmp < 0)
			tmp[k++] = ix[j++];
		else
			tmp[k++] = ix[i++];
	}
	while (i < h)
		tmp[k++] = ix[i++];
	while (j < n)
		tmp[k++] = ix[j++];
	memcpy(ix, tmp, n * sizeof *ix);
}

static struct tp_val sorted(struct rt *r, int line, struct tp_list *l, struct tp_val *keys, int rev, int tuple_o)
{
	uint32_t *ix = tp_alloc(&r->a, (l->n + 1) * sizeof *ix), *tmp = tp_alloc(&r->a, (l->n + 1) * sizeof *tmp);
	for (uint32_t i = 0; i < l->n; i++)
		ix[i] = i;
	charge(r, line, (uint64_t)l->n * 4);
	struct sort_ctx c = { r, line, 0, rev, keys };
	msort(&c, ix, tmp, l->n);
	struct tp_val out = tp_mk_list(&r->a, l->n, 0);
	for (uint32_t i = 0; i < l->n; i++)
		out.u.l->v[i] = l->v[ix[i]];
	(void)tuple_o;
	return out;
}

static int truthy_arg(struct args *a, int pos, const char *name, int def)
{
	struct tp_val x;
	return arg(a, pos, name, &x) ? tp_truthy(x) : def;
}

static struct tp_val html_escape(struct rt *r, struct tp_str s)
{
	struct tp_sb o = sb_new(r);
	for (uint32_t i = 0; i < s.len; i++) {
		const char *e = NULL;
		switch (s.s[i]) {
		case '&': e = "&amp;"; break;
		case '<': e = "&lt;"; break;
		case '>': e = "&gt;"; break;
		case '"': e = "&#34;"; break;
		case '\'': e = "&#39;"; break;
		}
		if (e)
			tp_sb_put(&r->a, &o, e, strlen(e), tp_str_org(s, i));
		else
			tp_sb_sub(&r->a, &o, s, i, i + 1);
	}
	return tp_mk_str(tp_sb_done(&o));
}

/* transformers' tojson without arguments: json.dumps with ensure_ascii off. */
static const struct json_opts tojson_defaults = { NULL, ", ", ": ", 0, 0 };

static struct tp_val to_json(struct rt *r, int line, struct tp_val v, struct args *a)
{
	struct json_opts jo = tojson_defaults;
	struct tp_val x;
	if (arg(a, 0, "indent", &x) && x.type != TP_NONE) {
		if (x.type == TP_STR)
			jo.indent = tp_strndup(&r->a, x.u.s.s, x.u.s.len);
		else {
			int64_t n = int_arg(r, line, x, "indent");
			if (n > 64)
				n = 64;
			char *sp = tp_alloc(&r->a, (size_t)(n > 0 ? n : 0) + 1);
			memset(sp, ' ', (size_t)(n > 0 ? n : 0));
			jo.indent = sp;
		}
		jo.item_sep = ",";
	}
	if (arg(a, 1, "ensure_ascii", &x))
		jo.ensure_ascii = tp_truthy(x);
	if (arg(a, 2, "separators", &x) && x.type != TP_NONE) {
		if (x.type != TP_LIST || x.u.l->n != 2 || x.u.l->v[0].type != TP_STR || x.u.l->v[1].type != TP_STR)
			rt_err(r, line, "tojson: separators must be a pair of strings");
		jo.item_sep = tp_strndup(&r->a, x.u.l->v[0].u.s.s, x.u.l->v[0].u.s.len);
		jo.key_sep = tp_strndup(&r->a, x.u.l->v[1].u.s.s, x.u.l->v[1].u.s.len);
	}
	if (arg(a, 3, "sort_keys", &x))
		jo.sort_keys = tp_truthy(x);
	args_done(r, line, a, "tojson");
	struct tp_str kept;
	if (r->cache && tp_cache_json_get(r->cache, v, &jo, &kept))
		return tp_mk_str(kept);
	struct tp_sb o = sb_new(r);
	const char *why = NULL;
	if (tp_json_of(&r->a, &o, v, &jo, 0, &why) < 0)
		rt_err(r, line, "tojson: %s", why);
	struct tp_str text = tp_sb_done(&o);
	if (r->cache)
		text = tp_cache_json_put(r->cache, v, &jo, text, r->a.fail, r->a.err);
	return tp_mk_str(text);
}

/* ---- Python's int(str, base) and float(str) ----
 * Both strip Python's white space, then read: int a sign, a base prefix
 * (0x 0o 0b where base is 0 or its own; base 0 refuses 007) and digits;
 * float a sign and inf, infinity, nan or a decimal (no hex). Underscores
 * may stand alone between digits (and after a prefix). Each gives 1 with
 * the value, 0 where Python raises ValueError, -1 for digits of other
 * scripts (which Python reads and we do not), and int 2 past 64 bits. */

/* s[*a, *b): s with Python's white space stripped and its sign read
 * (*neg); -1 when a non-ASCII decimal digit is in it. */
static int py_num_span(const char *s, uint32_t n, uint32_t *a, uint32_t *b, int *neg)
{
	uint32_t i = 0, first = n, last = n;
	while (i < n) {
		uint32_t j = i, c = u8_dec(s, n, &j);
		if (!py_space(c)) {
			if (first == n)
				first = i;
			last = j;
			if (c >= 0x80 && utf8proc_category((utf8proc_int32_t)c) == UTF8PROC_CATEGORY_ND)
				return -1;
		}
		i = j;
	}
	*a = first, *b = last, *neg = 0;
	if (first < last && (s[first] == '-' || s[first] == '+'))
		*neg = s[(*a)++] == '-';
	return 0;
}

static int digit_value(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'z' ? c - 'a' + 10 : c >= 'A' && c <= 'Z' ? c - 'A' + 10 : 99;
}

/* Digits of base b from s[*i, e), single underscores between them (and
 * one before the first where under_first): their count, or -1. The value
 * goes to *v, *big set when it passes 64 bits; all_zero tells whether
 * every digit was 0. */
static int py_digits(const char *s, uint32_t *i, uint32_t e, int b, int under_first, uint64_t *v, int *big, int *all_zero)
{
	int nd = 0;
	*all_zero = 1;
	while (*i < e) {
		if (s[*i] == '_') {
			if ((!nd && !under_first) || *i + 1 >= e || digit_value(s[*i + 1]) >= b)
				return -1;
			(*i)++, under_first = 0;
		}
		int d = digit_value(s[*i]);
		if (d >= b)
			break;
		*all_zero &= d == 0;
		if (v)
			*big |= __builtin_mul_overflow(*v, (uint64_t)b, v) | __builtin_add_overflow(*v, (uint64_t)d, v);
		(*i)++, nd++;
	}
	return nd;
}

static int py_int_text(const char *s, uint32_t n, int base, int64_t *out)
{
	uint32_t i, e;
	int neg;
	if (py_num_span(s, n, &i, &e, &neg) < 0)
		return -1;
	int b = base, prefixed = 0;
	if (e - i >= 2 && s[i] == '0') {
		char p = (char)(s[i + 1] | 0x20);
		int pb = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
		if (pb && (base == 0 || base == pb))
			b = pb, i += 2, prefixed = 1;
	}
	int plain0 = b == 0; /* base 0 without a prefix: decimal, no leading zero */
	if (plain0)
		b = 10;
	uint64_t v = 0;
	int big = 0, all_zero;
	uint32_t at = i;
	int nd = py_digits(s, &i, e, b, prefixed, &v, &big, &all_zero);
	if (nd <= 0 || i != e || (plain0 && s[at] == '0' && !all_zero))
		return 0;
	if (big || v > (uint64_t)INT64_MAX + (uint64_t)neg)
		return 2;
	*out = neg ? (int64_t)(0 - v) : (int64_t)v;
	return 1;
}

static int py_float_text(struct rt *r, const char *s, uint32_t n, double *out)
{
	uint32_t i, e;
	int neg;
	if (py_num_span(s, n, &i, &e, &neg) < 0)
		return -1;
	uint32_t len = e - i;
	if ((len == 3 || len == 8) && !strncasecmp(s + i, "infinity", len))
		return *out = neg ? -INFINITY : INFINITY, 1;
	if (len == 3 && !strncasecmp(s + i, "nan", 3))
		return *out = neg ? -NAN : NAN, 1;
	/* digitpart ["." [digitpart]] | "." digitpart, then [e [sign] digitpart] */
	uint32_t a = i;
	int z, big = 0;
	int n1 = py_digits(s, &i, e, 10, 0, NULL, &big, &z), n2 = 0;
	if (n1 < 0)
		return 0;
	if (i < e && s[i] == '.') {
		i++;
		if (i < e && s[i] == '_')
			return 0;
		n2 = py_digits(s, &i, e, 10, 0, NULL, &big, &z);
		if (n2 < 0)
			return 0;
	}
	if (!n1 && !n2)
		return 0;
	if (i < e && (s[i] | 0x20) == 'e') {
		i++;
		if (i < e && (s[i] == '-' || s[i] == '+'))
			i++;
		if (py_digits(s, &i, e, 10, 0, NULL, &big, &z) <= 0)
			return 0;
	}
	if (i != e)
		return 0;
	char *t = tp_alloc(&r->a, (size_t)(e - a) + 2), *q = t; /* without its underscores, for strtod */
	if (neg)
		*q++ = '-';
	for (uint32_t k = a; k < e; k++)
		if (s[k] != '_')
			*q++ = s[k];
	*q = 0;
	*out = strtod(t, NULL);
	return 1;
}

/* Python's round(x, n) of a float: the decimal nearest to x's exact value
 * (ties to even), read back; glibc's printf rounds exactly, as dtoa does. */
static double py_round(double x, int64_t n)
{
	char buf[720];
	if (!isfinite(x) || x == 0 || n > 323)
		return x;
	if (n < -308)
		return 0.0 * x;
	if (n >= 0) {
		snprintf(buf, sizeof buf, "%.*f", (int)n, x);
		return strtod(buf, NULL);
	}
	/* to 10^-n: keep the digits above it, as %e rounds them */
	snprintf(buf, sizeof buf, "%.16e", x);
	int64_t e10 = strtol(strchr(buf, 'e') + 1, NULL, 10), keep = e10 + 1 + n;
	if (keep >= 1) {
		snprintf(buf, sizeof buf, "%.*e", (int)keep - 1, x);
		return strtod(buf, NULL);
	}
	/* nothing kept: 0, or 10^-n when x is past half of it (a tie is 0, the even) */
	double unit = pow(10, (double)-n);
	if (keep == 0 && fabs(x) > unit / 2)
		return copysign(unit, x);
	return 0.0 * x;
}

/* Python's round(i, n) of an int: i for n >= 0, else to 10^-n, ties to even. */
static struct tp_val int_round(struct rt *r, int line, int64_t i, int64_t n)
{
	if (n >= 0)
		return tp_mk_int(i);
	if (n < -18)
		return tp_mk_int(0);
	int64_t p = 1;
	for (int64_t k = 0; k < -n; k++)
		p *= 10;
	int64_t m = i % p, base, up_to;
	if (m < 0)
		m += p;
	if (__builtin_sub_overflow(i, m, &base)) /* the multiple of p at or below i */
		rt_err(r, line, "integer too large");
	if (!(m > p - m || (m == p - m && (base / p) % 2 != 0)))
		return tp_mk_int(base);
	if (__builtin_add_overflow(base, p, &up_to))
		rt_err(r, line, "integer too large");
	return tp_mk_int(up_to);
}

/* jinja2's int filter: int(value, base), else int(float(value)), else the default. */
static struct tp_val to_int(struct rt *r, int line, struct tp_val v, struct tp_val def, int64_t base)
{
	double d;
	if (v.type == TP_INT)
		return v;
	if (v.type == TP_BOOL)
		return tp_mk_int(v.u.b);
	if (v.type == TP_FLOAT)
		d = v.u.f;
	else if (v.type != TP_STR)
		return def;
	else {
		int64_t i;
		int rc = py_int_text(v.u.s.s, v.u.s.len, (int)base, &i);
		if (rc == 1)
			return tp_mk_int(i);
		if (rc == 2)
			rt_err(r, line, "integer too large");
		if (rc < 0 || (rc = py_float_text(r, v.u.s.s, v.u.s.len, &d)) < 0)
			rt_err(r, line, "digits of other scripts than ASCII are not supported");
		if (rc == 0)
			return def;
	}
	if (!isfinite(d))
		return def; /* int() raises ValueError or OverflowError, which jinja2 catches */
	if (fabs(d) >= 0x1p63)
		rt_err(r, line, "integer too large");
	return tp_mk_int((int64_t)d);
}

/* Jinja's make_attrgetter: attribute is a path "a.b.0" (all-digit parts index) or any other
 * key; def (if any) replaces an undefined value after each step. */
static struct tp_val group_key(struct rt *r, int line, struct tp_val v, struct tp_val attr, const struct tp_val *def)
{
	if (attr.type != TP_STR) {
		v = get_item(r, line, v, attr);
		return def && v.type == TP_UNDEF ? *def : v;
	}
	struct tp_str path = attr.u.s;
	uint32_t i = 0;
	for (;;) {
		const char *dot = memchr(path.s + i, '.', path.len - i);
		uint32_t e = dot ? (uint32_t)(dot - path.s) : path.len, k = i;
		while (k < e && path.s[k] >= '0' && path.s[k] <= '9')
			k++;
		char *part = tp_strndup(&r->a, path.s + i, e - i);
		if (e > i && k == e)
			v = get_item(r, line, v, tp_mk_int(strtoll(part, NULL, 10)));
		else if (v.type == TP_DICT || v.type == TP_NS)
			v = get_item(r, line, v, tp_mk_str(tp_str_lit(&r->a, part, e - i, tp_literal)));
		else
			v = get_attr(r, line, v, part, 0);
		if (def && v.type == TP_UNDEF)
			v = *def;
		if (!dot)
			return v;
		i = e + 1;
	}
}

/* groupby(attribute, default=none, case_sensitive=false): the items sorted (stably) by the key,
 * then (grouper, list) tuples of runs of equal keys; without case_sensitive, string keys compare
 * lowercased and the grouper is the first item's own key. */
static struct tp_val filter_groupby(struct rt *r, int line, struct tp_val v, struct args *a)
{
	struct tp_val attr, def = tp_mk_none();
	if (!arg(a, 0, "attribute", &attr))
		rt_err(r, line, "groupby() missing 1 required positional argument: 'attribute'");
	arg(a, 1, "default", &def);
	int cs = truthy_arg(a, 2, "case_sensitive", 0);
	args_done(r, line, a, "groupby");
	const struct tp_val *dp = def.type == TP_NONE ? NULL : &def;
	struct tp_list *l = iter_list(r, line, v);
	struct tp_val *keys = tp_alloc(&r->a, (l->n + 1) * sizeof *keys);
	for (uint32_t i = 0; i < l->n; i++) {
		step(r, line);
		keys[i] = sort_key(r, group_key(r, line, l->v[i], attr, dp), !cs);
	}
	uint32_t *ix = tp_alloc(&r->a, (l->n + 1) * sizeof *ix), *tmp = tp_alloc(&r->a, (l->n + 1) * sizeof *tmp);
	for (uint32_t i = 0; i < l->n; i++)
		ix[i] = i;
	charge(r, line, (uint64_t)l->n * 4);
	struct sort_ctx c = { r, line, 0, 0, keys };
	msort(&c, ix, tmp, l->n);
	struct tp_val out = tp_mk_list(&r->a, 0, 0);
	uint32_t cap = 0;
	for (uint32_t i = 0, j; i < l->n; i = j) {
		for (j = i + 1; j < l->n && tp_equal(keys[ix[j]], keys[ix[i]]); j++)
			step(r, line);
		struct tp_val g = tp_mk_list(&r->a, j - i, 0), t = tp_mk_list(&r->a, 2, 2);
		for (uint32_t k = i; k < j; k++)
			g.u.l->v[k - i] = l->v[ix[k]];
		g.o = t.o = v.o;
		t.u.l->v[0] = cs ? keys[ix[i]] : group_key(r, line, l->v[ix[i]], attr, dp);
		t.u.l->v[1] = g;
		list_push(r, &out, t, &cap);
	}
	out.o = v.o;
	return out;
}

/* slice(slices, fill_with=none): slices lists of near-equal length, the first ones one longer;
 * fill_with pads the shorter ones. */
static struct tp_val filter_slice(struct rt *r, int line, struct tp_val v, struct args *a)
{
	struct tp_val x, fill;
	if (!arg(a, 0, "slices", &x))
		rt_err(r, line, "slice() missing 1 required positional argument: 'slices'");
	int64_t n = int_arg(r, line, x, "slices");
	int has_fill = arg(a, 1, "fill_with", &fill) && fill.type != TP_NONE;
	args_done(r, line, a, "slice");
	struct tp_list *l = iter_list(r, line, v);
	if (n == 0)
		rt_err(r, line, "integer division or modulo by zero");
	struct tp_val out = tp_mk_list(&r->a, 0, 0);
	out.o = v.o;
	if (n < 0)
		return out; /* range(slices) is empty */
	charge(r, line, (uint64_t)n + l->n);
	if (n > UINT32_MAX / 2)
		rt_err(r, line, "slice: too many slices");
	int64_t len = l->n, per = len / n, extra = len % n, off = 0;
	uint32_t cap = 0;
	for (int64_t k = 0; k < n; k++) {
		int64_t lo = off + k * per;
		if (k < extra)
			off++;
		int64_t hi = off + (k + 1) * per;
		int pad = has_fill && k >= extra;
		struct tp_val t = tp_mk_list(&r->a, (uint32_t)(hi - lo) + pad, 0);
		for (int64_t i = lo; i < hi; i++)
			t.u.l->v[i - lo] = l->v[i];
		if (pad)
			t.u.l->v[hi - lo] = fill;
		t.o = v.o;
		list_push(r, &out, t, &cap);
	}
	return out;
}

/* A filter of a Markup string, as jinja2 without autoescape runs it: the
 * ones that go through Markup's own methods keep the mark, the ones that
 * take str() or count give what they give of the text; the others (which
 * would escape their arguments) are refused rather than guessed. */
static struct tp_val markup_filter(struct rt *r, struct frame *f, int line, const char *name, struct tp_val v,
				   struct args *a)
{
	static const char *keep[] = {"upper", "lower", "capitalize", "title", "reverse", "trim", NULL};
	static const char *plain[] = {"length", "count", "tojson", "first", "last", "list", "join", "replace",
				      "int", "float", "wordcount", "forceescape", NULL};
	struct tp_val text = v;
	text.markup = 0;
	if (!strcmp(name, "escape") || !strcmp(name, "e") || !strcmp(name, "string")) {
		args_done(r, line, a, name);
		return v;
	}
	if (!strcmp(name, "default") || !strcmp(name, "d")) { /* v itself, or (empty, boolean=true) the default */
		struct tp_val x = filter_body(r, f, line, name, text, a);
		x.markup = x.type == TP_STR && x.u.s.s == v.u.s.s && x.u.s.len == v.u.s.len ? 1 : x.markup;
		return x;
	}
	if (in_names(keep, name)) {
		struct tp_val x = apply_filter(r, f, line, name, text, a);
		x.markup = x.type == TP_STR;
		return x;
	}
	if (in_names(plain, name))
		return apply_filter(r, f, line, name, text, a);
	rt_err(r, line, "the %s filter of a Markup (|safe) string is not supported", name);
}

/* The filters jinja2 writes as generators, and reverse, which gives
 * reversed(list): what they give is used up as it is read. */
static const char *gen_filters[] = {"map", "select", "reject", "selectattr", "rejectattr", "unique",
				    "batch", "slice", "items", "reverse", NULL};

/* jinja2's map, select, reject, selectattr, rejectattr, unique, batch,
 * slice and items are generator functions: none of them runs until the
 * generator is read. Over a value they cannot read, the generator is made
 * (true, a generator for every test) and its first read fails: the error it
 * raises, or NULL where the value can be read. map and the selects give an
 * empty one for a false value (their "if value:"), which filter_body does. */
static const char *read_fails(struct tp_val v, const char *name)
{
	static const char *lazy[] = {"map", "select", "reject", "selectattr", "rejectattr", "unique", "batch", "slice",
				     NULL};
	static const char *const not_iterable[] = {
		[TP_NONE] = "'NoneType' object is not iterable", [TP_BOOL] = "'bool' object is not iterable",
		[TP_INT] = "'int' object is not iterable", [TP_FLOAT] = "'float' object is not iterable"};
	static const char *truth_first[] = {"map", "select", "reject", "selectattr", "rejectattr", NULL};
	if (!strcmp(name, "items"))
		return v.type == TP_DICT || v.type == TP_UNDEF ? NULL : "Can only get item pairs from a mapping.";
	if (!in_names(lazy, name))
		return NULL;
	if (v.type == TP_LIST)
		return v.u.l->poison; /* a generator of one that fails fails when read */
	if ((unsigned)v.type >= sizeof not_iterable / sizeof *not_iterable || !not_iterable[v.type] ||
	    (!tp_truthy(v) && in_names(truth_first, name)))
		return NULL; /* readable, or (a false value) an empty generator */
	return not_iterable[v.type];
}

static struct tp_val apply_filter(struct rt *r, struct frame *f, int line, const char *name, struct tp_val v,
				  struct args *a)
{
	int gen = v.type == TP_LIST && v.u.l->lazy == LAZY_GEN;
	if (gen && (!strcmp(name, "length") || !strcmp(name, "count")))
		rt_err(r, line, "object of type 'generator' has no len()");
	if (gen && !strcmp(name, "last"))
		rt_err(r, line, "'generator' object is not reversible");
	if (gen && !strcmp(name, "first")) { /* next(): one item read */
		args_done(r, line, a, name);
		struct tp_list *l = v.u.l;
		if (l->poison)
			rt_err(r, line, "%s", l->poison);
		return l->at < l->n ? l->v[l->at++] : tp_mk_undef("first");
	}
	const char *why = read_fails(v, name);
	if (why) { /* jinja2 runs none of the filter until its generator is read */
		a->used = ~0u;
		struct tp_val g = tp_mk_list(&r->a, 0, 0);
		g.u.l->lazy = LAZY_GEN;
		g.u.l->poison = why;
		return g;
	}
	struct tp_val x = filter_body(r, f, line, name, v, a);
	int reread = gen && !strcmp(name, "reverse"); /* reversed() fails: list() of it, reversed */
	if (!reread && x.type == TP_LIST && in_names(gen_filters, name))
		x.u.l->lazy = LAZY_GEN;
	return x;
}

static struct tp_val filter_body(struct rt *r, struct frame *f, int line, const char *name, struct tp_val v,
				 struct args *a)
{
	struct tp_val x, y;
#define IS(n) (!strcmp(name, n))
	if (IS("safe")) {
		args_done(r, line, a, name);
		struct tp_val m = v.type == TP_STR ? v : tp_mk_str(to_str(r, v));
		m.markup = 1;
		return m;
	}
	if (v.type == TP_STR && v.markup && !IS("format")) /* format is the Markup's own %, below */
		return markup_filter(r, f, line, name, v, a);
	if (IS("default") || IS("d")) {
		struct tp_val def = tp_mk_str((struct tp_str){ "", 0, 0, NULL });
		arg(a, 0, "default_value", &def);
		int boolean = truthy_arg(a, 1, "boolean", 0);
		args_done(r, line, a, name);
		if (v.type == TP_UNDEF || (boolean && !tp_truthy(v)))
			return def;
		return v;
	}
	if (IS("tojson"))
		return to_json(r, line, v, a);
	if (IS("length") || IS("count")) {
		args_done(r, line, a, name);
		switch (v.type) {
		case TP_UNDEF: return tp_mk_int(0);
		case TP_STR: charge(r, line, v.u.s.len / 64); return tp_mk_int(cp_len(v.u.s));
		case TP_LIST: return tp_mk_int(v.u.l->n);
		case TP_DICT:
		case TP_NS: return tp_mk_int(v.u.d->n);
		default: rt_err(r, line, "object of type '%s' has no len()", tname(v));
		}
	}
	if (IS("string")) {
		args_done(r, line, a, name);
		return tp_mk_str(to_str(r, v));
	}
	if (IS("trim")) {
		struct tp_str chars, *cp = NULL;
		if (arg(a, 0, "chars", &x) && x.type != TP_NONE) {
			chars = need_str(r, line, x, "trim's argument");
			cp = &chars;
		}
		args_done(r, line, a, name);
		return str_strip(r, to_str(r, v), cp, 1, 1);
	}
	if (IS("upper") || IS("lower") || IS("capitalize") || IS("title")) {
		args_done(r, line, a, name);
		return str_case(r, to_str(r, v), IS("upper") ? 'u' : IS("lower") ? 'l' : IS("title") ? 'j' : 'c');
	}
	if (IS("replace")) {
		int64_t count = -1;
		if (!arg(a, 0, "old", &x) || !arg(a, 1, "new", &y))
			rt_err(r, line, "replace takes two arguments");
		struct tp_val c;
		if (arg(a, 2, "count", &c) && c.type != TP_NONE)
			count = int_arg(r, line, c, "count");
		args_done(r, line, a, name);
		return str_replace(r, line, to_str(r, v), to_str(r, x), to_str(r, y), count);
	}
	if (IS("first") || IS("last")) {
		args_done(r, line, a, name);
		struct tp_list *l = iter_list(r, line, v);
		if (!l->n)
			return tp_mk_undef(name);
		return IS("first") ? l->v[0] : l->v[l->n - 1];
	}
	if (IS("join")) {
		struct tp_val sep = tp_mk_str((struct tp_str){ "", 0, 0, NULL });
		arg(a, 0, "d", &sep);
		struct tp_list *l = iter_list(r, line, v);
		if (arg(a, 1, "attribute", &x)) {
			struct tp_val m = tp_mk_list(&r->a, l->n, 0);
			for (uint32_t i = 0; i < l->n; i++)
				m.u.l->v[i] = attr_path(r, line, l->v[i], to_str(r, x));
			l = m.u.l;
		}
		args_done(r, line, a, name);
		return str_join(r, line, to_str(r, sep), l);
	}
	if (IS("list")) {
		args_done(r, line, a, name);
		return ensure_list(r, line, v);
	}
	if (IS("int")) {
		struct tp_val def = tp_mk_int(0);
		int64_t base = 10;
		arg(a, 0, "default", &def);
		if (arg(a, 1, "base", &x))
			base = int_arg(r, line, x, "base");
		args_done(r, line, a, name);
		check_defined(r, line, v);
		if (base < 0 || base == 1 || base > 36)
			rt_err(r, line, "int() base must be >= 2 and <= 36, or 0");
		return to_int(r, line, v, def, base);
	}
	if (IS("float")) {
		struct tp_val def = tp_mk_float(0);
		arg(a, 0, "default", &def);
		args_done(r, line, a, name);
		check_defined(r, line, v);
		if (is_num(v))
			return tp_mk_float(num_f(v));
		double d;
		int rc = v.type == TP_STR ? py_float_text(r, v.u.s.s, v.u.s.len, &d) : 0;
		if (rc < 0)
			rt_err(r, line, "digits of other scripts than ASCII are not supported");
		return rc ? tp_mk_float(d) : def;
	}
	if (IS("abs")) {
		args_done(r, line, a, name);
		if (v.type == TP_INT) {
			if (v.u.i == INT64_MIN)
				rt_err(r, line, "integer too large");
			return tp_mk_int(v.u.i < 0 ? -v.u.i : v.u.i);
		}
		if (v.type == TP_BOOL)
			return tp_mk_int(v.u.b);
		if (v.type == TP_FLOAT)
			return tp_mk_float(fabs(v.u.f));
		rt_err(r, line, "bad operand type for abs(): '%s'", tname(v));
	}
	if (IS("round")) {
		int64_t prec = 0;
		struct tp_str method = { "common", 6, 0, NULL };
		if (arg(a, 0, "precision", &x))
			prec = int_arg(r, line, x, "precision");
		if (arg(a, 1, "method", &x))
			method = need_str(r, line, x, "method");
		args_done(r, line, a, name);
		int common = method.len == 6 && !memcmp(method.s, "common", 6);
		int ceil_ = method.len == 4 && !memcmp(method.s, "ceil", 4);
		if (!common && !ceil_ && !(method.len == 5 && !memcmp(method.s, "floor", 5)))
			rt_err(r, line, "method must be common, ceil or floor");
		if (!is_num(v))
			rt_err(r, line, "round: '%s' is not a number", tname(v));
		if (common)
			return v.type == TP_FLOAT ? tp_mk_float(py_round(v.u.f, prec)) : int_round(r, line, num_i(v), prec);
		/* math.ceil or floor of value * 10**precision (an int), over
		 * 10**precision: exact for an int value and a precision >= 0 */
		if (v.type != TP_FLOAT && prec >= 0)
			return tp_mk_float((double)num_i(v));
		char buf[400];
		if (prec > 308)
			rt_err(r, line, "int too large to convert to float");
		snprintf(buf, sizeof buf, "1e%lld", (long long)prec);
		double p = prec >= 0 ? strtod(buf, NULL) : pow(10, (double)prec), d = num_f(v) * p;
		if (!isfinite(d) || p == 0)
			rt_err(r, line, "round: %s", p == 0 ? "float division by zero" : "cannot convert float to integer");
		double c = ceil_ ? ceil(d) : floor(d);
		if (c == 0)
			c = 0; /* an int has no -0 */
		if (prec < 0)
			return tp_mk_float(c / p);
		snprintf(buf, sizeof buf, "%.0fe-%lld", c, (long long)prec); /* int / int, rounded once */
		return tp_mk_float(strtod(buf, NULL));
	}
	if (IS("reverse")) {
		args_done(r, line, a, name);
		if (v.type == TP_STR) {
			uint32_t n, *off = cp_offsets(r, v.u.s, &n);
			struct tp_sb o = sb_new(r);
			for (uint32_t i = n; i-- > 0;)
				tp_sb_sub(&r->a, &o, v.u.s, off[i], off[i + 1]);
			return tp_mk_str(tp_sb_done(&o));
		}
		struct tp_list *l = iter_list(r, line, v);
		struct tp_val out = tp_mk_list(&r->a, l->n, 0);
		for (uint32_t i = 0; i < l->n; i++)
			out.u.l->v[i] = l->v[l->n - 1 - i];
		return out;
	}
	if (IS("items")) {
		args_done(r, line, a, name);
		if (v.type == TP_UNDEF)
			return tp_mk_list(&r->a, 0, 0);
		if (v.type != TP_DICT && v.type != TP_NS)
			rt_err(r, line, "items: can only be applied to a mapping, not %s", tname(v));
		struct tp_func fn = { F_METHOD, "items", v };
		if (v.type == TP_NS)
			fn.self.type = TP_DICT;
		struct args none = { NULL, NULL, 0, 0 };
		return call_method(r, line, &fn, &none);
	}
	if (IS("dictsort")) {
		int ci = !truthy_arg(a, 0, "case_sensitive", 0);
		struct tp_val by = str_val(r, "key", tp_literal);
		arg(a, 1, "by", &by);
		int rev = truthy_arg(a, 2, "reverse", 0);
		args_done(r, line, a, name);
		if (v.type != TP_DICT)
			rt_err(r, line, "dictsort: expected a mapping, got %s", tname(v));
		int byv = by.type == TP_STR && by.u.s.len == 5 && !memcmp(by.u.s.s, "value", 5);
		struct tp_func fn = { F_METHOD, "items", v };
		struct args none = { NULL, NULL, 0, 0 };
		struct tp_val items = call_method(r, line, &fn, &none);
		struct tp_val *keys = tp_alloc(&r->a, (items.u.l->n + 1) * sizeof *keys);
		for (uint32_t i = 0; i < items.u.l->n; i++)
			keys[i] = sort_key(r, items.u.l->v[i].u.l->v[byv], ci);
		return sorted(r, line, items.u.l, keys, rev, 1);
	}
	if (IS("sort")) {
		int rev = truthy_arg(a, 0, "reverse", 0), ci = !truthy_arg(a, 1, "case_sensitive", 0);
		int has_attr = arg(a, 2, "attribute", &x);
		args_done(r, line, a, name);
		struct tp_list *l = iter_list(r, line, v);
		struct tp_val *keys = tp_alloc(&r->a, (l->n + 1) * sizeof *keys);
		for (uint32_t i = 0; i < l->n; i++)
			keys[i] = sort_key(r, has_attr ? attr_path(r, line, l->v[i], to_str(r, x)) : l->v[i], ci);
		return sorted(r, line, l, keys, rev, 0);
	}
	if (IS("unique")) {
		int ci = !truthy_arg(a, 0, "case_sensitive", 0);
		int has_attr = arg(a, 1, "attribute", &x);
		args_done(r, line, a, name);
		struct tp_list *l = iter_list(r, line, v);
		struct tp_val out = tp_mk_list(&r->a, 0, 0), seen = tp_mk_list(&r->a, 0, 0);
		uint32_t cap = 0, scap = 0;
		for (uint32_t i = 0; i < l->n; i++) {
			struct tp_val k = sort_key(r, has_attr ? attr_path(r, line, l->v[i], to_str(r, x)) : l->v[i], ci);
			if (k.type == TP_DICT || k.type == TP_NS || (k.type == TP_LIST && !k.u.l->tuple))
				rt_err(r, line, "unhashable type: '%s'", tname(k)); /* jinja2 keeps a set of them */
			int dup = 0;
			charge(r, line, seen.u.l->n);
			for (uint32_t j = 0; j < seen.u.l->n && !dup; j++)
				dup = tp_equal(seen.u.l->v[j], k);
			if (dup)
				continue;
			list_push(r, &seen, k, &scap);
			list_push(r, &out, l->v[i], &cap);
		}
		return out;
	}
	if (IS("map")) {
		/* map/select/reject iterate only a true value: none | map(...) is empty */
		struct tp_list *l = tp_truthy(v) ? iter_list(r, line, v) : tp_mk_list(&r->a, 0, 0).u.l;
		struct tp_val out = tp_mk_list(&r->a, l->n, 0);
		if (arg(a, -1, "attribute", &x)) {
			struct tp_val def = tp_mk_undef("default");
			int has_def = arg(a, -1, "default", &def);
			args_done(r, line, a, name);
			for (uint32_t i = 0; i < l->n; i++) {
				struct tp_val e = attr_path(r, line, l->v[i], to_str(r, x));
				out.u.l->v[i] = e.type == TP_UNDEF && has_def ? def : e;
			}
			return out;
		}
		if (!arg(a, 0, NULL, &x) || x.type != TP_STR)
			rt_err(r, line, "map: expected a filter name or attribute=");
		const char *fname = tp_strndup(&r->a, x.u.s.s, x.u.s.len);
		struct args rest = { a->v + 1, a->kw + 1, a->n - 1, 0 };
		for (uint32_t i = 0; i < l->n; i++) {
			rest.used = 0;
			out.u.l->v[i] = apply_filter(r, f, line, fname, l->v[i], &rest);
		}
		a->used = ~0u;
		return out;
	}
	if (IS("select") || IS("reject") || IS("selectattr") || IS("rejectattr")) {
		int attr = IS("selectattr") || IS("rejectattr"), want = name[0] == 's';
		struct tp_list *l = tp_truthy(v) ? iter_list(r, line, v) : tp_mk_list(&r->a, 0, 0).u.l;
		struct tp_val path, tname_;
		uint32_t from = 0;
		if (attr) {
			if (!arg(a, 0, NULL, &path))
				rt_err(r, line, "%s needs an attribute", name);
			from = 1;
		}
		int has_test = a->n > from && arg(a, (int)from, NULL, &tname_);
		if (has_test && tname_.type != TP_STR)
			rt_err(r, line, "%s: the test name must be a string", name);
		const char *test = has_test ? tp_strndup(&r->a, tname_.u.s.s, tname_.u.s.len) : NULL;
		struct args rest = { a->v + from + 1, a->kw + from + 1, a->n > from + 1 ? a->n - from - 1 : 0, 0 };
		struct tp_val out = tp_mk_list(&r->a, 0, 0);
		uint32_t cap = 0;
		for (uint32_t i = 0; i < l->n; i++) {
			struct tp_val e = attr ? attr_path(r, line, l->v[i], to_str(r, path)) : l->v[i];
			rest.used = 0;
			int ok = test ? run_test(r, line, test, e, &rest) : tp_truthy(e);
			step(r, line);
			if (ok == want)
				list_push(r, &out, l->v[i], &cap);
		}
		a->used = ~0u;
		return out;
	}
	if (IS("sum")) {
		struct tp_val start = tp_mk_int(0);
		int has_attr = arg(a, 0, "attribute", &x);
		arg(a, 1, "start", &start);
		args_done(r, line, a, name);
		struct tp_list *l = iter_list(r, line, v);
		struct tp_val acc = start;
		for (uint32_t i = 0; i < l->n; i++)
			acc = arith(r, line, OP_ADD, acc, has_attr ? attr_path(r, line, l->v[i], to_str(r, x)) : l->v[i]);
		return acc;
	}
	if (IS("min") || IS("max")) {
		int ci = !truthy_arg(a, 0, "case_sensitive", 0);
		int has_attr = arg(a, 1, "attribute", &x);
		args_done(r, line, a, name);
		struct tp_list *l = iter_list(r, line, v);
		if (!l->n)
			return tp_mk_undef(name);
		uint32_t best = 0;
		struct tp_val bk = sort_key(r, has_attr ? attr_path(r, line, l->v[0], to_str(r, x)) : l->v[0], ci);
		for (uint32_t i = 1; i < l->n; i++) {
			struct tp_val k = sort_key(r, has_attr ? attr_path(r, line, l->v[i], to_str(r, x)) : l->v[i], ci);
			int c = cmp_vals(r, line, k, bk);
			if (IS("min") ? c < 0 : c > 0) {
				best = i;
				bk = k;
			}
		}
		return l->v[best];
	}
	if (IS("indent")) {
		struct tp_val w = tp_mk_int(4);
		arg(a, 0, "width", &w);
		int first = truthy_arg(a, 1, "first", 0), blank = truthy_arg(a, 2, "blank", 0);
		args_done(r, line, a, name);
		struct tp_str ind;
		if (w.type == TP_STR)
			ind = w.u.s;
		else {
			int64_t n = int_arg(r, line, w, "width");
			if (n > 256)
				n = 256;
			char *sp = tp_alloc(&r->a, (size_t)(n > 0 ? n : 0) + 1);
			memset(sp, ' ', (size_t)(n > 0 ? n : 0));
			ind = tp_str_lit(&r->a, sp, (size_t)(n > 0 ? n : 0), tp_literal);
		}
		if (v.type != TP_STR)
			rt_err(r, line, "indent: unsupported operand type(s) for +=: '%s' and 'str'", tname(v));
		struct tp_str s = v.u.s;
		struct tp_sb o = sb_new(r);
		if (first)
			tp_sb_str(&r->a, &o, ind);
		uint32_t i = 0, ln = 0;
		while (i <= s.len) {
			const char *nl = memchr(s.s + i, '\n', s.len - i);
			uint32_t e = nl ? (uint32_t)(nl - s.s) : s.len;
			/* Jinja indents (s + "\n").splitlines(): the pieces of s.split("\n") */
			if (ln > 0) {
				tp_sb_sub(&r->a, &o, s, i - 1, i);
				if (blank || e > i)
					tp_sb_str(&r->a, &o, ind);
			}
			tp_sb_sub(&r->a, &o, s, i, e);
			if (!nl)
				break;
			i = e + 1;
			ln++;
			step(r, line);
		}
		return tp_mk_str(tp_sb_done(&o));
	}
	if (IS("wordcount")) {
		args_done(r, line, a, name);
		struct tp_str s = to_str(r, v);
		int64_t n = 0;
		int in = 0;
		uint32_t i = 0;
		while (i < s.len) {
			utf8proc_int32_t c = (utf8proc_int32_t)u8_dec(s.s, s.len, &i);
			utf8proc_category_t k = utf8proc_category(c);
			int w = c == '_' || (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) ||
				(k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO) || k == UTF8PROC_CATEGORY_MN ||
				k == UTF8PROC_CATEGORY_MC;
			if (w && !in)
				n++;
			in = w;
		}
		return tp_mk_int(n);
	}
	if (IS("escape") || IS("e") || IS("forceescape")) {
		args_done(r, line, a, name);
		struct tp_val m = html_escape(r, to_str(r, v));
		m.markup = 1;
		return m;
	}
	if (IS("attr")) {
		if (!arg(a, 0, "name", &x) || x.type != TP_STR)
			rt_err(r, line, "attr needs a name");
		args_done(r, line, a, name);
		if (v.type == TP_DICT || v.type == TP_NS)
			return tp_mk_undef("attr"); /* attr() does getattr only, never the item */
		return get_attr(r, line, v, tp_strndup(&r->a, x.u.s.s, x.u.s.len), 0);
	}
	if (IS("batch")) {
		if (!arg(a, 0, "linecount", &x))
			rt_err(r, line, "batch needs a size");
		int64_t n = int_arg(r, line, x, "linecount");
		struct tp_val fill;
		int has_fill = arg(a, 1, "fill_with", &fill) && fill.type != TP_NONE;
		args_done(r, line, a, name);
		if (n <= 0)
			rt_err(r, line, "batch: size must be positive");
		struct tp_list *l = iter_list(r, line, v);
		uint32_t nb = (uint32_t)((l->n + n - 1) / n);
		struct tp_val out = tp_mk_list(&r->a, nb, 0);
		for (uint32_t b = 0; b < nb; b++) {
			uint32_t lo = (uint32_t)(b * n), hi = lo + (uint32_t)n;
			if (hi > l->n && !has_fill)
				hi = l->n;
			struct tp_val t = tp_mk_list(&r->a, hi - lo, 0);
			for (uint32_t i = lo; i < hi; i++)
				t.u.l->v[i - lo] = i < l->n ? l->v[i] : fill;
			out.u.l->v[b] = t;
		}
		return out;
	}
	if (IS("truncate")) {
		int64_t len = 255, leeway = 5;
		struct tp_val end = str_val(r, "...", tp_literal);
		if (arg(a, 0, "length", &x))
			len = int_arg(r, line, x, "length");
		int kill = truthy_arg(a, 1, "killwords", 0);
		arg(a, 2, "end", &end);
		if (arg(a, 3, "leeway", &x) && x.type != TP_NONE)
			leeway = int_arg(r, line, x, "leeway");
		args_done(r, line, a, name);
		struct tp_str e = to_str(r, end);
		uint32_t en = cp_len(e);
		if (len < (int64_t)en)
			rt_err(r, line, "expected length >= %u, got %lld", en, (long long)len);
		if (leeway < 0)
			rt_err(r, line, "expected leeway >= 0");
		if (v.type != TP_STR) { /* jinja2 takes len() of the value itself and gives it back when short */
			int64_t vn = -1;
			if (v.type == TP_UNDEF)
				vn = 0;
			else if (v.type == TP_LIST && v.u.l->lazy != LAZY_GEN)
				vn = v.u.l->n;
			else if (v.type == TP_DICT || v.type == TP_NS)
				vn = v.u.d->n;
			if (vn < 0 || vn > len + leeway)
				rt_err(r, line, "truncate of a %s is not supported", tname(v));
			return v;
		}
		struct tp_str s = v.u.s;
		uint32_t n, *off = cp_offsets(r, s, &n);
		if ((int64_t)n <= len + leeway)
			return tp_mk_str(s);
		uint32_t cut = (uint32_t)(len - en);
		struct tp_sb o = sb_new(r);
		if (kill)
			tp_sb_sub(&r->a, &o, s, 0, off[cut]);
		else {
			/* drop the last (partial) word: rsplit(" ", 1)[0] */
			uint32_t hi = off[cut], sp = hi;
			while (sp > 0 && s.s[sp - 1] != ' ')
				sp--;
			tp_sb_sub(&r->a, &o, s, 0, sp > 0 ? sp - 1 : hi);
		}
		tp_sb_str(&r->a, &o, e);
		return tp_mk_str(tp_sb_done(&o));
	}
	if (IS("format")) {
		for (uint32_t i = 0; i < a->n; i++)
			if (a->kw[i])
				rt_err(r, line, "format: keyword arguments are not supported");
		a->used = ~0u;
		return py_percent(r, line, to_str(r, v), a->v, a->n, 0, v.type == TP_STR && v.markup);
	}
	if (IS("center")) {
		int64_t w = 80;
		if (arg(a, 0, "width", &x))
			w = int_arg(r, line, x, "width");
		args_done(r, line, a, name);
		return str_pad(r, line, to_str(r, v), w, tp_str_lit(&r->a, " ", 1, tp_literal), 'c');
	}
	if (IS("groupby"))
		return filter_groupby(r, line, v, a);
	if (IS("slice"))
		return filter_slice(r, line, v, a);
#undef IS
	(void)f;
	rt_err(r, line, "unknown filter '%s'", name);
}

/* ---- expressions ---- */

/* Watching: the uses of a value holding content that a replay of the
 * rendering repeats (the rest make it unreplayable). Type tests. */
static int type_test(const char *name)
{
	static const char *const names[] = { "defined", "undefined", "none",	"string", "mapping",
					     "iterable", "sequence", "number",	"integer", "float",
					     "boolean", "true",	     "false",	"callable" };
	for (size_t i = 0; i < sizeof names / sizeof *names; i++)
		if (!strcmp(name, names[i]))
			return 1;
	return 0;
}

/* Whether the key s[0..n) is "content". */
static int is_content(const char *s, size_t n) { return n == 7 && !memcmp(s, "content", 7); }

static int args_held(const struct args *a)
{
	for (uint32_t i = 0; i < a->n; i++)
		if (held(a->v[i], 0))
			return 1;
	return 0;
}

/* Filters: trim of a content whole, the length of the messages or a
 * message, those that hand a value on as it is, and selectattr or
 * rejectattr by an attribute other than content. */
static int filter_replays(const struct rt *r, const char *name, struct tp_val v, const struct args *a)
{
	if (!strcmp(name, "default") || !strcmp(name, "d"))
		return 1;
	if (args_held(a))
		return 0;
	if (!strcmp(name, "selectattr") || !strcmp(name, "rejectattr"))
		return v.type == TP_LIST && a->n >= 1 && !a->kw[0] && a->v[0].type == TP_STR &&
		       !memchr(a->v[0].u.s.s, '.', a->v[0].u.s.len) && !is_content(a->v[0].u.s.s, a->v[0].u.s.len);
	if (!strcmp(name, "trim") || !strcmp(name, "tojson"))
		return !a->n && v.type == TP_STR && whole_content(r, v.u.s);
	if (!strcmp(name, "length") || !strcmp(name, "count"))
		return v.type == TP_LIST || v.type == TP_DICT;
	if (!strcmp(name, "first") || !strcmp(name, "last") || !strcmp(name, "list"))
		return v.type == TP_LIST;
	return !strcmp(name, "string") && v.type == TP_STR;
}

/* Calls: macros (their arguments are names bound), a message's get(), a
 * content's strip() whole. */
static int call_replays(const struct rt *r, struct tp_val fv, const struct args *a)
{
	if (fv.type == TP_MACRO)
		return 1;
	if (fv.type != TP_FUNC || fv.u.fn->id != F_METHOD || args_held(a))
		return 0;
	struct tp_val self = fv.u.fn->self;
	if (self.type == TP_DICT && !strcmp(fv.u.fn->name, "get"))
		return 1;
	return self.type == TP_STR && !strcmp(fv.u.fn->name, "strip") && !a->n && whole_content(r, self.u.s);
}

static struct tp_val eval_filter(struct rt *r, struct frame *f, const struct tp_node *n, struct tp_val v)
{
	if (r->tk && v.type == TP_LIST && track_find(r->tk, v.u.l) >= 0)
		r->tk->taint = 1; /* messages | length */
	struct args a;
	eval_args(r, f, n, 0, &a);
	struct tp_val x = apply_filter(r, f, n->line, n->name, v, &a);
	if (r->watch)
		r->allow = filter_replays(r, n->name, v, &a);
	return x;
}

/* Two messages equal but for their contents: the pair is kept in the
 * watch (see struct tmpl_watch); 0 when it cannot be. */
static int watch_same(struct rt *r, struct tp_val x, struct tp_val y)
{
	if (x.type != TP_STR || y.type != TP_STR || !whole_content(r, x.u.s) || !whole_content(r, y.u.s))
		return 0;
	int32_t a = x.u.s.runs[0].o.msg, b = y.u.s.runs[0].o.msg;
	if (a == b)
		return 0;
	struct tmpl_watch *w = r->watch;
	struct tmpl_same s = {a < b ? a : b, a < b ? b : a, tp_equal(x, y)};
	for (unsigned k = 0; k < w->nsame; k++)
		if (w->same[k].a == s.a && w->same[k].b == s.b)
			return 1;
	if (w->nsame == TMPL_WATCH_SAMES)
		return 0;
	w->same[w->nsame++] = s;
	return 1;
}

/* Comparisons: a key asked of a message; two messages equal or not
 * whatever their contents say (the same one, or differing elsewhere), or
 * as their contents' sameness says (kept for the replay to check). */
static int cmp_replays(struct rt *r, int op, struct tp_val left, struct tp_val right)
{
	if (op == C_IN || op == C_NOTIN)
		return !held(left, 0) && right.type == TP_DICT;
	if ((op != C_EQ && op != C_NE) || left.type != TP_DICT || right.type != TP_DICT)
		return 0;
	const struct tp_dict *a = left.u.d, *b = right.u.d;
	if (a == b || a->n != b->n)
		return 1;
	const struct tp_val *ac = NULL, *bc = NULL;
	for (uint32_t i = 0; i < a->n; i++) {
		const struct tp_val *bv = tp_dict_get(b, a->k[i]);
		if (!bv)
			return 1;
		if (a->k[i].type == TP_STR && is_content(a->k[i].u.s.s, a->k[i].u.s.len)) {
			ac = &a->v[i], bc = bv;
			continue;
		}
		if (held(a->v[i], 0) || held(*bv, 0))
			return 0;
		if (!tp_equal(a->v[i], *bv))
			return 1;
	}
	return ac && watch_same(r, *ac, *bc); /* equal but for the contents: they decide */
}

static struct tp_val eval_kind(struct rt *r, struct frame *f, const struct tp_node *n)
{
	step(r, n->line);
	switch (n->kind) {
	case N_LIT: return n->lit;
	case N_NAME: return lookup(r, f, n->name);
	case N_LIST:
	case N_TUPLE: {
		struct tp_val l = tp_mk_list(&r->a, n->nargs, n->kind == N_TUPLE);
		for (uint32_t i = 0; i < n->nargs; i++)
			l.u.l->v[i] = eval(r, f, n->args[i]);
		return l;
	}
	case N_DICT: {
		struct tp_val d = tp_mk_dict(&r->a);
		for (uint32_t i = 0; i + 1 < n->nargs; i += 2) {
			struct tp_val k = eval(r, f, n->args[i]);
			if (k.type == TP_LIST && !k.u.l->tuple)
				rt_err(r, n->line, "unhashable type: 'list'");
			if (k.type == TP_DICT)
				rt_err(r, n->line, "unhashable type: 'dict'");
			tp_dict_set(&r->a, d.u.d, k, eval(r, f, n->args[i + 1]));
		}
		return d;
	}
	case N_ATTR: return get_attr(r, n->line, eval(r, f, n->a), n->name, n->op);
	case N_SUB: {
		struct tp_val v = eval(r, f, n->a);
		struct tp_val k = eval(r, f, n->b);
		struct tp_val x = get_item(r, n->line, v, k);
		if (r->watch)
			r->allow = (v.type == TP_LIST || v.type == TP_DICT) && !held(k, 0);
		return x;
	}
	case N_SLICE: {
		struct tp_val v = eval(r, f, n->a);
		struct tp_val lo = n->b ? eval(r, f, n->b) : tp_mk_none(), hi = n->c ? eval(r, f, n->c) : tp_mk_none();
		struct tp_val st = n->args[0] ? eval(r, f, n->args[0]) : tp_mk_none();
		if (v.type == TP_LIST && !indexed(v.u.l))
			rt_err(r, n->line, "an iterator (map, select, items() ...) is not subscriptable");
		struct tp_val x = do_slice(r, n->line, v, lo, hi, st);
		x.markup = v.type == TP_STR && v.markup;
		if (r->watch)
			r->allow = v.type == TP_LIST && !held(lo, 0) && !held(hi, 0) && !held(st, 0);
		return x;
	}
	case N_CALL: {
		struct tp_val fv = eval(r, f, n->a);
		struct args a;
		eval_args(r, f, n, 0, &a);
		struct tp_val v = call_value(r, f, n->line, fv, &a, tp_mk_undef("caller"));
		args_done(r, n->line, &a, "call");
		if (r->watch)
			r->allow = call_replays(r, fv, &a);
		return v;
	}
	case N_FILTER: return eval_filter(r, f, n, eval(r, f, n->a));
	case N_TEST: {
		struct tp_val v = eval(r, f, n->a);
		struct args a;
		eval_args(r, f, n, 0, &a);
		int ok = run_test(r, n->line, n->name, v, &a);
		if (r->watch)
			r->allow = type_test(n->name) && !args_held(&a);
		return tp_mk_bool(n->neg ? !ok : ok);
	}
	case N_NEG:
	case N_POS: {
		struct tp_val v = eval(r, f, n->a);
		if (!is_num(v)) {
			check_defined(r, n->line, v);
			rt_err(r, n->line, "bad operand type for unary %c: '%s'", n->kind == N_NEG ? '-' : '+', tname(v));
		}
		if (n->kind == N_POS)
			return v.type == TP_BOOL ? tp_mk_int(v.u.b) : v;
		if (v.type == TP_FLOAT)
			return tp_mk_float(-v.u.f);
		if (num_i(v) == INT64_MIN)
			rt_err(r, n->line, "integer too large");
		return tp_mk_int(-num_i(v));
	}
	case N_NOT: return tp_mk_bool(!tp_truthy(eval(r, f, n->a)));
	case N_AND: {
		struct tp_val a = eval(r, f, n->a);
		return tp_truthy(a) ? eval(r, f, n->b) : a;
	}
	case N_OR: {
		struct tp_val a = eval(r, f, n->a);
		return tp_truthy(a) ? a : eval(r, f, n->b);
	}
	case N_BIN: {
		struct tp_val a = eval(r, f, n->a), b = eval(r, f, n->b);
		if (r->watch)
			r->allow = n->op == OP_ADD && a.type == b.type && (a.type == TP_STR || a.type == TP_LIST);
		return arith(r, n->line, n->op, a, b);
	}
	case N_CONCAT: {
		struct tp_val a = eval(r, f, n->a), b = eval(r, f, n->b);
		struct tp_val x = concat_str(r, to_str(r, a), to_str(r, b));
		if (r->watch)
			r->allow = (a.type == TP_STR || !held(a, 0)) && (b.type == TP_STR || !held(b, 0));
		return x;
	}
	case N_CMP: {
		struct tp_val left = eval(r, f, n->args[0]);
		int keys = 1; /* watching: content held only by a message asked for a key */
		for (uint32_t i = 1; i < n->nargs; i++) {
			struct tp_val right = eval(r, f, n->args[i]);
			int ok;
			if (r->watch && (held(left, 0) || held(right, 0)) && !cmp_replays(r, n->cmps[i - 1], left, right))
				keys = 0;
			r->allow = keys;
			switch (n->cmps[i - 1]) {
			case C_EQ:
			case C_NE:
				if (left.type == TP_LIST && right.type == TP_LIST)
					charge(r, n->line, left.u.l->n);
				if (left.type == TP_STR && right.type == TP_STR)
					charge(r, n->line, left.u.s.len / 64);
				ok = tp_equal(left, right) == (n->cmps[i - 1] == C_EQ);
				break;
			case C_LT: ok = cmp_vals(r, n->line, left, right) < 0; break;
			case C_LE: ok = cmp_vals(r, n->line, left, right) <= 0; break;
			case C_GT: ok = cmp_vals(r, n->line, left, right) > 0; break;
			case C_GE: ok = cmp_vals(r, n->line, left, right) >= 0; break;
			case C_IN: ok = contains(r, n->line, right, left); break;
			default: ok = !contains(r, n->line, right, left); break;
			}
			if (!ok)
				return tp_mk_bool(0);
			left = right;
		}
		return tp_mk_bool(1);
	}
	case N_COND:
		if (tp_truthy(eval(r, f, n->b)))
			return eval(r, f, n->a);
		return n->c ? eval(r, f, n->c) : tp_mk_undef("else");
	}
	rt_err(r, n->line, "cannot evaluate this expression");
}

static const char *const node_names[] = {
	[N_LIT] = "a literal", [N_NAME] = "a name",	  [N_LIST] = "a list",	      [N_TUPLE] = "a tuple",
	[N_DICT] = "a dict",   [N_ATTR] = "an attribute", [N_SUB] = "a subscript",    [N_SLICE] = "a slice",
	[N_CALL] = "a call",   [N_FILTER] = "a filter",	  [N_TEST] = "a test",	      [N_NEG] = "unary -",
	[N_POS] = "unary +",   [N_NOT] = "not",		  [N_AND] = "and",	      [N_OR] = "or",
	[N_BIN] = "arithmetic", [N_CMP] = "a comparison", [N_COND] = "if-else",	      [N_CONCAT] = "~",
};

/* eval_kind, watched: a node whose operands held content must be one of
 * the uses eval_kind allowed, or of those that take any operand: an
 * attribute (a message's field; a method is checked when called), and
 * truth (the shape fixes whether a content is empty or white space only),
 * which picks one of its operands or a boolean. Its value tells the node
 * above. */
static struct tp_val eval_watched(struct rt *r, struct frame *f, const struct tp_node *n)
{
	int outer = r->saw;
	r->saw = r->allow = 0;
	struct tp_val v = eval_kind(r, f, n);
	int any = n->kind == N_ATTR || n->kind == N_NOT || n->kind == N_AND || n->kind == N_OR || n->kind == N_COND;
	if (r->saw && !r->allow && !any)
		unreplayable(r, n->line, node_names[n->kind]);
	r->saw = outer | held(v, 0);
	r->allow = 0;
	return v;
}

/* ---- statements ---- */

enum { FLOW_NEXT, FLOW_BREAK, FLOW_CONTINUE };

static void emit(struct rt *r, struct tp_val v)
{
	if (r->watch && v.type != TP_STR && held(v, 0))
		unreplayable(r, 0, "printing a message or a list of them");
	printable(r, v);
	if (v.type == TP_STR)
		tp_sb_str(&r->a, r->out, v.u.s);
	else
		tp_str_of(&r->a, r->out, v);
}

static void assign(struct rt *r, struct frame *f, int line, const struct tp_node *t, struct tp_val v)
{
	if (t->kind == N_NAME) {
		frame_set(r, f, t->name, v);
		return;
	}
	if (t->kind == N_TUPLE) {
		if (r->watch && held(v, 0))
			unreplayable(r, line, "unpacking content");
		struct tp_list *l = iter_list(r, line, v);
		if (l->n != t->nargs)
			rt_err(r, line, "cannot unpack %u values into %u names", l->n, t->nargs);
		for (uint32_t i = 0; i < t->nargs; i++)
			assign(r, f, line, t->args[i], l->v[i]);
		return;
	}
	if (t->kind == N_ATTR) {
		struct tp_val ns = eval(r, f, t->a);
		if (ns.type != TP_NS)
			rt_err(r, line, "cannot assign attribute on non-namespace object");
		if (r->watch && held(v, 0))
			unreplayable(r, line, "a namespace attribute set to content");
		taint(r); /* state one turn leaves to the next */
		tp_dict_set(&r->a, ns.u.d, str_val(r, t->name, tp_literal), v);
		return;
	}
	rt_err(r, line, "cannot assign to this");
}

static struct tp_val capture(struct rt *r, struct frame *f, const struct tp_stmt *body)
{
	struct tp_sb *save = r->out, b = sb_new(r);
	r->out = &b;
	exec_body(r, f, body);
	r->out = save;
	return tp_mk_str(tp_sb_done(&b));
}

/* The placeholder N_LIT at the bottom of a filter chain gets the captured text. */
static struct tp_val filter_chain(struct rt *r, struct frame *f, const struct tp_node *n, struct tp_val v)
{
	if (n->kind != N_FILTER && n->kind != N_TEST)
		return v;
	struct tp_val in = filter_chain(r, f, n->a, v);
	if (r->watch && held(in, 0))
		unreplayable(r, n->line, "a block's filter");
	if (n->kind == N_TEST) {
		struct args a;
		eval_args(r, f, n, 0, &a);
		int ok = run_test(r, n->line, n->name, in, &a);
		return tp_mk_bool(n->neg ? !ok : ok);
	}
	return eval_filter(r, f, n, in);
}

/* Where a statement printing into the output ended (see tmpl_output.cuts). */
static void cuts_reserve(struct rt *r, size_t n)
{
	if (r->ncuts + n <= r->ccap)
		return;
	size_t cap = r->ccap ? r->ccap * 2 : 64;
	while (cap < r->ncuts + n)
		cap *= 2;
	r->cuts = tp_realloc(&r->a, r->cuts, r->ncuts * sizeof *r->cuts, cap * sizeof *r->cuts);
	r->ccap = cap;
}

static void cut_at(struct rt *r, uint32_t at)
{
	if (r->tk && r->tk->post && at == r->tk->post_start)
		r->tk->post_cut0 = 1;
	if (r->ncuts && r->cuts[r->ncuts - 1] == at)
		return;
	cuts_reserve(r, 1);
	r->cuts[r->ncuts++] = at;
}

static void cut(struct rt *r)
{
	if (r->out == r->main)
		cut_at(r, r->out->len);
}

static void gen_add(struct rt *r, uint32_t start, uint32_t end)
{
	if (r->ngen == r->gcap) {
		size_t cap = r->gcap ? r->gcap * 2 : 8;
		r->gen = tp_realloc(&r->a, r->gen, r->ngen * sizeof *r->gen, cap * sizeof *r->gen);
		r->gcap = cap;
	}
	r->gen[r->ngen][0] = start;
	r->gen[r->ngen][1] = end;
	r->ngen++;
}

/* Whether v holds something a later statement may change: a namespace, a
 * cycler or joiner (too deep to tell counts as yes). */
static int holds_mutable(struct tp_val v, int depth)
{
	if (depth > 64 || v.type == TP_NS || (v.type == TP_FUNC && v.u.fn->obj))
		return 1;
	uint32_t n = v.type == TP_LIST ? v.u.l->n : v.type == TP_DICT ? v.u.d->n : 0;
	for (uint32_t i = 0; i < n; i++)
		if (holds_mutable(v.type == TP_LIST ? v.u.l->v[i] : v.u.d->v[i], depth + 1))
			return 1;
	return 0;
}

/* v as it is now: what holds namespaces and cycler/joiner objects copied
 * (later statements change them), the rest (the messages' tracked lists
 * among it) kept as it is. Beyond depth 64 nothing is copied, and same_val
 * calls nothing that deep the same. */
static struct tp_val snap_val(struct rt *r, struct tp_val v, int depth)
{
	if (depth > 64 || !holds_mutable(v, depth) || (v.type == TP_LIST && track_find(r->tk, v.u.l) >= 0))
		return v;
	if (v.type == TP_LIST) {
		struct tp_val l = tp_mk_list(&r->a, v.u.l->n, v.u.l->tuple);
		l.o = v.o;
		for (uint32_t i = 0; i < v.u.l->n; i++)
			l.u.l->v[i] = snap_val(r, v.u.l->v[i], depth + 1);
		return l;
	}
	if (v.type == TP_DICT || v.type == TP_NS) {
		struct tp_val d = v;
		d.u.d = tp_alloc(&r->a, sizeof *d.u.d);
		for (uint32_t i = 0; i < v.u.d->n; i++)
			tp_dict_push(&r->a, d.u.d, v.u.d->k[i], snap_val(r, v.u.d->v[i], depth + 1));
		return d;
	}
	if (v.type == TP_FUNC && v.u.fn->obj) {
		struct tp_val f = v;
		f.u.fn = tp_alloc(&r->a, sizeof *f.u.fn);
		*f.u.fn = *v.u.fn;
		return f;
	}
	return v;
}

/* Whether a (the prefix's rendering's) and b (the whole one's, as
 * recorded) are the same to every turn that reads them: equal values of
 * equal origins, or the messages from the same index on. */
static int same_val(const struct track *k, const struct tmpl_trace *u, struct tp_val a, struct tp_val b, int depth)
{
	if (a.type != b.type || !tp_org_eq(a.o, b.o) || depth > 64)
		return 0;
	switch (a.type) {
	case TP_UNDEF: return !a.u.undef == !b.u.undef && (!a.u.undef || !strcmp(a.u.undef, b.u.undef));
	case TP_NONE: return 1;
	case TP_BOOL: return a.u.b == b.u.b;
	case TP_INT: return a.u.i == b.u.i;
	case TP_FLOAT: return !memcmp(&a.u.f, &b.u.f, sizeof a.u.f);
	case TP_STR:
		if (a.u.s.len != b.u.s.len || a.u.s.nruns != b.u.s.nruns)
			return 0;
		if (a.u.s.s == b.u.s.s && a.u.s.runs == b.u.s.runs) /* the context's own string */
			return 1;
		if (memcmp(a.u.s.s, b.u.s.s, a.u.s.len))
			return 0;
		for (uint32_t i = 0; i < a.u.s.nruns; i++)
			if (a.u.s.runs[i].end != b.u.s.runs[i].end || !tp_org_eq(a.u.s.runs[i].o, b.u.s.runs[i].o))
				return 0;
		return 1;
	case TP_LIST: {
		int ka = track_find(k, a.u.l), kb = list_index(u->lists, u->nlists, b.u.l);
		if (ka >= 0 || kb >= 0)
			return ka >= 0 && kb >= 0 && k->offs[ka] == u->offs[kb];
		if (a.u.l == b.u.l) /* the context's own list (immutable), or one nobody changes */
			return !holds_mutable(a, depth);
		if (a.u.l->n != b.u.l->n || a.u.l->tuple != b.u.l->tuple)
			return 0;
		for (uint32_t i = 0; i < a.u.l->n; i++)
			if (!same_val(k, u, a.u.l->v[i], b.u.l->v[i], depth + 1))
				return 0;
		return 1;
	}
	case TP_DICT:
	case TP_NS:
		if (a.type == TP_DICT && a.u.d == b.u.d && !holds_mutable(a, depth))
			return 1;
		if (a.u.d->n != b.u.d->n)
			return 0;
		for (uint32_t i = 0; i < a.u.d->n; i++)
			if (!same_val(k, u, a.u.d->k[i], b.u.d->k[i], depth + 1) ||
			    !same_val(k, u, a.u.d->v[i], b.u.d->v[i], depth + 1))
				return 0;
		return 1;
	case TP_MACRO: /* defined by the same statement; its closure is the frame compared here */
		return a.u.m->def == b.u.m->def && a.u.m->caller.type == TP_UNDEF && b.u.m->caller.type == TP_UNDEF;
	case TP_FUNC: {
		const struct tp_func *x = a.u.fn, *y = b.u.fn;
		if (x->id != y->id || strcmp(x->name, y->name) || x->obj != y->obj || x->used != y->used ||
		    x->pos != y->pos || !same_val(k, u, x->self, y->self, depth + 1) || !x->items != !y->items)
			return 0;
		if (x->items) {
			if (x->items->n != y->items->n)
				return 0;
			for (uint32_t i = 0; i < x->items->n; i++)
				if (!same_val(k, u, x->items->v[i], y->items->v[i], depth + 1))
					return 0;
		}
		return 1;
	}
	default: return 0; /* a loop object: never at the top */
	}
}

/* Whether v may stand in a prefix's rendering that starts at the turns' loop
 * (resume) for what the statements before the loop would make there: no
 * namespace, cycler or joiner (each rendering needs its own, and two names
 * may share one), no macro (its closure is the whole rendering's frame),
 * no function or loop object; the messages' tracked lists are made anew. */
static int resumable_val(const struct track *k, struct tp_val v, int depth)
{
	if (depth > 64 || v.type == TP_NS || v.type == TP_MACRO || v.type == TP_FUNC || v.type == TP_LOOP)
		return 0;
	if (v.type == TP_LIST && depth == 0 && track_find(k, v.u.l) >= 0)
		return 1;
	uint32_t n = v.type == TP_LIST ? v.u.l->n : v.type == TP_DICT ? v.u.d->n : 0;
	for (uint32_t i = 0; i < n; i++)
		if (!resumable_val(k, v.type == TP_LIST ? v.u.l->v[i] : v.u.d->v[i], depth + 1))
			return 0;
	return 1;
}

/* Copies the whole rendering's bytes [from, to) to the output, with their
 * runs (unless the output has none), and its cuts [c0, c1) and generation
 * ranges [g0, g1). */
static void copy_full(struct rt *r, uint32_t from, uint32_t to, uint32_t c0, uint32_t c1, uint32_t g0, uint32_t g1)
{
	const struct tmpl_output *full = r->tk->full;
	size_t lo = 0, hi_run = 0; /* full's runs of the bytes copied, when the output has runs */
	if (!r->text_only) {
		size_t hi = full->nruns; /* the first run ending past from */
		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;
			if (full->runs[mid].end <= from)
				lo = mid + 1;
			else
				hi = mid;
		}
		hi_run = lo;
		while (hi_run < full->nruns && full->runs[hi_run].start < to)
			hi_run++;
	}
	/* the bytes at once, then their runs */
	struct tp_sb *o = r->out;
	tp_sb_reserve(&r->a, o, to - from, hi_run - lo);
	if (to > from) /* turns may print nothing */
		memcpy(o->s + o->len, full->text + from, to - from);
	if (r->text_only)
		o->len += to - from;
	uint32_t base = o->len - from;
	for (size_t i = lo; i < hi_run; i++) {
		const struct tmpl_run *ru = &full->runs[i];
		o->len = base + (ru->end < to ? ru->end : to);
		struct tp_org org = { ru->msg, (uint8_t)ru->origin, ru->var };
		if (i == lo) { /* it may go on the rendering's last run; full's runs after it differ from their neighbours */
			tp_sb_org(&r->a, o, org);
		} else {
			o->runs[o->nruns].end = o->len;
			o->runs[o->nruns++].o = org;
		}
	}
	if (c0 < c1 && r->ncuts && r->cuts[r->ncuts - 1] == full->cuts[c0])
		c0++;
	cuts_reserve(r, c1 - c0);
	if (c1 > c0)
		memcpy(r->cuts + r->ncuts, full->cuts + c0, (c1 - c0) * sizeof *r->cuts);
	r->ncuts += c1 - c0;
	for (uint32_t i = g0; i < g1; i++)
		gen_add(r, full->gen[i][0], full->gen[i][1]);
}

/* Whether a rendering of the first nmsg messages may start at the turns'
 * loop: what comes before it read nothing a prefix sees differently, no
 * message past nmsg, and left values a prefix can start from. */
static int starts_at_loop(const struct tmpl_trace *u, size_t nmsg)
{
	return u->resumable && u->pre_max < (int64_t)nmsg;
}

/* How many of the first n turns, from the loop's first, a rendering of the
 * first nmsg messages may copy: those that read nothing it sees differently. */
static uint32_t turns_copyable(const struct tmpl_trace *u, uint32_t n, size_t nmsg)
{
	uint32_t m = 0;
	while (m < n && m < u->n && u->turn[m].clean && u->turn[m].max < (int64_t)nmsg)
		m++;
	return m;
}

/* The turns' loop starts over items in frame f: records where, or copies
 * the turns the whole rendering's trace allows and returns how many. */
static uint32_t turns_start(struct rt *r, struct frame *f, const struct tp_loop *lp)
{
	struct track *k = r->tk;
	k->loop = lp;
	int li = track_find(k, lp->items);
	if (li < 0 || r->out != r->main) { /* iterating something else: not the messages */
		k->bad = 1;
		return 0;
	}
	k->off = k->offs[li];
	if (k->record) {
		k->start = r->out->len, k->ncuts = (uint32_t)r->ncuts, k->ngen = (uint32_t)r->ngen;
		k->nvars = f->n;
		k->names = tp_alloc(&r->a, (f->n + 1) * sizeof *k->names);
		k->vals = tp_alloc(&r->a, (f->n + 1) * sizeof *k->vals);
		/* what came before read nothing a prefix sees differently but
		 * messages up to pre_max, and left values a prefix can start from */
		k->resumable = !k->taint && f->parent == r->root;
		k->pre_max = k->max;
		for (uint32_t i = 0; i < f->n; i++) {
			k->names[i] = f->names[i], k->vals[i] = snap_val(r, f->vals[i], 0);
			k->resumable &= resumable_val(k, f->vals[i], 0);
		}
		return 0;
	}
	struct tmpl_trace *u = k->use;
	if (u->off != k->off || u->start != r->out->len || u->ncuts != r->ncuts || u->ngen != r->ngen ||
	    f->n != u->nvars)
		return 0;
	/* the loop starts with the same variables (the root's differ only in what turns are checked for) */
	for (uint32_t i = 0; i < f->n; i++)
		if (!same_name(f->names[i], u->names[i]) || !same_val(k, u, f->vals[i], u->vals[i], 0))
			return 0;
	uint32_t m = turns_copyable(u, lp->items->n, k->nmsg);
	if (!m)
		return 0;
	copy_full(r, u->start, u->turn[m - 1].end, u->ncuts, u->turn[m - 1].ncuts, u->ngen, u->turn[m - 1].ngen);
	u->copied += m;
	return m;
}

/* Runs the turns' loop and what follows it, when s (the statements of a
 * block) holds it, directly or in an if's branch: 1, else 0. */
static int run_from_turns(struct rt *r, struct frame *f, const struct tp_stmt *s)
{
	for (; s; s = s->next) {
		if (s == r->t->turns) {
			exec_for(r, f, s, NULL, 1);
			struct track *k = r->tk; /* what follows the loop: see struct tail */
			k->post = 1, k->post_cut0 = 0, k->taint = 0, k->max = -1;
			k->post_start = r->out->len, k->post_ncuts = (uint32_t)r->ncuts, k->post_ngen = (uint32_t)r->ngen;
		} else if (s->kind != S_IF || (!run_from_turns(r, f, s->body) && !run_from_turns(r, f, s->orelse)))
			continue;
		exec_body(r, f, s->next); /* no loop encloses it: it flows on */
		return 1;
	}
	return 0;
}

/* Keeps what followed the loop as the tail for add_generation_prompt g,
 * when struct tail's conditions hold in this rendering of nmsg messages
 * (a message it read must be one it has: past them it read nothing). */
static void tail_keep(struct rt *r, int g, uint32_t nmsg)
{
	struct track *k = r->tk;
	struct tail *tl = &k->use->tail[g];
	/* a loop without turns ran its else branch, which a tail's prefixes do not */
	if (tl->ok || !k->loop || !k->loop->items->n || k->taint || k->bad || !k->post || !r->text_only ||
	    k->max >= (int64_t)nmsg)
		return;
	uint32_t len = r->out->len - k->post_start, nc = (uint32_t)r->ncuts - k->post_ncuts,
		 ng = (uint32_t)r->ngen - k->post_ngen;
	size_t tsize = ((size_t)len + 8) & ~(size_t)7;
	char *block = malloc(tsize + ((size_t)nc + 1) * sizeof *tl->cuts + ((size_t)ng + 1) * sizeof *tl->gen);
	if (!block)
		return; /* no tail: the next prefixes run as this one did */
	if (len) /* an empty output may have no bytes at all */
		memcpy(block, r->out->s + k->post_start, len);
	tl->text = block, tl->len = len;
	tl->cuts = (uint32_t *)(void *)(block + tsize);
	tl->ncuts = 0;
	for (uint32_t i = 0; i < nc; i++) /* one where it begins is cut0's */
		if (r->cuts[k->post_ncuts + i] != k->post_start)
			tl->cuts[tl->ncuts++] = r->cuts[k->post_ncuts + i] - k->post_start;
	tl->gen = (uint32_t(*)[2])(void *)(tl->cuts + nc + 1);
	for (uint32_t i = 0; i < ng; i++)
		tl->gen[i][0] = r->gen[k->post_ngen + i][0] - k->post_start,
		tl->gen[i][1] = r->gen[k->post_ngen + i][1] - k->post_start;
	tl->ngen = ng;
	tl->cut0 = k->post_cut0;
	tl->max = k->max;
	tl->ok = 1;
}

/* A prefix's rendering that starts at the turns' loop: when what the whole
 * rendering ran before the loop read nothing the prefix sees differently
 * (starts_at_loop), the prefix's would print the same and leave the same
 * variables, so its output up to the loop is copied, its frame made from the
 * values recorded (the messages' tracked lists cut to the prefix), and only
 * the loop and what follows run; then a tail may be kept (tail_keep). 1 when
 * done, 0 when it does not apply (nothing changed). */
static int resume(struct rt *r, struct frame *top, struct tp_val *msgs, const struct tp_val *gp)
{
	struct track *k = r->tk;
	struct tmpl_trace *u = k->use;
	if (!msgs || msgs->type != TP_LIST || !starts_at_loop(u, msgs->u.l->n))
		return 0;
	for (uint32_t i = 0; i < u->nvars; i++) {
		int kb = u->vals[i].type == TP_LIST ? list_index(u->lists, u->nlists, u->vals[i].u.l) : -1;
		if (kb >= 0 && u->offs[kb] > msgs->u.l->n)
			return 0;
	}
	u->resumed++;
	copy_full(r, 0, u->start, 0, u->ncuts, 0, u->ngen);
	top->names = tp_alloc_raw(&r->a, ((size_t)u->nvars + 1) * sizeof *top->names);
	top->vals = tp_alloc_raw(&r->a, ((size_t)u->nvars + 1) * sizeof *top->vals);
	top->n = top->cap = u->nvars;
	for (uint32_t i = 0; i < u->nvars; i++) {
		struct tp_val v = u->vals[i];
		int kb = v.type == TP_LIST ? list_index(u->lists, u->nlists, v.u.l) : -1;
		if (kb >= 0) { /* messages[off:] of the prefix's messages */
			uint32_t off = u->offs[kb], n = msgs->u.l->n - off;
			struct tp_val l = tp_mk_list(&r->a, n, v.u.l->tuple);
			l.o = v.o;
			if (n)
				memcpy(l.u.l->v, msgs->u.l->v + off, n * sizeof *l.u.l->v);
			track_add(r, l.u.l, off);
			v = l;
		}
		top->names[i] = u->names[i], top->vals[i] = v;
	}
	int ran = run_from_turns(r, top, r->t->body);
	if (ran && gp && gp->type == TP_BOOL)
		tail_keep(r, gp->u.b, msgs->u.l->n);
	return ran;
}

static void turn_end(struct rt *r, int flow)
{
	struct track *k = r->tk;
	if (!k->record || k->bad)
		return;
	if (k->nturns == k->tcap) {
		uint32_t cap = k->tcap ? k->tcap * 2 : 16;
		k->turns = tp_realloc(&r->a, k->turns, k->nturns * sizeof *k->turns, cap * sizeof *k->turns);
		k->tcap = cap;
	}
	struct turn *t = &k->turns[k->nturns++];
	t->end = r->out->len, t->ncuts = (uint32_t)r->ncuts, t->ngen = (uint32_t)r->ngen;
	t->max = k->max;
	t->clean = !k->taint && flow != FLOW_BREAK;
}

/* Keeps the turn of message msg that printed the output from at to its end. */
static void message_turn(struct rt *r, int32_t msg, uint32_t at)
{
	if (r->nturns == r->tcap) {
		size_t cap = r->tcap ? 2 * r->tcap : 16;
		r->turns = tp_realloc(&r->a, r->turns, r->nturns * sizeof *r->turns, cap * sizeof *r->turns);
		r->tcap = cap;
	}
	r->turns[r->nturns++] = (struct tmpl_turn){msg, at, (uint32_t)r->out->len};
}

static int exec_for(struct rt *r, struct frame *f, const struct tp_stmt *s, const struct tp_val *rec, int depth)
{
	struct tp_val it = rec ? *rec : eval(r, f, s->e);
	if (r->watch && it.type != TP_LIST && held(it, 0))
		unreplayable(r, s->line, "a loop over content");
	struct tp_list *src = iter_list(r, s->line, it);
	struct frame *lf = frame_new(r, f);
	struct tp_list *items = src;
	if (s->cond) {
		/* the filter sees each item bound; loop.length counts what passed */
		struct tp_val kept = tp_mk_list(&r->a, 0, 0);
		uint32_t cap = 0;
		for (uint32_t i = 0; i < src->n; i++) {
			if (s->nnames == 1)
				frame_set(r, lf, s->names[0], src->v[i]);
			else
				assign(r, lf, s->line, s->target, src->v[i]);
			if (tp_truthy(eval(r, lf, s->cond)))
				list_push(r, &kept, src->v[i], &cap);
		}
		items = kept.u.l;
	}
	struct tp_loop *lp = tp_alloc(&r->a, sizeof *lp);
	lp->items = items;
	lp->s = s;
	lp->f = f;
	lp->depth = depth;
	lp->changed = tp_mk_undef("changed");
	struct tp_val lv = { .type = TP_LOOP, .o = tp_literal, .u.loop = lp };
	int turns = r->tk && s == r->t->turns && !r->tk->loop; /* its one run */
	uint32_t from = turns ? turns_start(r, f, lp) : 0;
	for (uint32_t i = from; i < items->n; i++) {
		step(r, s->line);
		lp->i = i;
		if (turns)
			r->tk->taint = 0, r->tk->max = (int64_t)r->tk->off + i;
		lf->n = 0; /* each iteration starts clean, as Jinja's loop scope does */
		frame_set(r, lf, r->t->loop_name, lv);
		if (s->nnames == 1)
			frame_set(r, lf, s->names[0], items->v[i]);
		else
			assign(r, lf, s->line, s->target, items->v[i]);
		/* a message's turn: its item is the message, printing to the output */
		const struct tp_val *item = &items->v[i];
		int mt = !r->text_only && r->out == r->main && item->type == TP_DICT && item->o.kind == TMPL_MSG_OTHER &&
			 item->o.msg >= 0;
		uint32_t at = (uint32_t)r->out->len;
		int flow = exec_body(r, lf, s->body);
		if (mt) /* a capture in the body gives the output back when it ends */
			message_turn(r, item->o.msg, at);
		if (turns)
			turn_end(r, flow);
		if (flow == FLOW_BREAK)
			break;
	}
	if (items->n == 0 && s->orelse)
		return exec_body(r, f, s->orelse);
	return FLOW_NEXT;
}

/* {{ a + b + c }} and {{ a ~ b ~ c }}: each operand's text printed in turn,
 * not the strings Python builds one + at a time and then prints (the same
 * bytes and origins, as runs of one origin merge either way). Operands are
 * evaluated, stepped and converted in the order eval takes them; a chain of +
 * meeting an operand that is not a string goes on as eval does from there. */
static void emit_chain(struct rt *r, struct frame *f, const struct tp_node *n)
{
	int cat = n->kind == N_CONCAT;
	uint32_t k = 0;
	for (const struct tp_node *x = n; cat ? x->kind == N_CONCAT : (x->kind == N_BIN && x->op == OP_ADD); x = x->a)
		k++;
	const struct tp_node **ops = tp_alloc(&r->a, (size_t)k * sizeof *ops); /* innermost first */
	const struct tp_node *x = n;
	for (uint32_t i = k; i-- > 0; x = x->a)
		ops[i] = x;
	for (uint32_t i = k; i-- > 0;)
		step(r, ops[i]->line); /* eval steps the outermost first */
	struct tp_str *parts = tp_alloc(&r->a, ((size_t)k + 1) * sizeof *parts);
	uint32_t np = 0;
	struct tp_val acc = eval(r, f, ops[0]->a);
	int plain = cat || (acc.type == TP_STR && !acc.markup);
	if (r->watch && acc.type != TP_STR && held(acc, 0))
		unreplayable(r, n->line, "content turned into text");
	for (uint32_t i = 0; i < k; i++) {
		struct tp_val b = eval(r, f, ops[i]->b);
		if (r->watch && b.type != TP_STR && held(b, 0))
			unreplayable(r, n->line, "content turned into text");
		if (cat) {
			if (i == 0)
				parts[np++] = to_str(r, acc);
			parts[np++] = to_str(r, b);
			continue;
		}
		if (plain && b.type == TP_STR && !b.markup) {
			if (i == 0)
				parts[np++] = acc.u.s;
			parts[np++] = b.u.s;
			continue;
		}
		if (plain && i > 0) { /* the strings so far, joined as the + before would have */
			struct tp_sb sb = sb_new(r);
			for (uint32_t j = 0; j < np; j++)
				tp_sb_str(&r->a, &sb, parts[j]);
			acc = tp_mk_str(tp_sb_done(&sb));
		}
		plain = 0;
		acc = arith(r, ops[i]->line, OP_ADD, acc, b);
	}
	if (!plain) {
		emit(r, acc);
		return;
	}
	for (uint32_t j = 0; j < np; j++)
		tp_sb_str(&r->a, r->out, parts[j]);
}

static int exec_body(struct rt *r, struct frame *f, const struct tp_stmt *s)
{
	for (; s; s = s->next) {
		step(r, s->line);
		switch (s->kind) {
		case S_TEXT:
			tp_sb_str(&r->a, r->out, s->text);
			cut(r);
			break;
		case S_OUT:
			if (s->e->kind == N_CONCAT || (s->e->kind == N_BIN && s->e->op == OP_ADD))
				emit_chain(r, f, s->e);
			else
				emit(r, eval(r, f, s->e));
			cut(r);
			break;
		case S_IF: {
			int flow = exec_body(r, f, tp_truthy(eval(r, f, s->cond)) ? s->body : s->orelse);
			if (flow != FLOW_NEXT)
				return flow;
			break;
		}
		case S_FOR: exec_for(r, f, s, NULL, 1); break;
		case S_SET: assign(r, f, s->line, s->target, eval(r, f, s->e)); break;
		case S_SETBLOCK: {
			struct tp_val v = capture(r, frame_new(r, f), s->body);
			if (s->e)
				v = filter_chain(r, f, s->e, v);
			frame_set(r, f, s->name, v);
			break;
		}
		case S_MACRO: {
			struct tp_val m = { .type = TP_MACRO, .o = tp_literal };
			m.u.m = tp_alloc(&r->a, sizeof *m.u.m);
			m.u.m->def = s;
			m.u.m->closure = f;
			m.u.m->name = s->name;
			m.u.m->caller = tp_mk_undef("caller");
			frame_set(r, f, s->name, m);
			break;
		}
		case S_CALLBLOCK: {
			struct tp_val caller = { .type = TP_MACRO, .o = tp_literal };
			caller.u.m = tp_alloc(&r->a, sizeof *caller.u.m);
			caller.u.m->def = s; /* its names/defaults are the caller's parameters */
			caller.u.m->closure = f;
			caller.u.m->name = "caller";
			caller.u.m->caller = tp_mk_undef("caller");
			struct tp_val fv = eval(r, f, s->e->a);
			struct args a;
			eval_args(r, f, s->e, 0, &a);
			if (fv.type != TP_MACRO)
				rt_err(r, s->line, "call block needs a macro");
			emit(r, call_macro(r, s->line, fv.u.m, &a, caller));
			break;
		}
		case S_FILTERBLOCK: emit(r, filter_chain(r, f, s->e, capture(r, f, s->body))); break;
		case S_WITH: {
			/* Jinja evaluates the values in the outer scope */
			struct frame *wf = frame_new(r, f);
			for (uint32_t i = 0; i < s->nnames; i++)
				frame_set(r, wf, s->names[i], eval(r, f, s->defaults[i]));
			int flow = exec_body(r, wf, s->body);
			if (flow != FLOW_NEXT)
				return flow;
			break;
		}
		case S_BREAK: return FLOW_BREAK;
		case S_CONTINUE: return FLOW_CONTINUE;
		case S_GEN: {
			/* AssistantTracker: the range of the body's text in the output.
			 * Only text written straight to the output has an offset there. */
			uint32_t start = r->out->len;
			int flow = exec_body(r, f, s->body);
			if (r->out == r->main)
				gen_add(r, start, r->out->len);
			if (flow != FLOW_NEXT)
				return flow;
			break;
		}
		}
	}
	return FLOW_NEXT;
}

/* ---- public API ---- */

/* Sets each N_ATTR node's op to its name's attr_code. */
static void code_attr_nodes(struct tp_node *n)
{
	if (!n)
		return;
	if (n->kind == N_ATTR)
		n->op = (uint8_t)attr_code(n->name);
	code_attr_nodes(n->a);
	code_attr_nodes(n->b);
	code_attr_nodes(n->c);
	for (uint32_t i = 0; i < n->nargs; i++)
		code_attr_nodes(n->args[i]);
}

static void code_attrs(struct tp_stmt *s)
{
	for (; s; s = s->next) {
		code_attr_nodes(s->e);
		code_attr_nodes(s->cond);
		code_attr_nodes(s->target);
		for (uint32_t i = 0; s->defaults && i < s->nnames; i++)
			code_attr_nodes(s->defaults[i]);
		code_attrs(s->body);
		code_attrs(s->orelse);
	}
}

struct tmpl *tmpl_compile(const char *src, size_t len, const char *name, struct err *err)
{
	if (!name)
		name = "template";
	size_t nl = strlen(name);
	/* the name lives behind the struct, so that nothing here can unwind */
	struct tmpl *t = calloc(1, sizeof *t + nl + 1);
	if (!t) {
		err_sys(err, "out of memory");
		return NULL;
	}
	memcpy((char *)(t + 1), name, nl + 1);
	t->name = (const char *)(t + 1);
	if (tp_parse(t, src, len, err) < 0) {
		tp_arena_free(&t->arena);
		free(t);
		return NULL;
	}
	t->turns = tp_prefix_loop(t->body);
	code_attrs(t->body);
	return t;
}

int tmpl_reads_agp(const struct tmpl *t) { return t->reads_agp; }

void tmpl_free(struct tmpl *t)
{
	if (!t)
		return;
	tp_arena_free(&t->arena);
	free(t);
}

static int origin_of_key(const struct jd *k)
{
	if (k->n == 7 && !memcmp(k->u.s, "content", 7))
		return TMPL_MSG_CONTENT;
	if (k->n == 10 && !memcmp(k->u.s, "tool_calls", 10))
		return TMPL_MSG_TOOL_CALLS;
	return TMPL_MSG_OTHER;
}

/* messages: each message's values get their own origin by key; the
 * strings are borrowed when borrow is set (see tmpl_var), else copied. */
static struct tp_val messages_from_jd(struct tp_arena *a, const struct jd *msgs, struct tp_org listo, int borrow)
{
	struct tp_val (*conv)(struct tp_arena *, const struct jd *, struct tp_org) =
		borrow ? tp_from_jd_borrowed : tp_from_jd;
	if (msgs->kind != JD_ARRAY)
		return conv(a, msgs, listo);
	struct tp_val l = tp_mk_list(a, msgs->n, 0);
	l.o = listo;
	for (uint32_t i = 0; i < msgs->n; i++) {
		const struct jd *m = &msgs->u.items[i];
		struct tp_org mo = { (int32_t)i, TMPL_MSG_OTHER, NULL };
		if (m->kind != JD_OBJECT) {
			l.u.l->v[i] = conv(a, m, mo);
			continue;
		}
		struct tp_val d = tp_mk_dict(a);
		d.o = mo;
		tp_dict_reserve(a, d.u.d, m->n);
		for (uint32_t k = 0; k < m->n; k++) {
			const struct jd_member *mm = &m->u.members[k];
			struct tp_org o = { (int32_t)i, (uint8_t)origin_of_key(&mm->key), NULL };
			struct tp_val kv = tp_mk_str(borrow ? tp_str_borrowed(a, &mm->key, mo)
							    : tp_str_lit(a, mm->key.u.s, mm->key.n, mo));
			tp_dict_push(a, d.u.d, kv, conv(a, &mm->val, o));
		}
		l.u.l->v[i] = d;
	}
	return l;
}

/* A context converted once for several renders (the prefix renders that
 * find where each turn starts): the values live in its arena and renders
 * share them, as no render changes a value in place (the immutable sandbox
 * refuses every mutating method; only namespace() objects, which a render
 * makes itself, take assignments). */
struct tmpl_ctx {
	struct tp_arena a;
	struct tmpl_cache *cache; /* where some of the values live, or NULL */
	uint32_t n;
	const char **names;
	struct tp_val *vals;
	uint32_t messages, agp; /* the indexes of messages and add_generation_prompt, or n */
	struct tmpl_watch *watch; /* tmpl_ctx_watch's, or NULL */
};

/* Variable name's value val converted into a: messages gets each message's
 * origins, containers the cache's values where it has them (cache may be
 * NULL); with borrow, the messages' strings are not copied. */
static struct tp_val var_value(struct tp_arena *a, const char *name, const struct jd *val, struct tmpl_cache *cache,
			       int borrow, jmp_buf *fail, struct err *err)
{
	struct tp_org o = { -1, TMPL_INPUT, name };
	struct tp_val v;
	if (!strcmp(name, "messages"))
		return messages_from_jd(a, val, o, borrow);
	if (!cache || !tp_cache_value(cache, name, val, &v, fail, err))
		v = tp_from_jd(a, val, o);
	return v;
}

/* The members of the object obj converted into a (no cache): their names,
 * values and count. */
static uint32_t vars_from_jd(struct tp_arena *a, const struct jd *obj, jmp_buf *fail, struct err *err,
			     const char **names, struct tp_val *vals)
{
	for (uint32_t k = 0; k < obj->n; k++) {
		const struct jd_member *m = &obj->u.members[k];
		names[k] = tp_strndup(a, m->key.u.s, strlen(m->key.u.s));
		vals[k] = var_value(a, names[k], &m->val, NULL, 0, fail, err);
	}
	return obj->n;
}

/* A context of vars over the variables of more over those of base (both
 * consumed; jv_invalid when there are none): see tmpl_ctx_new_layered. */
static struct tmpl_ctx *ctx_new(jv base, jv more, const struct tmpl_var *vars, size_t nvars,
				struct tmpl_cache *cache, struct err *err)
{
	if ((jv_is_valid(base) && jv_get_kind(base) != JV_KIND_OBJECT) ||
	    (jv_is_valid(more) && jv_get_kind(more) != JV_KIND_OBJECT)) {
		jv_free(base), jv_free(more);
		return err_set(err, "the context must be a JSON object"), NULL;
	}
	struct tmpl_ctx *volatile c = calloc(1, sizeof *c); /* volatile: kept across setjmp */
	if (!c) {
		jv_free(base), jv_free(more);
		return err_sys(err, "out of memory"), NULL;
	}
	/* The lower layers, converted once while the same jv values come back:
	 * merged and made JSON values here, before the conversion (which
	 * unwinds with longjmp) when the cache does not have them. */
	const char **bnames = NULL;
	struct tp_val *bvals = NULL;
	uint32_t bn = 0;
	struct jd_arena ja = { 0 };
	struct jd under = jd_null();
	volatile int have_base = !jv_is_valid(base) && !jv_is_valid(more); /* volatile: read after setjmp */
	if (!have_base && cache)
		have_base = tp_cache_base(cache, base, more, &bnames, &bvals, &bn);
	if (!have_base) {
		jv u = jv_is_valid(base) ? jv_copy(base) : jv_object();
		if (jv_is_valid(more))
			u = jv_object_merge(u, jv_copy(more));
		int rc = jsonl_jd_of(u, &ja, &under);
		jv_free(u);
		if (rc < 0) {
			jd_arena_free(&ja), jv_free(base), jv_free(more);
			free(c);
			return err_sys(err, "out of memory"), NULL;
		}
	}
	struct tp_arena a = { .cap = ((size_t)64 << 20) + 16 * ((size_t)16 << 20), .err = err }; /* a render's cap */
	jmp_buf jb;
	a.fail = &jb;
	volatile int ok = 0;
	if (cache)
		tp_cache_next(cache);
	if (setjmp(jb) == 0) {
		if (!have_base) {
			struct tp_arena *ba = cache ? tp_cache_base_begin(cache, base, more, &jb, err) : &a;
			bnames = tp_alloc(ba, ((size_t)under.n + 1) * sizeof *bnames);
			bvals = tp_alloc(ba, ((size_t)under.n + 1) * sizeof *bvals);
			bn = vars_from_jd(ba, &under, &jb, err, bnames, bvals);
			if (cache)
				tp_cache_base_end(cache, bnames, bvals, bn);
		}
		const char **names = tp_alloc(&a, (nvars + bn + 1) * sizeof *names);
		struct tp_val *vals = tp_alloc(&a, (nvars + bn + 1) * sizeof *vals);
		uint32_t k = (uint32_t)nvars, n = k;
		for (uint32_t i = 0; i < k; i++) {
			names[i] = tp_strndup(&a, vars[i].name, strlen(vars[i].name));
			vals[i] = var_value(&a, names[i], vars[i].value, cache, 1, &jb, err);
		}
		for (uint32_t i = 0; i < bn; i++) { /* a name of vars wins */
			uint32_t j = 0;
			while (j < k && strcmp(names[j], bnames[i]))
				j++;
			if (j == k)
				names[n] = bnames[i], vals[n++] = bvals[i];
		}
		c->n = n, c->names = names, c->vals = vals;
		c->messages = c->agp = n;
		for (uint32_t i = 0; i < n; i++)
			if (!strcmp(names[i], "messages"))
				c->messages = i;
			else if (!strcmp(names[i], "add_generation_prompt"))
				c->agp = i;
		ok = 1;
	} else if (cache) {
		tp_cache_abandon(cache);
	}
	jd_arena_free(&ja), jv_free(base), jv_free(more);
	c->a = a;
	c->a.fail = NULL;
	c->cache = cache;
	if (!ok) {
		tmpl_ctx_free(c);
		return NULL;
	}
	return c;
}

struct tmpl_ctx *tmpl_ctx_new_layered(jv base, jv more, const struct tmpl_var *vars, size_t nvars,
				      struct tmpl_cache *cache, struct err *err)
{
	return ctx_new(base, more, vars, nvars, cache, err);
}

/* A whole context is the middle layer alone. */
struct tmpl_ctx *tmpl_ctx_new(jv ctx, struct err *err) { return ctx_new(jv_invalid(), ctx, NULL, 0, NULL, err); }

size_t tmpl_strftime_now(const char *fmt, char *buf, size_t n)
{
	time_t now = time(NULL);
	struct tm tm;
	localtime_r(&now, &tm);
	return strftime(buf, n, fmt, &tm);
}

void tmpl_ctx_watch(struct tmpl_ctx *c, struct tmpl_watch *w)
{
	c->watch = w;
}

void tmpl_strip_span(const char *s, size_t n, size_t *lo, size_t *hi)
{
	size_t a = 0, b = n;
	while (a < n) {
		uint32_t i = (uint32_t)a;
		if ((unsigned char)s[a] < 0x80 ? !py_space((unsigned char)s[i++]) : !py_space(u8_dec(s, (uint32_t)n, &i)))
			break;
		a = i;
	}
	while (b > a) { /* the last character starts after its continuation bytes (s is UTF-8) */
		if ((unsigned char)s[b - 1] < 0x80) {
			if (!py_space((unsigned char)s[b - 1]))
				break;
			b--;
			continue;
		}
		size_t k = b - 1;
		while (k > a && ((unsigned char)s[k] & 0xC0) == 0x80)
			k--;
		uint32_t i = (uint32_t)k;
		if (!py_space(u8_dec(s, (uint32_t)n, &i)))
			break;
		b = k;
	}
	*lo = a;
	*hi = b;
}

void tmpl_ctx_free(struct tmpl_ctx *c)
{
	if (!c)
		return;
	tp_arena_free(&c->a);
	free(c);
}

int tmpl_tojson(const struct jd *v, struct jd_arena *ja, struct jd *out, struct err *err)
{
	struct err e = {0};
	struct tp_arena a = { .err = &e };
	jmp_buf jb;
	a.fail = &jb;
	int rc;
	if (setjmp(jb) == 0) {
		struct tp_val x = tp_from_jd(&a, v, tp_literal);
		struct tp_sb o = { 0 };
		const char *why = NULL;
		if (tp_json_of(&a, &o, x, &tojson_defaults, 0, &why) == 0) {
			struct tp_str text = tp_sb_done(&o);
			*out = jd_string(ja, text.s, text.len);
			rc = out->kind == JD_STRING ? 0 : err_sys(err, "out of memory");
		} else {
			rc = err_set(err, "%s", why);
		}
	} else {
		rc = err_set(err, "%s", e.msg);
		err->code = e.code;
	}
	tp_arena_free(&a);
	return rc;
}

int tmpl_render(const struct tmpl *t, jv ctx, const struct tmpl_limits *lim, struct tmpl_output *out,
		struct err *err)
{
	memset(out, 0, sizeof *out);
	if (jv_get_kind(ctx) != JV_KIND_OBJECT) {
		jv_free(ctx);
		return err_set(err, "%s: the context must be a JSON object", t->name);
	}
	struct tmpl_ctx *c = tmpl_ctx_new(ctx, err);
	if (!c)
		return -1;
	int rc = tmpl_render_ctx(t, c, SIZE_MAX, -1, lim, out, err);
	tmpl_ctx_free(c);
	return rc;
}

/* The size of the calling thread's last rendering. */
static _Thread_local struct {
	uint32_t len, nruns;
} out_hint;

static int render(const struct tmpl *t, const struct tmpl_ctx *c, size_t nmsg, int agp, const struct tmpl_limits *lim,
		  int runs, struct tmpl_output *out, struct track *tk, struct tmpl_trace **trace, struct err *err)
{
	memset(out, 0, sizeof *out);
	struct rt r = { .t = t, .text_only = !runs };
	r.max_out = lim && lim->max_output ? lim->max_output : (size_t)16 << 20;
	r.max_steps = lim && lim->max_steps ? lim->max_steps : 10000000;
	r.max_depth = lim && lim->max_depth ? lim->max_depth : 64;
	if (r.max_depth > 1000)
		r.max_depth = 1000; /* each level costs C stack */
	if (r.max_out > UINT32_MAX - 64)
		r.max_out = UINT32_MAX - 64;
	r.a.cap = ((size_t)64 << 20) + 16 * r.max_out;
	r.a.err = err;
	jmp_buf jb;
	r.a.fail = &jb;
	/* Everything below that can fail unwinds to here. */
	volatile int ok = 0;
	struct tp_sb main_out = { 0 };
	r.cache = c->cache;
	r.watch = c->watch;
	if (c->watch && c->messages < c->n && c->vals[c->messages].type == TP_LIST)
		r.holes = c->vals[c->messages].u.l;
	if (setjmp(jb) == 0) {
		/* the context's names are an object's keys, so distinct: set in place */
		r.root = frame_new(&r, NULL);
		r.root->names = c->names;
		r.root->vals = tp_alloc_raw(&r.a, (c->n + 1) * sizeof *r.root->vals);
		r.root->n = r.root->cap = c->n;
		if (c->n)
			memcpy(r.root->vals, c->vals, c->n * sizeof *r.root->vals);
		struct tp_val *msgs = c->messages < c->n ? &r.root->vals[c->messages] : NULL;
		struct tp_val *gp = c->agp < c->n ? &r.root->vals[c->agp] : NULL;
		if (msgs && msgs->type == TP_LIST && nmsg < msgs->u.l->n) {
			struct tp_val l = tp_mk_list(&r.a, (uint32_t)nmsg, msgs->u.l->tuple);
			memcpy(l.u.l->v, msgs->u.l->v, nmsg * sizeof *l.u.l->v);
			l.o = msgs->o;
			*msgs = l;
		}
		if (gp && agp >= 0 && gp->type == TP_BOOL)
			gp->u.b = agp;
		if (tk) {
			r.tk = tk;
			tk->max = -1;
			if (msgs && msgs->type == TP_LIST)
				track_add(&r, msgs->u.l, 0);
			tk->agp = gp;
		}
		main_out.max = r.max_out;
		main_out.heap = 1; /* the output's text is handed over as it is */
		/* room for what this thread's last rendering made: doubling from
		 * nothing would copy the output again and again */
		tp_sb_reserve(&r.a, &main_out, out_hint.len < r.max_out ? out_hint.len : 0, out_hint.nruns);
		r.out = r.main = &main_out;
		struct frame *top = frame_new(&r, r.root);
		if (!(tk && tk->use && resume(&r, top, msgs, gp)))
			exec_body(&r, top, t->body);
		main_out.max = 0;
		tp_sb_reserve(&r.a, &main_out, 1, 0); /* for the NUL */
		ok = 1;
	}
	if (!ok) {
		free(main_out.s);
		tp_arena_free(&r.a);
		return -1;
	}
	/* at most what fits the arena's usual block: one huge rendering must not make every next one big */
	out_hint.len = main_out.len < 32768 ? main_out.len : 32768;
	out_hint.nruns = main_out.nruns < 1024 ? main_out.nruns : 1024;
	if (trace && tk->loop && !tk->bad) {
		*trace = malloc(sizeof **trace + (tk->nturns + 1) * sizeof(struct turn));
		if (!*trace) {
			tp_arena_free(&r.a);
			return err_sys(err, "out of memory");
		}
		struct tmpl_trace *tr = *trace;
		tr->off = tk->off, tr->start = tk->start, tr->ncuts = tk->ncuts, tr->ngen = tk->ngen;
		tr->resumable = tk->resumable, tr->pre_max = tk->pre_max;
		tr->lists = tk->lists, tr->offs = tk->offs, tr->nlists = tk->nlists;
		tr->names = tk->names, tr->vals = tk->vals, tr->nvars = tk->nvars;
		tr->a = (struct tp_arena){ 0 }; /* given the rendering's below */
		tr->copied = tr->resumed = tr->tailed = 0;
		memset(tr->tail, 0, sizeof tr->tail);
		tr->n = tk->nturns;
		if (tk->nturns)
			memcpy(tr->turn, tk->turns, tk->nturns * sizeof *tr->turn);
	}
	/* The text is the output's own block; the rest is copied out of the
	 * arena into another: runs, generation ranges, cuts, the variable
	 * names the runs point to. */
	size_t names_len = 0, nruns = runs ? main_out.nruns : 0;
	for (uint32_t i = 0; i < nruns; i++)
		if (main_out.runs[i].o.var)
			names_len += strlen(main_out.runs[i].o.var) + 1;
	size_t runs_size = (nruns + 1) * sizeof *out->runs, gen_size = (r.ngen + 1) * sizeof *out->gen,
	       cuts_size = (r.ncuts + 1) * sizeof *out->cuts, turns_size = (r.nturns + 1) * sizeof *out->turns;
	char *block = malloc(runs_size + gen_size + cuts_size + turns_size + names_len);
	if (!block) {
		memset(out, 0, sizeof *out);
		free(main_out.s);
		tp_arena_free(&r.a);
		if (trace) {
			free(*trace);
			*trace = NULL;
		}
		return err_sys(err, "out of memory");
	}
	out->mem = block;
	out->runs = runs ? (struct tmpl_run *)(void *)block : NULL;
	out->gen = (uint32_t(*)[2])(void *)(block + runs_size);
	out->cuts = (uint32_t *)(void *)(block + runs_size + gen_size);
	out->turns = (struct tmpl_turn *)(void *)(block + runs_size + gen_size + cuts_size);
	char *names = block + runs_size + gen_size + cuts_size + turns_size;
	out->text = main_out.s;
	out->text[main_out.len] = 0;
	out->len = main_out.len;
	uint32_t start = 0;
	size_t nr = 0;
	for (uint32_t i = 0; i < nruns; i++) {
		const struct tp_orun *ru = &main_out.runs[i];
		if (ru->end == start)
			continue;
		struct tmpl_run *o = &out->runs[nr++];
		o->start = start;
		o->end = ru->end;
		o->origin = (enum tmpl_origin)ru->o.kind;
		o->msg = ru->o.kind == TMPL_MSG_CONTENT || ru->o.kind == TMPL_MSG_TOOL_CALLS || ru->o.kind == TMPL_MSG_OTHER
				 ? ru->o.msg
				 : -1;
		o->var = NULL;
		if (ru->o.kind == TMPL_INPUT && ru->o.var) {
			size_t n = strlen(ru->o.var) + 1;
			memcpy(names, ru->o.var, n);
			o->var = names;
			names += n;
		}
		start = ru->end;
	}
	out->nruns = nr;
	for (size_t i = 0; i < r.ngen; i++) {
		out->gen[i][0] = r.gen[i][0];
		out->gen[i][1] = r.gen[i][1];
	}
	out->ngen = r.ngen;
	if (r.ncuts)
		memcpy(out->cuts, r.cuts, r.ncuts * sizeof *out->cuts);
	out->ncuts = r.ncuts;
	if (r.nturns)
		memcpy(out->turns, r.turns, r.nturns * sizeof *out->turns);
	out->nturns = r.nturns;
	if (trace && *trace) { /* the trace's values live on in the rendering's arena */
		(*trace)->a = r.a;
		(*trace)->a.fail = NULL;
	} else {
		tp_arena_free(&r.a);
	}
	return 0;
}

int tmpl_render_ctx(const struct tmpl *t, const struct tmpl_ctx *c, size_t nmsg, int agp,
		    const struct tmpl_limits *lim, struct tmpl_output *out, struct err *err)
{
	return render(t, c, nmsg, agp, lim, 1, out, NULL, NULL, err);
}

int tmpl_render_traced(const struct tmpl *t, const struct tmpl_ctx *c, int agp, const struct tmpl_limits *lim,
		       struct tmpl_output *out, struct tmpl_trace **trace, struct err *err)
{
	*trace = NULL;
	if (!t->turns)
		return render(t, c, SIZE_MAX, agp, lim, 1, out, NULL, NULL, err);
	struct track tk = { .record = 1 };
	int rc = render(t, c, SIZE_MAX, agp, lim, 1, out, &tk, trace, err);
	if (rc < 0) {
		tmpl_trace_free(*trace);
		*trace = NULL;
	}
	return rc;
}

/* A prefix's rendering without runs made from full and a tail (struct
 * tail) when every turn it has would be copied: 1, or 0 when it cannot be
 * (out untouched). */
static int prefix_from_tail(const struct tmpl_ctx *c, size_t nmsg, int agp, const struct tmpl_output *full,
			    struct tmpl_trace *u, struct tmpl_output *out)
{
	if (c->messages >= c->n || c->vals[c->messages].type != TP_LIST || c->agp >= c->n ||
	    c->vals[c->agp].type != TP_BOOL)
		return 0;
	if (nmsg > c->vals[c->messages].u.l->n)
		nmsg = c->vals[c->messages].u.l->n;
	const struct tail *tl = &u->tail[agp >= 0 ? agp != 0 : c->vals[c->agp].u.b];
	if (!tl->ok || !starts_at_loop(u, nmsg) || tl->max >= (int64_t)nmsg || u->off >= nmsg)
		return 0;
	uint32_t m = (uint32_t)(nmsg - u->off); /* the prefix's turns: every one must be copied */
	if (turns_copyable(u, m, nmsg) != m)
		return 0;
	const struct turn *e = &u->turn[m - 1];
	char *text = malloc((size_t)e->end + tl->len + 1);
	char *mem = malloc(((size_t)e->ngen + tl->ngen + 1) * sizeof *out->gen + /* then cut0's, and one more */
			   ((size_t)e->ncuts + tl->ncuts + 2) * sizeof *out->cuts);
	if (!text || !mem) {
		free(text), free(mem);
		return 0;
	}
	memset(out, 0, sizeof *out);
	memcpy(text, full->text, e->end);
	memcpy(text + e->end, tl->text, tl->len);
	out->len = (size_t)e->end + tl->len;
	text[out->len] = 0;
	out->text = text, out->mem = mem;
	out->gen = (uint32_t(*)[2])(void *)mem;
	for (uint32_t i = 0; i < e->ngen; i++)
		out->gen[out->ngen][0] = full->gen[i][0], out->gen[out->ngen++][1] = full->gen[i][1];
	for (uint32_t i = 0; i < tl->ngen; i++)
		out->gen[out->ngen][0] = tl->gen[i][0] + e->end, out->gen[out->ngen++][1] = tl->gen[i][1] + e->end;
	out->cuts = (uint32_t *)(void *)(out->gen + out->ngen + 1);
	memcpy(out->cuts, full->cuts, e->ncuts * sizeof *out->cuts);
	out->ncuts = e->ncuts;
	if (tl->cut0 && (!out->ncuts || out->cuts[out->ncuts - 1] != e->end))
		out->cuts[out->ncuts++] = e->end;
	for (uint32_t i = 0; i < tl->ncuts; i++)
		out->cuts[out->ncuts++] = tl->cuts[i] + e->end;
	u->tailed++;
	return 1;
}

int tmpl_render_prefix(const struct tmpl *t, const struct tmpl_ctx *c, size_t nmsg, int agp,
		       const struct tmpl_output *full, struct tmpl_trace *trace, int runs, const struct tmpl_limits *lim,
		       struct tmpl_output *out, struct err *err)
{
	if (!trace)
		return render(t, c, nmsg, agp, lim, runs, out, NULL, NULL, err);
	if (!runs && prefix_from_tail(c, nmsg, agp, full, trace, out))
		return 0;
	struct track tk = { .full = full, .use = trace, .nmsg = nmsg };
	return render(t, c, nmsg, agp, lim, runs, out, &tk, NULL, err);
}

void tmpl_trace_free(struct tmpl_trace *tr)
{
	if (!tr)
		return;
	tp_arena_free(&tr->a);
	free(tr->tail[0].text), free(tr->tail[1].text);
	free(tr);
}

unsigned long long tmpl_trace_copied(const struct tmpl_trace *tr) { return tr ? tr->copied : 0; }

unsigned long long tmpl_trace_resumed(const struct tmpl_trace *tr) { return tr ? tr->resumed : 0; }

unsigned long long tmpl_trace_tailed(const struct tmpl_trace *tr) { return tr ? tr->tailed : 0; }

int tmpl_output_equal(const struct tmpl_output *a, const struct tmpl_output *b)
{
	if (a->len != b->len || memcmp(a->text, b->text, a->len) || a->nruns != b->nruns || a->ngen != b->ngen ||
	    a->ncuts != b->ncuts)
		return 0;
	if ((a->ngen && memcmp(a->gen, b->gen, a->ngen * sizeof *a->gen)) ||
	    (a->ncuts && memcmp(a->cuts, b->cuts, a->ncuts * sizeof *a->cuts)))
		return 0;
	for (size_t i = 0; i < a->nruns; i++) {
		const struct tmpl_run *x = &a->runs[i], *y = &b->runs[i];
		if (x->start != y->start || x->end != y->end || x->msg != y->msg || x->origin != y->origin ||
		    !x->var != !y->var || (x->var && strcmp(x->var, y->var)))
			return 0;
	}
	return 1;
}

void tmpl_output_free(struct tmpl_output *o)
{
	if (!o)
		return;
	free(o->text);
	free(o->mem);
	memset(o, 0, sizeof *o);
}
