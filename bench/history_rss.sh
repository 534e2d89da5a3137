#!/usr/bin/env bash
# Cost of the on-disk history at 1,000 series: two release vitals side by
# side in one run, the same demo source (10 lines x 25 devices x 4 sensors =
# 1,000 series at 1 Hz, scored by the default detectors) plus the host
# collectors, one with [history] on (default settings, its own store
# directory), one with it off. Both are scraped once per second.
# Prints resident memory (VmRSS now, VmHWM peak), CPU seconds, /metrics
# median latency and the differences on - off.
#
#   bench/history_rss.sh [SECONDS]      (default 300)
#   CARGO_TARGET_DIR picks the build (default target/); VITALS a binary.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-300}"
# VITALS=path/to/vitals runs that binary instead of building one.
if [ -z "${VITALS:-}" ]; then
  cargo build --release --locked --quiet --bin vitals
  VITALS="${CARGO_TARGET_DIR:-target}/release/vitals"
fi
OUT=bench/out/history_rss; mkdir -p "$OUT"
WORK=$(mktemp -d)
PORT_ON=$((20000 + RANDOM % 10000)); PORT_OFF=$((PORT_ON + 1))

config() { # $1 = true|false
  cat <<EOF
[history]
enabled = $1
path = "$WORK/store-$1"

[[sources]]
type = "demo"
name = "demo"
interval = "1s"
lines = 10
devices_per_line = 25
business = false
anomaly_every = "0s"
silent_device = false
EOF
}
config true > "$WORK/on.toml"
config false > "$WORK/off.toml"

"$VITALS" run -c "$WORK/on.toml" --web.listen-address "127.0.0.1:$PORT_ON" --log.level warn &
PID_ON=$!
"$VITALS" run -c "$WORK/off.toml" --web.listen-address "127.0.0.1:$PORT_OFF" --log.level warn &
PID_OFF=$!
trap 'kill $PID_ON $PID_OFF 2>/dev/null || true; wait 2>/dev/null; rm -rf "$WORK"' EXIT
sleep 3

kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
c0_on=$(cpu_ticks $PID_ON); c0_off=$(cpu_ticks $PID_OFF)
: > "$OUT/on.lat"; : > "$OUT/off.lat"
echo "t_s rss_on_kib rss_off_kib" > "$OUT/rss.txt"
for i in $(seq "$DURATION"); do
  curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$PORT_ON/metrics" >> "$OUT/on.lat"
  curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$PORT_OFF/metrics" >> "$OUT/off.lat"
  if [ $((i % 10)) -eq 0 ]; then
    echo "$i $(kib $PID_ON VmRSS) $(kib $PID_OFF VmRSS)" >> "$OUT/rss.txt"
  fi
  sleep 1
done
c1_on=$(cpu_ticks $PID_ON); c1_off=$(cpu_ticks $PID_OFF)
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
series_on=$(metric $PORT_ON vitals_store_series); series_off=$(metric $PORT_OFF vitals_store_series)
written=$(metric $PORT_ON vitals_history_samples_written_total)
flush_s=$(metric $PORT_ON vitals_history_flush_duration_seconds)
store_kib=$(du -sk "$WORK/store-true" | cut -f1)

median_ms() { sort -n "$1" | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m*1000}'; }
python3 - "$DURATION" "$HZ" "$c0_on" "$c1_on" "$c0_off" "$c1_off" \
  "$(kib $PID_ON VmRSS)" "$(kib $PID_OFF VmRSS)" "$(kib $PID_ON VmHWM)" "$(kib $PID_OFF VmHWM)" \
  "$(median_ms "$OUT/on.lat")" "$(median_ms "$OUT/off.lat")" \
  "${series_on:-?}" "${series_off:-?}" "${written:-0}" "${flush_s:-0}" "$store_kib" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import sys
(d, hz, a0, a1, b0, b1, rss_on, rss_off, hwm_on, hwm_off, lat_on, lat_off,
 s_on, s_off, written, flush_s, store_kib, load) = sys.argv[1:]
d, hz = float(d), float(hz)
cpu_on, cpu_off = (int(a1) - int(a0)) / hz, (int(b1) - int(b0)) / hz
mib = lambda k: int(k) / 1024
print(f"duration {d:.0f} s, demo 1,000 series at 1 Hz + host collectors, scraped every second; load average {load}")
print(f"store series: history on {s_on}, off {s_off}; history samples written {float(written):.0f}, last flush {float(flush_s)*1000:.1f} ms, store {int(store_kib)/1024:.1f} MiB on disk")
print(f"{'':22}{'history on':>12}{'history off':>13}{'on - off':>10}{'on / off':>10}")
for name, a, b in [("VmRSS MiB (end)", mib(rss_on), mib(rss_off)),
                   ("VmHWM MiB (peak)", mib(hwm_on), mib(hwm_off)),
                   ("CPU seconds", cpu_on, cpu_off),
                   ("CPU % of one core", 100 * cpu_on / d, 100 * cpu_off / d),
                   ("/metrics median ms", float(lat_on), float(lat_off))]:
    print(f"{name:22}{a:12.2f}{b:13.2f}{a - b:10.2f}{a / b if b else float('nan'):10.2f}")
PY
echo "RSS every 10 s: $OUT/rss.txt"
