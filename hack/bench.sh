#!/usr/bin/env bash
# Benchmarks `cleanslate purge` against the usual manual tools on the same freshly seeded data, in
# one run on this machine, and writes the results to BENCHMARKS.md (or, with --smoke, a tiny run
# to .scratch/bench-smoke.md so CI proves the script still works).
#
#   hack/bench.sh [--smoke] [--gen current|next]
#
# --gen next runs against the next generation of hack/services.sh (RabbitMQ 4.0, etcd 3.5) and writes
# BENCHMARKS-next.md (or .scratch/bench-smoke-next.md); current (RabbitMQ 3.10, etcd 3.4) is the default.
#
# Contenders, each on freshly seeded data, median of several runs:
#   cleanslate purge | rabbitmqadmin purge queue per queue + etcdctl del --prefix |
#   a curl loop (sequential, and xargs -P 8) + etcdctl del --prefix |
#   the serial server time: the sum of the server time of each purge request (curl -w) and of one
#   DeleteRange (a reference, not a floor: cleanslate overlaps the requests and finishes below it).
# After every run: the selected queues and keys are gone and every survivor is intact.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mode=full gen=current measure_sizes=true
while (($#)); do
  case "$1" in
    --smoke) mode=--smoke ;;
    # Writes the report again from the last run's measurements of the sizes and the shared vhost
    # (.scratch/bench/*.tsv), measuring only the gate again: for a report whose writing failed.
    --report-only) measure_sizes=false ;;
    --gen) gen="${2:-}"; shift ;;
    --gen=*) gen="${1#--gen=}" ;;
    *) echo "usage: $0 [--smoke] [--gen current|next] [--report-only]" >&2; exit 64 ;;
  esac
  shift
done
case "$gen" in
  current) rabbitmqctl=(hack/services.sh ctl) suffix="" ;;
  next) rabbitmqctl=(hack/services.sh ctl4) suffix="-next" ;;
  *) echo "bench: --gen is current or next, not '$gen'" >&2; exit 64 ;;
esac
hack/setup.sh >/dev/null
export PATH="$root/.tools/bin:$PATH"
hack/services.sh up "$gen" >/dev/null
eval "$(hack/services.sh env "$gen")"
export CSTEST_AMQP_PORT CSTEST_RABBITMQ_USERNAME CSTEST_RABBITMQ_PASSWORD CSTEST_ETCD_ENDPOINT
# The generation's own etcdctl (3.4 or 3.5), by path: PATH keeps the usual cargo and tools.
etcdctl="$CSTEST_ETCD_BIN_DIR/etcdctl"
hack/build-release.sh >/dev/null
bin="$(hack/build-release.sh --path)"
CLEANSLATE_BINARY="$bin" hack/image.sh >/dev/null
image="$root/target/image/cleanslate.tar"
py="$root/.tools/venv/bin/python"
work="$root/.scratch/bench"
mkdir -p "$work"
curl -fsS -u "$CSTEST_RABBITMQ_USERNAME:$CSTEST_RABBITMQ_PASSWORD" "$CSTEST_RABBITMQ_URL/cli/rabbitmqadmin" -o "$work/rabbitmqadmin"

if [[ "$mode" == "--smoke" ]]; then
  sizes=("smoke 2 200 100 1 1")
  output="$root/.scratch/bench-smoke$suffix.md"
  gate_runs=5 poll_runs=1
  shared_sizes=("200 20")
else
  # name queues messages keys runs runs-of-the-slow-manual-contenders
  sizes=("typical 20 20000 10000 5 3" "large 1000 1000000 200000 3 1")
  output="$root/BENCHMARKS$suffix.md"
  gate_runs=100 poll_runs=10
  # queues teams: a shared vhost under a vhost-wide dead-letter policy (hack/bench_shared.py)
  shared_sizes=("10000 300" "50000 300")
fi

mgmt="$CSTEST_RABBITMQ_URL/api"
auth="$CSTEST_RABBITMQ_USERNAME:$CSTEST_RABBITMQ_PASSWORD"

etcd_count() { # keys under a prefix, counted by the server
  local key end
  key="$(printf '%s' "$1" | base64 -w0)"
  end="$("$py" -c 'import base64,sys; p=bytearray(sys.argv[1].encode()); p[-1]+=1; print(base64.b64encode(bytes(p)).decode())' "$1")"
  curl -fsS -X POST "$CSTEST_ETCD_ENDPOINT/v3/kv/range" -d "{\"key\":\"$key\",\"range_end\":\"$end\",\"count_only\":true}" |
    "$py" -c 'import json,sys; print(json.load(sys.stdin).get("count", "0"))'
}

queue_counts() { "${rabbitmqctl[@]}" list_queues -q name messages | awk '$1 ~ /^bench-/'; }

verify() { # everything selected gone; survivors intact
  local label="$1" keep_before="$2"
  local leftover keep
  leftover="$(queue_counts | awk '$1 ~ /^bench-q/ {s += $2} END {print s + 0}')"
  keep="$(queue_counts | awk '$1 == "bench-keep" {print $2}')"
  [[ "$leftover" == 0 ]] || { echo "bench: $label left $leftover messages" >&2; exit 1; }
  [[ "$keep" == "$keep_before" ]] || { echo "bench: $label touched bench-keep ($keep_before -> $keep)" >&2; exit 1; }
  [[ "$(etcd_count bench/monorepo/)" == 0 ]] || { echo "bench: $label left keys" >&2; exit 1; }
  [[ "$(etcd_count bench/monorepo-keep/)" == 100 ]] || { echo "bench: $label touched monorepo-keep/" >&2; exit 1; }
  [[ "$(etcd_count /registry/bench/)" == 100 ]] || { echo "bench: $label touched /registry/" >&2; exit 1; }
}

contender_cmd() { # the shell command of one contender; queue names in $work/queues
  case "$1" in
    cleanslate) echo "env CLEANSLATE_ENVIRONMENT=dev CLEANSLATE_RABBITMQ_URL=$CSTEST_RABBITMQ_URL CLEANSLATE_RABBITMQ_USERNAME=$CSTEST_RABBITMQ_USERNAME CLEANSLATE_RABBITMQ_PASSWORD=$CSTEST_RABBITMQ_PASSWORD CLEANSLATE_RABBITMQ_QUEUE_PATTERN='bench-q[0-9]+' CLEANSLATE_ETCD_ENDPOINTS=$CSTEST_ETCD_ENDPOINT CLEANSLATE_ETCD_PREFIXES=bench/monorepo/ CLEANSLATE_TIMEOUT=5m RUST_LOG=warn $bin purge" ;;
    rabbitmqadmin) echo "while read -r q; do python3 $work/rabbitmqadmin -H 127.0.0.1 -P ${CSTEST_RABBITMQ_URL##*:} -u $CSTEST_RABBITMQ_USERNAME -p $CSTEST_RABBITMQ_PASSWORD purge queue name=\$q >/dev/null; done < $work/queues; ETCDCTL_API=3 $etcdctl --endpoints $CSTEST_ETCD_ENDPOINT del --prefix bench/monorepo/ >/dev/null" ;;
    curl-seq) echo "while read -r q; do curl -fsS -o /dev/null -u $auth -X DELETE $mgmt/queues/%2F/\$q/contents; done < $work/queues; ETCDCTL_API=3 $etcdctl --endpoints $CSTEST_ETCD_ENDPOINT del --prefix bench/monorepo/ >/dev/null" ;;
    curl-p8) echo "xargs -P 8 -I{} curl -fsS -o /dev/null -u $auth -X DELETE $mgmt/queues/%2F/{}/contents < $work/queues; ETCDCTL_API=3 $etcdctl --endpoints $CSTEST_ETCD_ENDPOINT del --prefix bench/monorepo/ >/dev/null" ;;
  esac
}

floor_seconds() { # server time of each purge request + one DeleteRange, summed
  local key end
  key="$(printf 'bench/monorepo/' | base64 -w0)"
  end="$(printf 'bench/monorepo0' | base64 -w0)"
  {
    while read -r q; do
      curl -fsS -o /dev/null -u "$auth" -X DELETE -w '%{time_starttransfer} %{time_pretransfer}\n' "$mgmt/queues/%2F/$q/contents"
    done <"$work/queues"
    curl -fsS -o /dev/null -X POST -w '%{time_starttransfer} %{time_pretransfer}\n' "$CSTEST_ETCD_ENDPOINT/v3/kv/deleterange" -d "{\"key\":\"$key\",\"range_end\":\"$end\"}"
  } | awk '{s += $1 - $2} END {printf "%.4f\n", s}'
}

measure() { # SHELL_COMMAND: prints "wall cpu rss_kib" of the command's process tree
  # Wall time and CPU seconds (user + system) of the process tree from getrusage (GNU time rounds
  # CPU to 10 ms, more than cleanslate uses here); peak RSS from GNU time, whose small C parent
  # does not inflate it the way a forked Python child would. The command's stdout (logs) is dropped.
  local wall cpu
  read -r wall cpu < <("$py" -c '
import resource, subprocess, sys, time
started = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
wall = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{wall:.4f} {usage.ru_utime + usage.ru_stime:.4f}")' /usr/bin/time -f '%M' -o "$work/rss" bash -c "$1")
  echo "$wall $cpu $(cat "$work/rss")"
}

median() { sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

results="$work/results.tsv"
shared_results="$work/shared.tsv"
if [[ "$measure_sizes" == true ]]; then
: >"$results"
for size in "${sizes[@]}"; do
  read -r name queues messages keys runs slow_runs <<<"$size"
  seq -f 'bench-q%04g' 0 $((queues - 1)) >"$work/queues"
  # Start from nothing: previous sizes' queues go.
  for q in $(queue_counts | awk '$1 ~ /^bench-q/ {print $1}'); do
    curl -fsS -o /dev/null -u "$auth" -X DELETE "$mgmt/queues/%2F/$q"
  done
  for contender in cleanslate rabbitmqadmin curl-seq curl-p8 floor; do
    n="$runs"
    [[ "$contender" == rabbitmqadmin || "$contender" == curl-seq ]] && n="$slow_runs"
    for run in $(seq 1 "$n"); do
      "$py" hack/bench_seed.py "$queues" "$messages" "$keys"
      keep_before="$(queue_counts | awk '$1 == "bench-keep" {print $2}')"
      echo "bench: $name $contender run $run/$n"
      if [[ "$contender" == floor ]]; then
        printf '%s\t%s\t%s\t-\t-\n' "$name" floor "$(floor_seconds)" >>"$results"
      else
        # Wall time and CPU seconds (user + system) of the contender's process tree from getrusage
        # (GNU time rounds CPU to 10 ms, more than cleanslate uses here); peak RSS from GNU time,
        # whose small C parent does not inflate it the way a forked Python child would.
        read -r wall cpu rss < <(measure "$(contender_cmd "$contender")")
        printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$contender" "$wall" "$cpu" "$rss" >>"$results"
      fi
      verify "$name/$contender" "$keep_before"
    done
  done
done

# The shared vhost: the cost of selecting one named queue (dead letters reported, the default) and
# a pattern with exact discovery, against rabbitmqadmin doing the same selection, on a vhost of
# thousands of queues that are not ours. The queues hold no messages: this measures selection.
: >"$shared_results"
admin="python3 $work/rabbitmqadmin -H 127.0.0.1 -P ${CSTEST_RABBITMQ_URL##*:} -u $CSTEST_RABBITMQ_USERNAME -p $CSTEST_RABBITMQ_PASSWORD -V bench-shared"
cs_shared="env CLEANSLATE_ENVIRONMENT=dev CLEANSLATE_TARGETS=rabbitmq CLEANSLATE_RABBITMQ_URL=$CSTEST_RABBITMQ_URL CLEANSLATE_RABBITMQ_USERNAME=$CSTEST_RABBITMQ_USERNAME CLEANSLATE_RABBITMQ_PASSWORD=$CSTEST_RABBITMQ_PASSWORD CLEANSLATE_RABBITMQ_VHOST=bench-shared CLEANSLATE_TIMEOUT=5m RUST_LOG=warn"
for shared in "${shared_sizes[@]}"; do
  read -r queues teams <<<"$shared"
  echo "bench: shared vhost of $queues queues"
  "$py" hack/bench_shared.py bench-shared "$queues" "$teams"
  for selection in named pattern; do
    for contender in cleanslate rabbitmqadmin; do
      case "$selection/$contender" in
        named/cleanslate) cmd="$cs_shared CLEANSLATE_RABBITMQ_QUEUES=app7 $bin purge" ;;
        named/rabbitmqadmin) cmd="$admin purge queue name=app7 >/dev/null" ;;
        pattern/cleanslate) cmd="$cs_shared CLEANSLATE_RABBITMQ_QUEUE_PATTERN='app1[0-9]' CLEANSLATE_RABBITMQ_DEAD_LETTERS=exact $bin purge" ;;
        pattern/rabbitmqadmin) cmd="$admin -f tsv -q list queues name | grep -E '^app1[0-9]\$' | while read -r q; do $admin purge queue name=\$q >/dev/null; done" ;;
      esac
      read -r wall cpu rss < <(measure "$cmd")
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$queues" "$selection" "$contender" "$wall" "$cpu" "$rss" >>"$shared_results"
    done
  done
done
# Deleting tens of thousands of queues can outlast the HTTP request (the broker closes it and goes
# on): best effort; bench_shared.py waits for a vhost that is still going away.
curl -fsS -o /dev/null -m 600 -u "$auth" -X DELETE "$mgmt/vhosts/bench-shared" || echo "bench: the broker is still deleting bench-shared"
fi

echo "bench: gate reaction"
gate_table="$(CSBENCH_GATE_RUNS=$gate_runs CSBENCH_POLL_RUNS=$poll_runs cargo bench --quiet --bench gate_reaction 2>/dev/null | grep '^|')"

# Hand-made measurements (build cost, hook time) between `<!-- kept -->` and `<!-- /kept -->` survive a re-run.
kept="$(sed -n '/^<!-- kept -->$/,/^<!-- \/kept -->$/p' "$output" 2>/dev/null || true)"
# A seeded reset (issue 22): SEED_KEYS stale keys under bench/monorepo/ deleted and SEED_KEYS
# baseline keys written (CLEANSLATE_ETCD_SEED_FILE), against etcdctl del --prefix and one etcdctl put
# per key (8 at a time). One run each.
seed_keys=10000
[[ "$mode" == "--smoke" ]] && seed_keys=200
seed_results="$work/seed.tsv"
if $measure_sizes; then
  : >"$seed_results"
  "$py" -c '
import sys
keys = int(sys.argv[2])
with open(sys.argv[1], "w") as out:
    for i in range(keys):
        out.write(f"bench/monorepo/baseline/k{i:06d}: \"value-{i}\"\n")
with open(sys.argv[1] + ".args", "w") as out:
    for i in range(keys):
        out.write(f"bench/monorepo/baseline/k{i:06d} value-{i}\n")
' "$work/seed.yaml" "$seed_keys"
  for contender in cleanslate etcdctl; do
    "$py" hack/bench_seed.py 1 1 "$seed_keys" >/dev/null
    case "$contender" in
      cleanslate) cmd="env CLEANSLATE_ENVIRONMENT=bench CLEANSLATE_TARGETS=etcd CLEANSLATE_ETCD_ENDPOINTS=$CSTEST_ETCD_ENDPOINT CLEANSLATE_ETCD_PREFIXES=bench/monorepo/ CLEANSLATE_ETCD_SEED_FILE=$work/seed.yaml $bin purge" ;;
      etcdctl) cmd="$etcdctl --endpoints $CSTEST_ETCD_ENDPOINT del --prefix bench/monorepo/ >/dev/null && xargs -P 8 -n 2 $etcdctl --endpoints $CSTEST_ETCD_ENDPOINT put <$work/seed.yaml.args >/dev/null" ;;
    esac
    read -r wall cpu rss < <(measure "$cmd")
    left=$(etcd_count bench/monorepo/)
    if [[ "$left" != "$seed_keys" ]]; then
      echo "bench: $contender left $left keys under bench/monorepo/, not the $seed_keys of the seed" >&2
      exit 1
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$seed_keys" "$contender" "$wall" "$cpu" "$rss" >>"$seed_results"
  done
fi

{
  echo "# Benchmarks"
  echo
  flag=""
  [[ "$gen" == current ]] || flag=" --gen $gen"
  echo "Reproduce with \`hack/bench.sh$flag\` (about 15 minutes; \`hack/bench.sh --smoke$flag\` is the tiny run CI does)."
  if [[ "$gen" == current ]]; then
    echo "The same benchmark against RabbitMQ 4.0 and etcd 3.5: [BENCHMARKS-next.md](BENCHMARKS-next.md) (\`hack/bench.sh --gen next\`)."
  else
    echo "The same benchmark against RabbitMQ 3.10 and etcd 3.4: [BENCHMARKS.md](BENCHMARKS.md)."
  fi
  echo "Every contender runs on freshly seeded data; after every run the script checks that all selected"
  echo "messages and keys are gone and that the survivors (queue \`bench-keep\`, keys under"
  echo "\`bench/monorepo-keep/\` and \`/registry/bench/\`) are untouched."
  echo
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r);"
  echo "RabbitMQ $CSTEST_RABBITMQ_VERSION, etcd $("$CSTEST_ETCD_BIN_DIR/etcd" --version | awk 'NR == 1 {print $3}'), all on loopback; run on $(date -u +%Y-%m-%d)."
  echo "Release binary: $(stat -c %s "$bin" | awk '{printf "%.1f MB", $1 / 1e6}') (static, stripped)."
  echo "Image (\`hack/image.sh\`, OCI archive with one gzip layer holding only the binary): $(stat -c %s "$image" | awk '{printf "%.1f MB", $1 / 1e6}') to pull, $(stat -c %s "$bin" | awk '{printf "%.1f MB", $1 / 1e6}') unpacked."
  echo
  if [[ -n "$kept" ]]; then
    echo "$kept"
    echo
  fi
  for size in "${sizes[@]}"; do
    read -r name queues messages keys runs slow_runs <<<"$size"
    echo "## $name: $queues queues, $messages messages, $keys keys"
    echo
    echo "| contender | runs | wall (median) | CPU s (median) | peak RSS | cleanslate is faster by | ÷ serial server time |"
    echo "|---|---|---|---|---|---|---|"
    cs_wall="$(awk -F'\t' -v n="$name" '$1 == n && $2 == "cleanslate" {print $3}' "$results" | median)"
    floor="$(awk -F'\t' -v n="$name" '$1 == n && $2 == "floor" {print $3}' "$results" | median)"
    for contender in cleanslate rabbitmqadmin curl-seq curl-p8 floor; do
      rows="$(awk -F'\t' -v n="$name" -v c="$contender" '$1 == n && $2 == c' "$results")"
      wall="$(cut -f3 <<<"$rows" | median)"
      count="$(wc -l <<<"$rows")"
      if [[ "$contender" == floor ]]; then
        printf '| serial server time: each purge request + one DeleteRange, one after another | %s | %.3f s | – | – | %.1f× | 1.00 |\n' "$count" "$wall" "$(awk -v a="$wall" -v b="$cs_wall" 'BEGIN {print a / b}')"
        continue
      fi
      cpu="$(cut -f4 <<<"$rows" | median)"
      rss="$(cut -f5 <<<"$rows" | sort -g | tail -1)"
      label="$contender"
      # shellcheck disable=SC2016 # backticks are Markdown here
      case "$contender" in
        cleanslate) label='`cleanslate purge`' ;;
        rabbitmqadmin) label='`rabbitmqadmin purge queue` per queue + `etcdctl del --prefix`' ;;
        curl-seq) label='`curl` loop, sequential + `etcdctl del --prefix`' ;;
        curl-p8) label='`curl` via `xargs -P 8` + `etcdctl del --prefix`' ;;
      esac
      printf '| %s | %s | %.3f s | %.4f | %.1f MiB | %.1f× | %.2f |\n' "$label" "$count" "$wall" "$cpu" "$(awk -v k="$rss" 'BEGIN {print k / 1024}')" \
        "$(awk -v a="$wall" -v b="$cs_wall" 'BEGIN {print a / b}')" "$(awk -v a="$wall" -v b="$floor" 'BEGIN {print a / b}')"
    done
    cs_cpu="$(awk -F'\t' -v n="$name" '$1 == n && $2 == "cleanslate" {print $4}' "$results" | median)"
    echo
    echo "Under the chart's 100m CPU limit, cleanslate's $(printf '%.4f' "$cs_cpu") CPU s need at least $(awk -v c="$cs_cpu" 'BEGIN {printf "%.3f", c / 0.1}') s of wall time."
    echo
  done
  echo "## Shared vhost: one named queue, and a pattern with exact discovery"
  echo
  echo "A vhost of other teams' queues (\`hack/bench_shared.py\`): every \`appN\` under one vhost-wide dead-letter"
  echo "policy to a topic exchange with team dead-letter queues bound by wildcards, and bound to an application"
  echo "exchange. \`named\`: \`CLEANSLATE_RABBITMQ_QUEUES=app7\` (dead letters reported, the default) against"
  echo "\`rabbitmqadmin purge queue name=app7\`. \`pattern\`: \`app1[0-9]\` (11 queues) with"
  echo "\`CLEANSLATE_RABBITMQ_DEAD_LETTERS=exact\` (the whole vhost listed and routed) against \`rabbitmqadmin list queues\`"
  echo "filtered by \`grep\` and one \`rabbitmqadmin purge\` per queue. One run each; the Job's budget is 128Mi and 100m CPU."
  echo
  echo "| queues in the vhost | selection | contender | wall | CPU s | peak RSS |"
  echo "|---|---|---|---|---|---|"
  while IFS=$'\t' read -r queues selection contender wall cpu rss; do
    printf '| %s | %s | %s | %.3f s | %.3f | %.1f MiB |\n' "$queues" "$selection" "$contender" "$wall" "$cpu" "$(awk -v k="$rss" 'BEGIN {print k / 1024}')"
  done <"$shared_results"
  echo
  cat <<'READING'
## Reading the numbers

- The serial server time adds up the server time of each request *one after another*; it is a
  reference, not a floor: cleanslate purges 8 queues at a time and cleans RabbitMQ and etcd side by
  side, so it finishes below that sum. What is left
  above the server's own time is process start, TLS-free connects and one listing request.
- CPU seconds are the client's (the brokers' own work is the same for every contender). With
  about 10 ms of CPU for the typical run, the chart's 100m limit (10 ms per 100 ms CFS period) does
  not slow it in practice.
- etcd is one `DeleteRange` per prefix in one transaction whatever the key count, so its share of
  the time barely moves from 10,000 to 200,000 keys.
- Absolute times move between runs on this shared machine (one earlier run measured the typical
  case at 0.052 s with a serial server time of 0.061 s); compare the ratios within one run.
READING
  echo
  echo "## A seeded reset: delete a prefix and write a baseline (issue 22)"
  echo
  echo "The same number of stale keys under \`bench/monorepo/\` deleted and of baseline keys written:"
  echo "\`cleanslate purge\` with \`CLEANSLATE_ETCD_SEED_FILE\` (the deletes and the puts in transactions of 128"
  echo "operations, seed keys cut out of the deleted ranges) against \`etcdctl del --prefix\` and one \`etcdctl put\`"
  echo "per key, 8 at a time. One run each."
  echo
  echo "| keys | contender | wall | CPU s | peak RSS |"
  echo "|---|---|---|---|---|"
  while IFS=$'\t' read -r keys contender wall cpu rss; do
    printf '| %s | %s | %.3f s | %.3f | %.1f MiB |\n' "$keys" "$contender" "$wall" "$cpu" "$(awk -v k="$rss" 'BEGIN {print k / 1024}')"
  done <"$seed_results"
  echo
  echo "## Gate reaction: marker written → gate process exited"
  echo
  echo "Measured against the tests' Kubernetes API stand-in (\`tests/support/kube_api.rs\`) on loopback, not a"
  echo "real API server, whose watch cache and fan-out add their own delay: this is the gate's own share."
  echo
  echo "$gate_table"
  echo
} >"$output"
echo "bench: wrote $output"
