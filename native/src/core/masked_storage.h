// Byte-granular register semantics shared by register blocks and PCI config space.
//
// A storage of n bytes is laid out as kPlaneCount planes of n bytes each, one after the other:
//   value | writable (RW bits) | w1c (write 1 to clear) | w1s (write 1 to set) | rc (clear on read) | flags
// Bits in none of the RW/W1C/W1S planes are read-only. The flags plane marks bytes that belong to a
// register (kByteMapped) and bytes whose register has JS hooks (kByteReadHook, kByteWriteHook), so a
// dispatcher can serve an access natively when it touches no hooked byte.
//
// The same two functions serve JS callers (through the binding in masked_storage.cc) and native
// dispatch, so the rules cannot drift between the two paths; they are free of N-API so that the
// region-dispatch fuzzer (native/fuzz/) runs them too.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mdevkit {

enum MaskedPlane : size_t {
  kPlaneValue = 0,
  kPlaneWritable = 1,
  kPlaneW1c = 2,
  kPlaneW1s = 3,
  kPlaneReadClear = 4,
  kPlaneFlags = 5,
  kPlaneCount = 6,
};

enum MaskedByteFlag : uint8_t {
  kByteMapped = 1,
  kByteReadHook = 2,
  kByteWriteHook = 4,
};

// Copies value bytes [offset, offset+len) to out, then clears their read-clear bits.
// The caller guarantees offset + len <= n.
void MaskedRead(uint8_t* planes, size_t n, size_t offset, uint8_t* out, size_t len);

// Applies a write of len bytes at offset: for each byte,
//   v = (v & ~rw) | (d & rw);  v &= ~(d & w1c);  v |= d & w1s.
// The caller guarantees offset + len <= n.
void MaskedWrite(uint8_t* planes, size_t n, size_t offset, const uint8_t* data, size_t len);

// OR of the flags plane over [offset, offset+len).
uint8_t MaskedFlags(const uint8_t* planes, size_t n, size_t offset, size_t len);

}  // namespace mdevkit
