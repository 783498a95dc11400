// The migration state machine against the kernel's own description of it (the comment above
// vfio_mig_get_next_state() in drivers/vfio/vfio_main.c, and <linux/vfio.h>), arc by arc, for every
// combination of the optional states.
import { describe, expect, it } from 'vitest';
import { migrationPath, migrationStep } from '../../adapters/vfio/migration.js';
import { MigState, MigrationFlag } from '../../adapters/vfio/protocol.js';

const S = MigState;
const NAMES = Object.fromEntries(Object.entries(S).map(([k, v]) => [v, k])) as Record<number, string>;
const STATES: number[] = [S.STOP, S.RUNNING, S.STOP_COPY, S.RESUMING, S.RUNNING_P2P, S.PRE_COPY, S.PRE_COPY_P2P];
const ALL = MigrationFlag.STOP_COPY | MigrationFlag.P2P | MigrationFlag.PRE_COPY;

const path = (from: number, to: number, flags = ALL) => [from, ...migrationPath(from, to, flags)].map((s) => NAMES[s]).join(' -> ');

// vfio_main.c, verbatim: the arcs a driver implements with every optional state, ...
const DIRECT = `RESUMING -> STOP
STOP -> RESUMING
STOP -> STOP_COPY
STOP_COPY -> STOP
RUNNING -> RUNNING_P2P
RUNNING_P2P -> RUNNING
RUNNING_P2P -> STOP
STOP -> RUNNING_P2P
PRE_COPY -> RUNNING
PRE_COPY -> PRE_COPY_P2P
PRE_COPY_P2P -> PRE_COPY
PRE_COPY_P2P -> RUNNING_P2P
PRE_COPY_P2P -> STOP_COPY
RUNNING -> PRE_COPY
RUNNING_P2P -> PRE_COPY_P2P`;
// ... the combination transitions it steps through ...
const COMBINATIONS = `PRE_COPY -> PRE_COPY_P2P -> STOP_COPY
PRE_COPY -> RUNNING -> RUNNING_P2P
PRE_COPY -> RUNNING -> RUNNING_P2P -> STOP
PRE_COPY -> RUNNING -> RUNNING_P2P -> STOP -> RESUMING
PRE_COPY_P2P -> RUNNING_P2P -> RUNNING
PRE_COPY_P2P -> RUNNING_P2P -> STOP
PRE_COPY_P2P -> RUNNING_P2P -> STOP -> RESUMING
RESUMING -> STOP -> RUNNING_P2P
RESUMING -> STOP -> RUNNING_P2P -> PRE_COPY_P2P
RESUMING -> STOP -> RUNNING_P2P -> RUNNING
RESUMING -> STOP -> RUNNING_P2P -> RUNNING -> PRE_COPY
RESUMING -> STOP -> STOP_COPY
RUNNING -> RUNNING_P2P -> PRE_COPY_P2P
RUNNING -> RUNNING_P2P -> STOP
RUNNING -> RUNNING_P2P -> STOP -> RESUMING
RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY
RUNNING_P2P -> RUNNING -> PRE_COPY
RUNNING_P2P -> STOP -> RESUMING
RUNNING_P2P -> STOP -> STOP_COPY
STOP -> RUNNING_P2P -> PRE_COPY_P2P
STOP -> RUNNING_P2P -> RUNNING
STOP -> RUNNING_P2P -> RUNNING -> PRE_COPY
STOP_COPY -> STOP -> RESUMING
STOP_COPY -> STOP -> RUNNING_P2P
STOP_COPY -> STOP -> RUNNING_P2P -> RUNNING`;
// ... and the transitions it blocks.
const BLOCKED = ['STOP_COPY -> PRE_COPY', 'STOP_COPY -> PRE_COPY_P2P'];

const einval = expect.objectContaining({ code: 'EINVAL', field: 'device_state' });

describe('migration state machine: every optional state supported', () => {
  const lines = [...DIRECT.split('\n'), ...COMBINATIONS.split('\n')];
  it.each(lines)('%s', (line) => {
    const names = line.split(' -> ');
    const from = S[names[0] as keyof typeof S];
    const to = S[names.at(-1) as keyof typeof S];
    expect(path(from, to)).toBe(line);
  });

  it('covers all 42 arcs between the 7 states: 15 direct, 25 combinations, 2 blocked', () => {
    const listed = new Set(lines.map((l) => `${l.split(' -> ')[0]} -> ${l.split(' -> ').at(-1)}`));
    for (const b of BLOCKED) listed.add(b);
    expect(listed.size).toBe(42);
    for (const a of STATES) for (const b of STATES) if (a !== b) expect(listed.has(`${NAMES[a]} -> ${NAMES[b]}`)).toBe(true);
  });

  it.each(BLOCKED)('%s is refused with EINVAL', (line) => {
    const [a, b] = line.split(' -> ') as [keyof typeof S, keyof typeof S];
    expect(() => migrationPath(S[a], S[b], ALL)).toThrow(einval);
  });

  it('a state to itself is no step; ERROR can never be requested, nor left but by a reset; unknown states are EINVAL', () => {
    for (const s of STATES) expect(migrationPath(s, s, ALL)).toEqual([]);
    for (const s of [...STATES, S.ERROR]) expect(() => migrationPath(s, S.ERROR, ALL)).toThrow(einval);
    for (const s of STATES) expect(() => migrationPath(S.ERROR, s, ALL)).toThrow(einval);
    for (const bad of [8, 0xff, 0xffffffff]) expect(() => migrationStep(S.RUNNING, bad, ALL)).toThrow(einval);
  });
});

// The arcs a driver implements for each combination of flags (the same comment): a transition is
// a shortest path over them. Saving states (PRE_COPY, PRE_COPY_P2P, STOP_COPY) may only continue a
// saving session the path starts in, or end it; STOP_COPY never leads back into pre-copy.
function arcsFor(flags: number): [number, number][] {
  const p2p = (flags & MigrationFlag.P2P) !== 0;
  const pre = (flags & MigrationFlag.PRE_COPY) !== 0;
  const arcs: [number, number][] = [[S.RESUMING, S.STOP], [S.STOP, S.RESUMING], [S.STOP, S.STOP_COPY], [S.STOP_COPY, S.STOP]];
  if (p2p) arcs.push([S.RUNNING, S.RUNNING_P2P], [S.RUNNING_P2P, S.RUNNING], [S.RUNNING_P2P, S.STOP], [S.STOP, S.RUNNING_P2P]);
  else arcs.push([S.RUNNING, S.STOP], [S.STOP, S.RUNNING]);
  if (pre && p2p) arcs.push([S.PRE_COPY, S.RUNNING], [S.PRE_COPY, S.PRE_COPY_P2P], [S.PRE_COPY_P2P, S.PRE_COPY], [S.PRE_COPY_P2P, S.RUNNING_P2P], [S.PRE_COPY_P2P, S.STOP_COPY], [S.RUNNING, S.PRE_COPY], [S.RUNNING_P2P, S.PRE_COPY_P2P]);
  else if (pre) arcs.push([S.RUNNING, S.PRE_COPY], [S.PRE_COPY, S.RUNNING], [S.PRE_COPY, S.STOP_COPY]);
  return arcs;
}

const SAVING = new Set<number>([S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY]);

/** Length of the shortest allowed path, or -1 when none is allowed. */
function shortest(from: number, to: number, arcs: [number, number][]): number {
  if (from === S.STOP_COPY && (to === S.PRE_COPY || to === S.PRE_COPY_P2P)) return -1;
  // BFS over (state, still in the saving prefix).
  const start = { s: from, saving: SAVING.has(from), d: 0 };
  const queue = [start];
  const seen = new Set([`${from}:${start.saving}`]);
  while (queue.length) {
    const cur = queue.shift()!;
    if (cur.s === to) return cur.d;
    for (const [a, b] of arcs) {
      if (a !== cur.s) continue;
      if (SAVING.has(b) && b !== to && !cur.saving) continue; // a saving state in the middle
      const next = { s: b, saving: cur.saving && SAVING.has(b), d: cur.d + 1 };
      const key = `${b}:${next.saving}`;
      if (!seen.has(key)) {
        seen.add(key);
        queue.push(next);
      }
    }
  }
  return -1;
}

describe.each([
  ['STOP_COPY', MigrationFlag.STOP_COPY],
  ['STOP_COPY | P2P', MigrationFlag.STOP_COPY | MigrationFlag.P2P],
  ['STOP_COPY | PRE_COPY', MigrationFlag.STOP_COPY | MigrationFlag.PRE_COPY],
  ['STOP_COPY | P2P | PRE_COPY', ALL],
])('migration state machine with %s', (_name, flags) => {
  const arcs = arcsFor(flags);
  const states = STATES.filter((s) => (s !== S.RUNNING_P2P && s !== S.PRE_COPY_P2P) || flags & MigrationFlag.P2P).filter((s) => (s !== S.PRE_COPY && s !== S.PRE_COPY_P2P) || flags & MigrationFlag.PRE_COPY);
  it('takes a shortest path of implemented arcs for every pair, and refuses what has none', () => {
    for (const from of states) {
      for (const to of states) {
        if (from === to) continue;
        const best = shortest(from, to, arcs);
        if (best < 0) {
          expect(() => migrationPath(from, to, flags), `${NAMES[from]} -> ${NAMES[to]}`).toThrow(einval);
          continue;
        }
        const steps = migrationPath(from, to, flags);
        expect(steps.length, path(from, to, flags)).toBe(best);
        let at: number = from;
        for (const next of steps) {
          expect(arcs.some(([a, b]) => a === at && b === next), `${NAMES[at]} -> ${NAMES[next]} in ${path(from, to, flags)}`).toBe(true);
          at = next;
        }
      }
    }
  });

  it('refuses states the device does not offer', () => {
    const absent = STATES.filter((s) => !states.includes(s));
    for (const s of absent) {
      expect(() => migrationPath(S.RUNNING, s, flags)).toThrow(einval);
      expect(() => migrationPath(s, S.RUNNING, flags)).toThrow(einval);
    }
  });
});
