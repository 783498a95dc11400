/**
 * `mdevkit init <dir>`: scaffolds a device project from the package's `templates/device/` — a
 * package.json depending on mdevkit, a tsconfig, a device with registers, a BAR, MSI and DMA
 * (`src/device.ts`), a guest driver for it (`src/driver.ts`) and a vitest test that serves the
 * device with `mdevkit serve` and drives it through the vfio-user client; it passes as generated.
 * @module
 */
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { MdevError } from '../src/errors.js';
import { packageRoot } from '../src/native/binding.js';

/** Options of {@link init}. */
export interface InitOptions {
  /**
   * The mdevkit dependency as package.json spells it (default `^<this version>`): a version range,
   * or for tests a tarball or directory (`file:…`; a path is made absolute).
   */
  mdevkit?: string;
  /** The package name (default: the directory's name, made a valid npm name). */
  name?: string;
}

/** What {@link init} wrote. */
export interface InitResult {
  /** The project directory (absolute). */
  dir: string;
  /** Files written, relative to it. */
  files: string[];
  /** The mdevkit dependency written. */
  mdevkit: string;
}

/** The template the scaffold is copied from. */
export function templateDir(): string {
  return join(packageRoot(), 'templates', 'device');
}

function listFiles(dir: string, prefix = ''): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? listFiles(join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`]))
    .sort();
}

/** A package name npm accepts, from a directory name. */
function packageName(dir: string): string {
  const n = basename(dir).toLowerCase().replace(/[^a-z0-9._~-]+/g, '-').replace(/^[._-]+/, '').slice(0, 214);
  return n === '' ? 'my-device' : n;
}

/** `spec` as package.json should hold it: a local tarball or directory becomes an absolute `file:` spec. */
function dependencySpec(spec: string): string {
  const local = spec.startsWith('file:') ? spec.slice(5) : /^(\.{0,2}\/|~)/.test(spec) || spec.endsWith('.tgz') ? spec : null;
  if (local === null) return spec;
  const abs = resolve(local);
  if (!existsSync(abs)) throw new MdevError('ENOENT', `no tarball or directory at ${abs}`, 'mdevkit');
  return `file:${abs}`;
}

/**
 * Writes a new device project into `dir` (created if missing; refused with EEXIST when it exists
 * and is not empty).
 */
export function init(dir: string, options: InitOptions = {}): InitResult {
  const target = resolve(dir);
  if (existsSync(target)) {
    if (!statSync(target).isDirectory()) throw new MdevError('EEXIST', `${target} exists and is not a directory`, 'dir');
    if (readdirSync(target).length > 0) throw new MdevError('EEXIST', `${target} is not empty; give a new or empty directory`, 'dir');
  }
  const own = JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string; devDependencies?: Record<string, string> };
  const mdevkit = dependencySpec(options.mdevkit ?? `^${own.version}`);
  const name = options.name ?? packageName(target);
  if (!/^[a-z0-9][a-z0-9._~-]*$/.test(name)) throw new MdevError('EINVAL', `not a valid package name: ${name}`, 'name');
  // The tools the scaffold's scripts use, at the versions mdevkit itself is developed with.
  const dev = own.devDependencies ?? {};
  const pick = (pkg: string, fallback: string) => dev[pkg] ?? fallback;
  mkdirSync(target, { recursive: true });
  cpSync(templateDir(), target, { recursive: true });
  // npm drops .gitignore files from tarballs: the template carries it as gitignore.
  if (existsSync(join(target, 'gitignore'))) renameSync(join(target, 'gitignore'), join(target, '.gitignore'));
  const readme = join(target, 'README.md');
  if (existsSync(readme)) writeFileSync(readme, readFileSync(readme, 'utf8').replaceAll('{{name}}', name));
  const pkg = {
    name,
    version: '0.1.0',
    private: true,
    type: 'module',
    description: 'A virtual PCI device written with mdevkit',
    scripts: {
      test: 'vitest run',
      typecheck: 'tsc -p tsconfig.json',
      lspci: 'mdevkit lspci ./src/device.ts',
      compare: 'mdevkit compare ./src/device.ts ./src/driver.ts',
      serve: 'mdevkit serve ./src/device.ts --vfio-user ./device.sock',
    },
    dependencies: { mdevkit },
    devDependencies: {
      '@types/node': pick('@types/node', '^20.19.0'),
      typescript: pick('typescript', '~5.9.3'),
      vitest: pick('vitest', '^3.2.4'),
    },
    // mdevkit's install script builds its native core (node-gyp): the project approves it, by name
    // from the registry, by the exact spec for a tarball or directory.
    allowScripts: { mdevkit: true, ...(mdevkit.startsWith('file:') ? { [mdevkit]: true } : {}) },
    engines: { node: '>=20' },
  };
  writeFileSync(join(target, 'package.json'), JSON.stringify(pkg, null, 2) + '\n');
  return { dir: target, files: listFiles(target), mdevkit };
}
