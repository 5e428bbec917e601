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
    if [[ -s "$rendered" ]] && grep -q '^kind:' "$rendered"; then
      echo "lint: kubernetes-validate $values"
      kubernetes-validate --strict --quiet "$rendered"
    fi
    rm -f "$rendered"
  done
fi
if [[ -f chart/README.md ]]; then
  echo "lint: chart/README.md values table"
  "$root/.tools/venv/bin/python" hack/values-table.py --check
fi
echo "lint: ok"
