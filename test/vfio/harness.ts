/** Test harness: runs `mdevkit serve` in its own process (as a real deployment would) and talks to it over raw sockets. */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../../src/native/binding.js';
import { closeFd, setNonBlocking } from '../../src/native/fd.js';
import { connectUnix, recvMsg, sendMsg } from '../../src/native/socket.js';
import { FdWatcher } from '../../src/native/watcher.js';
import { Command, HEADER_SIZE, decodeHeader, encodeHeader, type Header } from '../../adapters/vfio/protocol.js';

export interface ServerProcess {
  /** Socket paths, one per device instance. */
  paths: string[];
  dir: string;
  proc: ChildProcess;
  /** Everything the server wrote to stderr so far. */
  stderr(): string;
  /** Everything the server wrote to stdout so far. */
  stdout(): string;
  /** Sends SIGTERM and resolves with the exit code. */
  stop(): Promise<number | null>;
}

/** Starts `mdevkit serve <device> --vfio-user <path>…` and resolves once it says it is serving. */
export async function startServer(options: { device?: string; sockets?: number; args?: string[] } = {}): Promise<ServerProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'mdevkit-vfio-'));
  const paths = [...Array(options.sockets ?? 1).keys()].map((i) => join(dir, `dev${i}.sock`));
  const cli = join(packageRoot(), 'dist', 'cli', 'main.js');
  const args = [cli, 'serve', options.device ?? 'edu', ...paths.flatMap((p) => ['--vfio-user', p]), '-v', ...(options.args ?? [])];
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (paths.every((p) => out.includes(`socket ${p}`))) resolve();
    });
    proc.once('exit', (code) => reject(new Error(`server exited (${code}) before serving: ${err}`)));
  });
  return {
    paths,
    dir,
    proc,
    stderr: () => err,
    stdout: () => out,
    async stop() {
      if (proc.exitCode === null && !proc.killed) proc.kill('SIGTERM');
      const code = await exited;
      rmSync(dir, { recursive: true, force: true });
      return code;
    },
  };
}

/** A message as bytes. */
export function message(header: Partial<Header> & { command: number }, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(HEADER_SIZE + payload.length);
  encodeHeader(b, { msgId: header.msgId ?? 1, command: header.command, msgSize: header.msgSize ?? b.length, flags: header.flags ?? 0, error: header.error ?? 0 });
  b.set(payload, HEADER_SIZE);
  return b;
}

/** The VERSION proposal QEMU sends (major 0, minor 0). */
export function versionMessage(caps: Record<string, unknown> = { max_msg_fds: 16, max_data_xfer_size: 1048576, pgsizes: 4096, max_dma_maps: 65535, write_multiple: true }, id = 1): Uint8Array {
  const json = Buffer.from(JSON.stringify({ capabilities: caps }) + '\0');
  const p = new Uint8Array(4 + json.length);
  p.set(json, 4);
  return message({ command: Command.VERSION, msgId: id }, p);
}

/** A raw, event-driven connection: send bytes, await whole replies. */
export class RawConnection {
  readonly fd: number;
  private buf = Buffer.alloc(0);
  private readonly watcher: FdWatcher;
  private waiters: (() => void)[] = [];
  eof = false;
  /** The server reset the connection (ECONNRESET) instead of ending it with EOF. */
  reset = false;
  fds: number[] = [];

  /** `read: false` plays a client that never reads what the server sends. */
  constructor(path: string, options: { read?: boolean } = {}) {
    // A blocking connect waits for room in the listen backlog instead of failing with EAGAIN.
    this.fd = connectUnix(path, { nonBlocking: false });
    setNonBlocking(this.fd, true);
    this.watcher = new FdWatcher(this.fd, () => this.pump());
    if (options.read !== false) this.watcher.start({ readable: true });
  }

  private pump(): void {
    const chunk = new Uint8Array(1 << 20);
    for (;;) {
      let r;
      try {
        r = recvMsg(this.fd, chunk, 16);
      } catch (e) {
        // ECONNRESET: the server closed with our data unread. Ends the stream, but is not an EOF.
        this.reset = (e as { code?: string }).code === 'ECONNRESET';
        r = { bytes: 0, fds: [] };
      }
      if (r === null) break;
      this.fds.push(...r.fds);
      if (r.bytes === 0) {
        this.eof = true;
        this.watcher.stop();
        break;
      }
      this.buf = Buffer.concat([this.buf, chunk.subarray(0, r.bytes)]);
    }
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Stops reading what the server sends (it stays queued in the socket). */
  stopReading(): void {
    this.watcher.stop();
  }

  /** Sends bytes; returns false if the server has already closed the connection. */
  send(bytes: Uint8Array, fds?: number[]): boolean {
    let off = 0;
    while (off < bytes.length) {
      let n: number | null;
      try {
        n = sendMsg(this.fd, bytes.subarray(off), off === 0 ? fds : undefined);
      } catch {
        return false; // EPIPE/ECONNRESET: the server closed the connection
      }
      if (n === null) throw new Error('socket full');
      off += n;
    }
    return true;
  }

  /** Resolves with the next whole message, or null at EOF. */
  async next(): Promise<{ header: Header; payload: Buffer } | null> {
    for (;;) {
      if (this.buf.length >= HEADER_SIZE) {
        const header = decodeHeader(this.buf);
        if (this.buf.length >= header.msgSize) {
          const payload = Buffer.from(this.buf.subarray(HEADER_SIZE, header.msgSize));
          this.buf = this.buf.subarray(header.msgSize);
          return { header, payload };
        }
      }
      if (this.eof) return null;
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  /** Resolves when the server has closed the connection (draining whatever it sent first). */
  async closed(): Promise<void> {
    while ((await this.next()) !== null) {
      // discard
    }
  }

  close(): void {
    this.watcher.close();
    for (const fd of this.fds) closeFd(fd);
    this.fds = [];
    closeFd(this.fd);
  }
}
