import { describe, expect, it, afterAll } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../../src/native/binding.js';

// The C floor programs `npm run bench` measures against (native/bench/): what they compute must be
// right, or every ratio in the bench is wrong.
const program = (name: string): string => join(packageRoot(), 'build', 'Release', name);
const dir = mkdtempSync(join(tmpdir(), 'mdk-floor-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function exited(p: ChildProcess): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  p.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => p.once('close', (code) => resolve({ code, stdout, stderr })));
}

/** Runs the echo floor with `args` and the C client against it; returns both sides' results. */
async function floorRun(name: string, args: string[], iters: number): Promise<{ samplesNs: number[]; served: number }> {
  const sock = join(dir, `${name}.sock`);
  const server = spawn(program('mdevkit-echo-floor'), [sock, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const serverDone = exited(server);
  await new Promise<void>((resolve, reject) => {
    server.stdout!.once('data', () => resolve());
    server.once('close', (code) => reject(new Error(`echo floor exited (${code}) before it was ready`)));
  });
  const out = join(dir, `${name}.json`);
  const client = spawn(program('mdevkit-rtt-client'), ['--socket', sock, '--iters', String(iters), '--warmup', '5', '--out', out], { stdio: ['ignore', 'pipe', 'pipe'] });
  const c = await exited(client);
  expect(c.code, c.stderr).toBe(0);
  const s = await serverDone;
  expect(s.code, s.stderr).toBe(0);
  const stats = JSON.parse(s.stdout.trim().split('\n').at(-1)!) as { served: number };
  return { samplesNs: (JSON.parse(readFileSync(out, 'utf8')) as { samples_ns: number[] }).samples_ns, served: stats.served };
}

describe('C echo floor (bench)', () => {
  it('answers every request of the C client', async () => {
    const r = await floorRun('plain', [], 200);
    expect(r.samplesNs).toHaveLength(200);
    // Warm-up and measured requests; the client checks each reply's size and id itself.
    expect(r.served).toBeGreaterThanOrEqual(205);
  });

  it('--work-ns holds every reply back by at least that long', async () => {
    const workNs = 200_000;
    const r = await floorRun('work', ['--work-ns', String(workNs)], 40);
    expect(r.samplesNs).toHaveLength(40);
    expect(Math.min(...r.samplesNs)).toBeGreaterThanOrEqual(workNs);
  });

  it.each([['abc'], ['-1'], ['12x'], ['2000000000'], ['']])('rejects --work-ns %j with exit 2 and a message naming the option', (value) => {
    const r = spawnSync(program('mdevkit-echo-floor'), [join(dir, 'bad.sock'), '--work-ns', value], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('--work-ns');
  });

  it('rejects an unknown option with its usage', () => {
    const r = spawnSync(program('mdevkit-echo-floor'), [join(dir, 'bad.sock'), '--fast'], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('usage:');
  });
});
