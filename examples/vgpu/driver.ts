/**
 * A guest driver for the vGPU, written once against the neutral interface: it programs MSI-X, puts
 * a test image into guest pages mapped (in reverse order) through the GTT, submits fills, a blit
 * and a fence, waits for the fence interrupt, then remaps a GTT entry — which the device must notice
 * through write-watch — and blits again. It reports fences, errors and the scanout's SHA-256.
 * @module
 */
import { findCapability, PCI, PCI_COMMAND, PCI_MSIX, type DriverResult, type GuestDriverHost, type MigrationGuestDriver } from 'mdevkit';
import { VGPU } from './index.js';

/** Scanout geometry the driver sets up. */
export const VGPU_DRIVER_SCANOUT = { width: 128, height: 128, stride: 512 } as const;

/** The test image: 64 × 64 XRGB8888 pixels. */
export function testImagePixel(x: number, y: number): number {
  return (0xff000000 | ((x * 4) << 16) | ((y * 4) << 8) | ((x ^ y) & 0xff)) >>> 0;
}

function u32(v: number): Uint8Array {
  return new Uint8Array(new Uint32Array([v >>> 0]).buffer);
}

function command(words: (number | bigint)[], layout: ('u32' | 'u64' | 'u16x2')[]): Uint8Array {
  const b = new Uint8Array(VGPU.CMD_SIZE);
  const v = new DataView(b.buffer);
  let at = 0;
  words.forEach((w, i) => {
    const kind = layout[i]!;
    if (kind === 'u64') {
      v.setBigUint64(at, BigInt(w), true);
      at += 8;
    } else if (kind === 'u16x2') {
      const n = Number(w);
      v.setUint16(at, n & 0xffff, true);
      v.setUint16(at + 2, n >>> 16, true);
      at += 4;
    } else {
      v.setUint32(at, Number(w) >>> 0, true);
      at += 4;
    }
  });
  return b;
}


/** Runs the vGPU driver. */
export default function vgpuDriver(host: GuestDriverHost): DriverResult {
  const r32 = (o: number) => Number(host.mmioRead(0, o, 4));
  const w32 = (o: number, v: number) => host.mmioWrite(0, o, 4, v >>> 0);
  const w64 = (o: number, v: number) => host.mmioWrite(0, o, 8, BigInt(v));
  host.cfgWrite(PCI.COMMAND, 2, host.cfgRead(PCI.COMMAND, 2) | PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  const id = r32(VGPU.ID);
  const version = r32(VGPU.VERSION);

  // MSI-X vector 0: program the entry, then enable (the VMM side wires its delivery).
  const msix = findCapability(host, 0x11);
  if (msix) {
    w32(VGPU.MSIX_TABLE + 0, 0xfee00000);
    w32(VGPU.MSIX_TABLE + 4, 0);
    w32(VGPU.MSIX_TABLE + 8, 0x42);
    w32(VGPU.MSIX_TABLE + 12, 0);
    host.cfgWrite(msix + PCI_MSIX.FLAGS, 2, PCI_MSIX.FLAGS_ENABLE);
  }

  // Guest memory layout.
  const base = host.ram.base;
  const ring = base + 0x1000;
  const gtt = base + 0x2000;
  const fenceAt = base + 0x3000;
  const imagePages = base + 0x10000;
  const greenPage = base + 0x20000;

  // The 64 × 64 test image spans 4 GPU pages (256-byte rows); GPU page i lives in guest page 3 - i.
  const gpuPageToGpa = (i: number) => imagePages + (3 - i) * 4096;
  for (let i = 0; i < 4; i++) {
    const page = new Uint8Array(4096);
    const v = new DataView(page.buffer);
    for (let k = 0; k < 1024; k++) {
      const pixel = i * 1024 + k;
      v.setUint32(k * 4, testImagePixel(pixel % 64, Math.floor(pixel / 64)), true);
    }
    host.ram.write(gpuPageToGpa(i), page);
  }
  const table = new Uint8Array(4096);
  const tv = new DataView(table.buffer);
  for (let i = 0; i < 4; i++) tv.setBigUint64(i * 8, BigInt(gpuPageToGpa(i)) | 1n, true);
  host.ram.write(gtt, table);

  const { width, height, stride } = VGPU_DRIVER_SCANOUT;
  w64(VGPU.GTT_ROOT, gtt);
  w64(VGPU.RING_BASE, ring);
  w32(VGPU.RING_SIZE, 4096);
  w32(VGPU.CONTROL, 1);
  w32(VGPU.INT_MASK, VGPU.INT_FENCE | VGPU.INT_ERROR);
  w32(VGPU.SCANOUT_OFFSET, 0);
  w32(VGPU.SCANOUT_STRIDE, stride);
  w32(VGPU.SCANOUT_FORMAT, VGPU.FORMAT_XRGB8888);
  w32(VGPU.SCANOUT_WIDTH, width);
  w32(VGPU.SCANOUT_HEIGHT, height);

  let tail = r32(VGPU.RING_TAIL);
  const push = (cmd: Uint8Array) => {
    host.ram.write(ring + tail, cmd);
    tail = (tail + VGPU.CMD_SIZE) % 4096;
  };
  const fill = (x: number, y: number, w: number, h: number, color: number) =>
    push(command([VGPU.OP_FILL_RECT, y * stride + x * 4, stride, w | (h << 16), color], ['u32', 'u32', 'u32', 'u16x2', 'u32']));
  const blit = (x: number, y: number, gva: number, srcStride: number, w: number, h: number) =>
    push(command([VGPU.OP_BLIT, y * stride + x * 4, gva, srcStride, stride, w | (h << 16)], ['u32', 'u32', 'u64', 'u32', 'u32', 'u16x2']));
  const fence = (value: number) => push(command([VGPU.OP_FENCE, value, fenceAt], ['u32', 'u32', 'u64']));
  const kick = (): { irq: boolean; fence: number } => {
    w32(VGPU.RING_TAIL, tail);
    w32(VGPU.DOORBELL, 1);
    const irq = host.waitForInterrupt(5000);
    const fenceValue = new DataView(host.ram.read(fenceAt, 4).buffer).getUint32(0, true);
    w32(VGPU.INT_STATUS, VGPU.INT_FENCE);
    return { irq, fence: fenceValue };
  };

  fill(0, 0, width, height, 0xff203040);
  fill(8, 8, 32, 32, 0xffff0000);
  blit(40, 40, 0, 256, 64, 64);
  fence(1);
  const first = kick();

  // Remap GPU page 0 (the image's first 16 rows) to a solid green page. The device shadows the GTT
  // and must notice: trapped on Xen, compared at the next doorbell on vfio-user.
  host.ram.write(greenPage, new Uint8Array(new Uint32Array(1024).fill(0xff00ff00).buffer));
  const entry = new Uint8Array(8);
  new DataView(entry.buffer).setBigUint64(0, BigInt(greenPage) | 1n, true);
  host.ram.write(gtt, entry);
  blit(8, 100, 0, 256, 64, 20); // 16 green rows, then 4 rows of the image's page 1
  fence(2);
  const second = kick();

  const hash = [...Array(8).keys()].map((i) => r32(VGPU.SCANOUT_HASH + 4 * i));
  const hex = Buffer.concat(hash.map((w) => Buffer.from(u32(w)))).toString('hex');
  return {
    id,
    version,
    fence1: first.fence,
    fence2: second.fence,
    irq1: first.irq,
    irq2: second.irq,
    fenceValue: r32(VGPU.FENCE_VALUE),
    error: r32(VGPU.ERROR),
    ringHead: r32(VGPU.RING_HEAD),
    gttUpdateSeen: r32(VGPU.GTT_UPDATES) >= 1,
    framebufferSha256: hex,
  };
}

/** Guest memory layout of the migration halves (offsets from the driver's RAM base). */
const MIG = { ring: 0x1000, gtt: 0x2000, fence: 0x3000, image: 0x10000 } as const;

/**
 * The vGPU driver in two halves around a migration or save/restore. `before` draws and fences
 * once, then masks MSI-X (function mask) and fences again — that interrupt stays pending in the
 * PBA — and queues a blit through the GTT and a third fence without ringing the doorbell: the
 * device moves mid-ring, with an interrupt pending. `after` checks what the guest can see (ring
 * position, fence value in RAM and register, the pending bit), unmasks (the pending interrupt
 * arrives), rings the doorbell (the queued work runs on the new host) and reports the frame's hash.
 */
export const migration: MigrationGuestDriver = {
  before(host: GuestDriverHost): DriverResult {
    const r32 = (o: number) => Number(host.mmioRead(0, o, 4));
    const w32 = (o: number, v: number) => host.mmioWrite(0, o, 4, v >>> 0);
    const w64 = (o: number, v: number) => host.mmioWrite(0, o, 8, BigInt(v));
    host.cfgWrite(PCI.COMMAND, 2, host.cfgRead(PCI.COMMAND, 2) | PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
    const msix = findCapability(host, 0x11);
    w32(VGPU.MSIX_TABLE + 0, 0xfee00000);
    w32(VGPU.MSIX_TABLE + 4, 0);
    w32(VGPU.MSIX_TABLE + 8, 0x43);
    w32(VGPU.MSIX_TABLE + 12, 0);
    host.cfgWrite(msix + PCI_MSIX.FLAGS, 2, PCI_MSIX.FLAGS_ENABLE);
    const base = host.ram.base;
    const { width, height, stride } = VGPU_DRIVER_SCANOUT;
    // The 64 × 64 test image in 4 guest pages, GPU page i in guest page 3 - i, mapped by the GTT.
    const table = new Uint8Array(4096);
    for (let i = 0; i < 4; i++) {
      const page = new Uint8Array(4096);
      const v = new DataView(page.buffer);
      for (let k = 0; k < 1024; k++) v.setUint32(k * 4, testImagePixel((i * 1024 + k) % 64, Math.floor((i * 1024 + k) / 64)), true);
      host.ram.write(base + MIG.image + (3 - i) * 4096, page);
      new DataView(table.buffer).setBigUint64(i * 8, BigInt(base + MIG.image + (3 - i) * 4096) | 1n, true);
    }
    host.ram.write(base + MIG.gtt, table);
    w64(VGPU.GTT_ROOT, base + MIG.gtt);
    w64(VGPU.RING_BASE, base + MIG.ring);
    w32(VGPU.RING_SIZE, 4096);
    w32(VGPU.CONTROL, 1);
    w32(VGPU.INT_MASK, VGPU.INT_FENCE | VGPU.INT_ERROR);
    w32(VGPU.SCANOUT_STRIDE, stride);
    w32(VGPU.SCANOUT_FORMAT, VGPU.FORMAT_XRGB8888);
    w32(VGPU.SCANOUT_WIDTH, width);
    w32(VGPU.SCANOUT_HEIGHT, height);
    let tail = 0;
    const push = (words: (number | bigint)[], layout: ('u32' | 'u64' | 'u16x2')[]) => {
      host.ram.write(base + MIG.ring + tail, command(words, layout));
      tail = (tail + VGPU.CMD_SIZE) % 4096;
    };
    const fill = (x: number, y: number, w: number, h: number, color: number) => push([VGPU.OP_FILL_RECT, y * stride + x * 4, stride, w | (h << 16), color], ['u32', 'u32', 'u32', 'u16x2', 'u32']);
    const fence = (value: number) => push([VGPU.OP_FENCE, value, base + MIG.fence], ['u32', 'u32', 'u64']);
    fill(0, 0, width, height, 0xff102030);
    fence(1);
    w32(VGPU.RING_TAIL, tail);
    w32(VGPU.DOORBELL, 1);
    const irq1 = host.waitForInterrupt(5000);
    w32(VGPU.INT_STATUS, VGPU.INT_FENCE);
    // Function mask on: the next fence's interrupt waits in the PBA.
    host.cfgWrite(msix + PCI_MSIX.FLAGS, 2, PCI_MSIX.FLAGS_ENABLE | PCI_MSIX.FLAGS_MASKALL);
    fill(16, 16, 48, 48, 0xffc00000);
    fence(2);
    w32(VGPU.RING_TAIL, tail);
    w32(VGPU.DOORBELL, 1);
    // Queued, not rung: a blit through the GTT and a third fence.
    push([VGPU.OP_BLIT, 40 * stride + 40 * 4, 0, 256, stride, 64 | (64 << 16)], ['u32', 'u32', 'u64', 'u32', 'u32', 'u16x2']);
    fence(3);
    w32(VGPU.RING_TAIL, tail);
    return { irq1, fence: r32(VGPU.FENCE_VALUE), ringHead: r32(VGPU.RING_HEAD), ringTail: r32(VGPU.RING_TAIL), intStatus: r32(VGPU.INT_STATUS), pba: r32(VGPU.MSIX_PBA) };
  },

  after(host: GuestDriverHost): DriverResult {
    const r32 = (o: number) => Number(host.mmioRead(0, o, 4));
    const w32 = (o: number, v: number) => host.mmioWrite(0, o, 4, v >>> 0);
    const msix = findCapability(host, 0x11);
    const fenceRam = () => new DataView(host.ram.read(host.ram.base + MIG.fence, 4).buffer).getUint32(0, true);
    const seen = { ringHead: r32(VGPU.RING_HEAD), ringTail: r32(VGPU.RING_TAIL), fence: r32(VGPU.FENCE_VALUE), fenceRam: fenceRam(), intStatus: r32(VGPU.INT_STATUS), pba: r32(VGPU.MSIX_PBA) };
    const irqsBefore = host.interruptCount();
    host.cfgWrite(msix + PCI_MSIX.FLAGS, 2, PCI_MSIX.FLAGS_ENABLE);
    const pendingDelivered = host.waitForInterrupt(5000);
    w32(VGPU.INT_STATUS, VGPU.INT_FENCE);
    w32(VGPU.DOORBELL, 1);
    const irq3 = host.waitForInterrupt(5000);
    w32(VGPU.INT_STATUS, VGPU.INT_FENCE);
    const hash = [...Array(8).keys()].map((i) => r32(VGPU.SCANOUT_HASH + 4 * i));
    return {
      ...seen,
      pendingDelivered,
      irq3,
      interrupts: host.interruptCount() - irqsBefore,
      fenceAfter: r32(VGPU.FENCE_VALUE),
      fenceRamAfter: fenceRam(),
      ringHeadAfter: r32(VGPU.RING_HEAD),
      error: r32(VGPU.ERROR),
      framebufferSha256: Buffer.concat(hash.map((w) => Buffer.from(u32(w)))).toString('hex'),
    };
  },
};
