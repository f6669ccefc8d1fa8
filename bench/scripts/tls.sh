#!/usr/bin/env bash
# TLS against plain, side by side: the same workloads against roomcast with and without
# --tls-cert (a P-256 certificate made here with openssl), the clients speaking TLS 1.3
# (`roomcast-bench --tls`, AES-128-GCM) or not, alternating (plain, tls, plain, …), a fresh
# server per run, the server pinned to CPU 0 and the load generator to CPU 1 as in
# scripts/bench.sh.
#
#   bench/scripts/tls.sh                        3 runs on both backends (about 12 minutes)
#   RUNS=1 MEMBERS=500 SECS=2 IDLE=2000 bench/scripts/tls.sh      a smoke run
#
# Settings (environment): MEMBERS (5000), RATE (msg/s for the rate run, 20), SECS (10),
# IDLE (idle connections, 15000), HANDSHAKES (ramp connections, 3000), RUNS (3),
# BACKENDS ("uring epoll"), OUT (bench/results-tls), BUILD (1).
set -euo pipefail
cd "$(dirname "$0")/../.."

members=${MEMBERS:-5000}
rate=${RATE:-20}
secs=${SECS:-10}
idle=${IDLE:-15000}
handshakes=${HANDSHAKES:-3000}
out=${OUT:-bench/results-tls}
# shellcheck source=bench/scripts/side-by-side.sh
. bench/scripts/side-by-side.sh
# A throwaway certificate, outside the repository.
pki=$(mktemp -d)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
  -keyout "$pki/key.pem" -out "$pki/cert.pem" 2>/dev/null

scenarios=(
  "fanout --members $members --rate $rate --secs $secs --size 1024"
  "fanout --members $members --rate 0 --secs $secs --size 1024"
  "echo --connections 100 --depth 16 --size 32 --secs $secs"
  "ramp --connections $handshakes --concurrency 64"
  "idle --connections $idle --hold-secs 5 --workers 4 --concurrency 64"
)

port=9700
modes="plain tls"
mode_flags() {
  if [ "$1" = tls ]; then
    server_extra=(--tls-cert "$pki/cert.pem" --tls-key "$pki/key.pem")
    client_extra=(--tls)
  fi
}
server_log="$pki/server.log"
trap 'stop_server; rm -rf "$pki"' EXIT
side_by_side
