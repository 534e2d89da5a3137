#!/usr/bin/env bash
# Idle footprint: vitals next to Debian's prometheus-node-exporter, all
# collecting and scraped once per second for the same duration, in one run.
# vitals runs twice side by side: with its default configuration (history
# on, its store in a temporary directory) and with `[history] enabled =
# false`. Prints CPU seconds, CPU % of one core, peak RSS and /metrics
# latency for each, and the ratios vitals/node_exporter.
#
#   bench/footprint.sh [SECONDS]      (default 120)
#   CARGO_TARGET_DIR picks the build (default target/); VITALS a binary.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-120}"
NE=$(command -v prometheus-node-exporter || true)
if [ -z "$NE" ]; then
  echo "installing prometheus-node-exporter" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-node-exporter curl >/dev/null
  NE=$(command -v prometheus-node-exporter)
fi
# VITALS=path/to/vitals runs that binary instead of building one.
if [ -z "${VITALS:-}" ]; then
  cargo build --release --locked --quiet --bin vitals
  VITALS="${CARGO_TARGET_DIR:-target}/release/vitals"
fi
OUT=bench/out; mkdir -p "$OUT"
WORK=$(mktemp -d)
VPORT=$((20000 + RANDOM % 10000)); NPORT=$((VPORT + 1)); OPORT=$((VPORT + 2))
printf '[history]\nenabled = false\n' > "$WORK/off.toml"

"$VITALS" run --web.listen-address "127.0.0.1:$VPORT" --storage.path "$WORK/data" --log.level warn &
VPID=$!
"$VITALS" run -c "$WORK/off.toml" --web.listen-address "127.0.0.1:$OPORT" --log.level warn &
OPID=$!
"$NE" --web.listen-address="127.0.0.1:$NPORT" --log.level=warn 2>/dev/null &
NPID=$!
trap 'kill $VPID $OPID $NPID 2>/dev/null || true; wait 2>/dev/null; rm -rf "$WORK"' EXIT
sleep 2

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)
v0=$(cpu_ticks $VPID); o0=$(cpu_ticks $OPID); n0=$(cpu_ticks $NPID)
: > "$OUT/vitals.lat"; : > "$OUT/vitals_off.lat"; : > "$OUT/ne.lat"
for _ in $(seq "$DURATION"); do
  curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$VPORT/metrics" >> "$OUT/vitals.lat"
  curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$OPORT/metrics" >> "$OUT/vitals_off.lat"
  curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$NPORT/metrics" >> "$OUT/ne.lat"
  sleep 1
done
v1=$(cpu_ticks $VPID); o1=$(cpu_ticks $OPID); n1=$(cpu_ticks $NPID)
vrss=$(hwm_kib $VPID); orss=$(hwm_kib $OPID); nrss=$(hwm_kib $NPID)
vsamples=$(curl -s "http://127.0.0.1:$VPORT/metrics" | grep -vc '^#')
osamples=$(curl -s "http://127.0.0.1:$OPORT/metrics" | grep -vc '^#')
nsamples=$(curl -s "http://127.0.0.1:$NPORT/metrics" | grep -vc '^#')
written=$(curl -s "http://127.0.0.1:$VPORT/metrics" | awk '$1 == "vitals_history_samples_written_total" {print $2}')

median_ms() { sort -n "$1" | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m*1000}'; }
python3 - "$DURATION" "$HZ" "$v0" "$v1" "$o0" "$o1" "$n0" "$n1" "$vrss" "$orss" "$nrss" \
  "$(median_ms $OUT/vitals.lat)" "$(median_ms $OUT/vitals_off.lat)" "$(median_ms $OUT/ne.lat)" \
  "$vsamples" "$osamples" "$nsamples" "${written:-0}" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import sys
d, hz, v0, v1, o0, o1, n0, n1, vr, orr, nr, vl, ol, nl, vs, os_, ns, written, load = sys.argv[1:]
d, hz = float(d), float(hz)
vc, oc, nc = [(int(b) - int(a)) / hz for a, b in [(v0, v1), (o0, o1), (n0, n1)]]
vr, orr, nr = int(vr) / 1024, int(orr) / 1024, int(nr) / 1024
vl, ol, nl = float(vl), float(ol), float(nl)
r = lambda a, b: a / b if b else float("nan")
print(f"duration {d:.0f} s, collection 1 s, scraped every second; load average {load}")
print(f"history on wrote {float(written):.0f} samples")
print(f"{'':22}{'history on':>12}{'history off':>13}{'node_exporter':>15}{'on/ne':>7}{'on/off':>8}")
print(f"{'CPU seconds':22}{vc:12.2f}{oc:13.2f}{nc:15.2f}{r(vc, nc):7.2f}{r(vc, oc):8.2f}")
print(f"{'CPU % of one core':22}{100*vc/d:12.2f}{100*oc/d:13.2f}{100*nc/d:15.2f}")
print(f"{'peak RSS MiB':22}{vr:12.1f}{orr:13.1f}{nr:15.1f}{r(vr, nr):7.2f}{r(vr, orr):8.2f}")
print(f"{'/metrics median ms':22}{vl:12.2f}{ol:13.2f}{nl:15.2f}{r(vl, nl):7.2f}{r(vl, ol):8.2f}")
print(f"{'samples per scrape':22}{vs:>12}{os_:>13}{ns:>15}")
PY
