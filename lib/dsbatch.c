/* dsbatch: bulk chat requests from JSON Lines (see dsbatch.h). */
#include "dsbatch.h"

#include <stdlib.h>
#include <string.h>

#include "jsonl.h"

static const char *const api_keys[] = {
	"messages", "model", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
	"tools", "tool_choice", "response_format", "presence_penalty", "frequency_penalty", "logit_bias",
	"logprobs", "top_logprobs", "parallel_tool_calls", "user", "reasoning_effort", NULL,
};

struct line {
	char *text;     /* the input line */
	size_t len;
	long lineno;
	char *id;       /* the id as JSON text ("\"a1\"", "7") or NULL for line:N */
	uint64_t key;   /* hash of the id, for the resume set */
	int done, inflight, asked;
};

struct dsbatch {
	struct dsbatch_opts o;
	char *name;
	struct line *l;
	long n, cursor;
	long *again;    /* lines to ask once more (rejected by --validate) */
	long nagain;
	struct dsgen_set ids;
	struct dsbatch_counts c;
};

struct batch_tag {
	long line;
	char name[64];
};

static jv get(jv obj, const char *key)
{
	return jv_get_kind(obj) == JV_KIND_OBJECT ? jv_object_get(jv_copy(obj), jv_string(key)) : jv_invalid();
}

/* The id of a record as output carries it: its "id", else "line:N" (rec not consumed). */
static jv record_id(jv rec, long lineno)
{
	jv id = get(rec, "id");
	if (jv_is_valid(id) && jv_get_kind(id) != JV_KIND_NULL)
		return id;
	jv_free(id);
	char buf[40];
	snprintf(buf, sizeof buf, "line:%ld", lineno);
	return jv_string(buf);
}

/* An id's key: the hash of its JSON text (which *text gets, malloc'ed, unless NULL). */
static uint64_t id_key(jv id, char **text)
{
	jv s = jsonl_text(id);
	uint64_t h = dsgen_hash(0, jv_string_value(s), (size_t)jv_string_length_bytes(jv_copy(s)));
	if (text)
		*text = strdup(jv_string_value(s));
	jv_free(s);
	return h;
}

static int check_line(jv rec, struct err *err)
{
	jv msgs = get(rec, "messages");
	int rc = 0;
	if (jv_get_kind(msgs) != JV_KIND_ARRAY || !jv_array_length(jv_copy(msgs)))
		rc = err_set(err, "\"messages\" must be a non-empty array of messages");
	else
		jv_array_foreach(msgs, i, m) {
			jv role = get(m, "role");
			if (rc == 0 && jv_get_kind(role) != JV_KIND_STRING)
				rc = err_set(err, "messages[%d]: expected an object with a \"role\" string", i);
			jv_free(role), jv_free(m);
		}
	jv_free(msgs);
	jv id = get(rec, "id");
	if (rc == 0 && jv_is_valid(id) && jv_get_kind(id) != JV_KIND_STRING && jv_get_kind(id) != JV_KIND_NUMBER &&
	    jv_get_kind(id) != JV_KIND_NULL)
		rc = err_set(err, "\"id\" must be a string or a number");
	jv_free(id);
	return rc;
}

struct dsbatch *dsbatch_load(const char *path, const struct dsbatch_opts *o, struct err *err)
{
	struct jsonl_reader *r = jsonl_open(path, err);
	if (!r)
		return NULL;
	struct dsbatch *b = calloc(1, sizeof *b);
	if (!b) {
		jsonl_close(r);
		return err_sys(err, "out of memory"), NULL;
	}
	b->o = *o;
	b->name = strdup(jsonl_name(r));
	long cap = 0;
	int rc = 0;
	const char *text;
	size_t len;
	int got;
	while (rc == 0 && (got = jsonl_next_line(r, &text, &len, err)) != 0) {
		if (got < 0) {
			rc = -1;
			break;
		}
		long lineno = jsonl_line(r);
		jv rec;
		if (jsonl_parse_record(b->name, lineno, text, len, &rec, err) < 0) {
			rc = -1;
			break;
		}
		if (check_line(rec, err) < 0) {
			jv_free(rec);
			rc = jsonl_errf(r, err, "%s", err->msg);
			break;
		}
		if (b->n == cap) {
			cap = cap ? 2 * cap : 1024;
			struct line *l = realloc(b->l, (size_t)cap * sizeof *l);
			if (!l) {
				jv_free(rec);
				rc = err_sys(err, "out of memory");
				break;
			}
			b->l = l;
		}
		struct line *l = &b->l[b->n];
		*l = (struct line){.lineno = lineno, .len = len};
		jv id = record_id(rec, lineno);
		l->key = id_key(id, &l->id);
		jv_free(rec);
		l->text = malloc(len + 1);
		if (!l->text || !l->id) {
			free(l->text), free(l->id);
			rc = err_sys(err, "out of memory");
			break;
		}
		memcpy(l->text, text, len + 1);
		b->n++;
		if (dsgen_set_add(&b->ids, l->key) == 0)
			rc = err_set(err, "%s:%ld: id %s is used by an earlier line too (ids must be unique: a resumed run "
					  "skips the ids its output holds)", b->name, lineno, l->id);
	}
	jsonl_close(r);
	if (rc == 0 && !(b->again = calloc((size_t)b->n + 1, sizeof *b->again)))
		rc = err_sys(err, "out of memory");
	if (rc) {
		dsbatch_free(b);
		return NULL;
	}
	dsgen_set_free(&b->ids); /* from here on: the ids already answered */
	b->c.target = b->n;
	return b;
}

void dsbatch_free(struct dsbatch *b)
{
	if (!b)
		return;
	for (long i = 0; i < b->n; i++)
		free(b->l[i].text), free(b->l[i].id);
	free(b->l), free(b->again), free(b->name);
	dsgen_set_free(&b->ids);
	free(b);
}

void dsbatch_add_existing(struct dsbatch *b, jv rec)
{
	jv id = get(rec, "id");
	jv_free(rec);
	if (!jv_is_valid(id) || jv_get_kind(id) == JV_KIND_NULL) {
		jv_free(id);
		b->c.unknown_ids++;
		return;
	}
	dsgen_set_add(&b->ids, id_key(id, NULL));
}

/* Lines already answered are marked on the first call (after every existing
 * record was added). */
static void mark_present(struct dsbatch *b)
{
	if (b->cursor || b->c.present || !b->ids.n)
		return;
	long found = 0;
	for (long i = 0; i < b->n; i++)
		if (dsgen_set_has(&b->ids, b->l[i].key))
			b->l[i].done = 1, found++;
	b->c.present = found;
	b->c.unknown_ids += (long)b->ids.n - found;
}

void dsbatch_existing_done(struct dsbatch *b) { mark_present(b); }

int dsbatch_next(struct dsbatch *b, struct http_request *req)
{
	mark_present(b);
	long i = -1;
	if (b->nagain)
		i = b->again[--b->nagain];
	while (i < 0 && b->cursor < b->n) {
		if (!b->l[b->cursor].done)
			i = b->cursor;
		b->cursor++;
	}
	if (i < 0)
		return 0;
	struct line *l = &b->l[i];
	jv rec;
	struct err e;
	if (jsonl_parse_record(b->name, l->lineno, l->text, l->len, &rec, &e) < 0)
		return -1; /* it parsed at load */
	jv body = jv_object();
	if (b->o.model)
		body = jv_object_set(body, jv_string("model"), jv_string(b->o.model));
	if (b->o.temperature >= 0)
		body = jv_object_set(body, jv_string("temperature"), jv_number(b->o.temperature));
	if (b->o.max_tokens > 0)
		body = jv_object_set(body, jv_string("max_tokens"), jv_number((double)b->o.max_tokens));
	if (b->o.json_object)
		body = jv_object_set(body, jv_string("response_format"), JV_OBJECT(jv_string("type"), jv_string("json_object")));
	for (int k = 0; api_keys[k]; k++) {
		jv v = get(rec, api_keys[k]);
		if (jv_is_valid(v))
			body = jv_object_set(body, jv_string(api_keys[k]), v);
		else
			jv_free(v);
	}
	jv mt = get(body, "max_tokens");
	long est = jv_get_kind(mt) == JV_KIND_NUMBER ? (long)jv_number_value(mt) : 256;
	jv_free(mt);
	jv_free(rec);
	jv s = jsonl_text(body);
	req->len = (size_t)jv_string_length_bytes(jv_copy(s));
	req->body = strdup(jv_string_value(s));
	jv_free(s);
	struct batch_tag *tag = malloc(sizeof *tag);
	if (!req->body || !tag) {
		free(req->body), free(tag);
		return -1;
	}
	tag->line = i;
	snprintf(tag->name, sizeof tag->name, "%s:%ld", b->name, l->lineno);
	dsgen_hex(l->key ^ (uint64_t)l->asked, req->id);
	req->est_tokens = (long)(req->len / 4) + est;
	req->user = tag;
	l->inflight = 1;
	l->asked++;
	return 1;
}

const char *dsbatch_request_name(const struct http_request *req)
{
	return ((const struct batch_tag *)req->user)->name;
}

const struct dsbatch_counts *dsbatch_get_counts(const struct dsbatch *b)
{
	return &b->c;
}

static void reject(jv *rejects, const char *name, const char *id, const char *reason, jv item)
{
	jv idv;
	struct err e;
	if (jsonl_parse(id, strlen(id), "id", &idv, &e) < 0)
		idv = jv_null();
	*rejects = jv_array_append(*rejects, JV_OBJECT(jv_string("request"), jv_string(name), jv_string("id"), idv,
						       jv_string("reason"), jv_string(reason), jv_string("item"), item));
}

void dsbatch_answer(struct dsbatch *b, struct http_request *req, const struct http_result *res, jv *records,
		    jv *rejects)
{
	struct batch_tag *tag = req->user;
	struct line *l = &b->l[tag->line];
	*records = jv_array();
	*rejects = jv_array();
	l->inflight = 0;
	if (res->outcome != HTTP_OK) {
		if (res->outcome != HTTP_ABANDONED) {
			b->c.failed_requests++;
			reject(rejects, tag->name, l->id, res->error, jv_null());
		}
		free(tag);
		req->user = NULL;
		return;
	}
	jv rec;
	struct err e;
	if (jsonl_parse_record(b->name, l->lineno, l->text, l->len, &rec, &e) < 0)
		rec = jv_object();
	jv choices = get(res->response, "choices");
	jv first = jv_array_get(jv_copy(choices), 0);
	jv msg = get(first, "message");
	jv fin = get(first, "finish_reason");
	jv usage = get(res->response, "usage");
	jv_free(choices), jv_free(first);
	if (jv_get_kind(msg) != JV_KIND_OBJECT) {
		jv_free(msg);
		msg = JV_OBJECT(jv_string("role"), jv_string("assistant"), jv_string("content"), jv_null());
	}
	/* the answer's message as the chat format has it: role, content, tool_calls */
	jv out_msg = JV_OBJECT(jv_string("role"), jv_string("assistant"), jv_string("content"), get(msg, "content"));
	jv calls = get(msg, "tool_calls");
	if (jv_get_kind(calls) == JV_KIND_ARRAY && jv_array_length(jv_copy(calls)))
		out_msg = jv_object_set(out_msg, jv_string("tool_calls"), calls);
	else
		jv_free(calls);
	jv content = get(out_msg, "content");
	if (!jv_is_valid(content))
		out_msg = jv_object_set(out_msg, jv_string("content"), jv_null());
	jv_free(content);
	jv_free(msg);
	jv idv;
	if (jsonl_parse(l->id, strlen(l->id), "id", &idv, &e) < 0)
		idv = jv_null();
	rec = jv_object_set(rec, jv_string("id"), idv);
	rec = jv_object_set(rec, jv_string("response"), out_msg);
	rec = jv_object_set(rec, jv_string("finish_reason"), jv_is_valid(fin) ? fin : jv_null());
	rec = jv_object_set(rec, jv_string("usage"), jv_is_valid(usage) ? usage : jv_null());
	if (b->o.validate) {
		int ok = dsgen_filter_accepts(b->o.validate, rec, &e);
		if (ok <= 0) {
			b->c.rejected++;
			char why[600];
			snprintf(why, sizeof why, "%.500s", ok < 0 ? e.msg : "--validate filter said no");
			if (l->asked <= b->o.item_retries) {
				b->again[b->nagain++] = tag->line; /* asked again: the answer may differ */
			} else {
				snprintf(why + strlen(why), sizeof why - strlen(why), " (asked %d times)", l->asked);
				b->c.failed_requests++;
			}
			reject(rejects, tag->name, l->id, why, rec);
			free(tag);
			req->user = NULL;
			return;
		}
	}
	l->done = 1;
	b->c.written++;
	*records = jv_array_append(*records, rec);
	free(tag);
	req->user = NULL;
}
