/**
 * The vfio-user server: serves one {@link PciDevice} on a UNIX socket to one client at a time
 * (the KVM mediation path, what QEMU's `vfio-user-pci` connects to).
 *
 * The data path lives in the native core (`VfioUserConnection` + the region table): trapped
 * REGION_READ/REGION_WRITE are served there, natively or by a synchronous call into the device
 * model. This file is the control plane: version negotiation, region/IRQ information, DMA windows,
 * interrupts, reset, DMA logging, and the connection lifecycle. Facts and deviations are listed in
 * docs/vfio-user.md.
 * @module
 */
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import { MdevError, errnoOf, isErrno } from '../../src/errors.js';
import { binding } from '../../src/native/binding.js';
import { closeFd } from '../../src/native/fd.js';
import { acceptUnix, connectUnix, listenUnix, socketPair } from '../../src/native/socket.js';
import { FdWatcher } from '../../src/native/watcher.js';
import { POLLERR, POLLHUP, POLLNVAL, POLLRDHUP, pollFds } from '../../src/native/poll.js';
import type { DeviceDiagnostic, PciDevice } from '../../src/pci/device.js';
import { createRegionTable, errnoFromError, type NativeRegionTable, type RegionTableStats } from '../../src/region-table.js';
import { VfioDmaSpace, type DmaTransport } from './dma.js';
import { VfioIrqState } from './irqs.js';
import { CompareWriteWatch } from '../../src/write-watch.js';
import {
  CAPABILITY_DEFAULTS,
  Command,
  DeviceFlag,
  Feature,
  HEADER_SIZE,
  Layout,
  MigrationFlag,
  PROTOCOL_MAJOR,
  PROTOCOL_MINOR,
  PciIrq,
  PciRegion,
  RegionCap,
  RegionFlag,
  formatCapabilities,
  parseCapabilities,
  type Capabilities,
  type DmaAccessLayout,
  type DmaLayoutChoice,
} from './protocol.js';
import { inHandlerScope, runOrDefer } from '../../src/handler-scope.js';
import { VfioMigration } from './migration.js';

/** Options of a {@link VfioUserServer}. */
export interface VfioUserServerOptions {
  /** Largest `count` we accept in REGION_READ/WRITE (default 1 MiB, the spec's default). */
  maxDataXferSize?: number;
  /** Most fds we accept in one message (default 16; QEMU sends at most 16). */
  maxMsgFds?: number;
  /** Most concurrent DMA windows (default 65535). */
  maxDmaMaps?: number;
  /**
   * Layout of the DMA_READ/DMA_WRITE messages we send: `'auto'` (default: detected per
   * connection, see {@link DmaLayoutChoice}), the spec's, or QEMU's.
   */
  dmaLayout?: DmaLayoutChoice;
  /** How long a DMA_READ/DMA_WRITE may wait for the client's reply (default 5000 ms). */
  dmaTimeoutMs?: number;
  /** Offer twin-socket mode to clients that support it (default true). */
  twinSocket?: boolean;
  /** A client that starts a message and does not complete it within this many ms is dropped (default 5000; 0: no limit). */
  messageTimeoutMs?: number;
  /** A client that leaves replies unread this long is dropped (default 10000; 0: no limit). */
  replyTimeoutMs?: number;
  /** Ending a connection, wait at most this long for the peer's end of stream after ours (default 2000). */
  drainMs?: number;
  /** Clients that may wait for the device while another is connected (default 16); more are refused with EBUSY. */
  maxWaitingClients?: number;
  /**
   * Serve traffic that needs no JS on a thread of the connection's own (blocking recvmsg/sendmsg,
   * none of the event loop's costs), handing anything that needs JS back to the event loop
   * (default true). Device code that changes register state outside access handlers and control
   * messages (timers, its own events) must then run inside {@link PciDevice.exclusive}.
   */
  ioThread?: boolean;
  /**
   * While one connection's messages that need JS keep the event loop busy and the loop has nothing
   * else to do, serve that connection in a blocking receive loop on the JS thread (two system calls
   * per request instead of the loop's three, none of the loop's turn). A sentinel thread hands the
   * JS thread back to the loop as soon as any other handle has an event or a timer is due
   * (default true).
   */
  blockingServe?: boolean;
  /**
   * VFIO migration v2 flags offered (MIGRATION feature): STOP_COPY, optionally P2P and PRE_COPY
   * (default all three); 0 offers no migration (the features and MIG_DATA_* answer ENOTSUP).
   */
  migrationFlags?: number;
  /** Log lines (default: none). */
  log?: (line: string) => void;
  /** Device diagnostics, with what the server knows of the memory involved (default: the log). */
  warn?: (line: string) => void;
}

/** What a control-plane handler answers. */
interface Reply {
  payload?: Uint8Array;
  fds?: number[];
  error?: number;
  /** Close the connection after this reply. */
  close?: boolean;
}

/** The native connection's interface. */
interface NativeConnection {
  start(): void;
  close(): void;
  closeGracefully(reason?: string): void;
  setTwin(fd: number): void;
  setNegotiated(negotiated: boolean): void;
  request(command: number, payload: Uint8Array, timeoutMs: number): Buffer;
  stats(): Record<string, number>;
}

const NativeConnectionClass = binding['VfioUserConnection'] as new (
  fd: number,
  options: {
    regionTable: NativeRegionTable;
    onMessage: (command: number, msgId: number, flags: number, payload: Buffer, fds: number[]) => Reply | undefined;
    onClose: (reason: string, errno: number) => void;
    maxMessageSize: number;
    maxFds: number;
    maxDataXfer: number;
    messageTimeoutMs?: number;
    replyTimeoutMs?: number;
    drainMs?: number;
    ioThread?: boolean;
    blockingServe?: boolean;
  },
) => NativeConnection;

const PAGE = 4096;

function fail(code: string, message: string, field: string): never {
  throw new MdevError(code, message, field);
}

function payloadView(p: Uint8Array): DataView {
  return new DataView(p.buffer, p.byteOffset, p.byteLength);
}

/** Counters of one session, for tools and comparisons. */
export interface SessionStats {
  /** Native connection counters (messages, syscalls, bytes). */
  connection: Record<string, number>;
  /** Where region accesses were served. */
  regions: RegionTableStats;
}

/** One client connection. */
export class VfioUserSession {
  /** Capabilities the client proposed. */
  clientCaps: Capabilities | null = null;
  /** DMA windows and DMA logging. */
  readonly dma: VfioDmaSpace;
  /** Interrupt configuration. */
  readonly irqs: VfioIrqState;
  /** Write-watch in compare mode over the client's DMA windows. */
  readonly writeWatch: CompareWriteWatch;
  /** Migration state and data sessions (null when the server offers no migration). */
  readonly migration: VfioMigration | null;
  private readonly conn: NativeConnection;
  private negotiated = false;
  private twin = false;
  private closed = false;
  /** The DMA message layout this client speaks; null until found (auto). */
  private layout: DmaAccessLayout | null;

  /** @internal */
  constructor(
    private readonly server: VfioUserServer,
    fd: number,
    private readonly onClosed: (session: VfioUserSession, reason: string) => void,
  ) {
    const opts = server.options;
    this.layout = opts.dmaLayout === 'auto' ? null : opts.dmaLayout;
    const transport: DmaTransport = {
      dmaRead: (address, out) => this.dmaMessage(Command.DMA_READ, address, out, null),
      dmaWrite: (address, data) => this.dmaMessage(Command.DMA_WRITE, address, null, data),
    };
    this.migration = opts.migrationFlags === 0 ? null : new VfioMigration(server.device, server.regionTable, { flags: opts.migrationFlags, maxDataXferSize: opts.maxDataXferSize, log: (l) => server.log(l), warn: opts.warn });
    this.dma = new VfioDmaSpace({ maxWindows: opts.maxDmaMaps, transport, maxTransfer: CAPABILITY_DEFAULTS.maxDataXferSize });
    this.irqs = new VfioIrqState(server.device);
    this.conn = new NativeConnectionClass(fd, {
      regionTable: server.regionTable,
      onMessage: (command, _msgId, flags, payload, fds) => this.onMessage(command, flags, payload, fds),
      onClose: (reason) => this.teardown(reason),
      maxMessageSize: HEADER_SIZE + Layout.regionAccess.data + opts.maxDataXferSize + 64,
      maxFds: opts.maxMsgFds,
      maxDataXfer: opts.maxDataXferSize,
      messageTimeoutMs: opts.messageTimeoutMs,
      replyTimeoutMs: opts.replyTimeoutMs,
      drainMs: opts.drainMs,
      ioThread: opts.ioThread,
      blockingServe: opts.blockingServe,
    });
    server.device.attachGuestMemory(this.dma);
    server.device.on('diagnostic', this.onDiagnostic);
    // vfio-user cannot write-protect guest pages: watched pages are compared at sync points.
    this.writeWatch = new CompareWriteWatch(this.dma);
    server.device.attachWriteWatch(this.writeWatch);
    this.irqs.attach();
    this.conn.start();
  }

  private readonly onDiagnostic = (d: DeviceDiagnostic): void => {
    this.server.options.warn(`device: ${d.message}${d.suspectGpa === undefined ? '' : `; ${this.explainMemory(d.suspectGpa)}`}`);
  };

  /** What this session knows of the guest memory at `gpa`, for a device that finds it implausible. */
  private explainMemory(gpa: number): string {
    const w = this.dma.windows.find((x) => BigInt(gpa) >= x.address && BigInt(gpa) < x.address + x.size);
    if (!w) return `no DMA window covers guest address 0x${gpa.toString(16)}`;
    if (!w.mapped) return 'that guest RAM is read through DMA_READ messages, so the VMM itself answered with these bytes';
    return 'that guest RAM is read through the fd the VMM passed with DMA_MAP, and the guest\'s writes did not reach it: ' +
      'the VMM maps that memory privately. With QEMU, guest RAM must be shared: -object memory-backend-memfd,...,share=on ' +
      '(with share=off QEMU still passes the memfd, but the guest writes into a private copy)';
  }

  /** Counters of this session. */
  stats(): SessionStats {
    return { connection: this.conn.stats(), regions: this.server.regionTable.stats() };
  }

  /** Ends the session at once (as a client disconnect would); unread requests are dropped. */
  close(): void {
    this.conn.close();
  }

  /**
   * Ends the session as a well-behaved peer does: requests already sent are read and answered, no
   * new work is taken, our end of stream follows the last reply, and the client's end of stream is
   * awaited (bounded by `drainMs`) before the socket is closed — so the client sees EOF, never a
   * connection reset.
   */
  end(reason = 'closed by the server'): void {
    this.conn.closeGracefully(reason);
  }

  /** Asks the VMM to release the device (signals the REQ interrupt, if the client set one up). */
  requestRelease(): boolean {
    return this.irqs.requestRelease();
  }

  private teardown(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    // Spec: on client disconnect, unmap DMA, close IRQ fds, keep the device state.
    const device = this.server.device;
    device.off('diagnostic', this.onDiagnostic);
    this.migration?.close();
    if (device.guestMemory === this.dma) device.attachGuestMemory(null);
    if (device.writeWatch === this.writeWatch) device.attachWriteWatch(null);
    this.irqs.disconnect();
    this.dma.close();
    this.onClosed(this, reason);
  }

  /** The DMA message layout in use: configured, or detected on this connection (null: not yet). */
  get dmaLayout(): DmaAccessLayout | null {
    return this.layout;
  }

  /** Sends a DMA request and waits for its reply, explaining the errors a device author can meet. */
  private request(command: number, payload: Uint8Array): Buffer {
    try {
      return this.conn.request(command, payload, this.server.options.dmaTimeoutMs);
    } catch (e) {
      if (isErrno(e, 'EDEADLK')) {
        fail('EDEADLK', 'DMA through the VMM (guest RAM not shared by fd) from inside a read or control handler: the VMM is waiting for that reply and ' +
          'cannot serve DMA until it has it (QEMU). Do such DMA from write handlers (their reply goes out first) or share guest RAM by fd', 'dma');
      }
      throw e;
    }
  }

  /**
   * Finds the client's DMA layout with a zero-length DMA_WRITE at `address`: 32 bytes that both
   * layouts read as "write 0 bytes at address". QEMU answers a DMA_WRITE with a bare header, the
   * spec (and libvfio-user) with address and count. An error answer decides nothing.
   */
  private detectLayout(address: bigint): DmaAccessLayout | null {
    const probe = new Uint8Array(Layout.dmaAccessSpec.size);
    payloadView(probe).setBigUint64(Layout.dmaAccessSpec.address, address, true);
    let reply: Buffer;
    try {
      reply = this.request(Command.DMA_WRITE, probe);
    } catch (e) {
      if (isErrno(e, 'EDEADLK')) throw e;
      return null;
    }
    const found: DmaAccessLayout | null = reply.length === 0 ? 'qemu' : reply.length >= 16 ? 'spec' : null;
    if (found) this.server.log(`vfio-user: client speaks the ${found === 'qemu' ? "QEMU" : "spec's"} DMA_READ/DMA_WRITE layout`);
    return found;
  }

  private dmaMessage(command: number, address: bigint, out: Uint8Array | null, data: Uint8Array | null): void {
    // RUNNING_P2P / PRE_COPY_P2P: fd-less windows are where a peer device's BAR appears, and a
    // message cannot tell peer memory from guest RAM, so no DMA through messages at all.
    if (this.migration?.p2pQuiesced) fail('EBUSY', 'the device is P2P-quiesced for migration (RUNNING_P2P): no DMA through VMM messages', 'dma');
    this.layout ??= this.detectLayout(address);
    const layout = this.layout === 'qemu' ? Layout.dmaAccessQemu : Layout.dmaAccessSpec;
    const count = out ? out.length : data!.length;
    const payload = new Uint8Array(layout.size + (data ? data.length : 0));
    const v = payloadView(payload);
    v.setBigUint64(layout.address, address, true);
    if (layout.countSize === 8) v.setBigUint64(layout.count, BigInt(count), true);
    else v.setUint32(layout.count, count, true);
    if (data) payload.set(data, layout.data);
    const reply = this.request(command, payload);
    if (out) {
      if (reply.length < layout.data + count) fail('EIO', `DMA_READ reply has ${reply.length} bytes, expected ${layout.data + count}`, 'dma_read.reply');
      out.set(reply.subarray(layout.data, layout.data + count));
    }
  }

  private onMessage(command: number, flags: number, payload: Buffer, fds: number[]): Reply | undefined {
    try {
      if (!this.negotiated && command !== Command.VERSION) {
        fail('EINVAL', 'the first message must be VERSION', 'command');
      }
      // Control-plane work is device work too: a reset requested while a handler waits is deferred.
      return inHandlerScope(() => this.handle(command, flags, payload, fds));
    } catch (e) {
      for (const fd of fds) tryClose(fd);
      if (!isErrno(e)) this.server.log(`vfio-user: internal error handling command ${command}: ${(e as Error).stack ?? String(e)}`);
      // A VERSION that cannot be accepted ends the connection (spec); other errors do not.
      return { error: errnoFromError(e), close: command === Command.VERSION && !this.negotiated };
    }
  }

  /** Handles one control-plane command. Handlers that keep fds take ownership; others refuse fds. */
  private handle(command: number, _flags: number, p: Buffer, fds: number[]): Reply | undefined {
    const takesFds = command === Command.DMA_MAP || command === Command.DEVICE_SET_IRQS;
    if (!takesFds && fds.length > 0) fail('EINVAL', `${fds.length} unexpected file descriptors`, 'fds');
    switch (command) {
      case Command.VERSION:
        return this.version(p);
      case Command.DMA_MAP:
        return this.dmaMap(p, fds);
      case Command.DMA_UNMAP:
        return this.dmaUnmap(p);
      case Command.DEVICE_GET_INFO:
        return this.deviceInfo(p);
      case Command.DEVICE_GET_REGION_INFO:
        return this.regionInfo(p);
      case Command.DEVICE_GET_REGION_IO_FDS:
        return this.regionIoFds(p);
      case Command.DEVICE_GET_IRQ_INFO:
        return this.irqInfo(p);
      case Command.DEVICE_SET_IRQS:
        return this.setIrqs(p, fds);
      case Command.REGION_READ:
      case Command.REGION_WRITE:
        // Only reached if the native path declined (it serves these after negotiation).
        return fail('EINVAL', 'region access refused', 'command');
      case Command.DEVICE_RESET:
        if (p.length !== 0) fail('EINVAL', 'DEVICE_RESET has no payload', 'payload');
        runOrDefer(() => this.server.device.reset());
        return {};
      case Command.REGION_WRITE_MULTI:
        return this.writeMulti(p);
      case Command.DEVICE_FEATURE:
        return this.feature(p);
      case Command.MIG_DATA_READ:
        if (!this.migration) return fail('ENOTSUP', 'this server offers no migration', 'command');
        return { payload: this.migration.dataRead(p) };
      case Command.MIG_DATA_WRITE:
        if (!this.migration) return fail('ENOTSUP', 'this server offers no migration', 'command');
        this.migration.dataWrite(p);
        return {};
      case Command.DMA_READ:
      case Command.DMA_WRITE:
        return fail('EINVAL', 'DMA_READ/DMA_WRITE are server-to-client commands', 'command');
      default:
        return fail('ENOSYS', `unknown command ${command}`, 'command');
    }
  }

  private version(p: Buffer): Reply {
    if (this.negotiated) fail('EINVAL', 'VERSION was already negotiated', 'command');
    if (p.length < Layout.version.size) fail('EINVAL', `VERSION payload has ${p.length} bytes, needs at least 4`, 'version');
    const v = payloadView(p);
    const major = v.getUint16(Layout.version.major, true);
    const minor = v.getUint16(Layout.version.minor, true);
    if (major !== PROTOCOL_MAJOR) fail('EINVAL', `major version ${major} is not supported (only ${PROTOCOL_MAJOR})`, 'version.major');
    let json = '';
    if (p.length > Layout.version.size) {
      const nul = p.indexOf(0, Layout.version.size);
      if (nul !== p.length - 1) fail('EINVAL', 'the capabilities must be one NUL-terminated string', 'version.json');
      json = p.toString('utf8', Layout.version.size, nul);
    }
    const caps = parseCapabilities(json);
    this.clientCaps = caps;
    const opts = this.server.options;
    // The reply names a subset of what the client proposed (spec), with our own limits.
    const proposed = json === '' ? {} : ((JSON.parse(json) as { capabilities?: Record<string, unknown> }).capabilities ?? {});
    const reply: Record<string, unknown> = {};
    const optional: string[] = [];
    // The capability of spec 0.9.1 that QEMU and libvfio-user still exchange: answered (libvfio-user's
    // form) when proposed and migration is offered; dropped last if the reply must shrink.
    if ('migration' in proposed && opts.migrationFlags !== 0) {
      reply['migration'] = { pgsize: PAGE };
      optional.push('migration');
    }
    if ('max_msg_fds' in proposed) reply['max_msg_fds'] = opts.maxMsgFds;
    if ('max_data_xfer_size' in proposed) reply['max_data_xfer_size'] = opts.maxDataXferSize;
    if ('max_dma_maps' in proposed) {
      reply['max_dma_maps'] = Math.min(opts.maxDmaMaps, caps.maxDmaMaps);
      optional.push('max_dma_maps');
    }
    if ('pgsizes' in proposed) {
      if ((caps.pgsizes & PAGE) === 0) fail('EINVAL', 'the client does not support 4 KiB DMA pages', 'capabilities.pgsizes');
      reply['pgsizes'] = PAGE;
      optional.push('pgsizes');
    }
    if ('write_multiple' in proposed) {
      reply['write_multiple'] = caps.writeMultiple;
      optional.push('write_multiple');
    }
    let twinClientEnd: number | null = null;
    if (caps.twinSocket.supported && opts.twinSocket) {
      const [serverEnd, clientEnd] = socketPair({ nonBlocking: true });
      this.conn.setTwin(serverEnd);
      twinClientEnd = clientEnd;
      reply['twin_socket'] = { supported: true, fd_index: 0 };
      this.twin = true;
    }
    // QEMU reads the reply into its request's buffer: never answer with more bytes than it sent.
    let text = formatCapabilities(reply);
    while (Layout.version.size + Buffer.byteLength(text) + 1 > p.length && optional.length > 0) {
      delete reply[optional.pop()!];
      text = formatCapabilities(reply);
    }
    const out = Buffer.alloc(Layout.version.size + Buffer.byteLength(text) + 1);
    out.writeUInt16LE(PROTOCOL_MAJOR, 0);
    out.writeUInt16LE(Math.min(minor, PROTOCOL_MINOR), 2);
    out.write(text, Layout.version.size, 'utf8');
    this.dma.setMaxTransfer(caps.maxDataXferSize);
    this.negotiated = true;
    this.conn.setNegotiated(true);
    const result: Reply = { payload: out };
    if (twinClientEnd !== null) {
      result.fds = [twinClientEnd];
      // The native side sends its own duplicate; ours can go once the reply is queued.
      queueMicrotask(() => tryClose(twinClientEnd!));
    }
    return result;
  }

  private dmaMap(p: Buffer, fds: number[]): Reply {
    const L = Layout.dmaMap;
    if (p.length !== L.sizeof) fail('EINVAL', `DMA_MAP payload has ${p.length} bytes, expected ${L.sizeof}`, 'dma_map');
    if (fds.length > 1) fail('EINVAL', `DMA_MAP carries at most one fd, got ${fds.length}`, 'fds');
    const v = payloadView(p);
    if (v.getUint32(L.argsz, true) !== L.sizeof) fail('EINVAL', `argsz must be ${L.sizeof}`, 'dma_map.argsz');
    this.dma.map(
      { flags: v.getUint32(L.flags, true), offset: v.getBigUint64(L.offset, true), address: v.getBigUint64(L.address, true), size: v.getBigUint64(L.size, true) },
      fds[0] ?? null,
    );
    return {};
  }

  private dmaUnmap(p: Buffer): Reply {
    const L = Layout.dmaUnmap;
    if (p.length !== L.sizeof) fail('EINVAL', `DMA_UNMAP payload has ${p.length} bytes, expected ${L.sizeof}`, 'dma_unmap');
    const v = payloadView(p);
    if (v.getUint32(L.argsz, true) < L.sizeof) fail('EINVAL', `argsz must be at least ${L.sizeof}`, 'dma_unmap.argsz');
    this.dma.unmap({ flags: v.getUint32(L.flags, true), address: v.getBigUint64(L.address, true), size: v.getBigUint64(L.size, true) });
    const out = Buffer.from(p);
    out.writeUInt32LE(L.sizeof, L.argsz);
    return { payload: out };
  }

  private deviceInfo(p: Buffer): Reply {
    const L = Layout.deviceInfo;
    if (p.length < L.sizeof) fail('EINVAL', `DEVICE_GET_INFO payload has ${p.length} bytes, needs ${L.sizeof}`, 'device_info');
    if (payloadView(p).getUint32(L.argsz, true) < L.sizeof) fail('EINVAL', `argsz must be at least ${L.sizeof}`, 'device_info.argsz');
    const out = Buffer.alloc(L.sizeof);
    out.writeUInt32LE(L.sizeof, L.argsz);
    out.writeUInt32LE(DeviceFlag.RESET | DeviceFlag.PCI, L.flags);
    out.writeUInt32LE(PciRegion.COUNT, L.numRegions);
    out.writeUInt32LE(PciIrq.COUNT, L.numIrqs);
    return { payload: out };
  }

  private regionInfo(p: Buffer): Reply {
    const L = Layout.regionInfo;
    if (p.length < L.sizeof) fail('EINVAL', `DEVICE_GET_REGION_INFO payload has ${p.length} bytes, needs ${L.sizeof}`, 'region_info');
    const v = payloadView(p);
    const argsz = v.getUint32(L.argsz, true);
    const index = v.getUint32(L.index, true);
    if (argsz < L.sizeof) fail('EINVAL', `argsz must be at least ${L.sizeof}`, 'region_info.argsz');
    if (index >= PciRegion.COUNT) fail('EINVAL', `region ${index} does not exist (${PciRegion.COUNT} regions)`, 'region_info.index');
    const info = this.server.describeRegion(index);
    const caps: Buffer[] = [];
    if (info.sparse) {
      const S = Layout.sparseMmap;
      const cap = Buffer.alloc(S.areas + info.areas.length * S.areaSize);
      cap.writeUInt16LE(RegionCap.SPARSE_MMAP, Layout.capHeader.id);
      cap.writeUInt16LE(1, Layout.capHeader.version);
      cap.writeUInt32LE(0, Layout.capHeader.next);
      cap.writeUInt32LE(info.areas.length, S.nrAreas);
      info.areas.forEach((a, i) => {
        cap.writeBigUInt64LE(BigInt(a.offset), S.areas + i * S.areaSize);
        cap.writeBigUInt64LE(BigInt(a.size), S.areas + i * S.areaSize + 8);
      });
      caps.push(cap);
    }
    const capBytes = Buffer.concat(caps);
    const needed = L.sizeof + capBytes.length;
    const fits = argsz >= needed;
    const out = Buffer.alloc(fits ? needed : L.sizeof);
    out.writeUInt32LE(needed, L.argsz);
    // Like the kernel: a reply too small for the capabilities still says CAPS, with cap_offset 0,
    // and argsz tells the client what to ask for.
    out.writeUInt32LE(info.flags | (capBytes.length ? RegionFlag.CAPS : 0), L.flags);
    out.writeUInt32LE(index, L.index);
    out.writeUInt32LE(fits && capBytes.length ? L.sizeof : 0, L.capOffset);
    out.writeBigUInt64LE(BigInt(info.size), L.size);
    out.writeBigUInt64LE(BigInt(info.offset), L.offset);
    if (fits) capBytes.copy(out, L.sizeof);
    return info.fd !== null ? { payload: out, fds: [info.fd] } : { payload: out };
  }

  private regionIoFds(p: Buffer): Reply {
    const L = Layout.regionIoFds;
    if (p.length < L.sizeof) fail('EINVAL', `DEVICE_GET_REGION_IO_FDS payload has ${p.length} bytes, needs ${L.sizeof}`, 'region_io_fds');
    const v = payloadView(p);
    const index = v.getUint32(L.index, true);
    if (v.getUint32(L.argsz, true) < L.sizeof) fail('EINVAL', `argsz must be at least ${L.sizeof}`, 'region_io_fds.argsz');
    if (v.getUint32(L.flags, true) !== 0) fail('EINVAL', 'flags must be 0', 'region_io_fds.flags');
    if (index >= PciRegion.COUNT) fail('EINVAL', `region ${index} does not exist`, 'region_io_fds.index');
    // Honest answer: this server offers no ioeventfds/ioregionfds, so no sub-regions and no fds.
    const out = Buffer.alloc(L.sizeof);
    out.writeUInt32LE(L.sizeof, L.argsz);
    out.writeUInt32LE(index, L.index);
    return { payload: out };
  }

  private irqInfo(p: Buffer): Reply {
    const L = Layout.irqInfo;
    if (p.length < L.sizeof) fail('EINVAL', `DEVICE_GET_IRQ_INFO payload has ${p.length} bytes, needs ${L.sizeof}`, 'irq_info');
    const v = payloadView(p);
    if (v.getUint32(L.argsz, true) < L.sizeof) fail('EINVAL', `argsz must be at least ${L.sizeof}`, 'irq_info.argsz');
    const index = v.getUint32(L.index, true);
    const info = this.irqs.irqInfo(index);
    const out = Buffer.alloc(L.sizeof);
    out.writeUInt32LE(L.sizeof, L.argsz);
    out.writeUInt32LE(info.flags, L.flags);
    out.writeUInt32LE(index, L.index);
    out.writeUInt32LE(info.count, L.count);
    return { payload: out };
  }

  private setIrqs(p: Buffer, fds: number[]): Reply {
    const L = Layout.irqSet;
    if (p.length < L.sizeof) fail('EINVAL', `DEVICE_SET_IRQS payload has ${p.length} bytes, needs ${L.sizeof}`, 'irq_set');
    const v = payloadView(p);
    const argsz = v.getUint32(L.argsz, true);
    if (argsz < L.sizeof) fail('EINVAL', `argsz must be at least ${L.sizeof}`, 'irq_set.argsz');
    this.irqs.setIrqs(
      { flags: v.getUint32(L.flags, true), index: v.getUint32(L.index, true), start: v.getUint32(L.start, true), count: v.getUint32(L.count, true), data: p.subarray(L.sizeof) },
      fds,
    );
    return {};
  }

  private writeMulti(p: Buffer): Reply {
    const L = Layout.writeMulti;
    if (!this.clientCaps?.writeMultiple) fail('EINVAL', 'write_multiple was not negotiated', 'command');
    if (p.length < L.entries) fail('EINVAL', 'REGION_WRITE_MULTI payload is shorter than its count', 'write_multi');
    const count = p.readBigUInt64LE(L.count);
    if (count > BigInt(L.maxEntries) || p.length !== L.entries + Number(count) * L.entrySize) {
      fail('EINVAL', `${count} entries do not match a ${p.length}-byte payload (at most ${L.maxEntries})`, 'write_multi.wr_cnt');
    }
    let done = 0;
    for (let i = 0; i < Number(count); i++) {
      const at = L.entries + i * L.entrySize;
      const offset = p.readBigUInt64LE(at);
      const region = p.readUInt32LE(at + 8);
      const n = p.readUInt32LE(at + 12);
      if (n > 8) fail('EINVAL', `entry ${i} writes ${n} bytes; at most 8`, `write_multi.wrs[${i}].count`);
      if (this.server.regionTable.write(region, offset, p.subarray(at + 16, at + 16 + n)) !== 0) break;
      done++;
    }
    const out = Buffer.alloc(8);
    out.writeBigUInt64LE(BigInt(done), 0);
    return { payload: out };
  }

  private feature(p: Buffer): Reply {
    const L = Layout.feature;
    if (p.length < L.data) fail('EINVAL', `DEVICE_FEATURE payload has ${p.length} bytes, needs ${L.data}`, 'feature');
    const argsz = p.readUInt32LE(L.argsz);
    const flags = p.readUInt32LE(L.flags);
    const index = flags & Feature.MASK;
    const get = (flags & Feature.GET) !== 0;
    const set = (flags & Feature.SET) !== 0;
    const probe = (flags & Feature.PROBE) !== 0;
    if ((flags & ~(Feature.MASK | Feature.GET | Feature.SET | Feature.PROBE)) !== 0) fail('EINVAL', 'unknown flag bits', 'feature.flags');
    if (get && set && !probe) fail('EINVAL', 'GET and SET together need PROBE', 'feature.flags');
    if (!get && !set && !probe) fail('EINVAL', 'one of GET, SET or PROBE is required', 'feature.flags');
    const data = p.subarray(L.data);
    const echo = (): Reply => ({ payload: Buffer.from(p) });
    switch (index) {
      case Feature.DMA_LOGGING_START:
      case Feature.DMA_LOGGING_STOP: {
        if (get) fail('ENOTSUP', 'DMA logging start/stop support SET only', 'feature.flags');
        if (probe) return echo();
        const C = Layout.dmaLoggingControl;
        if (index === Feature.DMA_LOGGING_STOP) {
          this.dma.loggingStop();
          return echo();
        }
        if (data.length < C.ranges) fail('EINVAL', 'DMA_LOGGING_START data is shorter than 16 bytes', 'feature.data');
        const n = data.readUInt32LE(C.numRanges);
        if (data.length !== C.ranges + n * C.rangeSize) fail('EINVAL', `${n} ranges do not match ${data.length} bytes of data`, 'feature.data.num_ranges');
        const ranges = [...Array(n).keys()].map((i) => ({ iova: data.readBigUInt64LE(C.ranges + i * C.rangeSize), length: data.readBigUInt64LE(C.ranges + i * C.rangeSize + 8) }));
        const chosen = this.dma.loggingStart(data.readBigUInt64LE(C.pageSize), ranges);
        const out = Buffer.from(p);
        out.writeBigUInt64LE(chosen, L.data + C.pageSize);
        return { payload: out };
      }
      case Feature.DMA_LOGGING_REPORT: {
        if (set) fail('ENOTSUP', 'DMA logging report supports GET only', 'feature.flags');
        if (probe) return echo();
        const R = Layout.dmaLoggingReport;
        if (data.length < R.bitmap) fail('EINVAL', 'DMA_LOGGING_REPORT data is shorter than 24 bytes', 'feature.data');
        const iova = data.readBigUInt64LE(R.iova);
        const length = data.readBigUInt64LE(R.length);
        const pageSize = data.readBigUInt64LE(R.pageSize);
        if (pageSize === 0n || (pageSize & (pageSize - 1n)) !== 0n) fail('EINVAL', 'must be a power of two', 'feature.data.page_size');
        const pages = (length + pageSize - 1n) / pageSize;
        const bitmapBytes = Number(((pages + 63n) / 64n) * 8n);
        const needed = L.data + R.bitmap + bitmapBytes;
        if (bitmapBytes > this.server.options.maxDataXferSize) fail('E2BIG', `a ${bitmapBytes}-byte bitmap exceeds the transfer limit`, 'feature.data.length');
        const out = Buffer.alloc(argsz >= needed ? needed : L.data + R.bitmap);
        p.copy(out, 0, 0, L.data + R.bitmap);
        out.writeUInt32LE(needed, L.argsz);
        // A reply too small for the bitmap reports nothing, so nothing is cleared.
        if (argsz >= needed) this.dma.loggingReport(iova, length, pageSize, out.subarray(L.data + R.bitmap));
        return { payload: out };
      }
      case Feature.MIGRATION:
      case Feature.MIG_DEVICE_STATE:
        if (!this.migration) return fail('ENOTSUP', 'this server offers no migration', 'feature.flags');
        return { payload: this.migration.feature(index, flags, argsz, p) };
      default:
        return fail('ENOTSUP', `feature ${index} is not supported`, 'feature.flags');
    }
  }

  /** True when twin-socket mode was negotiated. */
  get twinSocket(): boolean {
    return this.twin;
  }
}


function tryClose(fd: number): void {
  try {
    closeFd(fd);
  } catch {
    // Already closed or never valid; nothing to release.
  }
}

/** What REGION_INFO says about one region. */
export interface RegionDescription {
  /** READ/WRITE/MMAP flags (CAPS is added when capabilities follow). */
  flags: number;
  /** Size in bytes (0 for an absent region). */
  size: number;
  /** mmap offset within `fd`. */
  offset: number;
  /** The fd to mmap, when the region is mappable. */
  fd: number | null;
  /** True when only some areas are mappable (a sparse-mmap capability follows). */
  sparse: boolean;
  /** Mappable areas, relative to the region. */
  areas: readonly { offset: number; size: number }[];
}

/** Serves one device over vfio-user; one client at a time. */
export class VfioUserServer {
  /** Effective options (defaults filled in). */
  readonly options: Required<VfioUserServerOptions>;
  /** The device's native dispatch table (shared by successive sessions). */
  readonly regionTable: NativeRegionTable;
  private listenFd: number | null = null;
  private listener: FdWatcher | null = null;
  private socketPath: string | null = null;
  private current: VfioUserSession | null = null;
  private waiting: number[] = [];
  /** Connections being refused (an error reply, then an orderly end). */
  private readonly refusing = new Set<NativeConnection>();
  private idleWaiters: (() => void)[] = [];
  private shuttingDown = false;
  /** Write-watch events of sessions that have ended (compare mode, found at sync points). */
  private pastWriteWatchEvents = 0;
  /** Connection counters of sessions that have ended. */
  private readonly pastConnections: Record<string, number> = {};
  private readonly sessionListeners: ((event: 'connect' | 'disconnect', session: VfioUserSession, reason?: string) => void)[] = [];

  /**
   * Prepares to serve `device` (it is realized here).
   * @param device the device model
   * @param options limits and behaviour
   */
  constructor(
    readonly device: PciDevice,
    options: VfioUserServerOptions = {},
  ) {
    const maxDataXferSize = options.maxDataXferSize ?? CAPABILITY_DEFAULTS.maxDataXferSize;
    if (!Number.isInteger(maxDataXferSize) || maxDataXferSize < 4096 || maxDataXferSize > 64 << 20) {
      fail('EINVAL', 'must be an integer in [4096, 64 MiB]', 'maxDataXferSize');
    }
    const maxMsgFds = options.maxMsgFds ?? 16;
    if (!Number.isInteger(maxMsgFds) || maxMsgFds < 1 || maxMsgFds > 253) fail('EINVAL', 'must be an integer in [1, 253]', 'maxMsgFds');
    const maxDmaMaps = options.maxDmaMaps ?? CAPABILITY_DEFAULTS.maxDmaMaps;
    if (!Number.isInteger(maxDmaMaps) || maxDmaMaps < 1 || maxDmaMaps > 65535) fail('EINVAL', 'must be an integer in [1, 65535]', 'maxDmaMaps');
    const dmaLayout = options.dmaLayout ?? 'auto';
    if (dmaLayout !== 'auto' && dmaLayout !== 'spec' && dmaLayout !== 'qemu') fail('EINVAL', 'must be "auto", "spec" or "qemu"', 'dmaLayout');
    const ms = (field: keyof VfioUserServerOptions, fallback: number): number => {
      const v = options[field] ?? fallback;
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 86_400_000) fail('EINVAL', `must be an integer number of ms in [0, 86400000], got ${String(v)}`, field);
      return v;
    };
    const maxWaitingClients = options.maxWaitingClients ?? 16;
    if (!Number.isInteger(maxWaitingClients) || maxWaitingClients < 0 || maxWaitingClients > 1024) fail('EINVAL', 'must be an integer in [0, 1024]', 'maxWaitingClients');
    this.options = {
      maxDataXferSize,
      maxMsgFds,
      maxDmaMaps,
      dmaLayout,
      dmaTimeoutMs: options.dmaTimeoutMs ?? 5000,
      twinSocket: options.twinSocket ?? true,
      messageTimeoutMs: ms('messageTimeoutMs', 5000),
      replyTimeoutMs: ms('replyTimeoutMs', 10_000),
      drainMs: ms('drainMs', 2000),
      maxWaitingClients,
      ioThread: options.ioThread ?? true,
      blockingServe: options.blockingServe ?? true,
      migrationFlags: options.migrationFlags ?? MigrationFlag.STOP_COPY | MigrationFlag.P2P | MigrationFlag.PRE_COPY,
      log: options.log ?? (() => {}),
      warn: options.warn ?? options.log ?? (() => {}),
    };
    if (this.options.drainMs === 0) fail('EINVAL', 'must be positive (the wait for the peer\'s end of stream is always bounded)', 'drainMs');
    const mf = this.options.migrationFlags;
    const all = MigrationFlag.STOP_COPY | MigrationFlag.P2P | MigrationFlag.PRE_COPY;
    if (!Number.isInteger(mf) || (mf !== 0 && ((mf & MigrationFlag.STOP_COPY) === 0 || (mf & ~all) !== 0))) {
      fail('EINVAL', 'must be 0 or STOP_COPY with optional P2P and PRE_COPY (VFIO_MIGRATION_* bits)', 'migrationFlags');
    }
    device.realize();
    this.regionTable = createRegionTable(device, { maxAccess: maxDataXferSize, onError: (e) => this.log(`device error: ${(e as Error).stack ?? String(e)}`) });
    // The I/O thread serves register accesses under the table's lock; device code outside
    // handlers takes it through PciDevice.exclusive.
    if (this.options.ioThread) device.useAccessLock(this.regionTable);
  }

  /** Writes a log line through the configured logger. */
  log(line: string): void {
    this.options.log(line);
  }

  /** Listens on a new socket at `path` (mode 0600). A stale socket file (nobody listening) is replaced. */
  listen(path: string): void {
    if (this.listenFd !== null) fail('EBUSY', 'already listening', 'path');
    if (existsSync(path)) {
      if (!lstatSync(path).isSocket()) fail('EEXIST', `${path} exists and is not a socket`, 'path');
      let live = false;
      try {
        closeFd(connectUnix(path, { nonBlocking: false }));
        live = true;
      } catch {
        // Nobody accepted: a leftover from a process that died.
      }
      if (live) fail('EADDRINUSE', `a server is already listening on ${path}`, 'path');
      unlinkSync(path);
    }
    this.listenFd = listenUnix(path, { backlog: 64 });
    this.socketPath = path;
    this.watchListener();
  }

  /**
   * Serves on an inherited socket (`--fd`): a listening socket (clients are accepted from it), or
   * one already connected to a client. Returns which it was.
   */
  serveFd(fd: number): 'listening' | 'connected' {
    if (this.listenFd !== null) fail('EBUSY', 'already listening', 'fd');
    let first: number | null;
    try {
      first = acceptUnix(fd);
    } catch (e) {
      // accept() on a connected stream socket fails with EINVAL.
      if (!isErrno(e, 'EINVAL')) throw e;
      this.startSession(fd);
      return 'connected';
    }
    this.listenFd = fd;
    this.watchListener();
    if (first !== null) this.startSession(first);
    return 'listening';
  }

  private watchListener(): void {
    this.listener = new FdWatcher(this.listenFd!, () => this.acceptPending());
    this.listener.start({ readable: true });
  }

  private acceptPending(): void {
    for (;;) {
      let fd: number | null;
      try {
        fd = acceptUnix(this.listenFd!);
      } catch (e) {
        this.log(`accept failed: ${(e as Error).message}`);
        return;
      }
      if (fd === null) return;
      if (this.current) {
        // One client per device socket (the protocol does not multiplex clients). A reconnecting
        // client can be accepted before we have read the old connection's EOF, so a few wait
        // their turn instead of being refused.
        if (this.waiting.length >= this.options.maxWaitingClients) this.pruneWaiting();
        if (this.waiting.length >= this.options.maxWaitingClients) {
          this.log(`refusing a client: one is connected and ${this.waiting.length} are waiting`);
          this.refuse(fd, 'EBUSY', 'the device is in use and the waiting queue is full');
        } else {
          this.waiting.push(fd);
        }
        continue;
      }
      this.startSession(fd);
    }
  }

  /** Drops waiting clients that have already hung up (they would only be served an EOF). */
  private pruneWaiting(): void {
    const revents = pollFds(this.waiting.map((fd) => ({ fd, events: POLLRDHUP })), 0);
    this.waiting = this.waiting.filter((fd, i) => {
      const gone = (revents[i]! & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) !== 0;
      if (gone) tryClose(fd);
      return !gone;
    });
  }

  /**
   * Refuses a client the way a peer can read: every request it sends before our end of stream gets
   * an error reply (`code`), then an orderly end (our EOF, its EOF awaited within `drainMs`). A
   * client that sends nothing gets our end of stream after `drainMs`.
   */
  private refuse(fd: number, code: 'EBUSY' | 'ESHUTDOWN', why: string): void {
    let conn: NativeConnection;
    const errno = errnoOf(code);
    let timer: NodeJS.Timeout | null = null;
    try {
      conn = new NativeConnectionClass(fd, {
        regionTable: this.regionTable,
        onMessage: (_command, _msgId, _flags, _payload, fds) => {
          for (const f of fds) tryClose(f);
          return { error: errno, close: true };
        },
        onClose: () => {
          if (timer) clearTimeout(timer);
          this.refusing.delete(conn);
          this.log(`refused client gone (${why})`);
          this.checkIdle();
        },
        maxMessageSize: 64 * 1024,
        maxFds: this.options.maxMsgFds,
        maxDataXfer: Math.min(this.options.maxDataXferSize, 32 * 1024),
        messageTimeoutMs: this.options.messageTimeoutMs,
        replyTimeoutMs: this.options.replyTimeoutMs,
        drainMs: this.options.drainMs,
      });
    } catch (e) {
      this.log(`refusing a client: ${(e as Error).message}`);
      tryClose(fd);
      return;
    }
    this.refusing.add(conn);
    conn.start();
    timer = setTimeout(() => conn.closeGracefully(`refused: ${why}`), this.options.drainMs);
    timer.unref();
  }

  private startSession(fd: number): void {
    const session = new VfioUserSession(this, fd, (s, reason) => {
      this.pastWriteWatchEvents += s.writeWatch.events;
      for (const [k, v] of Object.entries(s.stats().connection)) this.pastConnections[k] = (this.pastConnections[k] ?? 0) + v;
      if (this.current === s) this.current = null;
      this.log(`session ended: ${reason}`);
      for (const l of [...this.sessionListeners]) l('disconnect', s, reason);
      const next = this.waiting.shift();
      if (next !== undefined && this.current === null && this.listenFd !== null && !this.shuttingDown) this.startSession(next);
      this.checkIdle();
    });
    this.current = session;
    this.log('client connected');
    for (const l of [...this.sessionListeners]) l('connect', session);
  }

  /** The connected session, if any. */
  get session(): VfioUserSession | null {
    return this.current;
  }

  /** Subscribes to connect/disconnect events. */
  onSession(listener: (event: 'connect' | 'disconnect', session: VfioUserSession, reason?: string) => void): void {
    this.sessionListeners.push(listener);
  }

  /** What the device did over this server's life: DMA bytes, write-watch events, where accesses were served. */
  deviceStats(): { dmaBytesRead: number; dmaBytesWritten: number; writeWatchEvents: number; regions: RegionTableStats; connections: Record<string, number> } {
    const connections = { ...this.pastConnections };
    if (this.current) for (const [k, v] of Object.entries(this.current.stats().connection)) connections[k] = (connections[k] ?? 0) + v;
    return {
      dmaBytesRead: this.device.dmaStats.bytesRead,
      dmaBytesWritten: this.device.dmaStats.bytesWritten,
      writeWatchEvents: this.pastWriteWatchEvents + (this.current?.writeWatch.events ?? 0),
      regions: this.regionTable.stats(),
      connections,
    };
  }


  /** The socket path, when listening on one. */
  get path(): string | null {
    return this.socketPath;
  }

  /** Describes region `index` as REGION_INFO reports it. */
  describeRegion(index: number): RegionDescription {
    const device = this.device;
    if (index === PciRegion.CONFIG) {
      return { flags: RegionFlag.READ | RegionFlag.WRITE, size: device.config.size, offset: 0, fd: null, sparse: false, areas: [] };
    }
    const r = index <= PciRegion.ROM ? device.region(index) : null;
    if (!r) return { flags: 0, size: 0, offset: 0, fd: null, sparse: false, areas: [] };
    let flags: number = RegionFlag.READ | (index === PciRegion.ROM ? 0 : RegionFlag.WRITE);
    const fd = r.backing?.fd ?? null;
    // MMAP only when there is something to map and an fd to map it with: never a false promise.
    const mappable = fd !== null && r.mmapAreas.length > 0;
    if (mappable) flags |= RegionFlag.MMAP;
    return {
      flags,
      size: r.size,
      offset: mappable ? r.backing!.fdOffset : 0,
      fd: mappable ? fd : null,
      sparse: mappable && !r.fullyMappable,
      areas: mappable ? r.mmapAreas : [],
    };
  }

  /**
   * Stops serving, as a well-behaved peer: the socket file goes first (no new clients), the
   * session's requests already sent are answered and its connection ends in order (see
   * {@link VfioUserSession.end}), waiting clients are refused with ESHUTDOWN the same way. Device
   * state is kept. Resolves once every connection has ended (each within `drainMs` of its last
   * reply). Idempotent.
   */
  shutdown(): Promise<void> {
    if (!this.shuttingDown) {
      this.shuttingDown = true;
      this.stopListening();
      for (const fd of this.waiting) this.refuse(fd, 'ESHUTDOWN', 'the server is shutting down');
      this.waiting = [];
      this.current?.requestRelease();
      this.current?.end('the server is shutting down');
    }
    return new Promise((resolve) => {
      this.idleWaiters.push(resolve);
      this.checkIdle();
    });
  }

  /** Starts {@link shutdown} without waiting for it. */
  close(): void {
    void this.shutdown();
  }

  private stopListening(): void {
    this.listener?.close();
    this.listener = null;
    if (this.listenFd !== null) tryClose(this.listenFd);
    this.listenFd = null;
    if (this.socketPath !== null) {
      try {
        unlinkSync(this.socketPath);
      } catch {
        // Already gone.
      }
      this.socketPath = null;
    }
  }

  private checkIdle(): void {
    if (!this.shuttingDown || this.current !== null || this.refusing.size > 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}

