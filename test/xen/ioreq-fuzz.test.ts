// Property test of the IOREQ server against a hostile Xen: random `struct ioreq` contents (every
// field, the state included) written straight into the shared page for two vCPUs, in random
// order, each followed by a doorbell. Whatever is written:
// - the server survives and keeps serving;
// - every slot that was READY when notified ends IORESP_READY, is completed exactly once (one
//   completion signal, one more engine `ioreqs`), and nothing but its state nibble (and, for a
//   read, its data) changes;
// - a slot that was not READY is not touched at all, and no completion is signalled for it;
// - afterwards a correct access still reads the edu ID register.
import fc from 'fast-check';
import { FUZZING, fuzzParams, fuzzTimeout } from '../fuzz-budget.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EduDevice, EDU } from '../../examples/edu/index.js';
import { IoreqServer } from '../../adapters/xen/ioreq-server.js';
import { BufIoreq, BufferedPage, IoreqBits, IoreqState, IoreqType, pciSbdf } from '../../adapters/xen/ioreq-abi.js';
import { SimHypervisor } from '../../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../../adapters/xen/sim/host.js';
import { SimVcpuThread } from '../../adapters/xen/sim/vcpu-thread.js';
import { HostileXen, until, type RawSlot } from './hostile-xen.js';

const BAR = 0xfe000000n;
const SBDF = pciSbdf(0, 0, 5, 0);
const RAM_BYTES = 16 << 20;
const NR_VCPUS = 2;
const cfgAddr = (sbdf: number, reg: number): bigint => (BigInt(sbdf >>> 0) << 32n) | BigInt(reg >>> 0);

let hv: SimHypervisor;
let host: SimXenHost;
let device: EduDevice;
let server: IoreqServer;
let xen: HostileXen;

beforeAll(() => {
  hv = new SimHypervisor({ nrVcpus: NR_VCPUS, ramBytes: RAM_BYTES, vcpuTimeoutMs: 10_000 });
  host = new SimXenHost(hv);
  device = new EduDevice();
  server = new IoreqServer(device, host, { pci: { segment: 0, bus: 0, device: 5, fn: 0 }, fixedBars: { 0: BAR }, log: () => {} });
  server.start();
  xen = new HostileXen(hv, server.id);
});

afterAll(() => {
  server?.stop();
  xen?.close();
  host?.close();
  hv?.close();
});

const engine = () => server.engineStats() as Record<'ioreqs' | 'spurious' | 'bad' | 'buffered', number>;

// ---- arbitraries -------------------------------------------------------------------------------

const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const u32 = fc.integer({ min: 0, max: 0xffffffff });

const interestingAddr = fc.constantFrom(
  ...[EDU.ID, EDU.LIVENESS, EDU.FACTORIAL, EDU.STATUS, EDU.IRQ_RAISE, EDU.DMA_SRC, EDU.DMA_COUNT, EDU.DMA_CMD, EDU.DMA_BUFFER, EDU.DMA_BUFFER + 4092].map((o) => BAR + BigInt(o)),
  BAR - 4n,
  BAR + 0xffffcn,
  BAR + 0xffffen,
  BAR + 0x100000n,
  0n,
  0xcf8n,
  0xcfcn,
  0x60n,
  cfgAddr(SBDF, 0),
  cfgAddr(SBDF, 0x3c),
  cfgAddr(SBDF, 0xfc),
  cfgAddr(SBDF, 0x100),
  cfgAddr(SBDF, 0xffffffff),
  cfgAddr(pciSbdf(0, 0, 6, 0), 0),
  cfgAddr(pciSbdf(0xffff, 0xff, 31, 7), 0),
);

const interestingData = fc.constantFrom(0n, 1n, 0x1000n, 0x100000n, BigInt(RAM_BYTES - 8), BigInt(RAM_BYTES), 1n << 52n, 1n << 63n, (1n << 64n) - 1n);

/** One slot's contents, any bit pattern, weighted towards what reaches the interesting code. */
const slotArb: fc.Arbitrary<RawSlot> = fc
  .record({
    addr: fc.oneof({ arbitrary: interestingAddr, weight: 3 }, { arbitrary: u64, weight: 1 }),
    data: fc.oneof({ arbitrary: interestingData, weight: 1 }, { arbitrary: fc.bigInt({ min: 0n, max: BigInt(RAM_BYTES - 1) }), weight: 1 }, { arbitrary: u64, weight: 1 }),
    count: fc.oneof(
      { arbitrary: fc.constant(1), weight: 5 },
      { arbitrary: fc.constantFrom(0, 2, 3, 16, 4096, 4097, 1 << 20, 0x7fffffff, 0xffffffff), weight: 2 },
      { arbitrary: fc.integer({ min: 0, max: 64 }), weight: 2 },
      { arbitrary: u32, weight: 1 },
    ),
    size: fc.oneof({ arbitrary: fc.constantFrom(1, 2, 4, 8), weight: 4 }, { arbitrary: fc.constantFrom(0, 3, 5, 6, 7, 16), weight: 1 }, { arbitrary: u32, weight: 1 }),
    vpEport: u32,
    pad: fc.integer({ min: 0, max: 0xffff }),
    state: fc.oneof({ arbitrary: fc.constant(IoreqState.READY as number), weight: 3 }, { arbitrary: fc.integer({ min: 0, max: 15 }), weight: 1 }),
    flags: fc.integer({ min: 0, max: 0xf }), // data_is_ptr, dir, df, and the pad bit
    type: fc.oneof({ arbitrary: fc.constantFrom(IoreqType.PIO, IoreqType.COPY, IoreqType.PCI_CONFIG, IoreqType.TIMEOFFSET, IoreqType.INVALIDATE), weight: 4 }, { arbitrary: fc.integer({ min: 0, max: 255 }), weight: 1 }),
  })
  .map(({ state, flags, ...s }) => {
    let bits = state | (flags << 4);
    // A config write to this device's own registers is a legitimate reconfiguration (it may move or
    // disable the BAR the final check reads), not an attack: make those reads.
    if (s.type === IoreqType.PCI_CONFIG && s.addr >> 32n === BigInt(SBDF) && (s.addr & 0xffffffffn) < 256n) bits |= IoreqBits.DIR_READ;
    return { ...s, bits };
  });

/** One wave: new contents for some of the vCPUs' slots, written and rung in a random order. */
const waveArb = fc.record({
  slots: fc.tuple(fc.option(slotArb, { nil: null }), fc.option(slotArb, { nil: null })),
  vcpu1First: fc.boolean(),
  /** Write every slot before the first doorbell, or ring each right after writing it. */
  writeAllFirst: fc.boolean(),
});

// ---- the property -------------------------------------------------------------------------------

const isReady = (s: RawSlot) => (s.bits & IoreqBits.STATE_MASK) === IoreqState.READY;

async function runWave(wave: { slots: [RawSlot | null, RawSlot | null]; vcpu1First: boolean; writeAllFirst: boolean }): Promise<void> {
  const order = wave.vcpu1First ? [1, 0] : [0, 1];
  const before = [0, 1].map((v) => xen.bytes(v));
  const written = order.filter((v) => wave.slots[v] !== null);
  const ready = written.filter((v) => isReady(wave.slots[v]!));
  const { ioreqs, spurious } = engine();
  const completions = new Map(ready.map((v) => [v, xen.nextCompletion(v)] as const));
  if (wave.writeAllFirst) {
    for (const v of written) xen.writeRaw(v, wave.slots[v]!);
    for (const v of written) xen.notify(v);
  } else {
    for (const v of written) {
      xen.writeRaw(v, wave.slots[v]!);
      xen.notify(v);
    }
  }
  for (const [v, n] of completions) expect(await n, `completion signals for vCPU ${v}`).toBe(1n);
  const notReady = written.length - ready.length;
  await until(() => engine().spurious === spurious + notReady, 'the doorbells of slots that were not READY');

  // Every doorbell has been acted on (each is one ioreq or one spurious look), and the server
  // signals a completion before it returns: any further signal would be here by now.
  for (let v = 0; v < NR_VCPUS; v++) expect(xen.takeCompletions(v), `an unexpected completion signal for vCPU ${v}`).toBeNull();
  expect(engine().ioreqs - ioreqs).toBe(ready.length);
  expect(engine().spurious - spurious).toBe(notReady);
  for (let v = 0; v < NR_VCPUS; v++) {
    const sent = wave.slots[v];
    const now = xen.raw(v);
    if (sent === null) {
      expect(xen.bytes(v), `vCPU ${v} was not written in this wave`).toEqual(before[v]);
    } else if (!isReady(sent)) {
      expect(now, `vCPU ${v} was not READY: untouched`).toEqual(sent);
    } else {
      const read = (sent.bits & IoreqBits.DIR_READ) !== 0;
      expect(now, `vCPU ${v} was READY: completed, nothing else changed`).toEqual({
        ...sent,
        bits: (sent.bits & ~IoreqBits.STATE_MASK) | IoreqState.IORESP_READY,
        data: read ? now.data : sent.data,
      });
    }
  }
}

/** A correct access on vCPU `v`, by hand: the edu ID register. */
async function cleanAccess(v: number): Promise<void> {
  const data = await xen.access(v, { type: IoreqType.COPY, addr: BAR + BigInt(EDU.ID), size: 4, read: true });
  expect(data).toBe(BigInt(EDU.ID_VALUE));
}

describe('IOREQ server fuzzed by a hostile Xen', () => {
  it('completes exactly the slots that were READY, once, touches no other, and keeps serving', { timeout: fuzzTimeout(60_000) }, async () => {
    const ports = [0, 1].map((v) => xen.raw(v).vpEport);
    const started = performance.now();
    await fc.assert(
      fc.asyncProperty(fc.array(waveArb, { minLength: 1, maxLength: 4 }), fc.integer({ min: 0, max: NR_VCPUS - 1 }), async (waves, clean) => {
        // Each wave checks its own signals; what a failed run (while shrinking) left behind goes.
        for (let v = 0; v < NR_VCPUS; v++) xen.takeCompletions(v);
        for (const wave of waves) await runWave(wave);
        await cleanAccess(clean);
      }),
      fuzzParams('Xen ioreq page: hostile slot contents (simulator, vCPU threads)', { numRuns: 500 }),
    );
    if (!FUZZING) expect(performance.now() - started).toBeLessThan(30_000);
    // Every run served at least one ioreq (a fuzzing run's count depends on its time budget).
    if (!FUZZING) expect(engine().ioreqs).toBeGreaterThan(500);
    // The slots are left as a hostile Xen left them; a correct one resets them, and a simulated
    // vCPU (which checks vp_eport, as Xen does) is served as if nothing had happened.
    for (let v = 0; v < NR_VCPUS; v++) xen.writeRaw(v, { ...xen.raw(v), vpEport: ports[v]!, pad: 0, bits: IoreqState.NONE });
    const vcpu1 = await SimVcpuThread.start(hv.vcpuDescriptor(1), { timeoutMs: 10_000 });
    try {
      expect(await vcpu1.access({ space: 'mmio', addr: BAR + BigInt(EDU.ID), size: 4, dir: 'read' })).toBe(BigInt(EDU.ID_VALUE));
      expect(await vcpu1.access({ space: 'pci', addr: cfgAddr(SBDF, 0), size: 4, dir: 'read' })).toBe(0x11e81234n);
    } finally {
      await vcpu1.close();
    }
  });
});

// ---- the buffered ring ---------------------------------------------------------------------------

/** What the server should make of the ring as it stands: a model of Xen's and QEMU's reading of it. */
function expectedDrain(rp: number, wp: number) {
  const out = { entries: 0, bad: 0, timeOffsets: 0, invalidates: 0, finalRead: wp };
  const used = (wp - rp) >>> 0;
  if (used > BufferedPage.slotCount) {
    out.bad = 1; // resynchronised: read pointer := write pointer, no entry acted on
    return out;
  }
  const view = xen.ringView!;
  let at = rp;
  while (at !== wp) {
    const slot = BufferedPage.slots + (at % BufferedPage.slotCount) * BufferedPage.slotSize;
    const type = view.getUint8(slot + BufIoreq.type);
    const flags = view.getUint8(slot + BufIoreq.flags);
    const qw = ((flags & BufIoreq.SIZE_MASK) >> BufIoreq.SIZE_SHIFT) === 3;
    if (qw && ((wp - at) >>> 0) < 2) {
      out.finalRead = at; // the second half is not published: wait for it
      break;
    }
    out.entries++;
    if (flags & BufIoreq.DIR_READ) out.bad++;
    else if (type === IoreqType.TIMEOFFSET) out.timeOffsets++;
    else if (type === IoreqType.INVALIDATE) out.invalidates++;
    else if (type !== IoreqType.PIO && type !== IoreqType.COPY) out.bad++; // PCI_CONFIG (SBDF 0 is not ours) and unknown types
    at = (at + (qw ? 2 : 1)) >>> 0;
  }
  return out;
}

const ringEntryArb = fc.record({
  type: fc.oneof({ arbitrary: fc.constantFrom(IoreqType.PIO, IoreqType.COPY, IoreqType.PCI_CONFIG, IoreqType.TIMEOFFSET, IoreqType.INVALIDATE), weight: 4 }, { arbitrary: fc.integer({ min: 0, max: 255 }), weight: 1 }),
  flags: fc.integer({ min: 0, max: 255 }), // pad, dir, size code, and bits nobody defines
  addrHigh: fc.integer({ min: 0, max: 0xfff }), // the upper bits of the 20-bit address
  data: u32,
});

const ringArb = fc.record({
  readPointer: fc.oneof(fc.integer({ min: 0, max: 2 * BufferedPage.slotCount }), fc.constantFrom(0xffffffff - 3, 0x7fffffff), u32),
  used: fc.oneof({ arbitrary: fc.integer({ min: 0, max: 40 }), weight: 4 }, { arbitrary: fc.constantFrom(BufferedPage.slotCount - 1, BufferedPage.slotCount, BufferedPage.slotCount + 1), weight: 1 }, { arbitrary: u32, weight: 1 }),
  entries: fc.array(ringEntryArb, { maxLength: 48 }),
  /** Every other slot of the ring (so that a run, and a counterexample, stands on its own). */
  filler: ringEntryArb,
});

describe('IOREQ server fuzzed by a hostile Xen through the buffered ring', () => {
  it('takes exactly the entries a correct reading of the ring finds, never loops, and keeps serving', { timeout: fuzzTimeout(60_000) }, async () => {
    const started = performance.now();
    await fc.assert(
      fc.asyncProperty(ringArb, async ({ readPointer, used, entries, filler }) => {
        const rp = readPointer >>> 0;
        const wp = (rp + used) >>> 0;
        // Entries from the read pointer on, the filler in every other slot.
        for (let i = 0; i < BufferedPage.slotCount; i++) {
          const e = entries[i] ?? filler;
          const slot = BufferedPage.slots + (((rp + i) >>> 0) % BufferedPage.slotCount) * BufferedPage.slotSize;
          xen.ringView!.setUint32(slot, (e.type | (e.flags << 8) | (e.addrHigh << 20)) >>> 0, true);
          xen.ringView!.setUint32(slot + BufIoreq.data, e.data, true);
        }
        xen.setPointers(rp, wp);
        const want = expectedDrain(rp, wp);
        const before = { ...engine(), timeOffsets: server.stats.timeOffsets, invalidates: server.stats.invalidates };
        xen.notifyBuffered();
        // A synchronous ioreq drains the ring before it is served: once it completes, the ring
        // has been read at least once after it was written.
        await cleanAccess(0);
        expect(xen.readPointer).toBe(want.finalRead);
        expect(xen.writePointer).toBe(wp);
        expect(engine().buffered - before.buffered).toBe(want.entries);
        expect(engine().bad - before.bad).toBe(want.bad);
        expect(server.stats.timeOffsets - before.timeOffsets).toBe(want.timeOffsets);
        expect(server.stats.invalidates - before.invalidates).toBe(want.invalidates);
        expect(engine().ioreqs - before.ioreqs).toBe(1); // the clean access, and nothing else
      }),
      fuzzParams('Xen buffered ring: hostile pointers and entries (simulator)', { numRuns: 300 }),
    );
    if (!FUZZING) expect(performance.now() - started).toBeLessThan(30_000);
  });
});
