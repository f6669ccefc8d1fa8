#!/usr/bin/env bash
# Runs every roomcast-bench scenario against roomcast and the reference servers in
# bench/peers, alternately (A B C A B C …), each server pinned to CPU 0 and the load
# generator to CPU 1, a fresh server process per run. Then writes the medians, the
# roomcast/peer ratios and the plots (bench/results/) and bench/RESULTS.md.
#
#   scripts/bench.sh            the full run: 3 runs of everything (about 15 minutes)
#   scripts/bench.sh --quick    1 run, smaller and shorter (under 5 minutes)
#   RUNS=5 scripts/bench.sh     more runs
#   scripts/bench.sh --report-only   rebuild the report and RESULTS.md from the last full run
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
report_only=0
[ "${1:-}" = "--quick" ] && quick=1
[ "${1:-}" = "--report-only" ] && report_only=1
runs=${RUNS:-3}
out=bench/results
[ "$quick" = 1 ] && { runs=${RUNS:-1}; out=bench/results-quick; }

cargo build --release --locked -p roomcast -p roomcast-bench -p roomcast-peers 2>&1 | tail -1
# The uWebSockets.js peer (bench/peers/uws): Node from Debian when there is none, and its
# node_modules from the committed package-lock.json when missing.
if [ "$report_only" = 0 ]; then
  if ! command -v node >/dev/null; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo apt-get install -y -qq nodejs npm >/dev/null
  fi
  [ -d bench/peers/uws/node_modules ] || (cd bench/peers/uws && npm ci --no-audit --no-fund)
fi
mkdir -p "$out"
results="$out/RESULTS.jsonl"
[ "$report_only" = 1 ] || : >"$results"

port=9300
bench=target/release/roomcast-bench
version=$(target/release/roomcast --version | awk '{print $2}')

# name, command (the listen address is appended), version
servers=(
  "roomcast|target/release/roomcast serve --shards 1 --rate 0 --backend uring --listen|$version"
  "roomcast-epoll|target/release/roomcast serve --shards 1 --rate 0 --backend epoll --listen|$version"
  "tokio-tungstenite|target/release/peer-tungstenite|0.26.2"
  "fastwebsockets|target/release/peer-fastwebsockets|0.10.0"
  # uWS.js v20.30.0 (the npm build @trufflesuite/uws-js-unofficial 20.30.0-unofficial.0).
  # Pinned like the others: Node runs the event loop, and uWS's sockets on it, on one
  # thread; libuv's threadpool is unused here (no fs, dns or crypto), and V8's helper
  # threads (GC) share CPU 0 and count in the server's CPU.
  "uWebSockets.js|node bench/peers/uws/peer-uws.mjs|20.30.0"
)

if [ "$quick" = 1 ]; then
  scenarios=(
    "idle --connections 5000 --hold-secs 2"
    "ramp --connections 3000"
    "echo --connections 100 --depth 16 --size 32 --secs 3"
    "fanout --members 2000 --rate 20 --secs 3"
    "fanout --members 2000 --rate 0 --secs 3"
    "churn --rate 200 --secs 3"
    "slow --members 1000 --rate 50 --secs 3 --fraction 0.1"
  )
else
  scenarios=(
    "idle --connections 15000 --hold-secs 5"
    "idle --connections 5000 --hold-secs 3"
    "ramp --connections 10000"
    "echo --connections 100 --depth 16 --size 32 --secs 10"
    "fanout --members 5000 --rate 20 --secs 10"
    "fanout --members 500 --rate 0 --secs 5"
    "fanout --members 2000 --rate 0 --secs 5"
    "fanout --members 5000 --rate 0 --secs 10"
    "churn --rate 300 --secs 10"
    "slow --members 2000 --rate 20 --secs 10 --fraction 0.1"
  )
fi

start_server() { # name cmd -> sets pid
  local cmd=$1
  port=$((port + 1))
  # shellcheck disable=SC2086
  taskset -c 0 $cmd "127.0.0.1:$port" >/dev/null 2>"$out/server.log" &
  pid=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "server did not start: $cmd" >&2
  cat "$out/server.log" >&2
  exit 1
}

pid=""
stop_server() {
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}
trap stop_server EXIT

for scenario in "${scenarios[@]}"; do
  [ "$report_only" = 1 ] && break
  for run in $(seq "$runs"); do
    for s in "${servers[@]}"; do
      IFS='|' read -r name cmd ver <<<"$s"
      start_server "$cmd"
      echo "== $name: $scenario (run $run/$runs)"
      # shellcheck disable=SC2086
      # --server-cpu 0: CPU 0's busy and softirq time from /proc/stat, beside the server
      # threads' own CPU (io_uring moves work into softirq on the server's CPU).
      taskset -c 1 "$bench" --server "127.0.0.1:$port" --server-pid "$pid" --server-cpu 0 \
        --server-name "$name" --server-version "$ver" --out "$results" $scenario
      stop_server
    done
  done
done

"$bench" report "$results" --dir "$out"

if [ "$quick" = 0 ]; then
  {
    echo "# roomcast-bench results"
    echo
    echo "The latest full \`scripts/bench.sh\` run, $(date -u -r "$results" +%Y-%m-%d), commit $(git rev-parse --short HEAD)."
    echo "Each server ran alone on CPU 0 (\`taskset -c 0\`; roomcast with \`--shards 1 --rate 0\`), the"
    echo "load generator on CPU 1, a fresh server process per run, servers alternating run by run."
    echo "Raw results: [results/RESULTS.jsonl](results/RESULTS.jsonl). Scenarios, exactly as run"
    echo "(\`roomcast-bench --server … --server-pid … <scenario>\`):"
    echo
    for scenario in "${scenarios[@]}"; do echo "- \`$scenario\`"; done
    echo
    sed 's#](\([a-z]\)#](results/\1#' "$out/REPORT.md"
    # What other scripts measured (resume, Redis, deflate, TLS, kernel share) and how to
    # read the figures: kept across runs in bench/NOTES.md.
    if [ -f bench/NOTES.md ]; then echo; cat bench/NOTES.md; fi
    # The million (scripts/million.sh) keeps its section.
    if [ -f bench/SCALE.md ]; then
      printf '\n<!-- scale: written by scripts/million.sh -->\n\n'
      cat bench/SCALE.md
    fi
  } >bench/RESULTS.md
  echo "wrote bench/RESULTS.md"
fi
cat "$out/REPORT.md"
