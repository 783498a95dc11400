// The IOREQ server against a hostile Xen: the test maps the server's ioreq pages itself, writes
// slot and ring fields directly, and rings the event channels (eventfds in the simulator). The
// contract under test: a bad ioreq completes (reads with all-ones) and is logged; it never crashes
// the server, never stalls another vCPU, and the server never acts on a slot that is not READY,
// nor twice on one READY it was notified of once (XSA-262). After every hostile case the server
// still serves a correct vCPU (vCPU 1, a simulated vCPU in a worker thread) and a correct ioreq
// written by hand on the hostile vCPU 0.
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { timeScale } from '../helpers.js';
import { EduDevice, EDU } from '../../examples/edu/index.js';
import { IoreqServer } from '../../adapters/xen/ioreq-server.js';
import { IoreqBits, IoreqState, IoreqType, pciSbdf } from '../../adapters/xen/ioreq-abi.js';
import { SimHypervisor } from '../../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../../adapters/xen/sim/host.js';
import { SimVcpuThread } from '../../adapters/xen/sim/vcpu-thread.js';
import { packageRoot } from '../../src/native/binding.js';
import { PCI } from '../../src/pci/constants.js';
import { HostileXen, until, type HostileRequest, type RawSlot } from './hostile-xen.js';

const BAR = 0xfe000000n;
const SBDF = pciSbdf(0, 0, 5, 0);
const RAM_BYTES = 16 << 20;
const U64_ONES = (1n << 64n) - 1n;
/** Xen clips a rep string instruction to this many elements per ioreq (hvmemul_linear_to_phys). */
const XEN_MAX_REPS = 4096;

/** All-ones as the server answers a refused read of `size` bytes (a size that is not 1/2/4/8: 64 bits). */
const ones = (size: number): bigint => ([1, 2, 4, 8].includes(size) ? (1n << BigInt(8 * size)) - 1n : U64_ONES);
const cfgAddr = (sbdf: number, reg: number): bigint => (BigInt(sbdf >>> 0) << 32n) | BigInt(reg >>> 0);

let hv: SimHypervisor;
let host: SimXenHost;
let device: EduDevice;
let server: IoreqServer;
let xen: HostileXen;
let vcpu1: SimVcpuThread;
let logLines: string[];

beforeEach(async () => {
  hv = new SimHypervisor({ nrVcpus: 2, ramBytes: RAM_BYTES, vcpuTimeoutMs: 10_000 });
  host = new SimXenHost(hv);
  device = new EduDevice();
  logLines = [];
  server = new IoreqServer(device, host, { pci: { segment: 0, bus: 0, device: 5, fn: 0 }, fixedBars: { 0: BAR }, log: (l) => logLines.push(l) });
  server.start();
  xen = new HostileXen(hv, server.id);
  vcpu1 = await SimVcpuThread.start(hv.vcpuDescriptor(1), { timeoutMs: 10_000 });
});

afterEach(async () => {
  await vcpu1.close();
  server.stop();
  xen.close();
  host.close();
  hv.close();
});

const stats = () => server.engineStats() as Record<'ioreqs' | 'native' | 'js' | 'buffered' | 'bad' | 'spurious' | 'notifications', number>;

/** Sends `r` on vCPU 0 as the hostile side and returns the slot's data after completion. */
const hostile = (r: HostileRequest): Promise<bigint> => xen.access(0, r);

/** The server still serves both a correct simulated vCPU and a correct hand-written ioreq. */
async function stillServes(): Promise<void> {
  expect(await vcpu1.access({ space: 'mmio', addr: BAR + BigInt(EDU.ID), size: 4, dir: 'read' })).toBe(BigInt(EDU.ID_VALUE));
  await vcpu1.access({ space: 'mmio', addr: BAR + BigInt(EDU.FACTORIAL), size: 4, dir: 'write', data: 5n });
  expect(await vcpu1.access({ space: 'mmio', addr: BAR + BigInt(EDU.FACTORIAL), size: 4, dir: 'read' })).toBe(120n);
  expect(await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.ID), size: 4, read: true })).toBe(BigInt(EDU.ID_VALUE));
  expect(await hostile({ type: IoreqType.PCI_CONFIG, addr: cfgAddr(SBDF, PCI.VENDOR_ID), size: 4, read: true })).toBe(0x11e81234n);
}

const configSnapshot = (): number[] => Array.from({ length: 64 }, (_, i) => device.config.get(i * 4, 4));

describe('IOREQ server against a hostile Xen: malformed synchronous ioreqs', () => {
  it('completes reads of sizes 0/3/5/16/2^32-1 with all-ones, and writes of them change nothing', async () => {
    for (const size of [0, 3, 5, 6, 7, 9, 16, 0xffffffff]) {
      const bad = stats().bad;
      expect(await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.ID), size, read: true })).toBe(U64_ONES);
      expect(await hostile({ type: IoreqType.PIO, addr: 0xcfcn, size, read: true })).toBe(U64_ONES);
      expect(await hostile({ type: IoreqType.PCI_CONFIG, addr: cfgAddr(SBDF, PCI.VENDOR_ID), size, read: true })).toBe(U64_ONES);
      const cfg = configSnapshot();
      await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.LIVENESS), size, read: false, data: 0x12345678n });
      await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.DMA_BUFFER), size, read: false, data: U64_ONES });
      await hostile({ type: IoreqType.PCI_CONFIG, addr: cfgAddr(SBDF, PCI.COMMAND), size, read: false, data: 0n });
      expect(device.regs.get('LIVENESS')).toBe(0);
      expect(device.buffer.every((b) => b === 0)).toBe(true);
      expect(configSnapshot()).toEqual(cfg);
      expect(stats().bad - bad).toBe(6);
    }
    // A write's data field is the server's to leave alone: it is not a response.
    xen.fill(0, { type: IoreqType.COPY, addr: BAR + BigInt(EDU.LIVENESS), size: 3, read: false, data: 0xabcdefn });
    await xen.roundTrip(0);
    expect(xen.state(0)).toBe(IoreqState.IORESP_READY);
    expect(xen.data(0)).toBe(0xabcdefn);
    xen.setState(0, IoreqState.NONE);
    expect(logLines.some((l) => l.includes('bad ioreq size'))).toBe(true);
    await stillServes();
  });

  it('completes ioreqs of unknown types (reads all-ones, writes without effect) and logs them', async () => {
    for (const type of [3, 4, 5, 6, 9, 0x7f, 0xff]) {
      for (const size of [1, 2, 4, 8]) {
        expect(await hostile({ type, addr: BAR + BigInt(EDU.ID), size, read: true })).toBe(ones(size));
      }
      await hostile({ type, addr: BAR + BigInt(EDU.LIVENESS), size: 4, read: false, data: 0x1n });
      await hostile({ type, addr: BAR + BigInt(EDU.DMA_BUFFER), size: 4, read: false, data: 0x11223344n, count: 4, dataIsPtr: true });
      expect(logLines).toContain(`unknown ioreq type ${type}`);
    }
    expect(device.regs.get('LIVENESS')).toBe(0);
    expect(device.buffer.every((b) => b === 0)).toBe(true);
    await stillServes();
  });

  it('refuses count 0 and counts beyond what Xen sends, whole, and still serves the largest legal rep op', async () => {
    hv.ram.fill(0x5a, 0x100000, 0x100000 + 8 * XEN_MAX_REPS);
    // count 0 without data_is_ptr is no access at all: a read gives all-ones, not the register.
    expect(await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.ID), size: 4, read: true, count: 0 })).toBe(0xffffffffn);
    await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.LIVENESS), size: 4, read: false, count: 0, data: 7n });
    // count > 1 without data_is_ptr: one value cannot stand for several elements.
    expect(await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.ID), size: 4, read: true, count: 2 })).toBe(0xffffffffn);
    await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.LIVENESS), size: 4, read: false, count: 0xffffffff, data: 7n });
    expect(device.regs.get('LIVENESS')).toBe(0);
    // Rep ops: zero elements move nothing; more than Xen's clip are refused before any element moves.
    for (const count of [0, XEN_MAX_REPS + 1, 1 << 20, 0x7fffffff, 0xffffffff]) {
      const bad = stats().bad;
      await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.DMA_BUFFER), size: 1, read: false, count, dataIsPtr: true, data: 0x100000n });
      expect(device.buffer.every((b) => b === 0)).toBe(true);
      const before = hv.ram.slice(0x200000, 0x200000 + 16);
      await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.ID), size: 8, read: true, count, dataIsPtr: true, data: 0x200000n });
      expect(hv.ram.slice(0x200000, 0x200000 + 16)).toEqual(before);
      expect(stats().bad - bad).toBe(count === 0 ? 0 : 2);
    }
    // Xen's largest: 4096 one-byte elements, all moved.
    await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.DMA_BUFFER), size: 1, read: false, count: XEN_MAX_REPS, dataIsPtr: true, data: 0x100000n });
    expect(device.buffer.every((b) => b === 0x5a)).toBe(true);
    await stillServes();
  });

  it('completes rep ops whose guest buffer is not guest RAM, moving nothing, and keeps serving', async () => {
    device.buffer.fill(0xc3);
    const unmapped = [BigInt(RAM_BYTES), 0x10000000n, 1n << 52n, 1n << 63n, U64_ONES - 3n];
    for (const data of unmapped) {
      const bad = stats().bad;
      // Device → guest (rep ins / movs to RAM): completed; with data_is_ptr the data field is the
      // guest buffer's address, which the server leaves alone.
      expect(await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.DMA_BUFFER), size: 4, read: true, count: 4, dataIsPtr: true, data })).toBe(data);
      // Guest → device: nothing reaches the device.
      await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.DMA_BUFFER), size: 4, read: false, count: 4, dataIsPtr: true, data });
      await hostile({ type: IoreqType.PIO, addr: 0x60n, size: 2, read: false, count: 2, dataIsPtr: true, data });
      expect(stats().bad - bad).toBe(3);
      expect(device.buffer.every((b) => b === 0xc3)).toBe(true);
    }
    // A buffer that starts in RAM and runs past its end is refused whole, in both directions:
    // the ioreq has no way to report a partial count, so half a rep op would be a silent lie.
    const tail = RAM_BYTES - 8;
    hv.ram.fill(0x11, tail, RAM_BYTES);
    await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.DMA_BUFFER), size: 4, read: false, count: 4, dataIsPtr: true, data: BigInt(tail) });
    expect(device.buffer.every((b) => b === 0xc3)).toBe(true);
    await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.DMA_BUFFER), size: 4, read: true, count: 4, dataIsPtr: true, data: BigInt(tail) });
    expect([...hv.ram.subarray(tail)]).toEqual(new Array(8).fill(0x11));
    await stillServes();
  });

  it('refuses rep ops that walk below address 0 (df) or past 2^64, before moving any element', async () => {
    device.buffer.fill(0x77);
    hv.ram.fill(0x22, 0, 64);
    const bad = stats().bad;
    // Guest buffer walking down from 8: elements at 8, 4, 0, -4.
    await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.DMA_BUFFER + 12), size: 4, read: false, count: 4, dataIsPtr: true, data: 8n, df: true });
    expect(device.buffer.every((b) => b === 0x77)).toBe(true);
    await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.DMA_BUFFER + 12), size: 4, read: true, count: 4, dataIsPtr: true, data: 8n, df: true });
    expect(hv.ram.subarray(0, 64).every((b) => b === 0x22)).toBe(true);
    // Port rep op walking down: the port stays, the buffer runs below 0.
    await hostile({ type: IoreqType.PIO, addr: 0x60n, size: 4, read: true, count: 3, dataIsPtr: true, data: 4n, df: true });
    expect(hv.ram.subarray(0, 64).every((b) => b === 0x22)).toBe(true);
    // Device address walking down below 0 (MMIO steps the device address too).
    await hostile({ type: IoreqType.COPY, addr: 4n, size: 4, read: true, count: 3, dataIsPtr: true, data: 0x1000n, df: true });
    // Guest buffer and device address running past 2^64 upwards.
    await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.DMA_BUFFER), size: 8, read: false, count: 4, dataIsPtr: true, data: U64_ONES - 15n });
    await hostile({ type: IoreqType.COPY, addr: U64_ONES - 15n, size: 8, read: false, count: 4, dataIsPtr: true, data: 0x1000n });
    expect(device.buffer.every((b) => b === 0x77)).toBe(true);
    expect(stats().bad - bad).toBe(6);
    // A df rep op that stays above 0 is served (elements at 12, 8, 4, 0).
    hv.ram.set([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], 0);
    await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.DMA_BUFFER + 12), size: 4, read: false, count: 4, dataIsPtr: true, data: 12n, df: true });
    expect([...device.buffer.subarray(0, 16)]).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
    await stillServes();
  });

  it('answers PCI config ioreqs for other SBDFs and registers beyond config space with all-ones, and ignores writes to them', async () => {
    const cfg = configSnapshot();
    const others = [pciSbdf(0, 0, 6, 0), pciSbdf(0, 0, 5, 1), pciSbdf(0, 1, 5, 0), pciSbdf(1, 0, 5, 0), pciSbdf(0xffff, 0xff, 31, 7)];
    for (const sbdf of others) {
      for (const size of [1, 2, 4]) expect(await hostile({ type: IoreqType.PCI_CONFIG, addr: cfgAddr(sbdf, PCI.VENDOR_ID), size, read: true })).toBe(ones(size));
      await hostile({ type: IoreqType.PCI_CONFIG, addr: cfgAddr(sbdf, PCI.COMMAND), size: 2, read: false, data: 0n });
      await hostile({ type: IoreqType.PCI_CONFIG, addr: cfgAddr(sbdf, PCI.BAR0), size: 4, read: false, data: 0xffffffffn });
    }
    // Our SBDF, registers beyond its 256 bytes, or straddling the end, or wider than a config cycle.
    const beyond: [number, number][] = [
      [0x100, 4],
      [0xffc, 4],
      [0xfe, 4],
      [0xff, 2],
      [0xffffffff, 1],
      [0x80000000, 4],
      [PCI.VENDOR_ID, 8],
    ];
    for (const [reg, size] of beyond) {
      expect(await hostile({ type: IoreqType.PCI_CONFIG, addr: cfgAddr(SBDF, reg), size, read: true })).toBe(ones(size));
      await hostile({ type: IoreqType.PCI_CONFIG, addr: cfgAddr(SBDF, reg), size, read: false, data: 0n });
    }
    // A config ioreq is never a rep op.
    expect(await hostile({ type: IoreqType.PCI_CONFIG, addr: cfgAddr(SBDF, PCI.VENDOR_ID), size: 4, read: true, count: 2 })).toBe(0xffffffffn);
    await hostile({ type: IoreqType.PCI_CONFIG, addr: cfgAddr(SBDF, PCI.COMMAND), size: 2, read: false, count: 1, dataIsPtr: true, data: 0x1000n });
    expect(configSnapshot()).toEqual(cfg);
    await stillServes();
  });
});

describe('IOREQ server against a hostile Xen: slot states (XSA-262)', () => {
  /** Notifies vCPU 0 and waits until the server has looked at the slot and found nothing READY. */
  async function notifySpurious(): Promise<void> {
    const spurious = stats().spurious;
    xen.takeCompletions(0);
    xen.notify(0);
    await until(() => stats().spurious === spurious + 1, 'the server to look at the slot');
  }

  it('never touches a slot notified while NONE, INPROCESS, IORESP_READY or in an invalid state', async () => {
    for (const state of [IoreqState.NONE, IoreqState.INPROCESS, IoreqState.IORESP_READY, 4, 7, 0xf]) {
      // A complete, valid-looking request with everything but the state saying "serve me".
      xen.fill(0, { type: IoreqType.COPY, addr: BAR + BigInt(EDU.LIVENESS), size: 4, read: false, data: 0x55n });
      xen.setState(0, state);
      const before = xen.bytes(0);
      const ioreqs = stats().ioreqs;
      await notifySpurious();
      expect(xen.bytes(0)).toEqual(before);
      expect(stats().ioreqs).toBe(ioreqs);
      expect(xen.takeCompletions(0)).toBeNull(); // and no completion was signalled
      expect(device.regs.get('LIVENESS')).toBe(0);
    }
    xen.setState(0, IoreqState.NONE);
    await stillServes();
  });

  it('does not serve a completed slot flipped back to READY until notified again, then serves it once', async () => {
    const factorial = BigInt(EDU.FACTORIAL);
    await hostile({ type: IoreqType.COPY, addr: BAR + factorial, size: 4, read: false, data: 3n });
    xen.fill(0, { type: IoreqType.COPY, addr: BAR + BigInt(EDU.ID), size: 4, read: true });
    await xen.roundTrip(0);
    expect(xen.state(0)).toBe(IoreqState.IORESP_READY);
    expect(xen.data(0)).toBe(BigInt(EDU.ID_VALUE));
    const afterFirst = stats().ioreqs;

    // The hostile side rewinds the slot to READY (with a marker in data) but rings nothing.
    xen.view.setBigUint64(0 + 8, 0xdeadn, true);
    xen.setState(0, IoreqState.READY);
    // Everything else that can wake the server happens meanwhile: another vCPU's ioreqs, the
    // buffered channel, a spurious doorbell of vCPU 1.
    expect(await vcpu1.access({ space: 'mmio', addr: BAR + factorial, size: 4, dir: 'read' })).toBe(6n);
    const spurious = stats().spurious;
    xen.notifyBuffered();
    xen.notify(1); // vCPU 1's slot is idle (NONE)
    await until(() => stats().spurious === spurious + 1, 'the spurious doorbell of vCPU 1');
    expect(await vcpu1.access({ space: 'mmio', addr: BAR + BigInt(EDU.ID), size: 4, dir: 'read' })).toBe(BigInt(EDU.ID_VALUE));
    expect(xen.state(0)).toBe(IoreqState.READY);
    expect(xen.data(0)).toBe(0xdeadn);
    expect(stats().ioreqs).toBe(afterFirst + 2); // vCPU 1's two accesses only

    // Notified again: served exactly once.
    const n = xen.nextCompletion(0);
    xen.notify(0);
    expect(await n).toBe(1n);
    expect(xen.state(0)).toBe(IoreqState.IORESP_READY);
    expect(xen.data(0)).toBe(BigInt(EDU.ID_VALUE));
    expect(stats().ioreqs).toBe(afterFirst + 3);
    // Notified once more without a new READY: nothing.
    await notifySpurious();
    expect(stats().ioreqs).toBe(afterFirst + 3);
    expect(xen.state(0)).toBe(IoreqState.IORESP_READY);
    xen.setState(0, IoreqState.NONE);
    await stillServes();
  });

  it('serves a slot once however many doorbells rang for it before the server ran', async () => {
    await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.LIVENESS), size: 4, read: false, data: 0n });
    const ioreqs = stats().ioreqs;
    xen.fill(0, { type: IoreqType.COPY, addr: BAR + BigInt(EDU.LIVENESS), size: 4, read: false, data: 0xf0f0f0f0n });
    const n = xen.nextCompletion(0);
    for (let i = 0; i < 5; i++) xen.notify(0); // no turn of the event loop in between
    expect(await n).toBe(1n);
    expect(stats().ioreqs).toBe(ioreqs + 1);
    expect(device.regs.get('LIVENESS')).toBe(0x0f0f0f0f);
    xen.setState(0, IoreqState.NONE);
    await stillServes();
  });

  it('keeps serving a correct vCPU while the other vCPU slot holds garbage and its doorbell rings', async () => {
    const junk = { vpEport: 0xffffffff, pad: 0xffff };
    const garbage = (i: number): RawSlot =>
      [
        // READY, bad everything: data_is_ptr + df, unknown type, size 0, a scrambled count.
        { ...junk, addr: (BigInt(i) * 0x9e3779b97f4a7c15n) & U64_ONES, data: U64_ONES - BigInt(i), count: (i * 2654435761) >>> 0, size: 0, bits: IoreqState.READY | IoreqBits.DATA_IS_PTR | IoreqBits.DF, type: 0xff },
        // Not READY (INPROCESS, an invalid state, IORESP_READY): must be left alone.
        { ...junk, addr: BAR, data: 1n, count: 1, size: 4, bits: IoreqState.INPROCESS, type: IoreqType.COPY },
        { ...junk, addr: 0n, data: 0n, count: 0, size: 16, bits: 0x0f, type: IoreqType.PCI_CONFIG },
        { ...junk, addr: BAR, data: 0n, count: 1, size: 4, bits: IoreqState.IORESP_READY | IoreqBits.DIR_READ, type: IoreqType.COPY },
        // READY and legal but as heavy as Xen makes them: a 4096-element rep op through the slow path.
        { ...junk, addr: BAR + BigInt(EDU.DMA_BUFFER), data: 0x100000n, count: XEN_MAX_REPS, size: 1, bits: IoreqState.READY | IoreqBits.DATA_IS_PTR, type: IoreqType.COPY },
      ][i % 5]!;
    const ops = Array.from({ length: 40 }, (_, i) =>
      i % 2 === 0
        ? (['access', { space: 'mmio', addr: BAR + BigInt(EDU.ID), size: 4, dir: 'read' }] as const)
        : (['access', { space: 'pci', addr: cfgAddr(SBDF, PCI.VENDOR_ID), size: 4, dir: 'read' }] as const),
    );
    const results = vcpu1.batch(ops);
    for (let i = 0; i < 40; i++) {
      xen.writeRaw(0, garbage(i));
      xen.notify(0);
      await new Promise<void>((r) => setImmediate(r)); // let the server see this garbage before the next
    }
    expect(await results).toEqual(ops.map((_, i) => (i % 2 === 0 ? BigInt(EDU.ID_VALUE) : 0x11e81234n)));
    // The garbage left vCPU 0 in some state; a correct Xen starts from NONE.
    xen.setState(0, IoreqState.NONE);
    await stillServes();
  });
});

describe('IOREQ server against a hostile Xen: INVALIDATE and TIMEOFFSET', () => {
  it('flushes the guest map cache on INVALIDATE, as Xen sends it (size 4, count 0, data ~0)', async () => {
    hv.ram.fill(0x3c, 0x300000, 0x300000 + 64);
    await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.DMA_BUFFER), size: 8, read: false, count: 8, dataIsPtr: true, data: 0x300000n });
    expect(device.buffer.subarray(0, 64).every((b) => b === 0x3c)).toBe(true);
    const mapped = server.memory.stats.mapped;
    const flushes = server.memory.stats.flushes;
    expect(mapped).toBeGreaterThan(0);
    xen.fill(0, { type: IoreqType.INVALIDATE, addr: 0n, size: 4, read: false, count: 0, data: U64_ONES });
    await xen.roundTrip(0);
    expect(xen.state(0)).toBe(IoreqState.IORESP_READY);
    xen.setState(0, IoreqState.NONE);
    expect(server.stats.invalidates).toBe(1);
    expect(server.memory.stats.flushes).toBe(flushes + 1);
    // The cache really is empty: the same guest buffer has to be mapped again.
    await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.DMA_BUFFER), size: 8, read: false, count: 8, dataIsPtr: true, data: 0x300000n });
    expect(server.memory.stats.mapped).toBe(mapped + 1);
    // A read-direction or malformed INVALIDATE still completes; only a well-formed one flushes.
    expect(await hostile({ type: IoreqType.INVALIDATE, addr: 0n, size: 4, read: true, count: 0 })).toBe(0xffffffffn);
    expect(await hostile({ type: IoreqType.INVALIDATE, addr: 0n, size: 0, read: true, count: 0 })).toBe(U64_ONES);
    expect(server.stats.invalidates).toBe(2);
    await stillServes();
  });

  it('counts TIMEOFFSET ioreqs, synchronous and through the buffered ring (where Xen sends them)', async () => {
    await hostile({ type: IoreqType.TIMEOFFSET, addr: 0n, size: 8, read: false, data: 0x123456789n });
    expect(server.stats.timeOffsets).toBe(1);
    // The ring: an 8-byte entry in two slots.
    const wp = xen.writePointer;
    xen.putEntry(wp, { type: IoreqType.TIMEOFFSET, sizeCode: 3, addr: 0, data: 0x89abcdef });
    xen.putEntry(wp + 1, { type: IoreqType.TIMEOFFSET, sizeCode: 3, addr: 0, data: 0x1 });
    xen.setPointers(xen.readPointer, wp + 2);
    xen.notifyBuffered();
    await until(() => xen.readPointer === wp + 2, 'the ring to drain');
    expect(server.stats.timeOffsets).toBe(2);
    expect(stats().buffered).toBe(1);
    await stillServes();
  });
});

describe('IOREQ server against a hostile Xen: the buffered ring', () => {
  /** A barrier: a synchronous ioreq drains the ring before it is served. */
  const syncBarrier = async () => expect(await hostile({ type: IoreqType.COPY, addr: BAR + BigInt(EDU.ID), size: 4, read: true })).toBe(BigInt(EDU.ID_VALUE));

  it('refuses read entries (counted), and serves the write entries around them', async () => {
    const wp = xen.writePointer;
    xen.putEntry(wp, { type: IoreqType.TIMEOFFSET, sizeCode: 2, addr: 0, data: 1 });
    xen.putEntry(wp + 1, { type: IoreqType.COPY, sizeCode: 2, read: true, addr: 0x4, data: 0 });
    xen.putEntry(wp + 2, { type: IoreqType.TIMEOFFSET, sizeCode: 2, read: true, addr: 0, data: 2 });
    xen.putEntry(wp + 3, { type: IoreqType.TIMEOFFSET, sizeCode: 2, addr: 0, data: 3 });
    xen.setPointers(xen.readPointer, wp + 4);
    const bad = stats().bad;
    xen.notifyBuffered();
    await until(() => xen.readPointer === wp + 4, 'the ring to drain');
    expect(server.stats.timeOffsets).toBe(2);
    expect(stats().buffered).toBe(4);
    expect(stats().bad - bad).toBe(2);
    expect(logLines.filter((l) => l.includes('buffered ioreq is a read'))).toHaveLength(2);
    await stillServes();
  });

  it('resynchronises on pointers out of range (no loop, no entry acted on), then serves new entries', async () => {
    for (const [rp, wp] of [
      [0, 1000],
      [100, 50],
      [0, 0xffffffff],
      [0x10, 0xfffffff0],
      [5, 5 + 512],
    ] as const) {
      for (let i = 0; i < 511; i++) xen.putEntry(i, { type: IoreqType.TIMEOFFSET, sizeCode: 2, addr: 0, data: i });
      xen.setPointers(rp, wp);
      const bad = stats().bad;
      const buffered = stats().buffered;
      const offsets = server.stats.timeOffsets;
      xen.notifyBuffered();
      await syncBarrier();
      expect(xen.readPointer).toBe(wp);
      expect(stats().bad - bad).toBe(1);
      expect(stats().buffered).toBe(buffered);
      expect(server.stats.timeOffsets).toBe(offsets);
      // In sync again: one new entry is served once.
      xen.putEntry(wp, { type: IoreqType.TIMEOFFSET, sizeCode: 2, addr: 0, data: 0 });
      xen.setPointers(wp, wp + 1);
      xen.notifyBuffered();
      await syncBarrier();
      expect(xen.readPointer).toBe((wp + 1) >>> 0);
      expect(server.stats.timeOffsets).toBe(offsets + 1);
    }
    expect(logLines.some((l) => l.includes('buffered ring pointers out of range'))).toBe(true);
    await stillServes();
  });

  it('waits for the second half of an 8-byte entry, without blocking synchronous ioreqs, then serves it once', async () => {
    const wp = xen.writePointer;
    xen.putEntry(wp, { type: IoreqType.TIMEOFFSET, sizeCode: 3, addr: 0, data: 0xdeadbeef });
    xen.setPointers(xen.readPointer, wp + 1); // the second half is not published
    xen.notifyBuffered();
    await syncBarrier(); // synchronous ioreqs are not held up by the half entry
    await syncBarrier();
    expect(await vcpu1.access({ space: 'mmio', addr: BAR + BigInt(EDU.ID), size: 4, dir: 'read' })).toBe(BigInt(EDU.ID_VALUE));
    expect(xen.readPointer).toBe(wp);
    expect(server.stats.timeOffsets).toBe(0);
    expect(stats().buffered).toBe(0);
    xen.putEntry(wp + 1, { type: IoreqType.TIMEOFFSET, sizeCode: 3, addr: 0, data: 0x1 });
    xen.setPointers(wp, wp + 2);
    xen.notifyBuffered();
    await until(() => xen.readPointer === wp + 2, 'the ring to drain');
    await syncBarrier();
    expect(server.stats.timeOffsets).toBe(1);
    expect(stats().buffered).toBe(1);
    await stillServes();
  });
});

/**
 * A Xen in another thread that fills the buffered ring as fast as it can: 4-byte TIMEOFFSET
 * entries carrying their sequence number, published with a cmpxchg of both pointers, a doorbell
 * every 16 entries and after the last. With `rebase`, it also moves both pointers by a whole lap
 * (±511, which keeps every slot index) on every turn, as Xen's canonicalisation of atomic rings
 * does whenever the read pointer passed 511, only far more often. status: [published, done,
 * aborted (1: the server left the pointers more than a ring apart; 2: time limit)].
 */
const PRODUCER = `
const { workerData, parentPort } = require('node:worker_threads');
(async () => {
  const { mmapFd, munmap } = await import(workerData.mmapUrl);
  const { eventfdWrite } = await import(workerData.fdUrl);
  const ab = mmapFd(workerData.bufFd, 4096, { writable: true, shared: true });
  const both = new BigUint64Array(ab, 0, 1);
  const ptrs = new Uint32Array(ab, 0, 2);
  const view = new DataView(ab);
  const status = new Int32Array(workerData.status);
  const SLOTS = 511;
  const header = (7 | ((2 << 2) << 8)) >>> 0; // IOREQ_TYPE_TIMEOFFSET, size code 2, write, addr 0
  const pair = (r, w) => BigInt(r >>> 0) | (BigInt(w >>> 0) << 32n);
  const deadline = Date.now() + workerData.limitMs;
  let published = 0;
  for (let turn = 0; published < workerData.n; turn++) {
    if ((turn & 1023) === 0 && Date.now() > deadline) { Atomics.store(status, 2, 2); break; }
    let r, w, cur;
    if (workerData.rebase) {
      cur = Atomics.load(both, 0);
      r = Number(cur & 0xffffffffn); w = Number(cur >> 32n);
      if (((w - r) >>> 0) > SLOTS) { Atomics.store(status, 2, 1); break; }
      const shift = r >= SLOTS ? -SLOTS : SLOTS;
      Atomics.compareExchange(both, 0, cur, pair(r + shift, w + shift));
      cur = Atomics.load(both, 0);
      r = Number(cur & 0xffffffffn); w = Number(cur >> 32n);
    } else {
      // Only this side moves the write pointer: plain 32-bit accesses, as fast as it gets.
      r = Atomics.load(ptrs, 0); w = Atomics.load(ptrs, 1);
      if (((w - r) >>> 0) > SLOTS) { Atomics.store(status, 2, 1); break; }
    }
    if (((w - r) >>> 0) >= SLOTS) continue; // full
    const at = 8 + (w % SLOTS) * 8;
    view.setUint32(at, header, true);
    view.setUint32(at + 4, published, true);
    if (workerData.rebase) {
      if (Atomics.compareExchange(both, 0, cur, pair(r, w + 1)) !== cur) continue; // moved meanwhile: again
    } else {
      Atomics.store(ptrs, 1, (w + 1) >>> 0);
    }
    published++;
    Atomics.store(status, 0, published);
    if ((published & 15) === 0) eventfdWrite(workerData.bufEvtFd, 1n);
  }
  eventfdWrite(workerData.bufEvtFd, 1n);
  Atomics.store(status, 1, 1);
  munmap(ab);
  parentPort.postMessage('done');
})().catch((e) => { throw e; });
`;

describe('IOREQ server against a hostile Xen: the buffered ring written from another thread', () => {
  for (const rebase of [false, true]) {
    it(`drains every entry exactly once and keeps serving synchronous ioreqs while the ring never empties${rebase ? ', with the pointers rebased all the time' : ''}`, async () => {
      const N = 300_000;
      const status = new Int32Array(new SharedArrayBuffer(12));
      const dist = (p: string) => pathToFileURL(join(packageRoot(), 'dist', p)).href;
      const worker = new Worker(PRODUCER, {
        eval: true,
        workerData: {
          mmapUrl: dist('src/native/mmap.js'),
          fdUrl: dist('src/native/fd.js'),
          bufFd: hv.ioreqServerResources(server.id).bufioreqFd,
          bufEvtFd: xen.bufGuestToServer,
          status: status.buffer,
          n: N,
          rebase,
          limitMs: 20_000 * timeScale,
        },
      });
      const finished = new Promise<void>((resolve, reject) => {
        worker.on('message', () => resolve());
        worker.on('error', reject);
      });
      try {
        await until(() => Atomics.load(status, 0) > 4 * 511 || Atomics.load(status, 1) === 1, 'the producer to get going', 20_000 * timeScale);
        // The producer is at least a ring ahead of the server and stays so: synchronous ioreqs
        // must still be served while it runs, not after it stops.
        for (let i = 0; i < 3; i++) expect(await vcpu1.access({ space: 'mmio', addr: BAR + BigInt(EDU.ID), size: 4, dir: 'read' })).toBe(BigInt(EDU.ID_VALUE));
        expect(Atomics.load(status, 1), 'the producer had already finished: the server drained while it ran and served nothing else').toBe(0);
        await finished;
      } finally {
        await worker.terminate();
      }
      expect(Atomics.load(status, 2), 'the producer gave up (1: the server left the pointers more than a ring apart; 2: time limit)').toBe(0);
      await until(() => xen.readPointer === xen.writePointer, 'the ring to drain');
      expect(server.stats.timeOffsets).toBe(N);
      expect(stats()).toMatchObject({ buffered: N, bad: 0 });
      await stillServes();
    });
  }
});
