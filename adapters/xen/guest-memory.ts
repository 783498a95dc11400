/**
 * Guest memory for a device served by an IOREQ server: guest frames mapped into this process
 * through the host (privcmd MMAPBATCH on Xen), cached in buckets, flushed when Xen sends an
 * INVALIDATE ioreq. Device writes are reported to Xen with modified_memory (one batched call per
 * write) and to an optional dirty log.
 * @module
 */
import { MdevError, describe } from '../../src/errors.js';
import type { DirtyLog, GuestMemory } from '../../src/guest-memory.js';
import type { ForeignMapping, XenHost } from './host.js';
import { XEN_PAGE_SIZE } from './ioreq-abi.js';

/** Frames per map-cache bucket (1 MiB). */
export const MAP_CACHE_BUCKET_FRAMES = 256;

/** GuestMemory over foreign mappings, with a bucketed map cache. */
export class XenGuestMemory implements GuestMemory {
  private readonly cache = new Map<number, ForeignMapping>();
  /** Where device writes are also reported, or null. */
  dirtyLog: DirtyLog | null = null;
  /** Counters for tools and tests. */
  readonly stats = { mapped: 0, flushes: 0, modifiedCalls: 0 };

  /**
   * Creates an empty cache.
   * @param host the hypervisor
   * @param maxBuckets buckets kept mapped at once (least recently added ones are dropped first)
   */
  constructor(
    private readonly host: XenHost,
    private readonly maxBuckets = 64,
  ) {}

  private check(gpa: number, length: number): void {
    if (!Number.isSafeInteger(gpa) || gpa < 0) throw new MdevError('EINVAL', `must be a non-negative integer, got ${describe(gpa)}`, 'gpa');
    if (!Number.isSafeInteger(length) || length < 0 || gpa + length > 2 ** 52) throw new MdevError('EFAULT', `[${gpa}, +${length}) is beyond the address space`, 'gpa');
  }

  /** The bytes of the bucket holding `gfn`, mapping it if needed; null if it cannot be mapped whole. */
  private bucket(index: number): ForeignMapping | null {
    let m = this.cache.get(index);
    if (m) return m;
    const first = BigInt(index * MAP_CACHE_BUCKET_FRAMES);
    try {
      m = this.host.mapForeign([...Array(MAP_CACHE_BUCKET_FRAMES).keys()].map((i) => first + BigInt(i)), true);
    } catch {
      return null; // e.g. the bucket runs past the end of guest RAM: fall back to exact frames
    }
    if (this.cache.size >= this.maxBuckets) {
      const [oldest, mapping] = this.cache.entries().next().value as [number, ForeignMapping];
      mapping.release();
      this.cache.delete(oldest);
    }
    this.cache.set(index, m);
    this.stats.mapped++;
    return m;
  }

  /** Runs `fn` over the pieces of [gpa, gpa+length), each within one frame-contiguous mapping. */
  private pieces(gpa: number, length: number, fn: (bytes: Uint8Array, done: number) => void): void {
    let done = 0;
    while (done < length) {
      const at = gpa + done;
      const frame = Math.floor(at / XEN_PAGE_SIZE);
      const index = Math.floor(frame / MAP_CACHE_BUCKET_FRAMES);
      const bucketStart = index * MAP_CACHE_BUCKET_FRAMES * XEN_PAGE_SIZE;
      const bucketEnd = bucketStart + MAP_CACHE_BUCKET_FRAMES * XEN_PAGE_SIZE;
      const len = Math.min(length - done, bucketEnd - at);
      const m = this.bucket(index);
      if (m) {
        fn(m.bytes.subarray(at - bucketStart, at - bucketStart + len), done);
      } else {
        const firstFrame = frame;
        const lastFrame = Math.floor((at + len - 1) / XEN_PAGE_SIZE);
        const exact = this.host.mapForeign([...Array(lastFrame - firstFrame + 1).keys()].map((i) => BigInt(firstFrame + i)), true);
        try {
          const off = at - firstFrame * XEN_PAGE_SIZE;
          fn(exact.bytes.subarray(off, off + len), done);
        } finally {
          exact.release();
        }
      }
      done += len;
    }
  }

  read(gpa: number, out: Uint8Array): void {
    this.check(gpa, out.length);
    this.pieces(gpa, out.length, (bytes, done) => out.set(bytes, done));
  }

  write(gpa: number, data: Uint8Array): void {
    this.check(gpa, data.length);
    if (data.length === 0) return;
    this.pieces(gpa, data.length, (bytes, done) => bytes.set(data.subarray(done, done + bytes.length)));
    this.markDirty(gpa, data.length);
  }

  map(gpa: number, length: number, _writable: boolean): Uint8Array | null {
    this.check(gpa, length);
    const index = Math.floor(gpa / XEN_PAGE_SIZE / MAP_CACHE_BUCKET_FRAMES);
    const bucketStart = index * MAP_CACHE_BUCKET_FRAMES * XEN_PAGE_SIZE;
    if (gpa + length > bucketStart + MAP_CACHE_BUCKET_FRAMES * XEN_PAGE_SIZE) return null;
    const m = this.bucket(index);
    return m ? m.bytes.subarray(gpa - bucketStart, gpa - bucketStart + length) : null;
  }

  markDirty(gpa: number, length: number): void {
    this.check(gpa, length);
    if (length === 0) return;
    const first = Math.floor(gpa / XEN_PAGE_SIZE);
    const last = Math.floor((gpa + length - 1) / XEN_PAGE_SIZE);
    this.host.modifiedMemory([{ firstPfn: BigInt(first), nr: last - first + 1 }]);
    this.stats.modifiedCalls++;
    this.dirtyLog?.markDirty(gpa, length);
  }

  /** Drops every cached mapping (Xen's INVALIDATE ioreq: the guest's memory map changed). */
  flush(): void {
    for (const m of this.cache.values()) m.release();
    this.cache.clear();
    this.stats.flushes++;
  }
}
