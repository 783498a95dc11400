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

# The display phase (main boot, with the bochs-display at 00:07.0): test/e2e/display/guest-display.sh,
# shared with the Xen e2e; the harness (test/e2e/display/watch.mjs) answers on ttyS1 (a pipe from the host).
. /display.sh

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
    display_phase "$D/$BOCHS" /dev/ttyS1 "mdevkit bochs-display over vfio-user: Linux's bochs DRM driver and fbcon" "blank modes"
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
