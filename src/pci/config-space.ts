/**
 * PCI configuration space storage: 256 bytes (conventional) or 4 KiB (PCI Express), with per-bit
 * write masks (RW and RW1C), the capability-list builders' allocator and linking.
 * @module
 */
import { MaskedStorage, Plane } from '../masked-storage.js';
import { MdevError, describe } from '../errors.js';
import { PCI, PCI_STATUS } from './constants.js';

/** A placed capability. */
export interface PlacedCapability {
  /** Capability ID. */
  readonly id: number;
  /** Offset of its header in config space. */
  readonly offset: number;
  /** Size in bytes. */
  readonly size: number;
  /** True for a PCI Express extended capability (offset ≥ 0x100). */
  readonly extended: boolean;
}

/** Config space bytes and masks, with capability placement. */
export class ConfigSpace {
  /** Values (config), RW mask (wmask), RW1C mask (w1cmask). */
  readonly storage: MaskedStorage;
  /** 256 or 4096. */
  readonly size: number;
  private readonly used: Uint8Array;
  private readonly caps: PlacedCapability[] = [];

  /**
   * Creates an empty config space (all bits read-only, type-0 header reserved).
   * @param size 256 for conventional PCI, 4096 for PCI Express
   */
  constructor(size: 256 | 4096) {
    if (size !== PCI.CONFIG_SPACE_SIZE && size !== PCI.CONFIG_SPACE_EXP_SIZE) {
      throw new MdevError('EINVAL', `must be 256 or 4096, got ${describe(size)}`, 'configSize');
    }
    this.size = size;
    this.storage = new MaskedStorage(size);
    this.used = new Uint8Array(size);
    this.used.fill(1, 0, PCI.HEADER_SIZE);
  }

  /** Device-side read of a little-endian field (no side effects). */
  get(offset: number, width: 1 | 2 | 4): number {
    this.checkField(offset, width);
    const v = this.storage.view;
    return width === 1 ? v.getUint8(offset) : width === 2 ? v.getUint16(offset, true) : v.getUint32(offset, true);
  }

  /** Device-side write of a little-endian field (no masks). */
  set(offset: number, width: 1 | 2 | 4, value: number): void {
    this.checkField(offset, width);
    const v = this.storage.view;
    if (width === 1) v.setUint8(offset, value);
    else if (width === 2) v.setUint16(offset, value, true);
    else v.setUint32(offset, value >>> 0, true);
  }

  /** Sets the guest write masks of a field: `rw` bits writable, `w1c` bits write-1-to-clear. */
  setMasks(offset: number, width: 1 | 2 | 4, rw: number, w1c = 0): void {
    this.checkField(offset, width);
    this.storage.setField(Plane.Writable, offset, width, BigInt(rw >>> 0));
    this.storage.setField(Plane.W1c, offset, width, BigInt(w1c >>> 0));
  }

  /** The RW mask of a field. */
  writableMask(offset: number, width: 1 | 2 | 4): number {
    return Number(this.storage.getField(Plane.Writable, offset, width));
  }

  private checkField(offset: number, width: number): void {
    if (!Number.isInteger(offset) || offset < 0 || offset + width > this.size) {
      throw new MdevError('ERANGE', `field [${describe(offset)}, +${width}) is outside the ${this.size}-byte config space`, 'offset');
    }
  }

  /** Capabilities placed so far, in placement order. */
  get capabilities(): readonly PlacedCapability[] {
    return this.caps;
  }

  /** The first capability with `id`, if any. */
  findCapability(id: number, extended = false): PlacedCapability | undefined {
    return this.caps.find((c) => c.id === id && c.extended === extended);
  }

  /**
   * Reserves `size` bytes for a capability at `offset` (or the first free dword-aligned place) and
   * links it into the standard list (after the last one) or the extended list (`version` goes in
   * the extended header).
   */
  placeCapability(id: number, size: number, extended: boolean, offset?: number, version = 1): PlacedCapability {
    if (extended && this.size !== PCI.CONFIG_SPACE_EXP_SIZE) {
      throw new MdevError('EINVAL', 'extended capabilities need 4 KiB (PCI Express) config space', 'extended');
    }
    const lo = extended ? PCI.CONFIG_SPACE_SIZE : PCI.HEADER_SIZE;
    const hi = extended ? this.size : PCI.CONFIG_SPACE_SIZE;
    if (!Number.isInteger(size) || size < (extended ? 4 : 2) || size > hi - lo) {
      throw new MdevError('EINVAL', `capability size ${describe(size)} does not fit`, 'size');
    }
    let at = offset;
    if (at === undefined) {
      // The first extended capability must sit at 0x100: the list starts there.
      const first = extended && !this.caps.some((c) => c.extended) ? lo : undefined;
      at = first ?? this.findFree(lo, hi, size);
    }
    if (!Number.isInteger(at) || at % 4 !== 0 || at < lo || at + size > hi) {
      throw new MdevError('EINVAL', `capability at ${describe(at)} must be dword aligned within [0x${lo.toString(16)}, 0x${hi.toString(16)})`, 'offset');
    }
    if (extended && !this.caps.some((c) => c.extended) && at !== lo) {
      throw new MdevError('EINVAL', 'the first extended capability must be at 0x100', 'offset');
    }
    for (let i = at; i < at + size; i++) {
      if (this.used[i]) throw new MdevError('EEXIST', `0x${at.toString(16)}+${size} overlaps a used area at 0x${i.toString(16)}`, 'offset');
    }
    this.used.fill(1, at, at + size);
    const cap: PlacedCapability = { id, offset: at, size, extended };
    if (extended) {
      const last = [...this.caps].reverse().find((c) => c.extended);
      this.set(at, 4, (id & 0xffff) | ((version & 0xf) << 16));
      if (last) {
        const hdr = this.get(last.offset, 4);
        this.set(last.offset, 4, (hdr & 0x000fffff) | (at << 20));
      }
    } else {
      const last = [...this.caps].reverse().find((c) => !c.extended);
      this.set(at, 1, id);
      this.set(at + 1, 1, 0);
      if (last) this.set(last.offset + 1, 1, at);
      else this.set(PCI.CAPABILITY_LIST, 1, at);
      this.set(PCI.STATUS, 2, this.get(PCI.STATUS, 2) | PCI_STATUS.CAP_LIST);
    }
    this.caps.push(cap);
    return cap;
  }

  private findFree(lo: number, hi: number, size: number): number {
    for (let at = lo; at + size <= hi; at += 4) {
      let free = true;
      for (let i = at; i < at + size; i++) {
        if (this.used[i]) {
          free = false;
          break;
        }
      }
      if (free) return at;
    }
    throw new MdevError('ENOSPC', `no free ${size}-byte area for a capability`, 'size');
  }
}
