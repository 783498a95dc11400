import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { fuzzParams, fuzzTimeout } from '../fuzz-budget.js';
import { Command, HEADER_SIZE, HeaderFlag } from '../../adapters/vfio/protocol.js';
import { closeFd, eventfdCreate } from '../../src/native/fd.js';
import { RawConnection, message, startServer, versionMessage, type ServerProcess } from './harness.js';

// The client is untrusted: random and malformed messages must get error replies or a clean
// disconnect, never a crash, a hang or lost state. The server runs in its own process; after the
// fuzzing it must still serve a well-behaved client with the device state intact.

let server: ServerProcess;
beforeAll(async () => {
  server = await startServer();
});
afterAll(async () => {
  expect(await server.stop()).toBe(0);
});

const commands = fc.integer({ min: 0, max: 20 });
const garbageMessage = fc.record({
  command: commands,
  flags: fc.oneof(fc.constant(0), fc.constant(HeaderFlag.NO_REPLY), fc.integer({ min: 0, max: 0xff })),
  payload: fc.uint8Array({ maxLength: 96 }),
  sizeLie: fc.oneof(fc.constant(0), fc.integer({ min: -16, max: 16 })),
  withFd: fc.boolean(),
});

async function readRegion0Id(path: string): Promise<number> {
  const c = new RawConnection(path);
  try {
    c.send(versionMessage());
    const v = await c.next();
    expect(v?.header.flags).toBe(HeaderFlag.TYPE_REPLY);
    const ra = Buffer.alloc(16);
    ra.writeUInt32LE(4, 12);
    c.send(message({ command: Command.REGION_READ, msgId: 2 }, ra));
    const r = await c.next();
    return r!.payload.readUInt32LE(16);
  } finally {
    c.close();
  }
}

describe('vfio-user server under malformed input', () => {
  it('answers or disconnects on random message sequences and keeps serving', { timeout: fuzzTimeout(30_000) }, async () => {
    await fc.assert(
      fc.asyncProperty(fc.boolean(), fc.array(garbageMessage, { minLength: 1, maxLength: 12 }), async (negotiate, msgs) => {
        const c = new RawConnection(server.paths[0]!);
        try {
          if (negotiate) {
            c.send(versionMessage());
            await c.next();
          }
          let expectReplies = 0;
          let framingBroken = false;
          for (const [i, m] of msgs.entries()) {
            const size = HEADER_SIZE + m.payload.length + m.sizeLie;
            if (m.sizeLie !== 0) framingBroken = true;
            const bytes = message({ command: m.command, msgId: 100 + i, flags: m.flags, msgSize: Math.max(0, size) }, m.payload);
            const fd = m.withFd ? eventfdCreate() : null;
            const sent = c.send(bytes, fd === null ? undefined : [fd]);
            if (fd !== null) closeFd(fd);
            if (!sent) break;
            if (!framingBroken && (m.flags & 0xf) === 0 && !(m.flags & HeaderFlag.NO_REPLY)) expectReplies++;
          }
          if (!framingBroken) {
            // Every command that asked for a reply gets one, in order, unless the server closed.
            for (let k = 0; k < expectReplies; k++) {
              const r = await c.next();
              if (r === null) break;
              expect(r.header.flags & HeaderFlag.TYPE_MASK).toBe(HeaderFlag.TYPE_REPLY);
              if (r.header.flags & HeaderFlag.ERROR) {
                expect(r.header.error).toBeGreaterThan(0);
                expect(r.header.msgSize).toBe(HEADER_SIZE);
              }
            }
          }
        } finally {
          c.close();
        }
      }),
      fuzzParams('vfio-user server: random message sequences (socket, own process)', { numRuns: 500 }),
    );
    expect(server.proc.exitCode).toBeNull();
    expect(await readRegion0Id(server.paths[0]!)).toBe(0x010000ed);
    expect(server.stderr()).not.toMatch(/internal error|device error/);
  });

  it('closes the connection on an impossible msg_size and serves the next client', async () => {
    for (const msgSize of [0, 8, 15, 0x7fffffff]) {
      const c = new RawConnection(server.paths[0]!);
      c.send(versionMessage());
      await c.next();
      c.send(message({ command: Command.DEVICE_GET_INFO, msgId: 9, msgSize }, new Uint8Array(16)));
      const r = await c.next();
      expect(r?.header.flags).toBe(HeaderFlag.TYPE_REPLY | HeaderFlag.ERROR);
      await c.closed();
      c.close();
    }
    expect(await readRegion0Id(server.paths[0]!)).toBe(0x010000ed);
  });

  it('survives a client that vanishes mid-message', async () => {
    const c = new RawConnection(server.paths[0]!);
    c.send(versionMessage());
    await c.next();
    const whole = message({ command: Command.REGION_WRITE, msgId: 3 }, new Uint8Array(16 + 4));
    c.send(whole.subarray(0, 20));
    c.close();
    expect(await readRegion0Id(server.paths[0]!)).toBe(0x010000ed);
  });
});
