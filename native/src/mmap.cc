// Maps an fd (memfd guest RAM, a vfio-user DMA region, a privcmd foreign mapping) into an
// ArrayBuffer whose bytes are the mapping itself, so JS device models touch guest memory with no
// copies.
//
// Lifetime: every mapping has a heap record in a process-wide registry keyed by address. The
// ArrayBuffer's finalizer owns the record; munmap() unmaps early, detaches the ArrayBuffer and
// marks the record dead so the finalizer (which V8 still runs later) never unmaps a second time.
// The finalizer receives the record, not the address, because after an early munmap the kernel
// may hand the same address to a new mapping.
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "errors.h"
#include "modules.h"

namespace mdevkit {
namespace {

// Node 20's V8 refuses external ArrayBuffers above 4 GiB, and on that path runs our finalizer
// itself before reporting failure (freeing the record twice): refuse such lengths up front.
constexpr uint64_t kMaxMappingLength = 4ull << 30;

struct Mapping {
  void* addr = nullptr;
  size_t length = 0;
  napi_env env = nullptr;  // the env owning the ArrayBuffer (workers each have their own)
  napi_ref buffer = nullptr;  // weak: identifies the exact ArrayBuffer without keeping it alive
  bool live = false;          // guarded by g_mutex
};

// Worker threads may map concurrently, and a finalizer runs on its own env's thread.
std::mutex g_mutex;
std::unordered_map<uintptr_t, Mapping*> g_live;

size_t PageSize() {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return page;
}

void FinalizeMapping(napi_env env, void* /*data*/, void* hint) {
  Mapping* m = static_cast<Mapping*>(hint);
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (m->live) {
      g_live.erase(reinterpret_cast<uintptr_t>(m->addr));
      m->live = false;
      ::munmap(m->addr, m->length);
    }
  }
  if (m->buffer != nullptr) napi_delete_reference(env, m->buffer);
  delete m;
}

// The live mapping whose ArrayBuffer is exactly `value`, or an EINVAL error naming `field`.
// Caller holds g_mutex.
Mapping* FindLiveLocked(Napi::Env env, Napi::Value value, const char* field) {
  if (!value.IsArrayBuffer()) ThrowTypeError(env, field, "an ArrayBuffer returned by mmapFd()");
  Napi::ArrayBuffer ab = value.As<Napi::ArrayBuffer>();
  if (ab.IsDetached()) ThrowInvalid(env, field, "is detached (already unmapped)");
  auto it = g_live.find(reinterpret_cast<uintptr_t>(ab.Data()));
  if (it == g_live.end()) ThrowInvalid(env, field, "is not a live mapping created by mmapFd()");
  Mapping* m = it->second;
  if (m->env != static_cast<napi_env>(env) || m->length != ab.ByteLength()) {
    ThrowInvalid(env, field, "is not a live mapping created by mmapFd()");
  }
  napi_value registered = nullptr;
  if (napi_get_reference_value(env, m->buffer, &registered) != napi_ok || registered == nullptr ||
      !Napi::Value(env, registered).StrictEquals(value)) {
    ThrowInvalid(env, field, "is not a live mapping created by mmapFd()");
  }
  return m;
}

Napi::Value MmapFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uint64_t length = ArgU64(info, 1, "length");
  uint64_t offset = ArgU64(info, 2, "offset");
  bool writable = ArgBool(info, 3, "writable", true);
  bool shared = ArgBool(info, 4, "shared", true);

  if (length == 0) ThrowInvalid(env, "length", "must be > 0");
  if (length > kMaxMappingLength) ThrowRangeError(env, "length", "must be <= 4 GiB (the largest ArrayBuffer Node 20 accepts)");
  if (offset > static_cast<uint64_t>(INT64_MAX)) ThrowRangeError(env, "offset", "must be < 2^63");
  if (offset % PageSize() != 0) ThrowInvalid(env, "offset", "must be a multiple of the page size");

  struct stat st;
  if (::fstat(fd, &st) < 0) ThrowErrno(env, "fstat", errno);
  // Touching a page past the end of a regular file raises SIGBUS, which would kill the process
  // from inside ordinary JS. Refuse such mappings up front. (A file shrunk after mapping can
  // still do it; seal shared files with F_SEAL_SHRINK.) Device files report no size.
  if (S_ISREG(st.st_mode) &&
      (offset > static_cast<uint64_t>(st.st_size) || length > static_cast<uint64_t>(st.st_size) - offset)) {
    ThrowInvalid(env, "length", "offset + length is beyond the end of the file");
  }

  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  int flags = shared ? MAP_SHARED : MAP_PRIVATE;
  void* addr = ::mmap(nullptr, length, prot, flags, fd, static_cast<off_t>(offset));
  if (addr == MAP_FAILED) ThrowErrno(env, "mmap", errno);

  Mapping* m = new Mapping;
  m->addr = addr;
  m->length = length;
  m->env = env;

  napi_value result = nullptr;
  napi_status status = napi_create_external_arraybuffer(env, addr, length, FinalizeMapping, m, &result);
  if (status != napi_ok) {
    ::munmap(addr, length);
    delete m;
    // E.g. a runtime with the V8 sandbox, where external buffers are not allowed.
    if (status == napi_pending_exception) throw Napi::Error::New(env);
    ThrowInvalid(env, "fd", "the runtime refused an external ArrayBuffer for the mapping", ENOTSUP);
  }
  // From here the finalizer owns `m`; a failure must leave it consistent for that finalizer.
  if (napi_create_reference(env, result, 0, &m->buffer) != napi_ok) {
    m->buffer = nullptr;
    Napi::ArrayBuffer(env, result).Detach();
    ::munmap(addr, length);  // m->live is still false: the finalizer will only free the record
    throw Napi::Error::New(env, "mmapFd: cannot create a reference to the mapping");
  }
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    m->live = true;
    g_live[reinterpret_cast<uintptr_t>(addr)] = m;
  }
  return Napi::Value(env, result);
}

Napi::Value Munmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Value value = info.Length() > 0 ? info[0] : env.Undefined();
  void* addr;
  size_t length;
  Mapping* m;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    m = FindLiveLocked(env, value, "ab");
    addr = m->addr;
    length = m->length;
    g_live.erase(reinterpret_cast<uintptr_t>(addr));
    m->live = false;
  }
  // Detach before unmapping so no JS view can ever reach unmapped memory. Detaching may free the
  // backing store, which schedules the finalizer: `m` must not be used after this point.
  try {
    value.As<Napi::ArrayBuffer>().Detach();
  } catch (...) {
    std::lock_guard<std::mutex> lock(g_mutex);
    m->live = true;
    g_live[reinterpret_cast<uintptr_t>(addr)] = m;
    throw;
  }
  // Cannot fail for a range we mapped; if it somehow did, the memory stays mapped and unreachable.
  if (::munmap(addr, length) < 0) ThrowErrno(env, "munmap", errno);
  return env.Undefined();
}

Napi::Value MappingAddress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Value value = info.Length() > 0 ? info[0] : env.Undefined();
  uintptr_t addr;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    addr = reinterpret_cast<uintptr_t>(FindLiveLocked(env, value, "ab")->addr);
  }
  return Napi::BigInt::New(env, static_cast<uint64_t>(addr));
}

}  // namespace

void InitMmap(Napi::Env env, Napi::Object exports) {
  exports.Set("mmapFd", Napi::Function::New(env, MmapFd, "mmapFd"));
  exports.Set("munmap", Napi::Function::New(env, Munmap, "munmap"));
  exports.Set("mappingAddress", Napi::Function::New(env, MappingAddress, "mappingAddress"));
  exports.Set("pageSize", Napi::Number::New(env, static_cast<double>(PageSize())));
}

}  // namespace mdevkit
