/* tok — tokenize rendered conversations (format 2) into token streams (format 3).
 *
 *   tok --model M < text.jsonl > train.tok.zst
 *
 * Given a token stream instead, --jsonl, --explain, --decode and --stats show it.
 * Only wiring lives here: encoding in lib/tokenizer, labels in lib/labels, the
 * file format in lib/tokstream.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jsonl.h"
#include "labels.h"
#include "msg.h"
#include "opt.h"
#include "outfile.h"
#include "progress.h"
#include "tokenizer.h"
#include "tokstream.h"

#define TOK_VERSION "0.1.0"

static const struct opt opts[] = {
	{"model", 'm', OPT_STRING, "M", "model folder, tokenizer.json or GGUF file (needed to encode, decode, explain)"},
	{"output", 'o', OPT_STRING, "FILE", "write here (atomically) instead of standard output"},
	{"max-len", 0, OPT_INT, "N", "longest sequence in tokens; longer ones follow --overflow", .min = 1,
	 .max = INT32_MAX},
	{"overflow", 0, OPT_CHOICE, "POLICY", "records over --max-len: drop (default), truncate or error",
	 .choices = "drop|truncate|error"},
	{"drop-empty", 0, OPT_FLAG, NULL, "drop records in which no token is learned (default: stop with an error)"},
	{"skip-bad", 0, OPT_FLAG, NULL, "skip and count malformed records instead of stopping"},
	{"jsonl", 0, OPT_FLAG, NULL, "write {\"ids\":[...],\"labels\":[...]} lines instead of a token stream"},
	{"offsets", 0, OPT_FLAG, NULL, "with --jsonl on text: add \"offsets\", byte ranges into the text"},
	{"explain", 0, OPT_FLAG, NULL, "show each record as text: tokens split by '|', learned ones in [[ ]]"},
	{"decode", 0, OPT_FLAG, NULL, "turn a token stream back into {\"text\":...} lines"},
	{"stats", 0, OPT_FLAG, NULL, "print counts, learned share and a length histogram on stderr"},
	{"color", 0, OPT_CHOICE, "WHEN", "colors for --explain: auto (default), always, never",
	 .choices = "auto|always|never"},
	OPT_COMMON_ROWS,
	{0},
};

static const char usage[] = "tok --model M [OPTIONS] [FILE]";
static const char about[] =
	"Tokenizes format-2 records ({\"text\":...,\"train\":[[start,end],...]}) from FILE or standard\n"
	"input into a zstd-compressed token stream: a token is learned (label = its id) when its\n"
	"bytes overlap a train span, -100 otherwise. No special token is added: they come from the\n"
	"rendered text only. Given a token stream (*.tok.zst) instead, --jsonl, --explain, --decode\n"
	"and --stats show it. Exit status: 0 done, 1 runtime failure, 2 bad usage or bad input.";

struct settings {
	const char *input, *output, *model;
	int64_t max_len;
	enum labels_overflow overflow;
	int drop_empty, skip_bad, jsonl, offsets, explain, decode, stats, color, progress;
};

/* A token stream starts with a zstd frame (regular or skippable); format 2 with
 * '{' or white space. The first byte tells them apart without reading further. */
static int input_is_stream(const char *path)
{
	FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
	if (!f)
		msg_die(EXIT_USAGE, "%s: cannot open: %s", path, strerror(errno));
	int c = getc(f);
	if (f == stdin) {
		if (c != EOF)
			ungetc(c, stdin);
	} else {
		fclose(f);
	}
	return c != EOF && c != '{' && c != ' ' && c != '\t' && c != '\n' && c != '\r';
}

static struct tokenizer *load_tokenizer(const struct settings *s, const char *why)
{
	if (!s->model)
		msg_die(EXIT_USAGE, "--model is required %s (try --help)", why);
	struct err err = {0};
	struct tokenizer *tk = tokenizer_load(s->model, &err);
	msg_die_if(!tk, &err);
	return tk;
}

static void write_ids_line(FILE *f, const struct tok_encoding *e, const int32_t *labels, int offsets)
{
	jv ids = jv_array(), lab = jv_array();
	for (size_t i = 0; i < e->n; i++) {
		ids = jv_array_append(ids, jv_number(e->ids[i]));
		lab = jv_array_append(lab, jv_number(labels[i]));
	}
	jv o = JV_OBJECT(jv_string("ids"), ids, jv_string("labels"), lab);
	if (offsets) {
		jv offs = jv_array();
		for (size_t i = 0; i < e->n; i++)
			offs = jv_array_append(offs, JV_ARRAY(jv_number(e->offsets[i][0]), jv_number(e->offsets[i][1])));
		o = jv_object_set(o, jv_string("offsets"), offs);
	}
	struct err err = {0};
	msg_die_if(jsonl_write(f, o, &err) < 0, &err);
}

static void warn_counts(const struct labels_stats *st, const struct settings *s)
{
	if (st->dropped_long)
		msg_warn("%llu records longer than --max-len %lld were dropped", (unsigned long long)st->dropped_long,
			 (long long)s->max_len);
	if (st->truncated)
		msg_warn("%llu records were truncated to --max-len %lld", (unsigned long long)st->truncated,
			 (long long)s->max_len);
	if (st->empty)
		msg_warn("%llu records with no learned token were dropped", (unsigned long long)st->empty);
	if (st->bad)
		msg_warn("%llu malformed records were skipped", (unsigned long long)st->bad);
	if (st->multi_bos)
		msg_warn("%llu records hold a doubled BOS token (first at line %ld): the template or the "
			 "text adds one twice", (unsigned long long)st->multi_bos, st->first_multi_bos_line);
}

/* Format 2 in; a token stream, --jsonl lines or --explain text out. */
static void encode_text(const struct settings *s)
{
	struct err err = {0};
	struct tokenizer *tk = load_tokenizer(s, "to encode text");
	struct jsonl_reader *in = jsonl_open(s->input, &err);
	msg_die_if(!in, &err);
	int binary = !s->jsonl && !s->explain;
	struct outfile *out = outfile_open(s->output, binary, &err);
	msg_die_if(!out, &err);
	struct tokstream_writer *w = NULL;
	if (binary) {
		w = tokstream_writer_new(out->f, tokenizer_vocab_size(tk), tokenizer_fingerprint(tk), &err);
		msg_die_if(!w, &err);
	}
	struct labels_stats st = {0};
	struct progress prog;
	progress_start(&prog, "records", 0, s->progress);
	struct tok_encoding enc = {0};
	int32_t *labels = NULL;
	size_t labels_cap = 0;
	struct labels_bos bos = {tokenizer_bos_id(tk), tokenizer_adds_bos(tk)};
	jv rec = jv_invalid();
	int rc;
	while (!msg_interrupted && (rc = jsonl_next(in, &rec, &err)) != 0) {
		struct labels_record lr = {0};
		if (rc < 0)
			rec = jv_invalid(); /* a failed read leaves rec unset */
		if (rc > 0) {
			enc.n = 0;
			if (labels_parse(rec, &lr, &err) < 0 ||
			    tokenizer_encode(tk, lr.text, lr.len, 0, &enc, &err) < 0)
				rc = jsonl_errf(in, &err, "%s", err.msg);
		}
		if (rc < 0 && msg_interrupted)
			break; /* the read was cut short by the signal */
		if (rc < 0) {
			if (!s->skip_bad)
				msg_die_err(&err);
			msg_warn("skipped %s", err.msg);
			st.bad++;
			labels_record_free(&lr);
			jv_free(rec);
			continue;
		}
		if (enc.n > labels_cap) {
			labels_cap = enc.cap;
			labels = realloc(labels, labels_cap * sizeof *labels);
			if (!labels)
				msg_die(EXIT_RUNTIME, "out of memory");
		}
		uint64_t multi_bos = st.multi_bos;
		int fate = labels_assign(&lr, &enc, labels, s->max_len, s->overflow, bos, &st, &err);
		if (fate < 0)
			msg_die_if(jsonl_errf(in, &err, "%s", err.msg), &err);
		if (fate == LABELS_EMPTY && !s->drop_empty)
			msg_die_if(jsonl_errf(in, &err, "no token is learned (every label is -100): check the "
						  "\"train\" spans, or drop such records with --drop-empty"), &err);
		if (st.multi_bos > multi_bos && !st.first_multi_bos_line)
			st.first_multi_bos_line = jsonl_line(in);
		if (fate == LABELS_KEEP) {
			if (w)
				msg_die_if(tokstream_write(w, enc.ids, labels, (uint32_t)enc.n, &err) < 0, &err);
			else if (s->explain)
				msg_die_if(labels_explain(out->f, tk, lr.text, &enc, labels, s->color, &err) < 0, &err);
			else
				write_ids_line(out->f, &enc, labels, s->offsets);
		}
		labels_record_free(&lr);
		jv_free(rec);
		progress_update(&prog, st.records_in, 0);
	}
	progress_end(&prog);
	if (msg_interrupted)
		msg_die(130, "interrupted: no output written");
	jsonl_close(in);
	if (w)
		msg_die_if(tokstream_writer_finish(w, &err) < 0, &err);
	msg_die_if(outfile_commit(out, &err) < 0, &err);
	warn_counts(&st, s);
	if (s->stats)
		labels_stats_print(&st, 1, stderr);
	tok_encoding_free(&enc);
	free(labels);
	tokenizer_free(tk);
}

/* A token stream in; --jsonl, --explain, --decode or --stats out. */
static void show_stream(const struct settings *s)
{
	struct err err = {0};
	if (s->offsets)
		msg_die(EXIT_USAGE, "--offsets needs text input: a token stream keeps no offsets");
	if (!s->jsonl && !s->explain && !s->decode && !s->stats)
		msg_die(EXIT_USAGE, "%s is a token stream already: say --jsonl, --explain, --decode or --stats",
			s->input);
	struct tokenizer *tk = NULL;
	if (s->explain || s->decode)
		tk = load_tokenizer(s, s->decode ? "to decode" : "to explain");
	struct tokstream_reader *r = tokstream_open(s->input, &err);
	msg_die_if(!r, &err);
	const struct tokstream_info *info = tokstream_info(r);
	if (tk && tokenizer_fingerprint(tk) != info->tokenizer_fp)
		msg_die(EXIT_USAGE, "%s was made by a different tokenizer than %s's (fingerprint %016llx, not %016llx)",
			s->input, s->model, (unsigned long long)info->tokenizer_fp,
			(unsigned long long)tokenizer_fingerprint(tk));
	struct outfile *out = NULL;
	if (s->jsonl || s->explain || s->decode) {
		out = outfile_open(s->output, 0, &err);
		msg_die_if(!out, &err);
	}
	struct labels_bos bos = {tk ? tokenizer_bos_id(tk) : -1, tk ? tokenizer_adds_bos(tk) : 0};
	struct labels_stats st = {0};
	struct progress prog;
	progress_start(&prog, "records", info->n_records == TOKSTREAM_UNKNOWN ? 0 : info->n_records, s->progress);
	struct tokstream_record rec;
	int rc;
	while (!msg_interrupted && (rc = tokstream_next(r, &rec, &err)) != 0) {
		if (rc < 0 && msg_interrupted)
			break;
		msg_die_if(rc < 0, &err);
		st.records_in++;
		labels_stats_add(&st, rec.ids, rec.labels, rec.n, bos);
		struct tok_encoding e = {.ids = (uint32_t *)rec.ids, .n = rec.n};
		if (s->jsonl) {
			write_ids_line(out->f, &e, rec.labels, 0);
		} else if (s->explain) {
			msg_die_if(labels_explain(out->f, tk, NULL, &e, rec.labels, s->color, &err) < 0, &err);
		} else if (s->decode) {
			char *text;
			size_t len;
			msg_die_if(tokenizer_decode(tk, rec.ids, rec.n, 0, &text, &len, &err) < 0, &err);
			msg_die_if(jsonl_write(out->f, JV_OBJECT(jv_string("text"), jv_string_sized(text, (int)len)), &err) < 0,
			       &err);
			free(text);
		}
		progress_update(&prog, st.records, 0);
	}
	progress_end(&prog);
	if (msg_interrupted)
		msg_die(130, "interrupted: no output written");
	tokstream_close(r);
	if (out)
		msg_die_if(outfile_commit(out, &err) < 0, &err);
	if (s->stats)
		labels_stats_print(&st, 1, stderr);
	tokenizer_free(tk);
}

int main(int argc, char **argv)
{
	msg_init(argv[0]);
	msg_atexit(outfile_abort_all);
	struct opt_result r;
	int status = opt_start(opts, argc, argv, usage, about, TOK_VERSION, &r);
	if (status >= 0)
		return status;
	if (r.nargs > 1)
		msg_die(EXIT_USAGE, "one input file at most (got %d; try --help)", r.nargs);
	const char *color = opt_str(&r, "color", "auto");
	const char *overflow = opt_str(&r, "overflow", "drop");
	struct settings s = {
		.input = r.nargs ? r.args[0] : "-",
		.output = opt_str(&r, "output", "-"),
		.model = opt_str(&r, "model", NULL),
		.max_len = opt_int(&r, "max-len", 0),
		.overflow = !strcmp(overflow, "truncate") ? LABELS_OVERFLOW_TRUNCATE
			    : !strcmp(overflow, "error")  ? LABELS_OVERFLOW_ERROR
							  : LABELS_OVERFLOW_DROP,
		.drop_empty = opt_flag(&r, "drop-empty"),
		.skip_bad = opt_flag(&r, "skip-bad"),
		.jsonl = opt_flag(&r, "jsonl"),
		.offsets = opt_flag(&r, "offsets"),
		.explain = opt_flag(&r, "explain"),
		.decode = opt_flag(&r, "decode"),
		.stats = opt_flag(&r, "stats"),
		.progress = opt_progress(&r),
	};
	if (s.jsonl + s.explain + s.decode > 1)
		msg_die(EXIT_USAGE, "--jsonl, --explain and --decode exclude one another");
	if (s.offsets && !s.jsonl)
		msg_die(EXIT_USAGE, "--offsets goes with --jsonl");
	s.color = !strcmp(color, "always") ||
		  (!strcmp(color, "auto") && !strcmp(s.output, "-") && isatty(1) && getenv("NO_COLOR") == NULL);

	msg_catch_signals();

	if (input_is_stream(s.input))
		show_stream(&s);
	else if (s.decode)
		msg_die(EXIT_USAGE, "--decode reads a token stream; %s holds text", s.input);
	else
		encode_text(&s);
	return EXIT_OK;
}
