/* tokenizer: Hugging Face tokenizers, encoded and decoded exactly as the
 * `tokenizers` library does, with the byte offsets of every token.
 *
 * Sources: a tokenizer.json (a model folder holding one, or the file itself),
 * or a GGUF file's tokenizer.ggml.* metadata (encoded as llama.cpp does).
 * Supported: BPE models, byte-level (GPT-2 byte map) and SentencePiece-style
 * ("▁", byte fallback), merges by rank, ignore_merges; the normalizers,
 * pre-tokenizers, post-processors and decoders the supported families use;
 * added tokens with lstrip/rstrip/normalized/single_word. Anything else is a
 * load error naming the JSON path of the unsupported part.
 */
#ifndef LORAPIPE_TOKENIZER_H
#define LORAPIPE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include <jv.h>

#include "msg.h"

struct tokenizer;

/* path: a folder (tokenizer.json inside, or a single *.gguf), a tokenizer.json,
 * or a .gguf file. Returns NULL with err set. */
struct tokenizer *tokenizer_load(const char *path, struct err *err);
/* The path (malloc'ed) of the one *.gguf file in folder dir, or NULL when it
 * holds none or several (*count says how many) or is not a folder. */
char *tokenizer_folder_gguf(const char *dir, int *count);
/* From the text of a tokenizer.json already in memory. name is for messages. */
struct tokenizer *tokenizer_from_json(const char *json, size_t len, const char *name, struct err *err);
/* From a parsed tokenizer.json object (jq's jv; consumed). For converters that
 * describe another format (GGUF metadata) as the equivalent tokenizer.json. */
struct tokenizer *tokenizer_from_jv(jv config, const char *name, struct err *err);
/* A GGUF file's tokenizer (lib/tokenizer_gguf.c); tokenizer_load() calls it
 * for *.gguf paths and for folders holding a single .gguf and no tokenizer.json. */
struct tokenizer *tokenizer_load_gguf(const char *path, struct err *err);
/* The added tokens tokenizer_load_gguf(path) would have, in id order, without
 * building the tokenizer (milliseconds instead of a tenth of a second): fn is
 * called for each, s[0..n) its text (not NUL-terminated); a non-zero return
 * stops the walk and is returned. */
int tokenizer_gguf_added(const char *path, int (*fn)(void *arg, uint32_t id, const char *s, size_t n, int special),
			 void *arg, struct err *err);
/* The same of a GGUF already open (its name for messages): a caller that
 * read its chat template does not parse the file twice. */
struct gguf;
int tokenizer_gguf_added_of(const struct gguf *g, const char *name,
			    int (*fn)(void *arg, uint32_t id, const char *s, size_t n, int special), void *arg,
			    struct err *err);
void tokenizer_free(struct tokenizer *tk);
/* Whether s[0..n) is one of the token texts llama.cpp takes for an end of
 * generation (<|im_end|>, <|eot_id|>, <end_of_turn>, <|call|> ...). */
int tokenizer_eog_text(const char *s, size_t n);

/* One encoding: ids[i] covers text bytes [offsets[i][0], offsets[i][1]). */
struct tok_encoding {
	uint32_t *ids;
	uint32_t (*offsets)[2];
	size_t n, cap;
};

/* Encodes len bytes of text, appending to out (which the caller zeroes once
 * and frees with tok_encoding_free). add_special: run the post-processor (e.g.
 * prepend BOS) as `add_special_tokens=True` does; tok passes 0. Special-token
 * strings in the text become their ids. Invalid UTF-8: each maximal invalid
 * subsequence is encoded as U+FFFD, with offsets on its original bytes
 * (lib/tokenizer_encode.c). Safe to call from several threads at once.
 * Returns 0 or -1. */
int tokenizer_encode(const struct tokenizer *tk, const char *text, size_t len, int add_special,
		     struct tok_encoding *out, struct err *err);
void tok_encoding_free(struct tok_encoding *e);

/* Decodes ids to text in a malloc'd buffer (NUL-terminated; *len without it).
 * skip_special drops special added tokens. Returns 0 or -1. */
int tokenizer_decode(const struct tokenizer *tk, const uint32_t *ids, size_t n, int skip_special,
		     char **text, size_t *len, struct err *err);

/* Number of ids (the largest id + 1, added tokens included). */
uint32_t tokenizer_vocab_size(const struct tokenizer *tk);
/* The token's string as in the vocabulary (byte-level form, "▁" form, ...). */
const char *tokenizer_token(const struct tokenizer *tk, uint32_t id);
/* The id of a token string (vocabulary or added), or -1. */
int64_t tokenizer_id(const struct tokenizer *tk, const char *token);
/* True for added tokens marked special. */
int tokenizer_is_special(const struct tokenizer *tk, uint32_t id);
/* True for added tokens, special or not. */
int tokenizer_is_added(const struct tokenizer *tk, uint32_t id);
/* The BOS id from the post-processor or tokenizer_config.json / GGUF, or -1. */
int64_t tokenizer_bos_id(const struct tokenizer *tk);
/* True when encoding with add_special would put the BOS first: the BOS is then a
 * sequence-start token only (Llama 3.1, Gemma), not a turn marker (SmolLM2's
 * <|im_start|>), and a second one in a sequence is a doubling. */
int tokenizer_adds_bos(const struct tokenizer *tk);
/* A 64-bit fingerprint of everything that decides the encoding (vocabulary,
 * merges, added tokens, normalizer, pre-tokenizer): equal fingerprints, equal ids. */
uint64_t tokenizer_fingerprint(const struct tokenizer *tk);

#endif
