/**
 * The guest side of the Xen simulator: one vCPU of a simulated HVM domain, doing what Xen does on
 * the vCPU's behalf when the guest touches emulated I/O — route the access, fill the vCPU's
 * `struct ioreq` in the chosen server's shared page, notify the server, block until the response,
 * and complete the access. It blocks its thread, so it belongs in a worker thread
 * (`vcpu-worker.ts`); the IOREQ server being tested keeps the main thread.
 *
 * Semantics reproduced from Xen (xen/common/ioreq.c, xen/arch/x86/hvm/emulate.c):
 * - an access no enabled server claims is completed by Xen: reads return all-ones, writes vanish;
 * - a synchronous ioreq is written field by field, then its state byte is set to READY (a release
 *   store, so the server sees the fields once it sees READY), then the server is notified; the vCPU
 *   accepts IORESP_READY, takes `data` and sets the slot back to NONE. A state moving backwards is
 *   fatal (Xen crashes the domain; here EIO), a slot found NONE while waiting means the emulator
 *   died (Xen completes with all-ones, as does this), and so does the server being destroyed.
 *   Sending needs the slot idle and `vp_eport` intact (else Xen refuses the ioreq: EIO);
 * - a wait longer than the descriptor's timeout fails with ETIMEDOUT instead of hanging. The slot is
 *   left as it was (a real vCPU would still be waiting), so the next ioreq to that server fails
 *   with EIO until the server completes the old one;
 * - string instructions with `dataIsPtr` travel as one ioreq (`count` elements of `size` bytes at
 *   guest address `data`, downwards when `df` is set); the server copies to or from guest memory;
 * - port 0xcf8 is latched by Xen (and still passed on as a normal port write); 0xcfc-0xcff with the
 *   latch enabled are PCI configuration cycles routed by SBDF;
 * - guest memory honours the p2m: a frame with a ram_rw page is plain memory (a write to a frame
 *   write-protected for track_dirty_vram makes it dirty; writes are logged for global log-dirty),
 *   ram_ro drops writes, mmio_dm and frames without a page (holes, never an ioreq server's range
 *   once a page is there: RAM wins) are emulated MMIO, and a write to an ioreq_server frame becomes
 *   IOREQ_TYPE_COPY ioreqs (at most 8 bytes each, one per naturally aligned chunk) to the server
 *   holding the claim, which performs the write itself — the write-protection XenGT's GTT
 *   shadowing relies on. Without a claim such frames are writable RAM. Pages beyond guest RAM
 *   (populate_physmap, relocate_memory: e.g. VRAM at a BAR's address) are RAM like any other;
 * - when pages left the p2m (relocate_memory), the vCPU first sends IOREQ_TYPE_INVALIDATE (size 4,
 *   data all-ones, a write) to every enabled server and waits for each, as Xen's vCPUs do before
 *   they next run guest code, then performs the access.
 * - buffered writes go to the ring of the server that claims the address when it has one, the
 *   address fits the ring's 20 bits and there is room (an 8-byte write takes two slots); otherwise
 *   they are sent synchronously, as Xen falls back to the synchronous path.
 * @module
 */
import { MdevError, describe } from '../../../src/errors.js';
import { DirtyBitmap } from '../../../src/native/dirty-bitmap.js';
import { eventfdRead, eventfdWrite } from '../../../src/native/fd.js';
import { mmapFd, munmap } from '../../../src/native/mmap.js';
import { waitReadable } from '../../../src/native/poll.js';
import { BufIoreq, BufferedPage, BufioreqMode, HvmMemType, Ioreq, IoreqBits, IoreqMemAccess, IoreqState, IoreqType, XEN_PAGE_SIZE } from '../ioreq-abi.js';
import { SimInterruptCounters } from './interrupts.js';
import {
  Ctl,
  MAX_IOREQ_SERVERS,
  NR_RANGE_TYPES,
  SIM_LAYOUT_VERSION,
  SIM_MAX_GFN,
  Slot,
  extentIndex,
  invalidateIndex,
  p2mPage,
  p2mType,
  pageLocation,
  rangeIndex,
  slotIndex,
  type SimVcpuDescriptor,
} from './layout.js';
import { RangeList } from './rangeset.js';
import { memoryAccessBounds, selectServer, type RoutableServer, type SimSpace } from './routing.js';

/** One guest access, as the vCPU's instruction would make it. */
export interface SimAccess {
  /** 'pio' (port I/O), 'mmio' (guest physical memory), 'pci' (a decoded configuration cycle). */
  space: SimSpace;
  /** Port (<= 0xffff), guest physical address, or SBDF << 32 | register for 'pci'. */
  addr: bigint;
  /** Bytes per element: 1, 2 or 4 for ports and configuration space, up to 8 for memory. */
  size: 1 | 2 | 4 | 8;
  /** Direction. */
  dir: 'read' | 'write';
  /** The value to write, or with `dataIsPtr` the guest physical address of the buffer. */
  data?: bigint;
  /** Elements of a string instruction (rep ins/outs/movs/stos); default 1. */
  count?: number;
  /** `data` is the guest address of the elements (a string instruction through memory). */
  dataIsPtr?: boolean;
  /** Direction flag: the string instruction walks down. */
  df?: boolean;
}

/** Where a buffered write went. */
export type BufferedWriteOutcome =
  /** Queued in the server's buffered ring. */
  | 'buffered'
  /** Sent as a synchronous ioreq (no ring, address beyond the ring's 20 bits, or ring full). */
  | 'synchronous'
  /** No enabled server claims the address: dropped, as Xen drops unclaimed writes. */
  | 'unclaimed';

/** Options of {@link SimVcpu}. */
export interface SimVcpuOptions {
  /** Overrides the descriptor's ioreq response timeout, in ms. */
  timeoutMs?: number;
  /** Spin on the slot's state instead of sleeping on the event channel (pairs with a busy-polling server). */
  busyPoll?: boolean;
}

interface ServerView extends RoutableServer {
  readonly id: number;
  readonly gen: number;
  readonly bufMode: number;
  readonly ioreqFd: number;
  readonly bufFd: number;
  readonly bufEvtFd: number;
  /** This vCPU's guest→server eventfd, server→guest eventfd and port. */
  readonly g2s: number;
  readonly s2g: number;
  readonly port: number;
}

interface Snapshot {
  readonly seq: number;
  readonly servers: readonly (ServerView | undefined)[];
  readonly claimId: number;
  readonly claimFlags: number;
  readonly vramFirst: number;
  readonly vramNr: number;
  readonly logDirty: boolean;
  /** Pages beyond guest RAM, sorted by gfn. */
  readonly extents: readonly { readonly first: number; readonly nr: number; readonly page: number }[];
}

interface ServerPages {
  readonly gen: number;
  readonly ioreqAb: ArrayBuffer;
  readonly ioreq: Uint8Array;
  readonly ioreqView: DataView;
  readonly bufAb: ArrayBuffer | null;
}

/** The server went away between routing and sending: route again. */
const RETRY = Symbol('retry');
const ALL_ONES = (1n << 64n) - 1n;
const LOCK_WAIT_MS = 50;

/** One vCPU of a simulated domain, driven synchronously (run it in a worker thread). */
export class SimVcpu {
  /** This vCPU's index. */
  readonly index: number;
  /** Guest domain id. */
  readonly domid: number;
  /** Interrupts delivered to the domain, as the guest sees them. */
  readonly interrupts: SimInterruptCounters;

  private readonly nrVcpus: number;
  private readonly ramBytes: number;
  private readonly ramPages: number;
  private readonly ramAb: ArrayBuffer;
  private readonly ram: Uint8Array;
  private readonly extraAb: ArrayBuffer | null;
  private readonly extra: Uint8Array;
  private readonly ctl: Int32Array;
  private readonly rangeWords: BigUint64Array;
  private readonly extentWords: BigUint64Array;
  private readonly p2m: Int32Array;
  private readonly irqEventFd: number;
  private readonly vramArmed: Int32Array;
  private readonly logDirty: DirtyBitmap;
  private readonly timeoutMs: number;
  private readonly busyPoll: boolean;
  private snap: Snapshot | null = null;
  private readonly pages = new Map<number, ServerPages>();
  private closed = false;

  /**
   * Attaches to a domain. The descriptor comes from `SimHypervisor.vcpuDescriptor`, possibly
   * through `workerData`.
   * @throws EINVAL for a descriptor of another layout version (a stale build on one side)
   */
  constructor(descriptor: SimVcpuDescriptor, options: SimVcpuOptions = {}) {
    const d = descriptor;
    if (d === null || typeof d !== 'object' || d.layout !== SIM_LAYOUT_VERSION || !(d.ctl instanceof SharedArrayBuffer)) {
      throw new MdevError('EINVAL', 'not a vCPU descriptor of this simulator version (rebuild dist/?)', 'descriptor');
    }
    this.ctl = new Int32Array(d.ctl);
    if (Atomics.load(this.ctl, Ctl.magic) !== SIM_LAYOUT_VERSION) {
      throw new MdevError('EINVAL', 'the control block is not of this simulator version', 'descriptor.ctl');
    }
    this.index = d.index;
    this.domid = d.domid;
    this.nrVcpus = d.nrVcpus;
    this.ramBytes = d.ramBytes;
    this.ramPages = d.ramBytes / XEN_PAGE_SIZE;
    this.rangeWords = new BigUint64Array(d.ranges);
    this.extentWords = new BigUint64Array(d.extents);
    this.p2m = new Int32Array(d.p2m);
    this.irqEventFd = d.irqEventFd;
    this.interrupts = new SimInterruptCounters(d.irq, d.nrVcpus);
    this.vramArmed = new Int32Array(d.vramArmed);
    this.logDirty = new DirtyBitmap(d.ramBytes / XEN_PAGE_SIZE, XEN_PAGE_SIZE, d.logDirty);
    const timeout = options.timeoutMs ?? d.timeoutMs;
    if (!Number.isInteger(timeout) || timeout < 0 || timeout > 2 ** 31 - 1) {
      throw new MdevError('EINVAL', `must be an integer number of ms, got ${describe(timeout)}`, 'timeoutMs');
    }
    this.timeoutMs = timeout;
    this.busyPoll = options.busyPoll ?? false;
    this.ramAb = mmapFd(d.ramFd, d.ramBytes, { writable: true, shared: true });
    this.ram = new Uint8Array(this.ramAb);
    try {
      this.extraAb = d.extraBytes > 0 ? mmapFd(d.extraFd, d.extraBytes, { writable: true, shared: true }) : null;
    } catch (e) {
      munmap(this.ramAb);
      throw e;
    }
    this.extra = this.extraAb === null ? new Uint8Array(0) : new Uint8Array(this.extraAb);
  }

  /**
   * Performs one guest access (see {@link SimAccess}) and completes it as Xen would.
   * @returns the value read (masked to the access size; all-ones when nobody claims it), or 0n for
   *   writes and for reads through memory (`dataIsPtr`), whose data lands in guest RAM
   * @throws EINVAL for a malformed access; EFAULT when a string instruction's buffer is not in guest
   *   RAM; ETIMEDOUT when the server does not respond in time; EIO when the server left the slot in
   *   a state Xen would reject
   */
  access(access: SimAccess): bigint {
    this.open();
    const a = checkAccess(access);
    this.serviceInvalidate();
    const count = a.count ?? 1;
    const dataIsPtr = a.dataIsPtr ?? false;
    const df = a.df ?? false;
    const read = a.dir === 'read';
    const data = a.data ?? 0n;

    if (dataIsPtr) {
      if (a.data === undefined) throw new MdevError('EINVAL', 'a string instruction through memory needs the buffer address in data', 'data');
      const [lo, hi] = memoryAccessBounds(data, a.size, count, df);
      if (hi < lo || !this.isRam(lo, hi - lo + 1n)) {
        throw new MdevError('EFAULT', `buffer [0x${lo.toString(16)}, 0x${hi.toString(16)}] is not in guest RAM`, 'data');
      }
    } else if (read) {
      if (count !== 1) throw new MdevError('EINVAL', 'a read of more than one element needs dataIsPtr', 'count');
    } else {
      if (a.data === undefined) throw new MdevError('EINVAL', 'a write needs data', 'data');
      if (data >> BigInt(8 * a.size) !== 0n) throw new MdevError('EINVAL', `0x${data.toString(16)} does not fit in ${a.size} bytes`, 'data');
    }

    if (a.space === 'pio' && !read && a.addr === 0xcf8n && a.size === 4) {
      // Xen latches the configuration address, then passes the write on like any other.
      const value = dataIsPtr ? readLe(this.rawRead(df ? data - BigInt((count - 1) * 4) : data + BigInt((count - 1) * 4), 4), 0, 4) : data;
      Atomics.store(this.ctl, Ctl.cf8, Number(value) | 0);
    }

    if (a.space === 'mmio' && a.addr <= BigInt(SIM_MAX_GFN) * BigInt(XEN_PAGE_SIZE)) {
      const { type, page } = this.resolve(this.snapshot(), Number(a.addr / BigInt(XEN_PAGE_SIZE)));
      if (page >= 0 && type !== HvmMemType.MMIO_DM) {
        // Guest RAM: an instruction touching it does not trap, whatever this says it is.
        if (count !== 1 || dataIsPtr) throw new MdevError('EINVAL', 'string instructions on guest RAM do not trap; use ramRead/ramWrite', 'addr');
        if (read) return readLe(this.ramRead(a.addr, a.size), 0, a.size);
        this.ramWrite(a.addr, leBytes(data, a.size));
        return 0n;
      }
    }

    for (;;) {
      const snap = this.snapshot();
      const route = selectServer(snap.servers, { space: a.space, addr: a.addr, size: a.size, count, df }, Atomics.load(this.ctl, Ctl.cf8));
      if (route === null) {
        if (!read) return 0n;
        if (!dataIsPtr) return mask(ALL_ONES, a.size);
        // Xen's null handler reads all-ones for every element into the buffer.
        const [lo] = memoryAccessBounds(data, a.size, count, df);
        this.ramWrite(lo, new Uint8Array(a.size * count).fill(0xff));
        return 0n;
      }
      const result = this.sendSync(snap.servers[route.id]!, {
        type: route.type,
        addr: route.addr,
        size: a.size,
        count,
        dataIsPtr,
        read,
        df,
        data,
      });
      if (result === RETRY) continue;
      return read && !dataIsPtr ? mask(result, a.size) : 0n;
    }
  }

  /**
   * A write that needs no response (the kind Xen queues for standard VGA memory): appended to the
   * buffered ring of the server claiming `addr`, which is notified through its buffered channel.
   * @param space 'mmio' (an IOREQ_TYPE_COPY entry) or 'pio' (IOREQ_TYPE_PIO)
   * @returns where the write went
   */
  bufferedWrite(addr: bigint, size: 1 | 2 | 4 | 8, data: bigint, space: 'mmio' | 'pio' = 'mmio'): BufferedWriteOutcome {
    this.open();
    checkAccess({ space, addr, size, dir: 'write', data });
    this.serviceInvalidate();
    if (data >> BigInt(8 * size) !== 0n) throw new MdevError('EINVAL', `0x${data.toString(16)} does not fit in ${size} bytes`, 'data');
    for (;;) {
      const snap = this.snapshot();
      const route = selectServer(snap.servers, { space, addr, size, count: 1, df: false }, Atomics.load(this.ctl, Ctl.cf8));
      if (route === null) return 'unclaimed';
      const server = snap.servers[route.id]!;
      const req = { type: route.type, addr: route.addr, size, count: 1, dataIsPtr: false, read: false, df: false, data };
      if (server.bufMode !== BufioreqMode.OFF && route.type !== IoreqType.PCI_CONFIG && route.addr <= 0xfffffn) {
        const queued = this.queueBuffered(server, route.type, Number(route.addr), size, data);
        if (queued === RETRY) continue;
        if (queued) return 'buffered';
      }
      const result = this.sendSync(server, req);
      if (result === RETRY) continue;
      return 'synchronous';
    }
  }

  /**
   * Reads guest memory as the guest would: frames with pages directly, mmio_dm frames and holes
   * through MMIO read ioreqs (naturally aligned chunks of up to 8 bytes).
   * @throws EFAULT when the range is neither within guest RAM nor within pages beyond it
   */
  ramRead(gpa: number | bigint, length: number): Uint8Array {
    this.open();
    const start = this.ramRange(gpa, length);
    this.serviceInvalidate();
    const out = new Uint8Array(length);
    this.walkFrames(start, length, (at, n, type, bytes) => {
      if (bytes !== null && type !== HvmMemType.MMIO_DM) {
        out.set(bytes, at - start);
        return;
      }
      for (const [chunk, size] of alignedChunks(at, n)) {
        const v = this.access({ space: 'mmio', addr: BigInt(chunk), size, dir: 'read' });
        out.set(leBytes(v, size), chunk - start);
      }
    });
    return out;
  }

  /**
   * Writes guest memory as the guest would: ram_rw frames directly (logged for dirty tracking),
   * ram_ro frames not at all, mmio_dm frames and holes through MMIO write ioreqs, and ioreq_server
   * frames through IOREQ_TYPE_COPY ioreqs to the claiming server (each naturally aligned chunk of
   * up to 8 bytes one ioreq), or directly when no server claims the type.
   * @throws EFAULT when the range is neither within guest RAM nor within pages beyond it
   */
  ramWrite(gpa: number | bigint, bytes: Uint8Array): void {
    this.open();
    if (!(bytes instanceof Uint8Array)) throw new MdevError('EINVAL', `must be a Uint8Array, got ${describe(bytes)}`, 'bytes');
    const start = this.ramRange(gpa, bytes.length);
    this.serviceInvalidate();
    this.walkFrames(start, bytes.length, (at, n, type, page) => {
      const src = bytes.subarray(at - start, at - start + n);
      if (page === null || type === HvmMemType.MMIO_DM) {
        for (const [chunk, size] of alignedChunks(at, n)) {
          this.access({ space: 'mmio', addr: BigInt(chunk), size, dir: 'write', data: readLe(src, chunk - at, size) });
        }
      } else if (type === HvmMemType.RAM_RW) {
        page.set(src);
        this.markWritten(frameOf(at), true);
      } else if (type === HvmMemType.IOREQ_SERVER) {
        this.writeProtected(at, src, page);
      }
      // HVMMEM_ram_ro: Xen discards the write.
    });
  }

  /**
   * Blocks until an interrupt is delivered to this vCPU or `timeoutMs` passes. Deliveries are
   * counted in an eventfd, so one return may stand for several; see {@link interrupts}.
   * @returns whether an interrupt was delivered
   */
  waitForInterrupt(timeoutMs: number): boolean {
    this.open();
    if (!Number.isInteger(timeoutMs) || timeoutMs < 0) throw new MdevError('EINVAL', `must be a non-negative integer, got ${describe(timeoutMs)}`, 'timeoutMs');
    if (!waitReadable(this.irqEventFd, timeoutMs)) return false;
    eventfdRead(this.irqEventFd);
    return true;
  }

  /** Unmaps guest RAM and server pages. Idempotent; afterwards every call is EBADF. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.pages.values()) unmapPages(p);
    this.pages.clear();
    munmap(this.ramAb);
    if (this.extraAb !== null) munmap(this.extraAb);
  }

  // ---------------------------------------------------------------------------------------------

  private open(): void {
    if (this.closed) throw new MdevError('EBADF', `vCPU ${this.index} is closed`);
  }

  /** The configuration, re-read under the sequence lock only when it changed. */
  private snapshot(): Snapshot {
    const current = Atomics.load(this.ctl, Ctl.seq);
    if (this.snap !== null && this.snap.seq === current) return this.snap;
    for (;;) {
      const seq = Atomics.load(this.ctl, Ctl.seq);
      if ((seq & 1) !== 0) {
        Atomics.wait(this.ctl, Ctl.seq, seq, LOCK_WAIT_MS);
        continue;
      }
      const servers: (ServerView | undefined)[] = [];
      for (let id = 0; id < MAX_IOREQ_SERVERS; id++) servers.push(this.readServer(id));
      const lo = Atomics.load(this.ctl, Ctl.vramFirstLo) >>> 0;
      const hi = Atomics.load(this.ctl, Ctl.vramFirstHi) >>> 0;
      const extents: { first: number; nr: number; page: number }[] = [];
      const nrExtents = Atomics.load(this.ctl, Ctl.nrExtents);
      for (let i = 0; i < nrExtents; i++) {
        const w1 = Atomics.load(this.extentWords, extentIndex(i) + 1);
        extents.push({ first: Number(Atomics.load(this.extentWords, extentIndex(i))), nr: Number(w1 >> 32n), page: Number(w1 & 0xffffffffn) });
      }
      const snap: Snapshot = {
        seq,
        servers,
        claimId: Atomics.load(this.ctl, Ctl.claimId),
        claimFlags: Atomics.load(this.ctl, Ctl.claimFlags),
        vramFirst: hi * 2 ** 32 + lo,
        vramNr: Atomics.load(this.ctl, Ctl.vramNr),
        logDirty: Atomics.load(this.ctl, Ctl.logDirty) === 1,
        extents,
      };
      if (Atomics.load(this.ctl, Ctl.seq) !== seq) continue;
      this.snap = snap;
      return snap;
    }
  }

  private readServer(id: number): ServerView | undefined {
    const at = (word: number): number => Atomics.load(this.ctl, slotIndex(this.nrVcpus, id, word));
    if (at(Slot.alive) !== 1) return undefined;
    const ranges: RangeList[] = [];
    for (let type = 0; type < NR_RANGE_TYPES; type++) {
      const pairs: [bigint, bigint][] = [];
      const n = at(Slot.nrRanges + type);
      for (let i = 0; i < n; i++) {
        const k = rangeIndex(id, type, i);
        pairs.push([Atomics.load(this.rangeWords, k), Atomics.load(this.rangeWords, k + 1)]);
      }
      ranges.push(new RangeList(pairs));
    }
    const v = Slot.vcpus + 3 * this.index;
    return {
      id,
      gen: at(Slot.gen),
      enabled: at(Slot.enabled) === 1,
      bufMode: at(Slot.bufMode),
      ioreqFd: at(Slot.ioreqFd),
      bufFd: at(Slot.bufFd),
      bufEvtFd: at(Slot.bufEvtFd),
      g2s: at(v),
      s2g: at(v + 1),
      port: at(v + 2),
      ranges: ranges as [RangeList, RangeList, RangeList],
    };
  }

  /**
   * Enters a server's slot: raises its use count, then checks it is still the same server. While
   * entered, the hypervisor keeps the server's fds open even if it is destroyed.
   */
  private enter(server: ServerView): boolean {
    Atomics.add(this.ctl, slotIndex(this.nrVcpus, server.id, Slot.inUse), 1);
    if (this.alive(server)) return true;
    this.leave(server);
    return false;
  }

  private leave(server: ServerView): void {
    Atomics.sub(this.ctl, slotIndex(this.nrVcpus, server.id, Slot.inUse), 1);
  }

  private alive(server: ServerView): boolean {
    return Atomics.load(this.ctl, slotIndex(this.nrVcpus, server.id, Slot.gen)) === server.gen;
  }

  /** The server's pages mapped here (call while entered). */
  private pagesOf(server: ServerView): ServerPages {
    const cached = this.pages.get(server.id);
    if (cached !== undefined && cached.gen === server.gen) return cached;
    if (cached !== undefined) unmapPages(cached);
    const ioreqAb = mmapFd(server.ioreqFd, XEN_PAGE_SIZE, { writable: true, shared: true });
    const bufAb = server.bufFd >= 0 ? mmapFd(server.bufFd, XEN_PAGE_SIZE, { writable: true, shared: true }) : null;
    const pages: ServerPages = { gen: server.gen, ioreqAb, ioreq: new Uint8Array(ioreqAb), ioreqView: new DataView(ioreqAb), bufAb };
    this.pages.set(server.id, pages);
    return pages;
  }

  /** Sends one synchronous ioreq and waits for its completion. */
  private sendSync(
    server: ServerView,
    r: { type: number; addr: bigint; size: number; count: number; dataIsPtr: boolean; read: boolean; df: boolean; data: bigint },
  ): bigint | typeof RETRY {
    if (!this.enter(server)) return RETRY;
    try {
      const { ioreq, ioreqView: view } = this.pagesOf(server);
      const off = this.index * Ioreq.sizeof;
      const state = Atomics.load(ioreq, off + Ioreq.bits) & IoreqBits.STATE_MASK;
      if (state !== IoreqState.NONE) {
        throw new MdevError('EIO', `server ${server.id} left vCPU ${this.index}'s ioreq in state ${state} (Xen: "device model set bad IO state")`);
      }
      const eport = view.getUint32(off + Ioreq.vpEport, true);
      if (eport !== server.port) {
        throw new MdevError('EIO', `vp_eport of vCPU ${this.index} at server ${server.id} is ${eport}, not ${server.port} (Xen: "device model set bad event channel")`);
      }
      view.setBigUint64(off + Ioreq.addr, r.addr, true);
      view.setBigUint64(off + Ioreq.data, r.data, true);
      view.setUint32(off + Ioreq.count, r.count, true);
      view.setUint32(off + Ioreq.size, r.size, true);
      view.setUint16(off + Ioreq.vpEport + 4, 0, true);
      ioreq[off + Ioreq.type] = r.type;
      const flags = (r.dataIsPtr ? IoreqBits.DATA_IS_PTR : 0) | (r.read ? IoreqBits.DIR_READ : 0) | (r.df ? IoreqBits.DF : 0);
      // The state byte last, atomically: the server may act as soon as it sees READY.
      Atomics.store(ioreq, off + Ioreq.bits, flags | IoreqState.READY);
      eventfdWrite(server.g2s);
      return this.awaitResponse(server, ioreq, view, off, flags);
    } finally {
      this.leave(server);
    }
  }

  /** Xen's hvm_wait_for_io(): follow the slot's state until the response (or a failure). */
  private awaitResponse(server: ServerView, ioreq: Uint8Array, view: DataView, off: number, flags: number): bigint {
    const deadline = performance.now() + this.timeoutMs;
    let prev: number = IoreqState.READY;
    for (;;) {
      if (!this.alive(server)) return ALL_ONES; // destroyed with the ioreq in flight
      const state = Atomics.load(ioreq, off + Ioreq.bits) & IoreqBits.STATE_MASK;
      switch (ioreqWaitStep(prev, state)) {
        case 'complete': {
          const data = view.getBigUint64(off + Ioreq.data, true);
          Atomics.store(ioreq, off + Ioreq.bits, flags | IoreqState.NONE);
          return data;
        }
        case 'dying':
          return ALL_ONES;
        case 'backwards':
          throw new MdevError('EIO', `server ${server.id} moved vCPU ${this.index}'s ioreq back from state ${prev} to ${state} (Xen crashes the domain)`);
        case 'invalid':
          throw new MdevError('EIO', `server ${server.id} put vCPU ${this.index}'s ioreq in invalid state ${state} (Xen crashes the domain)`);
        case 'wait':
          break;
      }
      prev = state;
      const left = Math.ceil(deadline - performance.now());
      if (left <= 0) {
        throw new MdevError('ETIMEDOUT', `server ${server.id} did not complete vCPU ${this.index}'s ioreq within ${this.timeoutMs} ms`);
      }
      if (this.busyPoll) continue; // spin: the state is re-read at once
      if (waitReadable(server.s2g, left)) eventfdRead(server.s2g);
    }
  }

  /**
   * Appends to a server's buffered ring (Xen's hvm_send_buffered_ioreq).
   * @returns true when queued, false when the ring is full, RETRY when the server went away
   */
  private queueBuffered(server: ServerView, type: number, addr: number, size: number, data: bigint): boolean | typeof RETRY {
    if (!this.enter(server)) return RETRY;
    try {
      const bufAb = this.pagesOf(server).bufAb!;
      const pointers = new Uint32Array(bufAb, 0, 2);
      const view = new DataView(bufAb);
      const qw = size === 8 ? 1 : 0;
      const lock = slotIndex(this.nrVcpus, server.id, Slot.bufLock);
      while (Atomics.compareExchange(this.ctl, lock, 0, 1) !== 0) Atomics.wait(this.ctl, lock, 1, LOCK_WAIT_MS);
      try {
        const read = Atomics.load(pointers, 0);
        const write = Atomics.load(pointers, 1);
        if (((write - read) >>> 0) >= BufferedPage.slotCount - qw) return false; // full: go synchronous
        const header = (type | ((Math.log2(size) << BufIoreq.SIZE_SHIFT) << 8) | (addr << BufIoreq.ADDR_SHIFT)) >>> 0; // dir bit 0: write
        const slot = (ptr: number): number => BufferedPage.slots + (ptr % BufferedPage.slotCount) * BufferedPage.slotSize;
        view.setUint32(slot(write), header, true);
        view.setUint32(slot(write) + BufIoreq.data, Number(data & 0xffffffffn), true);
        if (qw === 1) {
          view.setUint32(slot((write + 1) >>> 0), header, true);
          view.setUint32(slot((write + 1) >>> 0) + BufIoreq.data, Number(data >> 32n), true);
        }
        // Entries before the pointer that publishes them.
        Atomics.store(pointers, 1, (write + 1 + qw) >>> 0);
        if (server.bufMode === BufioreqMode.ATOMIC) canonicalisePointers(bufAb);
      } finally {
        Atomics.store(this.ctl, lock, 0);
        Atomics.notify(this.ctl, lock, 1);
      }
      eventfdWrite(server.bufEvtFd);
      return true;
    } finally {
      this.leave(server);
    }
  }

  /** Writes to ioreq_server frames: COPY ioreqs to the claiming server, or RAM when unclaimed. */
  private writeProtected(at: number, src: Uint8Array, page: Uint8Array): void {
    for (const [chunk, size] of alignedChunks(at, src.length)) {
      for (;;) {
        const snap = this.snapshot();
        const claim = snap.claimId >= 0 && (snap.claimFlags & IoreqMemAccess.WRITE) !== 0 ? snap.servers[snap.claimId] : undefined;
        if (claim === undefined) {
          // Nobody claims the type: Xen's p2m entries for it are writable. (`page` starts at `at`.)
          page.set(src.subarray(chunk - at, chunk - at + size), chunk - at);
          this.markWritten(frameOf(chunk), false);
          break;
        }
        const result = this.sendSync(claim, {
          type: IoreqType.COPY,
          addr: BigInt(chunk),
          size,
          count: 1,
          dataIsPtr: false,
          read: false,
          df: false,
          data: readLe(src, chunk - at, size),
        });
        if (result !== RETRY) break;
      }
    }
  }

  /**
   * Logs a write to frame `pfn` (after the write): a frame write-protected for track_dirty_vram
   * becomes dirty (its protection is lifted, as Xen's write fault makes the entry ram_rw), and
   * global log-dirty marks guest-RAM frames.
   */
  private markWritten(pfn: number, ramRw: boolean): void {
    const snap = this.snapshot();
    if (ramRw && snap.vramNr > 0 && pfn >= snap.vramFirst && pfn < snap.vramFirst + snap.vramNr) {
      const i = pfn - snap.vramFirst;
      const bit = 1 << (i & 31);
      if ((Atomics.load(this.vramArmed, i >>> 5) & bit) !== 0) Atomics.and(this.vramArmed, i >>> 5, ~bit);
    }
    if (snap.logDirty && pfn < this.ramPages) this.logDirty.markPage(pfn);
  }

  /** The type and page of frame `gfn` (holes: mmio_dm, page -1). */
  private resolve(snap: Snapshot, gfn: number): { type: number; page: number } {
    if (gfn < this.ramPages) {
      const e = Atomics.load(this.p2m, gfn);
      return { type: p2mType(e), page: p2mPage(e) };
    }
    const ex = snap.extents;
    let lo = 0;
    let hi = ex.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const e = ex[mid]!;
      if (gfn < e.first) hi = mid - 1;
      else if (gfn >= e.first + e.nr) lo = mid + 1;
      else return { type: HvmMemType.RAM_RW, page: e.page + (gfn - e.first) };
    }
    return { type: HvmMemType.MMIO_DM, page: -1 };
  }

  /** The bytes of page `page` in this vCPU's mapping of its pool. */
  private pageBytes(page: number): Uint8Array {
    const loc = pageLocation(page, this.ramPages);
    return (loc.pool === 0 ? this.ram : this.extra).subarray(loc.offset, loc.offset + XEN_PAGE_SIZE);
  }

  /**
   * Calls `visit(address, length, type, bytes)` for the part of `[start, start + length)` in each
   * frame; `bytes` are that part of the frame's page, or null for a hole.
   */
  private walkFrames(start: number, length: number, visit: (at: number, n: number, type: number, bytes: Uint8Array | null) => void): void {
    const snap = this.snapshot();
    let at = start;
    const end = start + length;
    while (at < end) {
      const frame = frameOf(at);
      const n = Math.min(end, (frame + 1) * XEN_PAGE_SIZE) - at;
      const { type, page } = this.resolve(snap, frame);
      const off = at - frame * XEN_PAGE_SIZE;
      visit(at, n, type, page < 0 ? null : this.pageBytes(page).subarray(off, off + n));
      at += n;
    }
  }

  /** True when every frame of `[start, start + length)` is guest RAM (has a page that is not mmio_dm). */
  private isRam(start: bigint, length: bigint): boolean {
    if (start + length - 1n > BigInt(SIM_MAX_GFN) * BigInt(XEN_PAGE_SIZE)) return false;
    const snap = this.snapshot();
    for (let f = Number(start / BigInt(XEN_PAGE_SIZE)); f <= Number((start + length - 1n) / BigInt(XEN_PAGE_SIZE)); f++) {
      const { type, page } = this.resolve(snap, f);
      if (page < 0 || type === HvmMemType.MMIO_DM) return false;
    }
    return true;
  }

  /** Guest memory as a device model's copy would see it: through the p2m, without any semantics. */
  private rawRead(gpa: bigint, length: number): Uint8Array {
    const out = new Uint8Array(length);
    this.walkFrames(Number(gpa), length, (at, _n, _type, bytes) => {
      if (bytes !== null) out.set(bytes, at - Number(gpa));
    });
    return out;
  }

  /**
   * Checks a range the guest addresses as memory: guest RAM's frames (whatever their type), or
   * frames beyond guest RAM that hold pages.
   */
  private ramRange(gpa: number | bigint, length: number): number {
    if (!Number.isInteger(length) || length < 0) throw new MdevError('EINVAL', `must be a non-negative integer, got ${describe(length)}`, 'length');
    const start = typeof gpa === 'bigint' ? gpa : Number.isInteger(gpa) ? BigInt(gpa) : -1n;
    if (start < 0n) throw new MdevError('EINVAL', `must be a non-negative integer address, got ${describe(gpa)}`, 'gpa');
    const end = start + BigInt(length);
    if (end > BigInt(this.ramBytes)) {
      const snap = this.snapshot();
      const page = BigInt(XEN_PAGE_SIZE);
      const first = start > BigInt(this.ramBytes) ? start / page : BigInt(this.ramPages);
      for (let f = first; f * page < end; f++) {
        if (f > BigInt(SIM_MAX_GFN) || this.resolve(snap, Number(f)).page < 0) {
          throw new MdevError('EFAULT', `[0x${start.toString(16)}, +${length}) is not within guest RAM (${this.ramBytes} bytes) nor within pages beyond it`, 'gpa');
        }
      }
    }
    return Number(start);
  }

  /**
   * Xen's mapcache invalidation: when pages left the p2m since this vCPU last ran, it sends
   * IOREQ_TYPE_INVALIDATE to every enabled server (highest id first, as Xen walks them) and waits
   * for each before going on.
   */
  private serviceInvalidate(): void {
    if (Atomics.load(this.ctl, invalidateIndex(this.nrVcpus, this.index)) === 0) return;
    if (Atomics.exchange(this.ctl, invalidateIndex(this.nrVcpus, this.index), 0) === 0) return;
    const snap = this.snapshot();
    for (let id = MAX_IOREQ_SERVERS - 1; id >= 0; id--) {
      const server = snap.servers[id];
      if (server === undefined || !server.enabled) continue;
      this.sendSync(server, { type: IoreqType.INVALIDATE, addr: 0n, size: 4, count: 1, dataIsPtr: false, read: false, df: false, data: ALL_ONES });
    }
  }
}

/** What a vCPU waiting for its ioreq does on finding it in a state. */
export type IoreqWaitStep =
  /** READY or INPROCESS: keep waiting for the server's notification. */
  | 'wait'
  /** IORESP_READY: take the data and set the slot back to NONE. */
  | 'complete'
  /** NONE: the emulator is going away; Xen completes the access with all-ones. */
  | 'dying'
  /** Lower than a state already seen: Xen crashes the domain. */
  | 'backwards'
  /** Not a state: Xen crashes the domain. */
  | 'invalid';

/**
 * Xen's hvm_wait_for_io() as a step function: what to do on finding `state` after having seen
 * `prev` (READY initially). States only move forward, and only transitions the vCPU observes can
 * be judged: READY, INPROCESS, READY again between two wake-ups looks like READY throughout.
 */
export function ioreqWaitStep(prev: number, state: number): IoreqWaitStep {
  if (state === IoreqState.NONE) return 'dying';
  if (state < prev) return 'backwards';
  if (state === IoreqState.IORESP_READY) return 'complete';
  if (state === IoreqState.READY || state === IoreqState.INPROCESS) return 'wait';
  return 'invalid';
}

/** Guest frame of an address (guest RAM may exceed 4 GiB: no 32-bit shifts). */
function frameOf(gpa: number): number {
  return Math.floor(gpa / XEN_PAGE_SIZE);
}

function unmapPages(p: ServerPages): void {
  munmap(p.ioreqAb);
  if (p.bufAb !== null) munmap(p.bufAb);
}

/** Xen's pointer canonicalisation for atomic rings: subtract whole laps from both pointers at once. */
function canonicalisePointers(bufAb: ArrayBuffer): void {
  const both = new BigUint64Array(bufAb, 0, 1); // read_pointer in the low half, write_pointer in the high
  for (let i = 0; i < BufferedPage.slotCount; i++) {
    const old = Atomics.load(both, 0);
    const read = Number(old & 0xffffffffn);
    if (read < BufferedPage.slotCount) return;
    const laps = Math.floor(read / BufferedPage.slotCount) * BufferedPage.slotCount;
    const write = Number(old >> 32n);
    const next = BigInt(read - laps) | (BigInt((write - laps) >>> 0) << 32n);
    Atomics.compareExchange(both, 0, old, next);
  }
}

/** Naturally aligned chunks of at most 8 bytes covering `[at, at + length)`. */
function* alignedChunks(at: number, length: number): Generator<[number, 1 | 2 | 4 | 8]> {
  const end = at + length;
  while (at < end) {
    let size: 1 | 2 | 4 | 8 = 8;
    while (size > 1 && (at % size !== 0 || at + size > end)) size = (size >> 1) as 1 | 2 | 4;
    yield [at, size];
    at += size;
  }
}

function readLe(bytes: Uint8Array, offset: number, size: number): bigint {
  let v = 0n;
  for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[offset + i]!);
  return v;
}

function leBytes(value: bigint, size: number): Uint8Array {
  const out = new Uint8Array(size);
  let v = value;
  for (let i = 0; i < size; i++) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

function mask(value: bigint, size: number): bigint {
  return BigInt.asUintN(8 * size, value);
}

const SIZES: Readonly<Record<SimSpace, readonly number[]>> = { pio: [1, 2, 4], pci: [1, 2, 4], mmio: [1, 2, 4, 8] };

function checkAccess(a: SimAccess): SimAccess {
  if (a === null || typeof a !== 'object') throw new MdevError('EINVAL', `must be an access object, got ${describe(a)}`, 'access');
  const sizes = SIZES[a.space];
  if (sizes === undefined) throw new MdevError('EINVAL', `must be 'pio', 'mmio' or 'pci', got ${describe(a.space)}`, 'space');
  if (typeof a.addr !== 'bigint' || a.addr < 0n || a.addr >= 1n << 64n) throw new MdevError('EINVAL', `must be a 64-bit bigint, got ${describe(a.addr)}`, 'addr');
  if (a.space === 'pio' && a.addr > 0xffffn) throw new MdevError('EINVAL', `ports are 16-bit, got 0x${a.addr.toString(16)}`, 'addr');
  if (!sizes.includes(a.size)) throw new MdevError('EINVAL', `${a.space} accesses are ${sizes.join('/')} bytes, got ${describe(a.size)}`, 'size');
  if (a.dir !== 'read' && a.dir !== 'write') throw new MdevError('EINVAL', `must be 'read' or 'write', got ${describe(a.dir)}`, 'dir');
  if (a.data !== undefined && (typeof a.data !== 'bigint' || a.data < 0n || a.data >= 1n << 64n)) {
    throw new MdevError('EINVAL', `must be a 64-bit bigint, got ${describe(a.data)}`, 'data');
  }
  if (a.count !== undefined && (!Number.isInteger(a.count) || a.count < 1 || a.count > 0xffffffff)) {
    throw new MdevError('EINVAL', `must be an integer in [1, 2^32), got ${describe(a.count)}`, 'count');
  }
  if (a.dataIsPtr !== undefined && typeof a.dataIsPtr !== 'boolean') throw new MdevError('EINVAL', `must be a boolean, got ${describe(a.dataIsPtr)}`, 'dataIsPtr');
  if (a.df !== undefined && typeof a.df !== 'boolean') throw new MdevError('EINVAL', `must be a boolean, got ${describe(a.df)}`, 'df');
  return a;
}
