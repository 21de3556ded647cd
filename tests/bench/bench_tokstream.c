/* bench_tokstream [MiB] [level]: throughput of lib/tokstream on synthetic records
 * (Zipf-distributed ids over a 128k vocabulary, sequences of 64..4096 tokens, the
 * first ~60% of each masked as a prompt). Reports MB/s of record bytes (4 + 8n per
 * record) for writing, reading a file (seekable path), reading it as a stream, and
 * the compression ratio. Not a pass/fail test. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tokstream.h"

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint64_t rng = 88172645463325252ULL;
static double uniform(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (double)(rng >> 11) * (1.0 / 9007199254740992.0);
}

static double read_all(const char *path, int flags, uint64_t *bytes)
{
	struct err err;
	FILE *f = fopen(path, "rb");
	double t0 = now();
	struct tokstream_reader *r = f ? tokstream_open_file(f, path, flags, &err) : NULL;
	if (!r) {
		fprintf(stderr, "bench_tokstream: %s\n", f ? err.msg : "cannot open the file");
		exit(1);
	}
	struct tokstream_record rec;
	int rc;
	uint64_t b = 0, sum = 0;
	while ((rc = tokstream_next(r, &rec, &err)) == 1) {
		b += 4 + 8 * (uint64_t)rec.n;
		sum += rec.ids[rec.n - 1];
	}
	if (rc < 0) {
		fprintf(stderr, "bench_tokstream: %s\n", err.msg);
		exit(1);
	}
	double dt = now() - t0;
	tokstream_close(r);
	fclose(f);
	*bytes = b + (sum & 0); /* sum keeps the reads from being optimized away */
	return dt;
}

int main(int argc, char **argv)
{
	uint64_t target = (argc > 1 ? strtoull(argv[1], NULL, 10) : 128) << 20;
	int level = argc > 2 ? atoi(argv[2]) : 0;
	const uint32_t vocab = 128000;
	char path[] = "/tmp/bench_tokstream.XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0) {
		perror("mkstemp");
		return 1;
	}
	close(fd);

	/* records, generated before timing */
	uint32_t *ids = malloc(sizeof(uint32_t) * (target / 8 + 4096));
	int32_t *labels = malloc(sizeof(int32_t) * (target / 8 + 4096));
	uint32_t *lens = malloc(sizeof(uint32_t) * (target / (4 + 8 * 64) + 1));
	uint64_t bytes = 0, ntok = 0, nrec = 0;
	while (bytes < target) {
		uint32_t n = 64 + (uint32_t)(uniform() * 4032);
		for (uint32_t i = 0; i < n; i++) {
			uint32_t id = (uint32_t)(exp(uniform() * log((double)vocab))) - 1; /* ~Zipf */
			ids[ntok + i] = id < vocab ? id : vocab - 1;
			labels[ntok + i] = i < n * 6 / 10 ? TOKSTREAM_IGNORE : (int32_t)ids[ntok + i];
		}
		lens[nrec++] = n;
		ntok += n;
		bytes += 4 + 8 * (uint64_t)n;
	}

	struct err err;
	FILE *f = fopen(path, "wb");
	double t0 = now();
	struct tokstream_writer *w = tokstream_writer_new(f, vocab, 1, &err);
	if (!w || tokstream_writer_tune(w, level, 0, &err))
		goto fail;
	for (uint64_t r = 0, off = 0; r < nrec; off += lens[r], r++)
		if (tokstream_write(w, ids + off, labels + off, lens[r], &err))
			goto fail;
	if (tokstream_writer_finish(w, &err))
		goto fail;
	fclose(f);
	double tw = now() - t0;
	f = fopen(path, "rb");
	fseek(f, 0, SEEK_END);
	double csize = (double)ftell(f);
	fclose(f);

	uint64_t b1, b2;
	double tr = read_all(path, 0, &b1), ts = read_all(path, TOKSTREAM_STREAM, &b2);
	if (b1 != bytes || b2 != bytes) {
		fprintf(stderr, "bench_tokstream: read %llu and %llu bytes of %llu\n", (unsigned long long)b1,
			(unsigned long long)b2, (unsigned long long)bytes);
		return 1;
	}
	double mb = (double)bytes / 1e6;
	printf("bench tokstream: %.0f MB of records (%llu records, %llu tokens), zstd level %d, ratio %.2f\n", mb,
	       (unsigned long long)nrec, (unsigned long long)ntok, level ? level : 3, (double)bytes / csize);
	printf("bench tokstream: write %.0f MB/s, read (seekable) %.0f MB/s, read (stream) %.0f MB/s\n", mb / tw,
	       mb / tr, mb / ts);
	remove(path);
	free(ids);
	free(labels);
	free(lens);
	return 0;
fail:
	fprintf(stderr, "bench_tokstream: %s\n", err.msg);
	remove(path);
	return 1;
}
