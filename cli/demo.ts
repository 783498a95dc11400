/**
 * `mdevkit demo` (what `npm start` runs): the vGPU and its guest driver over both mediation paths,
 * the frame it drew written as PNG, and the comparison table. It also points at the frames a real
 * Linux driver drew on the Bochs display, one per path, when they were recorded: by the last passing
 * `npm run test:qemu` (vfio-user) or `npm run test:xen` (Xen), in their caches, else the ones
 * committed under examples/bochs-display/recorded/.
 * It never boots a hypervisor itself.
 * @module
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { ScanoutDisplay } from '../src/display.js';
import { packageRoot } from '../src/native/binding.js';
import { compare, formatComparison } from './compare.js';
import { VirtualGpu, VGPU } from '../examples/vgpu/index.js';

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
  for (const recorded of recordedDisplayFrames()) {
    process.stdout.write(
      `\nA frame a real driver drew: Linux's bochs DRM driver and fbcon on mdevkit's bochs-display over ${recorded.path} ` +
        `(${recorded.hypervisor}, kernel ${recorded.kernel}, recorded ${recorded.recorded.slice(0, 10)} by ${recorded.by}${recorded.committed ? ', committed' : ''}):\n` +
        `  console text: ${recorded.console}\n  test image:   ${recorded.testImage} (frame SHA-256 ${recorded.sha256})\n`,
    );
  }
  if (!report.identical) process.exitCode = 3;
  return out;
}

/** A display frame recorded from a real-driver run (see the module comment). */
interface RecordedFrame {
  /** Mediation path it was recorded on ('vfio-user' or 'xen'). */
  path: string;
  /** ISO date of the run. */
  recorded: string;
  /** The hypervisor of the run (QEMU's version line; Xen's version). */
  hypervisor: string;
  /** Guest kernel. */
  kernel: string;
  /** Frame hash of the test image (test/e2e/display/frames.mjs). */
  sha256: string;
  /** PNG of the console text fbcon drew. */
  console: string;
  /** PNG of the test image the guest wrote to /dev/fb0. */
  testImage: string;
  /** The e2e test that recorded it. */
  by: string;
  /** From the repository, not from a run on this machine. */
  committed: boolean;
}

/** The newest recorded real-driver frame of each path: its e2e cache first, then the committed one. */
function recordedDisplayFrames(): RecordedFrame[] {
  const cache = process.env['MDEVKIT_CACHE'] ?? join(process.env['XDG_CACHE_HOME'] ?? join(homedir(), '.cache'), 'mdevkit');
  const committedDir = join(packageRoot(), 'examples', 'bochs-display', 'recorded');
  const paths: { record: string; cacheDir: string; by: string }[] = [
    { record: 'vfio-user.json', cacheDir: join(cache, 'qemu-e2e', 'display'), by: 'npm run test:qemu' },
    { record: 'xen.json', cacheDir: join(cache, 'xen-e2e', 'display'), by: 'npm run test:xen' },
  ];
  const found: RecordedFrame[] = [];
  for (const { record, cacheDir, by } of paths) {
    for (const [dir, committed] of [[cacheDir, false], [committedDir, true]] as const) {
      const frame = readRecord(dir, record, by, committed);
      if (frame) {
        found.push(frame);
        break;
      }
    }
  }
  return found;
}

/** One record file and the PNGs it names; null when any of them is missing or unreadable. */
function readRecord(dir: string, record: string, by: string, committed: boolean): RecordedFrame | null {
  try {
    const meta = JSON.parse(readFileSync(join(dir, record), 'utf8')) as Record<string, unknown>;
    const str = (k: string) => (typeof meta[k] === 'string' ? (meta[k] as string) : '?');
    const consolePng = join(dir, str('console'));
    const testImage = join(dir, str('testImage'));
    if (!existsSync(consolePng) || !existsSync(testImage)) return null;
    // vfio-user records name the hypervisor 'qemu' (its version line)
    const hypervisor = typeof meta['hypervisor'] === 'string' ? str('hypervisor') : str('qemu');
    return { path: str('path'), recorded: str('recorded'), hypervisor, kernel: str('kernel'), sha256: str('sha256'), console: consolePng, testImage, by, committed };
  } catch {
    return null; // not there (or not readable)
  }
}
