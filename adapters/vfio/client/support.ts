/**
 * Internals of the vfio-user client: limits, argument checks, value encoding and errno names.
 * @internal
 * @module
 */
import { MdevError, checkInt, describe } from '../../../src/errors.js';
import { closeFd } from '../../../src/native/fd.js';
import { MAX_FDS_PER_MESSAGE } from '../../../src/native/socket.js';
import { constants as osConstants } from 'node:os';
import { CAPABILITY_DEFAULTS, COMMAND_NAMES } from '../protocol.js';
import { AccessSize } from './types.js';

// ---------------------------------------------------------------------------------------------
// Internals
// ---------------------------------------------------------------------------------------------

export const U64_MAX = (1n << 64n) - 1n;
export const DEFAULT_TIMEOUT_MS = 10_000;
export const DEFAULT_MAX_MSG_FDS = 16;
export const PROPOSED_MAX_DMA_MAPS = CAPABILITY_DEFAULTS.maxDmaMaps;
export const PROPOSED_PGSIZES = 4096;
/** The JSON of a VERSION reply is capped: nothing legitimate comes near it. */
export const MAX_VERSION_JSON = 64 * 1024;
/** Replies whose argsz asks for more than this are refused rather than retried. */
export const MAX_RETRY_ARGSZ = 64 * 1024 * 1024;
/** argsz-driven retries per call (QEMU retries once; a second growth is tolerated). */
export const MAX_ARGSZ_ATTEMPTS = 3;
/** Capability-chain entries walked before the chain is declared a loop. */
export const MAX_CAPS = 64;
export const SPEC_KEYS = new Set(['max_msg_fds', 'max_data_xfer_size', 'max_dma_maps', 'pgsizes', 'twin_socket', 'write_multiple']);
export const EMPTY = new Uint8Array(0);
export const utf8 = new TextDecoder('utf-8', { fatal: true });
export const encoder = new TextEncoder();

export const ERRNO_NAMES: ReadonlyMap<number, string> = new Map(Object.entries(osConstants.errno as Record<string, number>).map(([k, v]) => [v, k]));

export function errnoName(errno: number): string | undefined {
  return ERRNO_NAMES.get(errno);
}

export function commandName(command: number): string {
  return COMMAND_NAMES[command] ?? `command ${command}`;
}

export function protoError(field: string, message: string): MdevError {
  return new MdevError('EPROTO', message, field);
}

export function closeAll(fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      closeFd(fd);
    } catch {
      // Already gone: nothing left to release.
    }
  }
}

export function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

export function toU64(field: string, value: unknown): bigint {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new MdevError('EINVAL', `must be a safe integer or a bigint, got ${describe(value)}`, field);
    value = BigInt(value);
  }
  if (typeof value !== 'bigint') throw new MdevError('EINVAL', `must be a number or bigint, got ${describe(value)}`, field);
  if (value < 0n || value > U64_MAX) throw new MdevError('ERANGE', `must be in [0, 2^64 - 1], got ${value}`, field);
  return value;
}

export function checkU32(field: string, value: unknown): number {
  return checkInt(field, value, 0, 0xffffffff);
}

export function checkBytes(field: string, value: unknown): Uint8Array {
  if (!(value instanceof Uint8Array)) throw new MdevError('EINVAL', `must be a Uint8Array, got ${describe(value)}`, field);
  return value;
}

export function checkFds(field: string, value: unknown): number[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new MdevError('EINVAL', `must be an array of fds, got ${describe(value)}`, field);
  if (value.length > MAX_FDS_PER_MESSAGE) throw new MdevError('E2BIG', `at most ${MAX_FDS_PER_MESSAGE} fds fit in one message`, field);
  return value.map((fd, i) => checkInt(`${field}[${i}]`, fd, 0, 0x7fffffff));
}

export function checkAccessSize(field: string, size: unknown, allowed: readonly number[]): AccessSize {
  if (!allowed.includes(size as number)) throw new MdevError('EINVAL', `must be one of ${allowed.join(', ')}, got ${describe(size)}`, field);
  return size as AccessSize;
}

/** Little-endian bytes of an access value, range-checked for its size. */
export function valueBytes(field: string, value: unknown, size: AccessSize): Uint8Array {
  let v: bigint;
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new MdevError('EINVAL', `must be an integer, got ${describe(value)}`, field);
    v = BigInt(value);
  } else if (typeof value === 'bigint') {
    v = value;
  } else {
    throw new MdevError('EINVAL', `must be a number (or a bigint), got ${describe(value)}`, field);
  }
  if (v < 0n || v >= 1n << BigInt(size * 8)) throw new MdevError('ERANGE', `must fit in ${size} bytes unsigned, got ${v}`, field);
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

export function accessValue(bytes: Uint8Array, size: AccessSize): number | bigint {
  const dv = view(bytes);
  switch (size) {
    case 1:
      return dv.getUint8(0);
    case 2:
      return dv.getUint16(0, true);
    case 4:
      return dv.getUint32(0, true);
    default:
      return dv.getBigUint64(0, true);
  }
}

export function optionsOf(options: unknown): Record<string, unknown> {
  if (options === undefined) return {};
  if (typeof options !== 'object' || options === null || Array.isArray(options)) throw new MdevError('EINVAL', `must be an object, got ${describe(options)}`, 'options');
  return options as Record<string, unknown>;
}

export function optBool(o: Record<string, unknown>, key: string, dflt: boolean): boolean {
  const v = o[key];
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw new MdevError('EINVAL', `must be a boolean, got ${describe(v)}`, `options.${key}`);
  return v;
}

export function checkTimeout(field: string, v: unknown): number {
  return checkInt(field, v, -1, 0x7fffffff);
}

/** A message as assembled by a {@link Channel}. */
