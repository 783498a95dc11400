/**
 * `mdevkit demo` (what `npm start` runs): the vGPU and its guest driver over both mediation paths,
 * the frame it drew written as PNG, and the comparison table.
 * @module
 */
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ScanoutDisplay } from '../display.js';
import { compare, formatComparison } from './compare.js';
import { VirtualGpu, VGPU } from '../../examples/vgpu/index.js';

/** Runs the demo; returns the PNG path. */
export async function demo(out: string = join(tmpdir(), `mdevkit-vgpu-${process.pid}.png`)): Promise<string> {
  const started = Date.now();
  const step = (line: string) => process.stdout.write(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${line}\n`);
  let pngInfo = '';
  const report = await compare('vgpu', 'vgpu', {
    progress: step,
    onXenDevice: (device) => {
      const gpu = device as VirtualGpu;
      const r = gpu.regs;
      const display = new ScanoutDisplay(VGPU.VRAM_SIZE);
      const result = display.refresh(gpu.vram.bytes, {
        offset: r.get('SCANOUT_OFFSET'),
        stride: r.get('SCANOUT_STRIDE'),
        width: r.get('SCANOUT_WIDTH'),
        height: r.get('SCANOUT_HEIGHT'),
      });
      writeFileSync(out, display.png());
      pngInfo = `${r.get('SCANOUT_WIDTH')}×${r.get('SCANOUT_HEIGHT')}, ${result.changedPages} VRAM pages found drawn by the page scan`;
    },
  });
  step(`scanout written to ${out} (${pngInfo})`);
  step(report.identical ? 'both paths drew the same frame and saw the same results' : `the paths DIFFER: ${report.differences.join(', ')}`);
  process.stdout.write('\n' + formatComparison(report) + '\n');
  process.stdout.write(`\nframebuffer SHA-256: ${report.paths.xen.framebufferSha256}\n`);
  if (!report.identical) process.exitCode = 3;
  return out;
}
