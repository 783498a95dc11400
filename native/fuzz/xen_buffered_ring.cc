// Fuzz target: draining Xen's buffered ioreq ring (core/ioreq.h) from a page the guest side
// controls: any read/write pointer pair (torn, wrapped, garbage), any slot contents, in legacy or
// atomic pointer mode, with the producer writing more entries — or moving the pointers — while the
// drain runs.
//
// Checked against a model drain written from Xen's ABI (xen-ioreq facts: 511 slots of 8 bytes,
// size code in bits 2-3 of byte 1, dir in bit 1, addr in bits 12-31 of the first word, an 8-byte
// write in two slots) whenever nothing moves under the drain; whatever moves, a drain consumes at
// most one ring's worth of slots and never reads outside the page (the page is an exact 4096-byte
// allocation, so AddressSanitizer sees any stray access).
#include <memory>
#include <vector>

#include "core/ioreq.h"
#include "fuzz_input.h"

using namespace mdevkit;
using mdevkit_fuzz::FuzzInput;

namespace {

constexpr size_t kPage = 4096;

struct Entry {
  bool read;  // a read entry (refused)
  uint64_t addr, data;
  uint32_t size;
  uint8_t type;
  bool operator==(const Entry& o) const {
    return read == o.read && (read || (addr == o.addr && data == o.data && size == o.size && type == o.type));
  }
};

uint32_t Rp(const uint8_t* page) {
  uint32_t v;
  std::memcpy(&v, page, 4);
  return v;
}
uint32_t Wp(const uint8_t* page) {
  uint32_t v;
  std::memcpy(&v, page + 4, 4);
  return v;
}

// The model: what a drain of `page` yields, and the read pointer it leaves.
std::vector<Entry> ModelDrain(const uint8_t* page, uint32_t* rp_out, bool* bad_pointers) {
  std::vector<Entry> out;
  uint64_t rp = Rp(page), wp = Wp(page);
  *bad_pointers = false;
  uint32_t used_total = 0;
  while (used_total < kBufIoreqSlots) {
    uint32_t avail = static_cast<uint32_t>(wp - rp);  // modulo 2^32, as the pointers wrap
    if (avail == 0) break;
    if (avail > kBufIoreqSlots) {
      *bad_pointers = true;
      rp = wp;
      break;
    }
    const uint8_t* s = page + 8 + (static_cast<uint32_t>(rp) % kBufIoreqSlots) * 8;
    uint32_t size = 1u << ((s[1] >> 2) & 3);
    uint32_t word0 = static_cast<uint32_t>(s[0]) | static_cast<uint32_t>(s[1]) << 8 | static_cast<uint32_t>(s[2]) << 16 |
                     static_cast<uint32_t>(s[3]) << 24;
    uint64_t data = static_cast<uint64_t>(s[4]) | static_cast<uint64_t>(s[5]) << 8 | static_cast<uint64_t>(s[6]) << 16 |
                    static_cast<uint64_t>(s[7]) << 24;
    uint32_t used = 1;
    if (size == 8) {
      if (avail < 2) break;
      const uint8_t* t = page + 8 + (static_cast<uint32_t>(rp + 1) % kBufIoreqSlots) * 8;
      data |= (static_cast<uint64_t>(t[4]) | static_cast<uint64_t>(t[5]) << 8 | static_cast<uint64_t>(t[6]) << 16 |
               static_cast<uint64_t>(t[7]) << 24)
              << 32;
      used = 2;
    }
    out.push_back(Entry{(s[1] & 2) != 0, word0 >> 12, data, size, s[0]});
    rp += used;
    used_total += used;
  }
  *rp_out = static_cast<uint32_t>(rp);
  return out;
}

struct Sink final : BufferedIoreqSink {
  FuzzInput& in;
  uint8_t* page;
  std::vector<Entry> got;
  bool bad_pointers = false;
  bool moved = false;  // the producer changed the page during the drain
  explicit Sink(FuzzInput& i, uint8_t* p) : in(i), page(p) {}

  void OnWrite(const XenIoreq& req) override {
    FUZZ_CHECK(req.count == 1 && req.addr < (1u << 20));
    FUZZ_CHECK(req.size == 1 || req.size == 2 || req.size == 4 || req.size == 8);
    if (req.size < 8) FUZZ_CHECK(req.data >> 32 == 0);
    got.push_back(Entry{false, req.addr, req.data, req.size, req.type});
    Meanwhile();
  }
  void OnReadEntry() override {
    got.push_back(Entry{true, 0, 0, 0, 0});
    Meanwhile();
  }
  void OnBadPointers() override { bad_pointers = true; }

  // The producer keeps going while we serve an entry.
  void Meanwhile() {
    uint8_t k = in.U8();
    if (k < 0xf0) return;
    moved = true;
    if (k & 1) {
      uint32_t wp = Wp(page) + (in.U8() % 4);
      std::memcpy(page + 4, &wp, 4);
    } else if (k & 2) {
      uint64_t both = in.U64();
      std::memcpy(page, &both, 8);
    } else {
      size_t slot = in.U16() % kBufIoreqSlots;
      uint64_t e = in.U64();
      std::memcpy(page + 8 + slot * 8, &e, 8);
    }
  }
};

void Run(FuzzInput& in) {
  bool atomic = in.Bool();
  // Exactly one page: any access outside it is an AddressSanitizer report.
  std::unique_ptr<uint8_t[]> owner(new uint8_t[kPage]);
  uint8_t* page = owner.get();
  std::memset(page, 0, kPage);
  uint32_t rp = in.U8() & 1 ? in.U32() : in.U16();
  uint32_t wp = rp + (in.U8() & 1 ? in.U32() : in.U16() % 600);
  std::memcpy(page, &rp, 4);
  std::memcpy(page + 4, &wp, 4);
  for (int ops = 0; ops < 64 && !in.empty(); ops++) {
    uint8_t op = in.U8();
    switch (op % 4) {
      case 0: {
        // The producer publishes n entries: slots first, then the write pointer.
        size_t n = 1 + in.U8() % 16;
        uint32_t w = Wp(page);
        for (size_t i = 0; i < n; i++) {
          uint64_t e = in.U64();
          std::memcpy(page + 8 + ((w + i) % kBufIoreqSlots) * 8, &e, 8);
        }
        w += static_cast<uint32_t>(n);
        std::memcpy(page + 4, &w, 4);
        break;
      }
      case 1: {
        uint64_t both = op & 4 ? in.U64() : (static_cast<uint64_t>(Rp(page) + in.U16()) << 32) | Rp(page);
        std::memcpy(page, &both, 8);
        break;
      }
      default: {
        uint32_t model_rp = 0;
        bool model_bad = false;
        std::vector<Entry> want = ModelDrain(page, &model_rp, &model_bad);
        uint32_t before_rp = Rp(page);
        Sink sink(in, page);
        uint32_t consumed = DrainBufferedRing(page, atomic, sink);
        FUZZ_CHECK(sink.got.size() <= kBufIoreqSlots);
        // One ring's worth of entries at most, however fast the producer is.
        FUZZ_CHECK(consumed <= 2 * kBufIoreqSlots);
        if (!sink.moved) {
          FUZZ_CHECK(sink.got == want);
          FUZZ_CHECK(sink.bad_pointers == model_bad);
          FUZZ_CHECK(Rp(page) == model_rp);
          if (!model_bad) FUZZ_CHECK(Rp(page) - before_rp == consumed);
        }
        break;
      }
    }
  }
}

// ---- seeds: buffered writes as Xen queues them (VGA-style port and MMIO writes) -----------------

using mdevkit_fuzz::Script;

uint64_t Buf(uint8_t type, uint32_t size, uint32_t addr, uint32_t data, bool read = false) {
  uint32_t code = size == 1 ? 0 : size == 2 ? 1 : size == 4 ? 2 : 3;
  uint32_t word0 = type | ((code << 2 | (read ? 2u : 0u)) << 8) | (addr << 12);
  return word0 | static_cast<uint64_t>(data) << 32;
}

void Publish(Script& s, const std::vector<uint64_t>& entries) {
  s.U8(0).U8(static_cast<uint8_t>(entries.size() - 1));
  for (uint64_t e : entries) s.U64(e);
}

void Drain(Script& s, size_t entries) {
  s.U8(2);
  for (size_t i = 0; i < entries; i++) s.U8(0);  // the producer is idle meanwhile
}

void WriteSeeds(const char* dir) {
  mdevkit_fuzz::SeedWriter w(dir);
  std::vector<uint64_t> vga = {Buf(0, 1, 0x3c0, 0x20), Buf(0, 2, 0x3c4, 0x0f02), Buf(1, 4, 0xa0000, 0x11223344), Buf(1, 1, 0xa0004, 0x55)};
  std::vector<uint64_t> wide = {Buf(1, 8, 0xa0010, 0x89abcdef), Buf(1, 8, 0, 0x01234567)};
  for (int atomic = 0; atomic < 2; atomic++) {
    Script s;
    s.U8(static_cast<uint8_t>(atomic)).U8(0).U16(0).U8(0).U16(0);
    Publish(s, vga);
    Drain(s, vga.size());
    Publish(s, wide);
    Drain(s, 1);
    w.Write(atomic ? "vga-atomic" : "vga-legacy", s.bytes());
  }
  {
    // Pointers about to wrap around 2^32, and the ring's end.
    Script s;
    s.U8(1).U8(1).U32(0xfffffffe).U8(0).U16(0);
    Publish(s, vga);
    Publish(s, wide);
    Drain(s, 5);
    w.Write("wrapping-pointers", s.bytes());
  }
  {
    // Half of an 8-byte write, then the rest; a read entry; torn pointers.
    Script s;
    s.U8(0).U8(0).U16(500).U8(0).U16(0);
    Publish(s, {wide[0]});
    Drain(s, 0);
    Publish(s, {wide[1], Buf(1, 4, 0x10, 1, true)});
    Drain(s, 2);
    s.U8(5).U64(0x0000100000000000ull);
    Drain(s, 0);
    w.Write("torn", s.bytes());
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
  Run(in);
  return 0;
}
