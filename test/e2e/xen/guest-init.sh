#!/bin/busybox sh
# Guest /init: find the edu device by PCI enumeration, drive it through MMIO, print E2E-RESULT.
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
if [ -z "$dev" ]; then echo "E2E-RESULT error=no-edu-device"; done_; fi
echo 1 > "$dev/enable" || echo "E2E-GUEST enable failed"
bar=$(( $(head -n1 "$dev/resource" | cut -d' ' -f1) ))
echo "E2E-GUEST bdf=$(basename "$dev") bar0=$(printf 0x%x $bar) cmd=$(od -An -tx2 -j4 -N2 "$dev/config" 2>/dev/null | tr -d ' ')"
if [ "$bar" = 0 ]; then echo "E2E-RESULT error=bar-unassigned"; done_; fi
rd() { printf 0x%08x $(( $(devmem $((bar + $1)) 32) )); }
id=$(rd 0)
devmem $((bar + 4)) 32 0x12345678
liveness=$(rd 4)
devmem $((bar + 8)) 32 5
factorial=$(( $(rd 8) ))
echo "E2E-RESULT id=$id liveness=$liveness factorial=$factorial bdf=$(basename "$dev") bar0=$(printf 0x%x $bar)"
# Informational timing: N devmem reads (each includes a busybox exec) of the served ID register vs
# an address nobody serves, so the difference approximates the IOREQ round trip.
N=200
t() { cut -d' ' -f1 /proc/uptime | tr -d .; }
a=$(t); i=0; while [ $i -lt $N ]; do devmem $bar 32 >/dev/null; i=$((i + 1)); done; b=$(t)
i=0; while [ $i -lt $N ]; do devmem 0xfed00000 32 >/dev/null; i=$((i + 1)); done; c=$(t)
echo "E2E-RTT n=$N served_total_ms=$(( (b - a) * 10 )) unserved_total_ms=$(( (c - b) * 10 )) per_access_delta_us=$(( ((b - a) - (c - b)) * 10000 / N ))"
done_
