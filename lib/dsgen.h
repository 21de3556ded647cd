/* dsgen: synthetic tool-call conversations from a spec (ds-gen --spec).
 *
 * A spec (a JSON file, see man/ds-gen.1) names the system prompt, the tools,
 * intents (a tool, a description, example utterances, argument hints),
 * negatives (topics that need no tool), languages, the number of
 * conversations and the share of negatives. dsgen turns it into buckets, one
 * per (intent or negative, language), each with a target count balanced by
 * weight; every slot k of a bucket has a deterministic record id, a hash of
 * the seed and "intent:NAME:LANG:k" (or "negative:..."), so a rerun knows
 * which slots its output already holds.
 *
 * Requests ask the API for several utterances at once as JSON; replies are
 * parsed leniently (the first JSON object or array in the text), each
 * utterance checked (language script, tool arguments against the tool's
 * JSON schema, an answer for negatives), deduplicated on normalized text
 * (case-folded, accents and punctuation dropped, spaces collapsed) across the
 * whole set, and assembled into DESIGN.md format-1 records:
 *   {"id","messages":[system?, user, assistant tool call | answer],"tools",
 *    "intent"|"negative","lang"}
 * A bucket whose replies keep being rejected stops after a bounded number of
 * requests, and the run reports the set incomplete.
 *
 * Ownership follows jq's rule: jv arguments are consumed unless said otherwise.
 */
#ifndef LORAPIPE_DSGEN_H
#define LORAPIPE_DSGEN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jv.h>

#include "http.h"
#include "msg.h"

/* ---------------------------------------------------------------- the spec */

struct dsgen_lang {
	char *code, *name; /* "ru", "Russian" */
};

struct dsgen_item {
	char *name;
	int negative;
	char *tool;         /* intents: the tool's name */
	jv params;          /* intents: the tool's parameters schema */
	int has_required;   /* the schema requires some argument */
	char *description;
	char *hints;        /* intents: how to fill the arguments; may be NULL */
	jv examples;        /* array of {"text"[, "arguments"]} */
	double weight;
};

struct dsgen_spec {
	char *path;
	char *system;       /* NULL: no system message */
	jv tools;           /* the OpenAI tool list, as given */
	struct dsgen_lang *langs;
	int nlangs;
	struct dsgen_item *items;
	int nitems;
	long conversations;
	double negative_share;
	int per_request;
	int args_string;    /* tool_call_format "string": arguments as JSON text */
};

/* Loads and checks a spec. Errors name the file and the field:
 * "spec.json: intents[2].tool: unknown tool \"get_balanse\" (tools: ...)". */
struct dsgen_spec *dsgen_spec_load(const char *path, struct err *err);
void dsgen_spec_free(struct dsgen_spec *s);

/* ------------------------------------------------------ shared by both modes */

/* A set of 64-bit hashes (ids, normalized texts). */
struct dsgen_set {
	uint64_t *v;
	size_t n, cap;
};
/* 1 when added, 0 when already there, -1 out of memory. */
int dsgen_set_add(struct dsgen_set *s, uint64_t h);
int dsgen_set_has(const struct dsgen_set *s, uint64_t h);
void dsgen_set_free(struct dsgen_set *s);

/* A 64-bit hash of the seed and a key, and its 16 hex digits (out[17]). */
uint64_t dsgen_hash(uint64_t seed, const char *key, size_t len);
void dsgen_hex(uint64_t h, char out[17]);

/* The text with case folded, accents, punctuation and symbols dropped and
 * white space collapsed (malloc'd; NULL when s is not UTF-8). Two texts with
 * the same normalized form are duplicates. */
char *dsgen_normalize(const char *s);

/* The first JSON value in text that parses (the whole text first, then from
 * each '{' or '[' to its matching bracket): 0 with *out set, -1 when none. */
int dsgen_extract_json(const char *text, size_t len, jv *out);

/* Reads an existing output file for a resumed run: every complete line is
 * handed to fn (a new reference); a last line cut short (a crash while it
 * was written: no final newline, or not JSON) is cut off the file. A bad
 * line before the last is an error "PATH:LINE: ...". A missing file is
 * an empty one. fn returns 0 or -1 (with err set) to stop. Returns the
 * number of records, or -1. *cut is set to the bytes cut off. */
long dsgen_scan_output(const char *path, int (*fn)(void *ctx, jv rec, long line, struct err *err), void *ctx,
		       long *cut, struct err *err);

/* A --validate jq filter: a record is accepted when the filter's first
 * output is neither false nor null (and there is one). */
struct dsgen_filter;
struct dsgen_filter *dsgen_filter_new(const char *program, struct err *err);
void dsgen_filter_free(struct dsgen_filter *f);
/* 1 accepted, 0 rejected, -1 the filter failed (err set). rec is not consumed. */
int dsgen_filter_accepts(struct dsgen_filter *f, jv rec, struct err *err);

/* --------------------------------------------------------------- generation */

enum dsgen_format {
	DSGEN_FORMAT_JSON_SCHEMA, /* response_format json_schema with the items' schema */
	DSGEN_FORMAT_JSON_OBJECT, /* response_format json_object */
	DSGEN_FORMAT_JSON_OBJECT_SCHEMA, /* json_object with "schema" beside (llama-cpp-python's server) */
	DSGEN_FORMAT_NONE,        /* no response_format: the prompt alone asks for JSON */
};

struct dsgen_opts {
	uint64_t seed;
	const char *model;        /* NULL: no "model" in requests */
	double temperature;       /* < 0: not sent */
	long max_tokens;          /* 0: not sent */
	enum dsgen_format format;
	long conversations;       /* 0: the spec's */
	int per_request;          /* 0: the spec's */
	int item_retries;         /* extra requests a bucket may make beyond what its count needs */
	struct dsgen_filter *validate; /* NULL or a --validate filter (borrowed) */
};

struct dsgen_counts {
	long target, present, written;
	long rejected, duplicates, surplus, failed_requests, unknown_ids;
};

struct dsgen;

/* Plans the buckets. Returns NULL with err set. spec is borrowed. */
struct dsgen *dsgen_new(const struct dsgen_spec *spec, const struct dsgen_opts *o, struct err *err);
void dsgen_free(struct dsgen *g);

/* A record of an earlier run (from dsgen_scan_output; consumed): fills its
 * slot and its text joins the duplicate check. Records with ids of no slot
 * (another seed or spec) are counted in unknown_ids and left alone. */
void dsgen_add_existing(struct dsgen *g, jv rec);

/* The next request, as http_next wants it: 1, or 0 when every bucket is
 * full, waiting for its requests in flight, or out of requests. */
int dsgen_next(struct dsgen *g, struct http_request *req);

/* The answer to a request from dsgen_next (req->user is dsgen's; it is freed
 * here). On an answer, *records gets the new records to write (an array),
 * *rejects the rejected utterances ({"request","reason","item"} each).
 * For a failed or abandoned request both are empty arrays. */
void dsgen_answer(struct dsgen *g, struct http_request *req, const struct http_result *res, jv *records,
		  jv *rejects);

/* A readable name of a request ("intent:get_balance:ru:r2"), valid while
 * the request is. */
const char *dsgen_request_name(const struct http_request *req);

const struct dsgen_counts *dsgen_get_counts(const struct dsgen *g);

#endif
