/** Small helpers shared by tests: little-endian integer access through byte accessors. */
import type { RegionAccessor } from '../src/regions.js';

export function readInt(acc: RegionAccessor, offset: number, size: number): number {
  const b = new Uint8Array(size);
  acc.read(offset, b);
  let v = 0;
  for (let i = size - 1; i >= 0; i--) v = v * 256 + b[i]!;
  return v;
}

export function readBig(acc: RegionAccessor, offset: number, size: number): bigint {
  const b = new Uint8Array(size);
  acc.read(offset, b);
  let v = 0n;
  for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
  return v;
}

export function writeInt(acc: RegionAccessor, offset: number, size: number, value: number | bigint): void {
  const b = new Uint8Array(size);
  let v = BigInt.asUintN(size * 8, BigInt(value));
  for (let i = 0; i < size; i++) {
    b[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  acc.write(offset, b);
}

/**
 * How much slower than a plain run this one may be: npm run test:asan sets MDEVKIT_TEST_TIME_SCALE
 * (sanitized native code, often on a loaded machine). Time limits that guard against hangs scale
 * with it; what a test asserts does not.
 */
export const timeScale = Math.max(1, Number(process.env['MDEVKIT_TEST_TIME_SCALE'] ?? 1) || 1);
