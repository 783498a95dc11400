/**
 * `mdevkit serve`: runs device models behind vfio-user sockets until SIGTERM/SIGINT. Follows the
 * vfio-user backend conventions (from vhost-user): no daemonizing, `--socket-path=PATH` or
 * `--fd=FDNUM`, SIGTERM ends cleanly (the socket file is removed).
 * @module
 */
import { writeFileSync } from 'node:fs';
import { MdevError } from '../errors.js';
import { VfioUserServer, type VfioUserServerOptions } from '../../adapters/vfio/server.js';
import { loadDevice } from './load-device.js';
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
}

/** Starts the servers; resolves when they have all been closed by a signal. */
export async function serve(spec: string, options: ServeOptions): Promise<void> {
  if (options.socketPaths.length === 0 && options.fd === undefined) {
    throw new MdevError('EINVAL', 'give --vfio-user PATH (or --socket-path PATH, or --fd N)', 'socket');
  }
  const servers: VfioUserServer[] = [];
  const stop = listenForStop();
  const log = options.verbose ? (line: string) => process.stderr.write(`mdevkit: ${line}\n`) : undefined;
  const make = async (): Promise<VfioUserServer> => {
    const device = await loadDevice(spec);
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
  } catch (e) {
    stop.cancel();
    for (const s of servers) s.close();
    throw e;
  }
  const signal = await stop.stopped;
  if (options.verbose) process.stderr.write(`mdevkit: ${signal}: shutting down\n`);
  if (options.statsFile) writeFileSync(options.statsFile, JSON.stringify({ devices: servers.map((s) => s.deviceStats()) }));
  await Promise.all(servers.map((s) => s.shutdown()));
}
