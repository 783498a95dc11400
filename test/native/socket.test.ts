import { describe, it, expect, afterEach, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync, statSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { closeFd, eventfdCreate, eventfdRead, eventfdWrite, ftruncate, memfdCreate, pread } from '../../src/native/fd.js';
import {
  MAX_FDS_PER_MESSAGE,
  acceptUnix,
  connectUnix,
  listenUnix,
  peerCredentials,
  recvMsg,
  sendMsg,
  shutdownSocket,
  socketPair,
  socketRaw,
} from '../../src/native/socket.js';
import { NEVER_OPEN_FD, expectArgError, expectErrno, fdFlags, isOpen, runFixture, thrown } from './helpers.js';

const opened: number[] = [];
function track<T extends number | number[] | null>(fds: T): T {
  if (fds !== null) opened.push(...(Array.isArray(fds) ? fds : [fds]));
  return fds;
}
afterEach(() => {
  for (const fd of opened.splice(0)) if (isOpen(fd)) closeFd(fd);
});

let dir = '';
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'mdk-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function pair(): [number, number] {
  return track(socketPair());
}

describe('socketPair', () => {
  it('creates connected, close-on-exec sockets, non-blocking unless asked otherwise', () => {
    const [a, b] = pair();
    expect([fdFlags(a), fdFlags(b)]).toEqual([
      { nonBlocking: true, cloexec: true },
      { nonBlocking: true, cloexec: true },
    ]);
    const [c] = track(socketPair({ nonBlocking: false }));
    expect(fdFlags(c!)).toEqual({ nonBlocking: false, cloexec: true });
    expectArgError(() => socketPair({ nonBlocking: 1 as unknown as boolean }), 'TypeError', 'nonBlocking');
  });
});

describe('sendMsg / recvMsg', () => {
  it('gathers an array of buffers into one stream of bytes', () => {
    const [a, b] = pair();
    expect(sendMsg(a, [Buffer.from('vfio'), new Uint8Array(0), Buffer.from('-user')])).toBe(9);
    const buf = Buffer.alloc(64);
    expect(recvMsg(b, buf)).toEqual({ bytes: 9, fds: [], fdsTruncated: false });
    expect(buf.subarray(0, 9).toString()).toBe('vfio-user');
  });

  it('returns null when nothing is queued, or when the peer cannot take more', () => {
    const [a, b] = pair();
    expect(recvMsg(b, Buffer.alloc(8))).toBeNull();
    const chunk = Buffer.alloc(65536);
    let queued = 0;
    let sent: number | null;
    // The socket buffer is finite, so this ends with null (EAGAIN) after a bounded number of sends.
    while ((sent = sendMsg(a, chunk)) !== null) queued += sent;
    expect(queued).toBeGreaterThan(0);
    let drained = 0;
    let got;
    while ((got = recvMsg(b, chunk)) !== null) drained += got.bytes;
    expect(drained).toBe(queued);
  });

  it('passes fds: the receiver gets new close-on-exec fds for the same files', () => {
    const [a, b] = pair();
    const memfd = track(memfdCreate('passed'));
    ftruncate(memfd, 64);
    const efd = track(eventfdCreate());
    expect(sendMsg(a, Buffer.from('M'), [memfd, efd])).toBe(1);
    const msg = recvMsg(b, Buffer.alloc(4))!;
    track(msg.fds);
    expect(msg.bytes).toBe(1);
    expect(msg.fds).toHaveLength(2);
    expect(msg.fdsTruncated).toBe(false);
    expect(msg.fds).not.toContain(memfd);
    for (const fd of msg.fds) expect(fdFlags(fd).cloexec).toBe(true);
    eventfdWrite(msg.fds[1]!, 5);
    expect(eventfdRead(efd)).toBe(5n);
    ftruncate(msg.fds[0]!, 128);
    const out = Buffer.alloc(1);
    expect(pread(memfd, out, 127)).toBe(1);
  });

  it('carries the maximum of 253 fds in one message', () => {
    const [a, b] = pair();
    const efd = track(eventfdCreate());
    expect(MAX_FDS_PER_MESSAGE).toBe(253);
    sendMsg(a, Buffer.from('x'), new Array<number>(MAX_FDS_PER_MESSAGE).fill(efd));
    const msg = recvMsg(b, Buffer.alloc(1), MAX_FDS_PER_MESSAGE)!;
    track(msg.fds);
    expect(msg.fds).toHaveLength(253);
    expect(new Set(msg.fds).size).toBe(253);
    expect(msg.fdsTruncated).toBe(false);
  });

  it('reports fds beyond maxFds as truncated and keeps the ones that arrived', () => {
    const [a, b] = pair();
    const efd = track(eventfdCreate());
    sendMsg(a, Buffer.from('abc'), [efd, efd, efd, efd, efd]);
    const msg = recvMsg(b, Buffer.alloc(8), 2)!;
    track(msg.fds);
    expect(msg.bytes).toBe(3);
    expect(msg.fds).toHaveLength(2);
    expect(msg.fdsTruncated).toBe(true);
    for (const fd of msg.fds) expect(isOpen(fd)).toBe(true);

    sendMsg(a, Buffer.from('d'), [efd]);
    expect(recvMsg(b, Buffer.alloc(8), 0)).toEqual({ bytes: 1, fds: [], fdsTruncated: true });
  });

  it('reports EOF as 0 bytes, after close or shutdown of the writing side', () => {
    const [a, b] = pair();
    sendMsg(a, Buffer.from('last'));
    shutdownSocket(a, 'write');
    const buf = Buffer.alloc(8);
    expect(recvMsg(b, buf)!.bytes).toBe(4);
    expect(recvMsg(b, buf)).toEqual({ bytes: 0, fds: [], fdsTruncated: false });
    // The other direction still works after a one-way shutdown.
    expect(sendMsg(b, Buffer.from('back'))).toBe(4);
    expect(recvMsg(a, buf)!.bytes).toBe(4);
    closeFd(b);
    expect(recvMsg(a, buf)!.bytes).toBe(0);
  });

  it('reports a vanished peer as EPIPE instead of raising SIGPIPE', () => {
    const [a, b] = pair();
    closeFd(b);
    expectErrno(() => sendMsg(a, Buffer.from('x')), 'EPIPE', 'sendmsg');
  });

  it('validates every argument, naming the field', () => {
    const [a, b] = pair();
    const efd = track(eventfdCreate());
    expectArgError(() => sendMsg(a, 'text' as unknown as Uint8Array), 'TypeError', 'data');
    expectArgError(() => sendMsg(a, [Buffer.from('x'), 5 as unknown as Uint8Array]), 'TypeError', 'data[1]');
    expectArgError(() => sendMsg(a, new Array<Uint8Array>(1025).fill(Buffer.from('x'))), 'RangeError', 'data');
    expectArgError(() => sendMsg(a, Buffer.from('x'), 3 as unknown as number[]), 'TypeError', 'fds');
    expectArgError(() => sendMsg(a, Buffer.from('x'), [efd, '4' as unknown as number]), 'TypeError', 'fds[1]');
    expectArgError(() => sendMsg(a, Buffer.from('x'), [-1]), 'RangeError', 'fds[0]');
    expectArgError(() => sendMsg(a, Buffer.from('x'), new Array<number>(254).fill(efd)), 'RangeError', 'fds');
    expectArgError(() => sendMsg(a, new Uint8Array(0), [efd]), 'EINVAL', 'data');
    expectArgError(() => sendMsg(a, [], [efd]), 'EINVAL', 'data');
    expectErrno(() => sendMsg(a, Buffer.from('x'), [NEVER_OPEN_FD]), 'EBADF', 'sendmsg');
    expectErrno(() => sendMsg(NEVER_OPEN_FD, Buffer.from('x')), 'EBADF', 'sendmsg');
    expectErrno(() => sendMsg(efd, Buffer.from('x')), 'ENOTSOCK', 'sendmsg');

    expectArgError(() => recvMsg(b, new Uint8Array(0)), 'EINVAL', 'buf');
    expectArgError(() => recvMsg(b, [] as unknown as Uint8Array), 'TypeError', 'buf');
    expectArgError(() => recvMsg(b, Buffer.alloc(1), 254), 'RangeError', 'maxFds');
    expectArgError(() => recvMsg(b, Buffer.alloc(1), -1), 'RangeError', 'maxFds');
    expectArgError(() => recvMsg(b, Buffer.alloc(1), 1.5), 'TypeError', 'maxFds');
    const detachedBuf = new ArrayBuffer(8);
    const staleView = new Uint8Array(detachedBuf);
    structuredClone(detachedBuf, { transfer: [detachedBuf] });
    expectArgError(() => recvMsg(b, staleView), 'EINVAL', 'buf');
    expectArgError(() => sendMsg(a, staleView), 'EINVAL', 'data');
    expectErrno(() => recvMsg(NEVER_OPEN_FD, Buffer.alloc(1)), 'EBADF', 'recvmsg');
    expectErrno(() => recvMsg(efd, Buffer.alloc(1)), 'ENOTSOCK', 'recvmsg');
    // Nothing was sent by any of the rejected calls.
    expect(recvMsg(b, Buffer.alloc(8))).toBeNull();
  });

  it('passes a memfd to a child process, which writes through it and passes an eventfd back', async () => {
    const [a, b] = pair();
    const memfd = track(memfdCreate('shared-with-child'));
    ftruncate(memfd, 4096);
    const child = runFixture('fd-child.mjs', [], { stdio: ['ignore', 'pipe', 'pipe', b] });
    closeFd(b); // the child has its own copy as fd 3
    const text = `written by another process for ${process.pid}`;
    expect(sendMsg(a, Buffer.from(text), [memfd])).toBe(text.length);
    const result = await child.exited;
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const childPid = Number(/^child (\d+) done$/m.exec(result.stdout)?.[1]);
    expect(childPid).not.toBe(process.pid);

    const out = Buffer.alloc(text.length);
    expect(pread(memfd, out, 0)).toBe(text.length);
    expect(out.toString()).toBe(text);

    const reply = recvMsg(a, Buffer.alloc(8))!;
    track(reply.fds);
    expect(reply.bytes).toBe(2);
    expect(reply.fds).toHaveLength(1);
    expect(eventfdRead(reply.fds[0]!)).toBe(7n); // the child's eventfd outlived the child
  });
});

describe('listenUnix / connectUnix / acceptUnix', () => {
  it('creates an owner-only socket file and round-trips a connection', () => {
    const path = join(dir, 'server.sock');
    const listener = track(listenUnix(path));
    expect(fdFlags(listener)).toEqual({ nonBlocking: true, cloexec: true });
    const st = statSync(path);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);

    expect(acceptUnix(listener)).toBeNull();
    const client = track(connectUnix(path));
    expect(fdFlags(client)).toEqual({ nonBlocking: true, cloexec: true });
    const server = track(acceptUnix(listener))!;
    expect(fdFlags(server)).toEqual({ nonBlocking: true, cloexec: true });
    expect(acceptUnix(listener)).toBeNull();

    sendMsg(client, Buffer.from('ping'));
    const buf = Buffer.alloc(8);
    expect(recvMsg(server, buf)!.bytes).toBe(4);
    sendMsg(server, Buffer.from('pong'));
    expect(recvMsg(client, buf)!.bytes).toBe(4);
    expect(buf.subarray(0, 4).toString()).toBe('pong');

    const creds = peerCredentials(server);
    expect(creds).toEqual({ pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
    rmSync(path);
  });

  it('sets the mode before bind, so even a permissive umask yields 0600', () => {
    const path = join(dir, 'umask0.sock');
    const previous = process.umask(0);
    try {
      track(listenUnix(path, { backlog: 1 }));
    } finally {
      process.umask(previous);
    }
    expect(statSync(path).mode & 0o777).toBe(0o600);
    rmSync(path);
  });

  it('can create blocking sockets on request', () => {
    const path = join(dir, 'blocking.sock');
    const listener = track(listenUnix(path, { nonBlocking: false }));
    expect(fdFlags(listener).nonBlocking).toBe(false);
    const client = track(connectUnix(path, { nonBlocking: false }));
    expect(fdFlags(client).nonBlocking).toBe(false);
    const server = track(acceptUnix(listener)); // a connection is pending, so this does not block
    expect(server).not.toBeNull();
    rmSync(path);
  });

  it('reports path problems with the path and the failing call', () => {
    const path = join(dir, 'taken.sock');
    track(listenUnix(path));
    const inUse = thrown(() => listenUnix(path)) as Error & { code?: string; syscall?: string; path?: string };
    expect({ code: inUse.code, syscall: inUse.syscall, path: inUse.path }).toEqual({ code: 'EADDRINUSE', syscall: 'bind', path });

    const missing = join(dir, 'missing.sock');
    const noEnt = thrown(() => connectUnix(missing)) as Error & { code?: string; syscall?: string; path?: string };
    expect({ code: noEnt.code, syscall: noEnt.syscall, path: noEnt.path }).toEqual({ code: 'ENOENT', syscall: 'connect', path: missing });

    const stale = join(dir, 'stale.sock');
    closeFd(listenUnix(stale)); // the file stays behind with nobody listening
    expectErrno(() => connectUnix(stale), 'ECONNREFUSED', 'connect');
    expectErrno(() => listenUnix(join(dir, 'no-such-dir', 'x.sock')), 'ENOENT', 'bind');
    rmSync(path);
    rmSync(stale);
  });

  it('checks the path against sun_path and rejects empty or NUL-containing paths', () => {
    const longest = join(dir, 'p'.repeat(107 - dir.length - 1));
    expect(Buffer.byteLength(longest)).toBe(107);
    track(listenUnix(longest));
    expect(existsSync(longest)).toBe(true);
    track(connectUnix(longest));
    rmSync(longest);
    const tooLong = longest + 'p';
    expectArgError(() => listenUnix(tooLong), 'ENAMETOOLONG', 'path');
    expectArgError(() => connectUnix(tooLong), 'ENAMETOOLONG', 'path');
    expect(existsSync(tooLong)).toBe(false);
    expectArgError(() => listenUnix(''), 'EINVAL', 'path');
    expectArgError(() => connectUnix('\0abstract'), 'EINVAL', 'path');
    expectArgError(() => listenUnix(5 as unknown as string), 'TypeError', 'path');
    expectArgError(() => listenUnix(join(dir, 'b.sock'), { backlog: -1 }), 'RangeError', 'backlog');
    expectArgError(() => listenUnix(join(dir, 'b.sock'), { backlog: '1' as unknown as number }), 'TypeError', 'backlog');
    expectArgError(() => connectUnix(join(dir, 'b.sock'), 'fast' as unknown as object), 'TypeError', 'options');
    expect(existsSync(join(dir, 'b.sock'))).toBe(false);
  });

  it('acceptUnix reports errors on non-listening fds', () => {
    const [a] = pair();
    expectErrno(() => acceptUnix(a), 'EINVAL', 'accept4');
    expectErrno(() => acceptUnix(NEVER_OPEN_FD), 'EBADF', 'accept4');
    const efd = track(eventfdCreate());
    expectErrno(() => acceptUnix(efd), 'ENOTSOCK', 'accept4');
  });
});

describe('shutdownSocket, peerCredentials, socketRaw', () => {
  it('shutdownSocket validates the direction and the fd', () => {
    const [a, b] = pair();
    expectArgError(() => shutdownSocket(a, 'sideways' as 'read'), 'TypeError', 'how');
    expectArgError(() => shutdownSocket(a, undefined as unknown as 'read'), 'TypeError', 'how');
    shutdownSocket(a, 'read');
    shutdownSocket(b, 'both');
    expect(recvMsg(a, Buffer.alloc(1))!.bytes).toBe(0);
    expectErrno(() => shutdownSocket(NEVER_OPEN_FD, 'both'), 'EBADF', 'shutdown');
    const efd = track(eventfdCreate());
    expectErrno(() => shutdownSocket(efd, 'both'), 'ENOTSOCK', 'shutdown');
  });

  it('peerCredentials needs a connected UNIX socket', () => {
    const [a] = pair();
    expect(peerCredentials(a).pid).toBe(process.pid);
    const efd = track(eventfdCreate());
    expectErrno(() => peerCredentials(efd), 'ENOTSOCK', 'getsockopt');
    expectErrno(() => peerCredentials(NEVER_OPEN_FD), 'EBADF', 'getsockopt');
  });

  it('socketRaw creates close-on-exec sockets of any family and validates its numbers', () => {
    const AF_INET = 2;
    const SOCK_DGRAM = 2;
    const SOCK_NONBLOCK = 0o4000;
    const fd = track(socketRaw(AF_INET, SOCK_DGRAM));
    expect(fdFlags(fd)).toEqual({ nonBlocking: false, cloexec: true });
    const nb = track(socketRaw(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0));
    expect(fdFlags(nb)).toEqual({ nonBlocking: true, cloexec: true });
    expectErrno(() => socketRaw(9999, SOCK_DGRAM), 'EAFNOSUPPORT', 'socket');
    expectArgError(() => socketRaw(-1, SOCK_DGRAM), 'RangeError', 'domain');
    expectArgError(() => socketRaw(AF_INET, 'dgram' as unknown as number), 'TypeError', 'type');
    expectArgError(() => socketRaw(AF_INET, SOCK_DGRAM, 2 ** 31), 'RangeError', 'protocol');
  });
});
