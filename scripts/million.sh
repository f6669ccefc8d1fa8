#!/usr/bin/env bash
# The headline run: one roomcast process holding 10k, 100k, 500k and 1,000,000 idle,
# heartbeated connections on this box, the load generator on the same box. For each size:
# a fresh server, `roomcast-bench idle` (answering pings, held past one ping interval), and
# `roomcast plan`'s prediction for the same size next to what was measured.
#
#   scripts/million.sh                 calibrate, then 10k, 100k, 500k, 1M (about 25 minutes)
#   SIZES="10000 100000" scripts/million.sh
#   PLAN_ONLY=1 scripts/million.sh     calibrate again and redo PLAN.md against the last runs
#
# Needs the sysctls of scripts/tune.sh (conntrack, backlogs, port range): it stops if
# `roomcast check` finds anything short. Server flags, and why:
#   --shards 64           RLIMIT_NOFILE (20,000 here, not raisable) caps each io_uring
#                         fixed-file table; 64 rings × ~15.6k sockets. Idle shards sleep.
#   --ping-interval 120   a ping round trip costs ~21 µs of server CPU here (kernel TCP on
#                         both ends of loopback); at 30 s, 1M connections would be 33k
#                         pings/s, which with the load generator's share saturates 2 vCPUs
#                         (`roomcast plan --ping-interval 30` says so).
# Writes bench/results-scale/ (figures.json and CALIBRATE.jsonl, SCALE.jsonl, REPORT.md,
# plots, PLAN.md: the prediction from the 50k calibration against each measurement).
set -euo pipefail
cd "$(dirname "$0")/.."

sizes=${SIZES:-"10000 100000 500000 1000000"}
interval=120
hold=$((interval + 5))
shards=64
out=bench/results-scale
port=9400

cargo build --release --locked -p roomcast -p roomcast-bench 2>&1 | tail -1
max=$(echo "$sizes" | tr ' ' '\n' | sort -n | tail -1)
target/release/roomcast check --connections "$max" --shards "$shards" || {
  echo "million.sh: the machine is short of something above; scripts/tune.sh applies the fixes" >&2
  exit 1
}
mkdir -p "$out"
results="$out/SCALE.jsonl"
[ -n "${PLAN_ONLY:-}" ] || : >"$results"

server=""
stop_server() {
  [ -n "$server" ] && kill -9 "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  server=""
}
trap stop_server EXIT

# A fresh server (its log's name, then extra flags); waits until the previous one's port is
# free.
start_server() {
  local log="$out/server-$1.log"
  shift
  while ss -Htln "sport = :$port" | grep -q .; do sleep 1; done
  target/release/roomcast serve --listen "127.0.0.1:$port" --shards "$shards" "$@" >"$log" 2>&1 &
  server=$!
  for _ in $(seq 100); do
    grep -q listening "$log" && break
    sleep 0.1
  done
}

# The figures `roomcast plan` predicts from, measured small (50k connections) on the same
# server settings; the runs below check the prediction at up to 20 times that.
start_server calibrate --rate 0 --ping-interval "$interval"
: >"$out/CALIBRATE.jsonl"
target/release/roomcast-bench --server "127.0.0.1:$port" --server-pid "$server" \
  --out "$out/CALIBRATE.jsonl" calibrate --connections 50000 --figures "$out/figures.json"
stop_server

if [ -z "${PLAN_ONLY:-}" ]; then
  for n in $sizes; do
    start_server "$n" --ping-interval "$interval"
    target/release/roomcast-bench --server "127.0.0.1:$port" --server-pid "$server" \
      --server-version "$(target/release/roomcast --version | awk '{print $2}')" \
      --out "$results" idle --connections "$n" --hold-secs "$hold"
    stop_server
  done
fi

# roomcast plan's prediction for each measured size, side by side.
plan_table="$out/PLAN.md"
printf '| connections | RSS predicted | measured | error | kernel predicted | measured | error | idle CPU predicted | measured |\n|---|---|---|---|---|---|---|---|---|\n' >"$plan_table"
for n in $(python3 -c 'import json,sys; [print(json.loads(l)["figures"]["connections"]) for l in open(sys.argv[1]) if l.strip()]' "$results"); do
  target/release/roomcast plan --connections "$n" --shards "$shards" \
    --ping-interval "$interval" --figures "$out/figures.json" --json >"$out/plan-$n.json"
  python3 - "$results" "$out/plan-$n.json" "$n" >>"$plan_table" <<'EOF'
import json, sys
runs = [json.loads(l)["figures"] for l in open(sys.argv[1]) if l.strip()]
run = [r for r in runs if r["connections"] == int(sys.argv[3])][-1]
plan = json.load(open(sys.argv[2]))
mib = 1 << 20
rss, kernel = run["rss_held"], run["kernel_slab_bytes_per_conn"] * run["connections"] / 2
err = lambda p, m: f"{(p - m) / m * 100:+.1f}%"
print(f"| {run['connections']:,} | {plan['user_bytes'] / mib:.1f} MiB | {rss / mib:.1f} MiB | {err(plan['user_bytes'], rss)} "
      f"| {plan['kernel_bytes'] / mib:.0f} MiB | {kernel / mib:.0f} MiB | {err(plan['kernel_bytes'], kernel)} "
      f"| {plan['heartbeat_cpus'] * 1000:.0f} ms/s | {run['idle_cpu_ms_per_s']:.0f} ms/s |")
EOF
done

target/release/roomcast-bench report "$results" --dir "$out"
python3 scripts/scale_report.py "$out" "$(git rev-parse --short HEAD)"
cat "$plan_table"
