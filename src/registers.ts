/**
 * Declarative register blocks: a device author lists registers (offset, width, reset value, access
 * masks, hooks) instead of writing switch statements over offsets.
 *
 * Access rules (also in docs/architecture.md):
 * - Registers are 1, 2, 4 or 8 bytes wide and naturally aligned; they may not overlap.
 * - A guest access may have any size and alignment. Each byte of it belongs to at most one register;
 *   bytes outside every register read as 0 and ignore writes.
 * - A read first calls the `onRead` hook of every register it touches (once each, lowest offset
 *   first), then samples the bytes; read-clear (RC) bits are cleared only in the bytes read.
 * - A write applies the masks to the bytes written only (byte enables): RW bits take the new value,
 *   W1C bits written as 1 clear, W1S bits written as 1 set, all other bits keep their value. Then
 *   the `onWrite` hook of every touched register runs once, lowest offset first.
 * @module
 */
import { runOrDefer } from './handler-scope.js';
import { ByteFlag, MaskedStorage, Plane } from './masked-storage.js';
import { MdevError, describe } from './errors.js';
import type { RegionAccessor } from './regions.js';

/** Width of a register in bytes. */
export type RegisterWidth = 1 | 2 | 4 | 8;

/** What a write hook is told. Values are numbers for registers up to 4 bytes, bigints for 8. */
export interface WriteEvent<V extends number | bigint> {
  /** The register written. */
  readonly reg: Register;
  /** Stored value after the masks were applied. */
  readonly value: V;
  /** Stored value before the write. */
  readonly old: V;
  /** The raw bytes the guest wrote, in register position (bytes not written are 0). */
  readonly written: V;
  /** Which bits the access covered (0xff per byte written). */
  readonly byteMask: V;
}

interface CommonSpec {
  /** Byte offset in the block; must be a multiple of the width. */
  offset: number;
  /** One line saying what the register is (shown by tools). */
  description?: string;
  /** All bits read-only (shorthand for `rw: 0` with no W1C/W1S bits). */
  readOnly?: boolean;
  /** Called before the register is sampled by a guest read; may `set()` a fresh value. */
  onRead?: (reg: Register) => void;
}

/** A register of 1, 2 or 4 bytes. Masks default to "all bits RW" when no mask is given. */
export interface RegisterSpec32 extends CommonSpec {
  /** Width in bytes. */
  width: 1 | 2 | 4;
  /** Value after reset (default 0). */
  reset?: number;
  /** Bits the guest may write. */
  rw?: number;
  /** Bits cleared by writing 1. */
  w1c?: number;
  /** Bits set by writing 1. */
  w1s?: number;
  /** Bits cleared by a guest read. */
  rc?: number;
  /** Called after a guest write to this register has been stored. */
  onWrite?: (ev: WriteEvent<number>) => void;
}

/** A 64-bit register; values are bigints. */
export interface RegisterSpec64 extends CommonSpec {
  /** Width in bytes. */
  width: 8;
  /** Value after reset (default 0). */
  reset?: bigint;
  /** Bits the guest may write. */
  rw?: bigint;
  /** Bits cleared by writing 1. */
  w1c?: bigint;
  /** Bits set by writing 1. */
  w1s?: bigint;
  /** Bits cleared by a guest read. */
  rc?: bigint;
  /** Called after a guest write to this register has been stored. */
  onWrite?: (ev: WriteEvent<bigint>) => void;
}

/** One register's declaration. */
export type RegisterSpec = RegisterSpec32 | RegisterSpec64;

/** A register of a block, for hooks and device logic. */
export class Register {
  /** @internal */
  constructor(
    private readonly storage: MaskedStorage,
    /** The register's name. */
    readonly name: string,
    /** Byte offset in the block. */
    readonly offset: number,
    /** Width in bytes. */
    readonly width: RegisterWidth,
    /** Reset value. */
    readonly resetValue: bigint,
    /** @internal */
    readonly spec: RegisterSpec,
  ) {}

  /** The current value (registers up to 4 bytes); throws for 64-bit registers. */
  get(): number {
    const v = this.storage.view;
    switch (this.width) {
      case 1:
        return v.getUint8(this.offset);
      case 2:
        return v.getUint16(this.offset, true);
      case 4:
        return v.getUint32(this.offset, true);
      default:
        throw new MdevError('EINVAL', `${this.name} is 64-bit: use get64()`, 'name');
    }
  }

  /** The current value as a bigint (any width). */
  get64(): bigint {
    if (this.width === 8) return this.storage.view.getBigUint64(this.offset, true);
    return BigInt(this.get());
  }

  /** Sets the value from the device side: masks do not apply and no hook runs. */
  set(value: number | bigint): void {
    const max = (1n << BigInt(this.width * 8)) - 1n;
    const v = typeof value === 'bigint' ? value : Number.isInteger(value) ? BigInt(value) : -1n;
    if (v < 0n || v > max) {
      throw new MdevError('ERANGE', `${this.name}: value ${describe(value)} does not fit ${this.width} bytes`, 'value');
    }
    if (this.width === 8) this.storage.view.setBigUint64(this.offset, v, true);
    else this.storage.setField(Plane.Value, this.offset, this.width, v);
  }

  /** Sets bits from the device side (e.g. raising an interrupt-status bit). */
  setBits(bits: number | bigint): void {
    this.set(this.get64() | BigInt(bits));
  }

  /** Clears bits from the device side. */
  clearBits(bits: number | bigint): void {
    this.set(this.get64() & ~BigInt(bits));
  }
}

const WIDTHS: readonly number[] = [1, 2, 4, 8];

function maskOf(field: string, value: number | bigint | undefined, width: number, fallback: bigint): bigint {
  if (value === undefined) return fallback;
  const max = (1n << BigInt(width * 8)) - 1n;
  let v: bigint;
  if (typeof value === 'bigint') v = value;
  // JS bit operators yield signed 32-bit numbers (~0 === -1): take negatives as two's complement.
  else if (Number.isInteger(value)) v = value < 0 && value >= -(2 ** 31) ? BigInt(value) & max : BigInt(value);
  else throw new MdevError('EINVAL', `must be an integer or bigint, got ${describe(value)}`, field);
  if (v < 0n || v > max) throw new MdevError('ERANGE', `does not fit ${width} bytes`, field);
  return v;
}

/**
 * A block of registers backed by a {@link MaskedStorage}. It is a {@link RegionAccessor}, so it can
 * serve a trapped region (or part of one) directly.
 * @typeParam N the register names
 */
export class RegisterBlock<N extends string = string> implements RegionAccessor {
  /** The storage (values, masks, flags); native dispatch serves unhooked bytes from it. */
  readonly storage: MaskedStorage;
  private readonly byName = new Map<string, Register>();
  private readonly list: Register[] = [];
  /** Register index per byte, -1 where no register lies. */
  private readonly owner: Int32Array;

  /**
   * Creates the block, validates every register and applies reset values.
   * @param name the block's name (used in state sections and messages)
   * @param size the block's size in bytes
   * @param specs the registers, by name
   */
  constructor(
    readonly name: string,
    readonly size: number,
    specs: Record<N, RegisterSpec>,
  ) {
    this.storage = new MaskedStorage(size);
    this.owner = new Int32Array(size).fill(-1);
    if (typeof specs !== 'object' || specs === null) throw new MdevError('EINVAL', 'must be an object', 'specs');
    for (const [regName, spec] of Object.entries(specs) as [string, RegisterSpec][]) this.define(regName, spec);
    this.reset();
  }

  private define(regName: string, spec: RegisterSpec): void {
    const field = `specs.${regName}`;
    if (typeof spec !== 'object' || spec === null) throw new MdevError('EINVAL', 'must be an object', field);
    const { offset, width } = spec;
    if (!WIDTHS.includes(width)) throw new MdevError('EINVAL', `must be 1, 2, 4 or 8, got ${describe(width)}`, `${field}.width`);
    if (!Number.isInteger(offset) || offset < 0 || offset + width > this.size) {
      throw new MdevError('ERANGE', `must lie within the ${this.size}-byte block, got ${describe(offset)}`, `${field}.offset`);
    }
    if (offset % width !== 0) throw new MdevError('EINVAL', `must be a multiple of the width ${width}`, `${field}.offset`);
    for (let i = offset; i < offset + width; i++) {
      const other = this.owner[i]!;
      if (other >= 0) throw new MdevError('EINVAL', `overlaps register ${this.list[other]!.name}`, `${field}.offset`);
    }
    const anyMask = spec.rw !== undefined || spec.w1c !== undefined || spec.w1s !== undefined;
    const all = (1n << BigInt(width * 8)) - 1n;
    const rw = spec.readOnly ? 0n : maskOf(`${field}.rw`, spec.rw, width, anyMask ? 0n : all);
    const w1c = maskOf(`${field}.w1c`, spec.w1c, width, 0n);
    const w1s = maskOf(`${field}.w1s`, spec.w1s, width, 0n);
    const rc = maskOf(`${field}.rc`, spec.rc, width, 0n);
    const reset = maskOf(`${field}.reset`, spec.reset, width, 0n);
    if ((rw & w1c) !== 0n || (rw & w1s) !== 0n || (w1c & w1s) !== 0n) {
      throw new MdevError('EINVAL', 'a bit may be in only one of rw, w1c and w1s', field);
    }
    if (spec.readOnly && (w1c !== 0n || w1s !== 0n)) throw new MdevError('EINVAL', 'readOnly excludes w1c/w1s', field);
    const s = this.storage;
    s.setField(Plane.Writable, offset, width, rw);
    s.setField(Plane.W1c, offset, width, w1c);
    s.setField(Plane.W1s, offset, width, w1s);
    s.setField(Plane.ReadClear, offset, width, rc);
    let flags: number = ByteFlag.Mapped;
    if (spec.onRead) flags |= ByteFlag.ReadHook;
    if (spec.onWrite) flags |= ByteFlag.WriteHook;
    s.addFlags(offset, width, flags);
    const reg = new Register(s, regName, offset, width, reset, spec);
    const index = this.list.length;
    this.list.push(reg);
    this.byName.set(regName, reg);
    this.owner.fill(index, offset, offset + width);
  }

  /** The register called `name`. */
  reg(name: N): Register {
    const r = this.byName.get(name);
    if (!r) throw new MdevError('ENOENT', `no register ${String(name)} in block ${this.name}`, 'name');
    return r;
  }

  /** All registers, in declaration order. */
  get registers(): readonly Register[] {
    return this.list;
  }

  /** Value of a register of up to 4 bytes. */
  get(name: N): number {
    return this.reg(name).get();
  }

  /** Value of any register as a bigint. */
  get64(name: N): bigint {
    return this.reg(name).get64();
  }

  /** Device-side set (no masks, no hooks). */
  set(name: N, value: number | bigint): void {
    this.reg(name).set(value);
  }

  /** Restores every register to its reset value. */
  reset(): void {
    this.storage.values.fill(0);
    for (const r of this.list) this.storage.setField(Plane.Value, r.offset, r.width, r.resetValue);
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isInteger(offset) || offset < 0 || offset > this.size || length > this.size - offset) {
      throw new MdevError('ERANGE', `access [${describe(offset)}, +${length}) is outside block ${this.name} (${this.size} bytes)`, 'offset');
    }
  }

  /** Touched register indexes with a given hook flag, ascending. */
  private touched(offset: number, length: number, flag: number): number[] {
    const flags = this.storage.planes;
    const base = Plane.Flags * this.size;
    const result: number[] = [];
    let last = -1;
    for (let i = offset; i < offset + length; i++) {
      if ((flags[base + i]! & flag) === 0) continue;
      const idx = this.owner[i]!;
      if (idx !== last) {
        result.push(idx);
        last = idx;
      }
    }
    return result;
  }

  /** Guest read of `out.length` bytes at `offset`. */
  read(offset: number, out: Uint8Array): void {
    this.checkRange(offset, out.length);
    for (const idx of this.touched(offset, out.length, ByteFlag.ReadHook)) {
      const reg = this.list[idx]!;
      reg.spec.onRead!(reg);
    }
    this.storage.read(offset, out);
  }

  /** Guest write of `data` at `offset`. */
  write(offset: number, data: Uint8Array): void {
    this.checkRange(offset, data.length);
    const hooked = this.touched(offset, data.length, ByteFlag.WriteHook);
    const olds = hooked.map((idx) => this.list[idx]!.get64());
    this.storage.write(offset, data);
    for (let k = 0; k < hooked.length; k++) {
      const reg = this.list[hooked[k]!]!;
      let written = 0n;
      let byteMask = 0n;
      for (let b = 0; b < reg.width; b++) {
        const pos = reg.offset + b - offset;
        if (pos < 0 || pos >= data.length) continue;
        written |= BigInt(data[pos]!) << BigInt(8 * b);
        byteMask |= 0xffn << BigInt(8 * b);
      }
      const old = olds[k]!;
      const value = reg.get64();
      // Storage changed above; the hook (device code) may have to wait for the running handler.
      if (reg.spec.width === 8) {
        const hook = reg.spec.onWrite!;
        const event = { reg, value, old, written, byteMask };
        runOrDefer(() => hook(event));
      } else {
        const hook = reg.spec.onWrite!;
        const event = { reg, value: Number(value), old: Number(old), written: Number(written), byteMask: Number(byteMask) };
        runOrDefer(() => hook(event));
      }
    }
  }

  /** The value plane, for save/restore. */
  saveState(): Uint8Array {
    return this.storage.values.slice();
  }

  /** Restores values saved by {@link saveState}. */
  loadState(bytes: Uint8Array): void {
    if (bytes.length !== this.size) {
      throw new MdevError('EINVAL', `block ${this.name} state has ${bytes.length} bytes, expected ${this.size}`, 'state');
    }
    this.storage.values.set(bytes);
  }
}
