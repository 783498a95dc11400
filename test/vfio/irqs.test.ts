import { afterEach, describe, expect, it } from 'vitest';
import { VfioIrqState, type IrqSetRequest, type VfioIrqStateOptions } from '../../adapters/vfio/irqs.js';
import { IrqInfoFlag, IrqSetFlag as F, PciIrq } from '../../adapters/vfio/protocol.js';
import { EDU, EduDevice } from '../../examples/edu/index.js';
import { PciDevice } from '../../src/pci/device.js';
import { Region } from '../../src/regions.js';
import { PCI, PCI_COMMAND, PCI_MSI, PCI_MSIX, PCI_STATUS } from '../../src/pci/constants.js';
import { closeFd, dupFd, eventfdCreate, eventfdRead, eventfdWrite, pipe } from '../../src/native/fd.js';
import { FdWatcher } from '../../src/native/watcher.js';
import { readInt, writeInt } from '../helpers.js';
import { fdFlags, isOpen, thrown } from '../native/helpers.js';

// ---- fixtures ---------------------------------------------------------------------------------

const peers: number[] = [];
const states: VfioIrqState[] = [];

afterEach(() => {
  for (const s of states.splice(0)) s.disconnect();
  for (const fd of peers.splice(0)) if (isOpen(fd)) closeFd(fd);
});

/**
 * An eventfd as the client sees it (`peer`, kept by the test) and the duplicate that travels to
 * the server (`given`, owned by the state once passed), like the two ends of an SCM_RIGHTS
 * transfer: both name the same counter.
 */
function eventfd(): { peer: number; given: number } {
  const peer = eventfdCreate();
  peers.push(peer);
  return { peer, given: dupFd(peer) };
}

function eventfds(n: number): { peer: number; given: number }[] {
  return Array.from({ length: n }, eventfd);
}

function track(state: VfioIrqState): VfioIrqState {
  states.push(state);
  return state;
}

function edu(options?: VfioIrqStateOptions) {
  const d = new EduDevice().realize();
  const state = track(new VfioIrqState(d, options));
  state.attach();
  const bar0 = d.bars[0]!.region;
  return {
    d,
    state,
    cfg: d.configAccessor,
    bar0,
    raise: () => writeInt(bar0, EDU.IRQ_RAISE, 4, EDU.IRQ_FACTORIAL),
    ack: () => writeInt(bar0, EDU.IRQ_ACK, 4, EDU.IRQ_FACTORIAL),
  };
}

/** A function with 8 MSI-X vectors in BAR0 and no INTx pin. */
function msixDevice() {
  const d = new PciDevice({ vendorId: 0x1b36, deviceId: 0x00ff, classCode: 0xff0000, interruptPin: 0 });
  d.addBar(0, new Region('regs', 0x4000));
  const msix = d.addMsix({ vectors: 8, tableBar: 0, tableOffset: 0x1000, pbaOffset: 0x1800 });
  d.realize();
  const state = track(new VfioIrqState(d));
  state.attach();
  const cfg = d.configAccessor;
  return { d, state, cfg, enable: () => writeInt(cfg, msix.offset + PCI_MSIX.FLAGS, 2, PCI_MSIX.FLAGS_ENABLE) };
}

function req(flags: number, index: number, start: number, count: number, data: number[] = []): IrqSetRequest {
  return { flags, index, start, count, data: Uint8Array.from(data) };
}

const TRIGGER_FD = F.DATA_EVENTFD | F.ACTION_TRIGGER;
const DISABLE = req(F.DATA_NONE | F.ACTION_TRIGGER, 0, 0, 0);

/** Reads (and resets) a counter: 0 when nothing was signalled. */
function take(fd: number): number {
  const v = eventfdRead(fd);
  return v === null ? 0 : Number(v);
}

function expectClosed(fd: number): void {
  expect(isOpen(fd)).toBe(false);
  expect(thrown(() => eventfdWrite(fd, 1n)).code).toBe('EBADF');
}

/** Resolves when `fd` becomes readable, watched on the event loop like a VMM would. */
function readable(fd: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const w = new FdWatcher(fd, (ev) => {
      w.close();
      if (ev.error) reject(ev.error);
      else resolve();
    });
    w.start();
  });
}

/** Resample completions as promises, through the state's hook. */
function resampleHook() {
  const waiters: (() => void)[] = [];
  return {
    options: { onResample: () => waiters.shift()?.() } satisfies VfioIrqStateOptions,
    next: () => new Promise<void>((resolve) => waiters.push(resolve)),
  };
}

function enableEduMsi(cfg: PciDevice['configAccessor'], d: EduDevice): number {
  const o = d.msi!.offset;
  writeInt(cfg, o + PCI_MSI.ADDRESS_LO, 4, 0xfee00000);
  writeInt(cfg, o + PCI_MSI.DATA_64, 2, 0x41);
  writeInt(cfg, o + PCI_MSI.FLAGS, 2, PCI_MSI.FLAGS_ENABLE);
  return o;
}

// ---- GET_IRQ_INFO -----------------------------------------------------------------------------

describe('irqInfo', () => {
  it('describes edu: INTx maskable and auto-masked, one NORESIZE MSI vector, no MSI-X, ERR and REQ', () => {
    const { state } = edu();
    expect([0, 1, 2, 3, 4].map((i) => state.irqInfo(i))).toEqual([
      { flags: IrqInfoFlag.EVENTFD | IrqInfoFlag.MASKABLE | IrqInfoFlag.AUTOMASKED, count: 1 },
      { flags: IrqInfoFlag.EVENTFD | IrqInfoFlag.NORESIZE, count: 1 },
      { flags: IrqInfoFlag.EVENTFD, count: 0 },
      { flags: IrqInfoFlag.EVENTFD, count: 1 },
      { flags: IrqInfoFlag.EVENTFD, count: 1 },
    ]);
  });

  it('counts MSI-X vectors and no INTx without an interrupt pin', () => {
    const { state } = msixDevice();
    expect(state.irqInfo(PciIrq.INTX).count).toBe(0);
    expect(state.irqInfo(PciIrq.MSI).count).toBe(0);
    expect(state.irqInfo(PciIrq.MSIX)).toEqual({ flags: IrqInfoFlag.EVENTFD, count: 8 });
  });

  it('refuses indexes other than 0-4', () => {
    const { state } = edu();
    for (const bad of [5, -1, 1.5, 0xffffffff]) {
      const e = thrown(() => state.irqInfo(bad));
      expect({ code: e.code, field: e.field }).toEqual({ code: 'EINVAL', field: 'index' });
    }
  });

  it('hands the MSI-X table to the VMM: entry masks from reset no longer hold vectors pending', () => {
    const { d, enable } = msixDevice();
    enable();
    expect(d.irq.raise(3)).toBe('sent');
  });
});

// ---- INTx -------------------------------------------------------------------------------------

describe('INTx', () => {
  it('triggers, auto-masks, and re-triggers on UNMASK only while the line is still asserted', () => {
    const { state, raise, ack } = edu();
    const t = eventfd();
    state.setIrqs(req(TRIGGER_FD, PciIrq.INTX, 0, 1), [t.given]);
    raise();
    expect(take(t.peer)).toBe(1);
    expect(state.stats.masked).toBe(1);
    // Auto-masked: a new assertion is remembered, not signalled.
    ack();
    raise();
    expect(take(t.peer)).toBe(0);
    expect(state.stats.pending).toBe(1);
    // UNMASK with the line high fires again and re-masks.
    state.setIrqs(req(F.DATA_NONE | F.ACTION_UNMASK, PciIrq.INTX, 0, 1), []);
    expect(take(t.peer)).toBe(1);
    expect(state.stats.masked).toBe(2);
    // With the line low, UNMASK unmasks silently; the next assertion then fires at once.
    ack();
    state.setIrqs(req(F.DATA_NONE | F.ACTION_UNMASK, PciIrq.INTX, 0, 1), []);
    expect(take(t.peer)).toBe(0);
    raise();
    expect(take(t.peer)).toBe(1);
    expect(state.stats.signalled[PciIrq.INTX]).toBe(3);
  });

  it('masks explicitly; DATA_BOOL unmasks only where true', () => {
    const { state, raise } = edu();
    const t = eventfd();
    state.setIrqs(req(TRIGGER_FD, PciIrq.INTX, 0, 1), [t.given]);
    state.setIrqs(req(F.DATA_BOOL | F.ACTION_MASK, PciIrq.INTX, 0, 1, [1]), []);
    raise();
    expect(take(t.peer)).toBe(0);
    state.setIrqs(req(F.DATA_BOOL | F.ACTION_UNMASK, PciIrq.INTX, 0, 1, [0]), []);
    expect(take(t.peer)).toBe(0);
    state.setIrqs(req(F.DATA_BOOL | F.ACTION_UNMASK, PciIrq.INTX, 0, 1, [1]), []);
    expect(take(t.peer)).toBe(1);
  });

  it('signals the mask notifier on each transition to masked, automatic or explicit', () => {
    const { state, raise, ack } = edu();
    const [t, m] = eventfds(2);
    state.setIrqs(req(TRIGGER_FD, PciIrq.INTX, 0, 1), [t!.given]);
    state.setIrqs(req(F.DATA_EVENTFD | F.ACTION_MASK, PciIrq.INTX, 0, 1), [m!.given]);
    raise();
    expect([take(t!.peer), take(m!.peer)]).toEqual([1, 1]);
    // Already masked: no transition, no notification.
    state.setIrqs(req(F.DATA_NONE | F.ACTION_MASK, PciIrq.INTX, 0, 1), []);
    expect(take(m!.peer)).toBe(0);
    ack();
    state.setIrqs(req(F.DATA_NONE | F.ACTION_UNMASK, PciIrq.INTX, 0, 1), []);
    state.setIrqs(req(F.DATA_NONE | F.ACTION_MASK, PciIrq.INTX, 0, 1), []);
    expect(take(m!.peer)).toBe(1);
    expect(state.stats.notified).toBe(2);
  });

  it('unmasks when the client signals the resample eventfd (KVM irqfd resampler)', async () => {
    const hook = resampleHook();
    const { state, raise, ack } = edu(hook.options);
    const [t, r] = eventfds(2);
    state.setIrqs(req(TRIGGER_FD, PciIrq.INTX, 0, 1), [t!.given]);
    state.setIrqs(req(F.DATA_EVENTFD | F.ACTION_UNMASK, PciIrq.INTX, 0, 1), [r!.given]);
    raise();
    expect(take(t!.peer)).toBe(1);
    // Guest EOI with the device still asserting: the resample re-triggers, seen on the eventfd.
    const fired = readable(t!.peer);
    eventfdWrite(r!.peer, 1n);
    await fired;
    expect(take(t!.peer)).toBe(1);
    expect(state.stats.resampled).toBe(1);
    // The resample eventfd was drained by the server.
    expect(take(r!.peer)).toBe(0);
    // Guest acked first: the resample only unmasks, and the next assertion fires immediately.
    ack();
    const done = hook.next();
    eventfdWrite(r!.peer, 1n);
    await done;
    expect(take(t!.peer)).toBe(0);
    raise();
    expect(take(t!.peer)).toBe(1);
    expect(state.stats.resampled).toBe(2);
  });

  it('never triggers while Interrupt Disable is set in the command register', () => {
    const { state, raise, cfg } = edu();
    const t = eventfd();
    state.setIrqs(req(TRIGGER_FD, PciIrq.INTX, 0, 1), [t.given]);
    writeInt(cfg, PCI.COMMAND, 2, PCI_COMMAND.INTX_DISABLE);
    raise();
    expect(readInt(cfg, PCI.STATUS, 2) & PCI_STATUS.INTERRUPT).toBe(PCI_STATUS.INTERRUPT);
    expect(take(t.peer)).toBe(0);
    expect(state.stats).toMatchObject({ dropped: 0, pending: 0, masked: 0 });
    // Clearing it lets the still-asserted level through.
    writeInt(cfg, PCI.COMMAND, 2, 0);
    expect(take(t.peer)).toBe(1);
  });

  it('delivers a level that was already high when the trigger is assigned', () => {
    const { state, raise } = edu();
    raise();
    expect(state.stats.dropped).toBe(1);
    const t = eventfd();
    state.setIrqs(req(TRIGGER_FD, PciIrq.INTX, 0, 1), [t.given]);
    expect(take(t.peer)).toBe(1);
    expect(state.stats.masked).toBe(1);
  });

  it('loops back NONE|TRIGGER and BOOL|TRIGGER without touching the mask', () => {
    const { state } = edu();
    const t = eventfd();
    state.setIrqs(req(TRIGGER_FD, PciIrq.INTX, 0, 1), [t.given]);
    state.setIrqs(req(F.DATA_NONE | F.ACTION_TRIGGER, PciIrq.INTX, 0, 1), []);
    state.setIrqs(req(F.DATA_BOOL | F.ACTION_TRIGGER, PciIrq.INTX, 0, 1, [0]), []);
    state.setIrqs(req(F.DATA_BOOL | F.ACTION_TRIGGER, PciIrq.INTX, 0, 1, [1]), []);
    expect(take(t.peer)).toBe(2);
    expect(state.stats.masked).toBe(0);
  });

  it('stops watching a de-assigned resample eventfd', async () => {
    const { state } = edu();
    const [t, r, probe] = eventfds(3);
    state.setIrqs(req(TRIGGER_FD, PciIrq.INTX, 0, 1), [t!.given]);
    state.setIrqs(req(F.DATA_EVENTFD | F.ACTION_UNMASK, PciIrq.INTX, 0, 1), [r!.given]);
    state.setIrqs(req(F.DATA_EVENTFD | F.ACTION_UNMASK, PciIrq.INTX, 0, 1), []);
    expectClosed(r!.given);
    // The client's copy stays open; signalling it must reach no stale watcher (which would read
    // a closed fd and throw on the event loop). Both eventfds are ready in the same loop turn.
    const seen = readable(probe!.peer);
    eventfdWrite(r!.peer, 1n);
    eventfdWrite(probe!.peer, 1n);
    await seen;
    expect(state.stats.resampled).toBe(0);
    expect(take(r!.peer)).toBe(1);
  });

  it('de-assigns the trigger with zero fds, closing it', () => {
    const { state, raise } = edu();
    const t = eventfd();
    state.setIrqs(req(TRIGGER_FD, PciIrq.INTX, 0, 1), [t.given]);
    state.setIrqs(req(TRIGGER_FD, PciIrq.INTX, 0, 1), []);
    expectClosed(t.given);
    raise();
    expect(take(t.peer)).toBe(0);
    expect(state.stats.dropped).toBe(1);
  });

  it('disable-all closes trigger, notifier and resample eventfds and clears the mask', () => {
    const { state, raise, ack } = edu();
    const [t, m, r] = eventfds(3);
    state.setIrqs(req(TRIGGER_FD, PciIrq.INTX, 0, 1), [t!.given]);
    state.setIrqs(req(F.DATA_EVENTFD | F.ACTION_MASK, PciIrq.INTX, 0, 1), [m!.given]);
    state.setIrqs(req(F.DATA_EVENTFD | F.ACTION_UNMASK, PciIrq.INTX, 0, 1), [r!.given]);
    raise();
    expect(take(t!.peer)).toBe(1);
    ack();
    state.setIrqs({ ...DISABLE, index: PciIrq.INTX }, []);
    for (const e of [t!, m!, r!]) expectClosed(e.given);
    // Re-enabled, INTx starts unmasked.
    const t2 = eventfd();
    state.setIrqs(req(TRIGGER_FD, PciIrq.INTX, 0, 1), [t2.given]);
    raise();
    expect(take(t2.peer)).toBe(1);
  });
});

// ---- MSI --------------------------------------------------------------------------------------

describe('MSI', () => {
  it('signals the vector eventfd; the model holds config-masked vectors until the guest unmasks', () => {
    const { d, state, cfg, raise } = edu();
    const t = eventfd();
    state.setIrqs(req(TRIGGER_FD, PciIrq.MSI, 0, 1), [t.given]);
    const o = enableEduMsi(cfg, d);
    raise();
    expect(take(t.peer)).toBe(1);
    expect(state.stats.signalled[PciIrq.MSI]).toBe(1);
    // The guest's per-vector mask in config space: the model keeps it pending.
    writeInt(cfg, o + PCI_MSI.MASK_64, 4, 1);
    writeInt(d.bars[0]!.region, EDU.IRQ_RAISE, 4, EDU.IRQ_DMA);
    expect(take(t.peer)).toBe(0);
    expect(d.irq.msiPending(0)).toBe(true);
    writeInt(cfg, o + PCI_MSI.MASK_64, 4, 0);
    expect(take(t.peer)).toBe(1);
  });

  it('holds a vfio-masked vector pending and delivers it once on unmask, signalling notifiers', () => {
    const { d, state, cfg } = edu();
    const [t, m, u] = eventfds(3);
    state.setIrqs(req(TRIGGER_FD, PciIrq.MSI, 0, 1), [t!.given]);
    state.setIrqs(req(F.DATA_EVENTFD | F.ACTION_MASK, PciIrq.MSI, 0, 1), [m!.given]);
    state.setIrqs(req(F.DATA_EVENTFD | F.ACTION_UNMASK, PciIrq.MSI, 0, 1), [u!.given]);
    enableEduMsi(cfg, d);
    state.setIrqs(req(F.DATA_NONE | F.ACTION_MASK, PciIrq.MSI, 0, 1), []);
    expect([take(m!.peer), take(u!.peer)]).toEqual([1, 0]);
    d.irq.raise(0);
    d.irq.raise(0);
    expect(take(t!.peer)).toBe(0);
    expect(state.stats.pending).toBe(2);
    state.setIrqs(req(F.DATA_NONE | F.ACTION_UNMASK, PciIrq.MSI, 0, 1), []);
    expect([take(t!.peer), take(m!.peer), take(u!.peer)]).toEqual([1, 0, 1]);
    // Unmasking again changes nothing and notifies nobody.
    state.setIrqs(req(F.DATA_NONE | F.ACTION_UNMASK, PciIrq.MSI, 0, 1), []);
    expect([take(t!.peer), take(u!.peer)]).toEqual([0, 0]);
  });
});

// ---- MSI-X ------------------------------------------------------------------------------------

describe('MSI-X', () => {
  it('assigns vectors one at a time, as QEMU does for a resizable index', () => {
    const { d, state, enable } = msixDevice();
    enable();
    const e = eventfds(8);
    for (let v = 0; v < 8; v++) {
      state.setIrqs(req(TRIGGER_FD, PciIrq.MSIX, v, 1), [e[v]!.given]);
      d.irq.raise(v);
      expect(e.map((x) => take(x.peer))).toEqual(e.map((_, i) => (i === v ? 1 : 0)));
    }
    expect(state.stats.signalled[PciIrq.MSIX]).toBe(8);
  });

  it('assigns a block, replaces and de-assigns single vectors, closing what they held', () => {
    const { d, state, enable } = msixDevice();
    enable();
    const e = eventfds(3);
    state.setIrqs(req(TRIGGER_FD, PciIrq.MSIX, 2, 3), e.map((x) => x.given));
    const replacement = eventfd();
    state.setIrqs(req(TRIGGER_FD, PciIrq.MSIX, 3, 1), [replacement.given]);
    expectClosed(e[1]!.given);
    state.setIrqs(req(TRIGGER_FD, PciIrq.MSIX, 4, 1), []);
    expectClosed(e[2]!.given);
    for (const v of [2, 3, 4, 5]) d.irq.raise(v);
    expect([take(e[0]!.peer), take(replacement.peer), take(e[2]!.peer)]).toEqual([1, 1, 0]);
    expect(state.stats.dropped).toBe(2); // vectors 4 (de-assigned) and 5 (never assigned)
    expect(isOpen(e[0]!.given)).toBe(true);
  });

  it('disable-all closes every vector eventfd and notifier', () => {
    const { d, state, enable } = msixDevice();
    enable();
    const e = eventfds(8);
    const n = eventfds(2);
    state.setIrqs(req(TRIGGER_FD, PciIrq.MSIX, 0, 8), e.map((x) => x.given));
    state.setIrqs(req(F.DATA_EVENTFD | F.ACTION_MASK, PciIrq.MSIX, 0, 1), [n[0]!.given]);
    state.setIrqs(req(F.DATA_EVENTFD | F.ACTION_UNMASK, PciIrq.MSIX, 7, 1), [n[1]!.given]);
    state.setIrqs({ ...DISABLE, index: PciIrq.MSIX }, []);
    for (const x of [...e, ...n]) expectClosed(x.given);
    d.irq.raise(0);
    expect(take(e[0]!.peer)).toBe(0);
    expect(state.stats.dropped).toBe(1);
  });

  it('fires vectors the client triggers itself, all with DATA_NONE or those marked with DATA_BOOL', () => {
    const { state } = msixDevice();
    const e = eventfds(4);
    state.setIrqs(req(TRIGGER_FD, PciIrq.MSIX, 0, 4), e.map((x) => x.given));
    state.setIrqs(req(F.DATA_NONE | F.ACTION_TRIGGER, PciIrq.MSIX, 0, 4), []);
    expect(e.map((x) => take(x.peer))).toEqual([1, 1, 1, 1]);
    state.setIrqs(req(F.DATA_BOOL | F.ACTION_TRIGGER, PciIrq.MSIX, 0, 4, [1, 0, 1, 0]), []);
    expect(e.map((x) => take(x.peer))).toEqual([1, 0, 1, 0]);
    // A subrange: start 1, booleans for vectors 1-3.
    state.setIrqs(req(F.DATA_BOOL | F.ACTION_TRIGGER, PciIrq.MSIX, 1, 3, [0, 0, 1]), []);
    expect(e.map((x) => take(x.peer))).toEqual([0, 0, 0, 1]);
  });

  it('masks the vectors marked with DATA_BOOL and notifies per vector', () => {
    const { d, state, enable } = msixDevice();
    enable();
    const e = eventfds(4);
    const m = eventfds(4);
    state.setIrqs(req(TRIGGER_FD, PciIrq.MSIX, 0, 4), e.map((x) => x.given));
    state.setIrqs(req(F.DATA_EVENTFD | F.ACTION_MASK, PciIrq.MSIX, 0, 4), m.map((x) => x.given));
    state.setIrqs(req(F.DATA_BOOL | F.ACTION_MASK, PciIrq.MSIX, 0, 4, [0, 1, 0, 1]), []);
    expect(m.map((x) => take(x.peer))).toEqual([0, 1, 0, 1]);
    for (let v = 0; v < 4; v++) d.irq.raise(v);
    expect(e.map((x) => take(x.peer))).toEqual([1, 0, 1, 0]);
    state.setIrqs(req(F.DATA_NONE | F.ACTION_UNMASK, PciIrq.MSIX, 0, 4), []);
    expect(e.map((x) => take(x.peer))).toEqual([0, 1, 0, 1]);
  });

  it('forgets vfio-pending messages when the function is reset', () => {
    const { d, state, enable } = msixDevice();
    const t = eventfd();
    state.setIrqs(req(TRIGGER_FD, PciIrq.MSIX, 0, 1), [t.given]);
    state.setIrqs(req(F.DATA_NONE | F.ACTION_MASK, PciIrq.MSIX, 0, 1), []);
    enable();
    d.irq.raise(0);
    expect(state.stats.pending).toBe(1);
    d.reset();
    state.setIrqs(req(F.DATA_NONE | F.ACTION_UNMASK, PciIrq.MSIX, 0, 1), []);
    expect(take(t.peer)).toBe(0);
  });
});

describe('received eventfds', () => {
  it('are made non-blocking, so a counter the client saturated cannot stall the server', () => {
    const { state } = edu();
    const peer = eventfdCreate(0, { nonBlocking: false });
    peers.push(peer);
    const given = dupFd(peer);
    expect(fdFlags(given).nonBlocking).toBe(false);
    state.setIrqs(req(TRIGGER_FD, PciIrq.REQ, 0, 1), [given]);
    expect(fdFlags(given).nonBlocking).toBe(true);
    eventfdWrite(peer, 0xfffffffffffffffen);
    expect(state.requestRelease()).toBe(true);
    expect(eventfdRead(peer)).toBe(0xfffffffffffffffen);
  });
});

// ---- ERR and REQ ------------------------------------------------------------------------------

describe('ERR and REQ', () => {
  it('signal their eventfds when assigned, and report whether they did', () => {
    const { state } = edu();
    expect(state.requestRelease()).toBe(false);
    expect(state.reportError()).toBe(false);
    const [err, reqFd] = eventfds(2);
    state.setIrqs(req(TRIGGER_FD, PciIrq.ERR, 0, 1), [err!.given]);
    state.setIrqs(req(TRIGGER_FD, PciIrq.REQ, 0, 1), [reqFd!.given]);
    expect(state.requestRelease()).toBe(true);
    expect([take(err!.peer), take(reqFd!.peer)]).toEqual([0, 1]);
    expect(state.reportError()).toBe(true);
    state.setIrqs(req(F.DATA_NONE | F.ACTION_TRIGGER, PciIrq.ERR, 0, 1), []);
    expect([take(err!.peer), take(reqFd!.peer)]).toEqual([2, 0]);
    expect(state.stats.signalled).toEqual([0, 0, 0, 2, 1]);
    state.setIrqs(req(TRIGGER_FD, PciIrq.REQ, 0, 1), []);
    expectClosed(reqFd!.given);
    expect(state.requestRelease()).toBe(false);
    state.setIrqs({ ...DISABLE, index: PciIrq.ERR }, []);
    expectClosed(err!.given);
  });
});

// ---- errors -----------------------------------------------------------------------------------

describe('refused requests', () => {
  interface Case {
    name: string;
    request: IrqSetRequest;
    fds: number;
    field: string;
  }
  const X = PciIrq.MSIX;
  const cases: Case[] = [
    { name: 'no DATA flag', request: req(F.ACTION_TRIGGER, X, 0, 1), fds: 0, field: 'irq_set.flags' },
    { name: 'two DATA flags', request: req(F.DATA_NONE | F.DATA_BOOL | F.ACTION_TRIGGER, X, 0, 1, [1]), fds: 0, field: 'irq_set.flags' },
    { name: 'no ACTION flag', request: req(F.DATA_EVENTFD, X, 0, 1), fds: 1, field: 'irq_set.flags' },
    { name: 'two ACTION flags', request: req(F.DATA_EVENTFD | F.ACTION_MASK | F.ACTION_UNMASK, X, 0, 1), fds: 1, field: 'irq_set.flags' },
    { name: 'an unknown flag bit', request: req(TRIGGER_FD | 0x40, X, 0, 1), fds: 1, field: 'irq_set.flags' },
    { name: 'flags beyond 32 bits', request: req(2 ** 32 + TRIGGER_FD, X, 0, 1), fds: 1, field: 'irq_set.flags' },
    { name: 'index 5', request: req(TRIGGER_FD, 5, 0, 1), fds: 1, field: 'irq_set.index' },
    { name: 'INTx without a pin', request: req(TRIGGER_FD, PciIrq.INTX, 0, 1), fds: 1, field: 'irq_set.index' },
    { name: 'disable-all of MSI without the capability', request: { ...DISABLE, index: PciIrq.MSI }, fds: 0, field: 'irq_set.index' },
    { name: 'start past the vectors', request: req(TRIGGER_FD, X, 8, 1), fds: 1, field: 'irq_set.start' },
    { name: 'a range past the vectors', request: req(TRIGGER_FD, X, 6, 3), fds: 3, field: 'irq_set.count' },
    { name: 'start + count wrapping 32 bits', request: req(F.DATA_NONE | F.ACTION_TRIGGER, X, 1, 0xffffffff), fds: 0, field: 'irq_set.count' },
    { name: 'start at the 32-bit limit', request: req(F.DATA_NONE | F.ACTION_TRIGGER, X, 0xffffffff, 2), fds: 0, field: 'irq_set.start' },
    { name: 'a negative start', request: req(F.DATA_NONE | F.ACTION_TRIGGER, X, -1, 1), fds: 0, field: 'irq_set.start' },
    { name: 'count 0 with start 1', request: req(F.DATA_NONE | F.ACTION_TRIGGER, X, 1, 0), fds: 0, field: 'irq_set.start' },
    { name: 'count 0 de-assigning nothing', request: req(TRIGGER_FD, X, 0, 0), fds: 0, field: 'irq_set.count' },
    { name: 'count 0 masking', request: req(F.DATA_NONE | F.ACTION_MASK, X, 0, 0), fds: 0, field: 'irq_set.count' },
    { name: 'DATA_BOOL shorter than count', request: req(F.DATA_BOOL | F.ACTION_TRIGGER, X, 0, 4, [1, 1, 1]), fds: 0, field: 'irq_set.data' },
    { name: 'fds with DATA_NONE', request: req(F.DATA_NONE | F.ACTION_TRIGGER, X, 0, 1), fds: 1, field: 'fds' },
    { name: 'fds with DATA_BOOL', request: req(F.DATA_BOOL | F.ACTION_MASK, X, 0, 1, [1]), fds: 1, field: 'fds' },
    { name: 'fewer fds than count', request: req(TRIGGER_FD, X, 0, 3), fds: 2, field: 'fds' },
    { name: 'more fds than count', request: req(TRIGGER_FD, X, 0, 1), fds: 2, field: 'fds' },
    { name: 'masking ERR', request: req(F.DATA_NONE | F.ACTION_MASK, PciIrq.ERR, 0, 1), fds: 0, field: 'irq_set.flags' },
    { name: 'an unmask eventfd for REQ', request: req(F.DATA_EVENTFD | F.ACTION_UNMASK, PciIrq.REQ, 0, 1), fds: 1, field: 'irq_set.flags' },
  ];

  for (const c of cases) {
    it(`EINVAL on ${c.name}, closing the fds sent along`, () => {
      const { d, state, enable } = msixDevice();
      enable();
      const e = eventfds(c.fds);
      const err = thrown(() => state.setIrqs(c.request, e.map((x) => x.given)));
      expect({ code: err.code, field: err.field }).toEqual({ code: 'EINVAL', field: c.field });
      for (const x of e) expectClosed(x.given);
      // Nothing was applied: no vector got an eventfd.
      for (let v = 0; v < 8; v++) d.irq.raise(v);
      expect(state.stats.signalled[PciIrq.MSIX]).toBe(0);
    });
  }

  it('EINVAL naming fds for an fd that is not an eventfd; every fd of the request is closed', () => {
    const { state } = msixDevice();
    const [readEnd, writeEnd] = pipe();
    const good = eventfd();
    const err = thrown(() => state.setIrqs(req(TRIGGER_FD, PciIrq.MSIX, 0, 2), [good.given, readEnd]));
    expect({ code: err.code, field: err.field }).toEqual({ code: 'EINVAL', field: 'fds' });
    expectClosed(good.given);
    expect(isOpen(readEnd)).toBe(false);
    closeFd(writeEnd);
  });

  it('EBADF naming fds for an fd that is not open', () => {
    const { state } = msixDevice();
    const good = eventfd();
    const err = thrown(() => state.setIrqs(req(TRIGGER_FD, PciIrq.MSIX, 0, 2), [good.given, 2 ** 30]));
    expect({ code: err.code, field: err.field }).toEqual({ code: 'EBADF', field: 'fds' });
    expectClosed(good.given);
  });

  it('EINVAL for an fd given twice, closed once', () => {
    const { state } = msixDevice();
    const e = eventfd();
    const err = thrown(() => state.setIrqs(req(TRIGGER_FD, PciIrq.MSIX, 0, 2), [e.given, e.given]));
    expect({ code: err.code, field: err.field }).toEqual({ code: 'EINVAL', field: 'fds' });
    expectClosed(e.given);
  });

  it('EINVAL for an fd the state already holds, which stays assigned and open', () => {
    const { d, state, enable } = msixDevice();
    enable();
    const [held, fresh] = eventfds(2);
    state.setIrqs(req(TRIGGER_FD, PciIrq.MSIX, 0, 1), [held!.given]);
    const err = thrown(() => state.setIrqs(req(TRIGGER_FD, PciIrq.MSIX, 1, 2), [fresh!.given, held!.given]));
    expect({ code: err.code, field: err.field }).toEqual({ code: 'EINVAL', field: 'fds' });
    expectClosed(fresh!.given);
    expect(isOpen(held!.given)).toBe(true);
    d.irq.raise(0);
    expect(take(held!.peer)).toBe(1);
  });
});

// ---- disconnect -------------------------------------------------------------------------------

describe('disconnect', () => {
  it('closes every eventfd, keeps the device state, and is idempotent', () => {
    const { d, state, bar0, cfg, raise } = edu();
    const e = eventfds(6);
    state.setIrqs(req(TRIGGER_FD, PciIrq.INTX, 0, 1), [e[0]!.given]);
    state.setIrqs(req(F.DATA_EVENTFD | F.ACTION_MASK, PciIrq.INTX, 0, 1), [e[1]!.given]);
    state.setIrqs(req(F.DATA_EVENTFD | F.ACTION_UNMASK, PciIrq.INTX, 0, 1), [e[2]!.given]);
    state.setIrqs(req(TRIGGER_FD, PciIrq.MSI, 0, 1), [e[3]!.given]);
    state.setIrqs(req(TRIGGER_FD, PciIrq.ERR, 0, 1), [e[4]!.given]);
    state.setIrqs(req(TRIGGER_FD, PciIrq.REQ, 0, 1), [e[5]!.given]);
    raise();
    expect(take(e[0]!.peer)).toBe(1);
    state.disconnect();
    for (const x of e) expectClosed(x.given);
    state.disconnect();
    // The device keeps its interrupt state: the raised bit and the asserted line.
    expect(readInt(bar0, EDU.IRQ_STATUS, 4)).toBe(EDU.IRQ_FACTORIAL);
    expect(d.irq.intxAsserted).toBe(true);
    expect(readInt(cfg, PCI.STATUS, 2) & PCI_STATUS.INTERRUPT).toBe(PCI_STATUS.INTERRUPT);
    // Detached: device interrupts no longer reach the old state.
    const before = { ...state.stats };
    writeInt(cfg, PCI.COMMAND, 2, PCI_COMMAND.INTX_DISABLE);
    writeInt(cfg, PCI.COMMAND, 2, 0);
    expect(state.stats).toEqual(before);
    expect(state.requestRelease()).toBe(false);
  });

  it('refuses requests afterwards with ENOTCONN, closing their fds', () => {
    const { state } = edu();
    state.disconnect();
    const e = eventfd();
    const err = thrown(() => state.setIrqs(req(TRIGGER_FD, PciIrq.INTX, 0, 1), [e.given]));
    expect(err.code).toBe('ENOTCONN');
    expectClosed(e.given);
  });

  it('lets a reconnecting client pick up the asserted line', () => {
    const { d, state, raise } = edu();
    raise();
    state.disconnect();
    const next = track(new VfioIrqState(d));
    next.attach(); // replays the asserted level: no trigger yet, so it is dropped
    const t = eventfd();
    next.setIrqs(req(TRIGGER_FD, PciIrq.INTX, 0, 1), [t.given]);
    expect(take(t.peer)).toBe(1);
  });
});
