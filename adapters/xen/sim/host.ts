/**
 * The {@link XenHost} of the simulator: what an IOREQ server uses in place of /dev/xen/privcmd and
 * /dev/xen/evtchn when the "hypervisor" is a {@link SimHypervisor} in the same process. Every
 * device-model operation goes to the hypervisor unchanged (same arguments, same errors); the
 * ioreq pages and guest frames are mapped from the hypervisor's memfds, as XENMEM_acquire_resource
 * and IOCTL_PRIVCMD_MMAPBATCH_V2 map Xen's pages; event channels are bound as eventfds
 * (`mode: 'eventfd'`).
 *
 * The host behaves like an open pair of privcmd/evtchn handles: {@link SimXenHost.close} releases
 * what the host holds (its mappings and bound eventfds) but not the ioreq servers it created, which
 * belong to the domain until destroyed (as with Xen, where closing the handles leaves the servers
 * in place). After close every call fails with EBADF. After {@link SimXenHost.restrict} the
 * privileged operations (raw hypercalls on real Xen) fail with EPERM, as privcmd refuses them.
 * @module
 */
import { MdevError, describe } from '../../../src/errors.js';
import { closeFd, dupFd } from '../../../src/native/fd.js';
import { mmapFd, munmap } from '../../../src/native/mmap.js';
import type { BufioreqModeName, DomainPages, EventBinding, ForeignMapping, IoRangeKind, IoreqPages, MemCacheType, PfnExtent, XenHost } from '../host.js';
import { XEN_PAGE_SIZE } from '../ioreq-abi.js';
import type { SimHypervisor } from './hypervisor.js';
import { MAX_SIM_VCPUS } from './layout.js';

/** What the host remembers of a binding it made. */
interface BoundChannels {
  readonly ports: readonly { port: number; serial: number }[];
  readonly fds: readonly number[];
}

/** A {@link XenHost} over a {@link SimHypervisor} in this process. */
export class SimXenHost implements XenHost {
  /** Always 'sim'. */
  readonly kind = 'sim' as const;
  /** The simulated guest's domain id. */
  readonly domid: number;

  private readonly mappings = new Set<ArrayBuffer>();
  private readonly bindings = new Map<EventBinding, BoundChannels>();
  private closed = false;
  private restrictedHandles = false;

  /**
   * Opens a host on a simulated domain.
   * @param hypervisor the simulated domain this host drives (not owned: closing the host leaves it running)
   */
  constructor(readonly hypervisor: SimHypervisor) {
    this.domid = hypervisor.domid;
  }

  nrVcpus(): number {
    this.open();
    return this.hypervisor.nrVcpus;
  }

  createIoreqServer(bufioreq: BufioreqModeName): number {
    this.open();
    return this.hypervisor.createIoreqServer(bufioreq);
  }

  getIoreqServerInfo(id: number): { bufioreqPort: number | null } {
    this.open();
    return this.hypervisor.getIoreqServerInfo(id);
  }

  /**
   * Maps the server's ioreq page (`sync`, the whole 4 KiB frame: slot n at n * 32) and its buffered
   * page (or null), as XENMEM_acquire_resource does.
   * @param nrVcpus vCPUs the caller will serve; one ioreq frame holds 128, and Xen hands out no
   *   second frame (EINVAL beyond 128)
   * @throws ENOENT for an unknown server id; EINVAL for nrVcpus outside [1, 128]
   */
  mapIoreqPages(id: number, nrVcpus: number): IoreqPages {
    this.open();
    if (!Number.isInteger(nrVcpus) || nrVcpus < 1 || nrVcpus > MAX_SIM_VCPUS) {
      throw new MdevError('EINVAL', `one ioreq frame holds 1 to ${MAX_SIM_VCPUS} vCPUs, got ${describe(nrVcpus)}`, 'nrVcpus');
    }
    const { ioreqFd, bufioreqFd } = this.hypervisor.ioreqServerResources(id);
    const syncAb = this.map(ioreqFd, XEN_PAGE_SIZE, 0, true);
    let bufAb: ArrayBuffer | null = null;
    try {
      if (bufioreqFd !== null) bufAb = this.map(bufioreqFd, XEN_PAGE_SIZE, 0, true);
    } catch (e) {
      this.unmap(syncAb);
      throw e;
    }
    let released = false;
    return {
      sync: new Uint8Array(syncAb),
      buffered: bufAb === null ? null : new Uint8Array(bufAb),
      release: () => {
        if (released) return;
        released = true;
        this.unmap(syncAb);
        if (bufAb !== null) this.unmap(bufAb);
      },
    };
  }

  mapIoRange(id: number, kind: IoRangeKind, start: bigint, end: bigint): void {
    this.open();
    this.hypervisor.mapIoRange(id, kind, start, end);
  }

  unmapIoRange(id: number, kind: IoRangeKind, start: bigint, end: bigint): void {
    this.open();
    this.hypervisor.unmapIoRange(id, kind, start, end);
  }

  setIoreqServerState(id: number, enabled: boolean): void {
    this.open();
    this.hypervisor.setIoreqServerState(id, enabled);
  }

  destroyIoreqServer(id: number): void {
    this.open();
    this.hypervisor.destroyIoreqServer(id);
  }

  /**
   * Binds the vCPUs' ports (`vp_eport` of each slot, readable once the server is enabled) and the
   * buffered port. Returns duplicates of the hypervisor's eventfds, closed by {@link unbindEvents}.
   * @throws EINVAL when a port is not an unbound ioreq event channel of the domain (or a buffered
   *   port is passed as a vCPU port); nothing stays bound then
   */
  bindEvents(vcpuRemotePorts: readonly number[], bufRemotePort: number | null): EventBinding {
    this.open();
    if (!Array.isArray(vcpuRemotePorts)) throw new MdevError('EINVAL', `must be an array of ports, got ${describe(vcpuRemotePorts)}`, 'vcpuRemotePorts');
    const ports: { port: number; serial: number }[] = [];
    const fds: number[] = [];
    const guestToServer: number[] = [];
    const serverToGuest: number[] = [];
    let bufGuestToServer: number | null = null;
    try {
      vcpuRemotePorts.forEach((port, i) => {
        const channel = this.hypervisor.bindEventChannel(port);
        ports.push({ port, serial: channel.serial });
        if (channel.serverToGuest === null) throw new MdevError('EINVAL', `port ${port} is a buffered-ioreq channel, not a vCPU's`, `vcpuRemotePorts[${i}]`);
        const g2s = dupFd(channel.guestToServer);
        fds.push(g2s);
        const s2g = dupFd(channel.serverToGuest);
        fds.push(s2g);
        guestToServer.push(g2s);
        serverToGuest.push(s2g);
      });
      if (bufRemotePort !== null) {
        const channel = this.hypervisor.bindEventChannel(bufRemotePort);
        ports.push({ port: bufRemotePort, serial: channel.serial });
        if (channel.serverToGuest !== null) throw new MdevError('EINVAL', `port ${bufRemotePort} is a vCPU's channel, not a buffered-ioreq one`, 'bufRemotePort');
        bufGuestToServer = dupFd(channel.guestToServer);
        fds.push(bufGuestToServer);
      }
    } catch (e) {
      for (const { port, serial } of ports) this.hypervisor.unbindEventChannel(port, serial);
      for (const fd of fds) closeFd(fd);
      throw e;
    }
    const binding: EventBinding = { mode: 'eventfd', guestToServer, serverToGuest, bufGuestToServer };
    this.bindings.set(binding, { ports, fds });
    return binding;
  }

  /**
   * Closes the binding's eventfds and makes its ports bindable again.
   * @throws EINVAL for a binding this host did not make or already unbound
   */
  unbindEvents(binding: EventBinding): void {
    this.open();
    const bound = this.bindings.get(binding);
    if (bound === undefined) throw new MdevError('EINVAL', 'not a binding made by this host (or already unbound)', 'binding');
    this.release(binding, bound);
  }

  /**
   * Maps the pages behind guest frames, in the order given, straight from the hypervisor's memfds
   * (writes are the guest's memory; nothing is copied). Like a privcmd foreign mapping, it maps
   * the pages themselves: it stays valid, with the same pages, when relocate_memory moves them.
   * @throws EINVAL for an empty list; EFAULT when a frame has no page (beyond guest RAM and never
   *   populated, or relocated away); EOPNOTSUPP when the pages are not consecutive in one pool
   *   (guest RAM in place, or one populate_physmap run): one `Uint8Array` over scattered pages
   *   needs a mapping placed inside another (MAP_FIXED), which the native core does not offer yet
   */
  mapForeign(gfns: readonly bigint[], writable: boolean): ForeignMapping {
    this.open();
    if (!Array.isArray(gfns) || gfns.length === 0) throw new MdevError('EINVAL', `must be a non-empty array of frames, got ${describe(gfns)}`, 'gfns');
    if (typeof writable !== 'boolean') throw new MdevError('EINVAL', `must be a boolean, got ${describe(writable)}`, 'writable');
    gfns.forEach((gfn, i) => {
      if (typeof gfn !== 'bigint' || gfn < 0n) throw new MdevError('EINVAL', `must be a frame number (bigint), got ${describe(gfn)}`, `gfns[${i}]`);
    });
    const pages = this.hypervisor.pagesOf(gfns);
    pages.forEach((page, i) => {
      if (page < 0) throw new MdevError('EFAULT', `frame 0x${gfns[i]!.toString(16)} has no page (guest RAM has ${this.hypervisor.ramPages} frames)`, `gfns[${i}]`);
    });
    const ramPages = this.hypervisor.ramPages;
    for (let i = 1; i < pages.length; i++) {
      if (pages[i] !== pages[0]! + i || (pages[i]! < ramPages) !== (pages[0]! < ramPages)) {
        throw new MdevError('EOPNOTSUPP', 'the simulator maps one run of consecutive pages per mapping; split the request', `gfns[${i}]`);
      }
    }
    const file = this.hypervisor.pageFile(pages[0]!);
    const ab = this.map(file.fd, gfns.length * XEN_PAGE_SIZE, file.offset, writable);
    let released = false;
    return {
      bytes: new Uint8Array(ab),
      release: () => {
        if (released) return;
        released = true;
        this.unmap(ab);
      },
    };
  }

  trackDirtyVram(firstPfn: bigint, nr: number, bitmap: Uint8Array): void {
    this.open();
    this.hypervisor.trackDirtyVram(firstPfn, nr, bitmap);
  }

  modifiedMemory(extents: readonly PfnExtent[]): void {
    this.open();
    this.hypervisor.modifiedMemory(extents);
  }

  setMemType(memType: number, firstPfn: bigint, nr: number): void {
    this.open();
    this.hypervisor.setMemType(memType, firstPfn, nr);
  }

  mapMemTypeToIoreqServer(id: number, memType: number, flags: number): void {
    this.open();
    this.hypervisor.mapMemTypeToIoreqServer(id, memType, flags);
  }

  setPciIntxLevel(segment: number, bus: number, device: number, intx: number, level: boolean): void {
    this.open();
    this.hypervisor.setPciIntxLevel(segment, bus, device, intx, level);
  }

  setIsaIrqLevel(irq: number, level: boolean): void {
    this.open();
    this.hypervisor.setIsaIrqLevel(irq, level);
  }

  injectMsi(address: bigint, data: number): void {
    this.open();
    this.hypervisor.injectMsi(address, data);
  }

  relocateMemory(srcGfn: bigint, dstGfn: bigint, nr: number): void {
    this.open();
    this.hypervisor.relocateMemory(srcGfn, dstGfn, nr);
  }

  pinMemoryCacheattr(startGfn: bigint, endGfn: bigint, type: MemCacheType): void {
    this.open();
    this.hypervisor.pinMemoryCacheattr(startGfn, endGfn, type);
  }

  /** Privileged (EPERM after {@link restrict}): the domain's pages and limit. */
  domainPages(): DomainPages {
    this.privileged('XENMEM_current_reservation');
    return this.hypervisor.domainPages();
  }

  /** Privileged (EPERM after {@link restrict}): XEN_DOMCTL_max_mem. */
  setMaxPages(maxPages: number): void {
    this.privileged('XEN_DOMCTL_max_mem');
    this.hypervisor.setMaxPages(maxPages);
  }

  /** Privileged (EPERM after {@link restrict}): XENMEM_populate_physmap. */
  populatePhysmap(gfns: readonly bigint[]): number {
    this.privileged('XENMEM_populate_physmap');
    if (!Array.isArray(gfns) || gfns.length === 0) throw new MdevError('EINVAL', `must be a non-empty array of gfns, got ${describe(gfns)}`, 'gfns');
    return this.hypervisor.populatePhysmap(gfns);
  }

  /** Whether {@link restrict} was called. */
  get restricted(): boolean {
    return this.restrictedHandles;
  }

  /**
   * Restricts the handles like IOCTL_PRIVCMD_RESTRICT: the privileged operations fail with EPERM
   * from now on; everything else goes on (the simulator serves one domain anyway). Irreversible;
   * calling it again is a no-op. (EBADF after close, like the real handles.)
   */
  restrict(): void {
    this.open();
    this.restrictedHandles = true;
  }

  private privileged(what: string): void {
    this.open();
    if (this.restrictedHandles) {
      throw new MdevError('EPERM', `${what} on domain ${this.domid} is a raw hypercall, which privcmd refuses once restricted (IOCTL_PRIVCMD_RESTRICT): do it before restrict()`);
    }
  }

  /** Unmaps every mapping and closes every eventfd this host handed out. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const [binding, bound] of this.bindings) this.release(binding, bound);
    for (const ab of this.mappings) munmap(ab);
    this.mappings.clear();
  }

  private open(): void {
    if (this.closed) throw new MdevError('EBADF', 'the Xen host has been closed');
  }

  private release(binding: EventBinding, bound: BoundChannels): void {
    this.bindings.delete(binding);
    for (const fd of bound.fds) closeFd(fd);
    // The domain may be gone already; its ports went with it.
    try {
      for (const { port, serial } of bound.ports) this.hypervisor.unbindEventChannel(port, serial);
    } catch (e) {
      if ((e as { code?: string }).code !== 'ESRCH') throw e;
    }
  }

  private map(fd: number, length: number, offset: number, writable: boolean): ArrayBuffer {
    const ab = mmapFd(fd, length, { offset, writable, shared: true });
    this.mappings.add(ab);
    return ab;
  }

  private unmap(ab: ArrayBuffer): void {
    if (this.mappings.delete(ab)) munmap(ab);
  }
}
