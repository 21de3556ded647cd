#include "msg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

int msg_thread_start(pthread_t *th, void *(*fn)(void *), void *arg)
{
	sigset_t stop, old;
	sigemptyset(&stop);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop, &old); /* the new thread inherits the mask */
	int rc = pthread_create(th, NULL, fn, arg) == 0 ? 0 : -1;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return rc;
}

void msg_catch_signals(void)
{
	struct sigaction sa = {.sa_handler = on_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}
