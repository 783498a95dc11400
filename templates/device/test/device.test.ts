// Serves the device with `mdevkit serve` in a child process — as a deployment would, the vfio-user
// client blocks its own thread while it waits — and drives it through the client playing the VMM.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PCI, PCI_COMMAND } from 'mdevkit';
import { VfioUserClient } from 'mdevkit/vfio-user';
import { VfioDriverHost } from 'mdevkit/testing';
import driver from '../src/driver.js';
import { ID_VALUE, REG, STATUS } from '../src/device.js';

const project = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const mdevkitCli = join(dirname(require.resolve('mdevkit/package.json')), 'dist', 'cli', 'main.js');

let dir: string;
let socket: string;
let server: ChildProcess;
let exited: Promise<number | null>;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'device-test-'));
  socket = join(dir, 'device.sock');
  server = spawn(process.execPath, [mdevkitCli, 'serve', './src/device.ts', '--vfio-user', socket], { cwd: project, stdio: ['ignore', 'pipe', 'pipe'] });
  exited = new Promise((resolve) => server.once('exit', resolve));
  let err = '';
  server.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    server.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes(`socket ${socket}`)) resolve();
    });
    server.once('exit', (code) => reject(new Error(`mdevkit serve exited (${code}): ${err}`)));
  });
});

afterAll(async () => {
  server?.kill('SIGTERM');
  expect(await exited).toBe(0);
  rmSync(dir, { recursive: true, force: true });
});

describe('the device over vfio-user', () => {
  it('runs the guest driver: DMA through guest RAM, MSI on completion', () => {
    const client = VfioUserClient.connect(socket, { timeoutMs: 5000 });
    try {
      const result = driver(new VfioDriverHost(client));
      expect(result).toMatchObject({ vendor: 0x1234, device: 0x10f0, idOk: true, msi: true, gotIrq: true, done: true, statusAfterClear: 0, xorOk: true });
      expect(result['checksum']).toBe(result['expectedChecksum']);
    } finally {
      client.close();
    }
  });

  it('keeps its register rules: read-only ID, write-1-to-clear STATUS, no DMA without bus mastering', () => {
    const client = VfioUserClient.connect(socket, { timeoutMs: 5000 });
    try {
      client.cfgWrite(PCI.COMMAND, 2, PCI_COMMAND.MEMORY); // decoding on, bus mastering off
      client.mmioWrite(0, REG.ID, 4, 0);
      expect(client.mmioRead(0, REG.ID, 4)).toBe(ID_VALUE);
      client.mmioWrite(0, REG.LEN, 4, 16);
      client.mmioWrite(0, REG.DOORBELL, 4, 1);
      expect(client.mmioRead(0, REG.STATUS, 4)).toBe(STATUS.ERROR);
      client.mmioWrite(0, REG.STATUS, 4, STATUS.ERROR);
      expect(client.mmioRead(0, REG.STATUS, 4)).toBe(0);
    } finally {
      client.close();
    }
  });
});
