#!/usr/bin/env bash
# scopegate against Cerbos (issue #38), pinned like bench/worker_threads.sh:
# each server on CPU 0 (taskset), the load on CPU 1, the same question over
# gRPC at 64 in flight (4 connections × 16 streams), alternating ROUNDS times:
# the bare tonic server (the ceiling), scopegate with default flags, Cerbos
# (its own default config but info logging, which writes a line per request:
# --log-level=warn, its best case), and the bare server on scopegate's
# runtime (ceiling-fifo: no LIFO slot, answers written in batches). One load
# generator for all, nghttp2's h2load, sending pre-encoded gRPC bodies
# (bench/grpc_bodies.py); before the load each server's answer is checked
# once (allowed; and Cerbos denies without the scope). Cerbos comes from
# npm (@cerbos/cerbos-linux-x64).
# BEFORE_BIN=path adds another scopegate build to each round ("before").
#   bash bench/cerbos.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
seconds=${SECONDS_PER_RUN:-5}
cerbos_version=${CERBOS_VERSION:-0.51.0}
for tool in taskset h2load curl; do
  command -v "$tool" > /dev/null || { echo "needs $tool (apt-get install util-linux nghttp2-client curl)" >&2; exit 1; }
done
source bench/lib.sh
cerbos="${SCOPEGATE_TOOLS_DIR:-$HOME/.cache/scopegate/tools}/cerbos-$cerbos_version/package/cerbos-linux-x64"
if [ ! -x "$cerbos" ]; then
  mkdir -p "$(dirname "$(dirname "$cerbos")")"
  (cd "$(dirname "$(dirname "$cerbos")")" && npm pack --silent "@cerbos/cerbos-linux-x64@$cerbos_version" > /dev/null \
    && tar xzf ./*.tgz && chmod +x package/cerbos-linux-x64)
fi
"$cerbos" --version | head -1 >&2

# A key to check with, and Cerbos's policy for the same rule.
token=$(bench_token)
python3 bench/grpc_bodies.py scopegate "$work/check.bin" "$token"
python3 bench/grpc_bodies.py cerbos "$work/cerbos.bin" mail.send,stats.read
python3 bench/grpc_bodies.py cerbos "$work/cerbos-denied.bin" stats.read
mkdir -p "$work/policies"
cat > "$work/policies/email_api.yaml" << 'POLICY'
apiVersion: api.cerbos.dev/v1
resourcePolicy:
  version: default
  resource: email_api
  rules:
    - actions: ["mail.send"]
      effect: EFFECT_ALLOW
      roles: ["api_key"]
      condition:
        match:
          expr: '"mail.send" in P.attr.scopes'
POLICY

# ask <url> <body> <expected bytes, hex, in the answer>: one call, checked.
ask() {
  curl -sS --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' \
    --data-binary @"$2" "$1" -o "$work/answer" -D "$work/answer.headers"
  grep -qi '^grpc-status: 0' "$work/answer.headers" || { cat "$work/answer.headers" >&2; exit 1; }
  xxd -p "$work/answer" | tr -d '\n' | grep -q "$3" || { echo "unexpected answer from $1" >&2; xxd "$work/answer" >&2; exit 1; }
}

run() { # label url body server command...
  local label=$1 url=$2 body=$3; shift 3
  : > "$work/out"
  taskset -c 0 "$@" > "$work/out" 2> "$work/server.log" &
  pid=$!
  case $label in
    ceiling*) wait_for "$work/out" "127.0.0.1"; url="http://$(cat "$work/out")$url" ;;
    scopegate | before) wait_for "$work/server.log" "keys loaded; serving"
      url="http://$(grep 'scopegate listening' "$work/server.log" | grep -o '"addr":"[^"]*"' | head -1 | cut -d'"' -f4)$url" ;;
    cerbos) for _ in $(seq 1 100); do curl -sf http://127.0.0.1:3592/_cerbos/health > /dev/null && break; sleep 0.1; done ;;
  esac
  case $label in
    # allowed: scopegate's CheckResponse starts `allowed = true` (08 01); Cerbos's
    # action effect is EFFECT_ALLOW (10 01), EFFECT_DENY (10 02) without the scope.
    scopegate | before) ask "$url" "$body" "0801" ;;
    cerbos) ask "$url" "$body" "6d61696c2e73656e641001"; ask "$url" "$work/cerbos-denied.bin" "6d61696c2e73656e641002" ;;
  esac
  local out
  out=$(taskset -c 1 h2load -c 4 -m 16 -t 1 -D "$seconds" --warm-up-time=1 -H 'content-type: application/grpc' \
    -H 'te: trailers' -d "$body" "$url")
  local rps ok
  rps=$(grep -o 'finished in [0-9.]*s, [0-9.]* req/s' <<< "$out" | awk '{print $4}')
  ok=$(grep -o 'status codes: [0-9]* 2xx' <<< "$out" | awk '{print $3}')
  echo "{\"label\":\"$label\",\"rps\":$rps,\"ok_2xx\":$ok}" | tee -a "$work/results.jsonl"
  kill "$pid"; wait "$pid" 2> /dev/null || true; pid=""
}

check_path=/scopegate.v1.Authorize/Check
serve=(serve --http-listen 127.0.0.1:0 --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0
  --data-dir "$work/data" --log-format json)
for _ in $(seq 1 "$rounds"); do
  run ceiling "$check_path" "$work/check.bin" "$loadgen" ceiling --listen 127.0.0.1:0
  run ceiling-fifo "$check_path" "$work/check.bin" "$loadgen" ceiling --fifo --listen 127.0.0.1:0
  run scopegate "$check_path" "$work/check.bin" "$bin" "${serve[@]}"
  [ -z "${BEFORE_BIN:-}" ] || run before "$check_path" "$work/check.bin" "$BEFORE_BIN" "${serve[@]}"
  run cerbos http://127.0.0.1:3593/cerbos.svc.v1.CerbosService/CheckResources "$work/cerbos.bin" \
    "$cerbos" server --log-level=warn --set=server.httpListenAddr=127.0.0.1:3592 \
    --set=server.grpcListenAddr=127.0.0.1:3593 --set=storage.driver=disk \
    --set=storage.disk.directory="$work/policies" --set=telemetry.disabled=true
done
python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
by = {}
for line in open(sys.argv[1]):
    run = json.loads(line)
    by.setdefault(run["label"], []).append(run["rps"])
median = {label: statistics.median(values) for label, values in by.items()}
print(f"| server (pinned to one CPU, h2load, 64 in flight, {len(by['ceiling'])} alternating rounds) | req/s | median | vs the bare server | scopegate vs it |")
print("|---|---|---|---|---|")
for label, values in by.items():
    runs = " / ".join(f"{v:,.0f}" for v in values)
    print(f"| {label} | {runs} | {median[label]:,.0f} | {median[label] / median['ceiling']:.2f}× | "
          f"{median['scopegate'] / median[label]:.1f}× |")
PY
