#!/usr/bin/env bash
# How much of a send the server's CPU pays for the receiving end on loopback: the same
# fixed-rate fan-outs with loopback's receive processing left where the sender runs (as
# always on loopback: the receiver's TCP and IP input run in softirq on the sending CPU)
# and steered to the load generator's CPU with RPS (`rps_cpus` of lo's queue = CPU 1).
# The difference in the server CPU's busy time per send is what `roomcast plan --link nic`
# leaves out. Server on CPU 0, load generator on CPU 1, a fresh server per run,
# alternating; root is needed to write the RPS mask (restored on exit).
#
#   bench/scripts/link-share.sh             2 runs of 3 shapes (about 4 minutes)
#
# Settings (environment): RUNS (2), SECS (5), SHAPES ("members:msg/s:bytes ..."),
# BACKENDS ("uring"), OUT (bench/results-link), BUILD (1).
set -euo pipefail
cd "$(dirname "$0")/../.."

secs=${SECS:-5}
shapes=${SHAPES:-2000:25:100 1000:50:2000 5000:10:1000}
out=${OUT:-bench/results-link}
BACKENDS=${BACKENDS:-uring}
RUNS=${RUNS:-2}
rps=/sys/class/net/lo/queues/rx-0/rps_cpus
[ -w "$rps" ] || { echo "link-share.sh: cannot write $rps (root needed)" >&2; exit 1; }
saved=$(cat "$rps")
# shellcheck source=bench/scripts/side-by-side.sh
. bench/scripts/side-by-side.sh

scenarios=()
for shape in $shapes; do
  IFS=: read -r members rate size <<<"$shape"
  scenarios+=("fanout --members $members --rate $rate --size $size --secs $secs")
done
port=9900
modes="plain rps"
mode_flags() {
  if [ "$1" = rps ]; then echo 2 >"$rps"; else echo 0 >"$rps"; fi
}
server_log=$(mktemp)
trap 'stop_server; echo "$saved" >"$rps"; rm -f "$server_log"' EXIT
side_by_side
