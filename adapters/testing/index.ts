/**
 * Running devices and guest drivers without a hypervisor: the simulator of Xen's side (a simulated
 * HVM guest with vCPUs in worker threads, and the `XenHost` an IOREQ server uses over it), and the
 * hosts a guest driver written against the neutral interface runs on — the vfio-user client
 * playing the VMM ({@link VfioDriverHost}, {@link runDriverOverVfioUser}) and a simulated Xen vCPU
 * ({@link SimDriverHost}, {@link runDriverOnSim}). For tests of one's own device: serve it, run its
 * driver over both paths, compare.
 * @module mdevkit/testing
 */
export * from '../xen/sim/index.js';
export { VfioDriverHost } from '../vfio/driver-host.js';
export type { VfioDriverHostOptions } from '../vfio/driver-host.js';
export { runDriverOverVfioUser } from '../vfio/driver-runner.js';
