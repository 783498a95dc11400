// Pieces shared by the native event sources that can hand their traffic to an I/O thread of their
// own (a vfio-user connection, the Xen ioreq engine): counters both sides write, and the signal
// that wakes such a thread out of a blocking system call.
#pragma once

#include <signal.h>

#include <atomic>
#include <cstdint>
#include <mutex>

namespace mdevkit {

// A counter written by one side at a time (the loop or the I/O thread) and read by JS at any
// time: relaxed atomic loads and stores, no locked read-modify-write.
struct Counter {
  std::atomic<uint64_t> v{0};
  Counter& operator++(int) {
    v.store(v.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return *this;
  }
  Counter& operator+=(uint64_t n) {
    v.store(v.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    return *this;
  }
  uint64_t get() const { return v.load(std::memory_order_relaxed); }
};

// A signal that only interrupts: it wakes an I/O thread out of a blocking system call (recvmsg,
// sendmsg, poll) when the JS thread wants its work back. Installed once, without SA_RESTART.
inline int WakeSignal() { return SIGRTMAX - 2; }
inline void InstallWakeSignal() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    sigaction(WakeSignal(), &sa, nullptr);
  });
}

}  // namespace mdevkit
