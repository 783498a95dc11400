/**
 * A display for a device's scanout plane: keeps an RGBA copy of the visible image up to date from
 * VRAM and writes it as PNG. What changed is found from dirty tracking when the path provides it
 * (a dirty bitmap of VRAM pages, e.g. from Xen's track_dirty_vram), or otherwise by a native
 * compare of per-page hashes — the only way to see guest writes to VRAM the VMM maps straight into
 * the guest over vfio-user, since those never trap.
 * @module
 */
import { PNG } from 'pngjs';
import { MdevError } from './errors.js';
import { binding } from './native/binding.js';
import { DirtyBitmap } from './native/dirty-bitmap.js';

const native = binding as unknown as { scanPages(bytes: Uint8Array, pageSize: number, hashes: BigUint64Array, dirty?: DirtyBitmap): number };

/** Pixel formats a {@link ScanoutDisplay} can show (DRM names: 32-bit XRGB, 16-bit RGB 5:6:5). */
export type PixelFormat = 'xrgb8888' | 'rgb565';

/** Byte order of the pixels in VRAM (a big-endian guest may store them most significant byte first). */
export type PixelByteOrder = 'little' | 'big';

/** Bytes per pixel of each {@link PixelFormat}. */
export const PIXEL_BYTES: Readonly<Record<PixelFormat, number>> = { xrgb8888: 4, rgb565: 2 };

/** Where the visible plane is in VRAM and how its pixels are stored. */
export interface ScanoutGeometry {
  /** Byte offset of the first line. */
  offset: number;
  /** Bytes per line. */
  stride: number;
  /** Pixels per line. */
  width: number;
  /** Lines. */
  height: number;
  /** Pixel format (default XRGB8888). */
  format?: PixelFormat;
  /** Byte order of each pixel (default little endian). */
  byteOrder?: PixelByteOrder;
}

/** Converts one line of `width` pixels at `vram[src]` to RGBA at `out[dst]`. */
type LineConverter = (vram: Uint8Array, src: number, out: Uint8Array, dst: number, width: number) => void;

// XRGB8888 is B, G, R, X in memory little endian and X, R, G, B big endian; RGB565 is one 16-bit
// word (R in the top 5 bits). PNG wants R, G, B, A; 5/6-bit channels are widened by bit replication.
const CONVERTERS: Readonly<Record<PixelFormat, Record<PixelByteOrder, LineConverter>>> = {
  xrgb8888: {
    little: (v, s, o, d, w) => {
      for (let x = 0; x < w; x++, s += 4, d += 4) {
        o[d] = v[s + 2]!;
        o[d + 1] = v[s + 1]!;
        o[d + 2] = v[s]!;
        o[d + 3] = 0xff;
      }
    },
    big: (v, s, o, d, w) => {
      for (let x = 0; x < w; x++, s += 4, d += 4) {
        o[d] = v[s + 1]!;
        o[d + 1] = v[s + 2]!;
        o[d + 2] = v[s + 3]!;
        o[d + 3] = 0xff;
      }
    },
  },
  rgb565: {
    little: (v, s, o, d, w) => {
      for (let x = 0; x < w; x++, s += 2, d += 4) rgb565(v[s]! | (v[s + 1]! << 8), o, d);
    },
    big: (v, s, o, d, w) => {
      for (let x = 0; x < w; x++, s += 2, d += 4) rgb565((v[s]! << 8) | v[s + 1]!, o, d);
    },
  },
};

function rgb565(p: number, o: Uint8Array, d: number): void {
  const r = p >> 11;
  const g = (p >> 5) & 0x3f;
  const b = p & 0x1f;
  o[d] = (r << 3) | (r >> 2);
  o[d + 1] = (g << 2) | (g >> 4);
  o[d + 2] = (b << 3) | (b >> 2);
  o[d + 3] = 0xff;
}

/** What one refresh did. */
export interface RefreshResult {
  /** VRAM pages found changed. */
  changedPages: number;
  /** Lines of the image re-rendered. */
  linesUpdated: number;
}

/** The picture a {@link ScanoutDisplay} keeps: RGBA, 4 bytes a pixel, rows top to bottom without padding. */
export interface ScanoutImage {
  /** Pixels per row. */
  width: number;
  /** Rows. */
  height: number;
  /** The pixels (a view of the display's own buffer: updated in place by each refresh). */
  data: Uint8Array;
}

/** Page size of the VRAM scan. */
export const SCAN_PAGE_SIZE = 4096;

/** Keeps an image of the scanout plane current and writes it as PNG. */
export class ScanoutDisplay {
  private readonly hashes: BigUint64Array;
  private readonly dirty: DirtyBitmap;
  private geometry: Required<ScanoutGeometry> | null = null;
  private image: PNG | null = null;

  /**
   * Creates a display for `vramBytes` bytes of VRAM.
   * @param vramBytes size of the VRAM the plane lives in
   */
  constructor(vramBytes: number) {
    if (!Number.isSafeInteger(vramBytes) || vramBytes <= 0) throw new MdevError('EINVAL', 'must be a positive integer', 'vramBytes');
    const pages = Math.ceil(vramBytes / SCAN_PAGE_SIZE);
    // VRAM starts zeroed: seed every page with a zero page's hash, so the first scan reports only
    // what was drawn.
    const zero = new BigUint64Array(1);
    native.scanPages(new Uint8Array(SCAN_PAGE_SIZE), SCAN_PAGE_SIZE, zero);
    this.hashes = new BigUint64Array(pages).fill(zero[0]!);
    this.dirty = new DirtyBitmap(pages, SCAN_PAGE_SIZE);
  }

  /**
   * Brings the image up to date with `vram`. Changed pages come from `dirty` when given (pages of
   * VRAM written since the last refresh), else from the hash scan. A new geometry redraws all.
   */
  refresh(vram: Uint8Array, geometry: ScanoutGeometry, dirty?: DirtyBitmap): RefreshResult {
    // Only the plane's own fields count: callers may pass a richer object (a device's scanout state).
    const g: Required<ScanoutGeometry> = {
      offset: geometry.offset,
      stride: geometry.stride,
      width: geometry.width,
      height: geometry.height,
      format: geometry.format ?? 'xrgb8888',
      byteOrder: geometry.byteOrder ?? 'little',
    };
    if (!Object.hasOwn(PIXEL_BYTES, g.format)) throw new MdevError('EINVAL', `unknown pixel format ${JSON.stringify(g.format)}`, 'geometry.format');
    if (g.byteOrder !== 'little' && g.byteOrder !== 'big') throw new MdevError('EINVAL', `must be "little" or "big"`, 'geometry.byteOrder');
    const bpp = PIXEL_BYTES[g.format];
    if (![g.offset, g.stride, g.width, g.height].every((v) => Number.isSafeInteger(v) && v >= 0) || g.width === 0 || g.height === 0 || g.stride < g.width * bpp) {
      throw new MdevError('EINVAL', `bad plane ${JSON.stringify(g)}`, 'geometry');
    }
    if (g.offset + (g.height - 1) * g.stride + g.width * bpp > vram.length) throw new MdevError('ERANGE', 'the plane runs past the end of VRAM', 'geometry');
    const fresh = this.geometry === null || JSON.stringify(this.geometry) !== JSON.stringify(g);
    if (fresh) {
      this.geometry = g;
      this.image = new PNG({ width: g.width, height: g.height });
    }
    let changedPages: number;
    if (dirty) {
      changedPages = dirty.count();
      this.dirty.clearAll();
      for (const p of dirty.setPages()) if (p < this.dirty.pageCount) this.dirty.markPage(p);
      native.scanPages(vram, SCAN_PAGE_SIZE, this.hashes); // keep the hashes current for later scans
    } else {
      this.dirty.clearAll();
      changedPages = native.scanPages(vram, SCAN_PAGE_SIZE, this.hashes, this.dirty);
    }
    let linesUpdated = 0;
    const data = this.image!.data;
    const convert = CONVERTERS[g.format][g.byteOrder];
    for (let y = 0; y < g.height; y++) {
      const start = g.offset + y * g.stride;
      const end = start + g.width * bpp;
      let touched = fresh;
      for (let p = Math.floor(start / SCAN_PAGE_SIZE); !touched && p <= Math.floor((end - 1) / SCAN_PAGE_SIZE); p++) touched = this.dirty.test(p);
      if (!touched) continue;
      linesUpdated++;
      convert(vram, start, data, y * g.width * 4, g.width);
    }
    return { changedPages, linesUpdated };
  }

  /** The current image (null before the first refresh). */
  rgba(): ScanoutImage | null {
    return this.image ? { width: this.image.width, height: this.image.height, data: this.image.data } : null;
  }

  /** The current image as PNG bytes. */
  png(): Buffer {
    if (!this.image) throw new MdevError('ENODATA', 'nothing has been displayed yet', 'display');
    return PNG.sync.write(this.image);
  }
}
