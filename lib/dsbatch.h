/* dsbatch: bulk chat requests from JSON Lines (ds-gen --requests).
 *
 * Each input line is an object with "messages" (a chat request) and
 * optionally the chat-completions parameters of that one request (model,
 * temperature, top_p, max_tokens, max_completion_tokens, stop, seed, tools,
 * tool_choice, response_format, presence_penalty, frequency_penalty,
 * logit_bias, logprobs, top_logprobs, parallel_tool_calls, user,
 * reasoning_effort); the run's defaults fill the parameters a line lacks.
 * Other keys only pass through. Each output line is the input object plus
 * "id" (the line's own, else "line:N"), "response" (the answer's message:
 * role, content, tool_calls), "finish_reason" and "usage".
 *
 * The whole input is read and checked before any request is sent, so a bad
 * line stops the run with nothing spent. Ids must be unique: they are what
 * a resumed run skips.
 */
#ifndef LORAPIPE_DSBATCH_H
#define LORAPIPE_DSBATCH_H

#include <jv.h>

#include "dsgen.h"
#include "http.h"
#include "msg.h"

struct dsbatch_opts {
	const char *model;        /* NULL: the line's, or none */
	double temperature;       /* < 0: not sent unless the line has it */
	long max_tokens;          /* 0: not sent unless the line has it */
	int json_object;          /* response_format json_object for lines without one */
	int item_retries;         /* re-asks of a line whose answer --validate rejects */
	struct dsgen_filter *validate; /* borrowed, or NULL */
};

struct dsbatch_counts {
	long target, present, written, rejected, failed_requests, unknown_ids;
};

struct dsbatch;

/* Reads and checks every line of path ("-": standard input). Errors name
 * the line: "in.jsonl:3: \"messages\" must be a non-empty array of messages". */
struct dsbatch *dsbatch_load(const char *path, const struct dsbatch_opts *o, struct err *err);
void dsbatch_free(struct dsbatch *b);
/* A record of an earlier run (consumed): its id is not asked again. */
void dsbatch_add_existing(struct dsbatch *b, jv rec);
/* After the last dsbatch_add_existing: counts present and unknown ids. */
void dsbatch_existing_done(struct dsbatch *b);
/* As http_next: 1 with *req, 0 when nothing is left to send now. */
int dsbatch_next(struct dsbatch *b, struct http_request *req);
/* As dsgen_answer: *records the output line (0 or 1), *rejects what was
 * rejected or failed ({"request","reason","item"}). */
void dsbatch_answer(struct dsbatch *b, struct http_request *req, const struct http_result *res, jv *records,
		    jv *rejects);
const char *dsbatch_request_name(const struct http_request *req);
const struct dsbatch_counts *dsbatch_get_counts(const struct dsbatch *b);

#endif
