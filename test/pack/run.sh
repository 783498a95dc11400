#!/usr/bin/env bash
# npm run test:pack — the package as a user gets it: `npm pack`, the tarball's contents checked (what
# a user runs, no tests, benchmarks, docs sources or stale build output), installed into an empty
# project where `npx mdevkit lspci ./counter.ts` (the README's Counter as TypeScript) works, then
# `mdevkit init` there (pointing at the tarball), `npm install` and the scaffold's own test,
# typecheck and compare. Needs the npm registry (npm's cache makes repeats fast); ~3 min on 2 cores,
# most of it the two native builds. Ends with one verdict line.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d -t mdevkit-pack-XXXXXX)"
trap 'rm -rf "$work"' EXIT
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
export JOBS="${JOBS:-max}" # node-gyp: build the native core on every core
step() { printf '[test:pack %ss] %s\n' "$SECONDS" "$*"; }
fail() { echo "PACK-TEST FAIL: $*"; exit 1; }

step "npm pack (prepare compiles dist/)"
(cd "$root" && npm pack --silent --pack-destination "$work" --json >"$work/pack.json") || fail "npm pack"
tgz="$work/$(node -p 'require(process.argv[1])[0].filename' "$work/pack.json")"

step "checking the tarball's contents"
node - "$work/pack.json" "$root" <<'JS' || fail "tarball contents"
const [packJson, root] = process.argv.slice(2);
const fs = require('fs'), path = require('path');
const r = JSON.parse(fs.readFileSync(packJson, 'utf8'))[0];
const files = r.files.map((f) => f.path);
const bad = [];
const forbidden = [/^test\//, /^dist\/test\//, /^docs\//, /^native\/(bench|fuzz)\//, /\.map$/, /\.test\.[cm]?[jt]s$/, /^build\//, /^tsconfig/, /^vitest\.config/, /^typedoc/, /^\.ci\//, /\.log$/];
for (const f of files) if (!f.startsWith("templates/") && forbidden.some((re) => re.test(f))) bad.push(`should not ship: ${f}`);
for (const f of ['package.json', 'README.md', 'binding.gyp', 'dist/src/index.js', 'dist/src/index.d.ts', 'dist/cli/main.js', 'dist/adapters/vfio/index.js', 'dist/adapters/xen/index.js', 'dist/adapters/testing/index.js', 'dist/cli/index.js', 'native/src/addon.cc', 'templates/device/src/device.ts', 'templates/device/test/device.test.ts']) {
  if (!files.includes(f)) bad.push(`missing: ${f}`);
}
// Every compiled file has its source: nothing stale from an old build ships.
for (const f of files.filter((f) => f.startsWith('dist/') && /\.(js|d\.ts)$/.test(f))) {
  const src = f.slice('dist/'.length).replace(/\.d\.ts$|\.js$/, '.ts');
  if (!fs.existsSync(path.join(root, src))) bad.push(`stale build output (no ${src}): ${f}`);
}
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
if (pkg.private) bad.push('package.json: private');
for (const [entry, target] of Object.entries(pkg.exports)) {
  if (typeof target === 'string') continue;
  for (const t of [target.types, target.default]) if (!files.includes(t.replace(/^\.\//, ''))) bad.push(`export ${entry}: ${t} not in the tarball`);
}
if (bad.length) { console.error(bad.join('\n')); process.exit(1); }
const tops = {};
for (const f of files) { const k = f.split('/').slice(0, f.startsWith('dist/') ? 2 : 1).join('/'); tops[k] = (tops[k] ?? 0) + 1; }
console.log(`${r.filename}: ${files.length} files, ${(r.size / 1024).toFixed(0)} KiB packed, ${(r.unpackedSize / 1024).toFixed(0)} KiB unpacked: ${Object.entries(tops).map(([k, n]) => `${k} ${n}`).join(', ')}`);
JS

step "installing the tarball into an empty project"
app="$work/app"
mkdir -p "$app" && cd "$app"
npm init -y >/dev/null
npm install "$tgz" >"$work/install-app.log" 2>&1 || { tail -40 "$work/install-app.log"; fail "npm install of the tarball"; }
[ -f node_modules/mdevkit/build/Release/mdevkit_native.node ] || fail "the install did not build the native core"
[ ! -e node_modules/mdevkit/build/Release/mdevkit-echo-floor ] || fail "the install built the bench executables"

step "npx mdevkit lspci ./counter.ts (the README's Counter, as TypeScript)"
# The README's device, verbatim from its "Writing a device" section.
node -e '
  const md = require("fs").readFileSync(process.argv[1], "utf8");
  const m = /## Writing a device[\s\S]*?```ts\n([\s\S]*?)```/.exec(md);
  if (!m) { console.error("no ts block under Writing a device in README.md"); process.exit(1); }
  require("fs").writeFileSync("counter.ts", m[1]);
' "$root/README.md" || fail "README's Counter"
out="$(npx --no-install mdevkit lspci ./counter.ts)" || fail "mdevkit lspci ./counter.ts"
grep -q 'Device 1234:0001' <<<"$out" || { echo "$out"; fail "lspci ./counter.ts printed no Device 1234:0001"; }

step "mdevkit init device (mdevkit from the tarball)"
npx --no-install mdevkit init device --mdevkit "$tgz" >/dev/null || fail "mdevkit init"
if npx --no-install mdevkit init device 2>"$work/refused.txt"; then fail "init into a non-empty directory was not refused"; fi
grep -q 'EEXIST: dir:' "$work/refused.txt" || { cat "$work/refused.txt"; fail "init refusal does not say EEXIST: dir"; }

step "npm install in the scaffold"
cd device
npm install >"$work/install-device.log" 2>&1 || { tail -40 "$work/install-device.log"; fail "npm install in the scaffold"; }

step "the scaffold's own test, typecheck, compare"
npm test --silent 2>&1 | tee "$work/device-test.log" || fail "the scaffold's npm test"
npm run --silent typecheck || fail "the scaffold's typecheck"
npm run --silent compare | tee "$work/compare.txt" || fail "the scaffold's compare"
grep -q 'driver results *identical' "$work/compare.txt" || fail "compare: the paths differ"

step "done"
echo "PACK-TEST PASS: $(basename "$tgz") installs into an empty project, serves a .ts device, and the scaffold's test passes (${SECONDS} s)"
