#!/usr/bin/env bash
# Idle footprint: vitals next to Debian's prometheus-node-exporter, both
# collecting and scraped once per second for the same duration, in one run.
# Prints CPU seconds, CPU % of one core, peak RSS and /metrics latency for
# each, and the ratios vitals/node_exporter.
#
#   bench/footprint.sh [SECONDS]      (default 120)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-120}"
NE=$(command -v prometheus-node-exporter || true)
if [ -z "$NE" ]; then
  echo "installing prometheus-node-exporter" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-node-exporter curl >/dev/null
  NE=$(command -v prometheus-node-exporter)
fi
cargo build --release --quiet
VITALS=target/release/vitals
OUT=bench/out; mkdir -p "$OUT"
VPORT=$((20000 + RANDOM % 10000)); NPORT=$((VPORT + 1))

"$VITALS" run --web.listen-address "127.0.0.1:$VPORT" --log.level warn &
VPID=$!
"$NE" --web.listen-address="127.0.0.1:$NPORT" --log.level=warn 2>/dev/null &
NPID=$!
trap 'kill $VPID $NPID 2>/dev/null || true' EXIT
sleep 2

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)
v0=$(cpu_ticks $VPID); n0=$(cpu_ticks $NPID)
: > "$OUT/vitals.lat"; : > "$OUT/ne.lat"
for _ in $(seq "$DURATION"); do
  curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$VPORT/metrics" >> "$OUT/vitals.lat"
  curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$NPORT/metrics" >> "$OUT/ne.lat"
  sleep 1
done
v1=$(cpu_ticks $VPID); n1=$(cpu_ticks $NPID)
vrss=$(hwm_kib $VPID); nrss=$(hwm_kib $NPID)
vsamples=$(curl -s "http://127.0.0.1:$VPORT/metrics" | grep -vc '^#')
nsamples=$(curl -s "http://127.0.0.1:$NPORT/metrics" | grep -vc '^#')

median_ms() { sort -n "$1" | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m*1000}'; }
python3 - "$DURATION" "$HZ" "$v0" "$v1" "$n0" "$n1" "$vrss" "$nrss" "$(median_ms $OUT/vitals.lat)" "$(median_ms $OUT/ne.lat)" "$vsamples" "$nsamples" <<'PY'
import sys
d, hz, v0, v1, n0, n1, vr, nr, vl, nl, vs, ns = sys.argv[1:]
d, hz = float(d), float(hz)
vc, nc = (int(v1) - int(v0)) / hz, (int(n1) - int(n0)) / hz
vr, nr = int(vr) / 1024, int(nr) / 1024
print(f"duration {d:.0f} s, collection 1 s, scraped every second")
print(f"{'':22}{'vitals':>12}{'node_exporter':>16}{'ratio':>8}")
print(f"{'CPU seconds':22}{vc:12.2f}{nc:16.2f}{vc/nc if nc else float('nan'):8.2f}")
print(f"{'CPU % of one core':22}{100*vc/d:12.2f}{100*nc/d:16.2f}")
print(f"{'peak RSS MiB':22}{vr:12.1f}{nr:16.1f}{vr/nr:8.2f}")
print(f"{'/metrics median ms':22}{float(vl):12.2f}{float(nl):16.2f}{float(vl)/float(nl):8.2f}")
print(f"{'samples per scrape':22}{vs:>12}{ns:>16}")
PY
