/* test_gguf: the GGUF reader against files this test writes on purpose —
 * valid ones (v2 and v3, every value type, custom alignment) and broken ones
 * (bad magic and versions, every truncation of a small file, huge counts and
 * lengths, duplicates, tensors out of range, misaligned or overlapping). Each
 * broken file must give an error naming the problem, never a crash; the ASan
 * build of this test makes "never a crash" checkable. The last cases load
 * tokenizers from small GGUFs (lib/tokenizer_gguf.c); the comparison with
 * llama.cpp on real files is tests/ref/test_tokenizer_gguf.py. */
#include <inttypes.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "gguf.h"
#include "tokenizer.h"

/* ---- a tiny GGUF writer ---- */

struct buf {
	uint8_t *p;
	size_t n, cap;
};

static void put(struct buf *b, const void *d, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		if (!b->p)
			abort();
	}
	memcpy(b->p + b->n, d, n);
	b->n += n;
}
static void put_u8(struct buf *b, uint8_t v) { put(b, &v, 1); }
static void put_u32(struct buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(struct buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(struct buf *b, const char *s)
{
	put_u64(b, strlen(s));
	put(b, s, strlen(s));
}
static void put_pad(struct buf *b, size_t align)
{
	while (b->n % align)
		put_u8(b, 0);
}

static void header(struct buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
	put(b, "GGUF", 4);
	put_u32(b, version);
	put_u64(b, n_tensors);
	put_u64(b, n_kv);
}
static void kv_u32(struct buf *b, const char *k, uint32_t v)
{
	put_str(b, k);
	put_u32(b, GGUF_TYPE_UINT32);
	put_u32(b, v);
}
static void kv_str(struct buf *b, const char *k, const char *v)
{
	put_str(b, k);
	put_u32(b, GGUF_TYPE_STRING);
	put_str(b, v);
}
static void tensor_info(struct buf *b, const char *name, uint32_t n_dims, const int64_t *ne, uint32_t type,
			uint64_t offset)
{
	put_str(b, name);
	put_u32(b, n_dims);
	for (uint32_t i = 0; i < n_dims; i++)
		put_u64(b, (uint64_t)ne[i]);
	put_u32(b, type);
	put_u64(b, offset);
}

/* The valid reference file: every value type and three tensors. */
static const int64_t ne_a[2] = {4, 3};  /* F32, 48 bytes */
static const int64_t ne_b[1] = {64};    /* Q8_0, 2 blocks = 68 bytes */
static const int64_t ne_c[3] = {256, 1, 2}; /* Q4_K, 2 blocks = 288 bytes */

static size_t pad_to(size_t n, size_t a) { return (n + a - 1) / a * a; }

static void make_valid(struct buf *b, uint32_t version, uint32_t align)
{
	b->n = 0;
	int with_align = align != GGUF_DEFAULT_ALIGNMENT;
	header(b, version, 3, 14 + with_align);
	put_str(b, "t.u8"); put_u32(b, GGUF_TYPE_UINT8); put_u8(b, 200);
	put_str(b, "t.i8"); put_u32(b, GGUF_TYPE_INT8); put_u8(b, (uint8_t)-5);
	put_str(b, "t.u16"); put_u32(b, GGUF_TYPE_UINT16); { uint16_t v = 60000; put(b, &v, 2); }
	put_str(b, "t.i16"); put_u32(b, GGUF_TYPE_INT16); { int16_t v = -300; put(b, &v, 2); }
	kv_u32(b, "t.u32", 4000000000u);
	put_str(b, "t.i32"); put_u32(b, GGUF_TYPE_INT32); { int32_t v = -7; put(b, &v, 4); }
	put_str(b, "t.f32"); put_u32(b, GGUF_TYPE_FLOAT32); { float v = 1.5f; put(b, &v, 4); }
	put_str(b, "t.bool"); put_u32(b, GGUF_TYPE_BOOL); put_u8(b, 1);
	kv_str(b, "general.name", "tiny");
	put_str(b, "t.u64"); put_u32(b, GGUF_TYPE_UINT64); put_u64(b, UINT64_MAX);
	put_str(b, "t.i64"); put_u32(b, GGUF_TYPE_INT64); put_u64(b, (uint64_t)INT64_MIN);
	put_str(b, "t.f64"); put_u32(b, GGUF_TYPE_FLOAT64); { double v = -2.25; put(b, &v, 8); }
	put_str(b, "t.strs"); put_u32(b, GGUF_TYPE_ARRAY); put_u32(b, GGUF_TYPE_STRING); put_u64(b, 3);
	put_str(b, "a"); put_u64(b, 0); put_u64(b, 3); put(b, "x\0y", 3);
	put_str(b, "t.i32s"); put_u32(b, GGUF_TYPE_ARRAY); put_u32(b, GGUF_TYPE_INT32); put_u64(b, 5);
	for (int32_t i = 0; i < 5; i++) { int32_t v = i * 10 - 20; put(b, &v, 4); }
	if (with_align)
		kv_u32(b, "general.alignment", align);
	size_t off_a = 0, off_b = pad_to(48, align), off_c = off_b + pad_to(68, align);
	tensor_info(b, "a", 2, ne_a, GGML_TYPE_F32, off_a);
	tensor_info(b, "b", 1, ne_b, GGML_TYPE_Q8_0, off_b);
	tensor_info(b, "blk.0.c", 3, ne_c, GGML_TYPE_Q4_K, off_c);
	put_pad(b, align);
	size_t data = b->n;
	for (size_t i = 0; i < off_c + 288; i++)
		put_u8(b, (uint8_t)(i * 7));
	(void)data;
}

static struct gguf *open_buf(const struct buf *b, struct err *e)
{
	return gguf_open_mem(b->p, b->n, "t.gguf", e);
}

/* Expects b to be refused with a message holding want. */
#define REFUSED(b, want)                                                                              \
	do {                                                                                          \
		struct err e_ = {{0}, 0};                                                             \
		struct gguf *g_ = open_buf(b, &e_);                                                   \
		CHECK(!g_, "accepted a broken file (wanted \"%s\")", want);                           \
		gguf_close(g_);                                                                       \
		CHECK(!g_ || strstr(e_.msg, want), "message \"%s\" lacks \"%s\"", e_.msg, want);     \
		CHECK(g_ || strncmp(e_.msg, "t.gguf: ", 8) == 0, "message \"%s\" does not name the file", e_.msg); \
	} while (0)

/* ---- valid files ---- */

static void check_valid(uint32_t version, uint32_t align)
{
	struct buf b = {0};
	make_valid(&b, version, align);
	struct err e = {{0}, 0};
	struct gguf *g = open_buf(&b, &e);
	CHECK(g, "v%u align %u: %s", version, align, e.msg);
	if (!g) {
		free(b.p);
		return;
	}
	CHECK(gguf_version(g) == version, "version %u", gguf_version(g));
	CHECK(gguf_alignment(g) == align, "alignment %zu", gguf_alignment(g));
	CHECK(gguf_data_offset(g) % align == 0, "data offset %" PRIu64, gguf_data_offset(g));
	CHECK(gguf_n_kv(g) == 14 + (align != 32), "n_kv %" PRId64, gguf_n_kv(g));
	CHECK(gguf_find_key(g, "t.u8") == 0 && gguf_find_key(g, "t.i32s") == 13, "key order");
	CHECK(gguf_find_key(g, "nope") == -1, "missing key found");
	CHECK(strcmp(gguf_kv_key(g, 8), "general.name") == 0, "key 8 is %s", gguf_kv_key(g, 8));

	uint32_t u32;
	uint64_t u64;
	int64_t i64;
	double f;
	int bo;
	CHECK(gguf_get_u32(g, "t.u8", &u32, &e) == 0 && u32 == 200, "u8 as u32: %s", e.msg);
	CHECK(gguf_get_u32(g, "t.u16", &u32, &e) == 0 && u32 == 60000, "u16 as u32");
	CHECK(gguf_get_u32(g, "t.u32", &u32, &e) == 0 && u32 == 4000000000u, "u32");
	CHECK(gguf_get_u32(g, "t.i8", &u32, &e) == -1 && strstr(e.msg, "does not fit"), "i8 -5 as u32: %s", e.msg);
	CHECK(gguf_get_u32(g, "t.u64", &u32, &e) == -1 && strstr(e.msg, "t.u64"), "u64 max as u32: %s", e.msg);
	CHECK(gguf_get_u64(g, "t.u64", &u64, &e) == 0 && u64 == UINT64_MAX, "u64");
	CHECK(gguf_get_i64(g, "t.i64", &i64, &e) == 0 && i64 == INT64_MIN, "i64 min");
	CHECK(gguf_get_i64(g, "t.i16", &i64, &e) == 0 && i64 == -300, "i16");
	CHECK(gguf_get_i64(g, "t.i32", &i64, &e) == 0 && i64 == -7, "i32");
	CHECK(gguf_get_i64(g, "t.u64", &i64, &e) == -1, "u64 max as i64");
	CHECK(gguf_get_u64(g, "t.i64", &u64, &e) == -1 && strstr(e.msg, "negative"), "i64 min as u64: %s", e.msg);
	CHECK(gguf_get_f64(g, "t.f32", &f, &e) == 0 && f == 1.5, "f32");
	CHECK(gguf_get_f64(g, "t.f64", &f, &e) == 0 && f == -2.25, "f64");
	CHECK(gguf_get_f64(g, "t.u8", &f, &e) == -1 && strstr(e.msg, "type u8, expected f32 or f64"), "%s", e.msg);
	CHECK(gguf_get_bool(g, "t.bool", &bo, &e) == 0 && bo == 1, "bool");
	CHECK(gguf_get_u32(g, "t.bool", &u32, &e) == -1, "bool as u32 accepted");
	CHECK(gguf_get_u32(g, "absent", &u32, &e) == -1 && strcmp(e.msg, "t.gguf: key 'absent' is missing") == 0,
	      "%s", e.msg);

	const char *s;
	size_t len;
	CHECK(gguf_get_str(g, "general.name", &s, &len, &e) == 0 && len == 4 && strcmp(s, "tiny") == 0, "str");
	CHECK(gguf_get_str(g, "t.u8", &s, &len, &e) == -1 &&
		      strcmp(e.msg, "t.gguf: key 't.u8': type u8, expected string") == 0,
	      "%s", e.msg);
	CHECK(gguf_get_arr_n(g, "t.strs", GGUF_TYPE_STRING, &e) == 3, "arr n");
	CHECK(gguf_get_arr_n(g, "t.strs", GGUF_TYPE_COUNT, &e) == 3, "arr n any");
	CHECK(gguf_get_arr_n(g, "t.strs", GGUF_TYPE_INT32, &e) == -1 &&
		      strstr(e.msg, "type array of string, expected array of i32"),
	      "%s", e.msg);
	s = gguf_get_arr_str(g, "t.strs", 0, &len);
	CHECK(s && len == 1 && memcmp(s, "a", 1) == 0, "strs[0]");
	s = gguf_get_arr_str(g, "t.strs", 1, &len);
	CHECK(s && len == 0, "strs[1] empty");
	s = gguf_get_arr_str(g, "t.strs", 2, &len);
	CHECK(s && len == 3 && memcmp(s, "x\0y", 3) == 0, "strs[2] with NUL");
	CHECK(!gguf_get_arr_str(g, "t.strs", 3, &len), "strs[3] out of range");
	CHECK(!gguf_get_arr_str(g, "t.i32s", 0, &len), "i32s as strings");
	uint64_t n;
	const int32_t *iv = gguf_get_arr_data(g, "t.i32s", GGUF_TYPE_INT32, &n, &e);
	CHECK(iv && n == 5 && iv[0] == -20 && iv[4] == 20, "i32 array");
	CHECK(iv && ((uintptr_t)iv % 4) == 0, "i32 array not aligned");
	CHECK(!gguf_get_arr_data(g, "t.strs", GGUF_TYPE_STRING, &n, &e), "string array as data");
	CHECK(gguf_kv_type(g, 12) == GGUF_TYPE_ARRAY && gguf_kv_arr_type(g, 12) == GGUF_TYPE_STRING &&
		      gguf_kv_arr_n(g, 12) == 3,
	      "kv 12 type");

	CHECK(gguf_n_tensors(g) == 3, "n_tensors");
	const struct gguf_tensor *t = gguf_tensor(g, 0);
	CHECK(t && strcmp(t->name, "a") == 0 && t->n_dims == 2 && t->ne[0] == 4 && t->ne[1] == 3 && t->ne[2] == 1 &&
		      t->type == GGML_TYPE_F32 && t->nbytes == 48,
	      "tensor a");
	CHECK(t && (const uint8_t *)t->data == b.p + gguf_data_offset(g), "tensor a data");
	t = gguf_tensor(g, 1);
	CHECK(t && t->type == GGML_TYPE_Q8_0 && t->nbytes == 68 && t->offset == pad_to(48, align), "tensor b");
	int64_t ci = gguf_find_tensor(g, "blk.0.c");
	t = gguf_tensor(g, ci);
	CHECK(ci == 2 && t && t->nbytes == 288 && t->ne[2] == 2 && t->ne[3] == 1, "tensor c");
	CHECK(t && (const uint8_t *)t->data + t->nbytes == b.p + b.n, "tensor c ends the file");
	CHECK(gguf_find_tensor(g, "blk.0") == -1 && gguf_find_tensor(g, "") == -1, "find absent tensor");
	CHECK(!gguf_tensor(g, 3) && !gguf_tensor(g, -1), "tensor out of range");
	gguf_close(g);
	free(b.p);
}

static void test_valid_v3(void) { check_valid(3, 32); }
static void test_valid_v2(void) { check_valid(2, 32); }
static void test_valid_align_64(void) { check_valid(3, 64); }
static void test_valid_align_1(void) { check_valid(3, 1); }

static void test_type_table(void)
{
	static const struct {
		uint32_t t;
		uint32_t blck, size;
	} want[] = {
		{GGML_TYPE_F32, 1, 4},     {GGML_TYPE_F16, 1, 2},     {GGML_TYPE_BF16, 1, 2},    {GGML_TYPE_Q4_0, 32, 18},
		{GGML_TYPE_Q4_1, 32, 20},  {GGML_TYPE_Q5_0, 32, 22},  {GGML_TYPE_Q5_1, 32, 24},  {GGML_TYPE_Q8_0, 32, 34},
		{GGML_TYPE_Q2_K, 256, 84}, {GGML_TYPE_Q3_K, 256, 110}, {GGML_TYPE_Q4_K, 256, 144},
		{GGML_TYPE_Q5_K, 256, 176}, {GGML_TYPE_Q6_K, 256, 210}, {GGML_TYPE_Q8_K, 256, 292},
	};
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
		const struct ggml_type_traits *tr = gguf_ggml_traits(want[i].t);
		CHECK(tr && tr->blck_size == want[i].blck && tr->type_size == want[i].size, "type %u", want[i].t);
	}
	CHECK(!gguf_ggml_traits(4) && strcmp(gguf_ggml_type_name(4), "Q4_2") == 0, "removed Q4_2");
	CHECK(!gguf_ggml_traits(GGML_TYPE_COUNT) && !gguf_ggml_type_name(1000), "out of range");
	CHECK(strcmp(gguf_type_name(GGUF_TYPE_FLOAT64), "f64") == 0 && !gguf_type_name(13), "gguf type names");
}

/* The same file through the path API, and the path errors. */
static void test_open_file(void)
{
	char path[] = "/tmp/test_gguf_XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0, "mkstemp");
	if (fd < 0)
		return;
	struct buf b = {0};
	make_valid(&b, 3, 32);
	CHECK(write(fd, b.p, b.n) == (ssize_t)b.n, "write");
	struct err e = {{0}, 0};
	struct gguf *g = gguf_open(path, &e);
	CHECK(g, "%s", e.msg);
	if (g) {
		CHECK(gguf_size(g) == b.n && strcmp(gguf_name(g), path) == 0, "size/name");
		const struct gguf_tensor *t = gguf_tensor(g, 2);
		CHECK(t && memcmp(t->data, b.p + (b.n - 288), 288) == 0, "mapped data");
		gguf_close(g);
	}
	CHECK(ftruncate(fd, 0) == 0, "truncate");
	g = gguf_open(path, &e);
	CHECK(!g && strstr(e.msg, "empty file"), "empty: %s", e.msg);
	gguf_close(g);
	close(fd);
	unlink(path);
	g = gguf_open(path, &e);
	CHECK(!g && strstr(e.msg, path) && strstr(e.msg, "No such file"), "missing: %s", e.msg);
	g = gguf_open("/tmp", &e);
	CHECK(!g && strstr(e.msg, "not a regular file"), "dir: %s", e.msg);
	gguf_close(NULL);
	free(b.p);
}

/* ---- broken files ---- */

static void test_bad_magic(void)
{
	struct buf b = {0};
	make_valid(&b, 3, 32);
	b.p[0] = 'g';
	REFUSED(&b, "not a GGUF file");
	b.n = 3;
	REFUSED(&b, "truncated: magic");
	b.n = 0;
	REFUSED(&b, "truncated");
	free(b.p);
}

static void test_bad_version(void)
{
	struct buf b = {0};
	make_valid(&b, 1, 32);
	REFUSED(&b, "version 1 is no longer supported");
	make_valid(&b, 4, 32);
	REFUSED(&b, "unsupported GGUF version 4");
	make_valid(&b, 0x03000000u, 32);
	REFUSED(&b, "byte-swapped");
	make_valid(&b, 0, 32);
	REFUSED(&b, "unsupported GGUF version 0");
	free(b.p);
}

/* Every prefix of a valid file is refused, for both versions and an odd alignment. */
static void test_truncated_everywhere(void)
{
	struct buf b = {0};
	uint32_t aligns[] = {32, 8};
	for (int v = 2; v <= 3; v++)
		for (int a = 0; a < 2; a++) {
			make_valid(&b, (uint32_t)v, aligns[a]);
			size_t full = b.n;
			for (size_t n = 0; n < full; n++) {
				b.n = n;
				struct err e = {{0}, 0};
				struct gguf *g = open_buf(&b, &e);
				CHECK(!g, "v%d: a prefix of %zu of %zu bytes was accepted", v, n, full);
				CHECK(g || strncmp(e.msg, "t.gguf: ", 8) == 0, "prefix %zu: %s", n, e.msg);
				gguf_close(g);
				if (g)
					break;
			}
		}
	free(b.p);
}

static void test_huge_counts(void)
{
	struct buf b = {0};
	header(&b, 3, 0, UINT64_MAX);
	REFUSED(&b, "key/value pairs");
	b.n = 0;
	header(&b, 3, UINT64_MAX, 0);
	REFUSED(&b, "tensors, more than");
	b.n = 0;
	header(&b, 3, (uint64_t)1 << 62, 1);
	kv_u32(&b, "k", 1);
	REFUSED(&b, "tensors, more than");
	b.n = 0;
	header(&b, 3, 0, 1);
	put_str(&b, "arr");
	put_u32(&b, GGUF_TYPE_ARRAY);
	put_u32(&b, GGUF_TYPE_UINT64);
	put_u64(&b, (uint64_t)1 << 61); /* n * 8 wraps to 0 in 64 bits */
	REFUSED(&b, "key 'arr': array of 2305843009213693952 u64 cannot fit");
	b.n = 0;
	header(&b, 3, 0, 1);
	put_str(&b, "arr");
	put_u32(&b, GGUF_TYPE_ARRAY);
	put_u32(&b, GGUF_TYPE_STRING);
	put_u64(&b, UINT64_MAX);
	REFUSED(&b, "strings cannot fit");
	free(b.p);
}

static void test_string_past_end(void)
{
	struct buf b = {0};
	header(&b, 3, 0, 1);
	put_u64(&b, 1000); /* key length */
	put(&b, "abc", 3);
	REFUSED(&b, "key/value pair #0: key: length 1000 at offset 24 runs past the end");
	b.n = 0;
	header(&b, 3, 0, 1);
	put_u64(&b, UINT64_MAX);
	REFUSED(&b, "runs past the end");
	b.n = 0;
	header(&b, 3, 0, 1);
	put_str(&b, "s");
	put_u32(&b, GGUF_TYPE_STRING);
	put_u64(&b, 10);
	put(&b, "short", 5);
	REFUSED(&b, "key 's': string: length 10");
	b.n = 0;
	header(&b, 3, 0, 1);
	put_str(&b, "tokens");
	put_u32(&b, GGUF_TYPE_ARRAY);
	put_u32(&b, GGUF_TYPE_STRING);
	put_u64(&b, 2);
	put_str(&b, "one");
	put_u64(&b, 4);
	put(&b, "tw", 2);
	REFUSED(&b, "key 'tokens': element 1: string: length 4");
	free(b.p);
}

static void test_bad_values(void)
{
	struct buf b = {0};
	header(&b, 3, 0, 1);
	put_str(&b, "k");
	put_u32(&b, 13);
	put_u32(&b, 0);
	REFUSED(&b, "key 'k': invalid value type 13");
	b.n = 0;
	header(&b, 3, 0, 1);
	put_str(&b, "nested");
	put_u32(&b, GGUF_TYPE_ARRAY);
	put_u32(&b, GGUF_TYPE_ARRAY);
	put_u64(&b, 1);
	put_u32(&b, GGUF_TYPE_UINT8);
	put_u64(&b, 0);
	REFUSED(&b, "key 'nested': arrays of arrays");
	b.n = 0;
	header(&b, 3, 0, 1);
	put_str(&b, "b");
	put_u32(&b, GGUF_TYPE_BOOL);
	put_u8(&b, 2);
	REFUSED(&b, "key 'b': bool value 2");
	b.n = 0;
	header(&b, 3, 0, 1);
	put_str(&b, "bs");
	put_u32(&b, GGUF_TYPE_ARRAY);
	put_u32(&b, GGUF_TYPE_BOOL);
	put_u64(&b, 3);
	put_u8(&b, 0);
	put_u8(&b, 1);
	put_u8(&b, 7);
	REFUSED(&b, "key 'bs': element 2: bool value 7");
	b.n = 0;
	header(&b, 3, 0, 1);
	put_str(&b, "");
	put_u32(&b, GGUF_TYPE_UINT8);
	put_u8(&b, 0);
	REFUSED(&b, "pair #0: the key is empty");
	b.n = 0;
	header(&b, 3, 0, 1);
	put_u64(&b, 3);
	put(&b, "a\0b", 3);
	put_u32(&b, GGUF_TYPE_UINT8);
	put_u8(&b, 0);
	REFUSED(&b, "pair #0: key 'a' holds a NUL byte");
	free(b.p);
}

static void test_duplicate_keys(void)
{
	struct buf b = {0};
	header(&b, 3, 0, 3);
	kv_u32(&b, "a", 1);
	kv_str(&b, "b", "x");
	kv_u32(&b, "a", 2);
	REFUSED(&b, "duplicate key 'a' (pairs #0 and #2)");
	free(b.p);
}

static void test_alignment_key(void)
{
	struct buf b = {0};
	uint32_t bad[] = {0, 3, 48};
	for (int i = 0; i < 3; i++) {
		b.n = 0;
		header(&b, 3, 0, 1);
		kv_u32(&b, "general.alignment", bad[i]);
		REFUSED(&b, "not a power of 2");
	}
	b.n = 0;
	header(&b, 3, 0, 1);
	put_str(&b, "general.alignment");
	put_u32(&b, GGUF_TYPE_UINT64);
	put_u64(&b, 32);
	REFUSED(&b, "key 'general.alignment': type u64, expected u32");
	free(b.p);
}

/* One-tensor files: name, dims, type, offset and the data size are the knobs. */
static void one_tensor(struct buf *b, const char *name, uint32_t n_dims, const int64_t *ne, uint32_t type,
		       uint64_t offset, size_t data_bytes)
{
	b->n = 0;
	header(b, 3, 1, 0);
	tensor_info(b, name, n_dims, ne, type, offset);
	put_pad(b, 32);
	for (size_t i = 0; i < data_bytes; i++)
		put_u8(b, 0);
}

static void test_tensor_errors(void)
{
	struct buf b = {0};
	int64_t ne[5] = {32, 2, 1, 1, 1};
	one_tensor(&b, "w", 2, ne, GGML_TYPE_F32, 0, 256);
	struct err e = {{0}, 0};
	struct gguf *g = open_buf(&b, &e);
	CHECK(g, "control case: %s", e.msg);
	gguf_close(g);

	one_tensor(&b, "w", 2, ne, GGML_TYPE_F32, 0, 255);
	REFUSED(&b, "tensor 'w': data [0, +256) at file offset 64 runs past the end of the file (319 bytes)");
	one_tensor(&b, "w", 2, ne, GGML_TYPE_F32, UINT64_MAX - 15, 256);
	REFUSED(&b, "tensor 'w': offset 18446744073709551600 is not a multiple");
	one_tensor(&b, "w", 2, ne, GGML_TYPE_F32, UINT64_MAX - 31, 256);
	REFUSED(&b, "runs past the end");
	one_tensor(&b, "w", 2, ne, GGML_TYPE_F32, 16, 512);
	REFUSED(&b, "tensor 'w': offset 16 is not a multiple of the alignment 32");
	one_tensor(&b, "w", 5, ne, GGML_TYPE_F32, 0, 256);
	REFUSED(&b, "tensor 'w': 5 dimensions");
	one_tensor(&b, "w", 2, ne, 99, 0, 256);
	REFUSED(&b, "tensor 'w': unknown ggml type 99");
	one_tensor(&b, "w", 2, ne, 5, 0, 256);
	REFUSED(&b, "tensor 'w': ggml type 5 (Q4_3) is no longer supported");
	one_tensor(&b, "w", 2, ne, 31, 0, 256);
	REFUSED(&b, "(Q4_0_4_4) is no longer supported");
	int64_t ne_odd[2] = {48, 1};
	one_tensor(&b, "q", 2, ne_odd, GGML_TYPE_Q4_K, 0, 256);
	REFUSED(&b, "tensor 'q': 48 elements per row is not a multiple of the Q4_K block size 256");
	int64_t ne_big[4] = {INT64_MAX / 2, 4, 1, 1};
	one_tensor(&b, "big", 2, ne_big, GGML_TYPE_F32, 0, 0);
	REFUSED(&b, "tensor 'big': shape");
	int64_t ne_bytes[2] = {INT64_MAX / 2, 1};
	one_tensor(&b, "f", 2, ne_bytes, GGML_TYPE_F32, 0, 0);
	REFUSED(&b, "tensor 'f': size in bytes overflows");
	int64_t ne_neg[1] = {-1};
	one_tensor(&b, "n", 1, ne_neg, GGML_TYPE_F32, 0, 0);
	REFUSED(&b, "tensor 'n': dimension 0 has 18446744073709551615 elements");
	one_tensor(&b, "", 2, ne, GGML_TYPE_F32, 0, 256);
	REFUSED(&b, "tensor #0: the name is empty");
	char long_name[80];
	memset(long_name, 'x', 64);
	long_name[64] = 0;
	one_tensor(&b, long_name, 2, ne, GGML_TYPE_F32, 0, 256);
	REFUSED(&b, "name of 64 bytes is too long");
	b.n = 0;
	header(&b, 3, 1, 0);
	put_u64(&b, 2);
	put(&b, "w\0", 2);
	put_u32(&b, 1);
	put_u64(&b, 8);
	put_u32(&b, GGML_TYPE_F32);
	put_u64(&b, 0);
	put_pad(&b, 32);
	put(&b, "0123456789abcdef0123456789abcdef", 32);
	REFUSED(&b, "tensor #0: name 'w' holds a NUL byte");

	/* a zero-size tensor may sit anywhere in range; one dimension 0 makes it empty */
	int64_t ne_zero[2] = {0, 5};
	one_tensor(&b, "z", 2, ne_zero, GGML_TYPE_F32, 0, 0);
	g = open_buf(&b, &e);
	CHECK(g && gguf_tensor(g, 0)->nbytes == 0, "empty tensor: %s", e.msg);
	gguf_close(g);
	free(b.p);
}

static void two_tensors(struct buf *b, const char *n1, uint64_t off1, const char *n2, uint64_t off2)
{
	int64_t ne[1] = {16}; /* 64 bytes of F32 */
	b->n = 0;
	header(b, 3, 2, 0);
	tensor_info(b, n1, 1, ne, GGML_TYPE_F32, off1);
	tensor_info(b, n2, 1, ne, GGML_TYPE_F32, off2);
	put_pad(b, 32);
	for (int i = 0; i < 256; i++)
		put_u8(b, 0);
}

static void test_duplicates_and_overlap(void)
{
	struct buf b = {0};
	two_tensors(&b, "a", 0, "a", 64);
	REFUSED(&b, "duplicate tensor name 'a' (tensors #0 and #1)");
	two_tensors(&b, "a", 0, "b", 32);
	REFUSED(&b, "tensor 'b': data [32, 96) overlaps tensor 'a' [0, 64)");
	two_tensors(&b, "a", 64, "b", 64);
	REFUSED(&b, "overlaps");
	two_tensors(&b, "a", 128, "b", 0); /* out of order but disjoint: fine */
	struct err e = {{0}, 0};
	struct gguf *g = open_buf(&b, &e);
	CHECK(g, "disjoint tensors out of order: %s", e.msg);
	gguf_close(g);
	free(b.p);
}

/* A file with metadata only may end right after it, without padding. */
static void test_no_tensors(void)
{
	struct buf b = {0};
	header(&b, 3, 0, 1);
	kv_str(&b, "general.architecture", "llama");
	struct err e = {{0}, 0};
	struct gguf *g = open_buf(&b, &e);
	CHECK(g && gguf_n_tensors(g) == 0 && gguf_data_offset(g) == b.n, "metadata-only file: %s", e.msg);
	gguf_close(g);
	b.n = 0;
	header(&b, 3, 0, 0);
	g = open_buf(&b, &e);
	CHECK(g && gguf_n_kv(g) == 0 && gguf_find_key(g, "x") == -1, "empty file: %s", e.msg);
	gguf_close(g);
	free(b.p);
}

/* Random byte changes of the valid file: accepted or refused, never a crash
 * (which the ASan build would turn into a failure). */
static void test_mutations(void)
{
	struct buf b = {0};
	make_valid(&b, 3, 32);
	uint8_t *orig = malloc(b.n);
	memcpy(orig, b.p, b.n);
	uint64_t s = 0x9e3779b97f4a7c15u;
	int accepted = 0, refused = 0;
	for (int round = 0; round < 20000; round++) {
		memcpy(b.p, orig, b.n);
		int k = 1 + (int)(s % 4);
		for (int j = 0; j < k; j++) {
			s ^= s << 13, s ^= s >> 7, s ^= s << 17;
			size_t at = (size_t)(s % b.n);
			s ^= s << 13, s ^= s >> 7, s ^= s << 17;
			b.p[at] = (s & 1) ? (uint8_t)(s >> 8) : (uint8_t)(b.p[at] ^ (1u << ((s >> 8) % 8)));
		}
		struct err e = {{0}, 0};
		struct gguf *g = open_buf(&b, &e);
		if (g) {
			accepted++;
			for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
				const struct gguf_tensor *t = gguf_tensor(g, i);
				volatile uint8_t sum = 0;
				for (size_t j = 0; j < t->nbytes; j++)
					sum += ((const uint8_t *)t->data)[j];
				(void)sum;
			}
		} else {
			refused++;
			CHECK(strncmp(e.msg, "t.gguf: ", 8) == 0, "message without the file: %s", e.msg);
		}
		gguf_close(g);
	}
	CHECK(accepted > 0 && refused > 0, "accepted %d refused %d", accepted, refused);
	free(orig);
	free(b.p);
}


/* ---- tokenizers from GGUF metadata ---- */

static void kv_bool(struct buf *b, const char *k, int v)
{
	put_str(b, k);
	put_u32(b, GGUF_TYPE_BOOL);
	put_u8(b, (uint8_t)v);
}
static void kv_strs(struct buf *b, const char *k, const char *const *v, size_t n)
{
	put_str(b, k);
	put_u32(b, GGUF_TYPE_ARRAY);
	put_u32(b, GGUF_TYPE_STRING);
	put_u64(b, n);
	for (size_t i = 0; i < n; i++)
		put_str(b, v[i]);
}
static void kv_i32s(struct buf *b, const char *k, const int32_t *v, size_t n)
{
	put_str(b, k);
	put_u32(b, GGUF_TYPE_ARRAY);
	put_u32(b, GGUF_TYPE_INT32);
	put_u64(b, n);
	put(b, v, n * 4);
}
static void kv_f32s(struct buf *b, const char *k, const float *v, size_t n)
{
	put_str(b, k);
	put_u32(b, GGUF_TYPE_ARRAY);
	put_u32(b, GGUF_TYPE_FLOAT32);
	put_u64(b, n);
	put(b, v, n * 4);
}

/* GPT-2's byte map: printable bytes stand for themselves, the others for
 * U+0100 onwards in byte order. */
static void byte_char(int byte, char out[3])
{
	int n = 0, cp = byte;
	if (!((byte >= 33 && byte <= 126) || (byte >= 161 && byte <= 172) || byte >= 174)) {
		for (int b = 0; b < byte; b++)
			if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174))
				n++;
		cp = 256 + n;
	}
	if (cp < 0x80) {
		out[0] = (char)cp;
		out[1] = 0;
	} else {
		out[0] = (char)(0xc0 | cp >> 6);
		out[1] = (char)(0x80 | (cp & 0x3f));
		out[2] = 0;
	}
}

enum { BYTE_TOKENS = 256 };
static char byte_tok[BYTE_TOKENS][3];

/* A byte-level vocabulary: the 256 bytes (id = byte), then "he" 256, "ll" 257,
 * "hell" 258, "hello" 259, "Ġw" 260, "<|end|>" 261 (control), "<user>" 262
 * (user-defined). which_bad breaks one thing on purpose; 4 makes the last
 * two "<|im_end|>" and "▁<PRE>", both normal: llama.cpp's retyping by
 * text makes them control tokens; 5 makes them empty (named "[EMPTY_id]"). */
static int write_gpt2(const char *path, const char *model, const char *pre, int which_bad)
{
	const char *toks[BYTE_TOKENS + 7];
	int32_t types[BYTE_TOKENS + 7];
	for (int i = 0; i < BYTE_TOKENS; i++) {
		byte_char(i, byte_tok[i]);
		toks[i] = byte_tok[i];
		types[i] = 1;
	}
	const char *extra[7] = {"he", "ll", "hell", "hello", "\xc4\xa0w", "<|end|>", "<user>"};
	for (int i = 0; i < 7; i++) {
		toks[BYTE_TOKENS + i] = extra[i];
		types[BYTE_TOKENS + i] = 1;
	}
	types[BYTE_TOKENS + 5] = 3;
	types[BYTE_TOKENS + 6] = 4;
	if (which_bad == 4) {
		toks[BYTE_TOKENS + 5] = "<|im_end|>", toks[BYTE_TOKENS + 6] = "\xE2\x96\x81<PRE>";
		types[BYTE_TOKENS + 5] = types[BYTE_TOKENS + 6] = 1;
	}
	if (which_bad == 5)
		toks[BYTE_TOKENS + 5] = toks[BYTE_TOKENS + 6] = "";
	if (which_bad == 1)
		toks[BYTE_TOKENS + 1] = "he"; /* a repeated token */
	const char *merges[5] = {"h e", "l l", "he ll", "hell o", "\xc4\xa0 w"};
	if (which_bad == 2)
		merges[2] = "he lx";
	struct buf b = {0};
	int n_kv = 5 + (pre != NULL) - (which_bad == 3);
	header(&b, 3, 0, (uint64_t)n_kv);
	kv_str(&b, "tokenizer.ggml.model", model);
	if (pre)
		kv_str(&b, "tokenizer.ggml.pre", pre);
	if (which_bad != 3)
		kv_strs(&b, "tokenizer.ggml.tokens", toks, BYTE_TOKENS + 7);
	kv_i32s(&b, "tokenizer.ggml.token_type", types, BYTE_TOKENS + 7);
	kv_strs(&b, "tokenizer.ggml.merges", merges, 5);
	kv_u32(&b, "tokenizer.ggml.eos_token_id", BYTE_TOKENS + 5);
	kv_bool(&b, "tokenizer.ggml.add_bos_token", 0);
	FILE *f = fopen(path, "wb");
	int ok = f && fwrite(b.p, 1, b.n, f) == b.n;
	if (f)
		fclose(f);
	free(b.p);
	return ok ? 0 : -1;
}

static int encode_ids(struct tokenizer *tk, const char *text, uint32_t *ids, size_t max)
{
	struct tok_encoding e = {0};
	struct err err = {{0}, 0};
	int n = -1;
	if (tokenizer_encode(tk, text, strlen(text), 0, &e, &err) == 0 && e.n <= max) {
		memcpy(ids, e.ids, e.n * sizeof *ids);
		n = (int)e.n;
	}
	tok_encoding_free(&e);
	return n;
}

/* tokenizer_gguf_added lists exactly the loaded tokenizer's added tokens:
 * ids, texts and which are special. */
struct added_walk {
	const struct tokenizer *tk;
	uint32_t next; /* the id after the last one seen */
	int bad, n;
};

static int added_cb(void *arg, uint32_t id, const char *s, size_t n, int special)
{
	struct added_walk *w = arg;
	for (; w->next < id; w->next++)
		if (tokenizer_is_added(w->tk, w->next))
			w->bad++; /* skipped an added token */
	const char *t = tokenizer_token(w->tk, id);
	if (!tokenizer_is_added(w->tk, id) || !t || strlen(t) != n || memcmp(t, s, n) ||
	    !tokenizer_is_special(w->tk, id) != !special)
		w->bad++;
	w->next = id + 1, w->n++;
	return 0;
}

static void check_added_walk(const char *path, const struct tokenizer *tk, int want_n)
{
	struct added_walk w = {tk, 0, 0, 0};
	struct err e = {{0}, 0};
	CHECK(tokenizer_gguf_added(path, added_cb, &w, &e) == 0, "tokenizer_gguf_added: %s", e.msg);
	for (; w.next < tokenizer_vocab_size(tk); w.next++)
		if (tokenizer_is_added(tk, w.next))
			w.bad++;
	CHECK(w.bad == 0 && w.n == want_n, "added tokens walked: %d, %d differ from the tokenizer's", w.n, w.bad);
}

/* write_gpt2's vocabulary (variant which) written to path (a mkstemps
 * pattern ending ".gguf") and loaded, or NULL with e set. */
static struct tokenizer *gpt2_loaded(char *path, int which, struct err *e)
{
	int fd = mkstemps(path, 5);
	if (fd < 0)
		return err_sys(e, "mkstemps:"), NULL;
	close(fd);
	if (write_gpt2(path, "gpt2", "gpt-2", which) < 0)
		return err_sys(e, "%s: cannot write", path), NULL;
	return tokenizer_load(path, e);
}

static void test_tokenizer_gpt2(void)
{
	char path[] = "/tmp/test_gguf_tok_XXXXXX.gguf";
	struct err e = {{0}, 0};
	struct tokenizer *tk = gpt2_loaded(path, 0, &e);
	CHECK(tk, "%s", e.msg);
	if (tk) {
		uint32_t ids[32];
		int n = encode_ids(tk, "hello world<|end|><user>", ids, 32);
		uint32_t want[] = {259, 260, 'o', 'r', 'l', 'd', 261, 262};
		CHECK(n == 8 && memcmp(ids, want, sizeof want) == 0, "encoded %d ids: %u %u %u ...", n, ids[0], ids[1],
		      ids[2]);
		CHECK(tokenizer_vocab_size(tk) == BYTE_TOKENS + 7, "vocab size %u", tokenizer_vocab_size(tk));
		CHECK(tokenizer_is_special(tk, 261) && !tokenizer_is_special(tk, 262), "control special, user-defined not");
		check_added_walk(path, tk, 2);
		char *text;
		size_t len;
		CHECK(tokenizer_decode(tk, want, 8, 1, &text, &len, &e) == 0, "decode: %s", e.msg);
		if (!e.msg[0]) {
			CHECK(strcmp(text, "hello world<user>") == 0, "decoded '%s'", text);
			free(text);
		}
		tokenizer_free(tk);
	}
	unlink(path);
}

/* Tokens made control by their text alone: tokenizer_gguf_added, which maps
 * only the tokens such a text may be, finds them as the loaded tokenizer does. */
static void test_tokenizer_retyped(void)
{
	char path[] = "/tmp/test_gguf_tok_XXXXXX.gguf";
	struct err e = {{0}, 0};
	struct tokenizer *tk = gpt2_loaded(path, 4, &e);
	CHECK(tk, "%s", e.msg);
	if (tk) {
		CHECK(tokenizer_is_special(tk, BYTE_TOKENS + 5) && tokenizer_is_special(tk, BYTE_TOKENS + 6),
		      "retyped as control");
		check_added_walk(path, tk, 2);
		tokenizer_free(tk);
	}
	unlink(path);
}

/* Empty tokens are named "[EMPTY_id]", in the loaded tokenizer and in
 * tokenizer_gguf_added's walk. */
static void test_tokenizer_empty(void)
{
	char path[] = "/tmp/test_gguf_tok_XXXXXX.gguf";
	struct err e = {{0}, 0};
	struct tokenizer *tk = gpt2_loaded(path, 5, &e);
	CHECK(tk, "%s", e.msg);
	if (tk) {
		const char *a = tokenizer_token(tk, BYTE_TOKENS + 5), *b = tokenizer_token(tk, BYTE_TOKENS + 6);
		CHECK(a && b && !strcmp(a, "[EMPTY_261]") && !strcmp(b, "[EMPTY_262]"), "named %s and %s", a ? a : "-",
		      b ? b : "-");
		check_added_walk(path, tk, 2);
		tokenizer_free(tk);
	}
	unlink(path);
}

static void tok_refused(int bad, const char *model, const char *pre, const char *want)
{
	char path[] = "/tmp/test_gguf_tok_XXXXXX.gguf";
	int fd = mkstemps(path, 5);
	if (fd < 0)
		return;
	close(fd);
	write_gpt2(path, model, pre, bad);
	struct err e = {{0}, 0};
	struct tokenizer *tk = tokenizer_load(path, &e);
	CHECK(!tk, "loaded a tokenizer that should be refused (%s)", want);
	CHECK(tk || (strstr(e.msg, want) && strstr(e.msg, path)), "message '%s' lacks '%s' or the path", e.msg, want);
	tokenizer_free(tk);
	unlink(path);
}

static void test_tokenizer_refused(void)
{
	tok_refused(0, "gpt2", "no-such-pre", "pre-tokenizer 'no-such-pre' is not supported");
	tok_refused(0, "bert", "gpt-2", "tokenizer model 'bert' is not supported");
	tok_refused(1, "gpt2", "gpt-2", "token 257 'he' repeats token 256");
	tok_refused(2, "gpt2", "gpt-2", "merge 2 'he lx': 'lx' is not a token");
	tok_refused(3, "gpt2", "gpt-2", "key 'tokenizer.ggml.tokens' is missing");
}

/* SentencePiece: <unk> <s> </s>, the 256 byte tokens, then pieces by score. */
static void test_tokenizer_spm(void)
{
	const char *toks[3 + 256 + 6];
	int32_t types[3 + 256 + 6];
	float scores[3 + 256 + 6];
	static char hex[256][7];
	toks[0] = "<unk>", toks[1] = "<s>", toks[2] = "</s>";
	types[0] = 2, types[1] = 3, types[2] = 3;
	for (int i = 0; i < 256; i++) {
		snprintf(hex[i], sizeof hex[i], "<0x%02X>", i);
		toks[3 + i] = hex[i];
		types[3 + i] = 6;
	}
	const char *pieces[6] = {"\xe2\x96\x81", "h", "e", "he", "\xe2\x96\x81h", "\xe2\x96\x81he"};
	for (int i = 0; i < 6; i++) {
		toks[259 + i] = pieces[i];
		types[259 + i] = 1;
	}
	for (int i = 0; i < 265; i++)
		scores[i] = -(float)i;
	struct buf b = {0};
	header(&b, 3, 0, 8);
	kv_str(&b, "tokenizer.ggml.model", "llama");
	kv_strs(&b, "tokenizer.ggml.tokens", toks, 265);
	kv_i32s(&b, "tokenizer.ggml.token_type", types, 265);
	kv_f32s(&b, "tokenizer.ggml.scores", scores, 265);
	kv_u32(&b, "tokenizer.ggml.bos_token_id", 1);
	kv_u32(&b, "tokenizer.ggml.eos_token_id", 2);
	kv_bool(&b, "tokenizer.ggml.add_bos_token", 1);
	kv_bool(&b, "tokenizer.ggml.add_space_prefix", 1);
	char path[] = "/tmp/test_gguf_spm_XXXXXX.gguf";
	int fd = mkstemps(path, 5);
	CHECK(fd >= 0 && write(fd, b.p, b.n) == (ssize_t)b.n, "write");
	if (fd >= 0)
		close(fd);
	free(b.p);
	struct err e = {{0}, 0};
	struct tokenizer *tk = tokenizer_load(path, &e);
	CHECK(tk, "%s", e.msg);
	if (tk) {
		uint32_t ids[16];
		/* "he he\xc3\xa9" -> "▁he▁he" + é by bytes */
		int n = encode_ids(tk, "he he\xc3\xa9", ids, 16);
		uint32_t want[] = {264, 264, 3 + 0xc3, 3 + 0xa9};
		CHECK(n == 4 && memcmp(ids, want, sizeof want) == 0, "encoded %d ids: %u %u %u %u", n, ids[0], ids[1], ids[2],
		      ids[3]);
		CHECK(tokenizer_bos_id(tk) == 1, "bos %lld", (long long)tokenizer_bos_id(tk));
		struct tok_encoding enc = {0};
		CHECK(tokenizer_encode(tk, "he", 2, 1, &enc, &e) == 0 && enc.n == 2 && enc.ids[0] == 1 && enc.ids[1] == 264,
		      "with BOS: %zu ids", enc.n);
		tok_encoding_free(&enc);
		char *text;
		size_t len;
		CHECK(tokenizer_decode(tk, want, 4, 0, &text, &len, &e) == 0, "decode: %s", e.msg);
		if (!e.msg[0]) {
			CHECK(strcmp(text, "he he\xc3\xa9") == 0, "decoded '%s'", text);
			free(text);
		}
		check_added_walk(path, tk, 3);
		tokenizer_free(tk);
	}
	unlink(path);
}

int main(void)
{
	RUN(test_valid_v3);
	RUN(test_valid_v2);
	RUN(test_valid_align_64);
	RUN(test_valid_align_1);
	RUN(test_type_table);
	RUN(test_open_file);
	RUN(test_bad_magic);
	RUN(test_bad_version);
	RUN(test_truncated_everywhere);
	RUN(test_huge_counts);
	RUN(test_string_past_end);
	RUN(test_bad_values);
	RUN(test_duplicate_keys);
	RUN(test_alignment_key);
	RUN(test_tensor_errors);
	RUN(test_duplicates_and_overlap);
	RUN(test_no_tensors);
	RUN(test_mutations);
	RUN(test_tokenizer_gpt2);
	RUN(test_tokenizer_empty);
	RUN(test_tokenizer_retyped);
	RUN(test_tokenizer_refused);
	RUN(test_tokenizer_spm);
	return check_done();
}
