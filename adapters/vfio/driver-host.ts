/**
 * The KVM/vfio-user side of the neutral guest-driver interface: the vfio-user client plays the VMM
 * (QEMU's role). It shares guest RAM with the server by fd, and reacts to the guest's config writes
 * the way QEMU's vfio-pci does — enabling MSI or MSI-X in config space wires eventfds with SET_IRQS,
 * INTx is wired up front and unmasked after each interrupt.
 * @module
 */
import { assignBars, type DriverRam, type GuestDriverHost } from '../../src/guest-driver.js';
import { PCI_CAP_ID, PCI_MSI, PCI_MSIX } from '../../src/pci/constants.js';
import { walkCapabilities } from '../../src/pci/lspci.js';
import type { AccessSize } from '../../src/guest-driver.js';
import type { VfioUserClient } from './client.js';
import { PciIrq } from './protocol.js';

/** Options of a {@link VfioDriverHost}. */
export interface VfioDriverHostOptions {
  /** Guest physical address of the RAM given to the driver (default 0x100000). */
  ramBase?: number;
  /** Size of that RAM (default 1 MiB). */
  ramSize?: number;
  /**
   * Share the RAM with the server by fd (default true). False plays a VMM whose guest RAM has no
   * fd to share (QEMU's `memory-backend-ram`, plain `-m`): device DMA then goes through DMA_READ /
   * DMA_WRITE messages.
   */
  shareRam?: boolean;
  /** Map the RAM privately while passing its fd, as QEMU's `share=off` does (default true: shared). */
  share?: boolean;
  /**
   * Run the firmware step first: size and place the BARs, enable decoding (default false: over
   * vfio-user the VMM reaches BARs by region, and QEMU's guest firmware is not played). A state
   * that moves to the Xen path needs BARs placed, as a real guest has them.
   */
  placeBars?: boolean;
}

/** The vfio-user path as a {@link GuestDriverHost}. */
export class VfioDriverHost implements GuestDriverHost {
  readonly path = 'vfio-user';
  readonly ram: DriverRam;
  private readonly msiCap: number;
  private readonly msixCap: number;
  private intxFd: number | null = null;
  private msiFds: number[] = [];
  private delivered = 0;

  /**
   * Sets up guest RAM and INTx like a VMM realizing the device.
   * @param client a connected client
   * @param options where the driver's RAM lives
   */
  constructor(
    private readonly client: VfioUserClient,
    options: VfioDriverHostOptions = {},
  ) {
    const base = options.ramBase ?? 0x100000;
    const size = options.ramSize ?? 1 << 20;
    const guestRam = client.addGuestRam(base, size, { withFd: options.shareRam ?? true, share: options.share ?? true });
    this.ram = {
      base,
      size,
      read: (gpa, length) => guestRam.bytes.slice(gpa - base, gpa - base + length),
      write: (gpa, data) => guestRam.bytes.set(data, gpa - base),
    };
    const caps = walkCapabilities(client.configAccessor, 256);
    this.msiCap = caps.find((c) => c.id === PCI_CAP_ID.MSI)?.offset ?? 0;
    this.msixCap = caps.find((c) => c.id === PCI_CAP_ID.MSIX)?.offset ?? 0;
    if (client.irqInfo(PciIrq.INTX).count > 0) this.intxFd = client.enableIntx().trigger;
    if (options.placeBars) assignBars(this);
  }

  cfgRead(offset: number, size: 1 | 2 | 4): number {
    return this.client.cfgRead(offset, size);
  }

  cfgWrite(offset: number, size: 1 | 2 | 4, value: number): void {
    this.client.cfgWrite(offset, size, value);
    // What QEMU's vfio-pci does when the guest flips MSI/MSI-X enable in config space.
    const touches = (reg: number) => offset <= reg + 1 && offset + size > reg;
    if (this.msiCap && touches(this.msiCap + PCI_MSI.FLAGS)) {
      const flags = this.client.cfgRead(this.msiCap + PCI_MSI.FLAGS, 2);
      const on = (flags & PCI_MSI.FLAGS_ENABLE) !== 0;
      if (on && this.msiFds.length === 0) this.msiFds = this.client.enableMsi(1 << ((flags & PCI_MSI.FLAGS_QSIZE) >> 4));
      if (!on && this.msiFds.length > 0) this.disableVectors(PciIrq.MSI);
    }
    if (this.msixCap && touches(this.msixCap + PCI_MSIX.FLAGS)) {
      const flags = this.client.cfgRead(this.msixCap + PCI_MSIX.FLAGS, 2);
      const on = (flags & PCI_MSIX.FLAGS_ENABLE) !== 0;
      if (on && this.msiFds.length === 0) this.msiFds = this.client.enableMsix((flags & PCI_MSIX.FLAGS_QSIZE) + 1);
      if (!on && this.msiFds.length > 0) this.disableVectors(PciIrq.MSIX);
    }
  }

  /**
   * After the device's state was loaded (a migration destination): wires eventfds for the MSI or
   * MSI-X the restored config space has enabled, as QEMU's vfio_pci_load_config does. Interrupts
   * the device held pending are delivered when the guest unmasks them.
   */
  restoreInterrupts(): void {
    if (this.msiCap && this.msiFds.length === 0) {
      const flags = this.client.cfgRead(this.msiCap + PCI_MSI.FLAGS, 2);
      if (flags & PCI_MSI.FLAGS_ENABLE) this.msiFds = this.client.enableMsi(1 << ((flags & PCI_MSI.FLAGS_QSIZE) >> 4));
    }
    if (this.msixCap && this.msiFds.length === 0) {
      const flags = this.client.cfgRead(this.msixCap + PCI_MSIX.FLAGS, 2);
      if (flags & PCI_MSIX.FLAGS_ENABLE) this.msiFds = this.client.enableMsix((flags & PCI_MSIX.FLAGS_QSIZE) + 1);
    }
  }

  private disableVectors(index: number): void {
    this.client.disableIrqs(index);
    this.msiFds = [];
  }

  mmioRead(bar: number, offset: number, size: AccessSize): number | bigint {
    return this.client.mmioRead(bar, offset, size);
  }

  mmioWrite(bar: number, offset: number, size: AccessSize, value: number | bigint): void {
    this.client.mmioWrite(bar, offset, size, value);
  }

  pioRead(bar: number, offset: number, size: 1 | 2 | 4): number {
    return this.client.pioRead(bar, offset, size) as number;
  }

  pioWrite(bar: number, offset: number, size: 1 | 2 | 4, value: number): void {
    this.client.pioWrite(bar, offset, size, value);
  }

  waitForInterrupt(timeoutMs: number): boolean {
    const fd = this.msiFds[0] ?? this.intxFd;
    if (fd === null) return false;
    try {
      const n = this.client.waitForInterrupt(fd, timeoutMs);
      this.delivered += Number(n);
    } catch (e) {
      if ((e as { code?: string }).code === 'ETIMEDOUT') return false;
      throw e;
    }
    // INTx is auto-masked after it fires; the VMM unmasks once the guest has seen it.
    if (fd === this.intxFd) this.client.unmaskIntx();
    return true;
  }

  interruptCount(): number {
    for (const fd of [...this.msiFds, ...(this.intxFd === null ? [] : [this.intxFd])]) this.delivered += Number(this.client.interruptCount(fd));
    return this.delivered;
  }
}
