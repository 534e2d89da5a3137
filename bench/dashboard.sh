#!/usr/bin/env bash
# Dashboard benchmark: sample→drawn latency in a real browser and the CPU
# cost of connected dashboards, against one vitals with ~1,000 active series
# (the demo source: 10 lines × 25 devices × 4 sensor series + business).
#
#   bench/dashboard.sh            # defaults: 20 clients, 30 s per phase
#   CLIENTS=20 SECONDS_PER_PHASE=60 bench/dashboard.sh
#
# Targets (issue 8): latency p95 ≤ 300 ms; 20 dashboards add ≤ 5% of a core.
# CPU is vitals' own utime+stime from /proc/PID/stat over each phase:
#   idle     – 1,000 series, no dashboard connected
#   clients  – the same with CLIENTS WebSocket dashboards reading everything
# The latency phase runs one headless Chromium on the Sensors view; the page
# measures, per drawn series, now − the sample's source timestamp.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS="${CLIENTS:-20}"
SECS="${SECONDS_PER_PHASE:-30}"

cargo build --release --quiet --bin vitals --example dashboard-bench
BIN=target/release/vitals
CLIENT=target/release/examples/dashboard-bench

dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/vitals.toml" <<TOML
[[sources]]
type = "demo"
name = "bench"
lines = 10
devices_per_line = 25
anomaly_every = "10s"
silent_device = false
TOML
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr="127.0.0.1:$port"
"$BIN" run --config "$dir/vitals.toml" --web.listen-address "$addr" --log.level warn &
pid=$!
for _ in $(seq 100); do curl -fs "http://$addr/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 3
series=$(curl -fs "http://$addr/metrics" | awk '/^vitals_store_series /{print $2}')
echo "vitals pid $pid on $addr, $series series in the store"

ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
cpu_phase() { # $1 = label; runs "${@:2}" for SECS seconds and prints vitals' CPU share
  local t0 t1 w0 w1
  t0=$(ticks); w0=$(date +%s.%N)
  "${@:2}"
  t1=$(ticks); w1=$(date +%s.%N)
  python3 -c "print('cpu $1: %.2f%% of one core' % (100.0 * ($t1 - $t0) / $hz / ($w1 - $w0)))"
}

cpu_phase idle sleep "$SECS"
cpu_phase "clients=$CLIENTS" "$CLIENT" clients "$addr" "$CLIENTS" "$SECS"
"$CLIENT" latency "$addr" "$SECS"
