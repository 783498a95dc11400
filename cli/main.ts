#!/usr/bin/env node
/**
 * The `mdevkit` command line.
 * @module
 */
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { isErrno } from '../src/errors.js';
import { formatLspci } from '../src/pci/lspci.js';
import { describeRegions } from './describe.js';
import { loadDevice } from './load-device.js';
import { serve } from './serve.js';
import { compare, formatComparison } from './compare.js';
import { demo } from './demo.js';
import { parseBdf, privcmdHost, serveXen, simHost } from './serve-xen.js';
import { probeListing, probeRead, probeWrite } from './probe.js';
import { init } from './init.js';
import { parseViewAddress, type ViewAddress } from './view.js';
import { MigrationFlag } from '../adapters/vfio/protocol.js';

// A reader that goes away (`mdevkit lspci edu | head`) ends the output, as for any Unix tool:
// EPIPE on stdout exits quietly instead of throwing from an unhandled 'error' event.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});

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
  .description('serve a device over vfio-user, or as a Xen IOREQ server, until SIGTERM')
  .argument('<device>', 'built-in device name (edu, shmem) or path to a device module')
  .option('--vfio-user <path>', 'listen on a vfio-user socket at <path> (repeatable: one device each)', collect, [])
  .option('--socket-path <path>', 'same as --vfio-user (vhost-user backend convention)')
  .option('--fd <n>', 'serve vfio-user on an inherited socket fd (listening or connected)', parseIntOption)
  .option('--dma-layout <layout>', 'vfio-user DMA_READ/DMA_WRITE layout: auto (detected per client), spec or qemu', 'auto')
  .option('--max-data-xfer <bytes>', 'largest REGION_READ/WRITE count accepted', parseIntOption)
  .option('--no-twin-socket', 'do not offer vfio-user twin-socket mode')
  .option('--message-timeout <ms>', 'vfio-user: drop a client that does not complete a started message within <ms> (0: never)', parseIntOption, 5000)
  .option('--reply-timeout <ms>', 'vfio-user: drop a client that leaves replies unread for <ms> (0: never)', parseIntOption, 10000)
  .option('--drain-timeout <ms>', 'vfio-user: ending a connection, wait at most <ms> for the client\'s end of stream', parseIntOption, 2000)
  .option('--no-io-thread', 'serve every access on the event loop (no I/O thread — per vfio-user connection, or the Xen engine\'s — for accesses that need no JS)')
  .option('--no-blocking-serve', 'always serve accesses that need JS through the event loop (no blocking receive — vfio-user — or poll — Xen — on the JS thread while the loop is otherwise idle)')
  .option('--max-waiting <n>', 'vfio-user: clients that may queue for a busy device; more are refused with EBUSY', parseIntOption, 16)
  .option('--migration <states>', 'vfio-user: VFIO migration v2 offered: stop-copy[,p2p][,pre-copy], or off', 'stop-copy,p2p,pre-copy')
  .option('--xen <domid>', 'serve as a Xen IOREQ server for domain <domid> (needs dom0: /dev/xen/privcmd)', parseIntOption)
  .option('--bdf <address>', 'Xen: the device\'s PCI address in the guest, SSSS:BB:DD.F (claims its config space)')
  .option('--config-latch', 'Xen: answer reads of the 0xCF8 latch (PVH guests probing conf1)', false)
  .option('--bufioreq <mode>', 'Xen: buffered ioreq ring: off, legacy or atomic', 'atomic')
  .option('--xen-sim', 'serve as an IOREQ server on the simulator of Xen\'s side (no Xen needed)', false)
  .option('--sim-vcpus <n>', 'simulator: guest vCPUs', parseIntOption, 1)
  .option('--sim-ram <MiB>', 'simulator: guest RAM in MiB', parseIntOption, 64)
  .option('--restore <file>', 'load the device state from <file> (written by --save, on either path) before serving')
  .option('--save <file>', 'write the device state to <file> when serving ends (a signal; Xen: also when the domain is gone, e.g. after xl save; RAM BARs were saved as guest memory too, so xl restore\'s config needs memory = RAM + their MiB + 1)')
  .option('--domain-poll <ms>', 'Xen: check every <ms> that the domain still exists (0: never)', parseIntOption, 500)
  .option('--ram-bars <mode>', 'Xen: BARs of RAM (a display\'s VRAM): ram (guest RAM at the BAR\'s address, never trapped; needs privileged handles at start) or trap (every access an ioreq)', parseRamBars, 'ram' as 'ram' | 'trap')
  .option('--ram-bar-parking <address>', 'Xen: guest-physical address (page aligned) where the RAM BARs\' pages are populated and parked while they do not decode, outside guest RAM and every BAR window (default 64 GiB + devfn GiB; with xl save park low, e.g. 0x200000000: it walks every frame up to the highest ever populated)', parsePageAddress)
  .option('--stats <file>', 'on exit, write statistics as JSON: vfio-user the devices\' (DMA bytes, write-watch events, served accesses), Xen the server\'s counters; with --display-png the display\'s figures')
  .option('--display-png <file>', 'display devices: keep a PNG of the frame at <file> (written atomically when it changes, on SIGUSR1 and at exit); Xen: changed VRAM pages from track_dirty_vram')
  .option('--display-interval <ms>', 'with --display-png: check VRAM every <ms> and write at most one PNG per <ms>', parseIntOption, 100)
  .option('--view <[host:]port>', 'display devices: serve a live view of the screen at http://host:port/ (host default 127.0.0.1; port 0: any free one)', parseView)
  .option('--view-allow-remote', 'let --view listen on an address that is not loopback (anyone who reaches it sees the screen)', false)
  .option('-v, --verbose', 'log connections and errors to stderr', false);
program.commands.at(-1)!.addHelpText(
  'after',
  `
Attaching QEMU (>= 10.1) to a vfio-user socket:
  qemu-system-x86_64 -machine q35,memory-backend=mem \\
    -object memory-backend-memfd,id=mem,size=1G,share=on \\
    -device '{"driver":"vfio-user-pci","socket":{"type":"unix","path":"/run/edu.sock"}}' ...
Guest RAM must be shared (share=on): with share=off QEMU still passes its memfd, but the guest's
writes land in a private copy and the device reads zeros, with no error anywhere. RAM without an
fd (memory-backend-ram, plain -m) works, more slowly: every device DMA is a message.

A display as a Xen IOREQ server (in dom0, the guest created paused: the server raises the
domain's page limit and populates VRAM before it restricts its handles):
  mdevkit serve bochs-display --xen 5 --bdf 00:07.0 --config-latch --display-png frame.png
VRAM is guest RAM at BAR0's address (--ram-bars ram); the PNG follows the pages the guest wrote,
as Xen's track_dirty_vram reports them. --ram-bars trap serves VRAM through ioreqs instead.`,
);
for (let i = 0; i < 6; i++) program.commands.at(-1)!.option(`--bar${i} <address>`, i === 0 ? 'Xen: fixed placement of BAR0 (likewise --bar1 … --bar5), for guests without PCI config access' : undefined as unknown as string);
program.commands.at(-1)!.action(async (spec: string, opts: ServeOpts) => {
  if (opts.xen !== undefined || opts.xenSim) {
    const fixedBars: Record<number, bigint> = {};
    for (let i = 0; i < 6; i++) {
      const v = opts[`bar${i}` as keyof ServeOpts];
      if (typeof v === 'string') fixedBars[i] = parseAddress(v, `--bar${i}`);
    }
    if (!['off', 'legacy', 'atomic'].includes(opts.bufioreq)) throw new InvalidArgumentError(`--bufioreq must be off, legacy or atomic`);
    await serveXen(spec, {
      host: opts.xenSim ? simHost(opts.simVcpus, opts.simRam) : privcmdHost(opts.xen!),
      pci: opts.bdf ? parseBdf(opts.bdf) : null,
      fixedBars,
      claimConfigLatch: opts.configLatch,
      bufioreq: opts.bufioreq as 'off' | 'legacy' | 'atomic',
      verbose: opts.verbose,
      domainPollMs: opts.domainPoll,
      ...(opts.restore ? { restoreFile: opts.restore } : {}),
      ...(opts.save ? { saveFile: opts.save } : {}),
      ramBars: opts.ramBars,
      ioThread: opts.ioThread,
      blockingServe: opts.blockingServe,
      ...(opts.ramBarParking !== undefined ? { ramBarParking: opts.ramBarParking } : {}),
      ...(opts.stats ? { statsFile: opts.stats } : {}),
      ...(opts.displayPng ? { display: { path: opts.displayPng, intervalMs: opts.displayInterval } } : {}),
      ...(opts.view ? { view: { ...opts.view, allowRemote: opts.viewAllowRemote } } : {}),
    });
    return;
  }
  const socketPaths = [...opts.vfioUser, ...(opts.socketPath ? [opts.socketPath] : [])];
  await serve(spec, {
    socketPaths,
    ...(opts.fd !== undefined ? { fd: opts.fd } : {}),
    server: {
      dmaLayout: opts.dmaLayout as 'auto' | 'spec' | 'qemu',
      twinSocket: opts.twinSocket,
      messageTimeoutMs: opts.messageTimeout,
      replyTimeoutMs: opts.replyTimeout,
      drainMs: opts.drainTimeout,
      maxWaitingClients: opts.maxWaiting,
      ioThread: opts.ioThread,
      blockingServe: opts.blockingServe,
      migrationFlags: parseMigrationFlags(opts.migration),
      ...(opts.maxDataXfer !== undefined ? { maxDataXferSize: opts.maxDataXfer } : {}),
    },
    verbose: opts.verbose,
    ...(opts.stats ? { statsFile: opts.stats } : {}),
    ...(opts.displayPng ? { display: { path: opts.displayPng, intervalMs: opts.displayInterval } } : {}),
    ...(opts.view ? { view: { ...opts.view, allowRemote: opts.viewAllowRemote } } : {}),
    ...(opts.restore ? { restoreFile: opts.restore } : {}),
    ...(opts.save ? { saveFile: opts.save } : {}),
  });
});

interface ServeOpts {
  vfioUser: string[];
  socketPath?: string;
  fd?: number;
  dmaLayout: string;
  maxDataXfer?: number;
  twinSocket: boolean;
  messageTimeout: number;
  replyTimeout: number;
  drainTimeout: number;
  maxWaiting: number;
  ioThread: boolean;
  blockingServe: boolean;
  migration: string;
  restore?: string;
  save?: string;
  domainPoll: number;
  xen?: number;
  xenSim: boolean;
  simVcpus: number;
  simRam: number;
  bdf?: string;
  configLatch: boolean;
  bufioreq: string;
  ramBars: 'ram' | 'trap';
  ramBarParking?: bigint;
  verbose: boolean;
  stats?: string;
  displayPng?: string;
  displayInterval: number;
  view?: ViewAddress;
  viewAllowRemote: boolean;
  bar0?: string;
  bar1?: string;
  bar2?: string;
  bar3?: string;
  bar4?: string;
  bar5?: string;
}

/** `--migration`: "off", or a list of stop-copy (required), p2p, pre-copy → VFIO_MIGRATION_* bits. */
function parseMigrationFlags(value: string): number {
  if (value === 'off') return 0;
  const bits: Record<string, number> = { 'stop-copy': MigrationFlag.STOP_COPY, p2p: MigrationFlag.P2P, 'pre-copy': MigrationFlag.PRE_COPY };
  let flags = 0;
  for (const name of value.split(',')) {
    const bit = bits[name.trim()];
    if (bit === undefined) throw new InvalidArgumentError(`--migration: unknown state group ${name} (stop-copy, p2p, pre-copy, or off)`);
    flags |= bit;
  }
  if (!(flags & MigrationFlag.STOP_COPY)) throw new InvalidArgumentError('--migration: stop-copy is required (or off)');
  return flags;
}

/** `--ram-bars`: ram or trap. */
function parseRamBars(value: string): 'ram' | 'trap' {
  if (value !== 'ram' && value !== 'trap') throw new InvalidArgumentError('must be ram or trap');
  return value;
}

/** `--ram-bar-parking`: a page-aligned guest-physical address. */
function parsePageAddress(value: string): bigint {
  const v = parseAddress(value, '--ram-bar-parking');
  if (v % 4096n !== 0n) throw new InvalidArgumentError('not page aligned (4096)');
  return v;
}

function parseAddress(value: string, option: string): bigint {
  try {
    const v = BigInt(value);
    if (v < 0n || v >= 1n << 64n) throw new Error('range');
    return v;
  } catch {
    throw new InvalidArgumentError(`${option}: not an address: ${value}`);
  }
}

program
  .command('compare')
  .description('run one guest driver over vfio-user and over Xen (simulator); check identical results; report costs side by side; with migration halves, move the device state mid-work from each path to the other')
  .argument('<device>', 'built-in device name (edu) or path to a device module')
  .argument('[driver]', 'built-in driver name or path to a driver module (default: the device\'s own)')
  .option('--json', 'print one JSON object instead of the table', false)
  .option('--no-migration', 'do not move the device state between the paths (drivers with migration halves)')
  .action(async (device: string, driver: string | undefined, opts: { json: boolean; migration: boolean }) => {
    const r = await compare(device, driver ?? device, { migration: opts.migration });
    process.stdout.write((opts.json ? JSON.stringify(r, null, 2) : formatComparison(r)) + '\n');
    if (!r.identical || (r.migration !== null && !r.migration.identical)) process.exitCode = 3;
  });

program
  .command('demo')
  .description('the vGPU and its driver over vfio-user and Xen (simulator): frame as PNG, comparison table')
  .option('--out <file>', 'where to write the PNG (default: a file in the temp directory)')
  .action(async (opts: { out?: string }) => {
    await demo(opts.out);
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

program
  .command('init')
  .description('scaffold a device project: package.json, tsconfig, a device with registers, a BAR, MSI and DMA, a guest driver, a vitest test')
  .argument('<dir>', 'a new or empty directory')
  .option('--mdevkit <spec>', 'the mdevkit dependency: a version range (default: ^this version), or a tarball or directory')
  .option('--name <name>', 'the package name (default: the directory\'s name)')
  .action((dir: string, opts: { mdevkit?: string; name?: string }) => {
    const r = init(dir, { ...(opts.mdevkit ? { mdevkit: opts.mdevkit } : {}), ...(opts.name ? { name: opts.name } : {}) });
    process.stdout.write(`mdevkit: wrote ${r.files.length} files to ${r.dir} (mdevkit ${r.mdevkit}):\n${r.files.map((f) => `  ${f}`).join('\n')}\n`);
    process.stdout.write(`next: cd ${dir} && npm install && npm test\n`);
  });

function parseView(value: string): ViewAddress {
  try {
    return parseViewAddress(value);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

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
