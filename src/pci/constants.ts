/**
 * PCI and PCI Express configuration-space layout: register offsets, bit fields and capability IDs,
 * as defined by the PCI Local Bus and PCI Express Base specifications.
 * @module
 */

/** Type-0 header register offsets. */
export const PCI = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION_ID: 0x08,
  CLASS_PROG: 0x09,
  CLASS_DEVICE: 0x0a,
  CACHE_LINE_SIZE: 0x0c,
  LATENCY_TIMER: 0x0d,
  HEADER_TYPE: 0x0e,
  BIST: 0x0f,
  BAR0: 0x10,
  CARDBUS_CIS: 0x28,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  SUBSYSTEM_ID: 0x2e,
  ROM_ADDRESS: 0x30,
  CAPABILITY_LIST: 0x34,
  INTERRUPT_LINE: 0x3c,
  INTERRUPT_PIN: 0x3d,
  MIN_GNT: 0x3e,
  MAX_LAT: 0x3f,
  /** Size of the type-0 header. */
  HEADER_SIZE: 0x40,
  /** Size of conventional PCI configuration space. */
  CONFIG_SPACE_SIZE: 0x100,
  /** Size of PCI Express extended configuration space. */
  CONFIG_SPACE_EXP_SIZE: 0x1000,
  /** Number of BARs in a type-0 header. */
  NUM_BARS: 6,
} as const;

/** Command register bits. */
export const PCI_COMMAND = {
  IO: 0x1,
  MEMORY: 0x2,
  MASTER: 0x4,
  SPECIAL: 0x8,
  INVALIDATE: 0x10,
  VGA_PALETTE: 0x20,
  PARITY: 0x40,
  WAIT: 0x80,
  SERR: 0x100,
  FAST_BACK: 0x200,
  INTX_DISABLE: 0x400,
} as const;

/** Status register bits. */
export const PCI_STATUS = {
  IMM_READY: 0x1,
  INTERRUPT: 0x8,
  CAP_LIST: 0x10,
  MHZ66: 0x20,
  UDF: 0x40,
  FAST_BACK: 0x80,
  PARITY: 0x100,
  DEVSEL_MASK: 0x600,
  SIG_TARGET_ABORT: 0x800,
  REC_TARGET_ABORT: 0x1000,
  REC_MASTER_ABORT: 0x2000,
  SIG_SYSTEM_ERROR: 0x4000,
  DETECTED_PARITY: 0x8000,
} as const;

/** Status bits that are cleared by writing 1 (RW1C). */
export const PCI_STATUS_W1C =
  PCI_STATUS.PARITY |
  PCI_STATUS.SIG_TARGET_ABORT |
  PCI_STATUS.REC_TARGET_ABORT |
  PCI_STATUS.REC_MASTER_ABORT |
  PCI_STATUS.SIG_SYSTEM_ERROR |
  PCI_STATUS.DETECTED_PARITY;

/** BAR low bits. */
export const PCI_BAR = {
  SPACE_IO: 0x1,
  MEM_TYPE_MASK: 0x6,
  MEM_TYPE_32: 0x0,
  MEM_TYPE_64: 0x4,
  MEM_PREFETCH: 0x8,
  MEM_FLAGS_MASK: 0xf,
  IO_FLAGS_MASK: 0x3,
  ROM_ENABLE: 0x1,
  ROM_ADDRESS_MASK: 0xfffff800,
} as const;

/** Standard capability IDs. */
export const PCI_CAP_ID = {
  PM: 0x01,
  AGP: 0x02,
  VPD: 0x03,
  SLOTID: 0x04,
  MSI: 0x05,
  CHSWP: 0x06,
  PCIX: 0x07,
  HT: 0x08,
  VNDR: 0x09,
  DBG: 0x0a,
  CCRC: 0x0b,
  SHPC: 0x0c,
  SSVID: 0x0d,
  AGP3: 0x0e,
  SECDEV: 0x0f,
  EXP: 0x10,
  MSIX: 0x11,
  SATA: 0x12,
  AF: 0x13,
  EA: 0x14,
} as const;

/** Extended capability IDs (PCI Express, at 0x100 and above). */
export const PCI_EXT_CAP_ID = {
  ERR: 0x01,
  VC: 0x02,
  DSN: 0x03,
  PWR: 0x04,
  VNDR: 0x0b,
  ACS: 0x0d,
  ARI: 0x0e,
  ATS: 0x0f,
  SRIOV: 0x10,
  LTR: 0x18,
  PASID: 0x1b,
} as const;

/** Power Management capability layout. */
export const PCI_PM = {
  PMC: 0x02,
  CTRL: 0x04,
  SIZEOF: 0x08,
  CTRL_STATE_MASK: 0x3,
  CTRL_NO_SOFT_RESET: 0x8,
  CTRL_PME_ENABLE: 0x100,
  CTRL_PME_STATUS: 0x8000,
} as const;

/** MSI capability layout. */
export const PCI_MSI = {
  FLAGS: 0x02,
  FLAGS_ENABLE: 0x1,
  FLAGS_QMASK: 0xe,
  FLAGS_QSIZE: 0x70,
  FLAGS_64BIT: 0x80,
  FLAGS_MASKBIT: 0x100,
  ADDRESS_LO: 0x04,
  /** 64-bit: upper address; 32-bit: data. */
  ADDRESS_HI: 0x08,
  DATA_32: 0x08,
  DATA_64: 0x0c,
  MASK_32: 0x0c,
  MASK_64: 0x10,
  PENDING_32: 0x10,
  PENDING_64: 0x14,
} as const;

/** MSI-X capability and table layout. */
export const PCI_MSIX = {
  FLAGS: 0x02,
  FLAGS_QSIZE: 0x7ff,
  FLAGS_MASKALL: 0x4000,
  FLAGS_ENABLE: 0x8000,
  TABLE: 0x04,
  PBA: 0x08,
  BIR_MASK: 0x7,
  SIZEOF: 0x0c,
  ENTRY_SIZE: 16,
  ENTRY_ADDR_LO: 0x0,
  ENTRY_ADDR_HI: 0x4,
  ENTRY_DATA: 0x8,
  ENTRY_VECTOR_CTRL: 0xc,
  ENTRY_CTRL_MASKBIT: 0x1,
} as const;

/** PCI Express capability layout (version 2). */
export const PCI_EXP = {
  FLAGS: 0x02,
  FLAGS_VERS: 0x000f,
  FLAGS_TYPE: 0x00f0,
  TYPE_ENDPOINT: 0x0,
  TYPE_LEG_END: 0x1,
  TYPE_RC_END: 0x9,
  DEVCAP: 0x04,
  DEVCAP_FLR: 0x10000000,
  DEVCTL: 0x08,
  DEVCTL_BCR_FLR: 0x8000,
  DEVSTA: 0x0a,
  LNKCAP: 0x0c,
  LNKCTL: 0x10,
  LNKSTA: 0x12,
  DEVCAP2: 0x24,
  DEVCTL2: 0x28,
  LNKCAP2: 0x2c,
  LNKCTL2: 0x30,
  SIZEOF_V2: 0x3c,
} as const;

/** Base class codes (the top byte of the 24-bit class code), for decoding. */
export const PCI_BASE_CLASS_NAMES: Readonly<Record<number, string>> = {
  0x00: 'Unclassified device',
  0x01: 'Mass storage controller',
  0x02: 'Network controller',
  0x03: 'Display controller',
  0x04: 'Multimedia controller',
  0x05: 'Memory controller',
  0x06: 'Bridge',
  0x07: 'Communication controller',
  0x08: 'Generic system peripheral',
  0x09: 'Input device controller',
  0x0b: 'Processor',
  0x0c: 'Serial bus controller',
  0x0d: 'Wireless controller',
  0x11: 'Signal processing controller',
  0x12: 'Processing accelerators',
  0xff: 'Unassigned class',
};

/** Well-known class/subclass names, for decoding (key: class << 8 | subclass). */
export const PCI_CLASS_NAMES: Readonly<Record<number, string>> = {
  0x0000: 'Non-VGA unclassified device',
  0x00ff: 'Unclassified device',
  0x0300: 'VGA compatible controller',
  0x0302: '3D controller',
  0x0380: 'Display controller',
  0x0880: 'System peripheral',
  0x1200: 'Processing accelerators',
};
