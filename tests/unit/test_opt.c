/* opt: every way to write an option, every error, and the help and man output. */
#include <string.h>

#include "check.h"
#include "opt.h"

static const struct opt table[] = {
	{"model", 'm', OPT_STRING, "M", "model folder or GGUF file"},
	{"max-len", 'n', OPT_INT, "N", "longest sequence in tokens", .min = 1},
	{"seed", 0, OPT_INT, "S", "random seed"},
	{"rank", 'r', OPT_INT, "R", "LoRA rank", .min = 1, .max = 256},
	{"chunk", 0, OPT_SIZE, "SIZE", "frame size"},
	{"lr", 0, OPT_FLOAT, "X", "learning rate"},
	{"dropout", 0, OPT_FLOAT, "P", "dropout probability", .fmin = 0, .fmax = 1},
	{"overflow", 0, OPT_CHOICE, NULL, "what to do with long records", .choices = "truncate|drop|error"},
	{"stats", 's', OPT_FLAG, NULL, "print statistics on stderr"},
	{"quiet", 'q', OPT_FLAG, NULL, "print nothing but errors"},
	{"verbose", 'v', OPT_FLAG, NULL, "say more (repeat for more)", .repeat = 1},
	{"target", 't', OPT_STRING, "LIST", "modules to adapt", .repeat = 1},
	{"output", 'o', OPT_STRING, "FILE", "write here instead of standard output"},
	{"help", 'h', OPT_FLAG, NULL, "show this help"},
	{"version", 0, OPT_FLAG, NULL, "show the version"},
	{"help-man", 0, OPT_FLAG, NULL, "man page entries", .hidden = 1},
	{0},
};

/* Parses a NULL-terminated list of arguments (argv[0] is added). */
static int parse(struct opt_result *r, struct err *err, const char **args)
{
	char *argv[64] = {"tool"};
	int argc = 1;
	for (; args[argc - 1]; argc++)
		argv[argc] = (char *)args[argc - 1];
	memset(err, 0, sizeof *err);
	return opt_parse(table, argc, argv, r, err);
}

#define PARSE(r, err, ...) parse(r, err, (const char *[]){__VA_ARGS__, NULL})

static void test_long_forms(void)
{
	struct opt_result r;
	struct err err;
	int rc = PARSE(&r, &err, "--model=a.gguf", "--max-len", "512", "--stats", "--seed=-7");
	CHECK(rc == 0, "rc %d: %s", rc, err.msg);
	CHECK(strcmp(opt_str(&r, "model", "x"), "a.gguf") == 0, "model %s", opt_str(&r, "model", "x"));
	CHECK(opt_int(&r, "max-len", 0) == 512, "max-len %lld", (long long)opt_int(&r, "max-len", 0));
	CHECK(opt_int(&r, "seed", 0) == -7, "seed");
	CHECK(opt_flag(&r, "stats") == 1, "stats");
	CHECK(opt_flag(&r, "quiet") == 0, "quiet");
	CHECK(r.nargs == 0, "nargs %d", r.nargs);
	CHECK(opt_str(&r, "output", NULL) == NULL, "output default");
	CHECK(opt_int(&r, "rank", 8) == 8, "rank default");
	CHECK(opt_float(&r, "lr", 2e-4) == 2e-4, "lr default");
}

static void test_value_starting_with_dash(void)
{
	struct opt_result r;
	struct err err;
	int rc = PARSE(&r, &err, "--seed", "-1", "-o", "-", "--model", "--stats");
	CHECK(rc == 0, "rc %d: %s", rc, err.msg);
	CHECK(opt_int(&r, "seed", 0) == -1, "seed");
	CHECK(strcmp(opt_str(&r, "output", ""), "-") == 0, "output");
	CHECK(strcmp(opt_str(&r, "model", ""), "--stats") == 0, "a value is the next argument");
	CHECK(opt_flag(&r, "stats") == 0, "stats was a value");
	rc = PARSE(&r, &err, "--model=");
	CHECK(rc == 0 && strcmp(opt_str(&r, "model", "x"), "") == 0, "empty value kept");
}

static void test_short_forms(void)
{
	struct opt_result r;
	struct err err;
	int rc = PARSE(&r, &err, "-m", "dir", "-n64", "-qv", "-vvsm", "other", "-r16");
	CHECK(rc == 0, "rc %d: %s", rc, err.msg);
	CHECK(strcmp(opt_str(&r, "model", ""), "other") == 0, "last model wins: %s", opt_str(&r, "model", ""));
	CHECK(opt_int(&r, "max-len", 0) == 64, "-n64");
	CHECK(opt_flag(&r, "quiet") == 1, "quiet %d", opt_flag(&r, "quiet"));
	CHECK(opt_flag(&r, "verbose") == 3, "verbose %d", opt_flag(&r, "verbose"));
	CHECK(opt_flag(&r, "stats") == 1, "stats");
	CHECK(opt_int(&r, "rank", 0) == 16, "rank");
	rc = PARSE(&r, &err, "-qmx.gguf");
	CHECK(rc == 0 && strcmp(opt_str(&r, "model", ""), "x.gguf") == 0, "bundle ending in a value");
}

static void test_operands_and_terminator(void)
{
	struct opt_result r;
	struct err err;
	int rc = PARSE(&r, &err, "a.jsonl", "-q", "-", "b.jsonl", "--", "--stats", "-q", "c");
	CHECK(rc == 0, "rc %d: %s", rc, err.msg);
	CHECK(r.nargs == 6, "nargs %d", r.nargs);
	const char *want[] = {"a.jsonl", "-", "b.jsonl", "--stats", "-q", "c"};
	for (int i = 0; i < 6 && i < r.nargs; i++)
		CHECK(strcmp(r.args[i], want[i]) == 0, "arg %d is %s", i, r.args[i]);
	CHECK(opt_flag(&r, "stats") == 0, "--stats after -- is an operand");
	CHECK(opt_flag(&r, "quiet") == 1, "quiet once");
}

static void test_repeat(void)
{
	struct opt_result r;
	struct err err;
	int rc = PARSE(&r, &err, "-t", "q_proj", "--target=v_proj", "--target", "o_proj");
	CHECK(rc == 0, "rc %d: %s", rc, err.msg);
	CHECK(strcmp(opt_str_at(&r, "target", 0), "q_proj") == 0, "0");
	CHECK(strcmp(opt_str_at(&r, "target", 1), "v_proj") == 0, "1");
	CHECK(strcmp(opt_str_at(&r, "target", 2), "o_proj") == 0, "2");
	CHECK(opt_str_at(&r, "target", 3) == NULL, "past the end");
	CHECK(strcmp(opt_str(&r, "target", ""), "o_proj") == 0, "last wins");
	CHECK(opt_flag(&r, "target") == 3, "count");
}

static void test_sizes_floats_choices(void)
{
	struct opt_result r;
	struct err err;
	static const struct {
		const char *arg;
		int64_t want;
	} sizes[] = {
		{"0", 0},       {"4096", 4096},        {"64K", 65536},         {"64k", 65536},
		{"1M", 1 << 20}, {"2G", 2LL << 30},    {"3KB", 3072},          {"5MiB", 5 << 20},
		{"1T", 1LL << 40}, {"8388607T", 8388607LL << 40},
	};
	for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
		int rc = PARSE(&r, &err, "--chunk", sizes[i].arg);
		CHECK(rc == 0 && opt_int(&r, "chunk", -1) == sizes[i].want, "--chunk %s: rc %d %s -> %lld",
		      sizes[i].arg, rc, err.msg, (long long)opt_int(&r, "chunk", -1));
	}
	int rc = PARSE(&r, &err, "--lr", "2e-4", "--dropout=0.05", "--overflow", "drop");
	CHECK(rc == 0, "rc %d: %s", rc, err.msg);
	CHECK(opt_float(&r, "lr", 0) == 2e-4, "lr %g", opt_float(&r, "lr", 0));
	CHECK(opt_float(&r, "dropout", 0) == 0.05, "dropout");
	CHECK(strcmp(opt_str(&r, "overflow", ""), "drop") == 0, "overflow");
	rc = PARSE(&r, &err, "--dropout=0", "--dropout=1", "--rank=256", "--max-len=1");
	CHECK(rc == 0, "range ends are allowed: %s", err.msg);
	CHECK(opt_float(&r, "max-len", 0) == 1.0, "an integer read as a float");
}

/* Every error: the message names the option and the bad value. */
static void test_errors(void)
{
	static const struct {
		const char *args[4];
		const char *msg;
	} cases[] = {
		{{"--foo"}, "unknown option '--foo'"},
		{{"--foo=1"}, "unknown option '--foo'"},
		{{"--mdoel", "x"}, "unknown option '--mdoel'; did you mean '--model'?"},
		{{"--overfl=drop"}, "unknown option '--overfl'; did you mean '--overflow'?"},
		{{"--statz"}, "unknown option '--statz'; did you mean '--stats'?"},
		{{"-z"}, "unknown option '-z'"},
		{{"-qz"}, "unknown option '-z'"},
		{{"--help-mam"}, "unknown option '--help-mam'"}, /* hidden options are not suggested */
		{{"--hel"}, "unknown option '--hel'; did you mean '--help'?"},
		{{"--lx=1"}, "unknown option '--lx'; did you mean '--lr'?"},
		{{"--xyz"}, "unknown option '--xyz'"},
		{{"--"  "maxlen=5"}, "unknown option '--maxlen'; did you mean '--max-len'?"},
		{{"--model"}, "option '--model' needs a value (M)"},
		{{"-m"}, "option '-m' (--model) needs a value (M)"},
		{{"-qm"}, "option '-m' (--model) needs a value (M)"},
		{{"--stats=1"}, "option '--stats' takes no value, got '--stats=1'"},
		{{"--stats="}, "option '--stats' takes no value, got '--stats='"},
		{{"--max-len", "abc"}, "--max-len must be an integer, got 'abc'"},
		{{"--max-len", "12x"}, "--max-len must be an integer, got '12x'"},
		{{"--max-len", ""}, "--max-len must be an integer, got ''"},
		{{"--max-len", " 5"}, "--max-len must be an integer, got ' 5'"},
		{{"--max-len", "1.5"}, "--max-len must be an integer, got '1.5'"},
		{{"--max-len", "0"}, "--max-len must be at least 1, got '0'"},
		{{"--max-len=-3"}, "--max-len must be at least 1, got '-3'"},
		{{"--seed", "99999999999999999999"}, "--seed must be an integer, got '99999999999999999999'"},
		{{"-r", "0"}, "--rank must be between 1 and 256, got '0'"},
		{{"-r257"}, "--rank must be between 1 and 256, got '257'"},
		{{"--chunk", "12Q"}, "--chunk must be a size (a whole number, optionally with K, M, G or T), got '12Q'"},
		{{"--chunk", "-1"}, "--chunk must be a size (a whole number, optionally with K, M, G or T), got '-1'"},
		{{"--chunk", "1.5G"}, "--chunk must be a size (a whole number, optionally with K, M, G or T), got '1.5G'"},
		{{"--chunk", "8388608T"}, "--chunk must be a size (a whole number, optionally with K, M, G or T), got '8388608T'"},
		{{"--chunk", "K"}, "--chunk must be a size (a whole number, optionally with K, M, G or T), got 'K'"},
		{{"--lr", "fast"}, "--lr must be a number, got 'fast'"},
		{{"--lr", "nan"}, "--lr must be a number, got 'nan'"},
		{{"--lr", "1e999"}, "--lr must be a number, got '1e999'"},
		{{"--lr", ""}, "--lr must be a number, got ''"},
		{{"--dropout", "1.5"}, "--dropout must be between 0 and 1, got '1.5'"},
		{{"--dropout", "-0.1"}, "--dropout must be between 0 and 1, got '-0.1'"},
		{{"--overflow", "wrap"}, "--overflow must be one of truncate|drop|error, got 'wrap'"},
		{{"--overflow="}, "--overflow must be one of truncate|drop|error, got ''"},
		{{"--overflow", "drop|error"}, "--overflow must be one of truncate|drop|error, got 'drop|error'"},
		{{"--overflow", "trunc"}, "--overflow must be one of truncate|drop|error, got 'trunc'"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		char *argv[6] = {"tool"};
		int argc = 1;
		while (argc < 5 && cases[i].args[argc - 1]) {
			argv[argc] = (char *)cases[i].args[argc - 1];
			argc++;
		}
		struct opt_result r;
		struct err err = {{0}, 0};
		int rc = opt_parse(table, argc, argv, &r, &err);
		CHECK(rc == -1, "%s: accepted", cases[i].args[0]);
		CHECK(err.code == EXIT_USAGE, "%s: code %d", cases[i].args[0], err.code);
		CHECK(strcmp(err.msg, cases[i].msg) == 0, "%s: message\n      got  \"%s\"\n      want \"%s\"",
		      cases[i].args[0], err.msg, cases[i].msg);
	}
}

static void test_limits(void)
{
	static char *argv[OPT_MAX_ARGS + 2];
	argv[0] = "tool";
	for (int i = 1; i < OPT_MAX_ARGS + 2; i++)
		argv[i] = "x";
	struct opt_result r;
	struct err err;
	CHECK(opt_parse(table, OPT_MAX_ARGS + 1, argv, &r, &err) == 0 && r.nargs == OPT_MAX_ARGS, "max operands");
	CHECK(opt_parse(table, OPT_MAX_ARGS + 2, argv, &r, &err) == -1 && strstr(err.msg, "too many operands"),
	      "one more: %s", err.msg);
	for (int i = 1; i < OPT_MAX_ARGS + 2; i++)
		argv[i] = "-q";
	CHECK(opt_parse(table, OPT_MAX_SEEN + 1, argv, &r, &err) == 0 && opt_flag(&r, "quiet") == OPT_MAX_SEEN,
	      "max options");
	CHECK(opt_parse(table, OPT_MAX_SEEN + 2, argv, &r, &err) == -1 && strstr(err.msg, "too many options"),
	      "one more: %s", err.msg);
	CHECK(opt_parse(table, 1, argv, &r, &err) == 0 && r.nargs == 0 && r.nseen == 0, "no arguments");
}

static void test_help_and_version_accepted(void)
{
	struct opt_result r;
	struct err err;
	CHECK(PARSE(&r, &err, "--help") == 0 && opt_flag(&r, "help") == 1, "--help");
	CHECK(PARSE(&r, &err, "-h") == 0 && opt_flag(&r, "help") == 1, "-h");
	CHECK(PARSE(&r, &err, "--version") == 0 && opt_flag(&r, "version") == 1, "--version");
	CHECK(PARSE(&r, &err, "--help-man") == 0 && opt_flag(&r, "help-man") == 1, "hidden options parse");
}

static void test_help(void)
{
	char *h = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&h, &size);
	opt_help(table, "tool --model M [options] [FILE...]", "Turns things into other things.", f);
	fclose(f);
	const char *head = "usage: tool --model M [options] [FILE...]\n\nTurns things into other things.\n\noptions:\n";
	CHECK(strncmp(h, head, strlen(head)) == 0, "head");
	CHECK(strstr(h, "\n  -m, --model M      model folder or GGUF file\n") != NULL, "model line");
	CHECK(strstr(h, "\n  -n, --max-len N    longest sequence in tokens\n") != NULL, "max-len line");
	CHECK(strstr(h, "\n      --seed S       random seed\n") != NULL, "long-only line");
	CHECK(strstr(h, "\n  -s, --stats        print statistics on stderr\n") != NULL, "flag line");
	CHECK(strstr(h, "\n  -t, --target LIST  modules to adapt\n") != NULL, "the longest line sets the column");
	CHECK(strstr(h, "\n      --overflow truncate|drop|error\n                     what to do") != NULL,
	      "a long left part puts its help on the next line");
	CHECK(strstr(h, "help-man") == NULL, "hidden option listed");
	/* Every listed option's help starts at the same column. */
	int col = -1, bad = 0;
	for (char *line = strstr(h, "options:\n") + 9; *line; line = strchr(line, '\n') + 1) {
		char *nl = strchr(line, '\n');
		char *p = line;
		while (p < nl && *p == ' ')
			p++;
		if (*p == '-') { /* "-x, --name ARG   help" */
			char *gap = strstr(p, "  ");
			if (!gap || gap > nl)
				continue; /* help on the next line */
			while (*gap == ' ')
				gap++;
			p = gap;
		}
		if (col < 0)
			col = (int)(p - line);
		else if (col != (int)(p - line))
			bad = 1;
	}
	CHECK(!bad && col == 21, "help column %d, aligned %d", col, !bad);
	if (check_case_failed)
		printf("    the help was:\n%s", h);
	free(h);
}

static void test_man(void)
{
	char *buf = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&buf, &size);
	static const struct opt odd[] = {
		{"x", 'x', OPT_FLAG, NULL, ".starts with a dot and has a \\ backslash"},
		{0},
	};
	opt_man(table, f);
	opt_man(odd, f);
	fclose(f);
	CHECK(strstr(buf, ".TP\n\\fB\\-m\\fR, \\fB\\-\\-model\\fR \\fIM\\fR\nmodel folder or GGUF file\n") == buf,
	      "first entry:\n%s", buf);
	CHECK(strstr(buf, ".TP\n\\fB\\-\\-max\\-len\\fR \\fIN\\fR\n") == NULL, "max-len has -n");
	CHECK(strstr(buf, ".TP\n\\fB\\-n\\fR, \\fB\\-\\-max\\-len\\fR \\fIN\\fR\n") != NULL, "max-len:\n%s", buf);
	CHECK(strstr(buf, ".TP\n\\fB\\-\\-seed\\fR \\fIS\\fR\nrandom seed\n") != NULL, "seed:\n%s", buf);
	CHECK(strstr(buf, ".TP\n\\fB\\-\\-overflow\\fR \\fItruncate|drop|error\\fR\n") != NULL, "choice:\n%s", buf);
	CHECK(strstr(buf, ".TP\n\\fB\\-q\\fR, \\fB\\-\\-quiet\\fR\nprint nothing") != NULL, "flag:\n%s", buf);
	CHECK(strstr(buf, "help\\-man") == NULL, "hidden option in the man page");
	CHECK(strstr(buf, "\n\\&.starts with a dot and has a \\e backslash\n") != NULL, "escapes:\n%s", buf);
	int n = 0;
	for (const char *p = buf; (p = strstr(p, ".TP\n")); p++)
		n++;
	CHECK(n == 16, "%d entries", n);
	free(buf);
}

int main(void)
{
	RUN(test_long_forms);
	RUN(test_value_starting_with_dash);
	RUN(test_short_forms);
	RUN(test_operands_and_terminator);
	RUN(test_repeat);
	RUN(test_sizes_floats_choices);
	RUN(test_errors);
	RUN(test_limits);
	RUN(test_help_and_version_accepted);
	RUN(test_help);
	RUN(test_man);
	return check_done();
}
