/**
 * Sets of inclusive 64-bit ranges with the semantics of Xen's rangesets (xen/common/rangeset.c),
 * which hold each ioreq server's port, memory and PCI ranges:
 * - ranges are kept sorted, disjoint and *coalesced*: adding a range adjacent to or overlapping
 *   an existing one extends it, so `[0, 9]` then `[10, 19]` is one range `[0, 19]`;
 * - "contains [s, e]" means one stored range covers all of it (after coalescing, ranges mapped
 *   back to back do cover an access spanning both);
 * - a set has a limit on the number of stored ranges (Xen: MAX_NR_IO_RANGES = 256 per set); an
 *   operation that would need one more range than the limit fails with ENOMEM and changes nothing.
 *   Coalescing frees ranges, so adding adjacent ranges never hits the limit, while removing the
 *   middle of a range (a split) needs one.
 * @module
 */
import { MdevError } from '../../../src/errors.js';

/** Read access to a set of ranges: what routing needs. */
export interface RangeLookup {
  /** Whether a single stored range covers all of `[start, end]` (`start <= end`). */
  contains(start: bigint, end: bigint): boolean;
}

/** Index of the last range whose start is `<= value` in `starts` (sorted ascending), or -1. */
function lastStartAtOrBelow(starts: readonly bigint[], value: bigint): number {
  let lo = 0;
  let hi = starts.length; // invariant: starts[< lo] <= value < starts[>= hi]
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (starts[mid]! <= value) lo = mid + 1;
    else hi = mid;
  }
  return lo - 1;
}

/** A read-only sorted list of disjoint inclusive ranges (a published snapshot of a {@link Rangeset}). */
export class RangeList implements RangeLookup {
  private readonly starts: bigint[] = [];
  private readonly ends: bigint[] = [];

  /**
   * Builds the list from its ranges.
   * @param pairs `[start, end]` pairs, sorted by start and disjoint (as a {@link Rangeset} publishes them)
   */
  constructor(pairs: Iterable<readonly [bigint, bigint]> = []) {
    for (const [s, e] of pairs) {
      this.starts.push(s);
      this.ends.push(e);
    }
  }

  /** Number of ranges. */
  get size(): number {
    return this.starts.length;
  }

  contains(start: bigint, end: bigint): boolean {
    const i = lastStartAtOrBelow(this.starts, start);
    return i >= 0 && this.ends[i]! >= end;
  }
}

/** A mutable range set with Xen's coalescing, containment and limit semantics. */
export class Rangeset implements RangeLookup {
  private starts: bigint[] = [];
  private ends: bigint[] = [];

  /**
   * Creates an empty set.
   * @param limit the most ranges the set may hold (Xen's rangeset_limit)
   */
  constructor(readonly limit: number) {}

  /** Number of stored (coalesced) ranges. */
  get size(): number {
    return this.starts.length;
  }

  /** The stored ranges, ascending. */
  *pairs(): IterableIterator<[bigint, bigint]> {
    for (let i = 0; i < this.starts.length; i++) yield [this.starts[i]!, this.ends[i]!];
  }

  contains(start: bigint, end: bigint): boolean {
    const i = lastStartAtOrBelow(this.starts, start);
    return i >= 0 && this.ends[i]! >= end;
  }

  /** Whether any stored range shares a value with `[start, end]`. */
  overlaps(start: bigint, end: bigint): boolean {
    // The last range starting at or below `end` is the only candidate: earlier ones end before it starts.
    const i = lastStartAtOrBelow(this.starts, end);
    return i >= 0 && this.ends[i]! >= start;
  }

  /**
   * Adds `[start, end]`, coalescing with every range it overlaps or touches.
   * @throws ENOMEM when the set is at its limit and the range touches no stored range
   */
  add(start: bigint, end: bigint): void {
    // First range that overlaps or touches [start, end]: the last one starting at or below start
    // if it reaches start - 1, else the next one.
    let first = lastStartAtOrBelow(this.starts, start);
    if (first < 0 || this.ends[first]! + 1n < start) first++;
    // Last range that overlaps or touches: the last one starting at or below end + 1.
    const last = lastStartAtOrBelow(this.starts, end + 1n);
    if (first > last) {
      if (this.starts.length >= this.limit) {
        throw new MdevError('ENOMEM', `the range set already holds its limit of ${this.limit} ranges`, 'start');
      }
      this.starts.splice(first, 0, start);
      this.ends.splice(first, 0, end);
      return;
    }
    const mergedStart = this.starts[first]! < start ? this.starts[first]! : start;
    const mergedEnd = this.ends[last]! > end ? this.ends[last]! : end;
    this.starts.splice(first, last - first + 1, mergedStart);
    this.ends.splice(first, last - first + 1, mergedEnd);
  }

  /**
   * Removes every value of `[start, end]` from the set.
   * @throws ENOMEM when this splits a range in two and the set is at its limit
   */
  remove(start: bigint, end: bigint): void {
    let first = lastStartAtOrBelow(this.starts, start);
    if (first < 0 || this.ends[first]! < start) first++;
    const last = lastStartAtOrBelow(this.starts, end);
    if (first > last) return;
    const keepLeft = this.starts[first]! < start;
    const keepRight = this.ends[last]! > end;
    const newStarts: bigint[] = [];
    const newEnds: bigint[] = [];
    if (keepLeft) {
      newStarts.push(this.starts[first]!);
      newEnds.push(start - 1n);
    }
    if (keepRight) {
      newStarts.push(end + 1n);
      newEnds.push(this.ends[last]!);
    }
    const grows = newStarts.length - (last - first + 1);
    if (grows > 0 && this.starts.length + grows > this.limit) {
      throw new MdevError('ENOMEM', `splitting a range would exceed the limit of ${this.limit} ranges`, 'start');
    }
    this.starts.splice(first, last - first + 1, ...newStarts);
    this.ends.splice(first, last - first + 1, ...newEnds);
  }

  /** Removes every range. */
  clear(): void {
    this.starts = [];
    this.ends = [];
  }
}
