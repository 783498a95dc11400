/**
 * Loads the native core (`build/Release/mdevkit_native.node`, built by `npm install`).
 *
 * Each wrapper module in `src/native/` declares the slice of the binding it uses, so the raw
 * binding stays untyped here. `MDEVKIT_NATIVE` overrides the path (the sanitizer run uses it).
 * @module
 */
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package root: the nearest ancestor directory holding mdevkit's package.json. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, 'package.json');
    if (existsSync(candidate)) {
      const pkg = JSON.parse(readFileSync(candidate, 'utf8')) as { name?: string };
      if (pkg.name === 'mdevkit') return dir;
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error('mdevkit: cannot find the package root from ' + fileURLToPath(import.meta.url));
    dir = parent;
  }
}

function load(): Record<string, unknown> {
  const require = createRequire(import.meta.url);
  const path = process.env['MDEVKIT_NATIVE'] ?? join(packageRoot(), 'build', 'Release', 'mdevkit_native.node');
  try {
    return require(path) as Record<string, unknown>;
  } catch (e) {
    const err = new Error(`mdevkit: cannot load the native core at ${path}; run "npm install" (it builds it with node-gyp)`);
    (err as Error & { cause: unknown }).cause = e;
    throw err;
  }
}

/** The raw native binding. Use the typed wrappers in `src/native/` instead. */
export const binding: Record<string, unknown> = load();
