/**
 * Live migration of a vfio-user device between two servers, with this process playing the VMM on
 * both ends (what QEMU's vfio migration code does with two QEMUs): the device's migration stream
 * goes from the source's MIG_DATA_READ to the destination's MIG_DATA_WRITE, and guest RAM from
 * the source client's memory to the destination's.
 *
 * Order: destination to RESUMING; guest RAM copied once and device DMA logged; source to
 * PRE_COPY (when both offer it) and pre-copy passes — each a read until a short read, forwarded
 * as it comes — while the guest keeps running (`onPass`), with the pages the device DMA-wrote
 * copied again after each pass; source to STOP_COPY (the downtime starts), the rest of the
 * stream, guest RAM copied again; destination to STOP (it checks and loads the stream, all or
 * nothing), `beforeResume` (re-wire interrupts), RUNNING (the downtime ends); source to STOP.
 *
 * This client has no view of the guest's own CPU writes (a real VMM has KVM's dirty log), so guest
 * RAM is copied whole again during the downtime; the DMA log covers the device's writes, which
 * the report counts.
 * @module
 */
import { MdevError } from '../../src/errors.js';
import type { VfioUserClient } from './client.js';
import { MIG_STATE_NAMES, MigState, MigrationFlag } from './protocol.js';

/** Options of {@link migrateDevice}. */
export interface MigrateOptions {
  /** Use PRE_COPY when the source offers it (default true). */
  preCopy?: boolean;
  /** Most pre-copy passes (default 4, the first, full one included). */
  maxPasses?: number;
  /** Pre-copy ends once a pass moved at most this many bytes (default 64 KiB). */
  convergedBytes?: number;
  /** Called after each pre-copy pass, the guest still running (pass number from 1). */
  onPass?: (pass: number) => void;
  /** Stream bytes per MIG_DATA_READ/WRITE (default: the smaller max_data_xfer_size of both sides). */
  chunkBytes?: number;
  /** Called once the destination has loaded the device, before it runs (the VMM re-wires interrupts here). */
  beforeResume?: () => void;
  /** Copy guest RAM between the clients' matching windows (default true). */
  copyRam?: boolean;
}

/** What {@link migrateDevice} did. */
export interface MigrationReport {
  /** Stream bytes of each pre-copy pass. */
  preCopyPasses: number[];
  /** Stream bytes moved while the source was stopped. */
  stopCopyBytes: number;
  /** All stream bytes. */
  streamBytes: number;
  /** Milliseconds from the source's stop to the destination running. */
  downtimeMs: number;
  /** Guest RAM pages the device DMA-wrote during the migration, as its DMA log reported them. */
  dmaDirtyPages: number;
  /** Guest RAM bytes copied. */
  ramBytesCopied: number;
}

const PAGE = 4096;

function bits(bitmap: Uint8Array): number[] {
  const pages: number[] = [];
  for (let i = 0; i < bitmap.length; i++) for (let b = 0; b < 8; b++) if (bitmap[i]! & (1 << b)) pages.push(i * 8 + b);
  return pages;
}

/**
 * Migrates the device behind `source` to the server behind `dest`. Both clients must be connected
 * with the same guest RAM windows added (`addGuestRam`), the destination's device in RUNNING. On
 * failure the error says which side failed; both are left where the failure found them (the
 * source can be set back to RUNNING; the destination stays in RESUMING with nothing loaded).
 */
export function migrateDevice(source: VfioUserClient, dest: VfioUserClient, options: MigrateOptions = {}): MigrationReport {
  const side = <T>(which: 'source' | 'destination', what: string, fn: () => T): T => {
    try {
      return fn();
    } catch (e) {
      const err = e as MdevError;
      throw Object.assign(new MdevError(err.code ?? 'EIO', `${which}: ${what}: ${err.message}`, `migration.${which}`), { cause: e });
    }
  };
  const flags = Number(side('source', 'MIGRATION', () => source.migrationFlags()));
  const destFlags = Number(side('destination', 'MIGRATION', () => dest.migrationFlags()));
  if (!(flags & MigrationFlag.STOP_COPY) || !(destFlags & MigrationFlag.STOP_COPY)) throw new MdevError('ENOTSUP', 'both sides must offer STOP_COPY', 'migration');
  const preCopy = (options.preCopy ?? true) && (flags & MigrationFlag.PRE_COPY) !== 0;
  const maxPasses = options.maxPasses ?? 4;
  const converged = options.convergedBytes ?? 64 * 1024;
  const chunk = options.chunkBytes ?? Math.min(source.serverCapabilities.maxDataXferSize, dest.serverCapabilities.maxDataXferSize, 1 << 20);
  const report: MigrationReport = { preCopyPasses: [], stopCopyBytes: 0, streamBytes: 0, downtimeMs: 0, dmaDirtyPages: 0, ramBytesCopied: 0 };

  // Guest RAM: the windows both VMMs have, by address.
  const pairs = (options.copyRam ?? true)
    ? source.guestRam().map((s) => {
        const d = dest.guestRam().find((w) => w.address === s.address && w.size === s.size);
        if (!d) throw new MdevError('EINVAL', `the destination has no guest RAM at 0x${s.address.toString(16)} (+0x${s.size.toString(16)})`, 'migration.destination');
        return { s, d };
      })
    : [];
  const copyAll = () => {
    for (const { s, d } of pairs) d.bytes.set(s.bytes);
    report.ramBytesCopied += pairs.reduce((n, p) => n + p.s.size, 0);
  };
  const logging = pairs.length > 0;
  const copyDirty = () => {
    for (const { s, d } of pairs) {
      const dirty = bits(side('source', 'DMA_LOGGING_REPORT', () => source.dmaLoggingReport(s.address, s.size, PAGE)));
      report.dmaDirtyPages += dirty.length;
      for (const p of dirty) d.bytes.set(s.bytes.subarray(p * PAGE, (p + 1) * PAGE), p * PAGE);
      report.ramBytesCopied += dirty.length * PAGE;
    }
  };
  /** One pass: reads until a short read, forwarding each chunk. */
  const pass = (): number => {
    let moved = 0;
    for (;;) {
      const data = side('source', 'MIG_DATA_READ', () => source.migDataRead(chunk));
      if (data.length > 0) side('destination', 'MIG_DATA_WRITE', () => dest.migDataWrite(data));
      moved += data.length;
      if (data.length < chunk) return moved;
    }
  };

  side('destination', 'to RESUMING', () => dest.setMigrationState(MigState.RESUMING));
  if (logging) side('source', 'DMA_LOGGING_START', () => source.dmaLoggingStart(PAGE, pairs.map(({ s }) => ({ iova: s.address, length: s.size }))));
  try {
    copyAll();
    if (preCopy) {
      side('source', 'to PRE_COPY', () => source.setMigrationState(MigState.PRE_COPY));
      for (let n = 1; n <= maxPasses; n++) {
        const moved = pass();
        report.preCopyPasses.push(moved);
        if (logging) copyDirty();
        options.onPass?.(n);
        if (moved <= converged && n > 1) break;
      }
    }
    const t0 = process.hrtime.bigint();
    side('source', 'to STOP_COPY', () => source.setMigrationState(MigState.STOP_COPY));
    report.stopCopyBytes = pass();
    if (logging) copyDirty();
    copyAll();
    side('destination', 'to STOP (load)', () => dest.setMigrationState(MigState.STOP));
    options.beforeResume?.();
    side('destination', 'to RUNNING', () => dest.setMigrationState(MigState.RUNNING));
    report.downtimeMs = Number(process.hrtime.bigint() - t0) / 1e6;
    side('source', 'to STOP', () => source.setMigrationState(MigState.STOP));
  } finally {
    if (logging && !source.closed && source.failed === null) {
      try {
        source.dmaLoggingStop();
      } catch {
        // The source is already in trouble; its error is the one that matters.
      }
    }
  }
  report.streamBytes = report.preCopyPasses.reduce((a, b) => a + b, 0) + report.stopCopyBytes;
  return report;
}

/** The name of a migration state value, for messages. */
export function migrationStateName(state: number): string {
  return MIG_STATE_NAMES[state] ?? `state ${state}`;
}
