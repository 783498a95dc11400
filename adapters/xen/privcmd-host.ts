/**
 * The real {@link XenHost}: Linux's /dev/xen/privcmd (DMOPs through IOCTL_PRIVCMD_DM_OP, the ioreq
 * pages through IOCTL_PRIVCMD_MMAP_RESOURCE, guest RAM through IOCTL_PRIVCMD_MMAPBATCH_V2, the
 * domain's page limit and new pages through IOCTL_PRIVCMD_HYPERCALL) and /dev/xen/evtchn
 * (interdomain event channels), as a dom0 device model uses them.
 *
 * Errors from the kernel or from Xen are {@link XenSyscallError}s: `code`/`errno` are the ioctl's
 * errno (for DMOPs and resource mappings, Xen's own error, which privcmd passes through) and the
 * message names the operation and the domain. Argument errors are MdevErrors naming the argument.
 * @module
 */
import { constants as fsConstants, openSync } from 'node:fs';
import { getSystemErrorMap } from 'node:util';
import { MdevError, checkBigInt, checkInt, describe, isErrno } from '../../src/errors.js';
import { closeFd } from '../../src/native/fd.js';
import { addressOf, ioctl } from '../../src/native/ioctl.js';
import { PAGE_SIZE, mappingAddress, mmapFd, munmap } from '../../src/native/mmap.js';
import { optionsRecord } from '../../src/native/options.js';
import {
  DmOp,
  EvtchnIoctl,
  Hypercall,
  MAX_DOMAIN_PAGES,
  MemCacheAttr,
  XEN_DOMCTL_INTERFACE_VERSION_4_17,
  XenMemOp,
  GetIoreqServerInfoFlag,
  PrivcmdDmOpLimits,
  ModifiedMemoryExtent,
  PrivcmdIoctl,
  checkDomid,
  checkIoservid,
  decodeCreateIoreqServer,
  decodeGetIoreqServerInfo,
  decodeNrVcpus,
  dmOpName,
  encodeCreateIoreqServer,
  encodeDestroyIoreqServer,
  encodeDomctlMaxMem,
  encodeDomidArg,
  encodeMemoryReservation,
  encodePinMemoryCacheattr,
  encodeRelocateMemory,
  encodeGetIoreqServerInfo,
  encodeInjectMsi,
  encodeIoRange,
  encodeMapMemTypeToIoreqServer,
  encodeModifiedMemory,
  encodeModifiedMemoryExtents,
  encodeNrVcpus,
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
  type HypercallArg,
  privcmdMmapResourceArg,
  privcmdRestrictArg,
} from './abi.js';
import type { BufioreqModeName, DomainPages, EventBinding, ForeignMapping, IoRangeKind, IoreqPages, MemCacheType, PfnExtent, XenHost } from './host.js';
import { BufioreqMode, IoRangeType, Ioreq, IoreqResource, XEN_PAGE_SIZE } from './ioreq-abi.js';

/** Where Linux puts the privcmd device. */
export const DEFAULT_PRIVCMD_PATH = '/dev/xen/privcmd';
/** Where Linux puts the event-channel device. */
export const DEFAULT_EVTCHN_PATH = '/dev/xen/evtchn';

/** Most guest frames one {@link PrivcmdXenHost.mapForeign} call maps (4 GiB, the largest mapping mmapFd makes). */
export const MAX_FOREIGN_FRAMES = (4 * 2 ** 30) / XEN_PAGE_SIZE;

/**
 * Most vCPUs {@link PrivcmdXenHost.mapIoreqPages} accepts: 32 pages of ioreq slots, far above what
 * Xen gives an HVM guest (128 on x86, one page).
 */
export const MAX_IOREQ_VCPUS = 4096;

/** A failed system call on a Xen device, carrying its errno (for DMOPs, Xen's). */
export class XenSyscallError extends MdevError {
  override name = 'XenSyscallError';
  /** The system call that failed: `open` or `ioctl`. */
  readonly syscall: string;

  /**
   * Creates the error; `errno` is looked up from `code`.
   * @param code the errno name, e.g. `ENOENT`
   * @param message what failed, naming the operation
   * @param syscall the system call
   * @param cause the underlying error, if any
   */
  constructor(code: string, message: string, syscall: string, cause?: unknown) {
    super(code, message);
    this.syscall = syscall;
    if (cause !== undefined) this.cause = cause;
  }
}

/** strerror-like text; the native core reports positive errnos, Node's fs negative ones (libuv). */
function systemMessage(errno: number | undefined): string {
  if (errno === undefined) return 'failed';
  return getSystemErrorMap().get(-Math.abs(errno))?.[1] ?? `errno ${Math.abs(errno)}`;
}

/** Rethrows an errno error from a system call as a XenSyscallError naming `what`; other errors unchanged. */
function rethrow(e: unknown, what: string): never {
  if (isErrno(e) && typeof e.syscall === 'string') {
    throw new XenSyscallError(e.code, `${what}: ${systemMessage(e.errno)}`, e.syscall, e);
  }
  throw e;
}

function openDevice(path: unknown, field: string, driver: string, nonBlocking: boolean): number {
  if (typeof path !== 'string' || path.length === 0) throw new MdevError('EINVAL', `must be a path, got ${describe(path)}`, field);
  try {
    // Node (libuv) opens every file with O_CLOEXEC on Linux; fs.constants has no name for it.
    return openSync(path, fsConstants.O_RDWR | (nonBlocking ? fsConstants.O_NONBLOCK : 0));
  } catch (e) {
    if (!isErrno(e)) throw e;
    const reason =
      e.code === 'ENOENT'
        ? `no ${path}: not running in a Xen dom0 (or the ${driver} driver is not loaded)`
        : e.code === 'EACCES' || e.code === 'EPERM'
          ? `${path}: permission denied (a device model needs root in dom0)`
          : e.code === 'ENXIO' || e.code === 'ENODEV'
            ? `${path}: no ${driver} driver behind the device node (not a Xen dom0?)`
            : `cannot open ${path}: ${systemMessage(e.errno)}`;
    throw new XenSyscallError(e.code, reason, 'open', e);
  }
}

const BUFIOREQ_MODES: Readonly<Record<BufioreqModeName, number>> = { off: BufioreqMode.OFF, legacy: BufioreqMode.LEGACY, atomic: BufioreqMode.ATOMIC };
/** {@link MemCacheType} names → `XEN_DMOP_MEM_CACHEATTR_*`. */
export const MEM_CACHE_TYPES: Readonly<Record<MemCacheType, number>> = {
  uc: MemCacheAttr.UC,
  wc: MemCacheAttr.WC,
  wt: MemCacheAttr.WT,
  wp: MemCacheAttr.WP,
  wb: MemCacheAttr.WB,
  ucm: MemCacheAttr.UCM,
  delete: MemCacheAttr.DELETE,
};

/** Gfns per XENMEM_populate_physmap hypercall (a 32 KiB extent list; Xen preempts long ones itself). */
export const POPULATE_CHUNK = 4096;
const IO_RANGE_TYPES: Readonly<Record<IoRangeKind, number>> = { port: IoRangeType.PORT, memory: IoRangeType.MEMORY, pci: IoRangeType.PCI };

// modified_memory passes its extents in one DMOP buffer, which privcmd limits to a page by default.
const EXTENTS_PER_DMOP = PrivcmdDmOpLimits.maxBufSize / ModifiedMemoryExtent.sizeof;

function lookup<T>(field: string, table: Readonly<Record<string, T>>, key: unknown): T {
  if (typeof key !== 'string' || !Object.hasOwn(table, key)) {
    throw new MdevError('EINVAL', `must be one of ${Object.keys(table).map((k) => `'${k}'`).join(', ')}, got ${describe(key)}`, field);
  }
  return table[key]!;
}

function checkBoolean(field: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw new MdevError('EINVAL', `must be a boolean, got ${describe(value)}`, field);
  return value;
}

function checkPort(field: string, port: unknown): number {
  return checkInt(field, port, 1, 0xffff_ffff);
}

/**
 * Sends an event on a bound local port of an evtchn fd (IOCTL_EVTCHN_NOTIFY), e.g. to tell a vCPU
 * that its ioreq has been completed.
 * @throws XenSyscallError (ENOTCONN: the port is not bound on this fd; ENOTTY: not an evtchn fd)
 */
export function evtchnNotify(fd: number, port: number): void {
  const arg = evtchnPortArg(port);
  try {
    ioctl(fd, EvtchnIoctl.NOTIFY, arg);
  } catch (e) {
    rethrow(e, `IOCTL_EVTCHN_NOTIFY of local port ${port}`);
  }
}

/**
 * Reads MMAPBATCH_V2's per-frame error array (0, or a negative errno for a frame that could not be
 * mapped; -ENOENT: paged out): null when every frame was mapped, else an EFAULT naming the first
 * failed gfn, its errno and how many other frames failed.
 */
export function mmapBatchFailure(domid: number, gfns: BigUint64Array, errs: Int32Array): MdevError | null {
  const bad = errs.findIndex((err) => err !== 0);
  if (bad < 0) return null;
  const count = errs.reduce((n, err) => n + (err !== 0 ? 1 : 0), 0);
  const errno = Math.abs(errs[bad]!);
  const name = getSystemErrorMap().get(-errno)?.[0] ?? `errno ${errno}`;
  const more = count > 1 ? ` (and ${count - 1} more frames)` : '';
  return new MdevError('EFAULT', `guest frame 0x${gfns[bad]!.toString(16)} of domain ${domid} cannot be mapped: ${name}${more}`, `gfns[${bad}]`);
}

/** Options of {@link PrivcmdXenHost}. */
export interface PrivcmdXenHostOptions {
  /** The guest's domain id, `0 <= domid < 0x7ff0` (DOMID_FIRST_RESERVED). */
  domid: number;
  /** The privcmd device. Default {@link DEFAULT_PRIVCMD_PATH}. */
  privcmdPath?: string;
  /** The event-channel device. Default {@link DEFAULT_EVTCHN_PATH}. */
  evtchnPath?: string;
  /**
   * `XEN_DOMCTL_INTERFACE_VERSION` of the running Xen, for {@link PrivcmdXenHost.setMaxPages}
   * (Xen refuses other versions with EACCES). Default 0x15, Xen 4.17's.
   */
  domctlInterfaceVersion?: number;
}

/**
 * {@link XenHost} over Linux's privcmd and evtchn devices, for one guest domain. Needs a 64-bit
 * dom0 (x86_64 or arm64) with 4 KiB pages.
 *
 * The host holds one privcmd fd and one evtchn fd (both close-on-exec; the evtchn fd is
 * non-blocking, since the ioreq engine reads it when the event loop reports it readable). Every
 * {@link bindEvents} binding shares the evtchn fd, so {@link restrict} covers them all; the fds are
 * the host's and {@link close} closes them.
 */
export class PrivcmdXenHost implements XenHost {
  /** The guest's domain id. */
  readonly domid: number;
  /** Always `'xen'`. */
  readonly kind = 'xen' as const;
  #privcmd: number;
  #evtchn: number;
  #restricted = false;
  /** IOCTL_PRIVCMD_RESTRICT succeeded (even if the evtchn restriction then failed). */
  #privcmdRestricted = false;
  readonly #domctlVersion: number;
  readonly #bindings = new Set<EventBinding>();

  /**
   * Opens the devices.
   * @throws MdevError naming `domid`, `privcmdPath` or `evtchnPath` for bad options; ENOTSUP on a
   *   platform whose layouts abi.ts does not describe; XenSyscallError from `open` (ENOENT:
   *   "no /dev/xen/privcmd: not running in a Xen dom0 ...", EACCES, ...)
   */
  constructor(options: PrivcmdXenHostOptions) {
    const {
      domid,
      privcmdPath = DEFAULT_PRIVCMD_PATH,
      evtchnPath = DEFAULT_EVTCHN_PATH,
      domctlInterfaceVersion = XEN_DOMCTL_INTERFACE_VERSION_4_17,
    } = optionsRecord('options', options);
    this.domid = checkDomid('domid', domid);
    this.#domctlVersion = checkInt('domctlInterfaceVersion', domctlInterfaceVersion, 0, 0xffff_ffff);
    if (process.arch !== 'x64' && process.arch !== 'arm64') {
      throw new MdevError('ENOTSUP', `the privcmd ABI of ${process.arch} is not described (x64 and arm64 are)`);
    }
    if (PAGE_SIZE !== XEN_PAGE_SIZE) {
      throw new MdevError('ENOTSUP', `${PAGE_SIZE}-byte pages: privcmd mappings are only implemented for ${XEN_PAGE_SIZE}-byte pages`);
    }
    this.#privcmd = openDevice(privcmdPath, 'privcmdPath', 'xen-privcmd', false);
    try {
      this.#evtchn = openDevice(evtchnPath, 'evtchnPath', 'xen-evtchn', true);
    } catch (e) {
      closeFd(this.#privcmd);
      throw e;
    }
  }

  /** The privcmd fd (close-on-exec), while the host is open. */
  get privcmdFd(): number {
    return this.#live(this.#privcmd);
  }

  /** The evtchn fd (close-on-exec, non-blocking) that every {@link bindEvents} binding uses. */
  get evtchnFd(): number {
    return this.#live(this.#evtchn);
  }

  #live(fd: number): number {
    if (fd < 0) throw new MdevError('EBADF', `the PrivcmdXenHost of domain ${this.domid} is closed`);
    return fd;
  }

  /** Issues one DMOP; `extra` is buffer 1 when the DMOP takes one. Results land in the buffers. */
  #dmOp(op: number, bytes: Uint8Array, extra?: Uint8Array, detail = ''): void {
    const fd = this.#live(this.#privcmd);
    const arg = privcmdDmOpArg(this.domid, extra === undefined ? [bytes] : [bytes, extra]);
    try {
      ioctl(fd, PrivcmdIoctl.DM_OP, arg);
    } catch (e) {
      rethrow(e, `${dmOpName(op)}${detail} on domain ${this.domid} (IOCTL_PRIVCMD_DM_OP)`);
    }
  }

  /** DMOP nr_vcpus (Xen 4.13 and later; EOPNOTSUPP before). */
  nrVcpus(): number {
    const op = encodeNrVcpus();
    this.#dmOp(DmOp.NR_VCPUS, op);
    return decodeNrVcpus(op);
  }

  /** DMOP create_ioreq_server; returns the server id. */
  createIoreqServer(bufioreq: BufioreqModeName): number {
    const op = encodeCreateIoreqServer(lookup('bufioreq', BUFIOREQ_MODES, bufioreq));
    this.#dmOp(DmOp.CREATE_IOREQ_SERVER, op);
    return decodeCreateIoreqServer(op);
  }

  /**
   * DMOP get_ioreq_server_info with XEN_DMOP_no_gfns (so Xen does not take guest frames for the
   * legacy mapping): the buffered channel's remote port, or null when the server has no ring.
   */
  getIoreqServerInfo(id: number): { bufioreqPort: number | null } {
    const op = encodeGetIoreqServerInfo(id, GetIoreqServerInfoFlag.NO_GFNS);
    this.#dmOp(DmOp.GET_IOREQ_SERVER_INFO, op);
    const { bufioreqPort } = decodeGetIoreqServerInfo(op);
    return { bufioreqPort: bufioreqPort === 0 ? null : bufioreqPort };
  }

  /**
   * Maps the server's ioreq pages with XENMEM_acquire_resource (IOCTL_PRIVCMD_MMAP_RESOURCE,
   * resource XENMEM_resource_ioreq_server): frame 0, the buffered ring, when the server has one
   * (asked of Xen with {@link getIoreqServerInfo}), then frames 1.. holding one 32-byte
   * `struct ioreq` per vCPU. One call maps them all into one shared, writable privcmd mapping.
   * @param nrVcpus the guest's vCPU count (see {@link PrivcmdXenHost.nrVcpus}), `1..MAX_IOREQ_VCPUS`
   */
  mapIoreqPages(id: number, nrVcpus: number): IoreqPages {
    checkIoservid('id', id);
    checkInt('nrVcpus', nrVcpus, 1, MAX_IOREQ_VCPUS);
    const fd = this.#live(this.#privcmd);
    const buffered = this.getIoreqServerInfo(id).bufioreqPort !== null;
    const syncPages = Math.ceil((nrVcpus * Ioreq.sizeof) / XEN_PAGE_SIZE);
    const first = buffered ? IoreqResource.FRAME_BUFIOREQ : IoreqResource.frameIoreq(0);
    const num = syncPages + (buffered ? 1 : 0);
    const mapping = mmapFd(fd, num * XEN_PAGE_SIZE);
    try {
      const arg = privcmdMmapResourceArg(this.domid, IoreqResource.TYPE, id, first, num, mappingAddress(mapping));
      ioctl(fd, PrivcmdIoctl.MMAP_RESOURCE, arg);
    } catch (e) {
      munmap(mapping);
      rethrow(e, `XENMEM_acquire_resource of ioreq server ${id} frames ${first}..${first + num - 1} on domain ${this.domid} (IOCTL_PRIVCMD_MMAP_RESOURCE)`);
    }
    const syncOffset = buffered ? XEN_PAGE_SIZE : 0;
    return {
      sync: new Uint8Array(mapping, syncOffset, nrVcpus * Ioreq.sizeof),
      buffered: buffered ? new Uint8Array(mapping, 0, XEN_PAGE_SIZE) : null,
      release: releaseOnce(mapping),
    };
  }

  /** DMOP map_io_range_to_ioreq_server (`end` inclusive; ports 16-bit, PCI ranges are SBDFs). */
  mapIoRange(id: number, kind: IoRangeKind, start: bigint, end: bigint): void {
    this.#dmOp(DmOp.MAP_IO_RANGE_TO_IOREQ_SERVER, encodeIoRange(true, id, lookup('kind', IO_RANGE_TYPES, kind), start, end));
  }

  /** DMOP unmap_io_range_from_ioreq_server. */
  unmapIoRange(id: number, kind: IoRangeKind, start: bigint, end: bigint): void {
    this.#dmOp(DmOp.UNMAP_IO_RANGE_FROM_IOREQ_SERVER, encodeIoRange(false, id, lookup('kind', IO_RANGE_TYPES, kind), start, end));
  }

  /** DMOP set_ioreq_server_state. */
  setIoreqServerState(id: number, enabled: boolean): void {
    this.#dmOp(DmOp.SET_IOREQ_SERVER_STATE, encodeSetIoreqServerState(id, enabled));
  }

  /** DMOP destroy_ioreq_server. */
  destroyIoreqServer(id: number): void {
    this.#dmOp(DmOp.DESTROY_IOREQ_SERVER, encodeDestroyIoreqServer(id));
  }

  /**
   * Binds each vCPU's port (and the buffered port) with IOCTL_EVTCHN_BIND_INTERDOMAIN on the
   * host's evtchn fd. If one bind fails, the ports already bound are unbound before the error is
   * thrown.
   * @param vcpuRemotePorts the guest-side ports, by vCPU index (each slot's `vp_eport`)
   * @param bufRemotePort the buffered channel's port ({@link getIoreqServerInfo}), or null
   */
  bindEvents(vcpuRemotePorts: readonly number[], bufRemotePort: number | null): EventBinding {
    if (!Array.isArray(vcpuRemotePorts) || vcpuRemotePorts.length === 0) {
      throw new MdevError('EINVAL', `must be a non-empty array of ports, got ${describe(vcpuRemotePorts)}`, 'vcpuRemotePorts');
    }
    vcpuRemotePorts.forEach((port, i) => checkPort(`vcpuRemotePorts[${i}]`, port));
    if (bufRemotePort !== null) checkPort('bufRemotePort', bufRemotePort);
    const fd = this.#live(this.#evtchn);
    const bound: number[] = [];
    const bind = (remotePort: number, what: string): number => {
      try {
        const local = ioctl(fd, EvtchnIoctl.BIND_INTERDOMAIN, evtchnBindInterdomainArg(this.domid, remotePort));
        bound.push(local);
        return local;
      } catch (e) {
        for (const port of bound) {
          try {
            ioctl(fd, EvtchnIoctl.UNBIND, evtchnPortArg(port));
          } catch {
            // The bind error below is what the caller needs; the fd's close releases the rest.
          }
        }
        rethrow(e, `IOCTL_EVTCHN_BIND_INTERDOMAIN of ${what} (domain ${this.domid} port ${remotePort})`);
      }
    };
    const vcpuPorts = Object.freeze(vcpuRemotePorts.map((port, i) => bind(port, `vCPU ${i}'s channel`)));
    const bufPort = bufRemotePort === null ? null : bind(bufRemotePort, 'the buffered ioreq channel');
    const binding: EventBinding = Object.freeze({ mode: 'evtchn', fd, vcpuPorts, bufPort });
    this.#bindings.add(binding);
    return binding;
  }

  /**
   * Unbinds every port of a binding made by {@link bindEvents} (IOCTL_EVTCHN_UNBIND). All ports
   * are attempted; the first failure is thrown afterwards. The evtchn fd stays open.
   * @throws MdevError EINVAL naming `binding` if it is not a live binding of this host
   */
  unbindEvents(binding: EventBinding): void {
    const fd = this.#live(this.#evtchn);
    if (!this.#bindings.has(binding) || binding.mode !== 'evtchn') {
      throw new MdevError('EINVAL', 'is not a live binding made by this host', 'binding');
    }
    this.#bindings.delete(binding);
    let failure: unknown;
    for (const port of binding.bufPort === null ? binding.vcpuPorts : [...binding.vcpuPorts, binding.bufPort]) {
      try {
        ioctl(fd, EvtchnIoctl.UNBIND, evtchnPortArg(port));
      } catch (e) {
        try {
          rethrow(e, `IOCTL_EVTCHN_UNBIND of local port ${port}`);
        } catch (wrapped) {
          failure ??= wrapped;
        }
      }
    }
    if (failure !== undefined) throw failure;
  }

  /** Sends an event on a local port bound by {@link bindEvents} (IOCTL_EVTCHN_NOTIFY). */
  notify(port: number): void {
    evtchnNotify(this.#live(this.#evtchn), port);
  }

  /**
   * Maps guest frames with IOCTL_PRIVCMD_MMAPBATCH_V2 into one privcmd mapping, frame after frame.
   * If any frame cannot be mapped (the kernel reports a per-frame error; ENOENT means paged out),
   * the mapping is released and EFAULT is thrown naming the first such gfn and its errno.
   * @param gfns `1..MAX_FOREIGN_FRAMES` guest frame numbers (bigint, u64)
   * @param writable map PROT_READ|PROT_WRITE instead of PROT_READ
   */
  mapForeign(gfns: readonly bigint[], writable: boolean): ForeignMapping {
    if (!Array.isArray(gfns) || gfns.length === 0 || gfns.length > MAX_FOREIGN_FRAMES) {
      throw new MdevError('EINVAL', `must be an array of 1 to ${MAX_FOREIGN_FRAMES} gfns, got ${describe(gfns)}`, 'gfns');
    }
    const arr = new BigUint64Array(gfns.length);
    gfns.forEach((gfn, i) => {
      arr[i] = checkBigInt(`gfns[${i}]`, gfn, 0n, (1n << 64n) - 1n);
    });
    checkBoolean('writable', writable);
    const fd = this.#live(this.#privcmd);
    const errs = new Int32Array(gfns.length);
    const mapping = mmapFd(fd, gfns.length * XEN_PAGE_SIZE, { writable });
    try {
      ioctl(fd, PrivcmdIoctl.MMAPBATCH_V2, privcmdMmapBatchV2Arg(this.domid, mappingAddress(mapping), arr, errs));
    } catch (e) {
      // privcmd fails the whole call with ENOENT when frames are paged out, after storing the
      // per-frame errors; any other failure says nothing about individual frames.
      if (!(isErrno(e, 'ENOENT') && errs.some((err) => err !== 0))) {
        munmap(mapping);
        rethrow(e, `IOCTL_PRIVCMD_MMAPBATCH_V2 of ${gfns.length} frames of domain ${this.domid}`);
      }
    }
    const failure = mmapBatchFailure(this.domid, arr, errs);
    if (failure !== null) {
      munmap(mapping);
      throw failure;
    }
    return { bytes: new Uint8Array(mapping), release: releaseOnce(mapping) };
  }

  /**
   * DMOP track_dirty_vram: Xen writes a bit per frame (LSB-first) into the first `ceil(nr / 8)`
   * bytes of `bitmap` and clears its log; `nr` 0 stops tracking. Linux's privcmd passes at most
   * `dm_op_buf_max_size` bytes (default 4096, so 32768 frames) per buffer: E2BIG beyond.
   * Xen wants the bitmap buffer even for `nr` 0, and privcmd refuses a NULL or page-aligned empty
   * one (EFAULT): the stop passes one byte of a private buffer, away from a page boundary.
   * @param nr `0..262144` (Xen's limit, 1 GiB)
   */
  trackDirtyVram(firstPfn: bigint, nr: number, bitmap: Uint8Array): void {
    const op = encodeTrackDirtyVram(firstPfn, nr);
    const bytes = Math.ceil(nr / 8);
    if (!(bitmap instanceof Uint8Array) || bitmap.byteLength < bytes) {
      throw new MdevError('EINVAL', `must be a Uint8Array of at least ${bytes} bytes for ${nr} frames, got ${describe(bitmap)}`, 'bitmap');
    }
    this.#dmOp(DmOp.TRACK_DIRTY_VRAM, op, nr === 0 ? unalignedByte() : bitmap.subarray(0, bytes));
  }

  /**
   * DMOP modified_memory: marks the extents dirty in Xen's log-dirty bitmap (migration). The
   * extents travel in buffer 1, 256 per DMOP (privcmd's default 4096-byte buffer limit).
   */
  modifiedMemory(extents: readonly PfnExtent[]): void {
    if (!Array.isArray(extents) || extents.length === 0) {
      throw new MdevError('EINVAL', `must be a non-empty array of extents, got ${describe(extents)}`, 'extents');
    }
    // Encode everything first, so a bad extent anywhere is reported before any DMOP is issued.
    const all = encodeModifiedMemoryExtents(extents);
    for (let start = 0; start < extents.length; start += EXTENTS_PER_DMOP) {
      const count = Math.min(EXTENTS_PER_DMOP, extents.length - start);
      const chunk = all.subarray(start * ModifiedMemoryExtent.sizeof, (start + count) * ModifiedMemoryExtent.sizeof);
      this.#dmOp(DmOp.MODIFIED_MEMORY, encodeModifiedMemory(count), chunk, ` of extents ${start}..${start + count - 1}`);
    }
  }

  /** DMOP set_mem_type: `nr` (at least 1) frames from `firstPfn` become `memType` (HVMMEM_*). */
  setMemType(memType: number, firstPfn: bigint, nr: number): void {
    this.#dmOp(DmOp.SET_MEM_TYPE, encodeSetMemType(memType, firstPfn, nr));
  }

  /** DMOP map_mem_type_to_ioreq_server (`flags` 0 releases the claim). */
  mapMemTypeToIoreqServer(id: number, memType: number, flags: number): void {
    this.#dmOp(DmOp.MAP_MEM_TYPE_TO_IOREQ_SERVER, encodeMapMemTypeToIoreqServer(id, memType, flags));
  }

  /** DMOP set_pci_intx_level (`intx` 0-3 for INTA-INTD). */
  setPciIntxLevel(segment: number, bus: number, device: number, intx: number, level: boolean): void {
    this.#dmOp(DmOp.SET_PCI_INTX_LEVEL, encodeSetPciIntxLevel(segment, bus, device, intx, level));
  }

  /** DMOP set_isa_irq_level (`irq` 0-15). */
  setIsaIrqLevel(irq: number, level: boolean): void {
    this.#dmOp(DmOp.SET_ISA_IRQ_LEVEL, encodeSetIsaIrqLevel(irq, level));
  }

  /** DMOP inject_msi. */
  injectMsi(address: bigint, data: number): void {
    this.#dmOp(DmOp.INJECT_MSI, encodeInjectMsi(address, data));
  }

  /**
   * DMOP relocate_memory (Xen 4.12 and later), `nr` frames at a time. Xen moves them one by one
   * (continuing itself when preempted); an error stops at the failing frame.
   */
  relocateMemory(srcGfn: bigint, dstGfn: bigint, nr: number): void {
    this.#dmOp(DmOp.RELOCATE_MEMORY, encodeRelocateMemory(srcGfn, dstGfn, nr), undefined, ` of ${nr} frames 0x${srcGfn.toString(16)} -> 0x${dstGfn.toString(16)}`);
  }

  /** DMOP pin_memory_cacheattr of the frames `[startGfn, endGfn]`. */
  pinMemoryCacheattr(startGfn: bigint, endGfn: bigint, type: MemCacheType): void {
    const op = encodePinMemoryCacheattr(startGfn, endGfn, lookup('type', MEM_CACHE_TYPES, type));
    this.#dmOp(DmOp.PIN_MEMORY_CACHEATTR, op, undefined, ` (${type}) of frames 0x${startGfn.toString(16)}-0x${endGfn.toString(16)}`);
  }

  /** Whether {@link restrict} succeeded for privcmd. */
  get restricted(): boolean {
    return this.#privcmdRestricted;
  }

  /**
   * One raw hypercall (IOCTL_PRIVCMD_HYPERCALL); returns its non-negative result. Refused here,
   * before the kernel refuses it, once the handle is restricted.
   */
  #hypercall(op: number, args: readonly HypercallArg[], what: string): number {
    const fd = this.#live(this.#privcmd);
    if (this.#privcmdRestricted) {
      throw new MdevError(
        'EPERM',
        `${what} on domain ${this.domid} is a raw hypercall, which privcmd refuses once restricted (IOCTL_PRIVCMD_RESTRICT): do it before restrict()`,
      );
    }
    try {
      return ioctl(fd, PrivcmdIoctl.HYPERCALL, privcmdHypercallArg(op, args));
    } catch (e) {
      if (isErrno(e, 'EACCES') && op === Hypercall.DOMCTL) {
        rethrow(e, `${what} on domain ${this.domid} (IOCTL_PRIVCMD_HYPERCALL): Xen refused XEN_DOMCTL_INTERFACE_VERSION 0x${this.#domctlVersion.toString(16)}; set domctlInterfaceVersion for this Xen (4.17: 0x15)`);
      }
      rethrow(e, `${what} on domain ${this.domid} (IOCTL_PRIVCMD_HYPERCALL)`);
    }
  }

  /** Privileged: XENMEM_current_reservation and XENMEM_maximum_reservation (memory_op). */
  domainPages(): DomainPages {
    const totPages = this.#hypercall(Hypercall.MEMORY_OP, [BigInt(XenMemOp.CURRENT_RESERVATION), encodeDomidArg(this.domid)], 'XENMEM_current_reservation');
    const maxPages = this.#hypercall(Hypercall.MEMORY_OP, [BigInt(XenMemOp.MAXIMUM_RESERVATION), encodeDomidArg(this.domid)], 'XENMEM_maximum_reservation');
    // The hypercall returns a long; ioctl(2) passes it on as an int, so limits of 2^31 pages and
    // more come back negative (and would be taken for an errno): 8 TiB, far beyond a guest's.
    return { totPages, maxPages };
  }

  /**
   * Privileged: XEN_DOMCTL_max_mem (the domctl hypercall), in pages (Xen takes KiB).
   * @param maxPages `0..2^32 - 1`
   */
  setMaxPages(maxPages: number): void {
    checkInt('maxPages', maxPages, 0, MAX_DOMAIN_PAGES);
    const domctl = encodeDomctlMaxMem(this.domid, BigInt(maxPages) * BigInt(XEN_PAGE_SIZE / 1024), this.#domctlVersion);
    this.#hypercall(Hypercall.DOMCTL, [domctl], `XEN_DOMCTL_max_mem (${maxPages} pages)`);
  }

  /**
   * Privileged: XENMEM_populate_physmap of order-0 extents, {@link POPULATE_CHUNK} gfns per
   * hypercall; stops at the first hypercall that populates fewer than it was given.
   * @returns the number of gfns populated, from the first
   */
  populatePhysmap(gfns: readonly bigint[]): number {
    if (!Array.isArray(gfns) || gfns.length === 0) throw new MdevError('EINVAL', `must be a non-empty array of gfns, got ${describe(gfns)}`, 'gfns');
    const all = new BigUint64Array(gfns.length);
    gfns.forEach((gfn, i) => {
      all[i] = checkBigInt(`gfns[${i}]`, gfn, 0n, (1n << 64n) - 1n);
    });
    let done = 0;
    while (done < all.length) {
      const chunk = all.slice(done, done + POPULATE_CHUNK);
      const reservation = encodeMemoryReservation(this.domid, chunk);
      const n = this.#hypercall(
        Hypercall.MEMORY_OP,
        [BigInt(XenMemOp.POPULATE_PHYSMAP), reservation],
        `XENMEM_populate_physmap of ${chunk.length} gfns from 0x${chunk[0]!.toString(16)}`,
      );
      done += Math.min(n, chunk.length);
      if (n < chunk.length) break;
    }
    return done;
  }

  /**
   * Restricts both fds to this domain, irreversibly: IOCTL_PRIVCMD_RESTRICT (privcmd then refuses
   * other domains with EPERM and arbitrary hypercalls altogether) and IOCTL_EVTCHN_RESTRICT_DOMID
   * (only this domain's channels can be bound). Call before dropping privileges. Calling it again
   * is a no-op.
   */
  restrict(): void {
    if (this.#restricted) return;
    const privcmd = this.#live(this.#privcmd);
    const evtchn = this.#live(this.#evtchn);
    if (!this.#privcmdRestricted) {
      try {
        ioctl(privcmd, PrivcmdIoctl.RESTRICT, privcmdRestrictArg(this.domid));
      } catch (e) {
        rethrow(e, `IOCTL_PRIVCMD_RESTRICT to domain ${this.domid}`);
      }
      this.#privcmdRestricted = true;
    }
    try {
      ioctl(evtchn, EvtchnIoctl.RESTRICT_DOMID, evtchnRestrictDomidArg(this.domid));
    } catch (e) {
      rethrow(e, `IOCTL_EVTCHN_RESTRICT_DOMID to domain ${this.domid}`);
    }
    this.#restricted = true;
  }

  /**
   * Closes both fds (which also unbinds every port still bound). Mappings stay valid until
   * released. Idempotent; every other method then throws EBADF.
   */
  close(): void {
    const fds = [this.#privcmd, this.#evtchn];
    this.#privcmd = -1;
    this.#evtchn = -1;
    this.#bindings.clear();
    for (const fd of fds) if (fd >= 0) closeFd(fd);
  }
}

/** One byte of a fresh buffer whose address is not page aligned (track_dirty_vram's stop). */
function unalignedByte(): Uint8Array {
  const buf = new Uint8Array(16);
  const at = addressOf(buf) % BigInt(XEN_PAGE_SIZE) === 0n ? 1 : 0;
  return buf.subarray(at, at + 1);
}

function releaseOnce(mapping: ArrayBuffer): () => void {
  let live = true;
  return () => {
    if (!live) return;
    live = false;
    munmap(mapping);
  };
}
