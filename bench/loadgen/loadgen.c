/*
 * loadgen: a small request/response load generator for echo servers.
 *
 * Plain POSIX + epoll, non-blocking sockets, one thread; no libuv, so it is
 * independent of the event loops under test. It opens C connections to one
 * address (TCP on the loopback interface, or a Unix socket path); on each, it
 * sends a message of S bytes and waits for the same S bytes to come back
 * (checked byte for byte) before it sends the next one. After a warm-up of W
 * seconds it counts, for D seconds, the requests completed and their latency
 * (from the first byte sent to the last byte received), then prints one JSON
 * line on stdout and exits (status 0 if there were no errors).
 *
 * With --udp, each "connection" is a flow: a UDP socket of its own, connected
 * to the server, with one datagram of S bytes in flight; the echo must come
 * back as one datagram of S bytes, equal byte for byte. A datagram not echoed
 * within RETRY_MS is counted as lost and the flow sends the next one (a new
 * sequence number); an echo that arrives after that (its stamp is not the
 * flow's current one) is counted as stale and ignored. Loss is not an error:
 * the JSON line says how many were lost.
 *
 *   loadgen (--tcp 127.0.0.1:PORT | --unix PATH | --udp 127.0.0.1:PORT)
 *           [-c CONNS] [-s BYTES] [-d SECONDS] [-w SECONDS] [-n MAX_REQUESTS]
 *           [-t CONNECT_TIMEOUT]
 *
 * Bounded: at most 1024 connections, 16 MiB messages (65507 bytes over UDP),
 * 60 s of load, 10 s of warm-up, and only loopback addresses (127.0.0.0/8,
 * ::1) or a Unix path.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 1024
#define MAX_SIZE (16u << 20)
#define MAX_DURATION 60.0
#define MAX_WARMUP 10.0
#define MAX_LATENCIES (1u << 22) /* latency samples kept (32 MiB at most) */
#define MAX_UDP_SIZE 65507u      /* the largest UDP payload over IPv4 */
#define RETRY_MS 200             /* a datagram not echoed by then is lost */

struct conn {
  int fd;
  int open;
  int want_out;        /* EPOLLOUT registered */
  size_t sent, recvd;  /* bytes of the current request */
  uint64_t seq;        /* requests started on this connection */
  uint64_t started_ns; /* when the current request's first byte was sent */
  unsigned char *sbuf, *rbuf;
};

static struct {
  const char *kind; /* "tcp", "unix" or "udp" */
  int udp;
  const char *address;
  int conns;
  size_t size;
  double duration, warmup, connect_timeout;
  uint64_t max_requests;

  struct conn *c;
  int epfd;
  int open;
  uint64_t warm_end_ns, end_ns;
  uint64_t requests;
  uint64_t errors;
  uint64_t lost, stale; /* UDP: datagrams not echoed in time; echoes that came too late */
  char first_error[256];
  uint64_t *lat; /* latencies in ns of the counted requests */
  size_t nlat, cap_lat;
} g;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void json_string(const char *s) {
  putchar('"');
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      printf("\\%c", ch);
    else if (ch < 0x20)
      printf("\\u%04x", ch);
    else
      putchar(ch);
  }
  putchar('"');
}

/* A usage or set-up failure: one JSON line saying why, exit status 2. */
static void fail(const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  printf("{\"ok\": false, \"error\": ");
  json_string(msg);
  printf("}\n");
  fflush(stdout);
  exit(2);
}

static void record_error(int i, const char *fmt, ...) {
  g.errors++;
  if (!g.first_error[0]) {
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (i >= 0)
      snprintf(g.first_error, sizeof g.first_error, "connection %d: %s", i, msg);
    else
      snprintf(g.first_error, sizeof g.first_error, "%s", msg);
  }
}

static void close_conn(int i) {
  struct conn *c = &g.c[i];
  if (!c->open)
    return;
  epoll_ctl(g.epfd, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->open = 0;
  g.open--;
}

static void set_out(int i, int want) {
  struct conn *c = &g.c[i];
  if (c->want_out == want)
    return;
  struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.u32 = (uint32_t)i};
  if (epoll_ctl(g.epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
    record_error(i, "epoll_ctl: %s", strerror(errno));
    close_conn(i);
    return;
  }
  c->want_out = want;
}

/* Send what the socket takes of the current request. */
static void pump_send(int i) {
  struct conn *c = &g.c[i];
  while (c->open && c->sent < g.size) {
    ssize_t n = send(c->fd, c->sbuf + c->sent, g.size - c->sent, MSG_NOSIGNAL);
    if (n > 0 && g.udp && (size_t)n != g.size) {
      record_error(i, "send: sent %zd of a %zu-byte datagram", n, g.size);
      close_conn(i);
      return;
    } else if (n > 0) {
      c->sent += (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      set_out(i, 1);
      return;
    } else {
      record_error(i, "send: %s", n < 0 ? strerror(errno) : "returned 0");
      close_conn(i);
      return;
    }
  }
  if (c->open)
    set_out(i, 0);
}

static void start_request(int i) {
  struct conn *c = &g.c[i];
  c->seq++;
  /* Stamp the message so that a stale or misplaced echo cannot pass the check. */
  size_t stamp = g.size < sizeof c->seq ? g.size : sizeof c->seq;
  memcpy(c->sbuf, &c->seq, stamp);
  c->sent = c->recvd = 0;
  c->started_ns = now_ns();
  pump_send(i);
}

static void finish_request(int i) {
  struct conn *c = &g.c[i];
  uint64_t done = now_ns();
  if (memcmp(c->sbuf, c->rbuf, g.size) != 0) {
    record_error(i, "echo differs from the message sent (request %llu)",
                 (unsigned long long)c->seq);
    close_conn(i);
    return;
  }
  if (done >= g.warm_end_ns && done < g.end_ns) {
    g.requests++;
    if (g.nlat < MAX_LATENCIES) {
      if (g.nlat == g.cap_lat) {
        size_t cap = g.cap_lat ? 2 * g.cap_lat : 65536;
        uint64_t *p = realloc(g.lat, cap * sizeof *p);
        if (!p)
          fail("out of memory");
        g.lat = p;
        g.cap_lat = cap;
      }
      g.lat[g.nlat++] = done - c->started_ns;
    }
  }
  if (done < g.end_ns && !(g.max_requests && g.requests >= g.max_requests))
    start_request(i);
}

/* UDP: read every datagram waiting on the flow's socket. */
static void pump_recv_udp(int i) {
  struct conn *c = &g.c[i];
  while (c->open) {
    /* One byte more than expected, so that a longer datagram shows. */
    ssize_t n = recv(c->fd, c->rbuf, g.size + 1, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return;
    if (n < 0) {
      record_error(i, "recv: %s", strerror(errno));
      close_conn(i);
      return;
    }
    uint64_t seq = 0;
    size_t stamp = g.size < sizeof seq ? g.size : sizeof seq;
    if ((size_t)n >= stamp)
      memcpy(&seq, c->rbuf, stamp);
    if ((size_t)n == g.size && seq < c->seq) {
      g.stale++; /* the echo of a datagram already given up as lost */
      continue;
    }
    if ((size_t)n != g.size) {
      record_error(i, "echo is a datagram of %zd bytes, sent %zu", n, g.size);
      close_conn(i);
      return;
    }
    if (c->sent != g.size) {
      record_error(i, "an echo arrived before its datagram was sent");
      close_conn(i);
      return;
    }
    c->recvd = g.size;
    finish_request(i);
  }
}

/* UDP: give up on datagrams not echoed within RETRY_MS and send the next. */
static void retry_lost(uint64_t t) {
  for (int i = 0; i < g.conns; i++) {
    struct conn *c = &g.c[i];
    if (c->open && c->sent == g.size && c->recvd == 0 &&
        t - c->started_ns > (uint64_t)RETRY_MS * 1000000u) {
      g.lost++;
      start_request(i);
    }
  }
}

static void pump_recv(int i) {
  struct conn *c = &g.c[i];
  if (g.udp) {
    pump_recv_udp(i);
    return;
  }
  while (c->open) {
    size_t want = g.size - c->recvd;
    if (want == 0)
      return; /* complete; finish_request() moved on */
    ssize_t n = recv(c->fd, c->rbuf + c->recvd, want, 0);
    if (n > 0) {
      c->recvd += (size_t)n;
      if (c->recvd == g.size)
        finish_request(i);
      /* The next request was just sent (or the run is over): its echo cannot
         be here yet, so go back to epoll. */
      if (c->recvd == 0 || c->recvd == g.size)
        return;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return;
    } else {
      record_error(i, "recv: %s", n < 0 ? strerror(errno) : "server closed the connection");
      close_conn(i);
      return;
    }
  }
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

static double percentile_us(double p) {
  if (g.nlat == 0)
    return 0.0;
  size_t rank = (size_t)(p / 100.0 * (double)g.nlat + 0.999999);
  if (rank < 1)
    rank = 1;
  if (rank > g.nlat)
    rank = g.nlat;
  return (double)g.lat[rank - 1] / 1000.0;
}

/* The address to connect to; only loopback TCP addresses or a Unix path. */
static socklen_t parse_address(struct sockaddr_storage *ss, int *family) {
  memset(ss, 0, sizeof *ss);
  if (strcmp(g.kind, "unix") == 0) {
    struct sockaddr_un *un = (struct sockaddr_un *)ss;
    if (strlen(g.address) == 0 || strlen(g.address) >= sizeof un->sun_path)
      fail("unix path is empty or longer than %zu bytes", sizeof un->sun_path - 1);
    un->sun_family = AF_UNIX;
    strcpy(un->sun_path, g.address);
    *family = AF_UNIX;
    return (socklen_t)sizeof *un;
  }
  /* HOST:PORT or [V6HOST]:PORT */
  char host[64];
  const char *colon = strrchr(g.address, ':');
  if (!colon || colon == g.address)
    fail("--tcp wants HOST:PORT, got '%s'", g.address);
  size_t hlen = (size_t)(colon - g.address);
  const char *h = g.address;
  if (h[0] == '[' && hlen >= 2 && h[hlen - 1] == ']') {
    h++;
    hlen -= 2;
  }
  if (hlen >= sizeof host)
    fail("host too long in '%s'", g.address);
  memcpy(host, h, hlen);
  host[hlen] = '\0';
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end || port < 1 || port > 65535)
    fail("bad port in '%s'", g.address);
  struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
    if ((ntohl(in4->sin_addr.s_addr) >> 24) != 127)
      fail("refusing %s: only loopback addresses (127.0.0.0/8, ::1)", host);
    in4->sin_family = AF_INET;
    in4->sin_port = htons((uint16_t)port);
    *family = AF_INET;
    return (socklen_t)sizeof *in4;
  }
  if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
    if (!IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
      fail("refusing %s: only loopback addresses (127.0.0.0/8, ::1)", host);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    *family = AF_INET6;
    return (socklen_t)sizeof *in6;
  }
  fail("not a numeric IP address: '%s'", host);
  return 0;
}

/* Connect every connection before the clock starts; all within one deadline. */
static void connect_all(void) {
  struct sockaddr_storage ss;
  int family;
  socklen_t len = parse_address(&ss, &family);
  uint64_t deadline = now_ns() + (uint64_t)(g.connect_timeout * 1e9);
  for (int i = 0; i < g.conns; i++) {
    struct conn *c = &g.c[i];
    int type = g.udp ? SOCK_DGRAM : SOCK_STREAM;
    int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
      fail("socket: %s", strerror(errno));
    if (family != AF_UNIX && !g.udp) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
      if (errno != EINPROGRESS && errno != EAGAIN)
        fail("connect %s %s (connection %d): %s", g.kind, g.address, i, strerror(errno));
      for (;;) {
        uint64_t t = now_ns();
        if (t >= deadline)
          fail("connect %s %s (connection %d): timed out", g.kind, g.address, i);
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int r = poll(&pfd, 1, (int)((deadline - t) / 1000000u) + 1);
        if (r < 0 && errno == EINTR)
          continue;
        if (r < 0)
          fail("poll: %s", strerror(errno));
        if (r > 0)
          break;
      }
      int err = 0;
      socklen_t elen = sizeof err;
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
      if (err)
        fail("connect %s %s (connection %d): %s", g.kind, g.address, i, strerror(err));
    }
    c->fd = fd;
    c->open = 1;
    g.open++;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    if (epoll_ctl(g.epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
      fail("epoll_ctl: %s", strerror(errno));
  }
}

static double parse_double(const char *opt, const char *s, double lo, double hi) {
  char *end;
  double v = strtod(s, &end);
  if (*end || !(v >= lo && v <= hi))
    fail("%s wants a number in [%g, %g], got '%s'", opt, lo, hi, s);
  return v;
}

static void usage(void) {
  fprintf(stderr,
          "usage: loadgen (--tcp 127.0.0.1:PORT | --unix PATH | --udp 127.0.0.1:PORT)\n"
          "               [-c CONNS] [-s BYTES] [-d SECONDS] [-w SECONDS] [-n MAX_REQUESTS]\n"
          "               [-t CONNECT_TIMEOUT]\n");
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"tcp", required_argument, NULL, 'T'},
      {"unix", required_argument, NULL, 'U'},
      {"udp", required_argument, NULL, 'D'},
      {"connections", required_argument, NULL, 'c'},
      {"size", required_argument, NULL, 's'},
      {"duration", required_argument, NULL, 'd'},
      {"warmup", required_argument, NULL, 'w'},
      {"max-requests", required_argument, NULL, 'n'},
      {"connect-timeout", required_argument, NULL, 't'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  g.conns = 10;
  g.size = 1024;
  g.duration = 2.0;
  g.warmup = 0.5;
  g.connect_timeout = 5.0;
  int opt;
  while ((opt = getopt_long(argc, argv, "c:s:d:w:n:t:h", opts, NULL)) != -1) {
    switch (opt) {
    case 'T':
    case 'U':
    case 'D':
      if (g.kind)
        fail("give one of --tcp, --unix and --udp");
      g.kind = opt == 'T' ? "tcp" : opt == 'U' ? "unix" : "udp";
      g.udp = opt == 'D';
      g.address = optarg;
      break;
    case 'c':
      g.conns = (int)parse_double("-c", optarg, 1, MAX_CONNS);
      break;
    case 's':
      g.size = (size_t)parse_double("-s", optarg, 1, MAX_SIZE);
      break;
    case 'd':
      g.duration = parse_double("-d", optarg, 0.001, MAX_DURATION);
      break;
    case 'w':
      g.warmup = parse_double("-w", optarg, 0, MAX_WARMUP);
      break;
    case 'n':
      g.max_requests = (uint64_t)parse_double("-n", optarg, 0, 1e15);
      break;
    case 't':
      g.connect_timeout = parse_double("-t", optarg, 0.001, 60);
      break;
    case 'h':
      usage();
      return 0;
    default:
      usage();
      fail("bad arguments");
    }
  }
  if (optind != argc || !g.kind) {
    usage();
    fail("give --tcp HOST:PORT, --unix PATH or --udp HOST:PORT (and nothing else)");
  }
  if (g.udp && g.size > MAX_UDP_SIZE)
    fail("-s: a UDP datagram holds at most %u bytes", MAX_UDP_SIZE);
  signal(SIGPIPE, SIG_IGN);

  g.c = calloc((size_t)g.conns, sizeof *g.c);
  if (!g.c)
    fail("out of memory");
  for (int i = 0; i < g.conns; i++) {
    g.c[i].sbuf = malloc(g.size);
    g.c[i].rbuf = malloc(g.size + 1);
    if (!g.c[i].sbuf || !g.c[i].rbuf)
      fail("out of memory");
    for (size_t k = 0; k < g.size; k++)
      g.c[i].sbuf[k] = (unsigned char)(k * 31u + (unsigned)i * 7u + 1u);
  }
  g.epfd = epoll_create1(EPOLL_CLOEXEC);
  if (g.epfd < 0)
    fail("epoll_create1: %s", strerror(errno));

  connect_all();

  uint64_t t0 = now_ns();
  g.warm_end_ns = t0 + (uint64_t)(g.warmup * 1e9);
  g.end_ns = g.warm_end_ns + (uint64_t)(g.duration * 1e9);
  for (int i = 0; i < g.conns; i++)
    start_request(i);

  struct epoll_event events[256];
  uint64_t t = now_ns();
  while (t < g.end_ns && g.open > 0 && !(g.max_requests && g.requests >= g.max_requests)) {
    int timeout_ms = (int)((g.end_ns - t + 999999u) / 1000000u);
    if (g.udp && timeout_ms > 10)
      timeout_ms = 10; /* look for lost datagrams at least every 10 ms */
    int n = epoll_wait(g.epfd, events, 256, timeout_ms);
    if (n < 0 && errno != EINTR)
      fail("epoll_wait: %s", strerror(errno));
    for (int k = 0; k < n; k++) {
      int i = (int)events[k].data.u32;
      if (!g.c[i].open)
        continue;
      if (events[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        pump_recv(i);
      if (g.c[i].open && (events[k].events & EPOLLOUT))
        pump_send(i);
    }
    t = now_ns();
    if (g.udp)
      retry_lost(t);
  }
  uint64_t stop = t < g.end_ns ? t : g.end_ns;
  double seconds = stop > g.warm_end_ns ? (double)(stop - g.warm_end_ns) / 1e9 : 0.0;
  if (g.open == 0 && t < g.end_ns && !g.errors)
    record_error(-1, "all connections closed early");
  for (int i = 0; i < g.conns; i++)
    close_conn(i);

  qsort(g.lat, g.nlat, sizeof *g.lat, cmp_u64);
  int ok = g.errors == 0 && g.requests > 0 && seconds > 0;
  printf("{\"ok\": %s, \"transport\": \"%s\", \"address\": ", ok ? "true" : "false", g.kind);
  json_string(g.address);
  printf(", \"connections\": %d, \"size\": %zu, \"warmup_s\": %g, \"seconds\": %.6f, "
         "\"requests\": %llu, \"requests_per_s\": %.1f, \"bytes_per_s\": %.1f, "
         "\"latency_p50_us\": %.1f, \"latency_p99_us\": %.1f, \"latency_max_us\": %.1f, "
         "\"errors\": %llu, \"lost\": %llu, \"stale\": %llu",
         g.conns, g.size, g.warmup, seconds, (unsigned long long)g.requests,
         seconds > 0 ? (double)g.requests / seconds : 0.0,
         seconds > 0 ? (double)g.requests * (double)g.size / seconds : 0.0, percentile_us(50),
         percentile_us(99), percentile_us(100), (unsigned long long)g.errors,
         (unsigned long long)g.lost, (unsigned long long)g.stale);
  if (g.first_error[0]) {
    printf(", \"error\": ");
    json_string(g.first_error);
  } else if (!ok) {
    printf(", \"error\": \"no request completed in the timed span\"");
  }
  printf("}\n");
  fflush(stdout);
  return ok ? 0 : 1;
}
