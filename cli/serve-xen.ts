/**
 * `mdevkit serve <device> --xen <domid>` (and `--xen-sim`): runs a device model as a Xen IOREQ
 * server until SIGTERM/SIGINT, then removes everything it created (server, ranges, claims, ports,
 * mappings) — also when startup fails half way. It also ends when its domain is gone.
 *
 * Save and restore follow the domain's (cli/domain-watch.ts explains why it is done this way):
 * with `--save FILE` the device state is written when the domain is gone after `xl save` (or on a
 * signal); `--restore FILE` serves the restored domain's device from that state.
 *
 * With `--display-png` (a display device) it keeps a PNG of the frame, as over vfio-user; the
 * VRAM pages the guest wrote come from Xen's track_dirty_vram on the BAR that the server gives
 * the guest as RAM ({@link xenVramDirtySource}) instead of a scan of all of VRAM.
 * @module
 */
import { writeFileSync } from 'node:fs';
import { MdevError } from '../src/errors.js';
import { isDisplayDevice, type DisplayDevice } from '../src/display-device.js';
import type { PciDevice } from '../src/pci/device.js';
import { IoreqServer, type PciAddress } from '../adapters/xen/ioreq-server.js';
import type { BufioreqModeName, XenHost } from '../adapters/xen/host.js';
import { PrivcmdXenHost } from '../adapters/xen/privcmd-host.js';
import { SimHypervisor } from '../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../adapters/xen/sim/host.js';
import { DisplayOutput, type DisplayOutputStats, type VramDirtySource } from './display-output.js';
import { loadDevice } from './load-device.js';
import { watchDomain } from './domain-watch.js';
import { restoreStateFile, saveStateFile } from './state-file.js';
import { listenForStop } from './stop-signal.js';
import { DisplayView, checkViewAddress, type DisplayViewOptions } from './view.js';

/** Options of {@link serveXen} and {@link startServeXen}. */
export interface ServeXenOptions {
  /** The host to serve through (real privcmd, or a simulator's). */
  host: XenHost;
  /** PCI address of the device in the guest, or null for fixed placement only. */
  pci: PciAddress | null;
  /** Fixed BAR addresses. */
  fixedBars: Record<number, bigint>;
  /** Answer the 0xCF8 latch (PVH guests probing conf1). */
  claimConfigLatch: boolean;
  /** Buffered ring mode. */
  bufioreq: BufioreqModeName;
  /** Log to stderr. */
  verbose: boolean;
  /** How BARs of RAM (VRAM) are served: as guest RAM (default) or trapped (`IoreqServerOptions.ramBars`). */
  ramBars?: 'ram' | 'trap';
  /** Guest-physical address of the RAM BARs' parking range (`IoreqServerOptions.ramBarParking`). */
  ramBarParking?: bigint;
  /** Serve native ioreqs on the engine's I/O thread (`IoreqServerOptions.ioThread`, default true). */
  ioThread?: boolean;
  /** Serve JS-handled ioreqs in a blocking poll on the JS thread while the loop is idle (`IoreqServerOptions.blockingServe`, default true). */
  blockingServe?: boolean;
  /**
   * Keep a PNG of the device's frame at `path` (a display device): written when the picture
   * changed, at most every `intervalMs` (default 100), on SIGUSR1 and at exit. Without `path`
   * the output only keeps the picture for the live view.
   */
  display?: { path?: string; intervalMs?: number };
  /** Serve the live view of the device's frame at this address (see {@link DisplayView}); loopback only unless `allowRemote`. */
  view?: Pick<DisplayViewOptions, 'host' | 'port' | 'allowRemote'>;
  /** On exit, write the server's counters (and the display's figures) here as JSON. */
  statsFile?: string;
  /** Called once serving, with the server (the simulator's guest uses it). */
  onServing?: (server: IoreqServer) => void | Promise<void>;
  /** Load the device's state from this file (`--save` output, either path) before serving. */
  restoreFile?: string;
  /** Write the device's state to this file when serving ends: a signal, or the domain gone. */
  saveFile?: string;
  /** How often to check that the domain still exists, in ms (default 500; 0: never). */
  domainPollMs?: number;
}

/** What {@link XenServing.stats} reports (and `--stats` writes). */
export interface XenServeStats {
  /** The server's counters (time offsets, invalidates, rep ops, relocations, …). */
  server: IoreqServer['stats'];
  /** The native engine's counters (ioreqs served, …). */
  engine: Record<string, number>;
  /** Where the RAM BARs' pages are, gfns as hex strings. */
  ramBars: { index: number; pages: number; parkingGfn: string; gfn: string; placed: boolean }[];
  /** The display's figures, with `--display-png`. */
  display?: DisplayOutputStats;
}

/** A device being served as an IOREQ server (see {@link startServeXen}). */
export interface XenServing {
  /** The device model. */
  readonly device: PciDevice;
  /** The IOREQ server. */
  readonly server: IoreqServer;
  /** The display output, with a `display` option. */
  readonly output: DisplayOutput | null;
  /** Counters and figures now. */
  stats(): XenServeStats;
  /** Writes the final frame and stops the server (the caller closes the host); {@link stats} stays as it was then. Idempotent. */
  close(): void;
}

/** Parses "SSSS:BB:DD.F" or "BB:DD.F". */
export function parseBdf(text: string): PciAddress {
  const m = /^(?:([0-9a-fA-F]{1,4}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$/.exec(text);
  if (!m) throw new MdevError('EINVAL', `expected SSSS:BB:DD.F or BB:DD.F, got ${text}`, 'bdf');
  const device = parseInt(m[3]!, 16);
  if (device > 31) throw new MdevError('ERANGE', `device ${device} is above 31`, 'bdf');
  return { segment: parseInt(m[1] ?? '0', 16), bus: parseInt(m[2]!, 16), device, fn: Number(m[4]) };
}

/** A simulated guest domain and its host (the simulator of Xen's side). */
export function simHost(nrVcpus: number, ramMiB: number): XenHost {
  const hypervisor = new SimHypervisor({ nrVcpus, ramBytes: ramMiB * 1024 * 1024 });
  const host = new SimXenHost(hypervisor);
  const close = host.close.bind(host);
  // The simulated domain lives as long as its host.
  return Object.assign(host, { close: () => (close(), hypervisor.close()) });
}

/** Opens the real hypervisor's privcmd/evtchn for `domid`. */
export function privcmdHost(domid: number): XenHost {
  return new PrivcmdXenHost({ domid });
}

/**
 * The display's source of changed VRAM pages on the Xen path: track_dirty_vram on the BAR the
 * server gives the guest as RAM ({@link IoreqServer.collectVramWrites}). Null when the device's
 * VRAM BAR is not served as guest RAM (`ramBars: 'trap'`, or another RAM BAR is the tracked one):
 * the output then compares page hashes, which sees trapped writes as well. The source answers
 * null (compare this time) when Xen could not tell — tracking re-armed after a BAR placement,
 * ENODATA — and when the call fails (a domain already gone at exit), reported once through `warn`.
 * @param server a started IOREQ server
 * @param device the display device it serves
 * @param warn where a failed collection is reported (once)
 */
export function xenVramDirtySource(server: IoreqServer, device: DisplayDevice, warn: (line: string) => void = () => {}): VramDirtySource | null {
  if (server.trackedVramBar === null || server.trackedVramBar !== device.displayVramBar) return null;
  let warned = false;
  return {
    name: 'track_dirty_vram',
    collect() {
      try {
        return server.collectVramWrites();
      } catch (e) {
        if (!warned) warn(`display: track_dirty_vram failed, comparing VRAM instead: ${(e as Error).message}`);
        warned = true;
        return null;
      }
    },
  };
}

/**
 * Loads the device, starts its IOREQ server (and, with `display`, a display output fed by
 * track_dirty_vram) and returns without waiting for a signal: {@link serveXen} is this plus the
 * signal handling; tests and embedders call it directly. On failure everything is undone.
 */
export async function startServeXen(spec: string, options: ServeXenOptions): Promise<XenServing> {
  const device = await loadDevice(spec);
  if (options.restoreFile) {
    // Before anything exists in the hypervisor: a refused file leaves nothing to undo.
    const n = restoreStateFile(device, options.restoreFile);
    process.stdout.write(`mdevkit: device state restored from ${options.restoreFile} (${n} bytes)\n`);
  }
  if (options.display && !isDisplayDevice(device)) throw new MdevError('EINVAL', `${spec} is not a display device (it has no scanout to render)`, options.display.path === undefined ? 'view' : 'display-png');
  const log = options.verbose ? (line: string) => process.stderr.write(`mdevkit: ${line}\n`) : undefined;
  const warn = (line: string) => process.stderr.write(`mdevkit: warning: ${line}\n`);
  const server = new IoreqServer(device, options.host, {
    pci: options.pci,
    fixedBars: options.fixedBars,
    claimConfigLatch: options.claimConfigLatch,
    bufioreq: options.bufioreq,
    ...(options.ramBars ? { ramBars: options.ramBars } : {}),
    ...(options.ramBarParking !== undefined ? { ramBarParking: options.ramBarParking } : {}),
    ...(options.ioThread !== undefined ? { ioThread: options.ioThread } : {}),
    ...(options.blockingServe !== undefined ? { blockingServe: options.blockingServe } : {}),
    ...(log ? { log } : {}),
  });
  try {
    server.start();
  } catch (e) {
    server.stop();
    throw e;
  }
  let output: DisplayOutput | null = null;
  if (options.display && isDisplayDevice(device)) {
    const dirty = xenVramDirtySource(server, device, warn);
    output = new DisplayOutput(device, { ...options.display, ...(dirty ? { dirty } : {}), warn }).start();
  }
  let final: XenServeStats | null = null;
  const stats = (): XenServeStats => final ?? {
    server: { ...server.stats },
    engine: server.engineStats(),
    ramBars: server.ramBars().map((rb) => ({ index: rb.index, pages: rb.pages, parkingGfn: `0x${rb.parkingGfn.toString(16)}`, gfn: `0x${rb.gfn.toString(16)}`, placed: rb.placed })),
    ...(output ? { display: output.stats() } : {}),
  };
  return {
    device,
    server,
    output,
    stats,
    close() {
      if (final) return;
      output?.stop(); // the final frame, while the guest's pages are still mapped and tracked
      final = stats(); // the engine's counters go with it
      server.stop();
    },
  };
}

/** Serves until a signal; resolves after a clean teardown. */
export async function serveXen(spec: string, options: ServeXenOptions): Promise<void> {
  // Whatever happens from here on, the hypervisor must not be left with our server or claims.
  if (options.view) checkViewAddress(options.view);
  let serving: XenServing | null = null;
  let view: DisplayView | null = null;
  const cleanup = () => {
    serving?.close();
    options.host.close();
  };
  process.once('exit', cleanup);
  const stop = listenForStop();
  try {
    // The live view is built on the display output: make one (without a file) when only it is asked for.
    serving = await startServeXen(spec, options.view && !options.display ? { ...options, display: {} } : options);
    if (options.view) {
      const s = serving;
      view = new DisplayView(s.output!, { ...options.view, name: spec, stats: () => ({ ...s.stats(), display: undefined }) });
      process.stdout.write(`mdevkit: live view of ${spec} at ${(await view.listen()).url}\n`);
    }
  } catch (e) {
    await view?.close();
    process.removeListener('exit', cleanup);
    stop.cancel();
    cleanup();
    throw e;
  }
  const { server, output } = serving;
  // SIGUSR1 writes the frame now (with a listener installed, Node does not start its inspector).
  const onUsr1 = () => output?.flush('signal');
  if (output) process.on('SIGUSR1', onUsr1);
  process.stdout.write(`mdevkit: serving ${spec} as ioreq server ${server.id} for domain ${options.host.domid} (${options.host.kind})\n`);
  const domain = watchDomain(server, options.domainPollMs ?? 500, (line) => options.verbose && process.stderr.write(`mdevkit: ${line}\n`));
  let why: string;
  try {
    await options.onServing?.(server);
    why = await Promise.race([stop.stopped, domain.gone]);
  } finally {
    domain.cancel();
  }
  if (options.verbose) process.stderr.write(`mdevkit: ${why}: shutting down\n`);
  if (options.saveFile) {
    // Before teardown: RAM BARs are read where the guest has them, once.
    try {
      const n = saveStateFile(server.device, options.saveFile);
      process.stdout.write(`mdevkit: device state saved to ${options.saveFile} (${n} bytes): ${why}\n`);
    } catch (e) {
      process.stderr.write(`mdevkit: ${(e as Error).message}\n`);
      process.exitCode = 1;
    }
  }
  process.removeListener('exit', cleanup);
  if (output) process.removeListener('SIGUSR1', onUsr1);
  await view?.close();
  cleanup();
  if (options.statsFile) writeFileSync(options.statsFile, JSON.stringify(serving.stats()));
}
