/**
 * `npm run bench`: mdevkit's benchmark suite. Every figure is a ratio against a floor measured in
 * the same run with the same process placement (lower is better):
 *
 * 1. vfio-user trap round trip (4-byte read; client process ↔ `mdevkit serve edu` process), native
 *    register path and JS handler path, vs a raw UNIX-socket ping-pong of the same sizes;
 * 2. Xen-path round trip on the simulator (vCPU worker thread ↔ IoreqServer on the main thread),
 *    native and JS paths, vs a raw shared-page + eventfd ping-pong between the same two threads;
 * 3. dirty-bitmap report-and-clear of a 64 GiB and a 1 TiB guest vs memcpy of the same size;
 * 4. scaling: round trips and server RSS per device with 1, 8 and 64 devices in one server.
 *
 * Options: `--quick` (short runs), `--placement same|split|both` (default both: `same` pins both
 * ends to CPU 0, `split` the server side to CPU 0 and the client side to CPU 1, with taskset),
 * `--json <file>`, `--out <dir>` (histograms; default a new directory under the temp dir),
 * `--only vfio,xen,dirty,dma,scale`.
 *
 * Prints the markdown table on stdout, progress on stderr. Every child process and socket is
 * cleaned up on every way out.
 * @module
 */
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { closeFd } from '../../src/native/fd.js';
import { socketPair } from '../../src/native/socket.js';
import { parseArgs } from './common.js';
import { benchScript, canPin, cleanupAll, cpuTimeNs, finished, installCleanup, releaseDir, spawnNode, spawnPinned, startServe, trackDir, vmRssKiB, type Pin } from './procs.js';
import { spawn, spawnSync } from 'node:child_process';
import { packageRoot } from '../../src/native/binding.js';
import { EDU } from '../../examples/edu/index.js';
import { histogramSvg, jsonFigures, markdownTable, summarize, type Figure } from './stats.js';

const USAGE = 'usage: npm run bench -- [--quick] [--placement same|split|both] [--json <file>] [--out <dir>] [--only cfloor,vfio,xen,dirty,dma,scale,many]';
function usage(problem: string): never {
  process.stderr.write(`bench: ${problem}\n${USAGE}\n`);
  process.exit(2);
}

let args: Map<string, string>;
try {
  args = parseArgs(process.argv.slice(2));
} catch (e) {
  usage((e as Error).message);
}
if (args.has('help')) {
  process.stdout.write(USAGE + '\n');
  process.exit(0);
}
for (const k of args.keys()) if (!['quick', 'placement', 'json', 'out', 'only'].includes(k)) usage(`unknown option --${k}`);
const quick = args.get('quick') === 'true';
const only = new Set((args.get('only') ?? 'cfloor,vfio,xen,dirty,dma,scale,many').split(','));
for (const o of only) if (!['cfloor', 'vfio', 'xen', 'dirty', 'dma', 'scale', 'many'].includes(o)) usage(`--only: unknown benchmark ${o}`);
const placementArg = args.get('placement') ?? 'both';
if (!['same', 'split', 'both'].includes(placementArg)) usage('--placement must be same, split or both');
for (const k of ['json', 'out']) if (args.get(k) === 'true') usage(`--${k} needs a path`);

/** Sizes of the runs: latency phases are `rounds` × (`warmup` + `iters`) per path. */
const cfg = quick
  ? { iters: 2000, warmup: 500, rounds: 1, scaleIters: 3000, scaleWarmup: 640, dirtySmall: 40, dirtyLarge: 6, dirtyRounds: 1, dmaReps: 20, cIters: 10_000, cRounds: 1, manyDevices: 8 }
  : { iters: 10_000, warmup: 2000, rounds: 3, scaleIters: 30_000, scaleWarmup: 2000, dirtySmall: 300, dirtyLarge: 40, dirtyRounds: 2, dmaReps: 200, cIters: 100_000, cRounds: 7, manyDevices: 64 };
const CHILD_TIMEOUT_MS = 120_000;
const SCALE_DEVICES = [1, 8, 64];

// Placement: `taskset -c` for whole processes (os.setPriority is not pinning); unpinned without it.
const pinning = canPin([0, 1]);
const placements: { name: string; pin: Pin }[] = [];
if (!pinning) {
  if (placementArg === 'split') usage('--placement split needs taskset and two CPUs');
  process.stderr.write('bench: taskset cannot pin to CPUs 0 and 1 here: running unpinned\n');
  placements.push({ name: 'unpinned', pin: { server: null, client: null } });
} else {
  if (placementArg !== 'split') placements.push({ name: 'same', pin: { server: 0, client: 0 } });
  if (placementArg !== 'same') placements.push({ name: 'split', pin: { server: 0, client: 1 } });
}

installCleanup();
const work = trackDir(mkdtempSync(join(tmpdir(), 'mdevkit-bench-run-')));
const outDir = args.get('out') ?? mkdtempSync(join(tmpdir(), 'mdevkit-bench-'));
mkdirSync(outDir, { recursive: true });

const figures: Figure[] = [];
const notes: string[] = [];
let fileSerial = 0;
const resultFile = (): string => join(work, `r${fileSerial++}.json`);
const readResult = <T>(path: string): T => JSON.parse(readFileSync(path, 'utf8')) as T;
const log = (line: string): void => void process.stderr.write(`bench: ${line}\n`);

function latencyFigure(name: string, placement: string, samples: number[], floorName: string, floorSamples: number[], slug: string, unit = 'µs'): void {
  const s = summarize(samples);
  const f = summarize(floorSamples);
  figures.push({ name, placement, unit, value: s.p50, p99: s.p99, floorName, floor: f.p50, floorP99: f.p99, samples: s.n });
  writeFileSync(join(outDir, `${slug}-${placement}.svg`), histogramSvg(`${name} [${placement}] vs ${floorName}`, unit, samples, floorSamples));
}

/** One socket ping-pong floor run: two processes over a socketpair. */
async function socketFloor(pin: Pin): Promise<{ samples: number[]; rssKiB: number }> {
  const [a, b] = socketPair({ nonBlocking: true });
  const serverOut = resultFile();
  const clientOut = resultFile();
  let server;
  let client;
  try {
    server = spawnNode(pin.server, [benchScript('pingpong'), '--role', 'server', '--out', serverOut], ['ignore', 'pipe', 'pipe', a]);
    client = spawnNode(pin.client, [benchScript('pingpong'), '--role', 'client', '--iters', String(cfg.iters), '--warmup', String(cfg.warmup), '--out', clientOut], ['ignore', 'pipe', 'pipe', b]);
  } finally {
    closeFd(a);
    closeFd(b);
  }
  await Promise.all([finished(server!, 'ping-pong server', CHILD_TIMEOUT_MS), finished(client!, 'ping-pong client', CHILD_TIMEOUT_MS)]);
  return { samples: readResult<{ samples: number[] }>(clientOut).samples, rssKiB: readResult<{ rssKiB: number }>(serverOut).rssKiB };
}

/** Socket floors per placement (shared by the vfio-user and scaling figures). */
const socketFloors = new Map<string, { samples: number[]; rssKiB: number[] }>();
async function addSocketFloor(placement: string, pin: Pin): Promise<void> {
  const r = await socketFloor(pin);
  const f = socketFloors.get(placement) ?? { samples: [], rssKiB: [] };
  f.samples.push(...r.samples);
  f.rssKiB.push(r.rssKiB);
  socketFloors.set(placement, f);
}

const SOCKET_FLOOR = 'UNIX socket ping-pong 32 B/36 B';
const C_FLOOR = 'C floor: C client ↔ C recvmsg/sendmsg echo server';
/** Server work per request (ns) of the calibration run: about the CPU a JS-handled access adds (README). */
const FLOOR_WORK_NS = 400;

/** The C programs of the floor (built by npm install from native/bench/). */
const cProgram = (name: string): string => join(packageRoot(), 'build', 'Release', name);
const haveStrace = spawnSync('strace', ['-V'], { stdio: 'ignore' }).status === 0;

interface CRun {
  samples: number[];
  /** Server CPU per request, µs. */
  cpuUs: number;
}

/** One request-at-a-time run of the C client against a socket. */
async function cClient(pin: Pin, socket: string, args: string[], iters: number): Promise<{ samples: number[] }> {
  const out = resultFile();
  const c = spawnPinned(pin.client, cProgram('mdevkit-rtt-client'), ['--socket', socket, '--iters', String(iters), '--warmup', String(Math.min(2000, iters / 5)), '--out', out, ...args]);
  await finished(c, 'C client', CHILD_TIMEOUT_MS);
  return { samples: readResult<{ samples_ns: number[] }>(out).samples_ns.map((ns) => ns / 1000) };
}

/**
 * The C floor: the echo server (two syscalls per request) and the C client, fresh each run. With
 * `workNs`, the server spins that long per request before replying.
 */
async function cFloorRun(pin: Pin, iters: number, { strace = false, workNs = 0 } = {}): Promise<CRun & { syscalls?: number }> {
  const dir = trackDir(mkdtempSync(join(work, 'cfloor-')));
  const sock = join(dir, 'floor.sock');
  const server = spawnPinned(pin.server, cProgram('mdevkit-echo-floor'), [sock, ...(workNs > 0 ? ['--work-ns', String(workNs)] : [])]);
  const served = finished(server, 'C echo floor', CHILD_TIMEOUT_MS);
  await new Promise<void>((resolve, reject) => {
    server.stdout!.once('data', () => resolve());
    served.catch(reject);
  });
  const tracer = strace ? await startStrace(server.pid!) : null;
  const r = await cClient(pin, sock, [], iters);
  const syscalls = tracer ? await tracer.stop() : undefined;
  const stats = JSON.parse((await served).stdout.trim().split('\n').at(-1)!) as { served: number; server_cpu_ns: number };
  releaseDir(dir);
  return { samples: r.samples, cpuUs: stats.server_cpu_ns / stats.served / 1000, ...(syscalls ? { syscalls: syscalls.total / stats.served } : {}) };
}

/** Counts a running process's system calls (all threads) with strace until stop(). */
async function startStrace(pid: number): Promise<{ stop(): Promise<{ total: number; bySyscall: Record<string, number> }> }> {
  const out = resultFile();
  const p = spawn('strace', ['-c', '-f', '-q', '-p', String(pid), '-o', out], { stdio: ['ignore', 'ignore', 'pipe'] });
  // strace reports "attached" once it traces the process; without -q it would say so on stderr.
  await new Promise((r) => setTimeout(r, 300));
  return {
    async stop() {
      // strace ends by itself when the traced process does.
      if (p.exitCode === null && p.signalCode === null) {
        const done = new Promise((r) => p.once('exit', r));
        p.kill('SIGINT');
        await done;
      }
      const bySyscall: Record<string, number> = {};
      for (const line of readFileSync(out, 'utf8').split('\n')) {
        const m = /^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$/.exec(line);
        if (m && m[2] !== 'total') bySyscall[m[2]!] = Number(m[1]);
      }
      // futex: Node's worker threads waiting for work, and the I/O thread's rare hand-overs.
      const total = Object.entries(bySyscall).filter(([k]) => k !== 'futex').reduce((a, [, v]) => a + v, 0);
      return { total, bySyscall };
    },
  };
}

/**
 * mdevkit serve against the C floor: the same C client drives `mdevkit serve edu` (native register:
 * edu's ID; JS handler: a config-space dword), interleaved with floor runs, round by round.
 */
async function benchCFloor(placement: string, pin: Pin): Promise<void> {
  const dir = trackDir(mkdtempSync(join(work, 'cserve-')));
  const server = await startServe(pin.server, [join(dir, 'edu.sock')]);
  const sock = server.paths[0]!;
  const floor: number[] = [];
  const native: number[] = [];
  const js: number[] = [];
  const worked: number[] = [];
  const cpu = { floor: [] as number[], native: [] as number[], js: [] as number[] };
  const serveRun = async (args: string[]): Promise<CRun> => {
    const before = cpuTimeNs(server.proc.pid!);
    const r = await cClient(pin, sock, ['--vfio-user', ...args], cfg.cIters);
    const after = cpuTimeNs(server.proc.pid!);
    const requests = cfg.cIters + Math.min(2000, cfg.cIters / 5) + 1;
    return { samples: r.samples, cpuUs: (after - before) / requests / 1000 };
  };
  try {
    for (let r = 0; r < cfg.cRounds; r++) {
      log(`C floor [${placement}] round ${r + 1}/${cfg.cRounds}`);
      const f = await cFloorRun(pin, cfg.cIters);
      floor.push(...f.samples);
      cpu.floor.push(f.cpuUs);
      const n = await serveRun(['--offset', String(EDU.ID), '--region', '0', '--expect', String(EDU.ID_VALUE)]);
      native.push(...n.samples);
      cpu.native.push(n.cpuUs);
      const j = await serveRun(['--offset', '0', '--region', '7', '--expect', '0x11e81234']);
      js.push(...j.samples);
      cpu.js.push(j.cpuUs);
      worked.push(...(await cFloorRun(pin, cfg.cIters, { workNs: FLOOR_WORK_NS })).samples);
    }
    latencyFigure('vfio-user 4 B read, native register, C client', placement, native, C_FLOOR, floor, 'c-native');
    latencyFigure('vfio-user 4 B read, JS handler (config dword), C client', placement, js, C_FLOOR, floor, 'c-js');
    // What a given amount of server work costs the round trip, with no Node in it: on one CPU the
    // cost is not linear (see README, Performance), so a path's ratio reads against this one.
    latencyFigure(`C echo server + ${FLOOR_WORK_NS / 1000} µs of work per request, C client`, placement, worked, C_FLOOR, floor, 'c-work');
    const med = (x: number[]): number => summarize(x).p50;
    for (const [what, v] of [['native register', cpu.native], ['JS handler', cpu.js]] as const) {
      figures.push({ name: `server CPU per request, ${what}, C client`, placement, unit: 'µs', value: med([...v]), p99: null, floorName: 'C echo server CPU per request', floor: med(cpu.floor), floorP99: null, samples: v.length });
    }
    // Pipelined: 16 requests in flight, against the floor's request-at-a-time rate.
    const out = resultFile();
    const pipe = spawnPinned(pin.client, cProgram('mdevkit-rtt-client'), ['--socket', sock, '--vfio-user', '--offset', String(EDU.ID), '--iters', String(cfg.cIters * 2), '--warmup', '2000', '--pipeline', '16', '--out', out]);
    await finished(pipe, 'C client (pipelined)', CHILD_TIMEOUT_MS);
    const pr = readResult<{ requests: number; elapsed_ns: number }>(out);
    const pipelined = pr.requests / (pr.elapsed_ns / 1e9);
    const floorRate = 1e6 / (floor.reduce((a, b) => a + b, 0) / floor.length);
    notes.push(`C floor [${placement}] pipelined: mdevkit serve does ${(pipelined / 1000).toFixed(0)} k 4-byte reads/s with 16 in flight, ${(pipelined / floorRate).toFixed(1)}× the C floor's request-at-a-time ${(floorRate / 1000).toFixed(0)} k/s`);
    figures.push({ name: 'pipelined 4 B reads/s, 16 in flight (higher is better), C client', placement, unit: 'k/s', value: pipelined / 1000, p99: null, floorName: 'C floor, one request at a time', floor: floorRate / 1000, floorP99: null, samples: pr.requests });
    if (haveStrace) {
      const sc: Record<string, number> = {};
      const fl = await cFloorRun(pin, 20_000, { strace: true });
      sc['floor'] = fl.syscalls!;
      for (const [what, args] of [['native', ['--offset', String(EDU.ID), '--region', '0']], ['js', ['--offset', '0', '--region', '7']]] as const) {
        const t = await startStrace(server.proc.pid!);
        await cClient(pin, sock, ['--vfio-user', ...args], 20_000);
        const r = await t.stop();
        sc[what] = r.total / (20_000 + 2000 + 1);
        notes.push(`syscalls [${placement}] ${what}: ${Object.entries(r.bySyscall).sort((a, b) => b[1] - a[1]).slice(0, 5).map(([k, v]) => `${k} ${v}`).join(', ')} for 22 001 requests`);
      }
      for (const what of ['native', 'js'] as const) {
        figures.push({ name: `syscalls per request, ${what === 'native' ? 'native register' : 'JS handler'} (strace, futex excluded)`, placement, unit: 'calls', value: sc[what]!, p99: null, floorName: 'C echo server', floor: sc['floor']!, floorP99: null, samples: 20_000 });
      }
    } else {
      notes.push(`syscalls [${placement}]: not counted (no strace here)`);
    }
  } finally {
    await server.stop();
    releaseDir(dir);
  }
}

async function benchVfio(placement: string, pin: Pin): Promise<void> {
  const dir = trackDir(mkdtempSync(join(work, 'vfio-')));
  const server = await startServe(pin.server, [join(dir, 'edu.sock')]);
  const native: number[] = [];
  const js: number[] = [];
  const raw: number[] = [];
  const floor: number[] = [];
  try {
    for (let r = 0; r < cfg.rounds; r++) {
      log(`vfio-user [${placement}] round ${r + 1}/${cfg.rounds}`);
      const before = socketFloors.get(placement)?.samples.length ?? 0;
      await addSocketFloor(placement, pin);
      floor.push(...socketFloors.get(placement)!.samples.slice(before));
      const out = resultFile();
      const client = spawnNode(pin.client, [benchScript('vfio-client'), '--sockets', server.paths[0]!, '--paths', 'native,js', '--iters', String(cfg.iters), '--warmup', String(cfg.warmup), '--out', out]);
      await finished(client, 'vfio-user client', CHILD_TIMEOUT_MS);
      const res = readResult<{ native: number[]; js: number[] }>(out);
      native.push(...res.native);
      js.push(...res.js);
      const rawOut = resultFile();
      const rawClient = spawnNode(pin.client, [benchScript('raw-vfio'), '--socket', server.paths[0]!, '--iters', String(cfg.iters), '--warmup', String(cfg.warmup), '--out', rawOut]);
      await finished(rawClient, 'bare vfio-user client', CHILD_TIMEOUT_MS);
      raw.push(...readResult<{ samples: number[] }>(rawOut).samples);
    }
  } finally {
    await server.stop();
    releaseDir(dir);
  }
  latencyFigure('vfio-user 4 B read, native register (edu ID)', placement, native, SOCKET_FLOOR, floor, 'vfio-native');
  latencyFigure('vfio-user 4 B read, JS handler (config dword)', placement, js, SOCKET_FLOOR, floor, 'vfio-js');
  latencyFigure('vfio-user 4 B read, native register, bare client', placement, raw, SOCKET_FLOOR, floor, 'vfio-bare');
  const p50 = (x: number[]): number => summarize(x).p50;
  const parts = [p50(raw) - p50(floor), p50(native) - p50(raw), p50(js) - p50(native)];
  notes.push(
    `vfio-user [${placement}] p50 attribution: floor ${p50(floor).toFixed(1)} µs; the server adds ${parts[0]!.toFixed(1)} µs (bare client − floor); ` +
      `VfioUserClient adds ${parts[1]!.toFixed(1)} µs (client − bare client); a JS handler instead of a native register ${parts[2]!.toFixed(1)} µs` +
      (parts.some((d) => d < 0) ? ' (a negative difference is below the run-to-run noise of this placement)' : ''),
  );
}

async function benchXen(placement: string, pin: Pin): Promise<void> {
  log(`Xen simulator [${placement}]`);
  const out = resultFile();
  const split = pin.server !== null && pin.client !== null && pin.server !== pin.client;
  // Split: the process may use both CPUs, and pins its two threads itself.
  const cpu = split ? null : pin.server;
  // Server cost per ioreq (CPU, and syscalls under strace): once, on one CPU, like the C-floor figures.
  const costArgs = split ? [] : ['--cost', String(cfg.cIters / 5), ...(haveStrace ? ['--syscalls', String(cfg.iters / 5)] : [])];
  const child = spawnNode(cpu, [benchScript('xen'), '--iters', String(cfg.rounds * cfg.iters), '--warmup', String(cfg.warmup), '--out', out, ...(split ? ['--split'] : []), ...costArgs]);
  await finished(child, 'Xen benchmark', CHILD_TIMEOUT_MS);
  type Cost = { cpuNs?: number; syscalls?: Record<string, number>; n: number };
  const res = readResult<{ floor: number[]; native: number[]; js: number[]; busyFloor?: number[]; busy?: number[]; engine: Record<string, number>; cost: Record<string, Cost>; syscallIters: number }>(out);
  const perPath = cfg.rounds * cfg.iters + cfg.warmup;
  // The engine's own counters say where each access was served: check the paths are what they claim.
  if (res.engine['native']! < perPath * (res.busy ? 2 : 1) || res.engine['js']! < perPath || res.engine['bad']! !== 0) {
    throw new Error(`Xen engine counters do not match the phases: ${JSON.stringify(res.engine)}`);
  }
  const floorName = 'shared page + eventfd ping-pong';
  latencyFigure('Xen sim 4 B MMIO read, native register (edu ID)', placement, res.native, floorName, res.floor, 'xen-native');
  latencyFigure('Xen sim 4 B config read, JS handler', placement, res.js, floorName, res.floor, 'xen-js');
  const floorCost = res.cost['floor'];
  for (const [what, key] of [['native register', 'native'], ['JS handler', 'js']] as const) {
    const c = res.cost[key];
    if (c?.cpuNs !== undefined && floorCost?.cpuNs !== undefined) {
      figures.push({ name: `Xen sim server CPU per ioreq, ${what}`, placement, unit: 'µs', value: c.cpuNs / 1000, p99: null, floorName: 'eventfd ping-pong, server half CPU', floor: floorCost.cpuNs / 1000, floorP99: null, samples: c.n });
    }
    if (c?.syscalls && floorCost?.syscalls) {
      const per = (m: Record<string, number>) => Object.values(m).reduce((a, b) => a + b, 0) / res.syscallIters;
      figures.push({ name: `Xen sim syscalls per ioreq, ${what} (strace, server threads, futex excluded)`, placement, unit: 'calls', value: per(c.syscalls), p99: null, floorName: 'eventfd ping-pong, server half', floor: per(floorCost.syscalls), floorP99: null, samples: res.syscallIters });
      const top = Object.entries(c.syscalls).sort((a, b) => b[1] - a[1]).slice(0, 5).map(([k, v]) => `${k} ${(v / res.syscallIters).toFixed(2)}`).join(', ');
      notes.push(`Xen syscalls per ioreq [${placement}] ${what}: ${top}`);
    }
  }
  if (floorCost?.syscalls) {
    notes.push(`Xen syscalls per ioreq [${placement}] floor: ${Object.entries(floorCost.syscalls).sort((a, b) => b[1] - a[1]).slice(0, 5).map(([k, v]) => `${k} ${(v / res.syscallIters).toFixed(2)}`).join(', ')}`);
  }
  if (res.busy && res.busyFloor) {
    latencyFigure('Xen sim 4 B MMIO read, busy-poll (vCPU spins, server polls)', placement, res.busy, 'shared-page busy-poll ping-pong', res.busyFloor, 'xen-busy');
  } else {
    notes.push(`Xen busy-poll [${placement}]: not run — busy polling needs the two sides on different CPUs (use --placement split)`);
  }
}

async function benchDirty(): Promise<void> {
  const placement = pinning ? 'cpu0' : 'unpinned';
  log(`dirty bitmap [${placement}]`);
  const out = resultFile();
  const child = spawnNode(pinning ? 0 : null, [benchScript('dirty'), '--reps-small', String(cfg.dirtySmall), '--reps-large', String(cfg.dirtyLarge), '--rounds', String(cfg.dirtyRounds), '--out', out]);
  await finished(child, 'dirty-bitmap benchmark', CHILD_TIMEOUT_MS);
  const res = readResult<Record<string, { report: number[]; copy: number[]; dirtyPages: number; bitmapBytes: number; dirtyWords: number }>>(out);
  for (const [key, r] of Object.entries(res)) {
    const [size, unit, kind] = key.split(' ');
    const mib = r.bitmapBytes / 2 ** 20;
    const how = kind === 'uniform' ? '1% dirty, uniform' : '1% dirty, 64 KiB runs';
    latencyFigure(`dirty report-and-clear, ${size} ${unit} guest, ${how}`, placement, r.report, `memcpy ${mib} MiB (Buffer.copy)`, r.copy, `dirty-${size}${unit}-${kind}`, 'ms');
    const gibs = (ms: number[]): string => (r.bitmapBytes / 2 ** 30 / (summarize(ms).p50 / 1000)).toFixed(1);
    notes.push(
      `dirty ${key}: ${r.dirtyPages} of ${r.bitmapBytes * 8} pages dirty, ${((100 * r.dirtyWords * 8) / r.bitmapBytes).toFixed(1)}% of the 64-bit words non-zero; ` +
        `report-and-clear ${gibs(r.report)} GiB/s of bitmap, memcpy ${gibs(r.copy)} GiB/s`,
    );
  }
}

async function benchDma(): Promise<void> {
  const placement = pinning ? 'cpu0' : 'unpinned';
  log(`DMA throughput [${placement}]`);
  const out = resultFile();
  const child = spawnNode(pinning ? 0 : null, [benchScript('dma'), '--reps', String(cfg.dmaReps), '--out', out]);
  await finished(child, 'DMA benchmark', CHILD_TIMEOUT_MS);
  const res = readResult<Record<string, { write: number[]; read: number[]; copy: number[] }>>(out);
  for (const [key, r] of Object.entries(res)) {
    const [path, sizeText] = key.split(' ');
    const size = Number(sizeText);
    const label = size >= 1 << 20 ? `${size >> 20} MiB` : `${size >> 10} KiB`;
    const what = path === 'xen' ? 'Xen map cache (simulator)' : 'vfio-user DMA window (fd)';
    latencyFigure(`DMA write ${label}, ${what}`, placement, r.write.map((ms) => ms * 1000), `memcpy ${label}`, r.copy.map((ms) => ms * 1000), `dma-write-${path}-${size}`);
    latencyFigure(`DMA read ${label}, ${what}`, placement, r.read.map((ms) => ms * 1000), `memcpy ${label}`, r.copy.map((ms) => ms * 1000), `dma-read-${path}-${size}`);
    const gibs = (ms: number[]): string => (size / 2 ** 30 / (summarize(ms).p50 / 1000)).toFixed(2);
    notes.push(`DMA ${label} via ${what}: write ${gibs(r.write)} GiB/s, read ${gibs(r.read)} GiB/s, memcpy ${gibs(r.copy)} GiB/s`);
  }
}

async function benchScale(placement: string, pin: Pin): Promise<void> {
  if (!socketFloors.has(placement)) {
    for (let r = 0; r < cfg.rounds; r++) await addSocketFloor(placement, pin);
  }
  const floor = socketFloors.get(placement)!;
  const floorRss = summarize(floor.rssKiB).p50 / 1024;
  const rss: Record<number, number> = {};
  for (const n of SCALE_DEVICES) {
    log(`scaling [${placement}]: ${n} device(s)`);
    const dir = trackDir(mkdtempSync(join(work, `scale${n}-`)));
    const server = await startServe(
      pin.server,
      [...Array(n).keys()].map((i) => join(dir, `edu${i}.sock`)),
    );
    try {
      const out = resultFile();
      const client = spawnNode(pin.client, [benchScript('vfio-client'), '--sockets', server.paths.join(','), '--paths', 'native', '--iters', String(cfg.scaleIters), '--warmup', String(Math.max(cfg.scaleWarmup, 10 * n)), '--out', out, '--hold'], ['pipe', 'pipe', 'pipe']);
      const done = finished(client, `scaling client (${n} devices)`, CHILD_TIMEOUT_MS);
      let rssKiB = -1;
      await new Promise<void>((resolve, reject) => {
        let text = '';
        client.stdout!.on('data', (d: Buffer) => {
          text += d.toString();
          if (rssKiB < 0 && text.includes('holding\n')) {
            // Every client is still connected: this is the server's footprint serving n devices.
            try {
              rssKiB = vmRssKiB(server.proc.pid!);
              resolve();
            } catch (e) {
              reject(e as Error);
            }
            client.stdin!.end();
          }
        });
        done.catch(reject);
      });
      await done;
      const samples = readResult<{ native: number[] }>(out).native;
      latencyFigure(`scale: ${n} device${n > 1 ? 's' : ''}, 4 B read round robin`, placement, samples, SOCKET_FLOOR, floor.samples, `scale-${n}`);
      rss[n] = rssKiB / 1024;
      figures.push({ name: `scale: server RSS per device, ${n} device${n > 1 ? 's' : ''}`, placement, unit: 'MiB', value: rss[n]! / n, p99: null, floorName: 'RSS of a bare Node + native core process', floor: floorRss, floorP99: null, samples: 0 });
    } finally {
      await server.stop();
      releaseDir(dir);
    }
  }
  const last = SCALE_DEVICES[SCALE_DEVICES.length - 1]!;
  notes.push(`scale [${placement}]: server VmRSS ${SCALE_DEVICES.map((n) => `${n} dev ${rss[n]!.toFixed(1)} MiB`).join(', ')}; marginal ${(((rss[last]! - rss[1]!) / (last - 1)) * 1024).toFixed(0)} KiB per extra device; bare Node + native core ${floorRss.toFixed(1)} MiB`);
}

/**
 * Many devices on a host with both cores: N devices served by one `mdevkit serve` process (each
 * connection's native accesses on its own I/O thread) or by N processes (one each), N C clients
 * reading concurrently, unpinned. Total accesses per second, and RSS.
 */
async function benchMany(): Promise<void> {
  const n = cfg.manyDevices;
  const per = quick ? 2000 : 20_000;
  const results: Record<string, { rate: number; rssMiB: number }> = {};
  for (const layout of ['one process', 'process per device'] as const) {
    log(`many devices: ${n}, ${layout}`);
    const dir = trackDir(mkdtempSync(join(work, 'many-')));
    const paths = [...Array(n).keys()].map((i) => join(dir, `edu${i}.sock`));
    const servers = layout === 'one process' ? [await startServe(null, paths, 60_000)] : await Promise.all(paths.map((p) => startServe(null, [p], 60_000)));
    try {
      const t0 = performance.now();
      await Promise.all(paths.map((p) => cClient({ server: null, client: null }, p, ['--vfio-user', '--offset', String(EDU.ID), '--region', '0', '--expect', String(EDU.ID_VALUE)], per)));
      const seconds = (performance.now() - t0) / 1000;
      const rss = servers.reduce((a, sv) => a + vmRssKiB(sv.proc.pid!), 0) / 1024;
      results[layout] = { rate: (n * (per + Math.min(2000, per / 5))) / seconds, rssMiB: rss };
    } finally {
      await Promise.all(servers.map((sv) => sv.stop()));
      releaseDir(dir);
    }
  }
  const one = results['one process']!;
  const each = results['process per device']!;
  figures.push({ name: `${n} devices, concurrent 4 B reads/s (higher is better), one process with I/O threads`, placement: 'both CPUs', unit: 'k/s', value: one.rate / 1000, p99: null, floorName: 'a process per device', floor: each.rate / 1000, floorP99: null, samples: n * per });
  figures.push({ name: `${n} devices, server RSS in all, one process`, placement: 'both CPUs', unit: 'MiB', value: one.rssMiB, p99: null, floorName: 'a process per device', floor: each.rssMiB, floorP99: null, samples: 0 });
  notes.push(`many devices: ${n} devices, ${n} concurrent C clients, unpinned on both CPUs: one process ${(one.rate / 1000).toFixed(0)} k reads/s in ${one.rssMiB.toFixed(0)} MiB, a process per device ${(each.rate / 1000).toFixed(0)} k reads/s in ${each.rssMiB.toFixed(0)} MiB`);
}

const started = performance.now();
try {
  for (const { name, pin } of placements) {
    if (only.has('cfloor')) await benchCFloor(name, pin);
    if (only.has('vfio')) await benchVfio(name, pin);
    if (only.has('xen')) await benchXen(name, pin);
    if (only.has('scale')) await benchScale(name, pin);
  }
  if (only.has('dirty')) await benchDirty();
  if (only.has('dma')) await benchDma();
  if (only.has('many')) await benchMany();
} catch (e) {
  cleanupAll();
  process.stderr.write(`bench: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
}
const seconds = (performance.now() - started) / 1000;

const lines = [
  markdownTable(figures),
  '',
  `ratio = value / floor (lower is better); floors measured in the same run with the same placement. ${quick ? 'Quick run' : 'Full run'} in ${seconds.toFixed(0)} s; ` +
    `${cfg.rounds * cfg.iters} latency samples per path (after ${cfg.warmup} warm-up reads; scaling: ${cfg.scaleIters} over all devices). Placement: same = both ends on CPU 0, split = server side CPU 0, client side CPU 1 (taskset).`,
  ...notes.map((n) => `- ${n}`),
];
process.stdout.write(lines.join('\n') + '\n');
process.stdout.write(`\nhistograms: ${outDir}\n`);
const jsonPath = args.get('json');
if (jsonPath !== undefined) {
  writeFileSync(jsonPath, JSON.stringify(jsonFigures(figures), null, 2) + '\n');
  process.stdout.write(`figures: ${jsonPath}\n`);
}
cleanupAll();
