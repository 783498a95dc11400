/**
 * The Xen adapter: an IOREQ server that serves a device model to a Xen HVM/PVH guest, over the real
 * hypervisor (privcmd + evtchn in dom0) or — with the simulator's host from `mdevkit/testing` —
 * over the simulator of Xen's side.
 * @module mdevkit/xen
 */
export * from './host.js';
export * from './ioreq-abi.js';
export * from './abi.js';
export * from './privcmd-host.js';
export * from './guest-memory.js';
export * from './ioreq-server.js';
