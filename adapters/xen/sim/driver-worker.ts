/**
 * Worker entry: runs one guest driver on one simulated vCPU and posts its result.
 * @module
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { GuestDriver } from '../../../src/guest-driver.js';
import { SimDriverHost } from './driver-host.js';
import type { DriverWorkerData } from './driver-run.js';
import { SimVcpu } from './vcpu.js';

if (parentPort !== null && workerData !== null && typeof workerData === 'object' && 'driverUrl' in workerData) {
  const port = parentPort;
  const data = workerData as DriverWorkerData;
  const vcpu = new SimVcpu(data.descriptor, { timeoutMs: data.timeoutMs });
  try {
    const mod = (await import(data.driverUrl)) as { default: GuestDriver };
    const host = new SimDriverHost(vcpu, data.vcpuIndex, data.host);
    port.postMessage({ ok: true, result: mod.default(host) });
  } catch (e) {
    const err = e as { code?: string; message?: string };
    port.postMessage({ ok: false, error: { code: err.code ?? 'EIO', message: err.message ?? String(e) } });
  } finally {
    vcpu.close();
  }
}
