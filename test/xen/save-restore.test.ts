// Xen save/restore on the simulator, the flow `xl save` / `xl restore` drives on real Xen: the
// IOREQ server (mdevkit serve --xen … --save FILE) notices its domain is gone and writes the device
// state; a new domain (new domid) gets the guest's RAM back, a new server restores the device
// (--restore FILE), and the guest continues driving the device where it left it.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { pciSbdf } from '../../adapters/xen/ioreq-abi.js';
import { SimHypervisor } from '../../adapters/xen/sim/hypervisor.js';
import { SimXenHost } from '../../adapters/xen/sim/host.js';
import { runDriverOnSim } from '../../adapters/xen/sim/driver-run.js';
import { BUILTIN_DRIVERS, resolveModule } from '../../cli/load-device.js';
import { serveXen, type ServeXenOptions } from '../../cli/serve-xen.js';
import type { DriverResult } from '../../src/guest-driver.js';
import { packageRoot } from '../../src/native/binding.js';

const run = promisify(execFile);
const cli = join(packageRoot(), 'dist', 'cli', 'main.js');
const dir = mkdtempSync(join(tmpdir(), 'mdevkit-xen-save-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const RAM = 16 << 20;
const DRIVER_RAM = { base: 0x100000, size: 1 << 20 };
const pci = { segment: 0, bus: 0, device: 5, fn: 0 };
const sbdf = pciSbdf(0, 0, 5, 0);

function options(host: SimXenHost, extra: Partial<ServeXenOptions>): ServeXenOptions {
  return { host, pci, fixedBars: {}, claimConfigLatch: false, bufioreq: 'atomic', verbose: false, domainPollMs: 20, ...extra };
}

/** `before` then `after` on one domain that is never saved: what the guest should see. */
async function reference(device: string, driver: string): Promise<DriverResult> {
  const hv = new SimHypervisor({ domid: 9, ramBytes: RAM });
  let result: DriverResult = {};
  await serveXen(device, options(new SimXenHost(hv), {
    onServing: async () => {
      await runDriverOnSim(hv, driver, { sbdf }, { entry: 'before' });
      result = (await runDriverOnSim(hv, driver, { sbdf, placeBars: false }, { entry: 'after' })).result;
      hv.close();
    },
  }));
  return result;
}

describe.each(['edu', 'vgpu', 'bochs-display'])('%s survives the domain\'s save and restore (simulator)', (device) => {
  it('xl save: the server saves when the domain is gone; xl restore: a new domain, a new server, the guest continues', async () => {
    const driver = resolveModule(device, BUILTIN_DRIVERS, 'driver');
    const expected = await reference(device, driver);
    const stateFile = join(dir, `${device}.state`);
    // The first domain: the guest's first half, then `xl save` (its RAM kept, the domain destroyed).
    const a = new SimHypervisor({ domid: 3, ramBytes: RAM });
    let guestRam: Uint8Array | null = null;
    // The RAM BARs' pages (VRAM served as guest RAM) where the guest placed them: the domain's
    // memory, which `xl save` saves with the rest of the p2m.
    let ramBars: { gfn: bigint; bytes: Uint8Array }[] = [];
    await serveXen(device, options(new SimXenHost(a), {
      saveFile: stateFile,
      onServing: async (server) => {
        await runDriverOnSim(a, driver, { sbdf }, { entry: 'before' });
        guestRam = a.readGuest(DRIVER_RAM.base, DRIVER_RAM.size);
        ramBars = server.ramBars().filter((rb) => rb.placed).map((rb) => ({ gfn: rb.gfn, bytes: a.readGuest(Number(rb.gfn) * 4096, rb.pages * 4096) }));
        a.close();
      },
    }));
    expect(existsSync(stateFile)).toBe(true);
    if (device !== 'edu') expect(ramBars.length).toBe(1);
    // The restored domain: another domid, the guest's RAM back — with the RAM BARs' pages at the
    // BARs' addresses, as `xl restore` populates them (its page limit raised to hold them) — and
    // the device from the file. The new server populates its own pages and relocates them onto
    // the BARs, which frees the restored ones: the domain ends up holding as many pages as before.
    const b = new SimHypervisor({ domid: 4, ramBytes: RAM });
    b.writeGuest(DRIVER_RAM.base, guestRam!);
    const barPages = ramBars.reduce((n, rb) => n + rb.bytes.length / 4096, 0);
    b.setMaxPages(b.domainPages().maxPages + barPages);
    for (const rb of ramBars) {
      const gfns = [...Array(rb.bytes.length / 4096).keys()].map((i) => rb.gfn + BigInt(i));
      expect(b.populatePhysmap(gfns)).toBe(gfns.length);
      b.writeGuest(Number(rb.gfn) * 4096, rb.bytes);
    }
    const restoredPages = b.domainPages().totPages;
    let after: DriverResult = {};
    let servedPages = 0;
    await serveXen(device, options(new SimXenHost(b), {
      restoreFile: stateFile,
      onServing: async (server) => {
        after = (await runDriverOnSim(b, driver, { sbdf, placeBars: false }, { entry: 'after' })).result;
        expect(server.ramBars().map((rb) => ({ gfn: rb.gfn, placed: rb.placed }))).toEqual(ramBars.map((rb) => ({ gfn: rb.gfn, placed: true })));
        servedPages = b.domainPages().totPages;
        b.close();
      },
    }));
    expect(after).toEqual(expected);
    expect(servedPages).toBe(restoredPages);
    if (device === 'vgpu') expect(after).toMatchObject({ ringHead: 128, ringTail: 192, fence: 2, fenceRam: 2, pba: 1, pendingDelivered: true, irq3: true, fenceAfter: 3, ringHeadAfter: 192, error: 0 });
    if (device === 'edu') expect(after).toMatchObject({ liveness: ~0x0badf00d >>> 0, factorial: 362880, msiPending: 1, pendingDelivered: true, bufferOk: true, ramOk: true });
    if (device === 'bochs-display') expect(after['mode']).toEqual([640, 480, 32, 0x41, 640]);
  });
});

/** Runs `mdevkit serve …` until it says it is serving, then SIGTERM; its stdout and exit code. */
async function serveOnce(args: string[]): Promise<{ out: string; code: number | null }> {
  const child = execFile(process.execPath, [cli, 'serve', ...args]);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', () => out.includes('serving') && resolve());
    void exited.then((code) => reject(new Error(`exited ${code} before serving`)));
  });
  child.kill('SIGTERM');
  const code = await exited;
  return { out, code };
}

describe('mdevkit serve --xen-sim --save/--restore', () => {
  it('saves on SIGTERM; restores a saved state; refuses a corrupt or foreign file before serving, naming why', async () => {
    const file = join(dir, 'cli.state');
    const saved = await serveOnce(['edu', '--xen-sim', '--bdf', '00:05.0', '--save', file]);
    expect(saved.code).toBe(0);
    expect(saved.out).toMatch(/device state saved to .*cli\.state \(\d+ bytes\): SIGTERM/);
    const restored = await serveOnce(['edu', '--xen-sim', '--bdf', '00:05.0', '--restore', file]);
    expect(restored.code).toBe(0);
    expect(restored.out).toMatch(/state restored from .*cli\.state \(\d+ bytes\)/);
    const bad = Buffer.from(readFileSync(file));
    bad[30] ^= 1;
    writeFileSync(join(dir, 'bad.state'), bad);
    await expect(run(process.execPath, [cli, 'serve', 'edu', '--xen-sim', '--restore', join(dir, 'bad.state')])).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringMatching(/EBADMSG: restore: .*bad\.state was refused, the device is unchanged: .*checksum mismatch/),
    });
    await expect(run(process.execPath, [cli, 'serve', 'vgpu', '--xen-sim', '--restore', file])).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringMatching(/image is for 1234:11e8, device is 1b36:7fa0/),
    });
  });
});
