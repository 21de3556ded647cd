/* chat_memo: records of a shape seen before, formatted without rendering (see chat_memo.h). */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <time.h>

#include "chat_memo.h"
#include "jsonl.h"

enum { UNTRIED, LEARNED, REFUSED };
/* Records of a shape learning is tried on, when each prefix rendering that
 * began its text did so only by its bytes (see chat_memo_learn_end). */
enum { MEMO_TRIES = 4 };
/* MAX_CONTENT: a record's contents in all; longer ones are rendered, so
 * that the renderer's limits meet the same texts they would (what a
 * template builds from the contents grows with them). */
enum { MAX_ENTRIES = 4096, MAX_CONTENT = 64 << 10 };
/* A line's top-level arrays and objects of KEPT_MIN bytes or more are kept
 * (KEPT_MAX of them): a line's key names one by its number, so that a tool
 * list every record repeats is neither scanned nor hashed again. */
enum { KEPT_MIN = 128, KEPT_MAX = 64 };
#define MAX_BYTES ((size_t)64 << 20) /* keys and programs of one memo; past it the memo starts over */

/* A piece of the text: the literal bytes esc[off, off + len) (escaped;
 * raw bytes long, unescaped at plain[roff] where a program keeps them),
 * or message msg's content as the template printed it. */
enum { WHOLE, TRIMMED, JSON, JSON_INNER }; /* JSON: tojson's text; JSON_INNER: without its quotes */
struct piece {
	int32_t msg; /* -1: literal */
	uint8_t as;  /* for a content: WHOLE ... */
	uint32_t off, len, raw, roff;
};
/* The pieces of a prefix's rendering that was not the text's beginning
 * (literals: their bytes at plain[roff]): a record whose text it begins
 * is rendered, its turn's start being another (chat_memo_learn_apart). */
struct apart {
	struct piece *q;
	uint32_t n;
};
struct program {
	uint32_t npieces, nspans, njson; /* njson: the pieces printed through tojson */
	struct piece *pieces;
	uint32_t (*ends)[2]; /* 2 * nspans: piece, offset in it (a literal's, or 0) */
	char *esc;
	unsigned nclock, nsame;
	struct {
		char fmt[64], out[128];
	} clock[TMPL_WATCH_CLOCKS];
	struct tmpl_same *same; /* messages whose contents must be the same, or not, as they were */
	struct apart *apart;
	uint32_t napart;
	char *plain; /* the literals' bytes unescaped, when napart */
};
/* A key kept in a table's slot (each slot's first member). */
struct memo_key {
	uint64_t hash;
	char *p; /* NULL: the slot is empty */
	size_t n;
};
struct memo_shape {
	struct memo_key k;
	int state;
	int tries; /* records learning failed on, by a prefix's bytes alone */
	struct jd_shared *tools; /* held while the key names its block */
	struct program *prog;
};
/* A line's skeleton and the shape its records take: final message j's
 * content is the line's message from[j]'s, --system's (FROM_SYSTEM) or
 * none (FROM_NONE). */
enum { FROM_SYSTEM = -1, FROM_NONE = -2, FROM_UNKNOWN = -3 /* while learning */ };
/* A hole of a line: the literal bytes of its key before it (lit), its kind
 * ('c' a message's content, 's' a top-level string, 'n' a top-level number,
 * 'k' a kept text), its class (a content's; a kept text's number) and at,
 * the message's or the top-level member's number. */
struct line_hole {
	uint32_t lit, at;
	unsigned char kind, cls;
};
struct memo_line {
	struct memo_key k;
	struct memo_shape *shape;
	int32_t *from;
	uint32_t nfrom;
	/* what matches a line of the same key without scanning it (match_line):
	 * its holes, its messages' count, its top-level members (keys copied,
	 * the values of those that are no hole) */
	struct line_hole *holes;
	uint32_t nholes, nmsgs;
	struct jd_member *top;
	uint32_t ntop;
};
struct chat_memo {
	/* Each table: its entries in the order learned (n of MAX_ENTRIES), and
	 * an index of 2 * MAX_ENTRIES slots by key hash (open addressing), each
	 * an entry's number + 1 or 0. The entries' pages are first touched by
	 * a write: a slot table read before it is written would map the zero
	 * page, whose copy on the write flushes the other threads' TLBs. */
	struct memo_shape *tab;
	struct memo_line *lines;
	uint32_t *tab_index, *lines_index;
	size_t n, nlines, bytes;
	struct jsonl_buf key; /* the key being built */
	struct chat_memo_stats stats;
	size_t *at; /* chat_memo_put's: where each piece begins, and the end */
	const char **src; /* and where each content piece's bytes are */
	size_t atcap;
	char *json; /* tojson's texts of the contents printed so */
	size_t jcap;
	long *spans; /* put_text's: the record's spans, as pairs */
	size_t spcap;
	const struct jd *msgs; /* the messages of the last key, */
	const struct jd **content; /* and each one's content (a string), or NULL */
	unsigned char *plain;      /* chat_memo_line_put's: put_text's plain */
	uint32_t ncontent;
	size_t ccap;
	/* the line last scanned (chat_memo_line_put): */
	const char *line;
	size_t len;
	struct jsonl_buf lkey;   /* its key */
	uint64_t lhash;
	char *dec;               /* its decoded strings, each at its own offset */
	size_t dcap;
	struct jd *lcontent;     /* each message's content, a string, or null */
	unsigned char *lplain;   /* and whether it is its bytes in the line (put_text's plain) */
	uint32_t nlmsgs;
	size_t lccap, lbytes;    /* lbytes: the contents' in all */
	struct jd_member *top;   /* the top-level members but "messages" */
	size_t ntop, ctop;
	struct line_hole *holes; /* its holes, in order */
	size_t nholes, choles;
	int holes_oom;
	/* The entry of the line last put (its number + 1), and whether the one
	 * before had it too: a run of lines of one key, whose next line is read
	 * against it first (match_line). matched: the entry the line last
	 * scanned matched so (its lkey and lhash not set until line_key_built). */
	size_t last_line, matched;
	int run;
	struct {
		char *text;
		size_t len;
	} kept[KEPT_MAX];
	unsigned nkept, last_kept;
};

enum { INDEX_BYTES = 2 * MAX_ENTRIES * sizeof(uint32_t) };

struct chat_memo *chat_memo_new(void) { return calloc(1, sizeof(struct chat_memo)); }

/* The tables, made at the memo's first use, by the thread that uses it
 * (a memo made for a thread that gets no record costs nothing): 0, or -1. */
static int tables_made(struct chat_memo *m)
{
	if (m->tab)
		return 0;
	struct memo_shape *tab = malloc(MAX_ENTRIES * sizeof *tab);
	struct memo_line *lines = malloc(MAX_ENTRIES * sizeof *lines);
	uint32_t *tab_index = malloc(INDEX_BYTES), *lines_index = malloc(INDEX_BYTES);
	if (!tab || !lines || !tab_index || !lines_index) {
		free(tab), free(lines), free(tab_index), free(lines_index);
		return -1;
	}
	memset(tab_index, 0, INDEX_BYTES); /* written, not calloc's: see the tables */
	memset(lines_index, 0, INDEX_BYTES);
	m->tab = tab, m->lines = lines, m->tab_index = tab_index, m->lines_index = lines_index;
	return 0;
}

static void aparts_free(struct apart *a, uint32_t n)
{
	for (uint32_t k = 0; a && k < n; k++)
		free(a[k].q);
	free(a);
}

static void program_free(struct program *p)
{
	if (p) {
		free(p->pieces);
		free(p->ends);
		free(p->esc);
		free(p->same);
		aparts_free(p->apart, p->napart);
		free(p->plain);
		free(p);
	}
}

/* Frees the entries learned (only those: the tables' other pages stay
 * untouched) and empties the indexes unless the memo is freed. */
static void entries_clear(struct chat_memo *m, int freeing)
{
	for (size_t k = 0; m->tab && k < m->n; k++) {
		struct memo_shape *e = &m->tab[k];
		free(e->k.p);
		program_free(e->prog);
		if (e->tools)
			jd_shared_unref(e->tools);
	}
	for (size_t k = 0; m->lines && k < m->nlines; k++) {
		free(m->lines[k].k.p);
		free(m->lines[k].from);
		free(m->lines[k].holes);
		free(m->lines[k].top);
	}
	for (unsigned k = 0; k < m->nkept; k++)
		free(m->kept[k].text);
	if (!freeing) {
		memset(m->tab_index, 0, INDEX_BYTES);
		memset(m->lines_index, 0, INDEX_BYTES);
	}
	m->n = m->nlines = m->bytes = m->nkept = m->last_kept = m->last_line = m->matched = 0;
	m->run = 0;
	m->line = NULL; /* a line scanned before names kept texts that are gone: not to be learned */
}

void chat_memo_free(struct chat_memo *m)
{
	if (!m)
		return;
	entries_clear(m, 1);
	free(m->tab);
	free(m->lines);
	free(m->tab_index);
	free(m->lines_index);
	free(m->key.p);
	free(m->lkey.p);
	free(m->dec);
	free(m->lcontent);
	free(m->lplain);
	free(m->spans);
	free(m->top);
	free(m->holes);
	free(m->at);
	free(m->src);
	free(m->content);
	free(m->plain);
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
		khead(m, v->kind, v->is_float | v->exact << 1 | v->rounded << 2); /* u's bytes: a double's or an integer's */
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

/* Whether a character that begins with byte c is never white space to
 * Python's str.strip: ASCII from '!', and the leads of characters none of
 * which is (not C2: U+0085, U+00A0; E1: U+1680; E2: U+2000-U+205F; E3: U+3000). */
static inline int never_space(unsigned char c)
{
	return (c > ' ' && c < 0x80) || (c >= 0xC3 && c <= 0xE0) || (c >= 0xE4 && c <= 0xF4);
}

/* What a trim, a truth test or chat's validation sees of a content:
 * empty, all white space (Python's), white space first, last. */
static unsigned content_class(const struct jd *c)
{
	if (c->n && never_space((unsigned char)c->u.s[0])) {
		size_t k = c->n - 1; /* the last character's first byte (c is UTF-8) */
		while (k > 0 && ((unsigned char)c->u.s[k] & 0xC0) == 0x80)
			k--;
		if (never_space((unsigned char)c->u.s[k]))
			return 0; /* none of them */
	}
	size_t lo, hi;
	tmpl_strip_span(c->u.s, c->n, &lo, &hi);
	return (c->n == 0) | (lo == c->n) << 1 | (lo > 0) << 2 | (hi < c->n) << 3;
}

/* Four lanes of 8 bytes side by side, so that a long key (a 20-turn
 * line's skeleton) is not one chain of multiplies; then the rest. */
static uint64_t hash_bytes(const char *s, size_t n)
{
	const uint64_t k = 0xff51afd7ed558ccdull;
	uint64_t h[4] = {0x9e3779b97f4a7c15ull ^ n, 0xc2b2ae3d27d4eb4full, 0x165667b19e3779f9ull, 0x27d4eb2f165667c5ull};
	size_t i = 0;
	for (; i + 32 <= n; i += 32)
		for (int l = 0; l < 4; l++) {
			uint64_t w;
			memcpy(&w, s + i + 8 * l, 8);
			h[l] = (h[l] ^ w) * k;
			h[l] ^= h[l] >> 32;
		}
	uint64_t x = h[0] ^ (h[1] * 3) ^ (h[2] * 5) ^ (h[3] * 7);
	for (; i + 8 <= n; i += 8) {
		uint64_t w;
		memcpy(&w, s + i, 8);
		x = (x ^ w) * k;
		x ^= x >> 32;
	}
	uint64_t w = 0;
	memcpy(&w, s + i, n - i);
	x = (x ^ w) * 0xc4ceb9fe1a85ec53ull;
	return x ^ (x >> 29);
}

/* The slot of the key b (hash h) in a table's index, its entries of
 * size bytes each, a memo_key first: where the key's entry is, or the
 * empty slot where it goes. */
static size_t slot_of(const uint32_t *index, const void *entries, size_t size, uint64_t h, const struct jsonl_buf *b)
{
	size_t mask = 2 * MAX_ENTRIES - 1, i = h & mask;
	for (;; i = (i + 1) & mask) {
		if (!index[i])
			return i;
		const struct memo_key *k = (const void *)((const char *)entries + (index[i] - 1) * size);
		if (k->hash == h && k->n == b->n && !memcmp(k->p, b->p, b->n))
			return i;
	}
}

/* k made a copy of the key b (hash h): 0, or -1 when memory is short. */
static int key_keep(struct memo_key *k, uint64_t h, const struct jsonl_buf *b)
{
	if (!(k->p = malloc(b->n)))
		return -1;
	memcpy(k->p, b->p, b->n);
	k->n = b->n, k->hash = h;
	return 0;
}

/* Room for n contents in m->content. */
static int content_room(struct chat_memo *m, size_t n)
{
	if (n <= m->ccap)
		return 0;
	const struct jd **c = realloc(m->content, 2 * n * sizeof *c);
	if (c)
		m->content = c;
	unsigned char *p = c ? realloc(m->plain, 2 * n) : NULL;
	if (!p)
		return -1;
	m->plain = p, m->ccap = 2 * n;
	return 0;
}

struct memo_shape *chat_memo_find(struct chat_memo *m, const void *t, const struct jd *msgs, const struct jd *tools)
{
	if (!m || msgs->kind != JD_ARRAY || tables_made(m) < 0)
		return NULL;
	m->key.n = 0, m->key.oom = 0, m->msgs = NULL;
	if (!kroom(m, 64))
		return NULL;
	if (content_room(m, msgs->n) < 0)
		return NULL;
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
	m->msgs = msgs, m->ncontent = msgs->n;
	uint64_t h = hash_bytes(m->key.p, m->key.n);
	size_t i = slot_of(m->tab_index, m->tab, sizeof *m->tab, h, &m->key);
	if (m->tab_index[i])
		return &m->tab[m->tab_index[i] - 1];
	if (m->n >= MAX_ENTRIES || m->bytes > MAX_BYTES) {
		entries_clear(m, 0);
		i = slot_of(m->tab_index, m->tab, sizeof *m->tab, h, &m->key);
	}
	struct memo_shape *e = &m->tab[m->n];
	*e = (struct memo_shape){.state = UNTRIED};
	if (key_keep(&e->k, h, &m->key) < 0)
		return NULL;
	e->tools = sh ? jd_shared_ref(sh) : NULL;
	m->tab_index[i] = (uint32_t)++m->n;
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
	int again; /* a prefix rendering that was ro's beginning by its bytes, not its pieces */
	struct apart *apart; /* chat_memo_learn_apart's, their literals' bytes in plain */
	uint32_t napart;
	struct jsonl_buf plain;
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
 * contents in the same places, the last piece a literal's beginning.
 * Other pieces with the same bytes (a content that reads as the literal
 * the text has there) make this record one not to learn from. */
void chat_memo_learn_prefix(struct memo_learn *l, const struct tmpl_output *po)
{
	struct piece *q;
	uint32_t nq;
	if (l->fail || pieces_of(po, l->msgs, &q, &nq) < 0) {
		l->fail = 1;
		return;
	}
	int same = nq <= l->n;
	for (uint32_t k = 0; k < nq && same; k++) {
		const struct piece *a = &q[k], *b = &l->p[k];
		same = a->msg == b->msg && a->as == b->as && a->off == b->off &&
		       (a->raw == b->raw || (k + 1 == nq && a->msg < 0 && a->raw < b->raw));
	}
	l->again |= !same;
	free(q);
}

void chat_memo_learn_apart(struct memo_learn *l, const struct tmpl_output *po)
{
	struct piece *q;
	uint32_t nq;
	struct apart *a = l->fail ? NULL : realloc(l->apart, (l->napart + 1) * sizeof *a);
	if (a)
		l->apart = a;
	if (!a || pieces_of(po, l->msgs, &q, &nq) < 0) {
		l->fail = 1;
		return;
	}
	a[l->napart++] = (struct apart){q, nq};
	for (uint32_t k = 0; k < nq; k++) {
		if (q[k].msg >= 0 && q[k].as != WHOLE && q[k].as != TRIMMED)
			l->fail = 1; /* its tojson text is not at hand when the check runs */
		if (q[k].msg >= 0)
			continue;
		q[k].roff = (uint32_t)l->plain.n;
		jsonl_put(&l->plain, po->text + q[k].off, q[k].raw);
	}
	l->fail |= l->plain.oom;
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

/* l's aparts and their literals, and its pieces', move to g. */
static int program_aparts(struct program *g, struct memo_learn *l)
{
	for (uint32_t k = 0; k < l->n; k++)
		if (l->p[k].msg < 0) {
			g->pieces[k].roff = (uint32_t)l->plain.n;
			jsonl_put(&l->plain, l->ro->text + l->p[k].off, l->p[k].raw);
		}
	if (l->plain.oom)
		return -1;
	g->plain = l->plain.p, g->apart = l->apart, g->napart = l->napart;
	l->plain = (struct jsonl_buf){0}, l->apart = NULL, l->napart = 0;
	return 0;
}

static struct program *program_of(struct memo_learn *l, const long *spans, size_t nspans,
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
	g->esc = eb.p, eb.p = NULL;
	g->nclock = w->nclock;
	memcpy(g->clock, w->clock, sizeof g->clock);
	if (w->nsame && !(g->same = malloc(w->nsame * sizeof *g->same)))
		goto fail;
	g->nsame = w->nsame;
	for (unsigned s = 0; s < w->nsame; s++) {
		const struct jd *a = content_of(l->msgs, w->same[s].a), *b = content_of(l->msgs, w->same[s].b);
		if (!a || !b || jd_equal(a, b) != w->same[s].same)
			goto fail; /* not what the renderer compared */
		g->same[s] = w->same[s];
	}
	if (l->napart && program_aparts(g, l) < 0)
		goto fail;
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
	int ok = l && !l->fail && !fail && !w->unreplayable, again = ok && l->again;
	if (ok && !again)
		g = program_of(l, spans, nspans, w);
	if (l) {
		free(l->p);
		aparts_free(l->apart, l->napart);
		free(l->plain.p);
		free(l);
	}
	if (!e)
		return;
	program_free(e->prog);
	e->prog = g;
	/* A prefix that began the text by its bytes alone says nothing of the
	 * shape: its next record is learned from (MEMO_TRIES records in all). */
	e->state = g ? LEARNED : again && ++e->tries < MEMO_TRIES ? UNTRIED : REFUSED;
	if (g) {
		m->stats.learned++;
		m->bytes += g->npieces * sizeof *g->pieces + g->nspans * sizeof *g->ends + g->nsame * sizeof *g->same;
		for (uint32_t k = 0; k < g->npieces; k++)
			m->bytes += g->pieces[k].msg < 0 ? g->pieces[k].len + (g->napart ? g->pieces[k].raw : 0) : 0;
		for (uint32_t a = 0; a < g->napart; a++)
			for (uint32_t k = 0; k < g->apart[a].n; k++)
				m->bytes += sizeof *g->apart[a].q + (g->apart[a].q[k].msg < 0 ? g->apart[a].q[k].raw : 0);
	} else if (e->state == REFUSED) {
		m->stats.refused++;
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

/* Whether the text of apart a, contents in place, is where the record's
 * text begins: g's pieces, piece k's bytes at src[k] (a content's) and
 * at[k + 1] - at[k] long. A content a lacks counts as a beginning: the
 * record is rendered. */
static int text_begins(const struct program *g, const struct apart *a, const struct jd *const *content,
		       uint32_t ncontent, const char *const *src, const size_t *at)
{
	uint32_t k = 0;
	size_t ko = 0; /* in piece k */
	for (uint32_t j = 0; j < a->n; j++) {
		const struct piece *q = &a->q[j];
		const char *s = g->plain + q->roff;
		size_t n = q->raw;
		if (q->msg >= 0) {
			const struct jd *c = (uint32_t)q->msg < ncontent ? content[q->msg] : NULL;
			size_t lo = 0, hi = c ? c->n : 0;
			if (!c)
				return 1;
			if (q->as == TRIMMED)
				tmpl_strip_span(c->u.s, c->n, &lo, &hi);
			s = c->u.s + lo, n = hi - lo;
		}
		while (n) {
			while (k < g->npieces && ko == at[k + 1] - at[k])
				k++, ko = 0;
			if (k == g->npieces)
				return 0; /* longer than the text */
			const char *t = (g->pieces[k].msg < 0 ? g->plain + g->pieces[k].roff : src[k]) + ko;
			size_t c = at[k + 1] - at[k] - ko < n ? at[k + 1] - at[k] - ko : n;
			if (memcmp(s, t, c))
				return 0;
			s += c, n -= c, ko += c;
		}
	}
	return 1;
}

/* The text of e's shape with m->content[j] (a string, or NULL) as message
 * j's content: chat_memo_put's and chat_memo_line_put's; *spans is m's
 * own array, until the next put. With plain, m->plain says of each
 * content whether it holds no byte a JSON string escapes, so that its
 * bytes are copied as they are. */
static int put_text(struct chat_memo *m, struct memo_shape *e, int plain, size_t max_output, struct jsonl_buf *b,
		    long **spans, size_t *nspans)
{
	const struct jd *const *content = m->content;
	uint32_t ncontent = m->ncontent;
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
	for (unsigned s = 0; s < g->nsame; s++) {
		const struct tmpl_same *q = &g->same[s];
		const struct jd *x = (uint32_t)q->a < ncontent ? content[q->a] : NULL;
		const struct jd *y = (uint32_t)q->b < ncontent ? content[q->b] : NULL;
		if (!x || !y || jd_equal(x, y) != q->same)
			return -1; /* the renderer's comparison would go the other way */
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
		const struct jd *c = (p->as == JSON || p->as == JSON_INNER) && (uint32_t)p->msg < ncontent ? content[p->msg] : NULL;
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
		const struct jd *c = (uint32_t)p->msg < ncontent ? content[p->msg] : NULL;
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
	for (uint32_t a = 0; a < g->napart; a++)
		if (text_begins(g, &g->apart[a], content, ncontent, m->src, at))
			return -1; /* the turn's start would be where the prefix ends */
	if (pos > max_output)
		return -1;
	if (2 * (size_t)g->nspans > m->spcap) {
		long *sp = realloc(m->spans, 2 * (size_t)g->nspans * sizeof *sp);
		if (!sp)
			return -1;
		m->spans = sp, m->spcap = 2 * (size_t)g->nspans;
	}
	long *sp = m->spans;
	jsonl_put(b, "\"", 1);
	for (uint32_t k = 0; k < g->npieces; k++) {
		const struct piece *p = &g->pieces[k];
		if (p->msg < 0)
			jsonl_put(b, g->esc + p->off, p->len);
		else if (plain && m->plain[p->msg] && p->as != JSON && p->as != JSON_INNER)
			jsonl_put(b, m->src[k], at[k + 1] - at[k]);
		else
			jsonl_put_escaped(b, m->src[k], at[k + 1] - at[k]);
	}
	jsonl_put(b, "\"", 1);
	for (uint32_t s = 0; s < 2 * g->nspans; s++)
		sp[s] = (long)(at[g->ends[s][0]] + g->ends[s][1]);
	*spans = sp, *nspans = g->nspans;
	m->stats.replayed++;
	return 0;
}

int chat_memo_put(struct chat_memo *m, struct memo_shape *e, const struct jd *msgs, size_t max_output,
		  struct jsonl_buf *b, long **spans, size_t *nspans)
{
	if (msgs != m->msgs) { /* not the last key's messages: their contents afresh */
		if (content_room(m, msgs->n) < 0)
			return -1;
		for (uint32_t i = 0; i < msgs->n; i++)
			m->content[i] = content_of(msgs, (int32_t)i);
		m->msgs = msgs, m->ncontent = msgs->n;
	}
	size_t start = b->n;
	long *sp;
	if (put_text(m, e, 0, max_output, b, &sp, nspans) < 0)
		return -1;
	if (!(*spans = malloc((2 * *nspans + 1) * sizeof **spans))) {
		b->n = start;
		m->stats.replayed--;
		return -1;
	}
	if (*nspans)
		memcpy(*spans, sp, 2 * *nspans * sizeof *sp);
	return 0;
}

/* ---- lines ---- */

static inline const char *skip_ws(const char *s, const char *end)
{
	while (s < end && (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r'))
		s++;
	return s;
}

/* The line's bytes [a, b), a hole, left out of its key: the bytes before
 * it go in, then a mark of its kind (content: with its class). at: the
 * message's or top-level member's number. */
static void hole(struct chat_memo *m, const char **flushed, const char *a, const char *b, char kind, unsigned cls,
		 size_t at)
{
	char mark[3] = {(char)0xff, kind, (char)cls}; /* 0xff: never in UTF-8 */
	size_t lit = (size_t)(a - *flushed);
	jsonl_put(&m->lkey, *flushed, lit);
	jsonl_put(&m->lkey, mark, sizeof mark);
	*flushed = b;
	if (m->nholes == m->choles) {
		size_t cap = 2 * m->choles + 16;
		struct line_hole *h = realloc(m->holes, cap * sizeof *h);
		if (!h) { /* the line is scanned as before, only not kept for match_line */
			m->holes_oom = 1;
			return;
		}
		m->holes = h, m->choles = cap;
	}
	m->holes[m->nholes++] = (struct line_hole){(uint32_t)lit, (uint32_t)at, (unsigned char)kind, (unsigned char)cls};
}

/* The closing quote of the string whose text begins at s (past its
 * quote), when no backslash comes first; else NULL. A byte at a time:
 * keys and roles are a few bytes long. */
static inline const char *plain_end(const char *s, const char *end)
{
	while (s < end && *s != '"' && *s != '\\')
		s++;
	return s < end && *s == '"' ? s : NULL;
}

/* The key at s ('"' expected), written without a backslash: its end past
 * the ':' and the white space after it, or NULL. */
static const char *plain_key(const char *s, const char *end, const char **ks, size_t *kn)
{
	/* the keys of nearly every message, compared whole before the byte scan */
	static const struct {
		const char *q;
		size_t n;
	} common[] = {{"\"role\"", 6}, {"\"content\"", 9}};
	const char *ke = NULL;
	for (size_t k = 0; !ke && k < sizeof common / sizeof *common; k++)
		if ((size_t)(end - s) > common[k].n && !memcmp(s, common[k].q, common[k].n))
			ke = s + common[k].n - 1;
	if (!ke && s < end && *s == '"')
		ke = plain_end(s + 1, end);
	if (!ke)
		return NULL;
	*ks = s + 1, *kn = (size_t)(ke - s - 1);
	s = skip_ws(ke + 1, end);
	return s < end && *s == ':' ? skip_ws(s + 1, end) : NULL;
}

/* The string at s decoded at its own offset in m->dec: its text's length,
 * or -1 when the parser would not take it. */
static long line_string(struct chat_memo *m, const char *s, const char *end, struct jd *out, int *plain)
{
	const char *text;
	size_t len;
	long k = jsonl_string_decode(s, (size_t)(end - s), m->dec + (s - m->line), &text, &len, plain);
	*out = (struct jd){.kind = JD_STRING, .n = (uint32_t)len, .u.s = text};
	return k;
}

/* Message i's content, the string at s ('"'), read into m->lcontent[i]
 * (a repeated "content": the last one's, as the parser keeps): its
 * length, or <= 0 when the parser would not take it. */
static long read_content(struct chat_memo *m, const char *s, const char *end, uint32_t i)
{
	struct jd *c = &m->lcontent[i];
	int plain;
	m->lbytes -= c->kind == JD_STRING ? c->n : 0;
	long k = line_string(m, s, end, c, &plain);
	if (k <= 0)
		return k;
	m->lbytes += c->n;
	m->lplain[i] = (unsigned char)plain;
	return k;
}

/* A top-level string at s ('"') read into v, its text NUL-terminated
 * where it was decoded: its length, or <= 0. */
static long read_top_string(struct chat_memo *m, const char *s, const char *end, struct jd *v)
{
	long k = line_string(m, s, end, v, NULL);
	if (k <= 0)
		return k;
	char *d = m->dec + (s - m->line);
	memmove(d, v->u.s, v->n);
	d[v->n] = 0;
	v->u.s = d;
	return k;
}

/* Past the ',' (1) or the closing c (0) that follows a member or an
 * element at *sp, and the white space after; -1 when neither does. */
static int next_or_close(const char **sp, const char *end, char c)
{
	const char *s = skip_ws(*sp, end);
	if (s >= end || (*s != ',' && *s != c))
		return -1;
	*sp = skip_ws(s + 1, end);
	return *s == ',';
}

/* The bytes at s a number may be made of: its length, or 0. */
static size_t number_len(const char *s, const char *end)
{
	const char *p = s;
	while (p < end && ((*p >= '0' && *p <= '9') || *p == '-' || *p == '+' || *p == '.' || *p == 'e' || *p == 'E'))
		p++;
	return (size_t)(p - s);
}

/* A value of the key, passed over: its length, or 0. */
static size_t pass_value(const char *s, const char *end)
{
	const char *q = s < end && *s == '"' ? plain_end(s + 1, end) : NULL;
	return q ? (size_t)(q + 1 - s) : jsonl_value_len(s, (size_t)(end - s));
}

/* The length of the array or object at s when it is a kept text (found
 * first where the last one was), its number in m->last_kept; else it is
 * kept when long and there is room. 0 when not kept. The kept texts come
 * from lines, whose values may be anything: a text matches a line only
 * when the keys match too, and in a learned line it was a value whole. */
static size_t kept_value(struct chat_memo *m, const char *s, const char *end)
{
	size_t room = (size_t)(end - s);
	for (unsigned t = 0; t < m->nkept; t++) {
		unsigned k = (m->last_kept + t) % m->nkept;
		if (m->kept[k].len <= room && !memcmp(s, m->kept[k].text, m->kept[k].len)) {
			m->last_kept = k;
			return m->kept[k].len;
		}
	}
	size_t v = m->nkept < KEPT_MAX ? pass_value(s, end) : 0;
	char *text = v >= KEPT_MIN ? malloc(v) : NULL;
	if (!text)
		return 0;
	memcpy(text, s, v);
	m->kept[m->nkept].text = text, m->kept[m->nkept].len = v;
	m->last_kept = m->nkept++;
	m->bytes += v;
	return v;
}

/* Room to decode a line of len bytes, each string at its own offset
 * (dec): 0, or -1 (a line past INT_MAX too). */
static int dec_room(struct chat_memo *m, size_t len)
{
	if (len > INT_MAX)
		return -1;
	if (len + 1 > m->dcap) {
		char *d = realloc(m->dec, len + 1);
		if (!d)
			return -1;
		m->dec = d, m->dcap = len + 1;
	}
	return 0;
}

/* Room for n messages' contents (lcontent, lplain): 0, or -1. */
static int lcontent_room(struct chat_memo *m, size_t n)
{
	if (n <= m->lccap)
		return 0;
	size_t cap = 2 * n + 8;
	struct jd *c = realloc(m->lcontent, cap * sizeof *c);
	if (c)
		m->lcontent = c;
	unsigned char *p = c ? realloc(m->lplain, cap) : NULL;
	if (!p)
		return -1;
	m->lplain = p, m->lccap = cap;
	return 0;
}

/* Room for n top-level members (top): 0, or -1. */
static int top_room(struct chat_memo *m, size_t n)
{
	if (n <= m->ctop)
		return 0;
	struct jd_member *t = realloc(m->top, (2 * n + 4) * sizeof *t);
	if (!t)
		return -1;
	m->top = t, m->ctop = 2 * n + 4;
	return 0;
}

/* The messages' array at *sp: each message's content, a string, a hole. 0, or -1. */
static int scan_messages(struct chat_memo *m, const char **sp, const char *end, const char **flushed)
{
	const char *s = *sp;
	uint32_t i = 0;
	int r = 1;
	if (*s != '[')
		return -1;
	s = skip_ws(s + 1, end);
	if (s < end && *s == ']')
		s++, r = 0;
	for (; r > 0; i++) {
		if (lcontent_room(m, (size_t)i + 1) < 0)
			return -1;
		struct jd *c = &m->lcontent[i];
		*c = jd_null();
		if (s < end && *s == '{') {
			s = skip_ws(s + 1, end);
			int more = s >= end || *s != '}';
			if (!more)
				s++;
			while (more > 0) {
				const char *ks;
				size_t kn, v;
				if (!(s = plain_key(s, end, &ks, &kn)))
					return -1;
				if (kn == 7 && !memcmp(ks, "content", 7) && s < end && *s == '"') {
					long k = read_content(m, s, end, i);
					if (k <= 0)
						return -1;
					hole(m, flushed, s + 1, s + k - 1, 'c', content_class(c), i);
					s += k;
				} else if ((v = pass_value(s, end))) {
					s += v;
				} else {
					return -1;
				}
				more = next_or_close(&s, end, '}');
			}
			if (more < 0)
				return -1;
		} else {
			size_t v = pass_value(s, end);
			if (!v)
				return -1;
			s += v;
		}
		if ((r = next_or_close(&s, end, ']')) < 0)
			return -1;
	}
	m->nlmsgs = i;
	*sp = s;
	return 0;
}

/* The line's key: its bytes but the holes, each message's content and each
 * top-level string or number (its members but "messages" go to m->top,
 * those two decoded, a container only by its kind). 0, or -1 when the line
 * memo does not take the line: it is not an object of plain keys, once
 * each, with "messages"; a hole is not what the parser reads itself. */
static int scan_line(struct chat_memo *m, const char *line, size_t len)
{
	const char *s = skip_ws(line, line + len), *end = line + len, *flushed = line;
	int messages = 0, more = 1;
	m->lkey.n = 0, m->lkey.oom = 0, m->ntop = 0, m->nlmsgs = 0, m->lbytes = 0;
	m->nholes = 0, m->holes_oom = 0, m->matched = 0;
	m->line = line, m->len = len;
	if (s >= end || *s != '{' || dec_room(m, len) < 0)
		return -1;
	for (s = skip_ws(s + 1, end); more > 0; more = next_or_close(&s, end, '}')) {
		const char *ks;
		size_t kn;
		if (!(s = plain_key(s, end, &ks, &kn)) || s >= end)
			return -1;
		if (kn == 8 && !memcmp(ks, "messages", 8)) {
			if (messages++ || scan_messages(m, &s, end, &flushed) < 0)
				return -1;
			continue;
		}
		for (size_t t = 0; t < m->ntop; t++)
			if (m->top[t].key.n == kn && !memcmp(m->top[t].key.u.s, ks, kn))
				return -1; /* the parser keeps the first place, the last value */
		if (top_room(m, m->ntop + 1) < 0)
			return -1;
		struct jd_member *mb = &m->top[m->ntop++];
		char *key = m->dec + (ks - line); /* NUL-terminated, as jd keys are */
		memcpy(key, ks, kn);
		key[kn] = 0;
		mb->key = (struct jd){.kind = JD_STRING, .n = (uint32_t)kn, .u.s = key};
		size_t v = 0;
		if (*s == '"') {
			long k = read_top_string(m, s, end, &mb->val);
			if (k <= 0)
				return -1;
			hole(m, &flushed, s + 1, s + k - 1, 's', 0, m->ntop - 1);
			s += k;
			continue;
		}
		if ((v = number_len(s, end))) {
			if (jsonl_number_decode(s, v, &mb->val) < 0)
				return -1;
			hole(m, &flushed, s, s + v, 'n', 0, m->ntop - 1);
			s += v;
			continue;
		}
		if ((*s == '{' || *s == '[') && (v = kept_value(m, s, end))) {
			mb->val = (struct jd){.kind = *s == '{' ? JD_OBJECT : JD_ARRAY};
			hole(m, &flushed, s, s + v, 'k', m->last_kept, m->ntop - 1);
			s += v;
			continue;
		}
		if (!(v = pass_value(s, end)))
			return -1;
		if (*s == '{' || *s == '[')
			mb->val = (struct jd){.kind = *s == '{' ? JD_OBJECT : JD_ARRAY}; /* not read: only its kind */
		else if (v == 4 && !memcmp(s, "null", 4))
			mb->val = jd_null();
		else if ((v == 4 && !memcmp(s, "true", 4)) || (v == 5 && !memcmp(s, "false", 5)))
			mb->val = jd_bool(*s == 't');
		else
			return -1;
		s += v;
	}
	if (more < 0 || s != end || !messages)
		return -1;
	jsonl_put(&m->lkey, flushed, (size_t)(end - flushed));
	m->lhash = hash_bytes(m->lkey.p, m->lkey.n);
	return m->lkey.oom ? -1 : 0;
}

/* line[0..len) read as a line of l's key: the key's literal bytes compared,
 * the holes read as scan_line reads them, with what scan_line sets set (but
 * lkey and lhash). A line that matches has l's key, which scan_line would
 * build from it. 0, or -1 when it does not match. */
static int match_line(struct chat_memo *m, const struct memo_line *l, const char *line, size_t len)
{
	if (!l->holes || dec_room(m, len) < 0 || lcontent_room(m, l->nmsgs) < 0 || top_room(m, l->ntop) < 0)
		return -1;
	m->line = line, m->len = len, m->lbytes = 0, m->nlmsgs = l->nmsgs, m->ntop = l->ntop;
	for (uint32_t i = 0; i < l->nmsgs; i++)
		m->lcontent[i] = jd_null(), m->lplain[i] = 0;
	if (l->ntop) /* m->top may still be NULL */
		memcpy(m->top, l->top, l->ntop * sizeof *l->top);
	const char *p = line, *end = line + len, *k = l->k.p;
	for (uint32_t h = 0; h < l->nholes; h++) {
		const struct line_hole *o = &l->holes[h];
		if ((size_t)(end - p) < o->lit || memcmp(p, k, o->lit))
			return -1;
		p += o->lit, k += o->lit + 3; /* past the mark */
		long n;
		switch (o->kind) {
		case 'c':
			if ((n = read_content(m, p - 1, end, o->at)) <= 0 || content_class(&m->lcontent[o->at]) != o->cls)
				return -1;
			p += n - 2; /* at the closing quote */
			break;
		case 's':
			if ((n = read_top_string(m, p - 1, end, &m->top[o->at].val)) <= 0)
				return -1;
			p += n - 2;
			break;
		case 'n': {
			size_t v = number_len(p, end);
			if (!v || jsonl_number_decode(p, v, &m->top[o->at].val) < 0)
				return -1;
			p += v;
			break;
		}
		default: /* 'k' */
			if ((size_t)(end - p) < m->kept[o->cls].len || memcmp(p, m->kept[o->cls].text, m->kept[o->cls].len))
				return -1;
			p += m->kept[o->cls].len;
			m->last_kept = o->cls;
		}
	}
	size_t rest = l->k.n - (size_t)(k - l->k.p);
	return (size_t)(end - p) == rest && !memcmp(p, k, rest) ? 0 : -1;
}

/* lkey and lhash of the line last read, for one match_line matched: 0, or
 * -1 when memory is short. */
static int line_key_built(struct chat_memo *m)
{
	if (!m->matched)
		return 0;
	const struct memo_key *k = &m->lines[m->matched - 1].k;
	m->lkey.n = 0, m->lkey.oom = 0;
	jsonl_put(&m->lkey, k->p, k->n);
	m->lhash = k->hash, m->matched = 0;
	return m->lkey.oom ? -1 : 0;
}

/* The slot of the line last scanned in the lines' index. */
static size_t line_slot(const struct chat_memo *m)
{
	return slot_of(m->lines_index, m->lines, sizeof *m->lines, m->lhash, &m->lkey);
}

/* What match_line needs of the line last scanned, kept in l: 0, or -1. */
static int line_program(struct chat_memo *m, struct memo_line *l)
{
	size_t keys = 0;
	for (size_t t = 0; t < m->ntop; t++)
		keys += m->top[t].key.n + 1;
	l->holes = m->holes_oom ? NULL : malloc((m->nholes + 1) * sizeof *l->holes);
	l->top = l->holes ? malloc(m->ntop * sizeof *l->top + keys + 1) : NULL;
	if (!l->top) {
		free(l->holes);
		l->holes = NULL;
		return -1;
	}
	if (m->nholes) /* m->holes may still be NULL */
		memcpy(l->holes, m->holes, m->nholes * sizeof *l->holes);
	char *kd = (char *)(l->top + m->ntop);
	for (size_t t = 0; t < m->ntop; t++) {
		l->top[t] = m->top[t]; /* a hole's value is read from each line */
		memcpy(kd, m->top[t].key.u.s, m->top[t].key.n + 1);
		l->top[t].key.u.s = kd;
		kd += m->top[t].key.n + 1;
	}
	l->nholes = (uint32_t)m->nholes, l->nmsgs = m->nlmsgs, l->ntop = (uint32_t)m->ntop;
	m->bytes += (m->nholes + 1) * sizeof *l->holes + m->ntop * sizeof *l->top + keys;
	return 0;
}

int chat_memo_line_put(struct chat_memo *m, const char *line, size_t len, const char *system, size_t max_output,
		       struct jsonl_buf *b, long **spans, size_t *nspans, const struct jd_member **top, size_t *ntop)
{
	if (!m || tables_made(m) < 0)
		return -1;
	const struct memo_line *l = NULL;
	if (m->run && match_line(m, &m->lines[m->last_line - 1], line, len) == 0) {
		l = &m->lines[m->last_line - 1];
		m->matched = m->last_line;
	} else if (scan_line(m, line, len) < 0) {
		m->line = NULL, m->run = 0;
		return -1;
	} else {
		size_t i = line_slot(m);
		l = m->lines_index[i] ? &m->lines[m->lines_index[i] - 1] : NULL;
	}
	size_t e = l ? (size_t)(l - m->lines) + 1 : 0;
	m->run = e && e == m->last_line, m->last_line = e;
	if (!l || l->shape->state != LEARNED || content_room(m, l->nfrom) < 0)
		return -1;
	struct jd sys = jd_null();
	size_t content = m->lbytes;
	for (uint32_t j = 0; j < l->nfrom; j++) {
		int32_t f = l->from[j];
		if (f == FROM_SYSTEM) {
			sys = (struct jd){.kind = JD_STRING, .n = system ? (uint32_t)strlen(system) : 0, .u.s = system};
			content += sys.n;
		}
		if (f == FROM_SYSTEM ? !system : f >= 0 && ((uint32_t)f >= m->nlmsgs || m->lcontent[f].kind != JD_STRING))
			return -1; /* not as the line learned from */
		m->content[j] = f == FROM_SYSTEM ? &sys : f >= 0 ? &m->lcontent[f] : NULL;
		m->plain[j] = f >= 0 && m->lplain[f];
	}
	m->msgs = NULL, m->ncontent = l->nfrom;
	if (content > MAX_CONTENT || put_text(m, l->shape, 1, max_output, b, spans, nspans) < 0)
		return -1;
	*top = m->top, *ntop = m->ntop;
	m->stats.unparsed++;
	return 0;
}

void chat_memo_line_learn(struct chat_memo *m, const char *line, size_t len, const struct memo_shape *e,
			  const struct jd *recmsgs, const char *system)
{
	if (!m || m->line != line || m->len != len || !e || e->state != LEARNED || !m->msgs || !recmsgs ||
	    recmsgs->kind != JD_ARRAY || recmsgs->n != m->nlmsgs || m->nlines >= MAX_ENTRIES || m->bytes > MAX_BYTES ||
	    line_key_built(m) < 0)
		return;
	size_t i = line_slot(m);
	/* A line jq read (for a \u0000, a lone surrogate, a long integer
	 * anywhere) lost its float marks; a line of its skeleton would be read
	 * so too, not as the line memo reads its numbers. */
	if (m->lines_index[i] || !jsonl_is_direct(line, len))
		return;
	for (size_t t = 0; t < m->ntop; t++) /* the tool list is the shape's: never a hole */
		if (!strcmp(m->top[t].key.u.s, "tools") && (m->top[t].val.kind == JD_STRING || m->top[t].val.kind == JD_NUMBER))
			return;
	int32_t *from = malloc(((size_t)m->ncontent + 1) * sizeof *from);
	if (!from)
		return;
	/* each final content: the line's message's whose text it is, or --system's */
	for (uint32_t j = 0; j < m->ncontent; j++) {
		const struct jd *c = m->content[j];
		from[j] = c ? FROM_UNKNOWN : FROM_NONE;
		for (uint32_t i = 0; c && i < recmsgs->n && from[j] == FROM_UNKNOWN; i++) {
			const struct jd *rc = content_of(recmsgs, (int32_t)i);
			if (rc && rc->u.s == c->u.s && rc->n == c->n)
				from[j] = (int32_t)i;
		}
		if (from[j] == FROM_UNKNOWN && j == 0 && system && strlen(system) == c->n && !memcmp(system, c->u.s, c->n))
			from[j] = FROM_SYSTEM;
		if (from[j] == FROM_UNKNOWN) {
			free(from);
			return;
		}
	}
	struct memo_line *l = &m->lines[m->nlines];
	if (key_keep(&l->k, m->lhash, &m->lkey) < 0) {
		free(from);
		return;
	}
	l->shape = (struct memo_shape *)e, l->from = from, l->nfrom = m->ncontent;
	l->holes = NULL, l->top = NULL;
	line_program(m, l); /* without it, lines of its key are scanned */
	m->lines_index[i] = (uint32_t)++m->nlines;
	m->bytes += m->lkey.n + m->ncontent * sizeof *from;
}

struct chat_memo_stats chat_memo_stats(const struct chat_memo *m)
{
	return m ? m->stats : (struct chat_memo_stats){0};
}
