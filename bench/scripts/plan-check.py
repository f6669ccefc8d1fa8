#!/usr/bin/env python3
"""`roomcast plan` beside each run of bench/scripts/plan-check.sh: CPU (the server CPU's busy
share, softirq included) and memory (server RSS) predicted and measured, each error stated,
as PLAN-CHECK.md and plan-check.svg (predicted against measured, the ±10% band drawn) in
the results directory.

    plan-check.py DIR ROOMCAST [CLUSTER_DIR]
"""
import json
import subprocess
import sys
from collections import defaultdict
from statistics import median

out, roomcast = sys.argv[1], sys.argv[2]
sources = [f"{out}/RESULTS.jsonl"] + [f"{d}/RESULTS.jsonl" for d in sys.argv[3:]]
MIB = 1024 * 1024


def plan(connections, rooms=0, rate=1.0, size=64, delay="0", extra=()):
    args = [roomcast, "plan", "--json", "--link", "loopback", "--shards", "1", "--cpus", "1",
            "--figures", f"{out}/figures.json",
            "--connections", str(connections), "--rooms", str(rooms), "--msg-rate", str(rate),
            "--msg-size", str(size), "--write-delay", delay, *extra]
    p = subprocess.run(args, capture_output=True, text=True)
    return json.loads(p.stdout)


rows = defaultdict(list)
lines_in = [(src, line) for src in sources for line in open(src)]
for src, line in lines_in:
    r = json.loads(line)
    name, p, f = r["server"]["name"], r["params"], r["figures"]
    if src != sources[0] and (name != "roomcast-2-nodes" or p["rate"] == 0):
        # Of the cluster script's runs, the two nodes at a fixed rate: its single node
        # repeats the grid, and in its closed loop both nodes saturate one shared CPU,
        # which a plan of two machines does not describe.
        continue
    delay = "20ms" if "delay20ms" in name else "0"
    extra = [flag for mode, flag in (("+deflate", "--deflate"), ("+tls", "--tls")) if mode in name]
    mode = " ".join(extra)
    nodes = 2 if name == "roomcast-2-nodes" else 1
    if nodes > 1:
        extra += ["--nodes", "2"]
        mode = "2 nodes + Redis"
    if r["scenario"] == "idle":
        n = f["connections"]
        pl = plan(n)
        key = (f"idle {n:,}", delay, mode)
        # Kernel: the server's end of each socket (the slab figure counts both ends).
        kernel = f["kernel_slab_bytes_per_conn"] * n / 2
        rows[key].append((None, None, f["rss_held"], pl["user_bytes"], "", None, None, kernel, pl["kernel_bytes"]))
    elif r["scenario"] == "fanout":
        members, size = p["members"], p["size"]
        closed = p["rate"] == 0
        # A closed loop runs at what the server manages: plan for the rate it measured.
        rate = f["deliveries_per_sec"] / members if closed else p["rate"]
        # The publisher is a connection too.
        pl = plan(members + 1, 1, rate, size, delay, extra)
        if nodes > 1:
            # Both nodes and Redis ran on the one CPU measured.
            pl["cpus"] = nodes * pl["cpus"] + pl["redis_cpus"]
            pl["egress_bytes_per_sec"] *= nodes
        body = " JSON" if p.get("json") else ""
        label = f"{members:,} × {'closed loop' if closed else f'{rate:g}/s'} × {size} B{body}"
        note = "client-bound" if f.get("client_bound") else ""
        egress = f["wire_bytes"] / f["secs"]
        rows[(label, delay, mode)].append((f.get("server_cpu0_busy"), pl["cpus"], f.get("server_rss_bytes"), pl["user_bytes"], note, egress, pl["egress_bytes_per_sec"], None, None))


def err(pred, meas):
    return None if not meas or pred is None else pred / meas - 1


lines = ["# roomcast plan against measurement", "",
         "`bench/scripts/plan-check.sh`: one shard on CPU 0, the load generator on CPU 1, a fresh "
         "server per run; `roomcast plan --link loopback --shards 1 --cpus 1 --figures figures.json` "
         "for the same shape, the figures measured by `roomcast-bench calibrate` first in the same sitting. "
         "CPU: CPU 0's busy share over the run (softirq included) against the plan's total; "
         "memory: server RSS with everyone connected against the plan's user space. "
         "Medians over the runs; error = plan / measured − 1.", "",
         "| shape | write delay | flags | runs | measured CPUs | plan CPUs | CPU error | measured RSS MiB | plan user MiB | memory error | egress MB/s measured / plan | kernel MiB measured / plan | note |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
points = []
for (label, delay, mode), runs in rows.items():
    med = lambda i: median([x[i] for x in runs if x[i] is not None]) if any(x[i] is not None for x in runs) else None
    mc, pc, mm, pm, me_, pe, mk, pk = med(0), med(1), med(2), med(3), med(5), med(6), med(7), med(8)
    notes = ", ".join(sorted({x[4] for x in runs if x[4]}))
    ce, me = err(pc, mc), err(pm, mm)
    fmt = lambda v, d=2: "–" if v is None else f"{v:.{d}f}"
    pct = lambda e: "–" if e is None else f"{e * 100:+.0f}%"
    pair = lambda m, p, scale, d: "–" if m is None else f"{m / scale:.{d}f} / {p / scale:.{d}f} ({pct(err(p, m))})"
    lines.append(f"| {label} | {delay} | {mode or '–'} | {len(runs)} | {fmt(mc)} | {fmt(pc)} | {pct(ce)} | {fmt(mm and mm / MIB, 1)} | {fmt(pm / MIB, 1)} | {pct(me)} | {pair(me_, pe, 1e6, 1)} | {pair(mk, pk, MIB, 1)} | {notes} |")
    points.append((label + (f" {mode}" if mode else ""), delay if not mode else mode, mc, pc, mm, pm))
within = lambda k: sum(1 for p in points if p[k] is not None and abs(p[k + 1] / p[k] - 1) <= 0.15)
counted = lambda k: sum(1 for p in points if p[k] is not None)
fig = json.load(open(f"{out}/figures.json"))
lines += ["", f"Within ±15%: CPU {within(2)} of {counted(2)} shapes, memory {within(4)} of {counted(4)}.", "",
          f"This sitting's figures (`figures.json`): {fig['send_cpu_ns']:.0f} ns per send, "
          f"{fig['delivery_cpu_ns']:.0f} ns per delivery, {fig['wire_byte_ns']:.2f} ns per byte, "
          f"{fig['message_cpu_ns']:.0f} ns per message in, {fig['user_bytes_per_conn']:.0f} B per idle connection "
          f"({fig['measured_on']}).", ""]
open(f"{out}/PLAN-CHECK.md", "w").write("\n".join(lines))
print("\n".join(lines))


def panel(x0, title, unit, pts, scale):
    """One square scatter at x0: measured on x, predicted on y, the same linear axes from 0."""
    size, pad = 320, 50
    # Ticks in the units shown (CPUs, MiB): a nice step, as many as cover the points.
    top = max([max(m, p) for _, _, m, p in pts] + [1e-9]) * 1.1 / scale
    step = nice(top / 5)
    ticks = int(-(-top // step))
    top = step * ticks * scale
    step *= scale
    sx = lambda v: x0 + pad + v / top * size
    sy = lambda v: 30 + size - v / top * size
    clip = f"plot{x0}"
    s = [f'<text x="{x0 + pad + size / 2}" y="18" text-anchor="middle" font-weight="bold">{title}</text>',
         f'<clipPath id="{clip}"><rect x="{sx(0)}" y="{sy(top)}" width="{size}" height="{size}"/></clipPath>']
    # From the origin along +10% to the top edge, the top-right corner, down the right edge
    # to −10%, back along it.
    band = " ".join(f"{sx(x)},{sy(y)}" for x, y in ((0, 0), (top / 1.1, top), (top, top), (top, top * 0.9)))
    s.append(f'<polygon points="{band}" fill="#dde8f5" clip-path="url(#{clip})"/>')
    s.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(top)}" y2="{sy(top)}" stroke="#6a8caf"/>')
    s.append(f'<rect x="{sx(0)}" y="{sy(top)}" width="{size}" height="{size}" fill="none" stroke="#333"/>')
    for i in range(ticks + 1):
        v = step * i
        lab = f"{v / scale:.{decimals(step / scale)}f}"
        s.append(f'<text x="{sx(v)}" y="{sy(0) + 16}" text-anchor="middle" font-size="11">{lab}</text>')
        s.append(f'<text x="{sx(0) - 6}" y="{sy(v) + 4}" text-anchor="end" font-size="11">{lab}</text>')
    s.append(f'<text x="{sx(top / 2)}" y="{sy(0) + 34}" text-anchor="middle" font-size="12">measured ({unit})</text>')
    s.append(f'<text x="{x0 + 14}" y="{sy(top / 2)}" text-anchor="middle" font-size="12" transform="rotate(-90 {x0 + 14} {sy(top / 2)})">plan ({unit})</text>')
    for label, delay, m, p in pts:
        colour = {"0": "#c0392b", "20ms": "#27ae60", "2 nodes + Redis": "#e67e22"}.get(delay, "#8e44ad")
        s.append(f'<circle cx="{sx(m)}" cy="{sy(p)}" r="4" fill="{colour}"><title>{label}, write delay {delay}: measured {m / scale:.2f}, plan {p / scale:.2f}</title></circle>')
    return s


def nice(x):
    import math
    e = 10 ** math.floor(math.log10(x))
    return next(m * e for m in (1, 2, 2.5, 5, 10) if m * e >= x)


def decimals(step):
    """Decimals that show every multiple of `step` exactly (0.25: 2, 0.5: 1, 5: 0)."""
    for d in range(4):
        if abs(round(step, d) - step) < 1e-9:
            return d
    return 4


cpu = [(l, d, mc, pc) for l, d, mc, pc, _, _ in points if mc is not None]
mem = [(l, d, mm, pm) for l, d, _, _, mm, pm in points if mm is not None]
svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="860" height="440" font-family="sans-serif">',
       '<rect width="100%" height="100%" fill="white"/>']
svg += panel(0, "server CPU", "CPUs", cpu, 1.0)
svg += panel(430, "server memory", "MiB", mem, MIB)
svg += ['<circle cx="60" cy="425" r="4" fill="#c0392b"/><text x="70" y="429" font-size="12">no write delay</text>',
        '<circle cx="200" cy="425" r="4" fill="#27ae60"/><text x="210" y="429" font-size="12">--write-delay 20ms</text>',
        '<circle cx="360" cy="425" r="4" fill="#8e44ad"/><text x="370" y="429" font-size="12">--deflate, TLS</text>',
        '<circle cx="490" cy="425" r="4" fill="#e67e22"/><text x="500" y="429" font-size="12">two nodes on Redis</text>',
        '<rect x="640" y="419" width="14" height="10" fill="#dde8f5"/><text x="660" y="429" font-size="12">within ±10% of measured</text>',
        '</svg>']
open(f"{out}/plan-check.svg", "w").write("\n".join(svg))
