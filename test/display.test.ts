import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PNG } from 'pngjs';
import { describe, expect, it } from 'vitest';
import { ScanoutDisplay } from '../src/display.js';
import { DirtyBitmap } from '../src/native/dirty-bitmap.js';
import { packageRoot } from '../src/native/binding.js';
import { testImagePixel } from '../examples/vgpu/driver.js';

const rgba = (png: PNG, x: number, y: number) => [...png.data.subarray((y * png.width + x) * 4, (y * png.width + x) * 4 + 4)];

describe('ScanoutDisplay', () => {
  it('finds drawn pages by hash scan and re-renders only the lines they cover', () => {
    const vram = new Uint8Array(64 * 1024);
    const d = new ScanoutDisplay(vram.length);
    const g = { offset: 0, stride: 1024, width: 16, height: 64 }; // 4 lines per 4 KiB page
    expect(d.refresh(vram, g)).toEqual({ changedPages: 0, linesUpdated: 64 }); // first frame: all lines
    new DataView(vram.buffer).setUint32(5 * 1024 + 4, 0x00336699, true); // line 5, x 1: B 0x99 G 0x66 R 0x33
    expect(d.refresh(vram, g)).toEqual({ changedPages: 1, linesUpdated: 4 });
    expect(d.refresh(vram, g)).toEqual({ changedPages: 0, linesUpdated: 0 });
    const png = PNG.sync.read(d.png());
    expect(rgba(png, 1, 5)).toEqual([0x33, 0x66, 0x99, 0xff]);
    expect(rgba(png, 0, 0)).toEqual([0, 0, 0, 0xff]);
  });

  it('takes changed pages from a dirty bitmap when the path provides one', () => {
    const vram = new Uint8Array(16 * 1024);
    const d = new ScanoutDisplay(vram.length);
    const g = { offset: 0, stride: 4096, width: 8, height: 4 }; // one page per line
    d.refresh(vram, g);
    vram[2 * 4096] = 0xff;
    vram[3 * 4096] = 0xff;
    const dirty = new DirtyBitmap(4);
    dirty.markPage(2); // only page 2 is reported: line 3 stays as it was
    expect(d.refresh(vram, g, dirty)).toEqual({ changedPages: 1, linesUpdated: 1 });
    const png = PNG.sync.read(d.png());
    expect(rgba(png, 0, 2)[2]).toBe(0xff);
    expect(rgba(png, 0, 3)[2]).toBe(0);
  });

  it('refuses planes outside VRAM and bad geometry', () => {
    const d = new ScanoutDisplay(4096);
    expect(() => d.refresh(new Uint8Array(4096), { offset: 0, stride: 64, width: 16, height: 100 })).toThrow(expect.objectContaining({ code: 'ERANGE' }));
    expect(() => d.refresh(new Uint8Array(4096), { offset: 0, stride: 8, width: 16, height: 1 })).toThrow(expect.objectContaining({ field: 'geometry' }));
    expect(() => d.png()).toThrow(expect.objectContaining({ code: 'ENODATA' }));
  });
});

describe('mdevkit demo (npm start)', () => {
  it('runs the vGPU over both paths and writes the frame as PNG', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mdevkit-demo-'));
    try {
      const out = join(dir, 'frame.png');
      const { stdout } = await promisify(execFile)(process.execPath, [join(packageRoot(), 'dist/cli/main.js'), 'demo', '--out', out]);
      expect(stdout).toContain(`scanout written to ${out} (128×128, 16 VRAM pages found drawn by the page scan)`);
      expect(stdout).toContain('both paths drew the same frame');
      expect(stdout).toMatch(/write-watch events \/ mode\s+\d+ \/ compare\s+\d+ \/ trap/);
      // The frames Linux's bochs driver drew, recorded by the real-QEMU and real-Xen e2e tests (or
      // committed): mentioned, not booted; the test image's frame is the same on both paths.
      const shas = ['vfio-user', 'xen'].map((path) => {
        const m = stdout.match(new RegExp(`A frame a real driver drew: Linux's bochs DRM driver and fbcon on mdevkit's bochs-display over ${path} .*\\n  console text: \\S+\\.png\\n  test image: +\\S+\\.png \\(frame SHA-256 ([0-9a-f]{64})\\)`));
        expect(m, `no recorded ${path} frame in:\n${stdout}`).not.toBeNull();
        return m?.[1];
      });
      expect(shas[1]).toBe(shas[0]);
      const png = PNG.sync.read(readFileSync(out));
      expect([png.width, png.height]).toEqual([128, 128]);
      expect(rgba(png, 0, 0)).toEqual([0x20, 0x30, 0x40, 0xff]);
      expect(rgba(png, 10, 10)).toEqual([0xff, 0, 0, 0xff]);
      const p = testImagePixel(5, 7);
      expect(rgba(png, 45, 47)).toEqual([(p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff, 0xff]);
      expect(rgba(png, 20, 105)).toEqual([0, 0xff, 0, 0xff]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
