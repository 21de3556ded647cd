/* fuzz_gguf: libFuzzer target for the GGUF reader. Any input must be either
 * refused with a message naming the buffer or accepted with every key,
 * array element and tensor byte readable (ASan checks each read). An
 * accepted input with tokenizer metadata also goes through
 * tokenizer_load_gguf (from a memfd, since that takes a path), which must
 * load or refuse it cleanly. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gguf.h"
#include "tokenizer.h"

static void try_tokenizer(const uint8_t *data, size_t size)
{
	int fd = memfd_create("fuzz_gguf", MFD_CLOEXEC);
	if (fd < 0)
		return;
	if (write(fd, data, size) == (ssize_t)size) {
		char path[64];
		snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
		struct err e = {{0}, 0};
		struct tokenizer *tk = tokenizer_load_gguf(path, &e);
		if (tk) {
			struct tok_encoding enc = {0};
			static const char text[] = "Hello, world! 123 <|im_end|> \xff";
			tokenizer_encode(tk, text, sizeof text - 1, 1, &enc, &e);
			tok_encoding_free(&enc);
			tokenizer_free(tk);
		} else if (!e.msg[0]) {
			__builtin_trap(); /* a refusal always says why */
		}
	}
	close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct err e = {{0}, 0};
	struct gguf *g = gguf_open_mem(data, size, "fuzz", &e);
	if (!g) {
		if (strncmp(e.msg, "fuzz: ", 6) != 0)
			__builtin_trap(); /* every refusal names its source */
		return 0;
	}
	volatile size_t sink = 0;
	for (int64_t i = 0; i < gguf_n_kv(g); i++) {
		const char *key = gguf_kv_key(g, i);
		if (gguf_find_key(g, key) != i)
			__builtin_trap(); /* keys are unique, so lookup finds this one */
		uint32_t u32;
		double f;
		const char *s;
		size_t len;
		gguf_get_u32(g, key, &u32, &e);
		gguf_get_f64(g, key, &f, &e);
		if (gguf_get_str(g, key, &s, &len, &e) == 0)
			sink += len + (size_t)s[len]; /* the NUL after the bytes is there */
		if (gguf_kv_type(g, i) == GGUF_TYPE_ARRAY) {
			uint64_t n = gguf_kv_arr_n(g, i);
			if (gguf_kv_arr_type(g, i) == GGUF_TYPE_STRING) {
				for (uint64_t j = 0; j < n; j++) {
					s = gguf_get_arr_str(g, key, j, &len);
					for (size_t k = 0; k < len; k++) /* its bytes are in the image */
						sink += (unsigned char)s[k];
				}
			} else {
				uint64_t m;
				const uint8_t *p = gguf_get_arr_data(g, key, gguf_kv_arr_type(g, i), &m, &e);
				if (!p || m != n)
					__builtin_trap();
				if (n)
					sink += p[0];
			}
		}
	}
	for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
		const struct gguf_tensor *t = gguf_tensor(g, i);
		if (gguf_find_tensor(g, t->name) != i)
			__builtin_trap();
		const uint8_t *p = t->data;
		for (size_t j = 0; j < t->nbytes; j++)
			sink += p[j];
	}
	(void)sink;
	int has_tokenizer = gguf_find_key(g, "tokenizer.ggml.model") >= 0;
	gguf_close(g);
	if (has_tokenizer)
		try_tokenizer(data, size);
	return 0;
}
