#!/usr/bin/env bash
# False alarms on a live host: run `vitals run` with its defaults (no
# configuration file) on this machine, first as the machine is, then while a
# compile job runs, and count anomaly events per series-hour from the
# `vitals_anomaly_events_total` counters on /metrics (one per series, the
# rising edges of `vitals_anomaly_flag`, the same events that go to the
# dashboard feed and the log).
#
#   bench/livehost.sh [MINUTES]          (default 30: half "idle", half under load)
#
# Environment:
#   VITALS=path/to/vitals   binary to run (default target/release/vitals,
#                           built with `cargo build --release` when missing)
#   WARMUP=SECONDS          learning time before counting (default 180: the
#                           ensemble learns for 150 samples of 1 s)
#   LOAD_CMD='...'          the compile job of the second half (default: a
#                           debug build of this crate into a scratch target
#                           directory, restarted until the half is over)
#
# "Idle" means whatever else the machine is doing: the script prints the
# load average of each half so the figure can be read with it.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-30}"
WARMUP="${WARMUP:-180}"
VITALS="${VITALS:-target/release/vitals}"
if [ ! -x "$VITALS" ]; then
  cargo build --release --quiet
fi
SCRATCH=$(mktemp -d)
LOAD_CMD="${LOAD_CMD:-cargo build --quiet --target-dir $SCRATCH/target -j 1}"
PORT=$((20000 + RANDOM % 10000))
"$VITALS" run --web.listen-address "127.0.0.1:$PORT" --log.level warn 2>"$SCRATCH/vitals.log" &
VPID=$!
LPID=""
cleanup() {
  [ -n "$LPID" ] && kill -- -"$LPID" 2>/dev/null || true
  kill "$VPID" 2>/dev/null || true
  rm -rf "$SCRATCH"
}
trap cleanup EXIT

scrape() { curl -sf "http://127.0.0.1:$PORT/metrics" | grep '^vitals_anomaly_events_total{' || true; }
# "series total" per line, the series being the label set.
counts() { awk '{v=$NF; $NF=""; print $0 "\t" v}' ; }

sleep "$WARMUP"
HALF=$(( MINUTES * 60 / 2 ))

phase() { # name seconds -> prints a summary line; leaves per-family lines in $SCRATCH/$1.fam
  local name=$1 secs=$2
  scrape | counts > "$SCRATCH/$name.0"
  local l0; l0=$(cut -d' ' -f1 /proc/loadavg)
  local t0; t0=$(date +%s)
  local loads=""
  while [ $(( $(date +%s) - t0 )) -lt "$secs" ]; do
    sleep 10
    loads="$loads $(cut -d' ' -f1 /proc/loadavg)"
  done
  scrape | counts > "$SCRATCH/$name.1"
  local elapsed=$(( $(date +%s) - t0 ))
  awk -F'\t' -v name="$name" -v secs="$elapsed" -v loads="$loads" -v fam="$SCRATCH/$name.fam" '
    NR == FNR { before[$1] = $2; next }
    {
      series++
      d = $2 - before[$1]
      events += d
      if (d > 0) {
        m = $1; sub(/.*metric="/, "", m); sub(/".*/, "", m)
        byfam[m] += d
      }
    }
    END {
      n = split(loads, l, " "); s = 0; for (i = 1; i <= n; i++) s += l[i]
      hours = series * secs / 3600
      printf "%-6s %5d s  series %4d  series-hours %8.2f  events %4d  per 100 series-hours %7.2f  mean load1 %.2f\n",
        name, secs, series, hours, events, (hours > 0 ? 100 * events / hours : 0), (n ? s / n : 0)
      for (f in byfam) printf "    %s %d\n", f, byfam[f] > fam
    }' "$SCRATCH/$name.0" "$SCRATCH/$name.1"
  [ -s "$SCRATCH/$name.fam" ] && sort -k2 -nr "$SCRATCH/$name.fam" || true
}

echo "vitals $("$VITALS" --version) with defaults on 127.0.0.1:$PORT; $(nproc) CPUs; warm-up ${WARMUP}s excluded"
phase idle "$HALF"
# Its own process group, so that the whole job stops with it.
setsid bash -c "while true; do $LOAD_CMD >/dev/null 2>&1 || true; rm -rf '$SCRATCH/target'; done" &
LPID=$!
phase load "$HALF"
