/**
 * Dirty-bitmap benchmark process: DirtyBitmap.reportAndClear over a whole guest (4 KiB pages) with
 * 1% of the pages dirty, against the floor of copying a bitmap of the same size (Buffer.copy).
 *
 * Two patterns of 1% dirty pages, both seeded: `uniform` (single pages at random: the worst case
 * for a report, since nearly half of the 64-bit words then hold a dirty bit and the clean/dirty
 * branch is a coin toss) and `clustered` (runs of 16 pages, 64 KiB, at random: closer to how guests
 * dirty memory; most words are clean). Before every timed operation the bitmap's SharedArrayBuffer is refilled with
 * the same pattern (not timed), so report and copy start from the same bits and the same caches.
 * Every report's count is checked, and the first report's bits are compared with the pattern.
 *
 * `node dirty.js --reps-small N --reps-large M --rounds R --out <file>`
 * @module
 */
import { DirtyBitmap } from '../../src/native/dirty-bitmap.js';
import { arg, intArg, parseArgs, writeResult } from './common.js';

const args = parseArgs(process.argv.slice(2));
const rounds = intArg(args, 'rounds');
const out = arg(args, 'out');
const PAGE = 4096;
const GIB = 2 ** 30;
const guests = [
  { name: '64 GiB', bytes: 64 * GIB, reps: intArg(args, 'reps-small') },
  { name: '1 TiB', bytes: 1024 * GIB, reps: intArg(args, 'reps-large') },
];

/** xorshift32: a seeded, reproducible page picker. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

/** Pages dirtied together in the clustered pattern. */
const RUN = 16;
const patterns = ['uniform', 'clustered'] as const;

const result: Record<string, { report: number[]; copy: number[]; dirtyPages: number; bitmapBytes: number; dirtyWords: number }> = {};
for (const g of guests) for (const kind of patterns) {
  const pages = g.bytes / PAGE;
  const bitmap = DirtyBitmap.createShared(pages, PAGE);
  const live = new Uint8Array(bitmap.buffer!);
  const pattern = new Uint8Array(live.length);
  const next = rng(0x9e3779b9 ^ pages ^ (kind === 'uniform' ? 0 : 0x5bd1e995));
  const run = kind === 'uniform' ? 1 : RUN;
  for (let i = 0; i < Math.floor(pages / 100 / run); i++) {
    const first = Math.floor((next() / 2 ** 32) * (pages - run));
    for (let p = first; p < first + run; p++) pattern[p >>> 3]! |= 1 << (p & 7);
  }
  const words = new BigUint64Array(pattern.buffer);
  let dirtyWords = 0;
  for (const w of words) if (w !== 0n) dirtyWords++;
  live.set(pattern);
  const dirtyPages = bitmap.count();
  const report = new Uint8Array(DirtyBitmap.reportByteLength(g.bytes, PAGE));
  if (report.length !== live.length) throw new Error('report and bitmap sizes differ');
  const src = Buffer.from(live.buffer, live.byteOffset, live.byteLength);
  const dst = Buffer.from(report.buffer, report.byteOffset, report.byteLength);
  const times = { report: [] as number[], copy: [] as number[] };
  // One untimed pass of each, then check what the report produced.
  if (bitmap.reportAndClear(0, g.bytes, PAGE, report) !== dirtyPages) throw new Error('report count differs from the marked pages');
  if (!Buffer.from(report).equals(Buffer.from(pattern))) throw new Error('report bits differ from the marked pages');
  if (bitmap.count() !== 0) throw new Error('report did not clear the bitmap');
  const per = Math.ceil(g.reps / rounds);
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < per; i++) {
      live.set(pattern);
      let t0 = performance.now();
      const n = bitmap.reportAndClear(0, g.bytes, PAGE, report);
      times.report.push(performance.now() - t0);
      if (n !== dirtyPages) throw new Error(`report counted ${n}, expected ${dirtyPages}`);
      live.set(pattern);
      t0 = performance.now();
      src.copy(dst);
      times.copy.push(performance.now() - t0);
    }
  }
  result[`${g.name} ${kind}`] = { ...times, dirtyPages, bitmapBytes: live.length, dirtyWords };
}
writeResult(out, result);
