/* tokenizer_impl: the tokenizer's private parts, shared by lib/tokenizer*.c only.
 *
 * The files:
 *   tokenizer.c        loading (tokenizer.json through jq's jv), the public API
 *   tokenizer_encode.c encode: added tokens, normalizers, pre-tokenizers, offsets
 *   tokenizer_bpe.c    the BPE model, its word cache, hash maps
 *   tokenizer_decode.c decoders
 *   tokenizer_gguf.c   tokenizer_load_gguf (another engineer's)
 *
 * Coordinates: the input is first made valid UTF-8 ("clean" text, see
 * tokenizer_encode.c); every other offset inside the encoder is a byte offset
 * into the clean text, and is mapped to the caller's bytes at the end.
 */
#ifndef LORAPIPE_TOKENIZER_IMPL_H
#define LORAPIPE_TOKENIZER_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdint.h>

#include "tokenizer.h"

/* ---- hashing and maps (tokenizer_bpe.c) ---- */

uint64_t tk_hash(const void *p, size_t n);

/* string -> u32; keys are copied (NUL-terminated) into one arena. */
struct tk_strent {
	uint64_t hash;
	uint32_t off, len, val;
};
struct tk_strmap {
	uint64_t *slots; /* entry index + 1 (low half; 0 = empty), hash's high half (a tag) */
	size_t mask;
	struct tk_strent *ents;
	size_t n, cap;
	char *keys;
	size_t keys_len, keys_cap;
};
/* Inserts k (or, with overwrite, replaces its value). Returns 1 inserted, 0 present, -1 no memory. */
int tk_strmap_put(struct tk_strmap *m, const char *k, size_t n, uint32_t v, int overwrite);
/* The value of k, or -1. */
int64_t tk_strmap_get(const struct tk_strmap *m, const char *k, size_t n);
void tk_strmap_free(struct tk_strmap *m);

/* u64 -> u64, open addressing; the key UINT64_MAX is reserved. Key and value
 * sit side by side: a lookup in the merge table costs one cache miss. */
struct tk_u64slot {
	uint64_t k, v;
};
struct tk_u64map {
	struct tk_u64slot *slots;
	size_t mask, n;
};
int tk_u64map_put(struct tk_u64map *m, uint64_t k, uint64_t v);
/* Returns 1 and sets *v when k is present. */
static inline int tk_u64map_get(const struct tk_u64map *m, uint64_t k, uint64_t *v)
{
	if (!m->slots)
		return 0;
	size_t i = (size_t)((k * 0x9E3779B97F4A7C15ull) >> 20) & m->mask;
	for (;;) {
		const struct tk_u64slot *s = &m->slots[i];
		if (s->k == k) {
			*v = s->v;
			return 1;
		}
		if (s->k == UINT64_MAX)
			return 0;
		i = (i + 1) & m->mask;
	}
}
void tk_u64map_free(struct tk_u64map *m);

/* ---- scratch memory of one encode call ---- */

/* Blocks that never move, so pointers into them stay valid for the call. */
struct tk_block;
struct tk_arena {
	struct tk_block *head;
};
void *tk_arena_alloc(struct tk_arena *a, size_t n);
void tk_arena_reset(struct tk_arena *a); /* keeps the first block */
void tk_arena_free(struct tk_arena *a);

/* The BPE model's working arrays. */
struct tk_sym {
	uint32_t id;
	int32_t prev, next;
	uint32_t len; /* bytes; 0 = merged away */
};
struct tk_merge {
	uint32_t rank, pos, new_id;
};

/* The word cache: word bytes -> (id, byte length) pairs. */
struct tk_cache {
	uint32_t *slots;
	size_t mask;
	struct tk_cent {
		uint64_t hash;
		uint32_t koff, klen, toff, ntok;
	} *ents;
	size_t n, cap;
	char *keys;
	size_t keys_len, keys_cap;
	uint32_t *toks; /* id, len, id, len ... */
	size_t toks_len, toks_cap;
};

struct tk_scratch {
	struct tk_arena arena;
	struct tk_sym *syms;
	size_t syms_cap;
	struct tk_merge *heap;
	size_t heap_cap;
	uint32_t *wtok; /* one word's tokens: id, len pairs */
	size_t wtok_cap;
	pcre2_match_data *md;
	pcre2_match_context *mctx;
	pcre2_jit_stack *jit;
	struct tk_cache *cache; /* NULL when this call runs without the cache */
};
struct tk_scratch *tk_scratch_new(void);
void tk_scratch_free(struct tk_scratch *s);
struct tk_cache *tk_cache_new(void);
void tk_cache_free(struct tk_cache *c);

/* ---- configuration ---- */

enum tk_norm_kind {
	TK_NORM_NFC,
	TK_NORM_NFD,
	TK_NORM_NFKC,
	TK_NORM_NFKD,
	TK_NORM_REPLACE,
	TK_NORM_PREPEND,
	TK_NORM_LOWERCASE,
	TK_NORM_STRIP,
};
struct tk_norm {
	enum tk_norm_kind kind;
	char *pat; /* Replace: literal pattern (when re is NULL) */
	size_t pat_len;
	pcre2_code *re; /* Replace: regex pattern */
	char *content; /* Replace: replacement; Prepend: prefix */
	size_t content_len;
	int left, right; /* Strip */
};

enum tk_behavior {
	TK_SPLIT_REMOVED,
	TK_SPLIT_ISOLATED,
	TK_SPLIT_MERGED_PREV,
	TK_SPLIT_MERGED_NEXT,
	TK_SPLIT_CONTIGUOUS,
};
enum tk_pre_kind {
	TK_PRE_SPLIT,     /* pattern (regex or literal), behavior, invert */
	TK_PRE_BYTELEVEL, /* add_prefix_space, use_regex (GPT-2 pattern in re) */
	TK_PRE_METASPACE,
	TK_PRE_DIGITS,
	TK_PRE_WHITESPACE, /* \w+|[^\w\s]+ kept, the rest removed */
	TK_PRE_WSSPLIT,    /* split on whitespace, removed */
	TK_PRE_PUNCT,      /* each punctuation char, with behavior */
};
enum tk_prepend { TK_PREPEND_ALWAYS, TK_PREPEND_FIRST, TK_PREPEND_NEVER };
struct tk_pre {
	enum tk_pre_kind kind;
	pcre2_code *re;
	char *lit;
	size_t lit_len;
	enum tk_behavior behavior;
	int invert;
	int add_prefix_space, use_regex;
	char repl[4]; /* Metaspace replacement, UTF-8 */
	int repl_len;
	enum tk_prepend prepend;
	int split;
	int individual; /* Digits */
};

enum tk_post_kind { TK_POST_TEMPLATE, TK_POST_BYTELEVEL };
struct tk_post {
	enum tk_post_kind kind;
	uint32_t *pre_ids, *post_ids; /* template: ids before and after sequence A */
	char **pre_toks, **post_toks;
	size_t npre, npost;
	int trim_offsets, add_prefix_space; /* ByteLevel */
};

enum tk_dec_kind {
	TK_DEC_BYTELEVEL,
	TK_DEC_REPLACE,
	TK_DEC_BYTEFALLBACK,
	TK_DEC_FUSE,
	TK_DEC_STRIP,
	TK_DEC_METASPACE,
};
struct tk_dec {
	enum tk_dec_kind kind;
	char *pat, *content;
	size_t pat_len, content_len;
	pcre2_code *re;
	uint32_t strip_char;
	size_t start, stop;
	uint32_t repl;
	enum tk_prepend prepend;
};

struct tk_added {
	uint32_t id;
	char *content;
	size_t len;
	unsigned special : 1, lstrip : 1, rstrip : 1, single_word : 1, normalized : 1;
};

/* A byte trie of added-token strings for leftmost-longest matching. */
struct tk_trie {
	struct tk_u64map edges; /* node << 8 | byte -> child */
	int32_t *term;          /* per node: the matching added-token id, or -1 */
	size_t nnodes, cap;
	uint8_t first[256];     /* bytes that start some pattern */
};

struct tk_bpe {
	struct tk_strmap vocab; /* token string -> id */
	struct tk_strmap raw;   /* byte-level models: raw bytes -> id */
	struct tk_u64map merges; /* a << 32 | b -> rank << 32 | new id */
	int32_t byte_id[256];   /* byte-level models: the id of each single byte */
	int32_t fallback_id[256]; /* <0xNN> ids (byte_fallback), -1 */
	int32_t *char_id;         /* char models: the id of each BMP char, -1; NULL when not built */
	int64_t unk_id;
	int fuse_unk, byte_fallback, ignore_merges;
	char *prefix, *suffix; /* continuing_subword_prefix, end_of_word_suffix; NULL when empty */
	size_t prefix_len, suffix_len;
};

struct tokenizer {
	char *name;
	struct tk_bpe bpe;
	int byte_level; /* the model works on raw bytes (a ByteLevel pre-tokenizer ends the chain) */

	struct tk_added *added; /* HF's added_tokens_map_r: the latest token given for an id */
	size_t nadded;
	struct tk_u64map added_by_id; /* id -> index in added */
	struct tk_strmap added_map;   /* content -> id */
	struct tk_strmap special_set; /* contents of special tokens */
	struct tk_trie trie_raw, trie_norm;

	struct tk_norm *norm;
	size_t nnorm;
	struct tk_pre *pre;
	size_t npre;
	struct tk_post *post;
	size_t npost;
	struct tk_dec *dec;
	size_t ndec;
	int has_decoder;

	uint32_t vocab_size;
	const char **id_str; /* per id: its token string (added content first), NULL if none */
	uint32_t *id_len;
	uint8_t *id_special;
	int64_t bos_id;
	uint64_t fingerprint;

	pcre2_code *re_gpt2; /* ByteLevel's own split pattern, shared */

	pthread_mutex_t lock; /* guards scratch (with its word cache) */
	struct tk_scratch *scratch;
};

/* ---- between the files ---- */

/* Compiles an Oniguruma-style pattern with PCRE2 (UTF, UCP, JIT), rewriting \s and
 * \S to Oniguruma's White_Space set. NULL with err set. */
pcre2_code *tk_regex_compile(const char *pat, size_t len, const char *where, struct err *err);
/* Finds the next match in s[0..n) at or after from. Returns 1 (sets *ms, *me), 0 none, -1 error. */
int tk_regex_next(const pcre2_code *re, const char *s, size_t n, size_t from, struct tk_scratch *sc,
		  size_t *ms, size_t *me, struct err *err);

/* Runs the normalizer over a whole string without offsets (added-token patterns at load). */
int tk_normalize_plain(const struct tokenizer *tk, const char *s, size_t n, char **out, size_t *out_len,
		       struct err *err);

/* BPE over one word (raw bytes for byte-level models, UTF-8 chars otherwise).
 * Leaves *ntok (id, byte length) pairs in *toks (scratch memory). */
int tk_bpe_word(const struct tokenizer *tk, struct tk_scratch *sc, const char *w, size_t n,
		const uint32_t **toks, size_t *ntok, struct err *err);

/* Appends to out; grows it. */
int tk_encoding_push(struct tok_encoding *out, uint32_t id, uint32_t start, uint32_t end);

/* GPT-2's byte-to-unicode map, inverted: code point -> byte, -1 if none. */
void tk_bytelevel_inverse(int16_t inv[0x144]);
/* UTF-8 helpers (tokenizer_encode.c). */
/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 if invalid there;
 * *bad is then the length of the maximal invalid subpart (>= 1). */
size_t tk_utf8_valid(const unsigned char *s, size_t n, size_t *bad);
/* cp as UTF-8 at dst: the bytes written. The rest of lib uses
 * utf8proc_encode_char; this one stays because the encoder calls it once a
 * character, where a call into the shared library would cost more than it does. */
size_t tk_utf8_put(char *dst, uint32_t cp);
uint32_t tk_utf8_get(const char *s, size_t *len); /* s is valid UTF-8 */
int tk_is_white_space(uint32_t cp);

/* Decoding (tokenizer_decode.c). */
int tk_decode_tokens(const struct tokenizer *tk, const char **toks, const size_t *lens, size_t n,
		     char **text, size_t *len, struct err *err);

#endif
