// One vfio-user connection on the server side: the hot path of the KVM mediation path.
//
// The socket is registered on Node's libuv loop (no Node streams). Each wakeup drains every queued
// message: REGION_READ/REGION_WRITE go through the native RegionTable (served natively, or by a
// synchronous JS call), every other command goes to a JS control-plane callback. Replies are
// batched and written with one gathering send per wakeup; a reply carrying fds is sent alone so
// its SCM_RIGHTS data cannot be attributed to another message. A client that stops reading
// replies gets no more requests read (backpressure) rather than unbounded buffering.
//
// File descriptors: Linux delivers SCM_RIGHTS fds with the recvmsg() that reads the first byte
// of the sendmsg() they came with, and ends that recvmsg() after it. So the fds of one recvmsg()
// belong to the last message that *starts* in the bytes it returned.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "core/vfio_user_stream.h"
#include "errors.h"
#include "fd_util.h"
#include "io_thread.h"
#include "js_entry.h"
#include "loop_sentinel.h"
#include "modules.h"
#include "owned_ref.h"
#include "region_table.h"
#include "unix_socket.h"

namespace mdevkit {

namespace {

constexpr napi_type_tag kConnTag = {0x2b7d9e4a61c3f085ULL, 0x7f14c0d29a5e3b61ULL};
constexpr int kMaxReadsPerWakeup = 64;  // fairness between connections sharing the loop
constexpr uint32_t kDefaultDrainMs = 2000;
// In loop mode, after this many messages in a row served without JS, the I/O thread takes over.
constexpr uint32_t kNativeStreakForThread = 64;
// Loop-path socket calls never block, even while the socket is blocking for the I/O thread or a
// blocking serve.
constexpr int kNoWait = MSG_DONTWAIT;

using Clock = std::chrono::steady_clock;

int RemainingMs(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(std::min<long long>(left, INT32_MAX));
}

// Waits for `events` on fd until the deadline; returns 0, or a positive errno (ETIMEDOUT).
int WaitFd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, RemainingMs(deadline));
    if (r > 0) return 0;
    if (r == 0) return ETIMEDOUT;
    if (errno != EINTR) return errno;
  }
}

void CloseAll(std::vector<int>& fds) {
  for (int fd : fds) ::close(fd);
  fds.clear();
}

struct ConnStats {
  Counter messages;
  Counter region_accesses;
  Counter js_messages;
  Counter error_replies;
  Counter posted_errors;
  Counter unexpected_replies;
  Counter recv_calls;
  Counter send_calls;
  Counter bytes_in;
  Counter bytes_out;
  Counter requests;
  Counter dropped_slow;
  Counter early_replies;
  Counter served_while_waiting;
  Counter thread_messages;
  Counter to_thread;
  Counter to_loop;
  Counter blocking_messages;
  Counter blocking_sessions;
};

class VfioUserConnection : public Napi::ObjectWrap<VfioUserConnection> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "VfioUserConnection",
                       {InstanceMethod<&VfioUserConnection::Start>("start"),
                        InstanceMethod<&VfioUserConnection::Close>("close"),
                        InstanceMethod<&VfioUserConnection::CloseGracefully>("closeGracefully"),
                        InstanceMethod<&VfioUserConnection::SetTwin>("setTwin"),
                        InstanceMethod<&VfioUserConnection::SetNegotiated>("setNegotiated"),
                        InstanceMethod<&VfioUserConnection::Request>("request"),
                        InstanceMethod<&VfioUserConnection::Stats>("stats")});
  }

  // new VfioUserConnection(fd, { regionTable, onMessage, onClose, maxMessageSize, maxFds, maxDataXfer,
  //                             messageTimeoutMs?, replyTimeoutMs?, drainMs? })  (0 = no limit)
  explicit VfioUserConnection(const Napi::CallbackInfo& info) : Napi::ObjectWrap<VfioUserConnection>(info), env_(info.Env()) {
    Napi::Env env = info.Env();
    if (!info.IsConstructCall()) ThrowTypeError(env, "VfioUserConnection", "called with new");
    int fd = ArgFd(info, 0, "fd");
    if (info.Length() < 2 || !info[1].IsObject()) ThrowTypeError(env, "options", "an object");
    Napi::Object o = info[1].As<Napi::Object>();
    table_ = RegionTable::FromValue(env, o.Get("regionTable"), "options.regionTable");
    Napi::Object self = info.This().As<Napi::Object>();
    table_ref_ = OwnedValue(self, "mdevkit.VfioUserConnection.regionTable", o.Get("regionTable"));
    if (!o.Get("onMessage").IsFunction()) ThrowTypeError(env, "options.onMessage", "a function");
    if (!o.Get("onClose").IsFunction()) ThrowTypeError(env, "options.onClose", "a function");
    on_message_ = OwnedFunction(self, "mdevkit.VfioUserConnection.onMessage", o.Get("onMessage").As<Napi::Function>());
    on_close_ = OwnedFunction(self, "mdevkit.VfioUserConnection.onClose", o.Get("onClose").As<Napi::Function>());
    uint64_t max_message = ValueU64(env, o.Get("maxMessageSize"), "options.maxMessageSize", false);
    uint64_t max_fds = ValueU64(env, o.Get("maxFds"), "options.maxFds", false);
    uint64_t max_xfer = ValueU64(env, o.Get("maxDataXfer"), "options.maxDataXfer", false);
    if (max_message < 64 || max_message > (64u << 20)) ThrowRangeError(env, "options.maxMessageSize", "must be in [64, 64 MiB]");
    if (max_fds > static_cast<uint64_t>(kMaxFdsPerMessage)) ThrowRangeError(env, "options.maxFds", "must be at most 253");
    if (max_xfer == 0 || max_xfer + 32 > max_message || max_xfer > table_->MaxAccess()) {
      ThrowRangeError(env, "options.maxDataXfer", "must be positive, fit a message, and fit the region table's scratch");
    }
    message_timeout_ms_ = OptionalMs(env, o, "messageTimeoutMs");
    reply_timeout_ms_ = OptionalMs(env, o, "replyTimeoutMs");
    drain_ms_ = OptionalMs(env, o, "drainMs");
    io_thread_ = o.Get("ioThread").ToBoolean();
    blocking_serve_ = o.Get("blockingServe").ToBoolean();
    struct stat st;
    if (::fstat(fd, &st) < 0) ThrowErrno(env, "fstat", errno);
    if (!S_ISSOCK(st.st_mode)) ThrowInvalid(env, "fd", "is not a socket");
    max_message_ = static_cast<uint32_t>(max_message);
    max_fds_ = static_cast<int>(max_fds);
    max_xfer_ = static_cast<uint32_t>(max_xfer);
    // Room for one largest message plus a second arriving behind it.
    input_ = std::make_unique<VfioUserInput>(max_message_);
    fd_ = fd;
    js_ = std::make_unique<JsEntry>(env, "mdevkit.VfioUserConnection");
    info.This().As<Napi::Object>().TypeTag(&kConnTag);
  }

  static uint32_t OptionalMs(Napi::Env env, Napi::Object o, const char* key) {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined()) return 0;
    std::string field = std::string("options.") + key;
    uint64_t ms = ValueU64(env, v, field.c_str(), false);
    if (ms > 24ull * 3600 * 1000) ThrowRangeError(env, field.c_str(), "must be at most a day");
    return static_cast<uint32_t>(ms);
  }

  ~VfioUserConnection() override {
    io_.Stop();
    ReleaseFds();
    // The uv handle is closed in Shutdown(); an object that was never started owns none.
  }

 private:
  // ---- JS methods --------------------------------------------------------------------------

  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) ThrowErrno(env, "start", EBADF);
    if (started_) return env.Undefined();
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) ThrowInvalid(env, "loop", "no libuv loop");
    poll_ = new uv_poll_t;
    int r = uv_poll_init(loop, poll_, fd_);
    if (r < 0) {
      delete poll_;
      poll_ = nullptr;
      ThrowErrno(env, "uv_poll_init", -r);
    }
    poll_->data = this;
    timer_ = new uv_timer_t;
    uv_timer_init(loop, timer_);
    timer_->data = this;
    if (io_thread_) io_.Start(loop, [this] { ServeOnThread(); }, &VfioUserConnection::OnThreadYield, this);
    started_ = true;
    Ref();  // an active connection keeps its JS object alive until it closes
    UpdatePoll();
    return env.Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown("closed by the server", 0);
    return info.Env().Undefined();
  }

  // closeGracefully(reason?): an orderly end of stream. Requests already queued on the socket are
  // read and answered, then no new work is taken: SHUT_WR once every reply is out, the input drained
  // until the peer's EOF (bounded by drainMs), then close. onClose reports the end.
  Napi::Value CloseGracefully(const Napi::CallbackInfo& info) {
    std::string reason = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "closed by the server";
    if (closed_ || draining_) return info.Env().Undefined();
    TakeBack();
    if (!started_) {
      Shutdown(reason.c_str(), 0);
      return info.Env().Undefined();
    }
    {
      JsEntry::Scope scope(*js_);
      // Answer what the peer already sent (unless a handler is on the stack: then it is being served).
      if (nesting_ == 0 && out_.empty()) HandleReadable();
      BeginDrain(reason.c_str());
      AfterWakeup();
    }
    return info.Env().Undefined();
  }

  // setTwin(fd): server→client requests go on this socket from now on (the connection owns it).
  Napi::Value SetTwin(const Napi::CallbackInfo& info) {
    int fd = ArgFd(info, 0, "fd");
    if (closed_) ThrowErrno(info.Env(), "setTwin", EBADF);
    if (twin_fd_ >= 0) ::close(twin_fd_);
    twin_fd_ = fd;
    return info.Env().Undefined();
  }

  // setNegotiated(): VERSION succeeded; REGION_READ/WRITE now take the native path.
  Napi::Value SetNegotiated(const Napi::CallbackInfo& info) {
    negotiated_ = ArgBool(info, 0, "negotiated", true);
    return info.Env().Undefined();
  }

  // request(command, payload, timeoutMs) → reply payload (Buffer); throws an errno error.
  Napi::Value Request(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t command = ArgU32(info, 0, "command");
    ByteView payload = ArgBytes(info, 1, "payload");
    uint32_t timeout_ms = ArgU32(info, 2, "timeoutMs");
    if (command > 0xffff) ThrowRangeError(env, "command", "must fit 16 bits");
    if (closed_) ThrowErrno(env, "request", EPIPE);
    if (payload.length + sizeof(VfioUserHeader) > max_message_) ThrowRangeError(env, "payload", "exceeds the message size limit");
    TakeBack();
    std::vector<uint8_t> reply;
    int err = DoRequest(static_cast<uint16_t>(command), payload.data, payload.length, timeout_ms, &reply);
    if (err != 0) ThrowErrno(env, "vfio-user request", err);
    return Napi::Buffer<uint8_t>::Copy(env, reply.data(), reply.size());
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    auto set = [&](const char* k, uint64_t v) { o.Set(k, Napi::Number::New(env, static_cast<double>(v))); };
    set("messages", stats_.messages.get());
    set("regionAccesses", stats_.region_accesses.get());
    set("jsMessages", stats_.js_messages.get());
    set("errorReplies", stats_.error_replies.get());
    set("postedErrors", stats_.posted_errors.get());
    set("unexpectedReplies", stats_.unexpected_replies.get());
    set("recvCalls", stats_.recv_calls.get());
    set("sendCalls", stats_.send_calls.get());
    set("bytesIn", stats_.bytes_in.get());
    set("bytesOut", stats_.bytes_out.get());
    set("requests", stats_.requests.get());
    set("droppedSlow", stats_.dropped_slow.get());
    set("earlyReplies", stats_.early_replies.get());
    set("servedWhileWaiting", stats_.served_while_waiting.get());
    set("threadMessages", stats_.thread_messages.get());
    set("toThread", stats_.to_thread.get());
    set("toLoop", stats_.to_loop.get());
    set("blockingMessages", stats_.blocking_messages.get());
    set("blockingSessions", stats_.blocking_sessions.get());
    return o;
  }

  // ---- event loop ---------------------------------------------------------------------------

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    auto* self = static_cast<VfioUserConnection*>(handle->data);
    if (self == nullptr || self->closed_) return;
    if (!self->ServeWakeup(status, events)) return;
    // Outside the wakeup's callback scope: its promise jobs and nextTicks have run.
    self->MaybeServeBlocking();
  }

  // One wakeup of the socket on the loop; false if the connection ended.
  bool ServeWakeup(int status, int events) {
    // A handle scope now; a callback scope (promise jobs and nextTicks queued by JS handlers run
    // after this wakeup, as after any Node callback) only if the wakeup calls into JS.
    JsEntry::Scope scope(*js_);
    uint64_t messages_before = stats_.messages.get();
    try {
      if (status < 0) {
        Shutdown("poll error", -status);
        AfterWakeup();
        return false;
      }
      if (draining_) {
        DrainWakeup(events);
      } else {
        if (events & UV_WRITABLE) {
          if (!Flush()) return false;
        }
        if ((events & UV_READABLE) && out_.empty()) HandleReadable();
      }
      AfterWakeup();
      blocking_streak_.LoopWakeup(stats_.messages.get() - messages_before, !closed_ && !draining_ && out_.empty() && pending_.empty());
      return !closed_;
    } catch (const Napi::Error& e) {
      ReportInternalError(e);
      return false;
    }
  }

  // Nothing may unwind through libuv: a failure here is a bug in our JS handlers, reported like
  // any uncaught exception; the connection cannot continue in an unknown state.
  void ReportInternalError(const Napi::Error& e) {
    try {
      Shutdown("internal error", EIO);
      AfterWakeup();
    } catch (const Napi::Error&) {
      // the first error is the one to report
    }
    napi_fatal_exception(env_, e.Value());
  }

  void UpdatePoll() {
    if (closed_ || poll_ == nullptr) return;
    // While replies are queued the client is not reading: stop reading requests (backpressure).
    // Draining, input is read (and dropped) until EOF whatever is queued.
    int events = out_.empty() ? UV_READABLE : UV_WRITABLE;
    if (draining_) events = UV_READABLE | (out_.empty() ? 0 : UV_WRITABLE);
    // Re-arming with unchanged events is not free: libuv drops the fd from epoll and adds it back.
    if (events == poll_events_ || blocking_session_) return;
    poll_events_ = events;
    uv_poll_start(poll_, events, &VfioUserConnection::OnPoll);
  }

  // ---- orderly end of stream and patience limits ---------------------------------------------

  // Stops taking work: no further message is dispatched; SHUT_WR once queued replies are out; the
  // input is drained until EOF or the drain bound.
  void BeginDrain(const char* reason) {
    if (closed_ || draining_) return;
    draining_ = true;
    close_reason_ = reason;
    drain_deadline_ = Clock::now() + std::chrono::milliseconds(drain_ms_ > 0 ? drain_ms_ : kDefaultDrainMs);
    if (out_.empty()) ShutWrite();
    UpdatePoll();
  }

  void ShutWrite() {
    if (wrote_eof_ || fd_ < 0) return;
    wrote_eof_ = true;
    ::shutdown(fd_, SHUT_WR);
  }

  void DrainWakeup(int events) {
    if ((events & UV_WRITABLE) && !out_.empty()) {
      if (!Flush()) return;
    }
    if (out_.empty()) ShutWrite();
    if (!(events & UV_READABLE)) return;
    for (int i = 0; i < kMaxReadsPerWakeup && !closed_; i++) {
      uint8_t buf[16384];
      iovec iov{buf, sizeof buf};
      int fds[kMaxFdsPerMessage];
      int nfds = 0;
      bool truncated = false;
      ssize_t n = RecvWithFds(fd_, &iov, 1, fds, kMaxFdsPerMessage, &nfds, &truncated, true, kNoWait);
      stats_.recv_calls++;
      for (int k = 0; k < nfds; k++) ::close(fds[k]);
      if (n == -EAGAIN) return;
      if (n <= 0) {
        // EOF: the orderly end is complete. (An error here ends it too: nothing more to drain.)
        Shutdown(close_reason_.c_str(), 0);
        return;
      }
      stats_.bytes_in += static_cast<uint64_t>(n);
    }
  }

  // After every wakeup: report a close, and keep the patience timer in step with the connection.
  void AfterWakeup() {
    FinishDispatchClose();
    UpdateTimer();
    MaybeHandToThread();
  }

  // ---- the I/O thread ---------------------------------------------------------------------------
  //
  // With ioThread, a connection whose traffic needs no JS is served by a thread of its own: one
  // blocking recvmsg and one sendmsg per request, none of the event loop's costs. The connection's
  // state belongs to one side at a time: the loop (uv_poll on the socket, everything as above) or
  // the thread (io_, an IoThread). The thread serves REGION_READ/WRITE that the region table serves
  // natively, under the table's lock; at the first message that needs JS (a hooked register,
  // config space, any other command, fds), a partial message that waits too long, or EOF, it stops
  // and hands the connection back to the loop (uv_async), leaving that message in the buffer. The
  // loop hands it to the thread again after kNativeStreakForThread native-only messages in a row.
  // The JS thread takes it back on demand (DMA requests, ends) by waking the thread with a signal.

  void MaybeHandToThread() {
    if (!io_thread_ || closed_ || draining_ || nesting_ > 0 || native_streak_ < kNativeStreakForThread) return;
    if (!out_.empty() || !pending_.empty() || !input_->Idle()) return;
    native_streak_ = 0;
    if (poll_ != nullptr) uv_poll_stop(poll_);
    poll_events_ = 0;
    SetBlocking(true);
    // The thread's patience: a blocking send that times out hands the connection back to the
    // loop, whose limits then apply (so a slow client is dropped within twice the limit). The
    // receive timeout is armed only while part of a message waits (ServeOnThread): a blocking
    // receive with a timeout arms a kernel timer on every wait, one without does not.
    if (!socket_timeouts_set_) {
      SetSocketTimeout(SO_SNDTIMEO, reply_timeout_ms_);
      socket_timeouts_set_ = true;
    }
    stats_.to_thread++;
    io_.HandOver();
  }

  // The JS thread needs the connection now (a request to send, an end): wake the thread and wait
  // until it has let go.
  void TakeBack() {
    if (io_.TakeBack()) ResumeLoop();
  }

  // ms == 0: no timeout.
  void SetSocketTimeout(int option, uint32_t ms) {
    timeval tv{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>((ms % 1000) * 1000)};
    ::setsockopt(fd_, SOL_SOCKET, option, &tv, sizeof tv);
  }

  // The thread's receive timeout: the message limit while part of a message is buffered (a timeout
  // then hands the connection to the loop, which drops the slow client), none otherwise.
  void ArmReceiveTimeout(bool partial) {
    if (partial == receive_timeout_armed_ || message_timeout_ms_ == 0) return;
    SetSocketTimeout(SO_RCVTIMEO, partial ? message_timeout_ms_ : 0);
    receive_timeout_armed_ = partial;
  }

  void SetBlocking(bool blocking) {
    if (fd_ < 0 || blocking_ == blocking) return;
    int flags = ::fcntl(fd_, F_GETFL);
    if (flags < 0) return;
    ::fcntl(fd_, F_SETFL, blocking ? (flags & ~O_NONBLOCK) : (flags | O_NONBLOCK));
    blocking_ = blocking;
  }

  // The loop owns the connection again: non-blocking socket, watched, buffered input served.
  void ResumeLoop() {
    SetBlocking(false);
    stats_.to_loop++;
    UpdatePoll();
  }

  static void OnThreadYield(uv_async_t* handle) {
    auto* self = static_cast<VfioUserConnection*>(handle->data);
    if (self == nullptr || self->closed_) return;
    if (self->io_.Owns()) return;  // taken back and handed over again meanwhile
    JsEntry::Scope scope(*self->js_);
    try {
      if (self->blocking_) self->ResumeLoop();
      // What the thread left: the message that needs JS, and whatever follows it.
      self->ProcessMessages();
      if (!self->closed_) self->HandleReadable();
      self->AfterWakeup();
    } catch (const Napi::Error& e) {
      self->ReportInternalError(e);
    }
  }

  // The thread's loop; returns when the connection must go back to the JS thread.
  void ServeOnThread() {
    for (;;) {
      if (io_.YieldRequested()) return;
      // Serve every complete message that needs no JS.
      for (;;) {
        VfioUserHeader h;
        VfioUserInput::Frame f = input_->PeekAt(input_->start(), &h);
        if (f == VfioUserInput::kBadSize) return;
        if (f == VfioUserInput::kPartial) break;
        if (input_->FdsAtOrBefore(input_->start())) return;
        if ((h.flags & kVfioUserTypeMask) != kVfioUserTypeCommand) return;
        if (h.command != kVfioUserRegionRead && h.command != kVfioUserRegionWrite) return;
        const uint8_t* payload = input_->data() + input_->start() + sizeof h;
        if (ThreadAccess(h, payload, h.msg_size - static_cast<uint32_t>(sizeof h)) == RegionTable::kNeedsJs) return;
        input_->Consume(h.msg_size);
        stats_.messages++;
        stats_.thread_messages++;
      }
      input_->ResetIfDrained();
      // Replies out (blocking; a client that does not read them is the loop's to judge).
      while (!out_.empty()) {
        iovec iov;
        const std::vector<int>* fds = nullptr;
        out_.Next(&iov, &fds);
        ssize_t r = SendWithFds(fd_, &iov, 1, nullptr, 0, false);
        stats_.send_calls++;
        if (r < 0) return;  // EINTR (asked to yield), EAGAIN (send timeout) or a broken socket
        stats_.bytes_out += static_cast<uint64_t>(r);
        out_.Consumed(static_cast<size_t>(r));
      }
      if (io_.YieldRequested()) return;
      ssize_t n = ReceiveBlocking(false, nullptr);
      // An idle client may stay idle: only a timeout with part of a message buffered matters.
      if (n == -EAGAIN && !input_->HasPartial()) continue;
      // EOF or an error: the loop reads it again and ends the connection. EINTR: asked to yield,
      // or a timeout with a partial message the loop's patience now applies to. No room (a
      // message larger than the buffer's free space): the loop copes. EBADMSG: fds that belong to
      // no message were closed; the loop will find the stream broken.
      if (n <= 0) return;
    }
  }

  // One blocking receive into the input buffer (the I/O thread's, a blocking serve's, which
  // brackets the call for its sentinel): the receive timeout is armed only while part of a message
  // waits. fds are recorded exactly as the loop does. Returns recvmsg's result (bytes, 0 at EOF,
  // -errno: -EINTR also when the sentinel wants the thread first), -ENOBUFS when the buffer has no
  // room, -EBADMSG when fds came with bytes in which no message starts.
  ssize_t ReceiveBlocking(bool may_compact, LoopSentinel* sentinel) {
    iovec iov;
    if (!input_->Room(may_compact, &iov)) return -ENOBUFS;
    ArmReceiveTimeout(input_->HasPartial());
    if (sentinel != nullptr && !sentinel->EnterBlockingCall()) return -EINTR;
    int fds[kMaxFdsPerMessage];
    int nfds = 0;
    bool truncated = false;
    ssize_t n = RecvWithFds(fd_, &iov, 1, fds, std::max(max_fds_, 1), &nfds, &truncated, false);
    if (sentinel != nullptr) sentinel->LeaveBlockingCall();
    stats_.recv_calls++;
    if (n <= 0) return n;
    stats_.bytes_in += static_cast<uint64_t>(n);
    return input_->Received(static_cast<size_t>(n), fds, nfds, truncated) == 0 ? n : -EBADMSG;
  }

  // ---- blocking serve ----------------------------------------------------------------------
  //
  // With blockingServe, a connection that keeps the loop busy with messages that need JS (and the
  // I/O thread cannot take) is served by the JS thread itself in a blocking receive loop while the
  // loop has nothing else to do: recvmsg and sendmsg per request, none of epoll's or the loop's
  // turn. Each message batch is still one Node callback (its promise jobs and nextTicks run before
  // the next receive). A LoopSentinel interrupts the receive as soon as the loop has an event or a
  // timer due; so does anything that leaves work for the loop (queued replies the client does not
  // read, a setImmediate, an end, a run of native-only messages the I/O thread should take).

  void MaybeServeBlocking() {
    if (!blocking_serve_ || closed_ || draining_ || !negotiated_ || poll_ == nullptr) return;
    if (!blocking_streak_.Due() || nesting_ > 0 || !out_.empty() || !pending_.empty()) return;
    if (io_.Owns()) return;
    LoopSentinel* sentinel = LoopSentinel::ForThisThread(poll_->loop);
    if (sentinel == nullptr) return;
    int timeout_ms = -1;
    blocking_streak_.SessionEnded(sentinel->LoopIdle({fd_}, &timeout_ms) ? ServeBlocking(*sentinel, timeout_ms) : 0);
  }

  // Returns the messages served. The connection belongs to the loop again when it returns (unless
  // it ended).
  uint64_t ServeBlocking(LoopSentinel& sentinel, int timeout_ms) {
    uint64_t first = stats_.messages.get();
    uv_poll_stop(poll_);  // also takes the fd out of the loop's epoll set: the sentinel watches the rest
    poll_events_ = 0;
    blocking_session_ = true;
    SetBlocking(true);
    stats_.blocking_sessions++;
    sentinel.Arm(timeout_ms);
    try {
      while (BlockingServeOnce(sentinel)) {
        // The batch's callback scope has closed: JS may have left work for the loop.
        if (closed_ || !sentinel.Recheck()) break;
      }
    } catch (const Napi::Error& e) {
      sentinel.Disarm();
      blocking_session_ = false;
      JsEntry::Scope scope(*js_);
      ReportInternalError(e);
      return stats_.messages.get() - first;
    }
    sentinel.Disarm();
    blocking_session_ = false;
    uint64_t served = stats_.messages.get() - first;
    stats_.blocking_messages += served;
    if (closed_) {
      JsEntry::Scope scope(*js_);
      FinishDispatchClose();
      return served;
    }
    SetBlocking(false);
    JsEntry::Scope scope(*js_);
    try {
      UpdatePoll();
      AfterWakeup();
    } catch (const Napi::Error& e) {
      ReportInternalError(e);
    }
    return served;
  }

  // One blocking receive and the messages it completes, as one Node callback. False when the loop
  // must have the connection back.
  bool BlockingServeOnce(LoopSentinel& sentinel) {
    JsEntry::Scope scope(*js_);
    ssize_t n = ReceiveBlocking(true, &sentinel);
    if (n == -EBADMSG) {
      Shutdown("receive failed", EBADMSG);
      return false;
    }
    // EINTR: the loop wants its thread. EOF and errors: the loop reads them again and ends the
    // connection. EAGAIN: the receive timeout (a started message is not completed in time: the
    // loop's patience applies). No room: the loop copes.
    if (n <= 0) return false;
    ProcessMessages();
    if (closed_) return false;
    Flush();
    if (closed_ || draining_ || !out_.empty() || !pending_.empty()) return false;
    // Native-only traffic is the I/O thread's.
    return !(io_thread_ && native_streak_ >= kNativeStreakForThread);
  }

  // A REGION_READ/WRITE on the I/O thread: served if the table needs no JS for it, else kNeedsJs.
  int ThreadAccess(const VfioUserHeader& h, const uint8_t* payload, uint32_t len) {
    VfioUserRegionAccess a;
    if (DecodeRegionAccess(h.command, payload, len, max_xfer_, &a) != 0) return RegionTable::kNeedsJs;  // errors: the loop's
    bool write = h.command == kVfioUserRegionWrite;
    bool no_reply = (h.flags & kVfioUserNoReply) != 0;
    int r;
    if (write) {
      r = table_->AccessNative(a.region, a.offset, const_cast<uint8_t*>(payload) + sizeof a, a.count, true);
    } else {
      read_tmp_.resize(a.count);
      r = table_->AccessNative(a.region, a.offset, read_tmp_.data(), a.count, false);
    }
    if (r == RegionTable::kNeedsJs) return r;
    stats_.region_accesses++;
    if (r != 0) {
      if (no_reply) stats_.posted_errors++;
      else QueueError(h, r);
      return 0;
    }
    if (!no_reply) QueueReply(h, reinterpret_cast<const uint8_t*>(&a), sizeof a, write ? nullptr : read_tmp_.data(), write ? 0 : a.count, {});
    return 0;
  }

  void UpdateTimer() {
    if (closed_ || timer_ == nullptr) return;
    Clock::time_point deadline = Clock::time_point::max();
    if (draining_) {
      deadline = drain_deadline_;
    } else {
      if (message_timeout_ms_ > 0 && input_->HasPartial()) {
        uint64_t pos = input_->ReadPosition();
        if (!partial_ || partial_pos_ != pos) {
          partial_ = true;
          partial_pos_ = pos;
          partial_since_ = Clock::now();
        }
        deadline = std::min(deadline, partial_since_ + std::chrono::milliseconds(message_timeout_ms_));
      } else {
        partial_ = false;
      }
      if (reply_timeout_ms_ > 0 && !out_.empty()) {
        if (!stalled_) {
          stalled_ = true;
          stalled_since_ = Clock::now();
        }
        deadline = std::min(deadline, stalled_since_ + std::chrono::milliseconds(reply_timeout_ms_));
      } else {
        stalled_ = false;
      }
    }
    if (deadline == armed_deadline_) return;
    armed_deadline_ = deadline;
    if (deadline == Clock::time_point::max()) {
      uv_timer_stop(timer_);
      return;
    }
    uint64_t ms = static_cast<uint64_t>(RemainingMs(deadline));
    uv_timer_start(timer_, &VfioUserConnection::OnTimer, ms + 1, 0);
  }

  static void OnTimer(uv_timer_t* handle) {
    auto* self = static_cast<VfioUserConnection*>(handle->data);
    if (self == nullptr || self->closed_) return;
    // The I/O thread's patience is the socket timeouts; the loop judges once it owns it again.
    if (self->io_.Owns()) return;
    JsEntry::Scope scope(*self->js_);
    try {
      self->OnDeadline();
    } catch (const Napi::Error& e) {
      // No C++ exception may unwind into libuv: report it as Node does for any callback.
      napi_fatal_exception(self->env_, e.Value());
    }
  }

  void OnDeadline() {
    VfioUserConnection* self = this;
    self->armed_deadline_ = Clock::time_point::max();
    Clock::time_point now = Clock::now();
    if (self->draining_) {
      if (now >= self->drain_deadline_) {
        // The peer neither read nor closed in time: end it without its EOF.
        self->Shutdown(self->close_reason_.c_str(), 0);
      }
    } else if (self->partial_ && now >= self->partial_since_ + std::chrono::milliseconds(self->message_timeout_ms_)) {
      self->stats_.dropped_slow++;
      self->BeginDrain(("slow client: a started message was not completed within " + std::to_string(self->message_timeout_ms_) + " ms").c_str());
    } else if (self->stalled_ && now >= self->stalled_since_ + std::chrono::milliseconds(self->reply_timeout_ms_)) {
      self->stats_.dropped_slow++;
      self->BeginDrain(("slow client: replies sat unread for " + std::to_string(self->reply_timeout_ms_) + " ms").c_str());
    }
    self->AfterWakeup();
  }

  void HandleReadable() {
    for (int i = 0; i < kMaxReadsPerWakeup && !closed_; i++) {
      int r = ReceiveOnce(fd_);
      ProcessMessages();
      if (r == EAGAIN || !out_.empty() || draining_) break;
      if (r != 0) {
        if (!closed_) Shutdown(r == EPIPE ? "client disconnected" : "receive failed", r == EPIPE ? 0 : r);
        return;
      }
    }
    if (!closed_) Flush();
  }

  // Reads once from `fd` into the input buffer. Returns 0 after data, EAGAIN when nothing was
  // queued or there is no room, EPIPE on EOF, or another errno (the connection is then broken).
  int ReceiveOnce(int fd) {
    iovec iov;
    // While a handler runs, the payload it was given lives in the buffer: it must not move.
    if (!input_->Room(nesting_ == 0, &iov)) return EAGAIN;
    int fds[kMaxFdsPerMessage];
    int nfds = 0;
    bool truncated = false;
    ssize_t n = RecvWithFds(fd, &iov, 1, fds, std::max(max_fds_, 1), &nfds, &truncated, true, kNoWait);
    stats_.recv_calls++;
    if (n == -EAGAIN) return EAGAIN;
    if (n < 0) return static_cast<int>(-n);
    if (n == 0) return EPIPE;
    stats_.bytes_in += static_cast<uint64_t>(n);
    return input_->Received(static_cast<size_t>(n), fds, nfds, truncated);
  }

  // ---- the input stream's sink (VfioUserSink) -------------------------------------------------

  struct Sink final : VfioUserSink {
    explicit Sink(VfioUserConnection* c) : conn(c) {}
    bool Stopped() override { return conn->closed_ || conn->draining_; }
    void OnBadSize(const VfioUserHeader& h) override {
      // The framing cannot be trusted past this point: say why, then disconnect.
      conn->QueueError(h, h.msg_size < sizeof(VfioUserHeader) ? EINVAL : E2BIG);
      conn->BeginDrain("bad msg_size: the stream cannot be framed");
      conn->Flush();
    }
    void OnMessage(const VfioUserHeader& h, const uint8_t* payload, uint32_t len, std::vector<int> fds, bool truncated,
                   bool while_waiting) override {
      conn->stats_.messages++;
      if (while_waiting) conn->stats_.served_while_waiting++;
      if (truncated) {
        CloseAll(fds);
        if (!(h.flags & kVfioUserNoReply)) conn->QueueError(h, EINVAL);
      } else {
        conn->Dispatch(h, payload, len, std::move(fds));
      }
      if (while_waiting) conn->Flush();
    }
    void OnLateReply() override { conn->stats_.unexpected_replies++; }
    VfioUserConnection* conn;
  };

  void ProcessMessages() {
    Sink sink(this);
    input_->Process(sink);
  }

  void Dispatch(const VfioUserHeader& h, const uint8_t* payload, uint32_t len, std::vector<int> fds) {
    uint32_t type = h.flags & kVfioUserTypeMask;
    if (type == kVfioUserTypeReply) {
      // A reply nobody waits for (e.g. to a request that timed out): drop it.
      stats_.unexpected_replies++;
      CloseAll(fds);
      return;
    }
    bool no_reply = (h.flags & kVfioUserNoReply) != 0;
    if (type != kVfioUserTypeCommand) {
      CloseAll(fds);
      if (!no_reply) QueueError(h, EINVAL);
      return;
    }
    if (negotiated_ && (h.command == kVfioUserRegionRead || h.command == kVfioUserRegionWrite)) {
      uint64_t js_before = table_->stats().js_reads.load(std::memory_order_relaxed) + table_->stats().js_writes.load(std::memory_order_relaxed);
      int err = fds.empty() ? RegionAccess(h, payload, len, no_reply) : EINVAL;
      uint64_t js_after = table_->stats().js_reads.load(std::memory_order_relaxed) + table_->stats().js_writes.load(std::memory_order_relaxed);
      native_streak_ = (js_after == js_before && err == 0) ? native_streak_ + 1 : 0;
      CloseAll(fds);
      if (err != 0) {
        if (no_reply) stats_.posted_errors++;
        else QueueError(h, err);
      }
      return;
    }
    DispatchToJs(h, payload, len, std::move(fds), no_reply);
  }

  // Serves REGION_READ / REGION_WRITE through the region table; returns 0 or an errno.
  int RegionAccess(const VfioUserHeader& h, const uint8_t* payload, uint32_t len, bool no_reply) {
    VfioUserRegionAccess a;
    int bad = DecodeRegionAccess(h.command, payload, len, max_xfer_, &a);
    if (bad != 0) return bad;
    stats_.region_accesses++;
    bool write = h.command == kVfioUserRegionWrite;
    if (write) {
      size_t slot = pending_.size();
      if (!no_reply) pending_.push_back(PendingReply{h, a, true, false});
      // The region table never writes into the buffer of a write; the cast only fits its signature.
      nesting_++;
      int r = table_->Access(env_, a.region, a.offset, const_cast<uint8_t*>(payload) + sizeof a, a.count, true);
      nesting_--;
      bool replied = false;
      if (!no_reply) {
        replied = pending_[slot].replied;
        pending_.resize(slot);
      }
      if (replied) {
        // Answered before its handler finished (it needed the VMM): a late failure is only counted.
        if (r != 0) stats_.posted_errors++;
        return 0;
      }
      if (r != 0) return r;
      if (!no_reply) QueueReply(h, reinterpret_cast<const uint8_t*>(&a), sizeof a, nullptr, 0, {});
      return 0;
    }
    // Read into a separate buffer: a JS handler may issue a nested DMA request that flushes
    // queued replies, so nothing may point into the output queue across the access. (An access
    // served while another waits gets a buffer of its own.)
    std::vector<uint8_t> own;
    std::vector<uint8_t>& out = nesting_ == 0 ? read_tmp_ : own;
    out.resize(a.count);
    size_t slot = pending_.size();
    if (!no_reply) pending_.push_back(PendingReply{h, a, false, false});
    nesting_++;
    int r = table_->Access(env_, a.region, a.offset, out.data(), a.count, false);
    nesting_--;
    if (!no_reply) pending_.resize(slot);
    if (r != 0) return r;
    if (!no_reply) QueueReply(h, reinterpret_cast<const uint8_t*>(&a), sizeof a, out.data(), a.count, {});
    return 0;
  }

  void DispatchToJs(const VfioUserHeader& h, const uint8_t* payload, uint32_t len, std::vector<int> fds, bool no_reply) {
    native_streak_ = 0;
    Napi::Env env = env_;
    Napi::HandleScope scope(env);
    JsEntry::EnterCurrent();
    stats_.js_messages++;
    Napi::Array js_fds = Napi::Array::New(env, fds.size());
    for (size_t i = 0; i < fds.size(); i++) js_fds.Set(static_cast<uint32_t>(i), Napi::Number::New(env, fds[i]));
    // From here on the fds belong to the JS handler.
    fds.clear();
    Napi::Value result;
    size_t slot = pending_.size();
    if (!no_reply) pending_.push_back(PendingReply{h, {}, false, false});
    nesting_++;
    try {
      result = on_message_.Call({Napi::Number::New(env, h.command), Napi::Number::New(env, h.msg_id), Napi::Number::New(env, h.flags),
                                 Napi::Buffer<uint8_t>::Copy(env, payload, len), js_fds});
    } catch (const Napi::Error&) {
      nesting_--;
      if (!no_reply) pending_.resize(slot);
      if (!no_reply) QueueError(h, EIO);
      return;
    }
    nesting_--;
    if (!no_reply) pending_.resize(slot);
    if (closed_ || no_reply || !result.IsObject()) return;
    Napi::Object r = result.As<Napi::Object>();
    Napi::Value error = r.Get("error");
    if (error.IsNumber()) {
      int err = error.As<Napi::Number>().Int32Value();
      QueueError(h, err > 0 ? err : EIO);
    } else {
      ByteView body{};
      Napi::Value p = r.Get("payload");
      if (!p.IsUndefined()) body = ValueBytes(env, p, "reply.payload");
      std::vector<int> dups;
      Napi::Value rf = r.Get("fds");
      if (rf.IsArray()) {
        Napi::Array arr = rf.As<Napi::Array>();
        for (uint32_t i = 0; i < arr.Length(); i++) {
          // Send our own duplicate: the reply may wait in the queue while JS closes its copy.
          int d = ::fcntl(arr.Get(i).As<Napi::Number>().Int32Value(), F_DUPFD_CLOEXEC, 0);
          if (d >= 0) dups.push_back(d);
        }
      }
      QueueReply(h, body.data, body.length, nullptr, 0, std::move(dups));
    }
    if (r.Get("close").ToBoolean()) BeginDrain("closed after a fatal protocol error");
  }

  // ---- output -------------------------------------------------------------------------------

  void QueueReply(const VfioUserHeader& req, const uint8_t* a, size_t alen, const uint8_t* b, size_t blen, std::vector<int> fds) {
    mdevkit::QueueReply(out_, req, a, alen, b, blen, std::move(fds));
  }

  void QueueError(const VfioUserHeader& req, int err) {
    stats_.error_replies++;
    mdevkit::QueueError(out_, req, err);
  }

  // Sends queued replies without blocking. Returns false if the connection broke.
  bool Flush() {
    while (!out_.empty() && !closed_) {
      iovec iov;
      const std::vector<int>* fds = nullptr;
      out_.Next(&iov, &fds);
      ssize_t r = SendWithFds(fd_, &iov, 1, fds ? fds->data() : nullptr, fds ? static_cast<int>(fds->size()) : 0, true, kNoWait);
      stats_.send_calls++;
      if (r == -EAGAIN) break;
      if (r < 0) {
        Shutdown(r == -EPIPE || r == -ECONNRESET ? "client disconnected" : "send failed", r == -EPIPE || r == -ECONNRESET ? 0 : static_cast<int>(-r));
        return false;
      }
      stats_.bytes_out += static_cast<uint64_t>(r);
      out_.Consumed(static_cast<size_t>(r));
    }
    if (draining_ && out_.empty()) ShutWrite();
    UpdatePoll();
    return !closed_;
  }

  // ---- server → client requests (DMA_READ / DMA_WRITE) ---------------------------------------

  int SendAll(int fd, const uint8_t* data, size_t len, Clock::time_point deadline) {
    size_t done = 0;
    while (done < len) {
      iovec iov{const_cast<uint8_t*>(data) + done, len - done};
      ssize_t r = SendWithFds(fd, &iov, 1, nullptr, 0, true, kNoWait);
      stats_.send_calls++;
      if (r == -EAGAIN) {
        int w = WaitFd(fd, POLLOUT, deadline);
        if (w != 0) return w;
        continue;
      }
      if (r < 0) return static_cast<int>(-r);
      done += static_cast<size_t>(r);
      stats_.bytes_out += static_cast<uint64_t>(r);
    }
    return 0;
  }

  int DoRequest(uint16_t command, const uint8_t* payload, size_t len, uint32_t timeout_ms, std::vector<uint8_t>* reply) {
    auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    uint16_t id = next_request_id_++;
    stats_.requests++;
    VfioUserHeader h{id, command, static_cast<uint32_t>(sizeof(VfioUserHeader) + len), kVfioUserTypeCommand, 0};
    std::vector<uint8_t> msg(h.msg_size);
    std::memcpy(msg.data(), &h, sizeof h);
    if (len) std::memcpy(msg.data() + sizeof h, payload, len);
    int target = twin_fd_ >= 0 ? twin_fd_ : fd_;
    if (target == fd_) {
      // The client may be a VMM that serves our requests only when none of its own is waiting for
      // a reply (QEMU: its vCPU holds the lock its DMA service needs). So nothing it waits for may
      // depend on this request: a write being served is answered now (its bytes are stored; its
      // handler's side effects follow, as a posted write's would); a read or control request
      // cannot be answered without its handler's result, so the request fails instead of hanging.
      uint64_t early = 0;
      if (AnswerPendingWrites(pending_, out_, &early) != 0) return EDEADLK;
      stats_.early_replies += early;
      // Keep the byte stream in order: queued replies go before the request.
      while (!out_.empty()) {
        if (!Flush()) return EPIPE;
        if (!out_.empty()) {
          int w = WaitFd(fd_, POLLOUT, deadline);
          if (w != 0) return w;
        }
      }
    }
    int err = SendAll(target, msg.data(), msg.size(), deadline);
    if (err != 0) return err;
    return target == fd_ ? AwaitReplyInline(h, deadline, reply) : AwaitReplyTwin(h, deadline, reply);
  }

  // Non-twin mode: the reply arrives on the main socket among client commands. Those are served
  // while we wait (they are spliced out of the input stream and dispatched here): a VMM whose
  // vCPU waits for one of them cannot serve our request until it has its answer. Write hooks of
  // the device run after the waiting handler returns (the model's handler scopes).
  int AwaitReplyInline(const VfioUserHeader& req, Clock::time_point deadline, std::vector<uint8_t>* reply) {
    nesting_++;
    int result = ETIMEDOUT;
    for (;;) {
      if (draining_ || closed_) {
        result = EPIPE;
        break;
      }
      Sink sink(this);
      VfioUserInput::Scan scan = input_->ScanForReply(req, sink, reply, &result);
      if (scan == VfioUserInput::kUnframeable) {
        result = EBADMSG;
        break;
      }
      if (scan == VfioUserInput::kFound) break;
      if (closed_ || draining_) continue;
      short events = POLLIN | (out_.empty() ? 0 : POLLOUT);
      pollfd p{fd_, events, 0};
      int r = ::poll(&p, 1, RemainingMs(deadline));
      if (r == 0) {
        result = ETIMEDOUT;
        break;
      }
      if (r < 0) {
        if (errno == EINTR) continue;
        result = errno;
        break;
      }
      if ((p.revents & POLLOUT) && !Flush()) {
        result = EPIPE;
        break;
      }
      if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
      int rr = ReceiveOnce(fd_);
      if (rr == EAGAIN && input_->Full()) {
        result = ENOBUFS;  // the client pipelined more than we can hold while it owes us a reply
        break;
      }
      if (rr != 0 && rr != EAGAIN) {
        result = rr;
        break;
      }
    }
    nesting_--;
    return result;
  }

  int AwaitReplyTwin(const VfioUserHeader& req, Clock::time_point deadline, std::vector<uint8_t>* reply) {
    for (;;) {
      while (twin_in_.size() >= sizeof(VfioUserHeader)) {
        uint32_t size;
        std::memcpy(&size, twin_in_.data() + 4, 4);
        if (size < sizeof(VfioUserHeader) || size > max_message_) return EBADMSG;
        if (twin_in_.size() < size) break;
        int err = 0;
        bool match = MatchReply(req, twin_in_.data(), reply, &err);
        if (!match) stats_.unexpected_replies++;
        twin_in_.erase(twin_in_.begin(), twin_in_.begin() + size);
        if (match) return err;
      }
      int w = WaitFd(twin_fd_, POLLIN, deadline);
      if (w != 0) return w;
      uint8_t buf[65536];
      iovec iov{buf, sizeof buf};
      int fds[4];
      int nfds = 0;
      bool truncated = false;
      ssize_t n = RecvWithFds(twin_fd_, &iov, 1, fds, 4, &nfds, &truncated, true, kNoWait);
      stats_.recv_calls++;
      for (int i = 0; i < nfds; i++) ::close(fds[i]);  // no reply on the twin socket carries fds
      if (n == -EAGAIN) continue;
      if (n < 0) return static_cast<int>(-n);
      if (n == 0) return EPIPE;
      stats_.bytes_in += static_cast<uint64_t>(n);
      twin_in_.insert(twin_in_.end(), buf, buf + n);
      if (twin_in_.size() > static_cast<size_t>(max_message_) * 2) return ENOBUFS;
    }
  }

  // ---- teardown -----------------------------------------------------------------------------

  void ReleaseFds() {
    if (input_) input_->CloseFds();
    out_.Clear();
    if (twin_fd_ >= 0) ::close(twin_fd_);
    twin_fd_ = -1;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  void Shutdown(const char* reason, int err) {
    if (closed_) return;
    io_.Close();
    closed_ = true;
    close_reason_ = reason;
    close_errno_ = err;
    if (poll_ != nullptr) {
      uv_poll_stop(poll_);
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      poll_ = nullptr;
    }
    if (timer_ != nullptr) {
      uv_close(reinterpret_cast<uv_handle_t*>(timer_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
      timer_ = nullptr;
    }
    ReleaseFds();
    // Nothing more will be read: give the buffers back now rather than when the wrapper is collected.
    if (nesting_ == 0) {
      if (input_) input_->Release();
    }
    std::vector<uint8_t>().swap(read_tmp_);
    std::vector<uint8_t>().swap(twin_in_);
    if (nesting_ == 0) NotifyClosed();
  }

  // Runs after a wakeup's dispatch: a close asked for by a reply, or a shutdown that happened
  // while JS was on the stack, is reported now.
  void FinishDispatchClose() {
    if (closed_ && !close_notified_ && nesting_ == 0) NotifyClosed();
  }

  void NotifyClosed() {
    if (close_notified_) return;
    close_notified_ = true;
    Napi::HandleScope scope(env_);
    JsEntry::EnterCurrent();
    try {
      on_close_.Call({Napi::String::New(env_, close_reason_), Napi::Number::New(env_, close_errno_)});
    } catch (const Napi::Error& e) {
      // The close handler's own failure must not take the process down with it.
      e.ThrowAsJavaScriptException();
    }
    if (started_) Unref();
  }

  Napi::Env env_;
  int fd_ = -1;
  int twin_fd_ = -1;
  uv_poll_t* poll_ = nullptr;
  uv_timer_t* timer_ = nullptr;
  bool io_thread_ = false;
  IoThread io_;
  bool blocking_serve_ = false;
  bool blocking_session_ = false;
  BlockingServeStreak blocking_streak_;
  bool blocking_ = false;
  bool socket_timeouts_set_ = false;
  bool receive_timeout_armed_ = false;
  uint32_t native_streak_ = 0;
  int poll_events_ = 0;
  uint32_t message_timeout_ms_ = 0;
  uint32_t reply_timeout_ms_ = 0;
  uint32_t drain_ms_ = 0;
  bool draining_ = false;
  bool wrote_eof_ = false;
  Clock::time_point drain_deadline_{};
  Clock::time_point armed_deadline_ = Clock::time_point::max();
  bool partial_ = false;
  uint64_t partial_pos_ = 0;
  Clock::time_point partial_since_{};
  bool stalled_ = false;
  Clock::time_point stalled_since_{};
  RegionTable* table_ = nullptr;
  Napi::Reference<Napi::Value> table_ref_;
  Napi::FunctionReference on_message_;
  Napi::FunctionReference on_close_;
  std::unique_ptr<JsEntry> js_;
  uint32_t max_message_ = 0;
  int max_fds_ = 0;
  uint32_t max_xfer_ = 0;
  std::unique_ptr<VfioUserInput> input_;
  OutQueue out_;
  std::vector<uint8_t> read_tmp_;
  std::vector<PendingReply> pending_;
  std::vector<uint8_t> twin_in_;
  bool started_ = false;
  bool closed_ = false;
  bool close_notified_ = false;
  bool negotiated_ = false;
  int nesting_ = 0;
  uint16_t next_request_id_ = 1;
  std::string close_reason_;
  int close_errno_ = 0;
  ConnStats stats_;
};

}  // namespace

void InitVfioUserConn(Napi::Env env, Napi::Object exports) { exports.Set("VfioUserConnection", VfioUserConnection::Define(env)); }

}  // namespace mdevkit
