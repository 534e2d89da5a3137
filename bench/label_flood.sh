#!/bin/bash
# Usage: bench/label_flood.sh <vitals binary>  — RSS before/after 300 MQTT messages with
# distinct 200,000-character label values (issue 15 item 2).
set -e
BIN=$1
D=$(mktemp -d)
MP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
WP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
printf "listener $MP 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n" > $D/m.conf
mosquitto -c $D/m.conf > $D/m.log 2>&1 & MPID=$!
cat > $D/v.toml <<CFG
[web]
listen_address = "127.0.0.1:$WP"
[system]
enabled = false
[[sources]]
type = "mqtt"
name = "flood"
host = "127.0.0.1"
port = $MP
[[sources.subscriptions]]
name = "ids"
topic = "sensors/+id/state"
[sources.subscriptions.mapping]
labels = { serial = "serial" }
[[sources.subscriptions.mapping.metrics]]
name = "flood_value"
path = "v"
CFG
$BIN run --config $D/v.toml > $D/v.log 2>&1 & VPID=$!
for i in $(seq 100); do curl -sf 127.0.0.1:$WP/metrics 2>/dev/null | grep -q 'vitals_mqtt_subscribed{source="flood"} 1' && break; sleep 0.2; done
sleep 1
rss() { awk '/VmRSS/{printf "%.1f MiB", $2/1024}' /proc/$VPID/status; }
echo "RSS before: $(rss)"
python3 "$(dirname "$0")/label_flood_pub.py" $MP 300 200000
for i in $(seq 300); do n=$(curl -sf 127.0.0.1:$WP/metrics | grep '^vitals_mqtt_messages_total{' | grep 'subscription="ids"' | awk '{print $2}'); [ "$n" = "300" ] && break; sleep 0.2; done
sleep 2
echo "messages counted: $n"
echo "RSS after: $(rss)"
echo "scrape bytes: $(curl -sf 127.0.0.1:$WP/metrics | wc -c)"
curl -sf 127.0.0.1:$WP/metrics | grep -E '^vitals_samples_dropped_total|^vitals_store_(series|label_bytes)' || true
kill $VPID $MPID; wait $VPID $MPID 2>/dev/null || true
rm -rf $D
