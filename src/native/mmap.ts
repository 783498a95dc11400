/**
 * Maps an fd (memfd guest RAM, a vfio-user DMA region, a Xen privcmd foreign mapping) into an
 * `ArrayBuffer` whose bytes *are* the mapping, so device models read and write guest memory
 * through typed arrays with no copies.
 *
 * The mapping lives until {@link munmap} or until the `ArrayBuffer` is garbage collected,
 * whichever comes first. `munmap` detaches the buffer, so every view over it becomes empty and
 * stale accesses read nothing instead of faulting.
 *
 * Accessing a mapped page past the end of a file raises SIGBUS, which kills the process. mmapFd
 * refuses mappings beyond the current size of a regular file, but a peer holding the same memfd
 * can still shrink it later: require `F_SEAL_SHRINK` on memory received from an untrusted peer.
 * @module
 */
import { binding } from './binding.js';
import { optionsRecord } from './options.js';

interface MmapBinding {
  mmapFd(fd: number, length: number | bigint, offset: number | bigint, writable: boolean | undefined, shared: boolean | undefined): ArrayBuffer;
  munmap(ab: ArrayBuffer): void;
  mappingAddress(ab: ArrayBuffer): bigint;
  pageSize: number;
}

const native = binding as unknown as MmapBinding;

/** The system page size in bytes; mapping offsets must be multiples of it. */
export const PAGE_SIZE: number = native.pageSize;

/** Options of {@link mmapFd}. */
export interface MmapOptions {
  /** Offset in the file, a multiple of {@link PAGE_SIZE} (EINVAL otherwise). Default 0. */
  offset?: number | bigint;
  /** Map with PROT_WRITE as well as PROT_READ. Default `true`. */
  writable?: boolean;
  /**
   * MAP_SHARED (`true`, the default): writes reach the file and every other mapping of it.
   * MAP_PRIVATE (`false`): copy-on-write, invisible to others.
   */
  shared?: boolean;
}

/**
 * Maps `length` bytes of `fd` into memory.
 * @param length bytes to map, `> 0` (EINVAL for 0); for a regular file, offset + length must
 *   not exceed the file's size
 * @returns an `ArrayBuffer` backed by the mapping
 * @throws errno errors from fstat/mmap (EBADF, EACCES for a writable mapping of a read-only fd,
 *   EPERM for a writable shared mapping of a memfd sealed with `F_SEAL_WRITE`, ...)
 */
export function mmapFd(fd: number, length: number | bigint, options?: MmapOptions): ArrayBuffer {
  const { offset = 0, writable, shared } = optionsRecord('options', options);
  return native.mmapFd(fd, length, offset, writable, shared);
}

/**
 * Unmaps a mapping now instead of at garbage collection, and detaches `ab` (its `byteLength`
 * and that of every view over it become 0).
 * @param ab an `ArrayBuffer` returned by {@link mmapFd}
 * @throws EINVAL naming `ab` if it is not a live mapping made by {@link mmapFd} (already
 *   unmapped, detached, or some other buffer)
 */
export function munmap(ab: ArrayBuffer): void {
  native.munmap(ab);
}

/**
 * The virtual address of a live mapping, for kernel interfaces that take one (the `addr` of Xen
 * IOCTL_PRIVCMD_MMAPBATCH_V2, which populates a mapping made by {@link mmapFd} on privcmd).
 * @throws EINVAL naming `ab` if it is not a live mapping made by {@link mmapFd}
 */
export function mappingAddress(ab: ArrayBuffer): bigint {
  return native.mappingAddress(ab);
}
