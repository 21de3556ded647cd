/* ds-gen — synthesize tool-call training data (or run any bulk chat requests)
 * through an OpenAI-compatible API.
 *
 *   ds-gen --spec spec.json -o pairs.jsonl
 *   ds-gen --requests in.jsonl -o out.jsonl
 *
 * Only wiring lives here: the spec, its buckets and reply checking in
 * lib/dsgen, bulk requests in lib/dsbatch, HTTP in lib/http.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsbatch.h"
#include "dsgen.h"
#include "http.h"
#include "jsonl.h"
#include "msg.h"
#include "opt.h"
#include "outfile.h"
#include "progress.h"

#define DSGEN_VERSION "0.1.0"
#define MAX_WARNINGS 10 /* failed requests told one by one; the rest are counted */

static const struct opt opts[] = {
	{"spec", 0, OPT_STRING, "FILE", "generate conversations from this spec (also the one operand)"},
	{"requests", 0, OPT_STRING, "FILE", "send each line's chat request instead (\"-\": standard input)"},
	{"output", 'o', OPT_STRING, "FILE", "append records here; a rerun skips what the file holds"},
	{"base-url", 0, OPT_STRING, "URL", "API base, e.g. http://127.0.0.1:8080/v1 (default $OPENAI_BASE_URL, "
					     "else https://api.openai.com/v1)"},
	{"model", 0, OPT_STRING, "NAME", "model to ask for (default: none sent, as local servers allow)"},
	{"api-key-file", 0, OPT_STRING, "FILE", "read the API key from FILE (default $OPENAI_API_KEY)"},
	{"no-api-key", 0, OPT_FLAG, NULL, "send no key even to a server on another machine"},
	{"header", 'H', OPT_STRING, "'NAME: VALUE'", "an extra HTTP header (repeatable)", .repeat = 1},
	{"concurrency", 'j', OPT_INT, "N", "requests in flight at once (default 8)", .min = 1, .max = 4096},
	{"timeout", 0, OPT_FLOAT, "SEC", "time limit of one attempt (default 120)", .fmin = 0.001, .fmax = 86400},
	{"connect-timeout", 0, OPT_FLOAT, "SEC", "time limit to connect (default 10)", .fmin = 0.001, .fmax = 3600},
	{"retries", 0, OPT_INT, "N", "retries of a request after 429, 5xx, timeouts, bad replies (default 6)",
	 .min = 0, .max = 1000},
	{"retry-base-ms", 0, OPT_INT, "MS", "first backoff, doubled each retry, with jitter (default 1000)",
	 .min = 1, .max = 3600000},
	{"retry-max-ms", 0, OPT_INT, "MS", "longest backoff (default 60000)", .min = 1, .max = 3600000},
	{"rpm", 0, OPT_FLOAT, "N", "at most N requests a minute (default: no limit)", .fmin = 0, .fmax = 1e9},
	{"tpm", 0, OPT_FLOAT, "N", "at most N tokens a minute, prompt and completion (default: no limit)", .fmin = 0,
	 .fmax = 1e12},
	{"temperature", 0, OPT_FLOAT, "X", "sampling temperature (spec mode default 1; batch: the server's)",
	 .fmin = 0, .fmax = 2},
	{"max-tokens", 0, OPT_INT, "N", "most tokens per answer (spec mode default 1024; batch: the server's)",
	 .min = 1, .max = 1 << 24},
	{"response-format", 0, OPT_CHOICE, "FMT",
	 "json_schema (spec mode default), json_object, json_object_schema (llama-cpp-python) or none",
	 .choices = "json_schema|json_object|json_object_schema|none"},
	{"seed", 0, OPT_INT, "S", "seed of the record and request ids (default 0)"},
	{"force", 0, OPT_FLAG, NULL, "append to an output holding records this run would not make (another spec, "
				     "seed or input)"},
	{"count", 'n', OPT_INT, "N", "conversations to make (default: the spec's)", .min = 1, .max = 100000000},
	{"per-request", 0, OPT_INT, "N", "utterances asked for in one request (default: the spec's, else 5)",
	 .min = 1, .max = 50},
	{"item-retries", 0, OPT_INT, "N", "extra requests per intent and language (batch: per line) when replies "
					  "are rejected (default 3)", .min = 0, .max = 1000},
	{"validate", 0, OPT_STRING, "FILTER", "keep only records for which this jq filter gives true"},
	{"rejects", 0, OPT_STRING, "FILE", "append rejected and failed items here, with the reason"},
	{"stats", 0, OPT_STRING, "FILE", "write the run's counts, tokens and time here as JSON"},
	{"price", 0, OPT_STRING, "IN,OUT", "dollars per million prompt and completion tokens, for the cost"},
	OPT_COMMON_ROWS,
	{0},
};

static const char usage[] = "ds-gen (--spec FILE | --requests FILE) [OPTIONS] [-o FILE]";
static const char about[] =
	"Asks an OpenAI-compatible chat-completions API (OpenAI, vLLM, llama.cpp's server, Ollama ...) for\n"
	"training data. --spec: user messages per intent and negative of the spec, checked against the\n"
	"tools' JSON schemas, deduplicated, balanced and written as conversations (messages, tools).\n"
	"--requests: each input line's chat request; the output line is the input plus \"response\".\n"
	"Records are appended and flushed one by one; with -o a rerun of the same command skips what\n"
	"the file holds, so a crashed run completes with no duplicates. The key comes from\n"
	"$OPENAI_API_KEY or --api-key-file, never from the command line. Exit status: 0 the set is\n"
	"complete, 1 incomplete or runtime failure (rerun to complete), 2 bad usage or bad input,\n"
	"130 interrupted.";

struct run {
	struct dsgen *gen;
	struct dsbatch *batch;
	FILE *out, *rejects;
	const char *out_name, *rejects_name;
	struct progress prog;
	long done0, written, warned, failed;
	struct err werr;
	int write_failed;
};

static int run_next(void *ctx, struct http_request *req)
{
	struct run *r = ctx;
	return r->gen ? dsgen_next(r->gen, req) : dsbatch_next(r->batch, req);
}

static int write_all(FILE *f, jv list, struct err *err)
{
	int rc = 0;
	jv_array_foreach(list, i, rec) {
		if (rc == 0)
			rc = jsonl_write(f, rec, err);
		else
			jv_free(rec);
		(void)i;
	}
	jv_free(list);
	/* one flush per answer: every record is on disk (in the page cache) whole */
	if (rc == 0 && fflush(f) != 0)
		rc = err_sys(err, "write error:");
	return rc;
}

static int run_done(void *ctx, struct http_request *req, struct http_result *res)
{
	struct run *r = ctx;
	const char *name = r->gen ? dsgen_request_name(req) : dsbatch_request_name(req);
	if ((res->outcome == HTTP_FAILED) && r->warned++ < MAX_WARNINGS)
		msg_warn("%s: %s", name, res->error);
	if (res->outcome == HTTP_FAILED)
		r->failed++;
	jv records, rejects;
	if (r->gen)
		dsgen_answer(r->gen, req, res, &records, &rejects);
	else
		dsbatch_answer(r->batch, req, res, &records, &rejects);
	r->written += jv_array_length(jv_copy(records));
	if (write_all(r->out, records, &r->werr) < 0) {
		err_wrap(&r->werr, "%s", r->out_name);
		r->werr.code = EXIT_RUNTIME;
		r->write_failed = 1;
		jv_free(rejects);
		return -1;
	}
	if (r->rejects && jv_array_length(jv_copy(rejects))) {
		if (write_all(r->rejects, rejects, &r->werr) < 0) {
			err_wrap(&r->werr, "%s", r->rejects_name);
			r->werr.code = EXIT_RUNTIME;
			r->write_failed = 1;
			return -1;
		}
	} else {
		jv_free(rejects);
	}
	if (r->batch)
		r->done0 = dsbatch_get_counts(r->batch)->present;
	progress_update(&r->prog, (uint64_t)(r->done0 + r->written), 0);
	return 0;
}

static int add_existing(void *ctx, jv rec, long line, struct err *err)
{
	struct run *r = ctx;
	if (r->gen)
		dsgen_add_existing(r->gen, rec);
	else
		dsbatch_add_existing(r->batch, rec);
	return 0;
}

/* The key: --api-key-file's first line, else $OPENAI_API_KEY, else NULL. */
static char *load_key(const char *file, struct err *err)
{
	char *key = NULL;
	if (file) {
		FILE *f = fopen(file, "r");
		if (!f)
			return err_set(err, "--api-key-file %s: cannot open: %s", file, strerror(errno)), NULL;
		size_t cap = 0;
		ssize_t n = getline(&key, &cap, f);
		fclose(f);
		if (n < 0) {
			free(key);
			key = NULL;
		}
	} else if (getenv("OPENAI_API_KEY")) {
		key = strdup(getenv("OPENAI_API_KEY"));
	}
	if (!key)
		return file ? (err_set(err, "--api-key-file %s: the file is empty", file), NULL) : NULL;
	/* trimmed of white space around it */
	char *s = key;
	while (isspace((unsigned char)*s))
		s++;
	memmove(key, s, strlen(s) + 1);
	size_t n = strlen(key);
	while (n && isspace((unsigned char)key[n - 1]))
		key[--n] = 0;
	if (!n) {
		free(key);
		return err_set(err, "%s: the API key is empty", file ? file : "OPENAI_API_KEY"), NULL;
	}
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)key[i] < 0x21 || key[i] == 0x7f) {
			free(key);
			return err_set(err, "%s: the API key holds a space or control character", file ? file : "OPENAI_API_KEY"),
			       NULL;
		}
	return key;
}

/* Whether the URL's host is this machine (a key is optional there). */
static int is_loopback(const char *url)
{
	const char *h = strstr(url, "://");
	h = h ? h + 3 : url;
	const char *names[] = {"localhost", "127.", "[::1]", "0.0.0.0"};
	for (size_t i = 0; i < sizeof names / sizeof *names; i++)
		if (!strncmp(h, names[i], strlen(names[i])))
			return 1;
	return 0;
}

static char *endpoint(const char *base)
{
	size_t n = strlen(base);
	while (n && base[n - 1] == '/')
		n--;
	const char *tail = "/chat/completions";
	int has = n >= strlen(tail) && !strncmp(base + n - strlen(tail), tail, strlen(tail));
	char *url = malloc(n + strlen(tail) + 1);
	if (url)
		snprintf(url, n + strlen(tail) + 1, "%.*s%s", (int)n, base, has ? "" : tail);
	return url;
}

static int write_stats(const char *path, jv stats, struct err *err)
{
	struct outfile *o = outfile_open(path, 0, err);
	if (!o) {
		jv_free(stats);
		return -1;
	}
	jv s = jv_dump_string(stats, JV_PRINT_PRETTY | JV_PRINT_INDENT_FLAGS(2));
	fprintf(o->f, "%s\n", jv_string_value(s));
	jv_free(s);
	return outfile_commit(o, err);
}

int main(int argc, char **argv)
{
	msg_init(argv[0]);
	struct err err = {0};
	struct opt_result r;
	int status = opt_start(opts, argc, argv, usage, about, DSGEN_VERSION, &r);
	if (status >= 0)
		return status;
	const char *spec_path = opt_str(&r, "spec", NULL), *req_path = opt_str(&r, "requests", NULL);
	if (r.nargs > 1 || (r.nargs == 1 && (spec_path || req_path)))
		msg_die(EXIT_USAGE, "one spec at most, given as --spec or as the operand (try --help)");
	if (r.nargs == 1)
		spec_path = r.args[0];
	if (!!spec_path == !!req_path)
		msg_die(EXIT_USAGE, "give --spec FILE or --requests FILE, one of them (try --help)");
	const char *out_path = opt_str(&r, "output", "-");
	int to_stdout = !strcmp(out_path, "-");

	/* Everything the user can get wrong is checked before any request. */
	const char *base = opt_str(&r, "base-url", getenv("OPENAI_BASE_URL"));
	if (!base || !*base)
		base = "https://api.openai.com/v1";
	char *url = endpoint(base);
	char *key = load_key(opt_str(&r, "api-key-file", NULL), &err);
	msg_die_if(!key && err.msg[0], &err);
	if (opt_flag(&r, "no-api-key")) {
		free(key);
		key = NULL;
	} else if (key && !is_loopback(url) && !strncmp(url, "http://", 7)) {
		msg_warn("the API key goes to %s unencrypted (http://, not https://)", url);
	} else if (!key && !is_loopback(url)) {
		msg_die(EXIT_USAGE, "no API key: set OPENAI_API_KEY or give --api-key-file FILE (servers on this "
				    "machine need none; --no-api-key sends none to %s)", url);
	}
	double price_in = 0, price_out = 0;
	int priced = 0;
	if (opt_str(&r, "price", NULL)) {
		char *end;
		const char *p = opt_str(&r, "price", NULL);
		price_in = strtod(p, &end);
		if (*end != ',' || price_in < 0)
			msg_die(EXIT_USAGE, "--price %s: expected IN,OUT (dollars per million prompt and completion tokens)", p);
		price_out = strtod(end + 1, &end);
		if (*end || price_out < 0)
			msg_die(EXIT_USAGE, "--price %s: expected IN,OUT (dollars per million prompt and completion tokens)", p);
		priced = 1;
	}
	for (int i = 0; opt_str_at(&r, "header", i); i++) {
		const char *h = opt_str_at(&r, "header", i);
		const char *colon = strchr(h, ':');
		if (!colon || colon == h || strpbrk(h, "\r\n"))
			msg_die(EXIT_USAGE, "--header \"%s\": expected 'Name: value' on one line", h);
	}
	struct dsgen_filter *validate = NULL;
	if (opt_str(&r, "validate", NULL)) {
		validate = dsgen_filter_new(opt_str(&r, "validate", NULL), &err);
		msg_die_if(!validate, &err);
	}
	const char *fmt = opt_str(&r, "response-format", spec_path ? "json_schema" : "none");
	struct run run = {.out_name = to_stdout ? "<stdout>" : out_path};
	struct dsgen_spec *spec = NULL;
	if (spec_path) {
		spec = dsgen_spec_load(spec_path, &err);
		msg_die_if(!spec, &err);
		struct dsgen_opts go = {
			.seed = (uint64_t)opt_int(&r, "seed", 0),
			.model = opt_str(&r, "model", NULL),
			.temperature = opt_float(&r, "temperature", 1.0),
			.max_tokens = opt_int(&r, "max-tokens", 1024),
			.format = !strcmp(fmt, "json_schema")   ? DSGEN_FORMAT_JSON_SCHEMA
				  : !strcmp(fmt, "json_object") ? DSGEN_FORMAT_JSON_OBJECT
				  : !strcmp(fmt, "json_object_schema") ? DSGEN_FORMAT_JSON_OBJECT_SCHEMA
								: DSGEN_FORMAT_NONE,
			.conversations = opt_int(&r, "count", 0),
			.per_request = (int)opt_int(&r, "per-request", 0),
			.item_retries = (int)opt_int(&r, "item-retries", 3),
			.validate = validate,
		};
		run.gen = dsgen_new(spec, &go, &err);
		msg_die_if(!run.gen, &err);
	} else {
		if (!strcmp(fmt, "json_schema") || !strcmp(fmt, "json_object_schema"))
			msg_die(EXIT_USAGE, "--response-format %s needs a schema: give it per line as "
					    "\"response_format\" in --requests mode", fmt);
		struct dsbatch_opts bo = {
			.model = opt_str(&r, "model", NULL),
			.temperature = opt_float(&r, "temperature", -1),
			.max_tokens = opt_int(&r, "max-tokens", 0),
			.json_object = !strcmp(fmt, "json_object"),
			.item_retries = (int)opt_int(&r, "item-retries", 3),
			.validate = validate,
		};
		run.batch = dsbatch_load(req_path, &bo, &err);
		msg_die_if(!run.batch, &err);
	}

	/* Resume: what the output already holds is not asked again. */
	if (!to_stdout) {
		long cut = 0;
		long n = dsgen_scan_output(out_path, add_existing, &run, &cut, &err);
		msg_die_if(n < 0, &err);
		if (cut)
			msg_warn("%s: cut off a partial last line (%ld bytes) left by an interrupted run", out_path, cut);
		/* Records another spec, seed or input made: refused before anything is asked. */
		if (run.batch)
			dsbatch_existing_done(run.batch);
		long unknown = run.gen ? dsgen_get_counts(run.gen)->unknown_ids : dsbatch_get_counts(run.batch)->unknown_ids;
		if (unknown && !opt_flag(&r, "force"))
			msg_die(EXIT_USAGE, "%s: %ld of its %ld records have ids this run does not make (another spec, seed or "
				"input?): write to another file, or give --force to add beside them", out_path, unknown, n);
		if (!(run.out = fopen(out_path, "a")))
			msg_die(EXIT_RUNTIME, "%s: cannot open for appending: %s", out_path, strerror(errno));
	} else {
		run.out = stdout;
	}
	static char out_buf[1 << 20]; /* a megabyte between writes, as standard output has (msg_init) */
	if (run.out != stdout)
		setvbuf(run.out, out_buf, _IOFBF, sizeof out_buf);
	if (opt_str(&r, "rejects", NULL)) {
		run.rejects_name = opt_str(&r, "rejects", NULL);
		if (!(run.rejects = fopen(run.rejects_name, "a")))
			msg_die(EXIT_RUNTIME, "%s: cannot open for appending: %s", run.rejects_name, strerror(errno));
	}
	long target = run.gen ? dsgen_get_counts(run.gen)->target : dsbatch_get_counts(run.batch)->target;
	run.done0 = run.gen ? dsgen_get_counts(run.gen)->present : 0; /* batch: known after the first request */

	struct http_opts ho = {
		.url = url,
		.api_key = key,
		.concurrency = (int)opt_int(&r, "concurrency", 8),
		.timeout_s = opt_float(&r, "timeout", 120),
		.connect_timeout_s = opt_float(&r, "connect-timeout", 10),
		.retries = (int)opt_int(&r, "retries", 6),
		.retry_base_s = (double)opt_int(&r, "retry-base-ms", 1000) / 1000.0,
		.retry_max_s = (double)opt_int(&r, "retry-max-ms", 60000) / 1000.0,
		.rpm = opt_float(&r, "rpm", 0),
		.tpm = opt_float(&r, "tpm", 0),
		.seed = (uint64_t)opt_int(&r, "seed", 0),
	};
	const char *hdrs[OPT_MAX_SEEN];
	for (ho.nheaders = 0; opt_str_at(&r, "header", ho.nheaders); ho.nheaders++)
		hdrs[ho.nheaders] = opt_str_at(&r, "header", ho.nheaders);
	ho.headers = hdrs;
	struct http_client *client = http_new(&ho, &err);
	msg_die_if(!client, &err);
	if (key) {
		memset(key, 0, strlen(key)); /* the client keeps its own copy */
		free(key);
	}

	msg_catch_signals();
	double t0 = progress_now();
	progress_start(&run.prog, "records", (uint64_t)target, opt_progress(&r));
	int rc = http_run(client, run_next, run_done, &run, &msg_interrupted, &err);
	double wall = progress_now() - t0;
	progress_end(&run.prog);
	if (run.out != stdout)
		fclose(run.out);
	else
		fflush(stdout);
	if (run.rejects)
		fclose(run.rejects);

	const struct http_stats *hs = http_get_stats(client);
	long present, written, rejected, failed, unknown, dups = 0, surplus = 0;
	if (run.gen) {
		const struct dsgen_counts *c = dsgen_get_counts(run.gen);
		present = c->present, written = c->written, rejected = c->rejected, failed = c->failed_requests;
		unknown = c->unknown_ids, dups = c->duplicates, surplus = c->surplus;
	} else {
		const struct dsbatch_counts *c = dsbatch_get_counts(run.batch);
		present = c->present, written = c->written, rejected = c->rejected, failed = c->failed_requests;
		unknown = c->unknown_ids;
	}
	int complete = present + written >= target;
	double cost = ((double)hs->prompt_tokens * price_in + (double)hs->completion_tokens * price_out) / 1e6;
	char cost_text[64] = "";
	if (priced)
		snprintf(cost_text, sizeof cost_text, "; cost $%.4f", cost);
	if (unknown)
		msg_warn("%s: %ld records have ids this run does not make (another seed, spec or input?); left as they are",
			 out_path, unknown);
	if (run.warned > MAX_WARNINGS)
		msg_warn("%ld more requests failed (see --rejects)", run.warned - MAX_WARNINGS);
	if (msg_level >= 2)
		fprintf(stderr, "%s: %ld/%ld records (%ld new, %ld already there); %llu requests, %llu retries, %llu failed; "
		 "%ld rejected (%ld duplicates); tokens %llu prompt + %llu completion; %.1f s%s\n", msg_prog(),
		 present + written, target, written, present, (unsigned long long)hs->requests,
		 (unsigned long long)hs->retries, (unsigned long long)hs->failures, rejected, dups,
		 (unsigned long long)hs->prompt_tokens, (unsigned long long)hs->completion_tokens, wall,
		 cost_text);
	if (opt_str(&r, "stats", NULL)) {
		jv st = JV_OBJECT(jv_string("mode"), jv_string(run.gen ? "spec" : "requests"), jv_string("target"),
				  jv_number((double)target), jv_string("present"), jv_number((double)present),
				  jv_string("written"), jv_number((double)written), jv_string("complete"), jv_bool(complete));
		st = jv_object_set(st, jv_string("requests"), jv_number((double)hs->requests));
		st = jv_object_set(st, jv_string("answered"), jv_number((double)hs->ok));
		st = jv_object_set(st, jv_string("retries"), jv_number((double)hs->retries));
		st = jv_object_set(st, jv_string("failures"), jv_number((double)hs->failures));
		st = jv_object_set(st, jv_string("rejected"), jv_number((double)rejected));
		st = jv_object_set(st, jv_string("duplicates"), jv_number((double)dups));
		st = jv_object_set(st, jv_string("surplus"), jv_number((double)surplus));
		st = jv_object_set(st, jv_string("failed_items"), jv_number((double)failed));
		st = jv_object_set(st, jv_string("prompt_tokens"), jv_number((double)hs->prompt_tokens));
		st = jv_object_set(st, jv_string("completion_tokens"), jv_number((double)hs->completion_tokens));
		st = jv_object_set(st, jv_string("wall_s"), jv_number(wall));
		st = jv_object_set(st, jv_string("requests_per_s"), jv_number(wall > 0 ? (double)hs->requests / wall : 0));
		st = jv_object_set(st, jv_string("interrupted"), jv_bool(rc == 1));
		if (priced)
			st = jv_object_set(st, jv_string("cost_usd"), jv_number(cost));
		struct err e2;
		if (write_stats(opt_str(&r, "stats", NULL), st, &e2) < 0)
			msg_error("%s", e2.msg);
	}
	http_free(client);
	dsgen_free(run.gen);
	dsgen_spec_free(spec);
	dsbatch_free(run.batch);
	dsgen_filter_free(validate);
	free(url);
	if (run.write_failed)
		msg_die_err(&run.werr);
	if (rc < 0)
		msg_die(EXIT_RUNTIME, "%s", err.msg);
	if (rc == 1)
		msg_die(130, "interrupted: %ld of %ld records in %s, every line whole; rerun the same command to complete",
			present + written, target, run.out_name);
	if (!complete)
		msg_die(EXIT_RUNTIME, "incomplete: %ld of %ld records (%ld items failed, %ld rejected)%s", present + written,
			target, failed, rejected,
			to_stdout ? "" : "; rerun the same command to complete the set");
	if (msg_interrupted)
		return 130;
	return EXIT_OK;
}
