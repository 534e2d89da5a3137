#!/usr/bin/env bash
# Remote-write benchmark: one run, one machine, one local VictoriaMetrics
# single node as the receiver, vitals side by side with Prometheus in agent
# mode (`prometheus --enable-feature=agent`) and vmagent (package
# victoria-metrics), both scraping vitals' /metrics.
#
#   1. throughput: vitals' demo source with SERIES series every 100 ms,
#      remote write to VictoriaMetrics: samples/s the receiver took, vitals
#      CPU µs per sample (and the same run without [[remote_write]]). Then
#      each peer scraping the same SERIES series every PEER_INTERVAL (1 s:
#      at 100 ms their scrapes of 50,000 series time out) and writing to
#      the receiver: samples/s offered (series / interval) and taken, the
#      peer's CPU per sample.
#   2. outage: vitals (demo source, OUTAGE_SERIES series at 1 Hz, remote
#      write on) and both peers (scraping vitals every 1 s) write to the
#      receiver; the receiver is stopped for OUTAGE seconds: bytes on disk
#      per queued sample (growth of the queue / WAL directory over the
#      outage). Then the receiver comes back and each writer is let go in
#      turn (the others are paused with SIGSTOP, so each drains alone):
#      backfill time until the receiver holds every sample the writer
#      produced in the outage window (from the writer's own counters:
#      vitals' ingested samples, the peers' scrapes times the series
#      scraped; within one tick), and the samples of that window counted
#      at the receiver.
#   3. QUANTIZED=1 (default): the outage once more, vitals alone, with
#      readings at a fixed resolution: an `http` source polling a local
#      JSON page of OUTAGE_SERIES readings (0.1 steps, each a slow random
#      walk) every 1 s. Bytes on disk per queued sample. (The demo
#      source's readings are full-precision floats with noise.)
#
# vitals runs with [history] off (its own on-disk tap, not measured here).
#
# Each writer adds its own label writer="vitals|prometheus-agent|vmagent",
# so the receiver tells them apart. Prints a Markdown table with ratios.
#
#   bench/remote_write.sh [SECONDS] [OUTAGE_SECONDS] [SERIES] [OUTAGE_SERIES]
#                         (default 20 600 50000 10000)
#   VITALS=path/to/vitals (default target/release/vitals), PEER_INTERVAL (1s),
#   QUANTIZED (1), QUANTIZED_OUTAGE (120 s)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-20}"
OUTAGE="${2:-600}"
SERIES="${3:-50000}"
OSERIES="${4:-10000}"
PEER_INTERVAL="${PEER_INTERVAL:-1s}"
QUANTIZED="${QUANTIZED:-1}"
QOUTAGE="${QUANTIZED_OUTAGE:-120}"
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

# vitals with the demo source; $1 = series, $2 = interval, $3 = remote write
# on/off, $4 = "quantized" for the http source of fixed-resolution readings.
start_vitals() {
  local series=$1 interval=$2 rw=$3 kind=${4:-demo} devices lines
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
[history]
enabled = false
EOF
  if [ "$kind" = quantized ]; then
    cat >> "$OUT/vitals.toml" <<EOF
[[sources]]
type = "http"
name = "demo"
url = "http://127.0.0.1:$QPORT/"
interval = "$interval"
max_response_bytes = 67108864
[[sources.mappings]]
each = "readings"
labels = { sensor = "id" }
max_payload_bytes = 67108864
[[sources.mappings.metrics]]
name = "demo_reading"
path = "v"
EOF
  else
    cat >> "$OUT/vitals.toml" <<EOF
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
  fi
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
# PEER_DIR (its WAL / persistent queue), PEER_PORT.
start_peer() {
  local name=$1 interval=$2 port; port=$(free_port); PEER_PORT=$port
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
declare -A TP_RATE TP_CPU TP_LOAD TP_OFFERED
# Seconds of a Prometheus-style duration (100ms, 1s, 2m).
interval_s() { case $1 in *ms) calc "${1%ms}/1000";; *s) echo "${1%s}";; *m) calc "${1%m}*60";; esac; }
# demo_* series on vitals' /metrics.
demo_series() { { curl -sf "$(V_METRICS)" || true; } | grep -c '^demo_' || true; }

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
TP_OFFERED[vitals]=$offered
TP_CPU[vitals]=$(calc "($c1-$c0)/$HZ*1000000/($r1-$r0)")
log "vitals throughput: received/s=${TP_RATE[vitals]} offered/s=$offered cpu_us_per_sample=${TP_CPU[vitals]} drops=$drops"

# ---- 1b. throughput: the peers scraping the same series ------------------------
start_vitals "$SERIES" 100ms off
sleep 2
NSER_TP=$(demo_series)
for p in prometheus-agent vmagent; do
  start_peer "$p" "$PEER_INTERVAL"
  sleep 5
  c0=$(cpu_ticks "$PEER_PID"); v0=$(cpu_ticks "$VPID"); r0=$(vm_rows); t0=$(now)
  sleep "$SECS"
  c1=$(cpu_ticks "$PEER_PID"); v1=$(cpu_ticks "$VPID"); r1=$(vm_rows); t1=$(now)
  TP_LOAD[$p]=$(cut -d' ' -f1 /proc/loadavg)
  stop_peer "$PEER_PID"
  TP_RATE[$p]=$(calc "($r1-$r0)/($t1-$t0)")
  TP_OFFERED[$p]=$(calc "$NSER_TP/$(interval_s "$PEER_INTERVAL")")
  TP_CPU[$p]=$(calc "($c1-$c0)/$HZ*1000000/($r1-$r0+1)")
  log "$p throughput: received/s=${TP_RATE[$p]} peer_cpu_us_per_sample=${TP_CPU[$p]} vitals_scrape_cpu_us_per_sample=$(calc "($v1-$v0)/$HZ*1000000/($r1-$r0+1)")"
  sleep 2
done
stop_vitals

# ---- 2. outage and backfill, all three writers at once --------------------------
declare -A DISK BACKFILL GOT MINS
start_vitals "$OSERIES" 1s on
start_peer prometheus-agent 1s; P_PID=$PEER_PID; P_DIR=$PEER_DIR; P_PORT_O=$PEER_PORT
start_peer vmagent 1s; A_PID=$PEER_PID; A_DIR=$PEER_DIR
A_PORT_O=$PEER_PORT
sleep 10
NSER_O=$(demo_series)
# What each writer has produced so far: vitals' ingested samples; the
# peers' scrapes of vitals (times the demo series each scrape brings).
produced() {
  case $1 in
    vitals) metric "$(V_METRICS)" vitals_samples_ingested_total 'source="demo"' ;;
    prometheus-agent) echo $(( $(metric "http://127.0.0.1:$P_PORT_O/metrics" prometheus_target_interval_length_seconds_count) * NSER_O )) ;;
    vmagent) echo $(( $(metric "http://127.0.0.1:$A_PORT_O/metrics" vm_promscrape_scrapes_total) * NSER_O )) ;;
  esac
}
declare -A PROD0 PROD1 EXPECTED
stop_vm
T0=$(date +%s)
d0v=$(du_b "$OUT/queue"); d0p=$(du_b "$P_DIR/data"); d0a=$(du_b "$A_DIR/data")
q0=$(metric "$(V_METRICS)" vitals_remote_storage_queue_samples)
log "receiver stopped; outage of $OUTAGE s"
sleep 2
for w in vitals prometheus-agent vmagent; do PROD0[$w]=$(produced "$w"); done
sleep $((OUTAGE - 4))
for w in vitals prometheus-agent vmagent; do PROD1[$w]=$(produced "$w"); EXPECTED[$w]=$(( PROD1[$w] - PROD0[$w] )); done
sleep 2
T1=$(date +%s)
kill -STOP "$P_PID" "$A_PID"
qs=$(metric "$(V_METRICS)" vitals_remote_storage_queue_samples)
OUTAGE_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
DISK[vitals]=$(calc "($(du_b "$OUT/queue")-$d0v)/($qs-$q0)")
DISK[prometheus-agent]=$(calc "($(du_b "$P_DIR/data")-$d0p)/($NSER_O*$OUTAGE)")
DISK[vmagent]=$(calc "($(du_b "$A_DIR/data")-$d0a)/($NSER_O*$OUTAGE)")
log "outage over: vitals queued $qs samples; bytes/sample vitals=${DISK[vitals]} prometheus-agent=${DISK[prometheus-agent]} vmagent=${DISK[vmagent]}"
# The window every writer must deliver in full: the outage minus 2 s each side.
W=$((T1 - T0 - 4)); WEND=$((T1 - 2))
window_count() { VMQ "sum(count_over_time({__name__=~\"demo_.*\",writer=\"$1\"}[${W}s]))" "$WEND"; }
start_vm
drain() { # $1 = writer; waits until the receiver holds what it produced in the window
  local w=$1 tb te n
  tb=$(now)
  for _ in $(seq 600); do
    n=$(window_count "$w" || echo 0)
    [ "$n" -ge $((EXPECTED[$w] - NSER_O)) ] && break
    sleep 0.5
  done
  te=$(now)
  BACKFILL[$w]=$(calc "$te-$tb")
  sleep 3
  GOT[$w]=$(window_count "$w")
  MINS[$w]=$(VMQ "min(count_over_time({__name__=~\"demo_.*\",writer=\"$w\"}[${W}s]))" "$WEND")
  log "$w: backfill ${BACKFILL[$w]} s; window holds ${GOT[$w]} samples, ${EXPECTED[$w]} produced (fewest per series ${MINS[$w]} of $W s)"
}
drain vitals
vlost=$(metric "$(V_METRICS)" vitals_remote_storage_samples_dropped_total)
kill -CONT "$P_PID"; drain prometheus-agent; stop_peer "$P_PID"
kill -CONT "$A_PID"; drain vmagent; stop_peer "$A_PID"
stop_vitals

# ---- 3. disk per queued sample with fixed-resolution readings -----------------
QDISK=n/a
if [ "$QUANTIZED" = 1 ]; then
  QPORT=$(free_port)
  python3 - "$QPORT" "$OSERIES" >"$OUT/quantized.log" 2>&1 <<'PY' &
import http.server, json, random, sys, threading, time
port, n = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(7)
state = [200 + rng.randrange(100) for _ in range(n)]  # tenths: 20.0 .. 29.9
page = b"{}"
def tick():
    global page
    while True:
        for i in range(n):
            state[i] += rng.choice((-1, 0, 0, 0, 1))
        page = json.dumps({"readings": [{"id": f"s{i:05d}", "v": state[i] / 10} for i in range(n)]}).encode()
        time.sleep(1)
threading.Thread(target=tick, daemon=True).start()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = page
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
  PIDS+=("$!")
  wait_http "http://127.0.0.1:$QPORT/"
  start_vitals "$OSERIES" 1s on quantized
  sleep 10
  stop_vm
  d0=$(du_b "$OUT/queue"); q0=$(metric "$(V_METRICS)" vitals_remote_storage_queue_samples)
  sleep "$QOUTAGE"
  qs=$(metric "$(V_METRICS)" vitals_remote_storage_queue_samples)
  QDISK=$(calc "($(du_b "$OUT/queue")-$d0)/($qs-$q0)")
  log "quantized readings: vitals queued $((qs - q0)) samples; bytes/sample=$QDISK"
  stop_vitals
fi

r() { calc "$1/$2"; }
printf '\n| measure | target | vitals | Prometheus agent | vmagent | vitals/agent | vitals/vmagent |\n|---|---|---|---|---|---|---|\n'
printf '| samples/s offered (vitals: the demo source, %s series every 100 ms; peers: scraping the same %s series every %s) | | %.0f | %.0f | %.0f | | |\n' \
  "$SERIES" "$NSER_TP" "$PEER_INTERVAL" "${TP_OFFERED[vitals]}" "${TP_OFFERED[prometheus-agent]}" "${TP_OFFERED[vmagent]}"
printf '| samples/s taken by the receiver | >= 500000 | %.0f | %.0f | %.0f | %.2f | %.2f |\n' \
  "${TP_RATE[vitals]}" "${TP_RATE[prometheus-agent]}" "${TP_RATE[vmagent]}" \
  "$(r "${TP_RATE[vitals]}" "${TP_RATE[prometheus-agent]}")" "$(r "${TP_RATE[vitals]}" "${TP_RATE[vmagent]}")"
printf '| CPU per sample (vitals: whole process incl. the demo source, %.2f us without remote write; peers: their own process) | <= 1 us | %.2f us | %.2f us | %.2f us | %.2f | %.2f |\n' \
  "$base_us" "${TP_CPU[vitals]}" "${TP_CPU[prometheus-agent]}" "${TP_CPU[vmagent]}" \
  "$(r "${TP_CPU[vitals]}" "${TP_CPU[prometheus-agent]}")" "$(r "${TP_CPU[vitals]}" "${TP_CPU[vmagent]}")"
printf '| load average (1 min) at the end of each throughput run | | %s | %s | %s | | |\n' "${TP_LOAD[vitals]}" "${TP_LOAD[prometheus-agent]}" "${TP_LOAD[vmagent]}"
printf '| bytes on disk per queued sample (%s series at 1 Hz, %s s outage) | <= 4 | %.2f | %.2f | %.2f | %.2f | %.2f |\n' \
  "$OSERIES" "$OUTAGE" "${DISK[vitals]}" "${DISK[prometheus-agent]}" "${DISK[vmagent]}" \
  "$(r "${DISK[vitals]}" "${DISK[prometheus-agent]}")" "$(r "${DISK[vitals]}" "${DISK[vmagent]}")"
printf '| backfill of the outage (samples produced in the window: vitals %s, agent %s, vmagent %s), each writer alone | <= 30 s for 6 M | %.1f s | %.1f s | %.1f s | %.2f | %.2f |\n' \
  "${EXPECTED[vitals]}" "${EXPECTED[prometheus-agent]}" "${EXPECTED[vmagent]}" "${BACKFILL[vitals]}" "${BACKFILL[prometheus-agent]}" "${BACKFILL[vmagent]}" \
  "$(r "${BACKFILL[vitals]}" "${BACKFILL[prometheus-agent]}")" "$(r "${BACKFILL[vitals]}" "${BACKFILL[vmagent]}")"
printf '| samples of the %s s outage window at the receiver (%s series; produced: see above, +-1 tick) | all | %s (fewest per series %s) | %s (%s) | %s (%s) | | |\n' \
  "$W" "$NSER_O" "${GOT[vitals]}" "${MINS[vitals]}" "${GOT[prometheus-agent]}" "${MINS[prometheus-agent]}" "${GOT[vmagent]}" "${MINS[vmagent]}"
printf '| vitals samples dropped (writer behind, queue full, disk) | 0 | %s | | | | |\n' "$((drops + vlost))"
printf '| load average during the outage (1, 5, 15 min) | | %s | | | | |\n' "$OUTAGE_LOAD"
printf '| bytes on disk per queued sample, fixed-resolution readings (%s series at 0.1 steps, 1 Hz, %s s outage; vitals only) | <= 4 | %s | | | | |\n' "$OSERIES" "$QOUTAGE" "$QDISK"
