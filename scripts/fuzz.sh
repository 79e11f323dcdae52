#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS each, default 60,
# with cargo-fuzz (libFuzzer) on the nightly toolchain; installs cargo-fuzz
# from crates.io when it is missing. Seeds come from fuzz/corpus/TARGET (never
# modified); new inputs go to a scratch corpus. A crash fails the run and its
# input is left in fuzz/artifacts/TARGET: turn it into a regression test.
#
#   bash scripts/fuzz.sh 10          # CI's smoke (scripts/test.sh)
#   bash scripts/fuzz.sh 3600 route  # one target, an hour
#   FUZZ_RUNS=10000000 bash scripts/fuzz.sh 7200   # each stops at 10 M executions
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(token route ext_authz config_toml key_record uds_authority page_token)

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo +nightly install --locked cargo-fuzz
fi
target_dir="${SCOPEGATE_FUZZ_TARGET_DIR:-$HOME/.cache/scopegate/fuzz-target}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  echo "== fuzz $target for ${seconds}s"
  # Memory bounds: a header block that decodes to megabytes (src/uds/) trips
  # the malloc limit at once, anything that grows without bound the RSS one.
  # The RSS one leaves room for ASan's quarantine of freed memory (up to
  # 256 MB): at 10k exec/s it fills within a minute.
  limits=(-rss_limit_mb=512)
  [ "$target" = uds_authority ] && limits+=(-malloc_limit_mb=8)
  [ -n "${FUZZ_RUNS:-}" ] && limits+=(-runs="$FUZZ_RUNS")
  start=$SECONDS
  cargo +nightly fuzz run --target-dir "$target_dir" "$target" \
    "$scratch/$target" "fuzz/corpus/$target" \
    -- -max_total_time="$seconds" -print_final_stats=1 "${limits[@]}" 2>"$scratch/$target.log" \
    || { tail -40 "$scratch/$target.log"; echo "fuzz $target: FAILED (input in fuzz/artifacts/$target)"; exit 1; }
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$target.log" | grep -o '[0-9]*$' || echo "?")
  echo "fuzz $target: ${runs} executions in $((SECONDS - start))s, no crash"
done
