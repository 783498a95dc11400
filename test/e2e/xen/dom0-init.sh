#!/bin/busybox sh
# dom0 /init: toolstack up, create the guest paused, serve edu through mdevkit's IOREQ server,
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
  echo "---- mdevkit server log ----"; tail -n 60 /tmp/server.log 2>/dev/null
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
node /mdevkit/dist/src/cli/main.js serve edu --xen "$domid" --bdf 00:05.0 --config-latch -v > /tmp/server.log 2>&1 &
srv=$!
i=0
until grep -q 'serving' /tmp/server.log 2>/dev/null; do
  kill -0 $srv 2>/dev/null || { show_logs; verdict "FAIL server exited before serving"; }
  i=$((i + 1)); [ $i -gt 600 ] && { show_logs; verdict "FAIL server not serving after 60 s"; }
  sleep 0.1
done
say "server up: $(grep -m1 serving /tmp/server.log)"
xl unpause e2e
say "guest unpaused"
i=0
while :; do
  grep -q 'E2E-GUEST-DONE' /var/log/xen/console/guest-e2e.log 2>/dev/null && break
  xl domid e2e >/dev/null 2>&1 || { sleep 1; break; }
  i=$((i + 1)); [ $i -gt 300 ] && break
  sleep 1
done
say "guest finished or timed out after ${i}s"
grep -a 'E2E-' /var/log/xen/console/guest-e2e.log | tr -d '\r'
kill -TERM $srv 2>/dev/null
i=0; while kill -0 $srv 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
wait $srv; say "server exit status $? after SIGTERM ($(wc -l < /tmp/server.log) log lines); last lines:"
tail -n 8 /tmp/server.log | sed 's/^/E2E-SERVER /'
res=$(grep -a -m1 'E2E-RESULT' /var/log/xen/console/guest-e2e.log | tr -d '\r')
rtt=$(grep -a -m1 'E2E-RTT' /var/log/xen/console/guest-e2e.log | tr -d '\r')
[ -n "$res" ] || { show_logs; verdict "FAIL no E2E-RESULT from guest"; }
case "$res" in
  *"id=0x010000ed liveness=0xedcba987 factorial=120 "*) verdict "PASS ${res#E2E-RESULT } ${rtt#E2E-RTT }";;
  *) show_logs; verdict "FAIL unexpected guest result: ${res#E2E-RESULT }";;
esac
