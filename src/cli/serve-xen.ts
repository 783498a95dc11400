/**
 * `mdevkit serve <device> --xen <domid>` (and `--xen-sim`): runs a device model as a Xen IOREQ
 * server until SIGTERM/SIGINT, then removes everything it created (server, ranges, claims, ports,
 * mappings) — also when startup fails half way. It also ends when its domain is gone.
 *
 * Save and restore follow the domain's (src/cli/domain-watch.ts explains why it is done this way):
 * with `--save FILE` the device state is written when the domain is gone after `xl save` (or on a
 * signal); `--restore FILE` serves the restored domain's device from that state.
 * @module
 */
import { MdevError } from '../errors.js';
import { IoreqServer, type PciAddress } from '../../adapters/xen/ioreq-server.js';
import type { BufioreqModeName, XenHost } from '../../adapters/xen/host.js';
import { PrivcmdXenHost } from '../../adapters/xen/privcmd-host.js';
import { SimHypervisor } from '../../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../../adapters/xen/sim/host.js';
import { loadDevice } from './load-device.js';
import { watchDomain } from './domain-watch.js';
import { restoreStateFile, saveStateFile } from './state-file.js';
import { listenForStop } from './stop-signal.js';

/** Options of {@link serveXen}. */
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
  /** Called once serving, with the server (the simulator's guest uses it). */
  onServing?: (server: IoreqServer) => void | Promise<void>;
  /** Load the device's state from this file (`--save` output, either path) before serving. */
  restoreFile?: string;
  /** Write the device's state to this file when serving ends: a signal, or the domain gone. */
  saveFile?: string;
  /** How often to check that the domain still exists, in ms (default 500; 0: never). */
  domainPollMs?: number;
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

/** Serves until a signal; resolves after a clean teardown. */
export async function serveXen(spec: string, options: ServeXenOptions): Promise<void> {
  const device = await loadDevice(spec);
  if (options.restoreFile) {
    // Before anything exists in the hypervisor: a refused file leaves nothing to undo.
    const n = restoreStateFile(device, options.restoreFile);
    process.stdout.write(`mdevkit: device state restored from ${options.restoreFile} (${n} bytes)\n`);
  }
  const log = options.verbose ? (line: string) => process.stderr.write(`mdevkit: ${line}\n`) : undefined;
  const server = new IoreqServer(device, options.host, {
    pci: options.pci,
    fixedBars: options.fixedBars,
    claimConfigLatch: options.claimConfigLatch,
    bufioreq: options.bufioreq,
    ...(log ? { log } : {}),
  });
  // Whatever happens from here on, the hypervisor must not be left with our server or claims.
  const cleanup = () => {
    server.stop();
    options.host.close();
  };
  process.once('exit', cleanup);
  const stop = listenForStop();
  try {
    server.start();
  } catch (e) {
    process.removeListener('exit', cleanup);
    stop.cancel();
    cleanup();
    throw e;
  }
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
  cleanup();
}
