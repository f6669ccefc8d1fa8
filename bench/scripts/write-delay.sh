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

RUNS=${RUNS:-2}
secs=${SECS:-5}
delays=${DELAYS:-0 1 5 20 100}
backend=${BACKEND:-uring}
shapes=${SHAPES:-2000:50:100 5000:20:500 500:400:64 10000:10:1000 1000:100:2000}
out=${OUT:-bench/results-write-delay}
uws=${UWS:-1}
# The build, `bench`, `roomcast`, `version`, `results` (emptied), `stop_server`, `wait_port`.
# shellcheck source=bench/scripts/side-by-side.sh
. bench/scripts/side-by-side.sh
if [ "$uws" = 1 ] && [ ! -d bench/peers/uws/node_modules ]; then
  command -v node >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; }
  (cd bench/peers/uws && npm ci --no-audit --no-fund)
fi
: >"$out/SENDS.jsonl"

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
      wait_port "$port" || { echo "server did not start: $cmd" >&2; cat "$out/server.log" >&2; exit 1; }
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
