// Blocking on the JS thread without starving its event loop.
//
// An event source whose traffic needs JS (a register handler in TS) pays the event loop's costs
// per request: an epoll wait, a non-blocking receive, libuv's turn and Node's per-wakeup work.
// While that source is the only thing the loop has to do, the JS thread can instead block in the
// source's own receive call ("blocking serve"): two system calls per request, as on an I/O
// thread. The loop must not notice the difference, so a sentinel thread watches it meanwhile:
// it polls the loop's backend fd (readable when any other handle has an event: another socket,
// an async handle, a signal) until the loop's next timer is due, and then interrupts the JS
// thread's blocking call with WakeSignal; the JS thread goes back to the loop.
//
// The signal is only ever sent while the JS thread is inside (or about to enter) its blocking
// call (EnterBlockingCall .. LeaveBlockingCall), so JS code and other system calls of the JS
// thread never see an EINTR of ours; a signal that lands just before the call blocks is sent
// again until the JS thread acknowledges by disarming.
#pragma once

#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "io_thread.h"

namespace mdevkit {

class LoopSentinel {
 public:
  // The sentinel of the calling JS thread's loop, started on first use; nullptr if the thread or
  // its eventfd cannot be had (blocking serve is then not used).
  static LoopSentinel* ForThisThread(uv_loop_t* loop) {
    thread_local std::unique_ptr<LoopSentinel> sentinel;
    if (!sentinel) {
      auto s = std::unique_ptr<LoopSentinel>(new LoopSentinel(loop));
      if (!s->Start()) return nullptr;
      sentinel = std::move(s);
    }
    return sentinel->loop_ == loop ? sentinel.get() : nullptr;
  }

  ~LoopSentinel() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    Kick();
    if (thread_.joinable()) thread_.join();
    if (kick_fd_ >= 0) ::close(kick_fd_);
  }

  LoopSentinel(const LoopSentinel&) = delete;
  LoopSentinel& operator=(const LoopSentinel&) = delete;

  // Whether the loop has nothing to do now but the caller's own fds (still watched): no other
  // event pending, no timer due. Then blocking serve may begin; *timeout_ms is the time until the
  // loop's next timer (-1: none). libuv's epoll set is level-triggered, so looking at its ready
  // events takes none away from the loop.
  bool LoopIdle(const std::vector<int>& own_fds, int* timeout_ms) {
    if (WatchersPending()) return false;
    uv_update_time(loop_);
    int t = uv_backend_timeout(loop_);
    if (t == 0) return false;
    epoll_event ready[8];
    int n = ::epoll_wait(uv_backend_fd(loop_), ready, 8, 0);
    if (n < 0) return false;
    for (int i = 0; i < n; i++) {
      if (std::find(own_fds.begin(), own_fds.end(), ready[i].data.fd) == own_fds.end()) return false;
    }
    *timeout_ms = t;
    return true;
  }

  // The JS thread begins a blocking serve; the sentinel watches the loop from now on.
  void Arm(int timeout_ms) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      target_ = pthread_self();
      SetDeadline(timeout_ms);
      yield_.store(false, std::memory_order_seq_cst);
      armed_ = true;
      session_++;
    }
    cv_.notify_all();
  }

  // After JS ran: its timers may be due sooner (a setTimeout), or it left work for the loop (a
  // setImmediate, a closing handle, a new fd to watch). Returns false if the loop must run now.
  bool Recheck() {
    if (yield_.load(std::memory_order_relaxed) || WatchersPending()) return false;
    uv_update_time(loop_);
    int t = uv_backend_timeout(loop_);
    if (t == 0) return false;
    Clock::time_point deadline = t < 0 ? Clock::time_point::max() : Clock::now() + std::chrono::milliseconds(t);
    bool sooner;
    {
      std::lock_guard<std::mutex> lk(mu_);
      // Whole milliseconds: the same timer, recomputed later, can look up to 1 ms sooner. (A later
      // deadline needs no wakeup: at the old one the sentinel finds it and sleeps on.)
      sooner = deadline < deadline_ - std::chrono::milliseconds(1);
      deadline_ = deadline;
    }
    if (sooner) Kick();  // the sentinel sleeps until the old deadline: wake it to take the new one
    return true;
  }

  // Around the blocking call. EnterBlockingCall returns false if the loop wants the thread back
  // (then the call must not be made).
  bool EnterBlockingCall() {
    in_call_.store(true, std::memory_order_seq_cst);
    if (yield_.load(std::memory_order_seq_cst)) {
      in_call_.store(false, std::memory_order_relaxed);
      return false;
    }
    return true;
  }
  void LeaveBlockingCall() { in_call_.store(false, std::memory_order_seq_cst); }
  bool YieldRequested() const { return yield_.load(std::memory_order_relaxed); }

  // The blocking serve ended: stop watching (no signal is sent after this returns).
  void Disarm() {
    bool watching;
    {
      std::lock_guard<std::mutex> lk(mu_);
      armed_ = false;
      watching = watching_;
    }
    cv_.notify_all();
    // A sentinel in poll() on the backend fd must leave it: the loop's own events would keep
    // waking it while the loop runs.
    if (watching) Kick();
  }

 private:
  using Clock = std::chrono::steady_clock;

  explicit LoopSentinel(uv_loop_t* loop) : loop_(loop) {}

  bool Start() {
    kick_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (kick_fd_ < 0) return false;
    InstallWakeSignal();
    try {
      thread_ = std::thread([this] { Main(); });
    } catch (const std::system_error&) {
      return false;
    }
    return true;
  }

  // Handles started since the loop's last turn (a socket JS opened): libuv adds their fds to its
  // epoll set only at its next turn, so until then the sentinel could not see their events.
  bool WatchersPending() const { return loop_->watcher_queue.next != &loop_->watcher_queue; }

  void SetDeadline(int timeout_ms) {
    deadline_ = timeout_ms < 0 ? Clock::time_point::max() : Clock::now() + std::chrono::milliseconds(timeout_ms);
  }

  void Kick() {
    uint64_t one = 1;
    ssize_t r = ::write(kick_fd_, &one, sizeof one);
    (void)r;  // the counter cannot overflow in practice; a failed kick is retried by the next one
  }

  void Main() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [this] { return stop_ || armed_; });
      if (stop_) return;
      // Armed: watch the loop until an event, the deadline, or a disarm.
      uint64_t session = session_;
      watching_ = true;
      Clock::time_point deadline = deadline_;
      lk.unlock();
      pollfd p[2] = {{uv_backend_fd(loop_), POLLIN, 0}, {kick_fd_, POLLIN, 0}};
      int timeout = -1;
      if (deadline != Clock::time_point::max()) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        timeout = left <= 0 ? 0 : static_cast<int>(std::min<long long>(left + 1, INT32_MAX));
      }
      int r = ::poll(p, 2, timeout);
      if (p[1].revents & POLLIN) {
        uint64_t v;
        ssize_t n = ::read(kick_fd_, &v, sizeof v);
        (void)n;
      }
      lk.lock();
      watching_ = false;
      if (stop_) return;
      if (!armed_ || session != session_) continue;  // that session ended meanwhile
      bool due = deadline_ != Clock::time_point::max() && Clock::now() >= deadline_;
      bool loop_event = r > 0 && (p[0].revents & (POLLIN | POLLERR | POLLHUP));
      if (!loop_event && !due) continue;  // kicked for a new deadline (or EINTR): watch again
      // The loop needs its thread: ask, and interrupt the blocking call until the JS thread
      // disarms. (A signal sent just before the call blocks is lost, hence the repeat.)
      yield_.store(true, std::memory_order_seq_cst);
      while (armed_ && session == session_ && !stop_) {
        if (in_call_.load(std::memory_order_seq_cst)) pthread_kill(target_, WakeSignal());
        cv_.wait_for(lk, std::chrono::milliseconds(2));
      }
    }
  }

  uv_loop_t* loop_;
  int kick_fd_ = -1;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool armed_ = false;     // under mu_
  bool watching_ = false;  // under mu_
  bool stop_ = false;      // under mu_
  uint64_t session_ = 0;   // under mu_: which Arm() the sentinel acts for
  pthread_t target_{};     // under mu_
  Clock::time_point deadline_ = Clock::time_point::max();  // under mu_
  std::atomic<bool> yield_{false};
  std::atomic<bool> in_call_{false};
};

// When an event source begins a blocking serve: after kStart units of work in a row served on
// the loop, each wakeup leaving the source idle. A session that was not worth its set-up (the
// loop was busy, or cut it short) doubles the run needed before the next, up to kMax.
class BlockingServeStreak {
 public:
  static constexpr uint32_t kStart = 16;
  static constexpr uint32_t kMax = 4096;

  // A loop wakeup served `served` units; `idle`: nothing of the source's is left waiting.
  void LoopWakeup(uint64_t served, bool idle) {
    run_ = idle && served > 0 ? static_cast<uint32_t>(std::min<uint64_t>(uint64_t{run_} + served, kMax)) : 0;
  }
  bool Due() const { return run_ >= needed_; }
  // A session was tried (begun or refused by a busy loop); `served` units in it.
  void SessionEnded(uint64_t served) {
    run_ = 0;
    needed_ = served >= kStart ? kStart : std::min(needed_ * 2, kMax);
  }

 private:
  uint32_t run_ = 0;
  uint32_t needed_ = kStart;
};

}  // namespace mdevkit
