#!/usr/bin/env node
/**
 * The `mdevkit` command line.
 * @module
 */
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { isErrno } from '../errors.js';
import { formatLspci } from '../pci/lspci.js';
import { describeRegions } from './describe.js';
import { loadDevice } from './load-device.js';
import { serve } from './serve.js';
import { probeListing, probeRead, probeWrite } from './probe.js';

const program = new Command();
program.name('mdevkit').description('Write a virtual PCI device once; serve it over vfio-user or as a Xen IOREQ server.').exitOverride();

program
  .command('lspci')
  .description('create a device from a module and print its config space decoded, lspci -vv style, and its regions')
  .argument('<device>', 'built-in device name (edu) or path to a device module')
  .option('--no-size-bars', 'do not size BARs (sizing writes all-ones to each BAR and restores it)')
  .action(async (spec: string, opts: { sizeBars: boolean }) => {
    const device = await loadDevice(spec);
    process.stdout.write(formatLspci(device.configAccessor, { configSize: device.config.size, sizeBars: opts.sizeBars }) + '\n');
    process.stdout.write(describeRegions(device) + '\n');
  });

program
  .command('serve')
  .description('serve a device over vfio-user until SIGTERM (one device instance per socket)')
  .argument('<device>', 'built-in device name (edu) or path to a device module')
  .option('--vfio-user <path>', 'listen on a vfio-user socket at <path> (repeatable)', collect, [])
  .option('--socket-path <path>', 'same as --vfio-user (vhost-user backend convention)')
  .option('--fd <n>', 'serve on an inherited socket fd (listening or connected)', parseIntOption)
  .option('--dma-layout <layout>', 'DMA_READ/DMA_WRITE message layout: spec or qemu', 'spec')
  .option('--max-data-xfer <bytes>', 'largest REGION_READ/WRITE count accepted', parseIntOption)
  .option('--no-twin-socket', 'do not offer twin-socket mode')
  .option('-v, --verbose', 'log connections and errors to stderr', false)
  .action(async (spec: string, opts: { vfioUser: string[]; socketPath?: string; fd?: number; dmaLayout: string; maxDataXfer?: number; twinSocket: boolean; verbose: boolean }) => {
    const socketPaths = [...opts.vfioUser, ...(opts.socketPath ? [opts.socketPath] : [])];
    await serve(spec, {
      socketPaths,
      ...(opts.fd !== undefined ? { fd: opts.fd } : {}),
      server: {
        dmaLayout: opts.dmaLayout as 'spec' | 'qemu',
        twinSocket: opts.twinSocket,
        ...(opts.maxDataXfer !== undefined ? { maxDataXferSize: opts.maxDataXfer } : {}),
      },
      verbose: opts.verbose,
    });
  });

const probeCommand = program
  .command('probe')
  .description('connect to a vfio-user server like a VMM and list regions, IRQs and decoded config space')
  .requiredOption('--vfio-user <path>', 'the server socket')
  .option('--no-size-bars', 'do not size BARs in the config decode (sizing writes to them)')
  .option('--timeout <ms>', 'request timeout', parseIntOption, 10000)
  .action((opts: { vfioUser: string; sizeBars: boolean; timeout: number }) => {
    process.stdout.write(probeListing({ path: opts.vfioUser, sizeBars: opts.sizeBars, timeoutMs: opts.timeout }) + '\n');
  });
probeCommand
  .command('read')
  .description('read 1, 2, 4 or 8 bytes of a region (index or name: bar0 … bar5, rom, config)')
  .argument('<region>')
  .argument('<offset>')
  .argument('[size]', 'bytes', '4')
  .action((region: string, offset: string, size: string) => {
    const o = probeCommand.opts<{ vfioUser: string; timeout: number }>();
    process.stdout.write(probeRead({ path: o.vfioUser, sizeBars: false, timeoutMs: o.timeout }, region, offset, size) + '\n');
  });
probeCommand
  .command('write')
  .description('write a 1, 2, 4 or 8-byte value to a region')
  .argument('<region>')
  .argument('<offset>')
  .argument('<size>')
  .argument('<value>')
  .action((region: string, offset: string, size: string, value: string) => {
    const o = probeCommand.opts<{ vfioUser: string; timeout: number }>();
    probeWrite({ path: o.vfioUser, sizeBars: false, timeoutMs: o.timeout }, region, offset, size, value);
  });

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function parseIntOption(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`not a non-negative integer: ${value}`);
  return n;
}

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) process.exit(e.exitCode);
  if (isErrno(e)) {
    process.stderr.write(`mdevkit: ${e.message}\n`);
    process.exit(1);
  }
  throw e;
}
