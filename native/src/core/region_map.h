// The native half of the region dispatch table, free of N-API so that the region-dispatch fuzzer
// (native/fuzz/) runs it: each region (VFIO numbering: BAR0-5, ROM 6, config 7) is a list of
// segments, and an access that lies inside one segment the native core can serve (plain register
// storage without hooks, shared RAM, unimplemented space) is served here. Everything else is
// reported as needing JS; RegionTable (region_table.h) makes that call.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace mdevkit {

struct RegionSegment {
  enum Kind : uint8_t { kJs = 0, kMasked = 1, kRam = 2, kZero = 3 };
  uint64_t offset = 0;       // within the region
  uint64_t size = 0;
  Kind kind = kJs;
  uint8_t* storage = nullptr;  // kMasked: the planes; kRam: the bytes
  size_t plane_size = 0;       // kMasked: bytes per plane
  uint64_t base = 0;           // storage offset of the segment's first byte
};

struct RegionEntry {
  uint64_t size = 0;
  bool readable = false;
  bool writable = false;
  std::vector<RegionSegment> segments;  // sorted, non-overlapping
};

// Counters, bumped from whichever thread serves the access (a connection's I/O thread serves
// native segments), hence atomic; relaxed: they order nothing.
struct RegionStats {
  std::atomic<uint64_t> native_reads{0};
  std::atomic<uint64_t> native_writes{0};
  std::atomic<uint64_t> js_reads{0};
  std::atomic<uint64_t> js_writes{0};
};

// Why `seg` cannot follow a segment that ends at prev_end in a region of region_size bytes
// (segments are non-empty, sorted, disjoint and inside the region), or nullptr.
const char* CheckSegmentPlacement(uint64_t region_size, uint64_t prev_end, const RegionSegment& seg);
// Why storage_len bytes of storage cannot back `seg` (kMasked: six planes of plane_size bytes
// holding [base, base + size); kRam: bytes holding [base, base + size)), or nullptr.
const char* CheckSegmentStorage(const RegionSegment& seg, size_t storage_len);

class RegionMap {
 public:
  static constexpr uint32_t kMaxRegions = 64;
  static constexpr int kNeedsJs = -1;

  RegionMap() : regions_(kMaxRegions) {}

  // The caller has checked every segment with the two functions above; index < kMaxRegions.
  void Set(uint32_t index, RegionEntry entry) { regions_[index] = std::move(entry); }
  void Clear(uint32_t index) { regions_[index] = RegionEntry(); }

  // Serves the access if no JS is needed and returns 0 or a positive errno (EINVAL for a missing
  // region, a direction it does not allow, or a range outside it); returns kNeedsJs, changing
  // nothing, for a JS segment, a hooked register byte, or an access spanning segments. Not
  // thread-safe: RegionTable serializes calls.
  int AccessNative(uint32_t region, uint64_t offset, uint8_t* buf, uint32_t count, bool write);

  RegionStats& stats() { return stats_; }
  const RegionStats& stats() const { return stats_; }

 private:
  std::vector<RegionEntry> regions_;
  RegionStats stats_;
};

}  // namespace mdevkit
