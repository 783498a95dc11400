/**
 * The VMM side of the vfio-user benchmarks: the synchronous {@link VfioUserClient} (what a vCPU
 * thread does on a trapped access) timing 4-byte reads against `mdevkit serve edu` in another
 * process. Every value read is checked.
 *
 * `node vfio-client.js --sockets a,b,… --paths native,js --iters N --warmup W --out <file> [--hold]`
 * - `native`: BAR0 + 0 (edu's ID register, served by the native core without JS);
 * - `js`: config space dword 0 (vendor/device ID; config space is served by the JS device model).
 * Every path is warmed up first, then the paths take turns in blocks of 1000 reads. With several
 * sockets, reads go round-robin over the devices (one client each).
 * With `--hold`, after writing the result it prints `holding` and keeps the connections open
 * until stdin closes (the runner reads the server's RSS meanwhile).
 * @module
 */
import { VfioUserClient } from '../../adapters/vfio/client.js';
import { EDU, EDU_IDENTITY } from '../../examples/edu/index.js';
import { arg, intArg, parseArgs, us, writeResult } from './common.js';

const args = parseArgs(process.argv.slice(2));
const sockets = arg(args, 'sockets').split(',');
const paths = arg(args, 'paths').split(',');
const iters = intArg(args, 'iters');
const warmup = intArg(args, 'warmup');
const out = arg(args, 'out');
const hold = args.get('hold') === 'true';

const ID = EDU.ID_VALUE;
const VENDOR_DEVICE = (EDU_IDENTITY.deviceId << 16) | EDU_IDENTITY.vendorId;

const BLOCK = 1000;

const clients = sockets.map((s) => VfioUserClient.connect(s, { timeoutMs: 5000 }));
try {
  const ops = paths.map((path) => {
    if (path === 'native') return { path, op: (c: VfioUserClient) => c.mmioRead(0, EDU.ID, 4), expect: ID };
    if (path === 'js') return { path, op: (c: VfioUserClient) => c.cfgRead(0, 4), expect: VENDOR_DEVICE };
    throw new Error(`unknown path ${path}`);
  });
  const n = clients.length;
  const samples = ops.map(() => new Float64Array(iters));
  let turn = 0;
  const run = (k: number, count: number, into: Float64Array | null, at: number): void => {
    const { path, op, expect } = ops[k]!;
    for (let i = 0; i < count; i++) {
      const c = clients[turn++ % n]!;
      const t0 = performance.now();
      const v = op(c);
      const t1 = performance.now();
      if (v !== expect) throw new Error(`${path}: read 0x${v.toString(16)}, expected 0x${expect.toString(16)}`);
      if (into) into[at + i] = us(t1 - t0);
    }
  };
  // Warm every path up first, then alternate blocks: drifts of the machine hit all paths alike.
  for (let k = 0; k < ops.length; k++) run(k, warmup, null, 0);
  for (let done = 0; done < iters; done += BLOCK) {
    for (let k = 0; k < ops.length; k++) run(k, Math.min(BLOCK, iters - done), samples[k]!, done);
  }
  const result: Record<string, number[]> = {};
  ops.forEach((o, k) => (result[o.path] = [...samples[k]!]));
  writeResult(out, result);
  if (hold) {
    process.stdout.write('holding\n');
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 30_000);
      process.stdin.on('data', () => {});
      process.stdin.once('end', () => {
        clearTimeout(timer);
        resolve();
      });
      process.stdin.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
} finally {
  for (const c of clients) c.close();
}
