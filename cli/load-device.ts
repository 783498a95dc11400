/**
 * Loads a device module for the CLI: a built-in example name (`edu`), or a path to a module (file
 * or directory) whose default export creates the device. A user's TypeScript module (`.ts`, `.mts`)
 * runs as it is, through tsx ({@link importUserModule}); TypeScript sources under this package (its
 * own examples) are mapped to their compiled copies in `dist/`.
 * @module
 */
import { existsSync, statSync } from 'node:fs';
import { isAbsolute, join, relative, resolve } from 'node:path';
import { MdevError } from '../src/errors.js';
import { packageRoot } from '../src/native/binding.js';
import type { PciDevice } from '../src/pci/device.js';
import { importUserModule } from '../src/user-module.js';

/** Built-in example devices, by name. */
export const BUILTIN_DEVICES: Readonly<Record<string, string>> = {
  'bochs-display': 'examples/bochs-display',
  edu: 'examples/edu',
  shmem: 'examples/shmem',
  vgpu: 'examples/vgpu',
};

function candidates(path: string): string[] {
  const abs = resolve(path);
  const list: string[] = [];
  const add = (p: string): void => {
    if (!list.includes(p)) list.push(p);
  };
  const isDir = (p: string) => existsSync(p) && statSync(p).isDirectory();
  // Sources inside this package run from their compiled copy in dist/ when there is one; a user's
  // TypeScript as it is.
  const root = packageRoot();
  const rel = relative(root, abs);
  const inPackage = !rel.startsWith('..') && !isAbsolute(rel) && !rel.startsWith('dist');
  const forms = (p: string, compiledOnly: boolean): string[] => {
    const ts = compiledOnly ? [] : ['ts', 'mts'];
    if (isDir(p)) return ['js', 'mjs', ...ts].map((e) => join(p, `index.${e}`));
    if (/\.m?ts$/.test(p)) return compiledOnly ? [p.replace(/\.(m?)ts$/, '.$1js')] : [p];
    if (!/\.[cm]?js$/.test(p)) return [`${p}.js`, `${p}.mjs`, p, ...ts.map((e) => `${p}.${e}`)];
    return [p];
  };
  if (inPackage) {
    const inDist = join(root, 'dist', rel);
    (isDir(abs) ? [join(inDist, 'index.js')] : forms(inDist, true)).forEach(add);
  }
  forms(abs, false).forEach(add);
  return list;
}

function isDevice(v: unknown): v is PciDevice {
  return typeof v === 'object' && v !== null && 'configAccessor' in v && typeof (v as PciDevice).realize === 'function';
}

/**
 * The runnable file of a module named by a built-in name or a path (sources in this package map to
 * their compiled copies in dist/; a user's `.ts`/`.mts` file is itself runnable, and a path without
 * an extension also finds one). `field` names the argument in errors.
 */
export function resolveModule(spec: string, builtins: Readonly<Record<string, string>> = BUILTIN_DEVICES, field = 'device'): string {
  const path = builtins[spec] !== undefined ? join(packageRoot(), builtins[spec]!) : spec;
  const file = candidates(path).find((p) => existsSync(p) && statSync(p).isFile());
  if (!file) throw new MdevError('ENOENT', `no module at ${spec} (tried ${candidates(path).join(', ')}; built-ins: ${Object.keys(builtins).join(', ')})`, field);
  return file;
}

/** Built-in guest drivers, by device name. */
export const BUILTIN_DRIVERS: Readonly<Record<string, string>> = {
  'bochs-display': 'examples/bochs-display/driver',
  edu: 'examples/edu/driver',
  vgpu: 'examples/vgpu/driver',
};

/** Loads and realizes the device named by `spec` (built-in name or module path). */
export async function loadDevice(spec: string): Promise<PciDevice> {
  const file = resolveModule(spec);
  const mod = await importUserModule(file);
  const factory = mod['default'];
  if (typeof factory !== 'function') throw new MdevError('EINVAL', `${file} has no default export creating a device`, 'device');
  let device: unknown;
  try {
    device = (factory as () => unknown)();
  } catch (e) {
    if (e instanceof TypeError && /class constructor/i.test(e.message)) device = new (factory as new () => unknown)();
    else throw e;
  }
  if (!isDevice(device)) throw new MdevError('EINVAL', `the default export of ${file} did not create a PciDevice`, 'device');
  return device.realize();
}
