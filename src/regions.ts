/**
 * Regions: the address spaces a device exposes through its BARs (and ROM). A region is MMIO or
 * port I/O, and each byte of it is either *trapped* (every access reaches the device model through
 * a {@link RegionAccessor}) or *mappable* (backed by shared memory the hypervisor may map straight
 * into the guest, so accesses never trap). A sparse region lists the mappable areas; the rest traps.
 *
 * The memory behind the mappable areas can move: an adapter that gives the guest this memory in
 * another way (the Xen adapter makes VRAM guest RAM and reaches it through a foreign mapping)
 * swaps it with {@link Region.replaceBacking}, which copies the contents over. A device reaches
 * these bytes through `backing.bytes` each time it uses them — the region's, or the memfd backing
 * it made and handed to the region, which follows the move — never through a `Uint8Array` kept
 * from before.
 * @module
 */
import { MdevError, describe } from './errors.js';
import { PAGE_SIZE } from './native/mmap.js';
import { redirectRamBacking } from './ram.js';

/** Byte-oriented access to a trapped range; offsets are relative to the range. */
export interface RegionAccessor {
  /**
   * Bytes the accessor serves, from offset 0, when less than the range it is given (a register
   * block at the start of a larger BAR); the rest reads as 0 and ignores writes.
   */
  readonly size?: number;
  /** Fill `out` with the bytes at `offset`. */
  read(offset: number, out: Uint8Array): void;
  /** Store `data` at `offset`. */
  write(offset: number, data: Uint8Array): void;
}

/** The address space a region decodes in. */
export type RegionSpace = 'mmio' | 'pio';

/** A page-aligned part of a region that may be mapped into the guest. */
export interface MmapArea {
  /** Offset in the region (page aligned). */
  readonly offset: number;
  /** Size in bytes (page multiple). */
  readonly size: number;
}

/** Shared memory behind the mappable parts of a region. */
export interface RamBacking {
  /** The bytes, as the device sees them (a mapping of `fd` when there is one). */
  readonly bytes: Uint8Array;
  /**
   * A file descriptor the hypervisor side can mmap (memfd), or null for memory that cannot be
   * handed over by fd (private memory, or a mapping of guest RAM made by an adapter).
   */
  readonly fd: number | null;
  /** Offset of `bytes[0]` within `fd`. */
  readonly fdOffset: number;
}


/** Value-oriented register handler with the access sizes it implements (QEMU's `impl`). */
export interface ValueOps {
  /** Smallest access size the handler implements (default 1). */
  minAccess?: 1 | 2 | 4 | 8;
  /** Largest access size the handler implements (default 4). */
  maxAccess?: 1 | 2 | 4 | 8;
  /** Read `size` bytes at `offset` (aligned to `size`). Return a number, or a bigint for 8 bytes. */
  read(offset: number, size: 1 | 2 | 4 | 8): number | bigint;
  /** Write `size` bytes at `offset` (aligned to `size`). `value` is a bigint only for 8 bytes. */
  write(offset: number, size: 1 | 2 | 4 | 8, value: number | bigint): void;
}

function toBytes(value: number | bigint, size: number, out: Uint8Array, at: number): void {
  let v = BigInt.asUintN(size * 8, BigInt(value));
  for (let i = 0; i < size; i++) {
    out[at + i] = Number(v & 0xffn);
    v >>= 8n;
  }
}

function fromBytes(src: Uint8Array, at: number, size: number): bigint {
  let v = 0n;
  for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(src[at + i]!);
  return v;
}

/**
 * Adapts a value-oriented handler to byte-oriented access. An access is cut into naturally aligned
 * units no larger than `maxAccess`; a unit smaller than `minAccess` is widened to the aligned
 * `minAccess` unit around it (reads extract the bytes; writes read-modify-write that unit).
 */
export function valueOps(ops: ValueOps): RegionAccessor {
  const min = ops.minAccess ?? 1;
  const max = ops.maxAccess ?? 4;
  if (![1, 2, 4, 8].includes(min) || ![1, 2, 4, 8].includes(max) || min > max) {
    throw new MdevError('EINVAL', `minAccess ${describe(min)} / maxAccess ${describe(max)} must be 1, 2, 4 or 8 with min <= max`, 'ops');
  }
  const scratch = new Uint8Array(8);
  const readUnit = (offset: number, size: 1 | 2 | 4 | 8): bigint => BigInt.asUintN(size * 8, BigInt(ops.read(offset, size)));
  const writeUnit = (offset: number, size: 1 | 2 | 4 | 8, value: bigint): void => {
    ops.write(offset, size, size === 8 ? value : Number(value));
  };
  const units = (offset: number, length: number, fn: (unitOffset: number, size: 1 | 2 | 4 | 8, at: number) => void): void => {
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      let size: 1 | 2 | 4 | 8 = max;
      while (size > 1 && (pos % size !== 0 || pos + size > end)) size = (size >> 1) as 1 | 2 | 4;
      fn(pos, size, pos - offset);
      pos += size;
    }
  };
  return {
    read(offset, out) {
      units(offset, out.length, (unit, size, at) => {
        if (size >= min) {
          toBytes(readUnit(unit, size), size, out, at);
          return;
        }
        const base = unit - (unit % min);
        toBytes(readUnit(base, min), min, scratch, 0);
        out.set(scratch.subarray(unit - base, unit - base + size), at);
      });
    },
    write(offset, data) {
      units(offset, data.length, (unit, size, at) => {
        if (size >= min) {
          writeUnit(unit, size, fromBytes(data, at, size));
          return;
        }
        const base = unit - (unit % min);
        toBytes(readUnit(base, min), min, scratch, 0);
        scratch.set(data.subarray(at, at + size), unit - base);
        writeUnit(base, min, fromBytes(scratch, 0, min));
      });
    },
  };
}

/** An accessor that reads zeros and ignores writes (unimplemented space). */
export const EMPTY_ACCESSOR: RegionAccessor = {
  read(_offset, out) {
    out.fill(0);
  },
  write() {},
};

/** A trapped sub-range of a region with its own accessor (e.g. an MSI-X table inside a BAR). */
export interface Overlay {
  /** Offset in the region. */
  readonly offset: number;
  /** Size in bytes. */
  readonly size: number;
  /** What serves it. */
  readonly accessor: RegionAccessor;
  /** Name, for listings. */
  readonly name: string;
}

/** A run of a region's bytes with one server (see {@link Region.layout}). */
export interface RegionPiece {
  /** Offset in the region. */
  readonly offset: number;
  /** Size in bytes. */
  readonly size: number;
  /** Shared memory, an overlay, the region's accessor (null), or unimplemented space. */
  readonly target: 'ram' | Overlay | 'empty' | null;
}

/** Options of {@link Region}. */
export interface RegionOptions {
  /** MMIO (default) or port I/O. */
  space?: RegionSpace;
  /** Serves trapped bytes (default: reads 0, writes ignored). */
  accessor?: RegionAccessor;
  /** Shared memory behind mappable areas (required when `mmapAreas` is non-empty). */
  backing?: RamBacking;
  /** Mappable areas (page-aligned, within `size`, non-overlapping). */
  mmapAreas?: readonly MmapArea[];
}

/** A device region: size, address space, trapped accessor, optional mappable areas and overlays. */
export class Region {
  /** Decode space. */
  readonly space: RegionSpace;
  /** Serves trapped bytes not claimed by an overlay. */
  readonly accessor: RegionAccessor;
  /** Mappable areas, sorted by offset. */
  readonly mmapAreas: readonly MmapArea[];
  #backing: RamBacking | null;
  private readonly overlayList: Overlay[] = [];
  private cachedLayout: RegionPiece[] | null = null;

  /**
   * Creates a region; validates size, space and mappable areas.
   * @param name a short name for listings ("regs", "vram")
   * @param size the size in bytes (> 0)
   * @param options space, accessor, backing and mappable areas
   */
  constructor(
    readonly name: string,
    readonly size: number,
    options: RegionOptions = {},
  ) {
    if (!Number.isSafeInteger(size) || size <= 0) throw new MdevError('EINVAL', `must be a positive integer, got ${describe(size)}`, 'size');
    this.space = options.space ?? 'mmio';
    if (this.space !== 'mmio' && this.space !== 'pio') throw new MdevError('EINVAL', `must be "mmio" or "pio"`, 'space');
    this.accessor = options.accessor ?? EMPTY_ACCESSOR;
    this.#backing = options.backing ?? null;
    const areas = [...(options.mmapAreas ?? [])].sort((a, b) => a.offset - b.offset);
    let end = 0;
    areas.forEach((a, i) => {
      const field = `mmapAreas[${i}]`;
      if (!Number.isSafeInteger(a.offset) || !Number.isSafeInteger(a.size) || a.size <= 0 || a.offset % PAGE_SIZE !== 0 || a.size % PAGE_SIZE !== 0) {
        throw new MdevError('EINVAL', `offset and size must be positive multiples of ${PAGE_SIZE}`, field);
      }
      if (a.offset < end) throw new MdevError('EINVAL', 'overlaps the previous area', field);
      if (a.offset + a.size > size) throw new MdevError('ERANGE', `runs past the region end ${size}`, field);
      end = a.offset + a.size;
    });
    if (areas.length > 0) {
      if (this.space !== 'mmio') throw new MdevError('EINVAL', 'port I/O regions cannot be mapped', 'mmapAreas');
      if (!this.backing) throw new MdevError('EINVAL', 'mappable areas need shared memory behind them', 'backing');
    }
    if (this.backing && this.backing.bytes.length < size) {
      throw new MdevError('ERANGE', `has ${this.backing.bytes.length} bytes, region needs ${size}`, 'backing');
    }
    this.mmapAreas = areas;
  }

  /**
   * Shared memory behind the mappable areas, if any: the current one ({@link replaceBacking} may
   * swap it while the device runs).
   */
  get backing(): RamBacking | null {
    return this.#backing;
  }

  /**
   * Moves the memory behind the mappable areas to `next` (for adapters: the Xen adapter moves
   * VRAM into guest RAM it maps from the hypervisor). The region's bytes (`size` of them) are
   * copied from the current backing into `next.bytes`, `next` becomes the backing, and the
   * previous backing, when it is a memfd backing ({@link createMemfdBacking}), follows: its `bytes`
   * view `next.bytes` from now on, so a device that kept its backing object reaches the moved
   * memory too. Returns the previous backing, still owned by whoever made it (a device's memfd
   * stays the device's). `replaceBacking(previous)` moves the memory home again: `previous` gets
   * its own bytes back and the contents are copied into them.
   *
   * A native dispatch table built from this region's layout keeps the old bytes until it is
   * rebuilt (`regionSegments`); an adapter that moves memory rebuilds the entries it uses.
   * @throws EINVAL when the region has no backing or `next` is not a RamBacking; ERANGE when
   *   `next.bytes` is shorter than the region
   */
  replaceBacking(next: RamBacking): RamBacking {
    const previous = this.#backing;
    if (previous === null) throw new MdevError('EINVAL', `region ${this.name} has no memory behind it to replace`, 'next');
    if (typeof next !== 'object' || next === null || !(next.bytes instanceof Uint8Array)) {
      throw new MdevError('EINVAL', `must be a RamBacking {bytes, fd, fdOffset}, got ${describe(next)}`, 'next');
    }
    const from = previous.bytes;
    redirectRamBacking(next, null); // a backing coming home views its own memory again
    if (next.bytes.length < this.size) {
      if (from !== next.bytes) redirectRamBacking(next, from);
      throw new MdevError('ERANGE', `has ${next.bytes.length} bytes, region ${this.name} needs ${this.size}`, 'next.bytes');
    }
    if (next.bytes !== from) next.bytes.set(from.subarray(0, this.size));
    redirectRamBacking(previous, next.bytes);
    this.#backing = next;
    return previous;
  }

  /** True when every byte is mappable. */
  get fullyMappable(): boolean {
    return this.mmapAreas.length === 1 && this.mmapAreas[0]!.offset === 0 && this.mmapAreas[0]!.size === this.size;
  }

  /** Trapped sub-ranges served by their own accessor. */
  get overlays(): readonly Overlay[] {
    return this.overlayList;
  }

  /** Claims `[offset, offset+size)` for `accessor`; it must be trapped and not overlap another overlay. */
  addOverlay(name: string, offset: number, size: number, accessor: RegionAccessor): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(size) || offset < 0 || size <= 0 || offset + size > this.size) {
      throw new MdevError('ERANGE', `[${describe(offset)}, +${describe(size)}) is outside region ${this.name} (${this.size} bytes)`, 'offset');
    }
    for (const a of this.mmapAreas) {
      if (offset < a.offset + a.size && a.offset < offset + size) {
        throw new MdevError('EINVAL', `${name} overlaps a mappable area of ${this.name}; it must trap`, 'offset');
      }
    }
    for (const o of this.overlayList) {
      if (offset < o.offset + o.size && o.offset < offset + size) throw new MdevError('EINVAL', `${name} overlaps ${o.name}`, 'offset');
    }
    this.overlayList.push({ name, offset, size, accessor });
    this.overlayList.sort((a, b) => a.offset - b.offset);
    this.cachedLayout = null;
  }

  /** True when `[offset, offset+length)` lies entirely inside a mappable area. */
  isMapped(offset: number, length: number): boolean {
    return this.mmapAreas.some((a) => offset >= a.offset && offset + length <= a.offset + a.size);
  }

  private check(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > this.size || length > this.size - offset) {
      throw new MdevError('ERANGE', `access [${describe(offset)}, +${length}) is outside region ${this.name} (${this.size} bytes)`, 'offset');
    }
  }

  /**
   * Who serves each byte, as sorted, contiguous pieces covering the region: shared memory ('ram'),
   * an overlay, the region's accessor (null), or nothing ('empty', past what the accessor serves).
   * Mappable areas win over overlays (they cannot overlap: addOverlay refuses it). Computed once;
   * addOverlay invalidates it. Native dispatch tables are built from the same pieces.
   */
  get layout(): readonly RegionPiece[] {
    if (this.cachedLayout) return this.cachedLayout;
    const served = this.accessor.size ?? this.size;
    const cuts = new Set<number>([0, this.size]);
    if (served < this.size) cuts.add(served);
    for (const a of this.mmapAreas) cuts.add(a.offset).add(a.offset + a.size);
    for (const o of this.overlayList) cuts.add(o.offset).add(o.offset + o.size);
    const points = [...cuts].sort((x, y) => x - y);
    const pieces: RegionPiece[] = [];
    for (let i = 0; i + 1 < points.length; i++) {
      const offset = points[i]!;
      const size = points[i + 1]! - offset;
      const inArea = this.mmapAreas.some((a) => offset >= a.offset && offset < a.offset + a.size);
      const overlay = this.overlayList.find((o) => offset >= o.offset && offset < o.offset + o.size);
      const target: RegionPiece['target'] = inArea ? 'ram' : overlay ?? (offset >= served ? 'empty' : null);
      const last = pieces[pieces.length - 1];
      // Neighbouring pieces with the same target are one piece (an overlay is its own target).
      if (last && last.target === target && last.offset + last.size === offset) pieces[pieces.length - 1] = { offset: last.offset, size: last.size + size, target };
      else pieces.push({ offset, size, target });
    }
    this.cachedLayout = pieces;
    return pieces;
  }

  /** Calls `fn` for each piece of [offset, offset+length), cut at the layout's boundaries. */
  private pieces(offset: number, length: number, fn: (pos: number, len: number, target: RegionPiece['target']) => void): void {
    const end = offset + length;
    for (const p of this.layout) {
      if (p.offset + p.size <= offset) continue;
      if (p.offset >= end) break;
      const pos = Math.max(offset, p.offset);
      fn(pos, Math.min(end, p.offset + p.size) - pos, p.target);
    }
  }

  /** True when the access goes straight to the region's accessor. */
  private simple(offset: number, length: number): boolean {
    return this.mmapAreas.length === 0 && this.overlayList.length === 0 && offset + length <= (this.accessor.size ?? this.size);
  }

  /** Reads `out.length` bytes at `offset`, from shared memory or through the accessors. */
  read(offset: number, out: Uint8Array): void {
    this.check(offset, out.length);
    if (this.simple(offset, out.length)) {
      this.accessor.read(offset, out);
      return;
    }
    this.pieces(offset, out.length, (pos, len, target) => {
      const dst = out.subarray(pos - offset, pos - offset + len);
      if (target === 'ram') dst.set(this.#backing!.bytes.subarray(pos, pos + len));
      else if (target === 'empty') dst.fill(0);
      else if (target === null) this.accessor.read(pos, dst);
      else target.accessor.read(pos - target.offset, dst);
    });
  }

  /** Writes `data` at `offset`, to shared memory or through the accessors. */
  write(offset: number, data: Uint8Array): void {
    this.check(offset, data.length);
    if (this.simple(offset, data.length)) {
      this.accessor.write(offset, data);
      return;
    }
    this.pieces(offset, data.length, (pos, len, target) => {
      const src = data.subarray(pos - offset, pos - offset + len);
      if (target === 'ram') this.#backing!.bytes.set(src, pos);
      else if (target === 'empty') return;
      else if (target === null) this.accessor.write(pos, src);
      else target.accessor.write(pos - target.offset, src);
    });
  }
}
