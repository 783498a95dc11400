/**
 * The neutral guest-driver interface: a driver script is written once against it and runs over
 * every mediation path — the vfio-user client playing the VMM (KVM path), a simulated Xen vCPU
 * (Xen path), and later a real guest. Calls are synchronous, as a vCPU's are.
 * @module
 */
import { MdevError } from './errors.js';
import { PCI, PCI_BAR, PCI_COMMAND } from './pci/constants.js';

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

/**
 * A driver in two halves around a migration or a save/restore: `before` leaves the device in the
 * middle of its work (registers set, commands queued, an interrupt pending); `after` runs on the
 * restored device — possibly another host, another hypervisor path — continues the work and
 * reports what the guest sees. Driver modules export it as `migration`. Guest RAM moves with the
 * guest (the VMM's part), so `after` finds what `before` left there.
 */
export interface MigrationGuestDriver {
  /** The first half, on the source. */
  before: GuestDriver;
  /** The second half, on the restored device. */
  after: GuestDriver;
}

/** Which function of a driver module runs: its default export, or a half of its `migration`. */
export type DriverEntry = 'default' | 'before' | 'after';

/** The function `entry` names in a loaded driver module. */
export function driverEntry(mod: { default?: unknown; migration?: MigrationGuestDriver }, entry: DriverEntry = 'default'): GuestDriver {
  const fn = entry === 'default' ? mod.default : mod.migration?.[entry];
  if (typeof fn !== 'function') throw new MdevError('EINVAL', entry === 'default' ? 'the driver module has no default export' : `the driver module has no migration.${entry}`, 'driver');
  return fn as GuestDriver;
}

/** Config-space access, all the firmware step needs. */
export interface ConfigCycles {
  /** Reads config space. */
  cfgRead(offset: number, size: 1 | 2 | 4): number;
  /** Writes config space. */
  cfgWrite(offset: number, size: 1 | 2 | 4, value: number): void;
}

/** Where a BAR was placed. */
export interface PlacedBar {
  /** Guest-physical (or port) address. */
  address: bigint;
  /** An I/O BAR. */
  io: boolean;
}

/**
 * The firmware step (what hvmloader or SeaBIOS does before a guest's driver runs): sizes every BAR,
 * places memory BARs upwards from `mmioBase` and I/O BARs from `pioBase`, each aligned to its
 * size, and enables decoding. Returns the placement by BAR index.
 */
export function assignBars(cfg: ConfigCycles, options: { mmioBase?: bigint; pioBase?: number } = {}): Map<number, PlacedBar> {
  const bars = new Map<number, PlacedBar>();
  let mmio = options.mmioBase ?? 0xe0000000n;
  let pio = options.pioBase ?? 0xc000;
  let command = cfg.cfgRead(PCI.COMMAND, 2);
  for (let i = 0; i < 6; i++) {
    const reg = PCI.BAR0 + 4 * i;
    const orig = cfg.cfgRead(reg, 4);
    cfg.cfgWrite(reg, 4, 0xffffffff);
    const mask = cfg.cfgRead(reg, 4);
    if (mask === 0) continue;
    if (orig & PCI_BAR.SPACE_IO) {
      const sz = (~(mask & ~PCI_BAR.IO_FLAGS_MASK) >>> 0) + 1;
      pio = Math.ceil(pio / sz) * sz;
      cfg.cfgWrite(reg, 4, pio);
      bars.set(i, { address: BigInt(pio), io: true });
      pio += sz;
      command |= PCI_COMMAND.IO;
      continue;
    }
    const is64 = (orig & PCI_BAR.MEM_TYPE_MASK) === PCI_BAR.MEM_TYPE_64;
    let sizeMask = BigInt((mask & ~PCI_BAR.MEM_FLAGS_MASK) >>> 0);
    if (is64) {
      cfg.cfgWrite(reg + 4, 4, 0xffffffff);
      sizeMask |= BigInt(cfg.cfgRead(reg + 4, 4)) << 32n;
    } else sizeMask |= 0xffffffff00000000n;
    const sz = (~sizeMask & 0xffffffffffffffffn) + 1n;
    mmio = ((mmio + sz - 1n) / sz) * sz;
    cfg.cfgWrite(reg, 4, Number(mmio & 0xffffffffn));
    if (is64) cfg.cfgWrite(reg + 4, 4, Number(mmio >> 32n));
    bars.set(i, { address: mmio, io: false });
    mmio += sz;
    command |= PCI_COMMAND.MEMORY;
    if (is64) i++;
  }
  cfg.cfgWrite(PCI.COMMAND, 2, command);
  return bars;
}

/** The BARs as the guest left them (a restored device: read from config space, nothing written). */
export function programmedBars(cfg: ConfigCycles): Map<number, PlacedBar> {
  const bars = new Map<number, PlacedBar>();
  for (let i = 0; i < 6; i++) {
    const lo = cfg.cfgRead(PCI.BAR0 + 4 * i, 4);
    if (lo === 0) continue;
    if (lo & PCI_BAR.SPACE_IO) {
      bars.set(i, { address: BigInt(lo & ~PCI_BAR.IO_FLAGS_MASK), io: true });
      continue;
    }
    const is64 = (lo & PCI_BAR.MEM_TYPE_MASK) === PCI_BAR.MEM_TYPE_64;
    let address = BigInt((lo & ~PCI_BAR.MEM_FLAGS_MASK) >>> 0);
    if (is64) address |= BigInt(cfg.cfgRead(PCI.BAR0 + 4 * (i + 1), 4)) << 32n;
    bars.set(i, { address, io: false });
    if (is64) i++;
  }
  return bars;
}

/** Offset of the first standard capability with `id` in the device's config space, or 0. */
export function findCapability(host: GuestDriverHost, id: number): number {
  let ptr = host.cfgRead(0x34, 1) & 0xfc;
  for (let guard = 0; ptr !== 0 && guard < 48; guard++) {
    if (host.cfgRead(ptr, 1) === id) return ptr;
    ptr = host.cfgRead(ptr + 1, 1) & 0xfc;
  }
  return 0;
}

/** Reads a value as a number (drivers mostly use ≤ 4-byte registers). */
export function asNumber(v: number | bigint): number {
  return typeof v === 'bigint' ? Number(v) : v;
}

/** Counts and timings of a driver's accesses on one path. */
export interface TrapStats {
  /** Accesses by kind. */
  traps: { cfgRead: number; cfgWrite: number; mmioRead: number; mmioWrite: number; pioRead: number; pioWrite: number; total: number };
  /** Round-trip time of each access, in microseconds, in call order. */
  rttUs: number[];
}

/**
 * Wraps a host so every access is counted and timed (wall clock around the call: the whole trap
 * round trip as the guest sees it).
 */
export function instrument(host: GuestDriverHost): { host: GuestDriverHost; stats: TrapStats } {
  const stats: TrapStats = { traps: { cfgRead: 0, cfgWrite: 0, mmioRead: 0, mmioWrite: 0, pioRead: 0, pioWrite: 0, total: 0 }, rttUs: [] };
  const timed = <T>(kind: keyof TrapStats['traps'], fn: () => T): T => {
    const t0 = process.hrtime.bigint();
    const r = fn();
    stats.rttUs.push(Number(process.hrtime.bigint() - t0) / 1000);
    stats.traps[kind]++;
    stats.traps.total++;
    return r;
  };
  const wrapped: GuestDriverHost = {
    path: host.path,
    ram: host.ram,
    cfgRead: (o, s) => timed('cfgRead', () => host.cfgRead(o, s)),
    cfgWrite: (o, s, v) => timed('cfgWrite', () => host.cfgWrite(o, s, v)),
    mmioRead: (b, o, s) => timed('mmioRead', () => host.mmioRead(b, o, s)),
    mmioWrite: (b, o, s, v) => timed('mmioWrite', () => host.mmioWrite(b, o, s, v)),
    pioRead: (b, o, s) => timed('pioRead', () => host.pioRead(b, o, s)),
    pioWrite: (b, o, s, v) => timed('pioWrite', () => host.pioWrite(b, o, s, v)),
    waitForInterrupt: (t) => host.waitForInterrupt(t),
    interruptCount: () => host.interruptCount(),
  };
  return { host: wrapped, stats };
}

/** The p-th percentile (0-100) of `values` (nearest rank); 0 for none. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/** One driver run on one path: its result and what it cost. */
export interface DriverRun {
  /** What the driver returned. */
  result: DriverResult;
  /** Accesses by kind. */
  traps: TrapStats['traps'];
  /** Round trip of each access, microseconds. */
  rttUs: number[];
  /** Interrupts the guest took. */
  interrupts: number;
  /** Wall time of the run, milliseconds. */
  elapsedMs: number;
  /** Guest pages the device wrote, as the path reports them (null if the path could not tell). */
  dirtyPages: number | null;
}
