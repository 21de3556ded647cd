/* labels: from a rendered record (format 2) and its encoding to training labels.
 *
 * A format-2 record is {"text": "...", "train": [[start,end], ...]}: half-open
 * UTF-8 byte ranges of text whose tokens are learned. A token is learned (its
 * label is its own id) when its bytes overlap a train span — the same rule as
 * transformers' assistant-token mask, so a token straddling a span's edge is
 * learned rather than silently lost; such tokens are counted. Every other
 * token gets TOKSTREAM_IGNORE (-100).
 */
#ifndef LORAPIPE_LABELS_H
#define LORAPIPE_LABELS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jq.h>

#include "msg.h"
#include "tokenizer.h"

struct labels_record {
	const char *text; /* points into the jv it was parsed from: valid while that lives */
	size_t len;
	uint32_t (*spans)[2]; /* sorted, merged; owned */
	size_t nspans;
};

/* Reads and checks "text" and "train" of rec (borrowed, not consumed): text a
 * string, train an array of [start,end] integer pairs with start <= end <= the
 * text's length in bytes, both on UTF-8 character boundaries. Returns 0 or -1
 * with err naming the key and span. */
int labels_parse(jv rec, struct labels_record *lr, struct err *err);
void labels_record_free(struct labels_record *lr);

enum labels_overflow { LABELS_OVERFLOW_DROP, LABELS_OVERFLOW_TRUNCATE, LABELS_OVERFLOW_ERROR };

/* What became of a record. */
enum labels_fate {
	LABELS_KEEP = 0,
	LABELS_DROP,  /* longer than max_len under the drop policy */
	LABELS_EMPTY, /* no token learned (after truncation, if any) */
};

/* Counts over a run; a histogram of sequence lengths in powers of two. */
#define LABELS_HIST 33
struct labels_stats {
	uint64_t records_in, records, tokens, learned;
	uint64_t dropped_long, truncated, empty, bad, straddling;
	uint64_t multi_bos;        /* records with a doubled BOS (see labels_stats_add) */
	long first_multi_bos_line; /* the caller's to fill: 0 when none */
	uint64_t max_len;
	uint64_t hist[LABELS_HIST]; /* hist[k]: records with length in [2^(k-1), 2^k) (hist[0]: empty) */
};

/* The BOS check: a record has a doubled BOS when two BOS tokens stand next to
 * each other, or, where the BOS marks only the start of a sequence
 * (bos_start_only: the tokenizer itself would add it), when it holds more than
 * one. Some templates use the BOS as their turn marker (SmolLM2's ChatML has
 * BOS = <|im_start|>), so a plain count would cry wolf there.
 * bos_id < 0 disables the check. */
struct labels_bos {
	int64_t id;
	int start_only;
};

/* Fills labels[0..e->n) for the encoding of lr; may shorten e->n under the
 * truncate policy. Adds to st (records_in,
 * and for a kept record everything else). Returns a labels_fate, or -1 with err
 * set when the record is too long under the error policy. */
int labels_assign(const struct labels_record *lr, struct tok_encoding *e, int32_t *labels, int64_t max_len,
		  enum labels_overflow policy, struct labels_bos bos, struct labels_stats *st, struct err *err);
/* Adds one kept sequence to the counts (used for records read back from a stream). */
void labels_stats_add(struct labels_stats *st, const uint32_t *ids, const int32_t *labels, size_t n,
		      struct labels_bos bos);

/* Writes the summary: the counts always, the histogram when verbose. */
void labels_stats_print(const struct labels_stats *st, int verbose, FILE *f);

/* Writes one sequence as text for a person: tokens separated by '|', learned
 * runs in [[ ]] (or on a green background when color is set), newlines and tabs
 * shown as \n and \t. Token pieces come from text through e->offsets, or, when
 * text is NULL (a sequence read back from a stream), from decoding each id. */
int labels_explain(FILE *f, const struct tokenizer *tk, const char *text, const struct tok_encoding *e,
		   const int32_t *labels, int color, struct err *err);

#endif
