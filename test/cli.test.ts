import { describe, expect, it } from 'vitest';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { packageRoot } from '../src/native/binding.js';

const run = promisify(execFile);
const root = packageRoot();
const cli = join(root, 'dist', 'cli', 'main.js');

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

  it('ends quietly (exit 0, no stack) when the reader of its output goes away, as `lspci edu | head -1`', async () => {
    const child = spawn(process.execPath, [cli, 'lspci', 'edu'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    // the reader is gone before the first write (the CLI loads its modules first): every write gets EPIPE
    child.stdout.destroy();
    const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    expect(stderr).toBe('');
    expect(code).toBe(0);
  });

  it('fails with a clear message for a missing module', async () => {
    await expect(run(process.execPath, [cli, 'lspci', 'no/such/device'], { cwd: root })).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining('ENOENT: device: no module at no/such/device'),
    });
  });
});

describe('mdevkit serve --xen / --xen-sim', () => {
  it('--xen outside dom0 fails with a clear error and leaves nothing behind', async () => {
    await expect(run(process.execPath, [cli, 'serve', 'edu', '--xen', '5', '--bdf', '00:05.0'], { cwd: root })).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining('ENOENT: no /dev/xen/privcmd'),
    });
  });

  it('rejects a malformed --bdf', async () => {
    await expect(run(process.execPath, [cli, 'serve', 'edu', '--xen-sim', '--bdf', '00:32.0'], { cwd: root })).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('bdf') });
  });

  it('--xen-sim serves until SIGTERM and exits cleanly', async () => {
    const proc = spawn(process.execPath, [cli, 'serve', 'edu', '--xen-sim', '--bdf', '00:05.0', '--bar0', '0xfe000000', '-v'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => proc.once('exit', resolve));
    await new Promise<void>((resolve, reject) => {
      let out = '';
      proc.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('serving edu as ioreq server 0 for domain 1 (sim)')) resolve();
      });
      proc.once('exit', (code) => reject(new Error(`exited ${code} before serving`)));
    });
    proc.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});
