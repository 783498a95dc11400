# The guest side of the display e2e tests, staged on the host: sourced by test/e2e/qemu/run.sh and
# test/e2e/xen/run.sh (bash; uses the caller's `log` and `die`). Both guests run Debian's own DRM
# modules and bochs driver from the kernel package they boot, the static guest tool
# (guest-tools/mdk-display.c) and the display phase (guest-display.sh).
#
#   stage_drm_modules SRC OUT     bochs and the closure of its dependencies (`modinfo -F depends`;
#                                 the package ships no modules.dep) from SRC, an unpacked kernel
#                                 package's lib/modules/<kver>, into OUT, decompressed, with OUT/order
#                                 (load order, dependencies first); OUT is replaced only when complete
#   check_drm_modules DIR         every module's dependencies come before it in DIR/order
#   build_display_tool KVER DIR   builds the tool static against the kernel's DRM UAPI headers
#                                 (linux-headers-<kver>'s -common package), cached in DIR by source
#                                 hash; prints its path
#   check_display_tool TOOL       the test images it generates equal frames.mjs's, byte for byte
#   stage_display_guest ROOT MODDIR TOOL
#                                 into a guest initramfs root: /drm/*.ko + /drm/order,
#                                 /mdk-display, /display.sh (guest-display.sh)

DISPLAY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DISPLAY_DRM_MODULES="drm drm_kms_helper ttm drm_ttm_helper drm_vram_helper bochs"

stage_drm_modules() {
  local src=$1 out=$2 f n m
  local -A KO=()
  local -a ORDER=()
  # every module of the package by name (dashes as underscores)
  while IFS= read -r f; do n=${f##*/}; n=${n%%.ko*}; KO[${n//-/_}]=$f; done < <(find "$src" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst')
  rm -rf "$out.build"; mkdir -p "$out.build"
  _stage_drm_module() {
    local name=${1//-/_} dep f
    for dep in "${ORDER[@]}"; do [ "$dep" = "$name" ] && return 0; done
    f=${KO[$name]:-}
    [ -n "$f" ] || die "module $name (needed by the display phase) is not in $src"
    case "$f" in
      *.xz) xz -dc "$f" > "$out.build/$name.ko" || die "cannot decompress $f";;
      *.zst) zstd -qdc "$f" > "$out.build/$name.ko" || die "cannot decompress $f";;
      *) cp "$f" "$out.build/$name.ko";;
    esac
    for dep in $(modinfo -F depends "$out.build/$name.ko" | tr ',' ' '); do _stage_drm_module "$dep"; done
    ORDER+=("$name")
  }
  for m in $DISPLAY_DRM_MODULES; do _stage_drm_module "$m"; done
  printf '%s\n' "${ORDER[@]}" > "$out.build/order"
  rm -rf "$out"; mv "$out.build" "$out"
}

check_drm_modules() {
  local dir=$1 m dep
  for m in $(cat "$dir/order"); do
    for dep in $(modinfo -F depends "$dir/$m.ko" | tr ',' ' '); do
      sed -n "1,/^$m\$/p" "$dir/order" | grep -qx "${dep//-/_}" || die "module $m needs $dep, which is not loaded before it"
    done
  done
}

build_display_tool() {
  local kver=$1 dir=$2 uapi key tool
  uapi="/usr/src/linux-headers-${kver%-amd64}-common/include/uapi"
  [ -f "$uapi/drm/drm_mode.h" ] || die "no DRM UAPI headers at $uapi (linux-headers-$kver)"
  key=$(sha256sum < "$DISPLAY_DIR/guest-tools/mdk-display.c" | cut -c1-12)
  tool="$dir/mdk-display-$kver-$key"
  if [ ! -x "$tool" ]; then
    log "building the guest display tool"
    mkdir -p "$dir"
    # the UAPI headers as the kernel tree has them (not installed): __user is empty in user space
    gcc -static -O2 -Wall -Wextra -Werror -D__user= -I"$uapi/drm" -o "$tool.part" "$DISPLAY_DIR/guest-tools/mdk-display.c" >&2 ||
      die "guest display tool build failed"
    mv "$tool.part" "$tool"
  fi
  echo "$tool"
}

check_display_tool() {
  local tool=$1 tmp
  tmp=$(mktemp -d)
  for spec in "1024 768 0" "800 600 1"; do
    set -- $spec
    "$tool" gen "$1" "$2" "$3" "$tmp/tool.raw" || { rm -rf "$tmp"; die "$tool gen $spec failed"; }
    node "$DISPLAY_DIR/frames.mjs" raw "$1" "$2" "$tmp/frames.raw" "$3" || { rm -rf "$tmp"; die "frames.mjs raw $spec failed"; }
    cmp -s "$tmp/tool.raw" "$tmp/frames.raw" || { rm -rf "$tmp"; die "the guest tool's test image $spec differs from frames.mjs's"; }
  done
  rm -rf "$tmp"
}

stage_display_guest() {
  local root=$1 moddir=$2 tool=$3
  mkdir -p "$root/drm"
  cp "$moddir"/*.ko "$moddir/order" "$root/drm/"
  cp "$tool" "$root/mdk-display"
  cp "$DISPLAY_DIR/guest-display.sh" "$root/display.sh"
}
