// The display e2e tests' shared definitions, used by the real-QEMU harness (test/e2e/qemu/) and the
// real-Xen one (test/e2e/xen/), so that both print the same DISPLAY-FRAME hash for the same frame:
//   - the test image a guest writes to /dev/fb0 (and the second image of the mode-change step);
//   - the frame hash: SHA-256 over the visible plane's pixels as RGBA8888 — row after row, top
//     to bottom, left to right, 4 bytes per pixel R, G, B, A with A = 0xff, no padding between rows
//     (exactly the `data` of the PNG decoded with pngjs). It depends only on the pixels the display
//     shows, not on stride, offset, pixel format or byte order in VRAM;
//   - the verdict line `DISPLAY-FRAME path=<path> sha256=<hex> png=<file>`.
// Command line (for shell harnesses):
//   node frames.mjs raw <width> <height> <out> [variant]
//                                                the test image as the guest writes it: XRGB8888
//                                                little endian, rows packed (width·4 bytes each)
//   node frames.mjs sha256 <png>                 the frame hash of a PNG
//   node frames.mjs expected-sha256 <w> <h>      the frame hash the test image must give
//   node frames.mjs wait-same <want.png> <png> <seconds>
//                                                polls <png> (every 250 ms) until it shows the
//                                                frame of <want.png>; prints `same=yes|no frame=
//                                                <hash> before=<hash> waited=<s>s [why=…]`, exit 0/1
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
// pngjs from the repository's node_modules (these scripts run outside the package's own modules).
const { PNG } = createRequire(join(HERE, '..', '..', '..', 'package.json'))('pngjs');
export { PNG };

/** The test image's mode: the bochs EDID's preferred mode, which Linux's fbdev takes. */
export const TEST_MODE = Object.freeze({ width: 1024, height: 768 });
/** The second mode of the mode-change step. */
export const SECOND_MODE = Object.freeze({ width: 800, height: 600 });

/**
 * The test image's pixel at (x, y) of a width × height frame, as 0xRRGGBB: red follows x and green
 * follows y across the whole frame, blue is an 8×8 checkerboard with a 64-pixel grid over it (so a
 * wrong stride, offset or row shows), a 1-pixel white border marks the edges (cropping shows) and
 * one 16×16 block per corner has its own colour (flips and mirroring show). `variant` changes the
 * checkerboard phase and the corner colours (the second image of the mode-change step).
 */
export function testPixel(x, y, width, height, variant = 0) {
  if (x === 0 || y === 0 || x === width - 1 || y === height - 1) return 0xffffff;
  const cx = x < 17 ? 0 : x >= width - 17 ? 1 : -1;
  const cy = y < 17 ? 0 : y >= height - 17 ? 2 : -1;
  if (cx >= 0 && cy >= 0) return [0xff0000, 0x00ff00, 0x0000ff, 0xffff00][(cx + cy + variant) % 4];
  const r = Math.floor((x * 255) / (width - 1));
  const g = Math.floor((y * 255) / (height - 1));
  let b = (((x >> 3) ^ (y >> 3) ^ variant) & 1) !== 0 ? 0xc0 : 0x40;
  if (x % 64 === 0 || y % 64 === 0) b = 0xff;
  return (r << 16) | (g << 8) | b;
}

/** The test image as XRGB8888, little endian, rows packed: what the guest writes to VRAM. */
export function testImageXrgb(width, height, variant = 0) {
  const out = Buffer.alloc(width * height * 4);
  for (let y = 0, i = 0; y < height; y++) for (let x = 0; x < width; x++, i += 4) out.writeUInt32LE(testPixel(x, y, width, height, variant), i);
  return out;
}

/** The test image as RGBA8888 (A = 0xff): what the display's PNG must decode to. */
export function testImageRgba(width, height, variant = 0) {
  const out = Buffer.alloc(width * height * 4);
  for (let y = 0, i = 0; y < height; y++) {
    for (let x = 0; x < width; x++, i += 4) {
      const p = testPixel(x, y, width, height, variant);
      out[i] = p >> 16;
      out[i + 1] = (p >> 8) & 0xff;
      out[i + 2] = p & 0xff;
      out[i + 3] = 0xff;
    }
  }
  return out;
}

/** The frame hash (see the top of this file) of RGBA8888 pixels. */
export function frameSha256(rgba) {
  return createHash('sha256').update(rgba).digest('hex');
}

/** Decodes a PNG file (null if it does not exist or is not a whole PNG). */
export function readPng(file) {
  try {
    return PNG.sync.read(readFileSync(file));
  } catch {
    return null;
  }
}

/** Where a decoded PNG differs from the expected RGBA: count and the first few pixels. */
export function compareFrame(png, width, height, rgba) {
  if (!png) return { equal: false, why: 'no PNG' };
  if (png.width !== width || png.height !== height) return { equal: false, why: `size ${png.width}x${png.height}, want ${width}x${height}` };
  if (Buffer.compare(png.data, rgba) === 0) return { equal: true, why: '' };
  let count = 0;
  const first = [];
  for (let i = 0; i < rgba.length; i += 4) {
    if (png.data[i] !== rgba[i] || png.data[i + 1] !== rgba[i + 1] || png.data[i + 2] !== rgba[i + 2] || png.data[i + 3] !== rgba[i + 3]) {
      count++;
      if (first.length < 4) {
        const px = i / 4;
        first.push(`(${px % width},${Math.floor(px / width)}) got ${[...png.data.subarray(i, i + 4)].join('/')} want ${[...rgba.subarray(i, i + 4)].join('/')}`);
      }
    }
  }
  return { equal: false, why: `${count} pixels differ: ${first.join('; ')}` };
}

/** True when every pixel is opaque black. */
export function isBlack(png) {
  if (!png) return false;
  for (let i = 0; i < png.data.length; i += 4) if (png.data[i] || png.data[i + 1] || png.data[i + 2] || png.data[i + 3] !== 0xff) return false;
  return true;
}

/** Pixels that are not black inside a rectangle (text drawn by a console, e.g.). */
export function inkIn(png, x0, y0, w, h) {
  if (!png) return 0;
  let n = 0;
  for (let y = y0; y < Math.min(png.height, y0 + h); y++) {
    for (let x = x0; x < Math.min(png.width, x0 + w); x++) {
      const i = (y * png.width + x) * 4;
      if (png.data[i] || png.data[i + 1] || png.data[i + 2]) n++;
    }
  }
  return n;
}

/** The verdict line both harnesses print. */
export function displayFrameLine(path, sha256, png) {
  return `DISPLAY-FRAME path=${path} sha256=${sha256} png=${png}`;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [cmd, ...args] = process.argv.slice(2);
  if (cmd === 'raw' && (args.length === 3 || args.length === 4)) {
    writeFileSync(args[2], testImageXrgb(Number(args[0]), Number(args[1]), Number(args[3] ?? 0)));
  } else if (cmd === 'sha256' && args.length === 1) {
    const png = readPng(args[0]);
    if (!png) throw new Error(`${args[0]}: not a PNG`);
    console.log(frameSha256(png.data));
  } else if (cmd === 'expected-sha256' && args.length === 2) {
    console.log(frameSha256(testImageRgba(Number(args[0]), Number(args[1]))));
  } else if (cmd === 'wait-same' && args.length === 3) {
    const want = readPng(args[0]);
    const started = Date.now();
    const deadline = started + Number(args[2]) * 1000;
    let got = null;
    let result = { equal: false, why: `${args[0]}: not a PNG` };
    while (want) {
      got = readPng(args[1]);
      result = compareFrame(got, want.width, want.height, want.data);
      if (result.equal || Date.now() >= deadline) break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    const hash = (png) => (png ? frameSha256(png.data) : 'none');
    console.log(`same=${result.equal ? 'yes' : 'no'} frame=${hash(got)} before=${hash(want)} waited=${((Date.now() - started) / 1000).toFixed(1)}s${result.equal ? '' : ` why=${result.why}`}`);
    process.exitCode = result.equal ? 0 : 1;
  } else {
    console.error('usage: frames.mjs raw <w> <h> <out> [variant] | sha256 <png> | expected-sha256 <w> <h> | wait-same <want.png> <png> <seconds>');
    process.exit(2);
  }
}
