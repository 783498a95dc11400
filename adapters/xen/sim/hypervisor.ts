/**
 * A simulated Xen hypervisor for one HVM guest domain: Xen's side of the IOREQ server interface
 * (the device-model operations, the shared ioreq pages, the buffered ring, event channels as
 * eventfds) over guest RAM in a memfd, so an IOREQ server written for Xen runs unchanged on any
 * Linux machine. vCPUs of the guest run in worker threads ({@link SimVcpu}) and reach the
 * hypervisor's state through shared memory ({@link SimVcpuDescriptor}).
 *
 * What is reproduced, with Xen's errno values (Xen 4.14+ `xen/common/ioreq.c`,
 * `xen/arch/x86/hvm/dm.c`, `xen/arch/x86/mm/p2m.c`, `xen/arch/x86/mm/hap/hap.c`):
 * - at most 8 ioreq servers (ids 0-7, the lowest free id is taken; ENOSPC when all are in use);
 *   an unknown id is ENOENT;
 * - per server and range type a range set of at most 256 coalesced ranges: map with end < start is
 *   EINVAL (XSA-238), a range overlapping one of the same server's set is EEXIST, one range too many
 *   is ENOMEM; unmap of a range not wholly mapped is ENOENT. Different servers may map overlapping
 *   ranges; routing then prefers the highest id;
 * - HVMMEM_ioreq_server: one server may claim the type, for writes only (other flags EINVAL; a
 *   second claim, or a claim while pages of the type remain from an earlier owner, EBUSY); flags 0
 *   releases it (EINVAL unless the caller owns it) and turns every remaining page back to ram_rw.
 *   Destroying the owner drops the claim but leaves its pages typed ioreq_server: until they are
 *   set back to ram_rw, new claims are EBUSY, and guest writes to them go straight to RAM (Xen's
 *   p2m entries for the type are writable while nobody claims it);
 * - set_mem_type with Xen's allow_p2m_type_change(): to ioreq_server only from ram_rw and only while
 *   a server holds the claim, from ioreq_server only to ram_rw, otherwise between RAM types and from
 *   mmio_dm to mmio_dm; HVMMEM_unused or an unknown type is EINVAL, as is a range that is empty or
 *   ends beyond the last guest frame. Pages are changed one by one and the first refused page stops
 *   the operation, leaving the earlier ones changed (as Xen does);
 * - track_dirty_vram (HAP's): one range per domain; `nr` beyond 1 GiB of frames or a bitmap shorter
 *   than ceil(nr / 8) bytes is EINVAL. The first call for a range (or after the range changed)
 *   returns every bit set (whole bytes) and write-protects the range's ram_rw frames for logging
 *   (p2m_ram_logdirty); a guest write to such a frame makes it ram_rw again. A later call reports
 *   exactly the frames that are ram_rw then — written by the guest, or given a page since (populate,
 *   relocate) — and write-protects them again; frames without a page or of other types read 0.
 *   Writes through a foreign mapping (the device model's) are not seen. A call on another range
 *   takes over (the old range is ram_rw again); nr 0 stops tracking. set_mem_type refuses to make
 *   a write-protected frame ioreq_server (EINVAL, as Xen refuses p2m_ram_logdirty);
 * - the domain's pages: `tot_pages` starts at the RAM's frames, the limit `max_pages` at
 *   {@link SimHypervisorOptions.maxPages}; XEN_DOMCTL_max_mem sets it (no error, even below
 *   `tot_pages`: allocations then fail; clipped to 2^32 - 1);
 * - XENMEM_populate_physmap: gfns in order, one new page each (zeroed, or garbage without
 *   {@link SimHypervisorOptions.scrubPages}); stops at the first that would take `tot_pages` past
 *   the limit (Xen logs "Over-allocation for d<domid>: <n> > <max>", see {@link xenLog}), when the
 *   extra pool is empty (Xen's "Could not allocate order=0 extent"), or at a gfn beyond
 *   {@link SIM_MAX_GFN}, and returns how many were populated (no errno, as Xen). A gfn that has a
 *   page gets a new one; the old page stays the domain's (counted, unmapped) as in Xen;
 * - relocate_memory (XENMAPSPACE_gmfn_range): frames one at a time from the lowest; a source frame
 *   without a page is EINVAL (earlier frames stay moved); the page at a destination frame, if any,
 *   is freed (Xen frees normal domain memory it replaces: no error); the destination becomes
 *   ram_rw with the page and its contents, the source a hole (reads as mmio_dm: accesses go to
 *   the ioreq servers, and RAM wins over any server's claim of the range); a destination beyond
 *   {@link SIM_MAX_GFN} is EINVAL. Overlapping upward moves lose data, as in Xen. Whenever a page
 *   leaves the p2m, every vCPU sends IOREQ_TYPE_INVALIDATE to every enabled server before its next
 *   access (Xen's mapcache invalidation);
 * - pin_memory_cacheattr (hvm_set_mem_pinned_cacheattr): end < start or a gfn with bits at or above
 *   bit 48 (the simulated host's paddr_bits, compared with the gfns as Xen does) is EINVAL, as is a
 *   type other than UC, WC, WT, WP, WB, UC-; the same bounds again change the type; a range
 *   overlapping another is EBUSY; a 65th range ENOSPC; DELETE of bounds not pinned ENOENT;
 * - modified_memory: does nothing unless global log-dirty mode is on (Xen returns 0 without
 *   looking at the extents); otherwise extents are taken last to first, an empty or overflowing
 *   extent or one whose end (exclusive) lies beyond the highest guest frame is EINVAL — the same
 *   exclusive-versus-inclusive comparison as Xen, so an extent reaching the very last frame of RAM
 *   is refused — and frames of extents already taken stay marked;
 * - set_pci_intx_level (segment and bus must be 0, device <= 31, INTx <= 3), set_isa_irq_level
 *   (IRQ <= 15) and inject_msi (fixed and lowest-priority delivery; vector 0 is an emulated PIRQ,
 *   ERANGE without one; lowest priority with no matching vCPU ESRCH; other delivery modes EINVAL).
 *
 * Where the simulator stands in for Xen mechanics: event channels are eventfd pairs (one per vCPU
 * and server, plus one for the buffered ring), ports are allocated lowest-free from 1 like Xen's
 * per-domain port table; the ioreq and buffered pages are memfds; there is one emulator domain, so
 * Xen's EPERM for a server created by another domain cannot occur; write-protection for
 * track_dirty_vram is a bit per frame beside the p2m; frames beyond guest RAM hold only ram_rw
 * pages (set_mem_type on them is EOPNOTSUPP), are not logged for global log-dirty, and pages come
 * from a fixed extra pool instead of Xen's heap. After {@link SimHypervisor.close} (the domain is
 * gone) every operation is ESRCH.
 * @module
 */
import { MdevError, describe } from '../../../src/errors.js';
import { DirtyBitmap } from '../../../src/native/dirty-bitmap.js';
import {
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  addSeals,
  closeFd,
  eventfdCreate,
  eventfdWrite,
  ftruncate,
  memfdCreate,
} from '../../../src/native/fd.js';
import { PAGE_SIZE, mmapFd, munmap } from '../../../src/native/mmap.js';
import type { BufioreqModeName, DomainPages, IoRangeKind, MemCacheType, PfnExtent } from '../host.js';
import { BufioreqMode, HvmMemType, IoRangeType, Ioreq, IoreqMemAccess, XEN_PAGE_SIZE } from '../ioreq-abi.js';
import { SimInterruptCounters, isaIrqGsi, pciIntxGsi } from './interrupts.js';
import {
  Ctl,
  EXTENTS_BYTES,
  Irq,
  MAX_HIGH_EXTENTS,
  MAX_IOREQ_SERVERS,
  MAX_IO_RANGES,
  MAX_SIM_RAM_BYTES,
  MAX_SIM_VCPUS,
  NR_RANGE_TYPES,
  RANGES_BYTES,
  SIM_LAYOUT_VERSION,
  SIM_MAX_GFN,
  Slot,
  VRAM_MAX_PAGES,
  ctlBytes,
  extentIndex,
  invalidateIndex,
  irqBytes,
  p2mEntry,
  p2mPage,
  p2mType,
  pageLocation,
  rangeIndex,
  slotIndex,
  type SimVcpuDescriptor,
} from './layout.js';
import { Rangeset } from './rangeset.js';
import { selectServer, type RoutableServer, type SimSpace } from './routing.js';

/** How many entries the simulator keeps in each of its logs (modified_memory calls, interrupts). */
export const SIM_LOG_LIMIT = 4096;

/** Options of {@link SimHypervisor}. */
export interface SimHypervisorOptions {
  /** Guest domain id, in [1, 0x7fef]. Default 1. */
  domid?: number;
  /** Number of vCPUs, in [1, 128]. Default 1. */
  nrVcpus?: number;
  /**
   * Guest RAM in bytes, a positive multiple of 4096 up to 4 GiB (guest frames 0 .. ramBytes / 4096 - 1).
   * The memfd is sparse: only pages the guest or a device touches take memory.
   */
  ramBytes: number;
  /** How long a vCPU waits for an ioreq response before ETIMEDOUT, in ms. Default 10 000. */
  vcpuTimeoutMs?: number;
  /**
   * Bytes of the extra pool, the memory populate_physmap can still hand the domain (Xen's free
   * heap): a multiple of 4096 up to 4 GiB, sparse like guest RAM. Default 512 MiB.
   */
  extraBytes?: number;
  /**
   * The domain's initial page limit (`max_pages`). Default the RAM's frames + 256 (xl adds 1 MiB
   * to `memory`; `maxmem=` does not raise it).
   */
  maxPages?: number;
  /**
   * Zero pages before populate_physmap hands them out (default true). False fills them with 0xa5,
   * as pages may come back from a Xen booted with `bootscrub=0`.
   */
  scrubPages?: boolean;
}

/** Pinned cache attributes of a frame range (pin_memory_cacheattr). */
export interface SimPinnedCacheattr {
  /** First frame. */
  readonly start: bigint;
  /** Last frame (inclusive). */
  readonly end: bigint;
  /** Caching type. */
  readonly type: Exclude<MemCacheType, 'delete'>;
}

/** Pages beyond guest RAM: `nr` frames from gfn `first` hold pages `page` .. `page + nr - 1`. */
interface HighExtent {
  first: number;
  nr: number;
  page: number;
}

/** Default {@link SimHypervisorOptions.extraBytes}. */
export const SIM_DEFAULT_EXTRA_BYTES = 512 * 2 ** 20;

/** Frames xl adds to a domain's `memory` for its page limit (LIBXL_MAXMEM_CONSTANT, 1 MiB). */
export const SIM_MAXMEM_SLACK_PAGES = 256;

/** `paddr_bits` of the simulated host (pin_memory_cacheattr refuses gfns with bits at or above it). */
export const SIM_PADDR_BITS = 48;

/** Pinned cache attribute ranges per domain (Xen's arbitrary limit; ENOSPC beyond). */
export const MAX_PINNED_CACHEATTRS = 64;

/** The mappable resources of an ioreq server (what XENMEM_acquire_resource hands out). */
export interface SimIoreqServerResources {
  /** memfd of the synchronous ioreq page (resource frame 1). */
  readonly ioreqFd: number;
  /** memfd of the buffered ioreq page (resource frame 0), or null without a ring. */
  readonly bufioreqFd: number | null;
}

/** The emulator's end of one simulated event channel, as {@link SimHypervisor.bindEventChannel} returns it. */
export interface SimEventChannel {
  /** The guest-side port. */
  readonly port: number;
  /** Identifies this allocation of the port, so a stale unbind cannot touch a reused port. */
  readonly serial: number;
  /** eventfd the guest signals (a vCPU's READY ioreq, or queued buffered ioreqs). */
  readonly guestToServer: number;
  /** eventfd the emulator signals to complete a vCPU's ioreq; null for the buffered channel. */
  readonly serverToGuest: number | null;
}

/** One interrupt operation, as recorded by the simulator. */
export type SimInterruptEvent =
  | { readonly kind: 'pci-intx'; readonly device: number; readonly intx: number; readonly level: boolean; readonly gsi: number }
  | { readonly kind: 'isa-irq'; readonly irq: number; readonly level: boolean; readonly gsi: number }
  | { readonly kind: 'msi'; readonly address: bigint; readonly data: number; readonly vector: number; readonly vcpus: readonly number[] }
  | { readonly kind: 'pirq'; readonly address: bigint; readonly data: number; readonly pirq: number };

/** One modified_memory call, as recorded by the simulator. */
export interface SimModifiedMemory {
  /** The extents passed. */
  readonly extents: readonly PfnExtent[];
  /** Whether log-dirty mode was on, i.e. whether Xen looked at the extents and marked them. */
  readonly logDirty: boolean;
}

interface ServerState {
  readonly id: number;
  readonly gen: number;
  readonly bufMode: number;
  enabled: boolean;
  readonly ioreqFd: number;
  readonly bufFd: number | null;
  readonly bufEvtFd: number | null;
  readonly guestToServer: readonly number[];
  readonly serverToGuest: readonly number[];
  readonly ports: readonly number[];
  readonly bufPort: number | null;
  readonly ranges: [Rangeset, Rangeset, Rangeset];
  /** The hypervisor's own mapping of the ioreq page, to write vp_eport. */
  readonly ioreqPage: ArrayBuffer;
}

interface PortState {
  readonly port: number;
  readonly serial: number;
  readonly serverId: number;
  readonly guestToServer: number;
  readonly serverToGuest: number | null;
  bound: boolean;
}

interface Zombie {
  readonly id: number;
  readonly fds: readonly number[];
}

const U64_MAX = (1n << 64n) - 1n;
const BUFIOREQ_MODES: Readonly<Record<BufioreqModeName, number>> = {
  off: BufioreqMode.OFF,
  legacy: BufioreqMode.LEGACY,
  atomic: BufioreqMode.ATOMIC,
};
const RANGE_TYPES: Readonly<Record<IoRangeKind, number>> = {
  port: IoRangeType.PORT,
  memory: IoRangeType.MEMORY,
  pci: IoRangeType.PCI,
};
/** MSI data: delivery mode bits 10:8 (0 fixed, 1 lowest priority). */
const MSI_DELIVERY_FIXED = 0;
const MSI_DELIVERY_LOWEST_PRIORITY = 1;

/** A simulated HVM guest domain and the part of Xen that IOREQ servers talk to. */
export class SimHypervisor {
  /** Guest domain id. */
  readonly domid: number;
  /** Number of vCPUs. */
  readonly nrVcpus: number;
  /** Guest RAM size in bytes. */
  readonly ramBytes: number;
  /** Guest RAM size in frames. */
  readonly ramPages: number;
  /**
   * memfd of the RAM pool: guest RAM's pages, page n at offset n · 4096 (so offset = guest physical
   * address while relocate_memory leaves the RAM's frames alone).
   */
  readonly ramFd: number;
  /**
   * The RAM pool as the hypervisor sees it (for toolstack-style inspection in tests and tools):
   * guest RAM at its guest-physical addresses, as long as relocate_memory left it in place. Use
   * {@link readGuest} to read through the p2m.
   */
  readonly ram: Uint8Array;
  /** Bytes of the extra pool (see {@link SimHypervisorOptions.extraBytes}). */
  readonly extraBytes: number;
  /** memfd of the extra pool, or -1 without one. */
  readonly extraFd: number;
  /** What the guest observes of the interrupts raised so far. */
  readonly interrupts: SimInterruptCounters;
  /** The global log-dirty bitmap (one bit per guest frame), the toolstack's migration view. */
  readonly logDirtyBitmap: DirtyBitmap;

  private readonly vcpuTimeoutMs: number;
  private readonly ctlBuffer: SharedArrayBuffer;
  private readonly ctl: Int32Array;
  private readonly rangesBuffer: SharedArrayBuffer;
  private readonly rangeWords: BigUint64Array;
  private readonly p2mBuffer: SharedArrayBuffer;
  private readonly p2m: Int32Array;
  private readonly extentsBuffer: SharedArrayBuffer;
  private readonly extentWords: BigUint64Array;
  /** Pages beyond guest RAM, sorted by gfn, never overlapping; published to {@link extentWords}. */
  private high: HighExtent[] = [];
  /** Free pages as sorted `[start, end)` runs, none crossing from the RAM pool to the extra pool. */
  private freePages: [number, number][] = [];
  private readonly extraMapping: ArrayBuffer | null;
  private readonly extra: Uint8Array;
  private readonly scrubPages: boolean;
  private totPagesCount: number;
  private maxPagesCount: number;
  /** Pages the domain holds that no frame maps (replaced by populate_physmap, as in Xen). */
  private orphanedPages = 0;
  private pinned: SimPinnedCacheattr[] = [];
  private readonly xenLogLines: string[] = [];
  private readonly vramArmedBuffer: SharedArrayBuffer;
  private readonly vramArmed: Int32Array;
  private readonly irqBuffer: SharedArrayBuffer;
  private readonly irq: Int32Array;
  private readonly irqEventFds: number[] = [];
  private readonly ramMapping: ArrayBuffer;

  private readonly servers: (ServerState | undefined)[] = new Array<ServerState | undefined>(MAX_IOREQ_SERVERS).fill(undefined);
  private readonly ports = new Map<number, PortState>();
  private portSerial = 0;
  private zombies: Zombie[] = [];
  private claim: { id: number; flags: number } | null = null;
  /** Frames currently typed ioreq_server (Xen's p2m->ioreq.entry_count). */
  private ioreqEntries = 0;
  private vram: { first: bigint; nr: number } | null = null;
  private logDirtyOn = false;
  private readonly pciIntx = new Uint8Array(32 * 4);
  private readonly isaIrq = new Uint8Array(16);
  private lowestPrioNext = 0;
  private readonly interruptEvents: SimInterruptEvent[] = [];
  private readonly modifiedMemoryCalls: SimModifiedMemory[] = [];
  private closed = false;

  /**
   * Creates the domain: zeroed guest RAM (every frame ram_rw), no ioreq servers.
   * @throws EINVAL naming the option at fault; EOPNOTSUPP when the host page size is not 4 KiB
   *   (guest frames are mapped one by one)
   */
  constructor(options: SimHypervisorOptions) {
    if (PAGE_SIZE !== XEN_PAGE_SIZE) {
      throw new MdevError('EOPNOTSUPP', `the simulator maps guest frames individually and needs 4 KiB host pages, not ${PAGE_SIZE}`);
    }
    const { domid = 1, nrVcpus = 1, ramBytes, vcpuTimeoutMs = 10_000, extraBytes = SIM_DEFAULT_EXTRA_BYTES, maxPages, scrubPages = true } = options;
    this.domid = intArg('options.domid', domid, 1, 0x7fef);
    this.nrVcpus = intArg('options.nrVcpus', nrVcpus, 1, MAX_SIM_VCPUS);
    // Guest RAM is one mapping, and Node 20 maps at most 4 GiB into one ArrayBuffer.
    if (!Number.isSafeInteger(ramBytes) || ramBytes <= 0 || ramBytes % XEN_PAGE_SIZE !== 0 || ramBytes > MAX_SIM_RAM_BYTES) {
      throw new MdevError('EINVAL', `must be a positive multiple of ${XEN_PAGE_SIZE} up to 4 GiB, got ${describe(ramBytes)}`, 'options.ramBytes');
    }
    this.vcpuTimeoutMs = intArg('options.vcpuTimeoutMs', vcpuTimeoutMs, 1, 2 ** 31 - 1);
    if (!Number.isSafeInteger(extraBytes) || extraBytes < 0 || extraBytes % XEN_PAGE_SIZE !== 0 || extraBytes > MAX_SIM_RAM_BYTES) {
      throw new MdevError('EINVAL', `must be a multiple of ${XEN_PAGE_SIZE} up to 4 GiB, got ${describe(extraBytes)}`, 'options.extraBytes');
    }
    if (typeof scrubPages !== 'boolean') throw new MdevError('EINVAL', `must be a boolean, got ${describe(scrubPages)}`, 'options.scrubPages');
    this.ramBytes = ramBytes;
    this.ramPages = ramBytes / XEN_PAGE_SIZE;
    this.extraBytes = extraBytes;
    this.scrubPages = scrubPages;
    this.totPagesCount = this.ramPages;
    this.maxPagesCount = intArg('options.maxPages', maxPages ?? this.ramPages + SIM_MAXMEM_SLACK_PAGES, 0, 0xffff_ffff);
    if (extraBytes > 0) this.freePages = [[this.ramPages, this.ramPages + extraBytes / XEN_PAGE_SIZE]];

    this.ctlBuffer = new SharedArrayBuffer(ctlBytes(this.nrVcpus));
    this.ctl = new Int32Array(this.ctlBuffer);
    this.rangesBuffer = new SharedArrayBuffer(RANGES_BYTES);
    this.rangeWords = new BigUint64Array(this.rangesBuffer);
    this.p2mBuffer = new SharedArrayBuffer(this.ramPages * 4);
    this.p2m = new Int32Array(this.p2mBuffer);
    for (let pfn = 0; pfn < this.ramPages; pfn++) this.p2m[pfn] = p2mEntry(HvmMemType.RAM_RW, pfn);
    this.extentsBuffer = new SharedArrayBuffer(EXTENTS_BYTES);
    this.extentWords = new BigUint64Array(this.extentsBuffer);
    this.irqBuffer = new SharedArrayBuffer(irqBytes(this.nrVcpus));
    this.irq = new Int32Array(this.irqBuffer);
    this.interrupts = new SimInterruptCounters(this.irqBuffer, this.nrVcpus);
    this.vramArmedBuffer = new SharedArrayBuffer(VRAM_MAX_PAGES / 8);
    this.vramArmed = new Int32Array(this.vramArmedBuffer);
    this.logDirtyBitmap = DirtyBitmap.createShared(this.ramPages);

    Atomics.store(this.ctl, Ctl.magic, SIM_LAYOUT_VERSION);
    Atomics.store(this.ctl, Ctl.claimId, -1);
    Atomics.store(this.ctl, Ctl.nrVcpus, this.nrVcpus);
    Atomics.store(this.ctl, Ctl.ramPages, this.ramPages);
    for (let id = 0; id < MAX_IOREQ_SERVERS; id++) this.publishServer(id);

    const fds: number[] = [];
    let ramMapping: ArrayBuffer | null = null;
    try {
      this.ramFd = sealedMemfd(`xen-sim-d${this.domid}-ram`, ramBytes);
      fds.push(this.ramFd);
      this.extraFd = extraBytes > 0 ? sealedMemfd(`xen-sim-d${this.domid}-extra`, extraBytes) : -1;
      if (this.extraFd >= 0) fds.push(this.extraFd);
      for (let v = 0; v < this.nrVcpus; v++) {
        const fd = eventfdCreate(0, { nonBlocking: true });
        fds.push(fd);
        this.irqEventFds.push(fd);
      }
      ramMapping = mmapFd(this.ramFd, ramBytes, { writable: true, shared: true });
      this.extraMapping = this.extraFd >= 0 ? mmapFd(this.extraFd, extraBytes, { writable: true, shared: true }) : null;
    } catch (e) {
      if (ramMapping !== null) munmap(ramMapping);
      for (const fd of fds) closeFd(fd);
      throw e;
    }
    this.ramMapping = ramMapping;
    this.ram = new Uint8Array(this.ramMapping);
    this.extra = this.extraMapping === null ? new Uint8Array(0) : new Uint8Array(this.extraMapping);
  }

  // ---------------------------------------------------------------------------------------------
  // Ioreq servers

  /**
   * DMOP create_ioreq_server: takes the lowest free server id, allocates the ioreq page (and the
   * buffered page unless `bufioreq` is 'off'), and one event channel per vCPU plus one for the
   * buffered ring (allocated in Xen's order: vCPU 0, the buffered channel, vCPU 1, ...). The server
   * starts disabled.
   * @returns the server id
   * @throws ENOSPC when 8 servers exist; EINVAL for an unknown ring mode
   */
  createIoreqServer(bufioreq: BufioreqModeName): number {
    this.enter();
    const mode = BUFIOREQ_MODES[bufioreq];
    if (typeof bufioreq !== 'string' || mode === undefined) {
      throw new MdevError('EINVAL', `must be 'off', 'legacy' or 'atomic', got ${describe(bufioreq)}`, 'bufioreq');
    }
    const id = this.servers.findIndex((s) => s === undefined);
    if (id < 0) throw new MdevError('ENOSPC', `the domain already has ${MAX_IOREQ_SERVERS} ioreq servers`);

    const fds: number[] = [];
    let ioreqPage: ArrayBuffer | null = null;
    try {
      const ioreqFd = sealedMemfd(`xen-sim-d${this.domid}-ioreq${id}`, XEN_PAGE_SIZE);
      fds.push(ioreqFd);
      const bufFd = mode === BufioreqMode.OFF ? null : sealedMemfd(`xen-sim-d${this.domid}-bufioreq${id}`, XEN_PAGE_SIZE);
      if (bufFd !== null) fds.push(bufFd);
      const newEventfd = (): number => {
        const fd = eventfdCreate(0, { nonBlocking: true });
        fds.push(fd);
        return fd;
      };
      const guestToServer: number[] = [];
      const serverToGuest: number[] = [];
      for (let v = 0; v < this.nrVcpus; v++) {
        guestToServer.push(newEventfd());
        serverToGuest.push(newEventfd());
      }
      const bufEvtFd = bufFd === null ? null : newEventfd();
      ioreqPage = mmapFd(ioreqFd, XEN_PAGE_SIZE, { writable: true, shared: true });

      const gen = Atomics.add(this.ctl, slotIndex(this.nrVcpus, id, Slot.gen), 1) + 1;
      const ports: number[] = [];
      let bufPort: number | null = null;
      for (let v = 0; v < this.nrVcpus; v++) {
        ports.push(this.allocatePort(id, guestToServer[v]!, serverToGuest[v]!));
        if (v === 0 && bufEvtFd !== null) bufPort = this.allocatePort(id, bufEvtFd, null);
      }
      const server: ServerState = {
        id,
        gen,
        bufMode: mode,
        enabled: false,
        ioreqFd,
        bufFd,
        bufEvtFd,
        guestToServer,
        serverToGuest,
        ports,
        bufPort,
        ranges: [new Rangeset(MAX_IO_RANGES), new Rangeset(MAX_IO_RANGES), new Rangeset(MAX_IO_RANGES)],
        ioreqPage,
      };
      this.servers[id] = server;
      this.publish(() => this.publishServer(id));
      return id;
    } catch (e) {
      if (ioreqPage !== null) munmap(ioreqPage);
      for (const [port, state] of this.ports) if (state.serverId === id) this.ports.delete(port);
      for (const fd of fds) closeFd(fd);
      throw e;
    }
  }

  /**
   * DMOP get_ioreq_server_info with XEN_DMOP_no_gfns (pages are mapped through
   * {@link ioreqServerResources} instead).
   * @returns the port of the buffered-ioreq event channel, or null when the server has no ring
   * @throws ENOENT for an unknown server id
   */
  getIoreqServerInfo(id: number): { bufioreqPort: number | null } {
    this.enter();
    return { bufioreqPort: this.server(id).bufPort };
  }

  /**
   * The server's pages, as XENMEM_acquire_resource (type ioreq_server) exposes them: frame 0 the
   * buffered page, frame 1 the synchronous page. The fds stay owned by the hypervisor; map them,
   * do not close them.
   * @throws ENOENT for an unknown server id
   */
  ioreqServerResources(id: number): SimIoreqServerResources {
    this.enter();
    const s = this.server(id);
    return { ioreqFd: s.ioreqFd, bufioreqFd: s.bufFd };
  }

  /**
   * DMOP map_io_range_to_ioreq_server: adds `[start, end]` to the server's set of `kind`
   * (PCI ranges are SBDFs encoded as by `pciSbdf`).
   * @throws EINVAL when end < start or for an unknown kind; ENOENT for an unknown server id;
   *   EEXIST when the range overlaps one already in that set; ENOMEM when the set is full
   */
  mapIoRange(id: number, kind: IoRangeKind, start: bigint, end: bigint): void {
    this.enter();
    u64Arg('start', start);
    u64Arg('end', end);
    if (start > end) throw new MdevError('EINVAL', `end ${hex(end)} is below start ${hex(start)}`, 'end');
    const s = this.server(id);
    const set = s.ranges[rangeType(kind)]!;
    if (set.overlaps(start, end)) {
      throw new MdevError('EEXIST', `[${hex(start)}, ${hex(end)}] overlaps a ${kind} range of server ${id}`, 'start');
    }
    set.add(start, end);
    this.publish(() => this.publishServer(id));
  }

  /**
   * DMOP unmap_io_range_from_ioreq_server: removes `[start, end]`, which must lie inside one mapped
   * range (after coalescing; a part of a range may be removed, splitting it).
   * @throws EINVAL when end < start or for an unknown kind; ENOENT for an unknown server id or a
   *   range not wholly mapped; ENOMEM when a split would exceed the set's limit
   */
  unmapIoRange(id: number, kind: IoRangeKind, start: bigint, end: bigint): void {
    this.enter();
    u64Arg('start', start);
    u64Arg('end', end);
    if (start > end) throw new MdevError('EINVAL', `end ${hex(end)} is below start ${hex(start)}`, 'end');
    const s = this.server(id);
    const set = s.ranges[rangeType(kind)]!;
    if (!set.contains(start, end)) {
      throw new MdevError('ENOENT', `[${hex(start)}, ${hex(end)}] is not mapped as one ${kind} range of server ${id}`, 'start');
    }
    set.remove(start, end);
    this.publish(() => this.publishServer(id));
  }

  /**
   * DMOP set_ioreq_server_state. Enabling writes each vCPU's event channel port into `vp_eport` of
   * its ioreq slot (Xen writes them only then, so an emulator reads the ports after enabling, as
   * QEMU does). A disabled server receives no ioreqs.
   * @throws ENOENT for an unknown server id
   */
  setIoreqServerState(id: number, enabled: boolean): void {
    this.enter();
    if (typeof enabled !== 'boolean') throw new MdevError('EINVAL', `must be a boolean, got ${describe(enabled)}`, 'enabled');
    const s = this.server(id);
    if (enabled && !s.enabled) {
      const page = new DataView(s.ioreqPage);
      for (let v = 0; v < this.nrVcpus; v++) page.setUint32(v * Ioreq.sizeof + Ioreq.vpEport, s.ports[v]!, true);
    }
    s.enabled = enabled;
    this.publish(() => this.publishServer(id));
  }

  /**
   * DMOP destroy_ioreq_server: drops the server's claim on HVMMEM_ioreq_server (its pages keep
   * the type), its ranges, event channels and pages. A vCPU waiting on the server completes its
   * access with all-ones, as in Xen when an emulator dies with an ioreq in flight. Mappings made
   * of the pages stay valid until unmapped.
   * @throws ENOENT for an unknown server id
   */
  destroyIoreqServer(id: number): void {
    this.enter();
    const s = this.server(id);
    if (this.claim?.id === id) this.claim = null;
    s.enabled = false;
    for (const port of [...s.ports, ...(s.bufPort === null ? [] : [s.bufPort])]) this.ports.delete(port);
    this.servers[id] = undefined;
    this.publish(() => {
      this.publishServer(id);
      this.publishGlobals();
    });
    // Bump the generation before looking at the use count (a vCPU raises the use count before
    // checking the generation): either the vCPU sees the server gone, or we see it inside.
    Atomics.add(this.ctl, slotIndex(this.nrVcpus, id, Slot.gen), 1);
    for (const fd of s.serverToGuest) eventfdWrite(fd); // wake vCPUs blocked on this server
    munmap(s.ioreqPage);
    const fds = [s.ioreqFd, ...s.guestToServer, ...s.serverToGuest];
    if (s.bufFd !== null) fds.push(s.bufFd);
    if (s.bufEvtFd !== null) fds.push(s.bufEvtFd);
    this.zombies.push({ id, fds });
    this.reap();
  }

  // ---------------------------------------------------------------------------------------------
  // Event channels

  /**
   * Binds the emulator's end of the event channel whose guest-side port is `port` (what
   * EVTCHNOP_bind_interdomain does for a real emulator). The fds stay owned by the hypervisor:
   * duplicate them to keep them.
   * @throws EINVAL when the port is not an unbound ioreq event channel of this domain
   */
  bindEventChannel(port: number): SimEventChannel {
    this.enter();
    const state = Number.isInteger(port) ? this.ports.get(port) : undefined;
    if (state === undefined) throw new MdevError('EINVAL', `port ${describe(port)} is not an ioreq event channel of d${this.domid}`, 'port');
    if (state.bound) throw new MdevError('EINVAL', `port ${port} is already bound`, 'port');
    state.bound = true;
    return { port, serial: state.serial, guestToServer: state.guestToServer, serverToGuest: state.serverToGuest };
  }

  /**
   * Unbinds what {@link bindEventChannel} bound, making the port bindable again (Xen returns a
   * closed interdomain channel's remote end to the unbound state). A port freed meanwhile (its
   * server destroyed) is left alone.
   */
  unbindEventChannel(port: number, serial: number): void {
    this.enter();
    const state = this.ports.get(port);
    if (state !== undefined && state.serial === serial) state.bound = false;
  }

  // ---------------------------------------------------------------------------------------------
  // Memory types and dirty tracking

  /**
   * DMOP map_mem_type_to_ioreq_server for HVMMEM_ioreq_server. `flags` XEN_DMOP_IOREQ_MEM_ACCESS_WRITE
   * claims the type: guest writes to pages of the type become IOREQ_TYPE_COPY ioreqs to this
   * server. `flags` 0 releases the claim and turns every page of the type back to ram_rw.
   * @throws EINVAL for another memory type, for any flag but WRITE (READ included: Xen forwards
   *   only writes), or when releasing a claim the server does not hold; ENOENT for an unknown server
   *   id; EBUSY when the type is claimed (by any server, this one included) or pages of the type
   *   remain from an earlier owner
   */
  mapMemTypeToIoreqServer(id: number, memType: number, flags: number): void {
    this.enter();
    if (memType !== HvmMemType.IOREQ_SERVER) {
      throw new MdevError('EINVAL', `only HVMMEM_ioreq_server (${HvmMemType.IOREQ_SERVER}) can be mapped, got ${describe(memType)}`, 'memType');
    }
    if (!Number.isInteger(flags) || flags < 0 || flags > 0xffffffff || (flags & ~IoreqMemAccess.WRITE) !== 0) {
      throw new MdevError('EINVAL', `only XEN_DMOP_IOREQ_MEM_ACCESS_WRITE (${IoreqMemAccess.WRITE}) or 0 is supported, got ${describe(flags)}`, 'flags');
    }
    this.server(id);
    if (flags === 0) {
      if (this.claim?.id !== id) throw new MdevError('EINVAL', `server ${id} does not hold HVMMEM_ioreq_server`, 'id');
      this.claim = null;
      // Xen resets the remaining entries (p2m_finish_type_change, with continuations) before the
      // DMOP returns to the caller.
      for (let pfn = 0; pfn < this.ramPages && this.ioreqEntries > 0; pfn++) {
        if (this.lowType(pfn) === HvmMemType.IOREQ_SERVER) {
          this.setLowType(pfn, HvmMemType.RAM_RW);
          this.ioreqEntries--;
        }
      }
    } else {
      if (this.claim !== null) throw new MdevError('EBUSY', `HVMMEM_ioreq_server is claimed by server ${this.claim.id}`, 'id');
      if (this.ioreqEntries > 0) {
        throw new MdevError('EBUSY', `${this.ioreqEntries} frames are still typed HVMMEM_ioreq_server from an earlier owner`, 'id');
      }
      this.claim = { id, flags };
    }
    this.publish(() => this.publishGlobals());
  }

  /**
   * DMOP set_mem_type: changes the type of frames `[firstPfn, firstPfn + nr)`, one at a time.
   * @throws EINVAL for an empty range or one beyond the highest frame with a page, for
   *   HVMMEM_unused or an unknown type, for HVMMEM_ioreq_server while no server claims it, and at
   *   the first frame whose current type may not change to `memType` (earlier frames keep their new
   *   type); EOPNOTSUPP for frames beyond guest RAM (the simulator keeps those ram_rw)
   */
  setMemType(memType: number, firstPfn: bigint, nr: number): void {
    this.enter();
    u64Arg('firstPfn', firstPfn);
    const count = u32Arg('nr', nr);
    const last = (firstPfn + BigInt(count) - 1n) & U64_MAX;
    if (firstPfn > last || last > BigInt(this.maxGpfn())) {
      throw new MdevError('EINVAL', `frames [${hex(firstPfn)}, +${count}) are not within guest RAM (${this.ramPages} frames)`, 'firstPfn');
    }
    if (last > BigInt(this.ramPages - 1)) {
      throw new MdevError('EOPNOTSUPP', `frames [${hex(firstPfn)}, +${count}) reach beyond guest RAM, whose pages the simulator keeps ram_rw`, 'firstPfn');
    }
    if (!Number.isInteger(memType) || memType < 0 || memType > HvmMemType.IOREQ_SERVER || memType === HvmMemType.UNUSED) {
      throw new MdevError('EINVAL', `not a settable hvmmem_type_t: ${describe(memType)}`, 'memType');
    }
    if (memType === HvmMemType.IOREQ_SERVER && this.claim === null) {
      throw new MdevError('EINVAL', 'no ioreq server has claimed HVMMEM_ioreq_server', 'memType');
    }
    const first = Number(firstPfn);
    for (let pfn = first; pfn < first + count; pfn++) {
      const old = this.lowType(pfn);
      // A frame write-protected for track_dirty_vram is p2m_ram_logdirty in Xen, which may not
      // become ioreq_server; any other change ends the write-protection.
      const logdirty = old === HvmMemType.RAM_RW && this.armed(pfn);
      if (!typeChangeAllowed(old, memType) || (logdirty && memType === HvmMemType.IOREQ_SERVER)) {
        const what = logdirty ? 'ram_rw write-protected for track_dirty_vram (p2m_ram_logdirty)' : `type ${old}`;
        throw new MdevError('EINVAL', `frame ${hex(BigInt(pfn))} cannot change from ${what} to ${memType}`, 'memType');
      }
      if (old === HvmMemType.IOREQ_SERVER) this.ioreqEntries--;
      if (memType === HvmMemType.IOREQ_SERVER) this.ioreqEntries++;
      this.disarm(pfn);
      this.setLowType(pfn, memType);
    }
  }

  /**
   * The type of guest frame `pfn` (HVMOP_get_mem_type), an HvmMemType value: a frame without a
   * page (never populated beyond guest RAM, or relocated away) reads HVMMEM_mmio_dm, as in Xen.
   */
  memType(pfn: number | bigint): number {
    this.enter();
    const n = Number(pfn);
    if (!Number.isInteger(n) || n < 0 || n > SIM_MAX_GFN) {
      throw new MdevError('EINVAL', `must be a guest frame below 2^40, got ${describe(pfn)}`, 'pfn');
    }
    if (n < this.ramPages) return this.lowType(n);
    return this.highPage(n) >= 0 ? HvmMemType.RAM_RW : HvmMemType.MMIO_DM;
  }

  /** Frames currently typed HVMMEM_ioreq_server (Xen's p2m ioreq entry count). */
  get ioreqServerFrames(): number {
    return this.ioreqEntries;
  }

  /**
   * DMOP track_dirty_vram. See the module notes for the semantics; `bitmap` receives
   * ceil(nr / 8) bytes, bit i (LSB first) for frame firstPfn + i. The report happens with the
   * domain paused in Xen; here each frame's write-protection is taken back atomically, so a guest
   * write that races with the call is reported by this call or by the next one, never lost.
   * @throws EINVAL when nr exceeds 1 GiB of frames or `bitmap` is too short
   */
  trackDirtyVram(firstPfn: bigint, nr: number, bitmap: Uint8Array): void {
    this.enter();
    u64Arg('firstPfn', firstPfn);
    const count = u32Arg('nr', nr);
    if (count > VRAM_MAX_PAGES) throw new MdevError('EINVAL', `at most ${VRAM_MAX_PAGES} frames (1 GiB) can be tracked, got ${count}`, 'nr');
    if (!(bitmap instanceof Uint8Array)) throw new MdevError('EINVAL', `must be a Uint8Array, got ${describe(bitmap)}`, 'bitmap');
    const bytes = Math.ceil(count / 8);
    if (bitmap.byteLength < bytes) throw new MdevError('EINVAL', `needs ${bytes} bytes for ${count} frames, got ${bitmap.byteLength}`, 'bitmap');
    if (count === 0) {
      if (this.vram !== null) {
        // The range goes back to ram_rw.
        this.vram = null;
        this.vramArmed.fill(0);
        this.publish(() => this.publishGlobals());
      }
      return;
    }
    if (this.vram === null || this.vram.first !== firstPfn || this.vram.nr !== count) {
      // A new range: the old one goes back to ram_rw, the new one's ram_rw frames are
      // write-protected, and every frame counts as dirty.
      this.vramArmed.fill(0);
      this.vram = { first: firstPfn, nr: count };
      this.publish(() => this.publishGlobals());
      for (let i = 0; i < count; i++) if (this.isRamRw(firstPfn + BigInt(i))) Atomics.or(this.vramArmed, i >>> 5, 1 << (i & 31));
      bitmap.fill(0xff, 0, bytes);
      return;
    }
    // p2m_log_dirty_range: a frame is dirty if it is ram_rw now; it is write-protected again.
    bitmap.fill(0, 0, bytes);
    for (let i = 0; i < count; i++) {
      if (!this.isRamRw(firstPfn + BigInt(i))) continue;
      const bit = 1 << (i & 31);
      if ((Atomics.or(this.vramArmed, i >>> 5, bit) & bit) === 0) bitmap[i >>> 3]! |= 1 << (i & 7);
    }
  }

  /**
   * DMOP modified_memory: the device wrote these frames behind the guest's back. Marks them in the
   * global log-dirty bitmap when log-dirty mode is on; a no-op otherwise (as in Xen). Every call is
   * recorded in {@link modifiedMemoryLog}.
   * @throws EINVAL (naming `extents[i]`) for an empty or overflowing extent or one ending beyond the
   *   highest guest frame, checked only in log-dirty mode
   */
  modifiedMemory(extents: readonly PfnExtent[]): void {
    this.enter();
    if (!Array.isArray(extents)) throw new MdevError('EINVAL', `must be an array, got ${describe(extents)}`, 'extents');
    const copy = extents.map((e, i) => {
      u64Arg(`extents[${i}].firstPfn`, e?.firstPfn);
      return { firstPfn: e.firstPfn, nr: u32Arg(`extents[${i}].nr`, e.nr) };
    });
    if (this.logDirtyOn) {
      const maxGpfn = BigInt(this.maxGpfn());
      for (let i = copy.length - 1; i >= 0; i--) {
        const { firstPfn, nr } = copy[i]!;
        const end = (firstPfn + BigInt(nr)) & U64_MAX;
        if (end <= firstPfn || end > maxGpfn) {
          throw new MdevError('EINVAL', `frames [${hex(firstPfn)}, ${hex(end)}) are empty or end beyond frame ${hex(maxGpfn)}`, `extents[${i}]`);
        }
        for (let pfn = Number(firstPfn); pfn < Math.min(Number(end), this.ramPages); pfn++) {
          // Xen marks frames that have a page behind them: not emulated MMIO. (Frames beyond guest
          // RAM are not logged by the simulator.)
          if (this.lowType(pfn) !== HvmMemType.MMIO_DM) this.logDirtyBitmap.markPage(pfn);
        }
      }
    }
    this.modifiedMemoryCalls.push({ extents: copy, logDirty: this.logDirtyOn });
    this.trimLog(this.modifiedMemoryCalls, 'modifiedMemory');
  }

  /**
   * The most recent modified_memory calls (at most {@link SIM_LOG_LIMIT}), oldest first. A guest
   * that runs for days must not grow the simulator without bound, so older calls are dropped.
   */
  get modifiedMemoryLog(): readonly SimModifiedMemory[] {
    return this.modifiedMemoryCalls;
  }

  /** How many modified_memory calls were made in all (including those dropped from the log). */
  get modifiedMemoryCount(): number {
    return this.droppedFromLog.modifiedMemory + this.modifiedMemoryCalls.length;
  }

  /** The logged modified_memory calls made after the first `count` (see {@link modifiedMemoryCount}). */
  modifiedMemorySince(count: number): readonly SimModifiedMemory[] {
    return this.modifiedMemoryCalls.slice(Math.max(0, count - this.droppedFromLog.modifiedMemory));
  }

  private readonly droppedFromLog = { modifiedMemory: 0, interrupts: 0 };

  private trimLog(log: unknown[], which: 'modifiedMemory' | 'interrupts'): void {
    if (log.length <= SIM_LOG_LIMIT) return;
    const drop = log.length - SIM_LOG_LIMIT;
    log.splice(0, drop);
    this.droppedFromLog[which] += drop;
  }

  /**
   * Turns global log-dirty mode on, as the toolstack does for live migration: from now on guest
   * writes to RAM and modified_memory mark {@link logDirtyBitmap}.
   * @throws EBUSY while frames are typed HVMMEM_ioreq_server (Xen refuses global log-dirty then)
   */
  enableLogDirty(): void {
    this.enter();
    if (this.ioreqEntries > 0) throw new MdevError('EBUSY', `${this.ioreqEntries} frames are typed HVMMEM_ioreq_server`);
    this.logDirtyOn = true;
    this.publish(() => this.publishGlobals());
  }

  /** Turns global log-dirty mode off (the bitmap keeps its bits). */
  disableLogDirty(): void {
    this.enter();
    this.logDirtyOn = false;
    this.publish(() => this.publishGlobals());
  }

  // ---------------------------------------------------------------------------------------------
  // The domain's pages

  /** XENMEM_current_reservation and XENMEM_maximum_reservation: pages held, and the limit. */
  domainPages(): DomainPages {
    this.enter();
    return { totPages: this.totPagesCount, maxPages: this.maxPagesCount };
  }

  /**
   * XEN_DOMCTL_max_mem, in pages: the new limit, clipped to 2^32 - 1. A limit below the pages the
   * domain holds is accepted (Xen lets the domain ratchet down; allocations fail meanwhile).
   * @throws EINVAL for a negative or non-integer count
   */
  setMaxPages(maxPages: number): void {
    this.enter();
    if (typeof maxPages !== 'number' || !Number.isSafeInteger(maxPages) || maxPages < 0) {
      throw new MdevError('EINVAL', `must be a non-negative integer, got ${describe(maxPages)}`, 'maxPages');
    }
    this.maxPagesCount = Math.min(maxPages, 0xffff_ffff);
  }

  /** Pages the domain holds that no frame maps any more (replaced by populate_physmap). */
  get orphanedPageCount(): number {
    return this.orphanedPages;
  }

  /** What the simulated Xen printed (its console, `xl dmesg`), oldest first, at most {@link SIM_LOG_LIMIT} lines. */
  get xenLog(): readonly string[] {
    return this.xenLogLines;
  }

  private xenPrint(line: string): void {
    this.xenLogLines.push(`(XEN) ${line}`);
    if (this.xenLogLines.length > SIM_LOG_LIMIT) this.xenLogLines.splice(0, this.xenLogLines.length - SIM_LOG_LIMIT);
  }

  /**
   * XENMEM_populate_physmap with order-0 extents: a new page at each of `gfns`, in order. See the
   * module notes for where it stops.
   * @returns how many gfns were populated, from the first
   * @throws EINVAL when `gfns` is not an array of u64 bigints (nothing is populated then)
   */
  populatePhysmap(gfns: readonly bigint[]): number {
    this.enter();
    if (!Array.isArray(gfns)) throw new MdevError('EINVAL', `must be an array of gfns, got ${describe(gfns)}`, 'gfns');
    gfns.forEach((gfn, i) => u64Arg(`gfns[${i}]`, gfn));
    let done = 0;
    let changed = false;
    // Consecutive pages for consecutive gfns when the pool allows, so one mapping covers them.
    const pages = this.takePages(Math.min(gfns.length, Math.max(0, this.maxPagesCount - this.totPagesCount)));
    try {
      for (const gfn of gfns) {
        if (this.totPagesCount + 1 > this.maxPagesCount) {
          this.xenPrint(`d${this.domid} Over-allocation for d${this.domid}: ${this.totPagesCount + 1} > ${this.maxPagesCount}`);
          break;
        }
        const page = pages[done];
        if (page === undefined) {
          this.xenPrint(`d${this.domid} Could not allocate order=0 extent: id=${this.domid} memflags=0 (${done} of ${gfns.length})`);
          break;
        }
        if (gfn > BigInt(SIM_MAX_GFN)) break;
        if (gfn >= BigInt(this.ramPages) && this.high.length > MAX_HIGH_EXTENTS - 2) break; // the simulator's extent table is full
        const bytes = this.pageBytes(page);
        if (this.scrubPages) bytes.fill(0);
        else bytes.fill(0xa5);
        const old = this.frameEntry(Number(gfn));
        if (old.page >= 0) this.orphanedPages++; // the old page stays the domain's, unmapped
        if (old.type === HvmMemType.IOREQ_SERVER) this.ioreqEntries--;
        this.setFrame(Number(gfn), page);
        this.totPagesCount++;
        changed = true;
        done++;
      }
    } finally {
      this.releasePages(pages.slice(done));
      if (changed) this.publish(() => this.publishExtents());
    }
    return done;
  }

  /**
   * DMOP relocate_memory: moves `size` frames from `srcGfn` to `dstGfn`. See the module notes.
   * @throws EINVAL at the first source frame without a page or destination beyond {@link SIM_MAX_GFN}
   *   (earlier frames stay moved); ENOMEM when the simulator's extent table is full
   */
  relocateMemory(srcGfn: bigint, dstGfn: bigint, size: number): void {
    this.enter();
    u64Arg('srcGfn', srcGfn);
    u64Arg('dstGfn', dstGfn);
    const count = u32Arg('size', size);
    let changed = false;
    try {
      for (let i = 0; i < count; i++) {
        const src = srcGfn + BigInt(i);
        const dst = dstGfn + BigInt(i);
        const from = src <= BigInt(SIM_MAX_GFN) ? this.frameEntry(Number(src)) : { type: HvmMemType.MMIO_DM, page: -1 };
        if (from.page < 0) throw new MdevError('EINVAL', `frame ${hex(src)} has no page to relocate (${i} of ${count} moved)`, 'srcGfn');
        if (dst > BigInt(SIM_MAX_GFN)) throw new MdevError('EINVAL', `frame ${hex(dst)} is beyond the p2m (${i} of ${count} moved)`, 'dstGfn');
        if (src === dst) continue;
        const to = this.frameEntry(Number(dst));
        // Taking a page out of an extent may split it, putting one in may start another.
        if (this.high.length > MAX_HIGH_EXTENTS - 2 && (dst >= BigInt(this.ramPages) || src >= BigInt(this.ramPages))) {
          throw new MdevError('ENOMEM', `the simulator's table of ${MAX_HIGH_EXTENTS} page extents beyond guest RAM is full`, 'dstGfn');
        }
        if (to.page >= 0) {
          // Normal domain memory at the destination is freed.
          if (to.type === HvmMemType.IOREQ_SERVER) this.ioreqEntries--;
          this.clearFrame(Number(dst));
          this.releasePages([to.page]);
          this.totPagesCount--;
        } else if (to.type === HvmMemType.IOREQ_SERVER) {
          this.ioreqEntries--;
        }
        if (from.type === HvmMemType.IOREQ_SERVER) this.ioreqEntries--;
        this.clearFrame(Number(src));
        this.setFrame(Number(dst), from.page);
        changed = true;
      }
    } finally {
      if (changed) {
        this.publish(() => this.publishExtents());
        this.requestMapcacheInvalidate();
      }
    }
  }

  /**
   * DMOP pin_memory_cacheattr: pins caching type `type` on frames `[start, end]`. See the module
   * notes for the errors.
   */
  pinMemoryCacheattr(start: bigint, end: bigint, type: MemCacheType): void {
    this.enter();
    u64Arg('start', start);
    u64Arg('end', end);
    if (end < start || (start | end) >> BigInt(SIM_PADDR_BITS) !== 0n) {
      throw new MdevError('EINVAL', `[${hex(start)}, ${hex(end)}] is empty or beyond the host's ${SIM_PADDR_BITS} address bits`, 'end');
    }
    if (type === 'delete') {
      const i = this.pinned.findIndex((r) => r.start === start && r.end === end);
      if (i < 0) throw new MdevError('ENOENT', `no range [${hex(start)}, ${hex(end)}] is pinned`, 'start');
      this.pinned.splice(i, 1);
      return;
    }
    if (typeof type !== 'string' || !['uc', 'wc', 'wt', 'wp', 'wb', 'ucm'].includes(type)) {
      throw new MdevError('EINVAL', `must be 'uc', 'wc', 'wt', 'wp', 'wb', 'ucm' or 'delete', got ${describe(type)}`, 'type');
    }
    const same = this.pinned.findIndex((r) => r.start === start && r.end === end);
    if (same >= 0) {
      this.pinned[same] = { start, end, type };
      return;
    }
    const other = this.pinned.find((r) => r.start <= end && start <= r.end);
    if (other !== undefined) throw new MdevError('EBUSY', `[${hex(start)}, ${hex(end)}] overlaps the pinned range [${hex(other.start)}, ${hex(other.end)}]`, 'start');
    if (this.pinned.length >= MAX_PINNED_CACHEATTRS) throw new MdevError('ENOSPC', `${MAX_PINNED_CACHEATTRS} ranges are pinned already`, 'start');
    this.pinned.push({ start, end, type });
  }

  /** The pinned cache attribute ranges, in the order they were pinned. */
  get pinnedCacheattrs(): readonly SimPinnedCacheattr[] {
    return [...this.pinned];
  }

  /**
   * The page behind each frame, for the host's foreign mappings (which map pages, so they stay
   * valid when relocate_memory moves them): page numbers, -1 for a frame without one.
   */
  pagesOf(gfns: readonly bigint[]): number[] {
    this.enter();
    return gfns.map((gfn) => (gfn >= 0n && gfn <= BigInt(SIM_MAX_GFN) ? this.frameEntry(Number(gfn)).page : -1));
  }

  /** The memfd and offset of page `page` (see {@link pagesOf}). */
  pageFile(page: number): { fd: number; offset: number } {
    this.enter();
    const loc = pageLocation(page, this.ramPages);
    return { fd: loc.pool === 0 ? this.ramFd : this.extraFd, offset: loc.offset };
  }

  /**
   * Reads guest memory through the p2m, as the toolstack would (no ioreqs, nothing logged):
   * frames without a page read as all-ones.
   */
  readGuest(gpa: bigint | number, length: number): Uint8Array {
    this.enter();
    const out = new Uint8Array(length);
    this.walkGuest(gpa, length, (bytes, at, n) => (bytes === null ? out.fill(0xff, at, at + n) : out.set(bytes, at)));
    return out;
  }

  /** Writes guest memory through the p2m, as the toolstack would; writes to frames without a page vanish. */
  writeGuest(gpa: bigint | number, data: Uint8Array): void {
    this.enter();
    this.walkGuest(gpa, data.length, (bytes, at) => bytes?.set(data.subarray(at, at + bytes.length)));
  }

  private walkGuest(gpa: bigint | number, length: number, visit: (bytes: Uint8Array | null, at: number, n: number) => void): void {
    const start = typeof gpa === 'bigint' ? gpa : BigInt(gpa);
    if (start < 0n || !Number.isSafeInteger(length) || length < 0) throw new MdevError('EINVAL', 'bad range', 'gpa');
    let done = 0;
    while (done < length) {
      const at = start + BigInt(done);
      const gfn = at / BigInt(XEN_PAGE_SIZE);
      const off = Number(at % BigInt(XEN_PAGE_SIZE));
      const n = Math.min(length - done, XEN_PAGE_SIZE - off);
      const page = gfn <= BigInt(SIM_MAX_GFN) ? this.frameEntry(Number(gfn)).page : -1;
      visit(page < 0 ? null : this.pageBytes(page).subarray(off, off + n), done, n);
      done += n;
    }
  }

  // ---- the p2m, pages and extents ----------------------------------------------------------------

  private lowType(pfn: number): number {
    return p2mType(Atomics.load(this.p2m, pfn));
  }

  private setLowType(pfn: number, type: number): void {
    Atomics.store(this.p2m, pfn, p2mEntry(type, p2mPage(Atomics.load(this.p2m, pfn))));
  }

  /** The page of a frame beyond guest RAM, or -1. */
  private highPage(gfn: number): number {
    const e = this.findHigh(gfn);
    return e === null ? -1 : e.page + (gfn - e.first);
  }

  private findHigh(gfn: number): HighExtent | null {
    let lo = 0;
    let hi = this.high.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const e = this.high[mid]!;
      if (gfn < e.first) hi = mid - 1;
      else if (gfn >= e.first + e.nr) lo = mid + 1;
      else return e;
    }
    return null;
  }

  /** Type and page of any frame below {@link SIM_MAX_GFN}. */
  private frameEntry(gfn: number): { type: number; page: number } {
    if (gfn < this.ramPages) {
      const e = Atomics.load(this.p2m, gfn);
      return { type: p2mType(e), page: p2mPage(e) };
    }
    const page = this.highPage(gfn);
    return { type: page >= 0 ? HvmMemType.RAM_RW : HvmMemType.MMIO_DM, page };
  }

  /** True when the frame has a page and is ram_rw (what track_dirty_vram looks at). */
  private isRamRw(gfn: bigint): boolean {
    if (gfn > BigInt(SIM_MAX_GFN)) return false;
    const e = this.frameEntry(Number(gfn));
    return e.page >= 0 && e.type === HvmMemType.RAM_RW;
  }

  /** Puts `page` at frame `gfn` as ram_rw (a new p2m entry: not write-protected for logging). */
  private setFrame(gfn: number, page: number): void {
    this.disarm(gfn);
    if (gfn < this.ramPages) {
      Atomics.store(this.p2m, gfn, p2mEntry(HvmMemType.RAM_RW, page));
      return;
    }
    const existing = this.findHigh(gfn);
    if (existing !== null) this.removeHigh(gfn);
    // Join a neighbour when both gfn and page continue it.
    const i = this.high.findIndex((e) => e.first > gfn);
    const at = i < 0 ? this.high.length : i;
    const before = this.high[at - 1];
    const after = this.high[at];
    if (before !== undefined && before.first + before.nr === gfn && before.page + before.nr === page) {
      before.nr++;
      if (after !== undefined && after.first === gfn + 1 && after.page === page + 1) {
        before.nr += after.nr;
        this.high.splice(at, 1);
      }
    } else if (after !== undefined && after.first === gfn + 1 && after.page === page + 1) {
      after.first--;
      after.page--;
      after.nr++;
    } else {
      if (this.high.length >= MAX_HIGH_EXTENTS) throw new MdevError('ENOMEM', `the simulator's table of ${MAX_HIGH_EXTENTS} page extents beyond guest RAM is full`, 'gfn');
      this.high.splice(at, 0, { first: gfn, nr: 1, page });
    }
  }

  /** Makes frame `gfn` a hole (no page; reads as mmio_dm). */
  private clearFrame(gfn: number): void {
    this.disarm(gfn);
    if (gfn < this.ramPages) Atomics.store(this.p2m, gfn, p2mEntry(HvmMemType.MMIO_DM, -1));
    else this.removeHigh(gfn);
  }

  private removeHigh(gfn: number): void {
    const e = this.findHigh(gfn);
    if (e === null) return;
    const i = this.high.indexOf(e);
    const k = gfn - e.first;
    const parts: HighExtent[] = [];
    if (k > 0) parts.push({ first: e.first, nr: k, page: e.page });
    if (k + 1 < e.nr) parts.push({ first: gfn + 1, nr: e.nr - k - 1, page: e.page + k + 1 });
    this.high.splice(i, 1, ...parts);
  }

  /** The bytes of page `page` in the hypervisor's mapping of its pool. */
  private pageBytes(page: number): Uint8Array {
    const loc = pageLocation(page, this.ramPages);
    return (loc.pool === 0 ? this.ram : this.extra).subarray(loc.offset, loc.offset + XEN_PAGE_SIZE);
  }

  /** Takes up to `n` free pages, as few runs as possible (first fit, then pieces). */
  private takePages(n: number): number[] {
    const out: number[] = [];
    const fit = this.freePages.findIndex(([a, b]) => b - a >= n);
    const order = fit >= 0 ? [fit] : [...this.freePages.keys()];
    for (const i of order) {
      const run = this.freePages[i]!;
      while (out.length < n && run[0] < run[1]) out.push(run[0]++);
      if (out.length >= n) break;
    }
    this.freePages = this.freePages.filter(([a, b]) => a < b);
    return out;
  }

  /** Returns pages to the free runs (merging neighbours in the same pool). */
  private releasePages(pages: readonly number[]): void {
    for (const page of pages) {
      const i = this.freePages.findIndex(([a]) => a > page);
      const at = i < 0 ? this.freePages.length : i;
      const before = this.freePages[at - 1];
      const after = this.freePages[at];
      const samePool = (x: number, y: number) => (x < this.ramPages) === (y < this.ramPages);
      if (before !== undefined && before[1] === page && samePool(before[0], page)) {
        before[1]++;
        if (after !== undefined && after[0] === page + 1 && samePool(after[0], page)) {
          before[1] = after[1];
          this.freePages.splice(at, 1);
        }
      } else if (after !== undefined && after[0] === page + 1 && samePool(after[0], page)) {
        after[0]--;
      } else {
        this.freePages.splice(at, 0, [page, page + 1]);
      }
    }
  }

  /** The highest frame with a page (Xen's domain_get_maximum_gpfn). */
  private maxGpfn(): number {
    const last = this.high[this.high.length - 1];
    return last === undefined ? this.ramPages - 1 : Math.max(this.ramPages - 1, last.first + last.nr - 1);
  }

  /** Whether frame `gfn` is write-protected for track_dirty_vram. */
  private armed(gfn: number): boolean {
    const v = this.vram;
    if (v === null || BigInt(gfn) < v.first || BigInt(gfn) >= v.first + BigInt(v.nr)) return false;
    const i = gfn - Number(v.first);
    return (Atomics.load(this.vramArmed, i >>> 5) & (1 << (i & 31))) !== 0;
  }

  /** Ends track_dirty_vram's write-protection of frame `gfn` (its p2m entry changed). */
  private disarm(gfn: number): void {
    const v = this.vram;
    if (v === null || BigInt(gfn) < v.first || BigInt(gfn) >= v.first + BigInt(v.nr)) return;
    const i = gfn - Number(v.first);
    Atomics.and(this.vramArmed, i >>> 5, ~(1 << (i & 31)));
  }

  /** Every vCPU sends IOREQ_TYPE_INVALIDATE before its next access (pages left the p2m). */
  private requestMapcacheInvalidate(): void {
    for (let v = 0; v < this.nrVcpus; v++) Atomics.store(this.ctl, invalidateIndex(this.nrVcpus, v), 1);
  }

  private publishExtents(): void {
    this.high.forEach((e, i) => {
      Atomics.store(this.extentWords, extentIndex(i), BigInt(e.first));
      Atomics.store(this.extentWords, extentIndex(i) + 1, (BigInt(e.nr) << 32n) | BigInt(e.page));
    });
    Atomics.store(this.ctl, Ctl.nrExtents, this.high.length);
  }

  // ---------------------------------------------------------------------------------------------
  // Interrupts

  /**
   * DMOP set_pci_intx_level: drives INTx pin `intx` (0 = INTA) of device `device` on bus 0. The
   * pin feeds GSI ((device * 4 + device / 8 + intx) mod 32) + 16 (Xen's hvm_pci_intx_gsi); a GSI
   * going from low to high is a rising edge, delivered to vCPU 0. Asserting an asserted pin (or
   * deasserting a deasserted one) changes nothing. PCI-ISA link routing is not modelled (the
   * simulator's links are unrouted, as before the guest firmware programs them).
   * @throws EINVAL unless segment and bus are 0, device <= 31 and intx <= 3
   */
  setPciIntxLevel(segment: number, bus: number, device: number, intx: number, level: boolean): void {
    this.enter();
    if (segment !== 0 || bus !== 0 || !Number.isInteger(device) || device < 0 || device > 0x1f || !Number.isInteger(intx) || intx < 0 || intx > 3) {
      throw new MdevError('EINVAL', `no such INTx pin: ${describe(segment)}:${describe(bus)}:${describe(device)} INT${describe(intx)}`, 'device');
    }
    if (typeof level !== 'boolean') throw new MdevError('EINVAL', `must be a boolean, got ${describe(level)}`, 'level');
    const gsi = pciIntxGsi(device, intx);
    this.logInterrupt({ kind: 'pci-intx', device, intx, level, gsi });
    const pin = device * 4 + intx;
    if (this.pciIntx[pin] === (level ? 1 : 0)) return;
    this.pciIntx[pin] = level ? 1 : 0;
    this.driveGsi(gsi, level);
  }

  /**
   * DMOP set_isa_irq_level: drives ISA IRQ `irq` (GSI `irq`, IRQ 0 on GSI 2), as
   * {@link setPciIntxLevel} drives a PCI pin.
   * @throws EINVAL when irq > 15
   */
  setIsaIrqLevel(irq: number, level: boolean): void {
    this.enter();
    if (!Number.isInteger(irq) || irq < 0 || irq > 15) throw new MdevError('EINVAL', `must be an ISA IRQ in [0, 15], got ${describe(irq)}`, 'irq');
    if (typeof level !== 'boolean') throw new MdevError('EINVAL', `must be a boolean, got ${describe(level)}`, 'level');
    const gsi = isaIrqGsi(irq);
    this.logInterrupt({ kind: 'isa-irq', irq, level, gsi });
    if (this.isaIrq[irq] === (level ? 1 : 0)) return;
    this.isaIrq[irq] = level ? 1 : 0;
    this.driveGsi(gsi, level);
  }

  /**
   * DMOP inject_msi. Decoded as Xen does: destination ID address bits 19:12, destination mode bit 2,
   * vector data bits 7:0, delivery mode bits 10:8. The simulated local APICs have Xen's IDs (vCPU n
   * has APIC ID 2n) and no logical ID (no guest OS programs them), so physical destination mode
   * reaches the vCPU with that APIC ID (or all, for 0xff) and logical mode reaches none. Vector 0
   * is an emulated PIRQ (its number in address bits 63:40 and the destination ID); its event
   * channel delivery is not modelled, it is counted and wakes vCPU 0.
   * @throws ERANGE for vector 0 without a PIRQ; ESRCH for lowest-priority delivery that matches no
   *   vCPU; EINVAL for delivery modes other than fixed and lowest priority
   */
  injectMsi(address: bigint, data: number): void {
    this.enter();
    u64Arg('address', address);
    const d = u32Arg('data', data);
    const low = Number(address & 0xffffffffn);
    const dest = (low >>> 12) & 0xff;
    const logical = ((low >>> 2) & 1) === 1;
    const deliveryMode = (d >>> 8) & 7;
    const vector = d & 0xff;
    if (vector === 0) {
      const pirq = (Number((address >> 32n) & 0xffffff00n) | dest) | 0;
      if (pirq <= 0) throw new MdevError('ERANGE', `vector 0 without a PIRQ (address ${hex(address)})`, 'data');
      this.logInterrupt({ kind: 'pirq', address, data: d, pirq });
      Atomics.add(this.irq, Irq.pirq, 1);
      this.deliver([0]);
      return;
    }
    const matching: number[] = [];
    for (let v = 0; v < this.nrVcpus; v++) if (!logical && (dest === 0xff || dest === 2 * v)) matching.push(v);
    let targets: number[];
    if (deliveryMode === MSI_DELIVERY_FIXED) {
      targets = matching;
    } else if (deliveryMode === MSI_DELIVERY_LOWEST_PRIORITY) {
      if (matching.length === 0) throw new MdevError('ESRCH', `no vCPU matches destination ${dest} (${logical ? 'logical' : 'physical'})`, 'address');
      // All simulated vCPUs have the same priority: rotate among the matching ones.
      const pick = matching.find((v) => v >= this.lowestPrioNext) ?? matching[0]!;
      this.lowestPrioNext = pick + 1;
      targets = [pick];
    } else {
      throw new MdevError('EINVAL', `unsupported MSI delivery mode ${deliveryMode}`, 'data');
    }
    this.logInterrupt({ kind: 'msi', address, data: d, vector, vcpus: targets });
    for (let i = 0; i < targets.length; i++) Atomics.add(this.irq, Irq.msi + vector, 1);
    this.deliver(targets);
  }

  private logInterrupt(e: SimInterruptEvent): void {
    this.interruptEvents.push(e);
    this.trimLog(this.interruptEvents, 'interrupts');
  }

  /** The most recent interrupt operations (at most {@link SIM_LOG_LIMIT}), oldest first. */
  get interruptLog(): readonly SimInterruptEvent[] {
    this.trimLog(this.interruptEvents, 'interrupts');
    return this.interruptEvents;
  }

  // ---------------------------------------------------------------------------------------------
  // Routing and vCPUs

  /**
   * The server an access would reach now, or null when Xen would complete it itself (all-ones
   * reads, dropped writes). Port accesses to 0xcfc-0xcff follow the guest's 0xcf8 latch.
   * @param space 'pio' (addr = port), 'mmio' (guest physical address), 'pci' (SBDF << 32 | register)
   * @param size access size in bytes (the whole access must lie in one range)
   * @param count repetitions of a string instruction (memory accesses cover all of them)
   * @param df direction flag of a string instruction
   */
  route(space: SimSpace, addr: bigint, size = 1, count = 1, df = false): number | null {
    this.enter();
    if (space !== 'pio' && space !== 'mmio' && space !== 'pci') throw new MdevError('EINVAL', `unknown space ${describe(space)}`, 'space');
    u64Arg('addr', addr);
    intArg('size', size, 1, 8);
    intArg('count', count, 1, 0xffffffff);
    const servers: (RoutableServer | undefined)[] = this.servers;
    const route = selectServer(servers, { space, addr, size, count, df }, Atomics.load(this.ctl, Ctl.cf8));
    return route === null ? null : route.id;
  }

  /**
   * What a thread needs to run vCPU `index` ({@link SimVcpu}); plain data, pass it in `workerData`.
   * @throws EINVAL when index is not a vCPU of the domain
   */
  vcpuDescriptor(index: number): SimVcpuDescriptor {
    this.enter();
    intArg('index', index, 0, this.nrVcpus - 1);
    return {
      layout: SIM_LAYOUT_VERSION,
      domid: this.domid,
      index,
      nrVcpus: this.nrVcpus,
      ramBytes: this.ramBytes,
      ramFd: this.ramFd,
      extraBytes: this.extraBytes,
      extraFd: this.extraFd,
      extents: this.extentsBuffer,
      ctl: this.ctlBuffer,
      ranges: this.rangesBuffer,
      p2m: this.p2mBuffer,
      irq: this.irqBuffer,
      irqEventFd: this.irqEventFds[index]!,
      vramArmed: this.vramArmedBuffer,
      logDirty: this.logDirtyBitmap.buffer!,
      timeoutMs: this.vcpuTimeoutMs,
    };
  }

  /**
   * Destroys the domain: every server, event channel and fd. Stop the vCPU threads first: their
   * fds close here. Idempotent; afterwards every operation is ESRCH.
   */
  close(): void {
    if (this.closed) return;
    for (let id = 0; id < MAX_IOREQ_SERVERS; id++) if (this.servers[id] !== undefined) this.destroyIoreqServer(id);
    this.closed = true;
    for (const z of this.zombies) for (const fd of z.fds) closeFd(fd);
    this.zombies = [];
    for (const fd of this.irqEventFds) closeFd(fd);
    munmap(this.ramMapping);
    closeFd(this.ramFd);
    if (this.extraMapping !== null) munmap(this.extraMapping);
    if (this.extraFd >= 0) closeFd(this.extraFd);
  }

  // ---------------------------------------------------------------------------------------------

  /** Every operation starts here: the domain must exist, and destroyed servers' fds are reclaimed. */
  private enter(): void {
    if (this.closed) throw new MdevError('ESRCH', `domain ${this.domid} has been destroyed`);
    this.reap();
  }

  /** Closes the fds of destroyed servers once no vCPU is inside their slot. */
  private reap(): void {
    if (this.zombies.length === 0) return;
    this.zombies = this.zombies.filter((z) => {
      if (Atomics.load(this.ctl, slotIndex(this.nrVcpus, z.id, Slot.inUse)) !== 0) return true;
      for (const fd of z.fds) closeFd(fd);
      return false;
    });
  }

  private server(id: number): ServerState {
    if (!Number.isInteger(id) || id < 0 || id > 0xffff) throw new MdevError('EINVAL', `must be an ioservid_t, got ${describe(id)}`, 'id');
    const s = id < MAX_IOREQ_SERVERS ? this.servers[id] : undefined;
    if (s === undefined) throw new MdevError('ENOENT', `no ioreq server ${id} in d${this.domid}`, 'id');
    return s;
  }

  private allocatePort(serverId: number, guestToServer: number, serverToGuest: number | null): number {
    let port = 1;
    while (this.ports.has(port)) port++;
    this.ports.set(port, { port, serial: ++this.portSerial, serverId, guestToServer, serverToGuest, bound: false });
    return port;
  }

  private driveGsi(gsi: number, level: boolean): void {
    const index = Irq.gsiLevel + gsi;
    if (level) {
      if (Atomics.add(this.irq, index, 1) === 0) {
        Atomics.add(this.irq, Irq.gsiEdges + gsi, 1);
        this.deliver([0]);
      }
    } else if (Atomics.load(this.irq, index) > 0) {
      Atomics.sub(this.irq, index, 1);
    }
  }

  private deliver(vcpus: readonly number[]): void {
    for (const v of vcpus) {
      Atomics.add(this.irq, Irq.vcpuDelivered + v, 1);
      eventfdWrite(this.irqEventFds[v]!);
    }
    Atomics.add(this.irq, Irq.generation, 1);
    Atomics.notify(this.irq, Irq.generation);
  }

  /** Runs `write` under the configuration sequence lock. */
  private publish(write: () => void): void {
    Atomics.add(this.ctl, Ctl.seq, 1);
    try {
      write();
    } finally {
      Atomics.add(this.ctl, Ctl.seq, 1);
      Atomics.notify(this.ctl, Ctl.seq);
    }
  }

  private publishGlobals(): void {
    Atomics.store(this.ctl, Ctl.claimId, this.claim === null ? -1 : this.claim.id);
    Atomics.store(this.ctl, Ctl.claimFlags, this.claim === null ? 0 : this.claim.flags);
    const first = this.vram?.first ?? 0n;
    Atomics.store(this.ctl, Ctl.vramFirstLo, Number(first & 0xffffffffn) | 0);
    Atomics.store(this.ctl, Ctl.vramFirstHi, Number(first >> 32n) | 0);
    Atomics.store(this.ctl, Ctl.vramNr, this.vram?.nr ?? 0);
    Atomics.store(this.ctl, Ctl.logDirty, this.logDirtyOn ? 1 : 0);
  }

  private publishServer(id: number): void {
    const s = this.servers[id];
    const at = (word: number): number => slotIndex(this.nrVcpus, id, word);
    Atomics.store(this.ctl, at(Slot.alive), s === undefined ? 0 : 1);
    Atomics.store(this.ctl, at(Slot.enabled), s?.enabled === true ? 1 : 0);
    Atomics.store(this.ctl, at(Slot.bufMode), s?.bufMode ?? BufioreqMode.OFF);
    Atomics.store(this.ctl, at(Slot.ioreqFd), s?.ioreqFd ?? -1);
    Atomics.store(this.ctl, at(Slot.bufFd), s?.bufFd ?? -1);
    Atomics.store(this.ctl, at(Slot.bufEvtFd), s?.bufEvtFd ?? -1);
    for (let v = 0; v < this.nrVcpus; v++) {
      Atomics.store(this.ctl, at(Slot.vcpus + 3 * v), s?.guestToServer[v] ?? -1);
      Atomics.store(this.ctl, at(Slot.vcpus + 3 * v + 1), s?.serverToGuest[v] ?? -1);
      Atomics.store(this.ctl, at(Slot.vcpus + 3 * v + 2), s?.ports[v] ?? 0);
    }
    for (let type = 0; type < NR_RANGE_TYPES; type++) {
      let i = 0;
      if (s !== undefined) {
        for (const [start, end] of s.ranges[type]!.pairs()) {
          Atomics.store(this.rangeWords, rangeIndex(id, type, i), start);
          Atomics.store(this.rangeWords, rangeIndex(id, type, i) + 1, end);
          i++;
        }
      }
      Atomics.store(this.ctl, at(Slot.nrRanges + type), i);
    }
  }
}

/** Xen's allow_p2m_type_change() over the HVMMEM types the simulator's p2m holds. */
function typeChangeAllowed(old: number, next: number): boolean {
  if (next === HvmMemType.IOREQ_SERVER) return old === HvmMemType.RAM_RW;
  if (old === HvmMemType.IOREQ_SERVER) return next === HvmMemType.RAM_RW;
  const isRam = old === HvmMemType.RAM_RW || old === HvmMemType.RAM_RO;
  return isRam || (old === HvmMemType.MMIO_DM && next === HvmMemType.MMIO_DM);
}

function rangeType(kind: IoRangeKind): number {
  const type = typeof kind === 'string' ? RANGE_TYPES[kind] : undefined;
  if (type === undefined) throw new MdevError('EINVAL', `must be 'port', 'memory' or 'pci', got ${describe(kind)}`, 'kind');
  return type;
}

/** A zeroed memfd of `size` bytes, sealed against resizing (a peer's mapping can never SIGBUS). */
function sealedMemfd(name: string, size: number): number {
  const fd = memfdCreate(name, { allowSealing: true });
  try {
    ftruncate(fd, size);
    addSeals(fd, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  return fd;
}

function intArg(field: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new MdevError('EINVAL', `must be an integer in [${min}, ${max}], got ${describe(value)}`, field);
  }
  return value;
}

function u32Arg(field: string, value: unknown): number {
  return intArg(field, value, 0, 0xffffffff);
}

function u64Arg(field: string, value: unknown): bigint {
  if (typeof value !== 'bigint' || value < 0n || value > U64_MAX) {
    throw new MdevError('EINVAL', `must be a bigint in [0, 2^64), got ${describe(value)}`, field);
  }
  return value;
}

function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}
