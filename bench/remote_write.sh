#!/usr/bin/env bash
# Remote-write benchmark, one run, one machine, a local VictoriaMetrics
# single node as the receiver:
#   1. throughput: vitals' demo source at SERIES series every 100 ms, remote
#      write to VictoriaMetrics: samples/s sent, vitals CPU µs per sample
#      (and the same run without [[remote_write]], so the marginal cost of
#      remote write per sample is known);
#   2. outage: 10,000 series at 1 Hz while the receiver is down for OUTAGE
#      seconds: bytes per queued sample on disk, then the backfill time once
#      the receiver is back;
#   3. peers on the same outage: Prometheus in agent mode and vmagent (from
#      the victoria-metrics package), each scraping vitals' /metrics every
#      second and writing to the same (stopped) receiver: bytes per queued
#      sample in their WAL / persistent queue and their backfill time.
# Prints a Markdown table with ratios vitals/peer.
#
#   bench/remote_write.sh [SECONDS] [OUTAGE_SECONDS] [SERIES]   (default 20 60 50000)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-20}"
OUTAGE="${2:-60}"
SERIES="${3:-50000}"
for pkg in victoria-metrics:victoria-metrics prometheus:prometheus curl:curl; do
  cmd=${pkg%%:*}
  if ! command -v "$cmd" >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkg##*:}" >/dev/null
  fi
done
[ -x target/release/vitals ] && [ -z "${REBUILD:-}" ] || cargo build --release --quiet --bin vitals
VITALS=target/release/vitals
OUT=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_http() { for _ in $(seq 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
# Sum of a metric's samples (optionally only lines containing $3) on a /metrics page.
metric() { curl -sf "$1" | awk -v n="$2" -v f="${3:-}" '$1 ~ "^"n"({|$)" && index($0, f) {s += $NF} END {printf "%.0f\n", s}'; }
now() { date +%s.%N; }

VMPORT=$(free_port)
start_vm() {
  victoria-metrics -storageDataPath="$OUT/vm" -httpListenAddr="127.0.0.1:$VMPORT" \
    -search.latencyOffset=0s >"$OUT/vm.log" 2>&1 &
  VMPID=$!; PIDS+=("$VMPID")
  wait_http "http://127.0.0.1:$VMPORT/health"
}
stop_vm() { kill "$VMPID"; wait "$VMPID" 2>/dev/null || true; }

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
EOF
  fi
  "$VITALS" run --config "$OUT/vitals.toml" --web.listen-address "127.0.0.1:$VPORT" >"$OUT/vitals.log" 2>&1 &
  VPID=$!; PIDS+=("$VPID")
  wait_http "http://127.0.0.1:$VPORT/readyz"
}
stop_vitals() { kill "$VPID"; wait "$VPID" 2>/dev/null || true; }
VM_METRICS() { echo "http://127.0.0.1:$VPORT/metrics"; }

start_vm

# ---- 1. throughput -----------------------------------------------------------
start_vitals "$SERIES" 100ms off
sleep 3
c0=$(cpu_ticks "$VPID"); i0=$(metric "$(VM_METRICS)" vitals_samples_ingested_total); t0=$(now)
sleep "$SECS"
c1=$(cpu_ticks "$VPID"); i1=$(metric "$(VM_METRICS)" vitals_samples_ingested_total); t1=$(now)
stop_vitals
base_us=$(echo "($c1-$c0)/$HZ*1000000/($i1-$i0)" | bc -l)

start_vitals "$SERIES" 100ms on
sleep 3
c0=$(cpu_ticks "$VPID"); s0=$(metric "$(VM_METRICS)" vitals_remote_storage_samples_sent_total); i0=$(metric "$(VM_METRICS)" vitals_samples_ingested_total); t0=$(now)
sleep "$SECS"
c1=$(cpu_ticks "$VPID"); s1=$(metric "$(VM_METRICS)" vitals_remote_storage_samples_sent_total); i1=$(metric "$(VM_METRICS)" vitals_samples_ingested_total); t1=$(now)
drops=$(metric "$(VM_METRICS)" vitals_remote_storage_samples_dropped_total)
stop_vitals
rate=$(echo "($s1-$s0)/($t1-$t0)" | bc -l)
offered=$(echo "($i1-$i0)/($t1-$t0)" | bc -l)
rw_us=$(echo "($c1-$c0)/$HZ*1000000/($s1-$s0)" | bc -l)
marg_us=$(echo "$rw_us - $base_us" | bc -l)
echo "throughput: sent/s=$rate offered/s=$offered cpu_us_per_sample=$rw_us without_rw=$base_us drops=$drops" >&2

# ---- 2. outage and backfill: vitals -------------------------------------------
start_vitals 10000 1s on
sleep 3
stop_vm
q0=$(metric "$(VM_METRICS)" vitals_remote_storage_queue_samples)
sleep "$OUTAGE"
qs=$(metric "$(VM_METRICS)" vitals_remote_storage_queue_samples)
qb=$(metric "$(VM_METRICS)" vitals_remote_storage_queue_bytes)
disk=$(du -sb "$OUT/queue" | awk '{print $1}')
start_vm
tb=$(now)
while [ "$(metric "$(VM_METRICS)" vitals_remote_storage_queue_samples)" -gt 20000 ]; do sleep 0.2; done
te=$(now)
backfill=$(echo "$te-$tb" | bc -l)
lost=$(metric "$(VM_METRICS)" vitals_remote_storage_samples_dropped_total)
v_bps=$(echo "$disk/($qs+1)" | bc -l)
v_payload_bps=$(echo "$qb/($qs+1)" | bc -l)
echo "outage: queued=$qs file_bytes_per_sample=$v_bps payload_bytes_per_sample=$v_payload_bps backfill_s=$backfill dropped=$lost" >&2

# ---- 3. peers: Prometheus agent and vmagent scraping vitals (same 10k series) --
peer() { # $1 = name; starts with the receiver up, stops it for OUTAGE, measures
  local name=$1 dir="$OUT/$1" port; port=$(free_port); mkdir -p "$dir"
  case $name in
    prometheus-agent)
      cat > "$dir/p.yml" <<EOF
global: { scrape_interval: 1s }
scrape_configs: [ { job_name: vitals, static_configs: [ { targets: ["127.0.0.1:$VPORT"] } ] } ]
remote_write: [ { url: "http://127.0.0.1:$VMPORT/api/v1/write" } ]
EOF
      prometheus --enable-feature=agent --config.file="$dir/p.yml" --storage.agent.path="$dir/wal" \
        --web.listen-address="127.0.0.1:$port" >"$dir/log" 2>&1 &
      ;;
    vmagent)
      cat > "$dir/s.yml" <<EOF
global: { scrape_interval: 1s }
scrape_configs: [ { job_name: vitals, static_configs: [ { targets: ["127.0.0.1:$VPORT"] } ] } ]
EOF
      vmagent -promscrape.config="$dir/s.yml" -remoteWrite.url="http://127.0.0.1:$VMPORT/api/v1/write" \
        -remoteWrite.tmpDataPath="$dir/queue" -httpListenAddr="127.0.0.1:$port" >"$dir/log" 2>&1 &
      ;;
  esac
  local pid=$!; PIDS+=("$pid")
  wait_http "http://127.0.0.1:$port/metrics"
  echo "peer $name started" >&2
  sleep 3
  stop_vm
  local d0; d0=$(du -sb "$dir" | awk '{print $1}')
  sleep "$OUTAGE"
  local d1; d1=$(du -sb "$dir" | awk '{print $1}')
  # Samples scraped during the outage: the series count times the scrapes.
  local samples; samples=$(echo "10000*$OUTAGE" | bc)
  start_vm
  local tb; tb=$(now)
  case $name in
    prometheus-agent) # drained when the shards hold nothing and the WAL reader is at the head
      for _ in $(seq 600); do
        p=$(metric "http://127.0.0.1:$port/metrics" prometheus_remote_storage_samples_pending)
        [ "${p:-1}" -lt 20000 ] && break; sleep 0.2; done ;;
    vmagent)
      for _ in $(seq 600); do
        p=$(metric "http://127.0.0.1:$port/metrics" vmagent_remotewrite_pending_data_bytes)
        [ "${p:-1}" -lt 1000000 ] && break; sleep 0.2; done ;;
  esac
  local te; te=$(now)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$name $(echo "($d1-$d0)/$samples" | bc -l) $(echo "$te-$tb" | bc -l)"
}
peers=()
if command -v prometheus >/dev/null; then peers+=("$(peer prometheus-agent)"); fi
if command -v vmagent >/dev/null; then peers+=("$(peer vmagent)"); fi
stop_vitals

printf '\n| measure | vitals | target |\n|---|---|---|\n'
printf '| samples/s sent to VictoriaMetrics (offered %.0f/s) | %.0f | >= 500000 |\n' "$offered" "$rate"
printf '| vitals CPU per sample, with remote write | %.2f us | <= 1 us |\n' "$rw_us"
printf '| of which remote write (minus the same run without it) | %.2f us | |\n' "$marg_us"
printf '| samples dropped (writer behind, queue full) | %s | 0 |\n' "$drops"
printf '| backfill of %s samples (10k series x %s s) | %.1f s | <= 30 s for 6 M |\n' "$qs" "$OUTAGE" "$backfill"
printf '| bytes per queued sample on disk (file) | %.2f | <= 4 |\n' "$v_bps"
printf '| bytes per queued sample (compressed payload) | %.2f | |\n' "$v_payload_bps"
printf '| samples dropped during the outage | %s | 0 |\n' "$lost"
for p in "${peers[@]}"; do
  read -r name bps bf <<<"$p"
  printf '| %s: bytes per queued sample | %.2f (vitals/peer %.2f) | |\n' "$name" "$bps" "$(echo "$v_bps/$bps" | bc -l)"
  printf '| %s: backfill | %.1f s (vitals/peer %.2f) | |\n' "$name" "$bf" "$(echo "$backfill/$bf" | bc -l)"
done
