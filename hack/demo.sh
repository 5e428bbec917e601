#!/usr/bin/env bash
# Sets up, starts the private RabbitMQ and etcd, seeds stale data (plus data that must survive),
# shows what `cleanslate plan` would do, runs `cleanslate purge`, and shows the before and after.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# Setup is quiet when it works; when it fails, its whole output explains why.
setup_log="$(mktemp)"
trap 'rm -f "$setup_log"' EXIT
if ! hack/setup.sh >"$setup_log" 2>&1; then
  cat "$setup_log" >&2
  echo "demo: hack/setup.sh failed (output above)" >&2
  exit 1
fi
hack/services.sh up
eval "$(hack/services.sh env)"
hack/build-release.sh >/dev/null
bin="$(hack/build-release.sh --path)"

api="$CSTEST_RABBITMQ_URL/api"
auth="$CSTEST_RABBITMQ_USERNAME:$CSTEST_RABBITMQ_PASSWORD"
json='content-type: application/json'
etcdctl_() { ETCDCTL_API=3 etcdctl --endpoints "$CSTEST_ETCD_ENDPOINT" "$@"; }

echo "demo: seeding queues monorepo (dead-letters to monorepo-dlq), monorepo-dlq, and billing (must survive)"
# From scratch on every run, so "before" shows exactly what this run seeded.
for queue in monorepo monorepo-dlq billing; do curl -sS -o /dev/null -u "$auth" -X DELETE "$api/queues/%2F/$queue"; done
curl -fsS -u "$auth" -X PUT -H "$json" "$api/queues/%2F/monorepo-dlq" -d '{"durable":true}'
curl -fsS -u "$auth" -X PUT -H "$json" "$api/queues/%2F/monorepo" \
  -d '{"durable":true,"arguments":{"x-dead-letter-exchange":"","x-dead-letter-routing-key":"monorepo-dlq"}}'
curl -fsS -u "$auth" -X PUT -H "$json" "$api/queues/%2F/billing" -d '{"durable":true}'
for queue in monorepo monorepo-dlq billing; do
  for i in $(seq 1 10); do
    curl -fsS -o /dev/null -u "$auth" -H "$json" "$api/exchanges/%2F/amq.default/publish" \
      -d "{\"properties\":{},\"routing_key\":\"$queue\",\"payload\":\"stale $i\",\"payload_encoding\":\"string\"}"
  done
done
echo "demo: seeding etcd keys under monorepo/ (stale), monorepo/locks/ (protected), monorepo-keep/ and /registry/ (must survive)"
for i in $(seq 1 20); do etcdctl_ put "monorepo/game/$i" "{\"board\":\"stale\"}" >/dev/null; done
etcdctl_ put monorepo/locks/leader pod-1 >/dev/null
etcdctl_ put monorepo-keep/config keep >/dev/null
etcdctl_ put /registry/pods/default/web keep >/dev/null

etcd_count() { etcdctl_ get "$1" --prefix --keys-only | grep -c . || true; }

show() {
  echo "--- $1"
  # Exact counts from the queues themselves (rabbitmqctl), not the management API's sampled
  # statistics, which can lag a purge by seconds; etcd lists the keys themselves.
  hack/services.sh ctl list_queues -q -p / name messages |
    awk '$1 == "monorepo" || $1 == "monorepo-dlq" || $1 == "billing" {printf "  queue %-14s %s messages\n", $1, $2}' | sort
  local all locks
  all="$(etcd_count monorepo/)" locks="$(etcd_count monorepo/locks/)"
  printf '  etcd %-30s %s keys\n' "monorepo/ (except locks/)" "$((all - locks))" "monorepo/locks/ (protected)" "$locks"
  for prefix in monorepo-keep/ /registry/; do
    printf '  etcd %-30s %s keys\n' "$prefix" "$(etcd_count "$prefix")"
  done
}

export CLEANSLATE_ENVIRONMENT=dev CLEANSLATE_LOG_FORMAT=text
export CLEANSLATE_RABBITMQ_URL="$CSTEST_RABBITMQ_URL" CLEANSLATE_RABBITMQ_USERNAME="$CSTEST_RABBITMQ_USERNAME"
# Both queues named, as in the requirements document: the dead-letter queue is purged after its
# source (and once more); a dead-letter queue that is not named is only reported.
export CLEANSLATE_RABBITMQ_PASSWORD="$CSTEST_RABBITMQ_PASSWORD" CLEANSLATE_RABBITMQ_QUEUES=monorepo,monorepo-dlq
export CLEANSLATE_ETCD_ENDPOINTS="$CSTEST_ETCD_ENDPOINT" CLEANSLATE_ETCD_PREFIXES=monorepo/
export CLEANSLATE_ETCD_PROTECTED_PREFIXES=monorepo/locks/

# cleanslate's counts are the management API's sampled statistics (refreshed every 5 s by
# default, `collect_statistics_interval`): wait until they show what was just seeded, so plan and
# purge print the real numbers rather than a stale 0.
# RabbitMQ 3.10 answers a one-queue request with `columns` as a list of one, later versions as the
# object: both are read.
sampled_ready() {
  curl -fsS -u "$auth" "$api/queues/%2F/$1?columns=messages_ready" | python3 -c '
import json, sys
answer = json.load(sys.stdin)
queue = (answer[0] if answer else {}) if isinstance(answer, list) else answer
print(queue.get("messages_ready", 0))'
}
for queue in monorepo monorepo-dlq; do
  for _ in $(seq 1 60); do
    [[ "$(sampled_ready "$queue")" == 10 ]] && break
    sleep 0.5
  done
done

show "before"
echo "--- note: approx_messages below are RabbitMQ's sampled statistics (refreshed every few seconds), not an exact count"
echo "--- cleanslate plan"
"$bin" plan
echo "--- cleanslate purge"
"$bin" purge
show "after"
