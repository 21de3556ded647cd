/* http: chat-completions requests on libcurl's multi interface (see http.h). */
#include "http.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "jsonl.h"
#include "progress.h"
#include "rng.h"

#define MAX_REPLY ((size_t)64 << 20) /* a chat completion is never this large */
#define RETRY_AFTER_CAP 120.0        /* seconds: longer Retry-After values are cut to this (or retry_max_s) */

/* A request between http_next and http_done. */
struct job {
	struct http_request req;
	int attempts;
	long status;
	double due;       /* monotonic time of the next attempt */
	char error[600];  /* why the last attempt failed */
};

struct slot {
	CURL *easy;
	struct curl_slist *hdrs;
	struct job *job;  /* NULL when free */
	char *buf;        /* the reply's body */
	size_t len, cap;
	int too_big;
};

/* A token bucket: `rate` units a second, at most `cap` saved up; a taker may
 * overdraw (a request bigger than the bucket still goes), the next waits. */
struct bucket {
	double rate, cap, level, last;
};

struct http_client {
	struct http_opts o;
	char *url, *key;
	char **headers;
	CURLM *multi;
	struct slot *slots;
	int nslots, active;
	struct job **waiting; /* retries not due yet */
	int nwaiting, capwaiting;
	struct bucket req_bucket, tok_bucket;
	uint64_t rng;
	struct http_stats st;
};

static int curl_started;

static void bucket_init(struct bucket *b, double per_minute, double now)
{
	b->rate = per_minute / 60.0;
	b->cap = b->rate > 1 ? b->rate : 1; /* one second's worth, at least one unit */
	b->level = b->cap;
	b->last = now;
}

static void bucket_refill(struct bucket *b, double now)
{
	if (b->rate <= 0)
		return;
	b->level += (now - b->last) * b->rate;
	if (b->level > b->cap)
		b->level = b->cap;
	b->last = now;
}

/* Seconds until the bucket holds more than `need` units (0: now). Requests
 * need a whole one saved; tokens only a positive level, since a request's
 * size is a guess until its usage comes back. */
static double bucket_wait(const struct bucket *b, double need)
{
	if (b->rate <= 0 || b->level > need)
		return 0;
	return (need - b->level + 1e-3) / b->rate;
}

static void bucket_take(struct bucket *b, double n)
{
	if (b->rate > 0)
		b->level -= n;
}

static char *xstrdup(const char *s)
{
	return s ? strdup(s) : NULL;
}

struct http_client *http_new(const struct http_opts *o, struct err *err)
{
	if (!o->url || !*o->url)
		return err_set(err, "no endpoint URL"), NULL;
	if (o->concurrency < 1)
		return err_set(err, "concurrency must be at least 1"), NULL;
	if (!curl_started) {
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			return err_sys(err, "libcurl failed to start"), NULL;
		curl_started = 1;
	}
	/* A URL libcurl cannot parse is the user's mistake: say so before any request. */
	CURLU *u = curl_url();
	CURLUcode uc = u ? curl_url_set(u, CURLUPART_URL, o->url, 0) : CURLUE_OUT_OF_MEMORY;
	char *scheme = NULL;
	if (uc == CURLUE_OK)
		uc = curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
	int web = scheme && (!strcmp(scheme, "http") || !strcmp(scheme, "https"));
	curl_free(scheme);
	curl_url_cleanup(u);
	if (uc != CURLUE_OK)
		return err_set(err, "bad endpoint URL \"%s\": %s", o->url, curl_url_strerror(uc)), NULL;
	if (!web)
		return err_set(err, "bad endpoint URL \"%s\": only http:// and https:// are supported", o->url), NULL;

	struct http_client *c = calloc(1, sizeof *c);
	if (!c)
		return err_sys(err, "out of memory"), NULL;
	c->o = *o;
	c->url = xstrdup(o->url);
	c->key = o->api_key && *o->api_key ? xstrdup(o->api_key) : NULL;
	c->o.url = c->url;
	c->o.api_key = c->key;
	c->headers = calloc((size_t)o->nheaders + 1, sizeof *c->headers);
	for (int i = 0; c->headers && i < o->nheaders; i++)
		c->headers[i] = xstrdup(o->headers[i]);
	c->o.headers = (const char *const *)c->headers;
	c->multi = curl_multi_init();
	c->nslots = o->concurrency;
	c->slots = calloc((size_t)c->nslots, sizeof *c->slots);
	c->rng = o->seed ^ 0x68747470ull;
	double now = progress_now();
	bucket_init(&c->req_bucket, o->rpm, now);
	bucket_init(&c->tok_bucket, o->tpm, now);
	if (!c->url || !c->headers || !c->multi || !c->slots || (o->api_key && *o->api_key && !c->key)) {
		http_free(c);
		return err_sys(err, "out of memory"), NULL;
	}
	return c;
}

void http_free(struct http_client *c)
{
	if (!c)
		return;
	for (int i = 0; c->slots && i < c->nslots; i++) {
		struct slot *s = &c->slots[i];
		if (s->easy) {
			if (s->job)
				curl_multi_remove_handle(c->multi, s->easy);
			curl_easy_cleanup(s->easy);
		}
		curl_slist_free_all(s->hdrs);
		free(s->buf);
	}
	free(c->slots);
	if (c->multi)
		curl_multi_cleanup(c->multi);
	for (int i = 0; c->headers && i < c->o.nheaders; i++)
		free(c->headers[i]);
	free(c->headers);
	if (c->key) {
		memset(c->key, 0, strlen(c->key));
		free(c->key);
	}
	free(c->url);
	free(c->waiting);
	free(c);
}

const struct http_stats *http_get_stats(const struct http_client *c)
{
	return &c->st;
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
	struct slot *s = arg;
	size_t add = size * n;
	if (s->len + add + 1 > MAX_REPLY) {
		s->too_big = 1;
		return 0; /* aborts the transfer (CURLE_WRITE_ERROR) */
	}
	if (s->len + add + 1 > s->cap) {
		size_t cap = s->cap ? s->cap : 4096;
		while (cap < s->len + add + 1)
			cap *= 2;
		char *b = realloc(s->buf, cap);
		if (!b) {
			s->too_big = 1;
			return 0;
		}
		s->buf = b, s->cap = cap;
	}
	memcpy(s->buf + s->len, data, add);
	s->len += add;
	s->buf[s->len] = 0;
	return add;
}

/* Replaces every occurrence of the key in s by "***". */
static void scrub(const struct http_client *c, char *s)
{
	if (!c->key || !*c->key)
		return;
	size_t kl = strlen(c->key);
	char *p;
	while ((p = strstr(s, c->key)) != NULL) {
		memmove(p + 3, p + kl, strlen(p + kl) + 1);
		memcpy(p, "***", 3);
	}
}

/* The server's own words about an error reply: error.message, error (a
 * string), message or detail of a JSON body, else the start of the body. */
static void server_message(const struct slot *s, char *out, size_t n)
{
	out[0] = 0;
	if (!s->len)
		return;
	jv v;
	struct err e;
	if (jsonl_parse(s->buf, s->len, "reply", &v, &e) == 0) {
		jv m = jv_invalid();
		if (jv_get_kind(v) == JV_KIND_OBJECT) {
			jv er = jv_object_get(jv_copy(v), jv_string("error"));
			if (jv_get_kind(er) == JV_KIND_OBJECT)
				m = jv_object_get(jv_copy(er), jv_string("message"));
			else if (jv_get_kind(er) == JV_KIND_STRING)
				m = jv_copy(er);
			jv_free(er);
			const char *keys[] = {"message", "detail"};
			for (int i = 0; i < 2 && jv_get_kind(m) != JV_KIND_STRING; i++) {
				jv_free(m);
				m = jv_object_get(jv_copy(v), jv_string(keys[i]));
			}
		}
		if (jv_get_kind(m) == JV_KIND_STRING)
			snprintf(out, n, "%s", jv_string_value(m));
		jv_free(m);
		jv_free(v);
	}
	if (!out[0])
		snprintf(out, n, "%.*s", (int)(s->len < 200 ? s->len : 200), s->buf);
	/* one line, printable */
	for (char *p = out; *p; p++)
		if ((unsigned char)*p < 0x20)
			*p = ' ';
	if (strlen(out) > 300)
		strcpy(out + 297, "...");
}

double http_retry_after(const char *value, double now_epoch)
{
	if (!value)
		return -1;
	while (isspace((unsigned char)*value))
		value++;
	char *end;
	double s = strtod(value, &end);
	if (end != value && isfinite(s) && s >= 0) {
		while (isspace((unsigned char)*end))
			end++;
		if (!*end)
			return s;
	}
	time_t t = curl_getdate(value, NULL);
	if (t < 0)
		return -1;
	double d = (double)t - now_epoch;
	return d > 0 ? d : 0;
}

/* The delay before attempt number `attempts + 1`, honouring what the server asked. */
static double retry_delay(struct http_client *c, struct slot *s, int attempts)
{
	double asked = -1;
	struct curl_header *h;
	if (s && curl_easy_header(s->easy, "retry-after-ms", 0, CURLH_HEADER, -1, &h) == CURLHE_OK) {
		char *end;
		double ms = strtod(h->value, &end);
		if (end != h->value && isfinite(ms) && ms >= 0)
			asked = ms / 1000.0;
	}
	if (asked < 0 && s && curl_easy_header(s->easy, "retry-after", 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
		asked = http_retry_after(h->value, (double)time(NULL));
	if (asked > 0) {
		double cap = c->o.retry_max_s > RETRY_AFTER_CAP ? c->o.retry_max_s : RETRY_AFTER_CAP;
		return asked < cap ? asked : cap;
	}
	double d = c->o.retry_base_s * ldexp(1.0, attempts - 1 < 30 ? attempts - 1 : 30);
	if (d > c->o.retry_max_s)
		d = c->o.retry_max_s;
	return d * (0.5 + 0.5 * rng_uniform(&c->rng)); /* jitter: spreads the herd of retries */
}

static int start(struct http_client *c, struct slot *s, struct job *j, struct err *err)
{
	if (!s->easy) {
		if (!(s->easy = curl_easy_init()))
			return err_sys(err, "libcurl: cannot make a transfer");
		curl_easy_setopt(s->easy, CURLOPT_URL, c->url);
		curl_easy_setopt(s->easy, CURLOPT_POST, 1L);
		curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, on_body);
		curl_easy_setopt(s->easy, CURLOPT_WRITEDATA, s);
		curl_easy_setopt(s->easy, CURLOPT_PRIVATE, s);
		curl_easy_setopt(s->easy, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(s->easy, CURLOPT_TCP_NODELAY, 1L);
		curl_easy_setopt(s->easy, CURLOPT_ACCEPT_ENCODING, "");
		curl_easy_setopt(s->easy, CURLOPT_USERAGENT, "lorapipe-ds-gen/0.1");
		if (c->o.timeout_s > 0)
			curl_easy_setopt(s->easy, CURLOPT_TIMEOUT_MS, (long)(c->o.timeout_s * 1000));
		if (c->o.connect_timeout_s > 0)
			curl_easy_setopt(s->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)(c->o.connect_timeout_s * 1000));
	}
	curl_slist_free_all(s->hdrs);
	s->hdrs = NULL;
	char line[160];
	struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
	if (h)
		h = curl_slist_append(h, "Accept: application/json");
	/* no "Expect: 100-continue" round trip before bodies over 1 KiB (a prompt is a few) */
	if (h)
		h = curl_slist_append(h, "Expect:");
	if (h && c->key) {
		/* built in a buffer that is wiped at once: the key lives in the list only */
		size_t n = strlen(c->key) + 32;
		char *auth = malloc(n);
		if (auth) {
			snprintf(auth, n, "Authorization: Bearer %s", c->key);
			h = curl_slist_append(h, auth);
			memset(auth, 0, n);
			free(auth);
		} else {
			curl_slist_free_all(h);
			h = NULL;
		}
	}
	if (h && j->req.id[0]) {
		snprintf(line, sizeof line, "X-Client-Request-Id: %s", j->req.id);
		h = curl_slist_append(h, line);
	}
	for (int i = 0; h && i < c->o.nheaders; i++)
		h = curl_slist_append(h, c->headers[i]);
	if (!h)
		return err_sys(err, "out of memory");
	s->hdrs = h;
	curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(s->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)j->req.len);
	curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, j->req.body);
	s->len = 0;
	s->too_big = 0;
	s->job = j;
	j->attempts++;
	if (curl_multi_add_handle(c->multi, s->easy) != CURLM_OK) {
		s->job = NULL;
		return err_sys(err, "libcurl: cannot start a transfer");
	}
	c->active++;
	c->st.requests++;
	return 0;
}

static int finish(struct http_client *c, struct job *j, enum http_outcome out, jv response, http_done_fn done,
		  void *ctx)
{
	struct http_result r = {.outcome = out, .response = response, .attempts = j->attempts, .status = j->status};
	snprintf(r.error, sizeof r.error, "%s", j->error);
	scrub(c, r.error);
	if (out == HTTP_OK)
		c->st.ok++;
	else if (out == HTTP_ABANDONED)
		c->st.abandoned++;
	else
		c->st.failures++;
	int rc = done(ctx, &j->req, &r);
	jv_free(response);
	free(j->req.body);
	free(j);
	return rc;
}

static int wait_push(struct http_client *c, struct job *j)
{
	if (c->nwaiting == c->capwaiting) {
		int cap = c->capwaiting ? 2 * c->capwaiting : 16;
		struct job **w = realloc(c->waiting, (size_t)cap * sizeof *w);
		if (!w)
			return -1;
		c->waiting = w, c->capwaiting = cap;
	}
	c->waiting[c->nwaiting++] = j;
	return 0;
}

/* The retry that is due first (removed), or NULL when none is due by now. */
static struct job *wait_pop_due(struct http_client *c, double now)
{
	int best = -1;
	for (int i = 0; i < c->nwaiting; i++)
		if (c->waiting[i]->due <= now && (best < 0 || c->waiting[i]->due < c->waiting[best]->due))
			best = i;
	if (best < 0)
		return NULL;
	struct job *j = c->waiting[best];
	c->waiting[best] = c->waiting[--c->nwaiting];
	return j;
}

enum verdict { V_OK, V_RETRY, V_FAIL, V_FATAL };

/* Judges a finished attempt; fills j->error and *reply (on V_OK). */
static enum verdict judge(struct http_client *c, struct slot *s, CURLcode rc, jv *reply)
{
	struct job *j = s->job;
	char msg[400];
	long status = 0;
	curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
	j->status = status;
	if (rc != CURLE_OK) {
		if (rc == CURLE_OPERATION_TIMEDOUT)
			snprintf(j->error, sizeof j->error, "timed out after %.1f s", c->o.timeout_s);
		else if (s->too_big)
			snprintf(j->error, sizeof j->error, "reply larger than %zu MiB", MAX_REPLY >> 20);
		else if (rc == CURLE_URL_MALFORMAT || rc == CURLE_UNSUPPORTED_PROTOCOL)
			return snprintf(j->error, sizeof j->error, "%s", curl_easy_strerror(rc)), V_FATAL;
		else
			snprintf(j->error, sizeof j->error, "connection error: %s", curl_easy_strerror(rc));
		return V_RETRY;
	}
	if (status < 200 || status > 299) {
		server_message(s, msg, sizeof msg);
		snprintf(j->error, sizeof j->error, "HTTP %ld%s%s", status, msg[0] ? ": " : "", msg);
		if (status == 401 || status == 403 || status == 404)
			return V_FATAL;
		if (status == 408 || status == 409 || status == 425 || status == 429 || status >= 500)
			return V_RETRY;
		return V_FAIL;
	}
	char *ctype = NULL;
	curl_easy_getinfo(s->easy, CURLINFO_CONTENT_TYPE, &ctype);
	if (ctype && !strstr(ctype, "json")) {
		snprintf(j->error, sizeof j->error, "HTTP %ld with content type \"%.60s\", not JSON", status, ctype);
		return V_RETRY;
	}
	struct err e;
	jv v;
	if (jsonl_parse(s->buf ? s->buf : "", s->len, "reply", &v, &e) < 0) {
		snprintf(j->error, sizeof j->error, "HTTP %ld: %.400s (%zu bytes)", status, e.msg, s->len);
		return V_RETRY;
	}
	jv choices = jv_get_kind(v) == JV_KIND_OBJECT ? jv_object_get(jv_copy(v), jv_string("choices")) : jv_invalid();
	int good = jv_get_kind(choices) == JV_KIND_ARRAY && jv_array_length(jv_copy(choices)) > 0;
	jv_free(choices);
	if (!good) {
		jv_free(v);
		snprintf(j->error, sizeof j->error, "HTTP %ld: reply is not a chat completion (no \"choices\")", status);
		return V_RETRY;
	}
	jv usage = jv_object_get(jv_copy(v), jv_string("usage"));
	if (jv_get_kind(usage) == JV_KIND_OBJECT) {
		jv p = jv_object_get(jv_copy(usage), jv_string("prompt_tokens"));
		jv q = jv_object_get(jv_copy(usage), jv_string("completion_tokens"));
		double pt = jv_get_kind(p) == JV_KIND_NUMBER ? jv_number_value(p) : 0;
		double ct = jv_get_kind(q) == JV_KIND_NUMBER ? jv_number_value(q) : 0;
		if (pt > 0)
			c->st.prompt_tokens += (uint64_t)pt;
		if (ct > 0)
			c->st.completion_tokens += (uint64_t)ct;
		/* the estimate taken from the token bucket, corrected to what was used */
		if (pt + ct > 0)
			bucket_take(&c->tok_bucket, pt + ct - (double)j->req.est_tokens);
		jv_free(p), jv_free(q);
	}
	jv_free(usage);
	*reply = v;
	j->error[0] = 0;
	return V_OK;
}

/* Every request still held, in flight or waiting, handed back as abandoned. */
static void abandon_all(struct http_client *c, http_done_fn done, void *ctx)
{
	for (int i = 0; i < c->nslots; i++) {
		struct slot *s = &c->slots[i];
		if (!s->job)
			continue;
		curl_multi_remove_handle(c->multi, s->easy);
		struct job *j = s->job;
		s->job = NULL;
		c->active--;
		snprintf(j->error, sizeof j->error, "abandoned");
		finish(c, j, HTTP_ABANDONED, jv_invalid(), done, ctx);
	}
	for (int i = 0; i < c->nwaiting; i++) {
		snprintf(c->waiting[i]->error, sizeof c->waiting[i]->error, "abandoned");
		finish(c, c->waiting[i], HTTP_ABANDONED, jv_invalid(), done, ctx);
	}
	c->nwaiting = 0;
}

int http_run(struct http_client *c, http_next_fn next, http_done_fn done, void *ctx,
	     volatile sig_atomic_t *stop, struct err *err)
{
	int source_dry = 0; /* next said "nothing now" since the last answer */
	int rc = 0;
	while (rc == 0) {
		if (stop && *stop) {
			rc = 1;
			break;
		}
		double now = progress_now();
		bucket_refill(&c->req_bucket, now);
		bucket_refill(&c->tok_bucket, now);
		/* Start what may start: due retries first, then new requests. */
		while (rc == 0 && c->active < c->nslots && bucket_wait(&c->req_bucket, 1 - 1e-9) == 0 &&
		       bucket_wait(&c->tok_bucket, 0) == 0) {
			struct job *j = wait_pop_due(c, now);
			if (!j && !source_dry) {
				if (!(j = calloc(1, sizeof *j))) {
					rc = err_sys(err, "out of memory");
					break;
				}
				int got = next(ctx, &j->req);
				if (got <= 0) {
					free(j);
					j = NULL;
					if (got < 0)
						rc = err_sys(err, "cannot make the next request (out of memory?)");
					source_dry = 1;
				} else {
					bucket_take(&c->tok_bucket, (double)j->req.est_tokens);
				}
			}
			if (!j)
				break;
			bucket_take(&c->req_bucket, 1);
			struct slot *s = NULL;
			for (int i = 0; i < c->nslots && !s; i++)
				if (!c->slots[i].job)
					s = &c->slots[i];
			if (start(c, s, j, err) < 0) {
				free(j->req.body);
				free(j);
				rc = -1;
			}
		}
		if (rc)
			break;
		/* next said nothing since the last answer, and no answer can come */
		if (!c->active && !c->nwaiting && source_dry)
			break;
		int running;
		curl_multi_perform(c->multi, &running);
		CURLMsg *m;
		int left, finished = 0;
		while ((m = curl_multi_info_read(c->multi, &left)) != NULL) {
			if (m->msg != CURLMSG_DONE)
				continue;
			struct slot *s = NULL;
			curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&s);
			CURLcode code = m->data.result;
			struct job *j = s->job;
			jv reply = jv_invalid();
			finished++;
			enum verdict v = judge(c, s, code, &reply);
			double delay = 0;
			if (v == V_RETRY && j->attempts <= c->o.retries)
				delay = retry_delay(c, s, j->attempts);
			curl_multi_remove_handle(c->multi, s->easy);
			s->job = NULL;
			c->active--;
			source_dry = 0;
			if (v == V_OK) {
				if (finish(c, j, HTTP_OK, reply, done, ctx) < 0)
					rc = -1;
			} else if (v == V_RETRY && j->attempts <= c->o.retries) {
				c->st.retries++;
				j->due = progress_now() + delay;
				if (wait_push(c, j) < 0) {
					rc = err_sys(err, "out of memory");
					free(j->req.body);
					free(j);
				}
			} else if (v == V_FATAL) {
				char what[700];
				snprintf(what, sizeof what, "%s: %s", c->url, j->error);
				scrub(c, what);
				finish(c, j, HTTP_FATAL, jv_invalid(), done, ctx);
				err_set(err, "%s", what);
				err->code = EXIT_RUNTIME;
				rc = -1;
			} else {
				if (v == V_RETRY && c->o.retries > 0) {
					char more[sizeof j->error];
					snprintf(more, sizeof more, "%s", j->error);
					snprintf(j->error, sizeof j->error, "gave up after %d attempts: %.500s", j->attempts, more);
				}
				if (finish(c, j, HTTP_FAILED, jv_invalid(), done, ctx) < 0)
					rc = -1;
			}
		}
		if (rc)
			break;
		if (finished)
			continue; /* slots came free: fill them before sleeping */
		/* Sleep until a transfer moves, a retry falls due, a bucket refills, or 100 ms. */
		double wake = 0.1;
		now = progress_now();
		for (int i = 0; i < c->nwaiting; i++)
			if (c->waiting[i]->due - now < wake)
				wake = c->waiting[i]->due - now;
		if (c->active < c->nslots) {
			double w = bucket_wait(&c->req_bucket, 1 - 1e-9);
			double t = bucket_wait(&c->tok_bucket, 0);
			if (t > w)
				w = t;
			if (w > 0 && w < wake)
				wake = w;
		}
		if (wake < 0)
			wake = 0;
		curl_multi_poll(c->multi, NULL, 0, (int)(wake * 1000), NULL);
	}
	if (rc)
		abandon_all(c, done, ctx);
	return rc;
}
