#!/usr/bin/env bash
# History on disk and query_range, vitals next to Prometheus in one run
# (issue #17's disk and query targets).
#
#   bench/history.sh [MINUTES]        (default 10: the real-time phase)
#
# Environment: VITALS (default target/release/vitals), BENCH (default
# target/release/examples/history_bench; both built with --release when
# missing), REPS (query repetitions, default 50), KEEP=1 keeps the scratch
# directory.
#
# Method. A real 24 h run does not fit a bench session, so:
#
# 1. Real time, MINUTES: `vitals run` with the host's system collectors at
#    1 s and the demo source (sensors and business series at 1 s) keeps its
#    own history; a Prometheus scrapes its /metrics every 1 s, keeping only
#    the families vitals' history holds (metric_relabel_configs; Prometheus
#    adds its own `up`/`scrape_*` series). Bytes per sample on disk for
#    both, as left by the run: vitals' history.redb (uncompacted per-flush
#    chunks of the open hour) and Prometheus' head (WAL + chunks_head,
#    not yet compacted). Then each after compaction: Prometheus' snapshot
#    (admin API; it writes the head as a block, as its 2 h compaction
#    would), and vitals' store rebuilt from the same captured samples
#    shifted 2 h into the past (so every raw window is closed, compacted
#    and rolled up, as it is after the hour ends).
# 2. 24 h / 7 d volume: `history_bench synth` lays out 24 h of every
#    captured series (7 d of vitals_cpu_usage_ratio) ending at the start of
#    the current hour, by tiling the captured real series: their own
#    sample intervals and values, copies alternating forwards and backwards
#    in time, counters continuing from their increments. Not random noise:
#    the shapes, noise and resolution are those captured in phase 1. vitals
#    gets them through its own history ingest path (`history::start`, the
#    tap, the flusher, compaction and rollups); Prometheus gets the same
#    samples by `promtool tsdb create-blocks-from openmetrics` and is then
#    started on the blocks and left to compact them. Disk per raw sample:
#    the whole history.redb (raw + minute + hour tiers + B-tree pages) and
#    the whole of Prometheus' blocks, each divided by its raw samples.
# 3. query_range: a release `vitals run` serving the synthesised store and
#    that Prometheus, each asked REPS times (curl, sequentially, after 3
#    warm-up requests) `vitals_cpu_usage_ratio` over the last 24 h at step
#    60 s and over 7 d at step 5 m; median and p95 of curl's time_total.
#    vitals answers from its minute tier (the interval means); Prometheus
#    evaluates the raw samples at each step.
#
# The load average is printed: the figures are only as quiet as the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-10}"
REPS="${REPS:-50}"
VITALS="${VITALS:-target/release/vitals}"
BENCH="${BENCH:-target/release/examples/history_bench}"
[ -x "$VITALS" ] || cargo build --release --locked --quiet --bin vitals
command -v prometheus >/dev/null && command -v promtool >/dev/null ||
  { echo "history.sh: needs prometheus and promtool (Debian package prometheus)" >&2; exit 2; }
S=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] && echo "kept $S" || rm -rf "$S"
}
trap cleanup EXIT
port() { echo $((20000 + RANDOM % 20000)); }
up() { for _ in $(seq 300); do curl -sf "$1" >/dev/null && return 0; sleep 0.2; done; echo "not up: $1" >&2; exit 1; }
val() { awk -v k="$1" '{for(i=1;i<=NF;i++){split($i,a,"=");if(a[1]==k)print a[2]}}'; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
prom_metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1==m{print $2}'; }
blocks_bytes() { local t=0; for d in "$1"/*/; do [ -f "$d/meta.json" ] && t=$((t + $(du -sb "$d" | cut -f1))); done; echo $t; }
blocks_samples() { local t=0; for m in "$1"/*/meta.json; do [ -f "$m" ] && t=$((t + $(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["stats"]["numSamples"])' "$m"))); done; echo $t; }
ratio() { python3 -c 'import sys;a,b=float(sys.argv[1]),float(sys.argv[2]);print(f"{a/b:.2f}" if b else "-")' "$1" "$2"; }
div() { python3 -c 'import sys;a,b=float(sys.argv[1]),float(sys.argv[2]);print(f"{a/b:.3f}" if b else "-")' "$1" "$2"; }

# ---- 1. real time ----
VP=$(port); PP=$(port)
cat >"$S/vitals.toml" <<EOF
[history]
path = "$S/rt"
[[sources]]
type = "demo"
name = "demo"
EOF
"$VITALS" run --config "$S/vitals.toml" --web.listen-address "127.0.0.1:$VP" --log.level warn 2>"$S/vitals.log" &
VPID=$!; PIDS+=("$VPID")
up "http://127.0.0.1:$VP/-/ready"
sleep 30
KEEP_RE=$(curl -sf "http://127.0.0.1:$VP/api/v1/label/__name__/values" | python3 -c 'import json,sys;print("|".join(json.load(sys.stdin)["data"]))')
cat >"$S/prom.yml" <<EOF
global: {scrape_interval: 1s, scrape_timeout: 900ms}
scrape_configs:
  - job_name: vitals
    static_configs: [{targets: ["127.0.0.1:$VP"]}]
    metric_relabel_configs:
      - {source_labels: [__name__], regex: "$KEEP_RE", action: keep}
EOF
prometheus --config.file "$S/prom.yml" --storage.tsdb.path "$S/prom-rt" --web.listen-address "127.0.0.1:$PP" \
  --web.enable-admin-api --log.level warn 2>"$S/prom-rt.log" &
PPID_RT=$!; PIDS+=("$PPID_RT")
up "http://127.0.0.1:$PP/-/ready"
echo "real-time phase: $MINUTES min (load $(load))"
sleep $((MINUTES * 60))
LOAD_RT=$(load)
P_HEAD_SAMPLES=$(prom_metric "$PP" prometheus_tsdb_head_samples_appended_total)
P_HEAD_SERIES=$(prom_metric "$PP" prometheus_tsdb_head_series)
P_HEAD_BYTES=$(du -sb "$S/prom-rt/wal" "$S/prom-rt/chunks_head" | awk '{t+=$1}END{print t}')
SNAP=$(curl -sf -XPOST "http://127.0.0.1:$PP/api/v1/admin/tsdb/snapshot" | python3 -c 'import json,sys;print(json.load(sys.stdin)["data"]["name"])')
P_SNAP_BYTES=$(blocks_bytes "$S/prom-rt/snapshots/$SNAP")
P_SNAP_SAMPLES=$(blocks_samples "$S/prom-rt/snapshots/$SNAP")
kill "$PPID_RT"; kill "$VPID"; wait "$PPID_RT" "$VPID" 2>/dev/null || true
# (Built here when missing, so a build does not hold up the real-time phase.)
[ -x "$BENCH" ] || cargo build --release --locked --quiet --example history_bench
RT=$("$BENCH" count "$S/rt")
V_RT_SAMPLES=$(echo "$RT" | val samples); V_RT_BYTES=$(echo "$RT" | val file_bytes)
V_RT_SERIES=$(echo "$RT" | val series)
"$BENCH" synth "$S/rt" "$S/rt-compacted" "$S/rt.om" 0 none 0 2 >/dev/null
RTC=$("$BENCH" count "$S/rt-compacted")
V_RTC_SAMPLES=$(echo "$RTC" | val samples); V_RTC_BYTES=$(echo "$RTC" | val file_bytes)

# ---- 2. 24 h / 7 d ----
echo "synthesising 24 h of $V_RT_SERIES series (7 d of vitals_cpu_usage_ratio) (load $(load))"
SYN=$("$BENCH" synth "$S/rt" "$S/syn" "$S/syn.om" 24 vitals_cpu_usage_ratio 168)
echo "$SYN"
DAY=$("$BENCH" count "$S/syn")
V_SAMPLES=$(echo "$DAY" | val samples); V_BYTES=$(echo "$DAY" | val file_bytes)
V_RAW_BYTES=$(echo "$DAY" | val raw_bytes)
mkdir -p "$S/prom-syn"
promtool tsdb create-blocks-from openmetrics "$S/syn.om" "$S/prom-syn" >"$S/promtool.log" 2>&1
rm -f "$S/syn.om" "$S/rt.om"
PP2=$(port)
cat >"$S/prom-empty.yml" <<EOF
global: {scrape_interval: 1m}
EOF
prometheus --config.file "$S/prom-empty.yml" --storage.tsdb.path "$S/prom-syn" --web.listen-address "127.0.0.1:$PP2" \
  --storage.tsdb.retention.time 30d --log.level warn 2>"$S/prom-syn.log" &
PIDS+=($!)
up "http://127.0.0.1:$PP2/-/ready"
# Let it compact the 2 h blocks (it checks every minute); stop when the
# block count holds still for two checks.
last=""; same=0
for _ in $(seq 40); do
  sleep 15
  n=$(prom_metric "$PP2" prometheus_tsdb_blocks_loaded)
  if [ "$n" = "$last" ]; then same=$((same + 1)); else same=0; fi
  last=$n
  [ "$same" -ge 4 ] && break
done
P_BYTES=$(blocks_bytes "$S/prom-syn")
P_SAMPLES=$(blocks_samples "$S/prom-syn")

# ---- 3. query_range ----
VP2=$(port)
cat >"$S/serve.toml" <<EOF
[system]
enabled = false
[history]
path = "$S/syn"
raw_retention = "30d"
EOF
"$VITALS" run --config "$S/serve.toml" --web.listen-address "127.0.0.1:$VP2" --log.level warn 2>"$S/serve.log" &
PIDS+=($!)
up "http://127.0.0.1:$VP2/-/ready"
END_S=$(( $(echo "$SYN" | val end_ms) / 1000 ))
timeq() { # base start step -> "median p95" in ms, and the number of points
  local url="$1/api/v1/query_range" start=$2 step=$3
  local args=(--data-urlencode "query=vitals_cpu_usage_ratio" --data-urlencode "start=$start" --data-urlencode "end=$END_S" --data-urlencode "step=$step")
  local pts; pts=$(curl -sfG "$url" "${args[@]}" | python3 -c 'import json,sys;r=json.load(sys.stdin)["data"]["result"];print(sum(len(s["values"]) for s in r))')
  for _ in 1 2 3; do curl -sfG -o /dev/null "$url" "${args[@]}"; done
  for _ in $(seq "$REPS"); do curl -sfG -o /dev/null -w '%{time_total}\n' "$url" "${args[@]}"; done |
    python3 -c 'import sys;v=sorted(float(x)*1000 for x in sys.stdin);n=len(v);print(f"{v[n//2]:.2f} {v[min(n-1,int(n*0.95))]:.2f}", sys.argv[1])' "$pts"
}
LOAD_Q=$(load)
Q24V=$(timeq "http://127.0.0.1:$VP2" $((END_S - 86400)) 60)
Q24P=$(timeq "http://127.0.0.1:$PP2" $((END_S - 86400)) 60)
Q7V=$(timeq "http://127.0.0.1:$VP2" $((END_S - 7 * 86400)) 300)
Q7P=$(timeq "http://127.0.0.1:$PP2" $((END_S - 7 * 86400)) 300)

# ---- table ----
met() { python3 -c 'import sys;print("met" if float(sys.argv[1])<=float(sys.argv[2]) else "missed")' "$1" "$2"; }
BPS_V=$(div "$V_BYTES" "$V_SAMPLES"); BPS_P=$(div "$P_BYTES" "$P_SAMPLES")
read -r Q24V_MED Q24V_P95 Q24V_N <<<"$Q24V"; read -r Q24P_MED Q24P_P95 Q24P_N <<<"$Q24P"
read -r Q7V_MED Q7V_P95 Q7V_N <<<"$Q7V"; read -r Q7P_MED Q7P_P95 Q7P_N <<<"$Q7P"
echo
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); load average: real-time phase $LOAD_RT, queries $LOAD_Q; $(nproc) cores"
echo
echo "| measure | target | vitals | Prometheus | ratio (vitals/Prometheus) | target |"
echo "|---|---|---|---|---|---|"
echo "| disk per raw sample, 24 h synthesised ($V_SAMPLES / $P_SAMPLES samples) | ≤ 1 B | $BPS_V B | $BPS_P B | $(ratio "$BPS_V" "$BPS_P") | $(met "$BPS_V" 1) |"
echo "| query_range 24 h step 60 s, median (p95) | ≤ 20 ms | $Q24V_MED ($Q24V_P95) ms, $Q24V_N points | $Q24P_MED ($Q24P_P95) ms, $Q24P_N points | $(ratio "$Q24V_MED" "$Q24P_MED") | $(met "$Q24V_MED" 20) |"
echo "| query_range 7 d step 5 m, median (p95) | ≤ 50 ms | $Q7V_MED ($Q7V_P95) ms, $Q7V_N points | $Q7P_MED ($Q7P_P95) ms, $Q7P_N points | $(ratio "$Q7V_MED" "$Q7P_MED") | $(met "$Q7V_MED" 50) |"
echo
echo "Real-time phase ($MINUTES min, series: vitals $V_RT_SERIES, Prometheus head $P_HEAD_SERIES incl. up/scrape_*):"
echo "| state | vitals B/sample | Prometheus B/sample |"
echo "|---|---|---|"
echo "| as left by the run (vitals: open-hour per-flush chunks; Prometheus: WAL + head chunks) | $(div "$V_RT_BYTES" "$V_RT_SAMPLES") ($V_RT_BYTES B / $V_RT_SAMPLES) | $(div "$P_HEAD_BYTES" "$P_HEAD_SAMPLES") ($P_HEAD_BYTES B / $P_HEAD_SAMPLES) |"
echo "| compacted (vitals: windows closed and rolled up; Prometheus: snapshot block) | $(div "$V_RTC_BYTES" "$V_RTC_SAMPLES") ($V_RTC_BYTES B / $V_RTC_SAMPLES) | $(div "$P_SNAP_BYTES" "$P_SNAP_SAMPLES") ($P_SNAP_BYTES B / $P_SNAP_SAMPLES) |"
echo
echo "24 h detail: vitals raw tier $(div "$V_RAW_BYTES" "$V_SAMPLES") B/sample of $V_BYTES file bytes; Prometheus $(ls -d "$S/prom-syn"/*/ | grep -c . ) dirs, $P_BYTES block bytes"
