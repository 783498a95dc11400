// Fuzz target: the synchronous ioreq page of a Xen IOREQ server (core/ioreq.h) against a hostile
// guest (or Xen) that writes any byte of any vCPU's slot at any time — also while the server is
// serving that slot — and notifies whenever it likes.
//
// The engine's serve path is reproduced from the cores: take the slot, route it (region map, or
// the slow path's stand-in), complete it. Checked:
// - a slot is acted on only when its state read READY, and at most once per READY;
// - while served it reads INPROCESS; afterwards IORESP_READY, with every other bit of that byte
//   as it was taken; nothing but the state (and, for a plain read, the data) is written;
// - a read of a bad size completes with all-ones; data_is_ptr leaves data alone;
// - routing agrees with a model of the claimed ranges and the config-space rule, computed with
//   128-bit arithmetic (a range ending at 2^64 - 1, an access crossing its end);
// - reads served natively return what the region map holds (compared with a plain copy).
#include <cerrno>
#include <vector>

#include "core/ioreq.h"
#include "core/masked_storage.h"
#include "core/region_map.h"
#include "fuzz_input.h"

using namespace mdevkit;
using mdevkit_fuzz::FuzzInput;

namespace {

using u128 = unsigned __int128;

struct Harness {
  FuzzInput& in;
  uint32_t nr_vcpus = 1;
  std::vector<XenIoreq> page;  // the shared page: one slot per vCPU
  RegionMap map;
  std::vector<uint8_t> regs;   // region 0: masked, no hooks, all RW
  std::vector<uint8_t> config; // region 7
  IoreqRouter router;
  std::vector<IoreqRange> ranges;
  int64_t sbdf = -1;
  uint32_t config_size = 256;
  uint32_t serving = UINT32_MAX;  // vCPU being served
  uint64_t executions = 0;

  explicit Harness(FuzzInput& i) : in(i) {}

  void Setup() {
    nr_vcpus = 1 + in.U8() % 4;
    page.assign(nr_vcpus, XenIoreq{});
    size_t got = 0;
    const uint8_t* p = in.Bytes(nr_vcpus * sizeof(XenIoreq), &got);
    std::memcpy(page.data(), p, got);
    regs.assign(256 * kPlaneCount, 0);
    for (size_t i = 0; i < 256; i++) {
      regs[i] = static_cast<uint8_t>(i);
      regs[kPlaneWritable * 256 + i] = 0xff;
    }
    config.assign(4096 * kPlaneCount, 0);
    for (size_t i = 0; i < 4096; i++) config[kPlaneWritable * 4096 + i] = 0xff;
    map.Set(0, RegionEntry{256, true, true, {RegionSegment{0, 256, RegionSegment::kMasked, regs.data(), 256, 0}}});
    map.Set(7, RegionEntry{4096, true, true, {RegionSegment{0, 4096, RegionSegment::kMasked, config.data(), 4096, 0}}});
    size_t n = in.U8() % 5;
    for (size_t i = 0; i < n; i++) {
      IoreqRange r;
      r.pio = in.Bool();
      r.start = in.Edgy();
      uint64_t len = in.U8() & 1 ? in.Edgy() : in.U16();
      r.end = r.start + len;
      r.region = in.U8() & 1 ? 0 : in.U8();
      r.offset = in.U8() & 1 ? in.Edgy() : in.U8();
      if (r.end < r.start) continue;  // setRanges refuses it
      ranges.push_back(r);
    }
    router.SetRanges(ranges);
    uint8_t k = in.U8();
    sbdf = k & 1 ? -1 : static_cast<int64_t>(in.U32() & (k & 2 ? 0xffffffffu : 0x28u));
    config_size = k & 4 ? 4096 : 256;
    router.SetPciDevice(sbdf, config_size);
  }

  // The model of routing.
  IoreqRoute ModelRoute(const XenIoreq& r) const {
    if (r.size != 1 && r.size != 2 && r.size != 4 && r.size != 8) return IoreqRoute{IoreqRoute::kBadSize, 0, 0};
    bool single = r.count == 1 && !(r.bits & kIoreqDataIsPtr);
    if (single && (r.type == kIoreqTypePio || r.type == kIoreqTypeCopy)) {
      for (const IoreqRange& g : ranges) {
        if (g.pio == (r.type == kIoreqTypePio) && r.addr >= g.start && u128(r.addr) + r.size - 1 <= g.end) {
          return IoreqRoute{IoreqRoute::kRegion, g.region, g.offset + (r.addr - g.start)};
        }
      }
    }
    if (single && r.type == kIoreqTypePciConfig && sbdf >= 0 && (r.addr >> 32) == static_cast<uint64_t>(sbdf) &&
        u128(r.addr & 0xffffffffu) + r.size <= config_size && r.size <= 4) {
      return IoreqRoute{IoreqRoute::kRegion, 7, r.addr & 0xffffffffu};
    }
    return IoreqRoute{IoreqRoute::kSlow, 0, 0};
  }

  // The guest writes bytes of a slot (any field, the state included).
  void GuestWrite(uint32_t vcpu) {
    size_t off = in.U8() % sizeof(XenIoreq);
    size_t len = 1 + in.U8() % 8;
    if (off + len > sizeof(XenIoreq)) len = sizeof(XenIoreq) - off;
    size_t got = 0;
    const uint8_t* p = in.Bytes(len, &got);
    std::memcpy(reinterpret_cast<uint8_t*>(&page[vcpu]) + off, p, got);
  }

  uint64_t Execute(uint32_t vcpu, const XenIoreq& req, bool* raced) {
    executions++;
    // Served once, and the guest sees INPROCESS meanwhile (unless it wrote the byte itself).
    FUZZ_CHECK((page[vcpu].bits & kIoreqStateMask) == kStateIoreqInprocess);
    FUZZ_CHECK(page[vcpu].bits == ((req.bits & ~kIoreqStateMask) | kStateIoreqInprocess));
    if (in.U8() == 0x5a) {
      // The guest races the server: whatever it writes now must not change what is served.
      GuestWrite(vcpu);
      *raced = true;
    }
    bool read = (req.bits & kIoreqDirRead) != 0;
    IoreqRoute route = router.Route(req);
    IoreqRoute want = ModelRoute(req);
    FUZZ_CHECK(route.kind == want.kind);
    if (route.kind == IoreqRoute::kBadSize) return read ? IoreqAllOnes(8) : 0;
    if (route.kind == IoreqRoute::kSlow) return read ? in.U64() & IoreqAllOnes(req.size) : req.data;
    FUZZ_CHECK(route.region == want.region && route.offset == want.offset);
    uint8_t buf[8];
    std::memcpy(buf, &req.data, 8);
    int err = map.AccessNative(route.region, route.offset, buf, req.size, !read);
    if (err != 0) return read ? IoreqAllOnes(req.size) : 0;
    if (!read) return req.data;
    // What the region holds, read straight from the value plane.
    const std::vector<uint8_t>& store = route.region == 7 ? config : regs;
    for (uint32_t i = 0; i < req.size; i++) FUZZ_CHECK(buf[i] == store[route.offset + i]);
    uint64_t out = 0;
    std::memcpy(&out, buf, req.size);
    return out;
  }

  void Notify(uint32_t vcpu) {
    XenIoreq before = page[vcpu];
    XenIoreq req;
    uint64_t n = executions;
    if (!TakeIoreq(&page[vcpu], &req)) {
      // Not READY: nothing happens at all.
      FUZZ_CHECK((before.bits & kIoreqStateMask) != kStateIoreqReady);
      FUZZ_CHECK(std::memcmp(&before, &page[vcpu], sizeof before) == 0);
      return;
    }
    FUZZ_CHECK((before.bits & kIoreqStateMask) == kStateIoreqReady);
    FUZZ_CHECK(req.addr == before.addr && req.data == before.data && req.count == before.count && req.size == before.size &&
               req.type == before.type && req.bits == before.bits);
    bool raced = false;
    uint64_t data = Execute(vcpu, req, &raced);
    FUZZ_CHECK(executions == n + 1);
    XenIoreq mid = page[vcpu];
    CompleteIoreq(&page[vcpu], req, data);
    XenIoreq after = page[vcpu];
    FUZZ_CHECK(after.bits == ((before.bits & ~kIoreqStateMask) | kStateIorespReady));
    bool plain_read = (req.bits & kIoreqDirRead) && !(req.bits & kIoreqDataIsPtr);
    FUZZ_CHECK(after.data == (plain_read ? data : mid.data));
    if (plain_read && req.size != 1 && req.size != 2 && req.size != 4 && req.size != 8) FUZZ_CHECK(data == ~0ULL);
    const XenIoreq& base = raced ? mid : before;
    FUZZ_CHECK(after.addr == base.addr && after.count == base.count && after.size == base.size && after.type == base.type &&
               after.vp_eport == base.vp_eport && after.pad0 == base.pad0);
    // Completed: a second notification finds nothing to do.
    XenIoreq again;
    FUZZ_CHECK(!TakeIoreq(&page[vcpu], &again));
  }

  void Run() {
    Setup();
    for (int ops = 0; ops < 256 && !in.empty(); ops++) {
      uint8_t op = in.U8();
      uint32_t vcpu = (op >> 2) % nr_vcpus;
      switch (op & 3) {
        case 0:
        case 1:
          Notify(vcpu);
          break;
        case 2:
          GuestWrite(vcpu);
          break;
        case 3:
          // The guest issues a fresh request: a whole slot, state READY.
          GuestWrite(vcpu);
          page[vcpu].bits = static_cast<uint8_t>((page[vcpu].bits & ~kIoreqStateMask) | kStateIoreqReady);
          Notify(vcpu);
          break;
      }
    }
  }
};

// ---- seeds: the ioreqs a guest's vCPUs issue --------------------------------------------------

using mdevkit_fuzz::Script;

XenIoreq Req(uint64_t addr, uint64_t data, uint32_t size, uint8_t type, bool read, uint32_t count = 1, bool ptr = false) {
  XenIoreq r{};
  r.addr = addr;
  r.data = data;
  r.count = count;
  r.size = size;
  r.vp_eport = 7;
  r.type = type;
  r.bits = static_cast<uint8_t>(kStateIoreqReady | (read ? kIoreqDirRead : 0) | (ptr ? kIoreqDataIsPtr : 0));
  return r;
}

constexpr uint64_t kBar = 0xfe000000;
constexpr uint64_t kSbdf = 0x28;  // 00:05.0

// Two vCPUs with these slots; BAR0 claimed at kBar (MMIO) and ports 0xc000-0xc01f; the device at 00:05.0.
void Setup(Script& s, const XenIoreq& a, const XenIoreq& b) {
  s.U8(1).Bytes(&a, sizeof a).Bytes(&b, sizeof b);
  s.U8(2);
  s.U8(0).U8(5).U64(kBar).U8(0).U16(0xff).U8(1).U8(0).U8(0);
  s.U8(1).U8(5).U64(0xc000).U8(0).U16(0x1f).U8(1).U8(0).U8(0x10);
  s.U8(2).U32(kSbdf);
}

// The guest fills a whole slot (8-byte writes) and marks it READY; the server serves it.
void Issue(Script& s, uint32_t vcpu, const XenIoreq& r, bool slow) {
  const uint8_t* b = reinterpret_cast<const uint8_t*>(&r);
  for (int off = 0; off < 32; off += 8) s.U8(static_cast<uint8_t>(2 | (vcpu << 2))).U8(static_cast<uint8_t>(off)).U8(7).Bytes(b + off, 8);
  s.U8(static_cast<uint8_t>(3 | (vcpu << 2))).U8(30).U8(0).U8(r.bits);
  s.U8(0);  // no race
  if (slow) s.U64(0x1234);
}

void WriteSeeds(const char* dir) {
  mdevkit_fuzz::SeedWriter w(dir);
  XenIoreq mmio_read = Req(kBar + 4, 0, 4, kIoreqTypeCopy, true);
  XenIoreq cfg_read = Req(kSbdf << 32, 0, 4, kIoreqTypePciConfig, true);
  {
    Script s;
    Setup(s, mmio_read, cfg_read);
    s.U8(0).U8(0).U8(4).U8(0);  // notify both: served natively
    s.U8(0).U8(4);              // notify again: nothing READY
    Issue(s, 0, Req(kBar + 8, 0x11223344, 4, kIoreqTypeCopy, false), false);
    Issue(s, 1, Req(kBar + 8, 0, 4, kIoreqTypeCopy, true), false);
    Issue(s, 0, Req(kBar + 16, 0x1122334455667788, 8, kIoreqTypeCopy, false), false);
    Issue(s, 1, Req(0xc004, 0xab, 1, kIoreqTypePio, false), false);
    Issue(s, 0, Req((kSbdf << 32) | 4, 0x6, 2, kIoreqTypePciConfig, false), false);
    w.Write("native-accesses", s.bytes());
  }
  {
    Script s;
    Setup(s, Req(kBar, 0x10000, 4, kIoreqTypeCopy, false, 16, true), Req(0xcf8, 0x80002800, 4, kIoreqTypePio, false));
    s.U8(0).U8(0).U64(0).U8(4).U8(0).U64(0);  // a rep copy and the 0xCF8 latch: the slow path
    Issue(s, 0, Req(0, 0, 0, kIoreqTypeInvalidate, false), true);
    Issue(s, 1, Req(kBar, 0, 3, kIoreqTypeCopy, true), false);  // a bad size: all-ones
    Issue(s, 0, Req(kBar + 0xfe, 0, 4, kIoreqTypeCopy, true), true);  // crosses the claimed end
    Issue(s, 1, Req((kSbdf << 32) | 0xfe, 0, 4, kIoreqTypePciConfig, true), true);
    w.Write("slow-path", s.bytes());
  }
  {
    // The guest rewrites the slot while it is being served.
    Script s;
    Setup(s, mmio_read, cfg_read);
    s.U8(0).U8(0x5a).U8(0).U8(8).Bytes(&cfg_read, 8);
    s.U8(4).U8(0x5a).U8(30).U8(1).U8(0x21);
    w.Write("racing-guest", s.bytes());
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
