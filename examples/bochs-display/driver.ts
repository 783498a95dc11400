/**
 * A guest driver for the Bochs display, written once against the neutral interface, doing what
 * Linux's bochs DRM driver does to show a picture: set a DISPI mode and draw into VRAM (BAR0). It
 * reads the mode and the pixels back and reports a hash of the picture.
 * @module
 */
import { createHash } from 'node:crypto';
import { PCI, PCI_COMMAND, type DriverResult, type GuestDriverHost, type MigrationGuestDriver } from 'mdevkit';
import { BOCHS, DISPI } from './index.js';

/** The mode the driver sets. */
export const BOCHS_DRIVER_MODE = { width: 640, height: 480, bpp: 32 } as const;

/** Side of the square blocks the driver draws, in pixels. */
const BLOCK = 32;

function dispiWrite(host: GuestDriverHost, index: number, value: number): void {
  host.mmioWrite(2, BOCHS.DISPI_OFFSET + 2 * index, 2, value);
}

function dispiRead(host: GuestDriverHost, index: number): number {
  return Number(host.mmioRead(2, BOCHS.DISPI_OFFSET + 2 * index, 2));
}

function setMode(host: GuestDriverHost): void {
  host.cfgWrite(PCI.COMMAND, 2, host.cfgRead(PCI.COMMAND, 2) | PCI_COMMAND.MEMORY);
  dispiWrite(host, DISPI.ENABLE, 0);
  dispiWrite(host, DISPI.XRES, BOCHS_DRIVER_MODE.width);
  dispiWrite(host, DISPI.YRES, BOCHS_DRIVER_MODE.height);
  dispiWrite(host, DISPI.BPP, BOCHS_DRIVER_MODE.bpp);
  dispiWrite(host, DISPI.VIRT_WIDTH, BOCHS_DRIVER_MODE.width);
  dispiWrite(host, DISPI.ENABLE, DISPI.ENABLED | DISPI.LFB_ENABLED);
}

/** Draws a BLOCK × BLOCK square of a gradient seeded by `seed` at (x, y), 8 bytes per write. */
function drawBlock(host: GuestDriverHost, x: number, y: number, seed: number): void {
  const stride = BOCHS_DRIVER_MODE.width * 4;
  for (let row = 0; row < BLOCK; row++) {
    for (let col = 0; col < BLOCK; col += 2) {
      const px = (c: number) => BigInt((0xff000000 | ((seed * 16 + row) << 16) | ((c * 8) << 8) | (seed ^ row ^ c)) >>> 0);
      host.mmioWrite(0, (y + row) * stride + (x + col) * 4, 8, px(col) | (px(col + 1) << 32n));
    }
  }
}

/** SHA-256 of the blocks at the given places, read back from VRAM. */
function hashBlocks(host: GuestDriverHost, places: readonly [number, number][]): string {
  const stride = BOCHS_DRIVER_MODE.width * 4;
  const h = createHash('sha256');
  const line = new DataView(new ArrayBuffer(BLOCK * 4));
  for (const [x, y] of places) {
    for (let row = 0; row < BLOCK; row++) {
      for (let col = 0; col < BLOCK; col += 2) line.setBigUint64(col * 4, BigInt(host.mmioRead(0, (y + row) * stride + (x + col) * 4, 8)), true);
      h.update(new Uint8Array(line.buffer));
    }
  }
  return h.digest('hex');
}

function mode(host: GuestDriverHost): number[] {
  return [DISPI.XRES, DISPI.YRES, DISPI.BPP, DISPI.ENABLE, DISPI.VIRT_WIDTH].map((i) => dispiRead(host, i));
}

/** Runs the Bochs display driver: mode set, two blocks drawn, everything read back. */
export default function bochsDriver(host: GuestDriverHost): DriverResult {
  setMode(host);
  drawBlock(host, 0, 0, 1);
  drawBlock(host, 200, 100, 2);
  return { id: dispiRead(host, DISPI.ID), mode: mode(host), vram64k: dispiRead(host, DISPI.VIDEO_MEMORY_64K), framebufferSha256: hashBlocks(host, [[0, 0], [200, 100]]) };
}

/**
 * The driver in two halves around a migration or save/restore: `before` sets the mode and draws;
 * `after` reads the mode and the picture back, then draws more.
 */
export const migration: MigrationGuestDriver = {
  before(host: GuestDriverHost): DriverResult {
    setMode(host);
    drawBlock(host, 0, 0, 3);
    drawBlock(host, 320, 240, 4);
    return { mode: mode(host), picture: hashBlocks(host, [[0, 0], [320, 240]]) };
  },
  after(host: GuestDriverHost): DriverResult {
    const seen = { mode: mode(host), picture: hashBlocks(host, [[0, 0], [320, 240]]) };
    drawBlock(host, 600, 440, 5);
    return { ...seen, framebufferSha256: hashBlocks(host, [[0, 0], [320, 240], [600, 440]]) };
  },
};
