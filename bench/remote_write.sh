#!/usr/bin/env bash
# Remote-write benchmark: one run, one machine, one local VictoriaMetrics
# single node as the receiver, vitals side by side with Prometheus in agent
# mode (`prometheus --enable-feature=agent`) and vmagent (package
# victoria-metrics), both scraping vitals' /metrics.
#
#   1. throughput: vitals' demo source with SERIES series every 100 ms,
#      remote write to VictoriaMetrics: samples/s the receiver took, vitals
#      CPU µs per sample (and the same run without [[remote_write]]). Then
#      each peer scraping the same SERIES series every PEER_INTERVAL and
#      writing to the receiver: samples/s taken, the peer's CPU per sample.
#   2. outage: vitals (demo source, OUTAGE_SERIES series at 1 Hz, remote
#      write on) and both peers (scraping vitals every 1 s) write to the
#      receiver; the receiver is stopped for OUTAGE seconds: bytes on disk
#      per queued sample (growth of the queue / WAL directory over the
#      outage). Then the receiver comes back and each writer is let go in
#      turn (the others are paused with SIGSTOP, so each drains alone):
#      backfill time until the receiver holds every sample of the outage
#      window, and the samples of that window counted at the receiver.
#
# Each writer adds its own label writer="vitals|prometheus-agent|vmagent",
# so the receiver tells them apart. Prints a Markdown table with ratios.
#
#   bench/remote_write.sh [SECONDS] [OUTAGE_SECONDS] [SERIES] [OUTAGE_SERIES]
#                         (default 20 600 50000 10000)
#   VITALS=path/to/vitals (default target/release/vitals), PEER_INTERVAL (100ms, the demo source's interval)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-20}"
OUTAGE="${2:-600}"
SERIES="${3:-50000}"
OSERIES="${4:-10000}"
PEER_INTERVAL="${PEER_INTERVAL:-100ms}"
for pkg in victoria-metrics:victoria-metrics prometheus:prometheus curl:curl bc:bc; do
  cmd=${pkg%%:*}
  if ! command -v "$cmd" >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkg##*:}" >/dev/null
  fi
done
VITALS="${VITALS:-target/release/vitals}"
if [ ! -x "$VITALS" ]; then cargo build --release --quiet --bin vitals; fi
OUT=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT
log() { echo "[$(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_http() { for _ in $(seq 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
# Sum of a metric's samples (optionally only lines containing $3) on a
# /metrics page; 0 when the page does not answer.
metric() { { curl -sf "$1" || true; } | awk -v n="$2" -v f="${3:-}" '$1 ~ "^"n"({|$)" && index($0, f) {s += $NF} END {printf "%.0f\n", s}'; }
now() { date +%s.%N; }
calc() { echo "$*" | bc -l; }

VMPORT=$(free_port)
VMPID=
start_vm() {
  victoria-metrics -storageDataPath="$OUT/vm" -httpListenAddr="127.0.0.1:$VMPORT" \
    -search.latencyOffset=0s -search.disableCache >>"$OUT/vm.log" 2>&1 &
  VMPID=$!; PIDS+=("$VMPID")
  wait_http "http://127.0.0.1:$VMPORT/health"
}
# Stopped and gone (the next start takes the same data directory and port).
stop_vm() { kill "$VMPID"; wait "$VMPID" 2>/dev/null || true; VMPID=; }
VMQ() { curl -sf "http://127.0.0.1:$VMPORT/api/v1/query" --data-urlencode "query=$1" ${2:+--data-urlencode "time=$2"} \
  | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)'; }
# Samples the receiver has taken so far (all writers).
vm_rows() { metric "http://127.0.0.1:$VMPORT/metrics" vm_rows_inserted_total promremotewrite; }

# vitals with the demo source; $1 = series, $2 = interval, $3 = remote write on/off.
start_vitals() {
  local series=$1 interval=$2 rw=$3 devices lines
  lines=$(( (series / 4 + 999) / 1000 ))   # at most 1000 devices per line
  devices=$(( series / 4 / lines ))
  VPORT=$(free_port)
  rm -rf "$OUT/queue"
  cat > "$OUT/vitals.toml" <<EOF
[system]
enabled = false
[detect]
enabled = false
[dashboard]
enabled = false
[[sources]]
type = "demo"
name = "demo"
interval = "$interval"
lines = $lines
devices_per_line = $devices
business = false
anomaly_every = "0s"
silent_device = false
EOF
  if [ "$rw" = on ]; then
    cat >> "$OUT/vitals.toml" <<EOF
[[remote_write]]
name = "vm"
url = "http://127.0.0.1:$VMPORT/api/v1/write"
queue_dir = "$OUT/queue"
batch_max_samples = 10000
max_concurrency = 4
max_backoff = "1s"
external_labels = { writer = "vitals" }
EOF
  fi
  "$VITALS" run --config "$OUT/vitals.toml" --web.listen-address "127.0.0.1:$VPORT" >"$OUT/vitals.log" 2>&1 &
  VPID=$!; PIDS+=("$VPID")
  wait_http "http://127.0.0.1:$VPORT/readyz"
}
stop_vitals() { kill "$VPID"; wait "$VPID" 2>/dev/null || true; }
V_METRICS() { echo "http://127.0.0.1:$VPORT/metrics"; }

# A peer scraping vitals every $2 and writing to the receiver; sets PEER_PID,
# PEER_DIR (its WAL / persistent queue).
start_peer() {
  local name=$1 interval=$2 port; port=$(free_port)
  PEER_DIR="$OUT/$name"; rm -rf "$PEER_DIR"; mkdir -p "$PEER_DIR/data"
  case $name in
    prometheus-agent)
      cat > "$PEER_DIR/p.yml" <<EOF
global: { scrape_interval: $interval, scrape_timeout: $interval, external_labels: { writer: prometheus-agent } }
scrape_configs: [ { job_name: vitals, static_configs: [ { targets: ["127.0.0.1:$VPORT"] } ] } ]
remote_write: [ { url: "http://127.0.0.1:$VMPORT/api/v1/write", queue_config: { max_backoff: 1s } } ]
EOF
      prometheus --enable-feature=agent --config.file="$PEER_DIR/p.yml" --storage.agent.path="$PEER_DIR/data" \
        --web.listen-address="127.0.0.1:$port" >"$PEER_DIR/log" 2>&1 &
      ;;
    vmagent)
      cat > "$PEER_DIR/s.yml" <<EOF
global: { scrape_interval: $interval, scrape_timeout: $interval }
scrape_configs: [ { job_name: vitals, static_configs: [ { targets: ["127.0.0.1:$VPORT"] } ] } ]
EOF
      vmagent -promscrape.config="$PEER_DIR/s.yml" -remoteWrite.url="http://127.0.0.1:$VMPORT/api/v1/write" \
        -remoteWrite.tmpDataPath="$PEER_DIR/data" -remoteWrite.label=writer=vmagent \
        -httpListenAddr="127.0.0.1:$port" >"$PEER_DIR/log" 2>&1 &
      ;;
  esac
  PEER_PID=$!; PIDS+=("$PEER_PID")
  wait_http "http://127.0.0.1:$port/metrics"
}
stop_peer() { kill -CONT "$1" 2>/dev/null || true; kill "$1"; wait "$1" 2>/dev/null || true; }
du_b() { du -sb "$1" 2>/dev/null | awk '{print $1}'; }

start_vm
declare -A TP_RATE TP_CPU TP_LOAD

# ---- 1. throughput: vitals --------------------------------------------------
start_vitals "$SERIES" 100ms off
sleep 3
c0=$(cpu_ticks "$VPID"); i0=$(metric "$(V_METRICS)" vitals_samples_ingested_total)
sleep "$SECS"
c1=$(cpu_ticks "$VPID"); i1=$(metric "$(V_METRICS)" vitals_samples_ingested_total)
stop_vitals
base_us=$(calc "($c1-$c0)/$HZ*1000000/($i1-$i0)")
log "vitals without remote write: cpu_us_per_sample=$base_us"

start_vitals "$SERIES" 100ms on
sleep 3
c0=$(cpu_ticks "$VPID"); r0=$(vm_rows); i0=$(metric "$(V_METRICS)" vitals_samples_ingested_total); t0=$(now)
sleep "$SECS"
c1=$(cpu_ticks "$VPID"); r1=$(vm_rows); i1=$(metric "$(V_METRICS)" vitals_samples_ingested_total); t1=$(now)
TP_LOAD[vitals]=$(cut -d' ' -f1 /proc/loadavg)
drops=$(metric "$(V_METRICS)" vitals_remote_storage_samples_dropped_total)
stop_vitals
TP_RATE[vitals]=$(calc "($r1-$r0)/($t1-$t0)")
offered=$(calc "($i1-$i0)/($t1-$t0)")
TP_CPU[vitals]=$(calc "($c1-$c0)/$HZ*1000000/($r1-$r0)")
log "vitals throughput: received/s=${TP_RATE[vitals]} offered/s=$offered cpu_us_per_sample=${TP_CPU[vitals]} drops=$drops"

# ---- 1b. throughput: the peers scraping the same series ------------------------
start_vitals "$SERIES" 100ms off
sleep 2
for p in prometheus-agent vmagent; do
  start_peer "$p" "$PEER_INTERVAL"
  sleep 5
  c0=$(cpu_ticks "$PEER_PID"); v0=$(cpu_ticks "$VPID"); r0=$(vm_rows); t0=$(now)
  sleep "$SECS"
  c1=$(cpu_ticks "$PEER_PID"); v1=$(cpu_ticks "$VPID"); r1=$(vm_rows); t1=$(now)
  TP_LOAD[$p]=$(cut -d' ' -f1 /proc/loadavg)
  stop_peer "$PEER_PID"
  TP_RATE[$p]=$(calc "($r1-$r0)/($t1-$t0)")
  TP_CPU[$p]=$(calc "($c1-$c0)/$HZ*1000000/($r1-$r0+1)")
  log "$p throughput: received/s=${TP_RATE[$p]} peer_cpu_us_per_sample=${TP_CPU[$p]} vitals_scrape_cpu_us_per_sample=$(calc "($v1-$v0)/$HZ*1000000/($r1-$r0+1)")"
  sleep 2
done
stop_vitals

# ---- 2. outage and backfill, all three writers at once --------------------------
declare -A DISK BACKFILL GOT MINS
start_vitals "$OSERIES" 1s on
start_peer prometheus-agent 1s; P_PID=$PEER_PID; P_DIR=$PEER_DIR
start_peer vmagent 1s; A_PID=$PEER_PID; A_DIR=$PEER_DIR
sleep 10
stop_vm
T0=$(date +%s)
d0v=$(du_b "$OUT/queue"); d0p=$(du_b "$P_DIR/data"); d0a=$(du_b "$A_DIR/data")
q0=$(metric "$(V_METRICS)" vitals_remote_storage_queue_samples)
log "receiver stopped; outage of $OUTAGE s"
sleep "$OUTAGE"
T1=$(date +%s)
kill -STOP "$P_PID" "$A_PID"
qs=$(metric "$(V_METRICS)" vitals_remote_storage_queue_samples)
OUTAGE_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
DISK[vitals]=$(calc "($(du_b "$OUT/queue")-$d0v)/($qs-$q0)")
DISK[prometheus-agent]=$(calc "($(du_b "$P_DIR/data")-$d0p)/($OSERIES*$OUTAGE)")
DISK[vmagent]=$(calc "($(du_b "$A_DIR/data")-$d0a)/($OSERIES*$OUTAGE)")
log "outage over: vitals queued $qs samples; bytes/sample vitals=${DISK[vitals]} prometheus-agent=${DISK[prometheus-agent]} vmagent=${DISK[vmagent]}"
# The window every writer must deliver in full: the outage minus 2 s each side.
W=$((T1 - T0 - 4)); WEND=$((T1 - 2))
EXPECT=$((OSERIES * W))
window_count() { VMQ "sum(count_over_time({__name__=~\"demo_.*\",writer=\"$1\"}[${W}s]))" "$WEND"; }
start_vm
drain() { # $1 = writer; waits until the receiver holds the window in full
  local w=$1 tb te n
  tb=$(now)
  for _ in $(seq 600); do
    n=$(window_count "$w" || echo 0)
    [ "$n" -ge $((EXPECT - OSERIES)) ] && break
    sleep 0.5
  done
  te=$(now)
  BACKFILL[$w]=$(calc "$te-$tb")
  sleep 3
  GOT[$w]=$(window_count "$w")
  MINS[$w]=$(VMQ "min(count_over_time({__name__=~\"demo_.*\",writer=\"$w\"}[${W}s]))" "$WEND")
  log "$w: backfill ${BACKFILL[$w]} s; window holds ${GOT[$w]} of $EXPECT samples (fewest per series ${MINS[$w]} of $W)"
}
drain vitals
vlost=$(metric "$(V_METRICS)" vitals_remote_storage_samples_dropped_total)
kill -CONT "$P_PID"; drain prometheus-agent; stop_peer "$P_PID"
kill -CONT "$A_PID"; drain vmagent; stop_peer "$A_PID"
stop_vitals

r() { calc "$1/$2"; }
printf '\n| measure | target | vitals | Prometheus agent | vmagent | vitals/agent | vitals/vmagent |\n|---|---|---|---|---|---|---|\n'
printf '| samples/s taken by the receiver (vitals: %.0f/s offered by the demo source; peers: scraping %s series every %s) | >= 500000 | %.0f | %.0f | %.0f | %.2f | %.2f |\n' \
  "$offered" "$SERIES" "$PEER_INTERVAL" "${TP_RATE[vitals]}" "${TP_RATE[prometheus-agent]}" "${TP_RATE[vmagent]}" \
  "$(r "${TP_RATE[vitals]}" "${TP_RATE[prometheus-agent]}")" "$(r "${TP_RATE[vitals]}" "${TP_RATE[vmagent]}")"
printf '| CPU per sample (vitals: whole process incl. the demo source, %.2f us without remote write; peers: their own process) | <= 1 us | %.2f us | %.2f us | %.2f us | %.2f | %.2f |\n' \
  "$base_us" "${TP_CPU[vitals]}" "${TP_CPU[prometheus-agent]}" "${TP_CPU[vmagent]}" \
  "$(r "${TP_CPU[vitals]}" "${TP_CPU[prometheus-agent]}")" "$(r "${TP_CPU[vitals]}" "${TP_CPU[vmagent]}")"
printf '| load average (1 min) at the end of each throughput run | | %s | %s | %s | | |\n' "${TP_LOAD[vitals]}" "${TP_LOAD[prometheus-agent]}" "${TP_LOAD[vmagent]}"
printf '| bytes on disk per queued sample (%s series at 1 Hz, %s s outage) | <= 4 | %.2f | %.2f | %.2f | %.2f | %.2f |\n' \
  "$OSERIES" "$OUTAGE" "${DISK[vitals]}" "${DISK[prometheus-agent]}" "${DISK[vmagent]}" \
  "$(r "${DISK[vitals]}" "${DISK[prometheus-agent]}")" "$(r "${DISK[vitals]}" "${DISK[vmagent]}")"
printf '| backfill of the outage (%s samples per writer), each writer alone | <= 30 s for 6 M | %.1f s | %.1f s | %.1f s | %.2f | %.2f |\n' \
  "$EXPECT" "${BACKFILL[vitals]}" "${BACKFILL[prometheus-agent]}" "${BACKFILL[vmagent]}" \
  "$(r "${BACKFILL[vitals]}" "${BACKFILL[prometheus-agent]}")" "$(r "${BACKFILL[vitals]}" "${BACKFILL[vmagent]}")"
printf '| samples of the outage window at the receiver (expected %s, %s s x %s series, +-1 s per series) | all | %s (fewest per series %s) | %s (%s) | %s (%s) | | |\n' \
  "$EXPECT" "$W" "$OSERIES" "${GOT[vitals]}" "${MINS[vitals]}" "${GOT[prometheus-agent]}" "${MINS[prometheus-agent]}" "${GOT[vmagent]}" "${MINS[vmagent]}"
printf '| vitals samples dropped (writer behind, queue full, disk) | 0 | %s | | | | |\n' "$((drops + vlost))"
printf '| load average during the outage (1, 5, 15 min) | | %s | | | | |\n' "$OUTAGE_LOAD"
