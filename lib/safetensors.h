/* safetensors: read and write Hugging Face's safetensors files.
 *
 * File layout (https://github.com/huggingface/safetensors, format section):
 *   u64 little-endian  N, the length of the header
 *   N bytes            a JSON object, UTF-8, maybe padded with spaces:
 *                        "NAME": {"dtype": "BF16", "shape": [d0, d1, ...],
 *                                 "data_offsets": [begin, end]}   for each tensor
 *                        "__metadata__": {"key": "string value", ...}   optional
 *   the data           each tensor's bytes at 8 + N + begin .. 8 + N + end,
 *                      row-major, little-endian, no gaps and no overlaps
 *
 * Reading maps the file read-only and checks everything before use: the header
 * length against the file, the JSON (through jsonl_parse), each dtype, shape
 * and offset pair (end - begin == product(shape) * size of dtype, inside the
 * data, tensors neither overlapping nor leaving holes: the Rust library's
 * rule), names unique and not empty, no key in an entry but dtype, shape and
 * data_offsets (the Rust library ignores others; we refuse them), integers at
 * most 2^53. A broken file is an error naming the file and the tensor
 * ("FILE: tensor 'NAME': ..."), never a crash or a huge allocation.
 *
 * A model folder holds one model.safetensors, or shards listed by
 * model.safetensors.index.json ({"weight_map": {"NAME": "FILE", ...}}); the set
 * opens them all as one name space, each name in exactly one shard.
 */
#ifndef LORAPIPE_SAFETENSORS_H
#define LORAPIPE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "msg.h"

#define ST_MAX_DIMS 8

enum st_dtype {
	ST_BOOL, ST_U8, ST_I8, ST_I16, ST_U16, ST_F16, ST_BF16, ST_I32, ST_U32, ST_F32,
	ST_F64, ST_I64, ST_U64, ST_F8_E4M3, ST_F8_E5M2,
	ST_DTYPE_COUNT,
};

/* "F32", "BF16" ... as the header spells it; st_dtype_parse returns -1 for an unknown name. */
const char *st_dtype_name(enum st_dtype t);
int st_dtype_parse(const char *name);
size_t st_dtype_size(enum st_dtype t);

struct st_tensor {
	const char *name;
	enum st_dtype dtype;
	int n_dims; /* 0 for a scalar */
	int64_t shape[ST_MAX_DIMS];
	int64_t n_elems;
	const void *data; /* inside the mapping: little-endian, possibly unaligned */
	size_t nbytes;
	const char *file; /* the file it lives in */
};

struct safetensors;

/* Opens one .safetensors file, or a folder (model.safetensors.index.json and
 * its shards, else model.safetensors, else the only *.safetensors in it). */
struct safetensors *st_open(const char *path, struct err *err);
/* Parses an image already in memory (not copied; buf must outlive the result). */
struct safetensors *st_open_mem(const void *buf, size_t len, const char *name, struct err *err);
void st_close(struct safetensors *st);

int64_t st_n_tensors(const struct safetensors *st);
/* Tensor i, in name order (sorted by strcmp, so listings are stable), or NULL. */
const struct st_tensor *st_tensor(const struct safetensors *st, int64_t i);
/* By name, or NULL. */
const struct st_tensor *st_find(const struct safetensors *st, const char *name);
/* A __metadata__ value of the (first) file, or NULL. */
const char *st_metadata(const struct safetensors *st, const char *key);

/* Converts elements [start, start + n) of a float tensor (F32, F16, BF16, F64)
 * to fp32. -1 with err "NAME: dtype I64 is not a float type" otherwise. */
int st_read_f32(const struct st_tensor *t, int64_t start, int64_t n, float *out, struct err *err);

/* Drops the resident pages of t's bytes (the whole pages they touch) from a
 * file that st maps, so that a loader that has converted t stops holding both
 * copies: madvise(MADV_DONTNEED) on the read-only private mapping, whose pages
 * are read again from the file if t is touched later. Does nothing for an
 * image from st_open_mem, for a tensor st does not hold, or if madvise fails. */
void st_release(const struct safetensors *st, const struct st_tensor *t);

/* ---- writing ---- */

struct st_out {
	const char *name;
	enum st_dtype dtype;
	int n_dims;
	int64_t shape[ST_MAX_DIMS];
	const void *data; /* product(shape) elements of dtype, host order (little-endian) */
};

/* Writes n tensors (laid out as the Python library lays them out: compact
 * JSON, header padded with spaces to a multiple of 8, tensors by descending
 * position in the Rust library's Dtype enum — U64 I64 F64 F32 U32 I32 BF16 F16
 * U16 I16 F8_E4M3 F8_E5M2 I8 U8 BOOL — then by name, so our files are
 * byte-identical to its) and the metadata pairs meta[0], meta[1], ... up to a
 * NULL key, into path, atomically (outfile): a failure leaves no file.
 * meta NULL writes no "__metadata__"; meta = {NULL} an empty one. Metadata
 * keys keep the order given (Python's order is that of a Rust HashMap, so its
 * files with two or more keys differ from run to run). Names must be unique,
 * not empty, not "__metadata__"; names and metadata valid UTF-8. */
int st_write(const char *path, const struct st_out *t, size_t n, const char *const *meta, struct err *err);

#endif
