/**
 * Interrupts of a PCI function: INTx (a level), MSI and MSI-X (messages). The model keeps the
 * state a real function keeps (enable and mask bits from config space and the MSI-X table, pending
 * bits) and hands deliverable interrupts to an {@link IrqSink} that the adapter supplies
 * (an eventfd write for vfio-user, a DMOP for Xen).
 * @module
 */
import { MdevError } from './errors.js';
import { MaskedStorage } from './masked-storage.js';
import { RegisterBlock, type RegisterSpec } from './registers.js';
import type { ConfigSpace } from './pci/config-space.js';
import type { MsiCapability, MsixCapability } from './pci/capabilities.js';
import { PCI, PCI_COMMAND, PCI_MSI, PCI_MSIX, PCI_STATUS } from './pci/constants.js';

/** An MSI or MSI-X message ready for delivery. */
export interface MsiMessage {
  /** Which mechanism produced it. */
  readonly kind: 'msi' | 'msix';
  /** Vector number within the function. */
  readonly vector: number;
  /** Message address programmed by the guest. */
  readonly address: bigint;
  /** Message data (for MSI, with the vector folded into the low bits). */
  readonly data: number;
}

/** Where deliverable interrupts go; supplied by the adapter. */
export interface IrqSink {
  /** The effective INTx level changed. */
  setIntx(asserted: boolean): void;
  /** An unmasked MSI/MSI-X message is to be sent. */
  sendMsi(message: MsiMessage): void;
}

/** Counters of interrupt activity (for comparisons and tests). */
export interface IrqStats {
  /** Rising edges of the effective INTx line. */
  intxAssertions: number;
  /** MSI messages sent. */
  msiSent: number;
  /** MSI-X messages sent. */
  msixSent: number;
  /** Interrupts held as pending because their vector was masked. */
  pendingSet: number;
}

/** What {@link InterruptController.raise} did. */
export type RaiseResult = 'sent' | 'pending' | 'intx' | 'disabled';

/** A sink that delivers nowhere (the default until an adapter attaches). */
export const NULL_IRQ_SINK: IrqSink = { setIntx() {}, sendMsi() {} };

/** MSI-X table entry register names for entry `i`. */
function msixTableSpecs(vectors: number, onCtrl: () => void): Record<string, RegisterSpec> {
  const specs: Record<string, RegisterSpec> = {};
  for (let i = 0; i < vectors; i++) {
    const base = i * PCI_MSIX.ENTRY_SIZE;
    specs[`ADDR_LO_${i}`] = { offset: base + PCI_MSIX.ENTRY_ADDR_LO, width: 4, rw: 0xfffffffc };
    specs[`ADDR_HI_${i}`] = { offset: base + PCI_MSIX.ENTRY_ADDR_HI, width: 4 };
    specs[`DATA_${i}`] = { offset: base + PCI_MSIX.ENTRY_DATA, width: 4 };
    // Entries come out of reset masked (PCI spec 6.8.2.9).
    specs[`CTRL_${i}`] = { offset: base + PCI_MSIX.ENTRY_VECTOR_CTRL, width: 4, rw: PCI_MSIX.ENTRY_CTRL_MASKBIT, reset: 1, onWrite: onCtrl };
  }
  return specs;
}

/** INTx, MSI and MSI-X state of one function. */
export class InterruptController {
  /** The adapter's delivery; replace with {@link attach}. */
  private sink: IrqSink = NULL_IRQ_SINK;
  /** Counters. */
  readonly stats: IrqStats = { intxAssertions: 0, msiSent: 0, msixSent: 0, pendingSet: 0 };
  /** The MSI-X table (a trapped BAR overlay), when MSI-X exists. */
  readonly msixTable: RegisterBlock | null;
  /** The MSI-X pending-bit array (read-only to the guest), when MSI-X exists. */
  readonly msixPba: MaskedStorage | null;
  private intxLevel = false;
  private intxDelivered = false;
  private vmmOwnsMsixTable = false;

  /** @internal */
  constructor(
    private readonly cfg: ConfigSpace,
    /** The INTx pin (1 = INTA … 4 = INTD), 0 for none. */
    readonly intxPin: number,
    /** The MSI capability, if present. */
    readonly msi: MsiCapability | null,
    /** The MSI-X capability, if present. */
    readonly msix: MsixCapability | null,
  ) {
    if (msix) {
      this.msixTable = new RegisterBlock('msix-table', msix.vectors * PCI_MSIX.ENTRY_SIZE, msixTableSpecs(msix.vectors, () => this.flushMsixPending()));
      this.msixPba = new MaskedStorage(Math.ceil(msix.vectors / 64) * 8);
    } else {
      this.msixTable = null;
      this.msixPba = null;
    }
  }

  /** Routes deliverable interrupts to `sink` and replays the current INTx level to it. */
  attach(sink: IrqSink): void {
    this.sink = sink;
    this.intxDelivered = false;
    this.updateIntx();
  }

  /**
   * Declares that the VMM emulates the MSI-X table itself and never forwards table accesses (what
   * QEMU does for VFIO and vfio-user devices): entry mask bits are then ignored here and messages
   * carry address and data 0, since only the VMM knows them. The function mask, which reaches the
   * device through config writes, still applies.
   */
  setMsixTableOwnedByVmm(owned: boolean): void {
    this.vmmOwnsMsixTable = owned;
  }

  /** Detaches the adapter's sink (interrupts then go nowhere but state is kept). */
  detach(): void {
    this.sink = NULL_IRQ_SINK;
  }

  /** The level the device drives on its INTx pin. */
  get intxAsserted(): boolean {
    return this.intxLevel;
  }

  /** True when MSI is enabled by the guest. */
  get msiEnabled(): boolean {
    return this.msi !== null && (this.cfg.get(this.msi.offset + PCI_MSI.FLAGS, 2) & PCI_MSI.FLAGS_ENABLE) !== 0;
  }

  /** True when MSI-X is enabled by the guest. */
  get msixEnabled(): boolean {
    return this.msix !== null && (this.cfg.get(this.msix.offset + PCI_MSIX.FLAGS, 2) & PCI_MSIX.FLAGS_ENABLE) !== 0;
  }

  /** Number of MSI vectors the guest enabled (Multiple Message Enable, capped by capability). */
  get msiEnabledVectors(): number {
    if (!this.msi) return 0;
    const mme = (this.cfg.get(this.msi.offset + PCI_MSI.FLAGS, 2) & PCI_MSI.FLAGS_QSIZE) >> 4;
    return Math.min(1 << Math.min(mme, 5), this.msi.vectors);
  }

  /**
   * Signals interrupt `vector`: as MSI-X when enabled, else as MSI when enabled, else by asserting
   * INTx (level-triggered: call {@link lower} when the cause is cleared).
   */
  raise(vector = 0): RaiseResult {
    if (this.msixEnabled) return this.raiseMsix(vector);
    if (this.msiEnabled) return this.raiseMsi(vector);
    if (this.intxPin === 0) return 'disabled';
    this.setIntx(true);
    return 'intx';
  }

  /** Deasserts INTx (MSI and MSI-X are edge messages and need no lowering). */
  lower(): void {
    this.setIntx(false);
  }

  /** Drives the INTx pin. The status register's Interrupt bit follows the pin. */
  setIntx(level: boolean): void {
    if (this.intxPin === 0) return;
    this.intxLevel = level;
    this.updateIntx();
  }

  /** Re-evaluates the effective INTx line (after a command-register or MSI enable change). */
  updateIntx(): void {
    const status = this.cfg.get(PCI.STATUS, 2);
    this.cfg.set(PCI.STATUS, 2, this.intxLevel ? status | PCI_STATUS.INTERRUPT : status & ~PCI_STATUS.INTERRUPT);
    const disabled = (this.cfg.get(PCI.COMMAND, 2) & PCI_COMMAND.INTX_DISABLE) !== 0 || this.msiEnabled || this.msixEnabled;
    const effective = this.intxLevel && !disabled;
    if (effective !== this.intxDelivered) {
      this.intxDelivered = effective;
      if (effective) this.stats.intxAssertions++;
      this.sink.setIntx(effective);
    }
  }

  /** Sends MSI `vector`, or sets its pending bit when masked. */
  raiseMsi(vector: number): RaiseResult {
    const msi = this.msi;
    if (!msi || !this.msiEnabled) return 'disabled';
    const n = this.msiEnabledVectors;
    if (!Number.isInteger(vector) || vector < 0 || vector >= n) {
      throw new MdevError('ERANGE', `MSI vector ${vector} is not among the ${n} enabled`, 'vector');
    }
    if (msi.perVectorMask && (this.cfg.get(this.msiMaskOffset(), 4) & (1 << vector)) !== 0) {
      const p = this.msiPendingOffset();
      this.cfg.set(p, 4, this.cfg.get(p, 4) | (1 << vector));
      this.stats.pendingSet++;
      return 'pending';
    }
    this.sendMsiVector(vector);
    return 'sent';
  }

  /** Sends MSI-X `vector`, or sets its PBA bit when the vector or the function is masked. */
  raiseMsix(vector: number): RaiseResult {
    const msix = this.msix;
    if (!msix || !this.msixEnabled) return 'disabled';
    if (!Number.isInteger(vector) || vector < 0 || vector >= msix.vectors) {
      throw new MdevError('ERANGE', `MSI-X vector ${vector} is not below the table size ${msix.vectors}`, 'vector');
    }
    if (this.msixMasked(vector)) {
      this.setPba(vector, true);
      this.stats.pendingSet++;
      return 'pending';
    }
    this.sendMsixVector(vector);
    return 'sent';
  }

  /** True when MSI-X `vector` is masked, by its entry or by the function mask. */
  msixMasked(vector: number): boolean {
    const functionMask = (this.cfg.get(this.msix!.offset + PCI_MSIX.FLAGS, 2) & PCI_MSIX.FLAGS_MASKALL) !== 0;
    if (this.vmmOwnsMsixTable) return functionMask;
    const entryMask = (this.msixTable!.storage.view.getUint32(vector * 16 + PCI_MSIX.ENTRY_VECTOR_CTRL, true) & 1) !== 0;
    return functionMask || entryMask;
  }

  /** True when MSI-X `vector`'s pending bit is set. */
  msixPending(vector: number): boolean {
    const pba = this.msixPba!.values;
    return (pba[vector >> 3]! & (1 << (vector & 7))) !== 0;
  }

  /** True when MSI `vector`'s pending bit is set. */
  msiPending(vector: number): boolean {
    return this.msi !== null && this.msi.perVectorMask && (this.cfg.get(this.msiPendingOffset(), 4) & (1 << vector)) !== 0;
  }

  /** Called by the device after any config write: delivers what became unmasked, updates INTx. */
  afterConfigWrite(): void {
    this.flushMsiPending();
    this.flushMsixPending();
    this.updateIntx();
  }

  /** Returns to the reset state: INTx low, no pending bits, MSI-X entries masked. */
  reset(): void {
    this.intxLevel = false;
    this.msixTable?.reset();
    this.msixPba?.values.fill(0);
    this.updateIntx();
  }

  /** Saved state: INTx level and the MSI-X table and PBA (MSI state lives in config space). */
  saveState(): Uint8Array {
    const table = this.msixTable?.saveState() ?? new Uint8Array(0);
    const pba = this.msixPba?.values ?? new Uint8Array(0);
    const out = new Uint8Array(1 + table.length + pba.length);
    out[0] = this.intxLevel ? 1 : 0;
    out.set(table, 1);
    out.set(pba, 1 + table.length);
    return out;
  }

  /** Restores {@link saveState} output; delivery of pending interrupts resumes on the next unmask. */
  loadState(bytes: Uint8Array): void {
    const tableLen = this.msixTable?.size ?? 0;
    const pbaLen = this.msixPba?.size ?? 0;
    if (bytes.length !== 1 + tableLen + pbaLen || bytes[0]! > 1) {
      throw new MdevError('EINVAL', `interrupt state has ${bytes.length} bytes, expected ${1 + tableLen + pbaLen}`, 'state');
    }
    this.msixTable?.loadState(bytes.subarray(1, 1 + tableLen));
    this.msixPba?.values.set(bytes.subarray(1 + tableLen));
    this.intxLevel = bytes[0] === 1;
    this.intxDelivered = false;
    this.updateIntx();
  }

  private msiMaskOffset(): number {
    return this.msi!.offset + (this.msi!.addr64 ? PCI_MSI.MASK_64 : PCI_MSI.MASK_32);
  }

  private msiPendingOffset(): number {
    return this.msi!.offset + (this.msi!.addr64 ? PCI_MSI.PENDING_64 : PCI_MSI.PENDING_32);
  }

  private sendMsiVector(vector: number): void {
    const msi = this.msi!;
    const o = msi.offset;
    const lo = BigInt(this.cfg.get(o + PCI_MSI.ADDRESS_LO, 4));
    const hi = msi.addr64 ? BigInt(this.cfg.get(o + PCI_MSI.ADDRESS_HI, 4)) : 0n;
    const base = this.cfg.get(o + (msi.addr64 ? PCI_MSI.DATA_64 : PCI_MSI.DATA_32), 2);
    const n = this.msiEnabledVectors;
    // With n vectors enabled the function modifies the low log2(n) bits of the data.
    const data = (base & ~(n - 1)) | vector;
    this.stats.msiSent++;
    this.sink.sendMsi({ kind: 'msi', vector, address: (hi << 32n) | lo, data });
  }

  private sendMsixVector(vector: number): void {
    if (this.vmmOwnsMsixTable) {
      this.stats.msixSent++;
      this.sink.sendMsi({ kind: 'msix', vector, address: 0n, data: 0 });
      return;
    }
    const v = this.msixTable!.storage.view;
    const base = vector * PCI_MSIX.ENTRY_SIZE;
    const address = (BigInt(v.getUint32(base + 4, true)) << 32n) | BigInt(v.getUint32(base, true));
    this.stats.msixSent++;
    this.sink.sendMsi({ kind: 'msix', vector, address, data: v.getUint32(base + 8, true) });
  }

  private setPba(vector: number, on: boolean): void {
    const pba = this.msixPba!.values;
    const bit = 1 << (vector & 7);
    pba[vector >> 3] = on ? pba[vector >> 3]! | bit : pba[vector >> 3]! & ~bit;
  }

  private flushMsiPending(): void {
    if (!this.msi?.perVectorMask || !this.msiEnabled) return;
    const p = this.msiPendingOffset();
    const deliverable = (this.cfg.get(p, 4) & ~this.cfg.get(this.msiMaskOffset(), 4)) >>> 0;
    for (let v = 0; v < this.msiEnabledVectors; v++) {
      if ((deliverable & (1 << v)) === 0) continue;
      this.cfg.set(p, 4, this.cfg.get(p, 4) & ~(1 << v));
      this.sendMsiVector(v);
    }
  }

  private flushMsixPending(): void {
    if (!this.msix || !this.msixEnabled) return;
    for (let v = 0; v < this.msix.vectors; v++) {
      if (this.msixPending(v) && !this.msixMasked(v)) {
        this.setPba(v, false);
        this.sendMsixVector(v);
      }
    }
  }
}
