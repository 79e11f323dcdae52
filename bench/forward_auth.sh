#!/usr/bin/env bash
# What scopegate adds behind nginx: the same load through nginx alone and
# through nginx asking scopegate (examples/forward-auth/nginx.conf), and
# scopegate's forward-auth door asked directly; p50/p99 per setup, one
# connection per request in flight, HTTP/1.1 keep-alive, on loopback.
#   bash bench/forward_auth.sh                 # INFLIGHT="1 64" REQUESTS=20000
# Needs nginx (Debian's package). Prints JSON lines and a table.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scopegate/target}"
requests=${REQUESTS:-20000}
inflight_list=${INFLIGHT:-"1 64"}
command -v nginx > /dev/null || { echo "needs nginx (apt-get install nginx)" >&2; exit 1; }
# Apart, so the server is built as shipped (see bench/lib.sh).
cargo build --release --locked --bin scopegate
cargo build --release --locked --example loadgen
bin="$CARGO_TARGET_DIR/release/scopegate"
loadgen="$CARGO_TARGET_DIR/release/examples/loadgen"
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

door="127.0.0.1:$(port)"
"$bin" serve --listen 127.0.0.1:0 --metrics-listen none --http-listen none --forward-auth-listen "$door" \
  --data-dir "$work/data" --log-format json 2> "$work/serve.log" &
pids+=($!)
for _ in $(seq 1 600); do grep -q "keys loaded; serving" "$work/serve.log" && break; sleep 0.05; done
addr=$(grep 'scopegate listening' "$work/serve.log" | grep -o '"addr":"[^"]*"' | head -1 | cut -d'"' -f4)
token=$("$bin" keys create --server "http://$addr" --data-dir "$work/data" --account bench \
  --name load --scope mail.send --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

# nginx: the example in front of an upstream nginx answers itself, and the
# same server without auth_request.
upstream="127.0.0.1:$(port)" guarded="127.0.0.1:$(port)" alone="127.0.0.1:$(port)"
example=$(sed -e "s/127.0.0.1:8000/$guarded/" -e "s/127.0.0.1:8181/$door/" -e "s/127.0.0.1:3000/$upstream/" \
  examples/forward-auth/nginx.conf)
cat > "$work/nginx.conf" <<EOF
daemon off;
master_process off;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/body; proxy_temp_path $work/proxy; fastcgi_temp_path $work/fastcgi;
  uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
  keepalive_requests 1000000;
  server { listen $upstream; location / { return 200 "upstream"; } }
  server { listen $alone; location / { proxy_pass http://$upstream; } }
$example
}
EOF
nginx -p "$work" -c "$work/nginx.conf" &
pids+=($!)
for _ in $(seq 1 200); do (exec 3<> "/dev/tcp/${alone%:*}/${alone#*:}") 2> /dev/null && break; sleep 0.05; done

results="$work/results.jsonl"
for inflight in $inflight_list; do
  for setup in "nginx alone:$alone" "nginx + scopegate:$guarded" "scopegate forward-auth:$door"; do
    name=${setup%%:*} target=${setup#*:}
    "$loadgen" forward-auth --target "$target" --token "$token" --concurrency "$inflight" --requests 1000 > /dev/null
    "$loadgen" forward-auth --target "$target" --token "$token" --concurrency "$inflight" --requests "$requests" \
      | python3 -c "import json,sys; row=json.load(sys.stdin); row['setup']='$name'; print(json.dumps(row))" \
      | tee -a "$results"
  done
done
python3 - "$results" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| in flight | setup | p50 µs | p99 µs | added p50 | added p99 |")
print("|---|---|---|---|---|---|")
for row in rows:
    alone = next(r for r in rows if r["concurrency"] == row["concurrency"] and r["setup"] == "nginx alone")
    added = row["setup"] == "nginx + scopegate"
    print(f"| {row['concurrency']} | {row['setup']} | {row['p50_us']} | {row['p99_us']} | "
          + (f"{row['p50_us'] - alone['p50_us']} | {row['p99_us'] - alone['p99_us']} |" if added else "| |"))
EOF
