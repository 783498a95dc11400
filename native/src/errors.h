// Error helpers shared by every native module: errno errors shaped like Node's SystemError
// (code, errno, syscall) and argument errors that name the offending field.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

namespace mdevkit {

// Throws (as a C++ exception carrying a JS Error) an error for a failed system call.
// err.code = "EBADF" etc., err.errno = positive errno, err.syscall = syscall.
[[noreturn]] void ThrowErrno(Napi::Env env, const char* syscall, int err);

// Builds (without throwing) the same error object, for callbacks that report errors.
Napi::Error MakeErrnoError(Napi::Env env, const char* syscall, int err);

// Throws a TypeError (code ERR_INVALID_ARG_TYPE) naming the field.
[[noreturn]] void ThrowTypeError(Napi::Env env, const std::string& field, const std::string& expected);

// Throws a RangeError (code ERR_OUT_OF_RANGE) naming the field.
[[noreturn]] void ThrowRangeError(Napi::Env env, const std::string& field, const std::string& detail);

// Throws an Error with an errno-style code (e.g. EINVAL) for invalid arguments that are not a
// type or range problem, naming the field.
[[noreturn]] void ThrowInvalid(Napi::Env env, const std::string& field, const std::string& detail,
                               int err = 22 /* EINVAL */);

// The symbolic name of an errno value ("EINVAL"), or "E<number>" when unknown.
const char* ErrnoName(int err);

// Argument readers: each validates type and range and throws a named error otherwise.
int32_t ArgFd(const Napi::CallbackInfo& info, size_t i, const char* field);
uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* field);
int64_t ArgI64(const Napi::CallbackInfo& info, size_t i, const char* field);
// A non-negative integer that fits a JS safe integer (or a bigint < 2^64 when allowBigInt).
uint64_t ArgU64(const Napi::CallbackInfo& info, size_t i, const char* field, bool allowBigInt = true);
uint64_t ValueU64(Napi::Env env, Napi::Value v, const char* field, bool allowBigInt = true);
bool ArgBool(const Napi::CallbackInfo& info, size_t i, const char* field, bool defaultValue);
std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* field);

// A view of bytes passed from JS: Buffer, any TypedArray, DataView or ArrayBuffer.
struct ByteView {
  uint8_t* data = nullptr;
  size_t length = 0;
};
ByteView ValueBytes(Napi::Env env, Napi::Value v, const char* field);
ByteView ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* field);

// True when `v` is a detached ArrayBuffer or a view over one (napi reports those as empty, which
// a syscall would misread as a legitimate zero-length buffer).
bool IsDetachedBytes(Napi::Value v);
// True when `v` is a view over a SharedArrayBuffer, whose bytes ValueBytes cannot reach.
bool IsSharedMemoryView(Napi::Value v);
// ValueBytes/ArgBytes that additionally throw EINVAL naming the field for detached buffers, and a
// TypeError naming it for views over a SharedArrayBuffer.
ByteView ValueLiveBytes(Napi::Env env, Napi::Value v, const char* field);
ByteView ArgLiveBytes(const Napi::CallbackInfo& info, size_t i, const char* field);

}  // namespace mdevkit
