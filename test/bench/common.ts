/**
 * Helpers shared by the benchmark child processes: argument parsing, result files.
 * @module
 */
import { writeFileSync } from 'node:fs';
import { waitReadable } from '../../src/native/poll.js';
import { recvMsg, sendMsg } from '../../src/native/socket.js';

/** `--key value` pairs of argv (a flag without a value reads as 'true'). */
export function parseArgs(argv: readonly string[]): Map<string, string> {
  const m = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const next = argv[i + 1];
    if (next === undefined || next.startsWith('--')) m.set(a.slice(2), 'true');
    else {
      m.set(a.slice(2), next);
      i++;
    }
  }
  return m;
}

/** A required argument. */
export function arg(m: Map<string, string>, key: string): string {
  const v = m.get(key);
  if (v === undefined) throw new Error(`--${key} is required`);
  return v;
}

/** A required integer argument. */
export function intArg(m: Map<string, string>, key: string): number {
  const v = Number(arg(m, key));
  if (!Number.isInteger(v) || v < 0) throw new Error(`--${key} must be a non-negative integer`);
  return v;
}

/** Writes a child's result for the runner to read. */
export function writeResult(path: string, result: unknown): void {
  writeFileSync(path, JSON.stringify(result));
}

/** Milliseconds → microseconds, rounded to ns. */
export function us(ms: number): number {
  return Math.round(ms * 1e6) / 1e3;
}

/** VmRSS of this process in KiB. */
export function selfRssKiB(): number {
  return Math.round(process.memoryUsage.rss() / 1024);
}

const WAIT_MS = 10_000;

/**
 * Reads exactly `buf.length` bytes from a non-blocking stream socket, waiting with poll(2) when
 * nothing is queued. Returns false on EOF before the first byte.
 */
export function readFull(fd: number, buf: Uint8Array): boolean {
  let got = 0;
  while (got < buf.length) {
    if (!waitReadable(fd, WAIT_MS)) throw new Error('peer silent for 10 s');
    const r = recvMsg(fd, buf.subarray(got), 0);
    if (r === null) continue;
    if (r.bytes === 0) {
      if (got === 0) return false;
      throw new Error('EOF in the middle of a message');
    }
    got += r.bytes;
  }
  return true;
}

/** Sends a small message in one call (it always fits an idle socket's buffer). */
export function sendFull(fd: number, buf: Uint8Array): void {
  const n = sendMsg(fd, buf);
  if (n !== buf.length) throw new Error(`short send (${n} of ${buf.length} bytes)`);
}
