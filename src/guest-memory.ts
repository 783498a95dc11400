/**
 * Guest memory as the device sees it (DMA): read, write and map by guest physical address, with
 * bounds checks. Device writes are reported to a dirty log so the hypervisor side can track them
 * (vfio-user DMA logging, Xen modified_memory). Adapters provide the windows (vfio-user DMA_MAP
 * regions, Xen foreign mappings); {@link WindowedGuestMemory} is the shared implementation.
 * @module
 */
import { MdevError, describe } from './errors.js';

/** Receives the guest-physical ranges the device wrote. */
export interface DirtyLog {
  /** `[gpa, gpa+length)` was written by the device. */
  markDirty(gpa: number, length: number): void;
}

/** DMA access to guest memory. Addresses are guest physical (safe integers, below 2^52). */
export interface GuestMemory {
  /** Copies `out.length` bytes at `gpa` into `out`. Throws EFAULT if any byte is not mapped. */
  read(gpa: number, out: Uint8Array): void;
  /** Copies `data` to `gpa` and marks it dirty. Throws EFAULT if any byte is not mapped writable. */
  write(gpa: number, data: Uint8Array): void;
  /**
   * A live view of `[gpa, gpa+length)` when it lies in one window, else null. Writes through the
   * view are not dirty-tracked: call {@link GuestMemory.markDirty} for them.
   */
  map(gpa: number, length: number, writable: boolean): Uint8Array | null;
  /** Records a device write done through a mapped view. */
  markDirty(gpa: number, length: number): void;
}

/** A contiguous guest-physical window backed by host memory. */
export interface GuestWindow {
  /** First guest physical address. */
  readonly gpa: number;
  /** The bytes (a mapping of the guest's memory). */
  readonly bytes: Uint8Array;
  /** Whether the device may write it. */
  readonly writable: boolean;
}

/** Largest guest physical address accepted (x86-64 MAXPHYADDR is at most 52 bits). */
export const MAX_GPA = 2 ** 52;

function checkAddr(field: string, gpa: number, length: number): void {
  if (!Number.isSafeInteger(gpa) || gpa < 0) throw new MdevError('EINVAL', `must be a non-negative safe integer, got ${describe(gpa)}`, field);
  if (!Number.isSafeInteger(length) || length < 0) throw new MdevError('EINVAL', `length must be a non-negative safe integer, got ${describe(length)}`, field);
  if (gpa > MAX_GPA || length > MAX_GPA - gpa) throw new MdevError('EFAULT', `[0x${gpa.toString(16)}, +${length}) is beyond the 52-bit physical address space`, field);
}

/** Guest memory made of non-overlapping windows; accesses may span adjacent windows. */
export class WindowedGuestMemory implements GuestMemory {
  private windows: GuestWindow[] = [];
  /** Where device writes are reported (e.g. a dirty bitmap adapter), or null. */
  dirtyLog: DirtyLog | null = null;

  /** Adds a window. Throws EEXIST if it overlaps an existing one. */
  addWindow(window: GuestWindow): void {
    checkAddr('window.gpa', window.gpa, window.bytes?.length ?? -1);
    if (!(window.bytes instanceof Uint8Array) || window.bytes.length === 0) throw new MdevError('EINVAL', 'must be a non-empty Uint8Array', 'window.bytes');
    const end = window.gpa + window.bytes.length;
    for (const w of this.windows) {
      if (window.gpa < w.gpa + w.bytes.length && w.gpa < end) {
        throw new MdevError('EEXIST', `[0x${window.gpa.toString(16)}, 0x${end.toString(16)}) overlaps the window at 0x${w.gpa.toString(16)}`, 'window.gpa');
      }
    }
    this.windows.push(window);
    this.windows.sort((a, b) => a.gpa - b.gpa);
  }

  /** Removes the window starting at `gpa` with exactly `length` bytes; returns it. ENOENT otherwise. */
  removeWindow(gpa: number, length: number): GuestWindow {
    const i = this.windows.findIndex((w) => w.gpa === gpa && w.bytes.length === length);
    if (i < 0) throw new MdevError('ENOENT', `no window is exactly [0x${gpa.toString(16)}, +${length})`, 'gpa');
    return this.windows.splice(i, 1)[0]!;
  }

  /** Removes every window. */
  clear(): void {
    this.windows = [];
  }

  /** The windows, sorted by address. */
  get list(): readonly GuestWindow[] {
    return this.windows;
  }

  private find(gpa: number): GuestWindow | undefined {
    let lo = 0;
    let hi = this.windows.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const w = this.windows[mid]!;
      if (gpa < w.gpa) hi = mid - 1;
      else if (gpa >= w.gpa + w.bytes.length) lo = mid + 1;
      else return w;
    }
    return undefined;
  }

  private walk(field: string, gpa: number, length: number, write: boolean, fn: (w: GuestWindow, off: number, len: number, done: number) => void): void {
    checkAddr(field, gpa, length);
    // Check the whole range first so a failing access changes nothing.
    const pieces: [GuestWindow, number, number, number][] = [];
    let done = 0;
    while (done < length) {
      const at = gpa + done;
      const w = this.find(at);
      if (!w) throw new MdevError('EFAULT', `guest address 0x${at.toString(16)} is not mapped`, field);
      if (write && !w.writable) throw new MdevError('EFAULT', `guest address 0x${at.toString(16)} is mapped read-only`, field);
      const off = at - w.gpa;
      const len = Math.min(length - done, w.bytes.length - off);
      pieces.push([w, off, len, done]);
      done += len;
    }
    for (const [w, off, len, d] of pieces) fn(w, off, len, d);
  }

  read(gpa: number, out: Uint8Array): void {
    this.walk('gpa', gpa, out.length, false, (w, off, len, done) => out.set(w.bytes.subarray(off, off + len), done));
  }

  write(gpa: number, data: Uint8Array): void {
    this.walk('gpa', gpa, data.length, true, (w, off, len, done) => w.bytes.set(data.subarray(done, done + len), off));
    if (data.length > 0) this.dirtyLog?.markDirty(gpa, data.length);
  }

  map(gpa: number, length: number, writable: boolean): Uint8Array | null {
    checkAddr('gpa', gpa, length);
    const w = this.find(gpa);
    if (!w || (writable && !w.writable)) return null;
    const off = gpa - w.gpa;
    if (off + length > w.bytes.length) return null;
    return w.bytes.subarray(off, off + length);
  }

  markDirty(gpa: number, length: number): void {
    checkAddr('gpa', gpa, length);
    if (length > 0) this.dirtyLog?.markDirty(gpa, length);
  }
}
