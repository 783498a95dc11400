// vfio-user wire structs used by the native hot path. The TS side defines every message layout in
// adapters/vfio/protocol.ts; test/vfio/abi.test.ts checks the two agree with each other and, via
// vfio_abi.cc, with <linux/vfio.h>.
#pragma once

#include <cstdint>

namespace mdevkit {

struct VfioUserHeader {
  uint16_t msg_id;
  uint16_t command;
  uint32_t msg_size;
  uint32_t flags;
  uint32_t error;
};
static_assert(sizeof(VfioUserHeader) == 16, "vfio-user header is 16 bytes");

struct VfioUserRegionAccess {
  uint64_t offset;
  uint32_t region;
  uint32_t count;
};
static_assert(sizeof(VfioUserRegionAccess) == 16, "REGION_READ/WRITE prefix is 16 bytes");

constexpr uint32_t kVfioUserTypeMask = 0xf;
constexpr uint32_t kVfioUserTypeCommand = 0;
constexpr uint32_t kVfioUserTypeReply = 1;
constexpr uint32_t kVfioUserNoReply = 0x10;
constexpr uint32_t kVfioUserError = 0x20;

constexpr uint16_t kVfioUserRegionRead = 9;
constexpr uint16_t kVfioUserRegionWrite = 10;

}  // namespace mdevkit
