# Shared by the bench scripts (footprint, breakdown, cerbos, worker_threads,
# instructions, audit_flood) and scripts/text-order.sh
# (sourced from the checkout's root): the release build of the server and the
# load generator (SKIP_BUILD=1: as built), a scratch folder removed on exit
# with the server in $pid, and waiting for a server's log line.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scopegate/target}"
# Two builds: together, the example's dev-dependencies would add features
# to shared crates and so change the server's code and symbol names (which
# link/text-order.txt lists) from the binary the README and Dockerfile build.
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release --locked --bin scopegate > /dev/null 2>&1
  cargo build --release --locked --example loadgen > /dev/null 2>&1
fi
bin="${SCOPEGATE_BIN:-$CARGO_TARGET_DIR/release/scopegate}"
loadgen="$CARGO_TARGET_DIR/release/examples/loadgen"
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2> /dev/null; rm -rf "$work"; }
trap cleanup EXIT
wait_for() { # file pattern
  for _ in $(seq 1 1200); do grep -q "$2" "$1" 2> /dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# bench_token: a key allowed mail.send, created in $work/data through a
# server started and stopped for it; prints the token.
bench_token() {
  "$bin" serve --http-listen none --listen 127.0.0.1:0 --metrics-listen none --data-dir "$work/data" \
    --log-format json 2> "$work/token.log" &
  pid=$!
  wait_for "$work/token.log" "keys loaded; serving"
  local addr
  addr=$(grep 'scopegate listening' "$work/token.log" | grep -o '"addr":"[^"]*"' | head -1 | cut -d'"' -f4)
  "$bin" keys create --server "http://$addr" --data-dir "$work/data" --account bench \
    --name load --scope mail.send --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
  kill "$pid"; wait "$pid" 2> /dev/null || true; pid=""
}
