// Asserts the real-QEMU e2e run (test/e2e/qemu/run.sh): reads the run directory (guest serial logs
// of each boot, the servers' config space, facts recorded by run.sh), prints one line per check
// with its expected values, the per-access cost figures, and the verdict line:
//   QEMU-E2E-VERDICT PASS <n> checks   |   QEMU-E2E-VERDICT FAIL <failed checks>
// The display checks read display.json (display-watch.mjs) and the display server's --stats file;
// the frames of a passing display phase are copied to <frames-dir> (the demo shows them).
// Usage: node check.mjs <run-dir> [<frames-dir>]
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SECOND_MODE, TEST_MODE, displayFrameLine, frameSha256, testImageRgba } from '../display/frames.mjs';

const dir = process.argv[2];
const framesDir = process.argv[3];
const QEDU = '0000:00:04.0', EDU = '0000:00:05.0', VGPU = '0000:00:06.0';

// ---------------------------------------------------------------- inputs
function readBoot(name) {
  const file = join(dir, `serial-${name}.log`);
  const boot = { name, present: existsSync(file), lines: [], res: {}, pci: {}, cfg: {}, done: false, init: null };
  if (!boot.present) return boot;
  boot.lines = readFileSync(file, 'latin1').replace(/\r/g, '').split('\n');
  for (const line of boot.lines) {
    let m;
    if ((m = /^QE res (\S+) (\S+) ?(.*)$/.exec(line))) {
      (boot.res[m[1]] ??= {})[m[2]] = { line: m[3], kv: Object.fromEntries([...m[3].matchAll(/(\w+)=(\S*)/g)].map((x) => [x[1], x[2]])) };
    } else if ((m = /^QE pci (\S+) (\S+) (\S+) (\S+) ?(\S*)/.exec(line))) {
      boot.pci[m[1]] = { vendor: m[2], device: m[3], class: m[4], revision: m[5] };
    } else if ((m = /^QE cfg (\S+) ([0-9a-f]+)/.exec(line))) {
      boot.cfg[m[1]] = Buffer.from(m[2], 'hex');
    } else if (/^QE-DONE/.test(line)) {
      boot.done = true;
    } else if ((m = /^QE init up=(\S+)/.exec(line))) {
      boot.init = Number(m[1]);
    }
  }
  return boot;
}
const boots = Object.fromEntries(['main', 'fdless', 'kill', 'term'].map((n) => [n, readBoot(n)]));
const facts = {};
if (existsSync(join(dir, 'facts.txt'))) {
  for (const line of readFileSync(join(dir, 'facts.txt'), 'utf8').split('\n')) {
    const i = line.indexOf(' ');
    if (i > 0) facts[line.slice(0, i)] = line.slice(i + 1);
  }
}
const serverCfg = (name) => (existsSync(join(dir, `cfg-${name}.hex`)) ? Buffer.from(readFileSync(join(dir, `cfg-${name}.hex`), 'utf8').trim(), 'hex') : null);

// ---------------------------------------------------------------- check helpers
const results = [];
function report(name, ok, what, details = '') {
  results.push({ name, ok });
  console.log(`QEMU-E2E-CHECK ${ok ? 'PASS' : 'FAIL'} ${name}: ${what}${details ? ` | ${details}` : ''}`);
}

// A predicate with a description, for values that are not compared exactly.
const atLeast = (n) => ({ test: (v) => Number(v) >= n, text: `>=${n}` });
const below = (n) => ({ test: (v) => v !== undefined && Number(v) >= 0 && Number(v) < n, text: `0..<${n}` });

// Compares a module result against expected key=value pairs. Missing result = failure.
function expectResult(name, what, boot, bdf, cmd, expected) {
  const b = boots[boot];
  const r = b.res[bdf]?.[cmd];
  const want = Object.entries(expected).map(([k, v]) => `${k}=${typeof v === 'object' ? v.text : v}`).join(' ');
  if (!b.present) return report(name, false, what, `boot "${boot}" did not run`);
  if (!r) return report(name, false, what, `no result for ${bdf} ${cmd} in boot "${boot}" (want ${want})`);
  const bad = [];
  for (const [k, v] of Object.entries(expected)) {
    const got = r.kv[k];
    const ok = typeof v === 'object' ? v.test(got) : got === String(v);
    if (!ok) bad.push(`${k}=${got ?? '(missing)'} want ${typeof v === 'object' ? v.text : v}`);
  }
  report(name, bad.length === 0, `${what} [want ${want}]`, bad.length ? `${bad.join(', ')} | guest: ${r.line}` : `guest: ${r.line}`);
}

// ---------------------------------------------------------------- enumeration + config space
{
  const b = boots.main;
  const want = { [QEDU]: ['0x1234', '0x11e8', '0x00ff00'], [EDU]: ['0x1234', '0x11e8', '0x00ff00'], [VGPU]: ['0x1b36', '0x7fa0', '0x038000'] };
  const bad = [];
  for (const [bdf, [v, d, c]] of Object.entries(want)) {
    const p = b.pci[bdf];
    if (!p) bad.push(`${bdf} missing`);
    else if (p.vendor !== v || p.device !== d || p.class !== c) bad.push(`${bdf} is ${p.vendor}:${p.device} class ${p.class}`);
  }
  report('enumeration', b.present && bad.length === 0, `guest finds QEMU edu ${QEDU}, mdevkit edu ${EDU} (1234:11e8 class 00ff00), vGPU ${VGPU} (1b36:7fa0 class 038000)`,
    b.present ? bad.join(', ') : 'boot "main" did not run');
}

// Bytes the guest may see differently from the server, and why (see the QEMU fact sheet).
function cfgAllowed(server) {
  const allowed = new Map();
  const allow = (from, to, why) => { for (let i = from; i < to; i++) allowed.set(i, why); };
  allow(0x04, 0x08, 'command/status (BIOS and guest own them)');
  allow(0x10, 0x28, 'BAR addresses (BIOS)');
  allow(0x30, 0x34, 'ROM BAR (BIOS)');
  allow(0x3c, 0x3d, 'interrupt line (BIOS)');
  // capability chain from the server's copy
  let pos = server[0x34] & 0xfc;
  for (let n = 0; pos && n < 48; n++) {
    const id = server[pos];
    if (id === 0x10) allow(pos + 2, pos + 0x3c, 'PCIe capability (QEMU presents a root-complex integrated endpoint)');
    pos = server[pos + 1] & 0xfc;
  }
  return allowed;
}
for (const [name, bdf] of [['edu', EDU], ['vgpu', VGPU]]) {
  const server = serverCfg(name);
  const guest = boots.main.cfg[bdf];
  if (!server || !guest) {
    report(`config-${name}`, false, `guest config space of ${bdf} vs the server's`, `${server ? '' : 'no server dump '}${guest ? '' : 'no guest dump'}`);
    continue;
  }
  const allowed = cfgAllowed(server);
  const unexpected = [], expectedDiff = [];
  for (let i = 0; i < 256; i++) {
    if (server[i] === guest[i]) continue;
    const d = `0x${i.toString(16).padStart(2, '0')}: server ${server[i].toString(16).padStart(2, '0')} guest ${guest[i].toString(16).padStart(2, '0')}`;
    (allowed.has(i) ? expectedDiff : unexpected).push(d);
  }
  report(`config-${name}`, unexpected.length === 0,
    `guest's 256-byte config space of ${bdf} equals the server's except BIOS/QEMU-owned bytes`,
    `${unexpected.length} unexpected difference(s)${unexpected.length ? ': ' + unexpected.join('; ') : ''}; ${expectedDiff.length} allowed: ${expectedDiff.map((d) => d.split(':')[0]).join(' ')}`);
}

// ---------------------------------------------------------------- BAR MMIO
const EDU_MMIO = { id: '0x010000ed', liveness: '0xedcba987', fact5: 120, fact10: 3628800, irq_raised: '0x4', irq_acked: '0x0' };
expectResult('mmio-qemu-edu', 'reference: QEMU\'s in-process edu ID, liveness, factorial, IRQ status', 'main', QEDU, 'mmio', EDU_MMIO);
expectResult('mmio-edu', 'mdevkit edu BAR0: ID, liveness, factorial 5! and 10!, IRQ status raise/ack', 'main', EDU, 'mmio', EDU_MMIO);
const VGPU_MMIO = { id: '0x55504756', version: '0x00010000', rw: '0x123', fence_value: '0x0', ring_head: 0, error: 0, vram_len: '0x100000' };
expectResult('mmio-vgpu', 'vGPU BAR0: ID, version, a RW register, reset state; BAR2 size', 'main', VGPU, 'mmio', VGPU_MMIO);

// ---------------------------------------------------------------- interrupts
const IRQ = (mode) => ({ mode, rounds: 16, status_ok: 16, handled: atLeast(16), status_after: '0x0' });
expectResult('intx-qemu-edu', 'reference: QEMU edu INTx, 16 raise → handler → ack rounds', 'main', QEDU, 'irq_intx', IRQ('intx'));
expectResult('intx-edu', 'mdevkit edu INTx (level, eventfd + unmask), 16 rounds', 'main', EDU, 'irq_intx', IRQ('intx'));
expectResult('msi-qemu-edu', 'reference: QEMU edu MSI, 16 rounds', 'main', QEDU, 'irq_msi', { ...IRQ('msi'), handled: 16 });
expectResult('msi-edu', 'mdevkit edu MSI, 16 rounds', 'main', EDU, 'irq_msi', { ...IRQ('msi'), handled: 16 });
expectResult('msix-vgpu', 'vGPU MSI-X (error interrupt of a doorbell with the engine off), 16 rounds', 'main', VGPU, 'irq',
  { mode: 'msix', rounds: 16, status_ok: 16, handled: 16, error: 1, int_status_after: '0x0' });

// ---------------------------------------------------------------- DMA
expectResult('dma-qemu-edu', 'reference: QEMU edu DMA RAM → buffer → RAM', 'main', QEDU, 'dma', { to_dev_irq: '0x100', dma_in: 'roundtrip', to_ram_irq: '0x100', dma_out: 'ok' });
expectResult('dma-fd-edu', 'mdevkit edu DMA both ways through fd windows (memfd guest RAM), checked through the buffer\'s MMIO window', 'main', EDU, 'dma',
  { to_dev_irq: '0x100', dma_in: 'ok', to_ram_irq: '0x100', dma_out: 'ok' });
const RING = { irq: '0x1', fence_ram: '0xfe0c0001', fence_value: '0xfe0c0001', ring_head: 96, error: 0, fill: 'ok', blit: 'ok' };
expectResult('vgpu-ring', 'vGPU ring in guest RAM: FILL_RECT + BLIT through the GTT + FENCE; fence in RAM and register, MSI-X, VRAM pixels through BAR2', 'main', VGPU, 'ring', RING);
expectResult('p2p-read', 'peer-to-peer: edu DMA reads the vGPU VRAM BAR (fd-less window → DMA_READ)', 'main', EDU, 'p2p', { read_irq: '0x100', p2p_read: 'ok' });
expectResult('p2p-write', 'peer-to-peer: edu DMA writes the vGPU VRAM BAR (fd-less window → DMA_WRITE)', 'main', EDU, 'p2p', { write_irq: '0x100', p2p_write: 'ok' });

// ---------------------------------------------------------------- second QEMU, fd-less guest RAM
{
  const b = boots.fdless;
  const ok = b.present && b.pci[EDU]?.device === '0x11e8' && b.pci[VGPU]?.device === '0x7fa0';
  report('reconnect-enumeration', ok, 'a second QEMU against the same server processes enumerates both devices', b.present ? '' : 'boot did not run');
}
expectResult('reconnect-mmio-edu', 'second QEMU: edu BAR0 as in the first', 'fdless', EDU, 'mmio', EDU_MMIO);
expectResult('reconnect-mmio-vgpu', 'second QEMU: vGPU BAR0, device reset by QEMU (fence 0, head 0)', 'fdless', VGPU, 'mmio', VGPU_MMIO);
expectResult('dma-fdless-edu', 'edu DMA both ways with fd-less guest RAM (DMA_READ / DMA_WRITE messages)', 'fdless', EDU, 'dma',
  { to_dev_irq: '0x100', dma_in: 'ok', to_ram_irq: '0x100', dma_out: 'ok', to_dev_us: below(1000000), to_ram_us: below(1000000) });
expectResult('vgpu-ring-fdless', 'vGPU ring with fd-less guest RAM, without a timeout (GTT_ROOT and doorbell writes < 1 s, fence IRQ < 1 s)', 'fdless', VGPU, 'ring',
  { ...RING, gtt_write_us: below(1000000), doorbell_write_us: below(1000000), fence_irq_us: below(1000000) });

// ---------------------------------------------------------------- QEMU SIGKILLed / server SIGTERMed
{
  const want = { 'kill.traffic': 'yes', 'kill.edu_alive': 'yes', 'kill.vgpu_alive': 'yes', 'kill.edu_probe': '0x010000ed', 'kill.vgpu_probe': '0x55504756' };
  const bad = Object.entries(want).filter(([k, v]) => facts[k] !== v).map(([k, v]) => `${k}=${facts[k] ?? '(missing)'} want ${v}`);
  report('qemu-sigkill', bad.length === 0, 'QEMU SIGKILLed mid-traffic: both servers live on and answer a new client (ID read)',
    bad.length ? bad.join(', ') : Object.keys(want).map((k) => `${k}=${facts[k]}`).join(' '));
}
for (const [s, bdf] of [['edu', EDU], ['vgpu', VGPU]]) {
  const want = { 'term.traffic': 'yes', [`term.${s}_rc`]: '0', [`term.${s}_socket`]: 'removed' };
  const bad = Object.entries(want).filter(([k, v]) => facts[k] !== v).map(([k, v]) => `${k}=${facts[k] ?? '(missing)'} want ${v}`);
  report(`server-sigterm-${s}`, bad.length === 0, `${s} server SIGTERMed while the guest reads it in a loop: exits 0 and removes its socket`,
    bad.length ? bad.join(', ') : Object.keys(want).map((k) => `${k}=${facts[k]}`).join(' '));
}
{
  const want = { 'term.traffic': 'yes', 'term.qemu_rc': '0', 'term.qemu_abort': 'no', 'term.guest_done': 'yes' };
  const bad = Object.entries(want).filter(([k, v]) => facts[k] !== v).map(([k, v]) => `${k}=${facts[k] ?? '(missing)'} want ${v}`);
  // the guest's read loops ran until their device went away (not until their time limit)
  const spins = [['edu', EDU], ['vgpu', VGPU]].map(([s, bdf]) => [s, boots.term.res[bdf]?.spin]);
  for (const [s, spin] of spins) if (spin?.kv.end !== 'changed') bad.push(`guest ${s} traffic end=${spin?.kv.end ?? '(missing)'} want changed`);
  const traffic = spins.filter(([, spin]) => spin).map(([s, spin]) => `guest ${s} traffic: ${spin.line}`).join('; ');
  const qerr = facts['term.qemu_stderr'] ? ` | QEMU stderr: ${facts['term.qemu_stderr']}` : '';
  report('server-sigterm-qemu', bad.length === 0, 'QEMU survives both servers being SIGTERMed mid-traffic (no abort; the guest\'s reads end when the devices go, it finishes, QEMU exits 0)',
    (bad.length ? bad.join(', ') : Object.keys(want).map((k) => `${k}=${facts[k]}`).join(' ')) + (traffic ? ` | ${traffic}` : '') + qerr);
}

// ---------------------------------------------------------------- display (bochs-display at 00:07.0, main boot)
const readJson = (name) => {
  try {
    return JSON.parse(readFileSync(join(dir, name), 'utf8'));
  } catch {
    return null;
  }
};
const watch = readJson('display.json');
const serverDisplay = readJson('stats-bochs.json')?.display ?? null;
const disp = boots.main.lines.filter((l) => l.startsWith('QE disp '));
const dispMatch = (re) => disp.map((l) => re.exec(l)).find(Boolean) ?? null;
const stepOf = (name) => watch?.steps?.[name] ?? null;
const stepText = (name) => {
  const st = stepOf(name);
  return st ? `${name}: ${st.ok ? 'ok' : `FAILED (${st.why})`}` : `${name}: never announced by the guest`;
};
const wantSha = frameSha256(testImageRgba(TEST_MODE.width, TEST_MODE.height, 0));
const wantSha2 = frameSha256(testImageRgba(SECOND_MODE.width, SECOND_MODE.height, 1));
const displayChecks = [];
const reportDisplay = (name, ok, what, details) => {
  displayChecks.push(ok);
  report(name, ok, what, details);
};
{
  const st = stepOf('no-driver');
  reportDisplay('display-no-driver', st?.ok === true, 'before the guest loads a display driver (no valid mode) the server writes no PNG', watch ? stepText('no-driver') : 'no display.json (watcher did not run)');
}
{
  const order = existsSync(join(dir, 'initramfs', 'drm', 'order')) ? readFileSync(join(dir, 'initramfs', 'drm', 'order'), 'utf8').trim().split('\n') : [];
  const loaded = disp.map((l) => /^QE disp insmod (\S+) rc=(\d+)/.exec(l)).filter(Boolean).map((m) => `${m[1]}=${m[2]}`);
  const fb0 = dispMatch(/^QE disp fb0 present=(\S+) driver=(\S+)/);
  const fb = dispMatch(/^QE disp fb xres=(\d+) yres=(\d+) vxres=(\d+) vyres=(\d+) bpp=(\d+) stride=(\d+)/);
  const bad = [];
  if (order.length === 0) bad.push('no module order staged');
  if (loaded.join(' ') !== order.map((m) => `${m}=0`).join(' ')) bad.push(`insmod ${loaded.join(' ') || '(none)'} want ${order.map((m) => `${m}=0`).join(' ')}`);
  if (fb0?.[1] !== 'yes' || fb0?.[2] !== 'bochs-drm') bad.push(`/dev/fb0 ${fb0 ? `present=${fb0[1]} driver=${fb0[2]}` : 'never reported'} want present=yes driver=bochs-drm`);
  if (!fb || fb[1] !== '1024' || fb[2] !== '768' || fb[5] !== '32') bad.push(`fbdev mode ${fb ? `${fb[1]}x${fb[2]} ${fb[5]} bpp` : 'unknown'} want 1024x768 32 bpp (the EDID's preferred mode)`);
  reportDisplay('display-driver', bad.length === 0, `Debian's own modules load in order (${order.join(', ')}); Linux's bochs DRM driver binds 00:07.0 and /dev/fb0 appears in the EDID's preferred mode 1024x768x32`,
    bad.length ? bad.join('; ') : `fbdev ${fb[1]}x${fb[2]} virtual ${fb[3]}x${fb[4]} bpp ${fb[5]} stride ${fb[6]}`);
}
{
  const st = stepOf('image');
  const ok = st?.ok === true && st.sha256 === wantSha;
  reportDisplay('display-test-image', ok, `the test image written to /dev/fb0 (tty1 in KD_GRAPHICS) is the server's PNG pixel for pixel (frame sha256 ${wantSha.slice(0, 16)}…)`,
    st ? `${stepText('image')}${st.sha256 ? `; PNG sha256 ${st.sha256}` : ''}` : 'step never announced');
}
reportDisplay('display-blank', stepOf('blank')?.ok === true && stepOf('unblank')?.ok === true,
  'fb0 blank (the driver disables the pipe: VGA attribute PAS cleared) gives a black frame; unblank gives the test image back', `${stepText('blank')}; ${stepText('unblank')}`);
{
  const sizes = new Set((serverDisplay?.frames ?? []).map((f) => `${f.width}x${f.height}`));
  const ok = stepOf('drm-mode')?.ok === true && stepOf('restored')?.ok === true && stepOf('drm-mode')?.sha256 === wantSha2;
  reportDisplay('display-modes', ok, 'two modes in one run: KMS SETCRTC to 800x600 with a dumb buffer shows the second image exactly; when the tool closes the device, fbdev restores 1024x768 and the test image',
    `${stepText('drm-mode')}; ${stepText('restored')}; frame sizes the server wrote: ${[...sizes].join(' ') || 'none'}; ${dispMatch(/^QE disp connector .*/)?.[0] ?? ''}`);
}
reportDisplay('display-console-text', stepOf('text')?.ok === true, 'back in KD_TEXT, a line echoed to tty1 is drawn by fbcon: the console text area of the PNG is not blank', stepText('text'));
{
  const want = { 'display.server_rc': '0', 'display.server_socket': 'removed' };
  const bad = Object.entries(want).filter(([k, v]) => facts[k] !== v).map(([k, v]) => `${k}=${facts[k] ?? '(missing)'} want ${v}`);
  if (!serverDisplay) bad.push('no display figures in the server\'s --stats file');
  else if (serverDisplay.frames.at(-1)?.reason !== 'exit') bad.push(`last frame reason ${serverDisplay.frames.at(-1)?.reason} want exit`);
  reportDisplay('display-server', bad.length === 0, 'the display server exits 0 on SIGTERM, writes its last frame and figures, and removes its socket',
    bad.length ? bad.join(', ') : `${serverDisplay.framesWritten} PNGs written in ${serverDisplay.refreshes} page scans`);
}
{
  // Figures: VRAM pages per frame and the time from the guest's write to the PNG being current.
  const frameAt = (sha, after) => watch?.frames?.find((f) => f.sha256 === sha && f.at >= after)?.at ?? null;
  const m = watch?.markers ?? {};
  const imgAt = m.imageWriteAt !== undefined ? frameAt(wantSha, m.imageWriteAt) : null;
  const ms = (a, b) => (a === null || b === undefined || b === null ? '?' : `${Math.round(a - b)} ms`);
  const stepLatency = (name) => {
    const st = stepOf(name);
    return st?.ok ? `${name} ${ms(st.pngAt, st.seenAt)}` : `${name} ?`;
  };
  const s = serverDisplay;
  const server = s
    ? `server (page scan every ${s.intervalMs} ms): pages per frame p50 ${s.pagesPerFrame.p50}, max ${s.pagesPerFrame.max} (frames: ${s.frames.map((f) => `${f.width}x${f.height}${f.blanked ? ' black' : ''}:${f.pages}`).join(', ')}); pages per scan that found any p50 ${s.pagesPerRefresh.p50}; scan that saw a change → PNG in place p50 ${s.latencyMs.p50} ms, max ${s.latencyMs.max} ms; PNG encode+write p50 ${s.writeMs.p50} ms; one scan of 16 MiB p50 ${s.refreshMs.p50} ms`
    : 'server figures missing';
  console.log(`QEMU-E2E-DISPLAY guest write → PNG current (host clock, serial marker → PNG seen): test image (3 MiB written in ${m.imageWriteUs !== undefined ? `${(m.imageWriteUs / 1000).toFixed(1)} ms` : '?'}) from write start ${ms(imgAt, m.imageWriteAt)}, from write end ${ms(imgAt, m.imageWrittenAt)}; step line → PNG: ${['blank', 'unblank', 'drm-mode', 'restored', 'text'].map(stepLatency).join(', ')}; ${server}`);
}
{
  const st = stepOf('image');
  const allOk = displayChecks.every(Boolean);
  let png = st?.file ?? 'none';
  if (allOk && framesDir) {
    // The frames of a passing run, for the demo (npm start) to show.
    mkdirSync(framesDir, { recursive: true });
    copyFileSync(st.file, join(framesDir, 'vfio-user-test-image.png'));
    copyFileSync(stepOf('text').file, join(framesDir, 'vfio-user-console.png'));
    writeFileSync(join(framesDir, 'vfio-user.json'), JSON.stringify({
      recorded: new Date().toISOString(), path: 'vfio-user', sha256: st.sha256, kernel: facts.kernel ?? null, qemu: facts.qemu ?? null,
      testImage: 'vfio-user-test-image.png', console: 'vfio-user-console.png',
    }, null, 1));
    png = join(framesDir, 'vfio-user-test-image.png');
  }
  console.log(displayFrameLine('vfio-user', st?.ok ? st.sha256 : 'none', png));
}

// ---------------------------------------------------------------- figures (not assertions)
{
  const fig = (bdf) => boots.main.res[bdf]?.bench?.kv;
  const us = (ns) => (ns === undefined ? '?' : (Number(ns) / 1000).toFixed(2));
  const parts = [['mdevkit edu (vfio-user)', EDU], ['mdevkit vGPU (vfio-user)', VGPU], ['QEMU in-process edu', QEDU]].map(([label, bdf]) => {
    const f = fig(bdf);
    return f ? `${label}: p50 ${us(f.p50_ns)} µs, p99 ${us(f.p99_ns)} µs, batch mean ${us(f.batch_mean_ns)} µs` : `${label}: no figure`;
  });
  const clock = fig(QEDU)?.clock_ns;
  console.log(`QEMU-E2E-COST trapped 4-byte read of BAR0 ID in the guest kernel (ioread32, 2000 timed reads each, TCG, clock pair ${clock ?? '?'} ns): ${parts.join('; ')}`);
  const irq = (bdf, cmd) => boots.main.res[bdf]?.[cmd]?.kv?.lat_p50_us;
  console.log(`QEMU-E2E-COST interrupt raise → guest handler p50: edu MSI ${irq(EDU, 'irq_msi') ?? '?'} µs (QEMU edu ${irq(QEDU, 'irq_msi') ?? '?'} µs), edu INTx ${irq(EDU, 'irq_intx') ?? '?'} µs (QEMU edu ${irq(QEDU, 'irq_intx') ?? '?'} µs), vGPU MSI-X ${irq(VGPU, 'irq') ?? '?'} µs`);
}

// ---------------------------------------------------------------- verdict
const failed = results.filter((r) => !r.ok).map((r) => r.name);
console.log(failed.length === 0 ? `QEMU-E2E-VERDICT PASS ${results.length} checks` : `QEMU-E2E-VERDICT FAIL ${failed.length}/${results.length}: ${failed.join(' ')}`);
process.exitCode = failed.length === 0 ? 0 : 1;
