/**
 * Worker thread of the Xen-path benchmark (see xen.ts): the guest's vCPU. It reports its thread id
 * (for per-thread pinning), then runs the phases the main thread asks for, timing each access:
 * - `sim`: {@link SimVcpu.access} reads through the simulator into the real IoreqServer and native
 *   engine (the main thread's event loop serves them);
 * - `floor`: the raw mechanism under it — write a word into a shared page, signal an eventfd, wait
 *   (poll) for the reply eventfd, read the answer — against the main thread doing the mirror image.
 * @module
 */
import { readlinkSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { eventfdRead, eventfdWrite } from '../../src/native/fd.js';
import { waitReadable } from '../../src/native/poll.js';
import { SimVcpu, type SimAccess } from '../../adapters/xen/sim/vcpu.js';
import type { SimVcpuDescriptor } from '../../adapters/xen/sim/layout.js';
import { us } from './common.js';

/** What the main thread hands over. */
export interface XenWorkerData {
  descriptor: SimVcpuDescriptor;
  /** The floor's shared page: word 0 request, word 1 reply. */
  page: SharedArrayBuffer;
  /** Floor eventfds: guest→server and server→guest. */
  g2s: number;
  s2g: number;
}

/** A phase to run. */
export type XenPhase =
  | { cmd: 'sim'; access: SimAccess; expect: bigint; iters: number; warmup: number; busy?: boolean }
  | { cmd: 'floor'; iters: number; warmup: number; busy?: boolean }
  | { cmd: 'exit' };

const WAIT_MS = 10_000;

if (parentPort !== null) {
  const port = parentPort;
  const data = workerData as XenWorkerData;
  const vcpu = new SimVcpu(data.descriptor, { timeoutMs: WAIT_MS });
  // The same vCPU, spinning on its slot instead of sleeping (used one at a time, never together).
  const spinning = new SimVcpu(data.descriptor, { timeoutMs: WAIT_MS, busyPoll: true });
  const words = new Int32Array(data.page);

  const sim = (p: Extract<XenPhase, { cmd: 'sim' }>): Float64Array => {
    const samples = new Float64Array(p.iters);
    for (let i = 0; i < p.warmup + p.iters; i++) {
      const t0 = performance.now();
      const v = (p.busy ? spinning : vcpu).access(p.access);
      const t1 = performance.now();
      if (v !== p.expect) throw new Error(`vCPU read 0x${v.toString(16)}, expected 0x${p.expect.toString(16)}`);
      if (i >= p.warmup) samples[i - p.warmup] = us(t1 - t0);
    }
    return samples;
  };

  const floor = (p: Extract<XenPhase, { cmd: 'floor' }>): Float64Array => {
    const samples = new Float64Array(p.iters);
    for (let i = 0; i < p.warmup + p.iters; i++) {
      const t0 = performance.now();
      Atomics.store(words, 0, i + 1);
      if (p.busy) {
        // Busy floor: both sides spin on the shared page, no wakeups at all.
        const deadline = t0 + WAIT_MS;
        while (Atomics.load(words, 1) !== i + 1) if (performance.now() > deadline) throw new Error('busy floor: main thread silent for 10 s');
      } else {
        eventfdWrite(data.g2s);
        for (;;) {
          if (!waitReadable(data.s2g, WAIT_MS)) throw new Error('floor: main thread silent for 10 s');
          if (eventfdRead(data.s2g) !== null) break;
        }
      }
      const v = Atomics.load(words, 1);
      const t1 = performance.now();
      if (v !== i + 1) throw new Error(`floor: reply ${v} to request ${i}`);
      if (i >= p.warmup) samples[i - p.warmup] = us(t1 - t0);
    }
    return samples;
  };

  port.on('message', (p: XenPhase) => {
    if (p.cmd === 'exit') {
      vcpu.close();
      spinning.close();
      port.close();
      return;
    }
    try {
      const samples = p.cmd === 'sim' ? sim(p) : floor(p);
      port.postMessage({ ok: true, samples }, [samples.buffer as ArrayBuffer]);
    } catch (e) {
      port.postMessage({ ok: false, error: (e as Error).message });
    }
  });
  // "<pid>/task/<tid>": the kernel's id of this thread, for taskset -p.
  const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
  port.postMessage({ ready: true, tid });
}
