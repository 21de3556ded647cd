/* tokstream: token streams (*.tok.zst). The byte layout is at the top of tokstream.h.
 *
 * Writer: records are appended to an in-memory chunk (at most chunk_bytes, or one
 * larger record alone); a full chunk is compressed with ZSTD_compress2 into one
 * frame (content size and checksum in its header) and written; its seek-table
 * entry is kept (12 bytes a chunk) and written at the end.
 *
 * Reader, two paths sharing the record checks:
 *  - seekable: header from the start, footer and seek table from the end, checked
 *    against each other and the file size; a chunk is read whole (csize bytes from
 *    the table) and decompressed in one call into dsize bytes.
 *  - stream: the input goes through a small buffer; each frame's content size is
 *    read from its zstd header (and bounded) before ZSTD_decompressStream fills a
 *    buffer of exactly that size; the seek table at the end is checked against
 *    what was read (counts, and a CRC of the entries the reader saw).
 * A chunk is checked whole when it is loaded (every record, id and label), so
 * tokstream_next only walks it; records point into the chunk buffer.
 */
#include "tokstream.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <zstd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define HOST_LE 0
#else
#define HOST_LE 1
#endif

#define HEADER_MAGIC 0x184D2A5Au /* skippable frame, variant 0xA */
#define TABLE_MAGIC 0x184D2A5Bu  /* skippable frame, variant 0xB */
#define SKIPPABLE_MASK 0xFFFFFFF0u
#define SKIPPABLE_START 0x184D2A50u
#define MAGIC "LPTOKENS"
#define END_MAGIC "LPTOKEND"

enum {
	HEADER_SIZE = 56,
	HEADER_PAYLOAD = 48,
	ENTRY_SIZE = 12,
	FOOTER_SIZE = 32,
	TABLE_MIN = 8 + FOOTER_SIZE, /* a seek table of no chunks */
	FRAME_HEADER_MAX = 18,       /* ZSTD_FRAMEHEADERSIZE_MAX */
	DEFAULT_LEVEL = 3,
	WINDOW_LOG_MAX = 26, /* > log2(TOKSTREAM_CHUNK_MAX): bounds a stream reader's window */
	RECORD_MIN = 12,     /* n and one id and one label */
};

/* ---- little-endian bytes, CRC-32 ---- */

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
	p[2] = (unsigned char)(v >> 16);
	p[3] = (unsigned char)(v >> 24);
}

static void put64(unsigned char *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

/* CRC-32 as zlib computes it; crc32_update(0, ...) starts, and calls chain. Bitwise:
 * it only ever sees headers and seek tables. */
static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n)
{
	crc = ~crc;
	while (n--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
	}
	return ~crc;
}

/* Grows *buf to hold need bytes. Returns 0 or -1 (err set). */
static int reserve(unsigned char **buf, size_t *cap, size_t need, struct err *err)
{
	if (need <= *cap)
		return 0;
	unsigned char *p = realloc(*buf, need);
	if (!p)
		return err_sys(err, "out of memory (%zu bytes):", need);
	*buf = p;
	*cap = need;
	return 0;
}

static void header_build(unsigned char *h, uint32_t vocab_size, uint64_t fp, uint64_t n_records,
			 uint64_t n_tokens, uint32_t chunk_bytes)
{
	put32(h, HEADER_MAGIC);
	put32(h + 4, HEADER_PAYLOAD);
	memcpy(h + 8, MAGIC, 8);
	put32(h + 16, TOKSTREAM_VERSION);
	put32(h + 20, vocab_size);
	put64(h + 24, fp);
	put64(h + 32, n_records);
	put64(h + 40, n_tokens);
	put32(h + 48, chunk_bytes);
	put32(h + 52, crc32_update(0, h + 8, 44));
}

/* ================================ writer ================================ */

struct tokstream_writer {
	FILE *f;
	int seekable;     /* the header can be patched at start */
	off_t start;      /* where the header is */
	int started;      /* the header is written */
	int failed;       /* an I/O or zstd error: nothing more can be written */
	int level;
	uint32_t chunk_bytes;
	uint32_t vocab_size;
	uint64_t fp;
	ZSTD_CCtx *cctx;
	unsigned char *buf; /* the open chunk: len bytes, nrec records */
	size_t len, cap;
	uint32_t nrec;
	unsigned char *cbuf; /* its compressed frame */
	size_t ccap;
	unsigned char *table; /* seek-table entries so far */
	size_t tlen, tcap;
	uint64_t n_records, n_tokens, n_chunks;
};

/* Whether f can be rewound to patch the header: a regular file (or a memory
 * stream) not opened for appending. */
static int writer_can_seek(FILE *f, off_t *start)
{
	int fd = fileno(f);
	if (fd >= 0) {
		struct stat st;
		if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
			return 0;
		int fl = fcntl(fd, F_GETFL);
		if (fl == -1 || (fl & O_APPEND))
			return 0;
	}
	int saved = errno;
	off_t pos = ftello(f);
	int ok = pos >= 0 && fseeko(f, pos, SEEK_SET) == 0;
	errno = saved;
	*start = pos;
	return ok;
}

struct tokstream_writer *tokstream_writer_new(FILE *f, uint32_t vocab_size, uint64_t tokenizer_fp,
					      struct err *err)
{
	if (!f) {
		err_set(err, "token stream writer: no output file");
		return NULL;
	}
	if (vocab_size == 0 || vocab_size > INT32_MAX) {
		err_set(err, "token stream writer: vocabulary size %" PRIu32 " out of range (1..%d)", vocab_size,
			INT32_MAX);
		return NULL;
	}
	struct tokstream_writer *w = calloc(1, sizeof *w);
	if (!w || !(w->cctx = ZSTD_createCCtx())) {
		free(w);
		err_sys(err, "token stream writer: out of memory");
		return NULL;
	}
	w->f = f;
	w->vocab_size = vocab_size;
	w->fp = tokenizer_fp;
	w->level = DEFAULT_LEVEL;
	w->chunk_bytes = TOKSTREAM_CHUNK_BYTES;
	w->seekable = writer_can_seek(f, &w->start);
	return w;
}

int tokstream_writer_tune(struct tokstream_writer *w, int level, uint32_t chunk_bytes, struct err *err)
{
	if (w->started)
		return err_set(err, "token stream writer: tune before the first record");
	if (level == 0)
		level = DEFAULT_LEVEL;
	if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel())
		return err_set(err, "token stream writer: zstd level %d out of range (%d..%d)", level,
			       ZSTD_minCLevel(), ZSTD_maxCLevel());
	if (chunk_bytes == 0)
		chunk_bytes = TOKSTREAM_CHUNK_BYTES;
	if (chunk_bytes < TOKSTREAM_CHUNK_MIN || chunk_bytes > TOKSTREAM_CHUNK_MAX)
		return err_set(err, "token stream writer: chunk size %" PRIu32 " out of range (%u..%u)",
			       chunk_bytes, TOKSTREAM_CHUNK_MIN, TOKSTREAM_CHUNK_MAX);
	w->level = level;
	w->chunk_bytes = chunk_bytes;
	return 0;
}

static int writer_put(struct tokstream_writer *w, const void *p, size_t n, struct err *err)
{
	if (n && fwrite(p, 1, n, w->f) != n) {
		w->failed = 1;
		return err_sys(err, "writing the token stream:");
	}
	return 0;
}

static int writer_zstd(struct tokstream_writer *w, size_t rc, struct err *err)
{
	if (!ZSTD_isError(rc))
		return 0;
	w->failed = 1;
	return err_sys(err, "token stream writer: zstd: %s", ZSTD_getErrorName(rc));
}

static int writer_start(struct tokstream_writer *w, struct err *err)
{
	if (writer_zstd(w, ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, w->level), err) ||
	    writer_zstd(w, ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 1), err) ||
	    writer_zstd(w, ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_contentSizeFlag, 1), err))
		return -1;
	unsigned char h[HEADER_SIZE];
	header_build(h, w->vocab_size, w->fp, TOKSTREAM_UNKNOWN, TOKSTREAM_UNKNOWN, w->chunk_bytes);
	if (writer_put(w, h, sizeof h, err))
		return -1;
	w->started = 1;
	return 0;
}

/* Compresses and writes the open chunk, and notes its seek-table entry. */
static int writer_flush_chunk(struct tokstream_writer *w, struct err *err)
{
	if (w->len == 0)
		return 0;
	if (w->n_chunks >= (UINT32_MAX - FOOTER_SIZE) / ENTRY_SIZE) {
		w->failed = 1;
		return err_set(err, "token stream writer: too many chunks for one seek table");
	}
	size_t bound = ZSTD_compressBound(w->len);
	if (reserve(&w->cbuf, &w->ccap, bound, err) ||
	    reserve(&w->table, &w->tcap, w->tlen + ENTRY_SIZE, err)) {
		w->failed = 1;
		return -1;
	}
	size_t csize = ZSTD_compress2(w->cctx, w->cbuf, w->ccap, w->buf, w->len);
	if (writer_zstd(w, csize, err) || writer_put(w, w->cbuf, csize, err))
		return -1;
	unsigned char *e = w->table + w->tlen;
	put32(e, (uint32_t)csize);
	put32(e + 4, (uint32_t)w->len);
	put32(e + 8, w->nrec);
	w->tlen += ENTRY_SIZE;
	w->n_chunks++;
	w->len = 0;
	w->nrec = 0;
	if (w->cap > w->chunk_bytes) { /* it held one large record: give the memory back */
		unsigned char *p = realloc(w->buf, w->chunk_bytes);
		if (p) {
			w->buf = p;
			w->cap = w->chunk_bytes;
		}
	}
	return 0;
}

int tokstream_write(struct tokstream_writer *w, const uint32_t *ids, const int32_t *labels, uint32_t n,
		    struct err *err)
{
	if (w->failed)
		return err_set(err, "token stream writer: an earlier error stopped it");
	uint64_t recno = w->n_records + 1;
	if (n == 0)
		return err_set(err, "record %" PRIu64 ": empty record (n = 0): a token stream holds none", recno);
	if (n > TOKSTREAM_MAX_TOKENS)
		return err_set(err, "record %" PRIu64 ": %" PRIu32 " tokens, more than a record may hold (%u)",
			       recno, n, TOKSTREAM_MAX_TOKENS);
	for (uint32_t i = 0; i < n; i++) {
		if (ids[i] >= w->vocab_size)
			return err_set(err, "record %" PRIu64 ": position %" PRIu32 ": id %" PRIu32
				       " >= vocabulary size %" PRIu32, recno, i, ids[i], w->vocab_size);
		if (labels[i] != TOKSTREAM_IGNORE && (uint32_t)labels[i] != ids[i])
			return err_set(err, "record %" PRIu64 ": position %" PRIu32 ": label %" PRId32
				       " is neither the id %" PRIu32 " nor -100", recno, i, labels[i], ids[i]);
	}
	if (!w->started && writer_start(w, err))
		return -1;
	size_t size = 4 + 8 * (size_t)n;
	if (w->len > 0 && w->len + size > w->chunk_bytes && writer_flush_chunk(w, err))
		return -1;
	size_t want = w->len + size > w->chunk_bytes ? w->len + size : w->chunk_bytes;
	if (reserve(&w->buf, &w->cap, want, err)) {
		w->failed = 1;
		return -1;
	}
	unsigned char *p = w->buf + w->len;
	put32(p, n);
#if HOST_LE
	memcpy(p + 4, ids, 4 * (size_t)n);
	memcpy(p + 4 + 4 * (size_t)n, labels, 4 * (size_t)n);
#else
	for (uint32_t i = 0; i < n; i++) {
		put32(p + 4 + 4 * (size_t)i, ids[i]);
		put32(p + 4 + 4 * ((size_t)n + i), (uint32_t)labels[i]);
	}
#endif
	w->len += size;
	w->nrec++;
	w->n_records++;
	w->n_tokens += n;
	if (w->len >= w->chunk_bytes)
		return writer_flush_chunk(w, err);
	return 0;
}

static int writer_end(struct tokstream_writer *w, struct err *err)
{
	if (w->failed)
		return err_set(err, "token stream writer: an earlier error stopped it");
	if (!w->started && writer_start(w, err))
		return -1;
	if (writer_flush_chunk(w, err))
		return -1;
	unsigned char head[8], foot[FOOTER_SIZE];
	put32(head, TABLE_MAGIC);
	put32(head + 4, (uint32_t)(w->tlen + FOOTER_SIZE));
	put64(foot, w->n_records);
	put64(foot + 8, w->n_tokens);
	put32(foot + 16, (uint32_t)w->n_chunks);
	put32(foot + 20, crc32_update(crc32_update(0, w->table, w->tlen), foot, 20));
	memcpy(foot + 24, END_MAGIC, 8);
	if (writer_put(w, head, sizeof head, err) || writer_put(w, w->table, w->tlen, err) ||
	    writer_put(w, foot, sizeof foot, err))
		return -1;
	if (fflush(w->f) != 0) {
		w->failed = 1;
		return err_sys(err, "writing the token stream:");
	}
	if (w->seekable) {
		unsigned char h[HEADER_SIZE];
		header_build(h, w->vocab_size, w->fp, w->n_records, w->n_tokens, w->chunk_bytes);
		if (fseeko(w->f, w->start + 32, SEEK_SET) != 0)
			return err_sys(err, "token stream: rewinding to the header:");
		if (writer_put(w, h + 32, HEADER_SIZE - 32, err))
			return -1;
		if (fseeko(w->f, 0, SEEK_END) != 0)
			return err_sys(err, "token stream: seeking to the end:");
		if (fflush(w->f) != 0)
			return err_sys(err, "writing the token stream:");
	}
	if (ferror(w->f))
		return err_sys(err, "writing the token stream: write error");
	return 0;
}

int tokstream_writer_finish(struct tokstream_writer *w, struct err *err)
{
	int rc = writer_end(w, err);
	tokstream_writer_free(w);
	return rc;
}

void tokstream_writer_free(struct tokstream_writer *w)
{
	if (!w)
		return;
	ZSTD_freeCCtx(w->cctx);
	free(w->buf);
	free(w->cbuf);
	free(w->table);
	free(w);
}

/* ================================ reader ================================ */

struct chunk_ent {
	uint64_t off;   /* byte offset of its frame in the file */
	uint64_t first; /* index of its first record */
	uint32_t csize, dsize, nrec;
};

struct tokstream_reader {
	FILE *f;
	int own;    /* fclose f on close */
	char *name; /* for messages */
	struct tokstream_info info;
	int failed;
	uint64_t start;            /* file offset of the header */
	uint64_t header_records;   /* the header's counts, maybe TOKSTREAM_UNKNOWN */
	uint64_t header_tokens;
	struct chunk_ent *chunks;  /* seekable: the seek table */
	ZSTD_DCtx *dctx;

	/* the chunk in memory, checked whole */
	unsigned char *buf;
	size_t cap, len, pos;
	int loaded;
	uint64_t cur;       /* its number */
	uint64_t cur_off;   /* its byte offset */
	uint64_t cur_index; /* index of the record at pos */
	int one_chunk;      /* after tokstream_seek_chunk: stop at its end */
	int at_end;

	/* seekable: one compressed frame */
	unsigned char *cbuf;
	size_t ccap;

	/* stream: the input buffer, in[in_pos..in_len) not consumed yet */
	unsigned char *in;
	size_t in_cap, in_len, in_pos;
	int in_eof;
	uint64_t in_off; /* stream offset of in[in_pos] */
	uint64_t seen_chunks, seen_records, seen_tokens;
	uint32_t seen_crc; /* CRC-32 of the seek-table entries of the chunks read */
};

/* Sets err to "NAME: <fmt>", marks r failed. Returns -1. */
__attribute__((format(printf, 4, 5))) static int rfail(struct tokstream_reader *r, struct err *err, int sys,
							 const char *fmt, ...)
{
	char msg[768];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	r->failed = 1;
	if (sys)
		return err_sys(err, "%s: %s", r->name, msg);
	return err_set(err, "%s: %s", r->name, msg);
}

/* As rfail, with "record N: chunk K at byte B: " (N from 1) in front: for errors
 * inside the chunk being loaded. */
__attribute__((format(printf, 3, 4))) static int chunk_fail(struct tokstream_reader *r, struct err *err,
							      const char *fmt, ...)
{
	char msg[640];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	return rfail(r, err, 0, "record %" PRIu64 ": chunk %" PRIu64 " at byte %" PRIu64 ": %s",
		     r->cur_index + 1, r->cur, r->cur_off, msg);
}

/* Checks the header bytes h[0..n) (n < HEADER_SIZE when the input ended) and fills r->info. */
static int parse_header(struct tokstream_reader *r, const unsigned char *h, size_t n, struct err *err)
{
	if (n == 0)
		return rfail(r, err, 0, "empty file, not a token stream");
	if (n < 4)
		return rfail(r, err, 0, "not a token stream (%zu bytes)", n);
	uint32_t m = get32(h);
	if (m != HEADER_MAGIC) {
		if (m == ZSTD_MAGICNUMBER)
			return rfail(r, err, 0, "a zstd stream, but not a token stream (no lorapipe header)");
		if ((m & SKIPPABLE_MASK) == SKIPPABLE_START)
			return rfail(r, err, 0, "not a token stream (a zstd skippable frame that is not its header)");
		return rfail(r, err, 0, "not a token stream (neither zstd nor lorapipe data)");
	}
	if (n < 16)
		return rfail(r, err, 0, "truncated: the header has %zu of %d bytes", n, HEADER_SIZE);
	if (memcmp(h + 8, MAGIC, 8) != 0)
		return rfail(r, err, 0, "not a token stream (a zstd skippable frame without the lorapipe magic)");
	if (n < 20)
		return rfail(r, err, 0, "truncated: the header has %zu of %d bytes", n, HEADER_SIZE);
	uint32_t version = get32(h + 16);
	if (version > TOKSTREAM_VERSION)
		return rfail(r, err, 0, "token stream format version %" PRIu32
			     " is newer than this lorapipe reads (%u): update lorapipe", version, TOKSTREAM_VERSION);
	if (version == 0)
		return rfail(r, err, 0, "corrupt header: format version 0");
	if (get32(h + 4) != HEADER_PAYLOAD)
		return rfail(r, err, 0, "corrupt header: size %" PRIu32 ", expected %d", get32(h + 4), HEADER_PAYLOAD);
	if (n < HEADER_SIZE)
		return rfail(r, err, 0, "truncated: the header has %zu of %d bytes", n, HEADER_SIZE);
	if (crc32_update(0, h + 8, 44) != get32(h + 52))
		return rfail(r, err, 0, "corrupt header: checksum mismatch");
	struct tokstream_info *in = &r->info;
	in->version = version;
	in->vocab_size = get32(h + 20);
	in->tokenizer_fp = get64(h + 24);
	r->header_records = get64(h + 32);
	r->header_tokens = get64(h + 40);
	in->chunk_bytes = get32(h + 48);
	if (in->vocab_size == 0 || in->vocab_size > INT32_MAX)
		return rfail(r, err, 0, "corrupt header: vocabulary size %" PRIu32, in->vocab_size);
	if (in->chunk_bytes < TOKSTREAM_CHUNK_MIN || in->chunk_bytes > TOKSTREAM_CHUNK_MAX)
		return rfail(r, err, 0, "corrupt header: chunk size %" PRIu32, in->chunk_bytes);
	if ((r->header_records == TOKSTREAM_UNKNOWN) != (r->header_tokens == TOKSTREAM_UNKNOWN) ||
	    (r->header_records != TOKSTREAM_UNKNOWN &&
	     (r->header_tokens < r->header_records ||
	      r->header_tokens / TOKSTREAM_MAX_TOKENS > r->header_records)))
		return rfail(r, err, 0, "corrupt header: %" PRIu64 " records of %" PRIu64 " tokens",
			     r->header_records, r->header_tokens);
	in->n_records = r->header_records;
	in->n_tokens = r->header_tokens;
	in->n_chunks = TOKSTREAM_UNKNOWN;
	return 0;
}

/* The totals a seek table (or the end of a stream) gives must agree with the header's, when known. */
static int check_header_counts(struct tokstream_reader *r, uint64_t records, uint64_t tokens, struct err *err)
{
	if (r->header_records != TOKSTREAM_UNKNOWN &&
	    (r->header_records != records || r->header_tokens != tokens))
		return rfail(r, err, 0, "the header says %" PRIu64 " records of %" PRIu64
			     " tokens, the file holds %" PRIu64 " of %" PRIu64, r->header_records,
			     r->header_tokens, records, tokens);
	return 0;
}

/* Checks the chunk now in buf[0..len) record by record; *nrec, *ntok: what it holds. */
static int check_chunk(struct tokstream_reader *r, uint32_t *nrec, uint64_t *ntok, struct err *err)
{
	if (r->len % 4 != 0)
		return chunk_fail(r, err, "%zu bytes of records, not a multiple of 4", r->len);
#if !HOST_LE
	for (size_t i = 0; i < r->len; i += 4) {
		uint32_t v = get32(r->buf + i);
		memcpy(r->buf + i, &v, 4);
	}
#endif
	uint32_t vocab = r->info.vocab_size;
	uint32_t count = 0;
	uint64_t tokens = 0;
	size_t pos = 0;
	while (pos < r->len) {
		uint64_t recno = r->cur_index + count + 1;
		const uint32_t *w = (const uint32_t *)(r->buf + pos);
		size_t left = (r->len - pos - 4) / 8;
		uint32_t n = w[0];
		if (n == 0)
			return rfail(r, err, 0, "record %" PRIu64 ": empty record (n = 0)", recno);
		if (n > TOKSTREAM_MAX_TOKENS || n > left)
			return rfail(r, err, 0, "record %" PRIu64 ": length %" PRIu32
				     " does not fit in its chunk (room for %zu tokens)", recno, n, left);
		if (count == 1 && r->len > r->info.chunk_bytes)
			return rfail(r, err, 0, "record %" PRIu64 ": chunk %" PRIu64 " holds %zu bytes, more than"
				     " the chunk size %" PRIu32 ", and more than one record", recno, r->cur, r->len,
				     r->info.chunk_bytes);
		const uint32_t *ids = w + 1;
		const int32_t *labels = (const int32_t *)(w + 1 + n);
		for (uint32_t i = 0; i < n; i++) {
			if (ids[i] >= vocab)
				return rfail(r, err, 0, "record %" PRIu64 ": position %" PRIu32 ": id %" PRIu32
					     " >= vocabulary size %" PRIu32, recno, i, ids[i], vocab);
			if (labels[i] != TOKSTREAM_IGNORE && (uint32_t)labels[i] != ids[i])
				return rfail(r, err, 0, "record %" PRIu64 ": position %" PRIu32 ": label %" PRId32
					     " is neither the id %" PRIu32 " nor -100", recno, i, labels[i], ids[i]);
		}
		pos += 4 + 8 * (size_t)n;
		count++;
		tokens += n;
	}
	if (count == 0)
		return chunk_fail(r, err, "an empty chunk");
	*nrec = count;
	*ntok = tokens;
	r->pos = 0;
	r->loaded = 1;
	return 0;
}

/* ---- seekable path ---- */

static int read_at(struct tokstream_reader *r, uint64_t off, void *p, size_t n, struct err *err)
{
	if (fseeko(r->f, (off_t)off, SEEK_SET) != 0)
		return rfail(r, err, 1, "seeking to byte %" PRIu64 ":", off);
	size_t got = fread(p, 1, n, r->f);
	if (got == n)
		return 0;
	if (ferror(r->f))
		return rfail(r, err, 1, "reading at byte %" PRIu64 ":", off);
	return rfail(r, err, 0, "truncated: the file ends at byte %" PRIu64 ", inside %zu bytes read at %" PRIu64,
		     off + got, n, off);
}

static int open_seekable(struct tokstream_reader *r, struct err *err)
{
	if (fseeko(r->f, 0, SEEK_END) != 0)
		return rfail(r, err, 1, "seeking to the end:");
	off_t end = ftello(r->f);
	if (end < 0 || (uint64_t)end < r->start)
		return rfail(r, err, 1, "finding the file size:");
	uint64_t size = (uint64_t)end - r->start;
	unsigned char h[HEADER_SIZE];
	size_t hn = size < HEADER_SIZE ? (size_t)size : HEADER_SIZE;
	if (read_at(r, r->start, h, hn, err) || parse_header(r, h, hn, err))
		return -1;
	if (size < HEADER_SIZE + TABLE_MIN)
		return rfail(r, err, 0, "truncated or unfinished: no seek table at the end (%" PRIu64 " bytes)", size);
	unsigned char foot[FOOTER_SIZE];
	if (read_at(r, r->start + size - FOOTER_SIZE, foot, FOOTER_SIZE, err))
		return -1;
	if (memcmp(foot + 24, END_MAGIC, 8) != 0)
		return rfail(r, err, 0, "truncated or unfinished: no seek table at the end (%" PRIu64 " bytes)", size);
	uint64_t n_chunks = get32(foot + 16);
	uint64_t tsize = TABLE_MIN + ENTRY_SIZE * n_chunks;
	if (tsize > size - HEADER_SIZE)
		return rfail(r, err, 0, "corrupt seek table: %" PRIu64 " chunks do not fit in a file of %" PRIu64
			     " bytes", n_chunks, size);
	uint64_t toff = r->start + size - tsize;
	size_t elen = (size_t)(ENTRY_SIZE * n_chunks);
	unsigned char *t = malloc(8 + elen);
	r->chunks = calloc(n_chunks ? n_chunks : 1, sizeof *r->chunks);
	if (!t || !r->chunks) {
		free(t);
		return rfail(r, err, 1, "out of memory for a seek table of %" PRIu64 " chunks", n_chunks);
	}
	if (read_at(r, toff, t, 8 + elen, err)) {
		free(t);
		return -1;
	}
	const unsigned char *e = t + 8;
	int bad = get32(t) != TABLE_MAGIC || get32(t + 4) != elen + FOOTER_SIZE;
	if (!bad && crc32_update(crc32_update(0, e, elen), foot, 20) != get32(foot + 20)) {
		free(t);
		return rfail(r, err, 0, "corrupt seek table: checksum mismatch");
	}
	uint64_t off = r->start + HEADER_SIZE, records = 0, tokens = 0, i;
	size_t cmax = ZSTD_compressBound(TOKSTREAM_CHUNK_MAX);
	for (i = 0; !bad && i < n_chunks; i++, e += ENTRY_SIZE) {
		struct chunk_ent *c = &r->chunks[i];
		c->csize = get32(e);
		c->dsize = get32(e + 4);
		c->nrec = get32(e + 8);
		c->off = off;
		c->first = records;
		if (c->csize < 8 || c->csize > cmax || c->dsize > TOKSTREAM_CHUNK_MAX || c->nrec == 0 ||
		    c->dsize / RECORD_MIN < c->nrec || (c->dsize - 4 * (uint64_t)c->nrec) % 8 != 0 ||
		    (c->dsize > r->info.chunk_bytes && c->nrec != 1))
			break;
		off += c->csize;
		records += c->nrec;
		tokens += (c->dsize - 4 * (uint64_t)c->nrec) / 8;
	}
	free(t);
	if (bad)
		return rfail(r, err, 0, "corrupt seek table at byte %" PRIu64, toff);
	if (i < n_chunks)
		return rfail(r, err, 0, "corrupt seek table: chunk %" PRIu64 " of %" PRIu64 " bytes holding %" PRIu32
			     " records of %" PRIu32 " bytes", i, (uint64_t)r->chunks[i].csize, r->chunks[i].nrec,
			     r->chunks[i].dsize);
	if (off != toff)
		return rfail(r, err, 0, "seek table inconsistent with the file size: its chunks end at byte %" PRIu64
			     ", the table begins at byte %" PRIu64, off - r->start, toff - r->start);
	if (records != get64(foot) || tokens != get64(foot + 8))
		return rfail(r, err, 0, "corrupt seek table: totals %" PRIu64 " records and %" PRIu64
			     " tokens, its chunks hold %" PRIu64 " and %" PRIu64, get64(foot), get64(foot + 8),
			     records, tokens);
	if (check_header_counts(r, records, tokens, err))
		return -1;
	r->info.n_records = records;
	r->info.n_tokens = tokens;
	r->info.n_chunks = n_chunks;
	r->info.seekable = 1;
	return 0;
}

/* Reads, decompresses and checks chunk k of a seekable file. */
static int load_chunk(struct tokstream_reader *r, uint64_t k, struct err *err)
{
	const struct chunk_ent *c = &r->chunks[k];
	r->loaded = 0;
	r->cur = k;
	r->cur_off = c->off - r->start;
	r->cur_index = c->first;
	if (reserve(&r->cbuf, &r->ccap, c->csize, err) || reserve(&r->buf, &r->cap, c->dsize ? c->dsize : 1, err)) {
		r->failed = 1;
		return err_wrap(err, "%s", r->name);
	}
	if (fseeko(r->f, (off_t)c->off, SEEK_SET) != 0)
		return rfail(r, err, 1, "record %" PRIu64 ": seeking to chunk %" PRIu64 ":", c->first + 1, k);
	size_t n = fread(r->cbuf, 1, c->csize, r->f);
	if (n != c->csize && ferror(r->f))
		return rfail(r, err, 1, "record %" PRIu64 ": reading chunk %" PRIu64 ":", c->first + 1, k);
	if (n != c->csize)
		return chunk_fail(r, err, "truncated: the file ends inside this chunk (it changed while being read?)");
	if (get32(r->cbuf) != ZSTD_MAGICNUMBER)
		return chunk_fail(r, err, "not a zstd frame");
	unsigned long long fcs = ZSTD_getFrameContentSize(r->cbuf, c->csize);
	if (fcs == ZSTD_CONTENTSIZE_ERROR)
		return chunk_fail(r, err, "corrupt zstd frame header");
	if (fcs == ZSTD_CONTENTSIZE_UNKNOWN)
		return chunk_fail(r, err, "a zstd frame without its content size (not written by lorapipe)");
	if (fcs != c->dsize)
		return chunk_fail(r, err, "the frame holds %llu bytes, the seek table says %" PRIu32, fcs, c->dsize);
	size_t fsize = ZSTD_findFrameCompressedSize(r->cbuf, c->csize);
	if (ZSTD_isError(fsize))
		return chunk_fail(r, err, "zstd: %s", ZSTD_getErrorName(fsize));
	if (fsize != c->csize)
		return chunk_fail(r, err, "the frame is %zu bytes, the seek table says %" PRIu32, fsize, c->csize);
	size_t got = ZSTD_decompressDCtx(r->dctx, r->buf, c->dsize, r->cbuf, c->csize);
	if (ZSTD_isError(got))
		return chunk_fail(r, err, "zstd: %s", ZSTD_getErrorName(got));
	if (got != c->dsize)
		return chunk_fail(r, err, "the frame holds %zu bytes, the seek table says %" PRIu32, got, c->dsize);
	r->len = got;
	uint32_t nrec;
	uint64_t ntok;
	if (check_chunk(r, &nrec, &ntok, err))
		return -1;
	if (nrec != c->nrec) {
		r->loaded = 0;
		return chunk_fail(r, err, "%" PRIu32 " records, the seek table says %" PRIu32, nrec, c->nrec);
	}
	return 0;
}

/* ---- stream path ---- */

static size_t avail(const struct tokstream_reader *r) { return r->in_len - r->in_pos; }

static void consume(struct tokstream_reader *r, size_t n)
{
	r->in_pos += n;
	r->in_off += n;
}

/* Makes want bytes (<= in_cap) available unless the input ends first. Returns 0 or -1. */
static int fill(struct tokstream_reader *r, size_t want, struct err *err)
{
	if (avail(r) >= want || r->in_eof)
		return 0;
	memmove(r->in, r->in + r->in_pos, avail(r));
	r->in_len -= r->in_pos;
	r->in_pos = 0;
	while (r->in_len < want && !r->in_eof) {
		size_t ask = r->in_cap - r->in_len;
		size_t got = fread(r->in + r->in_len, 1, ask, r->f);
		r->in_len += got;
		if (got < ask) {
			if (ferror(r->f))
				return rfail(r, err, 1, "reading at byte %" PRIu64 ":", r->in_off + avail(r));
			r->in_eof = 1;
		}
	}
	return 0;
}

static int open_stream(struct tokstream_reader *r, struct err *err)
{
	r->in_cap = ZSTD_DStreamInSize();
	if (r->in_cap < 4096)
		r->in_cap = 4096;
	if (!(r->in = malloc(r->in_cap)))
		return rfail(r, err, 1, "out of memory");
	if (fill(r, HEADER_SIZE, err))
		return -1;
	size_t n = avail(r) < HEADER_SIZE ? avail(r) : HEADER_SIZE;
	if (parse_header(r, r->in + r->in_pos, n, err))
		return -1;
	consume(r, HEADER_SIZE);
	size_t rc = ZSTD_DCtx_setParameter(r->dctx, ZSTD_d_windowLogMax, WINDOW_LOG_MAX);
	if (ZSTD_isError(rc))
		return rfail(r, err, 1, "zstd: %s", ZSTD_getErrorName(rc));
	return 0;
}

/* Decompresses the zstd frame at the input position into buf and checks it. */
static int stream_chunk(struct tokstream_reader *r, struct err *err)
{
	unsigned long long fcs = ZSTD_getFrameContentSize(r->in + r->in_pos, avail(r));
	if (fcs == ZSTD_CONTENTSIZE_ERROR)
		return chunk_fail(r, err, r->in_eof ? "truncated zstd frame header" : "corrupt zstd frame header");
	if (fcs == ZSTD_CONTENTSIZE_UNKNOWN)
		return chunk_fail(r, err, "a zstd frame without its content size (not written by lorapipe)");
	if (fcs < RECORD_MIN || fcs > TOKSTREAM_CHUNK_MAX)
		return chunk_fail(r, err, "a chunk of %llu bytes (a chunk holds %d to %u)", fcs, RECORD_MIN,
				  TOKSTREAM_CHUNK_MAX);
	if (reserve(&r->buf, &r->cap, (size_t)fcs, err)) {
		r->failed = 1;
		return err_wrap(err, "%s", r->name);
	}
	ZSTD_DCtx_reset(r->dctx, ZSTD_reset_session_only);
	ZSTD_outBuffer out = {r->buf, (size_t)fcs, 0};
	uint64_t csize = 0;
	for (;;) {
		ZSTD_inBuffer in = {r->in + r->in_pos, avail(r), 0};
		size_t before = out.pos;
		size_t ret = ZSTD_decompressStream(r->dctx, &out, &in);
		consume(r, in.pos);
		csize += in.pos;
		if (ZSTD_isError(ret))
			return chunk_fail(r, err, "zstd: %s", ZSTD_getErrorName(ret));
		if (ret == 0)
			break;
		if (in.pos == 0 && out.pos == before && avail(r) > 0)
			return chunk_fail(r, err, "zstd makes no progress (a corrupt frame)");
		if (avail(r) == 0) {
			if (fill(r, 1, err))
				return -1;
			if (avail(r) == 0)
				return chunk_fail(r, err, "truncated: the input ends inside this chunk");
		}
	}
	if (out.pos != fcs)
		return chunk_fail(r, err, "the frame holds %zu bytes, its header says %llu", out.pos, fcs);
	r->len = out.pos;
	uint32_t nrec;
	uint64_t ntok;
	if (check_chunk(r, &nrec, &ntok, err))
		return -1;
	if (csize > UINT32_MAX) {
		r->loaded = 0;
		return chunk_fail(r, err, "a frame of %" PRIu64 " bytes", csize);
	}
	unsigned char e[ENTRY_SIZE];
	put32(e, (uint32_t)csize);
	put32(e + 4, (uint32_t)r->len);
	put32(e + 8, nrec);
	r->seen_crc = crc32_update(r->seen_crc, e, sizeof e);
	r->seen_chunks++;
	r->seen_records += nrec;
	r->seen_tokens += ntok;
	return 0;
}

/* Reads the seek table at the input position and checks it against what was read. */
static int stream_table(struct tokstream_reader *r, struct err *err)
{
	uint64_t at = r->in_off - r->start;
	if (fill(r, 8, err))
		return -1;
	if (avail(r) < 8)
		return rfail(r, err, 0, "truncated: the input ends inside the seek table at byte %" PRIu64, at);
	uint32_t psize = get32(r->in + r->in_pos + 4);
	consume(r, 8);
	if (psize < FOOTER_SIZE || (psize - FOOTER_SIZE) % ENTRY_SIZE != 0)
		return rfail(r, err, 0, "corrupt seek table at byte %" PRIu64 ": size %" PRIu32, at, psize);
	uint64_t n_chunks = (psize - FOOTER_SIZE) / ENTRY_SIZE;
	if (n_chunks != r->seen_chunks)
		return rfail(r, err, 0, "corrupt seek table at byte %" PRIu64 ": it lists %" PRIu64
			     " chunks, the stream holds %" PRIu64, at, n_chunks, r->seen_chunks);
	uint32_t crc = 0;
	for (uint64_t i = 0; i < n_chunks; i++) {
		if (fill(r, ENTRY_SIZE, err))
			return -1;
		if (avail(r) < ENTRY_SIZE)
			return rfail(r, err, 0, "truncated: the input ends inside the seek table at byte %" PRIu64, at);
		crc = crc32_update(crc, r->in + r->in_pos, ENTRY_SIZE);
		consume(r, ENTRY_SIZE);
	}
	if (fill(r, FOOTER_SIZE, err))
		return -1;
	if (avail(r) < FOOTER_SIZE)
		return rfail(r, err, 0, "truncated: the input ends inside the seek table at byte %" PRIu64, at);
	const unsigned char *foot = r->in + r->in_pos;
	if (memcmp(foot + 24, END_MAGIC, 8) != 0 || get32(foot + 16) != n_chunks ||
	    crc32_update(crc, foot, 20) != get32(foot + 20))
		return rfail(r, err, 0, "corrupt seek table at byte %" PRIu64, at);
	if (crc != r->seen_crc)
		return rfail(r, err, 0, "seek table at byte %" PRIu64 " does not match the chunks read", at);
	if (get64(foot) != r->seen_records || get64(foot + 8) != r->seen_tokens)
		return rfail(r, err, 0, "corrupt seek table: totals %" PRIu64 " records and %" PRIu64
			     " tokens, the stream holds %" PRIu64 " and %" PRIu64, get64(foot), get64(foot + 8),
			     r->seen_records, r->seen_tokens);
	consume(r, FOOTER_SIZE);
	if (check_header_counts(r, r->seen_records, r->seen_tokens, err))
		return -1;
	if (fill(r, 1, err))
		return -1;
	if (avail(r) > 0)
		return rfail(r, err, 0, "data after the seek table at byte %" PRIu64, r->in_off - r->start);
	r->info.n_records = r->seen_records;
	r->info.n_tokens = r->seen_tokens;
	r->info.n_chunks = r->seen_chunks;
	return 0;
}

/* Loads the next frame of a stream: 1 a chunk, 0 the end (the seek table checked), -1. */
static int stream_next_frame(struct tokstream_reader *r, struct err *err)
{
	r->loaded = 0;
	r->cur = r->seen_chunks;
	r->cur_off = r->in_off - r->start;
	r->cur_index = r->seen_records;
	if (fill(r, FRAME_HEADER_MAX, err))
		return -1;
	if (avail(r) == 0)
		return rfail(r, err, 0, "truncated or unfinished: the input ends after %" PRIu64
			     " records without the seek table", r->seen_records);
	if (avail(r) < 4)
		return chunk_fail(r, err, "truncated: the input ends inside a frame header");
	uint32_t m = get32(r->in + r->in_pos);
	if (m == ZSTD_MAGICNUMBER)
		return stream_chunk(r, err) ? -1 : 1;
	if (m == TABLE_MAGIC)
		return stream_table(r, err) ? -1 : 0;
	if (m == HEADER_MAGIC)
		return chunk_fail(r, err, "a second header: concatenated token streams are not one token stream");
	if ((m & SKIPPABLE_MASK) == SKIPPABLE_START)
		return chunk_fail(r, err, "an unexpected skippable frame (magic 0x%08" PRIx32 ")", m);
	return chunk_fail(r, err, "not a zstd frame (corrupt data)");
}

/* ---- the reader's interface ---- */

struct tokstream_reader *tokstream_open_file(FILE *f, const char *name, int flags, struct err *err)
{
	struct tokstream_reader *r = calloc(1, sizeof *r);
	if (!r || !(r->name = strdup(name ? name : "token stream")) || !(r->dctx = ZSTD_createDCtx())) {
		if (r)
			free(r->name);
		free(r);
		err_sys(err, "%s: out of memory", name ? name : "token stream");
		return NULL;
	}
	r->f = f;
	int seekable = 0;
	if (!(flags & TOKSTREAM_STREAM)) {
		int fd = fileno(f);
		struct stat st;
		int saved = errno;
		off_t pos = ftello(f);
		if (pos >= 0 && (fd < 0 || (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))) &&
		    fseeko(f, pos, SEEK_SET) == 0) {
			seekable = 1;
			r->start = (uint64_t)pos;
		}
		errno = saved;
	}
	if (seekable ? open_seekable(r, err) : open_stream(r, err)) {
		tokstream_close(r);
		return NULL;
	}
	return r;
}

struct tokstream_reader *tokstream_open(const char *path, struct err *err)
{
	if (!strcmp(path, "-"))
		return tokstream_open_file(stdin, "standard input", TOKSTREAM_STREAM, err);
	FILE *f = fopen(path, "rb");
	if (!f) {
		err_sys(err, "%s:", path);
		return NULL;
	}
	struct tokstream_reader *r = tokstream_open_file(f, path, 0, err);
	if (!r) {
		fclose(f);
		return NULL;
	}
	r->own = 1;
	return r;
}

void tokstream_close(struct tokstream_reader *r)
{
	if (!r)
		return;
	if (r->own)
		fclose(r->f);
	ZSTD_freeDCtx(r->dctx);
	free(r->chunks);
	free(r->buf);
	free(r->cbuf);
	free(r->in);
	free(r->name);
	free(r);
}

const struct tokstream_info *tokstream_info(const struct tokstream_reader *r) { return &r->info; }

int tokstream_next(struct tokstream_reader *r, struct tokstream_record *rec, struct err *err)
{
	if (r->failed)
		return err_set(err, "%s: an earlier error stopped this reader", r->name);
	for (;;) {
		if (r->loaded && r->pos < r->len) {
			const uint32_t *w = (const uint32_t *)(r->buf + r->pos);
			rec->n = w[0];
			rec->ids = w + 1;
			rec->labels = (const int32_t *)(w + 1 + w[0]);
			rec->index = r->cur_index++;
			rec->chunk = r->cur;
			r->pos += 4 + 8 * (size_t)w[0];
			return 1;
		}
		if (r->at_end || (r->loaded && r->one_chunk))
			return 0;
		if (r->info.seekable) {
			uint64_t k = r->loaded ? r->cur + 1 : 0;
			if (k >= r->info.n_chunks) {
				r->at_end = 1;
				r->loaded = 0;
				return 0;
			}
			if (load_chunk(r, k, err))
				return -1;
		} else {
			int rc = stream_next_frame(r, err);
			if (rc < 0)
				return -1;
			if (rc == 0) {
				r->at_end = 1;
				return 0;
			}
		}
	}
}

int tokstream_seek_chunk(struct tokstream_reader *r, uint64_t chunk, struct err *err)
{
	if (r->failed)
		return err_set(err, "%s: an earlier error stopped this reader", r->name);
	if (!r->info.seekable)
		return err_set(err, "%s: a stream, not a seekable file: cannot go to chunk %" PRIu64, r->name, chunk);
	if (chunk >= r->info.n_chunks)
		return err_set(err, "%s: no chunk %" PRIu64 " (the file has %" PRIu64 ")", r->name, chunk,
			       r->info.n_chunks);
	r->one_chunk = 1;
	r->at_end = 0;
	return load_chunk(r, chunk, err);
}

int tokstream_chunk_info(const struct tokstream_reader *r, uint64_t chunk, uint32_t *n_records,
			 uint64_t *n_tokens, struct err *err)
{
	if (!r->info.seekable)
		return err_set(err, "%s: a stream, not a seekable file: no chunk table", r->name);
	if (chunk >= r->info.n_chunks)
		return err_set(err, "%s: no chunk %" PRIu64 " (the file has %" PRIu64 ")", r->name, chunk,
			       r->info.n_chunks);
	const struct chunk_ent *c = &r->chunks[chunk];
	if (n_records)
		*n_records = c->nrec;
	if (n_tokens)
		*n_tokens = (c->dsize - 4 * (uint64_t)c->nrec) / 8;
	return 0;
}
