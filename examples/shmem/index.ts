/**
 * A shared-memory device in the style of QEMU's ivshmem: guest and host share memory through a
 * BAR the VMM maps straight into the guest (no traps), and a doorbell register raises interrupts.
 * It shows the region kinds edu does not: a fully mappable BAR, a sparse BAR (one trapped page of
 * status registers in front of mappable pages), and MSI-X with the table in a BAR.
 *
 * - BAR0 (4 KiB, trapped): INTR_MASK (RW), INTR_STATUS (W1C), IV_POSITION (RO), DOORBELL (WO: the
 *   low 16 bits name the MSI-X vector to raise, or set INTR_STATUS bit 0 for INTx), SHARED_SIZE (RO).
 * - BAR1 (4 KiB, trapped): the MSI-X table (4 vectors) and PBA.
 * - BAR2 (64-bit, prefetchable, 1 MiB, mappable): the shared memory, a memfd.
 * - BAR4 (16 KiB, sparse): page 0 trapped — SEQ (RW), HEAD/TAIL (RW) — pages 1-3 mappable ring.
 * @module
 */
import { PciDevice, createMemfdBacking, Region, RegisterBlock, type MemfdBacking } from 'mdevkit';

/** Register offsets and sizes. */
export const SHMEM = {
  INTR_MASK: 0x00,
  INTR_STATUS: 0x04,
  IV_POSITION: 0x08,
  DOORBELL: 0x0c,
  SHARED_SIZE: 0x10,
  SHARED_BYTES: 1 << 20,
  MAILBOX_BYTES: 4 * 4096,
  MAILBOX_SEQ: 0x0,
  MAILBOX_HEAD: 0x4,
  MAILBOX_TAIL: 0x8,
  VECTORS: 4,
} as const;

/** The shared-memory device. */
export class SharedMemoryDevice extends PciDevice {
  /** BAR0 registers. */
  readonly regs;
  /** BAR4 page-0 registers. */
  readonly mailboxRegs;
  /** The memory behind BAR2. */
  readonly shared: MemfdBacking;
  /** The memory behind BAR4's mappable pages. */
  readonly mailbox: MemfdBacking;

  constructor() {
    super({ vendorId: 0x1af4, deviceId: 0x1110, classCode: 0x050000, revision: 1, name: 'shmem', configSize: 4096 });
    this.regs = new RegisterBlock('shmem', 0x20, {
      INTR_MASK: { offset: SHMEM.INTR_MASK, width: 4 },
      INTR_STATUS: { offset: SHMEM.INTR_STATUS, width: 4, w1c: 0xffffffff, onWrite: () => this.updateIntx() },
      IV_POSITION: { offset: SHMEM.IV_POSITION, width: 4, readOnly: true },
      DOORBELL: { offset: SHMEM.DOORBELL, width: 4, readOnly: true, onWrite: (ev) => this.ring(ev.written & 0xffff) },
      SHARED_SIZE: { offset: SHMEM.SHARED_SIZE, width: 4, readOnly: true, reset: SHMEM.SHARED_BYTES },
    });
    this.mailboxRegs = new RegisterBlock('mailbox', 0x10, {
      SEQ: { offset: SHMEM.MAILBOX_SEQ, width: 4 },
      HEAD: { offset: SHMEM.MAILBOX_HEAD, width: 4 },
      TAIL: { offset: SHMEM.MAILBOX_TAIL, width: 4 },
    });
    this.shared = createMemfdBacking(SHMEM.SHARED_BYTES, 'shmem-bar2');
    this.mailbox = createMemfdBacking(SHMEM.MAILBOX_BYTES, 'shmem-bar4');
    this.addBar(0, new Region('regs', 4096, { accessor: this.regs }));
    this.addBar(1, new Region('msix', 4096));
    this.addBar(2, new Region('shared', SHMEM.SHARED_BYTES, { backing: this.shared, mmapAreas: [{ offset: 0, size: SHMEM.SHARED_BYTES }] }), { kind: 'mem64', prefetchable: true });
    this.addBar(4, new Region('mailbox', SHMEM.MAILBOX_BYTES, { accessor: this.mailboxRegs, backing: this.mailbox, mmapAreas: [{ offset: 4096, size: 3 * 4096 }] }));
    this.addPowerManagement();
    this.addMsix({ vectors: SHMEM.VECTORS, tableBar: 1, tableOffset: 0, pbaOffset: 0x800 });
    this.addPciExpress({ flr: true });
  }

  /** A doorbell: MSI-X vector `vector` when MSI-X is on; otherwise INTR_STATUS bit 0 and INTx. */
  private ring(vector: number): void {
    if (this.irq.msixEnabled) {
      if (vector < SHMEM.VECTORS) this.irq.raiseMsix(vector);
      return;
    }
    this.regs.reg('INTR_STATUS').setBits(1);
    this.updateIntx();
  }

  private updateIntx(): void {
    const pending = this.regs.get('INTR_STATUS') & this.regs.get('INTR_MASK');
    this.irq.setIntx(pending !== 0);
  }
}

/** Device-module entry point. */
export default function createDevice(): SharedMemoryDevice {
  return new SharedMemoryDevice();
}
