/* adapter: PEFT's adapter folder, written and read (see adapter.h). */
#include "adapter.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "jsonl.h"
#include "outfile.h"
#include "safetensors.h"

#define CONFIG_NAME "adapter_config.json"
#define WEIGHTS_NAME "adapter_model.safetensors"
/* The version of PEFT whose folder we write (its adapter_config.json carries it). */
#define PEFT_VERSION "0.21.2"
/* Room for a folder's path (at most PATH_MAX) with a file name after it. */
#define PATH_CAP (PATH_MAX + 64)

/* Key layouts: where the decoder layers sit, as a tensor key prefix and as
 * the module name PEFT matches target_modules against. */
enum layout { LAYOUT_TEXT, LAYOUT_MM, LAYOUT_MM_OLD, LAYOUT_N };
static const char *const key_prefix[LAYOUT_N] = {
	"base_model.model.model.layers.",
	"base_model.model.model.language_model.layers.",
	"base_model.model.language_model.model.layers.",
};
static const char *const module_prefix[LAYOUT_N] = {
	"model.layers.",
	"model.language_model.layers.",
	"language_model.model.layers.",
};

/* ---- writing adapter_config.json as Python's json.dumps(indent=2, sort_keys=True) ---- */

/* A JSON string as Python writes it with ensure_ascii: printable ASCII kept,
 * the rest as short escapes or \uXXXX (UTF-16 surrogate pairs above U+FFFF). */
static int put_py_string(FILE *f, const char *s, struct err *err)
{
	const unsigned char *p = (const unsigned char *)s;
	fputc('"', f);
	while (*p) {
		unsigned c = *p;
		if (c == '"' || c == '\\') {
			fprintf(f, "\\%c", c);
			p++;
			continue;
		}
		if (c >= 0x20 && c < 0x7f) {
			fputc((int)c, f);
			p++;
			continue;
		}
		if (c < 0x80) {
			switch (c) {
			case '\n': fputs("\\n", f); break;
			case '\r': fputs("\\r", f); break;
			case '\t': fputs("\\t", f); break;
			case '\b': fputs("\\b", f); break;
			case '\f': fputs("\\f", f); break;
			default: fprintf(f, "\\u%04x", c); break;
			}
			p++;
			continue;
		}
		/* one UTF-8 sequence, checked */
		int len = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
		uint32_t cp = len == 4 ? c & 7 : len == 3 ? c & 15 : c & 31;
		for (int i = 1; i < len; i++) {
			if ((p[i] & 0xc0) != 0x80) {
				len = 0;
				break;
			}
			cp = cp << 6 | (p[i] & 0x3f);
		}
		if (!len || (len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp < 0xe000))) ||
		    (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
			return err_set(err, "not valid UTF-8 at byte %zu of \"%s\"", (size_t)(p - (const unsigned char *)s), s);
		if (cp >= 0x10000) {
			cp -= 0x10000;
			fprintf(f, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
		} else {
			fprintf(f, "\\u%04x", cp);
		}
		p += len;
	}
	fputc('"', f);
	return 0;
}

/* The shortest decimal that reads back as x (fp32), as Python's repr writes
 * a float: "0.05", "0.0", "1e-05". Whole numbers when whole is set, as "16". */
static void py_number(char *buf, size_t size, float x, int whole)
{
	if (whole && x == floorf(x) && fabsf(x) < 1e15f) {
		snprintf(buf, size, "%.0f", (double)x);
		return;
	}
	for (int prec = 1; prec <= 9; prec++) {
		snprintf(buf, size, "%.*g", prec, (double)x);
		if (strtof(buf, NULL) == x)
			break;
	}
	if (!strpbrk(buf, ".en"))
		strncat(buf, ".0", size - strlen(buf) - 1);
}

/* target_modules for the multimodal layout: a regular expression over whole
 * module names, only the language model's layers. */
static void mm_regex(char *buf, size_t size, unsigned targets)
{
	size_t n = (size_t)snprintf(buf, size, "model\\.language_model\\.layers\\.\\d+\\.(");
	const char *group[2] = {"self_attn\\.(", "mlp\\.("};
	int first_group = 1;
	for (int g = 0; g < 2; g++) {
		int lo = g ? LORA_GATE : LORA_Q, hi = g ? LORA_N_TARGETS : LORA_GATE, any = 0;
		for (int t = lo; t < hi; t++) {
			if (!(targets & (1u << t)))
				continue;
			if (!any)
				n += (size_t)snprintf(buf + n, size - n, "%s%s", first_group ? "" : "|", group[g]);
			n += (size_t)snprintf(buf + n, size - n, "%s%s", any ? "|" : "", lora_target_name(t));
			any = 1;
			first_group = 0;
		}
		if (any)
			n += (size_t)snprintf(buf + n, size - n, ")");
	}
	snprintf(buf + n, size - n, ")");
}

static int write_config(const char *path, const struct lora *lo, const struct peft_save_opts *o, struct err *err)
{
	struct outfile *out = outfile_open(path, 0, err);
	if (!out)
		return -1;
	FILE *f = out->f;
	char alpha[40], dropout[40];
	py_number(alpha, sizeof alpha, lo->cfg.alpha, 1);
	py_number(dropout, sizeof dropout, lo->cfg.dropout, 0);
	/* PEFT 0.21.2's keys, sorted as sort_keys sorts them. */
	fputs("{\n"
	      "  \"alora_invocation_tokens\": null,\n"
	      "  \"alpha_pattern\": {},\n"
	      "  \"arrow_config\": null,\n"
	      "  \"auto_mapping\": null,\n"
	      "  \"base_model_name_or_path\": ",
	      f);
	if (o && o->base_model) {
		if (put_py_string(f, o->base_model, err) < 0) {
			outfile_abort(out);
			return err_wrap(err, "%s: base_model_name_or_path", path);
		}
	} else {
		fputs("null", f);
	}
	fprintf(f,
		",\n"
		"  \"bias\": \"none\",\n"
		"  \"corda_config\": null,\n"
		"  \"ensure_weight_tying\": false,\n"
		"  \"eva_config\": null,\n"
		"  \"exclude_modules\": null,\n"
		"  \"fan_in_fan_out\": false,\n"
		"  \"inference_mode\": true,\n"
		"  \"init_lora_weights\": true,\n"
		"  \"kasa_config\": null,\n"
		"  \"layer_replication\": null,\n"
		"  \"layers_pattern\": null,\n"
		"  \"layers_to_transform\": null,\n"
		"  \"loftq_config\": {},\n"
		"  \"lora_alpha\": %s,\n"
		"  \"lora_bias\": false,\n"
		"  \"lora_dropout\": %s,\n"
		"  \"lora_ga_config\": null,\n"
		"  \"megatron_config\": null,\n"
		"  \"megatron_core\": \"megatron.core\",\n"
		"  \"modules_to_save\": null,\n"
		"  \"monteclora_config\": null,\n"
		"  \"peft_type\": \"LORA\",\n"
		"  \"peft_version\": \"" PEFT_VERSION "\",\n"
		"  \"qalora_group_size\": 16,\n"
		"  \"r\": %d,\n"
		"  \"rank_pattern\": {},\n"
		"  \"revision\": null,\n"
		"  \"target_modules\": ",
		alpha, dropout, lo->cfg.rank);
	if (o && o->multimodal) {
		char re[256];
		mm_regex(re, sizeof re, lo->cfg.targets);
		put_py_string(f, re, err);
	} else {
		fputs("[", f);
		int first = 1;
		for (int t = 0; t < LORA_N_TARGETS; t++)
			if (lo->cfg.targets & (1u << t)) {
				fprintf(f, "%s\n    \"%s\"", first ? "" : ",", lora_target_name(t));
				first = 0;
			}
		fputs("\n  ]", f);
	}
	fprintf(f,
		",\n"
		"  \"target_parameters\": null,\n"
		"  \"task_type\": \"CAUSAL_LM\",\n"
		"  \"trainable_token_indices\": null,\n"
		"  \"use_bdlora\": null,\n"
		"  \"use_dora\": false,\n"
		"  \"use_qalora\": false,\n"
		"  \"use_rslora\": %s,\n"
		"  \"velora_config\": null\n"
		"}",
		lo->cfg.rslora ? "true" : "false");
	return outfile_commit(out, err);
}

static int write_weights(const char *path, const struct lora *lo, enum layout layout, struct err *err)
{
	size_t n = 0;
	for (int l = 0; l < lo->n_layers; l++)
		for (int t = 0; t < LORA_N_TARGETS; t++)
			n += lo->pairs[l][t].a ? 2 : 0;
	struct st_out *t = calloc(n ? n : 1, sizeof *t);
	char *names = calloc(n ? n : 1, 128);
	if (!t || !names) {
		free(t);
		free(names);
		return err_sys(err, "%s:", path);
	}
	size_t k = 0;
	for (int l = 0; l < lo->n_layers; l++)
		for (int tg = 0; tg < LORA_N_TARGETS; tg++) {
			const struct lora_pair *p = &lo->pairs[l][tg];
			if (!p->a)
				continue;
			for (int b = 0; b < 2; b++, k++) {
				char *name = names + 128 * k;
				snprintf(name, 128, "%s%d.%s.lora_%c.weight", key_prefix[layout], l, lora_target_module(tg),
					 b ? 'B' : 'A');
				t[k] = (struct st_out){name, ST_F32, 2, {0}, b ? p->b : p->a};
				t[k].shape[0] = b ? p->out : lo->cfg.rank;
				t[k].shape[1] = b ? lo->cfg.rank : p->in;
			}
		}
	const char *meta[] = {"format", "pt", NULL};
	int rc = st_write(path, t, n, meta, err);
	free(t);
	free(names);
	return rc;
}

/* ---- the folder ---- */

/* dir/name into out; -1 when it does not fit (out then holds a cut path, never used). */
static int path_join(char *out, size_t size, const char *dir, const char *name)
{
	return snprintf(out, size, "%s/%s", dir, name) >= (int)size ? -1 : 0;
}

/* Removes the folder tmp that holds at most our two files. */
static void remove_ours(const char *tmp)
{
	char p[PATH_CAP];
	path_join(p, sizeof p, tmp, CONFIG_NAME);
	unlink(p);
	path_join(p, sizeof p, tmp, WEIGHTS_NAME);
	unlink(p);
	rmdir(tmp);
}

static void fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
}

/* Moves every entry of old but our two files into new. */
static int carry_over(const char *old, const char *new, const char *dir, struct err *err)
{
	DIR *d = opendir(old);
	if (!d)
		return err_sys(err, "%s: the adapter is saved, but the old folder (now %s) cannot be read:", dir, old);
	int nfd = open(new, O_RDONLY | O_DIRECTORY);
	int rc = 0;
	if (nfd < 0) {
		closedir(d);
		return err_sys(err, "%s:", new);
	}
	for (struct dirent *e; (e = readdir(d));) {
		const char *n = e->d_name;
		if (!strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, CONFIG_NAME) || !strcmp(n, WEIGHTS_NAME))
			continue;
		if (renameat(dirfd(d), n, nfd, n) < 0) {
			rc = err_sys(err, "%s: the adapter is saved, but '%s' of the old folder stays in %s:", dir, n, old);
			break;
		}
	}
	fsync(nfd);
	close(nfd);
	closedir(d);
	return rc;
}

int lora_save_peft(const struct lora *lo, const char *dir_arg, const struct peft_save_opts *o, struct err *err)
{
	char dir[PATH_MAX], parent[PATH_MAX], tmp[PATH_MAX], p[PATH_CAP];
	size_t len = strlen(dir_arg);
	while (len > 1 && dir_arg[len - 1] == '/')
		len--;
	if (len == 0 || len >= sizeof dir)
		return err_set(err, "'%s': not a usable folder name", dir_arg);
	memcpy(dir, dir_arg, len);
	dir[len] = 0;
	for (size_t i = 0; i < lo->n_params; i++)
		if (!isfinite(lo->params[i]))
			return err_set(err, "%s: the adapter holds a non-finite value (parameter %zu); not saved", dir, i);

	struct stat st;
	int exists = lstat(dir, &st) == 0;
	if (!exists && errno != ENOENT)
		return err_sys(err, "%s:", dir);
	if (exists && S_ISLNK(st.st_mode)) { /* replace the folder the link names, keep the link */
		if (!realpath(dir_arg, p))
			return err_sys(err, "%s:", dir);
		if ((size_t)snprintf(dir, sizeof dir, "%s", p) >= sizeof dir || stat(dir, &st) < 0)
			return err_sys(err, "%s:", dir);
	}
	if (exists && !S_ISDIR(st.st_mode))
		return err_set(err, "%s: exists and is not a folder", dir);

	const char *slash = strrchr(dir, '/');
	const char *name = slash ? slash + 1 : dir;
	if (!*name || !strcmp(name, ".") || !strcmp(name, ".."))
		return err_set(err, "%s: name the adapter folder itself, not . or ..", dir);
	if (slash == dir)
		snprintf(parent, sizeof parent, "/");
	else if (slash)
		snprintf(parent, sizeof parent, "%.*s", (int)(slash - dir), dir);
	else
		snprintf(parent, sizeof parent, ".");
	if ((size_t)snprintf(tmp, sizeof tmp, "%s/.%s.tmp-XXXXXX", parent, name) >= sizeof tmp - 32)
		return err_set(err, "%s: name too long", dir);
	if (!mkdtemp(tmp))
		return err_sys(err, "%s: cannot create a folder beside it:", dir);

	enum layout layout = o && o->multimodal ? LAYOUT_MM : LAYOUT_TEXT;
	path_join(p, sizeof p, tmp, CONFIG_NAME);
	if (write_config(p, lo, o, err) < 0)
		goto fail;
	path_join(p, sizeof p, tmp, WEIGHTS_NAME);
	if (write_weights(p, lo, layout, err) < 0)
		goto fail;
	fsync_dir(tmp);

	if (!exists) {
		if (rename(tmp, dir) < 0) {
			err_sys(err, "%s:", dir);
			goto fail;
		}
		fsync_dir(parent);
		return 0;
	}
	/* Swap: the new folder takes the name, the old one lands at tmp. */
	char old[PATH_MAX];
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dir, RENAME_EXCHANGE) == 0) {
		snprintf(old, sizeof old, "%s", tmp);
	} else if (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP) {
		if ((size_t)snprintf(old, sizeof old, "%s/.%s.old-XXXXXX", parent, name) >= sizeof old || !mkdtemp(old)) {
			err_sys(err, "%s: cannot create a folder beside it:", dir);
			goto fail;
		}
		if (rename(dir, old) < 0) {
			err_sys(err, "%s:", dir);
			rmdir(old);
			goto fail;
		}
		if (rename(tmp, dir) < 0) {
			err_sys(err, "%s:", dir);
			rename(old, dir);
			goto fail;
		}
	} else {
		err_sys(err, "%s:", dir);
		goto fail;
	}
	fsync_dir(parent);
	if (carry_over(old, dir, dir, err) < 0)
		return -1;
	remove_ours(old);
	if (access(old, F_OK) == 0)
		return err_set(err, "%s: the adapter is saved, but the old folder %s could not be removed", dir, old);
	fsync_dir(parent);
	return 0;
fail:
	remove_ours(tmp);
	return -1;
}

/* ---- reading ---- */

/* obj[key] as a new reference, null when absent. */
static jv field(jv obj, const char *key)
{
	jv v = jv_object_get(jv_copy(obj), jv_string(key));
	if (!jv_is_valid(v)) {
		jv_free(v);
		return jv_null();
	}
	return v;
}

/* null, {} or [] (v not consumed) */
static int is_empty(jv v)
{
	switch (jv_get_kind(v)) {
	case JV_KIND_NULL: return 1;
	case JV_KIND_OBJECT: return jv_object_length(jv_copy(v)) == 0;
	case JV_KIND_ARRAY: return jv_array_length(jv_copy(v)) == 0;
	default: return 0;
	}
}

/* A short JSON rendering of v for messages (v not consumed). */
static const char *shown(jv v, char *buf, size_t size)
{
	jv s = jv_dump_string(jv_copy(v), 0);
	snprintf(buf, size, "%s", jv_string_value(s));
	if (strlen(buf) == size - 1 && size > 4)
		strcpy(buf + size - 4, "...");
	jv_free(s);
	return buf;
}

struct peft_cfg {
	int rank;
	float alpha, dropout;
	int rslora;
	jv targets; /* array of strings or a string */
	jv exclude; /* exclude_modules: null, array of strings or a string */
	char base_model[512];
};

/* Checks adapter_config.json (root, not consumed) and fills c. */
static int check_config(jv root, const char *file, struct peft_cfg *c, struct err *err)
{
	char buf[160];
	if (jv_get_kind(root) != JV_KIND_OBJECT)
		return err_set(err, "%s: expected a JSON object", file);
	jv v = field(root, "peft_type");
	int ok = jv_get_kind(v) == JV_KIND_STRING && !strcmp(jv_string_value(v), "LORA");
	if (!ok) {
		err_set(err, "%s: key \"peft_type\": %s, expected \"LORA\"", file, shown(v, buf, sizeof buf));
		jv_free(v);
		return -1;
	}
	jv_free(v);
	v = field(root, "task_type");
	ok = jv_get_kind(v) == JV_KIND_NULL ||
	     (jv_get_kind(v) == JV_KIND_STRING && !strcmp(jv_string_value(v), "CAUSAL_LM"));
	if (!ok) {
		err_set(err, "%s: key \"task_type\": %s, expected \"CAUSAL_LM\"", file, shown(v, buf, sizeof buf));
		jv_free(v);
		return -1;
	}
	jv_free(v);

	v = field(root, "r");
	double r = jv_get_kind(v) == JV_KIND_NUMBER ? jv_number_value(v) : -1;
	if (!(r >= 1 && r <= 65536 && r == floor(r))) {
		err_set(err, "%s: key \"r\": %s, expected a whole number from 1", file, shown(v, buf, sizeof buf));
		jv_free(v);
		return -1;
	}
	jv_free(v);
	c->rank = (int)r;

	v = field(root, "lora_alpha");
	double alpha = jv_get_kind(v) == JV_KIND_NULL ? 8 : jv_get_kind(v) == JV_KIND_NUMBER ? jv_number_value(v) : -1;
	if (!(alpha > 0 && alpha < 1e30)) {
		err_set(err, "%s: key \"lora_alpha\": %s, expected a positive number", file, shown(v, buf, sizeof buf));
		jv_free(v);
		return -1;
	}
	jv_free(v);
	c->alpha = (float)alpha;

	v = field(root, "lora_dropout");
	double p = jv_get_kind(v) == JV_KIND_NULL ? 0 : jv_get_kind(v) == JV_KIND_NUMBER ? jv_number_value(v) : -1;
	if (!(p >= 0 && p < 1)) {
		err_set(err, "%s: key \"lora_dropout\": %s, expected a number in [0, 1)", file, shown(v, buf, sizeof buf));
		jv_free(v);
		return -1;
	}
	jv_free(v);
	c->dropout = (float)p;

	v = field(root, "use_rslora");
	if (jv_get_kind(v) != JV_KIND_NULL && jv_get_kind(v) != JV_KIND_TRUE && jv_get_kind(v) != JV_KIND_FALSE) {
		err_set(err, "%s: key \"use_rslora\": %s, expected true or false", file, shown(v, buf, sizeof buf));
		jv_free(v);
		return -1;
	}
	c->rslora = jv_get_kind(v) == JV_KIND_TRUE;
	jv_free(v);

	v = field(root, "bias");
	ok = jv_get_kind(v) == JV_KIND_NULL || (jv_get_kind(v) == JV_KIND_STRING && !strcmp(jv_string_value(v), "none"));
	if (!ok) {
		err_set(err, "%s: key \"bias\": %s is not supported (only \"none\": lorapipe trains no biases)", file,
			shown(v, buf, sizeof buf));
		jv_free(v);
		return -1;
	}
	jv_free(v);

	/* Settings that change what the adapter computes: off, or refused. */
	static const char *const must_be_false[][2] = {
		{"use_dora", "DoRA"},
		{"lora_bias", "a bias on lora_B"},
		{"use_qalora", "QALoRA"},
	};
	for (size_t i = 0; i < sizeof must_be_false / sizeof must_be_false[0]; i++) {
		v = field(root, must_be_false[i][0]);
		ok = jv_get_kind(v) == JV_KIND_NULL || jv_get_kind(v) == JV_KIND_FALSE;
		if (!ok) {
			err_set(err, "%s: key \"%s\": %s is not supported (%s)", file, must_be_false[i][0],
				shown(v, buf, sizeof buf), must_be_false[i][1]);
			jv_free(v);
			return -1;
		}
		jv_free(v);
	}
	static const char *const must_be_empty[][2] = {
		{"rank_pattern", "a rank per module"},
		{"alpha_pattern", "an alpha per module"},
		{"modules_to_save", "fully trained modules beside the adapter"},
		{"layers_to_transform", "adapting some layers only"},
		{"layers_pattern", "adapting some layers only"},
		{"layer_replication", "replicated layers"},
		{"target_parameters", "LoRA on parameters"},
		{"trainable_token_indices", "trained token embeddings"},
		{"alora_invocation_tokens", "activated LoRA"},
		{"use_bdlora", "a LoRA variant"},
		{"velora_config", "a LoRA variant"},
		{"monteclora_config", "a LoRA variant"},
		{"arrow_config", "a LoRA variant"},
		{"kasa_config", "a LoRA variant"},
		{"megatron_config", "Megatron layers"},
	};
	for (size_t i = 0; i < sizeof must_be_empty / sizeof must_be_empty[0]; i++) {
		v = field(root, must_be_empty[i][0]);
		ok = is_empty(v);
		if (!ok) {
			err_set(err, "%s: key \"%s\": %s is not supported (%s)", file, must_be_empty[i][0],
				shown(v, buf, sizeof buf), must_be_empty[i][1]);
			jv_free(v);
			return -1;
		}
		jv_free(v);
	}
	v = field(root, "init_lora_weights");
	ok = jv_get_kind(v) == JV_KIND_NULL || jv_get_kind(v) == JV_KIND_TRUE || jv_get_kind(v) == JV_KIND_FALSE ||
	     (jv_get_kind(v) == JV_KIND_STRING && !strcmp(jv_string_value(v), "gaussian"));
	if (!ok) {
		err_set(err, "%s: key \"init_lora_weights\": %s is not supported (an initialization that changes the "
			     "base weights or the layer; convert the adapter to a plain one first)",
			file, shown(v, buf, sizeof buf));
		jv_free(v);
		return -1;
	}
	jv_free(v);

	v = field(root, "target_modules");
	if (jv_get_kind(v) == JV_KIND_ARRAY) {
		int n = jv_array_length(jv_copy(v));
		for (int i = 0; i < n; i++) {
			jv e = jv_array_get(jv_copy(v), i);
			int str = jv_get_kind(e) == JV_KIND_STRING;
			jv_free(e);
			if (!str) {
				err_set(err, "%s: key \"target_modules\": entry %d is not a string", file, i);
				jv_free(v);
				return -1;
			}
		}
	} else if (jv_get_kind(v) != JV_KIND_STRING) {
		err_set(err, "%s: key \"target_modules\": %s, expected a list of module names or a regular expression",
			file, shown(v, buf, sizeof buf));
		jv_free(v);
		return -1;
	}
	c->targets = v;

	v = field(root, "exclude_modules");
	ok = jv_get_kind(v) == JV_KIND_NULL || jv_get_kind(v) == JV_KIND_STRING;
	if (jv_get_kind(v) == JV_KIND_ARRAY) {
		ok = 1;
		int n = jv_array_length(jv_copy(v));
		for (int i = 0; i < n; i++) {
			jv e = jv_array_get(jv_copy(v), i);
			ok &= jv_get_kind(e) == JV_KIND_STRING;
			jv_free(e);
		}
	}
	if (!ok) {
		err_set(err, "%s: key \"exclude_modules\": %s, expected null, a list of module names or a regular "
			     "expression",
			file, shown(v, buf, sizeof buf));
		jv_free(v);
		return -1;
	}
	c->exclude = v;

	v = field(root, "base_model_name_or_path");
	c->base_model[0] = 0;
	if (jv_get_kind(v) == JV_KIND_STRING)
		snprintf(c->base_model, sizeof c->base_model, "%s", jv_string_value(v));
	jv_free(v);
	return 0;
}

/* Parses a tensor key: layout, layer, target, B or A. 0, or -1 if it is
 * not a LoRA key of ours. */
static int parse_key(const char *name, enum layout *layout, long *layer, int *target, int *is_b)
{
	for (int k = 0; k < LAYOUT_N; k++) {
		size_t n = strlen(key_prefix[k]);
		if (strncmp(name, key_prefix[k], n))
			continue;
		const char *p = name + n;
		if (*p < '0' || *p > '9' || (*p == '0' && p[1] >= '0' && p[1] <= '9'))
			return -1;
		char *end;
		errno = 0;
		long l = strtol(p, &end, 10);
		if (errno || *end != '.')
			return -1;
		p = end + 1;
		for (int t = 0; t < LORA_N_TARGETS; t++) {
			const char *m = lora_target_module(t);
			size_t mn = strlen(m);
			if (strncmp(p, m, mn))
				continue;
			const char *rest = p + mn;
			if (strcmp(rest, ".lora_A.weight") && strcmp(rest, ".lora_B.weight"))
				return -1;
			*layout = (enum layout)k, *layer = l, *target = t, *is_b = rest[6] == 'B';
			return 0;
		}
		return -1;
	}
	return -1;
}

/* PEFT's test of a module name against target_modules or exclude_modules
 * (peft/tuners/tuners_utils.py, check_target_module_exists): a string is a
 * regular expression the whole name must match; a list entry matches the
 * name itself or a name ending in "." + entry. */
struct matcher {
	jv spec;          /* borrowed: a string or an array of strings */
	pcre2_code *re;   /* for a string */
	pcre2_match_data *md;
};

static int matcher_init(struct matcher *m, jv spec, const char *key, const char *file, struct err *err)
{
	m->spec = spec, m->re = NULL, m->md = NULL;
	if (jv_get_kind(spec) != JV_KIND_STRING)
		return 0;
	int ec;
	PCRE2_SIZE off;
	m->re = pcre2_compile((PCRE2_SPTR)jv_string_value(spec), PCRE2_ZERO_TERMINATED,
			      PCRE2_ANCHORED | PCRE2_ENDANCHORED | PCRE2_UTF, &ec, &off, NULL);
	if (!m->re) {
		PCRE2_UCHAR why[160];
		pcre2_get_error_message(ec, why, sizeof why);
		return err_set(err, "%s: key \"%s\": not a regular expression lorapipe can read: %s at offset %zu", file,
			       key, (const char *)why, (size_t)off);
	}
	if (!(m->md = pcre2_match_data_create_from_pattern(m->re, NULL))) {
		pcre2_code_free(m->re);
		return err_sys(err, "%s:", file);
	}
	return 0;
}

static void matcher_free(struct matcher *m)
{
	pcre2_match_data_free(m->md);
	pcre2_code_free(m->re);
}

/* Whether name matches; *entry (list form) receives the index of the entry
 * that matched, -1 otherwise. */
static int matcher_match(const struct matcher *m, const char *name, int *entry)
{
	size_t n = strlen(name);
	*entry = -1;
	if (m->re)
		return pcre2_match(m->re, (PCRE2_SPTR)name, n, 0, 0, m->md, NULL) >= 0;
	if (jv_get_kind(m->spec) != JV_KIND_ARRAY)
		return 0;
	int count = jv_array_length(jv_copy(m->spec));
	for (int i = 0; i < count; i++) {
		jv e = jv_array_get(jv_copy(m->spec), i);
		const char *s = jv_string_value(e);
		size_t sn = strlen(s);
		int hit = !strcmp(name, s) || (n > sn && name[n - sn - 1] == '.' && !strcmp(name + n - sn, s));
		jv_free(e);
		if (hit) {
			*entry = i;
			return 1;
		}
	}
	return 0;
}

/* Which (layer, target) modules PEFT would adapt under target_modules and
 * exclude_modules. A list entry of target_modules that names none of them
 * would adapt something else of the model (a vision tower, lm_head): refused. */
static int expected_modules(jv targets, jv exclude, enum layout layout, int n_layers, uint8_t (*want)[LORA_N_TARGETS],
			    const char *file, struct err *err)
{
	struct matcher tm, ex;
	if (matcher_init(&tm, targets, "target_modules", file, err) < 0)
		return -1;
	if (matcher_init(&ex, exclude, "exclude_modules", file, err) < 0) {
		matcher_free(&tm);
		return -1;
	}
	int n_entries = jv_get_kind(targets) == JV_KIND_ARRAY ? jv_array_length(jv_copy(targets)) : 0;
	uint8_t *used = calloc((size_t)n_entries + 1, 1);
	int rc = used ? 0 : err_sys(err, "%s:", file);
	char mod[256];
	for (int l = 0; rc == 0 && l < n_layers; l++)
		for (int t = 0; t < LORA_N_TARGETS; t++) {
			snprintf(mod, sizeof mod, "%s%d.%s", module_prefix[layout], l, lora_target_module(t));
			int entry, skip;
			want[l][t] = matcher_match(&tm, mod, &entry) && !matcher_match(&ex, mod, &skip);
			if (entry >= 0)
				used[entry] = 1;
		}
	for (int i = 0; rc == 0 && i < n_entries; i++)
		if (!used[i]) {
			jv e = jv_array_get(jv_copy(targets), i);
			rc = err_set(err, "%s: key \"target_modules\": '%s' names none of the projections lorapipe adapts "
					  "(q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj of the decoder layers)",
				     file, jv_string_value(e));
			jv_free(e);
		}
	free(used);
	matcher_free(&tm);
	matcher_free(&ex);
	return rc;
}

struct lora *lora_load_peft(const char *dir, const struct model_config *mc, struct peft_info *info,
			    struct err *err)
{
	char cfile[PATH_CAP], wfile[PATH_CAP];
	if (path_join(cfile, sizeof cfile, dir, CONFIG_NAME) < 0 || path_join(wfile, sizeof wfile, dir, WEIGHTS_NAME) < 0)
		return err_set(err, "%s: name too long", dir), NULL;
	struct stat sb;
	if (stat(dir, &sb) < 0 && (errno == ENOENT || errno == ENOTDIR)) /* a wrong path: bad input */
		return err_set(err, "%s: no such adapter folder", dir), NULL;
	if (stat(dir, &sb) < 0)
		return err_sys(err, "%s:", dir), NULL;
	if (!S_ISDIR(sb.st_mode))
		return err_set(err, "%s: not a folder (an adapter is a folder with " CONFIG_NAME " and " WEIGHTS_NAME ")",
			       dir),
		       NULL;
	jv root;
	if (jsonl_load(cfile, 1 << 20, &root, err) < 0)
		return NULL;
	struct peft_cfg c = {0};
	c.targets = jv_null();
	c.exclude = jv_null();
	struct safetensors *st = NULL;
	struct lora *lo = NULL;
	uint8_t(*found)[LORA_N_TARGETS][2] = NULL;
	uint8_t(*want)[LORA_N_TARGETS] = NULL;
	if (check_config(root, cfile, &c, err) < 0)
		goto fail;
	if (stat(wfile, &sb) < 0) {
		const int missing = errno == ENOENT;
		char bin[PATH_CAP];
		path_join(bin, sizeof bin, dir, "adapter_model.bin");
		if (access(bin, F_OK) == 0)
			err_set(err, "%s: missing; adapter_model.bin (a pickle) is not read: save it as safetensors", wfile);
		else if (missing)
			err_set(err, "%s: missing: the adapter folder has no weights", wfile);
		else
			err_sys(err, "%s:", wfile);
		goto fail;
	}
	if (!(st = st_open(wfile, err)))
		goto fail;
	const int L = mc->n_layers;
	found = calloc((size_t)L, sizeof *found);
	want = calloc((size_t)L, sizeof *want);
	if (!found || !want) {
		err_sys(err, "%s:", wfile);
		goto fail;
	}
	int layout = -1;
	for (int64_t i = 0; i < st_n_tensors(st); i++) {
		const struct st_tensor *t = st_tensor(st, i);
		enum layout ly;
		long l;
		int tg, b;
		if (parse_key(t->name, &ly, &l, &tg, &b) < 0) {
			err_set(err, "%s: unexpected key '%s' (not a lora_A or lora_B weight of q/k/v/o/gate/up/down_proj "
				     "in the decoder layers)",
				wfile, t->name);
			goto fail;
		}
		if (l >= L) {
			err_set(err, "%s: unexpected key '%s': the model has %d layers", wfile, t->name, L);
			goto fail;
		}
		if (layout >= 0 && (int)ly != layout) {
			err_set(err, "%s: unexpected key '%s': its prefix differs from '%s' of the others", wfile, t->name,
				key_prefix[layout]);
			goto fail;
		}
		layout = (int)ly;
		found[l][tg][b] = 1;
	}
	if (layout < 0) {
		err_set(err, "%s: no LoRA tensors", wfile);
		goto fail;
	}
	if (expected_modules(c.targets, c.exclude, (enum layout)layout, L, want, cfile, err) < 0)
		goto fail;
	unsigned targets = 0;
	char key[256];
	for (int l = 0; l < L; l++)
		for (int t = 0; t < LORA_N_TARGETS; t++) {
			int have = found[l][t][0] || found[l][t][1];
			if (have && !want[l][t]) {
				snprintf(key, sizeof key, "%s%d.%s.lora_%c.weight", key_prefix[layout], l, lora_target_module(t),
					 found[l][t][0] ? 'A' : 'B');
				err_set(err, "%s: unexpected key '%s': target_modules in " CONFIG_NAME " does not adapt %s%d.%s",
					wfile, key, module_prefix[layout], l, lora_target_module(t));
				goto fail;
			}
			for (int b = 0; b < 2; b++)
				if (want[l][t] && !found[l][t][b]) {
					snprintf(key, sizeof key, "%s%d.%s.lora_%c.weight", key_prefix[layout], l,
						 lora_target_module(t), b ? 'B' : 'A');
					err_set(err, "%s: missing key '%s' (target_modules adapts %s%d.%s)", wfile, key,
						module_prefix[layout], l, lora_target_module(t));
					goto fail;
				}
			if (want[l][t])
				targets |= 1u << t;
		}
	for (int l = 0; l < L; l++)
		for (int t = 0; t < LORA_N_TARGETS; t++)
			if ((targets & (1u << t)) && !want[l][t]) {
				err_set(err, "%s: %s is adapted in some layers but not in layer %d; lorapipe adapts the same "
					     "projections in every layer",
					dir, lora_target_name(t), l);
				goto fail;
			}

	struct lora_config lc = {targets, c.rank, c.alpha, c.dropout, c.rslora};
	if (!(lo = lora_new(mc, &lc, err))) {
		err_wrap(err, "%s", cfile);
		goto fail;
	}
	for (int l = 0; l < L; l++)
		for (int t = 0; t < LORA_N_TARGETS; t++) {
			struct lora_pair *pr = &lo->pairs[l][t];
			if (!pr->a)
				continue;
			for (int b = 0; b < 2; b++) {
				snprintf(key, sizeof key, "%s%d.%s.lora_%c.weight", key_prefix[layout], l, lora_target_module(t),
					 b ? 'B' : 'A');
				const struct st_tensor *tn = st_find(st, key);
				int64_t rows = b ? pr->out : c.rank, cols = b ? c.rank : pr->in;
				if (tn->n_dims != 2 || tn->shape[0] != rows || tn->shape[1] != cols) {
					char got[64] = "[";
					for (int d = 0; d < tn->n_dims && strlen(got) < 40; d++)
						snprintf(got + strlen(got), sizeof got - strlen(got), "%s%" PRId64, d ? ", " : "",
							 tn->shape[d]);
					strcat(got, "]");
					err_set(err,
						"%s: tensor '%s': shape %s, expected [%" PRId64 ", %" PRId64 "] (r %d, %s of %d × %d)",
						wfile, key, got, rows, cols, c.rank, lora_target_name(t), pr->out, pr->in);
					goto fail;
				}
				float *dst = b ? pr->b : pr->a;
				if (st_read_f32(tn, 0, tn->n_elems, dst, err) < 0) {
					err_wrap(err, "%s", wfile);
					goto fail;
				}
				for (int64_t k = 0; k < tn->n_elems; k++)
					if (!isfinite(dst[k])) {
						err_set(err, "%s: tensor '%s': value %" PRId64 " is %g", wfile, key, k, (double)dst[k]);
						goto fail;
					}
				st_release(st, tn);
			}
		}
	if (info) {
		info->multimodal = layout != LAYOUT_TEXT;
		snprintf(info->base_model, sizeof info->base_model, "%s", c.base_model);
	}
	free(found);
	free(want);
	st_close(st);
	jv_free(c.targets);
	jv_free(c.exclude);
	jv_free(root);
	return lo;
fail:
	lora_free(lo);
	free(found);
	free(want);
	st_close(st);
	jv_free(c.targets);
	jv_free(c.exclude);
	jv_free(root);
	return NULL;
}

int peft_model_multimodal(const char *path, int *multimodal, struct err *err)
{
	char cfg[PATH_CAP];
	struct stat sb;
	*multimodal = 0;
	if (stat(path, &sb) < 0)
		return err_sys(err, "%s:", path);
	size_t n = strlen(path);
	if (S_ISDIR(sb.st_mode)) {
		path_join(cfg, sizeof cfg, path, "config.json");
	} else if (n > 12 && !strcmp(path + n - 12, ".safetensors")) {
		const char *slash = strrchr(path, '/');
		if (slash)
			snprintf(cfg, sizeof cfg, "%.*s/config.json", (int)(slash - path), path);
		else
			snprintf(cfg, sizeof cfg, "config.json");
	} else {
		return 0; /* GGUF: the text model only */
	}
	if (access(cfg, F_OK) < 0)
		return 0;
	jv root;
	if (jsonl_load(cfg, 1 << 24, &root, err) < 0)
		return -1;
	if (jv_get_kind(root) == JV_KIND_OBJECT) {
		jv mt = field(root, "model_type");
		*multimodal = jv_get_kind(mt) == JV_KIND_STRING && !strcmp(jv_string_value(mt), "gemma3");
		jv_free(mt);
	}
	jv_free(root);
	return 0;
}
