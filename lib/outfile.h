/* outfile: output files that appear whole or not at all.
 *
 * outfile_open("out.tok.zst") creates a temporary file beside the target (same
 * folder, so the rename is atomic); outfile_commit() flushes, fsyncs and renames
 * it into place; outfile_abort() (or a tool dying through msg_die) removes it.
 * The path "-" (or NULL) means standard output, written directly.
 *
 * The temporary is ".<name>.XXXXXX" in the target's folder, given the mode
 * 0666 & ~umask that a plain fopen would give. A target that exists and is not
 * a regular file (/dev/null, a FIFO, a terminal) is written in place, like
 * standard output; a symbolic link has the file it points to replaced.
 */
#ifndef LORAPIPE_OUTFILE_H
#define LORAPIPE_OUTFILE_H

#include <stdio.h>

#include "msg.h"

struct outfile {
	FILE *f;            /* write here */
	char *path;         /* the final name, NULL for standard output */
	char *tmp;          /* the temporary name while open */
	int seekable;       /* f can be rewound (a regular file) */
};

/* Opens; returns NULL with err set ("PATH: cannot create a file in its folder:
 * <errno>", "PATH: is a folder"). Refuses to write binary data to a terminal
 * when binary is set and the output is standard output. */
struct outfile *outfile_open(const char *path, int binary, struct err *err);
/* Writes n bytes at p straight to the file, after what f holds: a large
 * block is not copied into stdio's buffer first. 0, or -1 with errno set. */
int outfile_write(struct outfile *o, const void *p, size_t n);
/* Flushes, fsyncs, renames into place, fsyncs the folder and frees. Returns 0
 * or -1 with "PATH: write error: <errno>" (temp removed; o freed either way).
 * Standard output and devices are only flushed and checked: a late ENOSPC or
 * EPIPE is reported as "<stdout>: write error: ...". */
int outfile_commit(struct outfile *o, struct err *err);
/* Removes the temporary file and frees. NULL is allowed. */
void outfile_abort(struct outfile *o);
/* Removes every outfile still open: installed with msg_atexit, and safe to call
 * from a signal handler (it only unlinks; nothing is freed). Removes only what
 * this process opened, so a forked child dying leaves its parent's files. A
 * later outfile_commit of an outfile so removed fails ("output was aborted"). */
void outfile_abort_all(void);

#endif
