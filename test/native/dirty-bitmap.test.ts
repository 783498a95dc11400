import { once } from 'node:events';
import { endianness } from 'node:os';
import { Worker } from 'node:worker_threads';

import fc from 'fast-check';
import { fuzzParams, fuzzTimeout } from '../fuzz-budget.js';
import { describe, expect, it } from 'vitest';

import { DirtyBitmap } from '../../src/native/dirty-bitmap.js';

const HOST_LE = endianness() === 'LE';

/** The first `nbits` bits of a VFIO report (u64 words in host order), one byte (0/1) per bit. */
function reportBits(out: ArrayBufferView, nbits: number): Uint8Array {
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const bits = new Uint8Array(nbits);
  for (let w = 0; w * 64 < nbits; w++) {
    const lo = dv.getUint32(w * 8 + (HOST_LE ? 0 : 4), HOST_LE);
    const hi = dv.getUint32(w * 8 + (HOST_LE ? 4 : 0), HOST_LE);
    if (lo === 0 && hi === 0) continue;
    for (let b = 0; b < 64 && w * 64 + b < nbits; b++) bits[w * 64 + b] = ((b < 32 ? lo >>> b : hi >>> (b - 32)) & 1) as 0 | 1;
  }
  return bits;
}

/** Index of the first difference between two byte arrays of equal length, or -1. */
function firstMismatch(a: Uint8Array, b: Uint8Array): number {
  expect(a.length).toBe(b.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

function errorOf(fn: () => unknown): { name: string; code: unknown; field: unknown } {
  try {
    fn();
  } catch (e) {
    const err = e as Error & { code?: unknown; field?: unknown };
    // MdevError (thrown by the TS layer) and the native errno errors are both plain Errors here.
    const name = e instanceof TypeError ? 'TypeError' : e instanceof RangeError ? 'RangeError' : e instanceof Error ? 'Error' : typeof e;
    return { name, code: err.code, field: err.field };
  }
  throw new Error('expected an error');
}

/** The reference: one boolean per page, every operation spelled out page by page. */
class Model {
  readonly bits: boolean[];

  constructor(
    readonly pageCount: number,
    readonly pageSize: number,
  ) {
    this.bits = new Array<boolean>(pageCount).fill(false);
  }

  markPages(first: number, count: number): void {
    for (let p = first; p < first + count; p++) this.bits[p] = true;
  }

  markBytes(offset: number, length: number): void {
    if (length === 0) return;
    const first = Math.floor(offset / this.pageSize);
    this.markPages(first, Math.floor((offset + length - 1) / this.pageSize) - first + 1);
  }

  count(first: number, count: number): number {
    let n = 0;
    for (let p = first; p < first + count; p++) if (this.bits[p]) n++;
    return n;
  }

  nextSet(from: number, end: number): number {
    for (let p = from; p < end; p++) if (this.bits[p]) return p;
    return -1;
  }

  setPages(first: number, count: number): number[] {
    const pages: number[] = [];
    for (let p = first; p < first + count; p++) if (this.bits[p]) pages.push(p);
    return pages;
  }

  /** Output bit i: any page overlapping report page i. Clears the pages the range covers whole. */
  report(offset: number, length: number, reportPageSize: number, clear: boolean): Uint8Array {
    const P = this.pageSize;
    const out = new Uint8Array(length / reportPageSize);
    for (let i = 0; i < out.length; i++) {
      const start = offset + i * reportPageSize;
      const end = start + reportPageSize;
      for (let p = Math.floor(start / P); p * P < end && p < this.pageCount; p++) if (this.bits[p]) out[i] = 1;
    }
    if (clear) {
      for (let p = Math.ceil(offset / P); (p + 1) * P <= offset + length && p < this.pageCount; p++) this.bits[p] = false;
    }
    return out;
  }

  mergeFrom(firstPage: number, bytes: Uint8Array, bitCount: number): void {
    for (let i = 0; i < bitCount; i++) if ((bytes[i >> 3]! >> (i & 7)) & 1) this.bits[firstPage + i] = true;
  }
}

type Op =
  | { kind: 'markPage'; page: number }
  | { kind: 'markPages'; first: number; count: number }
  | { kind: 'markBytes'; offset: number; length: number }
  | { kind: 'mergeFrom'; firstPage: number; bits: Uint8Array; bitCount: number }
  | { kind: 'report'; clear: boolean; offset: number; length: number; reportPageSize: number; pad: number; slack: number }
  | { kind: 'count'; first: number; count: number }
  | { kind: 'nextSet'; from: number; end: number }
  | { kind: 'test'; page: number }
  | { kind: 'setPages'; first: number; count: number }
  | { kind: 'clearAll' };

interface Config {
  pageCount: number;
  pageShift: number;
}

/** A position in [0, max], biased towards both ends and towards multiples of 64 (word edges). */
function position(max: number): fc.Arbitrary<number> {
  return fc.oneof(
    fc.integer({ min: 0, max }),
    fc
      .integer({ min: 0, max: Math.floor(max / 64) })
      .chain((w) => fc.integer({ min: Math.max(0, w * 64 - 2), max: Math.min(max, w * 64 + 2) })),
    fc.integer({ min: Math.max(0, max - 3), max }),
    fc.constantFrom(0, max),
  );
}

/** [a, b] with 0 <= a <= b <= max. */
function span(max: number): fc.Arbitrary<[number, number]> {
  return fc.tuple(position(max), position(max)).map(([a, b]) => (a <= b ? [a, b] : [b, a]));
}

function opArb({ pageCount: n, pageShift }: Config): fc.Arbitrary<Op> {
  const P = 2 ** pageShift;
  const T = n * P;
  const bytePos = fc
    .tuple(position(n), fc.oneof(fc.constant(0), fc.integer({ min: 0, max: P - 1 }), fc.constant(P - 1)))
    .map(([p, j]) => Math.min(p * P + j, T));
  const page = position(n - 1);
  return fc.oneof(
    { weight: 3, arbitrary: page.map((p): Op => ({ kind: 'markPage', page: p })) },
    { weight: 3, arbitrary: span(n).map(([a, b]): Op => ({ kind: 'markPages', first: a, count: b - a })) },
    {
      weight: 3,
      arbitrary: fc
        .tuple(bytePos, bytePos)
        .map(([a, b]): Op => ({ kind: 'markBytes', offset: Math.min(a, b), length: Math.abs(b - a) })),
    },
    {
      weight: 3,
      arbitrary: fc
        .tuple(fc.integer({ min: 0, max: 63 }), fc.integer({ min: 0, max: Math.floor(n / 64) }))
        .map(([shift, w]) => Math.min(w * 64 + shift, n))
        .chain((first) => fc.tuple(fc.constant(first), position(n - first)))
        .chain(([first, count]) =>
          fc
            .tuple(fc.uint8Array({ minLength: Math.ceil(count / 8), maxLength: Math.ceil(count / 8) + 9 }), fc.boolean())
            // Sparse bitmaps too: Xen's are mostly zero.
            .map(([bytes, sparse]): Op => ({
              kind: 'mergeFrom',
              firstPage: first,
              bits: sparse ? bytes.map((b, i) => (i % 5 === 0 ? b & 0x11 : 0)) : bytes,
              bitCount: count,
            })),
        ),
    },
    {
      weight: 4,
      arbitrary: fc.integer({ min: Math.max(9, pageShift - 5), max: pageShift + 7 }).chain((r) => {
        const R = 2 ** r;
        const reportPages = Math.ceil(T / R);
        return fc
          .record({
            clear: fc.boolean(),
            ab: span(reportPages),
            pad: fc.integer({ min: 0, max: 7 }),
            slack: fc.integer({ min: 0, max: 12 }),
          })
          .map(({ clear, ab: [a, b], pad, slack }): Op => ({
            kind: 'report',
            clear,
            offset: a * R,
            length: (b - a) * R,
            reportPageSize: R,
            pad,
            slack,
          }));
      }),
    },
    { weight: 1, arbitrary: span(n).map(([a, b]): Op => ({ kind: 'count', first: a, count: b - a })) },
    { weight: 1, arbitrary: span(n).map(([a, b]): Op => ({ kind: 'nextSet', from: a, end: b })) },
    { weight: 1, arbitrary: page.map((p): Op => ({ kind: 'test', page: p })) },
    { weight: 1, arbitrary: span(n).map(([a, b]): Op => ({ kind: 'setPages', first: a, count: b - a })) },
    { weight: 1, arbitrary: fc.constant<Op>({ kind: 'clearAll' }) },
  );
}

function scenario(config: fc.Arbitrary<Config>, maxOps: number): fc.Arbitrary<[Config, Op[]]> {
  return config.chain((c) => fc.tuple(fc.constant(c), fc.array(opArb(c), { maxLength: maxOps })));
}

function check([{ pageCount: n, pageShift }, ops]: [Config, Op[]]): void {
  const P = 2 ** pageShift;
  const bitmap = new DirtyBitmap(n, P);
  const model = new Model(n, P);
  for (const op of ops) {
    switch (op.kind) {
      case 'markPage':
        bitmap.markPage(op.page);
        model.markPages(op.page, 1);
        break;
      case 'markPages':
        bitmap.markPages(op.first, op.count);
        model.markPages(op.first, op.count);
        break;
      case 'markBytes':
        bitmap.markBytes(op.offset, op.length);
        model.markBytes(op.offset, op.length);
        break;
      case 'mergeFrom':
        bitmap.mergeFrom(op.firstPage, op.bits, op.bitCount);
        model.mergeFrom(op.firstPage, op.bits, op.bitCount);
        break;
      case 'report': {
        const nbits = op.length / op.reportPageSize;
        const need = Math.ceil(nbits / 64) * 8;
        expect(DirtyBitmap.reportByteLength(op.length, op.reportPageSize)).toBe(need);
        // Unaligned, oversized, pre-filled: the report must write its words and nothing else.
        const backing = new Uint8Array(op.pad + need + op.slack).fill(0xa5);
        const out = backing.subarray(op.pad, op.pad + need + op.slack);
        const set = op.clear
          ? bitmap.reportAndClear(op.offset, op.length, op.reportPageSize, out)
          : bitmap.report(op.offset, op.length, op.reportPageSize, out);
        const expected = model.report(op.offset, op.length, op.reportPageSize, op.clear);
        const written = reportBits(out, need * 8);
        expect(firstMismatch(written.subarray(0, nbits), expected)).toBe(-1);
        expect(written.subarray(nbits).every((b) => b === 0)).toBe(true);
        expect(backing.subarray(0, op.pad).every((b) => b === 0xa5)).toBe(true);
        expect(out.subarray(need).every((b) => b === 0xa5)).toBe(true);
        expect(set).toBe(expected.reduce((s, b) => s + b, 0));
        break;
      }
      case 'count':
        expect(bitmap.count(op.first, op.count)).toBe(model.count(op.first, op.count));
        break;
      case 'nextSet':
        expect(bitmap.nextSet(op.from, op.end)).toBe(model.nextSet(op.from, op.end));
        expect(bitmap.nextSet(op.from)).toBe(model.nextSet(op.from, n));
        break;
      case 'test':
        expect(bitmap.test(op.page)).toBe(model.bits[op.page]);
        break;
      case 'setPages':
        expect([...bitmap.setPages(op.first, op.count)]).toEqual(model.setPages(op.first, op.count));
        break;
      case 'clearAll':
        bitmap.clearAll();
        model.bits.fill(false);
        break;
    }
    expect(bitmap.count()).toBe(model.count(0, n));
  }
  expect([...bitmap.setPages()]).toEqual(model.setPages(0, n));
}

describe('DirtyBitmap against a boolean-array model', () => {
  it('random operation sequences, 4-16 KiB pages, sizes around word multiples', { timeout: fuzzTimeout(30_000) }, () => {
    const config = fc.record({
      pageCount: fc.oneof(fc.integer({ min: 1, max: 130 }), fc.integer({ min: 1, max: 1100 }), fc.constantFrom(1, 63, 64, 65, 128, 1024)),
      pageShift: fc.integer({ min: 9, max: 14 }),
    });
    fc.assert(fc.property(scenario(config, 30), check), fuzzParams('DirtyBitmap (JS): operation sequences, small pages', { numRuns: 400 }));
  });

  it('random operation sequences, 64 KiB-1 MiB pages reported at 512 B up to 8x the page', { timeout: fuzzTimeout(30_000) }, () => {
    const config = fc.record({
      pageCount: fc.integer({ min: 1, max: 70 }),
      pageShift: fc.constantFrom(16, 20),
    });
    fc.assert(fc.property(scenario(config, 12), check), fuzzParams('DirtyBitmap (JS): operation sequences, large pages', { numRuns: 60 }));
  });

  it('merges at every bit shift 0..63 agree with the model', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 63 }),
        fc.integer({ min: 1, max: 300 }),
        fc.uint8Array({ minLength: 38, maxLength: 38 }),
        (shift, bitCount, bytes) => {
          const n = 64 + shift + bitCount + 3;
          const bitmap = new DirtyBitmap(n);
          const model = new Model(n, 4096);
          bitmap.mergeFrom(64 + shift, bytes, bitCount);
          model.mergeFrom(64 + shift, bytes, bitCount);
          expect([...bitmap.setPages()]).toEqual(model.setPages(0, n));
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('DirtyBitmap reports', () => {
  it('report page smaller than the tracking page: a partly covered page is reported but stays dirty', () => {
    const bitmap = new DirtyBitmap(4, 4096);
    bitmap.markPages(0, 4);
    const out = new Uint8Array(8);
    // Bytes [2048, 14336) at 1 KiB: page 0 from its 3rd KiB, pages 1 and 2 whole, page 3 for 2 KiB.
    expect(bitmap.reportAndClear(2048, 12288, 1024, out)).toBe(12);
    expect([...reportBits(out, 12)]).toEqual(new Array(12).fill(1));
    expect([...bitmap.setPages()]).toEqual([0, 3]);
    // The rest of page 0 still reports; covering only that rest does not clear it either.
    expect(bitmap.reportAndClear(0, 2048, 1024, out)).toBe(2);
    expect([...bitmap.setPages()]).toEqual([0, 3]);
    // A report covering a page whole clears it.
    expect(bitmap.reportAndClear(0, 4096, 1024, out)).toBe(4);
    expect(bitmap.reportAndClear(12288, 4096, 512, out)).toBe(8);
    expect(bitmap.count()).toBe(0);
  });

  it('report page larger than the tracking page: OR-folds groups and clears them whole', () => {
    const bitmap = new DirtyBitmap(1000, 4096);
    for (const p of [0, 17, 200, 511, 512, 999]) bitmap.markPage(p);
    const out = new Uint8Array(8);
    // 2 MiB report pages = 512 tracked pages: two bits, the second overhanging the end (pages 512..1023).
    expect(bitmap.reportAndClear(0, 2 * 2 ** 21, 2 ** 21, out)).toBe(2);
    expect([...reportBits(out, 64)]).toEqual([1, 1, ...new Array(62).fill(0)]);
    expect(bitmap.count()).toBe(0);
  });

  it('the word-copy fast path and the shifting path agree', () => {
    const n = 64 * 40 + 13;
    const a = new DirtyBitmap(n);
    const b = new DirtyBitmap(n);
    for (let p = 0; p < n; p += 7) {
      a.markPage(p);
      b.markPage(p);
    }
    const whole = new Uint8Array(DirtyBitmap.reportByteLength(n * 4096, 4096));
    expect(a.reportAndClear(0, n * 4096, 4096, whole)).toBe(Math.ceil(n / 7));
    // Same pages through an unaligned start: [0, 5) then [5, n).
    const head = new Uint8Array(8);
    const tail = new Uint8Array(DirtyBitmap.reportByteLength((n - 5) * 4096, 4096));
    b.reportAndClear(0, 5 * 4096, 4096, head);
    b.reportAndClear(5 * 4096, (n - 5) * 4096, 4096, tail);
    const joined = new Uint8Array(n);
    joined.set(reportBits(head, 5), 0);
    joined.set(reportBits(tail, n - 5), 5);
    expect(firstMismatch(joined, reportBits(whole, n))).toBe(-1);
    expect(a.count() + b.count()).toBe(0);
  });

  it('needs ceil(bits / 64) * 8 bytes of output and accepts any view, shared or not', () => {
    const bitmap = new DirtyBitmap(130);
    bitmap.markPage(129);
    const length = 130 * 4096;
    expect(errorOf(() => bitmap.report(0, length, 4096, new Uint8Array(23)))).toEqual({ name: 'Error', code: 'ERANGE', field: 'out' });
    expect(errorOf(() => bitmap.report(0, length, 4096, new DataView(new ArrayBuffer(16))))).toEqual({
      name: 'Error',
      code: 'ERANGE',
      field: 'out',
    });
    expect(errorOf(() => bitmap.reportAndClear(0, length, 4096, new Uint8Array(0)))).toEqual({ name: 'Error', code: 'ERANGE', field: 'out' });
    expect(bitmap.test(129)).toBe(true); // a failed report clears nothing
    expect(bitmap.report(0, length, 4096, new Uint8Array(24))).toBe(1);
    const words = new BigUint64Array(new SharedArrayBuffer(24));
    expect(bitmap.report(0, length, 4096, words)).toBe(1);
    expect(words[2]).toBe(2n);
    const dv = new DataView(new ArrayBuffer(32), 8);
    expect(bitmap.reportAndClear(0, length, 4096, dv)).toBe(1);
    expect(dv.getBigUint64(16, HOST_LE)).toBe(2n);
    expect(bitmap.report(0, 0, 4096, new Uint8Array(0))).toBe(0); // an empty range needs no bytes
    expect(bitmap.report(130 * 4096, 0, 4096, new Uint8Array(0))).toBe(0);
  });

  it('a 1 TiB guest (2^28 pages, 32 MiB bitmap) reports and clears exactly the marked pages', () => {
    const pages = 2 ** 28;
    const guest = 2 ** 40;
    const bitmap = new DirtyBitmap(pages, 4096);
    expect(bitmap.byteLength).toBe(32 * 2 ** 20);
    const marked = [0, 1, 63, 64, 4095, 65_537, 12_345_678, 100_000_000, 2 ** 27 + 31, pages - 64, pages - 1];
    for (const p of marked) bitmap.markPage(p);
    bitmap.markBytes(guest - 4096 * 3 - 1, 2); // straddles pages - 4 / pages - 3
    const expected = [...marked, pages - 4, pages - 3].sort((x, y) => x - y);
    expect(bitmap.count()).toBe(expected.length);

    // Huge-page granularity first, without clearing: one bit per 2 MiB.
    const huge = new Uint8Array(DirtyBitmap.reportByteLength(guest, 2 ** 21));
    expect(bitmap.report(0, guest, 2 ** 21, huge)).toBe(new Set(expected.map((p) => Math.floor(p / 512))).size);

    const out = new Uint8Array(DirtyBitmap.reportByteLength(guest, 4096));
    expect(out.byteLength).toBe(32 * 2 ** 20);
    expect(bitmap.reportAndClear(0, guest, 4096, out)).toBe(expected.length);
    const words = new BigUint64Array(out.buffer);
    const found: number[] = [];
    for (let w = 0; w < words.length; w++) {
      let v = words[w]!;
      for (let b = 0; v !== 0n; b++, v >>= 1n) if (v & 1n) found.push(w * 64 + b);
    }
    expect(found).toEqual(expected);
    expect(bitmap.count()).toBe(0);
    expect(bitmap.nextSet(0)).toBe(-1);
  });

  it('takes bigint offsets and lengths', () => {
    const bitmap = new DirtyBitmap(2 ** 20);
    bitmap.markBytes(4096n * 1000n, 1n);
    const out = new Uint8Array(8);
    expect(bitmap.reportAndClear(4096n * 960n, 4096n * 64n, 4096n, out)).toBe(1);
    expect(reportBits(out, 64)[40]).toBe(1);
  });
});

describe('DirtyBitmap shared memory', () => {
  it('bitmaps over one SharedArrayBuffer are one bitmap; stray bits past pageCount are not pages', () => {
    const a = DirtyBitmap.createShared(100, 8192);
    expect(a.buffer?.byteLength).toBe(16);
    const b = new DirtyBitmap(100, 8192, a.buffer);
    a.markPage(99);
    expect(b.test(99)).toBe(true);
    b.reportAndClear(0, 100 * 8192, 8192, new Uint8Array(16));
    expect(a.count()).toBe(0);

    // Garbage in the last word beyond page 99 (bits 36..63 of word 1).
    const words = new BigUint64Array(a.buffer!);
    words[1] = 0xfffffff0_00000000n;
    expect(a.count()).toBe(0);
    expect(a.nextSet(0)).toBe(-1);
    const out = new Uint8Array(16);
    expect(a.report(0, 100 * 8192, 8192, out)).toBe(0);
    expect(a.report(0, 128 * 8192, 128 * 8192, out)).toBe(0);
    const c = new DirtyBitmap(200, 8192);
    c.mergeBitmap(a, 100);
    expect(c.count()).toBe(0);
    a.markPage(64);
    c.mergeBitmap(b, 100);
    expect([...c.setPages()]).toEqual([164]);
    expect(a.reportAndClear(0, 100 * 8192, 8192, out)).toBe(1);
    expect(words[1]).toBe(0xfffffff0_00000000n); // clearing leaves the stray bits alone
  });

  type WorkerOp = ['page', number, number, number] | ['pages', number, number] | ['bytes', number, number] | ['merge', number, Uint8Array, number];

  /** Worker k's marks: every (W+1)-th page from k (disjoint, but every word is shared), plus overlapping ranges. */
  function workerOps(k: number, workers: number, n: number): WorkerOp[] {
    const bits = new Uint8Array(520);
    for (let i = 0; i < bits.length; i++) bits[i] = (i * 37 + k * 11) & 0xff;
    return [
      ['page', k, workers + 1, n],
      ['pages', 300_000 + k * 1000, 5000],
      ['bytes', 4096 * 500_000 + 123 + k * 40_000, 4096 * 30 + 7],
      ['merge', 700_000 + k * 131, bits, 4133],
      ['pages', n - 70 + k, 70 - k],
    ];
  }

  function expectedUnion(ops: WorkerOp[][], n: number): Uint8Array {
    const model = new Model(n, 4096);
    for (const list of ops) {
      for (const op of list) {
        if (op[0] === 'page') for (let p = op[1]; p < op[3]; p += op[2]) model.bits[p] = true;
        else if (op[0] === 'pages') model.markPages(op[1], op[2]);
        else if (op[0] === 'bytes') model.markBytes(op[1], op[2]);
        else model.mergeFrom(op[1], op[2], op[3]);
      }
    }
    return Uint8Array.from(model.bits, (b) => (b ? 1 : 0));
  }

  /** Runs the workers' marks all at once; `meanwhile` runs in a loop on this thread until they finish. */
  async function markInWorkers(bitmap: DirtyBitmap, ops: WorkerOp[][], meanwhile?: () => void): Promise<void> {
    const control = new SharedArrayBuffer(12);
    const ctl = new Int32Array(control);
    const workers = ops.map(
      (list) =>
        new Worker(new URL('../fixtures/dirty-bitmap-worker.mjs', import.meta.url), {
          workerData: { sab: bitmap.buffer, pageCount: bitmap.pageCount, pageSize: bitmap.pageSize, control, ops: list },
        }),
    );
    const exited = workers.map(async (w) => {
      const [code] = (await once(w, 'exit')) as [number];
      if (code !== 0) throw new Error(`worker exited with code ${code}`);
    });
    await Promise.all(workers.map((w) => once(w, 'message')));
    Atomics.store(ctl, 1, 1);
    Atomics.notify(ctl, 1);
    if (meanwhile) while (Atomics.load(ctl, 2) < workers.length) meanwhile();
    await Promise.all(exited);
  }

  const N = 2 ** 22 + 37;
  const WORKERS = 4;

  it('workers marking disjoint and overlapping pages at once lose no bit', async () => {
    const bitmap = DirtyBitmap.createShared(N);
    const ops = Array.from({ length: WORKERS }, (_, k) => workerOps(k, WORKERS, N));
    await markInWorkers(bitmap, ops);
    const expected = expectedUnion(ops, N);
    const out = new Uint8Array(bitmap.byteLength);
    expect(bitmap.report(0, N * 4096, 4096, out)).toBe(expected.reduce((s, b) => s + b, 0));
    expect(firstMismatch(reportBits(out, N), expected)).toBe(-1);
  });

  it('report-and-clear racing with marking workers: every mark is reported once or still set', async () => {
    const bitmap = DirtyBitmap.createShared(N);
    const ops = Array.from({ length: WORKERS }, (_, k) => workerOps(k, WORKERS, N));
    // Reports are OR-ed into accumulators word by word (cheap, so this thread spends its time
    // inside reportAndClear while the workers mark) and decoded once at the end. Three shapes
    // alternate: the word-copy path (pages from 0), an unaligned start (pages from 37), and a
    // report page half the tracking page (two bits per page).
    const out = new Uint8Array(2 * bitmap.byteLength);
    const out32 = new Uint32Array(out.buffer);
    const fromZero = new Uint32Array(bitmap.byteLength / 4);
    const from37 = new Uint32Array(bitmap.byteLength / 4);
    const halves = new Uint32Array((2 * bitmap.byteLength) / 4);
    const accumulate = (acc: Uint32Array, words: number): void => {
      for (let i = 0; i < words; i++) acc[i]! |= out32[i]!;
    };
    let round = 0;
    const reportOnce = (): void => {
      switch (round++ % 3) {
        case 0:
          bitmap.reportAndClear(0, N * 4096, 4096, out);
          accumulate(fromZero, fromZero.length);
          break;
        case 1:
          bitmap.reportAndClear(0, 37 * 4096, 4096, out);
          accumulate(fromZero, 2);
          bitmap.reportAndClear(37 * 4096, (N - 37) * 4096, 4096, out);
          accumulate(from37, from37.length);
          break;
        default:
          bitmap.reportAndClear(0, N * 4096, 2048, out);
          accumulate(halves, halves.length);
          break;
      }
    };
    await markInWorkers(bitmap, ops, reportOnce);
    reportOnce();
    expect(bitmap.count()).toBe(0);
    expect(round).toBeGreaterThan(1);

    const seen = reportBits(fromZero, N);
    const shifted = reportBits(from37, N - 37);
    for (let i = 0; i < shifted.length; i++) seen[37 + i]! |= shifted[i]!;
    const half = reportBits(halves, 2 * N);
    let unevenHalves = 0;
    for (let p = 0; p < N; p++) {
      if (half[2 * p] !== half[2 * p + 1]) unevenHalves++; // a whole page reports both its halves
      seen[p]! |= half[2 * p]!;
    }
    expect(unevenHalves).toBe(0);
    expect(firstMismatch(seen, expectedUnion(ops, N))).toBe(-1);
  });
});

describe('DirtyBitmap argument checking', () => {
  const n = 100;
  const T = n * 4096;
  const bitmap = new DirtyBitmap(n);
  const type = (field: string) => ({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE', field });
  const outOfRange = (field: string) => ({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE', field });
  const erange = (field: string) => ({ name: 'Error', code: 'ERANGE', field });
  const einval = (field: string) => ({ name: 'Error', code: 'EINVAL', field });
  const bad = (x: unknown) => x as number;

  it.each([
    ['pageCount 0', () => new DirtyBitmap(0), erange('pageCount')],
    ['pageCount 2^34 + 1', () => new DirtyBitmap(2 ** 34 + 1), erange('pageCount')],
    ['pageCount over 2^53 bytes', () => new DirtyBitmap(2 ** 34, 2 ** 20), erange('pageCount')],
    ['pageCount 1.5', () => new DirtyBitmap(1.5), type('pageCount')],
    ['pageCount -1', () => new DirtyBitmap(-1), outOfRange('pageCount')],
    ['pageCount "8"', () => new DirtyBitmap(bad('8')), type('pageCount')],
    ['pageCount missing', () => new DirtyBitmap(bad(undefined)), type('pageCount')],
    ['pageSize 1000', () => new DirtyBitmap(8, 1000), einval('pageSize')],
    ['pageSize 256', () => new DirtyBitmap(8, 256), einval('pageSize')],
    ['pageSize 0', () => new DirtyBitmap(8, 0), einval('pageSize')],
    ['pageSize 2^31', () => new DirtyBitmap(8, 2 ** 31), einval('pageSize')],
    ['pageSize NaN', () => new DirtyBitmap(8, NaN), type('pageSize')],
    ['pageSize null', () => new DirtyBitmap(8, bad(null)), type('pageSize')],
    ['backing ArrayBuffer', () => new DirtyBitmap(8, 4096, new ArrayBuffer(8) as unknown as SharedArrayBuffer), type('backing')],
    ['backing view', () => new DirtyBitmap(8, 4096, new Uint8Array(new SharedArrayBuffer(8)) as unknown as SharedArrayBuffer), type('backing')],
    ['backing object', () => new DirtyBitmap(8, 4096, {} as SharedArrayBuffer), type('backing')],
    ['backing too small', () => new DirtyBitmap(65, 4096, new SharedArrayBuffer(8)), einval('backing')],
    ['backing too large', () => new DirtyBitmap(8, 4096, new SharedArrayBuffer(16)), einval('backing')],
    ['markPage past the end', () => bitmap.markPage(n), erange('page')],
    ['markPage -1', () => bitmap.markPage(-1), outOfRange('page')],
    ['markPage 0.5', () => bitmap.markPage(0.5), type('page')],
    ['markPage Infinity', () => bitmap.markPage(Infinity), type('page')],
    ['markPage huge bigint', () => bitmap.markPage(bad(2n ** 70n)), outOfRange('page')],
    ['markPage missing', () => bitmap.markPage(bad(undefined)), type('page')],
    ['markPages first past the end', () => bitmap.markPages(n + 1, 0), erange('first')],
    ['markPages count past the end', () => bitmap.markPages(5, n - 4), erange('count')],
    ['markPages count "1"', () => bitmap.markPages(5, bad('1')), type('count')],
    ['markBytes offset past the end', () => bitmap.markBytes(T + 1, 0), erange('offset')],
    ['markBytes length past the end', () => bitmap.markBytes(T - 1, 2), erange('length')],
    ['markBytes offset -1', () => bitmap.markBytes(-1, 1), outOfRange('offset')],
    ['markBytes negative bigint', () => bitmap.markBytes(-1n, 1), outOfRange('offset')],
    ['test past the end', () => bitmap.test(n), erange('page')],
    ['test {}', () => bitmap.test(bad({})), type('page')],
    ['count first past the end', () => bitmap.count(n + 1), erange('first')],
    ['count past the end', () => bitmap.count(1, n), erange('count')],
    ['count -2', () => bitmap.count(0, -2), outOfRange('count')],
    ['nextSet past the end', () => bitmap.nextSet(n + 1), erange('fromPage')],
    ['nextSet end before start', () => bitmap.nextSet(5, 4), erange('endPage')],
    ['nextSet end past the end', () => bitmap.nextSet(0, n + 1), erange('endPage')],
    ['nextSet missing', () => bitmap.nextSet(bad(undefined)), type('fromPage')],
    ['report page 1000', () => bitmap.report(0, 0, 1000, new Uint8Array(8)), einval('reportPageSize')],
    ['report page 256', () => bitmap.report(0, 0, 256, new Uint8Array(8)), einval('reportPageSize')],
    ['report page 2^63', () => bitmap.report(0, 0, 2n ** 63n, new Uint8Array(8)), einval('reportPageSize')],
    ['report offset unaligned', () => bitmap.report(512, 4096, 4096, new Uint8Array(8)), einval('offset')],
    ['report length unaligned', () => bitmap.reportAndClear(0, 4000, 4096, new Uint8Array(8)), einval('length')],
    ['report offset past the end', () => bitmap.report(T + 4096, 0, 4096, new Uint8Array(8)), erange('offset')],
    ['report length past the end', () => bitmap.report(4096, T, 4096, new Uint8Array(8)), erange('length')],
    ['report overhang past one page', () => bitmap.report(0, 2 * 2 ** 21, 2 ** 21, new Uint8Array(8)), erange('length')],
    ['report out string', () => bitmap.report(0, 4096, 4096, bad('xxxxxxxx') as unknown as Uint8Array), type('out')],
    ['report out array', () => bitmap.report(0, 4096, 4096, [0, 0, 0, 0, 0, 0, 0, 0] as unknown as Uint8Array), type('out')],
    ['report out small', () => bitmap.reportAndClear(0, 65 * 4096, 4096, new Uint8Array(8)), erange('out')],
    ['report out over its own storage', () => { const s = DirtyBitmap.createShared(64); return s.report(0, 4096, 4096, new Uint8Array(s.buffer!)); }, einval('out')],
    ['report offset -4096', () => bitmap.report(-4096, 4096, 4096, new Uint8Array(8)), outOfRange('offset')],
    ['mergeFrom firstPage past the end', () => bitmap.mergeFrom(n + 1, new Uint8Array(1), 0), erange('firstPage')],
    ['mergeFrom bitCount past the end', () => bitmap.mergeFrom(90, new Uint8Array(2), 11), erange('bitCount')],
    ['mergeFrom bits too short', () => bitmap.mergeFrom(0, new Uint8Array(2), 17), erange('bits')],
    ['mergeFrom bits string', () => bitmap.mergeFrom(0, bad('ab') as unknown as Uint8Array, 1), type('bits')],
    ['mergeFrom bitCount 1.5', () => bitmap.mergeFrom(0, new Uint8Array(1), 1.5), type('bitCount')],
    ['mergeBitmap {}', () => bitmap.mergeBitmap({} as DirtyBitmap), type('other')],
    ['mergeBitmap a fake', () => bitmap.mergeBitmap(Object.create(DirtyBitmap.prototype) as DirtyBitmap), type('other')],
    ['mergeBitmap page size', () => bitmap.mergeBitmap(new DirtyBitmap(10, 8192)), einval('other')],
    ['mergeBitmap itself', () => bitmap.mergeBitmap(bitmap), einval('other')],
    ['mergeBitmap too big', () => bitmap.mergeBitmap(new DirtyBitmap(n + 1)), erange('other')],
    ['mergeBitmap past the end', () => bitmap.mergeBitmap(new DirtyBitmap(10), 91), erange('firstPage')],
    ['method on a plain object', () => (DirtyBitmap.prototype.markPage as (p: number) => void).call({}, 0), type('this')],
    ['method on a fake', () => (Object.create(DirtyBitmap.prototype) as DirtyBitmap).count(), type('this')],
    ['getter on a fake', () => (Object.create(DirtyBitmap.prototype) as DirtyBitmap).pageCount, type('this')],
    ['setPages first past the end', () => bitmap.setPages(n + 1), erange('first')],
    ['setPages count past the end', () => bitmap.setPages(1, n), erange('count')],
    ['setPages -1', () => bitmap.setPages(-1), outOfRange('first')],
    ['setPages 0.5', () => bitmap.setPages(0.5), type('first')],
    ['byteLengthFor 0', () => DirtyBitmap.byteLengthFor(0), erange('pageCount')],
    ['reportByteLength 3000', () => DirtyBitmap.reportByteLength(4096, 3000), einval('reportPageSize')],
  ])('%s', (_name, call, expected) => {
    expect(errorOf(call)).toEqual(expected);
    expect(bitmap.count()).toBe(0); // a rejected call changes nothing
  });

  it('the native class needs new, and subclasses are DirtyBitmaps', () => {
    const Native = Object.getPrototypeOf(DirtyBitmap) as (n: number) => unknown;
    expect(() => Native(8)).toThrow(TypeError);
    class Tagged extends DirtyBitmap {}
    const t = new Tagged(10);
    t.markPage(3);
    const b = new DirtyBitmap(20);
    b.mergeBitmap(t, 10);
    expect([...b.setPages()]).toEqual([13]);
  });
});
