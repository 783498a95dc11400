// One guest driver, two mediation paths: the same edu driver runs over vfio-user (client in its own
// process, acting as the VMM; server in another) and over Xen (simulated vCPU in a worker, the
// IOREQ server adapter in this process). Device-visible results must be identical.
import { describe, expect, it } from 'vitest';
import { EduDevice } from '../examples/edu/index.js';
import { IoreqServer } from '../adapters/xen/ioreq-server.js';
import { pciSbdf } from '../adapters/xen/ioreq-abi.js';
import { SimHypervisor } from '../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../adapters/xen/sim/host.js';
import { runDriverOnSim } from '../adapters/xen/sim/driver-run.js';
import { runDriverOverVfioUser } from '../adapters/vfio/driver-runner.js';
import { BUILTIN_DRIVERS, resolveModule } from '../cli/load-device.js';
import { startServer } from './vfio/harness.js';

const driver = resolveModule('edu', BUILTIN_DRIVERS, 'driver');

describe('the edu driver over both mediation paths', () => {
  it('gives identical device-visible results', async () => {
    const server = await startServer({ device: 'edu' });
    let vfio;
    try {
      vfio = (await runDriverOverVfioUser(server.paths[0]!, driver)).result;
    } finally {
      expect(await server.stop()).toBe(0);
    }
    const hv = new SimHypervisor({ nrVcpus: 1, ramBytes: 8 << 20 });
    const host = new SimXenHost(hv);
    const xenServer = new IoreqServer(new EduDevice(), host, { pci: { segment: 0, bus: 0, device: 5, fn: 0 } });
    xenServer.start();
    let xen;
    try {
      xen = (await runDriverOnSim(hv, driver, { sbdf: pciSbdf(0, 0, 5, 0) })).result;
    } finally {
      xenServer.stop();
      host.close();
      hv.close();
    }
    expect(vfio).toEqual({
      vendor: 0x1234,
      device: 0x11e8,
      id: 0x010000ed,
      liveness: ~0x12345678 >>> 0,
      factorials: [1, 1, 120, 3628800, 479001600],
      dmaOk: true,
      msi: true,
      gotIrq: true,
      gotFactIrq: true,
      irqStatus: 0x8,
      interrupts: 2,
      finalIrqStatus: 0,
    });
    expect(xen).toEqual(vfio);
  });
});
