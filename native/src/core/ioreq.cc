#include "core/ioreq.h"

#include <cstring>

namespace mdevkit {

bool TakeIoreq(XenIoreq* slot, XenIoreq* req) {
  uint8_t bits = __atomic_load_n(&slot->bits, __ATOMIC_ACQUIRE);
  if ((bits & kIoreqStateMask) != kStateIoreqReady) return false;
  // Read every field once, after the acquire above; later changes by the guest are ignored.
  *req = XenIoreq{};
  req->addr = __atomic_load_n(&slot->addr, __ATOMIC_RELAXED);
  req->data = __atomic_load_n(&slot->data, __ATOMIC_RELAXED);
  req->count = __atomic_load_n(&slot->count, __ATOMIC_RELAXED);
  req->size = __atomic_load_n(&slot->size, __ATOMIC_RELAXED);
  req->type = __atomic_load_n(&slot->type, __ATOMIC_RELAXED);
  req->bits = bits;
  __atomic_store_n(&slot->bits, static_cast<uint8_t>((bits & ~kIoreqStateMask) | kStateIoreqInprocess), __ATOMIC_RELAXED);
  return true;
}

void CompleteIoreq(XenIoreq* slot, const XenIoreq& req, uint64_t data) {
  // With data_is_ptr, `data` is the guest buffer's address, not a value: leave it alone.
  if ((req.bits & kIoreqDirRead) && !(req.bits & kIoreqDataIsPtr)) __atomic_store_n(&slot->data, data, __ATOMIC_RELAXED);
  __atomic_store_n(&slot->bits, static_cast<uint8_t>((req.bits & ~kIoreqStateMask) | kStateIorespReady), __ATOMIC_RELEASE);
}

IoreqRoute IoreqRouter::Route(const XenIoreq& req) const {
  uint32_t size = req.size;
  if (size != 1 && size != 2 && size != 4 && size != 8) return IoreqRoute{IoreqRoute::kBadSize, 0, 0};
  bool simple = req.count == 1 && !(req.bits & kIoreqDataIsPtr);
  if (simple && (req.type == kIoreqTypePio || req.type == kIoreqTypeCopy)) {
    bool pio = req.type == kIoreqTypePio;
    for (const IoreqRange& r : ranges_) {
      if (r.pio == pio && req.addr >= r.start && req.addr <= r.end && size - 1 <= r.end - req.addr) {
        return IoreqRoute{IoreqRoute::kRegion, r.region, r.offset + (req.addr - r.start)};
      }
    }
  }
  if (simple && req.type == kIoreqTypePciConfig) {
    uint32_t sbdf = static_cast<uint32_t>(req.addr >> 32);
    uint32_t reg = static_cast<uint32_t>(req.addr & 0xffffffffu);
    if (static_cast<int64_t>(sbdf) == pci_sbdf_ && reg < config_size_ && size <= config_size_ - reg && size <= 4) {
      return IoreqRoute{IoreqRoute::kRegion, 7, reg};
    }
  }
  return IoreqRoute{IoreqRoute::kSlow, 0, 0};
}

namespace {

void AdvanceRead(uint32_t* rp_ptr, uint32_t n, bool atomic) {
  // In atomic mode Xen may rebase both pointers concurrently: the read pointer is only ever
  // advanced with an atomic add. In legacy mode a release store suffices.
  if (atomic) __atomic_fetch_add(rp_ptr, n, __ATOMIC_RELEASE);
  else __atomic_store_n(rp_ptr, __atomic_load_n(rp_ptr, __ATOMIC_RELAXED) + n, __ATOMIC_RELEASE);
}

}  // namespace

bool BufferedRingPending(const uint8_t* page) {
  uint64_t both = __atomic_load_n(reinterpret_cast<const uint64_t*>(page), __ATOMIC_ACQUIRE);
  return static_cast<uint32_t>(both) != static_cast<uint32_t>(both >> 32);
}

uint32_t DrainBufferedRing(uint8_t* page, bool atomic, BufferedIoreqSink& sink) {
  auto* rp_ptr = reinterpret_cast<uint32_t*>(page);
  auto* pointers = reinterpret_cast<uint64_t*>(page);  // page-aligned: an aligned 8-byte word
  const uint8_t* slots = page + kBufPagePointers;
  uint32_t consumed = 0;
  // At most one ring's worth of entries per call. The ring never holds more than 511, so this
  // covers every entry published before the call; one published during it brings a notification
  // of its own. Unbounded, a producer that keeps the ring non-empty would hold the server here
  // for ever, and the synchronous ioreq this drain runs ahead of would never be served.
  for (uint32_t budget = kBufIoreqSlots; budget > 0; budget--) {
    // Both pointers in one 64-bit load (the `full` word of Xen's union bufioreq_pointers). In
    // atomic mode Xen rebases them together with one cmpxchg on that word while we drain; two
    // 32-bit loads straddling it see a read pointer from before and a write pointer from after,
    // 511 apart, and the resynchronisation below would then skip live entries or replay old ones.
    uint64_t both = __atomic_load_n(pointers, __ATOMIC_ACQUIRE);
    uint32_t rp = static_cast<uint32_t>(both);  // read_pointer: the low half (little-endian host)
    uint32_t wp = static_cast<uint32_t>(both >> 32);
    if (rp == wp) break;
    if (wp - rp > kBufIoreqSlots) {
      // Pointers the guest side could only corrupt: resynchronise instead of looping.
      sink.OnBadPointers();
      AdvanceRead(rp_ptr, wp - rp, atomic);
      break;
    }
    const uint8_t* s = slots + (rp % kBufIoreqSlots) * 8;
    uint8_t type = s[0];
    uint8_t flags = s[1];
    uint32_t word0;
    std::memcpy(&word0, s, 4);
    uint32_t lo;
    std::memcpy(&lo, s + 4, 4);
    uint32_t size = 1u << ((flags >> 2) & 3);
    uint32_t used = 1;
    uint64_t data = lo;
    if (size == 8) {
      if (wp - rp < 2) break;  // the second half is not written yet
      uint32_t hi;
      std::memcpy(&hi, slots + ((rp + 1) % kBufIoreqSlots) * 8 + 4, 4);
      data |= static_cast<uint64_t>(hi) << 32;
      used = 2;
    }
    if (flags & 0x2) {
      sink.OnReadEntry();
    } else {
      XenIoreq req{};
      req.addr = word0 >> 12;
      req.data = data;
      req.count = 1;
      req.size = size;
      req.type = type;
      req.bits = kStateIoreqReady;
      sink.OnWrite(req);
    }
    AdvanceRead(rp_ptr, used, atomic);
    consumed += used;
  }
  return consumed;
}

}  // namespace mdevkit
