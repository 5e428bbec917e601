#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: install what is missing, start the private services
# of all three server generations, then formatting, lints, every test against the real services, and
# a benchmark smoke run.
#
# Generations (hack/services.sh): "current" is RabbitMQ 3.10 + etcd 3.4 (Debian bookworm), "next"
# is RabbitMQ 4.0 + etcd 3.5 (Debian trixie, run from a debootstrap root), with a RabbitMQ 4 node
# with statistics off and a three-node cluster, and "newest" is RabbitMQ 4.3 + etcd 3.5.30 (Debian
# sid, run the same way; one RabbitMQ node). Every test runs against the first; the store tests
# (RabbitMQ, etcd, faults, command line) and tests/rabbitmq4.rs run again against the second, then
# against the third (after the Helm 3 chart run, not beside it and not beside each other: the fault
# tests hold deadlines within 10%). The second and third generations start in the background while
# the first one's checks run. Each phase prints how long it took.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
phase_started=$SECONDS
phase() { # NAME: closes the previous phase with its duration, opens the next
  echo "   ($((SECONDS - phase_started)) s)"
  phase_started=$SECONDS
  echo "== $1"
}

echo "== setup"
hack/setup.sh
export PATH="$root/.tools/bin:$PATH"

phase "services (the second and third generations start in the background: their first start makes a trixie or sid root)"
scratch_logs="$(mktemp -d)"
services_next="" services_newest=""
stop_background() { # PID NAME LOG: stops a background start still running and shows what it said
  if [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; then
    # Its own process group (setsid): debootstrap and the node starts go with it.
    kill -- "-$1" 2>/dev/null || kill "$1" 2>/dev/null || true
    echo "test: stopped the background start of the $2 generation; its log:" >&2
    cat "$3" >&2 || true
  fi
}
cleanup() {
  # A failure anywhere must not leave a background start (debootstrap, RabbitMQ nodes) running
  # unseen: stop it and show what it said.
  stop_background "$services_next" second "$scratch_logs/services-next.log"
  stop_background "$services_newest" third "$scratch_logs/services-newest.log"
  rm -rf "$scratch_logs"
}
trap cleanup EXIT
setsid hack/services.sh up next >"$scratch_logs/services-next.log" 2>&1 &
services_next=$!
# The third generation starts once the second is up, not beside it: two debootstraps and six Erlang
# VMs at once would crowd the first generation's timed fault tests on two cores.
# shellcheck disable=SC2016 # expanded by the inner bash
setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec hack/services.sh up newest' _ "$services_next" \
  >"$scratch_logs/services-newest.log" 2>&1 &
services_newest=$!
hack/services.sh up current
eval "$(hack/services.sh env current)"

phase "rustfmt"
cargo fmt --check

phase "clippy"
cargo clippy --locked --all-targets -- -D warnings

phase "linters (shell, Dockerfile, chart, manifests)"
hack/lint.sh

phase "release build (the Dockerfile's command)"
hack/build-release.sh

phase "demo (the README's first command: it must run clean, with no traceback)"
demo_log="$scratch_logs/demo.log"
if ! hack/demo.sh >"$demo_log" 2>&1 || grep -q "Traceback" "$demo_log"; then
  cat "$demo_log"
  echo "test: hack/demo.sh failed or printed a traceback (output above)" >&2
  exit 1
fi
tail -n 8 "$demo_log"

phase "image (the Dockerfile's final stage, with buildah; tests/image.rs runs it)"
CLEANSLATE_BINARY="$(hack/build-release.sh --path)" hack/image.sh

phase "image built with CARGO_TARGET_DIR elsewhere is the same image"
CARGO_TARGET_DIR="$root/.scratch/elsewhere-target" CLEANSLATE_IMAGE_OUT="$root/.scratch/image-elsewhere" hack/image.sh
hack/same-image.py target/image/cleanslate.tar .scratch/image-elsewhere/cleanslate.tar

phase "tests against RabbitMQ $CSTEST_RABBITMQ_VERSION and etcd $("$CSTEST_ETCD_BIN_DIR/etcd" --version | awk 'NR == 1 {print $3}')"
test_log="$scratch_logs/tests.log"
# Helm 4 (.tools/bin/helm) runs with the whole suite; the chart checks and the end-to-end run again
# with Helm 3 (CSTEST_HELM), so both majors render and install the chart in every CI run.
cargo test --locked 2>&1 | tee "$test_log"

phase "chart and end-to-end tests with Helm 3 ($("$root/.tools/bin/helm3" version --template '{{.Version}}'))"
CSTEST_HELM="$root/.tools/bin/helm3" cargo test --locked --test chart --test end_to_end --test lifecycle --test baseline 2>&1 | tee -a "$test_log"

# The store tests again, against another generation: ENV is what `hack/services.sh env GENERATION`
# printed; EXTRA names more test targets (`--test rabbitmq4` where the generation has the stats-off
# node and the cluster those tests need). A subshell, so its variables and PATH stay in there.
store_tests() ( # ENV [EXTRA...]
  eval "$1"
  shift
  # Throwaway etcd servers in the tests run the generation's own etcd from PATH.
  export PATH="$CSTEST_ETCD_BIN_DIR:$PATH"
  echo "against RabbitMQ $CSTEST_RABBITMQ_VERSION and etcd $(etcd --version | awk 'NR == 1 {print $3}')"
  cargo test --locked --test rabbitmq --test etcd --test faults --test cli "$@" -- --include-ignored
)

# Waits for a background start of GENERATION (its PID, its log) and shows what it said.
generation_up() { # GENERATION PID
  local status=0
  wait "$2" || status=$?
  cat "$scratch_logs/services-$1.log"
  if ((status)); then
    echo "test: hack/services.sh up $1 failed (exit $status)" >&2
    exit 1
  fi
}

phase "second generation up"
generation_up next "$services_next"
services_next=""
next_env="$(hack/services.sh env next)"

phase "store tests against the second generation"
store_tests "$next_env" --test rabbitmq4 2>&1 | tee -a "$test_log"

phase "third generation up"
generation_up newest "$services_newest"
services_newest=""
newest_env="$(hack/services.sh env newest)"

phase "store tests against the third generation"
store_tests "$newest_env" 2>&1 | tee -a "$test_log"

if [[ -x hack/bench.sh ]]; then
  phase "benchmark smoke run, both generations"
  hack/bench.sh --smoke
  hack/bench.sh --smoke --gen next
fi
phase "all checks passed"
# One closing line with the totals of every test binary (cargo's last line is the doc-test run).
# (tests/rabbitmq4.rs counts once as ignored, in the first pass, and once more in each later pass.)
awk '/^test result:/ {passed += $4; failed += $6} END {printf "tests: %d passed, %d failed\n", passed, failed}' "$test_log"
