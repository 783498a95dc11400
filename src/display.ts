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

/** Where the visible plane is in VRAM (XRGB8888). */
export interface ScanoutGeometry {
  /** Byte offset of the first line. */
  offset: number;
  /** Bytes per line. */
  stride: number;
  /** Pixels per line. */
  width: number;
  /** Lines. */
  height: number;
}

/** What one refresh did. */
export interface RefreshResult {
  /** VRAM pages found changed. */
  changedPages: number;
  /** Lines of the image re-rendered. */
  linesUpdated: number;
}

/** Page size of the VRAM scan. */
export const SCAN_PAGE_SIZE = 4096;

/** Keeps an image of the scanout plane current and writes it as PNG. */
export class ScanoutDisplay {
  private readonly hashes: BigUint64Array;
  private readonly dirty: DirtyBitmap;
  private geometry: ScanoutGeometry | null = null;
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
    const g = geometry;
    if (![g.offset, g.stride, g.width, g.height].every((v) => Number.isSafeInteger(v) && v >= 0) || g.width === 0 || g.height === 0 || g.stride < g.width * 4) {
      throw new MdevError('EINVAL', `bad plane ${JSON.stringify(g)}`, 'geometry');
    }
    if (g.offset + (g.height - 1) * g.stride + g.width * 4 > vram.length) throw new MdevError('ERANGE', 'the plane runs past the end of VRAM', 'geometry');
    const fresh = this.geometry === null || JSON.stringify(this.geometry) !== JSON.stringify(g);
    if (fresh) {
      this.geometry = { ...g };
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
    for (let y = 0; y < g.height; y++) {
      const start = g.offset + y * g.stride;
      const end = start + g.width * 4;
      let touched = fresh;
      for (let p = Math.floor(start / SCAN_PAGE_SIZE); !touched && p <= Math.floor((end - 1) / SCAN_PAGE_SIZE); p++) touched = this.dirty.test(p);
      if (!touched) continue;
      linesUpdated++;
      for (let x = 0; x < g.width; x++) {
        const s = start + x * 4;
        const d = (y * g.width + x) * 4;
        // XRGB8888 little-endian: B, G, R, X in memory; PNG wants R, G, B, A.
        data[d] = vram[s + 2]!;
        data[d + 1] = vram[s + 1]!;
        data[d + 2] = vram[s]!;
        data[d + 3] = 0xff;
      }
    }
    return { changedPages, linesUpdated };
  }

  /** The current image as PNG bytes. */
  png(): Buffer {
    if (!this.image) throw new MdevError('ENODATA', 'nothing has been displayed yet', 'display');
    return PNG.sync.write(this.image);
  }
}
