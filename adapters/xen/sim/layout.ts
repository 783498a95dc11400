/**
 * The memory the simulated hypervisor shares with its vCPU threads: which words of which
 * `SharedArrayBuffer` hold what. The hypervisor (one thread) owns every value here; vCPUs run in
 * worker threads and route their own accesses, so everything a guest access depends on (the ioreq
 * servers, their ranges, the p2m types, the write-protection claim, the dirty logs, the interrupt
 * counters) lives in shared memory rather than in the hypervisor object.
 *
 * Concurrency rules:
 * - The *configuration* (server table, range sets, the ioreq_server claim, the VRAM tracking range,
 *   the log-dirty flag) is published under a sequence lock ({@link Ctl.seq}): the writer makes the
 *   sequence odd, writes, and makes it even again; a reader copies the configuration and retries if
 *   the sequence was odd or changed meanwhile. vCPUs keep their copy until the sequence moves, so
 *   the cost of an access is one atomic load when nothing changed.
 * - Each server slot has a generation ({@link Slot.gen}, bumped on create and destroy) and a use
 *   count ({@link Slot.inUse}). A vCPU raises the use count, then checks the generation; the
 *   hypervisor bumps the generation on destroy, then reads the use count, and closes the server's
 *   fds only when no vCPU is inside. This is the simulator's stand-in for Xen's domain_pause()
 *   around destroy: a vCPU never signals or maps an fd number that was closed and reused.
 * - p2m types are one byte per guest frame, read and written atomically per frame, as Xen changes
 *   p2m entries one at a time.
 * @module
 */

/** Layout version; a vCPU refuses a descriptor made by a different layout (a stale build). */
export const SIM_LAYOUT_VERSION = 0x58534d01; // "XSM" + 1

/** Ioreq servers per domain (Xen's MAX_NR_IOREQ_SERVERS). */
export const MAX_IOREQ_SERVERS = 8;

/** Ranges per range set of one server (Xen's MAX_NR_IO_RANGES, the rangeset_limit of each set). */
export const MAX_IO_RANGES = 256;

/** Range set types, in the order of XEN_DMOP_IO_RANGE_* (port 0, memory 1, pci 2). */
export const NR_RANGE_TYPES = 3;

/**
 * vCPUs per domain the simulator supports: one ioreq page holds 4096 / 32 = 128 slots, and Xen only
 * hands out frame `ioreq(0)` through XENMEM_acquire_resource (any other ioreq frame is EINVAL).
 */
export const MAX_SIM_VCPUS = 128;

/** Largest guest RAM: one mapping of it must fit an ArrayBuffer, which Node 20 caps at 4 GiB. */
export const MAX_SIM_RAM_BYTES = 2 ** 32;

/** track_dirty_vram covers at most 1 GiB of 4 KiB frames (larger `nr` is EINVAL). */
export const VRAM_MAX_PAGES = (1 << 30) >>> 12;

/** Indices into the domain control block (an `Int32Array` over a `SharedArrayBuffer`). */
export const Ctl = {
  /** {@link SIM_LAYOUT_VERSION}. */
  magic: 0,
  /** Sequence lock over the configuration: odd while the hypervisor writes. */
  seq: 1,
  /** Server id that claimed HVMMEM_ioreq_server, or -1. Under {@link Ctl.seq}. */
  claimId: 2,
  /** The claim's access flags (XEN_DMOP_IOREQ_MEM_ACCESS_*). Under {@link Ctl.seq}. */
  claimFlags: 3,
  /** The last value the guest wrote to port 0xcf8 (Xen's d->arch.hvm.pci_cf8); written by vCPUs. */
  cf8: 4,
  /** First frame of the track_dirty_vram range, low and high 32 bits. Under {@link Ctl.seq}. */
  vramFirstLo: 5,
  vramFirstHi: 6,
  /** Frames in the track_dirty_vram range; 0 when not tracking. Under {@link Ctl.seq}. */
  vramNr: 7,
  /** 1 while global log-dirty mode (the toolstack's migration tracking) is on. Under {@link Ctl.seq}. */
  logDirty: 8,
  /** Number of vCPUs. */
  nrVcpus: 9,
  /** Guest RAM size in frames. */
  ramPages: 10,
  /** First server slot. */
  slots: 16,
} as const;

/** Word offsets inside one server slot of the control block. */
export const Slot = {
  /** Instance generation: bumped on create and on destroy (atomic, outside the sequence lock). */
  gen: 0,
  /** vCPUs currently using this slot's fds and pages (atomic, outside the sequence lock). */
  inUse: 1,
  /** Spin lock serialising vCPUs that append to the buffered ring (Xen's bufioreq_lock). */
  bufLock: 2,
  /** 1 while a server exists in this slot. */
  alive: 3,
  /** 1 while the server is enabled (set_ioreq_server_state). */
  enabled: 4,
  /** HVM_IOREQSRV_BUFIOREQ_* of the server. */
  bufMode: 5,
  /** memfd of the synchronous ioreq page. */
  ioreqFd: 6,
  /** memfd of the buffered ioreq page, or -1. */
  bufFd: 7,
  /** eventfd standing in for the buffered-ioreq event channel, or -1. */
  bufEvtFd: 8,
  /** Number of ranges in each of the three range sets (3 words). */
  nrRanges: 9,
  /** Per vCPU: guest→server eventfd, server→guest eventfd, event channel port (3 words each). */
  vcpus: 12,
} as const;

/** Words per vCPU in a server slot. */
export const SLOT_WORDS_PER_VCPU = 3;

/** Words of one server slot for a domain with `nrVcpus` vCPUs. */
export function slotStride(nrVcpus: number): number {
  return Slot.vcpus + SLOT_WORDS_PER_VCPU * nrVcpus;
}

/** Index of word `word` of server slot `id`. */
export function slotIndex(nrVcpus: number, id: number, word: number): number {
  return Ctl.slots + id * slotStride(nrVcpus) + word;
}

/** Bytes of the control block for `nrVcpus` vCPUs. */
export function ctlBytes(nrVcpus: number): number {
  return (Ctl.slots + MAX_IOREQ_SERVERS * slotStride(nrVcpus)) * 4;
}

/**
 * The published range sets: a `BigUint64Array` of `[start, end]` pairs (inclusive), sorted, for
 * each server slot and range type, {@link MAX_IO_RANGES} pairs each.
 */
export function rangeIndex(id: number, type: number, i: number): number {
  return ((id * NR_RANGE_TYPES + type) * MAX_IO_RANGES + i) * 2;
}

/** Bytes of the range table. */
export const RANGES_BYTES = MAX_IOREQ_SERVERS * NR_RANGE_TYPES * MAX_IO_RANGES * 2 * 8;

/** Number of GSIs of the emulated IO-APIC (Xen's default hvm_irq nr_gsis: 16 ISA + 32 PCI). */
export const NR_GSIS = 48;

/**
 * Indices into the interrupt block (an `Int32Array` over a `SharedArrayBuffer`): what the guest
 * can observe of interrupts the device model raised.
 */
export const Irq = {
  /** Bumped on every delivery of any kind; vCPUs may `Atomics.wait` on it. */
  generation: 0,
  /** MSIs with vector 0 delivered as emulated PIRQs (event channel delivery is not modelled). */
  pirq: 1,
  /** MSIs delivered, per vector (256 words). */
  msi: 8,
  /** Assert count of each GSI (non-zero = line high), per GSI ({@link NR_GSIS} words). */
  gsiLevel: 8 + 256,
  /** Rising edges of each GSI (the interrupts the guest would take), per GSI. */
  gsiEdges: 8 + 256 + NR_GSIS,
  /** Interrupts delivered to each vCPU (one word per vCPU). */
  vcpuDelivered: 8 + 256 + 2 * NR_GSIS,
} as const;

/** Bytes of the interrupt block for `nrVcpus` vCPUs. */
export function irqBytes(nrVcpus: number): number {
  return (Irq.vcpuDelivered + nrVcpus) * 4;
}

/**
 * Everything a vCPU thread needs to act as one vCPU of a simulated domain. Plain data (numbers and
 * `SharedArrayBuffer`s), so it can be passed to a worker in `workerData` or a message; fds are
 * process-wide, so a worker can use them as they are.
 */
export interface SimVcpuDescriptor {
  /** {@link SIM_LAYOUT_VERSION} of the hypervisor that made it. */
  readonly layout: number;
  /** Guest domain id. */
  readonly domid: number;
  /** This vCPU's index (Xen's vcpu_id). */
  readonly index: number;
  /** vCPUs in the domain. */
  readonly nrVcpus: number;
  /** Guest RAM size in bytes (frames 0 .. ramBytes/4096 - 1). */
  readonly ramBytes: number;
  /** memfd holding guest RAM (gpa = offset). */
  readonly ramFd: number;
  /** The control block ({@link Ctl}, {@link Slot}). */
  readonly ctl: SharedArrayBuffer;
  /** The published range sets ({@link rangeIndex}). */
  readonly ranges: SharedArrayBuffer;
  /** One byte per guest frame: its HvmMemType. */
  readonly p2m: SharedArrayBuffer;
  /** The interrupt block ({@link Irq}). */
  readonly irq: SharedArrayBuffer;
  /** eventfd signalled whenever an interrupt is delivered to this vCPU. */
  readonly irqEventFd: number;
  /** Bits of the track_dirty_vram log ({@link VRAM_MAX_PAGES} pages, bit 0 = first tracked frame). */
  readonly vramDirty: SharedArrayBuffer;
  /** Bits of the global log-dirty bitmap, one per guest frame. */
  readonly logDirty: SharedArrayBuffer;
  /** How long a synchronous ioreq may wait for its response before ETIMEDOUT, in ms. */
  readonly timeoutMs: number;
}
