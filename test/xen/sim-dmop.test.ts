/**
 * The simulator's device-model operations: Xen's semantics and errno values for ioreq servers,
 * range sets, HVMMEM_ioreq_server, set_mem_type, track_dirty_vram, modified_memory, interrupts,
 * event channels and the SimXenHost handle lifecycle.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { SimHypervisor } from '../../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../../adapters/xen/sim/host.js';
import { SimVcpu } from '../../adapters/xen/sim/vcpu.js';
import { HvmMemType, IoreqMemAccess, pciSbdf } from '../../adapters/xen/ioreq-abi.js';
import { waitReadable } from '../../src/native/poll.js';
import { HandServer, OFF_VP_EPORT, readSlot } from '../fixtures/xen-sim-server.js';

const MiB = 1 << 20;
const { RAM_RW, RAM_RO, MMIO_DM, UNUSED, IOREQ_SERVER } = HvmMemType;
const WRITE = IoreqMemAccess.WRITE;
const READ = IoreqMemAccess.READ;

const open: { close(): void }[] = [];
function domain(options: { nrVcpus?: number; ramBytes?: number } = {}): { hv: SimHypervisor; host: SimXenHost } {
  const hv = new SimHypervisor({ ramBytes: options.ramBytes ?? MiB, nrVcpus: options.nrVcpus ?? 1 });
  const host = new SimXenHost(hv);
  open.push(host, hv);
  return { hv, host };
}
afterEach(() => {
  for (const o of open.splice(0)) o.close();
});

/** The errno code `fn` fails with (failing the test if it does not throw). */
function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code ?? `no code: ${String(e)}`;
  }
  throw new Error('expected the call to fail');
}

describe('ioreq server lifecycle', () => {
  it('hands out ids 0..7 and then fails with ENOSPC (MAX_NR_IOREQ_SERVERS)', () => {
    const { host } = domain();
    const ids = Array.from({ length: 8 }, () => host.createIoreqServer('off'));
    expect(ids).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(codeOf(() => host.createIoreqServer('atomic'))).toBe('ENOSPC');
    host.destroyIoreqServer(5);
    expect(host.createIoreqServer('legacy')).toBe(5); // the lowest free id
  });

  it('rejects unknown ring modes with EINVAL and unknown ids with ENOENT in every operation', () => {
    const { host } = domain();
    expect(codeOf(() => host.createIoreqServer('sometimes' as never))).toBe('EINVAL');
    const id = host.createIoreqServer('off');
    for (const missing of [id + 1, 7, 8, 0xffff]) {
      expect(codeOf(() => host.getIoreqServerInfo(missing))).toBe('ENOENT');
      expect(codeOf(() => host.mapIoreqPages(missing, 1))).toBe('ENOENT');
      expect(codeOf(() => host.mapIoRange(missing, 'port', 0n, 1n))).toBe('ENOENT');
      expect(codeOf(() => host.unmapIoRange(missing, 'port', 0n, 1n))).toBe('ENOENT');
      expect(codeOf(() => host.setIoreqServerState(missing, true))).toBe('ENOENT');
      expect(codeOf(() => host.mapMemTypeToIoreqServer(missing, IOREQ_SERVER, WRITE))).toBe('ENOENT');
      expect(codeOf(() => host.destroyIoreqServer(missing))).toBe('ENOENT');
    }
    expect(codeOf(() => host.getIoreqServerInfo(0x10000))).toBe('EINVAL'); // not an ioservid_t
    host.destroyIoreqServer(id);
    expect(codeOf(() => host.destroyIoreqServer(id))).toBe('ENOENT');
  });

  it('reports the buffered port only for servers with a ring', () => {
    const { host } = domain({ nrVcpus: 2 });
    const off = host.createIoreqServer('off');
    const legacy = host.createIoreqServer('legacy');
    expect(host.getIoreqServerInfo(off).bufioreqPort).toBeNull();
    expect(host.getIoreqServerInfo(legacy).bufioreqPort).toEqual(expect.any(Number));
    const pOff = host.mapIoreqPages(off, 2);
    const pLegacy = host.mapIoreqPages(legacy, 2);
    expect(pOff.buffered).toBeNull();
    expect(pOff.sync.byteLength).toBe(4096);
    expect(pLegacy.buffered?.byteLength).toBe(4096);
    expect(codeOf(() => host.mapIoreqPages(off, 129))).toBe('EINVAL'); // a second ioreq frame: EINVAL in Xen
    expect(codeOf(() => host.mapIoreqPages(off, 0))).toBe('EINVAL');
    pOff.release();
    pLegacy.release();
  });

  it('writes distinct vp_eport values when the server is enabled, not before', () => {
    const { host } = domain({ nrVcpus: 3 });
    const a = host.createIoreqServer('atomic');
    const b = host.createIoreqServer('off');
    const pa = host.mapIoreqPages(a, 3);
    const pb = host.mapIoreqPages(b, 3);
    expect([0, 1, 2].map((v) => readSlot(pa.sync, v).vpEport)).toEqual([0, 0, 0]);
    host.setIoreqServerState(a, true);
    host.setIoreqServerState(b, true);
    const ports = [...[0, 1, 2].map((v) => readSlot(pa.sync, v).vpEport), ...[0, 1, 2].map((v) => readSlot(pb.sync, v).vpEport)];
    const bufPort = host.getIoreqServerInfo(a).bufioreqPort!;
    expect(new Set([...ports, bufPort]).size).toBe(7);
    expect(ports.every((p) => p > 0)).toBe(true);
    // Xen's allocation order: vCPU 0, the buffered channel, vCPU 1, ...
    expect([ports[0], bufPort, ports[1], ports[2]]).toEqual([1, 2, 3, 4]);
    pa.release();
    pb.release();
  });

  it('destroy releases the ranges, the claim, the ports and the pages', () => {
    const { hv, host } = domain();
    const first = new HandServer(host, 'atomic', (id) => host.mapIoRange(id, 'memory', 0xe0000000n, 0xe0000fffn));
    host.mapMemTypeToIoreqServer(first.id, IOREQ_SERVER, WRITE);
    expect(hv.route('mmio', 0xe0000010n, 4)).toBe(first.id);
    const ports = [...first.ports, first.bufPort!];
    first.close();
    host.destroyIoreqServer(first.id);
    expect(hv.route('mmio', 0xe0000010n, 4)).toBeNull();
    for (const port of ports) expect(codeOf(() => host.bindEvents([port], null))).toBe('EINVAL');
    // The claim went with it: another server can claim the type (no pages were typed).
    const second = host.createIoreqServer('off');
    expect(second).toBe(first.id);
    host.mapMemTypeToIoreqServer(second, IOREQ_SERVER, WRITE);
    // The new server starts with empty range sets: the old range is not its range.
    expect(codeOf(() => host.unmapIoRange(second, 'memory', 0xe0000000n, 0xe0000fffn))).toBe('ENOENT');
  });
});

describe('io ranges', () => {
  it('rejects end < start with EINVAL before looking at the server (XSA-238)', () => {
    const { host } = domain();
    expect(codeOf(() => host.mapIoRange(3, 'port', 0x10n, 0xfn))).toBe('EINVAL');
    expect(codeOf(() => host.unmapIoRange(3, 'memory', 0x10n, 0xfn))).toBe('EINVAL');
    const id = host.createIoreqServer('off');
    expect(codeOf(() => host.mapIoRange(id, 'pci', 2n, 1n))).toBe('EINVAL');
    expect(codeOf(() => host.mapIoRange(id, 'dma' as never, 1n, 2n))).toBe('EINVAL');
    expect(codeOf(() => host.mapIoRange(id, 'port', -1n, 2n))).toBe('EINVAL');
    expect(codeOf(() => host.mapIoRange(id, 'port', 0n, 1n << 64n))).toBe('EINVAL');
  });

  it('EEXIST for any overlap within one server and type; other types and servers are independent', () => {
    const { hv, host } = domain();
    const a = host.createIoreqServer('off');
    const b = host.createIoreqServer('off');
    host.mapIoRange(a, 'port', 0x100n, 0x1ffn);
    for (const [s, e] of [
      [0x100n, 0x1ffn],
      [0xf0n, 0x100n],
      [0x1ffn, 0x2ffn],
      [0x180n, 0x181n],
      [0n, 0xffffn],
    ] as const) {
      expect(codeOf(() => host.mapIoRange(a, 'port', s, e))).toBe('EEXIST');
    }
    host.mapIoRange(a, 'memory', 0x100n, 0x1ffn); // another type
    host.mapIoRange(b, 'port', 0x100n, 0x1ffn); // another server: allowed, routing picks one
    host.setIoreqServerState(a, true);
    host.setIoreqServerState(b, true);
    expect(hv.route('pio', 0x150n, 2)).toBe(b); // the higher id wins, as Xen iterates backwards
    host.setIoreqServerState(b, false);
    expect(hv.route('pio', 0x150n, 2)).toBe(a);
  });

  it('coalesces adjacent ranges, so accesses across the seam are contained', () => {
    const { hv, host } = domain();
    const id = host.createIoreqServer('off');
    host.setIoreqServerState(id, true);
    host.mapIoRange(id, 'memory', 0x1000n, 0x1fffn);
    host.mapIoRange(id, 'memory', 0x2000n, 0x2fffn);
    expect(hv.route('mmio', 0x1ffcn, 8)).toBe(id);
    // A range that is not adjacent leaves a gap that an access may not span.
    host.mapIoRange(id, 'memory', 0x3001n, 0x3fffn);
    expect(hv.route('mmio', 0x2ffcn, 8)).toBeNull();
    // Unmapping a piece inside a coalesced range is fine and splits it.
    host.unmapIoRange(id, 'memory', 0x1800n, 0x27ffn);
    expect(hv.route('mmio', 0x1800n, 1)).toBeNull();
    expect(hv.route('mmio', 0x17f8n, 8)).toBe(id);
    expect(hv.route('mmio', 0x2800n, 8)).toBe(id);
  });

  it('unmap needs the range wholly mapped (ENOENT otherwise)', () => {
    const { host } = domain();
    const id = host.createIoreqServer('off');
    host.mapIoRange(id, 'port', 0x10n, 0x1fn);
    host.mapIoRange(id, 'port', 0x30n, 0x3fn);
    expect(codeOf(() => host.unmapIoRange(id, 'port', 0x18n, 0x31n))).toBe('ENOENT'); // spans a hole
    expect(codeOf(() => host.unmapIoRange(id, 'port', 0x0n, 0x10n))).toBe('ENOENT');
    expect(codeOf(() => host.unmapIoRange(id, 'memory', 0x10n, 0x1fn))).toBe('ENOENT'); // other type
    host.unmapIoRange(id, 'port', 0x10n, 0x1fn);
    expect(codeOf(() => host.unmapIoRange(id, 'port', 0x10n, 0x1fn))).toBe('ENOENT');
  });

  it('holds at most 256 ranges per set: one more, or a split beyond it, is ENOMEM', () => {
    const { hv, host } = domain();
    const id = host.createIoreqServer('off');
    host.setIoreqServerState(id, true);
    for (let i = 0n; i < 256n; i++) host.mapIoRange(id, 'memory', i * 0x100n, i * 0x100n + 0x7fn);
    expect(codeOf(() => host.mapIoRange(id, 'memory', 0x100000n, 0x100fffn))).toBe('ENOMEM');
    // Adjacent to an existing range: coalesced, needs no new range.
    host.mapIoRange(id, 'memory', 0x80n, 0x8fn);
    expect(codeOf(() => host.unmapIoRange(id, 'memory', 0x104n, 0x107n))).toBe('ENOMEM'); // would split
    expect(hv.route('mmio', 0x104n, 4)).toBe(id); // and changed nothing
    host.unmapIoRange(id, 'memory', 0x100n, 0x17fn); // a whole range: frees one
    host.unmapIoRange(id, 'memory', 0x204n, 0x207n); // now the split fits
    expect(hv.route('mmio', 0x204n, 4)).toBeNull();
    // The port set of the same server has its own limit.
    host.mapIoRange(id, 'port', 0x10n, 0x10n);
  });
});

describe('HVMMEM_ioreq_server', () => {
  it('only the ioreq_server type, only WRITE: anything else is EINVAL', () => {
    const { host } = domain();
    const id = host.createIoreqServer('off');
    expect(codeOf(() => host.mapMemTypeToIoreqServer(id, RAM_RW, WRITE))).toBe('EINVAL');
    expect(codeOf(() => host.mapMemTypeToIoreqServer(id, MMIO_DM, WRITE))).toBe('EINVAL');
    expect(codeOf(() => host.mapMemTypeToIoreqServer(id, IOREQ_SERVER, READ))).toBe('EINVAL');
    expect(codeOf(() => host.mapMemTypeToIoreqServer(id, IOREQ_SERVER, READ | WRITE))).toBe('EINVAL');
    expect(codeOf(() => host.mapMemTypeToIoreqServer(id, IOREQ_SERVER, 4))).toBe('EINVAL');
    host.mapMemTypeToIoreqServer(id, IOREQ_SERVER, WRITE);
  });

  it('one owner: a second claim is EBUSY (the owner too); release needs the owner (EINVAL)', () => {
    const { host } = domain();
    const a = host.createIoreqServer('off');
    const b = host.createIoreqServer('off');
    expect(codeOf(() => host.mapMemTypeToIoreqServer(a, IOREQ_SERVER, 0))).toBe('EINVAL'); // nobody holds it
    host.mapMemTypeToIoreqServer(a, IOREQ_SERVER, WRITE);
    expect(codeOf(() => host.mapMemTypeToIoreqServer(b, IOREQ_SERVER, WRITE))).toBe('EBUSY');
    expect(codeOf(() => host.mapMemTypeToIoreqServer(a, IOREQ_SERVER, WRITE))).toBe('EBUSY');
    expect(codeOf(() => host.mapMemTypeToIoreqServer(b, IOREQ_SERVER, 0))).toBe('EINVAL');
    host.mapMemTypeToIoreqServer(a, IOREQ_SERVER, 0);
    host.mapMemTypeToIoreqServer(b, IOREQ_SERVER, WRITE);
  });

  it('release turns the type back to ram_rw; destroying the owner leaves stale pages that block claims (EBUSY)', () => {
    const { hv, host } = domain();
    const a = host.createIoreqServer('off');
    host.mapMemTypeToIoreqServer(a, IOREQ_SERVER, WRITE);
    host.setMemType(IOREQ_SERVER, 0x10n, 4);
    expect(hv.ioreqServerFrames).toBe(4);
    host.mapMemTypeToIoreqServer(a, IOREQ_SERVER, 0);
    expect([0x10, 0x11, 0x12, 0x13].map((pfn) => hv.memType(pfn))).toEqual([RAM_RW, RAM_RW, RAM_RW, RAM_RW]);
    expect(hv.ioreqServerFrames).toBe(0);

    host.mapMemTypeToIoreqServer(a, IOREQ_SERVER, WRITE);
    host.setMemType(IOREQ_SERVER, 0x20n, 2);
    host.destroyIoreqServer(a);
    expect(hv.memType(0x20)).toBe(IOREQ_SERVER); // stale
    const b = host.createIoreqServer('off');
    expect(codeOf(() => host.mapMemTypeToIoreqServer(b, IOREQ_SERVER, WRITE))).toBe('EBUSY');
    // Stale pages may go back to ram_rw without a claim; then the claim succeeds.
    host.setMemType(RAM_RW, 0x20n, 1);
    expect(codeOf(() => host.mapMemTypeToIoreqServer(b, IOREQ_SERVER, WRITE))).toBe('EBUSY');
    host.setMemType(RAM_RW, 0x21n, 1);
    host.mapMemTypeToIoreqServer(b, IOREQ_SERVER, WRITE);
  });

  it('global log-dirty is refused (EBUSY) while frames are typed ioreq_server', () => {
    const { hv, host } = domain();
    const a = host.createIoreqServer('off');
    host.mapMemTypeToIoreqServer(a, IOREQ_SERVER, WRITE);
    host.setMemType(IOREQ_SERVER, 3n, 1);
    expect(codeOf(() => hv.enableLogDirty())).toBe('EBUSY');
    host.setMemType(RAM_RW, 3n, 1);
    hv.enableLogDirty();
  });
});

describe('set_mem_type', () => {
  it('to ioreq_server only after a claim, only from ram_rw; back only to ram_rw', () => {
    const { hv, host } = domain();
    expect(codeOf(() => host.setMemType(IOREQ_SERVER, 0n, 1))).toBe('EINVAL'); // no claim
    const id = host.createIoreqServer('off');
    host.mapMemTypeToIoreqServer(id, IOREQ_SERVER, WRITE);
    host.setMemType(IOREQ_SERVER, 0n, 1);
    expect(codeOf(() => host.setMemType(IOREQ_SERVER, 0n, 1))).toBe('EINVAL'); // ioreq_server -> ioreq_server
    expect(codeOf(() => host.setMemType(RAM_RO, 0n, 1))).toBe('EINVAL');
    expect(codeOf(() => host.setMemType(MMIO_DM, 0n, 1))).toBe('EINVAL');
    host.setMemType(RAM_RO, 1n, 1);
    expect(codeOf(() => host.setMemType(IOREQ_SERVER, 1n, 1))).toBe('EINVAL'); // ram_ro -> ioreq_server
    host.setMemType(RAM_RW, 0n, 1);
    host.setMemType(RAM_RW, 1n, 1); // ram_ro -> ram_rw: both are RAM
    expect([hv.memType(0), hv.memType(1)]).toEqual([RAM_RW, RAM_RW]);
  });

  it("follows the rest of Xen's allow_p2m_type_change: RAM may become mmio_dm, never back", () => {
    const { hv, host } = domain();
    host.setMemType(MMIO_DM, 5n, 2);
    expect(hv.memType(5)).toBe(MMIO_DM);
    host.setMemType(MMIO_DM, 5n, 1); // hole -> mmio_dm
    expect(codeOf(() => host.setMemType(RAM_RW, 5n, 1))).toBe('EINVAL');
    expect(codeOf(() => host.setMemType(RAM_RO, 6n, 1))).toBe('EINVAL');
  });

  it('EINVAL for unused and unknown types, empty ranges and ranges beyond RAM', () => {
    const { host } = domain({ ramBytes: 64 * 4096 });
    expect(codeOf(() => host.setMemType(UNUSED, 0n, 1))).toBe('EINVAL');
    expect(codeOf(() => host.setMemType(5, 0n, 1))).toBe('EINVAL');
    expect(codeOf(() => host.setMemType(RAM_RO, 0n, 0))).toBe('EINVAL');
    expect(codeOf(() => host.setMemType(RAM_RO, 5n, 0))).toBe('EINVAL');
    expect(codeOf(() => host.setMemType(RAM_RO, 63n, 2))).toBe('EINVAL');
    expect(codeOf(() => host.setMemType(RAM_RO, 64n, 1))).toBe('EINVAL');
    expect(codeOf(() => host.setMemType(RAM_RO, (1n << 64n) - 1n, 2))).toBe('EINVAL'); // wraps
    host.setMemType(RAM_RO, 63n, 1); // the last frame is in range
  });

  it('changes frames in order and stops at the first refused one, keeping earlier changes', () => {
    const { hv, host } = domain();
    host.setMemType(MMIO_DM, 12n, 1);
    expect(codeOf(() => host.setMemType(RAM_RO, 10n, 4))).toBe('EINVAL');
    expect([10, 11, 12, 13].map((pfn) => hv.memType(pfn))).toEqual([RAM_RO, RAM_RO, MMIO_DM, RAM_RW]);
  });
});

describe('track_dirty_vram', () => {
  it('returns all-dirty for a new range, then exactly the frames the guest wrote, and clears them', () => {
    const { hv, host } = domain();
    const vcpu = new SimVcpu(hv.vcpuDescriptor(0));
    open.push(vcpu);
    const bitmap = new Uint8Array(2);
    host.trackDirtyVram(0x40n, 12, bitmap);
    expect([...bitmap]).toEqual([0xff, 0xff]); // Xen sets the whole bytes
    bitmap.fill(0);
    host.trackDirtyVram(0x40n, 12, bitmap);
    expect([...bitmap]).toEqual([0, 0]);
    vcpu.ramWrite(0x41 * 4096 + 100, new Uint8Array([1]));
    vcpu.ramWrite(0x4b * 4096 - 2, new Uint8Array([1, 2, 3, 4])); // frames 0x4a and 0x4b
    vcpu.ramWrite(0x4c * 4096, new Uint8Array([9])); // outside the range
    vcpu.ramWrite(0x3f * 4096, new Uint8Array([9]));
    host.trackDirtyVram(0x40n, 12, bitmap);
    expect([...bitmap]).toEqual([0b0000_0010, 0b0000_1100]);
    host.trackDirtyVram(0x40n, 12, bitmap);
    expect([...bitmap]).toEqual([0, 0]);
  });

  it('keeps one range per domain: a new range replaces the old; nr 0 stops tracking', () => {
    const { hv, host } = domain();
    const vcpu = new SimVcpu(hv.vcpuDescriptor(0));
    open.push(vcpu);
    const bitmap = new Uint8Array(1);
    host.trackDirtyVram(0x10n, 8, bitmap);
    host.trackDirtyVram(0x20n, 8, bitmap);
    expect(bitmap[0]).toBe(0xff);
    vcpu.ramWrite(0x10 * 4096, new Uint8Array([1])); // the old range: not tracked any more
    vcpu.ramWrite(0x21 * 4096, new Uint8Array([1]));
    host.trackDirtyVram(0x20n, 8, bitmap);
    expect(bitmap[0]).toBe(0b10);
    host.trackDirtyVram(0x20n, 4, bitmap); // same start, other length: a new range
    expect(bitmap[0]).toBe(0xff);
    host.trackDirtyVram(0n, 0, new Uint8Array(0));
    vcpu.ramWrite(0x21 * 4096, new Uint8Array([1]));
    host.trackDirtyVram(0x20n, 4, bitmap); // tracking starts again: all dirty
    expect(bitmap[0]).toBe(0xff);
  });

  it('EINVAL for more than 1 GiB of frames or a short bitmap', () => {
    const { host } = domain();
    expect(codeOf(() => host.trackDirtyVram(0n, 262145, new Uint8Array(32769)))).toBe('EINVAL');
    expect(codeOf(() => host.trackDirtyVram(0n, 17, new Uint8Array(2)))).toBe('EINVAL');
    host.trackDirtyVram(0n, 262144, new Uint8Array(32768));
  });

  it('does not log writes that ram_ro frames drop', () => {
    const { hv, host } = domain();
    const vcpu = new SimVcpu(hv.vcpuDescriptor(0));
    open.push(vcpu);
    host.setMemType(RAM_RO, 0x31n, 1);
    const bitmap = new Uint8Array(1);
    host.trackDirtyVram(0x30n, 4, bitmap);
    vcpu.ramWrite(0x31 * 4096, new Uint8Array([7]));
    expect(hv.ram[0x31 * 4096]).toBe(0);
    host.trackDirtyVram(0x30n, 4, bitmap);
    expect(bitmap[0]).toBe(0);
  });
});

describe('modified_memory', () => {
  it('is a no-op without log-dirty mode, as in Xen (recorded, not checked)', () => {
    const { hv, host } = domain({ ramBytes: 16 * 4096 });
    host.modifiedMemory([{ firstPfn: 100n, nr: 0 }]);
    expect(hv.modifiedMemoryLog).toEqual([{ extents: [{ firstPfn: 100n, nr: 0 }], logDirty: false }]);
    expect(hv.logDirtyBitmap.count()).toBe(0);
  });

  it('marks the log-dirty bitmap and checks bounds like Xen (exclusive end against the highest frame)', () => {
    const { hv, host } = domain({ ramBytes: 16 * 4096 });
    hv.enableLogDirty();
    host.modifiedMemory([
      { firstPfn: 2n, nr: 3 },
      { firstPfn: 10n, nr: 1 },
    ]);
    expect([...hv.logDirtyBitmap.setPages()]).toEqual([2, 3, 4, 10]);
    expect(codeOf(() => host.modifiedMemory([{ firstPfn: 3n, nr: 0 }]))).toBe('EINVAL');
    expect(codeOf(() => host.modifiedMemory([{ firstPfn: 14n, nr: 2 }]))).toBe('EINVAL'); // reaches frame 15, the last
    host.modifiedMemory([{ firstPfn: 13n, nr: 2 }]); // ends at 15 (exclusive)
    expect(codeOf(() => host.modifiedMemory([{ firstPfn: (1n << 64n) - 1n, nr: 2 }]))).toBe('EINVAL');
    expect(codeOf(() => host.modifiedMemory([{ firstPfn: -1n, nr: 1 }]))).toBe('EINVAL');
    expect(hv.modifiedMemoryLog.filter((m) => m.logDirty)).toHaveLength(2);
  });

  it('takes extents last to first, so a bad extent leaves later ones marked and names itself', () => {
    const { hv, host } = domain({ ramBytes: 16 * 4096 });
    hv.enableLogDirty();
    let field: string | undefined;
    try {
      host.modifiedMemory([
        { firstPfn: 1n, nr: 1 },
        { firstPfn: 20n, nr: 1 },
        { firstPfn: 5n, nr: 1 },
      ]);
    } catch (e) {
      field = (e as { field?: string }).field;
    }
    expect(field).toBe('extents[1]');
    expect([...hv.logDirtyBitmap.setPages()]).toEqual([5]);
  });

  it('guest writes mark the log-dirty bitmap while log-dirty mode is on', () => {
    const { hv } = domain({ ramBytes: 16 * 4096 });
    const vcpu = new SimVcpu(hv.vcpuDescriptor(0));
    open.push(vcpu);
    vcpu.ramWrite(4096, new Uint8Array([1]));
    hv.enableLogDirty();
    vcpu.ramWrite(2 * 4096 + 4095, new Uint8Array([1, 2]));
    hv.disableLogDirty();
    vcpu.ramWrite(5 * 4096, new Uint8Array([1]));
    expect([...hv.logDirtyBitmap.setPages()]).toEqual([2, 3]);
  });
});

describe('interrupts', () => {
  it('set_pci_intx_level: validates like Xen, drives the GSI, counts rising edges, wakes vCPU 0', () => {
    const { hv, host } = domain({ nrVcpus: 2 });
    const vcpu0 = new SimVcpu(hv.vcpuDescriptor(0));
    const vcpu1 = new SimVcpu(hv.vcpuDescriptor(1));
    open.push(vcpu0, vcpu1);
    const bad: [segment: number, bus: number, device: number, intx: number][] = [
      [1, 0, 3, 0],
      [0, 1, 3, 0],
      [0, 0, 32, 0],
      [0, 0, 3, 4],
      [0, 0, -1, 0],
    ];
    for (const [segment, bus, device, intx] of bad) {
      expect(codeOf(() => host.setPciIntxLevel(segment, bus, device, intx, true))).toBe('EINVAL');
    }
    const gsi = ((3 << 2) + (3 >> 3) + 1) % 32 + 16; // device 3 INTB
    expect(gsi).toBe(29);
    host.setPciIntxLevel(0, 0, 3, 1, true);
    host.setPciIntxLevel(0, 0, 3, 1, true); // already asserted: nothing changes
    expect(hv.interrupts.gsiLevel(gsi)).toBe(1);
    expect(hv.interrupts.gsiEdges(gsi)).toBe(1);
    expect(vcpu0.waitForInterrupt(0)).toBe(true);
    expect(vcpu0.waitForInterrupt(0)).toBe(false);
    expect(vcpu1.waitForInterrupt(0)).toBe(false);
    // Device 11 INTA shares GSI 29 ((44 + 1) & 31 = 13): a wired OR.
    host.setPciIntxLevel(0, 0, 11, 0, true);
    expect(hv.interrupts.gsiLevel(gsi)).toBe(2);
    expect(hv.interrupts.gsiEdges(gsi)).toBe(1);
    host.setPciIntxLevel(0, 0, 3, 1, false);
    host.setPciIntxLevel(0, 0, 11, 0, false);
    expect(hv.interrupts.gsiLevel(gsi)).toBe(0);
    host.setPciIntxLevel(0, 0, 3, 1, true);
    expect(hv.interrupts.gsiEdges(gsi)).toBe(2);
    expect(vcpu0.interrupts.delivered(0)).toBe(2);
    expect(hv.interruptLog.filter((e) => e.kind === 'pci-intx')).toHaveLength(6);
  });

  it('set_isa_irq_level: IRQ <= 15 (EINVAL beyond), IRQ 0 on GSI 2', () => {
    const { hv, host } = domain();
    expect(codeOf(() => host.setIsaIrqLevel(16, true))).toBe('EINVAL');
    host.setIsaIrqLevel(0, true);
    host.setIsaIrqLevel(4, true);
    expect([hv.interrupts.gsiLevel(2), hv.interrupts.gsiLevel(0), hv.interrupts.gsiLevel(4)]).toEqual([1, 0, 1]);
    host.setIsaIrqLevel(4, false);
    expect(hv.interrupts.gsiLevel(4)).toBe(0);
    expect(hv.interrupts.gsiEdges(4)).toBe(1);
  });

  it('inject_msi: physical destination by APIC ID (2 * vCPU), broadcast, counters per vector', () => {
    const { hv, host } = domain({ nrVcpus: 2 });
    const vcpus = [new SimVcpu(hv.vcpuDescriptor(0)), new SimVcpu(hv.vcpuDescriptor(1))];
    open.push(...vcpus);
    host.injectMsi(0xfee02000n, 0x4041); // dest 2 = vCPU 1, fixed, vector 0x41 (level-assert bit set)
    expect(vcpus[1]!.waitForInterrupt(0)).toBe(true);
    expect(vcpus[0]!.waitForInterrupt(0)).toBe(false);
    host.injectMsi(0xfeeff000n, 0x42); // broadcast
    expect(vcpus.map((v) => v.waitForInterrupt(0))).toEqual([true, true]);
    expect([hv.interrupts.msi(0x41), hv.interrupts.msi(0x42), hv.interrupts.delivered(0), hv.interrupts.delivered(1)]).toEqual([1, 2, 1, 2]);
    host.injectMsi(0xfee04000n, 0x43); // APIC ID 4: no such vCPU; fixed delivery reaches nobody
    host.injectMsi(0xfee00004n, 0x44); // logical mode: no guest programmed a logical ID
    expect([hv.interrupts.msi(0x43), hv.interrupts.msi(0x44)]).toEqual([0, 0]);
    const msis = hv.interruptLog.filter((e) => e.kind === 'msi');
    expect(msis.map((e) => (e.kind === 'msi' ? e.vcpus : []))).toEqual([[1], [0, 1], [], []]);
  });

  it('inject_msi errors: ERANGE for vector 0 without a PIRQ, ESRCH for lowest priority to nobody, EINVAL for other modes', () => {
    const { hv, host } = domain();
    expect(codeOf(() => host.injectMsi(0xfee00000n, 0))).toBe('ERANGE');
    expect(codeOf(() => host.injectMsi(0xfee04000n, 0x141))).toBe('ESRCH'); // lowest priority, APIC ID 4
    for (const mode of [2, 3, 4, 5, 6, 7]) expect(codeOf(() => host.injectMsi(0xfee00000n, (mode << 8) | 0x41))).toBe('EINVAL');
    host.injectMsi(0xfee00000n, 0x141); // lowest priority to vCPU 0
    host.injectMsi((0x100n << 32n) | 0xfee05000n, 0); // vector 0: PIRQ 0x100 | 5
    expect(hv.interrupts.pirq()).toBe(1);
    expect(hv.interruptLog.at(-1)).toEqual({ kind: 'pirq', address: (0x100n << 32n) | 0xfee05000n, data: 0, pirq: 0x105 });
    expect(hv.interrupts.delivered(0)).toBe(2);
  });
});

describe('SimXenHost', () => {
  it('is kind sim, reports nr_vcpus, and restrict() only takes the privileged operations away (sim-memory.test.ts)', () => {
    const { host } = domain({ nrVcpus: 4 });
    expect(host.kind).toBe('sim');
    expect(host.domid).toBe(1);
    expect(host.nrVcpus()).toBe(4);
    host.restrict();
    expect(host.restricted).toBe(true);
    expect(host.nrVcpus()).toBe(4);
  });

  it('binds ports to duplicated eventfds; a port binds once; unbind frees it', () => {
    const { host } = domain({ nrVcpus: 2 });
    const id = host.createIoreqServer('atomic');
    const pages = host.mapIoreqPages(id, 2);
    host.setIoreqServerState(id, true);
    const ports = [readSlot(pages.sync, 0).vpEport, readSlot(pages.sync, 1).vpEport];
    const bufPort = host.getIoreqServerInfo(id).bufioreqPort!;
    expect(codeOf(() => host.bindEvents([bufPort], null))).toBe('EINVAL'); // a buffered port as a vCPU port
    expect(codeOf(() => host.bindEvents(ports, ports[0]!))).toBe('EINVAL');
    expect(codeOf(() => host.bindEvents([999], null))).toBe('EINVAL');
    const b = host.bindEvents(ports, bufPort);
    if (b.mode !== 'eventfd') throw new Error('eventfd mode expected');
    expect(codeOf(() => host.bindEvents([ports[1]!], null))).toBe('EINVAL'); // already bound
    const fds = [...b.guestToServer, ...b.serverToGuest, b.bufGuestToServer!];
    expect(new Set(fds).size).toBe(5);
    host.unbindEvents(b);
    // unbind closed the duplicates it handed out
    for (const fd of fds) expect(codeOf(() => waitReadable(fd, 0))).toBe('EBADF');
    expect(codeOf(() => host.unbindEvents(b))).toBe('EINVAL');
    host.unbindEvents(host.bindEvents(ports, bufPort));
    pages.release();
  });

  it('maps consecutive guest frames from guest RAM, EFAULT beyond RAM', () => {
    const { hv, host } = domain({ ramBytes: 8 * 4096 });
    const m = host.mapForeign([2n, 3n, 4n], true);
    expect(m.bytes.byteLength).toBe(3 * 4096);
    m.bytes[4096 + 7] = 0x5a;
    expect(hv.ram[3 * 4096 + 7]).toBe(0x5a);
    hv.ram[4 * 4096] = 0xa5;
    expect(m.bytes[2 * 4096]).toBe(0xa5);
    m.release();
    expect(m.bytes.byteLength).toBe(0); // unmapped
    expect(codeOf(() => host.mapForeign([7n, 8n], true))).toBe('EFAULT');
    expect(codeOf(() => host.mapForeign([1n << 40n], false))).toBe('EFAULT');
    expect(codeOf(() => host.mapForeign([], false))).toBe('EINVAL');
    expect(codeOf(() => host.mapForeign([3n, 1n], false))).toBe('EOPNOTSUPP');
    const ro = host.mapForeign([5n], false);
    expect(ro.bytes.byteLength).toBe(4096);
    ro.release();
  });

  it('close() unmaps and unbinds everything it handed out; afterwards every call is EBADF', () => {
    const { host } = domain();
    const server = new HandServer(host, 'legacy');
    const m = host.mapForeign([0n], true);
    host.close();
    expect(server.pages.sync.byteLength).toBe(0);
    expect(m.bytes.byteLength).toBe(0);
    for (const call of [
      () => host.nrVcpus(),
      () => host.createIoreqServer('off'),
      () => host.getIoreqServerInfo(server.id),
      () => host.mapIoreqPages(server.id, 1),
      () => host.mapIoRange(server.id, 'port', 1n, 2n),
      () => host.unmapIoRange(server.id, 'port', 1n, 2n),
      () => host.setIoreqServerState(server.id, false),
      () => host.destroyIoreqServer(server.id),
      () => host.bindEvents(server.ports, null),
      () => host.unbindEvents(server.binding),
      () => host.mapForeign([0n], true),
      () => host.trackDirtyVram(0n, 0, new Uint8Array(0)),
      () => host.modifiedMemory([]),
      () => host.setMemType(RAM_RW, 0n, 1),
      () => host.mapMemTypeToIoreqServer(server.id, IOREQ_SERVER, WRITE),
      () => host.setPciIntxLevel(0, 0, 0, 0, true),
      () => host.setIsaIrqLevel(1, true),
      () => host.injectMsi(0xfee00000n, 0x30),
      () => host.relocateMemory(0n, 1n, 1),
      () => host.pinMemoryCacheattr(0n, 1n, 'wc'),
      () => host.domainPages(),
      () => host.setMaxPages(1),
      () => host.populatePhysmap([1n]),
      () => host.restrict(),
    ]) {
      expect(codeOf(call)).toBe('EBADF');
    }
    host.close(); // idempotent
    // The servers belong to the domain, not to the handle.
    expect(host.hypervisor.getIoreqServerInfo(server.id).bufioreqPort).toBe(server.bufPort);
    // A new handle can bind the ports the closed one released.
    const next = new SimXenHost(host.hypervisor);
    open.push(next);
    next.unbindEvents(next.bindEvents(server.ports, server.bufPort));
  });

  it('the domain gone, operations fail with ESRCH', () => {
    const hv = new SimHypervisor({ ramBytes: MiB });
    const host = new SimXenHost(hv);
    const server = new HandServer(host, 'off');
    hv.close();
    expect(codeOf(() => host.createIoreqServer('off'))).toBe('ESRCH');
    expect(codeOf(() => hv.route('pio', 0n))).toBe('ESRCH');
    expect(codeOf(() => hv.vcpuDescriptor(0))).toBe('ESRCH');
    host.close(); // releases its bindings although the ports are gone
    expect(server.pages.sync.byteLength).toBe(0);
    hv.close();
  });
});

it('pciSbdf matches XEN_DMOP_PCI_SBDF and the vp_eport offset matches ioreq.h', () => {
  expect(pciSbdf(1, 2, 3, 4)).toBe(0x0001021c);
  expect(OFF_VP_EPORT).toBe(24);
});
