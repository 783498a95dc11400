/**
 * Region.replaceBacking: an adapter moves a region's RAM elsewhere (the Xen adapter: into guest
 * RAM it maps), the contents come along, the device's own memfd backing follows, and the memory
 * comes home again with the contents.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createMemfdBacking, redirectRamBacking, type MemfdBacking } from '../../src/ram.js';
import { Region } from '../../src/regions.js';

const PAGE = 4096;
const owned: MemfdBacking[] = [];
afterEach(() => {
  for (const b of owned.splice(0)) b.release();
});

function memfd(size: number): MemfdBacking {
  const b = createMemfdBacking(size, 'region-backing-test');
  owned.push(b);
  return b;
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code ?? String(e);
  }
  throw new Error('expected the call to fail');
}

describe('Region.replaceBacking', () => {
  it('copies the contents over; the memfd backing follows; putting it back copies home', () => {
    const own = memfd(2 * PAGE);
    const region = new Region('vram', 2 * PAGE, { backing: own, mmapAreas: [{ offset: 0, size: 2 * PAGE }] });
    own.bytes.set([1, 2, 3], 100);
    const ownBytes = own.bytes;
    const elsewhere = { bytes: new Uint8Array(2 * PAGE + 16), fd: null, fdOffset: 0 };

    expect(region.replaceBacking(elsewhere) === own).toBe(true);
    expect(region.backing === elsewhere).toBe(true);
    expect([...elsewhere.bytes.subarray(100, 103)]).toEqual([1, 2, 3]);
    // The device still holding `own` reaches the moved memory: a reset, a fill, a read.
    expect(own.bytes === elsewhere.bytes).toBe(true);
    own.bytes[200] = 9;
    const out = new Uint8Array(1);
    region.read(200, out);
    expect(out[0]).toBe(9);
    region.write(300, Uint8Array.of(7));
    expect(own.bytes[300]).toBe(7);
    expect(ownBytes[300]).toBe(0); // the memfd itself is stale meanwhile
    expect(own.fd).toBeGreaterThanOrEqual(0);

    expect(region.replaceBacking(own) === elsewhere).toBe(true);
    expect(region.backing === own).toBe(true);
    expect(own.bytes === ownBytes).toBe(true);
    expect([own.bytes[100], own.bytes[200], own.bytes[300]]).toEqual([1, 9, 7]);
    elsewhere.bytes[200] = 0; // no longer the region's
    expect(own.bytes[200]).toBe(9);
  });

  it('refuses short memory (the region keeps its backing) and regions without memory', () => {
    const own = memfd(PAGE);
    const region = new Region('ram', PAGE, { backing: own, mmapAreas: [{ offset: 0, size: PAGE }] });
    expect(codeOf(() => region.replaceBacking({ bytes: new Uint8Array(PAGE - 1), fd: null, fdOffset: 0 }))).toBe('ERANGE');
    expect(region.backing === own && own.bytes.length === PAGE).toBe(true);
    expect(codeOf(() => region.replaceBacking(null as never))).toBe('EINVAL');
    expect(codeOf(() => new Region('regs', PAGE).replaceBacking({ bytes: new Uint8Array(PAGE), fd: null, fdOffset: 0 }))).toBe('EINVAL');
  });

  it('only memfd backings follow; others keep their bytes (and say so)', () => {
    const plain = { bytes: new Uint8Array(PAGE), fd: null, fdOffset: 0 };
    expect(redirectRamBacking(plain, new Uint8Array(PAGE))).toBe(false);
    const region = new Region('ram', PAGE, { backing: plain, mmapAreas: [{ offset: 0, size: PAGE }] });
    plain.bytes[0] = 5;
    const next = memfd(PAGE);
    region.replaceBacking(next);
    expect(next.bytes[0]).toBe(5);
    expect(plain.bytes === next.bytes).toBe(false);
  });
});
