/**
 * mdevkit: write a virtual PCI device once in TypeScript; serve it over vfio-user or Xen IOREQ.
 * @module
 */
export * from './errors.js';
