#include "core/masked_storage.h"

namespace mdevkit {

void MaskedRead(uint8_t* planes, size_t n, size_t offset, uint8_t* out, size_t len) {
  uint8_t* value = planes + kPlaneValue * n + offset;
  const uint8_t* rc = planes + kPlaneReadClear * n + offset;
  for (size_t i = 0; i < len; i++) {
    out[i] = value[i];
    value[i] = static_cast<uint8_t>(value[i] & ~rc[i]);
  }
}

void MaskedWrite(uint8_t* planes, size_t n, size_t offset, const uint8_t* data, size_t len) {
  uint8_t* value = planes + kPlaneValue * n + offset;
  const uint8_t* rw = planes + kPlaneWritable * n + offset;
  const uint8_t* w1c = planes + kPlaneW1c * n + offset;
  const uint8_t* w1s = planes + kPlaneW1s * n + offset;
  for (size_t i = 0; i < len; i++) {
    uint8_t v = static_cast<uint8_t>((value[i] & ~rw[i]) | (data[i] & rw[i]));
    v = static_cast<uint8_t>(v & ~(data[i] & w1c[i]));
    v = static_cast<uint8_t>(v | (data[i] & w1s[i]));
    value[i] = v;
  }
}

uint8_t MaskedFlags(const uint8_t* planes, size_t n, size_t offset, size_t len) {
  const uint8_t* flags = planes + kPlaneFlags * n + offset;
  uint8_t acc = 0;
  for (size_t i = 0; i < len; i++) acc = static_cast<uint8_t>(acc | flags[i]);
  return acc;
}

}  // namespace mdevkit
