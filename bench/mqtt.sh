#!/usr/bin/env bash
# MQTT ingest benchmark, one run, one machine, one Mosquitto broker:
#   1. broker limit: messages/s a bare subscriber (bench/mqtt_load.rs) gets
#      when a publisher floods small JSON payloads from 1,000 devices;
#   2. vitals ingesting the same stream at 90% of that rate: messages/s
#      processed, messages lost, CPU µs per message, RSS;
#   3. mqtt2prometheus (Debian prometheus-mqtt-exporter), same mapping, same rate;
#   4. /metrics latency (median) and CPU per scrape with 1,000 and 10,000
#      devices (3 metrics each) for both, and vitals' memory per series.
# Prints a Markdown table and the ratios vitals/peer and vitals/broker limit.
#
#   bench/mqtt.sh [SECONDS_PER_PHASE]     (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"
for pkg in mosquitto:mosquitto prometheus-mqtt-exporter:prometheus-mqtt-exporter curl:curl; do
  cmd=${pkg%%:*}
  if ! command -v "$cmd" >/dev/null && [ ! -x "/usr/sbin/$cmd" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkg##*:}" >/dev/null
  fi
done
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
M2P=$(command -v prometheus-mqtt-exporter)
cargo build --release --quiet --bin vitals --example mqtt-load
VITALS=target/release/vitals
LOAD=target/release/examples/mqtt-load
OUT=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
wait_http() { for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

BPORT=$(free_port)
cat > "$OUT/mosquitto.conf" <<EOF
user root
listener $BPORT 127.0.0.1
allow_anonymous true
persistence false
log_type error
max_queued_messages 0
EOF
"$MOSQUITTO" -c "$OUT/mosquitto.conf" & PIDS+=($!)
sleep 0.5

# vitals and mqtt2prometheus with the same mapping.
VPORT=$(free_port)
cat > "$OUT/vitals.toml" <<EOF
[system]
enabled = false
[[sources]]
type = "mqtt"
name = "bench"
host = "127.0.0.1"
port = $BPORT
[[sources.subscriptions]]
name = "state"
topic = "sensors/+sensor/state"
[sources.subscriptions.mapping]
[[sources.subscriptions.mapping.metrics]]
name = "sensor_temperature_celsius"
path = "temperature"
[[sources.subscriptions.mapping.metrics]]
name = "sensor_humidity_percent"
path = "humidity"
[[sources.subscriptions.mapping.metrics]]
name = "sensor_battery_volts"
path = "battery"
EOF
MPORT=$(free_port)
cat > "$OUT/m2p.yaml" <<EOF
mqtt:
  server: tcp://127.0.0.1:$BPORT
  client_id: m2p-bench
  topic_path: sensors/+/state
  device_id_regex: "sensors/(?P<deviceid>[^/]+)/state"
  qos: 0
cache:
  timeout: 24h
metrics:
  - prom_name: sensor_temperature_celsius
    mqtt_name: temperature
    help: Temperature.
    type: gauge
  - prom_name: sensor_humidity_percent
    mqtt_name: humidity
    help: Humidity.
    type: gauge
  - prom_name: sensor_battery_volts
    mqtt_name: battery
    help: Battery.
    type: gauge
EOF
start_vitals() { "$VITALS" run --config "$OUT/vitals.toml" --web.listen-address "127.0.0.1:$VPORT" --log.level warn >/dev/null & VPID=$!; PIDS+=($VPID); wait_http "http://127.0.0.1:$VPORT/readyz"; sleep 0.5; }
start_m2p() { "$M2P" -config "$OUT/m2p.yaml" -listen-address 127.0.0.1 -listen-port "$MPORT" -log-level error >/dev/null 2>&1 & MPID=$!; PIDS+=($MPID); wait_http "http://127.0.0.1:$MPORT/metrics"; sleep 0.5; }
vitals_msgs() { curl -s "http://127.0.0.1:$VPORT/metrics" | awk '/^vitals_mqtt_messages_total\{/ {s+=$2} END {printf "%d", s}'; }
m2p_msgs() { curl -s "http://127.0.0.1:$MPORT/metrics" | awk '/^received_messages\{/ && /status="success"/ {s+=$2} END {printf "%d", s}'; }
# Wait until a counter stops moving (the consumer drained its backlog).
# Prints "count seconds-since-epoch-of-the-last-change".
settle() { local last=-1 now changed; changed=$(date +%s.%N); for _ in $(seq 120); do now=$($1); [ "$now" = "$last" ] && break; [ "$now" != "$last" ] && changed=$(date +%s.%N); last=$now; sleep 0.5; done; echo "$last $changed"; }
vitals_ingested() { curl -s "http://127.0.0.1:$VPORT/metrics" | awk '/^vitals_samples_ingested_total\{source="bench"\}/ {print $2}'; }
vitals_produced() { curl -s "http://127.0.0.1:$VPORT/metrics" | awk '/^vitals_mqtt_samples_total\{/ {s+=$2} END {printf "%d", s}'; }

echo "phase 1: broker limit (bare subscriber, publisher flooding for ${SECS}s)" >&2
"$LOAD" sub "$BPORT" 'sensors/+/state' $((SECS + 3)) > "$OUT/sub.txt" 2>/dev/null & SUBPID=$!
sleep 0.5
"$LOAD" pub "$BPORT" 1000 0 "$SECS" 2 > "$OUT/flood.txt"
wait $SUBPID
LIMIT=$(sed 's/.*rate=//' "$OUT/sub.txt")
RATE=$((LIMIT * 9 / 10))
echo "  $(cat "$OUT/sub.txt") (publisher: $(cat "$OUT/flood.txt"))" >&2

ingest() { # name start-fn count-fn pid-var rate -> "rate lost us_per_msg rss_mib caught_up_s"
  local name=$1 rate=$5
  echo "phase: $name at ${rate:-flood} msg/s for ${SECS}s" >&2
  $2
  local pid=${!4}
  local c0 t0 sent c1 t1 rss start settled
  c0=$($3); t0=$(cpu_ticks "$pid"); start=$(date +%s.%N)
  sent=$("$LOAD" pub "$BPORT" 1000 "${rate:-0}" "$SECS" 2 | sed 's/sent=\([0-9]*\).*/\1/')
  settled=$(settle "$3"); t1=$(cpu_ticks "$pid"); rss=$(rss_kib "$pid")
  if [ "$name" = vitals ]; then
    echo "  vitals samples produced $(vitals_produced), stored $(vitals_ingested)" >&2
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c "
c1, changed = '$settled'.split()
got=int(c1)-$c0; sent=$sent
took=max($SECS, float(changed)-$start)
print(f'{got/took:.0f} {sent-got} {($t1-$t0)/$HZ*1e6/max(got,1):.2f} {$rss/1024:.1f} {took:.1f}')"
}
V=$(ingest vitals start_vitals vitals_msgs VPID "$RATE")
M=$(ingest mqtt2prometheus start_m2p m2p_msgs MPID "$RATE")
VF=$(ingest vitals start_vitals vitals_msgs VPID "")

echo "phase 4: /metrics with 1,000 and 10,000 devices" >&2
start_vitals; start_m2p
VRSS0=$(rss_kib "$VPID")
scrape() { # url pid -> "median_ms cpu_ms_per_scrape bytes"
  local n=30 t0 t1
  t0=$(cpu_ticks "$2")
  for _ in $(seq $n); do curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "$1"; done > "$OUT/lat"
  t1=$(cpu_ticks "$2")
  sort -n "$OUT/lat" | awk -v c=$(( (t1 - t0) )) -v hz="$HZ" -v n=$n '{a[NR]=$1; b=$2} END {printf "%.1f %.1f %d", a[int((NR+1)/2)]*1000, c/hz*1000/n, b}'
}
declare -A S
for devices in 1000 10000; do
  "$LOAD" pub "$BPORT" "$devices" 0 0 3 >/dev/null
  want=$((devices * 3))
  for _ in $(seq 60); do
    vs=$(curl -s "http://127.0.0.1:$VPORT/metrics" | grep -c '^sensor_' || true)
    ms=$(curl -s "http://127.0.0.1:$MPORT/metrics" | grep -c '^sensor_' || true)
    [ "$vs" -ge "$want" ] && [ "$ms" -ge "$want" ] && break
    sleep 1
  done
  [ "$devices" = 10000 ] && VRSS1=$(rss_kib "$VPID") && VSERIES=$vs
  S[v$devices]=$(scrape "http://127.0.0.1:$VPORT/metrics" "$VPID")
  S[m$devices]=$(scrape "http://127.0.0.1:$MPORT/metrics" "$MPID")
  echo "  $devices devices: vitals ${S[v$devices]} / mqtt2prometheus ${S[m$devices]} (median ms, CPU ms per scrape, bytes)" >&2
done

SECS=$SECS python3 - "$LIMIT" "$RATE" "$V" "$M" "$VF" "${S[v1000]}" "${S[m1000]}" "${S[v10000]}" "${S[m10000]}" "$VRSS0" "$VRSS1" "$VSERIES" <<'PY'
import sys, os
SECS_ = os.environ.get("SECS", "10")
limit, rate = int(sys.argv[1]), int(sys.argv[2])
v = sys.argv[3].split(); m = sys.argv[4].split(); vf = sys.argv[5].split()
v1, m1, v10, m10 = (s.split() for s in sys.argv[6:10])
rss0, rss1, series = int(sys.argv[10]), int(sys.argv[11]), int(sys.argv[12])
f = float
def ratio(a, b): return f"{f(a)/f(b):.2f}" if f(b) else "n/a"
print(f"| measure | vitals | mqtt2prometheus | vitals/peer |")
print(f"|---|---|---|---|")
print(f"| broker limit (bare subscriber, flood) | {limit} msg/s | | |")
print(f"| ingest at 90% of limit ({rate} msg/s offered): processed | {v[0]} msg/s | {m[0]} msg/s | {ratio(v[0], m[0])} |")
print(f"| messages lost (sent − processed) | {v[1]} | {m[1]} | |")
print(f"| time to process the {SECS_}s stream | {v[4]} s | {m[4]} s | |")
print(f"| CPU per message | {v[2]} µs | {m[2]} µs | {ratio(v[2], m[2])} |")
print(f"| RSS after ingest | {v[3]} MiB | {m[3]} MiB | {ratio(v[3], m[3])} |")
print(f"| /metrics 1,000 devices: median latency | {v1[0]} ms | {m1[0]} ms | {ratio(v1[0], m1[0])} |")
print(f"| /metrics 1,000 devices: CPU per scrape | {v1[1]} ms | {m1[1]} ms | {ratio(v1[1], m1[1])} |")
print(f"| /metrics 10,000 devices: median latency | {v10[0]} ms | {m10[0]} ms | {ratio(v10[0], m10[0])} |")
print(f"| /metrics 10,000 devices: CPU per scrape | {v10[1]} ms | {m10[1]} ms | {ratio(v10[1], m10[1])} |")
print(f"| /metrics 10,000 devices: size | {int(v10[2])/1e6:.2f} MB | {int(m10[2])/1e6:.2f} MB | |")
print()
print(f"vitals/broker limit: {f(v[0])/limit:.2f} at 90% offered; flooded like the bare subscriber: {vf[0]} msg/s = {f(vf[0])/limit:.2f} of the limit, {vf[2]} µs CPU/msg, {vf[1]} lost")
print(f"vitals memory per series (10,000 devices, {series} series): {(rss1-rss0)*1024/max(series,1):.0f} bytes")
PY
