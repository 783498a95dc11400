/**
 * Shared memory behind mappable regions (VRAM, doorbell pages): a memfd the hypervisor side maps,
 * mapped here too so the device sees the same bytes.
 * @module
 */
import { MdevError, describe } from './errors.js';
import { F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, addSeals, closeFd, ftruncate, memfdCreate } from './native/fd.js';
import { mmapFd, munmap, PAGE_SIZE } from './native/mmap.js';
import type { RamBacking } from './regions.js';

/** A memfd-backed {@link RamBacking} that can be released. */
export interface MemfdBacking extends RamBacking {
  /** The memfd (sealed against resizing). */
  readonly fd: number;
  /** Unmaps and closes; the bytes must not be used afterwards. */
  release(): void;
}

/**
 * Creates `size` bytes of zeroed shared memory in a memfd and maps it. The memfd is sealed against
 * shrinking and growing: it is handed to peers (the VMM), and a peer that shrank it would make our
 * own accesses fault (SIGBUS).
 */
export function createMemfdBacking(size: number, name = 'mdevkit-ram'): MemfdBacking {
  if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
    throw new MdevError('EINVAL', `must be a positive multiple of ${PAGE_SIZE}, got ${describe(size)}`, 'size');
  }
  const fd = memfdCreate(name, { allowSealing: true });
  let mapping: ArrayBuffer | null = null;
  try {
    ftruncate(fd, size);
    addSeals(fd, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    mapping = mmapFd(fd, size, { writable: true, shared: true });
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  const ab = mapping;
  let released = false;
  return {
    bytes: new Uint8Array(ab),
    fd,
    fdOffset: 0,
    release() {
      if (released) return;
      released = true;
      munmap(ab);
      closeFd(fd);
    },
  };
}
