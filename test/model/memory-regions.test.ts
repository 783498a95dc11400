import { describe, expect, it } from 'vitest';
import { WindowedGuestMemory } from '../../src/guest-memory.js';
import { CompareWriteWatch } from '../../src/write-watch.js';
import { Region, valueOps } from '../../src/regions.js';
import { readBig, readInt, writeInt } from '../helpers.js';

describe('WindowedGuestMemory', () => {
  function mem() {
    const m = new WindowedGuestMemory();
    const low = new Uint8Array(0x2000);
    const high = new Uint8Array(0x1000);
    const rom = new Uint8Array(0x1000).fill(0xee);
    m.addWindow({ gpa: 0x0, bytes: low, writable: true });
    m.addWindow({ gpa: 0x2000, bytes: high, writable: true });
    m.addWindow({ gpa: 0x10000, bytes: rom, writable: false });
    return { m, low, high };
  }

  it('reads and writes across adjacent windows and maps within one', () => {
    const { m, low, high } = mem();
    m.write(0x1ffe, new Uint8Array([1, 2, 3, 4]));
    expect([low[0x1ffe], low[0x1fff], high[0], high[1]]).toEqual([1, 2, 3, 4]);
    const out = new Uint8Array(4);
    m.read(0x1ffe, out);
    expect([...out]).toEqual([1, 2, 3, 4]);
    expect(m.map(0x1ffe, 4, false)).toBeNull();
    const view = m.map(0x2000, 16, true)!;
    view[0] = 9;
    expect(high[0]).toBe(9);
    expect(m.map(0x10000, 1, true)).toBeNull();
    expect(m.map(0x10000, 1, false)![0]).toBe(0xee);
  });

  it('fails whole accesses that touch unmapped or read-only memory, changing nothing', () => {
    const { m, high } = mem();
    expect(() => m.write(0x2ffe, new Uint8Array(4).fill(7))).toThrow(expect.objectContaining({ code: 'EFAULT', field: 'gpa' }));
    expect(high[0xffe]).toBe(0);
    expect(() => m.write(0x10000, new Uint8Array(1))).toThrow(/read-only/);
    expect(() => m.read(-1, new Uint8Array(1))).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => m.read(2 ** 53, new Uint8Array(1))).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => m.read(2 ** 52 - 1, new Uint8Array(2))).toThrow(expect.objectContaining({ code: 'EFAULT' }));
    expect(() => m.addWindow({ gpa: 0x1000, bytes: new Uint8Array(16), writable: true })).toThrow(expect.objectContaining({ code: 'EEXIST' }));
    expect(() => m.removeWindow(0x2000, 1)).toThrow(expect.objectContaining({ code: 'ENOENT' }));
    m.removeWindow(0x2000, 0x1000);
    expect(() => m.read(0x2000, new Uint8Array(1))).toThrow(expect.objectContaining({ code: 'EFAULT' }));
  });

  it('reports device writes to the dirty log', () => {
    const { m } = mem();
    const log: [number, number][] = [];
    m.dirtyLog = { markDirty: (g, l) => log.push([g, l]) };
    m.write(0x100, new Uint8Array(3));
    m.write(0x100, new Uint8Array(0));
    m.markDirty(0x2000, 8);
    expect(log).toEqual([[0x100, 3], [0x2000, 8]]);
  });
});

describe('CompareWriteWatch', () => {
  it('reports changed bytes of watched pages at sync points only', () => {
    const m = new WindowedGuestMemory();
    const ram = new Uint8Array(0x4000);
    m.addWindow({ gpa: 0x100000, bytes: ram, writable: true });
    const w = new CompareWriteWatch(m);
    expect(w.mode).toBe('compare');
    const seen: { gpa: number; length: number }[] = [];
    const h = w.watch(0x101010, 8, (e) => seen.push(e));
    ram[0x1800] = 1;
    ram[0x1804] = 2;
    ram[0x3000] = 3; // not watched
    expect(seen).toEqual([]);
    w.sync();
    expect(seen).toEqual([{ gpa: 0x101800, length: 5 }]);
    w.sync();
    expect(seen).toHaveLength(1);
    h.remove();
    ram[0x1000] = 5;
    w.sync();
    expect(seen).toHaveLength(1);
    expect(() => w.watch(0x900000, 1, () => {})).toThrow(expect.objectContaining({ code: 'EFAULT' }));
    expect(() => w.watch(0x100000, 0, () => {})).toThrow(expect.objectContaining({ field: 'length' }));
  });
});

describe('Region', () => {
  it('valueOps splits accesses into implemented sizes and widens narrow ones', () => {
    const log: string[] = [];
    const store = new Map<number, number>();
    const acc = valueOps({
      minAccess: 4,
      maxAccess: 4,
      read: (off, size) => {
        log.push(`r${off}/${size}`);
        return store.get(off) ?? 0;
      },
      write: (off, size, v) => {
        log.push(`w${off}/${size}`);
        store.set(off, Number(v));
      },
    });
    writeInt(acc, 0, 8, 0x1122334455667788n);
    expect(log).toEqual(['w0/4', 'w4/4']);
    expect(readBig(acc, 0, 8)).toBe(0x1122334455667788n);
    log.length = 0;
    writeInt(acc, 5, 1, 0xaa); // widened to a read-modify-write of the dword at 4
    expect(log).toEqual(['r4/4', 'w4/4']);
    expect(readInt(acc, 4, 4)).toBe(0x1122aa44);
    expect(() => valueOps({ minAccess: 8, maxAccess: 4, read: () => 0, write: () => {} })).toThrow(expect.objectContaining({ field: 'ops' }));
  });

  it('dispatches sparse regions to shared memory, overlays and the accessor', () => {
    const bytes = new Uint8Array(0x4000);
    const trapped: string[] = [];
    const r = new Region('sparse', 0x4000, {
      backing: { bytes, fd: null, fdOffset: 0 },
      mmapAreas: [{ offset: 0x1000, size: 0x1000 }],
      accessor: { read: (o, out) => { trapped.push(`r${o}+${out.length}`); out.fill(0x11); }, write: (o, d) => trapped.push(`w${o}+${d.length}`) },
    });
    r.addOverlay('tbl', 0x2000, 0x10, { read: (_o, out) => out.fill(0x22), write: () => trapped.push('tbl') });
    bytes.fill(0x33, 0x1000, 0x2000);
    const out = new Uint8Array(0x1018);
    r.read(0x0ffc, out);
    expect(out[0]).toBe(0x11);
    expect(out[4]).toBe(0x33);
    expect(out[0x1004]).toBe(0x22);
    expect(out[0x1017]).toBe(0x11);
    expect(trapped).toEqual(['r4092+4', 'r8208+4']);
    r.write(0x1ffe, new Uint8Array([1, 2, 3]));
    expect(bytes[0x1ffe]).toBe(1);
    expect(trapped).toContain('tbl');
    expect(r.isMapped(0x1000, 0x1000)).toBe(true);
    expect(r.isMapped(0x1fff, 2)).toBe(false);
    expect(() => r.read(0x3fff, new Uint8Array(2))).toThrow(expect.objectContaining({ code: 'ERANGE' }));
    expect(() => r.addOverlay('bad', 0x1800, 16, r.accessor)).toThrow(/must trap/);
  });

  it('validates mappable areas', () => {
    const backing = { bytes: new Uint8Array(0x2000), fd: null, fdOffset: 0 };
    expect(() => new Region('r', 0x2000, { backing, mmapAreas: [{ offset: 0x800, size: 0x1000 }] })).toThrow(expect.objectContaining({ field: 'mmapAreas[0]' }));
    expect(() => new Region('r', 0x2000, { backing, mmapAreas: [{ offset: 0x1000, size: 0x2000 }] })).toThrow(expect.objectContaining({ code: 'ERANGE' }));
    expect(() => new Region('r', 0x2000, { mmapAreas: [{ offset: 0, size: 0x1000 }] })).toThrow(expect.objectContaining({ field: 'backing' }));
    expect(() => new Region('r', 0)).toThrow(expect.objectContaining({ field: 'size' }));
    expect(() => new Region('r', 16, { space: 'pio', backing, mmapAreas: [{ offset: 0, size: 0x1000 }] })).toThrow();
  });
});

describe('Region with a register block smaller than itself', () => {
  it('serves the block and reads zeros beyond it, ignoring writes there', async () => {
    const { RegisterBlock } = await import('../../src/registers.js');
    const block = new RegisterBlock('small', 8, { A: { offset: 0, width: 4, reset: 0x11223344 } });
    const r = new Region('bar', 0x1000, { accessor: block });
    expect(readInt(r, 0, 4)).toBe(0x11223344);
    writeInt(r, 0x800, 4, 0xffffffff);
    expect(readInt(r, 0x800, 4)).toBe(0);
    expect(readBig(r, 4, 8)).toBe(0n); // straddles the block's end
  });
});
