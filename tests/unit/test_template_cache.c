/* test_template_cache: a context made with a cache renders exactly as one
 * made without (text, origins of every byte, generation ranges), over a
 * stream of contexts that repeat, change and alternate their tool lists;
 * the cache is used (values and tojson texts kept) and never hands out a
 * value for a block that is not the very one it was made from. */
#include <string.h>

#include "check.h"
#include "jsonl.h"
#include "template.h"

/* v (consumed) as a jd in a. */
static struct jd jd_of(struct jd_arena *a, jv v)
{
	struct jd d = jd_null();
	CHECK(jsonl_jd_of(v, a, &d) == 0, "out of memory");
	jv_free(v);
	return d;
}

/* v (consumed) in a block of its own. */
static struct jd_shared *shared_of(jv v)
{
	struct jd_arena a = {0};
	struct jd d = jd_of(&a, v);
	struct jd_shared *s = jd_shared_new(&d);
	jd_arena_free(&a);
	return s;
}

static const char *const templates[] = {
	/* qwen2.5-like: each tool as JSON, the list again at the end */
	"{%- if tools %}<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}</tools>{% endif %}"
	"{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{{ tools | tojson }}",
	/* llama3.2-like: indented JSON, a variable holding the list, special tokens */
	"{{ bos_token }}{% set ts = tools %}{% if ts is not none %}{% for t in ts %}{{ t | tojson(indent=4) }}\n\n"
	"{% endfor %}{% endif %}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"
	"{{ extra | tojson(sort_keys=true) }}{{ extra | tojson }}",
	/* an element and a slice, the list's length, items */
	"{% if tools %}{{ tools[0] | tojson }}{{ tools[1:] | tojson }}{{ tools | length }}"
	"{% for k, v in tools[0].items() %}{{ k }}={{ v | tojson }};{% endfor %}{% endif %}"
	"{% generation %}{{ messages[-1].content }}{% endgeneration %}",
};

/* Tool list number k: k = 0..2 distinct lists, 3 = none. */
static jv tool_list(int k)
{
	if (k == 3)
		return jv_null();
	jv l = jv_array();
	for (int i = 0; i <= k + 1; i++) {
		jv f = jv_object();
		f = jv_object_set(f, jv_string("name"), jv_string_fmt("tool_%d_%d", k, i));
		f = jv_object_set(f, jv_string("description"), jv_string("Погода \"в\" городе 🌦"));
		f = jv_object_set(f, jv_string("required"), JV_ARRAY(jv_string("city"), jv_number(i)));
		l = jv_array_append(l, f);
	}
	return l;
}

static void test_cache_same_output(void)
{
	unsigned long long seed = check_seed_init();
	struct jd_shared *lists[3];
	for (int k = 0; k < 3; k++)
		lists[k] = shared_of(tool_list(k));
	jv extra = JV_OBJECT(jv_string("b"), jv_number(1), jv_string("a"), JV_ARRAY(jv_true(), jv_null()));
	jv base = JV_OBJECT(jv_string("bos_token"), jv_string("<s>"), jv_string("eos_token"), jv_string("</s>"),
			    jv_string("extra"), jv_copy(extra));
	struct jd_arena ar = {0};
	struct tmpl_cache *cache = tmpl_cache_new();
	CHECK(cache != NULL, "tmpl_cache_new");
	for (size_t ti = 0; ti < sizeof templates / sizeof *templates && cache; ti++) {
		struct err err = {0};
		struct tmpl *t = tmpl_compile(templates[ti], strlen(templates[ti]), "chat_template", &err);
		CHECK(t, "template %zu: %s", ti, err.msg);
		for (int rec = 0; t && rec < 60 && !check_case_failed; rec++) {
			int k = (int)rng_below(check_rng(), 4);
			/* a list's own block, or now and then an equal one in another */
			struct jd_shared *fresh = k < 3 && !rng_below(check_rng(), 6) ? shared_of(tool_list(k)) : NULL;
			struct jd tools = fresh ? *jd_shared_value(fresh) : k < 3 ? *jd_shared_value(lists[k]) : jd_null();
			jv msgs = JV_ARRAY(JV_OBJECT(jv_string("role"), jv_string("user"), jv_string("content"),
						     jv_string_fmt("question %d", rec)),
					   JV_OBJECT(jv_string("role"), jv_string("assistant"), jv_string("content"),
						     jv_string_fmt("answer %d", rec)));
			jv ctx = jv_object_merge(jv_copy(base), JV_OBJECT(jv_string("messages"), jv_copy(msgs), jv_string("tools"),
									  tool_list(k), jv_string("add_generation_prompt"),
									  jv_false()));
			struct jd m = jd_of(&ar, msgs), agp = jd_bool(0);
			struct tmpl_var vars[] = {{"messages", &m}, {"tools", &tools}, {"add_generation_prompt", &agp}};
			struct tmpl_ctx *plain = tmpl_ctx_new(ctx, &err);
			struct tmpl_ctx *cached = tmpl_ctx_new_layered(jv_copy(base), jv_invalid(), vars, 3, cache, &err);
			jd_shared_unref(fresh);
			CHECK(plain && cached, "seed %llu: %s", seed, err.msg);
			for (int agp = 0; plain && cached && agp < 2; agp++) {
				struct tmpl_output a, b;
				size_t nmsg = agp ? 1 : SIZE_MAX;
				int ra = tmpl_render_ctx(t, plain, nmsg, agp, NULL, &a, &err);
				int rb = tmpl_render_ctx(t, cached, nmsg, agp, NULL, &b, &err);
				CHECK(ra == 0 && rb == 0, "template %zu: %s", ti, err.msg);
				if (ra == 0 && rb == 0)
					CHECK(tmpl_output_equal(&a, &b), "seed %llu template %zu record %d (tools %d): outputs differ:\n"
					      "  plain  [%s]\n  cached [%s]", seed, ti, rec, k, a.text, b.text);
				if (ra == 0)
					tmpl_output_free(&a);
				if (rb == 0)
					tmpl_output_free(&b);
			}
			tmpl_ctx_free(plain);
			tmpl_ctx_free(cached);
			jd_arena_reset(&ar); /* the context borrowed the messages */
		}
		tmpl_free(t);
	}
	unsigned long long hits, json_hits;
	tmpl_cache_stats(cache, &hits, &json_hits);
	CHECK(hits > 50 && json_hits > 50, "the cache was not used: %llu values, %llu tojson texts", hits, json_hits);
	tmpl_cache_free(cache);
	for (int k = 0; k < 3; k++)
		jd_shared_unref(lists[k]);
	jv_free(extra), jv_free(base);
	jd_arena_free(&ar);
}

/* A context in layers (tmpl_ctx_new_layered) renders as the merged one does:
 * ctx over more over base, a higher layer's name winning; the lower layers
 * kept by the cache while the same jv values come back, converted again
 * when another (even an equal one) comes. */
static void test_layers(void)
{
	unsigned long long seed = check_seed_init();
	const char *src = "{{ bos_token }}|{{ eos_token }}|{{ extra | tojson }}|{{ tools | tojson if tools is defined }}|{{ flag }}|"
			  "{% for m in messages %}{{ m.content }}{% endfor %}";
	struct err err = {0};
	struct tmpl *t = tmpl_compile(src, strlen(src), "t", &err);
	struct tmpl_cache *cache = tmpl_cache_new();
	struct jd_arena ar = {0};
	CHECK(t && cache, "%s", err.msg);
	jv bases[2] = { JV_OBJECT(jv_string("bos_token"), jv_string("<s>"), jv_string("eos_token"), jv_string("</s>"),
				  jv_string("extra"), JV_ARRAY(jv_string("<a>"), jv_string("<b>")), jv_string("tools"),
				  jv_string("base's tools")),
			JV_OBJECT(jv_string("bos_token"), jv_string("<bos>"), jv_string("extra"), jv_null()) };
	jv mores[3] = { jv_object(), JV_OBJECT(jv_string("flag"), jv_true(), jv_string("eos_token"), jv_string("E")),
			JV_OBJECT(jv_string("flag"), jv_false()) };
	for (int rec = 0; t && cache && rec < 200 && !check_case_failed; rec++) {
		int bi = (int)rng_below(check_rng(), 2), mi = (int)rng_below(check_rng(), 3);
		/* now and then an equal but new object: converted again, the same output */
		jv base = jv_copy(bases[bi]);
		if (!rng_below(check_rng(), 5)) {
			jv text = jv_dump_string(base, 0);
			base = jv_parse(jv_string_value(text));
			jv_free(text);
		}
		jv more = jv_copy(mores[mi]);
		jv own = JV_OBJECT(jv_string("messages"), JV_ARRAY(JV_OBJECT(jv_string("role"), jv_string("user"),
								     jv_string("content"), jv_string_fmt("m%d", rec))));
		if (rng_below(check_rng(), 2))
			own = jv_object_set(own, jv_string("tools"), JV_ARRAY(jv_number(rec)));
		jv merged = jv_object_merge(jv_object_merge(jv_copy(base), jv_copy(more)), jv_copy(own));
		struct tmpl_ctx *want = tmpl_ctx_new(merged, &err);
		struct tmpl_var vars[2];
		struct jd own_jd = jd_of(&ar, own);
		for (uint32_t i = 0; i < own_jd.n; i++)
			vars[i] = (struct tmpl_var){own_jd.u.members[i].key.u.s, &own_jd.u.members[i].val};
		struct tmpl_ctx *got = tmpl_ctx_new_layered(base, more, vars, own_jd.n, cache, &err);
		CHECK(want && got, "%s", err.msg);
		struct tmpl_output a, b;
		int ra = want ? tmpl_render_ctx(t, want, SIZE_MAX, -1, NULL, &a, &err) : -1;
		int rb = got ? tmpl_render_ctx(t, got, SIZE_MAX, -1, NULL, &b, &err) : -1;
		CHECK(ra == 0 && rb == 0, "%s", err.msg);
		if (ra == 0 && rb == 0)
			CHECK(tmpl_output_equal(&a, &b), "seed %llu record %d (base %d, more %d): [%s] vs [%s]", seed, rec, bi,
			      mi, a.text, b.text);
		if (ra == 0)
			tmpl_output_free(&a);
		if (rb == 0)
			tmpl_output_free(&b);
		tmpl_ctx_free(want);
		tmpl_ctx_free(got);
		jd_arena_reset(&ar); /* the context borrowed its variables */
	}
	jv_free(bases[0]), jv_free(bases[1]);
	jv_free(mores[0]), jv_free(mores[1]), jv_free(mores[2]);
	tmpl_cache_free(cache);
	tmpl_free(t);
	jd_arena_free(&ar);
}

/* A failure while a context is made leaves the cache usable. */
static void test_cache_after_failure(void)
{
	struct tmpl_cache *cache = tmpl_cache_new();
	struct err err = {0};
	CHECK(!tmpl_ctx_new_layered(jv_array(), jv_invalid(), NULL, 0, cache, &err), "a context that is not an object");
	err = (struct err){0};
	struct jd_shared *tools = shared_of(tool_list(0));
	struct jd msgs = {.kind = JD_ARRAY};
	struct tmpl_var vars[] = {{"tools", jd_shared_value(tools)}, {"messages", &msgs}};
	struct tmpl_ctx *c = tmpl_ctx_new_layered(jv_invalid(), jv_invalid(), vars, 2, cache, &err);
	CHECK(c, "%s", err.msg);
	const char *src = "{{ tools | tojson }}";
	struct tmpl *t = tmpl_compile(src, strlen(src), "t", &err);
	struct tmpl_output o;
	int rc = t && c ? tmpl_render_ctx(t, c, SIZE_MAX, -1, NULL, &o, &err) : -1;
	CHECK(rc == 0, "%s", err.msg);
	if (rc == 0) {
		CHECK(strstr(o.text, "\"tool_0_1\"") != NULL, "rendered %s", o.text);
		tmpl_output_free(&o);
	}
	tmpl_free(t);
	tmpl_ctx_free(c);
	tmpl_cache_free(cache);
	jd_shared_unref(tools);
}

int main(void)
{
	RUN(test_cache_same_output);
	RUN(test_cache_after_failure);
	RUN(test_layers);
	tmpl_thread_release();
	return check_done();
}
