// Device state that moves between hypervisors: edu and the vGPU saved mid-work over vfio-user
// (STOP_COPY) and resumed on the Xen simulator, and saved on Xen and resumed over vfio-user
// (RESUMING), as `mdevkit compare` does and reports it. The second half of each driver must see
// what it sees on a device that never moved.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import type { ComparisonReport } from '../cli/compare.js';
import { packageRoot } from '../src/native/binding.js';

const run = promisify(execFile);
const cli = join(packageRoot(), 'dist/cli/main.js');

describe('state moved between vfio-user and Xen, mid-work (mdevkit compare)', () => {
  it.each([
    ['edu', { liveness: ~0x0badf00d >>> 0, factorial: 362880, irqStatus: 0x40, msiPending: 1, bufferOk: true, pendingDelivered: true, ramOk: true, factorialAfter: 720 }],
    ['vgpu', { ringHead: 128, ringTail: 192, fence: 2, fenceRam: 2, intStatus: 1, pba: 1, pendingDelivered: true, irq3: true, interrupts: 2, fenceAfter: 3, fenceRamAfter: 3, ringHeadAfter: 192, error: 0 }],
  ])('%s: vfio-user → Xen and Xen → vfio-user resume where the guest left it', async (device, expected) => {
    const { stdout } = await run(process.execPath, [cli, 'compare', device, '--json'], { maxBuffer: 16 << 20 });
    const r = JSON.parse(stdout) as ComparisonReport;
    expect(r.identical).toBe(true);
    expect(r.migration).not.toBeNull();
    const m = r.migration!;
    expect(m.reference).toMatchObject(expected);
    expect(m.moves.map((x) => `${x.from} → ${x.to}`)).toEqual(['vfio-user → xen', 'xen → vfio-user']);
    for (const move of m.moves) {
      expect(move.differences).toEqual([]);
      expect(move.identical).toBe(true);
      expect(move.result).toEqual(m.reference);
      expect(move.stateBytes).toBeGreaterThan(device === 'vgpu' ? 1 << 20 : 4096); // the vGPU's image carries its 1 MiB of VRAM
    }
    expect(m.identical).toBe(true);
  });

  it('reports the moves in the table, and can leave them out', async () => {
    const { stdout } = await run(process.execPath, [cli, 'compare', 'edu']);
    expect(stdout).toMatch(/state saved here, resumed\s+→ xen: identical \(\d+ B state\)\s+→ vfio-user: identical \(\d+ B state\)/);
    const quick = await run(process.execPath, [cli, 'compare', 'edu', '--no-migration', '--json']);
    expect((JSON.parse(quick.stdout) as ComparisonReport).migration).toBeNull();
  });
});
