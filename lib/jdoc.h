/* jdoc: JSON values in an arena, read-only once made.
 *
 * ds-fmt's records go through several steps that each read them (the chat
 * checks, the template's context, the line written); with libjq's jv every
 * object lookup hashes the key (about 450 instructions) and every value
 * touched is reference-counted, which was most of a record's time. A jd is
 * a plain tree: kinds as JSON's, strings and children as pointers and
 * counts, in an arena freed or reset whole.
 *
 * The values are jq's: numbers are doubles, marked when written with a
 * fraction or an exponent (a float to json.loads, printed "1.0" by a
 * template; jsonl_number_is_float is the same mark on a jv), but for an
 * integer of 16 to 19 digits, which json.loads keeps exact and a double
 * would round (an order id): that one is held whole (exact); a longer one
 * is jq's double, marked rounded (json.loads keeps it whole); strings are
 * UTF-8, NUL-terminated and counted (they may hold NUL); an object keeps its
 * members in document order, each key once (a repeated key keeps its first
 * place and its last value, as jq does).
 *
 * lib/jsonl makes them (parsing, and from and to jv) and writes them.
 */
#ifndef LORAPIPE_JDOC_H
#define LORAPIPE_JDOC_H

#include <stddef.h>
#include <stdint.h>

enum jd_kind { JD_NULL, JD_FALSE, JD_TRUE, JD_NUMBER, JD_STRING, JD_ARRAY, JD_OBJECT };

struct jd_member;
/* 16 bytes: returned in two registers, not built on the stack and read back
 * (a byte stored, then 16 read over it, stalls the load). */
struct jd {
	uint8_t kind;         /* enum jd_kind */
	uint8_t is_float : 1; /* JD_NUMBER: written with a fraction or an exponent */
	uint8_t shared : 1;   /* the value of a jd_shared block (jd_shared_of) */
	uint8_t exact : 1;    /* JD_NUMBER: the integer is u.i, not u.num */
	uint8_t rounded : 1;  /* JD_NUMBER: an integer past 64 bits, which u.num (jq's) rounds */
	uint32_t n;           /* bytes of a string, items of an array, members of an object */
	union {
		double num;
		int64_t i;
		const char *s;
		const struct jd *items;
		const struct jd_member *members;
	} u;
};
struct jd_member {
	struct jd key; /* a JD_STRING */
	struct jd val;
};

/* Blocks handed out from the front, freed or reset whole. An allocation
 * that fails returns NULL and sets oom, which stays set until a reset. */
struct jd_arena {
	struct jd_block *head;
	int oom;
	int rounded; /* a number parsed into it is marked rounded (see struct jd); until a reset */
};
void *jd_alloc(struct jd_arena *a, size_t n); /* 8-byte aligned, not zeroed */
void jd_arena_reset(struct jd_arena *a);      /* empties a, keeping a block for what comes next */
void jd_arena_free(struct jd_arena *a);

static inline struct jd jd_null(void) { return (struct jd){.kind = JD_NULL}; }
static inline struct jd jd_bool(int b) { return (struct jd){.kind = b ? JD_TRUE : JD_FALSE}; }
static inline struct jd jd_number(double d, int is_float)
{
	return (struct jd){.kind = JD_NUMBER, .is_float = (uint8_t)(is_float != 0), .u.num = d};
}
static inline struct jd jd_int(int64_t i) { return (struct jd){.kind = JD_NUMBER, .exact = 1, .u.i = i}; }
/* A number's value as a double (an exact integer rounded). */
static inline double jd_num(const struct jd *v) { return v->exact ? (double)v->u.i : v->u.num; }
/* v and all it holds copied into a: 0, or -1 with a->oom set. */
int jd_copy(struct jd_arena *a, const struct jd *v, struct jd *out);
/* A copy of s[0..n) in a (NUL added); null with a->oom set when out of memory. */
struct jd jd_string(struct jd_arena *a, const char *s, size_t n);
/* The value of key in the object o, or NULL (o is not an object, or has no such key). */
const struct jd *jd_get(const struct jd *o, const char *key);
/* Whether the string s is text (NUL-terminated, compared whole). */
int jd_is(const struct jd *s, const char *text);
/* jq's equality (jv_equal): numbers by value (two integers held whole
 * exactly, as json.loads' ints), strings by bytes, arrays item by item,
 * objects as sets of members. */
int jd_equal(const struct jd *a, const struct jd *b);

/* A value kept past one arena: jsonl's memo shares the long values records
 * repeat (the tool list) from one record to the next, and the template's
 * cache knows them again by their block. A block is counted: its holders
 * take and drop references; one thread's (the counts are not atomic). */
struct jd_shared;
/* A deep copy of v in a block of its own, one reference held; NULL when out
 * of memory. Its value (jd_shared_value) has shared set. */
struct jd_shared *jd_shared_new(const struct jd *v);
/* The same for a value made in a, taking a's blocks over instead of copying
 * the value (a is left empty). NULL when out of memory (a is then empty, v
 * gone). */
struct jd_shared *jd_shared_adopt(struct jd_arena *a, const struct jd *v);
const struct jd *jd_shared_value(const struct jd_shared *s);
/* The block v is the value of (v, or a copy of that struct jd), or NULL:
 * strings, arrays and objects only. */
struct jd_shared *jd_shared_of(const struct jd *v);
struct jd_shared *jd_shared_ref(struct jd_shared *s);
void jd_shared_unref(struct jd_shared *s);

#endif
