/**
 * The hypervisor-neutral PCI function: identity, type-0 header, BARs (with sizing), expansion ROM,
 * capabilities, interrupts, function-level reset and versioned save/restore. Adapters serve it;
 * it knows nothing of VFIO or Xen.
 * @module
 */
import { runOrDefer } from '../handler-scope.js';
import { MdevError, checkInt, describe } from '../errors.js';
import { Plane } from '../masked-storage.js';
import { RegisterBlock } from '../registers.js';
import { Region, type RegionAccessor } from '../regions.js';
import { InterruptController } from '../irq.js';
import { decodeState, encodeState, type StateSection } from '../state.js';
import type { GuestMemory } from '../guest-memory.js';
import type { WriteWatch } from '../write-watch.js';
import { ConfigSpace } from './config-space.js';
import {
  addDeviceSerialNumber,
  addExtendedVendorSpecific,
  addMsi,
  addMsix,
  addPciExpress,
  addPowerManagement,
  addVendorSpecific,
  type MsiCapability,
  type MsiOptions,
  type MsixCapability,
  type MsixOptions,
  type PcieCapability,
  type PcieOptions,
} from './capabilities.js';
import type { PlacedCapability } from './config-space.js';
import { PCI, PCI_BAR, PCI_COMMAND, PCI_EXP, PCI_STATUS_W1C } from './constants.js';

/** Identity of a PCI function. */
export interface PciIdentity {
  /** Vendor ID (not 0xffff). */
  vendorId: number;
  /** Device ID. */
  deviceId: number;
  /** 24-bit class code: base class << 16 | subclass << 8 | programming interface. */
  classCode: number;
  /** Revision ID (default 0). */
  revision?: number;
  /** Subsystem vendor ID (default: vendorId). */
  subsystemVendorId?: number;
  /** Subsystem ID (default 0). */
  subsystemId?: number;
}

/** Options of a {@link PciDevice}. */
export interface PciDeviceOptions extends PciIdentity {
  /** 256 (conventional) or 4096 (PCI Express) bytes of config space (default 256). */
  configSize?: 256 | 4096;
  /** INTx pin: 0 none, 1 INTA … 4 INTD (default 1). */
  interruptPin?: number;
  /** A short name for listings (default "pci-device"). */
  name?: string;
}

/** Kind of a BAR. */
export type BarKind = 'mem32' | 'mem64' | 'io';

/** A BAR as declared. */
export interface BarInfo {
  /** BAR index 0-5 (a 64-bit BAR also occupies index + 1). */
  readonly index: number;
  /** 32/64-bit memory or I/O. */
  readonly kind: BarKind;
  /** Prefetchable memory. */
  readonly prefetchable: boolean;
  /** The region behind it; its size is the BAR size. */
  readonly region: Region;
}

/** A BAR's decode changed: the guest moved it, or toggled decoding in the command register. */
export interface BarRemapEvent {
  /** BAR index (0-5), or 6 for the expansion ROM. */
  readonly index: number;
  /** Previous decoded address, or null when it was not decoding. */
  readonly from: bigint | null;
  /** New decoded address, or null when it no longer decodes. */
  readonly to: bigint | null;
  /** Size in bytes. */
  readonly size: number;
  /** Address space. */
  readonly space: 'mmio' | 'pio';
}

/** Listener types of a {@link PciDevice}. */
export interface PciDeviceEvents {
  /** A BAR or the ROM started, stopped or moved decoding. */
  barRemap: (event: BarRemapEvent) => void;
  /** The function was reset (FLR, or by the adapter). */
  reset: () => void;
  /** The device met something it cannot make sense of and says so (see {@link PciDevice.diagnose}). */
  diagnostic: (event: DeviceDiagnostic) => void;
}

/** What a device reports with {@link PciDevice.diagnose}. */
export interface DeviceDiagnostic {
  /** What the device saw, in its own terms. */
  message: string;
  /**
   * Set when guest memory read by DMA cannot be what the guest's driver wrote (e.g. a command ring
   * of zeros): the guest-physical address. Adapters add what they know of that memory — how it is
   * shared, and the likely cause.
   */
  suspectGpa?: number;
}

/**
 * A restore failed and the previous state could not be put back either: the device is in no
 * defined state until it is reset. (Migration reports this as the ERROR state.)
 */
export class DeviceStateLostError extends MdevError {
  override name = 'DeviceStateLostError';

  /**
   * Creates the error (code `EIO`, field `device.state`).
   * @param message what failed
   */
  constructor(message: string) {
    super('EIO', message, 'device.state');
  }
}

/** Options of {@link PciDevice.saveState}. */
export interface SaveStateOptions {
  /** Include the RAM behind BARs as `ram.barN` sections (default true). */
  includeRam?: boolean;
}

/** Options of {@link PciDevice.restoreState}. */
export interface RestoreStateOptions {
  /** RAM of BARs (by BAR index) that the image leaves out, each exactly the region's size. */
  ram?: ReadonlyMap<number, Uint8Array>;
}

/** VFIO-style region indexes: BAR0-5, ROM, config. */
export const REGION_INDEX = { BAR0: 0, ROM: 6, CONFIG: 7 } as const;

const STATE_SECTION_VERSION = 1;

function u16(field: string, v: unknown): number {
  return checkInt(field, v, 0, 0xffff);
}

/**
 * A PCI function. Subclass it (or compose it) to build a device: declare BARs with regions,
 * add capabilities, then hand it to an adapter, which calls {@link realize}.
 */
export class PciDevice {
  /** Config space values and masks. */
  readonly config: ConfigSpace;
  /** A short name for listings. */
  readonly name: string;
  private readonly barList: (BarInfo | null)[] = [null, null, null, null, null, null];
  private romRegion: Region | null = null;
  private msiCap: MsiCapability | null = null;
  private msixCap: MsixCapability | null = null;
  private pcieCap: PcieCapability | null = null;
  private irqController: InterruptController | null = null;
  private powerOnConfig: Uint8Array | null = null;
  private decoded: (bigint | null)[] = [null, null, null, null, null, null, null];
  private readonly listeners: { [K in keyof PciDeviceEvents]: PciDeviceEvents[K][] } = { barRemap: [], reset: [], diagnostic: [] };

  /**
   * Creates the function with its identity and a type-0 header with standard write masks.
   * @param options identity and layout
   */
  constructor(options: PciDeviceOptions) {
    if (typeof options !== 'object' || options === null) throw new MdevError('EINVAL', 'must be an object', 'options');
    const vendorId = u16('vendorId', options.vendorId);
    if (vendorId === 0xffff) throw new MdevError('EINVAL', '0xffff means "no device" and cannot be a vendor ID', 'vendorId');
    const deviceId = u16('deviceId', options.deviceId);
    const classCode = checkInt('classCode', options.classCode, 0, 0xffffff);
    const revision = checkInt('revision', options.revision ?? 0, 0, 0xff);
    const subVendor = u16('subsystemVendorId', options.subsystemVendorId ?? vendorId);
    const subId = u16('subsystemId', options.subsystemId ?? 0);
    const pin = checkInt('interruptPin', options.interruptPin ?? 1, 0, 4);
    this.name = options.name ?? 'pci-device';
    this.config = new ConfigSpace(options.configSize ?? 256);
    const c = this.config;
    c.set(PCI.VENDOR_ID, 2, vendorId);
    c.set(PCI.DEVICE_ID, 2, deviceId);
    c.set(PCI.REVISION_ID, 1, revision);
    c.set(PCI.CLASS_PROG, 1, classCode & 0xff);
    c.set(PCI.CLASS_DEVICE, 2, classCode >> 8);
    c.set(PCI.SUBSYSTEM_VENDOR_ID, 2, subVendor);
    c.set(PCI.SUBSYSTEM_ID, 2, subId);
    c.set(PCI.INTERRUPT_PIN, 1, pin);
    const cmdMask = PCI_COMMAND.IO | PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER | PCI_COMMAND.PARITY | PCI_COMMAND.SERR | PCI_COMMAND.INTX_DISABLE;
    c.setMasks(PCI.COMMAND, 2, cmdMask);
    c.setMasks(PCI.STATUS, 2, 0, PCI_STATUS_W1C);
    c.setMasks(PCI.CACHE_LINE_SIZE, 1, 0xff);
    c.setMasks(PCI.LATENCY_TIMER, 1, 0xff);
    c.setMasks(PCI.INTERRUPT_LINE, 1, 0xff);
  }

  // ---- building -------------------------------------------------------------------------------

  private assertBuilding(what: string): void {
    if (this.powerOnConfig) throw new MdevError('EBUSY', `cannot ${what} after realize()`, 'device');
  }

  /** Declares BAR `index` backed by `region` (size = region size, a power of two). */
  addBar(index: number, region: Region, options: { kind?: BarKind; prefetchable?: boolean } = {}): BarInfo {
    this.assertBuilding('add a BAR');
    checkInt('index', index, 0, 5);
    if (!(region instanceof Region)) throw new MdevError('EINVAL', 'must be a Region', 'region');
    const kind = options.kind ?? (region.space === 'pio' ? 'io' : 'mem32');
    if (kind !== 'mem32' && kind !== 'mem64' && kind !== 'io') throw new MdevError('EINVAL', `unknown BAR kind ${describe(kind)}`, 'kind');
    const prefetchable = options.prefetchable ?? false;
    const size = region.size;
    if ((kind === 'io') !== (region.space === 'pio')) throw new MdevError('EINVAL', `a ${kind} BAR needs a ${kind === 'io' ? 'pio' : 'mmio'} region`, 'kind');
    if (size & (size - 1) || size > 2 ** 52) throw new MdevError('EINVAL', `BAR size must be a power of two, got ${size}`, 'region.size');
    if (kind === 'io' && (size < 4 || size > 256)) throw new MdevError('ERANGE', `I/O BAR size must be 4 … 256 bytes, got ${size}`, 'region.size');
    if (kind !== 'io' && size < 16) throw new MdevError('ERANGE', `memory BAR size must be at least 16 bytes, got ${size}`, 'region.size');
    if (kind === 'mem32' && size > 2 ** 31) throw new MdevError('ERANGE', 'a 32-bit BAR cannot exceed 2 GiB; use mem64', 'region.size');
    if (kind === 'io' && prefetchable) throw new MdevError('EINVAL', 'I/O BARs are not prefetchable', 'prefetchable');
    if (kind === 'mem64' && index === 5) throw new MdevError('EINVAL', 'a 64-bit BAR needs two slots; BAR5 has no pair', 'index');
    const slots = kind === 'mem64' ? [index, index + 1] : [index];
    for (const s of slots) {
      if (this.barList[s] !== null || this.barList.some((b) => b?.kind === 'mem64' && b.index + 1 === s)) {
        throw new MdevError('EEXIST', `BAR${s} is already in use`, 'index');
      }
    }
    const off = PCI.BAR0 + 4 * index;
    const sizeMask = BigInt.asUintN(64, ~(BigInt(size) - 1n));
    if (kind === 'io') {
      this.config.set(off, 4, PCI_BAR.SPACE_IO);
      this.config.setMasks(off, 4, Number(sizeMask & 0xfffffffcn));
    } else {
      const flags = (kind === 'mem64' ? PCI_BAR.MEM_TYPE_64 : PCI_BAR.MEM_TYPE_32) | (prefetchable ? PCI_BAR.MEM_PREFETCH : 0);
      this.config.set(off, 4, flags);
      this.config.setMasks(off, 4, Number(sizeMask & 0xfffffff0n));
      if (kind === 'mem64') this.config.setMasks(off + 4, 4, Number(sizeMask >> 32n));
    }
    const bar: BarInfo = { index, kind, prefetchable, region };
    this.barList[index] = bar;
    return bar;
  }

  /** Declares an expansion ROM holding `image` (padded to a power of two ≥ 2 KiB; read-only). */
  setRom(image: Uint8Array): Region {
    this.assertBuilding('set the ROM');
    if (!(image instanceof Uint8Array) || image.length === 0) throw new MdevError('EINVAL', 'must be a non-empty Uint8Array', 'image');
    let size = 2048;
    while (size < image.length) size *= 2;
    if (size > 16 * 1024 * 1024) throw new MdevError('ERANGE', 'ROM images are limited to 16 MiB', 'image');
    const bytes = new Uint8Array(size);
    bytes.set(image);
    const region = new Region('rom', size, {
      accessor: {
        read(offset, out) {
          out.set(bytes.subarray(offset, offset + out.length));
        },
        write() {},
      },
    });
    this.config.setMasks(PCI.ROM_ADDRESS, 4, (PCI_BAR.ROM_ADDRESS_MASK & ~(size - 1)) | PCI_BAR.ROM_ENABLE);
    this.romRegion = region;
    return region;
  }

  /** Adds a Power Management capability. */
  addPowerManagement(offset?: number): PlacedCapability {
    this.assertBuilding('add capabilities');
    return addPowerManagement(this.config, offset);
  }

  /** Adds an MSI capability (one per function). */
  addMsi(options: MsiOptions): MsiCapability {
    this.assertBuilding('add capabilities');
    if (this.msiCap) throw new MdevError('EEXIST', 'the function already has MSI', 'msi');
    this.msiCap = addMsi(this.config, options);
    return this.msiCap;
  }

  /** Adds an MSI-X capability; its table and PBA are placed in the named BARs at realize(). */
  addMsix(options: MsixOptions): MsixCapability {
    this.assertBuilding('add capabilities');
    if (this.msixCap) throw new MdevError('EEXIST', 'the function already has MSI-X', 'msix');
    this.msixCap = addMsix(this.config, options);
    return this.msixCap;
  }

  /** Adds a PCI Express capability (needs 4 KiB config space for extended capabilities only). */
  addPciExpress(options: PcieOptions = {}): PcieCapability {
    this.assertBuilding('add capabilities');
    if (this.pcieCap) throw new MdevError('EEXIST', 'the function already has a PCI Express capability', 'pcie');
    this.pcieCap = addPciExpress(this.config, options);
    // PCI Express functions hardwire the latency timer to 0.
    this.config.setMasks(PCI.LATENCY_TIMER, 1, 0);
    return this.pcieCap;
  }

  /** Adds a vendor-specific capability. */
  addVendorSpecific(data: Uint8Array, writableMask?: Uint8Array, offset?: number): PlacedCapability {
    this.assertBuilding('add capabilities');
    return addVendorSpecific(this.config, data, writableMask, offset);
  }

  /** Adds a Device Serial Number extended capability. */
  addDeviceSerialNumber(serial: bigint, offset?: number): PlacedCapability {
    this.assertBuilding('add capabilities');
    return addDeviceSerialNumber(this.config, serial, offset);
  }

  /** Adds a vendor-specific extended capability. */
  addExtendedVendorSpecific(vsecId: number, vsecRev: number, data: Uint8Array, offset?: number): PlacedCapability {
    this.assertBuilding('add capabilities');
    return addExtendedVendorSpecific(this.config, vsecId, vsecRev, data, offset);
  }

  /**
   * Freezes the layout: places the MSI-X table and PBA into their BARs, creates the interrupt
   * controller and records the power-on config image that reset returns to. Idempotent.
   */
  realize(): this {
    if (this.powerOnConfig) return this;
    const c = this.config;
    const irq = new InterruptController(c, c.get(PCI.INTERRUPT_PIN, 1), this.msiCap, this.msixCap);
    const msix = this.msixCap;
    if (msix) {
      const tableBar = this.barList[msix.tableBar];
      const pbaBar = this.barList[msix.pbaBar];
      if (!tableBar || tableBar.kind === 'io') throw new MdevError('EINVAL', `MSI-X table BAR${msix.tableBar} is not a memory BAR`, 'msix.tableBar');
      if (!pbaBar || pbaBar.kind === 'io') throw new MdevError('EINVAL', `MSI-X PBA BAR${msix.pbaBar} is not a memory BAR`, 'msix.pbaBar');
      tableBar.region.addOverlay('msix-table', msix.tableOffset, msix.vectors * 16, irq.msixTable!);
      const pba = irq.msixPba!;
      pbaBar.region.addOverlay('msix-pba', msix.pbaOffset, pba.size, {
        read: (offset, out) => out.set(pba.values.subarray(offset, offset + out.length)),
        write: () => {},
      });
    }
    const command = c.get(PCI.COMMAND, 2);
    const hasIo = this.barList.some((b) => b?.kind === 'io');
    const hasMem = this.barList.some((b) => b && b.kind !== 'io') || this.romRegion !== null;
    // Decode enables for spaces the function does not implement are hardwired to 0.
    let mask = c.writableMask(PCI.COMMAND, 2);
    if (!hasIo) mask &= ~PCI_COMMAND.IO;
    if (!hasMem) mask &= ~PCI_COMMAND.MEMORY;
    c.setMasks(PCI.COMMAND, 2, mask);
    c.set(PCI.COMMAND, 2, command & mask);
    this.irqController = irq;
    this.powerOnConfig = c.storage.values.slice();
    return this;
  }

  // ---- introspection --------------------------------------------------------------------------

  /** The interrupt controller (realizes the device if needed). */
  get irq(): InterruptController {
    this.realize();
    return this.irqController!;
  }

  /** BAR declarations by index (null where unused or the upper half of a 64-bit BAR). */
  get bars(): readonly (BarInfo | null)[] {
    return this.barList;
  }

  /** The expansion ROM region, if any. */
  get rom(): Region | null {
    return this.romRegion;
  }

  /** The MSI capability, if any. */
  get msi(): MsiCapability | null {
    return this.msiCap;
  }

  /** The MSI-X capability, if any. */
  get msix(): MsixCapability | null {
    return this.msixCap;
  }

  /** The PCI Express capability, if any. */
  get pcie(): PcieCapability | null {
    return this.pcieCap;
  }

  /** Region by VFIO index: 0-5 BARs, 6 ROM. Null where absent. */
  region(index: number): Region | null {
    if (index >= 0 && index <= 5) return this.barList[index]?.region ?? null;
    if (index === REGION_INDEX.ROM) return this.romRegion;
    return null;
  }

  /**
   * The address BAR `index` (or 6 for the ROM) currently decodes at, or null: decoding disabled in
   * the command register (or the ROM enable bit), address 0, or an address whose range would wrap
   * (such as the all-ones sizing pattern), as firmware and QEMU treat them.
   */
  barAddress(index: number): bigint | null {
    const c = this.config;
    const command = c.get(PCI.COMMAND, 2);
    if (index === REGION_INDEX.ROM) {
      const rom = this.romRegion;
      const v = c.get(PCI.ROM_ADDRESS, 4);
      if (!rom || !(command & PCI_COMMAND.MEMORY) || !(v & PCI_BAR.ROM_ENABLE)) return null;
      const addr = BigInt((v & PCI_BAR.ROM_ADDRESS_MASK) >>> 0);
      return addr === 0n || addr + BigInt(rom.size) - 1n >= 0xffffffffn ? null : addr;
    }
    const bar = this.barList[index];
    if (!bar) return null;
    const off = PCI.BAR0 + 4 * index;
    const size = BigInt(bar.region.size);
    if (bar.kind === 'io') {
      if (!(command & PCI_COMMAND.IO)) return null;
      const addr = BigInt((c.get(off, 4) & ~PCI_BAR.IO_FLAGS_MASK) >>> 0);
      return addr === 0n || addr + size - 1n > 0xffffn ? null : addr;
    }
    if (!(command & PCI_COMMAND.MEMORY)) return null;
    let addr = BigInt((c.get(off, 4) & ~PCI_BAR.MEM_FLAGS_MASK) >>> 0);
    let limit = 0xffffffffn;
    if (bar.kind === 'mem64') {
      addr |= BigInt(c.get(off + 4, 4)) << 32n;
      limit = 0xffffffffffffffffn;
    }
    return addr === 0n || addr + size - 1n >= limit ? null : addr;
  }

  // ---- guest config access --------------------------------------------------------------------

  /** Guest read of config space (any length and alignment within the space). */
  configRead(offset: number, out: Uint8Array): void {
    this.realize();
    this.checkConfig(offset, out.length);
    this.config.storage.read(offset, out);
  }

  /** Guest write of config space: masks apply, then BAR decode, FLR and interrupt side effects. */
  configWrite(offset: number, data: Uint8Array): void {
    this.realize();
    this.checkConfig(offset, data.length);
    this.config.storage.write(offset, data);
    const pcie = this.pcieCap;
    if (pcie?.flr) {
      const ctl = this.config.get(pcie.offset + PCI_EXP.DEVCTL, 2);
      if (ctl & PCI_EXP.DEVCTL_BCR_FLR) {
        // Initiate Function Level Reset: the bit always reads 0; the function resets.
        this.config.set(pcie.offset + PCI_EXP.DEVCTL, 2, ctl & ~PCI_EXP.DEVCTL_BCR_FLR);
        runOrDefer(() => this.reset());
        return;
      }
    }
    this.irqController!.afterConfigWrite();
    this.updateDecode();
    this.onConfigWrite(offset, data.length);
  }

  /** Config space as a region accessor (VFIO region 7, Xen PCI_CONFIG ioreqs). */
  readonly configAccessor: RegionAccessor = {
    read: (offset, out) => this.configRead(offset, out),
    write: (offset, data) => this.configWrite(offset, data),
  };

  private checkConfig(offset: number, length: number): void {
    if (!Number.isInteger(offset) || offset < 0 || offset > this.config.size || length > this.config.size - offset) {
      throw new MdevError('ERANGE', `config access [${describe(offset)}, +${length}) is outside the ${this.config.size}-byte space`, 'offset');
    }
  }

  private updateDecode(): void {
    for (let i = 0; i <= REGION_INDEX.ROM; i++) {
      const to = this.barAddress(i);
      const from = this.decoded[i]!;
      if (to === from) continue;
      this.decoded[i] = to;
      const region = this.region(i)!;
      this.emit('barRemap', { index: i, from, to, size: region.size, space: region.space });
    }
  }

  /** Called after every guest config write; override for device-specific config behaviour. */
  protected onConfigWrite(_offset: number, _length: number): void {}

  // ---- DMA ------------------------------------------------------------------------------------

  private memory: GuestMemory | null = null;

  /** Gives the device access to guest memory (the adapter calls this), or takes it away (null). */
  attachGuestMemory(memory: GuestMemory | null): void {
    this.memory = memory;
  }

  /** The attached guest memory, or null. */
  get guestMemory(): GuestMemory | null {
    return this.memory;
  }

  private watcher: WriteWatch | null = null;

  /**
   * Gives the device the adapter's write-watch service (trap mode on Xen, compare mode on
   * vfio-user), or takes it away (null).
   */
  attachWriteWatch(watch: WriteWatch | null): void {
    this.watcher = watch;
  }

  /** The attached write-watch service, or null. */
  get writeWatch(): WriteWatch | null {
    return this.watcher;
  }

  private dmaMemory(): GuestMemory {
    if (!(this.config.get(PCI.COMMAND, 2) & PCI_COMMAND.MASTER)) {
      throw new MdevError('EPERM', 'bus mastering is disabled in the command register', 'dma');
    }
    if (!this.memory) throw new MdevError('ENODEV', 'no guest memory is attached', 'dma');
    return this.memory;
  }

  /** Bytes this device moved by DMA (for tools and comparisons). */
  readonly dmaStats = { bytesRead: 0, bytesWritten: 0 };

  /** Device DMA read from guest memory; needs Bus Master Enable. */
  dmaRead(gpa: number, out: Uint8Array): void {
    this.dmaMemory().read(gpa, out);
    this.dmaStats.bytesRead += out.length;
  }

  /** Device DMA write to guest memory (dirty-tracked); needs Bus Master Enable. */
  dmaWrite(gpa: number, data: Uint8Array): void {
    this.dmaMemory().write(gpa, data);
    this.dmaStats.bytesWritten += data.length;
  }

  // ---- events ---------------------------------------------------------------------------------

  /** Adds a listener. */
  on<K extends keyof PciDeviceEvents>(event: K, listener: PciDeviceEvents[K]): this {
    if (!(event in this.listeners)) throw new MdevError('EINVAL', `unknown event ${describe(event)}`, 'event');
    (this.listeners[event] as PciDeviceEvents[K][]).push(listener);
    return this;
  }

  /** Removes a listener. */
  off<K extends keyof PciDeviceEvents>(event: K, listener: PciDeviceEvents[K]): this {
    const list = this.listeners[event] as PciDeviceEvents[K][] | undefined;
    const i = list ? list.indexOf(listener) : -1;
    if (i >= 0) list!.splice(i, 1);
    return this;
  }

  private accessLock: { lock(): void; unlock(): void } | null = null;

  /**
   * Adapters that serve some accesses off the JS thread (the vfio-user I/O thread) hand the device
   * their access lock here; null takes it back.
   */
  useAccessLock(lock: { lock(): void; unlock(): void } | null): void {
    this.accessLock = lock;
  }

  /**
   * Runs `fn` while no guest access is being served on another thread: device code that changes
   * register state outside access handlers and control messages (timers, its own events) goes
   * here. Access handlers themselves need not: the access that runs them holds the device.
   */
  exclusive<T>(fn: () => T): T {
    const l = this.accessLock;
    if (!l) return fn();
    l.lock();
    try {
      return fn();
    } finally {
      l.unlock();
    }
  }

  /**
   * Reports a diagnostic: something the guest or the VMM did that the device cannot make sense of.
   * The device keeps going as its hardware would (an error register, a dropped command); this is
   * for the person running it. With `suspectGpa`, the adapter adds what it knows of that memory.
   */
  diagnose(diagnostic: DeviceDiagnostic): void {
    this.emit('diagnostic', diagnostic);
  }

  private emit<K extends keyof PciDeviceEvents>(event: K, ...args: Parameters<PciDeviceEvents[K]>): void {
    for (const l of [...this.listeners[event]]) (l as (...a: Parameters<PciDeviceEvents[K]>) => void)(...args);
  }

  // ---- reset and state ------------------------------------------------------------------------

  /** Register blocks reachable from the BARs (for reset and state), excluding the MSI-X table. */
  registerBlocks(): RegisterBlock[] {
    const blocks: RegisterBlock[] = [];
    const seen = new Set<RegisterBlock>();
    for (const bar of this.barList) {
      if (!bar) continue;
      const candidates = [bar.region.accessor, ...bar.region.overlays.map((o) => o.accessor)];
      for (const a of candidates) {
        if (a instanceof RegisterBlock && a !== this.irqController?.msixTable && !seen.has(a)) {
          seen.add(a);
          blocks.push(a);
        }
      }
    }
    return blocks;
  }

  /**
   * Function-level reset: config space returns to its power-on image, register blocks to their
   * reset values, interrupts to idle; then {@link onReset} runs and listeners are told.
   */
  reset(): void {
    this.realize();
    this.config.storage.values.set(this.powerOnConfig!);
    for (const b of this.registerBlocks()) b.reset();
    this.irqController!.reset();
    this.onReset();
    this.updateDecode();
    this.emit('reset');
  }

  /** Device-specific reset work (stop engines, clear internal state); override. */
  protected onReset(): void {}

  /** Device-specific state sections; override together with {@link loadExtraState}. */
  protected saveExtraState(): StateSection[] {
    return [];
  }

  /** Restores the sections from {@link saveExtraState}; throw an MdevError on bad input. */
  protected loadExtraState(_sections: ReadonlyMap<string, StateSection>): void {}

  /**
   * Runs after a successful {@link restoreState}, with everything loaded: re-derive what is not
   * state but follows from it — caches of guest memory, write-watches, which belong to the host the
   * device ran on before (a restored device may run on another host, or another hypervisor path).
   * Must not throw. Override.
   */
  protected onRestored(): void {}

  private identity(): { vendorId: number; deviceId: number } {
    return { vendorId: this.config.get(PCI.VENDOR_ID, 2), deviceId: this.config.get(PCI.DEVICE_ID, 2) };
  }

  /**
   * The RAM behind the BARs (mappable regions such as VRAM), by BAR index: the bytes a state image
   * carries as `ram.barN` sections, and what live migration copies ahead while the guest runs.
   */
  ramBars(): { index: number; bytes: Uint8Array }[] {
    this.realize();
    return this.barList.flatMap((bar, i) => (bar?.region.backing ? [{ index: i, bytes: bar.region.backing.bytes.subarray(0, bar.region.size) }] : []));
  }

  /**
   * A versioned image of the device state: config space, interrupts, register blocks, RAM, extras.
   * With `includeRam: false` the `ram.barN` sections are left out (live migration sends RAM
   * separately, page by page); {@link restoreState} then takes the RAM in its `ram` option.
   */
  saveState(options: SaveStateOptions = {}): Uint8Array {
    this.realize();
    const includeRam = options.includeRam ?? true;
    const sections: StateSection[] = [
      { name: 'pci.config', version: STATE_SECTION_VERSION, data: this.config.storage.values.slice() },
      { name: 'pci.irq', version: STATE_SECTION_VERSION, data: this.irqController!.saveState() },
    ];
    for (const b of this.registerBlocks()) sections.push({ name: `regs.${b.name}`, version: STATE_SECTION_VERSION, data: b.saveState() });
    if (includeRam) for (const r of this.ramBars()) sections.push({ name: `ram.bar${r.index}`, version: STATE_SECTION_VERSION, data: r.bytes.slice() });
    for (const s of this.saveExtraState()) {
      if (!s.name.startsWith('x.')) throw new MdevError('EINVAL', `extra state section ${s.name} must be named "x.…"`, 'saveExtraState');
      sections.push(s);
    }
    return encodeState(this.identity(), sections);
  }

  /**
   * Restores an image from {@link saveState}. Everything is checked before anything changes; if a
   * device-specific section is refused, the previous state is put back and the error thrown. If
   * even that fails (a device hook that throws on its own saved state), the device is in no
   * defined state and a {@link DeviceStateLostError} (`EIO`) is thrown: only {@link reset} brings
   * it back.
   * `options.ram` supplies the RAM of BARs whose `ram.barN` section the image leaves out.
   */
  restoreState(image: Uint8Array, options: RestoreStateOptions = {}): void {
    this.realize();
    const sections = decodeState(image, this.identity());
    const need = (name: string, size: number | null): Uint8Array => {
      const s = sections.get(name);
      if (!s) throw new MdevError('EINVAL', `section ${name} is missing`, 'image');
      if (s.version !== STATE_SECTION_VERSION) throw new MdevError('ENOTSUP', `section ${name} version ${s.version}, this build reads ${STATE_SECTION_VERSION}`, `image.${name}`);
      if (size !== null && s.data.length !== size) throw new MdevError('EINVAL', `section ${name} has ${s.data.length} bytes, expected ${size}`, `image.${name}`);
      return s.data;
    };
    const config = need('pci.config', this.config.size);
    const irqState = need('pci.irq', null);
    const blocks = this.registerBlocks().map((b) => [b, need(`regs.${b.name}`, b.size)] as const);
    const given = options.ram ?? new Map<number, Uint8Array>();
    const ramBars = this.ramBars();
    for (const index of given.keys()) {
      if (!ramBars.some((r) => r.index === index)) throw new MdevError('EINVAL', `BAR${index} has no RAM`, `ram.${index}`);
      if (sections.has(`ram.bar${index}`)) throw new MdevError('EINVAL', `RAM of BAR${index} is both in the image and given separately`, `ram.${index}`);
    }
    const rams = ramBars.map((r) => {
      const data = given.get(r.index);
      if (data === undefined) return [r.bytes, need(`ram.bar${r.index}`, r.bytes.length)] as const;
      if (!(data instanceof Uint8Array) || data.length !== r.bytes.length) {
        throw new MdevError('EINVAL', `RAM of BAR${r.index} must be ${r.bytes.length} bytes`, `ram.${r.index}`);
      }
      return [r.bytes, data] as const;
    });
    const known = new Set(['pci.config', 'pci.irq', ...blocks.map(([b]) => `regs.${b.name}`), ...ramBars.map((r) => `ram.bar${r.index}`)]);
    for (const name of sections.keys()) {
      if (!known.has(name) && !name.startsWith('x.')) throw new MdevError('EINVAL', `unknown section ${name}`, 'image');
    }
    // Read-only config bits are not state: an image may only differ where the guest could write.
    const wmask = this.config.storage.plane(Plane.Writable);
    const w1c = this.config.storage.plane(Plane.W1c);
    const current = this.config.storage.values;
    for (let i = 0; i < config.length; i++) {
      const fixed = ~(wmask[i]! | w1c[i]!) & 0xff;
      if ((config[i]! & fixed) !== (this.powerOnConfig![i]! & fixed) && !this.isDynamicConfigByte(i)) {
        throw new MdevError('EINVAL', `config byte 0x${i.toString(16)} differs in read-only bits (image from another layout?)`, 'image.pci.config');
      }
    }
    const backup = this.saveState();
    const extras = new Map([...sections].filter(([n]) => n.startsWith('x.')));
    try {
      current.set(config);
      for (const [b, data] of blocks) b.loadState(data);
      for (const [bytes, data] of rams) bytes.set(data);
      this.irqController!.loadState(irqState);
      this.loadExtraState(extras);
    } catch (e) {
      try {
        this.restoreState(backup);
      } catch (again) {
        throw new DeviceStateLostError(`restoring failed (${(e as Error).message}) and so did putting the previous state back (${(again as Error).message}); reset the device`);
      }
      throw e;
    }
    this.updateDecode();
    this.onRestored();
  }

  /** Read-only config bytes the device itself changes at run time (status, MSI pending). */
  private isDynamicConfigByte(i: number): boolean {
    if (i === PCI.STATUS) return true;
    const msi = this.msiCap;
    if (msi?.perVectorMask) {
      const p = msi.offset + (msi.addr64 ? 0x14 : 0x10);
      if (i >= p && i < p + 4) return true;
    }
    return false;
  }
}
