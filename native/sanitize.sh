#!/usr/bin/env bash
# Builds the native core with AddressSanitizer + UndefinedBehaviorSanitizer and runs the test suite
# against it (npm run test:asan). Node itself is not instrumented, so the sanitizer runtimes are
# preloaded; leak checking is off because Node does not free everything at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

out=build-sanitize  # outside build/: node-gyp rebuild wipes build/
restore() { npx node-gyp rebuild >/dev/null 2>&1; }
trap restore EXIT

MDEVKIT_SANITIZE=1 npx node-gyp rebuild >/dev/null 2>&1
mkdir -p "$out"
cp build/Release/mdevkit_native.node "$out/mdevkit_native.node"
restore
trap - EXIT

asan="$(g++ -print-file-name=libasan.so)"
ubsan="$(g++ -print-file-name=libubsan.so)"
export LD_PRELOAD="$asan:$ubsan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_odr_violation=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export MDEVKIT_NATIVE="$PWD/$out/mdevkit_native.node"
npx vitest run "$@"
