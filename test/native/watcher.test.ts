import { describe, it, expect, afterEach } from 'vitest';
import { Worker } from 'node:worker_threads';
import { closeFd, eventfdCreate, eventfdRead, eventfdWrite, memfdCreate, pipe } from '../../src/native/fd.js';
import { recvMsg, sendMsg, socketPair } from '../../src/native/socket.js';
import { FdWatcher, type FdWatcherEvent } from '../../src/native/watcher.js';
import { NEVER_OPEN_FD, expectArgError, expectErrno, fixture, isOpen, runFixture, thrown } from './helpers.js';

const opened: number[] = [];
const watchers: FdWatcher[] = [];
afterEach(() => {
  for (const w of watchers.splice(0)) w.close();
  for (const fd of opened.splice(0)) if (isOpen(fd)) closeFd(fd);
});
function track<T extends number | number[]>(fds: T): T {
  opened.push(...(Array.isArray(fds) ? fds : [fds]));
  return fds;
}

/** A watcher whose events are also delivered as promises, in order. */
function watch(fd: number, events?: { readable?: boolean; writable?: boolean }, onEvent?: (ev: FdWatcherEvent, w: FdWatcher) => void) {
  const queue: FdWatcherEvent[] = [];
  const waiting: Array<(ev: FdWatcherEvent) => void> = [];
  const watcher: FdWatcher = new FdWatcher(
    fd,
    (ev) => {
      onEvent?.(ev, watcher);
      const next = waiting.shift();
      if (next) next(ev);
      else queue.push(ev);
    },
    events,
  );
  watchers.push(watcher);
  return {
    watcher,
    next: (): Promise<FdWatcherEvent> => {
      const ev = queue.shift();
      return ev ? Promise.resolve(ev) : new Promise((resolve) => waiting.push(resolve));
    },
  };
}

/** Resolves after the event loop has gone through at least one full poll phase with `fd` readable. */
async function loopTurn(): Promise<void> {
  const efd = track(eventfdCreate(1));
  const witness = watch(efd);
  witness.watcher.start();
  await witness.next();
  witness.watcher.close();
}

describe('FdWatcher events', () => {
  it('fires when an eventfd is written, and not before start()', async () => {
    const efd = track(eventfdCreate());
    const { watcher, next } = watch(efd);
    expect(watcher.active).toBe(false);
    watcher.start();
    expect(watcher.active).toBe(true);
    eventfdWrite(efd, 2n);
    expect(await next()).toEqual({ readable: true, writable: false });
    expect(eventfdRead(efd)).toBe(2n);
  });

  it('fires when socket data arrives, and on hang-up', async () => {
    const [a, b] = track(socketPair());
    const { watcher, next } = watch(b!);
    watcher.start();
    sendMsg(a!, Buffer.from('doorbell'));
    expect(await next()).toEqual({ readable: true, writable: false });
    const buf = Buffer.alloc(16);
    expect(recvMsg(b!, buf)!.bytes).toBe(8);
    closeFd(a!);
    expect(await next()).toEqual({ readable: true, writable: false });
    expect(recvMsg(b!, buf)!.bytes).toBe(0);
  });

  it('reports writability when asked, and start() can switch events', async () => {
    const [a] = track(socketPair());
    const { watcher, next } = watch(a!, { readable: false, writable: true });
    watcher.start();
    expect(await next()).toEqual({ readable: false, writable: true });
    watcher.start({ writable: false, readable: true });
    sendMsg(track(socketPair())[0]!, Buffer.from('x')); // unrelated traffic; a stays unreadable
    await loopTurn();
    watcher.start({ writable: true });
    const ev = await next();
    expect(ev.writable).toBe(true);
  });

  it('is level-triggered: an undrained fd fires again on the next turn', async () => {
    const efd = track(eventfdCreate(1));
    const { watcher, next } = watch(efd);
    watcher.start();
    await next();
    await next();
    watcher.stop();
    expect(eventfdRead(efd)).toBe(1n);
  });

  it('reports a poll error, after which the watcher is stopped', async () => {
    const [r, w] = track(pipe());
    closeFd(r!); // the write end now signals POLLERR
    const { watcher, next } = watch(w!, { readable: false, writable: true });
    watcher.start();
    const ev = await next();
    expect(ev.readable).toBe(false);
    expect(ev.writable).toBe(false);
    expect(ev.error).toBeInstanceOf(Error);
    expect(ev.error).toMatchObject({ code: 'EBADF', syscall: 'uv_poll' });
    expect(watcher.active).toBe(false);
    expect(isOpen(w!)).toBe(true);
  });

  it('runs promise jobs queued by a callback before the next callback', async () => {
    const order: string[] = [];
    const efds = track([eventfdCreate(), eventfdCreate(), eventfdCreate()]);
    const done = Promise.all(
      efds.map((efd, i) => {
        const { watcher, next } = watch(efd, undefined, () => {
          order.push(`callback ${i}`);
          void Promise.resolve().then(() => order.push(`microtask ${i}`));
          eventfdRead(efd);
        });
        watcher.start();
        return next().then(() => watcher.close());
      }),
    );
    // All three become readable before the loop polls, so their callbacks run in one poll phase.
    for (const efd of efds) eventfdWrite(efd);
    await done;
    expect(order).toHaveLength(6);
    for (let k = 0; k < 6; k += 2) {
      const i = order[k]!.split(' ')[1];
      expect([order[k], order[k + 1]]).toEqual([`callback ${i}`, `microtask ${i}`]);
    }
  });
});

describe('FdWatcher lifecycle', () => {
  it('stop() prevents callbacks for an fd that is ready; start() resumes them', async () => {
    const efd = track(eventfdCreate());
    let calls = 0;
    const { watcher, next } = watch(efd, undefined, () => calls++);
    watcher.start();
    eventfdWrite(efd);
    watcher.stop();
    watcher.stop(); // idempotent
    expect(watcher.active).toBe(false);
    await loopTurn();
    await loopTurn();
    expect(calls).toBe(0);
    watcher.start();
    await next();
    expect(calls).toBe(1);
  });

  it('close() inside the callback ends delivery and leaves the fd open', async () => {
    const efd = track(eventfdCreate(1)); // stays readable: never drained
    let calls = 0;
    const { watcher, next } = watch(efd, undefined, (_ev, w) => {
      calls++;
      w.close();
      w.close();
    });
    watcher.start();
    await next();
    await loopTurn();
    await loopTurn();
    expect(calls).toBe(1);
    expect(watcher.closed).toBe(true);
    expect(watcher.active).toBe(false);
    expect(isOpen(efd)).toBe(true);
    expect(eventfdRead(efd)).toBe(1n);
    const error = thrown(() => watcher.start());
    expect({ code: error.code }).toEqual({ code: 'EBADF' });
    watcher.stop(); // no-ops after close
    watcher.ref();
    watcher.unref();
  });

  it('stop() then start() inside the callback keeps it going', async () => {
    const efd = track(eventfdCreate(1));
    let calls = 0;
    const { watcher, next } = watch(efd, undefined, (_ev, w) => {
      calls++;
      w.stop();
      if (calls < 3) w.start();
    });
    watcher.start();
    await next();
    await next();
    await next();
    await loopTurn();
    expect(calls).toBe(3);
    expect(watcher.active).toBe(false);
  });

  it('allows one watcher per fd until it is closed', () => {
    const efd = track(eventfdCreate());
    const first = watch(efd).watcher;
    expectArgError(() => new FdWatcher(efd, () => {}), 'EEXIST', 'fd');
    first.close();
    watch(efd).watcher.start();
  });

  it('ref() and unref() toggle whether it holds the process', () => {
    const efd = track(eventfdCreate());
    const { watcher } = watch(efd);
    expect(watcher.hasRef()).toBe(true);
    expect(watcher.unref()).toBe(watcher);
    expect(watcher.hasRef()).toBe(false);
    watcher.start();
    watcher.ref();
    expect(watcher.hasRef()).toBe(true);
  });

  it('refuses a start() after its fd was closed instead of letting libuv abort', () => {
    const efd = eventfdCreate();
    const { watcher } = watch(efd);
    closeFd(efd);
    expectErrno(() => watcher.start(), 'EBADF', 'fstat');
    expect(watcher.active).toBe(false);
  });

  it('validates its arguments', () => {
    const efd = track(eventfdCreate());
    expectArgError(() => new FdWatcher(-1, () => {}), 'RangeError', 'fd');
    expectArgError(() => new FdWatcher('3' as unknown as number, () => {}), 'TypeError', 'fd');
    expectArgError(() => new FdWatcher(efd, 'cb' as unknown as () => void), 'TypeError', 'callback');
    expectArgError(() => new FdWatcher(efd, () => {}, { readable: false }), 'EINVAL', 'events');
    expectArgError(() => new FdWatcher(efd, () => {}, { readable: 1 as unknown as boolean }), 'TypeError', 'readable');
    expectArgError(() => new FdWatcher(efd, () => {}, 5 as unknown as object), 'TypeError', 'events');
    expectErrno(() => new FdWatcher(NEVER_OPEN_FD, () => {}), 'EBADF', 'uv_poll_init');
    const file = track(memfdCreate('regular'));
    expectErrno(() => new FdWatcher(file, () => {}), 'EPERM', 'uv_poll_init');
    const { watcher } = watch(efd);
    expectArgError(() => watcher.start({ readable: false }), 'EINVAL', 'events');
    expectArgError(() => watcher.start({ writable: 'yes' as unknown as boolean }), 'TypeError', 'writable');
    expectArgError(() => watcher.start(null as unknown as object), 'TypeError', 'events');
    expect(watcher.active).toBe(false);
    // Failed constructions registered nothing: the fd can still be watched.
    watcher.close();
    watch(efd).watcher.start();
  });
});

describe('FdWatcher and the process', () => {
  it('an unref()ed watcher lets the process exit; a referenced one keeps it alive', async () => {
    const [a, b] = track(socketPair());
    const unrefed = runFixture('watcher-lifetime.mjs', ['unref'], { stdio: ['ignore', 'pipe', 'pipe', b] });
    const result = await unrefed.exited;
    expect(result).toMatchObject({ code: 0, stderr: '' });
    expect(result.stdout).toBe('ready\nexit hasRef=false active=true\n');
    void a;

    for (const mode of ['ref', 'unref-ref']) {
      const [c, d] = track(socketPair());
      const child = runFixture('watcher-lifetime.mjs', [mode], { stdio: ['ignore', 'pipe', 'pipe', d] });
      await child.line('ready');
      sendMsg(c!, Buffer.from('wake'));
      const done = await child.exited;
      expect(done).toMatchObject({ code: 0, stderr: '' });
      expect(done.stdout).toBe('ready\ndata true wake\nexit hasRef=true active=false\n');
    }
  });

  it('an exception thrown by the callback reaches uncaughtException; its promise jobs still run', async () => {
    const result = await runFixture('watcher-throw.mjs', ['handled']).exited;
    expect(result).toMatchObject({ code: 0, stderr: '' });
    expect(result.stdout).toBe('uncaught: boom from the callback\nmicrotask after call 1\nsecond call\nmicrotask after call 2\n');
  });

  it('an unhandled exception from the callback ends the process with its stack', async () => {
    const result = await runFixture('watcher-throw.mjs', ['unhandled']).exited;
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('Error: boom from the callback');
    expect(result.stderr).toContain('watcher-throw.mjs');
    expect(result.stdout).toBe('');
  });

  it('keeps an active watcher alive without JS references, and collects a stopped one', async () => {
    const result = await runFixture('watcher-gc.mjs', [], { nodeArgs: ['--expose-gc'] }).exited;
    expect(result).toMatchObject({ code: 0, stderr: '' });
    expect(result.stdout).toBe('active watcher survived GC\nstopped watcher was collected\n');
  });

  it('closes watchers left open when a worker ends or is terminated', async () => {
    for (const mode of ['terminate', 'exit-naturally']) {
      const worker = new Worker(fixture('watcher-worker.mjs'), { workerData: { mode } });
      const exited = new Promise<number>((resolve, reject) => {
        worker.once('error', reject);
        worker.once('exit', resolve);
      });
      const message = await new Promise<unknown>((resolve) => worker.once('message', resolve));
      if (mode === 'terminate') {
        expect(message).toBe('ready');
        await worker.terminate();
        expect(await exited).toBe(1);
      } else {
        expect(message).toBe('unref');
        expect(await exited).toBe(0);
      }
    }
  });
});
