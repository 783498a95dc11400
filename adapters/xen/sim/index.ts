/**
 * The Xen simulator: a simulated hypervisor with one HVM guest ({@link SimHypervisor}), the
 * `XenHost` an IOREQ server uses over it ({@link SimXenHost}), and the guest's vCPUs
 * ({@link SimVcpu}, in a worker thread through {@link SimVcpuThread}).
 * @module
 */
export { SimHypervisor, SIM_LOG_LIMIT, SIM_DEFAULT_EXTRA_BYTES, SIM_MAXMEM_SLACK_PAGES, SIM_PADDR_BITS, MAX_PINNED_CACHEATTRS } from './hypervisor.js';
export type { SimHypervisorOptions, SimIoreqServerResources, SimEventChannel, SimInterruptEvent, SimModifiedMemory, SimPinnedCacheattr } from './hypervisor.js';
export { SimXenHost } from './host.js';
export { SimVcpu } from './vcpu.js';
export type { SimAccess, SimVcpuOptions, BufferedWriteOutcome } from './vcpu.js';
export { SimVcpuThread, SimVcpuError, vcpuWorkerScript } from './vcpu-thread.js';
export type { SimVcpuOp } from './vcpu-worker.js';
export { SimInterruptCounters, pciIntxGsi, isaIrqGsi } from './interrupts.js';
export { selectServer, decodeCf8Access, memoryAccessBounds } from './routing.js';
export type { SimSpace, Route, RouteRequest, RoutableServer } from './routing.js';
export { Rangeset, RangeList } from './rangeset.js';
export type { RangeLookup } from './rangeset.js';
export * from './layout.js';
export { SimDriverHost } from './driver-host.js';
export type { SimDriverHostOptions } from './driver-host.js';
export { runDriverOnSim } from './driver-run.js';
export type { DriverWorkerData } from './driver-run.js';
