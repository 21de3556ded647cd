/* tokenizer_gguf: a tokenizer from a GGUF file's tokenizer.ggml.* metadata,
 * encoding as llama.cpp encodes the same file.
 *
 * The metadata is turned into the tokenizer.json description that means the
 * same thing, and that description goes through the one loader every other
 * tokenizer goes through, so there is a single encoder to trust. How each
 * piece of llama.cpp's behaviour (src/llama-vocab.cpp, src/unicode.cpp)
 * becomes tokenizer.json:
 *
 *  - Vocabulary: tokenizer.ggml.tokens, id = index. llama.cpp renames an empty
 *    token "[EMPTY_<id>]"; so does this. Two ids with one string are refused
 *    (llama.cpp aborts on them).
 *  - Token types (tokenizer.ggml.token_type): control and unknown tokens become
 *    special added tokens, user-defined ones non-special added tokens; llama.cpp
 *    splits all three out of the text before the model runs (when special
 *    tokens are parsed), and hides control and unknown ones when decoding
 *    without specials, which is what added tokens do in tokenizer.json. Byte,
 *    unused and normal tokens are plain vocabulary. llama.cpp also retypes some
 *    tokens by their text (end-of-generation markers such as "<|im_end|>"
 *    become control; FIM markers too when their id keys are absent; gpt-oss's
 *    "<|channel|>"-style markers become user-defined); that is repeated here.
 *  - "gpt2" models: byte-level BPE. tokenizer.ggml.merges in rank order (a
 *    repeated pair keeps its first rank, as llama.cpp's map does). The split
 *    regexes llama.cpp picks for tokenizer.ggml.pre become a Sequence of
 *    Split(Isolated) pre-tokenizers, each splitting the pieces of the one
 *    before, exactly how llama.cpp applies its list, then ByteLevel without its
 *    own regex. Where llama.cpp spells a regex differently from the model's
 *    tokenizer.json (e.g. (?:'[sS]|...) for (?i:'s|...)) its spelling is used,
 *    since that is what it runs. ignore_merges follows llama.cpp's per-pre
 *    setting.
 *  - "llama" models: SentencePiece BPE by scores. llama.cpp merges the adjacent
 *    pair whose concatenation is the best-scored token; that is BPE with one
 *    merge per way of splitting each token into two tokens, ranked by the
 *    token's score, with byte fallback (<0xNN> tokens) and unknown-token
 *    fusing. " " becomes "▁" and, with add_space_prefix, "▁" is prepended to
 *    every piece of text between added tokens (llama.cpp does so after every
 *    special token, i.e. for every text fragment).
 *  - add_bos_token / add_eos_token become a TemplateProcessing post-processor,
 *    used only when the caller asks for special tokens to be added.
 *
 * Where llama.cpp cannot be expressed this way the load fails with the reason
 * (other tokenizer models, pre-tokenizers not mapped here, merges naming tokens
 * that do not exist). Known differences that remain are listed in the report
 * of tests/ref/test_tokenizer_gguf.py and at tokenizer_load_gguf below.
 */
#include <stdlib.h>
#include <string.h>

#include <jq.h>

#include "gguf.h"
#include "tokenizer.h"
#include "tokenizer_impl.h"

/* llama.cpp's token types (tokenizer.ggml.token_type values). */
enum gguf_tok_type {
	GGUF_TOK_UNDEFINED = 0,
	GGUF_TOK_NORMAL = 1,
	GGUF_TOK_UNKNOWN = 2,
	GGUF_TOK_CONTROL = 3,
	GGUF_TOK_USER_DEFINED = 4,
	GGUF_TOK_UNUSED = 5,
	GGUF_TOK_BYTE = 6,
};

/* ---- the split regexes, by tokenizer.ggml.pre ---- */

/* llama.cpp names its hand-written GPT-2 splitter by this pattern without the
 * last "|\s+", but the splitter does match it; in Isolated splitting it changes
 * nothing anyway (what it would match is a piece of its own either way). */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define RE_CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RE_LLAMA3                                                                                      \
	RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                                       \
	RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN35                                                                                      \
	RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* GPT-4o's pattern as llama.cpp rewrote it: "(?=[\p{L}])([^a-z])" is a letter
 * that is not an ASCII lowercase one, its stand-in for the original's
 * [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]; the pattern is taken as llama.cpp runs it. */
#define RE_GPT4O                                                                                       \
	"[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+" RE_CONTRACTIONS               \
	"?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*" RE_CONTRACTIONS           \
	"?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_TEKKEN                                                                                      \
	"[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_DEEPSEEK3                                                                                   \
	"[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_BLOOM " ?[^(\\s|.,!?…。，、।۔،)]+"

struct gguf_pre {
	const char *names; /* tokenizer.ggml.pre values, '|'-separated */
	const char *re[5];  /* applied in order, each to the pieces of the one before */
	int ignore_merges;
	int add_bos; /* llama.cpp's default before tokenizer.ggml.add_bos_token */
};

/* Only the byte-level (GPT-2 byte map) pre-tokenizers are here; llama.cpp's
 * SPM-style BPE ones (gemma4, ...) and those with hand-written splitters
 * (kimi-k2, afmoe, tiny_aya, ...) are not. */
static const struct gguf_pre gguf_pres[] = {
	{"default", {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}, 0, 0},
	{"llama3|llama-v3|llama-bpe|falcon3|falcon-h1|pixtral|midm-2.0|lfm2|jina-v5-nano", {RE_LLAMA3}, 1, 1},
	{"dbrx|smaug-bpe", {RE_LLAMA3}, 0, 0},
	{"chatglm-bpe", {RE_LLAMA3}, 0, 0},
	{"glm4|glm5", {RE_LLAMA3}, 1, 0},
	{"deepseek-v3|hunyuan-dense|joyai-llm|hy_v4", {"\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", RE_DEEPSEEK3}, 0, 0},
	{"falcon", {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"}, 0, 0},
	{"starcoder|refact|command-r|smollm|codeshell|exaone|minerva-7b|mellum2", {"\\p{N}", RE_GPT2}, 0, 0},
	{"gpt-2|phi-2|jina-es|jina-de|gigachat|jina-v2-es|jina-v2-de|a.x-4.0|mellum|modern-bert|mpt|olmo|jais|"
	 "exaone4|trillion|granite-docling",
	 {RE_GPT2}, 0, 0},
	{"qwen2|deepseek-r1-qwen|kormo|f2llmv2|megrez|stablelm2|hunyuan|solar-open", {RE_QWEN2}, 0, 0},
	{"qwen35", {RE_QWEN35}, 0, 0},
	{"poro-chat|bloom|gpt3-finnish", {RE_BLOOM}, 0, 0},
	{"viking", {RE_BLOOM, "\\p{N}"}, 0, 0},
	{"tekken", {RE_TEKKEN}, 1, 1},
	{"gpt-4o|llama4|kanana2|talkie|minimax-m2", {RE_GPT4O}, 0, 0},
};

static int name_in_list(const char *list, const char *name)
{
	size_t n = strlen(name);
	for (const char *p = list; *p;) {
		const char *bar = strchr(p, '|');
		size_t len = bar ? (size_t)(bar - p) : strlen(p);
		if (len == n && memcmp(p, name, n) == 0)
			return 1;
		p += len + (bar != NULL);
	}
	return 0;
}

/* ---- helpers ---- */

static int utf8_valid(const unsigned char *s, size_t n)
{
	for (size_t i = 0; i < n;) {
		unsigned c = s[i];
		size_t len;
		uint32_t cp, min;
		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			len = 2, cp = c & 0x1f, min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			len = 3, cp = c & 0x0f, min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			len = 4, cp = c & 0x07, min = 0x10000;
		} else {
			return 0;
		}
		if (n - i < len)
			return 0;
		for (size_t k = 1; k < len; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (s[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += len;
	}
	return 1;
}

static size_t utf8_char_len(unsigned char c)
{
	return c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : 4;
}

/* Token texts by which llama.cpp (load(), "auto-detect special tokens by
 * text") makes a token a control token whatever its stored type. */
#define EOG(t) {t, sizeof t - 1}
static const struct {
	const char *s;
	size_t n;
} eog_texts[] = {
	EOG("<|eot_id|>"), EOG("<|im_end|>"), EOG("<|end|>"), EOG("<|return|>"), EOG("<|call|>"), EOG("<|flush|>"),
	EOG("<|calls|>"), EOG("<end_of_turn>"), EOG("<|endoftext|>"), EOG("</s>"), EOG("<|eom_id|>"), EOG("<EOT>"),
	EOG("_<EOT>"), EOG("[EOT]"), EOG("[EOS]"), EOG("<|end_of_text|>"), EOG("<end_of_utterance>"), EOG("<eos>"),
	EOG("<turn|>"), EOG("<|tool_response>"), EOG("<｜end▁of▁sentence｜>"), EOG("[e~["), {NULL, 0},
};
#undef EOG

int tokenizer_eog_text(const char *s, size_t n)
{
	/* asked of every marker a model loads (Gemma 3 has 6,415): the length
	 * rules out most texts before a byte is compared */
	for (int k = 0; eog_texts[k].s; k++)
		if (eog_texts[k].n == n && !memcmp(eog_texts[k].s, s, n))
			return 1;
	return 0;
}

/* FIM markers: made control only when the file does not name that id itself. */
static const struct {
	const char *key;
	const char *texts[9];
} fim_texts[] = {
	{"tokenizer.ggml.fim_pre_token_id",
	 {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>"}},
	{"tokenizer.ggml.fim_suf_token_id",
	 {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>"}},
	{"tokenizer.ggml.fim_mid_token_id",
	 {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>"}},
	{"tokenizer.ggml.fim_pad_token_id", {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"}},
	{"tokenizer.ggml.fim_rep_token_id", {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"}},
	{"tokenizer.ggml.fim_sep_token_id", {"<|file_sep|>"}},
};
/* gpt-oss: always rendered, so user-defined whatever the file says. */
static const char *const user_texts[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>", NULL};

enum { ATTR_CONTROL = 1, ATTR_USER = 2, ATTR_UNKNOWN = 4 };

struct conv {
	const struct gguf *g;
	const char *name;
	uint64_t n;     /* tokens */
	int64_t tokens; /* the key of their texts, read where they lie (tok_at) */
	struct renamed {
		uint64_t id;
		char *s; /* "[EMPTY_id]" */
	} *renamed;     /* the empty tokens' names, by id */
	size_t nrenamed;
	uint8_t *attr;
	struct tk_strmap ids; /* token text -> id (with named_only, of the tokens named_maybe takes) */
	int named_only;       /* only the tokens' attributes are wanted (tokenizer_gguf_added_of) */
	struct err *err;
};

/* Token i's text and its length: an empty one's is its name "[EMPTY_i]"
 * once conv_tokens made it. */
static const char *tok_at(const struct conv *c, uint64_t i, size_t *len)
{
	const char *s = gguf_kv_arr_str(c->g, c->tokens, i, len);
	if (*len)
		return s;
	size_t lo = 0, hi = c->nrenamed;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (c->renamed[mid].id < i)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < c->nrenamed && c->renamed[lo].id == i) {
		*len = strlen(c->renamed[lo].s);
		return c->renamed[lo].s;
	}
	return s;
}

static jv jv_tok(const struct conv *c, uint64_t i)
{
	size_t n;
	const char *s = tok_at(c, i, &n);
	return jv_string_sized(s, (int)n);
}

/* Whether token s[0..n) may be one of the texts above, which all begin
 * with '<', '[', '_' or "▁<": the tokens a named_only conversion maps. */
static int named_maybe(const char *s, size_t n)
{
	return n && (s[0] == '<' || s[0] == '[' || s[0] == '_' || (n > 3 && !memcmp(s, "\xE2\x96\x81<", 4)));
}

/* The id of token text s[0..n), or -1. A named_only conversion's map holds
 * only what named_maybe takes: a text it does not is looked for in turn. */
static int64_t conv_id(const struct conv *c, const char *s, size_t n)
{
	if (c->named_only && !named_maybe(s, n)) {
		for (uint64_t i = 0; i < c->n; i++) {
			size_t len;
			const char *t = tok_at(c, i, &len);
			if (len == n && !memcmp(t, s, n))
				return (int64_t)i;
		}
		return -1;
	}
	return tk_strmap_get(&c->ids, s, n);
}

static int conv_tokens(struct conv *c)
{
	struct err *err = c->err;
	int64_t n = gguf_get_arr_n(c->g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, err);
	if (n < 0)
		return -1;
	if (n == 0 || n > INT32_MAX)
		return err_set(err, "%s: key 'tokenizer.ggml.tokens': %lld tokens", c->name, (long long)n);
	c->n = (uint64_t)n;
	c->attr = calloc((size_t)n, 1);
	if (!c->attr)
		return err_sys(err, "out of memory:");

	const int32_t *types = NULL;
	if (gguf_find_key(c->g, "tokenizer.ggml.token_type") >= 0) {
		uint64_t nt;
		types = gguf_get_arr_data(c->g, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, &nt, err);
		if (!types)
			return -1;
		if (nt < c->n)
			return err_set(err, "%s: key 'tokenizer.ggml.token_type': %llu types for %llu tokens", c->name,
				       (unsigned long long)nt, (unsigned long long)c->n);
	}

	c->tokens = gguf_find_key(c->g, "tokenizer.ggml.tokens");
	size_t rcap = 0;
	for (uint64_t i = 0; i < c->n; i++) {
		size_t len;
		const char *s = gguf_kv_arr_str(c->g, c->tokens, i, &len);
		if (len == 0) {
			char buf[32];
			int k = snprintf(buf, sizeof buf, "[EMPTY_%llu]", (unsigned long long)i);
			if (c->nrenamed == rcap) {
				struct renamed *r = realloc(c->renamed, (rcap = 2 * rcap + 8) * sizeof *r);
				if (!r)
					return err_sys(err, "out of memory:");
				c->renamed = r;
			}
			if (!(s = strdup(buf)))
				return err_sys(err, "out of memory:");
			c->renamed[c->nrenamed++] = (struct renamed){i, (char *)s};
			len = (size_t)k;
		}
		switch (types ? types[i] : GGUF_TOK_NORMAL) {
		case GGUF_TOK_CONTROL: c->attr[i] = ATTR_CONTROL; break;
		case GGUF_TOK_USER_DEFINED: c->attr[i] = ATTR_USER; break;
		case GGUF_TOK_UNKNOWN: c->attr[i] = ATTR_UNKNOWN; break;
		default: c->attr[i] = 0; break;
		}
		/* named_only: the vocabulary's checks are the tokenizer's; only the
		 * tokens that may be named below are mapped */
		if (c->named_only && !named_maybe(s, len))
			continue;
		if (!c->named_only && !utf8_valid((const unsigned char *)s, len))
			return err_set(err, "%s: key 'tokenizer.ggml.tokens': token %llu is not valid UTF-8", c->name,
				       (unsigned long long)i);
		int r = tk_strmap_put(&c->ids, s, len, (uint32_t)i, 0);
		if (r < 0)
			return err_sys(err, "out of memory:");
		if (r == 0)
			return err_set(err, "%s: key 'tokenizer.ggml.tokens': token %llu '%.*s' repeats token %lld", c->name,
				       (unsigned long long)i, (int)len, s, (long long)conv_id(c, s, len));
	}

	/* llama.cpp's retyping by text, in its order */
	for (int k = 0; eog_texts[k].s; k++) {
		int64_t id = conv_id(c, eog_texts[k].s, eog_texts[k].n);
		if (id >= 0)
			c->attr[id] |= ATTR_CONTROL;
	}
	for (size_t f = 0; f < sizeof fim_texts / sizeof fim_texts[0]; f++) {
		if (gguf_find_key(c->g, fim_texts[f].key) >= 0)
			continue;
		for (int k = 0; k < 9 && fim_texts[f].texts[k]; k++) {
			int64_t id = conv_id(c, fim_texts[f].texts[k], strlen(fim_texts[f].texts[k]));
			if (id >= 0)
				c->attr[id] |= ATTR_CONTROL;
		}
	}
	for (int k = 0; user_texts[k]; k++) {
		int64_t id = conv_id(c, user_texts[k], strlen(user_texts[k]));
		if (id >= 0)
			c->attr[id] = ATTR_USER;
	}
	/* o200k_harmony and solar-open: "<|end|>" is an ordinary marker there */
	int64_t end = conv_id(c, "<|end|>", 7);
	int ret = conv_id(c, "<|return|>", 10) >= 0, call = conv_id(c, "<|call|>", 8) >= 0;
	int calls = conv_id(c, "<|calls|>", 9) >= 0, flush = conv_id(c, "<|flush|>", 9) >= 0;
	if (end >= 0 && ((ret && call) || (calls && flush)))
		c->attr[end] = ATTR_USER;
	for (uint64_t i = 0; c->named_only && i < c->n; i++) { /* the tokens taken: valid UTF-8 */
		size_t len;
		const char *s = c->attr[i] ? tok_at(c, i, &len) : NULL;
		if (s && !utf8_valid((const unsigned char *)s, len))
			return err_set(err, "%s: key 'tokenizer.ggml.tokens': token %llu is not valid UTF-8", c->name,
				       (unsigned long long)i);
	}
	return 0;
}

static jv jv_str(const char *s, size_t n) { return jv_string_sized(s, (int)n); }

static jv conv_vocab(const struct conv *c)
{
	jv vocab = jv_object();
	for (uint64_t i = 0; i < c->n; i++)
		vocab = jv_object_set(vocab, jv_tok(c, i), jv_number((double)i));
	return vocab;
}

static jv conv_added(const struct conv *c)
{
	jv added = jv_array();
	for (uint64_t i = 0; i < c->n; i++) {
		if (!c->attr[i])
			continue;
		jv t = jv_object();
		t = jv_object_set(t, jv_string("id"), jv_number((double)i));
		t = jv_object_set(t, jv_string("content"), jv_tok(c, i));
		t = jv_object_set(t, jv_string("single_word"), jv_false());
		t = jv_object_set(t, jv_string("lstrip"), jv_false());
		t = jv_object_set(t, jv_string("rstrip"), jv_false());
		/* llama.cpp finds these in the raw text, before any normalizer */
		t = jv_object_set(t, jv_string("normalized"), jv_false());
		t = jv_object_set(t, jv_string("special"), jv_bool((c->attr[i] & (ATTR_CONTROL | ATTR_UNKNOWN)) != 0));
		added = jv_array_append(added, t);
	}
	return added;
}

/* tokenizer.ggml.merges as [left, right] pairs; every part and the result must
 * be tokens, or BPE in tokenizer.json could not hold the merge. */
static int conv_merges_gpt2(const struct conv *c, jv *out)
{
	struct err *err = c->err;
	int64_t n = gguf_get_arr_n(c->g, "tokenizer.ggml.merges", GGUF_TYPE_STRING, err);
	if (n < 0)
		return -1;
	struct tk_u64map seen = {0};
	jv merges = jv_array();
	int rc = 0;
	char *both = NULL;
	size_t both_cap = 0;
	int64_t merges_key = gguf_find_key(c->g, "tokenizer.ggml.merges");
	for (int64_t i = 0; i < n; i++) {
		size_t len;
		const char *m = gguf_kv_arr_str(c->g, merges_key, (uint64_t)i, &len);
		/* llama.cpp splits at the first space after the first byte */
		const char *sp = len > 1 ? memchr(m + 1, ' ', len - 1) : NULL;
		if (!sp) {
			rc = err_set(err, "%s: key 'tokenizer.ggml.merges': merge %lld '%.*s' has no space", c->name,
				     (long long)i, (int)len, m);
			break;
		}
		size_t ln = (size_t)(sp - m), rn = len - ln - 1;
		int64_t a = conv_id(c, m, ln), b = conv_id(c, sp + 1, rn);
		if (ln + rn > both_cap) {
			both_cap = (ln + rn) * 2;
			char *nb = realloc(both, both_cap);
			if (!nb) {
				rc = err_sys(err, "out of memory:");
				break;
			}
			both = nb;
		}
		memcpy(both, m, ln);
		memcpy(both + ln, sp + 1, rn);
		int64_t ab = conv_id(c, both, ln + rn);
		if (a < 0 || b < 0 || ab < 0) {
			rc = err_set(err, "%s: key 'tokenizer.ggml.merges': merge %lld '%.*s': '%.*s' is not a token", c->name,
				     (long long)i, (int)len, m, a < 0 ? (int)ln : b < 0 ? (int)rn : (int)(ln + rn),
				     a < 0 ? m : b < 0 ? sp + 1 : both);
			break;
		}
		uint64_t key = (uint64_t)a << 32 | (uint64_t)b, dummy;
		if (tk_u64map_get(&seen, key, &dummy))
			continue; /* llama.cpp keeps the first rank of a repeated pair */
		if (tk_u64map_put(&seen, key, 1) < 0) {
			rc = err_sys(err, "out of memory:");
			break;
		}
		jv pair = jv_array();
		pair = jv_array_append(pair, jv_str(m, ln));
		pair = jv_array_append(pair, jv_str(sp + 1, rn));
		merges = jv_array_append(merges, pair);
	}
	free(both);
	tk_u64map_free(&seen);
	if (rc < 0) {
		jv_free(merges);
		return -1;
	}
	*out = merges;
	return 0;
}

/* SentencePiece BPE: every split of a token into two tokens is a merge, ranked
 * by the token's score (best first), as llama.cpp's bigram queue ranks them. */
struct spm_merge {
	float score;
	uint32_t id, left, right;
};

static int cmp_spm_merge(const void *a, const void *b)
{
	const struct spm_merge *x = a, *y = b;
	if (x->score != y->score)
		return x->score > y->score ? -1 : 1;
	if (x->id != y->id)
		return x->id < y->id ? -1 : 1;
	return x->left < y->left ? -1 : x->left > y->left;
}

static int conv_merges_spm(const struct conv *c, jv *out)
{
	struct err *err = c->err;
	const float *scores = NULL;
	if (gguf_find_key(c->g, "tokenizer.ggml.scores") >= 0) {
		uint64_t ns;
		scores = gguf_get_arr_data(c->g, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, &ns, err);
		if (!scores)
			return -1;
		if (ns < c->n)
			return err_set(err, "%s: key 'tokenizer.ggml.scores': %llu scores for %llu tokens", c->name,
				       (unsigned long long)ns, (unsigned long long)c->n);
	}
	struct spm_merge *m = NULL;
	size_t nm = 0, cap = 0;
	for (uint64_t i = 0; i < c->n; i++) {
		/* every token, added ones too: llama.cpp's bigrams look up any token text */
		size_t len;
		const char *s = tok_at(c, i, &len);
		for (size_t k = utf8_char_len((unsigned char)s[0]); k < len; k += utf8_char_len((unsigned char)s[k])) {
			int64_t l = conv_id(c, s, k), r = conv_id(c, s + k, len - k);
			if (l < 0 || r < 0)
				continue;
			if (nm == cap) {
				cap = cap ? cap * 2 : 4096;
				struct spm_merge *nmv = realloc(m, cap * sizeof *m);
				if (!nmv) {
					free(m);
					return err_sys(err, "out of memory:");
				}
				m = nmv;
			}
			m[nm++] = (struct spm_merge){scores ? scores[i] : 0.0f, (uint32_t)i, (uint32_t)l, (uint32_t)r};
		}
	}
	if (nm)
		qsort(m, nm, sizeof *m, cmp_spm_merge);
	jv merges = jv_array();
	for (size_t i = 0; i < nm; i++) {
		jv pair = jv_array();
		pair = jv_array_append(pair, jv_tok(c, m[i].left));
		pair = jv_array_append(pair, jv_tok(c, m[i].right));
		merges = jv_array_append(merges, pair);
	}
	free(m);
	*out = merges;
	return 0;
}

/* A special-token id from the file, or def when absent; out-of-range ids are
 * dropped as llama.cpp drops them (it warns and keeps the default). */
static int64_t conv_special_id(const struct conv *c, const char *key, int64_t def)
{
	if (def >= (int64_t)c->n)
		def = -1;
	if (gguf_find_key(c->g, key) < 0)
		return def;
	uint32_t v;
	struct err ignored;
	if (gguf_get_u32(c->g, key, &v, &ignored) < 0 || v >= c->n)
		return def;
	return v;
}

static int conv_flag(const struct conv *c, const char *key, int def, int *out)
{
	*out = def;
	if (gguf_find_key(c->g, key) < 0)
		return 0;
	return gguf_get_bool(c->g, key, out, c->err);
}

static jv special_piece(const struct conv *c, int64_t id)
{
	jv p = jv_object();
	p = jv_object_set(p, jv_string("id"), jv_tok(c, (uint64_t)id));
	p = jv_object_set(p, jv_string("type_id"), jv_number(0));
	return jv_object_set(jv_object(), jv_string("SpecialToken"), p);
}

/* BOS and EOS around the text, as llama.cpp's add_special does. */
static jv conv_post(const struct conv *c, int64_t bos, int64_t eos)
{
	if (bos < 0 && eos < 0)
		return jv_null();
	jv single = jv_array(), specials = jv_object();
	int64_t ids[2] = {bos, eos};
	for (int k = 0; k < 2; k++) {
		if (ids[k] < 0)
			continue;
		jv st = jv_object();
		st = jv_object_set(st, jv_string("id"), jv_tok(c, (uint64_t)ids[k]));
		st = jv_object_set(st, jv_string("ids"), jv_array_append(jv_array(), jv_number((double)ids[k])));
		st = jv_object_set(st, jv_string("tokens"), jv_array_append(jv_array(), jv_tok(c, (uint64_t)ids[k])));
		specials = jv_object_set(specials, jv_tok(c, (uint64_t)ids[k]), st);
	}
	if (bos >= 0)
		single = jv_array_append(single, special_piece(c, bos));
	jv seq = jv_object_set(jv_object(), jv_string("id"), jv_string("A"));
	seq = jv_object_set(seq, jv_string("type_id"), jv_number(0));
	single = jv_array_append(single, jv_object_set(jv_object(), jv_string("Sequence"), seq));
	if (eos >= 0)
		single = jv_array_append(single, special_piece(c, eos));
	jv post = jv_object();
	post = jv_object_set(post, jv_string("type"), jv_string("TemplateProcessing"));
	post = jv_object_set(post, jv_string("single"), jv_copy(single));
	post = jv_object_set(post, jv_string("pair"), single);
	return jv_object_set(post, jv_string("special_tokens"), specials);
}

static jv obj2(const char *k1, jv v1, const char *k2, jv v2)
{
	return jv_object_set(jv_object_set(jv_object(), jv_string(k1), v1), jv_string(k2), v2);
}

static jv replace_step(const char *from, const char *to)
{
	jv r = obj2("type", jv_string("Replace"), "pattern", jv_object_set(jv_object(), jv_string("String"), jv_string(from)));
	return jv_object_set(r, jv_string("content"), jv_string(to));
}

/* Builds the tokenizer.json object; *bos_out gets the BOS id (or -1). */
static int conv_config(struct conv *c, jv *out, int64_t *bos_out)
{
	struct err *err = c->err;
	const char *model, *pre = NULL;
	if (gguf_get_str(c->g, "tokenizer.ggml.model", &model, NULL, err) < 0)
		return -1;
	int spm = strcmp(model, "llama") == 0;
	if (!spm && strcmp(model, "gpt2") != 0)
		return err_set(err, "%s: key 'tokenizer.ggml.model': tokenizer model '%s' is not supported (only 'gpt2' and 'llama')",
			       c->name, model);
	const struct gguf_pre *pt = NULL;
	if (!spm) {
		if (gguf_find_key(c->g, "tokenizer.ggml.pre") >= 0 &&
		    gguf_get_str(c->g, "tokenizer.ggml.pre", &pre, NULL, err) < 0)
			return -1;
		const char *key = pre ? pre : "default"; /* llama.cpp warns and uses 'default' */
		for (size_t i = 0; i < sizeof gguf_pres / sizeof gguf_pres[0] && !pt; i++)
			if (name_in_list(gguf_pres[i].names, key))
				pt = &gguf_pres[i];
		if (!pt)
			return err_set(err, "%s: key 'tokenizer.ggml.pre': pre-tokenizer '%s' is not supported", c->name,
				       key);
	}
	if (conv_tokens(c) < 0)
		return -1;

	/* llama.cpp's defaults per model, then the file's keys */
	int64_t bos = conv_special_id(c, "tokenizer.ggml.bos_token_id", spm ? 1 : 11);
	int64_t eos = conv_special_id(c, "tokenizer.ggml.eos_token_id", spm ? 2 : 11);
	int64_t unk = conv_special_id(c, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1);
	if (pre && (strcmp(pre, "chatglm-bpe") == 0 || strcmp(pre, "glm4") == 0 || strcmp(pre, "glm5") == 0) &&
	    gguf_find_key(c->g, "tokenizer.ggml.bos_token_id") < 0)
		bos = -1;
	int add_bos, add_eos, add_space;
	if (conv_flag(c, "tokenizer.ggml.add_bos_token", spm ? 1 : pt->add_bos, &add_bos) < 0 ||
	    conv_flag(c, "tokenizer.ggml.add_eos_token", 0, &add_eos) < 0 ||
	    conv_flag(c, "tokenizer.ggml.add_space_prefix", spm, &add_space) < 0)
		return -1;
	/* a byte-level model's add_space_prefix is ignored, as llama.cpp's BPE
	 * encoder ignores it (its decoder drops one leading space; ours does not) */
	if ((add_bos && bos < 0) || (add_eos && eos < 0))
		return err_set(err, "%s: add_%s_token is set but the file has no valid %s token id", c->name,
			       add_bos && bos < 0 ? "bos" : "eos", add_bos && bos < 0 ? "BOS" : "EOS");

	jv merges;
	if ((spm ? conv_merges_spm(c, &merges) : conv_merges_gpt2(c, &merges)) < 0)
		return -1;

	jv bpe = jv_object();
	bpe = jv_object_set(bpe, jv_string("type"), jv_string("BPE"));
	bpe = jv_object_set(bpe, jv_string("dropout"), jv_null());
	bpe = jv_object_set(bpe, jv_string("unk_token"),
			    spm && unk >= 0 ? jv_tok(c, (uint64_t)unk) : jv_null());
	bpe = jv_object_set(bpe, jv_string("continuing_subword_prefix"), jv_null());
	bpe = jv_object_set(bpe, jv_string("end_of_word_suffix"), jv_null());
	bpe = jv_object_set(bpe, jv_string("fuse_unk"), jv_bool(spm));
	bpe = jv_object_set(bpe, jv_string("byte_fallback"), jv_bool(spm));
	bpe = jv_object_set(bpe, jv_string("ignore_merges"), jv_bool(!spm && pt->ignore_merges));
	bpe = jv_object_set(bpe, jv_string("vocab"), conv_vocab(c));
	bpe = jv_object_set(bpe, jv_string("merges"), merges);

	jv cfg = jv_object();
	cfg = jv_object_set(cfg, jv_string("version"), jv_string("1.0"));
	cfg = jv_object_set(cfg, jv_string("truncation"), jv_null());
	cfg = jv_object_set(cfg, jv_string("padding"), jv_null());
	cfg = jv_object_set(cfg, jv_string("added_tokens"), conv_added(c));
	if (spm) {
		jv steps = jv_array();
		if (add_space)
			steps = jv_array_append(steps, obj2("type", jv_string("Prepend"), "prepend", jv_string("▁")));
		steps = jv_array_append(steps, replace_step(" ", "▁"));
		cfg = jv_object_set(cfg, jv_string("normalizer"), obj2("type", jv_string("Sequence"), "normalizers", steps));
		cfg = jv_object_set(cfg, jv_string("pre_tokenizer"), jv_null());
		jv dec = jv_array();
		dec = jv_array_append(dec, replace_step("▁", " "));
		dec = jv_array_append(dec, jv_object_set(jv_object(), jv_string("type"), jv_string("ByteFallback")));
		dec = jv_array_append(dec, jv_object_set(jv_object(), jv_string("type"), jv_string("Fuse")));
		if (add_space) {
			jv strip = obj2("type", jv_string("Strip"), "content", jv_string(" "));
			strip = jv_object_set(strip, jv_string("start"), jv_number(1));
			dec = jv_array_append(dec, jv_object_set(strip, jv_string("stop"), jv_number(0)));
		}
		cfg = jv_object_set(cfg, jv_string("decoder"), obj2("type", jv_string("Sequence"), "decoders", dec));
	} else {
		cfg = jv_object_set(cfg, jv_string("normalizer"), jv_null());
		jv steps = jv_array();
		for (int k = 0; k < 5 && pt->re[k]; k++) {
			jv split = obj2("type", jv_string("Split"), "pattern",
					jv_object_set(jv_object(), jv_string("Regex"), jv_string(pt->re[k])));
			split = jv_object_set(split, jv_string("behavior"), jv_string("Isolated"));
			steps = jv_array_append(steps, jv_object_set(split, jv_string("invert"), jv_false()));
		}
		jv bl = obj2("type", jv_string("ByteLevel"), "add_prefix_space", jv_false());
		bl = jv_object_set(bl, jv_string("trim_offsets"), jv_true());
		steps = jv_array_append(steps, jv_object_set(bl, jv_string("use_regex"), jv_false()));
		cfg = jv_object_set(cfg, jv_string("pre_tokenizer"),
				    obj2("type", jv_string("Sequence"), "pretokenizers", steps));
		jv dec = obj2("type", jv_string("ByteLevel"), "add_prefix_space", jv_true());
		dec = jv_object_set(dec, jv_string("trim_offsets"), jv_true());
		cfg = jv_object_set(cfg, jv_string("decoder"), jv_object_set(dec, jv_string("use_regex"), jv_true()));
	}
	cfg = jv_object_set(cfg, jv_string("post_processor"), conv_post(c, add_bos ? bos : -1, add_eos ? eos : -1));
	cfg = jv_object_set(cfg, jv_string("model"), bpe);
	*out = cfg;
	*bos_out = bos;
	return 0;
}

static void conv_free(struct conv *c)
{
	for (size_t i = 0; i < c->nrenamed; i++)
		free(c->renamed[i].s);
	free(c->renamed);
	free(c->attr);
	tk_strmap_free(&c->ids);
}

/* Known differences from llama.cpp that no tokenizer.json can express:
 *  - invalid UTF-8: llama.cpp turns each byte that does not start a well-formed
 *    sequence into U+FFFD (one per byte) and accepts overlong forms and
 *    surrogates as code points; tokenizer_encode cleans the input its own way;
 *  - llama.cpp's Unicode tables (letters, numbers, whitespace) are its own
 *    generated copy, PCRE2's may be another Unicode version;
 *  - special tokens: llama.cpp splits them out longest-token-first over the
 *    whole text, added tokens match leftmost-longest; they differ only when
 *    two special tokens overlap in the text;
 *  - decoding: llama.cpp's clean_spaces (" ?" -> "?", ...) for the pre-types
 *    that set it, and unused/undefined tokens decode to nothing there. */
int tokenizer_gguf_added_of(const struct gguf *g, const char *name,
			    int (*fn)(void *arg, uint32_t id, const char *s, size_t n, int special), void *arg,
			    struct err *err)
{
	struct conv c = {.g = g, .name = name, .err = err, .named_only = 1};
	int rc = conv_tokens(&c);
	for (uint64_t i = 0; rc == 0 && i < c.n; i++) {
		size_t len;
		const char *s = c.attr[i] ? tok_at(&c, i, &len) : NULL; /* as conv_added */
		if (s)
			rc = fn(arg, (uint32_t)i, s, len, (c.attr[i] & (ATTR_CONTROL | ATTR_UNKNOWN)) != 0);
	}
	conv_free(&c);
	return rc;
}

int tokenizer_gguf_added(const char *path, int (*fn)(void *arg, uint32_t id, const char *s, size_t n, int special),
			 void *arg, struct err *err)
{
	struct gguf *g = gguf_open(path, err);
	if (!g)
		return -1;
	int rc = tokenizer_gguf_added_of(g, path, fn, arg, err);
	gguf_close(g);
	return rc;
}

struct tokenizer *tokenizer_load_gguf(const char *path, struct err *err)
{
	struct gguf *g = gguf_open(path, err);
	if (!g)
		return NULL;
	struct conv c = {.g = g, .name = path, .err = err};
	jv cfg;
	int64_t bos = -1;
	struct tokenizer *tk = NULL;
	if (conv_config(&c, &cfg, &bos) == 0) {
		tk = tokenizer_from_jv(cfg, path, err);
		if (tk)
			tk->bos_id = bos; /* tokenizer_config.json's bos_token, which a GGUF names by id */
	}
	conv_free(&c);
	gguf_close(g);
	return tk;
}
