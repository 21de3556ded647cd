/* jsonl: JSON Lines read into libjq's jv values or into jd values (jdoc.h),
 * and written from either, with line numbers in every error.
 *
 * Ownership follows jq's rule: jv functions consume their arguments and
 * return new references. jsonl_next() hands the caller a new reference.
 * Lines may be of any length. Blank and white-space-only lines are skipped
 * (and counted in line numbers); a CRLF ending and a UTF-8 byte-order mark at
 * the top are accepted. A line with a NUL byte or bytes that are not UTF-8 is
 * refused (jq would turn them into U+FFFD and move every byte offset after).
 */
#ifndef LORAPIPE_JSONL_H
#define LORAPIPE_JSONL_H

#include <stdio.h>
#include <string.h>

#include <jq.h>

#include "jdoc.h"
#include "msg.h"

struct jsonl_reader;

/* path "-" or NULL: standard input. The name is used in messages ("<stdin>").
 * jsonl_from_file does not take f over: jsonl_close leaves it open. It returns
 * NULL only when out of memory; name NULL means "<stdin>". */
struct jsonl_reader *jsonl_open(const char *path, struct err *err);
/* jsonl_open, a regular file mapped into memory instead of read: no byte
 * is copied, and jsonl_next_line's lines lie in the mapping, not
 * NUL-terminated. A file that shrinks while mapped raises SIGBUS where a
 * line past its new end is read: the caller catches it (msg_catch_bus).
 * Standard input that is a regular file (a shell's < FILE) is mapped from
 * where its reading stands, and left at its end; it must not have been
 * read through stdin before. Pipes and other files are read as jsonl_open
 * reads them. */
struct jsonl_reader *jsonl_open_mapped(const char *path, struct err *err);
struct jsonl_reader *jsonl_from_file(FILE *f, const char *name);
void jsonl_close(struct jsonl_reader *r);
/* Reads the next record: 1 and *out set, 0 at the end, -1 with err set to
 * "NAME:LINE: <what is wrong>":
 *   "not valid JSON: <jq's message> at column N", "expected an object, got array",
 *   "more than one JSON value on the line", "NUL byte at column N",
 *   "not valid UTF-8 at column N" (code EXIT_USAGE), or "read error: <errno>"
 *   (EXIT_RUNTIME). After a bad line the next call reads on (for --skip-bad). */
int jsonl_next(struct jsonl_reader *r, jv *out, struct err *err);
/* jsonl_next in two halves, so that lines can be parsed on other threads:
 * the next line that is not blank (CRLF and the top's byte-order mark taken
 * off; *line valid until the next call), with 1, 0 or -1 as jsonl_next; then
 * the record of such a line, with the same checks and errors as jsonl_next
 * (name and lineno are jsonl_name and jsonl_line of the line). */
int jsonl_next_line(struct jsonl_reader *r, const char **line, size_t *len, struct err *err);
/* Lines found by other threads: a mapped reader's bytes s[0..n) (1), or
 * 0 for a reader that reads. jsonl_lines_next gives the lines that start
 * in [from, to) of them (from 0 or at most n), as jsonl_next_line would,
 * its lineno counting the lines started so far, blank ones too: parts
 * side by side give every line once, and their counts add up to the line
 * numbers. A line that starts in a part may end past it. */
int jsonl_mapped(const struct jsonl_reader *r, const char **s, size_t *n);
/* The mapped bytes before s[upto] (jsonl_mapped's s) are done with: their
 * pages are given back, once 4 MiB or more are (a release flushes the TLB
 * of every thread of the process: the few large ones cost little, and the
 * 2 ms of unmapping 38 MB at the end is spread over the run). A byte
 * before upto must not be read again. Nothing for a reader that reads. */
void jsonl_mapped_done(struct jsonl_reader *r, size_t upto);
struct jsonl_lines {
	const char *s;
	size_t n, at, to;
	long lineno;
	size_t ahead; /* prefetched up to */
};
void jsonl_lines_start(struct jsonl_lines *g, const char *s, size_t n, size_t from, size_t to);
int jsonl_lines_next(struct jsonl_lines *g, const char **line, size_t *len);
/* The block of the reader's buffer the line last returned lies in. A
 * caller that keeps lines past the next call holds a reference to their
 * block: the reader then leaves it alone and reads on into another. The
 * counts are not atomic: references are taken and dropped on the thread
 * that reads. */
struct jsonl_block;
struct jsonl_block *jsonl_line_block(const struct jsonl_reader *r);
struct jsonl_block *jsonl_block_ref(struct jsonl_block *b);
void jsonl_block_release(struct jsonl_block *b); /* NULL allowed */
int jsonl_parse_record(const char *name, long lineno, const char *line, size_t len, jv *out, struct err *err);
/* jsonl_parse_record making a jd (jdoc.h) in a, with the same checks and
 * errors (name NULL: without the "NAME:LINE: " in front). With a memo (or
 * NULL), long top-level values are remembered from one record to the next:
 * a member whose text (an object, array or string of 256 bytes or more) is
 * byte for byte the last one kept under that key is not parsed again, and
 * its value is the memo's jd_shared block's (the tool list every record of
 * a data set repeats), which the template's cache knows again. A long value
 * is kept while its key's values come again; a key whose values do not (the
 * messages) has one kept in 64. Such values live in the memo: they stay
 * valid until the memo's next record or its end. The result is the same
 * value either way. A memo belongs to one thread. */
struct jsonl_memo;
struct jsonl_memo *jsonl_memo_new(void);
void jsonl_memo_free(struct jsonl_memo *m);
unsigned long long jsonl_memo_hits(const struct jsonl_memo *m);
int jsonl_parse_record_jd(const char *name, long lineno, const char *line, size_t len, struct jsonl_memo *memo,
			  struct jd_arena *a, struct jd *out, struct err *err);
/* The line number of the record (or bad line) last returned, 1-based, and the
 * source name. */
long jsonl_line(const struct jsonl_reader *r);
const char *jsonl_name(const struct jsonl_reader *r);
/* Sets err to "NAME:LINE: <fmt...>" for the record last returned. Returns -1.
 * err->msg may be one of the arguments: jsonl_errf(r, err, "%s", err->msg). */
int jsonl_errf(const struct jsonl_reader *r, struct err *err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Whether the number v was written with a fraction or an exponent ("1.0",
 * "2e3", "0.5"): a float to Python's json.loads, printed "1.0" by a
 * template, where "1" is an int. libjq 1.6 keeps only the double; the
 * parsers here mark such numbers in the jv's pad_ byte, which libjq neither
 * reads nor clears, so the mark follows the value through jv_copy, arrays
 * and objects (numbers jq computes are unmarked). jsonl_float makes one. */
int jsonl_number_is_float(jv v);
jv jsonl_float(double d);
/* An integer a double cannot hold (an order id of 19 digits, which
 * json.loads keeps whole): the parsers here mark it in the jv (pad_, and the
 * difference from the double in size), so that jsonl_write and jsonl_jd_of
 * give it back whole, where jq would round it; jq itself sees the double.
 * jsonl_exact makes one (unmarked within 2^53);
 * jsonl_number_exact gives it back: 1, or 0 for a number not so marked. */
jv jsonl_exact(long i);
int jsonl_number_exact(jv v, long *i);
/* A number's value, exact (long double holds every int64 and every double on x86-64). */
long double jsonl_number_ld(jv v);
/* jv_equal (both consumed), numbers by their exact values: two integers past
 * 2^53 that a double cannot tell apart differ; 1 and 1.0 are equal. */
int jsonl_equal(jv a, jv b);

/* The first byte of s[0..n) that is not part of well-formed UTF-8 (RFC 3629:
 * no overlongs, no surrogates, nothing past U+10FFFF), or -1. */
long jsonl_utf8_bad_at(const char *s, size_t n);
/* The first byte of s[0..n) that jq must not be given, or -1: a NUL byte; bytes
 * that are not UTF-8 (jq would turn them into U+FFFD, moving every byte offset
 * after them); or a value that follows another with no separator, on which jq
 * 1.6 (Debian's libjq) leaks the string. *why says which. Every JSON text this
 * project parses goes through it first. */
long jsonl_unsafe_at(const char *s, size_t n, const char **why);
/* Caps the vector instructions the scanners and the UTF-8 check use at
 * level (0 SSE2, 1 AVX2, 2 AVX-512; 2 by default), so that a test can
 * check each path the CPU has against the others; returns the level now
 * used. Not for use while other threads scan. */
int jsonl_simd_limit(int level);
/* Texts of at least bytes (64 KiB by default) are parsed reading each object
 * against the last one of its shape; returns the size before. For a test
 * to check both ways against each other; not while other threads parse. */
size_t jsonl_shape_min(size_t bytes);

/* One JSON text: jsonl_unsafe_at first, then the parser records go through
 * (jq for what it does not take). The value, or invalid with a message
 * (jq's, or "<why> at byte N"). */
jv jsonl_parse_value(const char *s, size_t n);
/* jsonl_parse_value making a jd in a: 0, or -1 with err->msg the message
 * alone (jq's, or "<why> at byte N"). */
int jsonl_parse_jd(const char *s, size_t n, struct jd_arena *a, struct jd *out, struct err *err);
/* jsonl_parse_jd by the direct parser alone, where objects at depth depth
 * (1: the text's own value) keep only the members named in keep[0..nkeep)
 * (the others checked as jsonl_is_json checks, not built): for the few
 * members wanted of a config of megabytes. used NULL: s[0..n) is the one
 * value (white space around it allowed); else the value that begins s
 * (after white space), *used set to the bytes up to its end, what follows
 * not looked at (a value in a larger text, its end not yet known). 0, or
 * -1 when the direct parser does not take the text (jsonl_parse_jd then
 * says why). */
int jsonl_parse_jd_keep(const char *s, size_t n, const char *const *keep, size_t nkeep, int depth,
			struct jd_arena *a, struct jd *out, size_t *used);
/* A jd as a new jv (numbers keep their float mark), and a jv (not consumed)
 * as a jd in a (0, or -1 when out of memory). */
jv jsonl_jv_of(const struct jd *d);
int jsonl_jd_of(jv v, struct jd_arena *a, struct jd *out);
/* Parses one whole JSON text (a config file, a header): jsonl_unsafe_at first,
 * then the parser records go through (jq for what it does not take). Returns
 * 0 with *out a new reference, or -1 with err "NAME: bad JSON: why". */
int jsonl_parse(const char *s, size_t n, const char *name, jv *out, struct err *err);
/* Whether s[0..n) is one JSON text, checked by the direct parser without
 * building its value (any number JSON allows): 1 when it is; 0 when it is
 * not, or holds a string the direct parser leaves to jq (a \u0000, a lone
 * surrogate escape), for jsonl_parse to settle and word. */
int jsonl_is_json(const char *s, size_t n);
/* Whether the direct parser reads s[0..n) itself, without jq, which would
 * read it without the float marks (jsonl_number_is_float). */
int jsonl_is_direct(const char *s, size_t n);
/* Reads and parses a whole JSON file of at most max bytes (0: 1 GiB). Errors
 * name the path: "PATH: cannot open: ...", "PATH: bad JSON: ...". */
int jsonl_load(const char *path, size_t max, jv *out, struct err *err);
/* jsonl_load also handing back the file's text (malloc'ed, NUL-terminated, *len
 * bytes) when it parses, for messages that say where in it (jsonl_err_line). */
int jsonl_load_text(const char *path, size_t max, jv *out, char **text, size_t *len, struct err *err);

/* Writes v (consumed) as one compact line, text kept as UTF-8 (no \u escapes),
 * keys in their order, as jq 1.6's jv_dump_string(v, 0) writes it, except that
 * a number read as a float (jsonl_number_is_float) keeps a fraction: "100.0"
 * where jq writes 100, so that the next reader sees a float too. Returns 0,
 * or -1 with err "write error: <errno>" (the caller adds the file name) or,
 * for an invalid v, "cannot write an invalid JSON value". Buffered: a late
 * error shows at fflush/outfile_commit. */
int jsonl_write(FILE *f, jv v, struct err *err);
/* jsonl_write into memory: the line (its newline included) is appended to
 * *buf, a malloc'ed block of *cap bytes holding *len (all three updated; *buf
 * may be NULL with *cap 0). On error *len is left as it was. */
int jsonl_format(jv v, char **buf, size_t *len, size_t *cap, struct err *err);
/* v (consumed) as jsonl_write writes it, without the newline, as a jv string
 * (for JSON text inside a prompt or a record, where jq 1.6 would write
 * 1000000000000000001 as 1e+18); invalid when out of memory. */
jv jsonl_text(jv v);
/* The writer under both, for lines built a piece at a time: a malloc'ed
 * block p of cap bytes holding n (p may be NULL with cap 0). Running out of
 * memory sets oom, after which puts do nothing; the caller reports it and
 * takes n back to where its line began. */
struct jsonl_buf {
	char *p;
	size_t n, cap;
	int oom;
};
void jsonl_put_grow(struct jsonl_buf *b, const char *s, size_t n);   /* jsonl_put where b has no room */
/* the bytes as they are (inline: a record is written in hundreds of short pieces) */
static inline void jsonl_put(struct jsonl_buf *b, const char *s, size_t n)
{
	if (n && !b->oom && n <= b->cap - b->n) {
		memcpy(b->p + b->n, s, n);
		b->n += n;
	} else {
		jsonl_put_grow(b, s, n);
	}
}
void jsonl_put_string(struct jsonl_buf *b, const char *s, size_t n); /* a JSON string of s (UTF-8) */
void jsonl_put_escaped(struct jsonl_buf *b, const char *s, size_t n); /* the same without its quotes */
void jsonl_put_value(struct jsonl_buf *b, jv v);                     /* v, consumed, as jsonl_write */
void jsonl_put_jd(struct jsonl_buf *b, const struct jd *d);          /* d as jsonl_put_value writes its jv */
void jsonl_put_long(struct jsonl_buf *b, long x);                    /* x in decimal, as jq prints an integer */
void jsonl_put_pairs(struct jsonl_buf *b, const long *v, size_t npairs); /* [[v0,v1],[v2,v3],...] */
/* Room for more bytes past b->n (0), or -1 with b->oom set: for a caller
 * writing into b->p itself. */
int jsonl_reserve(struct jsonl_buf *b, size_t more);

/* Where the value at path lies in the JSON text s[0..n), found by scanning,
 * without parsing the rest: path as messages write it, keys joined by '.',
 * array indexes in brackets, a key in double quotes where it is not a plain
 * name ("tools[2].function.name", "intents[0].\"colour\"", "" for the whole
 * text). A repeated key means its last value, as jq keeps. Returns 1 with the
 * value at s[*a, *b), 0 when the path names nothing there, -1 when the text
 * is not JSON as far as the scan goes. The scan stops at the value found when
 * the rest of the text cannot name its key again (neither "key" nor a \u
 * escape of one of its characters follows) and at an array's element: the
 * rest is then only checked to end in the closing bracket. For JSON the
 * answer is the same; text broken past that point is not seen to be. The
 * rest of a text of 4 MB or more is searched for the key in parts at once,
 * on threads joined before the answer (jsonl_key_may_recur). */
int jsonl_locate(const char *s, size_t n, const char *path, size_t *a, size_t *b);
/* jsonl_locate of a top-level key in two steps, for a caller with work to
 * do meanwhile: where the value of the key's first member begins (*a), the
 * value itself not scanned (its end is the caller's to find: a prefix
 * parse, jsonl_parse_jd_keep's used) and the rest of the text not searched
 * for the key (a key that is not a plain name is searched as jsonl_locate
 * does); then jsonl_key_may_recur(s + end, n - end, key) says whether a
 * later member may name it again, which jsonl_locate answers. */
int jsonl_locate_start(const char *s, size_t n, const char *key, size_t *a);
/* Whether the JSON text s[0..n) may name key again: the rest-of-the-text
 * search of jsonl_locate, 1 when unsure (4 MB and more: in parts of 2 MB
 * or more on as many threads as CPUs, at most 16). */
int jsonl_key_may_recur(const char *s, size_t n, const char *key);
/* Makes jsonl_key_may_recur cut every text into `parts` pieces (1 to 16),
 * whatever its size and the CPUs (0: as by default); returns the number
 * set before. For a test to cut texts where it chooses; not while other
 * threads scan. */
int jsonl_recur_parts(int parts);
/* The elements of the JSON array s[0..n) one by one, scanned as jsonl_locate
 * scans: *at starts at 0; each call sets s[*a, *b) to the next element and
 * returns 1, then 0 after the last, or -1 when the text is not an array as far
 * as the scan goes (checked as the elements are reached). */
int jsonl_array_next(const char *s, size_t n, size_t *at, size_t *a, size_t *b);
/* The members of the JSON object s[0..n) one by one, as jsonl_array_next
 * gives elements: s[*ka, *kb) the key's JSON string (quotes included; see
 * jsonl_key_is), s[*a, *b) its value. A repeated key comes each time. */
int jsonl_object_next(const char *s, size_t n, size_t *at, size_t *ka, size_t *kb, size_t *a, size_t *b);
/* Whether the JSON string s[0..n) (quotes included, escapes allowed) is key. */
int jsonl_key_is(const char *s, size_t n, const char *key);
/* The JSON string whose text (quotes included) begins s[0..n), read as
 * the record parser reads strings: returns the length of its text, with
 * its decoded bytes at *text, *len: s itself past the quote when it has no
 * escape, else out, where at most that length is written (out NULL: 0 is
 * returned instead). -1 when the parser would not take it: it does not
 * end, holds a control byte or bytes that are not UTF-8, or an escape the
 * parser leaves to jq (\u0000, a lone surrogate). *plain (NULL allowed)
 * says whether the text is s's own bytes (no escape) and holds no byte a
 * JSON string escapes (no 7F): written back, it is the same bytes. */
long jsonl_string_decode(const char *s, size_t n, char *out, const char **text, size_t *len, int *plain);
/* s[0..n) read as the record parser reads a number (0 with *out), or -1
 * when it is not one the parser takes itself (it would go to jq). */
int jsonl_number_decode(const char *s, size_t n, struct jd *out);
/* The length of the JSON value s[0..n) begins with, its syntax checked only
 * as far as finding its end takes, or 0 (jsonl_locate's scan). */
size_t jsonl_value_len(const char *s, size_t n);
/* The four hex digits at s (either case) into *u: 0, or -1 when they are not. */
int jsonl_hex4(const char *s, unsigned *u);
/* The 1-based line of byte off of s. */
long jsonl_line_at(const char *s, size_t off);
/* An error about a value of the JSON file text s[0..n), err->msg
 * "FILE: PATH: what", becomes "FILE:LINE: PATH: what", LINE being where the
 * deepest part of PATH found in s starts; any other message is left as it is. */
void jsonl_err_line(struct err *err, const char *file, const char *s, size_t n);

#endif
