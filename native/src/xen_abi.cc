// The Xen device-model ABI that adapters/xen/abi.ts, adapters/xen/ioreq-abi.ts and xen_ioreq.h
// assume, checked against the real headers: Xen's public headers (Debian/Ubuntu libxen-dev:
// <xen/hvm/ioreq.h>, <xen/hvm/dm_op.h>, <xen/hvm/hvm_op.h>, <xen/memory.h>, <xen/domctl.h>) and
// Linux's uapi <xen/privcmd.h> and <xen/evtchn.h>.
//
// On x86_64 and arm64, the targets the TypeScript layouts describe, every offset, size and
// constant is a static_assert: a mismatch fails the build. The same values, read from the headers,
// are exported as binding.xenAbi so test/xen/abi.test.ts compares the TypeScript tables with them
// field by field. The bit fields of struct ioreq and struct buf_ioreq cannot be offsetof'd; their
// placement is exported as byte images of a zeroed struct with one field set to all ones.
//
// The Xen headers are not on every machine; without them (or with -DMDEVKIT_NO_XEN_HEADERS) this
// file checks nothing and exports { headersPresent: false }.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "modules.h"
#include "xen_ioreq.h"

#if !defined(MDEVKIT_NO_XEN_HEADERS) && defined(__has_include)
#if __has_include(<xen/xen.h>) && __has_include(<xen/hvm/ioreq.h>) && __has_include(<xen/hvm/dm_op.h>) && \
    __has_include(<xen/hvm/hvm_op.h>) && __has_include(<xen/memory.h>) && __has_include(<xen/privcmd.h>) &&   \
    __has_include(<xen/evtchn.h>)
#define MDEVKIT_XEN_HEADERS 1
#endif
#endif
#if defined(MDEVKIT_XEN_HEADERS) && __has_include(<xen/domctl.h>)
#define MDEVKIT_XEN_DOMCTL 1
#endif

#ifdef MDEVKIT_XEN_HEADERS
// The toolstack view of the public headers: dm_op.h's structs use uint64_aligned_t, which xen.h
// only defines for __XEN_TOOLS__ (as a plain uint64_t; 8-byte aligned on the LP64 targets).
#define __XEN_TOOLS__ 1
#include <linux/types.h>
#include <sys/ioctl.h>
#include <xen/xen.h>
#include <xen/memory.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/dm_op.h>
#include <xen/hvm/ioreq.h>
#ifdef MDEVKIT_XEN_DOMCTL
// domctl.h pulls in hvm/save.h, which refuses strict ISO mode (it uses anonymous unions, a GNU
// extension GCC and Clang accept in C++ anyway): hide -std=c++17's __STRICT_ANSI__ from it alone.
#pragma push_macro("__STRICT_ANSI__")
#undef __STRICT_ANSI__
#include <xen/domctl.h>
#pragma pop_macro("__STRICT_ANSI__")
#endif
// Linux uapi; privcmd.h's <xen/interface/xen.h> resolves to native/compat (see there).
#include <xen/privcmd.h>
#include <xen/evtchn.h>
#endif

namespace mdevkit {

#ifdef MDEVKIT_XEN_HEADERS
namespace {

#if defined(__x86_64__) || defined(__aarch64__)
constexpr bool kCheck = true;
#else
constexpr bool kCheck = false;  // other ABIs: values are exported, and the test reports mismatches
#endif

// A JS object of name -> number pairs.
class Table {
 public:
  explicit Table(Napi::Env env) : env_(env), obj_(Napi::Object::New(env)) {}
  Table& Set(const char* key, double value) {
    obj_.Set(key, Napi::Number::New(env_, value));
    return *this;
  }
  Table& Set(const char* key, Napi::Value value) {
    obj_.Set(key, value);
    return *this;
  }
  Napi::Object Get() const { return obj_; }

 private:
  Napi::Env env_;
  Napi::Object obj_;
};

// Asserts (on the LP64 targets) that type.field is at `off` and exports the header's offset.
#define XEN_FIELD(table, type, field, name, off)                                             \
  static_assert(!kCheck || offsetof(type, field) == (off), #type "." #field " is at " #off); \
  (table).Set(name, static_cast<double>(offsetof(type, field)))
#define XEN_SIZE(table, type, size)                                                    \
  static_assert(!kCheck || sizeof(type) == (size), "sizeof(" #type ") is " #size); \
  (table).Set("sizeof", static_cast<double>(sizeof(type)))
// Asserts that a constant has the value the TypeScript uses and exports the header's value.
#define XEN_CONST(table, name, macro, value)                  \
  static_assert((macro) == (value), #macro " is " #value); \
  (table).Set(name, static_cast<double>(macro))
// The same for a constant that depends on the ABI (ioctl numbers encode argument sizes).
#define XEN_ABI_CONST(table, name, macro, value)                         \
  static_assert(!kCheck || (macro) == (value), #macro " is " #value); \
  (table).Set(name, static_cast<double>(macro))

// The bytes of a zeroed T after `set` stores one bit field.
template <typename T, typename Set>
Napi::Value Image(Napi::Env env, Set set) {
  T s;
  std::memset(&s, 0, sizeof s);
  set(s);
  return Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<const uint8_t*>(&s), sizeof s);
}

// The type of member `m` of xen_dm_op's union.
#define DMOP_ARG_TYPE(m) decltype(std::declval<xen_dm_op>().u.m)

// The engine's struct (xen_ioreq.h) must be the header's, field for field.
static_assert(sizeof(XenIoreq) == sizeof(ioreq) && offsetof(XenIoreq, addr) == offsetof(ioreq, addr) &&
                  offsetof(XenIoreq, data) == offsetof(ioreq, data) && offsetof(XenIoreq, count) == offsetof(ioreq, count) &&
                  offsetof(XenIoreq, size) == offsetof(ioreq, size) && offsetof(XenIoreq, vp_eport) == offsetof(ioreq, vp_eport) &&
                  offsetof(XenIoreq, pad0) == offsetof(ioreq, _pad0) && offsetof(XenIoreq, type) == offsetof(ioreq, type),
              "XenIoreq mirrors struct ioreq");
// The bit-field byte sits between _pad0 and type: that is where XenIoreq::bits is.
static_assert(offsetof(ioreq, _pad0) + sizeof(uint16_t) == offsetof(XenIoreq, bits) && offsetof(XenIoreq, bits) + 1 == offsetof(ioreq, type),
              "the ioreq bit fields share the byte before type");
static_assert(kStateIoreqNone == STATE_IOREQ_NONE && kStateIoreqReady == STATE_IOREQ_READY &&
                  kStateIoreqInprocess == STATE_IOREQ_INPROCESS && kStateIorespReady == STATE_IORESP_READY,
              "ioreq states");
static_assert(kIoreqTypePio == IOREQ_TYPE_PIO && kIoreqTypeCopy == IOREQ_TYPE_COPY && kIoreqTypePciConfig == IOREQ_TYPE_PCI_CONFIG &&
                  kIoreqTypeTimeoffset == IOREQ_TYPE_TIMEOFFSET && kIoreqTypeInvalidate == IOREQ_TYPE_INVALIDATE,
              "ioreq types");
static_assert(kBufIoreqSlots == IOREQ_BUFFER_SLOT_NUM && kBufPagePointers == offsetof(buffered_iopage, buf_ioreq),
              "buffered ioreq page");
static_assert(sizeof(buffered_iopage) <= 4096, "the buffered ioreq page fits a page");

Napi::Object Ioreq(Napi::Env env) {
  Table t(env);
  XEN_FIELD(t, ioreq, addr, "addr", 0);
  XEN_FIELD(t, ioreq, data, "data", 8);
  XEN_FIELD(t, ioreq, count, "count", 16);
  XEN_FIELD(t, ioreq, size, "size", 20);
  XEN_FIELD(t, ioreq, vp_eport, "vpEport", 24);
  XEN_FIELD(t, ioreq, type, "type", 31);
  XEN_SIZE(t, ioreq, 32);
  return t.Get();
}

Napi::Object IoreqBitImages(Napi::Env env) {
  return Table(env)
      .Set("state", Image<ioreq>(env, [](ioreq& r) { r.state = 0xf; }))
      .Set("dataIsPtr", Image<ioreq>(env, [](ioreq& r) { r.data_is_ptr = 1; }))
      .Set("dir", Image<ioreq>(env, [](ioreq& r) { r.dir = IOREQ_READ; }))
      .Set("df", Image<ioreq>(env, [](ioreq& r) { r.df = 1; }))
      .Set("pad1", Image<ioreq>(env, [](ioreq& r) { r._pad1 = 1; }))
      .Get();
}

Napi::Object BufIoreq(Napi::Env env) {
  Table t(env);
  XEN_FIELD(t, buf_ioreq, type, "type", 0);
  XEN_FIELD(t, buf_ioreq, data, "data", 4);
  XEN_SIZE(t, buf_ioreq, 8);
  return t.Get();
}

Napi::Object BufIoreqBitImages(Napi::Env env) {
  return Table(env)
      .Set("pad", Image<buf_ioreq>(env, [](buf_ioreq& r) { r.pad = 1; }))
      .Set("dir", Image<buf_ioreq>(env, [](buf_ioreq& r) { r.dir = IOREQ_READ; }))
      .Set("size", Image<buf_ioreq>(env, [](buf_ioreq& r) { r.size = 3; }))
      .Set("addr", Image<buf_ioreq>(env, [](buf_ioreq& r) { r.addr = 0xfffff; }))
      .Get();
}

Napi::Object BufferedPage(Napi::Env env) {
  Table t(env);
  XEN_FIELD(t, buffered_iopage, read_pointer, "readPointer", 0);
  XEN_FIELD(t, buffered_iopage, write_pointer, "writePointer", 4);
  XEN_FIELD(t, buffered_iopage, buf_ioreq, "slots", 8);
  static_assert(sizeof(buf_ioreq_t) == 8, "slot size");
  t.Set("slotSize", sizeof(buf_ioreq_t));
  XEN_CONST(t, "slotCount", IOREQ_BUFFER_SLOT_NUM, 511);
  return t.Get();
}

// ioreq-abi.ts's constant tables, by table name.
Napi::Object IoreqConstants(Napi::Env env) {
  Table state(env), type(env), bufioreq(env), range(env), memType(env), access(env), resource(env), dir(env);
  XEN_CONST(state, "NONE", STATE_IOREQ_NONE, 0);
  XEN_CONST(state, "READY", STATE_IOREQ_READY, 1);
  XEN_CONST(state, "INPROCESS", STATE_IOREQ_INPROCESS, 2);
  XEN_CONST(state, "IORESP_READY", STATE_IORESP_READY, 3);
  XEN_CONST(type, "PIO", IOREQ_TYPE_PIO, 0);
  XEN_CONST(type, "COPY", IOREQ_TYPE_COPY, 1);
  XEN_CONST(type, "PCI_CONFIG", IOREQ_TYPE_PCI_CONFIG, 2);
  XEN_CONST(type, "TIMEOFFSET", IOREQ_TYPE_TIMEOFFSET, 7);
  XEN_CONST(type, "INVALIDATE", IOREQ_TYPE_INVALIDATE, 8);
  XEN_CONST(dir, "READ", IOREQ_READ, 1);
  XEN_CONST(dir, "WRITE", IOREQ_WRITE, 0);
  XEN_CONST(bufioreq, "OFF", HVM_IOREQSRV_BUFIOREQ_OFF, 0);
  XEN_CONST(bufioreq, "LEGACY", HVM_IOREQSRV_BUFIOREQ_LEGACY, 1);
  XEN_CONST(bufioreq, "ATOMIC", HVM_IOREQSRV_BUFIOREQ_ATOMIC, 2);
  XEN_CONST(range, "PORT", XEN_DMOP_IO_RANGE_PORT, 0);
  XEN_CONST(range, "MEMORY", XEN_DMOP_IO_RANGE_MEMORY, 1);
  XEN_CONST(range, "PCI", XEN_DMOP_IO_RANGE_PCI, 2);
  XEN_CONST(memType, "RAM_RW", HVMMEM_ram_rw, 0);
  XEN_CONST(memType, "RAM_RO", HVMMEM_ram_ro, 1);
  XEN_CONST(memType, "MMIO_DM", HVMMEM_mmio_dm, 2);
  XEN_CONST(memType, "UNUSED", HVMMEM_unused, 3);
  XEN_CONST(memType, "IOREQ_SERVER", HVMMEM_ioreq_server, 4);
  XEN_CONST(access, "READ", XEN_DMOP_IOREQ_MEM_ACCESS_READ, 1);
  XEN_CONST(access, "WRITE", XEN_DMOP_IOREQ_MEM_ACCESS_WRITE, 2);
  XEN_CONST(resource, "TYPE", XENMEM_resource_ioreq_server, 0);
  XEN_CONST(resource, "FRAME_BUFIOREQ", XENMEM_resource_ioreq_server_frame_bufioreq, 0);
  XEN_CONST(resource, "frameIoreq0", XENMEM_resource_ioreq_server_frame_ioreq(0), 1);
  XEN_CONST(resource, "frameIoreq5", XENMEM_resource_ioreq_server_frame_ioreq(5), 6);
  return Table(env)
      .Set("IoreqState", state.Get())
      .Set("IoreqType", type.Get())
      .Set("IoreqDir", dir.Get())
      .Set("BufioreqMode", bufioreq.Get())
      .Set("IoRangeType", range.Get())
      .Set("HvmMemType", memType.Get())
      .Set("IoreqMemAccess", access.Get())
      .Set("IoreqResource", resource.Get())
      .Get();
}

// XEN_DMOP_PCI_SBDF for a few inputs, as [segment, bus, device, function, sbdf] rows.
Napi::Array PciSbdfSamples(Napi::Env env) {
  static constexpr uint32_t kInputs[][4] = {{0, 0, 0, 0}, {0, 0, 3, 0}, {0, 0x12, 0x1f, 7}, {1, 0xff, 0, 1}, {0xffff, 0xff, 0x1f, 7}, {0xabcd, 0x5a, 0x0b, 5}};
  Napi::Array rows = Napi::Array::New(env);
  uint32_t i = 0;
  for (const auto& in : kInputs) {
    Napi::Array row = Napi::Array::New(env);
    for (uint32_t k = 0; k < 4; ++k) row.Set(k, Napi::Number::New(env, in[k]));
    row.Set(4u, Napi::Number::New(env, static_cast<uint32_t>(XEN_DMOP_PCI_SBDF(in[0], in[1], in[2], in[3]))));
    rows.Set(i++, row);
  }
  return rows;
}

// abi.ts's DmOp numbers and DmOpArgs layouts, keyed alike.
void DmOps(Napi::Env env, Table& numbers, Table& args) {
#define DMOP(KEY, member, number, size)                                                              \
  using KEY##_t = DMOP_ARG_TYPE(member);                                                             \
  XEN_CONST(numbers, #KEY, XEN_DMOP_##member, number);                                               \
  static_assert(!kCheck || sizeof(KEY##_t) == (size), "sizeof(xen_dm_op_" #member ") is " #size); \
  Table KEY(env);                                                                                    \
  KEY.Set("sizeof", static_cast<double>(sizeof(KEY##_t)))

  DMOP(CREATE_IOREQ_SERVER, create_ioreq_server, 1, 6);
  XEN_FIELD(CREATE_IOREQ_SERVER, CREATE_IOREQ_SERVER_t, handle_bufioreq, "handleBufioreq", 0);
  XEN_FIELD(CREATE_IOREQ_SERVER, CREATE_IOREQ_SERVER_t, pad, "pad", 1);
  XEN_FIELD(CREATE_IOREQ_SERVER, CREATE_IOREQ_SERVER_t, id, "id", 4);
  static_assert(sizeof(ioservid_t) == 2, "ioservid_t is u16");

  DMOP(GET_IOREQ_SERVER_INFO, get_ioreq_server_info, 2, 24);
  XEN_FIELD(GET_IOREQ_SERVER_INFO, GET_IOREQ_SERVER_INFO_t, id, "id", 0);
  XEN_FIELD(GET_IOREQ_SERVER_INFO, GET_IOREQ_SERVER_INFO_t, flags, "flags", 2);
  XEN_FIELD(GET_IOREQ_SERVER_INFO, GET_IOREQ_SERVER_INFO_t, bufioreq_port, "bufioreqPort", 4);
  XEN_FIELD(GET_IOREQ_SERVER_INFO, GET_IOREQ_SERVER_INFO_t, ioreq_gfn, "ioreqGfn", 8);
  XEN_FIELD(GET_IOREQ_SERVER_INFO, GET_IOREQ_SERVER_INFO_t, bufioreq_gfn, "bufioreqGfn", 16);

  DMOP(MAP_IO_RANGE_TO_IOREQ_SERVER, map_io_range_to_ioreq_server, 3, 24);
  XEN_FIELD(MAP_IO_RANGE_TO_IOREQ_SERVER, MAP_IO_RANGE_TO_IOREQ_SERVER_t, id, "id", 0);
  XEN_FIELD(MAP_IO_RANGE_TO_IOREQ_SERVER, MAP_IO_RANGE_TO_IOREQ_SERVER_t, pad, "pad", 2);
  XEN_FIELD(MAP_IO_RANGE_TO_IOREQ_SERVER, MAP_IO_RANGE_TO_IOREQ_SERVER_t, type, "type", 4);
  XEN_FIELD(MAP_IO_RANGE_TO_IOREQ_SERVER, MAP_IO_RANGE_TO_IOREQ_SERVER_t, start, "start", 8);
  XEN_FIELD(MAP_IO_RANGE_TO_IOREQ_SERVER, MAP_IO_RANGE_TO_IOREQ_SERVER_t, end, "end", 16);

  DMOP(UNMAP_IO_RANGE_FROM_IOREQ_SERVER, unmap_io_range_from_ioreq_server, 4, 24);
  XEN_FIELD(UNMAP_IO_RANGE_FROM_IOREQ_SERVER, UNMAP_IO_RANGE_FROM_IOREQ_SERVER_t, id, "id", 0);
  XEN_FIELD(UNMAP_IO_RANGE_FROM_IOREQ_SERVER, UNMAP_IO_RANGE_FROM_IOREQ_SERVER_t, pad, "pad", 2);
  XEN_FIELD(UNMAP_IO_RANGE_FROM_IOREQ_SERVER, UNMAP_IO_RANGE_FROM_IOREQ_SERVER_t, type, "type", 4);
  XEN_FIELD(UNMAP_IO_RANGE_FROM_IOREQ_SERVER, UNMAP_IO_RANGE_FROM_IOREQ_SERVER_t, start, "start", 8);
  XEN_FIELD(UNMAP_IO_RANGE_FROM_IOREQ_SERVER, UNMAP_IO_RANGE_FROM_IOREQ_SERVER_t, end, "end", 16);

  DMOP(SET_IOREQ_SERVER_STATE, set_ioreq_server_state, 5, 4);
  XEN_FIELD(SET_IOREQ_SERVER_STATE, SET_IOREQ_SERVER_STATE_t, id, "id", 0);
  XEN_FIELD(SET_IOREQ_SERVER_STATE, SET_IOREQ_SERVER_STATE_t, enabled, "enabled", 2);
  XEN_FIELD(SET_IOREQ_SERVER_STATE, SET_IOREQ_SERVER_STATE_t, pad, "pad", 3);

  DMOP(DESTROY_IOREQ_SERVER, destroy_ioreq_server, 6, 4);
  XEN_FIELD(DESTROY_IOREQ_SERVER, DESTROY_IOREQ_SERVER_t, id, "id", 0);
  XEN_FIELD(DESTROY_IOREQ_SERVER, DESTROY_IOREQ_SERVER_t, pad, "pad", 2);

  DMOP(TRACK_DIRTY_VRAM, track_dirty_vram, 7, 16);
  XEN_FIELD(TRACK_DIRTY_VRAM, TRACK_DIRTY_VRAM_t, nr, "nr", 0);
  XEN_FIELD(TRACK_DIRTY_VRAM, TRACK_DIRTY_VRAM_t, pad, "pad", 4);
  XEN_FIELD(TRACK_DIRTY_VRAM, TRACK_DIRTY_VRAM_t, first_pfn, "firstPfn", 8);

  DMOP(SET_PCI_INTX_LEVEL, set_pci_intx_level, 8, 6);
  XEN_FIELD(SET_PCI_INTX_LEVEL, SET_PCI_INTX_LEVEL_t, domain, "domain", 0);
  XEN_FIELD(SET_PCI_INTX_LEVEL, SET_PCI_INTX_LEVEL_t, bus, "bus", 2);
  XEN_FIELD(SET_PCI_INTX_LEVEL, SET_PCI_INTX_LEVEL_t, device, "device", 3);
  XEN_FIELD(SET_PCI_INTX_LEVEL, SET_PCI_INTX_LEVEL_t, intx, "intx", 4);
  XEN_FIELD(SET_PCI_INTX_LEVEL, SET_PCI_INTX_LEVEL_t, level, "level", 5);

  DMOP(SET_ISA_IRQ_LEVEL, set_isa_irq_level, 9, 2);
  XEN_FIELD(SET_ISA_IRQ_LEVEL, SET_ISA_IRQ_LEVEL_t, isa_irq, "isaIrq", 0);
  XEN_FIELD(SET_ISA_IRQ_LEVEL, SET_ISA_IRQ_LEVEL_t, level, "level", 1);

  DMOP(SET_PCI_LINK_ROUTE, set_pci_link_route, 10, 2);
  XEN_FIELD(SET_PCI_LINK_ROUTE, SET_PCI_LINK_ROUTE_t, link, "link", 0);
  XEN_FIELD(SET_PCI_LINK_ROUTE, SET_PCI_LINK_ROUTE_t, isa_irq, "isaIrq", 1);

  DMOP(MODIFIED_MEMORY, modified_memory, 11, 8);
  XEN_FIELD(MODIFIED_MEMORY, MODIFIED_MEMORY_t, nr_extents, "nrExtents", 0);
  XEN_FIELD(MODIFIED_MEMORY, MODIFIED_MEMORY_t, opaque, "opaque", 4);

  DMOP(SET_MEM_TYPE, set_mem_type, 12, 16);
  XEN_FIELD(SET_MEM_TYPE, SET_MEM_TYPE_t, nr, "nr", 0);
  XEN_FIELD(SET_MEM_TYPE, SET_MEM_TYPE_t, mem_type, "memType", 4);
  XEN_FIELD(SET_MEM_TYPE, SET_MEM_TYPE_t, pad, "pad", 6);
  XEN_FIELD(SET_MEM_TYPE, SET_MEM_TYPE_t, first_pfn, "firstPfn", 8);

  DMOP(INJECT_EVENT, inject_event, 13, 24);
  XEN_FIELD(INJECT_EVENT, INJECT_EVENT_t, vcpuid, "vcpuid", 0);
  XEN_FIELD(INJECT_EVENT, INJECT_EVENT_t, vector, "vector", 4);
  XEN_FIELD(INJECT_EVENT, INJECT_EVENT_t, type, "type", 5);
  XEN_FIELD(INJECT_EVENT, INJECT_EVENT_t, insn_len, "insnLen", 6);
  XEN_FIELD(INJECT_EVENT, INJECT_EVENT_t, pad0, "pad0", 7);
  XEN_FIELD(INJECT_EVENT, INJECT_EVENT_t, error_code, "errorCode", 8);
  XEN_FIELD(INJECT_EVENT, INJECT_EVENT_t, pad1, "pad1", 12);
  XEN_FIELD(INJECT_EVENT, INJECT_EVENT_t, cr2, "cr2", 16);

  DMOP(INJECT_MSI, inject_msi, 14, 16);
  XEN_FIELD(INJECT_MSI, INJECT_MSI_t, data, "data", 0);
  XEN_FIELD(INJECT_MSI, INJECT_MSI_t, pad, "pad", 4);
  XEN_FIELD(INJECT_MSI, INJECT_MSI_t, addr, "addr", 8);

  DMOP(MAP_MEM_TYPE_TO_IOREQ_SERVER, map_mem_type_to_ioreq_server, 15, 16);
  XEN_FIELD(MAP_MEM_TYPE_TO_IOREQ_SERVER, MAP_MEM_TYPE_TO_IOREQ_SERVER_t, id, "id", 0);
  XEN_FIELD(MAP_MEM_TYPE_TO_IOREQ_SERVER, MAP_MEM_TYPE_TO_IOREQ_SERVER_t, type, "type", 2);
  XEN_FIELD(MAP_MEM_TYPE_TO_IOREQ_SERVER, MAP_MEM_TYPE_TO_IOREQ_SERVER_t, flags, "flags", 4);
  XEN_FIELD(MAP_MEM_TYPE_TO_IOREQ_SERVER, MAP_MEM_TYPE_TO_IOREQ_SERVER_t, opaque, "opaque", 8);

  DMOP(REMOTE_SHUTDOWN, remote_shutdown, 16, 4);
  XEN_FIELD(REMOTE_SHUTDOWN, REMOTE_SHUTDOWN_t, reason, "reason", 0);

  DMOP(RELOCATE_MEMORY, relocate_memory, 17, 24);
  XEN_FIELD(RELOCATE_MEMORY, RELOCATE_MEMORY_t, size, "size", 0);
  XEN_FIELD(RELOCATE_MEMORY, RELOCATE_MEMORY_t, pad, "pad", 4);
  XEN_FIELD(RELOCATE_MEMORY, RELOCATE_MEMORY_t, src_gfn, "srcGfn", 8);
  XEN_FIELD(RELOCATE_MEMORY, RELOCATE_MEMORY_t, dst_gfn, "dstGfn", 16);

  DMOP(PIN_MEMORY_CACHEATTR, pin_memory_cacheattr, 18, 24);
  XEN_FIELD(PIN_MEMORY_CACHEATTR, PIN_MEMORY_CACHEATTR_t, start, "start", 0);
  XEN_FIELD(PIN_MEMORY_CACHEATTR, PIN_MEMORY_CACHEATTR_t, end, "end", 8);
  XEN_FIELD(PIN_MEMORY_CACHEATTR, PIN_MEMORY_CACHEATTR_t, type, "type", 16);
  XEN_FIELD(PIN_MEMORY_CACHEATTR, PIN_MEMORY_CACHEATTR_t, pad, "pad", 20);

  DMOP(SET_IRQ_LEVEL, set_irq_level, 19, 8);
  XEN_FIELD(SET_IRQ_LEVEL, SET_IRQ_LEVEL_t, irq, "irq", 0);
  XEN_FIELD(SET_IRQ_LEVEL, SET_IRQ_LEVEL_t, level, "level", 4);
  XEN_FIELD(SET_IRQ_LEVEL, SET_IRQ_LEVEL_t, pad, "pad", 5);

  DMOP(NR_VCPUS, nr_vcpus, 20, 4);
  XEN_FIELD(NR_VCPUS, NR_VCPUS_t, vcpus, "vcpus", 0);
#undef DMOP

  args.Set("CREATE_IOREQ_SERVER", CREATE_IOREQ_SERVER.Get())
      .Set("GET_IOREQ_SERVER_INFO", GET_IOREQ_SERVER_INFO.Get())
      .Set("MAP_IO_RANGE_TO_IOREQ_SERVER", MAP_IO_RANGE_TO_IOREQ_SERVER.Get())
      .Set("UNMAP_IO_RANGE_FROM_IOREQ_SERVER", UNMAP_IO_RANGE_FROM_IOREQ_SERVER.Get())
      .Set("SET_IOREQ_SERVER_STATE", SET_IOREQ_SERVER_STATE.Get())
      .Set("DESTROY_IOREQ_SERVER", DESTROY_IOREQ_SERVER.Get())
      .Set("TRACK_DIRTY_VRAM", TRACK_DIRTY_VRAM.Get())
      .Set("SET_PCI_INTX_LEVEL", SET_PCI_INTX_LEVEL.Get())
      .Set("SET_ISA_IRQ_LEVEL", SET_ISA_IRQ_LEVEL.Get())
      .Set("SET_PCI_LINK_ROUTE", SET_PCI_LINK_ROUTE.Get())
      .Set("MODIFIED_MEMORY", MODIFIED_MEMORY.Get())
      .Set("SET_MEM_TYPE", SET_MEM_TYPE.Get())
      .Set("INJECT_EVENT", INJECT_EVENT.Get())
      .Set("INJECT_MSI", INJECT_MSI.Get())
      .Set("MAP_MEM_TYPE_TO_IOREQ_SERVER", MAP_MEM_TYPE_TO_IOREQ_SERVER.Get())
      .Set("REMOTE_SHUTDOWN", REMOTE_SHUTDOWN.Get())
      .Set("RELOCATE_MEMORY", RELOCATE_MEMORY.Get())
      .Set("PIN_MEMORY_CACHEATTR", PIN_MEMORY_CACHEATTR.Get())
      .Set("SET_IRQ_LEVEL", SET_IRQ_LEVEL.Get())
      .Set("NR_VCPUS", NR_VCPUS.Get());
}

Napi::Object XenDmOp(Napi::Env env) {
  Table t(env);
  XEN_FIELD(t, xen_dm_op, op, "op", 0);
  XEN_FIELD(t, xen_dm_op, pad, "pad", 4);
  XEN_FIELD(t, xen_dm_op, u, "u", 8);
  static_assert(!kCheck || sizeof(xen_dm_op::u) == 24, "xen_dm_op's union is 24 bytes");
  t.Set("unionSize", sizeof(xen_dm_op::u));
  XEN_SIZE(t, xen_dm_op, 32);
  return t.Get();
}

Napi::Object ModifiedMemoryExtent(Napi::Env env) {
  Table t(env);
  XEN_FIELD(t, xen_dm_op_modified_memory_extent, nr, "nr", 0);
  XEN_FIELD(t, xen_dm_op_modified_memory_extent, pad, "pad", 4);
  XEN_FIELD(t, xen_dm_op_modified_memory_extent, first_pfn, "firstPfn", 8);
  XEN_SIZE(t, xen_dm_op_modified_memory_extent, 16);
  return t.Get();
}

Napi::Object Privcmd(Napi::Env env) {
  Table dmOp(env), dmOpBuf(env), batch(env), resource(env), hypercall(env), ioctls(env), misc(env);
  XEN_FIELD(hypercall, privcmd_hypercall, op, "op", 0);
  XEN_FIELD(hypercall, privcmd_hypercall, arg, "arg", 8);
  static_assert(sizeof(privcmd_hypercall::arg) / sizeof(privcmd_hypercall::arg[0]) == 5, "privcmd_hypercall has 5 arguments");
  hypercall.Set("nrArgs", 5);
  XEN_SIZE(hypercall, privcmd_hypercall, 48);
  XEN_FIELD(dmOp, privcmd_dm_op, dom, "dom", 0);
  XEN_FIELD(dmOp, privcmd_dm_op, num, "num", 2);
  XEN_FIELD(dmOp, privcmd_dm_op, ubufs, "ubufs", 8);
  XEN_SIZE(dmOp, privcmd_dm_op, 16);
  XEN_FIELD(dmOpBuf, privcmd_dm_op_buf, uptr, "uptr", 0);
  XEN_FIELD(dmOpBuf, privcmd_dm_op_buf, size, "size", 8);
  XEN_SIZE(dmOpBuf, privcmd_dm_op_buf, 16);
  XEN_FIELD(batch, privcmd_mmapbatch_v2, num, "num", 0);
  XEN_FIELD(batch, privcmd_mmapbatch_v2, dom, "dom", 4);
  XEN_FIELD(batch, privcmd_mmapbatch_v2, addr, "addr", 8);
  XEN_FIELD(batch, privcmd_mmapbatch_v2, arr, "arr", 16);
  XEN_FIELD(batch, privcmd_mmapbatch_v2, err, "err", 24);
  XEN_SIZE(batch, privcmd_mmapbatch_v2, 32);
  XEN_FIELD(resource, privcmd_mmap_resource, dom, "dom", 0);
  XEN_FIELD(resource, privcmd_mmap_resource, type, "type", 4);
  XEN_FIELD(resource, privcmd_mmap_resource, id, "id", 8);
  XEN_FIELD(resource, privcmd_mmap_resource, idx, "idx", 12);
  XEN_FIELD(resource, privcmd_mmap_resource, num, "num", 16);
  XEN_FIELD(resource, privcmd_mmap_resource, addr, "addr", 24);
  XEN_SIZE(resource, privcmd_mmap_resource, 32);
  // Xen's struct xen_dm_op_buf, which privcmd fills from privcmd_dm_op_buf, has the same shape.
  static_assert(!kCheck || (sizeof(xen_dm_op_buf) == sizeof(privcmd_dm_op_buf) && offsetof(xen_dm_op_buf, size) == offsetof(privcmd_dm_op_buf, size)),
                "xen_dm_op_buf matches privcmd_dm_op_buf");
  XEN_ABI_CONST(ioctls, "HYPERCALL", IOCTL_PRIVCMD_HYPERCALL, 0x00305000);
  XEN_ABI_CONST(ioctls, "MMAPBATCH_V2", IOCTL_PRIVCMD_MMAPBATCH_V2, 0x00205004);
  XEN_ABI_CONST(ioctls, "DM_OP", IOCTL_PRIVCMD_DM_OP, 0x00105005);
  XEN_ABI_CONST(ioctls, "RESTRICT", IOCTL_PRIVCMD_RESTRICT, 0x00025006);
  XEN_ABI_CONST(ioctls, "MMAP_RESOURCE", IOCTL_PRIVCMD_MMAP_RESOURCE, 0x00205007);
  static_assert(sizeof(domid_t) == 2 && (!kCheck || sizeof(xen_pfn_t) == 8), "domid_t and xen_pfn_t");
  misc.Set("DOMID_SIZE", sizeof(domid_t)).Set("XEN_PFN_SIZE", sizeof(xen_pfn_t));
  XEN_CONST(misc, "DOMID_FIRST_RESERVED", DOMID_FIRST_RESERVED, 0x7ff0);
  XEN_CONST(misc, "NO_GFNS", XEN_DMOP_no_gfns, 1);
  return Table(env)
      .Set("PrivcmdDmOp", dmOp.Get())
      .Set("PrivcmdDmOpBuf", dmOpBuf.Get())
      .Set("PrivcmdMmapBatchV2", batch.Get())
      .Set("PrivcmdMmapResource", resource.Get())
      .Set("PrivcmdHypercall", hypercall.Get())
      .Set("PrivcmdIoctl", ioctls.Get())
      .Set("misc", misc.Get())
      .Get();
}

// abi.ts's raw-hypercall tables: hypercall numbers, XENMEM_* ops and struct xen_memory_reservation,
// the pin_memory_cacheattr types, and (with domctl.h) struct xen_domctl for XEN_DOMCTL_max_mem.
Napi::Object Memory(Napi::Env env) {
  Table hypercall(env), memOp(env), reservation(env), cacheAttr(env);
  XEN_CONST(hypercall, "MEMORY_OP", __HYPERVISOR_memory_op, 12);
  XEN_CONST(hypercall, "DOMCTL", __HYPERVISOR_domctl, 36);
  XEN_CONST(memOp, "CURRENT_RESERVATION", XENMEM_current_reservation, 3);
  XEN_CONST(memOp, "MAXIMUM_RESERVATION", XENMEM_maximum_reservation, 4);
  XEN_CONST(memOp, "POPULATE_PHYSMAP", XENMEM_populate_physmap, 6);
  XEN_FIELD(reservation, xen_memory_reservation, extent_start, "extentStart", 0);
  XEN_FIELD(reservation, xen_memory_reservation, nr_extents, "nrExtents", 8);
  XEN_FIELD(reservation, xen_memory_reservation, extent_order, "extentOrder", 16);
  XEN_FIELD(reservation, xen_memory_reservation, mem_flags, "memFlags", 20);
  XEN_FIELD(reservation, xen_memory_reservation, domid, "domid", 24);
  XEN_SIZE(reservation, xen_memory_reservation, 32);
  // extent_start is a guest handle: one pointer to xen_pfn_t.
  static_assert(!kCheck || sizeof(xen_memory_reservation::extent_start) == sizeof(void*), "extent_start is a pointer");
  XEN_CONST(cacheAttr, "UC", XEN_DMOP_MEM_CACHEATTR_UC, 0);
  XEN_CONST(cacheAttr, "WC", XEN_DMOP_MEM_CACHEATTR_WC, 1);
  XEN_CONST(cacheAttr, "WT", XEN_DMOP_MEM_CACHEATTR_WT, 4);
  XEN_CONST(cacheAttr, "WP", XEN_DMOP_MEM_CACHEATTR_WP, 5);
  XEN_CONST(cacheAttr, "WB", XEN_DMOP_MEM_CACHEATTR_WB, 6);
  XEN_CONST(cacheAttr, "UCM", XEN_DMOP_MEM_CACHEATTR_UCM, 7);
  XEN_CONST(cacheAttr, "DELETE", XEN_DMOP_DELETE_MEM_CACHEATTR, 0xffffffffu);
  Table out(env);
  out.Set("Hypercall", hypercall.Get())
      .Set("XenMemOp", memOp.Get())
      .Set("XenMemoryReservation", reservation.Get())
      .Set("MemCacheAttr", cacheAttr.Get());
#ifdef MDEVKIT_XEN_DOMCTL
  Table domctl(env), cmd(env), maxMem(env);
  XEN_FIELD(domctl, xen_domctl, cmd, "cmd", 0);
  XEN_FIELD(domctl, xen_domctl, interface_version, "interfaceVersion", 4);
  XEN_FIELD(domctl, xen_domctl, domain, "domain", 8);
  XEN_FIELD(domctl, xen_domctl, _pad, "pad", 10);
  XEN_FIELD(domctl, xen_domctl, u, "u", 16);
  static_assert(!kCheck || sizeof(xen_domctl::u) == 128, "xen_domctl's union is 128 bytes");
  domctl.Set("unionSize", sizeof(xen_domctl::u));
  XEN_SIZE(domctl, xen_domctl, 144);
  XEN_CONST(cmd, "MAX_MEM", XEN_DOMCTL_max_mem, 11);
  XEN_FIELD(maxMem, xen_domctl_max_mem, max_memkb, "maxMemkb", 0);
  XEN_SIZE(maxMem, xen_domctl_max_mem, 8);
  static_assert(offsetof(xen_domctl, u) + offsetof(xen_domctl_max_mem, max_memkb) == offsetof(xen_domctl, u.max_mem.max_memkb), "max_mem is a member of xen_domctl.u");
  out.Set("XenDomctl", domctl.Get())
      .Set("DomctlCmd", cmd.Get())
      .Set("DomctlArgs", Table(env).Set("MAX_MEM", maxMem.Get()).Get())
      .Set("interfaceVersion", static_cast<double>(XEN_DOMCTL_INTERFACE_VERSION));
#endif
  return out.Get();
}

Napi::Object Evtchn(Napi::Env env) {
  Table bind(env), unbind(env), notify(env), restrict(env), ioctls(env);
  XEN_FIELD(bind, ioctl_evtchn_bind_interdomain, remote_domain, "remoteDomain", 0);
  XEN_FIELD(bind, ioctl_evtchn_bind_interdomain, remote_port, "remotePort", 4);
  XEN_SIZE(bind, ioctl_evtchn_bind_interdomain, 8);
  XEN_FIELD(unbind, ioctl_evtchn_unbind, port, "port", 0);
  XEN_SIZE(unbind, ioctl_evtchn_unbind, 4);
  XEN_FIELD(notify, ioctl_evtchn_notify, port, "port", 0);
  XEN_SIZE(notify, ioctl_evtchn_notify, 4);
  XEN_FIELD(restrict, ioctl_evtchn_restrict_domid, domid, "domid", 0);
  XEN_SIZE(restrict, ioctl_evtchn_restrict_domid, 2);
  XEN_ABI_CONST(ioctls, "BIND_INTERDOMAIN", IOCTL_EVTCHN_BIND_INTERDOMAIN, 0x00084501);
  XEN_ABI_CONST(ioctls, "UNBIND", IOCTL_EVTCHN_UNBIND, 0x00044503);
  XEN_ABI_CONST(ioctls, "NOTIFY", IOCTL_EVTCHN_NOTIFY, 0x00044504);
  XEN_ABI_CONST(ioctls, "RESTRICT_DOMID", IOCTL_EVTCHN_RESTRICT_DOMID, 0x00024506);
  return Table(env)
      .Set("EvtchnBindInterdomain", bind.Get())
      .Set("EvtchnUnbind", unbind.Get())
      .Set("EvtchnNotify", notify.Get())
      .Set("EvtchnRestrictDomid", restrict.Get())
      .Set("EvtchnIoctl", ioctls.Get())
      .Get();
}

}  // namespace
#endif  // MDEVKIT_XEN_HEADERS

void InitXenAbi(Napi::Env env, Napi::Object exports) {
  Napi::Object abi = Napi::Object::New(env);
  // The bit masks the native ioreq engine uses (xen_ioreq.h), compared with the header's bit
  // fields by the test whether or not the headers are here.
  Napi::Object engine = Napi::Object::New(env);
  engine.Set("STATE_MASK", kIoreqStateMask);
  engine.Set("DATA_IS_PTR", kIoreqDataIsPtr);
  engine.Set("DIR_READ", kIoreqDirRead);
  engine.Set("DF", kIoreqDf);
  engine.Set("bits", static_cast<double>(offsetof(XenIoreq, bits)));
  abi.Set("engineIoreqBits", engine);
#ifdef MDEVKIT_XEN_HEADERS
  abi.Set("headersPresent", true);
  abi.Set("interfaceVersion", static_cast<double>(__XEN_LATEST_INTERFACE_VERSION__));
  abi.Set("ioreq", Ioreq(env));
  abi.Set("ioreqBitImages", IoreqBitImages(env));
  abi.Set("bufIoreq", BufIoreq(env));
  abi.Set("bufIoreqBitImages", BufIoreqBitImages(env));
  abi.Set("bufferedPage", BufferedPage(env));
  abi.Set("ioreqConstants", IoreqConstants(env));
  abi.Set("pciSbdf", PciSbdfSamples(env));
  Table numbers(env), args(env);
  DmOps(env, numbers, args);
  abi.Set("DmOp", numbers.Get());
  abi.Set("DmOpArgs", args.Get());
  abi.Set("XenDmOp", XenDmOp(env));
  abi.Set("ModifiedMemoryExtent", ModifiedMemoryExtent(env));
  abi.Set("privcmd", Privcmd(env));
  abi.Set("evtchn", Evtchn(env));
  abi.Set("memory", Memory(env));
#else
  abi.Set("headersPresent", false);
#endif
  exports.Set("xenAbi", abi);
}

}  // namespace mdevkit
