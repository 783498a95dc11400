/**
 * A bare vfio-user client for cost attribution: it negotiates VERSION, then sends pre-built
 * 32-byte REGION_READ messages (BAR0 + 0, 4 bytes: edu's ID) to `mdevkit serve` and waits for each
 * 36-byte reply with exactly the floor's socket calls (sendMsg, poll, recvMsg). Its round trip
 * minus the floor is what the server adds; the VfioUserClient round trip minus this one is what
 * the client library adds. Every reply's id, flags and data are checked.
 *
 * `node raw-vfio.js --socket <path> --iters N --warmup W --out <file>`
 * @module
 */
import { setNonBlocking } from '../../src/native/fd.js';
import { closeFd } from '../../src/native/fd.js';
import { connectUnix } from '../../src/native/socket.js';
import { Command, HEADER_SIZE, HeaderFlag, Layout, decodeHeader, encodeHeader } from '../../adapters/vfio/protocol.js';
import { EDU } from '../../examples/edu/index.js';
import { arg, intArg, parseArgs, readFull, sendFull, us, writeResult } from './common.js';

const args = parseArgs(process.argv.slice(2));
const iters = intArg(args, 'iters');
const warmup = intArg(args, 'warmup');
const out = arg(args, 'out');

const fd = connectUnix(arg(args, 'socket'), { nonBlocking: false });
try {
  setNonBlocking(fd, true);
  // VERSION 0.0 without capabilities (the spec's defaults).
  const version = new Uint8Array(HEADER_SIZE + 4);
  encodeHeader(version, { msgId: 0, command: Command.VERSION, msgSize: version.length, flags: HeaderFlag.TYPE_COMMAND, error: 0 });
  sendFull(fd, version);
  const head = new Uint8Array(HEADER_SIZE);
  if (!readFull(fd, head)) throw new Error('server closed during VERSION');
  const vh = decodeHeader(head);
  if (vh.flags & HeaderFlag.ERROR) throw new Error(`VERSION refused: errno ${vh.error}`);
  if (vh.msgSize > HEADER_SIZE && !readFull(fd, new Uint8Array(vh.msgSize - HEADER_SIZE))) throw new Error('server closed during VERSION');

  const L = Layout.regionAccess;
  const req = new Uint8Array(HEADER_SIZE + L.data);
  const reqView = new DataView(req.buffer);
  reqView.setBigUint64(HEADER_SIZE + L.offset, BigInt(EDU.ID), true);
  reqView.setUint32(HEADER_SIZE + L.region, 0, true);
  reqView.setUint32(HEADER_SIZE + L.count, 4, true);
  const rep = new Uint8Array(HEADER_SIZE + L.data + 4);
  const repView = new DataView(rep.buffer);
  if (req.length !== 32 || rep.length !== 36) throw new Error('message sizes are not 32/36 bytes');
  const samples = new Float64Array(iters);
  for (let i = 0; i < warmup + iters; i++) {
    const id = (i + 1) & 0xffff;
    encodeHeader(req, { msgId: id, command: Command.REGION_READ, msgSize: req.length, flags: HeaderFlag.TYPE_COMMAND, error: 0 });
    const t0 = performance.now();
    sendFull(fd, req);
    if (!readFull(fd, rep)) throw new Error('server closed');
    const t1 = performance.now();
    const h = decodeHeader(rep);
    if (h.msgId !== id || h.flags !== HeaderFlag.TYPE_REPLY || h.msgSize !== rep.length) throw new Error(`bad reply ${JSON.stringify(h)}`);
    if (repView.getUint32(HEADER_SIZE + L.data, true) !== EDU.ID_VALUE) throw new Error('reply data is not the ID');
    if (i >= warmup) samples[i - warmup] = us(t1 - t0);
  }
  writeResult(out, { samples: [...samples] });
} finally {
  closeFd(fd);
}
