// Fuzz target: the dirty bitmap core (core/dirty_bitmap_core.h) — above all the arguments of a
// DMA-logging report (DEVICE_FEATURE DMA_LOGGING_REPORT: iova, length, page_size from the client,
// and the size of the buffer the reply's bitmap goes into) and report-and-clear.
//
// Every operation runs on the core and on a model (one byte per tracked page, ranges in 128-bit
// arithmetic); results, errors, the report's bits, the bytes around it and the bits left dirty
// must agree. The bitmap may wrap caller storage whose tail holds garbage (as a shared backing
// may): those bits are never pages. Report buffers are exact heap allocations, so
// AddressSanitizer sees a write past `need`.
#include <cerrno>
#include <memory>
#include <vector>

#include "core/dirty_bitmap_core.h"
#include "fuzz_input.h"

using namespace mdevkit;
using mdevkit_fuzz::FuzzInput;

namespace {

using u128 = unsigned __int128;

bool Pow2(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

int ModelValidate(uint64_t pc, uint64_t ps) {
  if (pc < 1 || pc > (uint64_t{1} << 34)) return ERANGE;
  if (!Pow2(ps) || ps < 512 || ps > (uint64_t{1} << 30)) return EINVAL;
  if (u128(pc) * ps > (u128(1) << 53)) return ERANGE;
  return 0;
}

struct Harness {
  FuzzInput& in;
  std::unique_ptr<DirtyBitmapCore> core;
  std::unique_ptr<uint64_t[]> storage;  // when wrapping caller storage
  std::vector<uint8_t> model;           // one byte per page: dirty or not
  uint64_t pc = 0, ps = 0;

  explicit Harness(FuzzInput& i) : in(i) {}

  // A page or byte position: usually near the interesting places, sometimes anything.
  uint64_t Pos(uint64_t max) {
    uint8_t k = in.U8();
    switch (k & 3) {
      case 0: return in.Edgy();
      case 1: return max + (k >> 2) - 8;
      default: return max == 0 ? 0 : in.U64() % (max + 1);
    }
  }

  bool Setup() {
    // Validation alone, at any scale.
    uint64_t vpc = in.Edgy(), vps = in.Edgy();
    FUZZ_CHECK(DirtyBitmapCore::Validate(vpc, vps).err == ModelValidate(vpc, vps));
    pc = 1 + in.U16() % 4096;
    ps = uint64_t{1} << (9 + in.U8() % 22);
    model.assign(pc, 0);
    if (in.Bool()) {
      FUZZ_CHECK(DirtyBitmapCore::Create(pc, ps, &core).ok());
    } else {
      uint64_t words = (pc + 63) / 64;
      storage.reset(new uint64_t[words]);
      for (uint64_t w = 0; w < words; w++) storage[w] = in.U8() & 1 ? in.U64() : 0;
      // A wrong storage size is refused.
      FUZZ_CHECK(DirtyBitmapCore::Wrap(pc, ps, storage.get(), words * 8 + 8, &core).err == EINVAL);
      FUZZ_CHECK(DirtyBitmapCore::Wrap(pc, ps, storage.get(), words * 8, &core).ok());
      for (uint64_t p = 0; p < pc; p++) model[p] = (storage[p / 64] >> (p % 64)) & 1;
    }
    return true;
  }

  void CheckState() {
    for (uint64_t p = 0; p < pc; p++) {
      bool d = false;
      FUZZ_CHECK(core->Test(p, &d).ok());
      FUZZ_CHECK(d == (model[p] != 0));
    }
  }

  void Report() {
    uint64_t rps;
    uint8_t k = in.U8();
    if (k & 1) rps = in.Edgy();
    else rps = uint64_t{1} << (9 + in.U8() % 54);
    u128 tracked = u128(pc) * ps;
    uint64_t offset, length;
    if (k & 2) {
      offset = in.Edgy();
      length = in.Edgy();
    } else {
      uint64_t r = Pow2(rps) ? rps : 4096;
      offset = (in.U16() % 64) * r;
      length = (in.U16() % 70) * r;
    }
    bool clear = (k & 4) != 0;
    // The model's verdict.
    int want = 0;
    uint64_t need = 0;
    if (!Pow2(rps) || rps < 512 || rps > (uint64_t{1} << 62)) want = EINVAL;
    else if (offset % rps != 0 || length % rps != 0) want = EINVAL;
    else {
      u128 span = (tracked + rps - 1) / rps * rps;
      if (offset > span || u128(offset) + length > span) want = ERANGE;
      else need = ((length / rps) + 63) / 64 * 8;
    }
    // The reply buffer: exactly `need`, or off by a little, or anything.
    size_t out_len;
    uint8_t b = in.U8();
    if (want != 0 || need > (1u << 12)) out_len = b % 64;
    else out_len = static_cast<size_t>(need) + (b & 1 ? (b >> 1) % 16 : 0) - (b == 2 && need > 0 ? 1 : 0);
    if (want == 0 && out_len < need) want = ERANGE;
    std::unique_ptr<uint8_t[]> out(new uint8_t[out_len == 0 ? 1 : out_len]);
    std::memset(out.get(), 0xa5, out_len == 0 ? 1 : out_len);
    uint64_t set = ~uint64_t{0};
    DirtyStatus st = core->Report(offset, length, rps, out_len == 0 ? nullptr : out.get(), out_len, clear, &set);
    FUZZ_CHECK(st.err == want);
    if (want != 0) return;
    // The model's bits: output bit i covers [offset + i*rps, offset + (i+1)*rps).
    uint64_t nbits = length / rps;
    std::vector<uint8_t> bits(nbits, 0);
    u128 end = u128(offset) + length;
    for (uint64_t q = 0; q < pc; q++) {
      if (!model[q]) continue;
      u128 lo = u128(q) * ps, hi = lo + ps;
      if (hi <= offset || lo >= end) continue;
      u128 a = lo > offset ? lo : u128(offset), z = hi < end ? hi : end;
      for (u128 i = (a - offset) / rps; i <= (z - 1 - offset) / rps && i < nbits; i++) bits[static_cast<size_t>(i)] = 1;
    }
    uint64_t count = 0;
    for (uint64_t i = 0; i < need * 8; i++) {
      bool bit = (out[i / 8] >> (i % 8)) & 1;  // u64 words in host (little-endian) order
      bool expect = i < nbits && bits[i];
      FUZZ_CHECK(bit == expect);
      count += bit;
    }
    FUZZ_CHECK(set == count);
    for (size_t i = need; i < out_len; i++) FUZZ_CHECK(out[i] == 0xa5);  // nothing past the bitmap
    if (clear) {
      for (uint64_t q = 0; q < pc; q++) {
        u128 lo = u128(q) * ps, hi = lo + ps;
        // Cleared only when the report covered all of the page (a larger report page always does).
        if (lo >= offset && hi <= end) model[q] = 0;
      }
    }
  }

  void Run() {
    if (!Setup()) return;
    for (int ops = 0; ops < 48 && !in.empty(); ops++) {
      uint8_t op = in.U8();
      switch (op % 9) {
        case 0: {
          uint64_t p = Pos(pc);
          int want = p >= pc ? ERANGE : 0;
          FUZZ_CHECK(core->MarkPage(p).err == want);
          if (!want) model[p] = 1;
          break;
        }
        case 1: {
          uint64_t first = Pos(pc), count = Pos(pc);
          int want = first > pc || count > pc - first ? ERANGE : 0;
          FUZZ_CHECK(core->MarkPages(first, count).err == want);
          if (!want) for (uint64_t p = first; p < first + count; p++) model[p] = 1;
          break;
        }
        case 2: {
          uint64_t size = pc * ps;
          uint64_t offset = Pos(size), length = Pos(size);
          int want = offset > size || length > size - offset ? ERANGE : 0;
          FUZZ_CHECK(core->MarkBytes(offset, length).err == want);
          if (!want && length) for (uint64_t p = offset / ps; p <= (offset + length - 1) / ps; p++) model[p] = 1;
          break;
        }
        case 3: {
          uint64_t first = Pos(pc), count = Pos(pc), n = 0;
          int want = first > pc || count > pc - first ? ERANGE : 0;
          FUZZ_CHECK(core->Count(first, count, &n).err == want);
          if (!want) {
            uint64_t m = 0;
            for (uint64_t p = first; p < first + count; p++) m += model[p];
            FUZZ_CHECK(n == m);
          }
          break;
        }
        case 4: {
          uint64_t from = Pos(pc), end = Pos(pc), page = 0;
          int want = from > pc || end < from || end > pc ? ERANGE : 0;
          FUZZ_CHECK(core->NextSet(from, end, &page).err == want);
          if (!want) {
            uint64_t m = DirtyBitmapCore::kNoPage;
            for (uint64_t p = from; p < end; p++) {
              if (model[p]) {
                m = p;
                break;
              }
            }
            FUZZ_CHECK(page == m);
          }
          break;
        }
        case 5: {
          // A foreign bitmap (Xen's track_dirty_vram): LSB-first bytes.
          uint64_t first = Pos(pc), count = Pos(pc);
          size_t got = 0;
          const uint8_t* bits = in.Bytes(in.U8() % 80, &got);
          std::vector<uint8_t> exact(bits, bits + got);
          int want = first > pc || count > pc - first ? ERANGE : u128(got) * 8 < count ? ERANGE : 0;
          FUZZ_CHECK(core->MergeBits(first, exact.data(), exact.size(), count).err == want);
          if (!want) {
            for (uint64_t i = 0; i < count; i++) {
              if ((exact[i / 8] >> (i % 8)) & 1) model[first + i] = 1;
            }
          }
          break;
        }
        case 6: {
          uint64_t opc = 1 + in.U16() % (pc + 70);
          uint64_t ops2 = in.Bool() ? ps : ps == 512 ? 1024 : ps / 2;
          std::unique_ptr<DirtyBitmapCore> other;
          FUZZ_CHECK(DirtyBitmapCore::Create(opc, ops2, &other).ok());
          std::vector<uint8_t> omodel(opc, 0);
          for (int j = 0; j < 4; j++) {
            uint64_t p = in.U16() % opc;
            FUZZ_CHECK(other->MarkPage(p).ok());
            omodel[p] = 1;
          }
          uint64_t first = Pos(pc);
          int want = ops2 != ps ? EINVAL : opc > pc ? ERANGE : first > pc - opc ? ERANGE : 0;
          FUZZ_CHECK(core->MergeBitmap(*other, first).err == want);
          if (!want) for (uint64_t p = 0; p < opc; p++) model[first + p] |= omodel[p];
          break;
        }
        case 7:
          if (op & 0x80) {
            core->ClearAll();
            std::fill(model.begin(), model.end(), 0);
          } else {
            CheckState();
          }
          break;
        default:
          Report();
          break;
      }
    }
    CheckState();
  }
};

// ---- seeds: DMA logging as a VMM drives it --------------------------------------------------

using mdevkit_fuzz::Script;

// A report of pages [first, first + pages) at 2^shift-byte report pages, into an exact buffer.
void Report(Script& s, unsigned shift, uint16_t first, uint16_t pages, bool clear) {
  s.U8(8).U8(clear ? 4 : 0).U8(static_cast<uint8_t>(shift - 9)).U16(first).U16(pages).U8(0);
}

void WriteSeeds(const char* dir) {
  mdevkit_fuzz::SeedWriter w(dir);
  for (int wrap = 0; wrap < 2; wrap++) {
    // 16 MiB of guest RAM at 4 KiB pages; device writes mark pages; QEMU reports and clears.
    Script s;
    s.U8(2).U8(1).U8(5).U64(4096);  // Validate: 2, 4096
    s.U16(4095).U8(3).U8(wrap ? 0 : 1);
    if (wrap) {
      for (int i = 0; i < 64; i++) s.U8(i % 3 == 0 ? 1 : 0).U64(0x8000000000000001ull >> (i % 7));
    }
    s.U8(0).U8(2).U64(5);                          // mark page 5
    s.U8(1).U8(2).U64(100).U8(2).U64(40);          // pages [100, 140)
    s.U8(2).U8(2).U64(4096 * 300 + 17).U8(2).U64(9000);  // bytes
    Report(s, 12, 0, 64, false);
    Report(s, 12, 0, 64, true);
    Report(s, 21, 0, 1, true);   // a 2 MiB report page
    Report(s, 9, 1, 20, true);   // a report page smaller than the tracked one
    s.U8(3).U8(2).U64(0).U8(2).U64(4096);
    s.U8(4).U8(2).U64(0).U8(2).U64(4096);
    s.U8(5).U8(2).U64(200).U8(2).U64(64).U8(8).U64(0xf0f0f0f0f0f0f0f0ull);  // Xen's dirty VRAM bits
    s.U8(6).U16(100).U8(1).U16(3).U16(7).U16(50).U16(99).U8(2).U64(9);      // another bitmap merged
    s.U8(7);
    w.Write(wrap ? "logging-shared" : "logging", s.bytes());
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
