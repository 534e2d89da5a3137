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
#   PEER=path/to/vitals     optional second binary (e.g. main's) run at the
#                           same time on another port with the same defaults:
#                           both see the same machine, so their figures compare
#   WARMUP=SECONDS          learning time before counting (default 180: the
#                           ensemble learns for 150 samples of 1 s)
#   LOAD_CMD='...'          the compile job of the second half (default: a
#                           debug build of this crate into a scratch target
#                           directory, restarted until the half is over)
#
# "Idle" means whatever else the machine is doing: the script prints the
# load average of each half so the figure can be read with it. After each
# half it lists the events by family and by `reason` (the member that
# scored highest), from each binary's log of anomaly events.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-30}"
WARMUP="${WARMUP:-180}"
VITALS="${VITALS:-target/release/vitals}"
PEER="${PEER:-}"
if [ ! -x "$VITALS" ]; then
  cargo build --release --quiet
fi
SCRATCH=$(mktemp -d)
LOAD_CMD="${LOAD_CMD:-cargo build --quiet --target-dir $SCRATCH/target -j 1}"
NAMES=(vitals)
BINS=("$VITALS")
[ -n "$PEER" ] && NAMES+=(peer) && BINS+=("$PEER")
PORTS=()
PIDS=()
for i in "${!BINS[@]}"; do
  port=$((20000 + RANDOM % 10000))
  PORTS+=("$port")
  # Anomaly events are logged at info by vitals::detect::live.
  "${BINS[$i]}" run --web.listen-address "127.0.0.1:$port" \
    --log.level "warn,vitals::detect::live=info" 2>"$SCRATCH/${NAMES[$i]}.log" &
  PIDS+=($!)
done
LPID=""
cleanup() {
  [ -n "$LPID" ] && kill -- -"$LPID" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$SCRATCH"
}
trap cleanup EXIT

scrape() { curl -sf "http://127.0.0.1:$1/metrics" | grep '^vitals_anomaly_events_total{' || true; }
# "series total" per line, the series being the label set.
counts() { awk '{v=$NF; $NF=""; print $0 "\t" v}' ; }

sleep "$WARMUP"
HALF=$(( MINUTES * 60 / 2 ))

phase() { # name seconds -> prints a summary line per binary, then its events by family and reason
  local name=$1 secs=$2
  for i in "${!BINS[@]}"; do
    scrape "${PORTS[$i]}" | counts > "$SCRATCH/$name.${NAMES[$i]}.0"
    wc -l < "$SCRATCH/${NAMES[$i]}.log" > "$SCRATCH/$name.${NAMES[$i]}.line"
  done
  local t0; t0=$(date +%s)
  local loads=""
  while [ $(( $(date +%s) - t0 )) -lt "$secs" ]; do
    sleep 10
    loads="$loads $(cut -d' ' -f1 /proc/loadavg)"
  done
  local elapsed=$(( $(date +%s) - t0 ))
  for i in "${!BINS[@]}"; do
    local n=${NAMES[$i]}
    scrape "${PORTS[$i]}" | counts > "$SCRATCH/$name.$n.1"
    awk -F'\t' -v name="$name" -v who="$n" -v secs="$elapsed" -v loads="$loads" '
      NR == FNR { before[$1] = $2; next }
      {
        series++
        events += $2 - before[$1]
      }
      END {
        k = split(loads, l, " "); s = 0; for (i = 1; i <= k; i++) s += l[i]
        hours = series * secs / 3600
        printf "%-6s %-6s %5d s  series %4d  series-hours %8.2f  events %4d  per 100 series-hours %7.2f  mean load1 %.2f\n",
          who, name, secs, series, hours, events, (hours > 0 ? 100 * events / hours : 0), (k ? s / k : 0)
      }' "$SCRATCH/$name.$n.0" "$SCRATCH/$name.$n.1"
    # The events of this half from the log: family, labels and reason.
    tail -n +"$(( $(cat "$SCRATCH/$name.$n.line") + 1 ))" "$SCRATCH/$n.log" \
      | grep 'Anomaly event' \
      | sed -E 's/.*metric="?([^" ]+)"?.* labels="?(\{[^}]*\}|)"?.*reason="?([a-z_]+)"?.*/    \1 \2 \3/' \
      | sort | uniq -c | sort -nr || true
  done
}

for i in "${!BINS[@]}"; do
  echo "${NAMES[$i]}: $("${BINS[$i]}" --version) with defaults on 127.0.0.1:${PORTS[$i]}"
done
echo "$(nproc) CPUs; warm-up ${WARMUP}s excluded"
phase idle "$HALF"
# Its own process group, so that the whole job stops with it.
setsid bash -c "while true; do $LOAD_CMD >/dev/null 2>&1 || true; rm -rf '$SCRATCH/target'; done" &
LPID=$!
phase load "$HALF"
