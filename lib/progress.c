#include "progress.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "msg.h"

/* Often enough to look alive, rarely enough to cost nothing and not flicker. */
#define PROGRESS_INTERVAL 0.2

double progress_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void progress_start(struct progress *p, const char *what, uint64_t total, int mode)
{
	memset(p, 0, sizeof *p);
	p->what = what ? what : "items";
	p->total = total;
	p->start = p->last = progress_now();
	p->enabled = mode > 0 || (mode == 0 && isatty(STDERR_FILENO));
}

/* 950 -> "950", 12345 -> "12.3k", 4.1e6 -> "4.1M". */
static void progress_count(char *buf, size_t size, double v)
{
	static const char units[] = "kMGTP";
	if (v < 999.5) {
		snprintf(buf, size, "%.0f", v);
		return;
	}
	int u = -1;
	while (v >= 999.95 && u < 4) {
		v /= 1000;
		u++;
	}
	snprintf(buf, size, "%.1f%c", v, units[u]);
}

/* 300 -> "300 B", 4299161 -> "4.1 MB" (powers of 1024, as zstd prints them). */
static void progress_bytes(char *buf, size_t size, double v)
{
	static const char *units[] = {"KB", "MB", "GB", "TB", "PB"};
	if (v < 1024) {
		snprintf(buf, size, "%.0f B", v);
		return;
	}
	int u = -1;
	while (v >= 1023.95 && u < 4) {
		v /= 1024;
		u++;
	}
	snprintf(buf, size, "%.1f %s", v, units[u]);
}

/* 16 -> "16s", 185 -> "3m05s", 3720 -> "1h02m". */
static void progress_duration(char *buf, size_t size, double s)
{
	unsigned long t = s < 0 ? 0 : s > 1e9 ? 1000000000ul : (unsigned long)(s + 0.5);
	if (t < 60)
		snprintf(buf, size, "%lus", t);
	else if (t < 3600)
		snprintf(buf, size, "%lum%02lus", t / 60, t % 60);
	else
		snprintf(buf, size, "%luh%02lum", t / 3600, t / 60 % 60);
}

struct progress_line {
	char s[512];
	size_t n;
};

/* Appends, cutting off what does not fit (a long tool name or "what"); the
 * last PROGRESS_TAIL bytes stay free for the clear-to-end and newline. */
#define PROGRESS_TAIL 8
static void progress_add(struct progress_line *l, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void progress_add(struct progress_line *l, const char *fmt, ...)
{
	size_t room = sizeof l->s - PROGRESS_TAIL - l->n;
	if (l->n >= sizeof l->s - PROGRESS_TAIL)
		return;
	va_list ap;
	va_start(ap, fmt);
	int k = vsnprintf(l->s + l->n, room, fmt, ap);
	va_end(ap);
	if (k > 0)
		l->n += (size_t)k < room ? (size_t)k : room - 1;
}

static void progress_draw(struct progress *p, double now, int final)
{
	char done[32], total[32], bytes[32], rate[32], time[32];
	double elapsed = now - p->start;
	double r = elapsed > 0 ? (double)p->done / elapsed : 0;
	struct progress_line l = {.n = 0};

	progress_count(done, sizeof done, (double)p->done);
	progress_add(&l, "\r%s: %s", msg_prog(), done);
	if (p->total) {
		progress_count(total, sizeof total, (double)p->total);
		progress_add(&l, "/%s", total);
	}
	progress_add(&l, " %s", p->what);
	if (p->bytes) {
		progress_bytes(bytes, sizeof bytes, (double)p->bytes);
		progress_add(&l, "  %s", bytes);
	}
	if (r < 10)
		snprintf(rate, sizeof rate, "%.1f", r);
	else
		progress_count(rate, sizeof rate, r);
	progress_add(&l, "  %s %s/s", rate, p->what);
	if (final) {
		progress_duration(time, sizeof time, elapsed);
		progress_add(&l, "  in %s", time);
	} else if (p->total && p->done < p->total && r > 0) {
		progress_duration(time, sizeof time, (double)(p->total - p->done) / r);
		progress_add(&l, "  ETA %s", time);
	}
	/* Clear what is left of a longer previous line. */
	strcpy(l.s + l.n, final ? "\033[K\n" : "\033[K");
	fputs(l.s, stderr);
	fflush(stderr);
	p->drawn = 1;
	p->last = now;
}

void progress_update(struct progress *p, uint64_t done, uint64_t bytes)
{
	p->done = done;
	p->bytes = bytes;
	if (!p->enabled)
		return;
	double now = progress_now();
	if (now - p->last >= PROGRESS_INTERVAL)
		progress_draw(p, now, 0);
}

void progress_end(struct progress *p)
{
	if (!p->enabled || !p->drawn)
		return;
	progress_draw(p, progress_now(), 1);
	p->drawn = 0;
}
