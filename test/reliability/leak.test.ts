// Long-running servers see thousands of VMM (re)connections and IOREQ server restarts: nothing a
// finished session or server held may stay behind — JS heap, RSS, fds or mappings.
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VfioUserClient } from '../../adapters/vfio/client.js';
import { packageRoot } from '../../src/native/binding.js';
import { closeFd } from '../../src/native/fd.js';
import { connectUnix, sendMsg } from '../../src/native/socket.js';
import { versionMessage } from '../vfio/harness.js';

interface Measure {
  heapUsed: number;
  rss: number;
  fds: number;
  maps: number;
  sessions: number;
}

const MiB = 1 << 20;
let dir: string;
let child: ChildProcess;
let path: string;

function ask<T>(message: object): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMessage = (m: T) => {
      child.off('exit', onExit);
      resolve(m);
    };
    const onExit = (code: number | null) => reject(new Error(`leak server exited (${code})`));
    child.once('message', onMessage);
    child.once('exit', onExit);
    child.send(message);
  });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'mdevkit-leak-'));
  path = join(dir, 'edu.sock');
  child = fork(join(packageRoot(), 'test', 'fixtures', 'leak-server.mjs'), [path], { execArgv: ['--expose-gc'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  await new Promise<void>((resolve, reject) => {
    child.once('message', () => resolve());
    child.once('exit', (code) => reject(new Error(`leak server exited (${code}) before it was ready`)));
  });
});

afterAll(async () => {
  if (child.exitCode === null) {
    const gone = new Promise((resolve) => child.once('exit', resolve));
    child.send({ cmd: 'exit' });
    await gone;
  }
  rmSync(dir, { recursive: true, force: true });
});

/** One client life: VERSION, guest RAM shared by fd (DMA_MAP), MSI with an eventfd (SET_IRQS), device DMA, then an end. */
function cycle(i: number): void {
  if (i % 4 === 3) {
    // Abrupt: half a message, or a VERSION whose reply is never read, then close.
    const fd = connectUnix(path, { nonBlocking: false });
    const v = versionMessage();
    sendMsg(fd, i % 8 === 3 ? v.subarray(0, 10) : v);
    closeFd(fd);
    return;
  }
  const c = VfioUserClient.connect(path, { timeoutMs: 5000 });
  try {
    c.addGuestRam(0x100000, 64 * 1024, { withFd: true });
    c.cfgWrite(4, 2, 0x6); // memory space + bus master
    c.enableMsi(1);
    // edu DMA from its buffer into guest RAM, raising MSI when done.
    const bar0 = 0;
    c.mmioWrite(bar0, 0x80, 8, 0x40000n);
    c.mmioWrite(bar0, 0x88, 8, 0x100000n);
    c.mmioWrite(bar0, 0x90, 8, 64n);
    c.mmioWrite(bar0, 0x98, 8, 0x7n);
    expect(c.mmioRead(bar0, 0x00, 4)).toBe(0x010000ed);
  } finally {
    c.close();
  }
}

/** Waits until the server has seen `n` sessions (it accepts the next client only after the previous ended). */
async function settle(n: number): Promise<Measure> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const m = await ask<Measure>({ cmd: 'measure' });
    if (m.sessions >= n) return m;
  }
  throw new Error(`server saw fewer than ${n} sessions`);
}

/**
 * A leak grows with every cycle; allocators and V8 grow in steps and then stay. So: warm up, then
 * measure across two equal phases — the second phase must not grow — and bound the total too.
 */
function checkSteady(what: string, m: Measure[]): void {
  const [warm, mid, end] = m as [Measure, Measure, Measure];
  const mib = (v: number) => (v / MiB).toFixed(1);
  const report = `${what}: heap ${mib(warm.heapUsed)} → ${mib(mid.heapUsed)} → ${mib(end.heapUsed)} MiB, rss ${mib(warm.rss)} → ${mib(mid.rss)} → ${mib(end.rss)} MiB, fds ${warm.fds} → ${mid.fds} → ${end.fds}, maps ${warm.maps} → ${mid.maps} → ${end.maps}`;
  console.log(report);
  expect(end.fds, report).toBe(warm.fds);
  expect(end.heapUsed - mid.heapUsed, report).toBeLessThan(1 * MiB);
  expect(end.heapUsed - warm.heapUsed, report).toBeLessThan(2 * MiB);
  // Under ASan (npm run test:asan) freed native memory sits in the sanitizer's quarantine (up to
  // 256 MiB) and its allocator maps regions as it goes, so RSS and mappings say nothing there;
  // the JS heap and the fds still must not grow, and ASan itself reports misuse of what was freed.
  if (sanitized) return;
  expect(end.maps - mid.maps, report).toBeLessThanOrEqual(8);
  expect(end.rss - mid.rss, report).toBeLessThan(8 * MiB);
  expect(end.rss - warm.rss, report).toBeLessThan(24 * MiB);
}

/** The suite runs against the ASan build (native/sanitize.sh preloads the runtime). */
const sanitized = /libasan/.test(process.env['LD_PRELOAD'] ?? '');

describe('no per-connection growth', () => {
  it('vfio-user: 4000 connections (clean and abrupt ends, DMA maps, IRQ eventfds) leave heap, RSS, fds and mappings where they were', async () => {
    let sessions = 0;
    const run = async (n: number) => {
      for (let i = 0; i < n; i++) {
        cycle(sessions + i);
        // Let the server's loop see the close before the next connect (its one session slot).
        if (i % 16 === 15) await new Promise((r) => setImmediate(r));
      }
      sessions += n;
      return settle(sessions - Math.ceil(n / 8)); // half-message clients may be pruned unseen
    };
    const m = [await run(600), await run(2000), await run(2000)];
    checkSteady('vfio-user sessions', m);
  }, 240_000);

  it('Xen: 4000 IOREQ server start/stop cycles on the simulator leave heap, RSS, fds and mappings where they were', async () => {
    const m: Measure[] = [];
    for (const n of [600, 2000, 2000]) {
      await ask({ cmd: 'xen-cycles', n });
      m.push(await ask<Measure>({ cmd: 'measure' }));
    }
    checkSteady('Xen IOREQ servers', m);
  }, 240_000);
});
