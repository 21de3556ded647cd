/* safetensors_driver: lib/safetensors from the command line, for
 * tests/ref/test_safetensors_py.py.
 *
 *   safetensors_driver list PATH OUTDIR
 *       opens PATH (a file or a model folder) and prints one JSON line per
 *       tensor, in our order: {"i":N,"name":..,"dtype":..,"shape":[..],"nbytes":N,"file":..};
 *       writes its bytes to OUTDIR/N.raw and, for float dtypes, st_read_f32's
 *       values to OUTDIR/N.f32 (little-endian fp32), then one line
 *       {"meta":{KEY:VALUE}} for each KEY given after "--meta".
 *   safetensors_driver copy IN OUT [--meta KEY ...]
 *       rewrites IN's tensors with st_write (handed over in reverse name order,
 *       so the writer's own ordering is what shows); with --meta, the listed
 *       metadata keys of IN in the order given (none listed: an empty object).
 * Errors go to stderr with exit status 1.
 */
#include <jv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

static int die(const char *msg)
{
	fprintf(stderr, "safetensors_driver: %s\n", msg);
	return 1;
}

static int save(const char *dir, int64_t i, const char *ext, const void *p, size_t n)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%lld.%s", dir, (long long)i, ext);
	FILE *f = fopen(path, "wb");
	if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0)
		return -1;
	return 0;
}

static int list(const char *path, const char *dir, char **keys, int n_keys)
{
	struct err e = {{0}, 0};
	struct safetensors *st = st_open(path, &e);
	if (!st)
		return die(e.msg);
	for (int64_t i = 0; i < st_n_tensors(st); i++) {
		const struct st_tensor *t = st_tensor(st, i);
		jv shape = jv_array();
		for (int d = 0; d < t->n_dims; d++)
			shape = jv_array_append(shape, jv_number((double)t->shape[d]));
		jv o = jv_object();
		o = jv_object_set(o, jv_string("i"), jv_number((double)i));
		o = jv_object_set(o, jv_string("name"), jv_string(t->name));
		o = jv_object_set(o, jv_string("dtype"), jv_string(st_dtype_name(t->dtype)));
		o = jv_object_set(o, jv_string("shape"), shape);
		o = jv_object_set(o, jv_string("nbytes"), jv_number((double)t->nbytes));
		o = jv_object_set(o, jv_string("file"), jv_string(t->file));
		jv s = jv_dump_string(o, 0);
		printf("%s\n", jv_string_value(s));
		jv_free(s);
		if (save(dir, i, "raw", t->data, t->nbytes) < 0)
			return die("cannot write to OUTDIR");
		if (t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16 || t->dtype == ST_F64) {
			float *v = malloc((size_t)t->n_elems * sizeof *v + 1);
			if (!v || st_read_f32(t, 0, t->n_elems, v, &e) < 0)
				return die(v ? e.msg : "out of memory");
			if (save(dir, i, "f32", v, (size_t)t->n_elems * sizeof *v) < 0)
				return die("cannot write to OUTDIR");
			free(v);
		}
	}
	jv m = jv_object();
	for (int k = 0; k < n_keys; k++) {
		const char *v = st_metadata(st, keys[k]);
		m = jv_object_set(m, jv_string(keys[k]), v ? jv_string(v) : jv_null());
	}
	jv s = jv_dump_string(jv_object_set(jv_object(), jv_string("meta"), m), 0);
	printf("%s\n", jv_string_value(s));
	jv_free(s);
	st_close(st);
	return 0;
}

static int copy(const char *in, const char *out, char **keys, int n_keys)
{
	struct err e = {{0}, 0};
	struct safetensors *st = st_open(in, &e);
	if (!st)
		return die(e.msg);
	int64_t n = st_n_tensors(st);
	struct st_out *t = calloc((size_t)n + 1, sizeof *t);
	const char **meta = calloc(2 * (size_t)(n_keys > 0 ? n_keys : 0) + 1, sizeof *meta);
	for (int64_t i = 0; i < n; i++) {
		const struct st_tensor *s = st_tensor(st, n - 1 - i);
		t[i].name = s->name;
		t[i].dtype = s->dtype;
		t[i].n_dims = s->n_dims;
		memcpy(t[i].shape, s->shape, sizeof t[i].shape);
		t[i].data = s->data;
	}
	for (int k = 0; k < n_keys; k++) {
		meta[2 * k] = keys[k];
		meta[2 * k + 1] = st_metadata(st, keys[k]);
		if (!meta[2 * k + 1])
			return die("a --meta key is not in the input");
	}
	int rc = st_write(out, t, (size_t)n, n_keys >= 0 ? meta : NULL, &e);
	free(t);
	free(meta);
	st_close(st);
	return rc < 0 ? die(e.msg) : 0;
}

int main(int argc, char **argv)
{
	int n_keys = -1;
	char **keys = NULL;
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "--meta") == 0) {
			keys = argv + i + 1;
			n_keys = argc - i - 1;
			argc = i;
			break;
		}
	if (argc == 4 && strcmp(argv[1], "list") == 0)
		return list(argv[2], argv[3], keys, n_keys < 0 ? 0 : n_keys);
	if (argc == 4 && strcmp(argv[1], "copy") == 0)
		return copy(argv[2], argv[3], keys, n_keys);
	fprintf(stderr, "usage: safetensors_driver list PATH OUTDIR [--meta KEY...]\n"
			"       safetensors_driver copy IN OUT [--meta KEY...]\n");
	return 2;
}
