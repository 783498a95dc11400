/**
 * A synchronous vfio-user client: the VMM side of the protocol, behaving like QEMU's
 * `vfio-user-pci` (hw/vfio-user/) and following the spec (QEMU docs/interop/vfio-user.rst).
 *
 * It runs in the caller's thread and blocks like a vCPU thread: every call sends a command and
 * waits (with poll(2), bounded by a timeout) for its reply. While it waits, and while it waits for
 * an interrupt, it serves the server-to-client commands DMA_READ and DMA_WRITE against the guest
 * RAM it has registered, on the main socket or on the twin socket the server handed over in the
 * VERSION reply. Tests, the probe, benchmarks and scripted guest drivers use it; it is also meant
 * to catch server bugs, so it checks every reply against the spec and never guesses.
 *
 * Failure model (as QEMU's proxy): an error reply fails the call with a {@link VfioUserError}
 * carrying the server's errno; a malformed reply whose bytes could still be consumed fails the
 * call with `EPROTO` and leaves the connection usable; a violation that breaks the stream (a
 * header that cannot be framed, a reply to no outstanding request, a command on the wrong
 * socket) or the server closing the connection makes the connection unusable: that call and every
 * later one fails, until {@link VfioUserClient.close}.
 * @module
 */
import { MdevError, checkInt, describe } from '../../src/errors.js';
import { eventfdCreate, eventfdRead, setNonBlocking } from '../../src/native/fd.js';
import { PAGE_SIZE, mmapFd, munmap } from '../../src/native/mmap.js';
import { POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, pollFds, type PollEntry } from '../../src/native/poll.js';
import { MAX_FDS_PER_MESSAGE, connectUnix, peerCredentials } from '../../src/native/socket.js';
import { createMemfdBacking } from '../../src/ram.js';
import type { RegionAccessor } from '../../src/regions.js';
import { CAPABILITY_DEFAULTS, Command, DmaFlag, Feature, HEADER_SIZE, HeaderFlag, IrqSetFlag, Layout, PciIrq, PciRegion, RegionFlag, encodeHeader, formatCapabilities, parseCapabilities, type Capabilities, type DmaAccessLayout, type Header } from './protocol.js';
import { AccessSize, DeviceInfo, DmaMapArgs, DmaRange, DmaServiceStats, DmaUnmapArgs, DmaUnmapReply, FeatureReply, GuestRam, IoFdSubRegion, IrqInfoReply, MappedArea, ProtocolVersion, RawMessage, RegionInfo, RegionIoFds, RegionMapping, RequestOptions, SetIrqsArgs, VfioUserClientOptions, VfioUserError, WriteMultiEntry } from './client/types.js';
import { DEFAULT_MAX_MSG_FDS, DEFAULT_TIMEOUT_MS, EMPTY, MAX_ARGSZ_ATTEMPTS, MAX_RETRY_ARGSZ, MAX_VERSION_JSON, PROPOSED_MAX_DMA_MAPS, PROPOSED_PGSIZES, SPEC_KEYS, U64_MAX, accessValue, checkAccessSize, checkBytes, checkFds, checkTimeout, checkU32, closeAll, commandName, encoder, optBool, optionsOf, protoError, toU64, utf8, valueBytes, view } from './client/support.js';
import { Channel, Incoming } from './client/channel.js';

import { Window, releaseWindow, resolveWindows, serveDmaRequest, type DmaService } from './client/guest-ram.js';
import { checkAccessEcho, parseRegionCaps } from './client/replies.js';

export * from './client/types.js';

interface Awaiting {
  msgId: number;
  command: number;
  maxPayload: number;
  reply: Incoming | null;
}

interface RegionMappingState extends RegionMapping {
  buffers: ArrayBuffer[];
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/**
 * A vfio-user client connection. Create one with {@link VfioUserClient.connect} (or
 * {@link VfioUserClient.fromSocket}); every method blocks until the server replies or the
 * timeout expires (`ETIMEDOUT`). Release everything with {@link VfioUserClient.close}.
 */
export class VfioUserClient {
  /** The negotiated protocol version. */
  readonly version: ProtocolVersion;
  /** The capabilities the server announced (spec defaults where it said nothing). */
  readonly serverCapabilities: Capabilities;
  /** The capabilities this client proposed, as sent (spec key names). */
  readonly proposedCapabilities: Readonly<Record<string, unknown>>;
  /** Keys of the server's VERSION JSON that the spec does not define (ignored, as QEMU does). */
  readonly unknownCapabilities: readonly string[];
  /** When server requests are served (see {@link VfioUserClientOptions.dmaService}). */
  readonly dmaService: 'interleaved' | 'between-requests';
  /** Server requests that arrived while a request of ours waited ('between-requests' service). */
  private heldRequests: { ch: Channel; msg: Incoming }[] = [];
  /** Layout used for DMA_READ/DMA_WRITE. */
  readonly dmaLayout: DmaAccessLayout;
  /** Counters of served server-to-client requests. */
  readonly dmaStats: DmaServiceStats = { reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, rejected: 0, lastRejection: null };
  /** Config space (region 7) as a byte accessor, e.g. for `formatLspci`. */
  readonly configAccessor: RegionAccessor;

  private readonly main: Channel;
  private twin: Channel | null = null;
  private readonly timeoutMs: number;
  private readonly maxMsgFds: number;
  private readonly maxDataXferSize: number;
  private nextMsgId = 0;
  private awaiting: Awaiting | null = null;
  private readonly abandoned = new Map<number, number>();
  private failure: MdevError | null = null;
  private isClosed = false;
  private windows: Window[] = [];
  private readonly regionFds = new Map<number, number>();
  private readonly regionSizes = new Map<number, bigint>();
  private readonly ioFds = new Map<number, number[]>();
  private readonly irqFds = new Map<number, number[]>();
  private readonly mappings = new Map<number, RegionMappingState>();
  private loggingControl: Uint8Array | null = null;
  private late = 0;

  /**
   * Connects to the server socket at `path` and negotiates the version (VERSION). On any
   * negotiation failure the connection is closed and the error thrown.
   * @throws `EPROTO` naming the field when the VERSION reply breaks the spec's rules; a
   *   {@link VfioUserError} when the server refuses; errno errors of connect
   */
  static connect(path: string, options?: VfioUserClientOptions): VfioUserClient {
    if (typeof path !== 'string' || path === '') throw new MdevError('EINVAL', `must be a socket path, got ${describe(path)}`, 'path');
    const o = optionsOf(options);
    // Blocking connect: it waits for room in a busy server's listen backlog instead of EAGAIN;
    // fromSocket() makes the socket non-blocking afterwards.
    const fd = connectUnix(path, { nonBlocking: false });
    return VfioUserClient.fromSocket(fd, o as VfioUserClientOptions);
  }

  /**
   * Negotiates over an already connected AF_UNIX stream socket (the spec's `--fd` convention, or
   * one end of a socketpair). The client takes ownership of `fd` and makes it non-blocking.
   */
  static fromSocket(fd: number, options?: VfioUserClientOptions): VfioUserClient {
    checkInt('fd', fd, 0, 0x7fffffff);
    // On failure the constructor has already closed everything it took, the socket included.
    return new VfioUserClient(fd, optionsOf(options));
  }

  private constructor(fd: number, o: Record<string, unknown>) {
    let maxMsgFds = DEFAULT_MAX_MSG_FDS;
    let maxDataXferSize: number = CAPABILITY_DEFAULTS.maxDataXferSize;
    let timeoutMs = DEFAULT_TIMEOUT_MS;
    let layout: DmaAccessLayout = 'spec';
    let twin = false;
    let multi = true;
    let service: 'interleaved' | 'between-requests' = 'interleaved';
    let qemu = false;
    try {
      if (o['maxMsgFds'] !== undefined) maxMsgFds = checkInt('options.maxMsgFds', o['maxMsgFds'], 0, MAX_FDS_PER_MESSAGE);
      if (o['maxDataXferSize'] !== undefined) maxDataXferSize = checkInt('options.maxDataXferSize', o['maxDataXferSize'], 1, 2 ** 31);
      if (o['timeoutMs'] !== undefined) timeoutMs = checkTimeout('options.timeoutMs', o['timeoutMs']);
      if (o['dmaLayout'] !== undefined) {
        if (o['dmaLayout'] !== 'spec' && o['dmaLayout'] !== 'qemu') throw new MdevError('EINVAL', `must be 'spec' or 'qemu', got ${describe(o['dmaLayout'])}`, 'options.dmaLayout');
        layout = o['dmaLayout'];
      }
      if (o['emulate'] !== undefined) {
        if (o['emulate'] !== 'qemu') throw new MdevError('EINVAL', `must be 'qemu', got ${describe(o['emulate'])}`, 'options.emulate');
        qemu = true;
        if (o['dmaLayout'] === undefined) layout = 'qemu';
        service = 'between-requests';
      }
      if (o['dmaService'] !== undefined) {
        if (o['dmaService'] !== 'interleaved' && o['dmaService'] !== 'between-requests') {
          throw new MdevError('EINVAL', `must be 'interleaved' or 'between-requests', got ${describe(o['dmaService'])}`, 'options.dmaService');
        }
        service = o['dmaService'];
      }
      twin = optBool(o, 'twinSocket', false);
      if (qemu && twin) throw new MdevError('EINVAL', 'QEMU does not support twin-socket mode', 'options.twinSocket');
      multi = optBool(o, 'writeMultiple', true);
      setNonBlocking(fd, true);
    } catch (e) {
      closeAll([fd]);
      throw e;
    }
    this.maxMsgFds = maxMsgFds;
    this.maxDataXferSize = maxDataXferSize;
    this.timeoutMs = timeoutMs;
    this.dmaLayout = layout;
    this.dmaService = service;
    this.main = new Channel('main', fd, maxMsgFds);
    const client = this;
    this.configAccessor = {
      read(offset: number, out: Uint8Array): void {
        out.set(client.regionRead(PciRegion.CONFIG, offset, out.length));
      },
      write(offset: number, data: Uint8Array): void {
        client.regionWrite(PciRegion.CONFIG, offset, data);
      },
    };
    const proposed: Record<string, unknown> = {
      max_msg_fds: maxMsgFds,
      max_data_xfer_size: maxDataXferSize,
      max_dma_maps: PROPOSED_MAX_DMA_MAPS,
      pgsizes: PROPOSED_PGSIZES,
      write_multiple: multi,
    };
    if (twin) proposed['twin_socket'] = { supported: true };
    // QEMU 10.2 also proposes its (pre-v2) migration capability.
    if (qemu) proposed['migration'] = { pgsize: 4096, max_bitmap_size: 256 * 1024 * 1024 };
    this.proposedCapabilities = proposed;
    try {
      const r = this.negotiate(proposed);
      this.version = r.version;
      this.serverCapabilities = r.caps;
      this.unknownCapabilities = r.unknown;
    } catch (e) {
      this.close();
      throw e;
    }
  }

  // -------------------------------------------------------------------------------------------
  // State
  // -------------------------------------------------------------------------------------------

  /** True after {@link close}, or once the server closed the connection. */
  get closed(): boolean {
    return this.isClosed || this.failure?.code === 'ECONNRESET';
  }

  /** Why the connection became unusable (server gone or a stream-breaking violation), else null. */
  get failed(): MdevError | null {
    return this.failure;
  }

  /** Whether twin-socket mode was negotiated. */
  get twinSocket(): boolean {
    return this.twin !== null;
  }

  /** Replies that arrived after their call had timed out, and were discarded. */
  get lateReplies(): number {
    return this.late;
  }

  /** The main socket's fd (owned by the client), for tests that inspect it. */
  get socketFd(): number {
    return this.main.fd;
  }

  // -------------------------------------------------------------------------------------------
  // Version negotiation
  // -------------------------------------------------------------------------------------------

  private negotiate(proposed: Record<string, unknown>): { version: ProtocolVersion; caps: Capabilities; unknown: string[] } {
    const json = encoder.encode(formatCapabilities(proposed));
    const payload = new Uint8Array(Layout.version.json + json.length + 1);
    const dv = view(payload);
    dv.setUint16(Layout.version.major, 0, true);
    dv.setUint16(Layout.version.minor, 0, true);
    payload.set(json, Layout.version.json);
    const reply = this.transact(Command.VERSION, payload, { maxPayload: Layout.version.json + MAX_VERSION_JSON });
    const fds = reply.fds;
    let twinFd: number | null = null;
    try {
      const p = reply.payload;
      if (p.length < Layout.version.size) throw protoError('version', `reply payload is ${p.length} bytes, shorter than major and minor`);
      const rv = view(p);
      const major = rv.getUint16(Layout.version.major, true);
      const minor = rv.getUint16(Layout.version.minor, true);
      if (major !== 0) throw protoError('version.major', `server answered major ${major} to a proposal of 0`);
      if (minor > 0) throw protoError('version.minor', `server answered minor ${minor}, above the proposed 0`);
      let text = '';
      if (p.length > Layout.version.json) {
        const data = p.subarray(Layout.version.json);
        if (data[data.length - 1] !== 0) throw protoError('version.json', 'capabilities are not NUL-terminated');
        if (data.indexOf(0) !== data.length - 1) throw protoError('version.json', 'capabilities contain a NUL before the terminator');
        try {
          text = utf8.decode(data.subarray(0, data.length - 1));
        } catch {
          throw protoError('version.json', 'capabilities are not valid UTF-8');
        }
      }
      let caps: Capabilities;
      try {
        caps = parseCapabilities(text);
      } catch (e) {
        const err = e as MdevError;
        throw protoError(err.field ?? 'version.json', `server capabilities: ${err.message}`);
      }
      const unknown = this.checkSubset(text, proposed, caps);
      if (caps.twinSocket.supported) {
        const index = caps.twinSocket.fdIndex;
        if (index === undefined) throw protoError('capabilities.twin_socket.fd_index', 'twin_socket is supported but fd_index is missing');
        if (index >= fds.length) throw protoError('capabilities.twin_socket.fd_index', `fd_index ${index} but the reply carried ${fds.length} fd(s)`);
        twinFd = fds[index]!;
        try {
          peerCredentials(twinFd); // a connected AF_UNIX socket, or this throws
          setNonBlocking(twinFd, true);
        } catch (e) {
          throw protoError('capabilities.twin_socket.fd_index', `fd ${index} is not a connected UNIX socket (${(e as Error).message})`);
        }
      }
      const extra = fds.filter((fd) => fd !== twinFd);
      if (extra.length > 0) throw protoError('version.fds', `reply carried ${extra.length} fd(s) that no capability refers to`);
      if (twinFd !== null) this.twin = new Channel('twin', twinFd, this.maxMsgFds);
      return { version: { major, minor }, caps, unknown };
    } catch (e) {
      closeAll(fds);
      throw e;
    }
  }

  /**
   * The reply's capabilities must be a subset of the proposal: no spec key we did not propose,
   * no page size we did not offer, no more DMA windows than proposed, no write_multiple or
   * twin_socket support we did not ask for. Keys the spec does not define are returned (ignored).
   */
  private checkSubset(text: string, proposed: Record<string, unknown>, caps: Capabilities): string[] {
    const unknown: string[] = [];
    if (text === '') return unknown;
    const root = JSON.parse(text) as Record<string, unknown>;
    for (const k of Object.keys(root)) if (k !== 'capabilities') unknown.push(k);
    const c = root['capabilities'] as Record<string, unknown> | undefined;
    if (c === undefined) return unknown;
    for (const k of Object.keys(c)) {
      if (!SPEC_KEYS.has(k)) unknown.push(`capabilities.${k}`);
      else if (!Object.hasOwn(proposed, k)) throw protoError(`capabilities.${k}`, 'was not proposed, so it cannot be in the reply');
    }
    if (c['pgsizes'] !== undefined && (BigInt(caps.pgsizes) & ~BigInt(PROPOSED_PGSIZES)) !== 0n) {
      throw protoError('capabilities.pgsizes', `0x${caps.pgsizes.toString(16)} includes page sizes not proposed (0x${PROPOSED_PGSIZES.toString(16)})`);
    }
    if (caps.maxDmaMaps > PROPOSED_MAX_DMA_MAPS) throw protoError('capabilities.max_dma_maps', `${caps.maxDmaMaps} exceeds the proposed ${PROPOSED_MAX_DMA_MAPS}`);
    if (caps.writeMultiple && proposed['write_multiple'] !== true) throw protoError('capabilities.write_multiple', 'true although this client did not propose it');
    return unknown;
  }

  // -------------------------------------------------------------------------------------------
  // Messaging core
  // -------------------------------------------------------------------------------------------

  private usable(): void {
    if (this.isClosed) throw new MdevError('EBADF', 'the client is closed', 'client');
    if (this.failure !== null) throw new MdevError(this.failure.code, `connection unusable: ${this.failure.message}`, this.failure.field);
  }

  private fail(e: unknown): never {
    if (e instanceof MdevError && (e.code === 'ECONNRESET' || e.code === 'EPROTO') && this.failure === null) this.failure = e;
    throw e;
  }

  private channels(): Channel[] {
    return this.twin === null ? [this.main] : [this.main, this.twin];
  }

  private deadline(timeoutMs: number): number {
    return timeoutMs < 0 ? Infinity : performance.now() + timeoutMs;
  }

  /**
   * The event loop: sends queued messages, reads and dispatches incoming ones (serving DMA
   * requests), until `done()` holds or the deadline passes.
   * @returns true when done, false at the deadline
   */
  private run(done: () => boolean, deadline: number, extra?: PollEntry, onExtra?: (revents: number) => void): boolean {
    const chans = this.channels();
    try {
      for (;;) {
        if (this.awaiting === null && this.heldRequests.length > 0) this.serveHeld();
        for (const ch of chans) ch.flush();
        if (done()) return true;
        const entries: PollEntry[] = chans.map((ch) => ({ fd: ch.fd, events: POLLIN | (ch.out.length > 0 ? POLLOUT : 0) }));
        if (extra !== undefined) entries.push(extra);
        const left = deadline === Infinity ? -1 : Math.max(0, Math.ceil(deadline - performance.now()));
        const revents = pollFds(entries, left);
        for (let i = 0; i < chans.length; i++) {
          const r = revents[i]!;
          if (r & POLLNVAL) throw new MdevError('EBADF', `the ${chans[i]!.name} socket is not open`, 'connection');
          if (r & (POLLIN | POLLHUP | POLLERR)) this.drain(chans[i]!, done);
        }
        if (extra !== undefined && onExtra !== undefined && revents[chans.length]! !== 0) onExtra(revents[chans.length]!);
        for (const ch of chans) ch.flush();
        if (done()) return true;
        if (performance.now() >= deadline) return false;
      }
    } catch (e) {
      this.fail(e);
    }
  }

  /** Reads and dispatches messages from `ch` until it would block or `done()` holds. */
  private drain(ch: Channel, done: () => boolean): void {
    for (;;) {
      const msg = ch.read((h) => this.limitFor(ch, h));
      if (msg === null) return;
      this.dispatch(ch, msg);
      if (done()) return;
    }
  }

  private limitFor(ch: Channel, h: Header): number {
    const type = h.flags & HeaderFlag.TYPE_MASK;
    if (type === HeaderFlag.TYPE_REPLY) {
      return ch === this.main && this.awaiting !== null && h.msgId === this.awaiting.msgId ? this.awaiting.maxPayload : 0;
    }
    if (type === HeaderFlag.TYPE_COMMAND) {
      const l = this.dmaLayout === 'spec' ? Layout.dmaAccessSpec : Layout.dmaAccessQemu;
      if (h.command === Command.DMA_READ) return l.size + 16;
      if (h.command === Command.DMA_WRITE) return l.size + this.maxDataXferSize;
    }
    return 0;
  }

  private dispatch(ch: Channel, msg: Incoming): void {
    const h = msg.header;
    const type = h.flags & HeaderFlag.TYPE_MASK;
    if (type === HeaderFlag.TYPE_REPLY) {
      if (ch === this.main && this.awaiting !== null && h.msgId === this.awaiting.msgId && this.awaiting.reply === null) {
        this.awaiting.reply = msg;
        return;
      }
      closeAll(msg.fds);
      if (ch === this.main && this.abandoned.get(h.msgId) === h.command) {
        this.abandoned.delete(h.msgId);
        this.late++;
        return;
      }
      throw protoError('header.msg_id', `reply (msg_id ${h.msgId}, ${commandName(h.command)}) on the ${ch.name} socket matches no outstanding request`);
    }
    if (type !== HeaderFlag.TYPE_COMMAND) {
      closeAll(msg.fds);
      throw protoError('header.flags', `message type ${type} on the ${ch.name} socket is neither command nor reply`);
    }
    if (this.twin !== null && ch === this.main) {
      closeAll(msg.fds);
      throw protoError('header.command', `${commandName(h.command)} from the server arrived on the main socket although twin-socket mode was negotiated`);
    }
    if (this.dmaService === 'between-requests' && this.awaiting !== null) {
      this.heldRequests.push({ ch, msg });
      return;
    }
    this.serveCommand(ch, msg);
  }

  /** Serves the server requests held while a request of ours waited, in arrival order. */
  private serveHeld(): void {
    const held = this.heldRequests;
    this.heldRequests = [];
    for (const { ch, msg } of held) this.serveCommand(ch, msg);
  }

  private allocMsgId(): number {
    const id = this.nextMsgId;
    this.nextMsgId = (this.nextMsgId + 1) & 0xffff;
    this.abandoned.delete(id);
    return id;
  }

  private enqueue(ch: Channel, msgId: number, command: number, flags: number, payload: Uint8Array, fds: readonly number[] = [], error = 0): void {
    const bytes = new Uint8Array(HEADER_SIZE + payload.length);
    encodeHeader(bytes, { msgId, command, msgSize: bytes.length, flags, error });
    bytes.set(payload, HEADER_SIZE);
    ch.out.push({ bytes, fds, sent: 0 });
  }

  /**
   * Sends a command and waits for its reply (validated to match the command; an Error reply
   * becomes a {@link VfioUserError}). With `noReply`, waits only until it is sent.
   */
  private transact(command: number, payload: Uint8Array, opts: { fds?: readonly number[]; noReply: true; timeoutMs?: number; maxPayload: number }): null;
  private transact(command: number, payload: Uint8Array, opts: { fds?: readonly number[]; noReply?: false; timeoutMs?: number; maxPayload: number }): Incoming;
  private transact(command: number, payload: Uint8Array, opts: { fds?: readonly number[]; noReply?: boolean; timeoutMs?: number; maxPayload: number }): Incoming | null {
    this.usable();
    // Between two requests the VMM's main loop gets its turn: held server requests are served.
    if (this.heldRequests.length > 0) this.serveHeld();
    const msgId = this.allocMsgId();
    const noReply = opts.noReply === true;
    const fds = opts.fds ?? [];
    if (HEADER_SIZE + payload.length > 0xffffffff) throw new MdevError('E2BIG', 'message larger than 4 GiB', 'payload');
    this.enqueue(this.main, msgId, command, HeaderFlag.TYPE_COMMAND | (noReply ? HeaderFlag.NO_REPLY : 0), payload, fds);
    const outgoing = this.main.out[this.main.out.length - 1]!;
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    const deadline = this.deadline(timeoutMs);
    // A command that timed out before its first byte left is withdrawn; one that (partly) left
    // will be completed by later calls, and its late reply discarded.
    const withdraw = (): boolean => {
      const i = this.main.out.indexOf(outgoing);
      if (i < 0 || outgoing.sent > 0) return false;
      this.main.out.splice(i, 1);
      return true;
    };
    if (noReply) {
      if (!this.run(() => !this.main.out.includes(outgoing), deadline)) {
        withdraw();
        throw new MdevError('ETIMEDOUT', `${commandName(command)} (msg_id ${msgId}) could not be sent within ${timeoutMs} ms`, 'timeoutMs');
      }
      return null;
    }
    const awaiting: Awaiting = { msgId, command, maxPayload: opts.maxPayload, reply: null };
    this.awaiting = awaiting;
    try {
      if (!this.run(() => awaiting.reply !== null, deadline)) {
        throw new MdevError('ETIMEDOUT', `no reply to ${commandName(command)} (msg_id ${msgId}) within ${timeoutMs} ms`, 'timeoutMs');
      }
    } catch (e) {
      if (awaiting.reply === null && this.failure === null && !withdraw()) this.abandoned.set(msgId, command);
      throw e;
    } finally {
      this.awaiting = null;
    }
    const reply = awaiting.reply!;
    const h = reply.header;
    const bad = (field: string, message: string): never => {
      closeAll(reply.fds);
      throw protoError(field, `${commandName(command)} (msg_id ${msgId}): ${message}`);
    };
    if (h.command !== command) bad('header.command', `reply names ${commandName(h.command)}`);
    if (reply.fdsTruncated) bad('fds', `reply carried more than the ${this.maxMsgFds} fds this client accepts`);
    if (h.flags & HeaderFlag.ERROR) {
      if (reply.payload.length > 0 || reply.truncated) bad('header.msg_size', `error reply (errno ${h.error}) carries a ${h.msgSize - HEADER_SIZE}-byte payload; it must be header-only`);
      if (reply.fds.length > 0) bad('fds', `error reply (errno ${h.error}) carries fds`);
      throw new VfioUserError(command, msgId, h.error);
    }
    if (reply.truncated) bad('header.msg_size', `reply payload of ${h.msgSize - HEADER_SIZE} bytes exceeds the ${opts.maxPayload} bytes asked for`);
    return reply;
  }

  private noFds(reply: Incoming, command: number): void {
    if (reply.fds.length > 0) {
      closeAll(reply.fds);
      throw protoError('fds', `${commandName(command)} reply carried ${reply.fds.length} unexpected fd(s)`);
    }
  }

  /** An argsz-style request with the QEMU retry: when the reply's argsz exceeds ours, ask again with it. */
  private argszTransact(command: number, build: (argsz: number) => Uint8Array, argsz: number, minReply: number): { reply: Incoming; argsz: number } {
    for (let attempt = 1; ; attempt++) {
      const reply = this.transact(command, build(argsz), { maxPayload: argsz });
      if (reply.payload.length < Math.min(minReply, argsz)) {
        closeAll(reply.fds);
        throw protoError('argsz', `${commandName(command)} reply payload is ${reply.payload.length} bytes, shorter than ${minReply}`);
      }
      const replyArgsz = view(reply.payload).getUint32(0, true);
      if (replyArgsz < minReply) {
        closeAll(reply.fds);
        throw protoError('argsz', `${commandName(command)} reply argsz ${replyArgsz} is smaller than its fixed part (${minReply})`);
      }
      if (replyArgsz <= argsz) return { reply, argsz };
      closeAll(reply.fds);
      if (replyArgsz > MAX_RETRY_ARGSZ) throw protoError('argsz', `${commandName(command)} reply asks for argsz ${replyArgsz}, more than this client allows (${MAX_RETRY_ARGSZ})`);
      if (attempt >= MAX_ARGSZ_ATTEMPTS) throw protoError('argsz', `${commandName(command)} reply argsz kept growing (${replyArgsz} after ${attempt} attempts)`);
      argsz = replyArgsz;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Server-to-client commands
  // -------------------------------------------------------------------------------------------

  private serveCommand(ch: Channel, msg: Incoming): void {
    serveDmaRequest(this.dmaServiceContext, ch, msg);
  }

  /** What serving DMA requests needs of the client. */
  private get dmaServiceContext(): DmaService {
    return {
      layout: this.dmaLayout,
      stats: this.dmaStats,
      maxDataXferSize: this.maxDataXferSize,
      windows: this.windows,
      reply: (ch, msgId, command, flags, payload, fds, error) => this.enqueue(ch, msgId, command, flags, payload, fds, error),
    };
  }

  private resolve(address: bigint, length: number, write: boolean): Uint8Array[] | null {
    return resolveWindows(this.windows, address, length, write);
  }

  // -------------------------------------------------------------------------------------------
  // Device and region information
  // -------------------------------------------------------------------------------------------

  /** DEVICE_GET_INFO. */
  deviceInfo(): DeviceInfo {
    const L = Layout.deviceInfo;
    const { reply } = this.argszTransact(
      Command.DEVICE_GET_INFO,
      (argsz) => {
        const b = new Uint8Array(L.sizeof);
        view(b).setUint32(L.argsz, argsz, true);
        return b;
      },
      L.sizeof,
      L.sizeof,
    );
    this.noFds(reply, Command.DEVICE_GET_INFO);
    const dv = view(reply.payload);
    if (reply.payload.length < L.sizeof) throw protoError('argsz', `DEVICE_GET_INFO reply is ${reply.payload.length} bytes`);
    return { argsz: dv.getUint32(L.argsz, true), flags: dv.getUint32(L.flags, true), numRegions: dv.getUint32(L.numRegions, true), numIrqs: dv.getUint32(L.numIrqs, true) };
  }

  /** An info request `{argsz, flags 0, index, …}` of `L.sizeof` bytes, retried as argsz grows. */
  private indexedInfo(command: number, L: { sizeof: number; argsz: number; index: number }, index: number): Incoming {
    return this.argszTransact(
      command,
      (argsz) => {
        const b = new Uint8Array(L.sizeof);
        const dv = view(b);
        dv.setUint32(L.argsz, argsz, true);
        dv.setUint32(L.index, index, true);
        return b;
      },
      L.sizeof,
      L.sizeof,
    ).reply;
  }

  /**
   * DEVICE_GET_REGION_INFO, starting with argsz 32 and retrying with the server's argsz when the
   * capability chain needs more, as QEMU does. The chain is walked with loop and bounds checks.
   * @throws `EPROTO` naming the field for a malformed reply (bad chain, areas outside the region,
   *   MMAP without exactly one fd, fds without MMAP)
   */
  regionInfo(index: number): RegionInfo {
    checkU32('index', index);
    const L = Layout.regionInfo;
    const reply = this.indexedInfo(Command.DEVICE_GET_REGION_INFO, L, index);
    const fds = reply.fds;
    try {
      const p = reply.payload;
      if (p.length < L.sizeof) throw protoError('argsz', `reply is ${p.length} bytes, shorter than struct vfio_region_info`);
      const dv = view(p);
      const argsz = dv.getUint32(L.argsz, true);
      const flags = dv.getUint32(L.flags, true);
      const replyIndex = dv.getUint32(L.index, true);
      const capOffset = dv.getUint32(L.capOffset, true);
      const size = dv.getBigUint64(L.size, true);
      const offset = dv.getBigUint64(L.offset, true);
      if (replyIndex !== index) throw protoError('index', `reply is for region ${replyIndex}, asked for ${index}`);
      const info = p.subarray(0, Math.min(p.length, argsz));
      const { caps, sparse, areas, type } = parseRegionCaps(info, flags, capOffset, size);
      if (flags & RegionFlag.MMAP) {
        if (fds.length !== 1) throw protoError('fds', `region ${index} has the MMAP flag but the reply carried ${fds.length} fds (expected 1)`);
      } else if (fds.length > 0) {
        throw protoError('fds', `region ${index} is not MMAP but the reply carried ${fds.length} fd(s)`);
      }
      const fd = fds.length === 1 ? fds[0]! : null;
      const previous = this.regionFds.get(index);
      if (previous !== undefined) closeAll([previous]);
      if (fd !== null) this.regionFds.set(index, fd);
      else this.regionFds.delete(index);
      this.regionSizes.set(index, size);
      return { index, flags, size, offset, argsz, sparse, sparseAreas: areas, type, caps, fd, capsRaw: info.slice(L.sizeof) };
    } catch (e) {
      closeAll(fds);
      throw e;
    }
  }

  /** DEVICE_GET_IRQ_INFO. */
  irqInfo(index: number): IrqInfoReply {
    checkU32('index', index);
    const L = Layout.irqInfo;
    const reply = this.indexedInfo(Command.DEVICE_GET_IRQ_INFO, L, index);
    this.noFds(reply, Command.DEVICE_GET_IRQ_INFO);
    const dv = view(reply.payload);
    const replyIndex = dv.getUint32(L.index, true);
    if (replyIndex !== index) throw protoError('index', `reply is for IRQ index ${replyIndex}, asked for ${index}`);
    return { argsz: dv.getUint32(L.argsz, true), index, flags: dv.getUint32(L.flags, true), count: dv.getUint32(L.count, true) };
  }

  /**
   * DEVICE_GET_REGION_IO_FDS. The sub-region stride is (argsz - 16) / count: the spec's text says
   * (argsz - 32) / count, which contradicts its own layout (a 16-byte head then the array).
   * Sub-regions are checked against the region's size, as the spec asks of the client.
   */
  regionIoFds(index: number): RegionIoFds {
    checkU32('index', index);
    const L = Layout.regionIoFds;
    const reply = this.indexedInfo(Command.DEVICE_GET_REGION_IO_FDS, L, index);
    const fds = reply.fds;
    try {
      const p = reply.payload;
      const dv = view(p);
      const argsz = dv.getUint32(L.argsz, true);
      const flags = dv.getUint32(L.flags, true);
      const replyIndex = dv.getUint32(L.index, true);
      const count = dv.getUint32(L.count, true);
      if (replyIndex !== index) throw protoError('index', `reply is for region ${replyIndex}, asked for ${index}`);
      const subRegions: IoFdSubRegion[] = [];
      if (count > 0) {
        const stride = (argsz - L.sizeof) / count;
        if (!Number.isInteger(stride) || stride < L.subRegionSize) throw protoError('argsz', `argsz ${argsz} with count ${count} gives a sub-region stride of ${stride}, not a whole number >= ${L.subRegionSize}`);
        if (p.length < L.sizeof + stride * count) throw protoError('argsz', `reply holds ${p.length} bytes, ${count} sub-regions need ${L.sizeof + stride * count}`);
        if (fds.length === 0) throw protoError('fds', `${count} sub-region(s) but no fd`);
        const regionSize = this.regionSizes.get(index) ?? this.regionSizeFor(index);
        for (let i = 0; i < count; i++) {
          const at = L.sizeof + i * stride;
          const offset = dv.getBigUint64(at, true);
          const size = dv.getBigUint64(at + 8, true);
          const fdIndex = dv.getUint32(at + 16, true);
          if (fdIndex >= fds.length) throw protoError(`subRegions[${i}].fd_index`, `${fdIndex} but the reply carried ${fds.length} fd(s)`);
          if (offset > regionSize || size > regionSize - offset) throw protoError(`subRegions[${i}]`, `[${offset}, +${size}) is outside region ${index} (size ${regionSize})`);
          subRegions.push({ offset, size, fdIndex, type: dv.getUint32(at + 20, true), flags: dv.getUint32(at + 24, true), datamatch: dv.getBigUint64(at + 32, true), fd: fds[fdIndex]! });
        }
      }
      const previous = this.ioFds.get(index);
      if (previous !== undefined) closeAll(previous);
      this.ioFds.set(index, fds);
      return { argsz, index, flags, subRegions, fds };
    } catch (e) {
      closeAll(fds);
      throw e;
    }
  }

  private regionSizeFor(index: number): bigint {
    // regionInfo replaces the region fd it tracks; the size is all that is needed here.
    return this.regionInfo(index).size;
  }

  // -------------------------------------------------------------------------------------------
  // Region access
  // -------------------------------------------------------------------------------------------

  /**
   * Maps a region's fd (MMAP regions): the whole region when it is not sparse, else each sparse
   * area. Mapping again returns the existing mapping. Mappings are unmapped by
   * {@link unmapRegion} or {@link close}.
   * @throws `EINVAL` naming `index` for a region without the MMAP flag; `EINVAL` for areas whose
   *   file offset is not page aligned
   */
  mapRegion(index: number): RegionMapping {
    checkU32('index', index);
    const existing = this.mappings.get(index);
    if (existing !== undefined) return existing;
    const info = this.regionInfo(index);
    if (!(info.flags & RegionFlag.MMAP) || info.fd === null) throw new MdevError('EINVAL', `region ${index} is not mappable (flags 0x${info.flags.toString(16)})`, 'index');
    const writable = (info.flags & RegionFlag.WRITE) !== 0;
    const wanted = info.sparse ? info.sparseAreas : [{ offset: 0n, size: info.size }];
    const buffers: ArrayBuffer[] = [];
    const areas: MappedArea[] = [];
    try {
      wanted.forEach((a, i) => {
        if (a.size === 0n) return;
        const fileOffset = info.offset + a.offset;
        if (fileOffset % BigInt(PAGE_SIZE) !== 0n) throw new MdevError('EINVAL', `file offset 0x${fileOffset.toString(16)} is not a multiple of the page size`, info.sparse ? `sparseAreas[${i}].offset` : 'offset');
        const ab = mmapFd(info.fd!, a.size, { offset: fileOffset, writable, shared: true });
        buffers.push(ab);
        areas.push({ offset: a.offset, size: a.size, bytes: new Uint8Array(ab) });
      });
    } catch (e) {
      for (const ab of buffers) munmap(ab);
      throw e;
    }
    if (areas.length === 0) throw new MdevError('EINVAL', `region ${index} has nothing to map (size 0)`, 'index');
    const mapping: RegionMappingState = { index, bytes: info.sparse ? null : areas[0]!.bytes, areas, writable, buffers };
    this.mappings.set(index, mapping);
    return mapping;
  }

  /** Unmaps a region mapped with {@link mapRegion} (no-op when it is not mapped). */
  unmapRegion(index: number): void {
    const m = this.mappings.get(index);
    if (m === undefined) return;
    this.mappings.delete(index);
    for (const ab of m.buffers) munmap(ab);
  }

  /**
   * REGION_READ, split into requests of at most the server's max_data_xfer_size.
   * @returns exactly `length` bytes
   * @throws `EPROTO` when a reply does not echo offset, region and count or carries other than `count` bytes
   */
  regionRead(index: number, offset: number | bigint, length: number): Uint8Array {
    checkU32('index', index);
    const start = toU64('offset', offset);
    checkInt('length', length, 0, 2 ** 31);
    if (start + BigInt(length) > U64_MAX + 1n) throw new MdevError('ERANGE', 'offset + length exceeds 2^64', 'length');
    const out = new Uint8Array(length);
    const L = Layout.regionAccess;
    const chunk = this.serverCapabilities.maxDataXferSize;
    for (let done = 0; done < length; ) {
      const count = Math.min(chunk, length - done);
      const at = start + BigInt(done);
      const req = new Uint8Array(L.data);
      const dv = view(req);
      dv.setBigUint64(L.offset, at, true);
      dv.setUint32(L.region, index, true);
      dv.setUint32(L.count, count, true);
      const reply = this.transact(Command.REGION_READ, req, { maxPayload: L.data + count });
      this.noFds(reply, Command.REGION_READ);
      checkAccessEcho(reply.payload, Command.REGION_READ, at, index, count, L.data + count);
      out.set(reply.payload.subarray(L.data), done);
      done += count;
    }
    return out;
  }

  /**
   * REGION_WRITE, split into requests of at most the server's max_data_xfer_size. With
   * `noReply` the requests carry No_reply and the call returns once they are sent.
   */
  regionWrite(index: number, offset: number | bigint, data: Uint8Array, options?: { noReply?: boolean }): void {
    checkU32('index', index);
    const start = toU64('offset', offset);
    checkBytes('data', data);
    const noReply = optBool(optionsOf(options), 'noReply', false);
    if (start + BigInt(data.length) > U64_MAX + 1n) throw new MdevError('ERANGE', 'offset + length exceeds 2^64', 'data');
    const L = Layout.regionAccess;
    const chunk = this.serverCapabilities.maxDataXferSize;
    for (let done = 0; done < data.length; ) {
      const count = Math.min(chunk, data.length - done);
      const at = start + BigInt(done);
      const req = new Uint8Array(L.data + count);
      const dv = view(req);
      dv.setBigUint64(L.offset, at, true);
      dv.setUint32(L.region, index, true);
      dv.setUint32(L.count, count, true);
      req.set(data.subarray(done, done + count), L.data);
      if (noReply) {
        this.transact(Command.REGION_WRITE, req, { noReply: true, maxPayload: 0 });
      } else {
        const reply = this.transact(Command.REGION_WRITE, req, { maxPayload: L.data });
        this.noFds(reply, Command.REGION_WRITE);
        checkAccessEcho(reply.payload, Command.REGION_WRITE, at, index, count, L.data);
      }
      done += count;
    }
  }

  /**
   * REGION_WRITE_MULTI (needs the server's `write_multiple`), in messages of at most 200 writes.
   * @returns the number of writes the server reports completed (stops at the first short batch),
   *   or null with `noReply`
   * @throws `ENOTSUP` naming `write_multiple` when the server did not offer it
   */
  writeMulti(entries: readonly WriteMultiEntry[], options?: { noReply?: boolean }): number | null {
    if (!Array.isArray(entries)) throw new MdevError('EINVAL', `must be an array, got ${describe(entries)}`, 'entries');
    const noReply = optBool(optionsOf(options), 'noReply', false);
    if (!this.serverCapabilities.writeMultiple) throw new MdevError('ENOTSUP', 'the server did not offer REGION_WRITE_MULTI', 'write_multiple');
    const L = Layout.writeMulti;
    const checked = entries.map((e, i) => {
      const region = checkU32(`entries[${i}].region`, e.region);
      const offset = toU64(`entries[${i}].offset`, e.offset);
      const data = checkBytes(`entries[${i}].data`, e.data);
      if (data.length < 1 || data.length > 8) throw new MdevError('EINVAL', `must hold 1 to 8 bytes, got ${data.length}`, `entries[${i}].data`);
      return { region, offset, data };
    });
    let completed = 0;
    for (let i = 0; i < checked.length; i += L.maxEntries) {
      const batch = checked.slice(i, i + L.maxEntries);
      const req = new Uint8Array(L.entries + batch.length * L.entrySize);
      const dv = view(req);
      dv.setBigUint64(L.count, BigInt(batch.length), true);
      batch.forEach((e, j) => {
        const at = L.entries + j * L.entrySize;
        dv.setBigUint64(at, e.offset, true);
        dv.setUint32(at + 8, e.region, true);
        dv.setUint32(at + 12, e.data.length, true);
        req.set(e.data, at + 16);
      });
      if (noReply) {
        this.transact(Command.REGION_WRITE_MULTI, req, { noReply: true, maxPayload: 0 });
        continue;
      }
      const reply = this.transact(Command.REGION_WRITE_MULTI, req, { maxPayload: 8 });
      this.noFds(reply, Command.REGION_WRITE_MULTI);
      if (reply.payload.length !== 8) throw protoError('wr_cnt', `REGION_WRITE_MULTI reply is ${reply.payload.length} bytes, expected 8`);
      const n = view(reply.payload).getBigUint64(0, true);
      if (n > BigInt(batch.length)) throw protoError('wr_cnt', `server completed ${n} of ${batch.length} writes`);
      completed += Number(n);
      if (Number(n) < batch.length) break;
    }
    return noReply ? null : completed;
  }

  // -------------------------------------------------------------------------------------------
  // The neutral guest-driver interface
  // -------------------------------------------------------------------------------------------

  /**
   * Reads `size` bytes of memory BAR `bar` at `offset`, little-endian. A mapped area (after
   * {@link mapRegion}) is read directly, as a guest's access to an mmapped BAR never traps;
   * anything else is a REGION_READ.
   * @returns a number for 1, 2 and 4 bytes, a bigint for 8
   */
  mmioRead(bar: number, offset: number | bigint, size: 1 | 2 | 4): number;
  /** Reads 8 bytes of a memory BAR. */
  mmioRead(bar: number, offset: number | bigint, size: 8): bigint;
  /** Reads 1, 2, 4 or 8 bytes of a memory BAR. */
  mmioRead(bar: number, offset: number | bigint, size: AccessSize): number | bigint;
  mmioRead(bar: number, offset: number | bigint, size: AccessSize): number | bigint {
    checkInt('bar', bar, PciRegion.BAR0, PciRegion.BAR5);
    checkAccessSize('size', size, [1, 2, 4, 8]);
    const at = toU64('offset', offset);
    const mapped = this.mappedBytes(bar, at, size, false);
    return accessValue(mapped !== null ? mapped.slice() : this.regionRead(bar, at, size), size);
  }

  /** Writes `size` bytes of memory BAR `bar` at `offset` (directly into a writable mapped area, else REGION_WRITE). */
  mmioWrite(bar: number, offset: number | bigint, size: AccessSize, value: number | bigint): void {
    checkInt('bar', bar, PciRegion.BAR0, PciRegion.BAR5);
    checkAccessSize('size', size, [1, 2, 4, 8]);
    const at = toU64('offset', offset);
    const bytes = valueBytes('value', value, size);
    const mapped = this.mappedBytes(bar, at, size, true);
    if (mapped !== null) mapped.set(bytes);
    else this.regionWrite(bar, at, bytes);
  }

  /** Reads 1, 2 or 4 bytes of I/O BAR `bar` (always REGION_READ: I/O BARs are never mapped). */
  pioRead(bar: number, offset: number | bigint, size: 1 | 2 | 4): number {
    checkInt('bar', bar, PciRegion.BAR0, PciRegion.BAR5);
    checkAccessSize('size', size, [1, 2, 4]);
    return accessValue(this.regionRead(bar, toU64('offset', offset), size), size) as number;
  }

  /** Writes 1, 2 or 4 bytes of I/O BAR `bar` (REGION_WRITE). */
  pioWrite(bar: number, offset: number | bigint, size: 1 | 2 | 4, value: number): void {
    checkInt('bar', bar, PciRegion.BAR0, PciRegion.BAR5);
    checkAccessSize('size', size, [1, 2, 4]);
    this.regionWrite(bar, toU64('offset', offset), valueBytes('value', value, size));
  }

  /** Reads 1, 2 or 4 bytes of config space (region 7). */
  cfgRead(offset: number, size: 1 | 2 | 4): number;
  /** Reads 8 bytes of config space. */
  cfgRead(offset: number, size: 8): bigint;
  /** Reads 1, 2, 4 or 8 bytes of config space. */
  cfgRead(offset: number, size: AccessSize): number | bigint;
  cfgRead(offset: number, size: AccessSize): number | bigint {
    checkU32('offset', offset);
    checkAccessSize('size', size, [1, 2, 4, 8]);
    return accessValue(this.regionRead(PciRegion.CONFIG, offset, size), size);
  }

  /** Writes 1, 2, 4 or 8 bytes of config space (region 7). */
  cfgWrite(offset: number, size: AccessSize, value: number | bigint): void {
    checkU32('offset', offset);
    checkAccessSize('size', size, [1, 2, 4, 8]);
    this.regionWrite(PciRegion.CONFIG, offset, valueBytes('value', value, size));
  }

  private mappedBytes(index: number, offset: bigint, size: number, write: boolean): Uint8Array | null {
    const m = this.mappings.get(index);
    if (m === undefined || (write && !m.writable)) return null;
    for (const a of m.areas) {
      if (offset >= a.offset && offset + BigInt(size) <= a.offset + a.size) {
        const from = Number(offset - a.offset);
        return a.bytes.subarray(from, from + size);
      }
    }
    return null;
  }

  // -------------------------------------------------------------------------------------------
  // Guest RAM and DMA windows
  // -------------------------------------------------------------------------------------------

  /**
   * Creates `size` bytes of guest RAM at DMA address `address`: a sealed memfd mapped here
   * (`ram.bytes`), registered with DMA_MAP. With `withFd` (default) the memfd goes with the
   * message so the server can map it; without, the server must use DMA_READ/DMA_WRITE, which
   * this client serves from the same bytes.
   * @param address aligned to the negotiated page size
   * @param size a positive multiple of the page size
   * @param options `readOnly` maps it without the WRITE flag: server writes are refused;
   *   `share: false` plays QEMU's `share=off`: the client's (the guest's) view is a private
   *   copy-on-write mapping of the memfd it passes, so the server sees none of the guest's writes
   * @throws `EEXIST` for overlap with existing guest RAM (before anything is sent); `ENOSPC` past
   *   the server's max_dma_maps; `ENOTSUP` when the server accepts no fds and `withFd` is set
   */
  addGuestRam(address: bigint | number, size: number, options?: { withFd?: boolean; readOnly?: boolean; share?: boolean }): GuestRam {
    const o = optionsOf(options);
    const withFd = optBool(o, 'withFd', true);
    const readOnly = optBool(o, 'readOnly', false);
    const share = optBool(o, 'share', true);
    const addr = toU64('address', address);
    const page = this.dmaPageSize();
    checkInt('size', size, 1, Number.MAX_SAFE_INTEGER);
    if (addr % BigInt(page) !== 0n) throw new MdevError('EINVAL', `0x${addr.toString(16)} is not aligned to the DMA page size ${page}`, 'address');
    if (size % page !== 0 || size % PAGE_SIZE !== 0) throw new MdevError('EINVAL', `${size} is not a multiple of the page size`, 'size');
    const end = addr + BigInt(size);
    if (end > U64_MAX + 1n) throw new MdevError('ERANGE', 'address + size exceeds 2^64', 'size');
    if (this.windows.some((w) => addr < w.end && w.address < end)) throw new MdevError('EEXIST', `[0x${addr.toString(16)}, +0x${size.toString(16)}) overlaps existing guest RAM`, 'address');
    if (this.windows.length >= this.serverCapabilities.maxDmaMaps) throw new MdevError('ENOSPC', `the server accepts at most ${this.serverCapabilities.maxDmaMaps} DMA windows`, 'address');
    if (withFd && this.serverCapabilities.maxMsgFds < 1) throw new MdevError('ENOTSUP', 'the server accepts no fds (max_msg_fds 0)', 'withFd');
    this.usable();
    const backing = createMemfdBacking(size, `mdevkit-guest-ram-${addr.toString(16)}`);
    try {
      this.dmaMap({ address: addr, size, flags: DmaFlag.READ | (readOnly ? 0 : DmaFlag.WRITE), offset: 0, ...(withFd ? { fd: backing.fd } : {}) });
    } catch (e) {
      backing.release();
      throw e;
    }
    let bytes = backing.bytes;
    let privateView: ArrayBuffer | null = null;
    if (!share) {
      privateView = mmapFd(backing.fd, size, { writable: true, shared: false });
      bytes = new Uint8Array(privateView);
    }
    const ram: GuestRam = { address: addr, size, bytes, fd: backing.fd, sharedWithServer: withFd, readOnly };
    this.windows.push({ address: addr, end, bytes, writable: !readOnly, ram, backing, privateView });
    this.windows.sort((a, b) => (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
    return ram;
  }

  /**
   * Removes guest RAM added with {@link addGuestRam} (DMA_UNMAP with the exact address and size),
   * then releases it. While the unmap is in flight, DMA requests to it are still served.
   * @throws `EINVAL` naming `address` when no guest RAM has exactly this address and size
   */
  removeGuestRam(address: bigint | number, size: number): void {
    const addr = toU64('address', address);
    checkInt('size', size, 1, Number.MAX_SAFE_INTEGER);
    const w = this.windows.find((x) => x.address === addr && x.ram.size === size);
    if (w === undefined) throw new MdevError('EINVAL', `no guest RAM at [0x${addr.toString(16)}, +0x${size.toString(16)})`, 'address');
    const echo = this.dmaUnmap({ address: addr, size });
    if (echo.address !== addr || echo.size !== BigInt(size)) throw protoError('address', `DMA_UNMAP reply echoes [0x${echo.address.toString(16)}, +0x${echo.size.toString(16)})`);
    this.windows = this.windows.filter((x) => x !== w);
    releaseWindow(w);
  }

  /** The guest RAM windows, sorted by address. */
  guestRam(): GuestRam[] {
    return this.windows.map((w) => w.ram);
  }

  /** Reads guest RAM locally (as the guest would), across adjacent windows. @throws `EFAULT` outside guest RAM */
  guestRead(address: bigint | number, length: number): Uint8Array {
    const addr = toU64('address', address);
    checkInt('length', length, 0, 2 ** 31);
    const segs = this.resolve(addr, length, false);
    if (segs === null) throw new MdevError('EFAULT', `[0x${addr.toString(16)}, +${length}) is not guest RAM`, 'address');
    const out = new Uint8Array(length);
    let at = 0;
    for (const s of segs) {
      out.set(s, at);
      at += s.length;
    }
    return out;
  }

  /** Writes guest RAM locally (as the guest would), across adjacent windows. @throws `EFAULT` outside guest RAM */
  guestWrite(address: bigint | number, data: Uint8Array): void {
    const addr = toU64('address', address);
    checkBytes('data', data);
    const segs = this.resolve(addr, data.length, false);
    if (segs === null) throw new MdevError('EFAULT', `[0x${addr.toString(16)}, +${data.length}) is not guest RAM`, 'address');
    let at = 0;
    for (const s of segs) {
      s.set(data.subarray(at, at + s.length));
      at += s.length;
    }
  }

  /**
   * Raw DMA_MAP: sends exactly what it is given (no local window, no checks against the
   * negotiated limits), for conformance tests. The reply must have no payload.
   */
  dmaMap(args: DmaMapArgs): void {
    const a = optionsOf(args);
    const L = Layout.dmaMap;
    const req = new Uint8Array(L.sizeof);
    const dv = view(req);
    dv.setUint32(L.argsz, a['argsz'] === undefined ? L.sizeof : checkU32('args.argsz', a['argsz']), true);
    dv.setUint32(L.flags, a['flags'] === undefined ? DmaFlag.READ | DmaFlag.WRITE : checkU32('args.flags', a['flags']), true);
    dv.setBigUint64(L.offset, a['offset'] === undefined ? 0n : toU64('args.offset', a['offset']), true);
    dv.setBigUint64(L.address, toU64('args.address', a['address']), true);
    dv.setBigUint64(L.size, toU64('args.size', a['size']), true);
    const fds = a['fd'] === undefined ? [] : [checkInt('args.fd', a['fd'], 0, 0x7fffffff)];
    const reply = this.transact(Command.DMA_MAP, req, { fds, maxPayload: 0 });
    this.noFds(reply, Command.DMA_MAP);
  }

  /** Raw DMA_UNMAP; returns the entry the server echoes (it must be the 24-byte structure). */
  dmaUnmap(args: DmaUnmapArgs): DmaUnmapReply {
    const a = optionsOf(args);
    const L = Layout.dmaUnmap;
    const argsz = a['argsz'] === undefined ? L.sizeof : checkU32('args.argsz', a['argsz']);
    const req = new Uint8Array(L.sizeof);
    const dv = view(req);
    dv.setUint32(L.argsz, argsz, true);
    dv.setUint32(L.flags, a['flags'] === undefined ? 0 : checkU32('args.flags', a['flags']), true);
    dv.setBigUint64(L.address, toU64('args.address', a['address']), true);
    dv.setBigUint64(L.size, toU64('args.size', a['size']), true);
    const reply = this.transact(Command.DMA_UNMAP, req, { maxPayload: Math.max(argsz, L.sizeof) });
    this.noFds(reply, Command.DMA_UNMAP);
    if (reply.payload.length !== L.sizeof) throw protoError('argsz', `DMA_UNMAP reply is ${reply.payload.length} bytes, expected the ${L.sizeof}-byte entry`);
    const rv = view(reply.payload);
    return { argsz: rv.getUint32(L.argsz, true), flags: rv.getUint32(L.flags, true), address: rv.getBigUint64(L.address, true), size: rv.getBigUint64(L.size, true) };
  }

  private dmaPageSize(): number {
    const pg = this.serverCapabilities.pgsizes;
    return pg & -pg; // smallest page size offered
  }

  // -------------------------------------------------------------------------------------------
  // Interrupts
  // -------------------------------------------------------------------------------------------

  /**
   * Raw DEVICE_SET_IRQS. argsz is 20 plus the in-band bools; eventfds go as SCM_RIGHTS. No
   * checks against the server's limits, for conformance tests.
   */
  setIrqs(index: number, args: SetIrqsArgs): void {
    checkU32('index', index);
    const a = optionsOf(args);
    const flags = checkU32('args.flags', a['flags']);
    const start = checkU32('args.start', a['start']);
    const count = checkU32('args.count', a['count']);
    const fds = checkFds('args.fds', a['fds']);
    let bools: Uint8Array = EMPTY;
    if (a['bools'] !== undefined) {
      const b = a['bools'];
      if (b instanceof Uint8Array) {
        bools = b;
      } else if (Array.isArray(b)) {
        bools = new Uint8Array(b.length);
        b.forEach((x: unknown, i) => {
          if (typeof x !== 'boolean') throw new MdevError('EINVAL', `must be a boolean, got ${describe(x)}`, `args.bools[${i}]`);
          bools[i] = x ? 1 : 0;
        });
      } else {
        throw new MdevError('EINVAL', `must be a Uint8Array or boolean[], got ${describe(b)}`, 'args.bools');
      }
    }
    const L = Layout.irqSet;
    const req = new Uint8Array(L.sizeof + bools.length);
    const dv = view(req);
    dv.setUint32(L.argsz, req.length, true);
    dv.setUint32(L.flags, flags, true);
    dv.setUint32(L.index, index, true);
    dv.setUint32(L.start, start, true);
    dv.setUint32(L.count, count, true);
    req.set(bools, L.sizeof);
    const reply = this.transact(Command.DEVICE_SET_IRQS, req, { fds, maxPayload: 0 });
    this.noFds(reply, Command.DEVICE_SET_IRQS);
  }

  /** Binds a new eventfd as the INTx trigger (EVENTFD | TRIGGER). The client owns the eventfd. */
  enableIntx(): { trigger: number } {
    const [trigger] = this.bindEventfds(PciIrq.INTX, 1);
    return { trigger: trigger! };
  }

  /** Unmasks INTx (DATA_NONE | ACTION_UNMASK), as a VMM does at end of interrupt. */
  unmaskIntx(): void {
    this.setIrqs(PciIrq.INTX, { flags: IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_UNMASK, start: 0, count: 1 });
  }

  /** Binds `count` new eventfds as MSI triggers; returns them (owned by the client). */
  enableMsi(count: number): number[] {
    return this.bindEventfds(PciIrq.MSI, checkInt('count', count, 1, 32));
  }

  /** Binds `count` new eventfds as MSI-X triggers; returns them (owned by the client). */
  enableMsix(count: number): number[] {
    return this.bindEventfds(PciIrq.MSIX, checkInt('count', count, 1, 2048));
  }

  /** Disables every interrupt of `index` (DATA_NONE | TRIGGER, start 0, count 0) and closes its eventfds. */
  disableIrqs(index: number): void {
    this.setIrqs(index, { flags: IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER, start: 0, count: 0 });
    const fds = this.irqFds.get(index);
    this.irqFds.delete(index);
    if (fds !== undefined) closeAll(fds);
  }

  /**
   * Blocks until eventfd `fd` is signalled, serving DMA requests from the server meanwhile (a
   * device may read guest RAM before it raises the interrupt), and reads it.
   * @returns the counter read (the number of signals since the last read)
   * @throws `ETIMEDOUT` naming `timeoutMs`
   */
  waitForInterrupt(fd: number, timeoutMs: number): bigint {
    checkInt('fd', fd, 0, 0x7fffffff);
    checkTimeout('timeoutMs', timeoutMs);
    this.usable();
    let value: bigint | null = null;
    const ok = this.run(
      () => value !== null,
      this.deadline(timeoutMs),
      { fd, events: POLLIN },
      (revents) => {
        if (revents & POLLNVAL) throw new MdevError('EBADF', `fd ${fd} is not open`, 'fd');
        if (revents & (POLLIN | POLLERR | POLLHUP)) value = eventfdRead(fd);
      },
    );
    if (!ok) throw new MdevError('ETIMEDOUT', `eventfd ${fd} was not signalled within ${timeoutMs} ms`, 'timeoutMs');
    return value!;
  }

  /** Reads an eventfd without blocking: the signals since the last read (0n when none). */
  interruptCount(fd: number): bigint {
    checkInt('fd', fd, 0, 0x7fffffff);
    return eventfdRead(fd) ?? 0n;
  }

  /**
   * Serves server-to-client requests for up to `timeoutMs` (0: only what is already queued).
   * @returns the number of DMA requests handled (served or rejected)
   */
  serve(timeoutMs = 0): number {
    checkTimeout('timeoutMs', timeoutMs);
    this.usable();
    const before = this.dmaStats.reads + this.dmaStats.writes + this.dmaStats.rejected;
    this.run(() => false, this.deadline(timeoutMs));
    return this.dmaStats.reads + this.dmaStats.writes + this.dmaStats.rejected - before;
  }

  private bindEventfds(index: number, count: number): number[] {
    const perMessage = Math.min(this.serverCapabilities.maxMsgFds, MAX_FDS_PER_MESSAGE);
    if (perMessage < 1) throw new MdevError('ENOTSUP', 'the server accepts no fds (max_msg_fds 0)', 'max_msg_fds');
    const fds: number[] = [];
    try {
      for (let i = 0; i < count; i++) fds.push(eventfdCreate(0, { nonBlocking: true }));
      // Like QEMU, split a vector set that does not fit in one message by the server's max_msg_fds.
      for (let start = 0; start < count; start += perMessage) {
        const part = fds.slice(start, start + perMessage);
        this.setIrqs(index, { flags: IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER, start, count: part.length, fds: part });
      }
    } catch (e) {
      closeAll(fds);
      throw e;
    }
    const previous = this.irqFds.get(index);
    if (previous !== undefined) closeAll(previous);
    this.irqFds.set(index, fds);
    return fds;
  }

  // -------------------------------------------------------------------------------------------
  // Reset, features, DMA logging, migration
  // -------------------------------------------------------------------------------------------

  /** DEVICE_RESET (may take long on the server side; the client's timeout applies). */
  reset(): void {
    const reply = this.transact(Command.DEVICE_RESET, EMPTY, { maxPayload: 0 });
    this.noFds(reply, Command.DEVICE_RESET);
  }

  /**
   * Raw DEVICE_FEATURE. `argsz` defaults to 8 + data length, plus 4 KiB for GET; when the reply
   * says more is needed, the request is repeated with the larger argsz.
   */
  feature(flags: number, data: Uint8Array = EMPTY, argsz?: number): FeatureReply {
    checkU32('flags', flags);
    checkBytes('data', data);
    const L = Layout.feature;
    const first = argsz === undefined ? L.data + data.length + (flags & Feature.GET ? 4096 : 0) : checkU32('argsz', argsz);
    const { reply } = this.argszTransact(
      Command.DEVICE_FEATURE,
      (a) => {
        const b = new Uint8Array(L.data + data.length);
        const dv = view(b);
        dv.setUint32(L.argsz, a, true);
        dv.setUint32(L.flags, flags, true);
        b.set(data, L.data);
        return b;
      },
      first,
      L.data,
    );
    this.noFds(reply, Command.DEVICE_FEATURE);
    const dv = view(reply.payload);
    if (reply.payload.length < L.data) throw protoError('argsz', `DEVICE_FEATURE reply is ${reply.payload.length} bytes`);
    return { argsz: dv.getUint32(L.argsz, true), flags: dv.getUint32(L.flags, true), data: reply.payload.slice(L.data) };
  }

  /**
   * Starts DMA dirty logging (DMA_LOGGING_START, SET). An empty `ranges` logs everything.
   * @returns the page size the device chose (the reply may change the hint)
   */
  dmaLoggingStart(pageSize: number | bigint, ranges: readonly DmaRange[]): bigint {
    const ps = toU64('pageSize', pageSize);
    if (!Array.isArray(ranges)) throw new MdevError('EINVAL', `must be an array, got ${describe(ranges)}`, 'ranges');
    const L = Layout.dmaLoggingControl;
    const data = new Uint8Array(L.ranges + ranges.length * L.rangeSize);
    const dv = view(data);
    dv.setBigUint64(L.pageSize, ps, true);
    dv.setUint32(L.numRanges, ranges.length, true);
    ranges.forEach((r, i) => {
      dv.setBigUint64(L.ranges + i * L.rangeSize, toU64(`ranges[${i}].iova`, r.iova), true);
      dv.setBigUint64(L.ranges + i * L.rangeSize + 8, toU64(`ranges[${i}].length`, r.length), true);
    });
    const reply = this.feature(Feature.SET | Feature.DMA_LOGGING_START, data);
    if (reply.data.length < L.ranges) throw protoError('data', `DMA_LOGGING_START reply data is ${reply.data.length} bytes`);
    this.loggingControl = data;
    return view(reply.data).getBigUint64(L.pageSize, true);
  }

  /** Stops DMA dirty logging (DMA_LOGGING_STOP, SET) with the data of the last start. */
  dmaLoggingStop(): void {
    const data = this.loggingControl ?? new Uint8Array(Layout.dmaLoggingControl.ranges);
    this.feature(Feature.SET | Feature.DMA_LOGGING_STOP, data);
    this.loggingControl = null;
  }

  /**
   * Fetches the dirty bitmap of [iova, iova + length) at `pageSize` granularity
   * (DMA_LOGGING_REPORT, GET): bit i (LSB first in little-endian u64 words) is page i.
   * @throws `EPROTO` when the reply does not echo the request or sets bits past the range
   */
  dmaLoggingReport(iova: number | bigint, length: number | bigint, pageSize: number | bigint): Uint8Array {
    const start = toU64('iova', iova);
    const len = toU64('length', length);
    const ps = toU64('pageSize', pageSize);
    if (ps === 0n || (ps & (ps - 1n)) !== 0n) throw new MdevError('EINVAL', `must be a power of two, got ${ps}`, 'pageSize');
    if (len === 0n) throw new MdevError('EINVAL', 'must be > 0', 'length');
    const pages = (len + ps - 1n) / ps;
    const bitmapBytes = Number(((pages + 63n) / 64n) * 8n);
    const L = Layout.dmaLoggingReport;
    const data = new Uint8Array(L.bitmap);
    const dv = view(data);
    dv.setBigUint64(L.iova, start, true);
    dv.setBigUint64(L.length, len, true);
    dv.setBigUint64(L.pageSize, ps, true);
    const reply = this.feature(Feature.GET | Feature.DMA_LOGGING_REPORT, data, Layout.feature.data + L.bitmap + bitmapBytes);
    const r = reply.data;
    if (r.length < L.bitmap + bitmapBytes) throw protoError('data', `DMA_LOGGING_REPORT reply data is ${r.length} bytes, needs ${L.bitmap + bitmapBytes}`);
    const rv = view(r);
    if (rv.getBigUint64(L.iova, true) !== start || rv.getBigUint64(L.length, true) !== len || rv.getBigUint64(L.pageSize, true) !== ps) {
      throw protoError('data', 'DMA_LOGGING_REPORT reply does not echo iova, length and page_size');
    }
    const bitmap = r.slice(L.bitmap, L.bitmap + bitmapBytes);
    for (let bit = Number(pages); bit < bitmapBytes * 8; bit++) {
      if (bitmap[bit >> 3]! & (1 << (bit & 7))) throw protoError('bitmap', `bit ${bit} is set, past the ${pages} page(s) of the range`);
    }
    return bitmap;
  }

  /** The MIGRATION feature flags (GET): STOP_COPY, P2P, PRE_COPY bits. */
  migrationFlags(): bigint {
    const r = this.feature(Feature.GET | Feature.MIGRATION, EMPTY, Layout.feature.data + 8);
    if (r.data.length < 8) throw protoError('data', `MIGRATION reply data is ${r.data.length} bytes`);
    return view(r.data).getBigUint64(0, true);
  }

  /** The device's migration state (MIG_DEVICE_STATE, GET). */
  migrationState(): number {
    const r = this.feature(Feature.GET | Feature.MIG_DEVICE_STATE, EMPTY, Layout.feature.data + 8);
    if (r.data.length < 4) throw protoError('data', `MIG_DEVICE_STATE reply data is ${r.data.length} bytes`);
    return view(r.data).getUint32(0, true);
  }

  /** Moves the device to migration state `state` (MIG_DEVICE_STATE, SET; data_fd is unused and sent as 0). */
  setMigrationState(state: number): void {
    const data = new Uint8Array(8);
    view(data).setUint32(0, checkU32('state', state), true);
    this.feature(Feature.SET | Feature.MIG_DEVICE_STATE, data);
  }

  /**
   * MIG_DATA_READ of up to `size` bytes, in requests of at most the smaller of both sides'
   * max_data_xfer_size. A shorter result means the device has no more data.
   */
  migDataRead(size: number): Uint8Array {
    checkInt('size', size, 0, 2 ** 31);
    const L = Layout.migData;
    const chunk = Math.min(this.serverCapabilities.maxDataXferSize, this.maxDataXferSize);
    const parts: Uint8Array[] = [];
    let total = 0;
    while (total < size) {
      const want = Math.min(chunk, size - total);
      const req = new Uint8Array(L.data);
      const dv = view(req);
      dv.setUint32(L.argsz, L.data + want, true);
      dv.setUint32(L.size, want, true);
      const reply = this.transact(Command.MIG_DATA_READ, req, { maxPayload: L.data + want });
      this.noFds(reply, Command.MIG_DATA_READ);
      if (reply.payload.length < L.data) throw protoError('size', `MIG_DATA_READ reply is ${reply.payload.length} bytes`);
      const got = view(reply.payload).getUint32(L.size, true);
      if (got > want || reply.payload.length !== L.data + got) throw protoError('size', `MIG_DATA_READ reply size ${got} with ${reply.payload.length - L.data} data bytes for a request of ${want}`);
      parts.push(reply.payload.subarray(L.data));
      total += got;
      if (got < want) break;
    }
    const out = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  /** MIG_DATA_WRITE of `data`, in requests of at most the smaller max_data_xfer_size (argsz = 8 + size, as libvfio-user expects). */
  migDataWrite(data: Uint8Array): void {
    checkBytes('data', data);
    const L = Layout.migData;
    const chunk = Math.min(this.serverCapabilities.maxDataXferSize, this.maxDataXferSize);
    for (let done = 0; done < data.length; ) {
      const n = Math.min(chunk, data.length - done);
      const req = new Uint8Array(L.data + n);
      const dv = view(req);
      dv.setUint32(L.argsz, L.data + n, true);
      dv.setUint32(L.size, n, true);
      req.set(data.subarray(done, done + n), L.data);
      const reply = this.transact(Command.MIG_DATA_WRITE, req, { maxPayload: 0 });
      this.noFds(reply, Command.MIG_DATA_WRITE);
      done += n;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Conformance helpers
  // -------------------------------------------------------------------------------------------

  /**
   * Sends `bytes` as they are (no framing, no checks) on the main socket, with `fds`, and returns
   * once they are sent. Read any answer with {@link receiveRaw}: a reply arriving during a later
   * call would match no request of that call and break the connection.
   */
  sendRaw(bytes: Uint8Array, fds?: readonly number[]): void {
    checkBytes('bytes', bytes);
    const list = checkFds('fds', fds);
    if (bytes.length === 0) throw new MdevError('EINVAL', 'must not be empty', 'bytes');
    this.usable();
    this.main.out.push({ bytes, fds: list, sent: 0 });
    if (!this.run(() => this.main.out.length === 0, this.deadline(this.timeoutMs))) throw new MdevError('ETIMEDOUT', `raw message not sent within ${this.timeoutMs} ms`, 'timeoutMs');
  }

  /**
   * Sends a command with a fresh message id and the given payload, and returns its reply
   * unchanged (fds owned by the caller). DMA requests arriving meanwhile are served.
   * @returns the reply, or null with `noReply`
   * @throws {@link VfioUserError} (with `errno`) on an Error reply
   */
  request(command: number, payload: Uint8Array, options?: RequestOptions): RawMessage | null {
    checkInt('command', command, 0, 0xffff);
    checkBytes('payload', payload);
    const o = optionsOf(options);
    const fds = checkFds('options.fds', o['fds']);
    const noReply = optBool(o, 'noReply', false);
    const timeoutMs = o['timeoutMs'] === undefined ? this.timeoutMs : checkTimeout('options.timeoutMs', o['timeoutMs']);
    const maxPayload = o['maxReplyPayload'] === undefined ? Math.max(1 << 20, this.maxDataXferSize + 4096) : checkInt('options.maxReplyPayload', o['maxReplyPayload'], 0, 2 ** 31);
    if (noReply) {
      this.transact(command, payload, { fds, noReply: true, timeoutMs, maxPayload });
      return null;
    }
    const r = this.transact(command, payload, { fds, timeoutMs, maxPayload });
    return { header: r.header, payload: r.payload, fds: r.fds };
  }

  /**
   * Receives the next message on the main socket without interpreting it (a reply to
   * {@link sendRaw}, or a server command, which is then not served).
   * @param timeoutMs default the client's timeout
   * @param maxPayload payload bytes kept (the rest is read and dropped); default 1 MiB
   * @throws `ETIMEDOUT`; `ECONNRESET` on EOF
   */
  receiveRaw(timeoutMs?: number, maxPayload = 1 << 20): RawMessage {
    const t = timeoutMs === undefined ? this.timeoutMs : checkTimeout('timeoutMs', timeoutMs);
    checkInt('maxPayload', maxPayload, 0, 2 ** 31);
    this.usable();
    const deadline = this.deadline(t);
    try {
      for (;;) {
        this.main.flush();
        const msg = this.main.read(() => maxPayload);
        if (msg !== null) return { header: msg.header, payload: msg.payload, fds: msg.fds };
        const left = deadline === Infinity ? -1 : Math.max(0, Math.ceil(deadline - performance.now()));
        const [r] = pollFds([{ fd: this.main.fd, events: POLLIN | (this.main.out.length > 0 ? POLLOUT : 0) }], left);
        if (r! & POLLNVAL) throw new MdevError('EBADF', 'the main socket is not open', 'connection');
        if (r === 0 && performance.now() >= deadline) throw new MdevError('ETIMEDOUT', `no message within ${t} ms`, 'timeoutMs');
      }
    } catch (e) {
      if (e instanceof MdevError && e.code === 'ETIMEDOUT') throw e;
      this.fail(e);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Teardown
  // -------------------------------------------------------------------------------------------

  /**
   * Closes the connection and releases everything the client owns: region mappings, guest RAM
   * (unmapped and its memfds closed), region and I/O fds, interrupt eventfds, both sockets. The
   * server unmaps DMA and drops IRQ fds when the client goes away, so nothing is sent. Idempotent.
   */
  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    for (const index of [...this.mappings.keys()]) {
      try {
        this.unmapRegion(index);
      } catch {
        // Keep releasing the rest.
      }
    }
    for (const w of this.windows) releaseWindow(w);
    this.windows = [];
    closeAll([...this.regionFds.values()]);
    this.regionFds.clear();
    for (const fds of this.ioFds.values()) closeAll(fds);
    this.ioFds.clear();
    for (const fds of this.irqFds.values()) closeAll(fds);
    this.irqFds.clear();
    for (const ch of this.channels()) {
      ch.discardPartial();
      ch.out.length = 0;
      closeAll([ch.fd]);
    }
    this.twin = null;
  }
}

