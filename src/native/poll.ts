/**
 * Blocking readiness waits (poll(2)) for synchronous callers.
 *
 * Most of mdevkit is event-driven (`FdWatcher` on the libuv loop). A vfio-user client that
 * behaves like a VMM's vCPU thread is synchronous instead: it blocks until a reply, a request from
 * the server or an interrupt eventfd is ready. These calls block the calling thread (and so the
 * event loop when called on the main thread) for at most the timeout given. A signal does not
 * fail or extend a wait: poll is resumed with the time that is left.
 * @module
 */
import { binding } from './binding.js';

interface PollBinding {
  pollFds(entries: readonly PollEntry[], timeoutMs: number): number[];
  waitReadable(fd: number, timeoutMs: number): boolean;
  pollConstants: Readonly<Record<'POLLIN' | 'POLLPRI' | 'POLLOUT' | 'POLLERR' | 'POLLHUP' | 'POLLNVAL' | 'POLLRDHUP', number>>;
}

const native = binding as unknown as PollBinding;

/** Event bit: data (or EOF) can be read without blocking. */
export const POLLIN: number = native.pollConstants.POLLIN;
/** Event bit: urgent/exceptional data. */
export const POLLPRI: number = native.pollConstants.POLLPRI;
/** Event bit: data can be written without blocking. */
export const POLLOUT: number = native.pollConstants.POLLOUT;
/** Returned bit: an error is pending on the fd (always reported, need not be requested). */
export const POLLERR: number = native.pollConstants.POLLERR;
/** Returned bit: the peer hung up (always reported, need not be requested). */
export const POLLHUP: number = native.pollConstants.POLLHUP;
/** Returned bit: the fd is not open (always reported). */
export const POLLNVAL: number = native.pollConstants.POLLNVAL;
/** Event bit: the peer shut down its writing half (stream sockets). */
export const POLLRDHUP: number = native.pollConstants.POLLRDHUP;

/** One fd to wait on and the events of interest. */
export interface PollEntry {
  /** The fd, `>= 0`. */
  fd: number;
  /** A bitwise OR of `POLLIN`, `POLLOUT`, `POLLPRI`, `POLLRDHUP` (`0 <= events <= 0xffff`). */
  events: number;
}

/**
 * Waits until at least one of `entries` is ready or `timeoutMs` passes (poll(2)).
 * @param entries at most 4096 entries; an fd may appear more than once
 * @param timeoutMs milliseconds to wait: 0 checks without waiting, -1 waits forever
 * @returns the `revents` of each entry, in order; all 0 when the timeout expired. `POLLERR`,
 *   `POLLHUP` and `POLLNVAL` are reported whether or not they were asked for.
 * @throws TypeError/RangeError naming the field (`entries[2].fd`, `timeoutMs`) for bad
 *   arguments; errno errors from poll other than EINTR
 */
export function pollFds(entries: readonly PollEntry[], timeoutMs: number): number[] {
  return native.pollFds(entries, timeoutMs);
}

/**
 * Blocks until a read on `fd` would not block: data is queued, the peer closed (EOF), or an error
 * is pending.
 * @param timeoutMs milliseconds to wait: 0 checks without waiting, -1 waits forever
 * @returns `true` when readable, `false` when the timeout expired first
 * @throws EBADF (syscall `poll`) when `fd` is not open
 */
export function waitReadable(fd: number, timeoutMs: number): boolean {
  return native.waitReadable(fd, timeoutMs);
}
