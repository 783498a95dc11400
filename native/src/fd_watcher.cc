// Readiness notifications for an fd on Node's own libuv loop (uv_poll), for the adapters' event
// sources (vfio-user sockets, eventfds, the Xen event channel device) without Node streams.
//
// Ownership and lifetime:
// - The uv_poll_t lives in a separately allocated PollHandle, freed only by uv_close's callback,
//   so libuv never sees freed memory however the JS object dies.
// - While a watcher is started, the JS object is pinned (strong reference), like any active Node
//   handle, so callbacks keep arriving even if JS drops it. When stopped or closed it is
//   unpinned and may be collected; the finalizer closes the uv handle. Unpinning is deferred
//   while the watcher's own callback runs, so the C++ object outlives every callback.
// - The JS callback is stored as a hidden (symbol-keyed, read-only) property of the JS object
//   and referenced weakly from C++: a callback closing over its watcher is then an ordinary JS
//   cycle the GC can reclaim, not a root.
// - An async cleanup hook closes the handle when the environment (e.g. a worker) is torn down,
//   because Node refuses to close a loop that still has open handles.
// - The fd is never closed here: the caller owns it.
#include <sys/stat.h>
#include <uv.h>

#include <cerrno>
#include <unordered_set>

#include "errors.h"
#include "modules.h"

namespace mdevkit {
namespace {

class FdWatcher;

struct PollHandle {
  uv_poll_t poll;
  FdWatcher* owner = nullptr;  // null once the owner closed it or was destroyed
  napi_env env = nullptr;
  napi_async_cleanup_hook_handle cleanup = nullptr;
};

// libuv allows only one poll handle per fd per loop (a second one silently replaces the first
// in the loop's watcher table). Every env has its own loop on its own thread.
thread_local std::unordered_set<int> t_watchedFds;

void OnHandleClosed(uv_handle_t* handle) {
  PollHandle* h = static_cast<PollHandle*>(handle->data);
  if (h->cleanup != nullptr) napi_remove_async_cleanup_hook(h->cleanup);
  delete h;
}

class FdWatcher : public Napi::ObjectWrap<FdWatcher> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FdWatcher",
                       {
                           InstanceMethod<&FdWatcher::Start>("start"),
                           InstanceMethod<&FdWatcher::Stop>("stop"),
                           InstanceMethod<&FdWatcher::Close>("close"),
                           InstanceMethod<&FdWatcher::RefHandle>("ref"),
                           InstanceMethod<&FdWatcher::UnrefHandle>("unref"),
                           InstanceMethod<&FdWatcher::HasRef>("hasRef"),
                           InstanceMethod<&FdWatcher::IsActive>("isActive"),
                       });
  }

  // new FdWatcher(fd, callback(readable, writable, error?), readable = true, writable = false);
  // the events become the defaults for start(readable?, writable?).
  explicit FdWatcher(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<FdWatcher>(info), context_(info.Env(), "mdevkit.FdWatcher") {
    Napi::Env env = info.Env();
    fd_ = ArgFd(info, 0, "fd");
    if (info.Length() < 2 || !info[1].IsFunction()) ThrowTypeError(env, "callback", "a function");
    events_ = EventMask(info, 2, 3, UV_READABLE);
    if (t_watchedFds.count(fd_) != 0) ThrowInvalid(env, "fd", "already has an open FdWatcher", EEXIST);

    Napi::Function callback = info[1].As<Napi::Function>();
    Value().DefineProperty(Napi::PropertyDescriptor::Value(Napi::Symbol::New(env, "mdevkit.FdWatcher.callback"),
                                                           callback, napi_default));
    callback_ = Napi::Weak(callback);

    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      throw Napi::Error::New(env, "FdWatcher: no libuv loop for this environment");
    }
    PollHandle* h = new PollHandle;
    // uv_poll_init rejects fds epoll cannot watch (regular files: EPERM; closed fds: EBADF) and
    // puts the fd in non-blocking mode.
    int rc = uv_poll_init(loop, &h->poll, fd_);
    if (rc < 0) {
      delete h;  // uv_poll_init validates before registering the handle with the loop
      ThrowErrno(env, "uv_poll_init", -rc);
    }
    h->poll.data = h;
    h->env = env;
    if (napi_add_async_cleanup_hook(env, OnEnvTeardown, h, &h->cleanup) != napi_ok) {
      h->cleanup = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(&h->poll), OnHandleClosed);
      throw Napi::Error::New(env, "FdWatcher: cannot register an environment cleanup hook");
    }
    h->owner = this;
    handle_ = h;
    t_watchedFds.insert(fd_);
  }

  ~FdWatcher() override {
    // Collected (only possible while stopped) or torn down with the env: release the handle.
    if (handle_ != nullptr) Release();
  }

 private:
  // Reads (readable?, writable?) booleans; an omitted one keeps its value from `current`.
  static int EventMask(const Napi::CallbackInfo& info, size_t readableArg, size_t writableArg, int current) {
    bool readable = ArgBool(info, readableArg, "readable", (current & UV_READABLE) != 0);
    bool writable = ArgBool(info, writableArg, "writable", (current & UV_WRITABLE) != 0);
    if (!readable && !writable) ThrowInvalid(info.Env(), "events", "must request readable, writable or both");
    return (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0);
  }

  // Detaches from the PollHandle and closes it; the fd stays open.
  void Release() {
    t_watchedFds.erase(fd_);
    handle_->owner = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&handle_->poll), OnHandleClosed);
    handle_ = nullptr;
    active_ = false;
  }

  // Keeps "pinned" equal to "active", except while our callback runs (see the file comment).
  void SyncPin() {
    if (inCallback_) return;
    if (active_ && !pinned_) {
      Ref();
      pinned_ = true;
    } else if (!active_ && pinned_) {
      Unref();
      pinned_ = false;
    }
  }

  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (handle_ == nullptr) ThrowInvalid(env, "watcher", "is closed", EBADF);
    int events = EventMask(info, 0, 1, events_);
    // libuv aborts the process if epoll_ctl rejects the fd, so check it is still an open,
    // pollable file before handing it over (a caller may have closed it since construction).
    struct stat st;
    if (::fstat(fd_, &st) < 0) ThrowErrno(env, "fstat", errno);
    if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) ThrowInvalid(env, "fd", "is not pollable", EPERM);
    int rc = uv_poll_start(&handle_->poll, events, OnPoll);
    if (rc < 0) ThrowErrno(env, "uv_poll_start", -rc);
    events_ = events;
    active_ = true;
    SyncPin();
    return env.Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (handle_ != nullptr && active_) {
      uv_poll_stop(&handle_->poll);
      active_ = false;
      SyncPin();
    }
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (handle_ != nullptr) {
      Release();
      SyncPin();
    }
    return info.Env().Undefined();
  }

  Napi::Value RefHandle(const Napi::CallbackInfo& info) {
    refed_ = true;
    if (handle_ != nullptr) uv_ref(reinterpret_cast<uv_handle_t*>(&handle_->poll));
    return info.Env().Undefined();
  }

  Napi::Value UnrefHandle(const Napi::CallbackInfo& info) {
    refed_ = false;
    if (handle_ != nullptr) uv_unref(reinterpret_cast<uv_handle_t*>(&handle_->poll));
    return info.Env().Undefined();
  }

  Napi::Value HasRef(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), refed_); }

  Napi::Value IsActive(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), active_); }

  // The hot path: one handle scope and one JS call per wakeup; the event object is built by the
  // JS trampoline. Uses raw N-API because no C++ exception may unwind into libuv.
  static void OnPoll(uv_poll_t* poll, int status, int events) {
    PollHandle* h = static_cast<PollHandle*>(poll->data);
    FdWatcher* self = h->owner;
    if (self == nullptr || !self->active_) return;
    // On error libuv has already stopped the handle.
    if (status < 0) self->active_ = false;
    napi_env env = h->env;

    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) != napi_ok) return;
    napi_value fn = nullptr;
    napi_value argv[3];
    size_t argc = 2;
    bool ready = napi_get_reference_value(env, self->callback_, &fn) == napi_ok && fn != nullptr &&
                 napi_get_boolean(env, status >= 0 && (events & UV_READABLE) != 0, &argv[0]) == napi_ok &&
                 napi_get_boolean(env, status >= 0 && (events & UV_WRITABLE) != 0, &argv[1]) == napi_ok;
    if (ready && status < 0) {
      try {
        argv[argc++] = MakeErrnoError(Napi::Env(env), "uv_poll", -status).Value();
      } catch (const Napi::Error&) {
        ready = false;  // cannot build the error object (env shutting down): drop the event
      }
    }
    self->inCallback_ = true;
    if (ready) {
      // node::MakeCallback needs an object receiver; the trampoline ignores it.
      napi_value recv;
      napi_get_global(env, &recv);
      napi_status called = napi_make_callback(env, self->context_, recv, fn, argc, argv, nullptr);
      // The callback threw: report it as Node does for any event callback, via 'uncaughtException'
      // (or a crash with the stack when nothing handles it), instead of losing it.
      if (called == napi_pending_exception) {
        napi_value exception;
        if (napi_get_and_clear_last_exception(env, &exception) == napi_ok) napi_fatal_exception(env, exception);
      }
    }
    // Still alive: it stayed pinned through the callback and any 'uncaughtException' handler.
    self->inCallback_ = false;
    try {
      self->SyncPin();
    } catch (const Napi::Error&) {
      // Only fails while the env is being torn down, when pinning no longer matters.
    }
    napi_close_handle_scope(env, scope);
  }

  static void OnEnvTeardown(napi_async_cleanup_hook_handle /*hook*/, void* arg) {
    PollHandle* h = static_cast<PollHandle*>(arg);
    if (h->owner != nullptr) {
      // Do not touch JS here: only drop the C++ side's claim on the handle.
      FdWatcher* self = h->owner;
      t_watchedFds.erase(self->fd_);
      self->handle_ = nullptr;
      self->active_ = false;
      h->owner = nullptr;
    }
    // OnHandleClosed removes the hook, which tells Node the teardown step has finished.
    if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&h->poll))) {
      uv_close(reinterpret_cast<uv_handle_t*>(&h->poll), OnHandleClosed);
    }
  }

  Napi::AsyncContext context_;
  Napi::FunctionReference callback_;
  PollHandle* handle_ = nullptr;
  int fd_ = -1;
  int events_ = 0;
  bool active_ = false;
  bool pinned_ = false;
  bool refed_ = true;
  bool inCallback_ = false;
};

}  // namespace

void InitFdWatcher(Napi::Env env, Napi::Object exports) { exports.Set("FdWatcher", FdWatcher::Define(env)); }

}  // namespace mdevkit
