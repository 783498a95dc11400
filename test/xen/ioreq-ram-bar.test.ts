/**
 * BARs of RAM served as guest RAM by the IOREQ server, on the simulator: the Bochs display's VRAM
 * (BAR0) and the vGPU's (BAR2). A vCPU in a worker thread plays firmware (sizes and places the
 * BARs through config cycles) and Linux (the DISPI modeset through the trapped BAR2, pixels
 * written straight into VRAM); the server populates, places, moves and parks the pages, and
 * reports the guest's writes through track_dirty_vram.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BochsDisplay, BOCHS, DISPI } from '../../examples/bochs-display/index.js';
import { VirtualGpu, VGPU } from '../../examples/vgpu/index.js';
import { DEFAULT_RAM_BAR_PARKING, IoreqServer, RAM_BAR_PARKING_STRIDE } from '../../adapters/xen/ioreq-server.js';
import { HvmMemType, pciSbdf } from '../../adapters/xen/ioreq-abi.js';
import { SimHypervisor, type SimHypervisorOptions } from '../../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../../adapters/xen/sim/host.js';
import { SimVcpuThread } from '../../adapters/xen/sim/vcpu-thread.js';
import { ScanoutDisplay } from '../../src/display.js';
import { DirtyBitmap } from '../../src/native/dirty-bitmap.js';
import { PCI, PCI_BAR, PCI_COMMAND } from '../../src/pci/constants.js';
import { assertSimBuildFresh } from '../fixtures/xen-sim-server.js';

const MiB = 1 << 20;
const PAGE = 4096;
const PCI_ADDR = { segment: 0, bus: 0, device: 5, fn: 0 };
const SBDF = pciSbdf(0, 0, 5, 0);
/** Where the default parking of 00:05.0 is: 64 GiB + devfn 40 GiB. */
const PARKING_GFN = (DEFAULT_RAM_BAR_PARKING + 40n * RAM_BAR_PARKING_STRIDE) / 4096n;

beforeAll(() => assertSimBuildFresh());

const cleanup: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

interface Guest {
  hv: SimHypervisor;
  host: SimXenHost;
  vcpu: SimVcpuThread;
  cfgRead(reg: number, size: 1 | 2 | 4): Promise<number>;
  cfgWrite(reg: number, size: 1 | 2 | 4, value: number): Promise<void>;
  read(addr: bigint, size: 1 | 2 | 4 | 8): Promise<bigint>;
  write(addr: bigint, size: 1 | 2 | 4 | 8, value: bigint): Promise<void>;
}

async function guest(options: Partial<SimHypervisorOptions> = {}): Promise<Guest> {
  const hv = new SimHypervisor({ nrVcpus: 1, ramBytes: 16 * MiB, vcpuTimeoutMs: 5000, ...options });
  const host = new SimXenHost(hv);
  const vcpu = await SimVcpuThread.start(hv.vcpuDescriptor(0), { timeoutMs: 5000 });
  cleanup.push(() => hv.close(), () => host.close(), () => vcpu.close());
  const cfgAddr = (reg: number) => (BigInt(SBDF) << 32n) | BigInt(reg);
  return {
    hv,
    host,
    vcpu,
    cfgRead: async (reg, size) => Number(await vcpu.access({ space: 'pci', addr: cfgAddr(reg), size, dir: 'read' })),
    cfgWrite: async (reg, size, value) => void (await vcpu.access({ space: 'pci', addr: cfgAddr(reg), size, dir: 'write', data: BigInt(value >>> 0) })),
    read: (addr, size) => vcpu.access({ space: 'mmio', addr, size, dir: 'read' }),
    write: async (addr, size, value) => void (await vcpu.access({ space: 'mmio', addr, size, dir: 'write', data: value })),
  };
}

/** What hvmloader does: size every memory BAR, place it from `base` up (aligned), enable decoding. */
async function firmware(g: Guest, base = 0xe0000000n): Promise<Map<number, bigint>> {
  const bars = new Map<number, bigint>();
  let at = base;
  for (let i = 0; i < 6; i++) {
    const reg = PCI.BAR0 + 4 * i;
    const orig = await g.cfgRead(reg, 4);
    await g.cfgWrite(reg, 4, 0xffffffff);
    const mask = await g.cfgRead(reg, 4);
    if (mask === 0 || orig & PCI_BAR.SPACE_IO) continue;
    const is64 = (orig & PCI_BAR.MEM_TYPE_MASK) === PCI_BAR.MEM_TYPE_64;
    let sizeMask = BigInt((mask & ~PCI_BAR.MEM_FLAGS_MASK) >>> 0);
    if (is64) {
      await g.cfgWrite(reg + 4, 4, 0xffffffff);
      sizeMask |= BigInt(await g.cfgRead(reg + 4, 4)) << 32n;
    } else sizeMask |= 0xffff_ffff_0000_0000n;
    const size = (~sizeMask & 0xffff_ffff_ffff_ffffn) + 1n;
    at = ((at + size - 1n) / size) * size;
    await g.cfgWrite(reg, 4, Number(at & 0xffffffffn));
    if (is64) await g.cfgWrite(reg + 4, 4, Number(at >> 32n));
    bars.set(i, at);
    at += size;
    if (is64) i++;
  }
  await g.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  return bars;
}

function serve(device: BochsDisplay | VirtualGpu, host: SimXenHost, options: ConstructorParameters<typeof IoreqServer>[2] = {}): IoreqServer {
  const server = new IoreqServer(device, host, { pci: PCI_ADDR, ...options });
  cleanup.push(() => server.stop());
  server.start();
  return server;
}

const ioreqs = (server: IoreqServer): number => server.engineStats()['ioreqs'] ?? 0;

/** XRGB8888 pixels of one colour, little endian. */
function pixels(count: number, rgb: number): Uint8Array {
  const out = new Uint8Array(count * 4);
  new Uint32Array(out.buffer).fill(rgb);
  return out;
}

describe('the Bochs display on the simulator: VRAM is guest RAM', () => {
  it('populates VRAM at parking before restricting, and the device reaches it through a foreign mapping', async () => {
    const g = await guest();
    const before = g.hv.domainPages();
    const device = new BochsDisplay();
    cleanup.push(() => device.vram.release());
    const server = serve(device, g.host);
    expect(g.host.restricted).toBe(true);
    expect(g.hv.domainPages()).toEqual({ totPages: before.totPages + 4096, maxPages: before.maxPages + 4096 });
    expect(server.ramBars()).toEqual([{ index: 0, pages: 4096, parkingGfn: PARKING_GFN, gfn: PARKING_GFN, placed: false }]);
    // BAR0's memory is the foreign mapping now; the device's own backing follows it.
    expect(device.region(0)!.backing === device.vram).toBe(false);
    expect(device.vram.bytes === device.region(0)!.backing!.bytes).toBe(true);
    device.vram.bytes[5] = 0x5a;
    expect(g.hv.readGuest(PARKING_GFN * 4096n + 5n, 1)[0]).toBe(0x5a);
    // BAR2 (registers) is not RAM: it stays trapped, BAR0 is never claimed.
    expect(g.hv.route('mmio', PARKING_GFN * 4096n)).toBe(null);
  });

  it('firmware places BAR0: the pages move there (WC pinned); the DISPI modeset traps; pixels go straight to VRAM', async () => {
    const g = await guest();
    const device = new BochsDisplay();
    cleanup.push(() => device.vram.release());
    const server = serve(device, g.host);
    const bars = await firmware(g);
    const vram = bars.get(0)!;
    const regs = bars.get(2)!;
    expect([vram, regs]).toEqual([0xe0000000n, 0xe1000000n]);
    expect(server.ramBars()[0]).toMatchObject({ gfn: vram / 4096n, placed: true });
    expect(g.hv.pinnedCacheattrs).toEqual([{ start: 0xe0000n, end: 0xe0fffn, type: 'wc' }]);
    expect(g.hv.memType(PARKING_GFN)).toBe(HvmMemType.MMIO_DM);
    expect(g.hv.route('mmio', vram)).toBe(null); // VRAM's range is never claimed
    expect(g.hv.route('mmio', regs)).toBe(server.id);

    // Linux's bochs driver: probe, then the modeset, 16-bit writes in its order.
    const dispi = (index: number, value?: number) =>
      value === undefined ? g.read(regs + BigInt(BOCHS.DISPI_OFFSET + 2 * index), 2) : g.write(regs + BigInt(BOCHS.DISPI_OFFSET + 2 * index), 2, BigInt(value));
    expect(await dispi(DISPI.ID)).toBe(0xb0c5n);
    expect(await dispi(DISPI.VIDEO_MEMORY_64K)).toBe(256n);
    const [w, h] = [1024, 768];
    for (const [index, value] of [
      [DISPI.ENABLE, 0],
      [DISPI.BPP, 32],
      [DISPI.XRES, w],
      [DISPI.YRES, h],
      [DISPI.BANK, 0],
      [DISPI.VIRT_WIDTH, w],
      [DISPI.VIRT_HEIGHT, (16 * MiB) / (w * 4)],
      [DISPI.X_OFFSET, 0],
      [DISPI.Y_OFFSET, 0],
      [DISPI.ENABLE, DISPI.ENABLED | DISPI.LFB_ENABLED],
    ] as const) {
      await dispi(index, value);
    }
    expect(device.scanout()).toMatchObject({ width: w, height: h, stride: w * 4, offset: 0, format: 'xrgb8888', blanked: false });
    // The relocation made Xen ask the vCPU to invalidate mappings: the engine acknowledged it.
    expect(server.stats.invalidates).toBeGreaterThanOrEqual(1);
    expect(server.stats.relocations).toBe(1);

    // Drawing: row 10 red, a pixel of row 700 green, all by the guest's own stores.
    const collected = new DirtyBitmap(4096);
    expect(server.collectVramDirty(collected)).toBe(4096); // a new placement: everything once
    collected.clearAll();
    const before = ioreqs(server);
    await g.vcpu.ramWrite(vram + 10n * BigInt(w * 4), pixels(w, 0x00ff0000));
    await g.write(vram + 700n * BigInt(w * 4) + 4n * 5n, 4, 0x0000ff00n);
    expect(ioreqs(server)).toBe(before); // no ioreq at all
    expect(new Uint32Array(device.vram.bytes.buffer, device.vram.bytes.byteOffset + 10 * w * 4, w).every((p) => p === 0x00ff0000)).toBe(true);
    expect(new DataView(device.vram.bytes.buffer, device.vram.bytes.byteOffset).getUint32(700 * w * 4 + 20, true)).toBe(0x0000ff00);

    // Dirty tracking reports exactly the pages the guest wrote (row 10 is page 10; row 700 is page 700).
    expect(server.collectVramDirty(collected)).toBe(2);
    expect([...collected.setPages()]).toEqual([10, 700]);
    expect(server.collectVramDirty(new DirtyBitmap(4096))).toBe(0);
    device.vram.bytes.fill(0x11, 0, PAGE); // the device's own writes are not the guest's
    expect(server.collectVramDirty(new DirtyBitmap(4096))).toBe(0);
    device.vram.bytes.fill(0, 0, PAGE);

    // A display refreshes from those pages instead of scanning VRAM.
    const display = new ScanoutDisplay(device.vramSize);
    display.refresh(device.vram.bytes, device.scanout()!);
    await g.vcpu.ramWrite(vram + 20n * BigInt(w * 4), pixels(w, 0x000000ff));
    const dirty = new DirtyBitmap(4096);
    server.collectVramDirty(dirty);
    expect(display.refresh(device.vram.bytes, device.scanout()!, dirty)).toEqual({ changedPages: 1, linesUpdated: 1 });
  });

  it('a BAR move keeps the contents, decoding off parks the pages, and stop hands VRAM back to the device', async () => {
    const g = await guest();
    const device = new BochsDisplay();
    cleanup.push(() => device.vram.release());
    const server = serve(device, g.host);
    const bars = await firmware(g);
    const vram = bars.get(0)!;
    await g.vcpu.ramWrite(vram + 123n, Uint8Array.of(1, 2, 3));
    server.collectVramDirty(new DirtyBitmap(4096));

    await g.cfgWrite(PCI.BAR0, 4, 0xd0000000); // Linux reassigning the BAR, decoding on
    expect(server.ramBars()[0]).toMatchObject({ gfn: 0xd0000n, placed: true });
    expect([...(await g.vcpu.ramRead(0xd0000000n + 123n, 3))]).toEqual([1, 2, 3]);
    expect(await g.read(vram + 123n, 1)).toBe(0xffn); // the old range is a hole nobody claims
    expect(g.hv.pinnedCacheattrs).toEqual([{ start: 0xd0000n, end: 0xd0fffn, type: 'wc' }]);
    expect(server.collectVramDirty(new DirtyBitmap(4096))).toBe(4096); // re-armed on the new range
    expect(server.collectVramDirty(new DirtyBitmap(4096))).toBe(0);

    await g.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MASTER); // memory decoding off
    expect(server.ramBars()[0]).toMatchObject({ gfn: PARKING_GFN, placed: false });
    expect(g.hv.memType(0xd0000n)).toBe(HvmMemType.MMIO_DM);
    expect(g.hv.pinnedCacheattrs).toEqual([]);
    expect([...device.vram.bytes.subarray(123, 126)]).toEqual([1, 2, 3]);
    expect(server.collectVramDirty(new DirtyBitmap(4096))).toBe(0); // parked: nothing to see

    await g.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
    expect([...(await g.vcpu.ramRead(0xd0000000n + 123n, 3))]).toEqual([1, 2, 3]);
    expect(server.stats.relocations).toBe(4); // placed, moved, parked, placed again

    server.stop();
    expect(device.region(0)!.backing === device.vram).toBe(true); // the memfd again, with the guest's contents
    expect([...device.vram.bytes.subarray(123, 126)]).toEqual([1, 2, 3]);
    expect(g.hv.pinnedCacheattrs).toEqual([]);
  });

  it("the device's reset clears VRAM in the guest's pages", async () => {
    const g = await guest();
    const device = new BochsDisplay();
    cleanup.push(() => device.vram.release());
    serve(device, g.host);
    const vram = (await firmware(g)).get(0)!;
    await g.vcpu.ramWrite(vram + 4096n * 100n, pixels(16, 0xffffffff));
    device.reset(); // e.g. a toolstack reset: config space too, so decoding is off and VRAM parked
    expect(g.hv.readGuest(PARKING_GFN * 4096n + 4096n * 100n, 64).every((b) => b === 0)).toBe(true);
  });

  it("ramBars: 'trap' keeps the old behaviour: VRAM is an MMIO range and every access is an ioreq", async () => {
    const g = await guest();
    const before = g.hv.domainPages();
    const device = new BochsDisplay({ vramSize: 4 * MiB });
    cleanup.push(() => device.vram.release());
    const server = serve(device, g.host, { ramBars: 'trap' });
    const vram = (await firmware(g)).get(0)!;
    expect(g.hv.domainPages()).toEqual(before);
    expect(server.ramBars()).toEqual([]);
    const n = ioreqs(server);
    await g.write(vram + 8n, 4, 0x12345678n);
    expect(ioreqs(server)).toBe(n + 1);
    expect(new DataView(device.vram.bytes.buffer).getUint32(8, true)).toBe(0x12345678);
    expect(() => server.collectVramDirty(new DirtyBitmap(1024))).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  });

  it('fails clearly when the handles are already restricted, or when populate stops short (Over-allocation)', async () => {
    const g = await guest({ extraBytes: 8 * MiB });
    g.host.restrict();
    const device = new BochsDisplay();
    cleanup.push(() => device.vram.release());
    const early = new IoreqServer(device, g.host, { pci: PCI_ADDR });
    expect(() => early.start()).toThrow(expect.objectContaining({ code: 'EPERM', message: expect.stringMatching(/needs privileged handles/) }));
    expect(device.region(0)!.backing === device.vram).toBe(true);

    const g2 = await guest({ extraBytes: 8 * MiB }); // 2048 free pages for 4096 of VRAM
    const short = new IoreqServer(device, g2.host, { pci: PCI_ADDR });
    expect(() => short.start()).toThrow(expect.objectContaining({ code: 'EBUSY', message: expect.stringMatching(/populated 2048 of BAR0's 4096 pages/) }));
    expect(g2.hv.xenLog.at(-1)).toMatch(/Could not allocate/);
    expect(device.region(0)!.backing === device.vram).toBe(true);
    expect(() => g2.host.createIoreqServer('off')).not.toThrow(); // the failed start left no server behind
  });
});

describe('the vGPU on the simulator: its VRAM BAR is guest RAM', () => {
  it("FILL writes VRAM through the device; the guest reads it back through its own mapping, and dirty tracking does not count the device's writes", async () => {
    const g = await guest();
    const gpu = new VirtualGpu();
    cleanup.push(() => gpu.vram.release());
    const server = serve(gpu, g.host);
    const bars = await firmware(g);
    const regs = bars.get(0)!;
    const vram = bars.get(2)!;
    expect([regs, vram]).toEqual([0xe0000000n, 0xe0100000n]);
    expect(server.ramBars()).toEqual([{ index: 2, pages: 256, parkingGfn: PARKING_GFN, gfn: 0xe0100n, placed: true }]);
    server.collectVramDirty(new DirtyBitmap(256));

    // A ring in guest RAM: FILL_RECT {op 1, offset 0, stride 64, 16x4, colour}, FENCE {op 3, value, gpa}.
    const ring = 0x80000n;
    const fence = 0x81000n;
    const cmds = new DataView(new ArrayBuffer(64));
    cmds.setUint32(0, VGPU.OP_FILL_RECT, true);
    cmds.setUint32(8, 64, true);
    cmds.setUint16(12, 16, true);
    cmds.setUint16(14, 4, true);
    cmds.setUint32(16, 0x00ff8000, true);
    cmds.setUint32(32, VGPU.OP_FENCE, true);
    cmds.setUint32(36, 0x1234, true);
    cmds.setBigUint64(40, fence, true);
    await g.vcpu.ramWrite(ring, new Uint8Array(cmds.buffer));
    await g.write(regs + BigInt(VGPU.RING_BASE), 8, ring);
    await g.write(regs + BigInt(VGPU.RING_SIZE), 4, 4096n);
    await g.write(regs + BigInt(VGPU.CONTROL), 4, 1n);
    await g.write(regs + BigInt(VGPU.RING_TAIL), 4, 64n);
    await g.write(regs + BigInt(VGPU.DOORBELL), 4, 1n);
    expect(await g.read(regs + BigInt(VGPU.ERROR), 4)).toBe(0n);
    expect(await g.read(regs + BigInt(VGPU.FENCE_VALUE), 4)).toBe(0x1234n);
    expect(new DataView((await g.vcpu.ramRead(fence, 4)).buffer).getUint32(0, true)).toBe(0x1234);

    const rows = await g.vcpu.ramRead(vram, 4 * 64);
    const px = new Uint32Array(rows.buffer);
    expect(px.every((p) => p === 0x00ff8000)).toBe(true);
    expect(await g.read(vram + 64n * 4n, 4)).toBe(0n); // row 4: untouched
    expect(server.collectVramDirty(new DirtyBitmap(256))).toBe(0);
    await g.write(vram + 8192n, 4, 1n); // the guest's own store is
    const dirty = new DirtyBitmap(256);
    expect(server.collectVramDirty(dirty)).toBe(1);
    expect([...dirty.setPages()]).toEqual([2]);
  });
});
