/**
 * Capability builders: each writes a capability's registers into config space with the write
 * masks the PCI / PCI Express specifications give them, and returns a handle that describes it.
 * @module
 */
import { MdevError, checkInt, describe } from '../errors.js';
import type { ConfigSpace, PlacedCapability } from './config-space.js';
import { PCI_CAP_ID, PCI_EXP, PCI_EXT_CAP_ID, PCI_MSI, PCI_MSIX, PCI_PM } from './constants.js';

/** A placed MSI capability. */
export interface MsiCapability extends PlacedCapability {
  /** Vectors the function can use (1, 2, 4, 8, 16 or 32). */
  readonly vectors: number;
  /** 64-bit message address. */
  readonly addr64: boolean;
  /** Per-vector masking (mask and pending registers present). */
  readonly perVectorMask: boolean;
}

/** A placed MSI-X capability; the table and PBA live in BARs. */
export interface MsixCapability extends PlacedCapability {
  /** Number of table entries (1 … 2048). */
  readonly vectors: number;
  /** BAR holding the table. */
  readonly tableBar: number;
  /** Offset of the table in that BAR (8-byte aligned). */
  readonly tableOffset: number;
  /** BAR holding the pending-bit array. */
  readonly pbaBar: number;
  /** Offset of the PBA in that BAR (8-byte aligned). */
  readonly pbaOffset: number;
}

/** A placed PCI Express capability. */
export interface PcieCapability extends PlacedCapability {
  /** Function-level reset is advertised (DEVCAP.FLR) and initiated through DEVCTL. */
  readonly flr: boolean;
}

/** Options of an MSI capability. */
export interface MsiOptions {
  /** Vectors requested (power of two, 1 … 32). */
  vectors: number;
  /** 64-bit address (default true). */
  addr64?: boolean;
  /** Per-vector masking (default true). */
  perVectorMask?: boolean;
  /** Fixed config-space offset (default: first free). */
  offset?: number;
}

/** Options of an MSI-X capability. */
export interface MsixOptions {
  /** Table entries (1 … 2048). */
  vectors: number;
  /** BAR index of the table. */
  tableBar: number;
  /** Table offset within the BAR (8-byte aligned; default 0). */
  tableOffset?: number;
  /** BAR index of the PBA (default: the table's BAR). */
  pbaBar?: number;
  /** PBA offset within its BAR (8-byte aligned; default: right after the table, 8-byte aligned). */
  pbaOffset?: number;
  /** Fixed config-space offset. */
  offset?: number;
}

/** Options of a PCI Express capability. */
export interface PcieOptions {
  /** Device/port type (default: endpoint). */
  type?: 'endpoint' | 'legacy-endpoint' | 'rc-integrated-endpoint';
  /** Advertise function-level reset (default true). */
  flr?: boolean;
  /** Max payload size supported, bytes (128 … 4096, default 256). */
  maxPayload?: number;
  /** Link width reported (default 1). */
  linkWidth?: number;
  /** Link speed in GT/s generation number, 1 = 2.5 GT/s (default 1). */
  linkSpeed?: number;
  /** Fixed config-space offset. */
  offset?: number;
}

const MSI_VECTOR_COUNTS = [1, 2, 4, 8, 16, 32];

/** Adds a Power Management capability (version 3, D0 and D3hot, no PME). */
export function addPowerManagement(cfg: ConfigSpace, offset?: number): PlacedCapability {
  const cap = cfg.placeCapability(PCI_CAP_ID.PM, PCI_PM.SIZEOF, false, offset);
  cfg.set(cap.offset + PCI_PM.PMC, 2, 0x0003); // version 3
  // No_Soft_Reset: going D3hot → D0 keeps state; only the power-state field is writable.
  cfg.set(cap.offset + PCI_PM.CTRL, 2, PCI_PM.CTRL_NO_SOFT_RESET);
  cfg.setMasks(cap.offset + PCI_PM.CTRL, 2, PCI_PM.CTRL_STATE_MASK);
  return cap;
}

/** Adds an MSI capability. */
export function addMsi(cfg: ConfigSpace, options: MsiOptions): MsiCapability {
  if (!MSI_VECTOR_COUNTS.includes(options.vectors)) {
    throw new MdevError('EINVAL', `must be 1, 2, 4, 8, 16 or 32, got ${describe(options.vectors)}`, 'msi.vectors');
  }
  const addr64 = options.addr64 ?? true;
  const perVectorMask = options.perVectorMask ?? true;
  const size = 10 + (addr64 ? 4 : 0) + (perVectorMask ? 10 : 0);
  const cap = cfg.placeCapability(PCI_CAP_ID.MSI, (size + 3) & ~3, false, options.offset);
  const o = cap.offset;
  const mmc = Math.log2(options.vectors);
  let flags = mmc << 1;
  if (addr64) flags |= PCI_MSI.FLAGS_64BIT;
  if (perVectorMask) flags |= PCI_MSI.FLAGS_MASKBIT;
  cfg.set(o + PCI_MSI.FLAGS, 2, flags);
  cfg.setMasks(o + PCI_MSI.FLAGS, 2, PCI_MSI.FLAGS_ENABLE | PCI_MSI.FLAGS_QSIZE);
  cfg.setMasks(o + PCI_MSI.ADDRESS_LO, 4, 0xfffffffc);
  const dataOff = addr64 ? PCI_MSI.DATA_64 : PCI_MSI.DATA_32;
  if (addr64) cfg.setMasks(o + PCI_MSI.ADDRESS_HI, 4, 0xffffffff);
  cfg.setMasks(o + dataOff, 2, 0xffff);
  if (perVectorMask) {
    const maskOff = addr64 ? PCI_MSI.MASK_64 : PCI_MSI.MASK_32;
    const used = options.vectors === 32 ? 0xffffffff : (1 << options.vectors) - 1;
    cfg.setMasks(o + maskOff, 4, used);
  }
  return { ...cap, vectors: options.vectors, addr64, perVectorMask };
}

/** Adds an MSI-X capability; the device places the table and PBA in the named BARs. */
export function addMsix(cfg: ConfigSpace, options: MsixOptions): MsixCapability {
  const vectors = checkInt('msix.vectors', options.vectors, 1, 2048);
  const tableBar = checkInt('msix.tableBar', options.tableBar, 0, 5);
  const tableOffset = checkInt('msix.tableOffset', options.tableOffset ?? 0, 0, 0xfffffff8);
  const pbaBar = checkInt('msix.pbaBar', options.pbaBar ?? tableBar, 0, 5);
  const defaultPba = pbaBar === tableBar ? (tableOffset + vectors * PCI_MSIX.ENTRY_SIZE + 7) & ~7 : 0;
  const pbaOffset = checkInt('msix.pbaOffset', options.pbaOffset ?? defaultPba, 0, 0xfffffff8);
  if (tableOffset % 8 !== 0) throw new MdevError('EINVAL', 'must be 8-byte aligned', 'msix.tableOffset');
  if (pbaOffset % 8 !== 0) throw new MdevError('EINVAL', 'must be 8-byte aligned', 'msix.pbaOffset');
  const pbaSize = Math.ceil(vectors / 64) * 8;
  if (pbaBar === tableBar && pbaOffset < tableOffset + vectors * 16 && tableOffset < pbaOffset + pbaSize) {
    throw new MdevError('EINVAL', 'the PBA overlaps the table', 'msix.pbaOffset');
  }
  const cap = cfg.placeCapability(PCI_CAP_ID.MSIX, PCI_MSIX.SIZEOF, false, options.offset);
  cfg.set(cap.offset + PCI_MSIX.FLAGS, 2, vectors - 1);
  cfg.setMasks(cap.offset + PCI_MSIX.FLAGS, 2, PCI_MSIX.FLAGS_ENABLE | PCI_MSIX.FLAGS_MASKALL);
  cfg.set(cap.offset + PCI_MSIX.TABLE, 4, tableOffset | tableBar);
  cfg.set(cap.offset + PCI_MSIX.PBA, 4, pbaOffset | pbaBar);
  return { ...cap, vectors, tableBar, tableOffset, pbaBar, pbaOffset };
}

/** Adds a PCI Express capability (version 2) describing an endpoint on an x1 link. */
export function addPciExpress(cfg: ConfigSpace, options: PcieOptions = {}): PcieCapability {
  const types = { endpoint: PCI_EXP.TYPE_ENDPOINT, 'legacy-endpoint': PCI_EXP.TYPE_LEG_END, 'rc-integrated-endpoint': PCI_EXP.TYPE_RC_END };
  const type = options.type ?? 'endpoint';
  if (!(type in types)) throw new MdevError('EINVAL', `unknown device type ${describe(type)}`, 'pcie.type');
  const flr = options.flr ?? true;
  const payload = options.maxPayload ?? 256;
  const payloadCode = [128, 256, 512, 1024, 2048, 4096].indexOf(payload);
  if (payloadCode < 0) throw new MdevError('EINVAL', `must be 128 … 4096 (power of two), got ${describe(payload)}`, 'pcie.maxPayload');
  const width = options.linkWidth ?? 1;
  if (![1, 2, 4, 8, 12, 16, 32].includes(width)) throw new MdevError('EINVAL', `unsupported link width ${describe(width)}`, 'pcie.linkWidth');
  const speed = checkInt('pcie.linkSpeed', options.linkSpeed ?? 1, 1, 6);
  const cap = cfg.placeCapability(PCI_CAP_ID.EXP, PCI_EXP.SIZEOF_V2, false, options.offset);
  const o = cap.offset;
  cfg.set(o + PCI_EXP.FLAGS, 2, 2 | (types[type] << 4));
  // DEVCAP: max payload, role-based error reporting (bit 15), FLR.
  cfg.set(o + PCI_EXP.DEVCAP, 4, payloadCode | (1 << 15) | (flr ? PCI_EXP.DEVCAP_FLR : 0));
  // DEVCTL: error reporting enables, relaxed ordering, max payload, extended tag, no snoop,
  // max read request; BCR/FLR is writable only when FLR is advertised (it reads back as 0).
  cfg.set(o + PCI_EXP.DEVCTL, 2, (2 << 12) | (1 << 4) | (1 << 11)); // MRRS 512, RO and NS enabled
  cfg.setMasks(o + PCI_EXP.DEVCTL, 2, 0x7fff | (flr ? PCI_EXP.DEVCTL_BCR_FLR : 0));
  cfg.setMasks(o + PCI_EXP.DEVSTA, 2, 0, 0x000f); // error-detected bits are RW1C
  cfg.set(o + PCI_EXP.LNKCAP, 4, speed | (width << 4));
  cfg.setMasks(o + PCI_EXP.LNKCTL, 2, 0x0003 | 0x0040 | 0x0080); // ASPM control, common clock, ext sync
  cfg.set(o + PCI_EXP.LNKSTA, 2, speed | (width << 4));
  cfg.set(o + PCI_EXP.DEVCAP2, 4, 0);
  cfg.setMasks(o + PCI_EXP.DEVCTL2, 2, 0x000f | 0x0010); // completion timeout value / disable
  // LNKCAP2: supported link speeds vector, bits 1..speed.
  cfg.set(o + PCI_EXP.LNKCAP2, 4, ((1 << speed) - 1) << 1);
  cfg.set(o + PCI_EXP.LNKCTL2, 2, speed);
  cfg.setMasks(o + PCI_EXP.LNKCTL2, 2, 0x000f);
  return { ...cap, flr };
}

/** Adds a vendor-specific capability holding `data` (read-only unless `writableMask` is given). */
export function addVendorSpecific(cfg: ConfigSpace, data: Uint8Array, writableMask?: Uint8Array, offset?: number): PlacedCapability {
  if (!(data instanceof Uint8Array)) throw new MdevError('EINVAL', 'must be a Uint8Array', 'data');
  const length = data.length + 3;
  if (length > 0xff) throw new MdevError('ERANGE', `vendor capability length ${length} exceeds 255`, 'data');
  const cap = cfg.placeCapability(PCI_CAP_ID.VNDR, (length + 3) & ~3, false, offset);
  cfg.set(cap.offset + 2, 1, length);
  data.forEach((b, i) => cfg.set(cap.offset + 3 + i, 1, b));
  if (writableMask) {
    if (writableMask.length !== data.length) throw new MdevError('EINVAL', 'must be as long as data', 'writableMask');
    writableMask.forEach((m, i) => cfg.setMasks(cap.offset + 3 + i, 1, m));
  }
  return { ...cap, size: length };
}

/** Adds a Device Serial Number extended capability. */
export function addDeviceSerialNumber(cfg: ConfigSpace, serial: bigint, offset?: number): PlacedCapability {
  if (typeof serial !== 'bigint' || serial < 0n || serial >= 1n << 64n) throw new MdevError('ERANGE', 'must be a 64-bit bigint', 'serial');
  const cap = cfg.placeCapability(PCI_EXT_CAP_ID.DSN, 12, true, offset, 1);
  cfg.set(cap.offset + 4, 4, Number(serial & 0xffffffffn));
  cfg.set(cap.offset + 8, 4, Number(serial >> 32n));
  return cap;
}

/** Adds a vendor-specific extended capability (VSEC) with the given VSEC id/revision and body. */
export function addExtendedVendorSpecific(cfg: ConfigSpace, vsecId: number, vsecRev: number, data: Uint8Array, offset?: number): PlacedCapability {
  checkInt('vsecId', vsecId, 0, 0xffff);
  checkInt('vsecRev', vsecRev, 0, 0xf);
  if (!(data instanceof Uint8Array)) throw new MdevError('EINVAL', 'must be a Uint8Array', 'data');
  const length = 8 + data.length;
  if (length > 0xfff) throw new MdevError('ERANGE', 'VSEC length exceeds 4095', 'data');
  const cap = cfg.placeCapability(PCI_EXT_CAP_ID.VNDR, (length + 3) & ~3, true, offset, 1);
  cfg.set(cap.offset + 4, 4, vsecId | (vsecRev << 16) | (length << 20));
  data.forEach((b, i) => cfg.set(cap.offset + 8 + i, 1, b));
  return { ...cap, size: length };
}
