/**
 * An educational PCI device in the style of QEMU's `edu`: an ID register, a liveness check, a
 * factorial unit, interrupt raise/ack registers, and a DMA engine moving data between guest memory
 * and a 4 KiB on-device buffer. It is the smallest device that exercises every part of the model:
 * registers with hooks, MSI with INTx fallback, bus-master DMA, reset and save/restore.
 *
 * BAR0 (1 MiB MMIO) layout:
 * | off  | name       | access | meaning |
 * |------|------------|--------|---------|
 * | 0x00 | ID         | RO     | 0x010000ed: major 1, minor 0, 0xed |
 * | 0x04 | LIVENESS   | RW     | reads back the bitwise inverse of the last write |
 * | 0x08 | FACTORIAL  | RW     | write n: computes n! (mod 2^32) and stores it here |
 * | 0x20 | STATUS     | RW     | bit 0 busy (RO), bit 7: raise interrupt 0x1 when a factorial completes |
 * | 0x24 | IRQ_STATUS | RO     | raised interrupt bits |
 * | 0x60 | IRQ_RAISE  | WO     | ORs the written bits into IRQ_STATUS and raises the interrupt |
 * | 0x64 | IRQ_ACK    | WO     | clears the written bits; the interrupt lowers when none remain |
 * | 0x80 | DMA_SRC    | RW 64  | source address (guest physical, or buffer offset 0x40000 + n) |
 * | 0x88 | DMA_DST    | RW 64  | destination address |
 * | 0x90 | DMA_COUNT  | RW 64  | bytes to move (≤ 4096) |
 * | 0x98 | DMA_CMD    | RW 64  | bit 0 start, bit 1 direction (0: RAM→buffer, 1: buffer→RAM), bit 2 raise 0x100 when done |
 * | 0x40000 | buffer  | RW     | the 4 KiB DMA buffer, also readable/writable by MMIO |
 *
 * Every guest-triggered handler is bounded: a DMA_CMD write with the start bit moves at most one
 * buffer (4096 bytes) in one transfer; a count above that, a buffer range outside the buffer, or a
 * guest address no transfer can reach fails the transfer as a whole (nothing moves; the start bit
 * clears, {@link EduDevice.lastDmaError} says why — edu has no error register, like QEMU's). A
 * factorial takes at most 33 multiplications whatever is written. {@link EduDevice.dmaBytes} counts
 * what moved.
 * @module
 */
import { MdevError, PciDevice, Region, RegisterBlock, type StateSection } from 'mdevkit';

/** Register offsets of the edu device. */
export const EDU = {
  ID: 0x00,
  LIVENESS: 0x04,
  FACTORIAL: 0x08,
  STATUS: 0x20,
  IRQ_STATUS: 0x24,
  IRQ_RAISE: 0x60,
  IRQ_ACK: 0x64,
  DMA_SRC: 0x80,
  DMA_DST: 0x88,
  DMA_COUNT: 0x90,
  DMA_CMD: 0x98,
  DMA_BUFFER: 0x40000,
  DMA_BUFFER_SIZE: 4096,
  BAR0_SIZE: 1 << 20,
  ID_VALUE: 0x010000ed,
  STATUS_BUSY: 0x1,
  STATUS_IRQ_FACT: 0x80,
  IRQ_FACTORIAL: 0x1,
  IRQ_DMA: 0x100,
  DMA_START: 0x1,
  DMA_TO_RAM: 0x2,
  DMA_IRQ: 0x4,
} as const;

/** Identity of the edu device. */
export const EDU_IDENTITY = { vendorId: 0x1234, deviceId: 0x11e8, classCode: 0x00ff00, revision: 0x10 } as const;

function factorial(n: number): number {
  // n! mod 2^32 is 0 for every n >= 34 (the product has at least 32 factors of two): stopping there
  // keeps a guest write of 0xffffffff from holding the server for seconds.
  if (n >= 34) return 0;
  let r = 1;
  for (let i = 2; i <= n; i++) r = Math.imul(r, i) >>> 0;
  return r >>> 0;
}

/** The edu device. */
export class EduDevice extends PciDevice {
  /** BAR0's register block. */
  readonly regs;
  /** The on-device DMA buffer. */
  readonly buffer = new Uint8Array(EDU.DMA_BUFFER_SIZE);
  /** DMA transfers completed (for tests and tools). */
  dmaTransfers = 0;
  /** Bytes those transfers moved. */
  dmaBytes = 0;

  constructor() {
    super({ ...EDU_IDENTITY, name: 'edu', interruptPin: 1 });
    const regs = new RegisterBlock('edu', 0x100, {
      ID: { offset: EDU.ID, width: 4, reset: EDU.ID_VALUE, readOnly: true },
      LIVENESS: { offset: EDU.LIVENESS, width: 4, onWrite: (ev) => ev.reg.set(~ev.value >>> 0) },
      FACTORIAL: { offset: EDU.FACTORIAL, width: 4, onWrite: (ev) => this.computeFactorial(ev.value) },
      STATUS: { offset: EDU.STATUS, width: 4, rw: EDU.STATUS_IRQ_FACT },
      IRQ_STATUS: { offset: EDU.IRQ_STATUS, width: 4, readOnly: true },
      IRQ_RAISE: { offset: EDU.IRQ_RAISE, width: 4, readOnly: true, onWrite: (ev) => this.raiseIrq(ev.written) },
      IRQ_ACK: { offset: EDU.IRQ_ACK, width: 4, readOnly: true, onWrite: (ev) => this.ackIrq(ev.written) },
      DMA_SRC: { offset: EDU.DMA_SRC, width: 8 },
      DMA_DST: { offset: EDU.DMA_DST, width: 8 },
      DMA_COUNT: { offset: EDU.DMA_COUNT, width: 8 },
      DMA_CMD: { offset: EDU.DMA_CMD, width: 8, onWrite: (ev) => this.startDma(ev.value) },
    });
    this.regs = regs;
    const bar0 = new Region('edu-mmio', EDU.BAR0_SIZE, { accessor: regs });
    const buffer = this.buffer;
    bar0.addOverlay('dma-buffer', EDU.DMA_BUFFER, EDU.DMA_BUFFER_SIZE, {
      read: (offset, out) => out.set(buffer.subarray(offset, offset + out.length)),
      write: (offset, data) => buffer.set(data, offset),
    });
    this.addBar(0, bar0, { kind: 'mem32' });
    this.addPowerManagement();
    this.addMsi({ vectors: 1, addr64: true, perVectorMask: true });
  }

  private computeFactorial(n: number): void {
    this.regs.set('FACTORIAL', factorial(n));
    if (this.regs.get('STATUS') & EDU.STATUS_IRQ_FACT) this.raiseIrq(EDU.IRQ_FACTORIAL);
  }

  private raiseIrq(bits: number): void {
    if (bits === 0) return;
    this.regs.reg('IRQ_STATUS').setBits(bits);
    this.irq.raise(0);
  }

  private ackIrq(bits: number): void {
    this.regs.reg('IRQ_STATUS').clearBits(bits);
    if (this.regs.get('IRQ_STATUS') === 0) this.irq.lower();
  }

  /** Runs a DMA transfer; the command's start bit clears when it completes. */
  private startDma(cmd: bigint): void {
    if (!(cmd & BigInt(EDU.DMA_START))) return;
    const count = Number(this.regs.get64('DMA_COUNT'));
    const toRam = (cmd & BigInt(EDU.DMA_TO_RAM)) !== 0n;
    const src = this.regs.get64('DMA_SRC');
    const dst = this.regs.get64('DMA_DST');
    const bufAddr = toRam ? src : dst;
    const ramAddr = toRam ? dst : src;
    const bufOff = bufAddr - BigInt(EDU.DMA_BUFFER);
    try {
      if (count > EDU.DMA_BUFFER_SIZE || bufOff < 0n || bufOff + BigInt(count) > BigInt(EDU.DMA_BUFFER_SIZE)) {
        throw new MdevError('ERANGE', `buffer range [0x${bufAddr.toString(16)}, +${count}) is outside the DMA buffer`, 'DMA');
      }
      if (ramAddr > BigInt(Number.MAX_SAFE_INTEGER)) throw new MdevError('EFAULT', 'guest address too large', 'DMA');
      const window = this.buffer.subarray(Number(bufOff), Number(bufOff) + count);
      if (toRam) this.dmaWrite(Number(ramAddr), window);
      else this.dmaRead(Number(ramAddr), window);
      this.dmaTransfers++;
      this.dmaBytes += count;
    } catch (e) {
      // A real device would signal a bus error; edu simply does not complete the transfer.
      this.regs.set('DMA_CMD', cmd & ~BigInt(EDU.DMA_START));
      this.lastDmaError = e as Error;
      return;
    }
    this.lastDmaError = null;
    this.regs.set('DMA_CMD', cmd & ~BigInt(EDU.DMA_START));
    if (cmd & BigInt(EDU.DMA_IRQ)) this.raiseIrq(EDU.IRQ_DMA);
  }

  /** Why the last DMA transfer failed, or null if it succeeded. */
  lastDmaError: Error | null = null;

  protected override onReset(): void {
    this.buffer.fill(0);
    this.lastDmaError = null;
  }

  protected override saveExtraState(): StateSection[] {
    return [{ name: 'x.edu.buffer', version: 1, data: this.buffer.slice() }];
  }

  protected override loadExtraState(sections: ReadonlyMap<string, StateSection>): void {
    const s = sections.get('x.edu.buffer');
    if (!s || s.version !== 1 || s.data.length !== EDU.DMA_BUFFER_SIZE) {
      throw new MdevError('EINVAL', 'x.edu.buffer must be version 1 with 4096 bytes', 'image.x.edu.buffer');
    }
    this.buffer.set(s.data);
  }
}

/** Device-module entry point: the CLI and adapters call this to create the device. */
export default function createDevice(): EduDevice {
  return new EduDevice();
}
