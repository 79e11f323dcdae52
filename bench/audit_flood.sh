#!/usr/bin/env bash
# Check latency while a tenant floods ListAuditEvents (issue #16, item 5):
# a standalone store with EVENTS audit events (CreateKey + DeleteKey of
# EVENTS/2 keys in 100-key accounts), a read-only key (api_keys.read) looping
# ListAuditEvents page_size 1 on FLOODERS connections, and Authorize.Check
# p50/p99 for a mail.send key measured before and during the flood, once with
# the default per-account read limit and once with it lifted (so what is left
# is the read path itself: the blocking pool and the account index).
#   bash bench/audit_flood.sh                 # 300,000 events
#   EVENTS=20000 bash bench/audit_flood.sh    # quicker
set -euo pipefail
cd "$(dirname "$0")/.."
events=${EVENTS:-300000}
flooders=${FLOODERS:-2}
seconds=${SECONDS_PER_RUN:-8}
source bench/lib.sh

start() { # extra serve flags...
  : > "$work/serve.log"
  "$bin" serve --http-listen none --listen 127.0.0.1:0 --metrics-listen none --data-dir "$work/data" \
    --log-format json --mutations-per-account-per-sec 100000 "$@" 2> "$work/serve.log" &
  pid=$!
  wait_for "$work/serve.log" "keys loaded; serving"
  addr=$(grep 'scopegate listening' "$work/serve.log" | grep -o '"addr":"[^"]*"' | head -1 | cut -d'"' -f4)
}

stop() { kill "$pid"; wait "$pid" 2> /dev/null || true; pid=""; }

key() { # account scope
  "$bin" keys create --server "http://$addr" --data-dir "$work/data" --account "$1" --name "$2" \
    --scope "$2" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}

check() { # label
  "$loadgen" check --target "http://$addr" --workload scopes --token "$checker" --concurrency 1 \
    --connections 1 --duration-secs "$seconds" --warmup-secs 1 --label "$1"
}

echo "== seeding $events audit events"
start
"$loadgen" writes --target "http://$addr" --admin-token-file "$work/data/admin.token" \
  --concurrency 64 --count $((events / 2)) > /dev/null
reader=$(key bench-0 api_keys.read)
checker=$(key flood-check mail.send)
stop

for limit in default lifted; do
  if [ "$limit" = default ]; then start; else start --reads-per-account-per-sec 1000000; fi
  echo "== read limit $limit"
  check "quiet, read limit $limit"
  "$loadgen" audit-reads --target "http://$addr" --token "$reader" --concurrency "$flooders" \
    --duration-secs $((seconds + 2)) > "$work/flood.json" &
  flood=$!
  sleep 0.5
  check "flood, read limit $limit"
  wait "$flood"
  cat "$work/flood.json"
  stop
done
