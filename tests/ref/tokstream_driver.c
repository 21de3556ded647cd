/* tokstream_driver: a token stream of given ids and labels — streams no
 * tokenizer would make (any vocabulary size and fingerprint, exact lengths and
 * labels) for the tests that train (tests/ref/test_fit_torch.py,
 * tests/cli/qlora-fit.sh).
 *
 *   tokstream_driver VOCAB FINGERPRINT OUT.tok.zst < records.jsonl
 *       in:  JSON Lines {"ids":[...],"labels":[...]}, one training example a line
 *       out: OUT.tok.zst written with lib/tokstream's writer in small chunks
 *            (so that a few records make several), vocabulary size VOCAB,
 *            tokenizer fingerprint FINGERPRINT: a decimal or 0x hex u64, or
 *            model:DIR for the fingerprint of DIR's tokenizer; through a
 *            temporary name renamed at the end
 *   tokstream_driver dump FILE.tok.zst
 *       out: the records of FILE as the same JSON Lines (to check a round trip)
 * Exit 0, 1 on a runtime failure, 2 on bad usage or input.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jsonl.h"
#include "tokenizer.h"
#include "tokstream.h"

static _Noreturn void die(int status, const char *msg)
{
	fprintf(stderr, "tokstream_driver: %s\n", msg);
	exit(status);
}

static uint64_t u64(const char *s)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (!*s || *end || errno)
		die(2, "a number was expected");
	return (uint64_t)v;
}

/* The integers of array key in rec into out (n of them, at most cap); -1 when
 * the key is missing, not an array of integers or too long. */
static int ints(jv rec, const char *key, int64_t *out, int cap)
{
	jv a = jv_object_get(jv_copy(rec), jv_string(key));
	if (jv_get_kind(a) != JV_KIND_ARRAY) {
		jv_free(a);
		return -1;
	}
	int n = jv_array_length(jv_copy(a));
	if (n > cap) {
		jv_free(a);
		return -1;
	}
	for (int i = 0; i < n; i++) {
		jv x = jv_array_get(jv_copy(a), i);
		double d = jv_get_kind(x) == JV_KIND_NUMBER ? jv_number_value(x) : 0.5;
		jv_free(x);
		if (d != (double)(int64_t)d) {
			jv_free(a);
			return -1;
		}
		out[i] = (int64_t)d;
	}
	jv_free(a);
	return n;
}

static int write_stream(uint32_t vocab, uint64_t fp, const char *out)
{
	struct err err = {0};
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp%ld", out, (long)getpid());
	FILE *f = fopen(tmp, "wb");
	if (!f)
		die(1, "cannot create the output file");
	struct tokstream_writer *w = tokstream_writer_new(f, vocab, fp, &err);
	if (!w || tokstream_writer_tune(w, 0, 256, &err) < 0)
		die(1, err.msg);
	struct jsonl_reader *r = jsonl_from_file(stdin, NULL);
	enum { CAP = 1 << 20 };
	int64_t *a = malloc(CAP * sizeof *a), *b = malloc(CAP * sizeof *b);
	uint32_t *ids = malloc(CAP * sizeof *ids);
	int32_t *labels = malloc(CAP * sizeof *labels);
	if (!r || !a || !b || !ids || !labels)
		die(1, "out of memory");
	jv rec;
	int got;
	while ((got = jsonl_next(r, &rec, &err)) == 1) {
		int n = ints(rec, "ids", a, CAP), m = ints(rec, "labels", b, CAP);
		jv_free(rec);
		if (n < 0 || m != n) {
			remove(tmp);
			die(2, "each line needs \"ids\" and \"labels\": arrays of integers of the same length");
		}
		for (int i = 0; i < n; i++) {
			if (a[i] < 0 || a[i] > UINT32_MAX || b[i] < INT32_MIN || b[i] > INT32_MAX) {
				remove(tmp);
				die(2, "an id or label is out of range");
			}
			ids[i] = (uint32_t)a[i];
			labels[i] = (int32_t)b[i];
		}
		if (tokstream_write(w, ids, labels, (uint32_t)n, &err) < 0) {
			remove(tmp);
			die(2, err.msg);
		}
	}
	if (got < 0) {
		remove(tmp);
		die(2, err.msg);
	}
	if (tokstream_writer_finish(w, &err) < 0 || fclose(f) != 0) {
		remove(tmp);
		die(1, err.msg[0] ? err.msg : "write error");
	}
	if (rename(tmp, out) != 0) {
		remove(tmp);
		die(1, "cannot rename the output into place");
	}
	jsonl_close(r);
	free(a);
	free(b);
	free(ids);
	free(labels);
	return 0;
}

static int dump(const char *path)
{
	struct err err = {0};
	struct tokstream_reader *r = tokstream_open(path, &err);
	if (!r)
		die(2, err.msg);
	const struct tokstream_info *info = tokstream_info(r);
	fprintf(stderr, "vocab %" PRIu32 " fingerprint 0x%016" PRIx64 "\n", info->vocab_size, info->tokenizer_fp);
	struct tokstream_record rec;
	int got;
	while ((got = tokstream_next(r, &rec, &err)) == 1) {
		fputs("{\"ids\":[", stdout);
		for (uint32_t i = 0; i < rec.n; i++)
			printf(i ? ",%" PRIu32 : "%" PRIu32, rec.ids[i]);
		fputs("],\"labels\":[", stdout);
		for (uint32_t i = 0; i < rec.n; i++)
			printf(i ? ",%" PRId32 : "%" PRId32, rec.labels[i]);
		fputs("]}\n", stdout);
	}
	tokstream_close(r);
	if (got < 0)
		die(2, err.msg);
	return fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "dump"))
		return dump(argv[2]);
	if (argc != 4)
		die(2, "usage: tokstream_driver VOCAB FINGERPRINT OUT.tok.zst < records.jsonl | "
		       "tokstream_driver dump FILE.tok.zst");
	uint64_t vocab = u64(argv[1]);
	if (vocab < 1 || vocab > INT32_MAX)
		die(2, "VOCAB must be 1..2^31-1");
	uint64_t fp;
	if (!strncmp(argv[2], "model:", 6)) {
		struct err err = {0};
		struct tokenizer *tk = tokenizer_load(argv[2] + 6, &err);
		if (!tk)
			die(2, err.msg);
		fp = tokenizer_fingerprint(tk);
		tokenizer_free(tk);
	} else {
		fp = u64(argv[2]);
	}
	return write_stream((uint32_t)vocab, fp, argv[3]);
}
