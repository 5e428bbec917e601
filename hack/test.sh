#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: install what is missing, start the private RabbitMQ
# and etcd, then formatting, lints, every test against the real services, and a benchmark smoke run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

echo "== setup"
hack/setup.sh
export PATH="$root/.tools/bin:$PATH"

echo "== services"
hack/services.sh up
eval "$(hack/services.sh env)"

echo "== rustfmt"
cargo fmt --check

echo "== clippy"
cargo clippy --locked --all-targets -- -D warnings

echo "== linters (shell, Dockerfile, chart, manifests)"
hack/lint.sh

echo "== release build (the Dockerfile's command)"
hack/build-release.sh

echo "== image (the Dockerfile's final stage, with buildah; tests/image.rs runs it)"
CLEANSLATE_BINARY=target/x86_64-unknown-linux-gnu/release/cleanslate hack/image.sh

echo "== tests"
test_log="$(mktemp)"
trap 'rm -f "$test_log"' EXIT
# Helm 4 (.tools/bin/helm) runs with the whole suite; the chart checks and the end-to-end run again
# with Helm 3 (CSTEST_HELM), so both majors render and install the chart in every CI run.
cargo test --locked 2>&1 | tee "$test_log"
echo "== chart and end-to-end tests with Helm 3 ($("$root/.tools/bin/helm3" version --template '{{.Version}}'))"
CSTEST_HELM="$root/.tools/bin/helm3" cargo test --locked --test chart --test end_to_end 2>&1 | tee -a "$test_log"

if [[ -x hack/bench.sh ]]; then
  echo "== benchmark smoke run"
  hack/bench.sh --smoke
fi
echo "== all checks passed"
# One closing line with the totals of every test binary (cargo's last line is the doc-test run).
awk '/^test result:/ {passed += $4; failed += $6} END {printf "tests: %d passed, %d failed\n", passed, failed}' "$test_log"
