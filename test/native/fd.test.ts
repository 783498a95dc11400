import { describe, it, expect, afterEach } from 'vitest';
import {
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  F_SEAL_WRITE,
  addSeals,
  closeFd,
  dupFd,
  eventfdCreate,
  eventfdRead,
  eventfdWrite,
  fdSize,
  ftruncate,
  getSeals,
  memfdCreate,
  pipe,
  pread,
  pwrite,
  setNonBlocking,
} from '../../src/native/fd.js';
import { NEVER_OPEN_FD, expectArgError, expectErrno, fdFlags, isOpen, thrown } from './helpers.js';

const opened: number[] = [];
function track<T extends number | number[]>(fds: T): T {
  opened.push(...(Array.isArray(fds) ? fds : [fds]));
  return fds;
}
afterEach(() => {
  for (const fd of opened.splice(0)) if (isOpen(fd)) closeFd(fd);
});

describe('memfd', () => {
  it('creates a close-on-exec file of size 0 that grows and keeps its bytes', () => {
    const fd = track(memfdCreate('guest-ram'));
    expect(fdFlags(fd).cloexec).toBe(true);
    expect(fdSize(fd)).toBe(0);
    ftruncate(fd, 8192);
    expect(fdSize(fd)).toBe(8192);
    expect(pwrite(fd, Buffer.from('hello'), 4096)).toBe(5);
    const out = Buffer.alloc(8);
    expect(pread(fd, out, 4094)).toBe(8);
    expect([...out]).toEqual([0, 0, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0]);
    expect(pread(fd, out, 8192)).toBe(0); // end of file
    expect(pread(fd, out, 8190n)).toBe(2); // bigint positions, short at the end
  });

  it('accepts bigint sizes and rejects ones past off_t', () => {
    const fd = track(memfdCreate('big'));
    ftruncate(fd, 4096n);
    expect(fdSize(fd)).toBe(4096);
    expectArgError(() => ftruncate(fd, 2n ** 63n), 'RangeError', 'size');
    expectArgError(() => ftruncate(fd, -1), 'RangeError', 'size');
    expectArgError(() => ftruncate(fd, 1.5), 'TypeError', 'size');
  });

  it('validates the name', () => {
    expectArgError(() => memfdCreate('a\0b'), 'EINVAL', 'name');
    expectArgError(() => memfdCreate('x'.repeat(250)), 'EINVAL', 'name');
    track(memfdCreate('x'.repeat(249)));
    expectArgError(() => memfdCreate(42 as unknown as string), 'TypeError', 'name');
    expectArgError(() => memfdCreate('x', { allowSealing: 'yes' as unknown as boolean }), 'TypeError', 'allowSealing');
    expectArgError(() => memfdCreate('x', 7 as unknown as object), 'TypeError', 'options');
  });

  it('seals: shrink and grow are refused with EPERM, and the seals read back', () => {
    const fd = track(memfdCreate('sealed'));
    ftruncate(fd, 4096);
    expect(getSeals(fd)).toBe(0);
    addSeals(fd, F_SEAL_SHRINK | F_SEAL_GROW);
    expect(getSeals(fd)).toBe(F_SEAL_SHRINK | F_SEAL_GROW);
    expectErrno(() => ftruncate(fd, 8192), 'EPERM', 'ftruncate');
    expectErrno(() => ftruncate(fd, 0), 'EPERM', 'ftruncate');
    expect(fdSize(fd)).toBe(4096);
    // Writes inside the file are still allowed; writes that would grow it are not.
    expect(pwrite(fd, Buffer.from([1]), 0)).toBe(1);
    expectErrno(() => pwrite(fd, Buffer.from([1]), 4096), 'EPERM', 'pwrite');
    addSeals(fd, F_SEAL_WRITE | F_SEAL_SEAL);
    expectErrno(() => pwrite(fd, Buffer.from([1]), 0), 'EPERM', 'pwrite');
    expectErrno(() => addSeals(fd, F_SEAL_GROW), 'EPERM', 'fcntl');
  });

  it('refuses seals when sealing was not allowed, and unknown seal bits', () => {
    const fd = track(memfdCreate('unsealable', { allowSealing: false }));
    expect(getSeals(fd)).toBe(F_SEAL_SEAL);
    expectErrno(() => addSeals(fd, F_SEAL_GROW), 'EPERM', 'fcntl');
    expectArgError(() => addSeals(fd, 0x10000), 'EINVAL', 'seals');
    expectArgError(() => addSeals(fd, -1), 'RangeError', 'seals');
  });

  it('reports seal operations on a non-memfd as errno errors', () => {
    const [r] = track(pipe());
    expectErrno(() => getSeals(r!), 'EINVAL', 'fcntl');
  });
});

describe('eventfd', () => {
  it('is non-blocking and close-on-exec by default; an empty counter reads as null', () => {
    const fd = track(eventfdCreate());
    expect(fdFlags(fd)).toEqual({ nonBlocking: true, cloexec: true });
    expect(eventfdRead(fd)).toBeNull();
  });

  it('sums writes and a read takes the whole counter', () => {
    const fd = track(eventfdCreate(5));
    expect(eventfdWrite(fd)).toBe(true);
    expect(eventfdWrite(fd, 10)).toBe(true);
    expect(eventfdWrite(fd, 2n ** 40n)).toBe(true);
    expect(eventfdRead(fd)).toBe(16n + 2n ** 40n);
    expect(eventfdRead(fd)).toBeNull();
  });

  it('takes 1 per read in semaphore mode', () => {
    const fd = track(eventfdCreate(2, { semaphore: true }));
    eventfdWrite(fd, 1n);
    expect([eventfdRead(fd), eventfdRead(fd), eventfdRead(fd), eventfdRead(fd)]).toEqual([1n, 1n, 1n, null]);
  });

  it('returns false when the counter would overflow, and accepts the maximum', () => {
    const fd = track(eventfdCreate());
    expect(eventfdWrite(fd, 2n ** 64n - 2n)).toBe(true);
    expect(eventfdWrite(fd, 1n)).toBe(false);
    expect(eventfdRead(fd)).toBe(2n ** 64n - 2n);
    expectArgError(() => eventfdWrite(fd, 2n ** 64n - 1n), 'RangeError', 'value');
    expectArgError(() => eventfdWrite(fd, -1n), 'RangeError', 'value');
    expectArgError(() => eventfdWrite(fd, '1' as unknown as number), 'TypeError', 'value');
  });

  it('can be created blocking', () => {
    const fd = track(eventfdCreate(0, { nonBlocking: false }));
    expect(fdFlags(fd)).toEqual({ nonBlocking: false, cloexec: true });
    eventfdWrite(fd, 3);
    expect(eventfdRead(fd)).toBe(3n); // does not block: the counter is non-zero
  });

  it('validates arguments', () => {
    expectArgError(() => eventfdCreate(-1), 'RangeError', 'initial');
    expectArgError(() => eventfdCreate(2 ** 32), 'RangeError', 'initial');
    expectArgError(() => eventfdCreate(0, { semaphore: 1 as unknown as boolean }), 'TypeError', 'semaphore');
    expectErrno(() => eventfdRead(NEVER_OPEN_FD), 'EBADF', 'read');
    expectErrno(() => eventfdWrite(NEVER_OPEN_FD, 1), 'EBADF', 'write');
  });

  it('recognises a non-eventfd by its short read', () => {
    const fd = track(memfdCreate('not-an-eventfd'));
    pwrite(fd, Buffer.from([1, 2, 3]), 0);
    expectArgError(() => eventfdRead(fd), 'EINVAL', 'fd');
  });
});

describe('pread/pwrite', () => {
  it('validate buffers and positions', () => {
    const fd = track(memfdCreate('io'));
    expectArgError(() => pread(fd, 'abc' as unknown as Uint8Array, 0), 'TypeError', 'buf');
    expectArgError(() => pwrite(fd, Buffer.alloc(1), -1), 'RangeError', 'position');
    expectArgError(() => pwrite(fd, Buffer.alloc(1), 2n ** 63n), 'RangeError', 'position');
    expectArgError(() => pread(fd, Buffer.alloc(1), Number.NaN), 'TypeError', 'position');
    expectArgError(() => pread(-1, Buffer.alloc(1), 0), 'RangeError', 'fd');
    expectArgError(() => pread('3' as unknown as number, Buffer.alloc(1), 0), 'TypeError', 'fd');
    expectErrno(() => pread(NEVER_OPEN_FD, Buffer.alloc(1), 0), 'EBADF', 'pread');
    expectErrno(() => pwrite(NEVER_OPEN_FD, Buffer.alloc(1), 0), 'EBADF', 'pwrite');
    const [r] = track(pipe());
    expectErrno(() => pread(r!, Buffer.alloc(1), 0), 'ESPIPE', 'pread');
  });

  it('work on any view and ArrayBuffer, and refuse a detached buffer', () => {
    const fd = track(memfdCreate('views'));
    ftruncate(fd, 16);
    expect(pwrite(fd, new Uint32Array([0x04030201]), 0)).toBe(4);
    const ab = new ArrayBuffer(4);
    expect(pread(fd, ab, 0)).toBe(4);
    expect([...new Uint8Array(ab)]).toEqual([1, 2, 3, 4]);
    const dv = new DataView(new ArrayBuffer(8), 2, 2);
    expect(pread(fd, dv, 1)).toBe(2);
    expect(dv.getUint16(0, true)).toBe(0x0302);
    const detached = new ArrayBuffer(8);
    const staleView = new Uint8Array(detached);
    structuredClone(detached, { transfer: [detached] });
    expectArgError(() => pread(fd, detached, 0), 'EINVAL', 'buf');
    expectArgError(() => pwrite(fd, staleView, 0), 'EINVAL', 'buf');
    expectArgError(() => pread(fd, new Uint8Array(new SharedArrayBuffer(4)), 0), 'TypeError', 'buf');
  });
});

describe('closeFd, dupFd, pipe, setNonBlocking', () => {
  it('dup shares the open file and is close-on-exec', () => {
    const fd = track(memfdCreate('dup'));
    const copy = track(dupFd(fd));
    expect(copy).not.toBe(fd);
    expect(fdFlags(copy).cloexec).toBe(true);
    ftruncate(copy, 100);
    expect(fdSize(fd)).toBe(100);
  });

  it('close makes the fd invalid; closing again is EBADF', () => {
    const fd = memfdCreate('closing');
    closeFd(fd);
    expect(isOpen(fd)).toBe(false);
    expectErrno(() => closeFd(fd), 'EBADF', 'close');
    expectErrno(() => dupFd(NEVER_OPEN_FD), 'EBADF', 'fcntl');
    expectErrno(() => fdSize(NEVER_OPEN_FD), 'EBADF', 'fstat');
    expectErrno(() => ftruncate(NEVER_OPEN_FD, 0), 'EBADF', 'ftruncate');
    expectErrno(() => getSeals(NEVER_OPEN_FD), 'EBADF', 'fcntl');
    expectErrno(() => addSeals(NEVER_OPEN_FD, 0), 'EBADF', 'fcntl');
    expectErrno(() => setNonBlocking(NEVER_OPEN_FD, true), 'EBADF', 'fcntl');
  });

  it('pipe ends are close-on-exec and non-blocking by default, blocking on request', () => {
    const [r, w] = track(pipe());
    expect([fdFlags(r!), fdFlags(w!)]).toEqual([
      { nonBlocking: true, cloexec: true },
      { nonBlocking: true, cloexec: true },
    ]);
    const [br] = track(pipe({ nonBlocking: false }));
    expect(fdFlags(br!)).toEqual({ nonBlocking: false, cloexec: true });
  });

  it('setNonBlocking toggles O_NONBLOCK both ways', () => {
    const fd = track(eventfdCreate(0, { nonBlocking: false }));
    setNonBlocking(fd, true);
    expect(fdFlags(fd).nonBlocking).toBe(true);
    expect(eventfdRead(fd)).toBeNull(); // would have blocked
    setNonBlocking(fd, false);
    expect(fdFlags(fd)).toEqual({ nonBlocking: false, cloexec: true });
    expectArgError(() => setNonBlocking(fd, 1 as unknown as boolean), 'TypeError', 'on');
    expectArgError(() => setNonBlocking(fd, undefined as unknown as boolean), 'TypeError', 'on');
  });

  it('rejects fds that are not non-negative 32-bit integers', () => {
    expectArgError(() => closeFd(-1), 'RangeError', 'fd');
    expectArgError(() => closeFd(2 ** 31), 'RangeError', 'fd');
    expectArgError(() => closeFd(1.5), 'TypeError', 'fd');
    expectArgError(() => closeFd(3n as unknown as number), 'TypeError', 'fd');
    expectArgError(() => closeFd(undefined as unknown as number), 'TypeError', 'fd');
    expect(thrown(() => dupFd(Number.POSITIVE_INFINITY))).toBeInstanceOf(TypeError);
  });
});
