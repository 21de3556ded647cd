/* fuzz_dsgen: any bytes through ds-gen's parsers. The first byte picks one:
 *   0  a spec file (dsgen_spec_load)
 *   1  a model's reply: the JSON value found in it (dsgen_extract_json) and
 *      the normalized text (dsgen_normalize)
 *   2  a JSON schema and a value on the next line (jsonschema_check, then
 *      jsonschema_validate)
 *   3  an output file read for a resumed run (dsgen_scan_output, which cuts a
 *      torn last line off the file)
 * None may crash, hang or leak; every failure must come with a message. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dsgen.h"
#include "jsonl.h"
#include "jsonschema.h"

static int write_temp(const uint8_t *data, size_t size, char *path)
{
	strcpy(path, "/tmp/fuzz_dsgen_XXXXXX");
	int fd = mkstemp(path);
	if (fd < 0)
		return -1;
	int ok = size == 0 || write(fd, data, size) == (ssize_t)size;
	close(fd);
	if (!ok)
		unlink(path);
	return ok ? 0 : -1;
}

static int count_record(void *ctx, jv rec, long line, struct err *err)
{
	(void)line, (void)err;
	jv_free(rec);
	++*(long *)ctx;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	const int mode = data[0] & 3;
	data++, size--;
	struct err err = {0};
	char path[32];
	if (mode == 0 || mode == 3) {
		if (write_temp(data, size, path) < 0)
			return 0;
		if (mode == 0) {
			struct dsgen_spec *s = dsgen_spec_load(path, &err);
			if (!s && !err.msg[0])
				abort();
			dsgen_spec_free(s);
		} else {
			long n = 0, cut = 0;
			long rc = dsgen_scan_output(path, count_record, &n, &cut, &err);
			if ((rc < 0 && !err.msg[0]) || (rc >= 0 && rc != n))
				abort();
		}
		unlink(path);
		return 0;
	}
	char *text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = 0;
	if (mode == 1) {
		jv v;
		if (dsgen_extract_json(text, size, &v) == 0) {
			if (!jv_is_valid(v))
				abort();
			jv_free(v);
		}
		free(dsgen_normalize(text));
	} else {
		char *nl = memchr(text, '\n', size);
		if (nl) {
			*nl = 0;
			/* jsonl_parse: the project's one way into jq (jq 1.6 leaks on some bad JSON) */
			jv schema = jv_invalid(), value = jv_invalid();
			if (jsonl_parse(text, (size_t)(nl - text), "schema", &schema, &err) == 0 &&
			    jsonl_parse(nl + 1, size - (size_t)(nl + 1 - text), "value", &value, &err) == 0) {
				if (jsonschema_check(schema, &err) == 0) {
					if (jsonschema_validate(schema, value, "arguments", &err) < 0 &&
					    !err.msg[0])
						abort();
				} else if (!err.msg[0]) {
					abort();
				}
			}
			jv_free(schema);
			jv_free(value);
		}
	}
	free(text);
	return 0;
}
