/* template_value: the arena, strings with per-byte origins, and Python's view
 * of values: truthiness, equality, str(), repr(), json.dumps. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "template_impl.h"

/* ---- arena ---- */

_Noreturn void tp_fail(struct tp_arena *a, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (a->err) {
		vsnprintf(a->err->msg, sizeof a->err->msg, fmt, ap);
		a->err->code = code;
	}
	va_end(ap);
	longjmp(*a->fail, 1);
}

_Noreturn void tp_fail_at(struct tp_arena *a, const char *name, int line, const char *fmt, va_list ap)
{
	char buf[900];
	vsnprintf(buf, sizeof buf, fmt, ap);
	tp_fail(a, EXIT_USAGE, "%s:%d: %s", name, line, buf);
}

/* Standard blocks freed by one render are kept for the next (a few only):
 * a render per record would otherwise malloc and free them every time. */
static _Thread_local struct tp_block *spare;
static _Thread_local int nspare;

/* A new block (a spare one when it will do), or the cap's or malloc's failure. */
void *tp_alloc_slow(struct tp_arena *a, size_t n)
{
	if (a->cap && a->used + n > a->cap)
		tp_fail(a, EXIT_USAGE, "template used more than %zu MiB of memory", a->cap >> 20);
	struct tp_block *b = a->head;
	if (!b || b->size - b->used < n) {
		size_t size = n > 65536 ? n : 65536;
		if (size == 65536 && spare) {
			b = spare;
			spare = b->next;
			nspare--;
		} else {
			b = malloc(sizeof *b + size);
		}
		if (!b)
			tp_fail(a, EXIT_RUNTIME, "out of memory");
		b->size = size;
		b->used = 0;
		/* A big block goes behind the current one so that the rest of
		 * the current one stays in use. */
		if (a->head && n > 65536) {
			b->next = a->head->next;
			a->head->next = b;
		} else {
			b->next = a->head;
			a->head = b;
		}
	}
	void *p = b->data + b->used;
	b->used += n;
	a->used += n;
	return p;
}

void *tp_realloc(struct tp_arena *a, void *p, size_t old, size_t n)
{
	void *q = tp_alloc(a, n);
	if (p && old)
		memcpy(q, p, old < n ? old : n);
	return q;
}

char *tp_strndup(struct tp_arena *a, const char *s, size_t n)
{
	char *p = tp_alloc(a, n + 1);
	memcpy(p, s, n);
	p[n] = 0;
	return p;
}

void tmpl_thread_release(void)
{
	while (spare) {
		struct tp_block *b = spare;
		spare = b->next;
		free(b);
	}
	nspare = 0;
}

void tp_arena_free(struct tp_arena *a)
{
	struct tp_block *b = a->head;
	while (b) {
		struct tp_block *n = b->next;
		if (b->size == 65536 && nspare < 16) {
			b->next = spare;
			spare = b;
			nspare++;
		} else {
			free(b);
		}
		b = n;
	}
	a->head = NULL;
	a->used = 0;
}

/* ---- strings ---- */

const struct tp_org tp_literal = { -1, TMPL_LITERAL, NULL };

int tp_org_eq(struct tp_org a, struct tp_org b)
{
	if (a.kind != b.kind || a.msg != b.msg)
		return 0;
	if (a.var == b.var)
		return 1;
	return a.var && b.var && strcmp(a.var, b.var) == 0;
}

static void sb_grow(struct tp_arena *a, struct tp_sb *b, size_t n)
{
	size_t need = (size_t)b->len + n;
	if (b->max && need > b->max)
		tp_fail(a, EXIT_USAGE, "output longer than %zu bytes", b->max);
	if (need > UINT32_MAX - 16)
		tp_fail(a, EXIT_USAGE, "string longer than 4 GiB");
	if (need <= b->cap)
		return;
	size_t cap = b->cap ? (size_t)b->cap * 2 : 64;
	while (cap < need)
		cap *= 2;
	if (cap > UINT32_MAX - 16)
		cap = UINT32_MAX - 16;
	char *grown;
	if (b->heap) {
		grown = realloc(b->s, cap);
		if (!grown)
			tp_fail(a, EXIT_RUNTIME, "out of memory");
	} else {
		grown = tp_alloc_raw(a, cap); /* bytes past len are written before they are read */
		if (b->len)
			memcpy(grown, b->s, b->len);
	}
	b->s = grown;
	b->cap = (uint32_t)cap;
}

static void runs_grow(struct tp_arena *a, struct tp_sb *b, size_t n)
{
	if (b->nruns + n <= b->rcap)
		return;
	size_t cap = b->rcap ? (size_t)b->rcap * 2 : 8;
	while (cap < b->nruns + n)
		cap *= 2;
	if (cap > UINT32_MAX / sizeof *b->runs)
		tp_fail(a, EXIT_USAGE, "string longer than 4 GiB");
	struct tp_orun *grown = tp_alloc_raw(a, cap * sizeof *grown); /* runs past nruns are written before they are read */
	if (b->nruns)
		memcpy(grown, b->runs, b->nruns * sizeof *grown);
	b->runs = grown;
	b->rcap = (uint32_t)cap;
}

void tp_sb_reserve(struct tp_arena *a, struct tp_sb *b, size_t n, size_t nruns)
{
	sb_grow(a, b, n);
	runs_grow(a, b, nruns);
}

void tp_sb_org(struct tp_arena *a, struct tp_sb *b, struct tp_org o)
{
	/* Extends the last run when the origin is the same, else opens one. */
	if (b->nruns && tp_org_eq(b->runs[b->nruns - 1].o, o)) {
		b->runs[b->nruns - 1].end = b->len;
		return;
	}
	runs_grow(a, b, 1);
	b->runs[b->nruns].end = b->len;
	b->runs[b->nruns].o = o;
	b->nruns++;
}

void tp_sb_put(struct tp_arena *a, struct tp_sb *b, const char *s, size_t n, struct tp_org o)
{
	if (n == 0)
		return;
	sb_grow(a, b, n);
	memcpy(b->s + b->len, s, n);
	b->len += (uint32_t)n;
	tp_sb_org(a, b, o);
}

void tp_sb_sub(struct tp_arena *a, struct tp_sb *b, struct tp_str s, uint32_t from, uint32_t to)
{
	uint32_t start = 0;
	for (uint32_t r = 0; r < s.nruns && from < to; r++) {
		uint32_t end = s.runs[r].end;
		if (end > from) {
			uint32_t lo = from > start ? from : start, hi = end < to ? end : to;
			if (hi > lo)
				tp_sb_put(a, b, s.s + lo, hi - lo, s.runs[r].o);
		}
		start = end;
	}
}

void tp_sb_str(struct tp_arena *a, struct tp_sb *b, struct tp_str s) { tp_sb_sub(a, b, s, 0, s.len); }

struct tp_str tp_sb_done(struct tp_sb *b)
{
	struct tp_str s = { b->s ? b->s : "", b->len, b->nruns, b->runs };
	return s;
}

struct tp_str tp_str_lit(struct tp_arena *a, const char *s, size_t n, struct tp_org o)
{
	/* What a tp_sb given s would hold: the bytes and one run (none when
	 * empty), in one block sized to fit. */
	struct tp_str r = { "", 0, 0, NULL };
	if (n == 0)
		return r;
	if (n > UINT32_MAX - 16)
		tp_fail(a, EXIT_USAGE, "string longer than 4 GiB");
	size_t off = ((n + 1) + 15) & ~(size_t)15;
	char *p = tp_alloc_raw(a, off + sizeof(struct tp_orun));
	memcpy(p, s, n);
	p[n] = 0;
	struct tp_orun *run = (struct tp_orun *)(p + off);
	memset(run, 0, sizeof *run);
	run->end = (uint32_t)n;
	run->o = o;
	r.s = p, r.len = (uint32_t)n, r.nruns = 1, r.runs = run;
	return r;
}

struct tp_org tp_str_org(struct tp_str s, uint32_t i)
{
	for (uint32_t r = 0; r < s.nruns; r++)
		if (i < s.runs[r].end)
			return s.runs[r].o;
	return s.nruns ? s.runs[s.nruns - 1].o : tp_literal;
}

/* ---- values ---- */

struct tp_val tp_mk_str(struct tp_str s)
{
	struct tp_val v = { .type = TP_STR, .o = tp_literal };
	v.u.s = s;
	if (s.nruns)
		v.o = s.runs[0].o;
	return v;
}
struct tp_val tp_mk_int(int64_t i) { return (struct tp_val){ .type = TP_INT, .o = tp_literal, .u.i = i }; }
struct tp_val tp_mk_bool(int b) { return (struct tp_val){ .type = TP_BOOL, .o = tp_literal, .u.b = !!b }; }
struct tp_val tp_mk_none(void) { return (struct tp_val){ .type = TP_NONE, .o = tp_literal }; }
struct tp_val tp_mk_undef(const char *name) { return (struct tp_val){ .type = TP_UNDEF, .o = tp_literal, .u.undef = name }; }
struct tp_val tp_mk_float(double f) { return (struct tp_val){ .type = TP_FLOAT, .o = tp_literal, .u.f = f }; }

struct tp_val tp_mk_list(struct tp_arena *a, uint32_t n, int tuple)
{
	struct tp_val v = { .type = TP_LIST, .o = tp_literal };
	v.u.l = tp_alloc(a, sizeof *v.u.l);
	v.u.l->v = tp_alloc(a, (n ? n : 1) * sizeof(struct tp_val));
	v.u.l->n = n;
	v.u.l->tuple = (uint8_t)tuple;
	return v;
}

struct tp_val tp_mk_dict(struct tp_arena *a)
{
	struct tp_val v = { .type = TP_DICT, .o = tp_literal };
	v.u.d = tp_alloc(a, sizeof *v.u.d);
	return v;
}

struct tp_val *tp_dict_get(const struct tp_dict *d, struct tp_val k)
{
	for (uint32_t i = 0; i < d->n; i++)
		if (tp_equal(d->k[i], k))
			return &d->v[i];
	return NULL;
}

struct tp_val *tp_dict_gets(const struct tp_dict *d, const char *k, size_t n)
{
	for (uint32_t i = 0; i < d->n; i++)
		if (d->k[i].type == TP_STR && d->k[i].u.s.len == n && memcmp(d->k[i].u.s.s, k, n) == 0)
			return &d->v[i];
	return NULL;
}

void tp_dict_set(struct tp_arena *a, struct tp_dict *d, struct tp_val k, struct tp_val v)
{
	struct tp_val *p = tp_dict_get(d, k);
	if (p) {
		*p = v;
		return;
	}
	tp_dict_push(a, d, k, v);
}

void tp_dict_reserve(struct tp_arena *a, struct tp_dict *d, uint32_t n)
{
	if (n <= d->cap)
		return;
	d->k = tp_realloc(a, d->k, d->n * sizeof *d->k, n * sizeof *d->k);
	d->v = tp_realloc(a, d->v, d->n * sizeof *d->v, n * sizeof *d->v);
	d->cap = n;
}

void tp_dict_push(struct tp_arena *a, struct tp_dict *d, struct tp_val k, struct tp_val v)
{
	if (d->n == d->cap) {
		uint32_t cap = d->cap ? d->cap * 2 : 4;
		d->k = tp_realloc(a, d->k, d->n * sizeof *d->k, cap * sizeof *d->k);
		d->v = tp_realloc(a, d->v, d->n * sizeof *d->v, cap * sizeof *d->v);
		d->cap = cap;
	}
	d->k[d->n] = k;
	d->v[d->n] = v;
	d->n++;
}

int tp_truthy(struct tp_val v)
{
	switch (v.type) {
	case TP_UNDEF:
	case TP_NONE: return 0;
	case TP_BOOL: return v.u.b;
	case TP_INT: return v.u.i != 0;
	case TP_FLOAT: return v.u.f != 0;
	case TP_STR: return v.u.s.len != 0;
	case TP_LIST: return v.u.l->n != 0 || v.u.l->lazy == LAZY_GEN;
	case TP_DICT:
	case TP_NS: return v.u.d->n != 0 || v.type == TP_NS;
	default: return 1;
	}
}

static int is_num(struct tp_val v) { return v.type == TP_BOOL || v.type == TP_INT || v.type == TP_FLOAT; }

static int equal_at(struct tp_val a, struct tp_val b, int depth);
int tp_equal(struct tp_val a, struct tp_val b) { return equal_at(a, b, 0); }

/* Beyond a sane depth two values compare unequal rather than overflow the stack. */
static int equal_at(struct tp_val a, struct tp_val b, int depth)
{
	if (depth > 500)
		return 0;
	if (is_num(a) && is_num(b)) {
		if (a.type == TP_FLOAT || b.type == TP_FLOAT) {
			double x = a.type == TP_FLOAT ? a.u.f : a.type == TP_INT ? (double)a.u.i : a.u.b;
			double y = b.type == TP_FLOAT ? b.u.f : b.type == TP_INT ? (double)b.u.i : b.u.b;
			return x == y;
		}
		int64_t x = a.type == TP_INT ? a.u.i : a.u.b, y = b.type == TP_INT ? b.u.i : b.u.b;
		return x == y;
	}
	if (a.type != b.type)
		return 0;
	switch (a.type) {
	case TP_UNDEF:
	case TP_NONE: return 1;
	case TP_STR: return a.u.s.len == b.u.s.len && memcmp(a.u.s.s, b.u.s.s, a.u.s.len) == 0;
	case TP_LIST:
		if ((a.u.l->lazy || b.u.l->lazy) && !(a.u.l->lazy == LAZY_RANGE && b.u.l->lazy == LAZY_RANGE))
			return a.u.l == b.u.l; /* an iterator or a view equals only itself, a range only a range */
		if (a.u.l->n != b.u.l->n || a.u.l->tuple != b.u.l->tuple)
			return 0;
		for (uint32_t i = 0; i < a.u.l->n; i++)
			if (!equal_at(a.u.l->v[i], b.u.l->v[i], depth + 1))
				return 0;
		return 1;
	case TP_DICT:
		if (a.u.d->n != b.u.d->n)
			return 0;
		for (uint32_t i = 0; i < a.u.d->n; i++) {
			struct tp_val *o = tp_dict_get(b.u.d, a.u.d->k[i]);
			if (!o || !equal_at(a.u.d->v[i], *o, depth + 1))
				return 0;
		}
		return 1;
	case TP_NS: return a.u.d == b.u.d;
	case TP_MACRO: return a.u.m == b.u.m;
	case TP_FUNC: return a.u.fn == b.u.fn;
	case TP_LOOP: return a.u.loop == b.u.loop;
	}
	return 0;
}

const char *tp_type_name(struct tp_val v)
{
	static const char *names[] = { "Undefined", "NoneType", "bool",      "int",      "float", "str",
				       "list",      "dict",     "Namespace", "Macro", "function", "LoopContext" };
	if (v.type == TP_LIST && v.u.l->tuple)
		return "tuple";
	return names[v.type];
}

/* Python's repr of a float: the shortest digits that read back the same,
 * in fixed notation for exponents from -4 to 15, else scientific. */
void tp_float_repr(char *buf, size_t n, double f)
{
	if (isnan(f)) {
		snprintf(buf, n, "nan");
		return;
	}
	if (isinf(f)) {
		snprintf(buf, n, f < 0 ? "-inf" : "inf");
		return;
	}
	char tmp[40];
	int p;
	for (p = 1; p <= 17; p++) {
		snprintf(tmp, sizeof tmp, "%.*e", p - 1, f);
		if (strtod(tmp, NULL) == f)
			break;
	}
	/* tmp is [-]d[.ddd]e[+-]XX */
	char digits[24];
	int nd = 0, neg = tmp[0] == '-';
	const char *q = tmp + neg;
	for (; *q && *q != 'e'; q++)
		if (*q != '.')
			digits[nd++] = *q;
	digits[nd] = 0;
	int exp = atoi(q + 1);
	while (nd > 1 && digits[nd - 1] == '0')
		digits[--nd] = 0;
	char *o = buf;
	size_t left = n;
#define PUT(...)                                                                                                       \
	do {                                                                                                           \
		int k_ = snprintf(o, left, __VA_ARGS__);                                                               \
		if (k_ > 0 && (size_t)k_ < left) {                                                                      \
			o += k_;                                                                                       \
			left -= (size_t)k_;                                                                            \
		}                                                                                                      \
	} while (0)
	if (neg)
		PUT("-");
	if (exp < -4 || exp >= 16) {
		PUT("%c", digits[0]);
		if (nd > 1)
			PUT(".%s", digits + 1);
		PUT("e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
	} else if (exp < 0) {
		PUT("0.");
		for (int i = -1; i > exp; i--)
			PUT("0");
		PUT("%s", digits);
	} else {
		for (int i = 0; i <= exp; i++)
			PUT("%c", i < nd ? digits[i] : '0');
		PUT(".");
		if (nd > exp + 1)
			PUT("%s", digits + exp + 1);
		else
			PUT("0");
	}
#undef PUT
}

static void put_c(struct tp_arena *a, struct tp_sb *b, const char *s, struct tp_org o) { tp_sb_put(a, b, s, strlen(s), o); }

static void repr_str(struct tp_arena *a, struct tp_sb *b, struct tp_str s, struct tp_org o)
{
	/* Python picks double quotes only when the text has ' and no ". */
	int sq = memchr(s.s, '\'', s.len) != NULL, dq = memchr(s.s, '"', s.len) != NULL;
	char q = sq && !dq ? '"' : '\'';
	tp_sb_put(a, b, &q, 1, o);
	uint32_t i = 0;
	while (i < s.len) {
		unsigned char c = (unsigned char)s.s[i];
		char esc[16];
		const char *e = NULL;
		if (c == '\\')
			e = "\\\\";
		else if (c == (unsigned char)q)
			e = q == '\'' ? "\\'" : "\\\"";
		else if (c == '\n')
			e = "\\n";
		else if (c == '\r')
			e = "\\r";
		else if (c == '\t')
			e = "\\t";
		else if (c < 0x20 || c == 0x7f) {
			snprintf(esc, sizeof esc, "\\x%02x", c);
			e = esc;
		}
		if (e) {
			tp_sb_put(a, b, e, strlen(e), tp_str_org(s, i));
			i++;
			continue;
		}
		if (c >= 0x80) {
			/* str.isprintable(): other, separator (but ' ') and unassigned
			 * characters are escaped as \xNN, \uNNNN or \UNNNNNNNN */
			utf8proc_int32_t cp;
			utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s.s + i, s.len - i, &cp);
			if (k <= 0) {
				tp_sb_sub(a, b, s, i, i + 1);
				i++;
				continue;
			}
			utf8proc_category_t cat = utf8proc_category(cp);
			if (cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF || cat == UTF8PROC_CATEGORY_CS ||
			    cat == UTF8PROC_CATEGORY_CO || cat == UTF8PROC_CATEGORY_CN || cat == UTF8PROC_CATEGORY_ZL ||
			    cat == UTF8PROC_CATEGORY_ZP || cat == UTF8PROC_CATEGORY_ZS) {
				if (cp <= 0xff)
					snprintf(esc, sizeof esc, "\\x%02x", (unsigned)cp);
				else if (cp <= 0xffff)
					snprintf(esc, sizeof esc, "\\u%04x", (unsigned)cp);
				else
					snprintf(esc, sizeof esc, "\\U%08x", (unsigned)cp);
				tp_sb_put(a, b, esc, strlen(esc), tp_str_org(s, i));
			} else
				tp_sb_sub(a, b, s, i, i + (uint32_t)k);
			i += (uint32_t)k;
			continue;
		}
		uint32_t j = i;
		while (j < s.len) {
			unsigned char d = (unsigned char)s.s[j];
			if (d == '\\' || d == (unsigned char)q || d < 0x20 || d >= 0x7f)
				break;
			j++;
		}
		tp_sb_sub(a, b, s, i, j);
		i = j;
	}
	tp_sb_put(a, b, &q, 1, o);
}

static void text_of(struct tp_arena *a, struct tp_sb *b, struct tp_val v, int repr, int depth)
{
	char buf[64];
	/* Python stops at its recursion limit too; values nest only as deep
	 * as a template loop wraps them ({% set x = [x] %}). */
	if (depth > 500)
		tp_fail(a, EXIT_USAGE, "value nested too deep to print");
	switch (v.type) {
	case TP_UNDEF:
		if (repr)
			put_c(a, b, "Undefined", v.o);
		return;
	case TP_NONE: put_c(a, b, "None", v.o); return;
	case TP_BOOL: put_c(a, b, v.u.b ? "True" : "False", v.o); return;
	case TP_INT:
		snprintf(buf, sizeof buf, "%lld", (long long)v.u.i);
		put_c(a, b, buf, v.o);
		return;
	case TP_FLOAT:
		tp_float_repr(buf, sizeof buf, v.u.f);
		put_c(a, b, buf, v.o);
		return;
	case TP_STR:
		if (repr && v.markup)
			put_c(a, b, "Markup(", v.o);
		if (repr)
			repr_str(a, b, v.u.s, v.o);
		else
			tp_sb_str(a, b, v.u.s);
		if (repr && v.markup)
			put_c(a, b, ")", v.o);
		return;
	case TP_LIST: {
		static const char *const views[] = {[LAZY_ITEMS] = "dict_items(", [LAZY_KEYS] = "dict_keys(",
						    [LAZY_VALUES] = "dict_values("};
		struct tp_list *l = v.u.l;
		if (tp_unprintable(v))
			tp_fail(a, EXIT_USAGE, "%s", tp_unprintable(v));
		if (l->lazy == LAZY_RANGE) {
			char rb[96];
			if (l->range[2] == 1)
				snprintf(rb, sizeof rb, "range(%lld, %lld)", (long long)l->range[0], (long long)l->range[1]);
			else
				snprintf(rb, sizeof rb, "range(%lld, %lld, %lld)", (long long)l->range[0],
					 (long long)l->range[1], (long long)l->range[2]);
			put_c(a, b, rb, v.o);
			return;
		}
		if (l->lazy)
			put_c(a, b, views[l->lazy], v.o);
		put_c(a, b, l->tuple ? "(" : "[", v.o);
		for (uint32_t i = 0; i < l->n; i++) {
			if (i)
				put_c(a, b, ", ", v.o);
			text_of(a, b, l->v[i], 1, depth + 1);
		}
		if (l->tuple && l->n == 1)
			put_c(a, b, ",", v.o);
		put_c(a, b, l->tuple ? ")" : "]", v.o);
		if (l->lazy)
			put_c(a, b, ")", v.o);
		return;
	}
	case TP_DICT: {
		struct tp_dict *d = v.u.d;
		put_c(a, b, "{", v.o);
		for (uint32_t i = 0; i < d->n; i++) {
			if (i)
				put_c(a, b, ", ", v.o);
			text_of(a, b, d->k[i], 1, depth + 1);
			put_c(a, b, ": ", v.o);
			text_of(a, b, d->v[i], 1, depth + 1);
		}
		put_c(a, b, "}", v.o);
		return;
	}
	case TP_NS: put_c(a, b, "<Namespace>", v.o); return;
	case TP_MACRO: put_c(a, b, "<Macro>", v.o); return;
	case TP_FUNC: put_c(a, b, "<function>", v.o); return;
	case TP_LOOP: put_c(a, b, "<LoopContext>", v.o); return;
	}
}

const char *tp_unprintable(struct tp_val v)
{
	if (v.type != TP_LIST)
		return NULL;
	if (v.u.l->lazy == LAZY_GEN) /* <generator object ... at 0x7f...> */
		return "printing a generator (map, select, reverse ...) is not supported: jinja2 prints its address; "
		       "add | list";
	return NULL;
}

void tp_str_of(struct tp_arena *a, struct tp_sb *b, struct tp_val v) { text_of(a, b, v, 0, 0); }
void tp_repr_of(struct tp_arena *a, struct tp_sb *b, struct tp_val v) { text_of(a, b, v, 1, 0); }

static uint32_t utf8_next(const char *s, uint32_t n, uint32_t *i)
{
	unsigned char c = (unsigned char)s[*i];
	uint32_t cp, k;
	if (c < 0x80) {
		(*i)++;
		return c;
	}
	if ((c & 0xe0) == 0xc0)
		cp = c & 0x1f, k = 1;
	else if ((c & 0xf0) == 0xe0)
		cp = c & 0x0f, k = 2;
	else if ((c & 0xf8) == 0xf0)
		cp = c & 0x07, k = 3;
	else {
		(*i)++;
		return 0xfffd;
	}
	(*i)++;
	while (k-- && *i < n && ((unsigned char)s[*i] & 0xc0) == 0x80)
		cp = (cp << 6) | ((unsigned char)s[(*i)++] & 0x3f);
	return cp;
}

/* json.dumps' escape of the byte c (into esc), or NULL when it stands as
 * it is (every byte of a multi-byte character, with ensure_ascii off). */
static const char *json_escape(unsigned char c, char esc[8])
{
	switch (c) {
	case '"': return "\\\"";
	case '\\': return "\\\\";
	case '\n': return "\\n";
	case '\r': return "\\r";
	case '\t': return "\\t";
	case '\b': return "\\b";
	case '\f': return "\\f";
	default:
		if (c >= 0x20)
			return NULL;
		snprintf(esc, 8, "\\u%04x", c);
		return esc;
	}
}

size_t tmpl_json_text(const char *s, size_t n, char *out)
{
	char *o = out, esc[8];
	*o++ = '"';
	for (size_t i = 0; i < n; i++) {
		const char *e = json_escape((unsigned char)s[i], esc);
		if (e) {
			size_t k = strlen(e);
			memcpy(o, e, k), o += k;
		} else {
			*o++ = s[i];
		}
	}
	*o++ = '"';
	return (size_t)(o - out);
}

static void json_str(struct tp_arena *a, struct tp_sb *b, struct tp_str s, struct tp_org o, int ascii)
{
	tp_sb_put(a, b, "\"", 1, o);
	uint32_t i = 0;
	while (i < s.len) {
		unsigned char c = (unsigned char)s.s[i];
		char esc[16];
		const char *e = json_escape(c, esc);
		uint32_t at = i;
		if (!e && c >= 0x80 && ascii) {
			uint32_t cp = utf8_next(s.s, s.len, &i);
			if (cp >= 0x10000) {
				cp -= 0x10000;
				snprintf(esc, sizeof esc, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
			} else
				snprintf(esc, sizeof esc, "\\u%04x", cp);
			tp_sb_put(a, b, esc, strlen(esc), tp_str_org(s, at));
			continue;
		}
		if (e) {
			tp_sb_put(a, b, e, strlen(e), tp_str_org(s, at));
			i++;
			continue;
		}
		uint32_t j = i;
		while (j < s.len) {
			unsigned char d = (unsigned char)s.s[j];
			if (d == '"' || d == '\\' || d < 0x20 || (d >= 0x80 && ascii))
				break;
			j++;
		}
		tp_sb_sub(a, b, s, i, j);
		i = j;
	}
	tp_sb_put(a, b, "\"", 1, o);
}

static void json_nl(struct tp_arena *a, struct tp_sb *b, const struct json_opts *jo, int depth, struct tp_org o)
{
	tp_sb_put(a, b, "\n", 1, o);
	for (int i = 0; i < depth; i++)
		put_c(a, b, jo->indent, o);
}

static int key_cmp(const void *x, const void *y)
{
	const struct tp_val *p = *(const struct tp_val *const *)x, *q = *(const struct tp_val *const *)y;
	if (p->type != TP_STR || q->type != TP_STR)
		return 0;
	uint32_t n = p->u.s.len < q->u.s.len ? p->u.s.len : q->u.s.len;
	int c = memcmp(p->u.s.s, q->u.s.s, n);
	return c ? c : (p->u.s.len > q->u.s.len) - (p->u.s.len < q->u.s.len);
}

int tp_json_of(struct tp_arena *a, struct tp_sb *b, struct tp_val v, const struct json_opts *jo, int depth,
	       const char **why)
{
	char buf[64];
	if (depth > 200) {
		*why = "nested too deep";
		return -1;
	}
	switch (v.type) {
	case TP_NONE: put_c(a, b, "null", v.o); return 0;
	case TP_BOOL: put_c(a, b, v.u.b ? "true" : "false", v.o); return 0;
	case TP_INT:
		snprintf(buf, sizeof buf, "%lld", (long long)v.u.i);
		put_c(a, b, buf, v.o);
		return 0;
	case TP_FLOAT:
		if (isnan(v.u.f))
			snprintf(buf, sizeof buf, "NaN");
		else if (isinf(v.u.f))
			snprintf(buf, sizeof buf, v.u.f < 0 ? "-Infinity" : "Infinity");
		else
			tp_float_repr(buf, sizeof buf, v.u.f);
		put_c(a, b, buf, v.o);
		return 0;
	case TP_STR: json_str(a, b, v.u.s, v.o, jo->ensure_ascii); return 0;
	case TP_LIST: {
		struct tp_list *l = v.u.l;
		if (l->lazy) {
			*why = l->lazy == LAZY_GEN     ? "Object of type generator is not JSON serializable"
			       : l->lazy == LAZY_RANGE ? "Object of type range is not JSON serializable"
						       : "Object of type dict_items (keys, values) is not JSON serializable";
			return -1;
		}
		if (l->n == 0) {
			put_c(a, b, "[]", v.o);
			return 0;
		}
		put_c(a, b, "[", v.o);
		for (uint32_t i = 0; i < l->n; i++) {
			if (i)
				put_c(a, b, jo->item_sep, v.o);
			if (jo->indent)
				json_nl(a, b, jo, depth + 1, v.o);
			if (tp_json_of(a, b, l->v[i], jo, depth + 1, why) < 0)
				return -1;
		}
		if (jo->indent)
			json_nl(a, b, jo, depth, v.o);
		put_c(a, b, "]", v.o);
		return 0;
	}
	case TP_DICT:
	case TP_NS: {
		struct tp_dict *d = v.u.d;
		if (v.type == TP_NS) {
			*why = "Object of type Namespace is not JSON serializable";
			return -1;
		}
		if (d->n == 0) {
			put_c(a, b, "{}", v.o);
			return 0;
		}
		struct tp_val **keys = tp_alloc(a, d->n * sizeof *keys);
		for (uint32_t i = 0; i < d->n; i++)
			keys[i] = &d->k[i];
		if (jo->sort_keys)
			qsort(keys, d->n, sizeof *keys, key_cmp);
		put_c(a, b, "{", v.o);
		for (uint32_t i = 0; i < d->n; i++) {
			struct tp_val k = *keys[i], val = d->v[keys[i] - d->k];
			if (i)
				put_c(a, b, jo->item_sep, v.o);
			if (jo->indent)
				json_nl(a, b, jo, depth + 1, v.o);
			if (k.type == TP_STR)
				json_str(a, b, k.u.s, k.o, jo->ensure_ascii);
			else if (k.type == TP_NONE || k.type == TP_BOOL || k.type == TP_INT || k.type == TP_FLOAT) {
				struct tp_sb t = { 0 };
				if (tp_json_of(a, &t, k, jo, depth + 1, why) < 0)
					return -1;
				tp_sb_put(a, b, "\"", 1, k.o);
				tp_sb_str(a, b, tp_sb_done(&t));
				tp_sb_put(a, b, "\"", 1, k.o);
			} else {
				*why = "keys must be str, int, float, bool or None";
				return -1;
			}
			put_c(a, b, jo->key_sep, v.o);
			if (tp_json_of(a, b, val, jo, depth + 1, why) < 0)
				return -1;
		}
		if (jo->indent)
			json_nl(a, b, jo, depth, v.o);
		put_c(a, b, "}", v.o);
		return 0;
	}
	default: *why = v.type == TP_UNDEF ? "Object of type Undefined is not JSON serializable" : "value is not JSON serializable"; return -1;
	}
}

/* JSON has one number type; json.loads makes a float of "1.0" or "1e3" and
 * an int of "1". A jd keeps the double and whether it was written as a
 * float: such a number is a float, else a whole number in int64 range is an
 * int. */
struct tp_str tp_str_borrowed(struct tp_arena *a, const struct jd *s, struct tp_org o)
{
	if (s->n == 0)
		return tp_str_lit(a, s->u.s, 0, o);
	struct tp_orun *run = tp_alloc(a, sizeof *run);
	run->end = s->n;
	run->o = o;
	return (struct tp_str){ s->u.s, s->n, 1, run };
}

/* s as a string of origin o: its bytes copied into a, or (borrow) not. */
static struct tp_str str_from_jd(struct tp_arena *a, const struct jd *s, struct tp_org o, int borrow)
{
	return borrow ? tp_str_borrowed(a, s, o) : tp_str_lit(a, s->u.s, s->n, o);
}

static struct tp_val from_jd(struct tp_arena *a, const struct jd *v, struct tp_org o, int borrow)
{
	struct tp_val r = tp_mk_none();
	switch (v->kind) {
	case JD_TRUE: r = tp_mk_bool(1); break;
	case JD_FALSE: r = tp_mk_bool(0); break;
	case JD_NUMBER: {
		double d = v->u.num;
		if (v->exact)
			r = tp_mk_int(v->u.i);
		else if (!v->is_float && d == floor(d) && fabs(d) < 9.2e18)
			r = tp_mk_int((int64_t)d);
		else
			r = tp_mk_float(d);
		break;
	}
	case JD_STRING: r = tp_mk_str(str_from_jd(a, v, o, borrow)); break;
	case JD_ARRAY:
		r = tp_mk_list(a, v->n, 0);
		for (uint32_t i = 0; i < v->n; i++)
			r.u.l->v[i] = from_jd(a, &v->u.items[i], o, borrow);
		break;
	case JD_OBJECT:
		r = tp_mk_dict(a);
		tp_dict_reserve(a, r.u.d, v->n);
		/* in document order, as json.loads keeps them */
		for (uint32_t i = 0; i < v->n; i++) {
			const struct jd_member *m = &v->u.members[i];
			struct tp_val kv = tp_mk_str(str_from_jd(a, &m->key, o, borrow));
			kv.o = o;
			tp_dict_push(a, r.u.d, kv, from_jd(a, &m->val, o, borrow));
		}
		break;
	default: break;
	}
	r.o = o;
	return r;
}

struct tp_val tp_from_jd(struct tp_arena *a, const struct jd *v, struct tp_org o) { return from_jd(a, v, o, 0); }

struct tp_val tp_from_jd_borrowed(struct tp_arena *a, const struct jd *v, struct tp_org o)
{
	return from_jd(a, v, o, 1);
}
