/* tokjson: what tests need to write small tokenizer.json texts by hand: a
 * growing text buffer, GPT-2's byte-level form of a byte and the 256 byte
 * entries of a vocabulary. Shared by the tokenizer and generation unit tests
 * and the encode fuzzer. */
#ifndef LORAPIPE_TOKJSON_H
#define LORAPIPE_TOKJSON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Appends s to a growing buffer. */
struct buf {
	char *p;
	size_t n, cap;
};

static inline void put(struct buf *b, const char *s)
{
	size_t k = strlen(s);
	if (b->n + k + 1 > b->cap) {
		b->cap = (b->n + k + 1) * 2;
		b->p = realloc(b->p, b->cap);
		if (!b->p)
			abort();
	}
	memcpy(b->p + b->n, s, k + 1);
	b->n += k;
}

/* The GPT-2 byte-level form of byte b, as UTF-8. */
static inline void byte_char(int b, char out[4])
{
	int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
	int cp = b;
	if (!printable) {
		int n = 0;
		for (int k = 0; k < b; k++)
			if (!((k >= 0x21 && k <= 0x7E) || (k >= 0xA1 && k <= 0xAC) || (k >= 0xAE && k <= 0xFF)))
				n++;
		cp = 0x100 + n;
	}
	if (cp < 0x80) {
		out[0] = (char)cp;
		out[1] = 0;
	} else {
		out[0] = (char)(0xC0 | cp >> 6);
		out[1] = (char)(0x80 | (cp & 0x3F));
		out[2] = 0;
	}
}

/* The 256 byte-level vocabulary entries, "<byte b>":b, comma-separated. */
static inline void put_byte_vocab(struct buf *b)
{
	char num[32], ch[4];
	for (int i = 0; i < 256; i++) {
		byte_char(i, ch);
		put(b, i ? ",\"" : "\"");
		if (ch[0] == '"' || ch[0] == '\\')
			put(b, "\\");
		put(b, ch);
		snprintf(num, sizeof num, "\":%d", i);
		put(b, num);
	}
}

#endif
