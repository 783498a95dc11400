// The JS bindings of the masked-storage rules (core/masked_storage.cc holds the rules).
#include "core/masked_storage.h"

#include "errors.h"
#include "modules.h"

namespace mdevkit {

namespace {

// Validates (storage, n, offset, len) from JS: storage holds kPlaneCount planes of n bytes and
// [offset, offset+len) lies inside one plane.
uint8_t* CheckedPlanes(const Napi::CallbackInfo& info, size_t* n_out, size_t* offset_out, size_t len) {
  Napi::Env env = info.Env();
  ByteView storage = ArgBytes(info, 0, "storage");
  uint64_t n = ArgU64(info, 1, "size", false);
  uint64_t offset = ArgU64(info, 2, "offset", false);
  if (n == 0 || n > (1u << 24)) ThrowRangeError(env, "size", "must be in [1, 2^24]");
  if (storage.length < n * kPlaneCount) ThrowRangeError(env, "storage", "is smaller than 6 planes of size bytes");
  if (offset > n || len > n - offset) ThrowRangeError(env, "offset", "access runs past the end of the storage");
  *n_out = static_cast<size_t>(n);
  *offset_out = static_cast<size_t>(offset);
  return storage.data;
}

// maskedRead(storage, size, offset, out)
Napi::Value JsMaskedRead(const Napi::CallbackInfo& info) {
  ByteView out = ArgBytes(info, 3, "out");
  size_t n = 0, offset = 0;
  uint8_t* planes = CheckedPlanes(info, &n, &offset, out.length);
  MaskedRead(planes, n, offset, out.data, out.length);
  return info.Env().Undefined();
}

// maskedWrite(storage, size, offset, data)
Napi::Value JsMaskedWrite(const Napi::CallbackInfo& info) {
  ByteView data = ArgBytes(info, 3, "data");
  size_t n = 0, offset = 0;
  uint8_t* planes = CheckedPlanes(info, &n, &offset, data.length);
  MaskedWrite(planes, n, offset, data.data, data.length);
  return info.Env().Undefined();
}

}  // namespace

void InitMaskedStorage(Napi::Env env, Napi::Object exports) {
  exports.Set("maskedRead", Napi::Function::New(env, JsMaskedRead, "maskedRead"));
  exports.Set("maskedWrite", Napi::Function::New(env, JsMaskedWrite, "maskedWrite"));
}

}  // namespace mdevkit
