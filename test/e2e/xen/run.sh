#!/usr/bin/env bash
# Real-Xen end-to-end test: boots Debian 12's Xen 4.17 in QEMU (TCG) with a Linux dom0 whose
# initramfs holds the toolstack, Node and this project; dom0 creates a PVH guest paused, starts
# `mdevkit serve edu --xen <domid>` (00:05.0), `mdevkit serve vgpu --xen <domid>` (00:06.0) and
# `mdevkit serve bochs-display --xen <domid> --display-png` (00:07.0) as three IOREQ servers,
# unpauses the guest, and the guest drives edu through PCI enumeration + MMIO, the vGPU through a
# command ring the device fetches by DMA (foreign mappings of guest RAM), and the bochs display
# with Debian's own DRM modules and bochs driver: VRAM is guest RAM at BAR0 (populated by the
# server, relocated when Linux enables the BAR), fbcon comes up, the test image of
# test/e2e/display/frames.mjs goes to /dev/fb0, then a line of console text; the PNG follows the
# guest's VRAM writes through track_dirty_vram. dom0 checks every frame (test/e2e/display/watch.mjs
# at each step, display-check.mjs after) and sends the matched frames to this script over the
# serial console, which prints `DISPLAY-FRAME path=xen sha256=<frame hash> png=<file>` and requires
# the hash frames.mjs defines for the test image (the vfio-user path's too). Then save and restore:
# the guest leaves state in each device and waits; dom0 runs `xl save` (the servers, started with
# --save, notice the domain is gone and write their device state), `xl restore -p` (a new domid),
# starts new servers with --restore, unpauses, and the guest reads back what it left (edu
# registers, the vGPU's ring position, fence and VRAM, the display's mode) and drives the devices
# again (edu, a vGPU fence, the test image in the restored display server's frame).
# Exits 0 only on "E2E-VERDICT PASS" and that hash.
#
# Needs root (apt-get for host packages). Cache: ~/.cache/mdevkit/xen-e2e (MDEVKIT_CACHE overrides ~/.cache/mdevkit).
# Env: XEN_E2E_TIMEOUT (s per boot, default 900), XEN_E2E_KEEP=1 keeps the run directory's logs.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
# shellcheck source=../display/stage.sh
. "$ROOT/test/e2e/display/stage.sh"
CACHE="${MDEVKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mdevkit}/xen-e2e"
TIMEOUT=${XEN_E2E_TIMEOUT:-900}
KVER_PKG=""

log() { printf 'xen-e2e: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# ---------------------------------------------------------------- host packages
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v gcc >/dev/null || need+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
command -v modinfo >/dev/null || need+=(kmod)
command -v file >/dev/null || need+=(file)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "need root to install ${need[*]}"
  log "installing host packages: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
  }
fi
BUSYBOX=/bin/busybox
case "$(file -L "$BUSYBOX")" in *statically*) ;; *) die "$BUSYBOX is not static (busybox-static)";; esac

# ---------------------------------------------------------------- project build
[ -f "$ROOT/build/Release/mdevkit_native.node" ] || die "build/Release/mdevkit_native.node missing: run npm install"
[ -f "$ROOT/dist/cli/main.js" ] || die "dist/ missing: run npm install (or npm run build)"

# ---------------------------------------------------------------- Xen + kernel packages
mkdir -p "$CACHE/debs"
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$KPKG" ] || die "cannot resolve linux-image-amd64"
PKGS=(xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common libxencall1 libxenevtchn1
  libxenforeignmemory1 libxengnttab1 libxenmisc4.17 libxenstore4 libxentoollog1 libxendevicemodel1
  libxenhypfs1 libxentoolcore1 libyajl2 xenstore-utils "$KPKG")
STAGE="$CACHE/stage"
if [ ! -f "$CACHE/stage.done" ] || [ "$(cat "$CACHE/stage.done")" != "${PKGS[*]}" ]; then
  log "downloading ${#PKGS[@]} packages"
  rm -rf "$CACHE/debs"/*.deb "$STAGE"; mkdir -p "$STAGE"
  (cd "$CACHE/debs" && apt-get download -q "${PKGS[@]}" >/dev/null 2>&1) || {
    apt-get update -q >/dev/null; (cd "$CACHE/debs" && apt-get download -q "${PKGS[@]}" >/dev/null 2>&1); }
  for d in "$CACHE/debs"/*.deb; do dpkg -x "$d" "$STAGE"; done
  echo "${PKGS[*]}" > "$CACHE/stage.done"
fi
KVER=$(ls "$STAGE/lib/modules" | head -1)
VMLINUZ="$STAGE/boot/vmlinuz-$KVER"
XENGZ=$(ls "$STAGE"/boot/xen-4.17-amd64.gz)
[ -f "$VMLINUZ" ] && [ -f "$XENGZ" ] || die "kernel or Xen image missing in $STAGE"

# ---------------------------------------------------------------- the display guest (test/e2e/display/stage.sh)
MODDIR="$CACHE/drm-modules-$KVER"
[ -f "$MODDIR/order" ] || stage_drm_modules "$STAGE/lib/modules/$KVER" "$MODDIR"
check_drm_modules "$MODDIR"
UAPI_PKG="linux-headers-${KVER%-amd64}-common"
if [ ! -f "/usr/src/$UAPI_PKG/include/uapi/drm/drm_mode.h" ]; then
  [ "$(id -u)" = 0 ] || die "need root to install $UAPI_PKG (the DRM UAPI headers of the display tool)"
  log "installing $UAPI_PKG"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$UAPI_PKG" >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$UAPI_PKG" >/dev/null
  }
fi
TOOL=$(build_display_tool "$KVER" "$CACHE") || die "guest display tool build failed"
check_display_tool "$TOOL"
EXPECTED_SHA=$(node "$ROOT/test/e2e/display/frames.mjs" expected-sha256 1024 768) || die "frames.mjs expected-sha256 failed"

RUN="$CACHE/run"
rm -rf "$RUN"; mkdir -p "$RUN"
gunzip -c "$XENGZ" > "$RUN/xen"

# copy_bin SRC DEST_ROOT DEST_PATH [LIBPATH]: copies a binary and every library ldd lists.
copy_libs() {
  local bin=$1 root=$2 libpath=${3:-}
  LD_LIBRARY_PATH="$libpath" ldd "$bin" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' |
  while read -r lib; do
    local dst="$root/lib/x86_64-linux-gnu/$(basename "$lib")"
    case "$lib" in /lib64/*) dst="$root$lib";; esac
    mkdir -p "$(dirname "$dst")"
    [ -e "$dst" ] || cp -L "$lib" "$dst"
  done
}

# ---------------------------------------------------------------- guest initramfs
G="$RUN/guest-root"
mkdir -p "$G"/{bin,sbin,proc,sys,dev,tmp}
cp "$BUSYBOX" "$G/bin/busybox"
cp "$HERE/guest-init.sh" "$G/init"; chmod +x "$G/init"
stage_display_guest "$G" "$MODDIR" "$TOOL"
(cd "$G" && find . | cpio -o -H newc --quiet | gzip -1) > "$RUN/guest-initrd.gz"

# ---------------------------------------------------------------- dom0 initramfs
D="$RUN/dom0-root"
mkdir -p "$D"/{bin,sbin,proc,sys,dev,tmp,run,etc,lib/modules,var/lib/xen,var/log/xen,var/run/xen,var/lib/xenstored,guest,mdevkit/build/Release,mdevkit/node_modules}
ln -s lib "$D/lib64" 2>/dev/null || true
cp "$BUSYBOX" "$D/bin/busybox"
cp "$HERE/dom0-init.sh" "$D/init"; chmod +x "$D/init"
# kernel modules (decompressed so busybox insmod can load them), in dependency order
for m in xen-evtchn xen-privcmd xenfs xen-gntdev xen-gntalloc; do
  f=$(find "$STAGE/lib/modules/$KVER" -name "$m.ko*" | head -1)
  [ -n "$f" ] || { log "module $m not found (built in?)"; continue; }
  case "$f" in
    *.xz) xz -dc "$f" > "$D/lib/modules/$m.ko";;
    *.zst) zstd -qdc "$f" > "$D/lib/modules/$m.ko";;
    *) cp "$f" "$D/lib/modules/$m.ko";;
  esac
done
# Xen toolstack
XLIB="$STAGE/usr/lib/x86_64-linux-gnu"
mkdir -p "$D/usr/lib"
cp -a "$STAGE/usr/lib/xen-4.17" "$D/usr/lib/"
cp -a "$XLIB"/. "$D/lib/x86_64-linux-gnu/" 2>/dev/null || { mkdir -p "$D/lib/x86_64-linux-gnu"; cp -a "$XLIB"/. "$D/lib/x86_64-linux-gnu/"; }
mkdir -p "$D/lib/x86_64-linux-gnu"; [ -d "$STAGE/etc/xen" ] && cp -a "$STAGE/etc/xen" "$D/etc/"
for b in "$D"/usr/lib/xen-4.17/bin/*; do
  file "$b" | grep -q ELF && copy_libs "$b" "$D" "$XLIB:$STAGE/usr/lib/xen-4.17/lib" || true
done
for l in /lib/x86_64-linux-gnu/libgcc_s.so.1; do cp -L "$l" "$D/lib/x86_64-linux-gnu/"; done
# xenstore-read (the display watcher finds the guest's console pty in xenstore)
for b in "$STAGE"/usr/bin/xenstore*; do cp -a "$b" "$D/usr/bin/" 2>/dev/null || { mkdir -p "$D/usr/bin"; cp -a "$b" "$D/usr/bin/"; }; done
[ -e "$D/usr/bin/xenstore-read" ] || die "xenstore-read missing from xenstore-utils"
copy_libs "$(readlink -f "$STAGE/usr/bin/xenstore-read")" "$D" "$XLIB"
# Node and this project
mkdir -p "$D/usr/bin"
cp -L "$(readlink -f /usr/bin/node)" "$D/usr/bin/node"
copy_libs /usr/bin/node "$D"
copy_libs "$ROOT/build/Release/mdevkit_native.node" "$D"
cp -a "$ROOT/dist" "$D/mdevkit/"
cp "$ROOT/package.json" "$D/mdevkit/"
cp "$ROOT/build/Release/mdevkit_native.node" "$D/mdevkit/build/Release/"
# the package's runtime dependencies, their whole closure as npm resolved it (node-addon-api is
# only for building the native core)
deps=$(cd "$ROOT" && npm ls --omit=dev --parseable --all 2>/dev/null || true)
for p in $deps; do
  case "$p" in "$ROOT" | */node-addon-api) continue;; esac
  rel=${p#"$ROOT"/}; mkdir -p "$D/mdevkit/$(dirname "$rel")"; cp -a "$p" "$D/mdevkit/$(dirname "$rel")/"
done
for m in commander pngjs; do [ -d "$D/mdevkit/node_modules/$m" ] || die "runtime dependency $m not found by npm ls"; done
# the display harness: watcher, test image definition, dom0 checks
mkdir -p "$D/mdevkit/test/e2e/display" "$D/mdevkit/test/e2e/xen"
cp "$ROOT/test/e2e/display/frames.mjs" "$ROOT/test/e2e/display/watch.mjs" "$D/mdevkit/test/e2e/display/"
cp "$HERE/display-check.mjs" "$D/mdevkit/test/e2e/xen/"
# the guest
cp "$VMLINUZ" "$D/guest/vmlinuz"
cp "$RUN/guest-initrd.gz" "$D/guest/initrd.gz"
cp "$HERE/guest.cfg" "$D/guest/guest.cfg"
(cd "$D" && find . | cpio -o -H newc --quiet | gzip -1) > "$RUN/dom0-initrd.gz"
log "dom0 initramfs: $(du -h "$RUN/dom0-initrd.gz" | cut -f1), guest initramfs: $(du -h "$RUN/guest-initrd.gz" | cut -f1)"

# ---------------------------------------------------------------- boot
cp "$VMLINUZ" "$RUN/vmlinuz"
OUT="$RUN/serial.log"
log "booting Xen under QEMU (TCG), limit ${TIMEOUT}s; serial log: $OUT"
# A guest vCPU that triple-faults (Xen: "Triple fault - invoking HVM shutdown action"; seen at
# random points of the guest's boot and display phase in about one loaded run in five, with Xen's
# SVM itself emulated by TCG) gets one more boot, said loudly here; a second one fails.
for attempt in 1 2; do
  start=$(date +%s.%N)
  set +e
  # No XSAVE for Xen under TCG (Xen then saves FPU state with FXSAVE): with it, dom0 processes
  # failed at random on a loaded host (corrupted FP/SSE values, heap checks, segfaults).
  (cd "$RUN" && timeout "$TIMEOUT" qemu-system-x86_64 -machine q35,accel=tcg -cpu max,-smap,-smep,-avx,-avx2,-xsave,-xsaveopt,-xsavec,-xsaves \
    -smp 2 -m 2048 -display none -monitor none -serial stdio -no-reboot -kernel xen \
    -append "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_mem=1024M,max:1024M dom0_max_vcpus=1 bootscrub=0" \
    -initrd "vmlinuz console=hvc0 earlyprintk=xen loglevel=6 rdinit=/init,dom0-initrd.gz" </dev/null >"$OUT" 2>&1)
  qrc=$?
  set -e
  end=$(date +%s.%N)
  elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}')
  tr -d '\r' < "$OUT" > "$OUT.txt"
  verdict=$(grep -a -m1 '^E2E-VERDICT' "$OUT.txt" || true)
  log "QEMU exit $qrc after ${elapsed}s"
  grep -a -E '^(E2E-|RTT-)' "$OUT.txt" | grep -v -E '^(E2E-VERDICT|E2E-DISPLAY-PNG)' >&2 || true
  if [ $attempt = 1 ] && grep -a -q 'Triple fault - invoking HVM shutdown action' "$OUT.txt"; then
    log "RETRY: the guest triple-faulted (Xen):"
    grep -a -A14 'Triple fault - invoking HVM shutdown action' "$OUT.txt" | head -n 15 >&2 || true
    cp "$OUT.txt" "$RUN/serial-attempt1.log.txt"
    continue
  fi
  break
done

# extract_png NAME OUT: the frame dom0 sent between E2E-DISPLAY-PNG-BEGIN/END (numbered base64
# lines; Xen's own messages may come in between), checked against the size and hash dom0 announced.
extract_png() {
  local name=$1 out=$2 begin bytes sha
  begin=$(grep -a -m1 "^E2E-DISPLAY-PNG-BEGIN name=$name " "$OUT.txt") || { log "dom0 sent no $name"; return 1; }
  bytes=$(sed -n 's/.* bytes=\([0-9]*\).*/\1/p' <<< "$begin") sha=$(sed -n 's/.* sha256=\([0-9a-f]*\).*/\1/p' <<< "$begin")
  awk -v name="$name" '
    $0 ~ "^E2E-DISPLAY-PNG-BEGIN name=" name " " { on = 1; next }
    $0 ~ "^E2E-DISPLAY-PNG-END name=" name "$" { on = 0 }
    on && $1 == "E2E-DISPLAY-PNG" { if ($2 != n) { print "sequence " n " missing" > "/dev/stderr"; exit 1 } n++; printf "%s", $3 }
  ' "$OUT.txt" | base64 -d > "$out" || { log "$name: bad base64 stream"; return 1; }
  [ "$(stat -c %s "$out")" = "$bytes" ] && [ "$(sha256sum < "$out" | cut -d' ' -f1)" = "$sha" ] ||
    { log "$name: $(stat -c %s "$out") bytes received, $bytes sent, or the hash differs"; return 1; }
}
# The display: the frame the guest's test image gave, copied out of dom0, hashed as frames.mjs
# defines it, and required to be the hash of the test image itself (the vfio-user path prints it too).
DISPLAY_OUT="$CACHE/display"
mkdir -p "$DISPLAY_OUT"
display_ok=0 frame_sha=none
if extract_png frame-image.png "$DISPLAY_OUT/xen-test-image.png"; then
  frame_sha=$(node "$ROOT/test/e2e/display/frames.mjs" sha256 "$DISPLAY_OUT/xen-test-image.png") || frame_sha=none
  [ "$frame_sha" = "$EXPECTED_SHA" ] && display_ok=1
fi
console_ok=0
extract_png frame-text.png "$DISPLAY_OUT/xen-console.png" && console_ok=1
# The frames of a passing run, for the demo (npm start) to show, as the real-QEMU e2e records its own.
if [ $display_ok = 1 ] && [ $console_ok = 1 ]; then
  XEN_VERSION=$(dpkg-deb -f "$(ls "$CACHE"/debs/xen-hypervisor-4.17-amd64_*.deb | head -1)" Version 2>/dev/null || echo 4.17)
  node -e '
    const [file, sha, kernel, xen] = process.argv.slice(1);
    require("fs").writeFileSync(file, JSON.stringify({ recorded: new Date().toISOString(), path: "xen", sha256: sha, kernel,
      hypervisor: `Xen ${xen} (Debian 12) under QEMU TCG`, testImage: "xen-test-image.png", console: "xen-console.png" }, null, 1));
  ' "$DISPLAY_OUT/xen.json" "$frame_sha" "$KVER" "$XEN_VERSION"
fi
node -e "import('$ROOT/test/e2e/display/frames.mjs').then((f) => console.log(f.displayFrameLine('xen', process.argv[1], process.argv[2])))" \
  "$frame_sha" "$DISPLAY_OUT/xen-test-image.png"
[ $display_ok = 1 ] || log "the Xen path's frame hash $frame_sha is not the test image's $EXPECTED_SHA (test/e2e/display/frames.mjs)"
case "$verdict" in
  "E2E-VERDICT PASS"*)
    [ $display_ok = 1 ] || die "display frame hash $frame_sha, expected $EXPECTED_SHA"
    echo "$verdict (wall ${elapsed}s)"
    exit 0;;
  *)
    log "---- last 150 lines of serial log ----"
    tail -n 150 "$OUT.txt" >&2
    [ -n "$verdict" ] && die "$verdict" || die "no verdict (QEMU exit $qrc, ${elapsed}s)";;
esac
