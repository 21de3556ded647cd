/* Unit tests of lib/tokstream: round trips of random records (the seed is printed;
 * TOKSTREAM_SEED=N repeats a run), many chunks, chunks visited in a shuffled order,
 * pipes both ways, `zstd -d` giving exactly the record bytes, and bad input of
 * every kind: truncation at every byte, corruption of every byte, foreign files,
 * hand-made files with bad records or tables. */
#include "check.h"
#include "tokstream.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

static char dir[256];
static uint64_t rng;

static uint64_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static uint32_t rand_below(uint32_t n) { return (uint32_t)(next_rand() % n); }

static char *path_of(const char *name)
{
	static char p[4][512];
	static int k;
	k = (k + 1) % 4;
	snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
	return p[k];
}

/* ---- records kept in memory ---- */

struct rec {
	uint32_t n;
	uint32_t *ids;
	int32_t *labels;
};

struct recs {
	struct rec *v;
	size_t n, cap;
};

static void recs_add(struct recs *rs, const uint32_t *ids, const int32_t *labels, uint32_t n)
{
	if (rs->n == rs->cap) {
		rs->cap = rs->cap ? 2 * rs->cap : 64;
		rs->v = realloc(rs->v, rs->cap * sizeof *rs->v);
	}
	struct rec *r = &rs->v[rs->n++];
	r->n = n;
	r->ids = malloc(4 * (size_t)n);
	r->labels = malloc(4 * (size_t)n);
	memcpy(r->ids, ids, 4 * (size_t)n);
	memcpy(r->labels, labels, 4 * (size_t)n);
}

static void recs_free(struct recs *rs)
{
	for (size_t i = 0; i < rs->n; i++) {
		free(rs->v[i].ids);
		free(rs->v[i].labels);
	}
	free(rs->v);
	memset(rs, 0, sizeof *rs);
}

static int rec_eq(const struct rec *a, const struct tokstream_record *b)
{
	return a->n == b->n && !memcmp(a->ids, b->ids, 4 * (size_t)a->n) &&
	       !memcmp(a->labels, b->labels, 4 * (size_t)a->n);
}

static int recs_same(const struct recs *a, const struct recs *b)
{
	if (a->n != b->n)
		return 0;
	for (size_t i = 0; i < a->n; i++) {
		struct tokstream_record r = {a->v[i].n, a->v[i].ids, a->v[i].labels, 0, 0};
		if (!rec_eq(&b->v[i], &r))
			return 0;
	}
	return 1;
}

/* Random records: mostly short, some longer than a small chunk. */
static void random_recs(struct recs *rs, size_t count, uint32_t vocab, uint32_t maxlen)
{
	uint32_t *ids = malloc(4 * (size_t)maxlen);
	int32_t *labels = malloc(4 * (size_t)maxlen);
	for (size_t i = 0; i < count; i++) {
		uint32_t n = rand_below(8) == 0 ? 1 + rand_below(maxlen) : 1 + rand_below(maxlen / 16 + 1);
		for (uint32_t j = 0; j < n; j++) {
			ids[j] = rand_below(vocab);
			labels[j] = rand_below(3) ? (int32_t)ids[j] : TOKSTREAM_IGNORE;
		}
		recs_add(rs, ids, labels, n);
	}
	free(ids);
	free(labels);
}

/* Writes rs to f with the given chunk size. Returns 0 or -1 (message in err). */
static int write_recs_f(FILE *f, const struct recs *rs, uint32_t vocab, uint32_t chunk_bytes, struct err *err)
{
	struct tokstream_writer *w = tokstream_writer_new(f, vocab, 0x1234567890abcdefULL, err);
	if (!w)
		return -1;
	if (tokstream_writer_tune(w, 0, chunk_bytes, err)) {
		tokstream_writer_free(w);
		return -1;
	}
	for (size_t i = 0; i < rs->n; i++)
		if (tokstream_write(w, rs->v[i].ids, rs->v[i].labels, rs->v[i].n, err)) {
			tokstream_writer_free(w);
			return -1;
		}
	return tokstream_writer_finish(w, err);
}

static int write_recs(const char *path, const struct recs *rs, uint32_t vocab, uint32_t chunk_bytes,
		      struct err *err)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		return err_sys(err, "%s:", path);
	int rc = write_recs_f(f, rs, vocab, chunk_bytes, err);
	if (fclose(f) != 0 && rc == 0)
		rc = err_sys(err, "%s: close:", path);
	return rc;
}

/* Reads every record of r into out. Returns 0 or -1. */
static int read_reader(struct tokstream_reader *r, struct recs *out, struct err *err)
{
	struct tokstream_record rec;
	int rc;
	uint64_t want = 0;
	while ((rc = tokstream_next(r, &rec, err)) == 1) {
		if (rec.index != want++)
			return err_set(err, "record index %" PRIu64 ", expected %" PRIu64, rec.index, want - 1);
		recs_add(out, rec.ids, rec.labels, rec.n);
	}
	return rc;
}

/* Opens path (flags: TOKSTREAM_STREAM or 0) and reads it all. */
static int read_path(const char *path, int flags, struct recs *out, struct err *err)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return err_sys(err, "%s:", path);
	struct tokstream_reader *r = tokstream_open_file(f, path, flags, err);
	int rc = r ? read_reader(r, out, err) : -1;
	tokstream_close(r);
	fclose(f);
	return rc;
}

static unsigned char *slurp(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	fseek(f, 0, SEEK_SET);
	unsigned char *p = malloc(len > 0 ? (size_t)len : 1);
	*n = fread(p, 1, (size_t)len, f);
	fclose(f);
	return p;
}

static void spit(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (n)
		fwrite(p, 1, n, f);
	fclose(f);
}

static uint32_t le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const unsigned char *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

static void put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> 8 * i);
}

static void put64(unsigned char *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

static uint32_t crc32(const unsigned char *p, size_t n)
{
	uint32_t crc = ~0u;
	while (n--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
	}
	return ~crc;
}

static int contains(const char *s, const char *part) { return strstr(s, part) != NULL; }

/* ---- the cases ---- */

static void test_roundtrip_many_chunks(void)
{
	struct recs rs = {0}, got = {0}, got2 = {0};
	struct err err = {0};
	const char *p = path_of("rt.tok.zst");
	random_recs(&rs, 3000, 50000, 2048);
	uint64_t tokens = 0;
	for (size_t i = 0; i < rs.n; i++)
		tokens += rs.v[i].n;
	CHECK(write_recs(p, &rs, 50000, 4096, &err) == 0, "write: %s", err.msg);

	struct tokstream_reader *r = tokstream_open(p, &err);
	CHECK(r, "open: %s", err.msg);
	if (r) {
		const struct tokstream_info *in = tokstream_info(r);
		CHECK(in->seekable, "a regular file is seekable");
		CHECK(in->version == TOKSTREAM_VERSION && in->vocab_size == 50000 &&
			      in->tokenizer_fp == 0x1234567890abcdefULL && in->chunk_bytes == 4096,
		      "header fields: version %u vocab %u chunk %u", in->version, in->vocab_size, in->chunk_bytes);
		CHECK(in->n_records == rs.n && in->n_tokens == tokens, "counts %" PRIu64 " %" PRIu64,
		      in->n_records, in->n_tokens);
		CHECK(in->n_chunks > 50, "only %" PRIu64 " chunks", in->n_chunks);
		CHECK(read_reader(r, &got, &err) == 0, "read: %s", err.msg);
		CHECK(recs_same(&rs, &got), "records differ after a round trip (%zu read)", got.n);
		struct tokstream_record rec;
		CHECK(tokstream_next(r, &rec, &err) == 0, "still 0 after the end");
		tokstream_close(r);
	}
	/* the header was patched in place: the file knows its counts from the start */
	size_t n;
	unsigned char *b = slurp(p, &n);
	CHECK(b && n > 56 && le64(b + 32) == rs.n && le64(b + 40) == tokens, "header counts not patched");
	free(b);
	/* the stream path reads the same, and knows the counts from the header */
	CHECK(read_path(p, TOKSTREAM_STREAM, &got2, &err) == 0, "stream read: %s", err.msg);
	CHECK(recs_same(&rs, &got2), "stream read differs");
	recs_free(&rs);
	recs_free(&got);
	recs_free(&got2);
}

static void test_default_chunk_size(void)
{
	/* about 3 MiB of records with the default 1 MiB chunks: a few full-size frames */
	struct recs rs = {0}, got = {0};
	struct err err = {0};
	const char *p = path_of("big.tok.zst");
	random_recs(&rs, 1500, 150000, 4096);
	CHECK(write_recs(p, &rs, 150000, 0, &err) == 0, "write: %s", err.msg);
	struct tokstream_reader *r = tokstream_open(p, &err);
	CHECK(r, "open: %s", err.msg);
	if (r) {
		const struct tokstream_info *in = tokstream_info(r);
		uint64_t bytes = 4 * in->n_records + 8 * in->n_tokens;
		CHECK(in->chunk_bytes == TOKSTREAM_CHUNK_BYTES, "chunk bytes %u", in->chunk_bytes);
		CHECK(in->n_chunks >= bytes / TOKSTREAM_CHUNK_BYTES && in->n_chunks >= 2, "%" PRIu64 " chunks for %"
		      PRIu64 " bytes", in->n_chunks, bytes);
		for (uint64_t k = 0; k < in->n_chunks; k++) {
			uint32_t nr;
			uint64_t nt;
			CHECK(tokstream_chunk_info(r, k, &nr, &nt, &err) == 0, "%s", err.msg);
			CHECK(4 * (uint64_t)nr + 8 * nt <= TOKSTREAM_CHUNK_BYTES, "chunk %" PRIu64 " too big", k);
		}
		CHECK(read_reader(r, &got, &err) == 0, "read: %s", err.msg);
		CHECK(recs_same(&rs, &got), "records differ");
		tokstream_close(r);
	}
	recs_free(&rs);
	recs_free(&got);
}

static void test_seek_chunks_shuffled(void)
{
	struct recs rs = {0};
	struct err err = {0};
	const char *p = path_of("shuf.tok.zst");
	random_recs(&rs, 800, 1000, 1024);
	CHECK(write_recs(p, &rs, 1000, 2048, &err) == 0, "write: %s", err.msg);
	struct tokstream_reader *r = tokstream_open(p, &err);
	CHECK(r, "open: %s", err.msg);
	if (!r) {
		recs_free(&rs);
		return;
	}
	uint64_t nc = tokstream_info(r)->n_chunks;
	uint64_t *order = malloc(nc * sizeof *order);
	char *seen = calloc(rs.n, 1);
	for (uint64_t i = 0; i < nc; i++)
		order[i] = i;
	for (uint64_t i = nc; i > 1; i--) {
		uint64_t j = next_rand() % i, t = order[i - 1];
		order[i - 1] = order[j];
		order[j] = t;
	}
	size_t total = 0;
	for (uint64_t i = 0; i < nc; i++) {
		uint32_t nr = 0;
		CHECK(tokstream_chunk_info(r, order[i], &nr, NULL, &err) == 0, "%s", err.msg);
		CHECK(tokstream_seek_chunk(r, order[i], &err) == 0, "seek %" PRIu64 ": %s", order[i], err.msg);
		struct tokstream_record rec;
		int rc;
		uint32_t count = 0;
		while ((rc = tokstream_next(r, &rec, &err)) == 1) {
			count++;
			CHECK(rec.chunk == order[i], "record from chunk %" PRIu64 " in chunk %" PRIu64, rec.chunk,
			      order[i]);
			if (rec.index >= rs.n || seen[rec.index]) {
				CHECK(0, "record index %" PRIu64 " out of range or seen twice", rec.index);
				break;
			}
			seen[rec.index] = 1;
			CHECK(rec_eq(&rs.v[rec.index], &rec), "record %" PRIu64 " differs", rec.index);
			total++;
		}
		CHECK(rc == 0, "next: %s", err.msg);
		CHECK(count == nr, "chunk %" PRIu64 ": %u records, the table says %u", order[i], count, nr);
	}
	CHECK(total == rs.n, "%zu of %zu records visited", total, rs.n);
	CHECK(tokstream_seek_chunk(r, nc, &err) == -1 && contains(err.msg, "no chunk"), "seek past the end: %s",
	      err.msg);
	tokstream_close(r);
	free(order);
	free(seen);
	recs_free(&rs);
}

/* Feeds the file at path to a pipe from a child process; returns the read end. */
static int pipe_from_file(const char *path, pid_t *pid)
{
	int fds[2];
	if (pipe(fds) != 0)
		return -1;
	*pid = fork();
	if (*pid == 0) {
		close(fds[0]);
		size_t n;
		unsigned char *b = slurp(path, &n);
		size_t off = 0;
		while (b && off < n) {
			ssize_t k = write(fds[1], b + off, n - off > 777 ? 777 : n - off); /* odd pieces */
			if (k <= 0)
				break;
			off += (size_t)k;
		}
		_exit(0);
	}
	close(fds[1]);
	return fds[0];
}

static void test_read_from_pipe(void)
{
	struct recs rs = {0}, got = {0}, got2 = {0};
	struct err err = {0};
	const char *p = path_of("pipe.tok.zst");
	random_recs(&rs, 500, 32000, 3000);
	CHECK(write_recs(p, &rs, 32000, 1024, &err) == 0, "write: %s", err.msg);

	pid_t pid;
	int fd = pipe_from_file(p, &pid);
	FILE *f = fdopen(fd, "rb");
	struct tokstream_reader *r = tokstream_open_file(f, "pipe", 0, &err);
	CHECK(r, "open: %s", err.msg);
	if (r) {
		CHECK(!tokstream_info(r)->seekable, "a pipe is not seekable");
		CHECK(tokstream_info(r)->n_chunks == TOKSTREAM_UNKNOWN, "chunks unknown before the end");
		CHECK(tokstream_info(r)->n_records == rs.n, "header counts (patched) known");
		CHECK(tokstream_seek_chunk(r, 0, &err) == -1 && contains(err.msg, "not a seekable"), "seek: %s",
		      err.msg);
		CHECK(read_reader(r, &got, &err) == 0, "read: %s", err.msg);
		CHECK(recs_same(&rs, &got), "records differ");
		CHECK(tokstream_info(r)->n_chunks != TOKSTREAM_UNKNOWN, "chunks known at the end");
		tokstream_close(r);
	}
	fclose(f);
	waitpid(pid, NULL, 0);

	/* "-": standard input */
	fd = pipe_from_file(p, &pid);
	int saved = dup(0);
	dup2(fd, 0);
	close(fd);
	clearerr(stdin);
	r = tokstream_open("-", &err);
	CHECK(r, "open -: %s", err.msg);
	if (r) {
		CHECK(read_reader(r, &got2, &err) == 0, "read -: %s", err.msg);
		CHECK(recs_same(&rs, &got2), "records differ on standard input");
		tokstream_close(r);
	}
	dup2(saved, 0);
	close(saved);
	clearerr(stdin);
	waitpid(pid, NULL, 0);
	recs_free(&rs);
	recs_free(&got);
	recs_free(&got2);
}

static void test_write_to_pipe(void)
{
	struct recs rs = {0}, got = {0}, got2 = {0};
	struct err err = {0};
	const char *p = path_of("piped.tok.zst");
	char cmd[600];
	snprintf(cmd, sizeof cmd, "cat > '%s'", p);
	random_recs(&rs, 300, 1000, 500);
	FILE *f = popen(cmd, "w");
	CHECK(f && write_recs_f(f, &rs, 1000, 512, &err) == 0, "write to a pipe: %s", err.msg);
	if (f)
		CHECK(pclose(f) == 0, "cat failed");
	size_t n;
	unsigned char *b = slurp(p, &n);
	CHECK(b && n > 56 && le64(b + 32) == TOKSTREAM_UNKNOWN, "header counts should stay unknown on a pipe");
	free(b);
	struct tokstream_reader *r = tokstream_open(p, &err);
	CHECK(r, "open: %s", err.msg);
	if (r) {
		CHECK(tokstream_info(r)->n_records == rs.n, "the seek table gives the count");
		CHECK(read_reader(r, &got, &err) == 0, "read: %s", err.msg);
		CHECK(recs_same(&rs, &got), "records differ");
		tokstream_close(r);
	}
	f = fopen(p, "rb");
	r = tokstream_open_file(f, p, TOKSTREAM_STREAM, &err);
	CHECK(r, "open as a stream: %s", err.msg);
	if (r) {
		CHECK(tokstream_info(r)->n_records == TOKSTREAM_UNKNOWN, "unknown until the end");
		CHECK(read_reader(r, &got2, &err) == 0, "read: %s", err.msg);
		CHECK(recs_same(&rs, &got2), "records differ");
		CHECK(tokstream_info(r)->n_records == rs.n, "known at the end");
		tokstream_close(r);
	}
	fclose(f);
	recs_free(&rs);
	recs_free(&got);
	recs_free(&got2);
}

static void test_longest_record(void)
{
	/* a record of TOKSTREAM_MAX_TOKENS (32 MiB) is a chunk of its own, read by both paths */
	struct recs rs = {0}, g1 = {0}, g2 = {0};
	struct err err = {0};
	const char *p = path_of("longest.tok.zst");
	uint32_t n = TOKSTREAM_MAX_TOKENS;
	uint32_t *ids = malloc(4 * (size_t)n);
	int32_t *labels = malloc(4 * (size_t)n);
	for (uint32_t i = 0; i < n; i++) {
		ids[i] = (i * 2654435761u) % 128000;
		labels[i] = i % 3 ? (int32_t)ids[i] : TOKSTREAM_IGNORE;
	}
	uint32_t small[2] = {1, 2};
	int32_t small_labels[2] = {1, 2};
	recs_add(&rs, small, small_labels, 2);
	recs_add(&rs, ids, labels, n);
	recs_add(&rs, small, small_labels, 2);
	free(ids);
	free(labels);
	CHECK(write_recs(p, &rs, 128000, 0, &err) == 0, "write: %s", err.msg);
	CHECK(read_path(p, 0, &g1, &err) == 0 && recs_same(&rs, &g1), "seekable: %s", err.msg);
	CHECK(read_path(p, TOKSTREAM_STREAM, &g2, &err) == 0 && recs_same(&rs, &g2), "stream: %s", err.msg);
	struct tokstream_reader *r = tokstream_open(p, &err);
	CHECK(r && tokstream_info(r)->n_chunks == 3, "3 chunks: %s", r ? "no" : err.msg);
	tokstream_close(r);
	recs_free(&rs);
	recs_free(&g1);
	recs_free(&g2);
}

static void test_write_appending(void)
{
	/* a FILE opened for appending cannot patch its header: counts stay unknown, the file is valid */
	struct recs rs = {0}, got = {0};
	struct err err = {0};
	const char *p = path_of("append.tok.zst");
	random_recs(&rs, 50, 100, 64);
	FILE *f = fopen(p, "ab");
	CHECK(f && write_recs_f(f, &rs, 100, 256, &err) == 0, "write: %s", err.msg);
	if (f)
		fclose(f);
	size_t n;
	unsigned char *b = slurp(p, &n);
	CHECK(b && n > 56 && le64(b + 32) == TOKSTREAM_UNKNOWN, "header counts should stay unknown");
	free(b);
	CHECK(read_path(p, 0, &got, &err) == 0 && recs_same(&rs, &got), "read: %s", err.msg);
	recs_free(&rs);
	recs_free(&got);
}

static void test_empty_stream(void)
{
	struct recs rs = {0}, got = {0};
	struct err err = {0};
	const char *p = path_of("empty.tok.zst");
	CHECK(write_recs(p, &rs, 10, 0, &err) == 0, "write: %s", err.msg);
	struct tokstream_reader *r = tokstream_open(p, &err);
	CHECK(r, "open: %s", err.msg);
	if (r) {
		CHECK(tokstream_info(r)->n_records == 0 && tokstream_info(r)->n_chunks == 0, "counts");
		CHECK(read_reader(r, &got, &err) == 0 && got.n == 0, "read: %s", err.msg);
		tokstream_close(r);
	}
	CHECK(read_path(p, TOKSTREAM_STREAM, &got, &err) == 0 && got.n == 0, "stream read: %s", err.msg);
	recs_free(&got);
}

static void test_zstd_cli(void)
{
	struct recs rs = {0};
	struct err err = {0};
	const char *p = path_of("cli.tok.zst"), *out = path_of("cli.bin");
	random_recs(&rs, 400, 70000, 800);
	CHECK(write_recs(p, &rs, 70000, 1500, &err) == 0, "write: %s", err.msg);
	char cmd[1200];
	snprintf(cmd, sizeof cmd, "zstd -q -t '%s' && zstd -q -d -c '%s' > '%s'", p, p, out);
	CHECK(system(cmd) == 0, "%s failed", cmd);
	size_t n;
	unsigned char *b = slurp(out, &n);
	size_t want = 0;
	for (size_t i = 0; i < rs.n; i++)
		want += 4 + 8 * (size_t)rs.v[i].n;
	CHECK(b && n == want, "zstd -d gave %zu bytes, want %zu", n, want);
	if (b && n == want) {
		size_t off = 0;
		int same = 1;
		for (size_t i = 0; i < rs.n && same; i++) {
			const struct rec *r = &rs.v[i];
			same = le32(b + off) == r->n;
			for (uint32_t j = 0; j < r->n && same; j++)
				same = le32(b + off + 4 + 4 * j) == r->ids[j] &&
				       (int32_t)le32(b + off + 4 + 4 * ((size_t)r->n + j)) == r->labels[j];
			off += 4 + 8 * (size_t)r->n;
			CHECK(same, "record %zu differs in zstd -d output", i);
		}
	}
	free(b);
	/* an empty stream is a valid zstd file too */
	struct recs none = {0};
	const char *pe = path_of("cli-empty.tok.zst");
	CHECK(write_recs(pe, &none, 5, 0, &err) == 0, "write: %s", err.msg);
	snprintf(cmd, sizeof cmd, "zstd -q -t '%s' && test \"$(zstd -q -d -c '%s' | wc -c)\" -eq 0", pe, pe);
	CHECK(system(cmd) == 0, "%s failed", cmd);
	recs_free(&rs);
}

static void test_writer_rejects(void)
{
	struct err err = {0};
	const char *p = path_of("rej.tok.zst");
	FILE *f = fopen(p, "wb");
	CHECK(!tokstream_writer_new(f, 0, 0, &err) && contains(err.msg, "vocabulary size"), "vocab 0: %s", err.msg);
	struct tokstream_writer *w = tokstream_writer_new(f, 100, 7, &err);
	CHECK(w, "new: %s", err.msg);
	if (!w) {
		fclose(f);
		return;
	}
	CHECK(tokstream_writer_tune(w, 0, 10, &err) == -1 && contains(err.msg, "chunk size"), "tiny chunk: %s",
	      err.msg);
	CHECK(tokstream_writer_tune(w, 99, 0, &err) == -1 && contains(err.msg, "level"), "level: %s", err.msg);
	uint32_t ids[3] = {1, 2, 99};
	int32_t labels[3] = {1, -100, 99};
	CHECK(tokstream_write(w, ids, labels, 0, &err) == -1 && contains(err.msg, "record 1: empty record"),
	      "n=0: %s", err.msg);
	CHECK(tokstream_write(w, ids, labels, TOKSTREAM_MAX_TOKENS + 1, &err) == -1 &&
		      contains(err.msg, "more than a record may hold"),
	      "n too large: %s", err.msg);
	uint32_t bad_ids[2] = {5, 100};
	int32_t bad_id_labels[2] = {5, 100};
	CHECK(tokstream_write(w, bad_ids, bad_id_labels, 2, &err) == -1 &&
		      contains(err.msg, "position 1: id 100 >= vocabulary size 100"),
	      "id >= vocab: %s", err.msg);
	int32_t bad_labels[3] = {1, 3, 99};
	CHECK(tokstream_write(w, ids, bad_labels, 3, &err) == -1 &&
		      contains(err.msg, "position 1: label 3 is neither the id 2 nor -100"),
	      "bad label: %s", err.msg);
	/* still usable after refusals */
	CHECK(tokstream_write(w, ids, labels, 3, &err) == 0, "write: %s", err.msg);
	CHECK(tokstream_writer_tune(w, 0, 0, &err) == -1, "tune after the first record");
	uint32_t ids2[1] = {4};
	int32_t labels2[1] = {-100};
	CHECK(tokstream_write(w, ids2, labels2, 1, &err) == 0, "write: %s", err.msg);
	CHECK(tokstream_writer_finish(w, &err) == 0, "finish: %s", err.msg);
	fclose(f);
	struct recs got = {0};
	CHECK(read_path(p, 0, &got, &err) == 0 && got.n == 2 && got.v[0].n == 3 && got.v[1].n == 1 &&
		      got.v[1].labels[0] == -100,
	      "read back: %s", err.msg);
	recs_free(&got);
	tokstream_writer_free(NULL);
}

/* A small valid file of a few chunks, and its bytes. */
static unsigned char *small_file(const char *name, size_t *n, struct recs *rs)
{
	struct err err = {0};
	random_recs(rs, 7, 300, 40);
	if (write_recs(path_of(name), rs, 300, 64, &err)) {
		printf("    small_file: %s\n", err.msg);
		return NULL;
	}
	return slurp(path_of(name), n);
}

/* Both paths on the bytes b[0..n): 0 when both read it whole, else -1 (messages in e1, e2). */
static int read_both(const char *path, const void *b, size_t n, struct recs *g1, struct recs *g2,
		     struct err *e1, struct err *e2)
{
	spit(path, b, n);
	int r1 = read_path(path, 0, g1, e1);
	int r2 = read_path(path, TOKSTREAM_STREAM, g2, e2);
	return r1 == 0 && r2 == 0 ? 0 : r1 == 0 || r2 == 0 ? 1 : -1;
}

static void test_truncated_everywhere(void)
{
	struct recs rs = {0};
	size_t n = 0;
	unsigned char *b = small_file("trunc-src.tok.zst", &n, &rs);
	CHECK(b && n > 100, "small file");
	const char *p = path_of("trunc.tok.zst");
	for (size_t cut = 0; b && cut < n; cut++) {
		struct recs g1 = {0}, g2 = {0};
		struct err e1 = {0}, e2 = {0};
		int rc = read_both(p, b, cut, &g1, &g2, &e1, &e2);
		CHECK(rc == -1, "cut at %zu of %zu: seekable %s, stream %s", cut, n, e1.msg[0] ? e1.msg : "read it",
		      e2.msg[0] ? e2.msg : "read it");
		CHECK(!strncmp(e1.msg, p, strlen(p)) && !strncmp(e2.msg, p, strlen(p)),
		      "messages name the file: '%s' '%s'", e1.msg, e2.msg);
		if (cut == 0 || cut == n - 1)
			printf("# cut %zu: %s | %s\n", cut, e1.msg, e2.msg);
		recs_free(&g1);
		recs_free(&g2);
	}
	free(b);
	recs_free(&rs);
}

static void test_corrupt_every_byte(void)
{
	struct recs rs = {0};
	size_t n = 0;
	unsigned char *b = small_file("corr-src.tok.zst", &n, &rs);
	CHECK(b, "small file");
	const char *p = path_of("corr.tok.zst");
	unsigned char *c = malloc(n ? n : 1);
	size_t harmless = 0;
	for (size_t i = 0; b && i < n; i++) {
		/* every byte inverted: always an error */
		memcpy(c, b, n);
		c[i] ^= 0xff;
		struct recs g1 = {0}, g2 = {0};
		struct err e1 = {0}, e2 = {0};
		int rc = read_both(p, c, n, &g1, &g2, &e1, &e2);
		CHECK(rc == -1, "byte %zu inverted: not an error on both paths (%s | %s)", i, e1.msg, e2.msg);
		recs_free(&g1);
		recs_free(&g2);
		/* every single bit: an error, or (a bit zstd ignores) exactly the original records */
		for (int bit = 0; bit < 8; bit++) {
			memcpy(c, b, n);
			c[i] ^= (unsigned char)(1u << bit);
			struct err f1 = {0}, f2 = {0};
			rc = read_both(p, c, n, &g1, &g2, &f1, &f2);
			if (rc == 0) {
				harmless++; if (getenv("TS_DEBUG")) printf("# harmless %zu bit %d\n", i, bit);
				CHECK(recs_same(&rs, &g1) && recs_same(&rs, &g2),
				      "byte %zu bit %d flipped: read without error but records differ", i, bit);
			} else {
				CHECK(rc == -1, "byte %zu bit %d: one path read it, the other did not: %s | %s", i, bit,
				      f1.msg, f2.msg);
			}
			recs_free(&g1);
			recs_free(&g2);
		}
	}
	printf("# %zu bytes, %zu of %zu bit flips harmless (ignored by zstd), the rest errors\n", n, harmless,
	       8 * n);
	free(c);
	free(b);
	recs_free(&rs);
}

static void expect_open_error(const char *name, const void *b, size_t n, const char *want)
{
	const char *p = path_of(name);
	spit(p, b, n);
	struct recs g1 = {0}, g2 = {0};
	struct err e1 = {0}, e2 = {0};
	int rc = read_both(p, b, n, &g1, &g2, &e1, &e2);
	CHECK(rc == -1, "%s: read without error", name);
	CHECK(contains(e1.msg, want) && contains(e2.msg, want) && contains(e1.msg, p),
	      "%s: want '%s', got '%s' | '%s'", name, want, e1.msg, e2.msg);
	recs_free(&g1);
	recs_free(&g2);
}

static void test_foreign_files(void)
{
	const char text[] = "{\"text\": \"hello\"}\nnot tokens at all\n";
	unsigned char z[256];
	size_t zn = ZSTD_compress(z, sizeof z, text, sizeof text - 1, 3);
	CHECK(!ZSTD_isError(zn), "zstd");
	expect_open_error("text.zst", z, zn, "a zstd stream, but not a token stream");
	unsigned char rnd[1000];
	for (size_t i = 0; i < sizeof rnd; i++)
		rnd[i] = (unsigned char)next_rand();
	rnd[0] = 'x'; /* not by chance a zstd magic */
	expect_open_error("random.bin", rnd, sizeof rnd, "not a token stream");
	expect_open_error("empty.bin", "", 0, "empty file, not a token stream");
	expect_open_error("short.bin", "ab", 2, "not a token stream");
	/* a skippable frame that is someone else's */
	unsigned char sk[64] = {0};
	put32(sk, 0x184D2A5A);
	put32(sk + 4, 56);
	memcpy(sk + 8, "SOMEONEE", 8);
	expect_open_error("skip.bin", sk, sizeof sk, "without the lorapipe magic");
	struct err err = {0};
	CHECK(!tokstream_open(path_of("no-such-file"), &err) && contains(err.msg, "No such file"), "missing: %s",
	      err.msg);
}

static void test_bad_header_and_table(void)
{
	struct recs rs = {0};
	size_t n = 0;
	unsigned char *b = small_file("hdr-src.tok.zst", &n, &rs);
	CHECK(b, "small file");
	if (!b)
		return;
	unsigned char *c = malloc(n + 64);
	/* a version from the future */
	memcpy(c, b, n);
	put32(c + 16, 2);
	put32(c + 52, crc32(c + 8, 44));
	expect_open_error("future.tok.zst", c, n, "format version 2 is newer");
	/* a vocabulary too small for the ids (checksum fixed, so only the ids tell) */
	memcpy(c, b, n);
	put32(c + 20, 3);
	put32(c + 52, crc32(c + 8, 44));
	expect_open_error("vocab.tok.zst", c, n, ">= vocabulary size 3");
	/* header counts that disagree with the table */
	memcpy(c, b, n);
	put64(c + 32, le64(b + 32) + 1);
	put32(c + 52, crc32(c + 8, 44));
	expect_open_error("counts.tok.zst", c, n, "the header says");
	/* a byte between the last chunk and the seek table */
	uint32_t nchunks = le32(b + n - 16);
	size_t tsize = 8 + 12 * (size_t)nchunks + 32;
	memcpy(c, b, n - tsize);
	c[n - tsize] = 0;
	memcpy(c + n - tsize + 1, b + n - tsize, tsize);
	{
		const char *p = path_of("gap.tok.zst");
		struct recs g1 = {0}, g2 = {0};
		struct err e1 = {0}, e2 = {0};
		CHECK(read_both(p, c, n + 1, &g1, &g2, &e1, &e2) == -1, "a gap before the table");
		CHECK(contains(e1.msg, "seek table inconsistent with the file size"), "seekable: %s", e1.msg);
		CHECK(contains(e2.msg, "not a zstd frame"), "stream: %s", e2.msg);
		recs_free(&g1);
		recs_free(&g2);
	}
	/* bytes after the table */
	memcpy(c, b, n);
	memcpy(c + n, "tail", 4);
	{
		const char *p = path_of("tail.tok.zst");
		struct recs g1 = {0}, g2 = {0};
		struct err e1 = {0}, e2 = {0};
		CHECK(read_both(p, c, n + 4, &g1, &g2, &e1, &e2) == -1, "data after the table");
		CHECK(contains(e1.msg, "no seek table at the end"), "seekable: %s", e1.msg);
		CHECK(contains(e2.msg, "data after the seek table"), "stream: %s", e2.msg);
		recs_free(&g1);
		recs_free(&g2);
	}
	/* two streams concatenated */
	unsigned char *cc = malloc(2 * n);
	memcpy(cc, b, n);
	memcpy(cc + n, b, n);
	{
		const char *p = path_of("cat.tok.zst");
		struct recs g1 = {0}, g2 = {0};
		struct err e1 = {0}, e2 = {0};
		CHECK(read_both(p, cc, 2 * n, &g1, &g2, &e1, &e2) == -1, "concatenated");
		CHECK(contains(e1.msg, "inconsistent"), "seekable: %s", e1.msg);
		CHECK(contains(e2.msg, "data after the seek table"), "stream: %s", e2.msg);
		recs_free(&g1);
		recs_free(&g2);
	}
	/* a table claiming more chunks than fit */
	memcpy(c, b, n);
	put32(c + n - 16, 1000000);
	{
		const char *p = path_of("huge-table.tok.zst");
		struct recs g1 = {0}, g2 = {0};
		struct err e1 = {0}, e2 = {0};
		CHECK(read_both(p, c, n, &g1, &g2, &e1, &e2) == -1, "a table too large for the file");
		CHECK(contains(e1.msg, "do not fit") && contains(e2.msg, "corrupt seek table"), "%s | %s", e1.msg,
		      e2.msg);
		recs_free(&g1);
		recs_free(&g2);
	}
	free(cc);
	free(c);
	free(b);
	recs_free(&rs);
}

/* ---- hand-made files: raw chunk contents assembled into a token stream ---- */

struct craft {
	unsigned char buf[8192];
	size_t len;
	unsigned char table[1024];
	size_t tlen;
	uint64_t recs, toks;
	uint32_t chunks;
};

static void craft_start(struct craft *cf, uint32_t vocab, uint32_t chunk_bytes)
{
	memset(cf, 0, sizeof *cf);
	put32(cf->buf, 0x184D2A5A);
	put32(cf->buf + 4, 48);
	memcpy(cf->buf + 8, "LPTOKENS", 8);
	put32(cf->buf + 16, 1);
	put32(cf->buf + 20, vocab);
	put64(cf->buf + 24, 0);
	put64(cf->buf + 32, UINT64_MAX);
	put64(cf->buf + 40, UINT64_MAX);
	put32(cf->buf + 48, chunk_bytes);
	put32(cf->buf + 52, crc32(cf->buf + 8, 44));
	cf->len = 56;
}

/* One chunk from u32 words; nrec is what the table claims. content_size 0: a frame without it. */
static void craft_chunk(struct craft *cf, const uint32_t *words, size_t nw, uint32_t nrec, int content_size)
{
	unsigned char raw[2048];
	for (size_t i = 0; i < nw; i++)
		put32(raw + 4 * i, words[i]);
	ZSTD_CCtx *cc = ZSTD_createCCtx();
	ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
	ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, content_size);
	size_t cs;
	if (content_size) {
		cs = ZSTD_compress2(cc, cf->buf + cf->len, sizeof cf->buf - cf->len, raw, 4 * nw);
	} else {
		ZSTD_outBuffer out = {cf->buf + cf->len, sizeof cf->buf - cf->len, 0};
		ZSTD_inBuffer in = {raw, 4 * nw, 0};
		ZSTD_compressStream2(cc, &out, &in, ZSTD_e_end);
		cs = out.pos;
	}
	ZSTD_freeCCtx(cc);
	cf->len += cs;
	put32(cf->table + cf->tlen, (uint32_t)cs);
	put32(cf->table + cf->tlen + 4, (uint32_t)(4 * nw));
	put32(cf->table + cf->tlen + 8, nrec);
	cf->tlen += 12;
	cf->recs += nrec;
	cf->toks += (4 * nw - 4 * (uint64_t)nrec) / 8;
	cf->chunks++;
}

static size_t craft_end(struct craft *cf)
{
	unsigned char *p = cf->buf + cf->len;
	put32(p, 0x184D2A5B);
	put32(p + 4, (uint32_t)(cf->tlen + 32));
	memcpy(p + 8, cf->table, cf->tlen);
	unsigned char *f = p + 8 + cf->tlen;
	put64(f, cf->recs);
	put64(f + 8, cf->toks);
	put32(f + 16, cf->chunks);
	unsigned char tmp[1100];
	memcpy(tmp, cf->table, cf->tlen);
	memcpy(tmp + cf->tlen, f, 20);
	put32(f + 20, crc32(tmp, cf->tlen + 20));
	memcpy(f + 24, "LPTOKEND", 8);
	cf->len += 8 + cf->tlen + 32;
	return cf->len;
}

static void test_crafted_records(void)
{
	struct craft cf;
	/* a valid one first, so the builder is known good */
	uint32_t ok[] = {2, 5, 6, 5, (uint32_t)-100, 1, 7, 7};
	craft_start(&cf, 10, 64);
	craft_chunk(&cf, ok, 8, 2, 1);
	size_t n = craft_end(&cf);
	{
		const char *p = path_of("craft-ok.tok.zst");
		struct recs g1 = {0}, g2 = {0};
		struct err e1 = {0}, e2 = {0};
		CHECK(read_both(p, cf.buf, n, &g1, &g2, &e1, &e2) == 0 && g1.n == 2 && g2.n == 2, "valid: %s | %s",
		      e1.msg, e2.msg);
		recs_free(&g1);
		recs_free(&g2);
	}
	/* the second record of the second chunk has a bad label */
	craft_start(&cf, 10, 64);
	craft_chunk(&cf, ok, 8, 2, 1);
	uint32_t two[] = {1, 3, 3, 2, 5, 6, 7, (uint32_t)-100};
	craft_chunk(&cf, two, 8, 2, 1);
	expect_open_error("craft-label.tok.zst", cf.buf, craft_end(&cf),
			  "record 4: position 0: label 7 is neither the id 5 nor -100");
	/* n = 0 */
	uint32_t zero[] = {0, 1, 5, 5, 5}; /* the table's arithmetic works out: 1 record of 2 tokens */
	craft_start(&cf, 10, 64);
	craft_chunk(&cf, zero, 5, 1, 1);
	expect_open_error("craft-zero.tok.zst", cf.buf, craft_end(&cf), "record 1: empty record");
	/* n larger than its chunk */
	uint32_t big[] = {1000, 1, 1};
	craft_start(&cf, 10, 64);
	craft_chunk(&cf, big, 3, 1, 1);
	{
		const char *p = path_of("craft-big.tok.zst");
		n = craft_end(&cf);
		struct recs g1 = {0}, g2 = {0};
		struct err e1 = {0}, e2 = {0};
		CHECK(read_both(p, cf.buf, n, &g1, &g2, &e1, &e2) == -1, "n too large");
		CHECK(contains(e2.msg, "record 1: length 1000 does not fit in its chunk"), "stream: %s", e2.msg);
		CHECK(contains(e1.msg, p), "seekable: %s", e1.msg);
		recs_free(&g1);
		recs_free(&g2);
	}
	uint32_t hugen[] = {0xffffffffu, 1, 1};
	craft_start(&cf, 10, 64);
	craft_chunk(&cf, hugen, 3, 1, 1);
	expect_open_error("craft-huge-n.tok.zst", cf.buf, craft_end(&cf), "does not fit");
	/* an id out of the vocabulary */
	uint32_t oov[] = {1, 10, 10};
	craft_start(&cf, 10, 64);
	craft_chunk(&cf, oov, 3, 1, 1);
	expect_open_error("craft-oov.tok.zst", cf.buf, craft_end(&cf), "record 1: position 0: id 10 >= vocabulary size 10");
	/* two records in a chunk larger than chunk_bytes */
	uint32_t fat[40] = {9, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 10, 1, 1, 1, 1, 1, 1, 1, 1,
			    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
	craft_start(&cf, 10, 64);
	craft_chunk(&cf, fat, 40, 2, 1);
	{
		const char *p = path_of("craft-fat.tok.zst");
		n = craft_end(&cf);
		struct recs g1 = {0}, g2 = {0};
		struct err e1 = {0}, e2 = {0};
		CHECK(read_both(p, cf.buf, n, &g1, &g2, &e1, &e2) == -1, "two records in an oversized chunk");
		CHECK(contains(e1.msg, "corrupt seek table: chunk 0") && contains(e2.msg, "more than one record"),
		      "%s | %s", e1.msg, e2.msg);
		recs_free(&g1);
		recs_free(&g2);
	}
	/* a frame without its content size */
	craft_start(&cf, 10, 64);
	craft_chunk(&cf, ok, 8, 2, 0);
	{
		const char *p = path_of("craft-nosize.tok.zst");
		n = craft_end(&cf);
		struct recs g1 = {0}, g2 = {0};
		struct err e1 = {0}, e2 = {0};
		CHECK(read_both(p, cf.buf, n, &g1, &g2, &e1, &e2) == -1, "no content size");
		CHECK(contains(e1.msg, "without its content size") && contains(e2.msg, "without its content size"),
		      "%s | %s", e1.msg, e2.msg);
		recs_free(&g1);
		recs_free(&g2);
	}
	/* a table whose record count for a chunk is wrong (crc fixed) */
	uint32_t three[] = {1, 1, 1, 1, 2, 2, 1, 3, 3}; /* 3 records, or 1 of 4 tokens by the table */
	craft_start(&cf, 10, 64);
	craft_chunk(&cf, three, 9, 1, 1);
	{
		const char *p = path_of("craft-nrec.tok.zst");
		n = craft_end(&cf);
		struct recs g1 = {0}, g2 = {0};
		struct err e1 = {0}, e2 = {0};
		CHECK(read_both(p, cf.buf, n, &g1, &g2, &e1, &e2) == -1, "wrong nrec");
		CHECK(contains(e1.msg, "3 records, the seek table says 1") && contains(e2.msg, "does not match"),
		      "%s | %s", e1.msg, e2.msg);
		recs_free(&g1);
		recs_free(&g2);
	}
}

static void cleanup_dir(void)
{
	char cmd[400];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
}

int main(void)
{
	const char *s = getenv("TOKSTREAM_SEED");
	uint64_t seed = s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	if (!seed)
		seed = 1;
	rng = seed;
	printf("# seed %" PRIu64 " (TOKSTREAM_SEED=%" PRIu64 " repeats this run)\n", seed, seed);
	const char *tmp = getenv("TMPDIR");
	snprintf(dir, sizeof dir, "%s/test_tokstream.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	RUN(test_roundtrip_many_chunks);
	RUN(test_default_chunk_size);
	RUN(test_seek_chunks_shuffled);
	RUN(test_read_from_pipe);
	RUN(test_write_to_pipe);
	RUN(test_longest_record);
	RUN(test_write_appending);
	RUN(test_empty_stream);
	if (system("command -v zstd >/dev/null 2>&1") == 0)
		RUN(test_zstd_cli);
	else
		SKIP(test_zstd_cli, "the zstd command is not installed");
	RUN(test_writer_rejects);
	RUN(test_truncated_everywhere);
	RUN(test_corrupt_every_byte);
	RUN(test_foreign_files);
	RUN(test_bad_header_and_table);
	RUN(test_crafted_records);
	cleanup_dir();
	return check_done();
}
