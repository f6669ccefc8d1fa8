#!/usr/bin/env bash
# Fan-out across a cluster: members split over two roomcast nodes on one Redis
# (`serve --redis`), against the same workload on one node without Redis. Per run and
# workload: a fresh Redis and two fresh nodes, then a fresh single node (alternating,
# cluster first), each measured by `roomcast-bench fanout`. Reports deliveries/s,
# publish->delivery p50/p99, Redis's CPU per published message (and its share of a CPU),
# all the nodes' CPU per delivery, and what the members' order check saw.
#
#   bench/scripts/cluster-fanout.sh                  3 runs of each workload (about 4 minutes)
#   RUNS=1 MEMBERS=500 SECS=2 bench/scripts/cluster-fanout.sh    a smoke run
#
# Settings (environment): MEMBERS (5000), RATE (msg/s for the rate run, 200), SECS (10),
# WINDOW (closed loop: messages in flight, 8), RUNS (3), WORKERS (load-generator processes
# for the members, 1), CHECK_ORDER (1: every member checks that seq goes up by one, on both
# sides of the comparison so they pay the same), REDIS_CPU (0), BACKEND (uring), OUT
# (bench/results-cluster), BUILD (1: cargo build --release first).
#
# Pinning, as scripts/bench.sh: the server side on CPU 0, the load generator alone on
# CPU 1. Both nodes are on CPU 0, and so is Redis by default (REDIS_CPU=0): then CPU 0's
# busy time (`--server-cpu 0`, "server CPU total ns/delivery") is everything the cluster
# spends (both nodes, Redis, the loopback between them) against what one node spends
# there, and the load generator's busy share (client-bound or not) stays its own. Redis
# on CPU 1 would take from the load generator and hide in its figure. The cost: the nodes
# and Redis take turns on one CPU, which the cluster's latency includes.
#
# Everything it starts listens on 127.0.0.1 only and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

members=${MEMBERS:-5000}
rate=${RATE:-200}
secs=${SECS:-10}
window=${WINDOW:-8}
runs=${RUNS:-3}
workers=${WORKERS:-1}
check_order=${CHECK_ORDER:-1}
redis_cpu=${REDIS_CPU:-0}
backend=${BACKEND:-uring}
out=${OUT:-bench/results-cluster}
build=${BUILD:-1}

for tool in redis-server redis-cli taskset ss; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done
if [ "$build" = 1 ]; then
  cargo build --release --locked -p roomcast -p roomcast-bench 2>&1 | tail -1
fi
bench=target/release/roomcast-bench
roomcast=target/release/roomcast
version=$("$roomcast" --version | awk '{print $2}')
mkdir -p "$out/logs"
results="$out/RESULTS.jsonl"
: >"$results"

extra=()
[ "$workers" -gt 1 ] && extra+=(--workers "$workers")
[ "$check_order" = 1 ] && extra+=(--check-order)
# name|scenario
scenarios=(
  "rate|fanout --members $members --rate $rate --secs $secs ${extra[*]}"
  "closed|fanout --members $members --rate 0 --window $window --secs $secs ${extra[*]}"
)

# Every process started here, stopped after each run and on exit: the last started
# first (the nodes, then their Redis, which they would otherwise log losing).
procs=()
stop_all() {
  local i p
  for ((i = ${#procs[@]} - 1; i >= 0; i--)); do
    p=${procs[i]}
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  procs=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# A TCP port nothing listens on, from 20000 up.
next_port=20000
free_port() {
  while [ -n "$(ss -Htln "sport = :$next_port")" ]; do next_port=$((next_port + 1)); done
  port=$next_port
  next_port=$((next_port + 1))
}

# A Redis of its own, nothing saved: sets redis_port and redis_pid.
start_redis() { # log
  free_port
  redis_port=$port
  taskset -c "$redis_cpu" redis-server --port "$redis_port" --bind 127.0.0.1 \
    --save "" --appendonly no --dir "$out" --logfile "" >"$1" 2>&1 &
  redis_pid=$!
  procs+=("$redis_pid")
  for _ in $(seq 100); do
    [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.05
  done
  echo "redis-server did not start" >&2
  cat "$1" >&2
  exit 1
}

# A roomcast on CPU 0 and a free port, with `args`: sets node_pid and node_addr (from the
# first line it prints: `roomcast 0.1.0 listening on ADDR (backend …)`).
start_node() { # log args…
  local log=$1 line
  shift
  taskset -c 0 "$roomcast" serve --shards 1 --rate 0 --backend "$backend" \
    --listen 127.0.0.1:0 "$@" >"$log.out" 2>"$log" &
  node_pid=$!
  procs+=("$node_pid")
  for _ in $(seq 200); do
    line=$(head -n 1 "$log.out" 2>/dev/null || true)
    if [[ $line == *" listening on "* ]]; then
      node_addr=${line#* listening on }
      node_addr=${node_addr%% *}
      return 0
    fi
    kill -0 "$node_pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "roomcast did not start: $*" >&2
  cat "$log" >&2
  exit 1
}

# What the servers logged at WARN or ERROR (the bench's own errors show as it runs).
complaints() { # logs…
  local f
  for f in "$@"; do
    if grep -qE 'WARN|ERROR|panicked' "$f"; then
      echo "   !! $f:"
      grep -E 'WARN|ERROR|panicked' "$f" | head -5 | sed 's/^/      /'
    fi
  done
}

# Redis's own account of the commands it ran (the scripts' calls and µs per call), saved
# and summed up in one line.
redis_stats() { # log
  redis-cli -p "$redis_port" info commandstats >"$1" 2>&1 || true
  awk -F'[:,=]' '/^cmdstat_/ { printf "%s%s %s calls %s µs/call", sep, substr($1, 9), $3, $7; sep = "; " }
    END { if (sep) print "" }' "$1" | sed 's/^/   Redis commandstats: /'
}

# The bench, pinned to CPU 1, bounded in time whatever happens to the servers.
run_bench() { # args…
  local limit=$((secs * 3 + 120))
  timeout --kill-after=10 "$limit" taskset -c 1 "$bench" --server-cpu 0 \
    --server-version "$version" --out "$results" "$@"
}

for s in "${scenarios[@]}"; do
  IFS='|' read -r name scenario <<<"$s"
  for run in $(seq "$runs"); do
    logs="$out/logs/$name-$run"
    start_redis "$logs-redis.log"
    redis="redis://127.0.0.1:$redis_port"
    start_node "$logs-node-a.log" --redis "$redis" --node-id node-a
    a_pid=$node_pid a_addr=$node_addr
    start_node "$logs-node-b.log" --redis "$redis" --node-id node-b
    b_pid=$node_pid b_addr=$node_addr
    echo "== 2 nodes + Redis: $scenario (run $run/$runs; nodes $a_addr $b_addr, Redis :$redis_port)"
    # shellcheck disable=SC2086
    run_bench --server "$a_addr" --also "$b_addr" --server-pid "$a_pid" --also-pid "$b_pid" \
      --redis-pid "$redis_pid" --server-name roomcast-2-nodes $scenario
    redis_stats "$logs-redis-commandstats.txt"
    stop_all
    complaints "$logs-node-a.log" "$logs-node-b.log"

    start_node "$logs-single.log"
    echo "== 1 node, no Redis: $scenario (run $run/$runs; node $node_addr)"
    # shellcheck disable=SC2086
    run_bench --server "$node_addr" --server-pid "$node_pid" --server-name roomcast $scenario
    stop_all
    complaints "$logs-single.log"
  done
done

"$bench" report "$results" --dir "$out" >/dev/null
echo
echo "Medians over $runs run(s) (raw: $results; ratio = one node / 2 nodes):"
echo
# The tables (the plots are beside $out/REPORT.md).
grep -v '^!\[' "$out/REPORT.md"
