/* adapter: PEFT folders written and read back bit for bit; a folder that is
 * replaced keeps what else it held; a failed save leaves nothing; a broken
 * or unsupported folder is refused with the file and the key named. */
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapter.h"
#include "check.h"
#include "half.h"
#include "safetensors.h"

static char root[] = "/tmp/test_adapter.XXXXXX";

static const char *at(const char *name)
{
	static char buf[8][512];
	static int k;
	k = (k + 1) % 8;
	snprintf(buf[k], sizeof buf[k], "%s/%s", root, name);
	return buf[k];
}

/* The tiny model shape of most cases: GQA, head_dim 16, 3 layers. */
static struct model_config cfg(void)
{
	struct model_config c = {0};
	c.dim = 64, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 16, c.ffn = 96, c.n_layers = 3, c.vocab = 11;
	return c;
}

/* An adapter with every A and B drawn at random. */
static struct lora *random_lora(unsigned targets, int rank, float alpha, float dropout, int rslora)
{
	struct model_config c = cfg();
	struct lora_config lc = {targets, rank, alpha, dropout, rslora};
	struct err err = {0};
	struct lora *lo = lora_new(&c, &lc, &err);
	if (!lo) {
		printf("# lora_new: %s\n", err.msg);
		exit(1);
	}
	for (size_t i = 0; i < lo->n_params; i++)
		lo->params[i] = (float)(check_urand() - 0.5);
	return lo;
}

/* Entries of folder dir, sorted, space-separated ("" when empty). */
static const char *listing(const char *dir)
{
	static char out[2048];
	struct dirent **names;
	int n = scandir(dir, &names, NULL, alphasort);
	size_t len = 0;
	out[0] = 0;
	for (int i = 0; i < n; i++) {
		if (strcmp(names[i]->d_name, ".") && strcmp(names[i]->d_name, ".."))
			len += (size_t)snprintf(out + len, len < sizeof out ? sizeof out - len : 0, "%s%s", len ? " " : "",
						names[i]->d_name);
		free(names[i]);
	}
	if (n >= 0)
		free(names);
	else
		snprintf(out, sizeof out, "<missing>");
	return out;
}

static int same_adapter(const struct lora *a, const struct lora *b)
{
	return a->cfg.targets == b->cfg.targets && a->cfg.rank == b->cfg.rank && a->cfg.alpha == b->cfg.alpha &&
	       a->cfg.dropout == b->cfg.dropout && a->cfg.rslora == b->cfg.rslora && a->scale == b->scale &&
	       a->n_params == b->n_params && !memcmp(a->params, b->params, a->n_params * sizeof(float));
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	rewind(f);
	char *s = malloc((size_t)n + 1);
	if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
		free(s);
		s = NULL;
	}
	if (s)
		s[n] = 0;
	fclose(f);
	return s;
}

static void spit(const char *path, const char *text)
{
	FILE *f = fopen(path, "wb");
	if (f) {
		fputs(text, f);
		fclose(f);
	}
}

static void rm_rf(const char *path)
{
	char cmd[600];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
	if (system(cmd) != 0)
		printf("# could not remove %s\n", path);
}

static void test_roundtrip(void)
{
	struct model_config c = cfg();
	static const struct {
		unsigned targets;
		int rank;
		float alpha, dropout;
		int rslora, multimodal;
	} cases[] = {
		{0x7f, 4, 16, 0.05f, 0, 0},
		{(1u << LORA_Q) | (1u << LORA_V), 8, 5.5f, 0, 1, 0},
		{1u << LORA_DOWN, 1, 0.25f, 0.1f, 0, 0},
		{0x7f, 2, 32, 0, 0, 1},
		{(1u << LORA_K) | (1u << LORA_UP), 3, 7, 0.3f, 1, 1},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct lora *lo = random_lora(cases[i].targets, cases[i].rank, cases[i].alpha, cases[i].dropout,
					      cases[i].rslora);
		struct err err = {0};
		struct peft_save_opts o = {"some/model \"quoted\" é", cases[i].multimodal};
		char dir[512];
		snprintf(dir, sizeof dir, "%s", at("rt"));
		int rc = lora_save_peft(lo, dir, &o, &err);
		CHECK(rc == 0, "case %zu: save: %s", i, err.msg);
		CHECK(!strcmp(listing(dir), "adapter_config.json adapter_model.safetensors"), "case %zu: folder holds %s", i,
		      listing(dir));
		CHECK(!strcmp(listing(root), "rt"), "case %zu: beside it: %s", i, listing(root));
		struct peft_info info;
		struct lora *back = lora_load_peft(dir, &c, &info, &err);
		CHECK(back && same_adapter(lo, back), "case %zu: read back %s: %s", i, back ? "differs" : "failed", err.msg);
		CHECK(back && info.multimodal == cases[i].multimodal && !strcmp(info.base_model, o.base_model),
		      "case %zu: multimodal %d, base model '%s'", i, info.multimodal, info.base_model);
		char *text = slurp(at("rt/adapter_config.json"));
		CHECK(text && !!strstr(text, "language_model") == cases[i].multimodal &&
			      strstr(text, "\"base_model_name_or_path\": \"some/model \\\"quoted\\\" \\u00e9\""),
		      "case %zu: config text:\n%s", i, text ? text : "(none)");
		free(text);
		lora_free(back);
		lora_free(lo);
		rm_rf(dir);
	}
}

/* base_model_name_or_path written as Python's json.dumps writes it (ensure_ascii):
 * json.dumps("a\tb\x01\x7f\u00e9\U0001F600\"\\/") gives the text expected here. */
static void test_config_strings(void)
{
	struct lora *lo = random_lora(1u << LORA_Q, 2, 4, 0, 0);
	struct err err = {0};
	char dir[512];
	snprintf(dir, sizeof dir, "%s", at("s"));
	struct peft_save_opts o = {"a\tb\x01\x7f\xc3\xa9\xf0\x9f\x98\x80\"\\/", 0};
	CHECK(lora_save_peft(lo, dir, &o, &err) == 0, "%s", err.msg);
	char *text = slurp(at("s/adapter_config.json"));
	const char *want = "\"base_model_name_or_path\": \"a\\tb\\u0001\\u007f\\u00e9\\ud83d\\ude00\\\"\\\\/\",";
	CHECK(text && strstr(text, want), "expected %s in\n%s", want, text ? text : "(none)");
	free(text);
	static const char *const bad[] = {"\xf5\x80\x80\x80", "\xed\xa0\x80", "\xc0\x80", "\x80", "\xe2\x82", "\xf4\x90\x80\x80"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct peft_save_opts b = {bad[i], 0};
		int rc = lora_save_peft(lo, at("t"), &b, &err);
		CHECK(rc == -1 && strstr(err.msg, "UTF-8"), "bad UTF-8 %zu: rc %d %s", i, rc, err.msg);
	}
	CHECK(!strcmp(listing(root), "s"), "beside: %s", listing(root));
	lora_free(lo);
	rm_rf(dir);
}

/* A folder replaced: the new adapter in it, the other entries kept, nothing left beside it. */
static void test_replace(void)
{
	struct model_config c = cfg();
	struct err err = {0};
	struct lora *first = random_lora(0x7f, 4, 8, 0, 0), *second = random_lora(0x11, 2, 4, 0, 1);
	char dir[512];
	snprintf(dir, sizeof dir, "%s", at("out"));
	CHECK(lora_save_peft(first, dir, NULL, &err) == 0, "%s", err.msg);
	spit(at("out/log.jsonl"), "{\"step\":1}\n");
	mkdir(at("out/checkpoint-5"), 0755);
	spit(at("out/checkpoint-5/state"), "x");
	CHECK(lora_save_peft(second, at("out/"), NULL, &err) == 0, "%s", err.msg);
	CHECK(!strcmp(listing(dir), "adapter_config.json adapter_model.safetensors checkpoint-5 log.jsonl"),
	      "after replacing: %s", listing(dir));
	CHECK(!strcmp(listing(at("out/checkpoint-5")), "state"), "checkpoint-5 holds %s", listing(at("out/checkpoint-5")));
	CHECK(!strcmp(listing(root), "out"), "beside it: %s", listing(root));
	struct lora *back = lora_load_peft(dir, &c, NULL, &err);
	CHECK(back && same_adapter(second, back), "the replaced folder reads back %s: %s", back ? "wrong" : "nothing",
	      err.msg);
	lora_free(back);

	/* through a symbolic link: the folder it names is replaced, the link stays */
	CHECK(symlink("out", at("link")) == 0, "symlink");
	CHECK(lora_save_peft(first, at("link"), NULL, &err) == 0, "%s", err.msg);
	struct stat sb;
	CHECK(lstat(at("link"), &sb) == 0 && S_ISLNK(sb.st_mode), "the link is gone");
	back = lora_load_peft(dir, &c, NULL, &err);
	CHECK(back && same_adapter(first, back), "through the link: %s", err.msg);
	CHECK(!strcmp(listing(root), "link out"), "beside it: %s", listing(root));
	lora_free(back);
	lora_free(first);
	lora_free(second);
	rm_rf(at("link"));
	rm_rf(dir);
}

/* A save that fails leaves nothing new: not the folder, not a temporary. */
static void test_failed_save(void)
{
	struct model_config c = cfg();
	struct err err = {0};
	struct lora *lo = random_lora(0x7f, 4, 8, 0, 0), *other = random_lora(0x7f, 4, 8, 0, 0);
	struct peft_save_opts bad_utf8 = {"model\xff", 0};
	int rc = lora_save_peft(lo, at("new"), &bad_utf8, &err);
	CHECK(rc == -1 && strstr(err.msg, "UTF-8") && strstr(err.msg, "base_model_name_or_path"), "rc %d: %s", rc, err.msg);
	CHECK(!strcmp(listing(root), ""), "after a failed save: %s", listing(root));

	lo->params[17] = NAN;
	rc = lora_save_peft(lo, at("new"), NULL, &err);
	CHECK(rc == -1 && strstr(err.msg, "non-finite") && strstr(err.msg, "new"), "rc %d: %s", rc, err.msg);
	CHECK(!strcmp(listing(root), ""), "after a refused save: %s", listing(root));
	lo->params[17] = 0;

	/* an existing adapter survives a failed replacement whole */
	CHECK(lora_save_peft(other, at("old"), NULL, &err) == 0, "%s", err.msg);
	rc = lora_save_peft(lo, at("old"), &bad_utf8, &err);
	CHECK(rc == -1, "saved with a bad name");
	CHECK(!strcmp(listing(root), "old") && !strcmp(listing(at("old")), "adapter_config.json adapter_model.safetensors"),
	      "after a failed replacement: %s / %s", listing(root), listing(at("old")));
	struct lora *back = lora_load_peft(at("old"), &c, NULL, &err);
	CHECK(back && same_adapter(other, back), "the old adapter did not survive: %s", err.msg);
	lora_free(back);

	/* not a folder */
	spit(at("file"), "precious");
	rc = lora_save_peft(lo, at("file"), NULL, &err);
	char *text = slurp(at("file"));
	CHECK(rc == -1 && strstr(err.msg, "not a folder") && text && !strcmp(text, "precious"), "rc %d: %s", rc, err.msg);
	free(text);
	CHECK(!strcmp(listing(root), "file old"), "beside: %s", listing(root));
	rc = lora_save_peft(lo, at("no/such/parent"), NULL, &err);
	CHECK(rc == -1 && strstr(err.msg, "no/such/parent"), "rc %d: %s", rc, err.msg);
	lora_free(lo);
	lora_free(other);
	rm_rf(at("file"));
	rm_rf(at("old"));
}

/* Loads dir and expects a failure whose message holds each of the NULL-ended words. */
static void expect_refused(const char *what, const char *dir, const struct model_config *c, ...)
{
	struct err err = {0};
	struct lora *lo = lora_load_peft(dir, c, NULL, &err);
	CHECK(!lo, "%s: loaded", what);
	lora_free(lo);
	va_list ap;
	va_start(ap, c);
	for (const char *w; (w = va_arg(ap, const char *));)
		CHECK(strstr(err.msg, w), "%s: message '%s' lacks '%s'", what, err.msg, w);
	va_end(ap);
}

/* A good folder "bad" whose adapter_config.json has `from` replaced by `to`. */
static void config_edit(const struct lora *lo, const char *from, const char *to)
{
	struct err err = {0};
	rm_rf(at("bad"));
	if (lora_save_peft(lo, at("bad"), NULL, &err) < 0)
		printf("# save: %s\n", err.msg);
	char *text = slurp(at("bad/adapter_config.json"));
	char *hit = text ? strstr(text, from) : NULL;
	CHECK(hit, "'%s' is not in our config", from);
	if (!hit) {
		free(text);
		return;
	}
	char *out = malloc(strlen(text) + strlen(to) + 1);
	sprintf(out, "%.*s%s%s", (int)(hit - text), text, to, hit + strlen(from));
	spit(at("bad/adapter_config.json"), out);
	free(out);
	free(text);
}

/* One more replacement in the config config_edit left. */
static void config_edit_more(const char *from, const char *to)
{
	char *text = slurp(at("bad/adapter_config.json"));
	char *hit = text ? strstr(text, from) : NULL;
	CHECK(hit, "'%s' is not in the config", from);
	if (hit) {
		char *out = malloc(strlen(text) + strlen(to) + 1);
		sprintf(out, "%.*s%s%s", (int)(hit - text), text, to, hit + strlen(from));
		spit(at("bad/adapter_config.json"), out);
		free(out);
	}
	free(text);
}

static void test_bad_config(void)
{
	struct model_config c = cfg();
	struct lora *lo = random_lora((1u << LORA_Q) | (1u << LORA_V), 4, 8, 0, 0);
	struct err err = {0};
	expect_refused("no folder", at("none"), &c, "none", NULL);
	CHECK(lora_save_peft(lo, at("bad"), NULL, &err) == 0, "%s", err.msg);
	unlink(at("bad/adapter_config.json"));
	expect_refused("no config", at("bad"), &c, "adapter_config.json", NULL);
	spit(at("bad/adapter_config.json"), "{\"peft_type\": \"LORA\", \"r\": ");
	expect_refused("corrupt JSON", at("bad"), &c, "adapter_config.json", "JSON", NULL);
	spit(at("bad/adapter_config.json"), "[1, 2]");
	expect_refused("not an object", at("bad"), &c, "adapter_config.json", "object", NULL);

	static const struct {
		const char *from, *to, *key, *says;
	} edits[] = {
		{"\"use_dora\": false", "\"use_dora\": true", "use_dora", "DoRA"},
		{"\"bias\": \"none\"", "\"bias\": \"all\"", "\"bias\"", "not supported"},
		{"\"rank_pattern\": {}", "\"rank_pattern\": {\"q_proj\": 8}", "rank_pattern", "not supported"},
		{"\"alpha_pattern\": {}", "\"alpha_pattern\": {\"q_proj\": 8}", "alpha_pattern", "not supported"},
		{"\"modules_to_save\": null", "\"modules_to_save\": [\"lm_head\"]", "modules_to_save", "not supported"},
		{"\"layers_to_transform\": null", "\"layers_to_transform\": [0]", "layers_to_transform", "not supported"},
		{"\"lora_bias\": false", "\"lora_bias\": true", "lora_bias", "not supported"},
		{"\"init_lora_weights\": true", "\"init_lora_weights\": \"pissa\"", "init_lora_weights", "pissa"},
		{"\"peft_type\": \"LORA\"", "\"peft_type\": \"IA3\"", "peft_type", "IA3"},
		{"\"task_type\": \"CAUSAL_LM\"", "\"task_type\": \"SEQ_CLS\"", "task_type", "SEQ_CLS"},
		{"\"r\": 4", "\"r\": 0", "\"r\"", "whole number"},
		{"\"r\": 4", "\"r\": 4.5", "\"r\"", "whole number"},
		{"\"lora_alpha\": 8", "\"lora_alpha\": -1", "lora_alpha", "positive"},
		{"\"lora_dropout\": 0.0", "\"lora_dropout\": 1.5", "lora_dropout", "[0, 1)"},
		{"\"use_rslora\": false", "\"use_rslora\": \"yes\"", "use_rslora", "true or false"},
		{"\"target_modules\": [\n    \"q_proj\",\n    \"v_proj\"\n  ]", "\"target_modules\": [\"q_proj\", \"v_proj\", \"fc1\"]",
		 "target_modules", "'fc1'"},
		{"\"target_modules\": [\n    \"q_proj\",\n    \"v_proj\"\n  ]", "\"target_modules\": 7", "target_modules",
		 "expected a list"},
		{"\"target_modules\": [\n    \"q_proj\",\n    \"v_proj\"\n  ]", "\"target_modules\": \"(q_proj\"",
		 "target_modules", "regular expression"},
		{"\"use_qalora\": false", "\"use_qalora\": true", "use_qalora", "QALoRA"},
		{"\"trainable_token_indices\": null", "\"trainable_token_indices\": [3]", "trainable_token_indices",
		 "not supported"},
	};
	for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
		config_edit(lo, edits[i].from, edits[i].to);
		char what[160];
		snprintf(what, sizeof what, "config %s", edits[i].to);
		expect_refused(what, at("bad"), &c, "adapter_config.json", edits[i].key, edits[i].says, NULL);
	}
	/* target_modules that adapt more than the tensors hold, or fewer */
	config_edit(lo, "\"v_proj\"", "\"v_proj\", \"o_proj\"");
	expect_refused("config adapts o_proj, no tensors for it", at("bad"), &c, "adapter_model.safetensors", "missing key",
		       "base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight", NULL);
	config_edit(lo, "\"q_proj\",\n", "");
	expect_refused("config forgets q_proj", at("bad"), &c, "adapter_model.safetensors", "unexpected key",
		       "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", NULL);
	/* a regular expression over one layer: the others would go unadapted */
	config_edit(lo, "\"target_modules\": [\n    \"q_proj\",\n    \"v_proj\"\n  ]",
		    "\"target_modules\": \"model\\\\.layers\\\\.0\\\\.self_attn\\\\.(q|v)_proj\"");
	expect_refused("regex over layer 0 only", at("bad"), &c, "unexpected key", "layers.1.self_attn.q_proj", NULL);
	/* equivalent spellings PEFT accepts load */
	config_edit(lo, "\"target_modules\": [\n    \"q_proj\",\n    \"v_proj\"\n  ]",
		    "\"target_modules\": [\"self_attn.q_proj\", \"v_proj\"], \"some_future_key\": 1");
	struct lora *back = lora_load_peft(at("bad"), &c, NULL, &err);
	CHECK(back && same_adapter(lo, back), "list with a dotted name: %s", err.msg);
	lora_free(back);
	config_edit(lo, "\"target_modules\": [\n    \"q_proj\",\n    \"v_proj\"\n  ]",
		    "\"target_modules\": \".*\\\\.(q|v)_proj\"");
	back = lora_load_peft(at("bad"), &c, NULL, &err);
	CHECK(back && same_adapter(lo, back), "regular expression: %s", err.msg);
	lora_free(back);
	config_edit(lo, "\"target_modules\": [\n    \"q_proj\",\n    \"v_proj\"\n  ]",
		    "\"target_modules\": [\"q_proj\", \"v_proj\", \"o_proj\"]");
	config_edit_more("\"exclude_modules\": null", "\"exclude_modules\": [\"o_proj\"]");
	back = lora_load_peft(at("bad"), &c, NULL, &err);
	CHECK(back && same_adapter(lo, back), "o_proj targeted and excluded: %s", err.msg);
	lora_free(back);
	config_edit(lo, "\"exclude_modules\": null", "\"exclude_modules\": \"model\\\\.layers\\\\.2\\\\..*\"");
	expect_refused("layer 2 excluded", at("bad"), &c, "unexpected key", "layers.2.self_attn.q_proj", NULL);
	config_edit(lo, "\"exclude_modules\": null", "\"exclude_modules\": 7");
	expect_refused("exclude_modules a number", at("bad"), &c, "adapter_config.json", "exclude_modules", NULL);
	/* a model of another shape */
	struct model_config wide = cfg();
	wide.dim = 80;
	config_edit(lo, "\"r\": 4", "\"r\": 4");
	expect_refused("another model", at("bad"), &wide, "adapter_model.safetensors",
		       "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "shape [4, 64], expected [4, 80]",
		       NULL);
	struct model_config shallow = cfg();
	shallow.n_layers = 2;
	expect_refused("a model with fewer layers", at("bad"), &shallow, "unexpected key", "layers.2.", "2 layers", NULL);
	lora_free(lo);
	rm_rf(at("bad"));
}

/* The tensors of lo as our writer names them, for editing. */
struct tensors {
	struct st_out t[64];
	char names[64][128];
	size_t n;
};

static void tensors_of(const struct lora *lo, struct tensors *ts)
{
	ts->n = 0;
	for (int l = 0; l < lo->n_layers; l++)
		for (int t = 0; t < LORA_N_TARGETS; t++) {
			const struct lora_pair *p = &lo->pairs[l][t];
			for (int b = 0; p->a && b < 2; b++) {
				size_t k = ts->n++;
				snprintf(ts->names[k], sizeof ts->names[k], "base_model.model.model.layers.%d.%s.lora_%c.weight", l,
					 lora_target_module(t), b ? 'B' : 'A');
				ts->t[k] = (struct st_out){ts->names[k], ST_F32, 2, {b ? p->out : lo->cfg.rank,
										   b ? lo->cfg.rank : p->in},
							   b ? p->b : p->a};
			}
		}
}

static void write_tensors(struct tensors *ts)
{
	struct err err = {0};
	const char *meta[] = {"format", "pt", NULL};
	if (st_write(at("bad/adapter_model.safetensors"), ts->t, ts->n, meta, &err) < 0)
		printf("# st_write: %s\n", err.msg);
}

static void test_bad_tensors(void)
{
	struct model_config c = cfg();
	struct err err = {0};
	struct lora *lo = random_lora((1u << LORA_Q) | (1u << LORA_V), 4, 8, 0, 0);
	struct tensors ts;
	rm_rf(at("bad"));
	CHECK(lora_save_peft(lo, at("bad"), NULL, &err) == 0, "%s", err.msg);
	unlink(at("bad/adapter_model.safetensors"));
	expect_refused("no weights", at("bad"), &c, "adapter_model.safetensors", NULL);
	spit(at("bad/adapter_model.bin"), "pickle");
	expect_refused("only a .bin", at("bad"), &c, "adapter_model.bin", "safetensors", NULL);
	unlink(at("bad/adapter_model.bin"));
	spit(at("bad/adapter_model.safetensors"), "\x08\0\0\0\0\0\0\0{}");
	expect_refused("corrupt safetensors", at("bad"), &c, "adapter_model.safetensors", NULL);

	tensors_of(lo, &ts);
	ts.t[3] = ts.t[--ts.n]; /* drop layer 0's v_proj B */
	write_tensors(&ts);
	expect_refused("a missing tensor", at("bad"), &c, "adapter_model.safetensors", "missing key",
		       "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight", NULL);

	static float extra[4 * 64];
	static const char *const strays[][2] = {
		{"base_model.model.lm_head.lora_A.weight", "lm_head"},
		{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", "default"},
		{"base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", "magnitude"},
		{"base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight", "layers.7"},
		{"base_model.model.model.layers.01.self_attn.q_proj.lora_A.weight", "layers.01"},
		{"base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight", "language_model"},
		{"base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight", "o_proj"},
	};
	for (size_t i = 0; i < sizeof strays / sizeof strays[0]; i++) {
		tensors_of(lo, &ts);
		ts.t[ts.n++] = (struct st_out){strays[i][0], ST_F32, 2, {4, 64}, extra};
		write_tensors(&ts);
		expect_refused(strays[i][0], at("bad"), &c, "adapter_model.safetensors", "unexpected key", strays[i][1], NULL);
	}

	tensors_of(lo, &ts);
	ts.t[0].shape[1] = 63;
	write_tensors(&ts);
	expect_refused("a wrong shape", at("bad"), &c, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
		       "shape [4, 63], expected [4, 64]", NULL);
	tensors_of(lo, &ts);
	ts.t[1].n_dims = 3, ts.t[1].shape[2] = 1;
	write_tensors(&ts);
	expect_refused("three dimensions", at("bad"), &c, "q_proj.lora_B.weight", "shape [64, 4, 1]", NULL);

	tensors_of(lo, &ts);
	ts.t[2].dtype = ST_I32;
	write_tensors(&ts);
	expect_refused("integer tensor", at("bad"), &c, "adapter_model.safetensors", "v_proj.lora_A.weight", "I32", NULL);

	float saved = lo->pairs[1][LORA_V].b[5];
	lo->pairs[1][LORA_V].b[5] = INFINITY;
	tensors_of(lo, &ts);
	write_tensors(&ts);
	lo->pairs[1][LORA_V].b[5] = saved;
	expect_refused("infinity", at("bad"), &c, "layers.1.self_attn.v_proj.lora_B.weight", "value 5", NULL);

	/* F16 and BF16 tensors load as their exact fp32 values */
	for (int bf = 0; bf < 2; bf++) {
		tensors_of(lo, &ts);
		uint16_t *half = malloc(lo->n_params * sizeof *half);
		float *want = malloc(lo->n_params * sizeof *want);
		size_t off = 0;
		for (size_t k = 0; k < ts.n; k++) {
			const float *src = ts.t[k].data;
			size_t n = (size_t)(ts.t[k].shape[0] * ts.t[k].shape[1]);
			for (size_t i = 0; i < n; i++) {
				half[off + i] = bf ? f32_to_bf16(src[i]) : (uint16_t)f32_to_f16(src[i]);
				want[(const float *)ts.t[k].data - lo->params + i] =
					bf ? bf16_to_f32(half[off + i]) : f16_to_f32(half[off + i]);
			}
			ts.t[k].dtype = bf ? ST_BF16 : ST_F16;
			ts.t[k].data = half + off;
			off += n;
		}
		write_tensors(&ts);
		struct lora *back = lora_load_peft(at("bad"), &c, NULL, &err);
		CHECK(back && back->n_params == lo->n_params &&
			      !memcmp(back->params, want, lo->n_params * sizeof(float)),
		      "%s tensors: %s", bf ? "BF16" : "F16", back ? "values differ" : err.msg);
		lora_free(back);
		free(half);
		free(want);
	}
	lora_free(lo);
	rm_rf(at("bad"));
}

static void test_multimodal_probe(void)
{
	struct err err = {0};
	int mm = -1;
	mkdir(at("mm"), 0755);
	spit(at("mm/config.json"), "{\"model_type\": \"gemma3\", \"text_config\": {\"model_type\": \"gemma3_text\"}}");
	CHECK(peft_model_multimodal(at("mm"), &mm, &err) == 0 && mm == 1, "gemma3 folder: %d %s", mm, err.msg);
	spit(at("mm/model.safetensors"), "");
	CHECK(peft_model_multimodal(at("mm/model.safetensors"), &mm, &err) == 0 && mm == 1, "its safetensors: %d %s", mm,
	      err.msg);
	spit(at("mm/config.json"), "{\"model_type\": \"gemma3_text\"}");
	CHECK(peft_model_multimodal(at("mm"), &mm, &err) == 0 && mm == 0, "gemma3_text: %d %s", mm, err.msg);
	spit(at("mm/config.json"), "{\"model_type\": ");
	CHECK(peft_model_multimodal(at("mm"), &mm, &err) == -1 && strstr(err.msg, "config.json"), "bad JSON: %s",
	      err.msg);
	spit(at("model.gguf"), "GGUF");
	CHECK(peft_model_multimodal(at("model.gguf"), &mm, &err) == 0 && mm == 0, "gguf: %d", mm);
	CHECK(peft_model_multimodal(at("absent"), &mm, &err) == -1 && strstr(err.msg, "absent"), "absent: %s", err.msg);
	rm_rf(at("mm"));
	rm_rf(at("model.gguf"));
}

int main(void)
{
	check_seed_init();
	if (!mkdtemp(root)) {
		perror(root);
		return 1;
	}
	RUN(test_roundtrip);
	RUN(test_config_strings);
	RUN(test_replace);
	RUN(test_failed_save);
	RUN(test_bad_config);
	RUN(test_bad_tensors);
	RUN(test_multimodal_probe);
	rm_rf(root);
	return check_done();
}
