/* lib/msg's threads: msg_thread_start runs its function with SIGINT and
 * SIGTERM blocked, and the thread, started on another CPU, may then run on
 * every CPU its creator may. */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>

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

int main(void)
{
	msg_init("test_msg");
	RUN(test_thread_start);
	return check_done();
}
