"""Writes bench/SCALE.md from scripts/million.sh's results, and splices it into
bench/RESULTS.md (everything after the scale marker is replaced).

usage: scale_report.py RESULTS_DIR COMMIT
"""

import json
import pathlib
import sys
import time

out = pathlib.Path(sys.argv[1])
commit = sys.argv[2]
runs = [json.loads(l) for l in (out / "SCALE.jsonl").read_text().splitlines() if l.strip()]
figures = json.loads((out / "figures.json").read_text())
plan_table = (out / "PLAN.md").read_text()
MIB = 1 << 20
GIB = 1 << 30

lines = [
    "## A million idle connections (`scripts/million.sh`)",
    "",
    f"Run {time.strftime('%Y-%m-%d', time.gmtime())}, commit {commit}. One roomcast process,"
    " `roomcast serve --shards 64 --ping-interval 120`, a fresh one per size; the load"
    " generator (`roomcast-bench idle`, one worker process per 15,000 connections, one source"
    " address per 8,000) on the same 2-vCPU box; the sysctls of `scripts/tune.sh`. Each size is"
    " held 125 s, longer than one ping interval: every connection is pinged during the hold,"
    " and the workers count the ones that answered. Raw results:"
    " [results-scale/SCALE.jsonl](results-scale/SCALE.jsonl).",
    "",
    "| connections | ramp | server RSS | user B/conn (marginal / average) | kernel B/conn, both ends | box memory in use | server CPU idle | pings in the hold | pong timeouts | open after the hold | answered a ping |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]
for r in runs:
    f = r["figures"]
    lines.append(
        f"| {f['connections']:,} ({f['failed']} failed, {f['retries']} retried) "
        f"| {f['ramp_secs']:.0f} s ({f['connections'] / f['ramp_secs']:,.0f}/s) "
        f"| {f['rss_held'] / MIB:.1f} MiB "
        f"| {f['user_bytes_per_conn_marginal']:.0f} / {f['user_bytes_per_conn_avg']:.0f} "
        f"| {f['kernel_slab_bytes_per_conn']:,.0f} "
        f"| {f['box_used_before'] / GIB:.1f} → {f['box_used_held'] / GIB:.1f} GiB "
        f"| {f['idle_cpu_ms_per_s']:.0f} ms/s "
        f"| {f['pings_sent_in_hold']:,} | {f['pong_timeouts_in_hold']} "
        f"| {f['still_open_after_hold']:,} | {f['answered_ping_in_hold']:,} |"
    )
lines += [
    "",
    "`roomcast plan --shards 64 --ping-interval 120 --figures results-scale/figures.json`"
    " against the measurements. The figures were measured by"
    " `roomcast-bench calibrate --connections 50000` on the same server settings"
    f" ({figures['user_bytes_per_conn']:.0f} B per connection,"
    f" {figures['kernel_bytes_per_socket']:,.0f} B per socket,"
    f" {figures['shard_base_bytes'] / MIB:.2f} MiB per shard at rest,"
    f" {figures['ping_cpu_us']:.1f} µs per ping): the runs check the prediction at up to 20"
    " times the calibration's size. Kernel memory measured = slab growth / 2 (both ends of"
    " each loopback connection are on this box).",
    "",
    plan_table.strip(),
    "",
]
for svg, title in [
    ("idle-rss_held.svg", "server RSS against connections"),
    ("idle-user_bytes_per_conn_marginal.svg", "user-space bytes per connection"),
    ("idle-kernel_slab_bytes_per_conn.svg", "kernel bytes per connection"),
    ("idle-box_used_held.svg", "the box's memory in use"),
    ("idle-ramp_secs.svg", "ramp time"),
]:
    if (out / svg).exists():
        lines += [f"![{title}](results-scale/{svg})", ""]
notes = pathlib.Path("bench/SCALE-NOTES.md")
if notes.exists():
    lines += [notes.read_text().strip(), ""]
scale = "\n".join(lines)
pathlib.Path("bench/SCALE.md").write_text(scale)

marker = "<!-- scale: written by scripts/million.sh -->"
results = pathlib.Path("bench/RESULTS.md")
text = results.read_text() if results.exists() else ""
text = text.split(marker)[0].rstrip()
results.write_text(f"{text}\n\n{marker}\n\n{scale}")
print(f"wrote bench/SCALE.md and its section of bench/RESULTS.md")
