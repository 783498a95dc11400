// Dirty-page tracking shared by both transports: device DMA (vfio-user DMA logging) marks pages,
// migration reports and clears them in the VFIO DMA-logging layout, and Xen's track_dirty_vram
// bitmap is OR-ed in.
//
// Layout: one bit per tracked page in u64 words, page i = bit (i % 64) of word i / 64, the same as
// the VFIO report (u64 words, bit i = page i, LSB first). Bits past pageCount in the last word are
// never set by this code and are masked off on every read, so a shared backing whose tail holds
// garbage cannot leak phantom pages.
//
// Concurrency: every operation on DirtyBitmapCore may run on any thread at the same time as any
// other. A mark is one atomic RMW per word (release), a report-and-clear is one atomic exchange (or
// fetch-and when only part of a word is reported) per non-zero word (acquire). Hence a mark is
// either returned by exactly the report that clears it or is still set afterwards: no dirty bit is
// ever lost. Release/acquire pairs the mark with the write it records: mark a page *after* writing
// it, and a reporter that sees (and clears) the bit and then copies the page sees that write.
#pragma once

#include <napi.h>

#include "core/dirty_bitmap_core.h"

namespace mdevkit {

// ---- For other native modules ------------------------------------------------------------------

// The core of the JS DirtyBitmap `value`; throws a TypeError (ERR_INVALID_ARG_TYPE) naming `field`
// when value is anything else, including objects that merely inherit DirtyBitmap.prototype.
// The pointer is valid while the JS object is alive: to use it beyond the current call (from
// another thread, say), hold a DirtyBitmapRef.
DirtyBitmapCore* UnwrapDirtyBitmap(Napi::Env env, Napi::Value value, const char* field);

// A strong reference to a JS DirtyBitmap that keeps its core (and backing) alive. Create, Reset
// and destroy it on the JS thread of that object; core() may be used from any thread meanwhile.
class DirtyBitmapRef {
 public:
  DirtyBitmapRef() = default;
  DirtyBitmapRef(Napi::Env env, Napi::Value value, const char* field);
  DirtyBitmapRef(DirtyBitmapRef&& other) noexcept;
  DirtyBitmapRef& operator=(DirtyBitmapRef&& other) noexcept;

  DirtyBitmapCore* core() const { return core_; }
  explicit operator bool() const { return core_ != nullptr; }
  void Reset();

 private:
  Napi::ObjectReference ref_;
  DirtyBitmapCore* core_ = nullptr;
};

}  // namespace mdevkit
