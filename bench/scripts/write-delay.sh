#!/usr/bin/env bash
# --write-delay side by side: fixed-rate fan-out in one room (issue 27's shapes) against
# roomcast with no delay and with D = 1, 5, 20 and 100 ms, and against uWebSockets.js (which
# has no such option), alternating server by server within each run, a fresh server per
# run, the server pinned to CPU 0 and the load generator to CPU 1 (as scripts/bench.sh).
# The figures to compare: server CPU per delivery (softirq on CPU 0 counted), sends per
# delivery (roomcast's own counter), and publish->delivery p50/p99.
#
#   bench/scripts/write-delay.sh              2 runs of 5 shapes (about 15 minutes)
#   RUNS=1 SECS=2 SHAPES="500:400:64" bench/scripts/write-delay.sh    a smoke run
#
# Settings (environment): RUNS (2), SECS (5), DELAYS ("0 1 5 20 100", ms), BACKEND (uring),
# SHAPES ("members:msg/s:bytes ..."), UWS (1: with uWebSockets.js), OUT
# (bench/results-write-delay), BUILD (1).
set -euo pipefail
cd "$(dirname "$0")/../.."

runs=${RUNS:-2}
secs=${SECS:-5}
delays=${DELAYS:-0 1 5 20 100}
backend=${BACKEND:-uring}
shapes=${SHAPES:-2000:50:100 5000:20:500 500:400:64 10000:10:1000 1000:100:2000}
out=${OUT:-bench/results-write-delay}
uws=${UWS:-1}
[ "${BUILD:-1}" = 1 ] && cargo build --release --locked -p roomcast -p roomcast-bench 2>&1 | tail -1
if [ "$uws" = 1 ] && [ ! -d bench/peers/uws/node_modules ]; then
  command -v node >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; }
  (cd bench/peers/uws && npm ci --no-audit --no-fund)
fi
bench=target/release/roomcast-bench
roomcast=target/release/roomcast
version=$("$roomcast" --version | awk '{print $2}')
mkdir -p "$out"
results="$out/RESULTS.jsonl"
: >"$results"

servers=()
[ "$uws" = 1 ] && servers+=("uWebSockets.js|node bench/peers/uws/peer-uws.mjs|20.30.0")
for d in $delays; do
  name="roomcast-$backend"
  [ "$d" = 0 ] || name="$name+delay${d}ms"
  servers+=("$name|$roomcast serve --shards 1 --rate 0 --backend $backend --write-delay ${d}ms --listen|$version")
done
# `--write-delay 0ms` is not a duration: no delay is 0.
servers=("${servers[@]/--write-delay 0ms/--write-delay 0}")

port=9800
pid=""
stop_server() {
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}
trap stop_server EXIT

for shape in $shapes; do
  IFS=: read -r members rate size <<<"$shape"
  scenario="fanout --members $members --rate $rate --size $size --secs $secs"
  for run in $(seq "$runs"); do
    for s in "${servers[@]}"; do
      IFS='|' read -r name cmd ver <<<"$s"
      port=$((port + 1))
      # shellcheck disable=SC2086
      taskset -c 0 $cmd "127.0.0.1:$port" >/dev/null 2>"$out/server.log" &
      pid=$!
      for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.05
      done
      echo "== $name: $scenario (run $run/$runs)"
      before=$(curl -s "http://127.0.0.1:$port/stats" | jq '[.shards[]?.sends] | add // 0' 2>/dev/null || echo 0)
      # shellcheck disable=SC2086
      taskset -c 1 "$bench" --server "127.0.0.1:$port" --server-pid "$pid" --server-cpu 0 \
        --server-name "$name" --server-version "$ver" --out "$results" $scenario
      after=$(curl -s "http://127.0.0.1:$port/stats" | jq '[.shards[]?.sends] | add // 0' 2>/dev/null || echo 0)
      # roomcast's sends over the run, beside the run's own line (uWS has no such count).
      echo "{\"sends\": {\"server\": \"$name\", \"scenario\": \"$scenario\", \"run\": $run, \"count\": $((after - before))}}" >>"$out/SENDS.jsonl"
      stop_server
    done
  done
done
"$bench" report "$results" --dir "$out"
python3 bench/scripts/write-delay-table.py "$out" >"$out/WRITE-DELAY.md"
cat "$out/WRITE-DELAY.md"
