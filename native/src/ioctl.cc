// A generic ioctl(2) with pointer marshaling, so Xen privcmd and other drivers whose argument
// structs hold user pointers (DM_OP's buffer array, MMAPBATCH_V2's arr/err) can be driven from JS
// buffers, and the kernel writes results straight into those buffers.
//
// An argument is a tree: each node is a byte buffer plus a list of (offset, target) pairs; the
// address of each target's bytes is stored as a native 64-bit pointer at that offset in the
// node's buffer before the call. Marshaling runs in two phases. Phase 1 reads every JS property
// (getters and proxies may run arbitrary JS, including code that detaches a buffer). Phase 2
// runs no JS: it resolves buffer addresses, checks detachment, bounds and overlaps, and only
// when all of that has passed writes the pointers. So no address can go stale before the
// syscall, and a rejected argument leaves every buffer untouched.
#include <sys/ioctl.h>

#include <algorithm>
#include <cstddef>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "errors.h"
#include "fd_util.h"
#include "modules.h"

namespace mdevkit {
namespace {

constexpr int kMaxDepth = 8;          // nesting levels of IoctlArg, the top level being 1
constexpr size_t kMaxNodes = 4096;    // IoctlArg nodes plus byte targets, in one argument
constexpr size_t kPointerSize = sizeof(uint64_t);
static_assert(sizeof(void*) <= kPointerSize, "pointers are stored as 64-bit values");

struct ArgNode {
  Napi::Value data;          // the node's bytes (an ArrayBuffer or a view)
  int parent = -1;           // node holding the pointer to this one; -1 for the top level
  size_t slot = 0;           // index of that pointer in the parent's list
  ByteView bytes;            // resolved in phase 2
};

struct PointerSlot {
  int node = 0;              // node whose bytes receive the pointer
  size_t index = 0;          // position in that node's `pointers`
  uint64_t offset = 0;
  Napi::Value target;        // byte target, when targetNode < 0
  int targetNode = -1;       // nested IoctlArg node, or -1
  uint8_t* address = nullptr;
};

class Marshaler {
 public:
  explicit Marshaler(Napi::Env env) : env_(env) {}

  // Lays out `arg` (an IoctlArg object) and returns its top-level bytes.
  ByteView Marshal(Napi::Value arg) {
    Collect(arg, -1, 0, 1);
    Resolve();
    Write();
    return nodes_[0].bytes;
  }

 private:
  std::string NodePath(int node) const {
    if (node < 0 || nodes_[node].parent < 0) return "arg";
    return SlotPath(nodes_[node].parent, nodes_[node].slot) + ".target";
  }
  std::string SlotPath(int node, size_t index) const {
    return NodePath(node) + ".pointers[" + std::to_string(index) + "]";
  }

  static bool IsBytes(Napi::Value v) { return v.IsTypedArray() || v.IsDataView() || v.IsArrayBuffer(); }

  void CountNode(int node, size_t index) {
    if (++count_ <= kMaxNodes) return;
    std::string field = index == SIZE_MAX ? NodePath(node) : SlotPath(node, index) + ".target";
    ThrowInvalid(env_, field, "more than 4096 buffers in one ioctl argument", E2BIG);
  }

  // Phase 1: reads the tree depth first; may run user JS, takes no raw pointers. Field paths for
  // errors are only built when an error is thrown.
  void Collect(Napi::Value value, int parent, size_t slot, int depth) {
    const int self = static_cast<int>(nodes_.size());
    nodes_.push_back(ArgNode{Napi::Value(), parent, slot, {}});
    if (depth > kMaxDepth) ThrowInvalid(env_, NodePath(self), "pointers nest deeper than 8 levels", E2BIG);
    CountNode(self, SIZE_MAX);
    if (!value.IsObject() || value.IsArray() || IsBytes(value)) {
      ThrowTypeError(env_, NodePath(self), "an object { data, pointers? }");
    }
    Napi::Object obj = value.As<Napi::Object>();
    Napi::Value data = obj.Get("data");
    if (!IsBytes(data) || IsSharedMemoryView(data)) {
      ThrowTypeError(env_, NodePath(self) + ".data", "a Buffer, TypedArray, DataView or ArrayBuffer");
    }
    nodes_[self].data = data;

    Napi::Value pointers = obj.Get("pointers");
    if (pointers.IsUndefined()) return;
    if (!pointers.IsArray()) ThrowTypeError(env_, NodePath(self) + ".pointers", "an array of { offset, target }");
    Napi::Array list = pointers.As<Napi::Array>();
    const uint32_t length = list.Length();
    for (uint32_t i = 0; i < length; i++) {
      Napi::Value entry = list.Get(i);
      if (!entry.IsObject()) ThrowTypeError(env_, SlotPath(self, i), "an object { offset, target }");
      Napi::Object e = entry.As<Napi::Object>();
      PointerSlot ptr;
      ptr.node = self;
      ptr.index = i;
      ptr.offset = Offset(e.Get("offset"), self, i);
      Napi::Value target = e.Get("target");
      if (IsSharedMemoryView(target)) {
        ThrowTypeError(env_, SlotPath(self, i) + ".target", "backed by an ArrayBuffer, not a SharedArrayBuffer");
      } else if (IsBytes(target)) {
        CountNode(self, i);
        ptr.target = target;
        slots_.push_back(ptr);
      } else if (target.IsObject()) {
        ptr.targetNode = static_cast<int>(nodes_.size());
        slots_.push_back(ptr);
        Collect(target, self, i, depth + 1);
      } else {
        ThrowTypeError(env_, SlotPath(self, i) + ".target",
                       "a Buffer, TypedArray, DataView, ArrayBuffer or { data, pointers? }");
      }
    }
  }

  uint64_t Offset(Napi::Value v, int node, size_t index) {
    if (v.IsNumber()) {
      double d = v.As<Napi::Number>().DoubleValue();
      if (d >= 0 && d <= 9007199254740991.0 && std::floor(d) == d) return static_cast<uint64_t>(d);
    }
    return ValueU64(env_, v, (SlotPath(node, index) + ".offset").c_str(), false);  // throws the named error
  }

  // Phase 2a: resolves addresses and validates everything; runs no JS.
  void Resolve() {
    for (size_t n = 0; n < nodes_.size(); n++) {
      const int node = static_cast<int>(n);
      if (IsDetachedBytes(nodes_[n].data)) ThrowInvalid(env_, NodePath(node) + ".data", "the buffer is detached");
      nodes_[n].bytes = ValueBytes(env_, nodes_[n].data, "data");
    }
    for (PointerSlot& ptr : slots_) {
      if (ptr.targetNode >= 0) {
        ptr.address = nodes_[ptr.targetNode].bytes.data;
      } else {
        if (IsDetachedBytes(ptr.target)) {
          ThrowInvalid(env_, SlotPath(ptr.node, ptr.index) + ".target", "the buffer is detached");
        }
        ptr.address = ValueBytes(env_, ptr.target, "target").data;
      }
      const size_t length = nodes_[ptr.node].bytes.length;
      if (length < kPointerSize || ptr.offset > length - kPointerSize) {
        ThrowInvalid(env_, SlotPath(ptr.node, ptr.index) + ".offset",
                     "offset + 8 exceeds the " + std::to_string(length) + "-byte data buffer", ERANGE);
      }
    }
    // Two pointers written over each other would silently lose one of them.
    std::vector<const PointerSlot*> order;
    order.reserve(slots_.size());
    for (const PointerSlot& ptr : slots_) order.push_back(&ptr);
    std::sort(order.begin(), order.end(), [](const PointerSlot* a, const PointerSlot* b) {
      return a->node != b->node ? a->node < b->node : a->offset < b->offset;
    });
    for (size_t i = 1; i < order.size(); i++) {
      const PointerSlot* prev = order[i - 1];
      const PointerSlot* cur = order[i];
      if (prev->node == cur->node && cur->offset < prev->offset + kPointerSize) {
        ThrowInvalid(env_, SlotPath(cur->node, cur->index) + ".offset",
                     "overlaps the pointer at " + SlotPath(prev->node, prev->index));
      }
    }
  }

  // Phase 2b: stores each address in native byte order, as the kernel reads it.
  void Write() {
    for (const PointerSlot& ptr : slots_) {
      const uint64_t value = reinterpret_cast<uintptr_t>(ptr.address);
      std::memcpy(nodes_[ptr.node].bytes.data + ptr.offset, &value, kPointerSize);
    }
  }

  Napi::Env env_;
  std::vector<ArgNode> nodes_;
  std::vector<PointerSlot> slots_;
  size_t count_ = 0;
};

// An integer ioctl argument: a safe-integer number or a bigint in [-2^63, 2^64).
unsigned long IntegerArg(Napi::Env env, Napi::Value v) {
  if (v.IsBigInt()) {
    int sign = 0;
    size_t words = 1;
    uint64_t word = 0;
    v.As<Napi::BigInt>().ToWords(&sign, &words, &word);
    if (words > 1) ThrowRangeError(env, "arg", "must fit in 64 bits");
    if (sign != 0) {
      if (word > (uint64_t{1} << 63)) ThrowRangeError(env, "arg", "must be >= -2^63");
      word = ~word + 1;  // two's complement, as a C caller passing a negative long would
    }
    return static_cast<unsigned long>(word);
  }
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d) ThrowTypeError(env, "arg", "an integer");
  if (std::fabs(d) > 9007199254740991.0) ThrowRangeError(env, "arg", "must be a safe integer (use a bigint)");
  return static_cast<unsigned long>(static_cast<long>(d));
}

Napi::Value Ioctl(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  uint32_t request = ArgU32(info, 1, "request");
  Napi::Value arg = info.Length() > 2 ? info[2] : env.Undefined();

  unsigned long argument = 0;
  if (arg.IsUndefined()) {
    argument = 0;
  } else if (arg.IsNumber() || arg.IsBigInt()) {
    argument = IntegerArg(env, arg);
  } else if (arg.IsTypedArray() || arg.IsDataView() || arg.IsArrayBuffer()) {
    argument = reinterpret_cast<uintptr_t>(ValueLiveBytes(env, arg, "arg").data);
  } else if (arg.IsObject()) {
    Marshaler marshaler(env);
    argument = reinterpret_cast<uintptr_t>(marshaler.Marshal(arg).data);
  } else {
    ThrowTypeError(env, "arg", "an integer, a bigint, a Buffer/TypedArray/DataView/ArrayBuffer or { data, pointers? }");
  }
  int r = RetryEintr([&] { return ::ioctl(fd, static_cast<unsigned long>(request), argument); });
  if (r < 0) ThrowErrno(env, "ioctl", errno);
  return Napi::Number::New(env, r);
}

Napi::Value IoctlMarshalForTest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Value arg = info.Length() > 0 ? info[0] : env.Undefined();
  Marshaler marshaler(env);
  ByteView top = marshaler.Marshal(arg);
  Napi::Uint8Array copy = Napi::Uint8Array::New(env, top.length);
  if (top.length > 0) std::memcpy(copy.Data(), top.data, top.length);
  return copy;
}

Napi::Value AddressOf(const Napi::CallbackInfo& info) {
  ByteView view = ArgLiveBytes(info, 0, "view");
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reinterpret_cast<uintptr_t>(view.data)));
}

}  // namespace

void InitIoctl(Napi::Env env, Napi::Object exports) {
  exports.Set("ioctl", Napi::Function::New(env, Ioctl, "ioctl"));
  exports.Set("ioctlMarshalForTest", Napi::Function::New(env, IoctlMarshalForTest, "ioctlMarshalForTest"));
  exports.Set("addressOf", Napi::Function::New(env, AddressOf, "addressOf"));
}

}  // namespace mdevkit
