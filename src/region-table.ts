/**
 * Builds the native region dispatch table for a device: for each region (VFIO numbering: BAR0-5,
 * ROM 6, config 7) the list of segments the native core serves itself (register storage without
 * hooks, shared RAM, unimplemented space) and those it hands to JS. Both adapters dispatch trapped
 * accesses through it.
 * @module
 */
import { errnoOf, isErrno } from './errors.js';
import { enterHandlerScope, leaveHandlerScope } from './handler-scope.js';
import { binding } from './native/binding.js';
import { RegisterBlock } from './registers.js';
import type { Region, RegionAccessor } from './regions.js';
import type { PciDevice } from './pci/device.js';

/** Where one segment's accesses go. */
export type SegmentKind = 'js' | 'masked' | 'ram' | 'zero';

/** A segment as handed to the native table. */
export interface SegmentSpec {
  /** Offset in the region. */
  offset: number;
  /** Size in bytes. */
  size: number;
  /** Who serves it. */
  kind: SegmentKind;
  /** Register planes (masked) or RAM bytes (ram). */
  storage?: Uint8Array;
  /** Bytes per plane (masked). */
  planeSize?: number;
  /** Storage offset of the segment's first byte. */
  base?: number;
}

/** Counters of where accesses were served. */
export interface RegionTableStats {
  /** Reads served natively. */
  nativeReads: number;
  /** Writes served natively. */
  nativeWrites: number;
  /** Reads that called into JS. */
  jsReads: number;
  /** Writes that called into JS. */
  jsWrites: number;
}

/** The native table's interface. */
export interface NativeRegionTable {
  /** Installs or replaces region `index`. */
  setRegion(index: number, spec: { size: number; readable: boolean; writable: boolean; segments: SegmentSpec[] }): void;
  /** Removes region `index` (accesses then fail with EINVAL). */
  clearRegion(index: number): void;
  /** Reads through the table; returns 0 or an errno. */
  read(region: number, offset: number | bigint, out: Uint8Array): number;
  /** Writes through the table; returns 0 or an errno. */
  write(region: number, offset: number | bigint, data: Uint8Array): number;
  /** Where accesses were served. */
  stats(): RegionTableStats;
  /** Takes the device's access lock (held by accesses served on an I/O thread); recursive. */
  lock(): void;
  /** Releases {@link lock}. */
  unlock(): void;
}

const NativeRegionTableClass = binding['RegionTable'] as new (
  jsAccess: (region: number, offset: number, count: number, write: boolean) => number,
  scratch: Uint8Array,
) => NativeRegionTable;

/** Region index of config space in the table (VFIO_PCI_CONFIG_REGION_INDEX). */
export const CONFIG_REGION = 7;

/** The errno for an error thrown by a device, EIO for anything without one. */
export function errnoFromError(e: unknown): number {
  if (isErrno(e)) {
    if (typeof e.errno === 'number' && e.errno > 0) return e.errno;
    try {
      return errnoOf(e.code);
    } catch {
      return errnoOf('EIO');
    }
  }
  return errnoOf('EIO');
}

/** The region's layout as native table segments. */
export function regionSegments(region: Region): SegmentSpec[] {
  const forAccessor = (acc: RegionAccessor, offset: number, size: number, base: number): SegmentSpec =>
    acc instanceof RegisterBlock
      ? { offset, size, kind: 'masked', storage: acc.storage.planes, planeSize: acc.storage.size, base }
      : { offset, size, kind: 'js' };
  return region.layout.map(({ offset, size, target }): SegmentSpec => {
    if (target === 'ram') return { offset, size, kind: 'ram', storage: region.backing!.bytes, base: offset };
    if (target === 'empty') return { offset, size, kind: 'zero' };
    if (target === null) return forAccessor(region.accessor, offset, size, offset);
    return forAccessor(target.accessor, offset, size, offset - target.offset);
  });
}

/**
 * Installs (`enabled`) or removes BAR `index` (6: the ROM) of `device` in `table`; accesses to a
 * removed region fail with EINVAL. A device without that BAR is left alone. (Migration removes the
 * BARs while the device is stopped.)
 */
export function setBarRegion(table: NativeRegionTable, device: PciDevice, index: number, enabled: boolean): void {
  const r = device.region(index);
  if (!r) return;
  if (enabled) table.setRegion(index, { size: r.size, readable: true, writable: index !== 6, segments: regionSegments(r) });
  else table.clearRegion(index);
}

/**
 * Creates the native table for `device`. Accesses the native core cannot serve come back to JS,
 * which runs them through the device model and maps thrown errors to errnos (`onError` sees
 * errors that carried no errno: those are device bugs).
 */
export function createRegionTable(device: PciDevice, options: { maxAccess: number; onError?: (e: unknown) => void }): NativeRegionTable {
  const scratch = new Uint8Array(options.maxAccess);
  const onError = options.onError ?? ((e: unknown) => console.error('mdevkit: device access failed:', e));
  const access = (region: number, offset: number, data: Uint8Array, write: boolean): number => {
    if (region === CONFIG_REGION) {
      if (write) device.configWrite(offset, data);
      else device.configRead(offset, data);
    } else {
      const r = device.region(region);
      if (!r) return errnoOf('EINVAL');
      if (write) r.write(offset, data);
      else r.read(offset, data);
    }
    return 0;
  };
  // Views of the scratch buffer by length: a register access does not allocate one each time.
  const views: Uint8Array[] = [];
  const jsAccess = (region: number, offset: number, count: number, write: boolean): number => {
    const data = count < 64 ? (views[count] ??= scratch.subarray(0, count)) : scratch.subarray(0, count);
    enterHandlerScope();
    try {
      return access(region, offset, data, write);
    } catch (e) {
      if (!isErrno(e)) onError(e);
      return errnoFromError(e);
    } finally {
      leaveHandlerScope();
    }
  };
  const table = new NativeRegionTableClass(jsAccess, scratch);
  for (let i = 0; i <= 6; i++) setBarRegion(table, device, i, true);
  table.setRegion(CONFIG_REGION, { size: device.config.size, readable: true, writable: true, segments: [{ offset: 0, size: device.config.size, kind: 'js' }] });
  return table;
}
