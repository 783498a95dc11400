import { describe, it, expect, afterEach } from 'vitest';
import { closeFd, eventfdCreate, pipe } from '../../src/native/fd.js';
import { sendMsg, socketPair, socketRaw } from '../../src/native/socket.js';
import {
  IO,
  IOC,
  IOC_NONE,
  IOC_READ,
  IOC_WRITE,
  IOR,
  IOW,
  IOWR,
  addressOf,
  ioctl,
  ioctlMarshalForTest,
  type IoctlArg,
} from '../../src/native/ioctl.js';
import { NEVER_OPEN_FD, expectArgError, expectErrno, isOpen, thrown } from './helpers.js';

const FIONREAD = 0x541b;
const SIOCGIFCONF = 0x8912;
const AF_INET = 2;
const SOCK_DGRAM = 2;
const IFREQ_SIZE = 40; // struct ifreq on LP64: 16-byte name + 24-byte union

const opened: number[] = [];
afterEach(() => {
  for (const fd of opened.splice(0)) if (isOpen(fd)) closeFd(fd);
});
function track<T extends number | number[]>(fds: T): T {
  opened.push(...(Array.isArray(fds) ? fds : [fds]));
  return fds;
}

/** The pointer stored at `offset` of `bytes`, in native (little-endian on x64/arm64) order. */
function pointerAt(bytes: Uint8Array, offset: number): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(offset, true);
}

describe('ioctl on real drivers', () => {
  it('FIONREAD writes the queued byte count through a buffer argument', () => {
    const [a, b] = track(socketPair());
    sendMsg(a!, Buffer.from('hello'));
    const count = new Int32Array(1);
    expect(ioctl(b!, FIONREAD, count)).toBe(0);
    expect(count[0]).toBe(5);
    const viaDataView = new DataView(new ArrayBuffer(4));
    ioctl(b!, FIONREAD, viaDataView);
    expect(viaDataView.getInt32(0, true)).toBe(5);
    const viaArrayBuffer = new ArrayBuffer(4);
    ioctl(b!, FIONREAD, viaArrayBuffer);
    expect(new Int32Array(viaArrayBuffer)[0]).toBe(5);
  });

  it('SIOCGIFCONF: the kernel follows the marshaled pointer and fills our buffer', () => {
    const fd = track(socketRaw(AF_INET, SOCK_DGRAM));
    // struct ifconf { int ifc_len; /* pad */ char *ifc_buf; }
    const ifconf = new Uint8Array(16);
    const view = new DataView(ifconf.buffer);
    // With a NULL buffer the kernel only reports the length it needs.
    view.setInt32(0, 0, true);
    expect(ioctl(fd, SIOCGIFCONF, ifconf)).toBe(0);
    const needed = view.getInt32(0, true);
    expect(needed).toBeGreaterThanOrEqual(IFREQ_SIZE);
    expect(needed % IFREQ_SIZE).toBe(0);

    const requests = new Uint8Array(needed + 4 * IFREQ_SIZE);
    view.setInt32(0, requests.byteLength, true);
    expect(ioctl(fd, SIOCGIFCONF, { data: ifconf, pointers: [{ offset: 8, target: requests }] })).toBe(0);
    expect(pointerAt(ifconf, 8)).toBe(addressOf(requests));
    const used = view.getInt32(0, true);
    expect(used).toBe(needed);
    const names: string[] = [];
    for (let at = 0; at < used; at += IFREQ_SIZE) {
      const name = requests.subarray(at, at + 16);
      names.push(Buffer.from(name.subarray(0, name.indexOf(0))).toString());
    }
    expect(names).toContain('lo');
  });

  it('passes integers by value: an integer where a pointer is expected is EFAULT', () => {
    const [, b] = track(socketPair());
    expectErrno(() => ioctl(b!, FIONREAD, 8), 'EFAULT', 'ioctl');
    expectErrno(() => ioctl(b!, FIONREAD), 'EFAULT', 'ioctl'); // no argument is a NULL pointer
  });

  it('reports ENOTTY for a request the driver does not know, and EBADF for bad fds', () => {
    const [r] = track(pipe());
    const bogus = IOR('x', 0xfe, 4);
    expectErrno(() => ioctl(r!, bogus, new Uint8Array(4)), 'ENOTTY', 'ioctl');
    expectErrno(() => ioctl(r!, bogus, -1n), 'ENOTTY', 'ioctl');
    expectErrno(() => ioctl(r!, bogus, 2n ** 64n - 1n), 'ENOTTY', 'ioctl');
    expectErrno(() => ioctl(NEVER_OPEN_FD, FIONREAD, new Int32Array(1)), 'EBADF', 'ioctl');
    const fd = eventfdCreate();
    closeFd(fd);
    expectErrno(() => ioctl(fd, FIONREAD, new Int32Array(1)), 'EBADF', 'ioctl');
  });

  it('validates fd, request and argument types', () => {
    const [r] = track(pipe());
    expectArgError(() => ioctl(-1, FIONREAD), 'RangeError', 'fd');
    expectArgError(() => ioctl(r!, -1), 'RangeError', 'request');
    expectArgError(() => ioctl(r!, 2 ** 32), 'RangeError', 'request');
    expectArgError(() => ioctl(r!, '0x541b' as unknown as number), 'TypeError', 'request');
    expectArgError(() => ioctl(r!, FIONREAD, 'buf' as unknown as number), 'TypeError', 'arg');
    expectArgError(() => ioctl(r!, FIONREAD, null as unknown as number), 'TypeError', 'arg');
    expectArgError(() => ioctl(r!, FIONREAD, 1.5), 'TypeError', 'arg');
    expectArgError(() => ioctl(r!, FIONREAD, 2 ** 53), 'RangeError', 'arg');
    expectArgError(() => ioctl(r!, FIONREAD, 2n ** 64n), 'RangeError', 'arg');
    expectArgError(() => ioctl(r!, FIONREAD, -(2n ** 63n) - 1n), 'RangeError', 'arg');
    const ab = new ArrayBuffer(4);
    structuredClone(ab, { transfer: [ab] });
    expectArgError(() => ioctl(r!, FIONREAD, ab), 'EINVAL', 'arg');
  });
});

describe('pointer marshaling', () => {
  it('lays out MMAPBATCH_V2-style pointers and keeps the other bytes', () => {
    // struct privcmd_mmapbatch_v2 { u32 num; u16 dom; u64 addr; const xen_pfn_t *arr; int *err; }
    const batch = new Uint8Array(32);
    const view = new DataView(batch.buffer);
    view.setUint32(0, 3, true);
    view.setUint16(4, 7, true);
    view.setBigUint64(8, 0x7f0000000000n, true);
    const arr = new BigUint64Array([1n, 2n, 3n]);
    const err = new Int32Array(3);
    const laidOut = ioctlMarshalForTest({ data: batch, pointers: [{ offset: 16, target: arr }, { offset: 24, target: err }] });
    expect(laidOut).not.toBe(batch);
    expect(pointerAt(laidOut, 16)).toBe(addressOf(arr));
    expect(pointerAt(laidOut, 24)).toBe(addressOf(err));
    expect(new DataView(laidOut.buffer).getUint32(0, true)).toBe(3);
    expect(new DataView(laidOut.buffer).getUint16(4, true)).toBe(7);
    expect(new DataView(laidOut.buffer).getBigUint64(8, true)).toBe(0x7f0000000000n);
    expect([...laidOut]).toEqual([...batch]); // marshaling writes into the caller's struct too
  });

  it('follows nested pointers: DM_OP → buffer array → buffers', () => {
    // struct privcmd_dm_op { domid_t dom; u16 num; const struct privcmd_dm_op_buf *ubufs; }
    // struct privcmd_dm_op_buf { void *uptr; size_t size; }
    const header = new Uint8Array(24);
    const payload = new DataView(new ArrayBuffer(40), 8, 16);
    const bufs = new Uint8Array(32);
    new DataView(bufs.buffer).setBigUint64(8, 24n, true);
    new DataView(bufs.buffer).setBigUint64(24, 16n, true);
    const top = new Uint8Array(16);
    new DataView(top.buffer).setUint16(0, 5, true);
    new DataView(top.buffer).setUint16(2, 2, true);
    const arg: IoctlArg = {
      data: top,
      pointers: [
        {
          offset: 8,
          target: {
            data: bufs,
            pointers: [
              { offset: 0, target: header },
              { offset: 16, target: payload },
            ],
          },
        },
      ],
    };
    const laidOut = ioctlMarshalForTest(arg);
    expect(pointerAt(laidOut, 8)).toBe(addressOf(bufs));
    expect(pointerAt(bufs, 0)).toBe(addressOf(header));
    expect(pointerAt(bufs, 16)).toBe(addressOf(payload));
    expect(addressOf(payload)).toBe(addressOf(payload.buffer) + 8n);
    expect(new DataView(bufs.buffer).getBigUint64(8, true)).toBe(24n);
    expect(new DataView(laidOut.buffer).getUint16(2, true)).toBe(2);
  });

  it('points at the view, not its whole ArrayBuffer', () => {
    const backing = new Uint8Array(64);
    const window = backing.subarray(24, 40);
    const laidOut = ioctlMarshalForTest({ data: new Uint8Array(8), pointers: [{ offset: 0, target: window }] });
    expect(pointerAt(laidOut, 0)).toBe(addressOf(backing) + 24n);
    const data = backing.subarray(8, 24); // data may itself be a window
    ioctlMarshalForTest({ data, pointers: [{ offset: 8, target: backing.buffer }] });
    expect(pointerAt(backing, 16)).toBe(addressOf(backing.buffer));
  });

  it('bounds-checks every offset, naming it, and writes nothing when any check fails', () => {
    const data = new Uint8Array(16);
    const target = new Uint8Array(4);
    expectArgError(
      () => ioctlMarshalForTest({ data, pointers: [{ offset: 0, target }, { offset: 9, target }] }),
      'ERANGE',
      'arg.pointers[1].offset',
    );
    expect([...data]).toEqual(new Array<number>(16).fill(0));
    expectArgError(
      () => ioctl(0, FIONREAD, { data, pointers: [{ offset: 0, target }, { offset: 16, target }] }),
      'ERANGE',
      'arg.pointers[1].offset',
    );
    expectArgError(() => ioctlMarshalForTest({ data: new Uint8Array(7), pointers: [{ offset: 0, target }] }), 'ERANGE', 'arg.pointers[0].offset');
    expectArgError(
      () =>
        ioctlMarshalForTest({
          data,
          pointers: [{ offset: 0, target: { data: new Uint8Array(8), pointers: [{ offset: 1, target }] } }],
        }),
      'ERANGE',
      'arg.pointers[0].target.pointers[0].offset',
    );
    expect([...data]).toEqual(new Array<number>(16).fill(0));
    ioctlMarshalForTest({ data, pointers: [{ offset: 8, target }] }); // offset + 8 == length is fine
    expect(pointerAt(data, 8)).toBe(addressOf(target));
  });

  it('rejects overlapping pointers in one struct', () => {
    const target = new Uint8Array(1);
    expectArgError(
      () => ioctlMarshalForTest({ data: new Uint8Array(32), pointers: [{ offset: 8, target }, { offset: 12, target }] }),
      'EINVAL',
      'arg.pointers[1].offset',
    );
    expectArgError(
      () => ioctlMarshalForTest({ data: new Uint8Array(32), pointers: [{ offset: 16, target }, { offset: 16, target }] }),
      'EINVAL',
      'arg.pointers[1].offset',
    );
  });

  it('limits nesting to 8 levels, and so survives a cycle', () => {
    const chain = (levels: number): IoctlArg => {
      let arg: IoctlArg = { data: new Uint8Array(8) };
      for (let i = 1; i < levels; i++) arg = { data: new Uint8Array(8), pointers: [{ offset: 0, target: arg }] };
      return arg;
    };
    ioctlMarshalForTest(chain(8));
    expectArgError(() => ioctlMarshalForTest(chain(9)), 'E2BIG', 'arg' + '.pointers[0].target'.repeat(8));
    const cyclic: IoctlArg = { data: new Uint8Array(8), pointers: [] };
    (cyclic.pointers as IoctlArg['pointers'] & object[]).push({ offset: 0, target: cyclic });
    expect(thrown(() => ioctlMarshalForTest(cyclic)).code).toBe('E2BIG');
  });

  it('limits an argument to 4096 buffers', () => {
    const target = new Uint8Array(1);
    const make = (pointers: number): IoctlArg => ({
      data: new Uint8Array(pointers * 8),
      pointers: Array.from({ length: pointers }, (_, i) => ({ offset: i * 8, target })),
    });
    ioctlMarshalForTest(make(4095)); // 4095 targets + the struct itself
    expectArgError(() => ioctlMarshalForTest(make(4096)), 'E2BIG', 'arg.pointers[4095].target');
  });

  it('rejects detached buffers anywhere in the tree', () => {
    const gone = new Uint8Array(8);
    structuredClone(gone.buffer, { transfer: [gone.buffer] });
    expectArgError(() => ioctlMarshalForTest({ data: gone }), 'EINVAL', 'arg.data');
    expectArgError(() => ioctlMarshalForTest({ data: new Uint8Array(8), pointers: [{ offset: 0, target: gone }] }), 'EINVAL', 'arg.pointers[0].target');
    expectArgError(
      () => ioctlMarshalForTest({ data: new Uint8Array(8), pointers: [{ offset: 0, target: { data: gone } }] }),
      'EINVAL',
      'arg.pointers[0].target.data',
    );
  });

  it('takes addresses only after all JS has run, so a getter cannot detach a buffer in between', () => {
    const victim = new Uint8Array(8);
    const data = new Uint8Array(16);
    const pointers = [
      { offset: 0, target: victim },
      {
        offset: 8,
        get target() {
          structuredClone(victim.buffer, { transfer: [victim.buffer] });
          return new Uint8Array(1);
        },
      },
    ];
    expectArgError(() => ioctlMarshalForTest({ data, pointers }), 'EINVAL', 'arg.pointers[0].target');
    expect([...data]).toEqual(new Array<number>(16).fill(0));
  });

  it('names the field for malformed arguments', () => {
    const target = new Uint8Array(1);
    const cases: Array<[unknown, string, string]> = [
      [{}, 'TypeError', 'arg.data'],
      [{ data: [1, 2] }, 'TypeError', 'arg.data'],
      [[], 'TypeError', 'arg'],
      [{ data: new Uint8Array(8), pointers: {} }, 'TypeError', 'arg.pointers'],
      [{ data: new Uint8Array(8), pointers: [5] }, 'TypeError', 'arg.pointers[0]'],
      [{ data: new Uint8Array(8), pointers: [{ offset: '0', target }] }, 'TypeError', 'arg.pointers[0].offset'],
      [{ data: new Uint8Array(8), pointers: [{ offset: 0.5, target }] }, 'TypeError', 'arg.pointers[0].offset'],
      [{ data: new Uint8Array(8), pointers: [{ offset: -8, target }] }, 'RangeError', 'arg.pointers[0].offset'],
      [{ data: new Uint8Array(8), pointers: [{ offset: 0n, target }] }, 'TypeError', 'arg.pointers[0].offset'],
      [{ data: new Uint8Array(8), pointers: [{ offset: 0, target: 42 }] }, 'TypeError', 'arg.pointers[0].target'],
      [{ data: new Uint8Array(8), pointers: [{ offset: 0 }] }, 'TypeError', 'arg.pointers[0].target'],
      [{ data: new Uint8Array(8), pointers: [{ offset: 0, target: [target] }] }, 'TypeError', 'arg.pointers[0].target'],
      [{ data: new Uint8Array(8), pointers: [{ offset: 0, target: { data: 'x' } }] }, 'TypeError', 'arg.pointers[0].target.data'],
      [{ data: new Uint8Array(new SharedArrayBuffer(8)) }, 'TypeError', 'arg.data'],
      [{ data: new Uint8Array(8), pointers: [{ offset: 0, target: new Int32Array(new SharedArrayBuffer(8)) }] }, 'TypeError', 'arg.pointers[0].target'],
    ];
    for (const [arg, kind, field] of cases) expectArgError(() => ioctlMarshalForTest(arg as IoctlArg), kind, field);
  });

  it('addressOf validates its argument', () => {
    expectArgError(() => addressOf('x' as unknown as Uint8Array), 'TypeError', 'view');
    const ab = new ArrayBuffer(8);
    structuredClone(ab, { transfer: [ab] });
    expectArgError(() => addressOf(ab), 'EINVAL', 'view');
  });
});

describe('request number helpers', () => {
  it('match the kernel headers', () => {
    expect(IOC(IOC_NONE, 'P', 0, 48)).toBe(0x00305000); // IOCTL_PRIVCMD_HYPERCALL
    expect(IOC(IOC_NONE, 'P', 4, 32)).toBe(0x00205004); // IOCTL_PRIVCMD_MMAPBATCH_V2
    expect(IO(';', 100)).toBe(0x3b64); // VFIO_GET_API_VERSION
    expect(IOR('E', 0x01, 4)).toBe(0x80044501); // EVIOCGVERSION
    expect(IOW(0x50, 5, 16)).toBe(0x40105005);
    expect(IOWR('d', 0x00, 64)).toBe(0xc0406400); // DRM_IOCTL_VERSION on LP64
    expect(IOC(IOC_READ | IOC_WRITE, 0xff, 0xff, 0x3fff)).toBe(0xffffffff);
    expect(IOC_WRITE).toBe(1);
  });

  it('validate each field', () => {
    expectArgError(() => IOC(4, 'P', 0, 0), 'ERANGE', 'dir');
    expectArgError(() => IOC(IOC_NONE, 'PP', 0, 0), 'EINVAL', 'type');
    expectArgError(() => IOC(IOC_NONE, 'Ā', 0, 0), 'EINVAL', 'type');
    expectArgError(() => IOC(IOC_NONE, 256, 0, 0), 'ERANGE', 'type');
    expectArgError(() => IO('P', 256), 'ERANGE', 'nr');
    expectArgError(() => IOR('P', 0, 16384), 'ERANGE', 'size');
    expectArgError(() => IOW('P', 0, 1.5), 'EINVAL', 'size');
    expectArgError(() => IOWR('P', -1, 8), 'ERANGE', 'nr');
  });
});
