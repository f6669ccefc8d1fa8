#!/usr/bin/env bash
# permessage-deflate against plain, side by side: the same fan-out (1 KB JSON feed
# messages, `fanout --json --size 1024`) and idle workloads against roomcast with and
# without --deflate, the clients offering deflate (`roomcast-bench --deflate`) or not,
# alternating (plain, deflate, plain, …), a fresh server per run, the server pinned to
# CPU 0 and the load generator to CPU 1 as in scripts/bench.sh.
#
#   bench/scripts/deflate.sh                       3 runs on both backends (about 8 minutes)
#   RUNS=1 MEMBERS=500 SECS=2 IDLE=2000 bench/scripts/deflate.sh    a smoke run
#
# Settings (environment): MEMBERS (5000), RATE (msg/s for the rate run, 20), SECS (10),
# IDLE (idle connections, 15000), RUNS (3), BACKENDS ("uring epoll"), OUT
# (bench/results-deflate), BUILD (1).
set -euo pipefail
cd "$(dirname "$0")/../.."

members=${MEMBERS:-5000}
rate=${RATE:-20}
secs=${SECS:-10}
idle=${IDLE:-15000}
runs=${RUNS:-3}
backends=${BACKENDS:-uring epoll}
out=${OUT:-bench/results-deflate}
build=${BUILD:-1}

[ "$build" = 1 ] && cargo build --release --locked -p roomcast -p roomcast-bench 2>&1 | tail -1
bench=target/release/roomcast-bench
roomcast=target/release/roomcast
version=$("$roomcast" --version | awk '{print $2}')
mkdir -p "$out"
results="$out/RESULTS.jsonl"
: >"$results"

scenarios=(
  "fanout --members $members --rate $rate --secs $secs --json --size 1024"
  "fanout --members $members --rate 0 --secs $secs --json --size 1024"
  "idle --connections $idle --hold-secs 5"
)

port=9500
pid=""
stop_server() {
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}
trap stop_server EXIT

for scenario in "${scenarios[@]}"; do
  for run in $(seq "$runs"); do
    for backend in $backends; do
      for mode in plain deflate; do
        port=$((port + 1))
        server_flags=(serve --shards 1 --rate 0 --backend "$backend" --listen "127.0.0.1:$port")
        client_flags=()
        if [ "$mode" = deflate ]; then
          server_flags+=(--deflate)
          client_flags+=(--deflate)
        fi
        taskset -c 0 "$roomcast" "${server_flags[@]}" >/dev/null 2>"$out/server.log" &
        pid=$!
        for _ in $(seq 100); do
          (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
          sleep 0.05
        done
        name="roomcast-$backend"
        [ "$mode" = deflate ] && name="$name+deflate"
        echo "== $name: $scenario (run $run/$runs)"
        # shellcheck disable=SC2086
        taskset -c 1 "$bench" --server "127.0.0.1:$port" --server-pid "$pid" --server-cpu 0 \
          --server-name "$name" --server-version "$version" --out "$results" \
          "${client_flags[@]}" $scenario
        stop_server
      done
    done
  done
done

"$bench" report "$results" --dir "$out"
