import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { VirtualGpu, VGPU } from '../examples/vgpu/index.js';
import { VGPU_DRIVER_SCANOUT, testImagePixel } from '../examples/vgpu/driver.js';
import { WindowedGuestMemory } from '../src/guest-memory.js';
import { CompareWriteWatch } from '../src/write-watch.js';
import { PCI, PCI_COMMAND } from '../src/pci/constants.js';
import { packageRoot } from '../src/native/binding.js';
import type { ComparisonReport } from '../cli/compare.js';
import { readInt, writeInt } from './helpers.js';

/** What the vGPU driver should leave on screen, drawn independently of the device. */
function referenceFramebufferSha256(): string {
  const { width, height } = VGPU_DRIVER_SCANOUT;
  const px = new Uint32Array(width * height).fill(0xff203040);
  const rect = (x0: number, y0: number, w: number, h: number, f: (x: number, y: number) => number) => {
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) px[(y0 + y) * width + x0 + x] = f(x, y);
  };
  rect(8, 8, 32, 32, () => 0xffff0000);
  rect(40, 40, 64, 64, testImagePixel);
  // After the GTT remap, GPU page 0 (image rows 0-15) is solid green; rows 16-19 are the image's.
  rect(8, 100, 64, 20, (x, y) => (y < 16 ? 0xff00ff00 : testImagePixel(x, y)));
  return createHash('sha256').update(new Uint8Array(px.buffer)).digest('hex');
}

describe('vGPU over both mediation paths', () => {
  it('draws the same known frame on both, seeing GTT updates by trap (Xen) and by compare (vfio-user)', async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [join(packageRoot(), 'dist/cli/main.js'), 'compare', 'vgpu', '--json']);
    const r = JSON.parse(stdout) as ComparisonReport;
    expect(r.identical).toBe(true);
    const expected = referenceFramebufferSha256();
    for (const path of ['vfio-user', 'xen'] as const) {
      const p = r.paths[path];
      expect(p.result).toMatchObject({ id: VGPU.ID_VALUE, fence1: 1, fence2: 2, irq1: true, irq2: true, error: 0, ringHead: 6 * 32, gttUpdateSeen: true });
      expect(p.framebufferSha256).toBe(expected);
      expect(p.interrupts).toBe(2);
      // Read: 6 commands × 32 B + the GTT page (4096) + the updated entry (8) + blit sources
      // (64×64×4 and 64×20×4). Written: two 4-byte fences.
      expect(p.dmaBytesRead).toBe(6 * 32 + 4096 + 8 + 64 * 64 * 4 + 64 * 20 * 4);
      expect(p.dmaBytesWritten).toBe(8);
      expect(p.writeWatchEvents).toBe(1);
    }
    expect(r.paths['vfio-user'].writeWatchMode).toBe('compare');
    expect(r.paths.xen.writeWatchMode).toBe('trap');
  });
});

describe('vGPU device', () => {
  function setup() {
    const d = new VirtualGpu().realize();
    const ram = new Uint8Array(0x100000);
    const mem = new WindowedGuestMemory();
    mem.addWindow({ gpa: 0x100000, bytes: ram, writable: true });
    d.attachGuestMemory(mem);
    d.attachWriteWatch(new CompareWriteWatch(mem));
    d.configWrite(PCI.COMMAND, Uint8Array.of(PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER, 0));
    const bar = d.bars[0]!.region;
    writeInt(bar, VGPU.RING_BASE, 8, 0x101000);
    writeInt(bar, VGPU.RING_SIZE, 4, 4096);
    writeInt(bar, VGPU.CONTROL, 4, 1);
    const submit = (cmd: number[]) => {
      const tail = readInt(bar, VGPU.RING_TAIL, 4);
      const b = new Uint8Array(32);
      const v = new DataView(b.buffer);
      cmd.forEach((w, i) => v.setUint32(i * 4, w >>> 0, true));
      ram.set(b, 0x1000 + tail);
      writeInt(bar, VGPU.RING_TAIL, 4, (tail + 32) % 4096);
      writeInt(bar, VGPU.DOORBELL, 4, 1);
    };
    return { d, bar, ram, submit };
  }

  it('reports errors: bad command, VRAM range, GTT fault, disabled engine, bad ring', () => {
    const { d, bar, submit } = setup();
    submit([99]);
    expect(readInt(bar, VGPU.ERROR, 4)).toBe(VGPU.ERR_BAD_COMMAND);
    expect(readInt(bar, VGPU.INT_STATUS, 4) & VGPU.INT_ERROR).toBe(VGPU.INT_ERROR);
    submit([VGPU.OP_FILL_RECT, VGPU.VRAM_SIZE - 4, 4096, 2 | (1 << 16), 0]);
    expect(readInt(bar, VGPU.ERROR, 4)).toBe(VGPU.ERR_VRAM_RANGE);
    submit([VGPU.OP_BLIT, 0, 0, 0, 256, 512, 1 | (1 << 16)]); // GPU address 0 with no GTT
    expect(readInt(bar, VGPU.ERROR, 4)).toBe(VGPU.ERR_GTT_FAULT);
    writeInt(bar, VGPU.CONTROL, 4, 0);
    submit([VGPU.OP_FENCE, 1, 0x102000, 0]);
    expect(readInt(bar, VGPU.ERROR, 4)).toBe(VGPU.ERR_DISABLED);
    writeInt(bar, VGPU.CONTROL, 4, 1);
    writeInt(bar, VGPU.RING_SIZE, 4, 100);
    writeInt(bar, VGPU.DOORBELL, 4, 1);
    expect(readInt(bar, VGPU.ERROR, 4)).toBe(VGPU.ERR_RING);
    expect(d.vram.bytes.every((b) => b === 0)).toBe(true);
  });

  it('signals fences with INTx when MSI-X is off, and with MSI-X vector 0 when it is on', () => {
    const { d, bar, submit } = setup();
    const intx: boolean[] = [];
    const msis: number[] = [];
    d.irq.attach({ setIntx: (l) => intx.push(l), sendMsi: (m) => msis.push(m.vector) });
    writeInt(bar, VGPU.INT_MASK, 4, VGPU.INT_FENCE);
    submit([VGPU.OP_FENCE, 1, 0x102000, 0]);
    expect(intx).toEqual([true]);
    writeInt(bar, VGPU.INT_STATUS, 4, VGPU.INT_FENCE); // W1C ack lowers the line
    expect(intx).toEqual([true, false]);
    writeInt(bar, VGPU.MSIX_TABLE + 12, 4, 0); // unmask entry 0
    d.configWrite(d.msix!.offset + 2, Uint8Array.of(0, 0x80)); // MSI-X enable
    submit([VGPU.OP_FENCE, 2, 0x102000, 0]);
    expect(msis).toEqual([0]);
    expect(intx).toEqual([true, false]);
    d.vram.release();
  });

  it('fills, fences into guest RAM and exposes the scanout hash', () => {
    const { bar, ram, submit, d } = setup();
    writeInt(bar, VGPU.SCANOUT_STRIDE, 4, 16);
    writeInt(bar, VGPU.SCANOUT_FORMAT, 4, 1);
    writeInt(bar, VGPU.SCANOUT_WIDTH, 4, 4);
    writeInt(bar, VGPU.SCANOUT_HEIGHT, 4, 2);
    submit([VGPU.OP_FILL_RECT, 0, 16, 4 | (2 << 16), 0x11223344]);
    submit([VGPU.OP_FENCE, 7, 0x102000, 0]);
    expect(new DataView(ram.buffer).getUint32(0x2000, true)).toBe(7);
    expect(readInt(bar, VGPU.FENCE_VALUE, 4)).toBe(7);
    const expected = createHash('sha256').update(new Uint8Array(new Uint32Array(8).fill(0x11223344).buffer)).digest();
    expect(readInt(bar, VGPU.SCANOUT_HASH, 4)).toBe(expected.readUInt32LE(0));
    expect(readInt(bar, VGPU.SCANOUT_HASH + 28, 4)).toBe(expected.readUInt32LE(28));
    d.vram.release();
  });
});
