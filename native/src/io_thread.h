// Pieces shared by the native event sources that can hand their traffic to an I/O thread of their
// own (a vfio-user connection, the Xen ioreq engine): counters both sides write, and the signal
// that wakes such a thread out of a blocking system call.
#pragma once

#include <pthread.h>
#include <signal.h>
#include <uv.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>

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

// The hand-over of an event source's work between the JS thread (its libuv loop) and an I/O
// thread of the source's own. The work belongs to one side at a time: the loop hands it over
// (HandOver); the thread runs `serve` until that returns, then lets go and wakes the loop (a
// uv_async calling `on_yield` with `data` as the handle's data); the JS thread can take it back at
// any time (TakeBack), waking the thread out of a blocking call with WakeSignal. `serve` checks
// YieldRequested() between blocking calls.
class IoThread {
 public:
  IoThread() = default;
  IoThread(const IoThread&) = delete;
  IoThread& operator=(const IoThread&) = delete;
  ~IoThread() { Stop(); }

  void Start(uv_loop_t* loop, std::function<void()> serve, uv_async_cb on_yield, void* data) {
    InstallWakeSignal();
    serve_ = std::move(serve);
    async_ = new uv_async_t;
    uv_async_init(loop, async_, on_yield);
    async_->data = data;
    stop_ = false;
    thread_ = std::thread([this] { Main(); });
  }
  bool Running() const { return thread_.joinable(); }

  // The loop gives the work to the thread.
  void HandOver() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      owns_ = true;
      yield_.store(false, std::memory_order_relaxed);
    }
    cv_.notify_all();
  }

  // Whether the thread holds the work now (the loop must leave it alone).
  bool Owns() {
    std::lock_guard<std::mutex> lk(mu_);
    return owns_;
  }

  bool YieldRequested() const { return yield_.load(std::memory_order_relaxed); }

  // Takes the work back, waiting until the thread has let go; false if it did not hold it.
  bool TakeBack() {
    if (!Running()) return false;
    std::unique_lock<std::mutex> lk(mu_);
    if (!owns_) return false;
    yield_.store(true, std::memory_order_relaxed);
    while (owns_) {
      // The signal may land just before the thread blocks; it is sent again until it lets go.
      pthread_kill(thread_.native_handle(), WakeSignal());
      cv_.wait_for(lk, std::chrono::milliseconds(5));
    }
    return true;
  }

  // Stop() and closes the loop's handle (on the JS thread, as the source ends). Idempotent.
  void Close() {
    Stop();
    if (async_ == nullptr) return;
    uv_close(reinterpret_cast<uv_handle_t*>(async_), [](uv_handle_t* h) { delete reinterpret_cast<uv_async_t*>(h); });
    async_ = nullptr;
  }

  // Ends the thread (it lets go of the work first) and joins it. Idempotent.
  void Stop() {
    if (!Running()) return;
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      yield_.store(true, std::memory_order_relaxed);
    }
    cv_.notify_all();
    for (;;) {
      std::unique_lock<std::mutex> lk(mu_);
      if (!owns_) break;
      pthread_kill(thread_.native_handle(), WakeSignal());
      cv_.wait_for(lk, std::chrono::milliseconds(5), [this] { return !owns_; });
    }
    thread_.join();
  }

 private:
  void Main() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [this] { return stop_ || owns_; });
      if (stop_) return;
      lk.unlock();
      serve_();
      lk.lock();
      owns_ = false;
      cv_.notify_all();
      if (!stop_) uv_async_send(async_);
    }
  }

  std::function<void()> serve_;
  uv_async_t* async_ = nullptr;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool owns_ = false;  // under mu_
  bool stop_ = false;  // under mu_
  std::atomic<bool> yield_{false};
};

}  // namespace mdevkit
