#!/usr/bin/env bash
# Admission under load, with the real figures: roomcast with `--max-conns auto` and
# `--capacity-margin M` (one shard on CPU 0, the load generator on CPU 1, a fresh server per
# run, the backends alternating), one room publishing at a fixed rate, members joining at a
# fixed pace until the server refuses one (503); then held at the limit and measured: the
# server CPU's busy share against 1 − M, the model's CPU, deliveries/s and latency.
#
#   bench/scripts/admission.sh         2 runs on both backends (about 4 minutes)
#
# Settings (environment): RATE (msg/s, 50), SIZE (100), PACE (members/s, 300), MARGIN
# (percent, 30), HOLD (s, 5), RUNS (2), BACKENDS ("uring epoll"), OUT
# (bench/results-admission), BUILD (1).
set -euo pipefail
cd "$(dirname "$0")/../.."

rate=${RATE:-50}
size=${SIZE:-100}
pace=${PACE:-300}
margin=${MARGIN:-30}
hold=${HOLD:-5}
out=${OUT:-bench/results-admission}
RUNS=${RUNS:-2}
# shellcheck source=bench/scripts/side-by-side.sh
. bench/scripts/side-by-side.sh

scenarios=("admission --rate $rate --size $size --pace $pace --hold $hold")
port=9500
modes="auto"
mode_flags() {
  server_extra=(--max-conns auto --capacity-margin "$margin")
}
server_log=$(mktemp)
trap 'stop_server; rm -f "$server_log"' EXIT
side_by_side
