/**
 * The Xen-path benchmark process: a simulated guest (SimHypervisor) whose vCPU runs in a worker
 * thread, served by the real IoreqServer and native engine on this process's main thread — and,
 * in the same process and placement, the floor: a raw shared-page + eventfd ping-pong between the
 * worker and the main thread.
 *
 * `node xen.js --iters N --warmup W --out <file> [--split] [--cost N] [--syscalls N]`
 * Three paths: the floor, MMIO reads of edu's ID (native register path) and config reads (JS
 * path). Each is warmed up, then they take turns in blocks of 1000, so slow drifts of the machine
 * hit all three alike. `--cost N` then runs N more requests per path and takes the server side's
 * CPU per request (every thread of the process but the vCPU's, from the kernel's per-thread
 * schedstat run time, in ns); `--syscalls N` runs N more under `strace -f` and counts the server
 * side's system calls per request (futex excluded, as in the vfio-user figures). With `--split`
 * every thread but the vCPU's (the main thread, the engine's I/O thread) is pinned to CPU 0 and
 * the vCPU thread to CPU 1 (taskset -p per thread); without it the runner has already pinned the
 * whole process (or left it unpinned).
 * @module
 */
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { EduDevice, EDU, EDU_IDENTITY } from '../../examples/edu/index.js';
import { IoreqServer } from '../../adapters/xen/ioreq-server.js';
import { pciSbdf } from '../../adapters/xen/ioreq-abi.js';
import { SimHypervisor } from '../../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../../adapters/xen/sim/host.js';
import { closeFd, eventfdCreate, eventfdRead, eventfdWrite } from '../../src/native/fd.js';
import { waitReadable } from '../../src/native/poll.js';
import { arg, intArg, parseArgs, writeResult } from './common.js';
import { benchScript } from './procs.js';
import type { XenPhase, XenWorkerData } from './xen-worker.js';

const args = parseArgs(process.argv.slice(2));
const iters = intArg(args, 'iters');
const warmup = intArg(args, 'warmup');
const out = arg(args, 'out');
const split = args.get('split') === 'true';
const costIters = args.has('cost') ? intArg(args, 'cost') : 0;
const syscallIters = args.has('syscalls') ? intArg(args, 'syscalls') : 0;

const BAR = 0xfe000000n;
const PCI_ADDR = { segment: 0, bus: 0, device: 5, fn: 0 };
const SBDF = pciSbdf(PCI_ADDR.segment, PCI_ADDR.bus, PCI_ADDR.device, PCI_ADDR.fn);
const WAIT_MS = 10_000;
const BLOCK = 1000;

/** Run time on a CPU of every thread of this process but `except`, in ns (/proc/<pid>/task/<tid>/schedstat). */
function serverCpuNs(except: number): number {
  let total = 0;
  for (const tid of readdirSync('/proc/self/task')) {
    if (Number(tid) === except) continue;
    try {
      total += Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // a thread that ended between the listing and the read
    }
  }
  return total;
}

/** The tracer of a thread of this process (0: none), from /proc/self/task/<tid>/status. */
function tracerOf(tid: number): number {
  const m = /^TracerPid:\s+(\d+)$/m.exec(readFileSync(`/proc/self/task/${tid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

/**
 * Traces this process's threads with `strace -f` while `body` runs; returns the system calls of
 * every thread but `except` (futex excluded: Node's idle worker pool), by name.
 */
async function countSyscalls(except: number, body: () => Promise<void>): Promise<Record<string, number>> {
  const file = join(tmpdir(), `mdevkit-xen-strace-${process.pid}.txt`);
  const tracer = spawn('strace', ['-f', '-qq', '-p', String(process.pid), '-o', file], { stdio: 'ignore' });
  try {
    // strace attaches to each thread in turn: wait until it traces both sides.
    const deadline = performance.now() + WAIT_MS;
    while (tracerOf(process.pid) === 0 || tracerOf(except) === 0) {
      if (performance.now() > deadline || tracer.exitCode !== null) throw new Error('strace did not attach within 10 s');
      await new Promise((r) => setImmediate(r));
    }
    await body();
  } finally {
    const done = new Promise((r) => tracer.once('exit', r));
    tracer.kill('SIGINT');
    await done;
  }
  const counts: Record<string, number> = {};
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    // "<tid> name(args) = ret", or "<tid> name(args <unfinished ...>" then "<tid> <... name resumed>…"
    const m = /^(\d+)\s+(\w+)\(/.exec(line);
    if (!m || Number(m[1]) === except || m[2] === 'futex') continue;
    counts[m[2]!] = (counts[m[2]!] ?? 0) + 1;
  }
  rmSync(file, { force: true });
  return counts;
}

function pinThread(tid: number, cpu: number): void {
  const r = spawnSync('taskset', ['-p', '-c', String(cpu), String(tid)], { stdio: 'ignore' });
  if (r.status !== 0) throw new Error(`taskset -p -c ${cpu} ${tid} failed`);
}

const hv = new SimHypervisor({ nrVcpus: 1, ramBytes: 16 << 20, vcpuTimeoutMs: WAIT_MS });
const host = new SimXenHost(hv);
const server = new IoreqServer(new EduDevice(), host, { pci: PCI_ADDR, fixedBars: { 0: BAR } });
const page = new SharedArrayBuffer(4096);
const words = new Int32Array(page);
const g2s = eventfdCreate(0, { nonBlocking: true });
const s2g = eventfdCreate(0, { nonBlocking: true });
let worker: Worker | null = null;
try {
  server.start();
  const workerData: XenWorkerData = { descriptor: hv.vcpuDescriptor(0), page, g2s, s2g };
  worker = new Worker(benchScript('xen-worker'), { workerData });
  const w = worker;
  const failed = new Promise<never>((_, reject) => {
    w.once('error', reject);
    w.once('exit', (code) => reject(new Error(`vCPU thread exited (${code})`)));
  });
  failed.catch(() => {}); // observed through the races below; the final exit is expected
  const next = (): Promise<Record<string, unknown>> => Promise.race([new Promise<Record<string, unknown>>((resolve) => w.once('message', resolve)), failed]);
  const ready = await next();
  if (split) {
    // The serving side is every thread but the vCPU's: the main thread, the engine's I/O thread.
    const vcpuTid = ready['tid'] as number;
    for (const tid of readdirSync('/proc/self/task').map(Number)) if (tid !== vcpuTid) pinThread(tid, 0);
    pinThread(vcpuTid, 1);
  }
  const run = async (phase: XenPhase, serveFloor: boolean): Promise<Float64Array> => {
    const reply = next();
    w.postMessage(phase);
    if (serveFloor && phase.cmd === 'floor' && phase.busy) {
      // The main thread's half of the busy floor: spin on the request word, answer at once.
      for (let i = 0; i < phase.warmup + phase.iters; i++) {
        const deadline = performance.now() + WAIT_MS;
        while (Atomics.load(words, 0) !== i + 1) if (performance.now() > deadline) throw new Error('busy floor: vCPU thread silent for 10 s');
        Atomics.store(words, 1, i + 1);
      }
    } else if (serveFloor && phase.cmd === 'floor') {
      // The main thread's half of the floor, blocking like the vCPU's.
      for (let i = 0; i < phase.warmup + phase.iters; i++) {
        for (;;) {
          if (!waitReadable(g2s, WAIT_MS)) throw new Error('floor: vCPU thread silent for 10 s');
          if (eventfdRead(g2s) !== null) break;
        }
        Atomics.store(words, 1, Atomics.load(words, 0));
        eventfdWrite(s2g);
      }
    }
    if (phase.cmd === 'sim' && phase.busy) server.setBusyPoll(true);
    const r = await reply;
    if (phase.cmd === 'sim' && phase.busy) server.setBusyPoll(false);
    if (r['ok'] !== true) throw new Error(String(r['error']));
    return r['samples'] as Float64Array;
  };
  const cfg = { space: 'pci' as const, addr: BigInt(SBDF) << 32n, size: 4 as const, dir: 'read' as const };
  const phases: Record<string, (n: number, w: number) => XenPhase> = {
    floor: (n: number, w: number): XenPhase => ({ cmd: 'floor', iters: n, warmup: w }),
    native: (n: number, w: number): XenPhase => ({ cmd: 'sim', access: { space: 'mmio', addr: BAR + BigInt(EDU.ID), size: 4, dir: 'read' }, expect: BigInt(EDU.ID_VALUE), iters: n, warmup: w }),
    js: (n: number, w: number): XenPhase => ({ cmd: 'sim', access: cfg, expect: BigInt((EDU_IDENTITY.deviceId << 16) | EDU_IDENTITY.vendorId), iters: n, warmup: w }),
  };
  // Busy polling only makes sense with the two sides on different CPUs: on one CPU each spinner
  // waits for the other's time slice to end.
  if (split) {
    phases['busyFloor'] = (n, w) => ({ cmd: 'floor', iters: n, warmup: w, busy: true });
    phases['busy'] = (n, w) => ({ ...(phases['native']!(n, w) as Extract<XenPhase, { cmd: 'sim' }>), busy: true });
  }
  const result: Record<string, number[]> = Object.fromEntries(Object.keys(phases).map((k) => [k, []]));
  // Warm every path up, then alternate blocks so that drifts of the machine hit all paths alike.
  const isFloor = (name: string) => name === 'floor' || name === 'busyFloor';
  for (const [name, phase] of Object.entries(phases)) await run(phase(0, warmup), isFloor(name));
  for (let done = 0; done < iters; done += BLOCK) {
    const n = Math.min(BLOCK, iters - done);
    for (const [name, phase] of Object.entries(phases)) result[name]!.push(...(await run(phase(n, 0), isFloor(name))));
  }
  // Server-side cost per request: CPU (schedstat) and, under strace, system calls.
  const vcpuTid = ready['tid'] as number;
  const cost: Record<string, { cpuNs?: number; syscalls?: Record<string, number>; n: number }> = {};
  for (const name of ['floor', 'native', 'js']) {
    const entry: { cpuNs?: number; syscalls?: Record<string, number>; n: number } = { n: costIters };
    if (costIters > 0) {
      const before = serverCpuNs(vcpuTid);
      await run(phases[name]!(costIters, 0), isFloor(name));
      entry.cpuNs = (serverCpuNs(vcpuTid) - before) / costIters;
    }
    if (syscallIters > 0) {
      entry.syscalls = await countSyscalls(vcpuTid, async () => {
        await run(phases[name]!(syscallIters, 0), isFloor(name));
      });
    }
    cost[name] = entry;
  }
  const stats = server.engineStats();
  writeResult(out, { ...result, engine: stats, cost, syscallIters });
  const exited = new Promise<void>((resolve) => w.once('exit', () => resolve()));
  w.postMessage({ cmd: 'exit' } satisfies XenPhase);
  await exited;
  worker = null;
} finally {
  if (worker !== null) await worker.terminate();
  server.stop();
  host.close();
  hv.close();
  closeFd(g2s);
  closeFd(s2g);
}
