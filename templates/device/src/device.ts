/**
 * A small bus-master DMA engine: the guest gives it a source buffer, a destination and a key; on a
 * doorbell write the device reads the source from guest memory, XORs every byte with the key,
 * writes the result to the destination, stores the sum of the source bytes in CHECKSUM, sets
 * STATUS.DONE and — when CONTROL.IRQ is set — raises its interrupt (MSI when the guest enabled it,
 * else INTx).
 *
 * BAR0 (4 KiB, MMIO):
 * | off  | name      | access | meaning |
 * |------|-----------|--------|---------|
 * | 0x00 | ID        | RO     | 0x6d640001 |
 * | 0x04 | STATUS    | W1C    | bit 0 DONE, bit 1 ERROR |
 * | 0x08 | CONTROL   | RW     | bit 0 IRQ: interrupt on completion |
 * | 0x10 | SRC       | RW 64  | source, guest physical |
 * | 0x18 | DST       | RW 64  | destination, guest physical |
 * | 0x20 | LEN       | RW     | bytes (at most 64 KiB) |
 * | 0x24 | KEY       | RW     | bits 7:0, XORed into every byte |
 * | 0x28 | DOORBELL  | WO     | any write starts a transfer |
 * | 0x2c | CHECKSUM  | RO     | sum of the source bytes, mod 2^32 |
 * | 0x30 | COMPLETED | RO     | transfers completed |
 */
import { PciDevice, Region, RegisterBlock } from 'mdevkit';

/** Register offsets in BAR0. */
export const REG = {
  ID: 0x00,
  STATUS: 0x04,
  CONTROL: 0x08,
  SRC: 0x10,
  DST: 0x18,
  LEN: 0x20,
  KEY: 0x24,
  DOORBELL: 0x28,
  CHECKSUM: 0x2c,
  COMPLETED: 0x30,
} as const;

/** What ID reads. */
export const ID_VALUE = 0x6d640001;
/** STATUS bits. */
export const STATUS = { DONE: 0x1, ERROR: 0x2 } as const;
/** CONTROL bits. */
export const CONTROL = { IRQ: 0x1 } as const;
/** The longest transfer. */
export const MAX_LEN = 0x10000;

/** The XOR DMA engine. */
export class XorDmaDevice extends PciDevice {
  readonly regs = new RegisterBlock('xor-dma', 0x100, {
    ID: { offset: REG.ID, width: 4, reset: ID_VALUE, readOnly: true, description: 'device identification' },
    STATUS: { offset: REG.STATUS, width: 4, w1c: STATUS.DONE | STATUS.ERROR, description: 'DONE, ERROR (write 1 to clear)' },
    CONTROL: { offset: REG.CONTROL, width: 4, rw: CONTROL.IRQ, description: 'IRQ: interrupt on completion' },
    SRC: { offset: REG.SRC, width: 8, description: 'source address' },
    DST: { offset: REG.DST, width: 8, description: 'destination address' },
    LEN: { offset: REG.LEN, width: 4, description: 'bytes to transfer' },
    KEY: { offset: REG.KEY, width: 4, rw: 0xff, description: 'XOR key' },
    // A doorbell: nothing is stored, the hook sees the write.
    DOORBELL: { offset: REG.DOORBELL, width: 4, readOnly: true, onWrite: () => this.transfer(), description: 'start' },
    CHECKSUM: { offset: REG.CHECKSUM, width: 4, readOnly: true, description: 'sum of the source bytes' },
    COMPLETED: { offset: REG.COMPLETED, width: 4, readOnly: true, description: 'transfers completed' },
  });

  constructor() {
    super({ vendorId: 0x1234, deviceId: 0x10f0, classCode: 0xff0000, name: 'xor-dma', interruptPin: 1 });
    this.addBar(0, new Region('regs', 0x1000, { accessor: this.regs }));
    this.addMsi({ vectors: 1, addr64: true });
  }

  /** One transfer, as the doorbell asks: read, XOR, write, report. */
  private transfer(): void {
    const len = this.regs.get('LEN');
    const key = this.regs.get('KEY') & 0xff;
    const src = Number(this.regs.get64('SRC'));
    const dst = Number(this.regs.get64('DST'));
    try {
      if (len === 0 || len > MAX_LEN) throw new Error(`LEN ${len} is outside 1..${MAX_LEN}`);
      const data = new Uint8Array(len);
      this.dmaRead(src, data); // needs Bus Master Enable; throws on addresses the guest did not give
      let sum = 0;
      for (let i = 0; i < len; i++) {
        sum = (sum + data[i]!) >>> 0;
        data[i] = data[i]! ^ key;
      }
      this.dmaWrite(dst, data);
      this.regs.set('CHECKSUM', sum);
      this.regs.set('COMPLETED', (this.regs.get('COMPLETED') + 1) >>> 0);
      this.regs.reg('STATUS').setBits(STATUS.DONE);
    } catch {
      // A real device would report a bus error; this one sets ERROR and completes.
      this.regs.reg('STATUS').setBits(STATUS.ERROR);
    }
    if (this.regs.get('CONTROL') & CONTROL.IRQ) this.irq.raise(0);
  }
}

/** The module's default export creates the device: `mdevkit serve ./src/device.ts` calls it. */
export default function createDevice(): XorDmaDevice {
  return new XorDmaDevice();
}
