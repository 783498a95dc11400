import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { packageRoot } from '../src/native/binding.js';

const run = promisify(execFile);
const root = packageRoot();
const cli = join(root, 'dist', 'src', 'cli', 'main.js');

describe('mdevkit CLI (compiled, as npm start runs it)', () => {
  it('lspci prints the edu device decoded', async () => {
    const { stdout } = await run(process.execPath, [cli, 'lspci', 'edu'], { cwd: root });
    expect(stdout).toContain('Unclassified device [00ff]: Device 1234:11e8 (rev 10)');
    expect(stdout).toContain('Region 0: Memory at <unassigned> (32-bit, non-prefetchable) [disabled] [size=1M]');
    expect(stdout).toContain('Capabilities: [48] MSI: Enable- Count=1/1 Maskable+ 64bit+');
    expect(stdout).toContain('BAR0 edu-mmio: mmio [size=1M] trapped overlays: dma-buffer@40000');
  });

  it('loads a device module by path, mapping sources to dist/', async () => {
    const { stdout } = await run(process.execPath, [cli, 'lspci', 'examples/edu/index.ts', '--no-size-bars'], { cwd: root });
    expect(stdout).toContain('Device 1234:11e8');
    expect(stdout).not.toContain('Region 0:');
  });

  it('fails with a clear message for a missing module', async () => {
    await expect(run(process.execPath, [cli, 'lspci', 'no/such/device'], { cwd: root })).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining('ENOENT: device: no device module at no/such/device'),
    });
  });
});
