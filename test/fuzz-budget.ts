/**
 * fast-check parameters for the property tests at the JS boundaries, which `npm run fuzz` also
 * runs as fuzzers (native/fuzz/run.mjs). In an ordinary test run a property uses its own
 * `numRuns`. Under the fuzz runner (MDEVKIT_FUZZ_MS set) it runs until that time is spent (or
 * MDEVKIT_FUZZ_RUNS runs are done), with a fresh seed, and appends what it did to the report file
 * MDEVKIT_FUZZ_REPORT: one JSON line `{ name, runs, ms, failed }`.
 */
import { appendFileSync } from 'node:fs';
import fc from 'fast-check';

/** How long a run in flight when the budget ends may take to finish. */
const WIND_DOWN_MS = 2000;

/** Whether this process runs under the fuzz runner. */
export const FUZZING = Number(process.env['MDEVKIT_FUZZ_MS'] ?? 0) > 0;

/** How long a fuzzing test may take: its budget and a minute to wind down. */
export function fuzzTimeout(normalMs: number): number {
  return FUZZING ? Number(process.env['MDEVKIT_FUZZ_MS']) + 60_000 : normalMs;
}

/**
 * Parameters for `fc.assert` of the property `name`: `normal` in a test run; under the fuzz
 * runner, as many runs as fit its time budget, reported by name.
 */
export function fuzzParams<T>(name: string, normal: fc.Parameters<T>): fc.Parameters<T> {
  if (!FUZZING) return normal;
  const ms = Number(process.env['MDEVKIT_FUZZ_MS']);
  const runs = Number(process.env['MDEVKIT_FUZZ_RUNS'] ?? 0);
  const started = Date.now();
  const report = (numRuns: number, failed: boolean): void => {
    const path = process.env['MDEVKIT_FUZZ_REPORT'];
    if (path) appendFileSync(path, `${JSON.stringify({ name, runs: numRuns, ms: Date.now() - started, failed })}\n`);
  };
  return {
    ...normal,
    numRuns: runs > 0 ? runs : 2 ** 31 - 1,
    // No run starts after the budget; the loop ends a little later, once the run in flight (an
    // async one waits for a device or a peer) has finished: interrupting it would leave its work
    // (watchers, requests) running into the next property.
    skipAllAfterTimeLimit: ms,
    interruptAfterTimeLimit: ms + WIND_DOWN_MS,
    markInterruptAsFailure: false,
    // Used for async properties too.
    reporter: (details) => {
      report(details.numRuns, details.failed);
      if (details.failed) {
        const cause = details.errorInstance;
        const why = cause instanceof Error ? (cause.stack ?? cause.message) : String(cause);
        throw new Error(`${fc.defaultReportMessage(details)}\n${why}`, { cause });
      }
    },
  };
}
