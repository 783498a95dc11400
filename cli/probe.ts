/**
 * `mdevkit probe --vfio-user <socket>`: connects like a VMM and lists what the server offers —
 * protocol version and capabilities, regions with flags, sizes and mmap areas, IRQs with counts and
 * flags, and config space decoded lspci -vv style — or reads/writes one location.
 * @module
 */
import { MdevError } from '../src/errors.js';
import { formatLspci, formatSize } from '../src/pci/lspci.js';
import { VfioUserClient } from '../adapters/vfio/client.js';
import { irqFlagNames, regionFlagNames, DeviceFlag } from '../adapters/vfio/protocol.js';

const REGION_NAMES = ['BAR0', 'BAR1', 'BAR2', 'BAR3', 'BAR4', 'BAR5', 'ROM', 'CONFIG', 'VGA'];
const IRQ_NAMES = ['INTx', 'MSI', 'MSI-X', 'ERR', 'REQ'];

/** Options of {@link probeListing}, {@link probeRead} and {@link probeWrite}. */
export interface ProbeOptions {
  /** Socket path. */
  path: string;
  /** Skip BAR sizing in the config decode (it writes to the BARs). */
  sizeBars: boolean;
  /** Request timeout. */
  timeoutMs: number;
}

/** The listing, as text. */
export function probeListing(options: ProbeOptions): string {
  const c = VfioUserClient.connect(options.path, { timeoutMs: options.timeoutMs });
  try {
    const lines: string[] = [];
    const caps = c.serverCapabilities;
    lines.push(`vfio-user ${c.version.major}.${c.version.minor} at ${options.path}`);
    lines.push(`\tServer: max_msg_fds=${caps.maxMsgFds} max_data_xfer_size=${caps.maxDataXferSize} max_dma_maps=${caps.maxDmaMaps} pgsizes=0x${caps.pgsizes.toString(16)} write_multiple=${caps.writeMultiple} twin_socket=${c.twinSocket}`);
    const info = c.deviceInfo();
    const flags = [info.flags & DeviceFlag.PCI ? 'PCI' : null, info.flags & DeviceFlag.RESET ? 'RESET' : null].filter(Boolean).join(' ');
    lines.push(`\tDevice: ${flags || 'no flags'}; ${info.numRegions} regions, ${info.numIrqs} IRQ types`);
    lines.push('Regions:');
    let configSize = 256;
    for (let i = 0; i < info.numRegions; i++) {
      const r = c.regionInfo(i);
      if (r.size === 0n) continue;
      if (i === 7) configSize = Number(r.size);
      let line = `\t${String(i).padStart(2)} ${(REGION_NAMES[i] ?? `REGION${i}`).padEnd(7)} size ${formatSize(r.size).padEnd(6)} ${regionFlagNames(r.flags).join(' ')}`;
      if (r.fd !== null) line += `  mmap offset 0x${r.offset.toString(16)}`;
      if (r.sparse) line += `  sparse mmap: ${r.sparseAreas.map((a) => `${a.offset.toString(16)}+${formatSize(a.size)}`).join(', ')}`;
      lines.push(line);
    }
    lines.push('IRQs:');
    for (let i = 0; i < info.numIrqs; i++) {
      const q = c.irqInfo(i);
      lines.push(`\t${String(i).padStart(2)} ${(IRQ_NAMES[i] ?? `IRQ${i}`).padEnd(6)} count ${String(q.count).padEnd(4)} ${irqFlagNames(q.flags).join(' ')}`);
    }
    lines.push('Config space:');
    lines.push(formatLspci(c.configAccessor, { configSize, sizeBars: options.sizeBars }));
    return lines.join('\n');
  } finally {
    c.close();
  }
}

function regionIndex(text: string): number {
  const named = REGION_NAMES.findIndex((n) => n.toLowerCase() === text.toLowerCase());
  if (named >= 0) return named;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new MdevError('EINVAL', `not a region index or name: ${text}`, 'region');
  return n;
}

function sizeOf(text: string): 1 | 2 | 4 | 8 {
  const n = Number(text);
  if (n !== 1 && n !== 2 && n !== 4 && n !== 8) throw new MdevError('EINVAL', `must be 1, 2, 4 or 8, got ${text}`, 'size');
  return n;
}

/** Reads `size` bytes at `offset` of a region; returns the value in hex. */
export function probeRead(options: ProbeOptions, region: string, offset: string, size: string): string {
  const c = VfioUserClient.connect(options.path, { timeoutMs: options.timeoutMs });
  try {
    const n = sizeOf(size);
    const data = c.regionRead(regionIndex(region), BigInt(offset), n);
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(data[i]!);
    return `0x${v.toString(16).padStart(n * 2, '0')}`;
  } finally {
    c.close();
  }
}

/** Writes a `size`-byte value at `offset` of a region. */
export function probeWrite(options: ProbeOptions, region: string, offset: string, size: string, value: string): void {
  const c = VfioUserClient.connect(options.path, { timeoutMs: options.timeoutMs });
  try {
    const n = sizeOf(size);
    let v = BigInt(value);
    if (v < 0n || v >= 1n << BigInt(8 * n)) throw new MdevError('ERANGE', `${value} does not fit ${n} bytes`, 'value');
    const data = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      data[i] = Number(v & 0xffn);
      v >>= 8n;
    }
    c.regionWrite(regionIndex(region), BigInt(offset), data);
  } finally {
    c.close();
  }
}
