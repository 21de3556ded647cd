/* outfile: a file appears whole or not at all, and no temporary is ever left behind. */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "outfile.h"

static char dir[] = "/tmp/test_outfile.XXXXXX";

static const char *in_dir(const char *name)
{
	static char buf[4][300];
	static int k;
	k = (k + 1) % 4;
	snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
	return buf[k];
}

/* Names in the folder, space-separated, sorted by readdir order: "" when empty. */
static int list_dir(char *out, size_t size)
{
	DIR *d = opendir(dir);
	int n = 0;
	size_t len = 0;
	out[0] = 0;
	for (struct dirent *e; d && (e = readdir(d));) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		len += snprintf(out + len, len < size ? size - len : 0, "%s%s", n ? " " : "", e->d_name);
		n++;
	}
	if (d)
		closedir(d);
	return n;
}

static void clear_dir(void)
{
	DIR *d = opendir(dir);
	for (struct dirent *e; d && (e = readdir(d));)
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			unlink(in_dir(e->d_name));
	if (d)
		closedir(d);
}

static int file_is(const char *p, const char *want)
{
	char buf[256] = {0};
	FILE *f = fopen(p, "r");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	return n == strlen(want) && memcmp(buf, want, n) == 0;
}

static void put(const char *p, const char *text)
{
	FILE *f = fopen(p, "w");
	if (f) {
		fputs(text, f);
		fclose(f);
	}
}

static void test_commit(void)
{
	clear_dir();
	mode_t old = umask(027);
	struct err err;
	const char *target = in_dir("out.tok");
	struct outfile *o = outfile_open(target, 1, &err);
	umask(old);
	CHECK(o != NULL, "open: %s", err.msg);
	if (!o)
		return;
	CHECK(o->seekable == 1 && strcmp(o->path, target) == 0, "fields");
	CHECK(strncmp(o->tmp, in_dir(".out.tok."), strlen(in_dir(".out.tok."))) == 0, "temp name %s", o->tmp);
	fputs("hello", o->f);
	char names[512];
	CHECK(access(target, F_OK) != 0, "target exists before commit");
	CHECK(list_dir(names, sizeof names) == 1 && names[0] == '.', "while open: %s", names);
	CHECK(outfile_commit(o, &err) == 0, "commit: %s", err.msg);
	CHECK(file_is(target, "hello"), "content");
	CHECK(list_dir(names, sizeof names) == 1 && strcmp(names, "out.tok") == 0, "after commit: %s", names);
	struct stat st;
	CHECK(stat(target, &st) == 0 && (st.st_mode & 0777) == 0640, "mode %o, want 0640 from umask 027",
	      st.st_mode & 0777);
}

static void test_replace_and_abort(void)
{
	clear_dir();
	struct err err;
	const char *target = in_dir("data.jsonl");
	put(target, "old");
	struct outfile *o = outfile_open(target, 0, &err);
	CHECK(o != NULL, "open: %s", err.msg);
	if (!o)
		return;
	fputs("new, half written", o->f);
	fflush(o->f);
	CHECK(file_is(target, "old"), "the old file stays whole while the new one is written");
	outfile_abort(o);
	char names[512];
	CHECK(list_dir(names, sizeof names) == 1 && strcmp(names, "data.jsonl") == 0, "after abort: %s", names);
	CHECK(file_is(target, "old"), "abort kept the old file");

	o = outfile_open(target, 0, &err);
	fputs("new", o->f);
	CHECK(outfile_commit(o, &err) == 0, "commit: %s", err.msg);
	CHECK(file_is(target, "new"), "replaced");
	CHECK(list_dir(names, sizeof names) == 1, "no temp: %s", names);

	outfile_abort(NULL);
	o = outfile_open(in_dir("never"), 0, &err);
	outfile_abort(o);
	CHECK(list_dir(names, sizeof names) == 1, "abort of a new file leaves nothing: %s", names);
}

static void test_open_errors(void)
{
	struct err err = {{0}, 0};
	CHECK(outfile_open("/nonexistent/dir/x", 0, &err) == NULL, "opened");
	CHECK(strcmp(err.msg, "/nonexistent/dir/x: cannot create a file in its folder: No such file or directory") == 0,
	      "got \"%s\"", err.msg);
	CHECK(err.code == EXIT_RUNTIME, "code %d", err.code);
	char want[512];
	snprintf(want, sizeof want, "%s: is a folder", dir);
	CHECK(outfile_open(dir, 0, &err) == NULL && strcmp(err.msg, want) == 0, "folder: \"%s\"", err.msg);
	CHECK(outfile_open("", 0, &err) == NULL && strcmp(err.msg, "empty output file name") == 0, "empty: %s",
	      err.msg);
	if (getuid() != 0) {
		mkdir(in_dir("ro"), 0555);
		CHECK(outfile_open(in_dir("ro/x"), 0, &err) == NULL && strstr(err.msg, "Permission denied"),
		      "read-only folder: %s", err.msg);
		rmdir(in_dir("ro"));
	}
}

/* Runs fn in a child with stdout on fd; returns its exit status (or 128+signal). */
static int in_child(void (*fn)(void), int fd)
{
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 2); /* msg_die's message is expected; keep it out of the test log */
		if (fd >= 0)
			dup2(fd, 1);
		fn();
		_exit(0);
	}
	int status;
	waitpid(pid, &status, 0);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void child_dies(void)
{
	msg_init("test_outfile");
	msg_atexit(outfile_abort_all);
	struct err err;
	struct outfile *a = outfile_open(in_dir("a.out"), 1, &err);
	struct outfile *b = outfile_open(in_dir("b.out"), 1, &err);
	if (!a || !b)
		_exit(10);
	fputs("partial", a->f);
	fputs("partial", b->f);
	msg_die(EXIT_USAGE, "bad record");
}

static void on_term(int sig)
{
	outfile_abort_all();
	_exit(128 + sig);
}

static void child_signalled(void)
{
	signal(SIGTERM, on_term);
	struct err err;
	struct outfile *o = outfile_open(in_dir("c.out"), 1, &err);
	if (!o)
		_exit(10);
	fputs("partial", o->f);
	raise(SIGTERM);
	_exit(11);
}

static void test_die_leaves_nothing(void)
{
	clear_dir();
	char names[512];
	int st = in_child(child_dies, -1);
	CHECK(st == EXIT_USAGE, "child exited %d", st);
	CHECK(list_dir(names, sizeof names) == 0, "left after msg_die: %s", names);
	st = in_child(child_signalled, -1);
	CHECK(st == 128 + SIGTERM, "child exited %d", st);
	CHECK(list_dir(names, sizeof names) == 0, "left after SIGTERM: %s", names);
}

static void child_abort_all(void) { outfile_abort_all(); }

/* A forked child dying must not take its parent's temporaries with it. */
static void test_fork_keeps_parent_files(void)
{
	clear_dir();
	struct err err;
	struct outfile *o = outfile_open(in_dir("parent.out"), 0, &err);
	CHECK(o != NULL, "open: %s", err.msg);
	if (!o)
		return;
	fputs("mine", o->f);
	fflush(o->f);
	in_child(child_abort_all, -1);
	CHECK(access(o->tmp, F_OK) == 0, "the child removed the parent's temporary");
	CHECK(outfile_commit(o, &err) == 0, "commit: %s", err.msg);
	CHECK(file_is(in_dir("parent.out"), "mine"), "content");
}

static void test_commit_after_abort_all(void)
{
	clear_dir();
	struct err err;
	struct outfile *o = outfile_open(in_dir("x.out"), 0, &err);
	fputs("data", o->f);
	outfile_abort_all();
	CHECK(outfile_commit(o, &err) == -1, "commit after abort_all succeeded");
	CHECK(strstr(err.msg, "output was aborted") != NULL, "got \"%s\"", err.msg);
	char names[512];
	CHECK(list_dir(names, sizeof names) == 0, "left: %s", names);
}

static int report_fd = -1;

/* The child's verdict on stdout goes back through report_fd. */
static void report(const char *s)
{
	if (write(report_fd, s, strlen(s)) < 0)
		_exit(20);
}

static void child_stdout_file(void)
{
	struct err err;
	struct outfile *o = outfile_open("-", 1, &err);
	if (!o)
		return report(err.msg);
	if (o->f != stdout || o->path || o->tmp || o->seekable != 1)
		return report("fields");
	fputs("to stdout", o->f);
	report(outfile_commit(o, &err) == 0 ? "ok" : err.msg);
}

static void child_stdout_pipe(void)
{
	struct err err;
	struct outfile *o = outfile_open(NULL, 1, &err);
	if (!o)
		return report(err.msg);
	if (o->seekable != 0)
		return report("a pipe is seekable");
	outfile_abort(o);
	report("ok");
}

static void child_stdout_full(void)
{
	struct err err;
	struct outfile *o = outfile_open("-", 0, &err);
	if (!o)
		return report(err.msg);
	fputs("no room", o->f);
	report(outfile_commit(o, &err) == 0 ? "commit succeeded" : err.msg);
}

static void child_stdout_tty(void)
{
	struct err err;
	struct outfile *o = outfile_open("-", 1, &err);
	if (o)
		return report("binary output to a terminal accepted");
	char msg[sizeof err.msg];
	strcpy(msg, err.msg);
	o = outfile_open("-", 0, &err); /* text is fine */
	report(o ? msg : "text output to a terminal refused");
}

/* Runs fn in a child with stdout on fd and returns what it reported. */
static void run_stdout(void (*fn)(void), int fd, char *got, size_t size)
{
	int p[2];
	if (pipe(p) < 0) {
		snprintf(got, size, "pipe failed");
		return;
	}
	report_fd = p[1];
	in_child(fn, fd);
	close(p[1]);
	ssize_t n = read(p[0], got, size - 1);
	got[n > 0 ? n : 0] = 0;
	close(p[0]);
}

static void test_stdout(void)
{
	clear_dir();
	char got[1100];
	int fd = open(in_dir("stdout.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
	run_stdout(child_stdout_file, fd, got, sizeof got);
	close(fd);
	CHECK(strcmp(got, "ok") == 0, "regular file: %s", got);
	CHECK(file_is(in_dir("stdout.txt"), "to stdout"), "content");

	int p[2];
	if (pipe(p) == 0) {
		run_stdout(child_stdout_pipe, p[1], got, sizeof got);
		close(p[0]);
		close(p[1]);
		CHECK(strcmp(got, "ok") == 0, "pipe: %s", got);
	}

	fd = open("/dev/full", O_WRONLY);
	if (fd >= 0) {
		run_stdout(child_stdout_full, fd, got, sizeof got);
		close(fd);
		CHECK(strcmp(got, "<stdout>: write error: No space left on device") == 0, "full: %s", got);
	}
}

static int pty_master = -1, pty_slave = -1;

static int open_pty(void)
{
	pty_master = posix_openpt(O_RDWR | O_NOCTTY);
	if (pty_master >= 0 && grantpt(pty_master) == 0 && unlockpt(pty_master) == 0)
		pty_slave = open(ptsname(pty_master), O_RDWR | O_NOCTTY);
	if (pty_slave < 0 && pty_master >= 0)
		close(pty_master);
	return pty_slave >= 0;
}

static void test_binary_to_terminal(void)
{
	int master = pty_master, slave = pty_slave;
	char got[1100];
	run_stdout(child_stdout_tty, slave, got, sizeof got);
	close(slave);
	close(master);
	CHECK(strcmp(got, "refusing to write binary output to a terminal; use -o FILE or redirect standard output") == 0,
	      "got \"%s\"", got);
}

/* Devices and FIFOs are written in place: a rename would replace /dev/null with a file. */
static void test_special_targets(void)
{
	struct err err;
	struct outfile *o = outfile_open("/dev/null", 1, &err);
	CHECK(o != NULL, "open /dev/null: %s", err.msg);
	if (o) {
		CHECK(o->tmp == NULL && o->seekable == 0, "written in place");
		fputs("gone", o->f);
		CHECK(outfile_commit(o, &err) == 0, "commit: %s", err.msg);
	}
	struct stat st;
	CHECK(stat("/dev/null", &st) == 0 && S_ISCHR(st.st_mode), "/dev/null is still a device");

	o = outfile_open("/dev/full", 1, &err);
	CHECK(o != NULL, "open /dev/full: %s", err.msg);
	if (o) {
		fputs("no room", o->f);
		CHECK(outfile_commit(o, &err) == -1, "commit to /dev/full succeeded");
		CHECK(strcmp(err.msg, "/dev/full: write error: No space left on device") == 0, "got \"%s\"", err.msg);
	}

	/* A symbolic link: the file it points to is replaced, the link stays. */
	clear_dir();
	put(in_dir("real.txt"), "old");
	CHECK(symlink("real.txt", in_dir("link.txt")) == 0, "symlink");
	o = outfile_open(in_dir("link.txt"), 0, &err);
	CHECK(o != NULL, "open link: %s", err.msg);
	if (o) {
		fputs("new", o->f);
		CHECK(outfile_commit(o, &err) == 0, "commit: %s", err.msg);
	}
	CHECK(lstat(in_dir("link.txt"), &st) == 0 && S_ISLNK(st.st_mode), "the link was replaced by a file");
	CHECK(file_is(in_dir("real.txt"), "new"), "the linked file was not updated");
	char names[512];
	CHECK(list_dir(names, sizeof names) == 2, "left: %s", names);
}

/* A relative name: the temporary goes beside it in the current folder. */
static void test_relative_name(void)
{
	clear_dir();
	char cwd[4096];
	if (!getcwd(cwd, sizeof cwd) || chdir(dir) != 0) {
		CHECK(0, "chdir");
		return;
	}
	struct err err;
	struct outfile *o = outfile_open("rel.txt", 0, &err);
	CHECK(o && strncmp(o->tmp, ".rel.txt.", 9) == 0, "temp %s", o ? o->tmp : err.msg);
	if (o) {
		fputs("r", o->f);
		CHECK(outfile_commit(o, &err) == 0, "commit: %s", err.msg);
	}
	CHECK(file_is("rel.txt", "r"), "content");
	if (chdir(cwd) != 0)
		CHECK(0, "chdir back");
}

int main(void)
{
	if (!mkdtemp(dir)) {
		printf("not ok - mkdtemp\n");
		return 1;
	}
	RUN(test_commit);
	RUN(test_replace_and_abort);
	RUN(test_open_errors);
	RUN(test_die_leaves_nothing);
	RUN(test_fork_keeps_parent_files);
	RUN(test_commit_after_abort_all);
	RUN(test_stdout);
	if (open_pty())
		RUN(test_binary_to_terminal);
	else
		SKIP(test_binary_to_terminal, "no pseudo-terminal here");
	RUN(test_special_targets);
	RUN(test_relative_name);
	clear_dir();
	rmdir(dir);
	return check_done();
}
