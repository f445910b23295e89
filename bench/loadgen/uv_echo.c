/*
 * uv_echo: the ceiling of the echo benchmarks, a plain-C libuv echo server.
 *
 *   uv_echo tcp [HOST [PORT]]    listen on HOST:PORT (default 127.0.0.1, port 0 = any)
 *   uv_echo unix PATH            listen on a Unix socket at PATH
 *   uv_echo udp [HOST [PORT]]    bind a UDP socket to HOST:PORT (same defaults)
 *
 * Prints "READY tcp HOST PORT", "READY unix PATH" or "READY udp HOST PORT" on
 * stdout once it listens, then echoes every byte it reads back on the same
 * connection (over UDP: every datagram back to its sender) until it is
 * killed. Reads go into one loop-wide 256 KiB buffer (the read size of asyncio's
 * and uvloop's transports: a 100 KiB message is read in one go); each read is
 * written back with uv_try_write first, and uv_write of a copy of whatever is
 * left, the way the loops under test do it. A datagram is sent back with
 * uv_udp_try_send, or uv_udp_send of a copy when the socket would block.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define READ_SIZE (256 * 1024)
#define DATAGRAM_SIZE (64 * 1024) /* the largest UDP datagram fits */
#define UDP_RCVBUF (1024 * 1024)  /* SO_RCVBUF: the default drops 8 KiB datagrams */

typedef struct {
  uv_write_t req;
  uv_buf_t buf;
  char *base; /* the malloc'ed block buf points into */
} write_req_t;

static uv_loop_t *loop;
static char read_buf[READ_SIZE]; /* one loop-wide read buffer: data is echoed at once */

static void die(const char *what, int err) {
  fprintf(stderr, "uv_echo: %s: %s\n", what, uv_strerror(err));
  exit(1);
}

static void on_close(uv_handle_t *handle) { free(handle); }

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  (void)handle;
  (void)suggested;
  *buf = uv_buf_init(read_buf, READ_SIZE);
}

static void on_write(uv_write_t *req, int status) {
  write_req_t *w = (write_req_t *)req;
  if (status < 0 && status != UV_ECANCELED && !uv_is_closing((uv_handle_t *)req->handle))
    uv_close((uv_handle_t *)req->handle, on_close);
  free(w->base);
  free(w);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  if (nread < 0) {
    if (!uv_is_closing((uv_handle_t *)stream))
      uv_close((uv_handle_t *)stream, on_close);
    return;
  }
  if (nread == 0)
    return;
  uv_buf_t out = uv_buf_init(buf->base, (unsigned int)nread);
  int sent = uv_try_write(stream, &out, 1);
  if (sent == nread)
    return;
  if (sent < 0 && sent != UV_EAGAIN) {
    uv_close((uv_handle_t *)stream, on_close);
    return;
  }
  if (sent < 0)
    sent = 0;
  size_t rest = (size_t)(nread - sent);
  write_req_t *w = malloc(sizeof *w);
  char *copy = malloc(rest);
  if (!w || !copy) {
    fprintf(stderr, "uv_echo: out of memory\n");
    exit(1);
  }
  memcpy(copy, buf->base + sent, rest);
  w->base = copy;
  w->buf = uv_buf_init(copy, (unsigned int)rest);
  int err = uv_write(&w->req, stream, &w->buf, 1, on_write);
  if (err < 0) {
    free(copy);
    free(w);
    uv_close((uv_handle_t *)stream, on_close);
  }
}

typedef struct {
  uv_udp_send_t req;
  char *base;
} udp_send_t;

static void on_udp_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  (void)handle;
  (void)suggested;
  *buf = uv_buf_init(read_buf, DATAGRAM_SIZE);
}

static void on_udp_sent(uv_udp_send_t *req, int status) {
  udp_send_t *s = (udp_send_t *)req;
  if (status < 0 && status != UV_ECANCELED)
    fprintf(stderr, "uv_echo: udp send: %s\n", uv_strerror(status));
  free(s->base);
  free(s);
}

static void on_udp_recv(uv_udp_t *udp, ssize_t nread, const uv_buf_t *buf,
                        const struct sockaddr *addr, unsigned flags) {
  if (nread < 0) {
    fprintf(stderr, "uv_echo: udp recv: %s\n", uv_strerror((int)nread));
    return;
  }
  if (addr == NULL) /* nothing more to read for now */
    return;
  if (flags & UV_UDP_PARTIAL) {
    fprintf(stderr, "uv_echo: a datagram was truncated\n");
    return;
  }
  uv_buf_t out = uv_buf_init(buf->base, (unsigned int)nread);
  int err = uv_udp_try_send(udp, &out, 1, addr);
  if (err >= 0)
    return;
  if (err != UV_EAGAIN) {
    fprintf(stderr, "uv_echo: udp try_send: %s\n", uv_strerror(err));
    return;
  }
  udp_send_t *s = malloc(sizeof *s);
  char *copy = malloc(nread > 0 ? (size_t)nread : 1);
  if (!s || !copy) {
    fprintf(stderr, "uv_echo: out of memory\n");
    exit(1);
  }
  memcpy(copy, buf->base, (size_t)nread);
  s->base = copy;
  out = uv_buf_init(copy, (unsigned int)nread);
  if ((err = uv_udp_send(&s->req, udp, &out, 1, addr, on_udp_sent)) < 0) {
    fprintf(stderr, "uv_echo: udp send: %s\n", uv_strerror(err));
    free(copy);
    free(s);
  }
}

static void on_connection(uv_stream_t *server, int status) {
  if (status < 0) {
    fprintf(stderr, "uv_echo: accept: %s\n", uv_strerror(status));
    return;
  }
  uv_stream_t *client;
  int err;
  if (server->type == UV_TCP) {
    uv_tcp_t *tcp = malloc(sizeof *tcp);
    if (!tcp || (err = uv_tcp_init(loop, tcp)) < 0)
      die("uv_tcp_init", tcp ? err : UV_ENOMEM);
    client = (uv_stream_t *)tcp;
  } else {
    uv_pipe_t *pipe = malloc(sizeof *pipe);
    if (!pipe || (err = uv_pipe_init(loop, pipe, 0)) < 0)
      die("uv_pipe_init", pipe ? err : UV_ENOMEM);
    client = (uv_stream_t *)pipe;
  }
  if ((err = uv_accept(server, client)) < 0) {
    fprintf(stderr, "uv_echo: uv_accept: %s\n", uv_strerror(err));
    uv_close((uv_handle_t *)client, on_close);
    return;
  }
  if (server->type == UV_TCP)
    uv_tcp_nodelay((uv_tcp_t *)client, 1);
  if ((err = uv_read_start(client, on_alloc, on_read)) < 0)
    uv_close((uv_handle_t *)client, on_close);
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN); /* a client that hangs up must not kill the server */
  loop = uv_default_loop();
  int err;
  if (argc >= 2 && strcmp(argv[1], "tcp") == 0 && argc <= 4) {
    const char *host = argc >= 3 ? argv[2] : "127.0.0.1";
    int port = argc >= 4 ? atoi(argv[3]) : 0;
    static uv_tcp_t server;
    struct sockaddr_in addr;
    if ((err = uv_ip4_addr(host, port, &addr)) < 0)
      die("uv_ip4_addr", err);
    if ((err = uv_tcp_init(loop, &server)) < 0)
      die("uv_tcp_init", err);
    if ((err = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0)) < 0)
      die("uv_tcp_bind", err);
    if ((err = uv_listen((uv_stream_t *)&server, 128, on_connection)) < 0)
      die("uv_listen", err);
    struct sockaddr_storage bound;
    int len = (int)sizeof bound;
    if ((err = uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &len)) < 0)
      die("uv_tcp_getsockname", err);
    printf("READY tcp %s %d\n", host, ntohs(((struct sockaddr_in *)&bound)->sin_port));
  } else if (argc >= 2 && strcmp(argv[1], "udp") == 0 && argc <= 4) {
    const char *host = argc >= 3 ? argv[2] : "127.0.0.1";
    int port = argc >= 4 ? atoi(argv[3]) : 0;
    static uv_udp_t server;
    struct sockaddr_in addr;
    if ((err = uv_ip4_addr(host, port, &addr)) < 0)
      die("uv_ip4_addr", err);
    if ((err = uv_udp_init(loop, &server)) < 0)
      die("uv_udp_init", err);
    if ((err = uv_udp_bind(&server, (const struct sockaddr *)&addr, 0)) < 0)
      die("uv_udp_bind", err);
    int rcvbuf = UDP_RCVBUF; /* as the Python servers do: bench/echo_server.py */
    if ((err = uv_recv_buffer_size((uv_handle_t *)&server, &rcvbuf)) < 0)
      die("uv_recv_buffer_size", err);
    if ((err = uv_udp_recv_start(&server, on_udp_alloc, on_udp_recv)) < 0)
      die("uv_udp_recv_start", err);
    struct sockaddr_storage bound;
    int len = (int)sizeof bound;
    if ((err = uv_udp_getsockname(&server, (struct sockaddr *)&bound, &len)) < 0)
      die("uv_udp_getsockname", err);
    printf("READY udp %s %d\n", host, ntohs(((struct sockaddr_in *)&bound)->sin_port));
  } else if (argc == 3 && strcmp(argv[1], "unix") == 0) {
    static uv_pipe_t server;
    if ((err = uv_pipe_init(loop, &server, 0)) < 0)
      die("uv_pipe_init", err);
    if ((err = uv_pipe_bind(&server, argv[2])) < 0)
      die("uv_pipe_bind", err);
    if ((err = uv_listen((uv_stream_t *)&server, 128, on_connection)) < 0)
      die("uv_listen", err);
    printf("READY unix %s\n", argv[2]);
  } else {
    fprintf(stderr,
            "usage: uv_echo tcp [HOST [PORT]] | uv_echo unix PATH | uv_echo udp [HOST [PORT]]\n");
    return 2;
  }
  fflush(stdout);
  return uv_run(loop, UV_RUN_DEFAULT);
}
