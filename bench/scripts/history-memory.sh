#!/usr/bin/env bash
# What the rooms' history costs in memory, measured against `roomcast plan`'s figure.
#
#   bench/scripts/history-memory.sh [RUNS]
#
# Runs a fresh single-shard server per run, alternating --history-size $SIZE_ON and 0
# (A B A B …), fills ROOMS rooms with PER messages of BYTES bytes of data through one
# connection (bench/scripts/history-memory.py, the tests' Python venv), and reads the
# server's RSS once every room is full. Prints each run, the median RSS difference per
# room, the server's own history gauge, and what `roomcast plan` predicts.
#
# Environment: ROOMS=2000 PER=64 BYTES=100 SIZE_ON=64 PORT=9790
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-3}
ROOMS=${ROOMS:-2000} PER=${PER:-64} BYTES=${BYTES:-100} SIZE_ON=${SIZE_ON:-64} PORT=${PORT:-9790}
BIN=target/release/roomcast
PY=.venv-py3/bin/python
[ -x "$BIN" ] || cargo build --release --locked --bin roomcast
[ -x "$PY" ] || { echo "run scripts/test.sh once for the Python venv" >&2; exit 1; }

one() { # history size -> "rss_kb gauge_bytes"
  local size=$1 log; log=$(mktemp)
  # --out-ring 4096: the one member gets a batch from every room each turn.
  taskset -c 0 "$BIN" serve --listen 127.0.0.1:$PORT --shards 1 --rate 0 --history-size "$size" \
    --max-rooms-per-conn 100000 --out-ring 4096 >/dev/null 2>&1 &
  local srv=$!
  for _ in $(seq 50); do curl -sf 127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
  taskset -c 1 "$PY" bench/scripts/history-memory.py $PORT "$ROOMS" "$PER" "$BYTES" >"$log" 2>&1 &
  local cli=$!
  for _ in $(seq 600); do grep -q filled "$log" && break; kill -0 $cli 2>/dev/null || break; sleep 0.5; done
  grep -q filled "$log" || { cat "$log" >&2; kill $cli $srv; exit 1; }
  sleep 1.5 # the gauge is refreshed once a second
  local rss gauge
  rss=$(awk '/VmRSS/{print $2}' /proc/$srv/status)
  gauge=$(curl -s 127.0.0.1:$PORT/metrics | awk '/^roomcast_history_bytes/{s+=$2} END{print s+0}')
  kill $cli $srv 2>/dev/null; wait $cli $srv 2>/dev/null || true
  rm -f "$log"
  echo "$rss $gauge"
}

on=() off=()
for run in $(seq "$RUNS"); do
  read -r a g <<<"$(one "$SIZE_ON")"; on+=("$a"); gauge=$g
  read -r b _ <<<"$(one 0)"; off+=("$b")
  echo "run $run: RSS with --history-size $SIZE_ON ${a} KiB, with 0 ${b} KiB; history gauge $g B"
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
m_on=$(median "${on[@]}") m_off=$(median "${off[@]}")
per_room=$(( (m_on - m_off) * 1024 / ROOMS ))
plan=$("$BIN" plan --connections 1 --rooms "$ROOMS" --msg-size "$BYTES" --msg-rate 0 \
  --history-size "$SIZE_ON" | awk '/history:/{for(i=1;i<=NF;i++) if($i=="×"){print $(i+1); exit}}')
echo "$ROOMS rooms × $PER messages of $BYTES B: measured $per_room B per room (median RSS difference)," \
  "gauge $(( gauge / ROOMS )) B per room, plan $plan B per room"
