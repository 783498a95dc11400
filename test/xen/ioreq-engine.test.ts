// The native ioreq engine against a shared page filled by hand, as Xen (or the simulator) fills it.
import { describe, expect, it } from 'vitest';
import { EduDevice, EDU } from '../../examples/edu/index.js';
import { binding } from '../../src/native/binding.js';
import { closeFd, eventfdCreate, eventfdRead, eventfdWrite } from '../../src/native/fd.js';
import { FdWatcher } from '../../src/native/watcher.js';
import { createRegionTable } from '../../src/region-table.js';
import { BufferedPage, Ioreq, IoreqBits, IoreqState, IoreqType, pciSbdf } from '../../adapters/xen/ioreq-abi.js';
import { PCI } from '../../src/pci/constants.js';

interface Engine {
  start(): void;
  stop(): void;
  setRanges(r: unknown[]): void;
  setPciDevice(sbdf: number, size: number): void;
  poll(): void;
  stats(): Record<string, number>;
}
const IoreqEngine = binding['IoreqEngine'] as new (o: unknown) => Engine;

function setup(nrVcpus = 2, buffered: 'legacy' | 'atomic' | null = null) {
  const device = new EduDevice().realize();
  const table = createRegionTable(device, { maxAccess: 4096 });
  const sync = new Uint8Array(4096);
  const buf = new Uint8Array(4096);
  const g2s = [...Array(nrVcpus).keys()].map(() => eventfdCreate());
  const s2g = [...Array(nrVcpus).keys()].map(() => eventfdCreate());
  const bufFd = eventfdCreate();
  const slow: unknown[] = [];
  const bad: string[] = [];
  const engine = new IoreqEngine({
    sync,
    nrVcpus,
    buffered: buffered ? buf : null,
    atomicBuffered: buffered === 'atomic',
    events: { mode: 'eventfd', guestToServer: g2s, serverToGuest: s2g, bufGuestToServer: bufFd },
    regionTable: table,
    onIoreq: (req: { read: boolean; addr: bigint }) => {
      slow.push(req);
      return req.read ? 0x1234n : undefined;
    },
    onBadIoreq: (what: string) => bad.push(what),
  });
  engine.setRanges([{ kind: 'mmio', start: 0xfe000000n, end: 0xfe0fffffn, region: 0, offset: 0 }]);
  engine.setPciDevice(pciSbdf(0, 0, 5, 0), 256);
  const view = new DataView(sync.buffer);
  const fill = (vcpu: number, f: { type: number; addr: bigint; size: number; read: boolean; data?: bigint; count?: number; dataIsPtr?: boolean }) => {
    const b = vcpu * Ioreq.sizeof;
    view.setBigUint64(b + Ioreq.addr, f.addr, true);
    view.setBigUint64(b + Ioreq.data, f.data ?? 0n, true);
    view.setUint32(b + Ioreq.count, f.count ?? 1, true);
    view.setUint32(b + Ioreq.size, f.size, true);
    sync[b + Ioreq.type] = f.type;
    Atomics.store(sync, b + Ioreq.bits, IoreqState.READY | (f.read ? IoreqBits.DIR_READ : 0) | (f.dataIsPtr ? IoreqBits.DATA_IS_PTR : 0));
  };
  const state = (vcpu: number) => sync[vcpu * Ioreq.sizeof + Ioreq.bits]! & IoreqBits.STATE_MASK;
  const data = (vcpu: number) => view.getBigUint64(vcpu * Ioreq.sizeof + Ioreq.data, true);
  /** Rings vCPU `vcpu`'s doorbell and resolves when the server signals completion. */
  const roundTrip = (vcpu: number) =>
    new Promise<void>((resolve) => {
      const w = new FdWatcher(s2g[vcpu]!, () => {
        eventfdRead(s2g[vcpu]!);
        w.close();
        resolve();
      });
      w.start({ readable: true });
      eventfdWrite(g2s[vcpu]!, 1n);
    });
  const close = () => {
    engine.stop();
    for (const fd of [...g2s, ...s2g, bufFd]) closeFd(fd);
  };
  return { device, engine, sync, buf, view, fill, state, data, roundTrip, slow, bad, close, bufFd, guestToServer: (i: number) => g2s[i]! };
}

describe('native ioreq engine', () => {
  it('serves MMIO reads and writes natively and moves the state READY → IORESP_READY', async () => {
    const t = setup();
    t.engine.start();
    t.fill(1, { type: IoreqType.COPY, addr: 0xfe000000n + BigInt(EDU.ID), size: 4, read: true });
    await t.roundTrip(1);
    expect(t.state(1)).toBe(IoreqState.IORESP_READY);
    expect(t.data(1)).toBe(BigInt(EDU.ID_VALUE));
    t.fill(0, { type: IoreqType.COPY, addr: 0xfe000000n + BigInt(EDU.FACTORIAL), size: 4, read: false, data: 6n });
    await t.roundTrip(0);
    expect(t.device.regs.get('FACTORIAL')).toBe(720);
    expect(t.engine.stats()).toMatchObject({ ioreqs: 2, native: 1, js: 1 });
    t.close();
  });

  it('serves PCI config space for its SBDF', async () => {
    const t = setup();
    t.engine.start();
    const addr = (BigInt(pciSbdf(0, 0, 5, 0)) << 32n) | BigInt(PCI.VENDOR_ID);
    t.fill(0, { type: IoreqType.PCI_CONFIG, addr, size: 4, read: true });
    await t.roundTrip(0);
    expect(t.data(0)).toBe(0x11e81234n);
    t.close();
  });

  it('never acts on a slot that is not READY, and completes bad ioreqs with all-ones', async () => {
    const t = setup();
    t.engine.start();
    // A doorbell with the slot left NONE: counted as spurious, nothing written.
    t.sync[Ioreq.bits] = IoreqState.NONE;
    eventfdWrite(t.bufFd, 1n); // an empty buffered ring: harmless
    await new Promise<void>((resolve, reject) => {
      let turns = 0;
      const check = () => (t.engine.stats().spurious >= 1 ? resolve() : ++turns > 10000 ? reject(new Error('no wakeup')) : setImmediate(check));
      eventfdWrite(t.guestToServer(0), 1n);
      check();
    });
    expect(t.state(0)).toBe(IoreqState.NONE);
    t.fill(0, { type: IoreqType.COPY, addr: 0xfe000000n, size: 3, read: true });
    await t.roundTrip(0);
    expect(t.data(0)).toBe(0xffffffffffffffffn);
    expect(t.bad).toContain('bad ioreq size');
    t.fill(1, { type: 0x5a, addr: 0n, size: 4, read: true });
    await t.roundTrip(1);
    expect(t.state(1)).toBe(IoreqState.IORESP_READY);
    t.close();
  });

  it('hands rep string ops and unclaimed addresses to the slow path', async () => {
    const t = setup();
    t.engine.start();
    t.fill(0, { type: IoreqType.COPY, addr: 0xfe000000n, size: 4, read: false, count: 16, dataIsPtr: true, data: 0x1000n });
    await t.roundTrip(0);
    t.fill(0, { type: IoreqType.PIO, addr: 0xcf8n, size: 4, read: true });
    await t.roundTrip(0);
    expect(t.data(0)).toBe(0x1234n);
    expect(t.slow).toHaveLength(2);
    expect(t.slow[0]).toMatchObject({ count: 16, dataIsPtr: true, data: 0x1000n, read: false });
    t.close();
  });

  for (const mode of ['legacy', 'atomic'] as const) {
    it(`drains the buffered ring in order across wrap-around (${mode})`, async () => {
      const t = setup(1, mode);
      t.engine.start();
      const v = new DataView(t.buf.buffer);
      // Start near the end so the ring wraps; the last entry is an 8-byte write in two slots.
      let wp = BufferedPage.slotCount - 2;
      v.setUint32(BufferedPage.readPointer, wp, true);
      const slot = (i: number) => BufferedPage.slots + (i % BufferedPage.slotCount) * 8;
      const put = (addr: number, sizeCode: number, lo: number) => {
        const at = slot(wp++);
        v.setUint32(at, (addr << 12) | (sizeCode << 10) | IoreqType.COPY, true);
        v.setUint32(at + 4, lo, true);
      };
      // buf_ioreq addresses are 20 bits: the engine serves them through its ranges, so map a low window.
      t.engine.setRanges([{ kind: 'mmio', start: 0x0n, end: 0xfffffn, region: 0, offset: 0 }]);
      put(EDU.LIVENESS, 2, 0x0f0f0f0f);
      put(EDU.DMA_SRC, 3, 0x44332211);
      const hi = slot(wp++);
      v.setUint32(hi + 4, 0x88776655, true);
      v.setUint32(BufferedPage.writePointer, wp, true);
      await new Promise<void>((resolve) => {
        eventfdWrite(t.bufFd, 1n);
        const check = () => (v.getUint32(BufferedPage.readPointer, true) === wp ? resolve() : setImmediate(check));
        check();
      });
      expect(t.device.regs.get('LIVENESS')).toBe(0xf0f0f0f0);
      expect(t.device.regs.get64('DMA_SRC')).toBe(0x8877665544332211n);
      expect(t.engine.stats().buffered).toBe(2);
      t.close();
    });
  }
});
