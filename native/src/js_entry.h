// Entering JS from a libuv callback, only when needed.
//
// A native event source (a vfio-user connection, the ioreq engine) serves most wakeups without
// running any JS: registers without hooks, shared RAM. Node's callback scope — what makes
// promise jobs and nextTicks queued by JS run after the callback — is not free (async-hooks
// bookkeeping, a tick and microtask check on close), and node-addon-api's CallbackScope also
// allocates a resource object per use. So a wakeup opens a JsEntry::Scope (a handle scope only)
// and the callback scope is opened the first time the wakeup actually calls into JS: by the
// source itself (Enter) or by code deeper down that does not know its caller (EnterCurrent,
// e.g. the region table before a JS register hook).
#pragma once

#include <napi.h>

namespace mdevkit {

class JsEntry {
 public:
  JsEntry(Napi::Env env, const char* name) : env_(env) {
    Napi::HandleScope hs(env);
    napi_value resource;
    napi_value resource_name;
    NAPI_THROW_IF_FAILED_VOID(env, napi_create_object(env, &resource));
    NAPI_THROW_IF_FAILED_VOID(env, napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource_name));
    NAPI_THROW_IF_FAILED_VOID(env, napi_create_reference(env, resource, 1, &resource_));
    NAPI_THROW_IF_FAILED_VOID(env, napi_async_init(env, resource, resource_name, &context_));
  }
  ~JsEntry() {
    if (context_ != nullptr) napi_async_destroy(env_, context_);
    if (resource_ != nullptr) napi_delete_reference(env_, resource_);
  }
  JsEntry(const JsEntry&) = delete;
  JsEntry& operator=(const JsEntry&) = delete;

  // One wakeup of the source. Opens a handle scope; the callback scope on Enter().
  class Scope {
   public:
    explicit Scope(JsEntry& entry) : entry_(entry), handles_(entry.env_), previous_(current_) { current_ = this; }
    ~Scope() {
      if (callback_scope_ != nullptr) napi_close_callback_scope(entry_.env_, callback_scope_);
      current_ = previous_;
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

    // About to call JS: from now on this wakeup behaves as a Node callback.
    void Enter() {
      if (callback_scope_ != nullptr) return;
      napi_value resource;
      if (napi_get_reference_value(entry_.env_, entry_.resource_, &resource) != napi_ok) return;
      napi_open_callback_scope(entry_.env_, resource, entry_.context_, &callback_scope_);
    }

   private:
    friend class JsEntry;
    JsEntry& entry_;
    Napi::HandleScope handles_;
    Scope* previous_;
    napi_callback_scope callback_scope_ = nullptr;
  };

  // Enter() on the innermost open Scope, if any (code running inside a JS call has none to open).
  static void EnterCurrent() {
    if (current_ != nullptr) current_->Enter();
  }

 private:
  Napi::Env env_;
  napi_ref resource_ = nullptr;
  napi_async_context context_ = nullptr;
  static inline thread_local Scope* current_ = nullptr;
};

}  // namespace mdevkit
