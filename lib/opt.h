/* opt: the one command-line parser of every tool.
 *
 * A tool describes its options once, in a table; the same table parses argv,
 * checks numbers and prints --help, so the help cannot disagree with the parser.
 * Long options take "--name=value" or "--name value"; short ones "-x value" or
 * "-xvalue"; flags may be bundled ("-qv"). "--" ends the options. Numbers are
 * checked (whole string, range); sizes take K/M/G suffixes (powers of 1024).
 * Options and operands may be mixed; a value is always the next argument, even
 * when it starts with '-' (so "--seed -1" works). A non-repeat option given
 * twice is not an error: the last one wins, so scripts can override defaults.
 * opt_man() writes the same table as a man page's OPTIONS entries.
 *
 *   static const struct opt opts[] = {
 *       {"model", 'm', OPT_STRING, "M", "model folder or GGUF file"},
 *       {"max-len", 0, OPT_INT, "N", "longest sequence in tokens", .min = 1},
 *       {"stats", 0, OPT_FLAG, NULL, "print statistics on stderr"},
 *       {0},
 *   };
 *   struct opt_result r;
 *   if (opt_parse(opts, argc, argv, &r, &err) < 0) msg_die_err(&err);
 *   const char *model = opt_str(&r, "model", NULL);
 */
#ifndef LORAPIPE_OPT_H
#define LORAPIPE_OPT_H

#include <stdint.h>
#include <stdio.h>

#include "msg.h"

enum opt_type {
	OPT_FLAG,   /* no value; counts occurrences */
	OPT_STRING,
	OPT_INT,    /* int64, checked against min/max (see struct opt) */
	OPT_SIZE,   /* int64 >= 0 with optional K/M/G/T suffix (KB, KiB too), checked like OPT_INT */
	OPT_FLOAT,  /* finite double, checked against fmin/fmax */
	OPT_CHOICE, /* one of the '|'-separated words in .choices */
};

struct opt {
	const char *name;   /* long name without "--"; NULL ends the table */
	char shortname;     /* 0 for none */
	enum opt_type type;
	const char *arg;    /* name of the value in --help ("N", "FILE"); NULL for flags */
	const char *help;   /* one line */
	/* Range: none when min and max are both 0; otherwise value >= min, and
	 * value <= max as well when max > min (so ".min = 1" alone means "at least 1").
	 * fmin/fmax work the same way for OPT_FLOAT. */
	int64_t min, max;
	double fmin, fmax;
	const char *choices; /* OPT_CHOICE: "truncate|drop|error" */
	int repeat;          /* may be given more than once (the values are kept in order) */
	int hidden;          /* parsed, but left out of opt_help and opt_man (e.g. "help-man") */
};

#define OPT_MAX_SEEN 64
#define OPT_MAX_ARGS 256

struct opt_result {
	const struct opt *table;
	int nseen;
	struct {
		const struct opt *opt;
		const char *value; /* NULL for flags */
	} seen[OPT_MAX_SEEN];
	int nargs;                       /* operands left after the options */
	const char *args[OPT_MAX_ARGS];
};

/* Parses argv[1..argc). Returns 0, or -1 with err set (code EXIT_USAGE). */
int opt_parse(const struct opt *table, int argc, char **argv, struct opt_result *r, struct err *err);

/* Lookups by long name; the last occurrence wins. The name must be in the table:
 * a name that is not aborts the program (a typo in a tool, caught by its first test),
 * and so does opt_int on an option that is not OPT_INT/OPT_SIZE or opt_float on
 * one that is not OPT_FLOAT/OPT_INT. opt_str works on every option with a value. */
int opt_flag(const struct opt_result *r, const char *name);           /* occurrences */
const char *opt_str(const struct opt_result *r, const char *name, const char *def);
int64_t opt_int(const struct opt_result *r, const char *name, int64_t def); /* OPT_INT and OPT_SIZE */
double opt_float(const struct opt_result *r, const char *name, double def);
/* For repeatable options: the i-th value, or NULL past the last. */
const char *opt_str_at(const struct opt_result *r, const char *name, int i);

/* Writes "usage: <usage>\n\n<about>\n\noptions:\n" and one aligned line per option:
 *   "  -m, --model M          model folder or GGUF file"
 * about may be NULL. */
void opt_help(const struct opt *table, const char *usage, const char *about, FILE *f);
/* Writes one troff ".TP" entry per option, for the OPTIONS section of a man page
 * (a tool prints it for a hidden --help-man; tests check man/ against it). */
void opt_man(const struct opt *table, FILE *f);

/* The rows every tool's table ends with, before {0}: --progress, -q/--quiet,
 * -h/--help, -V/--version and the hidden --help-man (the man page's OPTIONS). */
#define OPT_COMMON_ROWS \
	{"progress", 0, OPT_FLAG, NULL, "show progress even when stderr is not a terminal"}, \
	{"quiet", 'q', OPT_FLAG, NULL, "no progress and no warnings, only errors"}, \
	{"help", 'h', OPT_FLAG, NULL, "show this help"}, \
	{"version", 'V', OPT_FLAG, NULL, "show the version"}, \
	{"help-man", 0, OPT_FLAG, NULL, "print the OPTIONS section of the man page", .hidden = 1}

/* The start every tool shares: parses argv into r and answers --help,
 * --help-man and --version (those the table has) on standard output; a parse
 * error is printed with a hint to try --help; --quiet lowers msg_level to
 * errors only. Returns -1 when the tool goes on, else the status it should
 * exit with. */
int opt_start(const struct opt *table, int argc, char **argv, const char *usage, const char *about,
	      const char *version, struct opt_result *r);

/* progress_start's mode from --progress and --quiet: 1 always, -1 never, 0 on a terminal. */
int opt_progress(const struct opt_result *r);

#endif
