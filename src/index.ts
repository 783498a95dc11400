/**
 * mdevkit: write a virtual PCI device once in TypeScript; serve it over vfio-user (KVM/QEMU) or as
 * a Xen IOREQ server.
 *
 * This entry point exports the hypervisor-neutral device model and the native-core primitives the
 * adapters are built on. The adapters have their own entry points (`mdevkit/vfio-user`,
 * `mdevkit/xen`), so do running without a hypervisor (`mdevkit/testing`) and what the `mdevkit`
 * command is composed of (`mdevkit/cli`: serve, compare, the display output and live view, init).
 * @module mdevkit
 */
export * from './errors.js';
export * from './masked-storage.js';
export * from './registers.js';
export * from './regions.js';
export * from './irq.js';
export * from './guest-memory.js';
export * from './write-watch.js';
export * from './state.js';
export * from './migration.js';
export * from './pci/constants.js';
export * from './pci/config-space.js';
export * from './pci/capabilities.js';
export * from './pci/device.js';
export * from './pci/lspci.js';
export * from './ram.js';
export * from './native/fd.js';
export * from './native/mmap.js';
export * from './native/socket.js';
export * from './native/ioctl.js';
export * from './native/watcher.js';
export * from './native/dirty-bitmap.js';
export * from './native/poll.js';
export * from './region-table.js';
export * from './handler-scope.js';
export * from './guest-driver.js';
export * from './display.js';
export * from './display-device.js';
