#!/usr/bin/env bash
# Relay benchmark (not a test): webhook notifications accepted per second
# with fsync'd persistence, accept latency percentiles, and end-to-end
# delivery rate into a local SMTP server (aiosmtpd, plain SMTP).
#
# usage: bench/relay.sh [TOTAL=20000] [CONCURRENCY=32]
# Needs python3-aiosmtpd (scripts/test installs it). Builds in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL="${1:-20000}"
CONC="${2:-32}"
TOKEN=bench-token

cargo build --release --quiet --bin vitals --example relay_load
BIN=target/release/vitals
LOAD=target/release/examples/relay_load

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SMTP_PORT="$(port)"
RELAY_PORT="$(port)"

SMTP_NO_FSYNC=1 /usr/bin/python3 tests/support/smtp_server.py "$SMTP_PORT" "$work/mail" plain >/dev/null &
pids+=($!)

cat >"$work/relay.toml" <<TOML
[relay]
data_dir = "$work/data"
max_body_bytes = 65536
[relay.retry]
initial_backoff = "100ms"
max_backoff = "2s"
[[relay.receivers]]
name = "bench"
auth = { type = "bearer", token = "env:BENCH_TOKEN" }
channels = ["mail"]
[[relay.channels]]
name = "mail"
type = "email"
to = ["ops@example.com"]
from = "relay <relay@example.com>"
smtp = { host = "127.0.0.1", port = $SMTP_PORT, tls = "none" }
TOML

BENCH_TOKEN="$TOKEN" "$BIN" relay --config "$work/relay.toml" \
  --web.listen-address "127.0.0.1:$RELAY_PORT" --log.level warn &
pids+=($!)
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$RELAY_PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

echo "relay bench: $TOTAL notifications, $CONC connections, fsync'd redb outbox, $(nproc) cores"
start_ns=$(date +%s%N)
"$LOAD" "127.0.0.1:$RELAY_PORT" "$TOKEN" "$TOTAL" "$CONC"

metric() { curl -fs "http://127.0.0.1:$RELAY_PORT/metrics" | awk -v m="$1" '$1 ~ "^"m {s+=$2} END {print s+0}'; }
while true; do
  delivered="$(metric 'vitals_relay_notifications_delivered_total')"
  [ "${delivered%.*}" -ge "$TOTAL" ] && break
  sleep 0.5; [ -n "${BENCH_VERBOSE:-}" ] && echo "delivered so far: $delivered" >&2
done
end_ns=$(date +%s%N)
mails=$(wc -l <"$work/mail/mails.jsonl")
secs=$(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN {printf "%.2f", (b-a)/1e9}')
rate=$(awk -v n="$TOTAL" -v s="$secs" 'BEGIN {printf "%.0f", n/s}')
echo "end-to-end: delivered=$delivered mails_stored=$mails seconds=$secs delivery_rate_per_s=$rate"
