#!/usr/bin/env bash
# Load test of `ncf serve` on loopback: N top-10 requests for random users (oha, from
# crates.io: `cargo install oha --locked`), then the server must still answer /health and must
# not have logged a panic. Prints oha's summary (req/s, latency percentiles, status codes).
#   usage: benches/load_test.sh MODEL [N=20000] [CONCURRENCY=8]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: benches/load_test.sh MODEL [N] [CONCURRENCY]}
n=${2:-20000}
c=${3:-8}
OHA=${OHA:-oha}
NCF=${NCF:-target/release/ncf}
log=$(mktemp)
"$NCF" serve --model "$model" --addr 127.0.0.1:0 > "$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 50); do grep -q listening "$log" && break; sleep 0.1; done
port=$(grep -o '127.0.0.1:[0-9]*' "$log" | head -1 | cut -d: -f2)
echo "load test: $n requests, $c at a time, GET /users/<random id>/recommendations?k=10 on port $port"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; commit $(git rev-parse --short HEAD)"
"$OHA" -n "$n" -c "$c" --no-tui --rand-regex-url "http://127.0.0.1:$port/users/[1-9][0-9]{0,2}/recommendations\?k=10"
curl -sf "http://127.0.0.1:$port/health" > /dev/null && echo "after the load: /health answers"
if grep -qi panic "$log"; then echo "the server logged a panic:"; cat "$log"; exit 1; fi
echo "server log: no panic"
