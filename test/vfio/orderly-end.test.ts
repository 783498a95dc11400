// Ends of stream as a well-behaved peer makes them (QEMU aborts on a connection reset): the server
// answers what it was sent, sends EOF, drains the peer's input; slow peers are dropped after
// configurable limits, and refused clients read an error reply before their EOF.
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Command, HEADER_SIZE, HeaderFlag } from '../../adapters/vfio/protocol.js';
import { errnoOf } from '../../src/errors.js';
import { RawConnection, message, startServer, versionMessage } from './harness.js';

function regionRead(id: number, region: number, offset: number, count: number): Uint8Array {
  const p = new Uint8Array(16);
  const v = new DataView(p.buffer);
  v.setBigUint64(0, BigInt(offset), true);
  v.setUint32(8, region, true);
  v.setUint32(12, count, true);
  return message({ command: Command.REGION_READ, msgId: id }, p);
}

async function negotiated(path: string): Promise<RawConnection> {
  const c = new RawConnection(path);
  c.send(versionMessage());
  const r = await c.next();
  expect(r?.header.flags).toBe(HeaderFlag.TYPE_REPLY);
  return c;
}

/** Collects replies until EOF. */
async function untilEof(c: RawConnection): Promise<{ ids: number[]; errors: number[] }> {
  const ids: number[] = [];
  const errors: number[] = [];
  for (;;) {
    const m = await c.next();
    if (m === null) return { ids, errors };
    ids.push(m.header.msgId);
    if (m.header.flags & HeaderFlag.ERROR) errors.push(m.header.error);
  }
}

describe('orderly ends of stream', () => {
  it('SIGTERM under traffic: every request already sent is answered, then EOF (no reset); exit 0; socket removed', async () => {
    const server = await startServer({ device: 'edu' });
    const c = await negotiated(server.paths[0]!);
    // 300 reads in flight, and the signal while the server is still working through them.
    const batch: Uint8Array[] = [];
    for (let i = 0; i < 300; i++) batch.push(regionRead(100 + i, 0, 0, 4));
    const all = new Uint8Array(batch.length * batch[0]!.length);
    batch.forEach((b, i) => all.set(b, i * b.length));
    expect(c.send(all)).toBe(true);
    server.proc.kill('SIGTERM');
    const { ids, errors } = await untilEof(c);
    expect(c.reset).toBe(false);
    expect(errors).toEqual([]);
    expect(ids).toEqual([...Array(300).keys()].map((i) => 100 + i));
    c.close(); // our EOF ends the server's drain
    expect(await server.stop()).toBe(0);
    expect(existsSync(server.paths[0]!)).toBe(false);
    expect(server.stderr()).toContain('the server is shutting down');
  });

  it('a client refused because the waiting queue is full reads an EBUSY reply, then EOF', async () => {
    const server = await startServer({ device: 'edu', args: ['--max-waiting', '0'] });
    const a = await negotiated(server.paths[0]!);
    const b = new RawConnection(server.paths[0]!);
    b.send(versionMessage(undefined, 7));
    const r = await b.next();
    expect(r?.header).toMatchObject({ msgId: 7, command: Command.VERSION, flags: HeaderFlag.TYPE_REPLY | HeaderFlag.ERROR, error: errnoOf('EBUSY'), msgSize: HEADER_SIZE });
    expect(await b.next()).toBeNull();
    expect(b.reset).toBe(false);
    b.close();
    // The connected client is untouched.
    a.send(regionRead(9, 0, 0, 4));
    expect((await a.next())?.payload.readUInt32LE(16)).toBe(0x010000ed);
    a.close();
    expect(await server.stop()).toBe(0);
    expect(server.stderr()).toContain('refusing a client');
  });

  it('a client that trickles a message is dropped after --message-timeout, and the waiting client is served', async () => {
    const server = await startServer({ device: 'edu', args: ['--message-timeout', '300'] });
    const slow = await negotiated(server.paths[0]!);
    const next = new RawConnection(server.paths[0]!);
    next.send(versionMessage(undefined, 3));
    const waiting = next.next();
    // One byte every 20 ms: a 32-byte message would take 640 ms.
    const bytes = regionRead(5, 0, 0, 4);
    let sent = 0;
    const trickle = setInterval(() => {
      if (sent < bytes.length && slow.send(bytes.subarray(sent, sent + 1))) sent++;
    }, 20);
    try {
      expect(await slow.next()).toBeNull(); // dropped: EOF, no reply to the partial message
      expect(slow.reset).toBe(false);
      expect(sent).toBeLessThan(bytes.length);
    } finally {
      clearInterval(trickle);
    }
    slow.close(); // our EOF completes the server's orderly end
    expect((await waiting)?.header).toMatchObject({ msgId: 3, flags: HeaderFlag.TYPE_REPLY });
    next.close();
    expect(await server.stop()).toBe(0);
    expect(server.stderr()).toMatch(/slow client: a started message was not completed within 300 ms/);
  });

  it('a client that never reads its replies is dropped after --reply-timeout, and the waiting client is served', async () => {
    const server = await startServer({ device: 'edu', args: ['--reply-timeout', '300', '--drain-timeout', '300'] });
    const deaf = new RawConnection(server.paths[0]!, { read: false });
    deaf.send(versionMessage());
    // 512 KiB of replies: more than the socket buffers hold.
    for (let i = 0; i < 128; i++) deaf.send(regionRead(10 + i, 0, 0x40000, 4096));
    const next = new RawConnection(server.paths[0]!);
    next.send(versionMessage(undefined, 4));
    expect((await next.next())?.header).toMatchObject({ msgId: 4, flags: HeaderFlag.TYPE_REPLY });
    next.close();
    deaf.close();
    expect(await server.stop()).toBe(0);
    expect(server.stderr()).toMatch(/slow client: replies sat unread for 300 ms/);
  });
});
