/**
 * The live view's page: one HTML document and one script, served by {@link DisplayView} from
 * memory. The script opens the WebSocket, draws tiles into a canvas and shows the mode, the
 * counters and the device's trap statistics. It never sends anything.
 * @module
 */

/** The HTML document (`GET /`). */
export const VIEW_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mdevkit live view</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/view.css">
</head>
<body>
<header>
  <h1>mdevkit <span id="device"></span></h1>
  <p><span id="connection" data-state="connecting">connecting…</span> · mode <span id="mode">–</span></p>
</header>
<main>
  <div id="screen"><canvas id="canvas" width="640" height="480"></canvas><div id="overlay">no picture yet</div></div>
  <aside>
    <h2>Frames</h2>
    <table id="frames"></table>
    <h2>Traps</h2>
    <table id="stats"></table>
  </aside>
</main>
<script src="/view.js"></script>
</body>
</html>
`;

/** The style sheet (`GET /view.css`). */
export const VIEW_CSS = `body { font: 14px system-ui, sans-serif; margin: 1em; background: #1d1f21; color: #ddd; }
h1 { font-size: 1.2em; margin: 0; } h2 { font-size: 1em; margin: 1em 0 0.3em; }
header p { margin: 0.3em 0 1em; color: #aaa; }
main { display: flex; gap: 1.5em; align-items: flex-start; flex-wrap: wrap; }
#screen { position: relative; background: #000; line-height: 0; }
#canvas { max-width: 100%; image-rendering: pixelated; }
#overlay { position: absolute; inset: 0; display: flex; align-items: center; justify-content: center; line-height: normal; color: #888; background: #000; }
#overlay[hidden] { display: none; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
td { padding: 1px 8px 1px 0; } td:last-child { text-align: right; color: #fff; }
[data-state="open"] { color: #8c8; } [data-state="closed"] { color: #c88; }
`;

/** The script (`GET /view.js`): receives, never sends. */
export const VIEW_JS = `'use strict';
(() => {
  const canvas = document.getElementById('canvas');
  const ctx = canvas.getContext('2d');
  const overlay = document.getElementById('overlay');
  const modeEl = document.getElementById('mode');
  const connection = document.getElementById('connection');
  const counts = { updates: 0, tiles: 0, bytes: 0, lastSeq: 0 };
  let plane = null;
  let framesTable = {};

  function table(el, rows) {
    el.replaceChildren(...rows.map(([k, v]) => {
      const tr = document.createElement('tr');
      const a = document.createElement('td');
      const b = document.createElement('td');
      a.textContent = k;
      b.textContent = String(v);
      tr.append(a, b);
      return tr;
    }));
  }
  function flatten(prefix, value, out) {
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) flatten(prefix ? prefix + '.' + k : k, v, out);
    } else if (typeof value === 'number' || typeof value === 'string' || typeof value === 'boolean') {
      out.push([prefix, value]);
    }
    return out;
  }
  function showFrames() {
    table(document.getElementById('frames'), [
      ['updates received', counts.updates],
      ['tiles received', counts.tiles],
      ['bytes received', counts.bytes],
      ['last update', counts.lastSeq],
      ...Object.entries(framesTable),
    ]);
    document.body.dataset.updates = String(counts.updates);
  }
  function showMode() {
    if (!plane) {
      modeEl.textContent = 'none';
      overlay.textContent = 'no valid mode';
      overlay.hidden = false;
    } else {
      modeEl.textContent = plane.width + '×' + plane.height + ' ' + plane.format + (plane.byteOrder === 'big' ? ' (big endian)' : '') + (plane.blanked ? ', blanked' : '');
      overlay.textContent = 'blanked';
      overlay.hidden = !plane.blanked;
    }
    document.body.dataset.mode = plane ? plane.width + 'x' + plane.height + (plane.blanked ? '-blanked' : '') : 'none';
  }
  function onText(msg) {
    if (msg.type === 'hello') {
      document.getElementById('device').textContent = msg.device;
      document.title = 'mdevkit: ' + msg.device;
    } else if (msg.type === 'mode') {
      plane = msg.plane;
      if (plane && (canvas.width !== plane.width || canvas.height !== plane.height)) {
        canvas.width = plane.width;
        canvas.height = plane.height;
      }
      showMode();
    } else if (msg.type === 'stats') {
      framesTable = Object.fromEntries(flatten('', msg.frames, []));
      table(document.getElementById('stats'), flatten('', msg.device, []));
      showFrames();
    }
  }
  function onTiles(buf) {
    const view = new DataView(buf);
    const seq = view.getUint32(0, true);
    const n = view.getUint16(4, true);
    let off = 8;
    for (let i = 0; i < n; i++) {
      const x = view.getUint16(off, true), y = view.getUint16(off + 2, true);
      const w = view.getUint16(off + 4, true), h = view.getUint16(off + 6, true);
      off += 8;
      const bytes = w * h * 4;
      ctx.putImageData(new ImageData(new Uint8ClampedArray(buf, off, bytes), w, h), x, y);
      off += bytes;
    }
    counts.updates++;
    counts.tiles += n;
    counts.bytes += buf.byteLength;
    counts.lastSeq = seq;
    showFrames();
  }
  function connect() {
    const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => { connection.textContent = 'live'; connection.dataset.state = 'open'; };
    ws.onclose = () => {
      connection.textContent = 'disconnected (retrying)';
      connection.dataset.state = 'closed';
      setTimeout(connect, 1000);
    };
    ws.onmessage = (ev) => (typeof ev.data === 'string' ? onText(JSON.parse(ev.data)) : onTiles(ev.data));
  }
  showMode();
  showFrames();
  connect();
})();
`;
