#!/usr/bin/env node
/**
 * The `mdevkit` command line.
 * @module
 */
import { Command, CommanderError } from 'commander';
import { isErrno } from '../errors.js';
import { formatLspci } from '../pci/lspci.js';
import { describeRegions } from './describe.js';
import { loadDevice } from './load-device.js';

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
