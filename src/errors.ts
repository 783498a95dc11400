/**
 * Errors raised by mdevkit.
 *
 * Every error that reaches a caller carries an errno-style `code` (`EINVAL`, `EFAULT`, ...) and,
 * where the cause is an argument or a field of a message, the name of that `field`. Errors from
 * system calls made by the native core also carry `syscall`, in the shape of Node's own
 * `SystemError`.
 * @module
 */
import { constants } from 'node:os';

/** The fields every mdevkit error carries; errors thrown by the native core have the same shape. */
export interface ErrnoError extends Error {
  /** Symbolic errno (`EINVAL`), or a Node-style code (`ERR_INVALID_ARG_TYPE`) for JS type errors. */
  code: string;
  /** Positive errno value, when the code is an errno. */
  errno?: number;
  /** The argument or message field at fault, when there is one. */
  field?: string;
  /** The system call that failed, for errors from the kernel. */
  syscall?: string;
}

/** The errno values of this platform, by name (`errnoOf('EINVAL') === 22` on Linux). */
export function errnoOf(code: string): number {
  const value = (constants.errno as Record<string, number | undefined>)[code];
  if (value === undefined) throw new MdevError('EINVAL', `unknown errno name ${code}`, 'code');
  return value;
}

/** An error with an errno code and, usually, the name of the field at fault. */
export class MdevError extends Error implements ErrnoError {
  override name = 'MdevError';
  readonly code: string;
  readonly errno: number;
  readonly field?: string;

  /**
   * Creates an error; `errno` is looked up from `code`.
   * @param code symbolic errno, e.g. `EINVAL`
   * @param message what is wrong, in words
   * @param field the argument or field at fault
   */
  constructor(code: string, message: string, field?: string) {
    super(field === undefined ? `${code}: ${message}` : `${code}: ${field}: ${message}`);
    this.code = code;
    const errno = (constants.errno as Record<string, number | undefined>)[code];
    this.errno = errno ?? 0;
    if (field !== undefined) this.field = field;
  }
}

/** True when `e` is an error carrying the given errno code. */
export function isErrno(e: unknown, code?: string): e is ErrnoError {
  if (!(e instanceof Error)) return false;
  const c = (e as Partial<ErrnoError>).code;
  return typeof c === 'string' && (code === undefined || c === code);
}

/** Throws `EINVAL` naming `field` unless `value` is an integer in [min, max]. Returns the value. */
export function checkInt(field: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw new MdevError('EINVAL', `must be an integer, got ${describe(value)}`, field);
  }
  if (value < min || value > max) {
    throw new MdevError('ERANGE', `must be in [${min}, ${max}], got ${value}`, field);
  }
  return value;
}

/** Throws `EINVAL` naming `field` unless `value` is a bigint in [min, max]. Returns the value. */
export function checkBigInt(field: string, value: unknown, min: bigint, max: bigint): bigint {
  if (typeof value !== 'bigint') throw new MdevError('EINVAL', `must be a bigint, got ${describe(value)}`, field);
  if (value < min || value > max) throw new MdevError('ERANGE', `must be in [${min}, ${max}], got ${value}`, field);
  return value;
}

/** A short description of a value for error messages. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string') return `string ${JSON.stringify(value.length > 40 ? value.slice(0, 40) + '…' : value)}`;
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return `${typeof value} ${String(value)}`;
  if (Array.isArray(value)) return `array(${value.length})`;
  return typeof value;
}
