import { describe, expect, it } from 'vitest';
import { EduDevice, EDU } from '../../examples/edu/index.js';
import { PCI, PCI_COMMAND } from '../../src/pci/constants.js';
import { decodeState, encodeState } from '../../src/state.js';
import { PciDevice } from '../../src/pci/device.js';
import { readInt, writeInt } from '../helpers.js';

function busyEdu(): EduDevice {
  const d = new EduDevice().realize();
  const cfg = d.configAccessor;
  const bar = d.bars[0]!.region;
  writeInt(cfg, PCI.BAR0, 4, 0xfe000000);
  writeInt(cfg, PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
  writeInt(bar, EDU.LIVENESS, 4, 0x12345678);
  writeInt(bar, EDU.FACTORIAL, 4, 10);
  writeInt(bar, EDU.DMA_SRC, 8, 0x1000);
  writeInt(bar, EDU.IRQ_RAISE, 4, 0x4);
  bar.write(EDU.DMA_BUFFER, new Uint8Array([9, 8, 7]));
  return d;
}

describe('save/restore', () => {
  it('round-trips config space, registers, interrupt state and device extras', () => {
    const a = busyEdu();
    const image = a.saveState();
    const b = new EduDevice().realize();
    const remaps: unknown[] = [];
    b.on('barRemap', (e) => remaps.push(e));
    b.restoreState(image);
    const bar = b.bars[0]!.region;
    expect(readInt(b.configAccessor, PCI.BAR0, 4)).toBe(0xfe000000);
    expect(b.barAddress(0)).toBe(0xfe000000n);
    expect(remaps).toHaveLength(1);
    expect(readInt(bar, EDU.LIVENESS, 4)).toBe(~0x12345678 >>> 0);
    expect(readInt(bar, EDU.FACTORIAL, 4)).toBe(3628800);
    expect(readInt(bar, EDU.IRQ_STATUS, 4)).toBe(0x4);
    expect(b.irq.intxAsserted).toBe(true);
    expect([...b.buffer.subarray(0, 3)]).toEqual([9, 8, 7]);
    expect(b.saveState()).toEqual(image);
  });

  it('rejects corrupted, truncated, foreign and wrong-version images without changing state', () => {
    const a = busyEdu();
    const image = a.saveState();
    const b = busyEdu();
    const before = b.saveState();
    const corrupt = image.slice();
    corrupt[40] ^= 1;
    expect(() => b.restoreState(corrupt)).toThrow(expect.objectContaining({ code: 'EBADMSG' }));
    expect(() => b.restoreState(image.subarray(0, 10))).toThrow(expect.objectContaining({ code: 'EINVAL', field: 'image' }));
    expect(() => b.restoreState(new Uint8Array(100))).toThrow(/bad magic/);
    const other = new PciDevice({ vendorId: 0x1234, deviceId: 0x9999, classCode: 0 });
    expect(() => other.restoreState(image)).toThrow(expect.objectContaining({ field: 'image.identity' }));
    const sections = [...decodeState(image, { vendorId: 0x1234, deviceId: 0x11e8 }).values()];
    const bumped = encodeState({ vendorId: 0x1234, deviceId: 0x11e8 }, sections.map((s) => (s.name === 'regs.edu' ? { ...s, version: 2 } : s)));
    expect(() => b.restoreState(bumped)).toThrow(expect.objectContaining({ code: 'ENOTSUP', field: 'image.regs.edu' }));
    const missing = encodeState({ vendorId: 0x1234, deviceId: 0x11e8 }, sections.filter((s) => s.name !== 'pci.irq'));
    expect(() => b.restoreState(missing)).toThrow(/pci.irq is missing/);
    const unknown = encodeState({ vendorId: 0x1234, deviceId: 0x11e8 }, [...sections, { name: 'bogus', version: 1, data: new Uint8Array(1) }]);
    expect(() => b.restoreState(unknown)).toThrow(/unknown section bogus/);
    const roChanged = sections.map((s) => (s.name === 'pci.config' ? { ...s, data: s.data.map((v, i) => (i === 0 ? v ^ 1 : v)) } : s));
    expect(() => b.restoreState(encodeState({ vendorId: 0x1234, deviceId: 0x11e8 }, roChanged))).toThrow(/read-only bits/);
    expect(b.saveState()).toEqual(before);
  });

  it('puts the previous state back when a device section is refused', () => {
    const a = busyEdu();
    const b = new EduDevice().realize();
    const before = b.saveState();
    const sections = [...decodeState(a.saveState(), { vendorId: 0x1234, deviceId: 0x11e8 }).values()];
    const bad = encodeState({ vendorId: 0x1234, deviceId: 0x11e8 }, sections.map((s) => (s.name === 'x.edu.buffer' ? { ...s, data: new Uint8Array(5) } : s)));
    expect(() => b.restoreState(bad)).toThrow(expect.objectContaining({ field: 'image.x.edu.buffer' }));
    expect(b.saveState()).toEqual(before);
  });
});
