// The dirty-page tracking core, free of N-API so that the fuzzers (native/fuzz/) run the very
// code the JS class (dirty_bitmap.cc) runs. What it is for, its layout and its concurrency rules:
// see dirty_bitmap.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace mdevkit {

// Outcome of a DirtyBitmapCore operation. err is 0 on success, else EINVAL (malformed argument,
// e.g. a page size that is not a power of two) or ERANGE (a range past the end, a buffer too
// small), or ENOMEM from Create. field names the argument at fault, spelled as in the JS API.
struct DirtyStatus {
  int err = 0;
  const char* field = nullptr;
  std::string detail;

  bool ok() const { return err == 0; }
};

class DirtyBitmapCore {
 public:
  static constexpr uint64_t kMinPageSize = 512;
  static constexpr uint64_t kMaxPageSize = uint64_t{1} << 30;
  static constexpr uint64_t kMaxPageCount = uint64_t{1} << 34;
  // pageCount * pageSize is at most this, so every byte offset is a JS safe integer.
  static constexpr uint64_t kMaxTrackedBytes = uint64_t{1} << 53;
  static constexpr uint64_t kMaxReportPageSize = uint64_t{1} << 62;
  // NextSet's answer when no page in the range is dirty.
  static constexpr uint64_t kNoPage = UINT64_MAX;

  // Checks pageCount and pageSize as the constructors do.
  static DirtyStatus Validate(uint64_t page_count, uint64_t page_size);
  // Bytes of storage for pageCount pages: ceil(pageCount / 64) * 8.
  static uint64_t StorageBytes(uint64_t page_count) { return ((page_count + 63) / 64) * 8; }
  // Bytes a report of `length` bytes at `report_page_size` writes: ceil(bits / 64) * 8.
  static uint64_t ReportBytes(uint64_t length, uint64_t report_page_size);

  // A bitmap owning zeroed storage (calloc: untouched pages cost nothing).
  static DirtyStatus Create(uint64_t page_count, uint64_t page_size, std::unique_ptr<DirtyBitmapCore>* out);
  // A bitmap over caller-owned storage of exactly StorageBytes(page_count) bytes, 8-byte aligned,
  // which must outlive the core. The contents are kept (the storage may be shared with other cores
  // over the same memory, e.g. in other worker threads); errors name the field "backing".
  static DirtyStatus Wrap(uint64_t page_count, uint64_t page_size, void* storage, size_t storage_bytes,
                          std::unique_ptr<DirtyBitmapCore>* out);

  ~DirtyBitmapCore();
  DirtyBitmapCore(const DirtyBitmapCore&) = delete;
  DirtyBitmapCore& operator=(const DirtyBitmapCore&) = delete;

  uint64_t page_count() const { return page_count_; }
  uint64_t page_size() const { return uint64_t{1} << page_shift_; }
  unsigned page_shift() const { return page_shift_; }
  uint64_t tracked_bytes() const { return page_count_ << page_shift_; }
  uint64_t word_count() const { return word_count_; }
  uint64_t byte_length() const { return word_count_ * 8; }
  bool owns_storage() const { return owned_; }
  // True when both cores use (some of) the same memory.
  bool SharesStorageWith(const DirtyBitmapCore& other) const;

  // Marking. Ranges must lie within the bitmap: page < pageCount, first + count <= pageCount,
  // offset + length <= pageCount * pageSize (bytes; every page the range touches is marked, an
  // empty range marks nothing).
  [[nodiscard]] DirtyStatus MarkPage(uint64_t page);
  [[nodiscard]] DirtyStatus MarkPages(uint64_t first, uint64_t count);
  [[nodiscard]] DirtyStatus MarkBytes(uint64_t offset, uint64_t length);

  // Queries (a snapshot of each word; concurrent marks may or may not be seen).
  [[nodiscard]] DirtyStatus Test(uint64_t page, bool* dirty) const;
  [[nodiscard]] DirtyStatus Count(uint64_t first, uint64_t count, uint64_t* dirty) const;
  // The first dirty page in [from_page, end_page), or kNoPage. from_page <= end_page <= pageCount.
  [[nodiscard]] DirtyStatus NextSet(uint64_t from_page, uint64_t end_page, uint64_t* page) const;

  void ClearAll();

  // Writes the VFIO DMA-logging report of the byte range [offset, offset + length) into out:
  // u64 words in host order, bit i set when any tracked page overlapping
  // [offset + i * report_page_size, offset + (i + 1) * report_page_size) is dirty. report_page_size
  // is a power of two in [512, 2^62]; offset and length are multiples of it. The range lies within
  // the tracked space rounded up to report_page_size: only the last report page may overhang the
  // end, and the overhang counts as clean. out needs ReportBytes(length, report_page_size) bytes
  // (ERANGE "out" otherwise) and must not overlap the bitmap's storage (EINVAL "out"); exactly
  // those bytes are written, output bits past the range as 0.
  // *set_bits receives the number of set output bits.
  //
  // With clear, the reported pages are cleared atomically with reading them:
  //  - report_page_size >= page_size: every tracked page in the range is cleared;
  //  - report_page_size < page_size: a tracked page is cleared only when the range covers all of
  //    it. A page the range only partly covers is reported (its bits in the range are set) but
  //    stays dirty, so the report of its other part still sees it. A page is never cleared by a
  //    report that did not cover all the bytes it stands for.
  [[nodiscard]] DirtyStatus Report(uint64_t offset, uint64_t length, uint64_t report_page_size, uint8_t* out,
                                   size_t out_len, bool clear, uint64_t* set_bits);

  // ORs a foreign bitmap in: bit i (LSB-first bytes: bit i is bit i % 8 of byte i / 8, the layout of
  // Xen's unsigned long bitmaps on a little-endian host) marks page first_page + i, for
  // i < bit_count. Bits past bit_count in the last byte are ignored. first_page + bit_count <=
  // pageCount ("firstPage"/"bitCount"), bits_len >= ceil(bit_count / 8) ("bits").
  [[nodiscard]] DirtyStatus MergeBits(uint64_t first_page, const uint8_t* bits, size_t bits_len, uint64_t bit_count);
  // ORs all of `other` (same page size, separate storage; errors name "other") in at first_page.
  [[nodiscard]] DirtyStatus MergeBitmap(const DirtyBitmapCore& other, uint64_t first_page);

 private:
  DirtyBitmapCore(uint64_t page_count, unsigned page_shift, uint64_t* words, bool owned);

  uint64_t ValidBits(uint64_t w) const;
  uint64_t LoadWord(uint64_t w) const;
  void OrWord(uint64_t w, uint64_t bits);
  // ORs the 64 bits `bits` in starting at page `first_page` (any alignment).
  void OrBitsAt(uint64_t first_page, uint64_t bits);
  // Returns the dirty bits of word w under read_mask and clears those under clear_mask (a subset).
  uint64_t TakeWord(uint64_t w, uint64_t read_mask, uint64_t clear_mask);

  const uint64_t page_count_;
  const uint64_t word_count_;
  const unsigned page_shift_;
  const bool owned_;
  uint64_t* const words_;
};

}  // namespace mdevkit
