#!/usr/bin/env bash
# Linters that are not cargo's: shellcheck on hack/ and .ci/, hadolint on the Dockerfile, and the
# chart checks (helm lint --strict with Helm 4 and Helm 3, and schema validation of the rendered
# manifests, for every values file) when the chart is present.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$root/.tools/bin:$PATH"

echo "lint: shellcheck"
shellcheck hack/*.sh .ci/run

if [[ -f Dockerfile ]]; then
  echo "lint: hadolint"
  hadolint Dockerfile
fi

# Schema validation of rendered manifests on the oldest and the newest Kubernetes the chart is
# released for (1.26 requires fields a newer server would default).
validate() {
  local what="$1" rendered="$2" version
  if [[ -s "$rendered" ]] && grep -q '^kind:' "$rendered"; then
    for version in 1.26.0 1.36.0; do
      echo "lint: kubernetes-validate -k $version $what"
      kubernetes-validate --strict --quiet -k "$version" "$rendered"
    done
  fi
}

if [[ -f chart/Chart.yaml ]]; then
  echo "lint: yamllint"
  yamllint -d '{extends: relaxed, rules: {line-length: {max: 160}}}' chart/Chart.yaml chart/values*.yaml
  for values in chart/values.yaml chart/values-*.yaml; do
    # Helm 4 and Helm 3 (hack/setup.sh installs both): users deploy with either.
    for helm in helm helm3; do
      echo "lint: $helm lint --strict -f $values"
      "$helm" lint --strict chart -f "$values" >/dev/null
    done
    rendered="$(mktemp)"
    helm template lint-release chart -f "$values" --namespace lint >"$rendered"
    validate "$values" "$rendered"
    rm -f "$rendered"
  done
  # Every optional object at once (the CronJob, the seed, TLS mounts, pod knobs, a StatefulSet to
  # stop), so each kind is validated too.
  rendered="$(mktemp)"
  helm template lint-release chart -f chart/values-dev.yaml --namespace lint \
    --set cleanup.schedule='0 3 * * *' --set cleanup.scheduleTimeZone=Europe/Berlin \
    --set 'cleanup.etcd.seed.monorepo/lobby=open' \
    --set cleanup.etcd.tls.existingSecret=etcd-client --set cleanup.rabbitmq.tls.existingSecret=rabbitmq-ca \
    --set cleanup.priorityClassName=dev-batch --set 'cleanup.nodeSelector.pool=tools' \
    --set-json 'cleanup.quiesce.workloads=["statefulset/worker"]' >"$rendered"
  validate "every optional object" "$rendered"
  rm -f "$rendered"
fi
if [[ -f chart/README.md ]]; then
  echo "lint: chart/README.md values table"
  "$root/.tools/venv/bin/python" hack/values-table.py --check
fi
echo "lint: ok"
