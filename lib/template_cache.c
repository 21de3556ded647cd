/* template_cache: converted context values a thread keeps from one context
 * to the next, and what tojson made of them.
 *
 * A data set repeats the same tool list (and the model's special tokens come
 * with every record): when a variable's value is that of the jd_shared block
 * a recent context had under that name (as a jsonl memo hands them out), its
 * converted value is used again; the lower layers likewise while their jv
 * values are the same references (jv_identical).
 * Values are immutable once made (the sandbox refuses in-place changes), so
 * a container's tojson text depends only on the container, the origin its
 * text takes and the options: that text is kept beside the value. Only
 * containers this cache converted are looked up, never one a render made,
 * whose memory a later render may reuse.
 */
#include <stdlib.h>
#include <string.h>

#include "template_impl.h"

#define CACHE_SLOTS 16
#define MEMO_MAX 256 /* tojson texts kept per value */

struct memo_item {
	const void *box; /* the tp_list or tp_dict */
	struct json_opts jo; /* strings copied into the slot's arena */
	struct tp_str text;
};

struct slot {
	char *name; /* "" when free */
	struct jd_shared *src; /* held, so that identity keeps meaning the same value */
	struct tp_arena a;
	struct tp_val v;
	const void **boxes; /* every container of v, sorted (in a) */
	uint32_t nboxes;
	struct memo_item *memo;
	uint32_t nmemo;
	uint64_t used; /* the context that last used it */
};

/* The context's lower layers (tmpl_ctx_new_layered): the special tokens and
 * --var values every record has, converted once. */
struct layers {
	int set;
	jv base, more; /* held, so that identity keeps meaning the same values */
	struct tp_arena a;
	const char **names;
	struct tp_val *vals;
	uint32_t n;
};

struct tmpl_cache {
	struct slot s[CACHE_SLOTS];
	struct layers b;
	uint64_t now;
	unsigned long long hits, json_hits;
};

struct tmpl_cache *tmpl_cache_new(void) { return calloc(1, sizeof(struct tmpl_cache)); }

static void slot_clear(struct slot *s)
{
	if (!s->name)
		return;
	free(s->name);
	jd_shared_unref(s->src);
	tp_arena_free(&s->a); /* boxes too */
	free(s->memo);
	memset(s, 0, sizeof *s);
}

static void layers_clear(struct layers *b)
{
	if (b->set)
		jv_free(b->base), jv_free(b->more);
	tp_arena_free(&b->a);
	memset(b, 0, sizeof *b);
}

void tmpl_cache_free(struct tmpl_cache *c)
{
	if (!c)
		return;
	for (int i = 0; i < CACHE_SLOTS; i++)
		slot_clear(&c->s[i]);
	layers_clear(&c->b);
	free(c);
}

int tp_cache_base(struct tmpl_cache *c, jv base, jv more, const char ***names, struct tp_val **vals, uint32_t *n)
{
	if (!c->b.set || c->b.a.fail || !jv_identical(jv_copy(c->b.base), jv_copy(base)) ||
	    !jv_identical(jv_copy(c->b.more), jv_copy(more)))
		return 0;
	*names = c->b.names, *vals = c->b.vals, *n = c->b.n;
	return 1;
}

struct tp_arena *tp_cache_base_begin(struct tmpl_cache *c, jv base, jv more, jmp_buf *fail, struct err *err)
{
	layers_clear(&c->b);
	c->b.set = 1;
	c->b.base = jv_copy(base), c->b.more = jv_copy(more);
	c->b.a.err = err;
	c->b.a.fail = fail; /* set until tp_cache_base_end: a failure between leaves the layers to clear */
	return &c->b.a;
}

void tp_cache_base_end(struct tmpl_cache *c, const char **names, struct tp_val *vals, uint32_t n)
{
	c->b.names = names, c->b.vals = vals, c->b.n = n;
	c->b.a.fail = NULL;
}

void tmpl_cache_stats(const struct tmpl_cache *c, unsigned long long *hits, unsigned long long *json_hits)
{
	*hits = c ? c->hits : 0;
	*json_hits = c ? c->json_hits : 0;
}

void tp_cache_next(struct tmpl_cache *c) { c->now++; }

static int cmp_ptr(const void *a, const void *b)
{
	const char *x = *(const char *const *)a, *y = *(const char *const *)b;
	return x < y ? -1 : x > y;
}

/* Every container of v into out (NULL: only counted in *n). */
static void list_boxes(struct tp_val v, const void **out, uint32_t *n)
{
	uint32_t k = v.type == TP_LIST ? v.u.l->n : v.type == TP_DICT ? v.u.d->n : 0;
	if (v.type != TP_LIST && v.type != TP_DICT)
		return;
	if (out)
		out[*n] = v.type == TP_LIST ? (const void *)v.u.l : (const void *)v.u.d;
	++*n;
	for (uint32_t i = 0; i < k; i++)
		list_boxes(v.type == TP_LIST ? v.u.l->v[i] : v.u.d->v[i], out, n);
}

int tp_cache_value(struct tmpl_cache *c, const char *name, const struct jd *v, struct tp_val *out, jmp_buf *fail,
		   struct err *err)
{
	struct jd_shared *src = v->kind == JD_ARRAY || v->kind == JD_OBJECT ? jd_shared_of(v) : NULL;
	if (!src)
		return 0;
	struct slot *victim = NULL;
	for (int i = 0; i < CACHE_SLOTS; i++) {
		struct slot *s = &c->s[i];
		if (s->name && s->src == src && !strcmp(s->name, name)) {
			s->used = c->now;
			c->hits++;
			*out = s->v;
			return 1;
		}
		if (s->used != c->now && (!victim || !s->name || (victim->name && s->used < victim->used)))
			victim = s;
	}
	if (!victim)
		return 0;
	slot_clear(victim);
	if (!(victim->name = strdup(name)))
		return 0;
	victim->src = jd_shared_ref(src);
	victim->used = c->now;
	victim->a.err = err;
	victim->a.fail = fail; /* a failure here unwinds the context being made, which clears the slot */
	struct tp_org o = {-1, TMPL_INPUT, victim->name};
	victim->v = tp_from_jd(&victim->a, v, o);
	uint32_t n = 0;
	list_boxes(victim->v, NULL, &n);
	victim->boxes = tp_alloc(&victim->a, (size_t)n * sizeof *victim->boxes);
	victim->nboxes = 0;
	list_boxes(victim->v, victim->boxes, &victim->nboxes);
	qsort(victim->boxes, victim->nboxes, sizeof *victim->boxes, cmp_ptr);
	victim->a.fail = NULL;
	*out = victim->v;
	return 1;
}

void tp_cache_abandon(struct tmpl_cache *c)
{
	if (c->b.a.fail) /* layers being converted */
		layers_clear(&c->b);
	/* A conversion that failed part way: drop every slot this context was making. */
	for (int i = 0; i < CACHE_SLOTS; i++)
		if (c->s[i].name && c->s[i].a.fail)
			slot_clear(&c->s[i]);
}

static const void *box_of(struct tp_val v)
{
	return v.type == TP_LIST ? (const void *)v.u.l : v.type == TP_DICT ? (const void *)v.u.d : NULL;
}

/* The slot holding v's container with the origin the slot gave it (so that
 * the text's origins are the slot's own), or NULL. */
static struct slot *slot_of(struct tmpl_cache *c, struct tp_val v)
{
	const void *box = box_of(v);
	if (!c || !box || v.o.kind != TMPL_INPUT || v.o.msg != -1 || !v.o.var)
		return NULL;
	for (int i = 0; i < CACHE_SLOTS; i++) {
		struct slot *s = &c->s[i];
		if (s->name && v.o.var == s->name && bsearch(&box, s->boxes, s->nboxes, sizeof *s->boxes, cmp_ptr))
			return s;
	}
	return NULL;
}

static int str_eq(const char *a, const char *b) { return a == b || (a && b && !strcmp(a, b)); }

static int opts_eq(const struct json_opts *a, const struct json_opts *b)
{
	return str_eq(a->indent, b->indent) && str_eq(a->item_sep, b->item_sep) && str_eq(a->key_sep, b->key_sep) &&
	       a->sort_keys == b->sort_keys && a->ensure_ascii == b->ensure_ascii;
}

int tp_cache_json_get(struct tmpl_cache *c, struct tp_val v, const struct json_opts *jo, struct tp_str *out)
{
	struct slot *s = slot_of(c, v);
	const void *box = box_of(v);
	for (uint32_t i = 0; s && i < s->nmemo; i++) {
		struct memo_item *m = &s->memo[i];
		if (m->box == box && opts_eq(&m->jo, jo)) {
			*out = m->text;
			c->json_hits++;
			return 1;
		}
	}
	return 0;
}

static const char *keep(struct tp_arena *a, const char *s) { return s ? tp_strndup(a, s, strlen(s)) : NULL; }

struct tp_str tp_cache_json_put(struct tmpl_cache *c, struct tp_val v, const struct json_opts *jo, struct tp_str text,
				jmp_buf *fail, struct err *err)
{
	struct slot *s = slot_of(c, v);
	if (!s || s->nmemo >= MEMO_MAX)
		return text;
	if (!s->memo && !(s->memo = malloc(MEMO_MAX * sizeof *s->memo)))
		return text;
	/* Copied into the slot's arena, origins and all; a failure there
	 * (memory) unwinds the render, leaving the slot as it was. */
	s->a.fail = fail, s->a.err = err;
	struct memo_item m = {box_of(v), *jo, text};
	m.jo.indent = keep(&s->a, jo->indent);
	m.jo.item_sep = keep(&s->a, jo->item_sep);
	m.jo.key_sep = keep(&s->a, jo->key_sep);
	struct tp_sb b = {0};
	tp_sb_str(&s->a, &b, text);
	m.text = tp_sb_done(&b);
	s->a.fail = NULL;
	s->memo[s->nmemo++] = m;
	return m.text;
}
