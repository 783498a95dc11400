import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { fuzzParams, fuzzTimeout } from '../fuzz-budget.js';
import { RegisterBlock, type RegisterSpec, type WriteEvent } from '../../src/registers.js';
import { readBig, readInt, writeInt } from '../helpers.js';
import { MaskedStorage } from '../../src/masked-storage.js';
import { binding } from '../../src/native/binding.js';

describe('RegisterBlock masks', () => {
  const make = () =>
    new RegisterBlock('t', 0x40, {
      RW: { offset: 0x00, width: 4, reset: 0x11223344 },
      RO: { offset: 0x04, width: 4, reset: 0xcafef00d, readOnly: true },
      MIXED: { offset: 0x08, width: 4, reset: 0xff00ff00, rw: 0x0000ffff },
      W1C: { offset: 0x0c, width: 4, reset: 0xf0, w1c: 0xff },
      W1S: { offset: 0x10, width: 2, w1s: 0x00ff, rw: 0xff00 },
      RC: { offset: 0x14, width: 1, reset: 0x5a, rc: 0x0f, readOnly: true },
      WIDE: { offset: 0x18, width: 8, reset: 0x0102030405060708n },
    });

  it('RW takes writes, RO ignores them, mixed masks keep RO bits', () => {
    const b = make();
    writeInt(b, 0x00, 4, 0xdeadbeef);
    writeInt(b, 0x04, 4, 0);
    writeInt(b, 0x08, 4, 0x12345678);
    expect(readInt(b, 0x00, 4)).toBe(0xdeadbeef);
    expect(readInt(b, 0x04, 4)).toBe(0xcafef00d);
    expect(readInt(b, 0x08, 4)).toBe(0xff005678);
  });

  it('W1C clears only the bits written as 1; W1S sets them', () => {
    const b = make();
    writeInt(b, 0x0c, 4, 0x30);
    expect(readInt(b, 0x0c, 4)).toBe(0xc0);
    writeInt(b, 0x0c, 4, 0);
    expect(readInt(b, 0x0c, 4)).toBe(0xc0);
    writeInt(b, 0x10, 2, 0xab05);
    expect(readInt(b, 0x10, 2)).toBe(0xab05);
    writeInt(b, 0x10, 2, 0x0010);
    expect(readInt(b, 0x10, 2)).toBe(0x0015); // W1S bits accumulate, RW byte takes the new 0x00
  });

  it('RC bits clear after a read, only in the bytes read', () => {
    const b = make();
    expect(readInt(b, 0x14, 1)).toBe(0x5a);
    expect(readInt(b, 0x14, 1)).toBe(0x50);
  });

  it('partial writes touch only the bytes written (byte enables)', () => {
    const b = make();
    writeInt(b, 0x01, 1, 0xaa);
    expect(readInt(b, 0x00, 4)).toBe(0x1122aa44);
    writeInt(b, 0x02, 2, 0xbbcc);
    expect(readInt(b, 0x00, 4)).toBe(0xbbccaa44);
  });

  it('unaligned and wide accesses span registers; gaps read 0 and ignore writes', () => {
    const b = make();
    // 8 bytes at 0x02: the upper half of RW, all of RO, the lower half of MIXED.
    expect(readBig(b, 0x02, 8)).toBe(0xff00cafef00d1122n);
    writeInt(b, 0x1c, 4, 0xffffffff);
    expect(readBig(b, 0x18, 8)).toBe(0xffffffff05060708n);
    writeInt(b, 0x20, 4, 0x12345678); // no register there
    expect(readInt(b, 0x20, 4)).toBe(0);
  });

  it('64-bit registers read and write as bigints', () => {
    const b = make();
    expect(b.get64('WIDE')).toBe(0x0102030405060708n);
    writeInt(b, 0x18, 8, 0xfedcba9876543210n);
    expect(b.get64('WIDE')).toBe(0xfedcba9876543210n);
    expect(() => b.get('WIDE')).toThrow(/use get64/);
  });

  it('reset restores reset values', () => {
    const b = make();
    writeInt(b, 0, 4, 0);
    b.reset();
    expect(b.get('RW')).toBe(0x11223344);
  });
});

describe('RegisterBlock hooks', () => {
  it('calls read hooks before sampling and write hooks after storing, lowest offset first, once each', () => {
    const calls: string[] = [];
    const events: WriteEvent<number>[] = [];
    let counter = 0;
    const b = new RegisterBlock('h', 0x10, {
      COUNTER: { offset: 0, width: 4, readOnly: true, onRead: (r) => { calls.push('read COUNTER'); r.set(++counter); } },
      DOORBELL: { offset: 4, width: 4, readOnly: true, onWrite: (ev) => { calls.push('write DOORBELL'); events.push(ev); } },
      CTRL: { offset: 8, width: 4, rw: 0xff, onWrite: (ev) => { calls.push('write CTRL'); events.push(ev); } },
    });
    expect(readInt(b, 0, 4)).toBe(1);
    expect(readInt(b, 0, 2)).toBe(2);
    writeInt(b, 4, 8, 0x0000_12ff_0000_0007n);
    expect(calls).toEqual(['read COUNTER', 'read COUNTER', 'write DOORBELL', 'write CTRL']);
    expect(events[0]).toMatchObject({ written: 7, value: 0, old: 0, byteMask: 0xffffffff });
    expect(events[1]).toMatchObject({ written: 0x12ff, value: 0xff, old: 0, byteMask: 0xffffffff });
    writeInt(b, 9, 1, 0xab);
    expect(events[2]).toMatchObject({ written: 0xab00, byteMask: 0xff00, old: 0xff, value: 0xff });
  });

  it('passes bigints to 64-bit write hooks', () => {
    let seen: WriteEvent<bigint> | undefined;
    const b = new RegisterBlock('h', 8, { Q: { offset: 0, width: 8, onWrite: (ev) => (seen = ev) } });
    writeInt(b, 4, 4, 0x80000000);
    expect(seen).toMatchObject({ value: 0x8000000000000000n, written: 0x8000000000000000n, byteMask: 0xffffffff00000000n });
  });
});

describe('RegisterBlock bad input', () => {
  const cases: [string, Record<string, RegisterSpec>, RegExp][] = [
    ['overlap', { A: { offset: 0, width: 4 }, B: { offset: 2, width: 2 } }, /specs\.B\.offset: overlaps register A/],
    ['misaligned', { A: { offset: 2, width: 4 } }, /specs\.A\.offset: must be a multiple/],
    ['past the end', { A: { offset: 0x10, width: 4 } }, /specs\.A\.offset/],
    ['bad width', { A: { offset: 0, width: 3 as 4 } }, /specs\.A\.width/],
    ['mask conflict', { A: { offset: 0, width: 4, rw: 1, w1c: 1 } }, /only one of rw, w1c and w1s/],
    ['mask too wide', { A: { offset: 0, width: 1, rw: 0x1ff } }, /specs\.A\.rw: does not fit/],
  ];
  for (const [name, specs, re] of cases) {
    it(`rejects ${name} with a named EINVAL/ERANGE`, () => {
      let err: unknown;
      try {
        new RegisterBlock('bad', 0x10, specs);
      } catch (e) {
        err = e;
      }
      expect(err).toMatchObject({ code: expect.stringMatching(/^E(INVAL|RANGE)$/) });
      expect((err as Error).message).toMatch(re);
    });
  }

  it('rejects accesses outside the block and bad device-side values', () => {
    const b = new RegisterBlock('b', 8, { A: { offset: 0, width: 4 } });
    expect(() => b.read(6, new Uint8Array(4))).toThrow(expect.objectContaining({ code: 'ERANGE', field: 'offset' }));
    expect(() => b.write(-1, new Uint8Array(1))).toThrow(expect.objectContaining({ code: 'ERANGE' }));
    expect(() => b.set('A', 2 ** 32)).toThrow(expect.objectContaining({ code: 'ERANGE', field: 'value' }));
    expect(() => b.set('A', 1.5)).toThrow(expect.objectContaining({ code: 'ERANGE' }));
    expect(() => b.reg('NOPE' as 'A')).toThrow(expect.objectContaining({ code: 'ENOENT' }));
  });
});

describe('RegisterBlock against a reference model (property)', () => {
  // The reference applies the documented per-bit rules to plain JS numbers, one byte at a time.
  it('matches the documented rules for random layouts and accesses', { timeout: fuzzTimeout(30_000) }, () => {
    const byteMask = fc.integer({ min: 0, max: 255 });
    fc.assert(
      fc.property(
        fc.array(fc.record({ rw: byteMask, w1c: byteMask, w1s: byteMask, rc: byteMask, reset: byteMask }), { minLength: 4, maxLength: 4 }),
        fc.array(fc.record({ write: fc.boolean(), offset: fc.integer({ min: 0, max: 15 }), size: fc.constantFrom(1, 2, 4, 8), data: fc.uint8Array({ minLength: 8, maxLength: 8 }) }), { maxLength: 40 }),
        (regs, ops) => {
          // Four 4-byte registers at 0, 4, 8, 12; per-register masks replicated into each byte,
          // with w1c/w1s reduced so that a bit belongs to at most one write class.
          const specs: Record<string, RegisterSpec> = {};
          const model = { value: new Array<number>(16).fill(0), rw: new Array<number>(16).fill(0), w1c: new Array<number>(16).fill(0), w1s: new Array<number>(16).fill(0), rc: new Array<number>(16).fill(0) };
          regs.forEach((r, i) => {
            const rw = r.rw;
            const w1c = r.w1c & ~rw;
            const w1s = r.w1s & ~rw & ~w1c;
            const rep = (b: number) => (b * 0x01010101) >>> 0;
            specs[`R${i}`] = { offset: i * 4, width: 4, rw: rep(rw), w1c: rep(w1c), w1s: rep(w1s), rc: rep(r.rc), reset: rep(r.reset) };
            for (let k = 0; k < 4; k++) {
              model.value[i * 4 + k] = r.reset;
              model.rw[i * 4 + k] = rw;
              model.w1c[i * 4 + k] = w1c;
              model.w1s[i * 4 + k] = w1s;
              model.rc[i * 4 + k] = r.rc;
            }
          });
          const block = new RegisterBlock('p', 16, specs);
          for (const op of ops) {
            const len = Math.min(op.size, 16 - op.offset);
            if (op.write) {
              block.write(op.offset, op.data.subarray(0, len));
              for (let k = 0; k < len; k++) {
                const i = op.offset + k;
                const d = op.data[k]!;
                let v = (model.value[i]! & ~model.rw[i]!) | (d & model.rw[i]!);
                v &= ~(d & model.w1c[i]!);
                v |= d & model.w1s[i]!;
                model.value[i] = v & 0xff;
              }
            } else {
              const out = new Uint8Array(len);
              block.read(op.offset, out);
              for (let k = 0; k < len; k++) {
                const i = op.offset + k;
                expect(out[k]).toBe(model.value[i]);
                model.value[i] = model.value[i]! & ~model.rc[i]!;
              }
            }
          }
          expect([...block.storage.values]).toEqual(model.value);
        },
      ),
      fuzzParams('RegisterBlock: layouts and accesses against the byte rules', { numRuns: 300 }),
    );
  });
});

describe('MaskedStorage: register-sized accesses in JS follow the native rules (property)', () => {
  // Accesses of up to 8 bytes are served in JS; longer ones by core/masked_storage.cc. Both must
  // give the same bytes and leave the same planes, whatever the masks.
  it('agrees with the native core for random planes and accesses', { timeout: fuzzTimeout(30_000) }, () => {
    const native = binding as unknown as {
      maskedRead(storage: Uint8Array, size: number, offset: number, out: Uint8Array): void;
      maskedWrite(storage: Uint8Array, size: number, offset: number, data: Uint8Array): void;
    };
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 6 * 24, maxLength: 6 * 24 }),
        fc.array(fc.record({ write: fc.boolean(), offset: fc.integer({ min: 0, max: 23 }), size: fc.integer({ min: 1, max: 12 }), data: fc.uint8Array({ minLength: 12, maxLength: 12 }) }), { maxLength: 40 }),
        (planes, ops) => {
          const s = new MaskedStorage(24);
          s.planes.set(planes);
          const twin = Uint8Array.from(planes);
          for (const op of ops) {
            const len = Math.min(op.size, 24 - op.offset);
            if (op.write) {
              s.write(op.offset, op.data.subarray(0, len));
              native.maskedWrite(twin, 24, op.offset, op.data.subarray(0, len));
            } else {
              const a = new Uint8Array(len);
              const b = new Uint8Array(len);
              s.read(op.offset, a);
              native.maskedRead(twin, 24, op.offset, b);
              expect([...a]).toEqual([...b]);
            }
          }
          expect([...s.planes]).toEqual([...twin]);
        },
      ),
      fuzzParams('MaskedStorage: JS small accesses against the native rules', { numRuns: 300 }),
    );
  });

  it('refuses accesses outside the storage on both paths, naming the field', () => {
    const s = new MaskedStorage(16);
    for (const [offset, len] of [[-1, 4], [13, 4], [16, 1], [0.5, 2], [8, 9], [NaN, 1]] as const) {
      // The native core's errors: RangeError/TypeError with a Node error code, naming "offset".
      expect(() => s.read(offset, new Uint8Array(len))).toThrow(/"offset"/);
      expect(() => s.write(offset, new Uint8Array(len))).toThrow(/"offset"/);
    }
    expect(() => s.read(12, new Uint8Array(4))).not.toThrow();
  });
});
