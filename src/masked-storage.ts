/**
 * Byte-granular register storage: values plus per-bit access masks, shared by register blocks and
 * PCI config space. The access rules run in the native core (`native/src/masked_storage.cc`) so the
 * JS path and the native dispatch path apply exactly the same semantics.
 * @module
 */
import { binding } from './native/binding.js';
import { MdevError } from './errors.js';

interface MaskedBinding {
  maskedRead(storage: Uint8Array, size: number, offset: number, out: Uint8Array): void;
  maskedWrite(storage: Uint8Array, size: number, offset: number, data: Uint8Array): void;
}
const native = binding as unknown as MaskedBinding;

/** Plane indexes of a {@link MaskedStorage}; each plane has `size` bytes. */
export const Plane = {
  /** Current register values. */
  Value: 0,
  /** Bits the guest may write (RW). */
  Writable: 1,
  /** Bits cleared by writing 1 (RW1C). */
  W1c: 2,
  /** Bits set by writing 1 (RW1S). */
  W1s: 3,
  /** Bits cleared when read (RC). */
  ReadClear: 4,
  /** Per-byte {@link ByteFlag} bits. */
  Flags: 5,
} as const;
/** A plane index. */
export type Plane = (typeof Plane)[keyof typeof Plane];

/** Number of planes in a masked storage. */
export const PLANE_COUNT = 6;

/** Accesses up to this many bytes are served in JS rather than by the native core. */
const SMALL_ACCESS = 8;

/** Per-byte flags in the flags plane. */
export const ByteFlag = {
  /** The byte belongs to a register. */
  Mapped: 1,
  /** The byte's register has a read hook (native dispatch must call JS). */
  ReadHook: 2,
  /** The byte's register has a write hook (native dispatch must call JS). */
  WriteHook: 4,
} as const;

/**
 * `size` bytes of register values with masks. Reads copy values then clear read-clear bits; writes
 * apply `v = (v & ~rw) | (d & rw); v &= ~(d & w1c); v |= d & w1s` per byte. Bits in none of the
 * write masks are read-only.
 */
export class MaskedStorage {
  /** All planes, `PLANE_COUNT * size` bytes; shared with native dispatch. */
  readonly planes: Uint8Array;
  /** Number of bytes of register space. */
  readonly size: number;
  /** The value plane (a view into `planes`). */
  readonly values: Uint8Array;
  /** A DataView over the value plane, little-endian accessors. */
  readonly view: DataView;

  /**
   * Creates zeroed storage with every bit read-only.
   * @param size bytes of register space, 1 … 16 MiB
   */
  constructor(size: number) {
    if (!Number.isInteger(size) || size < 1 || size > 1 << 24) {
      throw new MdevError('EINVAL', `must be an integer in [1, 2^24], got ${String(size)}`, 'size');
    }
    this.size = size;
    this.planes = new Uint8Array(size * PLANE_COUNT);
    this.values = this.planes.subarray(0, size);
    this.view = new DataView(this.planes.buffer, 0, size);
  }

  /** A view of one plane. */
  plane(p: Plane): Uint8Array {
    return this.planes.subarray(p * this.size, (p + 1) * this.size);
  }

  /** Guest-visible read of `out.length` bytes at `offset` (clears read-clear bits). */
  read(offset: number, out: Uint8Array): void {
    const len = out.length;
    if (this.servedInJs(offset, len)) {
      const p = this.planes;
      const rc = Plane.ReadClear * this.size + offset;
      for (let i = 0; i < len; i++) {
        const v = p[offset + i]!;
        out[i] = v;
        p[offset + i] = v & ~p[rc + i]!;
      }
      return;
    }
    native.maskedRead(this.planes, this.size, offset, out);
  }

  /** Guest-visible write of `data` at `offset` (masks applied). */
  write(offset: number, data: Uint8Array): void {
    const len = data.length;
    if (this.servedInJs(offset, len)) {
      const p = this.planes;
      const n = this.size;
      for (let i = 0; i < len; i++) {
        const d = data[i]!;
        const rw = p[Plane.Writable * n + offset + i]!;
        let v = (p[offset + i]! & ~rw) | (d & rw);
        v &= ~(d & p[Plane.W1c * n + offset + i]!);
        v |= d & p[Plane.W1s * n + offset + i]!;
        p[offset + i] = v;
      }
      return;
    }
    native.maskedWrite(this.planes, this.size, offset, data);
  }

  // Register-sized accesses inside the storage run in JS: a call into the native core costs more
  // than the bytes. The rules are the native ones (core/masked_storage.cc), checked against them
  // by a property test; anything else goes to the core, which also reports bad offsets.
  private servedInJs(offset: number, len: number): boolean {
    return len <= SMALL_ACCESS && offset >= 0 && offset <= this.size - len && Number.isInteger(offset);
  }

  /** Sets `width` bytes of plane `p` at `offset` to `value` (little-endian), bypassing masks. */
  setField(p: Plane, offset: number, width: number, value: bigint): void {
    const base = p * this.size + offset;
    let v = value;
    for (let i = 0; i < width; i++) {
      this.planes[base + i] = Number(v & 0xffn);
      v >>= 8n;
    }
  }

  /** Reads `width` bytes of plane `p` at `offset` as an unsigned little-endian bigint. */
  getField(p: Plane, offset: number, width: number): bigint {
    const base = p * this.size + offset;
    let v = 0n;
    for (let i = width - 1; i >= 0; i--) v = (v << 8n) | BigInt(this.planes[base + i]!);
    return v;
  }

  /** ORs `flags` into the flags plane for `width` bytes at `offset`. */
  addFlags(offset: number, width: number, flags: number): void {
    const base = Plane.Flags * this.size + offset;
    for (let i = 0; i < width; i++) this.planes[base + i] = this.planes[base + i]! | flags;
  }
}
