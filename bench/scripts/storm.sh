#!/usr/bin/env bash
# A reconnect storm against the connect hook (issue 28): per case a fresh roomcast on
# CPU 0 with `--hook-connect` pointing at the backend inside `roomcast-bench storm` (on
# CPU 1 with the load generator), two waves each (cold, then everything closed and
# reconnected). The cases, as bench/RESULTS.md reports them:
#
#   unique      CONNECTIONS connections, every one its own user, no cache_ttl
#   cached      the same, the backend answering cache_ttl 60 (the second wave is warm)
#   tabs        CONNECTIONS connections over CONNECTIONS/10 users (ten tabs each)
#   tabs-cached the same with cache_ttl 60
#
#   bench/scripts/storm.sh                               every case once
#   CASES=unique CONNECTIONS=2000 bench/scripts/storm.sh   a smoke run
#
# Settings (environment): CONNECTIONS (20000), LATENCY (backend ms, 20), CASES ("unique
# cached tabs tabs-cached"), RUNS (1), SHARDS (2), BACKEND (uring), MAX_INFLIGHT (the
# server's --hook-max-inflight, 256), HOOK_TIMEOUT (2s), BACKEND_PORT (9100), OUT
# (bench/results-storm), BUILD (1: cargo build --release first).
#
# Everything it starts listens on 127.0.0.1 only and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

connections=${CONNECTIONS:-20000}
latency=${LATENCY:-20}
cases=${CASES:-unique cached tabs tabs-cached}
runs=${RUNS:-1}
shards=${SHARDS:-2}
backend=${BACKEND:-uring}
max_inflight=${MAX_INFLIGHT:-256}
hook_timeout=${HOOK_TIMEOUT:-2s}
backend_port=${BACKEND_PORT:-9100}
out=${OUT:-bench/results-storm}
build=${BUILD:-1}

for tool in taskset ss; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done
if [ "$build" = 1 ]; then
  cargo build --release --locked -p roomcast -p roomcast-bench 2>&1 | tail -1
fi
bench=${CARGO_TARGET_DIR:-target}/release/roomcast-bench
roomcast=${CARGO_TARGET_DIR:-target}/release/roomcast
version=$("$roomcast" --version | awk '{print $2}')
mkdir -p "$out/logs"
results="$out/RESULTS.jsonl"

server_pid=
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# A roomcast on CPU 0 asking the bench's backend: sets server_pid and server_addr (from
# the first line it prints: `roomcast 0.1.0 listening on ADDR (backend …)`).
start_server() { # log
  local log=$1 line
  taskset -c 0 "$roomcast" serve --shards "$shards" --rate 0 --backend "$backend" \
    --listen 127.0.0.1:0 --hook-connect "http://127.0.0.1:$backend_port/connect" \
    --hook-max-inflight "$max_inflight" --hook-timeout "$hook_timeout" \
    >"$log.out" 2>"$log" &
  server_pid=$!
  for _ in $(seq 200); do
    line=$(head -n 1 "$log.out" 2>/dev/null || true)
    if [[ $line == *" listening on "* ]]; then
      server_addr=${line#* listening on }
      server_addr=${server_addr%% *}
      return 0
    fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "roomcast did not start" >&2
  cat "$log" >&2
  exit 1
}

users_of() { # case
  case $1 in
    tabs*) echo $((connections / 10)) ;;
    *) echo "$connections" ;;
  esac
}

for c in $cases; do
  ttl=0
  [[ $c == *cached ]] && ttl=60
  users=$(users_of "$c")
  for run in $(seq "$runs"); do
    log="$out/logs/$c-$run"
    start_server "$log.log"
    echo "== $c: $connections connections, $users users, ${latency} ms, cache_ttl $ttl (run $run/$runs; server $server_addr, pid $server_pid)"
    status=0
    timeout --kill-after=10 600 taskset -c 1 "$bench" --server "$server_addr" \
      --server-pid "$server_pid" --server-cpu 0 --server-version "$version" \
      --server-name "roomcast-$backend-$shards" --out "$results" \
      storm --connections "$connections" --users "$users" --hook-latency-ms "$latency" \
      --cache-ttl "$ttl" --backend-listen "127.0.0.1:$backend_port" \
      --hook-max-inflight "$max_inflight" || status=$?
    stop_server
    if grep -qE 'WARN|ERROR|panicked' "$log.log"; then
      echo "   !! $log.log:"
      grep -E 'WARN|ERROR|panicked' "$log.log" | sort | uniq -c | sort -rn | head -5 | sed 's/^/      /'
    fi
    [ "$status" = 0 ] || echo "   !! roomcast-bench exited with $status"
  done
done
