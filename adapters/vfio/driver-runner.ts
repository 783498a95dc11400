/**
 * Runs a guest driver over vfio-user from its own process, as a VMM would: connect, set up guest
 * RAM and interrupts, run the driver, print its result as JSON on stdout.
 *
 * Usage (as a script): `node driver-runner.js <socket> <driver.js> [options-json]`.
 * @module
 */
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join, resolve } from 'node:path';
import { MdevError } from '../../src/errors.js';
import { packageRoot } from '../../src/native/binding.js';
import { driverEntry, instrument, type DriverEntry, type DriverRun, type GuestDriver } from '../../src/guest-driver.js';
import { imageFromMigrationStream, migrationStreamFromImage } from '../../src/migration.js';
import { importUserModule } from '../../src/user-module.js';
import { VfioUserClient } from './client.js';
import { VfioDriverHost, type VfioDriverHostOptions } from './driver-host.js';
import { MigState } from './protocol.js';

/** The compiled runner script (a child process runs JavaScript, also when this module is TypeScript under test). */
function runnerScript(): string {
  const here = fileURLToPath(import.meta.url);
  return here.endsWith('.js') ? here : join(packageRoot(), 'dist', 'adapters', 'vfio', 'driver-runner.js');
}

/**
 * Options of {@link runDriverOverVfioUser}: the driver host's; which function of the module runs;
 * and a device state moved into the device before it, or out of it after (a move between
 * hypervisor paths, as `mdevkit compare` does it).
 */
export interface VfioDriverRunOptions extends VfioDriverHostOptions {
  /** What runs (default: the module's default export); `before+after`: both migration halves on this device, the second's result reported. */
  entry?: DriverEntry | 'before+after';
  /**
   * Before the driver, as a migration destination: guest RAM from the file `ram` (at the driver's
   * RAM base), the device from the state image `image` (a stream written in RESUMING, loaded by
   * RESUMING → STOP), interrupts wired as the restored config space says, then RUNNING.
   */
  restoreFrom?: { image: string; ram: string };
  /** After the driver, as a migration source: STOP_COPY, the stream read and saved as a state image to `image`, guest RAM to `ram`; the device is left in STOP. */
  saveTo?: { image: string; ram: string };
}

/** Runs the driver over a vfio-user socket in a child process; resolves with its result and costs. */
export function runDriverOverVfioUser(socketPath: string, driverFile: string, options: VfioDriverRunOptions = {}): Promise<DriverRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [runnerScript(), socketPath, driverFile, JSON.stringify(options)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.once('exit', (code) => {
      if (code !== 0) return reject(new MdevError('EIO', `driver failed on the vfio-user path (exit ${code}): ${err.trim()}`, 'driver'));
      try {
        resolve(JSON.parse(out) as DriverRun);
      } catch {
        reject(new MdevError('EIO', `driver printed no JSON result: ${out.slice(0, 200)}`, 'driver'));
      }
    });
  });
}

/** Loads a saved state and guest RAM into the device, the way a migration destination does. */
function resumeDevice(client: VfioUserClient, host: VfioDriverHost, from: { image: string; ram: string }): void {
  host.ram.write(host.ram.base, readFileSync(from.ram));
  const stream = migrationStreamFromImage(readFileSync(from.image));
  client.setMigrationState(MigState.RESUMING);
  for (let at = 0; at < stream.length; at += 1 << 20) client.migDataWrite(stream.subarray(at, at + (1 << 20)));
  client.setMigrationState(MigState.STOP);
  host.restoreInterrupts();
  client.setMigrationState(MigState.RUNNING);
}

/** Stops the device and saves its state (read through STOP_COPY) and guest RAM, the way a migration source does. */
function saveDevice(client: VfioUserClient, host: VfioDriverHost, to: { image: string; ram: string }): void {
  client.setMigrationState(MigState.STOP_COPY);
  writeFileSync(to.image, imageFromMigrationStream(client.migDataRead(2 ** 31)));
  writeFileSync(to.ram, host.ram.read(host.ram.base, host.ram.size));
  client.setMigrationState(MigState.STOP);
}

async function main(argv: string[]): Promise<void> {
  const [socketPath, driverFile, optionsJson] = argv;
  if (!socketPath || !driverFile) throw new MdevError('EINVAL', 'usage: driver-runner <socket> <driver.js> [options-json]', 'argv');
  const mod = (await importUserModule(resolve(driverFile))) as { default: GuestDriver };
  const client = VfioUserClient.connect(socketPath);
  try {
    const options = optionsJson ? (JSON.parse(optionsJson) as VfioDriverRunOptions) : {};
    const host = new VfioDriverHost(client, options);
    if (options.restoreFrom) resumeDevice(client, host, options.restoreFrom);
    // Device-side dirty logging of the driver's RAM: the vfio-user way of learning what DMA wrote.
    client.dmaLoggingStart(4096, [{ iova: host.ram.base, length: host.ram.size }]);
    const { host: timed, stats } = instrument(host);
    const t0 = process.hrtime.bigint();
    const entry = options.entry;
    const both = entry === 'before+after';
    if (both) driverEntry(mod, 'before')(timed);
    const result = driverEntry(mod, both ? 'after' : entry)(timed);
    const elapsedMs = Number(process.hrtime.bigint() - t0) / 1e6;
    const bitmap = client.dmaLoggingReport(host.ram.base, host.ram.size, 4096);
    client.dmaLoggingStop();
    if (options.saveTo) saveDevice(client, host, options.saveTo);
    let dirtyPages = 0;
    for (const b of bitmap) for (let v = b; v; v &= v - 1) dirtyPages++;
    const run: DriverRun = { result, traps: stats.traps, rttUs: stats.rttUs, interrupts: host.interruptCount(), elapsedMs, dirtyPages };
    process.stdout.write(JSON.stringify(run));
  } finally {
    client.close();
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).catch((e: Error) => {
    process.stderr.write(`${e.message}\n`);
    process.exit(1);
  });
}
