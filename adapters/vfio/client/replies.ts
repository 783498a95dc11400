/**
 * Checks of replies that carry structure: REGION_READ/WRITE echoes, region capability chains.
 * @internal
 * @module
 */
import { Layout, RegionCap, RegionFlag } from '../protocol.js';
import { RegionCapability, SparseArea } from './types.js';
import { MAX_CAPS, commandName, protoError, view } from './support.js';

// ---------------------------------------------------------------------------------------------
// Reply parsing helpers
// ---------------------------------------------------------------------------------------------

export function checkAccessEcho(p: Uint8Array, command: number, offset: bigint, region: number, count: number, size: number): void {
  const L = Layout.regionAccess;
  const name = commandName(command);
  if (p.length !== size) throw protoError('count', `${name} reply payload is ${p.length} bytes, expected ${size}`);
  const dv = view(p);
  if (dv.getBigUint64(L.offset, true) !== offset) throw protoError('offset', `${name} reply offset 0x${dv.getBigUint64(L.offset, true).toString(16)}, requested 0x${offset.toString(16)}`);
  if (dv.getUint32(L.region, true) !== region) throw protoError('region', `${name} reply region ${dv.getUint32(L.region, true)}, requested ${region}`);
  if (dv.getUint32(L.count, true) !== count) throw protoError('count', `${name} reply count ${dv.getUint32(L.count, true)}, requested ${count}`);
}

/**
 * Walks a region info's capability chain: offsets are from the start of the structure, each
 * header must lie inside the reply, the chain may not revisit an entry and is cut at
 * {@link MAX_CAPS} entries.
 */
export function parseRegionCaps(info: Uint8Array, flags: number, capOffset: number, regionSize: bigint): { caps: RegionCapability[]; sparse: boolean; areas: SparseArea[]; type: { type: number; subtype: number } | null } {
  const caps: RegionCapability[] = [];
  const areas: SparseArea[] = [];
  let sparse = false;
  let type: { type: number; subtype: number } | null = null;
  if (!(flags & RegionFlag.CAPS)) {
    return { caps, sparse, areas, type };
  }
  const L = Layout.regionInfo;
  const H = Layout.capHeader;
  const dv = view(info);
  const seen = new Set<number>();
  let at = capOffset;
  if (at === 0) throw protoError('cap_offset', 'the CAPS flag is set but cap_offset is 0');
  while (at !== 0) {
    if (at < L.sizeof || at + H.sizeof > info.length) throw protoError('cap_offset', `capability at ${at} is outside the ${info.length}-byte region info`);
    if (seen.has(at)) throw protoError('cap_offset', `capability chain loops back to offset ${at}`);
    if (seen.size >= MAX_CAPS) throw protoError('cap_offset', `capability chain is longer than ${MAX_CAPS} entries`);
    seen.add(at);
    const id = dv.getUint16(at + H.id, true);
    const version = dv.getUint16(at + H.version, true);
    caps.push({ id, version, offset: at });
    if (id === RegionCap.SPARSE_MMAP) {
      if (sparse) throw protoError('cap_offset', 'more than one SPARSE_MMAP capability');
      const S = Layout.sparseMmap;
      if (at + S.areas > info.length) throw protoError('sparse_mmap', `SPARSE_MMAP header at ${at} is truncated`);
      const n = dv.getUint32(at + S.nrAreas, true);
      if (n > (info.length - at - S.areas) / S.areaSize) throw protoError('sparse_mmap.nr_areas', `${n} areas do not fit in the ${info.length}-byte region info`);
      for (let i = 0; i < n; i++) {
        const offset = dv.getBigUint64(at + S.areas + i * S.areaSize, true);
        const size = dv.getBigUint64(at + S.areas + i * S.areaSize + 8, true);
        if (offset > regionSize || size > regionSize - offset) throw protoError(`sparse_mmap.areas[${i}]`, `[0x${offset.toString(16)}, +0x${size.toString(16)}) is outside the region (size 0x${regionSize.toString(16)})`);
        areas.push({ offset, size });
      }
      sparse = true;
    } else if (id === RegionCap.TYPE) {
      if (at + H.sizeof + 8 > info.length) throw protoError('cap_type', `TYPE capability at ${at} is truncated`);
      type = { type: dv.getUint32(at + H.sizeof, true), subtype: dv.getUint32(at + H.sizeof + 4, true) };
    }
    at = dv.getUint32(at + H.next, true);
  }
  return { caps, sparse, areas, type };
}

