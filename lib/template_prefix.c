/* template_prefix: which loop of a template may lend its turns to the
 * renderings of a conversation's prefixes.
 *
 * ds-fmt renders each conversation once whole and once more up to each
 * learned turn. A turn the whole rendering printed inside the loop over the
 * messages comes out the same in a prefix's rendering when nothing it read
 * differs between the two: then the prefix's rendering copies it instead of
 * running it again (template_eval.c records and checks what each turn read).
 * That check is sound only if the list of messages can reach the template's
 * code in ways the evaluator watches. This file finds, from the syntax tree
 * alone, whether that holds and which loop is the one:
 *
 *   - the names that hold the messages ("tracked"): messages itself and every
 *     name set only to a tracked name or to one sliced from a constant
 *     start, `{% set loop_messages = messages[1:] %}`;
 *   - a tracked name appears only subscripted (`messages[i]`, the index
 *     seen when it is evaluated), under `| length` or `| count`, as such a
 *     set's value, or as what the loop iterates;
 *   - `loop` appears only as `loop.x` or `loop['x']`;
 *   - exactly one `for` iterates a tracked name or its constant slice, with
 *     one target, no filter, not recursive, and outside every for, macro,
 *     call, capture, with and generation block, so that it runs at most
 *     once and prints straight to the output.
 *
 * Anything else (`messages | map(...)`, `messages[::-1]`, a macro taking
 * messages, a second such loop) leaves the template without the shortcut:
 * every prefix is rendered in full, as before.
 */
#include <stdlib.h>
#include <string.h>

#include "template_impl.h"

struct plan {
	const char **tracked;
	uint32_t n, cap;
	const struct tp_stmt *loop;
	int loops, ok;
};

static int tracked(const struct plan *p, const char *name)
{
	for (uint32_t i = 0; i < p->n; i++)
		if (!strcmp(p->tracked[i], name))
			return 1;
	return 0;
}

static int is_tracked_name(const struct plan *p, const struct tp_node *n)
{
	return n && n->kind == N_NAME && tracked(p, n->name);
}

/* A tracked name, or one sliced [K:] with K a constant >= 0. */
static int tracked_value(const struct plan *p, const struct tp_node *n)
{
	if (is_tracked_name(p, n))
		return 1;
	return n && n->kind == N_SLICE && is_tracked_name(p, n->a) && !n->c && (!n->nargs || !n->args[0]) &&
	       (!n->b || (n->b->kind == N_LIT && n->b->lit.type == TP_INT && n->b->lit.u.i >= 0));
}

/* ---- the tracked names: a fixed point over every {% set name = ... %} ---- */

static int grow(struct plan *p, const struct tp_stmt *s)
{
	int added = 0;
	for (; s; s = s->next) {
		if (s->kind == S_SET && s->target->kind == N_NAME && !tracked(p, s->target->name) &&
		    tracked_value(p, s->e) && p->n < p->cap) {
			p->tracked[p->n++] = s->target->name;
			added = 1;
		}
		added |= grow(p, s->body);
		added |= grow(p, s->orelse);
	}
	return added;
}

/* ---- every use of a tracked name or of loop ---- */

static void expr(struct plan *p, const struct tp_node *n)
{
	if (!n || !p->ok)
		return;
	switch (n->kind) {
	case N_NAME:
		if (tracked(p, n->name) || !strcmp(n->name, "loop"))
			p->ok = 0; /* the list or the loop itself, handed on */
		return;
	case N_SUB:
		if (n->a->kind == N_NAME && (tracked(p, n->a->name) || !strcmp(n->a->name, "loop"))) {
			expr(p, n->b);
			return;
		}
		break;
	case N_ATTR:
		if (n->a->kind == N_NAME && !strcmp(n->a->name, "loop"))
			return;
		break;
	case N_FILTER:
		if (is_tracked_name(p, n->a) && !n->nargs && (!strcmp(n->name, "length") || !strcmp(n->name, "count")))
			return;
		break;
	default: break;
	}
	expr(p, n->a);
	expr(p, n->b);
	expr(p, n->c);
	for (uint32_t i = 0; i < n->nargs; i++)
		expr(p, n->args[i]);
}

static void names(struct plan *p, const char *const *v, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if (v[i] && tracked(p, v[i]))
			p->ok = 0;
}

static void defaults(struct plan *p, const struct tp_stmt *s)
{
	if (s->defaults)
		for (uint32_t i = 0; i < s->nnames; i++)
			expr(p, s->defaults[i]);
}

/* top: s runs at most once, straight into the output (the body, or an if's branches there) */
static void stmts(struct plan *p, const struct tp_stmt *s, int top)
{
	for (; s && p->ok; s = s->next) {
		switch (s->kind) {
		case S_TEXT:
		case S_BREAK:
		case S_CONTINUE: break;
		case S_OUT: expr(p, s->e); break;
		case S_IF:
			expr(p, s->cond);
			stmts(p, s->body, top);
			stmts(p, s->orelse, top);
			break;
		case S_FOR:
			names(p, s->names, s->nnames);
			if (tracked_value(p, s->e)) {
				p->loops++;
				if (!top || s->cond || s->recursive || s->nnames != 1)
					p->ok = 0;
				p->loop = s;
			} else {
				expr(p, s->e);
			}
			expr(p, s->cond);
			stmts(p, s->body, 0);
			stmts(p, s->orelse, 0);
			break;
		case S_SET:
			if (s->target->kind == N_NAME && tracked(p, s->target->name)) {
				if (!tracked_value(p, s->e))
					p->ok = 0;
				break; /* the value is the list itself, or its slice */
			}
			if (s->target->kind == N_TUPLE)
				for (uint32_t i = 0; i < s->target->nargs; i++)
					if (s->target->args[i]->kind == N_NAME && tracked(p, s->target->args[i]->name))
						p->ok = 0;
			if (s->target->kind == N_ATTR)
				expr(p, s->target->a);
			expr(p, s->e);
			break;
		case S_SETBLOCK:
			names(p, &s->name, 1);
			expr(p, s->e);
			stmts(p, s->body, 0);
			break;
		case S_MACRO:
			names(p, &s->name, 1);
			names(p, s->names, s->nnames);
			defaults(p, s);
			stmts(p, s->body, 0);
			break;
		case S_CALLBLOCK:
			names(p, s->names, s->nnames);
			defaults(p, s);
			expr(p, s->e);
			stmts(p, s->body, 0);
			break;
		case S_FILTERBLOCK:
			expr(p, s->e);
			stmts(p, s->body, 0);
			break;
		case S_WITH:
			names(p, s->names, s->nnames);
			defaults(p, s);
			stmts(p, s->body, 0);
			break;
		case S_GEN: stmts(p, s->body, 0); break;
		default: p->ok = 0;
		}
	}
}

static uint32_t count_sets(const struct tp_stmt *s)
{
	uint32_t n = 0;
	for (; s; s = s->next)
		n += (s->kind == S_SET) + count_sets(s->body) + count_sets(s->orelse);
	return n;
}

const struct tp_stmt *tp_prefix_loop(const struct tp_stmt *body)
{
	struct plan p = { .cap = count_sets(body) + 1, .ok = 1 };
	p.tracked = malloc(p.cap * sizeof *p.tracked);
	if (!p.tracked)
		return NULL; /* no shortcut: every prefix rendered in full */
	p.tracked[p.n++] = "messages";
	while (grow(&p, body))
		;
	stmts(&p, body, 1);
	free(p.tracked);
	return p.ok && p.loops == 1 ? p.loop : NULL;
}
