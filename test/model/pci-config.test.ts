import { describe, expect, it } from 'vitest';
import { PciDevice, type BarRemapEvent } from '../../src/pci/device.js';
import { Region } from '../../src/regions.js';
import { PCI, PCI_CAP_ID, PCI_COMMAND, PCI_EXP, PCI_EXT_CAP_ID, PCI_STATUS } from '../../src/pci/constants.js';
import { formatLspci, sizeBars, walkCapabilities } from '../../src/pci/lspci.js';
import { readInt, writeInt } from '../helpers.js';

function makeDevice(configSize: 256 | 4096 = 4096): PciDevice {
  const d = new PciDevice({ vendorId: 0x1af4, deviceId: 0x1050, classCode: 0x030000, revision: 2, subsystemVendorId: 0x1af4, subsystemId: 0x1100, configSize });
  d.addBar(0, new Region('regs', 0x4000));
  d.addBar(2, new Region('vram', 256 * 1024 * 1024), { kind: 'mem64', prefetchable: true });
  d.addBar(4, new Region('io', 32, { space: 'pio' }));
  d.setRom(new Uint8Array(3000).fill(0x55));
  d.addPowerManagement();
  d.addMsi({ vectors: 4, addr64: true, perVectorMask: true });
  d.addMsix({ vectors: 8, tableBar: 0, tableOffset: 0x2000, pbaOffset: 0x3000 });
  d.addPciExpress({ flr: true });
  if (configSize === 4096) {
    d.addDeviceSerialNumber(0x0011223344556677n);
    d.addExtendedVendorSpecific(0x1234, 1, new Uint8Array([1, 2, 3, 4]));
  }
  return d.realize();
}

const cfg = (d: PciDevice) => d.configAccessor;

describe('type-0 header', () => {
  it('reports identity like lspci reads it', () => {
    const d = makeDevice();
    expect(readInt(cfg(d), PCI.VENDOR_ID, 2)).toBe(0x1af4);
    expect(readInt(cfg(d), PCI.DEVICE_ID, 2)).toBe(0x1050);
    expect(readInt(cfg(d), PCI.CLASS_PROG, 1)).toBe(0);
    expect(readInt(cfg(d), PCI.CLASS_DEVICE, 2)).toBe(0x0300);
    expect(readInt(cfg(d), PCI.REVISION_ID, 1)).toBe(2);
    expect(readInt(cfg(d), PCI.HEADER_TYPE, 1)).toBe(0);
    expect(readInt(cfg(d), PCI.SUBSYSTEM_ID, 2)).toBe(0x1100);
    expect(readInt(cfg(d), PCI.INTERRUPT_PIN, 1)).toBe(1);
  });

  it('keeps read-only bits: IDs, class, pin, header type, unimplemented command bits', () => {
    const d = makeDevice();
    writeInt(cfg(d), 0, 4, 0xffffffff);
    writeInt(cfg(d), 0x08, 4, 0);
    writeInt(cfg(d), PCI.INTERRUPT_PIN, 1, 4);
    expect(readInt(cfg(d), 0, 4)).toBe(0x10501af4);
    expect(readInt(cfg(d), 0x08, 4)).toBe(0x03000002);
    expect(readInt(cfg(d), PCI.INTERRUPT_PIN, 1)).toBe(1);
    writeInt(cfg(d), PCI.COMMAND, 2, 0xffff);
    const expected = PCI_COMMAND.IO | PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER | PCI_COMMAND.PARITY | PCI_COMMAND.SERR | PCI_COMMAND.INTX_DISABLE;
    expect(readInt(cfg(d), PCI.COMMAND, 2)).toBe(expected);
    writeInt(cfg(d), PCI.INTERRUPT_LINE, 1, 11);
    expect(readInt(cfg(d), PCI.INTERRUPT_LINE, 1)).toBe(11);
  });

  it('hardwires decode enables the function does not implement', () => {
    const d = new PciDevice({ vendorId: 1, deviceId: 2, classCode: 0 });
    d.addBar(0, new Region('r', 4096));
    d.realize();
    writeInt(cfg(d), PCI.COMMAND, 2, PCI_COMMAND.IO | PCI_COMMAND.MEMORY);
    expect(readInt(cfg(d), PCI.COMMAND, 2)).toBe(PCI_COMMAND.MEMORY);
  });

  it('clears status error bits on write-1 and leaves the rest', () => {
    const d = makeDevice();
    d.config.set(PCI.STATUS, 2, d.config.get(PCI.STATUS, 2) | PCI_STATUS.REC_MASTER_ABORT | PCI_STATUS.DETECTED_PARITY);
    writeInt(cfg(d), PCI.STATUS, 2, PCI_STATUS.REC_MASTER_ABORT | PCI_STATUS.CAP_LIST);
    const st = readInt(cfg(d), PCI.STATUS, 2);
    expect(st & PCI_STATUS.REC_MASTER_ABORT).toBe(0);
    expect(st & PCI_STATUS.DETECTED_PARITY).toBe(PCI_STATUS.DETECTED_PARITY);
    expect(st & PCI_STATUS.CAP_LIST).toBe(PCI_STATUS.CAP_LIST);
  });

  it('rejects config accesses past the end', () => {
    const d = makeDevice(256);
    expect(() => d.configRead(0xfe, new Uint8Array(4))).toThrow(expect.objectContaining({ code: 'ERANGE', field: 'offset' }));
    expect(() => d.configWrite(256, new Uint8Array(1))).toThrow(expect.objectContaining({ code: 'ERANGE' }));
  });
});

describe('BARs', () => {
  it('size like firmware does: 32-bit, 64-bit prefetchable, I/O, ROM', () => {
    const d = makeDevice();
    const bars = sizeBars(cfg(d));
    expect(bars).toEqual([
      { index: 0, kind: 'mem32', prefetchable: false, address: 0n, size: 0x4000n },
      { index: 2, kind: 'mem64', prefetchable: true, address: 0n, size: 256n * 1024n * 1024n },
      { index: 4, kind: 'io', prefetchable: false, address: 0n, size: 32n },
    ]);
    writeInt(cfg(d), PCI.BAR0, 4, 0xffffffff);
    expect(readInt(cfg(d), PCI.BAR0, 4)).toBe(0xffffc000);
    writeInt(cfg(d), PCI.BAR0 + 8, 4, 0xffffffff);
    expect(readInt(cfg(d), PCI.BAR0 + 8, 4)).toBe(0xf000000c);
    writeInt(cfg(d), PCI.BAR0 + 16, 4, 0xffffffff);
    expect(readInt(cfg(d), PCI.BAR0 + 16, 4)).toBe(0xffffffe1);
    writeInt(cfg(d), PCI.ROM_ADDRESS, 4, 0xffffffff);
    expect(readInt(cfg(d), PCI.ROM_ADDRESS, 4)).toBe(0xfffff001); // 4 KiB ROM (3000 bytes rounded up)
    expect(readInt(cfg(d), PCI.BAR0 + 4, 4)).toBe(0); // unused slot
    expect(readInt(cfg(d), PCI.BAR0 + 20, 4)).toBe(0);
  });

  it('reports decode changes: program, enable, move, disable, sizing', () => {
    const d = makeDevice();
    const events: BarRemapEvent[] = [];
    d.on('barRemap', (e) => events.push(e));
    writeInt(cfg(d), PCI.BAR0, 4, 0xfe000000);
    writeInt(cfg(d), PCI.BAR0 + 8, 4, 0x00000000);
    writeInt(cfg(d), PCI.BAR0 + 12, 4, 0x1);
    expect(events).toEqual([]); // decoding is off
    writeInt(cfg(d), PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
    expect(events).toEqual([
      { index: 0, from: null, to: 0xfe000000n, size: 0x4000, space: 'mmio' },
      { index: 2, from: null, to: 0x100000000n, size: 0x10000000, space: 'mmio' },
    ]);
    events.length = 0;
    writeInt(cfg(d), PCI.BAR0, 4, 0xfd000000);
    expect(events).toEqual([{ index: 0, from: 0xfe000000n, to: 0xfd000000n, size: 0x4000, space: 'mmio' }]);
    events.length = 0;
    writeInt(cfg(d), PCI.BAR0, 4, 0xffffffff); // sizing while decoding: the range would wrap, unmapped
    expect(events).toEqual([{ index: 0, from: 0xfd000000n, to: null, size: 0x4000, space: 'mmio' }]);
    expect(d.barAddress(0)).toBeNull();
    writeInt(cfg(d), PCI.BAR0 + 16, 4, 0xc000);
    writeInt(cfg(d), PCI.COMMAND, 2, PCI_COMMAND.IO);
    expect(d.barAddress(4)).toBe(0xc000n);
    expect(d.barAddress(2)).toBeNull();
  });

  it('enforces power-of-two sizes and slot rules with named errors', () => {
    const d = new PciDevice({ vendorId: 1, deviceId: 2, classCode: 0 });
    expect(() => d.addBar(0, new Region('r', 3000))).toThrow(expect.objectContaining({ code: 'EINVAL', field: 'region.size' }));
    expect(() => d.addBar(0, new Region('r', 8))).toThrow(expect.objectContaining({ code: 'ERANGE', field: 'region.size' }));
    expect(() => d.addBar(0, new Region('r', 512, { space: 'pio' }))).toThrow(expect.objectContaining({ field: 'region.size' }));
    expect(() => d.addBar(5, new Region('r', 4096), { kind: 'mem64' })).toThrow(expect.objectContaining({ field: 'index' }));
    expect(() => d.addBar(6, new Region('r', 4096))).toThrow(expect.objectContaining({ code: 'ERANGE', field: 'index' }));
    d.addBar(0, new Region('r', 4096), { kind: 'mem64' });
    expect(() => d.addBar(1, new Region('r', 4096))).toThrow(expect.objectContaining({ code: 'EEXIST' }));
    d.realize();
    expect(() => d.addBar(2, new Region('r', 4096))).toThrow(expect.objectContaining({ code: 'EBUSY' }));
  });
});

describe('capabilities', () => {
  it('links the standard list with correct next pointers, and the extended list from 0x100', () => {
    const d = makeDevice();
    const caps = walkCapabilities(cfg(d), 4096);
    expect(caps.map((c) => [c.id, c.offset, c.extended])).toEqual([
      [PCI_CAP_ID.PM, 0x40, false],
      [PCI_CAP_ID.MSI, 0x48, false],
      [PCI_CAP_ID.MSIX, 0x60, false],
      [PCI_CAP_ID.EXP, 0x6c, false],
      [PCI_EXT_CAP_ID.DSN, 0x100, true],
      [PCI_EXT_CAP_ID.VNDR, 0x10c, true],
    ]);
    expect(readInt(cfg(d), 0x6c + 1, 1)).toBe(0); // last standard next pointer
    expect(readInt(cfg(d), 0x10c, 4) >>> 20).toBe(0); // last extended next pointer
    expect(readInt(cfg(d), PCI.STATUS, 2) & PCI_STATUS.CAP_LIST).toBe(PCI_STATUS.CAP_LIST);
  });

  it('keeps capability headers read-only and applies capability write masks', () => {
    const d = makeDevice();
    writeInt(cfg(d), 0x48, 2, 0); // MSI id and next pointer
    expect(readInt(cfg(d), 0x48, 2)).toBe(0x6005);
    writeInt(cfg(d), 0x48 + 2, 2, 0xffff);
    expect(readInt(cfg(d), 0x48 + 2, 2)).toBe(0x01f5); // enable, MME=7, MMC=2 (4 vectors), 64-bit, maskable
    writeInt(cfg(d), 0x48 + 4, 4, 0xfee00003);
    expect(readInt(cfg(d), 0x48 + 4, 4)).toBe(0xfee00000);
    writeInt(cfg(d), 0x48 + 0x10, 4, 0xffffffff);
    expect(readInt(cfg(d), 0x48 + 0x10, 4)).toBe(0xf); // only 4 vectors' mask bits
    writeInt(cfg(d), 0x60 + 2, 2, 0xffff);
    expect(readInt(cfg(d), 0x60 + 2, 2)).toBe(0xc007); // enable + function mask, table size 8
    writeInt(cfg(d), 0x60 + 4, 4, 0);
    expect(readInt(cfg(d), 0x60 + 4, 4)).toBe(0x2000);
    writeInt(cfg(d), 0x100, 4, 0);
    expect(readInt(cfg(d), 0x100, 4) & 0xffff).toBe(PCI_EXT_CAP_ID.DSN);
  });

  it('refuses extended capabilities in 256-byte config space and overlapping placements', () => {
    const d = new PciDevice({ vendorId: 1, deviceId: 2, classCode: 0 });
    expect(() => d.addDeviceSerialNumber(1n)).toThrow(expect.objectContaining({ field: 'extended' }));
    d.addPowerManagement(0x40);
    expect(() => d.addVendorSpecific(new Uint8Array(4), undefined, 0x44)).toThrow(expect.objectContaining({ code: 'EEXIST' }));
    expect(() => d.addMsi({ vectors: 3 })).toThrow(expect.objectContaining({ field: 'msi.vectors' }));
    expect(() => d.addMsix({ vectors: 0, tableBar: 0 })).toThrow(expect.objectContaining({ field: 'msix.vectors' }));
  });

  it('fails realize when the MSI-X table BAR is missing', () => {
    const d = new PciDevice({ vendorId: 1, deviceId: 2, classCode: 0 });
    d.addMsix({ vectors: 2, tableBar: 1 });
    expect(() => d.realize()).toThrow(expect.objectContaining({ field: 'msix.tableBar' }));
  });

  it('initiating FLR resets the function and the bit reads back 0', () => {
    const d = makeDevice();
    let resets = 0;
    d.on('reset', () => resets++);
    writeInt(cfg(d), PCI.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
    writeInt(cfg(d), PCI.INTERRUPT_LINE, 1, 5);
    const devctl = 0x6c + PCI_EXP.DEVCTL;
    writeInt(cfg(d), devctl, 2, readInt(cfg(d), devctl, 2) | PCI_EXP.DEVCTL_BCR_FLR);
    expect(resets).toBe(1);
    expect(readInt(cfg(d), devctl, 2) & PCI_EXP.DEVCTL_BCR_FLR).toBe(0);
    expect(readInt(cfg(d), PCI.COMMAND, 2)).toBe(0);
    expect(readInt(cfg(d), PCI.INTERRUPT_LINE, 1)).toBe(0);
  });
});

describe('lspci decoding', () => {
  it('prints the header, BARs, ROM and every capability', () => {
    const text = formatLspci(cfg(makeDevice()), { configSize: 4096 });
    expect(text).toContain('VGA compatible controller [0300]: Device 1af4:1050 (rev 02)');
    expect(text).toContain('Region 0: Memory at <unassigned> (32-bit, non-prefetchable) [disabled] [size=16K]');
    expect(text).toContain('Region 2: Memory at <unassigned> (64-bit, prefetchable) [disabled] [size=256M]');
    expect(text).toContain('Region 4: I/O ports at <unassigned> [disabled] [size=32]');
    expect(text).toContain('Expansion ROM at <unassigned> [disabled] [size=4K]');
    expect(text).toContain('Capabilities: [48] MSI: Enable- Count=1/4 Maskable+ 64bit+');
    expect(text).toContain('Capabilities: [60] MSI-X: Enable- Count=8 Masked-');
    expect(text).toContain('Vector table: BAR=0 offset=00002000');
    expect(text).toContain('Capabilities: [6c] Express (v2) Endpoint, MSI 00');
    expect(text).toContain('FLReset+');
    expect(text).toContain('Capabilities: [100 v1] Device Serial Number 00-11-22-33-44-55-66-77');
    expect(text).toContain('Capabilities: [10c v1] Vendor Specific Information: ID=1234 Rev=1 Len=00c');
  });

  it('sizing leaves the BARs and command register as they were', () => {
    const d = makeDevice();
    writeInt(cfg(d), PCI.BAR0, 4, 0xfe000000);
    writeInt(cfg(d), PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
    const before = new Uint8Array(64);
    d.configRead(0, before);
    formatLspci(cfg(d), { configSize: 4096 });
    const after = new Uint8Array(64);
    d.configRead(0, after);
    expect(after).toEqual(before);
    expect(d.barAddress(0)).toBe(0xfe000000n);
  });

  it('stops on a capability loop', () => {
    const d = new PciDevice({ vendorId: 1, deviceId: 2, classCode: 0 });
    const a = d.addVendorSpecific(new Uint8Array(1));
    d.config.set(a.offset + 1, 1, a.offset); // points at itself
    expect(walkCapabilities(d.configAccessor, 256)).toHaveLength(1);
  });
});

describe('identity validation', () => {
  it('names the bad field', () => {
    expect(() => new PciDevice({ vendorId: 0xffff, deviceId: 0, classCode: 0 })).toThrow(expect.objectContaining({ field: 'vendorId' }));
    expect(() => new PciDevice({ vendorId: 1, deviceId: -1, classCode: 0 })).toThrow(expect.objectContaining({ code: 'ERANGE', field: 'deviceId' }));
    expect(() => new PciDevice({ vendorId: 1, deviceId: 1, classCode: 2 ** 24 })).toThrow(expect.objectContaining({ field: 'classCode' }));
    expect(() => new PciDevice({ vendorId: 1, deviceId: 1, classCode: 0, configSize: 512 as 256 })).toThrow(expect.objectContaining({ field: 'configSize' }));
    expect(() => new PciDevice({ vendorId: '1' as unknown as number, deviceId: 1, classCode: 0 })).toThrow(expect.objectContaining({ code: 'EINVAL', field: 'vendorId' }));
  });
});
