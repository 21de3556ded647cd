/* fit: a whole training run (see fit.h). The order of fit_run is: every
 * check that can blame the input (settings, model config, tokenizer, data,
 * the output folder, a checkpoint to resume) before anything is written,
 * then the memory estimate, then loading, then the loop. */
#include "fit.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapter.h"
#include "backend.h"
#include "jsonl.h"
#include "lora.h"
#include "model.h"
#include "outfile.h"
#include "progress.h"
#include "rng.h"
#include "tokenizer.h"
#include "tokstream.h"
#include "train.h"

#define FIT_STATE_FORMAT "lorapipe-checkpoint"
#define FIT_STATE_VERSION 1
#define FIT_KEEP_CHECKPOINTS 2

void fit_settings_default(struct fit_settings *s)
{
	memset(s, 0, sizeof *s);
	s->epochs = 1;
	s->lr = 2e-4;
	s->scheduler = LR_COSINE;
	s->warmup_steps = -1;
	s->min_lr_ratio = 0.1;
	s->adam = (struct adamw_hparams){0.9, 0.999, 1e-8, 0};
	s->max_grad_norm = 1.0;
	s->rank = 16;
	s->alpha = 32;
	s->dropout = 0.05;
	s->targets = (1u << LORA_N_TARGETS) - 1;
	s->batch = s->grad_accum = 1;
	s->packing = s->shuffle = 1;
	s->overflow = FIT_OVERFLOW_ERROR;
	s->quant = WFMT_NF4;
	s->logging_steps = 1;
	s->checkpointing = FIT_CKPT_AUTO;
	s->seed = 42;
	s->device = "cpu";
	s->progress = -1;
}

/* ---- small helpers ---- */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const unsigned char *c = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ c[i]) * 0x100000001b3ull;
	return h;
}
#define FNV_START 0xcbf29ce484222325ull

static char *path_join(const char *dir, const char *name)
{
	size_t n = strlen(dir) + strlen(name) + 2;
	char *p = malloc(n);
	if (p)
		snprintf(p, n, "%s/%s", dir, name);
	return p;
}

static int is_dir(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int ends_with(const char *s, const char *tail)
{
	size_t a = strlen(s), b = strlen(tail);
	return a >= b && !strcmp(s + a - b, tail);
}

/* Resident memory now, in bytes (0 when unknown). */
static size_t rss_now(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	unsigned long size = 0, res = 0;
	if (!f)
		return 0;
	if (fscanf(f, "%lu %lu", &size, &res) != 2)
		res = 0;
	fclose(f);
	return (size_t)res * (size_t)sysconf(_SC_PAGESIZE);
}

static size_t rss_peak(void)
{
	struct rusage ru;
	return getrusage(RUSAGE_SELF, &ru) == 0 ? (size_t)ru.ru_maxrss * 1024 : 0;
}

/* Memory the run may take: MemAvailable, lowered by a cgroup (v2) limit. */
static size_t mem_available(void)
{
	size_t avail = 0;
	FILE *f = fopen("/proc/meminfo", "r");
	if (f) {
		char line[256];
		unsigned long kb;
		while (fgets(line, sizeof line, f))
			if (sscanf(line, "MemAvailable: %lu kB", &kb) == 1)
				avail = (size_t)kb * 1024;
		fclose(f);
	}
	unsigned long long max = 0, cur = 0;
	f = fopen("/sys/fs/cgroup/memory.max", "r");
	if (f) {
		if (fscanf(f, "%llu", &max) != 1)
			max = 0; /* "max": no limit */
		fclose(f);
	}
	f = fopen("/sys/fs/cgroup/memory.current", "r");
	if (f) {
		if (fscanf(f, "%llu", &cur) != 1)
			cur = 0;
		fclose(f);
	}
	if (max > 0 && max > cur && (avail == 0 || max - cur < avail))
		avail = (size_t)(max - cur);
	return avail;
}

/* Removes a folder of plain files (a checkpoint, best/). */
static int remove_flat_dir(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -1;
	struct dirent *e;
	int rc = 0;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		char *p = path_join(dir, e->d_name);
		if (!p || unlink(p) < 0)
			rc = -1;
		free(p);
	}
	closedir(d);
	return rmdir(dir) < 0 ? -1 : rc;
}

static void fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY);
	if (fd >= 0) {
		fsync(fd);
		close(fd);
	}
}

static void hex64(char out[17], uint64_t v) { snprintf(out, 17, "%016llx", (unsigned long long)v); }

/* ---- data ---- */

struct example {
	uint64_t off;    /* into tok / lab */
	uint32_t n;
	uint64_t record; /* in its file, from 1 */
};

struct dataset {
	const char *path;
	int32_t *tok, *lab;
	size_t n_tok, cap_tok;
	struct example *ex;
	size_t n_ex, cap_ex;
	uint64_t truncated, dropped, records;
	uint32_t vocab;
	uint64_t tokenizer_fp;
};

static void dataset_free(struct dataset *d)
{
	free(d->tok);
	free(d->lab);
	free(d->ex);
	memset(d, 0, sizeof *d);
}

struct tok_check {
	int known;        /* the model has a tokenizer */
	uint64_t fp;
	const char *where; /* for messages */
};

/* Reads every record of path, checking it against the model (vocabulary,
 * tokenizer) and seq_len; *h accumulates the data fingerprint. */
static int dataset_load(struct dataset *d, const char *path, const struct fit_settings *s, int seq_len,
			const struct model_config *mc, const struct tok_check *tc, uint64_t *h, struct err *err)
{
	memset(d, 0, sizeof *d);
	d->path = path;
	struct tokstream_reader *r = tokstream_open(path, err);
	if (!r)
		return -1;
	const struct tokstream_info *in = tokstream_info(r);
	d->vocab = in->vocab_size;
	d->tokenizer_fp = in->tokenizer_fp;
	if (tc->known && in->tokenizer_fp != tc->fp) {
		err_set(err, "%s: header tokenizer_fp %016llx differs from the model's tokenizer (%s: %016llx): "
			     "the stream was made with another tokenizer",
			path, (unsigned long long)in->tokenizer_fp, tc->where, (unsigned long long)tc->fp);
		goto fail;
	}
	if (in->vocab_size > (uint32_t)mc->vocab) {
		err_set(err, "%s: header vocab_size %u is larger than the model's vocabulary (%d): ids and labels "
			     "out of the vocabulary",
			path, in->vocab_size, mc->vocab);
		goto fail;
	}
	*h = fnv(*h, &in->vocab_size, sizeof in->vocab_size);
	*h = fnv(*h, &in->tokenizer_fp, sizeof in->tokenizer_fp);
	struct tokstream_record rec;
	int rc;
	while ((rc = tokstream_next(r, &rec, err)) > 0) {
		d->records++;
		*h = fnv(*h, &rec.n, sizeof rec.n);
		*h = fnv(*h, rec.ids, rec.n * sizeof *rec.ids);
		*h = fnv(*h, rec.labels, rec.n * sizeof *rec.labels);
		for (uint32_t i = 0; i < rec.n; i++)
			if (rec.ids[i] >= (uint32_t)mc->vocab || rec.labels[i] >= mc->vocab) {
				err_set(err, "%s: record %llu: token %u (position %u) is outside the model's "
					     "vocabulary of %d",
					path, (unsigned long long)rec.index + 1, rec.ids[i], i, mc->vocab);
				goto fail;
			}
		uint32_t n = rec.n;
		if (n > (uint32_t)seq_len) {
			if (s->overflow == FIT_OVERFLOW_ERROR) {
				err_set(err, "%s: record %llu: %u tokens, more than --seq-len %d "
					     "(--overflow truncate or drop to go on)",
					path, (unsigned long long)rec.index + 1, n, seq_len);
				goto fail;
			}
			if (s->overflow == FIT_OVERFLOW_DROP) {
				d->dropped++;
				continue;
			}
			n = (uint32_t)seq_len;
			d->truncated++;
		}
		if (d->n_tok + n > d->cap_tok) {
			size_t cap = d->cap_tok ? d->cap_tok : 1 << 16;
			while (cap < d->n_tok + n)
				cap *= 2;
			int32_t *t = realloc(d->tok, cap * sizeof *t);
			if (t)
				d->tok = t;
			int32_t *l = t ? realloc(d->lab, cap * sizeof *l) : NULL;
			if (!t || !l) {
				err_sys(err, "%s: out of memory reading the records", path);
				goto fail;
			}
			d->lab = l;
			d->cap_tok = cap;
		}
		if (d->n_ex == d->cap_ex) {
			size_t cap = d->cap_ex ? d->cap_ex * 2 : 1024;
			struct example *e = realloc(d->ex, cap * sizeof *e);
			if (!e) {
				err_sys(err, "%s: out of memory reading the records", path);
				goto fail;
			}
			d->ex = e;
			d->cap_ex = cap;
		}
		for (uint32_t i = 0; i < n; i++) {
			d->tok[d->n_tok + i] = (int32_t)rec.ids[i];
			d->lab[d->n_tok + i] = rec.labels[i];
		}
		d->ex[d->n_ex++] = (struct example){d->n_tok, n, rec.index + 1};
		d->n_tok += n;
	}
	if (rc < 0)
		goto fail;
	tokstream_close(r);
	if (d->records == 0)
		return err_set(err, "%s: the token stream holds no records", path);
	if (d->n_ex == 0)
		return err_set(err, "%s: all %llu records are longer than --seq-len %d and were dropped", path,
			       (unsigned long long)d->records, seq_len);
	return 0;
fail:
	tokstream_close(r);
	return -1;
}

/* A list of examples of one dataset. */
struct exset {
	const struct dataset *d;
	uint32_t *idx;
	size_t n;
};

/* ---- the model's identity ---- */

/* Hashes up to 1 MiB of f at off. */
static uint64_t fnv_file_part(uint64_t h, FILE *f, long off)
{
	static unsigned char buf[1 << 16];
	if (fseek(f, off, SEEK_SET) != 0)
		return h;
	size_t left = 1 << 20, got;
	while (left && (got = fread(buf, 1, left < sizeof buf ? left : sizeof buf, f)) > 0) {
		h = fnv(h, buf, got);
		left -= got;
	}
	return h;
}

static uint64_t fnv_file_sampled(uint64_t h, const char *path, const char *name)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return h;
	struct stat st;
	long size = fstat(fileno(f), &st) == 0 ? (long)st.st_size : 0;
	h = fnv(h, name, strlen(name) + 1);
	h = fnv(h, &size, sizeof size);
	h = fnv_file_part(h, f, 0);
	if (size > (1 << 20))
		h = fnv_file_part(h, f, size - (1 << 20));
	fclose(f);
	return h;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* config.json and every weight file of the folder (or the file and the
 * config.json beside it). */
static uint64_t model_fingerprint(const char *path)
{
	uint64_t h = FNV_START;
	char *dir = NULL;
	if (is_dir(path)) {
		dir = strdup(path);
	} else {
		h = fnv_file_sampled(h, path, "model");
		const char *slash = strrchr(path, '/');
		dir = slash ? strndup(path, (size_t)(slash - path)) : strdup(".");
		char *cfg = dir ? path_join(dir, "config.json") : NULL;
		if (cfg)
			h = fnv_file_sampled(h, cfg, "config.json");
		free(cfg);
		free(dir);
		return h;
	}
	if (!dir)
		return h;
	DIR *d = opendir(dir);
	char *names[4096];
	int n = 0;
	struct dirent *e;
	while (d && (e = readdir(d)) && n < 4096)
		if (!strcmp(e->d_name, "config.json") || ends_with(e->d_name, ".safetensors") ||
		    ends_with(e->d_name, ".gguf"))
			if ((names[n] = strdup(e->d_name)))
				n++;
	if (d)
		closedir(d);
	qsort(names, (size_t)n, sizeof *names, cmp_str);
	for (int i = 0; i < n; i++) {
		char *p = path_join(dir, names[i]);
		if (p)
			h = fnv_file_sampled(h, p, names[i]);
		free(p);
		free(names[i]);
	}
	free(dir);
	return h;
}

/* Whether the model carries a tokenizer: a folder with tokenizer.json or a
 * .gguf, a .gguf file, or a .safetensors file with tokenizer.json beside it. */
static int model_has_tokenizer(const char *path)
{
	if (is_dir(path)) {
		char *p = path_join(path, "tokenizer.json");
		int yes = p && is_file(p);
		free(p);
		if (yes)
			return 1;
		DIR *d = opendir(path);
		struct dirent *e;
		while (d && (e = readdir(d)))
			if (ends_with(e->d_name, ".gguf"))
				yes = 1;
		if (d)
			closedir(d);
		return yes;
	}
	if (ends_with(path, ".gguf"))
		return 1;
	const char *slash = strrchr(path, '/');
	char *dir = slash ? strndup(path, (size_t)(slash - path)) : strdup(".");
	char *p = dir ? path_join(dir, "tokenizer.json") : NULL;
	int yes = p && is_file(p);
	free(p);
	free(dir);
	return yes;
}

/* ---- settings as JSON (training_args.json, state.json) ---- */

static const char *overflow_name(enum fit_overflow o)
{
	return o == FIT_OVERFLOW_TRUNCATE ? "truncate" : o == FIT_OVERFLOW_DROP ? "drop" : "error";
}

static const char *scheduler_name(enum lr_kind k)
{
	return k == LR_CONSTANT ? "constant" : lr_kind_name(k);
}

static const char *quant_name(enum wfmt q) { return q == WFMT_F32 ? "none" : wfmt_name(q); }

static jv targets_json(unsigned targets)
{
	jv a = jv_array();
	for (int t = 0; t < LORA_N_TARGETS; t++)
		if (targets & (1u << t))
			a = jv_array_append(a, jv_string(lora_target_name((enum lora_target)t)));
	return a;
}

/* What the run resolved, beyond the settings. */
struct resolved {
	int seq_len;
	int64_t warmup, total_steps;
	int ckpt; /* gradient checkpointing on */
	struct lora_config lc;
};

/* The settings that change the trained adapter, under their option names. */
static jv settings_core(const struct fit_settings *s, const struct resolved *rv)
{
	jv o = jv_object();
#define SET(k, v) o = jv_object_set(o, jv_string(k), v)
	SET("epochs", jv_number((double)s->epochs));
	SET("max-steps", jv_number((double)s->max_steps));
	SET("lr", jv_number(s->lr));
	SET("scheduler", jv_string(scheduler_name(s->scheduler)));
	SET("warmup-steps", jv_number((double)rv->warmup));
	SET("warmup-ratio", jv_number(s->warmup_ratio));
	SET("min-lr-ratio", jv_number(s->min_lr_ratio));
	SET("weight-decay", jv_number(s->adam.weight_decay));
	SET("max-grad-norm", jv_number(s->max_grad_norm));
	SET("adam-beta1", jv_number(s->adam.beta1));
	SET("adam-beta2", jv_number(s->adam.beta2));
	SET("adam-eps", jv_number(s->adam.eps));
	SET("rank", jv_number(rv->lc.rank));
	SET("alpha", jv_number(rv->lc.alpha));
	SET("dropout", jv_number(s->dropout));
	SET("rslora", jv_bool(rv->lc.rslora));
	SET("target", targets_json(rv->lc.targets));
	SET("init-adapter", s->init_adapter ? jv_string(s->init_adapter) : jv_null());
	SET("seq-len", jv_number(rv->seq_len));
	SET("batch", jv_number(s->batch));
	SET("grad-accum", jv_number(s->grad_accum));
	SET("no-packing", jv_bool(!s->packing));
	SET("no-shuffle", jv_bool(!s->shuffle));
	SET("overflow", jv_string(overflow_name(s->overflow)));
	SET("quant", jv_string(quant_name(s->quant)));
	SET("val-split", jv_number(s->val_split));
	SET("seed", jv_number((double)s->seed));
	SET("device", jv_string(s->device));
#undef SET
	return o;
}

static jv settings_all(const struct fit_settings *s, const struct resolved *rv)
{
	jv o = jv_object();
#define SET(k, v) o = jv_object_set(o, jv_string(k), v)
	SET("model", jv_string(s->model));
	SET("data", jv_string(s->data));
	SET("out", jv_string(s->out));
	SET("val", s->val_file ? jv_string(s->val_file) : jv_null());
	jv core = settings_core(s, rv);
	jv_object_foreach(core, k, v) o = jv_object_set(o, k, v);
	jv_free(core);
	SET("eval-steps", jv_number((double)s->eval_steps));
	SET("save-steps", jv_number((double)s->save_steps));
	SET("logging-steps", jv_number((double)s->logging_steps));
	SET("checkpointing", jv_string(rv->ckpt ? "on" : "off"));
	SET("threads", jv_number(s->threads));
	SET("config", s->config_file ? jv_string(s->config_file) : jv_null());
#undef SET
	return o;
}

static uint64_t jv_fingerprint(jv v)
{
	jv d = jv_dump_string(v, JV_PRINT_SORTED);
	uint64_t h = fnv(FNV_START, jv_string_value(d), (size_t)jv_string_length_bytes(jv_copy(d)));
	jv_free(d);
	return h;
}

/* ---- memory estimate ---- */

struct mem_estimate {
	size_t weights, adapter, activations, data, total;
};

static double wfmt_bytes(enum wfmt f)
{
	/* nf4: 4 bits, an 8-bit absmax per 64, an fp32 per 256 absmax;
	 * int8: a byte and a scale per row (rows are long: ~1) */
	return f == WFMT_NF4 ? 0.5 + 1.0 / 64 + 4.0 / (64 * 256) : f == WFMT_INT8 ? 1.01 : f == WFMT_BF16 ? 2 : 4;
}

/* Activations train.c keeps and its scratch, per the layout in train.c. */
static size_t activation_bytes(const struct model_config *c, const struct lora_config *lc, int n, int ckpt)
{
	const double q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
	const double dim = c->dim, ffn = c->ffn;
	/* x, h1, x_mid, h2; q, att; k, v; gate, up, act·up; x·Aᵀ of all seven */
	double layer = 4 * dim + 2 * q + 2 * kv + 3 * ffn + (double)lc->rank * LORA_N_TARGETS;
	if (c->qk_norm)
		layer += q + kv;
	if (c->sandwich_norm)
		layer += 2 * dim;
	double widest = dim > q ? dim : q;
	if (ffn > widest)
		widest = ffn;
	double kept = ckpt ? dim * c->n_layers + layer : layer * c->n_layers;
	double scratch = 6 * dim + 3 * q + 3 * kv + 2 * ffn + 2 * widest + lc->rank + 8;
	int rows = (1 << 22) / (c->vocab > 0 ? c->vocab : 1);
	rows = rows < 8 ? 8 : rows > 256 ? 256 : rows;
	if (rows > n)
		rows = n;
	double head = 2.0 * rows * c->vocab + 2.0 * rows * dim;
	return (size_t)(4 * ((kept + scratch) * n + head));
}

static void estimate(struct mem_estimate *e, const struct model_config *c, const struct lora_config *lc,
		     enum wfmt quant, size_t n_lora, int seq_len, int ckpt, size_t data_tokens, size_t examples)
{
	const double q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
	double linear = (double)c->n_layers * (c->dim * (2 * q + 2 * kv) + 3.0 * c->dim * c->ffn);
	double embed = (double)c->vocab * c->dim * (c->tied_embeddings ? 1 : 2);
	e->weights = (size_t)(linear * wfmt_bytes(quant) + embed * (quant == WFMT_BF16 ? 2 : 4));
	e->adapter = n_lora * 4 * sizeof(float); /* params, grads, m, v */
	e->activations = activation_bytes(c, lc, seq_len, ckpt);
	e->data = data_tokens * 8 + examples * (sizeof(struct example) + 8);
	e->total = e->weights + e->adapter + e->activations + e->data + ((size_t)64 << 20);
}

/* ---- the plan of an epoch ---- */

struct plan {
	int64_t epoch;
	uint32_t *order;   /* n_train: indices into the training exset */
	size_t *row_first; /* rows: first position in order */
	uint32_t *row_len; /* examples in the row */
	size_t n_rows, cap_rows;
	int64_t n_windows;
};

static void epoch_order(uint32_t *p, size_t n, uint64_t seed, int64_t epoch, int shuffle)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint32_t)i;
	if (!shuffle || n < 2)
		return;
	uint64_t s = seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(epoch + 1));
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = (size_t)rng_below(&s, (uint64_t)i + 1);
		uint32_t t = p[i];
		p[i] = p[j];
		p[j] = t;
	}
}

static int plan_epoch(struct plan *pl, const struct exset *tr, const struct fit_settings *s, int seq_len,
		      int64_t epoch, struct err *err)
{
	pl->epoch = epoch;
	epoch_order(pl->order, tr->n, s->seed, epoch, s->shuffle);
	pl->n_rows = 0;
	size_t i = 0;
	while (i < tr->n) {
		size_t first = i, len = 0;
		do {
			len += tr->d->ex[tr->idx[pl->order[i]]].n;
			i++;
		} while (s->packing && i < tr->n && len + tr->d->ex[tr->idx[pl->order[i]]].n <= (size_t)seq_len);
		if (pl->n_rows == pl->cap_rows) {
			size_t cap = pl->cap_rows ? pl->cap_rows * 2 : 256;
			size_t *f = realloc(pl->row_first, cap * sizeof *f);
			if (f)
				pl->row_first = f;
			uint32_t *l = f ? realloc(pl->row_len, cap * sizeof *l) : NULL;
			if (!f || !l)
				return err_sys(err, "out of memory planning the rows");
			pl->row_len = l;
			pl->cap_rows = cap;
		}
		pl->row_first[pl->n_rows] = first;
		pl->row_len[pl->n_rows++] = (uint32_t)(i - first);
	}
	const size_t per = (size_t)s->batch * (size_t)s->grad_accum;
	pl->n_windows = (int64_t)((pl->n_rows + per - 1) / per);
	return 0;
}

/* ---- the run ---- */

struct run {
	const struct fit_settings *s;
	struct resolved rv;
	struct model_config mc;
	int mc_loaded;
	struct model *m;
	struct lora *lo;
	struct trainer *tr;
	struct adamw *opt;
	struct lr_schedule sched;
	size_t *seg, n_seg;
	struct dataset data, valdata;
	struct exset train, val;
	struct plan pl;
	int32_t *row_tok, *row_lab, *row_starts; /* seq_len each */
	uint64_t fp_model, fp_data, fp_settings;
	struct tok_check tc;
	char *model_name; /* base_model_name_or_path */
	int multimodal;
	/* the loop's state, all of it in a checkpoint */
	int64_t step, epoch, window;
	uint64_t rng;
	double best_val;
	int64_t best_step;
	int eval_pending;
	/* output */
	FILE *log;
	struct progress prog;
	FILE *con;
	int64_t resumed_from; /* -1: fresh */
	const char *test_signal;
};

static void say(struct run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(struct run *r, const char *fmt, ...)
{
	if (!r->con)
		return;
	if (r->prog.drawn)
		fputs("\r\033[K", r->con);
	va_list ap;
	va_start(ap, fmt);
	vfprintf(r->con, fmt, ap);
	va_end(ap);
	fflush(r->con);
}

/* ---- checks before anything is written ---- */

static int check_settings(const struct fit_settings *s, struct err *err)
{
	if (!s->model || !s->data || !s->out)
		return err_set(err, "--model, --data and --out are required");
	if (s->epochs < 1 && s->max_steps <= 0)
		return err_set(err, "--epochs %lld: at least 1", (long long)s->epochs);
	if (!(s->lr > 0))
		return err_set(err, "--lr %g: must be positive", s->lr);
	if (s->val_file && s->val_split > 0)
		return err_set(err, "--val and --val-split exclude each other");
	if (s->val_split < 0 || s->val_split >= 1)
		return err_set(err, "--val-split %g: expected a fraction in [0, 1)", s->val_split);
	if (s->warmup_steps >= 0 && s->warmup_ratio > 0)
		return err_set(err, "--warmup-steps and --warmup-ratio exclude each other");
	if (s->dropout < 0 || s->dropout >= 1)
		return err_set(err, "--dropout %g: expected a probability in [0, 1)", s->dropout);
	if (s->batch < 1 || s->grad_accum < 1)
		return err_set(err, "--batch and --grad-accum must be at least 1");
	if (strcmp(s->device, "cpu"))
		return err_set(err, "--device %s: this build has the cpu backend only", s->device);
	return 0;
}

/* The newest checkpoint-N folder of dir that has a state.json; -1 when none. */
static int64_t newest_checkpoint(const char *dir, int64_t *all, int *n_all)
{
	DIR *d = opendir(dir);
	int64_t best = -1;
	int n = 0;
	struct dirent *e;
	while (d && (e = readdir(d))) {
		char *end;
		if (strncmp(e->d_name, "checkpoint-", 11) || !e->d_name[11])
			continue;
		long long v = strtoll(e->d_name + 11, &end, 10);
		if (*end || v < 0)
			continue;
		if (all && n < 1024)
			all[n++] = v;
		char sub[64];
		snprintf(sub, sizeof sub, "checkpoint-%lld/state.json", v);
		char *p = path_join(dir, sub);
		if (p && is_file(p) && v > best)
			best = v;
		free(p);
	}
	if (d)
		closedir(d);
	if (n_all)
		*n_all = n;
	return best;
}

static int64_t jv_int(jv o, const char *key, int64_t def)
{
	jv v = jv_object_get(jv_copy(o), jv_string(key));
	int64_t r = jv_get_kind(v) == JV_KIND_NUMBER ? (int64_t)jv_number_value(v) : def;
	jv_free(v);
	return r;
}

static uint64_t jv_hex(jv o, const char *key, int *ok)
{
	jv v = jv_object_get(jv_copy(o), jv_string(key));
	uint64_t r = 0;
	char *end = NULL;
	if (jv_get_kind(v) == JV_KIND_STRING) {
		r = strtoull(jv_string_value(v), &end, 16);
		if (!*jv_string_value(v) || *end)
			*ok = 0;
	} else {
		*ok = 0;
	}
	jv_free(v);
	return r;
}

/* The first setting whose value differs between a and b, written to buf. */
static int settings_diff(jv a, jv b, char *buf, size_t size)
{
	int found = 0;
	jv_object_foreach(b, k, v) {
		jv old = jv_object_get(jv_copy(a), jv_copy(k));
		if (!found && !jv_equal(jv_copy(old), jv_copy(v))) {
			jv so = jv_dump_string(jv_copy(old), 0), sn = jv_dump_string(jv_copy(v), 0);
			snprintf(buf, size, "--%s: %s in the checkpoint, %s now", jv_string_value(k),
				 jv_is_valid(old) && jv_get_kind(old) != JV_KIND_NULL ? jv_string_value(so) : "absent",
				 jv_string_value(sn));
			jv_free(so), jv_free(sn);
			found = 1;
		}
		jv_free(old);
		jv_free(k);
		jv_free(v);
	}
	return found;
}

/* Reads checkpoint-N's state.json into r's loop state and checks it against
 * this run. */
static int state_read(struct run *r, const char *ckdir, jv core, struct err *err)
{
	char *path = path_join(ckdir, "state.json");
	jv st;
	if (!path)
		return err_sys(err, "out of memory");
	if (jsonl_load(path, 1 << 20, &st, err) < 0) {
		free(path);
		return -1;
	}
	int rc = -1, ok = 1;
	jv fmt = jv_object_get(jv_copy(st), jv_string("format"));
	if (jv_get_kind(fmt) != JV_KIND_STRING || strcmp(jv_string_value(fmt), FIT_STATE_FORMAT) ||
	    jv_int(st, "version", -1) != FIT_STATE_VERSION) {
		err_set(err, "%s: not a lorapipe checkpoint state of version %d", path, FIT_STATE_VERSION);
		jv_free(fmt);
		goto out;
	}
	jv_free(fmt);
	r->step = jv_int(st, "step", -1);
	r->epoch = jv_int(st, "epoch", -1);
	r->window = jv_int(st, "window", -1);
	r->best_step = jv_int(st, "best_step", -1);
	jv ep = jv_object_get(jv_copy(st), jv_string("eval_pending"));
	r->eval_pending = jv_get_kind(ep) == JV_KIND_TRUE;
	jv_free(ep);
	r->rng = jv_hex(st, "rng", &ok);
	jv fps = jv_object_get(jv_copy(st), jv_string("fingerprints"));
	uint64_t fs = jv_hex(fps, "settings", &ok), fm = jv_hex(fps, "model", &ok), fd = jv_hex(fps, "data", &ok);
	jv_free(fps);
	jv bv = jv_object_get(jv_copy(st), jv_string("best_val_loss"));
	r->best_val = jv_get_kind(bv) == JV_KIND_NUMBER ? jv_number_value(bv) : INFINITY;
	jv_free(bv);
	if (!ok || r->step < 0 || r->epoch < 0 || r->window < 0) {
		err_set(err, "%s: a key is missing or malformed (step, epoch, window, rng, fingerprints)", path);
		goto out;
	}
	if (!r->s->force) {
		char what[512] = "";
		jv old = jv_object_get(jv_copy(st), jv_string("settings"));
		if (fs != r->fp_settings) {
			if (!settings_diff(old, core, what, sizeof what))
				snprintf(what, sizeof what, "the settings differ");
			err_set(err, "%s: %s (--force resumes anyway)", path, what);
		} else if (fm != r->fp_model) {
			err_set(err, "%s: fingerprints.model: the model differs from the one trained (--force resumes "
				     "anyway)",
				path);
		} else if (fd != r->fp_data) {
			err_set(err, "%s: fingerprints.data: the data differ from the ones trained on (--force resumes "
				     "anyway)",
				path);
		}
		jv_free(old);
		if (fs != r->fp_settings || fm != r->fp_model || fd != r->fp_data)
			goto out;
	}
	rc = 0;
out:
	jv_free(st);
	free(path);
	return rc;
}

/* ---- checkpoints ---- */

static int state_write(struct run *r, const char *path, struct err *err)
{
	long log_bytes = r->log ? ftell(r->log) : 0;
	char rng[17], fs[17], fm[17], fd[17];
	hex64(rng, r->rng);
	hex64(fs, r->fp_settings);
	hex64(fm, r->fp_model);
	hex64(fd, r->fp_data);
	jv st = jv_object();
#define SET(k, v) st = jv_object_set(st, jv_string(k), v)
	SET("format", jv_string(FIT_STATE_FORMAT));
	SET("version", jv_number(FIT_STATE_VERSION));
	SET("step", jv_number((double)r->step));
	SET("epoch", jv_number((double)r->epoch));
	SET("window", jv_number((double)r->window));
	SET("rng", jv_string(rng));
	SET("log_bytes", jv_number((double)log_bytes));
	SET("best_val_loss", isfinite(r->best_val) ? jv_number(r->best_val) : jv_null());
	SET("best_step", jv_number((double)r->best_step));
	SET("eval_pending", jv_bool(r->eval_pending));
	jv fps = jv_object();
	fps = jv_object_set(fps, jv_string("settings"), jv_string(fs));
	fps = jv_object_set(fps, jv_string("model"), jv_string(fm));
	fps = jv_object_set(fps, jv_string("data"), jv_string(fd));
	SET("fingerprints", fps);
	SET("settings", settings_core(r->s, &r->rv));
#undef SET
	struct outfile *o = outfile_open(path, 0, err);
	if (!o) {
		jv_free(st);
		return -1;
	}
	jv d = jv_dump_string(st, JV_PRINT_PRETTY | JV_PRINT_SPACE1);
	fprintf(o->f, "%s\n", jv_string_value(d));
	jv_free(d);
	return outfile_commit(o, err);
}

static void prune_checkpoints(struct run *r)
{
	int64_t all[1024];
	int n = 0;
	newest_checkpoint(r->s->out, all, &n);
	/* keep the FIT_KEEP_CHECKPOINTS largest */
	for (int i = 0; i < n; i++) {
		int larger = 0;
		for (int j = 0; j < n; j++)
			larger += all[j] > all[i];
		if (larger >= FIT_KEEP_CHECKPOINTS) {
			char sub[64];
			snprintf(sub, sizeof sub, "checkpoint-%lld", (long long)all[i]);
			char *p = path_join(r->s->out, sub);
			if (p && remove_flat_dir(p) < 0)
				say(r, "%s: warning: could not remove %s\n", "qlora-fit", p);
			free(p);
		}
	}
}

/* checkpoint-STEP: written as a hidden folder, renamed into place whole. */
static int checkpoint_save(struct run *r, struct err *err)
{
	char name[64], tmpname[80];
	snprintf(name, sizeof name, "checkpoint-%lld", (long long)r->step);
	snprintf(tmpname, sizeof tmpname, ".%s.tmp", name);
	char *final = path_join(r->s->out, name), *tmp = path_join(r->s->out, tmpname);
	char *opt = tmp ? path_join(tmp, "optimizer.safetensors") : NULL;
	char *state = tmp ? path_join(tmp, "state.json") : NULL;
	int rc = -1;
	if (!final || !tmp || !opt || !state) {
		err_sys(err, "out of memory");
		goto out;
	}
	if (is_dir(final)) { /* this step's checkpoint exists (an interrupt right after a save) */
		rc = 0;
		goto out;
	}
	if (r->log && fflush(r->log) != 0) {
		err_sys(err, "%s/log.jsonl: write error:", r->s->out);
		goto out;
	}
	remove_flat_dir(tmp);
	struct peft_save_opts po = {r->model_name, r->multimodal};
	if (lora_save_peft(r->lo, tmp, &po, err) < 0 || adamw_save(r->opt, opt, err) < 0 ||
	    state_write(r, state, err) < 0) {
		err_wrap(err, "checkpoint %s", name);
		remove_flat_dir(tmp);
		goto out;
	}
	fsync_dir(tmp);
	if (rename(tmp, final) < 0) {
		err_sys(err, "%s: cannot rename the checkpoint into place:", final);
		remove_flat_dir(tmp);
		goto out;
	}
	fsync_dir(r->s->out);
	prune_checkpoints(r);
	rc = 0;
out:
	free(final), free(tmp), free(opt), free(state);
	if (rc < 0)
		err->code = EXIT_RUNTIME;
	return rc;
}

/* ---- the loop ---- */

/* Assembles row `row` of the plan into r->row_*; returns its length. */
static struct train_batch row_batch(struct run *r, size_t row)
{
	const struct exset *t = &r->train;
	struct train_batch b = {0};
	int n = 0;
	for (uint32_t k = 0; k < r->pl.row_len[row]; k++) {
		const struct example *e = &t->d->ex[t->idx[r->pl.order[r->pl.row_first[row] + k]]];
		r->row_starts[k] = n;
		memcpy(r->row_tok + n, t->d->tok + e->off, e->n * sizeof(int32_t));
		memcpy(r->row_lab + n, t->d->lab + e->off, e->n * sizeof(int32_t));
		n += (int)e->n;
	}
	b.n = n;
	b.tokens = r->row_tok;
	b.labels = r->row_lab;
	b.n_examples = (int)r->pl.row_len[row];
	b.starts = r->row_starts;
	return b;
}

static int evaluate(struct run *r, struct err *err)
{
	if (r->val.n == 0) {
		r->eval_pending = 0;
		return 0;
	}
	double sum = 0;
	int64_t tokens = 0;
	int rc = 0;
	for (size_t i = 0; i < r->val.n && !msg_interrupted; i++) {
		const struct example *e = &r->val.d->ex[r->val.idx[i]];
		struct train_batch b = {(int)e->n, r->val.d->tok + e->off, r->val.d->lab + e->off, 1, NULL};
		struct train_result res;
		if (train_eval(r->tr, &b, &res, err) < 0) {
			err_wrap(err, "%s: record %llu", r->val.d->path, (unsigned long long)e->record);
			rc = -1;
			break;
		}
		sum += res.loss_sum;
		tokens += res.n_learned;
	}
	if (rc < 0 || msg_interrupted) {
		r->eval_pending = 1;
		return rc;
	}
	r->eval_pending = 0;
	const double loss = tokens ? sum / (double)tokens : 0;
	const double ep = (double)r->epoch + (r->pl.n_windows ? (double)r->window / (double)r->pl.n_windows : 0);
	jv line = jv_object();
	line = jv_object_set(line, jv_string("step"), jv_number((double)r->step));
	line = jv_object_set(line, jv_string("epoch"), jv_number(round(ep * 1e4) / 1e4));
	line = jv_object_set(line, jv_string("val_loss"), jv_number(loss));
	line = jv_object_set(line, jv_string("val_tokens"), jv_number((double)tokens));
	if (jsonl_write(r->log, line, err) < 0 || fflush(r->log) != 0)
		return err_sys(err, "%s/log.jsonl: write error:", r->s->out);
	int better = loss < r->best_val;
	say(r, "eval   %6lld  epoch %7.3f  val_loss %8.4f  val_tokens %lld%s\n", (long long)r->step, ep, loss,
	    (long long)tokens, better ? "  (best)" : "");
	if (better) {
		r->best_val = loss;
		r->best_step = r->step;
		char *p = path_join(r->s->out, "best");
		struct peft_save_opts po = {r->model_name, r->multimodal};
		int bad = !p || lora_save_peft(r->lo, p, &po, err) < 0;
		free(p);
		if (bad) {
			err->code = EXIT_RUNTIME;
			return err_wrap(err, "best/");
		}
	}
	return 0;
}

/* A test hook: LORAPIPE_FIT_TEST_SIGNAL=KILL@S or INT@S raises that signal
 * after the first row of the window that makes optimizer step S + 1 (so
 * after the checkpoint of step S, when one was written), to test resume
 * and interrupts at exact points. */
static void test_signal(struct run *r)
{
	if (!r->test_signal)
		return;
	long long at = -1;
	const char *p = strchr(r->test_signal, '@');
	if (!p || sscanf(p + 1, "%lld", &at) != 1 || at != r->step)
		return;
	if (!strncmp(r->test_signal, "KILL", 4))
		raise(SIGKILL);
	if (!strncmp(r->test_signal, "INT", 3))
		raise(SIGINT);
	if (!strncmp(r->test_signal, "TERM", 4))
		raise(SIGTERM);
}

/* One window: forward and backward of its rows, clipping, the update.
 * Returns 1 when interrupted before the update (nothing changed but the
 * gradients), 0 when done, -1 on error. */
static int run_window(struct run *r, struct err *err)
{
	const struct fit_settings *s = r->s;
	const size_t per = (size_t)s->batch * (size_t)s->grad_accum;
	const size_t first = (size_t)r->window * per;
	const size_t last = first + per < r->pl.n_rows ? first + per : r->pl.n_rows;
	const double t0 = progress_now();
	int64_t learned = 0, tokens = 0;
	for (size_t row = first; row < last; row++) {
		struct train_batch b = row_batch(r, row);
		learned += train_batch_learned(&b);
	}
	const float scale = learned ? (float)(1.0 / (double)learned) : 0.0f;
	lora_zero_grads(r->lo);
	const uint64_t rng0 = r->rng;
	double loss_sum = 0;
	for (size_t row = first; row < last; row++) {
		if (msg_interrupted) {
			r->rng = rng0;
			return 1;
		}
		struct train_batch b = row_batch(r, row);
		struct train_result res;
		uint64_t seed = rng_next(&r->rng);
		if (train_step(r->tr, &b, scale, seed, &res, NULL, err) < 0) {
			const struct example *e = &r->train.d->ex[r->train.idx[r->pl.order[r->pl.row_first[row]]]];
			return err_wrap(err, "step %lld, row from record %llu", (long long)r->step + 1,
					(unsigned long long)e->record);
		}
		loss_sum += res.loss_sum;
		tokens += b.n;
		if (row == first)
			test_signal(r);
	}
	if (msg_interrupted) {
		r->rng = rng0;
		return 1;
	}
	float norm = s->max_grad_norm > 0
			     ? clip_grad_norm(r->lo->grads, r->lo->n_params, r->seg, r->n_seg, s->max_grad_norm)
			     : grad_norm(r->lo->grads, r->lo->n_params, r->seg, r->n_seg);
	if (!isfinite(norm)) {
		err_set(err, "step %lld: the gradient norm is %g (diverged: lower --lr)", (long long)r->step + 1,
			(double)norm);
		err->code = EXIT_RUNTIME;
		return -1;
	}
	const double lr = lr_at(&r->sched, r->step);
	adamw_step(r->opt, r->lo->params, r->lo->grads, lr, &s->adam);
	r->step++;
	r->window++;
	const double secs = progress_now() - t0;
	const double loss = learned ? loss_sum / (double)learned : 0;
	if (r->step % s->logging_steps == 0 || r->step == r->rv.total_steps) {
		const double ep = (double)r->epoch + (double)r->window / (double)r->pl.n_windows;
		const double mem = (double)rss_now() / (1 << 20);
		jv line = jv_object();
#define SET(k, v) line = jv_object_set(line, jv_string(k), v)
		SET("step", jv_number((double)r->step));
		SET("epoch", jv_number(round(ep * 1e4) / 1e4));
		SET("loss", jv_number(loss));
		SET("lr", jv_number(lr));
		SET("grad_norm", jv_number(norm));
		SET("learned_tokens", jv_number((double)learned));
		SET("tokens_per_s", jv_number(round(secs > 0 ? tokens / secs : 0)));
		SET("ms_per_step", jv_number(round(secs * 1e4) / 10));
		SET("mem_mb", jv_number(round(mem)));
#undef SET
		if (jsonl_write(r->log, line, err) < 0 || fflush(r->log) != 0)
			return err_sys(err, "%s/log.jsonl: write error:", s->out);
		say(r, "step %6lld/%lld  epoch %7.3f  loss %8.4f  lr %.3e  grad_norm %8.4f  tok/s %8.0f  ms/step %8.1f  "
		       "mem %6.0f MB\n",
		    (long long)r->step, (long long)r->rv.total_steps, ep, loss, lr, (double)norm,
		    secs > 0 ? tokens / secs : 0, secs * 1e3, mem);
	}
	progress_update(&r->prog, (uint64_t)r->step, 0);
	return 0;
}

/* ---- set-up ---- */

static int split_data(struct run *r, struct err *err)
{
	const struct fit_settings *s = r->s;
	const size_t n = r->data.n_ex;
	size_t n_val = 0;
	if (s->val_split > 0) {
		n_val = (size_t)ceil(s->val_split * (double)n);
		if (n_val < 1)
			n_val = 1;
		if (n_val >= n)
			return err_set(err, "--val-split %g of %zu examples leaves none to train on", s->val_split, n);
	}
	uint32_t *perm = malloc((n ? n : 1) * sizeof *perm);
	r->train.idx = malloc((n ? n : 1) * sizeof *r->train.idx);
	uint8_t *is_val = calloc(n ? n : 1, 1);
	if (!perm || !r->train.idx || !is_val) {
		free(perm), free(is_val);
		return err_sys(err, "out of memory");
	}
	for (size_t i = 0; i < n; i++)
		perm[i] = (uint32_t)i;
	if (n_val) {
		uint64_t st = s->seed ^ FIT_SPLIT_SALT;
		for (size_t i = n - 1; i > 0; i--) {
			size_t j = (size_t)rng_below(&st, (uint64_t)i + 1);
			uint32_t t = perm[i];
			perm[i] = perm[j];
			perm[j] = t;
		}
		for (size_t i = 0; i < n_val; i++)
			is_val[perm[i]] = 1;
	}
	r->train.d = &r->data;
	r->train.n = 0;
	for (size_t i = 0; i < n; i++)
		if (!is_val[i])
			r->train.idx[r->train.n++] = (uint32_t)i;
	if (n_val) { /* validation in stream order too */
		r->val.d = &r->data;
		r->val.n = 0;
		for (size_t i = 0; i < n; i++)
			if (is_val[i])
				perm[r->val.n++] = (uint32_t)i;
		r->val.idx = perm;
		perm = NULL;
	} else if (s->val_file) {
		r->val.d = &r->valdata;
		r->val.n = r->valdata.n_ex;
		r->val.idx = malloc((r->val.n ? r->val.n : 1) * sizeof *r->val.idx);
		if (!r->val.idx) {
			free(perm), free(is_val);
			return err_sys(err, "out of memory");
		}
		for (size_t i = 0; i < r->val.n; i++)
			r->val.idx[i] = (uint32_t)i;
	}
	free(perm);
	free(is_val);
	return 0;
}

/* The adapter's configuration: the flags', or an init adapter's (a flag
 * given with another value is an error). */
static int adapter_config(struct run *r, struct err *err)
{
	const struct fit_settings *s = r->s;
	r->rv.lc = (struct lora_config){s->targets, s->rank, (float)s->alpha, (float)s->dropout, s->rslora};
	if (!s->init_adapter)
		return 0;
	struct lora *lo = lora_load_peft(s->init_adapter, &r->mc, NULL, err);
	if (!lo)
		return err_wrap(err, "--init-adapter");
	const struct lora_config *c = &lo->cfg;
	const char *bad = s->given_rank && c->rank != s->rank                ? "--rank"
			  : s->given_alpha && c->alpha != (float)s->alpha    ? "--alpha"
			  : s->given_targets && c->targets != s->targets     ? "--target"
			  : s->given_rslora && !!c->rslora != !!s->rslora    ? "--rslora"
									     : NULL;
	if (bad) {
		err_set(err, "%s conflicts with --init-adapter %s (rank %d, alpha %g, rslora %s): leave it out", bad,
			s->init_adapter, c->rank, (double)c->alpha, c->rslora ? "on" : "off");
		lora_free(lo);
		return -1;
	}
	r->rv.lc = *c;
	r->rv.lc.dropout = (float)s->dropout;
	lora_free(lo);
	return 0;
}

static int64_t total_steps(struct run *r, struct err *err)
{
	if (r->s->max_steps > 0)
		return r->s->max_steps;
	int64_t total = 0;
	for (int64_t e = 0; e < r->s->epochs; e++) {
		if (plan_epoch(&r->pl, &r->train, r->s, r->rv.seq_len, e, err) < 0)
			return -1;
		total += r->pl.n_windows;
		if (!r->s->shuffle || !r->s->packing) { /* every epoch has the same count */
			total *= r->s->epochs;
			break;
		}
	}
	return total;
}

/* The output folder: refused when it holds a run and neither --resume nor
 * --force is given. Returns the checkpoint to resume, or -1. */
static int out_check(struct run *r, int64_t *resume_step, struct err *err)
{
	const struct fit_settings *s = r->s;
	*resume_step = -1;
	struct stat st;
	if (stat(s->out, &st) < 0) {
		const char *slash = strrchr(s->out, '/');
		char *parent = slash ? strndup(s->out, (size_t)(slash - s->out)) : strdup(".");
		int ok = parent && (!*parent || is_dir(parent));
		free(parent);
		return ok ? 0 : err_set(err, "--out %s: its parent folder does not exist", s->out);
	}
	if (!S_ISDIR(st.st_mode))
		return err_set(err, "--out %s: exists and is not a folder", s->out);
	if (s->resume) {
		*resume_step = newest_checkpoint(s->out, NULL, NULL);
		return 0;
	}
	DIR *d = opendir(s->out);
	int used = 0;
	struct dirent *e;
	while (d && (e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			used = 1;
	if (d)
		closedir(d);
	if (used && !s->force)
		return err_set(err, "--out %s: the folder is not empty (--resume continues the run in it, --force "
				    "starts over)",
			       s->out);
	return 0;
}

/* --force over a used folder: what an earlier run left goes. */
static void out_clear(struct run *r)
{
	int64_t all[1024];
	int n = 0;
	newest_checkpoint(r->s->out, all, &n);
	for (int i = 0; i < n; i++) {
		char sub[64];
		snprintf(sub, sizeof sub, "checkpoint-%lld", (long long)all[i]);
		char *p = path_join(r->s->out, sub);
		if (p)
			remove_flat_dir(p);
		free(p);
	}
	const char *names[] = {"best", "log.jsonl"};
	for (int i = 0; i < 2; i++) {
		char *p = path_join(r->s->out, names[i]);
		if (p && (i == 0 ? remove_flat_dir(p) : unlink(p)) < 0 && errno != ENOENT)
			say(r, "qlora-fit: warning: could not remove %s\n", p);
		free(p);
	}
}

static int write_args(struct run *r, const struct mem_estimate *me, struct err *err)
{
	char fs[17], fm[17], fd[17];
	hex64(fs, r->fp_settings);
	hex64(fm, r->fp_model);
	hex64(fd, r->fp_data);
	jv o = settings_all(r->s, &r->rv);
	o = jv_object_set(o, jv_string("total_steps"), jv_number((double)r->rv.total_steps));
	o = jv_object_set(o, jv_string("trainable_params"), jv_number((double)r->lo->n_params));
	int64_t params;
	size_t bytes;
	model_size(r->m, &params, &bytes);
	o = jv_object_set(o, jv_string("all_params"), jv_number((double)(params + (int64_t)r->lo->n_params)));
	o = jv_object_set(o, jv_string("train_examples"), jv_number((double)r->train.n));
	o = jv_object_set(o, jv_string("val_examples"), jv_number((double)r->val.n));
	o = jv_object_set(o, jv_string("memory_estimate_mb"), jv_number(round((double)me->total / (1 << 20))));
	jv fps = jv_object();
	fps = jv_object_set(fps, jv_string("settings"), jv_string(fs));
	fps = jv_object_set(fps, jv_string("model"), jv_string(fm));
	fps = jv_object_set(fps, jv_string("data"), jv_string(fd));
	o = jv_object_set(o, jv_string("fingerprints"), fps);
	char *path = path_join(r->s->out, "training_args.json");
	struct outfile *f = path ? outfile_open(path, 0, err) : NULL;
	free(path);
	if (!f) {
		jv_free(o);
		err->code = EXIT_RUNTIME;
		return -1;
	}
	jv d = jv_dump_string(o, JV_PRINT_PRETTY | JV_PRINT_SPACE1);
	fprintf(f->f, "%s\n", jv_string_value(d));
	jv_free(d);
	if (outfile_commit(f, err) < 0) {
		err->code = EXIT_RUNTIME;
		return -1;
	}
	return 0;
}

/* 1234567 as "1,234,567" (Python's "{:,d}") */
static void group_digits(char out[40], long long v)
{
	char d[24];
	int n = snprintf(d, sizeof d, "%lld", v), o = 0;
	for (int i = 0; i < n; i++) {
		if (i && d[i - 1] != '-' && (n - i) % 3 == 0)
			out[o++] = ',';
		out[o++] = d[i];
	}
	out[o] = 0;
}

static void print_table(struct run *r, const struct mem_estimate *me)
{
	const struct fit_settings *s = r->s;
	if (!r->con)
		return;
	int64_t params;
	size_t bytes;
	model_size(r->m, &params, &bytes);
	const int64_t all = params + (int64_t)r->lo->n_params;
	char tg[128] = "";
	for (int t = 0; t < LORA_N_TARGETS; t++)
		if (r->lo->cfg.targets & (1u << t))
			snprintf(tg + strlen(tg), sizeof tg - strlen(tg), "%s%s", *tg ? "," : "",
				 lora_target_name((enum lora_target)t));
	FILE *f = r->con;
	fprintf(f, "qlora-fit: settings in force\n");
	fprintf(f, "  model          %s (%s, %d layers, dim %d, vocab %d), linear weights %s, %.1f MB\n", s->model,
		model_arch_name(r->mc.arch), r->mc.n_layers, r->mc.dim, r->mc.vocab, quant_name(s->quant),
		bytes / 1e6);
	fprintf(f, "  data           %s: %zu examples, %zu tokens", s->data, r->data.n_ex, r->data.n_tok);
	if (r->data.truncated || r->data.dropped)
		fprintf(f, " (%llu truncated, %llu dropped)", (unsigned long long)r->data.truncated,
			(unsigned long long)r->data.dropped);
	fprintf(f, "\n  split          %zu train, %zu validation%s\n", r->train.n, r->val.n,
		s->val_file ? " (--val)" : s->val_split > 0 ? " (--val-split)" : "");
	fprintf(f, "  adapter        rank %d, alpha %g, scale %g%s, dropout %g, targets %s%s%s\n", r->lo->cfg.rank,
		(double)r->lo->cfg.alpha, (double)r->lo->scale, r->lo->cfg.rslora ? " (rslora)" : "", s->dropout, tg,
		s->init_adapter ? ", from " : "", s->init_adapter ? s->init_adapter : "");
	fprintf(f, "  optimizer      AdamW lr %g, betas (%g, %g), eps %g, weight decay %g, max grad norm %g\n", s->lr,
		s->adam.beta1, s->adam.beta2, s->adam.eps, s->adam.weight_decay, s->max_grad_norm);
	fprintf(f, "  schedule       %s, %lld warm-up steps", scheduler_name(s->scheduler), (long long)r->rv.warmup);
	if (s->scheduler == LR_COSINE_MIN)
		fprintf(f, ", floor %g of the lr", s->min_lr_ratio);
	fputc('\n', f);
	fprintf(f, "  batches        seq-len %d, %d row(s) a micro-batch, %d micro-batch(es) a step, %s, %s\n",
		r->rv.seq_len, s->batch, s->grad_accum, s->packing ? "packed" : "one example a row",
		s->shuffle ? "shuffled per epoch" : "in stream order");
	fprintf(f, "  steps          %lld (%s), seed %llu, threads %d, gradient checkpointing %s\n",
		(long long)r->rv.total_steps, s->max_steps > 0 ? "--max-steps" : "from --epochs",
		(unsigned long long)s->seed, s->threads, r->rv.ckpt ? "on" : "off");
	fprintf(f, "  memory         about %.0f MB (weights %.0f, adapter+optimizer %.0f, activations %.0f, data "
		   "%.0f)\n",
		me->total / 1048576.0, me->weights / 1048576.0, me->adapter / 1048576.0, me->activations / 1048576.0,
		me->data / 1048576.0);
	fprintf(f, "  trainer        %.0f MB of activations and scratch allocated for %d tokens\n",
		trainer_bytes(r->tr) / 1048576.0, r->rv.seq_len);
	if (r->resumed_from >= 0)
		fprintf(f, "  resumed        from checkpoint-%lld\n", (long long)r->resumed_from);
	/* as PEFT's print_trainable_parameters */
	char ca[40], cb[40];
	group_digits(ca, (long long)r->lo->n_params);
	group_digits(cb, (long long)all);
	fprintf(f, "trainable params: %s || all params: %s || trainable%%: %.4f\n", ca, cb,
		all ? 100.0 * (double)r->lo->n_params / (double)all : 0.0);
	fflush(f);
}

static void run_free(struct run *r)
{
	if (r->log)
		fclose(r->log);
	trainer_free(r->tr);
	adamw_free(r->opt);
	lora_free(r->lo);
	model_free(r->m);
	if (r->mc_loaded)
		model_config_free(&r->mc);
	dataset_free(&r->data);
	dataset_free(&r->valdata);
	free(r->train.idx);
	free(r->val.idx);
	free(r->pl.order), free(r->pl.row_first), free(r->pl.row_len);
	free(r->row_tok), free(r->row_lab), free(r->row_starts);
	free(r->seg);
	free(r->model_name);
}

/* Everything before loading: checks and the plan. */
static int prepare(struct run *r, int64_t *resume_step, struct mem_estimate *me, struct err *err)
{
	const struct fit_settings *s = r->s;
	if (check_settings(s, err) < 0)
		return -1;
	if (model_config_load(s->model, &r->mc, err) < 0)
		return -1;
	r->mc_loaded = 1;
	const int ctx = r->mc.max_pos > 0 ? r->mc.max_pos : 2048;
	r->rv.seq_len = s->seq_len > 0 ? s->seq_len : ctx < 2048 ? ctx : 2048;
	if (r->rv.seq_len > ctx)
		return err_set(err, "--seq-len %d is longer than the model's context (%d, max_position_embeddings)",
			       r->rv.seq_len, ctx);
	if (adapter_config(r, err) < 0)
		return -1;
	/* the tokenizer the streams must have been made with */
	r->tc.where = s->model;
	if (model_has_tokenizer(s->model)) {
		struct tokenizer *tk = tokenizer_load(s->model, err);
		if (!tk)
			return err_wrap(err, "--model %s: its tokenizer", s->model);
		r->tc.known = 1;
		r->tc.fp = tokenizer_fingerprint(tk);
		tokenizer_free(tk);
	} else {
		say(r, "qlora-fit: note: %s has no tokenizer files: the token streams' tokenizer fingerprint cannot be "
		       "checked\n",
		    s->model);
	}
	uint64_t h = FNV_START;
	if (dataset_load(&r->data, s->data, s, r->rv.seq_len, &r->mc, &r->tc, &h, err) < 0)
		return -1;
	if (s->val_file) {
		h = fnv(h, "val", 4);
		if (dataset_load(&r->valdata, s->val_file, s, r->rv.seq_len, &r->mc, &r->tc, &h, err) < 0)
			return -1;
	}
	r->fp_data = h;
	if (r->data.truncated || r->data.dropped)
		say(r, "qlora-fit: %s: %llu records truncated, %llu dropped (longer than --seq-len %d)\n", s->data,
		    (unsigned long long)r->data.truncated, (unsigned long long)r->data.dropped, r->rv.seq_len);
	if (split_data(r, err) < 0)
		return -1;
	r->pl.order = malloc((r->train.n ? r->train.n : 1) * sizeof *r->pl.order);
	if (!r->pl.order)
		return err_sys(err, "out of memory");
	if ((r->rv.total_steps = total_steps(r, err)) < 0)
		return -1;
	r->rv.warmup = s->warmup_steps >= 0 ? s->warmup_steps : (int64_t)ceil((double)r->rv.total_steps * s->warmup_ratio);
	r->sched = (struct lr_schedule){s->scheduler, s->lr, r->rv.warmup, r->rv.total_steps, 0.5, s->min_lr_ratio};
	/* gradient checkpointing: auto turns it on when the kept activations pass 1 GiB */
	size_t full = activation_bytes(&r->mc, &r->rv.lc, r->rv.seq_len, 0);
	r->rv.ckpt = s->checkpointing == FIT_CKPT_ON || (s->checkpointing == FIT_CKPT_AUTO && full > ((size_t)1 << 30));
	jv core = settings_core(s, &r->rv);
	r->fp_settings = jv_fingerprint(jv_copy(core));
	r->fp_model = model_fingerprint(s->model);
	int rc = out_check(r, resume_step, err);
	if (rc == 0 && *resume_step >= 0) {
		char sub[64];
		snprintf(sub, sizeof sub, "checkpoint-%lld", (long long)*resume_step);
		char *ck = path_join(s->out, sub);
		rc = ck ? state_read(r, ck, core, err) : err_sys(err, "out of memory");
		free(ck);
	}
	jv_free(core);
	if (rc < 0)
		return -1;
	/* the adapter's size, for the estimate */
	struct lora *probe = lora_new(&r->mc, &r->rv.lc, err);
	if (!probe)
		return -1;
	size_t n_lora = probe->n_params;
	lora_free(probe);
	estimate(me, &r->mc, &r->rv.lc, s->quant, n_lora, r->rv.seq_len, r->rv.ckpt,
		 r->data.n_tok + r->valdata.n_tok, r->data.n_ex + r->valdata.n_ex);
	return 0;
}

/* Loading: the model, the adapter (fresh, init or checkpoint), optimizer. */
static int load(struct run *r, int64_t resume_step, struct err *err)
{
	const struct fit_settings *s = r->s;
	struct model_load_opts mo = {s->quant, s->quant == WFMT_BF16 ? WFMT_BF16 : WFMT_F32};
	if (!(r->m = model_load(s->model, &mo, err)))
		return -1;
	r->model_name = strdup(s->model);
	if (peft_model_multimodal(s->model, &r->multimodal, err) < 0)
		return -1;
	char *ck = NULL;
	if (resume_step >= 0) {
		char sub[64];
		snprintf(sub, sizeof sub, "checkpoint-%lld", (long long)resume_step);
		ck = path_join(s->out, sub);
		r->lo = ck ? lora_load_peft(ck, &r->mc, NULL, err) : NULL;
		char *op = r->lo ? path_join(ck, "optimizer.safetensors") : NULL;
		r->opt = op ? adamw_load(op, r->lo->n_params, err) : NULL;
		free(op);
		if (!r->lo || !r->opt) {
			free(ck);
			return err_wrap(err, "--resume");
		}
		r->lo->cfg.dropout = (float)s->dropout;
		r->resumed_from = resume_step;
		free(ck);
	} else {
		if (s->init_adapter) {
			r->lo = lora_load_peft(s->init_adapter, &r->mc, NULL, err);
			if (r->lo)
				r->lo->cfg.dropout = (float)s->dropout;
		} else if ((r->lo = lora_new(&r->mc, &r->rv.lc, err))) {
			lora_init(r->lo, s->seed);
		}
		if (!r->lo || !(r->opt = adamw_new(r->lo->n_params, err)))
			return -1;
		r->step = r->epoch = r->window = 0;
		r->rng = s->seed ^ FIT_DROPOUT_SALT;
		r->best_val = INFINITY;
		r->best_step = -1;
	}
	struct train_opts to = {r->rv.ckpt, 0};
	if (!(r->tr = trainer_new(r->m, r->lo, r->rv.seq_len, &to, err)))
		return -1;
	r->n_seg = lora_segments(r->lo, NULL);
	r->seg = malloc((r->n_seg ? r->n_seg : 1) * sizeof *r->seg);
	const size_t n = (size_t)r->rv.seq_len;
	r->row_tok = malloc(n * sizeof *r->row_tok);
	r->row_lab = malloc(n * sizeof *r->row_lab);
	r->row_starts = malloc(n * sizeof *r->row_starts);
	if (!r->seg || !r->row_tok || !r->row_lab || !r->row_starts)
		return err_sys(err, "out of memory");
	lora_segments(r->lo, r->seg);
	return 0;
}

/* What a killed run may leave: hidden folders of checkpoints and best/ being
 * written (ours, and lora_save_peft's ".NAME.tmp-XXXXXX"). */
static void clean_leftovers(struct run *r)
{
	DIR *d = opendir(r->s->out);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		const char *n = e->d_name;
		if (strncmp(n, ".checkpoint-", 12) && strncmp(n, "..checkpoint-", 13) && strncmp(n, ".best.tmp-", 10))
			continue;
		char *p = path_join(r->s->out, n);
		if (p && remove_flat_dir(p) < 0)
			say(r, "qlora-fit: warning: could not remove %s\n", p);
		free(p);
	}
	if (d)
		closedir(d);
}

/* The output folder and its log, for a fresh or a resumed run. */
static int out_open(struct run *r, struct err *err)
{
	const struct fit_settings *s = r->s;
	if (mkdir(s->out, 0777) < 0 && errno != EEXIST)
		return err_sys(err, "--out %s: cannot create the folder:", s->out);
	if (r->resumed_from < 0 && s->force)
		out_clear(r);
	clean_leftovers(r);
	char *lp = path_join(s->out, "log.jsonl");
	if (!lp)
		return err_sys(err, "out of memory");
	long keep = 0;
	if (r->resumed_from >= 0) { /* the log as it was at the checkpoint */
		char sub[64];
		snprintf(sub, sizeof sub, "checkpoint-%lld/state.json", (long long)r->resumed_from);
		char *sp = path_join(s->out, sub);
		jv st;
		if (sp && jsonl_load(sp, 1 << 20, &st, err) == 0) {
			keep = (long)jv_int(st, "log_bytes", 0);
			jv_free(st);
		}
		free(sp);
		if (truncate(lp, keep) < 0 && errno != ENOENT)
			keep = 0;
	}
	r->log = fopen(lp, keep > 0 ? "a" : "w");
	free(lp);
	if (!r->log)
		return err_sys(err, "%s/log.jsonl: cannot open:", s->out);
	return 0;
}

int fit_run(const struct fit_settings *s, struct err *err)
{
	struct run r = {0};
	r.s = s;
	r.con = s->console;
	r.resumed_from = -1;
	r.best_val = INFINITY;
	r.best_step = -1;
	r.test_signal = getenv("LORAPIPE_FIT_TEST_SIGNAL");
	int64_t resume_step = -1;
	struct mem_estimate me = {0};
	int status = -1;
	backend_cpu_threads(s->threads);
	if (prepare(&r, &resume_step, &me, err) < 0)
		goto out;
	const size_t avail = mem_available();
	if (avail && me.total > avail) {
		if (!s->force) {
			err_set(err, "the run needs about %.0f MB (weights %.0f, activations %.0f, adapter and "
				     "optimizer %.0f, data %.0f) and %.0f MB are available: lower --seq-len, use "
				     "--checkpointing on or --quant nf4, or --force to try anyway",
				me.total / 1048576.0, me.weights / 1048576.0, me.activations / 1048576.0,
				me.adapter / 1048576.0, me.data / 1048576.0, avail / 1048576.0);
			err->code = EXIT_RUNTIME;
			goto out;
		}
		say(&r, "qlora-fit: warning: about %.0f MB needed, %.0f MB available (--force)\n", me.total / 1048576.0,
		    avail / 1048576.0);
	}
	if (msg_interrupted) {
		err_set(err, "interrupted before training: nothing written");
		err->code = FIT_INTERRUPTED;
		status = FIT_INTERRUPTED;
		goto out;
	}
	if (load(&r, resume_step, err) < 0)
		goto out;
	if (r.con)
		print_table(&r, &me);
	if (out_open(&r, err) < 0 || write_args(&r, &me, err) < 0)
		goto out;
	progress_start(&r.prog, "steps", (uint64_t)r.rv.total_steps, s->progress);
	progress_update(&r.prog, (uint64_t)r.step, 0);
	int planned = -1; /* the epoch r.pl holds */
	if (r.eval_pending && evaluate(&r, err) < 0)
		goto out;
	while (r.step < r.rv.total_steps && !msg_interrupted) {
		if (planned != r.epoch) {
			if (plan_epoch(&r.pl, &r.train, s, r.rv.seq_len, r.epoch, err) < 0)
				goto out;
			planned = (int)r.epoch;
		}
		if (r.window >= r.pl.n_windows) {
			r.epoch++;
			r.window = 0;
			continue;
		}
		int rc = run_window(&r, err);
		if (rc < 0)
			goto out;
		if (rc > 0)
			break;
		const int epoch_end = r.window >= r.pl.n_windows, last = r.step == r.rv.total_steps;
		if ((s->eval_steps > 0 ? r.step % s->eval_steps == 0 : epoch_end) || last) {
			r.eval_pending = 1;
			if (evaluate(&r, err) < 0)
				goto out;
		}
		if (msg_interrupted)
			break;
		if (epoch_end && !last) { /* the next window is the next epoch's first */
			r.epoch++;
			r.window = 0;
		}
		if ((s->save_steps > 0 && r.step % s->save_steps == 0) || last)
			if (checkpoint_save(&r, err) < 0)
				goto out;
	}
	if (msg_interrupted) {
		progress_end(&r.prog);
		if (checkpoint_save(&r, err) < 0)
			goto out;
		err_set(err, "interrupted: checkpoint-%lld written; --resume continues", (long long)r.step);
		err->code = FIT_INTERRUPTED;
		status = FIT_INTERRUPTED;
		goto out;
	}
	progress_end(&r.prog);
	if (fclose(r.log) != 0) {
		r.log = NULL;
		err_sys(err, "%s/log.jsonl: write error:", s->out);
		goto out;
	}
	r.log = NULL;
	struct peft_save_opts po = {r.model_name, r.multimodal};
	if (lora_save_peft(r.lo, s->out, &po, err) < 0) {
		err->code = EXIT_RUNTIME;
		goto out;
	}
	say(&r, "qlora-fit: done: %lld steps; adapter in %s%s; peak resident memory %.0f MB\n", (long long)r.step,
	    s->out, r.best_step >= 0 ? ", best (lowest val_loss) in best/" : "", rss_peak() / 1048576.0);
	status = 0;
out:
	run_free(&r);
	return status;
}
