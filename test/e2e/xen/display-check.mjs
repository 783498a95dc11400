// The display checks of the real-Xen e2e, run in dom0 by dom0-init.sh once the guest is done and
// the bochs-display server has exited. Reads <dir>/display.json (test/e2e/display/watch.mjs: the
// steps, the PNGs it saw, the guest's lines) and <dir>/stats-bochs.json (the server's --stats:
// VRAM pages reported per frame by track_dirty_vram, latencies), checks the frames against the
// test image of test/e2e/display/frames.mjs (decoded with pngjs, compared pixel for pixel), and
// prints, on dom0's console:
//   E2E-DISPLAY <name> ok=<bool> <details>             one line per check
//   E2E-DISPLAY-FIGURES <key=value ...>                figures (not asserted)
//   E2E-DISPLAY-RESULT ok=<bool> sha256=<frame hash> …
//   E2E-DISPLAY-PNG-BEGIN name=<n> bytes=<n> sha256=<file hash>, E2E-DISPLAY-PNG <seq> <base64>…,
//   E2E-DISPLAY-PNG-END name=<n>                        the matched frames, for the host (run.sh)
// Usage: node display-check.mjs <dir>
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TEST_MODE, compareFrame, frameSha256, inkIn, readPng, testImageRgba } from '../display/frames.mjs';

const dir = process.argv[2];
const readJson = (f) => {
  try {
    return JSON.parse(readFileSync(join(dir, f), 'utf8'));
  } catch {
    return null;
  }
};
const watch = readJson('display.json');
const stats = readJson('stats-bochs.json');
const display = stats?.display ?? null;
const checks = [];
const check = (name, ok, details) => {
  checks.push(ok);
  console.log(`E2E-DISPLAY ${name} ok=${ok} ${details}`);
};
const step = (name) => watch?.steps?.[name] ?? null;
const line = (re) => watch?.lines?.map((l) => l.replace(/^[\d.]+ /, '')).find((l) => re.test(l)) ?? '';

check('no-driver', step('no-driver')?.ok === true, 'no PNG before the guest loads a display driver');
const fb = line(/^QE disp fb0 /);
const info = line(/^QE disp fb xres=/);
check('driver', /present=yes driver=bochs-drm/.test(fb) && /xres=1024 yres=768 .*bpp=32/.test(info), `${fb.replace('QE disp ', '')}; ${info.replace('QE disp ', '')}`);

// The image: the frame the watcher matched, decoded again here and compared with the definition.
const want = testImageRgba(TEST_MODE.width, TEST_MODE.height, 0);
const imageFile = join(dir, 'frame-image.png');
const image = existsSync(imageFile) ? readPng(imageFile) : null;
const cmp = compareFrame(image, TEST_MODE.width, TEST_MODE.height, want);
const sha = image ? frameSha256(image.data) : 'none';
check('test-image', step('image')?.ok === true && cmp.equal, `the test image written to /dev/fb0 is the server's PNG pixel for pixel${cmp.equal ? '' : `: ${cmp.why || step('image')?.why}`} (frame sha256 ${sha})`);

const textFile = join(dir, 'frame-text.png');
const text = existsSync(textFile) ? readPng(textFile) : null;
const ink = inkIn(text, 0, 0, 71 * 8, 16);
check('console-text', step('text')?.ok === true && ink >= 100, `back in KD_TEXT, fbcon drew the echoed line: ${ink} lit pixels in the text area${step('text')?.ok ? '' : ` (${step('text')?.why ?? 'no step'})`}`);
check('dirty-source', display?.source === 'track_dirty_vram', `the server took changed VRAM pages from ${display?.source ?? 'nothing (no --stats display figures)'}`);

// Figures. The watcher's clock: the guest's line seen in the console log → the PNG seen.
const m = watch?.markers ?? {};
const img = step('image');
const ms = (a, b) => (typeof a === 'number' && typeof b === 'number' ? `${Math.round(a - b)}` : 'n/a');
const frames = display?.frames ?? [];
// The server's frame that showed the image: the watcher notices the PNGs in the order the server
// writes them; when it noticed every one (as many, same sizes), the same index is that frame.
const seen = watch?.frames ?? [];
const shaAt = seen.findIndex((f) => f.sha256 === sha);
const aligned = shaAt >= 0 && frames.length >= seen.length && seen.every((f, i) => f.width === frames[i].width && f.height === frames[i].height);
const imageFrame = aligned ? frames[shaAt] : null;
console.log(
  `E2E-DISPLAY-FIGURES write_us=${m.imageWriteUs ?? 'n/a'} write_end_to_png_ms=${ms(img?.pngAt, m.imageWrittenAt)} write_start_to_png_ms=${ms(img?.pngAt, m.imageWriteAt)}` +
    ` image_frame_pages=${imageFrame?.pages ?? 'n/a'} image_frame_server_latency_ms=${imageFrame?.latencyMs ?? 'n/a'}` +
    ` pages_per_frame=${frames.map((f) => `${f.pages}${f.reason === 'change' ? '' : `(${f.reason})`}`).join(',') || 'n/a'}` +
    ` server_latency_p50_ms=${display?.latencyMs?.p50 ?? 'n/a'} png_write_p50_ms=${display?.writeMs?.p50 ?? 'n/a'} refresh_p50_ms=${display?.refreshMs?.p50 ?? 'n/a'}` +
    ` text_step_ms=${ms(step('text')?.pngAt, step('text')?.seenAt)} relocations=${stats?.server?.relocations ?? 'n/a'} invalidates=${stats?.server?.invalidates ?? 'n/a'}`,
);
const ok = checks.every(Boolean);
console.log(`E2E-DISPLAY-RESULT ok=${ok} sha256=${sha} mode=${image ? `${image.width}x${image.height}` : 'none'} source=${display?.source ?? 'none'}`);

// The matched frames for the host, base64 in numbered lines (Xen's own messages may interleave).
for (const name of ['frame-image.png', 'frame-text.png']) {
  const file = join(dir, name);
  if (!existsSync(file)) continue;
  const bytes = readFileSync(file);
  console.log(`E2E-DISPLAY-PNG-BEGIN name=${name} bytes=${bytes.length} sha256=${createHash('sha256').update(bytes).digest('hex')}`);
  const b64 = bytes.toString('base64');
  for (let i = 0, seq = 0; i < b64.length; i += 96, seq++) console.log(`E2E-DISPLAY-PNG ${seq} ${b64.slice(i, i + 96)}`);
  console.log(`E2E-DISPLAY-PNG-END name=${name}`);
}
process.exitCode = ok ? 0 : 1;
