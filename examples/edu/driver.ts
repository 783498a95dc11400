/**
 * A guest driver for the edu device, written once against the neutral interface: it checks the
 * identity and liveness registers, computes factorials, moves data by DMA both ways through guest
 * RAM, and takes interrupts (MSI when the device has it). It returns what it observed so runs over
 * different mediation paths can be compared.
 * @module
 */
import { findCapability, PCI, PCI_COMMAND, PCI_MSI, type DriverResult, type GuestDriverHost, type MigrationGuestDriver } from 'mdevkit';
import { EDU } from './index.js';


/** Runs the edu driver. */
export default function eduDriver(host: GuestDriverHost): DriverResult {
  const r32 = (off: number) => Number(host.mmioRead(0, off, 4));
  const w32 = (off: number, v: number) => host.mmioWrite(0, off, 4, v);
  const w64 = (off: number, v: number) => host.mmioWrite(0, off, 8, BigInt(v));
  const vendor = host.cfgRead(PCI.VENDOR_ID, 2);
  const device = host.cfgRead(PCI.DEVICE_ID, 2);
  host.cfgWrite(PCI.COMMAND, 2, host.cfgRead(PCI.COMMAND, 2) | PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  // The start bit clears when a transfer is done: it may finish after the write that started it.
  const waitDma = () => {
    for (let i = 0; i < 100_000; i++) if ((BigInt(host.mmioRead(0, EDU.DMA_CMD, 8)) & BigInt(EDU.DMA_START)) === 0n) return;
    throw new Error('edu: DMA did not complete');
  };
  const id = r32(EDU.ID);
  w32(EDU.LIVENESS, 0x12345678);
  const liveness = r32(EDU.LIVENESS);
  const factorials: number[] = [];
  for (const n of [0, 1, 5, 10, 12]) {
    w32(EDU.FACTORIAL, n);
    factorials.push(r32(EDU.FACTORIAL));
  }
  // DMA: a pattern from guest RAM into the device buffer and back to another place in RAM.
  const src = host.ram.base + 0x1000;
  const dst = host.ram.base + 0x3ffc; // straddles a page
  const pattern = Uint8Array.from({ length: 64 }, (_, i) => (i * 7 + 3) & 0xff);
  host.ram.write(src, pattern);
  w64(EDU.DMA_SRC, src);
  w64(EDU.DMA_DST, EDU.DMA_BUFFER);
  w64(EDU.DMA_COUNT, pattern.length);
  w64(EDU.DMA_CMD, EDU.DMA_START);
  waitDma();
  w64(EDU.DMA_SRC, EDU.DMA_BUFFER);
  w64(EDU.DMA_DST, dst);
  w64(EDU.DMA_CMD, EDU.DMA_START | EDU.DMA_TO_RAM);
  waitDma();
  const back = host.ram.read(dst, pattern.length);
  const dmaOk = back.every((b, i) => b === pattern[i]);
  // Interrupts: MSI when present (the VMM side wires it when the guest enables it), else INTx.
  const msi = findCapability(host, 0x05);
  if (msi) {
    host.cfgWrite(msi + PCI_MSI.ADDRESS_LO, 4, 0xfee00000);
    host.cfgWrite(msi + PCI_MSI.ADDRESS_HI, 4, 0);
    host.cfgWrite(msi + PCI_MSI.DATA_64, 2, 0x0041);
    host.cfgWrite(msi + PCI_MSI.FLAGS, 2, PCI_MSI.FLAGS_ENABLE);
  }
  const irqsBefore = host.interruptCount();
  w32(EDU.IRQ_RAISE, 0x8);
  const gotIrq = host.waitForInterrupt(5000);
  const irqStatus = r32(EDU.IRQ_STATUS);
  w32(EDU.IRQ_ACK, 0x8);
  w32(EDU.STATUS, EDU.STATUS_IRQ_FACT); // interrupt on factorial completion
  w32(EDU.FACTORIAL, 4);
  const gotFactIrq = host.waitForInterrupt(5000);
  w32(EDU.IRQ_ACK, 0xffffffff);
  return {
    vendor,
    device,
    id,
    liveness,
    factorials,
    dmaOk,
    msi: msi !== 0,
    gotIrq,
    gotFactIrq,
    irqStatus,
    interrupts: host.interruptCount() - irqsBefore,
    finalIrqStatus: r32(EDU.IRQ_STATUS),
  };
}

/** The pattern the migration halves move through edu's DMA buffer. */
function migrationPattern(): Uint8Array {
  return Uint8Array.from({ length: 256 }, (_, i) => (i * 13 + 5) & 0xff);
}

/**
 * The edu driver in two halves around a migration or save/restore. `before` leaves registers
 * set, data in the device's DMA buffer and an interrupt pending behind the MSI mask; `after`
 * reads all of it back, unmasks (the pending interrupt arrives), and moves the buffer to guest RAM.
 */
export const migration: MigrationGuestDriver = {
  before(host: GuestDriverHost): DriverResult {
    const r32 = (off: number) => Number(host.mmioRead(0, off, 4));
    const w32 = (off: number, v: number) => host.mmioWrite(0, off, 4, v);
    const w64 = (off: number, v: number) => host.mmioWrite(0, off, 8, BigInt(v));
    host.cfgWrite(PCI.COMMAND, 2, host.cfgRead(PCI.COMMAND, 2) | PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
    w32(EDU.LIVENESS, 0x0badf00d);
    w32(EDU.FACTORIAL, 9);
    const src = host.ram.base + 0x2000;
    host.ram.write(src, migrationPattern());
    w64(EDU.DMA_SRC, src);
    w64(EDU.DMA_DST, EDU.DMA_BUFFER + 0x100);
    w64(EDU.DMA_COUNT, 256);
    w64(EDU.DMA_CMD, EDU.DMA_START);
    for (let i = 0; i < 100_000 && (BigInt(host.mmioRead(0, EDU.DMA_CMD, 8)) & BigInt(EDU.DMA_START)) !== 0n; i++);
    // MSI with its vector masked: the raise below stays pending in the capability.
    const msi = findCapability(host, 0x05);
    host.cfgWrite(msi + PCI_MSI.ADDRESS_LO, 4, 0xfee00000);
    host.cfgWrite(msi + PCI_MSI.ADDRESS_HI, 4, 0);
    host.cfgWrite(msi + PCI_MSI.DATA_64, 2, 0x0042);
    host.cfgWrite(msi + PCI_MSI.MASK_64, 4, 1);
    host.cfgWrite(msi + PCI_MSI.FLAGS, 2, PCI_MSI.FLAGS_ENABLE);
    w32(EDU.IRQ_RAISE, 0x40);
    return { liveness: r32(EDU.LIVENESS), factorial: r32(EDU.FACTORIAL), irqStatus: r32(EDU.IRQ_STATUS), msiPending: host.cfgRead(msi + PCI_MSI.PENDING_64, 4) };
  },

  after(host: GuestDriverHost): DriverResult {
    const r32 = (off: number) => Number(host.mmioRead(0, off, 4));
    const w32 = (off: number, v: number) => host.mmioWrite(0, off, 4, v);
    const w64 = (off: number, v: number) => host.mmioWrite(0, off, 8, BigInt(v));
    const msi = findCapability(host, 0x05);
    const seen = { liveness: r32(EDU.LIVENESS), factorial: r32(EDU.FACTORIAL), irqStatus: r32(EDU.IRQ_STATUS), msiPending: host.cfgRead(msi + PCI_MSI.PENDING_64, 4) };
    const buffer: number[] = [];
    for (let i = 0; i < 256; i += 4) buffer.push(r32(EDU.DMA_BUFFER + 0x100 + i));
    const bufferOk = Buffer.from(new Uint32Array(buffer).buffer).equals(Buffer.from(migrationPattern()));
    // Unmasking delivers what the device held pending while it moved.
    const irqsBefore = host.interruptCount();
    host.cfgWrite(msi + PCI_MSI.MASK_64, 4, 0);
    const pendingDelivered = host.waitForInterrupt(5000);
    w32(EDU.IRQ_ACK, 0x40);
    // The device keeps working: its buffer out to guest RAM, a factorial.
    const dst = host.ram.base + 0x6000;
    w64(EDU.DMA_SRC, EDU.DMA_BUFFER + 0x100);
    w64(EDU.DMA_DST, dst);
    w64(EDU.DMA_COUNT, 256);
    w64(EDU.DMA_CMD, EDU.DMA_START | EDU.DMA_TO_RAM);
    for (let i = 0; i < 100_000 && (BigInt(host.mmioRead(0, EDU.DMA_CMD, 8)) & BigInt(EDU.DMA_START)) !== 0n; i++);
    const ramOk = Buffer.from(host.ram.read(dst, 256)).equals(Buffer.from(migrationPattern()));
    w32(EDU.FACTORIAL, 6);
    return {
      ...seen,
      bufferOk,
      pendingDelivered,
      interrupts: host.interruptCount() - irqsBefore,
      irqStatusAfterAck: r32(EDU.IRQ_STATUS),
      ramOk,
      factorialAfter: r32(EDU.FACTORIAL),
      id: r32(EDU.ID),
    };
  },
};
