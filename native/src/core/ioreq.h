// The guest-controlled half of the Xen IOREQ server, free of N-API so that the fuzzers
// (native/fuzz/) run the very code the engine (ioreq_engine.cc) runs: the synchronous slot's state
// machine, the routing of a single access to the region table, and the buffered ring.
//
// Shared-page discipline (XSA-262): a slot is acted on only when its state reads READY; its fields
// are read once, after an acquire load of the state; it moves READY → INPROCESS → IORESP_READY,
// the response data is stored before the IORESP_READY store (release). The page is untrusted: the
// guest (or a hostile Xen) may change any byte at any time.
#pragma once

#include <cstdint>
#include <vector>

#include "xen_ioreq.h"

namespace mdevkit {

// All-ones for an access of `size` bytes (what a failed read returns).
inline uint64_t IoreqAllOnes(uint32_t size) { return size >= 8 ? ~0ULL : ((1ULL << (size * 8)) - 1); }

// Takes the slot if (and only if) its state reads READY: copies its fields into *req once and
// moves it to INPROCESS. Returns false, touching nothing, otherwise (a slot is never acted on twice).
bool TakeIoreq(XenIoreq* slot, XenIoreq* req);

// Completes a slot taken as `req`: the data of a read (unless data_is_ptr: then the guest's buffer
// address stays) and then IORESP_READY with release ordering. The vCPU is notified afterwards.
void CompleteIoreq(XenIoreq* slot, const XenIoreq& req, uint64_t data);

// A guest address range claimed for a region: [start, end] (inclusive) maps to region `region`
// from `offset` on.
struct IoreqRange {
  bool pio;
  uint64_t start;
  uint64_t end;
  uint32_t region;
  uint64_t offset;
};

// Where a single access goes.
struct IoreqRoute {
  enum Kind { kBadSize, kRegion, kSlow } kind;
  uint32_t region;
  uint64_t offset;
};

class IoreqRouter {
 public:
  // Ranges with end < start must be refused by the caller.
  void SetRanges(std::vector<IoreqRange> ranges) { ranges_ = std::move(ranges); }
  // The device's SBDF (or -1) and config space size: single config accesses go to region 7.
  void SetPciDevice(int64_t sbdf, uint32_t config_size) {
    pci_sbdf_ = sbdf;
    config_size_ = config_size;
  }
  // A size other than 1/2/4/8 is kBadSize; a single (count 1, not data_is_ptr) PIO or MMIO access
  // inside a range, or config access of at most 4 bytes inside the device's config space, is
  // kRegion; everything else (rep/data_is_ptr copies, unclaimed addresses, INVALIDATE, ...) is
  // the slow path's.
  IoreqRoute Route(const XenIoreq& req) const;

 private:
  std::vector<IoreqRange> ranges_;
  int64_t pci_sbdf_ = -1;
  uint32_t config_size_ = 256;
};

// What the buffered ring's entries go to.
class BufferedIoreqSink {
 public:
  // A buffered write, as a synchronous ioreq of count 1 (addr is 20 bits, size 1/2/4/8).
  virtual void OnWrite(const XenIoreq& req) = 0;
  // An entry that asks for a read: buffered ioreqs are writes that need no response.
  virtual void OnReadEntry() = 0;
  // Pointers more than a ring apart, which only a corrupt guest side produces.
  virtual void OnBadPointers() = 0;

 protected:
  ~BufferedIoreqSink() = default;
};

// Drains the buffered ioreq page (read_pointer, write_pointer, 511 slots of 8 bytes) in order, at
// most one ring's worth (kBufIoreqSlots slots) per call, advancing read_pointer — atomically in
// atomic mode, where Xen may rebase both pointers at any time. An 8-byte write takes two slots
// (the second's data is the high half) and waits until both are published. Pointers more than a
// ring apart are resynchronised (read = write) and reported. Returns the slots consumed.
uint32_t DrainBufferedRing(uint8_t* page, bool atomic, BufferedIoreqSink& sink);
// Whether the ring holds entries not yet drained (both pointers read in one acquire load).
bool BufferedRingPending(const uint8_t* page);

}  // namespace mdevkit
