/**
 * A guest driver for the XOR DMA engine, written once against mdevkit's neutral guest-driver
 * interface: it runs over vfio-user (the client playing the VMM — see test/device.test.ts) and on
 * a simulated Xen vCPU (`npm run compare`), and returns what it observed so the two can be compared.
 */
import { PCI, PCI_CAP_ID, PCI_COMMAND, PCI_MSI, findCapability, type DriverResult, type GuestDriverHost } from 'mdevkit';
import { CONTROL, ID_VALUE, REG, STATUS } from './device.js';

/** Runs the driver. */
export default function xorDmaDriver(host: GuestDriverHost): DriverResult {
  const r32 = (off: number) => Number(host.mmioRead(0, off, 4));
  const w32 = (off: number, v: number) => host.mmioWrite(0, off, 4, v);
  const w64 = (off: number, v: number) => host.mmioWrite(0, off, 8, BigInt(v));

  // Enumerate and enable: memory decoding and bus mastering (the device may then DMA).
  const vendor = host.cfgRead(PCI.VENDOR_ID, 2);
  const device = host.cfgRead(PCI.DEVICE_ID, 2);
  host.cfgWrite(PCI.COMMAND, 2, host.cfgRead(PCI.COMMAND, 2) | PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  const id = r32(REG.ID);

  // MSI: program an address and data, then enable it (the VMM side wires the interrupt).
  const msi = findCapability(host, PCI_CAP_ID.MSI);
  if (msi) {
    host.cfgWrite(msi + PCI_MSI.ADDRESS_LO, 4, 0xfee00000);
    host.cfgWrite(msi + PCI_MSI.ADDRESS_HI, 4, 0);
    host.cfgWrite(msi + PCI_MSI.DATA_64, 2, 0x0041);
    host.cfgWrite(msi + PCI_MSI.FLAGS, 2, host.cfgRead(msi + PCI_MSI.FLAGS, 2) | PCI_MSI.FLAGS_ENABLE);
  }

  // One transfer through guest RAM, completion by interrupt.
  const src = host.ram.base + 0x1000;
  const dst = host.ram.base + 0x2ff0; // straddles a page boundary
  const input = Uint8Array.from({ length: 300 }, (_, i) => (i * 13 + 5) & 0xff);
  host.ram.write(src, input);
  w64(REG.SRC, src);
  w64(REG.DST, dst);
  w32(REG.LEN, input.length);
  w32(REG.KEY, 0x5a);
  w32(REG.CONTROL, CONTROL.IRQ);
  const before = host.interruptCount();
  w32(REG.DOORBELL, 1);
  const gotIrq = host.waitForInterrupt(5000);
  const status = r32(REG.STATUS);
  w32(REG.STATUS, STATUS.DONE); // write 1 to clear
  const output = host.ram.read(dst, input.length);

  return {
    vendor,
    device,
    idOk: id === ID_VALUE,
    msi: msi !== 0,
    gotIrq,
    interrupts: host.interruptCount() - before,
    done: (status & STATUS.DONE) !== 0,
    statusAfterClear: r32(REG.STATUS),
    checksum: r32(REG.CHECKSUM),
    expectedChecksum: input.reduce((a, b) => a + b, 0),
    xorOk: output.every((b, i) => b === (input[i]! ^ 0x5a)),
    completed: r32(REG.COMPLETED),
  };
}
