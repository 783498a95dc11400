/**
 * Option-object handling shared by the native wrappers.
 * @module
 */
import { describe } from '../errors.js';

/**
 * Returns `options`, or `{}` when omitted. Anything else (a number, a string, `null`) is a caller
 * bug, reported as a TypeError naming `field` in the same shape as the native core's argument
 * errors (`code: 'ERR_INVALID_ARG_TYPE'`), so callers handle both alike.
 * @param field the parameter name used in the error
 * @param options the value the caller passed
 */
export function optionsRecord<T extends object>(field: string, options: T | undefined): Partial<T> {
  if (options === undefined) return {};
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    const error = new TypeError(`The "${field}" argument must be an object, got ${describe(options)}`);
    Object.assign(error, { code: 'ERR_INVALID_ARG_TYPE', field });
    throw error;
  }
  return options;
}
