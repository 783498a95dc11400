#include "region_table.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "errors.h"
#include "js_entry.h"
#include "modules.h"
#include "owned_ref.h"

namespace mdevkit {

namespace {

constexpr napi_type_tag kRegionTableTag = {0x5c1e7a9b33d04f21ULL, 0x9e02b6d47a1c8f35ULL};
constexpr uint32_t kMaxRegions = RegionMap::kMaxRegions;

// ObjectWrap's trampolines unwrap `this` without checking its class; the tag makes a method
// called on a foreign object a TypeError instead of a type confusion.
RegionTable* Self(const Napi::CallbackInfo& info) {
  return RegionTable::FromValue(info.Env(), info.This(), "this");
}

uint64_t PropU64(Napi::Env env, Napi::Object o, const char* key, const std::string& field) {
  return ValueU64(env, o.Get(key), field.c_str(), true);
}

}  // namespace

Napi::Function RegionTable::Define(Napi::Env env) {
  return DefineClass(env, "RegionTable",
                     {InstanceMethod<&RegionTable::SetRegion>("setRegion"),
                      InstanceMethod<&RegionTable::ClearRegion>("clearRegion"),
                      InstanceMethod<&RegionTable::JsRead>("read"),
                      InstanceMethod<&RegionTable::JsWrite>("write"),
                      InstanceMethod<&RegionTable::Stats>("stats"),
                      InstanceMethod<&RegionTable::LockJs>("lock"),
                      InstanceMethod<&RegionTable::UnlockJs>("unlock")});
}

RegionTable* RegionTable::FromValue(Napi::Env env, Napi::Value value, const char* field) {
  if (!value.IsObject() || !value.As<Napi::Object>().CheckTypeTag(&kRegionTableTag)) {
    ThrowTypeError(env, field, "a RegionTable");
  }
  return Napi::ObjectWrap<RegionTable>::Unwrap(value.As<Napi::Object>());
}

// new RegionTable(jsAccess: (region, offset, count, isWrite) => errno, scratch: Uint8Array)
RegionTable::RegionTable(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RegionTable>(info) {
  Napi::Env env = info.Env();
  if (!info.IsConstructCall()) ThrowTypeError(env, "RegionTable", "called with new");
  if (info.Length() < 1 || !info[0].IsFunction()) ThrowTypeError(env, "jsAccess", "a function");
  if (info.Length() < 2 || !info[1].IsTypedArray()) ThrowTypeError(env, "scratch", "a Uint8Array");
  ByteView scratch = ValueBytes(env, info[1], "scratch");
  if (scratch.length == 0) ThrowRangeError(env, "scratch", "must not be empty");
  Napi::Object self = info.This().As<Napi::Object>();
  js_access_ = OwnedFunction(self, "mdevkit.RegionTable.jsAccess", info[0].As<Napi::Function>());
  scratch_ref_ = OwnedValue(self, "mdevkit.RegionTable.scratch", info[1]);
  scratch_ = scratch.data;
  scratch_len_ = std::min<size_t>(scratch.length, UINT32_MAX);
  keep_alive_.resize(kMaxRegions);
  info.This().As<Napi::Object>().TypeTag(&kRegionTableTag);
}

// setRegion(index, { size, readable, writable, segments: [{ offset, size, kind, storage?, planeSize?, base? }] })
Napi::Value RegionTable::SetRegion(const Napi::CallbackInfo& info) {
  RegionTable* self = Self(info);
  Napi::Env env = info.Env();
  uint32_t index = ArgU32(info, 0, "index");
  if (index >= kMaxRegions) ThrowRangeError(env, "index", "must be below 64");
  if (info.Length() < 2 || !info[1].IsObject()) ThrowTypeError(env, "region", "an object");
  Napi::Object spec = info[1].As<Napi::Object>();
  RegionEntry entry;
  std::vector<Napi::Reference<Napi::Value>> keep_alive;
  entry.size = PropU64(env, spec, "size", "region.size");
  entry.readable = spec.Get("readable").ToBoolean();
  entry.writable = spec.Get("writable").ToBoolean();
  Napi::Value segs_value = spec.Get("segments");
  if (!segs_value.IsArray()) ThrowTypeError(env, "region.segments", "an array");
  Napi::Array segs = segs_value.As<Napi::Array>();
  uint64_t end = 0;
  for (uint32_t i = 0; i < segs.Length(); i++) {
    std::string field = "region.segments[" + std::to_string(i) + "]";
    Napi::Value sv = segs.Get(i);
    if (!sv.IsObject()) ThrowTypeError(env, field, "an object");
    Napi::Object so = sv.As<Napi::Object>();
    RegionSegment seg;
    seg.offset = PropU64(env, so, "offset", field + ".offset");
    seg.size = PropU64(env, so, "size", field + ".size");
    if (const char* bad = CheckSegmentPlacement(entry.size, end, seg)) ThrowRangeError(env, field, bad);
    end = seg.offset + seg.size;
    std::string kind = so.Get("kind").IsString() ? so.Get("kind").As<Napi::String>().Utf8Value() : "";
    if (kind == "js") {
      seg.kind = RegionSegment::kJs;
    } else if (kind == "zero") {
      seg.kind = RegionSegment::kZero;
    } else if (kind == "masked" || kind == "ram") {
      Napi::Value storage = so.Get("storage");
      ByteView bytes = ValueBytes(env, storage, (field + ".storage").c_str());
      seg.base = PropU64(env, so, "base", field + ".base");
      seg.storage = bytes.data;
      if (kind == "masked") {
        seg.kind = RegionSegment::kMasked;
        seg.plane_size = static_cast<size_t>(PropU64(env, so, "planeSize", field + ".planeSize"));
      } else {
        seg.kind = RegionSegment::kRam;
      }
      if (const char* bad = CheckSegmentStorage(seg, bytes.length)) ThrowRangeError(env, field, bad);
      keep_alive.push_back(Napi::Persistent(storage));
    } else {
      ThrowInvalid(env, field + ".kind", "must be \"js\", \"masked\", \"ram\" or \"zero\"");
    }
    entry.segments.push_back(seg);
  }
  std::lock_guard<std::recursive_mutex> hold(self->lock_);
  self->map_.Set(index, std::move(entry));
  self->keep_alive_[index] = std::move(keep_alive);
  return env.Undefined();
}

Napi::Value RegionTable::ClearRegion(const Napi::CallbackInfo& info) {
  RegionTable* self = Self(info);
  uint32_t index = ArgU32(info, 0, "index");
  if (index >= kMaxRegions) ThrowRangeError(info.Env(), "index", "must be below 64");
  std::lock_guard<std::recursive_mutex> hold(self->lock_);
  self->map_.Clear(index);
  self->keep_alive_[index].clear();
  return info.Env().Undefined();
}

int RegionTable::CallJs(Napi::Env env, uint32_t region, uint64_t offset, uint8_t* buf, uint32_t count, bool write,
                        bool* via_js) {
  if (count > scratch_len_) return E2BIG;
  // An access served while a JS handler is on the stack (a transport serving the VMM while a
  // handler waits for it) must not clobber the scratch bytes the outer access is still using.
  std::vector<uint8_t> outer;
  const uint32_t outer_in_use = scratch_in_use_;
  if (js_depth_ > 0 && outer_in_use > 0) outer.assign(scratch_, scratch_ + outer_in_use);
  if (write) std::memcpy(scratch_, buf, count);
  js_depth_++;
  scratch_in_use_ = count;
  JsEntry::EnterCurrent();
  int result = EIO;
  try {
    // Through the function itself, not FunctionReference::Call: that opens (allocates) an escapable
    // handle scope per call, and every caller already runs inside a handle scope of its own.
    Napi::Value r = js_access_.Value().Call({Napi::Number::New(env, region), Napi::Number::New(env, static_cast<double>(offset)),
                                             Napi::Number::New(env, count), Napi::Boolean::New(env, write)});
    if (r.IsNumber()) {
      double d = r.As<Napi::Number>().DoubleValue();
      result = (d >= 0 && d < 4096) ? static_cast<int>(d) : EIO;
    }
  } catch (const Napi::Error&) {
    // The JS side maps its own errors to errnos; an escaped exception is a bug, reported as EIO.
    result = EIO;
  }
  js_depth_--;
  if (via_js != nullptr) *via_js = true;
  if (write) {
    map_.stats().js_writes.fetch_add(1, std::memory_order_relaxed);
  } else {
    map_.stats().js_reads.fetch_add(1, std::memory_order_relaxed);
    if (result == 0) std::memcpy(buf, scratch_, count);
  }
  if (!outer.empty()) std::memcpy(scratch_, outer.data(), outer.size());
  scratch_in_use_ = outer_in_use;
  return result;
}

int RegionTable::AccessNative(uint32_t region, uint64_t offset, uint8_t* buf, uint32_t count, bool write) {
  std::lock_guard<std::recursive_mutex> hold(lock_);
  return map_.AccessNative(region, offset, buf, count, write);
}

int RegionTable::Access(Napi::Env env, uint32_t region, uint64_t offset, uint8_t* buf, uint32_t count, bool write,
                        bool* via_js) {
  int r = AccessNative(region, offset, buf, count, write);
  if (r != kNeedsJs) return r;
  return CallJs(env, region, offset, buf, count, write, via_js);
}

// lock() / unlock(): the access lock, for JS that changes register state while an I/O thread serves.
Napi::Value RegionTable::LockJs(const Napi::CallbackInfo& info) {
  Self(info)->lock_.lock();
  return info.Env().Undefined();
}

Napi::Value RegionTable::UnlockJs(const Napi::CallbackInfo& info) {
  Self(info)->lock_.unlock();
  return info.Env().Undefined();
}

// read(region, offset, out) → errno (0 on success)
Napi::Value RegionTable::JsRead(const Napi::CallbackInfo& info) {
  RegionTable* self = Self(info);
  uint32_t region = ArgU32(info, 0, "region");
  uint64_t offset = ArgU64(info, 1, "offset");
  ByteView out = ArgBytes(info, 2, "out");
  if (out.length > UINT32_MAX) ThrowRangeError(info.Env(), "out", "is larger than 4 GiB");
  std::vector<uint8_t> tmp(out.length);  // the JS path may reuse the caller's buffer as scratch
  int r = self->Access(info.Env(), region, offset, tmp.data(), static_cast<uint32_t>(out.length), false);
  if (r == 0 && out.length) std::memcpy(out.data, tmp.data(), out.length);
  return Napi::Number::New(info.Env(), r);
}

// write(region, offset, data) → errno (0 on success)
Napi::Value RegionTable::JsWrite(const Napi::CallbackInfo& info) {
  RegionTable* self = Self(info);
  uint32_t region = ArgU32(info, 0, "region");
  uint64_t offset = ArgU64(info, 1, "offset");
  ByteView data = ArgBytes(info, 2, "data");
  if (data.length > UINT32_MAX) ThrowRangeError(info.Env(), "data", "is larger than 4 GiB");
  std::vector<uint8_t> tmp(data.data, data.data + data.length);
  int r = self->Access(info.Env(), region, offset, tmp.data(), static_cast<uint32_t>(data.length), true);
  return Napi::Number::New(info.Env(), r);
}

Napi::Value RegionTable::Stats(const Napi::CallbackInfo& info) {
  RegionTable* self = Self(info);
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("nativeReads", Napi::Number::New(env, static_cast<double>(self->map_.stats().native_reads.load(std::memory_order_relaxed))));
  o.Set("nativeWrites", Napi::Number::New(env, static_cast<double>(self->map_.stats().native_writes.load(std::memory_order_relaxed))));
  o.Set("jsReads", Napi::Number::New(env, static_cast<double>(self->map_.stats().js_reads.load(std::memory_order_relaxed))));
  o.Set("jsWrites", Napi::Number::New(env, static_cast<double>(self->map_.stats().js_writes.load(std::memory_order_relaxed))));
  return o;
}

void InitRegionTable(Napi::Env env, Napi::Object exports) { exports.Set("RegionTable", RegionTable::Define(env)); }

}  // namespace mdevkit
