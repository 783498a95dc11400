/**
 * The live view (cli/view.ts): address rules, HTTP and WebSocket refusals (Host, Origin,
 * methods, paths, any message from a page), updates that carry only the tiles whose pixels
 * changed; on the Xen path (simulator, track_dirty_vram) with a WebSocket client; and on the
 * vfio-user path in a real headless browser (Debian's chromium driven by playwright-core) that
 * loads the page of `mdevkit serve bochs-display --view`, sees the frame, and sees it change after
 * the guest draws (the vfio-user client playing the VMM). Without chromium the browser test is
 * skipped, except in CI (.ci/run installs it), where it fails.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { chromium } from 'playwright-core';
import { BOCHS, BochsDisplay, DISPI } from '../examples/bochs-display/index.js';
import { VfioUserClient } from '../adapters/vfio/client.js';
import { pciSbdf } from '../adapters/xen/ioreq-abi.js';
import { SimHypervisor } from '../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../adapters/xen/sim/host.js';
import { SimVcpuThread } from '../adapters/xen/sim/vcpu-thread.js';
import { DisplayOutput } from '../cli/display-output.js';
import { startServeXen } from '../cli/serve-xen.js';
import { DisplayView, checkViewAddress, isLoopback, parseViewAddress } from '../cli/view.js';
import { PCI, PCI_BAR, PCI_COMMAND } from '../src/pci/constants.js';
import { writeInt } from './helpers.js';
import { assertSimBuildFresh } from './fixtures/xen-sim-server.js';
import { startServer } from './vfio/harness.js';

const MiB = 1 << 20;
const [W, H] = [640, 480];
const STRIDE = W * 4;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

/** 0xRRGGBB of the test picture at (x, y); `phase` changes it. */
const pixel = (x: number, y: number, phase = 0) => ((((x * 3) ^ phase) & 0xff) << 16) | (((y * 5) & 0xff) << 8) | ((x ^ y ^ (phase * 7)) & 0xff);

/** Rows [y0, y1) as a guest stores them (XRGB8888 little endian, stride W·4). */
function rows(y0: number, y1: number, phase = 0, x0 = 0, x1 = W): Uint8Array {
  const out = new Uint8Array((y1 - y0) * STRIDE);
  const v = new DataView(out.buffer);
  for (let y = y0; y < y1; y++) for (let x = 0; x < W; x++) v.setUint32((y - y0) * STRIDE + x * 4, pixel(x, y, x >= x0 && x < x1 ? phase : 0), true);
  return out;
}

/** The RGBA picture a page should show (phase 0 except inside `rect`). */
function expected(rect?: { x0: number; x1: number; y0: number; y1: number; phase: number }): Uint8Array {
  const out = new Uint8Array(W * H * 4);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const inside = rect && x >= rect.x0 && x < rect.x1 && y >= rect.y0 && y < rect.y1;
      const p = pixel(x, y, inside ? rect.phase : 0);
      out.set([p >> 16, (p >> 8) & 0xff, p & 0xff, 0xff], (y * W + x) * 4);
    }
  }
  return out;
}

/** A WebSocket client that applies updates to its own copy of the picture, as the page does. */
class ViewClient {
  readonly ws: WebSocket;
  readonly texts: { type: string; [k: string]: unknown }[] = [];
  readonly updates: { seq: number; tiles: { x: number; y: number; w: number; h: number }[] }[] = [];
  picture = new Uint8Array(0);
  width = 0;
  closed: Promise<{ code: number; reason: string }>;
  private constructor(url: string, headers: Record<string, string>) {
    this.ws = new WebSocket(url, { headers });
    this.closed = new Promise((resolve) => this.ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    this.ws.on('message', (data, isBinary) => {
      if (!isBinary) {
        const msg = JSON.parse(data.toString()) as { type: string; plane?: { width: number; height: number } | null };
        this.texts.push(msg);
        if (msg.type === 'mode' && msg.plane && msg.plane.width !== this.width) {
          this.width = msg.plane.width;
          this.picture = new Uint8Array(msg.plane.width * msg.plane.height * 4);
        }
        return;
      }
      const b = data as Buffer;
      const n = b.readUInt16LE(4);
      const tiles = [];
      let off = 8;
      for (let i = 0; i < n; i++) {
        const [x, y, w, h] = [b.readUInt16LE(off), b.readUInt16LE(off + 2), b.readUInt16LE(off + 4), b.readUInt16LE(off + 6)];
        off += 8;
        for (let row = 0; row < h; row++, off += w * 4) this.picture.set(b.subarray(off, off + w * 4), ((y + row) * this.width + x) * 4);
        tiles.push({ x, y, w, h });
      }
      this.updates.push({ seq: b.readUInt32LE(0), tiles });
    });
  }
  static async open(url: string, headers: Record<string, string> = {}): Promise<ViewClient> {
    const c = new ViewClient(url, headers);
    cleanup.push(() => c.ws.terminate());
    await new Promise<void>((resolve, reject) => {
      c.ws.once('open', () => resolve());
      c.ws.once('error', reject);
    });
    return c;
  }
  async until(ok: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    const t0 = Date.now();
    while (!ok()) {
      if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
      await sleep(5);
    }
  }
}

/** An HTTP request; resolves with the status. */
function httpStatus(url: string, options: { method?: string; headers?: Record<string, string> } = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: options.method ?? 'GET', headers: options.headers ?? {} }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.once('error', reject);
    req.end();
  });
}

/** Sets a Bochs mode through BAR2 (`write` is a 16-bit DISPI register write). */
function modeset(write: (index: number, value: number) => void): void {
  for (const [index, value] of [
    [DISPI.ENABLE, 0], [DISPI.BPP, 32], [DISPI.XRES, W], [DISPI.YRES, H], [DISPI.BANK, 0], [DISPI.VIRT_WIDTH, W],
    [DISPI.VIRT_HEIGHT, H], [DISPI.X_OFFSET, 0], [DISPI.Y_OFFSET, 0], [DISPI.ENABLE, DISPI.ENABLED | DISPI.LFB_ENABLED],
  ] as const) {
    write(index, value);
  }
}

describe('live view: addresses', () => {
  it('parses [host:]port and accepts only loopback unless allowed', () => {
    expect(parseViewAddress('8080')).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(parseViewAddress('127.0.0.2:0')).toEqual({ host: '127.0.0.2', port: 0 });
    expect(parseViewAddress('[::1]:9')).toEqual({ host: '::1', port: 9 });
    for (const bad of ['', 'x', ':80', '1.2.3.4:99999', 'a:b:80']) expect(() => parseViewAddress(bad), bad).toThrow(expect.objectContaining({ code: 'EINVAL', field: 'view' }));
    expect(['127.0.0.1', '127.1.2.3', '::1', '[::1]', 'localhost'].every(isLoopback)).toBe(true);
    expect(['0.0.0.0', '::', '10.0.0.1', '128.0.0.1', 'example.com'].some(isLoopback)).toBe(false);
    expect(() => checkViewAddress({ host: '0.0.0.0' })).toThrow(expect.objectContaining({ code: 'EACCES', field: 'view' }));
    expect(() => checkViewAddress({ host: '0.0.0.0', allowRemote: true })).not.toThrow();
  });
});

describe('live view of a display output (in process)', () => {
  async function setup() {
    const device = new BochsDisplay({ vramSize: 4 * MiB }).realize();
    cleanup.push(() => device.vram.release());
    const output = new DisplayOutput(device, {});
    const view = new DisplayView(output, { port: 0, name: 'bochs-display', stats: () => ({ probe: 1 }), statsIntervalMs: 20 });
    const { url, port } = await view.listen();
    cleanup.push(() => view.close());
    const dispi = (index: number, value: number) => writeInt(device.region(2)!, BOCHS.DISPI_OFFSET + 2 * index, 2, value);
    return { device, output, view, url, port, dispi, ws: url.replace('http:', 'ws:') + 'ws' };
  }

  it('sends the mode, the whole frame to a new page, then only the changed tiles; stats', async () => {
    const { device, output, view, ws, dispi } = await setup();
    const early = await ViewClient.open(ws);
    await early.until(() => early.texts.some((t) => t.type === 'mode'), 'the first mode');
    expect(early.texts[0]).toMatchObject({ type: 'hello', protocol: 1, device: 'bochs-display', tile: 64 });
    expect(early.texts.find((t) => t.type === 'mode')).toMatchObject({ plane: null });
    modeset(dispi);
    device.vram.bytes.set(rows(0, H));
    output.refresh();
    await early.until(() => early.updates.length === 1, 'the first frame');
    expect(early.texts.filter((t) => t.type === 'mode').at(-1)).toMatchObject({ plane: { width: W, height: H, format: 'xrgb8888', blanked: false } });
    expect(early.updates[0]!.tiles).toHaveLength(10 * 8); // 640×480 in 64×64 tiles
    expect(Buffer.compare(early.picture, expected())).toBe(0);

    // A 20×10 rectangle inside one tile: one tile goes out.
    const rect = { x0: 70, x1: 90, y0: 130, y1: 140, phase: 3 };
    device.vram.bytes.set(rows(rect.y0, rect.y1, rect.phase, rect.x0, rect.x1), rect.y0 * STRIDE);
    output.refresh();
    await early.until(() => early.updates.length === 2, 'the second update');
    expect(early.updates[1]!.tiles).toEqual([{ x: 64, y: 128, w: 64, h: 64 }]);
    expect(Buffer.compare(early.picture, expected(rect))).toBe(0);
    // Nothing changed: nothing sent.
    output.refresh();
    await sleep(50);
    expect(early.updates).toHaveLength(2);

    // A page that comes later gets the whole current frame at once.
    const late = await ViewClient.open(ws);
    await late.until(() => late.updates.length === 1, 'the late page\'s frame');
    expect(Buffer.compare(late.picture, expected(rect))).toBe(0);
    await late.until(() => late.texts.some((t) => t.type === 'stats'), 'stats');
    expect(late.texts.find((t) => t.type === 'stats')).toMatchObject({ device: { probe: 1 }, frames: { source: 'page-scan', clients: 2 } });
    expect(view.stats()).toMatchObject({ clients: 2, connections: 2, updates: 2, tiles: 81, refusedMessages: 0 });
  });

  it('refuses foreign hosts, origins, methods and paths; a page that sends anything is cut off and reaches nothing', async () => {
    const { device, view, url, port, ws, dispi } = await setup();
    modeset(dispi);
    const config = () => {
      const b = new Uint8Array(256);
      device.configAccessor.read(0, b);
      return b;
    };
    const before = config();
    expect(await httpStatus(url)).toBe(200);
    expect(await httpStatus(url + 'view.js')).toBe(200);
    expect(await httpStatus(url, { headers: { host: `attacker.example:${port}` } })).toBe(421); // DNS rebinding
    expect(await httpStatus(url, { headers: { host: '127.0.0.1:1' } })).toBe(421);
    expect(await httpStatus(url, { method: 'POST' })).toBe(405);
    expect(await httpStatus(url, { method: 'PUT' })).toBe(405);
    expect(await httpStatus(url + '../package.json')).toBe(404);
    expect(await httpStatus(url + 'ws')).toBe(404); // not an upgrade
    // Another site's page may not read the screen.
    await expect(ViewClient.open(ws, { origin: 'http://attacker.example' })).rejects.toThrow(/403/);
    await expect(ViewClient.open(ws, { host: 'attacker.example' })).rejects.toThrow(/421/);
    // The page's own origin may; whatever it sends ends its connection.
    const page = await ViewClient.open(ws, { origin: url.replace(/\/$/, '') });
    page.ws.send(JSON.stringify({ type: 'write', bar: 2, offset: 0x500, value: 0 }));
    expect(await page.closed).toEqual({ code: 1008, reason: 'this view accepts no messages' });
    const big = await ViewClient.open(ws);
    big.ws.send(Buffer.alloc(64 * 1024));
    expect((await big.closed).code).toBe(1009); // too big: refused by the WebSocket layer
    expect(view.stats()).toMatchObject({ refusedMessages: 1, refusedRequests: 8 });
    expect(Buffer.compare(config(), before)).toBe(0);
    expect(device.displayPlane()).toMatchObject({ width: W, height: H });
  });
});

describe('live view on the Xen path (simulator, track_dirty_vram)', () => {
  beforeAll(() => assertSimBuildFresh());

  it('shows what the guest draws into VRAM it has as RAM', async () => {
    const hv = new SimHypervisor({ nrVcpus: 1, ramBytes: 16 * MiB, vcpuTimeoutMs: 5000 });
    const host = new SimXenHost(hv);
    const vcpu = await SimVcpuThread.start(hv.vcpuDescriptor(0), { timeoutMs: 5000 });
    cleanup.push(() => hv.close(), () => host.close(), () => vcpu.close());
    const pci = { segment: 0, bus: 0, device: 5, fn: 0 };
    const serving = await startServeXen('bochs-display', { host, pci, fixedBars: {}, claimConfigLatch: false, bufioreq: 'atomic', verbose: false, display: { intervalMs: 20 } });
    cleanup.push(() => serving.close());
    expect(serving.output!.stats()).toMatchObject({ path: null, source: 'track_dirty_vram' });
    const view = new DisplayView(serving.output!, { port: 0, stats: () => serving.stats().engine });
    const { url } = await view.listen();
    cleanup.push(() => view.close());
    const client = await ViewClient.open(url.replace('http:', 'ws:') + 'ws');

    // Firmware places the BARs; the guest sets a mode through BAR2 and draws at BAR0.
    const cfg = (reg: bigint) => (BigInt(pciSbdf(0, 0, 5, 0)) << 32n) | reg;
    const bars: bigint[] = [];
    let at = 0xe0000000n;
    for (let i = 0; i < 6; i++) {
      const reg = BigInt(PCI.BAR0 + 4 * i);
      await vcpu.access({ space: 'pci', addr: cfg(reg), size: 4, dir: 'write', data: 0xffffffffn });
      const mask = Number(await vcpu.access({ space: 'pci', addr: cfg(reg), size: 4, dir: 'read' }));
      if (mask === 0 || mask & PCI_BAR.SPACE_IO) continue;
      const size = BigInt((~(mask & ~PCI_BAR.MEM_FLAGS_MASK) >>> 0) + 1);
      at = ((at + size - 1n) / size) * size;
      await vcpu.access({ space: 'pci', addr: cfg(reg), size: 4, dir: 'write', data: at });
      bars[i] = at;
      at += size;
    }
    await vcpu.access({ space: 'pci', addr: cfg(BigInt(PCI.COMMAND)), size: 2, dir: 'write', data: BigInt(PCI_COMMAND.MEMORY) });
    const dispiWrites: Promise<unknown>[] = [];
    modeset((index, value) => dispiWrites.push(vcpu.access({ space: 'mmio', addr: bars[2]! + BigInt(BOCHS.DISPI_OFFSET + 2 * index), size: 2, dir: 'write', data: BigInt(value) })));
    await Promise.all(dispiWrites);
    await vcpu.ramWrite(bars[0]!, rows(0, H));
    await client.until(() => client.width === W && Buffer.compare(client.picture, expected()) === 0, 'the guest\'s frame');
    const n = client.updates.length;
    const rect = { x0: 600, x1: 640, y0: 400, y1: 420, phase: 5 };
    await vcpu.ramWrite(bars[0]! + BigInt(rect.y0 * STRIDE), rows(rect.y0, rect.y1, rect.phase, rect.x0, rect.x1));
    await client.until(() => Buffer.compare(client.picture, expected(rect)) === 0, 'the guest\'s change');
    expect(client.updates.slice(n).flatMap((u) => u.tiles)).toEqual([{ x: 576, y: 384, w: 64, h: 64 }]);
    await client.until(() => client.texts.some((t) => t.type === 'stats' && typeof (t['device'] as Record<string, unknown>)['ioreqs'] === 'number'), 'the engine\'s counters');
  });
});

const CHROMIUM = '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium && process.env['CI']) throw new Error(`${CHROMIUM} is missing: .ci/run installs Debian's chromium for the live view's browser test`);

describe.skipIf(!haveChromium)('live view in a real browser (Debian chromium, playwright-core): mdevkit serve bochs-display --view', () => {
  it('loads the page, sees the frame, sees it change after the guest draws; the page cannot write', async () => {
    const server = await startServer({ device: 'bochs-display', args: ['--view', '127.0.0.1:0', '--display-interval', '20'] });
    cleanup.push(() => server.stop());
    const t0 = Date.now();
    while (!/live view of bochs-display at (http:\S+)/.test(server.stdout()) && Date.now() - t0 < 10_000) await sleep(10);
    const url = /live view of bochs-display at (http:\S+)/.exec(server.stdout())![1]!;
    const profile = mkdtempSync(join(tmpdir(), 'mdevkit-chromium-'));
    cleanup.push(() => rmSync(profile, { recursive: true, force: true }));
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      // The browser is not ours to sanitize: under npm run test:asan the preloaded ASan runtime
      // would be loaded into chromium too.
      env: Object.fromEntries(Object.entries(process.env).filter(([k, v]) => v !== undefined && !['LD_PRELOAD', 'ASAN_OPTIONS', 'UBSAN_OPTIONS'].includes(k))) as Record<string, string>,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    cleanup.push(() => context.close());
    const page = context.pages()[0] ?? (await context.newPage());
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
    await page.goto(url);
    await page.waitForSelector('#connection[data-state="open"]');
    await page.waitForSelector('body[data-mode="none"]');
    // Page-side code is given as text: this file is compiled without the DOM's types.
    const pixelAt = (x: number, y: number) => page.evaluate(`Array.from(document.getElementById('canvas').getContext('2d').getImageData(${x}, ${y}, 1, 1).data)`) as Promise<number[]>;
    // Polled with evaluate: waitForFunction compiles its predicate in the page, which the view's
    // Content-Security-Policy (no eval) refuses — as it should.
    const waitFor = async (expression: string, timeoutMs = 10_000) => {
      const start = Date.now();
      while (!(await page.evaluate(expression))) {
        if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${expression}`);
        await sleep(10);
      }
    };
    const waitPixel = (x: number, y: number, want: number[]) =>
      waitFor(`(() => { const d = document.getElementById('canvas').getContext('2d').getImageData(${x}, ${y}, 1, 1).data; return d[0] === ${want[0]} && d[1] === ${want[1]} && d[2] === ${want[2]}; })()`);
    const rgba = (p: number) => [p >> 16, (p >> 8) & 0xff, p & 0xff, 255];

    // The guest (the client as VMM): BARs, a modeset through BAR2, the picture into VRAM at BAR0.
    const c = VfioUserClient.connect(server.paths[0]!, { timeoutMs: 5000 });
    cleanup.push(() => c.close());
    c.cfgWrite(PCI.BAR0, 4, 0xe0000000);
    c.cfgWrite(PCI.BAR0 + 8, 4, 0xe1000000);
    c.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
    modeset((index, value) => c.mmioWrite(2, BOCHS.DISPI_OFFSET + 2 * index, 2, value));
    const vram = c.mapRegion(0).bytes!;
    cleanup.push(() => c.unmapRegion(0));
    vram.set(rows(0, H));
    await page.waitForSelector(`body[data-mode="${W}x${H}"]`);
    await waitPixel(W - 1, H - 1, rgba(pixel(W - 1, H - 1)));
    for (const [x, y] of [[0, 0], [123, 45], [W - 1, H - 1]] as const) expect(await pixelAt(x, y)).toEqual(rgba(pixel(x, y)));
    expect(await page.textContent('#mode')).toBe(`${W}×${H} xrgb8888`);
    const updates = Number(await page.getAttribute('body', 'data-updates'));

    // The guest draws again: the page follows, with an update of the changed tiles only.
    const rect = { x0: 200, x1: 260, y0: 300, y1: 330, phase: 9 };
    vram.set(rows(rect.y0, rect.y1, rect.phase, rect.x0, rect.x1), rect.y0 * STRIDE);
    await waitFor(`Number(document.body.dataset.updates) > ${updates}`);
    await waitPixel(210, 310, rgba(pixel(210, 310, rect.phase)));
    expect(await pixelAt(0, 0)).toEqual(rgba(pixel(0, 0)));
    expect(await pixelAt(259, 329)).toEqual(rgba(pixel(259, 329, rect.phase)));
    expect(await pixelAt(260, 329)).toEqual(rgba(pixel(260, 329)));
    const screenshot = await page.locator('#canvas').screenshot();
    expect(screenshot.length).toBeGreaterThan(1000);

    // The trap statistics: the server's deviceStats(), live.
    await waitFor(`/regions\\.jsWrites/.test(document.getElementById('stats').textContent)`);

    // Blanking shows as such.
    c.mmioRead(2, BOCHS.VGA_OFFSET + 0x1a, 1);
    c.mmioWrite(2, BOCHS.VGA_OFFSET, 1, 0);
    await page.waitForSelector(`body[data-mode="${W}x${H}-blanked"]`);
    expect(await page.isVisible('#overlay')).toBe(true);

    // The page cannot write: its own WebSocket is cut off for sending, a POST is refused.
    const attempt = await page.evaluate(`(async () => {
      const post = await fetch('/', { method: 'POST', body: 'x' }).then((r) => r.status);
      const closed = await new Promise((resolve) => {
        const ws = new WebSocket('ws://' + location.host + '/ws');
        ws.onopen = () => ws.send('{"type":"write"}');
        ws.onclose = (ev) => resolve(ev.code);
      });
      return { post, closed };
    })()`);
    expect(attempt).toEqual({ post: 405, closed: 1008 });
    expect(c.mmioRead(2, BOCHS.DISPI_OFFSET + 2 * DISPI.XRES, 2)).toBe(W);
    expect(errors.filter((e) => !/405/.test(e))).toEqual([]);
  }, 60_000);
});
