// Fuzz target: REGION_READ/REGION_WRITE payloads decoded (core/vfio_user_stream.h) and served by
// the region map's native dispatch (core/region_map.h) over masked register storage
// (core/masked_storage.h) — the path every trapped guest access takes on both hypervisors.
//
// The input first lays out regions and segments (placement and storage checked by the same
// functions RegionTable::setRegion uses; a region with a refused segment is not installed, as the
// JS call throws), then runs accesses, given as REGION_READ/WRITE payloads or as raw (region,
// offset, count). Every result, every byte read and every byte of storage afterwards is checked
// against a byte-level model of the access rules (docs/architecture.md, "Access rules"), computed
// with 128-bit arithmetic so that no range check can overflow in the model.
#include <cerrno>
#include <memory>
#include <vector>

#include "core/masked_storage.h"
#include "core/region_map.h"
#include "core/vfio_user_stream.h"
#include "fuzz_input.h"

using namespace mdevkit;
using mdevkit_fuzz::FuzzInput;

namespace {

using u128 = unsigned __int128;

struct ModelSegment {
  RegionSegment seg;
  std::vector<uint8_t> model;  // the model's copy of the storage
  uint8_t* real;               // the storage the map serves from (exactly storage_len bytes)
  size_t len;
};

struct ModelRegion {
  bool installed = false;
  uint64_t size = 0;
  bool readable = false;
  bool writable = false;
  std::vector<size_t> segs;  // indexes into segments
};

struct Harness {
  FuzzInput& in;
  RegionMap map;
  ModelRegion regions[RegionMap::kMaxRegions];
  std::vector<std::unique_ptr<uint8_t[]>> owned;
  std::vector<ModelSegment> segments;
  uint32_t max_xfer = 0;

  explicit Harness(FuzzInput& i) : in(i) {}

  uint64_t Size() {
    uint8_t k = in.U8();
    if ((k & 7) == 0) return in.Edgy();
    return in.U16() % (k & 8 ? 4097 : 257);
  }

  void BuildRegion() {
    uint32_t index = in.U8();
    uint64_t size = Size();
    uint8_t flags = in.U8();
    size_t nsegs = in.U8() % 6;
    RegionEntry entry{size, (flags & 1) != 0, (flags & 2) != 0, {}};
    std::vector<size_t> mine;
    bool ok = true;
    uint64_t end = 0;
    for (size_t i = 0; i < nsegs; i++) {
      RegionSegment seg;
      uint8_t k = in.U8();
      seg.offset = k & 0x80 ? in.Edgy() : end + in.U8() % 16;
      seg.size = Size();
      seg.kind = static_cast<RegionSegment::Kind>(k & 3);
      size_t len = 0;
      if (seg.kind == RegionSegment::kMasked) {
        seg.plane_size = k & 0x40 ? static_cast<size_t>(in.Edgy() & 0xffff) : static_cast<size_t>(seg.size + in.U8() % 4);
        seg.base = k & 0x20 ? in.Edgy() : in.U8() % 4;
        len = seg.plane_size * kPlaneCount - (k & 0x10 ? 1 : 0) + (k & 0x08 ? 3 : 0);
      } else if (seg.kind == RegionSegment::kRam) {
        seg.base = k & 0x20 ? in.Edgy() : in.U8() % 4;
        len = static_cast<size_t>((seg.size + (seg.base & 0xffff)) & 0x3ffff) - (k & 0x10 ? 1 : 0);
      }
      if (len > (1u << 14)) len = 1u << 14;  // room for every layout the checks care about
      // The model's rules for a segment that may be installed.
      bool place_ok = seg.size != 0 && seg.offset >= end && u128(seg.offset) + seg.size <= size;
      bool store_ok = true;
      if (seg.kind == RegionSegment::kMasked) {
        store_ok = seg.plane_size != 0 && u128(seg.plane_size) * kPlaneCount <= len && u128(seg.base) + seg.size <= seg.plane_size;
      } else if (seg.kind == RegionSegment::kRam) {
        store_ok = u128(seg.base) + seg.size <= len;
      }
      const char* place = CheckSegmentPlacement(size, end, seg);
      FUZZ_CHECK((place == nullptr) == place_ok);
      if (!place_ok) {
        ok = false;
        break;
      }
      end = seg.offset + seg.size;
      ModelSegment ms{seg, {}, nullptr, len};
      if (seg.kind == RegionSegment::kMasked || seg.kind == RegionSegment::kRam) {
        owned.emplace_back(new uint8_t[len == 0 ? 1 : len]);
        ms.real = owned.back().get();
        size_t got = 0;
        const uint8_t* fill = in.Bytes(std::min<size_t>(len, 512), &got);
        for (size_t b = 0; b < len; b++) ms.real[b] = got ? fill[b % got] : static_cast<uint8_t>(b * 37);
        ms.model.assign(ms.real, ms.real + len);
        ms.seg.storage = ms.real;
        const char* store = CheckSegmentStorage(ms.seg, len);
        FUZZ_CHECK((store == nullptr) == store_ok);
        if (!store_ok) {
          ok = false;
          break;
        }
      }
      entry.segments.push_back(ms.seg);
      mine.push_back(segments.size());
      segments.push_back(std::move(ms));
    }
    if (!ok || index >= RegionMap::kMaxRegions) return;  // setRegion throws: nothing changes
    map.Set(index, entry);
    ModelRegion& r = regions[index];
    r.installed = true;
    r.size = size;
    r.readable = entry.readable;
    r.writable = entry.writable;
    r.segs = mine;
  }

  // The model of AccessNative: the result, with out/storage updated in the model; *touched is the
  // segment it served from (or null).
  int Model(uint32_t region, uint64_t offset, uint8_t* buf, uint32_t count, bool write, ModelSegment** touched) {
    *touched = nullptr;
    if (region >= RegionMap::kMaxRegions) return EINVAL;
    ModelRegion& r = regions[region];
    if (!r.installed || r.size == 0) return EINVAL;
    if (write ? !r.writable : !r.readable) return EINVAL;
    if (u128(offset) + count > r.size) return EINVAL;
    if (count == 0) return 0;
    for (size_t si : r.segs) {
      ModelSegment& ms = segments[si];
      const RegionSegment& s = ms.seg;
      if (offset < s.offset || u128(offset) >= u128(s.offset) + s.size) continue;
      if (u128(offset) + count > u128(s.offset) + s.size) return RegionMap::kNeedsJs;
      size_t at = static_cast<size_t>(s.base + (offset - s.offset));
      *touched = &ms;
      switch (s.kind) {
        case RegionSegment::kJs:
          return RegionMap::kNeedsJs;
        case RegionSegment::kZero:
          if (!write) std::memset(buf, 0, count);
          return 0;
        case RegionSegment::kRam:
          for (uint32_t i = 0; i < count; i++) {
            if (write) ms.model[at + i] = buf[i];
            else buf[i] = ms.model[at + i];
          }
          return 0;
        case RegionSegment::kMasked: {
          size_t n = s.plane_size;
          auto plane = [&](size_t p, size_t i) -> uint8_t& { return ms.model[p * n + at + i]; };
          for (uint32_t i = 0; i < count; i++) {
            if (plane(kPlaneFlags, i) & (write ? kByteWriteHook : kByteReadHook)) return RegionMap::kNeedsJs;
          }
          for (uint32_t i = 0; i < count; i++) {
            uint8_t& v = plane(kPlaneValue, i);
            if (write) {
              uint8_t d = buf[i];
              v = static_cast<uint8_t>((v & ~plane(kPlaneWritable, i)) | (d & plane(kPlaneWritable, i)));
              v = static_cast<uint8_t>(v & ~(d & plane(kPlaneW1c, i)));
              v = static_cast<uint8_t>(v | (d & plane(kPlaneW1s, i)));
            } else {
              buf[i] = v;
              v = static_cast<uint8_t>(v & ~plane(kPlaneReadClear, i));
            }
          }
          return 0;
        }
      }
    }
    return RegionMap::kNeedsJs;
  }

  void Access(uint32_t region, uint64_t offset, const uint8_t* data, uint32_t count, bool write) {
    std::vector<uint8_t> real(count), model(count);
    if (write && count) {
      std::memcpy(real.data(), data, count);
      std::memcpy(model.data(), data, count);
    } else {
      std::fill(real.begin(), real.end(), 0xee);
      std::fill(model.begin(), model.end(), 0xee);
    }
    ModelSegment* touched = nullptr;
    int want = Model(region, offset, model.data(), count, write, &touched);
    int got = map.AccessNative(region, offset, real.data(), count, write);
    FUZZ_CHECK(got == want);
    FUZZ_CHECK(real == model);
    // The segment served from now; every byte of every segment once the input is done.
    if (touched != nullptr && touched->real != nullptr) CheckSegment(*touched);
  }

  static void CheckSegment(const ModelSegment& ms) { FUZZ_CHECK(std::memcmp(ms.real, ms.model.data(), ms.len) == 0); }

  void Run() {
    uint8_t cfg = in.U8();
    static const uint32_t kXfer[] = {8, 64, 512, 4096};
    max_xfer = kXfer[cfg & 3];
    size_t nregions = 1 + in.U8() % 4;
    for (size_t i = 0; i < nregions; i++) BuildRegion();
    for (int ops = 0; ops < 128 && !in.empty(); ops++) {
      uint8_t op = in.U8();
      if (op & 1) {
        // A REGION_READ (9) or REGION_WRITE (10) payload as a client sends it.
        uint16_t command = op & 2 ? kVfioUserRegionWrite : kVfioUserRegionRead;
        size_t len = in.U16() % (16 + max_xfer + 32);
        size_t got = 0;
        const uint8_t* p = in.Bytes(len, &got);
        std::vector<uint8_t> payload(p, p + got);  // exactly the bytes received
        VfioUserRegionAccess a;
        int bad = DecodeRegionAccess(command, payload.data(), static_cast<uint32_t>(payload.size()), max_xfer, &a);
        if (got < 16) {
          FUZZ_CHECK(bad == EINVAL);
          continue;
        }
        uint64_t count;
        uint32_t c32;
        std::memcpy(&c32, payload.data() + 12, 4);
        count = c32;
        if (count > max_xfer) {
          FUZZ_CHECK(bad == E2BIG);
          continue;
        }
        bool fits = got == 16 + (command == kVfioUserRegionWrite ? count : 0);
        FUZZ_CHECK((bad == 0) == fits);
        if (bad != 0) continue;
        Access(a.region, a.offset, payload.data() + 16, a.count, command == kVfioUserRegionWrite);
      } else {
        uint32_t region = op & 2 ? in.U8() : in.U32();
        uint64_t offset = op & 4 ? in.Edgy() : in.U16();
        uint32_t count = op & 8 ? in.U8() % 9 : in.U16() % 600;
        std::vector<uint8_t> data(count);
        for (uint32_t i = 0; i < count; i++) data[i] = in.U8();
        Access(region, offset, data.data(), count, (op & 16) != 0);
      }
    }
    for (const ModelSegment& ms : segments) {
      if (ms.real != nullptr) CheckSegment(ms);
    }
  }
};

// ---- seeds: a device's regions and the accesses a VMM makes -----------------------------------

using mdevkit_fuzz::Script;

// A register block of `size` bytes, fully RW, hooks on bytes [hook, hook + 4).
std::vector<uint8_t> Planes(size_t size, size_t hook, uint8_t rw) {
  std::vector<uint8_t> p(size * kPlaneCount, 0);
  for (size_t i = 0; i < size; i++) {
    p[i] = static_cast<uint8_t>(i);
    p[kPlaneWritable * size + i] = rw;
    p[kPlaneW1c * size + i] = i >= 16 && i < 20 ? 0x0f : 0;
    p[kPlaneReadClear * size + i] = i >= 20 && i < 24 ? 0xff : 0;
    p[kPlaneFlags * size + i] = kByteMapped | (i >= hook && i < hook + 4 ? kByteReadHook | kByteWriteHook : 0);
  }
  return p;
}

void Layout(Script& s) {
  s.U8(1).U8(2);  // 64-byte transfers; three regions
  // BAR0 (256 bytes): registers [0, 64) with a hooked one at 8, a JS segment, unimplemented space.
  s.U8(0).U8(0x09).U16(256).U8(3).U8(3);
  std::vector<uint8_t> regs = Planes(64, 8, 0xff);
  s.U8(0x01).U8(0).U8(0x09).U16(64).U8(0).U8(0).Bytes(regs);
  s.U8(0x00).U8(0).U8(0x09).U16(32);
  s.U8(0x03).U8(0).U8(0x09).U16(160);
  // BAR2: 4 KiB of RAM.
  s.U8(2).U8(0x09).U16(4096).U8(3).U8(1);
  std::vector<uint8_t> ram(512);
  for (size_t i = 0; i < ram.size(); i++) ram[i] = static_cast<uint8_t>(i * 7);
  s.U8(0x02).U8(0).U8(0x09).U16(4096).U8(0).Bytes(ram);
  // Config space (256 bytes), partly read-only.
  s.U8(7).U8(0x01).U16(256).U8(3).U8(1);
  std::vector<uint8_t> config = Planes(256, 0x1000, 0x0f);
  s.U8(0x01).U8(0).U8(0x01).U16(256).U8(0).U8(0).Bytes(config.data(), 512);
}

void Access(Script& s, bool write, uint32_t region, uint64_t offset, uint32_t count, size_t extra = 0) {
  Script p;
  p.U64(offset).U32(region).U32(count);
  for (uint32_t i = 0; i < (write ? count : 0) + extra; i++) p.U8(static_cast<uint8_t>(0xa0 + i));
  s.U8(write ? 3 : 1).U16(static_cast<uint16_t>(p.bytes().size())).Bytes(p.bytes());
}

void WriteSeeds(const char* dir) {
  mdevkit_fuzz::SeedWriter w(dir);
  {
    Script s;
    Layout(s);
    Access(s, false, 0, 0, 4);
    Access(s, true, 0, 4, 4);
    Access(s, false, 0, 4, 4);
    Access(s, true, 0, 8, 4);    // hooked: JS
    Access(s, true, 0, 16, 4);   // write 1 to clear
    Access(s, false, 0, 20, 4);  // read clears
    Access(s, false, 0, 20, 4);
    Access(s, false, 0, 62, 4);  // spans two segments: JS
    Access(s, false, 0, 64, 4);  // JS segment
    Access(s, false, 0, 200, 8); // unimplemented: zeros
    Access(s, true, 2, 100, 8);
    Access(s, false, 2, 100, 8);
    Access(s, false, 2, 4092, 4);
    w.Write("bar-accesses", s.bytes());
  }
  {
    Script s;
    Layout(s);
    Access(s, false, 7, 0, 4);
    Access(s, true, 7, 4, 2);
    Access(s, false, 7, 4, 2);
    Access(s, true, 7, 0x10, 4);
    Access(s, false, 7, 0xfc, 4);
    w.Write("config-space", s.bytes());
  }
  {
    Script s;
    Layout(s);
    Access(s, false, 0, 256, 4);                  // past the end
    Access(s, false, 0, ~uint64_t{0} - 1, 4);     // wraps
    Access(s, false, 3, 0, 4);                    // no such region
    Access(s, false, 64, 0, 4);                   // beyond the table
    Access(s, false, 0, 0, 65);                   // above max_data_xfer_size
    Access(s, true, 0, 0, 4, 3);                  // a write with trailing bytes
    Access(s, false, 0, 0, 4, 2);                 // a read with data
    Access(s, false, 0, 0, 0);                    // empty
    w.Write("bad-accesses", s.bytes());
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = mdevkit_fuzz::SeedWriter::Dir()) {
    WriteSeeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzInput in(data, size);
  Harness h(in);
  h.Run();
  return 0;
}
