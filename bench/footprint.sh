#!/usr/bin/env bash
# Idle footprint of the release binary (issue #38): default flags (the gRPC,
# REST/console and metrics listeners on), a store of 1,000 keys restored from
# `loadgen gen-backup`, three CreateKey calls (every lazily started thread
# counted), then idle. Prints one JSON line per configuration: VmRSS, the
# process's own memory (RssAnon) apart from mapped file pages (RssFile: the
# binary and libc, whose count depends on the page cache), threads.
#   bash bench/footprint.sh                      # default flags
#   CONFIGS="default|--webhooks off" bash bench/footprint.sh
#                                                # one line per |-separated set of extra flags
#   SMAPS=1 bash bench/footprint.sh              # also the largest mappings
set -euo pipefail
cd "$(dirname "$0")/.."
idle=${IDLE_SECS:-6}
source bench/lib.sh

"$loadgen" gen-backup --keys 1000 --out "$work/keys.jsonl" > /dev/null
IFS='|' read -r -a configs <<< "${CONFIGS:-default}"
for config in "${configs[@]}"; do
  rm -rf "$work/data"
  "$bin" restore --in "$work/keys.jsonl" --data-dir "$work/data" > /dev/null
  extra=()
  [ "$config" != default ] && read -r -a extra <<< "$config"
  # Every default listener on, on free ports (the defaults may be taken
  # here), unless the configuration names it.
  listeners=()
  for flag in --listen --http-listen --metrics-listen; do
    [[ " $config " == *" $flag "* ]] || listeners+=("$flag" "127.0.0.1:$(port)")
  done
  rm -f "$work/serve.log"
  "$bin" serve "${listeners[@]}" --data-dir "$work/data" --log-format json "${extra[@]}" 2> "$work/serve.log" &
  pid=$!
  wait_for "$work/serve.log" "keys loaded; serving"
  addr=$(grep 'scopegate listening' "$work/serve.log" | grep -o '"addr":"[^"]*"' | head -1 | cut -d'"' -f4)
  for n in 1 2 3; do
    "$bin" keys create --server "$addr" --data-dir "$work/data" --account idle --name "k$n" \
      --scope mail.send > /dev/null
  done
  sleep "$idle"
  status=/proc/$pid/status
  kib() { awk -v k="$1:" '$1 == k { print $2 }' "$status"; }
  echo "{\"config\":\"$config\",\"keys\":1000,\"rss_kib\":$(kib VmRSS),\"anon_kib\":$(kib RssAnon),\"file_kib\":$(kib RssFile),\"threads\":$(kib Threads)}"
  if [ -n "${SMAPS:-}" ]; then
    awk '/^[0-9a-f]+-[0-9a-f]+ / { name = $6 ? $6 : "[anon " $1 "]" } /^Rss:/ { rss[name] += $2 }
      END { for (n in rss) if (rss[n] >= 256) printf "  %7d KiB  %s\n", rss[n], n }' "/proc/$pid/smaps" | sort -rn
  fi
  kill "$pid"; wait "$pid" 2> /dev/null || true; pid=""
done
