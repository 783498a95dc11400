/**
 * Benchmark bookkeeping: percentiles of latency samples, the markdown table, the JSON figures and
 * hand-written SVG histograms (no plotting dependency).
 * @module
 */

/** Latency samples of one path, in microseconds (or another unit given with the figure). */
export interface Summary {
  n: number;
  p50: number;
  p99: number;
  min: number;
  max: number;
}

/** Nearest-rank percentile of an ascending array. */
function rank(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i]!;
}

/** Sorted copy of the samples. */
export function sorted(samples: ArrayLike<number>): Float64Array {
  return Float64Array.from(samples).sort();
}

/** p50, p99, min and max of the samples. */
export function summarize(samples: ArrayLike<number>): Summary {
  const s = sorted(samples);
  return { n: s.length, p50: rank(s, 0.5), p99: rank(s, 0.99), min: s[0] ?? NaN, max: s[s.length - 1] ?? NaN };
}

/** Percentile `q` (0..1) of unsorted samples. */
export function percentile(samples: ArrayLike<number>, q: number): number {
  return rank(sorted(samples), q);
}

/** One row of the result table. */
export interface Figure {
  /** What was measured, without the placement. */
  name: string;
  /** `same`, `split`, `unpinned`, or `cpu0` for single-threaded figures. */
  placement: string;
  unit: string;
  /** p50 (or the single value, for figures that are not latencies). */
  value: number;
  /** p99, for latency figures. */
  p99: number | null;
  /** What the floor is, in a few words. */
  floorName: string;
  floor: number;
  floorP99: number | null;
  /** Samples behind the value (0 for single readings such as RSS). */
  samples: number;
}

function fmt(v: number | null): string {
  if (v === null || Number.isNaN(v)) return '–';
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

/** The figures as a markdown table (ratio = value / floor, lower is better). */
export function markdownTable(figures: readonly Figure[]): string {
  const rows = [
    '| figure | placement | p50 (value) | p99 | unit | floor | floor p50 | floor p99 | ratio p50 | ratio p99 |',
    '|---|---|--:|--:|---|---|--:|--:|--:|--:|',
  ];
  for (const f of figures) {
    const r99 = f.p99 !== null && f.floorP99 !== null ? f.p99 / f.floorP99 : null;
    rows.push(
      `| ${f.name} | ${f.placement} | ${fmt(f.value)} | ${fmt(f.p99)} | ${f.unit} | ${f.floorName} | ${fmt(f.floor)} | ${fmt(f.floorP99)} | ${fmt(f.value / f.floor)} | ${fmt(r99)} |`,
    );
  }
  return rows.join('\n');
}

/** The figures in the `--json` format: one entry per figure (p50), and one per p99 where there is one. */
export function jsonFigures(figures: readonly Figure[]): { figures: { name: string; value: number; unit: string; floor: number; ratio: number }[] } {
  const out: { name: string; value: number; unit: string; floor: number; ratio: number }[] = [];
  for (const f of figures) {
    out.push({ name: `${f.name} [${f.placement}]`, value: f.value, unit: f.unit, floor: f.floor, ratio: f.value / f.floor });
    if (f.p99 !== null && f.floorP99 !== null) {
      out.push({ name: `${f.name} p99 [${f.placement}]`, value: f.p99, unit: f.unit, floor: f.floorP99, ratio: f.p99 / f.floorP99 });
    }
  }
  return { figures: out };
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/**
 * An SVG histogram of one path's samples with its floor's drawn over the same bins. Both axes are
 * logarithmic — bins are log-spaced from the fastest to the slowest sample, bar heights are
 * log(1 + count) — so the tail stays visible next to the bulk. Dashed lines mark each p50 and p99.
 */
export function histogramSvg(title: string, unit: string, path: ArrayLike<number>, floor: ArrayLike<number>): string {
  const a = sorted(path);
  const b = sorted(floor);
  const lo = Math.max(1e-6, Math.min(a[0] ?? 1, b[0] ?? 1));
  const hi = Math.max(a[a.length - 1] ?? 1, b[b.length - 1] ?? 1, lo * 1.01);
  const bins = 80;
  const span = Math.log(hi / lo);
  const binOf = (v: number): number => Math.min(bins - 1, Math.max(0, Math.floor((Math.log(Math.max(v, lo) / lo) / span) * bins)));
  const count = (s: Float64Array): number[] => {
    const h = new Array<number>(bins).fill(0);
    for (const v of s) h[binOf(v)]!++;
    return h;
  };
  const ha = count(a);
  const hb = count(b);
  const top = Math.log1p(Math.max(...ha, ...hb, 1));
  const W = 760;
  const H = 340;
  const left = 60;
  const right = 20;
  const plotTop = 90;
  const bottom = 40;
  const plotW = W - left - right;
  const plotH = H - plotTop - bottom;
  const barW = plotW / bins;
  const x = (v: number): number => left + (Math.log(Math.max(v, lo) / lo) / span) * plotW;
  const y = (c: number): number => plotTop + plotH - (Math.log1p(c) / top) * plotH;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${left}" y="18" font-size="13" font-weight="bold">${esc(title)}</text>`,
    `<text x="${left}" y="34" fill="#555">samples per bin (log scale) against ${esc(unit)} (log scale); blue: path (n=${a.length}), grey: floor (n=${b.length})</text>`,
  ];
  const bar = (h: number[], color: string, opacity: number): void => {
    h.forEach((c, i) => {
      if (c === 0) return;
      const top = y(c);
      parts.push(`<rect x="${(left + i * barW).toFixed(1)}" y="${top.toFixed(1)}" width="${Math.max(1, barW - 0.5).toFixed(1)}" height="${(plotTop + plotH - top).toFixed(1)}" fill="${color}" fill-opacity="${opacity}"/>`);
    });
  };
  bar(hb, '#888888', 0.6);
  bar(ha, '#1f6fd0', 0.6);
  const marker = (v: number, color: string, label: string, row: number): void => {
    const xv = x(v);
    const labelY = plotTop - 44 + row * 11;
    // Labels near the right edge are drawn to the left of their line.
    const anchor = xv > W - right - 120 ? 'end' : 'start';
    parts.push(`<line x1="${xv.toFixed(1)}" y1="${labelY + 2}" x2="${xv.toFixed(1)}" y2="${plotTop + plotH}" stroke="${color}" stroke-dasharray="4 3"/>`);
    parts.push(`<text x="${xv.toFixed(1)}" y="${labelY}" fill="${color}" dx="${anchor === 'end' ? -3 : 3}" text-anchor="${anchor}">${esc(label)}</text>`);
  };
  marker(rank(b, 0.5), '#555555', `floor p50 ${fmt(rank(b, 0.5))}`, 0);
  marker(rank(b, 0.99), '#555555', `floor p99 ${fmt(rank(b, 0.99))}`, 1);
  marker(rank(a, 0.5), '#1f6fd0', `p50 ${fmt(rank(a, 0.5))}`, 2);
  marker(rank(a, 0.99), '#1f6fd0', `p99 ${fmt(rank(a, 0.99))}`, 3);
  parts.push(`<line x1="${left}" y1="${plotTop + plotH}" x2="${W - right}" y2="${plotTop + plotH}" stroke="black"/>`);
  parts.push(`<line x1="${left}" y1="${plotTop}" x2="${left}" y2="${plotTop + plotH}" stroke="black"/>`);
  // x ticks at 1, 2, 5 × 10^k
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v < lo || v > hi) continue;
      const xv = x(v).toFixed(1);
      parts.push(`<line x1="${xv}" y1="${plotTop + plotH}" x2="${xv}" y2="${plotTop + plotH + 4}" stroke="black"/>`);
      parts.push(`<text x="${xv}" y="${plotTop + plotH + 15}" text-anchor="middle">${fmt(v)}</text>`);
    }
  }
  // y ticks at 1, 10, 100, … samples
  for (let c = 1; Math.log1p(c) <= top; c *= 10) {
    parts.push(`<text x="${left - 4}" y="${(y(c) + 4).toFixed(1)}" text-anchor="end">${c}</text>`);
    parts.push(`<line x1="${left - 2}" y1="${y(c).toFixed(1)}" x2="${W - right}" y2="${y(c).toFixed(1)}" stroke="#ddd"/>`);
  }
  parts.push(`<text x="${left + plotW / 2}" y="${H - 8}" text-anchor="middle">${esc(unit)}</text>`);
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
