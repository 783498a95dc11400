/**
 * Unit tests of the synchronous vfio-user client against a scripted fake server
 * (test/fixtures/vfio-fake-server.mjs) on a worker thread: the client blocks its own thread, so the
 * server must run on another. The fake server writes its bytes by hand from the spec, not through
 * adapters/vfio/protocol.ts.
 */
import { describe, it, expect, afterEach, beforeAll } from 'vitest';
import { Worker } from 'node:worker_threads';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioUserClient, VfioUserError, type VfioUserClientOptions } from '../../adapters/vfio/client.js';
import { MdevError } from '../../src/errors.js';
import { Command } from '../../adapters/vfio/protocol.js';
import { closeFd, eventfdCreate, eventfdWrite } from '../../src/native/fd.js';
import { POLLHUP, POLLIN, POLLNVAL, POLLOUT, pollFds, waitReadable } from '../../src/native/poll.js';
import { listenUnix, sendMsg, socketPair } from '../../src/native/socket.js';
import { formatLspci } from '../../src/pci/lspci.js';
import { fixture, isOpen, thrown } from '../native/helpers.js';

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/** What a scenario posts back (structured-cloned JSON-like data). */
type Result = any; // structured-cloned data from the worker, checked field by field

interface Fake {
  /** The client end of the socketpair (handed to the client, which then owns it). */
  clientFd: number;
  /** Resolves with the scenario's result once the worker has exited. */
  result: Promise<Result>;
}

function settle(worker: Worker): Promise<Result> {
  return new Promise((resolve, reject) => {
    let posted: { ok: boolean; result?: Result; error?: string } | undefined;
    worker.on('message', (m: typeof posted) => {
      posted = m;
    });
    worker.once('error', reject);
    worker.once('exit', () => {
      if (posted === undefined) reject(new Error('fake server exited without a result'));
      else if (posted.ok) resolve(posted.result);
      else reject(new Error(`fake server failed: ${posted.error}`));
    });
  });
}

/** Starts scenario `name` on a worker with one end of a fresh socketpair. */
function fake(name: string, params: Record<string, unknown> = {}): Fake {
  const [clientFd, serverFd] = socketPair();
  const worker = new Worker(fixture('vfio-fake-server.mjs'), { workerData: { fd: serverFd, scenario: name, params } });
  return { clientFd: clientFd!, result: settle(worker) };
}

const clients: VfioUserClient[] = [];
function open(f: Fake, options?: VfioUserClientOptions): VfioUserClient {
  const c = VfioUserClient.fromSocket(f.clientFd, options);
  clients.push(c);
  return c;
}
afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

beforeAll(async () => {
  // Node opens some fds lazily with the first worker; start (and finish) one so counts are stable.
  const f = fake('hangup');
  closeFd(f.clientFd);
  await f.result.catch(() => undefined);
});

function expectCode(fn: () => unknown, code: string, field?: string): MdevError {
  const e = thrown(fn) as MdevError;
  expect({ code: e.code, field: e.field }).toEqual({ code, field });
  return e;
}

const ascii = (s: string): number[] => [...Buffer.from(s)];
const u32 = (b: number[], at: number): number => Buffer.from(b).readUInt32LE(at);
const u64 = (b: number[], at: number): bigint => Buffer.from(b).readBigUInt64LE(at);

// ---------------------------------------------------------------------------------------------
// pollFds / waitReadable
// ---------------------------------------------------------------------------------------------

describe('pollFds / waitReadable', () => {
  const fds: number[] = [];
  afterEach(() => {
    for (const fd of fds.splice(0)) if (isOpen(fd)) closeFd(fd);
  });

  it('reports the revents of each entry, and hang-ups nobody asked for', () => {
    const [a, b] = socketPair();
    fds.push(a!, b!);
    expect(pollFds([{ fd: b!, events: POLLIN }, { fd: a!, events: POLLOUT }], 0)).toEqual([0, POLLOUT]);
    sendMsg(a!, Buffer.from('x'));
    expect(pollFds([{ fd: b!, events: POLLIN | POLLOUT }], 0)[0]).toBe(POLLIN | POLLOUT);
    expect(waitReadable(b!, 0)).toBe(true);
    closeFd(a!);
    expect(pollFds([{ fd: b!, events: 0 }], 0)[0]! & POLLHUP).toBe(POLLHUP);
    expect(pollFds([{ fd: a!, events: POLLIN }], 0)).toEqual([POLLNVAL]);
  });

  it('waits for the timeout when nothing happens, and wakes when something does', () => {
    const efd = eventfdCreate();
    fds.push(efd);
    let t = performance.now();
    expect(pollFds([{ fd: efd, events: POLLIN }], 60)).toEqual([0]);
    expect(performance.now() - t).toBeGreaterThanOrEqual(59);
    t = performance.now();
    expect(waitReadable(efd, 40)).toBe(false);
    expect(performance.now() - t).toBeGreaterThanOrEqual(39);
    eventfdWrite(efd, 1n);
    expect(waitReadable(efd, -1)).toBe(true);
  });

  it('validates its arguments and names the field', () => {
    const efd = eventfdCreate();
    fds.push(efd);
    expect((thrown(() => pollFds({} as never, 0)) as { field?: string }).field).toBe('entries');
    expect((thrown(() => pollFds([{ fd: -1, events: POLLIN }], 0)) as { field?: string }).field).toBe('entries[0].fd');
    expect((thrown(() => pollFds([{ fd: efd, events: 0x10000 }], 0)) as { field?: string }).field).toBe('entries[0].events');
    expect((thrown(() => pollFds([{ fd: efd } as never], 0)) as { field?: string }).field).toBe('entries[0].events');
    expect((thrown(() => pollFds([], 1.5)) as { field?: string }).field).toBe('timeoutMs');
    expect((thrown(() => pollFds([], -2)) as { field?: string }).field).toBe('timeoutMs');
    const closed = eventfdCreate();
    closeFd(closed);
    const e = thrown(() => waitReadable(closed, 0));
    expect({ code: e.code, syscall: e.syscall }).toEqual({ code: 'EBADF', syscall: 'poll' });
  });

  /** Runs the poll-signal fixture: pollFds on stdin in a child that receives SIGUSR2 meanwhile. */
  async function pollUnderSignals(timeoutMs: number, writeAfterSignals: boolean): Promise<{ revents?: number; elapsed?: number; error?: string }> {
    const child = spawn(process.execPath, [fixture('poll-signal.mjs'), String(timeoutMs)], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    await new Promise<void>((resolve, reject) => {
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (out.includes('polling\n')) resolve();
      });
      void exited.then(() => reject(new Error(`child exited early: ${out}${err}`)));
    });
    for (let i = 0; i < 3; i++) child.kill('SIGUSR2');
    if (writeAfterSignals) child.stdin.write('x');
    const code = await exited;
    child.stdin.destroy();
    expect(code, err).toBe(0);
    return JSON.parse(out.split('\n').filter(Boolean).at(-1)!) as { revents?: number; elapsed?: number; error?: string };
  }

  it('resumes after a signal (EINTR) instead of failing', async () => {
    const r = await pollUnderSignals(20_000, true);
    expect(r).toMatchObject({ revents: POLLIN });
  });

  it('keeps the original deadline across signals', async () => {
    const r = await pollUnderSignals(400, false);
    expect(r.error).toBeUndefined();
    expect(r.revents).toBe(0);
    expect(r.elapsed).toBeGreaterThanOrEqual(399);
  });
});

// ---------------------------------------------------------------------------------------------
// VERSION
// ---------------------------------------------------------------------------------------------

describe('VfioUserClient: VERSION', () => {
  it('proposes 0.0 with QEMU-style capabilities and exposes what the server answered', async () => {
    const f = fake('version', { reply: { json: '{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":4096,"pgsizes":4096,"write_multiple":true},"vendor":{"x":1}}' } });
    const c = open(f);
    expect(c.version).toEqual({ major: 0, minor: 0 });
    expect(c.serverCapabilities).toEqual({ maxMsgFds: 8, maxDataXferSize: 4096, maxDmaMaps: 65535, pgsizes: 4096, writeMultiple: true, twinSocket: { supported: false } });
    expect(c.unknownCapabilities).toEqual(['vendor']);
    expect(c.twinSocket).toBe(false);
    c.close();
    const { request, after } = await f.result;
    expect(after).toEqual([]);
    expect({ cmd: request.cmd, flags: request.flags, error: request.error, size: request.size }).toEqual({ cmd: 1, flags: 0, error: 0, size: 16 + request.payload.length });
    const p: number[] = request.payload;
    expect(p.slice(0, 4)).toEqual([0, 0, 0, 0]);
    expect(p.at(-1)).toBe(0);
    expect(p.indexOf(0, 4)).toBe(p.length - 1);
    const json = JSON.parse(Buffer.from(p.slice(4, -1)).toString('utf8'));
    expect(Object.keys(json)).toEqual(['capabilities']);
    expect(json.capabilities).toEqual({ max_msg_fds: 16, max_data_xfer_size: 1048576, max_dma_maps: 65535, pgsizes: 4096, write_multiple: true });
  });

  it('proposes twin_socket only when asked, with the chosen limits', async () => {
    const f = fake('version', { reply: { json: '{}' } });
    const c = open(f, { twinSocket: true, maxMsgFds: 4, maxDataXferSize: 65536, writeMultiple: false });
    expect(c.serverCapabilities.maxDataXferSize).toBe(1 << 20);
    expect(c.unknownCapabilities).toEqual([]);
    c.close();
    const { request } = await f.result;
    const json = JSON.parse(Buffer.from(request.payload.slice(4, -1)).toString('utf8'));
    expect(json.capabilities).toEqual({ max_msg_fds: 4, max_data_xfer_size: 65536, max_dma_maps: 65535, pgsizes: 4096, write_multiple: false, twin_socket: { supported: true } });
  });

  it('accepts a twin socket handed over at fd_index', async () => {
    const f = fake('device', { twin: true });
    const c = open(f, { twinSocket: true });
    expect(c.twinSocket).toBe(true);
    expect(c.deviceInfo()).toEqual({ argsz: 16, flags: 3, numRegions: 9, numIrqs: 5 });
    c.close();
    await f.result;
  });

  const bad: Array<[string, Record<string, unknown>, VfioUserClientOptions, string, string]> = [
    ['another major', { major: 1 }, {}, 'EPROTO', 'version.major'],
    ['a minor above the proposal', { minor: 1 }, {}, 'EPROTO', 'version.minor'],
    ['twin_socket supported but no fd', { json: '{"capabilities":{"twin_socket":{"supported":true,"fd_index":0}}}' }, { twinSocket: true }, 'EPROTO', 'capabilities.twin_socket.fd_index'],
    ['twin_socket without fd_index', { json: '{"capabilities":{"twin_socket":{"supported":true}}}', fds: ['twin'] }, { twinSocket: true }, 'EPROTO', 'capabilities.twin_socket.fd_index'],
    ['fd_index past the fds sent', { json: '{"capabilities":{"twin_socket":{"supported":true,"fd_index":1}}}', fds: ['twin'] }, { twinSocket: true }, 'EPROTO', 'capabilities.twin_socket.fd_index'],
    ['a twin fd that is not a socket', { json: '{"capabilities":{"twin_socket":{"supported":true,"fd_index":0}}}', fds: ['memfd'] }, { twinSocket: true }, 'EPROTO', 'capabilities.twin_socket.fd_index'],
    ['twin_socket that was not proposed', { json: '{"capabilities":{"twin_socket":{"supported":true,"fd_index":0}}}', fds: ['twin'] }, {}, 'EPROTO', 'capabilities.twin_socket'],
    ['write_multiple that was not proposed', { json: '{"capabilities":{"write_multiple":true}}' }, { writeMultiple: false }, 'EPROTO', 'capabilities.write_multiple'],
    ['page sizes that were not proposed', { json: '{"capabilities":{"pgsizes":12288}}' }, {}, 'EPROTO', 'capabilities.pgsizes'],
    ['more DMA windows than proposed', { json: '{"capabilities":{"max_dma_maps":70000}}' }, {}, 'EPROTO', 'capabilities.max_dma_maps'],
    ['a capability of the wrong type', { json: '{"capabilities":{"max_msg_fds":"8"}}' }, {}, 'EPROTO', 'capabilities.max_msg_fds'],
    ['JSON without its NUL', { json: '{"capabilities":{}}', nul: false }, {}, 'EPROTO', 'version.json'],
    ['text that is not JSON', { json: '{capabilities' }, {}, 'EPROTO', 'version.json'],
    ['an fd nothing refers to', { json: '{}', fds: ['memfd'] }, {}, 'EPROTO', 'version.fds'],
    ['an error reply', { error: 95 }, {}, 'EOPNOTSUPP', 'VERSION'],
  ];
  it.each(bad)('rejects %s, closes the connection and leaks no fd', async (_what, reply, options, code, field) => {
    const before = fdCount();
    const f = fake('version', { reply });
    const e = expectCode(() => open(f, options), code, field);
    if (code !== 'EPROTO') expect(e).toBeInstanceOf(VfioUserError);
    expect(isOpen(f.clientFd)).toBe(false);
    const { after } = await f.result;
    expect(after).toEqual([]); // the server saw EOF right after its reply
    expect(fdCount()).toBe(before);
  });

  it('gives up on a silent server with ETIMEDOUT and closes', async () => {
    const f = fake('version', { reply: { silent: true } });
    const t = performance.now();
    expectCode(() => open(f, { timeoutMs: 150 }), 'ETIMEDOUT', 'timeoutMs');
    const elapsed = performance.now() - t;
    expect(elapsed).toBeGreaterThanOrEqual(149);
    expect(elapsed).toBeLessThan(5000);
    expect((await f.result).after).toEqual([]);
  });

  it('connects by path', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mdk-client-'));
    const path = join(dir, 'dev.sock');
    const listener = listenUnix(path);
    try {
      const worker = new Worker(fixture('vfio-fake-server.mjs'), { workerData: { listenFd: listener, scenario: 'device', params: {} } });
      const result = settle(worker);
      const c = VfioUserClient.connect(path);
      clients.push(c);
      expect(c.deviceInfo().numRegions).toBe(9);
      c.close();
      expect((await result).requests.map((r: { cmd: number }) => r.cmd)).toEqual([4]);
    } finally {
      closeFd(listener);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('validates its options and closes the socket it was given', () => {
    const [a, b] = socketPair();
    closeFd(b!);
    expectCode(() => VfioUserClient.fromSocket(a!, { dmaLayout: 'vfio' as never }), 'EINVAL', 'options.dmaLayout');
    expect(isOpen(a!)).toBe(false);
    const [c, d] = socketPair();
    closeFd(d!);
    expectCode(() => VfioUserClient.fromSocket(c!, { maxMsgFds: 254 }), 'ERANGE', 'options.maxMsgFds');
    expect(isOpen(c!)).toBe(false);
  });
});

// ---------------------------------------------------------------------------------------------
// Regions
// ---------------------------------------------------------------------------------------------

describe('VfioUserClient: regions', () => {
  it('retries REGION_INFO with the argsz the server needs, decodes sparse areas and maps them', async () => {
    const before = fdCount();
    const f = fake('regionInfo');
    const c = open(f);
    const info = c.regionInfo(1);
    expect(info).toMatchObject({ index: 1, flags: 0xf, size: 0x4000n, offset: 0n, argsz: 80, sparse: true, type: null });
    expect(info.sparseAreas).toEqual([{ offset: 0n, size: 0x1000n }, { offset: 0x2000n, size: 0x1000n }]);
    expect(info.caps).toEqual([{ id: 1, version: 1, offset: 32 }]);
    expect(info.capsRaw.length).toBe(48);
    expect(info.fd).not.toBeNull();
    const m = c.mapRegion(1);
    expect(m.bytes).toBeNull();
    expect(m.areas.map((a) => [a.offset, a.size])).toEqual([[0n, 0x1000n], [0x2000n, 0x1000n]]);
    expect([...m.areas[0]!.bytes.subarray(0, 5)]).toEqual(ascii('area0'));
    expect([...m.areas[1]!.bytes.subarray(0, 5)]).toEqual(ascii('area1'));
    expect(c.mapRegion(1)).toBe(m);
    // Accesses inside a mapped area never trap: the scenario fails on any REGION_READ/WRITE.
    expect(c.mmioRead(1, 0x2000, 4)).toBe(Buffer.from('area').readUInt32LE(0));
    c.mmioWrite(1, 0x2004, 1, 0x21);
    expect(String.fromCharCode(m.areas[1]!.bytes[4]!)).toBe('!');
    const bytes = m.areas[0]!.bytes;
    c.close();
    expect(bytes.length).toBe(0); // unmapped
    const { argszSeen } = await f.result;
    expect(argszSeen).toEqual([32, 80, 32, 80]);
    expect(fdCount()).toBe(before); // including the fds of the short first replies
  });

  it.each([
    ['a chain that loops', 'loop', 'cap_offset', /loops back to offset 32/],
    ['a capability outside the reply', 'oob', 'cap_offset', /capability at 200 is outside the 80-byte region info/],
    ['an area outside the region', 'areaOutside', 'sparse_mmap.areas[1]', /outside the region/],
    ['more areas than the reply holds', 'tooManyAreas', 'sparse_mmap.nr_areas', /1000 areas do not fit/],
    ['MMAP without an fd', 'mmapNoFd', 'fds', /MMAP flag but the reply carried 0 fds/],
  ])('rejects %s with EPROTO and stays usable', async (_what, kind, field, message) => {
    const before = fdCount();
    const f = fake('regionInfo', { kind });
    const c = open(f);
    expect(expectCode(() => c.regionInfo(1), 'EPROTO', field).message).toMatch(message);
    expect(c.failed).toBeNull();
    expectCode(() => c.regionInfo(1), 'EPROTO', field);
    c.close();
    await f.result;
    expect(fdCount()).toBe(before);
  });

  it('splits region accesses at the server max_data_xfer_size and checks every echo', async () => {
    const f = fake('device', { caps: { max_data_xfer_size: 4096 } });
    const c = open(f);
    const data = c.regionRead(0, 100, 10000);
    expect(data.length).toBe(10000);
    expect(data.every((v, k) => v === (((k + 100) * 7) & 0xff))).toBe(true);
    const pattern = new Uint8Array(9000).map((_, k) => (k * 13) & 0xff);
    c.regionWrite(1, 8, pattern, { noReply: true });
    c.regionWrite(1, 0, new Uint8Array([0xaa, 0xbb]));
    expect(c.regionRead(1, 8, 9000)).toEqual(pattern);
    expect(c.regionRead(1, 0, 0)).toEqual(new Uint8Array(0));
    c.close();
    const reqs: Array<{ cmd: number; flags: number; payload: number[] }> = (await f.result).requests;
    const reads = reqs.filter((r) => r.cmd === 9).slice(0, 3);
    expect(reads.map((r) => [Number(u64(r.payload, 0)), u32(r.payload, 8), u32(r.payload, 12)])).toEqual([
      [100, 0, 4096],
      [4196, 0, 4096],
      [8292, 0, 1808],
    ]);
    const writes = reqs.filter((r) => r.cmd === 10);
    expect(writes.map((r) => [r.flags, u32(r.payload, 12), r.payload.length])).toEqual([
      [0x10, 4096, 16 + 4096],
      [0x10, 4096, 16 + 4096],
      [0x10, 808, 16 + 808],
      [0, 2, 18],
    ]);
  });

  it('serves the guest-driver interface: mmio, pio, config space, lspci', async () => {
    const f = fake('device');
    const c = open(f);
    expect(c.cfgRead(0, 2)).toBe(0x0e07);
    c.cfgWrite(4, 2, 0x0506);
    expect(c.cfgRead(4, 2)).toBe(0x0506);
    expect(c.cfgRead(0, 8)).toBe(Buffer.from([7, 14, 21, 28, 6, 5, 49, 56]).readBigUInt64LE(0));
    c.mmioWrite(0, 8, 8, 0x1122334455667788n);
    expect(c.mmioRead(0, 8, 8)).toBe(0x1122334455667788n);
    expect(c.mmioRead(0, 8, 4)).toBe(0x55667788);
    expect(c.mmioRead(0, 0xf, 1)).toBe(0x11);
    c.pioWrite(1, 2, 2, 0xbeef);
    expect(c.pioRead(1, 2, 2)).toBe(0xbeef);
    expect(c.pioRead(1, 3, 1)).toBe(0xbe);
    expectCode(() => c.mmioWrite(0, 0, 1, 256), 'ERANGE', 'value');
    expectCode(() => c.mmioWrite(0, 0, 4, -1), 'ERANGE', 'value');
    expectCode(() => c.mmioRead(6, 0, 4), 'ERANGE', 'bar');
    expectCode(() => c.mmioRead(0, 0, 3 as never), 'EINVAL', 'size');
    expectCode(() => c.pioRead(0, 0, 8 as never), 'EINVAL', 'size');
    expectCode(() => c.regionRead(0, -1, 4), 'ERANGE', 'offset');
    const text = formatLspci(c.configAccessor, { sizeBars: false });
    expect(text.split('\n')[0]).toContain('Device 0e07:');
    c.close();
    const reqs: Array<{ cmd: number; payload: number[] }> = (await f.result).requests;
    expect(reqs.filter((r) => r.cmd === 9 || r.cmd === 10).every((r) => r.payload.length >= 16)).toBe(true);
    const configReads = reqs.filter((r) => r.cmd === 9 && u32(r.payload, 8) === 7);
    expect(configReads.length).toBeGreaterThan(5);
  });

  it('sends REGION_WRITE_MULTI in batches of 200 only when the server offers it', async () => {
    const f = fake('device', { caps: { write_multiple: true }, multiLimit: 150 });
    const c = open(f);
    const entries = Array.from({ length: 250 }, (_, i) => ({ region: 0, offset: BigInt(i * 8), data: new Uint8Array([i & 0xff, 1, 2, 3]) }));
    expect(c.writeMulti(entries.slice(0, 3))).toBe(3);
    expect(c.regionRead(0, 8, 4)).toEqual(new Uint8Array([1, 1, 2, 3]));
    expect(c.writeMulti(entries)).toBe(150); // the server completed 150 of the first batch
    expect(c.writeMulti(entries.slice(0, 1), { noReply: true })).toBeNull();
    expectCode(() => c.writeMulti([{ region: 0, offset: 0, data: new Uint8Array(9) }]), 'EINVAL', 'entries[0].data');
    c.close();
    const multi = (await f.result).requests.filter((r: { cmd: number }) => r.cmd === 15);
    expect(multi.map((r: { flags: number; payload: number[] }) => [r.flags, Number(u64(r.payload, 0)), r.payload.length])).toEqual([
      [0, 3, 8 + 3 * 24],
      [0, 200, 8 + 200 * 24],
      [0x10, 1, 8 + 24],
    ]);
  });

  it('refuses REGION_WRITE_MULTI when the server did not offer it', async () => {
    const f = fake('device');
    const c = open(f);
    expectCode(() => c.writeMulti([{ region: 0, offset: 0, data: new Uint8Array(4) }]), 'ENOTSUP', 'write_multiple');
    c.close();
    expect((await f.result).requests).toEqual([]);
  });

  it('reads device, IRQ and I/O-fd info, retrying IO_FDS with the grown argsz', async () => {
    const f = fake('device');
    const c = open(f);
    expect(c.irqInfo(2)).toEqual({ argsz: 16, index: 2, flags: 9, count: 16 });
    const io = c.regionIoFds(0);
    expect(io.argsz).toBe(16 + 2 * 48);
    expect(io.fds.length).toBe(1);
    expect(io.subRegions.map((s) => [s.offset, s.size, s.fdIndex, s.type, s.datamatch, s.fd])).toEqual([
      [0x100n, 4n, 0, 0, 0xabcn, io.fds[0]],
      [0x200n, 4n, 0, 0, 0xabdn, io.fds[0]],
    ]);
    c.reset();
    c.close();
    expect(isOpen(io.fds[0]!)).toBe(false);
    const cmds = (await f.result).requests.map((r: { cmd: number; payload: number[] }) => (r.cmd === 6 ? `6:${u32(r.payload, 0)}` : String(r.cmd)));
    expect(cmds).toEqual(['7', '6:16', '6:112', '5', '13']);
  });
});

// ---------------------------------------------------------------------------------------------
// Errors, timeouts, EOF
// ---------------------------------------------------------------------------------------------

describe('VfioUserClient: failures', () => {
  it('turns error replies into errors with the errno; malformed replies are EPROTO and the connection survives', async () => {
    const f = fake('errors');
    const c = open(f);
    const e = thrown(() => c.regionRead(0, 0, 4));
    expect(e).toBeInstanceOf(VfioUserError);
    expect(e).toBeInstanceOf(MdevError);
    expect(e).toMatchObject({ code: 'EINVAL', errno: 22, serverErrno: 22, command: 9, field: 'REGION_READ' });
    expect(thrown(() => c.regionRead(0, 0, 4))).toMatchObject({ code: 'EIO', errno: 5, serverErrno: 0 });
    expectCode(() => c.regionRead(0, 0, 4), 'EPROTO', 'header.msg_size');
    expectCode(() => c.regionRead(0, 0, 4), 'EPROTO', 'count');
    expect(c.failed).toBeNull();
    expect(c.regionRead(0, 0, 4)).toEqual(new Uint8Array([5, 6, 7, 8]));
    c.close();
    expect((await f.result).after).toEqual([]);
  });

  it('times out with ETIMEDOUT, then discards the late reply', async () => {
    const f = fake('silent');
    // The handshake waits as long as a loaded machine needs (the fake server is a worker that may
    // start slowly); only the first REGION_READ's timeout is under test, and the fake server
    // answers it only after the retry arrives, so it times out however slow the machine is.
    const c = open(f, { timeoutMs: 60_000 });
    const first = new Uint8Array(16);
    new DataView(first.buffer).setUint32(12, 4, true);
    const t = performance.now();
    expectCode(() => c.request(Command.REGION_READ, first, { timeoutMs: 200 }), 'ETIMEDOUT', 'timeoutMs');
    const elapsed = performance.now() - t;
    expect(elapsed).toBeGreaterThanOrEqual(199);
    expect(elapsed).toBeLessThan(5000);
    // The retry waits as long as a loaded machine needs: only the first call's timeout is under test.
    const retry = new Uint8Array(16);
    new DataView(retry.buffer).setUint32(12, 4, true);
    const r = c.request(Command.REGION_READ, retry, { timeoutMs: 60_000 })!;
    expect(r.payload.subarray(16)).toEqual(new Uint8Array([2, 2, 2, 2]));
    expect(c.lateReplies).toBe(1);
    expect(c.failed).toBeNull();
    c.close();
    const { ids, after } = await f.result;
    expect(ids[1]).toBe((ids[0] + 1) & 0xffff);
    expect(after).toEqual([]);
  });

  it('reports the server hanging up clearly, on this call and every later one', async () => {
    const f = fake('hangup');
    const c = open(f);
    expectCode(() => c.deviceInfo(), 'ECONNRESET', 'connection');
    expect(c.closed).toBe(true);
    expect(c.failed?.code).toBe('ECONNRESET');
    expectCode(() => c.regionRead(0, 0, 4), 'ECONNRESET', 'connection');
    expectCode(() => c.waitForInterrupt(0, 0), 'ECONNRESET', 'connection');
    c.close();
    c.close();
    expectCode(() => c.deviceInfo(), 'EBADF', 'client');
    expect((await f.result).got).toBe(4);
  });

  it('treats a reply to no outstanding request as fatal', async () => {
    const f = fake('strayReply');
    const c = open(f);
    expectCode(() => c.deviceInfo(), 'EPROTO', 'header.msg_id');
    expectCode(() => c.deviceInfo(), 'EPROTO', 'header.msg_id');
    expect(c.closed).toBe(false);
    c.close();
    expect((await f.result).after).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------
// DMA served to the server
// ---------------------------------------------------------------------------------------------

describe('VfioUserClient: DMA_READ / DMA_WRITE from the server', () => {
  const EFAULT = 14;
  const E2BIG = 7;
  const EINVAL = 22;
  const cases = [
    { layout: 'spec' as const, twin: false, withFd: false },
    { layout: 'qemu' as const, twin: false, withFd: true },
    { layout: 'spec' as const, twin: true, withFd: true },
    { layout: 'qemu' as const, twin: true, withFd: false },
  ];
  it.each(cases)('serves them from guest RAM while waiting for a reply ($layout layout, twin $twin, fd $withFd)', async ({ layout, twin, withFd }) => {
    const address = 0x100000;
    const size = 0x2000;
    const clientMax = 4096;
    const f = fake('dma', { layout, twin, address, size, clientMax });
    const c = open(f, { dmaLayout: layout, twinSocket: twin, maxDataXferSize: clientMax });
    expect(c.twinSocket).toBe(twin);
    const ram = c.addGuestRam(BigInt(address), size, { withFd });
    expect(ram).toMatchObject({ address: BigInt(address), size, sharedWithServer: withFd, readOnly: false });
    ram.bytes.set(Array.from({ length: 64 }, (_, i) => i));
    expect(c.regionRead(0, 0, 4)).toEqual(new Uint8Array([1, 2, 3, 4]));
    c.close();
    expect(ram.bytes.length).toBe(0); // unmapped by close
    expect(isOpen(ram.fd)).toBe(false);
    const r = await f.result;

    const map: number[] = r.map.payload;
    expect([u32(map, 0), u32(map, 4), u64(map, 8), u64(map, 16), u64(map, 24), r.map.nfds]).toEqual([32, 3, 0n, BigInt(address), BigInt(size), withFd ? 1 : 0]);

    const dataOff = layout === 'spec' ? 16 : 12;
    const prefix = (addr: number, count: number): number[] => {
      const b = Buffer.alloc(dataOff);
      b.writeBigUInt64LE(BigInt(addr), 0);
      if (layout === 'spec') b.writeBigUInt64LE(BigInt(count), 8);
      else b.writeUInt32LE(count, 8);
      return [...b];
    };
    // QEMU pads its struct to 16 bytes: its DMA_READ replies end with 4 zero bytes.
    const pad = layout === 'spec' ? [] : [0, 0, 0, 0];
    // DMA_WRITE landed in guest RAM and was acknowledged: with address and count (spec), with a
    // bare header (QEMU).
    if (layout === 'spec') {
      expect(r.write).toMatchObject({ cmd: 12, flags: 1, error: 0, size: 16 + dataOff });
      expect(r.write.payload).toEqual(prefix(address + 0x10, 9));
    } else {
      expect(r.write).toMatchObject({ cmd: 12, flags: 1, error: 0, size: 16, payload: [] });
    }
    const expected = Array.from({ length: 32 }, (_, i) => i);
    expected.splice(0x10, 9, ...ascii('hello dma'));
    // DMA_READ returned the guest's bytes (including what DMA_WRITE put there).
    expect(r.read).toMatchObject({ cmd: 11, flags: 1, error: 0, size: 16 + dataOff + 32 + pad.length });
    expect(r.read.payload).toEqual([...prefix(address, 32), ...expected, ...pad]);
    // Rejections are header-only error replies.
    expect([r.outside, r.straddle, r.tooBig, r.shortWrite, r.unknown].map((m: { flags: number; error: number; size: number }) => [m.flags, m.error, m.size])).toEqual([
      [0x21, EFAULT, 16],
      [0x21, EFAULT, 16],
      [0x21, E2BIG, 16],
      // A DMA_WRITE shorter than its count: QEMU says E2BIG, the spec layout EINVAL.
      [0x21, layout === 'spec' ? EINVAL : E2BIG, 16],
      [0x21, EINVAL, 16],
    ]);
    // The No_reply DMA_WRITE was performed and not answered: the next reply is the next request's.
    expect(r.afterNoReply.id).toBe(r.lastId);
    expect(r.afterNoReply.payload).toEqual([...prefix(address + 0x40, 2), ...ascii('nr'), ...pad]);
    expect(r.after).toEqual([]);
  });

  it('shares fd-backed guest RAM with the server, and counts what it served', async () => {
    const f = fake('dma', { layout: 'spec', twin: false, address: 0x100000, size: 0x2000, clientMax: 4096 });
    const c = open(f, { maxDataXferSize: 4096 });
    const ram = c.addGuestRam(0x100000, 0x2000);
    c.regionRead(0, 0, 4);
    // The server wrote through its mapping of our memfd.
    expect(Buffer.from(c.guestRead(0x100100, 6)).toString()).toBe('via-fd');
    expect(Buffer.from(ram.bytes.subarray(0x10, 0x19)).toString()).toBe('hello dma');
    expect(c.dmaStats).toMatchObject({ reads: 2, writes: 2, bytesRead: 34, bytesWritten: 11, rejected: 5 });
    expect(c.dmaStats.lastRejection).toMatchObject({ command: 1, code: 'EINVAL' });
    c.close();
    await f.result;
  });

  it('treats a server command on the main socket in twin-socket mode as fatal', async () => {
    const f = fake('dma', { layout: 'spec', twin: true, wrongSocket: true, address: 0x100000, size: 0x2000, clientMax: 4096 });
    const c = open(f, { twinSocket: true });
    c.addGuestRam(0x100000, 0x2000, { withFd: false });
    expectCode(() => c.regionRead(0, 0, 4), 'EPROTO', 'header.command');
    expect(c.failed?.code).toBe('EPROTO');
    expectCode(() => c.deviceInfo(), 'EPROTO', 'header.command');
    c.close();
    expect((await f.result).after).toEqual([]);
  });

  it('checks guest RAM arguments before sending anything', async () => {
    const f = fake('device');
    const c = open(f);
    expectCode(() => c.addGuestRam(0x1001, 4096), 'EINVAL', 'address');
    expectCode(() => c.addGuestRam(0x1000, 100), 'EINVAL', 'size');
    const ram = c.addGuestRam(0x10000, 0x2000);
    expect(Buffer.from(ram.bytes.subarray(0, 16)).toString()).toBe('mapped-by-server');
    expectCode(() => c.addGuestRam(0x11000, 0x1000), 'EEXIST', 'address');
    expectCode(() => c.removeGuestRam(0x10000, 0x1000), 'EINVAL', 'address');
    c.addGuestRam(0x12000, 0x1000, { readOnly: true, withFd: false });
    // Local access spans adjacent windows; outside guest RAM is EFAULT.
    c.guestWrite(0x11ffe, new Uint8Array([1, 2, 3, 4]));
    expect(c.guestRead(0x11ffe, 4)).toEqual(new Uint8Array([1, 2, 3, 4]));
    expectCode(() => c.guestRead(0x12ffe, 4), 'EFAULT', 'address');
    expect(c.guestRam().map((r) => r.address)).toEqual([0x10000n, 0x12000n]);
    c.removeGuestRam(0x10000, 0x2000);
    expect(ram.bytes.length).toBe(0);
    expect(isOpen(ram.fd)).toBe(false);
    expect(c.dmaUnmap({ address: 0x5000, size: 0x1000, flags: 0 })).toEqual({ argsz: 24, flags: 0, address: 0x5000n, size: 0x1000n });
    c.close();
    const reqs = (await f.result).requests;
    expect(reqs.map((r: { cmd: number; nfds: number; payload: number[] }) => [r.cmd, r.nfds, r.cmd === 2 ? u32(r.payload, 4) : 0])).toEqual([
      [2, 1, 3],
      [2, 0, 1],
      [3, 0, 0],
      [3, 0, 0],
    ]);
  });
});

// ---------------------------------------------------------------------------------------------
// Interrupts, features, migration, raw messages, teardown
// ---------------------------------------------------------------------------------------------

describe('VfioUserClient: interrupts and the rest', () => {
  it('binds MSI-X eventfds in messages of at most max_msg_fds, waits for them, disables them', async () => {
    const f = fake('device', { caps: { max_msg_fds: 2 } });
    const c = open(f);
    const fds = c.enableMsix(3);
    expect(fds.length).toBe(3);
    // The fake server signals each vector with its number + 1.
    expect(c.interruptCount(fds[0]!)).toBe(1n);
    expect(c.interruptCount(fds[0]!)).toBe(0n);
    expect(c.waitForInterrupt(fds[2]!, 5000)).toBe(3n);
    expect(c.waitForInterrupt(fds[1]!, 5000)).toBe(2n);
    const t = performance.now();
    expectCode(() => c.waitForInterrupt(fds[1]!, 80), 'ETIMEDOUT', 'timeoutMs');
    expect(performance.now() - t).toBeGreaterThanOrEqual(79);
    c.disableIrqs(2);
    expect(fds.map((fd) => isOpen(fd))).toEqual([false, false, false]);
    const intx = c.enableIntx();
    expect(c.waitForInterrupt(intx.trigger, 5000)).toBe(1n);
    c.unmaskIntx();
    c.setIrqs(1, { flags: 0x2 | 0x20, start: 0, count: 2, bools: [true, false] });
    c.close();
    expect(isOpen(intx.trigger)).toBe(false);
    const sets = (await f.result).requests
      .filter((r: { cmd: number }) => r.cmd === 8)
      .map((r: { payload: number[]; nfds: number }) => ({ argsz: u32(r.payload, 0), flags: u32(r.payload, 4), index: u32(r.payload, 8), start: u32(r.payload, 12), count: u32(r.payload, 16), nfds: r.nfds, data: r.payload.slice(20) }));
    expect(sets).toEqual([
      { argsz: 20, flags: 0x24, index: 2, start: 0, count: 2, nfds: 2, data: [] },
      { argsz: 20, flags: 0x24, index: 2, start: 2, count: 1, nfds: 1, data: [] },
      { argsz: 20, flags: 0x21, index: 2, start: 0, count: 0, nfds: 0, data: [] },
      { argsz: 20, flags: 0x24, index: 0, start: 0, count: 1, nfds: 1, data: [] },
      { argsz: 20, flags: 0x11, index: 0, start: 0, count: 1, nfds: 0, data: [] },
      { argsz: 22, flags: 0x22, index: 1, start: 0, count: 2, nfds: 0, data: [1, 0] },
    ]);
  });

  it('serves DMA while blocked waiting for an interrupt', async () => {
    const f = fake('irqDma', { address: 0x300000 });
    const c = open(f);
    c.addGuestRam(0x300000, 4096, { withFd: false });
    c.guestWrite(0x300000, Buffer.from('ABCDEFGH'));
    const fds = c.enableMsix(3);
    expect(c.waitForInterrupt(fds[2]!, 5000)).toBe(1n);
    c.close();
    const r = await f.result;
    expect(r.sets.map((s: { start: number; count: number; nfds: number }) => [s.start, s.count, s.nfds])).toEqual([
      [0, 2, 2],
      [2, 1, 1],
    ]);
    expect(r.dmaReply).toMatchObject({ id: 0x7000, cmd: 11, flags: 1 });
    expect(r.dmaReply.payload.slice(16)).toEqual(ascii('ABCDEFGH'));
  });

  it('runs DMA logging and migration data through DEVICE_FEATURE and MIG_DATA_*', async () => {
    const f = fake('device');
    const c = open(f);
    expect(c.dmaLoggingStart(512, [{ iova: 0, length: 0x10000 }])).toBe(4096n);
    const bitmap = c.dmaLoggingReport(0, 0x10000, 4096);
    expect([...bitmap]).toEqual([5, 0, 0, 0, 0, 0, 0, 0]);
    c.dmaLoggingStop();
    expect(c.migrationFlags()).toBe(1n);
    expect(thrown(() => c.migrationState())).toMatchObject({ code: 'EOPNOTSUPP', errno: 95 });
    c.migDataWrite(new Uint8Array([1, 2, 3, 4, 5]));
    expect(c.migDataRead(100)).toEqual(new Uint8Array([1, 2, 3, 4, 5]));
    expectCode(() => c.dmaLoggingReport(0, 0x1000, 3000), 'EINVAL', 'pageSize');
    c.close();
    const feats = (await f.result).requests
      .filter((r: { cmd: number }) => r.cmd === 16)
      .map((r: { payload: number[] }) => [u32(r.payload, 0), u32(r.payload, 4).toString(16), r.payload.length]);
    expect(feats).toEqual([
      [8 + 32, '20006', 8 + 32],
      [8 + 24 + 8, '10008', 8 + 24],
      [8 + 32, '20007', 8 + 32],
      [16, '10001', 8],
      [16, '10002', 8],
    ]);
  });

  it('rejects a dirty bitmap with bits past the range', async () => {
    const f = fake('device', { badBitmap: true });
    const c = open(f);
    expectCode(() => c.dmaLoggingReport(0, 10 * 4096, 4096), 'EPROTO', 'bitmap');
    c.close();
    await f.result;
  });

  it('sends raw messages and requests for conformance tests', async () => {
    const f = fake('device');
    const c = open(f);
    const raw = Buffer.alloc(32);
    raw.writeUInt16LE(0x1234, 0);
    raw.writeUInt16LE(4, 2);
    raw.writeUInt32LE(32, 4);
    raw.writeUInt32LE(16, 16);
    c.sendRaw(raw);
    const m = c.receiveRaw();
    expect(m.header).toEqual({ msgId: 0x1234, command: 4, msgSize: 32, flags: 1, error: 0 });
    expect(m.payload.length).toBe(16);
    expect(m.fds).toEqual([]);
    expect(thrown(() => c.request(99, new Uint8Array(4)))).toMatchObject({ code: 'EINVAL', errno: 22, command: 99 });
    const info = new Uint8Array(16);
    info[0] = 16;
    const r = c.request(4, info, { timeoutMs: 2000 });
    expect(r?.header).toMatchObject({ command: 4, flags: 1, msgSize: 32 });
    expect(c.request(13, new Uint8Array(0), { noReply: true })).toBeNull();
    expectCode(() => c.receiveRaw(50), 'ETIMEDOUT', 'timeoutMs');
    c.close();
    const reqs = (await f.result).requests.map((q: { id: number; cmd: number; flags: number }) => [q.cmd, q.flags]);
    expect(reqs).toEqual([
      [4, 0],
      [99, 0],
      [4, 0],
      [13, 0x10],
    ]);
  });
});
