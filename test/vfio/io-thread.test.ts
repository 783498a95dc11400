// The per-connection I/O thread: accesses that need no JS are served on it, everything else goes
// back to the event loop, and the connection moves between the two without losing, reordering or
// duplicating a message — under pipelining, fds, ends of stream and the server's own requests.
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { VfioUserClient } from '../../adapters/vfio/client.js';
import { Command, HeaderFlag } from '../../adapters/vfio/protocol.js';
import { EDU } from '../../examples/edu/index.js';
import { PCI, PCI_COMMAND } from '../../src/pci/constants.js';
import { RawConnection, message, startServer, versionMessage, type ServerProcess } from './harness.js';

function regionRead(id: number, region: number, offset: number, count: number): Uint8Array {
  const p = new Uint8Array(16);
  const v = new DataView(p.buffer);
  v.setBigUint64(0, BigInt(offset), true);
  v.setUint32(8, region, true);
  v.setUint32(12, count, true);
  return message({ command: Command.REGION_READ, msgId: id }, p);
}

function statsPath(): string {
  return join(mkdtempSync(join(tmpdir(), 'mdevkit-io-thread-')), 'stats.json');
}

async function stopWithStats(server: ServerProcess, file: string): Promise<Record<string, number>> {
  expect(await server.stop()).toBe(0);
  return (JSON.parse(readFileSync(file, 'utf8')) as { devices: { connections: Record<string, number> }[] }).devices[0]!.connections;
}

describe('the I/O thread', () => {
  it('pipelined native and JS accesses, interleaved: every reply in order and correct; the thread served many of them', async () => {
    const stats = statsPath();
    const s = await startServer({ device: 'edu', args: ['--stats', stats] });
    const c = new RawConnection(s.paths[0]!);
    c.send(versionMessage());
    await c.next();
    const n = 2000;
    const batch: Uint8Array[] = [];
    // Every 150th access is config space (JS); the rest the native ID register.
    for (let i = 0; i < n; i++) batch.push(i % 150 === 149 ? regionRead(1 + i, 7, 0, 4) : regionRead(1 + i, 0, EDU.ID, 4));
    // In pieces, so some requests arrive while the thread owns the connection and some while the loop does.
    for (let k = 0; k < n; k += 97) {
      const part = batch.slice(k, k + 97);
      const bytes = new Uint8Array(part.length * 32);
      part.forEach((b, i) => bytes.set(b, i * 32));
      c.send(bytes);
      for (let i = k; i < Math.min(n, k + 97); i++) {
        const r = await c.next();
        expect(r?.header).toMatchObject({ msgId: (1 + i) & 0xffff, flags: HeaderFlag.TYPE_REPLY });
        expect(r!.payload.readUInt32LE(16)).toBe(i % 150 === 149 ? 0x11e81234 : EDU.ID_VALUE);
      }
    }
    c.close();
    const conn = await stopWithStats(s, stats);
    expect(conn['messages']).toBe(n + 1);
    expect(conn['threadMessages']).toBeGreaterThan(n / 5);
    expect(conn['toThread']).toBeGreaterThanOrEqual(2);
  });

  it('fds, DMA through messages and a device reset reach the loop and are served, with the thread taking over in between', async () => {
    const stats = statsPath();
    const server = await startServer({ device: 'edu', args: ['--stats', stats] });
    const c = VfioUserClient.connect(server.paths[0]!, { emulate: 'qemu' });
    try {
      c.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
      for (let round = 0; round < 3; round++) {
        for (let i = 0; i < 200; i++) expect(c.mmioRead(0, EDU.ID, 4)).toBe(EDU.ID_VALUE);
        // DMA_MAP with an fd (fd-backed RAM) and without (DMA through messages).
        const shared = c.addGuestRam(0x100000 * (round + 1), 0x1000, { withFd: true });
        const viaMessages = c.addGuestRam(0x800000 + 0x100000 * round, 0x1000, { withFd: false });
        shared.bytes.set([round, 1, 2, 3], 0);
        for (let i = 0; i < 100; i++) c.mmioRead(0, EDU.ID, 4);
        c.mmioWrite(0, EDU.DMA_SRC, 8, BigInt(0x100000 * (round + 1)));
        c.mmioWrite(0, EDU.DMA_DST, 8, BigInt(EDU.DMA_BUFFER));
        c.mmioWrite(0, EDU.DMA_COUNT, 8, 4n);
        c.mmioWrite(0, EDU.DMA_CMD, 8, BigInt(EDU.DMA_START));
        c.mmioWrite(0, EDU.DMA_SRC, 8, BigInt(EDU.DMA_BUFFER));
        c.mmioWrite(0, EDU.DMA_DST, 8, BigInt(0x800000 + 0x100000 * round));
        c.mmioWrite(0, EDU.DMA_CMD, 8, BigInt(EDU.DMA_START | EDU.DMA_TO_RAM));
        for (let i = 0; i < 10_000 && (BigInt(c.mmioRead(0, EDU.DMA_CMD, 8)) & 1n) !== 0n; i++);
        expect([...viaMessages.bytes.subarray(0, 4)]).toEqual([round, 1, 2, 3]);
        c.removeGuestRam(0x100000 * (round + 1), 0x1000);
        c.removeGuestRam(0x800000 + 0x100000 * round, 0x1000);
      }
      c.mmioWrite(0, EDU.LIVENESS, 4, 5);
      c.reset();
      expect(c.mmioRead(0, EDU.LIVENESS, 4)).toBe(0);
    } finally {
      c.close();
    }
    const conn = await stopWithStats(server, stats);
    expect(conn['toThread']).toBeGreaterThanOrEqual(3);
    expect(conn['toLoop']).toBeGreaterThanOrEqual(3);
  });

  it('SIGTERM while the thread owns an idle connection: EOF to the client (no reset), exit 0', async () => {
    const server = await startServer({ device: 'edu' });
    const c = new RawConnection(server.paths[0]!);
    c.send(versionMessage());
    await c.next();
    for (let i = 0; i < 300; i++) {
      c.send(regionRead(10 + i, 0, EDU.ID, 4));
      expect((await c.next())?.payload.readUInt32LE(16)).toBe(EDU.ID_VALUE);
    }
    server.proc.kill('SIGTERM');
    expect(await c.next()).toBeNull();
    expect(c.reset).toBe(false);
    c.close();
    expect(await server.stop()).toBe(0);
  });

  it('a client that ends while the thread owns the connection: the next client is served', async () => {
    const server = await startServer({ device: 'edu' });
    const a = new RawConnection(server.paths[0]!);
    a.send(versionMessage());
    await a.next();
    for (let i = 0; i < 300; i++) {
      a.send(regionRead(10 + i, 0, EDU.ID, 4));
      await a.next();
    }
    const b = new RawConnection(server.paths[0]!);
    b.send(versionMessage(undefined, 9));
    const reply = b.next();
    a.close();
    expect((await reply)?.header).toMatchObject({ msgId: 9, flags: HeaderFlag.TYPE_REPLY });
    b.close();
    expect(await server.stop()).toBe(0);
  });

  it('a half message while the thread owns the connection: the client is dropped within twice --message-timeout', async () => {
    const server = await startServer({ device: 'edu', args: ['--message-timeout', '200'] });
    const c = new RawConnection(server.paths[0]!);
    c.send(versionMessage());
    await c.next();
    for (let i = 0; i < 300; i++) {
      c.send(regionRead(10 + i, 0, EDU.ID, 4));
      await c.next();
    }
    c.send(regionRead(999, 0, EDU.ID, 4).subarray(0, 20));
    expect(await c.next()).toBeNull();
    expect(c.reset).toBe(false);
    c.close();
    expect(await server.stop()).toBe(0);
    expect(server.stderr()).toMatch(/slow client: a started message was not completed within 200 ms/);
  });
});
