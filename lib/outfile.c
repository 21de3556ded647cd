#include "outfile.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The public struct plus what only this file needs. The registry links every
 * outfile with a temporary so outfile_abort_all() can remove them on the way
 * out of a dying tool. */
struct outfile_node {
	struct outfile pub; /* first, so a struct outfile * converts back */
	struct outfile_node *next;
	pid_t owner;             /* a forked child must not remove its parent's files */
	volatile sig_atomic_t removed;
	char *iobuf;             /* f's buffer (big_buffer), freed after fclose */
};

static struct outfile_node *volatile registry;

/* The registry is edited with signals blocked, so a handler calling
 * outfile_abort_all() never sees a half-linked list. */
static void outfile_lock(sigset_t *old)
{
	sigset_t all;
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, old);
}

static void outfile_unlock(const sigset_t *old) { sigprocmask(SIG_SETMASK, old, NULL); }

static void outfile_unregister(struct outfile_node *n)
{
	sigset_t old;
	outfile_lock(&old);
	for (struct outfile_node *volatile *p = &registry; *p; p = &(*p)->next)
		if (*p == n) {
			*p = n->next;
			break;
		}
	outfile_unlock(&old);
}

static void outfile_free(struct outfile_node *n)
{
	free(n->iobuf);
	free(n->pub.path);
	free(n->pub.tmp);
	free(n);
}

/* Only unlink() and getpid(): both async-signal-safe. Nothing is freed or
 * closed, since the process is about to exit. */
void outfile_abort_all(void)
{
	pid_t me = getpid();
	for (struct outfile_node *n = registry; n; n = n->next)
		if (n->owner == me && !n->removed && n->pub.tmp) {
			unlink(n->pub.tmp);
			n->removed = 1;
		}
}

/* stdio's buffer is a few KiB: a tool writing tens of megabytes would make
 * a system call every few records. glibc takes the size only with a buffer,
 * freed with the node, after fclose. Standard output has one from msg_init;
 * a terminal keeps line buffering. */
#define BIG_BUFFER (1 << 20)
static void big_buffer(struct outfile_node *n)
{
	if (n->pub.f != stdout && !isatty(fileno(n->pub.f)) && (n->iobuf = malloc(BIG_BUFFER)))
		setvbuf(n->pub.f, n->iobuf, _IOFBF, BIG_BUFFER);
}

/* "-", NULL, and targets that are not regular files (/dev/null, a FIFO, a
 * terminal) are written in place: renaming a temporary over /dev/null would
 * replace the device with a file. */
static struct outfile *outfile_open_direct(const char *path, int binary, struct err *err)
{
	int std = !path || strcmp(path, "-") == 0;
	struct outfile_node *n = calloc(1, sizeof *n);
	if (!n) {
		err_sys(err, "%s:", std ? "<stdout>" : path);
		return NULL;
	}
	if (std) {
		if (binary && isatty(STDOUT_FILENO)) {
			free(n);
			err_set(err, "refusing to write binary output to a terminal; use -o FILE or redirect standard output");
			return NULL;
		}
		n->pub.f = stdout;
	} else {
		n->pub.path = strdup(path);
		n->pub.f = n->pub.path ? fopen(path, "w") : NULL;
		if (!n->pub.f) {
			err_sys(err, "%s:", path);
			outfile_free(n);
			return NULL;
		}
		/* path stays set for messages, tmp stays NULL: there is nothing to rename. */
	}
	struct stat st;
	n->pub.seekable = fstat(fileno(n->pub.f), &st) == 0 && S_ISREG(st.st_mode);
	big_buffer(n);
	return &n->pub;
}

static mode_t outfile_umask(void)
{
	/* umask can only be read by setting it; mkstemp creates 0600 and the
	 * result should have the permissions any other new file would get. */
	mode_t m = umask(022);
	umask(m);
	return m;
}

struct outfile *outfile_open(const char *path, int binary, struct err *err)
{
	if (!path || strcmp(path, "-") == 0)
		return outfile_open_direct(NULL, binary, err);
	if (!*path) {
		err_set(err, "empty output file name");
		return NULL;
	}
	struct stat st;
	char *real = NULL;
	if (stat(path, &st) == 0) {
		if (S_ISDIR(st.st_mode)) {
			err_set(err, "%s: is a folder", path);
			return NULL;
		}
		if (!S_ISREG(st.st_mode))
			return outfile_open_direct(path, binary, err);
		/* Replace the file a symbolic link points to, not the link. */
		struct stat lst;
		if (lstat(path, &lst) == 0 && S_ISLNK(lst.st_mode))
			real = realpath(path, NULL);
	}
	const char *target = real ? real : path;

	struct outfile_node *n = calloc(1, sizeof *n);
	if (!n) {
		free(real);
		err_sys(err, "%s:", path);
		return NULL;
	}
	n->pub.path = strdup(target);
	const char *slash = strrchr(target, '/');
	size_t dirlen = slash ? (size_t)(slash - target) + 1 : 0;
	const char *base = target + dirlen;
	size_t tmplen = dirlen + 1 + strlen(base) + 8;
	n->pub.tmp = malloc(tmplen);
	if (!n->pub.path || !n->pub.tmp) {
		err_sys(err, "%s:", path);
		free(real);
		outfile_free(n);
		return NULL;
	}
	snprintf(n->pub.tmp, tmplen, "%.*s.%s.XXXXXX", (int)dirlen, target, base);
	free(real);

	/* Registered before the file exists, so a signal right after mkstemp
	 * still finds it; unlinking a name not yet created is harmless. */
	n->owner = getpid();
	sigset_t old;
	outfile_lock(&old);
	int fd = mkstemp(n->pub.tmp);
	int saved = errno;
	if (fd >= 0) {
		n->next = registry;
		registry = n;
	}
	outfile_unlock(&old);
	if (fd < 0) {
		errno = saved;
		err_sys(err, "%s: cannot create a file in its folder:", path);
		outfile_free(n);
		return NULL;
	}
	if (fchmod(fd, 0666 & ~outfile_umask()) < 0 || !(n->pub.f = fdopen(fd, "w"))) {
		err_sys(err, "%s:", path);
		close(fd);
		outfile_abort(&n->pub);
		return NULL;
	}
	n->pub.seekable = 1;
	big_buffer(n);
	return &n->pub;
}

/* fsync of the folder makes the rename itself durable. Some file systems
 * cannot sync a folder (EINVAL); the data is synced already, so that is not
 * a failure of the output. */
static int outfile_sync_dir(const char *path, struct err *err)
{
	const char *slash = strrchr(path, '/');
	char dir[PATH_MAX];
	if (!slash)
		snprintf(dir, sizeof dir, ".");
	else if (slash == path)
		snprintf(dir, sizeof dir, "/");
	else
		snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	int rc = fsync(fd);
	int saved = errno;
	close(fd);
	if (rc < 0 && saved != EINVAL && saved != ENOTSUP && saved != EBADF) {
		errno = saved;
		return err_sys(err, "%s: cannot sync its folder:", path);
	}
	return 0;
}

int outfile_write(struct outfile *o, const void *p, size_t n)
{
	if (fflush(o->f) != 0)
		return -1;
	int fd = fileno(o->f);
	for (const char *s = p; n;) {
		ssize_t k = write(fd, s, n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		s += k, n -= (size_t)k;
	}
	return 0;
}

int outfile_commit(struct outfile *o, struct err *err)
{
	struct outfile_node *n = (struct outfile_node *)o;
	const char *name = o->path ? o->path : "<stdout>";
	int rc = 0;
	if (!o->tmp) {
		/* Written in place: all that is left is to catch a late error
		 * (ENOSPC, EPIPE, EIO) that buffering delayed. */
		if (fflush(o->f) == EOF)
			rc = err_sys(err, "%s: write error:", name);
		else if (ferror(o->f))
			rc = err_sys(err, "%s: write error", name);
		if (o->f != stdout && fclose(o->f) == EOF && rc == 0)
			rc = err_sys(err, "%s: write error:", name);
		outfile_free(n);
		return rc;
	}
	if (n->removed) {
		rc = err_set(err, "%s: output was aborted", name);
	} else if (fflush(o->f) == EOF) {
		rc = err_sys(err, "%s: write error:", name);
	} else if (ferror(o->f)) {
		rc = err_sys(err, "%s: write error", name);
	} else if (fsync(fileno(o->f)) < 0) {
		rc = err_sys(err, "%s: cannot sync:", name);
	}
	if (fclose(o->f) == EOF && rc == 0)
		rc = err_sys(err, "%s: write error:", name);
	o->f = NULL;
	if (rc == 0 && rename(o->tmp, o->path) < 0)
		rc = err_sys(err, "%s: cannot rename the temporary file into place:", name);
	if (rc < 0) {
		outfile_abort(o);
		return -1;
	}
	outfile_unregister(n);
	rc = outfile_sync_dir(o->path, err);
	outfile_free(n);
	return rc;
}

void outfile_abort(struct outfile *o)
{
	if (!o)
		return;
	struct outfile_node *n = (struct outfile_node *)o;
	if (o->tmp) {
		outfile_unregister(n);
		if (o->f)
			fclose(o->f);
		if (!n->removed)
			unlink(o->tmp);
	} else if (o->f && o->f != stdout) {
		fclose(o->f); /* in place: what was written stays, as on a pipe */
	}
	outfile_free(n);
}
