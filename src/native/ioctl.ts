/**
 * A generic ioctl(2) for the device interfaces the adapters drive (Xen privcmd, VFIO, sockets),
 * with pointer marshaling for argument structs that hold user pointers.
 *
 * An {@link IoctlArg} is a byte buffer plus a list of `(offset, target)` pairs: before the call
 * the native core stores the 64-bit address of each target's bytes at that offset, recursively,
 * so Xen's DM_OP (`{dom, nr_bufs, bufs*}` pointing at an array of `{uptr*, size}` pointing at
 * buffers) and MMAPBATCH_V2 (`arr*`, `err*`) can be expressed directly. The kernel reads and
 * writes the JS buffers themselves; nothing is copied back. Every offset is bounds-checked and
 * all validation happens before any pointer is written, so a rejected argument leaves the
 * buffers untouched.
 *
 * The npm package `ioctl-napi` (0.3.0) was considered and rejected (one unmaintained release,
 * no license field, no pointer marshaling).
 * @module
 */
import { MdevError, checkInt } from '../errors.js';
import { binding } from './binding.js';

/** Bytes handed to the kernel: any typed array, a DataView or an ArrayBuffer. */
export type IoctlBytes = ArrayBufferView | ArrayBuffer;

/** One pointer inside an {@link IoctlArg}: where it is stored and what it points at. */
export interface IoctlPointer {
  /** Byte offset in the enclosing `data` at which the 8-byte address is stored. */
  offset: number;
  /** The bytes pointed at, or a nested argument (whose `data` is pointed at). */
  target: IoctlBytes | IoctlArg;
}

/**
 * An ioctl argument struct that contains pointers. `data` is passed to the kernel (its address
 * is the ioctl argument) after each `pointers[i].target`'s address has been stored at
 * `pointers[i].offset` in it, in native byte order.
 *
 * Limits: `offset + 8 <= data.byteLength` (ERANGE naming e.g. `arg.pointers[1].offset`);
 * pointers in one `data` may not overlap (EINVAL); nesting depth at most 8 and at most 4096
 * buffers in total (E2BIG); detached buffers are rejected (EINVAL).
 */
export interface IoctlArg {
  /** The struct's bytes; modified in place by pointer marshaling and by the kernel. */
  data: IoctlBytes;
  /** Pointers to store into `data` before the call. */
  pointers?: readonly IoctlPointer[];
}

interface IoctlBinding {
  ioctl(fd: number, request: number, arg?: number | bigint | IoctlBytes | IoctlArg): number;
  ioctlMarshalForTest(arg: IoctlArg): Uint8Array;
  addressOf(view: IoctlBytes): bigint;
}

const native = binding as unknown as IoctlBinding;

/**
 * Performs ioctl(fd, request, arg), retrying EINTR.
 * @param request the request number, an unsigned 32-bit value such as `IOW(0x50, 5, 16)`
 * @param arg omitted (0); an integer passed by value (number, or bigint for full 64-bit values);
 *   a buffer whose address is passed (the kernel reads and writes it); or an {@link IoctlArg}
 * @returns ioctl's non-negative return value
 * @throws errno errors with `syscall: 'ioctl'` (ENOTTY: the fd does not support the request;
 *   EBADF; EFAULT; ...), and argument errors naming the field at fault
 */
export function ioctl(fd: number, request: number, arg?: number | bigint | IoctlBytes | IoctlArg): number {
  return native.ioctl(fd, request, arg);
}

/**
 * Lays out `arg` exactly as {@link ioctl} would, without a system call, and returns a copy of the
 * top-level bytes. For tests and debugging: compare each stored pointer with {@link addressOf}.
 */
export function ioctlMarshalForTest(arg: IoctlArg): Uint8Array {
  return native.ioctlMarshalForTest(arg);
}

/**
 * The address of a buffer's first byte, as pointer marshaling stores it. The address of a
 * buffer's bytes does not change while the buffer is alive and attached.
 */
export function addressOf(view: IoctlBytes): bigint {
  return native.addressOf(view);
}

/** Request direction: no data transfer. */
export const IOC_NONE = 0;
/** Request direction: userspace writes, the kernel reads the argument. */
export const IOC_WRITE = 1;
/** Request direction: the kernel writes the argument, userspace reads it. */
export const IOC_READ = 2;

// The "generic" layout of include/uapi/asm-generic/ioctl.h: nr 8 bits, type 8, size 14, dir 2.
// Alpha, MIPS, PowerPC and SPARC use another layout; there these helpers refuse to guess.
const GENERIC_LAYOUT_ARCHES: ReadonlySet<string> = new Set(['x64', 'ia32', 'arm', 'arm64', 'riscv64', 's390x', 'loong64']);

function ioctlType(type: number | string): number {
  if (typeof type === 'string') {
    if (type.length !== 1 || type.charCodeAt(0) > 0xff) {
      throw new MdevError('EINVAL', `must be one character or a number, got ${JSON.stringify(type)}`, 'type');
    }
    return type.charCodeAt(0);
  }
  return checkInt('type', type, 0, 0xff);
}

/**
 * Computes a Linux ioctl request number, like the kernel's `_IOC` macro.
 * @param dir {@link IOC_NONE}, {@link IOC_WRITE}, {@link IOC_READ} or `IOC_READ | IOC_WRITE`
 * @param type the driver's magic: a number `0..255` or a one-character string (`'P'` for privcmd)
 * @param nr the command number, `0..255`
 * @param size the argument struct's size in bytes, `0..16383`
 * @returns the request as an unsigned 32-bit number
 */
export function IOC(dir: number, type: number | string, nr: number, size: number): number {
  if (!GENERIC_LAYOUT_ARCHES.has(process.arch)) {
    throw new MdevError('ENOTSUP', `ioctl number layout of ${process.arch} is not implemented`);
  }
  checkInt('dir', dir, 0, 3);
  const t = ioctlType(type);
  checkInt('nr', nr, 0, 0xff);
  checkInt('size', size, 0, 0x3fff);
  return ((dir << 30) | (size << 16) | (t << 8) | nr) >>> 0;
}

/** `_IO(type, nr)`: a request without an argument struct. */
export function IO(type: number | string, nr: number): number {
  return IOC(IOC_NONE, type, nr, 0);
}

/** `_IOR(type, nr, size)`: the kernel fills a `size`-byte struct. */
export function IOR(type: number | string, nr: number, size: number): number {
  return IOC(IOC_READ, type, nr, size);
}

/** `_IOW(type, nr, size)`: the kernel reads a `size`-byte struct. */
export function IOW(type: number | string, nr: number, size: number): number {
  return IOC(IOC_WRITE, type, nr, size);
}

/** `_IOWR(type, nr, size)`: the kernel reads and updates a `size`-byte struct. */
export function IOWR(type: number | string, nr: number, size: number): number {
  return IOC(IOC_READ | IOC_WRITE, type, nr, size);
}
