#!/bin/busybox sh
# dom0 /init: toolstack up, create the guest paused, serve edu (00:05.0) and vgpu (00:06.0) through
# two mdevkit IOREQ servers,
# unpause, collect the guest's console, print E2E-VERDICT and power off.
/bin/busybox mkdir -p /usr/sbin /usr/bin /sbin
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/lib/xen-4.17/bin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /var/run/xenstored /var/log/xen/console /var/lib/xen /run/xen; mount -t devpts devpts /dev/pts
T0=$(cut -d' ' -f1 /proc/uptime)
say() { echo "E2E-DOM0 [$(cut -d' ' -f1 /proc/uptime)] $*"; }
verdict() { echo; echo "E2E-VERDICT $*"; echo; sync; sleep 1; reboot -f; sleep 10; }
show_logs() {
  for n in edu vgpu; do echo "---- mdevkit $n server log ----"; tail -n 40 /tmp/server-$n.log 2>/dev/null; done
  echo "---- guest console ----"; tail -n 80 /var/log/xen/console/guest-e2e.log 2>/dev/null
  echo "---- xl dmesg (tail) ----"; xl dmesg 2>/dev/null | tail -n 25
}
for m in xen-evtchn xen-privcmd xenfs xen-gntdev xen-gntalloc; do
  [ -f /lib/modules/$m.ko ] && { insmod /lib/modules/$m.ko || say "insmod $m failed"; }
done
mount -t xenfs xenfs /proc/xen || verdict "FAIL cannot mount xenfs"
xenstored --pid-file /var/run/xenstored.pid || verdict "FAIL xenstored"
xen-init-dom0 || verdict "FAIL xen-init-dom0"
xenconsoled --pid-file=/var/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console || verdict "FAIL xenconsoled"
say "toolstack up"
xl create -p /guest/guest.cfg > /tmp/xl-create.log 2>&1 || { cat /tmp/xl-create.log; verdict "FAIL xl create"; }
domid=$(xl domid e2e)
say "guest created paused: domid $domid"
# start_server NAME BDF [extra args]: one IOREQ server per device; waits until it is serving.
# Both servers claim 0xCF8-0xCFB (--config-latch): Xen accepts overlapping claims by different
# servers and sends each access to the first server that claims it.
start_server() {
  name=$1 bdf=$2; shift 2
  node /mdevkit/dist/cli/main.js serve "$name" --xen "$domid" --bdf "$bdf" -v "$@" > /tmp/server-$name.log 2>&1 &
  eval "srv_$name=$!"
  i=0
  until grep -q 'serving' /tmp/server-$name.log 2>/dev/null; do
    kill -0 $(eval echo \$srv_$name) 2>/dev/null || { show_logs; verdict "FAIL $name server exited before serving"; }
    i=$((i + 1)); [ $i -gt 600 ] && { show_logs; verdict "FAIL $name server not serving after 60 s"; }
    sleep 0.1
  done
  say "server up: $(grep -m1 serving /tmp/server-$name.log)"
}
start_server edu 00:05.0 --config-latch
start_server vgpu 00:06.0 ${VGPU_LATCH---config-latch}
xl unpause e2e
say "guest unpaused"
i=0
while :; do
  grep -q 'E2E-GUEST-DONE' /var/log/xen/console/guest-e2e.log 2>/dev/null && break
  # the guest is gone (checked twice: xl domid can fail transiently while dom0 is busy)
  xl domid e2e >/dev/null 2>&1 || { sleep 1; xl domid e2e >/dev/null 2>&1 || { say "guest domain gone"; xl list; break; }; }
  i=$((i + 1)); [ $i -gt 300 ] && break
  sleep 1
done
say "guest finished or timed out after ${i}s"
grep -a 'E2E-' /var/log/xen/console/guest-e2e.log | tr -d '\r'
for name in edu vgpu; do
  srv=$(eval echo \$srv_$name)
  kill -TERM $srv 2>/dev/null
  i=0; while kill -0 $srv 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  wait $srv; say "$name server exit status $? after SIGTERM ($(wc -l < /tmp/server-$name.log) log lines); last lines:"
  tail -n 8 /tmp/server-$name.log | sed "s/^/E2E-SERVER-$name /"
done
res=$(grep -a -m1 'E2E-RESULT' /var/log/xen/console/guest-e2e.log | tr -d '\r')
rtt=$(grep -a -m1 'E2E-RTT' /var/log/xen/console/guest-e2e.log | tr -d '\r')
vres=$(grep -a -m1 'E2E-VGPU-RESULT' /var/log/xen/console/guest-e2e.log | tr -d '\r')
[ -n "$res" ] || { show_logs; verdict "FAIL no E2E-RESULT from guest"; }
case "$res" in
  *"id=0x010000ed liveness=0xedcba987 factorial=120 irq_raised=0x00000004 irq_acked=0x00000000 "*) ;;
  *) show_logs; verdict "FAIL unexpected guest result: ${res#E2E-RESULT }";;
esac
[ -n "$vres" ] || { show_logs; verdict "FAIL no E2E-VGPU-RESULT from guest"; }
case "$vres" in
  *"id=0x55504756 fence_ram=0x00001234 fence_value=0x00001234 ring_head=64 error=0 "*) ;;
  *) show_logs; verdict "FAIL unexpected vgpu result: ${vres#E2E-VGPU-RESULT }";;
esac
verdict "PASS ${res#E2E-RESULT } vgpu: ${vres#E2E-VGPU-RESULT } ${rtt#E2E-RTT }"
