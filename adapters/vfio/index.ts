/**
 * The vfio-user adapter: a server that serves a device model to a VMM (QEMU's `vfio-user-pci`),
 * and a client that behaves like QEMU's (tests, probing, benchmarks, scripted guest drivers).
 * @module mdevkit/vfio-user
 */
export * from './protocol.js';
export * from './server.js';
export * from './dma.js';
export * from './irqs.js';
export * from './migration.js';
export * from './migration-driver.js';
export * from './client.js';
export * from './driver-host.js';
export { runDriverOverVfioUser } from './driver-runner.js';
export type { VfioDriverRunOptions } from './driver-runner.js';
