/* test_safetensors: the safetensors reader and writer on files this test
 * writes — round trips of every dtype and of odd shapes (scalar, zero-size,
 * 8 dimensions), the writer's exact bytes, fp32 conversion, model folders
 * (index and shards, one file, several files) — and on broken ones in the
 * style of llama.cpp's test-gguf: every truncation of a valid file, random
 * byte flips in its header, and hand-made bad headers, each of which must be
 * an error naming the problem, never a crash (the ASan build checks that).
 * The comparison with the Python library is tests/ref/test_safetensors_py.py. */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "half.h"
#include "safetensors.h"

static char tmpdir[] = "/tmp/test_safetensors.XXXXXX";

static uint64_t rng_state, test_seed;
static uint32_t rnd(void)
{
	rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
	return (uint32_t)(rng_state >> 33);
}

static char *path_in(const char *name)
{
	static char buf[8][512];
	static int k;
	char *p = buf[k++ % 8];
	snprintf(p, 512, "%s/%s", tmpdir, name);
	return p;
}

static uint8_t *read_all(const char *path, size_t *n)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *p = malloc((size_t)len + 1);
	*n = fread(p, 1, (size_t)len, f);
	fclose(f);
	return p;
}

static void write_raw(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		abort();
	fwrite(p, 1, n, f);
	fclose(f);
}

/* A file image: the length, the header text as given, data_len bytes i*3. */
static uint8_t *image(const char *json, size_t data_len, size_t *n)
{
	size_t h = strlen(json);
	*n = 8 + h + data_len;
	uint8_t *p = malloc(*n);
	uint64_t len = h;
	memcpy(p, &len, 8);
	memcpy(p + 8, json, h);
	for (size_t i = 0; i < data_len; i++)
		p[8 + h + i] = (uint8_t)(i * 3);
	return p;
}

/* Expects the image to be refused with a message naming the file and holding want. */
#define REFUSED_BUF(p, n, want)                                                                            \
	do {                                                                                               \
		struct err e_ = {{0}, 0};                                                                  \
		struct safetensors *st_ = st_open_mem(p, n, "t.st", &e_);                                  \
		CHECK(!st_, "accepted a broken file (wanted \"%s\")", want);                               \
		st_close(st_);                                                                             \
		CHECK(st_ || strstr(e_.msg, want), "message \"%s\" lacks \"%s\"", e_.msg, want);          \
		CHECK(st_ || strncmp(e_.msg, "t.st: ", 6) == 0, "message \"%s\" does not name the file", e_.msg); \
	} while (0)

#define REFUSED(json, data_len, want)                                                                      \
	do {                                                                                               \
		size_t n_;                                                                                 \
		uint8_t *p_ = image(json, data_len, &n_);                                                  \
		REFUSED_BUF(p_, n_, want);                                                                 \
		free(p_);                                                                                  \
	} while (0)

/* ---- a set of tensors covering every dtype and odd shapes ---- */

#define N_OUT 19
static struct st_out outs[N_OUT];
static uint8_t *out_data[N_OUT];
static char out_names[N_OUT][32];

static size_t out_bytes(const struct st_out *o)
{
	size_t n = st_dtype_size(o->dtype);
	for (int i = 0; i < o->n_dims; i++)
		n *= (size_t)o->shape[i];
	return n;
}

static void make_outs(void)
{
	for (int i = 0; i < N_OUT; i++) {
		struct st_out *o = &outs[i];
		memset(o, 0, sizeof *o);
		o->dtype = (enum st_dtype)(i % ST_DTYPE_COUNT);
		if (i < ST_DTYPE_COUNT) {
			o->n_dims = 1 + i % 3;
			for (int d = 0; d < o->n_dims; d++)
				o->shape[d] = 1 + (int64_t)(rnd() % 5);
		} else if (i == 15) {
			o->n_dims = 0; /* scalar */
		} else if (i == 16) {
			o->n_dims = 3; /* zero-size */
			o->shape[0] = 4, o->shape[1] = 0, o->shape[2] = 7;
		} else if (i == 17) {
			o->n_dims = 8;
			for (int d = 0; d < 8; d++)
				o->shape[d] = 1 + d % 2;
		} else {
			o->n_dims = 1; /* empty vector */
		}
		/* names chosen so name order and layout order differ */
		snprintf(out_names[i], sizeof out_names[i], "%s.w%02d", i % 2 ? "a" : "b", N_OUT - i);
		o->name = out_names[i];
		size_t nb = out_bytes(o);
		free(out_data[i]);
		out_data[i] = malloc(nb + 1);
		for (size_t k = 0; k < nb; k++)
			out_data[i][k] = (uint8_t)rnd();
		o->data = out_data[i];
	}
}

static void test_dtype_names(void)
{
	for (int i = 0; i < ST_DTYPE_COUNT; i++)
		CHECK(st_dtype_parse(st_dtype_name((enum st_dtype)i)) == i, "dtype %d", i);
	CHECK(st_dtype_parse("C64") == -1 && st_dtype_parse("f32") == -1, "unknown names");
	CHECK(st_dtype_size(ST_BF16) == 2 && st_dtype_size(ST_U64) == 8 && st_dtype_size(ST_F8_E4M3) == 1, "sizes");
}

static void test_roundtrip(void)
{
	make_outs();
	static const char *const meta[] = {"format", "pt", "note", "h\xc3\xa9 \"q\" \\ \n\x01", NULL};
	struct err e = {{0}, 0};
	const char *path = path_in("all.safetensors");
	CHECK(st_write(path, outs, N_OUT, meta, &e) == 0, "write: %s", e.msg);
	struct safetensors *st = st_open(path, &e);
	CHECK(st, "open: %s", e.msg);
	if (!st)
		return;
	CHECK(st_n_tensors(st) == N_OUT, "%" PRId64 " tensors", st_n_tensors(st));
	for (int64_t i = 1; i < st_n_tensors(st); i++)
		CHECK(strcmp(st_tensor(st, i - 1)->name, st_tensor(st, i)->name) < 0, "not sorted at %" PRId64, i);
	CHECK(!st_tensor(st, -1) && !st_tensor(st, N_OUT), "out of range tensor");
	for (int i = 0; i < N_OUT; i++) {
		const struct st_tensor *t = st_find(st, outs[i].name);
		CHECK(t, "%s missing", outs[i].name);
		if (!t)
			continue;
		CHECK(t->dtype == outs[i].dtype && t->n_dims == outs[i].n_dims, "%s: dtype/dims", t->name);
		CHECK(memcmp(t->shape, outs[i].shape, sizeof t->shape) == 0, "%s: shape", t->name);
		CHECK(t->nbytes == out_bytes(&outs[i]), "%s: nbytes %zu", t->name, t->nbytes);
		CHECK(t->nbytes == 0 || memcmp(t->data, outs[i].data, t->nbytes) == 0, "%s: data", t->name);
		CHECK(strcmp(t->file, path) == 0, "%s: file %s", t->name, t->file);
	}
	CHECK(!st_find(st, "nope") && !st_find(st, ""), "found a missing name");
	CHECK(st_metadata(st, "format") && strcmp(st_metadata(st, "format"), "pt") == 0, "metadata format");
	CHECK(st_metadata(st, "note") && strcmp(st_metadata(st, "note"), meta[3]) == 0, "metadata with escapes");
	CHECK(!st_metadata(st, "absent"), "absent metadata");
	st_close(st);
}

/* The exact bytes the Python library writes for the same tensors
 * (worked out by hand from its serializer, checked against it by the ref test). */
static void test_writer_bytes(void)
{
	float b[2] = {1, 2};
	int64_t a = 7;
	uint8_t c = 1;
	struct st_out t[3] = {
		{.name = "b", .dtype = ST_F32, .n_dims = 1, .shape = {2}, .data = b},
		{.name = "a\"\t\x1f", .dtype = ST_I64, .n_dims = 0, .data = &a},
		{.name = "c", .dtype = ST_BOOL, .n_dims = 2, .shape = {1, 1}, .data = &c},
	};
	static const char *const meta[] = {"format", "pt", NULL};
	const char *want = "{\"__metadata__\":{\"format\":\"pt\"},"
			   "\"a\\\"\\t\\u001f\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]},"
			   "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
			   "\"c\":{\"dtype\":\"BOOL\",\"shape\":[1,1],\"data_offsets\":[16,17]}}";
	struct err e = {{0}, 0};
	const char *path = path_in("bytes.safetensors");
	CHECK(st_write(path, t, 3, meta, &e) == 0, "write: %s", e.msg);
	size_t n;
	uint8_t *p = read_all(path, &n);
	size_t hl = strlen(want), padded = (hl + 7) / 8 * 8;
	CHECK(p && n == 8 + padded + 17, "size %zu", n);
	if (p && n == 8 + padded + 17) {
		uint64_t len;
		memcpy(&len, p, 8);
		CHECK(len == padded, "header length %" PRIu64, len);
		CHECK(memcmp(p + 8, want, hl) == 0, "header %.*s", (int)padded, (char *)p + 8);
		for (size_t i = hl; i < padded; i++)
			CHECK(p[8 + i] == ' ', "padding byte %zu is %d", i, p[8 + i]);
		CHECK(memcmp(p + 8 + padded, &a, 8) == 0 && memcmp(p + 16 + padded, b, 8) == 0 && p[24 + padded] == 1,
		      "data");
	}
	free(p);
	/* no tensors, no metadata: "{}" and six spaces; an empty metadata list is written */
	CHECK(st_write(path, NULL, 0, NULL, &e) == 0, "write empty: %s", e.msg);
	p = read_all(path, &n);
	CHECK(p && n == 16 && memcmp(p, "\x08\0\0\0\0\0\0\0{}      ", 16) == 0, "empty file");
	free(p);
	static const char *const none[] = {NULL};
	CHECK(st_write(path, NULL, 0, none, &e) == 0, "write empty meta: %s", e.msg);
	p = read_all(path, &n);
	CHECK(p && n == 32 && memcmp(p + 8, "{\"__metadata__\":{}}     ", 24) == 0, "empty metadata");
	free(p);
}

static void test_writer_refuses(void)
{
	float x = 0;
	struct st_out t[2] = {
		{.name = "x", .dtype = ST_F32, .n_dims = 0, .data = &x},
		{.name = "x", .dtype = ST_F16, .n_dims = 0, .data = &x},
	};
	struct err e = {{0}, 0};
	const char *path = path_in("refused.safetensors");
	CHECK(st_write(path, t, 2, NULL, &e) < 0 && strstr(e.msg, "'x' given twice"), "duplicate: %s", e.msg);
	t[1].name = "__metadata__";
	CHECK(st_write(path, t, 2, NULL, &e) < 0 && strstr(e.msg, "__metadata__"), "reserved: %s", e.msg);
	t[1].name = "y";
	t[1].n_dims = 1;
	t[1].shape[0] = -1;
	CHECK(st_write(path, t, 2, NULL, &e) < 0 && strstr(e.msg, "shape[0] is -1"), "negative: %s", e.msg);
	t[1].n_dims = 9;
	CHECK(st_write(path, t, 2, NULL, &e) < 0 && strstr(e.msg, "9 dimensions"), "9 dims: %s", e.msg);
	t[1].n_dims = 0;
	t[1].name = "bad\xff";
	CHECK(st_write(path, t, 2, NULL, &e) < 0 && strstr(e.msg, "UTF-8"), "bad UTF-8: %s", e.msg);
	t[1].name = "y";
	static const char *const meta[] = {"k", "1", "k", "2", NULL};
	CHECK(st_write(path, t, 2, meta, &e) < 0 && strstr(e.msg, "'k' given twice"), "dup meta: %s", e.msg);
	CHECK(access(path, F_OK) != 0, "a refused write left a file");
	CHECK(st_write(path_in("no/such/dir.safetensors"), t, 2, NULL, &e) < 0, "write into a missing folder");
}

static void test_read_f32(void)
{
	float f32[5] = {1.5f, -2, 0, INFINITY, 3e-40f};
	double f64[3] = {1e300, -0.25, 1.0 / 3};
	uint16_t f16[3] = {f32_to_f16(0.5f), f32_to_f16(-65504), f32_to_f16(6e-8f)};
	uint16_t bf[3] = {f32_to_bf16(3.0f), f32_to_bf16(-1e30f), f32_to_bf16(1.0f / 3)};
	int32_t i32[1] = {3};
	struct st_out t[5] = {
		{.name = "f32", .dtype = ST_F32, .n_dims = 1, .shape = {5}, .data = f32},
		{.name = "f64", .dtype = ST_F64, .n_dims = 1, .shape = {3}, .data = f64},
		{.name = "f16", .dtype = ST_F16, .n_dims = 1, .shape = {3}, .data = f16},
		{.name = "bf16", .dtype = ST_BF16, .n_dims = 1, .shape = {3}, .data = bf},
		{.name = "i32", .dtype = ST_I32, .n_dims = 1, .shape = {1}, .data = i32},
	};
	struct err e = {{0}, 0};
	const char *path = path_in("f32.safetensors");
	CHECK(st_write(path, t, 5, NULL, &e) == 0, "write: %s", e.msg);
	size_t n;
	uint8_t *file = read_all(path, &n);
	/* odd offsets: every tensor of the copy is misaligned */
	uint8_t *odd = malloc(n + 1);
	memcpy(odd + 1, file, n);
	struct safetensors *st = st_open_mem(odd + 1, n, "odd", &e);
	CHECK(st, "open: %s", e.msg);
	if (st) {
		float out[5];
		const struct st_tensor *x = st_find(st, "f32");
		CHECK(st_read_f32(x, 0, 5, out, &e) == 0 && memcmp(out, f32, sizeof f32) == 0, "f32");
		CHECK(st_read_f32(x, 3, 2, out, &e) == 0 && out[0] == INFINITY && out[1] == 3e-40f, "f32 tail");
		x = st_find(st, "f64");
		CHECK(st_read_f32(x, 0, 3, out, &e) == 0 && out[0] == INFINITY && out[1] == -0.25f &&
			      out[2] == (float)(1.0 / 3),
		      "f64");
		x = st_find(st, "f16");
		CHECK(st_read_f32(x, 0, 3, out, &e) == 0 && out[0] == 0.5f && out[1] == -65504.0f &&
			      out[2] == f16_to_f32(f16[2]) && out[2] > 0,
		      "f16");
		x = st_find(st, "bf16");
		CHECK(st_read_f32(x, 1, 2, out, &e) == 0 && out[0] == bf16_to_f32(bf[1]) && out[1] == bf16_to_f32(bf[2]),
		      "bf16");
		CHECK(st_read_f32(x, 2, 2, out, &e) < 0 && strstr(e.msg, "outside"), "past the end: %s", e.msg);
		CHECK(st_read_f32(x, -1, 1, out, &e) < 0, "negative start");
		CHECK(st_read_f32(x, 3, 0, out, &e) == 0, "empty range at the end");
		x = st_find(st, "i32");
		CHECK(st_read_f32(x, 0, 1, out, &e) < 0 && strcmp(e.msg, "i32: dtype I32 is not a float type") == 0,
		      "%s", e.msg);
	}
	st_close(st);
	free(odd);
	free(file);
}

/* ---- folders ---- */

static void mkdirs(const char *name)
{
	mkdir(path_in(name), 0777);
}

static void write_tensors(const char *path, const char *const *names, int n, float base)
{
	struct st_out t[8];
	float v[8][3];
	for (int i = 0; i < n; i++) {
		for (int k = 0; k < 3; k++)
			v[i][k] = base + (float)(i * 3 + k);
		t[i] = (struct st_out){.name = names[i], .dtype = ST_F32, .n_dims = 1, .shape = {3}, .data = v[i]};
	}
	static const char *const meta[] = {"format", "pt", NULL};
	struct err e = {{0}, 0};
	if (st_write(path, t, (size_t)n, meta, &e) < 0)
		printf("    write %s: %s\n", path, e.msg);
}

static void write_text(const char *path, const char *s) { write_raw(path, s, strlen(s)); }

static void test_folder_index(void)
{
	mkdirs("sharded");
	static const char *const s1[] = {"model.embed", "model.layers.0.w"};
	static const char *const s2[] = {"lm_head", "model.layers.1.w", "model.norm"};
	write_tensors(path_in("sharded/model-00001-of-00002.safetensors"), s1, 2, 0);
	write_tensors(path_in("sharded/model-00002-of-00002.safetensors"), s2, 3, 100);
	const char *good = "{\"metadata\":{\"total_size\":60},\"weight_map\":{"
			   "\"lm_head\":\"model-00002-of-00002.safetensors\","
			   "\"model.embed\":\"model-00001-of-00002.safetensors\","
			   "\"model.layers.0.w\":\"model-00001-of-00002.safetensors\","
			   "\"model.layers.1.w\":\"model-00002-of-00002.safetensors\","
			   "\"model.norm\":\"model-00002-of-00002.safetensors\"}}";
	char index[512];
	snprintf(index, sizeof index, "%s", path_in("sharded/model.safetensors.index.json"));
	write_text(index, good);
	struct err e = {{0}, 0};
	struct safetensors *st = st_open(path_in("sharded"), &e);
	CHECK(st, "open: %s", e.msg);
	if (st) {
		CHECK(st_n_tensors(st) == 5, "%" PRId64 " tensors", st_n_tensors(st));
		static const char *const order[] = {"lm_head", "model.embed", "model.layers.0.w", "model.layers.1.w",
						    "model.norm"};
		for (int i = 0; i < 5 && i < st_n_tensors(st); i++)
			CHECK(strcmp(st_tensor(st, i)->name, order[i]) == 0, "tensor %d is %s", i, st_tensor(st, i)->name);
		const struct st_tensor *t = st_find(st, "model.norm");
		float v[3];
		CHECK(t && st_read_f32(t, 0, 3, v, &e) == 0 && v[0] == 106 && v[2] == 108, "model.norm values");
		CHECK(t && strstr(t->file, "model-00002-of-00002.safetensors"), "model.norm file");
		CHECK(st_metadata(st, "format") && !strcmp(st_metadata(st, "format"), "pt"), "metadata of the first shard");
	}
	st_close(st);

	/* the index places a name in the wrong shard */
	char *bad = strdup(good);
	char *p = strstr(bad, "\"lm_head\":\"model-00002");
	p[strlen("\"lm_head\":\"model-0000")] = '1';
	write_text(index, bad);
	st = st_open(path_in("sharded"), &e);
	CHECK(!st && strstr(e.msg, "tensor 'lm_head'") && strstr(e.msg, "model.safetensors.index.json"),
	      "wrong shard: %s", e.msg);
	st_close(st);
	free(bad);

	/* the index lists a name no shard holds */
	bad = malloc(strlen(good) + 100);
	strcpy(bad, good);
	strcpy(bad + strlen(bad) - 2, ",\"ghost\":\"model-00001-of-00002.safetensors\"}}");
	write_text(index, bad);
	st = st_open(path_in("sharded"), &e);
	CHECK(!st && strstr(e.msg, "tensor 'ghost'") && strstr(e.msg, "does not hold it"), "ghost: %s", e.msg);
	st_close(st);
	free(bad);

	/* a shard holds a name the index does not list */
	write_text(index, "{\"weight_map\":{\"lm_head\":\"model-00002-of-00002.safetensors\","
			  "\"model.embed\":\"model-00001-of-00002.safetensors\","
			  "\"model.layers.1.w\":\"model-00002-of-00002.safetensors\","
			  "\"model.norm\":\"model-00002-of-00002.safetensors\"}}");
	st = st_open(path_in("sharded"), &e);
	CHECK(!st && strstr(e.msg, "tensor 'model.layers.0.w'") && strstr(e.msg, "not in the index"), "unlisted: %s",
	      e.msg);
	st_close(st);

	/* a shard file that is missing, a path that leaves the folder, no weight_map */
	write_text(index, "{\"weight_map\":{\"x\":\"model-00003.safetensors\"}}");
	st = st_open(path_in("sharded"), &e);
	CHECK(!st && strstr(e.msg, "model-00003.safetensors"), "missing shard: %s", e.msg);
	st_close(st);
	write_text(index, "{\"weight_map\":{\"x\":\"../all.safetensors\"}}");
	st = st_open(path_in("sharded"), &e);
	CHECK(!st && strstr(e.msg, "not a file in the folder"), "escaping shard: %s", e.msg);
	st_close(st);
	write_text(index, "{\"weight_map\":[]}");
	st = st_open(path_in("sharded"), &e);
	CHECK(!st && strstr(e.msg, "weight_map"), "no weight_map: %s", e.msg);
	st_close(st);
	write_text(index, "{\"weight_map\":{");
	st = st_open(path_in("sharded"), &e);
	CHECK(!st && strstr(e.msg, "bad JSON"), "bad index JSON: %s", e.msg);
	st_close(st);

	/* a same name in two shards, both listed (the index can only place it once) */
	static const char *const s3[] = {"model.embed"};
	write_tensors(path_in("sharded/model-00002-of-00002.safetensors"), s3, 1, 0);
	write_text(index, good);
	st = st_open(path_in("sharded"), &e);
	CHECK(!st && strstr(e.msg, "model.embed"), "name in two shards: %s", e.msg);
	st_close(st);
}

static void test_folder_single(void)
{
	static const char *const names[] = {"w"};
	struct err e = {{0}, 0};
	mkdirs("one");
	write_tensors(path_in("one/adapter_model.safetensors"), names, 1, 5);
	struct safetensors *st = st_open(path_in("one"), &e);
	CHECK(st && st_n_tensors(st) == 1 && strstr(st_tensor(st, 0)->file, "adapter_model"), "only file: %s", e.msg);
	st_close(st);
	write_tensors(path_in("one/other.safetensors"), names, 1, 5);
	st = st_open(path_in("one"), &e);
	CHECK(!st && strstr(e.msg, "adapter_model.safetensors, other.safetensors"), "two files: %s", e.msg);
	st_close(st);
	write_tensors(path_in("one/model.safetensors"), names, 1, 9);
	st = st_open(path_in("one"), &e);
	CHECK(st && strstr(st_tensor(st, 0)->file, "/model.safetensors"), "model.safetensors first: %s", e.msg);
	st_close(st);
	mkdirs("empty");
	st = st_open(path_in("empty"), &e);
	CHECK(!st && strstr(e.msg, "no .safetensors file"), "empty folder: %s", e.msg);
	st_close(st);
	st = st_open(path_in("absent"), &e);
	CHECK(!st && strstr(e.msg, "absent"), "missing path: %s", e.msg);
	st_close(st);
	write_raw(path_in("zero.safetensors"), "", 0);
	st = st_open(path_in("zero.safetensors"), &e);
	CHECK(!st && strstr(e.msg, "too short"), "empty file: %s", e.msg);
	st_close(st);
}

/* ---- broken files ---- */

static uint8_t *valid_image(size_t *n)
{
	make_outs();
	static const char *const meta[] = {"format", "pt", NULL};
	struct err e = {{0}, 0};
	const char *path = path_in("valid.safetensors");
	if (st_write(path, outs, N_OUT, meta, &e) < 0)
		return NULL;
	return read_all(path, n);
}

static void test_truncations(void)
{
	size_t n;
	uint8_t *p = valid_image(&n);
	CHECK(p, "no valid file");
	if (!p)
		return;
	struct err e = {{0}, 0};
	struct safetensors *st = st_open_mem(p, n, "t.st", &e);
	CHECK(st, "the whole file: %s", e.msg);
	st_close(st);
	int accepted = 0;
	for (size_t len = 0; len < n; len++) {
		uint8_t *copy = malloc(len + 1); /* exact size, so ASan sees any read past it */
		memcpy(copy, p, len);
		st = st_open_mem(copy, len, "t.st", &e);
		if (st)
			accepted++;
		else if (strncmp(e.msg, "t.st: ", 6) != 0)
			CHECK(0, "length %zu: message \"%s\"", len, e.msg);
		st_close(st);
		free(copy);
	}
	/* only the trailing zero-size tensors could make a shorter file valid, and there are none at the end */
	CHECK(accepted == 0, "%d truncations accepted", accepted);
	/* and one byte more */
	uint8_t *longer = malloc(n + 1);
	memcpy(longer, p, n);
	longer[n] = 0;
	REFUSED_BUF(longer, n + 1, "1 bytes after the last tensor");
	free(longer);
	free(p);
}

static void test_byte_flips(void)
{
	size_t n;
	uint8_t *p = valid_image(&n);
	if (!p) {
		CHECK(0, "no valid file");
		return;
	}
	uint64_t hl;
	memcpy(&hl, p, 8);
	int refused = 0, accepted = 0;
	uint64_t seed = test_seed;
	for (int k = 0; k < 3000; k++) {
		uint8_t *copy = malloc(n);
		memcpy(copy, p, n);
		int flips = 1 + (int)(rnd() % 3);
		for (int j = 0; j < flips; j++) {
			size_t at = rnd() % (8 + hl);
			copy[at] = rnd() % 4 ? (uint8_t)(copy[at] ^ (1u << (rnd() % 8))) : (uint8_t)rnd();
		}
		struct err e = {{0}, 0};
		struct safetensors *st = st_open_mem(copy, n, "t.st", &e);
		if (st) {
			accepted++;
			float v[4];
			for (int64_t i = 0; i < st_n_tensors(st); i++) {
				const struct st_tensor *t = st_tensor(st, i);
				volatile uint8_t sink = 0;
				for (size_t b = 0; b < t->nbytes; b++)
					sink ^= ((const uint8_t *)t->data)[b];
				if (t->n_elems >= 4)
					st_read_f32(t, t->n_elems - 4, 4, v, &e);
			}
		} else {
			refused++;
			CHECK(strncmp(e.msg, "t.st: ", 6) == 0 && strlen(e.msg) > 8, "flip %d (seed %" PRIu64 "): \"%s\"",
			      k, seed, e.msg);
		}
		st_close(st);
		free(copy);
	}
	/* a flip inside a name or a metadata value can leave a valid file; most cannot */
	CHECK(refused > 2000, "only %d of 3000 refused (seed %" PRIu64 ")", refused, seed);
	printf("    # byte flips: %d refused, %d still valid\n", refused, accepted);
	free(p);
}

static void test_bad_headers(void)
{
	/* the baseline is valid */
	size_t n;
	uint8_t *p = image("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, &n);
	struct err e = {{0}, 0};
	struct safetensors *st = st_open_mem(p, n, "t.st", &e);
	CHECK(st, "baseline: %s", e.msg);
	st_close(st);
	free(p);
#define T(s) "{\"a\":{" s "}}"
	REFUSED(T("\"dtype\":\"F31\",\"shape\":[2],\"data_offsets\":[0,8]"), 8, "tensor 'a': unknown dtype 'F31'");
	REFUSED(T("\"dtype\":\"C64\",\"shape\":[1],\"data_offsets\":[0,8]"), 8, "tensor 'a': dtype C64 is not supported");
	REFUSED(T("\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]"), 8, "dtype is a JSON number");
	REFUSED(T("\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]"), 8, "shape[0] is -2");
	REFUSED(T("\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]"), 8, "shape[0] is 2.5");
	REFUSED(T("\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]"), 8, "shape[0] is a JSON string");
	REFUSED(T("\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,8]"), 8, "shape[0] is 1e+300");
	REFUSED(T("\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,8]"), 8, "overflows");
	REFUSED(T("\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]"), 8, "2.0 at byte");
	REFUSED(T("\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]"), 8, "9 dimensions");
	REFUSED(T("\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]"), 8, "shape is a JSON number");
	REFUSED(T("\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]"), 8, "hold 8 bytes, its dtype and shape need 12");
	REFUSED(T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]"), 8, "run past the end of the data (8 bytes)");
	REFUSED(T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]"), 8, "end before they begin");
	REFUSED(T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]"), 8, "not an array of two integers");
	REFUSED(T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,-8]"), 8, "data_offsets[1] is -8");
	REFUSED(T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"extra\":1"), 8, "unknown key 'extra'");
	REFUSED(T("\"dtype\":\"F32\",\"shape\":[2]"), 8, "lacks 'data_offsets'");
	REFUSED(T("\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]"), 8,
		"tensor 'a': key 'dtype' appears twice");
	REFUSED("{\"a\":[1]}", 0, "tensor 'a': entry is a JSON array");
	REFUSED("[]", 0, "header is a JSON array, not an object");
	REFUSED("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
		"\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
		8, "tensor 'a': appears twice");
	REFUSED("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
		"\"\\u0061\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
		8, "tensor 'a': appears twice");
	/* names escaped as UTF-8 of 2, 3 and 4 bytes (a surrogate pair) are the raw ones */
	REFUSED("{\"\u00e9\u20ac\U0001F642\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
		"\"\\u00e9\\u20ac\\ud83d\\ude42\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
		8, "tensor '\u00e9\u20ac\U0001F642': appears twice");
	REFUSED("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
		"\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
		12, "tensor 'b': its data [4, 12) overlaps tensor 'a'");
	REFUSED("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
		"\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
		12, "tensor 'b': a hole of 4 bytes");
	REFUSED("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "tensor 'a': a hole of 4 bytes");
	REFUSED("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "4 bytes after the last tensor");
	REFUSED("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
		"\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
		8, "tensor 'z'");
	REFUSED("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "empty name");
	REFUSED("{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "NUL character");
	REFUSED("{\"__metadata__\":{\"k\":1}}", 0, "__metadata__: value of 'k' is a JSON number");
	REFUSED("{\"__metadata__\":[]}", 0, "__metadata__ is a JSON array");
	REFUSED("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, "__metadata__: key 'k' appears twice");
	REFUSED("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", 4, "bad JSON");
	REFUSED("{\"a\":{\"dtype\":\"F32\",\"shape\":[nan],\"data_offsets\":[0,4]}}", 4, "bad JSON");
	REFUSED("{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", 4, "bad JSON");
	REFUSED("{\"a\\ud800\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "surrogate");
	REFUSED("{\"a\tb\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "control character");
	REFUSED("{\"a\":{\"dtype\":\"F32\",\"shape\":[[[[[[[[[1]]]]]]]]],\"data_offsets\":[0,4]}}", 4, "bad JSON");
	REFUSED("{\"a\":{\"dtype\":\"F32\"", 0, "bad JSON");
	REFUSED("", 0, "bad JSON");
	/* NUL and bad UTF-8 inside the JSON */
	static const char nul[] = "{\"a\0\":{}}";
	uint64_t len = sizeof nul - 1;
	uint8_t buf[64];
	memcpy(buf, &len, 8);
	memcpy(buf + 8, nul, len);
	REFUSED_BUF(buf, 8 + len, "NUL byte");
	REFUSED("{\"a\xc3\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "not valid UTF-8");
	/* the length field */
	memset(buf, 0, sizeof buf);
	REFUSED_BUF(buf, 7, "too short");
	len = 100;
	memcpy(buf, &len, 8);
	memcpy(buf + 8, "{}", 2);
	REFUSED_BUF(buf, 10, "header length 100 runs past the end of the file (10 bytes)");
	len = UINT64_MAX;
	memcpy(buf, &len, 8);
	REFUSED_BUF(buf, 10, "over the limit");
	len = 0;
	memcpy(buf, &len, 8);
	REFUSED_BUF(buf, 8, "bad JSON");
	/* zero-size tensors at the start and the end, spaces around: valid */
	p = image("  {\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]},"
		  "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
		  "\"z\":{\"dtype\":\"BOOL\",\"shape\":[4,0],\"data_offsets\":[8,8]},\"__metadata__\":{}}   ",
		  8, &n);
	st = st_open_mem(p, n, "t.st", &e);
	CHECK(st && st_n_tensors(st) == 3 && st_find(st, "z")->n_elems == 0, "zero-size tensors: %s", e.msg);
	st_close(st);
	free(p);
	/* NULL and empty inputs */
	st = st_open_mem(NULL, 0, "t.st", &e);
	CHECK(!st && strstr(e.msg, "too short"), "NULL buffer: %s", e.msg);
#undef T
}

int main(void)
{
	const char *s = getenv("TEST_SEED");
	uint64_t seed = s ? strtoull(s, NULL, 10) : 12345;
	rng_state = test_seed = seed;
	if (!mkdtemp(tmpdir)) {
		printf("not ok - setup: mkdtemp\n");
		return 1;
	}
	RUN(test_dtype_names);
	RUN(test_roundtrip);
	RUN(test_writer_bytes);
	RUN(test_writer_refuses);
	RUN(test_read_f32);
	RUN(test_folder_index);
	RUN(test_folder_single);
	RUN(test_truncations);
	RUN(test_byte_flips);
	RUN(test_bad_headers);
	for (int i = 0; i < N_OUT; i++)
		free(out_data[i]);
	char cmd[600];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		printf("    # could not remove %s\n", tmpdir);
	if (check_failed_cases)
		printf("    # seed %" PRIu64 " (TEST_SEED)\n", seed);
	return check_done();
}
