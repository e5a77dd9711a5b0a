#!/usr/bin/env bash
# Rebuilds each vendored crate from the published crate plus vendor/<crate>.patch.
#
#   vendor/update.sh [crate]          replace vendor/<crate> (default: every crate below) with
#                                     the published crate + its patch
#   vendor/update.sh --check [crate]  build it in a temporary directory and fail if vendor/<crate>
#                                     differs from it (CI runs this)
#
# A crate is downloaded from crates.io and checked against the checksum the crates.io index
# publishes for it (the one Cargo.lock records). To move to another version, change its line
# below, run this, and resolve whatever hunks no longer apply. A patch names the published files
# /tmp/<crate>-orig/... and the patched ones vendor/<crate>/... (`diff -ru` from the repository
# root): -p2 strips that to paths inside the crate.
set -euo pipefail

# name version sha256
CRATES=(
  "openraft 0.9.25 a97014fb78acb77be3a40ac2da305f6dd3a6b243f3a908ace87d29b3972eaafd"
  "ractor_cluster 0.16.5 3439e8f54ac2b977cd00232d646af6e78ca2b99d29ad91fc5e3e2b61623d2e28"
)

here="$(cd "$(dirname "$0")" && pwd)"
check=false
only=""
for arg in "$@"; do
  case "$arg" in
    --check) check=true ;;
    -*) echo "usage: $0 [--check] [crate]" >&2; exit 2 ;;
    *) only="$arg" ;;
  esac
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
status=0
for line in "${CRATES[@]}"; do
  read -r name version sha256 <<<"$line"
  if [ -n "$only" ] && [ "$only" != "$name" ]; then
    continue
  fi
  crate="$work/$name-$version.crate"
  curl -sSfL -o "$crate" "https://static.crates.io/crates/$name/$name-$version.crate"
  echo "$sha256  $crate" | sha256sum --check --quiet
  tar -xzf "$crate" -C "$work"
  built="$work/$name-$version"
  # The published crate carries a Cargo.lock that a path dependency does not use.
  rm -f "$built/Cargo.lock"
  patch --quiet --directory "$built" -p2 < "$here/$name.patch"

  if $check; then
    # Cargo.lock and target/ appear when the vendored crate's own tests are run.
    if ! diff -r --exclude Cargo.lock --exclude target "$built" "$here/$name"; then
      echo "vendor/$name is not $name $version plus vendor/$name.patch;" \
        "regenerate the patch (diff -ru) or run vendor/update.sh $name" >&2
      status=1
    else
      echo "vendor/$name is $name $version plus vendor/$name.patch"
    fi
  else
    rm -rf "${here:?}/$name"
    mv "$built" "$here/$name"
    echo "vendor/$name rebuilt from $name $version and vendor/$name.patch"
  fi
done
exit $status
