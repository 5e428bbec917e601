#!/usr/bin/env bash
# Builds the release binary exactly as the Dockerfile does, and checks that it is static.
# Usage: hack/build-release.sh [DEST]   (copies the binary to DEST when given)
#        hack/build-release.sh --path   (prints where the binary is, builds nothing)
#
# Static glibc rather than musl: the musl target cannot be installed offline here, and glibc >= 2.34
# has the `files` and `dns` NSS modules built in, so name resolution works in a scratch image.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target=x86_64-unknown-linux-gnu
# Cargo's own answer for where artifacts go (CARGO_TARGET_DIR, build.target-dir, or ./target).
target_dir="$(cargo metadata --format-version 1 --no-deps --locked | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
binary="$target_dir/$target/release/cleanslate"
if [[ "${1:-}" == "--path" ]]; then
  echo "$binary"
  exit 0
fi
RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --release --target "$target"
if ldd "$binary" 2>&1 | grep -q "=>"; then
  echo "build-release: $binary is dynamically linked" >&2
  exit 1
fi
echo "build-release: $binary is static, $(stat -c %s "$binary") bytes, $("$binary" --version)"
if [[ $# -gt 0 ]]; then
  cp "$binary" "$1"
fi
