/**
 * Readiness callbacks for a file descriptor on Node's own event loop (a libuv `uv_poll_t`),
 * without Node streams: the event source for vfio-user sockets, eventfds and the Xen event
 * channel device.
 *
 * Notification is level-triggered: while the fd stays readable (or writable, if asked for), the
 * callback runs again on every loop iteration, so drain the fd or {@link FdWatcher.stop} the
 * watcher. Each callback runs like any Node event callback: promise jobs queued inside it run
 * right after it returns, and an exception it throws goes to `process.on('uncaughtException')`
 * (or ends the process) rather than being swallowed.
 * @module
 */
import type { ErrnoError } from '../errors.js';
import { binding } from './binding.js';
import { optionsRecord } from './options.js';

/** Which readiness to watch for. */
export interface FdEvents {
  /** Call back when the fd is readable, or at EOF/hang-up. */
  readable?: boolean;
  /** Call back when the fd is writable. */
  writable?: boolean;
}

/** One wakeup of an {@link FdWatcher}. */
export interface FdWatcherEvent {
  /** The fd is readable (or at EOF/hang-up: a read returns 0). */
  readable: boolean;
  /** The fd is writable. */
  writable: boolean;
  /**
   * The poll itself failed (libuv reports an error condition on the fd, e.g. the reading end of
   * a pipe closed, as EBADF). The watcher has stopped; the next operation on the fd gives the
   * precise error.
   */
  error?: ErrnoError;
}

/** Called by an {@link FdWatcher} on each wakeup. */
export type FdWatcherCallback = (event: FdWatcherEvent) => void;

interface NativeFdWatcher {
  start(readable?: boolean, writable?: boolean): void;
  stop(): void;
  close(): void;
  ref(): void;
  unref(): void;
  hasRef(): boolean;
  isActive(): boolean;
}

interface WatcherBinding {
  FdWatcher: new (
    fd: number,
    callback: (readable: boolean, writable: boolean, error?: ErrnoError) => void,
    readable: boolean | undefined,
    writable: boolean | undefined,
  ) => NativeFdWatcher;
}

const native = binding as unknown as WatcherBinding;

/**
 * Watches an fd for readiness on the Node event loop.
 *
 * A new watcher is idle; {@link FdWatcher.start} begins watching. While started it keeps the
 * process alive (unless {@link FdWatcher.unref}'d) and stays alive itself even if unreferenced
 * from JS, like any active Node handle. {@link FdWatcher.close} releases it for good; a stopped
 * watcher that becomes unreachable is also released by the garbage collector. The fd is never
 * closed by the watcher: close it yourself after {@link FdWatcher.close}.
 *
 * libuv puts the fd in non-blocking mode, and allows one watcher per fd per thread (EEXIST).
 * Regular files cannot be watched (EPERM).
 */
export class FdWatcher {
  /** The watched fd. */
  readonly fd: number;
  readonly #handle: NativeFdWatcher;
  #closed = false;

  /**
   * Creates an idle watcher for `fd`; nothing is watched until {@link FdWatcher.start}.
   * @param fd the fd to watch; it must stay open until {@link FdWatcher.close}
   * @param callback called on each wakeup
   * @param events the events {@link FdWatcher.start} watches by default (readable only, unless
   *   told otherwise)
   */
  constructor(fd: number, callback: FdWatcherCallback, events?: FdEvents) {
    const { readable, writable } = optionsRecord('events', events);
    if (typeof callback !== 'function') {
      // Checked here too because the trampoline below would otherwise hide a non-function.
      const error = new TypeError('The "callback" argument must be a function');
      throw Object.assign(error, { code: 'ERR_INVALID_ARG_TYPE', field: 'callback' });
    }
    // The event object is the only allocation per wakeup; it is built here rather than in C++
    // because creating it in JS is cheaper than property-by-property through N-API.
    const trampoline = (isReadable: boolean, isWritable: boolean, error?: ErrnoError): void => {
      callback(error === undefined ? { readable: isReadable, writable: isWritable } : { readable: isReadable, writable: isWritable, error });
    };
    this.#handle = new native.FdWatcher(fd, trampoline, readable, writable);
    this.fd = fd;
  }

  /**
   * Starts (or restarts) watching. Safe to call while started, e.g. to switch to watching for
   * writability while output is blocked.
   * @param events replaces the watched events; omitted fields keep their current setting
   * @returns this watcher
   * @throws EBADF if the watcher is closed or the fd was closed; EINVAL if no event is selected
   */
  start(events?: FdEvents): this {
    const { readable, writable } = optionsRecord('events', events);
    this.#handle.start(readable, writable);
    return this;
  }

  /** Stops watching until the next {@link FdWatcher.start}; no callback runs after this. */
  stop(): this {
    this.#handle.stop();
    return this;
  }

  /**
   * Stops watching and releases the libuv handle. Idempotent, and safe inside this watcher's own
   * callback. The fd is left open.
   */
  close(): void {
    this.#closed = true;
    this.#handle.close();
  }

  /** Lets this watcher keep the process alive while started (the default). */
  ref(): this {
    this.#handle.ref();
    return this;
  }

  /** Lets the process exit even while this watcher is started. */
  unref(): this {
    this.#handle.unref();
    return this;
  }

  /** Whether the watcher would keep the process alive while started. */
  hasRef(): boolean {
    return this.#handle.hasRef();
  }

  /** Whether the watcher is started. An error event stops it. */
  get active(): boolean {
    return this.#handle.isActive();
  }

  /** Whether {@link FdWatcher.close} has been called. */
  get closed(): boolean {
    return this.#closed;
  }
}
