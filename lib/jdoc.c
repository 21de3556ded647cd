/* jdoc: JSON values in an arena (see jdoc.h). */
#include <stdlib.h>
#include <string.h>

#include "jdoc.h"

#define BLOCK 65536

struct jd_block {
	struct jd_block *next;
	size_t size, used;
	_Alignas(16) char data[];
};

void *jd_alloc(struct jd_arena *a, size_t n)
{
	n = (n + 7) & ~(size_t)7;
	struct jd_block *b = a->head;
	if (a->oom)
		return NULL;
	if (!b || b->size - b->used < n) {
		size_t size = n > BLOCK ? n : BLOCK;
		struct jd_block *nb = malloc(sizeof *nb + size);
		if (!nb) {
			a->oom = 1;
			return NULL;
		}
		nb->size = size, nb->used = 0;
		/* a big block goes behind the current one, whose room stays in use */
		if (b && n > BLOCK) {
			nb->next = b->next;
			b->next = nb;
		} else {
			nb->next = b;
			a->head = nb;
		}
		b = nb;
	}
	void *p = b->data + b->used;
	b->used += n;
	return p;
}

void jd_arena_reset(struct jd_arena *a)
{
	/* keep the newest block of the usual size: a record's values fit in it */
	struct jd_block *keep = a->head && a->head->size == BLOCK ? a->head : NULL, *b = a->head;
	while (b) {
		struct jd_block *next = b->next;
		if (b != keep)
			free(b);
		b = next;
	}
	if (keep)
		keep->used = 0, keep->next = NULL;
	a->head = keep;
	a->oom = a->rounded = 0;
}

void jd_arena_free(struct jd_arena *a)
{
	jd_arena_reset(a);
	free(a->head);
	a->head = NULL;
}

struct jd jd_string(struct jd_arena *a, const char *s, size_t n)
{
	char *p = n < UINT32_MAX ? jd_alloc(a, n + 1) : NULL;
	if (!p) {
		a->oom = 1;
		return jd_null();
	}
	memcpy(p, s, n);
	p[n] = 0;
	return (struct jd){.kind = JD_STRING, .n = (uint32_t)n, .u.s = p};
}

const struct jd *jd_get(const struct jd *o, const char *key)
{
	if (!o || o->kind != JD_OBJECT)
		return NULL;
	size_t n = strlen(key);
	for (uint32_t i = 0; i < o->n; i++) {
		const struct jd *k = &o->u.members[i].key;
		if (k->n == n && k->u.s[0] == key[0] && !memcmp(k->u.s, key, n))
			return &o->u.members[i].val;
	}
	return NULL;
}

int jd_is(const struct jd *s, const char *text)
{
	return s && s->kind == JD_STRING && s->n == strlen(text) && !memcmp(s->u.s, text, s->n);
}

int jd_equal(const struct jd *a, const struct jd *b)
{
	if (a->kind != b->kind)
		return 0;
	switch (a->kind) {
	case JD_NUMBER: return a->exact && b->exact ? a->u.i == b->u.i : jd_num(a) == jd_num(b);
	case JD_STRING: return a->n == b->n && !memcmp(a->u.s, b->u.s, a->n);
	case JD_ARRAY:
		if (a->n != b->n)
			return 0;
		for (uint32_t i = 0; i < a->n; i++)
			if (!jd_equal(&a->u.items[i], &b->u.items[i]))
				return 0;
		return 1;
	case JD_OBJECT:
		if (a->n != b->n)
			return 0;
		for (uint32_t i = 0; i < a->n; i++) {
			const struct jd_member *m = &a->u.members[i];
			const struct jd *v = NULL;
			/* the same place first: objects compared are mostly in the same order */
			if (i < b->n && jd_equal(&m->key, &b->u.members[i].key))
				v = &b->u.members[i].val;
			for (uint32_t j = 0; !v && j < b->n; j++)
				if (jd_equal(&m->key, &b->u.members[j].key))
					v = &b->u.members[j].val;
			if (!v || !jd_equal(&m->val, v))
				return 0;
		}
		return 1;
	default: return 1;
	}
}

/* ---------------------------------------------------------- shared values */

struct jd_shared {
	int refs;
	struct jd value;
	struct jd_arena a;
};

/* v copied into a (deep: all of it; else only its own storage, its parts
 * left where they are); -1 when out of memory. The root's storage (head
 * set) is preceded by a pointer to head, which jd_shared_of reads. */
static int copy_value(struct jd_arena *a, const struct jd *v, struct jd *out, struct jd_shared *head, int deep)
{
	*out = *v;
	out->shared = 0;
	size_t size = v->kind == JD_STRING ? (size_t)v->n + 1
		      : v->kind == JD_ARRAY ? (size_t)v->n * sizeof(struct jd)
		      : v->kind == JD_OBJECT ? (size_t)v->n * sizeof(struct jd_member)
					     : 0;
	if (v->kind != JD_STRING && v->kind != JD_ARRAY && v->kind != JD_OBJECT)
		return 0;
	size_t pre = head ? sizeof head : 0;
	char *p = jd_alloc(a, pre + (size ? size : 1));
	if (!p)
		return -1;
	if (head) {
		memcpy(p, &head, sizeof head);
		p += pre;
		out->shared = 1;
	}
	if (v->kind == JD_STRING) {
		memcpy(p, v->u.s, v->n + 1);
		out->u.s = p;
		return 0;
	}
	if (v->kind == JD_ARRAY) {
		struct jd *items = (struct jd *)(void *)p;
		if (size)
			memcpy(items, v->u.items, size);
		for (uint32_t i = 0; deep && i < v->n; i++)
			if (copy_value(a, &v->u.items[i], &items[i], NULL, 1) < 0)
				return -1;
		out->u.items = items;
		return 0;
	}
	struct jd_member *m = (struct jd_member *)(void *)p;
	if (size)
		memcpy(m, v->u.members, size);
	for (uint32_t i = 0; deep && i < v->n; i++)
		if (copy_value(a, &v->u.members[i].key, &m[i].key, NULL, 1) < 0 ||
		    copy_value(a, &v->u.members[i].val, &m[i].val, NULL, 1) < 0)
			return -1;
	out->u.members = m;
	return 0;
}

int jd_copy(struct jd_arena *a, const struct jd *v, struct jd *out)
{
	if (copy_value(a, v, out, NULL, 1) < 0) {
		a->oom = 1;
		return -1;
	}
	return 0;
}

struct jd_shared *jd_shared_new(const struct jd *v)
{
	struct jd_shared *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->refs = 1;
	if (copy_value(&s->a, v, &s->value, s, 1) < 0) {
		jd_arena_free(&s->a);
		free(s);
		return NULL;
	}
	return s;
}

struct jd_shared *jd_shared_adopt(struct jd_arena *a, const struct jd *v)
{
	struct jd_shared *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->refs = 1;
	s->a = *a;
	*a = (struct jd_arena){0};
	if (copy_value(&s->a, v, &s->value, s, 0) < 0) {
		jd_arena_free(&s->a);
		free(s);
		return NULL;
	}
	return s;
}

const struct jd *jd_shared_value(const struct jd_shared *s) { return &s->value; }

struct jd_shared *jd_shared_of(const struct jd *v)
{
	if (!v->shared || (v->kind != JD_STRING && v->kind != JD_ARRAY && v->kind != JD_OBJECT))
		return NULL;
	struct jd_shared *s;
	memcpy(&s, (const char *)v->u.s - sizeof s, sizeof s);
	return s;
}

struct jd_shared *jd_shared_ref(struct jd_shared *s)
{
	s->refs++;
	return s;
}

void jd_shared_unref(struct jd_shared *s)
{
	if (s && --s->refs == 0) {
		jd_arena_free(&s->a);
		free(s);
	}
}
