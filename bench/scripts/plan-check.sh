#!/usr/bin/env bash
# `roomcast plan` against measurement: a grid of shapes run against a fresh server each
# (one shard on CPU 0, the load generator on CPU 1, as scripts/bench.sh), and the plan's
# prediction for the same shape beside each run: server CPU (CPU 0's busy time, softirq
# included) and server RSS. The plan is asked with --link loopback (the members are on this
# box), --shards 1 --cpus 1. Writes bench/results-plan-check/PLAN-CHECK.md (the table, each
# error stated) and plan-check.svg (predicted against measured, the ±10% band drawn).
#
#   bench/scripts/plan-check.sh            1 run of each shape (about 6 minutes)
#
# Shapes: idle connections; fixed-rate fan-out in one room over members, rates and sizes
# (issue 27's five), each without and with --write-delay 20ms; a closed-loop fan-out.
# Settings (environment): RUNS (1), SECS (5), IDLE (15000), BACKENDS ("uring"),
# OUT (bench/results-plan-check), BUILD (1).
set -euo pipefail
cd "$(dirname "$0")/../.."

secs=${SECS:-5}
idle=${IDLE:-15000}
out=${OUT:-bench/results-plan-check}
BACKENDS=${BACKENDS:-uring}
RUNS=${RUNS:-1}
# shellcheck source=bench/scripts/side-by-side.sh
. bench/scripts/side-by-side.sh

scenarios=(
  "idle --connections $idle --hold-secs 5 --workers 4 --concurrency 64"
  "fanout --members 2000 --rate 50 --size 100 --secs $secs"
  "fanout --members 5000 --rate 20 --size 500 --secs $secs"
  "fanout --members 500 --rate 400 --size 64 --secs $secs"
  "fanout --members 10000 --rate 10 --size 1000 --secs $secs"
  "fanout --members 1000 --rate 100 --size 2000 --secs $secs"
  "fanout --members 2000 --rate 0 --size 64 --secs $secs"
)
port=9600
modes="plain delay20ms"
mode_flags() {
  [ "$1" = delay20ms ] && server_extra=(--write-delay 20ms)
  return 0
}
server_log=$(mktemp)
trap 'stop_server; rm -f "$server_log"' EXIT
side_by_side
python3 bench/scripts/plan-check.py "$out" "$roomcast"
