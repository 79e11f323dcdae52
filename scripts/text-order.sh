#!/usr/bin/env bash
# Writes link/text-order.txt: the functions of the scopegate binary that run
# at start-up, while idle and on the decision paths, hottest first, for the
# linker to lay out together (build.rs passes it to lld as
# --symbol-ordering-file). Why (issue #38): of the 16 MiB of machine code,
# about 1 MiB runs, spread over some 200 of the 64 KiB windows the kernel maps
# at once around each page fault ("fault-around"), so 12-13 MiB of the binary
# was resident for 1 MiB of use. Laid out together, it is a few windows.
#
# Rerun after large changes (names of functions that no longer exist are
# skipped by the linker; new ones land in default order, costing RSS, never
# correctness):
#   bash scripts/text-order.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scopegate/target}"
command -v valgrind > /dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
cargo build --release --locked --bin scopegate --example loadgen
bin="$CARGO_TARGET_DIR/release/scopegate"
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

# What the footprint measure does (bench/footprint.sh), plus every decision door.
"$loadgen" gen-backup --keys 1000 --out "$work/keys.jsonl" > /dev/null
"$bin" restore --in "$work/keys.jsonl" --data-dir "$work/data" > /dev/null
grpc=127.0.0.1:$(port); door=127.0.0.1:$(port)
valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/order.cg" \
  "$bin" serve --listen "$grpc" --http-listen "127.0.0.1:$(port)" --metrics-listen "127.0.0.1:$(port)" \
  --forward-auth-listen "$door" --data-dir "$work/data" --log-format json 2> "$work/serve.log" &
pid=$!
wait_for "$work/serve.log" "keys loaded; serving"
token=$("$bin" keys create --server "http://$grpc" --data-dir "$work/data" --account order \
  --name load --scope mail.send --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
for n in 1 2 3; do
  "$bin" keys create --server "http://$grpc" --data-dir "$work/data" --account idle --name "k$n" \
    --scope mail.send > /dev/null
done
for workload in scopes http ext-authz ext-authz-allowed; do
  "$loadgen" check --target "http://$grpc" --workload "$workload" --token "$token" \
    --concurrency 4 --connections 1 --requests 300 > /dev/null
done
"$loadgen" forward-auth --target "$door" --token "$token" --concurrency 4 --requests 300 > /dev/null
sleep 6
kill "$pid"; wait "$pid" 2> /dev/null || true; pid=""

mkdir -p link
python3 - "$work/order.cg" "$bin" > link/text-order.txt <<'EOF'
import re, sys
from collections import defaultdict
names, cost = {"fn": {}, "ob": {}}, defaultdict(int)
fn = ob = ""
skip = False
for line in open(sys.argv[1], errors="replace"):
    line = line.rstrip("\n")
    if skip:
        skip = False
        continue
    key, _, value = line.partition("=")
    if key in ("fn", "ob", "cfn", "cob"):
        match = re.match(r"^\((\d+)\)(?: (.*))?$", value)
        if match:
            if match.group(2) is not None:
                names[key.lstrip("c")][match.group(1)] = match.group(2)
            value = names[key.lstrip("c")].get(match.group(1), value)
        if key == "fn":
            fn = value.split("'")[0]  # callgrind marks a recursion level "'2"
        elif key == "ob":
            ob = value
    elif key == "calls":
        skip = True
    elif (line[:1].isdigit() or line[:1] in "+-*") and ob == sys.argv[2]:
        parts = line.split()
        if len(parts) > 1:
            cost[fn] += int(parts[-1])
# Mangled names only (valgrind's "0x…" placeholders are not symbols), hottest first.
for name, _ in sorted(cost.items(), key=lambda item: -item[1]):
    if name.startswith("_") and " " not in name:
        print(name)
EOF
echo "link/text-order.txt: $(wc -l < link/text-order.txt) functions" >&2
