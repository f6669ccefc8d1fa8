#!/usr/bin/env bash
# `roomcast plan` against measurement: a grid of shapes run against a fresh server each
# (one shard on CPU 0, the load generator on CPU 1, as scripts/bench.sh), and the plan's
# prediction for the same shape beside each run: server CPU (CPU 0's busy time, softirq
# included), server RSS, egress and (idle) kernel memory. The plan is asked with --link
# loopback (the members are on this box), --shards 1 --cpus 1, and with figures measured in
# the same sitting: `roomcast-bench calibrate` runs first, against a fresh server, on its
# own shapes (this machine's speed drifts by ±20% from one sitting to the next; the
# built-in figures are one sitting's). Writes bench/results-plan-check/PLAN-CHECK.md (the
# table, each error stated) and plan-check.svg (predicted against measured, the ±10% band
# drawn).
#
#   bench/scripts/plan-check.sh            1 run of each shape (about 6 minutes)
#   RUNS=3 bench/scripts/plan-check.sh     what bench/results-plan-check holds (15 minutes)
#
# Shapes: idle connections; fixed-rate fan-out in one room over members, rates and sizes
# (issue 27's five), each without and with --write-delay 20ms; a closed-loop fan-out; a
# fan-out of 1,000-byte JSON with --deflate and with TLS (a throwaway P-256 certificate);
# two nodes on one Redis (bench/scripts/cluster-fanout.sh, everything on CPU 0, so its
# busy share is both nodes' and Redis's, against the plan's 2 × a node + Redis; needs
# redis-server).
# Settings (environment): RUNS (1), SECS (5), IDLE (15000), BACKENDS ("uring"),
# OUT (bench/results-plan-check), BUILD (1).
set -euo pipefail
cd "$(dirname "$0")/../.."

secs=${SECS:-5}
idle=${IDLE:-15000}
out=${OUT:-bench/results-plan-check}
BACKENDS=${BACKENDS:-uring}
RUNS=${RUNS:-1}
command -v redis-server >/dev/null || { echo "plan-check.sh: redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
# shellcheck source=bench/scripts/side-by-side.sh
. bench/scripts/side-by-side.sh

server_log=$(mktemp)
pki=$(mktemp -d)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
  -keyout "$pki/key.pem" -out "$pki/cert.pem" 2>/dev/null
trap 'stop_server; rm -rf "$server_log" "$pki"' EXIT

# This sitting's figures.
port=9590
taskset -c 0 "$roomcast" serve --shards 1 --rate 0 --ping-interval 5 --pong-timeout 2 \
  --listen "127.0.0.1:$port" >/dev/null 2>"$server_log" &
pid=$!
wait_port "$port"
taskset -c 1 "$bench" --server "127.0.0.1:$port" --server-pid "$pid" --server-cpu 0 \
  calibrate --connections 5000 --figures "$out/figures.json" | grep '^calibrate'
stop_server

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
side_by_side
# side_by_side reports over the whole results file: the second set adds to the first.
scenarios=("fanout --members 2000 --rate 50 --size 1000 --json --secs $secs")
modes="deflate tls"
mode_flags() {
  case $1 in
    deflate) server_extra=(--deflate) client_extra=(--deflate) ;;
    tls) server_extra=(--tls-cert "$pki/cert.pem" --tls-key "$pki/key.pem") client_extra=(--tls) ;;
  esac
}
side_by_side
RUNS=$runs MEMBERS=2000 RATE=50 SECS=$secs CHECK_ORDER=0 BUILD=0 OUT="$out/cluster" \
  bench/scripts/cluster-fanout.sh >/dev/null
python3 bench/scripts/plan-check.py "$out" "$roomcast" "$out/cluster"
