/* tokstream: token streams (*.tok.zst), format 3 of DESIGN.md.
 *
 * FILE LAYOUT: (the tokstream helper writes the exact byte layout here)
 */
#ifndef LORAPIPE_TOKSTREAM_H
#define LORAPIPE_TOKSTREAM_H

#include <stdint.h>
#include <stdio.h>

#include "msg.h"

#define TOKSTREAM_IGNORE (-100) /* the label of a token that is not learned */

struct tokstream_info {
	uint32_t version;
	uint32_t vocab_size;
	uint64_t tokenizer_fp;  /* tokenizer_fingerprint() of the tokenizer that made it */
	uint64_t n_records;     /* from the seek table when the file is seekable, else the header's */
	uint64_t n_tokens;      /* likewise; 0 when unknown */
	uint64_t n_chunks;      /* frames of records; 0 when unknown (a stream being read) */
};

struct tokstream_record {
	uint32_t n;
	const uint32_t *ids;   /* n ids, valid until the next call */
	const int32_t *labels; /* n labels: the id itself or TOKSTREAM_IGNORE */
};

struct tokstream_writer;
/* Writes to f (which stays the caller's). Returns NULL with err set. */
struct tokstream_writer *tokstream_writer_new(FILE *f, uint32_t vocab_size, uint64_t tokenizer_fp,
					      struct err *err);
int tokstream_write(struct tokstream_writer *w, const uint32_t *ids, const int32_t *labels, uint32_t n,
		    struct err *err);
/* Ends the last frame, writes the seek table (and, when f is seekable, the record
 * count into the header); frees w. Returns 0 or -1. */
int tokstream_writer_finish(struct tokstream_writer *w, struct err *err);

struct tokstream_reader;
/* path "-" reads standard input as a stream. Returns NULL with err set: a foreign,
 * corrupt or truncated file says so and names the file. */
struct tokstream_reader *tokstream_open(const char *path, struct err *err);
void tokstream_close(struct tokstream_reader *r);
const struct tokstream_info *tokstream_info(const struct tokstream_reader *r);
/* 1 and *rec set, 0 at the end, -1 with err set ("FILE: record N: ..."). */
int tokstream_next(struct tokstream_reader *r, struct tokstream_record *rec, struct err *err);
/* Positions the reader at the first record of chunk i (seekable files only),
 * so a trainer can visit chunks in a shuffled order in bounded memory. */
int tokstream_seek_chunk(struct tokstream_reader *r, uint64_t chunk, struct err *err);

#endif
