// Hostile guests: what a guest controls in the example devices — the vGPU's ring (size, head and
// tail, commands that overwrite the ring, FILL/BLIT dimensions), its GTT (entries pointing
// anywhere), the display's DISPI and VGA registers, edu's DMA engine — cannot make one doorbell (or
// one access) take unbounded time or memory. Each bound is asserted on the devices' work counters,
// never on the clock, and later doorbells keep working.
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { fuzzParams, fuzzTimeout } from './fuzz-budget.js';
import { BOCHS, BochsDisplay, DISPI } from '../examples/bochs-display/index.js';
import { EDU, EduDevice } from '../examples/edu/index.js';
import { VGPU, VirtualGpu, type VgpuWork } from '../examples/vgpu/index.js';
import { WindowedGuestMemory } from '../src/guest-memory.js';
import { PCI, PCI_COMMAND } from '../src/pci/constants.js';
import { CompareWriteWatch } from '../src/write-watch.js';
import { readInt, writeInt } from './helpers.js';

const RAM_GPA = 0x100000;
const RAM_SIZE = 4 << 20;
const RING = RAM_GPA; // the ring at the start of RAM (up to 1 MiB)
const GTT = RAM_GPA + (2 << 20); // the GTT page
const SRC = RAM_GPA + (3 << 20); // BLIT sources
const MAX_RING = 1 << 20;

/** A vGPU with 4 MiB of guest RAM at 1 MiB, bus mastering on, engine enabled. */
function vgpu() {
  const d = new VirtualGpu().realize();
  const ram = new Uint8Array(RAM_SIZE);
  const mem = new WindowedGuestMemory();
  mem.addWindow({ gpa: RAM_GPA, bytes: ram, writable: true });
  d.attachGuestMemory(mem);
  d.attachWriteWatch(new CompareWriteWatch(mem));
  d.configWrite(PCI.COMMAND, Uint8Array.of(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER, 0));
  const bar = d.bars[0]!.region;
  writeInt(bar, VGPU.CONTROL, 4, 1);
  const view = new DataView(ram.buffer);
  /** Writes command words at ring offset `at`. */
  const put = (at: number, words: number[]) => words.forEach((w, i) => view.setUint32(RING - RAM_GPA + at + i * 4, w >>> 0, true));
  const ring = (size: number, head: number, tail: number) => {
    writeInt(bar, VGPU.RING_BASE, 8, RING);
    writeInt(bar, VGPU.RING_SIZE, 4, size);
    // RING_HEAD is the device's; a reset puts it at 0, and the ring runs there from wherever tail is.
    expect(readInt(bar, VGPU.RING_HEAD, 4)).toBe(head);
    writeInt(bar, VGPU.RING_TAIL, 4, tail);
  };
  const doorbell = (): VgpuWork => {
    writeInt(bar, VGPU.DOORBELL, 4, 1);
    return { ...d.lastDoorbell };
  };
  const error = () => readInt(bar, VGPU.ERROR, 4);
  const head = () => readInt(bar, VGPU.RING_HEAD, 4);
  return { d, bar, ram, view, put, ring, doorbell, error, head };
}

/** No doorbell passes any budget. */
function withinBudget(w: VgpuWork): void {
  expect(w.commands).toBeLessThanOrEqual(VGPU.BUDGET_COMMANDS);
  expect(w.pixels).toBeLessThanOrEqual(VGPU.BUDGET_PIXELS);
  expect(w.dmaBytes).toBeLessThanOrEqual(VGPU.BUDGET_DMA_BYTES);
  expect(w.dmaOps).toBeLessThanOrEqual(VGPU.BUDGET_DMA_OPS);
}

const fill = (offset: number, stride: number, w: number, h: number, color: number) => [VGPU.OP_FILL_RECT, offset, stride, w | (h << 16), color];
const fence = (value: number, gpa: number) => [VGPU.OP_FENCE, value, gpa % 2 ** 32, Math.floor(gpa / 2 ** 32)];
const blit = (dst: number, gva: number, srcStride: number, dstStride: number, w: number, h: number) => [VGPU.OP_BLIT, dst, gva % 2 ** 32, Math.floor(gva / 2 ** 32), srcStride, dstStride, w | (h << 16)];

describe('vGPU against a hostile guest: every doorbell is bounded', () => {
  it('a maximal ring whose tail sits just behind its head runs in budget-sized doorbells, then continues', () => {
    const g = vgpu();
    const n = MAX_RING / VGPU.CMD_SIZE;
    for (let i = 0; i < n; i++) g.put(i * VGPU.CMD_SIZE, fill((i % 64) * 4, 256, 1, 1, i));
    // Tail one command behind head: the ring wraps and holds n - 1 commands.
    g.ring(MAX_RING, 0, MAX_RING - VGPU.CMD_SIZE);
    const w = g.doorbell();
    withinBudget(w);
    expect(w.commands).toBe(VGPU.BUDGET_COMMANDS);
    expect(g.error()).toBe(VGPU.ERR_BUDGET);
    expect(readInt(g.bar, VGPU.INT_STATUS, 4) & VGPU.INT_ERROR).toBe(VGPU.INT_ERROR);
    expect(g.head()).toBe(VGPU.BUDGET_COMMANDS * VGPU.CMD_SIZE);
    // Each later doorbell continues where the last stopped, until the ring is drained.
    let doorbells = 1;
    while (g.head() !== MAX_RING - VGPU.CMD_SIZE) {
      withinBudget(g.doorbell());
      doorbells++;
      expect(doorbells).toBeLessThanOrEqual(Math.ceil((n - 1) / VGPU.BUDGET_COMMANDS));
    }
    expect(g.d.work.commands).toBe(n - 1);
    expect(g.d.work.budgetStops).toBe(doorbells - 1);
    // A drained ring: the next doorbell does nothing.
    expect(g.doorbell().commands).toBe(0);
  });

  it('whole-VRAM fills stop at the pixel budget, and the rest run on the next doorbell', () => {
    const g = vgpu();
    const perFill = VGPU.VRAM_SIZE / 4; // 512 × 512 pixels: all of VRAM
    for (let i = 0; i < 10; i++) g.put(i * VGPU.CMD_SIZE, fill(0, 2048, 512, 512, 0xff000000 + i));
    g.ring(4096, 0, 10 * VGPU.CMD_SIZE);
    const first = g.doorbell();
    withinBudget(first);
    expect(first.pixels).toBe(Math.floor(VGPU.BUDGET_PIXELS / perFill) * perFill);
    expect(g.error()).toBe(VGPU.ERR_BUDGET);
    while (g.head() !== 10 * VGPU.CMD_SIZE) withinBudget(g.doorbell());
    expect(g.d.work.pixels).toBe(10 * perFill);
    expect(new DataView(g.d.vram.bytes.buffer, g.d.vram.bytes.byteOffset).getUint32(0, true)).toBe(0xff000009);
  });

  it('a ring that overwrites itself (fences aimed at the commands ahead) stays bounded', () => {
    const g = vgpu();
    const n = MAX_RING / VGPU.CMD_SIZE;
    // Odd slots hold fences whose op word is garbage (0x77); the fence before each writes
    // OP_FENCE over that word, so the ring rewrites itself into valid commands as it runs. Every
    // fence aims at the op word of the slot behind it; the tail is just behind the head.
    for (let i = 0; i < n; i++) {
      const words = fence(VGPU.OP_FENCE, RING + ((i + 1) % n) * VGPU.CMD_SIZE);
      if (i % 2) words[0] = 0x77;
      g.put(i * VGPU.CMD_SIZE, words);
    }
    g.ring(MAX_RING, 0, MAX_RING - VGPU.CMD_SIZE);
    let doorbells = 0;
    while (g.head() !== MAX_RING - VGPU.CMD_SIZE && doorbells < 64) {
      withinBudget(g.doorbell());
      doorbells++;
    }
    expect(g.head()).toBe(MAX_RING - VGPU.CMD_SIZE);
    expect(g.d.work.commands).toBe(n - 1);
    // The fence value written over the ring is what every odd slot became: a fence.
    expect(g.view.getUint32(RING - RAM_GPA + VGPU.CMD_SIZE, true)).toBe(VGPU.OP_FENCE);
    expect(readInt(g.bar, VGPU.FENCE_VALUE, 4)).toBe(VGPU.OP_FENCE);
  });

  it('refuses rings of impossible size or placement without touching guest memory', () => {
    const g = vgpu();
    for (const size of [0, 32, 100, 1 << 21, 0x80000000, 0xffffffff]) {
      writeInt(g.bar, VGPU.RING_SIZE, 4, size);
      writeInt(g.bar, VGPU.RING_TAIL, 4, 32);
      const w = g.doorbell();
      expect(g.error()).toBe(VGPU.ERR_RING);
      expect(w).toEqual({ commands: 0, pixels: 0, dmaBytes: 0, dmaOps: 0 });
    }
    // A ring past the end of guest memory, or where no JS number can name it: a DMA error.
    for (const base of [0x7000_0000, 2 ** 52, 2n ** 64n - 4096n]) {
      writeInt(g.bar, VGPU.RING_BASE, 8, BigInt(base));
      writeInt(g.bar, VGPU.RING_SIZE, 4, 4096);
      writeInt(g.bar, VGPU.RING_TAIL, 4, 64);
      const w = g.doorbell();
      expect(g.error()).toBe(VGPU.ERR_DMA);
      expect(w.commands).toBe(0);
    }
  });

  it('GTT entries pointing anywhere fault or fail the DMA, and no doorbell passes its budget', () => {
    const g = vgpu();
    const gtt = new DataView(g.ram.buffer, GTT - RAM_GPA, 4096);
    const entries: bigint[] = [
      BigInt(SRC) | 1n, // a good page
      0xffff_ffff_ffff_f001n, // far beyond any guest
      (1n << 52n) | 1n, // at 2^52
      0x7000_0000n | 1n, // unmapped RAM
      BigInt(SRC + 4096) | 0xfffn, // low bits set: masked off
      BigInt(GTT) | 1n, // the GTT page itself
      BigInt(RING) | 1n, // the ring
      BigInt(SRC), // not present
    ];
    entries.forEach((e, i) => gtt.setBigUint64(i * 8, e, true));
    writeInt(g.bar, VGPU.GTT_ROOT, 8, BigInt(GTT));
    const expected = [0, VGPU.ERR_DMA, VGPU.ERR_DMA, VGPU.ERR_DMA, 0, 0, 0, VGPU.ERR_GTT_FAULT];
    g.ring(4096, 0, 0);
    entries.forEach((_, page) => {
      const at = g.head();
      g.put(at, blit(0, page * 4096 + 8, 64, 256, 16, 4));
      writeInt(g.bar, VGPU.RING_TAIL, 4, at + VGPU.CMD_SIZE);
      writeInt(g.bar, VGPU.INT_STATUS, 4, VGPU.INT_ERROR); // write 1 to clear
      const w = g.doorbell();
      withinBudget(w);
      const failed = (readInt(g.bar, VGPU.INT_STATUS, 4) & VGPU.INT_ERROR) !== 0;
      expect([page, failed ? g.error() : 0]).toEqual([page, expected[page]]);
      // A blit that worked fetched its command and made one transfer per row.
      if (!failed) expect(w.dmaOps).toBe(1 + 4);
    });
    // GPU addresses past the GTT and a GTT root that is not guest memory.
    g.put(g.head(), blit(0, 512 * 4096, 64, 256, 1, 1));
    writeInt(g.bar, VGPU.RING_TAIL, 4, g.head() + VGPU.CMD_SIZE);
    g.doorbell();
    expect(g.error()).toBe(VGPU.ERR_GTT_FAULT);
    for (const root of [0x7000_0000n, 2n ** 64n - 4096n]) {
      writeInt(g.bar, VGPU.GTT_ROOT, 8, root);
      expect(g.error()).toBe(VGPU.ERR_DMA);
    }
  });

  it('huge FILL and BLIT dimensions are refused before any pixel or byte moves', () => {
    const g = vgpu();
    const before = g.d.vram.bytes.slice();
    const cases: [number[], number][] = [
      [fill(0, 0xffffffff, 0xffff, 0xffff, 1), VGPU.ERR_VRAM_RANGE],
      [fill(0xfffffffc, 4, 1, 1, 1), VGPU.ERR_VRAM_RANGE],
      [fill(0, 4, 2, 1, 1), VGPU.ERR_VRAM_RANGE], // stride below the width
      [blit(0, 0, 0xffffffff, 0xffffffff, 0xffff, 0xffff), VGPU.ERR_TOO_LARGE], // 65535 rows of 65 transfers
      // Valid for VRAM, but 65535 one-pixel rows: more DMA transfers than a doorbell may make.
      [blit(0, 0, 4, 4, 1, 0xffff), VGPU.ERR_TOO_LARGE],
    ];
    g.ring(4096, 0, 0);
    for (const [cmd, err] of cases) {
      const at = g.head();
      g.put(at, cmd);
      writeInt(g.bar, VGPU.RING_TAIL, 4, at + VGPU.CMD_SIZE);
      const w = g.doorbell();
      expect(g.error()).toBe(err);
      expect(w).toEqual({ commands: 1, pixels: 0, dmaBytes: VGPU.CMD_SIZE, dmaOps: 1 });
      expect(g.head()).toBe(at + VGPU.CMD_SIZE); // consumed: the ring moves on
    }
    expect(g.d.vram.bytes).toEqual(before);
    // The engine still works afterwards.
    g.put(g.head(), fence(42, RAM_GPA + 8));
    writeInt(g.bar, VGPU.RING_TAIL, 4, g.head() + VGPU.CMD_SIZE);
    g.doorbell();
    expect(readInt(g.bar, VGPU.FENCE_VALUE, 4)).toBe(42);
  });

  it('random rings, commands and GTT contents: every doorbell within budget, no exception escapes', { timeout: fuzzTimeout(30_000) }, () => {
    const word = fc.oneof(fc.constantFrom(0, 1, 2, 3, 4, 0xffff, 0x10000, 0xffffffff, RAM_GPA, SRC, GTT), fc.integer({ min: 0, max: 0xffffffff }));
    const cmdArb = fc.tuple(fc.constantFrom(VGPU.OP_FILL_RECT, VGPU.OP_BLIT, VGPU.OP_FENCE, 0, 99), fc.array(word, { minLength: 7, maxLength: 7 })).map(([op, rest]) => [op, ...rest]);
    fc.assert(
      fc.property(
        fc.array(cmdArb, { minLength: 1, maxLength: 40 }),
        fc.array(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), { maxLength: 8 }),
        fc.constantFrom(64, 128, 4096, MAX_RING),
        fc.nat(),
        fc.nat(),
        (cmds, gttEntries, size, h, t) => {
          const g = vgpu();
          const gtt = new DataView(g.ram.buffer, GTT - RAM_GPA, 4096);
          gttEntries.forEach((e, i) => gtt.setBigUint64(i * 8, e, true));
          writeInt(g.bar, VGPU.GTT_ROOT, 8, BigInt(GTT));
          const slots = size / VGPU.CMD_SIZE;
          cmds.forEach((c, i) => g.put((i % slots) * VGPU.CMD_SIZE, c));
          writeInt(g.bar, VGPU.RING_BASE, 8, RING);
          writeInt(g.bar, VGPU.RING_SIZE, 4, size);
          writeInt(g.bar, VGPU.RING_TAIL, 4, (t % slots) * VGPU.CMD_SIZE);
          for (let k = 0; k < 3; k++) withinBudget(g.doorbell());
          void h;
        },
      ),
      fuzzParams('vGPU: random rings, commands and GTT entries within the doorbell budget', { numRuns: 60 }),
    );
  });
});

describe('Bochs display against DISPI and VGA garbage', () => {
  const displays: BochsDisplay[] = [];
  afterEach(() => {
    for (const d of displays.splice(0)) d.vram.release();
  });

  it('any bytes at any offset of the register BAR: at most one mode change per access, and every mode fits VRAM', { timeout: fuzzTimeout(30_000) }, () => {
    const d = new BochsDisplay({ vramSize: 4 << 20 }).realize();
    displays.push(d);
    const bar2 = d.region(2)!;
    let changes = 0;
    d.onScanoutChange(() => changes++);
    const interesting = fc.oneof(
      fc.constantFrom(...Array.from({ length: DISPI.COUNT + 2 }, (_, i) => BOCHS.DISPI_OFFSET + 2 * i), BOCHS.VGA_OFFSET, BOCHS.VGA_OFFSET + 0x1a, BOCHS.QEXT_BYTE_ORDER, 0x3ff, 0x5fe, 0xffc),
      fc.integer({ min: 0, max: BOCHS.MMIO_SIZE - 1 }),
    );
    const access = fc.record({
      write: fc.boolean(),
      offset: interesting,
      data: fc.oneof(fc.uint8Array({ minLength: 1, maxLength: 8 }), fc.constantFrom(Uint8Array.of(0xff, 0xff), Uint8Array.of(0x41, 0), Uint8Array.of(0x80, 0x3e), Uint8Array.of(0xe0, 0x2e), Uint8Array.of(0x20, 0), Uint8Array.of(0xbe, 0xbe, 0xbe, 0xbe))),
    });
    fc.assert(
      fc.property(fc.array(access, { maxLength: 60 }), (ops) => {
        for (const op of ops) {
          const len = Math.min(op.data.length, BOCHS.MMIO_SIZE - op.offset);
          if (len <= 0) continue;
          const before = changes;
          if (op.write) bar2.write(op.offset, op.data.subarray(0, len));
          else bar2.read(op.offset, new Uint8Array(len));
          expect(changes - before).toBeLessThanOrEqual(1);
          const s = d.scanout();
          if (s) {
            // What a display server would allocate and read is bounded by VRAM.
            expect(s.offset + s.stride * s.height).toBeLessThanOrEqual(d.vramSize);
            expect(s.width * (s.bpp / 8)).toBeLessThanOrEqual(s.stride);
            expect(s.width).toBeLessThanOrEqual(DISPI.MAX_XRES);
            expect(s.height).toBeLessThanOrEqual(DISPI.MAX_YRES);
          }
        }
      }),
      fuzzParams('Bochs display: DISPI/VGA garbage at any offset', { numRuns: 300 }),
    );
  });

  it('maximal and wrapping DISPI values (virtual screen, offsets, 65535 everywhere) never give a mode outside VRAM', () => {
    const d = new BochsDisplay({ vramSize: 4 << 20 }).realize();
    displays.push(d);
    const bar2 = d.region(2)!;
    const set = (i: number, v: number) => writeInt(bar2, BOCHS.DISPI_OFFSET + 2 * i, 2, v);
    for (const v of [0xffff, 0x8000, 16000, 12000, 1024, 64, 0]) {
      for (let i = 1; i < DISPI.COUNT; i++) set(i, v);
      set(DISPI.ENABLE, DISPI.ENABLED | DISPI.LFB_ENABLED);
      set(DISPI.BPP, 32);
      const s = d.scanout();
      if (s) expect(s.offset + s.stride * s.height).toBeLessThanOrEqual(d.vramSize);
    }
    // A mode that fits: then an offset that pushes it out of VRAM hides it.
    for (const [i, v] of [[DISPI.XRES, 1024], [DISPI.YRES, 768], [DISPI.VIRT_WIDTH, 1024], [DISPI.VIRT_HEIGHT, 768], [DISPI.X_OFFSET, 0], [DISPI.Y_OFFSET, 0]] as const) set(i, v);
    expect(d.scanout()).not.toBeNull();
    set(DISPI.Y_OFFSET, 0xffff);
    expect(d.scanout()).toBeNull();
  });
});

describe('edu against a hostile guest: one DMA doorbell moves at most one buffer', () => {
  it('refuses counts, buffer ranges and addresses out of range, moving nothing, and keeps working', () => {
    const d = new EduDevice().realize();
    const ram = new Uint8Array(1 << 20);
    const mem = new WindowedGuestMemory();
    mem.addWindow({ gpa: RAM_GPA, bytes: ram, writable: true });
    d.attachGuestMemory(mem);
    d.configWrite(PCI.COMMAND, Uint8Array.of(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER, 0));
    const bar = d.bars[0]!.region;
    const dma = (src: bigint, dst: bigint, count: bigint, cmd: number) => {
      writeInt(bar, EDU.DMA_SRC, 8, src);
      writeInt(bar, EDU.DMA_DST, 8, dst);
      writeInt(bar, EDU.DMA_COUNT, 8, count);
      writeInt(bar, EDU.DMA_CMD, 8, BigInt(cmd));
      return d.lastDmaError;
    };
    const buf = BigInt(EDU.DMA_BUFFER);
    const hostile: [bigint, bigint, bigint][] = [
      [BigInt(RAM_GPA), buf, 2n ** 64n - 1n], // a count no buffer holds
      [BigInt(RAM_GPA), buf, 4097n],
      [BigInt(RAM_GPA), buf + 4095n, 2n], // runs off the buffer's end
      [BigInt(RAM_GPA), buf - 1n, 1n], // starts before it
      [BigInt(RAM_GPA), 2n ** 64n - 1n, 1n],
      [2n ** 64n - 8n, buf, 8n], // no JS number names that guest address
      [0x7000_0000n, buf, 16n], // unmapped guest memory
    ];
    for (const [src, dst, count] of hostile) {
      const before = { transfers: d.dmaTransfers, bytes: d.dmaBytes };
      expect(dma(src, dst, count, EDU.DMA_START)).not.toBeNull();
      expect({ transfers: d.dmaTransfers, bytes: d.dmaBytes }).toEqual(before);
      expect(readInt(bar, EDU.DMA_CMD, 4) & EDU.DMA_START).toBe(0); // the start bit clears: done (with an error)
    }
    // The largest legal transfer, both ways: one buffer per doorbell.
    ram.fill(0x5a, 0, 4096);
    expect(dma(BigInt(RAM_GPA), buf, 4096n, EDU.DMA_START)).toBeNull();
    expect(dma(buf, BigInt(RAM_GPA + 8192), 4096n, EDU.DMA_START | EDU.DMA_TO_RAM)).toBeNull();
    expect(d.dmaBytes).toBe(2 * EDU.DMA_BUFFER_SIZE);
    expect(ram.subarray(8192, 8192 + 4096).every((b) => b === 0x5a)).toBe(true);
  });

  it('a factorial of any argument takes at most 33 multiplications', () => {
    const d = new EduDevice().realize();
    const bar = d.bars[0]!.region;
    for (const n of [0, 1, 12, 33, 34, 0x7fffffff, 0xffffffff]) {
      writeInt(bar, EDU.FACTORIAL, 4, n);
      const want = n >= 34 ? 0 : Array.from({ length: n }, (_, i) => i + 1).reduce((r, k) => Number((BigInt(r) * BigInt(k)) % 2n ** 32n), 1);
      expect(readInt(bar, EDU.FACTORIAL, 4)).toBe(want);
    }
  });
});
