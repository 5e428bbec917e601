#!/usr/bin/env bash
# Builds the Dockerfile's final stage daemonless with buildah, from the binary hack/build-release.sh
# makes (base images cannot be pulled here, so the builder stage is this script's build), into the
# OCI archive target/image/cleanslate.tar. tests/image.rs checks that the result and the Dockerfile's
# final stage agree (user, entrypoint, labels, files) and runs the binary from the image's root.
#
#   hack/image.sh            build the binary, then the image
#   CLEANSLATE_BINARY=PATH hack/image.sh   use an already built static binary
#   CLEANSLATE_IMAGE_OUT=DIR hack/image.sh write DIR/cleanslate.tar instead
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
binary="${CLEANSLATE_BINARY:-}"
if [[ -z "$binary" ]]; then
  hack/build-release.sh >&2
  binary="$(hack/build-release.sh --path)"
fi
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
out="${CLEANSLATE_IMAGE_OUT:-$root/target/image}"
mkdir -p "$out"

# Private storage under .scratch (vfs: no overlay mounts needed; works as root without a daemon).
storage=(--root "$root/.scratch/buildah/storage" --runroot "$root/.scratch/buildah/run" --storage-driver vfs)
export BUILDAH_ISOLATION=chroot
container="$(buildah "${storage[@]}" from scratch)"
trap 'buildah "${storage[@]}" rm "$container" >/dev/null 2>&1 || true' EXIT
# The same instructions as the Dockerfile's final stage, in the same order.
buildah "${storage[@]}" copy "$container" "$binary" /cleanslate >/dev/null
buildah "${storage[@]}" config \
  --label org.opencontainers.image.source=https://github.com/cleanslate/cleanslate \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  --user 65532:65532 \
  --entrypoint '["/cleanslate"]' \
  --cmd '' \
  "$container"
rm -f "$out/cleanslate.tar"
# Timestamp 0: the same binary and revision give the same archive; gzip layers, as registries serve them.
buildah "${storage[@]}" commit --quiet --rm --format oci --timestamp 0 --disable-compression=false "$container" "oci-archive:$out/cleanslate.tar" >/dev/null
trap - EXIT
echo "image: $out/cleanslate.tar, $(stat -c %s "$out/cleanslate.tar") bytes (version $version, revision $revision)"
