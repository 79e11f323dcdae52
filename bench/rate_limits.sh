#!/usr/bin/env bash
# What a rate limit, or credits (issue #33), add to a Check's latency (issue #21): one scopegate
# (release build) with its counters in a local Redis (Debian's redis-server,
# started here on a free loopback port), and one with counters in memory;
# Authorize.Check (scopes) at one in flight for SECONDS_PER_RUN s, from a key
# without limits and from a key with one limit it never reaches
# (1,000,000,000/hour), alternating ROUNDS times so a noisy host moves them
# alike. Prints each run's JSON and the median p50/p99 of each.
#   bash bench/rate_limits.sh
#   BEFORE=/other/scopegate bash bench/rate_limits.sh   # also that build's Redis row
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scopegate/target}"
rounds=${ROUNDS:-3}
seconds=${SECONDS_PER_RUN:-5}
command -v redis-server > /dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
# Apart, so the server is built as shipped (see bench/lib.sh).
cargo build --release --locked --bin scopegate
cargo build --release --locked --example loadgen
bin="$CARGO_TARGET_DIR/release/scopegate"
loadgen="$CARGO_TARGET_DIR/release/examples/loadgen"
work=$(mktemp -d)
# Servers start inside $(...): their pids go to a file, and their stdout
# away from the substitution's pipe (or it would wait for them).
cleanup() { xargs -r kill < "$work/pids" 2> /dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_for() { # file pattern
  for _ in $(seq 1 600); do grep -q "$2" "$1" 2> /dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" > /dev/null &
echo $! >> "$work/pids"
for _ in $(seq 1 100); do redis-cli -p "$port" ping 2> /dev/null | grep -q PONG && break; sleep 0.1; done

start() { # name, extra serve flags... (SERVER_BIN: another build)
  local name=$1
  shift
  "${SERVER_BIN:-$bin}" serve --http-listen none --listen 127.0.0.1:0 --metrics-listen none --data-dir "$work/$name" \
    --log-format json "$@" > /dev/null 2> "$work/$name.log" &
  echo $! >> "$work/pids"
  wait_for "$work/$name.log" "keys loaded; serving"
  grep 'scopegate listening' "$work/$name.log" | grep -o '"addr":"[^"]*"' | head -1 | cut -d'"' -f4
}

key() { # addr, name, extra create flags...
  local addr=$1 name=$2
  shift 2
  "$bin" keys create --server "http://$addr" --data-dir "$work/$name" --account bench --name load \
    --scope mail.send "$@" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}

redis_addr=$(start redis --rate-limit-redis "redis://127.0.0.1:$port/0")
memory_addr=$(start memory)
declare -A target token
target[none]=$memory_addr;   token[none]=$(key "$memory_addr" memory)
target[memory]=$memory_addr; token[memory]=$(key "$memory_addr" memory --limit default=1000000000/hour)
target[redis]=$redis_addr;   token[redis]=$(key "$redis_addr" redis --limit default=1000000000/hour)
labels="none memory redis"
# Credits (a balance it never runs out of), where the build has them.
if "$bin" keys create --help | grep -q -- --credits; then
  target[credits]=$memory_addr;       token[credits]=$(key "$memory_addr" memory --credits 1000000000000)
  target[credits_redis]=$redis_addr;  token[credits_redis]=$(key "$redis_addr" redis --credits 1000000000000)
  labels="$labels credits credits_redis"
fi
if [ -n "${BEFORE:-}" ]; then
  before_addr=$(SERVER_BIN=$BEFORE start before --rate-limit-redis "redis://127.0.0.1:$port/1")
  target[before]=$before_addr; token[before]=$(key "$before_addr" before --limit default=1000000000/hour)
  labels="$labels before"
fi

results="$work/results.jsonl"
for round in $(seq 1 "$rounds"); do
  for label in $labels; do
    "$loadgen" check --target "http://${target[$label]}" --workload scopes --token "${token[$label]}" \
      --concurrency 1 --connections 1 --duration-secs "$seconds" --warmup-secs 1 --label "$label" \
      | tee -a "$results"
  done
done

python3 - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
names = {"none": "key without limits", "memory": "one limit, counters in memory",
         "redis": "one limit, counters in Redis (loopback)",
         "before": "the same, the BEFORE build",
         "credits": "credits, in memory", "credits_redis": "credits, in Redis (loopback)"}
base = {q: statistics.median(r[q] for r in rows if r["label"] == "none") for q in ("p50_us", "p99_us")}
print("| Check from | p50 | p99 | p50 added | p99 added | req/s (1 in flight) |")
print("|---|---|---|---|---|---|")
for label in ("none", "memory", "redis", "before", "credits", "credits_redis"):
    mine = [r for r in rows if r["label"] == label]
    if not mine:
        continue
    p50 = statistics.median(r["p50_us"] for r in mine)
    p99 = statistics.median(r["p99_us"] for r in mine)
    rps = statistics.median(r["rps"] for r in mine)
    print(f"| {names[label]} | {p50} µs | {p99} µs | {p50 - base['p50_us']:+} µs | {p99 - base['p99_us']:+} µs | {rps:,.0f} |")
EOF
