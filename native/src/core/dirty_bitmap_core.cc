#include "core/dirty_bitmap_core.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace mdevkit {

namespace {

// Bits set in a word. Zero words — most of a sparse bitmap — skip the count. On x86-64 the
// compiler builds a POPCNT version next to the baseline one and the loader picks whichever the
// CPU supports (the default baseline x86-64 build otherwise calls libgcc's software popcount).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("popcnt", "default")))
#endif
uint64_t PopCount(uint64_t x) {
  return x == 0 ? 0 : static_cast<uint64_t>(__builtin_popcountll(x));
}

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }
unsigned Log2(uint64_t pow2) { return static_cast<unsigned>(__builtin_ctzll(pow2)); }
std::string Str(uint64_t v) { return std::to_string(v); }

DirtyStatus Fail(int err, const char* field, std::string detail) { return DirtyStatus{err, field, std::move(detail)}; }

// The bits of word w that stand for pages in [lo, hi); w must overlap that range.
uint64_t RangeMask(uint64_t w, uint64_t lo, uint64_t hi) {
  const uint64_t base = w * 64;
  const uint64_t from = lo > base ? lo - base : 0;
  const uint64_t to = hi - base < 64 ? hi - base : 64;
  const uint64_t upto = to == 64 ? ~uint64_t{0} : (uint64_t{1} << to) - 1;
  return upto & ~((uint64_t{1} << from) - 1);
}

// ---- The report buffer: u64 words in host order at any byte alignment ----------------------------

uint64_t LoadOut(const uint8_t* out, uint64_t j) {
  uint64_t v;
  std::memcpy(&v, out + j * 8, 8);
  return v;
}
void StoreOut(uint8_t* out, uint64_t j, uint64_t v) { std::memcpy(out + j * 8, &v, 8); }

// ORs the 64 bits v into the output starting at bit pos. Bits of v must land on output bits the
// buffer holds (callers only pass bits that stand for in-range output bits).
void OrOutAt(uint8_t* out, uint64_t pos, uint64_t v) {
  const uint64_t j = pos >> 6;
  const unsigned s = pos & 63;
  StoreOut(out, j, LoadOut(out, j) | (v << s));
  if (s != 0 && (v >> (64 - s)) != 0) StoreOut(out, j + 1, LoadOut(out, j + 1) | (v >> (64 - s)));
}

void SetOutRun(uint8_t* out, uint64_t start, uint64_t len) {
  while (len != 0) {
    const uint64_t j = start >> 6;
    const unsigned s = start & 63;
    const uint64_t n = std::min<uint64_t>(64 - s, len);
    const uint64_t ones = n == 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1;
    StoreOut(out, j, LoadOut(out, j) | (ones << s));
    start += n;
    len -= n;
  }
}

// Bytes in the LSB-first order of a foreign bitmap, as one u64 (n <= 8 bytes; missing ones are 0).
uint64_t LoadLsbFirst(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

}  // namespace

// ---- DirtyBitmapCore ------------------------------------------------------------------------------

DirtyStatus DirtyBitmapCore::Validate(uint64_t page_count, uint64_t page_size) {
  if (page_count < 1 || page_count > kMaxPageCount) {
    return Fail(ERANGE, "pageCount", "must be in [1, 2^34], got " + Str(page_count));
  }
  if (!IsPowerOfTwo(page_size) || page_size < kMinPageSize || page_size > kMaxPageSize) {
    return Fail(EINVAL, "pageSize", "must be a power of two in [512, 2^30], got " + Str(page_size));
  }
  if (page_count > kMaxTrackedBytes >> Log2(page_size)) {
    return Fail(ERANGE, "pageCount",
                Str(page_count) + " pages of " + Str(page_size) + " bytes exceed the 2^53-byte tracked space");
  }
  return {};
}

uint64_t DirtyBitmapCore::ReportBytes(uint64_t length, uint64_t report_page_size) {
  if (report_page_size == 0) return 0;
  const uint64_t bits = length / report_page_size;
  return ((bits + 63) / 64) * 8;
}

DirtyBitmapCore::DirtyBitmapCore(uint64_t page_count, unsigned page_shift, uint64_t* words, bool owned)
    : page_count_(page_count),
      word_count_((page_count + 63) / 64),
      page_shift_(page_shift),
      owned_(owned),
      words_(words) {}

DirtyBitmapCore::~DirtyBitmapCore() {
  if (owned_) std::free(words_);
}

DirtyStatus DirtyBitmapCore::Create(uint64_t page_count, uint64_t page_size, std::unique_ptr<DirtyBitmapCore>* out) {
  DirtyStatus st = Validate(page_count, page_size);
  if (!st.ok()) return st;
  const uint64_t words = (page_count + 63) / 64;
  auto* storage = static_cast<uint64_t*>(std::calloc(words, sizeof(uint64_t)));
  auto* core = storage == nullptr ? nullptr : new (std::nothrow) DirtyBitmapCore(page_count, Log2(page_size), storage, true);
  if (core == nullptr) {
    std::free(storage);
    return Fail(ENOMEM, "pageCount", "cannot allocate " + Str(words * 8) + " bytes");
  }
  out->reset(core);
  return {};
}

DirtyStatus DirtyBitmapCore::Wrap(uint64_t page_count, uint64_t page_size, void* storage, size_t storage_bytes,
                                  std::unique_ptr<DirtyBitmapCore>* out) {
  DirtyStatus st = Validate(page_count, page_size);
  if (!st.ok()) return st;
  // Exact size: two bitmaps over one buffer must agree on pageCount, or one would see the other's
  // pages past its end.
  if (storage_bytes != StorageBytes(page_count)) {
    return Fail(EINVAL, "backing",
                "must be exactly " + Str(StorageBytes(page_count)) + " bytes for " + Str(page_count) +
                    " pages, got " + Str(storage_bytes));
  }
  if (storage == nullptr || reinterpret_cast<uintptr_t>(storage) % alignof(uint64_t) != 0) {
    return Fail(EINVAL, "backing", "must be 8-byte aligned");
  }
  auto* core = new (std::nothrow) DirtyBitmapCore(page_count, Log2(page_size), static_cast<uint64_t*>(storage), false);
  if (core == nullptr) return Fail(ENOMEM, "backing", "cannot allocate the bitmap");
  out->reset(core);
  return {};
}

bool DirtyBitmapCore::SharesStorageWith(const DirtyBitmapCore& other) const {
  const uintptr_t a = reinterpret_cast<uintptr_t>(words_), b = reinterpret_cast<uintptr_t>(other.words_);
  return a < b + other.word_count_ * 8 && b < a + word_count_ * 8;
}

// A shared backing may hold stray bits past pageCount in the last word; they are never pages.
uint64_t DirtyBitmapCore::ValidBits(uint64_t w) const {
  return w == word_count_ - 1 && (page_count_ & 63) != 0 ? (uint64_t{1} << (page_count_ & 63)) - 1 : ~uint64_t{0};
}

uint64_t DirtyBitmapCore::LoadWord(uint64_t w) const { return __atomic_load_n(&words_[w], __ATOMIC_RELAXED) & ValidBits(w); }

// Always the RMW, even when the bits look set already: skipping it would let a reporter that
// clears the bit (acquire) synchronise with an older mark only, and copy the page without the
// write this mark records.
void DirtyBitmapCore::OrWord(uint64_t w, uint64_t bits) { __atomic_fetch_or(&words_[w], bits, __ATOMIC_RELEASE); }

void DirtyBitmapCore::OrBitsAt(uint64_t first_page, uint64_t bits) {
  const uint64_t w = first_page >> 6;
  const unsigned s = first_page & 63;
  if ((bits << s) != 0) OrWord(w, bits << s);
  if (s != 0 && (bits >> (64 - s)) != 0) OrWord(w + 1, bits >> (64 - s));
}

uint64_t DirtyBitmapCore::TakeWord(uint64_t w, uint64_t read_mask, uint64_t clear_mask) {
  uint64_t* p = &words_[w];
  if (clear_mask == 0) return __atomic_load_n(p, __ATOMIC_ACQUIRE) & read_mask;
  // Most words of a large guest are clean: read before writing so they stay shared in every cache.
  // A mark that lands after this read is still set afterwards, for the next report.
  if ((__atomic_load_n(p, __ATOMIC_RELAXED) & read_mask) == 0) return 0;
  const uint64_t old = clear_mask == ~uint64_t{0} ? __atomic_exchange_n(p, uint64_t{0}, __ATOMIC_ACQUIRE)
                                                 : __atomic_fetch_and(p, ~clear_mask, __ATOMIC_ACQUIRE);
  return old & read_mask;
}

DirtyStatus DirtyBitmapCore::MarkPage(uint64_t page) {
  if (page >= page_count_) return Fail(ERANGE, "page", Str(page) + " >= pageCount " + Str(page_count_));
  OrWord(page >> 6, uint64_t{1} << (page & 63));
  return {};
}

DirtyStatus DirtyBitmapCore::MarkPages(uint64_t first, uint64_t count) {
  if (first > page_count_) return Fail(ERANGE, "first", Str(first) + " > pageCount " + Str(page_count_));
  if (count > page_count_ - first) {
    return Fail(ERANGE, "count", "pages [" + Str(first) + ", +" + Str(count) + ") run past pageCount " + Str(page_count_));
  }
  if (count == 0) return {};
  const uint64_t end = first + count;
  for (uint64_t w = first >> 6; w <= (end - 1) >> 6; ++w) OrWord(w, RangeMask(w, first, end));
  return {};
}

DirtyStatus DirtyBitmapCore::MarkBytes(uint64_t offset, uint64_t length) {
  const uint64_t size = tracked_bytes();
  if (offset > size) return Fail(ERANGE, "offset", Str(offset) + " is past the tracked " + Str(size) + " bytes");
  if (length > size - offset) {
    return Fail(ERANGE, "length", "bytes [" + Str(offset) + ", +" + Str(length) + ") run past the tracked " + Str(size));
  }
  if (length == 0) return {};
  const uint64_t first = offset >> page_shift_;
  const uint64_t last = (offset + length - 1) >> page_shift_;
  return MarkPages(first, last - first + 1);
}

DirtyStatus DirtyBitmapCore::Test(uint64_t page, bool* dirty) const {
  if (page >= page_count_) return Fail(ERANGE, "page", Str(page) + " >= pageCount " + Str(page_count_));
  *dirty = (LoadWord(page >> 6) >> (page & 63)) & 1;
  return {};
}

DirtyStatus DirtyBitmapCore::Count(uint64_t first, uint64_t count, uint64_t* dirty) const {
  if (first > page_count_) return Fail(ERANGE, "first", Str(first) + " > pageCount " + Str(page_count_));
  if (count > page_count_ - first) {
    return Fail(ERANGE, "count", "pages [" + Str(first) + ", +" + Str(count) + ") run past pageCount " + Str(page_count_));
  }
  uint64_t n = 0;
  if (count != 0) {
    const uint64_t end = first + count;
    for (uint64_t w = first >> 6; w <= (end - 1) >> 6; ++w) {
      n += PopCount(LoadWord(w) & RangeMask(w, first, end));
    }
  }
  *dirty = n;
  return {};
}

DirtyStatus DirtyBitmapCore::NextSet(uint64_t from_page, uint64_t end_page, uint64_t* page) const {
  if (from_page > page_count_) {
    return Fail(ERANGE, "fromPage", Str(from_page) + " > pageCount " + Str(page_count_));
  }
  if (end_page < from_page || end_page > page_count_) {
    return Fail(ERANGE, "endPage", "must be in [fromPage " + Str(from_page) + ", pageCount " + Str(page_count_) + "], got " + Str(end_page));
  }
  *page = kNoPage;
  if (from_page == end_page) return {};
  for (uint64_t w = from_page >> 6; w <= (end_page - 1) >> 6; ++w) {
    const uint64_t v = LoadWord(w) & RangeMask(w, from_page, end_page);
    if (v != 0) {
      *page = w * 64 + static_cast<uint64_t>(__builtin_ctzll(v));
      break;
    }
  }
  return {};
}

void DirtyBitmapCore::ClearAll() {
  for (uint64_t w = 0; w < word_count_; ++w) {
    if (__atomic_load_n(&words_[w], __ATOMIC_RELAXED) != 0) __atomic_store_n(&words_[w], uint64_t{0}, __ATOMIC_RELAXED);
  }
}

DirtyStatus DirtyBitmapCore::Report(uint64_t offset, uint64_t length, uint64_t report_page_size, uint8_t* out,
                                    size_t out_len, bool clear, uint64_t* set_bits) {
  if (!IsPowerOfTwo(report_page_size) || report_page_size < kMinPageSize || report_page_size > kMaxReportPageSize) {
    return Fail(EINVAL, "reportPageSize", "must be a power of two in [512, 2^62], got " + Str(report_page_size));
  }
  const uint64_t rmask = report_page_size - 1;
  if ((offset & rmask) != 0) {
    return Fail(EINVAL, "offset", Str(offset) + " is not a multiple of reportPageSize " + Str(report_page_size));
  }
  if ((length & rmask) != 0) {
    return Fail(EINVAL, "length", Str(length) + " is not a multiple of reportPageSize " + Str(report_page_size));
  }
  // The tracked space rounded up to whole report pages (<= 2^53 + 2^62: no overflow).
  const uint64_t span = (tracked_bytes() + rmask) & ~rmask;
  if (offset > span) return Fail(ERANGE, "offset", Str(offset) + " is past the tracked " + Str(tracked_bytes()) + " bytes");
  if (length > span - offset) {
    return Fail(ERANGE, "length", "bytes [" + Str(offset) + ", +" + Str(length) + ") run past the tracked " + Str(tracked_bytes()));
  }
  const uint64_t need = ReportBytes(length, report_page_size);
  if (out_len < need) {
    return Fail(ERANGE, "out", "needs " + Str(need) + " bytes for " + Str(length / report_page_size) + " bits, got " + Str(out_len));
  }
  const uintptr_t o = reinterpret_cast<uintptr_t>(out), b = reinterpret_cast<uintptr_t>(words_);
  if (need != 0 && o < b + byte_length() && b < o + need) return Fail(EINVAL, "out", "overlaps the bitmap's own storage");

  const unsigned p = page_shift_;
  const unsigned r = Log2(report_page_size);
  const uint64_t nbits = length >> r;
  const uint64_t end = offset + length;
  // Tracked pages the range touches, and those it clears (see the header for the rule).
  const uint64_t first = std::min(offset >> p, page_count_);
  const uint64_t stop = std::min((end + page_size() - 1) >> p, page_count_);
  uint64_t clear_first = first, clear_stop = stop;
  if (r < p) {
    clear_first = (offset + page_size() - 1) >> p;
    clear_stop = std::max(end >> p, clear_first);
  }
  if (!clear) clear_stop = clear_first;
  auto clear_mask = [&](uint64_t w) {
    if (clear_first == clear_stop || w * 64 >= clear_stop || w * 64 + 64 <= clear_first) return uint64_t{0};
    return RangeMask(w, clear_first, clear_stop);
  };

  uint64_t set = 0;
  if (r == p && (first & 63) == 0) {
    // Same granularity, word-aligned start: each output word is one tracked word. Words wholly
    // inside the range (and, when clearing, wholly cleared) take a tight loop: one relaxed load per
    // clean word, one exchange per dirty one. Partial words at the end take the general path.
    const uint64_t words = need / 8;
    const uint64_t base = first >> 6;
    uint64_t full = std::min(words, (stop - first) >> 6);
    if (clear && (clear_first != first || clear_stop != stop)) full = 0;
    for (uint64_t j = 0; j < full; ++j) {
      uint64_t* wp = &words_[base + j];
      uint64_t x = __atomic_load_n(wp, clear ? __ATOMIC_RELAXED : __ATOMIC_ACQUIRE);
      if (x != 0 && clear) x = __atomic_exchange_n(wp, uint64_t{0}, __ATOMIC_ACQUIRE);
      StoreOut(out, j, x);
      set += PopCount(x);
    }
    for (uint64_t j = full; j < words; ++j) {
      const uint64_t w = base + j;
      const uint64_t x = w * 64 < stop ? TakeWord(w, RangeMask(w, first, stop), clear_mask(w)) : 0;
      StoreOut(out, j, x);
      set += PopCount(x);
    }
    *set_bits = set;
    return {};
  }

  if (need == 0) {  // an empty range; out may be an empty (null) view
    *set_bits = 0;
    return {};
  }
  std::memset(out, 0, need);
  if (first < stop) {
    const uint64_t out_base = offset >> r;  // absolute report page of output bit 0
    for (uint64_t w = first >> 6; w <= (stop - 1) >> 6; ++w) {
      uint64_t x = TakeWord(w, RangeMask(w, first, stop), clear_mask(w));
      if (x == 0) continue;
      const uint64_t base = w * 64;  // page of bit 0 of x
      if (r == p) {
        if (base >= first) {
          OrOutAt(out, base - first, x);
        } else {
          OrOutAt(out, 0, x >> (first - base));
        }
      } else if (r > p) {
        // 2^g tracked pages per output bit. Groups start at multiples of 2^g (offset is a
        // multiple of the report page), so page q is output bit (q >> g) - out_base.
        const unsigned g = r - p;
        if (g >= 6) {
          // The whole word lies in one group.
          const uint64_t bit = (base >> g) - out_base;
          StoreOut(out, bit >> 6, LoadOut(out, bit >> 6) | (uint64_t{1} << (bit & 63)));
          // Without clearing, the rest of the group cannot change that bit: skip it.
          if (!clear) w = std::max(w, ((((base >> g) + 1) << g) >> 6) - 1);
        } else {
          const uint64_t group = (uint64_t{1} << (1u << g)) - 1;  // 2^g ones, g < 6
          while (x != 0) {
            const unsigned b = static_cast<unsigned>(__builtin_ctzll(x));
            const uint64_t bit = ((base + b) >> g) - out_base;
            StoreOut(out, bit >> 6, LoadOut(out, bit >> 6) | (uint64_t{1} << (bit & 63)));
            x &= ~(group << (b & ~((1u << g) - 1)));  // done with b's group
          }
        }
      } else {
        // 2^h output bits per tracked page; a page partly outside the range sets only its part.
        const unsigned h = p - r;
        const uint64_t lo = out_base, hi = out_base + nbits;
        while (x != 0) {
          const unsigned b = static_cast<unsigned>(__builtin_ctzll(x));
          x &= x - 1;
          const uint64_t q = base + b;
          const uint64_t s = std::max(q << h, lo), e = std::min((q + 1) << h, hi);
          SetOutRun(out, s - lo, e - s);
        }
      }
    }
  }
  for (uint64_t j = 0; j < need / 8; ++j) set += PopCount(LoadOut(out, j));
  *set_bits = set;
  return {};
}

DirtyStatus DirtyBitmapCore::MergeBits(uint64_t first_page, const uint8_t* bits, size_t bits_len, uint64_t bit_count) {
  if (first_page > page_count_) {
    return Fail(ERANGE, "firstPage", Str(first_page) + " > pageCount " + Str(page_count_));
  }
  if (bit_count > page_count_ - first_page) {
    return Fail(ERANGE, "bitCount", "pages [" + Str(first_page) + ", +" + Str(bit_count) + ") run past pageCount " + Str(page_count_));
  }
  const uint64_t need = (bit_count + 7) / 8;
  if (bits_len < need) {
    return Fail(ERANGE, "bits", "needs " + Str(need) + " bytes for " + Str(bit_count) + " bits, got " + Str(bits_len));
  }
  for (uint64_t k = 0; k * 64 < bit_count; ++k) {
    const uint64_t n = std::min<uint64_t>(64, bit_count - k * 64);
    uint64_t v = LoadLsbFirst(bits + k * 8, static_cast<size_t>((n + 7) / 8));
    if (n < 64) v &= (uint64_t{1} << n) - 1;
    if (v != 0) OrBitsAt(first_page + k * 64, v);
  }
  return {};
}

DirtyStatus DirtyBitmapCore::MergeBitmap(const DirtyBitmapCore& other, uint64_t first_page) {
  if (other.page_shift_ != page_shift_) {
    return Fail(EINVAL, "other", "page size " + Str(other.page_size()) + " differs from " + Str(page_size()));
  }
  if (SharesStorageWith(other)) return Fail(EINVAL, "other", "shares storage with this bitmap");
  if (other.page_count_ > page_count_) {
    return Fail(ERANGE, "other", Str(other.page_count_) + " pages do not fit in " + Str(page_count_));
  }
  if (first_page > page_count_ - other.page_count_) {
    return Fail(ERANGE, "firstPage", Str(other.page_count_) + " pages at " + Str(first_page) + " run past pageCount " + Str(page_count_));
  }
  for (uint64_t w = 0; w < other.word_count_; ++w) {
    // Acquire, so whoever reports this bitmap's copy of a mark also sees the write it records.
    const uint64_t v = __atomic_load_n(&other.words_[w], __ATOMIC_ACQUIRE) & other.ValidBits(w);
    if (v != 0) OrBitsAt(first_page + w * 64, v);
  }
  return {};
}

}  // namespace mdevkit
