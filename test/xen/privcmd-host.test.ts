import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  decodeCreateIoreqServer,
  decodeGetIoreqServerInfo,
  decodeNrVcpus,
  encodeCreateIoreqServer,
  encodeDestroyIoreqServer,
  encodeGetIoreqServerInfo,
  encodeInjectMsi,
  encodeIoRange,
  encodeMapMemTypeToIoreqServer,
  encodeModifiedMemory,
  encodeModifiedMemoryExtents,
  encodeNrVcpus,
  encodeDomctlMaxMem,
  encodeDomidArg,
  encodeMemoryReservation,
  encodePinMemoryCacheattr,
  encodeRelocateMemory,
  encodeSetIoreqServerState,
  encodeSetIsaIrqLevel,
  encodeSetMemType,
  encodeSetPciIntxLevel,
  encodeTrackDirtyVram,
  evtchnBindInterdomainArg,
  evtchnPortArg,
  evtchnRestrictDomidArg,
  privcmdDmOpArg,
  privcmdHypercallArg,
  privcmdMmapBatchV2Arg,
  privcmdMmapResourceArg,
  privcmdRestrictArg,
} from '../../adapters/xen/abi.js';
import type { EventBinding } from '../../adapters/xen/host.js';
import { PrivcmdXenHost, evtchnNotify, mmapBatchFailure } from '../../adapters/xen/privcmd-host.js';
import { addressOf, ioctlMarshalForTest, type IoctlArg } from '../../src/native/ioctl.js';
import { mmapFd, munmap } from '../../src/native/mmap.js';
import { expectArgError, fdFlags, isOpen, thrown } from '../native/helpers.js';

// Offsets below are read off xen/include/public/hvm/dm_op.h and Linux's include/uapi/xen/privcmd.h
// and evtchn.h directly, not taken from abi.ts. struct xen_dm_op is {u32 op; u32 pad; union u},
// the union starting at byte 8 and 24 bytes long (its largest members hold two uint64_aligned_t
// after 8 bytes of smaller fields).
const U = 8;
type Field = [offset: number, width: 1 | 2 | 4 | 8, value: number | bigint];

/** The 32-byte struct xen_dm_op with `op` and the given union fields (offsets within the union). */
function dmOp(op: number, fields: Field[] = []): Uint8Array {
  const bytes = new Uint8Array(32);
  const v = new DataView(bytes.buffer);
  v.setUint32(0, op, true);
  for (const [offset, width, value] of fields) {
    const at = U + offset;
    if (width === 8) v.setBigUint64(at, BigInt(value), true);
    else if (width === 4) v.setUint32(at, Number(value), true);
    else if (width === 2) v.setUint16(at, Number(value), true);
    else v.setUint8(at, Number(value));
  }
  return bytes;
}

function u64(bytes: Uint8Array, offset: number): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(offset, true);
}

describe('DMOP encoders produce the bytes of dm_op.h', () => {
  it('create_ioreq_server (1): u8 handle_bufioreq at 0', () => {
    expect(encodeCreateIoreqServer(2)).toEqual(dmOp(1, [[0, 1, 2]]));
    expect(encodeCreateIoreqServer(0)).toEqual(dmOp(1));
  });

  it('get_ioreq_server_info (2): u16 id at 0, u16 flags at 2', () => {
    expect(encodeGetIoreqServerInfo(0x1234, 1)).toEqual(dmOp(2, [[0, 2, 0x1234], [2, 2, 1]]));
  });

  it('map (3) and unmap (4) io range: u16 id at 0, u32 type at 4, u64 start at 8, u64 end at 16', () => {
    const mmio: Field[] = [[0, 2, 7], [4, 4, 1], [8, 8, 0xfe000000n], [16, 8, 0xfe000fffn]];
    expect(encodeIoRange(true, 7, 1, 0xfe000000n, 0xfe000fffn)).toEqual(dmOp(3, mmio));
    expect(encodeIoRange(false, 7, 1, 0xfe000000n, 0xfe000fffn)).toEqual(dmOp(4, mmio));
    expect(encodeIoRange(true, 1, 0, 0xc000n, 0xc0ffn)).toEqual(dmOp(3, [[0, 2, 1], [4, 4, 0], [8, 8, 0xc000n], [16, 8, 0xc0ffn]]));
    // PCI: both ends are SBDFs (here 0001:02:03.4 = 0x0001021c).
    expect(encodeIoRange(true, 2, 2, 0x0001021cn, 0x0001021cn)).toEqual(dmOp(3, [[0, 2, 2], [4, 4, 2], [8, 8, 0x0001021cn], [16, 8, 0x0001021cn]]));
    // A single-unit range (start == end) is valid; 64-bit addresses keep their high bits.
    expect(encodeIoRange(true, 0, 1, 0xffff_ffff_ffff_f000n, 0xffff_ffff_ffff_f000n)).toEqual(
      dmOp(3, [[4, 4, 1], [8, 8, 0xffff_ffff_ffff_f000n], [16, 8, 0xffff_ffff_ffff_f000n]]),
    );
  });

  it('set_ioreq_server_state (5): u16 id at 0, u8 enabled at 2', () => {
    expect(encodeSetIoreqServerState(9, true)).toEqual(dmOp(5, [[0, 2, 9], [2, 1, 1]]));
    expect(encodeSetIoreqServerState(9, false)).toEqual(dmOp(5, [[0, 2, 9]]));
  });

  it('destroy_ioreq_server (6): u16 id at 0', () => {
    expect(encodeDestroyIoreqServer(0xffff)).toEqual(dmOp(6, [[0, 2, 0xffff]]));
  });

  it('track_dirty_vram (7): u32 nr at 0, u64 first_pfn at 8', () => {
    expect(encodeTrackDirtyVram(0x1_000f_0000n, 4096)).toEqual(dmOp(7, [[0, 4, 4096], [8, 8, 0x1_000f_0000n]]));
    expect(encodeTrackDirtyVram(0n, 0)).toEqual(dmOp(7));
  });

  it('set_pci_intx_level (8): u16 domain at 0, u8 bus 2, device 3, intx 4, level 5', () => {
    expect(encodeSetPciIntxLevel(0x12, 0x34, 0x1f, 3, true)).toEqual(dmOp(8, [[0, 2, 0x12], [2, 1, 0x34], [3, 1, 0x1f], [4, 1, 3], [5, 1, 1]]));
  });

  it('set_isa_irq_level (9): u8 isa_irq at 0, u8 level at 1', () => {
    expect(encodeSetIsaIrqLevel(15, true)).toEqual(dmOp(9, [[0, 1, 15], [1, 1, 1]]));
    expect(encodeSetIsaIrqLevel(4, false)).toEqual(dmOp(9, [[0, 1, 4]]));
  });

  it('modified_memory (11): u32 nr_extents at 0, opaque 0; extents {u32 nr; u32 pad; u64 first_pfn} of 16 bytes', () => {
    expect(encodeModifiedMemory(3)).toEqual(dmOp(11, [[0, 4, 3]]));
    const extents = encodeModifiedMemoryExtents([
      { firstPfn: 0x100n, nr: 1 },
      { firstPfn: 0xdead_beef_0000n, nr: 0x10000 },
    ]);
    const expected = new Uint8Array(32);
    const v = new DataView(expected.buffer);
    v.setUint32(0, 1, true);
    v.setBigUint64(8, 0x100n, true);
    v.setUint32(16, 0x10000, true);
    v.setBigUint64(24, 0xdead_beef_0000n, true);
    expect(extents).toEqual(expected);
  });

  it('set_mem_type (12): u32 nr at 0, u16 mem_type at 4, u64 first_pfn at 8', () => {
    expect(encodeSetMemType(4, 0x80000n, 16)).toEqual(dmOp(12, [[0, 4, 16], [4, 2, 4], [8, 8, 0x80000n]]));
  });

  it('inject_msi (14): u32 data at 0, u64 addr at 8', () => {
    expect(encodeInjectMsi(0xfee01000n, 0x4041)).toEqual(dmOp(14, [[0, 4, 0x4041], [8, 8, 0xfee01000n]]));
  });

  it('map_mem_type_to_ioreq_server (15): u16 id at 0, u16 type at 2, u32 flags at 4, u64 opaque 0', () => {
    expect(encodeMapMemTypeToIoreqServer(1, 4, 2)).toEqual(dmOp(15, [[0, 2, 1], [2, 2, 4], [4, 4, 2]]));
  });

  it('nr_vcpus (20): no input', () => {
    expect(encodeNrVcpus()).toEqual(dmOp(20));
  });

  it('relocate_memory (17): u32 size at 0, u64 src_gfn at 8, u64 dst_gfn at 16', () => {
    expect(encodeRelocateMemory(0x1000000n, 0xe0000n, 4096)).toEqual(dmOp(17, [[0, 4, 4096], [8, 8, 0x1000000n], [16, 8, 0xe0000n]]));
    expect(encodeRelocateMemory(5n, 6n, 0)).toEqual(dmOp(17, [[8, 8, 5n], [16, 8, 6n]]));
  });

  it('pin_memory_cacheattr (18): u64 start at 0, u64 end at 8, u32 type at 16 (WC 1, DELETE ~0)', () => {
    expect(encodePinMemoryCacheattr(0xe0000n, 0xe0fffn, 1)).toEqual(dmOp(18, [[0, 8, 0xe0000n], [8, 8, 0xe0fffn], [16, 4, 1]]));
    expect(encodePinMemoryCacheattr(7n, 7n, 0xffffffff)).toEqual(dmOp(18, [[0, 8, 7n], [8, 8, 7n], [16, 4, 0xffffffff]]));
  });

  it('decoders read the OUT fields where Xen writes them', () => {
    const created = dmOp(1, [[0, 1, 1], [4, 2, 0x0203]]);
    expect(decodeCreateIoreqServer(created)).toBe(0x0203);
    const info = dmOp(2, [[0, 2, 3], [2, 2, 1], [4, 4, 0x55], [8, 8, 0xfeff0n], [16, 8, 0xfeff1n]]);
    expect(decodeGetIoreqServerInfo(info)).toEqual({ bufioreqPort: 0x55, ioreqGfn: 0xfeff0n, bufioreqGfn: 0xfeff1n });
    expect(decodeNrVcpus(dmOp(20, [[0, 4, 8]]))).toBe(8);
    expectArgError(() => decodeNrVcpus(created), 'EINVAL', 'bytes');
    expectArgError(() => decodeNrVcpus(new Uint8Array(16)), 'EINVAL', 'bytes');
  });

  it('refuse arguments Xen or the field would not hold, naming them', () => {
    expectArgError(() => encodeIoRange(true, 1, 1, 0x2000n, 0x1fffn), 'EINVAL', 'end'); // XSA-238
    expectArgError(() => encodeIoRange(true, 1, 0, 0n, 0x10000n), 'ERANGE', 'end'); // ports are 16-bit
    expectArgError(() => encodeIoRange(true, 1, 2, 0n, 0x1_0000_0000n), 'ERANGE', 'end'); // SBDFs are 32-bit
    expectArgError(() => encodeIoRange(true, 1, 3, 0n, 0n), 'ERANGE', 'type');
    expectArgError(() => encodeIoRange(true, 0x10000, 1, 0n, 0n), 'ERANGE', 'id');
    expectArgError(() => encodeIoRange(true, 1, 1, 1 as unknown as bigint, 2n), 'EINVAL', 'start');
    expectArgError(() => encodeCreateIoreqServer(3), 'ERANGE', 'handleBufioreq');
    expectArgError(() => encodeTrackDirtyVram(0n, 262145), 'ERANGE', 'nr');
    expectArgError(() => encodeTrackDirtyVram(1n << 64n, 1), 'ERANGE', 'firstPfn');
    expectArgError(() => encodeSetPciIntxLevel(0, 0, 32, 0, true), 'ERANGE', 'device');
    expectArgError(() => encodeSetPciIntxLevel(0, 0, 0, 4, true), 'ERANGE', 'intx');
    expectArgError(() => encodeSetPciIntxLevel(0, 0, 0, 0, 1 as unknown as boolean), 'EINVAL', 'level');
    expectArgError(() => encodeSetIsaIrqLevel(16, true), 'ERANGE', 'isaIrq');
    expectArgError(() => encodeSetMemType(0, 0n, 0), 'ERANGE', 'nr');
    expectArgError(() => encodeModifiedMemoryExtents([]), 'EINVAL', 'extents');
    expectArgError(() => encodeModifiedMemoryExtents([{ firstPfn: 0n, nr: 1 }, { firstPfn: 0n, nr: 0 }]), 'ERANGE', 'extents[1].nr');
    expectArgError(() => encodeModifiedMemoryExtents([{ firstPfn: (1n << 64n) - 1n, nr: 2 }]), 'ERANGE', 'extents[0]');
    expectArgError(() => encodeInjectMsi(0xfee00000n, -1), 'ERANGE', 'data');
    expectArgError(() => encodeRelocateMemory((1n << 64n) - 2n, 0n, 3), 'ERANGE', 'size');
    expectArgError(() => encodeRelocateMemory(0n, 0n, 2 ** 32), 'ERANGE', 'size');
    expectArgError(() => encodePinMemoryCacheattr(2n, 1n, 1), 'EINVAL', 'endGfn');
    expectArgError(() => encodePinMemoryCacheattr(1n, 2n, 2), 'EINVAL', 'type'); // 2 and 3 are no PAT types
    expectArgError(() => encodeDomctlMaxMem(0x7ff0, 0n, 0x15), 'ERANGE', 'domid');
    expectArgError(() => encodeMemoryReservation(1, new BigUint64Array(0)), 'EINVAL', 'gfns');
  });
});

// struct xen_domctl and xen_memory_reservation as read off domctl.h and memory.h (LP64).
describe('raw hypercall arguments', () => {
  it('XEN_DOMCTL_max_mem: u32 cmd 11 at 0, u32 interface_version at 4, u16 domain at 8, u64 max_memkb at 16 of 144 bytes', () => {
    const d = encodeDomctlMaxMem(0x1234, 0x12_3456_7890n, 0x15);
    expect(d.byteLength).toBe(144);
    const v = new DataView(d.buffer);
    expect([v.getUint32(0, true), v.getUint32(4, true), v.getUint16(8, true), u64(d, 16)]).toEqual([11, 0x15, 0x1234, 0x12_3456_7890n]);
    expect(d.subarray(10, 16).every((b) => b === 0) && d.subarray(24).every((b) => b === 0)).toBe(true);
  });

  it('IOCTL_PRIVCMD_HYPERCALL: {u64 op; u64 arg[5]} with buffers passed by address', () => {
    const domid = encodeDomidArg(7);
    expect([...domid]).toEqual([7, 0]);
    const top = ioctlMarshalForTest(privcmdHypercallArg(12, [4n, domid]));
    expect(top.byteLength).toBe(48);
    expect([u64(top, 0), u64(top, 8), u64(top, 16), u64(top, 24), u64(top, 32), u64(top, 40)]).toEqual([12n, 4n, addressOf(domid), 0n, 0n, 0n]);
    expectArgError(() => privcmdHypercallArg(12, [1n, 2n, 3n, 4n, 5n, 6n]), 'EINVAL', 'args');
    expectArgError(() => privcmdHypercallArg(12, [-1n]), 'ERANGE', 'args[0]');
  });

  it('XENMEM_populate_physmap: arg[1] -> xen_memory_reservation {extent_start* @0, nr_extents @8, order @16, flags @20, domid @24} -> gfns', () => {
    const gfns = new BigUint64Array([0x1000000n, 0x1000001n, 0x1000002n]);
    const reservation = encodeMemoryReservation(9, gfns);
    const top = ioctlMarshalForTest(privcmdHypercallArg(12, [6n, reservation]));
    const data = reservation.data as Uint8Array;
    expect([u64(top, 0), u64(top, 8), u64(top, 16)]).toEqual([12n, 6n, addressOf(data)]);
    expect(data.byteLength).toBe(32);
    const v = new DataView(data.buffer);
    expect([u64(data, 0), u64(data, 8), v.getUint32(16, true), v.getUint32(20, true), v.getUint16(24, true)]).toEqual([addressOf(gfns), 3n, 0, 0, 9]);
  });
});

describe('privcmd and evtchn ioctl arguments', () => {
  it('DM_OP with one buffer: {u16 dom; u16 num; ubufs*} -> [{uptr, size}] -> struct xen_dm_op', () => {
    const op = encodeNrVcpus();
    const arg = privcmdDmOpArg(0x7fef, [op]);
    const list = (arg.pointers![0]!.target as IoctlArg).data as Uint8Array;
    const top = ioctlMarshalForTest(arg);
    expect(top.byteLength).toBe(16);
    const v = new DataView(top.buffer);
    expect(v.getUint16(0, true)).toBe(0x7fef);
    expect(v.getUint16(2, true)).toBe(1);
    expect(v.getUint32(4, true)).toBe(0); // padding before the pointer
    expect(u64(top, 8)).toBe(addressOf(list));
    expect(list.byteLength).toBe(16);
    expect(u64(list, 0)).toBe(addressOf(op));
    expect(u64(list, 8)).toBe(32n);
  });

  it('DM_OP with two buffers points at the bitmap view itself, with its own length', () => {
    const op = encodeTrackDirtyVram(0x100n, 100);
    const backing = new Uint8Array(64);
    const bitmap = backing.subarray(8, 8 + 13);
    const arg = privcmdDmOpArg(3, [op, bitmap]);
    const list = (arg.pointers![0]!.target as IoctlArg).data as Uint8Array;
    const top = ioctlMarshalForTest(arg);
    expect(new DataView(top.buffer).getUint16(2, true)).toBe(2);
    expect(u64(top, 8)).toBe(addressOf(list));
    expect(list.byteLength).toBe(32);
    expect([u64(list, 0), u64(list, 8), u64(list, 16), u64(list, 24)]).toEqual([addressOf(op), 32n, addressOf(backing) + 8n, 13n]);
  });

  it('DM_OP argument checks', () => {
    expectArgError(() => privcmdDmOpArg(0x7ff0, [encodeNrVcpus()]), 'ERANGE', 'domid');
    expectArgError(() => privcmdDmOpArg(1, []), 'EINVAL', 'bufs');
    expectArgError(() => privcmdDmOpArg(1, [encodeNrVcpus(), new ArrayBuffer(4) as unknown as Uint8Array]), 'EINVAL', 'bufs[1]');
  });

  it('MMAPBATCH_V2: {u32 num; u16 dom; u64 addr; arr*; err*} of 32 bytes', () => {
    const gfns = new BigUint64Array([0x10n, 0x11n, 0xfffffn]);
    const errs = new Int32Array(3);
    const top = ioctlMarshalForTest(privcmdMmapBatchV2Arg(42, 0x7f12_3456_7000n, gfns, errs));
    const v = new DataView(top.buffer);
    expect(top.byteLength).toBe(32);
    expect([v.getUint32(0, true), v.getUint16(4, true), u64(top, 8), u64(top, 16), u64(top, 24)]).toEqual([
      3,
      42,
      0x7f12_3456_7000n,
      addressOf(gfns),
      addressOf(errs),
    ]);
    expectArgError(() => privcmdMmapBatchV2Arg(42, 0n, gfns, new Int32Array(2)), 'EINVAL', 'errs');
    expectArgError(() => privcmdMmapBatchV2Arg(42, 0n, new BigUint64Array(0), new Int32Array(0)), 'EINVAL', 'gfns');
  });

  it('MMAP_RESOURCE: {u16 dom; u32 type @4; u32 id @8; u32 idx @12; u64 num @16; u64 addr @24}', () => {
    const bytes = privcmdMmapResourceArg(7, 0, 3, 1, 2, 0x7f00_0000_1000n);
    const v = new DataView(bytes.buffer);
    expect(bytes.byteLength).toBe(32);
    expect([v.getUint16(0, true), v.getUint32(4, true), v.getUint32(8, true), v.getUint32(12, true), u64(bytes, 16), u64(bytes, 24)]).toEqual([
      7, 0, 3, 1, 2n, 0x7f00_0000_1000n,
    ]);
    expectArgError(() => privcmdMmapResourceArg(7, 0, 3, 1, 0, 0n), 'ERANGE', 'num');
  });

  it('RESTRICT takes a domid_t; evtchn takes {u32 remote_domain, remote_port}, {u32 port}, {u16 domid}', () => {
    expect([...privcmdRestrictArg(0x1234)]).toEqual([0x34, 0x12]);
    expect([...evtchnBindInterdomainArg(5, 0x01020304)]).toEqual([5, 0, 0, 0, 4, 3, 2, 1]);
    expect([...evtchnPortArg(0x0a0b)]).toEqual([0x0b, 0x0a, 0, 0]);
    expect([...evtchnRestrictDomidArg(9)]).toEqual([9, 0]);
    expectArgError(() => evtchnPortArg(0), 'ERANGE', 'port');
    expectArgError(() => evtchnBindInterdomainArg(0x8000, 1), 'ERANGE', 'remoteDomain');
  });
});

describe('MMAPBATCH_V2 per-frame errors', () => {
  it('no error: null', () => {
    expect(mmapBatchFailure(5, new BigUint64Array([1n, 2n]), new Int32Array(2))).toBeNull();
  });

  it('any error: EFAULT naming the first failed gfn, its errno and how many more failed', () => {
    const gfns = new BigUint64Array([0x10n, 0xabcdefn, 0x12n, 0x13n]);
    const e = mmapBatchFailure(5, gfns, new Int32Array([0, -2, 0, -14]))!;
    expect({ code: e.code, field: e.field }).toEqual({ code: 'EFAULT', field: 'gfns[1]' });
    expect(e.message).toContain('guest frame 0xabcdef of domain 5 cannot be mapped: ENOENT (and 1 more frames)');
    const only = mmapBatchFailure(5, gfns, new Int32Array([0, 0, 0, -1]))!;
    expect(only.field).toBe('gfns[3]');
    expect(only.message).toMatch(/0x13 of domain 5 cannot be mapped: EPERM$/);
  });
});

describe('PrivcmdXenHost', () => {
  let dir: string;
  let privcmdFile: string;
  let evtchnFile: string;
  const PAGES = 16;
  const hosts: PrivcmdXenHost[] = [];

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'mdevkit-xen-'));
    // Regular files stand in for the devices: opening works, and every ioctl fails as it would
    // on a file that is not privcmd/evtchn. The privcmd stand-in is large enough to mmap.
    privcmdFile = join(dir, 'privcmd');
    evtchnFile = join(dir, 'evtchn');
    writeFileSync(privcmdFile, new Uint8Array(PAGES * 4096));
    writeFileSync(evtchnFile, '');
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  afterEach(() => {
    for (const host of hosts.splice(0)) host.close();
  });

  function fileHost(domid = 5): PrivcmdXenHost {
    const host = new PrivcmdXenHost({ domid, privcmdPath: privcmdFile, evtchnPath: evtchnFile });
    hosts.push(host);
    return host;
  }

  /** The fds of this process open on `path`. */
  function fdsOn(path: string): number[] {
    return readdirSync('/proc/self/fd')
      .map(Number)
      .filter((fd) => {
        try {
          return readlinkSync(`/proc/self/fd/${fd}`) === path;
        } catch {
          return false;
        }
      });
  }

  /** Whether `path` is mapped into this process. */
  function mapped(path: string): boolean {
    return readFileSync('/proc/self/maps', 'utf8')
      .split('\n')
      .some((line) => line.endsWith(` ${path}`));
  }

  describe('opening the devices', () => {
    it.skipIf(existsSync('/dev/xen/privcmd'))('without Xen: ENOENT saying there is no /dev/xen/privcmd', () => {
      const e = thrown(() => new PrivcmdXenHost({ domid: 1 }));
      expect({ code: e.code, syscall: e.syscall }).toEqual({ code: 'ENOENT', syscall: 'open' });
      expect(e.message).toContain('no /dev/xen/privcmd: not running in a Xen dom0');
    });

    it('a missing evtchn device is named, and the privcmd fd opened before it is closed again', () => {
      const missing = join(dir, 'no-evtchn');
      const before = fdsOn(privcmdFile).length;
      const e = thrown(() => new PrivcmdXenHost({ domid: 1, privcmdPath: privcmdFile, evtchnPath: missing }));
      expect({ code: e.code, syscall: e.syscall }).toEqual({ code: 'ENOENT', syscall: 'open' });
      expect(e.message).toContain(`no ${missing}: not running in a Xen dom0`);
      expect(fdsOn(privcmdFile).length).toBe(before);
    });

    it('other open errors name the device too', () => {
      const sub = join(dir, 'a-directory');
      mkdirSync(sub, { recursive: true });
      const e = thrown(() => new PrivcmdXenHost({ domid: 1, privcmdPath: sub, evtchnPath: evtchnFile }));
      expect({ code: e.code, syscall: e.syscall }).toEqual({ code: 'EISDIR', syscall: 'open' });
      expect(e.message).toContain(sub);
    });

    it.skipIf(process.getuid?.() === 0)('EACCES names the device (skipped as root, which permission bits do not stop)', () => {
      const locked = join(dir, 'locked');
      writeFileSync(locked, '', { mode: 0o000 });
      const e = thrown(() => new PrivcmdXenHost({ domid: 1, privcmdPath: locked, evtchnPath: evtchnFile }));
      expect({ code: e.code, syscall: e.syscall }).toEqual({ code: 'EACCES', syscall: 'open' });
      expect(e.message).toContain(`${locked}: permission denied`);
    });

    it('refuses bad options before opening anything, naming them', () => {
      expectArgError(() => new PrivcmdXenHost({ domid: -1 }), 'ERANGE', 'domid');
      expectArgError(() => new PrivcmdXenHost({ domid: 0x7ff0 }), 'ERANGE', 'domid'); // DOMID_SELF and up
      expectArgError(() => new PrivcmdXenHost({ domid: 1.5 }), 'EINVAL', 'domid');
      expectArgError(() => new PrivcmdXenHost({ domid: '5' as unknown as number }), 'EINVAL', 'domid');
      expectArgError(() => new PrivcmdXenHost({} as { domid: number }), 'EINVAL', 'domid');
      expectArgError(() => new PrivcmdXenHost(null as unknown as { domid: number }), 'TypeError', 'options');
      expectArgError(() => new PrivcmdXenHost({ domid: 1, privcmdPath: '' }), 'EINVAL', 'privcmdPath');
    });

    it('opens both devices read-write and close-on-exec, evtchn non-blocking', () => {
      const host = fileHost();
      expect(host.kind).toBe('xen');
      expect(host.domid).toBe(5);
      expect(fdFlags(host.privcmdFd)).toEqual({ cloexec: true, nonBlocking: false });
      expect(fdFlags(host.evtchnFd)).toEqual({ cloexec: true, nonBlocking: true });
      expect(readlinkSync(`/proc/self/fd/${host.privcmdFd}`)).toBe(privcmdFile);
      expect(readlinkSync(`/proc/self/fd/${host.evtchnFd}`)).toBe(evtchnFile);
    });
  });

  describe('on an fd that is not privcmd, each call fails with the ioctl errno, naming the operation', () => {
    const dmops: [string, (h: PrivcmdXenHost) => unknown][] = [
      ['XEN_DMOP_nr_vcpus', (h) => h.nrVcpus()],
      ['XEN_DMOP_create_ioreq_server', (h) => h.createIoreqServer('atomic')],
      ['XEN_DMOP_get_ioreq_server_info', (h) => h.getIoreqServerInfo(1)],
      ['XEN_DMOP_map_io_range_to_ioreq_server', (h) => h.mapIoRange(1, 'memory', 0xfe000000n, 0xfe000fffn)],
      ['XEN_DMOP_unmap_io_range_from_ioreq_server', (h) => h.unmapIoRange(1, 'pci', 0x18n, 0x18n)],
      ['XEN_DMOP_set_ioreq_server_state', (h) => h.setIoreqServerState(1, true)],
      ['XEN_DMOP_destroy_ioreq_server', (h) => h.destroyIoreqServer(1)],
      ['XEN_DMOP_track_dirty_vram', (h) => h.trackDirtyVram(0xf0000n, 64, new Uint8Array(8))],
      ['XEN_DMOP_modified_memory', (h) => h.modifiedMemory([{ firstPfn: 0x100n, nr: 2 }])],
      ['XEN_DMOP_set_mem_type', (h) => h.setMemType(4, 0x100n, 1)],
      ['XEN_DMOP_map_mem_type_to_ioreq_server', (h) => h.mapMemTypeToIoreqServer(1, 4, 2)],
      ['XEN_DMOP_set_pci_intx_level', (h) => h.setPciIntxLevel(0, 0, 3, 0, true)],
      ['XEN_DMOP_set_isa_irq_level', (h) => h.setIsaIrqLevel(5, true)],
      ['XEN_DMOP_inject_msi', (h) => h.injectMsi(0xfee00000n, 0x41)],
      ['XEN_DMOP_relocate_memory', (h) => h.relocateMemory(0x1000000n, 0xe0000n, 16)],
      ['XEN_DMOP_pin_memory_cacheattr', (h) => h.pinMemoryCacheattr(0xe0000n, 0xe000fn, 'wc')],
      // mapIoreqPages asks Xen whether the server has a buffered ring first.
      ['XEN_DMOP_get_ioreq_server_info', (h) => h.mapIoreqPages(1, 2)],
    ];
    for (const [name, call] of dmops) {
      it(`${name} (${call.toString().replace(/^\(h\) => h\./, '')})`, () => {
        const e = thrown(() => call(fileHost()));
        expect({ code: e.code, syscall: e.syscall, name: e.name }).toEqual({ code: 'ENOTTY', syscall: 'ioctl', name: 'XenSyscallError' });
        expect(e.errno).toBe(25);
        expect(e.message).toContain(`${name}`);
        expect(e.message).toContain('on domain 5 (IOCTL_PRIVCMD_DM_OP)');
      });
    }

    const hypercalls: [string, (h: PrivcmdXenHost) => unknown][] = [
      ['XENMEM_current_reservation', (h) => h.domainPages()],
      ['XEN_DOMCTL_max_mem (300 pages)', (h) => h.setMaxPages(300)],
      ['XENMEM_populate_physmap of 2 gfns from 0x1000000', (h) => h.populatePhysmap([0x1000000n, 0x1000001n])],
    ];
    for (const [name, call] of hypercalls) {
      it(`${name}: IOCTL_PRIVCMD_HYPERCALL fails with its errno`, () => {
        const e = thrown(() => call(fileHost()));
        expect({ code: e.code, syscall: e.syscall, name: e.name }).toEqual({ code: 'ENOTTY', syscall: 'ioctl', name: 'XenSyscallError' });
        expect(e.message).toContain(`${name} on domain 5 (IOCTL_PRIVCMD_HYPERCALL)`);
      });
    }

    it('modified_memory splits 600 extents into DMOPs of at most 256 and names the failing group', () => {
      const extents = Array.from({ length: 600 }, (_, i) => ({ firstPfn: BigInt(i * 16), nr: 1 }));
      const e = thrown(() => fileHost().modifiedMemory(extents));
      expect(e.code).toBe('ENOTTY');
      expect(e.message).toContain('XEN_DMOP_modified_memory of extents 0..255 on domain 5');
    });

    it('mapForeign: MMAPBATCH_V2 fails and the privcmd mapping made for it is released', () => {
      const host = fileHost();
      // The check below can see a mapping of the stand-in file when there is one.
      const probe = mmapFd(host.privcmdFd, 4096);
      expect(mapped(privcmdFile)).toBe(true);
      munmap(probe);
      expect(mapped(privcmdFile)).toBe(false);

      const e = thrown(() => host.mapForeign([0x100n, 0x101n, 0x7_ffff_ffffn], true));
      expect({ code: e.code, syscall: e.syscall }).toEqual({ code: 'ENOTTY', syscall: 'ioctl' });
      expect(e.message).toContain('IOCTL_PRIVCMD_MMAPBATCH_V2 of 3 frames of domain 5');
      expect(mapped(privcmdFile)).toBe(false);
    });

    it('bindEvents: BIND_INTERDOMAIN fails naming the vCPU and ports', () => {
      const e = thrown(() => fileHost().bindEvents([17, 18], 19));
      expect({ code: e.code, syscall: e.syscall }).toEqual({ code: 'ENOTTY', syscall: 'ioctl' });
      expect(e.message).toContain("IOCTL_EVTCHN_BIND_INTERDOMAIN of vCPU 0's channel (domain 5 port 17)");
    });

    it('notify and evtchnNotify: IOCTL_EVTCHN_NOTIFY fails naming the port', () => {
      const host = fileHost();
      for (const call of [() => host.notify(33), () => evtchnNotify(host.evtchnFd, 33)]) {
        const e = thrown(call);
        expect({ code: e.code, syscall: e.syscall }).toEqual({ code: 'ENOTTY', syscall: 'ioctl' });
        expect(e.message).toContain('IOCTL_EVTCHN_NOTIFY of local port 33');
      }
    });

    it('restrict: IOCTL_PRIVCMD_RESTRICT fails, and is retried on the next call', () => {
      const host = fileHost(9);
      for (let i = 0; i < 2; i++) {
        const e = thrown(() => host.restrict());
        expect({ code: e.code, syscall: e.syscall }).toEqual({ code: 'ENOTTY', syscall: 'ioctl' });
        expect(e.message).toContain('IOCTL_PRIVCMD_RESTRICT to domain 9');
      }
    });
  });

  describe('bad arguments are refused before any system call, naming the argument', () => {
    it('server ids, modes, kinds and ranges', () => {
      const host = fileHost();
      expectArgError(() => host.createIoreqServer('on' as 'off'), 'EINVAL', 'bufioreq');
      expectArgError(() => host.getIoreqServerInfo(0x10000), 'ERANGE', 'id');
      expectArgError(() => host.mapIoRange(1, 'io' as 'port', 0n, 1n), 'EINVAL', 'kind');
      expectArgError(() => host.mapIoRange(1, 'memory', 0x2000n, 0x1000n), 'EINVAL', 'end');
      expectArgError(() => host.unmapIoRange(1, 'port', 0n, 0x10000n), 'ERANGE', 'end');
      expectArgError(() => host.setIoreqServerState(1, 'yes' as unknown as boolean), 'EINVAL', 'enabled');
      expectArgError(() => host.mapIoreqPages(1, 0), 'ERANGE', 'nrVcpus');
      expectArgError(() => host.mapIoreqPages(-1, 1), 'ERANGE', 'id');
    });

    it('frame lists', () => {
      const host = fileHost();
      expectArgError(() => host.mapForeign([], false), 'EINVAL', 'gfns');
      expectArgError(() => host.mapForeign([1n, 2 as unknown as bigint], false), 'EINVAL', 'gfns[1]');
      expectArgError(() => host.mapForeign([-1n], false), 'ERANGE', 'gfns[0]');
      expectArgError(() => host.mapForeign([1n], 1 as unknown as boolean), 'EINVAL', 'writable');
      expectArgError(() => host.modifiedMemory([]), 'EINVAL', 'extents');
      expectArgError(() => host.modifiedMemory([{ firstPfn: 1n, nr: 1 }, { firstPfn: 2n, nr: 0 }]), 'ERANGE', 'extents[1].nr');
      expectArgError(() => host.trackDirtyVram(0n, 100, new Uint8Array(12)), 'EINVAL', 'bitmap'); // needs 13 bytes
      expectArgError(() => host.trackDirtyVram(0n, 262145, new Uint8Array(32768)), 'ERANGE', 'nr');
      expectArgError(() => host.setMemType(4, 0n, 0), 'ERANGE', 'nr');
      expectArgError(() => host.populatePhysmap([]), 'EINVAL', 'gfns');
      expectArgError(() => host.populatePhysmap([1n, -1n]), 'ERANGE', 'gfns[1]');
      expectArgError(() => host.setMaxPages(2 ** 32), 'ERANGE', 'maxPages');
      expectArgError(() => host.relocateMemory(0n, 1n, -1), 'ERANGE', 'size');
      expectArgError(() => host.pinMemoryCacheattr(0n, 1n, 'wx' as 'wc'), 'EINVAL', 'type');
      expectArgError(() => new PrivcmdXenHost({ domid: 1, domctlInterfaceVersion: -1 }), 'ERANGE', 'domctlInterfaceVersion');
    });

    it('interrupts and events', () => {
      const host = fileHost();
      expectArgError(() => host.setIsaIrqLevel(16, true), 'ERANGE', 'isaIrq');
      expectArgError(() => host.setPciIntxLevel(0, 0, 32, 0, true), 'ERANGE', 'device');
      expectArgError(() => host.setPciIntxLevel(0, 256, 0, 0, true), 'ERANGE', 'bus');
      expectArgError(() => host.injectMsi(0xfee00000n, 2 ** 32), 'ERANGE', 'data');
      expectArgError(() => host.bindEvents([], null), 'EINVAL', 'vcpuRemotePorts');
      expectArgError(() => host.bindEvents([5, 0], null), 'ERANGE', 'vcpuRemotePorts[1]');
      expectArgError(() => host.bindEvents([5], -1), 'ERANGE', 'bufRemotePort');
      expectArgError(() => host.notify(0), 'ERANGE', 'port');
      const forged: EventBinding = { mode: 'evtchn', fd: host.evtchnFd, vcpuPorts: [1], bufPort: null };
      expectArgError(() => host.unbindEvents(forged), 'EINVAL', 'binding');
    });
  });

  it('close closes both fds, is idempotent, and every later call says EBADF', () => {
    const host = fileHost();
    const fds = [host.privcmdFd, host.evtchnFd];
    host.close();
    host.close();
    expect(fds.map(isOpen)).toEqual([false, false]);
    for (const call of [() => host.nrVcpus(), () => host.mapForeign([1n], false), () => host.notify(1), () => host.restrict(), () => host.privcmdFd]) {
      const e = thrown(call);
      expect(e.code).toBe('EBADF');
      expect(e.message).toContain('the PrivcmdXenHost of domain 5 is closed');
    }
  });
});
