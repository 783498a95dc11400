/**
 * Dirty-page bitmaps: device DMA marks guest pages dirty, migration reports and clears them in the
 * layout of VFIO's DMA-logging report, and Xen's `track_dirty_vram` bitmaps are OR-ed in.
 *
 * The bits live in native memory (or in a caller's `SharedArrayBuffer`) as u64 words, bit `i` =
 * page `i`, LSB first. Every operation is atomic per word and may run concurrently with any other,
 * from worker threads sharing the buffer or from native threads holding the bitmap: a mark is
 * either returned by exactly one report-and-clear or still set afterwards, never lost. Mark a page
 * after writing it.
 *
 * Arguments are validated: a value of the wrong type, a non-integer or a negative number throws a
 * `TypeError` (`code` `ERR_INVALID_ARG_TYPE`) or `RangeError` (`ERR_OUT_OF_RANGE`), a range past
 * the end throws `ERANGE`, a malformed size or alignment `EINVAL`; each names the argument in
 * `field`. Byte offsets and lengths may be given as bigints.
 * @module
 */
import { binding } from './binding.js';
import { MdevError } from '../errors.js';

/** Tracking page size used when none is given: 4 KiB. */
export const DEFAULT_DIRTY_PAGE_SIZE = 4096;

/** The most pages a {@link DirtyBitmap} tracks: 2^34 (64 TiB of 4 KiB pages, a 2 GiB bitmap). */
export const MAX_DIRTY_PAGES = 2 ** 34;

/** The operations of a {@link DirtyBitmap}, implemented natively. */
export interface DirtyBitmapOps {
  /** Number of tracked pages. */
  readonly pageCount: number;
  /** Size of a tracked page in bytes, a power of two in [512, 2^30]. */
  readonly pageSize: number;
  /** Size of the bit storage in bytes: `ceil(pageCount / 64) * 8`. */
  readonly byteLength: number;
  /** The `SharedArrayBuffer` holding the bits, when the bitmap was built over one. */
  readonly buffer: SharedArrayBuffer | undefined;

  /**
   * Marks one page dirty.
   * @param page page index, `< pageCount` (else `ERANGE`)
   */
  markPage(page: number): void;

  /**
   * Marks `count` pages from `first` dirty, a word at a time.
   * @param first first page, `<= pageCount` (else `ERANGE`)
   * @param count number of pages; `first + count <= pageCount` (else `ERANGE` naming `count`)
   */
  markPages(first: number, count: number): void;

  /**
   * Marks every page that the byte range `[offset, offset + length)` of the tracked space touches.
   * A zero length marks nothing.
   * @param offset byte offset, `<= pageCount * pageSize` (else `ERANGE`)
   * @param length byte count; the range must end within the tracked space (else `ERANGE`)
   */
  markBytes(offset: number | bigint, length: number | bigint): void;

  /**
   * Whether a page is dirty.
   * @param page page index, `< pageCount` (else `ERANGE`)
   */
  test(page: number): boolean;

  /**
   * Number of dirty pages in `[first, first + count)`.
   * @param first first page (default 0), `<= pageCount`
   * @param count number of pages (default: to the end); the range must end by `pageCount`
   */
  count(first?: number, count?: number): number;

  /**
   * The first dirty page in `[fromPage, endPage)`, or -1 when there is none.
   * @param fromPage where to start, `<= pageCount` (`pageCount` gives -1)
   * @param endPage where to stop (default `pageCount`), in `[fromPage, pageCount]`
   */
  nextSet(fromPage: number, endPage?: number): number;

  /** Clears every page. Marks racing with it may survive or not. */
  clearAll(): void;

  /**
   * Writes the dirty state of the byte range `[offset, offset + length)` into `out` in the layout of
   * VFIO's DMA-logging report, without clearing anything; see {@link reportAndClear}.
   * @returns the number of set bits written
   */
  report(offset: number | bigint, length: number | bigint, reportPageSize: number | bigint, out: ArrayBufferView): number;

  /**
   * Writes the dirty state of the byte range `[offset, offset + length)` into `out` in the layout of
   * VFIO's DMA-logging report and clears the reported pages, atomically per word: a page marked
   * concurrently is either in this report or still dirty afterwards.
   *
   * Bit `i` of `out` (u64 words in host order; LSB-first bytes on little-endian hosts) is set when
   * any tracked page overlapping `[offset + i * reportPageSize, offset + (i + 1) * reportPageSize)`
   * is dirty. The first `ceil((length / reportPageSize) / 64) * 8` bytes of `out` are written, bits
   * past the range as 0; the rest of `out` is left alone.
   *
   * Clearing when the page sizes differ:
   * - `reportPageSize >= pageSize`: every tracked page in the range is cleared.
   * - `reportPageSize < pageSize`: a tracked page is cleared only if the range covers all of it. A
   *   page the range covers in part sets the bits of that part and stays dirty, so the report of
   *   the rest of the page still sees it.
   *
   * @param offset byte offset into the tracked space, a multiple of `reportPageSize` (else `EINVAL`)
   * @param length byte count, a multiple of `reportPageSize` (else `EINVAL`). The range must lie in
   *   the tracked space rounded up to whole report pages (else `ERANGE`): only the last report page
   *   may overhang the end, and the overhang counts as clean.
   * @param reportPageSize bytes per output bit, a power of two in [512, 2^62] (else `EINVAL`)
   * @param out the output (any TypedArray, DataView or ArrayBuffer, shared or not), at least
   *   `ceil((length / reportPageSize) / 64) * 8` bytes (else `ERANGE`)
   * @returns the number of set bits written
   */
  reportAndClear(offset: number | bigint, length: number | bigint, reportPageSize: number | bigint, out: ArrayBufferView): number;

  /**
   * ORs a foreign bitmap in, at any bit alignment: bit `i` of `bits` (bit `i % 8` of byte
   * `i / 8`, as Xen's `track_dirty_vram` returns it on little-endian hosts) marks page
   * `firstPage + i`, for `i < bitCount`. Bits past `bitCount` are ignored.
   * @param firstPage page of bit 0, `<= pageCount` (else `ERANGE`)
   * @param bits the foreign bitmap, at least `ceil(bitCount / 8)` bytes (else `ERANGE`)
   * @param bitCount number of bits; `firstPage + bitCount <= pageCount` (else `ERANGE`)
   */
  mergeFrom(firstPage: number, bits: ArrayBufferView, bitCount: number): void;

  /**
   * ORs every dirty page of `other` in, `other`'s page 0 landing on `firstPage`.
   * @param other a bitmap with the same page size and separate storage (else `EINVAL`); anything
   *   but a DirtyBitmap is a `TypeError`
   * @param firstPage where `other`'s page 0 lands (default 0); `other` must fit (else `ERANGE`)
   */
  mergeBitmap(other: DirtyBitmap, firstPage?: number): void;
}

/** The shape of the native class. */
type DirtyBitmapConstructor = new (pageCount: number, pageSize?: number, backing?: SharedArrayBuffer) => DirtyBitmapOps;

const NativeDirtyBitmap = binding['DirtyBitmap'] as DirtyBitmapConstructor;

/**
 * A dirty-page bitmap over `pageCount` pages of `pageSize` bytes.
 *
 * Instances are native objects (a JS subclass of the addon's class), so native modules take them
 * directly, e.g. a vfio-user DMA path that marks pages from its own threads.
 *
 * @example
 * ```ts
 * const dirty = new DirtyBitmap(guestBytes / 4096);
 * dirty.markBytes(dmaOffset, dmaLength);
 * const out = new Uint8Array(DirtyBitmap.reportByteLength(length, 4096));
 * dirty.reportAndClear(offset, length, 4096, out);
 * ```
 */
export class DirtyBitmap extends NativeDirtyBitmap {
  /**
   * Creates a bitmap with every page clean (or over the bits already in `backing`).
   * @param pageCount number of pages, in [1, 2^34]; `pageCount * pageSize` at most 2^53 (else `ERANGE`)
   * @param pageSize bytes per tracked page, a power of two in [512, 2^30] (else `EINVAL`); default 4096
   * @param backing a `SharedArrayBuffer` of exactly {@link DirtyBitmap.byteLengthFor}`(pageCount)`
   *   bytes to hold the bits (else `EINVAL`; a non-shared buffer is a `TypeError`). Its contents are
   *   kept: bitmaps built over one buffer in several worker threads are one bitmap.
   */
  constructor(pageCount: number, pageSize: number = DEFAULT_DIRTY_PAGE_SIZE, backing?: SharedArrayBuffer) {
    super(pageCount, pageSize, backing);
  }

  /**
   * Bytes of bit storage for `pageCount` pages: `ceil(pageCount / 64) * 8`.
   * @param pageCount number of pages, an integer in [1, 2^34]
   */
  static byteLengthFor(pageCount: number): number {
    checkCount('pageCount', pageCount, MAX_DIRTY_PAGES);
    if (pageCount === 0) throw new MdevError('ERANGE', 'must be in [1, 2^34], got 0', 'pageCount');
    return Math.ceil(pageCount / 64) * 8;
  }

  /**
   * Bytes a report of `length` bytes at `reportPageSize` writes: `ceil((length / reportPageSize) / 64) * 8`.
   * @param length byte count, a non-negative integer
   * @param reportPageSize bytes per output bit, a power of two
   */
  static reportByteLength(length: number, reportPageSize: number): number {
    checkCount('length', length, Number.MAX_SAFE_INTEGER);
    checkCount('reportPageSize', reportPageSize, Number.MAX_SAFE_INTEGER);
    if (reportPageSize === 0 || 2 ** Math.round(Math.log2(reportPageSize)) !== reportPageSize) {
      throw new MdevError('EINVAL', `must be a power of two, got ${reportPageSize}`, 'reportPageSize');
    }
    return Math.ceil(Math.floor(length / reportPageSize) / 64) * 8;
  }

  /**
   * A bitmap over a new zeroed `SharedArrayBuffer`; pass its {@link DirtyBitmapOps.buffer} to worker
   * threads and build a `DirtyBitmap` over it there to share the bits.
   * @param pageCount number of pages, in [1, 2^34]
   * @param pageSize bytes per tracked page (default 4096)
   */
  static createShared(pageCount: number, pageSize: number = DEFAULT_DIRTY_PAGE_SIZE): DirtyBitmap {
    return new DirtyBitmap(pageCount, pageSize, new SharedArrayBuffer(DirtyBitmap.byteLengthFor(pageCount)));
  }

  /**
   * The dirty pages in `[first, first + count)`, in ascending order, found with
   * {@link DirtyBitmapOps.nextSet}. Iteration reads the live bitmap: pages marked or cleared while it
   * runs may or may not be seen. The arguments are checked when this is called, not on first use.
   * @param first first page (default 0), `<= pageCount`
   * @param count number of pages (default: to the end); the range must end by `pageCount`
   */
  setPages(first = 0, count?: number): Generator<number, void, undefined> {
    checkCount('first', first, this.pageCount);
    const n = count ?? this.pageCount - first;
    checkCount('count', n, this.pageCount - first);
    return this.walk(first, first + n);
  }

  private *walk(from: number, end: number): Generator<number, void, undefined> {
    for (let page = this.nextSet(from, end); page >= 0; page = this.nextSet(page + 1, end)) yield page;
  }
}

/** Errors shaped like the native argument readers': TypeError, RangeError, then ERANGE past `max`. */
function checkCount(field: string, value: unknown, max: number): void {
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    const e = new TypeError(`The "${field}" argument must be an integer`) as TypeError & { code: string; field: string };
    e.code = 'ERR_INVALID_ARG_TYPE';
    e.field = field;
    throw e;
  }
  if (value < 0) {
    const e = new RangeError(`The value of "${field}" is out of range: must be >= 0`) as RangeError & { code: string; field: string };
    e.code = 'ERR_OUT_OF_RANGE';
    e.field = field;
    throw e;
  }
  if (value > max) throw new MdevError('ERANGE', `must be <= ${max}, got ${value}`, field);
}
