/**
 * When device code runs. Guest accesses normally reach a device one at a time: each completes,
 * hooks included, before the next is served. The exception is a handler that waits for the VMM —
 * over vfio-user, DMA through DMA_READ/DMA_WRITE messages when guest RAM was not shared by fd.
 * A VMM like QEMU cannot answer that DMA while one of its vCPUs waits for a trapped access, so
 * the transport keeps serving the VMM's accesses during the wait (else both sides deadlock).
 *
 * Those nested accesses change register storage at once, but their write hooks — device code —
 * run only after the running handler returns, in arrival order, each in a scope of its own: a
 * handler never re-enters itself or another handler, whatever the guest does meanwhile. Device
 * resets requested meanwhile (DEVICE_RESET, FLR) are deferred the same way.
 * @module
 */

import { MdevError } from './errors.js';

let depth = 0;
const deferred: (() => void)[] = [];
let onDeferredError: (e: unknown) => void = (e) => console.error('mdevkit: deferred device hook failed:', e);

/**
 * Runs a guest access (or other device work) as a handler. Nested scopes are the accesses a
 * transport serves while an outer handler waits; hooks they defer run when the outermost scope
 * ends, before this function returns (also when `fn` throws).
 */
export function inHandlerScope<T>(fn: () => T): T {
  enterHandlerScope();
  try {
    return fn();
  } finally {
    leaveHandlerScope();
  }
}

/**
 * Opens a handler scope; {@link leaveHandlerScope} (in a `finally`) closes it. The same as
 * {@link inHandlerScope} without a closure: for a transport's per-access path, where a closure per
 * access would be garbage per access.
 */
export function enterHandlerScope(): void {
  depth++;
}

/** Closes the scope {@link enterHandlerScope} opened; the outermost one runs the deferred hooks. */
export function leaveHandlerScope(): void {
  if (depth <= 0) throw new MdevError('EINVAL', 'no handler scope is open', 'leaveHandlerScope');
  depth--;
  if (depth === 0) runDeferred();
}

/** True inside a handler scope nested in another (an access served while a handler waits). */
export function isNestedHandler(): boolean {
  return depth > 1;
}

/**
 * Runs `hook` now, or — in a nested scope — after the outermost handler returns. Returns true
 * when it ran now.
 */
export function runOrDefer(hook: () => void): boolean {
  if (depth <= 1) {
    hook();
    return true;
  }
  deferred.push(hook);
  return false;
}

/** Hooks waiting for the running handler to return. */
export function deferredHookCount(): number {
  return deferred.length;
}

/**
 * Where a deferred hook's failure is reported (its access was answered long ago, so there is no
 * one to return an error to). Returns the previous reporter.
 */
export function setDeferredHookErrorReporter(report: (e: unknown) => void): (e: unknown) => void {
  const previous = onDeferredError;
  onDeferredError = report;
  return previous;
}

function runDeferred(): void {
  while (deferred.length > 0) {
    const hook = deferred.shift()!;
    depth++;
    try {
      hook();
    } catch (e) {
      onDeferredError(e);
    } finally {
      depth--;
    }
  }
}
