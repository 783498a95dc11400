import { openSync, readFileSync } from 'node:fs';
import { endianness } from 'node:os';

import fc from 'fast-check';
import { fuzzParams, fuzzTimeout } from '../fuzz-budget.js';
import { afterEach, describe, expect, it } from 'vitest';

import { DMA_SEGMENT_SIZE, MAX_LOGGING_RANGES, VfioDmaSpace, type DmaTransport } from '../../adapters/vfio/dma.js';
import { DmaFlag } from '../../adapters/vfio/protocol.js';
import { closeFd, dupFd, fdSize, ftruncate, memfdCreate, pipe, pread, pwrite } from '../../src/native/fd.js';
import { mmapFd, munmap } from '../../src/native/mmap.js';
import { NEVER_OPEN_FD, isOpen, thrown } from '../native/helpers.js';

const P = 4096;
const RW = DmaFlag.READ | DmaFlag.WRITE;
const HOST_LE = endianness() === 'LE';

/** fds and mappings the test itself holds, released after each test. */
const ownFds: number[] = [];
const ownMaps: ArrayBuffer[] = [];
const spaces: VfioDmaSpace[] = [];
afterEach(() => {
  for (const s of spaces.splice(0)) s.close();
  for (const ab of ownMaps.splice(0)) if (ab.byteLength > 0) munmap(ab);
  for (const fd of ownFds.splice(0)) if (isOpen(fd)) closeFd(fd);
});

/**
 * A memfd of `size` bytes: `fd` is handed to the space (which takes it), `mine` is a duplicate the
 * test keeps to look at the same memory.
 */
function memfd(size: number, name = 'dma-test'): { fd: number; mine: number } {
  const fd = memfdCreate(name);
  ftruncate(fd, size);
  const mine = dupFd(fd);
  ownFds.push(mine);
  return { fd, mine };
}

/** The test's own shared mapping of `[offset, offset + length)` of `fd`. */
function ownMapping(fd: number, length: number, offset = 0): Uint8Array {
  const ab = mmapFd(fd, length, { offset });
  ownMaps.push(ab);
  return new Uint8Array(ab);
}

/** Asserts `fn` throws an errno error with `code` naming `field`. */
function expectError(fn: () => unknown, code: string, field?: string): void {
  const e = thrown(fn);
  expect({ code: e.code, field: e.field }).toEqual({ code, field });
}

/** Asserts `fd` is not open any more (fdSize on it fails with EBADF). */
function expectClosed(fd: number): void {
  expectError(() => fdSize(fd), 'EBADF', undefined);
}

/** A DMA_READ/DMA_WRITE client over a byte map, recording every call and enforcing the size limit. */
class FakeTransport implements DmaTransport {
  readonly memory = new Map<bigint, number>();
  readonly calls: { op: 'read' | 'write'; address: bigint; length: number }[] = [];
  /** Called before each transfer, e.g. to fail it or to act like a message handled meanwhile. */
  before: ((op: 'read' | 'write', address: bigint) => void) | null = null;

  constructor(readonly maxTransfer: number) {}

  dmaRead(address: bigint, out: Uint8Array): void {
    this.check('read', address, out.length);
    for (let i = 0; i < out.length; i++) out[i] = this.memory.get(address + BigInt(i)) ?? 0;
  }

  dmaWrite(address: bigint, data: Uint8Array): void {
    this.check('write', address, data.length);
    for (let i = 0; i < data.length; i++) this.memory.set(address + BigInt(i), data[i]!);
  }

  bytes(address: bigint, length: number): number[] {
    return Array.from({ length }, (_, i) => this.memory.get(address + BigInt(i)) ?? 0);
  }

  private check(op: 'read' | 'write', address: bigint, length: number): void {
    if (length === 0 || length > this.maxTransfer) throw new Error(`transfer of ${length} bytes breaks the limit of ${this.maxTransfer}`);
    this.before?.(op, address);
    this.calls.push({ op, address, length });
  }
}

function space(options: { maxWindows?: number; transport?: DmaTransport | null; maxTransfer?: number; maxLogPages?: number } = {}): VfioDmaSpace {
  const s = new VfioDmaSpace({
    maxWindows: options.maxWindows ?? 16,
    transport: options.transport === undefined ? null : options.transport,
    maxTransfer: options.maxTransfer ?? 1 << 20,
    ...(options.maxLogPages === undefined ? {} : { maxLogPages: options.maxLogPages }),
  });
  spaces.push(s);
  return s;
}

function req(address: number | bigint, size: number | bigint, flags: number = RW, offset: number | bigint = 0n) {
  return { flags, offset: BigInt(offset), address: BigInt(address), size: BigInt(size) };
}

/** Maps a fresh memfd window of `size` bytes at `address`; returns the test's own view of it. */
function mapMemfd(s: VfioDmaSpace, address: number, size: number, flags: number = RW, name?: string): Uint8Array {
  const { fd, mine } = memfd(size, name);
  s.map(req(address, size, flags), fd);
  return ownMapping(mine, size);
}

/** The first `size` bytes of a file. */
function fileBytes(fd: number, size: number): number[] {
  const buf = Buffer.alloc(size);
  expect(pread(fd, buf, 0)).toBe(size);
  return [...buf];
}

/** The permission strings of this process's mappings of the memfd called `name`. */
function mappingPerms(name: string): string[] {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((line) => line.includes(`/memfd:${name} `))
    .map((line) => line.split(/\s+/)[1]!);
}

/** The first `nbits` bits of a report (u64 words in host order) as 0/1 values. */
function bits(out: Uint8Array, nbits: number): number[] {
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const r: number[] = [];
  for (let i = 0; i < nbits; i++) {
    const word = dv.getBigUint64(Math.floor(i / 64) * 8, HOST_LE);
    r.push(Number((word >> BigInt(i % 64)) & 1n));
  }
  return r;
}

/** Reports `[iova, iova + length)` at `pageSize` and returns its bits. */
function report(s: VfioDmaSpace, iova: number, length: number, pageSize: number): number[] {
  const nbits = length / pageSize;
  const out = new Uint8Array(Math.ceil(nbits / 64) * 8).fill(0xff);
  s.loggingReport(BigInt(iova), BigInt(length), BigInt(pageSize), out);
  return bits(out, Math.ceil(nbits / 64) * 64);
}

/** `n` bits with the given ones set, padded to whole u64 words like a report. */
function expected(n: number, ones: number[]): number[] {
  const r = new Array<number>(Math.ceil(n / 64) * 64).fill(0);
  for (const i of ones) r[i] = 1;
  return r;
}

describe('VfioDmaSpace options', () => {
  it('refuses limits out of range and a transport without methods', () => {
    expectError(() => new VfioDmaSpace({ maxWindows: 0, transport: null, maxTransfer: 1 }), 'ERANGE', 'maxWindows');
    expectError(() => new VfioDmaSpace({ maxWindows: 1, transport: null, maxTransfer: 0 }), 'ERANGE', 'maxTransfer');
    expectError(() => new VfioDmaSpace({ maxWindows: 1, transport: null, maxTransfer: 1, maxLogPages: 0 }), 'ERANGE', 'maxLogPages');
    expectError(() => new VfioDmaSpace({ maxWindows: 1, transport: {} as DmaTransport, maxTransfer: 1 }), 'EINVAL', 'transport');
  });
});

describe('DMA_MAP with an fd', () => {
  it('maps the memfd shared: the space and another mapping see the same bytes, and the fd is closed', () => {
    const s = space();
    const { fd, mine } = memfd(2 * P);
    s.map(req(0x10000, 2 * P), fd);
    expectClosed(fd);
    const other = ownMapping(mine, 2 * P);

    s.write(0x10000 + P - 2, new Uint8Array([1, 2, 3, 4]));
    expect([...other.subarray(P - 2, P + 2)]).toEqual([1, 2, 3, 4]);
    other.set([9, 8, 7], 100);
    const out = new Uint8Array(3);
    s.read(0x10000 + 100, out);
    expect([...out]).toEqual([9, 8, 7]);
    expect(s.windows).toEqual([{ address: 0x10000n, size: BigInt(2 * P), flags: RW, mapped: true }]);
  });

  it('maps from the file offset given', () => {
    const s = space();
    const { fd, mine } = memfd(4 * P);
    pwrite(mine, Buffer.from('third page'), 2 * P);
    s.map(req(0x4000, P, RW, 2 * P), fd);
    const out = new Uint8Array(10);
    s.read(0x4000, out);
    expect(Buffer.from(out).toString()).toBe('third page');
    s.write(0x4000 + 20, new Uint8Array([0x5a]));
    const back = Buffer.alloc(1);
    pread(mine, back, 2 * P + 20);
    expect(back[0]).toBe(0x5a);
  });

  it('maps a READ-only window read-only and refuses device writes before touching memory', () => {
    const s = space();
    const other = mapMemfd(s, 0, 2 * P, DmaFlag.READ, 'dma-ro-window');
    expect(mappingPerms('dma-ro-window').sort()).toEqual(['r--s', 'rw-s']); // ours, and the test's
    other.fill(0x11);

    expectError(() => s.write(P - 1, new Uint8Array([1, 2])), 'EFAULT', 'gpa');
    expect(other.every((b) => b === 0x11)).toBe(true);
    expect(s.map(0, P, true)).toBeNull();
    const view = s.map(P, 16, false)!;
    expect([...view.subarray(0, 2)]).toEqual([0x11, 0x11]);
    const out = new Uint8Array(2);
    s.read(P - 1, out);
    expect([...out]).toEqual([0x11, 0x11]);
  });

  it('maps a WRITE-only window writable but refuses device reads and views', () => {
    const s = space();
    const other = mapMemfd(s, 0, P, DmaFlag.WRITE);
    s.write(10, new Uint8Array([7]));
    expect(other[10]).toBe(7);
    expectError(() => s.read(10, new Uint8Array(1)), 'EFAULT', 'gpa');
    expect(s.map(0, 1, false)).toBeNull();
    expect(s.map(0, 1, true)).toBeNull();
  });

  it('maps a window larger than 4 GiB (more than one ArrayBuffer holds) in pieces', () => {
    const s = space();
    const size = 5 * 2 ** 30 + P;
    const { fd, mine } = memfd(size);
    s.map(req(2 ** 40, size), fd);
    const boundary = 2 ** 40 + 4 * DMA_SEGMENT_SIZE;
    s.write(boundary - 3, new Uint8Array([1, 2, 3, 4, 5, 6]));
    const back = Buffer.alloc(6);
    pread(mine, back, 4 * DMA_SEGMENT_SIZE - 3);
    expect([...back]).toEqual([1, 2, 3, 4, 5, 6]);
    pwrite(mine, Buffer.from([0xaa, 0xbb]), size - 2);
    const out = new Uint8Array(2);
    s.read(2 ** 40 + size - 2, out);
    expect([...out]).toEqual([0xaa, 0xbb]);
    // A view never crosses a piece boundary; inside one it is live.
    expect(s.map(boundary - 3, 6, true)).toBeNull();
    const view = s.map(boundary, 3, true)!;
    expect([...view]).toEqual([4, 5, 6]);
  });

  describe('refusals name the field, change nothing and close the fd', () => {
    const cases: [string, ReturnType<typeof req>, string, string][] = [
      ['no permission', req(0, P, 0), 'EINVAL', 'dma_map.flags'],
      ['an unknown flag', req(0, P, RW | 4), 'EINVAL', 'dma_map.flags'],
      ['a zero size', req(0, 0), 'EINVAL', 'dma_map.size'],
      ['an unaligned address', req(0x800, P), 'EINVAL', 'dma_map.address'],
      ['an unaligned size', req(0, P + 1), 'EINVAL', 'dma_map.size'],
      ['an unaligned offset', req(0, P, RW, 512), 'EINVAL', 'dma_map.offset'],
      ['a window past 2^52', req(2 ** 52 - P, 2 * P), 'EINVAL', 'dma_map.size'],
      ['a wrapping window', req(2n ** 64n - BigInt(P), 2 * P), 'EINVAL', 'dma_map.address'],
      ['a window past the end of the file', req(0, 3 * P), 'EINVAL', 'dma_map.size'],
      ['an offset past the end of the file', req(0, P, RW, 4 * P), 'EINVAL', 'dma_map.offset'],
      ['a window running past the end of the file from an offset', req(0, 2 * P, RW, P), 'EINVAL', 'dma_map.size'],
      ['an overlap', req(0x10000 + P, P), 'EEXIST', 'dma_map.address'],
      ['an overlap from below', req(0x10000 - P, 2 * P), 'EEXIST', 'dma_map.address'],
      ['the same window again', req(0x10000, 2 * P), 'EEXIST', 'dma_map.address'],
    ];
    for (const [what, request, code, field] of cases) {
      it(`refuses ${what} with ${code}`, () => {
        const s = space();
        mapMemfd(s, 0x10000, 2 * P);
        const before = s.windows;
        const { fd } = memfd(2 * P);
        expectError(() => s.map(request, fd), code, field);
        expectClosed(fd);
        expect(s.windows).toEqual(before);
      });
    }

    it('refuses a field of the wrong type', () => {
      const s = space();
      const { fd } = memfd(P);
      expectError(() => s.map({ flags: RW, offset: 0n, address: 0 as unknown as bigint, size: BigInt(P) }, fd), 'EINVAL', 'dma_map.address');
      expectClosed(fd);
    });

    it('refuses more windows than max_dma_maps with ENOSPC', () => {
      const s = space({ maxWindows: 2 });
      mapMemfd(s, 0, P);
      mapMemfd(s, P, P);
      const { fd } = memfd(P);
      expectError(() => s.map(req(2 * P, P), fd), 'ENOSPC', 'dma_map.address');
      expectClosed(fd);
      s.unmap({ flags: 0, address: 0n, size: BigInt(P) });
      mapMemfd(s, 2 * P, P);
      expect(s.windows.length).toBe(2);
    });

    it('refuses a window without an fd when there is no transport (ENOTSUP), or with an offset', () => {
      expectError(() => space().map(req(0, P), null), 'ENOTSUP', 'fd');
      expectError(() => space({ transport: new FakeTransport(64) }).map(req(0, P, RW, P), null), 'EINVAL', 'dma_map.offset');
    });

    it('passes on mmap errors: a writable window over a read-only fd, an fd that cannot be mapped', () => {
      const s = space();
      const { mine } = memfd(P);
      const readOnly = openSync(`/proc/self/fd/${mine}`, 'r');
      expectError(() => s.map(req(0, P), readOnly), 'EACCES', undefined);
      expectClosed(readOnly);

      const readOnly2 = openSync(`/proc/self/fd/${mine}`, 'r');
      s.map(req(0, P, DmaFlag.READ), readOnly2);
      expectClosed(readOnly2);

      const [r, w] = pipe();
      ownFds.push(w);
      expectError(() => s.map(req(P, P, DmaFlag.READ), r), 'ENODEV', undefined);
      expectClosed(r);
      expect(s.windows.map((x) => x.address)).toEqual([0n]);
    });

    it('refuses a number that is no open fd with EBADF, and a value that is no fd number at all', () => {
      const s = space();
      expectError(() => s.map(req(0, P), NEVER_OPEN_FD), 'EBADF', 'fd');
      expectError(() => s.map(req(0, P), -1), 'EBADF', 'fd');
      expect(s.windows).toEqual([]);
    });

    it('refuses maps after close with EBADF, closing the fd', () => {
      const s = space();
      mapMemfd(s, 0, P);
      s.close();
      expect(s.windows).toEqual([]);
      const { fd } = memfd(P);
      expectError(() => s.map(req(0, P), fd), 'EBADF', 'fd');
      expectClosed(fd);
      s.close();
    });
  });
});

describe('DMA_UNMAP', () => {
  it('removes the window that matches exactly, unmapping it so views go empty', () => {
    const s = space();
    mapMemfd(s, 0, P, RW, 'dma-unmap-me');
    mapMemfd(s, 2 * P, P);
    const view = s.map(0, 16, true)!;
    expect(view.length).toBe(16);
    expect(mappingPerms('dma-unmap-me').length).toBe(2);

    s.unmap({ flags: 0, address: 0n, size: BigInt(P) });
    expect(view.length).toBe(0);
    expect(mappingPerms('dma-unmap-me').length).toBe(1); // only the test's own mapping is left
    expect(s.windows.map((w) => w.address)).toEqual([BigInt(2 * P)]);
    expectError(() => s.read(0, new Uint8Array(1)), 'EFAULT', 'gpa');
    // The range is free again.
    mapMemfd(s, 0, 2 * P);
  });

  it('refuses anything but an exact match', () => {
    const s = space();
    mapMemfd(s, 0x10000, 4 * P);
    const before = s.windows;
    expectError(() => s.unmap({ flags: 0, address: 0n, size: BigInt(P) }), 'ENOENT', 'dma_unmap.address');
    expectError(() => s.unmap({ flags: 0, address: 0x20000n, size: BigInt(P) }), 'ENOENT', 'dma_unmap.address');
    expectError(() => s.unmap({ flags: 0, address: 2n ** 63n, size: BigInt(P) }), 'ENOENT', 'dma_unmap.address');
    expectError(() => s.unmap({ flags: 0, address: 0x10000n, size: BigInt(P) }), 'EINVAL', 'dma_unmap.size');
    expectError(() => s.unmap({ flags: 0, address: 0x11000n, size: BigInt(3 * P) }), 'EINVAL', 'dma_unmap.size');
    expectError(() => s.unmap({ flags: 0, address: 0xf000n, size: BigInt(6 * P) }), 'EINVAL', 'dma_unmap.size');
    expectError(() => s.unmap({ flags: 0, address: 0x10000n, size: 0n }), 'EINVAL', 'dma_unmap.size');
    expect(s.windows).toEqual(before);
  });

  it('removes every window with UNMAP_ALL (address and size 0)', () => {
    const s = space({ transport: new FakeTransport(64) });
    const a = mapMemfd(s, 0, P);
    s.map(req(P, P), null);
    mapMemfd(s, 8 * P, P);
    const view = s.map(0, 8, false)!;
    expectError(() => s.unmap({ flags: DmaFlag.UNMAP_ALL, address: BigInt(P), size: 0n }), 'EINVAL', 'dma_unmap.address');
    expectError(() => s.unmap({ flags: DmaFlag.UNMAP_ALL, address: 0n, size: BigInt(P) }), 'EINVAL', 'dma_unmap.size');
    expect(s.windows.length).toBe(3);
    s.unmap({ flags: DmaFlag.UNMAP_ALL, address: 0n, size: 0n });
    expect(s.windows).toEqual([]);
    expect(view.length).toBe(0);
    expect(a.length).toBe(P); // the test's own mapping is untouched
  });

  it('refuses the old GET_DIRTY_BITMAP flag with ENOTSUP and unknown flags with EINVAL', () => {
    const s = space();
    mapMemfd(s, 0, P);
    expectError(() => s.unmap({ flags: DmaFlag.UNMAP_GET_DIRTY_BITMAP, address: 0n, size: BigInt(P) }), 'ENOTSUP', 'dma_unmap.flags');
    expectError(() => s.unmap({ flags: 4, address: 0n, size: BigInt(P) }), 'EINVAL', 'dma_unmap.flags');
    expectError(() => s.unmap({ flags: -1, address: 0n, size: BigInt(P) }), 'EINVAL', 'dma_unmap.flags');
    expect(s.windows.length).toBe(1);
  });

  it('clear() drops every window and stops logging', () => {
    const s = space();
    mapMemfd(s, 0, P);
    s.loggingStart(4096n, []);
    s.clear();
    expect(s.windows).toEqual([]);
    expect(s.logging).toBeNull();
    mapMemfd(s, 0, P); // still usable, unlike after close()
  });
});

describe('windows without an fd', () => {
  it('reads and writes through the transport in chunks of at most maxTransfer', () => {
    const t = new FakeTransport(100);
    const s = space({ transport: t, maxTransfer: 100 });
    s.map(req(0x1000, P), null);
    expect(s.windows).toEqual([{ address: 0x1000n, size: BigInt(P), flags: RW, mapped: false }]);
    const data = Uint8Array.from({ length: 250 }, (_, i) => i);
    s.write(0x1010, data);
    expect(t.calls).toEqual([
      { op: 'write', address: 0x1010n, length: 100 },
      { op: 'write', address: 0x1074n, length: 100 },
      { op: 'write', address: 0x10d8n, length: 50 },
    ]);
    expect(t.bytes(0x1010n, 250)).toEqual([...data]);
    t.calls.length = 0;
    const out = new Uint8Array(201);
    s.read(0x100f, out);
    expect(t.calls.map((c) => c.length)).toEqual([100, 100, 1]);
    expect([...out]).toEqual([0, ...data.subarray(0, 200)]);
    expect(s.map(0x1000, 1, false)).toBeNull();
  });

  it('splits an access spanning an fd window and a message window, each on its own path', () => {
    const t = new FakeTransport(1 << 20);
    const s = space({ transport: t });
    const mapped = mapMemfd(s, 0, P);
    s.map(req(P, P), null);
    s.write(P - 2, new Uint8Array([1, 2, 3, 4]));
    expect([...mapped.subarray(P - 2)]).toEqual([1, 2]);
    expect(t.calls).toEqual([{ op: 'write', address: BigInt(P), length: 2 }]);
    expect(t.bytes(BigInt(P), 2)).toEqual([3, 4]);
    const out = new Uint8Array(4);
    s.read(P - 2, out);
    expect([...out]).toEqual([1, 2, 3, 4]);
  });

  it('passes on a transport failure, logging what the write may have reached', () => {
    const t = new FakeTransport(64);
    const s = space({ transport: t, maxTransfer: 64 });
    s.map(req(0, 4 * P), null);
    s.loggingStart(4096n, [{ iova: 0n, length: BigInt(4 * P) }]);
    let n = 0;
    t.before = () => {
      if (++n === 2) throw Object.assign(new Error('peer gone'), { code: 'ECONNRESET' });
    };
    // The first chunk (page 0) lands, the second (page 1) fails: both pages count as dirty.
    expectError(() => s.write(P - 64, new Uint8Array(3 * P)), 'ECONNRESET', undefined);
    expect(report(s, 0, 4 * P, P)).toEqual(expected(4, [0, 1]));
  });

  it('stops when a window is unmapped while a transfer waits for its reply', () => {
    const t = new FakeTransport(P);
    const s = space({ transport: t, maxTransfer: P });
    s.map(req(0, P), null);
    s.map(req(P, P), null);
    t.before = (_op, address) => {
      if (address === 0n) s.unmap({ flags: 0, address: BigInt(P), size: BigInt(P) });
    };
    expectError(() => s.write(0, new Uint8Array(2 * P)), 'EFAULT', 'gpa');
    expect(t.calls.map((c) => c.address)).toEqual([0n]);
  });
});

describe('GuestMemory access', () => {
  it('reads and writes across two adjacent windows', () => {
    const s = space();
    const a = mapMemfd(s, 0x10000, P);
    const b = mapMemfd(s, 0x11000, 2 * P);
    const data = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
    s.write(0x11000 - 5, data);
    expect([...a.subarray(P - 5)]).toEqual([1, 2, 3, 4, 5]);
    expect([...b.subarray(0, 11)]).toEqual([...data.subarray(5)]);
    const out = new Uint8Array(16);
    s.read(0x11000 - 5, out);
    expect([...out]).toEqual([...data]);
    expect(s.map(0x11000 - 5, 16, false)).toBeNull(); // a view lies in one window
    expect([...s.map(0x11000, 11, true)!]).toEqual([...data.subarray(5)]);
  });

  it('refuses an access that runs into a hole or a read-only window, writing nothing', () => {
    const s = space();
    const a = mapMemfd(s, 0, P);
    const ro = mapMemfd(s, P, P, DmaFlag.READ);
    mapMemfd(s, 3 * P, P);
    expectError(() => s.write(P - 2, new Uint8Array([1, 2, 3, 4])), 'EFAULT', 'gpa');
    expect([...a.subarray(P - 2)]).toEqual([0, 0]);
    expect([...ro.subarray(0, 2)]).toEqual([0, 0]);
    expectError(() => s.read(2 * P - 1, new Uint8Array(2)), 'EFAULT', 'gpa');
    expectError(() => s.write(2 * P, new Uint8Array(1)), 'EFAULT', 'gpa');
    expect(s.map(2 * P, 1, false)).toBeNull();
  });

  it('checks addresses like any GuestMemory', () => {
    const s = space();
    mapMemfd(s, 0, P);
    expectError(() => s.read(-1, new Uint8Array(1)), 'EINVAL', 'gpa');
    expectError(() => s.read(0.5, new Uint8Array(1)), 'EINVAL', 'gpa');
    expectError(() => s.read(2 ** 52, new Uint8Array(1)), 'EFAULT', 'gpa');
    expectError(() => s.map(-1, 1, false), 'EINVAL', 'gpa');
    expectError(() => s.markDirty(2 ** 52 - 1, 2), 'EFAULT', 'gpa');
    s.read(5 * P, new Uint8Array(0)); // nothing to access
  });
});

describe('DMA logging', () => {
  it('keeps a usable page size hint and replaces the others', () => {
    const s = space();
    const cases: [bigint, bigint][] = [
      [4096n, 4096n],
      [8192n, 8192n],
      [2n ** 30n, 2n ** 30n],
      [2n ** 31n, 2n ** 30n],
      [512n, 4096n],
      [0n, 4096n],
      [3n * 4096n, 4096n],
    ];
    for (const [hint, chosen] of cases) {
      expect(s.loggingStart(hint, [{ iova: 0n, length: 1n << 31n }])).toBe(chosen);
      expect(s.logging?.pageSize).toBe(chosen);
      s.loggingStop();
    }
  });

  it('logs device writes in the ranges given, reports them at the tracking page size and clears them', () => {
    const s = space();
    mapMemfd(s, 0, 64 * P);
    expect(s.loggingStart(4096n, [{ iova: 0n, length: BigInt(16 * P) }, { iova: BigInt(32 * P), length: BigInt(16 * P) }])).toBe(4096n);
    expect(s.logging).toEqual({
      pageSize: 4096n,
      all: false,
      ranges: [{ iova: 0n, length: BigInt(16 * P) }, { iova: BigInt(32 * P), length: BigInt(16 * P) }],
    });
    s.write(P + 10, new Uint8Array(P)); // pages 1 and 2
    s.markDirty(5 * P, 1); // page 5, written through a view
    s.write(20 * P, new Uint8Array(8)); // between the ranges: not logged
    s.write(33 * P, new Uint8Array(1)); // second range, its page 1
    s.read(7 * P, new Uint8Array(P)); // reads are not logged

    expect(report(s, 0, 16 * P, P)).toEqual(expected(16, [1, 2, 5]));
    expect(report(s, 0, 16 * P, P)).toEqual(expected(16, [])); // the report cleared them
    expect(report(s, 32 * P, 16 * P, P)).toEqual(expected(16, [1]));
  });

  it('reports at a smaller or larger page size than it tracks', () => {
    const s = space();
    mapMemfd(s, 0, 64 * P);
    expect(s.loggingStart(8192n, [{ iova: 0n, length: BigInt(64 * P) }])).toBe(8192n);
    s.markDirty(2 * P, 1); // tracking page 1 = 4 KiB pages 2 and 3
    s.markDirty(17 * P, 1); // tracking page 8 = 4 KiB pages 16 and 17
    // Smaller: a tracking page sets every report page it covers.
    expect(report(s, 0, 8 * P, P)).toEqual(expected(8, [2, 3]));
    // Larger: 32 KiB report pages; tracking page 8 is in report page 2.
    expect(report(s, 0, 64 * P, 8 * P)).toEqual(expected(8, [2]));
    expect(report(s, 0, 64 * P, 8 * P)).toEqual(expected(8, []));
  });

  it('writes only the bitmap into a larger buffer, and refuses a short one with ERANGE', () => {
    const s = space();
    s.loggingStart(4096n, [{ iova: 0n, length: BigInt(128 * P) }]);
    s.markDirty(65 * P, 1);
    const reply = new Uint8Array(48).fill(0xee);
    expectError(() => s.loggingReport(0n, BigInt(128 * P), 4096n, reply.subarray(8, 23)), 'ERANGE', 'out');
    s.loggingReport(0n, BigInt(128 * P), 4096n, reply.subarray(8, 40));
    expect([...reply.subarray(0, 8)]).toEqual(new Array(8).fill(0xee));
    expect([...reply.subarray(24)]).toEqual(new Array(24).fill(0xee));
    expect(bits(reply.subarray(8, 24), 128)).toEqual(expected(128, [65]));
    // Bits past the range are zero: a 70-page report fills two words, the last 58 bits 0.
    s.markDirty(69 * P, 1);
    const out = new Uint8Array(16).fill(0xff);
    s.loggingReport(0n, BigInt(70 * P), 4096n, out);
    expect(bits(out, 128)).toEqual(expected(128, [69]));
  });

  it('refuses reports that cannot be served, naming the field', () => {
    const s = space();
    const out = new Uint8Array(64);
    expectError(() => s.loggingReport(0n, BigInt(P), 4096n, out), 'EINVAL', 'dma_logging_report');
    s.loggingStart(4096n, [{ iova: 0n, length: BigInt(16 * P) }, { iova: BigInt(16 * P), length: BigInt(16 * P) }]);
    expectError(() => s.loggingReport(BigInt(40 * P), BigInt(P), 4096n, out), 'EINVAL', 'dma_logging_report.iova');
    expectError(() => s.loggingReport(BigInt(8 * P), BigInt(16 * P), 4096n, out), 'EINVAL', 'dma_logging_report.iova'); // spans two
    expectError(() => s.loggingReport(2n ** 63n, BigInt(P), 4096n, out), 'EINVAL', 'dma_logging_report.iova');
    expectError(() => s.loggingReport(BigInt(P), BigInt(2 * P), 8192n, out), 'EINVAL', 'dma_logging_report.iova'); // misaligned
    expectError(() => s.loggingReport(0n, BigInt(3 * P), 8192n, out), 'EINVAL', 'dma_logging_report.length');
    expectError(() => s.loggingReport(0n, 0n, 4096n, out), 'EINVAL', 'dma_logging_report.length');
    expectError(() => s.loggingReport(0n, BigInt(P), 3000n, out), 'EINVAL', 'dma_logging_report.page_size');
    expectError(() => s.loggingReport(0n, BigInt(P), 2048n, out), 'EINVAL', 'dma_logging_report.page_size');
    expectError(() => s.loggingReport(0n, BigInt(P), 0n, out), 'EINVAL', 'dma_logging_report.page_size');
  });

  it('refuses bad START requests, naming the range', () => {
    const s = space();
    const r = (iova: number | bigint, length: number | bigint) => ({ iova: BigInt(iova), length: BigInt(length) });
    expectError(() => s.loggingStart(4096n, [r(0, P), r(P, 0)]), 'EINVAL', 'dma_logging.ranges[1].length');
    expectError(() => s.loggingStart(4096n, [r(100, P)]), 'EINVAL', 'dma_logging.ranges[0].iova');
    expectError(() => s.loggingStart(4096n, [r(0, P + 1)]), 'EINVAL', 'dma_logging.ranges[0].length');
    expectError(() => s.loggingStart(4096n, [r(2 ** 52 - P, 2 * P)]), 'EINVAL', 'dma_logging.ranges[0].length');
    expectError(() => s.loggingStart(4096n, [r(2n ** 64n - BigInt(P), 2 * P)]), 'EINVAL', 'dma_logging.ranges[0].iova');
    expectError(() => s.loggingStart(4096n, [r(8 * P, 4 * P), r(0, P), r(10 * P, P)]), 'EINVAL', 'dma_logging.ranges[2].iova');
    expectError(() => s.loggingStart(-1n, []), 'EINVAL', 'dma_logging.page_size');
    const many = Array.from({ length: MAX_LOGGING_RANGES + 1 }, (_, i) => r(i * P, P));
    expectError(() => s.loggingStart(4096n, many), 'E2BIG', 'dma_logging.num_ranges');
    expect(s.logging).toBeNull();
    expect(s.loggingStart(4096n, many.slice(0, MAX_LOGGING_RANGES))).toBe(4096n);
    expectError(() => s.loggingStart(4096n, []), 'EBUSY', 'dma_logging');
  });

  it('stops: the bits are gone, reports are refused, and stopping again does nothing', () => {
    const s = space();
    mapMemfd(s, 0, 4 * P);
    s.loggingStart(4096n, [{ iova: 0n, length: BigInt(4 * P) }]);
    s.write(0, new Uint8Array(1));
    s.loggingStop();
    expect(s.logging).toBeNull();
    expectError(() => s.loggingReport(0n, BigInt(4 * P), 4096n, new Uint8Array(8)), 'EINVAL', 'dma_logging_report');
    s.loggingStop();
    s.write(P, new Uint8Array(1)); // not logged anywhere
    s.loggingStart(4096n, [{ iova: 0n, length: BigInt(4 * P) }]);
    expect(report(s, 0, 4 * P, P)).toEqual(expected(4, []));
  });

  it('grows the page size when the ranges would need more bits than allowed', () => {
    const s = space({ maxLogPages: 4 });
    expect(s.loggingStart(4096n, [{ iova: 0n, length: BigInt(16 * P) }])).toBe(16384n);
    s.loggingStop();
    const t = space({ maxLogPages: 1 });
    expectError(() => t.loggingStart(4096n, [{ iova: 0n, length: BigInt(P) }, { iova: 2n ** 31n, length: BigInt(P) }]), 'ENOMEM', 'dma_logging.ranges');
    expect(t.logging).toBeNull();
  });

  describe('with no ranges (log every write)', () => {
    it('tracks the windows mapped at start and those mapped later, message-based ones too', () => {
      const t = new FakeTransport(P);
      const s = space({ transport: t, maxTransfer: P });
      mapMemfd(s, 0x100000, 4 * P);
      expect(s.loggingStart(4096n, [])).toBe(4096n);
      expect(s.logging).toEqual({ pageSize: 4096n, all: true, ranges: [{ iova: 0x100000n, length: BigInt(4 * P) }] });
      mapMemfd(s, 0x200000, 2 * P);
      s.map(req(0x300000, 2 * P), null);
      s.write(0x100000 + 3 * P, new Uint8Array(1));
      s.write(0x200000 + P, new Uint8Array(1));
      s.write(0x300000, new Uint8Array(P + 1));
      expect(report(s, 0x100000, 4 * P, P)).toEqual(expected(4, [3]));
      expect(report(s, 0x200000, 2 * P, P)).toEqual(expected(2, [1]));
      expect(report(s, 0x300000, 2 * P, P)).toEqual(expected(2, [0, 1]));
      expectError(() => s.loggingReport(0x400000n, BigInt(P), 4096n, new Uint8Array(8)), 'EINVAL', 'dma_logging_report.iova');
    });

    it('keeps a window’s bits after it is unmapped, and a window mapped there again continues them', () => {
      const s = space();
      mapMemfd(s, 0, 4 * P);
      s.loggingStart(4096n, []);
      s.write(2 * P, new Uint8Array(1));
      s.unmap({ flags: 0, address: 0n, size: BigInt(4 * P) });
      expect(s.logging?.ranges).toEqual([{ iova: 0n, length: BigInt(4 * P) }]);
      mapMemfd(s, P, P);
      s.write(P, new Uint8Array(1));
      expect(report(s, 0, 4 * P, P)).toEqual(expected(4, [1, 2]));
    });

    it('merges ranges of adjacent windows, rounded out to the tracking page, keeping their bits', () => {
      const s = space();
      mapMemfd(s, 0x10000, P);
      expect(s.loggingStart(16384n, [])).toBe(16384n);
      expect(s.logging?.ranges).toEqual([{ iova: 0x10000n, length: 16384n }]);
      s.write(0x10000, new Uint8Array(1));
      mapMemfd(s, 0x10000 + 4 * P, 2 * P); // adjacent to the rounded-out range: merged
      mapMemfd(s, 0x10000 + 12 * P, P); // separate
      expect(s.logging?.ranges).toEqual([
        { iova: 0x10000n, length: 32768n },
        { iova: 0x1c000n, length: 16384n },
      ]);
      s.write(0x10000 + 5 * P, new Uint8Array(1));
      mapMemfd(s, 0x10000 + 8 * P, P); // fills the gap: all three merge
      expect(s.logging?.ranges).toEqual([{ iova: 0x10000n, length: 65536n }]);
      s.write(0x10000 + 12 * P, new Uint8Array(1));
      expect(report(s, 0x10000, 16 * P, P)).toEqual(expected(16, [0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15]));
    });

    it('refuses a window whose bits would pass the limit with ENOMEM, closing its fd', () => {
      const s = space({ maxLogPages: 4 });
      mapMemfd(s, 0, 2 * P);
      s.loggingStart(4096n, []);
      const { fd } = memfd(4 * P);
      expectError(() => s.map(req(0x100000, 4 * P), fd), 'ENOMEM', 'dma_map.size');
      expectClosed(fd);
      expect(s.windows.length).toBe(1);
      mapMemfd(s, 0x100000, 2 * P);
      expect(s.logging?.ranges.length).toBe(2);
    });
  });
});

describe('model check', () => {
  /** One window of a random layout: where, how big, its permissions and whether it has an fd. */
  const windowArb = fc.record({
    page: fc.integer({ min: 0, max: 15 }),
    pages: fc.integer({ min: 1, max: 4 }),
    flags: fc.constantFrom(DmaFlag.READ, DmaFlag.WRITE, RW, RW),
    withFd: fc.boolean(),
  });
  const opArb = fc.record({
    write: fc.boolean(),
    gpa: fc.integer({ min: 0, max: 20 * P }),
    length: fc.integer({ min: 0, max: 3 * P }),
    seed: fc.integer({ min: 0, max: 255 }),
  });

  it('read and write match a map-of-bytes model over random window layouts, and logging sees every write', { timeout: fuzzTimeout(30_000) }, () => {
    fc.assert(
      fc.property(fc.array(windowArb, { maxLength: 8 }), fc.array(opArb, { maxLength: 24 }), fc.integer({ min: 1, max: 3 * P }), (layout, ops, maxTransfer) => {
        const t = new FakeTransport(maxTransfer);
        const s = new VfioDmaSpace({ maxWindows: 64, transport: t, maxTransfer });
        const model = new Map<number, number>();
        const perms = new Map<number, number>(); // page -> flags
        const backing: { gpa: number; size: number; mine: number | null }[] = [];
        const dirty = new Set<number>();
        try {
          s.loggingStart(4096n, []);
          for (const w of layout) {
            const gpa = w.page * P;
            const size = w.pages * P;
            const overlaps = Array.from({ length: w.pages }, (_, i) => w.page + i).some((p) => perms.has(p));
            const m = w.withFd ? memfd(size) : null;
            const mapIt = () => s.map(req(gpa, size, w.flags), m === null ? null : m.fd);
            if (overlaps) {
              expectError(mapIt, 'EEXIST', 'dma_map.address');
            } else {
              mapIt();
              for (let i = 0; i < w.pages; i++) perms.set(w.page + i, w.flags);
              backing.push({ gpa, size, mine: m === null ? null : m.mine });
            }
            if (m !== null) expectClosed(m.fd);
          }
          for (const op of ops) {
            const allowed = (need: number) => {
              for (let a = op.gpa; a < op.gpa + op.length; a++) if (((perms.get(Math.floor(a / P)) ?? 0) & need) === 0) return false;
              return true;
            };
            if (op.write) {
              const data = Uint8Array.from({ length: op.length }, (_, i) => (op.seed + i * 7) & 0xff);
              if (allowed(DmaFlag.WRITE)) {
                s.write(op.gpa, data);
                data.forEach((b, i) => model.set(op.gpa + i, b));
                for (let a = op.gpa; a < op.gpa + op.length; a++) dirty.add(Math.floor(a / P));
              } else {
                expectError(() => s.write(op.gpa, data), 'EFAULT', 'gpa');
              }
            } else if (allowed(DmaFlag.READ)) {
              const out = new Uint8Array(op.length);
              s.read(op.gpa, out);
              expect([...out]).toEqual(Array.from({ length: op.length }, (_, i) => model.get(op.gpa + i) ?? 0));
            } else {
              expectError(() => s.read(op.gpa, new Uint8Array(op.length)), 'EFAULT', 'gpa');
            }
          }
          // Every window holds exactly the model's bytes, seen from outside the space.
          for (const b of backing) {
            const actual = b.mine === null ? t.bytes(BigInt(b.gpa), b.size) : fileBytes(b.mine, b.size);
            expect(actual).toEqual(Array.from({ length: b.size }, (_, i) => model.get(b.gpa + i) ?? 0));
          }
          // Every logged page is one the model wrote, and every page it wrote is logged.
          const reported = new Set<number>();
          for (const r of s.logging!.ranges) {
            const first = Number(r.iova) / P;
            const n = Number(r.length) / P;
            report(s, Number(r.iova), Number(r.length), P).forEach((bit, i) => {
              if (bit) {
                expect(i).toBeLessThan(n);
                reported.add(first + i);
              }
            });
          }
          expect([...reported].sort((a, b) => a - b)).toEqual([...dirty].sort((a, b) => a - b));
        } finally {
          s.close();
          for (const fd of ownFds.splice(0)) closeFd(fd);
        }
      }),
      fuzzParams('DMA windows: accesses and logging against a byte model (memfd windows)', { numRuns: 150 }),
    );
  });
});

describe('window table (property)', () => {
  // DMA_MAP/DMA_UNMAP fields straight from a client: any u64, biased towards the values where
  // checks break (unaligned, zero, 2^52 and its neighbours, wrapping sums). Windows have no fd, so
  // a run costs no syscalls; the model is a sorted list of windows.
  const GPA_LIMIT = 2n ** 52n;
  const U64 = 2n ** 64n - 1n;
  const edgy = fc.oneof(
    { weight: 4, arbitrary: fc.integer({ min: 0, max: 24 }).map((p) => BigInt(p * P)) },
    { weight: 1, arbitrary: fc.constantFrom(0n, 1n, 4095n, 4097n, GPA_LIMIT - BigInt(P), GPA_LIMIT, GPA_LIMIT + BigInt(P), U64 - 4095n, U64, 2n ** 63n) },
    { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: U64 }) },
  );
  const sizeArb = fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 4 }).map((n) => BigInt(n * P)) }, { weight: 1, arbitrary: edgy });
  const flagsArb = fc.oneof({ weight: 6, arbitrary: fc.constantFrom(DmaFlag.READ, DmaFlag.WRITE, RW) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff_ffff }) });
  type Op =
    | { kind: 'map'; flags: number; offset: bigint; address: bigint; size: bigint }
    | { kind: 'unmap'; flags: number; address: bigint; size: bigint; pick: number | null }
    | { kind: 'access'; write: boolean; gpa: number; length: number };
  const opArb: fc.Arbitrary<Op> = fc.oneof(
    { weight: 4, arbitrary: fc.record({ kind: fc.constant('map' as const), flags: flagsArb, offset: fc.oneof({ weight: 6, arbitrary: fc.constant(0n) }, { weight: 1, arbitrary: edgy }), address: edgy, size: sizeArb }) },
    {
      weight: 3,
      arbitrary: fc.record({
        kind: fc.constant('unmap' as const),
        flags: fc.oneof({ weight: 8, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.constantFrom(DmaFlag.UNMAP_ALL, DmaFlag.UNMAP_GET_DIRTY_BITMAP, 4) }),
        address: edgy,
        size: sizeArb,
        pick: fc.option(fc.nat(), { freq: 2 }),
      }),
    },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('access' as const), write: fc.boolean(), gpa: fc.integer({ min: 0, max: 26 * P }), length: fc.integer({ min: 0, max: 2 * P }) }) },
  );

  interface ModelWindow {
    address: bigint;
    size: bigint;
    flags: number;
  }

  function expectedMap(model: ModelWindow[], op: Extract<Op, { kind: 'map' }>, maxWindows: number): [string, string] | null {
    if ((op.flags & ~RW) !== 0 || (op.flags & RW) === 0) return ['EINVAL', 'dma_map.flags'];
    if (op.size === 0n) return ['EINVAL', 'dma_map.size'];
    if (op.address % 4096n !== 0n) return ['EINVAL', 'dma_map.address'];
    if (op.size % 4096n !== 0n) return ['EINVAL', 'dma_map.size'];
    if (op.offset % 4096n !== 0n) return ['EINVAL', 'dma_map.offset'];
    if (op.address + op.size > GPA_LIMIT) return ['EINVAL', op.address >= GPA_LIMIT ? 'dma_map.address' : 'dma_map.size'];
    if (op.offset !== 0n) return ['EINVAL', 'dma_map.offset'];
    if (model.some((w) => w.address < op.address + op.size && op.address < w.address + w.size)) return ['EEXIST', 'dma_map.address'];
    if (model.length >= maxWindows) return ['ENOSPC', 'dma_map.address'];
    return null;
  }

  function expectedUnmap(model: ModelWindow[], flags: number, address: bigint, size: bigint): [string, string] | 'all' | number {
    if ((flags & ~(DmaFlag.UNMAP_ALL | DmaFlag.UNMAP_GET_DIRTY_BITMAP)) !== 0) return ['EINVAL', 'dma_unmap.flags'];
    if (flags & DmaFlag.UNMAP_GET_DIRTY_BITMAP) return ['ENOTSUP', 'dma_unmap.flags'];
    if (flags & DmaFlag.UNMAP_ALL) {
      if (address !== 0n) return ['EINVAL', 'dma_unmap.address'];
      if (size !== 0n) return ['EINVAL', 'dma_unmap.size'];
      return 'all';
    }
    if (size === 0n) return ['EINVAL', 'dma_unmap.size'];
    const i = model.findIndex((w) => w.address + w.size > address);
    if (i < 0 || model[i]!.address >= address + size) return ['ENOENT', 'dma_unmap.address'];
    if (model[i]!.address !== address || model[i]!.size !== size) return ['EINVAL', 'dma_unmap.size'];
    return i;
  }

  it('maps, unmaps and refuses exactly as the rules say, and accesses reach only what is mapped', { timeout: fuzzTimeout(30_000) }, () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 6 }), fc.array(opArb, { maxLength: 24 }), (maxWindows, ops) => {
        const t = new FakeTransport(2 * P);
        const s = new VfioDmaSpace({ maxWindows, transport: t, maxTransfer: 2 * P });
        const model: ModelWindow[] = [];
        try {
          for (const op of ops) {
            if (op.kind === 'map') {
              const want = expectedMap(model, op, maxWindows);
              const e = thrownOrNull(() => s.map({ flags: op.flags, offset: op.offset, address: op.address, size: op.size }, null));
              expect(e === null ? null : [e.code, e.field]).toEqual(want);
              if (want === null) {
                model.push({ address: op.address, size: op.size, flags: op.flags });
                model.sort((a, b) => (a.address < b.address ? -1 : 1));
              }
            } else if (op.kind === 'unmap') {
              // Often the exact window (the common case), else the fields as drawn.
              const w = op.pick !== null && model.length > 0 ? model[op.pick % model.length]! : null;
              const address = w ? w.address : op.address;
              const size = w ? w.size : op.size;
              const want = expectedUnmap(model, op.flags, address, size);
              const e = thrownOrNull(() => s.unmap({ flags: op.flags, address, size }));
              if (Array.isArray(want)) {
                expect(e === null ? null : [e.code, e.field]).toEqual(want);
              } else {
                expect(e).toBeNull();
                if (want === 'all') model.length = 0;
                else model.splice(want, 1);
              }
            } else {
              const need = op.write ? DmaFlag.WRITE : DmaFlag.READ;
              let allowed = true;
              for (let a = op.gpa; a < op.gpa + op.length && allowed; a += a % P === 0 ? P : P - (a % P)) {
                const w = model.find((m) => BigInt(a) >= m.address && BigInt(a) < m.address + m.size);
                if (!w || (w.flags & need) === 0) allowed = false;
              }
              const buf = new Uint8Array(op.length);
              const e = thrownOrNull(() => (op.write ? s.write(op.gpa, buf) : s.read(op.gpa, buf)));
              expect(e === null ? null : e.code).toBe(allowed ? null : 'EFAULT');
            }
            expect(s.windows.map((w) => [w.address, w.size, w.flags])).toEqual(model.map((w) => [w.address, w.size, w.flags]));
          }
        } finally {
          s.close();
        }
      }),
      fuzzParams('DMA window table: DMA_MAP/DMA_UNMAP of any u64 fields against a model', { numRuns: 300 }),
    );
  });
});

function thrownOrNull(fn: () => unknown): { code: string; field: string | undefined } | null {
  try {
    fn();
    return null;
  } catch (e) {
    const err = e as { code?: string; field?: string };
    if (typeof err.code !== 'string') throw e;
    return { code: err.code, field: err.field };
  }
}
