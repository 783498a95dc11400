/**
 * The Xen side of the neutral guest-driver interface, on the simulator: a simulated vCPU (running
 * in a worker thread, because it blocks) does the guest's config cycles and MMIO/PIO accesses, which
 * reach the IOREQ server as ioreqs. Like firmware (hvmloader), the host sizes and places the BARs
 * before the driver runs.
 * @module
 */
import { assignBars, programmedBars, type AccessSize, type DriverRam, type GuestDriverHost } from '../../../src/guest-driver.js';
import { MdevError } from '../../../src/errors.js';
import { PCI } from '../../../src/pci/constants.js';
import type { SimVcpu } from './vcpu.js';

/** Options of a {@link SimDriverHost}. */
export interface SimDriverHostOptions {
  /** The device's SBDF (config cycles go there). */
  sbdf: number;
  /** Guest RAM given to the driver (inside the simulated guest's RAM). */
  ramBase?: number;
  /** Its size. */
  ramSize?: number;
  /** Where firmware starts placing memory BARs (default 0xe0000000). */
  mmioBase?: bigint;
  /** Where firmware starts placing I/O BARs (default 0xc000). */
  pioBase?: number;
  /**
   * Run the firmware step (default true). False for a device restored from a saved state: its BARs
   * are where the guest left them, read from config space, and nothing is written.
   */
  placeBars?: boolean;
}

/** The simulated-Xen path as a {@link GuestDriverHost}. */
export class SimDriverHost implements GuestDriverHost {
  readonly path = 'xen';
  readonly ram: DriverRam;
  /** BAR addresses chosen by the firmware step, by index. */
  readonly bars = new Map<number, { address: bigint; io: boolean }>();
  private readonly sbdf: bigint;

  /**
   * Runs the firmware step: sizes every BAR, places it, enables decoding.
   * @param vcpu the vCPU (blocking; use inside a worker thread)
   * @param vcpuIndex its index (interrupts are counted per vCPU)
   * @param options device address and memory layout
   */
  constructor(
    private readonly vcpu: SimVcpu,
    private readonly vcpuIndex: number,
    options: SimDriverHostOptions,
  ) {
    this.sbdf = BigInt(options.sbdf);
    const base = options.ramBase ?? 0x100000;
    const size = options.ramSize ?? 1 << 20;
    this.ram = {
      base,
      size,
      read: (gpa, length) => vcpu.ramRead(gpa, length),
      write: (gpa, data) => vcpu.ramWrite(gpa, data),
    };
    if (this.cfgRead(PCI.VENDOR_ID, 2) === 0xffff) throw new MdevError('ENODEV', `no device at SBDF 0x${options.sbdf.toString(16)}`, 'sbdf');
    const placed = options.placeBars === false ? programmedBars(this) : assignBars(this, { ...(options.mmioBase !== undefined ? { mmioBase: options.mmioBase } : {}), ...(options.pioBase !== undefined ? { pioBase: options.pioBase } : {}) });
    for (const [i, b] of placed) this.bars.set(i, b);
  }

  private cfgAddr(offset: number): bigint {
    return (this.sbdf << 32n) | BigInt(offset);
  }

  cfgRead(offset: number, size: 1 | 2 | 4): number {
    return Number(this.vcpu.access({ space: 'pci', addr: this.cfgAddr(offset), size, dir: 'read' }));
  }

  cfgWrite(offset: number, size: 1 | 2 | 4, value: number): void {
    this.vcpu.access({ space: 'pci', addr: this.cfgAddr(offset), size, dir: 'write', data: BigInt(value >>> 0) });
  }

  private bar(index: number, io: boolean): bigint {
    const b = this.bars.get(index);
    if (!b || b.io !== io) throw new MdevError('EINVAL', `BAR${index} is not a${io ? 'n I/O' : ' memory'} BAR`, 'bar');
    return b.address;
  }

  mmioRead(bar: number, offset: number, size: AccessSize): number | bigint {
    const v = this.vcpu.access({ space: 'mmio', addr: this.bar(bar, false) + BigInt(offset), size, dir: 'read' });
    return size === 8 ? v : Number(v);
  }

  mmioWrite(bar: number, offset: number, size: AccessSize, value: number | bigint): void {
    this.vcpu.access({ space: 'mmio', addr: this.bar(bar, false) + BigInt(offset), size, dir: 'write', data: BigInt.asUintN(size * 8, BigInt(value)) });
  }

  pioRead(bar: number, offset: number, size: 1 | 2 | 4): number {
    return Number(this.vcpu.access({ space: 'pio', addr: this.bar(bar, true) + BigInt(offset), size, dir: 'read' }));
  }

  pioWrite(bar: number, offset: number, size: 1 | 2 | 4, value: number): void {
    this.vcpu.access({ space: 'pio', addr: this.bar(bar, true) + BigInt(offset), size, dir: 'write', data: BigInt(value >>> 0) });
  }

  waitForInterrupt(timeoutMs: number): boolean {
    return this.vcpu.waitForInterrupt(timeoutMs);
  }

  interruptCount(): number {
    return this.vcpu.interrupts.delivered(this.vcpuIndex);
  }
}
