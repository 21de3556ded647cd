/* ds-fmt — render conversations (format 1) with the model's own chat template
 * into format-2 records: the text and the byte spans the model must learn.
 *
 *   ds-fmt --model M < pairs.jsonl > text.jsonl
 *
 * Only wiring lives here: input forms, validation, rendering and spans in
 * lib/chat, the Jinja engine in lib/template. A regular file (FILE, or
 * standard input redirected from one) is mapped and cut into byte ranges,
 * in which one thread per CPU (the main one among them) finds its lines and
 * formats them; a pipe, and any input under --jq (which the main thread
 * runs), is read in order by the main thread, in batches of lines for the
 * workers. The main thread writes, warns about or stops at the batches'
 * records in input order, so the output is the same whatever the thread
 * count.
 */
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "template.h"
#include "jsonl.h"
#include "msg.h"
#include "opt.h"
#include "outfile.h"
#include "progress.h"

#define DSFMT_VERSION "0.1.0"

#define BATCH 64        /* lines read for a worker at once */
#define RANGE (64 << 10) /* bytes of a mapped file a worker finds its lines in at once: the batches in
                          * flight stay in cache (256 KiB: 3-8% slower on the bench's sets, 16 KiB: 4-10%) */
#define MAX_THREADS 64
#define DEFAULT_THREADS 16 /* most a default run uses */
#define TOP_PAD (4 << 20)  /* bytes a malloc arena grows by at least: see main */
#define AHEAD 4 /* batches in flight per worker: one slow batch (a shape learned) holds up the
                 * writing, and the others run on meanwhile (2: 10-20% slower on 16 cores) */

static const struct opt opts[] = {
	{"model", 'm', OPT_STRING, "M", "model folder (tokenizer.json, tokenizer_config.json; or a single .gguf) or GGUF file"},
	{"template", 't', OPT_STRING, "FILE|NAME",
	 "use this .jinja file or built-in template (chatml, llama3, gemma, mistral, alpaca)"},
	{"input-format", 0, OPT_CHOICE, "FORMAT", "input records: auto (default), openai, alpaca or sharegpt",
	 .choices = "auto|openai|alpaca|sharegpt"},
	{"jq", 0, OPT_STRING, "FILTER", "map each input record to the messages form with this jq filter"},
	{"system", 0, OPT_STRING, "TEXT", "system prompt for records that have none"},
	{"tools", 0, OPT_STRING, "FILE", "tool list (a JSON array) for records that have none"},
	{"add-generation-prompt", 0, OPT_FLAG, NULL,
	 "render prompts: a final assistant message becomes \"expected\", nothing is learned"},
	{"train-turns", 0, OPT_CHOICE, "WHICH", "assistant turns to learn: all (default) or last",
	 .choices = "all|last"},
	{"var", 0, OPT_STRING, "NAME=JSON", "an extra template variable (repeatable), e.g. enable_thinking=false",
	 .repeat = 1},
	{"skip-bad", 0, OPT_FLAG, NULL, "skip and count bad records instead of stopping"},
	{"no-memo", 0, OPT_FLAG, NULL, "parse and render every record, even one of a line or shape seen before (the output is the same)"},
	{"threads", 0, OPT_INT, "N", "threads that format records, the main one included (default 0: one per CPU, at most 16; a file: at most one per 64 KiB)", .min = 0, .max = MAX_THREADS},
	{"output", 'o', OPT_STRING, "FILE", "write here (atomically) instead of standard output"},
	OPT_COMMON_ROWS,
	{0},
};

static const char usage[] = "ds-fmt --model M [OPTIONS] [FILE]";
static const char about[] =
	"Renders conversations (OpenAI messages, Alpaca or ShareGPT records, one per line) from FILE or\n"
	"standard input with the model's own chat template, as transformers' apply_chat_template does,\n"
	"and writes {\"text\":...,\"train\":[[start,end],...]} lines: the byte ranges of each assistant\n"
	"turn and its end-of-turn marker, found from where every rendered byte came from. Other keys\n"
	"of the input pass through. Exit status: 0 done, 1 runtime failure, 2 bad usage or bad input.";



/* One input line: the records (after --jq) to format, then the lines made.
 * A range batch keeps only its bad lines' items. */
struct item {
	const char *text; /* the line for the worker to parse, len bytes (0: none, --jq), in a block the batch holds */
	size_t len;
	jv recs;        /* else an array of records to format; consumed by the worker */
	int rc;         /* 1: formatted; -1: bad record (err) */
	long line;      /* in a range batch: among the lines that start in the range */
	struct err err;
	size_t out;     /* where its output lines begin in the batch's out (taken back if it is bad) */
};

struct batch {
	struct item *it;
	int n, cap, done;
	int range;            /* 1: the lines that start in [from, to) of the mapping */
	size_t from, to;
	long lines, good;     /* a range's lines (blank ones too) and records formatted */
	int lost;             /* a bad line of the range found no room to be kept */
	struct jsonl_block *blocks[BATCH + 1]; /* the reader's blocks the lines lie in, held */
	int nblocks;
	struct jsonl_buf out; /* the lines the worker wrote for the batch's records */
	struct batch *next;       /* in the queue of batches no worker has taken */
	struct batch *order_next; /* in the main thread's list of batches in flight */
};

struct pool {
	pthread_mutex_t mu;
	pthread_cond_t work, done;
	struct batch *todo, *todo_tail;
	struct batch *awaited; /* the batch the main thread waits for: only its end wakes it */
	int quit;
	int last; /* no batch comes after those queued: a worker leaves when there is none */
	struct worker *w; /* all nw of them, w[0] the main thread's */
	int nw;
	const char *name; /* the input's name, for messages */
	const char *map;  /* a mapped input's bytes, size of them */
	size_t size;
};

struct worker {
	pthread_t th;
	int id, started; /* started by worker id / 2 (w[1] by the main thread), th set */
	struct pool *p;
	struct chat_model *m; /* the thread's own copies of every shared jv */
	struct chat_opts o;
	struct jd_shared *tools; /* --tools, the thread's own copy (o.tools is its value) */
	struct jsonl_memo *memo; /* the tool list most records repeat, parsed once */
	struct jd_arena a;       /* the record being formatted and what is made from it */
	struct chat_memo_stats memo_stats; /* what its memo of shapes saved, kept when the rest is freed */
};

/* The input's name for a message of the batch's line: NULL in a range,
 * whose line numbers are not yet the file's (the main thread names them). */
static const char *line_name(const struct worker *w, const struct batch *b) { return b->range ? NULL : w->p->name; }

/* Puts "NAME:LINE: " in front of e's message; its code stays. */
static void err_at_line(struct err *e, const char *name, long line)
{
	int code = e->code;
	char what[sizeof e->msg];
	snprintf(what, sizeof what, "%s", e->msg);
	err_set(e, "%s:%ld: %s", name, line, what);
	e->code = code;
}

/* Formats one record's results into the batch's output, all before any is
 * written, so a skipped record leaves nothing behind. The worker writes the
 * lines itself: the values it made never reach another thread. */
/* Formats rec into the batch's output; a failure makes the item bad, its
 * message placed at the item's line. */
static void format_one(struct worker *w, struct batch *b, struct item *it, const struct jd *rec, const char *line)
{
	if (chat_format_line(w->m, &w->o, rec, line, it->len, &w->a, &b->out, &it->err) == 0)
		return;
	it->rc = -1;
	if (line_name(w, b))
		err_at_line(&it->err, w->p->name, it->line);
}

static void format_item(struct worker *w, struct batch *b, struct item *it)
{
	it->out = b->out.n;
	struct jd rec;
	if (it->len && chat_format_seen(w->m, &w->o, it->text, it->len, &b->out)) {
		it->len = 0; /* a line: no records of --jq's to free */
		return;
	}
	if (it->len) {
		it->rc = jsonl_parse_record_jd(line_name(w, b), it->line, it->text, it->len, w->memo, &w->a, &rec,
					       &it->err);
		if (it->rc > 0)
			format_one(w, b, it, &rec, it->text);
		it->len = 0;
		jd_arena_reset(&w->a);
	} else if (it->rc > 0) { /* the records --jq made */
		jv_array_foreach(it->recs, i, one) {
			if (it->rc > 0 && jsonl_jd_of(one, &w->a, &rec) < 0)
				it->rc = err_sys(&it->err, "%s:%ld: out of memory", w->p->name, it->line);
			if (it->rc > 0)
				format_one(w, b, it, &rec, NULL);
			jv_free(one);
			jd_arena_reset(&w->a);
			(void)i;
		}
	}
	jv_free(it->recs);
	it->recs = jv_invalid();
	if (it->rc < 0) /* the lines of the records --jq made before the bad one */
		b->out.n = it->out;
}

/* Room for one more item in b: 0, or -1. */
static int item_room(struct batch *b)
{
	if (b->n < b->cap)
		return 0;
	int cap = b->cap ? 2 * b->cap : BATCH;
	struct item *it = realloc(b->it, (size_t)cap * sizeof *it);
	if (!it)
		return -1;
	b->it = it, b->cap = cap;
	return 0;
}

/* Finds and formats the lines that start in the batch's range; keeps the bad ones. */
static void format_range(struct worker *w, struct batch *b)
{
	struct jsonl_lines g;
	jsonl_lines_start(&g, w->p->map, w->p->size, b->from, b->to);
	struct item one;
	while (jsonl_lines_next(&g, &one.text, &one.len)) {
		one.recs = jv_invalid();
		one.rc = 1;
		one.line = g.lineno;
		format_item(w, b, &one);
		if (one.rc > 0) {
			b->good++;
			continue;
		}
		if (item_room(b) < 0) { /* the main thread stops */
			b->lost = 1;
			break;
		}
		b->it[b->n++] = one;
	}
	b->lines = g.lineno;
}

/* Formats batch b, taken off the queue, and marks it done. */
static void batch_run(struct worker *w, struct batch *b)
{
	struct pool *p = w->p;
	if (b->range)
		format_range(w, b);
	else
		for (int i = 0; i < b->n; i++)
			format_item(w, b, &b->it[i]);
	pthread_mutex_lock(&p->mu);
	b->done = 1;
	if (p->awaited == b)
		pthread_cond_signal(&p->done);
	pthread_mutex_unlock(&p->mu);
}

/* The queue's first batch taken off it (p->mu held), or NULL. */
static struct batch *pool_take(struct pool *p)
{
	struct batch *b = p->todo;
	if (b && !(p->todo = b->next))
		p->todo_tail = NULL;
	return b;
}

/* Frees what the worker made and was given, by its own thread (the jv
 * and jd_shared reference counts are its alone); its memo's stats stay. */
static void worker_free(struct worker *w)
{
	w->memo_stats = chat_model_memo_stats(w->m);
	chat_model_free(w->m);
	jsonl_memo_free(w->memo);
	jd_arena_free(&w->a);
	jd_shared_unref(w->tools);
	jv_free(w->o.vars);
	w->m = NULL, w->memo = NULL, w->tools = NULL, w->o.vars = jv_null();
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct pool *p = w->p;
	/* Each worker starts two more, so that the threads start side by side,
	 * not one after another on the main thread. A worker that cannot be
	 * started is done without: the others take its share. */
	for (int c = 2 * w->id; c <= 2 * w->id + 1 && c < p->nw; c++)
		p->w[c].started = msg_thread_start(&p->w[c].th, worker_main, &p->w[c]) == 0;
	for (;;) {
		pthread_mutex_lock(&p->mu);
		while (!p->quit && !p->todo && !p->last)
			pthread_cond_wait(&p->work, &p->mu);
		if (p->quit || !p->todo) {
			pthread_mutex_unlock(&p->mu);
			worker_free(w);
			tmpl_thread_release();
			return NULL;
		}
		struct batch *b = pool_take(p);
		pthread_mutex_unlock(&p->mu);
		batch_run(w, b);
	}
}

static void pool_submit(struct pool *p, struct batch *b)
{
	pthread_mutex_lock(&p->mu);
	b->next = NULL;
	if (p->todo_tail)
		p->todo_tail->next = b;
	else
		p->todo = b;
	p->todo_tail = b;
	pthread_cond_signal(&p->work);
	pthread_mutex_unlock(&p->mu);
}

/* Waits for batch b, formatting queued batches meanwhile as worker self:
 * the main thread is one of the threads that format, and sleeps only when
 * none is left to take. (Woken for each batch, it used to take a context
 * switch on a core a worker was using.) */
static void pool_wait(struct pool *p, struct batch *b, struct worker *self)
{
	pthread_mutex_lock(&p->mu);
	while (!b->done) {
		struct batch *t = pool_take(p);
		if (t) {
			pthread_mutex_unlock(&p->mu);
			batch_run(self, t);
			pthread_mutex_lock(&p->mu);
			continue;
		}
		p->awaited = b;
		pthread_cond_wait(&p->done, &p->mu);
		p->awaited = NULL;
	}
	pthread_mutex_unlock(&p->mu);
}

/* Workers: as many as asked, else one per CPU this process may run on;
 * for a mapped input of size bytes (else 0), one per range at most. */
static int thread_count(int asked, size_t size)
{
	int n = asked > 0 ? asked : msg_cpus();
	if (asked <= 0 && n > DEFAULT_THREADS)
		n = DEFAULT_THREADS;
	size_t ranges = (size + RANGE - 1) / RANGE;
	return size && (size_t)n > ranges ? (int)ranges : n;
}

static void batch_release_blocks(struct batch *b)
{
	for (int i = 0; i < b->nblocks; i++)
		jsonl_block_release(b->blocks[i]);
	b->nblocks = 0;
}

static void batch_free(struct batch *b)
{
	batch_release_blocks(b);
	free(b->out.p);
	free(b->it);
	free(b);
}

/* Batches done with, kept for the next ones with their buffers grown: a
 * new batch would be zeroed and its buffers grown again. */
static struct batch *spare;

static void batch_recycle(struct batch *b)
{
	b->n = b->done = b->range = 0;
	b->lines = b->good = 0;
	b->lost = 0;
	batch_release_blocks(b);
	b->out.n = 0;
	b->out.oom = 0; /* a record that ran out of memory failed alone, as in a new batch */
	b->order_next = NULL;
	b->next = spare;
	spare = b;
}

static struct batch *batch_new(void)
{
	struct batch *b = spare;
	if (b)
		spare = b->next, b->next = NULL;
	else if (!(b = calloc(1, sizeof *b)))
		msg_die(EXIT_RUNTIME, "out of memory");
	return b;
}

/* The next range of the mapping, [*at, *at + RANGE), for a worker to find its lines in. */
static struct batch *range_batch(size_t *at, size_t size, int *eof)
{
	struct batch *b = batch_new();
	b->range = 1;
	b->from = *at;
	b->to = size - *at > RANGE ? *at + RANGE : size;
	*at = b->to;
	*eof = *at == size;
	return b;
}

/* Reads up to BATCH records into a batch; *eof set at the end. Without
 * --jq the workers parse the lines; jq's state is the main thread's. */
static struct batch *read_batch(struct jsonl_reader *in, struct chat_jq *jq, int *eof)
{
	struct batch *b = batch_new();
	if (item_room(b) < 0)
		msg_die(EXIT_RUNTIME, "out of memory");
	while (b->n < BATCH && !msg_interrupted) {
		struct item *it = &b->it[b->n];
		const char *line;
		size_t len;
		int rc = jsonl_next_line(in, &line, &len, &it->err);
		if (rc == 0) {
			*eof = 1;
			break;
		}
		it->line = jsonl_line(in);
		it->recs = jv_invalid();
		it->len = 0;
		if (rc > 0 && !jq) {
			/* the line stays where the reader put it: the batch holds its block */
			it->text = line, it->len = len; /* not blank, so len > 0 */
			struct jsonl_block *blk = jsonl_line_block(in);
			if (!b->nblocks || b->blocks[b->nblocks - 1] != blk)
				b->blocks[b->nblocks++] = jsonl_block_ref(blk);
		} else if (rc > 0) {
			jv rec;
			rc = jsonl_parse_record(jsonl_name(in), it->line, line, len, &rec, &it->err);
			/* jq may keep references to what it gave; a worker gets copies of its own */
			if (rc > 0)
				it->recs = chat_jv_clone(chat_jq_run(jq, rec, &it->err));
			if (rc > 0 && !jv_is_valid(it->recs))
				rc = jsonl_errf(in, &it->err, "%s", it->err.msg);
		}
		it->rc = rc;
		b->n++;
	}
	return b;
}

int main(int argc, char **argv)
{
	msg_init(argv[0]);
	msg_atexit(outfile_abort_all);
#ifdef M_TOP_PAD
	/* Each worker gets a malloc arena of its own, which glibc grows a few
	 * pages at a time, each step an mprotect that holds the address space's
	 * lock against every other thread's page faults: 380 calls with 16
	 * workers on the 20-turn set. Growing by 4 MiB makes it 40, and that
	 * run 7.7 -> 5.4 ms on 16 cores; pages are still only touched as used.
	 * (Setting it also fixes the size malloc maps apart at 128 KiB.) */
	mallopt(M_TOP_PAD, TOP_PAD);
#endif
	struct err err = {0};
	struct opt_result r;
	int status = opt_start(opts, argc, argv, usage, about, DSFMT_VERSION, &r);
	if (status >= 0)
		return status;
	if (r.nargs > 1)
		msg_die(EXIT_USAGE, "one input file at most (got %d; try --help)", r.nargs);
	const char *model = opt_str(&r, "model", NULL);
	if (!model)
		msg_die(EXIT_USAGE, "--model is required (try --help)");
	const char *input = r.nargs ? r.args[0] : "-";
	int skip_bad = opt_flag(&r, "skip-bad");

	struct chat_opts o = {
		.system = opt_str(&r, "system", NULL),
		.vars = jv_object(),
		.add_generation_prompt = opt_flag(&r, "add-generation-prompt"),
		.train_last = !strcmp(opt_str(&r, "train-turns", "all"), "last"),
		.input = chat_input_parse(opt_str(&r, "input-format", "auto")),
		.no_memo = opt_flag(&r, "no-memo"),
	};
	msg_die_if(chat_opts_check(&o, &err) < 0, &err);
	for (int i = 0; opt_str_at(&r, "var", i); i++) {
		o.vars = chat_var_add(o.vars, opt_str_at(&r, "var", i), &err);
		msg_die_if(!jv_is_valid(o.vars), &err);
	}
	struct jd_shared *tools = NULL;
	if (opt_str(&r, "tools", NULL)) {
		tools = chat_tools_load(opt_str(&r, "tools", NULL), &err);
		msg_die_if(!tools, &err);
	}
	struct chat_jq *jq = NULL;
	if (opt_str(&r, "jq", NULL)) {
		jq = chat_jq_new(opt_str(&r, "jq", NULL), &err);
		msg_die_if(!jq, &err);
	}
	struct jsonl_reader *in = jsonl_open_mapped(input, &err);
	msg_die_if(!in, &err);
	msg_catch_bus(jsonl_name(in));

	/* The workers start now and wait for batches while the model loads:
	 * starting 15 of them takes a millisecond or more on 16 cores. */
	struct pool pool = {.name = jsonl_name(in)};
	int ranges = !jq && jsonl_mapped(in, &pool.map, &pool.size); /* else lines read here */
	size_t range_at = 0;
	long lines_before = 0; /* in the ranges written so far */
	pthread_mutex_init(&pool.mu, NULL);
	pthread_cond_init(&pool.work, NULL);
	pthread_cond_init(&pool.done, NULL);
	int nw = thread_count((int)opt_int(&r, "threads", 0), ranges ? pool.size : 0);
	struct worker w[MAX_THREADS];
	for (int i = 0; i < nw; i++)
		w[i] = (struct worker){.id = i, .p = &pool, .o = o};
	/* w[0] is the main thread's own; SIGINT and SIGTERM stay the main thread's, to interrupt its read */
	pool.w = w, pool.nw = nw;
	if (nw > 1)
		w[1].started = msg_thread_start(&w[1].th, worker_main, &w[1]) == 0;

	struct chat_model *m = chat_model_load(model, opt_str(&r, "template", NULL), &err);
	msg_die_if(!m, &err);
	struct outfile *out = outfile_open(opt_str(&r, "output", "-"), 0, &err);
	msg_die_if(!out, &err);

	msg_catch_signals();

	/* The workers' copies of the shared values are made here: even jv_copy
	 * of a shared value is a write. A worker reads its copies only once it
	 * has taken a batch or been told to leave, under the pool's lock: after
	 * they are made. */
	for (int i = 0; i < nw; i++) {
		w[i].m = chat_model_for_thread(m, &err);
		msg_die_if(!w[i].m, &err);
		if (!(w[i].memo = jsonl_memo_new()))
			msg_die(EXIT_RUNTIME, "out of memory");
		if (tools && !(w[i].tools = jd_shared_new(jd_shared_value(tools))))
			msg_die(EXIT_RUNTIME, "out of memory");
		w[i].o.tools = w[i].tools ? jd_shared_value(w[i].tools) : NULL;
		w[i].o.vars = chat_jv_clone(jv_copy(o.vars));
	}

	struct progress prog;
	progress_start(&prog, "records", 0, opt_progress(&r));
	unsigned long long done = 0, bad = 0;
	struct batch *head = NULL, *tail = NULL; /* in flight, in input order */
	int inflight = 0, eof = 0;
	struct err stop = {0};
	int stopping = 0; /* 1: die with stop; 2: interrupted */
	while (!stopping) {
		while (!eof && !msg_interrupted && inflight < AHEAD * nw + 1) {
			struct batch *b = ranges ? range_batch(&range_at, pool.size, &eof) : read_batch(in, jq, &eof);
			if (!b->n && !b->range) {
				batch_recycle(b);
				break;
			}
			pool_submit(&pool, b);
			if (tail)
				tail->order_next = b;
			else
				head = b;
			inflight++;
			tail = b;
		}
		if (eof && !pool.last) { /* the workers leave as the queue empties */
			pthread_mutex_lock(&pool.mu);
			pool.last = 1;
			pthread_cond_broadcast(&pool.work);
			pthread_mutex_unlock(&pool.mu);
		}
		if (!head)
			break;
		struct batch *b = head;
		pool_wait(&pool, b, &w[0]);
		if (b->range) {
			done += (unsigned long long)b->good;
			progress_update(&prog, done, 0);
			if (b->lost) {
				err_sys(&stop, "out of memory");
				stopping = 1;
			}
		}
		for (int i = 0; i < b->n && !stopping; i++) {
			struct item *it = &b->it[i];
			if (b->range) /* its line named in the file */
				err_at_line(&it->err, pool.name, lines_before + it->line);
			if (it->rc > 0)
				progress_update(&prog, ++done, 0);
			else if (msg_interrupted)
				stopping = 2;
			else if (!skip_bad) {
				stop = it->err;
				stopping = 1;
			} else {
				msg_warn("skipped %s", it->err.msg);
				bad++;
			}
		}
		/* A bad record's lines were taken back: the batch's output is the
		 * good records' lines in order, written at once. */
		if (!stopping && b->out.n && outfile_write(out, b->out.p, b->out.n) < 0) {
			err_sys(&stop, "write error:");
			stopping = 1;
		}
		if (msg_interrupted)
			stopping = 2;
		lines_before += b->lines;
		if (b->range && b->to) /* the next range's start looks at the byte before it */
			jsonl_mapped_done(in, b->to - 1);
		head = b->order_next;
		inflight--;
		if (!head)
			tail = NULL;
		batch_recycle(b);
	}
	/* Stop the workers before anything exits. */
	pthread_mutex_lock(&pool.mu);
	pool.quit = 1;
	pthread_cond_broadcast(&pool.work);
	pthread_mutex_unlock(&pool.mu);
	for (int i = 1; i < nw; i++) /* each after the one that started it, which set started */
		if (w[i].started)
			pthread_join(w[i].th, NULL);
	for (int i = 0; i < nw; i++) /* the started ones freed theirs */
		if (i == 0 || !w[i].started)
			worker_free(&w[i]);
	if (stopping == 1)
		msg_die_err(&stop);
	progress_end(&prog);
	if (msg_interrupted)
		msg_die(130, "interrupted: no output written");
	jsonl_close(in);
	msg_die_if(outfile_commit(out, &err) < 0, &err);
	if (bad)
		msg_warn("%llu bad records were skipped", bad);
	if (opt_progress(&r) > 0) { /* what the memo of shapes saved */
		struct chat_memo_stats t = {0};
		for (int i = 0; i < nw; i++) {
			struct chat_memo_stats s = w[i].memo_stats;
			t.replayed += s.replayed, t.unparsed += s.unparsed, t.learned += s.learned, t.refused += s.refused;
		}
		fprintf(stderr,
			"%s: %llu records written from %llu shapes learned; %llu shapes rendered every time; "
			"%llu lines not parsed\n",
			msg_prog(), t.replayed, t.learned, t.refused, t.unparsed);
	}
	while (spare) {
		struct batch *b = spare;
		spare = b->next;
		batch_free(b);
	}
	chat_model_free(m);
	chat_jq_free(jq);
	jd_shared_unref(tools);
	jv_free(o.vars);
	return EXIT_OK;
}
