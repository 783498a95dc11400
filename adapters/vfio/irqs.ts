/**
 * The server side of vfio-user interrupts for one connection: the answers to
 * DEVICE_GET_IRQ_INFO and the semantics of DEVICE_SET_IRQS, between the device model's
 * {@link InterruptController} (which decides *whether* the function interrupts: Interrupt Disable,
 * MSI enable, per-vector and function masks) and the client's eventfds (which carry the interrupt
 * to the VMM, often straight into KVM as an irqfd).
 *
 * Semantics follow the Linux kernel's vfio-pci where QEMU depends on them (INTx is level-triggered
 * and auto-masked; the INTx UNMASK eventfd is a resampler the client signals) and QEMU's
 * docs/interop/vfio-user.rst elsewhere (mask/unmask notifiers the server signals).
 *
 * Decisions where the spec and the kernel leave room, in one place:
 * - `count` 0 is accepted only in the disable-all form (start 0, DATA_NONE | ACTION_TRIGGER), as
 *   libvfio-user does; any other count-0 request, including an EVENTFD de-assignment of nothing,
 *   acts on no interrupt and is refused with EINVAL so a client bug does not pass silently.
 * - Every request must address at least one existing interrupt: `start` must be below the
 *   index's count even for disable-all, so an index with no interrupts (MSI-X on a function
 *   without the capability, INTx without a pin) refuses everything (kernel and libvfio-user agree).
 * - DATA_EVENTFD takes either `count` fds (one per sub-index, in order) or none (de-assign the
 *   range). QEMU splits a mixed set into runs of real fds and runs of -1 and sends each run alone,
 *   which is exactly these two forms.
 * - There is no single "active interrupt type" as in the kernel, which must program one mode into
 *   real hardware: the device model already routes each interrupt by the guest's MSI/MSI-X
 *   enables, so INTx, MSI and MSI-X eventfds may be assigned at the same time. NORESIZE on MSI is
 *   advice to QEMU (assign all vectors at once), not enforced, because QEMU still splits one MSI
 *   assignment into several messages when the server accepts fewer fds per message.
 * - Disable-all succeeds whenever the index has interrupts, even if nothing is assigned (the
 *   kernel refuses it unless that mode is active): teardown stays idempotent, as in libvfio-user.
 * - Received fds must be eventfds (checked through /proc/self/fd; EINVAL otherwise and EBADF for
 *   one not open, as the kernel's eventfd_ctx_fdget answers), distinct, and not already held.
 *   They are switched to O_NONBLOCK so the client cannot stall the server by saturating a counter.
 * - Masking at the vfio level is separate from the guest's masks in config space (which the device
 *   model applies before anything reaches this class); NONE/BOOL | TRIGGER is a loopback that
 *   signals the trigger eventfd directly and ignores vfio-level masks, as the kernel's does.
 * @module
 */
import { readlinkSync } from 'node:fs';
import { MdevError, describe } from '../../src/errors.js';
import type { InterruptController, IrqSink, MsiMessage } from '../../src/irq.js';
import type { PciDevice } from '../../src/pci/device.js';
import { closeFd, eventfdRead, eventfdWrite, setNonBlocking } from '../../src/native/fd.js';
import { FdWatcher } from '../../src/native/watcher.js';
import { IrqInfoFlag, IrqSetFlag, PciIrq } from './protocol.js';

/** A DEVICE_SET_IRQS request as decoded from the wire (`struct vfio_irq_set` without `argsz`). */
export interface IrqSetRequest {
  /** One DATA_* flag and one ACTION_* flag ({@link IrqSetFlag}). */
  flags: number;
  /** IRQ index ({@link PciIrq}). */
  index: number;
  /** First sub-index (vector) acted on. */
  start: number;
  /** Number of sub-indexes acted on; 0 only in the disable-all form. */
  count: number;
  /** The bytes after the fixed part: `count` booleans for DATA_BOOL, otherwise ignored. */
  data: Uint8Array;
}

/** The answer to DEVICE_GET_IRQ_INFO for one index. */
export interface IrqInfo {
  /** {@link IrqInfoFlag} bits. */
  flags: number;
  /** Number of interrupts (vectors) of the index. */
  count: number;
}

/** Counters of interrupt delivery on one connection, for tests and `mdevkit compare`. */
export interface VfioIrqStats {
  /** Trigger eventfd writes per IRQ index (indexed by {@link PciIrq}: INTx, MSI, MSI-X, ERR, REQ). */
  readonly signalled: number[];
  /** Interrupts that had to be signalled but found no trigger eventfd assigned. */
  dropped: number;
  /** Interrupts held because their vector (or INTx) was masked at the vfio level. */
  pending: number;
  /** Transitions to masked at the vfio level, INTx auto-masks included. */
  masked: number;
  /** Mask and unmask notifier eventfd writes. */
  notified: number;
  /** INTx resample notifications from the client that were handled. */
  resampled: number;
}

/** Options of a {@link VfioIrqState}. */
export interface VfioIrqStateOptions {
  /**
   * Called after an INTx resample notification from the client has been handled (INTx unmasked,
   * and re-triggered if the line is still asserted). The resample eventfd is served on the event
   * loop, so this is the only moment its effect becomes observable; meant for tracing and tests.
   */
  onResample?: () => void;
}

/** No fd in a slot. */
const NO_FD = -1;

/** Index names for messages. */
const INDEX_NAMES = ['INTx', 'MSI', 'MSI-X', 'ERR', 'REQ'] as const;

/** What the kernel's /proc shows for an eventfd (`anon_inode:[eventfd]`). */
const EVENTFD_LINK = 'anon_inode:[eventfd]';

type Action = 'mask' | 'unmask' | 'trigger';
type DataKind = 'none' | 'bool' | 'eventfd';

/** A request that passed validation, with its flags decoded. */
interface ValidRequest {
  readonly index: number;
  readonly start: number;
  readonly count: number;
  readonly data: DataKind;
  readonly action: Action;
  /** Which sub-indexes of [start, start + count) the action applies to (DATA_BOOL), or null for all. */
  readonly selected: Uint8Array | null;
}

function popcount(bits: number): number {
  let n = 0;
  for (let b = bits; b !== 0; b &= b - 1) n++;
  return n;
}

/** Checks a 32-bit unsigned wire field; EINVAL (as the kernel answers) rather than ERANGE. */
function u32(field: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new MdevError('EINVAL', `must be a 32-bit unsigned integer, got ${describe(value)}`, field);
  }
  return value;
}

/**
 * The interrupt state of one vfio-user connection for one {@link PciDevice}: the eventfds the
 * client assigned, the vfio-level masks and pending bits, and the INTx auto-mask. It is the
 * device's {@link IrqSink} while the connection lasts.
 *
 * Lifecycle: construct when the client connects, {@link attach} (or let the adapter call
 * `device.irq.attach(state)`), feed it GET_IRQ_INFO and SET_IRQS requests, and call
 * {@link disconnect} when the client goes away; a disconnected state refuses further requests.
 */
export class VfioIrqState implements IrqSink {
  /** Delivery counters. */
  readonly stats: VfioIrqStats = { signalled: [0, 0, 0, 0, 0], dropped: 0, pending: 0, masked: 0, notified: 0, resampled: 0 };
  private readonly irq: InterruptController;
  /** Number of interrupts per index, fixed once the device is realized. */
  private readonly counts: readonly number[];
  /** Trigger eventfds per index and sub-index (server writes to raise the interrupt). */
  private readonly triggers: Int32Array[];
  /** ACTION_MASK eventfds: notifiers the server signals when the sub-index becomes masked. */
  private readonly maskFds: Int32Array[];
  /**
   * ACTION_UNMASK eventfds. For MSI/MSI-X, notifiers the server signals on unmask; for INTx, the
   * resample eventfd the client signals (see {@link VfioIrqState.setIrqs}).
   */
  private readonly unmaskFds: Int32Array[];
  /** vfio-level mask bits per index and sub-index (INTx: the auto-mask). */
  private readonly masks: Uint8Array[];
  /** MSI/MSI-X messages held by a vfio-level mask, delivered on unmask. */
  private readonly pendingBits: Uint8Array[];
  /** The level the device drives on INTx (after its own Interrupt Disable and MSI gating). */
  private intxLine = false;
  private resampleWatcher: FdWatcher | null = null;
  private attached = false;
  private closed = false;
  private readonly onDeviceReset = (): void => this.discardPending();

  /**
   * Creates the state for `device` (realizing it) and declares the MSI-X table owned by the VMM,
   * since QEMU emulates the table of VFIO and vfio-user devices itself and never forwards it.
   * @param device the function served on this connection
   * @param options hooks
   */
  constructor(
    private readonly device: PciDevice,
    private readonly options: VfioIrqStateOptions = {},
  ) {
    this.irq = device.irq;
    this.irq.setMsixTableOwnedByVmm(true);
    this.counts = [this.irq.intxPin !== 0 ? 1 : 0, device.msi?.vectors ?? 0, device.msix?.vectors ?? 0, 1, 1];
    const fdTable = (): Int32Array[] => this.counts.map((n) => new Int32Array(n).fill(NO_FD));
    this.triggers = fdTable();
    this.maskFds = fdTable();
    this.unmaskFds = fdTable();
    this.masks = this.counts.map((n) => new Uint8Array(n));
    this.pendingBits = this.counts.map((n) => new Uint8Array(n));
    // A function-level reset discards interrupts the function had signalled but we held.
    device.on('reset', this.onDeviceReset);
  }

  /** Makes this state the device's interrupt sink (the current INTx level is replayed to it). */
  attach(): void {
    this.assertOpen();
    this.attached = true;
    this.irq.attach(this);
  }

  /** Detaches the device's interrupts from this state if {@link attach} attached them. */
  detach(): void {
    if (!this.attached) return;
    this.attached = false;
    this.irq.detach();
  }

  // ---- DEVICE_GET_IRQ_INFO --------------------------------------------------------------------

  /**
   * The flags and count of IRQ index `index`. INTx is maskable and auto-masked, as the kernel's
   * vfio-pci reports it and QEMU expects (it unmasks after each interrupt); MSI is NORESIZE (its
   * vectors are enabled as a block by Multiple Message Enable); MSI-X is resizable, so QEMU assigns
   * vectors one at a time as the guest unmasks them; ERR and REQ have one interrupt each.
   * @throws EINVAL naming `index` for an index other than 0-4
   */
  irqInfo(index: number): IrqInfo {
    if (typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index >= PciIrq.COUNT) {
      throw new MdevError('EINVAL', `must be an IRQ index 0-${PciIrq.COUNT - 1}, got ${describe(index)}`, 'index');
    }
    const count = this.counts[index]!;
    switch (index) {
      case PciIrq.INTX:
        return { flags: IrqInfoFlag.EVENTFD | IrqInfoFlag.MASKABLE | IrqInfoFlag.AUTOMASKED, count };
      case PciIrq.MSI:
        return { flags: IrqInfoFlag.EVENTFD | IrqInfoFlag.NORESIZE, count };
      default:
        return { flags: IrqInfoFlag.EVENTFD, count };
    }
  }

  // ---- DEVICE_SET_IRQS ------------------------------------------------------------------------

  /**
   * Validates and applies one SET_IRQS request.
   *
   * Per index:
   * - INTx: EVENTFD|TRIGGER assigns the trigger (if the line is already asserted and unmasked it
   *   fires at once: the line is a level). A device assertion writes the trigger and auto-masks;
   *   while masked, the level is remembered, not signalled. NONE/BOOL|UNMASK unmasks and, if the
   *   device still asserts the line, triggers and re-masks; NONE/BOOL|MASK masks.
   *   EVENTFD|UNMASK assigns a resample eventfd that the *client* signals (KVM's irqfd resampler
   *   does, on guest EOI) to unmask; this is the kernel's and QEMU's meaning, while the vfio-user
   *   spec describes a server-signalled notifier. EVENTFD|MASK assigns a notifier signalled each
   *   time INTx becomes masked. NONE/BOOL|TRIGGER signals the trigger (loopback).
   * - MSI / MSI-X: EVENTFD|TRIGGER assigns per-vector triggers; NONE/BOOL|MASK/UNMASK mask and
   *   unmask vectors at the vfio level, holding a masked vector's messages as pending and
   *   delivering one on unmask; EVENTFD|MASK/UNMASK assign notifiers signalled when a vector's
   *   vfio-level mask changes; NONE/BOOL|TRIGGER signals the vectors' triggers (loopback).
   * - ERR / REQ: EVENTFD|TRIGGER assigns; NONE/BOOL|TRIGGER signals; they cannot be masked.
   *
   * For every index, EVENTFD with no fds de-assigns the range (closing what it held), and
   * DATA_NONE|TRIGGER with start 0 and count 0 disables the whole index: every eventfd of the
   * index is closed and its masks and pending bits cleared.
   *
   * Ownership: `fds` are handed over. On success they are kept (each replaced eventfd is closed);
   * on any error every fd in `fds` is closed, except one this state already holds, so that no
   * received fd can leak.
   * @param request the decoded request
   * @param fds the fds received with the message (SCM_RIGHTS)
   * @throws EINVAL naming the field at fault (`irq_set.flags`, `irq_set.index`, `irq_set.start`,
   *   `irq_set.count`, `irq_set.data`, `fds`); EBADF naming `fds` for an fd that is not open;
   *   ENOTCONN after {@link disconnect}
   */
  setIrqs(request: IrqSetRequest, fds: number[]): void {
    let adopted = false;
    let watcher: FdWatcher | null = null;
    try {
      this.assertOpen();
      const req = this.validate(request, fds);
      this.validateFds(req, fds);
      if (req.data === 'eventfd' && fds.length > 0) {
        // Our writes must never block, whatever the client does to the counter (a blocking
        // eventfd at its maximum would stall the server). O_NONBLOCK is on the file description
        // the client shares; QEMU's event notifiers are non-blocking already.
        for (const fd of fds) setNonBlocking(fd, true);
        if (req.index === PciIrq.INTX && req.action === 'unmask') watcher = this.watchResample(fds[0]!);
      }
      // Nothing below throws for a valid request: from here the fds belong to this state.
      adopted = true;
      this.apply(req, fds, watcher);
    } finally {
      if (!adopted) {
        watcher?.close();
        this.closeReceived(fds);
      }
    }
  }

  private validate(request: IrqSetRequest, fds: number[]): ValidRequest {
    if (typeof request !== 'object' || request === null) throw new MdevError('EINVAL', 'must be an object', 'irq_set');
    if (!Array.isArray(fds)) throw new MdevError('EINVAL', `must be an array of fds, got ${describe(fds)}`, 'fds');
    const flags = u32('irq_set.flags', request.flags);
    const index = u32('irq_set.index', request.index);
    const start = u32('irq_set.start', request.start);
    const count = u32('irq_set.count', request.count);
    const dataBits = flags & IrqSetFlag.DATA_MASK;
    const actionBits = flags & IrqSetFlag.ACTION_MASK_ALL;
    if (flags & ~(IrqSetFlag.DATA_MASK | IrqSetFlag.ACTION_MASK_ALL)) {
      const unknown = (flags & ~(IrqSetFlag.DATA_MASK | IrqSetFlag.ACTION_MASK_ALL)) >>> 0;
      throw new MdevError('EINVAL', `unknown bits 0x${unknown.toString(16)}`, 'irq_set.flags');
    }
    if (popcount(dataBits) !== 1) throw new MdevError('EINVAL', `needs exactly one DATA flag, got 0x${dataBits.toString(16)}`, 'irq_set.flags');
    if (popcount(actionBits) !== 1) throw new MdevError('EINVAL', `needs exactly one ACTION flag, got 0x${actionBits.toString(16)}`, 'irq_set.flags');
    const data: DataKind = dataBits === IrqSetFlag.DATA_NONE ? 'none' : dataBits === IrqSetFlag.DATA_BOOL ? 'bool' : 'eventfd';
    const action: Action = actionBits === IrqSetFlag.ACTION_MASK ? 'mask' : actionBits === IrqSetFlag.ACTION_UNMASK ? 'unmask' : 'trigger';
    if (index >= PciIrq.COUNT) throw new MdevError('EINVAL', `must be an IRQ index 0-${PciIrq.COUNT - 1}, got ${index}`, 'irq_set.index');
    const n = this.counts[index]!;
    const name = INDEX_NAMES[index]!;
    if (n === 0) throw new MdevError('EINVAL', `the device has no ${name} interrupts`, 'irq_set.index');
    if (start >= n) throw new MdevError('EINVAL', `${start} is not below the ${n} ${name} interrupts`, 'irq_set.start');
    // JS numbers are exact far beyond 2^33, so start + count cannot wrap as the u32 sum does in C.
    if (start + count > n) throw new MdevError('EINVAL', `[${start}, +${count}) goes past the ${n} ${name} interrupts`, 'irq_set.count');
    if (count === 0 && start !== 0) throw new MdevError('EINVAL', 'count 0 (disable-all) needs start 0', 'irq_set.start');
    if (count === 0 && (data !== 'none' || action !== 'trigger')) {
      throw new MdevError('EINVAL', 'count 0 is only valid as disable-all (DATA_NONE | ACTION_TRIGGER, start 0)', 'irq_set.count');
    }
    if ((index === PciIrq.ERR || index === PciIrq.REQ) && action !== 'trigger') {
      throw new MdevError('EINVAL', `${name} cannot be masked or unmasked`, 'irq_set.flags');
    }
    let selected: Uint8Array | null = null;
    if (data === 'bool') {
      const bytes: unknown = request.data;
      if (!(bytes instanceof Uint8Array) || bytes.length < count) {
        const got = bytes instanceof Uint8Array ? `${bytes.length} bytes` : describe(bytes);
        throw new MdevError('EINVAL', `DATA_BOOL needs ${count} booleans, got ${got}`, 'irq_set.data');
      }
      selected = bytes.subarray(0, count);
    }
    return { index, start, count, data, action, selected };
  }

  private validateFds(req: ValidRequest, fds: number[]): void {
    if (req.data !== 'eventfd') {
      if (fds.length !== 0) throw new MdevError('EINVAL', `${fds.length} fds sent without DATA_EVENTFD`, 'fds');
      return;
    }
    if (fds.length !== 0 && fds.length !== req.count) {
      throw new MdevError('EINVAL', `DATA_EVENTFD needs ${req.count} fds (or none to de-assign), got ${fds.length}`, 'fds');
    }
    const held = this.heldFds();
    const seen = new Set<number>();
    for (const fd of fds) {
      if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0) throw new MdevError('EINVAL', `${describe(fd)} is not an fd`, 'fds');
      // Fds received with a message are new numbers; seeing one twice, or one we already hold,
      // is a bug in the caller that would end in a double close.
      if (seen.has(fd)) throw new MdevError('EINVAL', `fd ${fd} is given twice`, 'fds');
      if (held.has(fd)) throw new MdevError('EINVAL', `fd ${fd} is already held by this connection`, 'fds');
      seen.add(fd);
      let target: string;
      try {
        target = readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        throw new MdevError('EBADF', `fd ${fd} is not open`, 'fds');
      }
      // The kernel answers EINVAL when the fd is not an eventfd (eventfd_ctx_fdget).
      if (target !== EVENTFD_LINK) throw new MdevError('EINVAL', `fd ${fd} is ${target}, not an eventfd`, 'fds');
    }
  }

  private apply(req: ValidRequest, fds: number[], watcher: FdWatcher | null): void {
    const { index, start, count, action } = req;
    if (count === 0) {
      this.disableIndex(index);
      return;
    }
    if (req.data === 'eventfd') {
      const table = action === 'trigger' ? this.triggers[index]! : action === 'mask' ? this.maskFds[index]! : this.unmaskFds[index]!;
      const resample = index === PciIrq.INTX && action === 'unmask';
      if (resample) this.stopResampleWatcher();
      const displaced: number[] = [];
      for (let i = 0; i < count; i++) {
        const old = table[start + i]!;
        if (old !== NO_FD) displaced.push(old);
        table[start + i] = fds.length === 0 ? NO_FD : fds[i]!;
      }
      if (resample) this.resampleWatcher = watcher;
      closeAll(displaced);
      // A level that is already high and unmasked reaches a newly assigned INTx trigger at once.
      if (index === PciIrq.INTX && action === 'trigger' && fds.length > 0 && this.intxLine && !this.masks[index]![0]) {
        this.deliverIntx();
      }
      return;
    }
    for (let i = 0; i < count; i++) {
      if (req.selected !== null && req.selected[i] === 0) continue;
      const v = start + i;
      if (action === 'trigger') this.signal(index, v);
      else if (action === 'mask') this.mask(index, v);
      else this.unmask(index, v);
    }
  }

  // ---- IrqSink --------------------------------------------------------------------------------

  /**
   * The device's effective INTx level changed. An assertion while unmasked writes the trigger
   * eventfd and auto-masks, as the kernel's INTx handler does; while masked, the line stays high
   * and is signalled when the client unmasks. A deassertion is not signalled (an eventfd cannot
   * carry a level): the VMM lowers its line when it unmasks, after the guest's EOI.
   */
  setIntx(asserted: boolean): void {
    this.intxLine = asserted;
    if (!asserted) return;
    if (this.masks[PciIrq.INTX]![0]) {
      this.stats.pending++;
      return;
    }
    this.deliverIntx();
  }

  /** An MSI or MSI-X message: signalled on its vector's eventfd, or held if vfio-level masked. */
  sendMsi(message: MsiMessage): void {
    const index = message.kind === 'msi' ? PciIrq.MSI : PciIrq.MSIX;
    const v = message.vector;
    if (!(v >= 0 && v < this.counts[index]!)) {
      this.stats.dropped++;
      return;
    }
    if (this.masks[index]![v]) {
      this.pendingBits[index]![v] = 1;
      this.stats.pending++;
      return;
    }
    this.signal(index, v);
  }

  // ---- ERR and REQ ----------------------------------------------------------------------------

  /**
   * Signals the REQ interrupt, asking the VMM to release the device (the server does this when
   * it is shutting down).
   * @returns whether a REQ eventfd was assigned and signalled
   */
  requestRelease(): boolean {
    return this.signal(PciIrq.REQ, 0);
  }

  /**
   * Signals the ERR interrupt, reporting an unrecoverable device error to the VMM.
   * @returns whether an ERR eventfd was assigned and signalled
   */
  reportError(): boolean {
    return this.signal(PciIrq.ERR, 0);
  }

  // ---- disconnect -----------------------------------------------------------------------------

  /**
   * The client went away: closes every eventfd it gave (triggers, notifiers, the resample
   * eventfd and its watcher), clears vfio-level masks and pending bits, stops listening for
   * device resets and detaches from the device if {@link attach} attached. The device's own
   * state, including its INTx level, is untouched, as the spec requires so that a client can
   * reconnect. Idempotent.
   */
  disconnect(): void {
    if (this.closed) return;
    this.closed = true;
    this.device.off('reset', this.onDeviceReset);
    this.detach();
    for (let index = 0; index < PciIrq.COUNT; index++) this.disableIndex(index);
  }

  // ---- internals ------------------------------------------------------------------------------

  private assertOpen(): void {
    if (this.closed) throw new MdevError('ENOTCONN', 'the connection of this interrupt state was closed', 'connection');
  }

  /** Writes the trigger of `index`/`v`; a missing trigger counts as dropped. */
  private signal(index: number, v: number): boolean {
    const fd = this.triggers[index]![v]!;
    if (fd === NO_FD) {
      this.stats.dropped++;
      return false;
    }
    // false means the counter is saturated: the client has not consumed earlier signals, so the
    // interrupt is already pending on its side.
    eventfdWrite(fd, 1n);
    this.stats.signalled[index]!++;
    return true;
  }

  /** INTx fires: signal and auto-mask. Without a trigger nothing was delivered, so nothing masks. */
  private deliverIntx(): void {
    if (this.signal(PciIrq.INTX, 0)) this.mask(PciIrq.INTX, 0);
  }

  private mask(index: number, v: number): void {
    const masks = this.masks[index]!;
    if (masks[v]) return;
    masks[v] = 1;
    this.stats.masked++;
    this.notify(this.maskFds[index]![v]!);
  }

  private unmask(index: number, v: number): void {
    const masks = this.masks[index]!;
    if (!masks[v]) return;
    masks[v] = 0;
    if (index === PciIrq.INTX) {
      // The INTx UNMASK eventfd is the client's resampler, never written by us. A line still
      // asserted fires again (and re-masks), as the kernel's unmask does.
      if (this.intxLine) this.deliverIntx();
      return;
    }
    this.notify(this.unmaskFds[index]![v]!);
    const pending = this.pendingBits[index]!;
    if (pending[v]) {
      pending[v] = 0;
      this.signal(index, v);
    }
  }

  private notify(fd: number): void {
    if (fd === NO_FD) return;
    eventfdWrite(fd, 1n);
    this.stats.notified++;
  }

  private watchResample(fd: number): FdWatcher {
    const watcher = new FdWatcher(fd, (event) => {
      if (event.error !== undefined) return; // the watcher stopped itself; the fd stays assigned
      // One read per wakeup: it drains a normal eventfd, and a semaphore-mode one simply wakes
      // us again on the next loop iteration instead of making us spin here.
      if (eventfdRead(fd) === null) return;
      this.stats.resampled++;
      this.unmask(PciIrq.INTX, 0);
      this.options.onResample?.();
    });
    // The connection's socket keeps the server alive; an interrupt eventfd is no reason to.
    watcher.unref();
    watcher.start();
    return watcher;
  }

  private stopResampleWatcher(): void {
    // The watcher must be closed before its fd.
    this.resampleWatcher?.close();
    this.resampleWatcher = null;
  }

  /** Disable-all for one index: close its eventfds, clear masks and pending bits. */
  private disableIndex(index: number): void {
    if (index === PciIrq.INTX) this.stopResampleWatcher();
    const fds: number[] = [];
    for (const table of [this.triggers[index]!, this.maskFds[index]!, this.unmaskFds[index]!]) {
      for (let v = 0; v < table.length; v++) {
        if (table[v] !== NO_FD) fds.push(table[v]!);
      }
      table.fill(NO_FD);
    }
    this.masks[index]!.fill(0);
    this.pendingBits[index]!.fill(0);
    closeAll(fds);
  }

  private discardPending(): void {
    this.pendingBits[PciIrq.MSI]!.fill(0);
    this.pendingBits[PciIrq.MSIX]!.fill(0);
  }

  private heldFds(): Set<number> {
    const held = new Set<number>();
    for (const tables of [this.triggers, this.maskFds, this.unmaskFds]) {
      for (const table of tables) for (const fd of table) if (fd !== NO_FD) held.add(fd);
    }
    return held;
  }

  /** Closes the fds of a refused request: each valid fd once, never one this state holds. */
  private closeReceived(fds: unknown): void {
    if (!Array.isArray(fds)) return;
    const held = this.heldFds();
    const done = new Set<number>();
    for (const fd of fds) {
      if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0 || held.has(fd) || done.has(fd)) continue;
      done.add(fd);
      try {
        closeFd(fd);
      } catch {
        // Not open (the EBADF case being reported): nothing to release.
      }
    }
  }
}

/** Closes every fd, even if one fails; the first failure is rethrown afterwards. */
function closeAll(fds: number[]): void {
  let failure: unknown = null;
  for (const fd of fds) {
    try {
      closeFd(fd);
    } catch (e) {
      failure ??= e;
    }
  }
  if (failure !== null) throw failure;
}
