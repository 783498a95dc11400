// Finds the pages of a buffer that changed since the last scan, by a 64-bit hash per page. This is
// how a display learns what the guest drew into VRAM it maps directly (vfio-user mmap): those
// writes never trap, so nobody else can tell.
#include <cstring>

#include "dirty_bitmap.h"
#include "errors.h"
#include "modules.h"

namespace mdevkit {

namespace {

// FNV-1a over 64-bit words: fast, and a change of any word changes the hash with overwhelming
// probability (a missed update only leaves one stale page until it changes again).
uint64_t HashPage(const uint8_t* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  size_t words = n / 8;
  for (size_t i = 0; i < words; i++) {
    uint64_t w;
    std::memcpy(&w, p + i * 8, 8);
    h = (h ^ w) * 0x100000001b3ULL;
  }
  for (size_t i = words * 8; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

// scanPages(bytes, pageSize, hashes: BigUint64Array, dirty?: DirtyBitmap) → changed page count.
// Updates `hashes` and marks changed pages in `dirty`.
Napi::Value ScanPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ByteView bytes = ArgBytes(info, 0, "bytes");
  uint32_t page_size = ArgU32(info, 1, "pageSize");
  if (page_size < 64 || (page_size & (page_size - 1)) != 0) ThrowInvalid(env, "pageSize", "must be a power of two >= 64");
  if (info.Length() < 3 || !info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array) {
    ThrowTypeError(env, "hashes", "a BigUint64Array");
  }
  ByteView hashes_view = ValueBytes(env, info[2], "hashes");
  size_t pages = (bytes.length + page_size - 1) / page_size;
  if (hashes_view.length / 8 < pages) ThrowRangeError(env, "hashes", "needs one entry per page");
  DirtyBitmapCore* dirty = nullptr;
  if (info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull()) {
    dirty = UnwrapDirtyBitmap(env, info[3], "dirty");
    if (dirty->page_count() < pages) ThrowRangeError(env, "dirty", "has fewer pages than bytes");
  }
  uint64_t changed = 0;
  for (size_t i = 0; i < pages; i++) {
    size_t len = std::min<size_t>(page_size, bytes.length - i * page_size);
    uint64_t h = HashPage(bytes.data + i * page_size, len);
    uint64_t old;
    std::memcpy(&old, hashes_view.data + i * 8, 8);
    if (h == old) continue;
    std::memcpy(hashes_view.data + i * 8, &h, 8);
    changed++;
    if (dirty != nullptr) {
      DirtyStatus st = dirty->MarkPage(i);
      (void)st;
    }
  }
  return Napi::Number::New(env, static_cast<double>(changed));
}

}  // namespace

void InitPageScan(Napi::Env env, Napi::Object exports) { exports.Set("scanPages", Napi::Function::New(env, ScanPages, "scanPages")); }

}  // namespace mdevkit
