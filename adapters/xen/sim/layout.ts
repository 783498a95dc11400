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
 * - The p2m of guest RAM's frames is one 32-bit entry per frame ({@link p2mEntry}: type and page),
 *   read and written atomically per frame, as Xen changes p2m entries one at a time. Frames beyond
 *   guest RAM that hold pages (populate_physmap, relocate_memory) are listed as extents
 *   ({@link extentIndex}), published under the sequence lock.
 * - Pages live in two memfds, the *RAM pool* (guest RAM's own pages, page n at offset n · 4096) and
 *   the *extra pool* (pages populate_physmap hands out); page numbers run across both
 *   ({@link pageLocation}). A page stays in its pool wherever the p2m puts it.
 * - Per vCPU, a flag asks the vCPU to send IOREQ_TYPE_INVALIDATE to every server before its next
 *   access ({@link invalidateIndex}): Xen's mapcache_invalidate, set when pages leave the p2m.
 * @module
 */

/** Layout version; a vCPU refuses a descriptor made by a different layout (a stale build). */
export const SIM_LAYOUT_VERSION = 0x58534d02; // "XSM" + 2

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

/**
 * Frames the simulated p2m can hold a page at: gfns below 2^40 (guest-physical addresses below
 * 2^52). populate_physmap stops and relocate_memory fails (EINVAL) at a gfn beyond.
 */
export const SIM_MAX_GFN = 2 ** 40 - 1;

/** Extents of pages beyond guest RAM the simulator can list (a relocation that needs more is ENOMEM). */
export const MAX_HIGH_EXTENTS = 1024;

/** Bits of a p2m entry holding the HvmMemType; the page number + 1 is above them (0: no page). */
export const P2M_TYPE_BITS = 4;

/**
 * A p2m entry of a guest-RAM frame: its HvmMemType and its page (-1: none, a hole, which reads as
 * HVMMEM_mmio_dm: accesses are emulated).
 */
export function p2mEntry(type: number, page: number): number {
  return (((page + 1) << P2M_TYPE_BITS) | type) | 0;
}

/** The HvmMemType of a p2m entry. */
export function p2mType(entry: number): number {
  return entry & ((1 << P2M_TYPE_BITS) - 1);
}

/** The page of a p2m entry, or -1. */
export function p2mPage(entry: number): number {
  return (entry >>> P2M_TYPE_BITS) - 1;
}

/** Where page `page` lives: in the RAM pool (pool 0) or the extra pool (pool 1), at `offset` bytes. */
export function pageLocation(page: number, ramPages: number): { pool: 0 | 1; offset: number } {
  return page < ramPages ? { pool: 0, offset: page * 4096 } : { pool: 1, offset: (page - ramPages) * 4096 };
}

/**
 * Index in the extent table (a `BigUint64Array`) of extent `i`: word 0 its first gfn, word 1 its
 * frame count (high 32 bits) and first page (low 32 bits); the pages are consecutive. Sorted by
 * gfn, {@link Ctl.nrExtents} of them, under {@link Ctl.seq}.
 */
export function extentIndex(i: number): number {
  return i * 2;
}

/** Bytes of the extent table. */
export const EXTENTS_BYTES = MAX_HIGH_EXTENTS * 2 * 8;

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
  /** Extents of pages beyond guest RAM in the extent table. Under {@link Ctl.seq}. */
  nrExtents: 11,
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

/**
 * Index of vCPU `vcpu`'s mapcache-invalidate flag (after the server slots): 1 asks the vCPU to send
 * IOREQ_TYPE_INVALIDATE to every enabled server before its next access; the vCPU exchanges it for 0.
 */
export function invalidateIndex(nrVcpus: number, vcpu: number): number {
  return Ctl.slots + MAX_IOREQ_SERVERS * slotStride(nrVcpus) + vcpu;
}

/** Bytes of the control block for `nrVcpus` vCPUs. */
export function ctlBytes(nrVcpus: number): number {
  return (Ctl.slots + MAX_IOREQ_SERVERS * slotStride(nrVcpus) + nrVcpus) * 4;
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
  /** memfd of the RAM pool: guest RAM's pages (gpa = offset while the p2m leaves them in place). */
  readonly ramFd: number;
  /** Bytes of the extra pool (pages populate_physmap hands out), 0 without one. */
  readonly extraBytes: number;
  /** memfd of the extra pool, or -1. */
  readonly extraFd: number;
  /** The extent table of pages beyond guest RAM ({@link extentIndex}). */
  readonly extents: SharedArrayBuffer;
  /** The control block ({@link Ctl}, {@link Slot}). */
  readonly ctl: SharedArrayBuffer;
  /** The published range sets ({@link rangeIndex}). */
  readonly ranges: SharedArrayBuffer;
  /** One 32-bit {@link p2mEntry} per guest-RAM frame. */
  readonly p2m: SharedArrayBuffer;
  /** The interrupt block ({@link Irq}). */
  readonly irq: SharedArrayBuffer;
  /** eventfd signalled whenever an interrupt is delivered to this vCPU. */
  readonly irqEventFd: number;
  /**
   * track_dirty_vram's log, one bit per frame of the tracked range ({@link VRAM_MAX_PAGES} bits in
   * 32-bit words, bit 0 = first tracked frame): set while the frame is write-protected for logging
   * (Xen's p2m_ram_logdirty); the vCPU that writes the frame clears it (the frame is dirty).
   */
  readonly vramArmed: SharedArrayBuffer;
  /** Bits of the global log-dirty bitmap, one per guest frame. */
  readonly logDirty: SharedArrayBuffer;
  /** How long a synchronous ioreq may wait for its response before ETIMEDOUT, in ms. */
  readonly timeoutMs: number;
}
