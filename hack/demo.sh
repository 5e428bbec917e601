#!/usr/bin/env bash
# Sets up, starts the private RabbitMQ and etcd, seeds stale data (plus data that must survive),
# shows what `cleanslate plan` would do, runs `cleanslate purge`, and shows the before and after.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
hack/setup.sh >/dev/null
hack/services.sh up
eval "$(hack/services.sh env)"
cargo build --release --locked --quiet
bin="$root/target/release/cleanslate"

api="$CSTEST_RABBITMQ_URL/api"
auth="$CSTEST_RABBITMQ_USERNAME:$CSTEST_RABBITMQ_PASSWORD"
json='content-type: application/json'
etcdctl_() { ETCDCTL_API=3 etcdctl --endpoints "$CSTEST_ETCD_ENDPOINT" "$@"; }

echo "demo: seeding queues monorepo (dead-letters to monorepo-dlq), monorepo-dlq, and billing (must survive)"
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

show() {
  echo "--- $1"
  sleep 2 # the management API's message counts are sampled statistics
  curl -fsS -u "$auth" "$api/queues/%2F?columns=name,messages" | python3 -c \
    'import json,sys; [print("  queue %-14s %s messages" % (q["name"], q.get("messages", 0))) for q in json.load(sys.stdin)]'
  for prefix in monorepo/ monorepo/locks/ monorepo-keep/ /registry/; do
    printf '  etcd %-16s %s keys\n' "$prefix" "$(etcdctl_ get "$prefix" --prefix --keys-only | grep -c . || true)"
  done
}

export CLEANSLATE_ENVIRONMENT=dev CLEANSLATE_LOG_FORMAT=text
export CLEANSLATE_RABBITMQ_URL="$CSTEST_RABBITMQ_URL" CLEANSLATE_RABBITMQ_USERNAME="$CSTEST_RABBITMQ_USERNAME"
export CLEANSLATE_RABBITMQ_PASSWORD="$CSTEST_RABBITMQ_PASSWORD" CLEANSLATE_RABBITMQ_QUEUES=monorepo
export CLEANSLATE_ETCD_ENDPOINTS="$CSTEST_ETCD_ENDPOINT" CLEANSLATE_ETCD_PREFIXES=monorepo/
export CLEANSLATE_ETCD_PROTECTED_PREFIXES=monorepo/locks/

show "before"
echo "--- cleanslate plan"
"$bin" plan
echo "--- cleanslate purge"
"$bin" purge
show "after"
