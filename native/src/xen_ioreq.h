// Xen's ioreq page ABI (xen/include/public/hvm/ioreq.h) as the native ioreq engine uses it.
// Field layouts are checked against the installed Xen headers in xen_abi.cc.
#pragma once

#include <cstdint>

namespace mdevkit {

// struct ioreq (32 bytes, one per vCPU). The bit fields of byte 30 are read and written as a
// whole byte so that state transitions are single, ordered stores.
struct XenIoreq {
  uint64_t addr;
  uint64_t data;
  uint32_t count;
  uint32_t size;
  uint32_t vp_eport;
  uint16_t pad0;
  uint8_t bits;  // state:4, data_is_ptr:1, dir:1, df:1, pad:1
  uint8_t type;
};
static_assert(sizeof(XenIoreq) == 32, "struct ioreq is 32 bytes");

constexpr uint8_t kIoreqStateMask = 0x0f;
constexpr uint8_t kIoreqDataIsPtr = 0x10;
constexpr uint8_t kIoreqDirRead = 0x20;
constexpr uint8_t kIoreqDf = 0x40;

constexpr uint8_t kStateIoreqNone = 0;
constexpr uint8_t kStateIoreqReady = 1;
constexpr uint8_t kStateIoreqInprocess = 2;
constexpr uint8_t kStateIorespReady = 3;

constexpr uint8_t kIoreqTypePio = 0;
constexpr uint8_t kIoreqTypeCopy = 1;
constexpr uint8_t kIoreqTypePciConfig = 2;
constexpr uint8_t kIoreqTypeTimeoffset = 7;
constexpr uint8_t kIoreqTypeInvalidate = 8;

// struct buf_ioreq (8 bytes): byte 0 type; byte 1 bit 0 pad, bit 1 dir, bits 2-3 size code;
// addr in bits 12-31 of the first 32-bit word; data at byte 4.
constexpr uint32_t kBufIoreqSlots = 511;
constexpr uint32_t kBufPagePointers = 8;  // read_pointer, write_pointer

}  // namespace mdevkit
