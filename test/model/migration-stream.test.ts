// Migration streams (src/migration.ts) in one process: pre-copy passes that send only changed
// pages, the final pass, staging on the receiving side, and every way a stream is refused with the
// device untouched.
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { EduDevice, EDU } from '../../examples/edu/index.js';
import { VirtualGpu, VGPU } from '../../examples/vgpu/index.js';
import { BochsDisplay } from '../../examples/bochs-display/index.js';
import {
  MigrationSink,
  MigrationSource,
  imageFromMigrationStream,
  migrationStreamFromImage,
  MIGRATION_PAGE_SIZE,
} from '../../src/migration.js';
import { DeviceStateLostError, PciDevice } from '../../src/pci/device.js';
import { PCI, PCI_COMMAND } from '../../src/pci/constants.js';
import { Region } from '../../src/regions.js';
import { RegisterBlock } from '../../src/registers.js';
import { decodeState, encodeState, type StateSection } from '../../src/state.js';
import { readInt, writeInt } from '../helpers.js';

/** Reads everything the source has now, in chunks of `chunk` bytes, until a short read. */
function pass(src: MigrationSource, chunk = 64 * 1024): Uint8Array {
  const parts: Uint8Array[] = [];
  for (;;) {
    const b = src.read(chunk);
    parts.push(b);
    if (b.length < chunk) break;
  }
  return Buffer.concat(parts);
}

/** Byte equality without a deep compare (images are megabytes). */
function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

function busyEdu(): EduDevice {
  const d = new EduDevice().realize();
  writeInt(d.configAccessor, PCI.BAR0, 4, 0xfe000000);
  writeInt(d.configAccessor, PCI.COMMAND, 2, PCI_COMMAND.MEMORY);
  const bar = d.bars[0]!.region;
  writeInt(bar, EDU.LIVENESS, 4, 0x1234);
  writeInt(bar, EDU.FACTORIAL, 4, 7);
  writeInt(bar, EDU.IRQ_RAISE, 4, 0x20);
  bar.write(EDU.DMA_BUFFER + 100, new Uint8Array([1, 2, 3]));
  return d;
}

function vgpuWithPicture(): VirtualGpu {
  const d = new VirtualGpu().realize();
  const regs = d.bars[0]!.region;
  writeInt(regs, VGPU.SCANOUT_WIDTH, 4, 64);
  writeInt(regs, VGPU.RING_TAIL, 4, 0x40);
  // Three pages of pattern, the rest of VRAM zero.
  for (let i = 0; i < 3 * MIGRATION_PAGE_SIZE; i++) d.vram.bytes[5 * MIGRATION_PAGE_SIZE + i] = (i * 31 + 7) & 0xff;
  return d;
}

describe('migration stream', () => {
  it('moves a device without RAM (edu) in one final pass', () => {
    const a = busyEdu();
    const src = new MigrationSource(a);
    const header = pass(src);
    expect(header.length).toBeGreaterThan(0); // the HEADER only
    src.finish();
    const stream = Buffer.concat([header, pass(src)]);
    expect(src.done).toBe(true);
    expect(src.read(4096).length).toBe(0);
    const b = new EduDevice().realize();
    const sink = new MigrationSink(b);
    // Any split of the stream will do.
    for (let i = 0; i < stream.length; i += 7) sink.write(stream.subarray(i, i + 7));
    sink.finish();
    expect(same(b.saveState(), a.saveState())).toBe(true);
    expect(readInt(b.bars[0]!.region, EDU.FACTORIAL, 4)).toBe(5040);
    expect(b.irq.intxAsserted).toBe(true);
  });

  it('sends VRAM ahead, then only the pages that changed; zero pages without their bytes', () => {
    const a = vgpuWithPicture();
    const src = new MigrationSource(a, { maxRecordBytes: 8 * MIGRATION_PAGE_SIZE });
    const first = pass(src);
    const vramPages = VGPU.VRAM_SIZE / MIGRATION_PAGE_SIZE;
    expect(src.stats).toMatchObject({ pagesSent: 3, zeroPages: vramPages - 3, scans: 0 });
    expect(first.length).toBeLessThan(4 * MIGRATION_PAGE_SIZE); // zero pages cost a record each run, not 4 KiB
    // The guest draws while pre-copy runs (through the VMM's mapping: nothing traps).
    a.vram.bytes[100 * MIGRATION_PAGE_SIZE + 5] = 0xaa;
    a.vram.bytes[6 * MIGRATION_PAGE_SIZE] ^= 0xff;
    const second = pass(src);
    expect(src.stats).toMatchObject({ pagesSent: 5, scans: 1 });
    expect(second.length).toBeGreaterThan(2 * MIGRATION_PAGE_SIZE);
    expect(second.length).toBeLessThan(3 * MIGRATION_PAGE_SIZE);
    expect(pass(src).length).toBe(0); // nothing changed since: an empty pass
    // Registers change too; then the device stops.
    writeInt(a.bars[0]!.region, VGPU.RING_TAIL, 4, 0x80);
    a.vram.bytes[200 * MIGRATION_PAGE_SIZE] = 1;
    src.finish();
    const last = pass(src);
    expect(src.done).toBe(true);
    expect(src.stats.pagesSent).toBe(6);
    const b = new VirtualGpu().realize();
    const sink = new MigrationSink(b);
    sink.write(first);
    sink.write(second);
    sink.write(last);
    expect(b.vram.bytes.indexOf(1) < 0 && b.vram.bytes.findIndex((x) => x !== 0) < 0).toBe(true); // nothing applied before finish()
    sink.finish();
    expect(Buffer.compare(b.vram.bytes, a.vram.bytes)).toBe(0);
    expect(readInt(b.bars[0]!.region, VGPU.RING_TAIL, 4)).toBe(0x80);
    expect(same(imageFromMigrationStream(Buffer.concat([first, second, last])), a.saveState())).toBe(true);
  });

  it('resends a page written between the scan and the copy, even when it is later written back', () => {
    const a = new VirtualGpu().realize();
    const page = (n: number) => a.vram.bytes.subarray(n * MIGRATION_PAGE_SIZE, (n + 1) * MIGRATION_PAGE_SIZE);
    for (let n = 0; n < 8; n++) page(n).fill(n + 1);
    const src = new MigrationSource(a, { maxRecordBytes: MIGRATION_PAGE_SIZE });
    const first = pass(src);
    page(0).fill(0x41); // A
    page(7).fill(0x41); // A
    // Read just enough for the pass to scan (both pages due) and copy page 0; then page 7 changes
    // to B before it is copied, and back to A afterwards.
    const part = src.read(100);
    page(7).fill(0x42); // B: this is what gets copied
    const rest = pass(src);
    page(7).fill(0x41); // A again: the receiver holds B, so the final pass must resend it
    src.finish();
    const last = pass(src);
    const b = new VirtualGpu().realize();
    const sink = new MigrationSink(b);
    for (const x of [first, part, rest, last]) sink.write(x);
    sink.finish();
    expect(Buffer.compare(b.vram.bytes, a.vram.bytes)).toBe(0);
  });

  it('refuses a change the source did not send (the END digest), before loading anything', () => {
    const a = new VirtualGpu().realize();
    a.vram.bytes.fill(3, 0, 4 * MIGRATION_PAGE_SIZE);
    const src = new MigrationSource(a, { maxRecordBytes: MIGRATION_PAGE_SIZE });
    src.finish();
    const early = src.read(2 * MIGRATION_PAGE_SIZE);
    a.vram.bytes[0] = 9; // a VMM writing VRAM during the final pass: page 0 was already copied
    const stream = Buffer.concat([early, pass(src)]);
    const b = new VirtualGpu().realize();
    const before = b.saveState();
    const sink = new MigrationSink(b);
    expect(() => sink.write(stream)).toThrow(expect.objectContaining({ code: 'EBADMSG', field: expect.stringMatching(/bar2$/) }));
    expect(() => sink.finish()).toThrow(expect.objectContaining({ code: 'EBADMSG' }));
    expect(same(b.saveState(), before)).toBe(true);
  });

  describe('refusals leave the receiving device as it was', () => {
    const a = vgpuWithPicture();
    const src = new MigrationSource(a);
    src.finish();
    const stream = pass(src);

    function refused(bytes: Uint8Array, code: string, where: 'write' | 'finish'): string {
      const b = new VirtualGpu().realize();
      writeInt(b.bars[0]!.region, VGPU.RING_BASE, 8, 0x5000);
      const before = b.saveState();
      const sink = new MigrationSink(b);
      let error: Error | undefined;
      try {
        sink.write(bytes);
        if (where === 'write') throw new Error('write accepted');
        sink.finish();
      } catch (e) {
        error = e as Error;
      }
      expect(error).toMatchObject({ code });
      expect(same(b.saveState(), before)).toBe(true);
      return error!.message;
    }

    /** The stream with record `n` (0 = HEADER) rewritten by `edit` and its CRC fixed. */
    function patched(n: number, edit: (payload: Buffer) => Buffer): Buffer {
      const out: Buffer[] = [];
      const s = Buffer.from(stream);
      for (let at = 0, i = 0; at < s.length; i++) {
        const len = s.readUInt32LE(at + 4);
        let rec = s.subarray(at, at + 12 + len);
        if (i === n) {
          const payload = edit(Buffer.from(rec.subarray(8, 8 + len)));
          const r = Buffer.alloc(12 + payload.length);
          r.writeUInt32LE(rec.readUInt32LE(0), 0);
          r.writeUInt32LE(payload.length, 4);
          payload.copy(r, 8);
          r.writeUInt32LE(crc32(r.subarray(0, 8 + payload.length)), 8 + payload.length);
          rec = r;
        }
        out.push(rec);
        at += 12 + len;
      }
      return Buffer.concat(out);
    }

    it('truncated: refused at finish, naming how much arrived', () => {
      for (const cut of [0, 10, 1000, stream.length - 1]) {
        expect(refused(stream.subarray(0, cut), 'EINVAL', 'finish')).toMatch(/without its END record: truncated/);
      }
    });

    it('corrupt: checksum mismatch', () => {
      const bad = Buffer.from(stream);
      bad[40] ^= 1;
      expect(refused(bad, 'EBADMSG', 'write')).toMatch(/checksum mismatch/);
    });

    it('another stream version: ENOTSUP', () => {
      expect(refused(patched(0, (p) => (p.writeUInt16LE(2, 8), p)), 'ENOTSUP', 'write')).toMatch(/stream version 2, this build reads 1/);
    });

    it('another device: EINVAL naming both', () => {
      const e = new MigrationSource(busyEdu());
      e.finish();
      expect(refused(pass(e), 'EINVAL', 'write')).toMatch(/stream is for 1234:11e8, the device is 1b36:7fa0/);
    });

    it('a device section of another version: ENOTSUP from the device model', () => {
      let index = 0; // of the DEVICE record (type 4)
      for (let at = 0, i = 0; at < stream.length; i++) {
        if (Buffer.from(stream).readUInt32LE(at) === 4) index = i;
        at += 12 + Buffer.from(stream).readUInt32LE(at + 4);
      }
      const edited = patched(index, (p) => {
        const id = { vendorId: 0x1b36, deviceId: 0x7fa0 };
        const sections = [...decodeState(p, id).values()].map((s): StateSection => (s.name === 'regs.vgpu' ? { ...s, version: 2 } : s));
        return Buffer.from(encodeState(id, sections));
      });
      // The END record counts bytes, unchanged here since only a version number differs.
      expect(refused(edited, 'ENOTSUP', 'finish')).toMatch(/section regs.vgpu version 2, this build reads 1/);
    });

    it('garbage: not a migration stream', () => {
      expect(refused(Buffer.from('hello, this is not a stream at all.'), 'EINVAL', 'write')).toBeTruthy();
    });

    it('after a refusal, reset() takes a new stream', () => {
      const b = new VirtualGpu().realize();
      const sink = new MigrationSink(b);
      sink.write(stream.subarray(0, 100));
      expect(() => sink.finish()).toThrow(expect.objectContaining({ code: 'EINVAL' }));
      sink.reset();
      sink.write(stream);
      sink.finish();
      expect(Buffer.compare(b.vram.bytes, a.vram.bytes)).toBe(0);
    });
  });

  it('converts between state images and streams both ways (the bochs display, 4 MiB VRAM)', () => {
    const a = new BochsDisplay({ vramSize: 4 << 20 }).realize();
    a.vram.bytes.fill(0x5a, 1 << 20, (1 << 20) + 12345);
    const mmio = a.bars[2]!.region;
    writeInt(mmio, 0x500 + 2 * 1, 2, 640);
    writeInt(mmio, 0x500 + 2 * 2, 2, 480);
    writeInt(mmio, 0x500 + 2 * 3, 2, 32);
    writeInt(mmio, 0x500 + 2 * 4, 2, 0x41);
    const image = a.saveState();
    const stream = migrationStreamFromImage(image);
    expect(stream.length).toBeLessThan(image.length / 2); // zero chunks go as ZERO records
    expect(same(imageFromMigrationStream(stream), image)).toBe(true);
    const b = new BochsDisplay({ vramSize: 4 << 20 }).realize();
    const sink = new MigrationSink(b);
    sink.write(stream);
    sink.finish();
    expect(b.scanout()).toMatchObject({ width: 640, height: 480, bpp: 32 });
    expect(same(b.saveState(), image)).toBe(true);
    // A display with other VRAM is another layout: refused at HEADER.
    const c = new BochsDisplay({ vramSize: 8 << 20 }).realize();
    expect(() => new MigrationSink(c).write(stream)).toThrow(expect.objectContaining({ code: 'EINVAL', message: expect.stringMatching(/RAM regions BAR0:4194304 do not match the device's BAR0:8388608/) }));
  });
});

describe('restoreState with RAM given apart, and a restore that cannot be undone', () => {
  it('checks RAM given apart like RAM in the image', () => {
    const a = vgpuWithPicture();
    const b = new VirtualGpu().realize();
    const noRam = a.saveState({ includeRam: false });
    expect(() => b.restoreState(noRam)).toThrow(expect.objectContaining({ code: 'EINVAL', message: expect.stringMatching(/section ram.bar2 is missing/) }));
    expect(() => b.restoreState(noRam, { ram: new Map([[2, new Uint8Array(10)]]) })).toThrow(expect.objectContaining({ field: 'ram.2' }));
    expect(() => b.restoreState(noRam, { ram: new Map([[0, new Uint8Array(10)]]) })).toThrow(expect.objectContaining({ message: expect.stringMatching(/BAR0 has no RAM/) }));
    expect(() => b.restoreState(a.saveState(), { ram: new Map([[2, a.vram.bytes.slice()]]) })).toThrow(expect.objectContaining({ message: expect.stringMatching(/both in the image and given separately/) }));
    b.restoreState(noRam, { ram: new Map([[2, a.vram.bytes.slice()]]) });
    expect(same(b.saveState(), a.saveState())).toBe(true);
  });

  it('reports a device left in no defined state as DeviceStateLostError', () => {
    class Fragile extends PciDevice {
      broken = false;
      constructor() {
        super({ vendorId: 0x1234, deviceId: 0x5678, classCode: 0xff0000 });
        this.addBar(0, new Region('regs', 0x100, { accessor: new RegisterBlock('r', 0x10, { A: { offset: 0, width: 4 } }) }));
      }
      protected override saveExtraState(): StateSection[] {
        return [{ name: 'x.fragile', version: 1, data: new Uint8Array([this.broken ? 1 : 0]) }];
      }
      protected override loadExtraState(s: ReadonlyMap<string, StateSection>): void {
        // A device bug: once it has seen a poisoned image it refuses every image, its own too.
        if (s.get('x.fragile')!.data[0] === 1) this.broken = true;
        if (this.broken) throw new Error('device bug');
      }
    }
    const a = new Fragile().realize();
    a.broken = true;
    const b = new Fragile().realize();
    expect(() => b.restoreState(a.saveState())).toThrow(DeviceStateLostError);
    // A refusal that can be undone is reported as itself, with the device as it was.
    const c = new Fragile().realize();
    const image = a.saveState();
    image[image.length - 1] ^= 1;
    expect(() => c.restoreState(image)).toThrow(expect.objectContaining({ code: 'EBADMSG' }));
  });
});
