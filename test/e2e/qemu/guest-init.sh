#!/bin/busybox sh
# Guest /init of the real-QEMU e2e test (test/e2e/qemu/run.sh). Devices at fixed addresses:
#   00:04.0 QEMU's in-process edu (the reference)   00:05.0 mdevkit's edu (vfio-user)
#   00:06.0 mdevkit's vGPU (vfio-user)               00:07.0 mdevkit's bochs-display (vfio-user, main boot only)
# The kernel command line's mdk.mode selects what runs: main | fdless | kill | term.
# Every output line the harness reads starts with "QE "; results are the test module's
# (mdk_e2e.ko) "key=value" lines. The harness, not this script, decides pass or fail.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "QE init up=$(cut -d' ' -f1 /proc/uptime)"
mode=main
for a in $(cat /proc/cmdline); do case "$a" in mdk.mode=*) mode=${a#mdk.mode=};; esac; done
echo "QE mode $mode"

QEDU=0000:00:04.0 EDU=0000:00:05.0 VGPU=0000:00:06.0 BOCHS=0000:00:07.0
D=/sys/bus/pci/devices

finish() {
  echo "QE-DONE mode=$mode up=$(cut -d' ' -f1 /proc/uptime)"
  poweroff -f
  sleep 10
}

# run BDF COMMAND: runs one module command and prints its result line
run() {
  if [ ! -e "$D/$1/mdk_run" ]; then echo "QE res $1 $(echo "$2" | tr ' ' _) error=not-bound"; return; fi
  echo "$2" > "$D/$1/mdk_run"
  echo "QE res $1 $(echo "$2" | tr ' ' _) $(cat "$D/$1/mdk_run")"
}

enumerate() {
  for d in "$D"/*; do
    echo "QE pci $(basename "$d") $(cat "$d/vendor") $(cat "$d/device") $(cat "$d/class") $(cat "$d/revision" 2>/dev/null)"
  done
}

load_module() {
  insmod /mdk_e2e.ko
  echo "QE mod rc=$? bound=$(ls /sys/bus/pci/drivers/mdk_e2e 2>/dev/null | grep -c '^0000:')"
}

# traffic SECONDS: continuous trapped reads on both served devices (in the module, two background
# writers), progress lines until both end. "QE traffic-flowing" once both have made progress.
traffic() {
  ms=$(( $1 * 1000 ))
  echo "spin $ms" > "$D/$EDU/mdk_run" & p1=$!
  echo "spin $ms" > "$D/$VGPU/mdk_run" & p2=$!
  flowing=0
  while kill -0 $p1 2>/dev/null || kill -0 $p2 2>/dev/null; do
    a=$(cut -d' ' -f1 "$D/$EDU/mdk_progress") b=$(cut -d' ' -f1 "$D/$VGPU/mdk_progress")
    echo "QE traffic edu=$a vgpu=$b"
    if [ $flowing = 0 ] && [ "$a" -gt 0 ] && [ "$b" -gt 0 ]; then echo "QE traffic-flowing"; flowing=1; fi
    sleep 0.3
  done
  wait
  echo "QE res $EDU spin $(cat "$D/$EDU/mdk_run")"
  echo "QE res $VGPU spin $(cat "$D/$VGPU/mdk_run")"
}

# The display phase (main boot, with the bochs-display at 00:07.0): Debian's own DRM modules and
# bochs driver, then fbcon on /dev/fb0. Each "QE disp step=NAME" line is a point where the harness
# (display-watch.mjs) checks the server's PNG; it answers on ttyS1 (a pipe from the host) when the
# PNG shows what it should, so the guest never moves on before the PNG was checked.
go() {
  read -t 120 -r answer <&3 || answer=timeout
  [ "$answer" = next ] || echo "QE disp no-go step=$1 answer=$answer"
}
step() {
  echo "QE disp step=$1 up=$(cut -d' ' -f1 /proc/uptime)"
  go "$1"
}
display_phase() {
  if [ "$(cat "$D/$BOCHS/vendor" 2>/dev/null):$(cat "$D/$BOCHS/device" 2>/dev/null)" != 0x1234:0x1111 ]; then
    echo "QE disp absent"
    return
  fi
  exec 3</dev/ttyS1
  stty -F /dev/ttyS1 raw -echo
  step no-driver
  for m in $(cat /drm/order); do
    insmod "/drm/$m.ko"
    echo "QE disp insmod $m rc=$?"
  done
  n=0
  while [ ! -e /dev/fb0 ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
  echo "QE disp fb0 present=$([ -e /dev/fb0 ] && echo yes || echo no) driver=$(basename "$(readlink "$D/$BOCHS/driver")") up=$(cut -d' ' -f1 /proc/uptime)"
  [ -e /dev/fb0 ] || { echo "QE disp end"; exec 3<&-; return; }
  /mdk-display info
  echo "QE disp sysfs virtual_size=$(cat /sys/class/graphics/fb0/virtual_size) stride=$(cat /sys/class/graphics/fb0/stride) bpp=$(cat /sys/class/graphics/fb0/bits_per_pixel) name=$(cat /sys/class/graphics/fb0/name)"
  # tty1: cleared, then in graphics mode: fbcon draws nothing over the test image
  printf '\033[H\033[2J' > /dev/tty1
  /mdk-display kd graphics
  echo "QE disp step=image-write up=$(cut -d' ' -f1 /proc/uptime)"
  /mdk-display fbwrite /img1.raw 1024 768
  step image
  echo 1 > /sys/class/graphics/fb0/blank
  step blank
  echo 0 > /sys/class/graphics/fb0/blank
  step unblank
  # a second mode through KMS: the tool holds it (DRM master) until the harness has checked it
  /mdk-display drm-mode 800 600 /img2.raw <&3
  step restored
  /mdk-display kd text
  echo "mdevkit bochs-display over vfio-user: Linux's bochs DRM driver and fbcon" > /dev/tty1
  step text
  exec 3<&-
  echo "QE disp end"
}

case "$mode" in
  main)
    enumerate
    for b in $QEDU $EDU $VGPU; do
      echo "QE cfg $b $(od -An -tx1 -v -N256 "$D/$b/config" | tr -d ' \n')"
    done
    load_module
    run $QEDU mmio; run $EDU mmio; run $VGPU mmio
    run $QEDU "irq intx"; run $EDU "irq intx"
    run $QEDU "irq msi"; run $EDU "irq msi"
    run $QEDU dma; run $EDU dma
    run $VGPU ring
    run $VGPU irq
    run $QEDU bench; run $EDU bench; run $VGPU bench
    display_phase
    # last: message DMA inside a device access can wedge QEMU's stream for the rest of the boot
    run $EDU p2p
    ;;
  fdless)
    enumerate
    load_module
    run $EDU mmio; run $VGPU mmio
    run $EDU dma
    run $VGPU ring
    ;;
  kill)
    load_module
    traffic 300
    ;;
  term)
    load_module
    traffic 60
    ;;
esac
finish
