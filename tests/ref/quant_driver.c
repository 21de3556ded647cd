/* quant_driver: lib/quant, lib/half.h and lib/gguf_dequant.c on raw files,
 * for tests/ref/test_quant_bnb.py and tests/ref/test_ggml_dequant.py.
 * Inputs and outputs are raw little-endian arrays; IN may be "-" for stdin.
 *
 *   quant_driver nf4 IN OUT          IN: fp32 values. Writes OUT.codes (bytes),
 *                                    OUT.absmax_q (bytes), OUT.absmax2 (fp32),
 *                                    OUT.offset (one fp32), OUT.deq (fp32),
 *                                    OUT.table (nf4_table), OUT.map (the
 *                                    dynamic map)
 *   quant_driver int8 COLS IN OUT    IN: fp32 rows of COLS. Writes OUT.q (int8),
 *                                    OUT.scale (fp32), OUT.deq (fp32)
 *   quant_driver half IN OUT         IN: fp32. Writes OUT.f16 and OUT.bf16 (u16
 *                                    each), and OUT.f16all: f16_to_f32 of
 *                                    all 65536 patterns (fp32)
 *   quant_driver ggml TYPE IN OUT    IN: blocks of ggml type number TYPE.
 *                                    Writes OUT (fp32)
 *   quant_driver gguf FILE DIR [I..] every tensor of FILE (or tensors I..)
 *                                    whose type we read to DIR/<index>.f32;
 *                                    prints one line per tensor: index, type
 *                                    name, elements, "ok" or "unsupported".
 *                                    DIR "-": instead, streams to stdout per
 *                                    tensor an int64 index, an int64 element
 *                                    count (-1: unsupported type), the fp32s
 * Exit status 1 on any failure, with a message on stderr.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "half.h"
#include "quant.h"

static void die(const char *fmt, const char *arg)
{
	fprintf(stderr, "quant_driver: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n");
	exit(1);
}

static void *read_all(const char *path, size_t *len)
{
	FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
	if (!f)
		die("cannot open %s", path);
	size_t cap = 1 << 16, n = 0;
	char *b = malloc(cap);
	for (;;) {
		if (!b)
			die("out of memory reading %s", path);
		n += fread(b + n, 1, cap - n, f);
		if (n < cap)
			break;
		cap *= 2;
		b = realloc(b, cap);
	}
	if (ferror(f))
		die("cannot read %s", path);
	if (f != stdin)
		fclose(f);
	*len = n;
	return b;
}

static void write_file(const char *prefix, const char *suffix, const void *data, size_t len)
{
	char path[4096];
	snprintf(path, sizeof path, "%s%s", prefix, suffix);
	FILE *f = fopen(path, "wb");
	if (!f || (len && fwrite(data, 1, len, f) != len) || fclose(f))
		die("cannot write %s", path);
}

static int cmd_nf4(const char *in, const char *out)
{
	size_t len;
	float *x = read_all(in, &len);
	int64_t n = (int64_t)(len / 4);
	struct nf4 q;
	struct err err;
	if (nf4_quantize(x, n, &q, &err))
		die("%s", err.msg);
	int64_t nb = (n + NF4_BLOCK - 1) / NF4_BLOCK, nb2 = (nb + NF4_BLOCK2 - 1) / NF4_BLOCK2;
	write_file(out, ".codes", q.codes, (size_t)(n + 1) / 2);
	write_file(out, ".absmax_q", q.absmax_q, (size_t)nb);
	write_file(out, ".absmax2", q.absmax2, (size_t)nb2 * 4);
	write_file(out, ".offset", &q.offset, 4);
	nf4_dequantize(&q, 0, n, x);
	write_file(out, ".deq", x, (size_t)n * 4);
	write_file(out, ".table", nf4_table, sizeof nf4_table);
	write_file(out, ".map", nf4_dynamic_map, sizeof nf4_dynamic_map);
	nf4_free(&q);
	free(x);
	return 0;
}

static int cmd_int8(const char *cols_s, const char *in, const char *out)
{
	size_t len;
	float *x = read_all(in, &len);
	int64_t cols = strtoll(cols_s, NULL, 10);
	if (cols <= 0 || (len / 4) % (size_t)cols)
		die("bad column count %s", cols_s);
	int64_t rows = (int64_t)(len / 4) / cols;
	struct weight w;
	struct err err;
	if (weight_from_f32(&w, WFMT_INT8, x, rows, cols, &err))
		die("%s", err.msg);
	write_file(out, ".q", w.q8.q, (size_t)(rows * cols));
	write_file(out, ".scale", w.q8.scale, (size_t)rows * 4);
	weight_rows_f32(&w, 0, rows, x);
	write_file(out, ".deq", x, (size_t)(rows * cols) * 4);
	weight_free(&w);
	free(x);
	return 0;
}

static int cmd_half(const char *in, const char *out)
{
	size_t len;
	float *x = read_all(in, &len);
	size_t n = len / 4;
	uint16_t *h = malloc((n + 1) * 2), *b = malloc((n + 1) * 2);
	float *all = malloc(65536 * 4);
	if (!h || !b || !all)
		die("%s", "out of memory");
	for (size_t i = 0; i < n; i++) {
		h[i] = f32_to_f16(x[i]);
		b[i] = f32_to_bf16(x[i]);
	}
	for (uint32_t i = 0; i < 65536; i++)
		all[i] = f16_to_f32((uint16_t)i);
	write_file(out, ".f16", h, n * 2);
	write_file(out, ".bf16", b, n * 2);
	write_file(out, ".f16all", all, 65536 * 4);
	free(x);
	free(h);
	free(b);
	free(all);
	return 0;
}

static int cmd_ggml(const char *type_s, const char *in, const char *out)
{
	size_t len;
	void *data = read_all(in, &len);
	uint32_t type = (uint32_t)strtoul(type_s, NULL, 10);
	const struct ggml_type_traits *tr = gguf_ggml_traits(type);
	if (!tr)
		die("unknown type %s", type_s);
	int64_t n = (int64_t)(len / tr->type_size) * tr->blck_size;
	struct gguf_tensor t = {.name = "blocks", .n_dims = 1, .ne = {n, 1, 1, 1}, .type = (enum ggml_type)type,
				.data = data, .nbytes = len};
	float *y = malloc((size_t)(n + 1) * 4);
	struct err err;
	if (!y || gguf_dequantize(&t, 0, n, y, &err))
		die("%s", y ? err.msg : "out of memory");
	write_file(out, "", y, (size_t)n * 4);
	free(y);
	free(data);
	return 0;
}

static int cmd_gguf(const char *file, const char *dir, int nsel, char **sel)
{
	struct err err;
	struct gguf *g = gguf_open(file, &err);
	if (!g)
		die("%s", err.msg);
	int64_t count = nsel ? nsel : gguf_n_tensors(g);
	for (int64_t k = 0; k < count; k++) {
		int64_t i = nsel ? strtoll(sel[k], NULL, 10) : k;
		const struct gguf_tensor *t = gguf_tensor(g, i);
		if (!t)
			die("no tensor %s", nsel ? sel[k] : "?");
		int64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
		const char *tn = gguf_ggml_type_name(t->type);
		if (strcmp(dir, "-") == 0) {
			int64_t head[2] = {i, gguf_can_dequantize(t->type) ? n : -1};
			fwrite(head, 8, 2, stdout);
			if (head[1] < 0)
				continue;
		} else if (!gguf_can_dequantize(t->type)) {
			printf("%" PRId64 " %s %" PRId64 " unsupported\n", i, tn ? tn : "?", n);
			continue;
		}
		float *y = malloc((size_t)(n + 1) * 4);
		if (!y || gguf_dequantize(t, 0, n, y, &err))
			die("%s", y ? err.msg : "out of memory");
		if (strcmp(dir, "-") == 0) {
			if (fwrite(y, 4, (size_t)n, stdout) != (size_t)n)
				die("%s", "cannot write to stdout");
		} else {
			char path[4096];
			snprintf(path, sizeof path, "%s/%" PRId64 ".f32", dir, i);
			write_file(path, "", y, (size_t)n * 4);
			printf("%" PRId64 " %s %" PRId64 " ok\n", i, tn, n);
		}
		free(y);
	}
	gguf_close(g);
	if (fflush(stdout))
		die("%s", "cannot write to stdout");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "nf4") == 0)
		return cmd_nf4(argv[2], argv[3]);
	if (argc == 5 && strcmp(argv[1], "int8") == 0)
		return cmd_int8(argv[2], argv[3], argv[4]);
	if (argc == 4 && strcmp(argv[1], "half") == 0)
		return cmd_half(argv[2], argv[3]);
	if (argc == 5 && strcmp(argv[1], "ggml") == 0)
		return cmd_ggml(argv[2], argv[3], argv[4]);
	if (argc >= 4 && strcmp(argv[1], "gguf") == 0)
		return cmd_gguf(argv[2], argv[3], argc - 4, argv + 4);
	fprintf(stderr, "usage: quant_driver nf4|int8 COLS|half|ggml TYPE|gguf ... (see the source)\n");
	return 2;
}
