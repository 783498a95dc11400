/**
 * `mdevkit serve <display> --xen … --display-png` on the simulator: the Bochs display served by an
 * in-process IOREQ server (startServeXen, the code the CLI runs) with its VRAM as guest RAM, a
 * simulated vCPU in a worker doing what Linux's bochs driver does (BARs placed through config
 * cycles, the DISPI modeset through the trapped BAR2, pixels stored straight into VRAM at BAR0's
 * address), and the display output fed by track_dirty_vram: the PNG is exact, each frame counts
 * the pages the guest wrote, and where Xen cannot tell (a placement re-arms tracking, ENODATA) the
 * output compares VRAM instead. Then the CLI's flags.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PNG } from 'pngjs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BOCHS, DISPI } from '../../examples/bochs-display/index.js';
import { pciSbdf } from '../../adapters/xen/ioreq-abi.js';
import { SimHypervisor } from '../../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../../adapters/xen/sim/host.js';
import { SimVcpuThread } from '../../adapters/xen/sim/vcpu-thread.js';
import { startServeXen, type ServeXenOptions, type XenServing } from '../../cli/serve-xen.js';
import { MdevError } from '../../src/errors.js';
import { packageRoot } from '../../src/native/binding.js';
import { PCI, PCI_BAR, PCI_COMMAND } from '../../src/pci/constants.js';
import { assertSimBuildFresh } from '../fixtures/xen-sim-server.js';

const run = promisify(execFile);
const MiB = 1 << 20;
const PAGE = 4096;
const PCI_ADDR = { segment: 0, bus: 0, device: 5, fn: 0 };
const SBDF = pciSbdf(0, 0, 5, 0);
const [W, H] = [640, 480];
const STRIDE = W * 4;

beforeAll(() => assertSimBuildFresh());

let dir = '';
const cleanup: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = '';
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A simulated domain, its host (optionally with a track_dirty_vram that fails) and one vCPU thread. */
async function domain(trackFailure?: () => string | null) {
  const hv = new SimHypervisor({ nrVcpus: 1, ramBytes: 16 * MiB, vcpuTimeoutMs: 5000 });
  const host = new SimXenHost(hv);
  if (trackFailure) {
    const track = host.trackDirtyVram.bind(host);
    host.trackDirtyVram = (firstPfn, nr, bitmap) => {
      const code = nr > 0 ? trackFailure() : null;
      if (code) throw new MdevError(code, 'XEN_DMOP_track_dirty_vram (injected)', 'nr');
      track(firstPfn, nr, bitmap);
    };
  }
  const vcpu = await SimVcpuThread.start(hv.vcpuDescriptor(0), { timeoutMs: 5000 });
  cleanup.push(() => hv.close(), () => host.close(), () => vcpu.close());
  const cfgAddr = (reg: number) => (BigInt(SBDF) << 32n) | BigInt(reg);
  const cfgRead = async (reg: number) => Number(await vcpu.access({ space: 'pci', addr: cfgAddr(reg), size: 4, dir: 'read' }));
  const cfgWrite = async (reg: number, size: 2 | 4, value: number) => void (await vcpu.access({ space: 'pci', addr: cfgAddr(reg), size, dir: 'write', data: BigInt(value >>> 0) }));
  return { hv, host, vcpu, cfgRead, cfgWrite };
}
type Domain = Awaited<ReturnType<typeof domain>>;

async function serve(d: Domain, extra: Partial<ServeXenOptions> = {}): Promise<{ serving: XenServing; png: string }> {
  dir = mkdtempSync(join(tmpdir(), 'mdevkit-xen-display-'));
  const png = join(dir, 'frame.png');
  // The interval is an hour: frames are written when the test flushes, never half way through a guest write.
  const serving = await startServeXen('bochs-display', {
    host: d.host, pci: PCI_ADDR, fixedBars: {}, claimConfigLatch: false, bufioreq: 'atomic', verbose: false,
    display: { path: png, intervalMs: 3_600_000 },
    ...extra,
  });
  cleanup.push(() => serving.close());
  return { serving, png };
}

/** Firmware: sizes the memory BARs, places them from 0xe0000000 up (aligned), enables decoding. */
async function placeBars(d: Domain): Promise<Map<number, bigint>> {
  const bars = new Map<number, bigint>();
  let at = 0xe0000000n;
  for (let i = 0; i < 6; i++) {
    const reg = PCI.BAR0 + 4 * i;
    await d.cfgWrite(reg, 4, 0xffffffff);
    const mask = await d.cfgRead(reg);
    if (mask === 0 || mask & PCI_BAR.SPACE_IO) continue;
    const size = BigInt((~(mask & ~PCI_BAR.MEM_FLAGS_MASK) >>> 0) + 1);
    at = ((at + size - 1n) / size) * size;
    await d.cfgWrite(reg, 4, Number(at));
    bars.set(i, at);
    at += size;
  }
  await d.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
  return bars;
}

/** Linux's bochs modeset through BAR2, 16-bit DISPI writes in its order, then unblank. */
async function modeset(d: Domain, regs: bigint, vramSize: number): Promise<void> {
  const dispi = (index: number, value: number) => d.vcpu.access({ space: 'mmio', addr: regs + BigInt(BOCHS.DISPI_OFFSET + 2 * index), size: 2, dir: 'write', data: BigInt(value) });
  expect(await d.vcpu.access({ space: 'mmio', addr: regs + BigInt(BOCHS.DISPI_OFFSET + 2 * DISPI.ID), size: 2, dir: 'read' })).toBe(0xb0c5n);
  for (const [index, value] of [
    [DISPI.ENABLE, 0], [DISPI.BPP, 32], [DISPI.XRES, W], [DISPI.YRES, H], [DISPI.BANK, 0], [DISPI.VIRT_WIDTH, W],
    [DISPI.VIRT_HEIGHT, Math.floor(vramSize / STRIDE)], [DISPI.X_OFFSET, 0], [DISPI.Y_OFFSET, 0], [DISPI.ENABLE, DISPI.ENABLED | DISPI.LFB_ENABLED],
  ] as const) {
    await dispi(index, value);
  }
  await d.vcpu.access({ space: 'mmio', addr: regs + BigInt(BOCHS.VGA_OFFSET + 0x1a), size: 1, dir: 'read' });
  await d.vcpu.access({ space: 'mmio', addr: regs + BigInt(BOCHS.VGA_OFFSET), size: 1, dir: 'write', data: 0x20n });
}

/** 0xRRGGBB of the picture at (x, y); `phase` changes it. */
const pixel = (x: number, y: number, phase = 0) => ((((x * 3) ^ phase) & 0xff) << 16) | (((y * 5) & 0xff) << 8) | ((x ^ y ^ (phase * 7)) & 0xff);

/** Rows [y0, y1) of the picture as the guest stores them (XRGB8888 little endian, stride = W·4). */
function rows(y0: number, y1: number, phase = 0): Uint8Array {
  const out = new Uint8Array((y1 - y0) * STRIDE);
  const v = new DataView(out.buffer);
  for (let y = y0; y < y1; y++) for (let x = 0; x < W; x++) v.setUint32((y - y0) * STRIDE + x * 4, pixel(x, y, phase), true);
  return out;
}

/** Pages of VRAM that bytes [from, to) touch. */
const pagesOf = (from: number, to: number) => Math.floor((to - 1) / PAGE) - Math.floor(from / PAGE) + 1;

/** A band of rows [y0, y1) drawn with another phase. */
interface Band {
  y0: number;
  y1: number;
  phase: number;
}

/** Expects the PNG at `file` to be the picture exactly (phase 0, except in `bands`). */
function expectPicture(file: string, ...bands: Band[]): void {
  const png = PNG.sync.read(readFileSync(file));
  expect([png.width, png.height]).toEqual([W, H]);
  const want = Buffer.alloc(W * H * 4);
  for (let y = 0; y < H; y++) {
    const phase = bands.find((b) => y >= b.y0 && y < b.y1)?.phase ?? 0;
    for (let x = 0; x < W; x++) {
      const p = pixel(x, y, phase);
      want.set([p >> 16, (p >> 8) & 0xff, p & 0xff, 0xff], (y * W + x) * 4);
    }
  }
  expect(Buffer.compare(png.data, want)).toBe(0);
}

const lastFrame = (s: XenServing) => s.output!.stats().frames.at(-1)!;

describe('mdevkit serve bochs-display --xen-sim --display-png: the PNG from track_dirty_vram', () => {
  it('the guest sets a mode through BAR2 and draws into VRAM at BAR0: exact PNGs, each frame counting the pages the guest wrote, no ioreq for any pixel', async () => {
    const d = await domain();
    const { serving, png } = await serve(d);
    const { server, output } = serving;
    expect(server.trackedVramBar).toBe(0);
    expect(output!.stats().source).toBe('track_dirty_vram');
    const bars = await placeBars(d);
    const [vram, regs] = [bars.get(0)!, bars.get(2)!];
    expect(server.ramBars()[0]).toMatchObject({ index: 0, gfn: vram / 4096n, placed: true });
    await modeset(d, regs, 16 * MiB);
    await sleep(80); // the output looks 10 ms after a plane change
    expect(existsSync(png)).toBe(true); // the new mode: black, found by comparing (tracking was just armed)
    expect(output!.stats().framesWritten).toBe(1);
    expect(lastFrame(serving)).toMatchObject({ width: W, height: H, pages: 0, blanked: false });

    // The whole picture, by the guest's own stores into its RAM.
    const ioreqs = server.engineStats()['ioreqs'];
    await d.vcpu.ramWrite(vram, rows(0, H));
    expect(server.engineStats()['ioreqs']).toBe(ioreqs);
    expect(output!.flush('signal')).toBe(true);
    expectPicture(png);
    expect(lastFrame(serving).pages).toBe(pagesOf(0, H * STRIDE)); // 300 pages
    expect(lastFrame(serving).pages).toBe(300);

    // A band of 10 lines: exactly the pages it spans, whatever their content was.
    await d.vcpu.ramWrite(vram + BigInt(100 * STRIDE), rows(100, 110, 1));
    expect(output!.flush('signal')).toBe(true);
    expectPicture(png, { y0: 100, y1: 110, phase: 1 });
    expect(lastFrame(serving).pages).toBe(pagesOf(100 * STRIDE, 110 * STRIDE)); // 7
    // One 4-byte store (a trapped-free MMIO write of the vCPU) at the last pixel.
    await d.vcpu.access({ space: 'mmio', addr: vram + BigInt((H - 1) * STRIDE + (W - 1) * 4), size: 4, dir: 'write', data: BigInt(pixel(W - 1, H - 1)) });
    output!.flush('signal');
    expect(lastFrame(serving).pages).toBe(1);
    output!.flush('signal');
    expect(lastFrame(serving).pages).toBe(0); // nothing written since
    expect(server.engineStats()['ioreqs']).toBe(ioreqs);
    const stats = serving.stats();
    expect(stats.display!.pagesPerFrame.max).toBe(300);
    expect(stats.ramBars).toEqual([{ index: 0, pages: 4096, parkingGfn: expect.stringMatching(/^0x/), gfn: `0x${(vram / 4096n).toString(16)}`, placed: true }]);
  });

  it('where Xen cannot tell — tracking re-armed after a BAR move, ENODATA — the output compares VRAM: the PNG stays exact, only changed pages count', async () => {
    let fail: string | null = null;
    const d = await domain(() => fail);
    const { serving, png } = await serve(d);
    const output = serving.output!;
    const bars = await placeBars(d);
    await modeset(d, bars.get(2)!, 16 * MiB);
    await sleep(80);
    await d.vcpu.ramWrite(bars.get(0)!, rows(0, H));
    output.flush('signal');
    expect(lastFrame(serving).pages).toBe(300);

    // The guest moves BAR0: the pages (and the picture) move along; Xen's new range starts all dirty.
    await d.cfgWrite(PCI.BAR0, 4, 0xd0000000);
    expect(serving.server.ramBars()[0]).toMatchObject({ gfn: 0xd0000n, placed: true });
    output.flush('signal');
    expectPicture(png);
    expect(lastFrame(serving).pages).toBe(0); // compared: nothing changed
    // Tracking works at the new address.
    await d.vcpu.ramWrite(0xd0000000n + BigInt(200 * STRIDE), rows(200, 202, 2));
    output.flush('signal');
    expectPicture(png, { y0: 200, y1: 202, phase: 2 });
    expect(lastFrame(serving).pages).toBe(pagesOf(200 * STRIDE, 202 * STRIDE));

    // ENODATA: Xen does not know. Two lines rewritten with the same content, two changed: compared, 2 lines' pages count.
    fail = 'ENODATA';
    await d.vcpu.ramWrite(0xd0000000n + BigInt(300 * STRIDE), rows(300, 302, 0)); // same as before
    await d.vcpu.ramWrite(0xd0000000n + BigInt(400 * STRIDE), rows(400, 402, 3));
    output.flush('signal');
    fail = null;
    expectPicture(png, { y0: 200, y1: 202, phase: 2 }, { y0: 400, y1: 402, phase: 3 });
    expect(lastFrame(serving).pages).toBe(pagesOf(400 * STRIDE, 402 * STRIDE)); // 2, not 4
  });

  it('a failing track_dirty_vram (the domain gone at exit) is reported once; the output compares VRAM and still writes its last frame', async () => {
    let fail: string | null = null;
    const d = await domain(() => fail);
    const warnings: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string) => (warnings.push(String(chunk)), true)) as typeof process.stderr.write;
    cleanup.push(() => void (process.stderr.write = write));
    const { serving, png } = await serve(d);
    const bars = await placeBars(d);
    await modeset(d, bars.get(2)!, 16 * MiB);
    await sleep(80);
    fail = 'ESRCH';
    await d.vcpu.ramWrite(bars.get(0)!, rows(0, H));
    serving.output!.flush('signal');
    serving.close();
    expectPicture(png);
    expect(warnings.filter((w) => /track_dirty_vram failed, comparing VRAM instead: .*ESRCH|injected/.test(w))).toHaveLength(1);
    expect(lastFrame(serving)).toMatchObject({ reason: 'exit' });
  });

  it("ramBars 'trap': no dirty source; every store is an ioreq and the page scan finds what changed", async () => {
    const d = await domain();
    const { serving, png } = await serve(d, { ramBars: 'trap' });
    expect(serving.server.trackedVramBar).toBe(null);
    expect(serving.output!.stats().source).toBe('page-scan');
    const bars = await placeBars(d);
    await modeset(d, bars.get(2)!, 16 * MiB);
    await sleep(80);
    const before = serving.server.engineStats()['ioreqs']!;
    for (let x = 0; x < 4; x++) await d.vcpu.access({ space: 'mmio', addr: bars.get(0)! + BigInt(x * 4), size: 4, dir: 'write', data: BigInt(pixel(x, 0)) });
    expect(serving.server.engineStats()['ioreqs']!).toBe(before + 4);
    serving.output!.flush('signal');
    expect(lastFrame(serving).pages).toBe(1);
    const shown = PNG.sync.read(readFileSync(png));
    const p = pixel(3, 0);
    expect([...shown.data.subarray(12, 16)]).toEqual([p >> 16, (p >> 8) & 0xff, p & 0xff, 0xff]);
  });
});

describe('mdevkit serve --xen-sim: display and RAM BAR flags', () => {
  const cli = join(packageRoot(), 'dist', 'cli', 'main.js');

  it('serve --help documents --ram-bars, --ram-bar-parking and --display-png for Xen', async () => {
    const { stdout } = await run(process.execPath, [cli, 'serve', '--help']);
    expect(stdout).toMatch(/--ram-bars <mode>/);
    expect(stdout).toMatch(/--ram-bar-parking <address>/);
    expect(stdout).toMatch(/track_dirty_vram/);
    expect(stdout).toMatch(/serve bochs-display --xen 5 --bdf 00:07.0 --config-latch --display-png/);
  });

  it('--display-png is accepted with --xen-sim; --stats has the server counters and the display figures; bad flags are refused', async () => {
    dir = mkdtempSync(join(tmpdir(), 'mdevkit-xen-display-'));
    const png = join(dir, 'f.png');
    const stats = join(dir, 'stats.json');
    const child = execFile(process.execPath, [cli, 'serve', 'bochs-display', '--xen-sim', '--bdf', '00:05.0', '--display-png', png, '--stats', stats, '--ram-bar-parking', '0x2000000000']);
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    let out = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (b: Buffer) => ((out += b.toString()), out.includes('serving') && resolve()));
      void exited.then((code) => reject(new Error(`exited ${code} before serving`)));
    });
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    const s = JSON.parse(readFileSync(stats, 'utf8')) as { server: Record<string, number>; ramBars: { parkingGfn: string }[]; display: { source: string; framesWritten: number } };
    expect(s.display).toMatchObject({ source: 'track_dirty_vram', framesWritten: 0 });
    expect(s.ramBars[0]!.parkingGfn).toBe('0x2000000');
    expect(existsSync(png)).toBe(false); // no guest set a mode
    await expect(run(process.execPath, [cli, 'serve', 'bochs-display', '--xen-sim', '--ram-bars', 'mapped'])).rejects.toMatchObject({ stderr: expect.stringMatching(/--ram-bars <mode>.*must be ram or trap/) });
    await expect(run(process.execPath, [cli, 'serve', 'bochs-display', '--xen-sim', '--ram-bar-parking', '0x1001'])).rejects.toMatchObject({ stderr: expect.stringMatching(/not page aligned/) });
    await expect(run(process.execPath, [cli, 'serve', 'edu', '--xen-sim', '--display-png', png])).rejects.toMatchObject({ stderr: expect.stringMatching(/EINVAL.*not a display device/) });
  });
});
