// The Bochs-dispi display (examples/bochs-display): identity, EDID, the register windows, the exact
// sequence Linux 6.1's bochs DRM driver runs, mode validity, reset, save/restore, rendering through
// ScanoutDisplay (all pixel formats), and the device served by `mdevkit serve` in its own process,
// driven through the vfio-user client like a VMM would.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { PNG } from 'pngjs';
import { afterEach, describe, expect, it } from 'vitest';
import { VfioUserClient } from '../adapters/vfio/client.js';
import { PciIrq, RegionFlag } from '../adapters/vfio/protocol.js';
import { BOCHS, BochsDisplay, DISPI, buildEdid, timingFor, type BochsDisplayOptions, type ScanoutState } from '../examples/bochs-display/index.js';
import createDevice from '../examples/bochs-display/index.js';
import { resolveModule } from '../cli/load-device.js';
import { ScanoutDisplay, type ScanoutGeometry } from '../src/display.js';
import { packageRoot } from '../src/native/binding.js';
import { PCI, PCI_COMMAND } from '../src/pci/constants.js';
import { decodeState, encodeState } from '../src/state.js';
import type { RegionAccessor } from '../src/regions.js';
import { readInt, writeInt } from './helpers.js';
import { startServer } from './vfio/harness.js';

const MiB = 1 << 20;
const errno = (code: string, field?: string) => expect.objectContaining(field === undefined ? { code } : { code, field });

const devices: BochsDisplay[] = [];
function make(options?: BochsDisplayOptions): BochsDisplay {
  const d = new BochsDisplay(options).realize();
  devices.push(d);
  return d;
}
afterEach(() => {
  for (const d of devices.splice(0)) d.vram.release();
});

const bar2 = (d: BochsDisplay): RegionAccessor => d.region(2)!;
const dispiAddr = (index: number) => BOCHS.DISPI_OFFSET + 2 * index;
const dispiRead = (d: BochsDisplay, index: number) => readInt(bar2(d), dispiAddr(index), 2);
const dispiWrite = (d: BochsDisplay, index: number, value: number) => writeInt(bar2(d), dispiAddr(index), 2, value);
const cfg = (d: BochsDisplay, offset: number, size: number) => readInt(d.configAccessor, offset, size);

/** What the 6.1 driver does at probe; returns the EDID it read (or null without a valid header). */
function linuxProbe(io: { read(off: number, size: 1 | 2 | 4): number; write(off: number, size: 1 | 2 | 4, v: number): void }): { id: number; vram: number; edid: Uint8Array | null } {
  const id = io.read(dispiAddr(DISPI.ID), 2);
  const vram = io.read(dispiAddr(DISPI.VIDEO_MEMORY_64K), 2) * 64 * 1024;
  const qext = io.read(BOCHS.QEXT_OFFSET, 4);
  if (qext >= 8) io.write(BOCHS.QEXT_BYTE_ORDER, 4, BOCHS.BYTE_ORDER_LITTLE);
  const header = [...Array(8).keys()].map((i) => io.read(i, 1));
  if (header.join() !== [0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0].join()) return { id, vram, edid: null };
  const edid = new Uint8Array(256);
  for (let i = 0; i < 256; i++) edid[i] = io.read(i, 1); // the trace shows 256 byte reads
  return { id, vram, edid };
}

/** The 6.1 modeset: unblank through the VGA window, then the DISPI writes in the driver's order, then set_base three times. */
function linuxModeset(io: { read(off: number, size: 1 | 2 | 4): number; write(off: number, size: 1 | 2 | 4, v: number): void }, vram: number, w: number, h: number): void {
  io.write(BOCHS.VGA_OFFSET + 0x02, 1, 0x01);
  io.read(BOCHS.VGA_OFFSET + 0x1a, 1);
  io.write(BOCHS.VGA_OFFSET, 1, 0x20);
  const d = (i: number, v: number) => io.write(dispiAddr(i), 2, v);
  d(DISPI.ENABLE, 0);
  d(DISPI.BPP, 32);
  d(DISPI.XRES, w);
  d(DISPI.YRES, h);
  d(DISPI.BANK, 0);
  d(DISPI.VIRT_WIDTH, w);
  d(DISPI.VIRT_HEIGHT, Math.floor(vram / (w * 4)));
  d(DISPI.X_OFFSET, 0);
  d(DISPI.Y_OFFSET, 0);
  d(DISPI.ENABLE, DISPI.ENABLED | DISPI.LFB_ENABLED);
  for (let i = 0; i < 3; i++) {
    d(DISPI.VIRT_WIDTH, w);
    d(DISPI.X_OFFSET, 0);
    d(DISPI.Y_OFFSET, 0);
    io.write(BOCHS.QEXT_BYTE_ORDER, 4, BOCHS.BYTE_ORDER_LITTLE);
  }
}

function localIo(dev: BochsDisplay) {
  return {
    read: (off: number, size: 1 | 2 | 4) => readInt(bar2(dev), off, size),
    write: (off: number, size: 1 | 2 | 4, v: number) => writeInt(bar2(dev), off, size, v),
  };
}

/** A valid 32-bpp mode written straight into the registers. */
function setMode(d: BochsDisplay, w: number, h: number, bpp = 32): void {
  for (const [i, v] of [
    [DISPI.BPP, bpp],
    [DISPI.XRES, w],
    [DISPI.YRES, h],
    [DISPI.VIRT_WIDTH, w],
    [DISPI.VIRT_HEIGHT, h],
    [DISPI.X_OFFSET, 0],
    [DISPI.Y_OFFSET, 0],
    [DISPI.ENABLE, DISPI.ENABLED | DISPI.LFB_ENABLED],
  ] as const) {
    dispiWrite(d, i, v);
  }
}

const expectedState = (w: number, h: number, extra: Partial<ScanoutState> = {}): ScanoutState => ({
  width: w,
  height: h,
  stride: w * 4,
  offset: 0,
  bpp: 32,
  format: 'xrgb8888',
  byteOrder: 'little',
  blanked: false,
  ...extra,
});

/** A deterministic test pattern, XRGB. */
const pattern = (x: number, y: number): number => (((x * 7) & 0xff) << 16) | (((y * 3) & 0xff) << 8) | ((x + y) & 0xff);

function rgbaAt(png: PNG, x: number, y: number): number[] {
  const i = (y * png.width + x) * 4;
  return [...png.data.subarray(i, i + 4)];
}

function decodeDtd(e: Uint8Array, at: number) {
  const hBlank = e[at + 3]! | ((e[at + 4]! & 0xf) << 8);
  const vBlank = e[at + 6]! | ((e[at + 7]! & 0xf) << 8);
  return {
    pixelClockKhz: (e[at]! | (e[at + 1]! << 8)) * 10,
    hActive: e[at + 2]! | ((e[at + 4]! >> 4) << 8),
    vActive: e[at + 5]! | ((e[at + 7]! >> 4) << 8),
    hBlank,
    vBlank,
    hFront: e[at + 8]! | ((e[at + 11]! >> 6) << 8),
    hSync: e[at + 9]! | (((e[at + 11]! >> 4) & 3) << 8),
    vFront: (e[at + 10]! >> 4) | (((e[at + 11]! >> 2) & 3) << 4),
    vSync: (e[at + 10]! & 0xf) | ((e[at + 11]! & 3) << 4),
  };
}

describe('bochs-display: identity and config space', () => {
  it('is 1234:1111, display/other, revision 2, an "unknown" bochs subsystem, no interrupt pin and no capabilities', () => {
    const d = make();
    expect(cfg(d, PCI.VENDOR_ID, 2)).toBe(0x1234);
    expect(cfg(d, PCI.DEVICE_ID, 2)).toBe(0x1111);
    expect(cfg(d, PCI.REVISION_ID, 1)).toBe(2);
    expect(cfg(d, PCI.CLASS_PROG, 1)).toBe(0x00);
    expect(cfg(d, PCI.CLASS_DEVICE, 2)).toBe(0x0380);
    const subsystem = [cfg(d, PCI.SUBSYSTEM_VENDOR_ID, 2), cfg(d, PCI.SUBSYSTEM_ID, 2)];
    expect(subsystem).not.toEqual([0x1af4, 0x1100]); // Linux would take it for QEMU's stdvga
    expect(subsystem).toEqual([BOCHS.SUBSYSTEM_VENDOR_ID, BOCHS.SUBSYSTEM_ID]);
    expect(cfg(d, PCI.INTERRUPT_PIN, 1)).toBe(0);
    expect(cfg(d, PCI.STATUS, 2) & 0x10).toBe(0); // no capability list
    expect(cfg(d, PCI.CAPABILITY_LIST, 1)).toBe(0);
    expect(d.msi).toBeNull();
    expect(d.msix).toBeNull();
    expect(d.pcie).toBeNull();
  });

  it('sizes BAR0 as 32-bit prefetchable VRAM and BAR2 as a 4 KiB register BAR; the rest are unused', () => {
    for (const vramSize of [4 * MiB, 16 * MiB, 64 * MiB]) {
      const d = make({ vramSize });
      const bar = (i: number) => PCI.BAR0 + 4 * i;
      for (let i = 0; i < 6; i++) writeInt(d.configAccessor, bar(i), 4, 0xffffffff);
      expect(cfg(d, bar(0), 4) >>> 0).toBe((~(vramSize - 1) | 0x8) >>> 0);
      expect(cfg(d, bar(2), 4) >>> 0).toBe(0xfffff000);
      for (const i of [1, 3, 4, 5]) expect(cfg(d, bar(i), 4)).toBe(0);
      expect(cfg(d, PCI.ROM_ADDRESS, 4)).toBe(0);
      // Place the BARs and enable decoding: the device reports the moves.
      const moves: [number, bigint | null][] = [];
      d.on('barRemap', (e) => moves.push([e.index, e.to]));
      writeInt(d.configAccessor, bar(0), 4, 0xe0000000);
      writeInt(d.configAccessor, bar(2), 4, 0xf0000000);
      writeInt(d.configAccessor, PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
      expect(moves).toEqual([
        [0, 0xe0000000n],
        [2, 0xf0000000n],
      ]);
    }
  });

  it('VRAM is fully mappable shared memory; BAR2 traps', () => {
    const d = make();
    const vram = d.region(0)!;
    expect(vram.size).toBe(16 * MiB);
    expect(vram.fullyMappable).toBe(true);
    expect(vram.backing).toBe(d.vram);
    expect(d.vram.fd).toBeGreaterThanOrEqual(0);
    const mmio = d.region(2)!;
    expect(mmio.size).toBe(0x1000);
    expect(mmio.mmapAreas).toEqual([]);
    expect(d.bars[0]).toMatchObject({ kind: 'mem32', prefetchable: true });
    expect(d.bars[2]).toMatchObject({ kind: 'mem32', prefetchable: false });
  });

  it('refuses VRAM sizes that are not a power of two from 4 to 256 MiB, and preferred modes that do not fit', () => {
    expect(() => new BochsDisplay({ vramSize: 2 * MiB })).toThrow(errno('ERANGE', 'options.vramSize'));
    expect(() => new BochsDisplay({ vramSize: 512 * MiB })).toThrow(errno('ERANGE', 'options.vramSize'));
    expect(() => new BochsDisplay({ vramSize: 12 * MiB })).toThrow(errno('EINVAL', 'options.vramSize'));
    expect(() => new BochsDisplay({ vramSize: 4.5 })).toThrow(errno('EINVAL', 'options.vramSize'));
    expect(() => new BochsDisplay({ vramSize: 4 * MiB, preferredMode: { width: 1920, height: 1080 } })).toThrow(errno('ERANGE', 'options.preferredMode'));
    expect(() => new BochsDisplay({ preferredMode: { width: 32, height: 768 } })).toThrow(errno('ERANGE', 'mode.width'));
    expect(() => new BochsDisplay({ preferredMode: { width: 4095, height: 4095 }, vramSize: 256 * MiB })).toThrow(errno('ERANGE', 'mode'));
    expect(() => new BochsDisplay({ preferredMode: '1024x768' as never })).toThrow(errno('EINVAL', 'options.preferredMode'));
  });

  it('is the built-in device "bochs-display" of the CLI', () => {
    expect(resolveModule('bochs-display')).toBe(join(packageRoot(), 'dist/examples/bochs-display/index.js'));
    const listing = execFileSync(process.execPath, [join(packageRoot(), 'dist/cli/main.js'), 'lspci', 'bochs-display']).toString();
    expect(listing).toContain('Display controller [0380]: Device 1234:1111 (rev 02)');
    expect(listing).toMatch(/Region 0: Memory at <unassigned> \(32-bit, prefetchable\) \[disabled\] \[size=16M\]/);
    expect(listing).toMatch(/Region 2: Memory at <unassigned> \(32-bit, non-prefetchable\) \[disabled\] \[size=4K\]/);
    const d = createDevice();
    devices.push(d);
    expect(d).toBeInstanceOf(BochsDisplay);
    expect(d.vramSize).toBe(16 * MiB);
    expect(d.preferredMode).toEqual({ width: 1024, height: 768 });
  });
});

describe('bochs-display: EDID', () => {
  it('serves a valid EDID 1.4 base block whose preferred timing is the default 1024×768', () => {
    const d = make();
    const window = new Uint8Array(BOCHS.EDID_WINDOW);
    bar2(d).read(0, window);
    const e = window.subarray(0, 128);
    expect([...e.subarray(0, 8)]).toEqual([0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    expect(e.reduce((a, b) => a + b, 0) % 256).toBe(0);
    expect([e[18], e[19]]).toEqual([1, 4]); // version 1.4
    expect(e[20]! & 0x80).toBe(0x80); // digital input
    expect(e[24]! & 0x02).toBe(0x02); // the first detailed timing is the preferred (native) one
    expect(e[126]).toBe(0); // no extensions
    expect(window.subarray(128).every((b) => b === 0)).toBe(true); // past the block: zeros
    const dtd = decodeDtd(e, 54);
    expect(dtd.pixelClockKhz).toBeGreaterThan(0);
    expect([dtd.hActive, dtd.vActive]).toEqual([1024, 768]);
    const t = timingFor({ width: 1024, height: 768 });
    expect(dtd).toMatchObject({ pixelClockKhz: t.pixelClockKhz, hFront: t.hFront, hSync: t.hSync, vFront: t.vFront, vSync: t.vSync });
    expect(dtd.hBlank).toBe(t.hFront + t.hSync + t.hBack);
    expect(dtd.vBlank).toBe(t.vFront + t.vSync + t.vBack);
    const refresh = (dtd.pixelClockKhz * 1000) / ((dtd.hActive + dtd.hBlank) * (dtd.vActive + dtd.vBlank));
    expect(refresh).toBeGreaterThanOrEqual(60);
    expect(refresh).toBeLessThan(60.1);
    // Descriptor 2 names the product.
    expect([...e.subarray(72, 77)]).toEqual([0, 0, 0, 0xfc, 0]);
    expect(Buffer.from(e.subarray(77, 90)).toString('latin1').split('\n')[0]).toBe('mdevkit');
    // Byte reads (how Linux reads it) give the same bytes; writes change nothing.
    for (let i = 0; i < 128; i += 17) expect(readInt(bar2(d), i, 1)).toBe(e[i]);
    writeInt(bar2(d), 0, 4, 0x12345678);
    expect(readInt(bar2(d), 0, 4)).toBe(0xffffff00);
  });

  it('takes the preferred mode from the options, and can be left out', () => {
    const d = make({ preferredMode: { width: 1280, height: 800 } });
    const e = new Uint8Array(128);
    bar2(d).read(0, e);
    expect(e.reduce((a, b) => a + b, 0) % 256).toBe(0);
    expect(decodeDtd(e, 54)).toMatchObject({ hActive: 1280, vActive: 800 });
    expect(e).toEqual(buildEdid({ width: 1280, height: 800 }));
    for (const mode of [
      { width: 64, height: 64 },
      { width: 1920, height: 1080 },
      { width: 4095, height: 2300 },
    ]) {
      const b = buildEdid(mode);
      expect(b.reduce((a, x) => a + x, 0) % 256).toBe(0);
      const dtd = decodeDtd(b, 54);
      expect([dtd.hActive, dtd.vActive]).toEqual([mode.width, mode.height]);
      expect(dtd.pixelClockKhz).toBeGreaterThanOrEqual(10_000); // parsers take less for garbage
    }
    const none = make({ edid: false });
    expect(none.edid.length).toBe(0);
    expect(readInt(bar2(none), 0, 4)).toBe(0); // no header: Linux uses its no-EDID modes
  });
});

describe('bochs-display: the Linux 6.1 bochs driver', () => {
  it('probes, sets 1024×768 and then 1280×800, and the device shows exactly those planes', () => {
    const d = make();
    writeInt(d.configAccessor, PCI.BAR0, 4, 0xe0000000);
    writeInt(d.configAccessor, PCI.BAR0 + 8, 4, 0xe1000000);
    writeInt(d.configAccessor, PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
    const io = localIo(d);
    const probe = linuxProbe(io);
    expect(probe.id).toBe(0xb0c5);
    expect(probe.id & 0xfff0).toBe(0xb0c0);
    expect(probe.vram).toBe(16 * MiB); // equals the BAR size: no "Size mismatch"
    expect(readInt(bar2(d), BOCHS.QEXT_OFFSET, 4)).toBe(8);
    expect(d.byteOrder).toBe('little');
    expect(probe.edid).not.toBeNull();
    expect(probe.edid!.subarray(0, 128)).toEqual(d.edid);
    expect(probe.edid!.subarray(128).every((b) => b === 0)).toBe(true);
    expect(d.scanout()).toBeNull(); // nothing enabled yet

    const seen: (ScanoutState | null)[] = [];
    d.onScanoutChange((s) => seen.push(s));
    const g0 = d.modeGeneration;
    linuxModeset(io, probe.vram, 1024, 768);
    expect(d.scanout()).toEqual(expectedState(1024, 768));
    expect(seen.at(-1)).toEqual(expectedState(1024, 768));
    expect(d.modeGeneration).toBeGreaterThan(g0);
    expect(d.dispiRegisters()).toEqual([0xb0c5, 1024, 768, 32, 0x41, 0, 1024, 4096, 0, 0, 0x100]);

    // The set_base repeats change nothing once the mode is up.
    const g1 = d.modeGeneration;
    for (let i = 0; i < 3; i++) {
      dispiWrite(d, DISPI.VIRT_WIDTH, 1024);
      dispiWrite(d, DISPI.Y_OFFSET, 0);
      writeInt(bar2(d), BOCHS.QEXT_BYTE_ORDER, 4, BOCHS.BYTE_ORDER_LITTLE);
    }
    expect(d.modeGeneration).toBe(g1);

    linuxModeset(io, probe.vram, 1280, 800);
    expect(d.scanout()).toEqual(expectedState(1280, 800));
    expect(dispiRead(d, DISPI.VIRT_HEIGHT)).toBe(3276); // as in the trace
    expect(seen.at(-1)).toEqual(expectedState(1280, 800));

    // The VRAM helper flips by placing a buffer further into VRAM: Y_OFFSET (and X_OFFSET) move the plane.
    dispiWrite(d, DISPI.Y_OFFSET, 800);
    expect(d.scanout()).toEqual(expectedState(1280, 800, { offset: 800 * 5120 }));
    dispiWrite(d, DISPI.X_OFFSET, 16);
    expect(d.scanout()).toEqual(expectedState(1280, 800, { offset: 16 * 4 + 800 * 5120 }));
    dispiWrite(d, DISPI.VIRT_WIDTH, 2048); // a wider virtual screen widens the stride
    dispiWrite(d, DISPI.VIRT_HEIGHT, 1600);
    expect(d.scanout()).toEqual(expectedState(1280, 800, { stride: 8192, offset: 16 * 4 + 800 * 8192 }));
  });

  it('blanks and unblanks through the attribute controller, like the driver does', () => {
    const d = make();
    setMode(d, 640, 480);
    expect(d.scanout()!.blanked).toBe(false); // a legacy-free display shows its picture from power-on
    const g = d.modeGeneration;
    expect(readInt(bar2(d), BOCHS.VGA_OFFSET + 0x1a, 1)).toBe(0); // 0x3da: harmless, resets the flip-flop
    writeInt(bar2(d), BOCHS.VGA_OFFSET, 1, 0x00);
    expect(d.scanout()!.blanked).toBe(true);
    expect(d.modeGeneration).toBe(g + 1);
    readInt(bar2(d), BOCHS.VGA_OFFSET + 0x1a, 1);
    writeInt(bar2(d), BOCHS.VGA_OFFSET, 1, 0x20);
    expect(d.scanout()!.blanked).toBe(false);
    expect(d.modeGeneration).toBe(g + 2);
    // 0x3c0 alternates index and data: the write after an index is attribute data, not a blank.
    writeInt(bar2(d), BOCHS.VGA_OFFSET, 1, 0x00);
    expect(d.scanout()!.blanked).toBe(false);
    expect(readInt(bar2(d), BOCHS.VGA_OFFSET + 1, 1)).toBe(0x00);
    writeInt(bar2(d), BOCHS.VGA_OFFSET, 1, 0x10); // index again (0x10 without PAS): blank
    expect(d.scanout()!.blanked).toBe(true);
    expect(readInt(bar2(d), BOCHS.VGA_OFFSET, 1)).toBe(0x10);
    // Other VGA ports just store what is written.
    writeInt(bar2(d), BOCHS.VGA_OFFSET + 2, 1, 0x01);
    writeInt(bar2(d), BOCHS.VGA_OFFSET + 0x14, 2, 0xbeef);
    expect(readInt(bar2(d), BOCHS.VGA_OFFSET + 2, 1)).toBe(0x01);
    expect(readInt(bar2(d), BOCHS.VGA_OFFSET + 0x14, 2)).toBe(0xbeef);
    expect(readInt(bar2(d), 0x420, 4)).toBe(0); // between the windows: zeros
  });
});

describe('bochs-display: DISPI registers', () => {
  it('ID reads 0xb0c5 whatever is written; VIDEO_MEMORY_64K is read-only and matches BAR0', () => {
    const d = make({ vramSize: 4 * MiB });
    for (const v of [0xb0c0, 0xb0c2, 0xb0c5, 0x1234]) {
      dispiWrite(d, DISPI.ID, v);
      expect(dispiRead(d, DISPI.ID)).toBe(0xb0c5);
    }
    expect(dispiRead(d, DISPI.VIDEO_MEMORY_64K)).toBe(0x40);
    dispiWrite(d, DISPI.VIDEO_MEMORY_64K, 0x1000);
    expect(dispiRead(d, DISPI.VIDEO_MEMORY_64K)).toBe(0x40);
    expect(dispiRead(make({ vramSize: 16 * MiB }), DISPI.VIDEO_MEMORY_64K)).toBe(0x100);
    expect(dispiRead(make({ vramSize: 256 * MiB }), DISPI.VIDEO_MEMORY_64K)).toBe(0x1000);
  });

  it('GETCAPS makes XRES, YRES and BPP read the maxima; the stored values come back after', () => {
    const d = make();
    dispiWrite(d, DISPI.XRES, 800);
    dispiWrite(d, DISPI.YRES, 600);
    dispiWrite(d, DISPI.BPP, 16);
    dispiWrite(d, DISPI.ENABLE, DISPI.GETCAPS);
    expect([dispiRead(d, DISPI.XRES), dispiRead(d, DISPI.YRES), dispiRead(d, DISPI.BPP)]).toEqual([16000, 12000, 32]);
    expect(dispiRead(d, DISPI.ENABLE)).toBe(DISPI.GETCAPS);
    // A byte write under GETCAPS merges into the stored value, not into the maximum it reads as.
    writeInt(bar2(d), dispiAddr(DISPI.XRES), 1, 0x00);
    dispiWrite(d, DISPI.ENABLE, 0);
    expect([dispiRead(d, DISPI.XRES), dispiRead(d, DISPI.YRES), dispiRead(d, DISPI.BPP)]).toEqual([0x300, 600, 16]);
    expect(d.scanout()).toBeNull();
  });

  it('takes 1-, 2-, 4- and 8-byte accesses; a 4-byte access covers two registers', () => {
    const d = make();
    const mmio = bar2(d);
    writeInt(mmio, dispiAddr(DISPI.XRES), 4, (768 << 16) | 1024); // XRES and YRES at once
    expect([dispiRead(d, DISPI.XRES), dispiRead(d, DISPI.YRES)]).toEqual([1024, 768]);
    expect(readInt(mmio, dispiAddr(DISPI.ID), 4) >>> 0).toBe(((1024 << 16) | 0xb0c5) >>> 0);
    writeInt(mmio, dispiAddr(DISPI.ID), 4, (800 << 16) | 0xffff); // ID half ignored, XRES half taken
    expect(dispiRead(d, DISPI.XRES)).toBe(800);
    writeInt(mmio, dispiAddr(DISPI.BPP), 1, 32); // byte writes merge into the register
    writeInt(mmio, dispiAddr(DISPI.XRES) + 1, 1, 0x05);
    writeInt(mmio, dispiAddr(DISPI.XRES), 1, 0x00);
    expect(dispiRead(d, DISPI.XRES)).toBe(0x500);
    expect(readInt(mmio, dispiAddr(DISPI.XRES) + 1, 1)).toBe(0x05);
    expect(readInt(mmio, dispiAddr(DISPI.ID) + 1, 1)).toBe(0xb0);
    writeInt(mmio, dispiAddr(DISPI.VIRT_HEIGHT), 4, (3 << 16) | 1000); // an unaligned pair: VIRT_HEIGHT, X_OFFSET
    expect([dispiRead(d, DISPI.VIRT_HEIGHT), dispiRead(d, DISPI.X_OFFSET)]).toEqual([1000, 3]);
    writeInt(mmio, dispiAddr(DISPI.X_OFFSET), 8, 0x0009_0008_0007_0006n); // X, Y, VIDEO_MEMORY_64K (RO), past the last
    expect([dispiRead(d, DISPI.X_OFFSET), dispiRead(d, DISPI.Y_OFFSET), dispiRead(d, DISPI.VIDEO_MEMORY_64K)]).toEqual([6, 7, 0x100]);
    expect(readInt(mmio, dispiAddr(DISPI.COUNT), 2)).toBe(0); // past the registers: zeros
    expect(readInt(mmio, BOCHS.DISPI_OFFSET + 0xfe, 2)).toBe(0);
    // The extension block: 32-bit size and byte order, also through narrower accesses.
    expect(readInt(mmio, BOCHS.QEXT_OFFSET, 4)).toBe(8);
    expect(readInt(mmio, BOCHS.QEXT_OFFSET, 1)).toBe(8);
    writeInt(mmio, BOCHS.QEXT_OFFSET, 4, 0x1000); // read-only
    expect(readInt(mmio, BOCHS.QEXT_OFFSET, 4)).toBe(8);
    expect(readInt(mmio, BOCHS.QEXT_OFFSET, 8)).toBe(BOCHS.BYTE_ORDER_LITTLE * 2 ** 32 + 8);
    expect(readInt(mmio, BOCHS.QEXT_OFFSET + 8, 4)).toBe(0);
  });

  it('keeps the byte order unless one of the two magic values is written', () => {
    const d = make();
    setMode(d, 640, 480);
    const mmio = bar2(d);
    writeInt(mmio, BOCHS.QEXT_BYTE_ORDER, 4, BOCHS.BYTE_ORDER_BIG);
    expect(readInt(mmio, BOCHS.QEXT_BYTE_ORDER, 4)).toBe(BOCHS.BYTE_ORDER_BIG);
    expect(d.scanout()!.byteOrder).toBe('big');
    for (const v of [0, 0x12345678, 0x1e1e1e1f]) {
      writeInt(mmio, BOCHS.QEXT_BYTE_ORDER, 4, v);
      expect(d.byteOrder).toBe('big');
    }
    writeInt(mmio, BOCHS.QEXT_BYTE_ORDER, 2, 0x1e1e); // half a magic value is not one
    expect(d.byteOrder).toBe('big');
    writeInt(mmio, BOCHS.QEXT_BYTE_ORDER, 4, BOCHS.BYTE_ORDER_LITTLE);
    expect(d.byteOrder).toBe('little');
    expect(d.scanout()!.byteOrder).toBe('little');
  });

  it('bad values never throw; they only make the scanout invalid', () => {
    const d = make();
    const valid = () => {
      setMode(d, 1024, 768);
      expect(d.scanout()).not.toBeNull();
    };
    const bad: [number, number][] = [
      [DISPI.BPP, 24],
      [DISPI.BPP, 8],
      [DISPI.BPP, 0],
      [DISPI.XRES, 0],
      [DISPI.XRES, 63],
      [DISPI.XRES, 16001],
      [DISPI.YRES, 0],
      [DISPI.YRES, 12001],
      [DISPI.Y_OFFSET, 0xffff],
      [DISPI.Y_OFFSET, 4096 - 767], // one line too far
      [DISPI.VIRT_WIDTH, 0xffff],
      [DISPI.VIRT_HEIGHT, 0xffff],
      [DISPI.VIRT_HEIGHT, 4097], // a virtual screen larger than VRAM
      [DISPI.ENABLE, DISPI.LFB_ENABLED],
      [DISPI.ENABLE, DISPI.GETCAPS],
    ];
    for (const [reg, v] of bad) {
      valid();
      expect(() => dispiWrite(d, reg, v)).not.toThrow();
      expect({ reg, v, s: d.scanout() }).toEqual({ reg, v, s: null });
    }
    valid();
    // Like QEMU, X_OFFSET may run past the line (the plane then starts further down): only VRAM bounds it.
    dispiWrite(d, DISPI.X_OFFSET, 0xffff);
    expect(d.scanout()).toEqual(expectedState(1024, 768, { offset: 0xffff * 4 }));
    dispiWrite(d, DISPI.X_OFFSET, 0);
    dispiWrite(d, DISPI.Y_OFFSET, 4096 - 768); // the last line that fits
    expect(d.scanout()).toEqual(expectedState(1024, 768, { offset: (4096 - 768) * 4096 }));
    // 16 bpp is shown as RGB565.
    setMode(d, 800, 600, 16);
    expect(d.scanout()).toEqual({ ...expectedState(800, 600), bpp: 16, stride: 1600, format: 'rgb565' });
    // Random register contents: never a throw, and every plane shown lies inside VRAM.
    let seed = 0x2545f491;
    const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8) & 0xffff;
    for (let i = 0; i < 5000; i++) {
      const reg = rnd() % 12;
      const v = rnd() & 1 ? rnd() : [0, 16, 32, 64, 640, 1024, DISPI.ENABLED][rnd() % 7]!;
      writeInt(bar2(d), dispiAddr(reg), 2, v);
      const s = d.scanout();
      if (s) {
        expect(s.offset + s.stride * s.height).toBeLessThanOrEqual(d.vramSize);
        expect(s.stride).toBeGreaterThanOrEqual(s.width * (s.bpp / 8));
      }
    }
  });
});

describe('bochs-display: reset and state', () => {
  function dirty(d: BochsDisplay): void {
    setMode(d, 1280, 800);
    dispiWrite(d, DISPI.Y_OFFSET, 10);
    dispiWrite(d, DISPI.BANK, 3);
    writeInt(bar2(d), BOCHS.QEXT_BYTE_ORDER, 4, BOCHS.BYTE_ORDER_BIG);
    readInt(bar2(d), BOCHS.VGA_OFFSET + 0x1a, 1);
    writeInt(bar2(d), BOCHS.VGA_OFFSET, 1, 0x05); // index 5, blanked; the flip-flop now expects data
    writeInt(bar2(d), BOCHS.VGA_OFFSET + 2, 1, 0x63);
    d.vram.bytes.set([1, 2, 3, 4], 12345);
    d.vram.bytes[d.vramSize - 1] = 0x77;
    writeInt(d.configAccessor, PCI.BAR0, 4, 0xe0000000);
    writeInt(d.configAccessor, PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
  }

  it('reset returns registers, VGA state, byte order and VRAM to power-on', () => {
    const d = make({ vramSize: 4 * MiB });
    dirty(d);
    expect(d.scanout()).toMatchObject({ width: 1280, blanked: true, byteOrder: 'big' });
    const seen: (ScanoutState | null)[] = [];
    d.onScanoutChange((s) => seen.push(s));
    d.reset();
    expect(seen).toEqual([null]);
    expect(d.scanout()).toBeNull();
    expect(d.dispiRegisters()).toEqual([0xb0c5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40]);
    expect(d.byteOrder).toBe('little');
    expect(readInt(bar2(d), BOCHS.VGA_OFFSET + 2, 1)).toBe(0);
    expect(readInt(bar2(d), BOCHS.VGA_OFFSET, 1)).toBe(0x20);
    expect(d.vram.bytes.every((b) => b === 0)).toBe(true);
    expect(cfg(d, PCI.BAR0, 4)).toBe(0x8);
    expect(cfg(d, PCI.COMMAND, 2)).toBe(0);
    expect(readInt(bar2(d), 0, 4)).toBe(0xffffff00); // EDID is not state
    setMode(d, 640, 480);
    expect(d.scanout()!.blanked).toBe(false);
    // The flip-flop is back at "index".
    writeInt(bar2(d), BOCHS.VGA_OFFSET, 1, 0x00);
    expect(d.scanout()!.blanked).toBe(true);
  });

  it('save → restore carries DISPI registers, VGA window, flip-flop, byte order and VRAM', () => {
    const a = make({ vramSize: 4 * MiB });
    dirty(a);
    const image = a.saveState();
    expect([...decodeState(image, { vendorId: 0x1234, deviceId: 0x1111 }).keys()]).toEqual(expect.arrayContaining(['pci.config', 'ram.bar0', 'x.bochs-display']));
    const b = make({ vramSize: 4 * MiB });
    const seen: (ScanoutState | null)[] = [];
    b.onScanoutChange((s) => seen.push(s));
    b.restoreState(image);
    expect(b.scanout()).toEqual(a.scanout());
    expect(seen).toEqual([a.scanout()]);
    expect(b.dispiRegisters()).toEqual(a.dispiRegisters());
    expect(b.byteOrder).toBe('big');
    expect(readInt(bar2(b), BOCHS.VGA_OFFSET + 2, 1)).toBe(0x63);
    expect(readInt(bar2(b), BOCHS.VGA_OFFSET, 1)).toBe(0x05);
    expect([...b.vram.bytes.subarray(12345, 12349)]).toEqual([1, 2, 3, 4]);
    expect(b.vram.bytes[b.vramSize - 1]).toBe(0x77);
    expect(cfg(b, PCI.BAR0, 4) >>> 0).toBe(0xe0000008);
    // The flip-flop came along: the next 0x3c0 write is data (no change), the one after an index.
    writeInt(bar2(b), BOCHS.VGA_OFFSET, 1, 0x20);
    expect(b.scanout()!.blanked).toBe(true);
    expect(readInt(bar2(b), BOCHS.VGA_OFFSET + 1, 1)).toBe(0x20); // it went to attribute register 5
    writeInt(bar2(b), BOCHS.VGA_OFFSET, 1, 0x20);
    expect(b.scanout()!.blanked).toBe(false);
  });

  it('refuses bad device sections and images of another VRAM size, keeping its state', () => {
    const a = make({ vramSize: 4 * MiB });
    dirty(a);
    const id = { vendorId: 0x1234, deviceId: 0x1111 };
    const sections = [...decodeState(a.saveState(), id).values()];
    const withSection = (data: Uint8Array | null, version = 1) =>
      encodeState(id, sections.flatMap((s) => (s.name !== 'x.bochs-display' ? [s] : data === null ? [] : [{ name: s.name, version, data }])));
    const good = sections.find((s) => s.name === 'x.bochs-display')!.data;
    const b = make({ vramSize: 4 * MiB });
    setMode(b, 640, 480);
    const before = b.scanout();
    const badOrder = good.slice();
    badOrder.set([1, 2, 3, 4], good.length - 4);
    for (const [image, code] of [
      [withSection(null), 'EINVAL'],
      [withSection(good, 2), 'ENOTSUP'],
      [withSection(good.subarray(1)), 'EINVAL'],
      [withSection(badOrder), 'EINVAL'],
    ] as const) {
      expect(() => b.restoreState(image)).toThrow(errno(code));
      expect(b.scanout()).toEqual(before);
    }
    const small = make({ vramSize: 8 * MiB });
    expect(() => small.restoreState(a.saveState())).toThrow(errno('EINVAL'));
    expect(small.scanout()).toBeNull();
  });
});

describe('bochs-display: rendering through ScanoutDisplay', () => {
  function draw(d: BochsDisplay, s: ScanoutState): void {
    const v = new DataView(d.vram.bytes.buffer, d.vram.bytes.byteOffset);
    const bytes = s.bpp / 8;
    for (let y = 0; y < s.height; y++) {
      for (let x = 0; x < s.width; x++) {
        const p = pattern(x, y);
        const at = s.offset + y * s.stride + x * bytes;
        const le = s.byteOrder === 'little';
        if (s.bpp === 32) v.setUint32(at, p, le);
        else v.setUint16(at, (((p >> 19) & 0x1f) << 11) | (((p >> 10) & 0x3f) << 5) | ((p >> 3) & 0x1f), le);
      }
    }
  }

  function expectPattern(png: PNG, s: ScanoutState): void {
    expect([png.width, png.height]).toEqual([s.width, s.height]);
    for (let y = 0; y < s.height; y += 7) {
      for (let x = 0; x < s.width; x += 5) {
        const p = pattern(x, y);
        let want = [(p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff, 0xff];
        if (s.bpp === 16) want = [want[0]! & 0xf8, want[1]! & 0xfc, want[2]! & 0xf8, 0xff].map((c, i) => (i === 3 ? c : c | (c >> (i === 1 ? 6 : 5))));
        const got = rgbaAt(png, x, y);
        if (got.join() !== want.join()) expect({ x, y, got }).toEqual({ x, y, got: want });
      }
    }
  }

  it('renders the plane the driver set up, at its offset, for each format and byte order', () => {
    const d = make();
    const io = localIo(d);
    linuxModeset(io, d.vramSize, 1024, 768);
    dispiWrite(d, DISPI.Y_OFFSET, 768); // the second buffer, as a flip would place it
    const display = new ScanoutDisplay(d.vramSize);
    const cases: [number, number, number, number, boolean][] = [
      [1024, 768, 32, 768, false],
      [1280, 800, 32, 0, true],
      [800, 600, 16, 100, false],
      [640, 480, 16, 0, true],
    ];
    for (const [w, h, bpp, yOffset, big] of cases) {
      if (w !== 1024) {
        setMode(d, w, h, bpp);
        dispiWrite(d, DISPI.Y_OFFSET, yOffset);
      }
      writeInt(bar2(d), BOCHS.QEXT_BYTE_ORDER, 4, big ? BOCHS.BYTE_ORDER_BIG : BOCHS.BYTE_ORDER_LITTLE);
      const s = d.scanout()!;
      expect(s).toMatchObject({ width: w, height: h, bpp, offset: yOffset * s.stride, byteOrder: big ? 'big' : 'little' });
      d.vram.bytes.fill(0x5a); // garbage outside the plane must not show
      draw(d, s);
      display.refresh(d.vram.bytes, s);
      expectPattern(PNG.sync.read(display.png()), s);
    }
  });

  it('ScanoutDisplay: RGB565 and big-endian pixels, redraw only on a change of the plane itself', () => {
    const vram = new Uint8Array(8192);
    const v = new DataView(vram.buffer);
    const display = new ScanoutDisplay(vram.length);
    const cases: [ScanoutGeometry, (at: number) => void][] = [
      [{ offset: 0, stride: 16, width: 2, height: 2 }, (at) => v.setUint32(at, 0x00123456, true)],
      [{ offset: 0, stride: 16, width: 2, height: 2, format: 'xrgb8888', byteOrder: 'big' }, (at) => v.setUint32(at, 0x00123456, false)],
      [{ offset: 0, stride: 16, width: 2, height: 2, format: 'rgb565' }, (at) => v.setUint16(at, 0x12 | (0x15 << 5) | (0x02 << 11) /* R 2, G 21, B 18 */, true)],
      [{ offset: 0, stride: 16, width: 2, height: 2, format: 'rgb565', byteOrder: 'big' }, (at) => v.setUint16(at, 0x12 | (0x15 << 5) | (0x02 << 11), false)],
    ];
    for (const [g, put] of cases) {
      vram.fill(0);
      put(16 + (g.format === 'rgb565' ? 2 : 4)); // pixel (1, 1)
      expect(display.refresh(vram, g).linesUpdated).toBe(2); // a new plane redraws everything
      const png = PNG.sync.read(display.png());
      const want = g.format === 'rgb565' ? [(2 << 3) | (2 >> 2), (21 << 2) | (21 >> 4), (18 << 3) | (18 >> 2), 0xff] : [0x12, 0x34, 0x56, 0xff];
      expect(rgbaAt(png, 1, 1)).toEqual(want);
      expect(rgbaAt(png, 0, 0)).toEqual([0, 0, 0, 0xff]);
    }
    // Fields beyond the plane (a device's blanked flag) do not force a redraw.
    const s = { offset: 0, stride: 16, width: 2, height: 2, format: 'rgb565' as const, byteOrder: 'big' as const, blanked: true };
    expect(display.refresh(vram, s).linesUpdated).toBe(0);
    const unblanked = { ...s, blanked: false };
    expect(display.refresh(vram, unblanked).linesUpdated).toBe(0);
    // A 16-bit plane needs only 2 bytes per pixel of stride; bad formats are refused.
    expect(() => display.refresh(vram, { offset: 0, stride: 8, width: 4, height: 1, format: 'rgb565' })).not.toThrow();
    expect(() => display.refresh(vram, { offset: 0, stride: 8, width: 4, height: 1 })).toThrow(errno('EINVAL', 'geometry'));
    expect(() => display.refresh(vram, { offset: 8190, stride: 8, width: 2, height: 1, format: 'rgb565' })).toThrow(errno('ERANGE', 'geometry'));
    expect(() => display.refresh(vram, { offset: 0, stride: 8, width: 2, height: 1, format: 'rgb888' as never })).toThrow(errno('EINVAL', 'geometry.format'));
    expect(() => display.refresh(vram, { offset: 0, stride: 8, width: 2, height: 1, byteOrder: 'middle' as never })).toThrow(errno('EINVAL', 'geometry.byteOrder'));
  });
});

describe('bochs-display over vfio-user (mdevkit serve in its own process)', () => {
  it('maps VRAM without traps, traps BAR2, and shows the mode the driver set through the real client', async () => {
    // A device module wrapping the built-in device: the server process records what the device
    // shows and renders it from its own VRAM mapping when it shuts down.
    const dir = mkdtempSync(join(tmpdir(), 'mdevkit-bochs-'));
    const report = join(dir, 'report.json');
    const module = join(dir, 'bochs-observed.mjs');
    const dist = (p: string) => JSON.stringify(pathToFileURL(join(packageRoot(), 'dist', p)).href);
    writeFileSync(
      module,
      `import { writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { resolveModule } from ${dist('cli/load-device.js')};
import { ScanoutDisplay } from ${dist('src/display.js')};
const { default: create } = await import(pathToFileURL(resolveModule('bochs-display')).href);
export default function () {
  const dev = create();
  const log = [];
  dev.onScanoutChange((s) => log.push(s));
  process.once('exit', () => {
    const s = dev.scanout();
    let png = null;
    if (s) {
      const display = new ScanoutDisplay(dev.vramSize);
      display.refresh(dev.vram.bytes, s);
      png = display.png().toString('base64');
    }
    writeFileSync(${JSON.stringify(report)}, JSON.stringify({ log, scanout: s, generation: dev.modeGeneration, png }));
  });
  return dev;
}
`,
    );
    const server = await startServer({ device: module });
    const c = VfioUserClient.connect(server.paths[0]!, { timeoutMs: 5000 });
    try {
      // REGION_INFO: VRAM is an MMAP region with an fd (QEMU maps it into the guest, no trap);
      // the register BAR is trapped.
      const vramInfo = c.regionInfo(0);
      expect(vramInfo).toMatchObject({ size: 16n * 1024n * 1024n, sparse: false });
      expect(vramInfo.flags).toBe(RegionFlag.READ | RegionFlag.WRITE | RegionFlag.MMAP);
      expect(vramInfo.fd).not.toBeNull();
      const mmioInfo = c.regionInfo(2);
      expect(mmioInfo).toMatchObject({ size: 0x1000n, fd: null, sparse: false });
      expect(mmioInfo.flags).toBe(RegionFlag.READ | RegionFlag.WRITE);
      expect(mmioInfo.flags & RegionFlag.MMAP).toBe(0);
      for (const i of [1, 3, 4, 5, 6]) expect(c.regionInfo(i).size).toBe(0n);
      for (const irq of [PciIrq.INTX, PciIrq.MSI, PciIrq.MSIX]) expect(c.irqInfo(irq).count).toBe(0);
      expect(c.cfgRead(PCI.VENDOR_ID, 4)).toBe(0x11111234);
      expect(c.cfgRead(PCI.REVISION_ID, 4) >>> 0).toBe(0x03800002);

      c.cfgWrite(PCI.BAR0, 4, 0xe0000000);
      c.cfgWrite(PCI.BAR0 + 8, 4, 0xe1000000);
      c.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
      const io = {
        read: (off: number, size: 1 | 2 | 4) => c.mmioRead(2, off, size),
        write: (off: number, size: 1 | 2 | 4, v: number) => c.mmioWrite(2, off, size, v),
      };
      const probe = linuxProbe(io);
      expect(probe).toMatchObject({ id: 0xb0c5, vram: 16 * MiB });
      expect(probe.edid!.subarray(0, 128)).toEqual(buildEdid({ width: 1024, height: 768 }));
      linuxModeset(io, probe.vram, 1024, 768);
      expect(c.mmioRead(2, dispiAddr(DISPI.XRES), 4)).toBe((768 << 16) | 1024);
      expect(c.mmioRead(2, dispiAddr(DISPI.ENABLE), 2)).toBe(0x41);
      expect(c.mmioRead(2, dispiAddr(DISPI.VIRT_HEIGHT), 2)).toBe(4096);
      // Flip to the second buffer, then draw into it through the client's own mapping of VRAM:
      // the server sees the bytes (REGION_READ reads its mapping) without a single trapped store.
      c.mmioWrite(2, dispiAddr(DISPI.Y_OFFSET), 2, 768);
      const m = c.mapRegion(0);
      expect(m.bytes).not.toBeNull();
      const v = new DataView(m.bytes!.buffer, m.bytes!.byteOffset);
      const base = 768 * 4096;
      for (let y = 0; y < 768; y++) for (let x = 0; x < 1024; x++) v.setUint32(base + y * 4096 + x * 4, pattern(x, y), true);
      expect(new DataView(c.regionRead(0, base + 4096 * 5 + 4 * 9, 4).buffer).getUint32(0, true)).toBe(pattern(9, 5));
      c.unmapRegion(0);
    } finally {
      c.close();
      expect(await server.stop()).toBe(0);
    }
    const r = JSON.parse(readFileSync(report, 'utf8')) as { log: (ScanoutState | null)[]; scanout: ScanoutState | null; generation: number; png: string | null };
    const want = expectedState(1024, 768, { offset: 768 * 4096 });
    expect(r.scanout).toEqual(want);
    expect(r.log.at(-1)).toEqual(want);
    expect(r.log).toContainEqual(expectedState(1024, 768));
    expect(r.generation).toBe(r.log.length);
    const png = PNG.sync.read(Buffer.from(r.png!, 'base64'));
    expect([png.width, png.height]).toEqual([1024, 768]);
    for (let y = 0; y < 768; y += 3) {
      for (let x = 0; x < 1024; x += 3) {
        const p = pattern(x, y);
        const got = rgbaAt(png, x, y);
        const want = [(p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff, 0xff];
        if (got.join() !== want.join()) expect({ x, y, got }).toEqual({ x, y, got: want });
      }
    }
    rmSync(dir, { recursive: true, force: true });
  });
});
