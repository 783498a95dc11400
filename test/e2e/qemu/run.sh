#!/usr/bin/env bash
# Real-QEMU end-to-end test (`npm run test:qemu`): QEMU >= 10.1's vfio-user-pci client against
# `mdevkit serve edu` and `mdevkit serve vgpu` (two server processes), with QEMU's own edu in the
# same guest as the in-process reference, and a third server process, `mdevkit serve bochs-display
# --display-png`, attached to the main boot only. A Debian 12 kernel + busybox initramfs boots
# under TCG; its /init (guest-init.sh) drives the devices through a small test module
# (guest-module/, built against Debian's matching linux-headers), and the display through Debian's
# own DRM + bochs modules and a small static tool (the display phase is shared with the Xen e2e:
# test/e2e/display/ — guest-display.sh, guest-tools/mdk-display.c, stage.sh, watch.mjs). Four boots:
#   main    memfd guest RAM (fd windows): enumeration, config space, BAR MMIO, INTx, MSI, MSI-X,
#           DMA both ways, vGPU ring/fence/VRAM, per-access cost; the display phase (the bochs DRM
#           driver binds, fbcon on /dev/fb0, a test image written to /dev/fb0, blank/unblank, a
#           second mode through KMS, console text; display/watch.mjs checks the server's PNG at each
#           step and lets the guest go on over a second serial line); peer-to-peer DMA last
#   fdless  a second QEMU, guest RAM without an fd: reconnect, message DMA, vGPU ring without timeout
#   kill    QEMU SIGKILLed mid-traffic: the servers live on and serve a new client
#   term    both servers SIGTERMed mid-traffic: they exit 0 and remove their sockets; QEMU survives
# check.mjs asserts every expected value and prints one line per check, the cost figures, the line
# `DISPLAY-FRAME path=vfio-user sha256=<frame hash> png=<file>` (hash and test image defined once in
# test/e2e/display/frames.mjs, shared with the Xen e2e) and the verdict line
# `QEMU-E2E-VERDICT PASS|FAIL ...`; this script exits 0 only on PASS.
#
# Needs root on a fresh machine (apt-get installs what is missing; QEMU is built once by
# build-qemu.sh). Cache: ${MDEVKIT_CACHE:-~/.cache/mdevkit}/qemu-e2e (kernel, DRM modules, test
# module, guest tool); display/ there receives the frames of the last passing run (the demo shows them).
# Env: QEMU_E2E_BOOT_TIMEOUT (s per boot, default 300), QEMU_E2E_KEEP=1 keeps the run directory,
# QEMU_E2E_SERVE_ARGS extra options for both `mdevkit serve` processes.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
# shellcheck source=../display/stage.sh
. "$ROOT/test/e2e/display/stage.sh"
CACHE_ROOT=${MDEVKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mdevkit}
CACHE="$CACHE_ROOT/qemu-e2e"
BOOT_TIMEOUT=${QEMU_E2E_BOOT_TIMEOUT:-300}
RUN_START=$(date +%s.%N)
export DEBIAN_FRONTEND=noninteractive

log() { printf 'qemu-e2e: %s\n' "$*" >&2; }
VERDICT_DONE=0
die() {
  log "FAIL: $*"
  echo "QEMU-E2E-VERDICT FAIL setup: $*"
  VERDICT_DONE=1
  exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

# On exit, end what this script started and is still running: its background jobs (servers, the
# subshells around `timeout`) and a QEMU whose parent is still our `timeout`. Reaped pids are never
# signalled.
RUN=""
QWRAP="" QTIMEOUT="" QPID=""
cleanup() {
  local rc=$?
  if [ -n "$QPID" ] && [ -n "$QTIMEOUT" ] && [ "$(ps -o ppid= -p "$QPID" 2>/dev/null | tr -d ' ')" = "$QTIMEOUT" ]; then
    kill -KILL "$QPID" 2>/dev/null || true
  fi
  for p in $(jobs -pr); do kill -KILL "$p" 2>/dev/null || true; done
  if [ "$VERDICT_DONE" = 0 ]; then echo "QEMU-E2E-VERDICT FAIL harness error (exit $rc)"; fi
  if [ -n "$RUN" ] && [ -d "$RUN" ]; then
    if [ "${QEMU_E2E_KEEP:-0}" = 1 ] || [ "${PASSED:-0}" != 1 ]; then log "run directory kept: $RUN"; else rm -rf "$RUN"; fi
  fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- host packages
apt_install() {
  [ "$(id -u)" = 0 ] || die "need root to install $*"
  log "installing host packages: $*"
  apt-get install -y -q "$@" >/dev/null 2>&1 || { apt-get update -q >/dev/null; apt-get install -y -q "$@" >/dev/null; } ||
    die "apt-get install $* failed"
}
need=()
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v make >/dev/null || need+=(make)
command -v gcc >/dev/null || need+=(gcc)
command -v file >/dev/null || need+=(file)
command -v pgrep >/dev/null || need+=(procps)
command -v modinfo >/dev/null || need+=(kmod)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
BUSYBOX=/bin/busybox
case "$(file -L "$BUSYBOX" 2>/dev/null || true)" in *statically*) ;; *) die "$BUSYBOX is not static (busybox-static)";; esac

[ -f "$ROOT/build/Release/mdevkit_native.node" ] || die "build/Release/mdevkit_native.node missing: run npm install"
[ -f "$ROOT/dist/cli/main.js" ] || die "dist/ missing: run npm install (or npm run build)"
CLI=(node "$ROOT/dist/cli/main.js")

# ---------------------------------------------------------------- QEMU
QEMU_PREFIX=$(bash "$HERE/build-qemu.sh") || die "QEMU build failed (see above)"
QEMU="$QEMU_PREFIX/bin/qemu-system-x86_64"
FW="$QEMU_PREFIX/share/qemu-fw"
[ -x "$QEMU" ] || die "no $QEMU"
"$QEMU" -device help 2>/dev/null | grep -q '"edu"' || die "$QEMU has no edu device"
log "QEMU: $("$QEMU" --version | head -1) ($QEMU_PREFIX)"

# ---------------------------------------------------------------- guest kernel + headers
mkdir -p "$CACHE"
resolve_kernel() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
KPKG=$(resolve_kernel)
[ -n "$KPKG" ] || { apt-get update -q >/dev/null 2>&1 || true; KPKG=$(resolve_kernel); }
[ -n "$KPKG" ] || die "cannot resolve linux-image-amd64's kernel package"
KVER=${KPKG#linux-image-}
KDIR="$CACHE/kernel-$KVER"
# The display phase loads Debian's own modules from the same package (test/e2e/display/stage.sh).
MODDIR="$KDIR/drm-modules"
if [ ! -f "$KDIR/vmlinuz" ] || [ ! -f "$MODDIR/order" ]; then
  log "fetching $KPKG"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q "$KPKG" >/dev/null 2>&1) ||
    { apt-get update -q >/dev/null 2>&1 || true; (cd "$tmp" && apt-get download -q "$KPKG" >/dev/null 2>&1); } ||
    { rm -rf "$tmp"; die "apt-get download $KPKG failed"; }
  dpkg -x "$tmp"/*.deb "$tmp/x"
  mkdir -p "$KDIR"
  cp "$tmp/x/boot/vmlinuz-$KVER" "$KDIR/vmlinuz.part" && mv "$KDIR/vmlinuz.part" "$KDIR/vmlinuz"
  stage_drm_modules "$tmp/x/lib/modules/$KVER" "$MODDIR"
  rm -rf "$tmp"
fi
log "DRM modules, in load order: $(tr '\n' ' ' < "$MODDIR/order")"
check_drm_modules "$MODDIR"
HDR=/usr/src/linux-headers-$KVER
[ -f "$HDR/Makefile" ] || apt_install "linux-headers-$KVER"
[ -f "$HDR/Makefile" ] || die "$HDR missing after installing linux-headers-$KVER"

# ---------------------------------------------------------------- guest test module (cached by source hash)
MKEY=$(cat "$HERE/guest-module/mdk_e2e.c" "$HERE/guest-module/Kbuild" | sha256sum | cut -c1-12)
MDIR="$CACHE/module-$KVER-$MKEY"
if [ ! -f "$MDIR/mdk_e2e.ko" ]; then
  log "building the guest test module against $HDR"
  rm -rf "$MDIR.build"; mkdir -p "$MDIR.build"
  cp "$HERE/guest-module/mdk_e2e.c" "$HERE/guest-module/Kbuild" "$MDIR.build/"
  make -C "$HDR" M="$MDIR.build" modules >"$MDIR.build/build.log" 2>&1 ||
    { tail -n 30 "$MDIR.build/build.log" >&2; die "test module build failed"; }
  strip --strip-debug "$MDIR.build/mdk_e2e.ko"
  rm -rf "$MDIR"; mv "$MDIR.build" "$MDIR"
fi

# ---------------------------------------------------------------- guest display tool (static, cached by source hash)
TOOL=$(build_display_tool "$KVER" "$CACHE") || die "guest display tool build failed"
check_display_tool "$TOOL"

# ---------------------------------------------------------------- run directory, initramfs
RUN=$(mktemp -d /tmp/mdk-qemu-e2e.XXXXXX)
FACTS="$RUN/facts.txt"; : > "$FACTS"
fact() { echo "$1 $2" >> "$FACTS"; }
fact_of() { grep "^$1 " "$FACTS" | tail -n 1 | cut -d' ' -f2-; }
fact kernel "$KVER"
fact qemu "$("$QEMU" --version | head -1)"
G="$RUN/initramfs"
mkdir -p "$G"/{bin,proc,sys,dev,tmp}
cp "$BUSYBOX" "$G/bin/busybox"
cp "$HERE/guest-init.sh" "$G/init"; chmod +x "$G/init"
cp "$MDIR/mdk_e2e.ko" "$G/"
# DRM modules, the display tool (it generates the test images of test/e2e/display/frames.mjs:
# check_display_tool compared them) and the display phase
stage_display_guest "$G" "$MODDIR" "$TOOL"
(cd "$G" && find . | cpio -o -H newc --quiet | gzip -1) > "$RUN/initrd.gz"
log "kernel $KVER, test module $MKEY, run directory $RUN"

# ---------------------------------------------------------------- servers
EDU_SOCK="$RUN/edu.sock" VGPU_SOCK="$RUN/vgpu.sock" BOCHS_SOCK="$RUN/bochs.sock"
DISPLAY_PNG="$RUN/display.png"
# QEMU_E2E_SERVE_ARGS: extra `mdevkit serve` options for both servers (e.g. "--dma-layout qemu")
read -r -a SERVE_ARGS <<< "${QEMU_E2E_SERVE_ARGS:-}"
"${CLI[@]}" serve edu --vfio-user "$EDU_SOCK" -v "${SERVE_ARGS[@]}" >"$RUN/server-edu.out" 2>"$RUN/server-edu.log" &
EDU_PID=$!
"${CLI[@]}" serve vgpu --vfio-user "$VGPU_SOCK" -v "${SERVE_ARGS[@]}" >"$RUN/server-vgpu.out" 2>"$RUN/server-vgpu.log" &
VGPU_PID=$!
"${CLI[@]}" serve bochs-display --vfio-user "$BOCHS_SOCK" --display-png "$DISPLAY_PNG" --stats "$RUN/stats-bochs.json" -v "${SERVE_ARGS[@]}" \
  >"$RUN/server-bochs.out" 2>"$RUN/server-bochs.log" &
BOCHS_PID=$!
for i in $(seq 300); do
  grep -q serving "$RUN/server-edu.out" 2>/dev/null && grep -q serving "$RUN/server-vgpu.out" 2>/dev/null &&
    grep -q serving "$RUN/server-bochs.out" 2>/dev/null && break
  kill -0 "$EDU_PID" 2>/dev/null && kill -0 "$VGPU_PID" 2>/dev/null && kill -0 "$BOCHS_PID" 2>/dev/null || break
  sleep 0.1
done
[ -S "$EDU_SOCK" ] && [ -S "$VGPU_SOCK" ] && [ -S "$BOCHS_SOCK" ] || { cat "$RUN"/server-*.log >&2; die "servers did not come up"; }
log "servers up: edu pid $EDU_PID, vgpu pid $VGPU_PID, bochs-display pid $BOCHS_PID"
# the config space as the servers answer it (before any QEMU touches the devices)
node "$HERE/server-config.mjs" "$EDU_SOCK" > "$RUN/cfg-edu.hex" || die "reading edu's config space failed"
node "$HERE/server-config.mjs" "$VGPU_SOCK" > "$RUN/cfg-vgpu.hex" || die "reading vGPU's config space failed"

# ---------------------------------------------------------------- QEMU boots
vfio_dev() { printf '{"driver":"vfio-user-pci","socket":{"type":"unix","path":"%s"},"addr":"%s"}' "$1" "$2"; }
# start_qemu NAME RAM-BACKEND [QEMU-ARGS...]: boots in the background under `timeout`; sets QWRAP
# (the background subshell), QTIMEOUT (`timeout`), QPID (QEMU) and QSTART.
start_qemu() {
  local name=$1 backend=$2
  shift 2
  local dev_edu dev_vgpu
  dev_edu=$(vfio_dev "$EDU_SOCK" 0x5) dev_vgpu=$(vfio_dev "$VGPU_SOCK" 0x6)
  : > "$RUN/serial-$name.log"
  QSTART=$(now)
  # In a subshell whose own stderr is discarded: `timeout` re-raises its child's fatal signal on
  # itself and bash would print the whole command line with "Killed" (QEMU's stderr has its file).
  ( timeout -s KILL "$BOOT_TIMEOUT" "$QEMU" -nodefaults -display none -no-reboot -L "$FW" \
    -machine q35,memory-backend=mem -accel tcg -smp 1 -m 512M -object "$backend" \
    -serial "file:$RUN/serial-$name.log" \
    -kernel "$KDIR/vmlinuz" -initrd "$RUN/initrd.gz" \
    -append "console=ttyS0 quiet loglevel=4 panic=-1 rdinit=/init vt.global_cursor_default=0 consoleblank=0 mdk.mode=$name" \
    -device edu,addr=0x4 \
    -device "$dev_edu" -device "$dev_vgpu" "$@" \
    </dev/null >"$RUN/qemu-$name.out" 2>"$RUN/qemu-$name.err"; exit $? ) 2>/dev/null &
  QWRAP=$!
  QTIMEOUT="" QPID=""
  for i in $(seq 200); do
    [ -n "$QTIMEOUT" ] || QTIMEOUT=$(pgrep -P "$QWRAP" -x timeout | head -1 || true)
    [ -n "$QTIMEOUT" ] && QPID=$(pgrep -P "$QTIMEOUT" | head -1 || true)
    [ -n "$QPID" ] && break
    sleep 0.05
  done
  log "boot $name: QEMU pid ${QPID:-?} (${backend%%,*})"
}
# wait_line NAME REGEX SECONDS: polls the serial log until a line matches (0), QEMU exits or time runs out (1)
wait_line() {
  local file="$RUN/serial-$1.log" deadline=$(( $(date +%s) + $3 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    tr -d '\r' < "$file" | grep -qE "$2" && return 0
    kill -0 "$QWRAP" 2>/dev/null || { tr -d '\r' < "$file" | grep -qE "$2"; return; }
    sleep 0.2
  done
  return 1
}
# init_time NAME: records when /init started (host seconds since QEMU start)
init_time() {
  if wait_line "$1" '^QE init' "$BOOT_TIMEOUT"; then INIT_AT=$(since "$QSTART"); else INIT_AT=none; fi
  fact "boot.$1.init_s" "$INIT_AT"
}
boot_summary() {
  local name=$1
  log "boot $name: /init after $(fact_of "boot.$name.init_s")s, QEMU exit $(fact_of "boot.$name.rc") after $(fact_of "boot.$name.total_s")s"
}

# -- main: memfd guest RAM; the bochs-display at 00:07.0 and, for its display phase, ttyS1 as a
# pipe from test/e2e/display/watch.mjs (which checks the server's PNG at each step the guest announces)
mkfifo "$RUN/ctl.in" "$RUN/ctl.out"
: > "$RUN/serial-main.log"
node "$ROOT/test/e2e/display/watch.mjs" "$RUN/serial-main.log" "$DISPLAY_PNG" "$RUN/ctl.in" "$RUN/display.json" "$BOOT_TIMEOUT" \
  >"$RUN/display-watch.out" 2>&1 &
WATCH_PID=$!
start_qemu main "memory-backend-memfd,id=mem,size=512M,share=on" \
  -device "$(vfio_dev "$BOCHS_SOCK" 0x7)" -serial "pipe:$RUN/ctl"
init_time main
rc=0; wait "$QWRAP" || rc=$?
fact boot.main.rc "$rc"; fact boot.main.total_s "$(since "$QSTART")"; boot_summary main
# the watcher ends when the guest's display phase ends; it gets a few seconds after QEMU is gone
for i in $(seq 50); do kill -0 "$WATCH_PID" 2>/dev/null || break; sleep 0.1; done
kill -TERM "$WATCH_PID" 2>/dev/null || true
wait "$WATCH_PID" 2>/dev/null || true
# the display server: SIGTERM writes its last frame and its figures, and it exits
kill -TERM "$BOCHS_PID" 2>/dev/null || true
for i in $(seq 300); do kill -0 "$BOCHS_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$BOCHS_PID" 2>/dev/null; then
  fact display.server_rc still-running-after-30s; kill -KILL "$BOCHS_PID" 2>/dev/null || true; wait "$BOCHS_PID" 2>/dev/null || true
else
  src=0; wait "$BOCHS_PID" || src=$?; fact display.server_rc "$src"
fi
if [ -e "$BOCHS_SOCK" ]; then fact display.server_socket present; else fact display.server_socket removed; fi

# -- fdless: a second QEMU against the same servers, guest RAM without an fd
start_qemu fdless "memory-backend-ram,id=mem,size=512M"
init_time fdless
rc=0; wait "$QWRAP" || rc=$?
fact boot.fdless.rc "$rc"; fact boot.fdless.total_s "$(since "$QSTART")"; boot_summary fdless

# -- kill: QEMU SIGKILLed mid-traffic; the servers must live on
start_qemu kill "memory-backend-memfd,id=mem,size=512M,share=on"
init_time kill
if wait_line kill '^QE traffic-flowing' "$BOOT_TIMEOUT"; then
  fact kill.traffic yes
  log "boot kill: traffic flowing, SIGKILL QEMU ($QPID)"
  kill -KILL "$QPID" 2>/dev/null || true
else
  fact kill.traffic no
  kill -KILL "$QPID" 2>/dev/null || true
fi
rc=0; wait "$QWRAP" || rc=$?
fact boot.kill.rc "$rc"; fact boot.kill.total_s "$(since "$QSTART")"; boot_summary kill
for s in edu vgpu; do
  pid=$EDU_PID; sock=$EDU_SOCK; [ $s = vgpu ] && { pid=$VGPU_PID; sock=$VGPU_SOCK; }
  if kill -0 "$pid" 2>/dev/null; then fact "kill.${s}_alive" yes; else fact "kill.${s}_alive" no; fi
  v=$(timeout 60 "${CLI[@]}" probe --vfio-user "$sock" --timeout 20000 read bar0 0 4 2>"$RUN/probe-$s.err" || echo "error")
  fact "kill.${s}_probe" "$v"
done

# -- term: both servers SIGTERMed mid-traffic
start_qemu term "memory-backend-memfd,id=mem,size=512M,share=on"
init_time term
if wait_line term '^QE traffic-flowing' "$BOOT_TIMEOUT"; then
  fact term.traffic yes
  log "boot term: traffic flowing, SIGTERM servers ($EDU_PID, $VGPU_PID)"
  kill -TERM "$EDU_PID" "$VGPU_PID" 2>/dev/null || true
  for s in edu vgpu; do
    pid=$EDU_PID; sock=$EDU_SOCK; [ $s = vgpu ] && { pid=$VGPU_PID; sock=$VGPU_SOCK; }
    for i in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      fact "term.${s}_rc" "still-running-after-30s"; kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
    else
      src=0; wait "$pid" || src=$?; fact "term.${s}_rc" "$src"
    fi
    if [ -e "$sock" ]; then fact "term.${s}_socket" present; else fact "term.${s}_socket" removed; fi
  done
else
  fact term.traffic no
fi
rc=0; wait "$QWRAP" || rc=$?
fact boot.term.rc "$rc"; fact boot.term.total_s "$(since "$QSTART")"; boot_summary term
fact term.qemu_rc "$rc"
if [ "$rc" = 134 ] || grep -qE 'Assertion|Aborted|core dumped' "$RUN/qemu-term.err"; then fact term.qemu_abort yes; else fact term.qemu_abort no; fi
if tr -d '\r' < "$RUN/serial-term.log" | grep -q '^QE-DONE'; then fact term.guest_done yes; else fact term.guest_done no; fi
fact term.qemu_stderr "$(grep -v '^$' "$RUN/qemu-term.err" | tail -n 3 | tr '\n' '|' | cut -c1-400)"

# servers still running (the term boot did not get to signal them): stop them the usual way
if [ "$(fact_of term.traffic)" != yes ]; then
  kill -TERM "$EDU_PID" "$VGPU_PID" 2>/dev/null || true
  wait "$EDU_PID" "$VGPU_PID" 2>/dev/null || true
fi

# ---------------------------------------------------------------- verdict
for b in main fdless kill term; do
  log "---- boot $b: guest results ----"
  tr -d '\r' < "$RUN/serial-$b.log" | grep -aE '^QE (res|mod|mode|init|disp)|^QE-DONE' | grep -v '^QE res .* spin' | cut -c1-400 >&2 || true
  [ -s "$RUN/qemu-$b.err" ] && { log "QEMU stderr ($b):"; sed 's/^/  /' "$RUN/qemu-$b.err" | tail -n 15 >&2; }
done
fact run.wall_s "$(since "$RUN_START")"
set +e
out=$(node "$HERE/check.mjs" "$RUN" "$CACHE/display")
crc=$?
set -e
printf '%s\n' "$out" | grep -v '^QEMU-E2E-VERDICT'
for b in main fdless kill term; do
  echo "QEMU-E2E-TIME boot $b: /init at $(fact_of "boot.$b.init_s") s, QEMU exit $(fact_of "boot.$b.rc") at $(fact_of "boot.$b.total_s") s"
done
verdict=$(printf '%s\n' "$out" | grep '^QEMU-E2E-VERDICT' || true)
if [ "$crc" = 0 ] && [[ "$verdict" == "QEMU-E2E-VERDICT PASS"* ]]; then
  PASSED=1
else
  log "---- server logs (last 40 lines each) ----"
  for s in edu vgpu bochs; do log "server $s:"; tail -n 40 "$RUN/server-$s.log" | sed 's/^/  /' >&2; done
fi
VERDICT_DONE=1
echo "${verdict:-QEMU-E2E-VERDICT FAIL check.mjs produced no verdict (exit $crc)} (wall $(since "$RUN_START") s)"
[ "${PASSED:-0}" = 1 ]
