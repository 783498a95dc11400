/**
 * vfio-user wire format: command numbers, flags, and every message layout, defined once and used by
 * both the server and the client. Layouts follow QEMU's docs/interop/vfio-user.rst; the kernel
 * VFIO structs they reuse are checked against <linux/vfio.h> by the native core (static_assert) and
 * by test/vfio/abi.test.ts. All fields are little-endian (the spec says host order; x86/arm64).
 * @module
 */
import { MdevError } from '../../src/errors.js';

/** Command numbers. */
export const Command = {
  VERSION: 1,
  DMA_MAP: 2,
  DMA_UNMAP: 3,
  DEVICE_GET_INFO: 4,
  DEVICE_GET_REGION_INFO: 5,
  DEVICE_GET_REGION_IO_FDS: 6,
  DEVICE_GET_IRQ_INFO: 7,
  DEVICE_SET_IRQS: 8,
  REGION_READ: 9,
  REGION_WRITE: 10,
  DMA_READ: 11,
  DMA_WRITE: 12,
  DEVICE_RESET: 13,
  REGION_WRITE_MULTI: 15,
  DEVICE_FEATURE: 16,
  MIG_DATA_READ: 17,
  MIG_DATA_WRITE: 18,
} as const;

/** Names of commands, for logs and listings. */
export const COMMAND_NAMES: Readonly<Record<number, string>> = Object.fromEntries(Object.entries(Command).map(([k, v]) => [v, k]));

/** Header flag bits. */
export const HeaderFlag = {
  TYPE_MASK: 0xf,
  TYPE_COMMAND: 0,
  TYPE_REPLY: 1,
  NO_REPLY: 0x10,
  ERROR: 0x20,
} as const;

/** Size of the message header. */
export const HEADER_SIZE = 16;

/** Protocol version this implementation speaks (the QEMU client proposes 0.0; libvfio-user speaks 0.2). */
export const PROTOCOL_MAJOR = 0;
/** Highest minor version supported; lower minors are supported too. */
export const PROTOCOL_MINOR = 2;

/** Defaults the spec gives when a capability is absent. */
export const CAPABILITY_DEFAULTS = {
  maxMsgFds: 1,
  maxDataXferSize: 1 << 20,
  maxDmaMaps: 65535,
  pgsizes: 4096,
} as const;

/** A decoded message header. */
export interface Header {
  /** Sender-chosen id, echoed in the reply. */
  msgId: number;
  /** Command number. */
  command: number;
  /** Total size including the header. */
  msgSize: number;
  /** Flag bits. */
  flags: number;
  /** errno of an error reply. */
  error: number;
}

/** Reads a header from the first 16 bytes of `b`. */
export function decodeHeader(b: Uint8Array): Header {
  if (b.length < HEADER_SIZE) throw new MdevError('EINVAL', `${b.length} bytes is shorter than a header`, 'header');
  const v = new DataView(b.buffer, b.byteOffset, HEADER_SIZE);
  return { msgId: v.getUint16(0, true), command: v.getUint16(2, true), msgSize: v.getUint32(4, true), flags: v.getUint32(8, true), error: v.getUint32(12, true) };
}

/** Writes a header into the first 16 bytes of `b`. */
export function encodeHeader(b: Uint8Array, h: Header): void {
  const v = new DataView(b.buffer, b.byteOffset, HEADER_SIZE);
  v.setUint16(0, h.msgId, true);
  v.setUint16(2, h.command, true);
  v.setUint32(4, h.msgSize, true);
  v.setUint32(8, h.flags, true);
  v.setUint32(12, h.error, true);
}

/** DMA_MAP / DMA_UNMAP flags. */
export const DmaFlag = {
  READ: 1,
  WRITE: 2,
  /** DMA_UNMAP: unmap everything (address and size 0); sent by QEMU, from VFIO. */
  UNMAP_ALL: 2,
  /** DMA_UNMAP: return a dirty bitmap (spec ≤ 0.9.1; not supported). */
  UNMAP_GET_DIRTY_BITMAP: 1,
} as const;

/** Payload layouts (offsets relative to the end of the header) and sizes. */
export const Layout = {
  /** VERSION: u16 major, u16 minor, then optional NUL-terminated JSON. */
  version: { major: 0, minor: 2, json: 4, size: 4 },
  /** DMA_MAP request: argsz, flags, offset, address, size. */
  dmaMap: { argsz: 0, flags: 4, offset: 8, address: 16, size: 24, sizeof: 32 },
  /** DMA_UNMAP request and reply: argsz, flags, address, size. */
  dmaUnmap: { argsz: 0, flags: 4, address: 8, size: 16, sizeof: 24 },
  /** DEVICE_GET_INFO: the 16-byte form of struct vfio_device_info. */
  deviceInfo: { argsz: 0, flags: 4, numRegions: 8, numIrqs: 12, sizeof: 16 },
  /** DEVICE_GET_REGION_INFO: struct vfio_region_info. */
  regionInfo: { argsz: 0, flags: 4, index: 8, capOffset: 12, size: 16, offset: 24, sizeof: 32 },
  /** struct vfio_info_cap_header. */
  capHeader: { id: 0, version: 2, next: 4, sizeof: 8 },
  /** struct vfio_region_info_cap_sparse_mmap (after the cap header) and its areas. */
  sparseMmap: { nrAreas: 8, reserved: 12, areas: 16, areaSize: 16 },
  /** DEVICE_GET_REGION_IO_FDS request/reply head; sub-regions follow at 16. */
  regionIoFds: { argsz: 0, flags: 4, index: 8, count: 12, sizeof: 16, subRegionSize: 40 },
  /** DEVICE_GET_IRQ_INFO: struct vfio_irq_info. */
  irqInfo: { argsz: 0, flags: 4, index: 8, count: 12, sizeof: 16 },
  /** DEVICE_SET_IRQS: struct vfio_irq_set without the data. */
  irqSet: { argsz: 0, flags: 4, index: 8, start: 12, count: 16, sizeof: 20 },
  /** REGION_READ / REGION_WRITE: offset, region, count, data. */
  regionAccess: { offset: 0, region: 8, count: 12, data: 16 },
  /**
   * DMA_READ / DMA_WRITE as the spec (and libvfio-user) lay them out: u64 address, u64 count,
   * data. `size` is the fixed part: a DMA_READ request is `size` bytes, a DMA_WRITE `size + count`.
   */
  dmaAccessSpec: { address: 0, count: 8, countSize: 8, data: 16, size: 16 },
  /**
   * DMA_READ / DMA_WRITE as QEMU (≥ 10.1, hw/vfio-user/protocol.h) lays them out: u64 address,
   * u32 count, data at 12 — but its struct is padded to 16 bytes and QEMU measures messages by
   * that: a DMA_READ request must be 16 bytes, a DMA_WRITE `16 + count` (data at 12, 4 bytes of
   * padding after it), and its DMA_READ reply is `16 + count` bytes with the data at 12.
   */
  dmaAccessQemu: { address: 0, count: 8, countSize: 4, data: 12, size: 16 },
  /** REGION_WRITE_MULTI: u64 count, then entries of offset, region, count, data[8]. */
  writeMulti: { count: 0, entries: 8, entrySize: 24, maxEntries: 200 },
  /** DEVICE_FEATURE: argsz, flags, data. */
  feature: { argsz: 0, flags: 4, data: 8 },
  /** DMA_LOGGING_START/STOP data: page_size, num_ranges, reserved, ranges of {iova, length}. */
  dmaLoggingControl: { pageSize: 0, numRanges: 8, reserved: 12, ranges: 16, rangeSize: 16 },
  /** DMA_LOGGING_REPORT data: iova, length, page_size, then the bitmap. */
  dmaLoggingReport: { iova: 0, length: 8, pageSize: 16, bitmap: 24 },
  /** MIG_DATA_READ/WRITE: argsz, size, data. */
  migData: { argsz: 0, size: 4, data: 8 },
  /** DEVICE_FEATURE MIGRATION data (struct vfio_device_feature_migration): u64 flags. */
  migration: { flags: 0, sizeof: 8 },
  /** DEVICE_FEATURE MIG_DEVICE_STATE data (struct vfio_device_feature_mig_state): state, data_fd (unused in vfio-user). */
  migState: { deviceState: 0, dataFd: 4, sizeof: 8 },
} as const;

/** DEVICE_GET_INFO flags (VFIO_DEVICE_FLAGS_*). */
export const DeviceFlag = { RESET: 1, PCI: 2 } as const;

/** Region info flags (VFIO_REGION_INFO_FLAG_*). */
export const RegionFlag = { READ: 1, WRITE: 2, MMAP: 4, CAPS: 8 } as const;

/** Region info capability IDs. */
export const RegionCap = { SPARSE_MMAP: 1, TYPE: 2 } as const;

/** PCI region indexes (VFIO_PCI_*_REGION_INDEX). */
export const PciRegion = { BAR0: 0, BAR5: 5, ROM: 6, CONFIG: 7, VGA: 8, COUNT: 9 } as const;

/** PCI IRQ indexes (VFIO_PCI_*_IRQ_INDEX). */
export const PciIrq = { INTX: 0, MSI: 1, MSIX: 2, ERR: 3, REQ: 4, COUNT: 5 } as const;

/** IRQ info flags (VFIO_IRQ_INFO_*). */
export const IrqInfoFlag = { EVENTFD: 1, MASKABLE: 2, AUTOMASKED: 4, NORESIZE: 8 } as const;

/** SET_IRQS flags (VFIO_IRQ_SET_*). */
export const IrqSetFlag = {
  DATA_NONE: 0x1,
  DATA_BOOL: 0x2,
  DATA_EVENTFD: 0x4,
  ACTION_MASK: 0x8,
  ACTION_UNMASK: 0x10,
  ACTION_TRIGGER: 0x20,
  DATA_MASK: 0x7,
  ACTION_MASK_ALL: 0x38,
} as const;

/** DEVICE_FEATURE flags and feature indexes. */
export const Feature = {
  MASK: 0xffff,
  GET: 1 << 16,
  SET: 1 << 17,
  PROBE: 1 << 18,
  MIGRATION: 1,
  MIG_DEVICE_STATE: 2,
  DMA_LOGGING_START: 6,
  DMA_LOGGING_STOP: 7,
  DMA_LOGGING_REPORT: 8,
} as const;

/** VFIO_DEVICE_FEATURE_MIGRATION flags (VFIO_MIGRATION_*): the optional states a device supports. */
export const MigrationFlag = { STOP_COPY: 1, P2P: 2, PRE_COPY: 4 } as const;

/** Migration states (enum vfio_device_mig_state). */
export const MigState = { ERROR: 0, STOP: 1, RUNNING: 2, STOP_COPY: 3, RESUMING: 4, RUNNING_P2P: 5, PRE_COPY: 6, PRE_COPY_P2P: 7 } as const;

/** Names of migration states, for logs and errors. */
export const MIG_STATE_NAMES: Readonly<Record<number, string>> = Object.fromEntries(Object.entries(MigState).map(([k, v]) => [v, k]));

/** Which layout DMA_READ/DMA_WRITE messages use (see {@link Layout}). */
export type DmaAccessLayout = 'spec' | 'qemu';

/**
 * The server's choice of DMA_READ/DMA_WRITE layout: fixed, or `'auto'` — found per connection
 * from how the client answers a zero-length DMA_WRITE (a bare header: QEMU's layout; address and
 * count: the spec's).
 */
export type DmaLayoutChoice = DmaAccessLayout | 'auto';

/** Capabilities exchanged in VERSION, in the spec's units. */
export interface Capabilities {
  /** Max fds the sender can receive in one message. */
  maxMsgFds: number;
  /** Max `count` in REGION/DMA READ/WRITE. */
  maxDataXferSize: number;
  /** Max concurrent DMA windows. */
  maxDmaMaps: number;
  /** OR of supported DMA page sizes. */
  pgsizes: number;
  /** REGION_WRITE_MULTI accepted. */
  writeMultiple: boolean;
  /** Twin-socket mode: supported, and (in a reply) the fd index. */
  twinSocket: { supported: boolean; fdIndex?: number };
}

function num(field: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new MdevError('EINVAL', `must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`, field);
  }
  return v;
}

/**
 * Parses the JSON of a VERSION message (without its NUL). Unknown keys are ignored, as QEMU does;
 * known keys with the wrong type or range are errors naming the key.
 */
export function parseCapabilities(json: string): Capabilities {
  const caps: Capabilities = {
    maxMsgFds: CAPABILITY_DEFAULTS.maxMsgFds,
    maxDataXferSize: CAPABILITY_DEFAULTS.maxDataXferSize,
    maxDmaMaps: CAPABILITY_DEFAULTS.maxDmaMaps,
    pgsizes: CAPABILITY_DEFAULTS.pgsizes,
    writeMultiple: false,
    twinSocket: { supported: false },
  };
  if (json === '') return caps;
  let root: unknown;
  try {
    root = JSON.parse(json);
  } catch {
    throw new MdevError('EINVAL', 'is not valid JSON', 'version.json');
  }
  if (typeof root !== 'object' || root === null || Array.isArray(root)) throw new MdevError('EINVAL', 'must be a JSON object', 'version.json');
  const c = (root as Record<string, unknown>)['capabilities'];
  if (c === undefined) return caps;
  if (typeof c !== 'object' || c === null || Array.isArray(c)) throw new MdevError('EINVAL', 'must be an object', 'capabilities');
  const o = c as Record<string, unknown>;
  if (o['max_msg_fds'] !== undefined) caps.maxMsgFds = num('capabilities.max_msg_fds', o['max_msg_fds'], 0, 1024);
  if (o['max_data_xfer_size'] !== undefined) caps.maxDataXferSize = num('capabilities.max_data_xfer_size', o['max_data_xfer_size'], 1, 2 ** 31);
  if (o['max_dma_maps'] !== undefined) caps.maxDmaMaps = num('capabilities.max_dma_maps', o['max_dma_maps'], 0, 2 ** 31);
  if (o['pgsizes'] !== undefined) caps.pgsizes = num('capabilities.pgsizes', o['pgsizes'], 1, Number.MAX_SAFE_INTEGER);
  if (o['write_multiple'] !== undefined) {
    if (typeof o['write_multiple'] !== 'boolean') throw new MdevError('EINVAL', 'must be a boolean', 'capabilities.write_multiple');
    caps.writeMultiple = o['write_multiple'];
  }
  const twin = o['twin_socket'];
  if (twin !== undefined) {
    if (typeof twin !== 'object' || twin === null || Array.isArray(twin)) throw new MdevError('EINVAL', 'must be an object', 'capabilities.twin_socket');
    const t = twin as Record<string, unknown>;
    if (t['supported'] !== undefined && typeof t['supported'] !== 'boolean') throw new MdevError('EINVAL', 'must be a boolean', 'capabilities.twin_socket.supported');
    caps.twinSocket = { supported: t['supported'] === true };
    if (t['fd_index'] !== undefined) caps.twinSocket.fdIndex = num('capabilities.twin_socket.fd_index', t['fd_index'], 0, 1023);
  }
  return caps;
}

/** Builds the JSON text of a VERSION message from the given capability values (keys in spec names). */
export function formatCapabilities(entries: Record<string, unknown>): string {
  return JSON.stringify({ capabilities: entries });
}

/** Region info flag names, for listings. */
export function regionFlagNames(flags: number): string[] {
  return Object.entries(RegionFlag).filter(([, bit]) => flags & bit).map(([name]) => name);
}

/** IRQ info flag names, for listings. */
export function irqFlagNames(flags: number): string[] {
  return Object.entries(IrqInfoFlag).filter(([, bit]) => flags & bit).map(([name]) => name);
}
