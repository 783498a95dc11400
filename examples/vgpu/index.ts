/**
 * A small but honest mediated GPU. The guest driver builds command buffers in its own RAM and rings
 * a doorbell; the device fetches them by DMA and draws into VRAM. Source images are addressed
 * through a GTT — a page table in guest RAM that the device *shadows*: it keeps its own copy and
 * learns of the guest's updates through write-watch (a synchronous trap on Xen; on vfio-user, which
 * cannot write-protect guest pages, a compare of the watched page at doorbell time). Fences write a
 * value into guest RAM and raise an interrupt (MSI-X vector 0, INTx otherwise).
 *
 * BAR0 (64 KiB, trapped): registers below, the MSI-X table at 0x8000 and PBA at 0x9000.
 * BAR2 (64-bit prefetchable, 1 MiB, mappable): VRAM, a memfd shared with the VMM.
 *
 * | off   | register        | access | meaning |
 * |-------|-----------------|--------|---------|
 * | 0x000 | ID              | RO     | 0x55504756 ("VGPU") |
 * | 0x004 | VERSION         | RO     | 0x00010000 |
 * | 0x008 | CONTROL         | RW     | bit 0: engine enabled |
 * | 0x010 | INT_STATUS      | W1C    | bit 0 fence, bit 1 error |
 * | 0x014 | INT_MASK        | RW     | which status bits interrupt |
 * | 0x020 | DOORBELL        | WO     | process the ring up to RING_TAIL |
 * | 0x028 | RING_BASE       | RW 64  | guest address of the command ring |
 * | 0x030 | RING_SIZE       | RW     | bytes, a power of two in [64, 1 MiB] |
 * | 0x034 | RING_HEAD       | RO     | device consumer offset |
 * | 0x038 | RING_TAIL       | RW     | driver producer offset |
 * | 0x040 | GTT_ROOT        | RW 64  | guest address of the GTT page (512 u64 entries: gpa \| 1) |
 * | 0x060 | SCANOUT_OFFSET  | RW     | VRAM offset of the plane |
 * | 0x064 | SCANOUT_STRIDE  | RW     | bytes per line |
 * | 0x068 | SCANOUT_FORMAT  | RW     | 1 = XRGB8888 |
 * | 0x06c | SCANOUT_WIDTH   | RW     | pixels |
 * | 0x070 | SCANOUT_HEIGHT  | RW     | lines |
 * | 0x080 | FENCE_VALUE     | RO     | last fence completed |
 * | 0x088 | ERROR           | RO     | last error code (0 none) |
 * | 0x090 | WATCH_MODE      | RO     | 1 trap, 2 compare, 0 none (how GTT updates are seen) |
 * | 0x094 | GTT_UPDATES     | RO     | GTT entry updates shadowed |
 * | 0x0a0 | SCANOUT_HASH[8] | RO     | SHA-256 of the visible plane (computed when word 0 is read) |
 *
 * Commands (32 bytes each, little-endian): FILL_RECT {op 1, vramOffset, stride, u16 width, u16 height,
 * color}; BLIT {op 2, dstOffset, u64 srcGva, srcStride, dstStride, u16 width, u16 height} copies
 * XRGB pixels from GPU virtual addresses (translated through the shadowed GTT) into VRAM;
 * FENCE {op 3, value, u64 gpa} writes `value` to guest RAM and signals.
 *
 * A doorbell is bounded whatever the guest puts in the ring (a ring that wraps to its own tail,
 * commands that overwrite the ring, GTT entries pointing anywhere): it runs at most
 * {@link VGPU.BUDGET_COMMANDS} commands, touches at most {@link VGPU.BUDGET_PIXELS} VRAM pixels and
 * moves at most {@link VGPU.BUDGET_DMA_BYTES} bytes in at most {@link VGPU.BUDGET_DMA_OPS} DMA
 * transfers (ring fetches included). Like a GPU whose scheduler ends a time slice, the engine then
 * stops *before* the command that would pass the budget — RING_HEAD points at it — and reports
 * ERROR = 7 (ERR_BUDGET) with the error interrupt; the next doorbell continues from there. A single
 * command that could never fit a doorbell's budget is consumed and refused with ERROR = 8
 * (ERR_TOO_LARGE). {@link VirtualGpu.work} counts what the engine did.
 * @module
 */
import { createHash } from 'node:crypto';
import { MdevError, PciDevice, createMemfdBacking, Region, RegisterBlock, type DisplayDevice, type DisplayPlane, type MemfdBacking, type WatchHandle } from 'mdevkit';

/** Register offsets, commands and limits. */
export const VGPU = {
  ID: 0x000,
  VERSION: 0x004,
  CONTROL: 0x008,
  INT_STATUS: 0x010,
  INT_MASK: 0x014,
  DOORBELL: 0x020,
  RING_BASE: 0x028,
  RING_SIZE: 0x030,
  RING_HEAD: 0x034,
  RING_TAIL: 0x038,
  GTT_ROOT: 0x040,
  SCANOUT_OFFSET: 0x060,
  SCANOUT_STRIDE: 0x064,
  SCANOUT_FORMAT: 0x068,
  SCANOUT_WIDTH: 0x06c,
  SCANOUT_HEIGHT: 0x070,
  FENCE_VALUE: 0x080,
  ERROR: 0x088,
  WATCH_MODE: 0x090,
  GTT_UPDATES: 0x094,
  SCANOUT_HASH: 0x0a0,
  MSIX_TABLE: 0x8000,
  MSIX_PBA: 0x9000,
  ID_VALUE: 0x55504756,
  BAR0_SIZE: 0x10000,
  VRAM_SIZE: 1 << 20,
  CMD_SIZE: 32,
  OP_FILL_RECT: 1,
  OP_BLIT: 2,
  OP_FENCE: 3,
  INT_FENCE: 0x1,
  INT_ERROR: 0x2,
  FORMAT_XRGB8888: 1,
  GTT_ENTRIES: 512,
  ERR_DISABLED: 1,
  ERR_RING: 2,
  ERR_DMA: 3,
  ERR_BAD_COMMAND: 4,
  ERR_VRAM_RANGE: 5,
  ERR_GTT_FAULT: 6,
  /** The doorbell's budget is spent: the ring stopped at RING_HEAD; ring again to continue. */
  ERR_BUDGET: 7,
  /** A command larger than a whole doorbell's budget (consumed, not executed). */
  ERR_TOO_LARGE: 8,
  /** Most commands one doorbell runs. */
  BUDGET_COMMANDS: 4096,
  /** Most VRAM pixels one doorbell's FILL_RECT/BLIT commands write (four times all of VRAM). */
  BUDGET_PIXELS: 1 << 20,
  /** Most bytes one doorbell moves by DMA: ring fetches, BLIT sources, fences. */
  BUDGET_DMA_BYTES: 4 << 20,
  /** Most DMA transfers one doorbell makes (each may be a message round trip to the VMM). */
  BUDGET_DMA_OPS: 16384,
} as const;

/** What the vGPU's engine did: in total, or for one doorbell. */
export interface VgpuWork {
  /** Commands executed (or refused). */
  commands: number;
  /** VRAM pixels written by FILL_RECT and BLIT. */
  pixels: number;
  /** Bytes moved by DMA (ring fetches, BLIT sources, fences). */
  dmaBytes: number;
  /** DMA transfers. */
  dmaOps: number;
}

const PAGE = 4096;

/** The vGPU. */
export class VirtualGpu extends PciDevice implements DisplayDevice {
  /** BAR0 registers. */
  readonly regs;
  /** VRAM behind BAR2. */
  readonly vram: MemfdBacking;
  /** The device's copy of the GTT (GPU page → guest address, 0 = not present). */
  readonly shadowGtt = new Float64Array(VGPU.GTT_ENTRIES);
  private gttWatch: WatchHandle | null = null;
  /** Set by a restore: the GTT is read again (and watched) before the ring next runs. */
  private gttRearm = false;
  /** Work of every doorbell so far, and doorbells cut short by their budget. */
  readonly work: VgpuWork & { doorbells: number; budgetStops: number } = { doorbells: 0, budgetStops: 0, commands: 0, pixels: 0, dmaBytes: 0, dmaOps: 0 };
  /** Work of the last doorbell. */
  lastDoorbell: VgpuWork = { commands: 0, pixels: 0, dmaBytes: 0, dmaOps: 0 };
  private lastPlane = 'null';
  private readonly planeListeners: ((plane: DisplayPlane | null) => void)[] = [];

  constructor() {
    super({ vendorId: 0x1b36, deviceId: 0x7fa0, classCode: 0x038000, revision: 1, name: 'vgpu', configSize: 4096 });
    const w1cStatus = VGPU.INT_FENCE | VGPU.INT_ERROR;
    this.regs = new RegisterBlock('vgpu', 0x100, {
      ID: { offset: VGPU.ID, width: 4, reset: VGPU.ID_VALUE, readOnly: true },
      VERSION: { offset: VGPU.VERSION, width: 4, reset: 0x00010000, readOnly: true },
      CONTROL: { offset: VGPU.CONTROL, width: 4, rw: 0x1 },
      INT_STATUS: { offset: VGPU.INT_STATUS, width: 4, w1c: w1cStatus, onWrite: () => this.updateIrq() },
      INT_MASK: { offset: VGPU.INT_MASK, width: 4, rw: w1cStatus, onWrite: () => this.updateIrq() },
      DOORBELL: { offset: VGPU.DOORBELL, width: 4, readOnly: true, onWrite: () => this.processRing() },
      RING_BASE: { offset: VGPU.RING_BASE, width: 8, rw: ~0xfffn & 0xffffffffffffffffn },
      RING_SIZE: { offset: VGPU.RING_SIZE, width: 4 },
      RING_HEAD: { offset: VGPU.RING_HEAD, width: 4, readOnly: true },
      RING_TAIL: { offset: VGPU.RING_TAIL, width: 4 },
      GTT_ROOT: { offset: VGPU.GTT_ROOT, width: 8, rw: ~0xfffn & 0xffffffffffffffffn, onWrite: () => this.loadGtt() },
      SCANOUT_OFFSET: { offset: VGPU.SCANOUT_OFFSET, width: 4, onWrite: () => this.planeChanged() },
      SCANOUT_STRIDE: { offset: VGPU.SCANOUT_STRIDE, width: 4, onWrite: () => this.planeChanged() },
      SCANOUT_FORMAT: { offset: VGPU.SCANOUT_FORMAT, width: 4, onWrite: () => this.planeChanged() },
      SCANOUT_WIDTH: { offset: VGPU.SCANOUT_WIDTH, width: 4, onWrite: () => this.planeChanged() },
      SCANOUT_HEIGHT: { offset: VGPU.SCANOUT_HEIGHT, width: 4, onWrite: () => this.planeChanged() },
      FENCE_VALUE: { offset: VGPU.FENCE_VALUE, width: 4, readOnly: true },
      ERROR: { offset: VGPU.ERROR, width: 4, readOnly: true },
      WATCH_MODE: { offset: VGPU.WATCH_MODE, width: 4, readOnly: true, onRead: (r) => r.set(this.writeWatch === null ? 0 : this.writeWatch.mode === 'trap' ? 1 : 2) },
      GTT_UPDATES: { offset: VGPU.GTT_UPDATES, width: 4, readOnly: true },
      ...Object.fromEntries(
        [...Array(8).keys()].map((i) => [`HASH_${i}`, { offset: VGPU.SCANOUT_HASH + 4 * i, width: 4 as const, readOnly: true, ...(i === 0 ? { onRead: () => this.hashScanout() } : {}) }]),
      ),
    });
    this.vram = createMemfdBacking(VGPU.VRAM_SIZE, 'vgpu-vram');
    const bar0 = new Region('regs', VGPU.BAR0_SIZE, { accessor: this.regs });
    this.addBar(0, bar0);
    this.addBar(2, new Region('vram', VGPU.VRAM_SIZE, { backing: this.vram, mmapAreas: [{ offset: 0, size: VGPU.VRAM_SIZE }] }), { kind: 'mem64', prefetchable: true });
    this.addPowerManagement();
    this.addMsix({ vectors: 1, tableBar: 0, tableOffset: VGPU.MSIX_TABLE, pbaOffset: VGPU.MSIX_PBA });
    this.addPciExpress({ flr: true });
  }

  private fail(code: number): void {
    this.regs.set('ERROR', code);
    this.regs.reg('INT_STATUS').setBits(VGPU.INT_ERROR);
    this.updateIrq();
  }

  private updateIrq(): void {
    const pending = this.regs.get('INT_STATUS') & this.regs.get('INT_MASK');
    if (pending === 0) {
      this.irq.lower();
      return;
    }
    this.irq.raise(0);
  }

  /** Reads the GTT page into the shadow and watches it for guest updates. */
  private loadGtt(): void {
    this.gttWatch?.remove();
    this.gttWatch = null;
    this.shadowGtt.fill(0);
    const root = Number(this.regs.get64('GTT_ROOT'));
    if (root === 0) return;
    try {
      this.refreshGtt(root, 0, PAGE);
      const watch = this.writeWatch;
      if (watch) this.gttWatch = watch.watch(root, PAGE, (e) => this.refreshGtt(root, e.gpa - root, e.length, true));
    } catch {
      this.fail(VGPU.ERR_DMA);
    }
  }

  /** Re-reads the GTT entries covering [from, from+length) of the page. */
  private refreshGtt(root: number, from: number, length: number, update = false): void {
    const first = Math.floor(from / 8);
    const last = Math.min(VGPU.GTT_ENTRIES - 1, Math.floor((from + length - 1) / 8));
    const bytes = new Uint8Array((last - first + 1) * 8);
    this.dmaRead(root + first * 8, bytes);
    const v = new DataView(bytes.buffer);
    for (let i = first; i <= last; i++) {
      const e = v.getBigUint64((i - first) * 8, true);
      this.shadowGtt[i] = e & 1n ? Number(e & ~0xfffn) : 0;
    }
    if (update) this.regs.set('GTT_UPDATES', (this.regs.get('GTT_UPDATES') + (last - first + 1)) >>> 0);
  }

  /**
   * After a restore (another host, another path: the old watch is gone): the shadow is a cache of
   * the guest's page table, so it is read again from GTT_ROOT and the page watched anew.
   */
  private rearmGtt(): void {
    this.gttRearm = false;
    this.loadGtt();
  }

  protected override onRestored(): void {
    // Nothing guest-visible changes here: the GTT is taken up again at the next doorbell, when
    // guest memory and write-watch of the destination are attached.
    this.gttWatch?.remove();
    this.gttWatch = null;
    this.gttRearm = true;
    // The scanout registers were restored without their hooks.
    this.planeChanged();
  }

  /** Runs the commands between RING_HEAD and RING_TAIL, within the doorbell's budget. */
  private processRing(): void {
    const work: VgpuWork = { commands: 0, pixels: 0, dmaBytes: 0, dmaOps: 0 };
    this.lastDoorbell = work;
    this.work.doorbells++;
    try {
      this.runRing(work);
    } finally {
      this.work.commands += work.commands;
      this.work.pixels += work.pixels;
      this.work.dmaBytes += work.dmaBytes;
      this.work.dmaOps += work.dmaOps;
    }
  }

  private runRing(work: VgpuWork): void {
    if (!(this.regs.get('CONTROL') & 1)) return this.fail(VGPU.ERR_DISABLED);
    if (this.gttRearm) this.rearmGtt();
    // Writes to watched pages since the last doorbell become visible here (compare mode).
    this.writeWatch?.sync();
    const size = this.regs.get('RING_SIZE');
    const base = Number(this.regs.get64('RING_BASE'));
    let head = this.regs.get('RING_HEAD');
    const tail = this.regs.get('RING_TAIL');
    if (size < 64 || size > 1 << 20 || size & (size - 1) || head >= size || tail >= size || head % VGPU.CMD_SIZE || tail % VGPU.CMD_SIZE) {
      return this.fail(VGPU.ERR_RING);
    }
    const cmd = new Uint8Array(VGPU.CMD_SIZE);
    const v = new DataView(cmd.buffer);
    while (head !== tail) {
      if (work.commands >= VGPU.BUDGET_COMMANDS || work.dmaOps + 1 > VGPU.BUDGET_DMA_OPS || work.dmaBytes + VGPU.CMD_SIZE > VGPU.BUDGET_DMA_BYTES) {
        return this.overBudget();
      }
      work.dmaOps++;
      work.dmaBytes += VGPU.CMD_SIZE;
      try {
        this.dmaRead(base + head, cmd);
      } catch {
        return this.fail(VGPU.ERR_DMA);
      }
      // What the command may cost, from its fields, before it runs: whether it fits what is left.
      const cost = commandCost(v);
      let error: number;
      if (cost.pixels > VGPU.BUDGET_PIXELS || cost.dmaBytes > VGPU.BUDGET_DMA_BYTES - VGPU.CMD_SIZE || cost.dmaOps > VGPU.BUDGET_DMA_OPS - 1) {
        error = VGPU.ERR_TOO_LARGE;
      } else if (work.pixels + cost.pixels > VGPU.BUDGET_PIXELS || work.dmaBytes + cost.dmaBytes > VGPU.BUDGET_DMA_BYTES || work.dmaOps + cost.dmaOps > VGPU.BUDGET_DMA_OPS) {
        // Fetched again by the next doorbell: the fetch is not the command's to pay twice.
        work.dmaOps--;
        work.dmaBytes -= VGPU.CMD_SIZE;
        return this.overBudget();
      } else {
        error = this.execute(v, work);
      }
      work.commands++;
      if (error === VGPU.ERR_BAD_COMMAND && cmd.every((b) => b === 0)) {
        // No driver submits an empty command: the memory we read is not what the driver wrote.
        this.diagnose({ message: `command at ring offset 0x${head.toString(16)} (guest 0x${(base + head).toString(16)}) is all zeros`, suspectGpa: base + head });
      }
      head = (head + VGPU.CMD_SIZE) & (size - 1);
      this.regs.set('RING_HEAD', head);
      if (error) return this.fail(error);
    }
  }

  private overBudget(): void {
    this.work.budgetStops++;
    this.fail(VGPU.ERR_BUDGET);
  }

  /** Executes one command, counting its work; returns an error code or 0. */
  private execute(v: DataView, work: VgpuWork): number {
    const op = v.getUint32(0, true);
    const vram = this.vram.bytes;
    const inVram = (offset: number, stride: number, width: number, height: number) =>
      width > 0 && height > 0 && stride >= width * 4 && offset + (height - 1) * stride + width * 4 <= vram.length;
    switch (op) {
      case VGPU.OP_FILL_RECT: {
        const offset = v.getUint32(4, true);
        const stride = v.getUint32(8, true);
        const width = v.getUint16(12, true);
        const height = v.getUint16(14, true);
        const color = v.getUint32(16, true);
        if (!inVram(offset, stride, width, height)) return VGPU.ERR_VRAM_RANGE;
        // One row of the colour, copied once per line (inVram bounds it by the size of VRAM).
        const line = new Uint8Array(width * 4);
        new Uint32Array(line.buffer).fill(color);
        for (let y = 0; y < height; y++) vram.set(line, offset + y * stride);
        work.pixels += width * height;
        return 0;
      }
      case VGPU.OP_BLIT: {
        const dst = v.getUint32(4, true);
        const srcGva = Number(v.getBigUint64(8, true));
        const srcStride = v.getUint32(16, true);
        const dstStride = v.getUint32(20, true);
        const width = v.getUint16(24, true);
        const height = v.getUint16(26, true);
        if (!inVram(dst, dstStride, width, height) || srcStride < width * 4) return VGPU.ERR_VRAM_RANGE;
        work.pixels += width * height;
        for (let y = 0; y < height; y++) {
          let gva = srcGva + y * srcStride;
          let out = dst + y * dstStride;
          let left = width * 4;
          while (left > 0) {
            const page = Math.floor(gva / PAGE);
            const gpa = page < VGPU.GTT_ENTRIES ? this.shadowGtt[page]! : 0;
            if (gpa === 0) return VGPU.ERR_GTT_FAULT;
            const n = Math.min(left, PAGE - (gva % PAGE));
            work.dmaOps++;
            work.dmaBytes += n;
            try {
              this.dmaRead(gpa + (gva % PAGE), vram.subarray(out, out + n));
            } catch {
              return VGPU.ERR_DMA;
            }
            gva += n;
            out += n;
            left -= n;
          }
        }
        return 0;
      }
      case VGPU.OP_FENCE: {
        const value = v.getUint32(4, true);
        const gpa = Number(v.getBigUint64(8, true));
        work.dmaOps++;
        work.dmaBytes += 4;
        try {
          this.dmaWrite(gpa, new Uint8Array(new Uint32Array([value]).buffer));
        } catch {
          return VGPU.ERR_DMA;
        }
        this.regs.set('FENCE_VALUE', value);
        this.regs.reg('INT_STATUS').setBits(VGPU.INT_FENCE);
        this.updateIrq();
        return 0;
      }
      default:
        return VGPU.ERR_BAD_COMMAND;
    }
  }

  /** The visible plane as tightly packed XRGB8888 rows (empty if it is not configured or out of VRAM). */
  scanout(): { width: number; height: number; pixels: Uint8Array } {
    const width = this.regs.get('SCANOUT_WIDTH');
    const height = this.regs.get('SCANOUT_HEIGHT');
    const stride = this.regs.get('SCANOUT_STRIDE');
    const offset = this.regs.get('SCANOUT_OFFSET');
    const vram = this.vram.bytes;
    if (this.regs.get('SCANOUT_FORMAT') !== VGPU.FORMAT_XRGB8888 || width === 0 || height === 0 || stride < width * 4 || offset + (height - 1) * stride + width * 4 > vram.length) {
      return { width: 0, height: 0, pixels: new Uint8Array(0) };
    }
    const pixels = new Uint8Array(width * height * 4);
    for (let y = 0; y < height; y++) pixels.set(vram.subarray(offset + y * stride, offset + y * stride + width * 4), y * width * 4);
    return { width, height, pixels };
  }

  /** {@link DisplayDevice}: VRAM is BAR2. */
  readonly displayVramBar = 2;

  /** {@link DisplayDevice}: the VRAM bytes (BAR2's memfd). */
  displayVram(): Uint8Array {
    return this.vram.bytes;
  }

  /**
   * {@link DisplayDevice}: the plane the SCANOUT_* registers describe, or null when it is not
   * XRGB8888, is empty or does not fit VRAM (the cases where {@link scanout} is empty). The vGPU
   * has no blanking and stores pixels little endian.
   */
  displayPlane(): DisplayPlane | null {
    const width = this.regs.get('SCANOUT_WIDTH');
    const height = this.regs.get('SCANOUT_HEIGHT');
    const stride = this.regs.get('SCANOUT_STRIDE');
    const offset = this.regs.get('SCANOUT_OFFSET');
    if (this.regs.get('SCANOUT_FORMAT') !== VGPU.FORMAT_XRGB8888 || width === 0 || height === 0 || stride < width * 4 || offset + (height - 1) * stride + width * 4 > VGPU.VRAM_SIZE) {
      return null;
    }
    return { offset, stride, width, height, format: 'xrgb8888', byteOrder: 'little', blanked: false };
  }

  /** {@link DisplayDevice}: called after every change of {@link displayPlane}; returns a remover. */
  onDisplayChange(listener: (plane: DisplayPlane | null) => void): () => void {
    if (typeof listener !== 'function') throw new MdevError('EINVAL', 'must be a function', 'listener');
    this.planeListeners.push(listener);
    return () => {
      const i = this.planeListeners.indexOf(listener);
      if (i >= 0) this.planeListeners.splice(i, 1);
    };
  }

  private planeChanged(): void {
    const plane = this.displayPlane();
    const key = JSON.stringify(plane);
    if (key === this.lastPlane) return;
    this.lastPlane = key;
    for (const l of [...this.planeListeners]) l(plane);
  }

  private hashScanout(): void {
    const digest = createHash('sha256').update(this.scanout().pixels).digest();
    for (let i = 0; i < 8; i++) this.regs.set(`HASH_${i}` as never, digest.readUInt32LE(i * 4));
  }

  protected override onReset(): void {
    this.gttWatch?.remove();
    this.gttWatch = null;
    this.shadowGtt.fill(0);
    this.vram.bytes.fill(0);
    this.planeChanged();
  }
}

/**
 * The most a command may cost, from its fields alone: VRAM pixels it writes, bytes and transfers
 * of DMA (a BLIT row of n bytes takes at most ceil(n / 4096) + 1 page-bounded transfers).
 */
function commandCost(v: DataView): { pixels: number; dmaBytes: number; dmaOps: number } {
  switch (v.getUint32(0, true)) {
    case VGPU.OP_FILL_RECT:
      // A rectangle that runs out of VRAM is refused before it writes: no more than VRAM counts.
      return { pixels: Math.min(v.getUint16(12, true) * v.getUint16(14, true), VGPU.VRAM_SIZE / 4), dmaBytes: 0, dmaOps: 0 };
    case VGPU.OP_BLIT: {
      const width = v.getUint16(24, true);
      const height = v.getUint16(26, true);
      const perRow = width === 0 ? 0 : Math.ceil((width * 4) / PAGE) + 1;
      return { pixels: Math.min(width * height, VGPU.VRAM_SIZE / 4), dmaBytes: Math.min(width * height * 4, VGPU.VRAM_SIZE), dmaOps: perRow * height };
    }
    case VGPU.OP_FENCE:
      return { pixels: 0, dmaBytes: 4, dmaOps: 1 };
    default:
      return { pixels: 0, dmaBytes: 0, dmaOps: 0 };
  }
}

/** Device-module entry point. */
export default function createDevice(): VirtualGpu {
  return new VirtualGpu();
}

