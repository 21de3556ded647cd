/* gguf: the reader. The layout is described in gguf.h.
 *
 * Parsing walks the file once with a cursor that refuses every read past the
 * end, so no length taken from the file is trusted before it is compared with
 * the bytes that remain. Counts are checked against the least room their
 * items can take (a string needs its 8-byte length, a tensor info at least
 * 24 bytes) before anything is allocated for them, which bounds memory by the
 * file's size whatever the header claims.
 *
 * Strings are copied, NUL-terminated, into an arena freed with the reader;
 * numeric arrays are copied into aligned buffers, because values inside the
 * file sit at any byte offset and reading them in place would be a misaligned
 * access. Tensor data is not copied: gguf_tensor() points into the mapping.
 */
#include "gguf.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "wholefile.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c reads little-endian values by copying them; port the byte order first"
#endif

/* ---- type tables ---- */

/* Block sizes and bytes per block, from ggml's block_* structures. A NULL
 * name is a number ggml never used; a zero type_size a type it removed. */
static const struct ggml_type_traits ggml_traits[GGML_TYPE_COUNT] = {
	[GGML_TYPE_F32] = {"F32", 1, 4},
	[GGML_TYPE_F16] = {"F16", 1, 2},
	[GGML_TYPE_Q4_0] = {"Q4_0", 32, 18},
	[GGML_TYPE_Q4_1] = {"Q4_1", 32, 20},
	[4] = {"Q4_2", 0, 0},
	[5] = {"Q4_3", 0, 0},
	[GGML_TYPE_Q5_0] = {"Q5_0", 32, 22},
	[GGML_TYPE_Q5_1] = {"Q5_1", 32, 24},
	[GGML_TYPE_Q8_0] = {"Q8_0", 32, 34},
	[GGML_TYPE_Q8_1] = {"Q8_1", 32, 36},
	[GGML_TYPE_Q2_K] = {"Q2_K", 256, 84},
	[GGML_TYPE_Q3_K] = {"Q3_K", 256, 110},
	[GGML_TYPE_Q4_K] = {"Q4_K", 256, 144},
	[GGML_TYPE_Q5_K] = {"Q5_K", 256, 176},
	[GGML_TYPE_Q6_K] = {"Q6_K", 256, 210},
	[GGML_TYPE_Q8_K] = {"Q8_K", 256, 292},
	[GGML_TYPE_IQ2_XXS] = {"IQ2_XXS", 256, 66},
	[GGML_TYPE_IQ2_XS] = {"IQ2_XS", 256, 74},
	[GGML_TYPE_IQ3_XXS] = {"IQ3_XXS", 256, 98},
	[GGML_TYPE_IQ1_S] = {"IQ1_S", 256, 50},
	[GGML_TYPE_IQ4_NL] = {"IQ4_NL", 32, 18},
	[GGML_TYPE_IQ3_S] = {"IQ3_S", 256, 110},
	[GGML_TYPE_IQ2_S] = {"IQ2_S", 256, 82},
	[GGML_TYPE_IQ4_XS] = {"IQ4_XS", 256, 136},
	[GGML_TYPE_I8] = {"I8", 1, 1},
	[GGML_TYPE_I16] = {"I16", 1, 2},
	[GGML_TYPE_I32] = {"I32", 1, 4},
	[GGML_TYPE_I64] = {"I64", 1, 8},
	[GGML_TYPE_F64] = {"F64", 1, 8},
	[GGML_TYPE_IQ1_M] = {"IQ1_M", 256, 56},
	[GGML_TYPE_BF16] = {"BF16", 1, 2},
	[31] = {"Q4_0_4_4", 0, 0},
	[32] = {"Q4_0_4_8", 0, 0},
	[33] = {"Q4_0_8_8", 0, 0},
	[GGML_TYPE_TQ1_0] = {"TQ1_0", 256, 54},
	[GGML_TYPE_TQ2_0] = {"TQ2_0", 256, 66},
	[36] = {"IQ4_NL_4_4", 0, 0},
	[37] = {"IQ4_NL_4_8", 0, 0},
	[38] = {"IQ4_NL_8_8", 0, 0},
	[GGML_TYPE_MXFP4] = {"MXFP4", 32, 17},
	[GGML_TYPE_NVFP4] = {"NVFP4", 64, 36},
	[GGML_TYPE_Q1_0] = {"Q1_0", 128, 18},
	[GGML_TYPE_Q2_0] = {"Q2_0", 64, 18},
};

const struct ggml_type_traits *gguf_ggml_traits(uint32_t type)
{
	if (type >= GGML_TYPE_COUNT || !ggml_traits[type].name || ggml_traits[type].type_size == 0)
		return NULL;
	return &ggml_traits[type];
}

const char *gguf_ggml_type_name(uint32_t type)
{
	return type < GGML_TYPE_COUNT ? ggml_traits[type].name : NULL;
}

static const char *const gguf_type_names[GGUF_TYPE_COUNT] = {
	[GGUF_TYPE_UINT8] = "u8",     [GGUF_TYPE_INT8] = "i8",	   [GGUF_TYPE_UINT16] = "u16",
	[GGUF_TYPE_INT16] = "i16",    [GGUF_TYPE_UINT32] = "u32",  [GGUF_TYPE_INT32] = "i32",
	[GGUF_TYPE_FLOAT32] = "f32",  [GGUF_TYPE_BOOL] = "bool",   [GGUF_TYPE_STRING] = "string",
	[GGUF_TYPE_ARRAY] = "array",  [GGUF_TYPE_UINT64] = "u64",  [GGUF_TYPE_INT64] = "i64",
	[GGUF_TYPE_FLOAT64] = "f64",
};

const char *gguf_type_name(uint32_t type)
{
	return type < GGUF_TYPE_COUNT ? gguf_type_names[type] : NULL;
}

/* Bytes of one scalar of type t; 0 for string and array. */
static size_t gguf_type_size(enum gguf_type t)
{
	switch (t) {
	case GGUF_TYPE_UINT8:
	case GGUF_TYPE_INT8:
	case GGUF_TYPE_BOOL:
		return 1;
	case GGUF_TYPE_UINT16:
	case GGUF_TYPE_INT16:
		return 2;
	case GGUF_TYPE_UINT32:
	case GGUF_TYPE_INT32:
	case GGUF_TYPE_FLOAT32:
		return 4;
	case GGUF_TYPE_UINT64:
	case GGUF_TYPE_INT64:
	case GGUF_TYPE_FLOAT64:
		return 8;
	default:
		return 0;
	}
}

static int gguf_type_is_int(enum gguf_type t)
{
	return t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_INT8 || t == GGUF_TYPE_UINT16 || t == GGUF_TYPE_INT16 ||
	       t == GGUF_TYPE_UINT32 || t == GGUF_TYPE_INT32 || t == GGUF_TYPE_UINT64 || t == GGUF_TYPE_INT64;
}

static int gguf_type_is_signed(enum gguf_type t)
{
	return t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_INT32 || t == GGUF_TYPE_INT64;
}

/* ---- the reader's state ---- */

struct gguf_str {
	const char *s;
	size_t len;
};

struct gguf_kv {
	const char *key;
	size_t key_len;
	enum gguf_type type;     /* GGUF_TYPE_ARRAY for arrays */
	enum gguf_type arr_type; /* element type; GGUF_TYPE_COUNT for scalars */
	uint64_t n;              /* element count, 1 for scalars */
	/* A scalar number: integers widened into i (signed types) or u
	 * (unsigned types and bool), floats into f. */
	int64_t i;
	uint64_t u;
	double f;
	struct gguf_str str; /* a scalar string */
	void *arr;           /* numeric array (aligned copy), or for strings uint32_t[n]: where
				each one's bytes begin, from sbase */
	const uint8_t *sbase; /* an array of strings: its first element's length */
};

struct gguf_tensor_rec {
	struct gguf_tensor t;
	size_t name_len;
};

struct arena_block {
	struct arena_block *next;
	size_t used, cap;
	char data[];
};

struct gguf {
	char *name;
	const uint8_t *base;
	uint64_t size;
	const void *map; /* set when the file was mapped by gguf_open */
	size_t map_len;
	uint32_t version;
	size_t alignment;
	uint64_t data_offset;
	int64_t n_kv;
	struct gguf_kv *kv;
	struct gguf_kv **kv_sorted; /* by key, for lookup and the duplicate check */
	int64_t n_tensors;
	struct gguf_tensor_rec *tensors;
	struct gguf_tensor_rec **t_sorted; /* by name */
	struct arena_block *arena;
};

/* An empty array still gets a non-NULL data pointer, so NULL always means failure. */
static const uint64_t empty_array[1];

static char *arena_copy(struct gguf *g, const uint8_t *src, size_t len)
{
	struct arena_block *b = g->arena;
	if (!b || b->cap - b->used < len + 1) {
		size_t cap = len + 1 > (1u << 20) ? len + 1 : (1u << 20);
		b = malloc(sizeof *b + cap);
		if (!b)
			return NULL;
		b->used = 0;
		b->cap = cap;
		b->next = g->arena;
		g->arena = b;
	}
	char *dst = b->data + b->used;
	if (len)
		memcpy(dst, src, len);
	dst[len] = '\0';
	b->used += len + 1;
	return dst;
}

/* ---- the cursor ---- */

struct rd {
	const uint8_t *p;
	uint64_t size, pos;
	struct err *err;
};

static uint64_t rd_left(const struct rd *r) { return r->size - r->pos; }

static int rd_need(struct rd *r, uint64_t n, const char *what)
{
	if (n > rd_left(r))
		return err_set(r->err, "truncated: %s needs %" PRIu64 " bytes at offset %" PRIu64
				       " but the file ends at %" PRIu64,
			       what, n, r->pos, r->size);
	return 0;
}

static int rd_bytes(struct rd *r, void *dst, size_t n, const char *what)
{
	if (rd_need(r, n, what) < 0)
		return -1;
	memcpy(dst, r->p + r->pos, n);
	r->pos += n;
	return 0;
}

static int rd_u32(struct rd *r, uint32_t *v, const char *what) { return rd_bytes(r, v, 4, what); }
static int rd_u64(struct rd *r, uint64_t *v, const char *what) { return rd_bytes(r, v, 8, what); }

/* A string: u64 length then the bytes, copied NUL-terminated into the arena. */
/* A string's length, checked against the bytes left: 0, or -1. */
static int rd_str_len(struct rd *r, uint64_t *len, const char *what)
{
	if (rd_u64(r, len, what) < 0)
		return -1;
	if (*len > rd_left(r))
		return err_set(r->err, "%s: length %" PRIu64 " at offset %" PRIu64 " runs past the end of the file (%" PRIu64
				       " bytes left)",
			       what, *len, r->pos - 8, rd_left(r));
	return 0;
}

static int rd_str(struct gguf *g, struct rd *r, struct gguf_str *out, const char *what)
{
	uint64_t len;
	if (rd_str_len(r, &len, what) < 0)
		return -1;
	char *s = arena_copy(g, r->p + r->pos, (size_t)len);
	if (!s)
		return err_sys(r->err, "out of memory:");
	out->s = s;
	out->len = (size_t)len;
	r->pos += len;
	return 0;
}

/* ---- metadata ---- */

/* Reads one scalar of a fixed-size type into kv's number fields. */
static void kv_set_number(struct gguf_kv *kv, enum gguf_type t, const uint8_t *p)
{
	switch (t) {
	case GGUF_TYPE_UINT8:
	case GGUF_TYPE_BOOL: kv->u = p[0]; break;
	case GGUF_TYPE_INT8: kv->i = (int8_t)p[0]; break;
	case GGUF_TYPE_UINT16: { uint16_t v; memcpy(&v, p, 2); kv->u = v; break; }
	case GGUF_TYPE_INT16: { int16_t v; memcpy(&v, p, 2); kv->i = v; break; }
	case GGUF_TYPE_UINT32: { uint32_t v; memcpy(&v, p, 4); kv->u = v; break; }
	case GGUF_TYPE_INT32: { int32_t v; memcpy(&v, p, 4); kv->i = v; break; }
	case GGUF_TYPE_UINT64: memcpy(&kv->u, p, 8); break;
	case GGUF_TYPE_INT64: memcpy(&kv->i, p, 8); break;
	case GGUF_TYPE_FLOAT32: { float v; memcpy(&v, p, 4); kv->f = v; break; }
	case GGUF_TYPE_FLOAT64: memcpy(&kv->f, p, 8); break;
	default: break;
	}
}

static int kv_read_value(struct gguf *g, struct rd *r, struct gguf_kv *kv)
{
	uint32_t t;
	if (rd_u32(r, &t, "value type") < 0)
		return -1;
	if (t >= GGUF_TYPE_COUNT)
		return err_set(r->err, "invalid value type %" PRIu32, t);
	kv->type = t;
	kv->arr_type = GGUF_TYPE_COUNT;
	kv->n = 1;

	if (t == GGUF_TYPE_STRING)
		return rd_str(g, r, &kv->str, "string");
	if (t != GGUF_TYPE_ARRAY) {
		uint8_t buf[8];
		if (rd_bytes(r, buf, gguf_type_size(t), gguf_type_names[t]) < 0)
			return -1;
		if (t == GGUF_TYPE_BOOL && buf[0] > 1)
			return err_set(r->err, "bool value %u is neither 0 nor 1", buf[0]);
		kv_set_number(kv, t, buf);
		return 0;
	}

	uint32_t et;
	uint64_t n;
	if (rd_u32(r, &et, "array element type") < 0 || rd_u64(r, &n, "array length") < 0)
		return -1;
	if (et == GGUF_TYPE_ARRAY)
		return err_set(r->err, "arrays of arrays are not supported");
	if (et >= GGUF_TYPE_COUNT)
		return err_set(r->err, "invalid array element type %" PRIu32, et);
	kv->arr_type = et;
	kv->n = n;

	if (et == GGUF_TYPE_STRING) {
		/* each element holds at least its 8-byte length */
		if (n > rd_left(r) / 8)
			return err_set(r->err, "array of %" PRIu64 " strings cannot fit in the %" PRIu64 " bytes left", n,
				       rd_left(r));
		/* not copied (a vocabulary's 100k tokens and merges cost milliseconds
		 * to copy): each element is found where it lies, by its offset */
		uint32_t *at = n ? malloc((size_t)n * sizeof *at) : NULL;
		if (n && !at)
			return err_sys(r->err, "out of memory:");
		kv->arr = n ? (void *)at : (void *)empty_array;
		kv->sbase = r->p + r->pos;
		uint64_t start = r->pos;
		/* a vocabulary's 100k strings in a tight loop; the first that does
		 * not fit is read again below, for its message */
		const uint8_t *base = r->p + start, *q = base, *end = r->p + r->size;
		uint64_t i = 0;
		for (uint64_t len; i < n && end - q >= 8; i++, q += 8 + len) {
			memcpy(&len, q, 8);
			if (len > (uint64_t)(end - q - 8) || (uint64_t)(q + 8 - base) > UINT32_MAX)
				break;
			at[i] = (uint32_t)(q + 8 - base);
		}
		r->pos = (uint64_t)(q - r->p);
		for (; i < n; i++) {
			uint64_t len;
			if (rd_str_len(r, &len, "string") < 0)
				return err_wrap(r->err, "element %" PRIu64, i);
			if (r->pos - start > UINT32_MAX)
				return err_set(r->err, "element %" PRIu64 ": an array of strings of more than 4 GiB", i);
			at[i] = (uint32_t)(r->pos - start);
			r->pos += len;
		}
		return 0;
	}

	size_t es = gguf_type_size(et);
	if (n > rd_left(r) / es)
		return err_set(r->err, "array of %" PRIu64 " %s cannot fit in the %" PRIu64 " bytes left", n,
			       gguf_type_names[et], rd_left(r));
	if (!n) {
		kv->arr = (void *)empty_array;
		return 0;
	}
	void *a = malloc((size_t)n * es); /* malloc aligns for any scalar type */
	if (!a)
		return err_sys(r->err, "out of memory:");
	kv->arr = a;
	memcpy(a, r->p + r->pos, (size_t)n * es);
	if (et == GGUF_TYPE_BOOL) {
		const uint8_t *b = a;
		for (uint64_t i = 0; i < n; i++)
			if (b[i] > 1)
				return err_set(r->err, "element %" PRIu64 ": bool value %u is neither 0 nor 1", i, b[i]);
	}
	r->pos += n * es;
	return 0;
}

static int cmp_bytes(const char *a, size_t an, const char *b, size_t bn)
{
	int c = memcmp(a, b, an < bn ? an : bn);
	if (c)
		return c;
	return an < bn ? -1 : an > bn;
}

static int cmp_kv(const void *a, const void *b)
{
	const struct gguf_kv *x = *(struct gguf_kv *const *)a, *y = *(struct gguf_kv *const *)b;
	int c = cmp_bytes(x->key, x->key_len, y->key, y->key_len);
	/* equal keys keep file order so the message names the earlier one first */
	return c ? c : (x < y ? -1 : x > y);
}

static int cmp_tensor_name(const void *a, const void *b)
{
	const struct gguf_tensor_rec *x = *(struct gguf_tensor_rec *const *)a;
	const struct gguf_tensor_rec *y = *(struct gguf_tensor_rec *const *)b;
	int c = cmp_bytes(x->t.name, x->name_len, y->t.name, y->name_len);
	return c ? c : (x < y ? -1 : x > y);
}

static int cmp_tensor_offset(const void *a, const void *b)
{
	const struct gguf_tensor_rec *x = *(struct gguf_tensor_rec *const *)a;
	const struct gguf_tensor_rec *y = *(struct gguf_tensor_rec *const *)b;
	if (x->t.offset != y->t.offset)
		return x->t.offset < y->t.offset ? -1 : 1;
	return x < y ? -1 : x > y;
}

static int read_kvs(struct gguf *g, struct rd *r, uint64_t n_kv)
{
	/* a pair takes at least 8 (key length) + 1 (key) + 4 (type) + 1 (value) bytes */
	if (n_kv > rd_left(r) / 14)
		return err_set(r->err, "header claims %" PRIu64 " key/value pairs, more than the %" PRIu64
				       " bytes left can hold",
			       n_kv, rd_left(r));
	g->kv = calloc(n_kv ? (size_t)n_kv : 1, sizeof *g->kv);
	g->kv_sorted = calloc(n_kv ? (size_t)n_kv : 1, sizeof *g->kv_sorted);
	if (!g->kv || !g->kv_sorted)
		return err_sys(r->err, "out of memory:");
	for (uint64_t i = 0; i < n_kv; i++) {
		struct gguf_kv *kv = &g->kv[i];
		g->n_kv = (int64_t)i + 1; /* so gguf_close frees what this pair allocated */
		struct gguf_str key;
		if (rd_str(g, r, &key, "key") < 0)
			return err_wrap(r->err, "key/value pair #%" PRIu64, i);
		if (key.len == 0)
			return err_set(r->err, "key/value pair #%" PRIu64 ": the key is empty", i);
		/* keys are looked up as C strings; one with a NUL inside could never be found */
		if (memchr(key.s, 0, key.len))
			return err_set(r->err, "key/value pair #%" PRIu64 ": key '%s' holds a NUL byte", i, key.s);
		kv->key = key.s;
		kv->key_len = key.len;
		if (kv_read_value(g, r, kv) < 0)
			return err_wrap(r->err, "key '%s'", kv->key);
	}
	for (uint64_t i = 0; i < n_kv; i++)
		g->kv_sorted[i] = &g->kv[i];
	qsort(g->kv_sorted, (size_t)n_kv, sizeof *g->kv_sorted, cmp_kv);
	for (uint64_t i = 1; i < n_kv; i++) {
		const struct gguf_kv *a = g->kv_sorted[i - 1], *b = g->kv_sorted[i];
		if (!cmp_bytes(a->key, a->key_len, b->key, b->key_len))
			return err_set(r->err, "duplicate key '%s' (pairs #%td and #%td)", b->key, a - g->kv, b - g->kv);
	}
	return 0;
}

/* ---- tensors ---- */

static int read_tensor_info(struct gguf *g, struct rd *r, uint64_t i)
{
	struct gguf_tensor_rec *rec = &g->tensors[i];
	struct gguf_tensor *t = &rec->t;
	struct gguf_str name;
	if (rd_str(g, r, &name, "tensor name") < 0)
		return err_wrap(r->err, "tensor #%" PRIu64, i);
	t->name = name.s;
	rec->name_len = name.len;
	if (name.len == 0)
		return err_set(r->err, "tensor #%" PRIu64 ": the name is empty", i);
	if (memchr(name.s, 0, name.len))
		return err_set(r->err, "tensor #%" PRIu64 ": name '%s' holds a NUL byte", i, name.s);
	if (name.len >= GGUF_MAX_NAME)
		return err_set(r->err, "tensor #%" PRIu64 ": name of %zu bytes is too long (ggml allows %d)", i, name.len,
			       GGUF_MAX_NAME - 1);

	uint32_t n_dims, type;
	if (rd_u32(r, &n_dims, "n_dims") < 0)
		return err_wrap(r->err, "tensor '%s'", t->name);
	if (n_dims > GGUF_MAX_DIMS)
		return err_set(r->err, "tensor '%s': %" PRIu32 " dimensions, at most %d are allowed", t->name, n_dims,
			       GGUF_MAX_DIMS);
	t->n_dims = n_dims;
	for (int d = 0; d < GGUF_MAX_DIMS; d++) {
		uint64_t ne = 1;
		if ((uint32_t)d < n_dims && rd_u64(r, &ne, "dimension") < 0)
			return err_wrap(r->err, "tensor '%s'", t->name);
		if (ne > INT64_MAX)
			return err_set(r->err, "tensor '%s': dimension %d has %" PRIu64 " elements (negative as int64)",
				       t->name, d, ne);
		t->ne[d] = (int64_t)ne;
	}
	if (rd_u32(r, &type, "type") < 0 || rd_u64(r, &t->offset, "offset") < 0)
		return err_wrap(r->err, "tensor '%s'", t->name);

	const struct ggml_type_traits *tr = gguf_ggml_traits(type);
	if (!tr) {
		const char *tn = gguf_ggml_type_name(type);
		if (tn)
			return err_set(r->err, "tensor '%s': ggml type %" PRIu32 " (%s) is no longer supported", t->name,
				       type, tn);
		return err_set(r->err, "tensor '%s': unknown ggml type %" PRIu32, t->name, type);
	}
	t->type = type;
	if (t->ne[0] % tr->blck_size != 0)
		return err_set(r->err, "tensor '%s': %" PRId64 " elements per row is not a multiple of the %s block size %" PRIu32,
			       t->name, t->ne[0], tr->name, tr->blck_size);

	/* elements, then bytes, each product checked before it is taken */
	uint64_t nel = 1;
	int zero = 0;
	for (int d = 0; d < GGUF_MAX_DIMS; d++) {
		uint64_t ne = (uint64_t)t->ne[d];
		if (ne == 0)
			zero = 1;
		else if (nel > (uint64_t)INT64_MAX / ne)
			zero = zero ? 1 : -1;
		else
			nel *= ne;
	}
	if (zero < 0)
		return err_set(r->err, "tensor '%s': shape [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64
				       "] has more than INT64_MAX elements",
			       t->name, t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
	if (zero)
		nel = 0;
	uint64_t blocks = nel / tr->blck_size;
	if (blocks > SIZE_MAX / tr->type_size)
		return err_set(r->err, "tensor '%s': size in bytes overflows", t->name);
	t->nbytes = (size_t)(blocks * tr->type_size);
	return 0;
}

static int check_tensor_data(struct gguf *g, struct rd *r)
{
	uint64_t room = g->size - g->data_offset;
	for (int64_t i = 0; i < g->n_tensors; i++) {
		struct gguf_tensor *t = &g->tensors[i].t;
		if (t->offset % g->alignment != 0)
			return err_set(r->err, "tensor '%s': offset %" PRIu64 " is not a multiple of the alignment %zu",
				       t->name, t->offset, g->alignment);
		if (t->offset > room || t->nbytes > room - t->offset)
			return err_set(r->err, "tensor '%s': data [%" PRIu64 ", +%zu) at file offset %" PRIu64
					       " runs past the end of the file (%" PRIu64 " bytes)",
				       t->name, t->offset, t->nbytes, g->data_offset + t->offset, g->size);
		t->data = g->base + g->data_offset + t->offset;
	}

	/* overlap: in offset order each non-empty range starts after the furthest end so far */
	struct gguf_tensor_rec **by_off = malloc((size_t)(g->n_tensors ? g->n_tensors : 1) * sizeof *by_off);
	if (!by_off)
		return err_sys(r->err, "out of memory:");
	for (int64_t i = 0; i < g->n_tensors; i++)
		by_off[i] = &g->tensors[i];
	qsort(by_off, (size_t)g->n_tensors, sizeof *by_off, cmp_tensor_offset);
	const struct gguf_tensor *far = NULL;
	uint64_t end = 0;
	int rc = 0;
	for (int64_t i = 0; i < g->n_tensors; i++) {
		const struct gguf_tensor *t = &by_off[i]->t;
		if (t->nbytes == 0)
			continue;
		if (far && t->offset < end) {
			rc = err_set(r->err, "tensor '%s': data [%" PRIu64 ", %" PRIu64 ") overlaps tensor '%s' [%" PRIu64
					     ", %" PRIu64 ")",
				     t->name, t->offset, t->offset + t->nbytes, far->name, far->offset, end);
			break;
		}
		far = t;
		end = t->offset + t->nbytes;
	}
	free(by_off);
	return rc;
}

static int read_tensors(struct gguf *g, struct rd *r, uint64_t n_tensors)
{
	/* an info takes at least 8 + 1 (name) + 4 (n_dims) + 4 (type) + 8 (offset) bytes */
	if (n_tensors > rd_left(r) / 25)
		return err_set(r->err, "header claims %" PRIu64 " tensors, more than the %" PRIu64 " bytes left can describe",
			       n_tensors, rd_left(r));
	g->tensors = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *g->tensors);
	g->t_sorted = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof *g->t_sorted);
	if (!g->tensors || !g->t_sorted)
		return err_sys(r->err, "out of memory:");
	g->n_tensors = (int64_t)n_tensors;
	for (uint64_t i = 0; i < n_tensors; i++) {
		if (read_tensor_info(g, r, i) < 0)
			return -1;
		g->t_sorted[i] = &g->tensors[i];
	}
	qsort(g->t_sorted, (size_t)n_tensors, sizeof *g->t_sorted, cmp_tensor_name);
	for (uint64_t i = 1; i < n_tensors; i++) {
		const struct gguf_tensor_rec *a = g->t_sorted[i - 1], *b = g->t_sorted[i];
		if (!cmp_bytes(a->t.name, a->name_len, b->t.name, b->name_len))
			return err_set(r->err, "duplicate tensor name '%s' (tensors #%td and #%td)", b->t.name, a - g->tensors,
				       b - g->tensors);
	}
	return 0;
}

/* ---- opening ---- */

static int gguf_parse(struct gguf *g, struct err *err)
{
	struct rd r = {.p = g->base, .size = g->size, .pos = 0, .err = err};
	uint32_t magic, version;
	uint64_t n_tensors, n_kv;

	if (rd_u32(&r, &magic, "magic") < 0)
		return -1;
	if (magic != GGUF_MAGIC)
		return err_set(err, "not a GGUF file: magic is %02x %02x %02x %02x, expected \"GGUF\"", g->base[0],
			       g->base[1], g->base[2], g->base[3]);
	if (rd_u32(&r, &version, "version") < 0)
		return -1;
	if (version == 1)
		return err_set(err, "GGUF version 1 is no longer supported (only 2 and 3)");
	if (version != 2 && version != 3) {
		if ((version & 0xffff) == 0)
			return err_set(err, "GGUF version %" PRIu32 " looks byte-swapped: big-endian files are not supported",
				       version);
		return err_set(err, "unsupported GGUF version %" PRIu32 " (only 2 and 3)", version);
	}
	g->version = version;
	if (rd_u64(&r, &n_tensors, "tensor count") < 0 || rd_u64(&r, &n_kv, "key/value count") < 0)
		return -1;

	if (read_kvs(g, &r, n_kv) < 0)
		return -1;

	g->alignment = GGUF_DEFAULT_ALIGNMENT;
	int64_t ai = gguf_find_key(g, "general.alignment");
	if (ai >= 0) {
		const struct gguf_kv *kv = &g->kv[ai];
		if (kv->type != GGUF_TYPE_UINT32)
			return err_set(err, "key 'general.alignment': type %s, expected u32", gguf_type_names[kv->type]);
		if (kv->u == 0 || (kv->u & (kv->u - 1)) != 0)
			return err_set(err, "key 'general.alignment': %" PRIu64 " is not a power of 2", kv->u);
		g->alignment = (size_t)kv->u;
	}

	if (read_tensors(g, &r, n_tensors) < 0)
		return -1;

	/* the data section starts at the next multiple of the alignment */
	uint64_t pad = (g->alignment - r.pos % g->alignment) % g->alignment;
	if (pad > rd_left(&r)) {
		if (n_tensors > 0)
			return err_set(err, "truncated: the data section would start at offset %" PRIu64
					    " but the file ends at %" PRIu64,
				       r.pos + pad, r.size);
		pad = rd_left(&r); /* no tensors, no data: a file may end right after its metadata */
	}
	g->data_offset = r.pos + pad;
	return check_tensor_data(g, &r);
}

static struct gguf *gguf_new(const char *name, struct err *err)
{
	struct gguf *g = calloc(1, sizeof *g);
	if (!g || !(g->name = strdup(name ? name : "<memory>"))) {
		free(g);
		err_sys(err, "out of memory:");
		return NULL;
	}
	return g;
}

struct gguf *gguf_open_mem(const void *buf, size_t len, const char *name, struct err *err)
{
	struct gguf *g = gguf_new(name, err);
	if (!g)
		return NULL;
	static const uint8_t none[1];
	g->base = buf ? buf : none;
	g->size = buf ? len : 0;
	if (gguf_parse(g, err) < 0) {
		err_wrap(err, "%s", g->name);
		gguf_close(g);
		return NULL;
	}
	return g;
}

struct gguf *gguf_open(const char *path, struct err *err)
{
	const void *map;
	size_t len;
	if (wholefile_map(path, &map, &len, err) < 0)
		return NULL;
	if (len == 0) {
		err_set(err, "%s: empty file, not GGUF", path);
		return NULL;
	}
	struct gguf *g = gguf_new(path, err);
	if (!g) {
		wholefile_unmap(map, len);
		return NULL;
	}
	g->map = map;
	g->map_len = len;
	g->base = map;
	g->size = (uint64_t)len;
	if (gguf_parse(g, err) < 0) {
		err_wrap(err, "%s", path);
		gguf_close(g);
		return NULL;
	}
	return g;
}

void gguf_close(struct gguf *g)
{
	if (!g)
		return;
	for (int64_t i = 0; i < g->n_kv; i++)
		if (g->kv[i].arr != (void *)empty_array)
			free(g->kv[i].arr);
	free(g->kv);
	free(g->kv_sorted);
	free(g->tensors);
	free(g->t_sorted);
	while (g->arena) {
		struct arena_block *next = g->arena->next;
		free(g->arena);
		g->arena = next;
	}
	wholefile_unmap(g->map, g->map_len);
	free(g->name);
	free(g);
}

/* ---- accessors ---- */

const char *gguf_name(const struct gguf *g) { return g->name; }
uint32_t gguf_version(const struct gguf *g) { return g->version; }
size_t gguf_alignment(const struct gguf *g) { return g->alignment; }
uint64_t gguf_data_offset(const struct gguf *g) { return g->data_offset; }
uint64_t gguf_size(const struct gguf *g) { return g->size; }
int64_t gguf_n_kv(const struct gguf *g) { return g->n_kv; }
int64_t gguf_n_tensors(const struct gguf *g) { return g->n_tensors; }

int64_t gguf_find_key(const struct gguf *g, const char *key)
{
	size_t len = strlen(key);
	/* the sorted index is built once all pairs are read; before that (while
	 * parsing) nothing calls this */
	size_t lo = 0, hi = (size_t)g->n_kv;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct gguf_kv *kv = g->kv_sorted[mid];
		int c = cmp_bytes(kv->key, kv->key_len, key, len);
		if (c == 0)
			return kv - g->kv;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

static const struct gguf_kv *kv_at(const struct gguf *g, int64_t i)
{
	return i >= 0 && i < g->n_kv ? &g->kv[i] : NULL;
}

const char *gguf_kv_key(const struct gguf *g, int64_t i)
{
	const struct gguf_kv *kv = kv_at(g, i);
	return kv ? kv->key : NULL;
}

enum gguf_type gguf_kv_type(const struct gguf *g, int64_t i)
{
	const struct gguf_kv *kv = kv_at(g, i);
	return kv ? kv->type : GGUF_TYPE_COUNT;
}

enum gguf_type gguf_kv_arr_type(const struct gguf *g, int64_t i)
{
	const struct gguf_kv *kv = kv_at(g, i);
	return kv && kv->type == GGUF_TYPE_ARRAY ? kv->arr_type : GGUF_TYPE_COUNT;
}

uint64_t gguf_kv_arr_n(const struct gguf *g, int64_t i)
{
	const struct gguf_kv *kv = kv_at(g, i);
	return kv && kv->type == GGUF_TYPE_ARRAY ? kv->n : 0;
}

static const char *kv_type_desc(const struct gguf_kv *kv, char *buf, size_t n)
{
	if (kv->type == GGUF_TYPE_ARRAY)
		snprintf(buf, n, "array of %s", gguf_type_names[kv->arr_type]);
	else
		snprintf(buf, n, "%s", gguf_type_names[kv->type]);
	return buf;
}

static const struct gguf_kv *kv_get(const struct gguf *g, const char *key, struct err *err)
{
	int64_t i = gguf_find_key(g, key);
	if (i < 0) {
		err_set(err, "%s: key '%s' is missing", g->name, key);
		return NULL;
	}
	return &g->kv[i];
}

static int kv_wrong_type(const struct gguf *g, const struct gguf_kv *kv, const char *want, struct err *err)
{
	char buf[32];
	return err_set(err, "%s: key '%s': type %s, expected %s", g->name, kv->key, kv_type_desc(kv, buf, sizeof buf),
		       want);
}

int gguf_get_str(const struct gguf *g, const char *key, const char **s, size_t *len, struct err *err)
{
	const struct gguf_kv *kv = kv_get(g, key, err);
	if (!kv)
		return -1;
	if (kv->type != GGUF_TYPE_STRING)
		return kv_wrong_type(g, kv, "string", err);
	*s = kv->str.s;
	if (len)
		*len = kv->str.len;
	return 0;
}

/* An integer value as (negative, magnitude-or-value) so every range check is exact. */
static int kv_get_int(const struct gguf *g, const char *key, int *neg, uint64_t *mag, const struct gguf_kv **out,
		      struct err *err)
{
	const struct gguf_kv *kv = kv_get(g, key, err);
	if (!kv)
		return -1;
	if (!gguf_type_is_int(kv->type))
		return kv_wrong_type(g, kv, "an integer", err);
	if (gguf_type_is_signed(kv->type) && kv->i < 0) {
		*neg = 1;
		*mag = (uint64_t)(-(kv->i + 1)) + 1;
	} else {
		*neg = 0;
		*mag = gguf_type_is_signed(kv->type) ? (uint64_t)kv->i : kv->u;
	}
	*out = kv;
	return 0;
}

int gguf_get_u32(const struct gguf *g, const char *key, uint32_t *out, struct err *err)
{
	int neg;
	uint64_t v;
	const struct gguf_kv *kv;
	if (kv_get_int(g, key, &neg, &v, &kv, err) < 0)
		return -1;
	if (neg || v > UINT32_MAX)
		return err_set(err, "%s: key '%s': %s%" PRIu64 " does not fit in u32", g->name, key, neg ? "-" : "", v);
	*out = (uint32_t)v;
	return 0;
}

int gguf_get_u64(const struct gguf *g, const char *key, uint64_t *out, struct err *err)
{
	int neg;
	uint64_t v;
	const struct gguf_kv *kv;
	if (kv_get_int(g, key, &neg, &v, &kv, err) < 0)
		return -1;
	if (neg)
		return err_set(err, "%s: key '%s': -%" PRIu64 " is negative", g->name, key, v);
	*out = v;
	return 0;
}

int gguf_get_i64(const struct gguf *g, const char *key, int64_t *out, struct err *err)
{
	int neg;
	uint64_t v;
	const struct gguf_kv *kv;
	if (kv_get_int(g, key, &neg, &v, &kv, err) < 0)
		return -1;
	if (neg) {
		*out = kv->i;
		return 0;
	}
	if (v > INT64_MAX)
		return err_set(err, "%s: key '%s': %" PRIu64 " does not fit in i64", g->name, key, v);
	*out = (int64_t)v;
	return 0;
}

int gguf_get_f64(const struct gguf *g, const char *key, double *out, struct err *err)
{
	const struct gguf_kv *kv = kv_get(g, key, err);
	if (!kv)
		return -1;
	if (kv->type != GGUF_TYPE_FLOAT32 && kv->type != GGUF_TYPE_FLOAT64)
		return kv_wrong_type(g, kv, "f32 or f64", err);
	*out = kv->f;
	return 0;
}

int gguf_get_bool(const struct gguf *g, const char *key, int *out, struct err *err)
{
	const struct gguf_kv *kv = kv_get(g, key, err);
	if (!kv)
		return -1;
	if (kv->type != GGUF_TYPE_BOOL)
		return kv_wrong_type(g, kv, "bool", err);
	*out = kv->u != 0;
	return 0;
}

static const struct gguf_kv *kv_get_arr(const struct gguf *g, const char *key, enum gguf_type elem,
					struct err *err)
{
	const struct gguf_kv *kv = kv_get(g, key, err);
	if (!kv)
		return NULL;
	if (kv->type != GGUF_TYPE_ARRAY || (elem != GGUF_TYPE_COUNT && kv->arr_type != elem)) {
		char want[32];
		if (elem == GGUF_TYPE_COUNT)
			snprintf(want, sizeof want, "an array");
		else
			snprintf(want, sizeof want, "array of %s", gguf_type_name(elem) ? gguf_type_name(elem) : "?");
		kv_wrong_type(g, kv, want, err);
		return NULL;
	}
	return kv;
}

int64_t gguf_get_arr_n(const struct gguf *g, const char *key, enum gguf_type elem, struct err *err)
{
	const struct gguf_kv *kv = kv_get_arr(g, key, elem, err);
	/* n fits in int64: every element takes at least one byte of the file */
	return kv ? (int64_t)kv->n : -1;
}

const char *gguf_get_arr_str(const struct gguf *g, const char *key, uint64_t i, size_t *len)
{
	return gguf_kv_arr_str(g, gguf_find_key(g, key), i, len);
}

const char *gguf_kv_arr_str(const struct gguf *g, int64_t k, uint64_t i, size_t *len)
{
	if (k < 0 || k >= g->n_kv)
		return NULL;
	const struct gguf_kv *kv = &g->kv[k];
	if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != GGUF_TYPE_STRING || i >= kv->n)
		return NULL;
	const uint8_t *s = kv->sbase + ((const uint32_t *)kv->arr)[i];
	if (len) {
		uint64_t n;
		memcpy(&n, s - 8, 8);
		*len = (size_t)n;
	}
	return (const char *)s;
}

const void *gguf_get_arr_data(const struct gguf *g, const char *key, enum gguf_type elem, uint64_t *n,
			      struct err *err)
{
	if (elem == GGUF_TYPE_STRING || elem == GGUF_TYPE_ARRAY || elem >= GGUF_TYPE_COUNT) {
		err_set(err, "%s: key '%s': gguf_get_arr_data needs a numeric element type", g->name, key);
		return NULL;
	}
	const struct gguf_kv *kv = kv_get_arr(g, key, elem, err);
	if (!kv)
		return NULL;
	if (n)
		*n = kv->n;
	return kv->arr;
}

const struct gguf_tensor *gguf_tensor(const struct gguf *g, int64_t i)
{
	return i >= 0 && i < g->n_tensors ? &g->tensors[i].t : NULL;
}

int64_t gguf_find_tensor(const struct gguf *g, const char *name)
{
	size_t len = strlen(name);
	size_t lo = 0, hi = (size_t)g->n_tensors;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct gguf_tensor_rec *t = g->t_sorted[mid];
		int c = cmp_bytes(t->t.name, t->name_len, name, len);
		if (c == 0)
			return t - g->tensors;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

void gguf_release_tensor(const struct gguf *g, const struct gguf_tensor *t)
{
	long page = sysconf(_SC_PAGESIZE);
	if (!g || !t || !g->map || t->nbytes == 0 || page <= 0)
		return;
	uintptr_t p = (uintptr_t)t->data, lo = (uintptr_t)g->map, mask = (uintptr_t)page - 1;
	if (p < lo || p - lo >= g->map_len || t->nbytes > g->map_len - (p - lo))
		return;
	/* whole pages, outward: a neighbour's bytes are re-read if needed */
	uintptr_t a = p & ~mask, b = (p + t->nbytes + mask) & ~mask;
	madvise((void *)a, (size_t)(b - a), MADV_DONTNEED);
}
