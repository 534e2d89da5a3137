#!/bin/sh
# Demo generator for the vitals compose stack: a small plant and a payment
# system. Runs in the eclipse-mosquitto image (busybox sh, awk, wget and
# mosquitto_pub); see docker-compose.yml, service `demo`.
#
# Every TICK seconds, for lines L1, L2 with devices oven-1, press-1, pump-1:
#   MQTT factory/<line>/<device>/telemetry
#   {"temperature": 62.4, "pressure_kpa": 101.3, "humidity_pct": 41.0, "vibration_mm_s": 2.1}
# and one to three transactions POSTed to the vitals webhook:
#   {"id": "t-...", "amount": 2499, "currency": "INR", "merchant": "m-3", "status": "ok"}
#
# So that every dashboard and alert has something to show:
#   - every ANOMALY_EVERY seconds, L1/oven-1 overheats (up to ~97 °C) for
#     about a minute: SensorAnomaly and TemperatureOutOfRange fire, then resolve;
#   - every SILENT_EVERY seconds, L2/pump-1 stops reporting for two
#     minutes: SensorSilent fires, then resolves;
#   - every FRAUD_EVERY seconds, one transaction over ₹1,00,000 and a burst
#     of failed ones: SuspectedFraud fires.
set -u

MQTT_HOST="${MQTT_HOST:-mosquitto}"
MQTT_PORT="${MQTT_PORT:-1883}"
WEBHOOK_URL="${WEBHOOK_URL:-http://vitals:9797/ingest/payments}"
TICK="${TICK:-2}"
ANOMALY_EVERY="${ANOMALY_EVERY:-300}"
SILENT_EVERY="${SILENT_EVERY:-900}"
FRAUD_EVERY="${FRAUD_EVERY:-240}"

echo "demo: publishing to mqtt://$MQTT_HOST:$MQTT_PORT and $WEBHOOK_URL every ${TICK}s"

start=$(date +%s)
n=0
while :; do
  now=$(date +%s)
  t=$((now - start))
  n=$((n + 1))
  # One awk run per tick prints "topic<TAB>payload" lines for the sensors,
  # then "POST<TAB>json" lines for the transactions.
  awk -v t="$t" -v n="$n" -v seed="$now$n" \
      -v anomaly_every="$ANOMALY_EVERY" -v silent_every="$SILENT_EVERY" \
      -v fraud_every="$FRAUD_EVERY" -v tick="$TICK" '
    function noise(s) { return (rand() + rand() + rand() - 1.5) * s }
    BEGIN {
      srand(seed)
      split("L1 L2", lines, " ")
      split("oven-1 press-1 pump-1", devs, " ")
      base["oven-1"] = 62; base["press-1"] = 41; base["pump-1"] = 35
      pi = 3.14159265
      for (li = 1; li <= 2; li++) for (di = 1; di <= 3; di++) {
        line = lines[li]; dev = devs[di]
        # pump-1 of L2 goes silent for 2 minutes in every silent_every.
        if (line == "L2" && dev == "pump-1" && (t % silent_every) >= silent_every - 120) continue
        phase = li * 1.3 + di * 0.7
        temp = base[dev] + 3 * sin(2 * pi * t / 600 + phase) + noise(0.4)
        # L1/oven-1 overheats for ~60 s in every anomaly_every.
        if (line == "L1" && dev == "oven-1") {
          k = t % anomaly_every
          if (k >= anomaly_every - 60) temp = 93 + 4 * sin(pi * (k - anomaly_every + 60) / 60) + noise(0.5)
        }
        press = 101.3 + 2 * sin(2 * pi * t / 900 + phase) + noise(0.2) + (dev == "press-1" ? 180 : 0)
        hum = 42 + 6 * sin(2 * pi * t / 1800 + phase) + noise(0.8)
        vib = (dev == "pump-1" ? 4.5 : 1.8) + 0.3 * sin(2 * pi * t / 120 + phase) + noise(0.15)
        if (vib < 0) vib = 0
        printf "factory/%s/%s/telemetry\t{\"temperature\": %.2f, \"pressure_kpa\": %.2f, \"humidity_pct\": %.1f, \"vibration_mm_s\": %.3f}\n", line, dev, temp, press, hum, vib
      }
      split("m-1 m-2 m-3 m-4 m-5", merchants, " ")
      count = 1 + int(rand() * 3)
      fraud = (t % fraud_every) < tick
      for (i = 1; i <= count + (fraud ? 4 : 0); i++) {
        amount = int(200 + rand() * rand() * 20000)
        status = rand() < 0.03 ? "failed" : "ok"
        merchant = merchants[1 + int(rand() * 5)]
        if (fraud && i == 1) { amount = 125000 + int(rand() * 100000); merchant = "m-9" }
        else if (fraud) status = "failed"
        printf "POST\t{\"id\": \"t-%d-%d-%d\", \"amount\": %d, \"currency\": \"INR\", \"merchant\": \"%s\", \"status\": \"%s\"}\n", seed, n, i, amount, merchant, status
      }
    }' | while IFS="$(printf '\t')" read -r target payload; do
    if [ "$target" = "POST" ]; then
      wget -q -O /dev/null --header "Content-Type: application/json" --post-data "$payload" "$WEBHOOK_URL" \
        || echo "demo: webhook POST failed (vitals not up yet?)"
    else
      mosquitto_pub -h "$MQTT_HOST" -p "$MQTT_PORT" -q 1 -t "$target" -m "$payload" \
        || echo "demo: MQTT publish failed (broker not up yet?)"
    fi
  done
  sleep "$TICK"
done
