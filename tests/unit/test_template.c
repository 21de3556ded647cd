/* test_template: lib/template — rendering (expectations checked against jinja2
 * 3.1 with transformers' settings), whitespace control, provenance of output
 * bytes, {% generation %} ranges, limits and error messages. */
#include <string.h>

#include "check.h"
#include "jsonl.h"
#include "template.h"

/* Renders src with the JSON context ctx; returns 0 and fills out, or -1 with err. */
static int render(const char *src, const char *ctx, const struct tmpl_limits *lim, struct tmpl_output *out,
		  struct err *err)
{
	jv c = jsonl_parse_value(ctx, strlen(ctx)); /* as ds-fmt reads records: "1.0" a float */
	if (!jv_is_valid(c)) {
		jv_free(c);
		return err_set(err, "bad test context");
	}
	struct tmpl *t = tmpl_compile(src, strlen(src), "chat_template", err);
	if (!t) {
		jv_free(c);
		return -1;
	}
	int rc = tmpl_render(t, c, lim, out, err);
	tmpl_free(t);
	return rc;
}

/* Runs tile the output in order, without gaps or empty runs. */
static int runs_tile(const struct tmpl_output *o)
{
	uint32_t at = 0;
	for (size_t i = 0; i < o->nruns; i++) {
		if (o->runs[i].start != at || o->runs[i].end <= at)
			return 0;
		at = o->runs[i].end;
	}
	return at == o->len;
}

static void expect(const char *src, const char *ctx, const char *want)
{
	struct tmpl_output o;
	struct err err;
	if (render(src, ctx, NULL, &o, &err) < 0) {
		CHECK(0, "%s: %s", src, err.msg);
		return;
	}
	CHECK(o.len == strlen(want) && memcmp(o.text, want, o.len) == 0, "%s:\n  got  [%s]\n  want [%s]", src, o.text,
	      want);
	CHECK(runs_tile(&o), "%s: runs do not tile the output", src);
	tmpl_output_free(&o);
}

static void expect_err(const char *src, const char *ctx, const struct tmpl_limits *lim, const char *want)
{
	struct tmpl_output o;
	struct err err;
	if (render(src, ctx, lim, &o, &err) == 0) {
		CHECK(0, "%s: rendered [%.80s], expected an error", src, o.text);
		tmpl_output_free(&o);
		return;
	}
	CHECK(strstr(err.msg, want) != NULL, "%s: error [%s], expected [%s]", src, err.msg, want);
	CHECK(err.code == EXIT_USAGE, "%s: error code %d", src, err.code);
}

static const struct {
	const char *src, *ctx, *want;
} cases[] = {
#include "test_template_cases.inc"
};

static void test_jinja_cases(void)
{
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
		expect(cases[i].src, cases[i].ctx, cases[i].want);
}

static void test_whitespace(void)
{
	expect("a\n{% if true %}\nb\n{% endif %}\nc\n", "{}", "a\nb\nc");
	expect("a {# comment #}\n  {#- c -#}  b", "{}", "a b");
	expect("{% raw %}{{ x }}{% endraw %}", "{}", "{{ x }}");
	expect("{{ 'a' }}\n\n", "{}", "a\n");
	expect("a\r\nb", "{}", "a\nb");
	expect("  {{ 'v' }}  {% if true %}x{% endif %}", "{}", "  v  x");
}

static const char *CHATML =
	"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
	"'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

static void test_chatml(void)
{
	expect(CHATML,
	       "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Yo\"}],"
	       " \"add_generation_prompt\": true}",
	       "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n<|im_start|>assistant\n");
}

/* The turns of loops over the messages: each iteration whose item is a
 * message and that prints to the output, in the order they end (an inner
 * loop's first); none from a capture or from a loop over other values. */
static void test_message_turns(void)
{
	struct tmpl_output o;
	struct err err;
	const char *ctx = "{\"messages\": [{\"role\": \"system\", \"content\": \"S\"},"
			  " {\"role\": \"user\", \"content\": \"u\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}";
	int rc = render("{% set c %}{% for m in messages %}{{ m.content }}{% endfor %}{% endset %}"
			"{% for x in [1, 2] %}{{ x }}{% endfor %}"
			"{% set loop_messages = messages[1:] %}{% for m in loop_messages %}<{{ m.content }}"
			"{% for later in loop_messages[loop.index:] %}.{% endfor %}>{% endfor %}",
			ctx, NULL, &o, &err);
	CHECK(rc == 0, "%s", err.msg);
	if (rc)
		return;
	CHECK(strcmp(o.text, "12<u.><a>") == 0, "got [%s]", o.text);
	/* message 2 inside message 1's turn (2 to 6), then message 2's own (6 to 9) */
	static const struct tmpl_turn want[] = {{2, 4, 5}, {1, 2, 6}, {2, 6, 9}};
	CHECK(o.nturns == 3, "%zu turns", o.nturns);
	for (size_t i = 0; i < o.nturns && i < 3; i++)
		CHECK(o.turns[i].msg == want[i].msg && o.turns[i].start == want[i].start && o.turns[i].end == want[i].end,
		      "turn %zu: message %d, %u to %u", i, o.turns[i].msg, o.turns[i].start, o.turns[i].end);
	tmpl_output_free(&o);
}

/* The run holding byte offset at. */
static const struct tmpl_run *run_at(const struct tmpl_output *o, uint32_t at)
{
	for (size_t i = 0; i < o->nruns; i++)
		if (o->runs[i].start <= at && at < o->runs[i].end)
			return &o->runs[i];
	return NULL;
}

static void test_provenance(void)
{
	struct tmpl_output o;
	struct err err;
	const char *ctx = "{\"messages\": [{\"role\": \"user\", \"content\": \"  hi there \"},"
			  " {\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [{\"function\": {\"name\": \"f\","
			  " \"arguments\": {\"a\": 1}}}]}], \"eos_token\": \"</s>\"}";
	int rc = render("[{{ messages[0].content | trim }}]{{ messages[1].tool_calls[0].function.arguments | tojson }}"
			"{{ messages[0].role }}{{ eos_token }}",
			ctx, NULL, &o, &err);
	CHECK(rc == 0, "%s", err.msg);
	if (rc)
		return;
	CHECK(strcmp(o.text, "[hi there]{\"a\": 1}user</s>") == 0, "got [%s]", o.text);
	CHECK(runs_tile(&o), "runs do not tile");
	/* "[" literal, "hi there" content of message 0 exactly, "]" literal */
	CHECK(o.nruns >= 5, "%zu runs", o.nruns);
	const struct tmpl_run *r = run_at(&o, 1);
	CHECK(r && r->origin == TMPL_MSG_CONTENT && r->msg == 0 && r->start == 1 && r->end == 9, "trimmed content run");
	r = run_at(&o, 0);
	CHECK(r && r->origin == TMPL_LITERAL && r->end == 1, "literal [");
	/* the whole JSON, braces included, is the tool call's */
	r = run_at(&o, 10);
	CHECK(r && r->origin == TMPL_MSG_TOOL_CALLS && r->msg == 1 && r->start == 10 && r->end == 18, "tojson run");
	r = run_at(&o, 18);
	CHECK(r && r->origin == TMPL_MSG_OTHER && r->msg == 0 && r->end == 22, "role run");
	r = run_at(&o, 22);
	CHECK(r && r->origin == TMPL_INPUT && r->var && strcmp(r->var, "eos_token") == 0 && r->end == 26, "eos run");
	tmpl_output_free(&o);

	/* replace: the new text takes the replacement's origin; join's separator its own */
	rc = render("{{ messages[0].content.replace('hi', eos_token) }}|{{ ['x', messages[0].role] | join(eos_token) }}",
		    ctx, NULL, &o, &err);
	CHECK(rc == 0, "%s", err.msg);
	if (rc)
		return;
	CHECK(strcmp(o.text, "  </s> there |x</s>user") == 0, "got [%s]", o.text);
	r = run_at(&o, 0);
	CHECK(r && r->origin == TMPL_MSG_CONTENT && r->end == 2, "content before the replacement");
	r = run_at(&o, 2);
	CHECK(r && r->origin == TMPL_INPUT && r->end == 6, "replacement");
	r = run_at(&o, 6);
	CHECK(r && r->origin == TMPL_MSG_CONTENT && r->end == 13, "content after");
	r = run_at(&o, 15);
	CHECK(r && r->origin == TMPL_INPUT && r->start == 15 && r->end == 19, "join separator");
	r = run_at(&o, 19);
	CHECK(r && r->origin == TMPL_MSG_OTHER && r->msg == 0, "joined role");
	CHECK(runs_tile(&o), "runs do not tile");
	tmpl_output_free(&o);

	/* slicing and upper keep each byte's origin; ~ of a number gives it the number's */
	rc = render("{{ (messages[0].content ~ '!')[2:] | upper }}", ctx, NULL, &o, &err);
	CHECK(rc == 0, "%s", err.msg);
	if (rc)
		return;
	CHECK(strcmp(o.text, "HI THERE !") == 0, "got [%s]", o.text);
	r = run_at(&o, 0);
	CHECK(r && r->origin == TMPL_MSG_CONTENT && r->end == 9, "sliced content");
	r = run_at(&o, 9);
	CHECK(r && r->origin == TMPL_LITERAL, "literal !");
	tmpl_output_free(&o);
}

/* loop.changed, cycler, joiner, groupby, slice and recursive loops (expectations from jinja2 3.1.6),
 * the origins of what they copy, and the limits in them. */
static void test_loop_features(void)
{
	expect("{% for x in [1, 1, 2, 1] %}{{ loop.changed(x) }},{% endfor %}", "{}", "True,False,True,True,");
	expect("{% set c = cycler('a', 'b') %}{{ c.next() }}{{ c.next() }}{{ c.next() }}{{ c.current }}{{ c.reset() }}"
	       "{{ c.current }}",
	       "{}", "ababNonea");
	expect("{% set j = joiner('; ') %}{% for x in range(3) %}{{ j() }}{{ x }}{% endfor %}", "{}", "0; 1; 2");
	const char *users = "{\"users\": [{\"name\": \"a\", \"city\": \"X\"}, {\"name\": \"b\", \"city\": \"y\"},"
			    " {\"name\": \"c\", \"city\": \"x\"}, {\"name\": \"d\"}]}";
	expect("{% for city, l in users | groupby('city', default='-') %}{{ city }}:"
	       "{{ l | map(attribute='name') | join }} {% endfor %}",
	       users, "-:d X:ac y:b ");
	expect("{{ users | groupby('city', default='-', case_sensitive=true) | map(attribute='grouper') | list }}", users,
	       "['-', 'X', 'x', 'y']");
	expect("{{ [1, 2, 3, 4, 5] | slice(2) | list }}{{ [1, 2, 3, 4] | slice(3, 0) | list }}", "{}",
	       "[[1, 2, 3], [4, 5]][[1, 2], [3, 0], [4, 0]]");
	expect("{% for x in [1, [2, [3]], 4] recursive %}{% if x is iterable %}<{{ loop(x) }}>{% else %}{{ x }}@"
	       "{{ loop.depth }}{% endif %}{% endfor %}",
	       "{}", "1@1<2@2<3@3>>4@1");

	struct tmpl_output o;
	struct err err;
	const char *ctx = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"},"
			  " {\"role\": \"assistant\", \"content\": \"yo\"}, {\"role\": \"user\", \"content\": \"ok\"}],"
			  " \"eos_token\": \"</s>\"}";
	/* the grouper is the first item's role; cycler and joiner give back what they were given;
	 * the text loop() returns keeps its origins */
	int rc = render("{% for g in messages | groupby('role') %}{{ g.grouper }}{% endfor %}"
			"{% set c = cycler(messages[2].content, '-') %}{{ c.next() }}{{ c.next() }}"
			"{% set j = joiner(eos_token) %}{{ j() }}{{ j() }}"
			"{% for m in [messages] recursive %}{% if m is mapping %}{{ m.content }}"
			"{% else %}{{ loop(m) }}{% endif %}{% endfor %}",
			ctx, NULL, &o, &err);
	CHECK(rc == 0, "%s", err.msg);
	if (rc)
		return;
	CHECK(strcmp(o.text, "assistantuserok-</s>hiyook") == 0, "got [%s]", o.text);
	CHECK(runs_tile(&o), "runs do not tile");
	const struct tmpl_run *r = run_at(&o, 0);
	CHECK(r && r->origin == TMPL_MSG_OTHER && r->msg == 1 && r->end == 9, "grouper of the assistant group");
	r = run_at(&o, 9);
	CHECK(r && r->origin == TMPL_MSG_OTHER && r->msg == 0 && r->end == 13, "grouper of the user group");
	r = run_at(&o, 13);
	CHECK(r && r->origin == TMPL_MSG_CONTENT && r->msg == 2 && r->end == 15, "cycler item");
	r = run_at(&o, 15);
	CHECK(r && r->origin == TMPL_LITERAL && r->end == 16, "cycler literal item");
	r = run_at(&o, 16);
	CHECK(r && r->origin == TMPL_INPUT && r->var && strcmp(r->var, "eos_token") == 0 && r->end == 20,
	      "joiner separator");
	r = run_at(&o, 20);
	CHECK(r && r->origin == TMPL_MSG_CONTENT && r->msg == 0 && r->end == 22, "recursive loop output");
	r = run_at(&o, 24);
	CHECK(r && r->origin == TMPL_MSG_CONTENT && r->msg == 2 && r->end == 26, "recursive loop output, last");
	tmpl_output_free(&o);

	struct tmpl_limits lim = { .max_output = 1000, .max_steps = 100000, .max_depth = 10 };
	expect_err("{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}", "{}", &lim, "nested more than 10 deep");
	expect_err("{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}", "{}", NULL, "nested more than 64 deep");
	expect_err("{% for x in range(300) recursive %}{% if loop.depth < 5 %}{{ loop(range(300)) }}{% endif %}"
		   "{% endfor %}",
		   "{}", &lim, "more than 100000 steps");
	expect_err("{{ [1] | slice(100000000) | length }}", "{}", &lim, "more than 100000 steps");
	expect_err("{{ range(90000) | groupby('x', default=1) | length }}", "{}", &lim, "more than 100000 steps");
	expect_err("{% for x in [[1, 1, 1]] recursive %}{% if x is iterable %}{{ loop(x) }}{% else %}{{ 'x' * 400 }}"
		   "{% endif %}{% endfor %}",
		   "{}", &lim, "longer than 1000");
	expect_err("{% for x in [1] %}{{ loop([1]) }}{% endfor %}", "{}", NULL, "must be marked 'recursive'");
	expect_err("{{ cycler() }}", "{}", NULL, "at least one item");
	expect_err("{{ [1] | slice(0) | list }}", "{}", NULL, "division or modulo by zero");
	expect_err("{{ [{'a': 1}, {'a': 'b'}] | groupby('a') }}", "{}", NULL, "not supported between");
}

static void test_generation(void)
{
	struct tmpl_output o;
	struct err err;
	int rc = render("a{% generation %}bc{{ 'd' }}{% endgeneration %}e{% generation %}{% endgeneration %}", "{}", NULL,
			&o, &err);
	CHECK(rc == 0, "%s", err.msg);
	if (rc)
		return;
	CHECK(strcmp(o.text, "abcde") == 0, "got [%s]", o.text);
	CHECK(o.ngen == 2 && o.gen[0][0] == 1 && o.gen[0][1] == 4 && o.gen[1][0] == 5 && o.gen[1][1] == 5,
	      "gen ranges: %zu", o.ngen);
	tmpl_output_free(&o);
}

static void test_limits(void)
{
	struct tmpl_limits lim = { .max_output = 1000, .max_steps = 100000, .max_depth = 10 };
	expect_err("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "{}", &lim, "nested more than 10 deep");
	expect_err("{% for i in range(100000) %}xxxxxxxxxxxxxxxxxxx{% endfor %}", "{}", &lim, "output longer than 1000");
	expect_err("{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}", "{}", &lim,
		   "more than 100000 steps");
	expect_err("{% set ns = namespace(s='xx') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
		   "{}", &lim, "longer than 1000");
	expect_err("{{ range(1000000) | length }}", "{}", NULL, "Range too big");
	/* the default limits also stop recursion */
	expect_err("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "{}", NULL, "nested more than 64 deep");
}

static void test_errors(void)
{
	expect_err("line1\n{{ x | foo }}", "{}", NULL, "chat_template:2: unknown filter 'foo'");
	expect_err("{{ 1 is foo }}", "{}", NULL, "chat_template:1: no test named 'foo'");
	/* Jinja 3 looks filters and tests up when they run: an unknown one in a
	 * branch never taken is no error */
	expect("{% if false %}\n{{ x is foo }}{{ x | bar }}{% endif %}ok", "{}", "ok");
	expect_err("a\nb\n{% if true %}", "{}", NULL, "chat_template:3: unexpected end of template");
	expect_err("{{ raise_exception('boom') }}", "{}", NULL, "template raised: boom");
	expect_err("{% include 'x.jinja' %}", "{}", NULL, "chat_template:1: 'include' is not allowed");
	expect_err("\n\n{{ x.y }}", "{}", NULL, "chat_template:3: 'x' is undefined");
	expect_err("{% set l = [] %}{{ l.append(1) }}", "{}", NULL, "unsafe");
	expect_err("{{ 1 + 'a' }}", "{}", NULL, "unsupported operand");
	expect_err("{% for x in 1 %}{% endfor %}", "{}", NULL, "not iterable");
	expect_err("{{ 'a' ", "{}", NULL, "chat_template:1:");
	expect_err("{% endif %}", "{}", NULL, "unexpected 'endif'");
	struct err err;
	struct tmpl *t = tmpl_compile("{{ x }}", 7, "chat_template", &err);
	CHECK(t != NULL, "%s", err.msg);
	struct tmpl_output o;
	CHECK(tmpl_render(t, jv_array(), NULL, &o, &err) < 0, "a context that is not an object is refused");
	tmpl_free(t);
	tmpl_free(NULL);
}

/* A test context through the project's JSON guard, as every parse goes. */
static jv parse_ctx(const char *s)
{
	jv v;
	struct err err;
	return jsonl_parse(s, strlen(s), "test context", &v, &err) == 0 ? v : jv_object();
}

/* A context converted once renders each prefix of its messages, with either
 * add_generation_prompt, as a render of that prefix's own context does, and
 * again the same (renders share its values: nothing may change them). */
static void test_render_ctx(void)
{
	const char *src = "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}{{ eos_token }}{% endfor %}"
			  "{% if add_generation_prompt %}<assistant>{% endif %}"
			  "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}"
			  "{{ ns.n }}{{ messages | length }}{{ tools | tojson }}{{ (messages | last).role if messages }}";
	const char *msgs[] = {"{\"role\": \"system\", \"content\": \"s\"}",
			      "{\"role\": \"user\", \"content\": \" u \"}",
			      "{\"role\": \"assistant\", \"content\": \"a\"}"};
	struct err err;
	struct tmpl *t = tmpl_compile(src, strlen(src), "chat_template", &err);
	CHECK(t != NULL, "%s", err.msg);
	if (!t)
		return;
	char ctx[1024];
	snprintf(ctx, sizeof ctx, "{\"eos_token\": \"</s>\", \"messages\": [%s, %s, %s], \"tools\": [{\"k\": 1}], "
		 "\"add_generation_prompt\": false}", msgs[0], msgs[1], msgs[2]);
	struct tmpl_ctx *c = tmpl_ctx_new(parse_ctx(ctx), &err);
	CHECK(c != NULL, "%s", err.msg);
	for (int pass = 0; pass < 2 && c; pass++) {
		for (int n = 0; n <= 3; n++) {
			for (int agp = 0; agp < 2; agp++) {
				snprintf(ctx, sizeof ctx, "{\"eos_token\": \"</s>\", \"messages\": [%s%s%s%s%s], "
					 "\"tools\": [{\"k\": 1}], \"add_generation_prompt\": %s}",
					 n > 0 ? msgs[0] : "", n > 1 ? ", " : "", n > 1 ? msgs[1] : "", n > 2 ? ", " : "",
					 n > 2 ? msgs[2] : "", agp ? "true" : "false");
				struct tmpl_output want, got;
				int rc1 = tmpl_render(t, parse_ctx(ctx), NULL, &want, &err);
				int rc2 = tmpl_render_ctx(t, c, (size_t)n, agp, NULL, &got, &err);
				CHECK(rc1 == 0 && rc2 == 0, "%s", err.msg);
				if (rc1 == 0 && rc2 == 0)
					CHECK(tmpl_output_equal(&want, &got), "%d messages, agp %d: [%s] vs [%s]", n, agp, want.text,
					      got.text);
				tmpl_output_free(&want);
				tmpl_output_free(&got);
			}
		}
	}
	tmpl_ctx_free(c);
	tmpl_free(t);
}

/* Cuts: where each printing statement of the body ended, not inside a
 * capture or a macro, each place once. */
/* tmpl_tojson writes what Python's json.dumps(v, ensure_ascii=False) does
 * for the values json.loads makes of the same text (the want strings are
 * Python's). */
static void test_tojson(void)
{
	static const struct {
		const char *in, *want;
	} cases[] = {
		{"{\"a\":1.0,\"b\":[1,2.5e-3,\"\u00e9\\u007f\\n\"],\"c\":null,\"d\":1e16,\"e\":-0.0}",
		 "{\"a\": 1.0, \"b\": [1, 0.0025, \"\u00e9\x7f\\n\"], \"c\": null, \"d\": 1e+16, \"e\": -0.0}"},
		{"[true,false,{},[],\"\",1e-7,123456789012345]", "[true, false, {}, [], \"\", 1e-07, 123456789012345]"},
	};
	struct jd_arena a = {0};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		struct jd v, s;
		struct err err = {0};
		int rc = jsonl_parse_jd(cases[i].in, strlen(cases[i].in), &a, &v, &err) == 0 && tmpl_tojson(&v, &a, &s, &err) == 0;
		CHECK(rc && !strcmp(s.u.s, cases[i].want), "%s: got %s", cases[i].in, rc ? s.u.s : err.msg);
	}
	/* NaN as Python writes it */
	struct jd nan = jd_number(0.0 / 0.0, 1), s;
	struct err err = {0};
	CHECK(tmpl_tojson(&nan, &a, &s, &err) == 0 && !strcmp(s.u.s, "NaN"), "NaN: %s", err.msg);
	jd_arena_free(&a);
}

static void test_cuts(void)
{
	struct tmpl_output o;
	struct err err = {0};
	const char *src = "a{{ 'b' }}{% if true %}c{{ '' }}{% endif %}{% set x %}zz{% endset %}"
			  "{% macro m() %}q{{ 'r' }}{% endmacro %}{{ x }}{{ m() }}";
	if (render(src, "{}", NULL, &o, &err) < 0) {
		CHECK(0, "%s", err.msg);
		return;
	}
	static const uint32_t want[] = {1, 2, 3, 5, 7};
	int same = o.ncuts == sizeof want / sizeof *want;
	for (size_t i = 0; same && i < o.ncuts; i++)
		same = o.cuts[i] == want[i];
	CHECK(same && !strcmp(o.text, "abczzqr"), "text %s, %zu cuts: %u %u %u ...", o.text, o.ncuts,
	      o.ncuts ? o.cuts[0] : 0, o.ncuts > 1 ? o.cuts[1] : 0, o.ncuts > 2 ? o.cuts[2] : 0);
	tmpl_output_free(&o);
}

/* Whether a template reads add_generation_prompt: only a name does, in a
 * macro or a set too; a string or an attribute of that name does not. */
static void test_reads_agp(void)
{
	static const struct {
		const char *src;
		int reads;
	} cases[] = {
		{"{% if add_generation_prompt %}a{% endif %}", 1},
		{"{% macro m() %}{{ add_generation_prompt }}{% endmacro %}", 1},
		{"{% set g = add_generation_prompt or false %}", 1},
		{"{{ 'add_generation_prompt' }}{{ ns.add_generation_prompt }}", 0},
		{"{% for m in messages %}{{ m.content }}{% endfor %}", 0},
		{"{{ add_generation_prompts }}", 0},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		struct err err = {0};
		struct tmpl *t = tmpl_compile(cases[i].src, strlen(cases[i].src), "t", &err);
		CHECK(t && tmpl_reads_agp(t) == cases[i].reads, "%s: reads the flag %d, want %d", cases[i].src,
		      t ? tmpl_reads_agp(t) : -1, cases[i].reads);
		tmpl_free(t);
	}
}

int main(void)
{
	RUN(test_jinja_cases);
	RUN(test_whitespace);
	RUN(test_chatml);
	RUN(test_provenance);
	RUN(test_message_turns);
	RUN(test_loop_features);
	RUN(test_generation);
	RUN(test_limits);
	RUN(test_errors);
	RUN(test_render_ctx);
	RUN(test_cuts);
	RUN(test_tojson);
	RUN(test_reads_agp);
	return check_done();
}
