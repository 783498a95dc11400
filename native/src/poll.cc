// Blocking readiness waits (poll(2)) for synchronous callers: a vfio-user client that behaves like
// a vCPU thread blocks until a reply, a server-to-client request or an interrupt eventfd is ready.
// Everything else in the addon is event-driven on the libuv loop; this is the one place that
// deliberately blocks the calling thread, for at most the timeout it is given.
#include <poll.h>
#include <time.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "errors.h"
#include "modules.h"

namespace mdevkit {
namespace {

// More entries than any synchronous caller needs; the bound keeps a bogus array length from
// turning into a huge allocation.
constexpr uint32_t kMaxPollEntries = 4096;

int64_t MonotonicMs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// The timeout argument: -1 (wait forever) or 0 .. INT32_MAX milliseconds.
int ArgTimeout(const Napi::CallbackInfo& info, size_t i) {
  Napi::Env env = info.Env();
  Napi::Value v = i < info.Length() ? info[i] : env.Undefined();
  if (!v.IsNumber()) ThrowTypeError(env, "timeoutMs", "an integer (-1 waits forever)");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d) ThrowTypeError(env, "timeoutMs", "an integer (-1 waits forever)");
  if (d < -1 || d > 2147483647.0) ThrowRangeError(env, "timeoutMs", "must be -1 or in [0, 2^31 - 1]");
  return static_cast<int>(d);
}

uint32_t FieldU32(Napi::Env env, Napi::Object o, const char* key, const std::string& field, uint32_t max) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) ThrowTypeError(env, field, "an integer");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d) ThrowTypeError(env, field, "an integer");
  if (d < 0 || d > static_cast<double>(max)) ThrowRangeError(env, field, "must be in [0, " + std::to_string(max) + "]");
  return static_cast<uint32_t>(d);
}

// Waits with poll(2); on EINTR waits again for what is left of the timeout, so a signal neither
// fails the call nor extends it. Returns poll's result (>= 0).
int PollRetrying(Napi::Env env, pollfd* fds, nfds_t n, int timeoutMs) {
  const int64_t deadline = timeoutMs >= 0 ? MonotonicMs() + timeoutMs : 0;
  int wait = timeoutMs;
  for (;;) {
    int r = ::poll(fds, n, wait);
    if (r >= 0) return r;
    if (errno != EINTR) ThrowErrno(env, "poll", errno);
    if (timeoutMs >= 0) {
      int64_t left = deadline - MonotonicMs();
      wait = left > 0 ? static_cast<int>(left) : 0;
    }
  }
}

// pollFds(entries: {fd, events}[], timeoutMs) -> revents[] (one per entry, 0 when not ready).
Napi::Value PollFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArray()) ThrowTypeError(env, "entries", "an array of { fd, events }");
  Napi::Array entries = info[0].As<Napi::Array>();
  uint32_t n = entries.Length();
  if (n > kMaxPollEntries) ThrowRangeError(env, "entries", "at most " + std::to_string(kMaxPollEntries) + " entries");
  int timeoutMs = ArgTimeout(info, 1);

  std::vector<pollfd> fds(n);
  for (uint32_t i = 0; i < n; i++) {
    std::string field = "entries[" + std::to_string(i) + "]";
    Napi::Value e = entries.Get(i);
    if (!e.IsObject() || e.IsArray()) ThrowTypeError(env, field, "an object { fd, events }");
    Napi::Object o = e.As<Napi::Object>();
    fds[i].fd = static_cast<int>(FieldU32(env, o, "fd", field + ".fd", 2147483647u));
    fds[i].events = static_cast<short>(FieldU32(env, o, "events", field + ".events", 0xffffu));
    fds[i].revents = 0;
  }

  PollRetrying(env, fds.data(), static_cast<nfds_t>(n), timeoutMs);

  Napi::Array result = Napi::Array::New(env, n);
  for (uint32_t i = 0; i < n; i++) {
    result.Set(i, Napi::Number::New(env, static_cast<uint16_t>(fds[i].revents)));
  }
  return result;
}

// waitReadable(fd, timeoutMs) -> true when a read would not block (data, EOF or an error is
// pending), false on timeout. An fd that is not open is EBADF rather than a silent POLLNVAL.
Napi::Value WaitReadable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int timeoutMs = ArgTimeout(info, 1);
  pollfd p{fd, POLLIN, 0};
  PollRetrying(env, &p, 1, timeoutMs);
  if (p.revents & POLLNVAL) ThrowErrno(env, "poll", EBADF);
  return Napi::Boolean::New(env, (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0);
}

}  // namespace

void InitPoll(Napi::Env env, Napi::Object exports) {
  exports.Set("pollFds", Napi::Function::New(env, PollFds, "pollFds"));
  exports.Set("waitReadable", Napi::Function::New(env, WaitReadable, "waitReadable"));
  Napi::Object constants = Napi::Object::New(env);
  constants.Set("POLLIN", Napi::Number::New(env, POLLIN));
  constants.Set("POLLPRI", Napi::Number::New(env, POLLPRI));
  constants.Set("POLLOUT", Napi::Number::New(env, POLLOUT));
  constants.Set("POLLERR", Napi::Number::New(env, POLLERR));
  constants.Set("POLLHUP", Napi::Number::New(env, POLLHUP));
  constants.Set("POLLNVAL", Napi::Number::New(env, POLLNVAL));
  constants.Set("POLLRDHUP", Napi::Number::New(env, POLLRDHUP));
  constants.Freeze();
  exports.Set("pollConstants", constants);
}

}  // namespace mdevkit
