/*
 * The C floor of the vfio-user round trip: a UNIX-socket server that answers every 32-byte
 * request with a 36-byte reply (the sizes of a 4-byte REGION_READ and its reply) using exactly two
 * system calls per request, recvmsg and sendmsg, both blocking. Nothing can serve a request over a
 * socket with less; a vfio-user server's cost is measured against this.
 *
 *   mdevkit-echo-floor <socket-path> [--work-ns N]    listens, serves one client to EOF, exits
 *
 * --work-ns N spins N ns (CLOCK_MONOTONIC) per request before replying: a C server that does as
 * much work per request as a given path, for telling that work's cost from what it provokes (on
 * one CPU, a server that runs longer per request than its client changes how the scheduler
 * switches between them).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define REQ 32
#define REP 36

static int read_full(int fd, uint8_t *buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    struct iovec iov = {buf + got, len - got};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n = recvmsg(fd, &msg, 0);
    if (n == 0) return 0;
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    got += (size_t)n;
  }
  return 1;
}

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int main(int argc, char **argv) {
  long work_ns = 0;
  if (argc == 4 && !strcmp(argv[2], "--work-ns")) {
    char *end;
    errno = 0;
    work_ns = strtol(argv[3], &end, 10);
    if (errno || *end || end == argv[3] || work_ns < 0 || work_ns > 1000000000) {
      fprintf(stderr, "--work-ns: must be an integer in [0, 1e9], got '%s'\n", argv[3]);
      return 2;
    }
  } else if (argc != 2) {
    fprintf(stderr, "usage: %s <socket-path> [--work-ns N]\n", argv[0]);
    return 2;
  }
  int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (ls < 0 || strlen(argv[1]) >= sizeof addr.sun_path) return 1;
  strcpy(addr.sun_path, argv[1]);
  unlink(argv[1]);
  if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 4) < 0) {
    perror("bind/listen");
    return 1;
  }
  printf("ready\n");
  fflush(stdout);
  int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
  if (fd < 0) return 1;
  uint8_t in[REQ], out[REP];
  memset(out, 0, sizeof out);
  unsigned long served = 0;
  struct rusage ru0, ru1;
  getrusage(RUSAGE_SELF, &ru0);
  for (;;) {
    int r = read_full(fd, in, REQ);
    if (r <= 0) break;
    if (work_ns > 0) {
      int64_t until = now_ns() + work_ns;
      while (now_ns() < until) {
      }
    }
    /* Echo the header (the msg id) and the access descriptor, as a REGION_READ reply does. */
    memcpy(out, in, REQ);
    uint32_t size = REP;
    memcpy(out + 4, &size, 4);
    uint32_t flags = 1; /* reply */
    memcpy(out + 8, &flags, 4);
    struct iovec iov = {out, REP};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (sendmsg(fd, &msg, MSG_NOSIGNAL) != REP) break;
    served++;
  }
  getrusage(RUSAGE_SELF, &ru1);
  long long cpu_ns = ((long long)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) * 1000000000ll) +
                     (long long)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) * 1000ll;
  printf("{\"served\":%lu,\"server_cpu_ns\":%lld}\n", served, cpu_ns);
  close(fd);
  close(ls);
  unlink(argv[1]);
  return 0;
}
