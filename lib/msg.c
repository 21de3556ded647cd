#include "msg.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int msg_level = 2;
static const char *prog = "lorapipe";
static void (*cleanup)(void);

static int err_vset(struct err *err, int code, const char *fmt, va_list ap)
{
	if (!err)
		return -1;
	int saved = errno;
	vsnprintf(err->msg, sizeof err->msg, fmt, ap);
	size_t n = strlen(err->msg);
	if (code == EXIT_RUNTIME && n > 0 && err->msg[n - 1] == ':')
		snprintf(err->msg + n, sizeof err->msg - n, " %s", strerror(saved));
	err->code = code;
	return -1;
}

int err_set(struct err *err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	err_vset(err, EXIT_USAGE, fmt, ap);
	va_end(ap);
	return -1;
}

int err_sys(struct err *err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	err_vset(err, EXIT_RUNTIME, fmt, ap);
	va_end(ap);
	return -1;
}

int err_wrap(struct err *err, const char *fmt, ...)
{
	if (!err)
		return -1;
	char ctx[512], old[sizeof err->msg];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ctx, sizeof ctx, fmt, ap);
	va_end(ap);
	memcpy(old, err->msg, sizeof old);
	/* A message too long for err->msg is cut at its end; the return value is
	 * looked at only so that gcc's -Wformat-truncation accepts the cut. */
	if (snprintf(err->msg, sizeof err->msg, "%s: %s", ctx, old) >= (int)sizeof err->msg)
		err->msg[sizeof err->msg - 1] = '\0';
	return -1;
}

/* A pipe holds 64 KiB: two tools passing tens of megabytes through one
 * would wake each other every 64 KiB, a context switch on each side (and
 * in a virtual machine an interrupt between its CPUs). 1 MiB is the most an
 * unprivileged process may ask for by default; a refusal changes nothing. */
#define PIPE_BYTES (1 << 20)
static void pipe_widen(int fd)
{
#ifdef F_SETPIPE_SZ
	struct stat st;
	if (fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode) && fcntl(fd, F_GETPIPE_SZ) < PIPE_BYTES)
		(void)fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES);
#else
	(void)fd;
#endif
}

void msg_init(const char *argv0)
{
	/* Standard input and output carry bulk data: buffered by the megabyte,
	 * not stdio's 4 KiB (a system call every few records). Set here, before
	 * any read or write; glibc takes the size only with a buffer. A terminal
	 * keeps its own. */
	static char in_buf[1 << 20], out_buf[1 << 20];
	if (!isatty(STDIN_FILENO))
		setvbuf(stdin, in_buf, _IOFBF, sizeof in_buf);
	if (!isatty(STDOUT_FILENO))
		setvbuf(stdout, out_buf, _IOFBF, sizeof out_buf);
	pipe_widen(STDIN_FILENO);
	pipe_widen(STDOUT_FILENO);
	if (!argv0)
		return;
	const char *slash = strrchr(argv0, '/');
	prog = slash ? slash + 1 : argv0;
}

const char *msg_prog(void) { return prog; }

void msg_atexit(void (*fn)(void)) { cleanup = fn; }

static void vprint(int level, const char *kind, const char *fmt, va_list ap)
{
	if (msg_level < level)
		return;
	fprintf(stderr, "%s: %s", prog, kind);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

void msg_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprint(1, "", fmt, ap);
	va_end(ap);
}

void msg_warn(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprint(2, "warning: ", fmt, ap);
	va_end(ap);
}

void msg_info(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprint(4, "", fmt, ap);
	va_end(ap);
}

_Noreturn void msg_die(int status, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprint(1, "", fmt, ap);
	va_end(ap);
	if (cleanup)
		cleanup();
	exit(status);
}

_Noreturn void msg_die_err(const struct err *err)
{
	msg_die(err->code ? err->code : EXIT_USAGE, "%s", err->msg);
}

void msg_die_if(int failed, const struct err *err)
{
	if (failed)
		msg_die_err(err);
}

volatile sig_atomic_t msg_interrupted;

static void on_signal(int sig) { msg_interrupted = sig; }

static const char *bus_name;

/* Only what a signal handler may call: the read of the mapping cannot go on. */
static void on_bus(int sig)
{
	(void)sig;
	static const char what[] = ": the file shrank while it was read (a mapped input must not change)\n";
	if (write(2, prog, strlen(prog)) < 0 || write(2, ": ", 2) < 0 || write(2, bus_name, strlen(bus_name)) < 0 ||
	    write(2, what, sizeof what - 1) < 0) {
		/* nothing more to say */
	}
	if (cleanup)
		cleanup();
	_exit(EXIT_RUNTIME);
}

void msg_catch_bus(const char *name)
{
	bus_name = name;
	struct sigaction sa = {.sa_handler = on_bus};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
}

/* A new thread is queued on its creator's CPU (the scheduler's wake-up
 * affinity), and an idle CPU may leave it there for a millisecond or more:
 * on a 2-CPU VM, the first milliseconds of ds-fmt's workers ran one at a
 * time. So a thread starts on another CPU the process may use (each new
 * thread the next one) and then may run on any of them. */
struct started {
	void *(*fn)(void *);
	void *arg;
	cpu_set_t allowed;
};

static void *started_main(void *p)
{
	struct started st = *(struct started *)p;
	free(p);
	sched_setaffinity(0, sizeof st.allowed, &st.allowed);
	return st.fn(st.arg);
}

/* In *at, a CPU of allowed but the caller's, the next one round; 0, or -1
 * when there is no other. */
static int other_cpu(const cpu_set_t *allowed, cpu_set_t *at)
{
	static _Atomic unsigned turn;
	int here = sched_getcpu(), n = CPU_COUNT(allowed) - (here >= 0 && CPU_ISSET(here, allowed));
	if (here < 0 || n < 1)
		return -1;
	unsigned k = turn++ % (unsigned)n;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (c != here && CPU_ISSET(c, allowed) && k-- == 0) {
			CPU_ZERO(at);
			CPU_SET(c, at);
			return 0;
		}
	return -1;
}

int msg_thread_start(pthread_t *th, void *(*fn)(void *), void *arg)
{
	struct started *st = malloc(sizeof *st);
	if (!st)
		return -1;
	st->fn = fn, st->arg = arg;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	cpu_set_t at;
	if (sched_getaffinity(0, sizeof st->allowed, &st->allowed) == 0 && other_cpu(&st->allowed, &at) == 0)
		pthread_attr_setaffinity_np(&attr, sizeof at, &at);
	sigset_t stop, old;
	sigemptyset(&stop);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop, &old); /* the new thread inherits the mask */
	int rc = pthread_create(th, &attr, started_main, st) == 0 ? 0 : -1;
	if (rc < 0) /* the CPU may have gone offline */
		rc = pthread_create(th, NULL, started_main, st) == 0 ? 0 : -1;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (rc < 0)
		free(st);
	return rc;
}

int msg_cpus(void)
{
	cpu_set_t set;
	int n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
	return n < 1 ? 1 : n;
}

void msg_catch_signals(void)
{
	struct sigaction sa = {.sa_handler = on_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}
