/* tokenizer_driver: lib/tokenizer as a filter, for tests/ref/test_tokenizer_hf.py.
 *
 *   tokenizer_driver PATH < requests > replies
 *
 * PATH is what tokenizer_load() takes. One JSON request per line, one JSON
 * reply per line; text travels as hex so that any bytes (invalid UTF-8
 * included) go through unchanged:
 *   {"encode":"<hex>","special":0|1} -> {"ids":[...],"offsets":[[s,e],...]}
 *   {"decode":[ids],"skip":0|1}      -> {"text":"<hex>"}
 *   {"info":1}                       -> {"vocab_size":N,"bos":ID,"fingerprint":"<hex>","load_s":T}
 * A request that fails gives {"error":"..."}; a bad load exits 1.
 */
#include <jv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer.h"

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int unhex(const char *h, size_t n, char **out, size_t *len)
{
	if (n % 2)
		return -1;
	char *b = malloc(n / 2 + 1);
	if (!b)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		unsigned v;
		if (sscanf(h + 2 * i, "%2x", &v) != 1) {
			free(b);
			return -1;
		}
		b[i] = (char)v;
	}
	*out = b;
	*len = n / 2;
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: tokenizer_driver PATH < requests\n");
		return 2;
	}
	struct err err = { 0 };
	double t0 = now();
	struct tokenizer *tk = tokenizer_load(argv[1], &err);
	double load_s = now() - t0;
	if (!tk) {
		fprintf(stderr, "tokenizer_driver: %s\n", err.msg);
		return 1;
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	struct tok_encoding enc = { 0 };
	while ((n = getline(&line, &cap, stdin)) > 0) {
		jv req = jv_parse_sized(line, (int)n);
		if (!jv_is_valid(req) || jv_get_kind(req) != JV_KIND_OBJECT) {
			printf("{\"error\":\"bad request\"}\n");
			jv_free(req);
			continue;
		}
		jv e = jv_object_get(jv_copy(req), jv_string("encode"));
		jv d = jv_object_get(jv_copy(req), jv_string("decode"));
		if (jv_get_kind(e) == JV_KIND_STRING) {
			jv sp = jv_object_get(jv_copy(req), jv_string("special"));
			int special = jv_get_kind(sp) == JV_KIND_NUMBER && jv_number_value(sp) != 0;
			jv_free(sp);
			char *text;
			size_t len;
			if (unhex(jv_string_value(e), (size_t)jv_string_length_bytes(jv_copy(e)), &text, &len) < 0) {
				printf("{\"error\":\"bad hex\"}\n");
			} else {
				enc.n = 0;
				if (tokenizer_encode(tk, text, len, special, &enc, &err) < 0) {
					jv m = jv_dump_string(jv_string(err.msg), 0);
					printf("{\"error\":%s}\n", jv_string_value(m));
					jv_free(m);
				} else {
					fputs("{\"ids\":[", stdout);
					for (size_t i = 0; i < enc.n; i++)
						printf(i ? ",%u" : "%u", enc.ids[i]);
					fputs("],\"offsets\":[", stdout);
					for (size_t i = 0; i < enc.n; i++)
						printf(i ? ",[%u,%u]" : "[%u,%u]", enc.offsets[i][0], enc.offsets[i][1]);
					fputs("]}\n", stdout);
				}
				free(text);
			}
		} else if (jv_get_kind(d) == JV_KIND_ARRAY) {
			jv sk = jv_object_get(jv_copy(req), jv_string("skip"));
			int skip = jv_get_kind(sk) == JV_KIND_NUMBER && jv_number_value(sk) != 0;
			jv_free(sk);
			int m = jv_array_length(jv_copy(d));
			uint32_t *ids = malloc(((size_t)m + 1) * sizeof *ids);
			for (int i = 0; ids && i < m; i++) {
				jv x = jv_array_get(jv_copy(d), i);
				ids[i] = jv_get_kind(x) == JV_KIND_NUMBER ? (uint32_t)jv_number_value(x) : 0;
				jv_free(x);
			}
			char *text;
			size_t len;
			if (!ids || tokenizer_decode(tk, ids, (size_t)m, skip, &text, &len, &err) < 0) {
				printf("{\"error\":\"decode failed\"}\n");
			} else {
				fputs("{\"text\":\"", stdout);
				for (size_t i = 0; i < len; i++)
					printf("%02x", (unsigned char)text[i]);
				fputs("\"}\n", stdout);
				free(text);
			}
			free(ids);
		} else {
			printf("{\"vocab_size\":%u,\"bos\":%lld,\"fingerprint\":\"%016llx\",\"load_s\":%.3f}\n",
			       tokenizer_vocab_size(tk), (long long)tokenizer_bos_id(tk),
			       (unsigned long long)tokenizer_fingerprint(tk), load_s);
		}
		jv_free(e);
		jv_free(d);
		jv_free(req);
		fflush(stdout);
	}
	free(line);
	tok_encoding_free(&enc);
	tokenizer_free(tk);
	return 0;
}
