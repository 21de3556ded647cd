#include "opt.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A lookup by a name that is not in the table is a bug in the tool, not bad
 * input: stopping loudly makes the tool's first test find it, where returning
 * the default would hide it. */
static _Noreturn void opt_bug(const char *name)
{
	fprintf(stderr, "opt: option '%s' is not in the table\n", name);
	abort();
}

static const struct opt *opt_find_long(const struct opt *table, const char *name, size_t len)
{
	for (const struct opt *o = table; o->name; o++)
		if (strlen(o->name) == len && memcmp(o->name, name, len) == 0)
			return o;
	return NULL;
}

static const struct opt *opt_find_short(const struct opt *table, char c)
{
	for (const struct opt *o = table; o->name; o++)
		if (o->shortname && o->shortname == c)
			return o;
	return NULL;
}

/* Edits (insert, delete, change, swap two neighbours) from a[0..la) to b. */
static size_t opt_edit_distance(const char *a, size_t la, const char *b)
{
	size_t lb = strlen(b);
	if (la > 63 || lb > 63)
		return (size_t)-1;
	size_t d[64][64];
	for (size_t i = 0; i <= la; i++)
		d[i][0] = i;
	for (size_t j = 0; j <= lb; j++)
		d[0][j] = j;
	for (size_t i = 1; i <= la; i++)
		for (size_t j = 1; j <= lb; j++) {
			size_t best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
			if (d[i - 1][j] + 1 < best)
				best = d[i - 1][j] + 1;
			if (d[i][j - 1] + 1 < best)
				best = d[i][j - 1] + 1;
			if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < best)
				best = d[i - 2][j - 2] + 1;
			d[i][j] = best;
		}
	return d[la][lb];
}

/* The listed option closest to a mistyped one, or NULL when none is close:
 * a name it is a prefix of ("--mod"), else one a few edits away ("--mdoel"). */
static const struct opt *opt_suggest(const struct opt *table, const char *name, size_t len)
{
	const struct opt *best = NULL;
	size_t best_d = (size_t)-1;
	for (const struct opt *o = table; o->name; o++) {
		if (o->hidden)
			continue;
		if (len >= 2 && strncmp(o->name, name, len) == 0)
			return o;
		size_t d = opt_edit_distance(name, len, o->name);
		if (d < best_d) {
			best_d = d;
			best = o;
		}
	}
	/* Short names are all a few edits apart: only one edit counts for them. */
	size_t limit = len <= 3 ? 1 : len / 3 > 2 ? len / 3 : 2;
	return best_d <= limit ? best : NULL;
}

static int opt_parse_int(const char *s, int64_t *v)
{
	if (!(isdigit((unsigned char)s[0]) || ((s[0] == '-' || s[0] == '+') && isdigit((unsigned char)s[1]))))
		return -1;
	char *end;
	errno = 0;
	long long x = strtoll(s, &end, 10);
	if (errno || *end)
		return -1;
	*v = x;
	return 0;
}

/* "64", "512K", "4M", "1.5G" is not accepted (sizes are whole numbers), "2GiB" and "2GB" are. */
static int opt_parse_size(const char *s, int64_t *v)
{
	if (!isdigit((unsigned char)s[0]))
		return -1;
	char *end;
	errno = 0;
	unsigned long long x = strtoull(s, &end, 10);
	if (errno)
		return -1;
	int shift = 0;
	switch (toupper((unsigned char)*end)) {
	case 0: break;
	case 'K': shift = 10; break;
	case 'M': shift = 20; break;
	case 'G': shift = 30; break;
	case 'T': shift = 40; break;
	default: return -1;
	}
	if (shift) {
		end++;
		if (strcmp(end, "iB") == 0 || strcmp(end, "B") == 0 || strcmp(end, "b") == 0)
			end += strlen(end);
	}
	if (*end)
		return -1;
	if (x > (unsigned long long)INT64_MAX >> shift)
		return -1;
	*v = (int64_t)(x << shift);
	return 0;
}

static int opt_parse_float(const char *s, double *v)
{
	if (!*s || isspace((unsigned char)s[0]))
		return -1;
	char *end;
	errno = 0;
	double x = strtod(s, &end);
	if (*end || !isfinite(x) || (errno == ERANGE && fabs(x) > 1))
		return -1;
	*v = x;
	return 0;
}

static int opt_choice_ok(const char *choices, const char *value)
{
	size_t n = strlen(value);
	for (const char *p = choices; *p;) {
		const char *bar = strchr(p, '|');
		size_t len = bar ? (size_t)(bar - p) : strlen(p);
		if (len == n && memcmp(p, value, n) == 0)
			return 1;
		if (!bar)
			break;
		p = bar + 1;
	}
	return 0;
}

static int opt_range_error(const struct opt *o, const char *value, struct err *err)
{
	if (o->type == OPT_FLOAT) {
		if (o->fmax > o->fmin)
			return err_set(err, "--%s must be between %g and %g, got '%s'", o->name, o->fmin, o->fmax, value);
		return err_set(err, "--%s must be at least %g, got '%s'", o->name, o->fmin, value);
	}
	if (o->max > o->min)
		return err_set(err, "--%s must be between %lld and %lld, got '%s'", o->name,
			       (long long)o->min, (long long)o->max, value);
	return err_set(err, "--%s must be at least %lld, got '%s'", o->name, (long long)o->min, value);
}

/* Checks one value against its option's type and range. */
static int opt_check_value(const struct opt *o, const char *value, struct err *err)
{
	int64_t i;
	double x;
	switch (o->type) {
	case OPT_FLAG:
	case OPT_STRING:
		return 0;
	case OPT_INT:
		if (opt_parse_int(value, &i) < 0)
			return err_set(err, "--%s must be an integer, got '%s'", o->name, value);
		break;
	case OPT_SIZE:
		if (opt_parse_size(value, &i) < 0)
			return err_set(err, "--%s must be a size (a whole number, optionally with K, M, G or T), got '%s'",
				       o->name, value);
		break;
	case OPT_FLOAT:
		if (opt_parse_float(value, &x) < 0)
			return err_set(err, "--%s must be a number, got '%s'", o->name, value);
		if ((o->fmin != 0 || o->fmax != 0) && (x < o->fmin || (o->fmax > o->fmin && x > o->fmax)))
			return opt_range_error(o, value, err);
		return 0;
	case OPT_CHOICE:
		if (!o->choices || !opt_choice_ok(o->choices, value))
			return err_set(err, "--%s must be one of %s, got '%s'", o->name,
				       o->choices ? o->choices : "(none)", value);
		return 0;
	}
	if ((o->min != 0 || o->max != 0) && (i < o->min || (o->max > o->min && i > o->max)))
		return opt_range_error(o, value, err);
	return 0;
}

static int opt_record(struct opt_result *r, const struct opt *o, const char *value, struct err *err)
{
	if (value && opt_check_value(o, value, err) < 0)
		return -1;
	if (r->nseen >= OPT_MAX_SEEN)
		return err_set(err, "too many options (at most %d)", OPT_MAX_SEEN);
	r->seen[r->nseen].opt = o;
	r->seen[r->nseen].value = value;
	r->nseen++;
	return 0;
}

static int opt_operand(struct opt_result *r, const char *arg, struct err *err)
{
	if (r->nargs >= OPT_MAX_ARGS)
		return err_set(err, "too many operands (at most %d)", OPT_MAX_ARGS);
	r->args[r->nargs++] = arg;
	return 0;
}

/* "--name", "--name=value" or "--name value"; *i is advanced past a taken value. */
static int opt_parse_long(const struct opt *table, int argc, char **argv, int *i, struct opt_result *r,
			  struct err *err)
{
	const char *name = argv[*i] + 2;
	const char *eq = strchr(name, '=');
	size_t len = eq ? (size_t)(eq - name) : strlen(name);
	const struct opt *o = opt_find_long(table, name, len);
	if (!o) {
		const struct opt *s = opt_suggest(table, name, len);
		if (s)
			return err_set(err, "unknown option '--%.*s'; did you mean '--%s'?", (int)len, name, s->name);
		return err_set(err, "unknown option '--%.*s'", (int)len, name);
	}
	if (o->type == OPT_FLAG) {
		if (eq)
			return err_set(err, "option '--%s' takes no value, got '%s'", o->name, argv[*i]);
		return opt_record(r, o, NULL, err);
	}
	if (eq)
		return opt_record(r, o, eq + 1, err);
	if (*i + 1 >= argc)
		return err_set(err, "option '--%s' needs a value (%s)", o->name, o->arg ? o->arg : "VALUE");
	return opt_record(r, o, argv[++*i], err);
}

/* "-x", "-xvalue", "-x value" and bundles of flags "-qv", "-qm M". */
static int opt_parse_short(const struct opt *table, int argc, char **argv, int *i, struct opt_result *r,
			   struct err *err)
{
	const char *arg = argv[*i];
	for (const char *p = arg + 1; *p; p++) {
		const struct opt *o = opt_find_short(table, *p);
		if (!o) {
			if (isprint((unsigned char)*p))
				return err_set(err, "unknown option '-%c'", *p);
			return err_set(err, "unknown option in '%s'", arg);
		}
		if (o->type == OPT_FLAG) {
			if (opt_record(r, o, NULL, err) < 0)
				return -1;
			continue;
		}
		if (p[1])
			return opt_record(r, o, p + 1, err);
		if (*i + 1 >= argc)
			return err_set(err, "option '-%c' (--%s) needs a value (%s)", *p, o->name,
				       o->arg ? o->arg : "VALUE");
		return opt_record(r, o, argv[++*i], err);
	}
	return 0;
}

int opt_parse(const struct opt *table, int argc, char **argv, struct opt_result *r, struct err *err)
{
	memset(r, 0, sizeof *r);
	r->table = table;
	int i;
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		int rc;
		if (strcmp(a, "--") == 0) {
			i++;
			break;
		}
		if (a[0] == '-' && a[1] == '-')
			rc = opt_parse_long(table, argc, argv, &i, r, err);
		else if (a[0] == '-' && a[1])
			rc = opt_parse_short(table, argc, argv, &i, r, err);
		else
			rc = opt_operand(r, a, err); /* "-" alone is an operand: standard input */
		if (rc < 0)
			return -1;
	}
	for (; i < argc; i++)
		if (opt_operand(r, argv[i], err) < 0)
			return -1;
	return 0;
}

static const struct opt *opt_lookup(const struct opt_result *r, const char *name)
{
	const struct opt *o = opt_find_long(r->table, name, strlen(name));
	if (!o)
		opt_bug(name);
	return o;
}

static const char *opt_last(const struct opt_result *r, const struct opt *o)
{
	for (int i = r->nseen - 1; i >= 0; i--)
		if (r->seen[i].opt == o)
			return r->seen[i].value;
	return NULL;
}

int opt_flag(const struct opt_result *r, const char *name)
{
	const struct opt *o = opt_lookup(r, name);
	int n = 0;
	for (int i = 0; i < r->nseen; i++)
		n += r->seen[i].opt == o;
	return n;
}

const char *opt_str(const struct opt_result *r, const char *name, const char *def)
{
	const char *v = opt_last(r, opt_lookup(r, name));
	return v ? v : def;
}

int64_t opt_int(const struct opt_result *r, const char *name, int64_t def)
{
	const struct opt *o = opt_lookup(r, name);
	if (o->type != OPT_INT && o->type != OPT_SIZE)
		opt_bug(name);
	const char *v = opt_last(r, o);
	int64_t x;
	if (!v)
		return def;
	/* Checked by opt_parse already; parsed again here to keep the result small. */
	if ((o->type == OPT_INT ? opt_parse_int(v, &x) : opt_parse_size(v, &x)) < 0)
		return def;
	return x;
}

double opt_float(const struct opt_result *r, const char *name, double def)
{
	const struct opt *o = opt_lookup(r, name);
	if (o->type != OPT_FLOAT && o->type != OPT_INT)
		opt_bug(name);
	const char *v = opt_last(r, o);
	double x;
	if (!v || opt_parse_float(v, &x) < 0)
		return def;
	return x;
}

const char *opt_str_at(const struct opt_result *r, const char *name, int i)
{
	const struct opt *o = opt_lookup(r, name);
	for (int k = 0; k < r->nseen; k++)
		if (r->seen[k].opt == o && i-- == 0)
			return r->seen[k].value;
	return NULL;
}

/* The value's name as --help and the man page show it. */
static const char *opt_arg_name(const struct opt *o)
{
	if (o->type == OPT_FLAG)
		return NULL;
	if (o->arg)
		return o->arg;
	switch (o->type) {
	case OPT_INT: return "N";
	case OPT_SIZE: return "SIZE";
	case OPT_FLOAT: return "X";
	case OPT_CHOICE: return o->choices ? o->choices : "WORD";
	default: return "VALUE";
	}
}

/* Wide enough for "  -m, --model M" of the longest usual option; longer ones
 * put their help on the next line, as curl and zstd do. */
enum { OPT_HELP_COLUMN_MAX = 32 };

static int opt_help_left(const struct opt *o, char *buf, size_t size)
{
	const char *arg = opt_arg_name(o);
	int n;
	if (o->shortname)
		n = snprintf(buf, size, "  -%c, --%s%s%s", o->shortname, o->name, arg ? " " : "", arg ? arg : "");
	else
		n = snprintf(buf, size, "      --%s%s%s", o->name, arg ? " " : "", arg ? arg : "");
	return n < 0 ? 0 : n;
}

void opt_help(const struct opt *table, const char *usage, const char *about, FILE *f)
{
	char left[256];
	int width = 0;
	for (const struct opt *o = table; o->name; o++) {
		if (o->hidden)
			continue;
		int n = opt_help_left(o, left, sizeof left) + 2;
		if (n > width && n <= OPT_HELP_COLUMN_MAX)
			width = n;
	}
	if (width == 0)
		width = OPT_HELP_COLUMN_MAX;
	fprintf(f, "usage: %s\n\n", usage ? usage : msg_prog());
	if (about)
		fprintf(f, "%s\n\n", about);
	fputs("options:\n", f);
	for (const struct opt *o = table; o->name; o++) {
		if (o->hidden)
			continue;
		int n = opt_help_left(o, left, sizeof left);
		const char *help = o->help ? o->help : "";
		if (n + 2 > width)
			fprintf(f, "%s\n%*s%s\n", left, width, "", help);
		else
			fprintf(f, "%-*s%s\n", width, left, help);
	}
}

/* Writes s for troff: '-' as "\-" in option names (so they copy and search as
 * ASCII hyphens), a backslash as "\e", and "\&" before a leading '.' or '\''
 * (which troff would take as a request). */
static void opt_man_text(const char *s, int hyphens, FILE *f)
{
	if (*s == '.' || *s == '\'')
		fputs("\\&", f);
	for (; *s; s++) {
		if (*s == '\\')
			fputs("\\e", f);
		else if (*s == '-' && hyphens)
			fputs("\\-", f);
		else
			fputc(*s, f);
	}
}

void opt_man(const struct opt *table, FILE *f)
{
	for (const struct opt *o = table; o->name; o++) {
		if (o->hidden)
			continue;
		const char *arg = opt_arg_name(o);
		fputs(".TP\n", f);
		if (o->shortname) {
			fputs("\\fB\\-", f);
			opt_man_text((char[]){o->shortname, 0}, 1, f);
			fputs("\\fR, ", f);
		}
		fputs("\\fB\\-\\-", f);
		opt_man_text(o->name, 1, f);
		fputs("\\fR", f);
		if (arg) {
			fputs(" \\fI", f);
			opt_man_text(arg, 0, f);
			fputs("\\fR", f);
		}
		fputc('\n', f);
		opt_man_text(o->help ? o->help : "", 0, f);
		fputc('\n', f);
	}
}

static int opt_in_table(const struct opt *table, const char *name)
{
	for (const struct opt *o = table; o->name; o++)
		if (!strcmp(o->name, name))
			return 1;
	return 0;
}

int opt_start(const struct opt *table, int argc, char **argv, const char *usage, const char *about,
	      const char *version, struct opt_result *r)
{
	struct err err = {0};
	if (opt_parse(table, argc, argv, r, &err) < 0) {
		msg_error("%s (try --help)", err.msg);
		return EXIT_USAGE;
	}
	if (opt_in_table(table, "help") && opt_flag(r, "help"))
		opt_help(table, usage, about, stdout);
	else if (opt_in_table(table, "help-man") && opt_flag(r, "help-man"))
		opt_man(table, stdout);
	else if (opt_in_table(table, "version") && opt_flag(r, "version"))
		printf("%s %s\n", msg_prog(), version);
	else {
		if (opt_in_table(table, "quiet") && opt_flag(r, "quiet"))
			msg_level = 1;
		return -1;
	}
	return fflush(stdout) == 0 ? EXIT_OK : EXIT_RUNTIME;
}

int opt_progress(const struct opt_result *r)
{
	return opt_flag(r, "quiet") ? -1 : opt_flag(r, "progress") ? 1 : 0;
}
