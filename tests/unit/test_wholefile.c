/* wholefile: a mapped or read file holds the file's bytes, whatever their
 * size and content; an empty file maps to nothing; what is not a regular
 * file, is missing or is larger than asked is refused with its name. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "wholefile.h"

static char dir[] = "/tmp/test_wholefile.XXXXXX";

static void write_file(const char *path, const char *s, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (f) {
		fwrite(s, 1, n, f);
		fclose(f);
	}
}

static void test_random_files(void)
{
	check_seed_init();
	char path[64];
	snprintf(path, sizeof path, "%s/f", dir);
	for (int i = 0; i < 40 && !check_case_failed; i++) {
		/* sizes around the page size and beyond, bytes of any value (NUL too) */
		size_t n = i < 4 ? (size_t)(4095 + i) : (size_t)rng_below(check_rng(), i % 2 ? 100 : 70000) + 1;
		char *want = malloc(n);
		for (size_t k = 0; k < n; k++)
			want[k] = (char)rng_below(check_rng(), 256);
		write_file(path, want, n);
		struct err e = {0};
		const void *map;
		size_t len;
		CHECK(wholefile_map(path, &map, &len, &e) == 0 && map && len == n && !memcmp(map, want, n),
		      "map of %zu bytes: %s", n, e.msg);
		wholefile_unmap(map, len);
		char *got = wholefile_read(path, n, &len, &e);
		CHECK(got && len == n && !memcmp(got, want, n) && got[n] == 0, "read of %zu bytes: %s", n, e.msg);
		free(got);
		got = wholefile_read(path, n - 1, &len, &e);
		CHECK(!got && strstr(e.msg, path) && strstr(e.msg, "at most"), "%zu bytes read with max %zu: %s", n,
		      n - 1, e.msg);
		free(got);
		free(want);
	}
}

static void test_refused(void)
{
	char path[64], missing[64];
	snprintf(path, sizeof path, "%s/empty", dir);
	snprintf(missing, sizeof missing, "%s/missing", dir);
	write_file(path, "", 0);
	struct err e = {0};
	const void *map = (const void *)1;
	size_t len = 1;
	CHECK(wholefile_map(path, &map, &len, &e) == 0 && !map && len == 0, "empty file: %s", e.msg);
	wholefile_unmap(map, len);
	char *got = wholefile_read(path, 10, &len, &e);
	CHECK(got && len == 0 && got[0] == 0, "empty file read: %s", e.msg);
	free(got);
	CHECK(wholefile_map(dir, &map, &len, &e) < 0 && strstr(e.msg, dir) && strstr(e.msg, "not a regular file"),
	      "folder: %s", e.msg);
	CHECK(!wholefile_read(dir, 10, &len, &e) && strstr(e.msg, "not a regular file"), "folder read: %s", e.msg);
	CHECK(wholefile_map(missing, &map, &len, &e) < 0 && strstr(e.msg, missing) &&
		      strstr(e.msg, "No such file"),
	      "missing: %s", e.msg);
	CHECK(!wholefile_read(missing, 10, &len, &e) && strstr(e.msg, "cannot open"), "missing read: %s", e.msg);
	CHECK(wholefile_map("/dev/null", &map, &len, &e) < 0 && strstr(e.msg, "not a regular file"), "device: %s",
	      e.msg);
}

int main(void)
{
	if (!mkdtemp(dir)) {
		printf("not ok - test_wholefile: mkdtemp failed\n");
		return 1;
	}
	RUN(test_random_files);
	RUN(test_refused);
	char cmd[80];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	if (system(cmd) != 0)
		printf("# could not remove %s\n", dir);
	return check_done();
}
