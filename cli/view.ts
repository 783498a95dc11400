/**
 * The live view (`mdevkit serve … --view [host:]port`): a small web page that shows a display
 * device's scanout as it changes, its mode, the frame counters and the device's trap statistics.
 * It is built on a {@link DisplayOutput} (the same picture `--display-png` writes), so it works on
 * every path that has one: vfio-user (VRAM page scan) and Xen (track_dirty_vram).
 *
 * Protocol, one WebSocket at `/ws`, server to page only:
 * - text, JSON: `{"type":"hello","protocol":1,"device":…,"tile":64}` once;
 *   `{"type":"mode","plane":{width,height,stride,offset,format,byteOrder,blanked}|null}` at the
 *   start and whenever the plane changes; `{"type":"stats","frames":{…},"device":{…}}` every
 *   `statsIntervalMs`.
 * - binary, little endian: an update — u32 sequence number, u16 tile count, u16 0, then per tile
 *   u16 x, u16 y, u16 width, u16 height and width·height·4 bytes of RGBA. A new page (or one that
 *   fell behind) gets every tile; afterwards only tiles whose pixels changed since the previous
 *   update are sent (compared with a copy of what was last sent).
 *
 * Security: it listens on loopback only unless `allowRemote` is set; requests must name the
 * listening host (`Host`, against DNS rebinding) and a WebSocket must come from the page's own
 * origin (`Origin`, against other sites' pages); only GET/HEAD of `/`, `/view.js`, `/view.css`
 * (and an empty `/favicon.ico`) and the `/ws` upgrade are answered, under a Content-Security-Policy
 * that allows the page's own script and connections only. Nothing the page sends can reach the
 * device: the view holds no reference to the device or the server, only to the output's picture
 * and a statistics function, and a client that sends any message is disconnected (close code
 * 1008; messages over 1 KiB are refused by the WebSocket layer before that).
 * @module
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { checkInt, MdevError } from '../src/errors.js';
import type { DisplayPlane } from '../src/display-device.js';
import type { ScanoutImage } from '../src/display.js';
import type { DisplayOutput, OutputRefresh } from './display-output.js';
import { VIEW_CSS, VIEW_HTML, VIEW_JS } from './view-page.js';

/** Where the view listens: `--view [host:]port`. */
export interface ViewAddress {
  /** Address to listen on (default 127.0.0.1). */
  host: string;
  /** TCP port (0: any free one). */
  port: number;
}

/** Options of {@link DisplayView}. */
export interface DisplayViewOptions extends Partial<ViewAddress> {
  /** Listen on an address that is not loopback (default false: refused with EACCES). */
  allowRemote?: boolean;
  /** The device's statistics, shown on the page (e.g. `VfioUserServer.deviceStats()`). */
  stats?: () => unknown;
  /** What the page calls the device. */
  name?: string;
  /** How often statistics are sent, ms (default 500). */
  statsIntervalMs?: number;
  /** Tile edge in pixels (default 64). */
  tile?: number;
}

/** What {@link DisplayView.stats} reports. */
export interface DisplayViewStats {
  /** Pages connected now. */
  clients: number;
  /** Pages that connected, in all. */
  connections: number;
  /** Updates sent (counted once per update, whatever the number of pages). */
  updates: number;
  /** Tiles sent in those updates. */
  tiles: number;
  /** Bytes of updates sent. */
  bytes: number;
  /** Mode messages sent. */
  modes: number;
  /** Clients disconnected because they sent something. */
  refusedMessages: number;
  /** HTTP requests and upgrades refused (bad host, origin, method or path). */
  refusedRequests: number;
}

const PROTOCOL = 1;
/** A page whose socket holds more than this unsent is skipped, then sent a whole frame. */
const BACKLOG_LIMIT = 16 << 20;
/** Largest message a page may send before being disconnected anyway (it should send none). */
const MAX_CLIENT_PAYLOAD = 1024;

/** True for 127.0.0.0/8, ::1 and `localhost`. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || h === '0:0:0:0:0:0:0:1' || /^127(\.\d{1,3}){3}$/.test(h) || /^::ffff:127(\.\d{1,3}){3}$/.test(h);
}

/** Parses `--view`: `port`, `host:port` or `[v6]:port`. */
export function parseViewAddress(text: string): ViewAddress {
  const m = /^(?:(\[[0-9a-fA-F:.]+\]|[^:[\]]+):)?(\d{1,5})$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new MdevError('EINVAL', `expected [host:]port, got ${JSON.stringify(text)}`, 'view');
  return { host: m[1] ? m[1].replace(/^\[|\]$/g, '') : '127.0.0.1', port };
}

/**
 * Refuses (EACCES) a view address that is not loopback unless `allowRemote`: called before
 * anything is served, so a refused view leaves nothing running.
 */
export function checkViewAddress(options: Pick<DisplayViewOptions, 'host' | 'allowRemote'>): void {
  const host = options.host ?? '127.0.0.1';
  if (!options.allowRemote && !isLoopback(host)) {
    throw new MdevError('EACCES', `${host} is not a loopback address: the view would show the screen to the network (allow it explicitly: --view-allow-remote)`, 'view');
  }
}

interface Client {
  ws: WebSocket;
  /** Needs a whole frame (new, or skipped while its socket was full). */
  full: boolean;
}

/** Serves the live view of a display output. */
export class DisplayView {
  private readonly output: DisplayOutput;
  private readonly host: string;
  private readonly port: number;
  private readonly allowRemote: boolean;
  private readonly statsSource: (() => unknown) | null;
  private readonly name: string;
  private readonly statsIntervalMs: number;
  private readonly tile: number;
  private readonly http: Server;
  private readonly wss: WebSocketServer;
  private readonly clients = new Set<Client>();
  private unsubscribe: (() => void) | null = null;
  private statsTimer: ReturnType<typeof setInterval> | null = null;
  private listening: ViewAddress | null = null;
  /** What was last sent: the plane's key and a copy of its pixels. */
  private sentKey: string | null = null;
  private sent: Uint8Array | null = null;
  private seq = 0;
  /** The plane last announced to the pages, as JSON. */
  private lastPlaneKey: string | null = null;
  private readonly counts: Omit<DisplayViewStats, 'clients'> = { connections: 0, updates: 0, tiles: 0, bytes: 0, modes: 0, refusedMessages: 0, refusedRequests: 0 };

  /**
   * Creates a view of `output` (its picture and refreshes); nothing listens until {@link listen}.
   * @param output the display output to show (started by its owner)
   * @param options address, statistics source, page name
   */
  constructor(output: DisplayOutput, options: DisplayViewOptions = {}) {
    this.output = output;
    this.host = options.host ?? '127.0.0.1';
    this.port = checkInt('options.port', options.port ?? 0, 0, 65535);
    this.allowRemote = options.allowRemote ?? false;
    checkViewAddress(options);
    this.statsSource = options.stats ?? null;
    this.name = options.name ?? 'device';
    this.statsIntervalMs = checkInt('options.statsIntervalMs', options.statsIntervalMs ?? 500, 10, 3_600_000);
    this.tile = checkInt('options.tile', options.tile ?? 64, 8, 1024);
    this.http = createServer((req, res) => this.onRequest(req, res));
    this.wss = new WebSocketServer({ noServer: true, maxPayload: MAX_CLIENT_PAYLOAD, perMessageDeflate: false });
    this.http.on('upgrade', (req, socket, head) => this.onUpgrade(req, socket, head));
  }

  /** Starts listening; resolves with the address (the port chosen when 0 was asked for). */
  async listen(): Promise<ViewAddress & { url: string }> {
    if (!this.listening) {
      await new Promise<void>((resolve, reject) => {
        const fail = (e: NodeJS.ErrnoException) => reject(new MdevError(e.code ?? 'EIO', `cannot listen on ${this.host}:${this.port}: ${e.message}`, 'view'));
        this.http.once('error', fail);
        this.http.listen(this.port, this.host, () => {
          this.http.removeListener('error', fail);
          resolve();
        });
      });
      const a = this.http.address() as AddressInfo;
      this.listening = { host: this.host, port: a.port };
      this.unsubscribe = this.output.onRefresh((r) => this.onRefresh(r));
      this.statsTimer = setInterval(() => this.broadcastStats(), this.statsIntervalMs);
      this.statsTimer.unref?.();
    }
    const { host, port } = this.listening;
    return { host, port, url: `http://${host.includes(':') ? `[${host}]` : host}:${port}/` };
  }

  /** Disconnects every page and stops listening. */
  async close(): Promise<void> {
    this.unsubscribe?.();
    this.unsubscribe = null;
    if (this.statsTimer) clearInterval(this.statsTimer);
    this.statsTimer = null;
    for (const c of this.clients) c.ws.terminate();
    this.clients.clear();
    this.wss.close();
    if (this.listening) {
      this.http.closeAllConnections();
      await new Promise<void>((resolve) => this.http.close(() => resolve()));
      this.listening = null;
    }
  }

  /** Counters (also sent to the pages). */
  stats(): DisplayViewStats {
    return { clients: this.clients.size, ...this.counts };
  }

  // ---- HTTP ------------------------------------------------------------------------------------

  /** The Host header names the address we listen on (or loopback): no DNS-rebound name. */
  private hostAllowed(req: IncomingMessage): boolean {
    if (this.allowRemote) return true;
    const header = req.headers.host;
    if (!header) return false;
    const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(header);
    if (!m) return false;
    return isLoopback(m[1]!) && (m[2] === undefined || Number(m[2]) === this.listening?.port);
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const refuse = (status: number, text: string) => {
      this.counts.refusedRequests++;
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', ...(status === 405 ? { allow: 'GET, HEAD' } : {}) }).end(`${text}\n`);
    };
    if (!this.hostAllowed(req)) return refuse(421, 'this view answers only requests for its own loopback address');
    if (req.method !== 'GET' && req.method !== 'HEAD') return refuse(405, 'the view only shows; it accepts nothing');
    const path = (req.url ?? '/').split('?')[0];
    const assets: Record<string, [string, string]> = {
      '/': ['text/html; charset=utf-8', VIEW_HTML],
      '/view.js': ['text/javascript; charset=utf-8', VIEW_JS],
      '/view.css': ['text/css; charset=utf-8', VIEW_CSS],
    };
    if (path === '/favicon.ico') {
      res.writeHead(204, { 'cache-control': 'max-age=86400' }).end(); // no icon, and no error in the page's console
      return;
    }
    const asset = path !== undefined ? assets[path] : undefined;
    if (!asset) return refuse(404, 'not found');
    res.writeHead(200, {
      'content-type': asset[0],
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
      'referrer-policy': 'no-referrer',
      'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
    });
    res.end(req.method === 'HEAD' ? undefined : asset[1]);
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const refuse = (status: string) => {
      this.counts.refusedRequests++;
      socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
    };
    if ((req.url ?? '').split('?')[0] !== '/ws') return refuse('404 Not Found');
    if (!this.hostAllowed(req)) return refuse('421 Misdirected Request');
    // A browser always sends Origin: only the page this server served may read the screen.
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== `http://${req.headers.host}`) return refuse('403 Forbidden');
    this.wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws));
  }

  // ---- pages -----------------------------------------------------------------------------------

  private onConnection(ws: WebSocket): void {
    const client: Client = { ws, full: true };
    this.clients.add(client);
    this.counts.connections++;
    // The page has nothing to say: whatever it sends ends its connection, and reaches nothing.
    ws.on('message', () => {
      this.counts.refusedMessages++;
      ws.close(1008, 'this view accepts no messages');
      this.clients.delete(client);
    });
    ws.on('close', () => this.clients.delete(client));
    ws.on('error', () => this.clients.delete(client));
    this.send(client, JSON.stringify({ type: 'hello', protocol: PROTOCOL, device: this.name, tile: this.tile }));
    this.sendMode(client, this.currentPlane());
    this.sendStats(client);
    const image = this.output.image();
    if (image && this.sentKey !== null) this.sendFull(client, image);
  }

  private currentPlane(): DisplayPlane | null {
    return this.output.stats().plane;
  }

  private send(client: Client, data: string | Uint8Array): void {
    if (client.ws.readyState === client.ws.OPEN) client.ws.send(data);
  }

  private sendMode(client: Client | null, plane: DisplayPlane | null): void {
    const msg = JSON.stringify({ type: 'mode', plane });
    this.counts.modes++;
    for (const c of client ? [client] : this.clients) this.send(c, msg);
  }

  private sendStats(client: Client | null): void {
    const o = this.output.stats();
    let device: unknown = null;
    try {
      device = this.statsSource?.() ?? null;
    } catch (e) {
      device = { error: (e as Error).message };
    }
    const frames = { refreshes: o.refreshes, planeChanges: o.planeChanges, source: o.source, ...this.stats() };
    const msg = JSON.stringify({ type: 'stats', frames, device }, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
    for (const c of client ? [client] : this.clients) this.send(c, msg);
  }

  private broadcastStats(): void {
    if (this.clients.size > 0) this.sendStats(null);
  }

  // ---- updates ---------------------------------------------------------------------------------

  private onRefresh(r: OutputRefresh): void {
    const image = this.output.image();
    const plane = r.plane;
    const key = plane && image ? `${image.width}x${image.height}` : null;
    const planeKey = JSON.stringify(plane);
    if (planeKey !== this.lastPlaneKey) {
      this.lastPlaneKey = planeKey;
      this.sendMode(null, plane);
    }
    if (!plane || !image || key === null) return;
    let tiles: Uint8Array | null;
    if (key !== this.sentKey || !this.sent) {
      // A new geometry: every tile, to everyone.
      this.sentKey = key;
      this.sent = new Uint8Array(image.data);
      tiles = this.encode(image, null);
      for (const c of this.clients) c.full = false;
    } else {
      tiles = r.linesUpdated > 0 ? this.encode(image, this.sent) : null;
    }
    for (const c of this.clients) {
      if (c.ws.bufferedAmount > BACKLOG_LIMIT) {
        c.full = true; // skipped: it gets a whole frame once it caught up
        continue;
      }
      if (c.full) this.sendFull(c, image);
      else if (tiles) this.send(c, tiles);
    }
  }

  private sendFull(client: Client, image: ScanoutImage): void {
    client.full = false;
    const all = this.encode(image, null, false);
    if (all) this.send(client, all);
  }

  /**
   * One update message: the tiles of `image` that differ from `previous` (all when null), which
   * is brought up to date. Null when nothing changed. `count` false: not counted (a page's catch-up).
   */
  private encode(image: ScanoutImage, previous: Uint8Array | null, count = true): Uint8Array | null {
    const { width, height, data } = image;
    const t = this.tile;
    const rowBytes = width * 4;
    const chosen: [number, number, number, number][] = [];
    for (let ty = 0; ty < height; ty += t) {
      const h = Math.min(t, height - ty);
      for (let tx = 0; tx < width; tx += t) {
        const w = Math.min(t, width - tx);
        let changed = previous === null;
        for (let y = ty; !changed && y < ty + h; y++) {
          const s = y * rowBytes + tx * 4;
          changed = Buffer.compare(Buffer.from(data.buffer, data.byteOffset + s, w * 4), Buffer.from(previous!.buffer, previous!.byteOffset + s, w * 4)) !== 0;
        }
        if (!changed) continue;
        chosen.push([tx, ty, w, h]);
        if (previous) for (let y = ty; y < ty + h; y++) previous.set(data.subarray(y * rowBytes + tx * 4, y * rowBytes + (tx + w) * 4), y * rowBytes + tx * 4);
      }
    }
    if (chosen.length === 0) return null;
    const size = 8 + chosen.reduce((n, [, , w, h]) => n + 8 + w * h * 4, 0);
    const out = new Uint8Array(size);
    const dv = new DataView(out.buffer);
    const seq = count ? ++this.seq : this.seq;
    dv.setUint32(0, seq, true);
    dv.setUint16(4, chosen.length, true);
    let off = 8;
    for (const [x, y, w, h] of chosen) {
      dv.setUint16(off, x, true);
      dv.setUint16(off + 2, y, true);
      dv.setUint16(off + 4, w, true);
      dv.setUint16(off + 6, h, true);
      off += 8;
      for (let row = y; row < y + h; row++, off += w * 4) out.set(data.subarray(row * rowBytes + x * 4, row * rowBytes + (x + w) * 4), off);
    }
    if (count) {
      this.counts.updates++;
      this.counts.tiles += chosen.length;
      this.counts.bytes += size;
    }
    return out;
  }
}
