/* bench_tokenizer TOKENIZER CORPUS.jsonl [passes] [ids-out]: single-threaded
 * encode throughput of lib/tokenizer. CORPUS holds {"text": ...} records (as
 * tests/ref/corpus/text.jsonl); each pass encodes every record once
 * (add_special off). Prints one JSON line: load seconds, the best pass's
 * seconds, bytes and tokens per pass. With ids-out, writes the ids of the
 * last pass, one record per line, so tests/bench/run can check them against
 * Hugging Face before quoting a ratio. Not a pass/fail test. */
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
	return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: bench_tokenizer TOKENIZER CORPUS.jsonl [passes] [ids-out]\n");
		return 2;
	}
	int passes = argc > 3 ? atoi(argv[3]) : 3;
	if (passes < 1)
		passes = 1;
	struct err err = { 0 };
	double t0 = now();
	struct tokenizer *tk = tokenizer_load(argv[1], &err);
	double load_s = now() - t0;
	if (!tk) {
		fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
		return 1;
	}
	FILE *f = fopen(argv[2], "r");
	if (!f) {
		perror(argv[2]);
		return 1;
	}
	char **texts = NULL;
	size_t *lens = NULL, n = 0, cap = 0, bytes = 0;
	char *line = NULL;
	size_t lcap = 0;
	ssize_t k;
	while ((k = getline(&line, &lcap, f)) > 0) {
		jv v = jv_parse_sized(line, (int)k);
		jv t = jv_get_kind(v) == JV_KIND_OBJECT ? jv_object_get(jv_copy(v), jv_string("text")) : jv_invalid();
		if (jv_get_kind(t) == JV_KIND_STRING) {
			if (n == cap) {
				cap = cap ? cap * 2 : 1024;
				texts = realloc(texts, cap * sizeof *texts);
				lens = realloc(lens, cap * sizeof *lens);
			}
			lens[n] = (size_t)jv_string_length_bytes(jv_copy(t));
			texts[n] = malloc(lens[n] + 1);
			memcpy(texts[n], jv_string_value(t), lens[n] + 1);
			bytes += lens[n];
			n++;
		}
		jv_free(t);
		jv_free(v);
	}
	free(line);
	fclose(f);
	struct tok_encoding e = { 0 };
	double best = 1e30;
	size_t tokens = 0;
	FILE *ids = NULL;
	for (int p = 0; p < passes; p++) {
		int last = p == passes - 1;
		if (last && argc > 4 && !(ids = fopen(argv[4], "w"))) {
			perror(argv[4]);
			return 1;
		}
		tokens = 0;
		double t = now();
		for (size_t i = 0; i < n; i++) {
			e.n = 0;
			if (tokenizer_encode(tk, texts[i], lens[i], 0, &e, &err) < 0) {
				fprintf(stderr, "bench_tokenizer: record %zu: %s\n", i + 1, err.msg);
				return 1;
			}
			tokens += e.n;
			if (ids) {
				for (size_t j = 0; j < e.n; j++)
					fprintf(ids, j ? " %u" : "%u", e.ids[j]);
				fputc('\n', ids);
			}
		}
		double dt = now() - t;
		if (!ids && dt < best)
			best = dt;
		if (ids && passes == 1)
			best = dt;
	}
	if (ids)
		fclose(ids);
	printf("{\"load_s\":%.3f,\"pass_s\":%.6f,\"bytes\":%zu,\"tokens\":%zu,\"records\":%zu}\n", load_s, best, bytes,
	       tokens, n);
	for (size_t i = 0; i < n; i++)
		free(texts[i]);
	free(texts);
	free(lens);
	tok_encoding_free(&e);
	tokenizer_free(tk);
	return 0;
}
