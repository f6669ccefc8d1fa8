# Sourced by deflate.sh and tls.sh once they have set `out`: builds (unless BUILD=0) and
# starts an empty `out/RESULTS.jsonl`. Then `side_by_side` runs every scenario of `scenarios` RUNS times on each
# backend of `backends`, each mode of `modes` in turn (plain, then the feature), alternating
# within each run; a fresh `roomcast serve --shards 1 --rate 0` per run pinned to CPU 0, the
# load generator on CPU 1 (as in scripts/bench.sh), results appended to `results`; then the
# report into `out`. The caller defines `mode_flags MODE`, which fills the arrays
# `server_extra` (more `serve` flags) and `client_extra` (more `roomcast-bench` flags), and
# sets `port` (the first server's is port + 1) and `server_log`.
# Settings (environment): RUNS (3), BACKENDS ("uring epoll"), BUILD (1).

runs=${RUNS:-3}
backends=${BACKENDS:-uring epoll}
[ "${BUILD:-1}" = 1 ] && cargo build --release --locked -p roomcast -p roomcast-bench 2>&1 | tail -1
bench=target/release/roomcast-bench
roomcast=target/release/roomcast
version=$("$roomcast" --version | awk '{print $2}')
mkdir -p "$out"
results="$out/RESULTS.jsonl"
: >"$results"

# Waits (up to 5 s) until something listens on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

pid=""
stop_server() {
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}

side_by_side() {
  local scenario run backend mode name
  for scenario in "${scenarios[@]}"; do
    for run in $(seq "$runs"); do
      for backend in $backends; do
        for mode in $modes; do
          port=$((port + 1))
          server_extra=()
          client_extra=()
          mode_flags "$mode"
          taskset -c 0 "$roomcast" serve --shards 1 --rate 0 --backend "$backend" \
            --listen "127.0.0.1:$port" "${server_extra[@]}" >/dev/null 2>"$server_log" &
          pid=$!
          wait_port "$port" || true
          name="roomcast-$backend"
          [ "$mode" = plain ] || name="$name+$mode"
          echo "== $name: $scenario (run $run/$runs)"
          # shellcheck disable=SC2086
          taskset -c 1 "$bench" --server "127.0.0.1:$port" --server-pid "$pid" --server-cpu 0 \
            --server-name "$name" --server-version "$version" --out "$results" \
            "${client_extra[@]}" $scenario
          stop_server
        done
      done
    done
  done
  "$bench" report "$results" --dir "$out"
}
