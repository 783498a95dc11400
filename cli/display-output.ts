/**
 * A display output for a served device: keeps a {@link ScanoutDisplay} of a {@link DisplayDevice}
 * current and writes its frame as PNG to a file, atomically (a temporary file renamed over it),
 * whenever what it shows changed — at most once per interval — and on request (SIGUSR1 in
 * `mdevkit serve`) and at exit.
 *
 * Where changed VRAM pages come from is pluggable: a path that tracks guest writes to VRAM (Xen's
 * track_dirty_vram) passes a {@link VramDirtySource}; without one the output compares per-page
 * hashes of VRAM on a timer — the only way over vfio-user, where the guest writes VRAM through
 * the VMM's mapping and no write ever reaches the server.
 *
 * What is shown: the plane as the device describes it; black while the guest has blanked it; and
 * nothing new while the device has no valid mode (the file keeps the last frame, or is not created
 * until a first mode is set — a guest that never loads a driver never gets a PNG).
 *
 * Figures, kept for {@link DisplayOutput.stats}: VRAM pages the source reported per refresh and
 * per frame written, and the time from the refresh that first saw a change to the PNG being in
 * place. With the page scan, a guest write becomes visible to that refresh up to one interval
 * after it happened, so the write → PNG time is that figure plus at most `intervalMs`.
 * @module
 */
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { PNG } from 'pngjs';
import { checkInt, MdevError } from '../src/errors.js';
import { ScanoutDisplay, type RefreshResult, type ScanoutImage } from '../src/display.js';
import type { DisplayDevice, DisplayPlane } from '../src/display-device.js';
import type { DirtyBitmap } from '../src/native/dirty-bitmap.js';

/** A source of VRAM pages written by the guest (e.g. Xen's track_dirty_vram). */
export interface VramDirtySource {
  /** What the figures call this source (`track_dirty_vram`, …). */
  readonly name: string;
  /**
   * The VRAM pages written since the previous call — bit i for bytes [i·4096, (i+1)·4096) of
   * {@link DisplayDevice.displayVram} — or null when the source cannot tell this time (e.g. its
   * tracking was just re-armed after a BAR move); the output then compares page hashes instead.
   */
  collect(): DirtyBitmap | null;
}

/** Options of {@link DisplayOutput}. */
export interface DisplayOutputOptions {
  /**
   * The PNG file. Its directory must exist; a temporary file next to it is renamed over it. Without
   * one no file is written: the output only keeps the picture current for its listeners
   * ({@link DisplayOutput.onRefresh}, e.g. the live view).
   */
  path?: string;
  /** At most one PNG per interval, and VRAM is checked once per interval (default 100 ms). */
  intervalMs?: number;
  /** Where changed pages come from (default: a native compare of per-page hashes). */
  dirty?: VramDirtySource;
  /** VRAM as this process reaches it, when not {@link DisplayDevice.displayVram} (e.g. a foreign mapping). */
  vram?: () => Uint8Array;
  /** Milliseconds, monotonic (default `performance.now`); tests pass a fake clock. */
  clock?: () => number;
  /** Where problems go (a failed write, a plane that cannot be rendered); default: ignored. */
  warn?: (line: string) => void;
}

/** Why a frame was written. */
export type FrameReason = 'change' | 'signal' | 'exit';

/** One PNG written. */
export interface DisplayFrame {
  /** When, in ms since the output started. */
  atMs: number;
  /** Why. */
  reason: FrameReason;
  /** Pixels per line. */
  width: number;
  /** Lines. */
  height: number;
  /** Black because the guest blanked the screen. */
  blanked: boolean;
  /** VRAM pages the source reported changed since the previous frame. */
  pages: number;
  /** From the refresh that first saw a change to the file being in place, ms (null: nothing had changed). */
  latencyMs: number | null;
}

/** Count, minimum, median, 99th percentile, maximum and mean of a series. */
export interface FigureSummary {
  /** Values in the series. */
  count: number;
  /** Smallest value (0 when empty). */
  min: number;
  /** Median (nearest rank). */
  p50: number;
  /** 99th percentile (nearest rank). */
  p99: number;
  /** Largest value. */
  max: number;
  /** Arithmetic mean. */
  mean: number;
}

/** What {@link DisplayOutput.stats} reports. */
export interface DisplayOutputStats {
  /** The PNG file (null: none is written). */
  path: string | null;
  /** `page-scan`, or the dirty source's name. */
  source: string;
  /** The configured interval, ms. */
  intervalMs: number;
  /** Refreshes run (VRAM checked). */
  refreshes: number;
  /** PNG files written. */
  framesWritten: number;
  /** Changes of the plane the device announced. */
  planeChanges: number;
  /** The plane shown now (null: no valid mode). */
  plane: DisplayPlane | null;
  /** VRAM pages reported per refresh, over refreshes that reported any. */
  pagesPerRefresh: FigureSummary;
  /** VRAM pages reported per frame written for a change. */
  pagesPerFrame: FigureSummary;
  /** Refresh that first saw a change → PNG in place, ms (add up to `intervalMs` of scan wait for the page scan). */
  latencyMs: FigureSummary;
  /** Cost of one refresh (finding changed pages and converting changed lines), ms. */
  refreshMs: FigureSummary;
  /** Cost of encoding and writing one PNG, ms. */
  writeMs: FigureSummary;
  /** The last frames written (at most 64), oldest first. */
  frames: DisplayFrame[];
}

/** What one {@link DisplayOutput.refresh} saw. */
export interface OutputRefresh extends RefreshResult {
  /** The plane (null: no valid mode; nothing was looked at). */
  plane: DisplayPlane | null;
  /** What the PNG would show differs from the file (or there is no file yet). */
  changed: boolean;
}

const DEFAULT_INTERVAL_MS = 100;
/** A plane change is looked at this long after it was announced (a modeset is several writes). */
const SETTLE_MS = 10;
const KEEP = 4096;
const KEEP_FRAMES = 64;

/** A bounded series of figures. */
class Series {
  private readonly values: number[] = [];
  add(v: number): void {
    if (this.values.length === KEEP) this.values.shift();
    this.values.push(v);
  }
  summary(): FigureSummary {
    const v = [...this.values].sort((a, b) => a - b);
    const n = v.length;
    const rank = (p: number) => (n === 0 ? 0 : v[Math.min(n - 1, Math.max(0, Math.ceil((p / 100) * n) - 1))]!);
    const round = (x: number) => Math.round(x * 1000) / 1000;
    return { count: n, min: round(v[0] ?? 0), p50: round(rank(50)), p99: round(rank(99)), max: round(v[n - 1] ?? 0), mean: round(n === 0 ? 0 : v.reduce((a, b) => a + b, 0) / n) };
  }
}

/** What the file shows, as a comparable key. */
function shownKey(p: DisplayPlane): string {
  return JSON.stringify([p.width, p.height, p.offset, p.stride, p.format, p.byteOrder, p.blanked]);
}

/** Keeps a PNG file of a display device's frame current. */
export class DisplayOutput {
  private readonly device: DisplayDevice;
  private readonly path: string | null;
  private readonly intervalMs: number;
  private readonly refreshListeners = new Set<(refresh: OutputRefresh) => void>();
  private readonly dirty: VramDirtySource | null;
  private readonly vram: () => Uint8Array;
  private readonly clock: () => number;
  private readonly warn: (line: string) => void;
  private readonly display: ScanoutDisplay;
  private readonly startedAt: number;
  private plane: DisplayPlane | null = null;
  /** Key of the file's content; null: no file written yet. */
  private fileKey: string | null = null;
  /** Lines changed since the file was written. */
  private contentChanged = false;
  private pendingPages = 0;
  private detectedAt: number | null = null;
  private lastWriteAt = -Infinity;
  private ticker: ReturnType<typeof setInterval> | null = null;
  private deferred: ReturnType<typeof setTimeout> | null = null;
  private unsubscribe: (() => void) | null = null;
  private readonly warned = new Set<string>();
  private readonly black = new Map<string, Buffer>();
  private counts = { refreshes: 0, framesWritten: 0, planeChanges: 0 };
  private readonly figures = { pagesPerRefresh: new Series(), pagesPerFrame: new Series(), latencyMs: new Series(), refreshMs: new Series(), writeMs: new Series() };
  private readonly frames: DisplayFrame[] = [];

  /**
   * Creates an output for `device`; nothing runs until {@link start} (or explicit
   * {@link refresh}/{@link update}/{@link flush} calls).
   * @param device the display device
   * @param options the PNG path, interval, dirty source
   */
  constructor(device: DisplayDevice, options: DisplayOutputOptions) {
    if (typeof options !== 'object' || options === null) throw new MdevError('EINVAL', 'must be an object', 'options');
    if (options.path !== undefined && (typeof options.path !== 'string' || options.path === '')) throw new MdevError('EINVAL', 'must be a file path', 'options.path');
    this.device = device;
    this.path = options.path ?? null;
    this.intervalMs = checkInt('options.intervalMs', options.intervalMs ?? DEFAULT_INTERVAL_MS, 1, 3_600_000);
    this.dirty = options.dirty ?? null;
    this.vram = options.vram ?? (() => device.displayVram());
    this.clock = options.clock ?? (() => performance.now());
    this.warn = options.warn ?? (() => {});
    this.display = new ScanoutDisplay(this.vram().length);
    this.startedAt = this.clock();
  }

  /** Checks VRAM every interval and follows the device's plane changes, until {@link stop}. */
  start(): this {
    if (this.ticker) return this;
    this.unsubscribe = this.device.onDisplayChange(() => {
      this.counts.planeChanges++;
      // Inside the guest's access: only schedule. A modeset is a burst of writes; look once it settled.
      if (!this.deferred) this.deferred = this.timer(SETTLE_MS);
    });
    this.ticker = setInterval(() => this.update(), this.intervalMs);
    this.ticker.unref?.();
    return this;
  }

  /** Stops the timers and listener; writes the final frame if there is a mode to show. */
  stop(): void {
    if (this.ticker) clearInterval(this.ticker);
    if (this.deferred) clearTimeout(this.deferred);
    this.ticker = this.deferred = null;
    this.unsubscribe?.();
    this.unsubscribe = null;
    this.flush('exit');
  }

  /**
   * Brings the image up to date with the device: its plane, and VRAM pages changed since the last
   * refresh (from the dirty source, or a hash scan). Writes nothing.
   */
  refresh(): OutputRefresh {
    const result = this.refreshImage();
    for (const listener of this.refreshListeners) listener(result);
    return result;
  }

  /**
   * Calls `listener` after every refresh (the timer's, a plane change's, a flush) with what it saw;
   * {@link image} is the picture then. Listeners run on the event loop, never inside a guest
   * access, and must not throw. Returns a function that removes the listener.
   */
  onRefresh(listener: (refresh: OutputRefresh) => void): () => void {
    this.refreshListeners.add(listener);
    return () => this.refreshListeners.delete(listener);
  }

  /**
   * The picture as of the last refresh: RGBA pixels of the plane, updated in place by each refresh
   * (also while the guest has blanked the screen; {@link OutputRefresh.plane} says so). Null
   * before a plane was first shown.
   */
  image(): ScanoutImage | null {
    return this.display.rgba();
  }

  private refreshImage(): OutputRefresh {
    const t0 = this.clock();
    this.counts.refreshes++;
    const plane = this.device.displayPlane();
    this.plane = plane;
    if (!plane) return { plane, changedPages: 0, linesUpdated: 0, changed: false };
    let result: RefreshResult;
    try {
      const dirty = this.dirty?.collect() ?? undefined;
      result = this.display.refresh(this.vram(), plane, dirty);
    } catch (e) {
      // A device only reports planes inside VRAM; if one cannot be rendered anyway, show nothing new.
      this.warnOnce(`display: cannot render ${JSON.stringify(plane)}: ${(e as Error).message}`);
      this.plane = null;
      return { plane: null, changedPages: 0, linesUpdated: 0, changed: false };
    }
    this.figures.refreshMs.add(this.clock() - t0);
    if (result.changedPages > 0) this.figures.pagesPerRefresh.add(result.changedPages);
    this.pendingPages += result.changedPages;
    if (result.linesUpdated > 0) this.contentChanged = true;
    const changed = this.fileKey !== shownKey(plane) || (this.contentChanged && !plane.blanked);
    // A change undone before it was shown (blank and unblank within an interval) is no change.
    if (!changed) this.detectedAt = null;
    else if (this.detectedAt === null) this.detectedAt = t0;
    return { plane, ...result, changed };
  }

  /**
   * One step of the timer: refresh, and write the PNG if what it shows changed — unless a PNG was
   * written less than an interval ago; then the write happens when the interval is over.
   * Returns true when a PNG was written.
   */
  update(): boolean {
    if (!this.refresh().changed) return false;
    const wait = this.lastWriteAt + this.intervalMs - this.clock();
    if (wait > 0) {
      if (!this.deferred) this.deferred = this.timer(wait);
      return false;
    }
    return this.write('change');
  }

  /** Refreshes and writes the PNG now, changed or not, if there is a mode to show (SIGUSR1, exit). */
  flush(reason: FrameReason = 'signal'): boolean {
    this.refresh();
    return this.write(reason);
  }

  /** Figures and state, for `--stats` and tests. */
  stats(): DisplayOutputStats {
    return {
      path: this.path,
      source: this.dirty ? this.dirty.name : 'page-scan',
      intervalMs: this.intervalMs,
      ...this.counts,
      plane: this.plane,
      pagesPerRefresh: this.figures.pagesPerRefresh.summary(),
      pagesPerFrame: this.figures.pagesPerFrame.summary(),
      latencyMs: this.figures.latencyMs.summary(),
      refreshMs: this.figures.refreshMs.summary(),
      writeMs: this.figures.writeMs.summary(),
      frames: this.frames.map((f) => ({ ...f })),
    };
  }

  private timer(ms: number): ReturnType<typeof setTimeout> {
    const t = setTimeout(() => {
      this.deferred = null;
      this.update();
    }, ms);
    t.unref?.();
    return t;
  }

  private write(reason: FrameReason): boolean {
    const plane = this.plane;
    if (!plane || this.path === null) return false;
    const t0 = this.clock();
    const tmp = `${this.path}.${process.pid}.tmp`;
    try {
      writeFileSync(tmp, plane.blanked ? this.blackPng(plane.width, plane.height) : this.display.png());
      renameSync(tmp, this.path);
    } catch (e) {
      rmSync(tmp, { force: true });
      this.warnOnce(`display: cannot write ${this.path}: ${(e as Error).message}`);
      return false;
    }
    const now = this.clock();
    const changed = this.detectedAt !== null;
    const frame: DisplayFrame = {
      atMs: Math.round((now - this.startedAt) * 1000) / 1000,
      reason,
      width: plane.width,
      height: plane.height,
      blanked: plane.blanked,
      pages: this.pendingPages,
      latencyMs: changed ? Math.round((now - this.detectedAt!) * 1000) / 1000 : null,
    };
    this.figures.writeMs.add(now - t0);
    if (changed) {
      this.figures.latencyMs.add(now - this.detectedAt!);
      this.figures.pagesPerFrame.add(this.pendingPages);
    }
    if (this.frames.length === KEEP_FRAMES) this.frames.shift();
    this.frames.push(frame);
    this.counts.framesWritten++;
    this.fileKey = shownKey(plane);
    this.contentChanged = false;
    this.pendingPages = 0;
    this.detectedAt = null;
    this.lastWriteAt = now;
    return true;
  }

  private blackPng(width: number, height: number): Buffer {
    const key = `${width}x${height}`;
    let png = this.black.get(key);
    if (!png) {
      const image = new PNG({ width, height });
      for (let i = 3; i < image.data.length; i += 4) image.data[i] = 0xff;
      png = PNG.sync.write(image);
      this.black.clear();
      this.black.set(key, png);
    }
    return png;
  }

  private warnOnce(line: string): void {
    if (this.warned.has(line)) return;
    this.warned.add(line);
    this.warn(line);
  }
}
