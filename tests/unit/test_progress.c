/* progress: the line it draws into a pipe, how often, and when it stays silent. */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "msg.h"
#include "progress.h"

static int saved_stderr = -1, pipe_rd = -1;

/* Points stderr at a pipe; grab() reads back what was drawn since. */
static void capture(void)
{
	int p[2];
	if (pipe(p) < 0)
		abort();
	fflush(stderr);
	saved_stderr = dup(2);
	/* Neither end blocks: a progress that draws far too much fails the
	 * test instead of hanging it on a full pipe. */
	fcntl(p[0], F_SETFL, O_NONBLOCK);
	fcntl(p[1], F_SETFL, O_NONBLOCK);
	dup2(p[1], 2);
	close(p[1]);
	pipe_rd = p[0];
}

static void grab(char *buf, size_t size)
{
	fflush(stderr);
	ssize_t n = read(pipe_rd, buf, size - 1);
	buf[n > 0 ? n : 0] = 0;
}

static void release(void)
{
	fflush(stderr);
	dup2(saved_stderr, 2);
	close(saved_stderr);
	close(pipe_rd);
}

/* Pretends the work began `ago` seconds back and was last drawn long ago. */
static void age(struct progress *p, double ago)
{
	p->start -= ago;
	p->last -= ago;
}

static void test_line_format(void)
{
	struct progress p;
	char out[1024];
	capture();
	progress_start(&p, "records", 50000, 1);
	age(&p, 10);
	progress_update(&p, 12000, 4300000);
	grab(out, sizeof out);
	CHECK(strcmp(out, "\rtest_progress: 12.0k/50.0k records  4.1 MB  1.2k records/s  ETA 32s\033[K") == 0,
	      "got \"%s\"", out);
	/* Many updates right after a draw draw nothing. */
	for (int i = 0; i < 100000; i++)
		progress_update(&p, 12000 + (uint64_t)i, 4300000);
	grab(out, sizeof out);
	CHECK(out[0] == 0, "redrawn at once: \"%s\"", out);
	p.done = 50000;
	progress_end(&p);
	grab(out, sizeof out);
	CHECK(strcmp(out, "\rtest_progress: 50.0k/50.0k records  4.1 MB  5.0k records/s  in 10s\033[K\n") == 0,
	      "end: \"%s\"", out);
	progress_end(&p);
	grab(out, sizeof out);
	CHECK(out[0] == 0, "second end drew: \"%s\"", out);
	release();
}

static void test_redraw_rate(void)
{
	struct progress p;
	char out[8192];
	capture();
	progress_start(&p, "records", 0, 1);
	double t0 = progress_now();
	uint64_t i = 0;
	while (progress_now() - t0 < 0.7)
		progress_update(&p, ++i, 0);
	grab(out, sizeof out);
	int draws = 0;
	for (char *s = out; (s = strchr(s, '\r')); s++)
		draws++;
	CHECK(draws >= 2 && draws <= 4, "%d draws in 0.7 s, want about 3 (at most 5 a second)", draws);
	progress_end(&p);
	release();
}

static void test_no_total_and_units(void)
{
	struct progress p;
	char out[1024];
	capture();
	progress_start(&p, "tokens", 0, 1);
	age(&p, 2);
	progress_update(&p, 950, 300);
	grab(out, sizeof out);
	CHECK(strcmp(out, "\rtest_progress: 950 tokens  300 B  475 tokens/s\033[K") == 0, "got \"%s\"", out);

	progress_start(&p, "tokens", 0, 1);
	age(&p, 4);
	progress_update(&p, 4100000, 5ull << 30);
	grab(out, sizeof out);
	CHECK(strcmp(out, "\rtest_progress: 4.1M tokens  5.0 GB  1.0M tokens/s\033[K") == 0, "got \"%s\"", out);

	progress_start(&p, "steps", 0, 1);
	age(&p, 4);
	progress_update(&p, 6, 0); /* slow work: a rate with a decimal, no bytes */
	grab(out, sizeof out);
	CHECK(strcmp(out, "\rtest_progress: 6 steps  1.5 steps/s\033[K") == 0, "got \"%s\"", out);
	release();
}

static void test_eta_units(void)
{
	static const struct {
		uint64_t done, total;
		const char *eta;
	} cases[] = {
		{100, 137100, "ETA 22m50s"}, /* 137000 left at 100/s */
		{100, 372100, "ETA 1h02m"},
		{100, 1900, "ETA 18s"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		struct progress p;
		char out[1024];
		capture();
		progress_start(&p, "x", cases[i].total, 1);
		age(&p, 1);
		progress_update(&p, cases[i].done, 0);
		grab(out, sizeof out);
		release();
		CHECK(strstr(out, cases[i].eta) != NULL, "case %zu: \"%s\" lacks \"%s\"", i, out, cases[i].eta);
	}
}

static void test_silent_modes(void)
{
	struct progress p;
	char out[1024];
	capture();
	progress_start(&p, "records", 10, -1);
	age(&p, 10);
	progress_update(&p, 5, 0);
	progress_end(&p);
	CHECK(p.enabled == 0 && p.done == 5, "mode -1");
	progress_start(&p, "records", 10, 0); /* stderr is a pipe here */
	age(&p, 10);
	progress_update(&p, 5, 0);
	progress_end(&p);
	CHECK(p.enabled == 0, "mode 0 on a pipe is enabled");
	progress_start(&p, "records", 10, 1);
	progress_update(&p, 5, 0); /* too soon to draw */
	progress_end(&p);          /* never drawn: nothing */
	grab(out, sizeof out);
	release();
	CHECK(out[0] == 0, "drew: \"%s\"", out);
}

static void test_long_label(void)
{
	struct progress p;
	char out[2048], what[1000];
	memset(what, 'w', sizeof what - 1);
	what[sizeof what - 1] = 0;
	capture();
	progress_start(&p, what, 0, 1);
	age(&p, 1);
	progress_update(&p, 1, 0);
	grab(out, sizeof out);
	release();
	size_t n = strlen(out);
	CHECK(n > 100 && n < 600, "length %zu", n);
	CHECK(n > 3 && strcmp(out + n - 3, "\033[K") == 0, "clear-to-end kept");
}

int main(void)
{
	msg_init("/usr/bin/test_progress");
	RUN(test_line_format);
	RUN(test_redraw_rate);
	RUN(test_no_total_and_units);
	RUN(test_eta_units);
	RUN(test_silent_modes);
	RUN(test_long_label);
	return check_done();
}
