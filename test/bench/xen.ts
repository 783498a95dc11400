/**
 * The Xen-path benchmark process: a simulated guest (SimHypervisor) whose vCPU runs in a worker
 * thread, served by the real IoreqServer and native engine on this process's main thread — and,
 * in the same process and placement, the floor: a raw shared-page + eventfd ping-pong between the
 * worker and the main thread.
 *
 * `node xen.js --iters N --warmup W --out <file> [--split]`
 * Three paths: the floor, MMIO reads of edu's ID (native register path) and config reads (JS
 * path). Each is warmed up, then they take turns in blocks of 1000, so slow drifts of the machine
 * hit all three alike. With `--split` the main thread is
 * pinned to CPU 0 and the vCPU thread to CPU 1 (taskset -p per thread); without it the runner has
 * already pinned the whole process (or left it unpinned).
 * @module
 */
import { spawnSync } from 'node:child_process';
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

const BAR = 0xfe000000n;
const PCI_ADDR = { segment: 0, bus: 0, device: 5, fn: 0 };
const SBDF = pciSbdf(PCI_ADDR.segment, PCI_ADDR.bus, PCI_ADDR.device, PCI_ADDR.fn);
const WAIT_MS = 10_000;
const BLOCK = 1000;

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
    pinThread(process.pid, 0);
    pinThread(ready['tid'] as number, 1);
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
  const stats = server.engineStats();
  writeResult(out, { ...result, engine: stats });
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
