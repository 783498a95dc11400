// File-descriptor primitives: memfd (guest RAM and shared regions), seals, eventfd (doorbells and
// interrupts), positional I/O, and the plumbing to close/dup/pipe fds.
//
// Every fd is created close-on-exec so a spawned helper never inherits guest memory or a socket
// by accident; passing an fd on is always explicit (SCM_RIGHTS or spawn's stdio).
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>

#include "errors.h"
#include "fd_util.h"
#include "modules.h"

namespace mdevkit {
namespace {

// memfd_create(2) rejects names longer than NAME_MAX minus the "memfd:" prefix it adds.
constexpr size_t kMemfdNameMax = 249;

constexpr uint64_t kOffMax = static_cast<uint64_t>(std::numeric_limits<off_t>::max());

#ifdef F_SEAL_FUTURE_WRITE
constexpr unsigned kKnownSeals = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE;
#else
constexpr unsigned kKnownSeals = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
#endif

// An eventfd counter is a u64 whose largest value is 2^64 - 2; writing 2^64 - 1 is EINVAL.
constexpr uint64_t kEventfdMax = UINT64_MAX - 1;

off_t ArgOffset(const Napi::CallbackInfo& info, size_t i, const char* field) {
  uint64_t v = ArgU64(info, i, field);
  if (v > kOffMax) ThrowRangeError(info.Env(), field, "must be < 2^63");
  return static_cast<off_t>(v);
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = ArgString(info, 0, "name");
  bool allowSealing = ArgBool(info, 1, "allowSealing", true);
  if (name.find('\0') != std::string::npos) ThrowInvalid(env, "name", "must not contain NUL characters");
  if (name.size() > kMemfdNameMax) ThrowInvalid(env, "name", "must be at most 249 bytes of UTF-8");
  unsigned flags = MFD_CLOEXEC | (allowSealing ? MFD_ALLOW_SEALING : 0u);
  int fd = memfd_create(name.c_str(), flags);
  if (fd < 0) ThrowErrno(env, "memfd_create", errno);
  return Napi::Number::New(env, fd);
}

Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  off_t size = ArgOffset(info, 1, "size");
  if (RetryEintr([&] { return ::ftruncate(fd, size); }) < 0) ThrowErrno(env, "ftruncate", errno);
  return env.Undefined();
}

Napi::Value FdSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  struct stat st;
  if (::fstat(fd, &st) < 0) ThrowErrno(env, "fstat", errno);
  return Napi::Number::New(env, static_cast<double>(st.st_size));
}

Napi::Value AddSeals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uint32_t seals = ArgU32(info, 1, "seals");
  if ((seals & ~kKnownSeals) != 0) ThrowInvalid(env, "seals", "contains unknown seal bits");
  if (RetryEintr([&] { return ::fcntl(fd, F_ADD_SEALS, static_cast<int>(seals)); }) < 0) {
    ThrowErrno(env, "fcntl", errno);
  }
  return env.Undefined();
}

Napi::Value GetSeals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int seals = RetryEintr([&] { return ::fcntl(fd, F_GET_SEALS); });
  if (seals < 0) ThrowErrno(env, "fcntl", errno);
  return Napi::Number::New(env, seals);
}

Napi::Value EventfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t initial = ArgU32(info, 0, "initial");
  bool nonBlocking = ArgBool(info, 1, "nonBlocking", true);
  bool semaphore = ArgBool(info, 2, "semaphore", false);
  int flags = EFD_CLOEXEC | (nonBlocking ? EFD_NONBLOCK : 0) | (semaphore ? EFD_SEMAPHORE : 0);
  int fd = ::eventfd(initial, flags);
  if (fd < 0) ThrowErrno(env, "eventfd", errno);
  return Napi::Number::New(env, fd);
}

Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uint64_t value = 0;
  ssize_t n = RetryEintr([&] { return ::read(fd, &value, sizeof value); });
  if (n < 0) {
    if (errno == EAGAIN) return env.Null();
    ThrowErrno(env, "read", errno);
  }
  // An eventfd always transfers exactly 8 bytes; anything else means fd is some other file.
  if (n != static_cast<ssize_t>(sizeof value)) ThrowInvalid(env, "fd", "is not an eventfd (short read)");
  return Napi::BigInt::New(env, value);
}

Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uint64_t value = ArgU64(info, 1, "value");
  if (value > kEventfdMax) ThrowRangeError(env, "value", "must be <= 2^64 - 2");
  ssize_t n = RetryEintr([&] { return ::write(fd, &value, sizeof value); });
  if (n < 0) {
    // Non-blocking and the add would overflow the counter: the reader has not caught up yet.
    if (errno == EAGAIN) return Napi::Boolean::New(env, false);
    ThrowErrno(env, "write", errno);
  }
  if (n != static_cast<ssize_t>(sizeof value)) ThrowInvalid(env, "fd", "is not an eventfd (short write)");
  return Napi::Boolean::New(env, true);
}

// pread/pwrite share everything but the call: fd, buffer and position checks, EINTR, errors.
template <typename Io>
Napi::Value PositionalIo(const Napi::CallbackInfo& info, const char* syscall, Io io) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  ByteView buf = ArgLiveBytes(info, 1, "buf");
  off_t position = ArgOffset(info, 2, "position");
  ssize_t n = RetryEintr([&] { return io(fd, buf.data, buf.length, position); });
  if (n < 0) ThrowErrno(env, syscall, errno);
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value Pread(const Napi::CallbackInfo& info) {
  return PositionalIo(info, "pread", [](int fd, uint8_t* p, size_t n, off_t pos) { return ::pread(fd, p, n, pos); });
}

Napi::Value Pwrite(const Napi::CallbackInfo& info) {
  return PositionalIo(info, "pwrite", [](int fd, uint8_t* p, size_t n, off_t pos) { return ::pwrite(fd, p, n, pos); });
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  // Not retried on EINTR: Linux has already released the fd, and a retry could close an fd
  // another thread just received under the same number.
  if (::close(fd) < 0 && errno != EINTR) ThrowErrno(env, "close", errno);
  return env.Undefined();
}

Napi::Value DupFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int dup = RetryEintr([&] { return ::fcntl(fd, F_DUPFD_CLOEXEC, 0); });
  if (dup < 0) ThrowErrno(env, "fcntl", errno);
  return Napi::Number::New(env, dup);
}

Napi::Value Pipe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool nonBlocking = ArgBool(info, 0, "nonBlocking", true);
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | (nonBlocking ? O_NONBLOCK : 0)) < 0) ThrowErrno(env, "pipe2", errno);
  UniqueFd r(fds[0]), w(fds[1]);
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(uint32_t{0}, Napi::Number::New(env, r.Get()));
  result.Set(uint32_t{1}, Napi::Number::New(env, w.Get()));
  r.Release();
  w.Release();
  return result;
}

Napi::Value SetNonBlocking(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  if (info.Length() < 2 || !info[1].IsBoolean()) ThrowTypeError(env, "on", "a boolean");
  bool on = info[1].As<Napi::Boolean>().Value();
  int flags = RetryEintr([&] { return ::fcntl(fd, F_GETFL); });
  if (flags < 0) ThrowErrno(env, "fcntl", errno);
  int wanted = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (wanted != flags && RetryEintr([&] { return ::fcntl(fd, F_SETFL, wanted); }) < 0) {
    ThrowErrno(env, "fcntl", errno);
  }
  return env.Undefined();
}

}  // namespace

void InitFdOps(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("ftruncate", Napi::Function::New(env, Ftruncate, "ftruncate"));
  exports.Set("fdSize", Napi::Function::New(env, FdSize, "fdSize"));
  exports.Set("addSeals", Napi::Function::New(env, AddSeals, "addSeals"));
  exports.Set("getSeals", Napi::Function::New(env, GetSeals, "getSeals"));
  exports.Set("eventfdCreate", Napi::Function::New(env, EventfdCreate, "eventfdCreate"));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead, "eventfdRead"));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite, "eventfdWrite"));
  exports.Set("pread", Napi::Function::New(env, Pread, "pread"));
  exports.Set("pwrite", Napi::Function::New(env, Pwrite, "pwrite"));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));
  exports.Set("dupFd", Napi::Function::New(env, DupFd, "dupFd"));
  exports.Set("pipe", Napi::Function::New(env, Pipe, "pipe"));
  exports.Set("setNonBlocking", Napi::Function::New(env, SetNonBlocking, "setNonBlocking"));

  Napi::Object seals = Napi::Object::New(env);
  seals.Set("F_SEAL_SEAL", Napi::Number::New(env, F_SEAL_SEAL));
  seals.Set("F_SEAL_SHRINK", Napi::Number::New(env, F_SEAL_SHRINK));
  seals.Set("F_SEAL_GROW", Napi::Number::New(env, F_SEAL_GROW));
  seals.Set("F_SEAL_WRITE", Napi::Number::New(env, F_SEAL_WRITE));
#ifdef F_SEAL_FUTURE_WRITE
  seals.Set("F_SEAL_FUTURE_WRITE", Napi::Number::New(env, F_SEAL_FUTURE_WRITE));
#endif
  seals.Freeze();
  exports.Set("sealConstants", seals);
}

}  // namespace mdevkit
