/*
 * The C floor of the vfio-user round trip: a UNIX-socket server that answers every 32-byte
 * request with a 36-byte reply (the sizes of a 4-byte REGION_READ and its reply) using exactly two
 * system calls per request, recvmsg and sendmsg, both blocking. Nothing can serve a request over a
 * socket with less; a vfio-user server's cost is measured against this.
 *
 *   mdevkit-echo-floor <socket-path>    listens, serves one client to EOF, exits
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

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s <socket-path>\n", argv[0]);
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
