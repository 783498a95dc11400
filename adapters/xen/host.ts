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

/** Hypervisor services for one guest domain. Errors are MdevErrors with Xen's errno. */
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
  /** Restricts the privcmd and evtchn handles to this domain (irreversible); a no-op in the simulator. */
  restrict(): void;
  /** Releases the host's handles. */
  close(): void;
}
