/* fuzz_model: libFuzzer target for lib/model's loaders and the GGUF block
 * formats. The first byte of an input chooses what the rest is:
 *
 *   bits 0-1  0, 3: a GGUF file, read with model_config_load and loaded with
 *                   model_load (from a memfd, since they take a path)
 *             1: a model.safetensors, loaded with model_load from a folder
 *                   holding it and the fixed config.json of family bits 2-3
 *                   (configs[] below: tiny llama with llama3 RoPE, qwen2,
 *                   qwen3, gemma3_text)
 *             2: gguf_dequantize on blocks: byte 1 the ggml type, the rest
 *                   whole blocks of it (every type; unsupported ones must
 *                   be refused)
 *   bits 4-5  the format of the linear layers (f32, bf16, nf4, int8)
 *   bit 6     embeddings in bf16
 *
 * A load must succeed or fail with a message; a loaded model then runs a
 * forward pass of three tokens. ASan and UBSan check every step; NaN and inf
 * values are fine. Seeds (tests/fuzz/corpus/model, written by
 * `python tests/ref/tinymodels.py --fuzz-seeds DIR`): each family as GGUF
 * (F32, F16, Q8_0) and as safetensors, a few KB each, and blocks of each
 * supported type. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "model.h"

/* Must match tinymodels.FUZZ_FAMILIES, which writes the safetensors seeds. */
static const char *const configs[4] = {
	"{\"model_type\": \"llama\", \"vocab_size\": 8, \"hidden_size\": 8, \"intermediate_size\": 8, "
	"\"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 1, "
	"\"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-6, \"rope_theta\": 500000.0, "
	"\"tie_word_embeddings\": false, \"bos_token_id\": 1, \"eos_token_id\": 2, "
	"\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
	"\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 16}}",
	"{\"model_type\": \"qwen2\", \"vocab_size\": 8, \"hidden_size\": 8, \"intermediate_size\": 8, "
	"\"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 2, "
	"\"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-6, \"rope_theta\": 1000000.0, "
	"\"tie_word_embeddings\": true, \"bos_token_id\": 1, \"eos_token_id\": 2}",
	"{\"model_type\": \"qwen3\", \"vocab_size\": 8, \"hidden_size\": 8, \"intermediate_size\": 8, "
	"\"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 8, "
	"\"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-6, \"rope_theta\": 1000000.0, "
	"\"tie_word_embeddings\": false, \"bos_token_id\": 1, \"eos_token_id\": 2}",
	"{\"model_type\": \"gemma3_text\", \"vocab_size\": 8, \"hidden_size\": 8, \"intermediate_size\": 8, "
	"\"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 4, "
	"\"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-6, \"rope_theta\": 1000000.0, "
	"\"rope_local_base_freq\": 10000.0, \"query_pre_attn_scalar\": 4, \"sliding_window\": 2, "
	"\"layer_types\": [\"sliding_attention\", \"full_attention\"], \"tie_word_embeddings\": true, "
	"\"bos_token_id\": 1, \"eos_token_id\": 2}",
};

static char dir[4][256]; /* one folder per family, config.json written once */
static char root[256];

static void cleanup(void)
{
	char p[320];
	for (int f = 0; f < 4; f++) {
		snprintf(p, sizeof p, "%s/config.json", dir[f]);
		unlink(p);
		snprintf(p, sizeof p, "%s/model.safetensors", dir[f]);
		unlink(p);
		rmdir(dir[f]);
	}
	rmdir(root);
}

static int write_file(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		return -1;
	size_t w = n ? fwrite(p, 1, n, f) : 0;
	return fclose(f) || w != n ? -1 : 0;
}

static int setup(void)
{
	static int done;
	if (done)
		return done > 0 ? 0 : -1;
	done = -1;
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	snprintf(root, sizeof root, "%s/fuzz_model.XXXXXX", tmp);
	if (!mkdtemp(root))
		return -1;
	atexit(cleanup);
	for (int f = 0; f < 4; f++) {
		char p[320];
		snprintf(dir[f], sizeof dir[f], "%s/%d", root, f);
		snprintf(p, sizeof p, "%s/config.json", dir[f]);
		if (mkdir(dir[f], 0700) < 0 || write_file(p, configs[f], strlen(configs[f])) < 0)
			return -1;
	}
	done = 1;
	return 0;
}

/* A loaded model runs; its answer does not matter. */
static void run(struct model *m)
{
	struct err e = {{0}, 0};
	int32_t ids[3] = {0, m->cfg.vocab - 1, m->cfg.vocab / 2};
	float *logits = malloc((size_t)m->cfg.vocab * sizeof *logits);
	if (logits && model_forward(m, NULL, NULL, ids, 3, logits, 0, &e) < 0 && !e.msg[0])
		__builtin_trap();
	free(logits);
}

static void load(const char *path, const struct model_load_opts *o)
{
	struct err e = {{0}, 0};
	struct model *m = model_load(path, o, &e);
	if (!m) {
		if (!e.msg[0])
			__builtin_trap(); /* a refusal always says why */
		return;
	}
	run(m);
	model_free(m);
}

static void from_gguf(const uint8_t *data, size_t size, const struct model_load_opts *o)
{
	int fd = memfd_create("fuzz_model", MFD_CLOEXEC);
	if (fd < 0)
		return;
	if (size == 0 || write(fd, data, size) == (ssize_t)size) {
		char path[64];
		snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
		struct model_config c;
		struct err e = {{0}, 0};
		if (model_config_load(path, &c, &e) == 0)
			model_config_free(&c);
		else if (!e.msg[0])
			__builtin_trap();
		load(path, o);
	}
	close(fd);
}

static void from_safetensors(int fam, const uint8_t *data, size_t size, const struct model_load_opts *o)
{
	char p[320];
	if (setup() < 0)
		return;
	snprintf(p, sizeof p, "%s/model.safetensors", dir[fam]);
	if (write_file(p, data, size) == 0)
		load(dir[fam], o);
}

/* Whole blocks of one type, in a buffer of exactly their size so that ASan
 * sees any read past them; then the second half alone, and a misaligned
 * range that must be refused. */
static void dequantize(const uint8_t *data, size_t size)
{
	struct err e = {{0}, 0};
	if (size < 1)
		return;
	uint32_t type = data[0];
	const struct ggml_type_traits *tr = gguf_ggml_traits(type);
	size_t nb = tr && tr->type_size ? (size - 1) / tr->type_size : 0;
	if (nb > 64)
		nb = 64;
	size_t nbytes = tr ? nb * tr->type_size : 0;
	int64_t n = tr ? (int64_t)nb * tr->blck_size : 0;
	uint8_t *blocks = malloc(nbytes ? nbytes : 1);
	float *out = malloc((size_t)(n ? n : 1) * sizeof *out);
	if (!blocks || !out)
		goto out;
	memcpy(blocks, data + 1, nbytes);
	struct gguf_tensor t = {"fuzz", 1, {n, 1, 1, 1}, (enum ggml_type)type, 0, blocks, nbytes};
	int ok = gguf_dequantize(&t, 0, n, out, &e) == 0;
	if (ok != (gguf_can_dequantize(t.type) && tr))
		__builtin_trap(); /* supported types convert, the others are refused */
	if (!ok && !e.msg[0])
		__builtin_trap();
	if (ok && nb >= 2) {
		int64_t half = (int64_t)(nb / 2) * tr->blck_size;
		if (gguf_dequantize(&t, half, n - half, out, &e) < 0)
			__builtin_trap();
		if (tr->blck_size > 1 && gguf_dequantize(&t, 1, tr->blck_size, out, &e) == 0)
			__builtin_trap(); /* not a whole block */
	}
	if (ok && gguf_dequantize(&t, 0, n + (int64_t)tr->blck_size, out, &e) == 0)
		__builtin_trap(); /* past the end */
out:
	free(blocks);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	static const enum wfmt fmts[4] = {WFMT_F32, WFMT_BF16, WFMT_NF4, WFMT_INT8};
	struct model_load_opts o = {fmts[(data[0] >> 4) & 3], (data[0] & 0x40) ? WFMT_BF16 : WFMT_F32};
	switch (data[0] & 3) {
	case 1:
		from_safetensors((data[0] >> 2) & 3, data + 1, size - 1, &o);
		break;
	case 2:
		dequantize(data + 1, size - 1);
		break;
	default:
		from_gguf(data + 1, size - 1, &o);
	}
	return 0;
}
