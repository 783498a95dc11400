// End to end over real sockets: `mdevkit serve` in its own process, the vfio-user client in this
// one (as a VMM would be). Covers every command, fd passing, mmap regions seen from both sides,
// DMA both ways (fd-backed and message-based, both layouts, twin socket or not), interrupts on
// eventfds, DMA logging, errors, disconnect and reconnect, and two devices in one process.
import { statSync, existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VfioUserClient } from '../../adapters/vfio/client.js';
import { Command, DeviceFlag, Feature, IrqInfoFlag, IrqSetFlag, PciIrq, RegionFlag } from '../../adapters/vfio/protocol.js';
import { EDU } from '../../examples/edu/index.js';
import { SHMEM } from '../../examples/shmem/index.js';
import { packageRoot } from '../../src/native/binding.js';
import { closeFd, eventfdCreate, eventfdRead } from '../../src/native/fd.js';
import { PCI, PCI_COMMAND, PCI_MSI, PCI_MSIX } from '../../src/pci/constants.js';
import { formatLspci } from '../../src/pci/lspci.js';
import { startServer, type ServerProcess } from './harness.js';

const errno = (code: string) => expect.objectContaining({ code });

function enableDecodeAndMaster(c: VfioUserClient, bar0?: number): void {
  if (bar0 !== undefined) c.cfgWrite(PCI.BAR0, 4, bar0);
  c.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
}

/**
 * Waits for edu's DMA engine as a driver must (the start bit clears when the transfer is done):
 * DMA through messages completes after the write that started it has been answered.
 */
function waitDmaDone(c: VfioUserClient): void {
  for (let i = 0; i < 10_000; i++) if ((BigInt(c.mmioRead(0, EDU.DMA_CMD, 8)) & BigInt(EDU.DMA_START)) === 0n) return;
  throw new Error('edu DMA did not complete');
}

describe('edu over vfio-user', () => {
  let server: ServerProcess;
  let c: VfioUserClient;
  beforeAll(async () => {
    server = await startServer({ device: 'edu' });
    c = VfioUserClient.connect(server.paths[0]!, { timeoutMs: 5000 });
  });
  afterAll(async () => {
    c.close();
    expect(await server.stop()).toBe(0);
    expect(existsSync(server.paths[0]!)).toBe(false);
  });

  it('creates an owner-only socket and negotiates version and capabilities', () => {
    expect(statSync(server.paths[0]!).mode & 0o777).toBe(0o600);
    expect(c.version).toEqual({ major: 0, minor: 0 });
    expect(c.serverCapabilities).toMatchObject({ maxMsgFds: 16, maxDataXferSize: 1 << 20, pgsizes: 4096, writeMultiple: true });
  });

  it('reports device, region and IRQ information honestly', () => {
    expect(c.deviceInfo()).toMatchObject({ flags: DeviceFlag.PCI | DeviceFlag.RESET, numRegions: 9, numIrqs: 5 });
    const bar0 = c.regionInfo(0);
    expect(bar0).toMatchObject({ flags: RegionFlag.READ | RegionFlag.WRITE, size: 1n << 20n, fd: null, sparse: false });
    expect(c.regionInfo(1)).toMatchObject({ flags: 0, size: 0n });
    expect(c.regionInfo(6)).toMatchObject({ flags: 0, size: 0n }); // no ROM
    expect(c.regionInfo(7)).toMatchObject({ flags: RegionFlag.READ | RegionFlag.WRITE, size: 256n });
    expect(c.regionInfo(8)).toMatchObject({ size: 0n });
    expect(() => c.regionInfo(9)).toThrow(errno('EINVAL'));
    expect(c.irqInfo(PciIrq.INTX)).toMatchObject({ count: 1, flags: IrqInfoFlag.EVENTFD | IrqInfoFlag.MASKABLE | IrqInfoFlag.AUTOMASKED });
    expect(c.irqInfo(PciIrq.MSI)).toMatchObject({ count: 1, flags: IrqInfoFlag.EVENTFD | IrqInfoFlag.NORESIZE });
    expect(c.irqInfo(PciIrq.MSIX)).toMatchObject({ count: 0 });
    expect(c.irqInfo(PciIrq.ERR)).toMatchObject({ count: 1 });
    expect(c.irqInfo(PciIrq.REQ)).toMatchObject({ count: 1 });
    expect(() => c.irqInfo(5)).toThrow(errno('EINVAL'));
    expect(c.regionIoFds(0)).toMatchObject({ subRegions: [], fds: [] }); // honest: no ioeventfds offered
  });

  it('config space decodes over the wire exactly as locally', () => {
    const remote = formatLspci(c.configAccessor, { configSize: 256 });
    const local = execFileSync(process.execPath, [join(packageRoot(), 'dist/cli/main.js'), 'lspci', 'edu']).toString();
    expect(local.startsWith(remote)).toBe(true);
  });

  it('serves trapped registers (native and JS-hooked) through REGION_READ/WRITE', () => {
    expect(c.mmioRead(0, EDU.ID, 4)).toBe(EDU.ID_VALUE);
    c.mmioWrite(0, EDU.LIVENESS, 4, 0x12345678);
    expect(c.mmioRead(0, EDU.LIVENESS, 4)).toBe(~0x12345678 >>> 0);
    c.mmioWrite(0, EDU.FACTORIAL, 4, 10);
    expect(c.mmioRead(0, EDU.FACTORIAL, 4)).toBe(3628800);
    c.mmioWrite(0, EDU.DMA_SRC, 8, 0x1122334455667788n);
    expect(c.mmioRead(0, EDU.DMA_SRC, 8)).toBe(0x1122334455667788n);
    expect(c.mmioRead(0, 0x80000, 4)).toBe(0); // unimplemented space reads 0
    const big = c.regionRead(0, 0, 0x100); // a wide read covers many registers at once
    expect(Buffer.from(big).readUInt32LE(0)).toBe(EDU.ID_VALUE);
  });

  it('refuses bad region accesses with errno replies', () => {
    expect(() => c.regionRead(0, (1 << 20) - 2, 4)).toThrow(errno('EINVAL'));
    expect(() => c.regionRead(3, 0, 4)).toThrow(errno('EINVAL'));
    expect(() => c.regionRead(7, 254, 4)).toThrow(errno('EINVAL'));
    expect(() => c.regionWrite(0, 2n ** 63n, new Uint8Array(4))).toThrow(errno('EINVAL'));
    const tooBig = new Uint8Array(16);
    new DataView(tooBig.buffer).setUint32(12, (1 << 20) + 1, true);
    expect(() => c.request(Command.REGION_READ, tooBig)).toThrow(errno('E2BIG'));
    expect(() => c.request(99, new Uint8Array(0))).toThrow(errno('ENOSYS'));
    expect(() => c.request(Command.DMA_READ, new Uint8Array(16))).toThrow(errno('EINVAL'));
    expect(() => c.request(Command.VERSION, new Uint8Array(4))).toThrow(errno('EINVAL'));
    expect(() => c.request(Command.MIG_DATA_READ, new Uint8Array(8))).toThrow(errno('EINVAL')); // not saving (RUNNING)
    const fd = eventfdCreate();
    expect(() => c.request(Command.DEVICE_GET_INFO, new Uint8Array(16), { fds: [fd] })).toThrow(errno('EINVAL'));
    closeFd(fd);
    // The session survives all of it.
    expect(c.mmioRead(0, EDU.ID, 4)).toBe(EDU.ID_VALUE);
  });

  it('coalesced writes (REGION_WRITE_MULTI) apply in order', () => {
    const n = c.writeMulti([
      { region: 0, offset: EDU.LIVENESS, data: new Uint8Array([1, 0, 0, 0]) },
      { region: 0, offset: EDU.FACTORIAL, data: new Uint8Array([5, 0, 0, 0]) },
    ]);
    expect(n).toBe(2);
    expect(c.mmioRead(0, EDU.FACTORIAL, 4)).toBe(120);
  });

  for (const withFd of [true, false]) {
    it(`DMA both ways through guest RAM ${withFd ? 'shared by fd (mmapped by the server)' : 'without an fd (DMA_READ/DMA_WRITE messages)'}`, () => {
      const base = withFd ? 0x100000 : 0x400000;
      const ram = c.addGuestRam(base, 0x10000, { withFd });
      enableDecodeAndMaster(c);
      ram.bytes.set([9, 8, 7, 6, 5], 0x300);
      c.mmioWrite(0, EDU.DMA_SRC, 8, BigInt(base + 0x300));
      c.mmioWrite(0, EDU.DMA_DST, 8, BigInt(EDU.DMA_BUFFER));
      c.mmioWrite(0, EDU.DMA_COUNT, 8, 5n);
      c.mmioWrite(0, EDU.DMA_CMD, 8, BigInt(EDU.DMA_START));
      waitDmaDone(c);
      expect([...c.regionRead(0, EDU.DMA_BUFFER, 5)]).toEqual([9, 8, 7, 6, 5]);
      c.mmioWrite(0, EDU.DMA_SRC, 8, BigInt(EDU.DMA_BUFFER));
      c.mmioWrite(0, EDU.DMA_DST, 8, BigInt(base + 0xffe)); // straddles a page
      c.mmioWrite(0, EDU.DMA_CMD, 8, BigInt(EDU.DMA_START | EDU.DMA_TO_RAM));
      waitDmaDone(c);
      expect([...ram.bytes.subarray(0xffe, 0x1003)]).toEqual([9, 8, 7, 6, 5]);
      if (!withFd) expect(c.dmaStats).toMatchObject({ reads: expect.any(Number), writes: expect.any(Number) });
      c.removeGuestRam(base, 0x10000);
    });
  }

  it('DMA windows: overlap is EEXIST, unmap must match exactly, bad flags are EINVAL', () => {
    c.addGuestRam(0x800000, 0x2000);
    expect(() => c.dmaMap({ address: 0x801000, size: 0x1000, flags: 3 })).toThrow(errno('EEXIST'));
    expect(() => c.dmaUnmap({ address: 0x800000, size: 0x1000 })).toThrow(errno('EINVAL'));
    expect(() => c.dmaUnmap({ address: 0x900000, size: 0x1000 })).toThrow(errno('ENOENT'));
    expect(() => c.dmaMap({ address: 0xa00000, size: 0x1000, flags: 0x80 })).toThrow(errno('EINVAL'));
    expect(() => c.dmaMap({ address: 0xa00001, size: 0x1000, flags: 3 })).toThrow(errno('EINVAL'));
    c.removeGuestRam(0x800000, 0x2000);
  });

  it('INTx: triggers its eventfd, auto-masks, and unmasks', () => {
    const { trigger } = c.enableIntx();
    c.mmioWrite(0, EDU.IRQ_RAISE, 4, 1);
    expect(c.waitForInterrupt(trigger, 5000)).toBe(1n);
    c.mmioWrite(0, EDU.IRQ_ACK, 4, 1);
    c.mmioWrite(0, EDU.IRQ_RAISE, 4, 1); // auto-masked: not signalled until unmasked
    expect(c.interruptCount(trigger)).toBe(0n);
    c.unmaskIntx(); // the line is still high: fires again
    expect(c.waitForInterrupt(trigger, 5000)).toBe(1n);
    c.mmioWrite(0, EDU.IRQ_ACK, 4, 1);
    c.unmaskIntx();
    c.disableIrqs(PciIrq.INTX);
  });

  it('MSI: the guest enables it in config space, the eventfd fires', () => {
    const msi = 0x48;
    c.cfgWrite(msi + PCI_MSI.ADDRESS_LO, 4, 0xfee00000);
    c.cfgWrite(msi + PCI_MSI.DATA_64, 2, 0x4041);
    c.cfgWrite(msi + PCI_MSI.FLAGS, 2, PCI_MSI.FLAGS_ENABLE);
    const [fd] = c.enableMsi(1);
    c.mmioWrite(0, EDU.IRQ_RAISE, 4, 2);
    expect(c.waitForInterrupt(fd!, 5000)).toBe(1n);
    c.cfgWrite(msi + PCI_MSI.MASK_64, 4, 1); // per-vector mask: held pending
    c.mmioWrite(0, EDU.IRQ_RAISE, 4, 4);
    expect(c.interruptCount(fd!)).toBe(0n);
    c.cfgWrite(msi + PCI_MSI.MASK_64, 4, 0);
    expect(c.waitForInterrupt(fd!, 5000)).toBe(1n);
    c.disableIrqs(PciIrq.MSI);
    c.cfgWrite(msi + PCI_MSI.FLAGS, 2, 0);
  });

  it('SET_IRQS refuses malformed requests', () => {
    expect(() => c.setIrqs(PciIrq.MSI, { flags: IrqSetFlag.DATA_NONE | IrqSetFlag.DATA_BOOL | IrqSetFlag.ACTION_TRIGGER, start: 0, count: 1 })).toThrow(errno('EINVAL'));
    expect(() => c.setIrqs(PciIrq.MSI, { flags: IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER, start: 1, count: 1 })).toThrow(errno('EINVAL'));
    expect(() => c.setIrqs(7, { flags: IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER, start: 0, count: 1 })).toThrow(errno('EINVAL'));
  });

  it('DMA logging reports device writes and clears them', () => {
    const ram = c.addGuestRam(0x200000, 0x10000);
    enableDecodeAndMaster(c);
    expect(c.dmaLoggingStart(4096, [{ iova: 0x200000, length: 0x10000 }])).toBe(4096n);
    c.mmioWrite(0, EDU.DMA_SRC, 8, BigInt(EDU.DMA_BUFFER));
    c.mmioWrite(0, EDU.DMA_DST, 8, 0x203ffen);
    c.mmioWrite(0, EDU.DMA_COUNT, 8, 4n);
    c.mmioWrite(0, EDU.DMA_CMD, 8, BigInt(EDU.DMA_START | EDU.DMA_TO_RAM));
    const bitmap = c.dmaLoggingReport(0x200000, 0x10000, 4096);
    expect(Buffer.from(bitmap).readBigUInt64LE(0)).toBe(0b11000n); // pages 3 and 4
    expect(Buffer.from(c.dmaLoggingReport(0x200000, 0x10000, 4096)).readBigUInt64LE(0)).toBe(0n);
    expect(() => c.dmaLoggingReport(0x900000, 0x1000, 4096)).toThrow(errno('EINVAL'));
    const probe = c.feature(Feature.DMA_LOGGING_START | Feature.PROBE | Feature.SET);
    expect(probe).toBeDefined();
    c.dmaLoggingStop();
    void ram;
    c.removeGuestRam(0x200000, 0x10000);
  });

  it('DEVICE_RESET returns the device to power-on state', () => {
    c.mmioWrite(0, EDU.LIVENESS, 4, 5);
    c.reset();
    expect(c.mmioRead(0, EDU.LIVENESS, 4)).toBe(0);
    expect(c.cfgRead(PCI.COMMAND, 2)).toBe(0);
  });

  it('keeps device state across a reconnect, but drops DMA windows and IRQ fds', () => {
    c.mmioWrite(0, EDU.LIVENESS, 4, 0xf0f0f0f0);
    c.addGuestRam(0x300000, 0x1000);
    c.cfgWrite(0x48 + PCI_MSI.FLAGS, 2, PCI_MSI.FLAGS_ENABLE);
    const mine = eventfdCreate(); // ours, not the client's: it outlives the connection
    c.setIrqs(PciIrq.MSI, { flags: IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER, start: 0, count: 1, fds: [mine] });
    c.close();
    c = VfioUserClient.connect(server.paths[0]!, { timeoutMs: 5000 });
    expect(c.mmioRead(0, EDU.LIVENESS, 4)).toBe(0x0f0f0f0f);
    // The old window is gone: the device's DMA to it fails, so no completion interrupt is raised.
    enableDecodeAndMaster(c);
    c.mmioWrite(0, EDU.IRQ_ACK, 4, 0xffffffff);
    c.mmioWrite(0, EDU.DMA_SRC, 8, 0x300000n);
    c.mmioWrite(0, EDU.DMA_DST, 8, BigInt(EDU.DMA_BUFFER));
    c.mmioWrite(0, EDU.DMA_COUNT, 8, 4n);
    c.mmioWrite(0, EDU.DMA_CMD, 8, BigInt(EDU.DMA_START | EDU.DMA_IRQ));
    expect(c.mmioRead(0, EDU.IRQ_STATUS, 4) & EDU.IRQ_DMA).toBe(0);
    // The old MSI eventfd is no longer signalled (the server closed its copy).
    c.mmioWrite(0, EDU.IRQ_RAISE, 4, 1);
    expect(eventfdRead(mine)).toBeNull();
    closeFd(mine);
  });
});

describe('shmem over vfio-user: mappable, sparse and MSI-X regions', () => {
  let server: ServerProcess;
  let c: VfioUserClient;
  beforeAll(async () => {
    server = await startServer({ device: 'shmem' });
    c = VfioUserClient.connect(server.paths[0]!, { timeoutMs: 5000, twinSocket: true });
  });
  afterAll(async () => {
    c.close();
    expect(await server.stop()).toBe(0);
  });

  it('hands over a region fd: both sides see the same shared memory', () => {
    const info = c.regionInfo(2);
    expect(info.flags).toBe(RegionFlag.READ | RegionFlag.WRITE | RegionFlag.MMAP);
    expect(info.fd).not.toBeNull();
    expect(info.size).toBe(BigInt(SHMEM.SHARED_BYTES));
    const m = c.mapRegion(2);
    m.bytes![0x1234] = 0xab;
    expect(c.regionRead(2, 0x1234, 1)[0]).toBe(0xab); // REGION_READ still works on mappable regions
    c.regionWrite(2, 0x2000, new Uint8Array([1, 2, 3]));
    expect([...m.bytes!.subarray(0x2000, 0x2003)]).toEqual([1, 2, 3]);
  });

  it('describes a sparse region: trapped registers in page 0, mappable pages after', () => {
    const info = c.regionInfo(4);
    expect(info.flags).toBe(RegionFlag.READ | RegionFlag.WRITE | RegionFlag.MMAP | RegionFlag.CAPS);
    expect(info.sparseAreas).toEqual([{ offset: 4096n, size: 3n * 4096n }]);
    const m = c.mapRegion(4);
    expect(m.areas).toHaveLength(1);
    m.areas[0]!.bytes[0] = 0x5a;
    expect(c.regionRead(4, 4096, 1)[0]).toBe(0x5a);
    c.mmioWrite(4, SHMEM.MAILBOX_HEAD, 4, 77);
    expect(c.mmioRead(4, SHMEM.MAILBOX_HEAD, 4)).toBe(77);
    expect(c.regionRead(4, 4092, 8)).toEqual(new Uint8Array([0, 0, 0, 0, 0x5a, 0, 0, 0])); // across the boundary
  });

  it('MSI-X: per-vector eventfds fire on doorbells; the PBA is readable', () => {
    expect(c.irqInfo(PciIrq.MSIX)).toMatchObject({ count: 4, flags: IrqInfoFlag.EVENTFD });
    const msix = 0x48;
    c.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
    c.cfgWrite(msix + PCI_MSIX.FLAGS, 2, PCI_MSIX.FLAGS_ENABLE);
    const fds = c.enableMsix(4);
    c.mmioWrite(0, SHMEM.DOORBELL, 4, 2);
    expect(c.waitForInterrupt(fds[2]!, 5000)).toBe(1n);
    expect(c.interruptCount(fds[0]!)).toBe(0n);
    c.cfgWrite(msix + PCI_MSIX.FLAGS, 2, PCI_MSIX.FLAGS_ENABLE | PCI_MSIX.FLAGS_MASKALL);
    c.mmioWrite(0, SHMEM.DOORBELL, 4, 3);
    expect(c.mmioRead(1, 0x800, 8)).toBe(0b1000n); // pending bit of vector 3
    c.cfgWrite(msix + PCI_MSIX.FLAGS, 2, PCI_MSIX.FLAGS_ENABLE);
    expect(c.waitForInterrupt(fds[3]!, 5000)).toBe(1n);
    c.disableIrqs(PciIrq.MSIX);
  });

  it('twin-socket mode was negotiated', () => {
    expect(c.twinSocket).toBe(true);
  });
});

describe('one server process, two devices; QEMU DMA layout; SIGTERM', () => {
  it('serves independent devices on their own sockets', async () => {
    const server = await startServer({ device: 'edu', sockets: 2, args: ['--dma-layout', 'qemu', '--no-twin-socket'] });
    const a = VfioUserClient.connect(server.paths[0]!, { dmaLayout: 'qemu' });
    const b = VfioUserClient.connect(server.paths[1]!, { dmaLayout: 'qemu', twinSocket: true });
    try {
      a.mmioWrite(0, EDU.LIVENESS, 4, 1);
      b.mmioWrite(0, EDU.LIVENESS, 4, 2);
      expect(a.mmioRead(0, EDU.LIVENESS, 4)).toBe(0xfffffffe);
      expect(b.mmioRead(0, EDU.LIVENESS, 4)).toBe(0xfffffffd);
      expect(b.twinSocket).toBe(false); // the server was told not to offer it
      // Message-based DMA in QEMU's layout, interleaved on the main socket.
      const ram = b.addGuestRam(0x100000, 0x1000, { withFd: false });
      ram.bytes.set([4, 3, 2, 1], 0);
      enableDecodeAndMaster(b);
      b.mmioWrite(0, EDU.DMA_SRC, 8, 0x100000n);
      b.mmioWrite(0, EDU.DMA_DST, 8, BigInt(EDU.DMA_BUFFER));
      b.mmioWrite(0, EDU.DMA_COUNT, 8, 4n);
      b.mmioWrite(0, EDU.DMA_CMD, 8, BigInt(EDU.DMA_START));
      waitDmaDone(b);
      expect([...b.regionRead(0, EDU.DMA_BUFFER, 4)]).toEqual([4, 3, 2, 1]);
      // SIGTERM: the connected client is asked to release the device (REQ), then sees EOF.
      const req = eventfdCreate();
      a.setIrqs(PciIrq.REQ, { flags: IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER, start: 0, count: 1, fds: [req] });
      expect(await server.stop()).toBe(0);
      expect(eventfdRead(req)).toBe(1n); // signalled before the server closed the connection
      closeFd(req);
      expect(() => a.mmioRead(0, EDU.ID, 4)).toThrow(errno('ECONNRESET'));
      for (const p of server.paths) expect(existsSync(p)).toBe(false);
    } finally {
      a.close();
      b.close();
    }
  });
});

describe('mdevkit probe', () => {
  it('lists regions, IRQs and config space, and reads and writes registers', async () => {
    const server = await startServer({ device: 'shmem' });
    const cli = join(packageRoot(), 'dist/cli/main.js');
    const probe = (...args: string[]) => execFileSync(process.execPath, [cli, 'probe', '--vfio-user', server.paths[0]!, ...args]).toString();
    try {
      const listing = probe();
      expect(listing).toContain('vfio-user 0.0 at');
      expect(listing).toMatch(/2 BAR2 +size 1M +READ WRITE MMAP/);
      expect(listing).toMatch(/4 BAR4 +size 16K +READ WRITE MMAP CAPS .*sparse mmap: 1000\+12K/);
      expect(listing).toMatch(/2 MSI-X +count 4 +EVENTFD/);
      expect(listing).toContain('Memory controller [0500]: Device 1af4:1110 (rev 01)');
      expect(listing).toContain('Capabilities: [48] MSI-X: Enable- Count=4 Masked-');
      expect(probe('read', 'bar0', String(SHMEM.SHARED_SIZE))).toBe('0x00100000\n');
      probe('write', 'bar4', '4', '4', '0x1234');
      expect(probe('read', 'bar4', '4')).toBe('0x00001234\n');
      expect(() => execFileSync(process.execPath, [cli, 'probe', '--vfio-user', server.paths[0]!, 'read', 'bar9', '0'], { stdio: 'pipe' })).toThrow(/not a region index or name/);
    } finally {
      expect(await server.stop()).toBe(0);
    }
  });
});
