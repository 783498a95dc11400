/**
 * What the `mdevkit` command is composed of, for programs that script it: serving a device over
 * vfio-user or as a Xen IOREQ server, comparing one guest driver over both paths, keeping a
 * display device's frame as a PNG file or showing it live in a browser, loading device modules
 * (TypeScript included), and scaffolding a device project. This is the composition root: it uses
 * the model (`mdevkit`) and both adapters; neither of those imports it.
 * @module mdevkit/cli
 */
export * from './compare.js';
export * from './serve.js';
export * from './serve-xen.js';
export * from './display-output.js';
export * from './load-device.js';
export * from './init.js';
export * from './probe.js';
export * from './view.js';
export { demo } from './demo.js';
