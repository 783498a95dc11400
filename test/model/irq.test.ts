import { describe, expect, it } from 'vitest';
import { PciDevice } from '../../src/pci/device.js';
import { Region } from '../../src/regions.js';
import type { IrqSink, MsiMessage } from '../../src/irq.js';
import { PCI, PCI_COMMAND, PCI_MSI, PCI_MSIX, PCI_STATUS } from '../../src/pci/constants.js';
import { readInt, writeInt } from '../helpers.js';

class RecordingSink implements IrqSink {
  intx: boolean[] = [];
  msgs: MsiMessage[] = [];
  setIntx(asserted: boolean) {
    this.intx.push(asserted);
  }
  sendMsi(m: MsiMessage) {
    this.msgs.push(m);
  }
}

function setup(opts: { msi?: boolean; msix?: boolean } = {}) {
  const d = new PciDevice({ vendorId: 1, deviceId: 2, classCode: 0 });
  d.addBar(0, new Region('regs', 0x4000));
  const msi = opts.msi ? d.addMsi({ vectors: 8, addr64: true, perVectorMask: true }) : null;
  const msix = opts.msix ? d.addMsix({ vectors: 4, tableBar: 0, tableOffset: 0x1000, pbaOffset: 0x1800 }) : null;
  d.realize();
  const sink = new RecordingSink();
  d.irq.attach(sink);
  const bar = d.bars[0]!.region;
  return { d, sink, msi, msix, cfg: d.configAccessor, bar };
}

describe('INTx', () => {
  it('asserts and deasserts, mirrors the status Interrupt bit, honours Interrupt Disable', () => {
    const { d, sink, cfg } = setup();
    expect(d.irq.raise()).toBe('intx');
    expect(sink.intx).toEqual([true]);
    expect(readInt(cfg, PCI.STATUS, 2) & PCI_STATUS.INTERRUPT).toBe(PCI_STATUS.INTERRUPT);
    writeInt(cfg, PCI.COMMAND, 2, PCI_COMMAND.INTX_DISABLE);
    expect(sink.intx).toEqual([true, false]);
    // The status bit still reflects the device's pin while delivery is disabled.
    expect(readInt(cfg, PCI.STATUS, 2) & PCI_STATUS.INTERRUPT).toBe(PCI_STATUS.INTERRUPT);
    writeInt(cfg, PCI.COMMAND, 2, 0);
    expect(sink.intx).toEqual([true, false, true]);
    d.irq.lower();
    expect(sink.intx).toEqual([true, false, true, false]);
    expect(readInt(cfg, PCI.STATUS, 2) & PCI_STATUS.INTERRUPT).toBe(0);
    expect(d.irq.stats.intxAssertions).toBe(2);
  });

  it('replays the current level to a newly attached sink', () => {
    const { d } = setup();
    d.irq.raise();
    const late = new RecordingSink();
    d.irq.attach(late);
    expect(late.intx).toEqual([true]);
  });
});

describe('MSI', () => {
  it('is disabled until enabled, then sends with the vector folded into the data', () => {
    const { d, sink, cfg, msi } = setup({ msi: true });
    const o = msi!.offset;
    expect(d.irq.raiseMsi(0)).toBe('disabled');
    writeInt(cfg, o + PCI_MSI.ADDRESS_LO, 4, 0xfee01000);
    writeInt(cfg, o + PCI_MSI.ADDRESS_HI, 4, 0x1);
    writeInt(cfg, o + PCI_MSI.DATA_64, 2, 0x4020);
    writeInt(cfg, o + PCI_MSI.FLAGS, 2, PCI_MSI.FLAGS_ENABLE | (2 << 4)); // 4 vectors enabled
    expect(d.irq.raise(3)).toBe('sent');
    expect(sink.msgs).toEqual([{ kind: 'msi', vector: 3, address: 0x1fee01000n, data: 0x4023 }]);
    expect(() => d.irq.raiseMsi(4)).toThrow(expect.objectContaining({ code: 'ERANGE', field: 'vector' }));
    // With MSI enabled, INTx is not delivered.
    expect(sink.intx).toEqual([]);
  });

  it('holds masked vectors pending and delivers them when unmasked', () => {
    const { d, sink, cfg, msi } = setup({ msi: true });
    const o = msi!.offset;
    writeInt(cfg, o + PCI_MSI.FLAGS, 2, PCI_MSI.FLAGS_ENABLE | (3 << 4));
    writeInt(cfg, o + PCI_MSI.MASK_64, 4, 0b0100);
    expect(d.irq.raiseMsi(2)).toBe('pending');
    expect(readInt(cfg, o + PCI_MSI.PENDING_64, 4)).toBe(0b0100);
    writeInt(cfg, o + PCI_MSI.PENDING_64, 4, 0); // pending bits are read-only to the guest
    expect(d.irq.msiPending(2)).toBe(true);
    expect(sink.msgs).toEqual([]);
    writeInt(cfg, o + PCI_MSI.MASK_64, 4, 0);
    expect(sink.msgs.map((m) => m.vector)).toEqual([2]);
    expect(readInt(cfg, o + PCI_MSI.PENDING_64, 4)).toBe(0);
  });
});

describe('MSI-X', () => {
  function enable(cfg: PciDevice['configAccessor'], off: number, extra = 0) {
    writeInt(cfg, off + PCI_MSIX.FLAGS, 2, PCI_MSIX.FLAGS_ENABLE | extra);
  }

  it('entries start masked; programming and unmasking an entry delivers its message', () => {
    const { d, sink, cfg, msix, bar } = setup({ msix: true });
    enable(cfg, msix!.offset);
    expect(readInt(bar, 0x1000 + 12, 4)).toBe(1); // vector control: masked after reset
    expect(d.irq.raise(1)).toBe('pending');
    expect(readInt(bar, 0x1800, 8)).toBe(0b10); // PBA through the BAR
    writeInt(bar, 0x1000 + 16, 8, 0xfee00000n);
    writeInt(bar, 0x1000 + 16 + 8, 4, 0x31);
    writeInt(bar, 0x1000 + 16 + 12, 4, 0); // unmask entry 1 → pending message goes out
    expect(sink.msgs).toEqual([{ kind: 'msix', vector: 1, address: 0xfee00000n, data: 0x31 }]);
    expect(readInt(bar, 0x1800, 8)).toBe(0);
    expect(d.irq.raise(1)).toBe('sent');
    expect(d.irq.stats.msixSent).toBe(2);
  });

  it('the function mask holds every vector pending until cleared', () => {
    const { d, sink, cfg, msix, bar } = setup({ msix: true });
    for (let v = 0; v < 4; v++) writeInt(bar, 0x1000 + v * 16 + 12, 4, 0);
    enable(cfg, msix!.offset, PCI_MSIX.FLAGS_MASKALL);
    expect(d.irq.raise(0)).toBe('pending');
    expect(d.irq.raise(3)).toBe('pending');
    expect(d.irq.msixPending(3)).toBe(true);
    enable(cfg, msix!.offset);
    expect(sink.msgs.map((m) => m.vector)).toEqual([0, 3]);
    writeInt(bar, 0x1800, 8, 0xffn); // the PBA is read-only
    expect(readInt(bar, 0x1800, 8)).toBe(0);
    expect(() => d.irq.raiseMsix(4)).toThrow(expect.objectContaining({ code: 'ERANGE' }));
  });

  it('reset masks every entry and clears pending bits', () => {
    const { d, cfg, msix, bar } = setup({ msix: true });
    writeInt(bar, 0x1000 + 12, 4, 0);
    enable(cfg, msix!.offset, PCI_MSIX.FLAGS_MASKALL);
    d.irq.raise(0);
    d.reset();
    expect(readInt(bar, 0x1000 + 12, 4)).toBe(1);
    expect(readInt(bar, 0x1800, 8)).toBe(0);
    expect(readInt(cfg, msix!.offset + PCI_MSIX.FLAGS, 2)).toBe(3);
  });

  it('when the VMM owns the table, ignores entry masks but honours the function mask', () => {
    const { d, sink, cfg, msix } = setup({ msix: true });
    d.irq.setMsixTableOwnedByVmm(true);
    enable(cfg, msix!.offset);
    expect(d.irq.raise(2)).toBe('sent');
    expect(sink.msgs).toEqual([{ kind: 'msix', vector: 2, address: 0n, data: 0 }]);
    enable(cfg, msix!.offset, PCI_MSIX.FLAGS_MASKALL);
    expect(d.irq.raise(1)).toBe('pending');
    enable(cfg, msix!.offset);
    expect(sink.msgs.map((m) => m.vector)).toEqual([2, 1]);
  });

  it('refuses to place the MSI-X table in a mappable area', () => {
    const d = new PciDevice({ vendorId: 1, deviceId: 2, classCode: 0 });
    const bytes = new Uint8Array(8192);
    d.addBar(0, new Region('ram', 8192, { backing: { bytes, fd: null, fdOffset: 0 }, mmapAreas: [{ offset: 0, size: 8192 }] }));
    d.addMsix({ vectors: 1, tableBar: 0 });
    expect(() => d.realize()).toThrow(/must trap/);
  });
});
