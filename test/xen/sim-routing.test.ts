/**
 * Routing of guest accesses in the simulator (port, memory, PCI configuration through 0xcf8/0xcfc,
 * disabled servers, Xen's preference order), what Xen does with unclaimed accesses, guest RAM
 * under the p2m, and the Xen-style range sets routing runs on.
 */
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { HvmMemType, IoreqMemAccess, pciSbdf } from '../../adapters/xen/ioreq-abi.js';
import { SimHypervisor } from '../../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../../adapters/xen/sim/host.js';
import { Rangeset } from '../../adapters/xen/sim/rangeset.js';
import { decodeCf8Access, memoryAccessBounds } from '../../adapters/xen/sim/routing.js';
import { SimVcpu } from '../../adapters/xen/sim/vcpu.js';

const MiB = 1 << 20;
const open: { close(): void }[] = [];
function domain(ramBytes = MiB): { hv: SimHypervisor; host: SimXenHost; vcpu: SimVcpu } {
  const hv = new SimHypervisor({ ramBytes, nrVcpus: 2 });
  const host = new SimXenHost(hv);
  const vcpu = new SimVcpu(hv.vcpuDescriptor(0));
  open.push(vcpu, host, hv);
  return { hv, host, vcpu };
}
afterEach(() => {
  for (const o of open.splice(0)) o.close();
});

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code ?? `no code: ${String(e)}`;
  }
  throw new Error('expected the call to fail');
}

/** A server with the given ranges, enabled. */
function server(host: SimXenHost, ranges: [kind: 'port' | 'memory' | 'pci', start: bigint, end: bigint][]): number {
  const id = host.createIoreqServer('off');
  for (const [kind, s, e] of ranges) host.mapIoRange(id, kind, s, e);
  host.setIoreqServerState(id, true);
  return id;
}

/** cf8 value selecting bus/device/function/register with the enable bit. */
function cf8(bus: number, device: number, fn: number, register: number, enable = true): bigint {
  return BigInt(((enable ? 0x80000000 : 0) | (bus << 16) | (device << 11) | (fn << 8) | (register & 0xfc)) >>> 0);
}

describe('route()', () => {
  it('port accesses must lie wholly in one port range; repetitions do not move the port', () => {
    const { hv, host } = domain();
    const id = server(host, [['port', 0x100n, 0x107n]]);
    expect(hv.route('pio', 0x104n, 4)).toBe(id);
    expect(hv.route('pio', 0x106n, 4)).toBeNull();
    expect(hv.route('pio', 0x108n, 1)).toBeNull();
    expect(hv.route('pio', 0x104n, 4, 1000)).toBe(id);
    expect(hv.route('mmio', 0x104n, 4)).toBeNull(); // a port range is not a memory range
  });

  it('memory accesses cover every repetition, downwards with the direction flag', () => {
    const { hv, host } = domain();
    const id = server(host, [['memory', 0xf000_1000n, 0xf000_1fffn]]);
    expect(hv.route('mmio', 0xf000_1ff0n, 4, 4)).toBe(id);
    expect(hv.route('mmio', 0xf000_1ff0n, 4, 5)).toBeNull();
    expect(hv.route('mmio', 0xf000_100cn, 4, 4, true)).toBe(id); // bytes 0x1000 .. 0x100f
    expect(hv.route('mmio', 0xf000_1008n, 4, 4, true)).toBeNull(); // would start at 0xffc
    expect(memoryAccessBounds(0x100cn, 4, 4, true)).toEqual([0x1000n, 0x100fn]);
    expect(memoryAccessBounds(0x1000n, 8, 2, false)).toEqual([0x1000n, 0x100fn]);
    expect(hv.route('mmio', (1n << 64n) - 4n, 8)).toBeNull(); // wraps the address space
  });

  it('decoded PCI configuration cycles go to the server that mapped the SBDF', () => {
    const { hv, host } = domain();
    const sbdf = BigInt(pciSbdf(0, 0, 3, 0));
    const id = server(host, [['pci', sbdf, sbdf]]);
    expect(hv.route('pci', (sbdf << 32n) | 0x10n, 4)).toBe(id);
    expect(hv.route('pci', (BigInt(pciSbdf(0, 0, 3, 1)) << 32n) | 0x10n, 4)).toBeNull();
    expect(hv.route('pci', (BigInt(pciSbdf(1, 0, 3, 0)) << 32n) | 0x10n, 4)).toBeNull(); // another segment
  });

  it('skips disabled servers and prefers the highest id, as Xen iterates its servers backwards', () => {
    const { hv, host } = domain();
    const low = server(host, [['memory', 0x1000_0000n, 0x1000_ffffn]]);
    const high = server(host, [['memory', 0x1000_0000n, 0x1000_0fffn]]);
    expect(hv.route('mmio', 0x1000_0800n, 4)).toBe(high);
    expect(hv.route('mmio', 0x1000_1800n, 4)).toBe(low); // only the low one covers it
    host.setIoreqServerState(high, false);
    expect(hv.route('mmio', 0x1000_0800n, 4)).toBe(low);
    host.setIoreqServerState(low, false);
    expect(hv.route('mmio', 0x1000_0800n, 4)).toBeNull();
    host.setIoreqServerState(high, true);
    host.destroyIoreqServer(high);
    expect(hv.route('mmio', 0x1000_0800n, 4)).toBeNull();
  });

  it('0xcfc-0xcff follow the 0xcf8 latch: configuration cycles by SBDF, else plain ports', () => {
    const { hv, host, vcpu } = domain();
    const sbdf = BigInt(pciSbdf(0, 0, 3, 0));
    const device = server(host, [['pci', sbdf, sbdf]]);
    // (0xcf8 itself stays unclaimed here: this vCPU runs on the test's thread and cannot wait for a
    // server; the round-trip tests show the latching write reaching a server.)
    const ports = server(host, [['port', 0xcfcn, 0xcffn]]);
    // The guest selects 00:03.0 register 0x10; Xen latches it.
    expect(vcpu.access({ space: 'pio', addr: 0xcf8n, size: 4, dir: 'write', data: cf8(0, 3, 0, 0x10) })).toBe(0n);
    expect(hv.route('pio', 0xcfen, 2)).toBe(device);
    // An SBDF nobody mapped: the configuration cycle reaches nobody, not even the port server.
    vcpu.access({ space: 'pio', addr: 0xcf8n, size: 4, dir: 'write', data: cf8(0, 4, 0, 0) });
    expect(hv.route('pio', 0xcfcn, 4)).toBeNull();
    expect(vcpu.access({ space: 'pio', addr: 0xcfcn, size: 4, dir: 'read' })).toBe(0xffff_ffffn);
    // Enable bit clear: 0xcfc is an ordinary port.
    vcpu.access({ space: 'pio', addr: 0xcf8n, size: 4, dir: 'write', data: cf8(0, 3, 0, 0x10, false) });
    expect(hv.route('pio', 0xcfcn, 4)).toBe(ports);
    // Only a 4-byte write at 0xcf8 latches.
    vcpu.access({ space: 'pio', addr: 0xcf8n, size: 2, dir: 'write', data: 0xffffn });
    vcpu.access({ space: 'pio', addr: 0xcf9n, size: 1, dir: 'write', data: 0x80n });
    expect(hv.route('pio', 0xcfcn, 4)).toBe(ports);
  });

  it('decodes the latch like hvm_pci_decode_addr: bus/devfn from 0xcf8, register + port offset', () => {
    const latch = Number(cf8(1, 2, 3, 0x44));
    expect(decodeCf8Access(0xcfen, latch)).toBe((BigInt(pciSbdf(0, 1, 2, 3)) << 32n) | 0x46n);
    expect(decodeCf8Access(0xcfcn, latch | 0x3)).toBe((BigInt(pciSbdf(0, 1, 2, 3)) << 32n) | 0x44n); // low bits ignored
    expect(decodeCf8Access(0xcfcn, latch & 0x7fffffff)).toBeNull();
    expect(decodeCf8Access(0xcf8n, latch)).toBeNull();
  });
});

describe('accesses nobody claims', () => {
  it('reads return all-ones of the access size, writes vanish', () => {
    const { hv, vcpu } = domain();
    expect(vcpu.access({ space: 'pio', addr: 0x80n, size: 1, dir: 'read' })).toBe(0xffn);
    expect(vcpu.access({ space: 'pio', addr: 0x80n, size: 2, dir: 'read' })).toBe(0xffffn);
    expect(vcpu.access({ space: 'pio', addr: 0x80n, size: 4, dir: 'read' })).toBe(0xffff_ffffn);
    expect(vcpu.access({ space: 'mmio', addr: 0xfe00_0000n, size: 8, dir: 'read' })).toBe((1n << 64n) - 1n);
    expect(vcpu.access({ space: 'pci', addr: 1n << 35n, size: 2, dir: 'read' })).toBe(0xffffn);
    expect(vcpu.access({ space: 'mmio', addr: 0xfe00_0000n, size: 8, dir: 'write', data: 5n })).toBe(0n);
    expect(hv.ram.every((b) => b === 0)).toBe(true);
  });

  it('a string read through memory fills the guest buffer with all-ones', () => {
    const { hv, vcpu } = domain();
    vcpu.access({ space: 'pio', addr: 0x60n, size: 2, dir: 'read', count: 3, dataIsPtr: true, data: 0x2000n });
    expect([...hv.ram.subarray(0x1fff, 0x2007)]).toEqual([0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
    vcpu.access({ space: 'mmio', addr: 0xfe00_0000n, size: 4, dir: 'read', count: 2, dataIsPtr: true, data: 0x3004n, df: true });
    expect([...hv.ram.subarray(0x2fff, 0x3009)]).toEqual([0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
  });
});

describe('guest RAM under the p2m', () => {
  it('memory accesses to RAM do not trap: they read and write RAM', () => {
    const { hv, vcpu } = domain();
    vcpu.access({ space: 'mmio', addr: 0x1000n, size: 8, dir: 'write', data: 0x1122_3344_5566_7788n });
    expect([...hv.ram.subarray(0x1000, 0x1008)]).toEqual([0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
    expect(vcpu.access({ space: 'mmio', addr: 0x1002n, size: 2, dir: 'read' })).toBe(0x5566n);
    expect(codeOf(() => vcpu.access({ space: 'mmio', addr: 0x1000n, size: 4, dir: 'read', count: 2, dataIsPtr: true, data: 0x2000n }))).toBe('EINVAL');
  });

  it('ram_ro frames drop writes; mmio_dm frames are emulated (all-ones, nobody claims them)', () => {
    const { hv, host, vcpu } = domain();
    hv.ram.fill(0x11, 0x5000, 0x7000);
    host.setMemType(HvmMemType.RAM_RO, 5n, 1);
    host.setMemType(HvmMemType.MMIO_DM, 6n, 1);
    vcpu.ramWrite(0x4ffe, new Uint8Array(8).fill(0x22)); // frames 4, 5 (dropped), 6 (emulated)
    expect([...hv.ram.subarray(0x4ffe, 0x5002)]).toEqual([0x22, 0x22, 0x11, 0x11]);
    expect(hv.ram[0x6000]).toBe(0x11);
    expect([...vcpu.ramRead(0x5ffe, 4)]).toEqual([0x11, 0x11, 0xff, 0xff]);
  });

  it('ioreq_server frames read directly; with nobody claiming the type they are writable RAM', () => {
    const { hv, host, vcpu } = domain();
    const id = host.createIoreqServer('off');
    host.mapMemTypeToIoreqServer(id, HvmMemType.IOREQ_SERVER, IoreqMemAccess.WRITE);
    host.setMemType(HvmMemType.IOREQ_SERVER, 9n, 1);
    hv.ram[0x9010] = 0x42;
    expect(vcpu.ramRead(0x9010, 1)[0]).toBe(0x42); // reads never trap
    host.destroyIoreqServer(id); // leaves the frame typed ioreq_server, unclaimed
    vcpu.ramWrite(0x9010, new Uint8Array([0x43]));
    expect(hv.ram[0x9010]).toBe(0x43);
  });

  it('RAM up to 4 GiB (the largest mapping Node 20 takes): the top frames work like any other', () => {
    expect(codeOf(() => new SimHypervisor({ ramBytes: 2 ** 32 + 4096 }))).toBe('EINVAL');
    const { hv, host, vcpu } = domain(2 ** 32); // sparse: only touched pages are allocated
    const high = 2 ** 20 - 4; // frame 0xffffc
    host.setMemType(HvmMemType.RAM_RO, BigInt(high), 1);
    vcpu.ramWrite(high * 4096, new Uint8Array([1])); // dropped
    vcpu.access({ space: 'mmio', addr: BigInt(high * 4096 + 4096), size: 4, dir: 'write', data: 0x0403_0201n });
    expect([hv.ram[high * 4096], hv.ram[high * 4096 + 4096]]).toEqual([0, 1]);
    const bitmap = new Uint8Array(1);
    host.trackDirtyVram(BigInt(high), 4, bitmap);
    vcpu.ramWrite(2 ** 32 - 1, new Uint8Array([1]));
    host.trackDirtyVram(BigInt(high), 4, bitmap);
    expect(bitmap[0]).toBe(0b1000);
    expect(codeOf(() => vcpu.ramWrite(2 ** 32 - 1, new Uint8Array(2)))).toBe('EFAULT');
  });

  it('EFAULT outside guest RAM, EINVAL for malformed accesses', () => {
    const { vcpu } = domain(16 * 4096);
    expect(codeOf(() => vcpu.ramRead(16 * 4096 - 1, 2))).toBe('EFAULT');
    expect(codeOf(() => vcpu.ramWrite(16n * 4096n, new Uint8Array(1)))).toBe('EFAULT');
    vcpu.ramWrite(16 * 4096 - 1, new Uint8Array(1));
    const bad: Parameters<SimVcpu['access']>[0][] = [
      { space: 'pio', addr: 0x10000n, size: 1, dir: 'read' },
      { space: 'pio', addr: 0x80n, size: 8, dir: 'read' },
      { space: 'pci', addr: 0n, size: 8, dir: 'read' },
      { space: 'mmio', addr: 0n, size: 3 as 4, dir: 'read' },
      { space: 'port' as 'pio', addr: 0n, size: 1, dir: 'read' },
      { space: 'pio', addr: 0x80n, size: 1, dir: 'write' },
      { space: 'pio', addr: 0x80n, size: 1, dir: 'write', data: 0x100n },
      { space: 'pio', addr: 0x80n, size: 1, dir: 'read', count: 2 },
      { space: 'pio', addr: 0x80n, size: 1, dir: 'read', count: 2, dataIsPtr: true },
      { space: 'pio', addr: 0x80n, size: 1, dir: 'read', count: 0, dataIsPtr: true, data: 0n },
    ];
    for (const a of bad) expect(codeOf(() => vcpu.access(a))).toBe('EINVAL');
    expect(codeOf(() => vcpu.access({ space: 'pio', addr: 0x80n, size: 4, dir: 'read', count: 2, dataIsPtr: true, data: 16n * 4096n - 4n }))).toBe('EFAULT');
    expect(codeOf(() => vcpu.access({ space: 'pio', addr: 0x80n, size: 4, dir: 'read', count: 2, dataIsPtr: true, data: 0n, df: true }))).toBe('EFAULT');
  });
});

describe('vCPU descriptor', () => {
  it('is plain cloneable data: a vCPU built from a structured clone shares the domain', () => {
    const { hv, host } = domain();
    const clone = structuredClone(hv.vcpuDescriptor(1));
    const vcpu = new SimVcpu(clone);
    open.unshift(vcpu);
    expect(vcpu.index).toBe(1);
    vcpu.ramWrite(0x100, new Uint8Array([7]));
    expect(hv.ram[0x100]).toBe(7);
    host.injectMsi(0xfee02000n, 0x30);
    expect(vcpu.waitForInterrupt(0)).toBe(true);
    expect(vcpu.interrupts.msi(0x30)).toBe(1);
  });

  it('a descriptor of another layout is refused; a closed vCPU is EBADF', () => {
    const { hv } = domain();
    expect(codeOf(() => new SimVcpu({ ...hv.vcpuDescriptor(0), layout: 1 }))).toBe('EINVAL');
    expect(codeOf(() => hv.vcpuDescriptor(2))).toBe('EINVAL');
    const vcpu = new SimVcpu(hv.vcpuDescriptor(0));
    vcpu.close();
    vcpu.close();
    expect(codeOf(() => vcpu.access({ space: 'pio', addr: 0n, size: 1, dir: 'read' }))).toBe('EBADF');
    expect(codeOf(() => vcpu.ramRead(0, 1))).toBe('EBADF');
    expect(codeOf(() => vcpu.waitForInterrupt(0))).toBe('EBADF');
  });
});

describe('Rangeset', () => {
  const N = 48;
  /** Maximal runs of a membership array. */
  const runs = (m: boolean[]): [number, number][] => {
    const out: [number, number][] = [];
    for (let i = 0; i < m.length; i++) {
      if (!m[i]) continue;
      const start = i;
      while (i + 1 < m.length && m[i + 1]) i++;
      out.push([start, i]);
    }
    return out;
  };

  it('behaves like a coalesced set of values with a limit on stored ranges (model check)', () => {
    const op = fc.record({
      add: fc.boolean(),
      start: fc.integer({ min: 0, max: N - 1 }),
      len: fc.integer({ min: 1, max: 8 }),
    });
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 6 }), fc.array(op, { maxLength: 60 }), (limit, ops) => {
        const set = new Rangeset(limit);
        let model: boolean[] = new Array<boolean>(N).fill(false);
        for (const { add, start, len } of ops) {
          const end = Math.min(N - 1, start + len - 1);
          const next = model.slice();
          for (let i = start; i <= end; i++) next[i] = add;
          const run = (): void => (add ? set.add(BigInt(start), BigInt(end)) : set.remove(BigInt(start), BigInt(end)));
          if (runs(next).length > limit) {
            expect(codeOf(run)).toBe('ENOMEM');
          } else {
            run();
            model = next;
          }
          expect([...set.pairs()].map(([s, e]) => [Number(s), Number(e)])).toEqual(runs(model));
          for (let s = 0; s < N; s += 5) {
            for (let e = s; e < N; e += 3) {
              const slice = model.slice(s, e + 1);
              expect(set.overlaps(BigInt(s), BigInt(e))).toBe(slice.some(Boolean));
              const covering = runs(model).some(([rs, re]) => rs <= s && re >= e);
              expect(set.contains(BigInt(s), BigInt(e))).toBe(covering);
            }
          }
        }
      }),
      { numRuns: 300 },
    );
  });

  it('handles the ends of the 64-bit space', () => {
    const set = new Rangeset(4);
    const max = (1n << 64n) - 1n;
    set.add(max - 1n, max);
    set.add(0n, 0n);
    expect(set.contains(max, max)).toBe(true);
    set.remove(max, max);
    expect([...set.pairs()]).toEqual([
      [0n, 0n],
      [max - 1n, max - 1n],
    ]);
  });
});
