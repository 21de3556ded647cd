/* test_template_prefix: renderings of a conversation's prefixes that copy
 * turns from the whole rendering (tmpl_render_traced, tmpl_render_prefix)
 * are tmpl_render_ctx's renderings, byte for byte, origins, cuts and
 * generation ranges included, on fresh random conversations; the templates
 * meant to copy do copy, and those reading what a prefix sees differently
 * copy nothing they should not; prefix renderings start at the loop where
 * what comes before it allows, and only there. */
#include <stdio.h>
#include <string.h>

#include "chat.h"
#include "check.h"
#include "jsonl.h"
#include "template.h"

static const char *const WORDS[] = { "hi", "", " x ", "Привет", "<tool_call>", "ok\n", "42", "a b" };
#define NWORDS (sizeof WORDS / sizeof *WORDS)

/* A random conversation: an optional system prompt, then user, assistant
 * (some with tool calls) and tool turns in any order. */
static jv random_messages(int n)
{
	static const char *const roles[] = { "user", "assistant", "tool", "user", "assistant" };
	jv msgs = jv_array();
	for (int i = 0; i < n; i++) {
		const char *role = i == 0 && check_urand() < 0.5 ? "system" : roles[rng_below(check_rng(), 5)];
		jv m = jv_object();
		m = jv_object_set(m, jv_string("role"), jv_string(role));
		m = jv_object_set(m, jv_string("content"), jv_string(WORDS[rng_below(check_rng(), NWORDS)]));
		if (!strcmp(role, "assistant") && check_urand() < 0.3) {
			jv args = jv_object_set(jv_object(), jv_string("q"), jv_string(WORDS[rng_below(check_rng(), NWORDS)]));
			jv fn = jv_object_set(jv_object_set(jv_object(), jv_string("name"), jv_string("f")),
					      jv_string("arguments"), args);
			jv call = jv_object_set(jv_object_set(jv_object(), jv_string("type"), jv_string("function")),
						jv_string("function"), fn);
			m = jv_object_set(m, jv_string("tool_calls"), JV_ARRAY(call));
		}
		msgs = jv_array_append(msgs, m);
	}
	return msgs;
}

static jv random_ctx(void)
{
	jv ctx = jv_object();
	ctx = jv_object_set(ctx, jv_string("messages"), random_messages(1 + (int)rng_below(check_rng(), 9)));
	jv tool = jv_object_set(jv_object(), jv_string("name"), jv_string("f"));
	ctx = jv_object_set(ctx, jv_string("tools"), check_urand() < 0.5 ? JV_ARRAY(tool) : (jv_free(tool), jv_null()));
	ctx = jv_object_set(ctx, jv_string("add_generation_prompt"), jv_false());
	ctx = jv_object_set(ctx, jv_string("bos_token"), jv_string("<s>"));
	ctx = jv_object_set(ctx, jv_string("eos_token"), jv_string("</s>"));
	return ctx;
}

/* Renders rounds random conversations whole (traced) and every prefix with
 * either generation prompt both ways; returns the turns copied, or -1 when
 * an output differed. traced counts the conversations that got a trace. */
static long long compare(const char *name, const char *src, int rounds, int *traced, long long *resumed,
			 long long *tailed)
{
	struct err err = {0};
	struct tmpl *t = tmpl_compile(src, strlen(src), name, &err);
	CHECK(t != NULL, "%s: %s", name, err.msg);
	if (!t)
		return -1;
	long long copied = 0;
	*traced = 0, *resumed = 0, *tailed = 0;
	for (int k = 0; k < rounds; k++) {
		jv ctx = random_ctx();
		int n = jv_array_length(jv_object_get(jv_copy(ctx), jv_string("messages")));
		jv dump = jv_dump_string(jv_copy(ctx), 0);
		struct tmpl_ctx *c = tmpl_ctx_new(ctx, &err);
		CHECK(c != NULL, "%s", err.msg);
		struct tmpl_output full, want;
		struct tmpl_trace *tr = NULL;
		int rc = tmpl_render_traced(t, c, -1, NULL, &full, &tr, &err);
		int rc0 = tmpl_render_ctx(t, c, SIZE_MAX, -1, NULL, &want, &err);
		CHECK(rc == rc0, "%s: traced rendering %d, plain %d", name, rc, rc0);
		if (rc == 0 && rc0 == 0)
			CHECK(tmpl_output_equal(&full, &want), "%s: the traced rendering differs", name);
		if (rc0 == 0)
			tmpl_output_free(&want);
		if (rc == 0) {
			*traced += tr != NULL;
			/* the prefixes in any order: what one leaves (a tail) serves the others */
			int order[16];
			for (int i = 0; i <= n; i++)
				order[i] = i;
			for (int i = n; i > 0; i--) {
				int j = (int)rng_below(check_rng(), (uint64_t)i + 1), x = order[i];
				order[i] = order[j], order[j] = x;
			}
			for (int mi = 0; mi <= n; mi++) {
				int m = order[mi];
				for (int agp = 0; agp < 2; agp++) {
					struct tmpl_output a, b;
					struct err e1 = {0}, e2 = {0};
					int r1 = tmpl_render_ctx(t, c, (size_t)m, agp, NULL, &a, &e1);
					int r2 = tmpl_render_prefix(t, c, (size_t)m, agp, &full, tr, 1, NULL, &b, &e2);
					int same = r1 == r2 && (r1 < 0 ? !strcmp(e1.msg, e2.msg) : tmpl_output_equal(&a, &b));
					CHECK(same, "%s: %d of the messages, agp %d: [%s] vs [%s] (%s | %s) in %s", name, m, agp,
					      r1 == 0 ? a.text : "", r2 == 0 ? b.text : "", e1.msg, e2.msg, jv_string_value(dump));
					/* without runs: the same text, cuts and generation ranges */
					struct tmpl_output x;
					int r3 = tmpl_render_prefix(t, c, (size_t)m, agp, &full, tr, 0, NULL, &x, &e2);
					CHECK(r3 == r1 && (r3 < 0 || (!x.runs && !x.nruns && x.len == a.len &&
								      !memcmp(x.text, a.text, a.len) && x.ncuts == a.ncuts &&
								      !memcmp(x.cuts, a.cuts, a.ncuts * sizeof *a.cuts) &&
								      x.ngen == a.ngen && !memcmp(x.gen, a.gen, a.ngen * sizeof *a.gen))),
					      "%s: %d of the messages, agp %d, no runs: [%s] vs [%s] in %s", name, m, agp,
					      r1 == 0 ? a.text : "", r3 == 0 ? x.text : "", jv_string_value(dump));
					if (r1 == 0)
						tmpl_output_free(&a);
					if (r2 == 0)
						tmpl_output_free(&b);
					if (r3 == 0)
						tmpl_output_free(&x);
					if (!same) {
						copied = -1;
						mi = n + 1;
						k = rounds;
						break;
					}
				}
			}
			if (copied >= 0)
				copied += (long long)tmpl_trace_copied(tr), *resumed += (long long)tmpl_trace_resumed(tr),
				*tailed += (long long)tmpl_trace_tailed(tr);
			tmpl_output_free(&full);
		}
		jv_free(dump);
		tmpl_trace_free(tr);
		tmpl_ctx_free(c);
	}
	tmpl_free(t);
	return copied;
}

enum expect { COPIES, NONE, UNTRACED, ANY };
/* whether prefix renderings start at the loop (0: either way) */
enum resume { RESUMES = 1, RUNS_ALL };

static const struct {
	const char *name, *src;
	enum expect want;
	enum resume resume;
} CASES[] = {
	/* ChatML */
	{ "chatml", "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
		    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", COPIES, RESUMES },
	/* Qwen 2.5's shape: lookahead on tool turns, loop.last there only */
	{ "lookahead", "{% if messages[0].role == 'system' %}S{{ messages[0].content }}{% endif %}"
		       "{% for message in messages %}{% if message.role == 'tool' %}"
		       "{% if loop.index0 == 0 or messages[loop.index0 - 1].role != 'tool' %}<u>{% endif %}"
		       "{{ message.content }}{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}</u>{% endif %}"
		       "{% elif message.role == 'system' and not loop.first %}[{{ message.content }}]"
		       "{% else %}<{{ message.role }}>{{ message.content }}"
		       "{% for tc in message.tool_calls %}{{ tc.function.arguments | tojson }}"
		       "{% if not loop.last %},{% endif %}{% endfor %}</>{% endif %}{% endfor %}"
		       "{% if add_generation_prompt %}<assistant>{% endif %}", COPIES, RESUMES },
	/* Gemma 3's shape: the loop over a slice of the messages */
	{ "slice", "{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n' %}"
		   "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}"
		   "{% set loop_messages = messages %}{% endif %}{{ bos_token }}{% for message in loop_messages %}"
		   "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ 'odd' }}{% endif %}"
		   "<turn {{ message['role'] }}>{{ (first if loop.first else '') + message['content'] | trim }}"
		   "<end>{% endfor %}{% if add_generation_prompt %}<turn model>{% endif %}", COPIES, RESUMES },
	/* Llama 3's shape: messages itself reassigned, its length read before the loop with tools */
	{ "reassigned", "{% if messages[0].role == 'system' %}{% set sys = messages[0].content %}"
			"{% set messages = messages[1:] %}{% else %}{% set sys = '' %}{% endif %}"
			"{% if tools is not none and messages | length != 0 %}{% set first = messages[0].content %}"
			"{% set messages = messages[1:] %}{% endif %}<sys>{{ sys }}</sys>"
			"{% for message in messages %}<{{ message.role }}>{{ message.content }}<eot>{% endfor %}"
			"{% if add_generation_prompt %}<assistant>{% endif %}", COPIES },
	{ "loop from a slice", "{% for message in messages[1:] %}{{ loop.index }}{{ message.content }};{% endfor %}"
			       "{{ '+' if add_generation_prompt }}", COPIES, RESUMES },
	{ "generation", "{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}"
			"{{ m.content }}</s>{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}"
			"{% if add_generation_prompt %}<assistant>{% endif %}", COPIES, RESUMES },
	{ "break", "{% for m in messages %}{% if m.role == 'tool' %}{% break %}{% endif %}{{ m.content }}|"
		   "{% endfor %}{{ add_generation_prompt }}", COPIES },
	{ "continue and set", "{% for m in messages %}{% set x = m.role | upper %}{% if x == 'TOOL' %}{% continue %}"
			      "{% endif %}{{ x }}{{ m.content }}{% endfor %}", COPIES },
	{ "macro reading messages", "{% macro prev(i) %}{{ messages[i - 1].role if i > 0 }}{% endmacro %}"
				    "{% for m in messages %}{{ prev(loop.index0) }}>{{ m.content }}{% endfor %}"
				    "{% if add_generation_prompt %}!{% endif %}", COPIES, RUNS_ALL },
	{ "lookahead unguarded", "{% for m in messages %}{{ m.content }}{% if messages[loop.index0 + 1] is defined %}+"
				 "{% endif %}{% endfor %}", COPIES },
	{ "state from a later message", "{% set third = messages[2].role if messages[2] is defined else '-' %}"
				       "{% for m in messages %}{{ third }}{{ m.content }}{% endfor %}", COPIES, RESUMES },
	{ "messages read before", "{{ messages[2].content if messages[2] is defined }}{% for m in messages %}"
				  "{{ m.content }}{% endfor %}", COPIES, RESUMES },
	{ "cycle", "{% for m in messages %}{{ loop.cycle('a', 'b') }}{{ m.content }}{% endfor %}", COPIES, RESUMES },
	/* each turn reads what a prefix sees differently */
	{ "last", "{% for m in messages %}{{ m.content }}{% if loop.last %}.{% endif %}{% endfor %}", NONE, RESUMES },
	{ "length", "{% for m in messages %}{{ loop.length }}{{ m.content }}{% endfor %}", NONE },
	{ "revindex", "{% for m in messages %}{{ loop.revindex0 }}{{ m.content }}{% endfor %}", NONE },
	{ "nextitem", "{% for m in messages %}{{ loop.nextitem.role if loop.nextitem }}{% endfor %}", NONE },
	{ "changed", "{% for m in messages %}{% if loop.changed(m.role) %}{{ m.role }}{% endif %}{% endfor %}", NONE },
	{ "namespace", "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ ns.n }}"
		       "{% endfor %}", NONE, RUNS_ALL },
	{ "generation prompt in the loop", "{% for m in messages %}{{ m.content }}{{ add_generation_prompt }}"
					   "{% endfor %}", NONE },
	{ "length in the loop", "{% for m in messages %}{{ messages | length }}{% endfor %}", NONE },
	{ "negative index", "{% for m in messages %}{{ messages[-1].role }}{% endfor %}", NONE },
	{ "cycler", "{% set c = cycler('x', 'y') %}{% for m in messages %}{{ c.next() }}{% endfor %}", NONE, RUNS_ALL },
	{ "joiner", "{% set j = joiner('/') %}{% for m in messages %}{{ j() }}{{ m.role }}{% endfor %}", NONE, RUNS_ALL },
	/* what comes before the loop reads what differs: turns are copied only
	 * when the loop starts with the same variables (and output length) */
	{ "length before", "{{ messages | length }}{% for m in messages %}{{ m.content }}{% endfor %}", COPIES, RUNS_ALL },
	{ "last before", "{{ messages[-1].role }}{% for m in messages %}{{ m.content }}{% endfor %}", ANY, RUNS_ALL },
	{ "prompt before", "{{ add_generation_prompt }}{% for m in messages %}{{ m.content }}{% endfor %}", ANY, RUNS_ALL },
	{ "state from the length", "{% set n = messages | length %}{% for m in messages %}{{ n }}{{ m.content }}"
				  "{% endfor %}", ANY, RUNS_ALL },
	{ "state from the prompt", "{% set p = 'p' if add_generation_prompt else 'q' %}{% for m in messages %}"
				   "{{ p }}{{ m.content }}{% endfor %}", ANY, RUNS_ALL },
	{ "namespace set before", "{% set ns = namespace(x=0, y=[1]) %}{% set ns.x = messages | length %}"
				  "{% for m in messages %}{{ ns.x }}{{ m.content }}{% endfor %}{% set ns.x = 5 %}"
				  "{{ ns.x }}", ANY },
	{ "namespace unchanged", "{% set ns = namespace(x=messages[0].role) %}{% for m in messages %}{{ ns.x }}"
				 "{{ m.content }}{% endfor %}{% set ns.x = 'late' %}", COPIES, RUNS_ALL },
	{ "cycler before", "{% set c = cycler('a', 'b', 'c') %}{% for x in range(messages | length) %}{{ c.next() }}"
			   "{% endfor %}{% for m in messages %}{{ c.current }}{{ m.content }}{% endfor %}", NONE },
	{ "float state", "{% set half = (messages | length) / 2 %}{% for m in messages %}{{ half }}{{ m.content }}"
			 "{% endfor %}", ANY },
	{ "alias offset differs", "{% if messages | length > 3 %}{% set h = messages[1:] %}{% else %}"
				  "{% set h = messages %}{% endif %}{% for m in messages %}{{ h[0].role }}{{ m.content }}"
				  "{% endfor %}", ANY },
	{ "variable set only sometimes", "{% if messages | length > 4 %}{% set extra = 'E' %}{% endif %}"
					 "{% for m in messages %}{{ extra }}{{ m.content }}{% endfor %}", ANY },
	{ "slice length differs", "{% set tail = messages[2:] %}{% set k = tail | length %}{% for m in tail %}"
				  "{{ k if loop.first }}{{ m.content }}{% endfor %}", ANY },
	/* prefix renderings that start at the loop */
	{ "loop inside ifs", "{% if bos_token %}<{{ bos_token }}>{% if tools %}T{% elif bos_token %}"
			     "{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}inner{% endif %}mid"
			     "{% endif %}end{% if add_generation_prompt %}G{% endif %}", ANY, RESUMES },
	{ "set after the loop", "{% set a = messages[0].role %}{% set d = {'s': messages[0].content, 'l': [1, a]} %}"
				"{% for m in messages %}{{ a }}{{ d.l }}{{ m.content }}{% endfor %}{% set a = a + '!' %}"
				"{{ a }}{% if add_generation_prompt %}{{ d.s }}{% endif %}", COPIES, RESUMES },
	{ "slice read after the loop", "{% set rest = messages[1:] %}{% for m in rest %}{{ m.content }}{% endfor %}"
				       "{{ rest[0].role if rest[0] is defined }}{{ rest | length }}", COPIES, RESUMES },
	{ "slice past the prefix", "{% set rest = messages[3:] %}{% for m in rest %}{{ m.content }}{% endfor %}"
				   "{{ add_generation_prompt }}", ANY },
	{ "macro and a later value", "{% macro m() %}{{ v }}{% endmacro %}{% set v = 'pre' %}{% for x in messages %}"
				     "{{ m() }}{{ x.content }}{% endfor %}{% set v = 'post' %}{{ m() }}", COPIES, RUNS_ALL },
	{ "namespace changed after", "{% set ns = namespace(k='a') %}{% for m in messages %}{{ m.content }}"
				     "{% endfor %}{% set ns.k = ns.k + 'b' %}{{ ns.k }}", COPIES, RUNS_ALL },
	/* the messages where the check cannot see them */
	{ "map", "{{ messages | map(attribute='role') | join }}{% for m in messages %}{{ m.content }}{% endfor %}",
	  UNTRACED },
	{ "reversed", "{% for m in messages[::-1] %}{{ m.content }}{% endfor %}", UNTRACED },
	{ "two loops", "{% for m in messages %}{{ m.content }}{% endfor %}{% for m in messages %}{{ m.role }}"
		       "{% endfor %}", UNTRACED },
	{ "macro argument", "{% macro f(x) %}{{ x | length }}{% endmacro %}{{ f(messages) }}"
			    "{% for m in messages %}{{ m.content }}{% endfor %}", UNTRACED },
	{ "loop handed on", "{% macro f(l) %}{{ l.last }}{% endmacro %}{% for m in messages %}{{ f(loop) }}"
			    "{% endfor %}", UNTRACED },
	{ "loop in a macro", "{% macro f() %}{% for m in messages %}{{ m.content }}{% endfor %}{% endmacro %}"
			     "{{ f() }}", UNTRACED },
	{ "captured", "{% set x %}{% for m in messages %}{{ m.content }}{% endfor %}{% endset %}{{ x }}", UNTRACED },
	{ "alias set otherwise", "{% set l = messages %}{% if tools %}{% set l = [] %}{% endif %}"
				 "{% for m in l %}{{ m.content }}{% endfor %}", UNTRACED },
	{ "tested", "{% if messages is defined %}{% for m in messages %}{{ m.content }}{% endfor %}{% endif %}",
	  UNTRACED },
	{ "filtered loop", "{% for m in messages if m.role != 'tool' %}{{ m.content }}{% endfor %}", UNTRACED },
};

static void test_prefixes_match(void)
{
	for (size_t i = 0; i < sizeof CASES / sizeof *CASES; i++) {
		int traced = 0;
		long long resumed = 0, tailed = 0, copied = compare(CASES[i].name, CASES[i].src, 40, &traced, &resumed, &tailed);
		if (copied < 0)
			continue;
		if (CASES[i].resume == RESUMES)
			CHECK(resumed > 0, "%s: no prefix rendering started at the loop", CASES[i].name);
		else if (CASES[i].resume == RUNS_ALL)
			CHECK(resumed == 0, "%s: %lld prefix renderings started at the loop", CASES[i].name, resumed);
		if (CASES[i].want == ANY)
			continue;
		if (CASES[i].want == COPIES)
			CHECK(copied > 0 && traced > 0, "%s: no turn copied (%d traced)", CASES[i].name, traced);
		else if (CASES[i].want == NONE)
			CHECK(copied == 0 && traced > 0, "%s: %lld turns copied, %d traced", CASES[i].name, copied, traced);
		else
			CHECK(copied == 0 && traced == 0, "%s: %d traced", CASES[i].name, traced);
	}
}

/* Prefix renderings made from the tail a resumed one left (what follows the
 * loop): where that reads only add_generation_prompt, or messages the
 * prefix has; never where it reads the count of messages or loop state. */
static void test_tails(void)
{
	static const struct {
		const char *name, *src;
		int tails;
	} cases[] = {
		{ "prompt only", "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
				 "{% if add_generation_prompt %}<assistant>{% endif %}", 1 },
		{ "empty prints", "{% for m in messages %}{{ m.content }}|{% endfor %}{{ '' }}{% if add_generation_prompt %}"
				  "{{ '' }}G{% generation %}g{% endgeneration %}{% endif %}{{ bos_token }}", 1 },
		{ "a message read after", "{% for m in messages %}{{ m.content }}{% endfor %}"
					  "{{ messages[2].role if messages[2] is defined }}{{ add_generation_prompt }}", 1 },
		{ "state before, read after", "{% set s = messages[0].role %}{% for m in messages %}{{ m.content }}"
					      "{% endfor %}{% if add_generation_prompt %}{{ s }}{% endif %}", 1 },
		{ "turns ending uncut", "{% for m in messages %}{% if m.role == 'user' %}{% filter upper %}{{ m.content }}"
				       "{% endfilter %}{% else %}{{ m.content }}{% endif %}{% endfor %}{{ '' }}"
				       "{% if add_generation_prompt %}G{% endif %}", 1 },
		{ "a turn reading the last", "{% for m in messages %}{{ m.content }}{% if m.role == 'tool' and loop.last %}."
					     "{% endif %}{% endfor %}{% if add_generation_prompt %}G{% endif %}", 1 },
		{ "a turn reading the next", "{% for m in messages %}{{ m.content }}{% if m.role == 'tool' %}"
					     "{{ messages[loop.index0 + 1].role if messages[loop.index0 + 1] is defined }}"
					     "{% endif %}{% endfor %}{{ add_generation_prompt }}", 1 },
		{ "else of the loop", "{% for m in messages[2:] %}{{ m.content }}{% else %}{% set e = 'E' %}{% endfor %}"
				      "{{ e }}{{ add_generation_prompt }}", -1 },
		{ "the count after", "{% for m in messages %}{{ m.content }}{% endfor %}{{ messages | length }}", 0 },
		{ "the last after", "{% for m in messages %}{{ m.content }}{% endfor %}{{ messages[-1].role }}", 0 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		int traced = 0;
		long long resumed = 0, tailed = 0;
		if (compare(cases[i].name, cases[i].src, 40, &traced, &resumed, &tailed) < 0)
			continue;
		if (cases[i].tails >= 0)
			CHECK(cases[i].tails ? tailed > 0 : tailed == 0, "%s: %lld prefix renderings made from a tail",
			      cases[i].name, tailed);
	}
}

/* ds-fmt's own named templates. */
static void test_builtin_templates(void)
{
	static const char *const names[] = { "chatml", "llama3", "gemma", "mistral", "alpaca" };
	for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
		const char *src = chat_builtin_template(names[i]);
		CHECK(src != NULL, "%s: no such template", names[i]);
		int traced = 0;
		long long resumed = 0, tailed = 0;
		if (src)
			compare(names[i], src, 40, &traced, &resumed, &tailed);
	}
}

int main(void)
{
	check_seed_init();
	RUN(test_prefixes_match);
	RUN(test_tails);
	RUN(test_builtin_templates);
	return check_done();
}
