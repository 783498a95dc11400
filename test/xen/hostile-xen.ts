// The test playing a hostile Xen against an IoreqServer running over the simulator: it maps the
// server's ioreq pages itself (the memfds the simulator hands out as XENMEM_acquire_resource
// frames), writes slot and ring fields directly, rings the vCPUs' guest→server eventfds and waits
// for the server→guest ones. Shared by ioreq-adversarial.test.ts and ioreq-fuzz.test.ts.
import { eventfdRead, eventfdWrite } from '../../src/native/fd.js';
import { mmapFd, munmap } from '../../src/native/mmap.js';
import { FdWatcher } from '../../src/native/watcher.js';
import { BufIoreq, BufferedPage, Ioreq, IoreqBits, IoreqState } from '../../adapters/xen/ioreq-abi.js';
import type { SimHypervisor } from '../../adapters/xen/sim/hypervisor.js';
import { Slot, slotIndex } from '../../adapters/xen/sim/layout.js';

/** The raw fields of one `struct ioreq`. */
export interface RawSlot {
  addr: bigint;
  data: bigint;
  count: number;
  size: number;
  vpEport: number;
  pad: number;
  /** The whole byte 30: state (bits 0-3), data_is_ptr, dir, df, pad. */
  bits: number;
  type: number;
}

/** A request as a hostile (or correct) Xen would write it; the state is READY. */
export interface HostileRequest {
  type: number;
  addr: bigint;
  size: number;
  read: boolean;
  data?: bigint;
  count?: number;
  dataIsPtr?: boolean;
  df?: boolean;
}

/** One `struct buf_ioreq` as written into the ring. */
export interface RingEntry {
  type: number;
  /** Size code: 0 = 1 byte, 1 = 2, 2 = 4, 3 = 8 (two slots). */
  sizeCode: number;
  read?: boolean;
  /** 20-bit address. */
  addr: number;
  /** Low 32 bits of the data. */
  data: number;
}

/** How long a round trip may take before the test fails instead of hanging (a bound, not a synchronisation). */
const ROUND_TRIP_LIMIT_MS = 10_000;

export class HostileXen {
  readonly page: Uint8Array;
  readonly view: DataView;
  readonly ring: Uint8Array | null;
  readonly ringView: DataView | null;
  /** The hypervisor's own ends of the event channels (the server holds duplicates). */
  readonly guestToServer: number[] = [];
  readonly serverToGuest: number[] = [];
  readonly bufGuestToServer: number;
  private readonly pageAb: ArrayBuffer;
  private readonly ringAb: ArrayBuffer | null;

  constructor(
    readonly hv: SimHypervisor,
    readonly serverId: number,
  ) {
    const res = hv.ioreqServerResources(serverId);
    this.pageAb = mmapFd(res.ioreqFd, 4096, { writable: true, shared: true });
    this.page = new Uint8Array(this.pageAb);
    this.view = new DataView(this.pageAb);
    this.ringAb = res.bufioreqFd === null ? null : mmapFd(res.bufioreqFd, 4096, { writable: true, shared: true });
    this.ring = this.ringAb === null ? null : new Uint8Array(this.ringAb);
    this.ringView = this.ringAb === null ? null : new DataView(this.ringAb);
    const ctl = new Int32Array(hv.vcpuDescriptor(0).ctl);
    const word = (w: number) => Atomics.load(ctl, slotIndex(hv.nrVcpus, serverId, w));
    for (let v = 0; v < hv.nrVcpus; v++) {
      this.guestToServer.push(word(Slot.vcpus + 3 * v));
      this.serverToGuest.push(word(Slot.vcpus + 3 * v + 1));
    }
    this.bufGuestToServer = word(Slot.bufEvtFd);
  }

  close(): void {
    munmap(this.pageAb);
    if (this.ringAb) munmap(this.ringAb);
  }

  // ---- the synchronous page ---------------------------------------------------------------

  raw(vcpu: number): RawSlot {
    const b = vcpu * Ioreq.sizeof;
    return {
      addr: this.view.getBigUint64(b + Ioreq.addr, true),
      data: this.view.getBigUint64(b + Ioreq.data, true),
      count: this.view.getUint32(b + Ioreq.count, true),
      size: this.view.getUint32(b + Ioreq.size, true),
      vpEport: this.view.getUint32(b + Ioreq.vpEport, true),
      pad: this.view.getUint16(b + Ioreq.vpEport + 4, true),
      bits: Atomics.load(this.page, b + Ioreq.bits),
      type: this.page[b + Ioreq.type]!,
    };
  }

  /** Writes every field, the bits byte last (a release store, as Xen does). */
  writeRaw(vcpu: number, s: RawSlot): void {
    const b = vcpu * Ioreq.sizeof;
    this.view.setBigUint64(b + Ioreq.addr, s.addr, true);
    this.view.setBigUint64(b + Ioreq.data, s.data, true);
    this.view.setUint32(b + Ioreq.count, s.count, true);
    this.view.setUint32(b + Ioreq.size, s.size, true);
    this.view.setUint32(b + Ioreq.vpEport, s.vpEport, true);
    this.view.setUint16(b + Ioreq.vpEport + 4, s.pad, true);
    this.page[b + Ioreq.type] = s.type;
    Atomics.store(this.page, b + Ioreq.bits, s.bits);
  }

  /** The 32 bytes of a slot (to compare before and after). */
  bytes(vcpu: number): number[] {
    return [...this.page.subarray(vcpu * Ioreq.sizeof, (vcpu + 1) * Ioreq.sizeof)];
  }

  state(vcpu: number): number {
    return Atomics.load(this.page, vcpu * Ioreq.sizeof + Ioreq.bits) & IoreqBits.STATE_MASK;
  }

  setState(vcpu: number, state: number): void {
    const at = vcpu * Ioreq.sizeof + Ioreq.bits;
    Atomics.store(this.page, at, (Atomics.load(this.page, at) & ~IoreqBits.STATE_MASK) | state);
  }

  data(vcpu: number): bigint {
    return this.view.getBigUint64(vcpu * Ioreq.sizeof + Ioreq.data, true);
  }

  /** Writes a READY request into vCPU `vcpu`'s slot (vp_eport left alone). */
  fill(vcpu: number, r: HostileRequest): void {
    const old = this.raw(vcpu);
    this.writeRaw(vcpu, {
      addr: r.addr,
      data: r.data ?? 0n,
      count: r.count ?? 1,
      size: r.size,
      vpEport: old.vpEport,
      pad: 0,
      type: r.type,
      bits: IoreqState.READY | (r.read ? IoreqBits.DIR_READ : 0) | (r.dataIsPtr ? IoreqBits.DATA_IS_PTR : 0) | (r.df ? IoreqBits.DF : 0),
    });
  }

  /** Rings vCPU `vcpu`'s doorbell without waiting. */
  notify(vcpu: number): void {
    eventfdWrite(this.guestToServer[vcpu]!, 1n);
  }

  /** Takes whatever completion notifications are pending for `vcpu` (null: none). */
  takeCompletions(vcpu: number): bigint | null {
    return eventfdRead(this.serverToGuest[vcpu]!);
  }

  /**
   * Starts waiting for the server's next completion notification for `vcpu` (stale ones are
   * discarded first); resolves with the eventfd count read. Call `notify` after this.
   */
  nextCompletion(vcpu: number): Promise<bigint> {
    this.takeCompletions(vcpu);
    return new Promise<bigint>((resolve, reject) => {
      const timer = setTimeout(() => {
        w.close();
        reject(new Error(`no completion for vCPU ${vcpu} within ${ROUND_TRIP_LIMIT_MS} ms`));
      }, ROUND_TRIP_LIMIT_MS);
      const w = new FdWatcher(this.serverToGuest[vcpu]!, () => {
        const n = eventfdRead(this.serverToGuest[vcpu]!);
        if (n === null) return; // raced with a reader: keep waiting
        clearTimeout(timer);
        w.close();
        resolve(n);
      });
      w.start({ readable: true });
    });
  }

  /** Notifies vCPU `vcpu` and resolves when the server signals completion. */
  async roundTrip(vcpu: number): Promise<void> {
    const done = this.nextCompletion(vcpu);
    this.notify(vcpu);
    await done;
  }

  /**
   * A whole access as a correct Xen makes it: fill READY, notify, wait, check IORESP_READY, take
   * data, set the slot back to NONE.
   */
  async access(vcpu: number, r: HostileRequest): Promise<bigint> {
    this.fill(vcpu, r);
    await this.roundTrip(vcpu);
    const state = this.state(vcpu);
    if (state !== IoreqState.IORESP_READY) throw new Error(`vCPU ${vcpu}: state ${state} after completion`);
    const data = this.data(vcpu);
    this.setState(vcpu, IoreqState.NONE);
    return data;
  }

  // ---- the buffered ring ------------------------------------------------------------------

  get readPointer(): number {
    return this.ringView!.getUint32(BufferedPage.readPointer, true);
  }

  get writePointer(): number {
    return this.ringView!.getUint32(BufferedPage.writePointer, true);
  }

  setPointers(read: number, write: number): void {
    this.ringView!.setUint32(BufferedPage.readPointer, read >>> 0, true);
    this.ringView!.setUint32(BufferedPage.writePointer, write >>> 0, true);
  }

  /** Writes entry `e` into ring slot `ptr % 511` (pointers untouched). */
  putEntry(ptr: number, e: RingEntry): void {
    const at = BufferedPage.slots + ((ptr >>> 0) % BufferedPage.slotCount) * BufferedPage.slotSize;
    const header = (e.type | (((e.read ? BufIoreq.DIR_READ : 0) | (e.sizeCode << BufIoreq.SIZE_SHIFT)) << 8) | (e.addr << BufIoreq.ADDR_SHIFT)) >>> 0;
    this.ringView!.setUint32(at, header, true);
    this.ringView!.setUint32(at + BufIoreq.data, e.data >>> 0, true);
  }

  notifyBuffered(): void {
    eventfdWrite(this.bufGuestToServer, 1n);
  }
}

/**
 * Resolves once `cond()` holds, checking after every turn of the event loop (each turn lets the
 * server's event callbacks run). Fails after `limitMs` instead of hanging.
 */
export function until(cond: () => boolean, what: string, limitMs = 10_000): Promise<void> {
  const deadline = performance.now() + limitMs;
  return new Promise<void>((resolve, reject) => {
    const check = (): void => {
      if (cond()) resolve();
      else if (performance.now() > deadline) reject(new Error(`timed out waiting for ${what}`));
      else setImmediate(check);
    };
    check();
  });
}
