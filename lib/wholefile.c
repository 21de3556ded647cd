/* wholefile: see wholefile.h. */
#include "wholefile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int wholefile_map(const char *path, const void **base, size_t *len, struct err *err)
{
	*base = NULL, *len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return err_set(err, "%s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0) {
		err_sys(err, "%s:", path);
		close(fd);
		return -1;
	}
	int rc = 0;
	if (!S_ISREG(st.st_mode))
		rc = err_set(err, "%s: not a regular file", path);
	else if ((uint64_t)st.st_size > SIZE_MAX / 2)
		rc = err_set(err, "%s: file too large to map", path);
	else if (st.st_size > 0) {
		void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			int saved = errno;
			close(fd);
			errno = saved;
			return err_sys(err, "%s: mmap:", path);
		}
		*base = map, *len = (size_t)st.st_size;
	}
	close(fd);
	return rc;
}

void wholefile_unmap(const void *base, size_t len)
{
	if (base)
		munmap((void *)base, len);
}

char *wholefile_read(const char *path, size_t max, size_t *len, struct err *err)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return err_set(err, "%s: cannot open: %s", path, strerror(errno)), NULL;
	struct stat st;
	if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > max) {
		fclose(f);
		return err_set(err, "%s: not a regular file of at most %zu bytes", path, max), NULL;
	}
	char *buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		fclose(f);
		return err_sys(err, "out of memory"), NULL;
	}
	size_t n = fread(buf, 1, (size_t)st.st_size, f);
	int bad = ferror(f);
	fclose(f);
	if (bad)
		return free(buf), err_sys(err, "%s: read error:", path), NULL;
	buf[n] = 0;
	*len = n;
	return buf;
}
