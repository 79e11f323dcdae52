#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
SKIP_BUILD=1
source bench/lib.sh
"$loadgen" gen-backup --keys 1000 --out "$work/keys.jsonl" > /dev/null
"$bin" restore --in "$work/keys.jsonl" --data-dir "$work/data" > /dev/null
listeners=(); for flag in --listen --http-listen --metrics-listen; do listeners+=("$flag" "127.0.0.1:$(port)"); done
anon() { awk '$1=="RssAnon:" {print $2}' /proc/$pid/status; }
if [ -n "${PERF:-}" ]; then
  perf record -q -e page-faults -c 1 --call-graph dwarf,8192 -o /tmp/fp/pf.$RUN.data -- "$bin" serve "${listeners[@]}" --data-dir "$work/data" --log-format json 2> "$work/serve.log" &
  ppid=$!
  sleep 0.3; pid=$(pgrep -P $ppid -n)
else
  "$bin" serve "${listeners[@]}" --data-dir "$work/data" --log-format json 2> "$work/serve.log" &
  pid=$!
fi
wait_for "$work/serve.log" "keys loaded; serving"
a0=$(anon)
addr=$(grep 'scopegate listening' "$work/serve.log" | grep -o '"addr":"[^"]*"' | head -1 | cut -d'"' -f4)
for n in 1 2 3; do "$bin" keys create --server "$addr" --data-dir "$work/data" --account idle --name "k$n" --scope mail.send > /dev/null; done
a1=$(anon); s=""
for t in 1 2 3 4 5 6 7 8; do sleep 1; s="$s $(anon)"; done
echo "run=$RUN serving=$a0 created=$a1 idle:$s threads=$(ls /proc/$pid/task | wc -l)"
cp /proc/$pid/smaps /tmp/fp/smaps.$RUN
kill -INT "$pid"; sleep 1; [ -n "${ppid:-}" ] && wait $ppid 2>/dev/null || true; pid=""
