/**
 * `mdevkit compare <device> <driver>`: runs one guest driver over both mediation paths — vfio-user
 * (the device served by `mdevkit serve` in one process, the client as VMM in another) and Xen (the
 * IOREQ server adapter on the simulator, the vCPU in a worker) — checks that the device-visible
 * results are identical, and reports what each path cost.
 *
 * When the driver module also exports `migration` (two halves, {@link MigrationGuestDriver}), the
 * device's state moves between the paths mid-work: saved on vfio-user through STOP_COPY and
 * resumed on Xen, saved on Xen and resumed on vfio-user through RESUMING — guest RAM moving with it,
 * as a VMM's would — and the second half must see what it sees on a device that never moved.
 * @module
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import { MdevError } from '../src/errors.js';
import { percentile, type DriverResult, type DriverRun, type MigrationGuestDriver } from '../src/guest-driver.js';
import { packageRoot } from '../src/native/binding.js';
import type { WriteWatchMode } from '../src/write-watch.js';
import type { PciDevice } from '../src/pci/device.js';
import { runDriverOverVfioUser, type VfioDriverRunOptions } from '../adapters/vfio/driver-runner.js';
import { IoreqServer } from '../adapters/xen/ioreq-server.js';
import { pciSbdf } from '../adapters/xen/ioreq-abi.js';
import { SimHypervisor } from '../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../adapters/xen/sim/host.js';
import { runDriverOnSim } from '../adapters/xen/sim/driver-run.js';
import { BUILTIN_DRIVERS, loadDevice, resolveModule } from './load-device.js';

/** One path's figures. */
export interface PathReport {
  /** What the driver returned. */
  result: DriverResult;
  /** Accesses by kind. */
  traps: DriverRun['traps'];
  /** Median access round trip, µs. */
  rttP50Us: number;
  /** 99th-percentile access round trip, µs. */
  rttP99Us: number;
  /** Accesses per second over the run. */
  accessesPerSec: number;
  /** Interrupts the guest took. */
  interrupts: number;
  /** Guest pages the device wrote, as the path reports them (vfio-user DMA logging; Xen modified_memory). */
  dirtyPages: number | null;
  /** How this path detects guest writes to watched pages. */
  writeWatchMode: WriteWatchMode;
  /** Writes to watched pages the device was told of. */
  writeWatchEvents: number;
  /** Bytes the device read from guest memory by DMA. */
  dmaBytesRead: number;
  /** Bytes the device wrote to guest memory by DMA. */
  dmaBytesWritten: number;
  /** SHA-256 of the framebuffer, for display devices (null otherwise). */
  framebufferSha256: string | null;
}

/** One move of a device's state from one path to the other, mid-work. */
export interface CrossPathMove {
  /** Where the first half ran and the state was saved. */
  from: 'vfio-user' | 'xen';
  /** Where the state was restored and the second half ran. */
  to: 'vfio-user' | 'xen';
  /** Size of the state image that moved. */
  stateBytes: number;
  /** What the second half reported. */
  result: DriverResult;
  /** True when that equals the second half's result on a device that never moved. */
  identical: boolean;
  /** Result keys that differ from it. */
  differences: string[];
}

/** The cross-hypervisor part of a comparison (drivers that export `migration`). */
export interface CrossPathReport {
  /** The second half's result on a device that never moved (vfio-user; the Xen path must agree). */
  reference: DriverResult;
  /** True when every move saw what a device that never moved sees. */
  identical: boolean;
  /** vfio-user → Xen, then Xen → vfio-user. */
  moves: CrossPathMove[];
}

/** The comparison. */
export interface ComparisonReport {
  /** True when both paths gave the same driver results. */
  identical: boolean;
  /** Result keys that differ. */
  differences: string[];
  /** Per-path figures. */
  paths: { 'vfio-user': PathReport; xen: PathReport };
  /** Device state moved between the paths mid-work, when the driver has migration halves; else null. */
  migration: CrossPathReport | null;
}

/** What the device side observed during a run. */
interface DeviceSide {
  dmaBytesRead: number;
  dmaBytesWritten: number;
  writeWatchEvents: number;
}

function report(run: DriverRun, mode: WriteWatchMode, device: DeviceSide): PathReport {
  const total = run.traps.total;
  return {
    result: run.result,
    traps: run.traps,
    rttP50Us: Math.round(percentile(run.rttUs, 50) * 10) / 10,
    rttP99Us: Math.round(percentile(run.rttUs, 99) * 10) / 10,
    accessesPerSec: run.elapsedMs > 0 ? Math.round((total / run.elapsedMs) * 1000) : 0,
    interrupts: run.interrupts,
    dirtyPages: run.dirtyPages,
    writeWatchMode: mode,
    writeWatchEvents: device.writeWatchEvents,
    dmaBytesRead: device.dmaBytesRead,
    dmaBytesWritten: device.dmaBytesWritten,
    framebufferSha256: typeof run.result['framebufferSha256'] === 'string' ? run.result['framebufferSha256'] : null,
  };
}

async function overVfioUser(deviceSpec: string, driverFile: string, runOptions: VfioDriverRunOptions = {}): Promise<{ run: DriverRun; device: DeviceSide }> {
  const dir = mkdtempSync(join(tmpdir(), 'mdevkit-compare-'));
  const socket = join(dir, 'device.sock');
  const statsFile = join(dir, 'stats.json');
  const cli = join(packageRoot(), 'dist', 'cli', 'main.js');
  const server = spawn(process.execPath, [cli, 'serve', deviceSpec, '--vfio-user', socket, '--stats', statsFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => server.once('exit', resolve));
  try {
    await new Promise<void>((resolve, reject) => {
      let out = '';
      let err = '';
      server.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes(`socket ${socket}`)) resolve();
      });
      server.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      server.once('exit', (code) => reject(new MdevError('EIO', `the vfio-user server exited (${code}): ${err.trim()}`, 'device')));
    });
    const run = await runDriverOverVfioUser(socket, driverFile, runOptions);
    server.kill('SIGTERM');
    if ((await exited) !== 0) throw new MdevError('EIO', 'the vfio-user server did not exit cleanly', 'device');
    const stats = JSON.parse(readFileSync(statsFile, 'utf8')) as { devices: DeviceSide[] };
    return { run, device: stats.devices[0]! };
  } finally {
    if (server.exitCode === null) server.kill('SIGTERM');
    await exited;
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Hooks into a comparison run. */
export interface CompareHooks {
  /** Move the device's state between the paths too, when the driver has migration halves (default true). */
  migration?: boolean;
  /** Called when a path starts and finishes (progress reporting). */
  progress?: (line: string) => void;
  /** Called with the Xen path's device after the driver ran, before teardown (e.g. to read its scanout). */
  onXenDevice?: (device: PciDevice) => void;
}

async function overXenSim(deviceSpec: string, driverFile: string, hooks: CompareHooks = {}): Promise<{ run: DriverRun; device: DeviceSide }> {
  const device = await loadDevice(deviceSpec);
  const hypervisor = new SimHypervisor({ nrVcpus: 1, ramBytes: 16 << 20 });
  const host = new SimXenHost(hypervisor);
  const pci = { segment: 0, bus: 0, device: 5, fn: 0 };
  const server = new IoreqServer(device, host, { pci });
  try {
    server.start();
    const run = await runDriverOnSim(hypervisor, driverFile, { sbdf: pciSbdf(pci.segment, pci.bus, pci.device, pci.fn) });
    hooks.onXenDevice?.(device);
    return { run, device: { dmaBytesRead: device.dmaStats.bytesRead, dmaBytesWritten: device.dmaStats.bytesWritten, writeWatchEvents: server.writeWatch.events } };
  } finally {
    server.stop();
    host.close();
    hypervisor.close();
  }
}

const DRIVER_RAM = { base: 0x100000, size: 1 << 20 } as const;
const SIM_PCI = { segment: 0, bus: 0, device: 5, fn: 0 } as const;

/**
 * Runs `work` with the device served on a fresh simulated domain (guest RAM optionally preloaded
 * at the driver's base, the device optionally restored from `image` before it is served).
 */
async function onXenSim<T>(deviceSpec: string, ram: Uint8Array | null, image: Uint8Array | null, work: (hv: SimHypervisor, device: PciDevice) => Promise<T>): Promise<T> {
  const device = await loadDevice(deviceSpec);
  if (image) device.restoreState(image);
  const hypervisor = new SimHypervisor({ nrVcpus: 1, ramBytes: 16 << 20 });
  if (ram) hypervisor.writeGuest(DRIVER_RAM.base, ram);
  const host = new SimXenHost(hypervisor);
  const server = new IoreqServer(device, host, { pci: SIM_PCI });
  try {
    server.start();
    return await work(hypervisor, device);
  } finally {
    server.stop();
    host.close();
    hypervisor.close();
  }
}

/** The device's state moved between the paths mid-work (see the module comment). */
async function crossPath(deviceSpec: string, driverFile: string): Promise<CrossPathReport> {
  const sbdf = pciSbdf(SIM_PCI.segment, SIM_PCI.bus, SIM_PCI.device, SIM_PCI.fn);
  const dir = mkdtempSync(join(tmpdir(), 'mdevkit-cross-'));
  try {
    const reference = (await overVfioUser(deviceSpec, driverFile, { entry: 'before+after', placeBars: true })).run.result;
    const xenReference = await onXenSim(deviceSpec, null, null, async (hv) => {
      await runDriverOnSim(hv, driverFile, { sbdf }, { entry: 'before' });
      return (await runDriverOnSim(hv, driverFile, { sbdf, placeBars: false }, { entry: 'after' })).result;
    });
    const move = (from: CrossPathMove['from'], result: DriverResult, stateBytes: number): CrossPathMove => {
      const keys = new Set([...Object.keys(reference), ...Object.keys(result)]);
      const differences = [...keys].filter((k) => !isDeepStrictEqual(reference[k], result[k]));
      return { from, to: from === 'xen' ? 'vfio-user' : 'xen', stateBytes, result, identical: differences.length === 0, differences };
    };
    // vfio-user → Xen: the first half over vfio-user, the state read through STOP_COPY.
    const out = { image: join(dir, 'vfio.state'), ram: join(dir, 'vfio.ram') };
    await overVfioUser(deviceSpec, driverFile, { entry: 'before', placeBars: true, saveTo: out });
    const vfioImage = readFileSync(out.image);
    const onXen = await onXenSim(deviceSpec, readFileSync(out.ram), vfioImage, async (hv) => (await runDriverOnSim(hv, driverFile, { sbdf, placeBars: false }, { entry: 'after' })).result);
    // Xen → vfio-user: the first half on Xen, the state written through RESUMING.
    const into = { image: join(dir, 'xen.state'), ram: join(dir, 'xen.ram') };
    await onXenSim(deviceSpec, null, null, async (hv, device) => {
      await runDriverOnSim(hv, driverFile, { sbdf }, { entry: 'before' });
      writeFileSync(into.image, device.saveState());
      writeFileSync(into.ram, hv.readGuest(DRIVER_RAM.base, DRIVER_RAM.size));
    });
    const onVfio = (await overVfioUser(deviceSpec, driverFile, { entry: 'after', restoreFrom: into })).run.result;
    const moves = [move('vfio-user', onXen, vfioImage.length), move('xen', onVfio, readFileSync(into.image).length)];
    if (!isDeepStrictEqual(xenReference, reference)) {
      moves.forEach((m) => ((m.identical = false), m.differences.push('(the paths disagree without a move)')));
    }
    return { reference, identical: moves.every((m) => m.identical), moves };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The driver module's migration halves, when it has them. */
async function migrationHalves(driverFile: string): Promise<MigrationGuestDriver | null> {
  try {
    const mod = (await import(pathToFileURL(driverFile).href)) as { migration?: Partial<MigrationGuestDriver> };
    const m = mod.migration;
    return m && typeof m.before === 'function' && typeof m.after === 'function' ? (m as MigrationGuestDriver) : null;
  } catch {
    return null; // a module this process cannot import (TypeScript of the user's): no move
  }
}

/** Runs `driverSpec` against `deviceSpec` over both paths and compares. */
export async function compare(deviceSpec: string, driverSpec: string, hooks: CompareHooks = {}): Promise<ComparisonReport> {
  const driverFile = resolveModule(driverSpec, BUILTIN_DRIVERS, 'driver');
  hooks.progress?.(`vfio-user: serving ${deviceSpec} in one process, its driver in another (the client as VMM)…`);
  const vfio = await overVfioUser(deviceSpec, driverFile);
  hooks.progress?.(`xen (simulator): IOREQ server here, the driver on a simulated vCPU in a worker…`);
  const xen = await overXenSim(deviceSpec, driverFile, hooks);
  const keys = new Set([...Object.keys(vfio.run.result), ...Object.keys(xen.run.result)]);
  const differences = [...keys].filter((k) => !isDeepStrictEqual(vfio.run.result[k], xen.run.result[k]));
  let migration: CrossPathReport | null = null;
  if ((hooks.migration ?? true) && (await migrationHalves(driverFile))) {
    hooks.progress?.('migration: the state saved mid-work on one path, resumed on the other, both ways…');
    migration = await crossPath(deviceSpec, driverFile);
  }
  return {
    identical: differences.length === 0,
    differences,
    paths: { 'vfio-user': report(vfio.run, 'compare', vfio.device), xen: report(xen.run, 'trap', xen.device) },
    migration,
  };
}

/** The side-by-side table. */
export function formatComparison(r: ComparisonReport): string {
  const a = r.paths['vfio-user'];
  const b = r.paths.xen;
  const rows: [string, string, string][] = [
    ['driver results', r.identical ? 'identical' : `DIFFER: ${r.differences.join(', ')}`, ''],
    ['traps (total)', String(a.traps.total), String(b.traps.total)],
    ['  config read / write', `${a.traps.cfgRead} / ${a.traps.cfgWrite}`, `${b.traps.cfgRead} / ${b.traps.cfgWrite}`],
    ['  MMIO read / write', `${a.traps.mmioRead} / ${a.traps.mmioWrite}`, `${b.traps.mmioRead} / ${b.traps.mmioWrite}`],
    ['  PIO read / write', `${a.traps.pioRead} / ${a.traps.pioWrite}`, `${b.traps.pioRead} / ${b.traps.pioWrite}`],
    ['round trip p50 (µs)', a.rttP50Us.toFixed(1), b.rttP50Us.toFixed(1)],
    ['round trip p99 (µs)', a.rttP99Us.toFixed(1), b.rttP99Us.toFixed(1)],
    ['accesses / s', String(a.accessesPerSec), String(b.accessesPerSec)],
    ['bytes DMA\'d (read / written)', `${a.dmaBytesRead} / ${a.dmaBytesWritten}`, `${b.dmaBytesRead} / ${b.dmaBytesWritten}`],
    ['interrupts', String(a.interrupts), String(b.interrupts)],
    ['dirty pages reported', a.dirtyPages === null ? '-' : String(a.dirtyPages), b.dirtyPages === null ? '-' : String(b.dirtyPages)],
    ['write-watch events / mode', `${a.writeWatchEvents} / ${a.writeWatchMode}`, `${b.writeWatchEvents} / ${b.writeWatchMode}`],
  ];
  if (r.migration) {
    const cell = (m: CrossPathMove | undefined) => (m ? `→ ${m.to}: ${m.identical ? 'identical' : `DIFFER: ${m.differences.join(', ')}`} (${m.stateBytes} B state)` : '-');
    rows.push(['state saved here, resumed', cell(r.migration.moves.find((m) => m.from === 'vfio-user')), cell(r.migration.moves.find((m) => m.from === 'xen'))]);
  }
  const w0 = Math.max(...rows.map((x) => x[0].length), 6);
  const w1 = Math.max(...rows.map((x) => x[1].length), 'vfio-user (KVM)'.length);
  const line = (x: [string, string, string]) => `${x[0].padEnd(w0)}  ${x[1].padEnd(w1)}  ${x[2]}`;
  return [line(['', 'vfio-user (KVM)', 'xen (simulator)']), line(['-'.repeat(w0), '-'.repeat(w1), '-'.repeat(15)]), ...rows.map(line)].join('\n');
}
