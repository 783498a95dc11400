import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { binding } from '../../src/native/binding.js';
import * as abi from '../../adapters/xen/abi.js';
import {
  BufIoreq,
  BufferedPage,
  BufioreqMode,
  HvmMemType,
  IoRangeType,
  Ioreq,
  IoreqBits,
  IoreqMemAccess,
  IoreqResource,
  IoreqState,
  IoreqType,
  decodePciConfigAddr,
  pciSbdf,
} from '../../adapters/xen/ioreq-abi.js';

type Layout = Record<string, number>;

/** What native/src/xen_abi.cc read from the installed headers. */
interface XenAbi {
  headersPresent: boolean;
  engineIoreqBits: { STATE_MASK: number; DATA_IS_PTR: number; DIR_READ: number; DF: number; bits: number };
  ioreq: Layout;
  ioreqBitImages: Record<'state' | 'dataIsPtr' | 'dir' | 'df' | 'pad1', Uint8Array>;
  bufIoreq: Layout;
  bufIoreqBitImages: Record<'pad' | 'dir' | 'size' | 'addr', Uint8Array>;
  bufferedPage: Layout;
  ioreqConstants: Record<string, Layout>;
  pciSbdf: [number, number, number, number, number][];
  DmOp: Layout;
  DmOpArgs: Record<string, Layout>;
  XenDmOp: Layout;
  ModifiedMemoryExtent: Layout;
  privcmd: Record<'PrivcmdDmOp' | 'PrivcmdDmOpBuf' | 'PrivcmdMmapBatchV2' | 'PrivcmdMmapResource' | 'PrivcmdHypercall' | 'PrivcmdIoctl' | 'misc', Layout>;
  memory: Record<'Hypercall' | 'XenMemOp' | 'XenMemoryReservation' | 'MemCacheAttr', Layout> & {
    /** Present when <xen/domctl.h> is installed. */
    XenDomctl?: Layout;
    DomctlCmd?: Layout;
    DomctlArgs?: Record<string, Layout>;
    interfaceVersion?: number;
  };
  evtchn: Record<'EvtchnBindInterdomain' | 'EvtchnUnbind' | 'EvtchnNotify' | 'EvtchnRestrictDomid' | 'EvtchnIoctl', Layout>;
}

const xen = binding['xenAbi'] as XenAbi;
const inCi = Boolean(process.env['CI']);

/** A zeroed struct image of `size` bytes with `bytes` stored at `offset`. */
function image(size: number, offset: number, ...bytes: number[]): Uint8Array {
  const out = new Uint8Array(size);
  out.set(bytes, offset);
  return out;
}

describe('Xen ABI constants that need no headers', () => {
  it('ioctl numbers equal the values of the fact sheet (x86_64)', () => {
    expect(abi.PrivcmdIoctl).toEqual({ HYPERCALL: 0x00305000, MMAPBATCH_V2: 0x00205004, DM_OP: 0x00105005, RESTRICT: 0x00025006, MMAP_RESOURCE: 0x00205007 });
    expect(abi.EvtchnIoctl).toEqual({ BIND_INTERDOMAIN: 0x00084501, UNBIND: 0x00044503, NOTIFY: 0x00044504, RESTRICT_DOMID: 0x00024506 });
  });

  it("xen_dm_op's union is as large as its largest member, so the struct is 32 bytes", () => {
    expect(abi.XenDmOp.unionSize).toBe(24);
    expect(abi.XenDmOp.sizeof).toBe(32);
  });

  it('the native engine uses the bit masks and byte of ioreq-abi.ts', () => {
    const { bits, ...masks } = xen.engineIoreqBits;
    expect(masks).toEqual(IoreqBits);
    expect(bits).toBe(Ioreq.bits);
  });

  it('pciSbdf places segment, bus, device and function as XEN_DMOP_PCI_SBDF does, and decodePciConfigAddr inverts it', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0xffff }),
        fc.integer({ min: 0, max: 0xff }),
        fc.integer({ min: 0, max: 0x1f }),
        fc.integer({ min: 0, max: 7 }),
        fc.integer({ min: 0, max: 0xffffffff }),
        (segment, bus, device, fn, register) => {
          const sbdf = pciSbdf(segment, bus, device, fn);
          expect(sbdf).toBeGreaterThanOrEqual(0);
          expect([sbdf >>> 16, (sbdf >>> 8) & 0xff, (sbdf >>> 3) & 0x1f, sbdf & 7]).toEqual([segment, bus, device, fn]);
          // A PCI_CONFIG ioreq's address: SEG[63:48] BUS[47:40] DEV[39:35] FN[34:32] REG[31:0].
          const addr = (BigInt(segment) << 48n) | (BigInt(bus) << 40n) | (BigInt(device) << 35n) | (BigInt(fn) << 32n) | BigInt(register);
          expect(decodePciConfigAddr(addr)).toEqual({ sbdf, register });
        },
      ),
    );
  });

  it.runIf(inCi)('CI has the Xen headers installed (libxen-dev)', () => {
    expect(xen.headersPresent).toBe(true);
  });
});

const skipHeaders = !xen.headersPresent && !inCi;
describe.skipIf(skipHeaders)(
  skipHeaders ? 'Xen ABI against the installed headers (skipped: no Xen headers; install libxen-dev)' : 'Xen ABI against the installed headers',
  () => {
    it('DMOP numbers and argument layouts match dm_op.h', () => {
      expect(abi.DmOp).toEqual(xen.DmOp);
      expect(abi.DmOpArgs).toEqual(xen.DmOpArgs);
      expect(abi.XenDmOp).toEqual(xen.XenDmOp);
      expect(abi.ModifiedMemoryExtent).toEqual(xen.ModifiedMemoryExtent);
      expect(abi.GetIoreqServerInfoFlag.NO_GFNS).toBe(xen.privcmd.misc['NO_GFNS']);
      expect(abi.DOMID_FIRST_RESERVED).toBe(xen.privcmd.misc['DOMID_FIRST_RESERVED']);
    });

    it('privcmd layouts and ioctl numbers match Linux uapi privcmd.h', () => {
      expect(abi.PrivcmdDmOp).toEqual(xen.privcmd.PrivcmdDmOp);
      expect(abi.PrivcmdDmOpBuf).toEqual(xen.privcmd.PrivcmdDmOpBuf);
      expect(abi.PrivcmdMmapBatchV2).toEqual(xen.privcmd.PrivcmdMmapBatchV2);
      expect(abi.PrivcmdMmapResource).toEqual(xen.privcmd.PrivcmdMmapResource);
      expect(abi.PrivcmdIoctl).toEqual(xen.privcmd.PrivcmdIoctl);
      expect(abi.DOMID_SIZE).toBe(xen.privcmd.misc['DOMID_SIZE']);
      expect(abi.XEN_PFN_SIZE).toBe(xen.privcmd.misc['XEN_PFN_SIZE']);
    });

    it('raw hypercalls: numbers, XENMEM_* and struct xen_memory_reservation match xen.h and memory.h; cache types dm_op.h', () => {
      expect(abi.PrivcmdHypercall).toEqual(xen.privcmd.PrivcmdHypercall);
      expect(abi.Hypercall).toEqual(xen.memory.Hypercall);
      expect(abi.XenMemOp).toEqual(xen.memory.XenMemOp);
      expect(abi.XenMemoryReservation).toEqual(xen.memory.XenMemoryReservation);
      expect(abi.MemCacheAttr).toEqual(xen.memory.MemCacheAttr);
    });

    it.skipIf(xen.memory?.XenDomctl === undefined)('struct xen_domctl and XEN_DOMCTL_max_mem match domctl.h (Debian 12: Xen 4.17, interface 0x15)', () => {
      expect(abi.XenDomctl).toEqual(xen.memory.XenDomctl);
      expect(abi.DomctlCmd).toEqual(xen.memory.DomctlCmd);
      expect(abi.DomctlArgs).toEqual(xen.memory.DomctlArgs);
      expect(abi.XEN_DOMCTL_INTERFACE_VERSION_4_17).toBe(xen.memory.interfaceVersion);
    });

    it('evtchn layouts and ioctl numbers match Linux uapi evtchn.h', () => {
      expect(abi.EvtchnBindInterdomain).toEqual(xen.evtchn.EvtchnBindInterdomain);
      expect(abi.EvtchnUnbind).toEqual(xen.evtchn.EvtchnUnbind);
      expect(abi.EvtchnNotify).toEqual(xen.evtchn.EvtchnNotify);
      expect(abi.EvtchnRestrictDomid).toEqual(xen.evtchn.EvtchnRestrictDomid);
      expect(abi.EvtchnIoctl).toEqual(xen.evtchn.EvtchnIoctl);
    });

    it('struct ioreq field offsets match ioreq.h', () => {
      const { bits: _bits, ...fields } = Ioreq;
      expect(fields).toEqual(xen.ioreq);
    });

    it('struct ioreq bit fields sit where IoreqBits says (set one at a time, read the bytes)', () => {
      const at = (mask: number) => image(Ioreq.sizeof, Ioreq.bits, mask);
      expect(new Uint8Array(xen.ioreqBitImages.state)).toEqual(at(IoreqBits.STATE_MASK));
      expect(new Uint8Array(xen.ioreqBitImages.dataIsPtr)).toEqual(at(IoreqBits.DATA_IS_PTR));
      // The image stores dir = IOREQ_READ: DIR_READ set means a read.
      expect(new Uint8Array(xen.ioreqBitImages.dir)).toEqual(at(IoreqBits.DIR_READ));
      expect(new Uint8Array(xen.ioreqBitImages.df)).toEqual(at(IoreqBits.DF));
      // The remaining bit is _pad1, so the four masks and it cover the byte exactly.
      expect(new Uint8Array(xen.ioreqBitImages.pad1)).toEqual(at(0x80));
    });

    it('struct buf_ioreq fields and bit fields match ioreq.h', () => {
      expect(xen.bufIoreq).toEqual({ type: BufIoreq.type, data: BufIoreq.data, sizeof: BufferedPage.slotSize });
      const flags = (value: number) => image(BufferedPage.slotSize, BufIoreq.flags, value);
      expect(new Uint8Array(xen.bufIoreqBitImages.pad)).toEqual(flags(0x1));
      expect(new Uint8Array(xen.bufIoreqBitImages.dir)).toEqual(flags(BufIoreq.DIR_READ));
      expect(new Uint8Array(xen.bufIoreqBitImages.size)).toEqual(flags(BufIoreq.SIZE_MASK));
      expect(BufIoreq.SIZE_MASK >> BufIoreq.SIZE_SHIFT).toBe(3);
      const addr = new Uint8Array(BufferedPage.slotSize);
      new DataView(addr.buffer).setUint32(0, (0xfffff << BufIoreq.ADDR_SHIFT) >>> 0, true);
      expect(new Uint8Array(xen.bufIoreqBitImages.addr)).toEqual(addr);
    });

    it('the buffered ioreq page matches struct buffered_iopage', () => {
      expect(BufferedPage).toEqual(xen.bufferedPage);
    });

    it('ioreq, range, memory-type and resource constants match the headers', () => {
      const c = xen.ioreqConstants;
      expect(IoreqState).toEqual(c['IoreqState']);
      expect(IoreqType).toEqual(c['IoreqType']);
      expect(BufioreqMode).toEqual(c['BufioreqMode']);
      expect(IoRangeType).toEqual(c['IoRangeType']);
      expect(HvmMemType).toEqual(c['HvmMemType']);
      expect(IoreqMemAccess).toEqual(c['IoreqMemAccess']);
      const r = c['IoreqResource']!;
      expect([IoreqResource.TYPE, IoreqResource.FRAME_BUFIOREQ, IoreqResource.frameIoreq(0), IoreqResource.frameIoreq(5)]).toEqual([
        r['TYPE'],
        r['FRAME_BUFIOREQ'],
        r['frameIoreq0'],
        r['frameIoreq5'],
      ]);
    });

    it('pciSbdf equals XEN_DMOP_PCI_SBDF', () => {
      expect(xen.pciSbdf.length).toBeGreaterThan(0);
      for (const [segment, bus, device, fn, sbdf] of xen.pciSbdf) expect(pciSbdf(segment, bus, device, fn)).toBe(sbdf);
    });
  },
);
