/**
 * The simulator's memory operations with Xen's semantics and errnos: the domain's page limit
 * (XEN_DOMCTL_max_mem), XENMEM_populate_physmap, relocate_memory, pin_memory_cacheattr,
 * track_dirty_vram over moving pages, foreign mappings that follow their pages, the mapcache
 * INVALIDATE that relocation causes, and the privileged operations refused after restrict.
 */
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HvmMemType, IoreqMemAccess } from '../../adapters/xen/ioreq-abi.js';
import { SimHypervisor, type SimHypervisorOptions } from '../../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../../adapters/xen/sim/host.js';
import { SimVcpu } from '../../adapters/xen/sim/vcpu.js';
import { SimVcpuThread } from '../../adapters/xen/sim/vcpu-thread.js';
import { waitReadable } from '../../src/native/poll.js';
import { HandServer, STATE_NONE, assertSimBuildFresh, readSlot } from '../fixtures/xen-sim-server.js';

const MiB = 1 << 20;
const PAGE = 4096;
/** A parking range far above guest RAM, and a BAR address below 4 GiB. */
const PARK = 0x100_0000n;
const BAR = 0xe0000n;

beforeAll(() => assertSimBuildFresh());

const open: { close(): void }[] = [];
const threads: SimVcpuThread[] = [];
afterEach(async () => {
  await Promise.all(threads.splice(0).map((t) => t.terminate()));
  for (const o of open.splice(0).reverse()) o.close();
});

function domain(options: Partial<SimHypervisorOptions> = {}): { hv: SimHypervisor; host: SimXenHost; vcpu: SimVcpu } {
  const hv = new SimHypervisor({ ramBytes: MiB, ...options });
  const host = new SimXenHost(hv);
  const vcpu = new SimVcpu(hv.vcpuDescriptor(0), { timeoutMs: 2000 });
  open.push(hv, host, vcpu);
  return { hv, host, vcpu };
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code ?? `no code: ${String(e)}`;
  }
  throw new Error('expected the call to fail');
}

const range = (first: bigint, n: number): bigint[] => Array.from({ length: n }, (_, i) => first + BigInt(i));

describe("the domain's page limit and XENMEM_populate_physmap", () => {
  it('starts at the RAM plus 1 MiB (xl), and XEN_DOMCTL_max_mem sets it, clipped to 2^32 - 1', () => {
    const { host } = domain();
    expect(host.domainPages()).toEqual({ totPages: 256, maxPages: 512 });
    host.setMaxPages(100); // below tot_pages: accepted, as Xen does
    expect(host.domainPages()).toEqual({ totPages: 256, maxPages: 100 });
    host.setMaxPages(2 ** 40);
    expect(host.domainPages().maxPages).toBe(0xffff_ffff);
    expect(codeOf(() => host.setMaxPages(-1))).toBe('EINVAL');
  });

  it('stops at the limit with a short count and "Over-allocation" in Xen\'s log; after raising it the rest goes in', () => {
    const { hv, host } = domain({ maxPages: 256 + 16 });
    expect(host.populatePhysmap(range(PARK, 64))).toBe(16);
    expect(hv.xenLog.at(-1)).toBe('(XEN) d1 Over-allocation for d1: 273 > 272');
    expect(host.domainPages()).toEqual({ totPages: 272, maxPages: 272 });
    expect(hv.memType(PARK + 15n)).toBe(HvmMemType.RAM_RW);
    expect(hv.memType(PARK + 16n)).toBe(HvmMemType.MMIO_DM); // a hole
    host.setMaxPages(host.domainPages().maxPages + 48);
    expect(host.populatePhysmap(range(PARK + 16n, 48))).toBe(48);
    expect(host.domainPages().totPages).toBe(320);
  });

  it('stops when the host has no free memory, and at gfns beyond the p2m', () => {
    const { hv, host } = domain({ extraBytes: 8 * PAGE, maxPages: 10_000 });
    expect(host.populatePhysmap(range(PARK, 10))).toBe(8);
    expect(hv.xenLog.at(-1)).toMatch(/Could not allocate order=0 extent/);
    const { host: host2 } = domain({ maxPages: 10_000 });
    expect(host2.populatePhysmap([PARK, 1n << 40n, PARK + 1n])).toBe(1);
  });

  it('hands out zeroed pages (or garbage, as after bootscrub=0), consecutive for one call', () => {
    const { hv, host } = domain({ maxPages: 1000 });
    hv.writeGuest(PARK * 4096n, new Uint8Array([1])); // a hole: the write vanishes
    expect(host.populatePhysmap(range(PARK, 4))).toBe(4);
    expect(hv.readGuest(PARK * 4096n, 4 * PAGE).every((b) => b === 0)).toBe(true);
    expect(hv.pagesOf(range(PARK, 4))).toEqual([256, 257, 258, 259]);
    const { hv: dirty, host: dirtyHost } = domain({ maxPages: 1000, scrubPages: false });
    dirtyHost.populatePhysmap([PARK]);
    expect(dirty.readGuest(PARK * 4096n, 2)).toEqual(new Uint8Array([0xa5, 0xa5]));
  });

  it('a gfn that has a page gets a new one; the old one stays counted (orphaned), as in Xen', () => {
    const { hv, host } = domain({ maxPages: 1000 });
    hv.ram[5 * PAGE] = 0x77;
    expect(host.populatePhysmap([5n])).toBe(1);
    expect(hv.readGuest(5 * PAGE, 1)[0]).toBe(0);
    expect(hv.ram[5 * PAGE]).toBe(0x77); // the old page, no longer mapped
    expect([host.domainPages().totPages, hv.orphanedPageCount]).toEqual([257, 1]);
  });
});

describe('relocate_memory', () => {
  it('moves pages with their contents; the old gfns become holes that read all-ones', () => {
    const { hv, host, vcpu } = domain({ maxPages: 1000 });
    host.populatePhysmap(range(PARK, 4));
    hv.writeGuest(PARK * 4096n + 10n, new Uint8Array([1, 2, 3]));
    host.relocateMemory(PARK, BAR, 4);
    expect(vcpu.ramRead(BAR * 4096n + 10n, 3)).toEqual(new Uint8Array([1, 2, 3])); // RAM, no ioreq
    expect(hv.memType(PARK)).toBe(HvmMemType.MMIO_DM);
    expect(hv.memType(BAR + 3n)).toBe(HvmMemType.RAM_RW);
    expect(hv.readGuest(PARK * 4096n, 2)).toEqual(new Uint8Array([0xff, 0xff]));
    // A guest read of the hole is emulated: nobody claims it, so it floats high.
    expect(vcpu.access({ space: 'mmio', addr: PARK * 4096n, size: 4, dir: 'read' })).toBe(0xffff_ffffn);
    expect(codeOf(() => vcpu.ramRead(PARK * 4096n, 1))).toBe('EFAULT'); // no longer memory
    expect(host.domainPages().totPages).toBe(260);
  });

  it('guest RAM moves too, and its old frame is a hole', () => {
    const { hv, host, vcpu } = domain({ maxPages: 1000 });
    hv.ram[3 * PAGE] = 0x42;
    host.relocateMemory(3n, PARK, 1);
    expect(vcpu.ramRead(PARK * 4096n, 1)[0]).toBe(0x42);
    expect(hv.memType(3)).toBe(HvmMemType.MMIO_DM);
    expect(vcpu.access({ space: 'mmio', addr: 3n * 4096n, size: 1, dir: 'read' })).toBe(0xffn);
  });

  it('EINVAL at the first source frame without a page, the earlier ones moved', () => {
    const { hv, host } = domain({ maxPages: 1000 });
    host.populatePhysmap(range(PARK, 2));
    expect(codeOf(() => host.relocateMemory(PARK, BAR, 3))).toBe('EINVAL');
    expect([hv.memType(BAR), hv.memType(BAR + 1n), hv.memType(BAR + 2n)]).toEqual([HvmMemType.RAM_RW, HvmMemType.RAM_RW, HvmMemType.MMIO_DM]);
    expect(codeOf(() => host.relocateMemory(BAR, 1n << 40n, 1))).toBe('EINVAL'); // beyond the p2m
    expect(hv.memType(BAR)).toBe(HvmMemType.RAM_RW);
  });

  it('a page already at the destination is freed, without an error (Xen frees replaced memory)', () => {
    const { hv, host } = domain({ maxPages: 1000 });
    host.populatePhysmap([PARK]);
    hv.writeGuest(PARK * 4096n, new Uint8Array([9]));
    host.relocateMemory(PARK, 7n, 1); // over guest RAM frame 7
    expect(hv.readGuest(7 * PAGE, 1)[0]).toBe(9);
    expect(host.domainPages().totPages).toBe(256); // one populated, one freed
  });

  it('RAM wins over an ioreq server that claims the range: accesses never trap', () => {
    const { hv, host, vcpu } = domain({ maxPages: 1000 });
    const id = host.createIoreqServer('off');
    host.mapIoRange(id, 'memory', BAR * 4096n, BAR * 4096n + 0xfffn);
    host.populatePhysmap([PARK]);
    host.relocateMemory(PARK, BAR, 1);
    vcpu.ramRead(0, 1); // the vCPU runs: no server is enabled to be sent the INVALIDATE yet
    host.setIoreqServerState(id, true);
    // A trapping access would wait for a server that never answers (2 s timeout): RAM answers at once.
    vcpu.access({ space: 'mmio', addr: BAR * 4096n, size: 4, dir: 'write', data: 0x1234_5678n });
    expect(vcpu.access({ space: 'mmio', addr: BAR * 4096n, size: 4, dir: 'read' })).toBe(0x1234_5678n);
    expect(hv.route('mmio', BAR * 4096n)).toBe(id); // the claim stays; RAM just comes first
  });

  it('a foreign mapping maps the pages: it stays valid and follows them', () => {
    const { host, vcpu } = domain({ maxPages: 1000 });
    host.populatePhysmap(range(PARK, 2));
    const m = host.mapForeign(range(PARK, 2), true);
    host.relocateMemory(PARK, BAR, 2);
    m.bytes[PAGE + 5] = 0x5a; // the device model writes through its mapping
    expect(vcpu.ramRead(BAR * 4096n + 4101n, 1)[0]).toBe(0x5a);
    vcpu.ramWrite(BAR * 4096n, new Uint8Array([0x11]));
    expect(m.bytes[0]).toBe(0x11);
    expect(codeOf(() => host.mapForeign([PARK], false))).toBe('EFAULT'); // no page there any more
    m.release();
  });

  it('sends IOREQ_TYPE_INVALIDATE (size 4, data all-ones) to each enabled server before the next guest access', async () => {
    const hv = new SimHypervisor({ ramBytes: MiB, maxPages: 1000 });
    const host = new SimXenHost(hv);
    open.push(hv, host);
    const server = new HandServer(host, 'off');
    open.push(server);
    const vcpu = await SimVcpuThread.start(hv.vcpuDescriptor(0));
    threads.push(vcpu);
    host.populatePhysmap(range(PARK, 2));
    host.relocateMemory(PARK, BAR, 2);
    const access = vcpu.ramRead(BAR * 4096n, 1); // RAM, but the invalidation comes first
    const slot = server.take(0);
    expect(slot).toMatchObject({ type: 8, size: 4, data: 0xffff_ffff_ffff_ffffn, dir: 'write' });
    server.complete(0);
    await access;
    expect(readSlot(server.pages.sync, 0).state).toBe(STATE_NONE);
    await vcpu.ramRead(BAR * 4096n, 1); // once only
    expect(waitReadable(server.binding.guestToServer[0]!, 0)).toBe(false);
  });
});

describe('pin_memory_cacheattr', () => {
  it("follows hvm_set_mem_pinned_cacheattr: validation, the same range's type changes, overlaps, the limit, DELETE", () => {
    const { hv, host } = domain();
    host.pinMemoryCacheattr(BAR, BAR + 0xfffn, 'wc');
    expect(hv.pinnedCacheattrs).toEqual([{ start: BAR, end: BAR + 0xfffn, type: 'wc' }]);
    host.pinMemoryCacheattr(BAR, BAR + 0xfffn, 'uc'); // the same bounds: a new type
    expect(hv.pinnedCacheattrs).toEqual([{ start: BAR, end: BAR + 0xfffn, type: 'uc' }]);
    expect(codeOf(() => host.pinMemoryCacheattr(BAR + 0x800n, BAR + 0x1800n, 'wc'))).toBe('EBUSY');
    expect(codeOf(() => host.pinMemoryCacheattr(2n, 1n, 'wc'))).toBe('EINVAL');
    expect(codeOf(() => hv.pinMemoryCacheattr(1n, 1n << 48n, 'wc'))).toBe('EINVAL'); // gfn bits >= paddr_bits
    expect(codeOf(() => hv.pinMemoryCacheattr(1n, 2n, 'wx' as 'wc'))).toBe('EINVAL');
    expect(codeOf(() => host.pinMemoryCacheattr(BAR, BAR + 1n, 'delete'))).toBe('ENOENT'); // bounds must match
    host.pinMemoryCacheattr(BAR, BAR + 0xfffn, 'delete');
    expect(hv.pinnedCacheattrs).toEqual([]);
    for (let i = 0n; i < 64n; i++) host.pinMemoryCacheattr(i * 16n, i * 16n + 15n, 'wb');
    expect(codeOf(() => host.pinMemoryCacheattr(0x10000n, 0x10000n, 'wb'))).toBe('ENOSPC');
  });
});

describe('track_dirty_vram over moving pages', () => {
  it('reports guest writes, not writes through a foreign mapping; pages placed in the range since count as dirty once', () => {
    const { host, vcpu } = domain({ maxPages: 1000 });
    host.populatePhysmap(range(PARK, 8));
    const m = host.mapForeign(range(PARK, 8), true);
    host.relocateMemory(PARK, BAR, 4); // half of it placed before tracking starts
    const bits = new Uint8Array(1);
    host.trackDirtyVram(BAR, 8, bits);
    expect(bits[0]).toBe(0xff);
    host.trackDirtyVram(BAR, 8, bits);
    expect(bits[0]).toBe(0);
    m.bytes.fill(0x33, 0, 4 * PAGE); // the device model drawing: not the guest
    vcpu.ramWrite(BAR * 4096n + 2n * 4096n + 100n, new Uint8Array([1]));
    host.trackDirtyVram(BAR, 8, bits);
    expect(bits[0]).toBe(0b0000_0100);
    host.relocateMemory(PARK + 4n, BAR + 4n, 4); // new ram_rw entries in the range
    host.trackDirtyVram(BAR, 8, bits);
    expect(bits[0]).toBe(0b1111_0000);
    host.trackDirtyVram(BAR, 8, bits);
    expect(bits[0]).toBe(0);
    m.release();
  });

  it('a frame write-protected for logging cannot become ioreq_server (p2m_ram_logdirty); once written it can', () => {
    const { host, vcpu } = domain();
    const id = host.createIoreqServer('off');
    host.mapMemTypeToIoreqServer(id, HvmMemType.IOREQ_SERVER, IoreqMemAccess.WRITE);
    host.trackDirtyVram(0x10n, 4, new Uint8Array(1));
    expect(codeOf(() => host.setMemType(HvmMemType.IOREQ_SERVER, 0x11n, 1))).toBe('EINVAL');
    vcpu.ramWrite(0x11 * PAGE, new Uint8Array([1]));
    host.setMemType(HvmMemType.IOREQ_SERVER, 0x11n, 1);
    host.setMemType(HvmMemType.RAM_RW, 0x11n, 1);
  });
});

describe('restrict', () => {
  it('the privileged operations fail with EPERM afterwards; DMOPs and mappings go on', () => {
    const { host } = domain({ maxPages: 1000 });
    expect(host.restricted).toBe(false);
    host.populatePhysmap([PARK]);
    host.restrict();
    host.restrict();
    expect(host.restricted).toBe(true);
    for (const call of [() => host.domainPages(), () => host.setMaxPages(1), () => host.populatePhysmap([PARK + 1n])]) expect(codeOf(call)).toBe('EPERM');
    host.relocateMemory(PARK, BAR, 1);
    host.pinMemoryCacheattr(BAR, BAR, 'wc');
    host.mapForeign([BAR], true).release();
  });
});
