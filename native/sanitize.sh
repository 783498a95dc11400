#!/usr/bin/env bash
# Builds the native core with AddressSanitizer + UndefinedBehaviorSanitizer and runs the test suite
# against it (npm run test:asan). Node itself is not instrumented, so the sanitizer runtimes are
# preloaded; leak checking is off because Node does not free everything at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

# The sanitizer build happens in a directory of its own (links to binding.gyp, native/ and
# node_modules/), so build/ — the addon everything else loads — is never wiped or replaced.
root="$PWD"
out="$root/build-sanitize"
src="$out/src"
mkdir -p "$src"
for f in binding.gyp native node_modules package.json; do ln -sfn "$root/$f" "$src/$f"; done
# Rebuilt only when a native source or binding.gyp is newer than the last sanitizer build.
if [ ! -f "$out/mdevkit_native.node" ] || [ -n "$(find "$root/native/src" "$root/native/compat" "$root/binding.gyp" -newer "$out/mdevkit_native.node" -type f -print -quit)" ]; then
(cd "$src" && MDEVKIT_SANITIZE=1 npm exec --prefix "$root" -- node-gyp rebuild >"$out/build.log" 2>&1) ||
  { tail -n 30 "$out/build.log"; echo "test:asan: the sanitizer build failed (log: $out/build.log)" >&2; exit 1; }
cp "$src/build/Release/mdevkit_native.node" "$out/mdevkit_native.node"
fi

asan="$(g++ -print-file-name=libasan.so)"
ubsan="$(g++ -print-file-name=libubsan.so)"
export LD_PRELOAD="$asan:$ubsan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_odr_violation=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export MDEVKIT_NATIVE="$out/mdevkit_native.node"
# ASan and UBSan make native code several times slower and the tests spawn many processes: the
# default 30 s per test is for the plain build (a test's own longer timeout still applies).
export MDEVKIT_TEST_TIME_SCALE=5
npx vitest run --testTimeout=$((30000 * MDEVKIT_TEST_TIME_SCALE)) "$@"
