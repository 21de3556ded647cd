/* gguf: a reader for GGUF files, versions 2 and 3, as llama.cpp writes them.
 *
 * File layout (every integer little-endian, no implicit padding):
 *
 *   u32  magic      'G' 'G' 'U' 'F' (0x46554747 read as u32)
 *   u32  version    2 or 3 (1 had u32 counts and is refused; 3 only adds
 *                   big-endian files, which this reader also refuses)
 *   u64  n_tensors
 *   u64  n_kv
 *   n_kv key/value pairs:
 *       str  key                 non-empty, unique in the file
 *       u32  value type          enum gguf_type
 *       value                    a scalar of that type, or a str, or
 *                                u32 element type, u64 count, count elements
 *                                (arrays of arrays do not exist)
 *   n_tensors tensor infos:
 *       str  name                unique, shorter than 64 bytes
 *       u32  n_dims              0..4
 *       u64  ne[n_dims]          elements per dimension, ne[0] the fastest
 *       u32  type                enum ggml_type
 *       u64  offset              from the data section, a multiple of the alignment
 *   padding with zeros up to a multiple of the alignment (from the file start)
 *   data section                 each tensor's bytes at data_offset + offset
 *
 *   str  = u64 length, then that many bytes (UTF-8 by convention; keys and
 *          tensor names may not hold a NUL byte, values may)
 *   bool = one byte, 0 or 1
 *   alignment = the u32 value of "general.alignment", 32 when absent; a power of 2
 *
 * Every count, length and offset is checked against the size of the file
 * before it is used, so a corrupt or hostile file gives an error naming the
 * file and the key or tensor, never a crash or a huge allocation. Tensor data
 * ranges must lie inside the file and must not overlap.
 *
 * Ownership: gguf_open() maps the file read-only; every pointer the getters
 * return (strings, array data, tensor data) lives until gguf_close(). A
 * string value is a NUL-terminated copy; the strings of an array are where
 * they lie in the file, not NUL-terminated (a vocabulary's 100k tokens and
 * merges are not copied). Their length is given, as a GGUF string may hold
 * NUL bytes. Numeric arrays are aligned copies in host order.
 */
#ifndef LORAPIPE_GGUF_H
#define LORAPIPE_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "msg.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as a little-endian u32 */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_NAME 64 /* tensor names are shorter, as in ggml */

/* Types of metadata values, numbered as in the file. */
enum gguf_type {
	GGUF_TYPE_UINT8 = 0,
	GGUF_TYPE_INT8 = 1,
	GGUF_TYPE_UINT16 = 2,
	GGUF_TYPE_INT16 = 3,
	GGUF_TYPE_UINT32 = 4,
	GGUF_TYPE_INT32 = 5,
	GGUF_TYPE_FLOAT32 = 6,
	GGUF_TYPE_BOOL = 7,
	GGUF_TYPE_STRING = 8,
	GGUF_TYPE_ARRAY = 9,
	GGUF_TYPE_UINT64 = 10,
	GGUF_TYPE_INT64 = 11,
	GGUF_TYPE_FLOAT64 = 12,
	GGUF_TYPE_COUNT,
};

/* Tensor element types, numbered as ggml numbers them (gaps are types
 * ggml removed; files holding them are refused by name). */
enum ggml_type {
	GGML_TYPE_F32 = 0,
	GGML_TYPE_F16 = 1,
	GGML_TYPE_Q4_0 = 2,
	GGML_TYPE_Q4_1 = 3,
	GGML_TYPE_Q5_0 = 6,
	GGML_TYPE_Q5_1 = 7,
	GGML_TYPE_Q8_0 = 8,
	GGML_TYPE_Q8_1 = 9,
	GGML_TYPE_Q2_K = 10,
	GGML_TYPE_Q3_K = 11,
	GGML_TYPE_Q4_K = 12,
	GGML_TYPE_Q5_K = 13,
	GGML_TYPE_Q6_K = 14,
	GGML_TYPE_Q8_K = 15,
	GGML_TYPE_IQ2_XXS = 16,
	GGML_TYPE_IQ2_XS = 17,
	GGML_TYPE_IQ3_XXS = 18,
	GGML_TYPE_IQ1_S = 19,
	GGML_TYPE_IQ4_NL = 20,
	GGML_TYPE_IQ3_S = 21,
	GGML_TYPE_IQ2_S = 22,
	GGML_TYPE_IQ4_XS = 23,
	GGML_TYPE_I8 = 24,
	GGML_TYPE_I16 = 25,
	GGML_TYPE_I32 = 26,
	GGML_TYPE_I64 = 27,
	GGML_TYPE_F64 = 28,
	GGML_TYPE_IQ1_M = 29,
	GGML_TYPE_BF16 = 30,
	GGML_TYPE_TQ1_0 = 34,
	GGML_TYPE_TQ2_0 = 35,
	GGML_TYPE_MXFP4 = 39,
	GGML_TYPE_NVFP4 = 40,
	GGML_TYPE_Q1_0 = 41,
	GGML_TYPE_Q2_0 = 42,
	GGML_TYPE_COUNT = 43,
};

/* Storage of one tensor type: blck_size elements take type_size bytes. */
struct ggml_type_traits {
	const char *name;
	uint32_t blck_size;
	uint32_t type_size;
};

/* The traits of a type this reader can size, or NULL (removed or unknown). */
const struct ggml_type_traits *gguf_ggml_traits(uint32_t type);
/* The ggml name of a type ("Q4_K"), of removed ones too ("Q4_2"), or NULL. */
const char *gguf_ggml_type_name(uint32_t type);
/* The name of a metadata value type ("u32", "string", "array"), or NULL. */
const char *gguf_type_name(uint32_t type);

struct gguf;

/* One tensor as the file describes it. ne[i] is 1 for i >= n_dims. */
struct gguf_tensor {
	const char *name;
	uint32_t n_dims;
	int64_t ne[GGUF_MAX_DIMS];
	enum ggml_type type;
	uint64_t offset;  /* from the start of the data section */
	const void *data; /* inside the mapping; not aligned beyond the file's alignment */
	size_t nbytes;
};

/* Maps and parses a file. Returns NULL with err set ("PATH: ..."). */
struct gguf *gguf_open(const char *path, struct err *err);
/* Parses a GGUF image already in memory; buf must outlive the result (it is
 * not copied). name is used in messages. */
struct gguf *gguf_open_mem(const void *buf, size_t len, const char *name, struct err *err);
/* Unmaps and frees; NULL is allowed. */
void gguf_close(struct gguf *g);

const char *gguf_name(const struct gguf *g);
uint32_t gguf_version(const struct gguf *g);
size_t gguf_alignment(const struct gguf *g);
/* File offset where the data section starts (a multiple of the alignment). */
uint64_t gguf_data_offset(const struct gguf *g);
/* Size of the whole file or buffer. */
uint64_t gguf_size(const struct gguf *g);

/* ---- metadata ---- */
int64_t gguf_n_kv(const struct gguf *g);
/* Index of a key, or -1. Keys keep their file order: index i is the i-th pair. */
int64_t gguf_find_key(const struct gguf *g, const char *key);
const char *gguf_kv_key(const struct gguf *g, int64_t i);
enum gguf_type gguf_kv_type(const struct gguf *g, int64_t i);
/* For arrays: the element type and count; GGUF_TYPE_COUNT and 0 otherwise. */
enum gguf_type gguf_kv_arr_type(const struct gguf *g, int64_t i);
uint64_t gguf_kv_arr_n(const struct gguf *g, int64_t i);

/* Typed getters by key. Each returns 0 with *out set, or -1 with err set to
 * "NAME: key 'KEY': ..." when the key is missing or its value does not fit
 * the request. For an optional key, test gguf_find_key() first. */
int gguf_get_str(const struct gguf *g, const char *key, const char **s, size_t *len, struct err *err);
/* Any integer type whose value fits (u8..i64); not bool, not float. */
int gguf_get_u32(const struct gguf *g, const char *key, uint32_t *out, struct err *err);
int gguf_get_u64(const struct gguf *g, const char *key, uint64_t *out, struct err *err);
int gguf_get_i64(const struct gguf *g, const char *key, int64_t *out, struct err *err);
/* f32 or f64. */
int gguf_get_f64(const struct gguf *g, const char *key, double *out, struct err *err);
int gguf_get_bool(const struct gguf *g, const char *key, int *out, struct err *err);

/* Arrays: checks that key holds an array whose elements have type elem
 * (GGUF_TYPE_COUNT accepts any) and returns its length, or -1 with err set. */
int64_t gguf_get_arr_n(const struct gguf *g, const char *key, enum gguf_type elem, struct err *err);
/* Element i of an array of strings: its bytes in the file (not
 * NUL-terminated), *len of them. NULL when key is no array of strings or i
 * is out of range. */
const char *gguf_get_arr_str(const struct gguf *g, const char *key, uint64_t i, size_t *len);
/* The same by the key's index (gguf_find_key), for a loop over a long array. */
const char *gguf_kv_arr_str(const struct gguf *g, int64_t k, uint64_t i, size_t *len);
/* The elements of a numeric or bool array (bool as one byte, 0 or 1), aligned
 * for their type, in host order; *n the count. NULL with err set when key is
 * missing or is no array of elem. */
const void *gguf_get_arr_data(const struct gguf *g, const char *key, enum gguf_type elem, uint64_t *n,
			      struct err *err);

/* ---- tensors ---- */
int64_t gguf_n_tensors(const struct gguf *g);
/* Tensor i in file order (0 <= i < gguf_n_tensors), or NULL. */
const struct gguf_tensor *gguf_tensor(const struct gguf *g, int64_t i);
/* Index of a tensor by name, or -1. */
int64_t gguf_find_tensor(const struct gguf *g, const char *name);
/* Drops the resident pages of t's data (the whole pages it touches) when g
 * maps a file, so that a loader that has converted t stops holding both
 * copies: madvise(MADV_DONTNEED) on the read-only private mapping, whose pages
 * are read again from the file if t->data is touched later. Does nothing for
 * an image from gguf_open_mem, for a tensor outside the mapping, or if
 * madvise fails. */
void gguf_release_tensor(const struct gguf *g, const struct gguf_tensor *t);


/* ---- tensor data (lib/gguf_dequant.c) ---- */

/* Converts elements [start, start + n) of tensor t (counted over all of its
 * elements, ne[0] fastest) to fp32, exactly as ggml's dequantize_row_* does
 * (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K,
 * Q6_K). start and n must be multiples of the type's block size. Returns 0,
 * or -1 with err "NAME: type IQ2_XS is not supported" (or a range error). */
int gguf_dequantize(const struct gguf_tensor *t, int64_t start, int64_t n, float *out, struct err *err);
/* Whether gguf_dequantize handles the type. */
int gguf_can_dequantize(enum ggml_type type);

#endif
