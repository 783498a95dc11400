/**
 * Which ioreq server an emulated access goes to: the simulator's version of Xen's
 * hvm_select_ioreq_server() (xen/arch/x86/hvm/ioreq.c), shared by the hypervisor (over its live
 * range sets) and by vCPU threads (over their copy of the published ones).
 *
 * The rules reproduced:
 * - servers are tried from the highest id down (Xen iterates its server array backwards, so the
 *   most recently created server wins when several cover an address); disabled servers are skipped;
 * - a port access goes to a server whose port set contains `[port, port + size - 1]`;
 * - a memory access goes to a server whose memory set contains every byte it touches, including
 *   all `count` repetitions of a string instruction, downwards when the direction flag is set;
 * - an access to the PCI configuration data ports 0xcfc-0xcff while the address latched at 0xcf8
 *   has its enable bit set is a configuration cycle: it goes to the server whose PCI set contains
 *   the SBDF (segment 0, bus/device/function from 0xcf8), and the ioreq becomes IOREQ_TYPE_PCI_CONFIG
 *   with address SBDF << 32 | register. If no server claims the SBDF, nobody gets it (the port set
 *   is not consulted), so the guest reads all-ones as from an absent function;
 * - anything no server claims is completed by Xen itself: reads return all-ones, writes are dropped.
 * @module
 */
import { IoreqType } from '../ioreq-abi.js';
import { MAX_IOREQ_SERVERS } from './layout.js';
import type { RangeLookup } from './rangeset.js';

/** The address spaces a guest access can target. */
export type SimSpace = 'pio' | 'mmio' | 'pci';

/** One server as routing sees it. */
export interface RoutableServer {
  /** Whether the server is enabled (set_ioreq_server_state). */
  readonly enabled: boolean;
  /** Its port, memory and PCI range sets, indexed by XEN_DMOP_IO_RANGE_*. */
  readonly ranges: readonly [RangeLookup, RangeLookup, RangeLookup];
}

/** An access to route, in the terms of the ioreq Xen would build for it. */
export interface RouteRequest {
  /** The address space. 'pci' is a configuration cycle whose SBDF and register are already decoded. */
  readonly space: SimSpace;
  /** Port number, guest physical address, or (for 'pci') SBDF << 32 | register. */
  readonly addr: bigint;
  /** Access size in bytes. */
  readonly size: number;
  /** Repetitions (string instructions); 1 otherwise. */
  readonly count: number;
  /** Direction flag: a string instruction walks down from `addr`. */
  readonly df: boolean;
}

/** Where an access goes. */
export interface Route {
  /** The server id. */
  readonly id: number;
  /** The ioreq type the server receives (PIO, COPY or PCI_CONFIG). */
  readonly type: number;
  /** The ioreq address (for a configuration cycle through 0xcfc: SBDF << 32 | register). */
  readonly addr: bigint;
}

const RANGE_PORT = 0;
const RANGE_MEMORY = 1;
const RANGE_PCI = 2;

/** CF8 enable bit: 0xcfc-0xcff are configuration data ports only while it is set. */
const CF8_ENABLE = 0x80000000;

/** Mask of the 64-bit unsigned arithmetic Xen's address computations wrap in. */
const U64 = (1n << 64n) - 1n;

/** First and last byte a memory access touches (Xen's hvm_mmio_first_byte/last_byte). */
export function memoryAccessBounds(addr: bigint, size: number, count: number, df: boolean): [bigint, bigint] {
  const s = BigInt(size);
  const n = BigInt(count);
  if (df) return [(addr - (n - 1n) * s) & U64, (addr + s - 1n) & U64];
  return [addr, (addr + n * s - 1n) & U64];
}

/**
 * Decodes a configuration data port access against the 0xcf8 latch (Xen's hvm_pci_decode_addr):
 * the config address SBDF << 32 | register, or null when the port is not 0xcfc-0xcff or the
 * latch's enable bit is clear.
 */
export function decodeCf8Access(port: bigint, cf8: number): bigint | null {
  if ((port & ~3n) !== 0xcfcn || ((cf8 >>> 0) & CF8_ENABLE) === 0) return null;
  const bdf = BigInt(((cf8 >>> 0) >>> 8) & 0xffff); // segment 0
  const register = BigInt((cf8 & 0xfc) + Number(port & 3n));
  return (bdf << 32n) | register;
}

/**
 * Selects the server for an access, as Xen does.
 * @param servers servers by id (`undefined` for a free slot)
 * @param req the access
 * @param cf8 the domain's 0xcf8 latch
 * @returns the route, or null when no enabled server claims the access
 */
export function selectServer(servers: readonly (RoutableServer | undefined)[], req: RouteRequest, cf8: number): Route | null {
  let rangeType: number;
  let type: number;
  let addr = req.addr;
  if (req.space === 'pci') {
    rangeType = RANGE_PCI;
    type = IoreqType.PCI_CONFIG;
  } else if (req.space === 'pio') {
    const config = decodeCf8Access(req.addr, cf8);
    if (config !== null) {
      rangeType = RANGE_PCI;
      type = IoreqType.PCI_CONFIG;
      addr = config;
    } else {
      rangeType = RANGE_PORT;
      type = IoreqType.PIO;
    }
  } else {
    rangeType = RANGE_MEMORY;
    type = IoreqType.COPY;
  }

  let start: bigint;
  let end: bigint;
  if (rangeType === RANGE_PCI) {
    start = end = addr >> 32n;
  } else if (rangeType === RANGE_PORT) {
    start = addr;
    end = (addr + BigInt(req.size) - 1n) & U64;
  } else {
    [start, end] = memoryAccessBounds(addr, req.size, req.count, req.df);
  }
  // An access that wraps around the top of the address space is contained by no range.
  if (end < start) return null;

  for (let id = Math.min(servers.length, MAX_IOREQ_SERVERS) - 1; id >= 0; id--) {
    const s = servers[id];
    if (s === undefined || !s.enabled) continue;
    if (s.ranges[rangeType]!.contains(start, end)) return { id, type, addr };
  }
  return null;
}
