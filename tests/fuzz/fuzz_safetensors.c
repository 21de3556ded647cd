/* fuzz_safetensors: libFuzzer target for the safetensors reader. Any input
 * must be either refused with a message naming the buffer or accepted with
 * every tensor's bytes inside the input (ASan checks each read), names in
 * sorted order and found by st_find, and every float tensor convertible by
 * st_read_f32. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct err e = {{0}, 0};
	struct safetensors *st = st_open_mem(data, size, "fuzz", &e);
	if (!st) {
		if (strncmp(e.msg, "fuzz: ", 6) != 0)
			__builtin_trap(); /* every refusal names its source */
		return 0;
	}
	volatile uint8_t sink = 0;
	float buf[64];
	for (int64_t i = 0; i < st_n_tensors(st); i++) {
		const struct st_tensor *t = st_tensor(st, i);
		if (st_find(st, t->name) != t)
			__builtin_trap();
		if (i && strcmp(st_tensor(st, i - 1)->name, t->name) >= 0)
			__builtin_trap(); /* sorted and unique */
		const uint8_t *p = t->data;
		if (t->nbytes && (p < data || p + t->nbytes > data + size))
			__builtin_trap();
		for (size_t j = 0; j < t->nbytes; j++)
			sink ^= p[j];
		int is_float = t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 || t->dtype == ST_F64;
		for (int64_t k = 0; k < t->n_elems; k += 64) {
			int64_t n = t->n_elems - k < 64 ? t->n_elems - k : 64;
			if ((st_read_f32(t, k, n, buf, &e) == 0) != is_float)
				__builtin_trap();
		}
		if (st_read_f32(t, t->n_elems, 1, buf, &e) == 0)
			__builtin_trap(); /* past the end */
	}
	st_metadata(st, "format");
	(void)sink;
	st_close(st);
	return 0;
}
