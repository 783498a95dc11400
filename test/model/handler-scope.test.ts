import { describe, expect, it } from 'vitest';
import { deferredHookCount, enterHandlerScope, inHandlerScope, isNestedHandler, leaveHandlerScope, runOrDefer, setDeferredHookErrorReporter } from '../../src/index.js';

describe('handler scopes', () => {
  it('runs a hook at once in the outermost scope and defers it in a nested one', () => {
    const order: string[] = [];
    inHandlerScope(() => {
      expect(isNestedHandler()).toBe(false);
      expect(runOrDefer(() => order.push('outer hook'))).toBe(true);
      inHandlerScope(() => {
        expect(isNestedHandler()).toBe(true);
        expect(runOrDefer(() => order.push('nested hook'))).toBe(false);
        expect(deferredHookCount()).toBe(1);
      });
      order.push('outer handler returns');
    });
    expect(order).toEqual(['outer hook', 'outer handler returns', 'nested hook']);
    expect(deferredHookCount()).toBe(0);
  });

  it('runs deferred hooks when the outer handler throws, and rethrows its error', () => {
    const ran: string[] = [];
    expect(() =>
      inHandlerScope(() => {
        inHandlerScope(() => runOrDefer(() => ran.push('nested hook')));
        throw new Error('handler failed');
      }),
    ).toThrow('handler failed');
    expect(ran).toEqual(['nested hook']);
    expect(isNestedHandler()).toBe(false);
  });

  it('enter/leave is the same scope without a closure', () => {
    const ran: string[] = [];
    enterHandlerScope();
    try {
      enterHandlerScope();
      try {
        runOrDefer(() => ran.push('hook'));
      } finally {
        leaveHandlerScope();
      }
      expect(ran).toEqual([]);
    } finally {
      leaveHandlerScope();
    }
    expect(ran).toEqual(['hook']);
  });

  it('a deferred hook that throws goes to the reporter; the others still run', () => {
    const reported: unknown[] = [];
    const previous = setDeferredHookErrorReporter((e) => reported.push(e));
    try {
      const ran: string[] = [];
      inHandlerScope(() =>
        inHandlerScope(() => {
          runOrDefer(() => {
            throw new Error('hook failed');
          });
          runOrDefer(() => ran.push('second hook'));
        }),
      );
      expect(ran).toEqual(['second hook']);
      expect(reported).toHaveLength(1);
      expect((reported[0] as Error).message).toBe('hook failed');
    } finally {
      setDeferredHookErrorReporter(previous);
    }
  });

  it('leaving a scope that is not open is an EINVAL error, not a negative depth', () => {
    expect(() => leaveHandlerScope()).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(runOrDefer(() => undefined)).toBe(true);
  });
});
