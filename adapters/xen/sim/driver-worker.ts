/**
 * Worker entry: runs one guest driver on one simulated vCPU and posts its result.
 * @module
 */
import { parentPort, workerData } from 'node:worker_threads';
import { driverEntry, instrument, type GuestDriver } from '../../../src/guest-driver.js';
import { importUserModule } from '../../../src/user-module.js';
import { SimDriverHost } from './driver-host.js';
import type { DriverWorkerData } from './driver-run.js';
import { SimVcpu } from './vcpu.js';

if (parentPort !== null && workerData !== null && typeof workerData === 'object' && 'driverUrl' in workerData) {
  const port = parentPort;
  const data = workerData as DriverWorkerData;
  const vcpu = new SimVcpu(data.descriptor, { timeoutMs: data.timeoutMs });
  try {
    const mod = (await importUserModule(data.driverUrl)) as { default: GuestDriver };
    const run = driverEntry(mod, data.entry);
    const host = new SimDriverHost(vcpu, data.vcpuIndex, data.host);
    const before = host.interruptCount();
    const { host: timed, stats } = instrument(host);
    const t0 = process.hrtime.bigint();
    const result = run(timed);
    const elapsedMs = Number(process.hrtime.bigint() - t0) / 1e6;
    port.postMessage({ ok: true, run: { result, traps: stats.traps, rttUs: stats.rttUs, interrupts: host.interruptCount() - before, elapsedMs, dirtyPages: null } });
  } catch (e) {
    const err = e as { code?: string; message?: string };
    port.postMessage({ ok: false, error: { code: err.code ?? 'EIO', message: err.message ?? String(e) } });
  } finally {
    vcpu.close();
  }
}
