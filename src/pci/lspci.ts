/**
 * An `lspci -vv`-style decoder for configuration space. It reads only through a byte accessor, the
 * way a guest or a VMM would, and sizes BARs the way firmware does (write all-ones, read back,
 * restore), so it works on a local {@link PciDevice} and, later, over vfio-user.
 * @module
 */
import { MdevError } from '../errors.js';
import type { RegionAccessor } from '../regions.js';
import { PCI, PCI_BAR, PCI_BASE_CLASS_NAMES, PCI_CAP_ID, PCI_CLASS_NAMES, PCI_COMMAND, PCI_EXP, PCI_EXT_CAP_ID, PCI_MSI, PCI_MSIX, PCI_STATUS } from './constants.js';

/** A capability found by walking the lists. */
export interface FoundCapability {
  /** Capability ID. */
  readonly id: number;
  /** Offset of its header. */
  readonly offset: number;
  /** Extended (PCI Express) capability. */
  readonly extended: boolean;
  /** Version (extended capabilities only, else 0). */
  readonly version: number;
}

/** A BAR found by sizing. */
export interface SizedBar {
  /** BAR index. */
  readonly index: number;
  /** I/O or memory. */
  readonly kind: 'io' | 'mem32' | 'mem64';
  /** Prefetchable memory. */
  readonly prefetchable: boolean;
  /** Current programmed address. */
  readonly address: bigint;
  /** Size in bytes. */
  readonly size: bigint;
}

/** Config reads and writes through an accessor, little-endian. */
class ConfigReader {
  private readonly buf = new Uint8Array(4);
  constructor(private readonly acc: RegionAccessor) {}
  r(offset: number, width: 1 | 2 | 4): number {
    const b = this.buf.subarray(0, width);
    this.acc.read(offset, b);
    let v = 0;
    for (let i = width - 1; i >= 0; i--) v = v * 256 + b[i]!;
    return v;
  }
  w(offset: number, width: 1 | 2 | 4, value: number): void {
    const b = new Uint8Array(width);
    for (let i = 0; i < width; i++) b[i] = (value >>> (8 * i)) & 0xff;
    this.acc.write(offset, b);
  }
}

/** Walks the standard and extended capability lists, stopping on loops and bad pointers. */
export function walkCapabilities(config: RegionAccessor, configSize: number): FoundCapability[] {
  const c = new ConfigReader(config);
  const found: FoundCapability[] = [];
  if (c.r(PCI.STATUS, 2) & PCI_STATUS.CAP_LIST) {
    let ptr = c.r(PCI.CAPABILITY_LIST, 1) & 0xfc;
    const seen = new Set<number>();
    // At most 48 capabilities fit between 0x40 and 0x100.
    while (ptr >= PCI.HEADER_SIZE && !seen.has(ptr) && seen.size < 48) {
      seen.add(ptr);
      found.push({ id: c.r(ptr, 1), offset: ptr, extended: false, version: 0 });
      ptr = c.r(ptr + 1, 1) & 0xfc;
    }
  }
  if (configSize > PCI.CONFIG_SPACE_SIZE) {
    let ptr: number = PCI.CONFIG_SPACE_SIZE;
    const seen = new Set<number>();
    while (ptr >= PCI.CONFIG_SPACE_SIZE && ptr + 4 <= configSize && !seen.has(ptr) && seen.size < 480) {
      seen.add(ptr);
      const hdr = c.r(ptr, 4);
      if (hdr === 0 || hdr === 0xffffffff) break;
      found.push({ id: hdr & 0xffff, offset: ptr, extended: true, version: (hdr >>> 16) & 0xf });
      ptr = (hdr >>> 20) & 0xffc;
    }
  }
  return found;
}

/**
 * Sizes every BAR as firmware does: decoding off, write all-ones, read the mask back, restore the
 * original value and command register.
 */
export function sizeBars(config: RegionAccessor): SizedBar[] {
  const c = new ConfigReader(config);
  const command = c.r(PCI.COMMAND, 2);
  c.w(PCI.COMMAND, 2, command & ~(PCI_COMMAND.IO | PCI_COMMAND.MEMORY));
  const bars: SizedBar[] = [];
  try {
    for (let i = 0; i < PCI.NUM_BARS; i++) {
      const off = PCI.BAR0 + 4 * i;
      const orig = c.r(off, 4);
      c.w(off, 4, 0xffffffff);
      const probe = c.r(off, 4);
      c.w(off, 4, orig);
      if (probe === 0) continue;
      if (orig & PCI_BAR.SPACE_IO) {
        const mask = (probe & ~PCI_BAR.IO_FLAGS_MASK) >>> 0;
        bars.push({ index: i, kind: 'io', prefetchable: false, address: BigInt((orig & ~PCI_BAR.IO_FLAGS_MASK) >>> 0), size: BigInt(((~mask >>> 0) & 0xffffffff) + 1) });
        continue;
      }
      const is64 = (orig & PCI_BAR.MEM_TYPE_MASK) === PCI_BAR.MEM_TYPE_64 && i < 5;
      let mask = BigInt((probe & ~PCI_BAR.MEM_FLAGS_MASK) >>> 0);
      let address = BigInt((orig & ~PCI_BAR.MEM_FLAGS_MASK) >>> 0);
      if (is64) {
        const origHi = c.r(off + 4, 4);
        c.w(off + 4, 4, 0xffffffff);
        const probeHi = c.r(off + 4, 4);
        c.w(off + 4, 4, origHi);
        mask |= BigInt(probeHi) << 32n;
        address |= BigInt(origHi) << 32n;
      } else {
        mask |= 0xffffffff00000000n;
      }
      const size = (~mask & 0xffffffffffffffffn) + 1n;
      bars.push({ index: i, kind: is64 ? 'mem64' : 'mem32', prefetchable: (orig & PCI_BAR.MEM_PREFETCH) !== 0, address, size });
      if (is64) i++;
    }
  } finally {
    c.w(PCI.COMMAND, 2, command);
  }
  return bars;
}

/** lspci's size notation: 256, 4K, 1M, 2G. */
export function formatSize(size: bigint): string {
  const units = ['', 'K', 'M', 'G', 'T', 'P'];
  let s = size;
  let u = 0;
  while (s >= 1024n && s % 1024n === 0n && u < units.length - 1) {
    s /= 1024n;
    u++;
  }
  return `${s}${units[u]}`;
}

const flag = (name: string, on: boolean | number): string => `${name}${on ? '+' : '-'}`;
const hex = (v: number | bigint, width: number): string => v.toString(16).padStart(width, '0');

const CAP_NAMES: Record<number, string> = {
  [PCI_CAP_ID.PM]: 'Power Management',
  [PCI_CAP_ID.MSI]: 'MSI',
  [PCI_CAP_ID.VNDR]: 'Vendor Specific Information',
  [PCI_CAP_ID.EXP]: 'Express',
  [PCI_CAP_ID.MSIX]: 'MSI-X',
};
const EXT_CAP_NAMES: Record<number, string> = {
  [PCI_EXT_CAP_ID.DSN]: 'Device Serial Number',
  [PCI_EXT_CAP_ID.VNDR]: 'Vendor Specific Information',
  [PCI_EXT_CAP_ID.ERR]: 'Advanced Error Reporting',
};

/** Options of {@link formatLspci}. */
export interface LspciOptions {
  /** Slot shown at the start of the first line (default "00:00.0"). */
  slot?: string;
  /** Config space size (256 or 4096; default 256). */
  configSize?: number;
  /** Size BARs by writing all-ones (default true; it writes to the device). */
  sizeBars?: boolean;
}

/** Decodes config space into `lspci -vv`-style text. */
export function formatLspci(config: RegionAccessor, options: LspciOptions = {}): string {
  const c = new ConfigReader(config);
  const size = options.configSize ?? 256;
  if (size !== 256 && size !== 4096) throw new MdevError('EINVAL', 'must be 256 or 4096', 'configSize');
  const out: string[] = [];
  const vendor = c.r(PCI.VENDOR_ID, 2);
  const device = c.r(PCI.DEVICE_ID, 2);
  const cls = c.r(PCI.CLASS_DEVICE, 2);
  const progIf = c.r(PCI.CLASS_PROG, 1);
  const rev = c.r(PCI.REVISION_ID, 1);
  const className = PCI_CLASS_NAMES[cls] ?? PCI_BASE_CLASS_NAMES[cls >> 8] ?? 'Class';
  out.push(`${options.slot ?? '00:00.0'} ${className} [${hex(cls, 4)}]: Device ${hex(vendor, 4)}:${hex(device, 4)}${rev ? ` (rev ${hex(rev, 2)})` : ''}${progIf ? ` (prog-if ${hex(progIf, 2)})` : ''}`);
  out.push(`\tSubsystem: Device ${hex(c.r(PCI.SUBSYSTEM_VENDOR_ID, 2), 4)}:${hex(c.r(PCI.SUBSYSTEM_ID, 2), 4)}`);
  const cmd = c.r(PCI.COMMAND, 2);
  out.push(
    `\tControl: ${flag('I/O', cmd & PCI_COMMAND.IO)} ${flag('Mem', cmd & PCI_COMMAND.MEMORY)} ${flag('BusMaster', cmd & PCI_COMMAND.MASTER)} ${flag('SpecCycle', cmd & PCI_COMMAND.SPECIAL)} ${flag('MemWINV', cmd & PCI_COMMAND.INVALIDATE)} ${flag('VGASnoop', cmd & PCI_COMMAND.VGA_PALETTE)} ${flag('ParErr', cmd & PCI_COMMAND.PARITY)} ${flag('Stepping', cmd & PCI_COMMAND.WAIT)} ${flag('SERR', cmd & PCI_COMMAND.SERR)} ${flag('FastB2B', cmd & PCI_COMMAND.FAST_BACK)} ${flag('DisINTx', cmd & PCI_COMMAND.INTX_DISABLE)}`,
  );
  const st = c.r(PCI.STATUS, 2);
  const devsel = ['fast', 'medium', 'slow', '??'][(st & PCI_STATUS.DEVSEL_MASK) >> 9];
  out.push(
    `\tStatus: ${flag('Cap', st & PCI_STATUS.CAP_LIST)} ${flag('66MHz', st & PCI_STATUS.MHZ66)} ${flag('UDF', st & PCI_STATUS.UDF)} ${flag('FastB2B', st & PCI_STATUS.FAST_BACK)} ${flag('ParErr', st & PCI_STATUS.PARITY)} DEVSEL=${devsel} ${flag('>TAbort', st & PCI_STATUS.SIG_TARGET_ABORT)} ${flag('<TAbort', st & PCI_STATUS.REC_TARGET_ABORT)} ${flag('<MAbort', st & PCI_STATUS.REC_MASTER_ABORT)} ${flag('>SERR', st & PCI_STATUS.SIG_SYSTEM_ERROR)} ${flag('<PERR', st & PCI_STATUS.DETECTED_PARITY)} ${flag('INTx', st & PCI_STATUS.INTERRUPT)}`,
  );
  const pin = c.r(PCI.INTERRUPT_PIN, 1);
  if (pin) out.push(`\tInterrupt: pin ${'?ABCD'[pin] ?? '?'} routed to IRQ ${c.r(PCI.INTERRUPT_LINE, 1)}`);
  if (options.sizeBars ?? true) {
    for (const bar of sizeBars(config)) {
      const enabled = bar.kind === 'io' ? cmd & PCI_COMMAND.IO : cmd & PCI_COMMAND.MEMORY;
      const where = bar.address === 0n ? '<unassigned>' : hex(bar.address, bar.kind === 'io' ? 4 : 8);
      const state = enabled ? '' : ' [disabled]';
      if (bar.kind === 'io') out.push(`\tRegion ${bar.index}: I/O ports at ${where}${state} [size=${formatSize(bar.size)}]`);
      else out.push(`\tRegion ${bar.index}: Memory at ${where} (${bar.kind === 'mem64' ? '64-bit' : '32-bit'}, ${bar.prefetchable ? 'prefetchable' : 'non-prefetchable'})${state} [size=${formatSize(bar.size)}]`);
    }
    const rom = c.r(PCI.ROM_ADDRESS, 4);
    c.w(PCI.ROM_ADDRESS, 4, PCI_BAR.ROM_ADDRESS_MASK);
    const romMask = c.r(PCI.ROM_ADDRESS, 4) & PCI_BAR.ROM_ADDRESS_MASK;
    c.w(PCI.ROM_ADDRESS, 4, rom);
    if (romMask) {
      const addr = (rom & PCI_BAR.ROM_ADDRESS_MASK) >>> 0;
      out.push(`\tExpansion ROM at ${addr ? hex(addr, 8) : '<unassigned>'}${rom & PCI_BAR.ROM_ENABLE ? '' : ' [disabled]'} [size=${formatSize(BigInt((~romMask >>> 0) + 1))}]`);
    }
  }
  for (const cap of walkCapabilities(config, size)) out.push(...describeCapability(c, cap));
  return out.join('\n');
}

function describeCapability(c: ConfigReader, cap: FoundCapability): string[] {
  const o = cap.offset;
  if (cap.extended) {
    const name = EXT_CAP_NAMES[cap.id] ?? `Extended Capability ID ${hex(cap.id, 4)}`;
    const head = `\tCapabilities: [${hex(o, 3)} v${cap.version}] ${name}`;
    if (cap.id === PCI_EXT_CAP_ID.DSN) {
      const lo = c.r(o + 4, 4);
      const hi = c.r(o + 8, 4);
      const bytes = [...Array(8)].map((_, i) => hex(((i < 4 ? hi >>> (8 * (3 - i)) : lo >>> (8 * (7 - i))) & 0xff), 2));
      return [`${head} ${bytes.join('-')}`];
    }
    if (cap.id === PCI_EXT_CAP_ID.VNDR) {
      const v = c.r(o + 4, 4);
      return [`${head}: ID=${hex(v & 0xffff, 4)} Rev=${(v >>> 16) & 0xf} Len=${hex(v >>> 20, 3)} <?>`];
    }
    return [head];
  }
  const head = `\tCapabilities: [${hex(o, 2)}] `;
  switch (cap.id) {
    case PCI_CAP_ID.PM: {
      const pmc = c.r(o + 2, 2);
      const ctl = c.r(o + 4, 2);
      return [
        `${head}Power Management version ${pmc & 7}`,
        `\t\tFlags: ${flag('PMEClk', pmc & 8)} ${flag('DSI', pmc & 0x20)} ${flag('D1', pmc & 0x200)} ${flag('D2', pmc & 0x400)} AuxCurrent=0mA PME(D0${(pmc >> 11) & 1 ? '+' : '-'},D1${(pmc >> 12) & 1 ? '+' : '-'},D2${(pmc >> 13) & 1 ? '+' : '-'},D3hot${(pmc >> 14) & 1 ? '+' : '-'},D3cold${(pmc >> 15) & 1 ? '+' : '-'})`,
        `\t\tStatus: D${ctl & 3} ${flag('NoSoftRst', ctl & 8)} ${flag('PME-Enable', ctl & 0x100)} DSel=${(ctl >> 9) & 0xf} DScale=${(ctl >> 13) & 3} ${flag('PME', ctl & 0x8000)}`,
      ];
    }
    case PCI_CAP_ID.MSI: {
      const f = c.r(o + PCI_MSI.FLAGS, 2);
      const is64 = (f & PCI_MSI.FLAGS_64BIT) !== 0;
      const maskable = (f & PCI_MSI.FLAGS_MASKBIT) !== 0;
      const lines = [`${head}MSI: ${flag('Enable', f & 1)} Count=${1 << ((f & PCI_MSI.FLAGS_QSIZE) >> 4)}/${1 << ((f & PCI_MSI.FLAGS_QMASK) >> 1)} ${flag('Maskable', maskable)} ${flag('64bit', is64)}`];
      const addr = is64 ? (BigInt(c.r(o + 8, 4)) << 32n) | BigInt(c.r(o + 4, 4)) : BigInt(c.r(o + 4, 4));
      const data = c.r(o + (is64 ? PCI_MSI.DATA_64 : PCI_MSI.DATA_32), 2);
      lines.push(`\t\tAddress: ${hex(addr, is64 ? 16 : 8)}  Data: ${hex(data, 4)}`);
      if (maskable) {
        const m = is64 ? PCI_MSI.MASK_64 : PCI_MSI.MASK_32;
        lines.push(`\t\tMasking: ${hex(c.r(o + m, 4), 8)}  Pending: ${hex(c.r(o + m + 4, 4), 8)}`);
      }
      return lines;
    }
    case PCI_CAP_ID.MSIX: {
      const f = c.r(o + PCI_MSIX.FLAGS, 2);
      const t = c.r(o + PCI_MSIX.TABLE, 4);
      const p = c.r(o + PCI_MSIX.PBA, 4);
      return [
        `${head}MSI-X: ${flag('Enable', f & PCI_MSIX.FLAGS_ENABLE)} Count=${(f & PCI_MSIX.FLAGS_QSIZE) + 1} ${flag('Masked', f & PCI_MSIX.FLAGS_MASKALL)}`,
        `\t\tVector table: BAR=${t & 7} offset=${hex((t & ~7) >>> 0, 8)}`,
        `\t\tPBA: BAR=${p & 7} offset=${hex((p & ~7) >>> 0, 8)}`,
      ];
    }
    case PCI_CAP_ID.EXP: {
      const f = c.r(o + PCI_EXP.FLAGS, 2);
      const type = ({ 0: 'Endpoint', 1: 'Legacy Endpoint', 9: 'Root Complex Integrated Endpoint' } as Record<number, string>)[(f >> 4) & 0xf] ?? `Unknown type ${(f >> 4) & 0xf}`;
      const devcap = c.r(o + PCI_EXP.DEVCAP, 4);
      const devctl = c.r(o + PCI_EXP.DEVCTL, 2);
      const lnkcap = c.r(o + PCI_EXP.LNKCAP, 4);
      const lnksta = c.r(o + PCI_EXP.LNKSTA, 2);
      const speed = (s: number): string => ['?', '2.5GT/s', '5GT/s', '8GT/s', '16GT/s', '32GT/s', '64GT/s'][s] ?? '?';
      return [
        `${head}Express (v${f & 0xf}) ${type}, MSI ${hex((f >> 9) & 0x1f, 2)}`,
        `\t\tDevCap: MaxPayload ${128 << (devcap & 7)} bytes, PhantFunc 0, Latency L0s <64ns, L1 <1us`,
        `\t\t\t${flag('ExtTag', devcap & 0x20)} ${flag('RBE', devcap & 0x8000)} ${flag('FLReset', devcap & PCI_EXP.DEVCAP_FLR)}`,
        `\t\tDevCtl: ${flag('CorrErr', devctl & 1)} ${flag('NonFatalErr', devctl & 2)} ${flag('FatalErr', devctl & 4)} ${flag('UnsupReq', devctl & 8)}`,
        `\t\t\t${flag('RlxdOrd', devctl & 0x10)} ${flag('ExtTag', devctl & 0x100)} ${flag('NoSnoop', devctl & 0x800)}`,
        `\t\t\tMaxPayload ${128 << ((devctl >> 5) & 7)} bytes, MaxReadReq ${128 << ((devctl >> 12) & 7)} bytes`,
        `\t\tLnkCap: Port #${lnkcap >>> 24}, Speed ${speed(lnkcap & 0xf)}, Width x${(lnkcap >> 4) & 0x3f}`,
        `\t\tLnkSta: Speed ${speed(lnksta & 0xf)}, Width x${(lnksta >> 4) & 0x3f}`,
      ];
    }
    case PCI_CAP_ID.VNDR:
      return [`${head}${CAP_NAMES[cap.id]}: Len=${hex(c.r(o + 2, 1), 2)} <?>`];
    default:
      return [`${head}${CAP_NAMES[cap.id] ?? `Capability ID ${hex(cap.id, 2)}`}`];
  }
}
