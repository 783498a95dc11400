/**
 * Imports a user's module — a device or a guest driver — by path or file URL, TypeScript included:
 * for a `.ts`/`.mts`/`.cts` file, tsx's loader hooks (ESM and CommonJS; esbuild strips the types,
 * nothing is type-checked — that stays the user's `tsc`'s job) are registered in the calling thread
 * first, once. JavaScript modules never load tsx. Hooks are per thread in Node 20: a worker that
 * imports a user's module calls this itself.
 * @module
 */
import { isAbsolute } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { MdevError } from './errors.js';

/** File names tsx's hooks are needed for. */
const TYPESCRIPT = /\.[cm]?ts$/;

let registered: Promise<void> | null = null;

/** True when `fileOrUrl` names a TypeScript source (`.ts`, `.mts`, `.cts`). */
export function isTypeScriptModule(fileOrUrl: string): boolean {
  return TYPESCRIPT.test(fileOrUrl.startsWith('file:') ? fileURLToPath(fileOrUrl) : fileOrUrl);
}

/** Registers tsx's ESM and CommonJS hooks in this thread (once; later calls share the first). */
export function registerTypeScript(): Promise<void> {
  registered ??= (async () => {
    try {
      const esm = await import('tsx/esm/api');
      const cjs = await import('tsx/cjs/api');
      esm.register();
      cjs.register();
    } catch (e) {
      registered = null;
      throw new MdevError('ENOTSUP', `cannot load TypeScript modules: tsx did not load (${(e as Error).message})`, 'module');
    }
  })();
  return registered;
}

/**
 * Imports the module at `fileOrUrl` (an absolute path or a file: URL); TypeScript sources through
 * tsx. A module compiled to CommonJS (a `.ts` file in a package without `"type": "module"`)
 * arrives with its exports under `default`; they are unwrapped, so `default` is the module's own
 * default export either way.
 */
export async function importUserModule(fileOrUrl: string): Promise<Record<string, unknown>> {
  if (!fileOrUrl.startsWith('file:') && !isAbsolute(fileOrUrl)) throw new MdevError('EINVAL', `must be an absolute path or a file: URL, got ${fileOrUrl}`, 'module');
  const url = fileOrUrl.startsWith('file:') ? fileOrUrl : pathToFileURL(fileOrUrl).href;
  if (isTypeScriptModule(fileOrUrl)) await registerTypeScript();
  const mod = (await import(url)) as Record<string, unknown>;
  const inner = mod['default'];
  if (inner !== null && typeof inner === 'object' && (inner as { __esModule?: unknown }).__esModule === true) return inner as Record<string, unknown>;
  return mod;
}
