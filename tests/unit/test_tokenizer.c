/* Unit tests of lib/tokenizer on small hand-made tokenizer.json texts. The
 * comparison with Hugging Face on real tokenizers is tests/ref/test_tokenizer_hf.py. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "tokjson.h"
#include "tokenizer.h"

/* ---- helpers ---- */

static struct tokenizer *load(const char *json, struct err *err)
{
	memset(err, 0, sizeof *err);
	return tokenizer_from_json(json, strlen(json), "test", err);
}


/* A byte-level BPE tokenizer: ids 0..255 are the bytes, then `extra` tokens
 * (byte-level strings, JSON-escaped) with ids 256..; merges as given (a JSON
 * array text); added tokens as given (a JSON array text). */
static char *bytelevel_json(const char *extra[], const char *merges, const char *added, const char *post)
{
	struct buf b = { 0 };
	put(&b, "{\"version\":\"1.0\",\"added_tokens\":");
	put(&b, added ? added : "[]");
	put(&b, ",\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
		"\"trim_offsets\":true,\"use_regex\":true},\"post_processor\":");
	put(&b, post ? post : "null");
	put(&b, ",\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true},"
		"\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"continuing_subword_prefix\":null,"
		"\"end_of_word_suffix\":null,\"fuse_unk\":false,\"byte_fallback\":false,\"ignore_merges\":false,\"vocab\":{");
	char num[32];
	put_byte_vocab(&b);
	for (int i = 0; extra && extra[i]; i++) {
		put(&b, ",\"");
		put(&b, extra[i]);
		snprintf(num, sizeof num, "\":%d", 256 + i);
		put(&b, num);
	}
	put(&b, "},\"merges\":");
	put(&b, merges);
	put(&b, "}}");
	return b.p;
}

static int byte_id(int b) { return b; }

#define CHECK_IDS(enc, ...)                                                                        \
	do {                                                                                       \
		uint32_t want_[] = { __VA_ARGS__ };                                                \
		size_t nw_ = sizeof want_ / sizeof want_[0];                                       \
		int same_ = (enc).n == nw_;                                                         \
		for (size_t i_ = 0; same_ && i_ < nw_; i_++)                                       \
			same_ = (enc).ids[i_] == want_[i_];                                        \
		CHECK(same_, "ids differ: got %zu ids, first %u", (enc).n, (enc).n ? (enc).ids[0] : 0); \
	} while (0)

#define CHECK_OFF(enc, i, a, b)                                                                    \
	CHECK((enc).n > (i) && (enc).offsets[i][0] == (a) && (enc).offsets[i][1] == (b),           \
	      "token %d: offsets [%u,%u), want [%d,%d)", (int)(i), (enc).n > (i) ? (enc).offsets[i][0] : 0, \
	      (enc).n > (i) ? (enc).offsets[i][1] : 0, (a), (b))

static const char *EXTRA[] = { "ab", "abc", "\\u0120a", "\\u0120ab", "\\u00c3\\u00a9", NULL };
enum { AB = 256, ABC, GA, GAB, EACUTE };

/* ---- cases ---- */

static void test_bytelevel_merges_string_form(void)
{
	/* "Ġ a" ranks before "a b", so " ab" merges from the left */
	char *json = bytelevel_json(EXTRA, "[\"\\u0120 a\",\"a b\",\"ab c\",\"\\u0120a b\",\"\\u00c3 \\u00a9\"]", NULL, NULL);
	struct err err;
	struct tokenizer *tk = load(json, &err);
	free(json);
	CHECK(tk, "load: %s", err.msg);
	if (!tk)
		return;
	struct tok_encoding e = { 0 };
	const char *text = "abc ab \xc3\xa9!";
	CHECK(tokenizer_encode(tk, text, strlen(text), 0, &e, &err) == 0, "encode: %s", err.msg);
	/* "abc" " ab" " é" "!" -> abc, Ġab, Ġ, é, ! */
	CHECK_IDS(e, ABC, GAB, byte_id(' '), EACUTE, byte_id('!'));
	CHECK_OFF(e, 0, 0, 3);
	CHECK_OFF(e, 1, 3, 6);
	CHECK_OFF(e, 2, 6, 7);
	CHECK_OFF(e, 3, 7, 9);
	CHECK_OFF(e, 4, 9, 10);
	char *out;
	size_t len;
	CHECK(tokenizer_decode(tk, e.ids, e.n, 0, &out, &len, &err) == 0, "decode: %s", err.msg);
	CHECK(len == strlen(text) && !memcmp(out, text, len), "decode gave '%s'", out);
	free(out);
	tok_encoding_free(&e);
	tokenizer_free(tk);
}

static void test_bytelevel_merges_array_form_and_partial_chars(void)
{
	char *json = bytelevel_json(EXTRA, "[[\"a\",\"b\"],[\"ab\",\"c\"]]", NULL, NULL);
	struct err err;
	struct tokenizer *tk = load(json, &err);
	free(json);
	CHECK(tk, "load: %s", err.msg);
	if (!tk)
		return;
	struct tok_encoding e = { 0 };
	/* "é" without its merge: two byte tokens, each reporting the whole character */
	const char *text = "abc\xc3\xa9";
	CHECK(tokenizer_encode(tk, text, strlen(text), 0, &e, &err) == 0, "encode: %s", err.msg);
	CHECK_IDS(e, ABC, 0xC3, 0xA9);
	CHECK_OFF(e, 1, 3, 5);
	CHECK_OFF(e, 2, 3, 5);
	/* encode appends */
	CHECK(tokenizer_encode(tk, "ab", 2, 0, &e, &err) == 0, "encode: %s", err.msg);
	CHECK(e.n == 4 && e.ids[3] == AB, "appended %zu ids", e.n);
	tok_encoding_free(&e);
	tokenizer_free(tk);
}

static void test_invalid_utf8_offsets(void)
{
	char *json = bytelevel_json(EXTRA, "[]", NULL, NULL);
	struct err err;
	struct tokenizer *tk = load(json, &err);
	free(json);
	CHECK(tk, "load: %s", err.msg);
	if (!tk)
		return;
	struct tok_encoding e = { 0 };
	/* \xff and the truncated \xe2\x82 each become one U+FFFD (EF BF BD) */
	const char *text = "a\xff" "b\xe2\x82";
	CHECK(tokenizer_encode(tk, text, strlen(text), 0, &e, &err) == 0, "encode: %s", err.msg);
	CHECK_IDS(e, 'a', 0xEF, 0xBF, 0xBD, 'b', 0xEF, 0xBF, 0xBD);
	CHECK_OFF(e, 1, 1, 2);
	CHECK_OFF(e, 3, 1, 2);
	CHECK_OFF(e, 4, 2, 3);
	CHECK_OFF(e, 5, 3, 5);
	CHECK_OFF(e, 7, 3, 5);
	tok_encoding_free(&e);
	tokenizer_free(tk);
}

static void test_added_tokens_strip_and_special(void)
{
	const char *added = "[{\"id\":300,\"content\":\"<s>\",\"single_word\":false,\"lstrip\":true,\"rstrip\":true,"
			    "\"normalized\":false,\"special\":true},"
			    "{\"id\":301,\"content\":\"ab\",\"single_word\":true,\"lstrip\":false,\"rstrip\":false,"
			    "\"normalized\":true,\"special\":false},"
			    "{\"id\":302,\"content\":\"<s>x\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
			    "\"normalized\":false,\"special\":false}]";
	const char *post = "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
			   "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":[],\"special_tokens\":{\"<s>\":"
			   "{\"id\":\"<s>\",\"ids\":[261],\"tokens\":[\"<s>\"]}}}";
	char *json = bytelevel_json(EXTRA, "[\"a b\"]", added, post);
	struct err err;
	struct tokenizer *tk = load(json, &err);
	free(json);
	CHECK(tk, "load: %s", err.msg);
	if (!tk)
		return;
	/* ids come from the vocabulary order, not the file: 256 + 5 extra = 261 */
	int64_t s_id = tokenizer_id(tk, "<s>"), ab_id = tokenizer_id(tk, "ab"), sx_id = tokenizer_id(tk, "<s>x");
	CHECK(s_id == 261 && ab_id == AB && sx_id == 262, "ids %lld %lld %lld", (long long)s_id, (long long)ab_id,
	      (long long)sx_id);
	CHECK(tokenizer_vocab_size(tk) == 263, "vocab size %u", tokenizer_vocab_size(tk));
	CHECK(tokenizer_is_special(tk, 261) && !tokenizer_is_special(tk, 262), "special flags");
	CHECK(tokenizer_bos_id(tk) == 261, "bos %lld", (long long)tokenizer_bos_id(tk));
	CHECK(tokenizer_token(tk, 262) && !strcmp(tokenizer_token(tk, 262), "<s>x"), "token 262");

	struct tok_encoding e = { 0 };
	/* lstrip/rstrip: the token takes the spaces around it */
	const char *text = "a  <s>  b";
	CHECK(tokenizer_encode(tk, text, strlen(text), 0, &e, &err) == 0, "encode: %s", err.msg);
	CHECK_IDS(e, 'a', 261, 'b');
	CHECK_OFF(e, 1, 1, 8);
	/* longest match first: "<s>x" beats "<s>" */
	e.n = 0;
	CHECK(tokenizer_encode(tk, "<s>xy", 5, 0, &e, &err) == 0, "encode: %s", err.msg);
	CHECK_IDS(e, 262, 'y');
	/* single_word: "ab" inside a word stays text */
	e.n = 0;
	CHECK(tokenizer_encode(tk, "xab ab", 6, 0, &e, &err) == 0, "encode: %s", err.msg);
	CHECK_IDS(e, 'x', AB, 0xA0 - 0xA0 + ' ', AB);
	/* add_special runs the template */
	e.n = 0;
	CHECK(tokenizer_encode(tk, "ab", 2, 1, &e, &err) == 0, "encode: %s", err.msg);
	CHECK_IDS(e, 261, AB);
	CHECK_OFF(e, 0, 0, 0);
	/* decode with and without specials */
	char *out;
	size_t len;
	uint32_t ids[] = { 261, 'h', 'i', 262 };
	CHECK(tokenizer_decode(tk, ids, 4, 0, &out, &len, &err) == 0, "decode: %s", err.msg);
	CHECK(!strcmp(out, "<s>hi<s>x"), "decode gave '%s'", out);
	free(out);
	CHECK(tokenizer_decode(tk, ids, 4, 1, &out, &len, &err) == 0, "decode: %s", err.msg);
	CHECK(!strcmp(out, "hi<s>x"), "decode skip gave '%s'", out);
	free(out);
	tok_encoding_free(&e);
	tokenizer_free(tk);
}

/* SentencePiece-style (Gemma-like): "▁" for spaces, byte fallback, fused unk. */
static const char *SP_JSON =
	"{\"version\":\"1.0\",\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true}],"
	"\"normalizer\":{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"},"
	"\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"String\":\" \"},\"behavior\":\"MergedWithPrevious\","
	"\"invert\":false},\"post_processor\":null,"
	"\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\\u2581\"},"
	"\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"}]},"
	"\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,\"byte_fallback\":true,"
	"\"vocab\":{\"<unk>\":0,\"<0xE2>\":1,\"<0x82>\":2,\"<0xAC>\":3,\"\\u2581\":4,\"h\":5,\"i\":6,"
	"\"\\u2581h\":7,\"\\u2581hi\":8,\"<0xFF>\":9},"
	"\"merges\":[[\"\\u2581\",\"h\"],[\"\\u2581h\",\"i\"]]}}";

static void test_byte_fallback_and_unk(void)
{
	struct err err;
	struct tokenizer *tk = load(SP_JSON, &err);
	CHECK(tk, "load: %s", err.msg);
	if (!tk)
		return;
	struct tok_encoding e = { 0 };
	const char *text = "h hi \xe2\x82\xac xx";
	CHECK(tokenizer_encode(tk, text, strlen(text), 0, &e, &err) == 0, "encode: %s", err.msg);
	/* h ▁hi ▁ <E2><82><AC> ▁ <unk:xx fused> */
	CHECK_IDS(e, 5, 8, 4, 1, 2, 3, 4, 0);
	CHECK_OFF(e, 1, 1, 4);
	CHECK_OFF(e, 3, 5, 8);
	CHECK_OFF(e, 5, 5, 8);
	CHECK_OFF(e, 7, 9, 11);
	char *out;
	size_t len;
	CHECK(tokenizer_decode(tk, e.ids, e.n, 0, &out, &len, &err) == 0, "decode: %s", err.msg);
	CHECK(!strcmp(out, "h hi \xe2\x82\xac <unk>"), "decode gave '%s'", out);
	free(out);
	/* a byte sequence that is not UTF-8 decodes to one U+FFFD per byte */
	uint32_t bad[] = { 5, 9, 1, 6 };
	CHECK(tokenizer_decode(tk, bad, 4, 1, &out, &len, &err) == 0, "decode: %s", err.msg);
	CHECK(!strcmp(out, "h\xef\xbf\xbd\xef\xbf\xbdi"), "decode gave '%s'", out);
	free(out);
	tok_encoding_free(&e);
	tokenizer_free(tk);
}

static void test_fingerprint(void)
{
	struct err err;
	char *j1 = bytelevel_json(EXTRA, "[\"a b\",\"ab c\"]", NULL, NULL);
	char *j2 = bytelevel_json(EXTRA, "[\"ab c\",\"a b\"]", NULL, NULL);
	struct tokenizer *a = load(j1, &err), *b = load(j1, &err), *c = load(j2, &err);
	CHECK(a && b && c, "load: %s", err.msg);
	if (a && b && c) {
		CHECK(tokenizer_fingerprint(a) == tokenizer_fingerprint(b), "same file, different fingerprints");
		CHECK(tokenizer_fingerprint(a) != tokenizer_fingerprint(c), "merge order not in the fingerprint");
	}
	tokenizer_free(a);
	tokenizer_free(b);
	tokenizer_free(c);
	free(j1);
	free(j2);
}

static void expect_error(const char *json, const char *needle)
{
	struct err err;
	struct tokenizer *tk = load(json, &err);
	CHECK(!tk, "loaded, expected an error with '%s'", needle);
	CHECK(strstr(err.msg, needle), "error '%s' lacks '%s'", err.msg, needle);
	tokenizer_free(tk);
}

static void test_errors_name_the_path(void)
{
	expect_error("{\"model\": ", "bad JSON");
	expect_error("[1,2]", "expected a JSON object");
	expect_error("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", "model.type");
	expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a b\"]}}", "model.merges[0]");
	expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"x\"},\"merges\":[]}}", "model.vocab");
	expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[\"abc\"]}}", "model.merges[0]");
	expect_error("{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},{\"type\":\"BertNormalizer\"}]},"
		     "\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
		     "normalizer.normalizers[1].type");
	expect_error("{\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
		     "{\"Regex\":\"(unclosed\"},\"behavior\":\"Isolated\",\"invert\":false}]},"
		     "\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
		     "pre_tokenizer.pretokenizers[0].pattern.Regex");
	expect_error("{\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
		     "pre_tokenizer.type");
	expect_error("{\"post_processor\":{\"type\":\"RobertaProcessing\"},\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
		     "post_processor.type");
	expect_error("{\"decoder\":{\"type\":\"WordPiece\"},\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
		     "decoder.type");
	expect_error("{\"truncation\":{\"max_length\":5},\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
		     "truncation");
	expect_error("{\"added_tokens\":[{\"id\":1}],\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
		     "added_tokens[0].content");
	expect_error("{\"model\":{\"type\":\"BPE\",\"dropout\":0.1,\"vocab\":{},\"merges\":[]}}", "model.dropout");
	/* ids far past the tokens' count (the fuzzer's 999999994: 8 GB of id tables) */
	expect_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":999999994},\"merges\":[]}}",
		     "model.vocab: token id 999999994 is far past");
}

static void test_load_paths(void)
{
	char dir[] = "/tmp/lorapipe-tk-XXXXXX";
	CHECK(mkdtemp(dir), "mkdtemp");
	char path[256];
	snprintf(path, sizeof path, "%s/tokenizer.json", dir);
	FILE *f = fopen(path, "w");
	CHECK(f, "fopen");
	if (!f)
		return;
	fputs(SP_JSON, f);
	fclose(f);
	struct err err = { 0 };
	struct tokenizer *tk = tokenizer_load(dir, &err);
	CHECK(tk, "load dir: %s", err.msg);
	tokenizer_free(tk);
	tk = tokenizer_load(path, &err);
	CHECK(tk, "load file: %s", err.msg);
	tokenizer_free(tk);
	unlink(path);
	tk = tokenizer_load(dir, &err);
	CHECK(!tk && strstr(err.msg, "no tokenizer.json"), "empty dir: %s", err.msg);
	tk = tokenizer_load("/nonexistent/tokenizer.json", &err);
	CHECK(!tk && strstr(err.msg, "/nonexistent"), "missing file: %s", err.msg);
	rmdir(dir);
}

struct thread_job {
	const struct tokenizer *tk;
	const char *text;
	const struct tok_encoding *want;
	int bad;
};

static void *encode_many(void *arg)
{
	struct thread_job *j = arg;
	struct err err;
	struct tok_encoding e = { 0 };
	for (int r = 0; r < 200 && !j->bad; r++) {
		e.n = 0;
		if (tokenizer_encode(j->tk, j->text, strlen(j->text), r & 1, &e, &err) < 0) {
			j->bad = 1;
			break;
		}
		size_t skip = r & 1; /* the template's BOS */
		if (e.n != j->want->n + skip || memcmp(e.ids + skip, j->want->ids, j->want->n * sizeof *e.ids))
			j->bad = 1;
	}
	tok_encoding_free(&e);
	return NULL;
}

/* Concurrent calls: one takes the shared scratch and cache, the others run
 * on their own; all give the same ids. */
static void test_concurrent_encode(void)
{
	const char *post = "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
			   "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{\"<s>\":"
			   "{\"id\":\"<s>\",\"ids\":[1],\"tokens\":[\"<s>\"]}}}";
	char *json = bytelevel_json(EXTRA, "[\"a b\",\"ab c\"]", NULL, post);
	struct err err;
	struct tokenizer *tk = load(json, &err);
	free(json);
	CHECK(tk, "load: %s", err.msg);
	if (!tk)
		return;
	const char *text = "abc abc ab a b c \xc3\xa9 abcabc the end, abc!";
	struct tok_encoding want = { 0 };
	CHECK(tokenizer_encode(tk, text, strlen(text), 0, &want, &err) == 0, "encode: %s", err.msg);
	pthread_t th[4];
	struct thread_job jobs[4];
	for (int i = 0; i < 4; i++) {
		jobs[i] = (struct thread_job){ tk, text, &want, 0 };
		pthread_create(&th[i], NULL, encode_many, &jobs[i]);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		CHECK(!jobs[i].bad, "thread %d got other ids", i);
	}
	tok_encoding_free(&want);
	tokenizer_free(tk);
}

int main(void)
{
	RUN(test_bytelevel_merges_string_form);
	RUN(test_bytelevel_merges_array_form_and_partial_chars);
	RUN(test_invalid_utf8_offsets);
	RUN(test_added_tokens_strip_and_special);
	RUN(test_byte_fallback_and_unk);
	RUN(test_fingerprint);
	RUN(test_errors_name_the_path);
	RUN(test_load_paths);
	RUN(test_concurrent_encode);
	return check_done();
}
