// Small helpers shared by the fd-level native modules: EINTR retry and an owning fd guard, so
// every error path between creating an fd and handing it to JS closes it exactly once.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <utility>

namespace mdevkit {

// Calls `fn` until it does not fail with EINTR; returns its last result (errno is preserved).
template <typename Fn>
auto RetryEintr(Fn&& fn) -> decltype(fn()) {
  for (;;) {
    auto r = fn();
    if (r != -1 || errno != EINTR) return r;
  }
}

// Owns one fd until Release(); closes it on destruction. Not copyable.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~UniqueFd() { Reset(); }

  int Get() const { return fd_; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset() {
    // close() is never retried: on Linux the fd is released even when it reports EINTR.
    if (fd_ >= 0) {
      int saved = errno;
      ::close(fd_);
      errno = saved;
    }
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

}  // namespace mdevkit
