/**
 * The neutral guest-driver interface: a driver script is written once against it and runs over
 * every mediation path — the vfio-user client playing the VMM (KVM path), a simulated Xen vCPU
 * (Xen path), and later a real guest. Calls are synchronous, as a vCPU's are.
 * @module
 */

/** Access sizes. */
export type AccessSize = 1 | 2 | 4 | 8;

/** Guest RAM the driver may hand to the device for DMA. */
export interface DriverRam {
  /** Guest physical address of the first byte. */
  readonly base: number;
  /** Size in bytes. */
  readonly size: number;
  /** Reads `length` bytes at guest physical address `gpa` (inside [base, base+size)). */
  read(gpa: number, length: number): Uint8Array;
  /** Writes `data` at guest physical address `gpa`. */
  write(gpa: number, data: Uint8Array): void;
}

/** What a guest driver can do with its device. Values are numbers up to 4 bytes, bigints for 8. */
export interface GuestDriverHost {
  /** Which path this is ('vfio-user', 'xen', …), for reports. */
  readonly path: string;
  /** Reads PCI config space. */
  cfgRead(offset: number, size: 1 | 2 | 4): number;
  /** Writes PCI config space (the VMM side reacts as a real one does, e.g. to MSI enables). */
  cfgWrite(offset: number, size: 1 | 2 | 4, value: number): void;
  /** Reads a memory BAR. */
  mmioRead(bar: number, offset: number, size: AccessSize): number | bigint;
  /** Writes a memory BAR. */
  mmioWrite(bar: number, offset: number, size: AccessSize, value: number | bigint): void;
  /** Reads an I/O BAR. */
  pioRead(bar: number, offset: number, size: 1 | 2 | 4): number;
  /** Writes an I/O BAR. */
  pioWrite(bar: number, offset: number, size: 1 | 2 | 4, value: number): void;
  /** Guest RAM for DMA. */
  readonly ram: DriverRam;
  /** Waits for an interrupt from the device; false on timeout. */
  waitForInterrupt(timeoutMs: number): boolean;
  /** Interrupts delivered so far. */
  interruptCount(): number;
}

/** A JSON-serialisable result of a driver run, compared across paths. */
export type DriverResult = Record<string, string | number | boolean | null | string[] | number[]>;

/** A driver module's default export. */
export type GuestDriver = (host: GuestDriverHost) => DriverResult;

/** Reads a value as a number (drivers mostly use ≤ 4-byte registers). */
export function asNumber(v: number | bigint): number {
  return typeof v === 'bigint' ? Number(v) : v;
}
