/**
 * Xen's ioreq page ABI (xen/include/public/hvm/ioreq.h): the shared page with one `struct ioreq`
 * per vCPU, the buffered ioreq ring, and the memory and range types the IOREQ server DMOPs take.
 * Layouts are checked against the installed Xen headers by the native core (xen_abi.cc) and by
 * test/xen/abi.test.ts.
 * @module
 */

/** `struct ioreq` (32 bytes): field offsets. */
export const Ioreq = {
  addr: 0,
  data: 8,
  count: 16,
  size: 20,
  vpEport: 24,
  /** The byte holding state (bits 0-3), data_is_ptr (4), dir (5: 1 = read), df (6). */
  bits: 30,
  type: 31,
  sizeof: 32,
} as const;

/** Bits of `Ioreq.bits`. */
export const IoreqBits = { STATE_MASK: 0x0f, DATA_IS_PTR: 0x10, DIR_READ: 0x20, DF: 0x40 } as const;

/** ioreq states (STATE_IOREQ_* / STATE_IORESP_READY); they only ever move forward. */
export const IoreqState = { NONE: 0, READY: 1, INPROCESS: 2, IORESP_READY: 3 } as const;

/** ioreq types (IOREQ_TYPE_*). */
export const IoreqType = { PIO: 0, COPY: 1, PCI_CONFIG: 2, TIMEOFFSET: 7, INVALIDATE: 8 } as const;

/** `struct buffered_iopage`: two u32 pointers, then 511 eight-byte `buf_ioreq` slots. */
export const BufferedPage = {
  readPointer: 0,
  writePointer: 4,
  slots: 8,
  slotSize: 8,
  slotCount: 511,
} as const;

/** `struct buf_ioreq` fields within a slot: type byte, flags byte (dir bit 1, size bits 2-3), addr bits 12-31, data. */
export const BufIoreq = { type: 0, flags: 1, DIR_READ: 0x2, SIZE_SHIFT: 2, SIZE_MASK: 0xc, ADDR_SHIFT: 12, data: 4 } as const;

/** Buffered ring modes for create_ioreq_server (HVM_IOREQSRV_BUFIOREQ_*). */
export const BufioreqMode = { OFF: 0, LEGACY: 1, ATOMIC: 2 } as const;

/** Range types of map_io_range_to_ioreq_server (XEN_DMOP_IO_RANGE_*). */
export const IoRangeType = { PORT: 0, MEMORY: 1, PCI: 2 } as const;

/** `hvmmem_type_t` values (HVMMEM_*). */
export const HvmMemType = { RAM_RW: 0, RAM_RO: 1, MMIO_DM: 2, UNUSED: 3, IOREQ_SERVER: 4 } as const;

/** map_mem_type_to_ioreq_server access flags (XEN_DMOP_IOREQ_MEM_ACCESS_*). */
export const IoreqMemAccess = { READ: 1, WRITE: 2 } as const;

/** XENMEM_acquire_resource: the ioreq server resource type and its frames. */
export const IoreqResource = {
  /** XENMEM_resource_ioreq_server. */
  TYPE: 0,
  /** Frame of the buffered ioreq page. */
  FRAME_BUFIOREQ: 0,
  /** Frame of synchronous ioreq page `n`. */
  frameIoreq: (n: number): number => 1 + n,
} as const;

/** Encodes a PCI SBDF as map_io_range takes it (XEN_DMOP_PCI_SBDF). */
export function pciSbdf(segment: number, bus: number, device: number, fn: number): number {
  // >>> 0: segments from 0x8000 set bit 31, which JS's 32-bit `|` would make a negative number.
  return (((segment & 0xffff) << 16) | ((bus & 0xff) << 8) | ((device & 0x1f) << 3) | (fn & 0x7)) >>> 0;
}

/** The SBDF and register of a PCI_CONFIG ioreq address (SEG 63:48, BUS 47:40, DEV 39:35, FN 34:32, REG 31:0). */
export function decodePciConfigAddr(addr: bigint): { sbdf: number; register: number } {
  return { sbdf: Number((addr >> 32n) & 0xffffffffn), register: Number(addr & 0xffffffffn) };
}

/** Page size of ioreq pages and guest frames. */
export const XEN_PAGE_SIZE = 4096;
