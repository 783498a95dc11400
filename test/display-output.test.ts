// The display output (cli/display-output.ts) and the neutral display interface
// (src/display-device.ts): PNGs for every pixel format and byte order, updates after VRAM and mode
// changes, blanking, no mode, rate limiting (fake timers), a pluggable dirty source, the vGPU as a
// display device, and `mdevkit serve bochs-display --display-png` driven by the vfio-user client.
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PNG } from 'pngjs';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { VfioUserClient } from '../adapters/vfio/client.js';
import { BOCHS, BochsDisplay, DISPI } from '../examples/bochs-display/index.js';
import { VGPU, VirtualGpu } from '../examples/vgpu/index.js';
import { DisplayOutput, type DisplayOutputStats, type VramDirtySource } from '../cli/display-output.js';
import { isDisplayDevice, type DisplayPlane } from '../src/display-device.js';
import { DirtyBitmap } from '../src/native/dirty-bitmap.js';
import { PCI, PCI_COMMAND } from '../src/pci/constants.js';
import { readInt, writeInt } from './helpers.js';
import { startServer } from './vfio/harness.js';

const MiB = 1 << 20;
let dir: string;
const devices: { vram: { release(): void } }[] = [];
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'mdevkit-display-'));
});
afterEach(() => {
  vi.useRealTimers();
  for (const d of devices.splice(0)) d.vram.release();
  rmSync(dir, { recursive: true, force: true });
});

function bochs(): BochsDisplay {
  const d = new BochsDisplay({ vramSize: 4 * MiB }).realize();
  devices.push(d);
  return d;
}

const dispi = (d: BochsDisplay, index: number, value: number) => writeInt(d.region(2)!, BOCHS.DISPI_OFFSET + 2 * index, 2, value);
function mode(d: BochsDisplay, w: number, h: number, bpp: 16 | 32 = 32, big = false, yOffset = 0): DisplayPlane {
  dispi(d, DISPI.ENABLE, 0);
  for (const [i, v] of [[DISPI.BPP, bpp], [DISPI.XRES, w], [DISPI.YRES, h], [DISPI.VIRT_WIDTH, w], [DISPI.VIRT_HEIGHT, h + yOffset], [DISPI.X_OFFSET, 0], [DISPI.Y_OFFSET, yOffset]] as const) dispi(d, i, v);
  writeInt(d.region(2)!, BOCHS.QEXT_BYTE_ORDER, 4, big ? BOCHS.BYTE_ORDER_BIG : BOCHS.BYTE_ORDER_LITTLE);
  dispi(d, DISPI.ENABLE, DISPI.ENABLED | DISPI.LFB_ENABLED);
  return d.displayPlane()!;
}
/** Blanks or unblanks the way Linux does: reset the attribute flip-flop, then an index write with or without PAS. */
function blank(d: BochsDisplay, on: boolean): void {
  readInt(d.region(2)!, BOCHS.VGA_OFFSET + 0x1a, 1);
  writeInt(d.region(2)!, BOCHS.VGA_OFFSET, 1, on ? 0x00 : 0x20);
}

/** A 24-bit colour per pixel that differs in every channel along both axes. */
const pattern = (x: number, y: number) => (((x * 3) & 0xff) << 16) | (((y * 5) & 0xff) << 8) | ((x ^ y) & 0xff);
const to565 = (p: number) => (((p >> 19) & 0x1f) << 11) | (((p >> 10) & 0x3f) << 5) | ((p >> 3) & 0x1f);
/** RGBA as a PNG shows a pixel stored in `format`. */
function shown(p: number, bpp: 16 | 32): number[] {
  if (bpp === 32) return [(p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff, 0xff];
  const v = to565(p);
  const r = v >> 11, g = (v >> 5) & 0x3f, b = v & 0x1f;
  return [(r << 3) | (r >> 2), (g << 2) | (g >> 4), (b << 3) | (b >> 2), 0xff];
}
function draw(vram: Uint8Array, s: DisplayPlane, fn: (x: number, y: number) => number = pattern, rect = { x: 0, y: 0, w: s.width, h: s.height }): void {
  const v = new DataView(vram.buffer, vram.byteOffset, vram.byteLength);
  const le = s.byteOrder === 'little';
  for (let y = rect.y; y < rect.y + rect.h; y++) {
    for (let x = rect.x; x < rect.x + rect.w; x++) {
      if (s.format === 'xrgb8888') v.setUint32(s.offset + y * s.stride + x * 4, fn(x, y), le);
      else v.setUint16(s.offset + y * s.stride + x * 2, to565(fn(x, y)), le);
    }
  }
}
const readPng = (path: string) => PNG.sync.read(readFileSync(path));
const rgba = (png: PNG, x: number, y: number) => [...png.data.subarray((y * png.width + x) * 4, (y * png.width + x) * 4 + 4)];
function expectImage(png: PNG, s: DisplayPlane, fn: (x: number, y: number) => number = pattern): void {
  expect([png.width, png.height]).toEqual([s.width, s.height]);
  const bpp = s.format === 'xrgb8888' ? 32 : 16;
  for (let y = 0; y < s.height; y++) {
    for (let x = 0; x < s.width; x++) {
      const want = shown(fn(x, y), bpp);
      const got = rgba(png, x, y);
      if (got.join() !== want.join()) expect({ x, y, got }).toEqual({ x, y, got: want });
    }
  }
}
/** RGBA8888 bytes of the whole plane as a PNG of it must hold them. */
function expectedRgba(s: DisplayPlane, fn: (x: number, y: number) => number): Buffer {
  const bpp = s.format === 'xrgb8888' ? 32 : 16;
  const out = Buffer.alloc(s.width * s.height * 4);
  for (let y = 0, i = 0; y < s.height; y++) for (let x = 0; x < s.width; x++, i += 4) out.set(shown(fn(x, y), bpp), i);
  return out;
}
const isBlack = (png: PNG) => png.data.every((b, i) => (i % 4 === 3 ? b === 0xff : b === 0));

describe('DisplayDevice', () => {
  it('the Bochs display and the vGPU implement it; the vGPU reports plane changes from its registers', () => {
    const b = bochs();
    expect(isDisplayDevice(b)).toBe(true);
    expect(b.displayVramBar).toBe(0);
    expect(b.displayVram()).toBe(b.vram.bytes);
    expect(isDisplayDevice({ displayVram: () => 0 })).toBe(false);

    const g = new VirtualGpu().realize();
    try {
      expect(isDisplayDevice(g)).toBe(true);
      expect(g.displayVramBar).toBe(2);
      expect(g.displayVram().length).toBe(VGPU.VRAM_SIZE);
      expect(g.displayPlane()).toBeNull();
      const seen: (DisplayPlane | null)[] = [];
      g.onDisplayChange((p) => seen.push(p));
      const bar0 = g.region(0)!;
      writeInt(bar0, VGPU.SCANOUT_OFFSET, 4, 4096);
      writeInt(bar0, VGPU.SCANOUT_STRIDE, 4, 512);
      writeInt(bar0, VGPU.SCANOUT_FORMAT, 4, VGPU.FORMAT_XRGB8888);
      writeInt(bar0, VGPU.SCANOUT_WIDTH, 4, 128);
      expect(seen).toEqual([]); // no height yet: still no plane, no change
      writeInt(bar0, VGPU.SCANOUT_HEIGHT, 4, 64);
      const plane = { offset: 4096, stride: 512, width: 128, height: 64, format: 'xrgb8888', byteOrder: 'little', blanked: false };
      expect(seen).toEqual([plane]);
      expect(g.displayPlane()).toEqual(plane);
      writeInt(bar0, VGPU.SCANOUT_HEIGHT, 4, 64); // same value: no change
      writeInt(bar0, VGPU.SCANOUT_HEIGHT, 4, 1 << 20); // outside VRAM
      expect(seen).toEqual([plane, null]);
      writeInt(bar0, VGPU.SCANOUT_HEIGHT, 4, 64);
      const image = g.saveState();
      g.reset();
      expect(seen.at(-1)).toBeNull();
      g.restoreState(image);
      expect(seen.at(-1)).toEqual(plane);
      // Guest-visible behaviour is unchanged: the registers read back what was written.
      expect(readInt(bar0, VGPU.SCANOUT_HEIGHT, 4)).toBe(64);
    } finally {
      g.vram.release();
    }
  });
});

describe('DisplayOutput', () => {
  it('writes exact PNGs for XRGB8888 and RGB565 in both byte orders, at the plane offset', () => {
    const d = bochs();
    const path = join(dir, 'frame.png');
    let now = 0;
    const out = new DisplayOutput(d, { path, clock: () => now });
    const cases: [number, number, 16 | 32, boolean, number][] = [
      [160, 100, 32, false, 0],
      [160, 100, 32, true, 7],
      [96, 80, 16, false, 3],
      [96, 80, 16, true, 0],
    ];
    for (const [w, h, bpp, big, yOffset] of cases) {
      const s = mode(d, w, h, bpp, big, yOffset);
      expect(s).toMatchObject({ width: w, height: h, format: bpp === 32 ? 'xrgb8888' : 'rgb565', byteOrder: big ? 'big' : 'little', offset: yOffset * s.stride });
      d.vram.bytes.fill(0xa5); // outside the plane: must not show
      draw(d.vram.bytes, s);
      now += 100;
      expect(out.update()).toBe(true);
      expectImage(readPng(path), s);
    }
    // Written by rename: no temporary file is left next to it.
    expect(readdirSync(dir)).toEqual(['frame.png']);
  });

  it('re-renders after VRAM and mode changes, writes only when the picture changed, and counts pages', () => {
    const d = bochs();
    const path = join(dir, 'frame.png');
    let now = 0;
    const out = new DisplayOutput(d, { path, clock: () => now });
    expect(out.update()).toBe(false); // no mode yet
    expect(existsSync(path)).toBe(false);
    const s = mode(d, 256, 128);
    draw(d.vram.bytes, s);
    expect(out.update()).toBe(true);
    expectImage(readPng(path), s);
    now += 100;
    expect(out.update()).toBe(false); // nothing changed
    // One pixel: one page found, the PNG shows it.
    new DataView(d.vram.bytes.buffer, d.vram.bytes.byteOffset).setUint32(s.offset + 50 * s.stride + 10 * 4, 0x00ff8000, true);
    now += 100;
    const r = out.refresh();
    expect(r).toMatchObject({ changedPages: 1, changed: true });
    expect(out.update()).toBe(true);
    expect(rgba(readPng(path), 10, 50)).toEqual([0xff, 0x80, 0x00, 0xff]);
    // A change outside the plane is found but does not make a new frame.
    d.vram.bytes[3 * MiB] = 1;
    now += 100;
    expect(out.refresh()).toMatchObject({ changedPages: 1, linesUpdated: 0, changed: false });
    // A second mode.
    const s2 = mode(d, 128, 96, 16);
    draw(d.vram.bytes, s2, (x, y) => pattern(y, x));
    now += 100;
    expect(out.update()).toBe(true);
    expectImage(readPng(path), s2, (x, y) => pattern(y, x));
    const st = out.stats();
    expect(st).toMatchObject({ source: 'page-scan', framesWritten: 3, plane: s2 });
    expect(st.frames.map((f) => [f.width, f.height, f.reason])).toEqual([[256, 128, 'change'], [256, 128, 'change'], [128, 96, 'change']]);
    expect(st.frames[1]!.pages).toBe(1);
    expect(st.pagesPerFrame.count).toBe(3);
    expect(st.latencyMs.count).toBe(3);
  });

  it('shows black while blanked and the current picture after unblanking', () => {
    const d = bochs();
    const path = join(dir, 'frame.png');
    let now = 0;
    const out = new DisplayOutput(d, { path, clock: () => (now += 100) });
    const s = mode(d, 128, 64);
    draw(d.vram.bytes, s);
    out.update();
    blank(d, true);
    expect(d.displayPlane()!.blanked).toBe(true);
    expect(out.update()).toBe(true);
    const black = readPng(path);
    expect([black.width, black.height]).toEqual([128, 64]);
    expect(isBlack(black)).toBe(true);
    draw(d.vram.bytes, s, (x, y) => pattern(x + 1, y)); // drawn while blanked: stays black
    expect(out.update()).toBe(false);
    expect(isBlack(readPng(path))).toBe(true);
    blank(d, false);
    expect(out.update()).toBe(true);
    expectImage(readPng(path), s, (x, y) => pattern(x + 1, y));
  });

  it('without a valid mode writes nothing: the file keeps the last frame; bad DISPI values never throw', () => {
    const d = bochs();
    const path = join(dir, 'frame.png');
    let now = 0;
    const out = new DisplayOutput(d, { path, clock: () => (now += 100) });
    out.stop(); // a guest that never set a mode: no file, even at exit
    expect(existsSync(path)).toBe(false);
    const s = mode(d, 128, 64);
    draw(d.vram.bytes, s);
    expect(out.update()).toBe(true);
    const before = readFileSync(path);
    for (const [i, v] of [[DISPI.BPP, 24], [DISPI.BPP, 0xffff], [DISPI.XRES, 0xffff], [DISPI.Y_OFFSET, 0xffff], [DISPI.VIRT_WIDTH, 0xffff], [DISPI.ENABLE, 0]] as const) {
      dispi(d, i, v);
      expect(d.displayPlane()).toBeNull();
      d.vram.bytes[0] ^= 0xff;
      expect(out.update()).toBe(false);
      expect(out.flush()).toBe(false);
      expect(readFileSync(path)).toEqual(before);
      mode(d, 128, 64);
    }
    out.refresh();
    expect(out.stats().plane).toEqual(s);
  });

  it('rate-limits writes to one per interval, follows plane changes and VRAM on its timer (fake timers)', () => {
    vi.useFakeTimers({ now: 0 });
    const d = bochs();
    const path = join(dir, 'frame.png');
    const out = new DisplayOutput(d, { path, intervalMs: 100, clock: () => Date.now() }).start();
    const frames = () => out.stats().framesWritten;
    const s = mode(d, 128, 64); // plane changes: looked at 10 ms later, not inside the guest's access
    expect(frames()).toBe(0);
    vi.advanceTimersByTime(9);
    expect(frames()).toBe(0);
    vi.advanceTimersByTime(1); // 10 ms
    expect(frames()).toBe(1);
    blank(d, true); // seen at 20 ms, but the last write was 10 ms before: written at 110 ms
    vi.advanceTimersByTime(99);
    expect(frames()).toBe(1);
    vi.advanceTimersByTime(1);
    expect(frames()).toBe(2);
    expect(isBlack(readPng(path))).toBe(true);
    blank(d, false);
    draw(d.vram.bytes, s);
    vi.advanceTimersByTime(99); // 209 ms
    expect(frames()).toBe(2);
    vi.advanceTimersByTime(1); // 210 ms
    expect(frames()).toBe(3);
    expectImage(readPng(path), s);
    // A VRAM change alone is found by the timer's scan (every 100 ms) and written within an interval.
    draw(d.vram.bytes, s, (x, y) => pattern(x, y + 1), { x: 0, y: 0, w: 128, h: 8 });
    vi.advanceTimersByTime(200);
    expect(frames()).toBe(4);
    expectImage(readPng(path), s, (x, y) => (y < 8 ? pattern(x, y + 1) : pattern(x, y)));
    // A burst of changes over 100 ms makes at most two frames; none less than 100 ms apart.
    for (let i = 0; i < 50; i++) {
      d.vram.bytes[s.offset + i * 4] ^= 0xff;
      if (i % 10 === 0) blank(d, i % 20 === 0);
      vi.advanceTimersByTime(2);
    }
    vi.advanceTimersByTime(1000);
    const written = out.stats().frames;
    expect(written.length).toBeLessThanOrEqual(7);
    for (let i = 1; i < written.length; i++) expect(written[i]!.atMs - written[i - 1]!.atMs).toBeGreaterThanOrEqual(100);
    const n = frames();
    vi.advanceTimersByTime(1000); // idle: nothing more
    expect(frames()).toBe(n);
    expect(readPng(path).data).toEqual(PNG.sync.read(PNG.sync.write(readPng(path))).data);
    out.stop();
    expect(frames()).toBe(n + 1); // the exit frame
    expect(out.stats().frames.at(-1)).toMatchObject({ reason: 'exit', latencyMs: null });
    vi.advanceTimersByTime(1000);
    expect(frames()).toBe(n + 1);
  });

  it('takes changed pages from a dirty source when there is one, and scans when it cannot tell', () => {
    const d = bochs();
    const path = join(dir, 'frame.png');
    const reports: (DirtyBitmap | null)[] = [];
    const source: VramDirtySource = { name: 'test-dirty', collect: () => (reports.length > 0 ? reports.shift()! : new DirtyBitmap(1024)) };
    const out = new DisplayOutput(d, { path, dirty: source });
    const s = mode(d, 1024, 64); // one 4 KiB page per line
    out.update();
    draw(d.vram.bytes, s, () => 0xffffff, { x: 0, y: 2, w: 1, h: 2 }); // lines 2 and 3
    const one = new DirtyBitmap(1024);
    one.markPage(2); // the source reports only line 2
    reports.push(one);
    expect(out.refresh()).toMatchObject({ changedPages: 1, linesUpdated: 1 });
    out.flush();
    let png = readPng(path);
    expect(rgba(png, 0, 2)).toEqual([0xff, 0xff, 0xff, 0xff]);
    expect(rgba(png, 0, 3)).toEqual([0, 0, 0, 0xff]);
    // The source is trusted: line 3, which it did not report, stays as it was.
    expect(rgba(png, 0, 3)).toEqual([0, 0, 0, 0xff]);
    draw(d.vram.bytes, s, () => 0x00ff00, { x: 0, y: 5, w: 1, h: 1 });
    reports.push(null); // cannot tell: the hash scan finds line 5
    expect(out.refresh()).toMatchObject({ changedPages: 1, linesUpdated: 1 });
    out.flush();
    png = readPng(path);
    expect(rgba(png, 0, 5)).toEqual([0, 0xff, 0, 0xff]);
    expect(out.stats().source).toBe('test-dirty');
  });

  it('reports a file it cannot write once and keeps running', () => {
    const d = bochs();
    const warnings: string[] = [];
    const out = new DisplayOutput(d, { path: join(dir, 'missing', 'frame.png'), warn: (l) => warnings.push(l) });
    mode(d, 64, 64);
    expect(out.update()).toBe(false);
    d.vram.bytes[0] = 1;
    expect(out.update()).toBe(false);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/cannot write .*frame\.png/);
    expect(() => new DisplayOutput(d, { path: '' })).toThrow(expect.objectContaining({ code: 'EINVAL', field: 'options.path' }));
    expect(() => new DisplayOutput(d, { path: 'x.png', intervalMs: 0 })).toThrow(expect.objectContaining({ code: 'ERANGE', field: 'options.intervalMs' }));
  });
});

describe('mdevkit serve bochs-display --display-png (the vfio-user client as VMM)', () => {
  /** Polls the PNG (written by another process) until `ok` holds; the last decode on timeout. */
  async function waitForPng(path: string, ok: (png: PNG) => boolean, timeoutMs = 15000): Promise<{ png: PNG | null; ms: number }> {
    const t0 = performance.now();
    let png: PNG | null = null;
    while (performance.now() - t0 < timeoutMs) {
      try {
        png = readPng(path);
        if (ok(png)) return { png, ms: performance.now() - t0 };
      } catch {
        // not written yet
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    return { png, ms: performance.now() - t0 };
  }
  /** A predicate: the PNG shows exactly `fn` in plane `s` (expected pixels computed once). */
  const matches = (s: DisplayPlane, fn: (x: number, y: number) => number = pattern) => {
    const want = expectedRgba(s, fn);
    return (png: PNG) => png.width === s.width && png.height === s.height && want.equals(png.data);
  };

  it('modeset through BAR2, drawing through the BAR0 mapping, a second mode, BAR relocation, blanking, SIGUSR1 and exit', async () => {
    const png = join(dir, 'frame.png');
    const statsFile = join(dir, 'stats.json');
    const server = await startServer({ device: 'bochs-display', args: ['--display-png', png, '--display-interval', '20', '--stats', statsFile] });
    const c = VfioUserClient.connect(server.paths[0]!, { timeoutMs: 5000 });
    const figures: string[] = [];
    try {
      c.cfgWrite(PCI.BAR0, 4, 0xe0000000);
      c.cfgWrite(PCI.BAR0 + 8, 4, 0xe1000000);
      c.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
      const reg = (i: number, v: number) => c.mmioWrite(2, BOCHS.DISPI_OFFSET + 2 * i, 2, v);
      const setMode = (w: number, h: number, bpp: 16 | 32, big: boolean, yOffset: number): DisplayPlane => {
        reg(DISPI.ENABLE, 0);
        for (const [i, v] of [[DISPI.BPP, bpp], [DISPI.XRES, w], [DISPI.YRES, h], [DISPI.BANK, 0], [DISPI.VIRT_WIDTH, w], [DISPI.VIRT_HEIGHT, 1024], [DISPI.X_OFFSET, 0], [DISPI.Y_OFFSET, yOffset]] as const) reg(i, v);
        c.mmioWrite(2, BOCHS.QEXT_BYTE_ORDER, 4, big ? BOCHS.BYTE_ORDER_BIG : BOCHS.BYTE_ORDER_LITTLE);
        reg(DISPI.ENABLE, DISPI.ENABLED | DISPI.LFB_ENABLED);
        const stride = (w * bpp) / 8;
        return { width: w, height: h, stride, offset: yOffset * stride, format: bpp === 32 ? 'xrgb8888' : 'rgb565', byteOrder: big ? 'big' : 'little', blanked: false };
      };
      const vgaBlank = (on: boolean) => {
        c.mmioRead(2, BOCHS.VGA_OFFSET + 0x1a, 1);
        c.mmioWrite(2, BOCHS.VGA_OFFSET, 1, on ? 0 : 0x20);
      };

      // Before any mode: no PNG (a guest that never loads its driver).
      const m = c.mapRegion(0);
      const vram = m.bytes!;
      expect(existsSync(png)).toBe(false);

      const s1 = setMode(640, 480, 32, false, 0);
      draw(vram, s1);
      let w = await waitForPng(png, matches(s1));
      expect(w.png && matches(s1)(w.png)).toBe(true);
      figures.push(`640×480×32 full frame: ${w.ms.toFixed(0)} ms`);

      // A few lines change: the scan finds their pages, the PNG follows.
      draw(vram, s1, (x, y) => pattern(x + 7, y), { x: 0, y: 100, w: 640, h: 16 });
      const edited = (x: number, y: number) => (y >= 100 && y < 116 ? pattern(x + 7, y) : pattern(x, y));
      w = await waitForPng(png, matches(s1, edited));
      expect(w.png && matches(s1, edited)(w.png)).toBe(true);
      figures.push(`16 lines: ${w.ms.toFixed(0)} ms`);

      // A second mode: 16 bpp, big endian, at an offset.
      const s2 = setMode(320, 200, 16, true, 300);
      draw(vram, s2, (x, y) => pattern(y, x));
      w = await waitForPng(png, matches(s2, (x, y) => pattern(y, x)));
      expect(w.png && matches(s2, (x, y) => pattern(y, x))(w.png)).toBe(true);

      // The guest moves BAR0: VRAM is the same memory; the display does not notice.
      c.cfgWrite(PCI.COMMAND, 2, 0);
      c.cfgWrite(PCI.BAR0, 4, 0xd0000000);
      c.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
      draw(vram, s2, (x, y) => pattern(y + 1, x));
      w = await waitForPng(png, matches(s2, (x, y) => pattern(y + 1, x)));
      expect(w.png && matches(s2, (x, y) => pattern(y + 1, x))(w.png)).toBe(true);

      vgaBlank(true);
      w = await waitForPng(png, (p) => p.width === 320 && isBlack(p));
      expect(w.png && isBlack(w.png)).toBe(true);
      vgaBlank(false);
      w = await waitForPng(png, matches(s2, (x, y) => pattern(y + 1, x)));
      expect(w.png && matches(s2, (x, y) => pattern(y + 1, x))(w.png)).toBe(true);

      // Bad values: no valid mode; the server keeps serving and the file keeps the last frame.
      reg(DISPI.BPP, 24);
      expect(c.mmioRead(2, BOCHS.DISPI_OFFSET + 2 * DISPI.BPP, 2)).toBe(24);
      reg(DISPI.BPP, 16);

      // SIGUSR1: a frame now, changed or not (a new file replaces the old one).
      const ino = statSync(png).ino;
      process.kill(server.proc.pid!, 'SIGUSR1'); // not proc.kill(): it would mark the child killed, and stop() would not SIGTERM it
      const t0 = performance.now();
      while (statSync(png).ino === ino && performance.now() - t0 < 10000) await new Promise((r) => setTimeout(r, 5));
      expect(statSync(png).ino).not.toBe(ino);
      c.unmapRegion(0);
    } finally {
      c.close();
      expect(await server.stop()).toBe(0);
    }
    const stats = JSON.parse(readFileSync(statsFile, 'utf8')) as { display: DisplayOutputStats };
    const d = stats.display;
    expect(d).toMatchObject({ source: 'page-scan', intervalMs: 20 });
    const reasons = d.frames.map((f) => f.reason);
    expect(reasons).toContain('signal');
    expect(reasons.at(-1)).toBe('exit');
    expect(d.frames.some((f) => f.blanked)).toBe(true);
    // The 640×480×32 frames saw the whole drawing (300 pages, maybe over several scans while it
    // was drawn) and the 16-line edit (10 pages); no frame reported more than VRAM has.
    expect(d.frames.filter((f) => f.width === 640).reduce((n, f) => n + f.pages, 0)).toBeGreaterThanOrEqual(310);
    expect(d.pagesPerFrame.max).toBeLessThanOrEqual(4096);
    expect(server.stdout().trim().split('\n')).toHaveLength(1); // only the "serving" line
    figures.push(`server: pages/frame p50 ${d.pagesPerFrame.p50} max ${d.pagesPerFrame.max}; detect→PNG p50 ${d.latencyMs.p50} ms max ${d.latencyMs.max} ms; PNG write p50 ${d.writeMs.p50} ms`);
    console.log(`display figures (vfio-user, page scan every 20 ms): ${figures.join('; ')}`);
    expectImage(readPng(png), { width: 320, height: 200, stride: 640, offset: 300 * 640, format: 'rgb565', byteOrder: 'big', blanked: false }, (x, y) => pattern(y + 1, x));

  });
});
