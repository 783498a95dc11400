/**
 * Write-watch of guest pages: a device (e.g. a GPU shadowing its page tables) asks to learn about
 * guest writes to some pages. Xen can trap them synchronously (HVMMEM_ioreq_server); vfio-user has
 * no write-protect, so {@link CompareWriteWatch} compares watched pages at sync points. The mode is
 * reported, never hidden: callers see which guarantee they got.
 * @module
 */
import { MdevError, describe } from './errors.js';
import type { GuestMemory } from './guest-memory.js';

/** How writes are detected: synchronously trapped, or found by comparing at sync points. */
export type WriteWatchMode = 'trap' | 'compare';

/** Told of a guest write to a watched page: the page's address and the bytes that changed. */
export type WriteWatchHandler = (event: { gpa: number; length: number }) => void;

/** A watch that can be removed. */
export interface WatchHandle {
  /** Stops watching. */
  remove(): void;
}

/** Write-watch service provided by an adapter. */
export interface WriteWatch {
  /** The detection mode this path provides. */
  readonly mode: WriteWatchMode;
  /** Writes reported to handlers so far. */
  readonly events: number;
  /** Watches the pages covering `[gpa, gpa+length)`. */
  watch(gpa: number, length: number, handler: WriteWatchHandler): WatchHandle;
  /**
   * A sync point (e.g. a doorbell): in compare mode, reports writes since the last sync; in trap
   * mode writes were reported as they happened and this does nothing.
   */
  sync(): void;
}

/** Page size of write-watch granularity. */
export const WATCH_PAGE_SIZE = 4096;

interface CompareEntry {
  gpa: number;
  length: number;
  handler: WriteWatchHandler;
  snapshot: Uint8Array;
}

/** Write-watch by comparison against snapshots (the fallback where pages cannot be protected). */
export class CompareWriteWatch implements WriteWatch {
  readonly mode: WriteWatchMode = 'compare';
  events = 0;
  private readonly entries = new Set<CompareEntry>();
  private readonly scratch = new Uint8Array(WATCH_PAGE_SIZE);

  /**
   * Creates a compare-mode watch over `memory`.
   * @param memory where the watched pages are read from
   */
  constructor(private readonly memory: GuestMemory) {}

  watch(gpa: number, length: number, handler: WriteWatchHandler): WatchHandle {
    if (!Number.isSafeInteger(gpa) || gpa < 0) throw new MdevError('EINVAL', `must be a non-negative integer, got ${describe(gpa)}`, 'gpa');
    if (!Number.isSafeInteger(length) || length <= 0) throw new MdevError('EINVAL', `must be a positive integer, got ${describe(length)}`, 'length');
    if (typeof handler !== 'function') throw new MdevError('EINVAL', 'must be a function', 'handler');
    const start = gpa - (gpa % WATCH_PAGE_SIZE);
    const end = Math.ceil((gpa + length) / WATCH_PAGE_SIZE) * WATCH_PAGE_SIZE;
    const snapshot = new Uint8Array(end - start);
    this.memory.read(start, snapshot); // EFAULT here if the pages are not guest memory
    const entry: CompareEntry = { gpa: start, length: end - start, handler, snapshot };
    this.entries.add(entry);
    return { remove: () => this.entries.delete(entry) };
  }

  sync(): void {
    for (const e of [...this.entries]) {
      for (let off = 0; off < e.length; off += WATCH_PAGE_SIZE) {
        const page = this.scratch;
        this.memory.read(e.gpa + off, page);
        const old = e.snapshot.subarray(off, off + WATCH_PAGE_SIZE);
        let first = -1;
        let last = -1;
        for (let i = 0; i < WATCH_PAGE_SIZE; i++) {
          if (page[i] !== old[i]) {
            if (first < 0) first = i;
            last = i;
          }
        }
        if (first < 0) continue;
        old.set(page);
        if (this.entries.has(e)) {
          this.events++;
          e.handler({ gpa: e.gpa + off + first, length: last - first + 1 });
        }
      }
    }
  }
}
