/**
 * The first SIGTERM/SIGINT as a promise, for the long-running `serve` commands.
 * @module
 */

/** A pending stop request (see {@link listenForStop}). */
export interface StopSignal {
  /** Resolves with the name of the first SIGTERM/SIGINT received. */
  readonly stopped: Promise<NodeJS.Signals>;
  /** Removes the handlers (startup failed: the process should end the default way again). */
  cancel(): void;
}

/**
 * Installs SIGTERM/SIGINT handlers now. Call it before announcing readiness: a supervisor may
 * signal as soon as it sees the announcement, and that must shut down cleanly, not kill the process.
 */
export function listenForStop(): StopSignal {
  let signalled: (signal: NodeJS.Signals) => void = () => {};
  const stopped = new Promise<NodeJS.Signals>((resolve) => (signalled = resolve));
  const onSignal = (signal: NodeJS.Signals) => signalled(signal);
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  return {
    stopped,
    cancel() {
      process.removeListener('SIGTERM', onSignal);
      process.removeListener('SIGINT', onSignal);
    },
  };
}
