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
runs=${RUNS:-3}
backends=${BACKENDS:-uring epoll}
out=${OUT:-bench/results-tls}
build=${BUILD:-1}

[ "$build" = 1 ] && cargo build --release --locked -p roomcast -p roomcast-bench 2>&1 | tail -1
bench=target/release/roomcast-bench
roomcast=target/release/roomcast
version=$("$roomcast" --version | awk '{print $2}')
mkdir -p "$out"
results="$out/RESULTS.jsonl"
: >"$results"
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
pid=""
stop_server() {
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}
trap 'stop_server; rm -rf "$pki"' EXIT

for scenario in "${scenarios[@]}"; do
  for run in $(seq "$runs"); do
    for backend in $backends; do
      for mode in plain tls; do
        port=$((port + 1))
        server_flags=(serve --shards 1 --rate 0 --backend "$backend" --listen "127.0.0.1:$port")
        client_flags=()
        if [ "$mode" = tls ]; then
          server_flags+=(--tls-cert "$pki/cert.pem" --tls-key "$pki/key.pem")
          client_flags+=(--tls)
        fi
        taskset -c 0 "$roomcast" "${server_flags[@]}" >/dev/null 2>"$pki/server.log" &
        pid=$!
        for _ in $(seq 100); do
          (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
          sleep 0.05
        done
        name="roomcast-$backend"
        [ "$mode" = tls ] && name="$name+tls"
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
