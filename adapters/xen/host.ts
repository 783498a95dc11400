/**
 * The hypervisor services an IOREQ server uses, as one interface with two implementations: the real
 * one over Linux's /dev/xen/privcmd and /dev/xen/evtchn, and a simulator of Xen's side for machines
 * without Xen. The adapter code above this interface is the same for both.
 * @module
 */

/** Buffered ioreq ring mode requested at server creation. */
export type BufioreqModeName = 'off' | 'legacy' | 'atomic';

/** Range types for map/unmap_io_range. */
export type IoRangeKind = 'port' | 'memory' | 'pci';

/** The ioreq pages of one server, mapped into this process. */
export interface IoreqPages {
  /** The synchronous ioreq structures, one 32-byte `struct ioreq` per vCPU. */
  readonly sync: Uint8Array;
  /** The buffered ioreq page, when the server has a ring. */
  readonly buffered: Uint8Array | null;
  /** Unmaps them. */
  release(): void;
}

/** How the ioreq engine waits for and sends event-channel notifications. */
export type EventBinding =
  | {
      /** Real Xen: one /dev/xen/evtchn fd; reading yields pending local ports (u32 each), writing them back unmasks. */
      readonly mode: 'evtchn';
      readonly fd: number;
      /** Local port bound to each vCPU's `vp_eport`, by vCPU index. */
      readonly vcpuPorts: readonly number[];
      /** Local port of the buffered-ioreq channel, or null. */
      readonly bufPort: number | null;
    }
  | {
      /** Simulator: eventfds stand in for event channels. */
      readonly mode: 'eventfd';
      /** Signalled by a vCPU when its ioreq is READY, by vCPU index. */
      readonly guestToServer: readonly number[];
      /** Signalled by the server when a vCPU's response is ready, by vCPU index. */
      readonly serverToGuest: readonly number[];
      /** Signalled when buffered ioreqs were queued, or null. */
      readonly bufGuestToServer: number | null;
    };

/** A mapping of guest frames into this process. */
export interface ForeignMapping {
  /** The bytes, frame after frame, in the order requested. */
  readonly bytes: Uint8Array;
  /** Unmaps it. */
  release(): void;
}

/** An extent of guest frames. */
export interface PfnExtent {
  /** First guest frame number. */
  readonly firstPfn: bigint;
  /** Number of frames. */
  readonly nr: number;
}

/** The domain's memory accounting, in 4 KiB pages. */
export interface DomainPages {
  /** Pages the domain holds (`tot_pages`, XENMEM_current_reservation). */
  readonly totPages: number;
  /** Its page limit (`max_pages`, XENMEM_maximum_reservation): allocations beyond it fail. */
  readonly maxPages: number;
}

/**
 * Caching types for {@link XenHost.pinMemoryCacheattr} (`XEN_DMOP_MEM_CACHEATTR_*`: uncached,
 * write-combining, write-through, write-protect, write-back, UC-minus), and `'delete'`, which
 * removes a pinned range.
 */
export type MemCacheType = 'uc' | 'wc' | 'wt' | 'wp' | 'wb' | 'ucm' | 'delete';

/**
 * Hypervisor services for one guest domain. Errors are MdevErrors with Xen's errno.
 *
 * Three operations are *privileged*: {@link domainPages}, {@link setMaxPages} and
 * {@link populatePhysmap} are raw hypercalls (IOCTL_PRIVCMD_HYPERCALL), which a privcmd handle
 * refuses once {@link restrict} has been called. They fail with EPERM then, naming the operation;
 * a device model makes them first, then restricts. Everything else works on restricted handles.
 */
export interface XenHost {
  /** The guest's domain id. */
  readonly domid: number;
  /** 'xen' for the real hypervisor, 'sim' for the simulator. */
  readonly kind: 'xen' | 'sim';
  /** Number of vCPUs of the guest (DMOP nr_vcpus). */
  nrVcpus(): number;
  /** DMOP create_ioreq_server; returns the server id. */
  createIoreqServer(bufioreq: BufioreqModeName): number;
  /** DMOP get_ioreq_server_info (with XEN_DMOP_no_gfns): the buffered channel's remote port. */
  getIoreqServerInfo(id: number): { bufioreqPort: number | null };
  /** Maps the server's ioreq pages (XENMEM_acquire_resource frames). */
  mapIoreqPages(id: number, nrVcpus: number): IoreqPages;
  /** DMOP map_io_range_to_ioreq_server (`end` inclusive). */
  mapIoRange(id: number, kind: IoRangeKind, start: bigint, end: bigint): void;
  /** DMOP unmap_io_range_from_ioreq_server. */
  unmapIoRange(id: number, kind: IoRangeKind, start: bigint, end: bigint): void;
  /** DMOP set_ioreq_server_state. */
  setIoreqServerState(id: number, enabled: boolean): void;
  /** DMOP destroy_ioreq_server. */
  destroyIoreqServer(id: number): void;
  /** Binds this process to the vCPUs' ports (and the buffered port) of a server. */
  bindEvents(vcpuRemotePorts: readonly number[], bufRemotePort: number | null): EventBinding;
  /** Unbinds what {@link bindEvents} bound. */
  unbindEvents(binding: EventBinding): void;
  /** Maps guest frames (MMAPBATCH_V2); EFAULT if any frame cannot be mapped. */
  mapForeign(gfns: readonly bigint[], writable: boolean): ForeignMapping;
  /** DMOP track_dirty_vram: fills `bitmap` (LSB-first, one bit per frame) and clears Xen's log. */
  trackDirtyVram(firstPfn: bigint, nr: number, bitmap: Uint8Array): void;
  /** DMOP modified_memory: tells Xen the device wrote these frames (log-dirty for migration). */
  modifiedMemory(extents: readonly PfnExtent[]): void;
  /** DMOP set_mem_type. */
  setMemType(memType: number, firstPfn: bigint, nr: number): void;
  /** DMOP map_mem_type_to_ioreq_server (`flags` 0 releases the claim). */
  mapMemTypeToIoreqServer(id: number, memType: number, flags: number): void;
  /** DMOP set_pci_intx_level. */
  setPciIntxLevel(segment: number, bus: number, device: number, intx: number, level: boolean): void;
  /** DMOP set_isa_irq_level. */
  setIsaIrqLevel(irq: number, level: boolean): void;
  /** DMOP inject_msi. */
  injectMsi(address: bigint, data: number): void;
  /** Privileged: XENMEM_current_reservation and XENMEM_maximum_reservation. */
  domainPages(): DomainPages;
  /**
   * Privileged: XEN_DOMCTL_max_mem, the domain's page limit becomes `maxPages` (Xen keeps at most
   * 2^32 - 1, and accepts a limit below the pages the domain holds: new allocations then fail).
   * A guest config's `maxmem=` does not raise this limit; `xl mem-max` does the same as this.
   */
  setMaxPages(maxPages: number): void;
  /**
   * Privileged: XENMEM_populate_physmap, one new page of the domain at each of `gfns`, in order.
   * Returns how many were populated: fewer than asked when the domain reaches its page limit (Xen
   * logs "Over-allocation") or Xen has no free memory; Xen reports no errno for that. A gfn that
   * already has a page gets a new one (the old page stays the domain's, unmapped, until it dies).
   */
  populatePhysmap(gfns: readonly bigint[]): number;
  /**
   * DMOP relocate_memory: moves the pages at `[srcGfn, srcGfn + nr)` to `[dstGfn, dstGfn + nr)`, one
   * at a time from the lowest; a page's contents and foreign mappings of it go with it, and its old
   * gfn becomes empty. A page already at a destination gfn is freed. Fails (EINVAL) at the first
   * source gfn without a page, leaving earlier pages moved.
   */
  relocateMemory(srcGfn: bigint, dstGfn: bigint, nr: number): void;
  /**
   * DMOP pin_memory_cacheattr: the guest's accesses to the frames `[startGfn, endGfn]` (inclusive)
   * use caching `type`; `'delete'` removes the range pinned with exactly these bounds.
   */
  pinMemoryCacheattr(startGfn: bigint, endGfn: bigint, type: MemCacheType): void;
  /** Whether {@link restrict} has been called (the privileged operations then fail with EPERM). */
  readonly restricted: boolean;
  /**
   * Restricts the privcmd and evtchn handles to this domain (irreversible): privcmd then refuses
   * raw hypercalls, so the privileged operations fail with EPERM. The simulator refuses them too.
   */
  restrict(): void;
  /** Releases the host's handles. */
  close(): void;
}
