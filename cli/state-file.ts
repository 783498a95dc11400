/**
 * Device state files for `mdevkit serve --save/--restore`: a state image (src/state.ts) — the
 * same on both paths, so a state saved by a Xen IOREQ server restores behind a vfio-user socket
 * and the other way round.
 * @module
 */
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { MdevError, isErrno } from '../src/errors.js';
import type { PciDevice } from '../src/pci/device.js';

/**
 * Writes the device's state image to `path` atomically (a temporary file in the same directory,
 * fsynced, then renamed over `path`; mode 0600). Returns the image size.
 */
export function saveStateFile(device: PciDevice, path: string): number {
  const image = device.saveState();
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    const fd = openSync(tmp, 'w', 0o600);
    try {
      for (let at = 0; at < image.length; ) at += writeSync(fd, image, at, image.length - at);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (e) {
    if (isErrno(e)) throw new MdevError(e.code, `cannot write the device state to ${path}: ${e.message}`, 'save');
    throw e;
  }
  return image.length;
}

/**
 * Restores the device from the state image in `path`. Everything is checked before the device
 * changes (identity, format and section versions, sizes, CRC): a refused file leaves the device as
 * it was, and the error says why.
 */
export function restoreStateFile(device: PciDevice, path: string): number {
  let image: Uint8Array;
  try {
    image = readFileSync(path);
  } catch (e) {
    if (isErrno(e)) throw new MdevError(e.code, `cannot read the device state from ${path}: ${e.message}`, 'restore');
    throw e;
  }
  try {
    device.restoreState(image);
  } catch (e) {
    if (isErrno(e)) throw new MdevError(e.code, `${path} was refused, the device is unchanged: ${e.message}`, 'restore');
    throw e;
  }
  return image.length;
}
