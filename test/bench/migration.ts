/**
 * What tracking mappable RAM (VRAM) costs a migration: the per-page hash scan that finds the pages
 * the guest wrote through the VMM's mapping, the CRC-32 digest of the END record, and a whole
 * pre-copy pass, per GiB of tracked RAM. Not part of `npm run bench`'s table (no floor: these are
 * costs, not ratios); run it alone:
 *
 *   npx tsc -p tsconfig.bench.json && node dist/test/bench/migration.js [--mib 256] [--runs 5]
 * @module
 */
import { crc32 } from 'node:zlib';
import { BochsDisplay } from '../../examples/bochs-display/index.js';
import { MigrationSource, MIGRATION_PAGE_SIZE } from '../../src/migration.js';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

const mib = arg('--mib', 256);
const runs = arg('--runs', 5);
const bytes = mib << 20;
const perGiB = (ms: number) => (ms * (1 << 30)) / bytes;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function time(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

// A Bochs display with `mib` of VRAM (at most 256), every page holding data.
const device = new BochsDisplay({ vramSize: bytes }).realize();
const vram = device.vram.bytes;
for (let i = 0; i < vram.length; i += 8) vram[i] = (i >>> 3) & 0xff;

const rows: [string, number, string][] = [];
const source = new MigrationSource(device);
const firstPass: number[] = [];
{
  const t0 = process.hrtime.bigint();
  let streamed = 0;
  for (;;) {
    const n = source.read(1 << 20).length;
    streamed += n;
    if (n < 1 << 20) break;
  }
  firstPass.push(Number(process.hrtime.bigint() - t0) / 1e6);
  rows.push(['first pre-copy pass (copy + hash every page into the stream)', perGiB(firstPass[0]!), `${(streamed / (1 << 20)).toFixed(0)} MiB streamed`]);
}
const idle: number[] = [];
for (let r = 0; r < runs; r++) idle.push(time(() => source.rescan()));
rows.push(['scan, nothing changed', perGiB(median(idle)), 'ms per GiB']);
const sparse: number[] = [];
for (let r = 0; r < runs; r++) {
  for (let p = r; p < vram.length / MIGRATION_PAGE_SIZE; p += 100) vram[p * MIGRATION_PAGE_SIZE + 1] ^= 0xff; // 1 % of pages
  sparse.push(time(() => source.rescan()));
  while (source.read(1 << 20).length === 1 << 20);
}
rows.push(['scan, 1 % of pages changed', perGiB(median(sparse)), 'ms per GiB']);
const digest: number[] = [];
for (let r = 0; r < runs; r++) digest.push(time(() => crc32(vram)));
rows.push(['END digest (CRC-32 of the region)', perGiB(median(digest)), 'ms per GiB']);
const memcpy: number[] = [];
const copy = new Uint8Array(bytes);
copy.set(vram);
for (let r = 0; r < runs; r++) memcpy.push(time(() => copy.set(vram)));
rows.push(['memcpy of the region (floor)', perGiB(median(memcpy)), 'ms per GiB']);

process.stdout.write(`| tracked RAM ${mib} MiB, median of ${runs} | ms per GiB | note |\n|---|--:|---|\n`);
for (const [what, ms, note] of rows) process.stdout.write(`| ${what} | ${ms.toFixed(0)} | ${note} |\n`);
