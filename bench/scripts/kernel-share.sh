#!/usr/bin/env bash
# Where a fan-out delivery's CPU goes: roomcast (both backends) and uWebSockets.js side by
# side, each alone on CPU 0 with a fresh process per run, the load generator on CPU 1 (as
# in scripts/bench.sh), servers alternating run by run. During each run `perf record -C 0`
# samples CPU 0 for PERF_SECS; the report splits those samples into the server's own user
# space (its binary and libraries) and the kernel (system calls, the TCP send path, and the
# loopback receive path of the members' sockets, which runs on the sender's CPU here).
#
#   bench/scripts/kernel-share.sh            3 runs of 2 workloads on 3 servers (~6 minutes)
#   RUNS=1 SECS=4 bench/scripts/kernel-share.sh                                  a smoke run
#
# Settings (environment): MEMBERS (5000), RATE (the fixed-rate run's msg/s, 200: 1M
# deliveries/s at 5,000 members), SECS (8), PERF_SECS (3, inside the run after 3 s), RUNS
# (3), OUT (bench/results-kernel/MEMBERS), BUILD (1). Needs `perf` (Debian: linux-perf,
# installed when missing) and the uWebSockets.js peer (`npm ci` in bench/peers/uws).
set -euo pipefail
cd "$(dirname "$0")/../.."

members=${MEMBERS:-5000}
rate=${RATE:-200}
secs=${SECS:-8}
perf_secs=${PERF_SECS:-3}
runs=${RUNS:-3}
out=${OUT:-bench/results-kernel/$members}

command -v perf >/dev/null || apt-get install -y -q linux-perf >/dev/null
[ -d bench/peers/uws/node_modules ] || (cd bench/peers/uws && npm ci --silent)
[ "${BUILD:-1}" = 1 ] && cargo build --release --locked -p roomcast -p roomcast-bench 2>&1 | tail -1
bench=target/release/roomcast-bench
mkdir -p "$out"
results="$out/RESULTS.jsonl"
: >"$results"

servers=(
  "roomcast-uring|target/release/roomcast serve --shards 1 --rate 0 --backend uring --listen"
  "roomcast-epoll|target/release/roomcast serve --shards 1 --rate 0 --backend epoll --listen"
  "uWebSockets.js|node bench/peers/uws/peer-uws.mjs"
)
workloads=("$rate" 0)
port=9600
for run in $(seq "$runs"); do
  for r in "${workloads[@]}"; do
    for entry in "${servers[@]}"; do
      name=${entry%%|*}
      cmd=${entry#*|}
      port=$((port + 1))
      # shellcheck disable=SC2086
      taskset -c 0 $cmd "127.0.0.1:$port" >/dev/null 2>"$out/server.log" &
      pid=$!
      for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.05
      done
      echo "== $name: fanout --members $members --rate $r (run $run/$runs)"
      taskset -c 1 "$bench" --server "127.0.0.1:$port" --server-pid "$pid" --server-cpu 0 \
        --server-name "$name" --out "$results" \
        fanout --members "$members" --rate "$r" --secs "$secs" >"$out/bench.log" 2>&1 &
      bpid=$!
      sleep 3
      perf record -q -F 999 -C 0 -o "$out/perf.data" -- sleep "$perf_secs" >/dev/null 2>&1
      wait "$bpid"
      grep -E '^fanout' "$out/bench.log" | sed 's/.*64 B: //' | cut -c1-160
      # The kernel's share of CPU 0's busy samples (the idle task's left out); the rest is
      # user space (the server's).
      kernel=$(perf report -i "$out/perf.data" --sort comm,dso --stdio 2>/dev/null |
        awk '/^ +[0-9.]+%/ && $2 != "swapper" {
               gsub("%", "", $1); busy += $1; if ($3 ~ /\[kernel/) k += $1 }
             END {print (busy > 0 ? 100 * k / busy : 0)}')
      python3 - "$results" "$name" "$r" "$kernel" <<'PY'
import json, sys
path, name, rate, kernel = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
lines = open(path).read().splitlines()
last = json.loads(lines[-1])
assert last["server"]["name"] == name and last["params"]["rate"] == rate, last["params"]
last["figures"]["cpu0_kernel_share"] = kernel / 100
lines[-1] = json.dumps(last)
open(path, "w").write("\n".join(lines) + "\n")
PY
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    done
  done
done
rm -f "$out/perf.data" "$out/perf.data.old" "$out/bench.log" "$out/server.log"

python3 - "$results" "$members" >"$out/REPORT.md" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
members = sys.argv[2]
print(f"# Where a fan-out delivery's CPU goes ({members} members, one room, 64 B messages)\n")
print("Medians over the runs; CPU 0 ran the server alone. \"CPU 0 ns/delivery\": all of CPU 0's busy")
print("time (softirq included) per delivery. \"kernel share\": the share of CPU 0's busy `perf`")
print("samples (the idle task's left out) in the kernel; \"user ns/delivery\" is the rest, the")
print("server's own code.\n")
print("| workload | server | runs | deliveries/s | p50 ms | p99 ms | CPU 0 ns/delivery | kernel share | user ns/delivery | kernel ns/delivery | load gen busy |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
order = ["roomcast-uring", "roomcast-epoll", "uWebSockets.js"]
for rate in sorted({r["params"]["rate"] for r in runs}, reverse=True):
    label = f"{rate:g} msg/s" if rate else "closed loop"
    for name in order:
        rs = [r["figures"] for r in runs if r["server"]["name"] == name and r["params"]["rate"] == rate]
        if not rs:
            continue
        med = lambda k: statistics.median(f[k] for f in rs)
        total = med("server_cpu_total_ns_per_delivery")
        kshare = med("cpu0_kernel_share")
        user = statistics.median(f["server_cpu_total_ns_per_delivery"] * (1 - f["cpu0_kernel_share"]) for f in rs)
        kern = statistics.median(f["server_cpu_total_ns_per_delivery"] * f["cpu0_kernel_share"] for f in rs)
        busy = med("client_busy")
        flag = " †" if busy >= 0.9 else ""
        print(f"| {label} | {name} | {len(rs)} | {med('deliveries_per_sec'):,.0f}{flag} | "
              f"{med('latency_p50_us') / 1000:.1f} | {med('latency_p99_us') / 1000:.1f} | {total:,.0f} | "
              f"{kshare:.1%} | {user:,.0f} | {kern:,.0f} | {busy:.2f}{flag} |")
print("\n† the load generator was at least 90% busy: a lower bound for that server.")
PY
cat "$out/REPORT.md"
