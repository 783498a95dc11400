/** Shared helpers for the native tests. */
import { spawn, type StdioOptions } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';

/** An fd number no process can have open (beyond any RLIMIT_NOFILE), so every syscall says EBADF. */
export const NEVER_OPEN_FD = 2 ** 30;

const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;

/** The open-file flags of one of our fds, from /proc/self/fdinfo (which includes O_CLOEXEC). */
export function fdFlags(fd: number): { nonBlocking: boolean; cloexec: boolean } {
  const info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  const match = /^flags:\s+([0-7]+)$/m.exec(info);
  if (match === null) throw new Error(`no flags line in fdinfo of ${fd}`);
  const flags = parseInt(match[1]!, 8);
  return { nonBlocking: (flags & O_NONBLOCK) !== 0, cloexec: (flags & O_CLOEXEC) !== 0 };
}

/** Whether `fd` is open in this process. */
export function isOpen(fd: number): boolean {
  try {
    readFileSync(`/proc/self/fdinfo/${fd}`);
    return true;
  } catch {
    return false;
  }
}

/** The error `fn` throws (failing the test if it returns). */
export function thrown(fn: () => unknown): Error & { code?: string; errno?: number; syscall?: string; field?: string } {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(Error);
    return e as Error & { code?: string };
  }
  throw new Error('expected the call to throw');
}

/** Asserts `fn` throws an errno error from `syscall` with `code`. */
export function expectErrno(fn: () => unknown, code: string, syscall: string): void {
  const e = thrown(fn);
  expect({ code: e.code, syscall: e.syscall }).toEqual({ code, syscall });
  expect(typeof e.errno).toBe('number');
}

/** Asserts `fn` throws an argument error of `kind` naming `field`. */
export function expectArgError(fn: () => unknown, kind: 'TypeError' | 'RangeError' | string, field: string): void {
  const e = thrown(fn);
  if (kind === 'TypeError') {
    expect(e).toBeInstanceOf(TypeError);
    expect(e.code).toBe('ERR_INVALID_ARG_TYPE');
  } else if (kind === 'RangeError') {
    expect(e).toBeInstanceOf(RangeError);
    expect(e.code).toBe('ERR_OUT_OF_RANGE');
  } else {
    expect(e.code).toBe(kind);
  }
  expect(e.field).toBe(field);
}

/** Absolute path of a fixture script in test/fixtures. */
export function fixture(name: string): string {
  return fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url));
}

/** What a finished child process produced. */
export interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** A running child process: its exit as a promise, and each stdout line as it arrives. */
export interface RunningChild {
  exited: Promise<ChildResult>;
  /** Resolves with the first stdout line equal to `line`. */
  line(line: string): Promise<void>;
}

/** Runs `node [nodeArgs] fixture args` with the given stdio, collecting its output. */
export function runFixture(name: string, args: string[] = [], options: { nodeArgs?: string[]; stdio?: StdioOptions } = {}): RunningChild {
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), fixture(name), ...args], {
    stdio: options.stdio ?? ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  const waiters: Array<{ line: string; resolve: () => void }> = [];
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
    const lines = stdout.split('\n');
    for (const waiter of [...waiters]) {
      if (lines.includes(waiter.line)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve();
      }
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<ChildResult>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return {
    exited,
    line(line: string): Promise<void> {
      if (stdout.split('\n').includes(line)) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        waiters.push({ line, resolve });
        void exited.then((r) => reject(new Error(`child exited (${r.code}) before printing ${line}: ${r.stdout}${r.stderr}`)));
      });
    },
  };
}
