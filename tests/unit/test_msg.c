/* lib/msg's threads: msg_thread_start runs its function with SIGINT and
 * SIGTERM blocked, and the thread, started on another CPU, may then run on
 * every CPU its creator may. msg_init gives pipes on standard input and
 * output room for a megabyte. */
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "msg.h"

struct seen {
	int ran, sigint, sigterm;
	cpu_set_t cpus;
	int cpus_ok;
};

static void *look(void *arg)
{
	struct seen *s = arg;
	sigset_t mask;
	pthread_sigmask(SIG_SETMASK, NULL, &mask);
	s->sigint = sigismember(&mask, SIGINT);
	s->sigterm = sigismember(&mask, SIGTERM);
	s->cpus_ok = sched_getaffinity(0, sizeof s->cpus, &s->cpus) == 0;
	s->ran = 1;
	return s;
}

static void test_thread_start(void)
{
	cpu_set_t mine;
	CHECK(sched_getaffinity(0, sizeof mine, &mine) == 0, "sched_getaffinity");
	/* several, so that each CPU is the next one once */
	for (int i = 0; i < 4 && !check_case_failed; i++) {
		struct seen s = {0};
		pthread_t th;
		void *ret = NULL;
		CHECK(msg_thread_start(&th, look, &s) == 0, "no thread started");
		if (check_case_failed)
			return;
		pthread_join(th, &ret);
		CHECK(s.ran && ret == &s, "the function did not run or its value was lost");
		CHECK(s.sigint == 1 && s.sigterm == 1, "SIGINT %d, SIGTERM %d not blocked", s.sigint, s.sigterm);
		CHECK(s.cpus_ok && CPU_EQUAL(&s.cpus, &mine), "thread %d may run on %d CPUs, its creator on %d", i,
		      CPU_COUNT(&s.cpus), CPU_COUNT(&mine));
	}
	sigset_t now;
	pthread_sigmask(SIG_SETMASK, NULL, &now);
	CHECK(!sigismember(&now, SIGINT) && !sigismember(&now, SIGTERM), "the caller's mask changed");
}

/* This program run again with --pipes: msg_init first, as in a tool, then
 * the capacity of its standard input and output, written to standard error. */
static int pipes_child(void)
{
	msg_init("test_msg");
	fprintf(stderr, "%d %d\n", fcntl(STDIN_FILENO, F_GETPIPE_SZ), fcntl(STDOUT_FILENO, F_GETPIPE_SZ));
	return 0;
}

/* Standard input and output pipes of 64 KiB become 1 MiB. */
static void test_pipes_widened(void)
{
	int in[2], out[2], err[2];
	CHECK(pipe(in) == 0 && pipe(out) == 0 && pipe(err) == 0, "pipe");
	if (check_case_failed)
		return;
	int in_before = fcntl(in[0], F_GETPIPE_SZ), out_before = fcntl(out[0], F_GETPIPE_SZ);
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		dup2(in[0], STDIN_FILENO), dup2(out[1], STDOUT_FILENO), dup2(err[1], STDERR_FILENO);
		execl("/proc/self/exe", "test_msg", "--pipes", (char *)NULL);
		_exit(127);
	}
	close(in[0]), close(out[1]), close(err[1]);
	char said[64] = "";
	ssize_t k = read(err[0], said, sizeof said - 1);
	said[k > 0 ? k : 0] = 0;
	int status = 0;
	waitpid(pid, &status, 0);
	int got_in = 0, got_out = 0;
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0 && sscanf(said, "%d %d", &got_in, &got_out) == 2,
	      "the child: status %d, said \"%s\"", status, said);
	CHECK(in_before == 64 << 10 && got_in == 1 << 20, "standard input: %d bytes, then %d", in_before, got_in);
	CHECK(out_before == 64 << 10 && got_out == 1 << 20, "standard output: %d bytes, then %d", out_before, got_out);
	close(in[1]), close(out[0]), close(err[0]);
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "--pipes"))
		return pipes_child();
	msg_init("test_msg");
	RUN(test_thread_start);
	/* where a process may not have pipes of 1 MiB (fs.pipe-max-size), there is nothing to see */
	int p[2];
	int can = pipe(p) == 0 && fcntl(p[0], F_SETPIPE_SZ, 1 << 20) >= 1 << 20;
	close(p[0]), close(p[1]);
	if (can)
		RUN(test_pipes_widened);
	else
		SKIP(test_pipes_widened, "this process may not have pipes of 1 MiB");
	return check_done();
}
