/**
 * DMA benchmark process: the device side of DMA — GuestMemory.write/read of 4 KiB … 4 MiB — through
 * the vfio-user DMA space (a window the client shared by fd, mmapped here) and through the Xen
 * adapter's map cache (foreign mappings of the simulator's guest RAM), against the floor of a
 * memcpy (Buffer.copy) of the same size. Every copy is checked once for the right bytes.
 *
 * `node dma.js --reps N --out <file>`
 * @module
 */
import { VfioDmaSpace } from '../../adapters/vfio/dma.js';
import { XenGuestMemory } from '../../adapters/xen/guest-memory.js';
import { SimHypervisor } from '../../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../../adapters/xen/sim/host.js';
import { ftruncate, memfdCreate } from '../../src/native/fd.js';
import type { GuestMemory } from '../../src/guest-memory.js';
import { arg, intArg, parseArgs, writeResult } from './common.js';

const args = parseArgs(process.argv.slice(2));
const reps = intArg(args, 'reps');
const out = arg(args, 'out');
const SIZES = [4096, 65536, 1 << 20, 4 << 20];
const WINDOW = 8 << 20;
const BASE = 0x1000000;

function time(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

function measure(memory: GuestMemory, size: number): { write: number[]; read: number[]; copy: number[] } {
  const src = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4096) src[i] = (i >> 12) & 0xff;
  const dst = Buffer.alloc(size);
  const r = { write: [] as number[], read: [] as number[], copy: [] as number[] };
  memory.write(BASE, src);
  memory.read(BASE, dst);
  if (!dst.equals(src)) throw new Error(`DMA of ${size} bytes read back different bytes`);
  for (let i = 0; i < reps; i++) {
    r.write.push(time(() => memory.write(BASE, src)));
    r.read.push(time(() => memory.read(BASE, dst)));
    r.copy.push(time(() => src.copy(dst)));
  }
  return r;
}

const fd = memfdCreate('bench-guest-ram', { allowSealing: false });
ftruncate(fd, WINDOW);
const vfio = new VfioDmaSpace({ maxWindows: 16, transport: null, maxTransfer: 1 << 20 });
vfio.map({ flags: 3, offset: 0n, address: BigInt(BASE), size: BigInt(WINDOW) }, fd);
const hv = new SimHypervisor({ nrVcpus: 1, ramBytes: 64 << 20 });
const host = new SimXenHost(hv);
const xen = new XenGuestMemory(host);
// modified_memory is part of a device write on Xen: it is counted, as it should be.
const result: Record<string, { write: number[]; read: number[]; copy: number[] }> = {};
for (const size of SIZES) {
  result[`vfio-user ${size}`] = measure(vfio, size);
  result[`xen ${size}`] = measure(xen, size);
}
xen.flush();
host.close();
hv.close();
vfio.close();
writeResult(out, result);
