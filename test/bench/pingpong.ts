/**
 * The floor of the vfio-user round trip: a raw AF_UNIX stream ping-pong between two processes with
 * the native core's sendMsg/recvMsg and blocking poll waits — a 32-byte request (the size of a
 * 4-byte REGION_READ) answered by a 36-byte reply (its reply). No framing, no dispatch, no event
 * loop: what any request/response over this socket costs at the least.
 *
 * `node pingpong.js --role server --out <file>` serves on fd 3 until EOF, then writes its VmRSS.
 * `node pingpong.js --role client --iters N --warmup W --out <file>` times N round trips on fd 3.
 * @module
 */
import { arg, intArg, parseArgs, readFull, selfRssKiB, sendFull, us, writeResult } from './common.js';

const REQUEST = 32;
const REPLY = 36;
const FD = 3;

const args = parseArgs(process.argv.slice(2));
const role = arg(args, 'role');
const out = arg(args, 'out');
const req = new Uint8Array(REQUEST);
const rep = new Uint8Array(REPLY);
const reqView = new DataView(req.buffer);
const repView = new DataView(rep.buffer);

if (role === 'server') {
  let served = 0;
  while (readFull(FD, req)) {
    // Echo the sequence number, as a reply names its request's msg_id.
    repView.setUint32(0, reqView.getUint32(0, true), true);
    sendFull(FD, rep);
    served++;
  }
  writeResult(out, { served, rssKiB: selfRssKiB() });
} else if (role === 'client') {
  const iters = intArg(args, 'iters');
  const warmup = intArg(args, 'warmup');
  const samples = new Float64Array(iters);
  for (let i = 0; i < warmup + iters; i++) {
    reqView.setUint32(0, i, true);
    const t0 = performance.now();
    sendFull(FD, req);
    if (!readFull(FD, rep)) throw new Error('ping-pong: server closed');
    const t1 = performance.now();
    if (repView.getUint32(0, true) !== i) throw new Error(`ping-pong: reply ${repView.getUint32(0, true)} to request ${i}`);
    if (i >= warmup) samples[i - warmup] = us(t1 - t0);
  }
  writeResult(out, { samples: [...samples] });
} else {
  throw new Error(`--role must be server or client, got ${role}`);
}
