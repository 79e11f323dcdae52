#!/usr/bin/env bash
# Server instructions per request, counted by callgrind: scopegate (as
# shipped: default flags, metrics recording on) against the bare tonic server
# (examples/loadgen.rs `ceiling`) answering the same requests. Unlike req/s,
# these counts repeat within a few per cent on a shared machine.
#   bash bench/instructions.sh               # prints JSON lines and a table
#   REQUESTS=500 bash bench/instructions.sh  # quicker
#   SCOPEGATE_BIN=/other/scopegate BARE=0 bash bench/instructions.sh
#                                            # another build (before/after a change), no bare server
#   LIMIT=default=1000000000/hour BARE=0 bash bench/instructions.sh
#                                            # the key carries that rate limit (in memory)
#   CREDITS=1000000000000 BARE=0 bash bench/instructions.sh
#                                            # the key has credits (in memory)
#   SERVE_ARGS="--usage off" BARE=0 bash bench/instructions.sh
#                                            # more serve flags (a feature off, to cost it)
#   SCOPES="mail.send stats.read marketing_campaigns.read" BARE=0 bash bench/instructions.sh
#   ROLES="mail.send stats.read marketing_campaigns.read" BARE=0 bash bench/instructions.sh
#                                            # the key's scopes of its own, or one role per scope
# Each figure: counters zeroed after a warm-up, N requests sent, counters
# dumped; then zeroed again, the server left idle for as long, dumped; the
# idle count is subtracted and the rest divided by N.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${REQUESTS:-2000}
inflight_list=${INFLIGHT:-"1 16"}

command -v valgrind > /dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
source bench/lib.sh
# Builds from before the REST listener have no --http-listen.
no_rest=()
"$bin" serve --help | grep -q -- --http-listen && no_rest=(--http-listen none)

# The Ir total of the newest callgrind dump of $1 (a prefix).
last_dump_total() {
  local file
  file=$(ls -t "$1".* 2> /dev/null | head -1)
  awk '/^(summary|totals):/ { print $2; exit }' "$file"
}

dump() { # pid prefix
  callgrind_control -d "$1" > /dev/null
  sleep 0.5
  last_dump_total "$2"
}

# drive <target> <workload> <token> <in-flight> <requests>: one run of the load.
drive() {
  if [ "$2" = forward-auth ]; then
    "$loadgen" forward-auth --target "$1" --token "$3" --concurrency "$4" --requests "$5" > /dev/null
  else
    "$loadgen" check --target "$1" --workload "$2" --token "$3" \
      --concurrency "$4" --connections 1 --requests "$5" > /dev/null
  fi
}

# instructions <server-name> <pid> <dump-prefix> <target> <workload> <token> <in-flight>
instructions() {
  local name=$1 pid=$2 prefix=$3 target=$4 workload=$5 token=$6 inflight=$7
  drive "$target" "$workload" "$token" "$inflight" 200
  callgrind_control -z "$pid" > /dev/null
  local started ended run idle
  started=$(date +%s.%N)
  drive "$target" "$workload" "$token" "$inflight" "$requests"
  run=$(dump "$pid" "$prefix")
  ended=$(date +%s.%N)
  callgrind_control -z "$pid" > /dev/null
  sleep "$(python3 -c "print($ended - $started)")"
  idle=$(dump "$pid" "$prefix")
  python3 -c "import json; print(json.dumps({'server': '$name', 'workload': '$workload', 'in_flight': $inflight, \
'requests': $requests, 'instructions_per_request': round(($run - $idle) / $requests), 'idle_instructions': $idle}))"
}

results="$work/results.jsonl"
# bench/run.sh passes its results file, to render these rows too.
[ -n "${RESULTS:-}" ] && results_copy=$RESULTS || results_copy=/dev/null
workloads="scopes http ext-authz ext-authz-allowed"

if [ "${BARE:-1}" = 1 ]; then
echo "== the bare tonic server under callgrind" >&2
valgrind --tool=callgrind --callgrind-out-file="$work/ceiling.cg" \
  "$loadgen" ceiling --listen 127.0.0.1:0 > "$work/ceiling.addr" 2> "$work/ceiling.log" &
pid=$!
wait_for "$work/ceiling.addr" "127.0.0.1"
ceiling="http://$(cat "$work/ceiling.addr")"
for inflight in $inflight_list; do
  for workload in $workloads; do
    case $workload in
      scopes | http) bare=ceiling ;;
      ext-authz) bare=ceiling-ext-authz ;;
      ext-authz-allowed) bare=ceiling-ext-authz-allowed ;;
    esac
    instructions bare "$pid" "$work/ceiling.cg" "$ceiling" "$bare" "" "$inflight" | tee -a "$results"
  done
done
kill "$pid"; wait "$pid" 2> /dev/null || true; pid=""
fi

echo "== scopegate (default flags, metrics on) under callgrind: $bin" >&2
# Builds with the forward-auth door answer the same request over HTTP too.
forward_auth=()
if "$bin" serve --help | grep -q -- --forward-auth-listen; then
  door="127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  forward_auth=(--forward-auth-listen "$door")
fi
"$bin" serve "${no_rest[@]}" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir "$work/data" \
  --log-format json 2> "$work/prepare.log" &
pid=$!
wait_for "$work/prepare.log" "keys loaded; serving"
addr=$(grep 'scopegate listening' "$work/prepare.log" | grep -o '"addr":"[^"]*"' | head -1 | cut -d'"' -f4)
limit_args=()
[ -n "${LIMIT:-}" ] && limit_args=(--limit "$LIMIT")
[ -n "${CREDITS:-}" ] && limit_args+=(--credits "$CREDITS")
grant_args=()
for scope in ${SCOPES:-mail.send}; do grant_args+=(--scope "$scope"); done
if [ -n "${ROLES:-}" ]; then
  grant_args=()
  for scope in $ROLES; do
    "$bin" roles create --server "http://$addr" --data-dir "$work/data" --account bench \
      --name "role-$scope" --scope "$scope" > /dev/null
    grant_args+=(--role "role-$scope")
  done
fi
token=$("$bin" keys create --server "http://$addr" --data-dir "$work/data" --account bench \
  --name load "${grant_args[@]}" "${limit_args[@]}" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
kill "$pid"; wait "$pid" 2> /dev/null || true
read -r -a serve_args <<< "${SERVE_ARGS:-}"
valgrind --tool=callgrind --callgrind-out-file="$work/scopegate.cg" \
  "$bin" serve "${no_rest[@]}" "${forward_auth[@]}" "${serve_args[@]}" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir "$work/data" \
  --log-format json 2> "$work/serve.log" &
pid=$!
wait_for "$work/serve.log" "keys loaded; serving"
addr=$(grep 'scopegate listening' "$work/serve.log" | grep -o '"addr":"[^"]*"' | head -1 | cut -d'"' -f4)
for inflight in $inflight_list; do
  for workload in $workloads; do
    instructions scopegate "$pid" "$work/scopegate.cg" "http://$addr" "$workload" "$token" "$inflight" \
      | tee -a "$results"
  done
  if [ ${#forward_auth[@]} -gt 0 ]; then
    instructions scopegate "$pid" "$work/scopegate.cg" "$door" forward-auth "$token" "$inflight" \
      | tee -a "$results"
  fi
done
kill "$pid"; wait "$pid" 2> /dev/null || true; pid=""

sed 's/^{/{"workload_kind": "instructions", /' "$results" >> "$results_copy"
python3 - "$results" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
by = {(r["server"], r["workload"], r["in_flight"]): r["instructions_per_request"] for r in rows}
names = {"scopes": "Authorize.Check (scopes)", "http": "Authorize.Check{http}",
         "ext-authz": "ext_authz Check, all 14 headers", "ext-authz-allowed": "ext_authz Check, allowed headers (5)",
         "forward-auth": "forward-auth (HTTP/1.1 keep-alive)"}
# The bare server answers Authorize.Check with a fixed message ("ceiling"),
# and Envoy's request, decoded as envoy-types does, with a fixed allow of
# scopegate's size ("ceiling-ext-authz*"): ratios against both.
same = {"scopes": "ceiling", "http": "ceiling", "ext-authz": "ceiling-ext-authz",
        "ext-authz-allowed": "ceiling-ext-authz-allowed"}
print("| request | in flight | bare server, Authorize.Check | bare server, same request | scopegate | vs bare Check | vs same request |")
print("|---|---|---|---|---|---|---|")
for (server, workload, inflight), value in sorted(by.items(), key=lambda kv: (kv[0][2], kv[0][1])):
    if server != "scopegate":
        continue
    if ("bare", "ceiling", inflight) not in by:  # BARE=0
        print(f"| {names[workload]} | {inflight} | | | {value / 1000:.1f} K | | |")
        continue
    bare = by[("bare", "ceiling", inflight)]
    # Forward-auth has no bare twin: compared with ext_authz (allowed headers).
    twin = by.get(("bare", same.get(workload, ""), inflight)) or by[("scopegate", "ext-authz-allowed", inflight)]
    print(f"| {names[workload]} | {inflight} | {bare / 1000:.1f} K | {twin / 1000:.1f} K | {value / 1000:.1f} K "
          f"| {value / bare:.2f}× | {value / twin:.2f}× |")
EOF
