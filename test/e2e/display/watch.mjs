// The harness side of the display phase (guest-display.sh), shared by the real-QEMU e2e (run on
// the host next to the main boot) and the real-Xen e2e (run in dom0 next to the guest). It follows
// the guest's console log and the PNG that `mdevkit serve bochs-display --display-png` keeps; at
// each "QE disp step=NAME" (and at the DRM tool's "QE disp drm-mode" line) it waits until the PNG
// shows what that step should show, then tells the guest to go on ("next" written to <ctl>: QEMU's
// pipe into the guest's ttyS1, or the Xen guest's console pty). It records every PNG it saw and,
// per step, whether and when the PNG matched, copies each matched frame next to <out> as
// frame-<step>.png, and writes everything to <out> as JSON (check.mjs, the Xen dom0's check).
// Times are milliseconds of the watcher's clock since it started.
// Usage: node watch.mjs <console.log> <display.png> <ctl> <out.json> <timeout-s> [poll-ms (default 5)]
import { closeSync, constants, copyFileSync, existsSync, openSync, readSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { SECOND_MODE, TEST_MODE, compareFrame, frameSha256, inkIn, isBlack, readPng, testImageRgba } from '../display/frames.mjs';

const [serialFile, pngFile, ctlIn, outFile, timeoutS, pollArg] = process.argv.slice(2);
const POLL_MS = Number(pollArg ?? 5);
const STEP_TIMEOUT_MS = 60_000;
const t0 = performance.now();
const now = () => Math.round((performance.now() - t0) * 10) / 10;
const runDir = dirname(outFile);

const image1 = testImageRgba(TEST_MODE.width, TEST_MODE.height, 0);
const image2 = testImageRgba(SECOND_MODE.width, SECOND_MODE.height, 1);
/** The console line the guest prints on tty1; fbcon draws it with an 8×16 font at the top left. */
const TEXT_CHARS = 71;
const textInk = (png) => inkIn(png, 0, 0, TEXT_CHARS * 8, 16);

/** What the PNG must show at each step. */
const STEPS = {
  'no-driver': { want: 'no PNG file yet', check: () => (existsSync(pngFile) ? { ok: false, why: 'a PNG exists' } : { ok: true }), immediate: true },
  image: { want: 'the test image, exactly', check: (png) => result(compareFrame(png, TEST_MODE.width, TEST_MODE.height, image1)) },
  blank: { want: 'a black 1024x768 frame', check: (png) => ({ ok: png?.width === TEST_MODE.width && png.height === TEST_MODE.height && isBlack(png), why: png ? `${png.width}x${png.height} not black` : 'no PNG' }) },
  unblank: { want: 'the test image again', check: (png) => result(compareFrame(png, TEST_MODE.width, TEST_MODE.height, image1)) },
  'drm-mode': { want: 'the second image at 800x600, exactly', check: (png) => result(compareFrame(png, SECOND_MODE.width, SECOND_MODE.height, image2)) },
  restored: { want: 'the test image at 1024x768 (fbdev mode restored)', check: (png) => result(compareFrame(png, TEST_MODE.width, TEST_MODE.height, image1)) },
  text: {
    want: 'console text at the top left of a 1024x768 frame',
    check: (png) => {
      if (!png || png.width !== TEST_MODE.width || png.height !== TEST_MODE.height) return { ok: false, why: png ? `${png.width}x${png.height}` : 'no PNG' };
      const ink = textInk(png);
      return { ok: ink >= 100 && !compareFrame(png, TEST_MODE.width, TEST_MODE.height, image1).equal, why: `ink ${ink} in the text area` };
    },
  },
};
const result = (c) => ({ ok: c.equal, why: c.why });

const out = { steps: {}, frames: [], lines: [], markers: {}, timedOut: false, done: false };
let awaiting = null; // { name, since, deadline }
let lastPng = null; // { key, png, at }
let serialOffset = 0;
let partial = '';

function save() {
  writeFileSync(outFile, JSON.stringify(out, null, 1));
}

function tellGuest() {
  // O_NONBLOCK: ENXIO instead of blocking forever when QEMU (the reader) is gone.
  try {
    const fd = openSync(ctlIn, constants.O_WRONLY | constants.O_NONBLOCK);
    writeSync(fd, 'next\n');
    closeSync(fd);
    console.log(`${now()} told the guest to go on`);
  } catch (e) {
    out.lines.push(`ctl write failed: ${e.code ?? e.message}`);
    console.log(`${now()} ctl write failed: ${e.code ?? e.message}`);
  }
}

/** Reads the PNG when the file changed; records each new frame. */
function pollPng() {
  let st;
  try {
    st = statSync(pngFile);
  } catch {
    return lastPng;
  }
  const key = `${st.ino}:${st.size}:${st.mtimeMs}`;
  if (lastPng?.key === key) return lastPng;
  const seen = now(); // when the new file was noticed, before the decode's own cost
  const png = readPng(pngFile);
  if (!png) return lastPng;
  lastPng = { key, png, at: seen };
  out.frames.push({ at: lastPng.at, width: png.width, height: png.height, sha256: frameSha256(png.data), black: isBlack(png) });
  return lastPng;
}

function finishStep(ok, why) {
  const s = out.steps[awaiting.name];
  s.ok = ok;
  s.matchedAt = ok ? now() : null;
  s.why = why ?? '';
  console.log(`${now()} step ${awaiting.name}: ${ok ? 'ok' : `FAILED ${s.why}`}`);
  if (ok && lastPng) {
    s.sha256 = frameSha256(lastPng.png.data);
    s.pngAt = lastPng.at;
    s.file = join(runDir, `frame-${awaiting.name}.png`);
    copyFileSync(pngFile, s.file);
  }
  awaiting = null;
  save();
  tellGuest();
}

function onLine(line) {
  const at = now();
  let m;
  if (!line.startsWith('QE disp') && !line.startsWith('QE-DONE')) return;
  out.lines.push(`${at} ${line}`);
  if ((m = /^QE disp step=(\S+)/.exec(line)) || (m = /^QE disp (drm-mode) /.exec(line))) {
    const name = m[1];
    if (name === 'image-write') {
      out.markers.imageWriteAt = at;
      return;
    }
    const spec = STEPS[name];
    if (!spec) return;
    out.steps[name] = { want: spec.want, seenAt: at, ok: false };
    console.log(`${at} step ${name}: waiting for ${spec.want}`);
    awaiting = { name, since: at, deadline: at + STEP_TIMEOUT_MS, checked: undefined, last: null };
    if (spec.immediate) {
      const r = spec.check();
      finishStep(r.ok, r.why);
    }
  } else if ((m = /^QE disp fbwrite .*write_us=(\d+)/.exec(line))) {
    out.markers.imageWrittenAt = at;
    out.markers.imageWriteUs = Number(m[1]);
  } else if (/^QE disp end/.test(line) || /^QE-DONE/.test(line)) {
    out.done = true;
  }
}

function pollSerial() {
  let fd;
  try {
    fd = openSync(serialFile, 'r');
  } catch {
    return;
  }
  try {
    const buf = Buffer.alloc(65536);
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, serialOffset);
      if (n <= 0) break;
      serialOffset += n;
      partial += buf.subarray(0, n).toString('latin1');
    }
  } finally {
    closeSync(fd);
  }
  const lines = partial.replace(/\r/g, '').split('\n');
  partial = lines.pop();
  for (const l of lines) onLine(l);
}

const deadline = Number(timeoutS) * 1000;
process.on('SIGTERM', () => {
  out.lines.push(`${now()} watcher: SIGTERM`);
  save();
  process.exit(0);
});
save();
for (;;) {
  pollSerial();
  const p = pollPng();
  if (awaiting) {
    // Checked again only when the PNG changed (or the step is new).
    if (awaiting.checked !== (p?.key ?? null)) {
      awaiting.checked = p?.key ?? null;
      awaiting.last = STEPS[awaiting.name].check(p?.png ?? null);
    }
    if (awaiting.last.ok) finishStep(true);
    else if (now() > awaiting.deadline) finishStep(false, `timed out: ${awaiting.last.why}`);
  }
  if (out.done && !awaiting) break;
  if (now() > deadline) {
    out.timedOut = true;
    break;
  }
  await new Promise((r) => setTimeout(r, POLL_MS));
}
save();
