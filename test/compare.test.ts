import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { packageRoot } from '../src/native/binding.js';
import type { ComparisonReport } from '../cli/compare.js';

const run = promisify(execFile);

describe('mdevkit compare', () => {
  it('runs the edu driver over both paths and reports identical results as JSON', async () => {
    const { stdout } = await run(process.execPath, [join(packageRoot(), 'dist/cli/main.js'), 'compare', 'edu', '--json']);
    const r = JSON.parse(stdout) as ComparisonReport;
    expect(r.identical).toBe(true);
    expect(r.differences).toEqual([]);
    for (const path of ['vfio-user', 'xen'] as const) {
      const p = r.paths[path];
      expect(p).toMatchObject({ framebufferSha256: null, interrupts: 2, dirtyPages: 2, dmaBytesRead: 64, dmaBytesWritten: 64, writeWatchEvents: 0 });
      expect(p.traps.total).toBe(p.traps.cfgRead + p.traps.cfgWrite + p.traps.mmioRead + p.traps.mmioWrite + p.traps.pioRead + p.traps.pioWrite);
      expect(p.traps.total).toBeGreaterThan(20);
      expect(p.rttP99Us).toBeGreaterThanOrEqual(p.rttP50Us);
      expect(p.rttP50Us).toBeGreaterThan(0);
    }
    expect(r.paths['vfio-user'].writeWatchMode).toBe('compare');
    expect(r.paths.xen.writeWatchMode).toBe('trap');
    expect(r.paths['vfio-user'].result).toEqual(r.paths.xen.result);
  });

  it('prints a side-by-side table', async () => {
    const { stdout } = await run(process.execPath, [join(packageRoot(), 'dist/cli/main.js'), 'compare', 'edu']);
    expect(stdout).toMatch(/vfio-user \(KVM\)\s+xen \(simulator\)/);
    expect(stdout).toMatch(/driver results\s+identical/);
    expect(stdout).toMatch(/write-watch events \/ mode\s+\d+ \/ compare\s+\d+ \/ trap/);
  });

  it('fails clearly for an unknown driver', async () => {
    await expect(run(process.execPath, [join(packageRoot(), 'dist/cli/main.js'), 'compare', 'edu', 'no/such/driver'])).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('ENOENT: driver') });
  });
});
