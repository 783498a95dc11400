import { describe, expect, it } from 'vitest';
import { EduDevice, EDU } from '../../examples/edu/index.js';
import { WindowedGuestMemory } from '../../src/guest-memory.js';
import type { MsiMessage } from '../../src/irq.js';
import { PCI, PCI_COMMAND, PCI_MSI } from '../../src/pci/constants.js';
import { readInt, writeInt } from '../helpers.js';

function setup() {
  const d = new EduDevice().realize();
  const bar = d.bars[0]!.region;
  const ram = new Uint8Array(0x10000);
  const mem = new WindowedGuestMemory();
  mem.addWindow({ gpa: 0x100000, bytes: ram, writable: true });
  const dirty: [number, number][] = [];
  mem.dirtyLog = { markDirty: (gpa, len) => dirty.push([gpa, len]) };
  d.attachGuestMemory(mem);
  const intx: boolean[] = [];
  const msis: MsiMessage[] = [];
  d.irq.attach({ setIntx: (l) => intx.push(l), sendMsi: (m) => msis.push(m) });
  return { d, bar, ram, dirty, intx, msis, cfg: d.configAccessor };
}

describe('edu device', () => {
  it('identifies itself and answers the liveness check', () => {
    const { bar } = setup();
    expect(readInt(bar, EDU.ID, 4)).toBe(0x010000ed);
    writeInt(bar, EDU.ID, 4, 0);
    expect(readInt(bar, EDU.ID, 4)).toBe(0x010000ed);
    writeInt(bar, EDU.LIVENESS, 4, 0x0f0f0000);
    expect(readInt(bar, EDU.LIVENESS, 4)).toBe(0xf0f0ffff);
  });

  it('computes factorials and raises INTx when asked, lowered by ack', () => {
    const { bar, intx } = setup();
    writeInt(bar, EDU.FACTORIAL, 4, 12);
    expect(readInt(bar, EDU.FACTORIAL, 4)).toBe(479001600);
    expect(intx).toEqual([]);
    writeInt(bar, EDU.STATUS, 4, 0xff);
    expect(readInt(bar, EDU.STATUS, 4)).toBe(EDU.STATUS_IRQ_FACT);
    writeInt(bar, EDU.FACTORIAL, 4, 5);
    expect(readInt(bar, EDU.IRQ_STATUS, 4)).toBe(EDU.IRQ_FACTORIAL);
    expect(intx).toEqual([true]);
    writeInt(bar, EDU.IRQ_ACK, 4, EDU.IRQ_FACTORIAL);
    expect(intx).toEqual([true, false]);
    expect(readInt(bar, EDU.IRQ_STATUS, 4)).toBe(0);
  });

  it('answers huge factorial inputs at once (n! mod 2^32 is 0 from 34 on)', () => {
    const { bar } = setup();
    writeInt(bar, EDU.FACTORIAL, 4, 33);
    expect(readInt(bar, EDU.FACTORIAL, 4)).toBe(2147483648);
    writeInt(bar, EDU.FACTORIAL, 4, 0xffffffff);
    expect(readInt(bar, EDU.FACTORIAL, 4)).toBe(0);
  });

  it('uses MSI when the guest enables it', () => {
    const { d, bar, cfg, msis, intx } = setup();
    const o = d.msi!.offset;
    writeInt(cfg, o + PCI_MSI.ADDRESS_LO, 4, 0xfee00000);
    writeInt(cfg, o + PCI_MSI.DATA_64, 2, 0x41);
    writeInt(cfg, o + PCI_MSI.FLAGS, 2, PCI_MSI.FLAGS_ENABLE);
    writeInt(bar, EDU.IRQ_RAISE, 4, 0x8);
    expect(msis).toEqual([{ kind: 'msi', vector: 0, address: 0xfee00000n, data: 0x41 }]);
    expect(intx).toEqual([]);
  });

  it('moves data by DMA both ways, dirty-tracks device writes and raises the DMA interrupt', () => {
    const { bar, cfg, ram, dirty, intx } = setup();
    writeInt(cfg, PCI.COMMAND, 2, PCI_COMMAND.MASTER);
    ram.set([1, 2, 3, 4, 5], 0x200);
    writeInt(bar, EDU.DMA_SRC, 8, 0x100200);
    writeInt(bar, EDU.DMA_DST, 8, EDU.DMA_BUFFER + 16);
    writeInt(bar, EDU.DMA_COUNT, 8, 5);
    writeInt(bar, EDU.DMA_CMD, 8, EDU.DMA_START);
    expect(readInt(bar, EDU.DMA_CMD, 8)).toBe(0);
    const got = new Uint8Array(5);
    bar.read(EDU.DMA_BUFFER + 16, got);
    expect([...got]).toEqual([1, 2, 3, 4, 5]);
    expect(dirty).toEqual([]);
    writeInt(bar, EDU.DMA_SRC, 8, EDU.DMA_BUFFER + 16);
    writeInt(bar, EDU.DMA_DST, 8, 0x100ffe); // straddles a page boundary
    writeInt(bar, EDU.DMA_CMD, 8, EDU.DMA_START | EDU.DMA_TO_RAM | EDU.DMA_IRQ);
    expect([...ram.subarray(0xffe, 0x1003)]).toEqual([1, 2, 3, 4, 5]);
    expect(dirty).toEqual([[0x100ffe, 5]]);
    expect(readInt(bar, EDU.IRQ_STATUS, 4)).toBe(EDU.IRQ_DMA);
    expect(intx).toEqual([true]);
  });

  it('refuses DMA without bus mastering, outside guest memory, or past the buffer', () => {
    const { d, bar, cfg, ram } = setup();
    ram.fill(0xaa, 0, 16);
    writeInt(bar, EDU.DMA_SRC, 8, 0x100000);
    writeInt(bar, EDU.DMA_DST, 8, EDU.DMA_BUFFER);
    writeInt(bar, EDU.DMA_COUNT, 8, 16);
    writeInt(bar, EDU.DMA_CMD, 8, EDU.DMA_START);
    expect(d.lastDmaError).toMatchObject({ code: 'EPERM' });
    expect(d.buffer[0]).toBe(0);
    writeInt(cfg, PCI.COMMAND, 2, PCI_COMMAND.MASTER);
    writeInt(bar, EDU.DMA_SRC, 8, 0x200000);
    writeInt(bar, EDU.DMA_CMD, 8, EDU.DMA_START);
    expect(d.lastDmaError).toMatchObject({ code: 'EFAULT' });
    writeInt(bar, EDU.DMA_SRC, 8, 0x100000);
    writeInt(bar, EDU.DMA_COUNT, 8, 4097);
    writeInt(bar, EDU.DMA_CMD, 8, EDU.DMA_START);
    expect(d.lastDmaError).toMatchObject({ code: 'ERANGE' });
    writeInt(bar, EDU.DMA_COUNT, 8, 16);
    writeInt(bar, EDU.DMA_CMD, 8, EDU.DMA_START);
    expect(d.lastDmaError).toBeNull();
    expect(d.buffer[15]).toBe(0xaa);
  });

  it('reset returns registers, buffer and interrupt to power-on state', () => {
    const { d, bar, intx } = setup();
    writeInt(bar, EDU.LIVENESS, 4, 1);
    writeInt(bar, EDU.IRQ_RAISE, 4, 1);
    bar.write(EDU.DMA_BUFFER, new Uint8Array([7]));
    d.reset();
    expect(readInt(bar, EDU.LIVENESS, 4)).toBe(0);
    expect(readInt(bar, EDU.IRQ_STATUS, 4)).toBe(0);
    expect(d.buffer[0]).toBe(0);
    expect(intx).toEqual([true, false]);
  });
});
