#!/bin/bash
# Peak memory and time of one command (a model load): samples /proc/PID/status every 20 ms and prints
# the largest RssAnon (anonymous memory: the weights and any copy of them), the process's VmHWM (all
# resident memory, mapped file pages included) and the wall time.
# Usage: bench/load-memory.sh LABEL COMMAND...   (prints "LABEL  peak_RssAnon_MB  VmHWM_MB  seconds  rc")
label=$1
shift
start=$(date +%s.%N)
"$@" > /tmp/load-memory.$$.out 2>&1 &
pid=$!
anon=0
hwm=0
while kill -0 "$pid" 2> /dev/null; do
  a=$(awk '/^RssAnon:/ {print $2}' /proc/$pid/status 2> /dev/null)
  h=$(awk '/^VmHWM:/ {print $2}' /proc/$pid/status 2> /dev/null)
  [ -n "$a" ] && [ "$a" -gt "$anon" ] && anon=$a
  [ -n "$h" ] && [ "$h" -gt "$hwm" ] && hwm=$h
  sleep 0.02
done
wait "$pid"
rc=$?
end=$(date +%s.%N)
printf "%-28s anon_peak %6d MB  VmHWM %6d MB  %6.1f s  rc %d\n" "$label" $((anon / 1024)) $((hwm / 1024)) \
  "$(echo "$end - $start" | bc)" "$rc"
[ "$rc" -ne 0 ] && tail -3 /tmp/load-memory.$$.out
rm -f /tmp/load-memory.$$.out
exit 0
