#!/usr/bin/env bash
# Poll overhead of the `sql` and `http` sources, side by side in one run:
#   - vitals with no source at all (baseline),
#   - vitals with one `sql` source: one PostgreSQL query returning ROWS rows
#     (2 label columns, 2 value columns) every second,
#   - Debian's prometheus-sql-exporter running the same query every second
#     against the same PostgreSQL cluster,
#   - vitals with one `http` source: a JSON document of ROWS array elements
#     (2 labels, 2 values each) fetched from a local server every second.
# Each process is scraped once a second. Prints CPU ms per poll (above the
# idle baseline for vitals), CPU % of one core and peak RSS.
#
#   bench/bizpoll.sh [SECONDS] [ROWS]      (defaults 60 and 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-60}"
ROWS="${2:-1000}"
need() { command -v "$1" >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null; }
missing=()
need prometheus-sql-exporter || missing+=(prometheus-sql-exporter)
need initdb || missing+=(postgresql)
need curl || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq
  env RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cargo build --release --quiet
VITALS=$PWD/target/release/vitals
TMP=$(mktemp -d /tmp/vitals-bizpoll-XXXXXX)
chown postgres:postgres "$TMP"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$TMP/pg" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPORT=$(port)
runuser -u postgres -- "$PGBIN/initdb" -A trust -U postgres --no-sync -D "$TMP/pg" >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$TMP/pg" -l "$TMP/pg.log" -w \
  -o "-p $PGPORT -k $TMP -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
MERCHANTS=$(( (ROWS + 4) / 5 ))
"$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -c "
  CREATE TABLE orders AS
    SELECT (ARRAY['ok','failed','refunded','pending','disputed'])[1 + i % 5] AS status,
           'm-' || (i / 5) % $MERCHANTS AS merchant,
           (i % 997)::numeric(12,2) AS amount
    FROM generate_series(0, $((ROWS * 20 - 1))) AS i;
  ANALYZE orders;"
QUERY="SELECT status, merchant, count(*)::float8 AS orders, sum(amount)::float8 AS amount FROM orders GROUP BY status, merchant"
DSN="postgres://postgres@127.0.0.1:$PGPORT/postgres"

# The JSON document for the http source.
mkdir -p "$TMP/www"
python3 - "$ROWS" > "$TMP/www/stats.json" <<'PY'
import json, sys
n = int(sys.argv[1])
print(json.dumps({"service": "shop", "servers": [
    {"name": f"s-{i}", "zone": f"z-{i % 7}", "load": i * 0.01, "requests": i * 10} for i in range(n)]}))
PY
WWWPORT=$(port)
python3 -m http.server "$WWWPORT" --bind 127.0.0.1 --directory "$TMP/www" >/dev/null 2>&1 &
PIDS+=($!)

cat > "$TMP/idle.toml" <<EOF
[system]
enabled = false
EOF
cat > "$TMP/sql.toml" <<EOF
[system]
enabled = false
[[sources]]
type = "sql"
name = "shop"
dsn = "$DSN"
interval = "1s"
[[sources.queries]]
name = "orders"
sql = "$QUERY"
labels = ["status", "merchant"]
[[sources.queries.metrics]]
name = "shop_orders"
column = "orders"
[[sources.queries.metrics]]
name = "shop_order_amount"
column = "amount"
EOF
cat > "$TMP/http.toml" <<EOF
[system]
enabled = false
[[sources]]
type = "http"
name = "api"
url = "http://127.0.0.1:$WWWPORT/stats.json"
interval = "1s"
max_response_bytes = 67108864
[[sources.mappings]]
each = "servers"
labels = { server = "name", zone = "zone" }
max_payload_bytes = 67108864
[[sources.mappings.metrics]]
name = "api_server_load"
path = "load"
[[sources.mappings.metrics]]
name = "api_server_requests_total"
path = "requests"
kind = "counter"
EOF
cat > "$TMP/sql_exporter.yml" <<EOF
jobs:
- name: shop
  interval: '1s'
  connections:
  - '$DSN?sslmode=disable'
  queries:
  - name: orders
    help: Orders by status and merchant.
    labels: [status, merchant]
    values: [orders, amount]
    query: |
      $QUERY
EOF

IDLE=$(port); SQLV=$(port); SQLE=$(port); HTTPV=$(port)
"$VITALS" run --config "$TMP/idle.toml" --web.listen-address "127.0.0.1:$IDLE" --log.level warn & PIDS+=($!); P_IDLE=$!
"$VITALS" run --config "$TMP/sql.toml" --web.listen-address "127.0.0.1:$SQLV" --log.level warn & PIDS+=($!); P_SQLV=$!
GOMAXPROCS=2 prometheus-sql-exporter -config.file "$TMP/sql_exporter.yml" -web.listen-address "127.0.0.1:$SQLE" >/dev/null 2>&1 & PIDS+=($!); P_SQLE=$!
"$VITALS" run --config "$TMP/http.toml" --web.listen-address "127.0.0.1:$HTTPV" --log.level warn & PIDS+=($!); P_HTTPV=$!
sleep 5

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)
declare -A C0
for p in $P_IDLE $P_SQLV $P_SQLE $P_HTTPV; do C0[$p]=$(cpu_ticks "$p"); done
for _ in $(seq "$DURATION"); do
  for pt in $IDLE $SQLV $SQLE $HTTPV; do curl -s -o /dev/null "http://127.0.0.1:$pt/metrics"; done
  sleep 1
done
declare -A CPU RSS
for p in $P_IDLE $P_SQLV $P_SQLE $P_HTTPV; do
  CPU[$p]=$(( $(cpu_ticks "$p") - ${C0[$p]} )); RSS[$p]=$(hwm_kib "$p")
done
series() { curl -s "http://127.0.0.1:$1/metrics" | grep -c "^$2" || true; }
python3 - "$DURATION" "$HZ" "$ROWS" \
  "${CPU[$P_IDLE]}" "${CPU[$P_SQLV]}" "${CPU[$P_SQLE]}" "${CPU[$P_HTTPV]}" \
  "${RSS[$P_IDLE]}" "${RSS[$P_SQLV]}" "${RSS[$P_SQLE]}" "${RSS[$P_HTTPV]}" \
  "$(series "$SQLV" shop_order)" "$(series "$SQLE" 'sql_orders{')" "$(series "$HTTPV" api_server_)" <<'PY'
import sys
d, hz, rows = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
ci, cs, ce, ch = (int(x) / hz for x in sys.argv[4:8])
ri, rs, re_, rh = (int(x) / 1024 for x in sys.argv[8:12])
ns, ne, nh = sys.argv[12:15]
polls = d  # one poll per second each
print(f"duration {d:.0f} s, one poll per second, {rows} rows / array elements per poll, scraped every second")
print(f"{'':34}{'CPU ms/poll':>12}{'CPU %':>8}{'peak RSS MiB':>14}{'series':>8}")
print(f"{'vitals, no source (baseline)':34}{'':>12}{100*ci/d:8.2f}{ri:14.1f}{'':>8}")
print(f"{'vitals sql (above baseline)':34}{1000*(cs-ci)/polls:12.2f}{100*cs/d:8.2f}{rs:14.1f}{ns:>8}")
print(f"{'prometheus-sql-exporter':34}{1000*ce/polls:12.2f}{100*ce/d:8.2f}{re_:14.1f}{ne:>8}")
print(f"{'vitals http JSON (above baseline)':34}{1000*(ch-ci)/polls:12.2f}{100*ch/d:8.2f}{rh:14.1f}{nh:>8}")
if ce > 0:
    print(f"sql poll CPU ratio vitals/sql_exporter (vitals above baseline): {(cs-ci)/ce:.2f}")
PY
