// Live migration over vfio-user between `mdevkit serve` processes, this process playing the VMM on
// both ends: edu, the vGPU (mid-ring, an interrupt pending) and the Bochs display move with
// pre-copy while the guest keeps running, and the guest-visible state afterwards equals that of a
// device that never moved. Then the failure arcs (source killed mid-stream; a destination fed a
// truncated, corrupt or foreign stream; a load that cannot be undone → ERROR), every arc of the
// state machine on the wire, and what the server does in each state.
import { crc32 } from 'node:zlib';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VfioUserClient } from '../../adapters/vfio/client.js';
import { VfioDriverHost } from '../../adapters/vfio/driver-host.js';
import { migrateDevice } from '../../adapters/vfio/migration-driver.js';
import { migrationPath } from '../../adapters/vfio/migration.js';
import { Command, Feature, Layout, MigState, MigrationFlag } from '../../adapters/vfio/protocol.js';
import { migration as eduMigration } from '../../examples/edu/driver.js';
import { migration as vgpuMigration } from '../../examples/vgpu/driver.js';
import { migration as bochsMigration } from '../../examples/bochs-display/driver.js';
import { BOCHS, DISPI } from '../../examples/bochs-display/index.js';
import { EDU } from '../../examples/edu/index.js';
import type { MigrationGuestDriver } from '../../src/guest-driver.js';
import { packageRoot } from '../../src/native/binding.js';
import { PCI, PCI_COMMAND } from '../../src/pci/constants.js';
import { RawConnection, startServer, versionMessage, type ServerProcess } from './harness.js';

const ALL = MigrationFlag.STOP_COPY | MigrationFlag.P2P | MigrationFlag.PRE_COPY;
// ENOTSUP and EOPNOTSUPP are one errno on Linux; the client names it EOPNOTSUPP.
const errno = (code: string) => (code === 'ENOTSUP' ? expect.objectContaining({ errno: 95 }) : expect.objectContaining({ code }));

/** Resolves once the server's stderr matches (its output arrives while the event loop runs). */
async function logged(s: ServerProcess, re: RegExp): Promise<void> {
  for (let i = 0; i < 200 && !re.test(s.stderr()); i++) await new Promise((r) => setTimeout(r, 10));
  expect(s.stderr()).toMatch(re);
}

function connect(s: ServerProcess): VfioUserClient {
  return VfioUserClient.connect(s.paths[0]!, { timeoutMs: 10_000 });
}

/** Reads one stream from a device in STOP_COPY until the short read. */
function readStream(c: VfioUserClient, chunk = 256 * 1024): Uint8Array {
  const parts: Uint8Array[] = [];
  for (;;) {
    const d = c.migDataRead(chunk);
    parts.push(d);
    if (d.length < chunk) return Buffer.concat(parts);
  }
}

/** The driver's two halves on one device that never moves: what the guest should see. */
async function reference(device: string, driver: MigrationGuestDriver): Promise<Record<string, unknown>> {
  const s = await startServer({ device });
  const c = connect(s);
  try {
    const host = new VfioDriverHost(c);
    driver.before(host);
    return driver.after(host);
  } finally {
    c.close();
    await s.stop();
  }
}

describe.each([
  ['edu', eduMigration],
  ['vgpu', vgpuMigration],
  ['bochs-display', bochsMigration],
] as const)('live migration of %s between two servers', (device, driver) => {
  let src: ServerProcess;
  let dst: ServerProcess;
  beforeAll(async () => {
    [src, dst] = await Promise.all([startServer({ device }), startServer({ device })]);
  });
  afterAll(async () => {
    expect(await src.stop()).toBe(0);
    expect(await dst.stop()).toBe(0);
  });

  it('moves the device with pre-copy while the guest runs; the guest then sees what it left', async () => {
    const expected = await reference(device, driver);
    const a = connect(src);
    const b = connect(dst);
    try {
      const srcHost = new VfioDriverHost(a);
      const dstHost = new VfioDriverHost(b);
      const before = driver.before(srcHost);
      // The guest keeps running during pre-copy: it writes VRAM through the VMM's mapping (which
      // never traps) and the device DMAs into guest RAM (which the DMA log reports).
      const vramBar = device === 'vgpu' ? 2 : device === 'bochs-display' ? 0 : null;
      const mark = Uint8Array.from({ length: 4096 }, (_, i) => (i * 7 + 1) & 0xff);
      const markAt = device === 'vgpu' ? 0xf0000 : 15 << 20;
      const onPass = (n: number) => {
        if (n !== 1) return;
        if (vramBar !== null) a.mapRegion(vramBar).bytes!.set(mark, markAt);
        if (device === 'edu') {
          // edu DMA from its buffer into a guest page the `after` half does not use.
          a.mmioWrite(0, EDU.DMA_SRC, 8, BigInt(EDU.DMA_BUFFER + 0x100));
          a.mmioWrite(0, EDU.DMA_DST, 8, BigInt(srcHost.ram.base + 0x9000));
          a.mmioWrite(0, EDU.DMA_COUNT, 8, 256n);
          a.mmioWrite(0, EDU.DMA_CMD, 8, BigInt(EDU.DMA_START | EDU.DMA_TO_RAM));
        }
      };
      const report = migrateDevice(a, b, { onPass, beforeResume: () => dstHost.restoreInterrupts() });
      expect(a.migrationState()).toBe(MigState.STOP);
      expect(b.migrationState()).toBe(MigState.RUNNING);
      expect(report.preCopyPasses.length).toBeGreaterThanOrEqual(2);
      if (vramBar !== null) {
        // The second pass carried the page the guest wrote during the first (and little else).
        expect(report.preCopyPasses[1]).toBeGreaterThanOrEqual(4096);
        expect(report.preCopyPasses[1]).toBeLessThan(3 * 4096);
        expect(Buffer.compare(b.mapRegion(vramBar).bytes!.subarray(markAt, markAt + 4096), mark)).toBe(0);
      } else {
        expect(report.dmaDirtyPages).toBeGreaterThanOrEqual(1);
        expect(Buffer.compare(b.guestRead(BigInt(dstHost.ram.base + 0x9000), 256), a.guestRead(BigInt(srcHost.ram.base + 0x9000), 256))).toBe(0);
      }
      expect(report.streamBytes).toBe(report.preCopyPasses.reduce((x, y) => x + y, 0) + report.stopCopyBytes);
      const after = driver.after(dstHost);
      expect(after).toEqual(expected);
      expect(before).toBeTruthy();
      // The source stays stopped: its BARs refuse accesses, its config space answers.
      expect(() => a.mmioRead(device === 'bochs-display' ? 2 : 0, 0, 4)).toThrow(errno('EINVAL'));
      expect(a.cfgRead(PCI.VENDOR_ID, 2)).toBe(b.cfgRead(PCI.VENDOR_ID, 2));
    } finally {
      a.close();
      b.close();
    }
  });
});

describe('what the guest sees after migration, in detail', () => {
  it('vGPU: ring position, fences in RAM and registers, the pending MSI-X, then the queued work', async () => {
    const r = await reference('vgpu', vgpuMigration);
    expect(r).toMatchObject({ ringHead: 128, ringTail: 192, fence: 2, fenceRam: 2, intStatus: 1, pba: 1, pendingDelivered: true, irq3: true, interrupts: 2, fenceAfter: 3, fenceRamAfter: 3, ringHeadAfter: 192, error: 0 });
  });
  it('edu: registers, DMA buffer, the masked MSI left pending', async () => {
    const r = await reference('edu', eduMigration);
    expect(r).toMatchObject({ liveness: ~0x0badf00d >>> 0, factorial: 362880, irqStatus: 0x40, msiPending: 1, bufferOk: true, pendingDelivered: true, interrupts: 1, irqStatusAfterAck: 0, ramOk: true, factorialAfter: 720, id: EDU.ID_VALUE });
  });
});

describe('migration failures', () => {
  it('source killed mid-stream: the destination refuses the truncated stream and keeps its own state', async () => {
    const [src, dst] = await Promise.all([startServer({ device: 'bochs-display' }), startServer({ device: 'bochs-display' })]);
    const a = connect(src);
    let b = connect(dst);
    try {
      // The destination's device has a state of its own (a mode, a mark in VRAM).
      b.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
      b.mmioWrite(2, BOCHS.DISPI_OFFSET + 2 * DISPI.XRES, 2, 800);
      b.mapRegion(0).bytes!.fill(0x77, 0, 4096);
      // 16 MiB of VRAM, all of it non-zero: a long stream.
      a.mapRegion(0).bytes!.fill(0x3c);
      b.setMigrationState(MigState.RESUMING);
      a.setMigrationState(MigState.STOP_COPY);
      for (let i = 0; i < 3; i++) b.migDataWrite(a.migDataRead(256 * 1024));
      src.proc.kill('SIGKILL');
      expect(() => readStream(a)).toThrow();
      expect(() => b.setMigrationState(MigState.STOP)).toThrow(errno('EINVAL'));
      expect(b.migrationState()).toBe(MigState.RESUMING);
      await logged(dst, /stream refused, the device keeps its state and stays in RESUMING: .*truncated/);
      // The VMM gives up on this destination: it disconnects; the device is as it was.
      b.close();
      b = connect(dst);
      expect(b.migrationState()).toBe(MigState.RUNNING);
      expect(b.mmioRead(2, BOCHS.DISPI_OFFSET + 2 * DISPI.XRES, 2)).toBe(800);
      expect(b.mapRegion(0).bytes!.subarray(0, 4096).every((x) => x === 0x77)).toBe(true);
      expect(b.mapRegion(0).bytes![8192]).toBe(0);
    } finally {
      a.close();
      b.close();
      await src.stop();
      expect(await dst.stop()).toBe(0);
    }
  });

  describe('a destination fed bad streams refuses each, unchanged, and takes a good one after', () => {
    let src: ServerProcess;
    let dst: ServerProcess;
    let a: VfioUserClient;
    let b: VfioUserClient;
    let stream: Buffer;
    beforeAll(async () => {
      [src, dst] = await Promise.all([startServer({ device: 'vgpu' }), startServer({ device: 'vgpu' })]);
      a = connect(src);
      b = connect(dst);
      a.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
      a.mmioWrite(0, 0x038, 4, 0x40); // RING_TAIL
      a.mapRegion(2).bytes!.fill(0x11, 0, 8192);
      a.setMigrationState(MigState.STOP_COPY);
      stream = Buffer.from(readStream(a));
      a.setMigrationState(MigState.RUNNING);
      b.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
      b.mmioWrite(0, 0x038, 4, 0x20);
    });
    afterAll(async () => {
      a.close();
      b.close();
      expect(await src.stop()).toBe(0);
      expect(await dst.stop()).toBe(0);
    });

    /**
     * Feeds `bytes`: the first refusal (a write, or RESUMING → STOP) must be `code`; RESUMING →
     * STOP then fails the same way (a refused write spoils the session until that step), the
     * device stays in RESUMING with its state, and the session is empty again.
     */
    function refused(bytes: Uint8Array, code: string): void {
      b.setMigrationState(MigState.RESUMING);
      let error: unknown = null;
      try {
        for (let i = 0; i < bytes.length; i += 64 * 1024) b.migDataWrite(bytes.subarray(i, i + 64 * 1024));
      } catch (e) {
        error = e;
      }
      expect(() => b.setMigrationState(MigState.STOP)).toThrow(errno(code));
      if (error !== null) expect(error).toEqual(errno(code));
      expect(b.migrationState()).toBe(MigState.RESUMING);
    }

    it('truncated', async () => {
      refused(stream.subarray(0, stream.length - 100), 'EINVAL');
      await logged(dst, /without its END record: truncated/);
    });

    it('corrupt', () => {
      const bad = Buffer.from(stream);
      bad[stream.length >> 1] ^= 0x40;
      refused(bad, 'EBADMSG');
    });

    it('another stream version', async () => {
      const bad = Buffer.from(stream);
      bad.writeUInt16LE(7, 8 + 8); // HEADER payload: magic, then the version
      bad.writeUInt32LE(crc32(bad.subarray(0, 8 + bad.readUInt32LE(4))), 8 + bad.readUInt32LE(4));
      refused(bad, 'ENOTSUP');
      await logged(dst, /migration stream version 7, this build reads 1/);
    });

    it('another device (edu)', async () => {
      const e = await startServer({ device: 'edu' });
      const c = connect(e);
      c.setMigrationState(MigState.STOP_COPY);
      const eduStream = readStream(c);
      c.close();
      await e.stop();
      refused(eduStream, 'EINVAL');
      await logged(dst, /the stream is for 1234:11e8, the device is 1b36:7fa0/);
    });

    it('then a complete stream loads: the device is the source\'s', () => {
      // The refusals left the destination in RESUMING, its own state intact and nothing staged.
      for (let i = 0; i < stream.length; i += 64 * 1024) b.migDataWrite(stream.subarray(i, i + 64 * 1024));
      b.setMigrationState(MigState.RUNNING);
      expect(b.mmioRead(0, 0x038, 4)).toBe(0x40);
      expect(b.mapRegion(2).bytes!.subarray(0, 8192).every((x) => x === 0x11)).toBe(true);
    });
  });

  it('a load that cannot be undone leaves ERROR; only a reset leaves it', async () => {
    const fixture = join(packageRoot(), 'test', 'fixtures', 'fragile-device.mjs');
    const [src, dst] = await Promise.all([startServer({ device: fixture }), startServer({ device: fixture })]);
    const a = connect(src);
    const b = connect(dst);
    try {
      a.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
      a.mmioWrite(0, 0, 4, 1); // poison: the destination's state hook will refuse, and refuse its own state too
      a.setMigrationState(MigState.STOP_COPY);
      const stream = readStream(a);
      b.setMigrationState(MigState.RESUMING);
      b.migDataWrite(stream);
      expect(() => b.setMigrationState(MigState.STOP)).toThrow(errno('EIO'));
      expect(b.migrationState()).toBe(MigState.ERROR);
      await logged(dst, /could not be put back \(ERROR until a device reset\)/);
      for (const s of [MigState.RUNNING, MigState.STOP, MigState.RESUMING, MigState.STOP_COPY, MigState.ERROR]) expect(() => b.setMigrationState(s)).toThrow(errno('EINVAL'));
      expect(() => b.mmioRead(0, 4, 4)).toThrow(errno('EINVAL'));
      b.reset();
      expect(b.migrationState()).toBe(MigState.RUNNING);
      b.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
      b.mmioWrite(0, 4, 4, 5);
      expect(b.mmioRead(0, 4, 4)).toBe(5);
    } finally {
      a.close();
      b.close();
      await src.stop();
      await dst.stop();
    }
  });
});

describe('the migration interface on the wire', () => {
  let s: ServerProcess;
  let c: VfioUserClient;
  let image: Uint8Array;
  beforeAll(async () => {
    s = await startServer({ device: 'edu' });
    c = connect(s);
    c.setMigrationState(MigState.STOP_COPY);
    image = readStream(c);
    c.setMigrationState(MigState.RUNNING);
  });
  afterAll(async () => {
    c.close();
    expect(await s.stop()).toBe(0);
  });

  it('MIGRATION: GET answers STOP_COPY | P2P | PRE_COPY; SET is EINVAL; PROBE succeeds', () => {
    expect(c.migrationFlags()).toBe(BigInt(ALL));
    expect(() => c.feature(Feature.SET | Feature.MIGRATION, new Uint8Array(8))).toThrow(errno('EINVAL'));
    expect(c.feature(Feature.PROBE | Feature.GET | Feature.MIGRATION).flags).toBe(Feature.PROBE | Feature.GET | Feature.MIGRATION);
    expect(() => c.feature(Feature.GET | Feature.MIGRATION, new Uint8Array(0), 12)).toThrow(errno('EINVAL')); // argsz below 16
  });

  it('MIG_DEVICE_STATE: GET answers the state and data_fd -1; a SET is answered with its request', () => {
    const r = c.feature(Feature.GET | Feature.MIG_DEVICE_STATE, new Uint8Array(0), 16);
    expect(r.argsz).toBe(16);
    expect(Buffer.from(r.data).readUInt32LE(0)).toBe(MigState.RUNNING);
    expect(Buffer.from(r.data).readInt32LE(4)).toBe(-1);
    const req = Buffer.alloc(8);
    req.writeUInt32LE(MigState.RUNNING_P2P, 0);
    expect(Buffer.from(c.feature(Feature.SET | Feature.MIG_DEVICE_STATE, req).data).readUInt32LE(0)).toBe(MigState.RUNNING_P2P);
    c.setMigrationState(MigState.RUNNING);
    expect(() => c.feature(Feature.SET | Feature.MIG_DEVICE_STATE, new Uint8Array(4))).toThrow(errno('EINVAL'));
  });

  /**
   * Brings the device to `state` through RUNNING (a reset leaves RESUMING, whose session may hold
   * any part of a stream); in RESUMING the session then holds a complete stream.
   */
  function reach(state: number): void {
    const now = c.migrationState();
    if (now === MigState.ERROR || now === MigState.RESUMING) c.reset();
    c.setMigrationState(MigState.RUNNING);
    c.setMigrationState(state);
    if (state === MigState.RESUMING) c.migDataWrite(image);
  }

  const STATES = [MigState.STOP, MigState.RUNNING, MigState.STOP_COPY, MigState.RESUMING, MigState.RUNNING_P2P, MigState.PRE_COPY, MigState.PRE_COPY_P2P];
  it('every arc between the 7 states, and to ERROR: done as the kernel walks it, or refused with EINVAL and the state unchanged', async () => {
    let done = 0;
    let refusedCount = 0;
    for (const from of STATES) {
      for (const to of [...STATES, MigState.ERROR]) {
        reach(from);
        expect(c.migrationState()).toBe(from);
        let ok: boolean;
        try {
          migrationPath(from, to, ALL);
          ok = true;
        } catch {
          ok = false;
        }
        if (ok) {
          c.setMigrationState(to);
          expect(c.migrationState()).toBe(to);
          done++;
        } else {
          expect(() => c.setMigrationState(to)).toThrow(errno('EINVAL'));
          expect(c.migrationState()).toBe(from);
          refusedCount++;
        }
      }
    }
    expect(done).toBe(49 - 2); // 42 arcs minus STOP_COPY → PRE_COPY(_P2P), plus 7 to itself
    expect(refusedCount).toBe(2 + 7);
    reach(MigState.RUNNING);
    await logged(s, /migration: RUNNING → RUNNING_P2P → STOP → STOP_COPY/);
  });

  it('BARs are refused while the device is stopped; config space is served', () => {
    c.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
    c.mmioWrite(0, EDU.LIVENESS, 4, 1);
    for (const st of [MigState.STOP, MigState.STOP_COPY, MigState.RESUMING]) {
      reach(st);
      expect(() => c.mmioRead(0, EDU.LIVENESS, 4)).toThrow(errno('EINVAL'));
      expect(() => c.mmioWrite(0, EDU.LIVENESS, 4, 2)).toThrow(errno('EINVAL'));
      expect(c.cfgRead(PCI.VENDOR_ID, 2)).toBe(0x1234);
    }
    for (const st of [MigState.RUNNING, MigState.RUNNING_P2P, MigState.PRE_COPY, MigState.PRE_COPY_P2P]) {
      reach(st);
      c.mmioWrite(0, EDU.LIVENESS, 4, st);
      expect(c.mmioRead(0, EDU.LIVENESS, 4)).toBe(~st >>> 0);
    }
    reach(MigState.RUNNING);
  });

  it('MIG_DATA_READ only while saving, MIG_DATA_WRITE only in RESUMING; sizes above max_data_xfer_size are E2BIG', () => {
    reach(MigState.RUNNING);
    expect(() => c.migDataRead(16)).toThrow(errno('EINVAL'));
    expect(() => c.migDataWrite(new Uint8Array(16))).toThrow(errno('EINVAL'));
    reach(MigState.STOP_COPY);
    const big = Buffer.alloc(Layout.migData.data);
    big.writeUInt32LE(Layout.migData.data + (2 << 20), 0);
    big.writeUInt32LE(2 << 20, 4);
    expect(() => c.request(Command.MIG_DATA_READ, big)).toThrow(errno('E2BIG'));
    const small = Buffer.alloc(Layout.migData.data);
    small.writeUInt32LE(8, 0);
    small.writeUInt32LE(64, 4); // argsz cannot hold 64 bytes
    expect(() => c.request(Command.MIG_DATA_READ, small)).toThrow(errno('EINVAL'));
    expect(readStream(c, 4096).length).toBe(image.length); // in 4 KiB reads, the same stream
    expect(c.migDataRead(4096).length).toBe(0); // and nothing after its end
    reach(MigState.RESUMING);
    const w = Buffer.alloc(Layout.migData.data + 4);
    w.writeUInt32LE(w.length, 0);
    w.writeUInt32LE(5, 4); // size does not match the data
    expect(() => c.request(Command.MIG_DATA_WRITE, w)).toThrow(errno('EINVAL'));
    reach(MigState.RUNNING);
  });

  it('RUNNING_P2P: the device does no DMA through VMM messages (where a peer BAR would be)', () => {
    reach(MigState.RUNNING);
    c.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
    const ram = c.addGuestRam(0x40000000n, 0x10000, { withFd: false });
    const dmaToRam = () => {
      c.mmioWrite(0, EDU.DMA_SRC, 8, BigInt(EDU.DMA_BUFFER));
      c.mmioWrite(0, EDU.DMA_DST, 8, 0x40000000n);
      c.mmioWrite(0, EDU.DMA_COUNT, 8, 16n);
      c.mmioWrite(0, EDU.DMA_CMD, 8, BigInt(EDU.DMA_START | EDU.DMA_TO_RAM));
      for (let i = 0; i < 10_000 && (BigInt(c.mmioRead(0, EDU.DMA_CMD, 8)) & 1n) !== 0n; i++) c.serve(1);
    };
    c.mmioWrite(0, EDU.DMA_BUFFER, 4, 0x01020304);
    c.setMigrationState(MigState.RUNNING_P2P);
    dmaToRam();
    expect(ram.bytes.subarray(0, 4).every((x) => x === 0)).toBe(true);
    c.setMigrationState(MigState.RUNNING);
    dmaToRam();
    expect([...ram.bytes.subarray(0, 4)]).toEqual([4, 3, 2, 1]);
    c.removeGuestRam(0x40000000n, 0x10000);
  });

  it('a device reset (DEVICE_RESET, or FLR) returns to RUNNING from any state', () => {
    reach(MigState.PRE_COPY);
    c.reset();
    expect(c.migrationState()).toBe(MigState.RUNNING);
    reach(MigState.RESUMING);
    c.reset();
    expect(c.migrationState()).toBe(MigState.RUNNING);
  });

  it('answers the VERSION capability "migration" when proposed (QEMU, libvfio-user)', async () => {
    const raw = new RawConnection(s.paths[0]!);
    // The server has one client; this one waits its turn: close ours first.
    c.close();
    raw.send(versionMessage({ max_msg_fds: 8, max_data_xfer_size: 1048576, migration: { pgsize: 4096, max_bitmap_size: 268435456 } }));
    const reply = (await raw.next())!;
    const json = JSON.parse(reply.payload.subarray(4, reply.payload.length - 1).toString()) as { capabilities: Record<string, unknown> };
    expect(json.capabilities['migration']).toEqual({ pgsize: 4096 });
    raw.close();
    c = connect(s);
    expect(c.migrationState()).toBe(MigState.RUNNING);
  });
});

describe('--migration', () => {
  it('off: no capability, features and data commands are ENOTSUP; stop-copy alone: no P2P or PRE_COPY states', async () => {
    const off = await startServer({ device: 'edu', args: ['--migration', 'off'] });
    const c = connect(off);
    expect(() => c.migrationFlags()).toThrow(errno('ENOTSUP'));
    expect(() => c.migDataRead(8)).toThrow(errno('ENOTSUP'));
    c.close();
    await off.stop();
    const only = await startServer({ device: 'edu', args: ['--migration', 'stop-copy'] });
    const d = connect(only);
    expect(d.migrationFlags()).toBe(BigInt(MigrationFlag.STOP_COPY));
    expect(() => d.setMigrationState(MigState.PRE_COPY)).toThrow(errno('EINVAL'));
    expect(() => d.setMigrationState(MigState.RUNNING_P2P)).toThrow(errno('EINVAL'));
    d.setMigrationState(MigState.STOP_COPY);
    d.setMigrationState(MigState.RUNNING);
    d.close();
    expect(await only.stop()).toBe(0);
  });
});
