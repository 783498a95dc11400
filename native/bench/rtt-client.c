/*
 * A C client that measures what a server costs per trapped access: it sends 4-byte REGION_READs
 * (32 bytes) and waits for each 36-byte reply with one sendmsg and one blocking recvmsg, as the
 * floor does. Against `mdevkit serve` it first negotiates VERSION; against the echo floor it
 * does not. Every reply's id, size and flags are checked (and its data, when --expect is given).
 *
 *   mdevkit-rtt-client --socket P [--vfio-user] [--offset N] [--region N] [--expect V]
 *                      [--iters N] [--warmup N] [--pipeline D] [--out FILE]
 *
 * Output (FILE or stdout), JSON: {"samples_ns":[...]} per request (request-at-a-time), or
 * {"pipeline":D,"requests":N,"elapsed_ns":T} with --pipeline (D requests kept in flight).
 * Client CPU time is included as "client_cpu_ns".
 */
#include <errno.h>
#include <inttypes.h>
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

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int send_full(int fd, const uint8_t *buf, size_t len) {
  size_t done = 0;
  while (done < len) {
    struct iovec iov = {(void *)(buf + done), len - done};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    done += (size_t)n;
  }
  return 0;
}

static int recv_full(int fd, uint8_t *buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    struct iovec iov = {buf + got, len - got};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n = recvmsg(fd, &msg, 0);
    if (n == 0) return -1;
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    got += (size_t)n;
  }
  return 0;
}

static void header(uint8_t *m, uint16_t id, uint16_t cmd, uint32_t size, uint32_t flags) {
  memcpy(m, &id, 2);
  memcpy(m + 2, &cmd, 2);
  memcpy(m + 4, &size, 4);
  memcpy(m + 8, &flags, 4);
  memset(m + 12, 0, 4);
}

static void die(const char *what) {
  fprintf(stderr, "rtt-client: %s\n", what);
  exit(1);
}

int main(int argc, char **argv) {
  const char *path = NULL, *out_path = NULL;
  int vfio = 0;
  long iters = 100000, warmup = 2000, pipeline = 0;
  uint64_t offset = 0;
  uint32_t region = 0;
  long long expect = -1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--vfio-user")) vfio = 1;
    else if (!v) die("missing option value");
    else if (!strcmp(a, "--socket")) path = v, i++;
    else if (!strcmp(a, "--out")) out_path = v, i++;
    else if (!strcmp(a, "--iters")) iters = strtol(v, NULL, 0), i++;
    else if (!strcmp(a, "--warmup")) warmup = strtol(v, NULL, 0), i++;
    else if (!strcmp(a, "--pipeline")) pipeline = strtol(v, NULL, 0), i++;
    else if (!strcmp(a, "--offset")) offset = strtoull(v, NULL, 0), i++;
    else if (!strcmp(a, "--region")) region = (uint32_t)strtoul(v, NULL, 0), i++;
    else if (!strcmp(a, "--expect")) expect = strtoll(v, NULL, 0), i++;
    else die("unknown option");
  }
  if (!path || iters <= 0 || warmup < 0 || pipeline < 0 || pipeline > 4096) die("bad options");
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (fd < 0 || strlen(path) >= sizeof addr.sun_path) die("socket");
  strcpy(addr.sun_path, path);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
  if (vfio) {
    /* VERSION 0.0 with the spec's default capabilities. */
    uint8_t v[20], h[16];
    header(v, 0, 1, sizeof v, 0);
    memset(v + 16, 0, 4);
    if (send_full(fd, v, sizeof v) || recv_full(fd, h, 16)) die("VERSION");
    uint32_t size, flags;
    memcpy(&size, h + 4, 4);
    memcpy(&flags, h + 8, 4);
    if (flags & 0x20) die("VERSION refused");
    if (size < 16 || size > 65536) die("VERSION reply size");
    uint8_t rest[65536];
    if (size > 16 && recv_full(fd, rest, size - 16)) die("VERSION reply");
  }
  uint8_t req[REQ], rep[REP];
  uint32_t count = 4;
  memcpy(req + 16, &offset, 8);
  memcpy(req + 24, &region, 4);
  memcpy(req + 28, &count, 4);
  FILE *out = out_path ? fopen(out_path, "w") : stdout;
  if (!out) die("output file");
  struct rusage ru0, ru1;
  if (pipeline == 0) {
    uint64_t *samples = calloc((size_t)iters, sizeof *samples);
    if (!samples) die("memory");
    getrusage(RUSAGE_SELF, &ru0);
    for (long i = 0; i < warmup + iters; i++) {
      uint16_t id = (uint16_t)(i + 1);
      header(req, id, 9, REQ, 0);
      uint64_t t0 = now_ns();
      if (send_full(fd, req, REQ) || recv_full(fd, rep, REP)) die("connection lost");
      uint64_t t1 = now_ns();
      uint16_t rid;
      uint32_t rsize, rflags, data;
      memcpy(&rid, rep, 2);
      memcpy(&rsize, rep + 4, 4);
      memcpy(&rflags, rep + 8, 4);
      memcpy(&data, rep + 32, 4);
      if (rid != id || rsize != REP || rflags != 1) die("bad reply");
      if (expect >= 0 && data != (uint32_t)expect) die("bad reply data");
      if (i >= warmup) samples[i - warmup] = t1 - t0;
    }
    getrusage(RUSAGE_SELF, &ru1);
    fprintf(out, "{\"samples_ns\":[");
    for (long i = 0; i < iters; i++) fprintf(out, "%s%" PRIu64, i ? "," : "", samples[i]);
    free(samples);
  } else {
    /* Keep `pipeline` requests in flight; count completed requests over the run. */
    long sent = 0, done = 0, total = warmup + iters;
    uint64_t t0 = 0;
    uint8_t batch[REQ * 64];
    static uint8_t replies[REP * 4096];
    getrusage(RUSAGE_SELF, &ru0);
    while (done < total) {
      if (done == warmup && t0 == 0) t0 = now_ns();
      long room = pipeline - (sent - done);
      long n = room < 64 ? room : 64;
      if (n > total - sent) n = total - sent;
      for (long k = 0; k < n; k++) header(batch + REQ * k, (uint16_t)(sent + k + 1), 9, REQ, 0), memcpy(batch + REQ * k + 16, req + 16, 16);
      if (n > 0 && send_full(fd, batch, (size_t)(REQ * n))) die("connection lost");
      sent += n;
      /* Take every reply that has arrived (at least one) with one receive, as a pipelining VMM would. */
      size_t want = (size_t)(sent - done) * REP;
      if (want > sizeof replies) want = sizeof replies;
      size_t got = 0;
      while (got == 0 || got % REP != 0) {
        struct iovec iov = {replies + got, want - got};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
        ssize_t r = recvmsg(fd, &msg, 0);
        if (r <= 0) {
          if (r < 0 && errno == EINTR) continue;
          die("connection lost");
        }
        got += (size_t)r;
      }
      for (size_t k = 0; k < got / REP; k++) {
        uint16_t rid;
        memcpy(&rid, replies + k * REP, 2);
        if (rid != (uint16_t)(done + 1)) die("bad reply order");
        done++;
      }
    }
    uint64_t t1 = now_ns();
    getrusage(RUSAGE_SELF, &ru1);
    fprintf(out, "{\"pipeline\":%ld,\"requests\":%ld,\"elapsed_ns\":%" PRIu64 "", pipeline, iters, t1 - t0);
  }
  uint64_t cpu = (uint64_t)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) * 1000000000ull +
                 (uint64_t)((ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) * 1000ll);
  fprintf(out, "%s\"client_cpu_ns\":%" PRIu64 "}\n", pipeline == 0 ? "]," : ",", cpu);
  if (out != stdout) fclose(out);
  close(fd);
  return 0;
}
