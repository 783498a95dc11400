/**
 * PrivcmdXenHost's memory operations with the kernel stood in for: ioctl(2) is replaced by a fake
 * privcmd that records each call and answers as Linux and Xen would (hypercall results, errnos),
 * so what reaches the kernel — and what never does once the handle is restricted — is checked
 * byte by byte without Xen.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeEach, describe, expect, it, vi } from 'vitest';
import type { IoctlArg, IoctlBytes } from '../../src/native/ioctl.js';

/** One ioctl the host made. */
interface Call {
  request: number;
  arg: unknown;
}

const fake = vi.hoisted(() => ({
  calls: [] as Call[],
  /** Answers IOCTL_PRIVCMD_HYPERCALL: (op, args) → result, or throws an errno error. */
  hypercall: (_op: bigint, _args: readonly (bigint | unknown)[]): number => 0,
}));

vi.mock('../../src/native/ioctl.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../../src/native/ioctl.js')>();
  return {
    ...real,
    ioctl: (fd: number, request: number, arg?: unknown): number => {
      fake.calls.push({ request, arg });
      if (request === 0x00305000) {
        const a = arg as IoctlArg;
        const v = new DataView((a.data as Uint8Array).buffer);
        const args: (bigint | unknown)[] = [];
        for (let i = 0; i < 5; i++) {
          const p = a.pointers?.find((x) => x.offset === 8 + 8 * i);
          args.push(p ? p.target : v.getBigUint64(8 + 8 * i, true));
        }
        return fake.hypercall(v.getBigUint64(0, true), args);
      }
      void fd;
      return 0; // RESTRICT, RESTRICT_DOMID, DM_OP: accepted
    },
  };
});

const { PrivcmdXenHost } = await import('../../adapters/xen/privcmd-host.js');

const dir = mkdtempSync(join(tmpdir(), 'mdevkit-privcmd-memory-'));
const privcmdPath = join(dir, 'privcmd');
const evtchnPath = join(dir, 'evtchn');
writeFileSync(privcmdPath, '');
writeFileSync(evtchnPath, '');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const HYPERCALL = 0x00305000;
const DM_OP = 0x00105005;

function errno(code: string, errno: number): Error {
  return Object.assign(new Error(code), { code, errno, syscall: 'ioctl' });
}

function host(options: { domctlInterfaceVersion?: number } = {}): InstanceType<typeof PrivcmdXenHost> {
  return new PrivcmdXenHost({ domid: 5, privcmdPath, evtchnPath, ...options });
}

function bytesOf(target: unknown): Uint8Array {
  const t = target as IoctlBytes | IoctlArg;
  const data = t instanceof Uint8Array ? t : ((t as IoctlArg).data as Uint8Array);
  return data;
}

beforeEach(() => {
  fake.calls.length = 0;
  fake.hypercall = () => 0;
});

describe('PrivcmdXenHost memory operations (fake privcmd)', () => {
  it('domainPages: memory_op XENMEM_current_reservation (3) and XENMEM_maximum_reservation (4) of a domid_t', () => {
    const seen: [bigint, bigint, number][] = [];
    fake.hypercall = (op, args) => {
      const domid = new DataView(bytesOf(args[1]).buffer).getUint16(0, true);
      seen.push([op, args[0] as bigint, domid]);
      return args[0] === 3n ? 32_000 : 33_024;
    };
    expect(host().domainPages()).toEqual({ totPages: 32_000, maxPages: 33_024 });
    expect(seen).toEqual([
      [12n, 3n, 5],
      [12n, 4n, 5],
    ]);
  });

  it('setMaxPages: the domctl hypercall (36) with XEN_DOMCTL_max_mem in KiB and the interface version', () => {
    let domctl: Uint8Array | null = null;
    fake.hypercall = (op, args) => {
      expect(op).toBe(36n);
      domctl = bytesOf(args[0]).slice();
      return 0;
    };
    host().setMaxPages(37_120);
    const v = new DataView(domctl!.buffer);
    expect([v.getUint32(0, true), v.getUint32(4, true), v.getUint16(8, true), v.getBigUint64(16, true)]).toEqual([11, 0x15, 5, 37_120n * 4n]);
    host({ domctlInterfaceVersion: 0x16 }).setMaxPages(1);
    expect(new DataView(domctl!.buffer).getUint32(4, true)).toBe(0x16);
  });

  it('setMaxPages: EACCES (another Xen) names the interface version to set', () => {
    fake.hypercall = () => {
      throw errno('EACCES', 13);
    };
    expect(() => host().setMaxPages(1)).toThrow(/refused XEN_DOMCTL_INTERFACE_VERSION 0x15; set domctlInterfaceVersion/);
  });

  it('populatePhysmap: 4096 gfns per hypercall, stopping at the first short one (Over-allocation)', () => {
    const chunks: bigint[][] = [];
    fake.hypercall = (op, args) => {
      expect([op, args[0]]).toEqual([12n, 6n]);
      const reservation = args[1] as IoctlArg;
      const v = new DataView((reservation.data as Uint8Array).buffer);
      const gfns = reservation.pointers![0]!.target as BigUint64Array;
      expect([Number(v.getBigUint64(8, true)), v.getUint32(16, true), v.getUint32(20, true), v.getUint16(24, true)]).toEqual([gfns.length, 0, 0, 5]);
      chunks.push([...gfns]);
      return chunks.length === 1 ? gfns.length : 100;
    };
    const gfns = Array.from({ length: 10_000 }, (_, i) => 0x100_0000n + BigInt(i));
    expect(host().populatePhysmap(gfns)).toBe(4096 + 100);
    expect(chunks.map((c) => c.length)).toEqual([4096, 4096]);
    expect(chunks[1]![0]).toBe(0x100_0000n + 4096n);
  });

  it('after restrict the privileged operations fail with EPERM before reaching the kernel; DMOPs still go', () => {
    const h = host();
    expect(h.restricted).toBe(false);
    h.restrict();
    expect(h.restricted).toBe(true);
    fake.calls.length = 0;
    for (const call of [() => h.domainPages(), () => h.setMaxPages(1), () => h.populatePhysmap([1n])]) {
      expect(call).toThrow(expect.objectContaining({ code: 'EPERM', message: expect.stringMatching(/raw hypercall, which privcmd refuses once restricted/) }));
    }
    expect(fake.calls).toEqual([]);
    h.relocateMemory(0x100_0000n, 0xe_0000n, 4096);
    h.pinMemoryCacheattr(0xe_0000n, 0xe_0fffn, 'wc');
    expect(fake.calls.map((c) => c.request)).toEqual([DM_OP, DM_OP]);
    expect(fake.calls.every((c) => c.request !== HYPERCALL)).toBe(true);
  });

  it('track_dirty_vram with nr 0 passes a one-byte bitmap that is not page aligned (privcmd refuses NULL)', async () => {
    const { addressOf } = await import('../../src/native/ioctl.js');
    host().trackDirtyVram(0n, 0, new Uint8Array(0));
    const arg = fake.calls[0]!.arg as IoctlArg;
    const list = arg.pointers![0]!.target as IoctlArg;
    const bitmap = list.pointers![1]!.target as Uint8Array;
    expect(bitmap.byteLength).toBe(1);
    expect(addressOf(bitmap) % 4096n).not.toBe(0n);
  });
});
