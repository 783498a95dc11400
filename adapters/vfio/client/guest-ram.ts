/**
 * Guest RAM windows the client registers with DMA_MAP and serves DMA_READ/DMA_WRITE from.
 * @internal
 * @module
 */
import { munmap } from '../../../src/native/mmap.js';
import { type MemfdBacking } from '../../../src/ram.js';
import { errnoOf } from '../../../src/errors.js';
import { Command, HeaderFlag, Layout, type DmaAccessLayout } from '../protocol.js';
import type { Channel, Incoming } from './channel.js';
import { EMPTY, U64_MAX, closeAll, view } from './support.js';
import type { DmaServiceStats, GuestRam } from './types.js';

/** A DMA window of guest RAM the client serves DMA_READ/DMA_WRITE from. */
export interface Window {
  address: bigint;
  end: bigint;
  bytes: Uint8Array;
  writable: boolean;
  ram: GuestRam;
  backing: MemfdBacking;
  /** `share: false`: the client's own copy-on-write view. */
  privateView: ArrayBuffer | null;
}

export function releaseWindow(w: Window): void {
  if (w.privateView !== null) munmap(w.privateView);
  w.backing.release();
}

/** What serving DMA requests needs of the client that owns the guest RAM. */
export interface DmaService {
  /** The DMA_READ/DMA_WRITE layout the client speaks. */
  layout: DmaAccessLayout;
  /** Counters to update. */
  stats: DmaServiceStats;
  /** The largest count the client accepts. */
  maxDataXferSize: number;
  /** The guest RAM windows, sorted by address. */
  windows: readonly Window[];
  /** Queues a reply on `ch`. */
  reply(ch: Channel, msgId: number, command: number, flags: number, payload: Uint8Array, fds?: readonly number[], error?: number): void;
}

/**
 * Serves one DMA_READ or DMA_WRITE from the server against guest RAM, checked and answered as
 * the client's layout says (the spec's, or exactly as QEMU ≥ 10.1 does); rejections are
 * header-only error replies.
 */
export function serveDmaRequest(ctx: DmaService, ch: Channel, msg: Incoming): void {
  const h = msg.header;
  const noReply = (h.flags & HeaderFlag.NO_REPLY) !== 0;
  const hadFds = msg.fds.length > 0 || msg.fdsTruncated;
  closeAll(msg.fds);
  const qemu = ctx.layout === 'qemu';
  const l = qemu ? Layout.dmaAccessQemu : Layout.dmaAccessSpec;
  const p = msg.payload;
  let address = 0n;
  let count = 0n;
  const reject = (code: string): void => {
    ctx.stats.rejected++;
    ctx.stats.lastRejection = { command: h.command, address, count, code };
    if (!noReply) ctx.reply(ch, h.msgId, h.command, HeaderFlag.TYPE_REPLY | HeaderFlag.ERROR, EMPTY, [], errnoOf(code));
  };
  if (h.command !== Command.DMA_READ && h.command !== Command.DMA_WRITE) return reject('EINVAL');
  const isRead = h.command === Command.DMA_READ;
  if (hadFds) return reject('EINVAL');
  // QEMU measures both against its 16-byte struct; the spec's fixed part is 16 bytes too.
  if (p.length < (qemu && !isRead ? l.data : l.size)) return reject('EINVAL');
  const dv = view(p);
  address = dv.getBigUint64(l.address, true);
  count = l.countSize === 8 ? dv.getBigUint64(l.count, true) : BigInt(dv.getUint32(l.count, true));
  if (qemu) {
    // QEMU 10.2: DMA_READ needs msg_size >= 32 and count <= its max transfer size; DMA_WRITE
    // needs count <= msg_size - 32 (E2BIG), its data starting at byte 12 of the payload.
    if (isRead && count > BigInt(ctx.maxDataXferSize)) return reject('E2BIG');
    if (!isRead && (msg.truncated || count > BigInt(Math.max(0, p.length - l.size)))) return reject('E2BIG');
  } else {
    if (isRead && (msg.truncated || p.length !== l.size)) return reject('EINVAL');
    if (count > BigInt(ctx.maxDataXferSize)) return reject('E2BIG');
    if (!isRead && (msg.truncated || BigInt(p.length) !== BigInt(l.data) + count)) return reject('EINVAL');
  }
  const n = Number(count);
  const segments = resolveWindows(ctx.windows, address, n, !isRead);
  if (segments === null) return reject('EFAULT');
  if (isRead) {
    // QEMU's reply: its struct (16 bytes, data at 12) plus count bytes, the padding zeroed.
    const reply = new Uint8Array(l.size + n);
    const rv = view(reply);
    rv.setBigUint64(l.address, address, true);
    if (l.countSize === 8) rv.setBigUint64(l.count, count, true);
    else rv.setUint32(l.count, n, true);
    let at = l.data;
    for (const seg of segments) {
      reply.set(seg, at);
      at += seg.length;
    }
    ctx.stats.reads++;
    ctx.stats.bytesRead += n;
    if (!noReply) ctx.reply(ch, h.msgId, h.command, HeaderFlag.TYPE_REPLY, reply);
  } else {
    let at = l.data;
    for (const seg of segments) {
      seg.set(p.subarray(at, at + seg.length));
      at += seg.length;
    }
    ctx.stats.writes++;
    ctx.stats.bytesWritten += n;
    if (noReply) return;
    if (qemu) {
      // QEMU answers a DMA_WRITE with a bare header.
      ctx.reply(ch, h.msgId, h.command, HeaderFlag.TYPE_REPLY, EMPTY);
      return;
    }
    // DMA_WRITE reply: address and count. The spec's table gives count 4 bytes, an evident typo
    // for its request layout (libvfio-user replies with the same u64).
    const reply = new Uint8Array(l.data);
    const rv = view(reply);
    rv.setBigUint64(l.address, address, true);
    rv.setBigUint64(l.count, count, true);
    ctx.reply(ch, h.msgId, h.command, HeaderFlag.TYPE_REPLY, reply);
  }
}


/**
 * The guest RAM behind [address, address + length) as views, one per window crossed (adjacent
 * windows may be crossed), or null when any byte is outside guest RAM or (for writes) in a
 * read-only window. A zero-length access must still start inside a window.
 */
export function resolveWindows(windows: readonly Window[], address: bigint, length: number, write: boolean): Uint8Array[] | null {
  const end = address + BigInt(length);
  if (end > U64_MAX + 1n) return null;
  const out: Uint8Array[] = [];
  let cur = address;
  do {
    const w = windows.find((x) => x.address <= cur && cur < x.end);
    if (w === undefined || (write && !w.writable)) return null;
    const stop = end < w.end ? end : w.end;
    const from = Number(cur - w.address);
    out.push(w.bytes.subarray(from, from + Number(stop - cur)));
    cur = stop;
  } while (cur < end);
  return out;
}
