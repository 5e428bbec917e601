#!/usr/bin/env bash
# Starts or stops private RabbitMQ (management plugin on) and etcd instances for development and
# tests: loopback only, non-default ports, data under .scratch/. Never touches a system service.
#
#   hack/services.sh up      start both (idempotent) and wait until they answer
#   hack/services.sh down    stop both
#   hack/services.sh env     print the variables tests and demos use to find them
#   hack/services.sh ctl ... run rabbitmqctl against the private node
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scratch="$root/.scratch"

# Ports: the usual ones + 10 (RabbitMQ) or + 20000 (etcd), so a system instance can run beside these.
amqp_port="${CSTEST_AMQP_PORT:-5682}"
mgmt_port="${CSTEST_MGMT_PORT:-15682}"
mgmt_tls_port="${CSTEST_MGMT_TLS_PORT:-15683}"
dist_port="${CSTEST_DIST_PORT:-25682}"
epmd_port="${CSTEST_EPMD_PORT:-4379}"
etcd_port="${CSTEST_ETCD_PORT:-22379}"
etcd_peer_port="${CSTEST_ETCD_PEER_PORT:-22380}"
admin_user="cleanslate-admin"
# Known, non-default test password: tests assert that it never appears in any output.
admin_password="${CSTEST_RABBITMQ_PASSWORD:-rmq-Test-Secret-7f3a}"
node="cleanslate@localhost"

rabbit_env() {
  export RABBITMQ_NODENAME="$node" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$amqp_port"
  export RABBITMQ_DIST_PORT="$dist_port" ERL_EPMD_PORT="$epmd_port" ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_MNESIA_BASE="$scratch/rabbitmq/mnesia" RABBITMQ_LOG_BASE="$scratch/rabbitmq/log"
  export RABBITMQ_CONFIG_FILE="$scratch/rabbitmq/rabbitmq" RABBITMQ_ENABLED_PLUGINS_FILE="$scratch/rabbitmq/enabled_plugins"
  export RABBITMQ_PID_FILE="$scratch/rabbitmq/rabbitmq.pid" RABBITMQ_ADVANCED_CONFIG_FILE="$scratch/rabbitmq/advanced.config"
  export HOME="$scratch/rabbitmq/home"
  # The Erlang distribution port (clustering, rabbitmqctl) listens on loopback only, like the others;
  # crash dumps of the server and of rabbitmqctl go under .scratch, never into the working tree.
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export ERL_CRASH_DUMP="$scratch/rabbitmq/log/erl_crash.dump"
}

ctl() {
  rabbit_env
  /usr/lib/rabbitmq/bin/rabbitmqctl -n "$node" "$@"
}

# A private CA and a server certificate for 127.0.0.1/localhost, so the https management listener
# is verified for real by CLEANSLATE_RABBITMQ_CA_FILE.
make_tls() {
  local dir="$scratch/rabbitmq/tls"
  [[ -f "$dir/server.pem" ]] && return
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=cleanslate test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$dir/san.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 3650 -extfile "$dir/san.ext" -out "$dir/server.pem" 2>/dev/null
  chmod 644 "$dir"/*
}

rabbit_up() {
  if ctl status >/dev/null 2>&1; then
    echo "services: rabbitmq already running (management on 127.0.0.1:$mgmt_port)"
    return
  fi
  echo "services: starting rabbitmq on 127.0.0.1:$amqp_port, management 127.0.0.1:$mgmt_port"
  mkdir -p "$scratch/rabbitmq/home" "$scratch/rabbitmq/log"
  make_tls
  cat >"$scratch/rabbitmq/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$amqp_port
management.tcp.port = $mgmt_port
management.tcp.ip = 127.0.0.1
management.ssl.port = $mgmt_tls_port
management.ssl.ip = 127.0.0.1
management.ssl.cacertfile = $scratch/rabbitmq/tls/ca.pem
management.ssl.certfile = $scratch/rabbitmq/tls/server.pem
management.ssl.keyfile = $scratch/rabbitmq/tls/server.key
loopback_users = none
# Statistics every second instead of five, so tests see message counts sooner.
collect_statistics_interval = 1000
CONF
  echo '[rabbitmq_management].' >"$scratch/rabbitmq/enabled_plugins"
  [[ -f "$scratch/rabbitmq/advanced.config" ]] || echo '[].' >"$scratch/rabbitmq/advanced.config"
  [[ -f "$scratch/rabbitmq/home/.erlang.cookie" ]] || {
    head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$scratch/rabbitmq/home/.erlang.cookie"
    chmod 400 "$scratch/rabbitmq/home/.erlang.cookie"
  }
  (
    rabbit_env
    # The Debian wrapper in /usr/sbin switches to the rabbitmq user and its paths; the real script
    # honours the variables above.
    nohup /usr/lib/rabbitmq/bin/rabbitmq-server >"$scratch/rabbitmq/log/console.log" 2>&1 &
  )
  for _ in $(seq 1 120); do
    if curl -fsS -o /dev/null -u guest:guest "http://127.0.0.1:$mgmt_port/api/overview" 2>/dev/null; then
      break
    fi
    sleep 1
  done
  curl -fsS -o /dev/null -u guest:guest "http://127.0.0.1:$mgmt_port/api/overview" || {
    echo "services: rabbitmq did not come up; see $scratch/rabbitmq/log" >&2
    tail -n 30 "$scratch/rabbitmq/log/console.log" >&2 || true
    exit 1
  }
  ctl add_user "$admin_user" "$admin_password" >/dev/null 2>&1 || ctl change_password "$admin_user" "$admin_password" >/dev/null
  ctl set_user_tags "$admin_user" administrator >/dev/null
  ctl set_permissions -p / "$admin_user" '.*' '.*' '.*' >/dev/null
  echo "services: rabbitmq ready"
}

rabbit_down() {
  if ctl status >/dev/null 2>&1; then
    echo "services: stopping rabbitmq"
    ctl stop >/dev/null 2>&1 || true
  fi
  # epmd on the private port is ours too.
  pkill -f "epmd.*-port $epmd_port" 2>/dev/null || true
}

etcd_up() {
  if ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$etcd_port" endpoint health >/dev/null 2>&1; then
    echo "services: etcd already running on 127.0.0.1:$etcd_port"
    return
  fi
  echo "services: starting etcd on 127.0.0.1:$etcd_port"
  mkdir -p "$scratch/etcd"
  nohup etcd --name cleanslate --data-dir "$scratch/etcd/data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "cleanslate=http://127.0.0.1:$etcd_peer_port" --log-level warn \
    >"$scratch/etcd/etcd.log" 2>&1 &
  echo $! >"$scratch/etcd/etcd.pid"
  for _ in $(seq 1 60); do
    ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$etcd_port" endpoint health >/dev/null 2>&1 && {
      echo "services: etcd ready"
      return
    }
    sleep 0.5
  done
  echo "services: etcd did not come up; see $scratch/etcd/etcd.log" >&2
  exit 1
}

etcd_down() {
  if [[ -f "$scratch/etcd/etcd.pid" ]] && kill -0 "$(cat "$scratch/etcd/etcd.pid")" 2>/dev/null; then
    echo "services: stopping etcd"
    kill "$(cat "$scratch/etcd/etcd.pid")"
    rm -f "$scratch/etcd/etcd.pid"
  fi
}

print_env() {
  cat <<ENV
export CSTEST_RABBITMQ_URL=http://127.0.0.1:$mgmt_port
export CSTEST_RABBITMQ_TLS_URL=https://localhost:$mgmt_tls_port
export CSTEST_RABBITMQ_CA_FILE=$scratch/rabbitmq/tls/ca.pem
export CSTEST_RABBITMQ_USERNAME=$admin_user
export CSTEST_RABBITMQ_PASSWORD=$admin_password
export CSTEST_AMQP_PORT=$amqp_port
export CSTEST_ETCD_ENDPOINT=http://127.0.0.1:$etcd_port
ENV
}

case "${1:-}" in
  up) rabbit_up & rabbit_pid=$!; etcd_up; wait "$rabbit_pid" ;;
  down) rabbit_down; etcd_down ;;
  env) print_env ;;
  ctl) shift; ctl "$@" ;;
  *) echo "usage: $0 up|down|env|ctl ARGS..." >&2; exit 64 ;;
esac
