// The Xen IOREQ server hot path: waits for event-channel notifications on the libuv loop, takes
// each READY ioreq from the shared page, serves it through the region table (natively, or by a
// synchronous JS call), and completes it.
//
// Shared-page discipline (XSA-262): a slot is acted on only when its state reads READY; its fields
// are read once, after an acquire load of the state; it moves READY → INPROCESS → IORESP_READY,
// the response data is stored before the IORESP_READY store (release), and the vCPU is notified
// after that. The page is untrusted: a bad ioreq completes with all-ones on reads and is counted,
// never crashes the server or stalls other vCPUs.
#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <uv.h>

#include <cstdint>
// Linux's uapi <xen/evtchn.h> uses Xen's domid_t without defining it.
typedef uint16_t domid_t;
#include <xen/evtchn.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "core/ioreq.h"
#include "errors.h"
#include "fd_util.h"
#include "io_thread.h"
#include "js_entry.h"
#include "loop_sentinel.h"
#include "modules.h"
#include "owned_ref.h"
#include "region_table.h"

namespace mdevkit {

namespace {

constexpr napi_type_tag kEngineTag = {0x41c5e09d7b2f6a13ULL, 0x2d8e71f4c0b95a67ULL};
constexpr uint32_t kMaxVcpus = 4096;

// Written by the loop or the I/O thread (one at a time), read by JS at any time.
struct EngineStats {
  Counter ioreqs;
  Counter native;
  Counter js;
  Counter buffered;
  Counter bad;
  Counter spurious;
  Counter unclaimed;
  Counter notifications;
  Counter thread_ioreqs;
  Counter to_thread;
  Counter to_loop;
  Counter blocking_ioreqs;
  Counter blocking_sessions;
};

// After this many synchronous ioreqs in a row served without JS, the I/O thread takes over.
constexpr uint32_t kNativeStreakForThread = 64;
// What EachPendingPort reports for the buffered ring's port (vCPU numbers are below kMaxVcpus).
constexpr uint32_t kBufferedRing = UINT32_MAX;

class IoreqEngine;

// One watched fd: a vCPU's guest→server eventfd (eventfd mode), the buffered one, or the evtchn fd.
struct Source {
  IoreqEngine* engine;
  int fd;
  int vcpu;  // -1: buffered ring; -2: evtchn device (ports identify the vCPU)
  uv_poll_t* poll = nullptr;
};

class IoreqEngine : public Napi::ObjectWrap<IoreqEngine> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "IoreqEngine",
                       {InstanceMethod<&IoreqEngine::Start>("start"), InstanceMethod<&IoreqEngine::Stop>("stop"),
                        InstanceMethod<&IoreqEngine::SetRanges>("setRanges"), InstanceMethod<&IoreqEngine::SetPciDevice>("setPciDevice"),
                        InstanceMethod<&IoreqEngine::Poll>("poll"), InstanceMethod<&IoreqEngine::SetBusyPoll>("setBusyPoll"),
                        InstanceMethod<&IoreqEngine::Stats>("stats")});
  }

  // new IoreqEngine({ sync, nrVcpus, buffered?, atomicBuffered, events, regionTable, onIoreq, onBadIoreq, ioThread? })
  explicit IoreqEngine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<IoreqEngine>(info), env_(info.Env()) {
    Napi::Env env = info.Env();
    if (!info.IsConstructCall()) ThrowTypeError(env, "IoreqEngine", "called with new");
    if (info.Length() < 1 || !info[0].IsObject()) ThrowTypeError(env, "options", "an object");
    Napi::Object o = info[0].As<Napi::Object>();
    ByteView sync = ValueBytes(env, o.Get("sync"), "options.sync");
    nr_vcpus_ = static_cast<uint32_t>(ValueU64(env, o.Get("nrVcpus"), "options.nrVcpus", false));
    if (nr_vcpus_ == 0 || nr_vcpus_ > kMaxVcpus) ThrowRangeError(env, "options.nrVcpus", "must be in [1, 4096]");
    if (sync.length < static_cast<size_t>(nr_vcpus_) * sizeof(XenIoreq)) ThrowRangeError(env, "options.sync", "is smaller than one ioreq per vCPU");
    sync_ = reinterpret_cast<XenIoreq*>(sync.data);
    Napi::Object self = info.This().As<Napi::Object>();
    refs_.push_back(OwnedValue(self, "mdevkit.IoreqEngine.sync", o.Get("sync")));
    Napi::Value buffered = o.Get("buffered");
    if (!buffered.IsNull() && !buffered.IsUndefined()) {
      ByteView b = ValueBytes(env, buffered, "options.buffered");
      if (b.length < kBufPagePointers + kBufIoreqSlots * 8) ThrowRangeError(env, "options.buffered", "is smaller than a buffered ioreq page");
      buf_ = b.data;
      refs_.push_back(OwnedValue(self, "mdevkit.IoreqEngine.buffered", buffered));
    }
    atomic_buffered_ = o.Get("atomicBuffered").ToBoolean();
    table_ = RegionTable::FromValue(env, o.Get("regionTable"), "options.regionTable");
    refs_.push_back(OwnedValue(self, "mdevkit.IoreqEngine.regionTable", o.Get("regionTable")));
    if (!o.Get("onIoreq").IsFunction()) ThrowTypeError(env, "options.onIoreq", "a function");
    if (!o.Get("onBadIoreq").IsFunction()) ThrowTypeError(env, "options.onBadIoreq", "a function");
    on_ioreq_ = OwnedFunction(self, "mdevkit.IoreqEngine.onIoreq", o.Get("onIoreq").As<Napi::Function>());
    on_bad_ = OwnedFunction(self, "mdevkit.IoreqEngine.onBadIoreq", o.Get("onBadIoreq").As<Napi::Function>());
    ParseEvents(env, o.Get("events"));
    io_thread_ = o.Get("ioThread").ToBoolean();
    blocking_serve_ = o.Get("blockingServe").ToBoolean();
    js_ = std::make_unique<JsEntry>(env, "mdevkit.IoreqEngine");
    info.This().As<Napi::Object>().TypeTag(&kEngineTag);
  }

  ~IoreqEngine() override {
    // Sources are closed in Stop(); fds belong to the host binding, not to us.
    io_.Stop();
  }

 private:
  void ParseEvents(Napi::Env env, Napi::Value v) {
    if (!v.IsObject()) ThrowTypeError(env, "options.events", "an object");
    Napi::Object e = v.As<Napi::Object>();
    std::string mode = e.Get("mode").IsString() ? e.Get("mode").As<Napi::String>().Utf8Value() : "";
    auto fd_list = [&](const char* key) {
      std::vector<int> fds;
      Napi::Value a = e.Get(key);
      if (!a.IsArray()) ThrowTypeError(env, std::string("options.events.") + key, "an array of fds");
      Napi::Array arr = a.As<Napi::Array>();
      for (uint32_t i = 0; i < arr.Length(); i++) {
        uint64_t fd = ValueU64(env, arr.Get(i), key, false);
        if (fd > INT32_MAX) ThrowRangeError(env, key, "fd out of range");
        fds.push_back(static_cast<int>(fd));
      }
      if (fds.size() != nr_vcpus_) ThrowRangeError(env, std::string("options.events.") + key, "needs one entry per vCPU");
      return fds;
    };
    if (mode == "eventfd") {
      evtchn_ = false;
      guest_to_server_ = fd_list("guestToServer");
      server_to_guest_ = fd_list("serverToGuest");
      Napi::Value b = e.Get("bufGuestToServer");
      buf_fd_ = b.IsNumber() ? b.As<Napi::Number>().Int32Value() : -1;
    } else if (mode == "evtchn") {
      evtchn_ = true;
      evtchn_fd_ = static_cast<int>(ValueU64(env, e.Get("fd"), "options.events.fd", false));
      std::vector<int> ports = fd_list("vcpuPorts");
      for (size_t i = 0; i < ports.size(); i++) vcpu_ports_.push_back(static_cast<uint32_t>(ports[i]));
      Napi::Value b = e.Get("bufPort");
      buf_port_ = b.IsNumber() ? static_cast<int64_t>(b.As<Napi::Number>().Int64Value()) : -1;
    } else {
      ThrowInvalid(env, "options.events.mode", "must be \"eventfd\" or \"evtchn\"");
    }
  }

  // setRanges([{ kind: 'pio' | 'mmio', start, end, region, offset }])
  Napi::Value SetRanges(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsArray()) ThrowTypeError(env, "ranges", "an array");
    Napi::Array arr = info[0].As<Napi::Array>();
    std::vector<IoreqRange> ranges;
    for (uint32_t i = 0; i < arr.Length(); i++) {
      std::string f = "ranges[" + std::to_string(i) + "]";
      if (!arr.Get(i).IsObject()) ThrowTypeError(env, f, "an object");
      Napi::Object r = arr.Get(i).As<Napi::Object>();
      IoreqRange a;
      std::string kind = r.Get("kind").IsString() ? r.Get("kind").As<Napi::String>().Utf8Value() : "";
      if (kind != "pio" && kind != "mmio") ThrowInvalid(env, f + ".kind", "must be \"pio\" or \"mmio\"");
      a.pio = kind == "pio";
      a.start = ValueU64(env, r.Get("start"), (f + ".start").c_str());
      a.end = ValueU64(env, r.Get("end"), (f + ".end").c_str());
      a.region = static_cast<uint32_t>(ValueU64(env, r.Get("region"), (f + ".region").c_str(), false));
      a.offset = ValueU64(env, r.Get("offset"), (f + ".offset").c_str());
      if (a.end < a.start) ThrowInvalid(env, f + ".end", "is below start");
      ranges.push_back(a);
    }
    TakeBack();  // the I/O thread routes with router_
    router_.SetRanges(std::move(ranges));
    return env.Undefined();
  }

  // setPciDevice(sbdf | -1, configSize)
  Napi::Value SetPciDevice(const Napi::CallbackInfo& info) {
    Napi::Value v = info.Length() > 0 ? info[0] : info.Env().Undefined();
    TakeBack();
    router_.SetPciDevice(v.IsNumber() ? v.As<Napi::Number>().Int64Value() : -1,
                         info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Uint32Value() : 256);
    return info.Env().Undefined();
  }

  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (started_) return env.Undefined();
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) ThrowInvalid(env, "loop", "no libuv loop");
    if (evtchn_) {
      AddSource(env, loop, evtchn_fd_, -2);
    } else {
      for (uint32_t i = 0; i < nr_vcpus_; i++) AddSource(env, loop, guest_to_server_[i], static_cast<int>(i));
      if (buf_fd_ >= 0) AddSource(env, loop, buf_fd_, -1);
    }
    if (io_thread_) io_.Start(loop, [this] { ServeOnThread(); }, &IoreqEngine::OnThreadYield, this);
    loop_polling_ = true;
    started_ = true;
    Ref();
    // Requests may already be waiting (queued before we started): take them now.
    DrainAll();
    return env.Undefined();
  }

  void AddSource(Napi::Env env, uv_loop_t* loop, int fd, int vcpu) {
    auto s = std::make_unique<Source>();
    s->engine = this;
    s->fd = fd;
    s->vcpu = vcpu;
    s->poll = new uv_poll_t;
    int r = uv_poll_init(loop, s->poll, fd);
    if (r < 0) {
      delete s->poll;
      ThrowErrno(env, "uv_poll_init", -r);
    }
    s->poll->data = s.get();
    uv_poll_start(s->poll, UV_READABLE, &IoreqEngine::OnPoll);
    sources_.push_back(std::move(s));
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    StopSources();
    return info.Env().Undefined();
  }

  void StopSources() {
    TakeBack();
    io_.Close();
    sources_epoch_++;  // a blocking serve in progress (this is JS it called) must let go of them
    StopIdle();
    for (auto& s : sources_) {
      if (s->poll != nullptr) {
        uv_poll_stop(s->poll);
        uv_close(reinterpret_cast<uv_handle_t*>(s->poll), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
        s->poll = nullptr;
      }
    }
    sources_.clear();
    if (started_) {
      started_ = false;
      Unref();
    }
  }

  // setBusyPoll(on): poll-mode serving. The slots are checked on every turn of the event loop (an
  // idle handle keeps the loop from sleeping), so a vCPU spinning on its slot is served without an
  // event-channel wakeup. It burns this thread's CPU while on; it never touches the device from
  // another thread, so register storage keeps a single writer.
  Napi::Value SetBusyPoll(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    bool on = ArgBool(info, 0, "on", true);
    TakeBack();  // busy polling is the loop's: the thread does not take over while it is on
    if (on && idle_ == nullptr) {
      if (!started_) ThrowInvalid(env, "on", "start the engine first", EBUSY);
      uv_loop_t* loop = nullptr;
      if (napi_get_uv_event_loop(env, &loop) != napi_ok) ThrowInvalid(env, "loop", "no libuv loop");
      idle_ = new uv_idle_t;
      uv_idle_init(loop, idle_);
      idle_->data = this;
      uv_idle_start(idle_, &IoreqEngine::OnIdle);
    } else if (!on) {
      StopIdle();
    }
    return env.Undefined();
  }

  static void OnIdle(uv_idle_t* handle) {
    auto* self = static_cast<IoreqEngine*>(handle->data);
    JsEntry::Scope scope(*self->js_);
    try {
      self->DrainAll();
    } catch (const Napi::Error& e) {
      napi_fatal_exception(self->env_, e.Value());
    }
  }

  void StopIdle() {
    if (idle_ == nullptr) return;
    uv_idle_stop(idle_);
    uv_close(reinterpret_cast<uv_handle_t*>(idle_), [](uv_handle_t* h) { delete reinterpret_cast<uv_idle_t*>(h); });
    idle_ = nullptr;
  }

  // poll(): processes whatever is pending now (tests, and a final drain before teardown).
  Napi::Value Poll(const Napi::CallbackInfo& info) {
    TakeBack();
    DrainAll();
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    auto set = [&](const char* k, const Counter& v) { o.Set(k, Napi::Number::New(env, static_cast<double>(v.get()))); };
    set("ioreqs", stats_.ioreqs);
    set("native", stats_.native);
    set("js", stats_.js);
    set("buffered", stats_.buffered);
    set("bad", stats_.bad);
    set("spurious", stats_.spurious);
    set("unclaimed", stats_.unclaimed);
    set("notifications", stats_.notifications);
    set("threadIoreqs", stats_.thread_ioreqs);
    set("toThread", stats_.to_thread);
    set("toLoop", stats_.to_loop);
    set("blockingIoreqs", stats_.blocking_ioreqs);
    set("blockingSessions", stats_.blocking_sessions);
    return o;
  }

  // ---- event handling ------------------------------------------------------------------------

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    auto* s = static_cast<Source*>(handle->data);
    IoreqEngine* self = s->engine;
    {
      JsEntry::Scope scope(*self->js_);
      try {
        if (status < 0) {
          self->Bad("event source error", errno);
          return;
        }
        uint64_t before = self->Served();
        self->ServeSource(*s);
        self->blocking_streak_.LoopWakeup(self->Served() - before, true);
        self->MaybeHandToThread();
      } catch (const Napi::Error& e) {
        napi_fatal_exception(self->env_, e.Value());
        return;
      }
    }
    // Outside the wakeup's callback scope: its promise jobs and nextTicks have run.
    self->MaybeServeBlocking();
  }

  uint64_t Served() const { return stats_.ioreqs.get() + stats_.buffered.get(); }

  // A notification on one source, on the loop or in a blocking serve.
  void ServeSource(const Source& s) {
    if (s.vcpu == -2) {
      HandleEvtchn();
      return;
    }
    uint64_t counter;
    // Reset the eventfd first (one read takes the whole count; EAGAIN when it was already zero): a
    // signal that arrives while we work makes it readable again.
    ssize_t r = sys::Read(s.fd, &counter, sizeof counter);
    (void)r;
    if (s.vcpu == -1) DrainBuffered();
    else ServeSlot(static_cast<uint32_t>(s.vcpu));
  }

  std::vector<pollfd> SourcePollFds() const {
    std::vector<pollfd> fds;
    for (auto& s : sources_) fds.push_back(pollfd{s->fd, POLLIN, 0});
    return fds;
  }

  void HandleEvtchn() {
    EachPendingPort([this](uint32_t vcpu) {
      if (vcpu == kBufferedRing) DrainBuffered();
      else ServeSlot(vcpu);
      return true;
    });
  }

  // The evtchn device: reads the pending ports and hands each one's vCPU (kBufferedRing for the
  // buffered ring's port) to `serve` until it returns false, then unmasks them all by writing them
  // back (the device's protocol). False if `serve` stopped.
  template <class Serve>
  bool EachPendingPort(Serve serve) {
    uint32_t ports[64];
    ssize_t n = sys::Read(evtchn_fd_, ports, sizeof ports);
    if (n <= 0) return true;
    size_t count = static_cast<size_t>(n) / sizeof(uint32_t);
    bool go_on = true;
    for (size_t i = 0; i < count && go_on; i++) {
      if (buf_port_ >= 0 && ports[i] == static_cast<uint32_t>(buf_port_)) {
        go_on = serve(kBufferedRing);
        continue;
      }
      auto it = std::find(vcpu_ports_.begin(), vcpu_ports_.end(), ports[i]);
      if (it != vcpu_ports_.end()) go_on = serve(static_cast<uint32_t>(it - vcpu_ports_.begin()));
    }
    ssize_t w = sys::Write(evtchn_fd_, ports, count * sizeof(uint32_t));
    (void)w;
    return go_on;
  }

  void DrainAll() {
    for (uint32_t i = 0; i < nr_vcpus_; i++) {
      uint8_t state = __atomic_load_n(&sync_[i].bits, __ATOMIC_ACQUIRE) & kIoreqStateMask;
      if (state == kStateIoreqReady) ServeSlot(i);
    }
    DrainBuffered();
  }

  void Notify(uint32_t vcpu) {
    stats_.notifications++;
    if (evtchn_) {
      struct ioctl_evtchn_notify n;
      n.port = vcpu_ports_[vcpu];
      ::ioctl(evtchn_fd_, IOCTL_EVTCHN_NOTIFY, &n);
    } else {
      uint64_t one = 1;
      ssize_t w = sys::Write(server_to_guest_[vcpu], &one, sizeof one);
      (void)w;
    }
  }

  // ---- ioreq processing ----------------------------------------------------------------------

  void ServeSlot(uint32_t vcpu) {
    // Buffered writes were issued before this synchronous request: serve them first (the order
    // the guest sees, and what QEMU does before every synchronous ioreq).
    DrainBuffered();
    XenIoreq* slot = &sync_[vcpu];
    XenIoreq req;
    if (!TakeIoreq(slot, &req)) {
      stats_.spurious++;  // a notification with nothing READY: never act on a slot twice
      return;
    }
    ServeTaken(vcpu, req);
  }

  // A synchronous ioreq already taken (INPROCESS), the buffered writes ahead of it served.
  void ServeTaken(uint32_t vcpu, const XenIoreq& req) {
    stats_.ioreqs++;
    bool native = false;
    CompleteIoreq(&sync_[vcpu], req, Execute(vcpu, req, &native));
    Notify(vcpu);
    native_streak_ = native ? native_streak_ + 1 : 0;
  }

  // Serves one access; returns the data for reads (all-ones when the access fails). *native: it was
  // served by the region table without JS.
  uint64_t Execute(uint32_t vcpu, const XenIoreq& req, bool* native = nullptr) {
    bool read = (req.bits & kIoreqDirRead) != 0;
    IoreqRoute route = router_.Route(req);
    switch (route.kind) {
      case IoreqRoute::kBadSize:
        return Bad("bad ioreq size", EINVAL, read, 8);
      case IoreqRoute::kRegion:
        return Access(route.region, route.offset, req.data, req.size, read, native);
      case IoreqRoute::kSlow:
        break;
    }
    return CallJs(vcpu, req);
  }

  uint64_t Access(uint32_t region, uint64_t offset, uint64_t data, uint32_t size, bool read, bool* native) {
    bool via_js = false;
    uint64_t value = 0;
    int err = TableAccess(region, offset, data, size, read, false, &via_js, &value);
    if (via_js) stats_.js++;
    else stats_.native++;
    if (native != nullptr) *native = !via_js && err == 0;
    if (err != 0) return Bad("region access failed", err, read, size);
    return value;
  }

  // One access of `size` bytes through the region table: natively only (the I/O thread: then
  // RegionTable::kNeedsJs, changing nothing, where JS would be needed) or calling JS where needed.
  // Returns 0 or an errno; *value is what a read returns, or the data written.
  int TableAccess(uint32_t region, uint64_t offset, uint64_t data, uint32_t size, bool read, bool native_only, bool* via_js,
                  uint64_t* value) {
    uint8_t buf[8];
    std::memcpy(buf, &data, sizeof buf);  // little-endian host (x86_64, arm64)
    int err = native_only ? table_->AccessNative(region, offset, buf, size, !read) : table_->Access(env_, region, offset, buf, size, !read, via_js);
    *value = data;
    if (err == 0 && read) {
      *value = 0;
      std::memcpy(value, buf, size);
    }
    return err;
  }

  // The slow path: rep/data_is_ptr copies, unmapped addresses, config latches, INVALIDATE, ...
  uint64_t CallJs(uint32_t vcpu, const XenIoreq& req) {
    bool read = (req.bits & kIoreqDirRead) != 0;
    stats_.js++;
    try {
      Napi::Env env = env_;
      Napi::Object o = Napi::Object::New(env);
      o.Set("vcpu", Napi::Number::New(env, vcpu));
      o.Set("type", Napi::Number::New(env, req.type));
      o.Set("addr", Napi::BigInt::New(env, req.addr));
      o.Set("data", Napi::BigInt::New(env, req.data));
      o.Set("count", Napi::Number::New(env, req.count));
      o.Set("size", Napi::Number::New(env, req.size));
      o.Set("read", Napi::Boolean::New(env, read));
      o.Set("dataIsPtr", Napi::Boolean::New(env, (req.bits & kIoreqDataIsPtr) != 0));
      o.Set("df", Napi::Boolean::New(env, (req.bits & kIoreqDf) != 0));
      JsEntry::EnterCurrent();
      Napi::Value r = on_ioreq_.Call({o});
      if (r.IsBigInt()) {
        bool lossless = false;
        uint64_t v = r.As<Napi::BigInt>().Uint64Value(&lossless);
        return read ? v & IoreqAllOnes(req.size) : req.data;
      }
      if (r.IsNumber()) {
        double d = r.As<Napi::Number>().DoubleValue();
        if (d < 0) return Bad("ioreq refused", static_cast<int>(-d), read, req.size);
        return read ? static_cast<uint64_t>(d) & IoreqAllOnes(req.size) : req.data;
      }
      return read ? IoreqAllOnes(req.size) : req.data;
    } catch (const Napi::Error&) {
      return Bad("ioreq handler threw", EIO, read, req.size);
    }
  }

  uint64_t Bad(const char* what, int err, bool read = true, uint32_t size = 8) {
    stats_.bad++;
    try {
      JsEntry::EnterCurrent();
      on_bad_.Call({Napi::String::New(env_, what), Napi::Number::New(env_, err)});
    } catch (const Napi::Error&) {
      // Logging must not take the server down.
    }
    return read ? IoreqAllOnes(size) : 0;
  }

  // The buffered ring's entries, served as single writes.
  struct BufferedSink final : BufferedIoreqSink {
    explicit BufferedSink(IoreqEngine* e) : engine(e) {}
    void OnWrite(const XenIoreq& req) override {
      engine->stats_.buffered++;
      engine->Execute(UINT32_MAX, req);
    }
    void OnReadEntry() override {
      engine->stats_.buffered++;
      engine->Bad("buffered ioreq is a read", EINVAL, false);
    }
    void OnBadPointers() override { engine->Bad("buffered ring pointers out of range", EINVAL, false); }
    IoreqEngine* engine;
  };

  // ---- the I/O thread ---------------------------------------------------------------------------
  //
  // With ioThread, an engine whose ioreqs need no JS is served by a thread of its own: it blocks
  // in poll() on the event sources, takes each READY slot, serves it through the region table's
  // native segments (under the table's lock) and notifies the vCPU — the eventfd floor's three
  // system calls, none of the event loop's (whose wakeups cost an extra epoll each: Node's
  // idle-time metrics start every blocking poll with a zero-timeout one). The engine belongs to one
  // side at a time. The thread hands it back to the loop (uv_async) at the first ioreq it cannot
  // serve natively — one that needs JS, a bad one, or one behind buffered writes, which must be
  // served first and are the loop's — passing that already-taken ioreq along, and at a
  // notification of the buffered ring. The loop hands the engine over again after
  // kNativeStreakForThread synchronous ioreqs in a row served natively. JS takes it back on demand
  // (ranges, busy polling, stop) by waking the thread with a signal.

  // Whether the loop watches the event sources (uv_poll); stopped, they are also out of the loop's
  // epoll set — the I/O thread or a blocking serve polls them.
  void WatchSources(bool on) {
    for (auto& s : sources_) {
      if (on) uv_poll_start(s->poll, UV_READABLE, &IoreqEngine::OnPoll);
      else uv_poll_stop(s->poll);
    }
    loop_polling_ = on;
  }

  void MaybeHandToThread() {
    if (!io_thread_ || !started_ || idle_ != nullptr || native_streak_ < kNativeStreakForThread || !loop_polling_) return;
    native_streak_ = 0;
    WatchSources(false);
    stats_.to_thread++;
    io_.HandOver();
  }

  // The JS thread needs the engine now: wake the thread, wait until it has let go, serve what it
  // left. Called from JS methods (a JS call is on the stack) and before the engine stops.
  void TakeBack() {
    if (!io_.Running() || blocking_session_) return;  // in a blocking serve the JS thread has it
    io_.TakeBack();
    ResumeLoop();  // also after the thread let go by itself, before its uv_async arrived
  }

  // The loop owns the engine again: sources watched; the ioreq the thread took but could not
  // serve is served (after the buffered writes ahead of it), then every slot left READY (the
  // thread may have consumed their notifications).
  void ResumeLoop() {
    if (loop_polling_ || !started_) return;
    stats_.to_loop++;
    WatchSources(true);
    if (handoff_) {
      handoff_ = false;
      DrainBuffered();
      ServeTaken(handoff_vcpu_, handoff_req_);
    }
    DrainAll();
  }

  static void OnThreadYield(uv_async_t* handle) {
    auto* self = static_cast<IoreqEngine*>(handle->data);
    if (self == nullptr || !self->started_) return;
    if (self->io_.Owns()) return;  // taken back and handed over again meanwhile
    JsEntry::Scope scope(*self->js_);
    try {
      self->ResumeLoop();
      self->MaybeHandToThread();
    } catch (const Napi::Error& e) {
      napi_fatal_exception(self->env_, e.Value());
    }
  }

  // The thread's loop; returns when the engine must go back to the JS thread.
  void ServeOnThread() {
    std::vector<pollfd> fds = SourcePollFds();
    for (;;) {
      if (io_.YieldRequested()) return;
      int n = sys::Poll(fds.data(), fds.size(), -1);
      if (n < 0) {
        if (errno == EINTR) continue;  // asked to yield (checked above), or another signal
        return;
      }
      for (size_t i = 0; i < fds.size(); i++) {
        if (fds[i].revents == 0) continue;
        if (fds[i].revents & (POLLERR | POLLNVAL)) return;  // the loop reports it
        const Source& src = *sources_[i];
        if (src.vcpu == -1) return;  // buffered writes: the loop drains the ring
        if (src.vcpu == -2) {
          if (!ThreadEvtchn()) return;
          continue;
        }
        uint64_t counter;
        ssize_t r = sys::Read(src.fd, &counter, sizeof counter);
        (void)r;
        if (!ThreadServeSlot(static_cast<uint32_t>(src.vcpu))) return;
      }
    }
  }

  // The evtchn device on the thread: pending ports read, served, unmasked. False: back to the loop
  // (whose DrainAll then serves every slot still READY and the buffered ring).
  bool ThreadEvtchn() {
    return EachPendingPort([this](uint32_t vcpu) { return vcpu != kBufferedRing && ThreadServeSlot(vcpu); });
  }

  // One synchronous ioreq on the thread. False: the loop must take over (the ioreq, if taken, is
  // left in handoff_).
  bool ThreadServeSlot(uint32_t vcpu) {
    XenIoreq* slot = &sync_[vcpu];
    XenIoreq req;
    if (!TakeIoreq(slot, &req)) {
      stats_.spurious++;
      return true;
    }
    // Buffered writes published before this ioreq (visible since its READY was acquired) go first.
    bool behind_buffered = buf_ != nullptr && BufferedRingPending(buf_);
    IoreqRoute route = router_.Route(req);
    uint64_t data = 0;
    if (!behind_buffered && route.kind == IoreqRoute::kRegion &&
        TableAccess(route.region, route.offset, req.data, req.size, (req.bits & kIoreqDirRead) != 0, true, nullptr, &data) == 0) {
      stats_.ioreqs++;
      stats_.native++;
      stats_.thread_ioreqs++;
      CompleteIoreq(slot, req, data);
      Notify(vcpu);
      return true;
    }
    // JS, an error to report, or buffered writes ahead: the loop serves it (an access that failed
    // natively changed nothing and fails the same way there).
    handoff_ = true;
    handoff_vcpu_ = vcpu;
    handoff_req_ = req;
    return false;
  }

  // ---- blocking serve -------------------------------------------------------------------------
  //
  // With blockingServe, an engine whose ioreqs keep needing JS (and so stay on the loop) is served
  // by the JS thread itself while the loop has nothing else to do: it blocks in poll() on the event
  // sources — the floor's three system calls per ioreq instead of the loop's four — and serves
  // each notification as the loop would, each one a Node callback. The loop's sentinel interrupts
  // the poll when any other handle has an event or a timer is due (as for vfio-user connections,
  // loop_sentinel.h); JS that leaves work for the loop, busy polling, a stop, or a run of native
  // ioreqs the I/O thread should take end the session too.

  void MaybeServeBlocking() {
    if (!blocking_serve_ || !started_ || !loop_polling_ || idle_ != nullptr || sources_.empty()) return;
    if (!blocking_streak_.Due()) return;
    LoopSentinel* sentinel = LoopSentinel::ForThisThread(sources_.front()->poll->loop);
    if (sentinel == nullptr) return;
    std::vector<int> own;
    for (auto& s : sources_) own.push_back(s->fd);
    int timeout_ms = -1;
    blocking_streak_.SessionEnded(sentinel->LoopIdle(own, &timeout_ms) ? ServeBlocking(*sentinel, timeout_ms) : 0);
  }

  // Returns the ioreqs served. The loop watches the sources again when it returns (unless the
  // engine stopped meanwhile).
  uint64_t ServeBlocking(LoopSentinel& sentinel, int timeout_ms) {
    uint64_t first = Served();
    uint64_t epoch = sources_epoch_;
    std::vector<pollfd> fds = SourcePollFds();
    WatchSources(false);  // the sentinel watches the rest of the loop
    blocking_session_ = true;
    stats_.blocking_sessions++;
    sentinel.Arm(timeout_ms);
    try {
      while (BlockingServeOnce(sentinel, fds, epoch)) {
        // The callback scope has closed: JS may have left work for the loop.
        if (!sentinel.Recheck()) break;
      }
    } catch (const Napi::Error& e) {
      sentinel.Disarm();
      blocking_session_ = false;
      napi_fatal_exception(env_, e.Value());
      return Served() - first;
    }
    sentinel.Disarm();
    blocking_session_ = false;
    uint64_t served = Served() - first;
    stats_.blocking_ioreqs += served;
    if (!started_ || epoch != sources_epoch_) return served;
    WatchSources(true);
    JsEntry::Scope scope(*js_);
    try {
      DrainAll();  // what arrived between the last poll and the loop's watch
      MaybeHandToThread();
    } catch (const Napi::Error& e) {
      napi_fatal_exception(env_, e.Value());
    }
    return served;
  }

  // One blocking poll and the notifications it found, as one Node callback. False when the loop
  // must have the engine back.
  bool BlockingServeOnce(LoopSentinel& sentinel, std::vector<pollfd>& fds, uint64_t epoch) {
    JsEntry::Scope scope(*js_);
    if (!sentinel.EnterBlockingCall()) return false;
    int n = sys::Poll(fds.data(), fds.size(), -1);
    sentinel.LeaveBlockingCall();
    if (n < 0) return false;  // EINTR: the loop wants its thread
    for (size_t i = 0; i < fds.size(); i++) {
      if (fds[i].revents == 0) continue;
      if (fds[i].revents & (POLLERR | POLLNVAL)) return false;  // the loop reports it
      ServeSource(*sources_[i]);
      // JS run by that ioreq may have stopped the engine or turned busy polling on.
      if (!started_ || epoch != sources_epoch_ || idle_ != nullptr) return false;
    }
    // Native-only traffic is the I/O thread's.
    return !(io_thread_ && native_streak_ >= kNativeStreakForThread);
  }

  void DrainBuffered() {
    if (buf_ == nullptr) return;
    BufferedSink sink(this);
    DrainBufferedRing(buf_, atomic_buffered_, sink);
  }

  Napi::Env env_;
  XenIoreq* sync_ = nullptr;
  uint32_t nr_vcpus_ = 0;
  uint8_t* buf_ = nullptr;
  bool atomic_buffered_ = false;
  RegionTable* table_ = nullptr;
  std::vector<Napi::Reference<Napi::Value>> refs_;
  Napi::FunctionReference on_ioreq_;
  Napi::FunctionReference on_bad_;
  std::unique_ptr<JsEntry> js_;
  bool evtchn_ = false;
  int evtchn_fd_ = -1;
  std::vector<uint32_t> vcpu_ports_;
  int64_t buf_port_ = -1;
  std::vector<int> guest_to_server_;
  std::vector<int> server_to_guest_;
  int buf_fd_ = -1;
  IoreqRouter router_;
  std::vector<std::unique_ptr<Source>> sources_;
  uv_idle_t* idle_ = nullptr;
  bool started_ = false;
  EngineStats stats_;
  // The I/O thread (ioThread) and the hand-over between it and the loop.
  bool io_thread_ = false;
  IoThread io_;
  bool loop_polling_ = false;  // the loop watches the sources (JS thread only)
  // Blocking serve (blockingServe) on the JS thread.
  bool blocking_serve_ = false;
  bool blocking_session_ = false;
  BlockingServeStreak blocking_streak_;
  uint64_t sources_epoch_ = 0;  // changes when the sources are closed
  uint32_t native_streak_ = 0;
  // An ioreq the thread took but could not serve: the loop serves it first when it resumes.
  bool handoff_ = false;
  uint32_t handoff_vcpu_ = 0;
  XenIoreq handoff_req_{};
};

}  // namespace

void InitIoreqEngine(Napi::Env env, Napi::Object exports) { exports.Set("IoreqEngine", IoreqEngine::Define(env)); }

}  // namespace mdevkit
