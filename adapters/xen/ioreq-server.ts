/**
 * The Xen adapter: serves one PciDevice as an IOREQ server over a {@link XenHost} — the real
 * hypervisor through privcmd/evtchn, or the simulator. The hot path (taking ioreqs off the shared
 * page and dispatching them through the region table) is the native IoreqEngine; this file is the
 * lifecycle, BAR placement, interrupts, guest memory, write-watch and the slow path.
 *
 * BARs whose region is all mappable RAM (a display's VRAM) are not trapped: they are guest RAM.
 * At start, while the host's handles are still privileged, the server raises the domain's page
 * limit and populates the pages at a parking range; it restricts the handles, maps the pages for
 * itself and moves the region's bytes there ({@link Region.replaceBacking}), so the device reads
 * and writes the guest's pages. When the guest places the BAR (memory decoding on), the pages
 * move to its address (relocate_memory, write-combining pinned); when it moves it or turns
 * decoding off, they move again or back to parking. track_dirty_vram follows the lowest such BAR,
 * so a display learns which pages the guest drew into ({@link IoreqServer.collectVramDirty}).
 * @module
 */
import { MdevError, isErrno } from '../../src/errors.js';
import type { IrqSink, MsiMessage } from '../../src/irq.js';
import { binding } from '../../src/native/binding.js';
import { DirtyBitmap } from '../../src/native/dirty-bitmap.js';
import { PCI_COMMAND, PCI } from '../../src/pci/constants.js';
import type { BarRemapEvent, PciDevice } from '../../src/pci/device.js';
import { createRegionTable, errnoFromError, regionSegments, type NativeRegionTable } from '../../src/region-table.js';
import type { RamBacking } from '../../src/regions.js';
import type { WatchHandle, WriteWatch, WriteWatchHandler, WriteWatchMode } from '../../src/write-watch.js';
import { MAX_DOMAIN_PAGES } from './abi.js';
import { XenGuestMemory } from './guest-memory.js';
import type { BufioreqModeName, EventBinding, ForeignMapping, IoreqPages, XenHost } from './host.js';
import { HvmMemType, IoreqMemAccess, IoreqType, XEN_PAGE_SIZE, pciSbdf } from './ioreq-abi.js';

/** A PCI address. */
export interface PciAddress {
  /** PCI segment (domain). */
  segment: number;
  /** Bus number. */
  bus: number;
  /** Device number (0-31). */
  device: number;
  /** Function number (0-7). */
  fn: number;
}

/** Options of an {@link IoreqServer}. */
export interface IoreqServerOptions {
  /** Buffered ioreq ring mode (default 'atomic'). */
  bufioreq?: BufioreqModeName;
  /** The device's PCI address; its config space is claimed by SBDF. Null: no config access (PVH fixed placement). */
  pci?: PciAddress | null;
  /** Fixed BAR placement (PVH guests without PCI config access): BAR index → address. */
  fixedBars?: Readonly<Record<number, bigint>>;
  /** Claim ports 0xCF8-0xCFB and answer reads of the 0xCF8 latch (PVH guests using conf1). */
  claimConfigLatch?: boolean;
  /**
   * How BARs whose region is all mappable RAM (VRAM) are served. `'ram'` (default): as guest RAM
   * at the BAR's address, never trapped (see the module notes; the host's handles must still be
   * privileged at start). `'trap'`: through ioreqs like any other BAR, every guest access a round
   * trip.
   */
  ramBars?: 'ram' | 'trap';
  /**
   * Guest-physical address (page aligned) of the parking range: where the RAM BARs' pages are
   * populated and live while their BAR does not decode. It must lie outside guest RAM and every
   * BAR window. Default {@link DEFAULT_RAM_BAR_PARKING} plus 1 GiB for each devfn (device · 8 +
   * function of `pci`), so servers of different devices in one domain never share one. The RAM
   * BARs follow each other from there, each aligned to its size.
   */
  ramBarParking?: bigint;
  /**
   * Restrict the host's handles to the domain once the privileged steps are done (default true):
   * privcmd then refuses raw hypercalls and other domains, as a deprivileged device model should.
   */
  restrict?: boolean;
  /**
   * Serve ioreqs that need no JS on an I/O thread of the engine's own (default true): it blocks in
   * poll() on the event channels and serves native registers and shared RAM, handing the engine
   * back to the event loop at the first ioreq that needs JS. Device code that changes register
   * state outside access handlers must then run inside {@link PciDevice.exclusive}.
   */
  ioThread?: boolean;
  /**
   * While ioreqs that need JS keep the event loop busy and the loop has nothing else to do, serve
   * them in a blocking poll() on the event channels on the JS thread (the floor's three system
   * calls per ioreq instead of the loop's four). A sentinel thread hands the JS thread back to the
   * loop as soon as any other handle has an event or a timer is due (default true).
   */
  blockingServe?: boolean;
  /** Log lines (default: none). */
  log?: (line: string) => void;
}

/**
 * The default parking range of RAM BARs: 64 GiB, far above the RAM of the guests this serves and
 * below the 40-bit physical address width of QEMU's emulated CPUs. Each devfn gets the 1 GiB above
 * `DEFAULT_RAM_BAR_PARKING + devfn GiB`.
 */
export const DEFAULT_RAM_BAR_PARKING = 0x10_0000_0000n;

/** Bytes of parking space each devfn gets by default (its RAM BARs together must fit). */
export const RAM_BAR_PARKING_STRIDE = 0x4000_0000n;

/** Where a RAM BAR's pages are. */
export interface RamBarPlacement {
  /** The BAR index. */
  readonly index: number;
  /** Pages (4 KiB) of the BAR. */
  readonly pages: number;
  /** First gfn of its parking range. */
  readonly parkingGfn: bigint;
  /** First gfn of its pages now: the parking range, or the BAR's address >> 12 while it decodes. */
  readonly gfn: bigint;
  /** True while the pages are at the BAR's address. */
  readonly placed: boolean;
}

/** A RAM BAR the server serves as guest RAM. */
interface RamBar {
  readonly index: number;
  readonly pages: number;
  readonly parking: bigint;
  gfn: bigint;
  placed: boolean;
  /** The foreign mapping of its pages (valid wherever they move). */
  mapping: ForeignMapping | null;
  /** The device's own backing, put back at stop. */
  previous: RamBacking | null;
  /** The range pinned write-combining, or null. */
  pinned: { start: bigint; end: bigint } | null;
}

/** One ioreq as the native engine hands it to the slow path. */
interface SlowIoreq {
  vcpu: number;
  type: number;
  addr: bigint;
  data: bigint;
  count: number;
  size: number;
  read: boolean;
  dataIsPtr: boolean;
  df: boolean;
}

interface NativeEngine {
  start(): void;
  stop(): void;
  setRanges(ranges: { kind: 'pio' | 'mmio'; start: bigint; end: bigint; region: number; offset: number }[]): void;
  setPciDevice(sbdf: number, configSize: number): void;
  poll(): void;
  setBusyPoll(on: boolean): void;
  stats(): Record<string, number>;
}

const IoreqEngineClass = binding['IoreqEngine'] as new (options: {
  sync: Uint8Array;
  nrVcpus: number;
  buffered: Uint8Array | null;
  atomicBuffered: boolean;
  events: EventBinding;
  regionTable: NativeRegionTable;
  onIoreq: (req: SlowIoreq) => bigint | number | undefined;
  onBadIoreq: (what: string, errno: number) => void;
  ioThread: boolean;
  blockingServe: boolean;
}) => NativeEngine;

const CONFIG_LATCH_PORT = 0xcf8n;
/** Repetitions Xen puts in one rep string ioreq at most (hvmemul_linear_to_phys clips to 4096). */
const MAX_REPS = 4096;
/** One past the highest address. */
const U64_LIMIT = 1n << 64n;

/**
 * Write-watch by write-protection (HVMMEM_ioreq_server): the server claims the memory type, watched
 * frames become `ioreq_server` pages, and guest writes to them trap synchronously as COPY ioreqs,
 * which the server performs on guest memory before calling the handlers.
 */
export class TrappedWriteWatch implements WriteWatch {
  readonly mode: WriteWatchMode = 'trap';
  /** Writes reported to handlers so far. */
  events = 0;
  /** Watched frames → handlers. */
  readonly frames = new Map<number, Set<WriteWatchHandler>>();
  private claimed = false;

  /**
   * Creates the watch for one server (the claim is made on the first watch).
   * @param server the IOREQ server whose id claims the pages
   */
  constructor(private readonly server: IoreqServer) {}

  watch(gpa: number, length: number, handler: WriteWatchHandler): WatchHandle {
    if (!Number.isSafeInteger(gpa) || gpa < 0 || !Number.isSafeInteger(length) || length <= 0) {
      throw new MdevError('EINVAL', `bad range [${gpa}, +${length})`, 'gpa');
    }
    const host = this.server.host;
    if (!this.claimed) {
      host.mapMemTypeToIoreqServer(this.server.id, HvmMemType.IOREQ_SERVER, IoreqMemAccess.WRITE);
      this.claimed = true;
    }
    const first = Math.floor(gpa / XEN_PAGE_SIZE);
    const last = Math.floor((gpa + length - 1) / XEN_PAGE_SIZE);
    const fresh: number[] = [];
    for (let f = first; f <= last; f++) {
      let set = this.frames.get(f);
      if (!set) {
        set = new Set();
        this.frames.set(f, set);
        fresh.push(f);
      }
      set.add(handler);
    }
    for (const f of fresh) host.setMemType(HvmMemType.IOREQ_SERVER, BigInt(f), 1);
    return {
      remove: () => {
        for (let f = first; f <= last; f++) {
          const set = this.frames.get(f);
          if (!set) continue;
          set.delete(handler);
          if (set.size === 0) {
            this.frames.delete(f);
            host.setMemType(HvmMemType.RAM_RW, BigInt(f), 1);
          }
        }
      },
    };
  }

  sync(): void {
    // Writes were reported as they trapped.
  }

  /** Returns every page to ram_rw and drops the claim (server teardown). */
  release(): void {
    const host = this.server.host;
    for (const f of this.frames.keys()) {
      try {
        host.setMemType(HvmMemType.RAM_RW, BigInt(f), 1);
      } catch (e) {
        this.server.log(`could not return frame ${f} to ram_rw: ${(e as Error).message}`);
      }
    }
    this.frames.clear();
    if (this.claimed) {
      try {
        host.mapMemTypeToIoreqServer(this.server.id, HvmMemType.IOREQ_SERVER, 0);
      } catch (e) {
        this.server.log(`could not release the ioreq_server claim: ${(e as Error).message}`);
      }
      this.claimed = false;
    }
  }
}

/** Serves a device as a Xen IOREQ server. */
export class IoreqServer implements IrqSink {
  /** The ioreq server id (valid while started). */
  id = -1;
  /** Guest memory as the device sees it. */
  readonly memory: XenGuestMemory;
  /** Write-watch of guest pages (trap mode). */
  readonly writeWatch: TrappedWriteWatch;
  /** The device's dispatch table. */
  readonly regionTable: NativeRegionTable;
  /** Counters beyond the engine's. */
  readonly stats = { timeOffsets: 0, invalidates: 0, repOps: 0, watchedWrites: 0, latchReads: 0, intxChanges: 0, msis: 0, relocations: 0 };
  private readonly options: Required<Omit<IoreqServerOptions, 'pci' | 'log' | 'ramBarParking'>> & {
    pci: PciAddress | null;
    log: (line: string) => void;
    ramBarParking: bigint | null;
  };
  private readonly ramBarMap = new Map<number, RamBar>();
  /** The RAM BAR track_dirty_vram follows (the lowest), or null. */
  private trackedBar: RamBar | null = null;
  /** Whether track_dirty_vram is armed on the tracked BAR's current placement. */
  private tracking = false;
  /** Pages of the tracked BAR to report as dirty at the next collection (re-arming reports all). */
  private vramPending: DirtyBitmap | null = null;
  /** Whether the next collection cannot say which pages the guest wrote (tracking was re-armed since). */
  private vramUnknown = false;
  private pages: IoreqPages | null = null;
  private events: EventBinding | null = null;
  private engine: NativeEngine | null = null;
  private mapped = new Map<number, { kind: 'port' | 'memory'; start: bigint; end: bigint }>();
  private pciMapped = false;
  private latchMapped = false;
  private latch = 0;
  private started = false;
  private enabled = false;
  private readonly onRemap = (e: BarRemapEvent) => this.remapBar(e);

  /**
   * Prepares to serve `device` through `host` (nothing is created until {@link start}).
   * @param device the device model (realized here)
   * @param host the hypervisor, real or simulated
   * @param options PCI address, placement, ring mode
   */
  constructor(
    readonly device: PciDevice,
    readonly host: XenHost,
    options: IoreqServerOptions = {},
  ) {
    const pci = options.pci === undefined ? null : options.pci;
    if (pci) {
      const bad = (f: string, v: number, max: number) => !Number.isInteger(v) || v < 0 || v > max ? f : null;
      const field = bad('pci.segment', pci.segment, 0xffff) ?? bad('pci.bus', pci.bus, 0xff) ?? bad('pci.device', pci.device, 31) ?? bad('pci.fn', pci.fn, 7);
      if (field) throw new MdevError('EINVAL', 'out of range', field);
    }
    const ramBars = options.ramBars ?? 'ram';
    if (ramBars !== 'ram' && ramBars !== 'trap') throw new MdevError('EINVAL', `must be 'ram' or 'trap', got ${String(ramBars)}`, 'ramBars');
    const parking = options.ramBarParking ?? null;
    if (parking !== null && (typeof parking !== 'bigint' || parking < 0n || parking % BigInt(XEN_PAGE_SIZE) !== 0n || parking >= 1n << 64n)) {
      throw new MdevError('EINVAL', 'must be a page-aligned guest-physical address (bigint)', 'ramBarParking');
    }
    this.options = {
      bufioreq: options.bufioreq ?? 'atomic',
      pci,
      fixedBars: options.fixedBars ?? {},
      claimConfigLatch: options.claimConfigLatch ?? false,
      ramBars,
      ramBarParking: parking,
      restrict: options.restrict ?? true,
      ioThread: options.ioThread ?? true,
      blockingServe: options.blockingServe ?? true,
      log: options.log ?? (() => {}),
    };
    device.realize();
    this.regionTable = createRegionTable(device, { maxAccess: 4096, onError: (e) => this.log(`device error: ${(e as Error).stack ?? String(e)}`) });
    // The engine's I/O thread serves register accesses under the table's lock; device code outside
    // handlers takes it through PciDevice.exclusive.
    if (this.options.ioThread) device.useAccessLock(this.regionTable);
    this.memory = new XenGuestMemory(host);
    this.writeWatch = new TrappedWriteWatch(this);
  }

  /** Writes a log line. */
  log(line: string): void {
    this.options.log(line);
  }

  /**
   * Creates the server, maps its pages, binds one port per vCPU, claims the device's ranges,
   * enables it and starts serving. On any failure everything done so far is undone.
   */
  start(): void {
    if (this.started) throw new MdevError('EBUSY', 'already started', 'server');
    const host = this.host;
    try {
      const nrVcpus = host.nrVcpus();
      this.populateRamBars();
      if (this.options.restrict) host.restrict();
      this.id = host.createIoreqServer(this.options.bufioreq);
      const info = host.getIoreqServerInfo(this.id);
      this.pages = host.mapIoreqPages(this.id, nrVcpus);
      const pci = this.options.pci;
      if (pci) {
        const sbdf = pciSbdf(pci.segment, pci.bus, pci.device, pci.fn);
        host.mapIoRange(this.id, 'pci', BigInt(sbdf), BigInt(sbdf));
        this.pciMapped = true;
      }
      if (this.options.claimConfigLatch) {
        host.mapIoRange(this.id, 'port', CONFIG_LATCH_PORT, CONFIG_LATCH_PORT + 3n);
        this.latchMapped = true;
      }
      this.mapRamBars();
      this.device.on('barRemap', this.onRemap);
      this.device.attachGuestMemory(this.memory);
      this.device.attachWriteWatch(this.writeWatch);
      this.device.irq.attach(this);
      this.placeFixedBars();
      for (let i = 0; i <= 5; i++) {
        const at = this.device.barAddress(i);
        if (at !== null && !this.mapped.has(i)) this.remapBar({ index: i, from: null, to: at, size: this.device.region(i)!.size, space: this.device.region(i)!.space });
      }
      // Xen fills each vCPU's vp_eport only once the server is enabled: enable, then bind.
      host.setIoreqServerState(this.id, true);
      this.enabled = true;
      const ports = [...Array(nrVcpus).keys()].map((i) => new DataView(this.pages!.sync.buffer, this.pages!.sync.byteOffset + i * 32 + 24, 4).getUint32(0, true));
      this.events = host.bindEvents(ports, this.options.bufioreq === 'off' ? null : info.bufioreqPort);
      this.engine = new IoreqEngineClass({
        sync: this.pages.sync,
        nrVcpus,
        buffered: this.options.bufioreq === 'off' ? null : this.pages.buffered,
        atomicBuffered: this.options.bufioreq === 'atomic',
        events: this.events,
        regionTable: this.regionTable,
        onIoreq: (req) => this.slowPath(req),
        onBadIoreq: (what, errno) => this.log(`bad ioreq: ${what} (errno ${errno})`),
        ioThread: this.options.ioThread,
        blockingServe: this.options.blockingServe,
      });
      if (pci) this.engine.setPciDevice(pciSbdf(pci.segment, pci.bus, pci.device, pci.fn), this.device.config.size);
      this.syncEngineRanges();
      // Requests that arrived between enabling and binding are taken now.
      this.engine.start();
      this.started = true;
    } catch (e) {
      this.teardown();
      throw e;
    }
  }

  /** Stops serving and removes everything it created: claims, ranges, ports, pages, the server. Idempotent. */
  stop(): void {
    if (!this.started && this.id < 0) return;
    this.started = false;
    this.teardown();
  }

  /**
   * Collects guest writes to `[firstPfn, firstPfn + nr)` since the last call (Xen's
   * track_dirty_vram: one range per domain, cleared on read) and ORs them into `into` starting at
   * page `intoFirstPage`. Returns how many frames were dirty. The first call for a range reports
   * every frame dirty, as Xen does when it starts tracking a new range, and so does ENODATA (Xen
   * could not say: everything counts as dirty, as QEMU treats it). A server with a RAM BAR tracks
   * it itself: use {@link collectVramDirty} then (a call on another range takes the domain's one
   * range over).
   */
  collectDirtyVram(firstPfn: bigint, nr: number, into: DirtyBitmap, intoFirstPage = 0): number {
    if (!Number.isInteger(nr) || nr <= 0) throw new MdevError('EINVAL', `must be a positive integer, got ${nr}`, 'nr');
    const { bits } = this.trackBits(firstPfn, nr);
    into.mergeFrom(intoFirstPage, bits, nr);
    let dirty = 0;
    for (let i = 0; i < nr; i++) if (bits[i >>> 3]! & (1 << (i & 7))) dirty++;
    return dirty;
  }

  /**
   * The pages of the tracked RAM BAR (the lowest-numbered one, e.g. a display's VRAM) that the
   * guest wrote since the last call, ORed into `into` (page i = BAR offset i · 4096), for a display
   * that would otherwise scan VRAM. After every placement of the BAR all its pages are reported
   * once (Xen starts the new range with everything dirty). Writes the device makes itself (a
   * vGPU's fill, a reset) reach VRAM through the device model, not the guest, and are not reported
   * here. Returns how many pages this call reported.
   * @throws EINVAL when the device has no RAM BAR served as guest RAM (or the server is not started)
   */
  collectVramDirty(into: DirtyBitmap): number {
    const { report } = this.takeVramDirty();
    into.mergeBitmap(report);
    return report.count();
  }

  /**
   * For a display (the `VramDirtySource` of `mdevkit serve --display-png`): the pages of the
   * tracked RAM BAR that the guest wrote since the last call (page i = BAR offset i · 4096), or
   * null when Xen could not say this time — the BAR was placed or moved since (tracking re-armed on the new
   * range, which Xen reports all dirty once) or track_dirty_vram answered ENODATA — and the caller
   * must compare contents instead. Consumes the same state as {@link collectVramDirty}: a call to
   * either takes what the guest wrote.
   * @throws EINVAL when the device has no RAM BAR served as guest RAM (or the server is not started)
   */
  collectVramWrites(): DirtyBitmap | null {
    const { report, known } = this.takeVramDirty();
    return known ? report : null;
  }

  /** Index of the RAM BAR whose guest writes {@link collectVramDirty} reports, or null when none. */
  get trackedVramBar(): number | null {
    return this.trackedBar?.index ?? null;
  }

  /** Takes the tracked BAR's dirty pages (Xen's and pending ones); `known` false when Xen could not tell. */
  private takeVramDirty(): { report: DirtyBitmap; known: boolean } {
    const rb = this.trackedBar;
    if (rb === null || this.vramPending === null) throw new MdevError('EINVAL', 'no RAM BAR is served as guest RAM (start the server; ramBars: "ram")', 'server');
    const report = new DirtyBitmap(rb.pages, XEN_PAGE_SIZE);
    let known = !this.vramUnknown;
    if (rb.placed && this.tracking) {
      const { bits, known: told } = this.trackBits(rb.gfn, rb.pages);
      report.mergeFrom(0, bits, rb.pages);
      known &&= told;
    }
    report.mergeBitmap(this.vramPending);
    this.vramPending.clearAll();
    this.vramUnknown = false;
    return { report, known };
  }

  /** Where the RAM BARs' pages are now, by BAR index (empty when none is served as guest RAM). */
  ramBars(): RamBarPlacement[] {
    return [...this.ramBarMap.values()].map((rb) => ({ index: rb.index, pages: rb.pages, parkingGfn: rb.parking, gfn: rb.gfn, placed: rb.placed }));
  }

  /** track_dirty_vram of `nr` frames; ENODATA (Xen does not know: `known` false) reports every frame. */
  private trackBits(firstPfn: bigint, nr: number): { bits: Uint8Array; known: boolean } {
    const bits = new Uint8Array(Math.ceil(nr / 8));
    try {
      this.host.trackDirtyVram(firstPfn, nr, bits);
    } catch (e) {
      if (!isErrno(e, 'ENODATA')) throw e;
      bits.fill(0xff);
      return { bits, known: false };
    }
    return { bits, known: true };
  }

  /**
   * Poll mode: serve slots on every turn of the event loop instead of waiting for event-channel
   * notifications (lower latency for spinning vCPUs, at the cost of this thread's CPU).
   */
  setBusyPoll(on: boolean): void {
    if (!this.engine) throw new MdevError('EBUSY', 'start the server first', 'server');
    this.engine.setBusyPoll(on);
  }

  /** Engine counters. */
  engineStats(): Record<string, number> {
    return this.engine?.stats() ?? {};
  }

  private teardown(): void {
    const host = this.host;
    const attempt = (what: string, fn: () => void) => {
      try {
        fn();
      } catch (e) {
        this.log(`teardown: ${what}: ${(e as Error).message}`);
      }
    };
    this.engine?.stop();
    this.engine = null;
    this.device.off('barRemap', this.onRemap);
    if (this.device.guestMemory === this.memory) this.device.attachGuestMemory(null);
    if (this.device.writeWatch === this.writeWatch) this.device.attachWriteWatch(null);
    this.device.irq.detach();
    this.unmapRamBars(attempt);
    if (this.id >= 0) {
      if (this.enabled) attempt('disable', () => host.setIoreqServerState(this.id, false));
      this.enabled = false;
      this.writeWatch.release();
      for (const [index, r] of this.mapped) attempt(`unmap BAR${index}`, () => host.unmapIoRange(this.id, r.kind, r.start, r.end));
      this.mapped.clear();
      if (this.pciMapped) {
        const p = this.options.pci!;
        const sbdf = BigInt(pciSbdf(p.segment, p.bus, p.device, p.fn));
        attempt('unmap PCI', () => host.unmapIoRange(this.id, 'pci', sbdf, sbdf));
        this.pciMapped = false;
      }
      if (this.latchMapped) {
        attempt('unmap 0xCF8', () => host.unmapIoRange(this.id, 'port', CONFIG_LATCH_PORT, CONFIG_LATCH_PORT + 3n));
        this.latchMapped = false;
      }
    }
    if (this.events) attempt('unbind', () => host.unbindEvents(this.events!));
    this.events = null;
    this.pages?.release();
    this.pages = null;
    this.memory.flush();
    if (this.id >= 0) attempt('destroy', () => host.destroyIoreqServer(this.id));
    this.id = -1;
  }

  /** Programs fixed BAR addresses into config space and enables decoding (no firmware on PVH). */
  private placeFixedBars(): void {
    const entries = Object.entries(this.options.fixedBars);
    if (entries.length === 0) return;
    let command = this.device.config.get(PCI.COMMAND, 2);
    for (const [k, address] of entries) {
      const index = Number(k);
      const bar = this.device.bars[index];
      if (!bar) throw new MdevError('EINVAL', `the device has no BAR${index}`, `fixedBars.${k}`);
      if (address % BigInt(bar.region.size) !== 0n) throw new MdevError('EINVAL', `0x${address.toString(16)} is not aligned to the BAR size`, `fixedBars.${k}`);
      const le = (v: bigint, n: number) => Uint8Array.from({ length: n }, (_, i) => Number((v >> BigInt(8 * i)) & 0xffn));
      this.device.configWrite(PCI.BAR0 + 4 * index, le(address & 0xffffffffn, 4));
      if (bar.kind === 'mem64') this.device.configWrite(PCI.BAR0 + 4 * index + 4, le(address >> 32n, 4));
      command |= bar.kind === 'io' ? PCI_COMMAND.IO : PCI_COMMAND.MEMORY;
    }
    this.device.configWrite(PCI.COMMAND, Uint8Array.of(command & 0xff, command >> 8));
  }

  /** The device's BARs to serve as guest RAM, with their parking ranges (empty with ramBars 'trap'). */
  private planRamBars(): RamBar[] {
    if (this.options.ramBars !== 'ram') return [];
    const pci = this.options.pci;
    const base = this.options.ramBarParking ?? DEFAULT_RAM_BAR_PARKING + BigInt(pci ? pci.device * 8 + pci.fn : 0) * RAM_BAR_PARKING_STRIDE;
    const bars: RamBar[] = [];
    let at = base;
    for (let i = 0; i <= 5; i++) {
      const region = this.device.bars[i]?.region;
      if (!region || region.space !== 'mmio' || !region.fullyMappable || region.backing === null) continue;
      const size = BigInt(region.size);
      if (size % BigInt(XEN_PAGE_SIZE) !== 0n) continue;
      at = ((at + size - 1n) / size) * size;
      bars.push({ index: i, pages: region.size / XEN_PAGE_SIZE, parking: at / BigInt(XEN_PAGE_SIZE), gfn: at / BigInt(XEN_PAGE_SIZE), placed: false, mapping: null, previous: null, pinned: null });
      at += size;
    }
    if (this.options.ramBarParking === null && at - base > RAM_BAR_PARKING_STRIDE) {
      throw new MdevError('E2BIG', `the RAM BARs need ${at - base} bytes of parking, more than the ${RAM_BAR_PARKING_STRIDE} a devfn gets by default: set ramBarParking`, 'ramBarParking');
    }
    return bars;
  }

  /**
   * The privileged part of start (before restrict): raises the domain's page limit by the RAM
   * BARs' pages and populates them at their parking ranges.
   */
  private populateRamBars(): void {
    const bars = this.planRamBars();
    if (bars.length === 0) return;
    const host = this.host;
    const pages = bars.reduce((n, rb) => n + rb.pages, 0);
    if (host.restricted) {
      throw new MdevError('EPERM', `serving ${pages} pages of RAM BARs as guest RAM needs privileged handles (populate_physmap): start the server before restricting the host, or use ramBars: 'trap'`, 'host');
    }
    const before = host.domainPages();
    const limit = Math.min(before.maxPages + pages, MAX_DOMAIN_PAGES);
    host.setMaxPages(limit);
    this.log(`domain ${host.domid}: page limit ${before.maxPages} -> ${limit} (${before.totPages} pages held) for ${pages} pages of RAM BARs`);
    for (const rb of bars) {
      const gfns = [...Array(rb.pages).keys()].map((i) => rb.parking + BigInt(i));
      const done = host.populatePhysmap(gfns);
      if (done < rb.pages) {
        throw new MdevError(
          'EBUSY',
          `populated ${done} of BAR${rb.index}'s ${rb.pages} pages at gfn 0x${rb.parking.toString(16)} (Xen: "Over-allocation" or out of memory; the domain's limit is ${limit} pages)`,
          'ramBars',
        );
      }
      this.ramBarMap.set(rb.index, rb);
    }
    this.trackedBar = this.ramBarMap.values().next().value ?? null;
    if (this.trackedBar) this.vramPending = new DirtyBitmap(this.trackedBar.pages, XEN_PAGE_SIZE);
  }

  /** Maps the RAM BARs' pages and moves the device's bytes into them. */
  private mapRamBars(): void {
    for (const rb of this.ramBarMap.values()) {
      const region = this.device.bars[rb.index]!.region;
      rb.mapping = this.host.mapForeign([...Array(rb.pages).keys()].map((i) => rb.parking + BigInt(i)), true);
      rb.previous = region.replaceBacking({ bytes: rb.mapping.bytes.subarray(0, region.size), fd: null, fdOffset: 0 });
      this.regionTable.setRegion(rb.index, { size: region.size, readable: true, writable: true, segments: regionSegments(region) });
      this.log(`BAR${rb.index}: ${rb.pages} pages of guest RAM parked at gfn 0x${rb.parking.toString(16)}`);
    }
  }

  /** Puts the device's own bytes back (with the guest's contents) and drops tracking and pins. */
  private unmapRamBars(attempt: (what: string, fn: () => void) => void): void {
    for (const rb of this.ramBarMap.values()) {
      if (rb === this.trackedBar && this.tracking) attempt('stop track_dirty_vram', () => this.host.trackDirtyVram(0n, 0, new Uint8Array(0)));
      this.tracking = false;
      if (rb.pinned) {
        const { start, end } = rb.pinned;
        attempt(`unpin BAR${rb.index}`, () => this.host.pinMemoryCacheattr(start, end, 'delete'));
        rb.pinned = null;
      }
      if (rb.previous) {
        const region = this.device.bars[rb.index]!.region;
        const previous = rb.previous;
        attempt(`BAR${rb.index} memory back to the device`, () => {
          region.replaceBacking(previous);
          this.regionTable.setRegion(rb.index, { size: region.size, readable: true, writable: true, segments: regionSegments(region) });
        });
        rb.previous = null;
      }
      rb.mapping?.release();
      rb.mapping = null;
    }
    // The pages stay the guest's where they are: restricted handles cannot give them back.
    this.ramBarMap.clear();
    this.trackedBar = null;
    this.vramPending = null;
    this.vramUnknown = false;
  }

  /** A RAM BAR moved or its decoding changed: move its pages (the BAR's address, or parking). */
  private remapRamBar(rb: RamBar, e: BarRemapEvent): void {
    const host = this.host;
    const target = e.to === null ? rb.parking : e.to / BigInt(XEN_PAGE_SIZE);
    if (target !== rb.gfn) {
      if (rb.pinned) {
        const { start, end } = rb.pinned;
        rb.pinned = null;
        try {
          host.pinMemoryCacheattr(start, end, 'delete');
        } catch (err) {
          this.log(`BAR${rb.index}: could not unpin [0x${start.toString(16)}, 0x${end.toString(16)}]: ${(err as Error).message}`);
        }
      }
      if (rb === this.trackedBar && this.tracking) {
        this.tracking = false;
        host.trackDirtyVram(0n, 0, new Uint8Array(0));
      }
      host.relocateMemory(rb.gfn, target, rb.pages);
      this.stats.relocations++;
      this.log(`BAR${rb.index}: ${rb.pages} pages moved from gfn 0x${rb.gfn.toString(16)} to 0x${target.toString(16)}`);
      rb.gfn = target;
      // Our map cache may hold mappings of what was at either range (Xen sends INVALIDATE too).
      this.memory.flush();
    }
    rb.placed = e.to !== null;
    if (!rb.placed) return;
    if (rb.pinned === null) {
      const end = target + BigInt(rb.pages) - 1n;
      try {
        host.pinMemoryCacheattr(target, end, 'wc');
        rb.pinned = { start: target, end };
      } catch (err) {
        this.log(`BAR${rb.index}: could not pin write-combining: ${(err as Error).message}`);
      }
    }
    if (rb === this.trackedBar && !this.tracking) {
      // Re-arm on the new range: Xen reports it all dirty once, which the next collection passes on.
      this.trackBits(target, rb.pages);
      this.tracking = true;
      this.vramPending!.markPages(0, rb.pages);
      this.vramUnknown = true;
    }
  }

  /** A BAR moved or its decoding changed: move the claimed range (what QEMU's memory listener does for Xen). */
  private remapBar(e: BarRemapEvent): void {
    if (e.index > 5 || this.id < 0) return; // the ROM is read by firmware through config space here
    const rb = this.ramBarMap.get(e.index);
    if (rb) {
      try {
        this.remapRamBar(rb, e);
      } catch (err) {
        // Inside the guest's config write: the write stands, the BAR's pages stay where Xen left them.
        this.log(`BAR${rb.index}: could not move its pages to ${e.to === null ? 'parking' : `0x${e.to.toString(16)}`}: ${(err as Error).message}`);
        throw err;
      }
      return;
    }
    const old = this.mapped.get(e.index);
    if (old) {
      this.host.unmapIoRange(this.id, old.kind, old.start, old.end);
      this.mapped.delete(e.index);
    }
    if (e.to !== null) {
      const kind = e.space === 'pio' ? 'port' : 'memory';
      const end = e.to + BigInt(e.size) - 1n;
      this.host.mapIoRange(this.id, kind, e.to, end);
      this.mapped.set(e.index, { kind, start: e.to, end });
    }
    this.syncEngineRanges();
  }

  private syncEngineRanges(): void {
    this.engine?.setRanges([...this.mapped].map(([index, r]) => ({ kind: r.kind === 'port' ? 'pio' : 'mmio', start: r.start, end: r.end, region: index, offset: 0 })));
  }

  // ---- interrupts (IrqSink) ---------------------------------------------------------------

  setIntx(asserted: boolean): void {
    this.stats.intxChanges++;
    const p = this.options.pci;
    const pin = this.device.irq.intxPin;
    if (!p || pin === 0) return; // no PCI routing known: a PVH guest without PCI uses MSI only
    this.host.setPciIntxLevel(p.segment, p.bus, p.device, pin - 1, asserted);
  }

  sendMsi(message: MsiMessage): void {
    this.stats.msis++;
    this.host.injectMsi(message.address, message.data);
  }

  // ---- the slow path ----------------------------------------------------------------------

  private slowPath(req: SlowIoreq): bigint | number | undefined {
    try {
      switch (req.type) {
        case IoreqType.TIMEOFFSET:
          this.stats.timeOffsets++;
          return undefined;
        case IoreqType.INVALIDATE:
          this.stats.invalidates++;
          this.memory.flush();
          return undefined;
        case IoreqType.PIO:
          if (req.count === 1 && !req.dataIsPtr && req.addr >= CONFIG_LATCH_PORT && req.addr < CONFIG_LATCH_PORT + 4n && this.latchMapped) return this.configLatch(req);
          return this.regionIo(req, 'pio');
        case IoreqType.COPY:
          return this.regionIo(req, 'mmio');
        case IoreqType.PCI_CONFIG:
          return -errnoFromError(new MdevError('ENODEV', 'config access for another device', 'addr'));
        default:
          this.log(`unknown ioreq type ${req.type}`);
          return -22;
      }
    } catch (e) {
      if (!isErrno(e)) this.log(`ioreq failed: ${(e as Error).stack ?? String(e)}`);
      return -errnoFromError(e);
    }
  }

  /** The 0xCF8 address latch: Xen forwards the writes but never answers the reads (PVH conf1 probing). */
  private configLatch(req: SlowIoreq): bigint | undefined {
    const shift = BigInt(8 * Number(req.addr - CONFIG_LATCH_PORT));
    const mask = ((1n << BigInt(8 * req.size)) - 1n) << shift;
    if (req.read) {
      this.stats.latchReads++;
      return (BigInt(this.latch >>> 0) & mask) >> shift;
    }
    this.latch = Number((BigInt(this.latch >>> 0) & ~mask) | ((req.data << shift) & mask)) >>> 0;
    return undefined;
  }

  /** Finds the region and offset serving `addr`, or null. */
  private locate(space: 'pio' | 'mmio', addr: bigint, size: number): { region: number; offset: number } | null {
    for (const [index, r] of this.mapped) {
      if ((r.kind === 'port') !== (space === 'pio')) continue;
      if (addr >= r.start && addr + BigInt(size) - 1n <= r.end) return { region: index, offset: Number(addr - r.start) };
    }
    return null;
  }

  /** One element of `size` bytes at `addr` of the device, or of watched guest RAM. */
  private element(space: 'pio' | 'mmio', addr: bigint, size: number, read: boolean, value: Uint8Array): void {
    const target = this.locate(space, addr, size);
    if (target) {
      const err = read ? this.regionTable.read(target.region, target.offset, value) : this.regionTable.write(target.region, target.offset, value);
      if (err !== 0) throw Object.assign(new MdevError('EIO', `region access failed with errno ${err}`, 'addr'), { errno: err });
      return;
    }
    if (space === 'mmio' && this.writeWatch.frames.has(Number(addr / BigInt(XEN_PAGE_SIZE)))) {
      // A guest access to a write-protected page (HVMMEM_ioreq_server): we perform it on RAM.
      const gpa = Number(addr);
      if (read) this.memory.read(gpa, value);
      else {
        this.memory.write(gpa, value);
        this.stats.watchedWrites++;
        this.writeWatch.events++;
        for (const h of [...(this.writeWatch.frames.get(Math.floor(gpa / XEN_PAGE_SIZE)) ?? [])]) h({ gpa, length: size });
      }
      return;
    }
    if (read) value.fill(0xff); // nobody claims it: reads float high
  }

  /** PIO/COPY that the native path declined: rep string ops, unmapped or watched addresses. */
  private regionIo(req: SlowIoreq, space: 'pio' | 'mmio'): bigint | undefined {
    const value = new Uint8Array(req.size);
    const toBig = (): bigint => value.reduceRight((acc, b) => (acc << 8n) | BigInt(b), 0n);
    const fromBig = (v: bigint): void => value.forEach((_, i) => (value[i] = Number((v >> BigInt(8 * i)) & 0xffn)));
    if (!req.dataIsPtr) {
      if (req.count !== 1) throw new MdevError('EINVAL', `count ${req.count} without data_is_ptr`, 'count');
      if (!req.read) fromBig(req.data);
      this.element(space, req.addr, req.size, req.read, value);
      return req.read ? toBig() : undefined;
    }
    // Rep string op: `data` is a guest address; elements step by size (down when df). For port I/O
    // the port stays the same; for MMIO the device address steps too.
    this.stats.repOps++;
    // The ioreq cannot report a partial count back to Xen, so a rep op is done whole or not at all:
    // everything that can be refused is refused before the first element moves. Xen clips a string
    // instruction to 4096 repetitions per ioreq (hvmemul_linear_to_phys); more only comes from a
    // corrupt page, and would hold this thread — every vCPU — for as long as it takes to copy.
    if (req.count > MAX_REPS) throw new MdevError('EINVAL', `rep count ${req.count} exceeds Xen's ${MAX_REPS}`, 'count');
    if (req.count === 0) return undefined;
    const span = BigInt(req.size) * BigInt(req.count - 1); // from the first element to the last
    const lowest = (at: bigint): bigint => (req.df ? at - span : at);
    const gpaLow = lowest(req.data);
    const devLow = space === 'pio' ? req.addr : lowest(req.addr);
    const end = (low: bigint, elements: number): bigint => low + BigInt(req.size) * BigInt(elements);
    if (gpaLow < 0n || devLow < 0n || end(gpaLow, req.count) > U64_LIMIT || end(devLow, space === 'pio' ? 1 : req.count) > U64_LIMIT) {
      throw new MdevError('EFAULT', 'rep op runs below address 0 or beyond 2^64', 'data');
    }
    // The guest buffer is one block: read (or, for a read from the device, probed) in one go, so an
    // unmapped buffer fails before the device sees any access, and a read into guest memory is one
    // write and one modified_memory call rather than one per element.
    const block = new Uint8Array(req.size * req.count);
    this.memory.read(Number(gpaLow), block);
    const step = BigInt(req.df ? -req.size : req.size);
    for (let i = 0; i < req.count; i++) {
      const at = (req.df ? req.count - 1 - i : i) * req.size; // element i's place in the block
      const dev = space === 'pio' ? req.addr : req.addr + step * BigInt(i);
      this.element(space, dev, req.size, req.read, block.subarray(at, at + req.size));
    }
    if (req.read) this.memory.write(Number(gpaLow), block);
    return undefined;
  }
}
