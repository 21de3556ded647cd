/* tokenizer_bpe: the BPE model of Hugging Face tokenizers (models/bpe), its
 * word cache, and the hash maps and scratch memory the tokenizer uses.
 *
 * A word is split into symbols (one per byte for byte-level models, whose
 * vocabulary was converted from the GPT-2 byte-to-unicode form to raw bytes at
 * load; one per UTF-8 character otherwise), then merged as HF's Word::merge_all
 * does: a min-heap of (rank, position); an entry whose pair no longer yields
 * the same new id is dropped. Merging in exactly that order matters: a stale
 * entry whose pair still produces the same id is merged, as HF does.
 */
#include "tokenizer_impl.h"

#include <stdlib.h>
#include <string.h>

/* ---- hashing ---- */

static inline uint64_t mix64(uint64_t x)
{
	x ^= x >> 32;
	x *= 0xd6e8feb86659fd93ull;
	x ^= x >> 32;
	x *= 0xd6e8feb86659fd93ull;
	x ^= x >> 32;
	return x;
}

/* Eight bytes at a time; not cryptographic, only well spread for table slots. */
uint64_t tk_hash(const void *p, size_t n)
{
	const unsigned char *s = p;
	uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
	while (n >= 8) {
		uint64_t w;
		memcpy(&w, s, 8);
		h = (h ^ mix64(w)) * 0x100000001b3ull;
		s += 8;
		n -= 8;
	}
	uint64_t w = 0;
	memcpy(&w, s, n);
	h = (h ^ mix64(w ^ n)) * 0x100000001b3ull;
	return mix64(h);
}

/* ---- string map ---- */

static int strmap_grow(struct tk_strmap *m)
{
	size_t nslots = m->mask ? (m->mask + 1) * 2 : 64;
	uint64_t *slots = calloc(nslots, sizeof *slots);
	if (!slots)
		return -1;
	for (size_t e = 0; e < m->n; e++) {
		uint64_t h = m->ents[e].hash;
		size_t i = h & (nslots - 1);
		while (slots[i])
			i = (i + 1) & (nslots - 1);
		slots[i] = (h & 0xFFFFFFFF00000000ull) | ((uint64_t)e + 1);
	}
	free(m->slots);
	m->slots = slots;
	m->mask = nslots - 1;
	return 0;
}

/* The slot of k: its entry, or the empty slot where it would go. */
static size_t strmap_find(const struct tk_strmap *m, const char *k, size_t n, uint64_t h, int *found)
{
	size_t i = h & m->mask;
	uint64_t tag = h & 0xFFFFFFFF00000000ull;
	for (;;) {
		uint64_t s = m->slots[i];
		if (!s) {
			*found = 0;
			return i;
		}
		if ((s & 0xFFFFFFFF00000000ull) == tag) {
			const struct tk_strent *e = &m->ents[(uint32_t)s - 1];
			if (e->len == n && memcmp(m->keys + e->off, k, n) == 0) {
				*found = 1;
				return i;
			}
		}
		i = (i + 1) & m->mask;
	}
}

int64_t tk_strmap_get(const struct tk_strmap *m, const char *k, size_t n)
{
	if (!m->slots)
		return -1;
	int found;
	size_t i = strmap_find(m, k, n, tk_hash(k, n), &found);
	return found ? (int64_t)m->ents[(uint32_t)m->slots[i] - 1].val : -1;
}

int tk_strmap_put(struct tk_strmap *m, const char *k, size_t n, uint32_t v, int overwrite)
{
	if (n > UINT32_MAX / 2)
		return -1;
	if ((m->n + 1) * 2 > (m->mask ? m->mask + 1 : 0) && strmap_grow(m) < 0)
		return -1;
	uint64_t h = tk_hash(k, n);
	int found;
	size_t i = strmap_find(m, k, n, h, &found);
	if (found) {
		if (overwrite)
			m->ents[(uint32_t)m->slots[i] - 1].val = v;
		return 0;
	}
	if (m->n == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 64;
		struct tk_strent *ents = realloc(m->ents, cap * sizeof *ents);
		if (!ents)
			return -1;
		m->ents = ents;
		m->cap = cap;
	}
	if (m->keys_len + n + 1 > m->keys_cap) {
		size_t cap = m->keys_cap ? m->keys_cap : 4096;
		while (cap < m->keys_len + n + 1)
			cap *= 2;
		if (cap > UINT32_MAX)
			return -1;
		char *keys = realloc(m->keys, cap);
		if (!keys)
			return -1;
		m->keys = keys;
		m->keys_cap = cap;
	}
	memcpy(m->keys + m->keys_len, k, n);
	m->keys[m->keys_len + n] = 0;
	m->ents[m->n] = (struct tk_strent){ h, (uint32_t)m->keys_len, (uint32_t)n, v };
	m->keys_len += n + 1;
	m->n++;
	m->slots[i] = (h & 0xFFFFFFFF00000000ull) | (uint64_t)m->n;
	return 1;
}

void tk_strmap_free(struct tk_strmap *m)
{
	free(m->slots);
	free(m->ents);
	free(m->keys);
	memset(m, 0, sizeof *m);
}

/* ---- u64 map ---- */

static int u64map_grow(struct tk_u64map *m)
{
	size_t nslots = m->slots ? (m->mask + 1) * 2 : 64;
	struct tk_u64slot *slots = malloc(nslots * sizeof *slots);
	if (!slots)
		return -1;
	memset(slots, 0xff, nslots * sizeof *slots);
	size_t mask = nslots - 1;
	for (size_t j = 0; m->slots && j <= m->mask; j++) {
		if (m->slots[j].k == UINT64_MAX)
			continue;
		size_t i = (size_t)((m->slots[j].k * 0x9E3779B97F4A7C15ull) >> 20) & mask;
		while (slots[i].k != UINT64_MAX)
			i = (i + 1) & mask;
		slots[i] = m->slots[j];
	}
	free(m->slots);
	m->slots = slots;
	m->mask = mask;
	return 0;
}

int tk_u64map_put(struct tk_u64map *m, uint64_t k, uint64_t v)
{
	if ((!m->slots || (m->n + 1) * 2 > m->mask + 1) && u64map_grow(m) < 0)
		return -1;
	size_t i = (size_t)((k * 0x9E3779B97F4A7C15ull) >> 20) & m->mask;
	while (m->slots[i].k != UINT64_MAX && m->slots[i].k != k)
		i = (i + 1) & m->mask;
	if (m->slots[i].k == UINT64_MAX)
		m->n++;
	m->slots[i].k = k;
	m->slots[i].v = v;
	return 0;
}

void tk_u64map_free(struct tk_u64map *m)
{
	free(m->slots);
	memset(m, 0, sizeof *m);
}

/* ---- arena ---- */

struct tk_block {
	struct tk_block *next;
	size_t used, size;
	_Alignas(16) unsigned char data[];
};

void *tk_arena_alloc(struct tk_arena *a, size_t n)
{
	n = (n + 15) & ~(size_t)15;
	struct tk_block *b = a->head;
	if (!b || b->size - b->used < n) {
		size_t size = n > 65536 ? n : 65536;
		b = malloc(sizeof *b + size);
		if (!b)
			return NULL;
		b->used = 0;
		b->size = size;
		b->next = a->head;
		a->head = b;
	}
	void *p = b->data + b->used;
	b->used += n;
	return p;
}

void tk_arena_reset(struct tk_arena *a)
{
	struct tk_block *b = a->head;
	if (!b)
		return;
	/* Keep one block, the oldest (last in the list): it is the common size. */
	while (b->next) {
		struct tk_block *next = b->next;
		free(b);
		b = next;
	}
	b->used = 0;
	a->head = b;
}

void tk_arena_free(struct tk_arena *a)
{
	for (struct tk_block *b = a->head, *next; b; b = next) {
		next = b->next;
		free(b);
	}
	a->head = NULL;
}

/* ---- scratch and cache ---- */

struct tk_scratch *tk_scratch_new(void)
{
	struct tk_scratch *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->md = pcre2_match_data_create(32, NULL);
	s->mctx = pcre2_match_context_create(NULL);
	/* Long runs of one class (100k spaces) need more than the default 32K stack. */
	s->jit = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
	if (!s->md || !s->mctx) {
		tk_scratch_free(s);
		return NULL;
	}
	if (s->jit)
		pcre2_jit_stack_assign(s->mctx, NULL, s->jit);
	return s;
}

void tk_cache_free(struct tk_cache *c)
{
	if (!c)
		return;
	free(c->slots);
	free(c->ents);
	free(c->keys);
	free(c->toks);
	free(c);
}

void tk_scratch_free(struct tk_scratch *s)
{
	if (!s)
		return;
	tk_arena_free(&s->arena);
	free(s->syms);
	free(s->heap);
	free(s->wtok);
	pcre2_match_data_free(s->md);
	pcre2_match_context_free(s->mctx);
	if (s->jit)
		pcre2_jit_stack_free(s->jit);
	tk_cache_free(s->cache);
	free(s);
}

/* Bounds of the cache: past them it is emptied and refilled, which keeps the
 * working set of a corpus while memory stays bounded. */
enum { CACHE_SLOTS = 1 << 17, CACHE_MAX_ENTS = CACHE_SLOTS / 2, CACHE_MAX_WORD = 256 };

static void cache_clear(struct tk_cache *c)
{
	memset(c->slots, 0, (c->mask + 1) * sizeof *c->slots);
	c->n = c->keys_len = c->toks_len = 0;
}

static const uint32_t *cache_get(const struct tk_cache *c, const char *w, size_t n, uint64_t h, size_t *ntok)
{
	size_t i = h & c->mask;
	for (;;) {
		uint32_t s = c->slots[i];
		if (!s)
			return NULL;
		const struct tk_cent *e = &c->ents[s - 1];
		if (e->hash == h && e->klen == n && memcmp(c->keys + e->koff, w, n) == 0) {
			*ntok = e->ntok;
			return c->toks + e->toff;
		}
		i = (i + 1) & c->mask;
	}
}

static void cache_put(struct tk_cache *c, const char *w, size_t n, uint64_t h, const uint32_t *toks,
		      size_t ntok)
{
	if (c->n >= CACHE_MAX_ENTS || c->keys_len + n > c->keys_cap || c->toks_len + 2 * ntok > c->toks_cap)
		cache_clear(c);
	if (c->keys_len + n > c->keys_cap || c->toks_len + 2 * ntok > c->toks_cap)
		return;
	size_t i = h & c->mask;
	while (c->slots[i])
		i = (i + 1) & c->mask;
	memcpy(c->keys + c->keys_len, w, n);
	memcpy(c->toks + c->toks_len, toks, 2 * ntok * sizeof *toks);
	c->ents[c->n] = (struct tk_cent){ h, (uint32_t)c->keys_len, (uint32_t)n, (uint32_t)c->toks_len,
					  (uint32_t)ntok };
	c->keys_len += n;
	c->toks_len += 2 * ntok;
	c->slots[i] = (uint32_t)++c->n;
}

struct tk_cache *tk_cache_new(void)
{
	struct tk_cache *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->mask = CACHE_SLOTS - 1;
	c->cap = CACHE_MAX_ENTS;
	c->keys_cap = (size_t)CACHE_MAX_ENTS * 16;
	c->toks_cap = (size_t)CACHE_MAX_ENTS * 8;
	c->slots = calloc(CACHE_SLOTS, sizeof *c->slots);
	c->ents = malloc(c->cap * sizeof *c->ents);
	c->keys = malloc(c->keys_cap);
	c->toks = malloc(c->toks_cap * sizeof *c->toks);
	if (!c->slots || !c->ents || !c->keys || !c->toks) {
		tk_cache_free(c);
		return NULL;
	}
	return c;
}

/* ---- BPE ---- */

static int reserve(void **p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return 0;
	size_t c = *cap ? *cap : 64;
	while (c < need)
		c *= 2;
	void *q = realloc(*p, c * elem);
	if (!q)
		return -1;
	*p = q;
	*cap = c;
	return 0;
}

static inline int merge_less(const struct tk_merge *a, const struct tk_merge *b)
{
	return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(struct tk_merge *h, size_t *n, struct tk_merge m)
{
	size_t i = (*n)++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!merge_less(&m, &h[p]))
			break;
		h[i] = h[p];
		i = p;
	}
	h[i] = m;
}

static struct tk_merge heap_pop(struct tk_merge *h, size_t *n)
{
	struct tk_merge top = h[0], last = h[--*n];
	size_t i = 0, len = *n;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= len)
			break;
		if (c + 1 < len && merge_less(&h[c + 1], &h[c]))
			c++;
		if (!merge_less(&h[c], &last))
			break;
		h[i] = h[c];
		i = c;
	}
	if (len)
		h[i] = last;
	return top;
}

static inline int pair_lookup(const struct tk_bpe *b, uint32_t l, uint32_t r, uint32_t *rank, uint32_t *nid)
{
	uint64_t v;
	if (!tk_u64map_get(&b->merges, (uint64_t)l << 32 | r, &v))
		return 0;
	*rank = (uint32_t)(v >> 32);
	*nid = (uint32_t)v;
	return 1;
}

/* Appends one symbol. */
static int sym_add(struct tk_scratch *sc, size_t *n, uint32_t id, uint32_t len)
{
	if (reserve((void **)&sc->syms, &sc->syms_cap, *n + 1, sizeof *sc->syms) < 0)
		return -1;
	struct tk_sym *s = &sc->syms[*n];
	s->id = id;
	s->len = len;
	s->prev = (int32_t)*n - 1;
	s->next = -1;
	if (*n)
		sc->syms[*n - 1].next = (int32_t)*n;
	(*n)++;
	return 0;
}

/* The unknown-token state of HF's merge_word: a pending unk (fused or not). */
struct unk_state {
	int pending;
	uint32_t id, len;
};

static int unk_flush(struct tk_scratch *sc, size_t *n, struct unk_state *u)
{
	if (!u->pending)
		return 0;
	u->pending = 0;
	return sym_add(sc, n, u->id, u->len);
}

static int unk_add(const struct tk_bpe *b, struct tk_scratch *sc, size_t *n, struct unk_state *u, uint32_t len)
{
	if (b->unk_id < 0)
		return 0; /* no unk token: HF drops the character */
	if (u->pending && b->fuse_unk) {
		u->len += len;
		return 0;
	}
	if (unk_flush(sc, n, u) < 0)
		return -1;
	u->pending = 1;
	u->id = (uint32_t)b->unk_id;
	u->len = len;
	return 0;
}

static int build_symbols(const struct tokenizer *tk, struct tk_scratch *sc, const char *w, size_t n,
			 size_t *nsym)
{
	const struct tk_bpe *b = &tk->bpe;
	struct unk_state u = { 0 };
	*nsym = 0;
	if (tk->byte_level) {
		for (size_t i = 0; i < n; i++) {
			int32_t id = b->byte_id[(unsigned char)w[i]];
			if (id >= 0) {
				if (unk_flush(sc, nsym, &u) < 0 || sym_add(sc, nsym, (uint32_t)id, 1) < 0)
					return -1;
			} else if (unk_add(b, sc, nsym, &u, 1) < 0) {
				return -1;
			}
		}
		return unk_flush(sc, nsym, &u);
	}
	char tmp[64];
	for (size_t i = 0; i < n;) {
		size_t cl = 1;
		unsigned char c0 = (unsigned char)w[i];
		if (c0 >= 0xF0)
			cl = 4;
		else if (c0 >= 0xE0)
			cl = 3;
		else if (c0 >= 0xC0)
			cl = 2;
		if (i + cl > n)
			cl = n - i;
		const char *s = w + i;
		size_t sl = cl;
		int first = i == 0, last = i + cl == n;
		if (b->char_id && cl < 4) {
			/* the common case, without hashing: a BMP char that is a token */
			uint32_t cp = cl == 1 ? c0 : tk_utf8_get(s, &sl);
			int32_t id = b->char_id[cp];
			if (id >= 0) {
				if (unk_flush(sc, nsym, &u) < 0 || sym_add(sc, nsym, (uint32_t)id, (uint32_t)cl) < 0)
					return -1;
				i += cl;
				continue;
			}
			sl = cl;
		}
		if ((b->prefix && !first) || (b->suffix && last)) {
			size_t pl = b->prefix && !first ? b->prefix_len : 0;
			size_t xl = b->suffix && last ? b->suffix_len : 0;
			if (pl + cl + xl <= sizeof tmp) {
				memcpy(tmp, b->prefix, pl);
				memcpy(tmp + pl, s, cl);
				memcpy(tmp + pl + cl, b->suffix, xl);
				s = tmp;
				sl = pl + cl + xl;
			}
		}
		int64_t id = tk_strmap_get(&b->vocab, s, sl);
		if (id >= 0) {
			if (unk_flush(sc, nsym, &u) < 0 || sym_add(sc, nsym, (uint32_t)id, (uint32_t)cl) < 0)
				return -1;
		} else {
			int done = 0;
			if (b->byte_fallback) {
				size_t k = 0;
				while (k < sl && b->fallback_id[(unsigned char)s[k]] >= 0)
					k++;
				if (k == sl) {
					/* As HF: one token per byte, each one byte long, and a
					 * pending unk stays pending. */
					for (k = 0; k < sl; k++)
						if (sym_add(sc, nsym, (uint32_t)b->fallback_id[(unsigned char)s[k]], 1) < 0)
							return -1;
					done = 1;
				}
			}
			if (!done && unk_add(b, sc, nsym, &u, (uint32_t)cl) < 0)
				return -1;
		}
		i += cl;
	}
	return unk_flush(sc, nsym, &u);
}

static void merge_all(const struct tk_bpe *b, struct tk_scratch *sc, size_t nsym)
{
	struct tk_sym *sy = sc->syms;
	struct tk_merge *heap = sc->heap;
	size_t nh = 0;
	uint32_t rank, nid;
	for (size_t i = 0; i + 1 < nsym; i++)
		if (pair_lookup(b, sy[i].id, sy[i + 1].id, &rank, &nid))
			heap_push(heap, &nh, (struct tk_merge){ rank, (uint32_t)i, nid });
	while (nh) {
		struct tk_merge top = heap_pop(heap, &nh);
		struct tk_sym *cur = &sy[top.pos];
		if (cur->len == 0 || cur->next < 0)
			continue;
		struct tk_sym *right = &sy[cur->next];
		if (!pair_lookup(b, cur->id, right->id, &rank, &nid) || nid != top.new_id)
			continue;
		cur->id = top.new_id;
		cur->len += right->len;
		right->len = 0;
		cur->next = right->next;
		if (right->next >= 0)
			sy[right->next].prev = (int32_t)top.pos;
		if (cur->prev >= 0 && pair_lookup(b, sy[cur->prev].id, cur->id, &rank, &nid))
			heap_push(heap, &nh, (struct tk_merge){ rank, (uint32_t)cur->prev, nid });
		if (cur->next >= 0 && pair_lookup(b, cur->id, sy[cur->next].id, &rank, &nid))
			heap_push(heap, &nh, (struct tk_merge){ rank, top.pos, nid });
	}
}

int tk_bpe_word(const struct tokenizer *tk, struct tk_scratch *sc, const char *w, size_t n,
		const uint32_t **toks, size_t *ntok, struct err *err)
{
	const struct tk_bpe *b = &tk->bpe;
	if (reserve((void **)&sc->wtok, &sc->wtok_cap, 2, sizeof *sc->wtok) < 0)
		return err_sys(err, "out of memory");
	if (n == 0) {
		*ntok = 0;
		*toks = sc->wtok;
		return 0;
	}
	if (b->ignore_merges) {
		int64_t id = tk_strmap_get(tk->byte_level ? &b->raw : &b->vocab, w, n);
		if (id >= 0) {
			sc->wtok[0] = (uint32_t)id;
			sc->wtok[1] = (uint32_t)n;
			*toks = sc->wtok;
			*ntok = 1;
			return 0;
		}
	}
	uint64_t h = 0;
	int cacheable = sc->cache && n < CACHE_MAX_WORD;
	if (cacheable) {
		h = tk_hash(w, n);
		const uint32_t *hit = cache_get(sc->cache, w, n, h, ntok);
		if (hit) {
			*toks = hit;
			return 0;
		}
	}
	size_t nsym;
	if (build_symbols(tk, sc, w, n, &nsym) < 0)
		return err_sys(err, "out of memory");
	/* Each merge pushes at most two entries; the initial fill at most nsym. */
	if (reserve((void **)&sc->heap, &sc->heap_cap, 3 * nsym + 4, sizeof *sc->heap) < 0 ||
	    reserve((void **)&sc->wtok, &sc->wtok_cap, 2 * nsym + 2, sizeof *sc->wtok) < 0)
		return err_sys(err, "out of memory");
	if (nsym > 1)
		merge_all(b, sc, nsym);
	size_t k = 0;
	for (size_t i = 0; i < nsym; i++) {
		if (sc->syms[i].len == 0)
			continue;
		sc->wtok[2 * k] = sc->syms[i].id;
		sc->wtok[2 * k + 1] = sc->syms[i].len;
		k++;
	}
	*toks = sc->wtok;
	*ntok = k;
	if (cacheable)
		cache_put(sc->cache, w, n, h, sc->wtok, k);
	return 0;
}
