/* progress: the one-line progress display on stderr.
 *
 * Drawn only when stderr is a terminal (or forced), redrawn at most a few
 * times a second, with count, rate and ETA when the total is known:
 *   tok: 12.3k/50.0k records  4.1 MB  2.3k records/s  ETA 16s
 * ("\r" before, clear-to-end after; bytes left out while 0; the last line says
 * "in 21s" instead of the ETA and ends with a newline). Counts go 950, 12.3k,
 * 4.1M; bytes in powers of 1024 as KB, MB, GB.
 */
#ifndef LORAPIPE_PROGRESS_H
#define LORAPIPE_PROGRESS_H

#include <stdint.h>

struct progress {
	const char *what;    /* "records" */
	uint64_t total;      /* 0 when unknown */
	uint64_t done, bytes;
	double start, last;  /* seconds, monotonic */
	int enabled;
	int drawn;
};

/* mode: -1 never (--quiet), 0 when stderr is a terminal, 1 always (--progress).
 * The first draw comes 0.2 s after the start, so quick runs print nothing. */
void progress_start(struct progress *p, const char *what, uint64_t total, int mode);
/* Sets the counts and redraws if enough time has passed. Cheap to call often. */
void progress_update(struct progress *p, uint64_t done, uint64_t bytes);
/* Draws the final state and ends the line (nothing if never drawn). */
void progress_end(struct progress *p);
/* Seconds on a monotonic clock. */
double progress_now(void);

#endif
