/**
 * Worker-thread entry that runs one {@link SimVcpu} and performs the operations posted to it, in
 * order, answering each with its result. The vCPU blocks this thread while an ioreq is in flight,
 * which is the point: the IOREQ server under test keeps the main thread's event loop.
 *
 * `workerData`: `{ descriptor: SimVcpuDescriptor, options?: SimVcpuOptions }`. The worker posts
 * `{ ready: true }` once attached. Requests are {@link SimVcpuRequest}s, answers
 * {@link SimVcpuResponse}s; a `close` request closes the vCPU and ends the worker.
 * Use it through {@link SimVcpuThread}.
 * @module
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { SimVcpuDescriptor } from './layout.js';
import { SimVcpu, type SimAccess, type SimVcpuOptions } from './vcpu.js';

/** One vCPU operation, as a tuple of its method name and arguments. */
export type SimVcpuOp =
  | readonly ['access', SimAccess]
  | readonly ['bufferedWrite', bigint, 1 | 2 | 4 | 8, bigint, ('mmio' | 'pio')?]
  | readonly ['ramRead', bigint | number, number]
  | readonly ['ramWrite', bigint | number, Uint8Array]
  | readonly ['waitForInterrupt', number];

/** A request to the worker. `batch` runs its operations back to back and stops at the first failure. */
export type SimVcpuRequest =
  | { readonly id: number; readonly op: SimVcpuOp }
  | { readonly id: number; readonly batch: readonly SimVcpuOp[] }
  | { readonly id: number; readonly close: true };

/** The worker's answer to request `id`. */
export type SimVcpuResponse =
  | { readonly id: number; readonly ok: true; readonly value: unknown }
  | {
      readonly id: number;
      readonly ok: false;
      readonly error: { readonly code: string; readonly message: string; readonly field?: string; readonly index?: number };
    };

/** Runs one operation on the vCPU. */
export function runOp(vcpu: SimVcpu, op: SimVcpuOp): unknown {
  switch (op[0]) {
    case 'access':
      return vcpu.access(op[1]);
    case 'bufferedWrite':
      return vcpu.bufferedWrite(op[1], op[2], op[3], op[4]);
    case 'ramRead':
      return vcpu.ramRead(op[1], op[2]);
    case 'ramWrite':
      vcpu.ramWrite(op[1], op[2]);
      return undefined;
    case 'waitForInterrupt':
      return vcpu.waitForInterrupt(op[1]);
    default:
      throw Object.assign(new Error(`unknown vCPU operation ${String((op as readonly unknown[])[0])}`), { code: 'EINVAL' });
  }
}

function errorOf(e: unknown, index?: number): { code: string; message: string; field?: string; index?: number } {
  const err = e as { code?: unknown; message?: unknown; field?: unknown };
  return {
    code: typeof err.code === 'string' ? err.code : 'EIO',
    message: typeof err.message === 'string' ? err.message : String(e),
    ...(typeof err.field === 'string' ? { field: err.field } : {}),
    ...(index === undefined ? {} : { index }),
  };
}

if (parentPort !== null && workerData !== null && typeof workerData === 'object' && 'descriptor' in workerData) {
  const port = parentPort;
  const data = workerData as { descriptor: SimVcpuDescriptor; options?: SimVcpuOptions };
  const vcpu = new SimVcpu(data.descriptor, data.options);
  port.on('message', (req: SimVcpuRequest) => {
    let response: SimVcpuResponse;
    if ('close' in req) {
      vcpu.close();
      port.postMessage({ id: req.id, ok: true, value: undefined } satisfies SimVcpuResponse);
      port.close();
      return;
    }
    if ('op' in req) {
      try {
        response = { id: req.id, ok: true, value: runOp(vcpu, req.op) };
      } catch (e) {
        response = { id: req.id, ok: false, error: errorOf(e) };
      }
    } else {
      const values: unknown[] = [];
      response = { id: req.id, ok: true, value: values };
      for (let i = 0; i < req.batch.length; i++) {
        try {
          values.push(runOp(vcpu, req.batch[i]!));
        } catch (e) {
          response = { id: req.id, ok: false, error: errorOf(e, i) };
          break;
        }
      }
    }
    port.postMessage(response);
  });
  port.postMessage({ ready: true });
}
