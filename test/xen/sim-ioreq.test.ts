/**
 * Round trips over the shared ioreq page: a vCPU in a worker thread makes guest accesses while the
 * test plays the IOREQ server by hand (map the pages through SimXenHost, wait on the eventfd, read
 * the slot, take it, answer, signal). Checks the encoding of every field, the buffered ring
 * (wrap-around, two-slot entries, pointer canonicalisation, full ring), IOREQ_TYPE_COPY for writes
 * to claimed frames, and the failure paths (timeout, dying emulator, bad state transitions).
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HvmMemType, IoreqMemAccess, pciSbdf } from '../../adapters/xen/ioreq-abi.js';
import { SimHypervisor } from '../../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../../adapters/xen/sim/host.js';
import { SimVcpuThread } from '../../adapters/xen/sim/vcpu-thread.js';
import type { SimVcpuOp } from '../../adapters/xen/sim/vcpu-worker.js';
import { ioreqWaitStep } from '../../adapters/xen/sim/vcpu.js';
import { eventfdWrite } from '../../src/native/fd.js';
import {
  BUF_SLOTS,
  HandServer,
  IOREQ_SIZE,
  OFF_VP_EPORT,
  STATE_NONE,
  STATE_READY,
  TYPE_COPY,
  TYPE_PCI_CONFIG,
  TYPE_PIO,
  assertSimBuildFresh,
  readSlot,
} from '../fixtures/xen-sim-server.js';

const MiB = 1 << 20;
beforeAll(() => assertSimBuildFresh());

const threads: SimVcpuThread[] = [];
const closers: { close(): void }[] = [];
afterEach(async () => {
  await Promise.all(threads.splice(0).map((t) => t.terminate()));
  for (const c of closers.splice(0).reverse()) c.close();
});

async function setup(
  bufioreq: 'off' | 'legacy' | 'atomic',
  ranges: (host: SimXenHost, id: number) => void,
  options: { nrVcpus?: number; timeoutMs?: number } = {},
): Promise<{ hv: SimHypervisor; host: SimXenHost; server: HandServer; vcpus: SimVcpuThread[] }> {
  const hv = new SimHypervisor({ ramBytes: 4 * MiB, nrVcpus: options.nrVcpus ?? 1, vcpuTimeoutMs: options.timeoutMs ?? 10_000 });
  const host = new SimXenHost(hv);
  closers.push(hv, host);
  const server = new HandServer(host, bufioreq, (id) => ranges(host, id));
  closers.push(server);
  const vcpus = await Promise.all(Array.from({ length: hv.nrVcpus }, (_, i) => SimVcpuThread.start(hv.vcpuDescriptor(i))));
  threads.push(...vcpus);
  return { hv, host, server, vcpus };
}

/** Writes `bytes` into guest RAM at `gpa` the way an emulator does: through a foreign mapping. */
function emulatorWrite(host: SimXenHost, gpa: bigint, bytes: Uint8Array): void {
  const frame = gpa >> 12n;
  const m = host.mapForeign([frame], true);
  m.bytes.set(bytes, Number(gpa & 0xfffn));
  m.release();
}

function le(value: bigint, size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = Number((value >> BigInt(8 * i)) & 0xffn);
  return out;
}

describe('synchronous ioreqs', () => {
  it('a port read: fields at their offsets, READY, the response masked to the access size', async () => {
    const { server, vcpus } = await setup('off', (host, id) => host.mapIoRange(id, 'port', 0x1000n, 0x10ffn));
    const result = vcpus[0]!.access({ space: 'pio', addr: 0x1002n, size: 2, dir: 'read' });
    const slot = server.take(0);
    expect(slot).toMatchObject({ addr: 0x1002n, size: 2, count: 1, type: TYPE_PIO, dir: 'read', dataIsPtr: false, df: false, state: STATE_READY });
    expect(slot.bits).toBe(0x21); // READY | dir read
    expect(slot.vpEport).toBe(server.ports[0]);
    expect([...server.pages.sync.subarray(28, 30)]).toEqual([0, 0]); // _pad0
    server.complete(0, 0xabcd_1234n);
    expect(await result).toBe(0x1234n);
    expect(readSlot(server.pages.sync, 0).state).toBe(STATE_NONE); // the vCPU took the response
  });

  it("each vCPU uses its own slot and channels", async () => {
    const { server, vcpus } = await setup('off', (host, id) => host.mapIoRange(id, 'port', 0x1000n, 0x10ffn), { nrVcpus: 2 });
    const write = vcpus[1]!.access({ space: 'pio', addr: 0x1004n, size: 4, dir: 'write', data: 0xdead_beefn });
    const slot = server.take(1);
    expect(slot).toMatchObject({ addr: 0x1004n, data: 0xdead_beefn, size: 4, dir: 'write', type: TYPE_PIO });
    expect(slot.bits).toBe(0x01);
    expect(slot.vpEport).toBe(server.ports[1]);
    expect(readSlot(server.pages.sync, 0).state).toBe(STATE_NONE);
    // vCPU 0 issues while vCPU 1 is still waiting: both are in flight at once.
    const read = vcpus[0]!.access({ space: 'pio', addr: 0x1008n, size: 1, dir: 'read' });
    expect(server.take(0)).toMatchObject({ addr: 0x1008n, dir: 'read' });
    server.complete(0, 0x5an);
    server.complete(1);
    expect(await Promise.all([write, read])).toEqual([0n, 0x5an]);
  });

  it('memory: 8-byte reads carry 64 bits; rep stos sends count with immediate data', async () => {
    const { server, vcpus } = await setup('off', (host, id) => host.mapIoRange(id, 'memory', 0xf000_0000n, 0xf000_ffffn));
    const read = vcpus[0]!.access({ space: 'mmio', addr: 0xf000_0010n, size: 8, dir: 'read' });
    expect(server.take()).toMatchObject({ addr: 0xf000_0010n, size: 8, type: TYPE_COPY, dir: 'read', count: 1 });
    server.complete(0, 0xfedc_ba98_7654_3210n);
    expect(await read).toBe(0xfedc_ba98_7654_3210n);
    const stos = vcpus[0]!.access({ space: 'mmio', addr: 0xf000_0100n, size: 4, dir: 'write', data: 0x7n, count: 16 });
    expect(server.take()).toMatchObject({ addr: 0xf000_0100n, size: 4, count: 16, data: 7n, dataIsPtr: false, dir: 'write' });
    server.complete();
    expect(await stos).toBe(0n);
  });

  it('rep ins through memory: one ioreq with count, data_is_ptr and df; the server fills guest RAM', async () => {
    const { hv, host, server, vcpus } = await setup('off', (h, id) => h.mapIoRange(id, 'port', 0x1f0n, 0x1f7n));
    const ins = vcpus[0]!.access({ space: 'pio', addr: 0x1f0n, size: 2, dir: 'read', count: 4, dataIsPtr: true, data: 0x8006n, df: true });
    const slot = server.take();
    expect(slot).toMatchObject({ addr: 0x1f0n, size: 2, count: 4, data: 0x8006n, dataIsPtr: true, df: true, dir: 'read', type: TYPE_PIO });
    expect(slot.bits).toBe(0x71); // READY | data_is_ptr | dir read | df
    // Element i goes to data - 2i (the direction flag walks down).
    for (let i = 0; i < 4; i++) emulatorWrite(host, slot.data - BigInt(2 * i), le(BigInt(0x1110 * (i + 1)), 2));
    server.complete();
    expect(await ins).toBe(0n);
    expect([...hv.ram.subarray(0x8000, 0x8008)]).toEqual([0x40, 0x44, 0x30, 0x33, 0x20, 0x22, 0x10, 0x11]);
  });

  it('PCI configuration: 0xcf8 is latched and passed on, 0xcfc-0xcff become PCI_CONFIG by SBDF', async () => {
    const sbdf = pciSbdf(0, 0, 3, 0);
    const { host, server, vcpus } = await setup('off', (h, id) => h.mapIoRange(id, 'pci', BigInt(sbdf), BigInt(sbdf)));
    const ports = new HandServer(host, 'off', (id) => host.mapIoRange(id, 'port', 0xcf8n, 0xcfbn));
    closers.push(ports);
    const latch = 0x8000_1810n; // enable, bus 0, device 3, function 0, register 0x10
    const select = vcpus[0]!.access({ space: 'pio', addr: 0xcf8n, size: 4, dir: 'write', data: latch });
    expect(ports.take()).toMatchObject({ addr: 0xcf8n, data: latch, size: 4, type: TYPE_PIO, dir: 'write' });
    ports.complete();
    await select;
    const cfg = vcpus[0]!.access({ space: 'pio', addr: 0xcfen, size: 2, dir: 'read' });
    expect(server.take()).toMatchObject({ type: TYPE_PCI_CONFIG, addr: (BigInt(sbdf) << 32n) | 0x12n, size: 2, dir: 'read' });
    server.complete(0, 0x1af4n);
    expect(await cfg).toBe(0x1af4n);
    // The decoded form goes straight to the same server.
    const direct = vcpus[0]!.access({ space: 'pci', addr: (BigInt(sbdf) << 32n) | 0x100n, size: 4, dir: 'write', data: 0x1234_5678n });
    expect(server.take()).toMatchObject({ type: TYPE_PCI_CONFIG, addr: (BigInt(sbdf) << 32n) | 0x100n, data: 0x1234_5678n, dir: 'write' });
    server.complete();
    await direct;
  });

  it('memory ioreqs for mmio_dm frames read through guest RAM, in aligned chunks', async () => {
    const { host, server, vcpus } = await setup('off', (h, id) => h.mapIoRange(id, 'memory', 0x30000n, 0x30fffn));
    host.setMemType(HvmMemType.MMIO_DM, 0x30n, 1);
    const read = vcpus[0]!.ramRead(0x30006, 4);
    expect(server.take()).toMatchObject({ addr: 0x30006n, size: 2, type: TYPE_COPY, dir: 'read' });
    server.complete(0, 0xbbaan);
    expect(server.take()).toMatchObject({ addr: 0x30008n, size: 2, dir: 'read' });
    server.complete(0, 0xddccn);
    expect([...(await read)]).toEqual([0xaa, 0xbb, 0xcc, 0xdd]);
  });
});

describe('HVMMEM_ioreq_server write protection', () => {
  it('writes to claimed frames arrive as COPY ioreqs, one per aligned chunk, and the server writes RAM', async () => {
    const { hv, host, server, vcpus } = await setup('off', () => {});
    host.mapMemTypeToIoreqServer(server.id, HvmMemType.IOREQ_SERVER, IoreqMemAccess.WRITE);
    host.setMemType(HvmMemType.IOREQ_SERVER, 0x20n, 1);
    const bytes = Uint8Array.from({ length: 15 }, (_, i) => i + 1);
    // Frame 0x1f is ordinary RAM, 0x20 is protected: bytes 0 and 1 land directly, the rest trap.
    const write = vcpus[0]!.ramWrite(0x1fffe, bytes);
    const expected: [bigint, number, bigint][] = [
      [0x20000n, 8, 0x0a09_0807_0605_0403n],
      [0x20008n, 4, 0x0e0d_0c0bn],
      [0x2000cn, 1, 0x0fn],
    ];
    for (const [addr, size, data] of expected) {
      const slot = server.take();
      expect(slot).toMatchObject({ type: TYPE_COPY, addr, size, data, count: 1, dir: 'write', dataIsPtr: false });
      expect(hv.ram[Number(addr)]).toBe(0); // Xen did not write: the server does
      emulatorWrite(host, addr, le(data, size));
      server.complete();
    }
    await write;
    expect([...hv.ram.subarray(0x1fffe, 0x1fffe + 15)]).toEqual([...bytes]);
    // Reads of a protected frame never trap.
    expect([...(await vcpus[0]!.ramRead(0x20000, 2))]).toEqual([3, 4]);
    // Released, the frame is ram_rw again and writes go straight to RAM.
    host.mapMemTypeToIoreqServer(server.id, HvmMemType.IOREQ_SERVER, 0);
    await vcpus[0]!.ramWrite(0x20000, new Uint8Array([0x77]));
    expect(hv.ram[0x20000]).toBe(0x77);
  });

  it('a mov to a claimed frame (a memory access on RAM) traps the same way', async () => {
    const { host, server, vcpus } = await setup('off', () => {});
    host.mapMemTypeToIoreqServer(server.id, HvmMemType.IOREQ_SERVER, IoreqMemAccess.WRITE);
    host.setMemType(HvmMemType.IOREQ_SERVER, 0x21n, 1);
    const mov = vcpus[0]!.access({ space: 'mmio', addr: 0x21010n, size: 4, dir: 'write', data: 0xcafe_f00dn });
    expect(server.take()).toMatchObject({ type: TYPE_COPY, addr: 0x21010n, size: 4, data: 0xcafe_f00dn, dir: 'write' });
    server.complete();
    await mov;
  });
});

describe('buffered ioreqs', () => {
  for (const mode of ['legacy', 'atomic'] as const) {
    it(`${mode}: entries in order, 8-byte writes in two slots, wrap-around at slot 511`, async () => {
      const { server, vcpus } = await setup(mode, (h, id) => h.mapIoRange(id, 'memory', 0xa0000n, 0xbffffn));
      const vcpu = vcpus[0]!;
      const first: SimVcpuOp[] = Array.from({ length: 255 }, (_, i) => ['bufferedWrite', 0xa0000n + BigInt(8 * i), 8, 0x1000_0000_0000_0000n + BigInt(i)] as const);
      expect(await vcpu.batch(first)).toEqual(new Array(255).fill('buffered'));
      expect(server.bufferedSignalled()).toBe(true);
      expect(server.pointers()).toEqual({ read: 0, write: 510 });
      const drained = server.drainBuffered();
      expect(drained).toHaveLength(255);
      drained.forEach((e, i) => expect(e).toEqual({ type: TYPE_COPY, dir: 'write', size: 8, addr: 0xa0000 + 8 * i, data: 0x1000_0000_0000_0000n + BigInt(i), slot: 2 * i }));

      // The next 8-byte entry takes slot 510 and slot 0.
      expect(await vcpu.bufferedWrite(0xb0000n, 8, 0x0102_0304_0506_0708n)).toBe('buffered');
      const page = new DataView(server.pages.buffered!.buffer);
      const header = (TYPE_COPY | (3 << 10) | (0xb0000 << 12)) >>> 0;
      expect([page.getUint32(8 + 510 * 8, true), page.getUint32(8 + 510 * 8 + 4, true)]).toEqual([header, 0x0506_0708]);
      expect([page.getUint32(8, true), page.getUint32(12, true)]).toEqual([header, 0x0102_0304]);
      expect(server.pointers()).toEqual({ read: 510, write: 512 });
      expect(server.drainBuffered()).toEqual([{ type: TYPE_COPY, dir: 'write', size: 8, addr: 0xb0000, data: 0x0102_0304_0506_0708n, slot: 510 }]);

      // Smaller entries take one slot; in atomic mode Xen then pulls both pointers back by a lap.
      expect(await vcpu.batch([['bufferedWrite', 0xa0001n, 1, 0xeen], ['bufferedWrite', 0xa0002n, 2, 0xbeefn], ['bufferedWrite', 0xa0004n, 4, 0x1122_3344n]])).toEqual([
        'buffered',
        'buffered',
        'buffered',
      ]);
      expect(server.pointers()).toEqual(mode === 'atomic' ? { read: 1, write: 4 } : { read: 512, write: 515 });
      expect(server.drainBuffered()).toEqual([
        { type: TYPE_COPY, dir: 'write', size: 1, addr: 0xa0001, data: 0xeen, slot: 1 },
        { type: TYPE_COPY, dir: 'write', size: 2, addr: 0xa0002, data: 0xbeefn, slot: 2 },
        { type: TYPE_COPY, dir: 'write', size: 4, addr: 0xa0004, data: 0x1122_3344n, slot: 3 },
      ]);
      expect(page.getUint8(8 + 2 * 8 + 1) & 0x0f).toBe(1 << 2); // byte 1: pad bit 0, dir bit 1 (write), size code 1 in bits 2-3
    });
  }

  it('a full ring (or an 8-byte entry with one slot left) falls back to a synchronous ioreq', async () => {
    const { server, vcpus } = await setup('atomic', (h, id) => h.mapIoRange(id, 'memory', 0xa0000n, 0xbffffn));
    const fill: SimVcpuOp[] = Array.from({ length: 255 }, (_, i) => ['bufferedWrite', 0xa0000n + BigInt(8 * i), 8, BigInt(i)] as const);
    const batch = vcpus[0]!.batch([...fill, ['bufferedWrite', 0xa1000n, 8, 0x99n], ['bufferedWrite', 0xa1008n, 4, 0x98n], ['bufferedWrite', 0xa100cn, 4, 0x97n]]);
    expect(server.take()).toMatchObject({ type: TYPE_COPY, addr: 0xa1000n, size: 8, data: 0x99n, dir: 'write' });
    server.complete();
    expect(server.take()).toMatchObject({ type: TYPE_COPY, addr: 0xa100cn, size: 4, data: 0x97n, dir: 'write' });
    server.complete();
    expect(await batch).toEqual([...new Array(255).fill('buffered'), 'synchronous', 'buffered', 'synchronous']);
    expect(server.pointers()).toEqual({ read: 0, write: 511 });
  });

  it('goes synchronous without a ring or beyond the 20-bit address; drops what nobody claims', async () => {
    const { host, server, vcpus } = await setup('legacy', (h, id) => {
      h.mapIoRange(id, 'memory', 0xa0000n, 0xbffffn);
      h.mapIoRange(id, 'memory', 0xf000_0000n, 0xf000_0fffn);
    });
    const far = vcpus[0]!.bufferedWrite(0xf000_0000n, 4, 1n);
    expect(server.take()).toMatchObject({ addr: 0xf000_0000n, dir: 'write' });
    server.complete();
    expect(await far).toBe('synchronous');
    expect(await vcpus[0]!.bufferedWrite(0xc0000n, 4, 1n)).toBe('unclaimed');
    const noRing = new HandServer(host, 'off', (id) => host.mapIoRange(id, 'memory', 0xd0000n, 0xd0fffn));
    closers.push(noRing);
    const sync = vcpus[0]!.bufferedWrite(0xd0000n, 2, 0x55n);
    expect(noRing.take()).toMatchObject({ addr: 0xd0000n, size: 2, data: 0x55n });
    noRing.complete();
    expect(await sync).toBe('synchronous');
    expect(server.pointers()).toEqual({ read: 0, write: 0 });
    expect(BUF_SLOTS).toBe(511);
  });
});

describe('failures', () => {
  it('ETIMEDOUT when nobody serves (after the timeout, not before); the stuck slot then refuses ioreqs (EIO)', async () => {
    const { vcpus } = await setup('off', (h, id) => h.mapIoRange(id, 'port', 0x100n, 0x1ffn), { timeoutMs: 200 });
    const started = performance.now();
    await expect(vcpus[0]!.access({ space: 'pio', addr: 0x100n, size: 1, dir: 'read' })).rejects.toMatchObject({ code: 'ETIMEDOUT' });
    expect(performance.now() - started).toBeGreaterThanOrEqual(195);
    await expect(vcpus[0]!.access({ space: 'pio', addr: 0x100n, size: 1, dir: 'read' })).rejects.toMatchObject({ code: 'EIO' });
    // Unclaimed accesses do not involve the server and still work.
    expect(await vcpus[0]!.access({ space: 'pio', addr: 0x300n, size: 1, dir: 'read' })).toBe(0xffn);
  });

  it('an emulator destroyed with the ioreq in flight completes it with all-ones', async () => {
    const { host, server, vcpus } = await setup('off', (h, id) => h.mapIoRange(id, 'port', 0x100n, 0x1ffn));
    const read = vcpus[0]!.access({ space: 'pio', addr: 0x104n, size: 4, dir: 'read' });
    server.take();
    host.destroyIoreqServer(server.id);
    expect(await read).toBe(0xffff_ffffn);
    expect(await vcpus[0]!.access({ space: 'pio', addr: 0x104n, size: 4, dir: 'read' })).toBe(0xffff_ffffn); // unclaimed now
  });

  it('a slot put in a state that does not exist is fatal (EIO, where Xen crashes the domain)', async () => {
    const { server, vcpus } = await setup('off', (h, id) => h.mapIoRange(id, 'port', 0x100n, 0x1ffn));
    const read = vcpus[0]!.access({ space: 'pio', addr: 0x100n, size: 1, dir: 'read' });
    server.take();
    server.setState(0, 7);
    eventfdWrite(server.binding.serverToGuest[0]!);
    await expect(read).rejects.toMatchObject({ code: 'EIO' });
  });

  it("follows hvm_wait_for_io's transitions: forward only, NONE means a dying emulator", () => {
    const { NONE, READY, INPROCESS, IORESP_READY } = { NONE: 0, READY: 1, INPROCESS: 2, IORESP_READY: 3 };
    expect(ioreqWaitStep(READY, READY)).toBe('wait');
    expect(ioreqWaitStep(READY, INPROCESS)).toBe('wait');
    expect(ioreqWaitStep(INPROCESS, INPROCESS)).toBe('wait');
    expect(ioreqWaitStep(READY, IORESP_READY)).toBe('complete');
    expect(ioreqWaitStep(INPROCESS, IORESP_READY)).toBe('complete');
    expect(ioreqWaitStep(INPROCESS, READY)).toBe('backwards');
    expect(ioreqWaitStep(INPROCESS, NONE)).toBe('dying');
    expect(ioreqWaitStep(READY, 4)).toBe('invalid');
    expect(ioreqWaitStep(INPROCESS, 15)).toBe('invalid');
  });

  it('a corrupted vp_eport makes Xen refuse the ioreq (EIO)', async () => {
    const { server, vcpus } = await setup('off', (h, id) => h.mapIoRange(id, 'port', 0x100n, 0x1ffn));
    const view = new DataView(server.pages.sync.buffer);
    view.setUint32(OFF_VP_EPORT, 999, true);
    await expect(vcpus[0]!.access({ space: 'pio', addr: 0x100n, size: 1, dir: 'read' })).rejects.toMatchObject({ code: 'EIO' });
    view.setUint32(OFF_VP_EPORT, server.ports[0]!, true);
    const read = vcpus[0]!.access({ space: 'pio', addr: 0x100n, size: 1, dir: 'read' });
    server.take();
    server.complete(0, 1n);
    expect(await read).toBe(1n);
    expect(IOREQ_SIZE).toBe(32);
  });
});

describe('interrupts seen from a vCPU thread', () => {
  it('waitForInterrupt wakes on an MSI for this vCPU and times out otherwise', async () => {
    const { host, vcpus } = await setup('off', () => {}, { nrVcpus: 2 });
    expect(await vcpus[1]!.waitForInterrupt(0)).toBe(false);
    const waiting = vcpus[1]!.waitForInterrupt(10_000);
    host.injectMsi(0xfee02000n, 0x61);
    expect(await waiting).toBe(true);
    expect(await vcpus[0]!.waitForInterrupt(0)).toBe(false);
    host.setPciIntxLevel(0, 0, 5, 0, true);
    expect(await vcpus[0]!.waitForInterrupt(10_000)).toBe(true);
  });
});
