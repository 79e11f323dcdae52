#!/usr/bin/env bash
# Runs every scopegate benchmark and rewrites the tables in BENCHMARKS.md.
#   bash bench/run.sh            # full run (about 9 minutes on 2 cores)
#   QUICK=1 bash bench/run.sh    # shorter runs, for a smoke test
# Figures are from one run on one machine: compare ratios within a run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scopegate/target}"
duration=${DURATION:-5}; warmup=${WARMUP:-1}; scale_keys=${SCALE_KEYS:-1000000}
if [ -n "${QUICK:-}" ]; then duration=1; warmup=0.3; scale_keys=100000; fi

# Apart, so the server is built as shipped (see bench/lib.sh).
cargo build --release --locked --bin scopegate
cargo build --release --locked --example loadgen
bin="$CARGO_TARGET_DIR/release/scopegate"
loadgen="$CARGO_TARGET_DIR/release/examples/loadgen"
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
results="$work/results.jsonl"

wait_for_log() { # file pattern
  for _ in $(seq 1 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

echo "== criterion (hot path, no network)"
if [ -z "${QUICK:-}" ]; then
  cargo bench --locked --bench hot_path -- --warm-up-time 1 --measurement-time 3 2>&1 | tee "$work/criterion.txt"
else
  cargo bench --locked --bench hot_path -- --warm-up-time 0.2 --measurement-time 0.5 2>&1 | tee "$work/criterion.txt"
fi

# Starts scopegate (on the same data dir each time) and the two bare tonic
# ceiling servers (TCP, Unix socket), under an optional command prefix (taskset).
start_servers() {
  # One worker thread when pinned to one CPU (as under a one-CPU limit), else the default.
  local workers=2
  [ "$#" -gt 0 ] && workers=1
  "$@" "$bin" serve --http-listen none --listen 127.0.0.1:0 --uds "$work/grpc.sock" --metrics-listen 127.0.0.1:0 \
    --data-dir "$work/data" --log-format json --max-keys-per-account 100000 \
    --worker-threads "$workers" 2> "$work/serve.log" &
  server_pid=$!; pids+=("$server_pid")
  rm -f "$work/ceiling.sock"
  "$@" "$loadgen" ceiling --listen 127.0.0.1:0 > "$work/ceiling.addr" &
  ceiling_pid=$!; pids+=("$ceiling_pid")
  "$@" "$loadgen" ceiling --uds "$work/ceiling.sock" > /dev/null &
  ceiling_uds_pid=$!; pids+=("$ceiling_uds_pid")
  wait_for_log "$work/serve.log" "keys loaded; serving"
  addr=$(grep 'scopegate listening' "$work/serve.log" | grep -o '"addr":"[^"]*"' | head -1 | cut -d'"' -f4)
  wait_for_log "$work/ceiling.addr" "127.0.0.1"
  ceiling_addr=$(cat "$work/ceiling.addr")
  for _ in $(seq 1 100); do [ -S "$work/ceiling.sock" ] && break; sleep 0.05; done
}

stop_servers() {
  kill "$server_pid" "$ceiling_pid" "$ceiling_uds_pid"
  wait "$server_pid" "$ceiling_pid" "$ceiling_uds_pid" 2>/dev/null || true
}

echo "== scopegate and the bare tonic ceiling servers"
start_servers
token=$("$bin" keys create --server "http://$addr" --data-dir "$work/data" --account bench \
  --name load --scope mail.send --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

# One round: both ceilings and the three scopegate workloads, TCP and Unix
# socket. Arguments: concurrency, label, and an optional command prefix for
# the load generator (taskset).
load_round() {
  local concurrency=$1 label=$2; shift 2
  local connections=$(( concurrency < 4 ? concurrency : 4 ))
  local common=(--concurrency "$concurrency" --connections "$connections" --duration-secs "$duration" --warmup-secs "$warmup" --label "$label")
  "$@" "$loadgen" check --target "http://$ceiling_addr" --workload ceiling --server-pid "$ceiling_pid" "${common[@]}" >> "$results"
  "$@" "$loadgen" check --target "unix:$work/ceiling.sock" --workload ceiling --server-pid "$ceiling_uds_pid" "${common[@]}" >> "$results"
  "$@" "$loadgen" check --target "http://$ceiling_addr" --workload ceiling-ext-authz --server-pid "$ceiling_pid" "${common[@]}" >> "$results"
  "$@" "$loadgen" check --target "unix:$work/ceiling.sock" --workload ceiling-ext-authz --server-pid "$ceiling_uds_pid" "${common[@]}" >> "$results"
  for workload in scopes http ext-authz; do
    "$@" "$loadgen" check --target "http://$addr" --workload "$workload" --token "$token" --server-pid "$server_pid" "${common[@]}" >> "$results"
    "$@" "$loadgen" check --target "unix:$work/grpc.sock" --workload "$workload" --token "$token" --server-pid "$server_pid" "${common[@]}" >> "$results"
  done
  tail -n 10 "$results"
}

echo "== load: Check and ext_authz, TCP and Unix socket, concurrency 1/16/64 (sharing both cores)"
for concurrency in 1 16 64; do
  load_round "$concurrency" ""
done

echo "== open loop: fixed arrival rates (latency from the intended send time)"
for rate in 1000 5000 20000; do
  for workload in scopes ext-authz; do
    "$loadgen" check --target "http://$addr" --workload "$workload" --token "$token" --rate "$rate" \
      --concurrency 512 --connections 4 --duration-secs "$duration" --warmup-secs "$warmup" \
      --server-pid "$server_pid" --label open | tee -a "$results"
  done
done

echo "== durable writes"
for concurrency in 1 32; do
  count=$(( concurrency == 1 ? 300 : 3000 ))
  [ -n "${QUICK:-}" ] && count=$(( count / 3 ))
  "$loadgen" writes --target "http://$addr" --admin-token-file "$work/data/admin.token" \
    --concurrency "$concurrency" --count "$count" | tee -a "$results"
done
stop_servers

# The same again with every server started on CPU 0 (so its runtime sizes
# itself to one core, as under a one-CPU container limit) and the load
# generator on CPU 1: each side has a core of its own.
if [ "$(nproc)" -ge 2 ] && command -v taskset > /dev/null; then
  echo "== load, pinned: servers on CPU 0, load generator on CPU 1"
  start_servers taskset -c 0
  for concurrency in 16 64; do
    load_round "$concurrency" pinned taskset -c 1
  done
  stop_servers
fi

echo "== footprint: idle, default flags (every default listener on), 1,000 keys"
bash bench/footprint.sh | sed 's/^{/{"workload":"footprint",/' | tee -a "$results"

echo "== scale: $scale_keys keys"
"$loadgen" gen-backup --keys "$scale_keys" --out "$work/scale.jsonl"
"$bin" restore --in "$work/scale.jsonl" --data-dir "$work/scale" > /dev/null
start_ns=$(date +%s%N)
"$bin" serve --http-listen none --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir "$work/scale" --log-format json 2> "$work/scale.log" &
pids+=($!); scale_pid=$!
wait_for_log "$work/scale.log" "keys loaded; serving"
end_ns=$(date +%s%N)
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$scale_pid/status")
load_ms=$(grep -o '"elapsed_ms":[0-9]*' "$work/scale.log" | cut -d: -f2)
threads=$(awk '/Threads/ {print $2}' "/proc/$scale_pid/status")
echo "{\"workload\":\"scale\",\"keys\":$scale_keys,\"startup_ms\":$(( (end_ns - start_ns) / 1000000 )),\"load_ms\":$load_ms,\"rss_kib\":$rss_kib,\"threads\":$threads}" | tee -a "$results"
kill "$scale_pid"

if command -v valgrind > /dev/null && [ -z "${QUICK:-}" ]; then
  echo "== instructions per request (callgrind)"
  RESULTS="$results" bash bench/instructions.sh
fi

# Kept beside the build, so a report that fails loses no run.
cp "$results" "$work/criterion.txt" "$CARGO_TARGET_DIR/" 2>/dev/null || true
python3 bench/report.py "$results" "$work/criterion.txt" BENCHMARKS.md
echo "== BENCHMARKS.md rewritten"
