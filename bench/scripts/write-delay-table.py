"""The write-delay table: per shape and server, medians over the runs of server CPU (all of
CPU 0's busy time, softirq included) per delivery, sends per delivery (roomcast's
`roomcast_sends_total` over the run, handshakes and `joined` replies included) and
publish->delivery p50/p99, with the CPU ratio to the same shape's roomcast without a delay.

    python3 bench/scripts/write-delay-table.py DIR   (DIR holds RESULTS.jsonl and SENDS.jsonl)
"""
import json
import statistics
import sys
from collections import defaultdict

out = sys.argv[1]
runs = defaultdict(list)
for line in open(f"{out}/RESULTS.jsonl"):
    r = json.loads(line)
    p = r["params"]
    runs[((p["members"], p["rate"], p["size"]), r["server"]["name"])].append(r["figures"])
sends = defaultdict(list)
for line in open(f"{out}/SENDS.jsonl"):
    s = json.loads(line)["sends"]
    words = s["scenario"].split()
    shape = tuple(
        float(words[words.index(k) + 1]) if k == "--rate" else int(words[words.index(k) + 1])
        for k in ("--members", "--rate", "--size")
    )
    sends[(shape, s["server"])].append(s["count"])


def order(name):
    if "delay" not in name:
        return (0 if name.startswith("roomcast") else 9, 0)
    return (1, int(name.split("delay")[1].removesuffix("ms")))


print("| members × msg/s × bytes | server | CPU ns/delivery | vs no delay | sends/delivery | p50 ms | p99 ms | load gen busy |")
print("|---|---|---|---|---|---|---|---|")
for shape in sorted({k[0] for k in runs}, key=lambda s: (s[0] * s[1], s[0])):
    names = sorted({k[1] for k in runs if k[0] == shape}, key=order)
    base = None
    for name in names:
        f = runs[(shape, name)]
        med = lambda k: statistics.median(x[k] for x in f)
        cpu = med("server_cpu_total_ns_per_delivery")
        if name.startswith("roomcast") and "delay" not in name:
            base = cpu
        delivered = statistics.median(x["delivered"] for x in f)
        counted = [c for c in sends.get((shape, name), []) if c > 0]
        per_send = f"{statistics.median(counted) / delivered:.2f}" if counted else "–"
        ratio = f"{cpu / base:.2f}" if base else "–"
        bound = " †" if any(x["client_bound"] for x in f) else ""
        members, rate, size = shape
        print(
            f"| {members:,} × {rate:g} × {size:,} | {name} | {cpu:,.0f}{bound} | {ratio} | {per_send} "
            f"| {med('latency_p50_us') / 1000:.1f} | {med('latency_p99_us') / 1000:.1f} | {med('client_busy'):.0%} |"
        )
