/**
 * The device-model ABI an IOREQ server in dom0 uses through Linux, defined once: the DMOP numbers
 * and argument layouts of Xen's `xen/include/public/hvm/dm_op.h`, the privcmd ioctls that carry
 * DMOPs and map memory (Linux `include/uapi/xen/privcmd.h`), and the event-channel ioctls
 * (`include/uapi/xen/evtchn.h`), and the raw hypercalls a device model makes before it restricts its
 * privcmd handle (IOCTL_PRIVCMD_HYPERCALL: `XENMEM_*` memory ops of `xen/include/public/memory.h`
 * and the `XEN_DOMCTL_max_mem` domctl of `domctl.h`). The ioreq page ABI itself lives in
 * ioreq-abi.ts.
 *
 * Layouts are those of LP64 targets (x86_64, arm64), where Xen's `uint64_aligned_t` is a plain
 * 8-byte-aligned `uint64_t` and pointers and `size_t` are 8 bytes; fields are in host byte order.
 * The native core checks every offset and size here against the installed headers with
 * `static_assert` (native/src/xen_abi.cc) and exports them, and test/xen/abi.test.ts compares.
 *
 * The encoders are pure functions: they validate their arguments (errors name the argument) and
 * return the bytes Xen reads, so they can be tested without a hypervisor.
 * @module
 */
import { endianness } from 'node:os';
import { MdevError, checkBigInt, checkInt, describe } from '../../src/errors.js';
import { IOC, IOC_NONE, type IoctlArg } from '../../src/native/ioctl.js';
import type { PfnExtent } from './host.js';
import { BufioreqMode, IoRangeType } from './ioreq-abi.js';

const LE = endianness() === 'LE';
const U64_MAX = (1n << 64n) - 1n;
const U32_MAX = 0xffff_ffff;

/** DMOP numbers (`XEN_DMOP_*`). */
export const DmOp = {
  CREATE_IOREQ_SERVER: 1,
  GET_IOREQ_SERVER_INFO: 2,
  MAP_IO_RANGE_TO_IOREQ_SERVER: 3,
  UNMAP_IO_RANGE_FROM_IOREQ_SERVER: 4,
  SET_IOREQ_SERVER_STATE: 5,
  DESTROY_IOREQ_SERVER: 6,
  TRACK_DIRTY_VRAM: 7,
  SET_PCI_INTX_LEVEL: 8,
  SET_ISA_IRQ_LEVEL: 9,
  SET_PCI_LINK_ROUTE: 10,
  MODIFIED_MEMORY: 11,
  SET_MEM_TYPE: 12,
  INJECT_EVENT: 13,
  INJECT_MSI: 14,
  MAP_MEM_TYPE_TO_IOREQ_SERVER: 15,
  REMOTE_SHUTDOWN: 16,
  RELOCATE_MEMORY: 17,
  PIN_MEMORY_CACHEATTR: 18,
  SET_IRQ_LEVEL: 19,
  NR_VCPUS: 20,
} as const;

/** The name of a DMOP as Xen's header spells it (`XEN_DMOP_create_ioreq_server`), for messages. */
export function dmOpName(op: number): string {
  const key = (Object.keys(DmOp) as (keyof typeof DmOp)[]).find((k) => DmOp[k] === op);
  return key === undefined ? `XEN_DMOP ${op}` : `XEN_DMOP_${key.toLowerCase()}`;
}

/** `struct xen_dm_op_ioreq_server_range`, the argument of both map and unmap_io_range. */
const IoreqServerRange = { id: 0, pad: 2, type: 4, start: 8, end: 16, sizeof: 24 } as const;

/**
 * The argument struct of each DMOP (the member of `xen_dm_op.u`): field offsets from the start of
 * the union, and `sizeof`.
 */
export const DmOpArgs = {
  /** `struct xen_dm_op_create_ioreq_server`: IN handle_bufioreq (u8), OUT id (ioservid_t). */
  CREATE_IOREQ_SERVER: { handleBufioreq: 0, pad: 1, id: 4, sizeof: 6 },
  /** `struct xen_dm_op_get_ioreq_server_info`: IN id, flags (u16); OUT bufioreq_port (u32), gfns (u64). */
  GET_IOREQ_SERVER_INFO: { id: 0, flags: 2, bufioreqPort: 4, ioreqGfn: 8, bufioreqGfn: 16, sizeof: 24 },
  /** `struct xen_dm_op_ioreq_server_range`: id, type (u32), inclusive start and end (u64). */
  MAP_IO_RANGE_TO_IOREQ_SERVER: IoreqServerRange,
  /** `struct xen_dm_op_ioreq_server_range`, as for map. */
  UNMAP_IO_RANGE_FROM_IOREQ_SERVER: IoreqServerRange,
  /** `struct xen_dm_op_set_ioreq_server_state`: id, enabled (u8). */
  SET_IOREQ_SERVER_STATE: { id: 0, enabled: 2, pad: 3, sizeof: 4 },
  /** `struct xen_dm_op_destroy_ioreq_server`: id. */
  DESTROY_IOREQ_SERVER: { id: 0, pad: 2, sizeof: 4 },
  /** `struct xen_dm_op_track_dirty_vram`: nr (u32), first_pfn (u64); the bitmap is buffer 1. */
  TRACK_DIRTY_VRAM: { nr: 0, pad: 4, firstPfn: 8, sizeof: 16 },
  /** `struct xen_dm_op_set_pci_intx_level`: domain (u16), bus, device, intx, level (u8). */
  SET_PCI_INTX_LEVEL: { domain: 0, bus: 2, device: 3, intx: 4, level: 5, sizeof: 6 },
  /** `struct xen_dm_op_set_isa_irq_level`: isa_irq, level (u8). */
  SET_ISA_IRQ_LEVEL: { isaIrq: 0, level: 1, sizeof: 2 },
  /** `struct xen_dm_op_set_pci_link_route`: link, isa_irq (u8). */
  SET_PCI_LINK_ROUTE: { link: 0, isaIrq: 1, sizeof: 2 },
  /** `struct xen_dm_op_modified_memory`: nr_extents, opaque (u32); the extents are buffer 1. */
  MODIFIED_MEMORY: { nrExtents: 0, opaque: 4, sizeof: 8 },
  /** `struct xen_dm_op_set_mem_type`: nr (u32), mem_type (u16), first_pfn (u64). */
  SET_MEM_TYPE: { nr: 0, memType: 4, pad: 6, firstPfn: 8, sizeof: 16 },
  /** `struct xen_dm_op_inject_event`. */
  INJECT_EVENT: { vcpuid: 0, vector: 4, type: 5, insnLen: 6, pad0: 7, errorCode: 8, pad1: 12, cr2: 16, sizeof: 24 },
  /** `struct xen_dm_op_inject_msi`: data (u32), addr (u64). */
  INJECT_MSI: { data: 0, pad: 4, addr: 8, sizeof: 16 },
  /** `struct xen_dm_op_map_mem_type_to_ioreq_server`: id, type (u16), flags (u32), opaque (u64). */
  MAP_MEM_TYPE_TO_IOREQ_SERVER: { id: 0, type: 2, flags: 4, opaque: 8, sizeof: 16 },
  /** `struct xen_dm_op_remote_shutdown`: reason (u32). */
  REMOTE_SHUTDOWN: { reason: 0, sizeof: 4 },
  /** `struct xen_dm_op_relocate_memory`: size (u32), src_gfn, dst_gfn (u64). */
  RELOCATE_MEMORY: { size: 0, pad: 4, srcGfn: 8, dstGfn: 16, sizeof: 24 },
  /** `struct xen_dm_op_pin_memory_cacheattr`: start, end (u64), type (u32). */
  PIN_MEMORY_CACHEATTR: { start: 0, end: 8, type: 16, pad: 20, sizeof: 24 },
  /** `struct xen_dm_op_set_irq_level` (Arm): irq (u32), level (u8). */
  SET_IRQ_LEVEL: { irq: 0, level: 4, pad: 5, sizeof: 8 },
  /** `struct xen_dm_op_nr_vcpus`: OUT vcpus (u32). */
  NR_VCPUS: { vcpus: 0, sizeof: 4 },
} as const;

/** `struct xen_dm_op_modified_memory_extent`, the elements of modified_memory's buffer 1. */
export const ModifiedMemoryExtent = { nr: 0, pad: 4, firstPfn: 8, sizeof: 16 } as const;

/**
 * Caching types of pin_memory_cacheattr (`XEN_DMOP_MEM_CACHEATTR_*`, the x86 MTRR/PAT codes), and
 * `DELETE` (`XEN_DMOP_DELETE_MEM_CACHEATTR`), which removes a pinned range.
 */
export const MemCacheAttr = { UC: 0, WC: 1, WT: 4, WP: 5, WB: 6, UCM: 7, DELETE: 0xffff_ffff } as const;

/** The name of a {@link MemCacheAttr} type. */
export type MemCacheAttrName = keyof typeof MemCacheAttr;

// The union holds uint64_aligned_t members, so it is 8-byte aligned and sized to its largest
// member rounded up to 8.
const UNION_ALIGN = 8;
const UNION_SIZE = Math.ceil(Math.max(...Object.values(DmOpArgs).map((a) => a.sizeof)) / UNION_ALIGN) * UNION_ALIGN;

/**
 * `struct xen_dm_op { uint32_t op; uint32_t pad; union { ... } u; }`: buffer 0 of every DMOP.
 * `unionSize` is that of the largest argument struct (24 bytes), so `sizeof` is 32.
 */
export const XenDmOp = { op: 0, pad: 4, u: 8, unionSize: UNION_SIZE, sizeof: 8 + UNION_SIZE } as const;

/** Flags of get_ioreq_server_info (`XEN_DMOP_no_gfns`: do not map the legacy ioreq gfns). */
export const GetIoreqServerInfoFlag = { NO_GFNS: 1 } as const;

/** Domain ids at and above this (`DOMID_FIRST_RESERVED`, 0x7ff0) name no ordinary domain. */
export const DOMID_FIRST_RESERVED = 0x7ff0;

/** Xen's limit on track_dirty_vram's `nr`: 1 GiB of 4 KiB frames. */
export const TRACK_DIRTY_VRAM_MAX_NR = (1 << 30) >> 12;

// ---------------------------------------------------------------------------------------------
// Linux privcmd (include/uapi/xen/privcmd.h)

/** `struct privcmd_dm_op { domid_t dom; __u16 num; const struct privcmd_dm_op_buf *ubufs; }`. */
export const PrivcmdDmOp = { dom: 0, num: 2, ubufs: 8, sizeof: 16 } as const;

/** `struct privcmd_dm_op_buf { void *uptr; size_t size; }`, privcmd's `xen_dm_op_buf`. */
export const PrivcmdDmOpBuf = { uptr: 0, size: 8, sizeof: 16 } as const;

/** `struct privcmd_mmapbatch_v2 { unsigned num; domid_t dom; __u64 addr; const xen_pfn_t *arr; int *err; }`. */
export const PrivcmdMmapBatchV2 = { num: 0, dom: 4, addr: 8, arr: 16, err: 24, sizeof: 32 } as const;

/** `struct privcmd_mmap_resource { domid_t dom; __u32 type, id, idx; __u64 num, addr; }`. */
export const PrivcmdMmapResource = { dom: 0, type: 4, id: 8, idx: 12, num: 16, addr: 24, sizeof: 32 } as const;

/** `sizeof(domid_t)`: IOCTL_PRIVCMD_RESTRICT's argument. */
export const DOMID_SIZE = 2;

/** `sizeof(xen_pfn_t)`: the elements of MMAPBATCH_V2's `arr`. */
export const XEN_PFN_SIZE = 8;

/**
 * Linux's defaults for its privcmd module parameters `dm_op_max_nr_bufs` and
 * `dm_op_buf_max_size`: DM_OP fails with E2BIG beyond them.
 */
export const PrivcmdDmOpLimits = { maxBufs: 16, maxBufSize: 4096 } as const;

/** `struct privcmd_hypercall { __u64 op; __u64 arg[5]; }`: IOCTL_PRIVCMD_HYPERCALL's argument. */
export const PrivcmdHypercall = { op: 0, arg: 8, nrArgs: 5, sizeof: 48 } as const;

/** The privcmd ioctls (`_IOC(_IOC_NONE, 'P', nr, sizeof(arg))`). */
export const PrivcmdIoctl = {
  HYPERCALL: IOC(IOC_NONE, 'P', 0, PrivcmdHypercall.sizeof),
  MMAPBATCH_V2: IOC(IOC_NONE, 'P', 4, PrivcmdMmapBatchV2.sizeof),
  DM_OP: IOC(IOC_NONE, 'P', 5, PrivcmdDmOp.sizeof),
  RESTRICT: IOC(IOC_NONE, 'P', 6, DOMID_SIZE),
  MMAP_RESOURCE: IOC(IOC_NONE, 'P', 7, PrivcmdMmapResource.sizeof),
} as const;

// ---------------------------------------------------------------------------------------------
// Raw hypercalls (xen/include/public/xen.h, memory.h, domctl.h). IOCTL_PRIVCMD_RESTRICT makes
// privcmd refuse these (EPERM): a device model makes them before it restricts its handle.

/** Hypercall numbers (`__HYPERVISOR_*`). */
export const Hypercall = { MEMORY_OP: 12, DOMCTL: 36 } as const;

/** `XENMEM_*` sub-operations of memory_op. */
export const XenMemOp = {
  /** arg: `domid_t *`; returns the domain's pages (`tot_pages`). */
  CURRENT_RESERVATION: 3,
  /** arg: `domid_t *`; returns the domain's page limit (`max_pages`). */
  MAXIMUM_RESERVATION: 4,
  /** arg: `struct xen_memory_reservation *`; returns how many extents were populated. */
  POPULATE_PHYSMAP: 6,
} as const;

/**
 * `struct xen_memory_reservation` (LP64): `XEN_GUEST_HANDLE(xen_pfn_t) extent_start` (a pointer),
 * `xen_ulong_t nr_extents`, `unsigned int extent_order`, `unsigned int mem_flags`, `domid_t domid`.
 */
export const XenMemoryReservation = { extentStart: 0, nrExtents: 8, extentOrder: 16, memFlags: 20, domid: 24, sizeof: 32 } as const;

/**
 * `struct xen_domctl`: `uint32_t cmd`, `uint32_t interface_version`, `domid_t domain`,
 * `uint16_t _pad[3]`, then a union padded to 128 bytes (8-byte aligned).
 */
export const XenDomctl = { cmd: 0, interfaceVersion: 4, domain: 8, pad: 10, u: 16, unionSize: 128, sizeof: 144 } as const;

/** `XEN_DOMCTL_*` commands used here. */
export const DomctlCmd = { MAX_MEM: 11 } as const;

/** Argument structs of {@link DomctlCmd} (members of `xen_domctl.u`). */
export const DomctlArgs = {
  /** `struct xen_domctl_max_mem`: IN max_memkb (u64, KiB). */
  MAX_MEM: { maxMemkb: 0, sizeof: 8 },
} as const;

/**
 * `XEN_DOMCTL_INTERFACE_VERSION` of Xen 4.17 (Debian 12's libxen-dev). Xen refuses a domctl of
 * another version with EACCES; the version changes between Xen releases even where the struct a
 * command uses does not (max_mem's has not changed since Xen 3).
 */
export const XEN_DOMCTL_INTERFACE_VERSION_4_17 = 0x15;

/** Xen stores `max_pages` in an `unsigned int`: larger limits are clipped to this. */
export const MAX_DOMAIN_PAGES = U32_MAX;

// ---------------------------------------------------------------------------------------------
// Linux evtchn (include/uapi/xen/evtchn.h)

/** `struct ioctl_evtchn_bind_interdomain { unsigned int remote_domain, remote_port; }`. */
export const EvtchnBindInterdomain = { remoteDomain: 0, remotePort: 4, sizeof: 8 } as const;

/** `struct ioctl_evtchn_unbind { unsigned int port; }`. */
export const EvtchnUnbind = { port: 0, sizeof: 4 } as const;

/** `struct ioctl_evtchn_notify { unsigned int port; }`. */
export const EvtchnNotify = { port: 0, sizeof: 4 } as const;

/** `struct ioctl_evtchn_restrict_domid { domid_t domid; }`. */
export const EvtchnRestrictDomid = { domid: 0, sizeof: 2 } as const;

/**
 * The evtchn ioctls (`_IOC(_IOC_NONE, 'E', nr, sizeof(arg))`). BIND_INTERDOMAIN returns the new
 * local port; reading the fd yields fired local ports (u32 each), writing them back unmasks.
 */
export const EvtchnIoctl = {
  BIND_INTERDOMAIN: IOC(IOC_NONE, 'E', 1, EvtchnBindInterdomain.sizeof),
  UNBIND: IOC(IOC_NONE, 'E', 3, EvtchnUnbind.sizeof),
  NOTIFY: IOC(IOC_NONE, 'E', 4, EvtchnNotify.sizeof),
  RESTRICT_DOMID: IOC(IOC_NONE, 'E', 6, EvtchnRestrictDomid.sizeof),
} as const;

// ---------------------------------------------------------------------------------------------
// Argument checks

/** Checks a domain id: an ordinary domain, `0 <= domid < DOMID_FIRST_RESERVED`. */
export function checkDomid(field: string, domid: unknown): number {
  return checkInt(field, domid, 0, DOMID_FIRST_RESERVED - 1);
}

/** Checks an ioreq server id (`ioservid_t`, u16). */
export function checkIoservid(field: string, id: unknown): number {
  return checkInt(field, id, 0, 0xffff);
}

function checkU64(field: string, value: unknown): bigint {
  return checkBigInt(field, value, 0n, U64_MAX);
}

function checkBool(field: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw new MdevError('EINVAL', `must be a boolean, got ${describe(value)}`, field);
  return value;
}

// ---------------------------------------------------------------------------------------------
// DMOP encoders: each returns the 32-byte struct xen_dm_op for buffer 0.

function encode(op: number, fill: (u: DataView) => void): Uint8Array {
  const bytes = new Uint8Array(XenDmOp.sizeof);
  const view = new DataView(bytes.buffer);
  view.setUint32(XenDmOp.op, op, LE);
  fill(new DataView(bytes.buffer, XenDmOp.u, XenDmOp.unionSize));
  return bytes;
}

/** Encodes create_ioreq_server with `handle_bufioreq` = an `HVM_IOREQSRV_BUFIOREQ_*` value. */
export function encodeCreateIoreqServer(handleBufioreq: number): Uint8Array {
  checkInt('handleBufioreq', handleBufioreq, BufioreqMode.OFF, BufioreqMode.ATOMIC);
  return encode(DmOp.CREATE_IOREQ_SERVER, (u) => u.setUint8(DmOpArgs.CREATE_IOREQ_SERVER.handleBufioreq, handleBufioreq));
}

/** Encodes get_ioreq_server_info; `flags` is a mask of {@link GetIoreqServerInfoFlag}. */
export function encodeGetIoreqServerInfo(id: number, flags: number): Uint8Array {
  checkIoservid('id', id);
  checkInt('flags', flags, 0, 0xffff);
  const a = DmOpArgs.GET_IOREQ_SERVER_INFO;
  return encode(DmOp.GET_IOREQ_SERVER_INFO, (u) => {
    u.setUint16(a.id, id, LE);
    u.setUint16(a.flags, flags, LE);
  });
}

/**
 * Encodes map_io_range_to_ioreq_server (`map` true) or unmap_io_range_from_ioreq_server.
 * `start` and `end` are inclusive; `end < start` is refused here, as Xen refuses it (XSA-238).
 * Port ranges must lie in [0, 0xffff] and PCI ranges (SBDFs, see `pciSbdf`) in [0, 2^32 - 1].
 * @param type an `XEN_DMOP_IO_RANGE_*` value ({@link IoRangeType})
 */
export function encodeIoRange(map: boolean, id: number, type: number, start: bigint, end: bigint): Uint8Array {
  checkBool('map', map);
  checkIoservid('id', id);
  checkInt('type', type, IoRangeType.PORT, IoRangeType.PCI);
  const max = type === IoRangeType.PORT ? 0xffffn : type === IoRangeType.PCI ? BigInt(U32_MAX) : U64_MAX;
  checkBigInt('start', start, 0n, max);
  checkBigInt('end', end, 0n, max);
  if (end < start) throw new MdevError('EINVAL', `must be >= start (${start}), got ${end}: ranges are inclusive`, 'end');
  const a = IoreqServerRange;
  return encode(map ? DmOp.MAP_IO_RANGE_TO_IOREQ_SERVER : DmOp.UNMAP_IO_RANGE_FROM_IOREQ_SERVER, (u) => {
    u.setUint16(a.id, id, LE);
    u.setUint32(a.type, type, LE);
    u.setBigUint64(a.start, start, LE);
    u.setBigUint64(a.end, end, LE);
  });
}

/** Encodes set_ioreq_server_state. */
export function encodeSetIoreqServerState(id: number, enabled: boolean): Uint8Array {
  checkIoservid('id', id);
  checkBool('enabled', enabled);
  const a = DmOpArgs.SET_IOREQ_SERVER_STATE;
  return encode(DmOp.SET_IOREQ_SERVER_STATE, (u) => {
    u.setUint16(a.id, id, LE);
    u.setUint8(a.enabled, enabled ? 1 : 0);
  });
}

/** Encodes destroy_ioreq_server. */
export function encodeDestroyIoreqServer(id: number): Uint8Array {
  checkIoservid('id', id);
  return encode(DmOp.DESTROY_IOREQ_SERVER, (u) => u.setUint16(DmOpArgs.DESTROY_IOREQ_SERVER.id, id, LE));
}

/**
 * Encodes track_dirty_vram for `nr` frames from `firstPfn` (`nr` 0 stops tracking). Buffer 1 is
 * the bitmap, at least `ceil(nr / 8)` bytes.
 */
export function encodeTrackDirtyVram(firstPfn: bigint, nr: number): Uint8Array {
  checkU64('firstPfn', firstPfn);
  checkInt('nr', nr, 0, TRACK_DIRTY_VRAM_MAX_NR);
  const a = DmOpArgs.TRACK_DIRTY_VRAM;
  return encode(DmOp.TRACK_DIRTY_VRAM, (u) => {
    u.setUint32(a.nr, nr, LE);
    u.setBigUint64(a.firstPfn, firstPfn, LE);
  });
}

/** Encodes set_pci_intx_level for INTx pin `intx` (0-3 = INTA-INTD) of `segment:bus:device`. */
export function encodeSetPciIntxLevel(segment: number, bus: number, device: number, intx: number, level: boolean): Uint8Array {
  checkInt('segment', segment, 0, 0xffff);
  checkInt('bus', bus, 0, 0xff);
  checkInt('device', device, 0, 0x1f);
  checkInt('intx', intx, 0, 3);
  checkBool('level', level);
  const a = DmOpArgs.SET_PCI_INTX_LEVEL;
  return encode(DmOp.SET_PCI_INTX_LEVEL, (u) => {
    u.setUint16(a.domain, segment, LE);
    u.setUint8(a.bus, bus);
    u.setUint8(a.device, device);
    u.setUint8(a.intx, intx);
    u.setUint8(a.level, level ? 1 : 0);
  });
}

/** Encodes set_isa_irq_level for ISA IRQ 0-15. */
export function encodeSetIsaIrqLevel(isaIrq: number, level: boolean): Uint8Array {
  checkInt('isaIrq', isaIrq, 0, 15);
  checkBool('level', level);
  const a = DmOpArgs.SET_ISA_IRQ_LEVEL;
  return encode(DmOp.SET_ISA_IRQ_LEVEL, (u) => {
    u.setUint8(a.isaIrq, isaIrq);
    u.setUint8(a.level, level ? 1 : 0);
  });
}

/** Encodes modified_memory for `nrExtents` extents (`opaque`, Xen's continuation state, is 0). */
export function encodeModifiedMemory(nrExtents: number): Uint8Array {
  checkInt('nrExtents', nrExtents, 1, U32_MAX);
  return encode(DmOp.MODIFIED_MEMORY, (u) => u.setUint32(DmOpArgs.MODIFIED_MEMORY.nrExtents, nrExtents, LE));
}

/** Encodes modified_memory's buffer 1: an array of `struct xen_dm_op_modified_memory_extent`. */
export function encodeModifiedMemoryExtents(extents: readonly PfnExtent[]): Uint8Array {
  if (!Array.isArray(extents) || extents.length === 0) {
    throw new MdevError('EINVAL', `must be a non-empty array of extents, got ${describe(extents)}`, 'extents');
  }
  const bytes = new Uint8Array(extents.length * ModifiedMemoryExtent.sizeof);
  const view = new DataView(bytes.buffer);
  extents.forEach((extent, i) => {
    const field = `extents[${i}]`;
    if (typeof extent !== 'object' || extent === null) throw new MdevError('EINVAL', `must be {firstPfn, nr}, got ${describe(extent)}`, field);
    const firstPfn = checkU64(`${field}.firstPfn`, extent.firstPfn);
    const nr = checkInt(`${field}.nr`, extent.nr, 1, U32_MAX);
    if (firstPfn + BigInt(nr) - 1n > U64_MAX) throw new MdevError('ERANGE', 'firstPfn + nr - 1 exceeds 2^64 - 1', field);
    const at = i * ModifiedMemoryExtent.sizeof;
    view.setUint32(at + ModifiedMemoryExtent.nr, nr, LE);
    view.setBigUint64(at + ModifiedMemoryExtent.firstPfn, firstPfn, LE);
  });
  return bytes;
}

/** Encodes set_mem_type: `nr` frames from `firstPfn` become `memType` (an `HVMMEM_*` value). */
export function encodeSetMemType(memType: number, firstPfn: bigint, nr: number): Uint8Array {
  checkInt('memType', memType, 0, 0xffff);
  checkU64('firstPfn', firstPfn);
  checkInt('nr', nr, 1, U32_MAX);
  const a = DmOpArgs.SET_MEM_TYPE;
  return encode(DmOp.SET_MEM_TYPE, (u) => {
    u.setUint32(a.nr, nr, LE);
    u.setUint16(a.memType, memType, LE);
    u.setBigUint64(a.firstPfn, firstPfn, LE);
  });
}

/** Encodes inject_msi: a write of `data` to the MSI `address`. */
export function encodeInjectMsi(address: bigint, data: number): Uint8Array {
  checkU64('address', address);
  checkInt('data', data, 0, U32_MAX);
  const a = DmOpArgs.INJECT_MSI;
  return encode(DmOp.INJECT_MSI, (u) => {
    u.setUint32(a.data, data, LE);
    u.setBigUint64(a.addr, address, LE);
  });
}

/**
 * Encodes map_mem_type_to_ioreq_server (`opaque`, Xen's continuation state, is 0).
 * @param flags a mask of `XEN_DMOP_IOREQ_MEM_ACCESS_*`; 0 releases the claim
 */
export function encodeMapMemTypeToIoreqServer(id: number, memType: number, flags: number): Uint8Array {
  checkIoservid('id', id);
  checkInt('memType', memType, 0, 0xffff);
  checkInt('flags', flags, 0, U32_MAX);
  const a = DmOpArgs.MAP_MEM_TYPE_TO_IOREQ_SERVER;
  return encode(DmOp.MAP_MEM_TYPE_TO_IOREQ_SERVER, (u) => {
    u.setUint16(a.id, id, LE);
    u.setUint16(a.type, memType, LE);
    u.setUint32(a.flags, flags, LE);
  });
}

/** Encodes nr_vcpus (no input). */
export function encodeNrVcpus(): Uint8Array {
  return encode(DmOp.NR_VCPUS, () => {});
}

/**
 * Encodes relocate_memory: `size` frames move from `srcGfn` to `dstGfn` (one at a time, lowest
 * first: XENMAPSPACE_gmfn_range). Both ranges must fit below 2^64.
 */
export function encodeRelocateMemory(srcGfn: bigint, dstGfn: bigint, size: number): Uint8Array {
  checkU64('srcGfn', srcGfn);
  checkU64('dstGfn', dstGfn);
  checkInt('size', size, 0, U32_MAX);
  if (srcGfn + BigInt(size) - 1n > U64_MAX) throw new MdevError('ERANGE', 'srcGfn + size - 1 exceeds 2^64 - 1', 'size');
  if (dstGfn + BigInt(size) - 1n > U64_MAX) throw new MdevError('ERANGE', 'dstGfn + size - 1 exceeds 2^64 - 1', 'size');
  const a = DmOpArgs.RELOCATE_MEMORY;
  return encode(DmOp.RELOCATE_MEMORY, (u) => {
    u.setUint32(a.size, size, LE);
    u.setBigUint64(a.srcGfn, srcGfn, LE);
    u.setBigUint64(a.dstGfn, dstGfn, LE);
  });
}

/**
 * Encodes pin_memory_cacheattr for the frames `[startGfn, endGfn]` (inclusive; `end < start` is
 * refused here as Xen refuses it).
 * @param type a {@link MemCacheAttr} value (DELETE removes the range pinned with exactly these bounds)
 */
export function encodePinMemoryCacheattr(startGfn: bigint, endGfn: bigint, type: number): Uint8Array {
  checkU64('startGfn', startGfn);
  checkU64('endGfn', endGfn);
  if (endGfn < startGfn) throw new MdevError('EINVAL', `must be >= startGfn (${startGfn}), got ${endGfn}: ranges are inclusive`, 'endGfn');
  checkInt('type', type, 0, U32_MAX);
  if (!Object.values(MemCacheAttr).includes(type as never)) {
    throw new MdevError('EINVAL', `must be a XEN_DMOP_MEM_CACHEATTR_* value (0, 1, 4-7) or DELETE (0xffffffff), got ${type}`, 'type');
  }
  const a = DmOpArgs.PIN_MEMORY_CACHEATTR;
  return encode(DmOp.PIN_MEMORY_CACHEATTR, (u) => {
    u.setBigUint64(a.start, startGfn, LE);
    u.setBigUint64(a.end, endGfn, LE);
    u.setUint32(a.type, type, LE);
  });
}

// ---------------------------------------------------------------------------------------------
// Hypercall encoders (IOCTL_PRIVCMD_HYPERCALL)

/** One argument of a hypercall: a value, or a buffer (or nested argument) whose address is passed. */
export type HypercallArg = bigint | Uint8Array | BigUint64Array | IoctlArg;

/**
 * The argument of IOCTL_PRIVCMD_HYPERCALL: `{op, arg[5]}` with `args` stored in order (missing
 * ones 0); buffer arguments are passed by address (pointer marshaling). The ioctl returns the
 * hypercall's own non-negative result; a negative one comes back as the ioctl's errno.
 */
export function privcmdHypercallArg(op: number, args: readonly HypercallArg[]): IoctlArg {
  checkInt('op', op, 0, U32_MAX);
  if (!Array.isArray(args) || args.length > PrivcmdHypercall.nrArgs) {
    throw new MdevError('EINVAL', `must be an array of at most ${PrivcmdHypercall.nrArgs} arguments, got ${describe(args)}`, 'args');
  }
  const data = new Uint8Array(PrivcmdHypercall.sizeof);
  const view = new DataView(data.buffer);
  view.setBigUint64(PrivcmdHypercall.op, BigInt(op), LE);
  const pointers: { offset: number; target: Uint8Array | BigUint64Array | IoctlArg }[] = [];
  args.forEach((arg, i) => {
    const offset = PrivcmdHypercall.arg + 8 * i;
    if (typeof arg === 'bigint') view.setBigUint64(offset, checkU64(`args[${i}]`, arg), LE);
    else if (arg instanceof Uint8Array || arg instanceof BigUint64Array || (typeof arg === 'object' && arg !== null && 'data' in arg)) pointers.push({ offset, target: arg });
    else throw new MdevError('EINVAL', `must be a bigint or a buffer, got ${describe(arg)}`, `args[${i}]`);
  });
  return { data, pointers };
}

/** A `domid_t` in its own buffer: the argument of XENMEM_current_reservation and XENMEM_maximum_reservation. */
export function encodeDomidArg(domid: number): Uint8Array {
  return domidBytes(domid);
}

/**
 * `struct xen_memory_reservation` for XENMEM_populate_physmap of `domid`: one order-0 extent per
 * element of `gfns` (`extent_start` points at them), no flags.
 */
export function encodeMemoryReservation(domid: number, gfns: BigUint64Array): IoctlArg {
  checkDomid('domid', domid);
  if (!(gfns instanceof BigUint64Array) || gfns.length === 0) {
    throw new MdevError('EINVAL', `must be a non-empty BigUint64Array, got ${describe(gfns)}`, 'gfns');
  }
  const data = new Uint8Array(XenMemoryReservation.sizeof);
  const view = new DataView(data.buffer);
  view.setBigUint64(XenMemoryReservation.nrExtents, BigInt(gfns.length), LE);
  view.setUint32(XenMemoryReservation.extentOrder, 0, LE);
  view.setUint32(XenMemoryReservation.memFlags, 0, LE);
  view.setUint16(XenMemoryReservation.domid, domid, LE);
  return { data, pointers: [{ offset: XenMemoryReservation.extentStart, target: gfns }] };
}

/**
 * `struct xen_domctl` for XEN_DOMCTL_max_mem: the domain's page limit becomes `maxMemkb` KiB
 * (Xen keeps `maxMemkb / 4` pages, clipped to 2^32 - 1).
 * @param interfaceVersion `XEN_DOMCTL_INTERFACE_VERSION` of the running Xen (4.17: {@link XEN_DOMCTL_INTERFACE_VERSION_4_17})
 */
export function encodeDomctlMaxMem(domid: number, maxMemkb: bigint, interfaceVersion: number): Uint8Array {
  checkDomid('domid', domid);
  checkU64('maxMemkb', maxMemkb);
  checkInt('interfaceVersion', interfaceVersion, 0, U32_MAX);
  const data = new Uint8Array(XenDomctl.sizeof);
  const view = new DataView(data.buffer);
  view.setUint32(XenDomctl.cmd, DomctlCmd.MAX_MEM, LE);
  view.setUint32(XenDomctl.interfaceVersion, interfaceVersion, LE);
  view.setUint16(XenDomctl.domain, domid, LE);
  view.setBigUint64(XenDomctl.u + DomctlArgs.MAX_MEM.maxMemkb, maxMemkb, LE);
  return data;
}

// ---------------------------------------------------------------------------------------------
// Decoders of the DMOPs that return values in buffer 0.

function decodeView(op: number, bytes: Uint8Array): DataView {
  if (!(bytes instanceof Uint8Array) || bytes.byteLength < XenDmOp.sizeof) {
    throw new MdevError('EINVAL', `must be a ${XenDmOp.sizeof}-byte struct xen_dm_op, got ${describe(bytes)}`, 'bytes');
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, XenDmOp.sizeof);
  const actual = view.getUint32(XenDmOp.op, LE);
  if (actual !== op) throw new MdevError('EINVAL', `holds ${dmOpName(actual)}, expected ${dmOpName(op)}`, 'bytes');
  return new DataView(bytes.buffer, bytes.byteOffset + XenDmOp.u, XenDmOp.unionSize);
}

/** The server id create_ioreq_server returned. */
export function decodeCreateIoreqServer(bytes: Uint8Array): number {
  return decodeView(DmOp.CREATE_IOREQ_SERVER, bytes).getUint16(DmOpArgs.CREATE_IOREQ_SERVER.id, LE);
}

/**
 * What get_ioreq_server_info returned. `bufioreqPort` is 0 when the server has no buffered ring
 * (Xen leaves it untouched and port 0 is never a valid event channel); the gfns are only
 * meaningful without `XEN_DMOP_no_gfns`.
 */
export function decodeGetIoreqServerInfo(bytes: Uint8Array): { bufioreqPort: number; ioreqGfn: bigint; bufioreqGfn: bigint } {
  const u = decodeView(DmOp.GET_IOREQ_SERVER_INFO, bytes);
  const a = DmOpArgs.GET_IOREQ_SERVER_INFO;
  return { bufioreqPort: u.getUint32(a.bufioreqPort, LE), ioreqGfn: u.getBigUint64(a.ioreqGfn, LE), bufioreqGfn: u.getBigUint64(a.bufioreqGfn, LE) };
}

/** The vCPU count nr_vcpus returned. */
export function decodeNrVcpus(bytes: Uint8Array): number {
  return decodeView(DmOp.NR_VCPUS, bytes).getUint32(DmOpArgs.NR_VCPUS.vcpus, LE);
}

// ---------------------------------------------------------------------------------------------
// ioctl arguments

/**
 * The argument of IOCTL_PRIVCMD_DM_OP: `privcmd_dm_op {dom, num, ubufs}` pointing at an array of
 * `privcmd_dm_op_buf {uptr, size}`, one per buffer (buffer 0 is the struct xen_dm_op). Xen reads
 * and writes the buffers themselves, so results appear in them after the call.
 */
export function privcmdDmOpArg(domid: number, bufs: readonly Uint8Array[]): IoctlArg {
  checkDomid('domid', domid);
  if (!Array.isArray(bufs) || bufs.length === 0 || bufs.length > 0xffff) {
    throw new MdevError('EINVAL', `must be an array of 1 to 65535 buffers, got ${describe(bufs)}`, 'bufs');
  }
  const list = new Uint8Array(bufs.length * PrivcmdDmOpBuf.sizeof);
  const listView = new DataView(list.buffer);
  bufs.forEach((buf, i) => {
    if (!(buf instanceof Uint8Array)) throw new MdevError('EINVAL', `must be a Uint8Array, got ${describe(buf)}`, `bufs[${i}]`);
    listView.setBigUint64(i * PrivcmdDmOpBuf.sizeof + PrivcmdDmOpBuf.size, BigInt(buf.byteLength), LE);
  });
  const head = new Uint8Array(PrivcmdDmOp.sizeof);
  const headView = new DataView(head.buffer);
  headView.setUint16(PrivcmdDmOp.dom, domid, LE);
  headView.setUint16(PrivcmdDmOp.num, bufs.length, LE);
  return {
    data: head,
    pointers: [
      {
        offset: PrivcmdDmOp.ubufs,
        target: { data: list, pointers: bufs.map((buf, i) => ({ offset: i * PrivcmdDmOpBuf.sizeof + PrivcmdDmOpBuf.uptr, target: buf })) },
      },
    ],
  };
}

/**
 * The argument of IOCTL_PRIVCMD_MMAPBATCH_V2: map `gfns` of `domid` at `addr`, the start of a
 * privcmd mapping of exactly `gfns.length` pages; the kernel stores each frame's error (a negative
 * errno, or 0) in `errs`.
 */
export function privcmdMmapBatchV2Arg(domid: number, addr: bigint, gfns: BigUint64Array, errs: Int32Array): IoctlArg {
  checkDomid('domid', domid);
  checkU64('addr', addr);
  if (!(gfns instanceof BigUint64Array) || gfns.length === 0 || gfns.length > U32_MAX) {
    throw new MdevError('EINVAL', `must be a non-empty BigUint64Array, got ${describe(gfns)}`, 'gfns');
  }
  if (!(errs instanceof Int32Array) || errs.length !== gfns.length) {
    throw new MdevError('EINVAL', `must be an Int32Array of ${gfns.length} elements, got ${describe(errs)}`, 'errs');
  }
  const data = new Uint8Array(PrivcmdMmapBatchV2.sizeof);
  const view = new DataView(data.buffer);
  view.setUint32(PrivcmdMmapBatchV2.num, gfns.length, LE);
  view.setUint16(PrivcmdMmapBatchV2.dom, domid, LE);
  view.setBigUint64(PrivcmdMmapBatchV2.addr, addr, LE);
  return {
    data,
    pointers: [
      { offset: PrivcmdMmapBatchV2.arr, target: gfns },
      { offset: PrivcmdMmapBatchV2.err, target: errs },
    ],
  };
}

/**
 * The argument of IOCTL_PRIVCMD_MMAP_RESOURCE (XENMEM_acquire_resource): map `num` frames from
 * frame `idx` of resource `type`/`id` of `domid` at `addr`, the start of a privcmd mapping of at
 * least `num` pages.
 */
export function privcmdMmapResourceArg(domid: number, type: number, id: number, idx: number, num: number, addr: bigint): Uint8Array {
  checkDomid('domid', domid);
  checkInt('type', type, 0, U32_MAX);
  checkInt('id', id, 0, U32_MAX);
  checkInt('idx', idx, 0, U32_MAX);
  checkInt('num', num, 1, U32_MAX);
  checkU64('addr', addr);
  const data = new Uint8Array(PrivcmdMmapResource.sizeof);
  const view = new DataView(data.buffer);
  view.setUint16(PrivcmdMmapResource.dom, domid, LE);
  view.setUint32(PrivcmdMmapResource.type, type, LE);
  view.setUint32(PrivcmdMmapResource.id, id, LE);
  view.setUint32(PrivcmdMmapResource.idx, idx, LE);
  view.setBigUint64(PrivcmdMmapResource.num, BigInt(num), LE);
  view.setBigUint64(PrivcmdMmapResource.addr, addr, LE);
  return data;
}

function domidBytes(domid: number): Uint8Array {
  checkDomid('domid', domid);
  const data = new Uint8Array(DOMID_SIZE);
  new DataView(data.buffer).setUint16(0, domid, LE);
  return data;
}

/** The argument of IOCTL_PRIVCMD_RESTRICT: the `domid_t` every later privcmd call must target. */
export function privcmdRestrictArg(domid: number): Uint8Array {
  return domidBytes(domid);
}

/** The argument of IOCTL_EVTCHN_BIND_INTERDOMAIN. */
export function evtchnBindInterdomainArg(remoteDomain: number, remotePort: number): Uint8Array {
  checkDomid('remoteDomain', remoteDomain);
  checkInt('remotePort', remotePort, 1, U32_MAX);
  const data = new Uint8Array(EvtchnBindInterdomain.sizeof);
  const view = new DataView(data.buffer);
  view.setUint32(EvtchnBindInterdomain.remoteDomain, remoteDomain, LE);
  view.setUint32(EvtchnBindInterdomain.remotePort, remotePort, LE);
  return data;
}

/** The argument of IOCTL_EVTCHN_UNBIND and IOCTL_EVTCHN_NOTIFY: a local port. */
export function evtchnPortArg(port: number): Uint8Array {
  checkInt('port', port, 1, U32_MAX);
  const data = new Uint8Array(EvtchnNotify.sizeof);
  new DataView(data.buffer).setUint32(EvtchnNotify.port, port, LE);
  return data;
}

/** The argument of IOCTL_EVTCHN_RESTRICT_DOMID. */
export function evtchnRestrictDomidArg(domid: number): Uint8Array {
  return domidBytes(domid);
}
