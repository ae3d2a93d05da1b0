#!/usr/bin/env bash
# Builds the `oz` binary that goes into the sidecar (/agent/bin/oz), linked statically so it runs in any
# Linux image: no dynamic loader, no libc, no NSS modules (DNS goes through hickory, not getaddrinfo).
#
#   scripts/build-sidecar-oz.sh [OUT]      (default OUT: target/sidecar/oz)
#
# OZ_SIDECAR_PROFILE picks the Cargo profile (default: release). CI uses `ci-sidecar` (no LTO, less
# optimisation), which builds in about half the time; benchmarks and deployments use the default.
#
# It then proves the binary has no dynamic dependencies by running it in an empty chroot when run as
# root (skipped, with a note, otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(rustc -vV | sed -n 's/^host: //p')
out=${1:-target/sidecar/oz}
profile=${OZ_SIDECAR_PROFILE:-release}
echo "building a static oz for $target (profile $profile) ..." >&2
# An explicit --target keeps RUSTFLAGS away from build scripts and proc macros, which must stay dynamic.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile "$profile" --locked --target "$target" -p oz-cli --bin oz --no-default-features
mkdir -p "$(dirname "$out")"
cp "target/$target/$profile/oz" "$out"
if readelf -l "$out" | grep -q 'INTERP'; then
  echo "error: $out asks for a dynamic loader; it is not static" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ] && command -v chroot >/dev/null; then
  jail=$(mktemp -d)
  cp "$out" "$jail/oz"
  chroot "$jail" /oz --version >&2
  rm -rf "$jail"
  echo "ok: $out is static and runs in an empty root" >&2
else
  echo "ok: $out is static (not root: the empty-chroot check was skipped)" >&2
fi
