/**
 * A simulated vCPU running in its own worker thread, driven with promises from the main thread
 * (where the IOREQ server under test runs its event loop). The worker runs the compiled
 * `vcpu-worker.js`: from the build output next to this module, or, when this module runs from its
 * TypeScript source (tests), from the package's `dist/` (build it first: `npm run pretest`).
 * @module
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { MdevError } from '../../../src/errors.js';
import { packageRoot } from '../../../src/native/binding.js';
import type { SimVcpuDescriptor } from './layout.js';
import type { BufferedWriteOutcome, SimAccess, SimVcpuOptions } from './vcpu.js';
import type { SimVcpuOp, SimVcpuRequest, SimVcpuResponse } from './vcpu-worker.js';

/** The compiled worker entry this module uses. */
export function vcpuWorkerScript(): string {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.js')) return join(here, '..', 'vcpu-worker.js');
  return join(packageRoot(), 'dist', 'adapters', 'xen', 'sim', 'vcpu-worker.js');
}

/** An error the vCPU raised in its thread: `code` is its errno code; `index` the failing batch entry. */
export class SimVcpuError extends Error {
  override name = 'SimVcpuError';
  /** The errno code (`ETIMEDOUT`, `EIO`, ...). */
  readonly code: string;
  /** The argument at fault, when there is one. */
  readonly field?: string;
  /** The index of the failing operation in a batch. */
  readonly index?: number;

  /** Rebuilds the error the vCPU thread reported. */
  constructor(error: { code: string; message: string; field?: string; index?: number }) {
    super(error.message);
    this.code = error.code;
    if (error.field !== undefined) this.field = error.field;
    if (error.index !== undefined) this.index = error.index;
  }
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
}

/** A vCPU in a worker thread. Operations run one after another, in the order called. */
export class SimVcpuThread {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private failure: Error | null = null;

  private constructor(private readonly worker: Worker) {
    worker.on('message', (msg: SimVcpuResponse | { ready: true }) => {
      if ('ready' in msg) return;
      const p = this.pending.get(msg.id);
      if (p === undefined) return;
      this.pending.delete(msg.id);
      if (msg.ok) p.resolve(msg.value);
      else p.reject(new SimVcpuError(msg.error));
    });
    const fail = (error: Error): void => {
      this.failure ??= error;
      for (const p of this.pending.values()) p.reject(error);
      this.pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new MdevError('EPIPE', `the vCPU thread exited (code ${code})`)));
  }

  /**
   * Starts a worker running vCPU `descriptor.index` and waits until it is attached.
   * @throws ENOENT when the compiled worker entry is missing (build first)
   */
  static async start(descriptor: SimVcpuDescriptor, options?: SimVcpuOptions): Promise<SimVcpuThread> {
    const script = vcpuWorkerScript();
    if (!existsSync(script)) throw new MdevError('ENOENT', `${script} is missing: build the package first (npm run pretest)`, 'script');
    const worker = new Worker(script, { workerData: { descriptor, options } });
    await new Promise<void>((resolve, reject) => {
      const onMessage = (msg: unknown): void => {
        if (typeof msg === 'object' && msg !== null && 'ready' in msg) {
          worker.off('error', reject);
          worker.off('message', onMessage);
          resolve();
        }
      };
      worker.on('message', onMessage);
      worker.once('error', reject);
    });
    return new SimVcpuThread(worker);
  }

  /** {@link SimVcpu.access} in the thread. */
  access(access: SimAccess): Promise<bigint> {
    return this.request({ op: ['access', access] }) as Promise<bigint>;
  }

  /** {@link SimVcpu.bufferedWrite} in the thread. */
  bufferedWrite(addr: bigint, size: 1 | 2 | 4 | 8, data: bigint, space: 'mmio' | 'pio' = 'mmio'): Promise<BufferedWriteOutcome> {
    return this.request({ op: ['bufferedWrite', addr, size, data, space] }) as Promise<BufferedWriteOutcome>;
  }

  /** {@link SimVcpu.ramRead} in the thread. */
  ramRead(gpa: bigint | number, length: number): Promise<Uint8Array> {
    return this.request({ op: ['ramRead', gpa, length] }) as Promise<Uint8Array>;
  }

  /** {@link SimVcpu.ramWrite} in the thread. */
  ramWrite(gpa: bigint | number, bytes: Uint8Array): Promise<void> {
    return this.request({ op: ['ramWrite', gpa, bytes] }) as Promise<void>;
  }

  /** {@link SimVcpu.waitForInterrupt} in the thread. */
  waitForInterrupt(timeoutMs: number): Promise<boolean> {
    return this.request({ op: ['waitForInterrupt', timeoutMs] }) as Promise<boolean>;
  }

  /**
   * Runs operations back to back in the thread, without a round trip to this thread in between.
   * @returns their results, in order
   * @throws SimVcpuError of the first failing operation (its `index` says which)
   */
  batch(ops: readonly SimVcpuOp[]): Promise<unknown[]> {
    return this.request({ batch: ops }) as Promise<unknown[]>;
  }

  /** Closes the vCPU and waits for the thread to end. */
  async close(): Promise<void> {
    if (this.failure !== null) return;
    const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    await this.request({ close: true });
    await exited;
  }

  /** Stops the thread at once (a vCPU blocked in an ioreq stops when its wait returns). */
  async terminate(): Promise<void> {
    await this.worker.terminate();
  }

  private request(body: { op: SimVcpuOp } | { batch: readonly SimVcpuOp[] } | { close: true }): Promise<unknown> {
    if (this.failure !== null) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, ...body } as SimVcpuRequest);
    });
  }
}
