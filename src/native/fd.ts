/**
 * File-descriptor primitives: memfd (guest RAM and shared regions) with seals, eventfd
 * (doorbells and interrupt lines), positional I/O, and close/dup/pipe.
 *
 * File descriptors are plain numbers owned by the caller: nothing here closes one implicitly.
 * Every fd this module creates is close-on-exec, so a spawned process inherits only what is
 * passed to it explicitly. Failed system calls throw an {@link ErrnoError} with `code`, `errno`
 * and `syscall`; bad arguments throw a TypeError, RangeError or errno error naming the `field`.
 * Interrupted calls (EINTR) are retried.
 * @module
 */
import type { ErrnoError } from '../errors.js';
import { binding } from './binding.js';
import { optionsRecord } from './options.js';

interface FdBinding {
  memfdCreate(name: string, allowSealing: boolean | undefined): number;
  ftruncate(fd: number, size: number | bigint): void;
  fdSize(fd: number): number;
  addSeals(fd: number, seals: number): void;
  getSeals(fd: number): number;
  eventfdCreate(initial: number, nonBlocking: boolean | undefined, semaphore: boolean | undefined): number;
  eventfdRead(fd: number): bigint | null;
  eventfdWrite(fd: number, value: bigint | number): boolean;
  pread(fd: number, buf: ArrayBufferView | ArrayBuffer, position: number | bigint): number;
  pwrite(fd: number, buf: ArrayBufferView | ArrayBuffer, position: number | bigint): number;
  closeFd(fd: number): void;
  dupFd(fd: number): number;
  pipe(nonBlocking: boolean | undefined): [number, number];
  setNonBlocking(fd: number, on: boolean): void;
  sealConstants: Readonly<Record<'F_SEAL_SEAL' | 'F_SEAL_SHRINK' | 'F_SEAL_GROW' | 'F_SEAL_WRITE', number>>;
}

const native = binding as unknown as FdBinding;

/** Seal: no further seals may be added. */
export const F_SEAL_SEAL: number = native.sealConstants.F_SEAL_SEAL;
/** Seal: the file may not shrink, so a peer's mapping can never fault with SIGBUS. */
export const F_SEAL_SHRINK: number = native.sealConstants.F_SEAL_SHRINK;
/** Seal: the file may not grow. */
export const F_SEAL_GROW: number = native.sealConstants.F_SEAL_GROW;
/** Seal: the contents may not change (needs no writable shared mapping to exist). */
export const F_SEAL_WRITE: number = native.sealConstants.F_SEAL_WRITE;

/** Options of {@link memfdCreate}. */
export interface MemfdOptions {
  /** Allow {@link addSeals} on the new fd (MFD_ALLOW_SEALING). Default `true`. */
  allowSealing?: boolean;
}

/**
 * Creates an anonymous memory file (memfd_create, MFD_CLOEXEC), size 0: size it with
 * {@link ftruncate}, map it with `mmapFd`, share it by passing the fd.
 * @param name a label shown in /proc/PID/fd (at most 249 bytes, no NUL); not a path
 * @returns the new fd
 */
export function memfdCreate(name: string, options?: MemfdOptions): number {
  const { allowSealing } = optionsRecord('options', options);
  return native.memfdCreate(name, allowSealing);
}

/**
 * Sets the size of a file (ftruncate). Growing a memfd adds zeroed pages.
 * @param size the new size in bytes, `>= 0` (a bigint for sizes beyond 2^53)
 */
export function ftruncate(fd: number, size: number | bigint): void {
  native.ftruncate(fd, size);
}

/** The size of the file behind `fd` in bytes (fstat's st_size; 0 for pipes and sockets). */
export function fdSize(fd: number): number {
  return native.fdSize(fd);
}

/**
 * Adds seals to a memfd created with `allowSealing` (fcntl F_ADD_SEALS). Seals are how a
 * receiver of someone else's memfd makes sure it cannot shrink or change under its mappings.
 * @param seals a bitwise OR of the `F_SEAL_*` constants
 */
export function addSeals(fd: number, seals: number): void {
  native.addSeals(fd, seals);
}

/** The seals currently set on a memfd (fcntl F_GET_SEALS), a bitwise OR of `F_SEAL_*`. */
export function getSeals(fd: number): number {
  return native.getSeals(fd);
}

/** Options of {@link eventfdCreate}. */
export interface EventfdOptions {
  /** Reads and writes never block; see {@link eventfdRead}. Default `true`. */
  nonBlocking?: boolean;
  /** Each read takes 1 from the counter instead of all of it (EFD_SEMAPHORE). Default `false`. */
  semaphore?: boolean;
}

/**
 * Creates an eventfd: a 64-bit counter the kernel, KVM (irqfd/ioeventfd) or a peer process can
 * signal. Writes add to the counter; a read returns it and resets it to 0 (or takes 1 in
 * semaphore mode).
 * @param initial the starting counter value, `0 <= initial < 2^32`
 * @returns the new fd (close-on-exec)
 */
export function eventfdCreate(initial = 0, options?: EventfdOptions): number {
  const { nonBlocking, semaphore } = optionsRecord('options', options);
  return native.eventfdCreate(initial, nonBlocking, semaphore);
}

/**
 * Reads an eventfd's counter (resetting it, or taking 1 in semaphore mode).
 * @returns the value read, or `null` when the counter is 0 and the fd is non-blocking (EAGAIN)
 */
export function eventfdRead(fd: number): bigint | null {
  return native.eventfdRead(fd);
}

/**
 * Adds `value` to an eventfd's counter, waking its readers.
 * @param value `0 <= value <= 2^64 - 2`; default 1
 * @returns `true`, or `false` when the fd is non-blocking and the addition would overflow the
 *   counter (EAGAIN): the reader has not consumed the earlier signals yet
 */
export function eventfdWrite(fd: number, value: bigint | number = 1n): boolean {
  return native.eventfdWrite(fd, value);
}

/**
 * Reads up to `buf.byteLength` bytes at `position` without moving the file offset (one pread
 * call; the count may be short).
 * @param position the file offset, `>= 0` (a bigint beyond 2^53)
 * @returns the bytes read; 0 at end of file
 */
export function pread(fd: number, buf: ArrayBufferView | ArrayBuffer, position: number | bigint): number {
  return native.pread(fd, buf, position);
}

/**
 * Writes `buf` at `position` without moving the file offset (one pwrite call; the count may be
 * short).
 * @param position the file offset, `>= 0` (a bigint beyond 2^53)
 * @returns the bytes written
 */
export function pwrite(fd: number, buf: ArrayBufferView | ArrayBuffer, position: number | bigint): number {
  return native.pwrite(fd, buf, position);
}

/**
 * Closes an fd. EINTR counts as closed (Linux always releases the fd), so the call is never
 * retried: a retry could close an fd another thread has just been given under the same number.
 */
export function closeFd(fd: number): void {
  native.closeFd(fd);
}

/** Duplicates an fd (F_DUPFD_CLOEXEC); both refer to the same open file. */
export function dupFd(fd: number): number {
  return native.dupFd(fd);
}

/** Options of {@link pipe}. */
export interface PipeOptions {
  /** Both ends non-blocking (O_NONBLOCK). Default `true`, like every fd an event loop serves. */
  nonBlocking?: boolean;
}

/**
 * Creates a pipe (pipe2, O_CLOEXEC).
 * @returns `[readEnd, writeEnd]`
 */
export function pipe(options?: PipeOptions): [readEnd: number, writeEnd: number] {
  const { nonBlocking } = optionsRecord('options', options);
  return native.pipe(nonBlocking);
}

/** Sets or clears O_NONBLOCK on an fd (e.g. one received from a peer or handed to a child). */
export function setNonBlocking(fd: number, on: boolean): void {
  native.setNonBlocking(fd, on);
}
