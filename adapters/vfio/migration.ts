/**
 * VFIO migration v2 over vfio-user: the device-state machine of Linux's `<linux/vfio.h>`
 * (`enum vfio_device_mig_state`) as `DEVICE_FEATURE` MIGRATION / MIG_DEVICE_STATE, and the data
 * stream as MIG_DATA_READ / MIG_DATA_WRITE (QEMU's docs/interop/vfio-user.rst).
 *
 * The arcs are the kernel's: {@link migrationStep} is `vfio_mig_get_next_state()`'s table
 * (drivers/vfio/vfio_main.c), with its rule for optional states — a step into a state the device
 * does not support is skipped over to the next step towards the target. A requested state the
 * device does not support, ERROR, or a blocked arc (STOP_COPY → PRE_COPY/PRE_COPY_P2P) is EINVAL,
 * as in the kernel. Each step is one action:
 *
 * | arc | action here |
 * |---|---|
 * | RUNNING → STOP, RUNNING_P2P → STOP | BARs leave the region table: accesses fail with EINVAL (config space stays served) |
 * | STOP → RUNNING, STOP → RUNNING_P2P | BARs served again |
 * | RUNNING ⇄ RUNNING_P2P, PRE_COPY ⇄ PRE_COPY_P2P | P2P quiescence on/off: no device DMA through VMM messages (fd-less windows, where a peer device's BAR appears) |
 * | RUNNING → PRE_COPY, RUNNING_P2P → PRE_COPY_P2P | a saving session starts: mappable RAM (VRAM) is due, the guest keeps running |
 * | PRE_COPY → RUNNING, PRE_COPY_P2P → RUNNING_P2P | the saving session ends (its data is dropped) |
 * | PRE_COPY(_P2P) → STOP_COPY | BARs leave the table; the session's final pass: changed pages, the device image, END |
 * | STOP → STOP_COPY | a saving session in one final pass |
 * | STOP_COPY → STOP | the saving session ends |
 * | STOP → RESUMING | a resuming session: MIG_DATA_WRITE stages the stream |
 * | RESUMING → STOP | the stream is checked and loaded, all or nothing; if it is refused the step fails with the stream's errno, the device keeps the state it had and stays in RESUMING with the data dropped (write a new stream, or DEVICE_RESET) |
 *
 * ERROR is entered only when a load failed and the previous state could not be put back
 * ({@link DeviceStateLostError}); only DEVICE_RESET (or an FLR) leaves it. A device reset from any
 * state returns to RUNNING and ends every session, as does the client's disconnect (the device's
 * own state is kept).
 * @module
 */
import { MdevError, checkInt } from '../../src/errors.js';
import { MigrationSink, MigrationSource } from '../../src/migration.js';
import { DeviceStateLostError, type PciDevice } from '../../src/pci/device.js';
import { setBarRegion, type NativeRegionTable } from '../../src/region-table.js';
import { Feature, Layout, MIG_STATE_NAMES, MigState, MigrationFlag } from './protocol.js';

const { ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P } = MigState;

/**
 * `vfio_from_fsm_table[cur][new]` of drivers/vfio/vfio_main.c: the next state on the way from
 * `cur` to `new` when every optional state is supported. Rows and columns are state values.
 */
const FSM: readonly (readonly number[])[] = (() => {
  const t: number[][] = Array.from({ length: 8 }, () => new Array<number>(8).fill(ERROR));
  const row = (cur: number, next: Record<number, number>) => {
    for (const [to, via] of Object.entries(next)) t[cur]![Number(to)] = via;
  };
  row(STOP, { [STOP]: STOP, [RUNNING]: RUNNING_P2P, [PRE_COPY]: RUNNING_P2P, [PRE_COPY_P2P]: RUNNING_P2P, [STOP_COPY]: STOP_COPY, [RESUMING]: RESUMING, [RUNNING_P2P]: RUNNING_P2P, [ERROR]: ERROR });
  row(RUNNING, { [STOP]: RUNNING_P2P, [RUNNING]: RUNNING, [PRE_COPY]: PRE_COPY, [PRE_COPY_P2P]: RUNNING_P2P, [STOP_COPY]: RUNNING_P2P, [RESUMING]: RUNNING_P2P, [RUNNING_P2P]: RUNNING_P2P, [ERROR]: ERROR });
  row(PRE_COPY, { [STOP]: RUNNING, [RUNNING]: RUNNING, [PRE_COPY]: PRE_COPY, [PRE_COPY_P2P]: PRE_COPY_P2P, [STOP_COPY]: PRE_COPY_P2P, [RESUMING]: RUNNING, [RUNNING_P2P]: RUNNING, [ERROR]: ERROR });
  row(PRE_COPY_P2P, { [STOP]: RUNNING_P2P, [RUNNING]: RUNNING_P2P, [PRE_COPY]: PRE_COPY, [PRE_COPY_P2P]: PRE_COPY_P2P, [STOP_COPY]: STOP_COPY, [RESUMING]: RUNNING_P2P, [RUNNING_P2P]: RUNNING_P2P, [ERROR]: ERROR });
  row(STOP_COPY, { [STOP]: STOP, [RUNNING]: STOP, [PRE_COPY]: ERROR, [PRE_COPY_P2P]: ERROR, [STOP_COPY]: STOP_COPY, [RESUMING]: STOP, [RUNNING_P2P]: STOP, [ERROR]: ERROR });
  row(RESUMING, { [STOP]: STOP, [RUNNING]: STOP, [PRE_COPY]: STOP, [PRE_COPY_P2P]: STOP, [STOP_COPY]: STOP, [RESUMING]: RESUMING, [RUNNING_P2P]: STOP, [ERROR]: ERROR });
  row(RUNNING_P2P, { [STOP]: STOP, [RUNNING]: RUNNING, [PRE_COPY]: RUNNING, [PRE_COPY_P2P]: PRE_COPY_P2P, [STOP_COPY]: STOP, [RESUMING]: STOP, [RUNNING_P2P]: RUNNING_P2P, [ERROR]: ERROR });
  return t;
})();

/** `state_flags_table` of vfio_main.c: the MIGRATION flags a state needs (ERROR: never requestable). */
const STATE_FLAGS: readonly number[] = [
  /* ERROR */ 0xffffffff,
  /* STOP */ MigrationFlag.STOP_COPY,
  /* RUNNING */ MigrationFlag.STOP_COPY,
  /* STOP_COPY */ MigrationFlag.STOP_COPY,
  /* RESUMING */ MigrationFlag.STOP_COPY,
  /* RUNNING_P2P */ MigrationFlag.STOP_COPY | MigrationFlag.P2P,
  /* PRE_COPY */ MigrationFlag.STOP_COPY | MigrationFlag.PRE_COPY,
  /* PRE_COPY_P2P */ MigrationFlag.STOP_COPY | MigrationFlag.P2P | MigrationFlag.PRE_COPY,
];

function supported(state: number, flags: number): boolean {
  return state >= 0 && state < STATE_FLAGS.length && ((STATE_FLAGS[state]! & flags) >>> 0) === STATE_FLAGS[state];
}

function name(state: number): string {
  return MIG_STATE_NAMES[state] ?? `state ${state}`;
}

/**
 * The next step from `cur` towards `target` for a device with MIGRATION `flags`
 * (`vfio_mig_get_next_state()`): steps into unsupported optional states are skipped.
 * @throws EINVAL naming `device_state` when `target` is not a state the device supports (ERROR
 *   never is), when `cur` is ERROR, or when the arc is blocked (STOP_COPY → PRE_COPY, PRE_COPY_P2P)
 */
export function migrationStep(cur: number, target: number, flags: number): number {
  if (!supported(cur, flags)) throw new MdevError('EINVAL', `no arc leaves ${name(cur)}${cur === ERROR ? ' (only a device reset does)' : ''}`, 'device_state');
  if (!supported(target, flags)) throw new MdevError('EINVAL', `${name(target)} ${target === ERROR ? 'cannot be requested' : 'is not a state this device supports'}`, 'device_state');
  let next = FSM[cur]![target]!;
  // Skip steps into states the device does not support; ERROR (a blocked arc) ends the walk.
  while (next !== ERROR && !supported(next, flags)) next = FSM[next]![target]!;
  if (next === ERROR) throw new MdevError('EINVAL', `${name(cur)} → ${name(target)} is not allowed`, 'device_state');
  return next;
}

/** Every state a SET of `target` passes through from `cur`, `target` last (empty when equal). */
export function migrationPath(cur: number, target: number, flags: number): number[] {
  const path: number[] = [];
  for (let at = cur; at !== target; ) {
    at = migrationStep(at, target, flags);
    path.push(at);
    if (path.length > 8) throw new MdevError('EIO', 'migration path does not converge', 'device_state');
  }
  if (path.length === 0) migrationStep(cur, target, flags); // validates target even when equal
  return path;
}

/** States in which the device does not run: BARs are not served. */
function stopped(state: number): boolean {
  return state === STOP || state === STOP_COPY || state === RESUMING || state === ERROR;
}

/** Counters of a session's migration. */
export interface VfioMigrationStats {
  /** Steps taken (each arc of a combination counts). */
  arcs: number;
  /** Stream bytes read by MIG_DATA_READ. */
  bytesRead: number;
  /** Stream bytes written by MIG_DATA_WRITE. */
  bytesWritten: number;
  /** Streams loaded into the device. */
  loads: number;
  /** Streams refused. */
  refused: number;
}

/** Options of a {@link VfioMigration}. */
export interface VfioMigrationOptions {
  /** MIGRATION flags offered: STOP_COPY is required; P2P and PRE_COPY are optional. */
  flags: number;
  /** Largest MIG_DATA_READ/WRITE `size` (the server's max_data_xfer_size). */
  maxDataXferSize: number;
  /** Log lines (state changes). */
  log: (line: string) => void;
  /** Problems the person running the server must see (refused streams, ERROR). */
  warn: (line: string) => void;
}

/** What a DEVICE_FEATURE handler answers: the reply payload. */
export type FeatureReplyPayload = Buffer;

/** The migration state and data sessions of one vfio-user connection. */
export class VfioMigration {
  /** Current state (a {@link MigState} value). */
  state: number = RUNNING;
  /** Counters. */
  readonly stats: VfioMigrationStats = { arcs: 0, bytesRead: 0, bytesWritten: 0, loads: 0, refused: 0 };
  private source: MigrationSource | null = null;
  private sink: MigrationSink | null = null;
  private barsServed = true;
  private closed = false;
  private readonly onReset = (): void => this.toRunning('device reset');

  /**
   * Starts in RUNNING.
   * @param device the device
   * @param regionTable its dispatch table (BARs are removed from it while the device is stopped)
   * @param options offered flags and limits
   */
  constructor(
    private readonly device: PciDevice,
    private readonly regionTable: NativeRegionTable,
    readonly options: VfioMigrationOptions,
  ) {
    const f = options.flags;
    if (!Number.isInteger(f) || (f & MigrationFlag.STOP_COPY) === 0 || (f & ~(MigrationFlag.STOP_COPY | MigrationFlag.P2P | MigrationFlag.PRE_COPY)) !== 0) {
      throw new MdevError('EINVAL', 'must include STOP_COPY and only STOP_COPY, P2P, PRE_COPY', 'migration.flags');
    }
    device.on('reset', this.onReset);
  }

  /** True in RUNNING_P2P and PRE_COPY_P2P: the device starts no DMA that could reach a peer. */
  get p2pQuiesced(): boolean {
    return this.state === RUNNING_P2P || this.state === PRE_COPY_P2P;
  }

  /** The saving session, while there is one (for statistics). */
  get saving(): MigrationSource | null {
    return this.source;
  }

  /**
   * DEVICE_FEATURE for MIGRATION (GET: the flags) and MIG_DEVICE_STATE (GET: the state; SET: a
   * transition, complete when this returns). Like the kernel's `vfio_check_feature()`: an
   * unsupported GET/SET is EINVAL, PROBE answers without doing anything, `argsz` must cover the
   * feature's data.
   */
  feature(index: number, flags: number, argsz: number, p: Buffer): FeatureReplyPayload {
    const L = Layout.feature;
    const get = (flags & Feature.GET) !== 0;
    const set = (flags & Feature.SET) !== 0;
    const probe = (flags & Feature.PROBE) !== 0;
    const data = p.subarray(L.data);
    if (index === Feature.MIGRATION) {
      if (set) throw new MdevError('EINVAL', 'MIGRATION supports GET only', 'feature.flags');
      if (probe) return Buffer.from(p);
      if (argsz < L.data + Layout.migration.sizeof) throw new MdevError('EINVAL', `argsz ${argsz} is below ${L.data + Layout.migration.sizeof}`, 'feature.argsz');
      const out = Buffer.alloc(L.data + Layout.migration.sizeof);
      p.copy(out, 0, 0, L.data);
      out.writeUInt32LE(out.length, L.argsz);
      out.writeBigUInt64LE(BigInt(this.options.flags), L.data + Layout.migration.flags);
      return out;
    }
    // MIG_DEVICE_STATE: GET and SET.
    if (probe) return Buffer.from(p);
    const M = Layout.migState;
    if (argsz < L.data + M.sizeof) throw new MdevError('EINVAL', `argsz ${argsz} is below ${L.data + M.sizeof}`, 'feature.argsz');
    if (get) {
      const out = Buffer.alloc(L.data + M.sizeof);
      p.copy(out, 0, 0, L.data);
      out.writeUInt32LE(out.length, L.argsz);
      out.writeUInt32LE(this.state, L.data + M.deviceState);
      out.writeInt32LE(-1, L.data + M.dataFd); // as the kernel's GET: there is no data fd
      return out;
    }
    if (data.length < M.sizeof) throw new MdevError('EINVAL', `MIG_DEVICE_STATE data is ${data.length} bytes, needs ${M.sizeof}`, 'feature.data');
    this.setState(data.readUInt32LE(M.deviceState));
    return Buffer.from(p);
  }

  /**
   * Moves to `target` through the kernel's arcs, one action per step. On a failed step the state
   * is the last one reached (or ERROR) and the error is thrown.
   */
  setState(target: number): void {
    checkInt('device_state', target, 0, 0xffffffff);
    if (this.closed) throw new MdevError('ENOTCONN', 'the connection is closed', 'device_state');
    const from = this.state;
    const path = migrationPath(from, target, this.options.flags);
    for (const next of path) {
      this.step(this.state, next);
      this.state = next;
      this.stats.arcs++;
      this.serveBars(!stopped(next));
    }
    if (path.length > 0) this.options.log(`migration: ${name(from)} → ${path.map(name).join(' → ')}`);
  }

  private step(cur: number, next: number): void {
    if ((next === PRE_COPY && cur === RUNNING) || (next === PRE_COPY_P2P && cur === RUNNING_P2P)) {
      this.source = new MigrationSource(this.device);
    } else if ((cur === PRE_COPY && next === RUNNING) || (cur === PRE_COPY_P2P && next === RUNNING_P2P) || (cur === STOP_COPY && next === STOP)) {
      this.source = null;
    } else if (next === STOP_COPY) {
      if (cur === STOP) this.source = new MigrationSource(this.device);
      this.source!.finish();
    } else if (cur === STOP && next === RESUMING) {
      this.sink = new MigrationSink(this.device);
    } else if (cur === RESUMING && next === STOP) {
      this.load();
    }
    // RUNNING ⇄ RUNNING_P2P, PRE_COPY ⇄ PRE_COPY_P2P, RUNNING(_P2P) ⇄ STOP: the state alone
    // decides quiescence and whether BARs are served.
  }

  private load(): void {
    const sink = this.sink!;
    try {
      sink.finish();
    } catch (e) {
      this.stats.refused++;
      if (e instanceof DeviceStateLostError) {
        this.sink = null;
        this.state = ERROR;
        this.serveBars(false);
        this.options.warn(`migration: loading the stream failed and the device could not be put back (ERROR until a device reset): ${e.message}`);
        throw e;
      }
      sink.reset();
      this.options.warn(`migration: stream refused, the device keeps its state and stays in RESUMING: ${(e as Error).message}`);
      throw e;
    }
    this.sink = null;
    this.stats.loads++;
  }

  /** MIG_DATA_READ: up to `size` bytes of the saving session's stream (PRE_COPY, PRE_COPY_P2P, STOP_COPY). */
  dataRead(p: Buffer): Buffer {
    const L = Layout.migData;
    if (p.length !== L.data) throw new MdevError('EINVAL', `MIG_DATA_READ payload has ${p.length} bytes, expected ${L.data}`, 'mig_data');
    const argsz = p.readUInt32LE(L.argsz);
    const size = p.readUInt32LE(L.size);
    if (this.source === null || (this.state !== PRE_COPY && this.state !== PRE_COPY_P2P && this.state !== STOP_COPY)) {
      throw new MdevError('EINVAL', `migration data is read in PRE_COPY or STOP_COPY; the device is in ${name(this.state)}`, 'command');
    }
    if (size > this.options.maxDataXferSize) throw new MdevError('E2BIG', `${size} bytes exceed max_data_xfer_size ${this.options.maxDataXferSize}`, 'mig_data.size');
    if (argsz < L.data + size) throw new MdevError('EINVAL', `argsz ${argsz} cannot hold ${size} bytes of data`, 'mig_data.argsz');
    const data = this.source.read(size);
    this.stats.bytesRead += data.length;
    const out = Buffer.alloc(L.data + data.length);
    out.writeUInt32LE(out.length, L.argsz);
    out.writeUInt32LE(data.length, L.size);
    out.set(data, L.data);
    return out;
  }

  /** MIG_DATA_WRITE: the next bytes of the stream being resumed (RESUMING). */
  dataWrite(p: Buffer): void {
    const L = Layout.migData;
    if (p.length < L.data) throw new MdevError('EINVAL', `MIG_DATA_WRITE payload has ${p.length} bytes, needs ${L.data}`, 'mig_data');
    const size = p.readUInt32LE(L.size);
    if (p.readUInt32LE(L.argsz) < L.data) throw new MdevError('EINVAL', `argsz must be at least ${L.data}`, 'mig_data.argsz');
    if (size !== p.length - L.data) throw new MdevError('EINVAL', `size ${size} does not match ${p.length - L.data} bytes of data`, 'mig_data.size');
    if (size > this.options.maxDataXferSize) throw new MdevError('E2BIG', `${size} bytes exceed max_data_xfer_size ${this.options.maxDataXferSize}`, 'mig_data.size');
    if (this.sink === null || this.state !== RESUMING) throw new MdevError('EINVAL', `migration data is written in RESUMING; the device is in ${name(this.state)}`, 'command');
    try {
      this.sink.write(p.subarray(L.data));
    } catch (e) {
      this.options.warn(`migration: stream refused at byte ${this.sink.bytesIn}: ${(e as Error).message}`);
      throw e;
    }
    this.stats.bytesWritten += size;
  }

  /** Back to RUNNING: sessions dropped, BARs served. The device's state is not touched. */
  private toRunning(why: string): void {
    if (this.state !== RUNNING) this.options.log(`migration: ${name(this.state)} → RUNNING (${why})`);
    this.source = null;
    this.sink = null;
    this.state = RUNNING;
    this.serveBars(true);
  }

  /** The client went away: RUNNING for the next one, as a new open of a VFIO device starts. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.toRunning('client gone');
    this.closed = true;
    this.device.off('reset', this.onReset);
  }

  private serveBars(on: boolean): void {
    if (on === this.barsServed) return;
    for (let i = 0; i <= 6; i++) setBarRegion(this.regionTable, this.device, i, on);
    this.barsServed = on;
  }
}
