/* chat_memo: records of a shape seen before, formatted without rendering (see chat_memo.h). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <time.h>

#include "chat_memo.h"
#include "jsonl.h"

enum { UNTRIED, LEARNED, REFUSED };
/* MAX_CONTENT: a record's contents in all; longer ones are rendered, so
 * that the renderer's limits meet the same texts they would (what a
 * template builds from the contents grows with them). */
enum { MAX_ENTRIES = 4096, MAX_CONTENT = 64 << 10 };
#define MAX_BYTES ((size_t)64 << 20) /* keys and programs of one memo; past it the memo starts over */

/* A piece of the text: the literal bytes esc[off, off + len) (escaped;
 * raw bytes long), or message msg's content as the template printed it. */
enum { WHOLE, TRIMMED, JSON, JSON_INNER }; /* JSON: tojson's text; JSON_INNER: without its quotes */
struct piece {
	int32_t msg; /* -1: literal */
	uint8_t as;  /* for a content: WHOLE ... */
	uint32_t off, len, raw;
};
struct program {
	uint32_t npieces, nspans, njson; /* njson: the pieces printed through tojson */
	struct piece *pieces;
	uint32_t (*ends)[2]; /* 2 * nspans: piece, offset in it (a literal's, or 0) */
	char *esc;
	unsigned nclock;
	struct {
		char fmt[64], out[128];
	} clock[TMPL_WATCH_CLOCKS];
};
struct memo_shape {
	uint64_t hash;
	char *key;
	size_t klen;
	int state;
	struct jd_shared *tools; /* held while the key names its block */
	struct program *prog;
};
struct chat_memo {
	struct memo_shape *tab; /* open addressing, MAX_ENTRIES * 2 slots */
	size_t n, bytes;
	struct jsonl_buf key; /* the key being built */
	unsigned long long replayed, learned, refused;
	size_t *at; /* chat_memo_put's: where each piece begins, and the end */
	const char **src; /* and where each content piece's bytes are */
	size_t atcap;
	char *json; /* tojson's texts of the contents printed so */
	size_t jcap;
	const struct jd *msgs; /* the messages of the last key, */
	const struct jd **content; /* and each one's content (a string), or NULL */
	size_t ccap;
};

struct chat_memo *chat_memo_new(void)
{
	struct chat_memo *m = calloc(1, sizeof *m);
	if (m && !(m->tab = calloc(2 * MAX_ENTRIES, sizeof *m->tab))) {
		free(m);
		m = NULL;
	}
	return m;
}

static void program_free(struct program *p)
{
	if (p) {
		free(p->pieces);
		free(p->ends);
		free(p->esc);
		free(p);
	}
}

static void entries_clear(struct chat_memo *m)
{
	for (size_t i = 0; i < 2 * MAX_ENTRIES; i++) {
		struct memo_shape *e = &m->tab[i];
		if (e->key) {
			free(e->key);
			program_free(e->prog);
			if (e->tools)
				jd_shared_unref(e->tools);
		}
		memset(e, 0, sizeof *e);
	}
	m->n = m->bytes = 0;
}

void chat_memo_free(struct chat_memo *m)
{
	if (!m)
		return;
	entries_clear(m);
	free(m->tab);
	free(m->key.p);
	free(m->at);
	free(m->src);
	free(m->content);
	free(m->json);
	free(m);
}

/* ---- the key ---- */

static inline int kroom(struct chat_memo *m, size_t n)
{
	return m->key.n + n <= m->key.cap || jsonl_reserve(&m->key, n) == 0;
}

/* A kind, a count, then bytes: the parts of a value's key (room made). */
static inline void khead(struct chat_memo *m, unsigned char kind, uint32_t n)
{
	m->key.p[m->key.n] = (char)kind;
	memcpy(m->key.p + m->key.n + 1, &n, sizeof n);
	m->key.n += 1 + sizeof n;
}

static void kvalue(struct chat_memo *m, const struct jd *v)
{
	if (!kroom(m, 16 + (v->kind == JD_STRING ? v->n : 0)))
		return;
	switch (v->kind) {
	case JD_NUMBER:
		khead(m, v->kind, v->is_float);
		memcpy(m->key.p + m->key.n, &v->u.num, sizeof v->u.num);
		m->key.n += sizeof v->u.num;
		break;
	case JD_STRING:
		khead(m, v->kind, v->n);
		memcpy(m->key.p + m->key.n, v->u.s, v->n);
		m->key.n += v->n;
		break;
	case JD_ARRAY:
		khead(m, v->kind, v->n);
		for (uint32_t i = 0; i < v->n; i++)
			kvalue(m, &v->u.items[i]);
		break;
	case JD_OBJECT:
		khead(m, v->kind, v->n);
		for (uint32_t i = 0; i < v->n; i++) {
			kvalue(m, &v->u.members[i].key);
			kvalue(m, &v->u.members[i].val);
		}
		break;
	default: khead(m, v->kind, 0); break;
	}
}

/* What a trim or a truth test sees of a content: empty, blank (chat's
 * validation: only " \t\r\n"), all white space, white space first, last. */
static unsigned content_class(const struct jd *c)
{
	if (c->n && (unsigned char)c->u.s[0] > ' ' && (unsigned char)c->u.s[0] < 0x80 &&
	    (unsigned char)c->u.s[c->n - 1] > ' ' && (unsigned char)c->u.s[c->n - 1] < 0x80)
		return 0; /* a printable ASCII byte at each end: none of them */
	size_t lo, hi, i = 0;
	tmpl_strip_span(c->u.s, c->n, &lo, &hi);
	while (i < c->n && c->u.s[i] && strchr(" \t\r\n", c->u.s[i]))
		i++;
	return (c->n == 0) | (i == c->n) << 1 | (lo == c->n) << 2 | (lo > 0) << 3 | (hi < c->n) << 4;
}

static uint64_t hash_bytes(const char *s, size_t n)
{
	uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t w;
		memcpy(&w, s + i, 8);
		h = (h ^ w) * 0xff51afd7ed558ccdull;
		h ^= h >> 32;
	}
	uint64_t w = 0;
	memcpy(&w, s + i, n - i);
	h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
	return h ^ (h >> 29);
}

struct memo_shape *chat_memo_find(struct chat_memo *m, const void *t, const struct jd *msgs, const struct jd *tools)
{
	if (!m || msgs->kind != JD_ARRAY)
		return NULL;
	m->key.n = 0, m->key.oom = 0, m->msgs = NULL;
	if (!kroom(m, 64))
		return NULL;
	if (msgs->n > m->ccap) {
		const struct jd **c = realloc(m->content, 2 * (size_t)msgs->n * sizeof *c);
		if (!c)
			return NULL;
		m->content = c, m->ccap = 2 * (size_t)msgs->n;
	}
	memcpy(m->key.p, &t, sizeof t);
	m->key.n = sizeof t;
	khead(m, JD_ARRAY, msgs->n);
	size_t content = 0;
	for (uint32_t i = 0; i < msgs->n; i++) {
		const struct jd *msg = &msgs->u.items[i];
		m->content[i] = NULL;
		if (msg->kind != JD_OBJECT) {
			kvalue(m, msg);
			continue;
		}
		if (!kroom(m, 8))
			return NULL;
		khead(m, JD_OBJECT, msg->n);
		for (uint32_t k = 0; k < msg->n; k++) {
			const struct jd_member *mb = &msg->u.members[k];
			kvalue(m, &mb->key);
			int is_content = mb->key.n == 7 && !memcmp(mb->key.u.s, "content", 7);
			if (is_content && mb->val.kind == JD_STRING) {
				if (!kroom(m, 8))
					return NULL;
				khead(m, 0xff, content_class(&mb->val)); /* a content: its class, not its text */
				content += mb->val.n;
				m->content[i] = &mb->val;
			} else if (is_content && mb->val.kind == JD_ARRAY) {
				return NULL; /* content parts: their texts are not pieces */
			} else {
				kvalue(m, &mb->val);
			}
		}
	}
	struct jd_shared *sh = tools->kind == JD_ARRAY ? jd_shared_of(tools) : NULL;
	if (sh) {
		if (!kroom(m, 8 + sizeof sh))
			return NULL;
		khead(m, 0xfe, 0);
		memcpy(m->key.p + m->key.n, &sh, sizeof sh);
		m->key.n += sizeof sh;
	} else {
		kvalue(m, tools);
	}
	if (m->key.oom || content > MAX_CONTENT)
		return NULL;
	m->msgs = msgs;
	uint64_t h = hash_bytes(m->key.p, m->key.n);
	size_t mask = 2 * MAX_ENTRIES - 1, i = h & mask;
	for (; m->tab[i].key; i = (i + 1) & mask) {
		struct memo_shape *e = &m->tab[i];
		if (e->hash == h && e->klen == m->key.n && !memcmp(e->key, m->key.p, m->key.n))
			return e;
	}
	if (m->n >= MAX_ENTRIES || m->bytes > MAX_BYTES) {
		entries_clear(m);
		i = h & mask;
	}
	struct memo_shape *e = &m->tab[i];
	if (!(e->key = malloc(m->key.n)))
		return NULL;
	memcpy(e->key, m->key.p, m->key.n);
	e->klen = m->key.n;
	e->hash = h;
	e->state = UNTRIED;
	e->tools = sh ? jd_shared_ref(sh) : NULL;
	m->n++;
	m->bytes += m->key.n;
	return e;
}

int chat_memo_untried(const struct memo_shape *e) { return e->state == UNTRIED; }

/* ---- learning ---- */

struct memo_learn {
	const struct tmpl_output *ro;
	const struct jd *msgs;
	struct piece *p; /* off: where the piece begins in ro's text */
	uint32_t n;
	int fail;
};

static const struct jd *content_of(const struct jd *msgs, int32_t i)
{
	if (i < 0 || (uint32_t)i >= msgs->n)
		return NULL;
	const struct jd *c = jd_get(&msgs->u.items[i], "content");
	return c && c->kind == JD_STRING ? c : NULL;
}

/* o's pieces: its runs of content, each the message's content whole,
 * trimmed, or as tojson prints it (with its quotes or without), and the
 * literal stretches between them. -1 when a run of content is none of
 * these. */
static int pieces_of(const struct tmpl_output *o, const struct jd *msgs, struct piece **out, uint32_t *nout)
{
	struct piece *p = malloc((2 * o->nruns + 1) * sizeof *p);
	uint32_t n = 0;
	if (!p)
		return -1;
	for (size_t r = 0; r < o->nruns; r++) {
		const struct tmpl_run *run = &o->runs[r];
		uint32_t len = run->end - run->start;
		if (!len)
			continue;
		if (run->origin != TMPL_MSG_CONTENT) {
			if (n && p[n - 1].msg < 0)
				p[n - 1].raw += len;
			else
				p[n++] = (struct piece){ .msg = -1, .off = run->start, .raw = len };
			continue;
		}
		const struct jd *c = content_of(msgs, run->msg);
		const char *x = o->text + run->start;
		size_t lo = 0, hi = 0, jn = 0;
		if (c)
			tmpl_strip_span(c->u.s, c->n, &lo, &hi);
		int as = -1;
		if (c && len == c->n && !memcmp(x, c->u.s, len))
			as = WHOLE;
		else if (c && len == hi - lo && !memcmp(x, c->u.s + lo, len))
			as = TRIMMED;
		char *j = as < 0 && c && len <= 6 * (size_t)c->n + 2 ? malloc(6 * (size_t)c->n + 2) : NULL;
		if (j)
			jn = tmpl_json_text(c->u.s, c->n, j);
		if (j && len == jn && !memcmp(x, j, len))
			as = JSON;
		else if (j && len == jn - 2 && !memcmp(x, j + 1, len))
			as = JSON_INNER;
		free(j);
		if (as < 0) {
			free(p);
			return -1;
		}
		p[n++] = (struct piece){ .msg = run->msg, .as = (uint8_t)as, .off = run->start, .raw = len };
	}
	*out = p;
	*nout = n;
	return 0;
}

/* Whether a content lies between the first and last bytes of a message's
 * tool calls: there chat's check that the arguments printed parse back
 * reads it. */
static int content_in_calls(const struct tmpl_output *o)
{
	for (size_t r = 0; r < o->nruns; r++) {
		if (o->runs[r].origin != TMPL_MSG_TOOL_CALLS)
			continue;
		size_t last = r;
		for (size_t k = r + 1; k < o->nruns; k++)
			if (o->runs[k].origin == TMPL_MSG_TOOL_CALLS && o->runs[k].msg == o->runs[r].msg)
				last = k;
		for (size_t k = r + 1; k < last; k++)
			if (o->runs[k].origin == TMPL_MSG_CONTENT)
				return 1;
		r = last;
	}
	return 0;
}

struct memo_learn *chat_memo_learn_begin(const struct tmpl_output *ro, const struct jd *msgs, int args_checked)
{
	struct memo_learn *l = calloc(1, sizeof *l);
	if (!l)
		return NULL;
	l->ro = ro, l->msgs = msgs;
	l->fail = (args_checked && content_in_calls(ro)) || pieces_of(ro, msgs, &l->p, &l->n) < 0;
	return l;
}

/* po, a byte prefix of ro, must be ro's pieces up to a point: the same
 * contents in the same places, the last piece a literal's beginning. */
void chat_memo_learn_prefix(struct memo_learn *l, const struct tmpl_output *po)
{
	struct piece *q;
	uint32_t nq;
	if (l->fail || pieces_of(po, l->msgs, &q, &nq) < 0) {
		l->fail = 1;
		return;
	}
	if (nq > l->n)
		l->fail = 1;
	for (uint32_t k = 0; k < nq && !l->fail; k++) {
		const struct piece *a = &q[k], *b = &l->p[k];
		if (a->msg != b->msg || a->as != b->as || a->off != b->off ||
		    (a->raw != b->raw && (k + 1 < nq || a->msg >= 0 || a->raw > b->raw)))
			l->fail = 1;
	}
	free(q);
}

/* Where p lies: a piece and an offset in it, a content's only at its start. */
static int place(const struct memo_learn *l, long p, uint32_t out[2])
{
	long at = 0;
	for (uint32_t k = 0; k < l->n; k++) {
		if (p == at || (p > at && p < at + (long)l->p[k].raw && l->p[k].msg < 0)) {
			out[0] = k, out[1] = (uint32_t)(p - at);
			return 0;
		}
		if (p < at + (long)l->p[k].raw)
			return -1; /* inside a content */
		at += l->p[k].raw;
	}
	if (p != at)
		return -1;
	out[0] = l->n, out[1] = 0;
	return 0;
}

static struct program *program_of(const struct memo_learn *l, const long *spans, size_t nspans,
				  const struct tmpl_watch *w)
{
	struct program *g = calloc(1, sizeof *g);
	struct jsonl_buf eb = { 0 };
	if (!g)
		return NULL;
	g->npieces = l->n, g->nspans = (uint32_t)nspans;
	g->pieces = malloc((l->n + 1) * sizeof *g->pieces);
	g->ends = malloc((2 * nspans + 1) * sizeof *g->ends);
	if (!g->pieces || !g->ends)
		goto fail;
	for (uint32_t k = 0; k < l->n; k++) {
		g->pieces[k] = l->p[k];
		g->njson += l->p[k].as == JSON || l->p[k].as == JSON_INNER;
		if (l->p[k].msg >= 0)
			continue;
		g->pieces[k].off = (uint32_t)eb.n;
		jsonl_put_escaped(&eb, l->ro->text + l->p[k].off, l->p[k].raw);
		g->pieces[k].len = (uint32_t)(eb.n - g->pieces[k].off);
	}
	if (eb.oom)
		goto fail;
	for (size_t s = 0; s < 2 * nspans; s++)
		if (place(l, spans[s], g->ends[s]) < 0)
			goto fail;
	g->esc = eb.p;
	g->nclock = w->nclock;
	memcpy(g->clock, w->clock, sizeof g->clock);
	return g;
fail:
	free(eb.p);
	program_free(g);
	return NULL;
}

void chat_memo_learn_end(struct chat_memo *m, struct memo_shape *e, struct memo_learn *l, const long *spans,
			 size_t nspans, const struct tmpl_watch *w, int fail)
{
	struct program *g = NULL;
	if (l && !l->fail && !fail && !w->unreplayable)
		g = program_of(l, spans, nspans, w);
	if (l) {
		free(l->p);
		free(l);
	}
	if (!e)
		return;
	program_free(e->prog);
	e->prog = g;
	e->state = g ? LEARNED : REFUSED;
	if (g) {
		m->learned++;
		m->bytes += g->npieces * sizeof *g->pieces + g->nspans * sizeof *g->ends;
		for (uint32_t k = 0; k < g->npieces; k++)
			m->bytes += g->pieces[k].msg < 0 ? g->pieces[k].len : 0;
	} else {
		m->refused++;
	}
}

/* ---- writing ---- */

/* Whether strftime_now(fmt) still prints out: the clock read once a second. */
static int clock_same(const char *fmt, const char *out)
{
	static _Thread_local time_t sec = -1;
	static _Thread_local char f[64], o[128];
	time_t now = time(NULL);
	if (now != sec || strcmp(fmt, f)) {
		size_t n = tmpl_strftime_now(fmt, o, sizeof o);
		o[n < sizeof o ? n : 0] = 0;
		snprintf(f, sizeof f, "%s", fmt);
		sec = now;
	}
	return !strcmp(o, out);
}

/* Message msg's content, a string: from the key when msgs is its messages. */
static const struct jd *piece_content(const struct chat_memo *m, const struct jd *msgs, int32_t msg)
{
	return msgs == m->msgs ? m->content[msg] : content_of(msgs, msg);
}

int chat_memo_put(struct chat_memo *m, struct memo_shape *e, const struct jd *msgs, size_t max_output,
		  struct jsonl_buf *b, long **spans, size_t *nspans)
{
	struct program *g = e->prog;
	if (e->state != LEARNED)
		return -1;
	for (unsigned c = 0; c < g->nclock; c++)
		if (!clock_same(g->clock[c].fmt, g->clock[c].out)) {
			program_free(g);
			e->prog = NULL;
			e->state = UNTRIED;
			return -1;
		}
	if (g->npieces + 1 > m->atcap) {
		size_t cap = 2 * ((size_t)g->npieces + 1);
		size_t *at = realloc(m->at, cap * sizeof *at);
		if (at)
			m->at = at;
		const char **src = at ? realloc(m->src, cap * sizeof *src) : NULL;
		if (src)
			m->src = src;
		if (!at || !src)
			return -1;
		m->atcap = cap;
	}
	size_t need = 0; /* room for the tojson texts, each at its longest */
	for (uint32_t k = 0; g->njson && k < g->npieces; k++) {
		const struct piece *p = &g->pieces[k];
		const struct jd *c = p->as == JSON || p->as == JSON_INNER ? piece_content(m, msgs, p->msg) : NULL;
		need += c ? 6 * (size_t)c->n + 2 : 0;
	}
	if (need > m->jcap) {
		char *j = realloc(m->json, need);
		if (!j)
			return -1;
		m->json = j, m->jcap = need;
	}
	size_t *at = m->at, pos = 0, jn = 0;
	for (uint32_t k = 0; k < g->npieces; k++) {
		const struct piece *p = &g->pieces[k];
		at[k] = pos;
		if (p->msg < 0) {
			pos += p->raw;
			continue;
		}
		const struct jd *c = piece_content(m, msgs, p->msg);
		if (!c)
			return -1;
		size_t lo = 0, hi = c->n;
		if (p->as == TRIMMED) {
			tmpl_strip_span(c->u.s, c->n, &lo, &hi);
		} else if (p->as == JSON || p->as == JSON_INNER) {
			size_t t = tmpl_json_text(c->u.s, c->n, m->json + jn);
			m->src[k] = m->json + jn + (p->as == JSON_INNER);
			jn += t;
			pos += t - 2 * (p->as == JSON_INNER);
			continue;
		}
		m->src[k] = c->u.s + lo;
		pos += hi - lo;
	}
	at[g->npieces] = pos;
	long *sp = pos <= max_output ? malloc((2 * (size_t)g->nspans + 1) * sizeof *sp) : NULL;
	if (!sp)
		return -1;
	jsonl_put(b, "\"", 1);
	for (uint32_t k = 0; k < g->npieces; k++) {
		const struct piece *p = &g->pieces[k];
		if (p->msg < 0)
			jsonl_put(b, g->esc + p->off, p->len);
		else
			jsonl_put_escaped(b, m->src[k], at[k + 1] - at[k]);
	}
	jsonl_put(b, "\"", 1);
	for (uint32_t s = 0; s < 2 * g->nspans; s++)
		sp[s] = (long)(at[g->ends[s][0]] + g->ends[s][1]);
	*spans = sp, *nspans = g->nspans;
	m->replayed++;
	return 0;
}

void chat_memo_stats(const struct chat_memo *m, unsigned long long *replayed, unsigned long long *learned,
		     unsigned long long *refused)
{
	*replayed = m ? m->replayed : 0;
	*learned = m ? m->learned : 0;
	*refused = m ? m->refused : 0;
}
