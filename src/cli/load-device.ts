/**
 * Loads a device module for the CLI: a built-in example name (`edu`), or a path to a module (file
 * or directory) whose default export creates the device. TypeScript sources under this package are
 * mapped to their compiled copies in `dist/`.
 * @module
 */
import { existsSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { MdevError } from '../errors.js';
import { packageRoot } from '../native/binding.js';
import type { PciDevice } from '../pci/device.js';

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
  const forms = (p: string): string[] => {
    if (existsSync(p) && statSync(p).isDirectory()) return ['index.js', 'index.mjs'].map((f) => join(p, f));
    if (p.endsWith('.ts')) return [p.replace(/\.ts$/, '.js')];
    if (!/\.[cm]?js$/.test(p)) return [`${p}.js`, p];
    return [p];
  };
  forms(abs).forEach(add);
  // Sources inside this package run from their compiled copy in dist/.
  const root = packageRoot();
  const rel = relative(root, abs);
  if (!rel.startsWith('..') && !rel.startsWith('dist')) {
    const inDist = join(root, 'dist', rel);
    const isDir = existsSync(abs) && statSync(abs).isDirectory();
    (isDir ? [join(inDist, 'index.js')] : forms(inDist)).forEach(add);
  }
  return list;
}

function isDevice(v: unknown): v is PciDevice {
  return typeof v === 'object' && v !== null && 'configAccessor' in v && typeof (v as PciDevice).realize === 'function';
}

/**
 * The runnable file of a module named by a built-in name or a path (sources in this package map to
 * their compiled copies in dist/). `field` names the argument in errors.
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
  const mod = (await import(pathToFileURL(file).href)) as { default?: unknown };
  const factory = mod.default;
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
