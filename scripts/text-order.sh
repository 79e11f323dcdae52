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
command -v valgrind > /dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
source bench/lib.sh

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
import sys
sys.path.insert(0, "bench")
from breakdown import functions
cost = {}
for (name, obj), count in functions(sys.argv[1]).items():
    if obj == sys.argv[2]:
        name = name.split("'")[0]  # callgrind marks a recursion level "'2"
        cost[name] = cost.get(name, 0) + count
# Mangled names only (valgrind's "0x…" placeholders are not symbols), hottest first.
for name, _ in sorted(cost.items(), key=lambda item: -item[1]):
    if name.startswith("_") and " " not in name:
        print(name)
EOF
echo "link/text-order.txt: $(wc -l < link/text-order.txt) functions" >&2
