/**
 * `mdevkit serve`: runs device models behind vfio-user sockets until SIGTERM/SIGINT. Follows the
 * vfio-user backend conventions (from vhost-user): no daemonizing, `--socket-path=PATH` or
 * `--fd=FDNUM`, SIGTERM ends cleanly (the socket file is removed).
 * @module
 */
import { writeFileSync } from 'node:fs';
import { MdevError } from '../src/errors.js';
import { isDisplayDevice } from '../src/display-device.js';
import { VfioUserServer, type VfioUserServerOptions } from '../adapters/vfio/server.js';
import { DisplayOutput } from './display-output.js';
import { DisplayView, checkViewAddress, type DisplayViewOptions } from './view.js';
import { loadDevice } from './load-device.js';
import { restoreStateFile, saveStateFile } from './state-file.js';
import { listenForStop } from './stop-signal.js';

/** Options of {@link serve}. */
export interface ServeOptions {
  /** Socket paths: one device instance per path. */
  socketPaths: string[];
  /** An inherited socket (listening, or connected to a client). */
  fd?: number;
  /** Server options (limits, DMA layout, twin sockets). */
  server: VfioUserServerOptions;
  /** Print connection events. */
  verbose: boolean;
  /** Write the devices' statistics (DMA bytes, write-watch events, served accesses) here on exit. */
  statsFile?: string;
  /**
   * Keep a PNG of the device's frame at this path (a display device, one instance): written when
   * the picture changed, at most every `intervalMs` (default 100), on SIGUSR1 and at exit. VRAM
   * is compared page by page on that timer: the guest writes it through the VMM's mapping.
   */
  display?: { path: string; intervalMs?: number };
  /**
   * Serve the live view of the device's frame (a display device, one instance) at this address:
   * loopback only unless `allowRemote`. Its URL is printed once serving.
   */
  view?: Pick<DisplayViewOptions, 'host' | 'port' | 'allowRemote'>;
  /** Load the device's state from this file before serving (one device instance). */
  restoreFile?: string;
  /** Write the device's state to this file once the server has shut down (one device instance). */
  saveFile?: string;
}

/** Starts the servers; resolves when they have all been closed by a signal. */
export async function serve(spec: string, options: ServeOptions): Promise<void> {
  if (options.socketPaths.length === 0 && options.fd === undefined) {
    throw new MdevError('EINVAL', 'give --vfio-user PATH (or --socket-path PATH, or --fd N)', 'socket');
  }
  if (options.display && options.socketPaths.length + (options.fd === undefined ? 0 : 1) !== 1) {
    throw new MdevError('EINVAL', 'a display PNG is kept for one device instance: give one --vfio-user socket (or --fd)', 'display-png');
  }
  if (options.view) checkViewAddress(options.view);
  if (options.view && options.socketPaths.length + (options.fd === undefined ? 0 : 1) !== 1) {
    throw new MdevError('EINVAL', 'the live view shows one device instance: give one --vfio-user socket (or --fd)', 'view');
  }
  if ((options.saveFile || options.restoreFile) && options.socketPaths.length + (options.fd === undefined ? 0 : 1) !== 1) {
    throw new MdevError('EINVAL', 'a state file belongs to one device instance: give one --vfio-user socket (or --fd)', options.saveFile ? 'save' : 'restore');
  }
  const servers: VfioUserServer[] = [];
  const outputs: DisplayOutput[] = []; // at most one
  let view: DisplayView | null = null;
  const stop = listenForStop();
  const log = options.verbose ? (line: string) => process.stderr.write(`mdevkit: ${line}\n`) : undefined;
  const make = async (): Promise<VfioUserServer> => {
    const device = await loadDevice(spec);
    if (options.restoreFile) {
      const n = restoreStateFile(device, options.restoreFile);
      process.stdout.write(`mdevkit: device state restored from ${options.restoreFile} (${n} bytes)\n`);
    }
    if (options.display || options.view) {
      if (!isDisplayDevice(device)) throw new MdevError('EINVAL', `${spec} is not a display device (it has no scanout to render)`, options.display ? 'display-png' : 'view');
      outputs.push(new DisplayOutput(device, { ...options.display, warn: (line) => process.stderr.write(`mdevkit: warning: ${line}\n`) }));
    }
    // Device diagnostics are for the person running the server: shown with or without -v.
    const warn = (line: string) => process.stderr.write(`mdevkit: warning: ${line}\n`);
    const s = new VfioUserServer(device, { ...options.server, ...(log ? { log } : {}), warn });
    servers.push(s);
    return s;
  };
  try {
    for (const path of options.socketPaths) {
      const s = await make();
      s.listen(path);
      process.stdout.write(`mdevkit: serving ${spec} on vfio-user socket ${path}\n`);
    }
    if (options.fd !== undefined) {
      const s = await make();
      const kind = s.serveFd(options.fd);
      process.stdout.write(`mdevkit: serving ${spec} on ${kind} fd ${options.fd}\n`);
    }
    if (options.view) {
      view = new DisplayView(outputs[0]!, { ...options.view, name: spec, stats: () => servers[0]!.deviceStats() });
      process.stdout.write(`mdevkit: live view of ${spec} at ${(await view.listen()).url}\n`);
    }
  } catch (e) {
    stop.cancel();
    await view?.close();
    for (const s of servers) s.close();
    throw e;
  }
  // SIGUSR1 writes the frame now (with a listener installed, Node does not start its inspector).
  const output = outputs[0];
  const onUsr1 = () => output?.flush('signal');
  if (output) {
    output.start();
    process.on('SIGUSR1', onUsr1);
  }
  const signal = await stop.stopped;
  if (options.verbose) process.stderr.write(`mdevkit: ${signal}: shutting down\n`);
  await view?.close();
  if (output) {
    process.removeListener('SIGUSR1', onUsr1);
    output.stop(); // the final frame
  }
  if (options.statsFile) {
    writeFileSync(options.statsFile, JSON.stringify({ devices: servers.map((s) => s.deviceStats()), ...(output ? { display: output.stats() } : {}) }));
  }
  await Promise.all(servers.map((s) => s.shutdown()));
  if (options.saveFile) {
    // Every connection has ended: nothing changes the device any more.
    const n = saveStateFile(servers[0]!.device, options.saveFile);
    process.stdout.write(`mdevkit: device state saved to ${options.saveFile} (${n} bytes)\n`);
  }
}
