// Blocking serve: a connection whose accesses need JS is served by blocking receives on the JS
// thread while the event loop has nothing else to do. Everything else the loop runs must still
// run — the device's timers, the promise jobs its handlers queue, setImmediate, other connections —
// and the connection must move between the loop and the blocking receive without losing a message.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { VfioUserClient } from '../../adapters/vfio/client.js';
import { Command, HeaderFlag } from '../../adapters/vfio/protocol.js';
import { PCI, PCI_COMMAND } from '../../src/pci/constants.js';
import { packageRoot } from '../../src/native/binding.js';
import { sendMsg } from '../../src/native/socket.js';
import { RawConnection, message, startServer, versionMessage, type ServerProcess } from './harness.js';

const WITNESS = join(packageRoot(), 'test', 'fixtures', 'loop-witness-device.mjs');
const REG = { TICKS: 0x00, QUEUE: 0x04, JOBS: 0x08, IMMEDIATE: 0x0c, IMMEDIATES: 0x10, ANNOUNCE: 0x14, WATCH: 0x18, WATCHED: 0x1c };
const CONFIG_REGION = 7;
const WITNESS_ID = 0xbeef1234; // config dword 0: device and vendor ID
// Loops below stop when what they wait for happened; the bound turns a starved loop into a failure.
const MAX_READS = 1_000_000;

function statsPath(): string {
  return join(mkdtempSync(join(tmpdir(), 'mdevkit-blocking-')), 'stats.json');
}

type ConnStats = Record<string, number>;

async function stopWithStats(server: ServerProcess, file: string): Promise<ConnStats[]> {
  expect(await server.stop()).toBe(0);
  return (JSON.parse(readFileSync(file, 'utf8')) as { devices: { connections: ConnStats }[] }).devices.map((d) => d.connections);
}

function configRead(id: number): Uint8Array {
  const p = new Uint8Array(16);
  const v = new DataView(p.buffer);
  v.setBigUint64(0, 0n, true);
  v.setUint32(8, CONFIG_REGION, true);
  v.setUint32(12, 4, true);
  return message({ command: Command.REGION_READ, msgId: id }, p);
}

/** Resolves with the first match of `pattern` in what the server wrote to `stream` (so far or later). */
function serverOutput(server: ServerProcess, stream: 'stdout' | 'stderr', pattern: RegExp): Promise<RegExpExecArray> {
  return new Promise((resolve) => {
    const look = (): void => {
      const m = pattern.exec(server[stream]());
      if (m) resolve(m);
    };
    server.proc[stream]!.on('data', look);
    look();
  });
}

/** A server of the witness device and a raw client that has made 500 config-space reads (JS) in a row. */
async function busyRawClient(args: string[]): Promise<{ server: ServerProcess; c: RawConnection; stats: string }> {
  const stats = statsPath();
  const server = await startServer({ device: WITNESS, args: ['--stats', stats, ...args] });
  const c = new RawConnection(server.paths[0]!);
  c.send(versionMessage());
  await c.next();
  for (let i = 0; i < 500; i++) {
    c.send(configRead(i));
    expect((await c.next())?.payload.readUInt32LE(16)).toBe(WITNESS_ID);
  }
  return { server, c, stats };
}

/** A server of the witness device and a client with the device's memory decoding on. */
async function witnessClient(args: string[] = []): Promise<{ server: ServerProcess; c: VfioUserClient; stats: string }> {
  const stats = statsPath();
  const server = await startServer({ device: WITNESS, args: ['--stats', stats, ...args] });
  const c = VfioUserClient.connect(server.paths[0]!, { emulate: 'qemu' });
  c.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
  return { server, c, stats };
}

describe('blocking serve', () => {
  it('a busy connection that needs JS is served by blocking receives; the device\'s timer, promise jobs and setImmediate still run', async () => {
    const { server, c, stats } = await witnessClient();
    let messages = 0;
    try {
      // The promise job a read queues has run before the next message is served.
      for (let i = 0; i < 3000; i++) {
        const n = c.mmioRead(0, REG.QUEUE, 4);
        expect(c.mmioRead(0, REG.JOBS, 4)).toBe(n);
      }
      messages += 6000;
      // The device's timer fires while the client keeps the connection busy.
      const t0 = c.mmioRead(0, REG.TICKS, 4);
      let ticks = t0;
      for (let i = 0; i < MAX_READS && ticks < t0 + 3; i++, messages++) ticks = c.mmioRead(0, REG.TICKS, 4);
      expect(ticks).toBeGreaterThanOrEqual(t0 + 3);
      // So does a setImmediate a handler scheduled.
      c.mmioWrite(0, REG.IMMEDIATE, 4, 1);
      let immediates = 0;
      for (let i = 0; i < MAX_READS && immediates === 0; i++, messages++) immediates = c.mmioRead(0, REG.IMMEDIATES, 4);
      expect(immediates).toBe(1);
    } finally {
      c.close();
    }
    const [conn] = await stopWithStats(server, stats);
    // The timer ended sessions; they began again. (How many messages they served depends on how
    // fast the client is against the 10 ms timer: client and server may share a CPU or not.)
    expect(conn!['blockingSessions']).toBeGreaterThanOrEqual(2);
    expect(conn!['blockingMessages']).toBeGreaterThan(messages / 10);
    expect(conn!['jsMessages']).toBeLessThan(50); // control messages only: every access went through the region table
  });

  it('a timer set by a handler fires on time while the connection, in a blocking receive, sends nothing', async () => {
    const { server, c, stats } = await witnessClient();
    try {
      for (let i = 0; i < 2000; i++) c.mmioRead(0, REG.QUEUE, 4);
      // The handler's setTimeout is due sooner than anything the loop had: the sentinel must wake
      // the JS thread out of its receive for it, with no message arriving.
      c.mmioWrite(0, REG.ANNOUNCE, 4, 20);
      const after = Number((await serverOutput(server, 'stdout', /witness: timeout of 20 ms fired after (\d+) ms/))[1]);
      // On time, give or take scheduling: not whenever something else next wakes the loop (V8's
      // memory reducer, seconds later). The bound is 50 times the timeout: a liveness check.
      expect(after).toBeLessThan(1000);
      expect(c.mmioRead(0, REG.QUEUE, 4)).toBe(2001);
    } finally {
      c.close();
    }
    const [conn] = await stopWithStats(server, stats);
    expect(conn!['blockingSessions']).toBeGreaterThanOrEqual(1);
  });

  it('an fd a handler starts watching is served while the connection stays busy', async () => {
    const { server, c, stats } = await witnessClient();
    let watchedAfter = 0;
    try {
      for (let i = 0; i < 2000; i++) c.mmioRead(0, REG.QUEUE, 4);
      // A new fd reaches libuv's epoll set only at the loop's next turn: the session must give the
      // loop that turn, or its events wait for whatever next wakes the loop.
      c.mmioWrite(0, REG.WATCH, 4, 1);
      for (let i = 0; i < MAX_READS && watchedAfter === 0; i++) watchedAfter = c.mmioRead(0, REG.WATCHED, 4);
    } finally {
      c.close();
    }
    expect(watchedAfter).toBeGreaterThan(0);
    // A liveness bound: the eventfd was readable from the start.
    expect(watchedAfter).toBeLessThan(1000);
    const [conn] = await stopWithStats(server, stats);
    expect(conn!['blockingSessions']).toBeGreaterThanOrEqual(1);
  });

  it('another connection is served while one is in a blocking serve; the busy one loses nothing', async () => {
    const stats = statsPath();
    const server = await startServer({ device: WITNESS, sockets: 2, args: ['--stats', stats] });
    // A C client keeps device 0 busy with config-space reads (JS) from a process of its own.
    const busy = spawn(join(packageRoot(), 'build', 'Release', 'mdevkit-rtt-client'), [
      '--socket', server.paths[0]!, '--vfio-user', '--region', String(CONFIG_REGION), '--offset', '0', '--iters', '200000', '--warmup', '1000',
      '--out', join(server.dir, 'rtt.json'),
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    let busyErr = '';
    busy.stderr!.on('data', (d: Buffer) => (busyErr += d.toString()));
    let busyDone = false;
    const busyExit = new Promise<number | null>((resolve) => busy.once('exit', (code) => {
      busyDone = true;
      resolve(code);
    }));
    // Meanwhile device 1 answers every request of a client in this process, until the busy client is done.
    const c = new RawConnection(server.paths[1]!);
    c.send(versionMessage());
    await c.next();
    let reads = 0;
    let readsWhileBusy = 0;
    while (!busyDone || reads < 100) {
      c.send(configRead(reads & 0xffff));
      const r = await c.next();
      expect(r?.header).toMatchObject({ msgId: reads & 0xffff, flags: HeaderFlag.TYPE_REPLY });
      expect(r!.payload.readUInt32LE(16)).toBe(WITNESS_ID);
      reads++;
      if (!busyDone) readsWhileBusy++;
    }
    expect(await busyExit, busyErr).toBe(0);
    // Neither device runs a timer here: only the sentinel's watch of the loop gets these served
    // while device 0's connection is in a blocking receive.
    expect(readsWhileBusy).toBeGreaterThan(50);
    c.close();
    const [busyConn, otherConn] = await stopWithStats(server, stats);
    // Every request of the busy client was answered (rtt-client checks each reply's id and size).
    expect(busyConn!['regionAccesses']).toBe(201_000);
    expect(busyConn!['blockingSessions']).toBeGreaterThanOrEqual(2);
    expect(busyConn!['blockingMessages']).toBeGreaterThan(0);
    expect(otherConn!['regionAccesses']).toBe(reads);
  }, 60_000);

  it('a client that stops reading its replies during a blocking serve is dropped after --reply-timeout', async () => {
    const { server, c, stats } = await busyRawClient(['--reply-timeout', '300']);
    // Deaf from now on, with far more requests than the socket buffers hold replies for: the
    // server must stop reading, leave the blocking receive and let the loop judge the client.
    c.stopReading();
    const burst = new Uint8Array(256 * 32);
    for (let i = 0; i < 256; i++) burst.set(configRead(i), i * 32);
    for (let sent = 0; sent < 100_000; sent++) {
      let n: number | null = null;
      try {
        n = sendMsg(c.fd, burst);
      } catch {
        break; // the server closed the connection
      }
      if (n === null) break; // the server stopped reading
    }
    await serverOutput(server, 'stderr', /slow client: replies sat unread for 300 ms/);
    c.close();
    expect(await server.stop()).toBe(0);
    const conn = (JSON.parse(readFileSync(stats, 'utf8')) as { devices: { connections: ConnStats }[] }).devices[0]!.connections;
    expect(conn['blockingSessions']).toBeGreaterThanOrEqual(1);
  });

  it('a half message during a blocking serve: the client is dropped within twice --message-timeout, the next one is served', async () => {
    const { server, c, stats } = await busyRawClient(['--message-timeout', '200']);
    c.send(configRead(999).subarray(0, 20));
    expect(await c.next()).toBeNull();
    expect(c.reset).toBe(false);
    c.close();
    const next = new RawConnection(server.paths[0]!);
    next.send(versionMessage(undefined, 7));
    expect((await next.next())?.header).toMatchObject({ msgId: 7, flags: HeaderFlag.TYPE_REPLY });
    next.close();
    const [conn] = await stopWithStats(server, stats);
    expect(server.stderr()).toMatch(/slow client: a started message was not completed within 200 ms/);
    expect(conn!['blockingSessions']).toBeGreaterThanOrEqual(1);
  });

  it('SIGTERM while an idle client\'s connection is in a blocking receive: EOF to the client (no reset), exit 0', async () => {
    const { server, c, stats } = await busyRawClient([]);
    // The client sends nothing more: the JS thread sits in the session's recvmsg until the
    // signal's wakeup of the loop ends it.
    const killed = performance.now();
    server.proc.kill('SIGTERM');
    expect(await c.next()).toBeNull();
    // A liveness bound: the end does not wait for whatever else next wakes the loop (V8's memory
    // reducer, ~8 s after start).
    expect(performance.now() - killed).toBeLessThan(2000);
    expect(c.reset).toBe(false);
    c.close();
    const [conn] = await stopWithStats(server, stats);
    expect(conn!['blockingSessions']).toBeGreaterThanOrEqual(1);
  });

  it('with --no-blocking-serve every access goes through the event loop', async () => {
    const { server, c, stats } = await witnessClient(['--no-blocking-serve']);
    try {
      for (let i = 0; i < 2000; i++) expect(Buffer.from(c.regionRead(CONFIG_REGION, 0, 4)).readUInt32LE(0)).toBe(WITNESS_ID);
    } finally {
      c.close();
    }
    const [conn] = await stopWithStats(server, stats);
    expect(conn!['blockingSessions']).toBe(0);
    expect(conn!['regionAccesses']).toBe(2001); // and the set-up's config write
  });
});
