/* template_parse: Jinja2's lexer and parser, for the environment transformers
 * builds (trim_blocks, lstrip_blocks, keep_trailing_newline off, the
 * loopcontrols and generation extensions). The grammar and precedence are
 * Jinja 3.1's: filters and tests bind tighter than arithmetic, `~` sits
 * between + and *, comparisons chain. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "template_impl.h"

enum tk { T_TEXT, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME, T_STRING, T_INT, T_FLOAT, T_OP, T_EOF };

struct tok {
	uint8_t kind;
	int line;
	const char *s; /* T_NAME, T_OP (NUL-terminated); T_TEXT/T_STRING: bytes */
	size_t n;
	int64_t i;
	double f;
};

static uint64_t hash_name(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
	return h;
}

struct parser {
	struct tmpl *t;
	struct tp_arena *a;
	const char *src;
	size_t len;
	struct tok *toks;
	size_t ntok, cap, pos;
	int nest; /* expression and tag nesting, bounded to keep the C stack small */
	const char **names; /* every distinct name once (a hash set): see intern */
	uint32_t nnames, ncap;
};

/* The one copy of the name s[0..n): the evaluator finds a variable by
 * comparing pointers first, so the names a template sets and reads are
 * the same string. */
static const char *intern(struct parser *p, const char *s, size_t n)
{
	if (2 * (p->nnames + 1) > p->ncap) {
		uint32_t cap = p->ncap ? 2 * p->ncap : 64;
		const char **t = tp_alloc(p->a, cap * sizeof *t);
		for (uint32_t i = 0; i < p->ncap; i++) {
			if (!p->names[i])
				continue;
			uint32_t h = (uint32_t)(hash_name(p->names[i], strlen(p->names[i])) & (cap - 1));
			while (t[h])
				h = (h + 1) & (cap - 1);
			t[h] = p->names[i];
		}
		p->names = t, p->ncap = cap;
	}
	uint32_t h = (uint32_t)(hash_name(s, n) & (p->ncap - 1));
	for (; p->names[h]; h = (h + 1) & (p->ncap - 1))
		if (!strncmp(p->names[h], s, n) && p->names[h][n] == 0)
			return p->names[h];
	p->nnames++;
	return p->names[h] = tp_strndup(p->a, s, n);
}

_Noreturn static void perr(struct parser *p, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void perr(struct parser *p, int line, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	tp_fail_at(p->a, p->t->name, line, fmt, ap);
}

static struct tok *push(struct parser *p, int kind, int line)
{
	if (p->ntok == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 256;
		p->toks = tp_realloc(p->a, p->toks, p->ntok * sizeof *p->toks, cap * sizeof *p->toks);
		p->cap = cap;
	}
	struct tok *k = &p->toks[p->ntok++];
	memset(k, 0, sizeof *k);
	k->kind = (uint8_t)kind;
	k->line = line;
	return k;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
static int is_id0(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* Python's str.splitlines + "\n".join: every line break becomes "\n" and one
 * trailing newline goes (keep_trailing_newline=False). */
static void normalize(struct parser *p, const char *src, size_t len)
{
	char *o = tp_alloc(p->a, len + 1);
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)src[i];
		if (c == '\r') {
			if (i + 1 < len && src[i + 1] == '\n')
				i++;
			o[n++] = '\n';
		} else if (c == '\v' || c == '\f' || c == 0x1c || c == 0x1d || c == 0x1e) {
			o[n++] = '\n';
		} else if (c == 0xc2 && i + 1 < len && (unsigned char)src[i + 1] == 0x85) {
			i++;
			o[n++] = '\n';
		} else if (c == 0xe2 && i + 2 < len && (unsigned char)src[i + 1] == 0x80 &&
			   ((unsigned char)src[i + 2] == 0xa8 || (unsigned char)src[i + 2] == 0xa9)) {
			i += 2;
			o[n++] = '\n';
		} else
			o[n++] = (char)c;
	}
	if (n && o[n - 1] == '\n')
		n--;
	o[n] = 0;
	p->src = o;
	p->len = n;
}

static int line_at(struct parser *p, size_t pos, size_t *lpos, int *lline)
{
	for (size_t i = *lpos; i < pos; i++)
		if (p->src[i] == '\n')
			(*lline)++;
	*lpos = pos;
	return *lline;
}

static const char *ops3[] = { "//", "**", "==", "!=", "<=", ">=", NULL };
static const char ops1[] = "+-*/%~()[]{}.,:|<>=";

/* Lexes the expression inside a tag from *pos; stops after the closing
 * delimiter and returns its strip mode: 0 none, '-' strip, '+' keep. */
static int lex_expr(struct parser *p, size_t *pos, int is_var, int *line, size_t *lpos)
{
	const char *s = p->src;
	size_t i = *pos;
	int depth = 0;
	for (;;) {
		while (i < p->len && is_ws(s[i]))
			i++;
		if (i >= p->len)
			perr(p, line_at(p, i, lpos, line), "unexpected end of template, expected '%s'", is_var ? "}}" : "%}");
		int ln = line_at(p, i, lpos, line);
		char c = s[i];
		const char *end = is_var ? "}}" : "%}";
		if (depth == 0) {
			if ((c == '-' || c == '+') && i + 2 < p->len + 1 && strncmp(s + i + 1, end, 2) == 0) {
				*pos = i + 3;
				return c;
			}
			if (strncmp(s + i, end, 2) == 0) {
				*pos = i + 2;
				return 0;
			}
		}
		if (is_id0(c)) {
			size_t j = i;
			while (j < p->len && (is_id0(s[j]) || is_digit(s[j])))
				j++;
			struct tok *k = push(p, T_NAME, ln);
			k->s = intern(p, s + i, j - i);
			k->n = j - i;
			i = j;
		} else if (is_digit(c)) {
			size_t j = i;
			int fl = 0;
			while (j < p->len && (is_digit(s[j]) || s[j] == '_'))
				j++;
			if (j + 1 < p->len && s[j] == '.' && is_digit(s[j + 1])) {
				fl = 1;
				j++;
				while (j < p->len && (is_digit(s[j]) || s[j] == '_'))
					j++;
			}
			if (j < p->len && (s[j] == 'e' || s[j] == 'E') &&
			    (is_digit(s[j + 1]) || ((s[j + 1] == '+' || s[j + 1] == '-') && is_digit(s[j + 2])))) {
				fl = 1;
				j += 2;
				while (j < p->len && is_digit(s[j]))
					j++;
			}
			char buf[128];
			size_t n = 0;
			for (size_t q = i; q < j && n < sizeof buf - 1; q++)
				if (s[q] != '_')
					buf[n++] = s[q];
			buf[n] = 0;
			struct tok *k = push(p, fl ? T_FLOAT : T_INT, ln);
			if (fl)
				k->f = strtod(buf, NULL);
			else {
				char *e;
				unsigned long long v = strtoull(buf, &e, 10);
				if (n > 18 || v > INT64_MAX)
					perr(p, ln, "integer literal too large");
				k->i = (int64_t)v;
			}
			i = j;
		} else if (c == '\'' || c == '"') {
			/* Python string escapes, as Jinja reads them. */
			char *o = tp_alloc(p->a, p->len - i + 1);
			size_t n = 0, j = i + 1;
			for (;;) {
				if (j >= p->len)
					perr(p, ln, "unterminated string");
				char d = s[j];
				if (d == c) {
					j++;
					break;
				}
				if (d == '\\' && j + 1 < p->len) {
					char e = s[j + 1];
					j += 2;
					switch (e) {
					case 'n': o[n++] = '\n'; break;
					case 't': o[n++] = '\t'; break;
					case 'r': o[n++] = '\r'; break;
					case '\\': o[n++] = '\\'; break;
					case '\'': o[n++] = '\''; break;
					case '"': o[n++] = '"'; break;
					case 'a': o[n++] = '\a'; break;
					case 'b': o[n++] = '\b'; break;
					case 'f': o[n++] = '\f'; break;
					case 'v': o[n++] = '\v'; break;
					case '0': o[n++] = '\0'; break;
					case '\n': break;
					case 'x':
					case 'u':
					case 'U': {
						int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
						uint32_t cp = 0;
						for (int q = 0; q < nd; q++, j++) {
							char h = j < p->len ? s[j] : 0;
							int v = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
							if (v < 0)
								perr(p, ln, "bad \\%c escape in string", e);
							cp = cp * 16 + (uint32_t)v;
						}
						if (cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000))
							perr(p, ln, "bad \\%c escape in string", e);
						n += (size_t)utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)o + n);
						break;
					}
					default:
						o[n++] = '\\';
						o[n++] = e;
					}
					continue;
				}
				o[n++] = d;
				j++;
			}
			struct tok *k = push(p, T_STRING, ln);
			k->s = o;
			k->n = n;
			i = j;
		} else {
			const char *op = NULL;
			for (int q = 0; ops3[q]; q++)
				if (strncmp(s + i, ops3[q], 2) == 0)
					op = ops3[q];
			char one[2] = { c, 0 };
			if (!op) {
				if (!c || !strchr(ops1, c))
					perr(p, ln, "unexpected character '%c'", c);
				op = tp_strndup(p->a, one, 1);
			}
			if (c == '(' || c == '[' || c == '{')
				depth++;
			else if ((c == ')' || c == ']' || c == '}') && depth > 0)
				depth--;
			struct tok *k = push(p, T_OP, ln);
			k->s = op;
			k->n = strlen(op);
			i += k->n;
		}
	}
}

static void lex(struct parser *p)
{
	const char *s = p->src;
	size_t pos = 0, lpos = 0;
	int line = 1;
	int strip_next = 0; /* the previous tag ended with '-': strip leading white space */
	for (;;) {
		size_t at = pos;
		const char *tag = NULL;
		while (at + 1 < p->len) {
			if (s[at] == '{' && (s[at + 1] == '{' || s[at + 1] == '%' || s[at + 1] == '#')) {
				tag = s + at;
				break;
			}
			at++;
		}
		if (!tag)
			at = p->len;
		size_t tstart = pos, tend = at;
		if (strip_next)
			while (tstart < tend && is_ws(s[tstart]))
				tstart++;
		char kind = tag ? tag[1] : 0, mod = tag && at + 2 < p->len ? tag[2] : 0;
		if (tag && mod == '-') {
			while (tend > tstart && is_ws(s[tend - 1]))
				tend--;
		} else if (tag && (kind == '%' || kind == '#') && mod != '+') {
			/* lstrip_blocks: spaces and tabs from the start of the line. */
			size_t ls = tend;
			while (ls > tstart && (s[ls - 1] == ' ' || s[ls - 1] == '\t'))
				ls--;
			if ((ls > 0 && s[ls - 1] == '\n') || ls == 0)
				tend = ls;
			else if (ls == tstart && ls == pos && pos > 0 && s[pos - 1] == '\n')
				tend = ls;
		}
		if (tend > tstart) {
			struct tok *k = push(p, T_TEXT, line_at(p, tstart, &lpos, &line));
			k->s = s + tstart;
			k->n = tend - tstart;
		}
		if (!tag)
			break;
		int ln = line_at(p, at, &lpos, &line);
		size_t i = at + 2 + (mod == '-' || mod == '+');
		strip_next = 0;
		if (kind == '#') {
			const char *e = NULL;
			for (size_t q = i; q + 1 < p->len; q++)
				if (s[q] == '#' && s[q + 1] == '}') {
					e = s + q;
					break;
				}
			if (!e)
				perr(p, ln, "missing end of comment tag");
			size_t q = (size_t)(e - s);
			pos = q + 2;
			if (q > i && s[q - 1] == '-')
				strip_next = 1;
			else if (!(q > i && s[q - 1] == '+') && pos < p->len && s[pos] == '\n')
				pos++;
			continue;
		}
		size_t before = p->ntok;
		push(p, kind == '{' ? T_VAR_BEGIN : T_BLOCK_BEGIN, ln);
		int endmod = lex_expr(p, &i, kind == '{', &line, &lpos);
		pos = i;
		push(p, kind == '{' ? T_VAR_END : T_BLOCK_END, line);
		if (endmod == '-')
			strip_next = 1;
		else if (kind == '%' && endmod != '+' && pos < p->len && s[pos] == '\n')
			pos++; /* trim_blocks */
		/* {% raw %}: everything up to {% endraw %} is text. */
		if (kind == '%' && p->ntok - before == 3 && p->toks[before + 1].kind == T_NAME &&
		    strcmp(p->toks[before + 1].s, "raw") == 0) {
			p->ntok = before;
			size_t q = pos;
			for (;; q++) {
				if (q + 1 >= p->len)
					perr(p, ln, "missing {%% endraw %%}");
				if (s[q] == '{' && s[q + 1] == '%') {
					size_t r = q + 2;
					if (s[r] == '-' || s[r] == '+')
						r++;
					while (r < p->len && is_ws(s[r]))
						r++;
					if (strncmp(s + r, "endraw", 6) == 0) {
						size_t te = q;
						if (s[q + 2] == '-')
							while (te > pos && is_ws(s[te - 1]))
								te--;
						r += 6;
						while (r < p->len && is_ws(s[r]))
							r++;
						int em = 0;
						if (r < p->len && (s[r] == '-' || s[r] == '+'))
							em = s[r++];
						if (strncmp(s + r, "%}", 2) != 0)
							perr(p, ln, "bad endraw tag");
						size_t ts = pos;
						if (strip_next)
							while (ts < te && is_ws(s[ts]))
								ts++;
						if (te > ts) {
							struct tok *k = push(p, T_TEXT, ln);
							k->s = s + ts;
							k->n = te - ts;
						}
						pos = r + 2;
						strip_next = em == '-';
						if (em != '-' && em != '+' && pos < p->len && s[pos] == '\n')
							pos++;
						break;
					}
				}
			}
		}
	}
	push(p, T_EOF, line);
}

/* ---- parser ---- */

static struct tok *peek(struct parser *p) { return &p->toks[p->pos]; }
static struct tok *next(struct parser *p)
{
	struct tok *k = &p->toks[p->pos];
	if (k->kind != T_EOF)
		p->pos++;
	return k;
}
static int is_op(struct tok *k, const char *op) { return k->kind == T_OP && strcmp(k->s, op) == 0; }
static int is_name(struct tok *k, const char *n) { return k->kind == T_NAME && strcmp(k->s, n) == 0; }
static int accept_op(struct parser *p, const char *op)
{
	if (is_op(peek(p), op)) {
		p->pos++;
		return 1;
	}
	return 0;
}
static int accept_name(struct parser *p, const char *n)
{
	if (is_name(peek(p), n)) {
		p->pos++;
		return 1;
	}
	return 0;
}
static const char *tok_desc(struct tok *k)
{
	switch (k->kind) {
	case T_NAME:
	case T_OP: return k->s;
	case T_STRING: return "string";
	case T_INT:
	case T_FLOAT: return "number";
	case T_VAR_END: return "}}";
	case T_BLOCK_END: return "%}";
	case T_EOF: return "end of template";
	default: return "text";
	}
}
static void expect_op(struct parser *p, const char *op)
{
	if (!accept_op(p, op))
		perr(p, peek(p)->line, "expected '%s', got '%s'", op, tok_desc(peek(p)));
}
static const char *expect_name(struct parser *p)
{
	struct tok *k = peek(p);
	if (k->kind != T_NAME)
		perr(p, k->line, "expected a name, got '%s'", tok_desc(k));
	p->pos++;
	return k->s;
}

static struct tp_node *node(struct parser *p, int kind, int line)
{
	struct tp_node *n = tp_alloc(p->a, sizeof *n);
	n->kind = (uint8_t)kind;
	n->line = line;
	return n;
}

static void add_arg(struct parser *p, struct tp_node *n, struct tp_node *arg, const char *kw)
{
	n->args = tp_realloc(p->a, n->args, n->nargs * sizeof *n->args, (n->nargs + 1) * sizeof *n->args);
	n->kw = tp_realloc(p->a, n->kw, n->nargs * sizeof *n->kw, (n->nargs + 1) * sizeof *n->kw);
	n->args[n->nargs] = arg;
	n->kw[n->nargs] = kw;
	n->nargs++;
}

/* Sets n's depth from its children: evaluation recurses as deep as the tree,
 * and a long chain (x|f|f|f..., a+a+a...) must not overflow the C stack. */
static struct tp_node *fix_depth(struct parser *p, struct tp_node *n)
{
	unsigned d = 0;
	struct tp_node *kids[3] = { n->a, n->b, n->c };
	for (int i = 0; i < 3; i++)
		if (kids[i] && kids[i]->depth > d)
			d = kids[i]->depth;
	for (uint32_t i = 0; i < n->nargs; i++)
		if (n->args[i] && n->args[i]->depth > d)
			d = n->args[i]->depth;
	if (d + 1 > 400)
		perr(p, n->line, "expression nested too deep");
	n->depth = (uint16_t)(d + 1);
	return n;
}

static struct tp_node *parse_expr(struct parser *p);
static struct tp_node *parse_or(struct parser *p);
static struct tp_node *parse_unary(struct parser *p, int with_filter);
static struct tp_node *parse_primary(struct parser *p);

static int depth_guard(struct parser *p, int d)
{
	if (d > 200)
		perr(p, peek(p)->line, "expression nested too deep");
	return d;
}

static void parse_call_args(struct parser *p, struct tp_node *n)
{
	/* after '(' */
	while (!accept_op(p, ")")) {
		if (n->nargs)
			expect_op(p, ",");
		if (accept_op(p, ")"))
			break;
		if (peek(p)->kind == T_NAME && is_op(&p->toks[p->pos + 1], "=")) {
			const char *kw = next(p)->s;
			next(p);
			add_arg(p, n, parse_expr(p), kw);
		} else if (is_op(peek(p), "*") || is_op(peek(p), "**")) {
			perr(p, peek(p)->line, "*args and **kwargs in calls are not supported");
		} else
			add_arg(p, n, parse_expr(p), NULL);
	}
}

static struct tp_node *parse_postfix(struct parser *p, struct tp_node *e)
{
	for (;;) {
		struct tok *k = peek(p);
		if (is_op(k, ".")) {
			next(p);
			struct tok *a = next(p);
			struct tp_node *n = node(p, N_ATTR, k->line);
			n->a = e;
			if (a->kind == T_NAME)
				n->name = a->s;
			else if (a->kind == T_INT) {
				/* x.0 is x[0] */
				n->kind = N_SUB;
				n->b = node(p, N_LIT, k->line);
				n->b->lit = tp_mk_int(a->i);
			} else
				perr(p, k->line, "expected an attribute name after '.'");
			e = fix_depth(p, n);
		} else if (is_op(k, "[")) {
			next(p);
			struct tp_node *idx[3] = { 0 };
			int colons = 0;
			for (;;) {
				if (is_op(peek(p), ":")) {
					next(p);
					if (++colons > 2)
						perr(p, k->line, "bad slice");
					continue;
				}
				if (is_op(peek(p), "]"))
					break;
				if (idx[colons])
					perr(p, k->line, "expected ']'");
				idx[colons] = parse_expr(p);
			}
			expect_op(p, "]");
			struct tp_node *n = node(p, colons ? N_SLICE : N_SUB, k->line);
			n->a = e;
			if (colons) {
				n->b = idx[0];
				n->c = idx[1];
				add_arg(p, n, idx[2], NULL);
			} else {
				if (!idx[0])
					perr(p, k->line, "expected an index");
				n->b = idx[0];
			}
			e = fix_depth(p, n);
		} else if (is_op(k, "(")) {
			next(p);
			struct tp_node *n = node(p, N_CALL, k->line);
			n->a = e;
			parse_call_args(p, n);
			e = fix_depth(p, n);
		} else
			return e;
	}
}

static int test_arg_start(struct tok *k)
{
	if (k->kind == T_STRING || k->kind == T_INT || k->kind == T_FLOAT)
		return 1;
	if (k->kind == T_OP)
		return is_op(k, "(") || is_op(k, "[") || is_op(k, "{") || is_op(k, "-");
	if (k->kind == T_NAME)
		return !(is_name(k, "else") || is_name(k, "or") || is_name(k, "and") || is_name(k, "is") ||
			 is_name(k, "in") || is_name(k, "if") || is_name(k, "not"));
	return 0;
}

static struct tp_node *parse_filters(struct parser *p, struct tp_node *e)
{
	for (;;) {
		struct tok *k = peek(p);
		if (is_op(k, "|")) {
			next(p);
			struct tp_node *n = node(p, N_FILTER, k->line);
			n->name = expect_name(p);
			n->a = e;
			if (accept_op(p, "("))
				parse_call_args(p, n);
			e = fix_depth(p, n);
		} else if (is_name(k, "is")) {
			next(p);
			struct tp_node *n = node(p, N_TEST, k->line);
			n->neg = (uint8_t)accept_name(p, "not");
			n->name = expect_name(p);
			n->a = e;
			if (accept_op(p, "("))
				parse_call_args(p, n);
			else if (test_arg_start(peek(p)))
				add_arg(p, n, parse_unary(p, 0), NULL);
			e = fix_depth(p, n);
		} else
			return e;
	}
}

static struct tp_node *parse_unary(struct parser *p, int with_filter)
{
	struct tok *k = peek(p);
	struct tp_node *e;
	depth_guard(p, ++p->nest);
	if (is_op(k, "-") || is_op(k, "+")) {
		next(p);
		e = node(p, is_op(k, "-") ? N_NEG : N_POS, k->line);
		e->a = parse_unary(p, 0);
		fix_depth(p, e);
	} else
		e = parse_postfix(p, parse_primary(p));
	p->nest--;
	if (with_filter)
		e = parse_filters(p, e);
	return e;
}

static struct tp_node *bin(struct parser *p, int kind, int op, struct tp_node *a, struct tp_node *b, int line)
{
	struct tp_node *n = node(p, kind, line);
	n->op = (uint8_t)op;
	n->a = a;
	n->b = b;
	return fix_depth(p, n);
}

static struct tp_node *parse_pow(struct parser *p)
{
	struct tp_node *e = parse_unary(p, 1);
	while (is_op(peek(p), "**")) {
		int line = next(p)->line;
		e = bin(p, N_BIN, OP_POW, e, parse_unary(p, 1), line);
	}
	return e;
}

static struct tp_node *parse_math2(struct parser *p)
{
	struct tp_node *e = parse_pow(p);
	for (;;) {
		struct tok *k = peek(p);
		int op = is_op(k, "*") ? OP_MUL : is_op(k, "/") ? OP_DIV : is_op(k, "//") ? OP_FDIV : is_op(k, "%") ? OP_MOD : -1;
		if (op < 0)
			return e;
		next(p);
		e = bin(p, N_BIN, op, e, parse_pow(p), k->line);
	}
}

static struct tp_node *parse_concat(struct parser *p)
{
	struct tp_node *e = parse_math2(p);
	while (is_op(peek(p), "~")) {
		int line = next(p)->line;
		e = bin(p, N_CONCAT, 0, e, parse_math2(p), line);
	}
	return e;
}

static struct tp_node *parse_math1(struct parser *p)
{
	struct tp_node *e = parse_concat(p);
	for (;;) {
		struct tok *k = peek(p);
		int op = is_op(k, "+") ? OP_ADD : is_op(k, "-") ? OP_SUB : -1;
		if (op < 0)
			return e;
		next(p);
		e = bin(p, N_BIN, op, e, parse_concat(p), k->line);
	}
}

static struct tp_node *parse_compare(struct parser *p)
{
	struct tp_node *e = parse_math1(p), *n = NULL;
	for (;;) {
		struct tok *k = peek(p);
		int op = -1;
		if (is_op(k, "=="))
			op = C_EQ;
		else if (is_op(k, "!="))
			op = C_NE;
		else if (is_op(k, "<"))
			op = C_LT;
		else if (is_op(k, "<="))
			op = C_LE;
		else if (is_op(k, ">"))
			op = C_GT;
		else if (is_op(k, ">="))
			op = C_GE;
		else if (is_name(k, "in"))
			op = C_IN;
		else if (is_name(k, "not") && is_name(&p->toks[p->pos + 1], "in")) {
			op = C_NOTIN;
			next(p);
		}
		if (op < 0)
			return n ? n : e;
		next(p);
		if (!n) {
			n = node(p, N_CMP, k->line);
			add_arg(p, n, e, NULL);
		}
		n->cmps = tp_realloc(p->a, n->cmps, n->nargs - 1, n->nargs);
		n->cmps[n->nargs - 1] = (uint8_t)op;
		add_arg(p, n, parse_math1(p), NULL);
		fix_depth(p, n);
	}
}

static struct tp_node *parse_not(struct parser *p)
{
	struct tok *k = peek(p);
	if (is_name(k, "not")) {
		next(p);
		depth_guard(p, ++p->nest);
		struct tp_node *n = node(p, N_NOT, k->line);
		n->a = parse_not(p);
		p->nest--;
		return fix_depth(p, n);
	}
	return parse_compare(p);
}

static struct tp_node *parse_and(struct parser *p)
{
	struct tp_node *e = parse_not(p);
	while (is_name(peek(p), "and")) {
		int line = next(p)->line;
		e = bin(p, N_AND, 0, e, parse_not(p), line);
	}
	return e;
}

static struct tp_node *parse_or(struct parser *p)
{
	struct tp_node *e = parse_and(p);
	while (is_name(peek(p), "or")) {
		int line = next(p)->line;
		e = bin(p, N_OR, 0, e, parse_and(p), line);
	}
	return e;
}

static struct tp_node *parse_expr(struct parser *p)
{
	depth_guard(p, ++p->nest);
	struct tp_node *e = parse_or(p);
	while (is_name(peek(p), "if")) {
		int line = next(p)->line;
		struct tp_node *n = node(p, N_COND, line);
		n->a = e;
		n->b = parse_or(p);
		if (accept_name(p, "else"))
			n->c = parse_expr(p);
		e = fix_depth(p, n);
	}
	p->nest--;
	return e;
}

/* An expression or a bare tuple (a, b) as after `set` or `for ... in`. */
static struct tp_node *parse_tuple(struct parser *p, int simple)
{
	int line = peek(p)->line;
	struct tp_node *first = simple ? parse_primary(p) : parse_expr(p);
	if (!is_op(peek(p), ","))
		return first;
	struct tp_node *t = node(p, N_TUPLE, line);
	add_arg(p, t, first, NULL);
	while (accept_op(p, ",")) {
		struct tok *k = peek(p);
		if (k->kind == T_VAR_END || k->kind == T_BLOCK_END || is_name(k, "in") || is_op(k, "=") || is_op(k, ")"))
			break;
		add_arg(p, t, simple ? parse_primary(p) : parse_expr(p), NULL);
	}
	return fix_depth(p, t);
}

static struct tp_node *parse_primary(struct parser *p)
{
	struct tok *k = next(p);
	struct tp_node *n;
	switch (k->kind) {
	case T_NAME:
		n = node(p, N_LIT, k->line);
		if (!strcmp(k->s, "true") || !strcmp(k->s, "True"))
			n->lit = tp_mk_bool(1);
		else if (!strcmp(k->s, "false") || !strcmp(k->s, "False"))
			n->lit = tp_mk_bool(0);
		else if (!strcmp(k->s, "none") || !strcmp(k->s, "None"))
			n->lit = tp_mk_none();
		else {
			n->kind = N_NAME;
			n->name = k->s;
			/* the only way a template reads a variable: a name */
			p->t->reads_agp |= !strcmp(k->s, "add_generation_prompt");
		}
		return n;
	case T_STRING: {
		/* Adjacent literals join, as in Python. */
		struct tp_sb b = { 0 };
		tp_sb_put(p->a, &b, k->s, k->n, tp_literal);
		while (peek(p)->kind == T_STRING) {
			struct tok *q = next(p);
			tp_sb_put(p->a, &b, q->s, q->n, tp_literal);
		}
		n = node(p, N_LIT, k->line);
		n->lit = tp_mk_str(tp_sb_done(&b));
		return n;
	}
	case T_INT:
		n = node(p, N_LIT, k->line);
		n->lit = tp_mk_int(k->i);
		return n;
	case T_FLOAT:
		n = node(p, N_LIT, k->line);
		n->lit = tp_mk_float(k->f);
		return n;
	case T_OP:
		if (is_op(k, "(")) {
			if (accept_op(p, ")"))
				return node(p, N_TUPLE, k->line);
			depth_guard(p, ++p->nest);
			struct tp_node *e = parse_tuple(p, 0);
			p->nest--;
			if (e->kind == N_TUPLE)
				e->line = k->line;
			expect_op(p, ")");
			return e;
		}
		if (is_op(k, "[")) {
			n = node(p, N_LIST, k->line);
			depth_guard(p, ++p->nest);
			while (!accept_op(p, "]")) {
				if (n->nargs)
					expect_op(p, ",");
				if (accept_op(p, "]"))
					break;
				add_arg(p, n, parse_expr(p), NULL);
			}
			p->nest--;
			return fix_depth(p, n);
		}
		if (is_op(k, "{")) {
			n = node(p, N_DICT, k->line);
			depth_guard(p, ++p->nest);
			while (!accept_op(p, "}")) {
				if (n->nargs)
					expect_op(p, ",");
				if (accept_op(p, "}"))
					break;
				add_arg(p, n, parse_expr(p), NULL);
				expect_op(p, ":");
				add_arg(p, n, parse_expr(p), NULL);
			}
			p->nest--;
			return fix_depth(p, n);
		}
		break;
	default: break;
	}
	perr(p, k->line, "unexpected '%s'", tok_desc(k));
}

/* ---- statements ---- */

static struct tp_stmt *stmt(struct parser *p, int kind, int line)
{
	struct tp_stmt *s = tp_alloc(p->a, sizeof *s);
	s->kind = (uint8_t)kind;
	s->line = line;
	return s;
}

static void expect_block_end(struct parser *p)
{
	if (peek(p)->kind != T_BLOCK_END)
		perr(p, peek(p)->line, "expected '%%}', got '%s'", tok_desc(peek(p)));
	next(p);
}

/* Parses statements up to one of the end tags (space-separated names);
 * leaves the parser after the tag's name and returns it. */
static struct tp_stmt *parse_body(struct parser *p, const char *ends, const char **ended, int open_line);

static void parse_params(struct parser *p, struct tp_stmt *s)
{
	expect_op(p, "(");
	while (!accept_op(p, ")")) {
		if (s->nnames)
			expect_op(p, ",");
		if (accept_op(p, ")"))
			break;
		const char *nm = expect_name(p);
		struct tp_node *def = NULL;
		if (accept_op(p, "="))
			def = parse_expr(p);
		s->names = tp_realloc(p->a, s->names, s->nnames * sizeof *s->names, (s->nnames + 1) * sizeof *s->names);
		s->defaults = tp_realloc(p->a, s->defaults, s->nnames * sizeof *s->defaults,
					 (s->nnames + 1) * sizeof *s->defaults);
		s->names[s->nnames] = nm;
		s->defaults[s->nnames] = def;
		s->nnames++;
	}
}

static struct tp_stmt *parse_tag(struct parser *p, const char *name, int line)
{
	struct tp_stmt *s;
	const char *ended;
	if (!strcmp(name, "if") || !strcmp(name, "elif")) {
		s = stmt(p, S_IF, line);
		s->cond = parse_expr(p);
		expect_block_end(p);
		s->body = parse_body(p, "elif else endif", &ended, line);
		if (!strcmp(ended, "elif")) {
			/* each elif nests one level deeper, here and when run */
			depth_guard(p, ++p->nest);
			s->orelse = parse_tag(p, "elif", p->toks[p->pos - 1].line);
			p->nest--;
			return s; /* the nested if consumed endif */
		}
		if (!strcmp(ended, "else")) {
			expect_block_end(p);
			s->orelse = parse_body(p, "endif", &ended, line);
		}
		expect_block_end(p);
		return s;
	}
	if (!strcmp(name, "for")) {
		s = stmt(p, S_FOR, line);
		struct tp_node *t = parse_tuple(p, 1);
		struct tp_node **items = t->kind == N_TUPLE ? t->args : &t;
		uint32_t n = t->kind == N_TUPLE ? t->nargs : 1;
		s->names = tp_alloc(p->a, (n ? n : 1) * sizeof *s->names);
		for (uint32_t i = 0; i < n; i++) {
			if (items[i]->kind != N_NAME)
				perr(p, line, "can't assign to this in a for loop");
			s->names[i] = items[i]->name;
		}
		s->nnames = n;
		s->target = t;
		if (!accept_name(p, "in"))
			perr(p, line, "expected 'in' in for loop");
		/* The iterable stops before a filtering `if`, as Jinja parses it. */
		s->e = parse_or(p);
		if (accept_name(p, "if"))
			s->cond = parse_expr(p);
		s->recursive = accept_name(p, "recursive");
		expect_block_end(p);
		s->body = parse_body(p, "else endfor", &ended, line);
		if (!strcmp(ended, "else")) {
			expect_block_end(p);
			s->orelse = parse_body(p, "endfor", &ended, line);
		}
		expect_block_end(p);
		return s;
	}
	if (!strcmp(name, "set")) {
		struct tp_node *t = parse_tuple(p, 1);
		if (t->kind == N_NAME && is_op(peek(p), ".")) {
			next(p);
			struct tp_node *n = node(p, N_ATTR, line);
			n->a = t;
			n->name = expect_name(p);
			t = n;
		}
		if (accept_op(p, "=")) {
			s = stmt(p, S_SET, line);
			s->target = t;
			s->e = parse_tuple(p, 0);
			expect_block_end(p);
			return s;
		}
		if (t->kind != N_NAME)
			perr(p, line, "expected '=' after set target");
		s = stmt(p, S_SETBLOCK, line);
		s->name = t->name;
		if (is_op(peek(p), "|")) {
			/* {% set x | filter %}: the filters apply to the captured text */
			struct tp_node *ph = node(p, N_LIT, line);
			s->e = parse_filters(p, ph);
		}
		expect_block_end(p);
		s->body = parse_body(p, "endset", &ended, line);
		expect_block_end(p);
		return s;
	}
	if (!strcmp(name, "macro")) {
		s = stmt(p, S_MACRO, line);
		s->name = expect_name(p);
		parse_params(p, s);
		expect_block_end(p);
		s->body = parse_body(p, "endmacro", &ended, line);
		if (peek(p)->kind == T_NAME)
			next(p); /* {% endmacro name %} */
		expect_block_end(p);
		return s;
	}
	if (!strcmp(name, "call")) {
		s = stmt(p, S_CALLBLOCK, line);
		if (is_op(peek(p), "("))
			parse_params(p, s);
		s->e = parse_expr(p);
		if (s->e->kind != N_CALL)
			perr(p, line, "expected a call after 'call'");
		expect_block_end(p);
		s->body = parse_body(p, "endcall", &ended, line);
		expect_block_end(p);
		return s;
	}
	if (!strcmp(name, "filter")) {
		s = stmt(p, S_FILTERBLOCK, line);
		struct tp_node *ph = node(p, N_LIT, line);
		struct tp_node *f = node(p, N_FILTER, line);
		f->name = expect_name(p);
		f->a = ph;
		if (accept_op(p, "("))
			parse_call_args(p, f);
		s->e = parse_filters(p, f);
		expect_block_end(p);
		s->body = parse_body(p, "endfilter", &ended, line);
		expect_block_end(p);
		return s;
	}
	if (!strcmp(name, "with")) {
		/* {% with a = 1, b = 2 %}: a scope of its own; S_WITH's names and
		 * defaults hold the assignments, made in order */
		s = stmt(p, S_WITH, line);
		while (peek(p)->kind != T_BLOCK_END) {
			if (s->nnames)
				expect_op(p, ",");
			const char *nm = expect_name(p);
			expect_op(p, "=");
			struct tp_node *e = parse_expr(p);
			s->names = tp_realloc(p->a, s->names, s->nnames * sizeof *s->names, (s->nnames + 1) * sizeof *s->names);
			s->defaults = tp_realloc(p->a, s->defaults, s->nnames * sizeof *s->defaults,
						 (s->nnames + 1) * sizeof *s->defaults);
			s->names[s->nnames] = nm;
			s->defaults[s->nnames] = e;
			s->nnames++;
		}
		expect_block_end(p);
		s->body = parse_body(p, "endwith", &ended, line);
		expect_block_end(p);
		return s;
	}
	if (!strcmp(name, "generation")) {
		s = stmt(p, S_GEN, line);
		expect_block_end(p);
		s->body = parse_body(p, "endgeneration", &ended, line);
		expect_block_end(p);
		return s;
	}
	if (!strcmp(name, "break") || !strcmp(name, "continue")) {
		s = stmt(p, name[0] == 'b' ? S_BREAK : S_CONTINUE, line);
		expect_block_end(p);
		return s;
	}
	if (!strcmp(name, "include") || !strcmp(name, "import") || !strcmp(name, "from") || !strcmp(name, "extends") ||
	    !strcmp(name, "block"))
		perr(p, line, "'%s' is not allowed in a chat template", name);
	perr(p, line, "unknown tag '%s'", name);
}

static struct tp_stmt *parse_body(struct parser *p, const char *ends, const char **ended, int open_line)
{
	struct tp_stmt *head = NULL, **tail = &head;
	for (;;) {
		struct tok *k = next(p);
		struct tp_stmt *s = NULL;
		if (k->kind == T_EOF) {
			if (ends)
				perr(p, open_line, "unexpected end of template, expected one of: %s", ends);
			*ended = NULL;
			return head;
		}
		if (k->kind == T_TEXT) {
			s = stmt(p, S_TEXT, k->line);
			s->text = tp_str_lit(p->a, k->s, k->n, tp_literal);
		} else if (k->kind == T_VAR_BEGIN) {
			s = stmt(p, S_OUT, k->line);
			s->e = parse_tuple(p, 0);
			if (peek(p)->kind != T_VAR_END)
				perr(p, peek(p)->line, "expected '}}', got '%s'", tok_desc(peek(p)));
			next(p);
		} else if (k->kind == T_BLOCK_BEGIN) {
			struct tok *nm = peek(p);
			if (nm->kind != T_NAME)
				perr(p, nm->line, "expected a tag name");
			if (ends) {
				char buf[64];
				const char *q = ends;
				while (*q) {
					size_t n = strcspn(q, " ");
					if (n < sizeof buf) {
						memcpy(buf, q, n);
						buf[n] = 0;
						if (!strcmp(buf, nm->s)) {
							next(p);
							*ended = nm->s;
							return head;
						}
					}
					q += n;
					while (*q == ' ')
						q++;
				}
			}
			if (!strncmp(nm->s, "end", 3) || !strcmp(nm->s, "else") || !strcmp(nm->s, "elif"))
				perr(p, nm->line, "unexpected '%s'%s%s", nm->s, ends ? ", expected one of: " : "",
				     ends ? ends : "");
			next(p);
			depth_guard(p, ++p->nest);
			s = parse_tag(p, nm->s, nm->line);
			p->nest--;
		} else
			perr(p, k->line, "unexpected '%s'", tok_desc(k));
		*tail = s;
		tail = &s->next;
	}
}

int tp_parse(struct tmpl *t, const char *src, size_t len, struct err *err)
{
	struct parser p = { .t = t, .a = &t->arena };
	jmp_buf jb;
	t->arena.fail = &jb;
	t->arena.err = err;
	if (setjmp(jb)) {
		t->arena.fail = NULL;
		return -1;
	}
	normalize(&p, src, len);
	lex(&p);
	t->loop_name = intern(&p, "loop", 4);
	const char *ended;
	t->body = parse_body(&p, NULL, &ended, 1);
	t->arena.fail = NULL;
	return 0;
}
