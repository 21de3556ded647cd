/* http: a client of OpenAI-compatible chat-completions endpoints, on libcurl's
 * multi interface.
 *
 * The caller hands requests over through a callback (http_next) and gets each
 * one back exactly once (http_done): answered, failed, or abandoned when the
 * run stops. In between this module owns the HTTP side: up to `concurrency`
 * transfers at once on reused connections, a timeout per attempt, retries
 * with exponential backoff and jitter on 429, 408, 5xx, timeouts, connection
 * errors and replies that are not a chat completion (malformed, truncated,
 * wrong content type), honouring Retry-After (seconds or an HTTP date) and
 * retry-after-ms; rate limits in requests and tokens per minute; counts of
 * requests, retries, failures and tokens from each reply's "usage".
 *
 * 401, 403 and 404 are fatal: no other request can succeed either, so the
 * run stops. Other 4xx fail the one request at once.
 *
 * The API key only goes into the Authorization header; error messages are
 * scrubbed of it in case a server echoes it back.
 */
#ifndef LORAPIPE_HTTP_H
#define LORAPIPE_HTTP_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include <jv.h>

#include "msg.h"

struct http_opts {
	const char *url;          /* the full endpoint: BASE/chat/completions */
	const char *api_key;      /* NULL or "": no Authorization header (local servers) */
	const char *const *headers; /* extra "Name: value" lines */
	int nheaders;
	int concurrency;          /* transfers at once, >= 1 */
	double timeout_s;         /* per attempt, whole transfer */
	double connect_timeout_s;
	int retries;              /* attempts after the first */
	double retry_base_s;      /* first backoff; doubles each retry */
	double retry_max_s;       /* backoff cap; Retry-After is honoured up to max(this, 120 s) */
	double rpm, tpm;          /* requests and tokens per minute; 0: no limit */
	uint64_t seed;            /* of the jitter */
};

/* One request. The caller fills body (malloc'd; this module frees it after
 * http_done), id (sent as X-Client-Request-Id, used in messages), est_tokens (for
 * the tokens-per-minute limit: prompt and max completion tokens) and user. */
struct http_request {
	char *body;
	size_t len;
	char id[96];
	long est_tokens;
	void *user;
};

enum http_outcome {
	HTTP_OK,        /* a JSON object with "choices" came back */
	HTTP_FAILED,    /* not retryable, or out of retries: error says why */
	HTTP_FATAL,     /* 401/403/404: the run stops after this */
	HTTP_ABANDONED, /* the run stopped (interrupt, fatal error) before an answer */
};

struct http_result {
	enum http_outcome outcome;
	jv response;     /* HTTP_OK: the reply (owned by this module; jv_copy to keep) */
	int attempts;
	long status;     /* the last HTTP status, 0 when none came */
	char error[600]; /* HTTP_FAILED/FATAL: "HTTP 503: <server's message>", "timed out after 2.0 s" ... */
};

struct http_stats {
	uint64_t requests;  /* attempts sent */
	uint64_t ok, retries, failures, abandoned;
	uint64_t prompt_tokens, completion_tokens;
};

/* Returns 1 with *req filled, 0 when there is nothing to send now (it is
 * asked again after the next answer), -1 to stop the run. */
typedef int (*http_next_fn)(void *ctx, struct http_request *req);
/* Called once per request. Returns 0, or -1 to stop the run (in-flight
 * requests are then abandoned). The request's body is freed after it. */
typedef int (*http_done_fn)(void *ctx, struct http_request *req, struct http_result *res);

struct http_client;

/* Returns NULL with err set (bad options, libcurl failing to start). */
struct http_client *http_new(const struct http_opts *o, struct err *err);
void http_free(struct http_client *c);

/* Runs until next has nothing more and nothing is in flight or waiting for a
 * retry, until a callback returns -1, a fatal reply comes, or *stop becomes
 * non-zero (checked at least every 100 ms). Returns 0 when it ran out of
 * work, 1 when stopped by *stop, -1 with err set when a callback or a fatal
 * reply stopped it (err holds the fatal reply's message; a callback's own
 * error is the callback's to keep). */
int http_run(struct http_client *c, http_next_fn next, http_done_fn done, void *ctx,
	     volatile sig_atomic_t *stop, struct err *err);

const struct http_stats *http_get_stats(const struct http_client *c);

/* The seconds a Retry-After value asks for: delay-seconds (fractions allowed)
 * or an HTTP date relative to now; -1 when it is neither. */
double http_retry_after(const char *value, double now_epoch);

#endif
