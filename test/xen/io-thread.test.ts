// The ioreq engine's I/O thread, through the simulator: it takes over after a run of ioreqs that
// need no JS, serves them off the event loop, and hands the engine back — with the ioreq it took —
// at the first one that needs JS or sits behind buffered writes; JS takes it back on demand.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EduDevice, EDU } from '../../examples/edu/index.js';
import { SharedMemoryDevice, SHMEM } from '../../examples/shmem/index.js';
import { IoreqServer } from '../../adapters/xen/ioreq-server.js';
import { SimHypervisor } from '../../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../../adapters/xen/sim/host.js';
import { SimVcpuThread } from '../../adapters/xen/sim/vcpu-thread.js';
import { PCI, PCI_COMMAND } from '../../src/pci/constants.js';
import { IoreqType, pciSbdf } from '../../adapters/xen/ioreq-abi.js';
import { HostileXen } from './hostile-xen.js';

const BAR = 0xfe000000n;
const PCI_ADDR = { segment: 0, bus: 0, device: 5, fn: 0 };
const SBDF = pciSbdf(0, 0, 5, 0);

let hv: SimHypervisor;
let host: SimXenHost;
let vcpu: SimVcpuThread;
let server: IoreqServer | null = null;

beforeEach(async () => {
  hv = new SimHypervisor({ nrVcpus: 2, ramBytes: 16 << 20, vcpuTimeoutMs: 5000 });
  host = new SimXenHost(hv);
  vcpu = await SimVcpuThread.start(hv.vcpuDescriptor(1), { timeoutMs: 5000 });
});
afterEach(async () => {
  server?.stop();
  server = null;
  await vcpu.close();
  host.close();
  hv.close();
});

const mmio = (addr: bigint, size: 1 | 2 | 4 | 8, data?: bigint) => vcpu.access({ space: 'mmio', addr, size, dir: data === undefined ? 'read' : 'write', ...(data === undefined ? {} : { data }) });
const cfgWrite = (reg: number, size: 1 | 2 | 4, data: number) => vcpu.access({ space: 'pci', addr: (BigInt(SBDF) << 32n) | BigInt(reg), size, dir: 'write', data: BigInt(data) });
const stats = () => server!.engineStats() as Record<'ioreqs' | 'native' | 'js' | 'bad' | 'threadIoreqs' | 'toThread' | 'toLoop', number>;

async function eduServer(ioThread?: boolean): Promise<EduDevice> {
  const device = new EduDevice();
  server = new IoreqServer(device, host, { pci: PCI_ADDR, fixedBars: { 0: BAR }, ...(ioThread === undefined ? {} : { ioThread }) });
  server.start();
  await cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
  return device;
}

async function readIds(n: number): Promise<void> {
  for (let i = 0; i < n; i++) expect(await mmio(BAR + BigInt(EDU.ID), 4)).toBe(BigInt(EDU.ID_VALUE));
}

describe('ioreq engine I/O thread (simulator)', () => {
  it('serves native registers on its thread, hands a JS-handled ioreq back to the loop, and takes over again', async () => {
    await eduServer();
    await readIds(300);
    const first = stats();
    expect(first.toThread).toBeGreaterThanOrEqual(1);
    expect(first.threadIoreqs).toBeGreaterThan(200);
    // A hooked register (edu computes n! in a JS write hook): taken on the thread, served by the loop.
    await mmio(BAR + BigInt(EDU.FACTORIAL), 4, 6n);
    expect(await mmio(BAR + BigInt(EDU.FACTORIAL), 4)).toBe(720n);
    const back = stats();
    expect(back.toLoop).toBeGreaterThanOrEqual(1);
    expect(back.js).toBeGreaterThan(first.js);
    await readIds(300);
    const again = stats();
    expect(again.toThread).toBeGreaterThan(back.toThread);
    expect(again.threadIoreqs).toBeGreaterThan(back.threadIoreqs + 200);
    expect(again.bad).toBe(0);
    expect(again.ioreqs).toBe(again.native + again.js);
  });

  it('stays on the loop with ioThread: false', async () => {
    await eduServer(false);
    await readIds(300);
    expect(stats()).toMatchObject({ threadIoreqs: 0, toThread: 0, toLoop: 0 });
    expect(stats().native).toBeGreaterThanOrEqual(300);
  });

  it('JS takes the engine back on demand: busy polling, BAR moves, and a stop while the thread owns it', async () => {
    await eduServer();
    await readIds(200);
    expect(stats().toThread).toBeGreaterThanOrEqual(1);
    server!.setBusyPoll(true); // the loop's: the thread lets go and does not take over meanwhile
    const spinner = await SimVcpuThread.start(hv.vcpuDescriptor(0), { timeoutMs: 5000, busyPoll: true });
    try {
      const during = stats().threadIoreqs;
      for (let i = 0; i < 100; i++) expect(await spinner.access({ space: 'mmio', addr: BAR + BigInt(EDU.ID), size: 4, dir: 'read' })).toBe(BigInt(EDU.ID_VALUE));
      expect(stats().threadIoreqs).toBe(during);
    } finally {
      await spinner.close();
    }
    server!.setBusyPoll(false);
    await readIds(200);
    // Moving the BAR changes the engine's ranges (the thread routes with them): the old address is
    // no longer claimed, the new one is served — by the thread again after a while.
    await cfgWrite(PCI.BAR0, 4, 0xfd000000);
    expect(await mmio(BAR + BigInt(EDU.ID), 4)).toBe(0xffffffffn);
    for (let i = 0; i < 200; i++) expect(await mmio(0xfd000000n + BigInt(EDU.ID), 4)).toBe(BigInt(EDU.ID_VALUE));
    const owned = stats();
    expect(owned.threadIoreqs).toBeGreaterThan(0);
    // Stopping while the thread owns the engine: it lets go and the server tears down at once.
    server!.stop();
    server = null;
  });

  it('keeps buffered writes ahead of the synchronous ioreq that follows them', async () => {
    // Buffered ioreqs carry 20-bit addresses: a small guest leaves 0xa0000 to MMIO.
    const small = new SimHypervisor({ nrVcpus: 1, ramBytes: 512 << 10, vcpuTimeoutMs: 5000 });
    const smallHost = new SimXenHost(small);
    const cpu = await SimVcpuThread.start(small.vcpuDescriptor(0), { timeoutMs: 5000 });
    const device = new SharedMemoryDevice();
    const s = new IoreqServer(device, smallHost, { fixedBars: { 0: 0xa0000n }, bufioreq: 'atomic' });
    const read = (reg: number) => cpu.access({ space: 'mmio', addr: 0xa0000n + BigInt(reg), size: 4, dir: 'read' });
    try {
      s.start();
      for (let round = 0; round < 20; round++) {
        // A run of native reads hands the engine to the thread; then a buffered write and, right
        // behind it, a synchronous read of the same register: the read must see the write.
        for (let i = 0; i < 80; i++) expect(await read(SHMEM.SHARED_SIZE)).toBe(BigInt(SHMEM.SHARED_BYTES));
        expect(await cpu.bufferedWrite(0xa0000n + BigInt(SHMEM.INTR_MASK), 4, BigInt(round + 1))).toBe('buffered');
        expect(await read(SHMEM.INTR_MASK)).toBe(BigInt(round + 1));
      }
      const st = s.engineStats();
      // The thread takes over after 64 native ioreqs in a row: ~16 of each round's 80 are its.
      expect(st['toThread']).toBeGreaterThanOrEqual(15);
      expect(st['threadIoreqs']).toBeGreaterThan(250);
      expect(st['buffered']).toBe(20);
      expect(st['bad']).toBe(0);
    } finally {
      s.stop();
      await cpu.close();
      smallHost.close();
      small.close();
      device.shared.release();
      device.mailbox.release();
    }
  });

  it('serves a synchronous ioreq after the buffered writes published before it, even when their notification has not been seen', async () => {
    // Xen publishes a buffered write, then the vCPU's next synchronous ioreq; the thread may see
    // the synchronous one first (both notifications pending, or the buffered one late). Played
    // here by writing the ring entry without ringing the buffered doorbell.
    const small = new SimHypervisor({ nrVcpus: 1, ramBytes: 512 << 10, vcpuTimeoutMs: 5000 });
    const smallHost = new SimXenHost(small);
    const device = new SharedMemoryDevice();
    const s = new IoreqServer(device, smallHost, { fixedBars: { 0: 0xa0000n }, bufioreq: 'atomic' });
    let xen: HostileXen | null = null;
    try {
      s.start();
      xen = new HostileXen(small, s.id);
      const read = (reg: number) => xen!.access(0, { type: IoreqType.COPY, addr: 0xa0000n + BigInt(reg), size: 4, read: true });
      for (let round = 1; round <= 5; round++) {
        for (let i = 0; i < 80; i++) expect(await read(SHMEM.SHARED_SIZE)).toBe(BigInt(SHMEM.SHARED_BYTES));
        const wp = xen.writePointer;
        xen.putEntry(wp, { type: IoreqType.COPY, sizeCode: 2, addr: 0xa0000 + SHMEM.INTR_MASK, data: 0x50 + round });
        xen.setPointers(xen.readPointer, wp + 1);
        expect(await read(SHMEM.INTR_MASK)).toBe(BigInt(0x50 + round));
      }
      const st = s.engineStats();
      expect(st['toThread']).toBeGreaterThanOrEqual(5);
      expect(st['buffered']).toBe(5);
    } finally {
      xen?.close();
      s.stop();
      smallHost.close();
      small.close();
      device.shared.release();
      device.mailbox.release();
    }
  });
});
