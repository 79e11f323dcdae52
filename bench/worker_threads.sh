#!/usr/bin/env bash
# The --worker-threads default under a one-CPU limit (issue #17): servers
# pinned to CPU 0 with taskset (as a 1-CPU container), the load generator on
# CPU 1, Authorize.Check over TCP at CONCURRENCY in flight. Rounds alternate
# the bare tonic ceiling, scopegate with 1 worker, with 2 workers and with
# the default (no flag), ROUNDS times, so a noisy host moves them alike;
# prints each run's JSON and the median req/s of each as a ratio to the
# ceiling's.
#   bash bench/worker_threads.sh
#   SERVERS="ceiling default before" BEFORE_BIN=/old/scopegate bash bench/worker_threads.sh
#                     # the ceiling, this build and another, default flags (issue #38)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
concurrency=${CONCURRENCY:-64}
seconds=${SECONDS_PER_RUN:-5}
command -v taskset > /dev/null || { echo "needs taskset (util-linux)" >&2; exit 1; }
source bench/lib.sh
token=$(bench_token) # a key to check with, made once

run() { # label, server command...
  local label=$1; shift
  : > "$work/out"
  taskset -c 0 "$@" > "$work/out" 2> "$work/serve.log" &
  pid=$!
  if [ "$label" = ceiling ]; then
    wait_for "$work/out" "127.0.0.1"; target=$(cat "$work/out")
  else
    wait_for "$work/serve.log" "keys loaded; serving"
    target=$(grep 'scopegate listening' "$work/serve.log" | grep -o '"addr":"[^"]*"' | head -1 | cut -d'"' -f4)
  fi
  taskset -c 1 "$loadgen" check --target "http://$target" --workload scopes --token "$token" \
    --concurrency "$concurrency" --connections 4 --duration-secs "$seconds" --warmup-secs 1 \
    --server-pid "$pid" --label "$label" | tee -a "$work/results.jsonl"
  kill "$pid"; wait "$pid" 2> /dev/null || true; pid=""
}

# Default flags: every default listener on (free ports), metrics recorded.
serve=("$bin" serve --http-listen 127.0.0.1:0 --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir "$work/data" --log-format json)
before=("${BEFORE_BIN:-$bin}" "${serve[@]:1}")
for _ in $(seq 1 "$rounds"); do
  for server in ${SERVERS:-ceiling 1 2 default}; do
    case $server in
      ceiling) run ceiling "$loadgen" ceiling --listen 127.0.0.1:0 ;;
      1) run "1 worker" "${serve[@]}" --worker-threads 1 ;;
      2) run "2 workers" "${serve[@]}" --worker-threads 2 ;;
      default) run "default" "${serve[@]}" ;;
      before) run "before (${BEFORE_BIN:-this build})" "${before[@]}" ;;
    esac
  done
done
python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
by = {}
for run in runs:
    by.setdefault(run["label"], []).append(run["rps"])
ceiling = statistics.median(by["ceiling"])
print(f"| server (pinned to one CPU, {len(by['ceiling'])} alternating rounds) | median req/s | vs ceiling |")
print("|---|---|---|")
for label, values in by.items():
    median = statistics.median(values)
    print(f"| {label} | {median:.0f} | {median / ceiling:.2f}x |")
PY
