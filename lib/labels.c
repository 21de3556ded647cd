#include "labels.h"

#include <stdlib.h>
#include <string.h>

#include "tokstream.h"

static int is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

static int span_cmp(const void *a, const void *b)
{
	const uint32_t *x = a, *y = b;
	return x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : (x[1] > y[1]) - (x[1] < y[1]);
}

/* A JSON number that is a whole number in [0, limit]. Consumes v. */
static int get_offset(jv v, size_t limit, uint32_t *out)
{
	int kind = jv_get_kind(v);
	double d = kind == JV_KIND_NUMBER ? jv_number_value(v) : -1;
	jv_free(v);
	if (!(d >= 0 && d <= (double)limit && d == (double)(uint64_t)d))
		return -1;
	*out = (uint32_t)d;
	return 0;
}

int labels_parse(jv rec, struct labels_record *lr, struct err *err)
{
	memset(lr, 0, sizeof *lr);
	if (jv_get_kind(rec) != JV_KIND_OBJECT)
		return err_set(err, "expected an object");
	jv text = jv_object_get(jv_copy(rec), jv_string("text"));
	if (jv_get_kind(text) != JV_KIND_STRING) {
		int missing = jv_get_kind(text) == JV_KIND_INVALID || jv_get_kind(text) == JV_KIND_NULL;
		jv_free(text);
		return err_set(err, missing ? "missing key \"text\"" : "key \"text\": expected a string");
	}
	/* rec keeps the string alive; the pointer stays valid while rec does. */
	lr->text = jv_string_value(text);
	lr->len = (size_t)jv_string_length_bytes(jv_copy(text));
	jv_free(text);
	if (lr->len > UINT32_MAX)
		return err_set(err, "key \"text\": longer than 4 GiB");
	jv train = jv_object_get(jv_copy(rec), jv_string("train"));
	if (jv_get_kind(train) != JV_KIND_ARRAY) {
		int missing = jv_get_kind(train) == JV_KIND_INVALID || jv_get_kind(train) == JV_KIND_NULL;
		jv_free(train);
		return err_set(err, missing ? "missing key \"train\" (the byte spans to learn; ds-fmt writes them)"
					    : "key \"train\": expected an array of [start,end] pairs");
	}
	int n = jv_array_length(jv_copy(train));
	lr->spans = malloc((n ? n : 1) * sizeof *lr->spans);
	if (!lr->spans) {
		jv_free(train);
		return err_sys(err, "out of memory");
	}
	for (int i = 0; i < n; i++) {
		jv pair = jv_array_get(jv_copy(train), i);
		uint32_t a, b;
		int ok = jv_get_kind(pair) == JV_KIND_ARRAY && jv_array_length(jv_copy(pair)) == 2 &&
			 get_offset(jv_array_get(jv_copy(pair), 0), lr->len, &a) == 0 &&
			 get_offset(jv_array_get(jv_copy(pair), 1), lr->len, &b) == 0;
		jv_free(pair);
		if (!ok) {
			jv_free(train);
			labels_record_free(lr);
			return err_set(err, "key \"train\": span %d: expected [start,end] with whole numbers "
					    "in [0, %zu] (the text's length in bytes)", i, lr->len);
		}
		if (a > b || (a < lr->len && is_continuation(lr->text[a])) ||
		    (b < lr->len && is_continuation(lr->text[b]))) {
			jv_free(train);
			labels_record_free(lr);
			return err_set(err, "key \"train\": span %d [%u,%u): %s", i, a, b,
				       a > b ? "start after end" : "not on a UTF-8 character boundary");
		}
		lr->spans[i][0] = a, lr->spans[i][1] = b;
	}
	jv_free(train);
	/* Sort and merge, dropping empty spans, so assignment is one linear pass. */
	qsort(lr->spans, n, sizeof *lr->spans, span_cmp);
	size_t m = 0;
	for (int i = 0; i < n; i++) {
		if (lr->spans[i][0] == lr->spans[i][1])
			continue;
		if (m > 0 && lr->spans[i][0] <= lr->spans[m - 1][1]) {
			if (lr->spans[i][1] > lr->spans[m - 1][1])
				lr->spans[m - 1][1] = lr->spans[i][1];
		} else {
			lr->spans[m][0] = lr->spans[i][0], lr->spans[m][1] = lr->spans[i][1];
			m++;
		}
	}
	lr->nspans = m;
	return 0;
}

void labels_record_free(struct labels_record *lr)
{
	free(lr->spans);
	lr->spans = NULL;
	lr->nspans = 0;
}

static int hist_bucket(uint64_t n)
{
	int k = 0;
	while (n) {
		k++;
		n >>= 1;
	}
	return k < LABELS_HIST ? k : LABELS_HIST - 1;
}

void labels_stats_add(struct labels_stats *st, const uint32_t *ids, const int32_t *labels, size_t n,
		      struct labels_bos bos)
{
	size_t learned = 0, nbos = 0, adjacent = 0;
	for (size_t i = 0; i < n; i++) {
		learned += labels[i] != TOKSTREAM_IGNORE;
		if (bos.id >= 0 && ids[i] == (uint64_t)bos.id) {
			nbos++;
			adjacent += i > 0 && ids[i - 1] == ids[i];
		}
	}
	st->records++;
	st->tokens += n;
	st->learned += learned;
	st->multi_bos += adjacent > 0 || (bos.start_only && nbos > 1);
	if (n > st->max_len)
		st->max_len = n;
	st->hist[hist_bucket(n)]++;
}

int labels_assign(const struct labels_record *lr, struct tok_encoding *e, int32_t *labels, int64_t max_len,
		  enum labels_overflow policy, struct labels_bos bos, struct labels_stats *st, struct err *err)
{
	st->records_in++;
	if (max_len > 0 && e->n > (size_t)max_len) {
		if (policy == LABELS_OVERFLOW_ERROR)
			return err_set(err, "%zu tokens, longer than --max-len %lld", e->n, (long long)max_len);
		if (policy == LABELS_OVERFLOW_DROP) {
			st->dropped_long++;
			return LABELS_DROP;
		}
		e->n = (size_t)max_len;
		st->truncated++;
	}
	size_t s = 0, learned = 0, straddling = 0;
	uint32_t prev = 0;
	for (size_t i = 0; i < e->n; i++) {
		uint32_t a = e->offsets[i][0], b = e->offsets[i][1];
		if (a < prev)
			s = 0; /* offsets went back: never expected, but stay correct */
		prev = a;
		/* Spans are sorted and disjoint: the first one ending after a is the
		 * only one that can hold this token's start or overlap it. */
		while (s < lr->nspans && lr->spans[s][1] <= a)
			s++;
		int in = 0;
		if (s < lr->nspans) {
			uint32_t x = lr->spans[s][0], y = lr->spans[s][1];
			in = a == b ? x <= a : x < b;
			straddling += in && (a < x || b > y);
		}
		labels[i] = in ? (int32_t)e->ids[i] : TOKSTREAM_IGNORE;
		learned += in;
	}
	if (learned == 0) {
		st->empty++;
		return LABELS_EMPTY;
	}
	st->straddling += straddling;
	labels_stats_add(st, e->ids, labels, e->n, bos);
	return LABELS_KEEP;
}

void labels_stats_print(const struct labels_stats *st, int verbose, FILE *f)
{
	fprintf(f, "records: %llu in, %llu written", (unsigned long long)st->records_in,
		(unsigned long long)st->records);
	if (st->dropped_long)
		fprintf(f, ", %llu dropped as too long", (unsigned long long)st->dropped_long);
	if (st->truncated)
		fprintf(f, ", %llu truncated", (unsigned long long)st->truncated);
	if (st->empty)
		fprintf(f, ", %llu dropped with nothing learned", (unsigned long long)st->empty);
	if (st->bad)
		fprintf(f, ", %llu malformed skipped", (unsigned long long)st->bad);
	fputc('\n', f);
	fprintf(f, "tokens: %llu, learned %llu (%.1f%%), longest %llu, mean %.1f\n",
		(unsigned long long)st->tokens, (unsigned long long)st->learned,
		st->tokens ? 100.0 * st->learned / st->tokens : 0.0, (unsigned long long)st->max_len,
		st->records ? (double)st->tokens / st->records : 0.0);
	if (st->straddling)
		fprintf(f, "tokens crossing the edge of a learned span (learned): %llu\n",
			(unsigned long long)st->straddling);
	if (!verbose)
		return;
	fprintf(f, "length histogram (tokens: records):\n");
	for (int k = 0; k < LABELS_HIST; k++) {
		if (!st->hist[k])
			continue;
		unsigned long long lo = k ? 1ull << (k - 1) : 0, hi = k ? (1ull << k) - 1 : 0;
		fprintf(f, "  %7llu-%-7llu %10llu  %5.1f%%\n", lo, hi, (unsigned long long)st->hist[k],
			100.0 * st->hist[k] / (st->records ? st->records : 1));
	}
}

static void put_visible(FILE *f, const char *s, size_t n)
{
	for (size_t k = 0; k < n; k++) {
		if (s[k] == '\n')
			fputs("\\n", f);
		else if (s[k] == '\t')
			fputs("\\t", f);
		else if (s[k] == '\r')
			fputs("\\r", f);
		else
			fputc(s[k], f);
	}
}

int labels_explain(FILE *f, const struct tokenizer *tk, const char *text, const struct tok_encoding *e,
		   const int32_t *labels, int color, struct err *err)
{
	const char *on = color ? "\033[30;42m" : "[[", *off = color ? "\033[0m" : "]]";
	const char *sep = color ? "\033[2m|\033[0m" : "|";
	int in = 0;
	for (size_t i = 0; i < e->n; i++) {
		int l = labels[i] != TOKSTREAM_IGNORE;
		if (in && !l)
			fputs(off, f);
		if (i > 0)
			fputs(sep, f);
		if (l && !in)
			fputs(on, f);
		in = l;
		if (text) {
			put_visible(f, text + e->offsets[i][0], e->offsets[i][1] - e->offsets[i][0]);
		} else {
			char *piece;
			size_t n;
			if (tokenizer_decode(tk, &e->ids[i], 1, 0, &piece, &n, err) < 0)
				return -1;
			put_visible(f, piece, n);
			free(piece);
		}
	}
	if (in)
		fputs(off, f);
	fputc('\n', f);
	return 0;
}
