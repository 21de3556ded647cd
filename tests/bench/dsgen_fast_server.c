/* A chat-completions endpoint that answers at once, for bench_dsgen.py: one
 * thread, epoll, HTTP/1.1 keep-alive, the same small JSON reply to every POST.
 * It parses only what it must (the header end and Content-Length) so that
 * the server is never what the benchmark measures.
 *   dsgen_fast_server PORTFILE      (listens on 127.0.0.1, a free port, written to PORTFILE)
 */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXC 4096
#define BUF (1 << 16)

static const char body[] =
	"{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"bench\","
	"\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"OK, done.\"},"
	"\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}";

struct conn {
	char in[BUF];
	size_t len;
};

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	char reply[1024];
	int rlen = snprintf(reply, sizeof reply,
			    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
			    sizeof body - 1, body);
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 1024) < 0)
		return perror("listen"), 1;
	socklen_t al = sizeof a;
	getsockname(ls, (struct sockaddr *)&a, &al);
	FILE *pf = fopen(argv[1], "w");
	fprintf(pf, "%d\n", ntohs(a.sin_port));
	fclose(pf);
	int ep = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
	static struct conn *conns[MAXC];
	struct epoll_event evs[256];
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == ls) {
				int c;
				while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
					if (c >= MAXC) {
						close(c);
						continue;
					}
					setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
					conns[c] = calloc(1, sizeof(struct conn));
					struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
				}
				continue;
			}
			struct conn *k = conns[fd];
			ssize_t r = read(fd, k->in + k->len, BUF - k->len - 1);
			if (r <= 0) {
				close(fd);
				free(k);
				conns[fd] = NULL;
				continue;
			}
			k->len += (size_t)r;
			k->in[k->len] = 0;
			/* answer every complete request in the buffer */
			for (;;) {
				char *end = strstr(k->in, "\r\n\r\n");
				if (!end)
					break;
				size_t clen = 0;
				for (char *p = k->in; p < end; p = strstr(p, "\r\n") + 2) {
					if (!strncasecmp(p, "content-length:", 15))
						clen = strtoul(p + 15, NULL, 10);
					if (!strstr(p, "\r\n"))
						break;
				}
				size_t total = (size_t)(end + 4 - k->in) + clen;
				if (k->len < total)
					break;
				if (write(fd, reply, (size_t)rlen) < 0)
					break;
				memmove(k->in, k->in + total, k->len - total + 1);
				k->len -= total;
			}
		}
	}
}
