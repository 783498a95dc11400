// AF_UNIX sockets for the vfio-user transport: socket pairs, an owner-only listening socket,
// connect/accept, and message send/receive with fd passing.
#include "unix_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#include "errors.h"
#include "fd_util.h"
#include "modules.h"

namespace mdevkit {

ssize_t SendWithFds(int fd, const iovec* iov, int iovcnt, const int* fds, int nfds, bool retryEintr, int flags) {
  if (nfds < 0 || nfds > kMaxFdsPerMessage || iovcnt < 0 || iovcnt > kMaxIovecs) return -EINVAL;
  if (nfds > 0) {
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) total += iov[i].iov_len;
    if (total == 0) return -EINVAL;  // a stream socket silently drops fds sent without data
  }
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov);
  msg.msg_iovlen = static_cast<size_t>(iovcnt);
  if (nfds > 0) {
    const size_t payload = sizeof(int) * static_cast<size_t>(nfds);
    std::memset(control, 0, CMSG_SPACE(payload));
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(payload);
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(payload);
    std::memcpy(CMSG_DATA(cmsg), fds, payload);
  }
  flags |= MSG_NOSIGNAL;
  ssize_t n = retryEintr ? RetryEintr([&] { return sys::Sendmsg(fd, &msg, flags); }) : sys::Sendmsg(fd, &msg, flags);
  return n < 0 ? -errno : n;
}

ssize_t RecvWithFds(int fd, const iovec* iov, int iovcnt, int* fds, int maxFds, int* nfds, bool* fdsTruncated, bool retryEintr, int flags) {
  *nfds = 0;
  *fdsTruncated = false;
  if (maxFds < 0 || maxFds > kMaxFdsPerMessage || iovcnt < 0 || iovcnt > kMaxIovecs) return -EINVAL;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov);
  msg.msg_iovlen = static_cast<size_t>(iovcnt);
  if (maxFds > 0) {
    msg.msg_control = control;
    // CMSG_LEN, not CMSG_SPACE: the kernel fits (controllen - header) / sizeof(int) fds, and the
    // alignment padding in CMSG_SPACE could admit one more than the caller asked for.
    msg.msg_controllen = CMSG_LEN(sizeof(int) * static_cast<size_t>(maxFds));
  }
  flags |= MSG_CMSG_CLOEXEC;
  ssize_t n = retryEintr ? RetryEintr([&] { return sys::Recvmsg(fd, &msg, flags); }) : sys::Recvmsg(fd, &msg, flags);
  if (n < 0) return -errno;
  *fdsTruncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  if (msg.msg_controllen == 0) return n;
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS || cmsg->cmsg_len < CMSG_LEN(0)) continue;
    size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* data = CMSG_DATA(cmsg);
    for (size_t i = 0; i < count; i++) {
      int passed;
      std::memcpy(&passed, data + i * sizeof(int), sizeof passed);
      if (*nfds < maxFds) {
        fds[(*nfds)++] = passed;
      } else {
        ::close(passed);  // never leak an fd we cannot hand to the caller
        *fdsTruncated = true;
      }
    }
  }
  return n;
}

namespace {

Napi::Value Arg(const Napi::CallbackInfo& info, size_t i) {
  return i < info.Length() ? info[i] : info.Env().Undefined();
}

int ValueFd(Napi::Env env, Napi::Value v, const std::string& field) {
  if (!v.IsNumber()) ThrowTypeError(env, field, "a file descriptor (integer)");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d) ThrowTypeError(env, field, "an integer");
  if (d < 0 || d > INT_MAX) ThrowRangeError(env, field, "a file descriptor is >= 0 and < 2^31");
  return static_cast<int>(d);
}

[[noreturn]] void ThrowPathErrno(Napi::Env env, const char* syscall, int err, const std::string& path) {
  Napi::Error error = MakeErrnoError(env, syscall, err);
  error.Set("path", Napi::String::New(env, path));
  throw error;
}

// Fills a sockaddr_un for a filesystem path, rejecting what sun_path cannot hold. Abstract
// (NUL-prefixed) names are refused on purpose: they have no permission bits.
socklen_t PathAddress(Napi::Env env, const std::string& path, sockaddr_un* addr) {
  if (path.empty()) ThrowInvalid(env, "path", "must not be empty");
  if (path.find('\0') != std::string::npos) ThrowInvalid(env, "path", "must not contain NUL characters");
  if (path.size() >= sizeof addr->sun_path) {
    ThrowInvalid(env, "path", "is longer than the " + std::to_string(sizeof addr->sun_path - 1) +
                 " bytes a UNIX socket address holds", ENAMETOOLONG);
  }
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  std::memcpy(addr->sun_path, path.data(), path.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
}

Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool nonBlocking = ArgBool(info, 0, "nonBlocking", true);
  int sv[2];
  int type = SOCK_STREAM | SOCK_CLOEXEC | (nonBlocking ? SOCK_NONBLOCK : 0);
  if (::socketpair(AF_UNIX, type, 0, sv) < 0) ThrowErrno(env, "socketpair", errno);
  UniqueFd a(sv[0]), b(sv[1]);
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(uint32_t{0}, Napi::Number::New(env, a.Get()));
  result.Set(uint32_t{1}, Napi::Number::New(env, b.Get()));
  a.Release();
  b.Release();
  return result;
}

Napi::Value ListenUnix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path");
  uint32_t backlog = ArgU32(info, 1, "backlog");
  bool nonBlocking = ArgBool(info, 2, "nonBlocking", true);
  if (backlog > INT_MAX) ThrowRangeError(env, "backlog", "must be < 2^31");
  sockaddr_un addr;
  socklen_t addrlen = PathAddress(env, path, &addr);

  UniqueFd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonBlocking ? SOCK_NONBLOCK : 0), 0));
  if (sock.Get() < 0) ThrowErrno(env, "socket", errno);
  // bind() creates the socket file with the socket inode's mode masked by the umask, so setting
  // the mode first means the file is never reachable by anyone but the owner, not even briefly.
  if (::fchmod(sock.Get(), S_IRUSR | S_IWUSR) < 0) ThrowErrno(env, "fchmod", errno);
  if (::bind(sock.Get(), reinterpret_cast<sockaddr*>(&addr), addrlen) < 0) {
    ThrowPathErrno(env, "bind", errno, path);
  }
  if (::listen(sock.Get(), static_cast<int>(backlog)) < 0) {
    int err = errno;
    ::unlink(path.c_str());  // we created it a moment ago; do not leave a dead socket behind
    ThrowPathErrno(env, "listen", err, path);
  }
  return Napi::Number::New(env, sock.Release());
}

Napi::Value AcceptUnix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int conn = RetryEintr([&] { return ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK); });
  if (conn < 0) {
    if (errno == EAGAIN) return env.Null();
    ThrowErrno(env, "accept4", errno);
  }
  return Napi::Number::New(env, conn);
}

Napi::Value ConnectUnix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path");
  bool nonBlocking = ArgBool(info, 1, "nonBlocking", true);
  sockaddr_un addr;
  socklen_t addrlen = PathAddress(env, path, &addr);
  UniqueFd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonBlocking ? SOCK_NONBLOCK : 0), 0));
  if (sock.Get() < 0) ThrowErrno(env, "socket", errno);
  // AF_UNIX connect completes immediately or fails; non-blocking, a full backlog is EAGAIN.
  if (RetryEintr([&] { return ::connect(sock.Get(), reinterpret_cast<sockaddr*>(&addr), addrlen); }) < 0) {
    ThrowPathErrno(env, "connect", errno, path);
  }
  return Napi::Number::New(env, sock.Release());
}

Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  Napi::Value data = Arg(info, 1);
  Napi::Value fdsValue = Arg(info, 2);

  // Phase 1 reads every JS value (array elements may be getters that run JS); phase 2 takes raw
  // pointers only after that, so nothing can detach a buffer between taking its address and
  // the syscall.
  std::vector<Napi::Value> chunks;
  bool gathered = data.IsArray();
  if (gathered) {
    Napi::Array array = data.As<Napi::Array>();
    uint32_t count = array.Length();
    if (count > static_cast<uint32_t>(kMaxIovecs)) {
      ThrowRangeError(env, "data", "at most " + std::to_string(kMaxIovecs) + " buffers per message");
    }
    chunks.reserve(count);
    for (uint32_t i = 0; i < count; i++) chunks.push_back(array.Get(i));
  } else {
    chunks.push_back(data);
  }
  std::vector<int> fds;
  if (!fdsValue.IsUndefined() && !fdsValue.IsNull()) {
    if (!fdsValue.IsArray()) ThrowTypeError(env, "fds", "an array of file descriptors");
    Napi::Array array = fdsValue.As<Napi::Array>();
    uint32_t count = array.Length();
    if (count > static_cast<uint32_t>(kMaxFdsPerMessage)) {
      ThrowRangeError(env, "fds", "at most " + std::to_string(kMaxFdsPerMessage) + " fds per message");
    }
    fds.reserve(count);
    for (uint32_t i = 0; i < count; i++) fds.push_back(ValueFd(env, array.Get(i), "fds[" + std::to_string(i) + "]"));
  }

  std::vector<iovec> iov(chunks.size());
  size_t total = 0;
  for (size_t i = 0; i < chunks.size(); i++) {
    std::string field = gathered ? "data[" + std::to_string(i) + "]" : "data";
    ByteView view = ValueLiveBytes(env, chunks[i], field.c_str());
    iov[i].iov_base = view.data;
    iov[i].iov_len = view.length;
    total += view.length;
  }
  // A stream socket cannot carry ancillary data without at least one byte of payload.
  if (total == 0 && !fds.empty()) ThrowInvalid(env, "data", "must hold at least one byte when fds are attached");

  ssize_t n = SendWithFds(fd, iov.data(), static_cast<int>(iov.size()), fds.data(), static_cast<int>(fds.size()));
  if (n == -EAGAIN) return env.Null();
  if (n < 0) ThrowErrno(env, "sendmsg", static_cast<int>(-n));
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uint32_t maxFds = Arg(info, 2).IsUndefined() ? 16 : ArgU32(info, 2, "maxFds");
  if (maxFds > static_cast<uint32_t>(kMaxFdsPerMessage)) {
    ThrowRangeError(env, "maxFds", "must be <= " + std::to_string(kMaxFdsPerMessage));
  }
  ByteView buf = ArgLiveBytes(info, 1, "buf");
  // recvmsg into zero bytes returns 0, which would be indistinguishable from EOF.
  if (buf.length == 0) ThrowInvalid(env, "buf", "must not be empty");

  iovec iov{buf.data, buf.length};
  int fds[kMaxFdsPerMessage];
  int nfds = 0;
  bool truncated = false;
  ssize_t n = RecvWithFds(fd, &iov, 1, fds, static_cast<int>(maxFds), &nfds, &truncated);
  if (n == -EAGAIN) return env.Null();
  if (n < 0) ThrowErrno(env, "recvmsg", static_cast<int>(-n));

  std::vector<UniqueFd> owned;
  owned.reserve(static_cast<size_t>(nfds));
  for (int i = 0; i < nfds; i++) owned.emplace_back(fds[i]);
  Napi::Object result = Napi::Object::New(env);
  Napi::Array fdArray = Napi::Array::New(env, static_cast<size_t>(nfds));
  for (int i = 0; i < nfds; i++) fdArray.Set(static_cast<uint32_t>(i), Napi::Number::New(env, fds[i]));
  result.Set("bytes", Napi::Number::New(env, static_cast<double>(n)));
  result.Set("fds", fdArray);
  result.Set("fdsTruncated", Napi::Boolean::New(env, truncated));
  for (UniqueFd& f : owned) f.Release();  // now owned by the caller
  return result;
}

Napi::Value ShutdownSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  std::string how = ArgString(info, 1, "how");
  int mode;
  if (how == "read") {
    mode = SHUT_RD;
  } else if (how == "write") {
    mode = SHUT_WR;
  } else if (how == "both") {
    mode = SHUT_RDWR;
  } else {
    ThrowTypeError(env, "how", "one of 'read', 'write', 'both'");
  }
  if (::shutdown(fd, mode) < 0) ThrowErrno(env, "shutdown", errno);
  return env.Undefined();
}

Napi::Value PeerCredentials(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) ThrowErrno(env, "getsockopt", errno);
  Napi::Object result = Napi::Object::New(env);
  result.Set("pid", Napi::Number::New(env, cred.pid));
  result.Set("uid", Napi::Number::New(env, cred.uid));
  result.Set("gid", Napi::Number::New(env, cred.gid));
  return result;
}

Napi::Value SocketRaw(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t domain = ArgU32(info, 0, "domain");
  uint32_t type = ArgU32(info, 1, "type");
  uint32_t protocol = Arg(info, 2).IsUndefined() ? 0 : ArgU32(info, 2, "protocol");
  if (domain > INT_MAX) ThrowRangeError(env, "domain", "must be < 2^31");
  if (type > INT_MAX) ThrowRangeError(env, "type", "must be < 2^31");
  if (protocol > INT_MAX) ThrowRangeError(env, "protocol", "must be < 2^31");
  int fd = ::socket(static_cast<int>(domain), static_cast<int>(type) | SOCK_CLOEXEC, static_cast<int>(protocol));
  if (fd < 0) ThrowErrno(env, "socket", errno);
  return Napi::Number::New(env, fd);
}

}  // namespace

void InitUnixSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("socketPair", Napi::Function::New(env, SocketPair, "socketPair"));
  exports.Set("listenUnix", Napi::Function::New(env, ListenUnix, "listenUnix"));
  exports.Set("acceptUnix", Napi::Function::New(env, AcceptUnix, "acceptUnix"));
  exports.Set("connectUnix", Napi::Function::New(env, ConnectUnix, "connectUnix"));
  exports.Set("sendMsg", Napi::Function::New(env, SendMsg, "sendMsg"));
  exports.Set("recvMsg", Napi::Function::New(env, RecvMsg, "recvMsg"));
  exports.Set("shutdownSocket", Napi::Function::New(env, ShutdownSocket, "shutdownSocket"));
  exports.Set("peerCredentials", Napi::Function::New(env, PeerCredentials, "peerCredentials"));
  exports.Set("socketRaw", Napi::Function::New(env, SocketRaw, "socketRaw"));
  exports.Set("maxFdsPerMessage", Napi::Number::New(env, kMaxFdsPerMessage));
}

}  // namespace mdevkit
