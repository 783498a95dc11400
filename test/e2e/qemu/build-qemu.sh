#!/usr/bin/env bash
# Provides a QEMU >= 10.1 (the first with the vfio-user-pci client) built from Debian's source
# package, cached outside the clone and keyed by version and configure flags, so a machine builds it
# once. Prints the install prefix on stdout (bin/qemu-system-x86_64, share/qemu-fw/ with firmware).
#
# Debian 12 ships QEMU 7.2 (bookworm-backports 10.0): the source comes from sid's or
# trixie-backports' source lists, newest advertised version first (pool files of advertised versions
# may already be gone). Build dependencies come from Debian's packages (meson >= 1.5 from
# bookworm-backports); firmware from Debian's seabios and qemu-system-data packages.
#
# Env: MDEVKIT_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/mdevkit), QEMU_BUILD_JOBS (default nproc).
set -euo pipefail

log() { printf 'qemu-build: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

CACHE_ROOT=${MDEVKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mdevkit}
MIN_VERSION=10.1
CONFIGURE_FLAGS=(--target-list=x86_64-softmmu --without-default-features --enable-tcg --enable-pixman
  --enable-fdt=system --disable-download --disable-docs --disable-werror --disable-install-blobs)
FLAGS_KEY=$(printf '%s\n' "${CONFIGURE_FLAGS[@]}" | sha256sum | cut -c1-12)
mkdir -p "$CACHE_ROOT"

# A finished build for any acceptable version with these flags: use it (newest first).
for done_file in $(ls -d "$CACHE_ROOT"/qemu-*-"$FLAGS_KEY"/.done 2>/dev/null | sort -rV); do
  prefix=$(dirname "$done_file")
  if [ -x "$prefix/bin/qemu-system-x86_64" ] && [ -f "$prefix/share/qemu-fw/bios-256k.bin" ]; then
    echo "$prefix"; exit 0
  fi
done

[ "$(id -u)" = 0 ] || die "no cached QEMU >= $MIN_VERSION in $CACHE_ROOT and not root: cannot install build dependencies"
export DEBIAN_FRONTEND=noninteractive
APT_LIST=/etc/apt/sources.list.d/mdevkit-qemu.sources
if [ ! -f "$APT_LIST" ]; then
  log "adding Debian source lists (sid, trixie-backports: source only) and bookworm-backports"
  cat > "$APT_LIST" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: sid trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
apt-get update -q >/dev/null || log "warning: apt-get update reported errors"

log "installing build dependencies"
apt-get install -y -q -t bookworm-backports meson >/dev/null
apt-get install -y -q ninja-build flex bison python3-venv pkg-config libglib2.0-dev libpixman-1-dev \
  libfdt-dev zlib1g-dev seabios dpkg-dev xz-utils bzip2 >/dev/null
# linuxboot_dma.bin (needed for -kernel) lives in qemu-system-data; take it without installing QEMU.
FW_DEBS="$CACHE_ROOT/fw-debs"; mkdir -p "$FW_DEBS"
if ! ls "$FW_DEBS"/qemu-system-data_*.deb >/dev/null 2>&1; then
  (cd "$FW_DEBS" && apt-get download -q -t bookworm-backports qemu-system-data >/dev/null 2>&1 ||
    apt-get download -q qemu-system-data >/dev/null) || die "cannot download qemu-system-data"
fi

versions=$(apt-cache showsrc qemu 2>/dev/null | awk '/^Version:/{print $2}' | sort -urV)
[ -n "$versions" ] || die "no qemu source versions advertised (apt-cache showsrc qemu)"
SRC_DIR="$CACHE_ROOT/src"; mkdir -p "$SRC_DIR"
chosen=""
for v in $versions; do
  upstream=${v#*:}; upstream=${upstream%%+*}; upstream=${upstream%%-*}
  dpkg --compare-versions "$upstream" ge "$MIN_VERSION" || continue
  log "trying qemu source $v"
  work="$SRC_DIR/${v//:/_}"; rm -rf "$work"; mkdir -p "$work"   # QEMU's configure refuses ':' in paths
  if (cd "$work" && apt-get source -d -q "qemu=$v" >/dev/null 2>&1); then chosen=$v; break; fi
  log "qemu $v did not download; next"
  rm -rf "$work"
done
[ -n "$chosen" ] || die "no qemu source >= $MIN_VERSION downloaded (advertised: $(echo $versions))"
upstream=${chosen#*:}; upstream=${upstream%%+*}; upstream=${upstream%%-*}
PREFIX="$CACHE_ROOT/qemu-$upstream-$FLAGS_KEY"
work="$SRC_DIR/${chosen//:/_}"

log "unpacking qemu $chosen"
(cd "$work" && dpkg-source -x --no-check ./*.dsc tree >/dev/null)
cd "$work/tree"
rm -rf build && mkdir build && cd build
log "configuring (${CONFIGURE_FLAGS[*]})"
# Debian's python3 (not a pyenv one on PATH): that is where Debian's meson package lives.
../configure --python=/usr/bin/python3 --prefix="$PREFIX" "${CONFIGURE_FLAGS[@]}" >"$work/configure.log" 2>&1 ||
  { tail -n 40 "$work/configure.log" >&2; die "configure failed (log: $work/configure.log)"; }
jobs=${QEMU_BUILD_JOBS:-$(nproc)}
log "building with ninja -j$jobs (3 to 18 min on 2 vCPUs, by host)"
start=$(date +%s)
ninja -j"$jobs" >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; die "build failed (log: $work/build.log)"; }
ninja install >"$work/install.log" 2>&1 || { tail -n 40 "$work/install.log" >&2; die "install failed"; }
log "built in $(( $(date +%s) - start )) s"

FW="$PREFIX/share/qemu-fw"; mkdir -p "$FW"
cp /usr/share/seabios/bios-256k.bin "$FW/"
tmp=$(mktemp -d); dpkg -x "$(ls "$FW_DEBS"/qemu-system-data_*.deb | head -1)" "$tmp"
for f in linuxboot_dma.bin linuxboot.bin kvmvapic.bin vgabios-stdvga.bin; do
  src=$(find "$tmp" -name "$f" | head -1); [ -n "$src" ] && cp -L "$src" "$FW/"
done
rm -rf "$tmp"
[ -f "$FW/linuxboot_dma.bin" ] || die "linuxboot_dma.bin not found in qemu-system-data"
"$PREFIX/bin/qemu-system-x86_64" -device help 2>/dev/null | grep -q vfio-user-pci || die "built QEMU lacks vfio-user-pci"
echo "$chosen" > "$PREFIX/.done"
rm -rf "$work/tree"
log "QEMU $chosen ready at $PREFIX"
echo "$PREFIX"
