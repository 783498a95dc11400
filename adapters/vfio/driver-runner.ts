/**
 * Runs a guest driver over vfio-user from its own process, as a VMM would: connect, set up guest
 * RAM and interrupts, run the driver, print its result as JSON on stdout.
 *
 * Usage (as a script): `node driver-runner.js <socket> <driver.js> [options-json]`.
 * @module
 */
import { spawn } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { join } from 'node:path';
import { MdevError } from '../../src/errors.js';
import { packageRoot } from '../../src/native/binding.js';
import { instrument, type DriverRun, type GuestDriver } from '../../src/guest-driver.js';
import { VfioUserClient } from './client.js';
import { VfioDriverHost, type VfioDriverHostOptions } from './driver-host.js';

/** The compiled runner script (a child process runs JavaScript, also when this module is TypeScript under test). */
function runnerScript(): string {
  const here = fileURLToPath(import.meta.url);
  return here.endsWith('.js') ? here : join(packageRoot(), 'dist', 'adapters', 'vfio', 'driver-runner.js');
}

/** Runs the driver over a vfio-user socket in a child process; resolves with its result and costs. */
export function runDriverOverVfioUser(socketPath: string, driverFile: string, options: VfioDriverHostOptions = {}): Promise<DriverRun> {
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

async function main(argv: string[]): Promise<void> {
  const [socketPath, driverFile, optionsJson] = argv;
  if (!socketPath || !driverFile) throw new MdevError('EINVAL', 'usage: driver-runner <socket> <driver.js> [options-json]', 'argv');
  const mod = (await import(pathToFileURL(driverFile).href)) as { default: GuestDriver };
  const client = VfioUserClient.connect(socketPath);
  try {
    const host = new VfioDriverHost(client, optionsJson ? (JSON.parse(optionsJson) as VfioDriverHostOptions) : {});
    // Device-side dirty logging of the driver's RAM: the vfio-user way of learning what DMA wrote.
    client.dmaLoggingStart(4096, [{ iova: host.ram.base, length: host.ram.size }]);
    const { host: timed, stats } = instrument(host);
    const t0 = process.hrtime.bigint();
    const result = mod.default(timed);
    const elapsedMs = Number(process.hrtime.bigint() - t0) / 1e6;
    const bitmap = client.dmaLoggingReport(host.ram.base, host.ram.size, 4096);
    client.dmaLoggingStop();
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
