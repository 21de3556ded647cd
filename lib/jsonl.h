/* jsonl: JSON Lines on libjq's jv values, with line numbers in every error.
 *
 * Ownership follows jq's rule: jv functions consume their arguments and
 * return new references. jsonl_next() hands the caller a new reference.
 * Blank lines are skipped (and counted in line numbers).
 */
#ifndef LORAPIPE_JSONL_H
#define LORAPIPE_JSONL_H

#include <stdio.h>

#include <jq.h>

#include "msg.h"

struct jsonl_reader;

/* path "-" or NULL: standard input. The name is used in messages ("<stdin>"). */
struct jsonl_reader *jsonl_open(const char *path, struct err *err);
struct jsonl_reader *jsonl_from_file(FILE *f, const char *name);
void jsonl_close(struct jsonl_reader *r);
/* Reads the next record: 1 and *out set, 0 at the end, -1 with err set to
 * "NAME:LINE: <what is wrong>" (not JSON, not an object, more than one value). */
int jsonl_next(struct jsonl_reader *r, jv *out, struct err *err);
/* The line number of the record last returned (1-based) and the source name. */
long jsonl_line(const struct jsonl_reader *r);
const char *jsonl_name(const struct jsonl_reader *r);
/* Sets err to "NAME:LINE: <fmt...>" for the record last returned. Returns -1. */
int jsonl_errf(const struct jsonl_reader *r, struct err *err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Writes v (consumed) as one compact line. Returns 0 or -1 (err_sys). */
int jsonl_write(FILE *f, jv v, struct err *err);

#endif
