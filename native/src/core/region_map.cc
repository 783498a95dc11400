#include "core/region_map.h"

#include <cerrno>
#include <cstring>

#include "core/masked_storage.h"

namespace mdevkit {

const char* CheckSegmentPlacement(uint64_t region_size, uint64_t prev_end, const RegionSegment& seg) {
  if (seg.size == 0 || seg.offset < prev_end || seg.offset > region_size || seg.size > region_size - seg.offset) {
    return "segments must be non-empty, sorted, disjoint and inside the region";
  }
  return nullptr;
}

const char* CheckSegmentStorage(const RegionSegment& seg, size_t storage_len) {
  if (seg.kind == RegionSegment::kMasked) {
    // plane_size is at most storage_len / 6 once the second test passes: no overflow.
    if (seg.plane_size == 0 || storage_len / kPlaneCount < seg.plane_size || seg.base > seg.plane_size ||
        seg.size > seg.plane_size - seg.base) {
      return "masked storage is smaller than the segment";
    }
  } else if (seg.kind == RegionSegment::kRam) {
    if (seg.base > storage_len || seg.size > storage_len - seg.base) return "RAM storage is smaller than the segment";
  }
  return nullptr;
}

int RegionMap::AccessNative(uint32_t region, uint64_t offset, uint8_t* buf, uint32_t count, bool write) {
  if (region >= regions_.size()) return EINVAL;
  const RegionEntry& e = regions_[region];
  if (e.size == 0) return EINVAL;
  if (write ? !e.writable : !e.readable) return EINVAL;
  if (offset > e.size || count > e.size - offset) return EINVAL;
  if (count == 0) return 0;
  for (const RegionSegment& s : e.segments) {
    if (offset < s.offset || offset >= s.offset + s.size) continue;
    if (count > s.offset + s.size - offset) break;  // spans segments: JS splits it
    uint64_t at = s.base + (offset - s.offset);
    switch (s.kind) {
      case RegionSegment::kZero:
        if (!write) std::memset(buf, 0, count);
        break;
      case RegionSegment::kRam: {
        if (write) std::memcpy(s.storage + at, buf, count);
        else std::memcpy(buf, s.storage + at, count);
        break;
      }
      case RegionSegment::kMasked: {
        uint8_t hooks = MaskedFlags(s.storage, s.plane_size, at, count);
        if (hooks & (write ? kByteWriteHook : kByteReadHook)) return kNeedsJs;
        if (write) MaskedWrite(s.storage, s.plane_size, at, buf, count);
        else MaskedRead(s.storage, s.plane_size, at, buf, count);
        break;
      }
      case RegionSegment::kJs:
        return kNeedsJs;
    }
    (write ? stats_.native_writes : stats_.native_reads).fetch_add(1, std::memory_order_relaxed);
    return 0;
  }
  return kNeedsJs;
}

}  // namespace mdevkit
