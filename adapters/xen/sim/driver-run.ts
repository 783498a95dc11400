/**
 * Runs a guest driver on a simulated vCPU in a worker thread (the vCPU blocks on every access, as
 * a real one does while Xen forwards its ioreq).
 * @module
 */
import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { MdevError } from '../../../src/errors.js';
import { packageRoot } from '../../../src/native/binding.js';
import type { DriverEntry, DriverRun } from '../../../src/guest-driver.js';
import type { SimHypervisor } from './hypervisor.js';
import type { SimDriverHostOptions } from './driver-host.js';

/** What the driver worker receives. */
export interface DriverWorkerData {
  /** The vCPU the driver runs on. */
  descriptor: ReturnType<SimHypervisor['vcpuDescriptor']>;
  /** Its index. */
  vcpuIndex: number;
  /** Device address and layout. */
  host: SimDriverHostOptions;
  /** URL of the compiled driver module. */
  driverUrl: string;
  /** Timeout of each vCPU access. */
  timeoutMs: number;
  /** What to run: the module's default export, or a half of its `migration` export. */
  entry?: DriverEntry;
}

/** The compiled worker script (workers run JavaScript). */
function workerScript(): string {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.js')) return join(here, '..', 'driver-worker.js');
  return join(packageRoot(), 'dist', 'adapters', 'xen', 'sim', 'driver-worker.js');
}

/**
 * Runs the driver module at `driverFile` (a compiled .js file) on vCPU `vcpuIndex` of `hypervisor`.
 * `dirtyPages` is filled from the modified_memory calls the server made during the run.
 */
export function runDriverOnSim(hypervisor: SimHypervisor, driverFile: string, host: SimDriverHostOptions, options: { vcpuIndex?: number; timeoutMs?: number; entry?: DriverEntry } = {}): Promise<DriverRun> {
  const vcpuIndex = options.vcpuIndex ?? 0;
  const data: DriverWorkerData = { descriptor: hypervisor.vcpuDescriptor(vcpuIndex), vcpuIndex, host, driverUrl: pathToFileURL(driverFile).href, timeoutMs: options.timeoutMs ?? 10_000, entry: options.entry ?? 'default' };
  const logBefore = hypervisor.modifiedMemoryCount;
  return new Promise((resolve, reject) => {
    const worker = new Worker(workerScript(), { workerData: data });
    worker.once('message', (msg: { ok: true; run: DriverRun } | { ok: false; error: { code: string; message: string } }) => {
      if (msg.ok) {
        const frames = new Set<bigint>();
        for (const call of hypervisor.modifiedMemorySince(logBefore)) {
          for (const e of call.extents) for (let i = 0; i < e.nr; i++) frames.add(e.firstPfn + BigInt(i));
        }
        resolve({ ...msg.run, dirtyPages: frames.size });
      }
      else reject(new MdevError(msg.error.code || 'EIO', `driver failed on the Xen path: ${msg.error.message}`, 'driver'));
      void worker.terminate();
    });
    worker.once('error', (e) => reject(e));
    worker.once('exit', (code) => reject(new MdevError('EPIPE', `driver worker exited (code ${code}) without a result`, 'driver')));
  });
}
