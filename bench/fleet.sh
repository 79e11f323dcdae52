#!/usr/bin/env bash
# Fleet mode: revocation propagation and etcd cost. Starts one etcd (Debian's
# etcd-server) and N sidecars (FLEET_SIDECARS, default 3) on loopback, creates
# COUNT keys (default 1000) through the first, then deletes them one by one and
# measures the time from DeleteKey returning until every other sidecar denies
# the key. Prints one JSON line; BENCHMARKS.md quotes it.
#   bash bench/fleet.sh
#   FLEET_SIDECARS=10 COUNT=300 bash bench/fleet.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scopegate/target}"
sidecars=${FLEET_SIDECARS:-3}; count=${COUNT:-1000}
command -v etcd >/dev/null || { apt-get update -qq && apt-get install -y -qq etcd-server; }
# Apart, so the server is built as shipped (see bench/lib.sh).
cargo build --release --locked --bin scopegate
cargo build --release --locked --example loadgen
bin="$CARGO_TARGET_DIR/release/scopegate"
loadgen="$CARGO_TARGET_DIR/release/examples/loadgen"
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

client=$(port); peer=$(port)
etcd --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$client" \
  --advertise-client-urls "http://127.0.0.1:$client" --listen-peer-urls "http://127.0.0.1:$peer" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
  --initial-cluster "default=http://127.0.0.1:$peer" 2> "$work/etcd.log" &
etcd_pid=$!; pids+=("$etcd_pid")
for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$client/health" >/dev/null 2>&1 && break; sleep 0.05; done

head -c 24 /dev/urandom | base64 > "$work/admin.token"; chmod 600 "$work/admin.token"
addrs=()
for i in $(seq 1 "$sidecars"); do
  "$bin" serve --http-listen none --store etcd --etcd-endpoints "http://127.0.0.1:$client" --listen 127.0.0.1:0 \
    --metrics-listen 127.0.0.1:0 --data-dir "$work/s$i" --admin-token-file "$work/admin.token" \
    --max-keys-per-account 100000 --mutations-per-account-per-sec 100000 \
    --log-format json 2> "$work/s$i.log" &
  pids+=("$!")
  for _ in $(seq 1 600); do grep -q '"keys loaded; serving"' "$work/s$i.log" 2>/dev/null && break; sleep 0.05; done
  addrs+=("http://$(grep 'scopegate listening' "$work/s$i.log" | grep -o '"addr":"[^"]*"' | head -1 | cut -d'"' -f4)")
done
watchers=$(IFS=,; echo "${addrs[*]:1}")
"$loadgen" revocation --origin "${addrs[0]}" --watchers "$watchers" \
  --admin-token-file "$work/admin.token" --count "$count" --etcd-pid "$etcd_pid"
