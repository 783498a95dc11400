import { describe, expect, it } from 'vitest';
import { createMemfdBacking } from '../../src/ram.js';
import { ftruncate, pread } from '../../src/native/fd.js';
import { mmapFd, munmap } from '../../src/native/mmap.js';
import { Region } from '../../src/regions.js';
import { PciDevice } from '../../src/pci/device.js';

describe('memfd-backed RAM', () => {
  it('is one memory for the device, a second mapping, and the fd', () => {
    const ram = createMemfdBacking(8192, 'test-vram');
    const other = new Uint8Array(mmapFd(ram.fd, 8192));
    const r = new Region('vram', 8192, { backing: ram, mmapAreas: [{ offset: 0, size: 8192 }] });
    r.write(4090, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
    expect([...other.subarray(4090, 4098)]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    other[0] = 0x42;
    const out = new Uint8Array(1);
    r.read(0, out);
    expect(out[0]).toBe(0x42);
    const viaFd = new Uint8Array(1);
    pread(ram.fd, viaFd, 4093);
    expect(viaFd[0]).toBe(4);
    munmap(other.buffer as ArrayBuffer);
    ram.release();
    ram.release();
  });

  it('cannot be resized by whoever holds the fd', () => {
    const ram = createMemfdBacking(4096);
    expect(() => ftruncate(ram.fd, 0)).toThrow(expect.objectContaining({ code: 'EPERM' }));
    expect(() => ftruncate(ram.fd, 8192)).toThrow(expect.objectContaining({ code: 'EPERM' }));
    ram.release();
  });

  it('rejects sizes that are not page multiples', () => {
    expect(() => createMemfdBacking(100)).toThrow(expect.objectContaining({ code: 'EINVAL', field: 'size' }));
  });

  it('saves and restores RAM behind a BAR', () => {
    const make = () => {
      const d = new PciDevice({ vendorId: 1, deviceId: 2, classCode: 0 });
      const ram = createMemfdBacking(4096);
      d.addBar(0, new Region('vram', 4096, { backing: ram, mmapAreas: [{ offset: 0, size: 4096 }] }));
      return { d: d.realize(), ram };
    };
    const a = make();
    a.ram.bytes.fill(7, 100, 200);
    const b = make();
    b.d.restoreState(a.d.saveState());
    expect(b.ram.bytes[150]).toBe(7);
    expect(b.ram.bytes[99]).toBe(0);
    a.ram.release();
    b.ram.release();
  });
});
