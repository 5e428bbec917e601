#!/usr/bin/env bash
# Starts or stops private RabbitMQ (management plugin on) and etcd instances for development and
# tests: loopback only, non-default ports, data under .scratch/. Never touches a system service.
# Three generations: "current" is bookworm's RabbitMQ 3.10 and etcd 3.4 (the default everywhere);
# "next" is trixie's RabbitMQ 4.0 (a node, a node with statistics off, a three-node cluster) and
# etcd 3.5, run from a trixie root made with debootstrap (root needed; re-runs itself with sudo);
# "newest" is sid's RabbitMQ 4.3 (one node) and etcd 3.5.30, run the same way from a sid root.
#
#   hack/services.sh up [current|next|newest|all]   start (idempotent) and wait until they answer
#   hack/services.sh down [current|next|newest|all] stop (default: all)
#   hack/services.sh env [current|next|newest]      print the variables tests and demos use to find them
#   hack/services.sh ctl ...                        rabbitmqctl against the RabbitMQ 3.10 node
#   hack/services.sh ctl4 ...                       rabbitmqctl against the RabbitMQ 4.0 node
#   hack/services.sh cluster stop|start|kill N      stop, start or SIGKILL cluster node N (1-3) and wait until done
#   hack/services.sh cluster ctl N ...              rabbitmqctl against cluster node N
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
make_tls() { # DIR
  local dir="$1"
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
  make_tls "$scratch/rabbitmq/tls"
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
    # shutdown (unlike stop) returns once the OS process is gone, so epmd below has no node left.
    ctl shutdown >/dev/null 2>&1 || true
  fi
  # epmd on the private port is ours too. erl starts it as a bare `epmd -daemon` (the port comes from
  # ERL_EPMD_PORT), so it is asked to quit on that port rather than looked for by its command line.
  ERL_EPMD_PORT="$epmd_port" epmd -kill >/dev/null 2>&1 || true
}

# etcd by absolute path: the chroot generations' tests put their own etcd first in PATH.
etcd_up() { # LABEL DIR NAME BIN_DIR CLIENT_PORT PEER_PORT
  local label="$1" dir="$2" name="$3" bin="$4" port="$5" peer_port="$6"
  if ETCDCTL_API=3 "$bin/etcdctl" --endpoints "http://127.0.0.1:$port" endpoint health >/dev/null 2>&1; then
    echo "services: $label already running on 127.0.0.1:$port"
    return
  fi
  echo "services: starting $label on 127.0.0.1:$port"
  mkdir -p "$dir"
  nohup "$bin/etcd" --name "$name" --data-dir "$dir/data" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "$name=http://127.0.0.1:$peer_port" --log-level warn \
    >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  for _ in $(seq 1 60); do
    ETCDCTL_API=3 "$bin/etcdctl" --endpoints "http://127.0.0.1:$port" endpoint health >/dev/null 2>&1 && {
      echo "services: $label ready"
      return
    }
    sleep 0.5
  done
  echo "services: $label did not come up; see $dir/etcd.log" >&2
  exit 1
}

etcd_down() { # LABEL DIR: stops it and waits until the process is gone
  local label="$1" dir="$2" pid
  [[ -f "$dir/etcd.pid" ]] || return 0
  pid="$(cat "$dir/etcd.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    echo "services: stopping $label"
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$dir/etcd.pid"
}

# The version the node reports, or, while it is down, the one installed (the directory name is it).
rabbit_version() { # MGMT_URL LIB_DIR
  local version dir
  version="$(curl -fsS -u "$admin_user:$admin_password" "$1/api/overview?columns=rabbitmq_version" 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["rabbitmq_version"])' 2>/dev/null)" || version=""
  if [[ -z "$version" ]]; then
    for dir in "$2"/rabbitmq_server-*; do [[ -d "$dir" ]] && version="${dir##*/rabbitmq_server-}"; done
  fi
  echo "$version"
}

print_env() {
  cat <<ENV
export CSTEST_GENERATION=current
export CSTEST_RABBITMQ_VERSION=$(rabbit_version "http://127.0.0.1:$mgmt_port" /usr/lib/rabbitmq/lib)
export CSTEST_RABBITMQ_URL=http://127.0.0.1:$mgmt_port
export CSTEST_RABBITMQ_TLS_URL=https://localhost:$mgmt_tls_port
export CSTEST_RABBITMQ_CA_FILE=$scratch/rabbitmq/tls/ca.pem
export CSTEST_RABBITMQ_USERNAME=$admin_user
export CSTEST_RABBITMQ_PASSWORD=$admin_password
export CSTEST_AMQP_PORT=$amqp_port
export CSTEST_ETCD_ENDPOINT=http://127.0.0.1:$etcd_port
export CSTEST_ETCD_BIN_DIR=/usr/bin
ENV
}

# --- The chroot generations: "next" (Debian trixie) and "newest" (Debian sid) -------------------------
# bookworm has neither RabbitMQ 4 nor etcd 3.5 and there is no container runtime here, so they come
# from a root per Debian suite, made by debootstrap. RabbitMQ runs inside it with chroot, as root and
# straight from /usr/lib/rabbitmq/bin like the bookworm node (the Debian wrapper would switch to the
# rabbitmq user and its paths). etcd is a Go binary that needs nothing newer than bookworm's glibc, so
# it runs from the root on the host, through .scratch/SUITE-bin/.
# Every chrooted command gets its own private mount namespace with /proc and /dev mounted there: no
# mount is ever visible on the host, so there is nothing to unmount after a crash and no
# `rm -rf .scratch` can reach the host's /dev through the root.
# The functions below work on the generation that gen_use chose. "next" (trixie: RabbitMQ 4.0, etcd
# 3.5) has a node, a node with statistics off and a three-node cluster; "newest" (sid: RabbitMQ 4.3,
# etcd 3.5.30) has one node only, with the same admin user and https listener. Each has its own epmd
# and etcd, so one generation starts and stops without touching the other.
debian_mirror="${CSTEST_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
gen_state=/var/lib/cleanslate # inside the root: the nodes only see paths in there
cluster_nodes=(c1 c2 c3)

gen_use() { # next|newest: sets the generation's suite, root, ports, nodes and labels
  gen="$1"
  case "$gen" in
    next)
      suite=trixie gen_epmd_port=4389 gen_mgmt_tls_port=15783 gen_etcd_port=22479 gen_etcd_peer_port=22480
      gen_standalone=(single nostats) gen_cluster=true rabbit_label="rabbitmq 4" etcd_label="etcd 3.5"
      ;;
    newest)
      suite=sid gen_epmd_port=4399 gen_mgmt_tls_port=15703 gen_etcd_port=22579 gen_etcd_peer_port=22580
      gen_standalone=(single) gen_cluster=false rabbit_label="rabbitmq (sid)" etcd_label="etcd (sid)"
      ;;
    *) echo "services: no generation $1" >&2; exit 64 ;;
  esac
  gen_nodes=("${gen_standalone[@]}")
  [[ "$gen_cluster" == false ]] || gen_nodes+=("${cluster_nodes[@]}")
  gen_root="$scratch/$suite-root"
  gen_bin="$scratch/$suite-bin"
  gen_host_state="$gen_root$gen_state"
  gen_etcd_dir="$scratch/etcd-$gen"
}

# chroot, mount namespaces and debootstrap need root: the chroot generations' commands re-run the
# whole command with sudo (keeping the one setting it reads from the environment).
need_root() { # the script's arguments
  [[ $(id -u) -eq 0 ]] || exec sudo --preserve-env=CSTEST_RABBITMQ_PASSWORD,CSTEST_DEBIAN_MIRROR -- "${BASH_SOURCE[0]}" "$@"
}

gen_node() { # KEY: "ERLANG_NODE AMQP_PORT MGMT_PORT DIST_PORT" of a RabbitMQ node of the generation
  case "$gen:$1" in
    next:single) echo "cs4@localhost 5782 15782 25782" ;;
    next:nostats) echo "cs4nostats@localhost 5792 15792 25792" ;;
    next:c1) echo "cs4a@localhost 5801 15801 25801" ;;
    next:c2) echo "cs4b@localhost 5802 15802 25802" ;;
    next:c3) echo "cs4c@localhost 5803 15803 25803" ;;
    newest:single) echo "csnewest@localhost 5702 15702 25702" ;;
    *) echo "services: the $gen generation has no RabbitMQ node $1" >&2; exit 64 ;;
  esac
}
node_name() { gen_node "$1" | cut -d' ' -f1; }
node_amqp_port() { gen_node "$1" | cut -d' ' -f2; }
node_mgmt_port() { gen_node "$1" | cut -d' ' -f3; }
node_mgmt_url() { echo "http://127.0.0.1:$(node_mgmt_port "$1")"; }
node_dist_port() { gen_node "$1" | cut -d' ' -f4; }

node_env() { # KEY: the whole environment (VAR=value lines) of the node and of rabbitmqctl for it
  local dir="$gen_state/$1" dist
  dist="$(node_dist_port "$1")"
  # One HOME, so one Erlang cookie for all nodes of the generation (the cluster needs a shared one);
  # the CLI's own distribution ports follow the node's instead of all CLIs sharing 35672-35682;
  # everything Erlang listens on loopback only, its epmd included.
  cat <<ENV
PATH=/usr/sbin:/usr/bin:/sbin:/bin
LC_ALL=C.UTF-8
HOME=$gen_state/home
RABBITMQ_NODENAME=$(node_name "$1")
RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
RABBITMQ_NODE_PORT=$(node_amqp_port "$1")
RABBITMQ_DIST_PORT=$dist
RABBITMQ_CTL_DIST_PORT_MIN=$((dist + 10000))
RABBITMQ_CTL_DIST_PORT_MAX=$((dist + 10010))
ERL_EPMD_PORT=$gen_epmd_port
ERL_EPMD_ADDRESS=127.0.0.1
RABBITMQ_MNESIA_BASE=$dir/mnesia
RABBITMQ_LOG_BASE=$dir/log
RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf
RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
RABBITMQ_PID_FILE=$dir/rabbitmq.pid
RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}
RABBITMQ_CTL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}
ERL_CRASH_DUMP=$dir/log/erl_crash.dump
ENV
}

# Sets root_cmd: the prefix that runs a command inside the generation's root with KEY's environment
# (and nothing of the caller's), in a private mount namespace with /proc and /dev.
root_cmd_for() { # KEY
  local -a vars
  mapfile -t vars < <(node_env "$1")
  # shellcheck disable=SC2016 # expanded by the inner sh
  root_cmd=(env -i "${vars[@]}" unshare --mount --propagation private
    sh -c 'mount -t proc proc "$0/proc" && mount --bind /dev "$0/dev" && exec chroot "$0" "$@"' "$gen_root")
}

in_root() { # KEY CMD ARGS...
  root_cmd_for "$1"
  shift
  "${root_cmd[@]}" "$@"
}

node_ctl() { # KEY ARGS...: rabbitmqctl against that node
  in_root "$1" /usr/lib/rabbitmq/bin/rabbitmqctl -n "$(node_name "$1")" "${@:2}"
}

# The root appears under its final name only once debootstrap has finished, so an interrupted run is
# never mistaken for a root; it is made once and reused (the nodes' data lives in it too).
gen_root_make() {
  [[ -d "$gen_root" ]] && return
  local partial="$gen_root.partial" started="$SECONDS" mnt log="$scratch/debootstrap-$suite.log"
  if [[ -e "$partial" ]]; then
    # An interrupted debootstrap may leave /proc, /sys or a bound /dev mounted in its half-made root:
    # unmount them first, and never let rm cross into another file system.
    findmnt -rn -o TARGET | awk -v p="$partial/" 'index($0, p) == 1' | sort -r | while read -r mnt; do
      umount -l "$mnt"
    done
    rm -rf --one-file-system "$partial"
  fi
  echo "services: making the $suite root with debootstrap (once; a few minutes, log in $log)"
  mkdir -p "$scratch"
  # debootstrap checks the Release file's signature, not its Valid-Until, so a sid Release past that
  # date (the archive seen from here is not always fresh) still bootstraps.
  if ! debootstrap --variant=minbase --include=rabbitmq-server,etcd-server,etcd-client \
    "$suite" "$partial" "$debian_mirror" >"$log" 2>&1; then
    echo "services: debootstrap failed; see $log" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
  # The nodes are name@localhost: Erlang finds localhost in the root's /etc/hosts, which minbase
  # does not write.
  grep -qw localhost "$partial/etc/hosts" 2>/dev/null || printf '127.0.0.1 localhost\n::1 localhost\n' >>"$partial/etc/hosts"
  # For apt run by hand inside the root: the same Valid-Until leeway as debootstrap's.
  echo 'Acquire::Check-Valid-Until "false";' >"$partial/etc/apt/apt.conf.d/99cleanslate-valid-until"
  mv "$partial" "$gen_root"
  echo "services: $suite root made in $((SECONDS - started)) s"
}

# Tests spawn throwaway etcd processes from PATH: this directory goes first in PATH for the
# generation's runs.
gen_bin_link() {
  mkdir -p "$gen_bin"
  local tool
  for tool in etcd etcdctl etcdutl; do
    ln -sfn "../${gen_root##*/}/usr/bin/$tool" "$gen_bin/$tool"
  done
  "$gen_bin/etcd" --version >/dev/null || {
    echo "services: $suite's etcd does not run on this host (ldd $gen_bin/etcd)" >&2
    exit 1
  }
}

etcd_version() { # BIN_DIR
  "$1/etcd" --version 2>/dev/null | awk 'NR == 1 {print $3}'
}

# What all RabbitMQ nodes of the generation share: the Erlang cookie and the TLS files (written
# before any node starts, so no two nodes race to create a cookie).
gen_shared_files() {
  mkdir -p "$gen_host_state/home"
  [[ -f "$gen_host_state/home/.erlang.cookie" ]] || {
    head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$gen_host_state/home/.erlang.cookie"
    chmod 400 "$gen_host_state/home/.erlang.cookie"
  }
  make_tls "$gen_host_state/tls"
}

node_config() { # KEY: rabbitmq.conf and the plugin files of that node
  local dir="$gen_host_state/$1"
  mkdir -p "$dir/log"
  cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$(node_amqp_port "$1")
management.tcp.port = $(node_mgmt_port "$1")
management.tcp.ip = 127.0.0.1
loopback_users = none
# Statistics every second instead of five, so tests see message counts sooner.
collect_statistics_interval = 1000
CONF
  case "$1" in
    single) cat >>"$dir/rabbitmq.conf" <<CONF
management.ssl.port = $gen_mgmt_tls_port
management.ssl.ip = 127.0.0.1
management.ssl.cacertfile = $gen_state/tls/ca.pem
management.ssl.certfile = $gen_state/tls/server.pem
management.ssl.keyfile = $gen_state/tls/server.key
CONF
      ;;
    nostats) cat >>"$dir/rabbitmq.conf" <<CONF
# No statistics database: queue listings carry only what the queues report themselves.
management.disable_stats = true
management.enable_queue_totals = true
CONF
      ;;
  esac
  echo '[rabbitmq_management].' >"$dir/enabled_plugins"
  [[ -f "$dir/advanced.config" ]] || echo '[].' >"$dir/advanced.config"
}

node_pid() { # KEY: prints the node's OS pid; fails when it is not running
  local file="$gen_host_state/$1/rabbitmq.pid" pid
  [[ -s "$file" ]] || return 1
  pid="$(cat "$file")"
  # A pid file outlives a crash or a reboot: only a live process of this very node counts.
  tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qx "RABBITMQ_NODENAME=$(node_name "$1")" || return 1
  echo "$pid"
}

mgmt_answers() { # URL: any HTTP answer at all (401 included) means the management listener is up
  [[ "$(curl -s -o /dev/null -w '%{http_code}' "$1/api/overview")" != 000 ]]
}

mgmt_auth() { # URL: the admin's credentials once it exists there, guest's before
  if curl -fsS -o /dev/null -u "$admin_user:$admin_password" "$1/api/whoami" 2>/dev/null; then
    echo "$admin_user:$admin_password"
  else
    echo guest:guest
  fi
}

mgmt_running_nodes() { # URL: the cluster's running nodes as that node sees them, sorted, one a line
  curl -fsS -u "$(mgmt_auth "$1")" "$1/api/nodes?columns=name,running" |
    python3 -c 'import json, sys; print("\n".join(sorted(n["name"] for n in json.load(sys.stdin) if n.get("running"))))'
}

node_start() { # KEY: starts the node unless it runs, then waits until its management API answers
  local key="$1" name dir launcher=""
  name="$(node_name "$key")"
  dir="$gen_host_state/$key"
  if node_pid "$key" >/dev/null; then
    echo "services: $rabbit_label $name already running"
  else
    echo "services: starting $rabbit_label $name (amqp 127.0.0.1:$(node_amqp_port "$key"), management $(node_mgmt_url "$key"))"
    node_config "$key"
    root_cmd_for "$key"
    "${root_cmd[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server </dev/null >"$dir/log/console.log" 2>&1 &
    launcher=$!
  fi
  for _ in $(seq 1 360); do
    mgmt_answers "$(node_mgmt_url "$key")" && return
    # A node that exits while booting (a port in use, a bad config) fails at once, not after minutes.
    if [[ -n "$launcher" ]] && ! kill -0 "$launcher" 2>/dev/null; then break; fi
    sleep 0.5
  done
  echo "services: $rabbit_label $name did not come up; see $dir/log" >&2
  tail -n 30 "$dir/log/console.log" >&2 || true
  return 1
}

node_admin() { # KEY: the admin user with its password, tag and permissions (users are cluster-wide)
  local url auth
  url="$(node_mgmt_url "$1")"
  auth="$(mgmt_auth "$url")"
  # The HTTP API rather than rabbitmqctl: each CLI call costs a second or two of CPU on this machine.
  curl -fsS -o /dev/null -u "$auth" -X PUT -H 'content-type: application/json' "$url/api/users/$admin_user" \
    -d "{\"password\":\"$admin_password\",\"tags\":\"administrator\"}"
  curl -fsS -o /dev/null -u "$admin_user:$admin_password" -X PUT -H 'content-type: application/json' \
    "$url/api/permissions/%2F/$admin_user" -d '{"configure":".*","write":".*","read":".*"}'
}

node_up() { # KEY: a standalone node, started and with its admin user
  node_start "$1"
  node_admin "$1"
  echo "services: $rabbit_label $(node_name "$1") ready"
}

node_stop() { # KEY: stops the node and returns once its OS process is gone
  local pid
  pid="$(node_pid "$1")" || return 0
  echo "services: stopping $rabbit_label $(node_name "$1")"
  # shutdown (unlike stop) waits for the OS process to exit; a node that does not answer is killed.
  node_ctl "$1" shutdown >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

cluster_join() { # KEY: joins node 1 unless already a member (membership survives down/up)
  local url first
  url="$(node_mgmt_url "$1")"
  first="$(node_name c1)"
  if curl -fsS -u "$(mgmt_auth "$url")" "$url/api/nodes?columns=name" | grep -q "\"$first\""; then
    return
  fi
  echo "services: $rabbit_label $(node_name "$1") joins $first"
  node_ctl "$1" stop_app >/dev/null
  node_ctl "$1" join_cluster "$first" >/dev/null
  node_ctl "$1" start_app >/dev/null
}

# Healthy: every cluster node whose process runs answers with the admin user and sees exactly the
# running ones as running.
cluster_wait_healthy() {
  local key expected url ok
  for _ in $(seq 1 240); do
    expected=""
    for key in "${cluster_nodes[@]}"; do
      node_pid "$key" >/dev/null && expected+="$(node_name "$key")"$'\n'
    done
    ok=true
    for key in "${cluster_nodes[@]}"; do
      node_pid "$key" >/dev/null || continue
      url="$(node_mgmt_url "$key")"
      [[ "$(mgmt_running_nodes "$url" 2>/dev/null)"$'\n' == "$expected" ]] || { ok=false; break; }
    done
    [[ "$ok" == true ]] && return
    sleep 0.5
  done
  echo "services: the $rabbit_label cluster did not settle (running: $(tr '\n' ' ' <<<"$expected"))" >&2
  return 1
}

cluster_up() { # the three nodes side by side, then 2 and 3 join 1 (one at a time: joins are not concurrent-safe)
  local key pids=()
  for key in "${cluster_nodes[@]}"; do
    node_start "$key" &
    pids+=($!)
  done
  wait_all "${pids[@]}"
  node_admin c1
  cluster_join c2
  cluster_join c3
  cluster_wait_healthy
  echo "services: $rabbit_label cluster ready ($(node_name c1), $(node_name c2), $(node_name c3))"
}

cluster_node_key() { # N (1-3)
  [[ "$1" =~ ^[123]$ ]] || { echo "services: cluster node N is 1, 2 or 3, not '$1'" >&2; exit 64; }
  echo "c$1"
}

# Stopping the whole node (not only the app) makes classic queues whose home it is unavailable
# through the other nodes, and the command returns only once the others see it down.
cluster_stop() { # N [kill]: a clean shutdown, or with "kill" a SIGKILL of the node's OS process (a crash)
  local key name other seen pid
  key="$(cluster_node_key "$1")"
  name="$(node_name "$key")"
  if [[ "${2:-}" == kill ]]; then
    pid="$(node_pid "$key")" || return 0
    echo "services: killing $rabbit_label $name (SIGKILL)"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  else
    node_stop "$key"
  fi
  for _ in $(seq 1 100); do
    seen=false
    for other in "${cluster_nodes[@]}"; do
      node_pid "$other" >/dev/null || continue
      grep -qx "$name" < <(mgmt_running_nodes "$(node_mgmt_url "$other")" 2>/dev/null) && seen=true
    done
    [[ "$seen" == false ]] && { echo "services: $rabbit_label $name stopped"; return; }
    sleep 0.2
  done
  echo "services: the cluster still sees $name running" >&2
  return 1
}

cluster_start() { # N: back in the cluster, its queues recovered and its management API answering
  local key
  key="$(cluster_node_key "$1")"
  node_start "$key"
  cluster_wait_healthy
  echo "services: $rabbit_label $(node_name "$key") back in the cluster"
}

wait_all() { # PID...: waits for every one; fails if any failed
  local pid status=0
  for pid in "$@"; do wait "$pid" || status=1; done
  return "$status"
}

gen_up() {
  local started="$SECONDS" pids=() key
  gen_root_make
  gen_bin_link
  gen_shared_files
  # Side by side: the Erlang VMs boot in about the time of the slowest.
  for key in "${gen_standalone[@]}"; do
    node_up "$key" &
    pids+=($!)
  done
  if [[ "$gen_cluster" == true ]]; then
    cluster_up &
    pids+=($!)
  fi
  etcd_up "$etcd_label" "$gen_etcd_dir" "cleanslate-$gen" "$gen_bin" "$gen_etcd_port" "$gen_etcd_peer_port" &
  pids+=($!)
  wait_all "${pids[@]}" || { echo "services: the $gen generation did not come up" >&2; exit 1; }
  echo "services: $gen generation (RabbitMQ $(rabbit_version "$(node_mgmt_url single)" "$gen_root/usr/lib/rabbitmq/lib"), etcd $(etcd_version "$gen_bin")) ready in $((SECONDS - started)) s"
}

gen_down() {
  local key pids=()
  [[ -d "$gen_root" ]] || return 0
  for key in "${gen_nodes[@]}"; do
    node_stop "$key" &
    pids+=($!)
  done
  wait_all "${pids[@]}" || true
  # The first node started this epmd (on the generation's own port, inside the root); with no node
  # left it quits.
  in_root single epmd -kill >/dev/null 2>&1 || true
  etcd_down "$etcd_label" "$gen_etcd_dir"
}

# The same variables as print_env, plus those of the servers only the generation has; those it does
# not have are unset, so a test that needs them fails with how to start them rather than using
# another generation's left in the shell.
print_env_gen() {
  local key urls=() ports=() names=()
  cat <<ENV
export CSTEST_GENERATION=$gen
export CSTEST_RABBITMQ_VERSION=$(rabbit_version "$(node_mgmt_url single)" "$gen_root/usr/lib/rabbitmq/lib")
export CSTEST_RABBITMQ_URL=$(node_mgmt_url single)
export CSTEST_RABBITMQ_TLS_URL=https://localhost:$gen_mgmt_tls_port
export CSTEST_RABBITMQ_CA_FILE=$gen_host_state/tls/ca.pem
export CSTEST_RABBITMQ_USERNAME=$admin_user
export CSTEST_RABBITMQ_PASSWORD=$admin_password
export CSTEST_AMQP_PORT=$(node_amqp_port single)
export CSTEST_ETCD_ENDPOINT=http://127.0.0.1:$gen_etcd_port
export CSTEST_ETCD_BIN_DIR=$gen_bin
ENV
  if [[ " ${gen_standalone[*]} " == *" nostats "* ]]; then
    cat <<ENV
export CSTEST_RABBITMQ_NOSTATS_URL=$(node_mgmt_url nostats)
export CSTEST_RABBITMQ_NOSTATS_AMQP_PORT=$(node_amqp_port nostats)
ENV
  else
    echo "unset CSTEST_RABBITMQ_NOSTATS_URL CSTEST_RABBITMQ_NOSTATS_AMQP_PORT"
  fi
  if [[ "$gen_cluster" == true ]]; then
    for key in "${cluster_nodes[@]}"; do
      urls+=("$(node_mgmt_url "$key")")
      ports+=("$(node_amqp_port "$key")")
      names+=("$(node_name "$key")")
    done
    cat <<ENV
export CSTEST_RABBITMQ_CLUSTER_URLS=$(IFS=,; echo "${urls[*]}")
export CSTEST_RABBITMQ_CLUSTER_AMQP_PORTS=$(IFS=,; echo "${ports[*]}")
export CSTEST_RABBITMQ_CLUSTER_NODES=$(IFS=,; echo "${names[*]}")
ENV
  else
    echo "unset CSTEST_RABBITMQ_CLUSTER_URLS CSTEST_RABBITMQ_CLUSTER_AMQP_PORTS CSTEST_RABBITMQ_CLUSTER_NODES"
  fi
}

current_up() {
  rabbit_up &
  local rabbit_pid=$!
  etcd_up etcd "$scratch/etcd" cleanslate /usr/bin "$etcd_port" "$etcd_peer_port"
  wait "$rabbit_pid"
}

current_down() {
  rabbit_down
  etcd_down etcd "$scratch/etcd"
}

usage() {
  echo "usage: $0 up|down [current|next|newest|all] | env [current|next|newest] | ctl ARGS... | ctl4 ARGS... | cluster stop|start N | cluster ctl N ARGS..." >&2
  exit 64
}

case "${1:-}:${2:-}" in
  up: | up:current) current_up ;;
  up:next | up:newest) need_root "$@"; gen_use "$2"; gen_up ;;
  up:all)
    "$0" up current & current_pid=$!
    "$0" up newest & newest_pid=$!
    "$0" up next
    wait_all "$current_pid" "$newest_pid"
    ;;
  down:current) current_down ;;
  down:next | down:newest) need_root "$@"; gen_use "$2"; gen_down ;;
  down: | down:all)
    current_down
    # Only the chroot generations that were ever set up, so a plain `down` needs no root otherwise.
    for g in next newest; do
      gen_use "$g"
      if [[ -d "$gen_root" ]]; then "$0" down "$g"; fi
    done
    ;;
  env: | env:current) print_env ;;
  env:next | env:newest) gen_use "$2"; print_env_gen ;;
  ctl:*) shift; ctl "$@" ;;
  ctl4:*) need_root "$@"; gen_use next; shift; node_ctl single "$@" ;;
  cluster:stop) need_root "$@"; gen_use next; cluster_stop "${3:-}" ;;
  cluster:start) need_root "$@"; gen_use next; cluster_start "${3:-}" ;;
  cluster:kill) need_root "$@"; gen_use next; cluster_stop "${3:-}" kill ;;
  cluster:ctl) need_root "$@"; gen_use next; key="$(cluster_node_key "${3:-}")"; node_ctl "$key" "${@:4}" ;;
  *) usage ;;
esac
