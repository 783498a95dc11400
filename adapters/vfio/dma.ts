/**
 * The DMA side of a vfio-user server: the guest memory windows a client shares with `DMA_MAP` and
 * withdraws with `DMA_UNMAP`, device access to them as {@link GuestMemory}, and DMA dirty logging
 * (`DEVICE_FEATURE` `DMA_LOGGING_START` / `STOP` / `REPORT`), following QEMU's
 * docs/interop/vfio-user.rst.
 *
 * A window that comes with a file descriptor is mapped into this process and accessed with plain
 * memory copies; one without is reached through `DMA_READ` / `DMA_WRITE` messages to the client
 * (a {@link DmaTransport}). Addresses are limited to {@link MAX_GPA} (2^52) so that every byte of
 * every window has a JavaScript-number address, as {@link GuestMemory} requires; this covers any
 * x86-64 or arm64 guest physical address space, but a vIOMMU handing out IOVAs above 2^52 would be
 * refused.
 *
 * Windows with an fd are mapped in {@link DMA_SEGMENT_SIZE} pieces, so a window may be larger than
 * one `ArrayBuffer` can be. Dirty logging keeps one {@link DirtyBitmap} per logged range; see
 * {@link VfioDmaSpace.loggingStart} for how "log every write" follows windows mapped later.
 *
 * Errors are {@link MdevError}s whose `code` is the errno the server should put in its reply and
 * whose `field` names the message field at fault (`dma_map.size`, `dma_logging_report.iova`, ...).
 * @module
 */
import { fstatSync, type BigIntStats } from 'node:fs';
import { MdevError, checkInt, describe } from '../../src/errors.js';
import { MAX_GPA, type GuestMemory } from '../../src/guest-memory.js';
import { closeFd } from '../../src/native/fd.js';
import { PAGE_SIZE, mmapFd, munmap } from '../../src/native/mmap.js';
import { DirtyBitmap, MAX_DIRTY_PAGES } from '../../src/native/dirty-bitmap.js';
import { DmaFlag } from './protocol.js';

/**
 * Message-based access to guest memory, for windows mapped without a file descriptor: the server
 * connection sends `DMA_READ` / `DMA_WRITE` to the client and waits for the reply. Calls are
 * synchronous and move at most the `maxTransfer` bytes given to {@link VfioDmaSpace} (the client's
 * `max_data_xfer_size`); the space splits larger accesses. A failure is thrown (an errno error).
 */
export interface DmaTransport {
  /** Fills `out` with the `out.length` guest bytes at `address` (one `DMA_READ`). */
  dmaRead(address: bigint, out: Uint8Array): void;
  /** Writes `data` to guest memory at `address` (one `DMA_WRITE`). */
  dmaWrite(address: bigint, data: Uint8Array): void;
}

/** A `DMA_MAP` request, as decoded from the message (see `Layout.dmaMap`). */
export interface DmaMapRequest {
  /** `DmaFlag.READ` and/or `DmaFlag.WRITE`: what the device may do with the window. */
  flags: number;
  /** Offset of the window in the accompanying file descriptor; 0 when there is none. */
  offset: bigint;
  /** First DMA address (IOVA) of the window. */
  address: bigint;
  /** Size of the window in bytes. */
  size: bigint;
}

/** A `DMA_UNMAP` request, as decoded from the message (see `Layout.dmaUnmap`). */
export interface DmaUnmapRequest {
  /** 0, or `DmaFlag.UNMAP_ALL` (with address and size 0). */
  flags: number;
  /** First address of the window to remove; must be that of a previous map. */
  address: bigint;
  /** Size of the window to remove; must be that of the same previous map. */
  size: bigint;
}

/** A window as listed by {@link VfioDmaSpace.windows}. */
export interface DmaWindowInfo {
  /** First DMA address. */
  readonly address: bigint;
  /** Size in bytes. */
  readonly size: bigint;
  /** `DmaFlag.READ` / `DmaFlag.WRITE` as mapped. */
  readonly flags: number;
  /** Whether the window is mapped in this process (came with an fd) rather than message-based. */
  readonly mapped: boolean;
}

/** An IOVA range of a `DMA_LOGGING_START` request. */
export interface DmaLoggingRange {
  /** First address of the range. */
  iova: bigint;
  /** Length of the range in bytes. */
  length: bigint;
}

/** The state of DMA logging, as reported by {@link VfioDmaSpace.logging}. */
export interface DmaLoggingState {
  /** Tracking granularity chosen at start, in bytes. */
  readonly pageSize: bigint;
  /** Whether logging was started with no ranges ("log every DMA write"). */
  readonly all: boolean;
  /**
   * The ranges tracked now: those given at start, or, when {@link DmaLoggingState.all} is set, the
   * extents covering every window mapped since start.
   */
  readonly ranges: readonly DmaLoggingRange[];
}

/** Options of {@link VfioDmaSpace}. */
export interface VfioDmaSpaceOptions {
  /** Most windows mapped at once: the `max_dma_maps` the server advertised. */
  maxWindows: number;
  /** Message-based access for windows mapped without an fd, or null to refuse such windows. */
  transport: DmaTransport | null;
  /** Most bytes one {@link DmaTransport} call may move: the client's `max_data_xfer_size`. */
  maxTransfer: number;
  /**
   * Most dirty-tracking pages (bits) all logged ranges may use together; default
   * {@link DEFAULT_MAX_LOG_PAGES}. Bounds the memory a client can make the server allocate.
   */
  maxLogPages?: number;
}

/** Alignment the protocol requires of DMA addresses, sizes and offsets (the 4 KiB `pgsizes`). */
export const DMA_ALIGNMENT = 4096;

/**
 * Windows with an fd are mapped in pieces of at most this many bytes (1 GiB), each its own
 * `ArrayBuffer`: Node 20 limits an `ArrayBuffer` to 4 GiB while a client's RAM window is often
 * larger. 1 GiB keeps every piece aligned to any huge page size a window's fd may use. A view
 * returned by {@link VfioDmaSpace.map} never crosses a piece boundary.
 */
export const DMA_SEGMENT_SIZE = 2 ** 30;

/** Most ranges a `DMA_LOGGING_START` may list (more is `E2BIG`, as in the kernel). */
export const MAX_LOGGING_RANGES = 1024;

/** Smallest dirty-tracking page size, and the one used when the client's hint is unusable. */
export const MIN_LOGGING_PAGE_SIZE = 4096;

/** Largest dirty-tracking page size (the limit of {@link DirtyBitmap}). */
export const MAX_LOGGING_PAGE_SIZE = 2 ** 30;

/** Default of {@link VfioDmaSpaceOptions.maxLogPages}: 2^30 bits (128 MiB), 4 TiB at 4 KiB pages. */
export const DEFAULT_MAX_LOG_PAGES = 2 ** 30;

/** Smallest page size a `DMA_LOGGING_REPORT` may ask for (the kernel's limit too). */
const MIN_REPORT_PAGE_SIZE = 4096n;
/** Largest report page size {@link DirtyBitmap} can produce. */
const MAX_REPORT_PAGE_SIZE = 2n ** 62n;
const U64_MAX = 2n ** 64n - 1n;
const GPA_LIMIT = BigInt(MAX_GPA);
const KNOWN_MAP_FLAGS = DmaFlag.READ | DmaFlag.WRITE;
const KNOWN_UNMAP_FLAGS = DmaFlag.UNMAP_ALL | DmaFlag.UNMAP_GET_DIRTY_BITMAP;

/** One mapped window. Addresses are numbers: windows end at or below 2^52. */
interface Window {
  readonly gpa: number;
  readonly size: number;
  readonly flags: number;
  /** The mapping in {@link DMA_SEGMENT_SIZE} pieces, or null for a message-based window. */
  readonly segments: Uint8Array[] | null;
  /** Cleared on unmap, so an access that yields (a transport call) notices the window is gone. */
  live: boolean;
}

/** One logged IOVA range and its bits. */
interface LoggedRange {
  readonly start: number;
  readonly length: number;
  readonly bitmap: DirtyBitmap;
}

interface LogState {
  readonly pageSize: number;
  readonly all: boolean;
  /** Sorted, disjoint; in "log all" mode also non-adjacent and aligned to `pageSize`. */
  ranges: LoggedRange[];
  /** Sum of the ranges' page counts, checked against the budget. */
  pages: number;
}

/** One contiguous part of an access: `len` bytes at offset `off` of `window`, `done` bytes in. */
interface Piece {
  readonly window: Window;
  readonly off: number;
  readonly len: number;
  readonly done: number;
}

/** A `[start, end)` extent, for planning logged ranges before anything is allocated. */
interface Extent {
  start: number;
  end: number;
}

function u32(field: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new MdevError('EINVAL', `must be a u32, got ${describe(value)}`, field);
  }
  return value;
}

function u64(field: string, value: unknown): bigint {
  if (typeof value !== 'bigint' || value < 0n || value > U64_MAX) {
    throw new MdevError('EINVAL', `must be a u64 bigint, got ${describe(value)}`, field);
  }
  return value;
}

function hex(v: number | bigint): string {
  return `0x${v.toString(16)}`;
}

function isPowerOfTwo(v: bigint): boolean {
  return v > 0n && (v & (v - 1n)) === 0n;
}

/** The GuestMemory address checks, as in WindowedGuestMemory: EINVAL for junk, EFAULT past 2^52. */
function checkAccess(field: string, gpa: number, length: number): void {
  if (!Number.isSafeInteger(gpa) || gpa < 0) throw new MdevError('EINVAL', `must be a non-negative safe integer, got ${describe(gpa)}`, field);
  if (!Number.isSafeInteger(length) || length < 0) throw new MdevError('EINVAL', `length must be a non-negative safe integer, got ${describe(length)}`, field);
  if (gpa > MAX_GPA || length > MAX_GPA - gpa) throw new MdevError('EFAULT', `[${hex(gpa)}, +${length}) is beyond the 52-bit DMA address space`, field);
}

/**
 * Closes an fd we own after a failed map. The error being thrown is the one worth reporting; close
 * itself can only fail with EBADF (the fd was not open, which the failure already shows) or with
 * EINTR/EIO, after which Linux has released the fd anyway, so its error is dropped.
 */
function closeAfterFailure(fd: number): void {
  try {
    closeFd(fd);
  } catch {
    // See above: nothing is left open whatever close reports.
  }
}

function unmapSegments(segments: readonly Uint8Array[]): void {
  for (const s of segments) munmap(s.buffer as ArrayBuffer);
}

/**
 * The DMA address space of one vfio-user client: its windows, device access to them, and DMA
 * dirty logging. Not thread-safe; use it from the thread that serves the connection.
 *
 * @example
 * ```ts
 * const dma = new VfioDmaSpace({ maxWindows: 1024, transport: connection, maxTransfer: 1 << 20 });
 * dma.map({ flags: DmaFlag.READ | DmaFlag.WRITE, offset: 0n, address: 0n, size: 1n << 30n }, fd);
 * dma.write(0x1000, descriptor);           // device DMA, dirty-logged when logging is on
 * dma.unmap({ flags: 0, address: 0n, size: 1n << 30n });
 * ```
 */
export class VfioDmaSpace implements GuestMemory {
  private readonly maxWindows: number;
  private readonly transport: DmaTransport | null;
  private maxTransfer: number;
  private readonly maxLogPages: number;
  /** Sorted by address, disjoint. */
  private list: Window[] = [];
  private log: LogState | null = null;
  private closed = false;

  /**
   * Creates an empty space.
   * @param options limits (`maxWindows` in [1, 2^31], `maxTransfer` in [1, 2^31], `maxLogPages` in
   *   [1, 2^34]; ERANGE naming the option otherwise) and the transport for fd-less windows
   */
  constructor(options: VfioDmaSpaceOptions) {
    this.maxWindows = checkInt('maxWindows', options.maxWindows, 1, 2 ** 31);
    this.maxTransfer = checkInt('maxTransfer', options.maxTransfer, 1, 2 ** 31);
    this.maxLogPages = checkInt('maxLogPages', options.maxLogPages ?? DEFAULT_MAX_LOG_PAGES, 1, MAX_DIRTY_PAGES);
    const t = options.transport;
    if (t !== null && (typeof t !== 'object' || typeof t.dmaRead !== 'function' || typeof t.dmaWrite !== 'function')) {
      throw new MdevError('EINVAL', 'must be null or an object with dmaRead and dmaWrite methods', 'transport');
    }
    this.transport = t;
  }

  // ---------------------------------------------------------------------------------------------
  // DMA_MAP / DMA_UNMAP

  /**
   * Adds a window (`DMA_MAP`). Takes ownership of `fd`: it is closed before this returns, whether
   * the map succeeds (the mapping keeps the memory) or fails.
   *
   * With an fd, `[offset, offset + size)` of it is mapped shared, read-only unless the flags grant
   * WRITE. Without one, the window is reached through the transport.
   *
   * @param req the decoded request
   * @param fd the fd that came with the message, or null
   * @throws EINVAL naming `dma_map.flags` for unknown bits or neither READ nor WRITE (as VFIO);
   *   `dma_map.size` for a zero size; the field that is not a multiple of 4 KiB (or of the host page
   *   size, when larger, for an fd window); `dma_map.address` (at or past 2^52) or `dma_map.size`
   *   when the window would end beyond 2^52;
   *   `dma_map.offset` for a non-zero offset without an fd, or `dma_map.offset`/`dma_map.size` when
   *   `[offset, offset + size)` does not lie within a regular file (such a mapping would raise
   *   SIGBUS when touched). Device files (DAX) report no size and are not checked.
   * @throws EEXIST naming `dma_map.address` when the window overlaps an existing one
   * @throws ENOSPC when `maxWindows` windows are mapped already
   * @throws ENOTSUP naming `fd` for a window without an fd when there is no transport
   * @throws EBADF naming `fd` for a value that is not an fd number, or after {@link close}
   * @throws ENOMEM naming `dma_map.size` when logging every write and the window's bits would pass
   *   `maxLogPages`
   * @throws errno errors of fstat/mmap (EBADF, EACCES for a writable window over a read-only fd,
   *   ENODEV for an fd that cannot be mapped, ...)
   */
  map(req: DmaMapRequest, fd: number | null): void;
  /**
   * A live view of `[gpa, gpa + length)` when it lies in one readable window mapped in this process
   * (and within one {@link DMA_SEGMENT_SIZE} piece of it), and the window is writable if `writable`
   * is set; otherwise null, and the caller falls back to {@link read} / {@link write}.
   *
   * Writes through the view are not dirty-logged: call {@link markDirty} for them. The view becomes
   * empty when the window is unmapped. A view of a read-only window (`writable` false) is backed by
   * a read-only mapping: writing to it kills the process with SIGSEGV.
   */
  map(gpa: number, length: number, writable: boolean): Uint8Array | null;
  map(a: DmaMapRequest | number, b: number | null, c?: boolean): Uint8Array | null | void {
    if (typeof a === 'number') return this.view(a, b as number, c === true);
    this.dmaMap(a, b);
  }

  private dmaMap(req: DmaMapRequest, fd: number | null): void {
    if (fd !== null && (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0 || fd > 0x7fff_ffff)) {
      // Not an fd number, so there is nothing to close.
      throw new MdevError('EBADF', `must be an fd number or null, got ${describe(fd)}`, 'fd');
    }
    // The fd while it is still ours to close. Cleared before closing it so that no path can close
    // the number twice (a second close could hit an unrelated fd that reused it).
    let owned = fd;
    let segments: Uint8Array[] = [];
    let window: Window;
    try {
      if (this.closed) throw new MdevError('EBADF', 'the DMA space is closed', 'fd');
      const flags = u32('dma_map.flags', req.flags);
      if ((flags & ~KNOWN_MAP_FLAGS) !== 0) throw new MdevError('EINVAL', `unknown flag bits ${hex((flags & ~KNOWN_MAP_FLAGS) >>> 0)}`, 'dma_map.flags');
      if ((flags & KNOWN_MAP_FLAGS) === 0) throw new MdevError('EINVAL', 'grants neither READ nor WRITE', 'dma_map.flags');
      const offset = u64('dma_map.offset', req.offset);
      const address = u64('dma_map.address', req.address);
      const size = u64('dma_map.size', req.size);
      if (size === 0n) throw new MdevError('EINVAL', 'must not be 0', 'dma_map.size');
      // The mmap offset must be a multiple of the host page size, which may exceed 4 KiB (arm64).
      const align = BigInt(fd === null ? DMA_ALIGNMENT : Math.max(DMA_ALIGNMENT, PAGE_SIZE));
      for (const [field, v] of [['dma_map.address', address], ['dma_map.size', size], ['dma_map.offset', offset]] as const) {
        if (v % align !== 0n) throw new MdevError('EINVAL', `${hex(v)} is not a multiple of ${align}`, field);
      }
      if (address + size > GPA_LIMIT) {
        const why = address + size > U64_MAX + 1n ? 'wraps around the 64-bit address space' : 'ends beyond 2^52, the largest DMA address supported';
        throw new MdevError('EINVAL', `[${hex(address)}, +${hex(size)}) ${why}`, address >= GPA_LIMIT ? 'dma_map.address' : 'dma_map.size');
      }
      if (fd === null) {
        if (offset !== 0n) throw new MdevError('EINVAL', 'must be 0 for a window without an fd', 'dma_map.offset');
        if (this.transport === null) throw new MdevError('ENOTSUP', 'this server cannot reach a window without an fd (no DMA_READ/DMA_WRITE transport)', 'fd');
      }
      const gpa = Number(address);
      const len = Number(size);
      const next = this.list[this.firstEndingAfter(gpa)];
      if (next !== undefined && next.gpa < gpa + len) {
        throw new MdevError('EEXIST', `[${hex(gpa)}, ${hex(gpa + len)}) overlaps the window [${hex(next.gpa)}, ${hex(next.gpa + next.size)})`, 'dma_map.address');
      }
      if (this.list.length >= this.maxWindows) throw new MdevError('ENOSPC', `${this.maxWindows} windows are mapped already (max_dma_maps)`, 'dma_map.address');
      // Plan the logging change before mapping anything, so that a refusal costs nothing.
      const commitLog = this.log?.all ? this.planLogAllWindow(gpa, len) : null;
      if (fd !== null) {
        checkWithinFile(fd, offset, size);
        segments = mapSegments(fd, offset, len, (flags & DmaFlag.WRITE) !== 0);
        owned = null;
        closeFd(fd);
      }
      commitLog?.();
      window = { gpa, size: len, flags, segments: fd === null ? null : segments, live: true };
    } catch (e) {
      unmapSegments(segments);
      if (owned !== null) closeAfterFailure(owned);
      throw e;
    }
    this.list.splice(this.firstEndingAfter(window.gpa), 0, window);
  }

  /** Sets the most bytes one DMA_READ/DMA_WRITE may move (the client's max_data_xfer_size). */
  setMaxTransfer(bytes: number): void {
    this.maxTransfer = checkInt('maxTransfer', bytes, 1, 2 ** 31);
  }

  /**
   * Removes a window (`DMA_UNMAP`), or every window with `DmaFlag.UNMAP_ALL`. When this returns the
   * window's mapping is gone (views from {@link map} are empty) and no access to it is under way,
   * as the protocol requires before the reply. With logging of every write on, the window's logged
   * range stays until logging stops, so writes made before the unmap are still reported.
   *
   * @throws EINVAL naming `dma_unmap.flags` for unknown bits; `dma_unmap.address` /
   *   `dma_unmap.size` when UNMAP_ALL comes with a non-zero address / size; `dma_unmap.size` for a
   *   zero size without UNMAP_ALL, or when the range overlaps a window without matching it exactly
   * @throws ENOTSUP naming `dma_unmap.flags` for GET_DIRTY_BITMAP (spec 0.9.1; use DMA logging)
   * @throws ENOENT naming `dma_unmap.address` when nothing is mapped in the range
   */
  unmap(req: DmaUnmapRequest): void {
    const flags = u32('dma_unmap.flags', req.flags);
    const address = u64('dma_unmap.address', req.address);
    const size = u64('dma_unmap.size', req.size);
    if ((flags & ~KNOWN_UNMAP_FLAGS) !== 0) throw new MdevError('EINVAL', `unknown flag bits ${hex((flags & ~KNOWN_UNMAP_FLAGS) >>> 0)}`, 'dma_unmap.flags');
    if ((flags & DmaFlag.UNMAP_GET_DIRTY_BITMAP) !== 0) {
      throw new MdevError('ENOTSUP', 'GET_DIRTY_BITMAP is not supported; use DMA logging (DEVICE_FEATURE)', 'dma_unmap.flags');
    }
    if ((flags & DmaFlag.UNMAP_ALL) !== 0) {
      if (address !== 0n) throw new MdevError('EINVAL', 'must be 0 with UNMAP_ALL', 'dma_unmap.address');
      if (size !== 0n) throw new MdevError('EINVAL', 'must be 0 with UNMAP_ALL', 'dma_unmap.size');
      this.dropAllWindows();
      return;
    }
    if (size === 0n) throw new MdevError('EINVAL', 'must not be 0', 'dma_unmap.size');
    // Past 2^52 nothing can be mapped; compare as bigints so huge values do not lose precision.
    const end = address + size;
    const i = address < GPA_LIMIT ? this.firstEndingAfter(Number(address)) : this.list.length;
    const w = this.list[i];
    if (w === undefined || BigInt(w.gpa) >= end) {
      throw new MdevError('ENOENT', `nothing is mapped in [${hex(address)}, ${hex(end)})`, 'dma_unmap.address');
    }
    if (BigInt(w.gpa) !== address || BigInt(w.size) !== size) {
      throw new MdevError('EINVAL', `[${hex(address)}, ${hex(end)}) does not match the window [${hex(w.gpa)}, ${hex(w.gpa + w.size)}) exactly`, 'dma_unmap.size');
    }
    this.list.splice(i, 1);
    releaseWindow(w);
  }

  /**
   * Drops every window and stops DMA logging: the client went away, and its successor starts from
   * nothing (it must map its memory and start logging itself).
   */
  clear(): void {
    this.dropAllWindows();
    this.loggingStop();
  }

  /** Releases everything ({@link clear}); later maps and logging starts fail with EBADF. Idempotent. */
  close(): void {
    this.clear();
    this.closed = true;
  }

  /** The windows, sorted by address, for listings. */
  get windows(): readonly DmaWindowInfo[] {
    return this.list.map((w) => Object.freeze({ address: BigInt(w.gpa), size: BigInt(w.size), flags: w.flags, mapped: w.segments !== null }));
  }

  private dropAllWindows(): void {
    const old = this.list;
    this.list = [];
    for (const w of old) releaseWindow(w);
  }

  /** Index of the first window that ends after `gpa` (the one containing it, or the next one). */
  private firstEndingAfter(gpa: number): number {
    let lo = 0;
    let hi = this.list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const w = this.list[mid]!;
      if (w.gpa + w.size <= gpa) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  // ---------------------------------------------------------------------------------------------
  // GuestMemory

  /**
   * Copies `out.length` guest bytes at `gpa` into `out`. The range may span adjacent windows.
   * Every byte is checked before any is read. For message-based windows the transport moves at most
   * `maxTransfer` bytes a call; if it fails part of `out` may already be filled.
   * @throws EFAULT naming `gpa` when a byte is not mapped or its window does not grant READ
   */
  read(gpa: number, out: Uint8Array): void {
    for (const p of this.plan(gpa, out.length, DmaFlag.READ)) {
      this.ensureLive(p);
      const w = p.window;
      if (w.segments !== null) {
        forEachSegment(w, p.off, p.len, (seg, segOff, n, d) => out.set(seg.subarray(segOff, segOff + n), p.done + d));
      } else {
        for (let d = 0; d < p.len; d += this.maxTransfer) {
          this.ensureLive(p);
          const n = Math.min(this.maxTransfer, p.len - d);
          this.transport!.dmaRead(BigInt(w.gpa + p.off + d), out.subarray(p.done + d, p.done + d + n));
        }
      }
    }
  }

  /**
   * Copies `data` to guest memory at `gpa` and logs the write. The range may span adjacent
   * windows. Every byte is checked before any is written, so a refused write changes nothing. For
   * message-based windows the transport moves at most `maxTransfer` bytes a call; if it fails, the
   * bytes before the failure are written and, like the part that failed, logged as dirty.
   * @throws EFAULT naming `gpa` when a byte is not mapped or its window does not grant WRITE
   */
  write(gpa: number, data: Uint8Array): void {
    const pieces = this.plan(gpa, data.length, DmaFlag.WRITE);
    // Bytes that may have reached guest memory. Logged even when a transport call fails part-way:
    // a page reported dirty needlessly costs a copy, one missed corrupts a migration.
    let reached = 0;
    try {
      for (const p of pieces) {
        this.ensureLive(p);
        const w = p.window;
        if (w.segments !== null) {
          reached = p.done + p.len;
          forEachSegment(w, p.off, p.len, (seg, segOff, n, d) => seg.set(data.subarray(p.done + d, p.done + d + n), segOff));
        } else {
          for (let d = 0; d < p.len; d += this.maxTransfer) {
            this.ensureLive(p);
            const n = Math.min(this.maxTransfer, p.len - d);
            reached = p.done + d + n;
            this.transport!.dmaWrite(BigInt(w.gpa + p.off + d), data.subarray(p.done + d, p.done + d + n));
          }
        }
      }
    } finally {
      if (reached > 0) this.markLogged(gpa, reached);
    }
  }

  /**
   * Logs a device write made through a view from {@link map} (only writes are logged). Addresses
   * outside the logged ranges are ignored; the range need not be mapped.
   * @throws EINVAL / EFAULT naming `gpa` for an address that is not a safe integer or beyond 2^52
   */
  markDirty(gpa: number, length: number): void {
    checkAccess('gpa', gpa, length);
    if (length > 0) this.markLogged(gpa, length);
  }

  private view(gpa: number, length: number, writable: boolean): Uint8Array | null {
    checkAccess('gpa', gpa, length);
    const w = this.list[this.firstEndingAfter(gpa)];
    if (w === undefined || w.gpa > gpa || w.segments === null) return null;
    // A view can be read whatever the caller means to do, so it needs READ; writing needs WRITE.
    if ((w.flags & DmaFlag.READ) === 0 || (writable && (w.flags & DmaFlag.WRITE) === 0)) return null;
    const off = gpa - w.gpa;
    if (length > w.size - off) return null;
    const seg = w.segments[Math.floor(off / DMA_SEGMENT_SIZE)]!;
    const segOff = off % DMA_SEGMENT_SIZE;
    if (segOff + length > seg.length) return null;
    return seg.subarray(segOff, segOff + length);
  }

  /** Splits an access into per-window pieces, refusing it whole if any byte may not be accessed. */
  private plan(gpa: number, length: number, need: number): Piece[] {
    checkAccess('gpa', gpa, length);
    const pieces: Piece[] = [];
    let i = this.firstEndingAfter(gpa);
    let done = 0;
    while (done < length) {
      const at = gpa + done;
      const w = this.list[i];
      if (w === undefined || w.gpa > at) throw new MdevError('EFAULT', `DMA address ${hex(at)} is not mapped`, 'gpa');
      if ((w.flags & need) === 0) {
        throw new MdevError('EFAULT', `DMA address ${hex(at)} is in a window mapped without ${need === DmaFlag.WRITE ? 'WRITE' : 'READ'}`, 'gpa');
      }
      const off = at - w.gpa;
      const len = Math.min(length - done, w.size - off);
      pieces.push({ window: w, off, len, done });
      done += len;
      i++;
    }
    return pieces;
  }

  /**
   * A transport call may let the connection handle other messages before its reply arrives; if
   * one of them unmapped a window this access still meant to use, stop rather than touch it.
   */
  private ensureLive(p: Piece): void {
    if (!p.window.live) throw new MdevError('EFAULT', `DMA address ${hex(p.window.gpa + p.off)} was unmapped during the access`, 'gpa');
  }

  // ---------------------------------------------------------------------------------------------
  // DMA logging

  /**
   * Starts DMA logging (`DMA_LOGGING_START`): from now on every device write through {@link write}
   * or {@link markDirty} that touches a logged range marks its pages.
   *
   * With ranges, exactly those are logged. With none, every write is: each window mapped now or
   * later gets a logged range covering it (rounded out to whole tracking pages, merged with
   * neighbours it touches), kept until logging stops even if the window is unmapped, so a write
   * is still reported after its window is gone and a remapped window continues its old bits.
   *
   * The tracking page size is the hint when it is a power of two in [4096, 2^30]; a smaller or
   * non-power-of-two hint becomes 4096 and a larger one 2^30. If the ranges would then need more
   * than `maxLogPages` bits, it doubles until they fit (the spec lets the device pick). Reports
   * may ask for any page size regardless.
   *
   * @param pageSize the client's page size hint
   * @param ranges the IOVA ranges to log; empty for all
   * @returns the page size chosen, for the reply
   * @throws EBUSY naming `dma_logging` when logging is already on
   * @throws E2BIG naming `dma_logging.num_ranges` for more than {@link MAX_LOGGING_RANGES} ranges
   * @throws EINVAL naming `dma_logging.ranges[i].iova` / `.length` for a range that is empty, not
   *   4 KiB aligned, ends beyond 2^52 or overlaps another
   * @throws ENOMEM naming `dma_logging.ranges` when even 2^30-byte pages need more than `maxLogPages`
   * @throws EBADF after {@link close}
   */
  loggingStart(pageSize: bigint, ranges: readonly DmaLoggingRange[]): bigint {
    if (this.closed) throw new MdevError('EBADF', 'the DMA space is closed', 'dma_logging');
    if (this.log !== null) throw new MdevError('EBUSY', 'DMA logging is already started', 'dma_logging');
    const hint = u64('dma_logging.page_size', pageSize);
    if (!Array.isArray(ranges)) throw new MdevError('EINVAL', 'must be an array', 'dma_logging.ranges');
    if (ranges.length > MAX_LOGGING_RANGES) {
      throw new MdevError('E2BIG', `${ranges.length} ranges; at most ${MAX_LOGGING_RANGES} are supported`, 'dma_logging.num_ranges');
    }
    const given: (Extent & { index: number })[] = ranges.map((r, index) => {
      const field = `dma_logging.ranges[${index}]`;
      const iova = u64(`${field}.iova`, r?.iova);
      const length = u64(`${field}.length`, r?.length);
      if (length === 0n) throw new MdevError('EINVAL', 'must not be 0', `${field}.length`);
      if (iova % BigInt(DMA_ALIGNMENT) !== 0n) throw new MdevError('EINVAL', `${hex(iova)} is not a multiple of 4096`, `${field}.iova`);
      if (length % BigInt(DMA_ALIGNMENT) !== 0n) throw new MdevError('EINVAL', `${hex(length)} is not a multiple of 4096`, `${field}.length`);
      if (iova + length > GPA_LIMIT) {
        throw new MdevError('EINVAL', `[${hex(iova)}, +${hex(length)}) ends beyond 2^52`, iova >= GPA_LIMIT ? `${field}.iova` : `${field}.length`);
      }
      return { start: Number(iova), end: Number(iova + length), index };
    });
    given.sort((a, b) => a.start - b.start);
    for (let k = 1; k < given.length; k++) {
      const prev = given[k - 1]!;
      const cur = given[k]!;
      if (cur.start < prev.end) {
        const later = Math.max(prev.index, cur.index);
        throw new MdevError('EINVAL', `overlaps dma_logging.ranges[${Math.min(prev.index, cur.index)}]`, `dma_logging.ranges[${later}].iova`);
      }
    }
    const all = ranges.length === 0;
    const extentsFor = (ps: number): Extent[] => (all ? logAllExtents(this.list, ps) : given);
    let ps = chooseLoggingPageSize(hint);
    while (countPages(extentsFor(ps), ps) > this.maxLogPages && ps < MAX_LOGGING_PAGE_SIZE) ps *= 2;
    const extents = extentsFor(ps);
    const pages = countPages(extents, ps);
    if (pages > this.maxLogPages) {
      throw new MdevError('ENOMEM', `logging needs ${pages} tracking pages even at ${ps}-byte pages; the limit is ${this.maxLogPages}`, 'dma_logging.ranges');
    }
    const logged = extents.map((e) => ({ start: e.start, length: e.end - e.start, bitmap: new DirtyBitmap(Math.ceil((e.end - e.start) / ps), ps) }));
    this.log = { pageSize: ps, all, ranges: logged, pages };
    return BigInt(ps);
  }

  /** Stops DMA logging (`DMA_LOGGING_STOP`) and frees its bits. Does nothing when it is off. */
  loggingStop(): void {
    this.log = null;
  }

  /**
   * Reports and clears the dirty pages of `[iova, iova + length)` (`DMA_LOGGING_REPORT`): bit `i`
   * of `out` (u64 words, LSB first) is set when the device wrote any byte of
   * `[iova + i * pageSize, iova + (i + 1) * pageSize)` since the last report of that page. Bits past
   * the range are written as 0; `out` beyond `ceil(length / pageSize / 64) * 8` bytes is untouched.
   * A write racing with the report is either in it or still marked afterwards.
   *
   * The range must lie inside one logged range (a report cannot combine the bits of two), and
   * `iova`'s distance from that range's start and `length` must be multiples of `pageSize`.
   *
   * @param pageSize the report's page size: a power of two in [4096, 2^62], independent of the
   *   tracking page size
   * @param out where the bitmap goes (e.g. the reply payload at `Layout.dmaLoggingReport.bitmap`)
   * @throws EINVAL naming `dma_logging_report` when logging is off; `dma_logging_report.page_size`
   *   for a bad page size; `dma_logging_report.iova` when the range is not inside one logged range
   *   or misaligned; `dma_logging_report.length` for a zero or misaligned length
   * @throws ERANGE naming `out` when `out` is too short
   */
  loggingReport(iova: bigint, length: bigint, pageSize: bigint, out: Uint8Array): void {
    const log = this.log;
    if (log === null) throw new MdevError('EINVAL', 'DMA logging is not started', 'dma_logging_report');
    u64('dma_logging_report.iova', iova);
    u64('dma_logging_report.length', length);
    u64('dma_logging_report.page_size', pageSize);
    if (!isPowerOfTwo(pageSize) || pageSize < MIN_REPORT_PAGE_SIZE || pageSize > MAX_REPORT_PAGE_SIZE) {
      throw new MdevError('EINVAL', `must be a power of two in [4096, 2^62], got ${pageSize}`, 'dma_logging_report.page_size');
    }
    if (length === 0n) throw new MdevError('EINVAL', 'must not be 0', 'dma_logging_report.length');
    const end = iova + length;
    const r = iova < GPA_LIMIT ? findRange(log.ranges, Number(iova)) : undefined;
    if (r === undefined || end > BigInt(r.start + r.length)) {
      throw new MdevError('EINVAL', `[${hex(iova)}, ${hex(end)}) is not inside one logged range`, 'dma_logging_report.iova');
    }
    const offset = iova - BigInt(r.start);
    if (offset % pageSize !== 0n) {
      throw new MdevError('EINVAL', `${hex(iova)} is not a whole number of ${pageSize}-byte pages from the logged range at ${hex(r.start)}`, 'dma_logging_report.iova');
    }
    if (length % pageSize !== 0n) throw new MdevError('EINVAL', `${hex(length)} is not a multiple of ${pageSize}`, 'dma_logging_report.length');
    if (!(out instanceof Uint8Array)) throw new MdevError('EINVAL', `must be a Uint8Array, got ${describe(out)}`, 'out');
    const need = ((length / pageSize + 63n) / 64n) * 8n;
    if (BigInt(out.length) < need) throw new MdevError('ERANGE', `${out.length} bytes is shorter than the ${need}-byte bitmap`, 'out');
    r.bitmap.reportAndClear(offset, length, pageSize, out);
  }

  /** The logging state, or null when logging is off. */
  get logging(): DmaLoggingState | null {
    const log = this.log;
    if (log === null) return null;
    return Object.freeze({
      pageSize: BigInt(log.pageSize),
      all: log.all,
      ranges: Object.freeze(log.ranges.map((r) => Object.freeze({ iova: BigInt(r.start), length: BigInt(r.length) }))),
    });
  }

  /** Marks `[gpa, gpa + length)` in every logged range it touches. */
  private markLogged(gpa: number, length: number): void {
    const log = this.log;
    if (log === null) return;
    const end = gpa + length;
    const ranges = log.ranges;
    for (let i = firstRangeEndingAfter(ranges, gpa); i < ranges.length; i++) {
      const r = ranges[i]!;
      if (r.start >= end) break;
      const from = Math.max(gpa, r.start);
      const to = Math.min(end, r.start + r.length);
      r.bitmap.markBytes(from - r.start, to - from);
    }
  }

  /**
   * In "log all" mode, plans the logged range of a new window: its extent rounded out to tracking
   * pages, merged with every range it overlaps or touches. Checks the budget now (ENOMEM) and
   * returns the commit, which allocates the merged bitmap, copies the old bits in and swaps it in.
   */
  private planLogAllWindow(gpa: number, size: number): () => void {
    const log = this.log!;
    const ps = log.pageSize;
    let start = Math.floor(gpa / ps) * ps;
    let end = Math.ceil((gpa + size) / ps) * ps;
    const ranges = log.ranges;
    // Ranges are non-adjacent, so those overlapping or touching [start, end] are consecutive.
    let first = firstRangeEndingAfter(ranges, start);
    if (first > 0 && ranges[first - 1]!.start + ranges[first - 1]!.length === start) first--;
    let last = first;
    let mergedPages = 0;
    while (last < ranges.length && ranges[last]!.start <= end) {
      const r = ranges[last]!;
      start = Math.min(start, r.start);
      end = Math.max(end, r.start + r.length);
      mergedPages += r.length / ps;
      last++;
    }
    const pages = (end - start) / ps;
    const total = log.pages - mergedPages + pages;
    if (total > this.maxLogPages) {
      throw new MdevError('ENOMEM', `logging this window needs ${total} tracking pages; the limit is ${this.maxLogPages}`, 'dma_map.size');
    }
    return () => {
      const bitmap = new DirtyBitmap(pages, ps);
      for (let k = first; k < last; k++) {
        const old = ranges[k]!;
        bitmap.mergeBitmap(old.bitmap, (old.start - start) / ps);
      }
      ranges.splice(first, last - first, { start, length: end - start, bitmap });
      log.pages = total;
    };
  }
}

/** See {@link VfioDmaSpace.loggingStart}: hints we cannot track at become the nearest we can. */
function chooseLoggingPageSize(hint: bigint): number {
  if (hint > BigInt(MAX_LOGGING_PAGE_SIZE) && isPowerOfTwo(hint)) return MAX_LOGGING_PAGE_SIZE;
  if (hint < BigInt(MIN_LOGGING_PAGE_SIZE) || !isPowerOfTwo(hint)) return MIN_LOGGING_PAGE_SIZE;
  return Number(hint);
}

/** The "log all" ranges for the current windows: each rounded out to `ps`, touching ones merged. */
function logAllExtents(windows: readonly Window[], ps: number): Extent[] {
  const out: Extent[] = [];
  for (const w of windows) {
    const start = Math.floor(w.gpa / ps) * ps;
    const end = Math.ceil((w.gpa + w.size) / ps) * ps;
    const prev = out[out.length - 1];
    if (prev !== undefined && start <= prev.end) prev.end = Math.max(prev.end, end);
    else out.push({ start, end });
  }
  return out;
}

function countPages(extents: readonly Extent[], ps: number): number {
  let n = 0;
  for (const e of extents) n += Math.ceil((e.end - e.start) / ps);
  return n;
}

function firstRangeEndingAfter(ranges: readonly LoggedRange[], gpa: number): number {
  let lo = 0;
  let hi = ranges.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const r = ranges[mid]!;
    if (r.start + r.length <= gpa) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function findRange(ranges: readonly LoggedRange[], gpa: number): LoggedRange | undefined {
  const r = ranges[firstRangeEndingAfter(ranges, gpa)];
  return r !== undefined && r.start <= gpa ? r : undefined;
}

/**
 * Refuses a window that runs past the end of a regular file: touching such a page raises SIGBUS,
 * which would kill the server from inside an ordinary copy. (mmapFd checks too, but cannot name
 * the message field.) Device files such as DAX report no size and are left to mmap.
 */
function checkWithinFile(fd: number, offset: bigint, size: bigint): void {
  let st: BigIntStats;
  try {
    st = fstatSync(fd, { bigint: true });
  } catch (e) {
    const code = typeof (e as { code?: unknown }).code === 'string' ? (e as { code: string }).code : 'EBADF';
    throw new MdevError(code, `fstat failed: ${(e as Error).message}`, 'fd');
  }
  if (!st.isFile()) return;
  if (offset > st.size) throw new MdevError('EINVAL', `${hex(offset)} is beyond the end of the ${st.size}-byte file`, 'dma_map.offset');
  if (offset + size > st.size) {
    throw new MdevError('EINVAL', `[${hex(offset)}, +${hex(size)}) runs past the end of the ${st.size}-byte file`, 'dma_map.size');
  }
}

/** Maps `[offset, offset + size)` of `fd` in {@link DMA_SEGMENT_SIZE} pieces; all or none. */
function mapSegments(fd: number, offset: bigint, size: number, writable: boolean): Uint8Array[] {
  const segments: Uint8Array[] = [];
  try {
    for (let at = 0; at < size; at += DMA_SEGMENT_SIZE) {
      const n = Math.min(DMA_SEGMENT_SIZE, size - at);
      segments.push(new Uint8Array(mmapFd(fd, n, { offset: offset + BigInt(at), writable, shared: true })));
    }
  } catch (e) {
    unmapSegments(segments);
    throw e;
  }
  return segments;
}

/** Calls `fn` for each piece of `[off, off + len)` of a mapped window that lies in one segment. */
function forEachSegment(w: Window, off: number, len: number, fn: (seg: Uint8Array, segOff: number, n: number, done: number) => void): void {
  const segments = w.segments!;
  let done = 0;
  while (done < len) {
    const at = off + done;
    const seg = segments[Math.floor(at / DMA_SEGMENT_SIZE)]!;
    const segOff = at % DMA_SEGMENT_SIZE;
    const n = Math.min(len - done, seg.length - segOff);
    fn(seg, segOff, n, done);
    done += n;
  }
}

/** Unmaps a removed window; its views become empty, so nothing can reach the memory afterwards. */
function releaseWindow(w: Window): void {
  w.live = false;
  if (w.segments !== null) unmapSegments(w.segments);
}
