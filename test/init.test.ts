// `mdevkit init`: the scaffold's files and package.json, refusals, and the scaffold's own test and
// typecheck passing against this checkout (its node_modules linked to this package and to the
// tools it uses). `npm run test:pack` does the same from the packed tarball with real installs.
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { timeScale } from './helpers.js';
import { init } from '../cli/init.js';
import { packageRoot } from '../src/native/binding.js';

const run = promisify(execFile);
const root = packageRoot();
const cli = join(root, 'dist', 'cli', 'main.js');
let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'mdevkit-init-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('mdevkit init', () => {
  it('writes the device project: package.json, tsconfig, device, driver, test', async () => {
    const { stdout } = await run(process.execPath, [cli, 'init', join(dir, 'My Device'), '--mdevkit', root]);
    expect(stdout).toContain(`mdevkit file:${root}`);
    const project = join(dir, 'My Device');
    for (const f of ['.gitignore', 'README.md', 'package.json', 'tsconfig.json', 'vitest.config.ts', 'src/device.ts', 'src/driver.ts', 'test/device.test.ts']) {
      expect(existsSync(join(project, f)), f).toBe(true);
    }
    const pkg = JSON.parse(readFileSync(join(project, 'package.json'), 'utf8')) as Record<string, Record<string, unknown>>;
    expect(pkg).toMatchObject({ name: 'my-device', type: 'module', dependencies: { mdevkit: `file:${root}` }, allowScripts: { mdevkit: true, [`file:${root}`]: true } });
    expect(Object.keys(pkg['devDependencies']!)).toEqual(['@types/node', 'typescript', 'vitest']);
    expect(readFileSync(join(project, 'README.md'), 'utf8')).toMatch(/^# my-device\n/);
    // The default dependency is this version's range.
    const other = init(join(dir, 'other'));
    expect(other.mdevkit).toBe(`^${(JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version}`);
  });

  it('refuses a directory that is not empty, a file, a bad name, a missing tarball', async () => {
    mkdirSync(join(dir, 'taken'));
    writeFileSync(join(dir, 'taken', 'x'), '');
    expect(() => init(join(dir, 'taken'))).toThrow(expect.objectContaining({ code: 'EEXIST', field: 'dir' }));
    expect(() => init(join(dir, 'taken', 'x'))).toThrow(expect.objectContaining({ code: 'EEXIST', field: 'dir' }));
    expect(() => init(join(dir, 'n'), { name: 'Bad Name' })).toThrow(expect.objectContaining({ code: 'EINVAL', field: 'name' }));
    expect(() => init(join(dir, 'n'), { mdevkit: './no-such.tgz' })).toThrow(expect.objectContaining({ code: 'ENOENT', field: 'mdevkit' }));
    await expect(run(process.execPath, [cli, 'init', join(dir, 'taken')])).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('EEXIST: dir:') });
  });

  it("the scaffold's own test and typecheck pass as generated", async () => {
    const project = init(join(dir, 'device'), { mdevkit: root }).dir;
    // What npm install would provide, from this checkout.
    mkdirSync(join(project, 'node_modules', '@types'), { recursive: true });
    symlinkSync(root, join(project, 'node_modules', 'mdevkit'));
    for (const m of ['vitest', 'typescript', '@types/node']) symlinkSync(join(root, 'node_modules', m), join(project, 'node_modules', m));
    const vitest = await run(process.execPath, [join(root, 'node_modules', 'vitest', 'vitest.mjs'), 'run'], { cwd: project, env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' } });
    expect(vitest.stdout).toMatch(/Tests\s+2 passed/);
    await run(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], { cwd: project });
  }, 120_000 * timeScale);
});
