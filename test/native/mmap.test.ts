import { describe, it, expect, afterEach } from 'vitest';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { F_SEAL_WRITE, addSeals, closeFd, ftruncate, memfdCreate, pipe, pread, pwrite } from '../../src/native/fd.js';
import { PAGE_SIZE, mappingAddress, mmapFd, munmap } from '../../src/native/mmap.js';
import { addressOf } from '../../src/native/ioctl.js';
import { NEVER_OPEN_FD, expectArgError, expectErrno, isOpen, runFixture } from './helpers.js';

const opened: number[] = [];
afterEach(() => {
  for (const fd of opened.splice(0)) if (isOpen(fd)) closeFd(fd);
});

function memfd(name: string, size: number): number {
  const fd = memfdCreate(name);
  opened.push(fd);
  ftruncate(fd, size);
  return fd;
}

/** The /proc/self/maps line of the mapping that starts at `address`, if any. */
function mapsLine(address: bigint): string | undefined {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .find((line) => line.startsWith(`${address.toString(16)}-`));
}

describe('mmapFd', () => {
  it('two shared mappings of a memfd see the same bytes, as does pread/pwrite', () => {
    const fd = memfd('twice', 2 * PAGE_SIZE);
    const a = new Uint8Array(mmapFd(fd, 2 * PAGE_SIZE));
    const b = new Uint8Array(mmapFd(fd, 2 * PAGE_SIZE));
    expect(a.byteLength).toBe(2 * PAGE_SIZE);
    a.set([1, 2, 3], PAGE_SIZE + 10);
    expect([...b.subarray(PAGE_SIZE + 10, PAGE_SIZE + 13)]).toEqual([1, 2, 3]);
    const out = Buffer.alloc(3);
    pread(fd, out, PAGE_SIZE + 10);
    expect([...out]).toEqual([1, 2, 3]);
    pwrite(fd, Buffer.from([9, 8]), 0);
    expect([a[0], a[1], b[0], b[1]]).toEqual([9, 8, 9, 8]);
    munmap(a.buffer as ArrayBuffer);
    munmap(b.buffer as ArrayBuffer);
  });

  it('maps from a page-aligned offset', () => {
    const fd = memfd('offset', 3 * PAGE_SIZE);
    pwrite(fd, Buffer.from('second page'), PAGE_SIZE);
    const view = new Uint8Array(mmapFd(fd, PAGE_SIZE, { offset: PAGE_SIZE }));
    expect(Buffer.from(view.subarray(0, 11)).toString()).toBe('second page');
    const big = new Uint8Array(mmapFd(fd, PAGE_SIZE, { offset: BigInt(2 * PAGE_SIZE) }));
    big[0] = 0x5a;
    const out = Buffer.alloc(1);
    pread(fd, out, 2 * PAGE_SIZE);
    expect(out[0]).toBe(0x5a);
    munmap(view.buffer as ArrayBuffer);
    munmap(big.buffer as ArrayBuffer);
  });

  it('a private mapping is copy-on-write', () => {
    const fd = memfd('private', PAGE_SIZE);
    const priv = new Uint8Array(mmapFd(fd, PAGE_SIZE, { shared: false }));
    priv[0] = 42;
    const out = Buffer.alloc(1);
    pread(fd, out, 0);
    expect(out[0]).toBe(0);
    munmap(priv.buffer as ArrayBuffer);
  });

  it('maps read-only fds read-only, and refuses writable mappings the fd does not allow', () => {
    const fd = memfd('readonly', PAGE_SIZE);
    pwrite(fd, Buffer.from('ro'), 0);
    const ro = openSync(`/proc/self/fd/${fd}`, 'r');
    try {
      expectErrno(() => mmapFd(ro, PAGE_SIZE), 'EACCES', 'mmap');
      const view = new Uint8Array(mmapFd(ro, PAGE_SIZE, { writable: false }));
      expect(Buffer.from(view.subarray(0, 2)).toString()).toBe('ro');
      expect(mapsLine(mappingAddress(view.buffer as ArrayBuffer))).toMatch(/ r--s /);
      munmap(view.buffer as ArrayBuffer);
    } finally {
      closeSync(ro);
    }
    addSeals(fd, F_SEAL_WRITE);
    expectErrno(() => mmapFd(fd, PAGE_SIZE), 'EPERM', 'mmap');
  });

  it('rejects bad lengths and offsets, naming the field', () => {
    const fd = memfd('bad-args', 2 * PAGE_SIZE);
    expectArgError(() => mmapFd(fd, 0), 'EINVAL', 'length');
    expectArgError(() => mmapFd(fd, -1), 'RangeError', 'length');
    expectArgError(() => mmapFd(fd, 1.5), 'TypeError', 'length');
    expectArgError(() => mmapFd(fd, '4096' as unknown as number), 'TypeError', 'length');
    expectArgError(() => mmapFd(fd, 2 ** 53), 'RangeError', 'length');
    expectArgError(() => mmapFd(fd, PAGE_SIZE, { offset: 1 }), 'EINVAL', 'offset');
    expectArgError(() => mmapFd(fd, PAGE_SIZE, { offset: -PAGE_SIZE }), 'RangeError', 'offset');
    expectArgError(() => mmapFd(fd, PAGE_SIZE, { offset: 2n ** 63n }), 'RangeError', 'offset');
    expectArgError(() => mmapFd(fd, PAGE_SIZE, { writable: 'no' as unknown as boolean }), 'TypeError', 'writable');
    expectArgError(() => mmapFd(fd, PAGE_SIZE, { shared: 0 as unknown as boolean }), 'TypeError', 'shared');
    expectArgError(() => mmapFd(fd, PAGE_SIZE, null as unknown as object), 'TypeError', 'options');
    // Past the end of the file: touching it would be SIGBUS, so it is refused up front.
    expectArgError(() => mmapFd(fd, 2 * PAGE_SIZE + 1), 'EINVAL', 'length');
    expectArgError(() => mmapFd(fd, PAGE_SIZE, { offset: 2 * PAGE_SIZE }), 'EINVAL', 'length');
    expectArgError(() => mmapFd(fd, PAGE_SIZE, { offset: 4 * PAGE_SIZE }), 'EINVAL', 'length');
  });

  it('reports unmappable and closed fds as errno errors', () => {
    expectErrno(() => mmapFd(NEVER_OPEN_FD, PAGE_SIZE), 'EBADF', 'fstat');
    const [r, w] = pipe();
    opened.push(r, w);
    expectErrno(() => mmapFd(r, PAGE_SIZE, { writable: false }), 'ENODEV', 'mmap');
    const fd = memfdCreate('closed');
    closeFd(fd);
    expectErrno(() => mmapFd(fd, PAGE_SIZE), 'EBADF', 'fstat');
  });
});

describe('munmap and mappingAddress', () => {
  it('give the page-aligned address the kernel mapped, the same one marshaling uses', () => {
    const fd = memfd('address', PAGE_SIZE);
    const ab = mmapFd(fd, PAGE_SIZE);
    const address = mappingAddress(ab);
    expect(address % BigInt(PAGE_SIZE)).toBe(0n);
    expect(addressOf(ab)).toBe(address);
    expect(mapsLine(address)).toContain('memfd:address');
    munmap(ab);
  });

  it('munmap unmaps now and detaches every view; the buffer is then unusable', () => {
    const fd = memfd('lifecycle', PAGE_SIZE);
    const ab = mmapFd(fd, PAGE_SIZE);
    const view = new Uint8Array(ab);
    view[0] = 1;
    const address = mappingAddress(ab);
    munmap(ab);
    expect(ab.byteLength).toBe(0);
    expect(view.length).toBe(0);
    expect(view[0]).toBeUndefined();
    view[0] = 2; // a no-op on a detached view, not a fault
    expect(mapsLine(address) ?? '').not.toContain('memfd:lifecycle');
    expect(() => new Uint8Array(ab)).toThrow(TypeError);
    expectArgError(() => munmap(ab), 'EINVAL', 'ab');
    expectArgError(() => mappingAddress(ab), 'EINVAL', 'ab');
  });

  it('refuse anything that is not a live mapping of ours', () => {
    expectArgError(() => munmap(new ArrayBuffer(PAGE_SIZE)), 'EINVAL', 'ab');
    expectArgError(() => mappingAddress(new ArrayBuffer(0)), 'EINVAL', 'ab');
    const fd = memfd('foreign', PAGE_SIZE);
    const ab = mmapFd(fd, PAGE_SIZE);
    expectArgError(() => munmap(ab.slice(0)), 'EINVAL', 'ab'); // a copy, not the mapping
    expectArgError(() => munmap(new Uint8Array(ab) as unknown as ArrayBuffer), 'TypeError', 'ab');
    expectArgError(() => munmap(undefined as unknown as ArrayBuffer), 'TypeError', 'ab');
    expectArgError(() => mappingAddress({} as ArrayBuffer), 'TypeError', 'ab');
    munmap(ab);
  });

  it('a collected mapping is unmapped, and an early munmap is never repeated by the finalizer', async () => {
    const child = runFixture('mmap-gc.mjs', [], { nodeArgs: ['--expose-gc'] });
    const result = await child.exited;
    expect(result.stderr).toBe('');
    expect({ code: result.code, signal: result.signal }).toEqual({ code: 0, signal: null });
    expect(JSON.parse(result.stdout)).toEqual({ sameAddress: true, stillMapped: true, coherent: true });
  });
});
