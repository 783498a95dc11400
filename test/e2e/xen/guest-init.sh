#!/bin/busybox sh
# Guest /init: find the edu device by PCI enumeration, drive it through MMIO, print E2E-RESULT;
# then drive the vGPU's command ring (DMA from/to reserved guest RAM), print E2E-VGPU-RESULT; then
# the display phase on the bochs display at 00:07.0 (test/e2e/display/guest-display.sh, shared
# with the QEMU e2e: Debian's DRM modules and bochs driver, fbcon, the test image on /dev/fb0 with
# tty1 in KD_GRAPHICS, a line of console text), the harness answering on the console (hvc0); then
# the save/restore phase (save_part: state left in the devices, xl save and xl restore by dom0,
# the state read back and the devices driven again on the restored domain).
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
echo "E2E-GUEST init up $(cut -d' ' -f1 /proc/uptime)s"
done_() { echo "E2E-GUEST-DONE"; sleep 1; poweroff -f; }
dev=""
for d in /sys/bus/pci/devices/*; do
  [ -e "$d/vendor" ] || continue
  echo "E2E-GUEST pci $(basename "$d") $(cat "$d/vendor") $(cat "$d/device") $(cat "$d/class")"
  [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ] && dev=$d
done
edu_part() {
  if [ -z "$dev" ]; then
    dmesg | grep -i -E 'pci|conf1|0cf8' | head -n 30 | sed 's/^/E2E-GUEST dmesg /'
    echo "E2E-RESULT error=no-edu-device"; return
  fi
  echo 1 > "$dev/enable" || echo "E2E-GUEST enable failed"
  bar=$(( $(head -n1 "$dev/resource" | cut -d' ' -f1) ))
  echo "E2E-GUEST bdf=$(basename "$dev") bar0=$(printf 0x%x $bar) cmd=$(od -An -tx2 -j4 -N2 "$dev/config" 2>/dev/null | tr -d ' ')"
  if [ "$bar" = 0 ]; then echo "E2E-RESULT error=bar-unassigned"; return; fi
  rd() { printf 0x%08x $(( $(devmem $((bar + $1)) 32) )); }
  id=$(rd 0)
  devmem $((bar + 4)) 32 0x12345678
  liveness=$(rd 4)
  devmem $((bar + 8)) 32 5
  factorial=$(( $(rd 8) ))
  # Interrupt status: IRQ_RAISE (0x60) sets bits in IRQ_STATUS (0x24); IRQ_ACK (0x64) clears them.
  devmem $((bar + 0x60)) 32 0x4
  irq_raised=$(rd 0x24)
  devmem $((bar + 0x64)) 32 0x4
  irq_acked=$(rd 0x24)
  echo "E2E-RESULT id=$id liveness=$liveness factorial=$factorial irq_raised=$irq_raised irq_acked=$irq_acked bdf=$(basename "$dev") bar0=$(printf 0x%x $bar)"
  # Informational timing: N devmem reads (each includes a busybox exec) of the served ID register vs
  # an address nobody serves, so the difference approximates the IOREQ round trip.
  N=200
  t() { cut -d' ' -f1 /proc/uptime | tr -d .; }
  a=$(t); i=0; while [ $i -lt $N ]; do devmem $bar 32 >/dev/null; i=$((i + 1)); done; b=$(t)
  i=0; while [ $i -lt $N ]; do devmem 0xfed00000 32 >/dev/null; i=$((i + 1)); done; c=$(t)
  echo "E2E-RTT n=$N served_total_ms=$(( (b - a) * 10 )) unserved_total_ms=$(( (c - b) * 10 )) per_access_delta_us=$(( ((b - a) - (c - b)) * 10000 / N ))"
  # N reads of the device's config space in a row: JS-handled on the server's side, which serves
  # such a run in a blocking poll on its JS thread (dom0 checks the engine's counters).
  i=0; while [ $i -lt $N ]; do od -An -tx4 -N4 "$dev/config" >/dev/null; i=$((i + 1)); done
  echo "E2E-CONFIG-RUN n=$N"
}

# ---- vGPU: a command ring in RAM the kernel does not use (mem=120M of memory=128), fetched and
# completed by the device's DMA through the IOREQ server's foreign mappings.
vgpu_part() {
  g=""
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1b36 ] && [ "$(cat "$d/device")" = 0x7fa0 ] && g=$d
  done
  [ -n "$g" ] || { echo "E2E-VGPU-RESULT error=no-vgpu-device"; return; }
  echo 1 > "$g/enable" || echo "E2E-GUEST vgpu enable failed"
  # bus master (+ memory, io): byte 0x07 at offset 4 of config space
  printf '\007' | dd of="$g/config" bs=1 seek=4 count=1 conv=notrunc 2>/dev/null || echo "E2E-GUEST vgpu bus-master write failed"
  vb=$(( $(head -n1 "$g/resource" | cut -d' ' -f1) ))
  echo "E2E-GUEST vgpu bdf=$(basename "$g") bar0=$(printf 0x%x $vb) cmd=$(od -An -tx2 -j4 -N2 "$g/config" 2>/dev/null | tr -d ' ')"
  [ "$vb" = 0 ] && { echo "E2E-VGPU-RESULT error=bar-unassigned"; return; }
  vr() { printf 0x%08x $(( $(devmem $((vb + $1)) 32) )); }
  vw() { devmem $((vb + $1)) 32 $2; }
  mw() { devmem $(($1)) 32 $2; }
  RING=0x07800000 FENCE=0x07801000
  echo "E2E-GUEST iomem: $(grep -i '^ *0*7[0-9a-f]\{6\}-' /proc/iomem | tr '\n' ';')"
  mw $FENCE 0
  # FILL_RECT {op 1, vramOffset 0, stride 64, w 16, h 4, color 0x00ff8000}
  mw $((RING + 0)) 1; mw $((RING + 4)) 0; mw $((RING + 8)) 64; mw $((RING + 12)) 0x00040010; mw $((RING + 16)) 0x00ff8000
  mw $((RING + 20)) 0; mw $((RING + 24)) 0; mw $((RING + 28)) 0
  # FENCE {op 3, value 0x1234, gpa FENCE}
  mw $((RING + 32)) 3; mw $((RING + 36)) 0x1234; mw $((RING + 40)) $FENCE; mw $((RING + 44)) 0
  mw $((RING + 48)) 0; mw $((RING + 52)) 0; mw $((RING + 56)) 0; mw $((RING + 60)) 0
  vid=$(vr 0)
  vw 0x028 $RING; vw 0x02c 0; vw 0x030 4096; vw 0x008 1; vw 0x038 64; vw 0x020 1
  echo "E2E-VGPU-RESULT id=$vid fence_ram=$(printf 0x%08x $(( $(devmem $FENCE 32) ))) fence_value=$(vr 0x080) ring_head=$(( $(vr 0x034) )) error=$(( $(vr 0x088) )) bdf=$(basename "$g") bar0=$(printf 0x%x $vb)"
}

# ---- save and restore: the guest leaves state in each device and reports it (E2E-SAVE-BEFORE),
# then waits on its console. dom0 runs `xl save` (Linux suspends: drivers frozen, then the domain
# is saved and destroyed; our servers save the device state) and `xl restore` (a new domain, new
# servers restoring that state), unpauses it and answers "go" on the new console. The guest reads
# the same state back (E2E-SAVE-AFTER) and drives the devices again (E2E-SAVE-RESULT).
save_state() {
  # vGPU VRAM (BAR2, guest RAM on Xen): the FILL_RECT's first and last pixel, and the one after it
  vram=$(( $(sed -n 3p "$g/resource" | cut -d' ' -f1) ))
  vm() { printf 0x%08x $(( $(devmem $((vram + $1)) 32) )); }
  echo "edu_liveness=$(rd 4) edu_factorial=$(( $(rd 8) )) vgpu_ring_head=$(( $(vr 0x034) )) vgpu_fence=$(vr 0x080) vgpu_error=$(( $(vr 0x088) )) vram0=$(vm 0) vram252=$(vm 252) vram256=$(vm 256) fb0=$(cat /sys/class/graphics/fb0/virtual_size 2>/dev/null)x$(cat /sys/class/graphics/fb0/bits_per_pixel 2>/dev/null)"
}
save_part() {
  [ -n "$dev" ] && [ -n "$g" ] && [ "$bar" != 0 ] && [ "$vb" != 0 ] || { echo "E2E-SAVE-RESULT error=devices-missing"; return; }
  devmem $((bar + 4)) 32 0x0badf00d
  devmem $((bar + 8)) 32 7
  before=$(save_state)
  echo "E2E-SAVE-BEFORE $before"
  exec 3</dev/hvc0
  stty -F /dev/hvc0 raw -echo
  echo "E2E-SAVE-READY up=$(cut -d' ' -f1 /proc/uptime)"
  answer_is go 900
  echo "E2E-SAVE-RESUMED answer=$answer up=$(cut -d' ' -f1 /proc/uptime)"
  after=$(save_state)
  echo "E2E-SAVE-AFTER $after"
  # Linux's freeze of a device without a driver cleared its bus mastering: the vGPU needs it back
  printf '\007' | dd of="$g/config" bs=1 seek=4 count=1 conv=notrunc 2>/dev/null
  devmem $((bar + 8)) 32 6
  # one more command: FENCE {op 3, value 0x5678, gpa FENCE} at ring offset 64, tail 96
  RING=0x07800000 FENCE=0x07801000
  devmem $FENCE 32 0
  for o in 0 4 8 12 16 20 24 28; do devmem $((RING + 64 + o)) 32 0; done
  devmem $((RING + 64)) 32 3; devmem $((RING + 68)) 32 0x5678; devmem $((RING + 72)) 32 $FENCE
  vw 0x038 96; vw 0x020 1
  echo "E2E-SAVE-RESULT same=$([ "$before" = "$after" ] && echo yes || echo no) edu_factorial6=$(( $(rd 8) )) vgpu_fence_ram=$(printf 0x%08x $(( $(devmem $FENCE 32) ))) vgpu_fence=$(vr 0x080) vgpu_ring_head=$(( $(vr 0x034) )) vgpu_error=$(( $(vr 0x088) ))"
  # the display on the restored domain, its driver thawed (which redraws the console itself): the
  # test image again, which dom0 requires in the new server's frame, pixel for pixel
  exec 3</dev/hvc0
  /mdk-display kd graphics
  /mdk-display fbwrite test:0 1024 768
  echo "E2E-SAVE-DISPLAY-CHECK up=$(cut -d' ' -f1 /proc/uptime)"
  answer_is checked 120
}
# answer_is WORD SECONDS: reads console lines on fd 3 until WORD (a stale answer of the display
# phase is skipped), then closes fd 3
answer_is() {
  while :; do
    read -t "$2" -r answer <&3 || { answer=timeout; break; }
    case "$answer" in "$1"*) break;; esac
  done
  exec 3<&-
}

edu_part
vgpu_part
# the display (no PNG before the driver loads, the test image, console text): the harness in dom0
# answers "next" on the console when the server's PNG shows what each step should
. /display.sh
display_phase /sys/bus/pci/devices/0000:00:07.0 /dev/hvc0 "mdevkit bochs-display over Xen: Linux's bochs DRM driver and fbcon"
save_part
done_
