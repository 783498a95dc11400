/**
 * Versioned device-state images: save/restore, the files `mdevkit serve --save/--restore` write
 * and read, and the device part of a live-migration stream (src/migration.ts).
 *
 * Layout (little-endian): magic "MDEVSTAT" · u16 format version (1) · u16 vendor · u16 device ·
 * u16 section count · sections · u32 CRC-32 of everything before it. A section is
 * u16 name length · UTF-8 name · u32 section version · u32 length · bytes.
 * @module
 */
import { crc32 } from 'node:zlib';
import { MdevError } from './errors.js';

/** One named, versioned part of a device's state. */
export interface StateSection {
  /** Unique name, e.g. "pci.config" or "regs.bar0". */
  readonly name: string;
  /** Version of this section's layout. */
  readonly version: number;
  /** The bytes. */
  readonly data: Uint8Array;
}

/** Identity stamped into an image so it is not restored into a different device. */
export interface StateIdentity {
  /** PCI vendor ID. */
  readonly vendorId: number;
  /** PCI device ID. */
  readonly deviceId: number;
}

const MAGIC = Buffer.from('MDEVSTAT', 'latin1');
/** Format version written by {@link encodeState}. */
export const STATE_FORMAT_VERSION = 1;

/** Serializes sections into an image. */
export function encodeState(identity: StateIdentity, sections: readonly StateSection[]): Uint8Array {
  const names = new Set<string>();
  const parts: Buffer[] = [];
  const head = Buffer.alloc(16);
  MAGIC.copy(head, 0);
  head.writeUInt16LE(STATE_FORMAT_VERSION, 8);
  head.writeUInt16LE(identity.vendorId, 10);
  head.writeUInt16LE(identity.deviceId, 12);
  head.writeUInt16LE(sections.length, 14);
  parts.push(head);
  for (const s of sections) {
    if (names.has(s.name)) throw new MdevError('EEXIST', `duplicate section ${s.name}`, 'sections');
    names.add(s.name);
    const name = Buffer.from(s.name, 'utf8');
    const h = Buffer.alloc(2 + name.length + 8);
    h.writeUInt16LE(name.length, 0);
    name.copy(h, 2);
    h.writeUInt32LE(s.version, 2 + name.length);
    h.writeUInt32LE(s.data.length, 6 + name.length);
    parts.push(h, Buffer.from(s.data.buffer, s.data.byteOffset, s.data.byteLength));
  }
  const body = Buffer.concat(parts);
  const tail = Buffer.alloc(4);
  tail.writeUInt32LE(crc32(body), 0);
  return new Uint8Array(Buffer.concat([body, tail]));
}

/** Parses and checks an image: magic, format version, identity, bounds of every section, CRC. */
export function decodeState(image: Uint8Array, expect: StateIdentity): Map<string, StateSection> {
  if (!(image instanceof Uint8Array)) throw new MdevError('EINVAL', 'must be a Uint8Array', 'image');
  const buf = Buffer.from(image.buffer, image.byteOffset, image.byteLength);
  if (buf.length < 20 || !buf.subarray(0, 8).equals(MAGIC)) throw new MdevError('EINVAL', 'not a device-state image (bad magic)', 'image');
  const body = buf.subarray(0, buf.length - 4);
  if (crc32(body) !== buf.readUInt32LE(buf.length - 4)) throw new MdevError('EBADMSG', 'checksum mismatch (corrupted image)', 'image');
  const format = buf.readUInt16LE(8);
  if (format !== STATE_FORMAT_VERSION) throw new MdevError('ENOTSUP', `image format ${format}, this build reads ${STATE_FORMAT_VERSION}`, 'image.format');
  const vendorId = buf.readUInt16LE(10);
  const deviceId = buf.readUInt16LE(12);
  if (vendorId !== expect.vendorId || deviceId !== expect.deviceId) {
    throw new MdevError('EINVAL', `image is for ${hex4(vendorId)}:${hex4(deviceId)}, device is ${hex4(expect.vendorId)}:${hex4(expect.deviceId)}`, 'image.identity');
  }
  const count = buf.readUInt16LE(14);
  const sections = new Map<string, StateSection>();
  let pos = 16;
  for (let i = 0; i < count; i++) {
    const field = `image.sections[${i}]`;
    if (pos + 2 > body.length) throw new MdevError('EINVAL', 'truncated section header', field);
    const nameLen = body.readUInt16LE(pos);
    if (pos + 2 + nameLen + 8 > body.length) throw new MdevError('EINVAL', 'truncated section header', field);
    const name = body.toString('utf8', pos + 2, pos + 2 + nameLen);
    const version = body.readUInt32LE(pos + 2 + nameLen);
    const length = body.readUInt32LE(pos + 6 + nameLen);
    const start = pos + 10 + nameLen;
    if (length > body.length - start) throw new MdevError('EINVAL', `section ${name} runs past the image end`, field);
    if (sections.has(name)) throw new MdevError('EINVAL', `duplicate section ${name}`, field);
    sections.set(name, { name, version, data: new Uint8Array(body.subarray(start, start + length)) });
    pos = start + length;
  }
  if (pos !== body.length) throw new MdevError('EINVAL', `${body.length - pos} trailing bytes after the last section`, 'image');
  return sections;
}

/**
 * The identity stamped in an image (after checking its magic, size and CRC), for tools that
 * convert images without the device at hand.
 */
export function peekStateIdentity(image: Uint8Array): StateIdentity {
  if (!(image instanceof Uint8Array)) throw new MdevError('EINVAL', 'must be a Uint8Array', 'image');
  const buf = Buffer.from(image.buffer, image.byteOffset, image.byteLength);
  if (buf.length < 20 || !buf.subarray(0, 8).equals(MAGIC)) throw new MdevError('EINVAL', 'not a device-state image (bad magic)', 'image');
  if (crc32(buf.subarray(0, buf.length - 4)) !== buf.readUInt32LE(buf.length - 4)) throw new MdevError('EBADMSG', 'checksum mismatch (corrupted image)', 'image');
  return { vendorId: buf.readUInt16LE(10), deviceId: buf.readUInt16LE(12) };
}

function hex4(v: number): string {
  return v.toString(16).padStart(4, '0');
}
