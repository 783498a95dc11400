/**
 * A display that unmodified guests drive: the Bochs "dispi" interface as QEMU's legacy-free
 * `bochs-display` offers it (PCI 1234:1111, class 0x0380, revision 2). Linux's bochs DRM driver
 * (drivers/gpu/drm/tiny/bochs.c) binds it and gives the guest /dev/fb0 and a text console; OVMF's
 * QemuVideoDxe binds it too. There are no interrupts and no capabilities: the guest writes a mode
 * into the DISPI registers and draws straight into VRAM.
 *
 * BAR0 (32-bit prefetchable memory, 16 MiB by default): VRAM, a memfd that the VMM maps into the
 * guest, so drawing never traps. A server finds what changed by scanning VRAM (or from dirty
 * tracking) and renders it with `ScanoutDisplay` (src/display.ts): the device is a `DisplayDevice`
 * (src/display-device.ts), and `mdevkit serve bochs-display --vfio-user S --display-png F` keeps
 * its frame as a PNG.
 *
 * BAR2 (32-bit memory, 4 KiB, trapped):
 * | offset        | contents |
 * |---------------|----------|
 * | 0x000–0x3ff   | EDID (a 128-byte EDID 1.4 base block; bytes past it read 0; writes ignored) |
 * | 0x400–0x41f   | VGA ports 0x3c0–0x3df; only the attribute controller's PAS bit (blanking) matters |
 * | 0x500 + 2·i   | DISPI register i (16 bits; any access of 1–4 bytes, a 4-byte one covers two registers) |
 * | 0x600         | u32 RO: size of this extension block (8) |
 * | 0x604         | u32: framebuffer byte order, 0x1e1e1e1e little endian, 0xbebebebe big endian |
 *
 * DISPI registers are stored as written (except ID and VIDEO_MEMORY_64K, which are read-only) and
 * never refused: a mode that cannot be shown just makes {@link BochsDisplay.scanout} return null.
 * As in QEMU's bochs-display (unlike stdvga's VBE), enabling a mode has no side effects on VRAM or
 * on other registers.
 *
 * Nothing a guest writes queues work: an access costs time in proportion to its bytes (at most the
 * 4 KiB BAR) and changes the mode at most once, and a mode is shown only when it and its virtual
 * screen fit VRAM — so whatever a server sizes from the DISPI values is bounded by VRAM
 * (test/hostile-guests.test.ts).
 * @module
 */
import { MdevError, checkInt, describe, PciDevice, createMemfdBacking, Region, type PixelByteOrder, type DisplayDevice, type DisplayPlane, type MemfdBacking, type RegionAccessor, type StateSection } from 'mdevkit';

/** Identity, BAR2 layout and limits. */
export const BOCHS = {
  VENDOR_ID: 0x1234,
  DEVICE_ID: 0x1111,
  CLASS_CODE: 0x038000,
  REVISION: 2,
  /** Linux treats subsystem 1af4:1100 as QEMU stdvga; anything else is an "unknown" bochs. */
  SUBSYSTEM_VENDOR_ID: 0x1234,
  SUBSYSTEM_ID: 0x0000,
  MMIO_SIZE: 0x1000,
  EDID_OFFSET: 0x000,
  EDID_WINDOW: 0x400,
  EDID_SIZE: 128,
  VGA_OFFSET: 0x400,
  VGA_SIZE: 0x20,
  /** First VGA port of the window (0x400 ↔ port 0x3c0). */
  VGA_PORT_BASE: 0x3c0,
  DISPI_OFFSET: 0x500,
  DISPI_WINDOW: 0x100,
  QEXT_OFFSET: 0x600,
  QEXT_SIZE: 8,
  QEXT_BYTE_ORDER: 0x604,
  BYTE_ORDER_LITTLE: 0x1e1e1e1e,
  BYTE_ORDER_BIG: 0xbebebebe,
  DEFAULT_VRAM_SIZE: 16 << 20,
  MIN_VRAM_SIZE: 4 << 20,
  MAX_VRAM_SIZE: 256 << 20,
  DEFAULT_WIDTH: 1024,
  DEFAULT_HEIGHT: 768,
  /** Smallest mode shown, in pixels and lines. */
  MIN_RES: 64,
} as const;

/** DISPI register indexes and bits (QEMU's include/hw/display/bochs-vbe.h names). */
export const DISPI = {
  ID: 0x0,
  XRES: 0x1,
  YRES: 0x2,
  BPP: 0x3,
  ENABLE: 0x4,
  BANK: 0x5,
  VIRT_WIDTH: 0x6,
  VIRT_HEIGHT: 0x7,
  X_OFFSET: 0x8,
  Y_OFFSET: 0x9,
  VIDEO_MEMORY_64K: 0xa,
  /** Number of registers. */
  COUNT: 11,
  /** What ID reads (the newest interface version, like QEMU). */
  ID_VALUE: 0xb0c5,
  ID0: 0xb0c0,
  ENABLED: 0x01,
  GETCAPS: 0x02,
  DAC_8BIT: 0x20,
  LFB_ENABLED: 0x40,
  NOCLEAR: 0x80,
  MAX_XRES: 16000,
  MAX_YRES: 12000,
  MAX_BPP: 32,
} as const;

/** A display mode in pixels. */
export interface DisplayMode {
  /** Pixels per line. */
  width: number;
  /** Lines. */
  height: number;
}

/** Options of {@link BochsDisplay}. */
export interface BochsDisplayOptions {
  /** VRAM (BAR0) size in bytes: a power of two from 4 to 256 MiB (default 16 MiB). */
  vramSize?: number;
  /** The EDID's preferred mode (default 1024×768); it must fit VRAM at 32 bpp. */
  preferredMode?: DisplayMode;
  /** Offer an EDID (default true); without one, Linux falls back to its "noedid" modes. */
  edid?: boolean;
}

/**
 * What the device shows: a valid DISPI mode, where it is in VRAM and how its pixels are stored.
 * `format` is XRGB8888 at 32 bpp and RGB565 at 16; `byteOrder` comes from the register at 0x604;
 * `blanked` means the VGA attribute controller's palette-address-source bit is clear (the guest
 * asked for a blank screen: the mode is still valid, a server shows black).
 */
export interface ScanoutState extends DisplayPlane {
  /** Bits per pixel (16 or 32). */
  bpp: 16 | 32;
}

/** Detailed timing of a mode, as the EDID describes it. */
export interface DetailedTiming {
  /** Pixel clock in kHz (a multiple of 10). */
  pixelClockKhz: number;
  /** Visible pixels per line. */
  hActive: number;
  /** Horizontal front porch, sync and back porch, in pixels. */
  hFront: number;
  /** Horizontal sync width in pixels. */
  hSync: number;
  /** Horizontal back porch in pixels. */
  hBack: number;
  /** Visible lines. */
  vActive: number;
  /** Vertical front porch in lines. */
  vFront: number;
  /** Vertical sync width in lines. */
  vSync: number;
  /** Vertical back porch in lines. */
  vBack: number;
}

const REFRESH_HZ = 60;

/**
 * A reduced-blanking timing for `mode` at 60 Hz: a 160-pixel horizontal blank (longer for modes
 * that would otherwise clock below 10 MHz) and the smallest vertical blank that lasts at least
 * 460 µs (the CVT reduced-blanking rules, simplified).
 * Throws `ERANGE` when the mode does not fit an EDID detailed timing descriptor.
 */
export function timingFor(mode: DisplayMode): DetailedTiming {
  const { width, height } = mode;
  checkInt('mode.width', width, BOCHS.MIN_RES, 4095);
  checkInt('mode.height', height, BOCHS.MIN_RES, 4095);
  const hFront = 48;
  const hSync = 32;
  let hBack = 80;
  const vFront = 3;
  const vSync = 6;
  // vblank / (height + vblank) ≥ 460 µs / frame time, solved for vblank.
  const frameUs = 1_000_000;
  const vBlank = Math.max(vFront + vSync + 6, Math.ceil((460 * REFRESH_HZ * height) / (frameUs - 460 * REFRESH_HZ)));
  const vTotal = height + vBlank;
  // EDID parsers treat pixel clocks under 10 MHz as garbage: small modes get a longer back porch.
  hBack += Math.max(0, Math.ceil(10_000_000 / (vTotal * REFRESH_HZ)) - (width + hFront + hSync + hBack));
  const hTotal = width + hFront + hSync + hBack;
  const pixelClockKhz = Math.ceil((hTotal * vTotal * REFRESH_HZ) / 10_000) * 10;
  if (pixelClockKhz > 655_350) throw new MdevError('ERANGE', `${width}×${height} at ${REFRESH_HZ} Hz needs ${pixelClockKhz} kHz; an EDID timing holds at most 655350`, 'mode');
  return { pixelClockKhz, hActive: width, hFront, hSync, hBack, vActive: height, vFront, vSync, vBack: vBlank - vFront - vSync };
}

/**
 * Physical size in mm of `px` pixels at 96 dpi (guests derive DPI from it), at least 10 cm: smaller
 * sizes are taken for placeholders by EDID parsers.
 */
function mmAt96Dpi(px: number): number {
  return Math.max(100, Math.round((px * 25.4) / 96));
}

/**
 * A 128-byte EDID 1.4 base block for a digital display whose preferred (first detailed) timing is
 * `mode`, with sRGB colorimetry, the 640×480, 800×600 and 1024×768 established modes and a
 * product name, and no extension blocks.
 */
export function buildEdid(mode: DisplayMode): Uint8Array {
  const t = timingFor(mode);
  const e = new Uint8Array(BOCHS.EDID_SIZE);
  e.set([0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00], 0);
  // Manufacturer "MDK": three 5-bit letters (A = 1), big endian.
  const letters = [...'MDK'].map((c) => c.charCodeAt(0) - 0x40);
  const mfg = (letters[0]! << 10) | (letters[1]! << 5) | letters[2]!;
  e[8] = mfg >> 8;
  e[9] = mfg & 0xff;
  e[10] = 0x11; // product code 0x1111, little endian
  e[11] = 0x11;
  // Serial number 12–15 stays 0; week 0, year 2024.
  e[17] = 2024 - 1990;
  e[18] = 1; // EDID 1.4
  e[19] = 4;
  e[20] = 0xa0; // digital input, 8 bits per colour, interface undefined
  const hmm = mmAt96Dpi(t.hActive);
  const vmm = mmAt96Dpi(t.vActive);
  e[21] = Math.round(hmm / 10); // image size in cm
  e[22] = Math.round(vmm / 10);
  e[23] = 120; // gamma 2.2 (stored as gamma × 100 − 100)
  e[24] = 0x06; // sRGB default colour space, preferred timing is native; RGB 4:4:4; no DPM, not continuous
  // sRGB chromaticity as 10-bit binary fractions: red, green, blue, white (x, y each).
  const chroma = [0.64, 0.33, 0.3, 0.6, 0.15, 0.06, 0.3127, 0.329].map((v) => Math.round(v * 1024));
  const lo = (i: number): number => chroma[i]! & 0x3;
  e[25] = (lo(0) << 6) | (lo(1) << 4) | (lo(2) << 2) | lo(3);
  e[26] = (lo(4) << 6) | (lo(5) << 4) | (lo(6) << 2) | lo(7);
  for (let i = 0; i < 8; i++) e[27 + i] = chroma[i]! >> 2;
  e[35] = 0x21; // established timings: 640×480@60 (bit 5), 800×600@60 (bit 0)
  e[36] = 0x08; // 1024×768@60
  e[37] = 0x00;
  for (let i = 38; i < 54; i += 2) {
    e[i] = 0x01; // standard timings: all unused
    e[i + 1] = 0x01;
  }
  // Descriptor 1: the preferred detailed timing.
  const d = 54;
  const hBlank = t.hFront + t.hSync + t.hBack;
  const vBlank = t.vFront + t.vSync + t.vBack;
  const clock = t.pixelClockKhz / 10;
  e[d] = clock & 0xff;
  e[d + 1] = clock >> 8;
  e[d + 2] = t.hActive & 0xff;
  e[d + 3] = hBlank & 0xff;
  e[d + 4] = ((t.hActive >> 8) << 4) | (hBlank >> 8);
  e[d + 5] = t.vActive & 0xff;
  e[d + 6] = vBlank & 0xff;
  e[d + 7] = ((t.vActive >> 8) << 4) | (vBlank >> 8);
  e[d + 8] = t.hFront & 0xff;
  e[d + 9] = t.hSync & 0xff;
  e[d + 10] = ((t.vFront & 0xf) << 4) | (t.vSync & 0xf);
  e[d + 11] = ((t.hFront >> 8) << 6) | ((t.hSync >> 8) << 4) | ((t.vFront >> 4) << 2) | (t.vSync >> 4);
  e[d + 12] = hmm & 0xff;
  e[d + 13] = vmm & 0xff;
  e[d + 14] = ((hmm >> 8) << 4) | (vmm >> 8);
  e[d + 17] = 0x1a; // digital separate sync, hsync +, vsync − (reduced blanking)
  // Descriptor 2: product name, newline-terminated and space-padded to 13 bytes.
  const name = 'mdevkit\n'.padEnd(13, ' ');
  e.set([0, 0, 0, 0xfc, 0], 72);
  for (let i = 0; i < 13; i++) e[77 + i] = name.charCodeAt(i);
  // Descriptors 3 and 4: dummy (tag 0x10).
  e[93] = 0x10;
  e[111] = 0x10;
  e[126] = 0; // no extension blocks
  let sum = 0;
  for (let i = 0; i < 127; i++) sum += e[i]!;
  e[127] = (256 - (sum & 0xff)) & 0xff;
  return e;
}

const STATE_VERSION = 1;
const STATE_SECTION = 'x.bochs-display';
/** DISPI registers (22) · VGA window (32) · attribute registers (32) · attribute index · flip-flop · byte order (4). */
const STATE_SIZE = DISPI.COUNT * 2 + BOCHS.VGA_SIZE + 32 + 2 + 4;
/** The attribute controller's palette address source bit: set = the screen shows the picture. */
const AR_PAS = 0x20;
/** Input status #1 (port 0x3da): reading it resets the attribute flip-flop to "index". */
const VGA_ISR1 = 0x3da - BOCHS.VGA_PORT_BASE;

/** A Bochs-dispi display device. */
export class BochsDisplay extends PciDevice implements DisplayDevice {
  /** VRAM behind BAR0 (a memfd the VMM maps into the guest). */
  readonly vram: MemfdBacking;
  /** VRAM size in bytes. */
  readonly vramSize: number;
  /** The EDID offered at BAR2 offset 0 (empty when the device has none). */
  readonly edid: Uint8Array;
  /** The EDID's preferred mode. */
  readonly preferredMode: Readonly<DisplayMode>;
  /** The BAR2 register region. */
  readonly mmio: Region;
  private readonly dispi = new Uint16Array(DISPI.COUNT);
  private readonly vga = new Uint8Array(BOCHS.VGA_SIZE);
  private readonly attr = new Uint8Array(32);
  private arIndex = AR_PAS;
  private arData = false; // the attribute flip-flop: false = the next 0x3c0 write is an index
  private bigEndian = false;
  private generation = 0;
  private lastScanout = 'null';
  private readonly scanoutListeners: ((state: ScanoutState | null) => void)[] = [];

  /**
   * Creates the device.
   * @param options VRAM size, the EDID's preferred mode, whether there is an EDID
   */
  constructor(options: BochsDisplayOptions = {}) {
    super({
      vendorId: BOCHS.VENDOR_ID,
      deviceId: BOCHS.DEVICE_ID,
      classCode: BOCHS.CLASS_CODE,
      revision: BOCHS.REVISION,
      subsystemVendorId: BOCHS.SUBSYSTEM_VENDOR_ID,
      subsystemId: BOCHS.SUBSYSTEM_ID,
      interruptPin: 0,
      name: 'bochs-display',
    });
    if (typeof options !== 'object' || options === null) throw new MdevError('EINVAL', 'must be an object', 'options');
    const size = options.vramSize ?? BOCHS.DEFAULT_VRAM_SIZE;
    checkInt('options.vramSize', size, BOCHS.MIN_VRAM_SIZE, BOCHS.MAX_VRAM_SIZE);
    if (size & (size - 1)) throw new MdevError('EINVAL', `must be a power of two, got ${size}`, 'options.vramSize');
    const mode = options.preferredMode ?? { width: BOCHS.DEFAULT_WIDTH, height: BOCHS.DEFAULT_HEIGHT };
    if (typeof mode !== 'object' || mode === null) throw new MdevError('EINVAL', `must be {width, height}, got ${describe(mode)}`, 'options.preferredMode');
    const edid = buildEdid(mode); // validates the mode's numbers
    // Linux refuses modes whose 32-bpp frame does not fit VRAM; a preferred mode it refuses is useless.
    if (mode.width * mode.height * 4 > size) {
      throw new MdevError('ERANGE', `${mode.width}×${mode.height} at 32 bpp needs more than ${size} bytes of VRAM`, 'options.preferredMode');
    }
    this.vramSize = size;
    this.preferredMode = Object.freeze({ width: mode.width, height: mode.height });
    this.edid = options.edid === false ? new Uint8Array(0) : edid;
    this.vram = createMemfdBacking(size, 'bochs-vram');
    this.addBar(0, new Region('vram', size, { backing: this.vram, mmapAreas: [{ offset: 0, size }] }), { kind: 'mem32', prefetchable: true });
    // The gaps between the windows read 0 and are served natively (an accessor serving 0 bytes).
    this.mmio = new Region('mmio', BOCHS.MMIO_SIZE, { accessor: { size: 0, read: (_o, out) => out.fill(0), write: () => {} } });
    this.mmio.addOverlay('edid', BOCHS.EDID_OFFSET, BOCHS.EDID_WINDOW, this.edidAccessor());
    this.mmio.addOverlay('vga', BOCHS.VGA_OFFSET, BOCHS.VGA_SIZE, this.vgaAccessor());
    this.mmio.addOverlay('dispi', BOCHS.DISPI_OFFSET, BOCHS.DISPI_WINDOW, this.dispiAccessor());
    this.mmio.addOverlay('qext', BOCHS.QEXT_OFFSET, BOCHS.QEXT_SIZE, this.qextAccessor());
    this.addBar(2, this.mmio, { kind: 'mem32' });
  }

  // ---- what a server needs --------------------------------------------------------------------

  /**
   * The mode the device shows, or null when there is none: not enabled, bpp other than 16/32, a
   * resolution below 64 or above the DISPI maxima, or a plane (or virtual screen) outside VRAM.
   * `stride = max(VIRT_WIDTH, XRES) · bpp/8`, `offset = X_OFFSET · bpp/8 + Y_OFFSET · stride`.
   */
  scanout(): ScanoutState | null {
    const r = this.dispi;
    if (!(r[DISPI.ENABLE]! & DISPI.ENABLED)) return null;
    const bpp = r[DISPI.BPP]!;
    if (bpp !== 16 && bpp !== 32) return null;
    const width = r[DISPI.XRES]!;
    const height = r[DISPI.YRES]!;
    if (width < BOCHS.MIN_RES || height < BOCHS.MIN_RES || width > DISPI.MAX_XRES || height > DISPI.MAX_YRES) return null;
    const bytes = bpp / 8;
    const stride = Math.max(r[DISPI.VIRT_WIDTH]!, width) * bytes;
    const offset = r[DISPI.X_OFFSET]! * bytes + r[DISPI.Y_OFFSET]! * stride;
    if (offset + stride * height > this.vramSize) return null;
    // The virtual screen the guest declared must exist too.
    if (stride * Math.max(r[DISPI.VIRT_HEIGHT]!, height) > this.vramSize) return null;
    return {
      width,
      height,
      stride,
      offset,
      bpp,
      format: bpp === 32 ? 'xrgb8888' : 'rgb565',
      byteOrder: this.bigEndian ? 'big' : 'little',
      blanked: (this.arIndex & AR_PAS) === 0,
    };
  }

  /** Counts changes of {@link scanout} (mode, placement, format, byte order, blanking). */
  get modeGeneration(): number {
    return this.generation;
  }

  /**
   * Calls `listener` with the new {@link scanout} whenever it changes (from a guest access, reset
   * or restore). Listeners run inside the guest's access and must not throw. Returns a function
   * that removes the listener.
   */
  onScanoutChange(listener: (state: ScanoutState | null) => void): () => void {
    if (typeof listener !== 'function') throw new MdevError('EINVAL', 'must be a function', 'listener');
    this.scanoutListeners.push(listener);
    return () => {
      const i = this.scanoutListeners.indexOf(listener);
      if (i >= 0) this.scanoutListeners.splice(i, 1);
    };
  }

  /** {@link DisplayDevice}: VRAM is BAR0. */
  readonly displayVramBar = 0;

  /** {@link DisplayDevice}: the VRAM bytes (BAR0's memfd). */
  displayVram(): Uint8Array {
    return this.vram.bytes;
  }

  /** {@link DisplayDevice}: the same as {@link scanout}. */
  displayPlane(): ScanoutState | null {
    return this.scanout();
  }

  /** {@link DisplayDevice}: the same as {@link onScanoutChange}. */
  onDisplayChange(listener: (plane: ScanoutState | null) => void): () => void {
    return this.onScanoutChange(listener);
  }

  /** The framebuffer byte order the guest selected (register 0x604). */
  get byteOrder(): PixelByteOrder {
    return this.bigEndian ? 'big' : 'little';
  }

  /** The DISPI registers as stored (ID and VIDEO_MEMORY_64K as they read). */
  dispiRegisters(): number[] {
    return [...this.dispi].map((v, i) => (i === DISPI.ID ? DISPI.ID_VALUE : i === DISPI.VIDEO_MEMORY_64K ? this.vramSize >>> 16 : v));
  }

  private changed(): void {
    const s = this.scanout();
    const key = JSON.stringify(s);
    if (key === this.lastScanout) return;
    this.lastScanout = key;
    this.generation++;
    for (const l of [...this.scanoutListeners]) l(s);
  }

  // ---- BAR2 windows ---------------------------------------------------------------------------

  private edidAccessor(): RegionAccessor {
    return {
      read: (offset, out) => {
        out.fill(0);
        if (offset < this.edid.length) out.set(this.edid.subarray(offset, offset + out.length));
      },
      write: () => {},
    };
  }

  private vgaAccessor(): RegionAccessor {
    return {
      read: (offset, out) => {
        for (let i = 0; i < out.length; i++) out[i] = this.vgaRead(offset + i);
      },
      write: (offset, data) => {
        for (let i = 0; i < data.length; i++) this.vgaWrite(offset + i, data[i]!);
        this.changed();
      },
    };
  }

  private vgaRead(port: number): number {
    switch (port) {
      case 0x0:
        return this.arIndex;
      case 0x1:
        return this.attr[this.arIndex & 0x1f]!;
      case VGA_ISR1:
        // Not a status the device keeps (no retrace): 0 is harmless; Linux ignores the value.
        this.arData = false;
        return 0;
      default:
        return this.vga[port]!;
    }
  }

  private vgaWrite(port: number, value: number): void {
    this.vga[port] = value;
    if (port !== 0) return;
    // Port 0x3c0 alternates between index (with PAS, the unblank bit) and data, like real VGA;
    // Linux reads 0x3da first, so its 0x20 (unblank) or 0x00 (blank) is always an index write.
    if (this.arData) this.attr[this.arIndex & 0x1f] = value;
    else this.arIndex = value & 0x3f;
    this.arData = !this.arData;
  }

  private dispiRead(index: number): number {
    const r = this.dispi;
    const caps = (r[DISPI.ENABLE]! & DISPI.GETCAPS) !== 0;
    switch (index) {
      case DISPI.ID:
        return DISPI.ID_VALUE;
      case DISPI.XRES:
        return caps ? DISPI.MAX_XRES : r[index]!;
      case DISPI.YRES:
        return caps ? DISPI.MAX_YRES : r[index]!;
      case DISPI.BPP:
        return caps ? DISPI.MAX_BPP : r[index]!;
      case DISPI.VIDEO_MEMORY_64K:
        return this.vramSize >>> 16;
      default:
        return index < DISPI.COUNT ? r[index]! : 0;
    }
  }

  private dispiAccessor(): RegionAccessor {
    return {
      read: (offset, out) => {
        for (let i = 0; i < out.length; i++) {
          const at = offset + i;
          const v = this.dispiRead(at >> 1);
          out[i] = at & 1 ? v >> 8 : v & 0xff;
        }
      },
      write: (offset, data) => {
        // Bytes are merged into the stored value of their register (not the value a read would
        // give: under GETCAPS that is the maximum), then each register is written once.
        let i = 0;
        while (i < data.length) {
          const index = (offset + i) >> 1;
          let v = index < DISPI.COUNT ? this.dispi[index]! : 0;
          for (; i < data.length && (offset + i) >> 1 === index; i++) {
            v = (offset + i) & 1 ? (v & 0x00ff) | (data[i]! << 8) : (v & 0xff00) | data[i]!;
          }
          // ID (version negotiation: the device always reports 0xb0c5) and the memory size are read-only.
          if (index < DISPI.COUNT && index !== DISPI.ID && index !== DISPI.VIDEO_MEMORY_64K) this.dispi[index] = v;
        }
        this.changed();
      },
    };
  }

  private qextBytes(): Uint8Array {
    const b = new Uint8Array(BOCHS.QEXT_SIZE);
    const v = new DataView(b.buffer);
    v.setUint32(0, BOCHS.QEXT_SIZE, true);
    v.setUint32(4, this.bigEndian ? BOCHS.BYTE_ORDER_BIG : BOCHS.BYTE_ORDER_LITTLE, true);
    return b;
  }

  private qextAccessor(): RegionAccessor {
    return {
      read: (offset, out) => out.set(this.qextBytes().subarray(offset, offset + out.length)),
      write: (offset, data) => {
        const b = this.qextBytes();
        b.set(data, offset);
        if (offset + data.length <= 4) return; // the size word is read-only
        const order = new DataView(b.buffer).getUint32(4, true);
        // Any other value (including a partial write of a valid one) keeps the current order.
        if (order === BOCHS.BYTE_ORDER_LITTLE) this.bigEndian = false;
        else if (order === BOCHS.BYTE_ORDER_BIG) this.bigEndian = true;
        this.changed();
      },
    };
  }

  // ---- reset and state ------------------------------------------------------------------------

  protected override onReset(): void {
    this.dispi.fill(0);
    this.vga.fill(0);
    this.attr.fill(0);
    // A legacy-free display shows its picture until a guest blanks it: a guest that never touches
    // the attribute controller (OVMF, a bare DISPI driver) must not stay dark.
    this.arIndex = AR_PAS;
    this.arData = false;
    this.bigEndian = false;
    this.vram.bytes.fill(0);
    this.changed();
  }

  protected override saveExtraState(): StateSection[] {
    const data = new Uint8Array(STATE_SIZE);
    const v = new DataView(data.buffer);
    let at = 0;
    for (const r of this.dispi) {
      v.setUint16(at, r, true);
      at += 2;
    }
    data.set(this.vga, at);
    at += this.vga.length;
    data.set(this.attr, at);
    at += this.attr.length;
    data[at++] = this.arIndex;
    data[at++] = this.arData ? 1 : 0;
    v.setUint32(at, this.bigEndian ? BOCHS.BYTE_ORDER_BIG : BOCHS.BYTE_ORDER_LITTLE, true);
    return [{ name: STATE_SECTION, version: STATE_VERSION, data }];
  }

  protected override loadExtraState(sections: ReadonlyMap<string, StateSection>): void {
    const s = sections.get(STATE_SECTION);
    const field = `image.${STATE_SECTION}`;
    if (!s) throw new MdevError('EINVAL', `section ${STATE_SECTION} is missing`, 'image');
    if (s.version !== STATE_VERSION) throw new MdevError('ENOTSUP', `section version ${s.version}, this build reads ${STATE_VERSION}`, field);
    if (s.data.length !== STATE_SIZE) throw new MdevError('EINVAL', `has ${s.data.length} bytes, expected ${STATE_SIZE}`, field);
    const v = new DataView(s.data.buffer, s.data.byteOffset, s.data.byteLength);
    const base = DISPI.COUNT * 2 + BOCHS.VGA_SIZE + this.attr.length;
    const arIndex = s.data[base]!;
    const arData = s.data[base + 1]!;
    const order = v.getUint32(base + 2, true);
    if (arIndex > 0x3f || arData > 1 || (order !== BOCHS.BYTE_ORDER_LITTLE && order !== BOCHS.BYTE_ORDER_BIG)) {
      throw new MdevError('EINVAL', 'attribute index, flip-flop or byte order out of range', field);
    }
    for (let i = 0; i < DISPI.COUNT; i++) this.dispi[i] = v.getUint16(2 * i, true);
    this.vga.set(s.data.subarray(DISPI.COUNT * 2, DISPI.COUNT * 2 + BOCHS.VGA_SIZE));
    this.attr.set(s.data.subarray(DISPI.COUNT * 2 + BOCHS.VGA_SIZE, base));
    this.arIndex = arIndex;
    this.arData = arData === 1;
    this.bigEndian = order === BOCHS.BYTE_ORDER_BIG;
    this.changed();
  }
}

/** Device-module entry point: a 16 MiB Bochs display with a 1024×768 EDID. */
export default function createDevice(): BochsDisplay {
  return new BochsDisplay();
}
