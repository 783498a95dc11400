#!/bin/busybox sh
# dom0 /init: toolstack up, create the guest paused, serve edu (00:05.0), vgpu (00:06.0) and the
# bochs display (00:07.0, --display-png) through three mdevkit IOREQ servers, start the display
# watcher (test/e2e/display/watch.mjs: it checks the PNG at each step of the guest's display phase
# and answers the guest on its console), unpause, collect the guest's console, check the display
# (display-check.mjs: also prints the matched frames for the host), print E2E-VERDICT, power off.
# In between, when the guest asks for it (E2E-SAVE-READY): xl save, xl restore, new servers from
# the saved device states (save_restore), and the restored display's frame (display_after_restore).
/bin/busybox mkdir -p /usr/sbin /usr/bin /sbin
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/lib/xen-4.17/bin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /var/run/xenstored /var/log/xen/console /var/lib/xen /run/xen; mount -t devpts devpts /dev/pts
T0=$(cut -d' ' -f1 /proc/uptime)
say() { echo "E2E-DOM0 [$(cut -d' ' -f1 /proc/uptime)] $*"; }
verdict() { echo; echo "E2E-VERDICT $*"; echo; sync; sleep 1; reboot -f; sleep 10; }
SERVERS="edu vgpu bochs" RESTORED=""
DISP=/tmp/display
show_logs() {
  for n in $SERVERS $RESTORED; do echo "---- mdevkit $n server log ----"; tail -n 40 /tmp/server-$n.log 2>/dev/null; done
  echo "---- display watcher ----"; tail -n 20 $DISP/watch.out 2>/dev/null
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
# start_server NAME DEVICE BDF [extra args]: one IOREQ server per device (NAME names its log and
# pid); waits until it is serving. The servers claim 0xCF8-0xCFB (--config-latch): Xen accepts
# overlapping claims by different servers and sends each access to the first server that claims it.
start_server() {
  name=$1 device=$2 bdf=$3; shift 3
  node /mdevkit/dist/cli/main.js serve "$device" --xen "$domid" --bdf "$bdf" -v "$@" > /tmp/server-$name.log 2>&1 &
  eval "srv_$name=$!"
  i=0
  until grep -q 'serving' /tmp/server-$name.log 2>/dev/null; do
    kill -0 $(eval echo \$srv_$name) 2>/dev/null || { show_logs; verdict "FAIL $name server exited before serving"; }
    i=$((i + 1)); [ $i -gt 600 ] && { show_logs; verdict "FAIL $name server not serving after 60 s"; }
    sleep 0.1
  done
  say "server up: $(grep -m1 serving /tmp/server-$name.log)"
}
# stop_server NAME: a server whose domain is gone ends by itself (it polls every 500 ms): wait for
# that (SIGTERM while it is already exiting would kill it with the default action), else SIGTERM;
# reap, log tail
stop_server() {
  name=$1 srv=$(eval echo \$srv_$1) how="by itself (domain gone)" i=0
  if xl domid e2e >/dev/null 2>&1; then how="after SIGTERM"; kill -TERM $srv 2>/dev/null; fi
  while kill -0 $srv 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
  if kill -0 $srv 2>/dev/null; then how="after SIGTERM (still running 30 s on)"; kill -TERM $srv 2>/dev/null; fi
  wait $srv; say "$name server exit status $? $how ($(wc -l < /tmp/server-$name.log) log lines); last lines:"
  tail -n 8 /tmp/server-$name.log | sed "s/^/E2E-SERVER-$name /"
}
# The display: the server raises the guest's page limit and populates 16 MiB of VRAM before it
# restricts its handles (so it starts while the guest is paused); the watcher follows the guest's
# console log and answers on the guest's console pty.
start_display_watch() {
  mkdir -p $DISP
  pty="" i=0
  while [ -z "$pty" ] && [ $i -lt 100 ]; do pty=$(xenstore-read /local/domain/$domid/console/tty 2>/dev/null); [ -n "$pty" ] || sleep 0.1; i=$((i + 1)); done
  [ -n "$pty" ] || { show_logs; verdict "FAIL no console pty for the guest (xenstore console/tty)"; }
  node /mdevkit/test/e2e/display/watch.mjs /var/log/xen/console/guest-e2e.log $DISP/display.png "$pty" $DISP/display.json 300 20 > $DISP/watch.out 2>&1 &
  watch_pid=$!
  say "display watcher up (guest console $pty)"
}
# Each server saves its device's state when the domain is gone (xl save). The RAM BARs are parked
# at 8 and 9 GiB while they do not decode rather than at the default 64 GiB + devfn GiB: Xen never
# lowers a domain's highest frame, and xl save walks every frame up to it.
PARK_vgpu=0x200000000 PARK_bochs=0x240000000
# start_servers SUFFIX --save|--restore PNG [bochs args]: the three servers (names edu, vgpu and
# bochs + SUFFIX), saving their device states when the domain goes or restoring them.
start_servers() {
  suffix=$1 mode=$2 png=$3; shift 3
  start_server edu$suffix edu 00:05.0 --config-latch $mode /tmp/state-edu.bin --stats /tmp/stats-edu$suffix.json
  start_server vgpu$suffix vgpu 00:06.0 ${VGPU_LATCH---config-latch} --ram-bar-parking $PARK_vgpu $mode /tmp/state-vgpu.bin
  start_server bochs$suffix bochs-display 00:07.0 --config-latch --display-png $DISP/$png --ram-bar-parking $PARK_bochs $mode /tmp/state-bochs.bin "$@"
}
start_servers "" --save display.png --stats $DISP/stats-bochs.json
start_display_watch
xl unpause e2e
say "guest unpaused"
# save_restore: the guest is waiting on its console (E2E-SAVE-READY). `xl save` suspends it and
# destroys the domain; each server notices, saves its device state and exits. `xl restore -p` makes
# a new, paused domain; new servers restore the device state (--restore) for it; unpause; "go" on
# the new domain's console. The restored domain must hold the RAM BARs' pages too (xl save saved
# them with the rest of the guest's memory): the restore config's memory counts them.
# The RAM BARs' MiB: the display's 16 MiB of VRAM and the vGPU's 1 MiB.
RAM_BAR_MIB=17
seconds_since() { awk -v a=$1 -v b=$(cut -d' ' -f1 /proc/uptime) 'BEGIN{print b-a}'; }
save_restore() {
  t=$(cut -d' ' -f1 /proc/uptime)
  say "xl save (domain $domid)"
  # a tmpfs of its own: dom0's rootfs (half its RAM, most of it the initramfs) has no room for it
  mkdir -p /save && mount -t tmpfs -o size=400m tmpfs /save || verdict "FAIL cannot mount a tmpfs for the save file"
  xl save e2e /save/e2e.save > /tmp/xl-save.log 2>&1 || { cat /tmp/xl-save.log; show_logs; verdict "FAIL xl save"; }
  say "xl save done in $(seconds_since $t) s: $(ls -l /save/e2e.save | awk '{print $5}') bytes"
  for name in $SERVERS; do
    srv=$(eval echo \$srv_$name) i=0
    while kill -0 $srv 2>/dev/null && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
    kill -0 $srv 2>/dev/null && { show_logs; verdict "FAIL $name server still running 60 s after xl save"; }
    wait $srv; rc=$?
    say "$name server exit status $rc after xl save: $(grep -m1 'device state saved' /tmp/server-$name.log)"
    [ $rc = 0 ] && grep -q 'device state saved' /tmp/server-$name.log || { show_logs; verdict "FAIL $name server did not save its device state"; }
  done
  # The guest's 200 reads of edu's ID in a row (E2E-RTT) are native: the engine's I/O thread
  # serves them through the event channel device once it has taken over. Its 200 config-space
  # reads that follow need JS: the engine serves them in a blocking poll on the JS thread.
  edu_engine=$(grep -o '"engine":{[^}]*}' /tmp/stats-edu.json)
  say "edu engine after xl save: $edu_engine"
  case "$edu_engine" in *'"threadIoreqs":0,'*|'') show_logs; verdict "FAIL the edu server's I/O thread served no ioreq" ;; esac
  case "$edu_engine" in *'"blockingIoreqs":0,'*|'') show_logs; verdict "FAIL the edu server served none of the guest's config-space run in a blocking serve" ;; esac
  # libxl caps a restored domain at its configured memory + 1 MiB.
  guest_mib=$(sed -n 's/^memory = //p' /guest/guest.cfg)
  sed "s/^memory = .*/memory = $(( guest_mib + RAM_BAR_MIB + 1 ))/" /guest/guest.cfg > /tmp/restore.cfg
  t=$(cut -d' ' -f1 /proc/uptime)
  xl restore -p /tmp/restore.cfg /save/e2e.save > /tmp/xl-restore.log 2>&1 || { cat /tmp/xl-restore.log; show_logs; verdict "FAIL xl restore"; }
  old=$domid domid=$(xl domid e2e)
  say "xl restore done in $(seconds_since $t) s: domain $old is now domain $domid (paused)"
  RESTORED="edu2 vgpu2 bochs2"
  start_servers 2 --restore after.png
  xl unpause e2e
  pty="" i=0
  while [ -z "$pty" ] && [ $i -lt 100 ]; do pty=$(xenstore-read /local/domain/$domid/console/tty 2>/dev/null); [ -n "$pty" ] || sleep 0.1; i=$((i + 1)); done
  [ -n "$pty" ] || { show_logs; verdict "FAIL no console pty for the restored guest"; }
  printf 'go\n' > "$pty"
  say "restored guest unpaused, told to go on $pty"
}
# display_after_restore: the restored guest wrote the test image to /dev/fb0 again; the restored
# server's frame (after.png) must come to show it exactly as the first server showed it (the
# watcher's frame of the image step); then the guest is told to go on.
display_after_restore() {
  save_display=$(node /mdevkit/test/e2e/display/frames.mjs wait-same $DISP/frame-image.png $DISP/after.png 90 2>&1 | tail -n 1)
  say "E2E-SAVE-DISPLAY ${save_display:-no answer from frames.mjs}"
  printf 'checked\n' > "$pty"
}
# Until the guest is done (at most GUEST_LIMIT s of dom0 time), its result lines are passed on
# to dom0's console as they come (E2E-GUEST-LIVE), so a stuck run shows how far it got.
GUEST_LIMIT=480
t_unpause=$(cut -d. -f1 /proc/uptime) shown=0 i=0 saved=0
while :; do
  n=$(grep -a -c -E 'E2E-|QE disp' /var/log/xen/console/guest-e2e.log 2>/dev/null)
  if [ "${n:-0}" -gt $shown ]; then
    grep -a -E 'E2E-|QE disp' /var/log/xen/console/guest-e2e.log | tr -d '\r' | sed -n "$((shown + 1)),${n}p" | sed 's/^/E2E-GUEST-LIVE /'
    shown=$n
  fi
  grep -q 'E2E-GUEST-DONE' /var/log/xen/console/guest-e2e.log 2>/dev/null && break
  if [ $saved = 0 ] && grep -q 'E2E-SAVE-READY' /var/log/xen/console/guest-e2e.log 2>/dev/null; then
    saved=1
    save_restore
    t_unpause=$(cut -d. -f1 /proc/uptime) # the restored guest's part gets a budget of its own
  fi
  if [ $saved = 1 ] && [ -z "${save_display:-}" ] && grep -q 'E2E-SAVE-DISPLAY-CHECK' /var/log/xen/console/guest-e2e.log 2>/dev/null; then
    display_after_restore
  fi
  # the guest is gone (checked twice: xl domid can fail transiently while dom0 is busy)
  xl domid e2e >/dev/null 2>&1 || { sleep 1; xl domid e2e >/dev/null 2>&1 || { say "guest domain gone"; xl list; break; }; }
  i=$(( $(cut -d. -f1 /proc/uptime) - t_unpause ))
  [ $i -gt $GUEST_LIMIT ] && { say "guest not done after ${GUEST_LIMIT}s"; show_logs; break; }
  sleep 1
done
say "guest finished or timed out after ${i}s"
grep -a -E 'E2E-|QE disp' /var/log/xen/console/guest-e2e.log | tr -d '\r'
# the watcher ends after the guest's display phase; it gets a few seconds more if not
i=0; while kill -0 $watch_pid 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
kill -TERM $watch_pid 2>/dev/null; wait $watch_pid
say "display watcher exit status $?; last lines:"
tail -n 12 $DISP/watch.out | sed 's/^/E2E-WATCH /'
for name in ${RESTORED:-$SERVERS}; do stop_server $name; done
say "display checks"
node /mdevkit/test/e2e/xen/display-check.mjs $DISP > $DISP/check.out 2>&1
cat $DISP/check.out
dres=$(grep -a -m1 '^E2E-DISPLAY-RESULT' $DISP/check.out)
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
sres=$(grep -a -m1 'E2E-SAVE-RESULT' /var/log/xen/console/guest-e2e.log | tr -d '\r')
sbefore=$(grep -a -m1 'E2E-SAVE-BEFORE' /var/log/xen/console/guest-e2e.log | tr -d '\r')
case "$sbefore" in
  *"edu_liveness=0xf4520ff2 edu_factorial=5040 vgpu_ring_head=64 vgpu_fence=0x00001234 vgpu_error=0 vram0=0x00ff8000 vram252=0x00ff8000 vram256=0x00000000 fb0=1024,768x32"*) ;;
  *) show_logs; verdict "FAIL unexpected state before the save: ${sbefore:-no E2E-SAVE-BEFORE}";;
esac
case "$sres" in
  *"same=yes edu_factorial6=720 vgpu_fence_ram=0x00005678 vgpu_fence=0x00005678 vgpu_ring_head=96 vgpu_error=0"*) ;;
  *) show_logs; grep -a -m1 'E2E-SAVE-AFTER' /var/log/xen/console/guest-e2e.log; verdict "FAIL after xl save / xl restore: ${sres:-no E2E-SAVE-RESULT}";;
esac
case "${save_display:-}" in
  "same=yes "*) ;;
  *) show_logs; verdict "FAIL the restored display does not show the test image: ${save_display:-no check}";;
esac
case "$dres" in
  *"ok=true "*) ;;
  *) show_logs; grep -a '^E2E-DISPLAY ' $DISP/check.out | grep 'ok=false'; verdict "FAIL display: ${dres:-no E2E-DISPLAY-RESULT}";;
esac
verdict "PASS ${res#E2E-RESULT } vgpu: ${vres#E2E-VGPU-RESULT } display: ${dres#E2E-DISPLAY-RESULT ok=true } save/restore: ${sres#E2E-SAVE-RESULT } display after restore: ${save_display%% frame=*} in ${save_display##*waited=} ${rtt#E2E-RTT }"
