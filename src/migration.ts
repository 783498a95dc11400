/**
 * Live-migration streams: how a device's state ({@link PciDevice.saveState}) travels as a byte
 * stream — vfio-user's MIG_DATA_READ/MIG_DATA_WRITE — with the RAM behind BARs (VRAM and other
 * mappable regions) sent first, page by page, while the guest keeps running, and afterwards only
 * the pages that changed. Hypervisor-neutral: the adapters move the bytes.
 *
 * What changed is found by a per-page hash scan (the native page scan of src/display.ts): the
 * guest writes mappable RAM through the VMM's mapping, which never traps, so nothing else can
 * tell. A scan reads every byte of the tracked RAM (≈ 0.15–0.3 s per GiB on the reference
 * machine, docs/architecture.md); the hash kept per page is that of the bytes actually sent, so a
 * page that changes and changes back is still resent. To catch what a hash cannot (a collision),
 * the END record carries a CRC-32 of each region's final content, which the receiver checks
 * before anything is loaded.
 *
 * Stream layout (little-endian). Every record is `u32 type · u32 length · payload · u32 CRC-32`
 * (the CRC covers type, length and payload):
 *
 * | type | record | payload |
 * |---|---|---|
 * | 1 | HEADER | magic "MDEVMIGR" · u16 stream version · u16 vendor · u16 device · u16 region count · per region: u8 BAR · 7 × u8 0 · u64 size |
 * | 2 | PAGES | u8 BAR · 7 × u8 0 · u64 offset · the bytes |
 * | 3 | ZERO | u8 BAR · 7 × u8 0 · u64 offset · u64 length (those bytes are zero) |
 * | 4 | DEVICE | a state image without `ram.barN` sections (src/state.ts) |
 * | 5 | END | u32 records before END · u32 0 · u64 bytes before END · u16 region count · 6 × u8 0 · per region: u8 BAR · 3 × u8 0 · u32 CRC-32 of its content |
 *
 * HEADER comes first, END last, exactly one DEVICE before END. A receiver stages everything and
 * changes the device only once END has checked out ({@link MigrationSink.finish}): a truncated,
 * corrupt or foreign stream is refused with the device untouched.
 * @module
 */
import { crc32 } from 'node:zlib';
import { MdevError } from './errors.js';
import { binding } from './native/binding.js';
import { DirtyBitmap } from './native/dirty-bitmap.js';
import type { PciDevice } from './pci/device.js';
import { decodeState, encodeState, peekStateIdentity, type StateIdentity, type StateSection } from './state.js';

const native = binding as unknown as { scanPages(bytes: Uint8Array, pageSize: number, hashes: BigUint64Array, dirty?: DirtyBitmap): number };

/** Stream format version written by {@link MigrationSource}. */
export const MIGRATION_STREAM_VERSION = 1;

/** Granularity of RAM tracking and of PAGES records. */
export const MIGRATION_PAGE_SIZE = 4096;

/** Record types of a migration stream. */
export const MigrationRecord = { HEADER: 1, PAGES: 2, ZERO: 3, DEVICE: 4, END: 5 } as const;

const RECORD_NAMES: Readonly<Record<number, string>> = { 1: 'HEADER', 2: 'PAGES', 3: 'ZERO', 4: 'DEVICE', 5: 'END' };
const MAGIC = Buffer.from('MDEVMIGR', 'latin1');
/** Type and length before the payload, CRC after it. */
const RECORD_HEAD = 8;
const RECORD_TAIL = 4;
/** Largest record a receiver accepts (a DEVICE image of a very large device; PAGES are far smaller). */
const MAX_RECORD = 256 << 20;
const REGION_ENTRY = 16;
const PAGES_HEAD = 16;

/** Version of the `ram.barN` sections of a state image (as PciDevice writes them). */
const RAM_SECTION_VERSION = 1;

const ZERO_PAGE = new Uint8Array(MIGRATION_PAGE_SIZE);
const ZERO_PAGE_HASH = (() => {
  const h = new BigUint64Array(1);
  native.scanPages(ZERO_PAGE, MIGRATION_PAGE_SIZE, h);
  return h[0]!;
})();

function record(type: number, payload: Uint8Array): Uint8Array {
  const out = Buffer.allocUnsafe(RECORD_HEAD + payload.length + RECORD_TAIL);
  out.writeUInt32LE(type, 0);
  out.writeUInt32LE(payload.length, 4);
  out.set(payload, RECORD_HEAD);
  out.writeUInt32LE(crc32(out.subarray(0, RECORD_HEAD + payload.length)), RECORD_HEAD + payload.length);
  return out;
}

function isZero(bytes: Uint8Array): boolean {
  for (let at = 0; at < bytes.length; at += MIGRATION_PAGE_SIZE) {
    const n = Math.min(MIGRATION_PAGE_SIZE, bytes.length - at);
    if (Buffer.compare(Buffer.from(bytes.buffer, bytes.byteOffset + at, n), Buffer.from(ZERO_PAGE.buffer, 0, n)) !== 0) return false;
  }
  return true;
}

function headerPayload(identity: StateIdentity, regions: readonly { index: number; size: number }[]): Uint8Array {
  const p = Buffer.alloc(16 + regions.length * REGION_ENTRY);
  MAGIC.copy(p, 0);
  p.writeUInt16LE(MIGRATION_STREAM_VERSION, 8);
  p.writeUInt16LE(identity.vendorId, 10);
  p.writeUInt16LE(identity.deviceId, 12);
  p.writeUInt16LE(regions.length, 14);
  regions.forEach((r, i) => {
    p.writeUInt8(r.index, 16 + i * REGION_ENTRY);
    p.writeBigUInt64LE(BigInt(r.size), 16 + i * REGION_ENTRY + 8);
  });
  return p;
}

function pagesHead(type: number, index: number, offset: number, extra: number): Buffer {
  const p = Buffer.alloc(PAGES_HEAD + (type === MigrationRecord.ZERO ? 8 : 0));
  p.writeUInt8(index, 0);
  p.writeBigUInt64LE(BigInt(offset), 8);
  if (type === MigrationRecord.ZERO) p.writeBigUInt64LE(BigInt(extra), 16);
  return p;
}

function endPayload(records: number, bytes: number, digests: readonly { index: number; crc: number }[]): Uint8Array {
  const p = Buffer.alloc(24 + digests.length * 8);
  p.writeUInt32LE(records, 0);
  p.writeBigUInt64LE(BigInt(bytes), 8);
  p.writeUInt16LE(digests.length, 16);
  digests.forEach((d, i) => {
    p.writeUInt8(d.index, 24 + i * 8);
    p.writeUInt32LE(d.crc, 24 + i * 8 + 4);
  });
  return p;
}

/** Counters of a {@link MigrationSource}. */
export interface MigrationSourceStats {
  /** Scans of the tracked RAM for changes (the first, full pass is not a scan). */
  scans: number;
  /** Time spent in those scans, milliseconds. */
  scanMs: number;
  /** Bytes of RAM read by the scans. */
  scannedBytes: number;
  /** Pages sent with their contents. */
  pagesSent: number;
  /** Pages sent as ZERO (no contents). */
  zeroPages: number;
  /** Stream bytes produced. */
  bytesOut: number;
  /** Time spent computing the END digests, milliseconds. */
  digestMs: number;
}

/** Options of a {@link MigrationSource}. */
export interface MigrationSourceOptions {
  /** Largest PAGES payload in bytes (default 1 MiB, a multiple of the page size). */
  maxRecordBytes?: number;
}

interface TrackedRam {
  readonly index: number;
  readonly bytes: Uint8Array;
  readonly pages: number;
  /** Hash of the bytes last sent, per page. */
  readonly sent: BigUint64Array;
  /** Pages to send (1) in the current pass. */
  readonly pending: Uint8Array;
  cursor: number;
}

/**
 * The sending side of a migration stream for one device. Its life: construct (every RAM page is
 * due: the first pass), {@link read} while the guest runs (pre-copy), {@link finish} once the
 * device is stopped, {@link read} until {@link done}.
 *
 * In pre-copy, each pass ends with a short read; the next read starts a new pass by scanning for
 * pages changed since they were sent. After {@link finish}, reads return the pages that changed,
 * the device image and END, then nothing.
 */
export class MigrationSource {
  /** Counters. */
  readonly stats: MigrationSourceStats = { scans: 0, scanMs: 0, scannedBytes: 0, pagesSent: 0, zeroPages: 0, bytesOut: 0, digestMs: 0 };
  private readonly rams: TrackedRam[];
  private readonly maxRecord: number;
  private readonly queue: Uint8Array[] = [];
  private queueOffset = 0;
  private queued = 0;
  private phase: 'precopy' | 'final' | 'done' = 'precopy';
  private rescanDue = false;
  private deviceImage: Uint8Array | null = null;
  private records = 0;
  private bytesBeforeEnd = 0;

  /**
   * Starts a stream for `device`: the HEADER is queued and every RAM page is due.
   * @param device the device (realized)
   * @param options record size
   */
  constructor(
    private readonly device: PciDevice,
    options: MigrationSourceOptions = {},
  ) {
    const max = options.maxRecordBytes ?? 1 << 20;
    if (!Number.isInteger(max) || max < MIGRATION_PAGE_SIZE || max % MIGRATION_PAGE_SIZE !== 0 || max > 64 << 20) {
      throw new MdevError('EINVAL', `must be a multiple of ${MIGRATION_PAGE_SIZE} up to 64 MiB`, 'maxRecordBytes');
    }
    this.maxRecord = max;
    this.rams = device.ramBars().map((r) => {
      const pages = Math.ceil(r.bytes.length / MIGRATION_PAGE_SIZE);
      return { index: r.index, bytes: r.bytes, pages, sent: new BigUint64Array(pages), pending: new Uint8Array(pages).fill(1), cursor: 0 };
    });
    const identity = { vendorId: device.config.get(0, 2), deviceId: device.config.get(2, 2) };
    this.push(MigrationRecord.HEADER, headerPayload(identity, this.rams.map((r) => ({ index: r.index, size: r.bytes.length }))));
  }

  /** True once END has been read. */
  get done(): boolean {
    return this.phase === 'done' && this.queued === 0;
  }

  /** True after {@link finish}. */
  get finishing(): boolean {
    return this.phase !== 'precopy';
  }

  /** RAM pages due in the current pass (not yet sent). */
  get pendingPages(): number {
    let n = 0;
    for (const r of this.rams) for (let p = r.cursor; p < r.pages; p++) n += r.pending[p]!;
    return n;
  }

  /**
   * Marks every RAM page whose contents differ from what was sent as due. Returns how many pages
   * that added.
   */
  rescan(): number {
    const t0 = process.hrtime.bigint();
    let added = 0;
    for (const r of this.rams) {
      const dirty = new DirtyBitmap(r.pages, MIGRATION_PAGE_SIZE);
      native.scanPages(r.bytes, MIGRATION_PAGE_SIZE, r.sent, dirty);
      for (let p = dirty.nextSet(0); p >= 0; p = dirty.nextSet(p + 1)) {
        if (!r.pending[p]) added++;
        r.pending[p] = 1;
      }
      r.cursor = 0;
      this.stats.scannedBytes += r.bytes.length;
    }
    this.stats.scans++;
    this.stats.scanMs += Number(process.hrtime.bigint() - t0) / 1e6;
    return added;
  }

  /**
   * The device has stopped: finds the pages changed since they were sent, captures the device
   * image (without RAM) and queues what remains, the image and END behind it.
   */
  finish(): void {
    if (this.phase !== 'precopy') return;
    this.rescan();
    this.deviceImage = this.device.saveState({ includeRam: false });
    this.phase = 'final';
  }

  /**
   * Up to `max` bytes of the stream. In pre-copy, fewer than `max` (possibly none) ends a pass;
   * the next call starts another. After {@link finish}, fewer than `max` means the stream is
   * complete.
   */
  read(max: number): Uint8Array {
    if (!Number.isInteger(max) || max < 0) throw new MdevError('EINVAL', `must be a non-negative integer, got ${max}`, 'size');
    if (this.phase === 'precopy' && this.rescanDue && this.queued === 0) {
      this.rescanDue = false;
      this.rescan();
    }
    while (this.queued < max && this.produce()) {
      // fill up to max
    }
    const n = Math.min(max, this.queued);
    const out = new Uint8Array(n);
    let at = 0;
    while (at < n) {
      const head = this.queue[0]!;
      const take = Math.min(n - at, head.length - this.queueOffset);
      out.set(head.subarray(this.queueOffset, this.queueOffset + take), at);
      at += take;
      this.queueOffset += take;
      if (this.queueOffset === head.length) {
        this.queue.shift();
        this.queueOffset = 0;
      }
    }
    this.queued -= n;
    if (n < max && this.phase === 'precopy') this.rescanDue = true;
    return out;
  }

  private push(type: number, payload: Uint8Array): void {
    const r = record(type, payload);
    this.queue.push(r);
    this.queued += r.length;
    this.records++;
    this.bytesBeforeEnd += r.length;
    this.stats.bytesOut += r.length;
  }

  /** Queues the next record; false when nothing more can be produced now. */
  private produce(): boolean {
    for (const r of this.rams) {
      while (r.cursor < r.pages && !r.pending[r.cursor]) r.cursor++;
      if (r.cursor === r.pages) continue;
      this.pagesRecord(r);
      return true;
    }
    if (this.phase !== 'final') return false;
    if (this.deviceImage !== null) {
      this.push(MigrationRecord.DEVICE, this.deviceImage);
      this.deviceImage = null;
      return true;
    }
    const t0 = process.hrtime.bigint();
    const digests = this.rams.map((r) => ({ index: r.index, crc: crc32(r.bytes) }));
    this.stats.digestMs += Number(process.hrtime.bigint() - t0) / 1e6;
    const end = record(MigrationRecord.END, endPayload(this.records, this.bytesBeforeEnd, digests));
    this.queue.push(end);
    this.queued += end.length;
    this.stats.bytesOut += end.length;
    this.phase = 'done';
    return true;
  }

  /** One PAGES or ZERO record from the due pages at the cursor. */
  private pagesRecord(r: TrackedRam): void {
    const first = r.cursor;
    const page = (p: number) => r.bytes.subarray(p * MIGRATION_PAGE_SIZE, Math.min(r.bytes.length, (p + 1) * MIGRATION_PAGE_SIZE));
    const zero = isZero(page(first));
    let last = first + 1;
    const limit = zero ? r.pages : Math.min(r.pages, first + this.maxRecord / MIGRATION_PAGE_SIZE);
    while (last < limit && r.pending[last] && isZero(page(last)) === zero) last++;
    const offset = first * MIGRATION_PAGE_SIZE;
    const end = Math.min(r.bytes.length, last * MIGRATION_PAGE_SIZE);
    r.pending.fill(0, first, last);
    r.cursor = last;
    if (zero) {
      r.sent.fill(ZERO_PAGE_HASH, first, last);
      this.stats.zeroPages += last - first;
      this.push(MigrationRecord.ZERO, pagesHead(MigrationRecord.ZERO, r.index, offset, end - offset));
      return;
    }
    // The record is built in place: one copy of the pages, straight from the region.
    const length = PAGES_HEAD + end - offset;
    const rec = Buffer.allocUnsafe(RECORD_HEAD + length + RECORD_TAIL);
    rec.writeUInt32LE(MigrationRecord.PAGES, 0);
    rec.writeUInt32LE(length, 4);
    rec.set(pagesHead(MigrationRecord.PAGES, r.index, offset, 0), RECORD_HEAD);
    const data = rec.subarray(RECORD_HEAD + PAGES_HEAD, RECORD_HEAD + length);
    data.set(r.bytes.subarray(offset, end));
    // What the receiver will have is what was copied: remember the hash of exactly these bytes.
    native.scanPages(data, MIGRATION_PAGE_SIZE, r.sent.subarray(first, last));
    rec.writeUInt32LE(crc32(rec.subarray(0, RECORD_HEAD + length)), RECORD_HEAD + length);
    this.stats.pagesSent += last - first;
    this.queue.push(rec);
    this.queued += rec.length;
    this.records++;
    this.bytesBeforeEnd += rec.length;
    this.stats.bytesOut += rec.length;
  }
}

/** What a complete stream decodes to. */
export interface DecodedMigrationStream {
  /** The device the stream is for. */
  identity: StateIdentity;
  /** The device image without RAM. */
  deviceImage: Uint8Array;
  /** RAM by BAR index. */
  ram: Map<number, Uint8Array>;
}

/** Options of a {@link MigrationStreamDecoder}. */
export interface MigrationStreamDecoderOptions {
  /** The identity the stream must carry (checked at HEADER). */
  expect?: StateIdentity;
  /** The RAM regions (BAR index and size) the stream must carry, exactly (checked at HEADER). */
  regions?: readonly { index: number; size: number }[];
}

/**
 * Parses a migration stream as it arrives, staging RAM in buffers of its own. Errors name the
 * record at fault; after one, the decoder refuses everything with the same error.
 */
export class MigrationStreamDecoder {
  /** Stream bytes accepted so far. */
  bytesIn = 0;
  private pending: Buffer = Buffer.alloc(0);
  private identity: StateIdentity | null = null;
  private readonly ram = new Map<number, Uint8Array>();
  private deviceImage: Uint8Array | null = null;
  private records = 0;
  private recordBytes = 0;
  private ended = false;
  private failure: MdevError | null = null;

  /**
   * Creates a decoder.
   * @param options what the stream must be for
   */
  constructor(private readonly options: MigrationStreamDecoderOptions = {}) {}

  /** The error that stopped the decoder, or null. */
  get error(): MdevError | null {
    return this.failure;
  }

  /** Consumes the next bytes of the stream (any split). */
  write(chunk: Uint8Array): void {
    if (this.failure) throw new MdevError(this.failure.code, `the stream was already refused: ${this.failure.message}`, this.failure.field);
    try {
      this.bytesIn += chunk.length;
      this.pending = this.pending.length === 0 ? Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength) : Buffer.concat([this.pending, chunk]);
      let at = 0;
      while (this.pending.length - at >= RECORD_HEAD) {
        const type = this.pending.readUInt32LE(at);
        const length = this.pending.readUInt32LE(at + 4);
        const field = `stream.records[${this.records}]`;
        if (length > MAX_RECORD) throw new MdevError('EINVAL', `record of ${length} bytes (type ${type}) exceeds ${MAX_RECORD}`, field);
        if (this.pending.length - at < RECORD_HEAD + length + RECORD_TAIL) break;
        const whole = this.pending.subarray(at, at + RECORD_HEAD + length);
        if (crc32(whole) !== this.pending.readUInt32LE(at + RECORD_HEAD + length)) {
          throw new MdevError('EBADMSG', `${RECORD_NAMES[type] ?? `type ${type}`} record checksum mismatch (corrupted stream)`, field);
        }
        this.take(type, whole.subarray(RECORD_HEAD), field);
        this.records++;
        this.recordBytes += RECORD_HEAD + length + RECORD_TAIL;
        at += RECORD_HEAD + length + RECORD_TAIL;
      }
      // Keep only the incomplete tail (copied: the caller may reuse its chunk).
      this.pending = Buffer.from(this.pending.subarray(at));
    } catch (e) {
      this.failure = e instanceof MdevError ? e : new MdevError('EINVAL', (e as Error).message, 'stream');
      this.pending = Buffer.alloc(0);
      throw this.failure;
    }
  }

  private take(type: number, p: Buffer, field: string): void {
    if (this.ended) throw new MdevError('EINVAL', 'data after the END record', field);
    if (this.identity === null && type !== MigrationRecord.HEADER) throw new MdevError('EINVAL', `the stream starts with a ${RECORD_NAMES[type] ?? `type ${type}`} record, not HEADER (not a migration stream)`, field);
    switch (type) {
      case MigrationRecord.HEADER:
        return this.header(p, field);
      case MigrationRecord.PAGES:
      case MigrationRecord.ZERO: {
        if (p.length < PAGES_HEAD + (type === MigrationRecord.ZERO ? 8 : 0)) throw new MdevError('EINVAL', 'short page record', field);
        const index = p.readUInt8(0);
        const offset = p.readBigUInt64LE(8);
        const ram = this.ram.get(index);
        if (!ram) throw new MdevError('EINVAL', `BAR${index} is not a RAM region of this stream`, `${field}.bar`);
        const length = type === MigrationRecord.ZERO ? p.readBigUInt64LE(16) : BigInt(p.length - PAGES_HEAD);
        if (offset + length > BigInt(ram.length)) throw new MdevError('EINVAL', `[0x${offset.toString(16)}, +0x${length.toString(16)}) runs past BAR${index}'s ${ram.length} bytes`, `${field}.offset`);
        if (type === MigrationRecord.ZERO) ram.fill(0, Number(offset), Number(offset + length));
        else ram.set(p.subarray(PAGES_HEAD), Number(offset));
        return;
      }
      case MigrationRecord.DEVICE:
        if (this.deviceImage !== null) throw new MdevError('EINVAL', 'a second DEVICE record', field);
        this.deviceImage = new Uint8Array(p);
        return;
      case MigrationRecord.END:
        return this.end(p, field);
      default:
        throw new MdevError('EINVAL', `unknown record type ${type}`, field);
    }
  }

  private header(p: Buffer, field: string): void {
    if (this.identity !== null) throw new MdevError('EINVAL', 'a second HEADER record', field);
    if (p.length < 16 || !p.subarray(0, 8).equals(MAGIC)) throw new MdevError('EINVAL', 'not a migration stream (bad magic)', field);
    const version = p.readUInt16LE(8);
    if (version !== MIGRATION_STREAM_VERSION) throw new MdevError('ENOTSUP', `migration stream version ${version}, this build reads ${MIGRATION_STREAM_VERSION}`, `${field}.version`);
    const identity = { vendorId: p.readUInt16LE(10), deviceId: p.readUInt16LE(12) };
    const expect = this.options.expect;
    if (expect && (expect.vendorId !== identity.vendorId || expect.deviceId !== identity.deviceId)) {
      throw new MdevError('EINVAL', `the stream is for ${hex4(identity.vendorId)}:${hex4(identity.deviceId)}, the device is ${hex4(expect.vendorId)}:${hex4(expect.deviceId)}`, `${field}.identity`);
    }
    const count = p.readUInt16LE(14);
    if (p.length !== 16 + count * REGION_ENTRY) throw new MdevError('EINVAL', `${count} regions do not match ${p.length} bytes`, `${field}.regions`);
    const regions: { index: number; size: number }[] = [];
    for (let i = 0; i < count; i++) {
      const size = p.readBigUInt64LE(16 + i * REGION_ENTRY + 8);
      if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new MdevError('EINVAL', 'region size too large', `${field}.regions[${i}].size`);
      regions.push({ index: p.readUInt8(16 + i * REGION_ENTRY), size: Number(size) });
    }
    const want = this.options.regions;
    if (want) {
      const describe = (list: readonly { index: number; size: number }[]) => list.map((r) => `BAR${r.index}:${r.size}`).join(', ') || 'none';
      const same = want.length === regions.length && want.every((w) => regions.some((r) => r.index === w.index && r.size === w.size));
      if (!same) throw new MdevError('EINVAL', `RAM regions ${describe(regions)} do not match the device's ${describe(want)}`, `${field}.regions`);
    }
    for (const r of regions) {
      if (this.ram.has(r.index)) throw new MdevError('EINVAL', `BAR${r.index} listed twice`, `${field}.regions`);
      this.ram.set(r.index, new Uint8Array(r.size));
    }
    this.identity = identity;
  }

  private end(p: Buffer, field: string): void {
    if (p.length < 24) throw new MdevError('EINVAL', 'short END record', field);
    const records = p.readUInt32LE(0);
    const bytes = p.readBigUInt64LE(8);
    if (records !== this.records || bytes !== BigInt(this.recordBytes)) {
      throw new MdevError('EINVAL', `END counts ${records} records and ${bytes} bytes, ${this.records} and ${this.recordBytes} arrived (records lost)`, field);
    }
    if (this.deviceImage === null) throw new MdevError('EINVAL', 'END without a DEVICE record', field);
    const n = p.readUInt16LE(16);
    if (p.length !== 24 + n * 8 || n !== this.ram.size) throw new MdevError('EINVAL', `END has ${n} region digests for ${this.ram.size} regions`, field);
    for (let i = 0; i < n; i++) {
      const index = p.readUInt8(24 + i * 8);
      const crc = p.readUInt32LE(24 + i * 8 + 4);
      const ram = this.ram.get(index);
      if (!ram) throw new MdevError('EINVAL', `digest for BAR${index}, which the stream does not carry`, field);
      if (crc32(ram) !== crc) throw new MdevError('EBADMSG', `BAR${index} as received differs from the source's final contents (a change was not sent)`, `${field}.bar${index}`);
    }
    this.ended = true;
  }

  /** True once a valid END has been taken. */
  get complete(): boolean {
    return this.ended;
  }

  /**
   * The decoded stream.
   * @throws EINVAL when END has not arrived (a truncated stream), naming how much did
   */
  result(): DecodedMigrationStream {
    if (this.failure) throw new MdevError(this.failure.code, `the stream was refused: ${this.failure.message}`, this.failure.field);
    if (!this.ended) {
      const partial = this.pending.length > 0 ? ` and ${this.pending.length} bytes of an incomplete record` : '';
      throw new MdevError('EINVAL', `the stream ends after ${this.bytesIn} bytes (${this.records} records${partial}) without its END record: truncated`, 'stream');
    }
    return { identity: this.identity!, deviceImage: this.deviceImage!, ram: this.ram };
  }
}

/**
 * The receiving side of a migration stream for one device: {@link write} stages, {@link finish}
 * checks END and loads everything into the device at once. Nothing reaches the device before
 * {@link finish}, and a refused stream leaves it as it was.
 */
export class MigrationSink {
  private decoder: MigrationStreamDecoder;

  /**
   * Prepares to receive a stream for `device`.
   * @param device the device (realized); the stream must be for the same kind of device
   */
  constructor(private readonly device: PciDevice) {
    this.decoder = this.fresh();
  }

  private fresh(): MigrationStreamDecoder {
    const d = this.device;
    return new MigrationStreamDecoder({ expect: { vendorId: d.config.get(0, 2), deviceId: d.config.get(2, 2) }, regions: d.ramBars().map((r) => ({ index: r.index, size: r.bytes.length })) });
  }

  /** Stream bytes received. */
  get bytesIn(): number {
    return this.decoder.bytesIn;
  }

  /** Takes the next bytes of the stream. */
  write(chunk: Uint8Array): void {
    this.decoder.write(chunk);
  }

  /**
   * Checks that the stream is complete and loads it: config space, registers, interrupts, RAM and
   * device sections, all or nothing ({@link PciDevice.restoreState}).
   */
  finish(): void {
    const r = this.decoder.result();
    this.device.restoreState(r.deviceImage, { ram: r.ram });
  }

  /** Drops everything received; the next byte starts a new stream. */
  reset(): void {
    this.decoder = this.fresh();
  }
}

/**
 * A complete migration stream from a state image (with its RAM sections): how an image saved on
 * one path (`mdevkit serve --save`, Xen) is fed to a vfio-user destination in RESUMING.
 */
export function migrationStreamFromImage(image: Uint8Array): Uint8Array {
  const identity = peekStateIdentity(image);
  const sections = decodeState(image, identity);
  const rest: StateSection[] = [];
  const rams: { index: number; bytes: Uint8Array }[] = [];
  for (const s of sections.values()) {
    const m = /^ram\.bar([0-5])$/.exec(s.name);
    if (m) rams.push({ index: Number(m[1]), bytes: s.data });
    else rest.push(s);
  }
  const parts: Uint8Array[] = [];
  let records = 0;
  let bytes = 0;
  const add = (type: number, payload: Uint8Array) => {
    const r = record(type, payload);
    parts.push(r);
    records++;
    bytes += r.length;
  };
  add(MigrationRecord.HEADER, headerPayload(identity, rams.map((r) => ({ index: r.index, size: r.bytes.length }))));
  for (const r of rams) {
    for (let off = 0; off < r.bytes.length; off += 1 << 20) {
      const chunk = r.bytes.subarray(off, Math.min(r.bytes.length, off + (1 << 20)));
      if (isZero(chunk)) add(MigrationRecord.ZERO, pagesHead(MigrationRecord.ZERO, r.index, off, chunk.length));
      else {
        const payload = new Uint8Array(PAGES_HEAD + chunk.length);
        payload.set(pagesHead(MigrationRecord.PAGES, r.index, off, 0));
        payload.set(chunk, PAGES_HEAD);
        add(MigrationRecord.PAGES, payload);
      }
    }
  }
  add(MigrationRecord.DEVICE, encodeState(identity, rest));
  parts.push(record(MigrationRecord.END, endPayload(records, bytes, rams.map((r) => ({ index: r.index, crc: crc32(r.bytes) })))));
  return Buffer.concat(parts);
}

/**
 * The state image (RAM sections included) a complete migration stream carries: how a vfio-user
 * source's stream is restored on another path, or written to a file.
 */
export function imageFromMigrationStream(stream: Uint8Array): Uint8Array {
  const d = new MigrationStreamDecoder();
  d.write(stream);
  const r = d.result();
  const sections = [...decodeState(r.deviceImage, r.identity).values()];
  const ram = [...r.ram].sort((a, b) => a[0] - b[0]).map(([index, bytes]): StateSection => ({ name: `ram.bar${index}`, version: RAM_SECTION_VERSION, data: bytes }));
  // Where PciDevice.saveState puts them: after the model's sections, before the device's own.
  const extras = sections.findIndex((s) => s.name.startsWith('x.'));
  sections.splice(extras < 0 ? sections.length : extras, 0, ...ram);
  return encodeState(r.identity, sections);
}

function hex4(v: number): string {
  return v.toString(16).padStart(4, '0');
}
