#!/usr/bin/env bash
# Where a decision's instructions go (issue #38): the bare tonic server and
# scopegate (default flags) under callgrind answer the same N requests, one in
# flight; each function's own (exclusive) count, idle subtracted, is summed
# by layer (the crate or library its symbol belongs to, see breakdown.py) and
# divided by N. Prints a Markdown table: per layer, bare, scopegate, the
# difference; then scopegate's own functions with the most inclusive cost.
#   bash bench/breakdown.sh                    # Authorize.Check, 2,000 requests
#   WORKLOAD=ext-authz-allowed bash bench/breakdown.sh
#   SCOPEGATE_BIN=/other/scopegate SERVE_ARGS="--usage off" bash bench/breakdown.sh
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${REQUESTS:-2000}
workload=${WORKLOAD:-scopes}
command -v valgrind > /dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
source bench/lib.sh
drive() { # target workload count
  "$loadgen" check --target "$1" --workload "$2" --token "${token:-}" --concurrency 1 \
    --connections 1 --requests "$3" > /dev/null
}
# profile <name> <target> <workload>: run.cg and idle.cg of N requests, then as long idle.
profile() {
  drive "$2" "$3" 200
  callgrind_control -z "$pid" > /dev/null
  local started ended
  started=$(date +%s.%N)
  drive "$2" "$3" "$requests"
  callgrind_control -d "$pid" > /dev/null; sleep 0.5
  ended=$(date +%s.%N)
  mv "$(ls -t "$work/$1.cg".* | head -1)" "$work/$1.run"
  callgrind_control -z "$pid" > /dev/null
  sleep "$(python3 -c "print($ended - $started)")"
  callgrind_control -d "$pid" > /dev/null; sleep 0.5
  mv "$(ls -t "$work/$1.cg".* | head -1)" "$work/$1.idle"
  kill "$pid"; wait "$pid" 2> /dev/null || true; pid=""
}

case $workload in
  scopes | http) bare=ceiling ;;
  *) bare=ceiling-$workload ;;
esac
valgrind --tool=callgrind --callgrind-out-file="$work/bare.cg" \
  "$loadgen" ceiling --listen 127.0.0.1:0 > "$work/bare.addr" 2> /dev/null &
pid=$!
wait_for "$work/bare.addr" "127.0.0.1"
profile bare "http://$(cat "$work/bare.addr")" "$bare"

token=$(bench_token)
read -r -a serve_args <<< "${SERVE_ARGS:-}"
valgrind --tool=callgrind --callgrind-out-file="$work/scopegate.cg" \
  "$bin" serve --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir "$work/data" \
  --log-format json "${serve_args[@]}" 2> "$work/serve.log" &
pid=$!
wait_for "$work/serve.log" "keys loaded; serving"
addr=$(grep 'scopegate listening' "$work/serve.log" | grep -o '"addr":"[^"]*"' | head -1 | cut -d'"' -f4)
profile scopegate "http://$addr" "$workload"

for name in bare scopegate; do
  for part in run idle; do
    callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$work/$name.$part" > "$work/$name.$part.incl.txt"
  done
done
[ -n "${KEEP:-}" ] && cp "$work"/*.run "$work"/*.idle "$work"/*.txt "$KEEP"/
python3 bench/breakdown.py "$work" "$requests" "$workload"
