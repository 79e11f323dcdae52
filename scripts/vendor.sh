#!/usr/bin/env bash
# vendor/ holds three crates.io releases with small patches (vendor/README.md
# says what each patch does and why). A copy is reviewable only as "the
# release, minus the files in vendor/<crate>.drop, plus vendor/<crate>.patch",
# so this script holds the trees to exactly that:
#   scripts/vendor.sh check   the test command runs it: fails on any difference
#   scripts/vendor.sh diff    after editing a tree, rewrites its .patch
# The releases come from crates.io, checked against the sha256 its index lists.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-check}"
case "$mode" in
  check | diff) ;;
  *)
    echo "usage: scripts/vendor.sh [check|diff]" >&2
    exit 2
    ;;
esac
cache="${XDG_CACHE_HOME:-$HOME/.cache}/scopegate/crates"
mkdir -p "$cache"
# crate, release, sha256 of the .crate file (crates.io index "cksum")
releases=(
  "sled 0.34.7 7f96b4737c2ce5987354855aed3797279def4ebf734436c6aa4552cf8e169935"
  "limitador 0.14.0 77e33de992fdc347850a81f1ed242cc702900a9651a2b5d044d153a2db5e2d1a"
  "loona-hpack 0.4.3 3ce904bae9ecfd9b658b0be156ad278d4b2432f171472f1f0289aed75eed02a3"
)
failed=0
for release in "${releases[@]}"; do
  read -r name version sum <<<"$release"
  file="$cache/$name-$version.crate"
  if [ ! -f "$file" ]; then
    curl -sSfL --retry 3 -o "$file.part" "https://static.crates.io/crates/$name/$name-$version.crate"
    mv "$file.part" "$file"
  fi
  echo "$sum  $file" | sha256sum --check --quiet
  work="$(mktemp -d)"
  tar -xzf "$file" -C "$work"
  mv "$work/$name-$version" "$work/a"
  while read -r dropped; do
    [ -n "$dropped" ] && rm -rf "${work:?}/a/$dropped"
  done <"vendor/$name.drop"
  if [ "$mode" = diff ]; then
    cp -r "vendor/$name" "$work/b"
    # No timestamps, so the patch changes only when the code does.
    (cd "$work" && diff -ruN a b || true) |
      sed -E 's/^((---|\+\+\+) [^\t]+)\t.*/\1/' >"vendor/$name.patch"
    echo "vendor/$name.patch: $(grep -c '^+++ ' "vendor/$name.patch") files"
  else
    patch --quiet --directory="$work/a" --strip=1 <"vendor/$name.patch"
    if diff -r "$work/a" "vendor/$name" >"$work/differences"; then
      echo "vendor/$name = $name $version + vendor/$name.patch"
    else
      echo "vendor/$name differs from $name $version + vendor/$name.patch (scripts/vendor.sh diff rewrites the patch):" >&2
      head -40 "$work/differences" >&2
      failed=1
    fi
  fi
  rm -rf "$work"
done
exit "$failed"
