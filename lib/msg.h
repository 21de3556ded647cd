/* msg: errors as values in the library, messages and exit statuses in the tools.
 *
 * The rule, stated once: a lib/ function that can fail takes `struct err *err`
 * as its last argument, returns -1 (or NULL) on failure and leaves a one-line
 * message in err->msg, without a trailing newline and without the tool's name.
 * lib/ never prints and never exits. Callers add context in front with
 * err_wrap(), so a message reads from the outside in:
 *     "train.jsonl:12: key \"train\": span [4,9) ends inside a UTF-8 character"
 * Only bin/ prints, through msg_error()/msg_die(), which prefix the tool's name.
 */
#ifndef LORAPIPE_MSG_H
#define LORAPIPE_MSG_H

#include <pthread.h>
#include <signal.h>
#include <stdarg.h>

/* Exit statuses shared by every tool. */
enum {
	EXIT_OK = 0,
	EXIT_RUNTIME = 1, /* the input was fine, something else failed (I/O, memory) */
	EXIT_USAGE = 2,   /* bad command line or bad input data */
};

struct err {
	char msg[1024];
	int code; /* EXIT_USAGE for bad input (the default), EXIT_RUNTIME otherwise */
};

/* Sets err->msg from a printf format; code becomes EXIT_USAGE. Returns -1.
 * A NULL err is allowed and ignored. */
int err_set(struct err *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* As err_set, with code EXIT_RUNTIME: for failures that are not the input's fault.
 * When fmt ends in ':' the text of errno is appended. */
int err_sys(struct err *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Prepends "<context>: " to the message already in err. Returns -1. */
int err_wrap(struct err *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Tool side. msg_init() records the tool's name (basename of argv[0]) and
 * gives standard input and output megabyte buffers (not on a terminal), and
 * a pipe among them room for a megabyte: it comes first in main, before any
 * I/O. */
void msg_init(const char *argv0);
const char *msg_prog(void);
/* Display level: 0 silent, 1 errors, 2 warnings and results (default), 3 progress, 4 info. */
extern int msg_level;
void msg_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void msg_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void msg_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints "prog: <err->msg>" and exits with err->code. Runs the cleanup
 * installed with msg_atexit() first (so partial outputs are removed). */
_Noreturn void msg_die_err(const struct err *err);
_Noreturn void msg_die(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* One cleanup hook run before msg_die exits (outfile uses it to remove temporaries). */
void msg_atexit(void (*fn)(void));
/* msg_die_err(err) when failed is true: the one-line check after a lib call. */
void msg_die_if(int failed, const struct err *err);

/* SIGINT and SIGTERM set msg_interrupted (the signal's number) instead of
 * killing the tool, so it can stop between records, remove its partial output
 * and exit 130; SIGPIPE is ignored so a closed pipe is a write error. */
extern volatile sig_atomic_t msg_interrupted;
void msg_catch_signals(void);
/* SIGBUS, raised where a mapped file (jsonl_open_mapped) shrank under the
 * tool, ends it with "PROG: NAME: the file shrank while it was read ...",
 * the msg_atexit cleanup run (partial outputs removed), and exit status 1. */
void msg_catch_bus(const char *name);
/* Starts fn(arg) on a thread with SIGINT and SIGTERM blocked: they stay the
 * thread's that catches them and reads or waits (its blocking read is what
 * they interrupt). The thread starts on a CPU other than the caller's, when
 * the process may use one, and may then move. 0, or -1 when no thread could
 * start. */
int msg_thread_start(pthread_t *th, void *(*fn)(void *), void *arg);
/* The CPUs this process may run on (its affinity), at least 1. */
int msg_cpus(void);

#endif
