// The region dispatch table shared by both adapters' hot paths. Each region (VFIO numbering:
// BAR0-5, ROM 6, config 7) is a list of segments; an access that lies inside one segment that the
// native core can serve (plain register storage without hooks, shared RAM, unimplemented space)
// never enters JS (that part is core/region_map.h). Anything else — hooked registers, config
// space, accesses spanning segments — is handed to one JS callback synchronously, with the data in
// a scratch buffer.
#pragma once

#include <napi.h>

#include <cstdint>
#include <mutex>
#include <vector>

#include "core/region_map.h"

namespace mdevkit {

class RegionTable : public Napi::ObjectWrap<RegionTable> {
 public:
  static Napi::Function Define(Napi::Env env);
  // The RegionTable behind a JS value, or a named TypeError.
  static RegionTable* FromValue(Napi::Env env, Napi::Value value, const char* field);

  explicit RegionTable(const Napi::CallbackInfo& info);

  // Performs a guest access; returns 0 or a positive errno. `buf` holds the data to write or
  // receives the data read. May call into JS (on the JS thread only); `via_js`, when given, is set
  // to true if it did (the access is then counted in the js_* stats).
  int Access(Napi::Env env, uint32_t region, uint64_t offset, uint8_t* buf, uint32_t count, bool write,
             bool* via_js = nullptr);

  // The native part of Access: serves the access if no JS is needed and returns 0 or a positive
  // errno; returns kNeedsJs (and changes nothing) when it must go to JS. Safe to call from another
  // thread while the JS thread is not changing the table or running this device's code: accesses
  // are serialized by the table's lock (see Lock).
  int AccessNative(uint32_t region, uint64_t offset, uint8_t* buf, uint32_t count, bool write);
  static constexpr int kNeedsJs = RegionMap::kNeedsJs;

  // The device's access lock: held by native accesses; JS code that changes register state while
  // an I/O thread may be serving (timers, its own events) takes it through lock()/unlock().
  std::recursive_mutex& Lock() { return lock_; }

  // Largest access the JS path can carry (the scratch buffer's size).
  uint32_t MaxAccess() const { return static_cast<uint32_t>(scratch_len_); }
  const RegionStats& stats() const { return map_.stats(); }

 private:
  Napi::Value SetRegion(const Napi::CallbackInfo& info);
  Napi::Value ClearRegion(const Napi::CallbackInfo& info);
  Napi::Value JsRead(const Napi::CallbackInfo& info);
  Napi::Value JsWrite(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value LockJs(const Napi::CallbackInfo& info);
  Napi::Value UnlockJs(const Napi::CallbackInfo& info);
  int CallJs(Napi::Env env, uint32_t region, uint64_t offset, uint8_t* buf, uint32_t count, bool write, bool* via_js);

  RegionMap map_;
  std::vector<std::vector<Napi::Reference<Napi::Value>>> keep_alive_;  // per region: the JS buffers behind `storage`
  Napi::FunctionReference js_access_;
  Napi::Reference<Napi::Value> scratch_ref_;
  uint8_t* scratch_ = nullptr;
  size_t scratch_len_ = 0;
  int js_depth_ = 0;             // JS accesses on the stack (more than 1 only while a handler waits)
  uint32_t scratch_in_use_ = 0;  // bytes of scratch the innermost running JS access uses
  std::recursive_mutex lock_;
};

}  // namespace mdevkit
