import { describe, expect, it } from 'vitest';
import { EduDevice, EDU } from '../../examples/edu/index.js';
import { createRegionTable, regionSegments } from '../../src/region-table.js';
import { PciDevice } from '../../src/pci/device.js';
import { Region } from '../../src/regions.js';
import { RegisterBlock } from '../../src/registers.js';
import { createMemfdBacking } from '../../src/ram.js';
import { PCI } from '../../src/pci/constants.js';

const u32 = (v: number) => new Uint8Array(new Uint32Array([v]).buffer);
const asU32 = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset).getUint32(0, true);

describe('native region table', () => {
  it('serves unhooked registers natively and hooked ones through JS, with the same results', () => {
    const d = new EduDevice().realize();
    const t = createRegionTable(d, { maxAccess: 4096 });
    const out = new Uint8Array(4);
    expect(t.read(0, EDU.ID, out)).toBe(0);
    expect(asU32(out)).toBe(EDU.ID_VALUE);
    expect(t.stats()).toMatchObject({ nativeReads: 1, jsReads: 0 });
    expect(t.write(0, EDU.FACTORIAL, u32(6))).toBe(0); // hooked: computes in JS
    expect(t.stats().jsWrites).toBe(1);
    expect(t.read(0, EDU.FACTORIAL, out)).toBe(0);
    expect(asU32(out)).toBe(720);
    expect(t.write(0, EDU.DMA_SRC, u32(0x1234))).toBe(0); // plain 64-bit register, native
    expect(d.regs.get64('DMA_SRC')).toBe(0x1234n);
    expect(t.stats()).toMatchObject({ nativeWrites: 1, jsWrites: 1 });
    expect(t.read(0, 0x200, out)).toBe(0); // beyond the register block: zeros, natively
    expect(asU32(out)).toBe(0);
    t.write(0, EDU.DMA_BUFFER + 8, u32(0xabcd)); // overlay with a JS accessor
    expect(d.buffer[8]).toBe(0xcd);
  });

  it('routes config space through the device (side effects apply) and checks bounds and permissions', () => {
    const d = new EduDevice().realize();
    const t = createRegionTable(d, { maxAccess: 4096 });
    expect(t.write(7, PCI.BAR0, u32(0xffffffff))).toBe(0);
    const out = new Uint8Array(4);
    t.read(7, PCI.BAR0, out);
    expect(asU32(out)).toBe(0xfff00000);
    expect(t.read(7, 254, new Uint8Array(4))).toBe(22); // EINVAL: past the end
    expect(t.read(3, 0, out)).toBe(22); // no BAR3
    expect(t.read(0, 2 ** 52, out)).toBe(22);
    expect(t.read(99, 0, out)).toBe(22);
  });

  it('serves mappable RAM natively and keeps hooked MSI-X control in JS', () => {
    const d = new PciDevice({ vendorId: 1, deviceId: 2, classCode: 0 });
    const ram = createMemfdBacking(0x4000);
    const regs = new RegisterBlock('r', 0x100, { A: { offset: 0, width: 4 } });
    d.addBar(0, new Region('mixed', 0x4000, { accessor: regs, backing: ram, mmapAreas: [{ offset: 0x2000, size: 0x2000 }] }));
    d.addMsix({ vectors: 2, tableBar: 0, tableOffset: 0x1000, pbaOffset: 0x1800 });
    d.realize();
    const segs = regionSegments(d.bars[0]!.region);
    expect(segs.map((s) => [s.offset, s.size, s.kind])).toEqual([
      [0, 0x100, 'masked'],
      [0x100, 0xf00, 'zero'],
      [0x1000, 0x20, 'masked'],
      [0x1020, 0x7e0, 'zero'],
      [0x1800, 8, 'js'],
      [0x1808, 0x7f8, 'zero'],
      [0x2000, 0x2000, 'ram'],
    ]);
    const t = createRegionTable(d, { maxAccess: 4096 });
    t.write(0, 0x2010, u32(0x55aa55aa));
    expect(ram.bytes[0x2010]).toBe(0xaa); // backings are indexed by region offset
    t.write(0, 0x1000, u32(0xfee00000)); // MSI-X entry address: plain register
    t.write(0, 0x100c, u32(0)); // vector control: hooked
    expect(t.stats()).toMatchObject({ nativeWrites: 2, jsWrites: 1 });
    ram.release();
  });

  it('maps device errors to errnos', () => {
    const d = new PciDevice({ vendorId: 1, deviceId: 2, classCode: 0 });
    const errors: unknown[] = [];
    d.addBar(0, new Region('bad', 16, { accessor: { read() { throw new Error('boom'); }, write() { throw Object.assign(new Error('x'), { code: 'EPERM', errno: 1 }); } } }));
    d.realize();
    const t = createRegionTable(d, { maxAccess: 64, onError: (e) => errors.push(e) });
    expect(t.read(0, 0, new Uint8Array(4))).toBe(5); // EIO
    expect(errors).toHaveLength(1);
    expect(t.write(0, 0, new Uint8Array(4))).toBe(1); // EPERM
    expect(t.read(0, 0, new Uint8Array(128))).toBe(22); // larger than the region
  });

  it('refuses bad segment specs and foreign receivers with named errors', () => {
    const d = new EduDevice().realize();
    const t = createRegionTable(d, { maxAccess: 64 });
    expect(() => t.setRegion(0, { size: 16, readable: true, writable: true, segments: [{ offset: 8, size: 16, kind: 'zero' }] })).toThrow(/segments\[0\]/);
    expect(() => t.setRegion(0, { size: 16, readable: true, writable: true, segments: [{ offset: 0, size: 16, kind: 'bogus' as 'js' }] })).toThrow(expect.objectContaining({ field: 'region.segments[0].kind' }));
    expect(() => t.setRegion(0, { size: 64, readable: true, writable: true, segments: [{ offset: 0, size: 64, kind: 'ram', storage: new Uint8Array(8), base: 0 }] })).toThrow(/smaller/);
    expect(() => t.setRegion(64, { size: 1, readable: true, writable: true, segments: [] })).toThrow(expect.objectContaining({ field: 'index' }));
    expect(() => (t.read as (...a: unknown[]) => number).call({}, 0, 0, new Uint8Array(1))).toThrow(TypeError);
  });
});
