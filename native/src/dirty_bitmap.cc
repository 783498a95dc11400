#include "dirty_bitmap.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include "errors.h"
#include "modules.h"

namespace mdevkit {

// ---- The JS class ---------------------------------------------------------------------------------

namespace {

// Marks objects constructed by DirtyBitmap (and its JS subclasses). Type tags cannot be forged from
// JS, unlike the prototype chain, so unwrapping checks the tag before trusting the wrapped pointer.
constexpr napi_type_tag kDirtyBitmapTag = {0x8a4f0c2e6d1b7359ULL, 0xd3e1a97c45f20b68ULL};

constexpr napi_property_attributes kMethod = static_cast<napi_property_attributes>(napi_writable | napi_configurable);

class DirtyBitmap : public Napi::ObjectWrap<DirtyBitmap> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit DirtyBitmap(const Napi::CallbackInfo& info);
  ~DirtyBitmap() override;

  DirtyBitmapCore* core() const { return core_.get(); }

  static DirtyBitmap* FromValue(Napi::Env env, Napi::Value value, const char* field);

 private:
  static DirtyBitmapCore* Self(const Napi::CallbackInfo& info) { return FromValue(info.Env(), info.This(), "this")->core(); }

  static Napi::Value MarkPage(const Napi::CallbackInfo& info);
  static Napi::Value MarkPages(const Napi::CallbackInfo& info);
  static Napi::Value MarkBytes(const Napi::CallbackInfo& info);
  static Napi::Value Test(const Napi::CallbackInfo& info);
  static Napi::Value Count(const Napi::CallbackInfo& info);
  static Napi::Value NextSet(const Napi::CallbackInfo& info);
  static Napi::Value ClearAll(const Napi::CallbackInfo& info);
  static Napi::Value Report(const Napi::CallbackInfo& info);
  static Napi::Value ReportAndClear(const Napi::CallbackInfo& info);
  static Napi::Value MergeFrom(const Napi::CallbackInfo& info);
  static Napi::Value MergeBitmap(const Napi::CallbackInfo& info);
  static Napi::Value GetPageCount(const Napi::CallbackInfo& info);
  static Napi::Value GetPageSize(const Napi::CallbackInfo& info);
  static Napi::Value GetByteLength(const Napi::CallbackInfo& info);
  static Napi::Value GetBuffer(const Napi::CallbackInfo& info);
  static Napi::Value DoReport(const Napi::CallbackInfo& info, bool clear);

  std::unique_ptr<DirtyBitmapCore> core_;
  Napi::ObjectReference backing_;  // the SharedArrayBuffer holding the bits, if the caller gave one
  int64_t external_bytes_ = 0;     // owned storage reported to V8's heap accounting
};

void Check(Napi::Env env, const DirtyStatus& st) {
  if (!st.ok()) ThrowInvalid(env, st.field, st.detail, st.err);
}

void CheckNapi(Napi::Env env, napi_status status) {
  if (status != napi_ok) throw Napi::Error::New(env);
}

Napi::Value Arg(const Napi::CallbackInfo& info, size_t i) { return i < info.Length() ? info[i] : info.Env().Undefined(); }

uint64_t OptU64(const Napi::CallbackInfo& info, size_t i, const char* field, uint64_t fallback) {
  return Arg(info, i).IsUndefined() ? fallback : ArgU64(info, i, field);
}

size_t TypedArrayElementSize(napi_typedarray_type type) {
  switch (type) {
    case napi_int8_array:
    case napi_uint8_array:
    case napi_uint8_clamped_array:
      return 1;
    case napi_int16_array:
    case napi_uint16_array:
      return 2;
    case napi_int32_array:
    case napi_uint32_array:
    case napi_float32_array:
      return 4;
    case napi_float64_array:
    case napi_bigint64_array:
    case napi_biguint64_array:
      return 8;
    default:
      return 0;
  }
}

// Like ValueBytes, but also for views of a SharedArrayBuffer (report output and foreign bitmaps may
// live in shared memory): the data pointer comes from the view itself, never from its buffer,
// which N-API 8 only understands when it is a plain ArrayBuffer.
ByteView ViewBytes(Napi::Env env, Napi::Value v, const char* field) {
  ByteView view;
  void* data = nullptr;
  size_t byte_offset = 0;
  if (v.IsTypedArray()) {
    napi_typedarray_type type;
    size_t length = 0;
    CheckNapi(env, napi_get_typedarray_info(env, v, &type, &length, &data, nullptr, &byte_offset));
    view.length = length * TypedArrayElementSize(type);
  } else if (v.IsDataView()) {
    size_t length = 0;
    CheckNapi(env, napi_get_dataview_info(env, v, &length, &data, nullptr, &byte_offset));
    view.length = length;
  } else if (v.IsArrayBuffer()) {
    return ValueBytes(env, v, field);
  } else {
    ThrowTypeError(env, field, "a TypedArray, DataView or ArrayBuffer");
  }
  view.data = static_cast<uint8_t*>(data);
  if (view.data == nullptr) view.length = 0;  // detached or empty
  return view;
}

DirtyBitmap* DirtyBitmap::FromValue(Napi::Env env, Napi::Value value, const char* field) {
  if (!value.IsObject() || !value.As<Napi::Object>().CheckTypeTag(&kDirtyBitmapTag)) {
    ThrowTypeError(env, field, "a DirtyBitmap");
  }
  DirtyBitmap* self = Unwrap(value.As<Napi::Object>());
  if (self == nullptr || self->core_ == nullptr) ThrowTypeError(env, field, "a DirtyBitmap");
  return self;
}

DirtyBitmap::DirtyBitmap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DirtyBitmap>(info) {
  Napi::Env env = info.Env();
  const uint64_t page_count = ArgU64(info, 0, "pageCount");
  const uint64_t page_size = OptU64(info, 1, "pageSize", 4096);
  Napi::Value backing = Arg(info, 2);
  if (backing.IsUndefined()) {
    Check(env, DirtyBitmapCore::Create(page_count, page_size, &core_));
    external_bytes_ = static_cast<int64_t>(core_->byte_length());
    Napi::MemoryManagement::AdjustExternalMemory(env, external_bytes_);
  } else {
    Check(env, DirtyBitmapCore::Validate(page_count, page_size));
    // N-API 8 has no SharedArrayBuffer accessors: view it through a Uint8Array and check that the
    // view's buffer is that very object and is not a plain (detachable) ArrayBuffer.
    Napi::Value sab_ctor = env.Global().Get("SharedArrayBuffer");
    if (!backing.IsObject() || !sab_ctor.IsFunction() || backing.IsArrayBuffer() ||
        !backing.As<Napi::Object>().InstanceOf(sab_ctor.As<Napi::Function>())) {
      ThrowTypeError(env, "backing", "a SharedArrayBuffer");
    }
    Napi::Value u8_ctor = env.Global().Get("Uint8Array");
    if (!u8_ctor.IsFunction()) ThrowTypeError(env, "backing", "a SharedArrayBuffer (and globalThis.Uint8Array intact)");
    Napi::Value view = u8_ctor.As<Napi::Function>().New({backing});
    if (!view.IsTypedArray()) ThrowTypeError(env, "backing", "a SharedArrayBuffer");
    napi_typedarray_type type;
    size_t length = 0, byte_offset = 0;
    void* data = nullptr;
    napi_value buffer;
    CheckNapi(env, napi_get_typedarray_info(env, view, &type, &length, &data, &buffer, &byte_offset));
    bool same = false, plain = true;
    CheckNapi(env, napi_strict_equals(env, buffer, backing, &same));
    CheckNapi(env, napi_is_arraybuffer(env, buffer, &plain));
    if (!same || plain || type != napi_uint8_array || byte_offset != 0) ThrowTypeError(env, "backing", "a SharedArrayBuffer");
    Check(env, DirtyBitmapCore::Wrap(page_count, page_size, data, length, &core_));
    backing_ = Napi::Persistent(backing.As<Napi::Object>());
  }
  // Last: only a fully constructed object carries the tag.
  info.This().As<Napi::Object>().TypeTag(&kDirtyBitmapTag);
}

DirtyBitmap::~DirtyBitmap() {
  if (external_bytes_ != 0) Napi::MemoryManagement::AdjustExternalMemory(Env(), -external_bytes_);
}

Napi::Function DirtyBitmap::Define(Napi::Env env) {
  Napi::Function ctor = DefineClass(env, "DirtyBitmap", {});
  // Methods are plain callbacks that check the type tag of `this` before unwrapping it.
  // ObjectWrap's InstanceMethod trampolines unwrap `this` unchecked, so
  // DirtyBitmap.prototype.markPage.call(someOtherWrappedObject) would reinterpret a foreign pointer.
  Napi::Object proto = ctor.Get("prototype").As<Napi::Object>();
  struct Method {
    const char* name;
    Napi::Value (*fn)(const Napi::CallbackInfo&);
  };
  const Method methods[] = {
      {"markPage", MarkPage},   {"markPages", MarkPages},     {"markBytes", MarkBytes},
      {"test", Test},           {"count", Count},             {"nextSet", NextSet},
      {"clearAll", ClearAll},   {"report", Report},           {"reportAndClear", ReportAndClear},
      {"mergeFrom", MergeFrom}, {"mergeBitmap", MergeBitmap},
  };
  for (const Method& m : methods) {
    proto.DefineProperty(Napi::PropertyDescriptor::Value(m.name, Napi::Function::New(env, m.fn, m.name), kMethod));
  }
  proto.DefineProperties({
      Napi::PropertyDescriptor::Accessor<GetPageCount>("pageCount", napi_configurable),
      Napi::PropertyDescriptor::Accessor<GetPageSize>("pageSize", napi_configurable),
      Napi::PropertyDescriptor::Accessor<GetByteLength>("byteLength", napi_configurable),
      Napi::PropertyDescriptor::Accessor<GetBuffer>("buffer", napi_configurable),
  });
  return ctor;
}

Napi::Value DirtyBitmap::MarkPage(const Napi::CallbackInfo& info) {
  DirtyBitmapCore* core = Self(info);
  Check(info.Env(), core->MarkPage(ArgU64(info, 0, "page")));
  return info.Env().Undefined();
}

Napi::Value DirtyBitmap::MarkPages(const Napi::CallbackInfo& info) {
  DirtyBitmapCore* core = Self(info);
  const uint64_t first = ArgU64(info, 0, "first");
  const uint64_t count = ArgU64(info, 1, "count");
  Check(info.Env(), core->MarkPages(first, count));
  return info.Env().Undefined();
}

Napi::Value DirtyBitmap::MarkBytes(const Napi::CallbackInfo& info) {
  DirtyBitmapCore* core = Self(info);
  const uint64_t offset = ArgU64(info, 0, "offset");
  const uint64_t length = ArgU64(info, 1, "length");
  Check(info.Env(), core->MarkBytes(offset, length));
  return info.Env().Undefined();
}

Napi::Value DirtyBitmap::Test(const Napi::CallbackInfo& info) {
  DirtyBitmapCore* core = Self(info);
  bool dirty = false;
  Check(info.Env(), core->Test(ArgU64(info, 0, "page"), &dirty));
  return Napi::Boolean::New(info.Env(), dirty);
}

Napi::Value DirtyBitmap::Count(const Napi::CallbackInfo& info) {
  DirtyBitmapCore* core = Self(info);
  const uint64_t first = OptU64(info, 0, "first", 0);
  const uint64_t count = OptU64(info, 1, "count", first <= core->page_count() ? core->page_count() - first : 0);
  uint64_t dirty = 0;
  Check(info.Env(), core->Count(first, count, &dirty));
  return Napi::Number::New(info.Env(), static_cast<double>(dirty));
}

Napi::Value DirtyBitmap::NextSet(const Napi::CallbackInfo& info) {
  DirtyBitmapCore* core = Self(info);
  const uint64_t from = ArgU64(info, 0, "fromPage");
  const uint64_t end = OptU64(info, 1, "endPage", core->page_count());
  uint64_t page = 0;
  Check(info.Env(), core->NextSet(from, end, &page));
  return Napi::Number::New(info.Env(), page == DirtyBitmapCore::kNoPage ? -1.0 : static_cast<double>(page));
}

Napi::Value DirtyBitmap::ClearAll(const Napi::CallbackInfo& info) {
  Self(info)->ClearAll();
  return info.Env().Undefined();
}

Napi::Value DirtyBitmap::DoReport(const Napi::CallbackInfo& info, bool clear) {
  DirtyBitmapCore* core = Self(info);
  const uint64_t offset = ArgU64(info, 0, "offset");
  const uint64_t length = ArgU64(info, 1, "length");
  const uint64_t report_page_size = ArgU64(info, 2, "reportPageSize");
  ByteView out = ViewBytes(info.Env(), Arg(info, 3), "out");
  uint64_t set = 0;
  Check(info.Env(), core->Report(offset, length, report_page_size, out.data, out.length, clear, &set));
  return Napi::Number::New(info.Env(), static_cast<double>(set));
}

Napi::Value DirtyBitmap::Report(const Napi::CallbackInfo& info) { return DoReport(info, false); }
Napi::Value DirtyBitmap::ReportAndClear(const Napi::CallbackInfo& info) { return DoReport(info, true); }

Napi::Value DirtyBitmap::MergeFrom(const Napi::CallbackInfo& info) {
  DirtyBitmapCore* core = Self(info);
  const uint64_t first = ArgU64(info, 0, "firstPage");
  ByteView bits = ViewBytes(info.Env(), Arg(info, 1), "bits");
  const uint64_t bit_count = ArgU64(info, 2, "bitCount");
  Check(info.Env(), core->MergeBits(first, bits.data, bits.length, bit_count));
  return info.Env().Undefined();
}

Napi::Value DirtyBitmap::MergeBitmap(const Napi::CallbackInfo& info) {
  DirtyBitmapCore* core = Self(info);
  DirtyBitmapCore* other = UnwrapDirtyBitmap(info.Env(), Arg(info, 0), "other");
  const uint64_t first = OptU64(info, 1, "firstPage", 0);
  Check(info.Env(), core->MergeBitmap(*other, first));
  return info.Env().Undefined();
}

Napi::Value DirtyBitmap::GetPageCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(Self(info)->page_count()));
}

Napi::Value DirtyBitmap::GetPageSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(Self(info)->page_size()));
}

Napi::Value DirtyBitmap::GetByteLength(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(Self(info)->byte_length()));
}

Napi::Value DirtyBitmap::GetBuffer(const Napi::CallbackInfo& info) {
  DirtyBitmap* self = FromValue(info.Env(), info.This(), "this");
  return self->backing_.IsEmpty() ? info.Env().Undefined() : self->backing_.Value();
}

}  // namespace

DirtyBitmapCore* UnwrapDirtyBitmap(Napi::Env env, Napi::Value value, const char* field) {
  return DirtyBitmap::FromValue(env, value, field)->core();
}

DirtyBitmapRef::DirtyBitmapRef(Napi::Env env, Napi::Value value, const char* field) {
  DirtyBitmapCore* core = UnwrapDirtyBitmap(env, value, field);  // type-checks before referencing
  ref_ = Napi::Persistent(value.As<Napi::Object>());
  core_ = core;
}

DirtyBitmapRef::DirtyBitmapRef(DirtyBitmapRef&& other) noexcept
    : ref_(std::move(other.ref_)), core_(std::exchange(other.core_, nullptr)) {}

DirtyBitmapRef& DirtyBitmapRef::operator=(DirtyBitmapRef&& other) noexcept {
  if (this != &other) {
    ref_ = std::move(other.ref_);
    core_ = std::exchange(other.core_, nullptr);
  }
  return *this;
}

void DirtyBitmapRef::Reset() {
  ref_.Reset();
  core_ = nullptr;
}

void InitDirtyBitmap(Napi::Env env, Napi::Object exports) {
  exports.Set("DirtyBitmap", DirtyBitmap::Define(env));
}

}  // namespace mdevkit
