/**
 * Child processes of the benchmark runner: spawned pinned to a CPU with `taskset` (when it works
 * here), tracked, and killed on every way out of the runner — normal exit, an error, a signal.
 * Temporary directories (sockets, sample files) are removed the same way.
 * @module
 */
import { spawn, spawnSync, type ChildProcess, type StdioOptions } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../../src/native/binding.js';

const live = new Set<ChildProcess>();
const dirs = new Set<string>();

/** Kills every child still running (SIGKILL) and removes the registered directories. Synchronous. */
export function cleanupAll(): void {
  for (const p of live) {
    try {
      p.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  live.clear();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs.clear();
}

let installed = false;
/** Installs the exit and signal handlers that call {@link cleanupAll}. */
export function installCleanup(): void {
  if (installed) return;
  installed = true;
  process.on('exit', cleanupAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      process.stderr.write(`bench: ${sig}: stopping children\n`);
      cleanupAll();
      process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
    });
  }
}

/** Registers a directory to remove on exit (and by {@link releaseDir}). */
export function trackDir(dir: string): string {
  dirs.add(dir);
  return dir;
}

/** Removes a registered directory now. */
export function releaseDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  dirs.delete(dir);
}

/** Whether `taskset -c <cpu>` works here for every CPU in `cpus`. */
export function canPin(cpus: readonly number[]): boolean {
  return cpus.every((c) => {
    const r = spawnSync('taskset', ['-c', String(c), 'true'], { stdio: 'ignore' });
    return r.status === 0;
  });
}

/** Where each end of a measurement runs: a CPU number, or null (unpinned). */
export interface Pin {
  /** The serving side (server process, or the main thread of a two-thread process). */
  server: number | null;
  /** The requesting side (client process, or the vCPU / worker thread). */
  client: number | null;
}

/** Path of a compiled bench script (dist/test/bench/<name>.js). */
export function benchScript(name: string): string {
  return join(packageRoot(), 'dist', 'test', 'bench', `${name}.js`);
}

/** Spawns `node <args>` pinned to `cpu` (taskset execs node, so the pid is node's), tracked. */
export function spawnNode(cpu: number | null, args: readonly string[], stdio: StdioOptions = ['ignore', 'pipe', 'pipe']): ChildProcess {
  const [cmd, argv] = cpu === null ? [process.execPath, [...args]] : ['taskset', ['-c', String(cpu), process.execPath, ...args]];
  const p = spawn(cmd, argv, { stdio });
  live.add(p);
  p.once('exit', () => live.delete(p));
  p.once('error', () => live.delete(p));
  return p;
}

/** Spawns a native program pinned to `cpu` (taskset execs it, so the pid is the program's), tracked. */
export function spawnPinned(cpu: number | null, file: string, args: readonly string[], stdio: StdioOptions = ['ignore', 'pipe', 'pipe']): ChildProcess {
  const [cmd, argv] = cpu === null ? [file, [...args]] : ['taskset', ['-c', String(cpu), file, ...args]];
  const p = spawn(cmd, argv, { stdio });
  live.add(p);
  p.once('exit', () => live.delete(p));
  p.once('error', () => live.delete(p));
  return p;
}

/** Everything a finished child wrote. */
export interface ChildOutput {
  stdout: string;
  stderr: string;
}

/** Collects a child's output; resolves when it exits 0, rejects otherwise or after `timeoutMs` (killing it). */
export function finished(p: ChildProcess, what: string, timeoutMs: number): Promise<ChildOutput> {
  let stdout = '';
  let stderr = '';
  p.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  p.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`${what}: no result within ${timeoutMs} ms\n${stderr}`));
    }, timeoutMs);
    p.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    p.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve({ stdout, stderr });
      else reject(new Error(`${what} failed (${signal ?? `exit ${code}`}):\n${stderr}${stdout}`));
    });
  });
}

/** A running `mdevkit serve` process. */
export interface Server {
  proc: ChildProcess;
  paths: string[];
  /** SIGTERM, then SIGKILL if it has not gone after 3 s; resolves once it has exited. */
  stop(): Promise<void>;
}

/** Starts `mdevkit serve edu --vfio-user <path>…` pinned to `cpu` and waits until every socket is served. */
export async function startServe(cpu: number | null, paths: readonly string[], timeoutMs = 20_000, extraArgs: readonly string[] = []): Promise<Server> {
  const cli = join(packageRoot(), 'dist', 'cli', 'main.js');
  const proc = spawnNode(cpu, [cli, 'serve', 'edu', ...paths.flatMap((p) => ['--vfio-user', p]), ...extraArgs]);
  let out = '';
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<void>((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) resolve();
    else proc.once('exit', () => resolve());
  });
  const stop = async (): Promise<void> => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  };
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`mdevkit serve did not come up within ${timeoutMs} ms: ${err}`)), timeoutMs);
      proc.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (paths.every((p) => out.includes(`socket ${p}\n`))) {
          clearTimeout(timer);
          resolve();
        }
      });
      proc.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`mdevkit serve exited (${code}) before serving: ${err}`));
      });
    });
  } catch (e) {
    await stop();
    throw e;
  }
  return { proc, paths: [...paths], stop };
}

/** CPU time (user + system) a process has used, in ns, from /proc/<pid>/stat. */
export function cpuTimeNs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // utime and stime are fields 14 and 15 of stat(5), in clock ticks (100 per second on Linux).
  return (Number(fields[11]) + Number(fields[12])) * 1e7;
}

/** VmRSS of a process in KiB, from /proc/<pid>/status. */
export function vmRssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}
