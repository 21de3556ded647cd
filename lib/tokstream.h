/* tokstream: token streams (*.tok.zst), format 3 of DESIGN.md.
 *
 * A token stream is a sequence of records, each one training example:
 *     n        u32          number of tokens, 1 <= n <= TOKSTREAM_MAX_TOKENS
 *     ids      u32[n]       token ids, each < vocab_size
 *     labels   i32[n]       labels[i] == ids[i] (learned) or -100 (TOKSTREAM_IGNORE)
 * The label of position i is the id at i, as in Hugging Face; the loss shifts by one.
 * Records with n = 0 are not allowed: the writer refuses them, the reader rejects them.
 *
 * FILE LAYOUT. All integers little-endian. The file is a valid zstd stream made of
 * zstd frames only, so `zstd -t` passes and `zstd -d` prints exactly the records,
 * concatenated (the header and the seek table are skippable frames, which zstd
 * skips). That makes `zstd -dc f.tok.zst | od -An -tu4` a way to look inside.
 *
 *   offset   size  header: a skippable frame of fixed size (56 bytes)
 *   0        4     0x184D2A5A          zstd skippable-frame magic, variant 0xA
 *   4        4     48                  payload size
 *   8        8     "LPTOKENS"          magic
 *   16       4     version             TOKSTREAM_VERSION (1)
 *   20       4     vocab_size          every id is < vocab_size; 1..2^31-1 (labels are i32)
 *   24       8     tokenizer_fp        tokenizer_fingerprint() of the tokenizer
 *   32       8     n_records           UINT64_MAX while unknown (*)
 *   40       8     n_tokens            UINT64_MAX while unknown (*)
 *   48       4     chunk_bytes         the writer's frame size bound (see below)
 *   52       4     crc32               CRC-32 (zlib's) of bytes 8..51
 *   (*) The writer writes UINT64_MAX first; when its FILE is seekable it patches
 *       both counts and the crc in place at the end. Written to a pipe they stay
 *       unknown, and the seek table holds the totals.
 *
 *   then chunks: one standard zstd frame per chunk, compressed independently,
 *   each with its content size in the frame header and a content checksum.
 *   A chunk's content is whole records (a record never spans two chunks),
 *   at most chunk_bytes of them, or a single record when that record alone is
 *   larger than chunk_bytes. So a reader holds at most
 *   max(chunk_bytes, 4 + 8 * TOKSTREAM_MAX_TOKENS) bytes of records at a time.
 *
 *   then the seek table: a skippable frame, last in the file
 *   0        4     0x184D2A5B          zstd skippable-frame magic, variant 0xB
 *   4        4     12 * C + 32         payload size
 *   8        12*C  C entries, one per chunk in file order:
 *                    u32 csize         compressed bytes of the chunk's frame
 *                    u32 dsize         bytes of records in it (= 4 * nrec + 8 * tokens)
 *                    u32 nrec          records in it (>= 1)
 *   then the footer, the last 32 bytes of the file:
 *   +0       8     n_records           total records
 *   +8       8     n_tokens            total tokens
 *   +16      4     C                   number of chunks
 *   +20      4     crc32               CRC-32 of the C entries and footer bytes +0..+19
 *   +24      8     "LPTOKEND"          magic
 *   A seekable reader reads the footer from the end, then the table; chunk i begins
 *   at 56 + the csize of the chunks before it, and the table must begin exactly
 *   where the last chunk ends and end at the end of the file. A stream reader
 *   checks the table against what it read. A file without the table is an
 *   unfinished one (the writer died) and is refused. Nothing may follow it; two
 *   token streams concatenated are not one token stream.
 *
 * A file with no records is valid: a header and a table with C = 0.
 * Version 1 is this layout. A reader refuses versions newer than the one it knows.
 */
#ifndef LORAPIPE_TOKSTREAM_H
#define LORAPIPE_TOKSTREAM_H

#include <stdint.h>
#include <stdio.h>

#include "msg.h"

#define TOKSTREAM_IGNORE (-100)       /* the label of a token that is not learned */
#define TOKSTREAM_VERSION 1u
#define TOKSTREAM_UNKNOWN UINT64_MAX  /* a count not known (yet) */
#define TOKSTREAM_MAX_TOKENS (1u << 22)            /* 4 Mi tokens: the longest record */
#define TOKSTREAM_CHUNK_BYTES (1u << 20)           /* default chunk_bytes: 1 MiB of records */
#define TOKSTREAM_CHUNK_MIN 64u                    /* the smallest chunk_bytes allowed */
#define TOKSTREAM_CHUNK_MAX (4u + 8u * TOKSTREAM_MAX_TOKENS) /* the largest chunk content */

struct tokstream_info {
	uint32_t version;
	uint32_t vocab_size;
	uint64_t tokenizer_fp;  /* tokenizer_fingerprint() of the tokenizer that made it */
	uint64_t n_records;     /* from the seek table when the file is seekable, else the header's; */
	uint64_t n_tokens;      /*   TOKSTREAM_UNKNOWN when unknown (a stream written to a pipe, */
	uint64_t n_chunks;      /*   being read as a stream); a stream read to its end knows them */
	uint32_t chunk_bytes;   /* the writer's chunk size bound */
	int seekable;           /* 1: tokstream_seek_chunk works */
};

struct tokstream_record {
	uint32_t n;
	const uint32_t *ids;   /* n ids, valid until the next call */
	const int32_t *labels; /* n labels: the id itself or TOKSTREAM_IGNORE */
	uint64_t index;        /* the record's place in the file, from 0 */
	uint64_t chunk;        /* the chunk it is in, from 0 */
};

/* ---- writing ----
 * Errors: a bad record (n = 0, n too large, id >= vocab_size, a label that is
 * neither the id nor -100) is refused with an error naming it ("record N: ...",
 * N counted from 1 among the records written) and nothing is written: the writer
 * stays usable. A failed write to f or a compression error is final: every later
 * call fails, and the caller discards the output. */
struct tokstream_writer;
/* Writes to f (which stays the caller's), from its current position. vocab_size: 1..INT32_MAX.
 * The header's counts are patched at the end when f is a regular file (or a memory
 * stream) not opened for appending; otherwise only the seek table holds them.
 * Returns NULL with err set. Nothing is written before the first record or finish. */
struct tokstream_writer *tokstream_writer_new(FILE *f, uint32_t vocab_size, uint64_t tokenizer_fp,
					      struct err *err);
/* Optional, before the first record: zstd level (0: the default, 3) and
 * chunk_bytes (0: TOKSTREAM_CHUNK_BYTES; else TOKSTREAM_CHUNK_MIN..TOKSTREAM_CHUNK_MAX). */
int tokstream_writer_tune(struct tokstream_writer *w, int level, uint32_t chunk_bytes, struct err *err);
int tokstream_write(struct tokstream_writer *w, const uint32_t *ids, const int32_t *labels, uint32_t n,
		    struct err *err);
/* Ends the last frame, writes the seek table (and, when f is seekable, the record
 * and token counts into the header), flushes f; frees w. Returns 0 or -1. */
int tokstream_writer_finish(struct tokstream_writer *w, struct err *err);
/* Frees w without finishing (the output is incomplete: the caller discards it). NULL is allowed. */
void tokstream_writer_free(struct tokstream_writer *w);

/* ---- reading ----
 * Every error names the file, and from the first record on the record number
 * counted from 1 ("train.tok.zst: record 12: chunk 0 at byte 56: ..."). A reader
 * that failed stays failed. Memory: one chunk's records, one chunk compressed
 * (seekable) or a zstd stream window (stream), and the seek table (12 bytes a chunk). */
struct tokstream_reader;
/* path "-" reads standard input as a pure stream; a path to something that cannot
 * seek (a pipe, a FIFO) is read as a stream too. Returns NULL with err set: a
 * foreign, corrupt or truncated file says so and names the file. */
struct tokstream_reader *tokstream_open(const char *path, struct err *err);
#define TOKSTREAM_STREAM 1 /* tokstream_open_file flag: read as a stream even if f can seek */
/* Reads from f, which stays the caller's (tokstream_close does not close it),
 * from its current position; name is for messages. f is read as a stream when it
 * cannot seek or flags has TOKSTREAM_STREAM. */
struct tokstream_reader *tokstream_open_file(FILE *f, const char *name, int flags, struct err *err);
void tokstream_close(struct tokstream_reader *r); /* NULL is allowed */
const struct tokstream_info *tokstream_info(const struct tokstream_reader *r);
/* 1 and *rec set, 0 at the end, -1 with err set ("FILE: record N: ...").
 * Reads the whole file in order, or after tokstream_seek_chunk that chunk only. */
int tokstream_next(struct tokstream_reader *r, struct tokstream_record *rec, struct err *err);
/* Positions the reader at the first record of chunk i (seekable files only):
 * tokstream_next then returns that chunk's records and 0 after its last one, so a
 * trainer can visit chunks in a shuffled order in bounded memory. Decompresses and
 * checks the chunk's frame now. Returns 0 or -1. */
int tokstream_seek_chunk(struct tokstream_reader *r, uint64_t chunk, struct err *err);
/* The records and tokens of chunk i (seekable files only), from the seek table. */
int tokstream_chunk_info(const struct tokstream_reader *r, uint64_t chunk, uint32_t *n_records,
			 uint64_t *n_tokens, struct err *err);

#endif
