#!/usr/bin/env bash
# Benchmark (not a test): webhook ingestion of transaction events with the
# fraud rule on, and log tailing.
#
#   bench/webhook.sh            # both parts
#   DURATION=20s CONNECTIONS=32 EVENTS_PER_REQUEST=10 LINES=2000000 bench/webhook.sh
#
# Prints events/s and CPU µs per event of the vitals process at saturation
# (wrk as the load generator, on the same machine), and log lines/s tailed
# and matched (a pre-written access log read from the beginning), next to
# mtail (Debian `mtail`, when installed) reading the same file with the same
# regex and metrics.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
EVENTS_PER_REQUEST=${EVENTS_PER_REQUEST:-10}
LINES=${LINES:-2000000}
TOKEN=bench-token

command -v wrk >/dev/null || { echo "bench: wrk is not installed (apt-get install wrk)" >&2; exit 1; }
cargo build --release --quiet
BIN=target/release/vitals
WORK=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# CPU time (user+system) of a process in seconds.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' "/proc/$1/stat"; }
metric() { curl -fsS "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" 'index($0, m" ")==1 || index($0, m"{")==1 { if (index($0, "'"$2"'")) { s+=$NF } } END { printf "%d\n", s }'; }
wait_ready() { for _ in $(seq 200); do curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "vitals did not start" >&2; exit 1; }

# ---------------------------------------------------------------- webhook
printf '%s' "$TOKEN" > "$WORK/token"
cat > "$WORK/webhook.toml" <<TOML
[system]
enabled = false
[store]
ingest_queue = 4096
[[sources]]
type = "webhook"
name = "payments"
idempotency_key = "id"
[sources.auth]
scheme = "bearer"
secret_file = "$WORK/token"
[[sources.metrics]]
name = "payments_events_total"
type = "counter"
labels = { status = "status" }
[[sources.metrics]]
name = "payments_amount_total"
type = "counter"
value = "amount"
labels = { currency = "currency" }
[[sources.metrics]]
name = "payments_amount_inr"
type = "histogram"
when = 'currency == "INR"'
value = "amount"
buckets = [100, 1000, 10000, 50000, 100000, 500000, 1000000]
[[sources.metrics]]
name = "payments_last_amount"
type = "gauge"
value = "amount"
labels = { merchant_class = "merchant_class" }
[[sources.rules]]
name = "potential_fraud"
when = 'amount > 100000 and currency == "INR"'
severity = "critical"
value = "amount"
labels = ["id", "merchant"]
TOML
PORT=$(free_port)
"$BIN" run --config "$WORK/webhook.toml" --web.listen-address "127.0.0.1:$PORT" --log.level warn &
PID=$!
wait_ready
before_events=$(metric vitals_webhook_events_total 'outcome="accepted"')
before_cpu=$(cpu_seconds "$PID")
start=$(date +%s.%N)
EVENTS_PER_REQUEST=$EVENTS_PER_REQUEST TOKEN=$TOKEN \
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s bench/webhook.lua \
  "http://127.0.0.1:$PORT/ingest/payments" > "$WORK/wrk.txt"
end=$(date +%s.%N)
sleep 0.5
after_cpu=$(cpu_seconds "$PID")
after_events=$(metric vitals_webhook_events_total 'outcome="accepted"')
fraud=$(metric vitals_rule_hits_total 'rule="potential_fraud"')
non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk.txt"); non2xx=${non2xx:-0}
reqs=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt")
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
events=$((after_events - before_events))
awk -v e="$events" -v s="$start" -v t="$end" -v c0="$before_cpu" -v c1="$after_cpu" \
    -v r="$reqs" -v n="$non2xx" -v f="$fraud" -v per="$EVENTS_PER_REQUEST" -v conns="$CONNECTIONS" 'BEGIN {
  secs = t - s
  printf "webhook: %d events accepted in %.1f s = %.0f events/s (%s req/s x %d events/body, %d connections), non-2xx %d\n", e, secs, e/secs, r, per, conns, n
  printf "webhook: vitals CPU %.2f s = %.2f µs/event (%.0f%% of one core); fraud rule hits %d\n", c1-c0, (c1-c0)*1e6/e, (c1-c0)*100/secs, f
}'

# ------------------------------------------------------------------ logs
python3 - "$WORK/access.log" "$LINES" <<'PY'
import sys, random
path, n = sys.argv[1], int(sys.argv[2])
random.seed(7)
methods = ["GET"] * 8 + ["POST", "PUT"]
statuses = ["200"] * 15 + ["404", "500", "301", "201", "503"]
with open(path, "w") as f:
    buf = []
    for i in range(n):
        buf.append('10.0.%d.%d - - [28/Nov/2026:03:00:00 +0000] "%s /api/v1/items/%d HTTP/1.1" %s %d "-" "bench/1.0" %.3f\n' % (
            i % 256, (i // 256) % 256, random.choice(methods), i % 1000, random.choice(statuses),
            random.randint(100, 50000), random.random() * 2))
        if len(buf) == 10000:
            f.write("".join(buf)); buf = []
    f.write("".join(buf))
PY
cat > "$WORK/logs.toml" <<TOML
[system]
enabled = false
[[sources]]
type = "logs"
name = "nginx"
paths = ["$WORK/access.log"]
start_at = "beginning"
poll_interval = "100ms"
match = '^(?P<client>\S+) \S+ \S+ \[[^\]]+\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) (?P<bytes>\d+) "[^"]*" "[^"]*" (?P<duration>[0-9.]+)$'
[[sources.metrics]]
name = "nginx_http_requests_total"
type = "counter"
labels = { method = "method", status = "status" }
[[sources.metrics]]
name = "nginx_http_response_bytes_total"
type = "counter"
value = "bytes"
[[sources.metrics]]
name = "nginx_http_request_duration_seconds"
type = "histogram"
value = "duration"
labels = { method = "method" }
TOML
PORT=$(free_port)
start=$(date +%s.%N)
"$BIN" run --config "$WORK/logs.toml" --web.listen-address "127.0.0.1:$PORT" --log.level warn &
PID=$!
wait_ready
while :; do
  done_lines=$(metric vitals_log_lines_total 'source="nginx"')
  [ "$done_lines" -ge "$LINES" ] && break
  sleep 0.05
done
end=$(date +%s.%N)
cpu=$(cpu_seconds "$PID")
matched=$(metric vitals_log_lines_total 'outcome="matched"')
awk -v n="$LINES" -v m="$matched" -v s="$start" -v t="$end" -v c="$cpu" 'BEGIN {
  secs = t - s
  printf "logs: %d lines (%d matched) in %.2f s = %.0f lines/s (including start-up); vitals CPU %.2f s = %.2f µs/line\n", n, m, secs, n/secs, c, c*1e6/n
}'
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""

# mtail, the peer for log tailing (Debian `mtail`), with the same regex and
# the same three metrics, reading the same file once from start to end
# (--one_shot) — its fastest mode, without its tailing and polling.
if command -v mtail >/dev/null; then
  mkdir -p "$WORK/mtail"
  cat > "$WORK/mtail/nginx.mtail" <<'MTAIL'
counter nginx_http_requests_total by method, status
counter nginx_http_response_bytes_total
histogram nginx_http_request_duration_seconds by method buckets 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10

/^(?P<client>\S+) \S+ \S+ \[[^\]]+\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) (?P<bytes>\d+) "[^"]*" "[^"]*" (?P<duration>[0-9.]+)$/ {
  nginx_http_requests_total[$method][$status]++
  nginx_http_response_bytes_total += $bytes
  nginx_http_request_duration_seconds[$method] = $duration
}
MTAIL
  start=$(date +%s.%N)
  mtail --one_shot --one_shot_format prometheus --progs "$WORK/mtail" --logs "$WORK/access.log" \
    --logtostderr > "$WORK/mtail.out" 2> "$WORK/mtail.err" &
  MPID=$!
  # CPU of the mtail process, sampled until it exits.
  mcpu=0
  while kill -0 "$MPID" 2>/dev/null; do
    c=$(cpu_seconds "$MPID" 2>/dev/null) && mcpu=$c
    sleep 0.05
  done
  wait "$MPID" || { tail -5 "$WORK/mtail.err" >&2; exit 1; }
  end=$(date +%s.%N)
  mmatched=$(awk '/^nginx_http_requests_total\{/ { s += $NF } END { printf "%d\n", s }' "$WORK/mtail.out")
  awk -v n="$LINES" -v m="$mmatched" -v s="$start" -v t="$end" -v c="$mcpu" 'BEGIN {
    secs = t - s
    printf "logs: mtail --one_shot: %d lines (%d matched) in %.2f s = %.0f lines/s; mtail CPU >= %.2f s = %.2f µs/line\n", n, m, secs, n/secs, c, c*1e6/n
  }'
else
  echo "logs: mtail not installed (apt-get install mtail) — no peer figure"
fi
