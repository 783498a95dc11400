/**
 * Read access to the interrupt block a simulated domain shares with its vCPU threads: what the
 * guest can observe of the interrupts its device models raised (per-vector MSI counts, GSI line
 * levels and rising edges, per-vCPU deliveries).
 * @module
 */
import { MdevError } from '../../../src/errors.js';
import { Irq, NR_GSIS } from './layout.js';

/** Counters of delivered interrupts, read from shared memory (always current). */
export class SimInterruptCounters {
  private readonly words: Int32Array;

  /**
   * Reads the counters of a domain.
   * @param irq the interrupt block of the domain
   * @param nrVcpus vCPUs in the domain
   */
  constructor(
    irq: SharedArrayBuffer,
    private readonly nrVcpus: number,
  ) {
    this.words = new Int32Array(irq);
  }

  /** Bumped on every delivery of any kind (for `Atomics.wait`-style polling). */
  generation(): number {
    return Atomics.load(this.words, Irq.generation);
  }

  /** Deliveries of MSI `vector` (one per vCPU it reached). */
  msi(vector: number): number {
    check('vector', vector, 255);
    return Atomics.load(this.words, Irq.msi + vector);
  }

  /** MSIs with vector 0 that Xen turns into emulated PIRQs (event channel delivery is not modelled). */
  pirq(): number {
    return Atomics.load(this.words, Irq.pirq);
  }

  /** How many sources hold GSI `gsi` asserted (0 = the line is low). */
  gsiLevel(gsi: number): number {
    check('gsi', gsi, NR_GSIS - 1);
    return Atomics.load(this.words, Irq.gsiLevel + gsi);
  }

  /** Rising edges of GSI `gsi`: the interrupts a guest would take from it. */
  gsiEdges(gsi: number): number {
    check('gsi', gsi, NR_GSIS - 1);
    return Atomics.load(this.words, Irq.gsiEdges + gsi);
  }

  /** Interrupts delivered to vCPU `vcpu` (of any kind). */
  delivered(vcpu: number): number {
    check('vcpu', vcpu, this.nrVcpus - 1);
    return Atomics.load(this.words, Irq.vcpuDelivered + vcpu);
  }
}

function check(field: string, value: number, max: number): void {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new MdevError('EINVAL', `must be an integer in [0, ${max}], got ${String(value)}`, field);
  }
}

/** GSI of PCI device `device` pin `intx` on Xen's emulated chipset (hvm_pci_intx_gsi). */
export function pciIntxGsi(device: number, intx: number): number {
  return (((device << 2) + (device >> 3) + intx) & 31) + 16;
}

/** GSI of ISA IRQ `irq` (IRQ 0, the PIT, is wired to GSI 2: hvm_isa_irq_to_gsi). */
export function isaIrqGsi(irq: number): number {
  return irq === 0 ? 2 : irq;
}
