#!/usr/bin/env node
// npm run fuzz -- [--budget SECONDS] [--runs N] [--only NAME,...] [--no-js] [--no-native] [--jobs N] [--out DIR]
//                  [--coverage | --coverage-only]
//
// Builds every libFuzzer target in native/fuzz/ with clang (-fsanitize=fuzzer,address,undefined,
// leak detection on), writes each target's seed corpus (valid protocol messages), runs it with
// its dictionary, then runs the property tests at the JS boundaries as fuzzers (test/fuzz-budget.ts).
// --budget is split evenly across the native targets and the JS group (default 60 s). --runs N
// instead runs each native target for N executions and each JS property for N runs (capped at
// --js-cap seconds, default 900). Prints executions and coverage (libFuzzer's cov/ft) per target
// and one summary line; exits non-zero on any crash, leak, sanitizer report or failed property,
// keeping the reproducer (its path is printed). Corpora persist in --out (default
// ~/.cache/mdevkit/fuzz, outside build/ which node-gyp rebuild wipes). --coverage then replays each
// target's corpus through a source-coverage build and prints the line and region coverage of the
// native/src/core/ files it fuzzes (llvm-cov; Debian's llvm package).
import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');

// Each target: its harness and the core sources it fuzzes (the same files the addon compiles).
const TARGETS = {
  vfio_user_stream: ['core/vfio_user_stream.cc', 'core/region_map.cc', 'core/masked_storage.cc'],
  region_dispatch: ['core/vfio_user_stream.cc', 'core/region_map.cc', 'core/masked_storage.cc'],
  xen_ioreq_page: ['core/ioreq.cc', 'core/region_map.cc', 'core/masked_storage.cc'],
  xen_buffered_ring: ['core/ioreq.cc'],
  dirty_bitmap: ['core/dirty_bitmap_core.cc'],
};
// Files whose properties run under fuzzParams (one budget share for all of them).
const JS_FILES = ['test/vfio/dma.test.ts', 'test/native/dirty-bitmap.test.ts', 'test/model/registers.test.ts', 'test/hostile-guests.test.ts',
  'test/vfio/fuzz.test.ts', 'test/xen/ioreq-fuzz.test.ts'];
const JS_PROPERTIES = 10;

function parseArgs(argv) {
  const o = { budget: 60, runs: 0, only: null, js: true, native: true, jobs: 1, jsCap: 900, coverage: false, out: join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'mdevkit', 'fuzz') };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) fail(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--budget') o.budget = positive(a, val());
    else if (a === '--runs') o.runs = positive(a, val());
    else if (a === '--only') o.only = val().split(',');
    else if (a === '--no-js') o.js = false;
    else if (a === '--no-native') o.native = false;
    else if (a === '--coverage') o.coverage = true;
    else if (a === '--coverage-only') o.coverage = o.coverageOnly = true;
    else if (a === '--jobs') o.jobs = positive(a, val());
    else if (a === '--js-cap') o.jsCap = positive(a, val());
    else if (a === '--out') o.out = resolve(val());
    else fail(`unknown option ${a} (see native/fuzz/run.mjs)`);
  }
  for (const t of o.only ?? []) if (!(t in TARGETS) && t !== 'js') fail(`no target ${t}; targets: ${Object.keys(TARGETS).join(', ')}, js`);
  return o;
}

function positive(name, v) {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) fail(`${name} must be a positive number, got ${v}`);
  return n;
}

function fail(msg) {
  console.error(`fuzz: ${msg}`);
  process.exit(2);
}

// ---- toolchain: Debian's clang and its libFuzzer runtime ---------------------------------------

function clangWorks() {
  const dir = join(tmpDir, 'probe');
  mkdirSync(dir, { recursive: true });
  const src = join(dir, 'probe.cc');
  writeFileSync(src, 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n');
  const r = spawnSync('clang++', ['-fsanitize=fuzzer,address,undefined', src, '-o', join(dir, 'probe')], { encoding: 'utf8' });
  return r.status === 0;
}

function ensureClang() {
  if (clangWorks()) return;
  const root_ = typeof process.getuid === 'function' && process.getuid() === 0;
  if (!root_ || spawnSync('sh', ['-c', 'command -v apt-get'], { stdio: 'ignore' }).status !== 0) {
    fail('clang++ with libFuzzer is missing: install Debian\'s clang and libclang-rt-dev (apt-get install clang libclang-rt-dev)');
  }
  console.log('fuzz: installing clang and libclang-rt-dev (Debian packages)');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  for (const args of [['update', '-qq'], ['install', '-y', '-qq', 'clang', 'libclang-rt-dev']]) {
    const r = spawnSync('apt-get', args, { stdio: ['ignore', 'ignore', 'inherit'], env });
    if (r.status !== 0) fail(`apt-get ${args.join(' ')} failed`);
  }
  if (!clangWorks()) fail('clang++ -fsanitize=fuzzer still does not link after installing clang and libclang-rt-dev');
}

// ---- build ---------------------------------------------------------------------------------------

const CXXFLAGS = ['-std=c++17', '-g', '-O1', '-fsanitize=fuzzer,address,undefined', '-fno-sanitize-recover=undefined', '-fno-omit-frame-pointer',
  '-Wall', '-Wextra', '-Werror', '-Wno-unused-parameter', '-I', join(root, 'native/src'), '-I', here];

function newestMtime(files) {
  return Math.max(...files.map((f) => statSync(f).mtimeMs));
}

function build(name) {
  const sources = [join(here, `${name}.cc`), ...TARGETS[name].map((s) => join(root, 'native/src', s))];
  const headers = [join(here, 'fuzz_input.h'), ...readdirSync(join(root, 'native/src/core')).filter((f) => f.endsWith('.h')).map((f) => join(root, 'native/src/core', f)),
    join(root, 'native/src/vfio_user_wire.h'), join(root, 'native/src/xen_ioreq.h')];
  const bin = join(opts.out, 'bin', name);
  if (existsSync(bin) && statSync(bin).mtimeMs > newestMtime([...sources, ...headers, fileURLToPath(import.meta.url)])) return bin;
  mkdirSync(dirname(bin), { recursive: true });
  // Built beside it and renamed over it: a run still executing the old binary keeps it, and an
  // interrupted build leaves no half-written one.
  const tmp = `${bin}.${process.pid}.tmp`;
  const r = spawnSync('clang++', [...CXXFLAGS, ...sources, '-o', tmp], { encoding: 'utf8' });
  if (r.status !== 0) {
    rmSync(tmp, { force: true });
    process.stderr.write(r.stderr);
    fail(`building ${name} failed`);
  }
  renameSync(tmp, bin);
  return bin;
}

// ---- running one native target ----------------------------------------------------------------

function runTarget(name, bin, seconds) {
  const seeds = join(opts.out, 'seeds', name);
  const corpus = join(opts.out, 'corpus', name);
  const artifacts = join(opts.out, 'artifacts', name) + '/';
  rmSync(seeds, { recursive: true, force: true });
  for (const d of [seeds, corpus, artifacts]) mkdirSync(d, { recursive: true });
  const env = {
    ...process.env,
    ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=0:allocator_may_return_null=0',
    UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1',
  };
  // Seeds: valid protocol messages, written by the target itself (its input format lives there).
  const s = spawnSync(bin, [], { env: { ...env, MDEVKIT_FUZZ_SEEDS: seeds }, encoding: 'utf8' });
  if (s.status !== 0) fail(`${name}: writing seeds failed: ${s.stderr}`);
  const args = [corpus, seeds, `-dict=${join(here, `${name}.dict`)}`, `-artifact_prefix=${artifacts}`, '-print_final_stats=1', '-detect_leaks=1',
    '-timeout=25', '-rss_limit_mb=2560', '-max_len=4096', '-reload=0'];
  if (opts.runs) args.push(`-runs=${opts.runs}`);
  else args.push(`-max_total_time=${Math.max(1, Math.round(seconds))}`);
  const started = Date.now();
  return new Promise((done) => {
    const child = spawn(bin, args, { env, cwd: opts.out });
    let log = '';
    const keep = (b) => {
      log += b.toString();
      if (log.length > 4 << 20) log = log.slice(-(2 << 20));
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.on('close', (code) => {
      const logFile = join(opts.out, 'logs', `${name}.log`);
      mkdirSync(dirname(logFile), { recursive: true });
      writeFileSync(logFile, log);
      const stat = (k) => Number((log.match(new RegExp(`stat::${k}:\\s+(\\d+)`)) ?? [])[1] ?? NaN);
      // The last status line libFuzzer printed: "#N DONE cov: C ft: F corp: K/S ..."
      const lines = [...log.matchAll(/^#(\d+)\s+\S+\s+cov: (\d+) ft: (\d+) corp: (\d+)\//gm)];
      const last = lines[lines.length - 1];
      const reproducer = (log.match(/Test unit written to (\S+)/) ?? [])[1] ?? null;
      const problem = code === 0 ? null : (log.match(/(ERROR: (?:AddressSanitizer|LeakSanitizer|libFuzzer): [^\n]*|runtime error: [^\n]*|FUZZ_CHECK failed: [^\n]*)/) ?? [])[1] ?? `exit ${code}`;
      done({
        name,
        execs: Number.isNaN(stat('number_of_executed_units')) ? Number(last?.[1] ?? 0) : stat('number_of_executed_units'),
        seconds: (Date.now() - started) / 1000,
        cov: Number(last?.[2] ?? 0),
        // Edges instrumented in the binary (harness and cores): what cov is out of.
        edges: Number((log.match(/\((\d+) inline 8-bit counters\)/) ?? [])[1] ?? 0),
        ft: Number(last?.[3] ?? 0),
        corpus: Number(last?.[4] ?? 0),
        rss: stat('peak_rss_mb'),
        ok: code === 0,
        problem,
        reproducer,
        log: logFile,
      });
    });
  });
}

async function runNative(names, secondsEach) {
  const results = [];
  const queue = [...names];
  const worker = async () => {
    while (queue.length) {
      const name = queue.shift();
      const bin = build(name);
      const r = await runTarget(name, bin, secondsEach);
      print(r);
      results.push(r);
    }
  };
  await Promise.all(Array.from({ length: Math.min(opts.jobs, names.length) }, worker));
  return results;
}

function print(r) {
  const rate = r.seconds > 0 ? Math.round(r.execs / r.seconds) : 0;
  const status = r.ok ? 'ok' : `FAILED: ${r.problem}${r.reproducer ? ` (reproducer: ${r.reproducer})` : ''} (log: ${r.log})`;
  console.log(`${r.name.padEnd(64)} ${String(r.execs).padStart(11)} execs ${String(rate).padStart(7)}/s  cov ${String(r.cov).padStart(5)}/${String(r.edges).padEnd(5)}  ft ${String(r.ft).padStart(6)}  corpus ${String(r.corpus).padStart(5)}  ${r.seconds.toFixed(0).padStart(5)} s  ${status}`);
}

// ---- source coverage of the cores, from the corpus -------------------------------------------

function ensureLlvmCov() {
  if (spawnSync('sh', ['-c', 'command -v llvm-cov && command -v llvm-profdata'], { stdio: 'ignore' }).status === 0) return;
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) fail('--coverage needs llvm-cov and llvm-profdata (Debian package llvm)');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const r = spawnSync('apt-get', ['install', '-y', '-qq', 'llvm'], { stdio: ['ignore', 'ignore', 'inherit'], env });
  if (r.status !== 0) fail('apt-get install llvm failed');
}

function coverage(name) {
  const cores = TARGETS[name].map((f) => join(root, 'native/src', f));
  const dir = join(opts.out, 'coverage', name);
  mkdirSync(dir, { recursive: true });
  const bin = join(dir, name);
  const build = spawnSync('clang++', ['-std=c++17', '-O0', '-g', '-fsanitize=fuzzer', '-fprofile-instr-generate', '-fcoverage-mapping', '-I', join(root, 'native/src'), '-I', here,
    join(here, `${name}.cc`), ...cores, '-o', bin], { encoding: 'utf8' });
  if (build.status !== 0) fail(`coverage build of ${name} failed: ${build.stderr}`);
  const raw = join(dir, 'default.profraw');
  rmSync(raw, { force: true });
  const dirs = [join(opts.out, 'corpus', name), join(opts.out, 'seeds', name)].filter((d) => existsSync(d));
  if (dirs.length === 0) fail(`${name} has no corpus in ${opts.out} yet: fuzz it first`);
  const replay = spawnSync(bin, ['-runs=0', ...dirs], { env: { ...process.env, LLVM_PROFILE_FILE: raw }, encoding: 'utf8' });
  if (replay.status !== 0) fail(`replaying the corpus of ${name} failed: ${replay.stderr.slice(-2000)}`);
  const data = join(dir, 'default.profdata');
  if (spawnSync('llvm-profdata', ['merge', '-sparse', raw, '-o', data]).status !== 0) fail(`llvm-profdata failed for ${name}`);
  const report = spawnSync('llvm-cov', ['report', bin, `-instr-profile=${data}`, ...cores], { encoding: 'utf8' });
  // Per file: name, regions, missed, cover%, functions, missed, executed%, lines, missed, cover%.
  const rows = report.stdout.split('\n').map((l) => l.trim().split(/\s+/)).filter((c) => c[0]?.endsWith('.cc'));
  const cells = rows.map((c) => `${c[0].split('/').pop()} lines ${c[9]} of ${c[7]}, regions ${c[3]}, functions ${c[6]}`);
  console.log(`${name.padEnd(20)} ${cells.join(' · ')}`);
  writeFileSync(join(dir, 'report.txt'), report.stdout);
}

// ---- the JS boundaries --------------------------------------------------------------------------

function runJs(seconds) {
  const report = join(tmpDir, 'js-report.jsonl');
  rmSync(report, { force: true });
  // At least 5 s each: an async property is interrupted mid-run, and the slowest (a simulated
  // Xen, a server process) need a second or more for their first runs on a loaded machine.
  const perProperty = opts.runs ? opts.jsCap * 1000 : Math.max(5000, Math.floor((seconds * 1000) / JS_PROPERTIES));
  const env = { ...process.env, MDEVKIT_FUZZ_MS: String(perProperty), MDEVKIT_FUZZ_REPORT: report };
  if (opts.runs) env.MDEVKIT_FUZZ_RUNS = String(opts.runs);
  const started = Date.now();
  // One file at a time, so that each property gets its share of the machine.
  const r = spawnSync('npx', ['vitest', 'run', '--maxWorkers=1', '--minWorkers=1', ...JS_FILES], { cwd: root, env, encoding: 'utf8' });
  const rows = existsSync(report) ? readFileSync(report, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l)) : [];
  const results = rows.map((row) => ({ name: `js: ${row.name}`, execs: row.runs, seconds: row.ms / 1000, cov: 0, ft: 0, corpus: 0, ok: !row.failed, problem: row.failed ? 'property failed' : null, reproducer: null, log: null }));
  for (const res of results) {
    const rate = res.seconds > 0 ? Math.round(res.execs / res.seconds) : 0;
    console.log(`${res.name.padEnd(64)} ${String(res.execs).padStart(11)} runs  ${String(rate).padStart(7)}/s  (fast-check; no coverage guidance)  ${res.seconds.toFixed(0).padStart(5)} s  ${res.ok ? 'ok' : 'FAILED'}`);
  }
  if (r.status !== 0 || rows.length < JS_PROPERTIES) {
    const logFile = join(opts.out, 'logs', 'js.log');
    mkdirSync(dirname(logFile), { recursive: true });
    writeFileSync(logFile, `${r.stdout}\n${r.stderr}`);
    results.push({ name: 'js: vitest', execs: 0, seconds: (Date.now() - started) / 1000, ok: false, problem: `vitest exited ${r.status} with ${rows.length}/${JS_PROPERTIES} properties reported (log: ${logFile}; a failing property prints its counterexample and seed there)` });
    console.log(`js: vitest FAILED (log: ${logFile})`);
  }
  return results;
}

// ---- main ----------------------------------------------------------------------------------------

const opts = parseArgs(process.argv.slice(2));
const tmpDir = join(opts.out, 'tmp');
mkdirSync(tmpDir, { recursive: true });
const natives = opts.native ? Object.keys(TARGETS).filter((t) => !opts.only || opts.only.includes(t)) : [];
const withJs = opts.js && !opts.coverageOnly && (!opts.only || opts.only.includes('js'));
const shares = natives.length + (withJs ? 1 : 0);
if (shares === 0) fail('nothing to run');
const share = opts.budget / shares;

console.log(opts.runs ? `fuzz: ${opts.runs} executions per target` : `fuzz: ${opts.budget} s budget, ${share.toFixed(1)} s per target`);
const results = [];
if (natives.length && !opts.coverageOnly) {
  ensureClang();
  results.push(...(await runNative(natives, share)));
}
if (withJs) results.push(...runJs(share));
if (opts.coverage && natives.length) {
  ensureLlvmCov();
  console.log('fuzz: source coverage of native/src/core/ reached by each corpus');
  for (const name of natives) coverage(name);
}

const failed = results.filter((r) => !r.ok);
const execs = results.reduce((n, r) => n + (r.execs || 0), 0);
const summary = `fuzz: ${results.length} targets, ${execs} executions, ${failed.length} failed`;
console.log(summary);
if (process.env.MDEVKIT_FUZZ_SUMMARY) appendFileSync(process.env.MDEVKIT_FUZZ_SUMMARY, JSON.stringify({ results, summary }) + '\n');
process.exit(failed.length ? 1 : 0);
