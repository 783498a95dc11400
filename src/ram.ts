/**
 * Shared memory behind mappable regions (VRAM, doorbell pages): a memfd the hypervisor side maps,
 * mapped here too so the device sees the same bytes.
 *
 * An adapter may give the guest a region's memory another way and move the contents there
 * ({@link Region.replaceBacking}: the Xen adapter makes VRAM guest RAM). A memfd backing then
 * *follows*: its `bytes` view the new place, so a device that holds its backing (`this.vram.bytes`)
 * keeps reaching its memory without knowing; its memfd keeps the old contents until the memory
 * comes back.
 * @module
 */
import { MdevError, describe } from './errors.js';
import { F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, addSeals, closeFd, ftruncate, memfdCreate } from './native/fd.js';
import { mmapFd, munmap, PAGE_SIZE } from './native/mmap.js';
import type { Region, RamBacking } from './regions.js';

/** A memfd-backed {@link RamBacking} that can be released. */
export interface MemfdBacking extends RamBacking {
  /**
   * The bytes: the memfd's mapping, or while an adapter has moved the region's memory
   * ({@link Region.replaceBacking}), the memory it moved them to.
   */
  readonly bytes: Uint8Array;
  /** The memfd (sealed against resizing); stale while the memory is moved elsewhere. */
  readonly fd: number;
  /** Unmaps and closes; the bytes must not be used afterwards. */
  release(): void;
}

/** Backings whose `bytes` can be pointed elsewhere: what {@link redirectRamBacking} changes. */
const redirectable = new WeakMap<RamBacking, (bytes: Uint8Array | null) => void>();

/**
 * Points `backing.bytes` at `bytes` (null: back at its own memory), for backings made by
 * {@link createMemfdBacking}; nothing is copied. Returns false for other backings, whose `bytes`
 * cannot change. {@link Region.replaceBacking} uses it so holders of a moved backing follow.
 */
export function redirectRamBacking(backing: RamBacking, bytes: Uint8Array | null): boolean {
  const redirect = redirectable.get(backing);
  if (redirect === undefined) return false;
  redirect(bytes);
  return true;
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
  const own = new Uint8Array(ab);
  let moved: Uint8Array | null = null;
  let released = false;
  const backing: MemfdBacking = {
    get bytes() {
      return moved ?? own;
    },
    fd,
    fdOffset: 0,
    release() {
      if (released) return;
      released = true;
      munmap(ab);
      closeFd(fd);
    },
  };
  redirectable.set(backing, (bytes) => {
    moved = bytes;
  });
  return backing;
}
