/* fuzz_tokenizer_encode: arbitrary bytes (invalid UTF-8 included) through
 * two small tokenizers loaded once: a byte-level BPE with Llama 3's split
 * regex, NFC, and added tokens with lstrip/rstrip/single_word; and a
 * SentencePiece-style BPE with byte fallback, Metaspace and unknown tokens.
 * Every token's offsets lie inside the input, in order, and ids inside the
 * vocabulary; decoding never fails. The first input byte picks the options. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"
#include "../unit/tokjson.h"

static char *bytelevel_json(void)
{
	struct buf b = { 0 };
	put(&b, "{\"version\":\"1.0\",\"added_tokens\":["
		"{\"id\":0,\"content\":\"<|im_start|>\",\"special\":true,\"normalized\":false},"
		"{\"id\":0,\"content\":\"<|im_end|>\",\"special\":true,\"lstrip\":true,\"rstrip\":true,\"normalized\":false},"
		"{\"id\":0,\"content\":\"word\",\"single_word\":true,\"normalized\":true},"
		"{\"id\":0,\"content\":\"\\u00e9t\\u00e9\",\"normalized\":true}],"
		"\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"}]},"
		"\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
		"\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+"
		"[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},\"behavior\":\"Isolated\",\"invert\":false},"
		"{\"type\":\"Digits\",\"individual_digits\":false},"
		"{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true}]},"
		"\"post_processor\":{\"type\":\"Sequence\",\"processors\":[{\"type\":\"ByteLevel\",\"trim_offsets\":true,"
		"\"add_prefix_space\":true},{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<|im_start|>\","
		"\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},{\"SpecialToken\":{\"id\":\"<|im_end|>\",\"type_id\":0}}],"
		"\"special_tokens\":{\"<|im_start|>\":{\"id\":\"<|im_start|>\",\"ids\":[262],\"tokens\":[\"<|im_start|>\"]},"
		"\"<|im_end|>\":{\"id\":\"<|im_end|>\",\"ids\":[263],\"tokens\":[\"<|im_end|>\"]}}}]},"
		"\"decoder\":{\"type\":\"ByteLevel\"},"
		"\"model\":{\"type\":\"BPE\",\"ignore_merges\":true,\"vocab\":{");
	put_byte_vocab(&b);
	put(&b, ",\"th\":256,\"the\":257,\"\\u0120t\":258,\"\\u0120the\":259,\"in\":260,\"\\u0120th\":261},"
		"\"merges\":[\"t h\",\"th e\",\"\\u0120 t\",\"\\u0120t h\",\"\\u0120th e\",\"i n\"]}}");
	return b.p;
}

static const char SP_JSON[] =
	"{\"version\":\"1.0\",\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},"
	"{\"id\":9,\"content\":\"\\n\",\"special\":false,\"normalized\":false}],"
	"\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Lowercase\"},{\"type\":\"NFKC\"},"
	"{\"type\":\"Strip\",\"strip_left\":false,\"strip_right\":true}]},"
	"\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":\"first\",\"split\":true},"
	"\"post_processor\":null,"
	"\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\\u2581\"},"
	"\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
	"\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,\"byte_fallback\":true,"
	"\"vocab\":{\"<unk>\":0,\"<0xE2>\":1,\"<0x82>\":2,\"<0xAC>\":3,\"\\u2581\":4,\"h\":5,\"i\":6,"
	"\"\\u2581h\":7,\"\\u2581hi\":8,\"<0xFF>\":10,\"<0xC3>\":11,\"<0xA9>\":12},"
	"\"merges\":[[\"\\u2581\",\"h\"],[\"\\u2581h\",\"i\"]]}}";

static struct tokenizer *tk_bl, *tk_sp;

static void load_once(void)
{
	if (tk_bl)
		return;
	struct err err;
	char *j = bytelevel_json();
	tk_bl = tokenizer_from_json(j, strlen(j), "fuzz-bytelevel", &err);
	free(j);
	if (!tk_bl) {
		fprintf(stderr, "%s\n", err.msg);
		abort();
	}
	tk_sp = tokenizer_from_json(SP_JSON, sizeof SP_JSON - 1, "fuzz-sp", &err);
	if (!tk_sp) {
		fprintf(stderr, "%s\n", err.msg);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	load_once();
	if (size == 0)
		return 0;
	struct tokenizer *tk = data[0] & 1 ? tk_sp : tk_bl;
	int special = (data[0] >> 1) & 1;
	const char *text = (const char *)data + 1;
	size_t len = size - 1;
	struct tok_encoding e = { 0 };
	struct err err;
	if (tokenizer_encode(tk, text, len, special, &e, &err) < 0) {
		fprintf(stderr, "encode failed: %s\n", err.msg);
		abort();
	}
	uint32_t vs = tokenizer_vocab_size(tk);
	for (size_t i = 0; i < e.n; i++) {
		if (e.ids[i] >= vs || e.offsets[i][0] > e.offsets[i][1] || e.offsets[i][1] > len)
			abort();
	}
	char *out;
	size_t olen;
	if (tokenizer_decode(tk, e.ids, e.n, special, &out, &olen, &err) < 0)
		abort();
	free(out);
	tok_encoding_free(&e);
	return 0;
}
