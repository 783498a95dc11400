/**
 * The hypervisor-neutral contract of a device with a display: where its VRAM is, what part of it
 * the device shows and how, and a notification when that changes. A path-specific composition
 * (`mdevkit serve --display-png`, later the Xen server with track_dirty_vram) keeps a picture of
 * it current through {@link ScanoutDisplay}; the device itself knows nothing of either.
 *
 * What a device does *not* report is which VRAM bytes the guest wrote: guests draw straight into
 * VRAM that the VMM maps into them (vfio-user) or that is their own RAM (Xen), so those writes
 * never reach the device. A display learns of them from the path (a dirty bitmap) or by scanning.
 * @module
 */
import type { PixelByteOrder, PixelFormat, ScanoutGeometry } from './display.js';

/** The plane a display device shows: its place in VRAM, its pixel format, and whether it is blanked. */
export interface DisplayPlane extends ScanoutGeometry {
  /** Pixel format. */
  format: PixelFormat;
  /** Byte order of each pixel in VRAM. */
  byteOrder: PixelByteOrder;
  /** The guest blanked the screen: the mode stays valid, a display shows black. */
  blanked: boolean;
}

/** A device with a scanout plane in VRAM. */
export interface DisplayDevice {
  /**
   * Index of the BAR that holds VRAM. {@link displayVram} offset 0 is the start of this BAR; a
   * path that gives the guest VRAM as RAM (Xen) places and tracks it there.
   */
  readonly displayVramBar: number;
  /** VRAM as the device holds it (the BAR's backing memory). */
  displayVram(): Uint8Array;
  /** The plane shown now, or null when the device shows no picture (no valid mode). */
  displayPlane(): DisplayPlane | null;
  /**
   * Calls `listener` with the new {@link displayPlane} after every change of it (mode, placement,
   * format, byte order, blanking), from a guest access, a reset or a restore. Listeners run inside
   * the guest's access: they must be quick and must not throw. Returns a function that removes
   * the listener.
   */
  onDisplayChange(listener: (plane: DisplayPlane | null) => void): () => void;
}

/** True when `value` implements {@link DisplayDevice}. */
export function isDisplayDevice(value: unknown): value is DisplayDevice {
  if (typeof value !== 'object' || value === null) return false;
  const d = value as Partial<Record<keyof DisplayDevice, unknown>>;
  return (
    Number.isInteger(d.displayVramBar) &&
    typeof d.displayVram === 'function' &&
    typeof d.displayPlane === 'function' &&
    typeof d.onDisplayChange === 'function'
  );
}
