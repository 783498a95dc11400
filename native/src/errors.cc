#include "errors.h"

#include <cerrno>
#include <cmath>
#include <cstring>

namespace mdevkit {

const char* ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  return name != nullptr ? name : "EUNKNOWN";
}

Napi::Error MakeErrnoError(Napi::Env env, const char* syscall, int err) {
  std::string code = ErrnoName(err);
  std::string message = code + ": " + strerror(err) + ", " + syscall;
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("syscall", Napi::String::New(env, syscall));
  return error;
}

void ThrowErrno(Napi::Env env, const char* syscall, int err) { throw MakeErrnoError(env, syscall, err); }

void ThrowTypeError(Napi::Env env, const std::string& field, const std::string& expected) {
  Napi::TypeError error =
      Napi::TypeError::New(env, "The \"" + field + "\" argument must be " + expected);
  error.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_TYPE"));
  error.Set("field", Napi::String::New(env, field));
  throw error;
}

void ThrowRangeError(Napi::Env env, const std::string& field, const std::string& detail) {
  Napi::RangeError error =
      Napi::RangeError::New(env, "The value of \"" + field + "\" is out of range: " + detail);
  error.Set("code", Napi::String::New(env, "ERR_OUT_OF_RANGE"));
  error.Set("field", Napi::String::New(env, field));
  throw error;
}

void ThrowInvalid(Napi::Env env, const std::string& field, const std::string& detail, int err) {
  std::string code = ErrnoName(err);
  Napi::Error error = Napi::Error::New(env, code + ": " + field + ": " + detail);
  error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("field", Napi::String::New(env, field));
  throw error;
}

static Napi::Value Arg(const Napi::CallbackInfo& info, size_t i) {
  return i < info.Length() ? info[i] : info.Env().Undefined();
}

int32_t ArgFd(const Napi::CallbackInfo& info, size_t i, const char* field) {
  Napi::Value v = Arg(info, i);
  if (!v.IsNumber()) ThrowTypeError(info.Env(), field, "a file descriptor (integer)");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d) ThrowTypeError(info.Env(), field, "an integer");
  if (d < 0 || d > 2147483647.0) ThrowRangeError(info.Env(), field, "a file descriptor is >= 0 and < 2^31");
  return static_cast<int32_t>(d);
}

uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* field) {
  Napi::Value v = Arg(info, i);
  if (!v.IsNumber()) ThrowTypeError(info.Env(), field, "an integer");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d) ThrowTypeError(info.Env(), field, "an integer");
  if (d < 0 || d > 4294967295.0) ThrowRangeError(info.Env(), field, "must be >= 0 and < 2^32");
  return static_cast<uint32_t>(d);
}

int64_t ArgI64(const Napi::CallbackInfo& info, size_t i, const char* field) {
  Napi::Value v = Arg(info, i);
  if (v.IsBigInt()) {
    bool lossless = false;
    int64_t r = v.As<Napi::BigInt>().Int64Value(&lossless);
    if (!lossless) ThrowRangeError(info.Env(), field, "must fit in a signed 64-bit integer");
    return r;
  }
  if (!v.IsNumber()) ThrowTypeError(info.Env(), field, "an integer or bigint");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d) ThrowTypeError(info.Env(), field, "an integer");
  if (std::fabs(d) > 9007199254740991.0) ThrowRangeError(info.Env(), field, "must be a safe integer");
  return static_cast<int64_t>(d);
}

uint64_t ValueU64(Napi::Env env, Napi::Value v, const char* field, bool allowBigInt) {
  if (v.IsBigInt() && allowBigInt) {
    int sign = 0;
    size_t words = 1;
    uint64_t word = 0;
    v.As<Napi::BigInt>().ToWords(&sign, &words, &word);
    if (sign != 0 && word != 0) ThrowRangeError(env, field, "must be >= 0");
    if (words > 1) ThrowRangeError(env, field, "must be < 2^64");
    return word;
  }
  if (!v.IsNumber()) ThrowTypeError(env, field, allowBigInt ? "an integer or bigint" : "an integer");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d) ThrowTypeError(env, field, "an integer");
  if (d < 0) ThrowRangeError(env, field, "must be >= 0");
  if (d > 9007199254740991.0) ThrowRangeError(env, field, "must be a safe integer (use a bigint)");
  return static_cast<uint64_t>(d);
}

uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* field, bool allowBigInt) {
  return ValueU64(info.Env(), Arg(info, i), field, allowBigInt);
}

bool ArgBool(const Napi::CallbackInfo& info, size_t i, const char* field, bool defaultValue) {
  Napi::Value v = Arg(info, i);
  if (v.IsUndefined()) return defaultValue;
  if (!v.IsBoolean()) ThrowTypeError(info.Env(), field, "a boolean");
  return v.As<Napi::Boolean>().Value();
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* field) {
  Napi::Value v = Arg(info, i);
  if (!v.IsString()) ThrowTypeError(info.Env(), field, "a string");
  return v.As<Napi::String>().Utf8Value();
}

ByteView ValueBytes(Napi::Env env, Napi::Value v, const char* field) {
  ByteView view;
  void* data = nullptr;
  size_t length = 0;
  napi_status status = napi_ok;
  // The raw info calls hand out the data pointer of views over SharedArrayBuffers as well;
  // Napi::TypedArray::ArrayBuffer().Data() would reject those with an unnamed error.
  if (v.IsTypedArray()) {
    napi_typedarray_type type;
    size_t elements = 0;
    size_t byte_offset = 0;
    status = napi_get_typedarray_info(env, v, &type, &elements, &data, nullptr, &byte_offset);
    length = v.As<Napi::TypedArray>().ByteLength();
  } else if (v.IsDataView()) {
    size_t byte_offset = 0;
    status = napi_get_dataview_info(env, v, &length, &data, nullptr, &byte_offset);
  } else if (v.IsArrayBuffer()) {
    status = napi_get_arraybuffer_info(env, v, &data, &length);
  } else {
    ThrowTypeError(env, field, "a Buffer, TypedArray, DataView or ArrayBuffer");
  }
  if (status != napi_ok) ThrowTypeError(env, field, "a readable Buffer, TypedArray, DataView or ArrayBuffer");
  view.data = static_cast<uint8_t*>(data);
  view.length = length;
  // A detached or empty buffer has no data pointer; keep length 0 so callers never dereference it.
  if (view.data == nullptr) view.length = 0;
  return view;
}

ByteView ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* field) {
  return ValueBytes(info.Env(), Arg(info, i), field);
}

bool IsDetachedBytes(Napi::Value v) {
  if (v.IsTypedArray()) return v.As<Napi::TypedArray>().ArrayBuffer().IsDetached();
  if (v.IsDataView()) return v.As<Napi::DataView>().ArrayBuffer().IsDetached();
  if (v.IsArrayBuffer()) return v.As<Napi::ArrayBuffer>().IsDetached();
  return false;
}

bool IsSharedMemoryView(Napi::Value v) {
  if (v.IsTypedArray()) return !v.As<Napi::TypedArray>().ArrayBuffer().IsArrayBuffer();
  if (v.IsDataView()) return !v.As<Napi::DataView>().ArrayBuffer().IsArrayBuffer();
  return false;
}

ByteView ValueLiveBytes(Napi::Env env, Napi::Value v, const char* field) {
  if (IsSharedMemoryView(v)) ThrowTypeError(env, field, "backed by an ArrayBuffer, not a SharedArrayBuffer");
  ByteView view = ValueBytes(env, v, field);
  if (IsDetachedBytes(v)) ThrowInvalid(env, field, "the buffer is detached");
  return view;
}

ByteView ArgLiveBytes(const Napi::CallbackInfo& info, size_t i, const char* field) {
  return ValueLiveBytes(info.Env(), Arg(info, i), field);
}

}  // namespace mdevkit
