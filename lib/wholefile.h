/* wholefile: a file taken whole, mapped read-only for the loaders that read
 * big files in place (GGUF, safetensors, tokenizer.json) instead of copying
 * them, or read into memory for the small ones that are parsed (JSON).
 *
 * Only regular files are taken, so a FIFO or a folder is refused up front.
 */
#ifndef LORAPIPE_WHOLEFILE_H
#define LORAPIPE_WHOLEFILE_H

#include <stddef.h>

#include "msg.h"

/* Maps path whole into *base, *len; returns 0, or -1 with err set ("PATH:
 * <errno>", "PATH: not a regular file", "PATH: file too large to map"). An
 * empty file maps to nothing: *base NULL, *len 0; the caller says what an
 * empty file means in its format. */
int wholefile_map(const char *path, const void **base, size_t *len, struct err *err);
/* Unmaps what wholefile_map mapped; nothing for base NULL. */
void wholefile_unmap(const void *base, size_t len);

/* Reads path, a regular file of at most max bytes, into a malloc'd buffer
 * with a NUL after its *len bytes; NULL with err set ("PATH: cannot open:
 * <errno>", "PATH: not a regular file of at most MAX bytes", a read error). */
char *wholefile_read(const char *path, size_t max, size_t *len, struct err *err);

#endif
