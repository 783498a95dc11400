/**
 * The public types of the vfio-user client ({@link VfioUserClient}): options, what its calls
 * return, and the error an Error reply becomes.
 * @module
 */
import { MdevError, errnoOf } from '../../../src/errors.js';
import { type DmaAccessLayout, type Header } from '../protocol.js';
import { commandName, errnoName } from './support.js';

/** Options of {@link VfioUserClient.connect}. */
export interface VfioUserClientOptions {
  /** Propose twin-socket mode (server-to-client commands on a second socket). Default `false`. */
  twinSocket?: boolean;
  /** `max_msg_fds` proposed: the most fds this client accepts in one message, 0..253. Default 16 (QEMU's value). */
  maxMsgFds?: number;
  /** `max_data_xfer_size` proposed: the largest DMA_READ/DMA_WRITE `count` this client serves. Default 1 MiB. */
  maxDataXferSize?: number;
  /**
   * Wire layout of DMA_READ/DMA_WRITE: `'spec'` (u64 count, data at 16) or `'qemu'` (u32 count,
   * data at 12, checked and answered exactly as QEMU ≥ 10.1 does: 16-byte DMA_READ requests,
   * `count ≤ size − 16` for DMA_WRITE, bare-header DMA_WRITE replies). Default `'spec'`.
   */
  dmaLayout?: DmaAccessLayout;
  /**
   * When server requests (DMA_READ/DMA_WRITE) are served: `'interleaved'` (default) serves them
   * also while a request of ours waits for its reply; `'between-requests'` only while none does,
   * as QEMU (its vCPU waiting for a trapped access holds the lock its DMA service needs).
   */
  dmaService?: 'interleaved' | 'between-requests';
  /** `'qemu'`: behave as QEMU 10.2's vfio-user-pci does (QEMU's DMA layout and service, its VERSION proposal). */
  emulate?: 'qemu';
  /** How long to wait for each reply, in ms; -1 waits forever. Default 10000. */
  timeoutMs?: number;
  /** Propose `write_multiple` (this client can send REGION_WRITE_MULTI). Default `true`, as QEMU. */
  writeMultiple?: boolean;
}

/** A negotiated protocol version. */
export interface ProtocolVersion {
  /** Major version (always 0 today). */
  major: number;
  /** Minor version. */
  minor: number;
}

/** DEVICE_GET_INFO reply. */
export interface DeviceInfo {
  /** Size the server needs for the full reply. */
  argsz: number;
  /** `DeviceFlag` bits (RESET, PCI). */
  flags: number;
  /** Number of regions. */
  numRegions: number;
  /** Number of IRQ types. */
  numIrqs: number;
}

/** A sparse-mmap area: a part of a region that may be mapped. */
export interface SparseArea {
  /** Offset in the region. */
  offset: bigint;
  /** Size in bytes. */
  size: bigint;
}

/** One entry of a region's capability chain. */
export interface RegionCapability {
  /** Capability id (`RegionCap`). */
  id: number;
  /** Capability version. */
  version: number;
  /** Offset of its header from the start of the region info structure. */
  offset: number;
}

/** DEVICE_GET_REGION_INFO reply, with the capability chain decoded. */
export interface RegionInfo {
  /** Region index. */
  index: number;
  /** `RegionFlag` bits. */
  flags: number;
  /** Size in bytes. */
  size: bigint;
  /** mmap offset of the region in `fd` (base of sparse-area offsets). */
  offset: bigint;
  /** Size of the full reply (32 + capabilities). */
  argsz: number;
  /** True when a SPARSE_MMAP capability limits mapping to {@link RegionInfo.sparseAreas}. */
  sparse: boolean;
  /** The mappable areas of a sparse region; empty when the region is not sparse. */
  sparseAreas: SparseArea[];
  /** The TYPE capability (device-specific regions), when present. */
  type: { type: number; subtype: number } | null;
  /** Every capability in the chain, in chain order. */
  caps: RegionCapability[];
  /**
   * The region fd (MMAP regions), owned by the client: valid until the next `regionInfo` of the
   * same index or {@link VfioUserClient.close}. `null` for regions that cannot be mapped.
   */
  fd: number | null;
  /** The reply bytes after the 32-byte structure (capability offsets are relative to 32 bytes before it). */
  capsRaw: Uint8Array;
}

/** DEVICE_GET_IRQ_INFO reply. */
export interface IrqInfoReply {
  /** Size the server needs for the full reply. */
  argsz: number;
  /** IRQ index. */
  index: number;
  /** `IrqInfoFlag` bits. */
  flags: number;
  /** Number of vectors. */
  count: number;
}

/** One sub-region of a DEVICE_GET_REGION_IO_FDS reply. */
export interface IoFdSubRegion {
  /** Offset in the region. */
  offset: bigint;
  /** Size (0: any access size). */
  size: bigint;
  /** Index into the reply's fds. */
  fdIndex: number;
  /** 0 ioeventfd, 1 ioregionfd (others are reported as given). */
  type: number;
  /** KVM_IOEVENTFD_FLAG_* / KVM_IOREGION_* bits. */
  flags: number;
  /** Datamatch (ioeventfd) or user data (ioregionfd). */
  datamatch: bigint;
  /** The fd itself (`fds[fdIndex]`). */
  fd: number;
}

/** DEVICE_GET_REGION_IO_FDS reply. */
export interface RegionIoFds {
  /** Size of the full reply. */
  argsz: number;
  /** Region index. */
  index: number;
  /** Flags (0). */
  flags: number;
  /** The sub-regions. */
  subRegions: IoFdSubRegion[];
  /** The fds, owned by the client: valid until the next `regionIoFds` of the same index or close. */
  fds: number[];
}

/** A mapped area of a region. */
export interface MappedArea {
  /** Offset in the region. */
  offset: bigint;
  /** Size in bytes. */
  size: bigint;
  /** The mapped bytes. */
  bytes: Uint8Array;
}

/** A region mapped with {@link VfioUserClient.mapRegion}. */
export interface RegionMapping {
  /** Region index. */
  index: number;
  /** The whole region, when it is fully mappable; `null` for a sparse region (see `areas`). */
  bytes: Uint8Array | null;
  /** Every mapped area (one covering the region when it is not sparse). */
  areas: MappedArea[];
  /** Mapped writable (the region has the WRITE flag). */
  writable: boolean;
}

/** Guest RAM registered with {@link VfioUserClient.addGuestRam}. */
export interface GuestRam {
  /** Guest physical (DMA) address. */
  address: bigint;
  /** Size in bytes. */
  size: number;
  /** The RAM as this client (the "guest") sees it. */
  bytes: Uint8Array;
  /** The local memfd behind it. */
  fd: number;
  /** The memfd was passed with DMA_MAP (the server can mmap it); otherwise it uses DMA_READ/WRITE. */
  sharedWithServer: boolean;
  /** Mapped without the WRITE flag: the server may only read it. */
  readOnly: boolean;
}

/** Arguments of the raw {@link VfioUserClient.dmaMap}. */
export interface DmaMapArgs {
  /** DMA address. */
  address: bigint | number;
  /** Size in bytes. */
  size: bigint | number;
  /** `DmaFlag` bits; default READ | WRITE. */
  flags?: number;
  /** File offset in `fd`; default 0. */
  offset?: bigint | number;
  /** The fd to pass (none: the server must use DMA_READ/WRITE). */
  fd?: number;
  /** argsz to send; default 32. */
  argsz?: number;
}

/** Arguments of the raw {@link VfioUserClient.dmaUnmap}. */
export interface DmaUnmapArgs {
  /** DMA address. */
  address: bigint | number;
  /** Size in bytes. */
  size: bigint | number;
  /** Flags; default 0. */
  flags?: number;
  /** argsz to send; default 24. */
  argsz?: number;
}

/** The DMA_UNMAP reply entry. */
export interface DmaUnmapReply {
  /** argsz. */
  argsz: number;
  /** Flags. */
  flags: number;
  /** DMA address. */
  address: bigint;
  /** Size. */
  size: bigint;
}

/** Arguments of the raw {@link VfioUserClient.setIrqs}. */
export interface SetIrqsArgs {
  /** `IrqSetFlag` bits: one DATA and one ACTION flag. */
  flags: number;
  /** First vector. */
  start: number;
  /** Number of vectors. */
  count: number;
  /** Eventfds to pass (DATA_EVENTFD). */
  fds?: readonly number[];
  /** In-band booleans (DATA_BOOL), one byte each. */
  bools?: readonly boolean[] | Uint8Array;
}

/** One write of a REGION_WRITE_MULTI. */
export interface WriteMultiEntry {
  /** Region index. */
  region: number;
  /** Offset in the region. */
  offset: number | bigint;
  /** 1 to 8 bytes. */
  data: Uint8Array;
}

/** A DMA logging range. */
export interface DmaRange {
  /** Start address. */
  iova: bigint | number;
  /** Length in bytes. */
  length: bigint | number;
}

/** A DEVICE_FEATURE reply. */
export interface FeatureReply {
  /** argsz of the reply. */
  argsz: number;
  /** Flags echoed. */
  flags: number;
  /** The feature data (after argsz and flags). */
  data: Uint8Array;
}

/** A message as it came off the socket. */
export interface RawMessage {
  /** The decoded header. */
  header: Header;
  /** The payload (after the header). */
  payload: Uint8Array;
  /** fds that came with it; the caller owns them. */
  fds: number[];
}

/** Options of {@link VfioUserClient.request}. */
export interface RequestOptions {
  /** fds to attach. */
  fds?: readonly number[];
  /** Set No_reply and return without waiting. */
  noReply?: boolean;
  /** Reply timeout for this call, in ms (-1: forever); default the client's. */
  timeoutMs?: number;
  /** Largest reply payload accepted; default max(1 MiB, max_data_xfer_size + 4 KiB). */
  maxReplyPayload?: number;
}

/** Counters of the server-to-client requests this client served. */
export interface DmaServiceStats {
  /** DMA_READ requests served. */
  reads: number;
  /** DMA_WRITE requests served. */
  writes: number;
  /** Bytes sent in DMA_READ replies. */
  bytesRead: number;
  /** Bytes written by DMA_WRITE requests. */
  bytesWritten: number;
  /** Requests answered with an error reply. */
  rejected: number;
  /** The last rejected request. */
  lastRejection: { command: number; address: bigint; count: bigint; code: string } | null;
}

/** Access sizes of the guest-driver interface. */
export type AccessSize = 1 | 2 | 4 | 8;

/** The error thrown when the server answers with an Error reply. */
export class VfioUserError extends MdevError {
  override name = 'VfioUserError';
  override readonly errno: number;
  /** The command that failed. */
  readonly command: number;
  /** The message id of the failed command. */
  readonly msgId: number;
  /** The raw error field of the reply (the spec allows 0). */
  readonly serverErrno: number;

  /**
   * Builds the error for an Error reply; `code`/`errno` follow the server's errno, or EIO when it
   * is 0 or unknown on this platform.
   * @param command the command that failed
   * @param msgId its message id
   * @param serverErrno the reply's error field
   */
  constructor(command: number, msgId: number, serverErrno: number) {
    const code = errnoName(serverErrno) ?? 'EIO';
    super(code, `server failed ${commandName(command)} (msg_id ${msgId}) with errno ${serverErrno}`, commandName(command));
    this.errno = errnoName(serverErrno) !== undefined ? serverErrno : errnoOf('EIO');
    this.command = command;
    this.msgId = msgId;
    this.serverErrno = serverErrno;
  }
}

