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
out=${OUT:-bench/results-deflate}
# shellcheck source=bench/scripts/side-by-side.sh
. bench/scripts/side-by-side.sh
scenarios=(
  "fanout --members $members --rate $rate --secs $secs --json --size 1024"
  "fanout --members $members --rate 0 --secs $secs --json --size 1024"
  "idle --connections $idle --hold-secs 5"
)

port=9500
modes="plain deflate"
mode_flags() {
  if [ "$1" = deflate ]; then
    server_extra=(--deflate)
    client_extra=(--deflate)
  fi
}
server_log="$out/server.log"
trap stop_server EXIT
side_by_side
