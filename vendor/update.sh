#!/usr/bin/env bash
# Rebuilds vendor/openraft from the published openraft crate plus vendor/openraft.patch.
#
#   vendor/update.sh          replace vendor/openraft with the published crate + the patch
#   vendor/update.sh --check  build it in a temporary directory and fail if vendor/openraft
#                             differs from it (CI runs this)
#
# The crate is downloaded from crates.io and checked against the checksum the crates.io index
# publishes for it. To move to another version, change VERSION and SHA256 (from
# https://index.crates.io/op/en/openraft), run this, and resolve whatever hunks no longer apply.
set -euo pipefail

VERSION=0.9.25
SHA256=a97014fb78acb77be3a40ac2da305f6dd3a6b243f3a908ace87d29b3972eaafd

here="$(cd "$(dirname "$0")" && pwd)"
check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
crate="$work/openraft-$VERSION.crate"
curl -sSfL -o "$crate" "https://static.crates.io/crates/openraft/openraft-$VERSION.crate"
echo "$SHA256  $crate" | sha256sum --check --quiet
tar -xzf "$crate" -C "$work"
built="$work/openraft-$VERSION"
# The published crate carries a Cargo.lock that a path dependency does not use.
rm -f "$built/Cargo.lock"
# The patch names the published files /tmp/openraft-orig/... and the patched ones
# vendor/openraft/...: -p2 strips that to paths inside the crate.
patch --quiet --directory "$built" -p2 < "$here/openraft.patch"

if $check; then
  # Cargo.lock and target/ appear when the vendored crate's own tests are run.
  if ! diff -r --exclude Cargo.lock --exclude target "$built" "$here/openraft"; then
    echo "vendor/openraft is not openraft $VERSION plus vendor/openraft.patch;" \
      "regenerate the patch (diff -ru) or run vendor/update.sh" >&2
    exit 1
  fi
  echo "vendor/openraft is openraft $VERSION plus vendor/openraft.patch"
else
  rm -rf "$here/openraft"
  mv "$built" "$here/openraft"
  echo "vendor/openraft rebuilt from openraft $VERSION and vendor/openraft.patch"
fi
