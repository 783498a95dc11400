// The server against a client that behaves as QEMU 10.2's vfio-user-pci does: QEMU's DMA_READ /
// DMA_WRITE layout, its VERSION proposal, non-posted writes, and DMA requests served only while
// none of its own requests waits for a reply (its vCPU holds the lock its DMA service needs).
// With guest RAM that has no fd, every device DMA is such a message.
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { VfioUserClient, VfioUserError } from '../../adapters/vfio/client.js';
import { VfioDriverHost } from '../../adapters/vfio/driver-host.js';
import { EDU } from '../../examples/edu/index.js';
import { VGPU } from '../../examples/vgpu/index.js';
import vgpuDriver from '../../examples/vgpu/driver.js';
import { packageRoot } from '../../src/native/binding.js';
import { PCI, PCI_COMMAND } from '../../src/pci/constants.js';
import { startServer, type ServerProcess } from './harness.js';

let server: ServerProcess | null = null;
const clients: VfioUserClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await server?.stop();
  server = null;
});

function connect(path: string, options: ConstructorParameters<typeof Object>[0] = {}): VfioUserClient {
  // A short reply timeout: a deadlock shows up as ETIMEDOUT, not as a hung test.
  const c = VfioUserClient.connect(path, { timeoutMs: 3000, ...(options as object) });
  clients.push(c);
  return c;
}

function enable(c: VfioUserClient): void {
  c.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
}

function waitEduDma(c: VfioUserClient): void {
  for (let i = 0; i < 10_000; i++) if ((BigInt(c.mmioRead(0, EDU.DMA_CMD, 8)) & BigInt(EDU.DMA_START)) === 0n) return;
  throw new Error('edu DMA did not complete');
}

describe('DMA messages in the layout the client speaks', () => {
  for (const client of ['qemu', 'spec'] as const) {
    it(`edu DMA both ways through guest RAM without an fd: exact bytes with a ${client === 'qemu' ? 'QEMU' : 'spec-layout'} client (layout detected)`, async () => {
      server = await startServer({ device: 'edu' });
      const c = connect(server.paths[0]!, client === 'qemu' ? { emulate: 'qemu' } : {});
      const ram = c.addGuestRam(0x200000, 0x4000, { withFd: false });
      enable(c);
      const pattern = Uint8Array.from({ length: 300 }, (_, i) => (i * 13 + 7) & 0xff);
      ram.bytes.set(pattern, 0x100);
      c.mmioWrite(0, EDU.DMA_SRC, 8, 0x200100n);
      c.mmioWrite(0, EDU.DMA_DST, 8, BigInt(EDU.DMA_BUFFER));
      c.mmioWrite(0, EDU.DMA_COUNT, 8, BigInt(pattern.length));
      c.mmioWrite(0, EDU.DMA_CMD, 8, BigInt(EDU.DMA_START));
      waitEduDma(c);
      expect(c.regionRead(0, EDU.DMA_BUFFER, pattern.length)).toEqual(pattern);
      c.mmioWrite(0, EDU.DMA_SRC, 8, BigInt(EDU.DMA_BUFFER));
      c.mmioWrite(0, EDU.DMA_DST, 8, 0x200ffcn); // straddles a page
      c.mmioWrite(0, EDU.DMA_CMD, 8, BigInt(EDU.DMA_START | EDU.DMA_TO_RAM));
      waitEduDma(c);
      expect(ram.bytes.subarray(0xffc, 0xffc + pattern.length)).toEqual(pattern);
      expect(c.dmaStats).toMatchObject({ reads: 1, writes: 2, rejected: 0 }); // a zero-length write found the layout
      c.close();
      await server.stop();
      expect(server.stderr()).toContain(client === 'qemu' ? 'client speaks the QEMU DMA_READ/DMA_WRITE layout' : "client speaks the spec's DMA_READ/DMA_WRITE layout");
      server = null;
    });
  }

  it('a fixed layout is used as configured (the spec layout sent to QEMU shifts the data by 4 bytes)', async () => {
    server = await startServer({ device: 'edu', args: ['--dma-layout', 'spec'] });
    const c = connect(server.paths[0]!, { emulate: 'qemu' });
    const ram = c.addGuestRam(0x200000, 0x1000, { withFd: false });
    enable(c);
    ram.bytes.set([1, 2, 3, 4, 5, 6, 7, 8], 0);
    c.mmioWrite(0, EDU.DMA_SRC, 8, 0x200000n);
    c.mmioWrite(0, EDU.DMA_DST, 8, BigInt(EDU.DMA_BUFFER));
    c.mmioWrite(0, EDU.DMA_COUNT, 8, 8n);
    c.mmioWrite(0, EDU.DMA_CMD, 8, BigInt(EDU.DMA_START));
    waitEduDma(c);
    // QEMU's reply read in the spec's layout: the data from its 5th byte on, then QEMU's padding.
    expect([...c.regionRead(0, EDU.DMA_BUFFER, 8)]).toEqual([5, 6, 7, 8, 0, 0, 0, 0]);
  });
});

describe('a doorbell whose handler needs the VMM never deadlocks it', () => {
  it('the vGPU driver runs to its known frame with fd-less guest RAM against a QEMU-like client', async () => {
    server = await startServer({ device: 'vgpu' });
    const c = connect(server.paths[0]!, { emulate: 'qemu' });
    const result = vgpuDriver(new VfioDriverHost(c, { shareRam: false }));
    expect(result).toMatchObject({ id: VGPU.ID_VALUE, fence1: 1, fence2: 2, irq1: true, irq2: true, error: 0, ringHead: 6 * 32, gttUpdateSeen: true });
    expect(c.dmaStats.rejected).toBe(0);
    expect(c.dmaStats.reads).toBeGreaterThan(6);
  });

  it('writes that arrive while a handler waits are stored and answered at once; their hooks run after it, in order', async () => {
    server = await startServer({ device: 'vgpu' });
    const c = connect(server.paths[0]!, { emulate: 'qemu' });
    const ram = c.addGuestRam(0x100000, 0x10000, { withFd: false });
    enable(c);
    // A ring of 3 fills and a fence at 0x100000, the fence's target at 0x108000.
    const ring = new DataView(ram.bytes.buffer, ram.bytes.byteOffset);
    for (let i = 0; i < 3; i++) {
      const at = i * 32;
      ring.setUint32(at, VGPU.OP_FILL_RECT, true);
      ring.setUint32(at + 4, i * 4096, true);
      ring.setUint32(at + 8, 256, true);
      ring.setUint16(at + 12, 16, true);
      ring.setUint16(at + 14, 4, true);
      ring.setUint32(at + 16, 0xff000000 + i, true);
    }
    ring.setUint32(96, VGPU.OP_FENCE, true);
    ring.setUint32(100, 7, true);
    ring.setBigUint64(104, 0x108000n, true);
    c.mmioWrite(0, VGPU.CONTROL, 4, 1);
    c.mmioWrite(0, VGPU.RING_BASE, 8, 0x100000n);
    c.mmioWrite(0, VGPU.RING_SIZE, 4, 4096);
    c.mmioWrite(0, VGPU.RING_TAIL, 4, 128);
    // Two doorbells back to back (non-posted, as QEMU sends them to a device with an mmap region):
    // the second arrives while the first one's handler waits for its DMA.
    c.mmioWrite(0, VGPU.DOORBELL, 4, 1);
    c.mmioWrite(0, VGPU.DOORBELL, 4, 1);
    let fence = 0;
    for (let i = 0; i < 10_000 && fence !== 7; i++) fence = Number(c.mmioRead(0, VGPU.FENCE_VALUE, 4));
    expect(fence).toBe(7);
    expect(Number(c.mmioRead(0, VGPU.RING_HEAD, 4))).toBe(128);
    expect(Number(c.mmioRead(0, VGPU.ERROR, 4))).toBe(0);
    expect(new DataView(ram.bytes.buffer, ram.bytes.byteOffset).getUint32(0x8000, true)).toBe(7);
    const vram = c.mapRegion(2).areas[0]!.bytes;
    for (let i = 0; i < 3; i++) expect(new DataView(vram.buffer, vram.byteOffset).getUint32(i * 4096, true)).toBe(0xff000000 + i);
  });

  it('DMA through the VMM from inside a READ handler fails at once with EDEADLK; from a write handler it works', async () => {
    server = await startServer({ device: join(packageRoot(), 'test', 'fixtures', 'dma-on-read-device.mjs') });
    const c = connect(server.paths[0]!, { emulate: 'qemu' });
    const ram = c.addGuestRam(0x100000, 0x1000, { withFd: false });
    enable(c);
    c.mmioWrite(0, 0x00, 8, 0x100010n);
    ram.bytes.set([0x11, 0x22, 0x33, 0x44], 0x10);
    const t = performance.now();
    let err: unknown;
    try {
      c.mmioRead(0, 0x08, 4);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(VfioUserError);
    expect((err as VfioUserError).code).toBe('EDEADLK');
    expect(performance.now() - t).toBeLessThan(2500); // answered, not timed out (the client waits 3 s)
    c.mmioWrite(0, 0x0c, 4, 0xcafef00d);
    // The write's DMA lands when the VMM serves it, between the guest's accesses (QEMU's main loop).
    const landed = () => new DataView(ram.bytes.buffer, ram.bytes.byteOffset).getUint32(0x10, true) === 0xcafef00d;
    for (let i = 0; i < 1000 && !landed(); i++) {
      expect(c.mmioRead(0, 0x00, 8)).toBe(0x100010n);
      c.serve(0);
    }
    expect(landed()).toBe(true);
  });

  it('share=off guest RAM (the server sees none of the guest\'s writes): the vGPU reports an empty command, and the server names the likely cause', async () => {
    server = await startServer({ device: 'vgpu' });
    const c = connect(server.paths[0]!, { emulate: 'qemu' });
    const host = new VfioDriverHost(c, { share: false });
    const result = vgpuDriver(host);
    expect(result['error']).toBe(VGPU.ERR_BAD_COMMAND);
    c.close();
    await server.stop();
    expect(server.stderr()).toMatch(/warning: device: command at ring offset 0x0 \(guest 0x[0-9a-f]+\) is all zeros; .*memory-backend-memfd,\.\.\.,share=on/);
    server = null;
  });
});
