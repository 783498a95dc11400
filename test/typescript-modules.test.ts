// TypeScript devices and drivers without a build step: `mdevkit lspci|serve|compare ./x.ts` in a
// project outside this package (its node_modules/mdevkit linked here), in an ESM package and in a
// CommonJS one, through tsx's hooks; types are not checked (that stays the user's tsc's job).
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { timeScale } from './helpers.js';
import { packageRoot } from '../src/native/binding.js';

const run = promisify(execFile);
const root = packageRoot();
const cli = join(root, 'dist', 'cli', 'main.js');

/** The README's Counter device. */
const COUNTER = `import { PciDevice, Region, RegisterBlock } from 'mdevkit';

export class Counter extends PciDevice {
  readonly regs = new RegisterBlock('counter', 0x100, {
    ID:     { offset: 0x00, width: 4, reset: 0x0c0ffee0, readOnly: true },
    COUNT:  { offset: 0x04, width: 4, onRead: (r) => r.set(r.get() + 1) },
    STATUS: { offset: 0x08, width: 4, w1c: 0x1 },
    KICK:   { offset: 0x0c, width: 4, readOnly: true,
              onWrite: (ev) => { this.regs.reg('STATUS').setBits(1); this.irq.raise(0); } },
    BASE:   { offset: 0x10, width: 8 },
  });
  constructor() {
    super({ vendorId: 0x1234, deviceId: 0x0001, classCode: 0xff0000 });
    this.addBar(0, new Region('regs', 0x1000, { accessor: this.regs }));
    this.addMsi({ vectors: 1 });
  }
}
export default () => new Counter();
`;

/** A driver for it, with a type annotation tsx strips and an import of the device module. */
const DRIVER = `import { PCI, PCI_COMMAND, type DriverResult, type GuestDriverHost } from 'mdevkit';
import { Counter } from './counter.js';

export default function driver(host: GuestDriverHost): DriverResult {
  host.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
  const counts: number[] = [1, 2, 3].map(() => Number(host.mmioRead(0, 0x04, 4)));
  return { id: Number(host.mmioRead(0, 0x00, 4)), counts, isClass: typeof Counter === 'function' };
}
`;

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'mdevkit-ts-'));
  for (const kind of ['esm', 'cjs']) {
    const project = join(dir, kind);
    mkdirSync(join(project, 'node_modules'), { recursive: true });
    symlinkSync(root, join(project, 'node_modules', 'mdevkit'));
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: `ts-${kind}`, type: kind === 'esm' ? 'module' : 'commonjs' }));
    writeFileSync(join(project, 'counter.ts'), COUNTER);
    writeFileSync(join(project, 'driver.ts'), DRIVER);
  }
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('TypeScript device modules', () => {
  it.each(['esm', 'cjs'])('lspci ./counter.ts in a %s package', async (kind) => {
    const { stdout } = await run(process.execPath, [cli, 'lspci', './counter.ts'], { cwd: join(dir, kind) });
    expect(stdout).toContain('Device 1234:0001');
    expect(stdout).toContain('BAR0 regs: mmio [size=4K] trapped');
  });

  it('finds counter.ts from ./counter (no extension)', async () => {
    const { stdout } = await run(process.execPath, [cli, 'lspci', './counter', '--no-size-bars'], { cwd: join(dir, 'esm') });
    expect(stdout).toContain('Device 1234:0001');
  });

  it('a syntax error is reported with the file, a type error is not checked', async () => {
    const project = join(dir, 'esm');
    writeFileSync(join(project, 'broken.ts'), 'export default () => { const x: number = ; };\n');
    await expect(run(process.execPath, [cli, 'lspci', './broken.ts'], { cwd: project })).rejects.toMatchObject({ stderr: expect.stringContaining('broken.ts') });
    writeFileSync(join(project, 'mistyped.ts'), COUNTER.replace("classCode: 0xff0000 }", "classCode: 0xff0000, extra: 'not a field' as unknown as number }"));
    const { stdout } = await run(process.execPath, [cli, 'lspci', './mistyped.ts', '--no-size-bars'], { cwd: project });
    expect(stdout).toContain('Device 1234:0001');
  });

  it.each(['esm', 'cjs'])('compare ./counter.ts ./driver.ts over both paths in a %s package', async (kind) => {
    const { stdout } = await run(process.execPath, [cli, 'compare', './counter.ts', './driver.ts', '--json'], { cwd: join(dir, kind) });
    const r = JSON.parse(stdout) as { identical: boolean; paths: Record<string, { result: Record<string, unknown> }> };
    expect(r.identical).toBe(true);
    expect(r.paths['vfio-user']!.result).toEqual({ id: 0x0c0ffee0, counts: [1, 2, 3], isClass: true });
  }, 60_000 * timeScale);
});
