/**
 * One socket of a client connection: the outgoing queue and the incremental message reader.
 * @internal
 * @module
 */
import { MdevError } from '../../../src/errors.js';
import { recvMsg, sendMsg } from '../../../src/native/socket.js';
import { HEADER_SIZE, decodeHeader, type Header } from '../protocol.js';
import { RawMessage } from './types.js';
import { EMPTY, closeAll, protoError } from './support.js';

export interface Incoming extends RawMessage {
  /** The payload was longer than the limit: the rest was read and discarded. */
  truncated: boolean;
  /** More fds arrived than the client accepts; the excess were closed by the kernel. */
  fdsTruncated: boolean;
}

/** A message waiting to be (fully) sent. */
export interface Outgoing {
  bytes: Uint8Array;
  fds: readonly number[];
  sent: number;
}

/** The server closed the connection (EOF, EPIPE or ECONNRESET). */
export function peerClosed(detail: string): MdevError {
  return new MdevError('ECONNRESET', `the server closed the connection (${detail})`, 'connection');
}

/**
 * One socket of the connection: an outgoing queue (partial sends resume where they stopped, fds go
 * with the first byte) and an incremental reader that frames messages. It reads a header, then
 * exactly the rest of that message, so fds are never attributed to a neighbouring message; bytes
 * past the caller's limit are read and discarded so the stream stays in sync.
 */
export class Channel {
  readonly out: Outgoing[] = [];
  private readonly head = new Uint8Array(HEADER_SIZE);
  private headGot = 0;
  private header: Header | null = null;
  private body: Uint8Array = EMPTY;
  private keep = 0;
  private got = 0;
  private total = 0;
  private fds: number[] = [];
  private fdsTruncated = false;
  private static readonly scratch = new Uint8Array(64 * 1024);

  constructor(
    readonly name: 'main' | 'twin',
    readonly fd: number,
    private readonly maxFds: number,
  ) {}

  /** Sends as much of the queue as the socket takes; true when the queue is empty. */
  flush(): boolean {
    while (this.out.length > 0) {
      const o = this.out[0]!;
      let n: number | null;
      try {
        n = sendMsg(this.fd, o.sent === 0 ? o.bytes : o.bytes.subarray(o.sent), o.sent === 0 && o.fds.length > 0 ? o.fds : undefined);
      } catch (e) {
        const code = (e as { code?: string }).code;
        if (code === 'EPIPE' || code === 'ECONNRESET') throw peerClosed(`${code} on the ${this.name} socket`);
        throw e;
      }
      if (n === null) return false;
      o.sent += n;
      if (o.sent >= o.bytes.length) this.out.shift();
    }
    return true;
  }

  /**
   * Reads what is available without blocking. Returns a complete message, or null when the
   * socket has nothing more for now.
   * @param limitFor the largest payload to keep for a message with this header
   */
  read(limitFor: (h: Header) => number): Incoming | null {
    for (;;) {
      if (this.header === null) {
        if (!this.recv(this.head.subarray(this.headGot))) return null;
        if (this.headGot < HEADER_SIZE) continue;
        const h = decodeHeader(this.head);
        if (h.msgSize < HEADER_SIZE) {
          throw protoError('header.msg_size', `message size ${h.msgSize} on the ${this.name} socket is smaller than the header: the stream cannot be framed any more`);
        }
        this.header = h;
        this.total = h.msgSize - HEADER_SIZE;
        this.keep = Math.min(this.total, Math.max(0, limitFor(h)));
        this.body = this.keep > 0 ? new Uint8Array(this.keep) : EMPTY;
        this.got = 0;
      }
      if (this.got < this.total) {
        const target = this.got < this.keep ? this.body.subarray(this.got) : Channel.scratch.subarray(0, Math.min(Channel.scratch.length, this.total - this.got));
        if (!this.recv(target, true)) return null;
        if (this.got < this.total) continue;
      }
      const msg: Incoming = { header: this.header, payload: this.body, fds: this.fds, truncated: this.total > this.keep, fdsTruncated: this.fdsTruncated };
      this.header = null;
      this.headGot = 0;
      this.body = EMPTY;
      this.fds = [];
      this.fdsTruncated = false;
      return msg;
    }
  }

  /** Closes fds of a message still being assembled (on close). */
  discardPartial(): void {
    closeAll(this.fds);
    this.fds = [];
  }

  private recv(target: Uint8Array, body = false): boolean {
    let r;
    try {
      r = recvMsg(this.fd, target, this.maxFds);
    } catch (e) {
      // A peer that closes with our bytes still unread resets the connection instead of an EOF.
      if ((e as { code?: string }).code === 'ECONNRESET') throw peerClosed(`ECONNRESET on the ${this.name} socket`);
      throw e;
    }
    if (r === null) return false;
    if (r.fds.length > 0) {
      this.fds.push(...r.fds);
      if (this.fds.length > this.maxFds) this.fdsTruncated = true;
    }
    if (r.fdsTruncated) this.fdsTruncated = true;
    if (r.bytes === 0) {
      const where = this.header === null && this.headGot === 0 ? 'EOF' : 'EOF in the middle of a message';
      throw peerClosed(`${where} on the ${this.name} socket`);
    }
    if (body) this.got += r.bytes;
    else this.headGot += r.bytes;
    return true;
  }
}

