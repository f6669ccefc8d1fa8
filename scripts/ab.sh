#!/usr/bin/env bash
# A/B: two revisions of roomcast side by side in one sitting, the way scripts/bench.sh runs
# its servers: each server alone on CPU 0 (`taskset -c 0`, `serve --shards 1 --rate 0`),
# the load generator on CPU 1, a fresh server process per run, the two sides alternating
# run by run (A B A B …). One roomcast-bench binary (the NEW side's) drives both, so only
# the server differs.
#
#   scripts/ab.sh BASE_REV [NEW_REV]
#
#   BASE_REV, NEW_REV  anything `git rev-parse` takes. Each is checked out with
#                      `git worktree add --detach $ABDIR/<sha>` and built there into
#                      $ABDIR/target-<sha> (a build already there is reused). Without
#                      NEW_REV, the NEW side is this working tree as it is, built in place
#                      (`cargo build --release --locked -p roomcast -p roomcast-bench`).
#
# Figures (all lower is better), per backend, RUNS runs per side:
#   echo           echo --connections 100 --depth 16 --size 32 --secs S  -> server_cpu_ns_per_msg
#   fanout 500     fanout --members 500 --rate 0 --secs S                -> server_cpu_ns_per_delivery
#   fanout 5000    fanout --members 5000 --rate 0 --secs S               -> server_cpu_ns_per_delivery
#   idle 15000     idle --connections 15000 --hold-secs H                -> user_bytes_per_conn_marginal
#   slow           slow --members 500 --fraction 0.1 --rate 0 --secs S, server with
#                  --slow-policy drop-oldest                             -> with.server_cpu_ns_per_delivery
#   slowdeflate    the same with --deflate on both sides                 -> with.server_cpu_ns_per_delivery
#   (slow and slowdeflate run only when ONLY names them: a slow member's cost to its shard)
#   echotls, fanout500tls, idletls   echo, fan-out 500 and idle over wss (`--tls` on the
#                  load, a throwaway certificate on the servers; idle's handshakes at most
#                  64 in flight over 4 workers, as bench/scripts/tls.sh); only when ONLY
#                  names them
#
# The default (4 scenarios × 2 backends × 2 sides × 5 runs, 80 fresh servers) takes about
# 15 minutes on a 2-CPU box, plus the builds.
#
# Environment:
#   RUNS=5               runs per side, per scenario and backend
#   BACKENDS="uring epoll"   roomcast `serve --backend` values to run
#   SECS=5  HOLD=3       echo/fanout seconds; idle hold seconds
#   IDLE_CONNS=15000     idle connections
#   ONLY="echo fanout500 fanout5000 idle"   the scenarios to run (a subset, by key)
#   QUICK=1              smoke test: RUNS=1 SECS=1 HOLD=1 unless set
#   THRESHOLD=3          percent worse (new vs base median) that gets flagged
#   ABDIR=/tmp/ab        worktrees, target dirs
#   OUT=$ABDIR/results-<base>-vs-<new>-<time>   AB.md, RAW.jsonl, logs, the binaries run
#   SERVER_CPU=0 CLIENT_CPU=1 PORT=9500
#   REPORT_ONLY=1 OUT=dir   redo AB.md from dir/RAW.jsonl without running anything
#
# The table goes to stdout (and $OUT/AB.md); progress goes to stderr. RAW.jsonl holds each
# run's roomcast-bench JSON line with an "ab" object added (side, rev, backend, run, figure).
# Exit status 1 if any run failed (the table says which).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
case "$1" in -h | --help) usage ;; esac

base_arg=$1
new_arg=${2:-}
quick=${QUICK:-0}
if [ "$quick" = 1 ]; then
  runs=${RUNS:-1} secs=${SECS:-1} hold=${HOLD:-1}
else
  runs=${RUNS:-5} secs=${SECS:-5} hold=${HOLD:-3}
fi
backends=${BACKENDS:-uring epoll}
idle_conns=${IDLE_CONNS:-15000}
only=${ONLY:-echo fanout500 fanout5000 idle}
threshold=${THRESHOLD:-3}
abdir=${ABDIR:-/tmp/ab}
server_cpu=${SERVER_CPU:-0}
client_cpu=${CLIENT_CPU:-1}
port=${PORT:-9500}
for v in runs secs hold idle_conns port; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "ab.sh: ${v^^} must be a positive integer, not '${!v}'" >&2; exit 2; }
done
[[ $threshold =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "ab.sh: THRESHOLD must be a number" >&2; exit 2; }
for b in $backends; do
  case "$b" in uring | epoll | auto) ;; *) echo "ab.sh: BACKENDS: '$b' is not uring, epoll or auto" >&2; exit 2 ;; esac
done
[ -n "${backends// /}" ] || { echo "ab.sh: BACKENDS is empty" >&2; exit 2; }
for tool in git jq taskset timeout ss sha256sum; do
  command -v "$tool" >/dev/null || { echo "ab.sh: needs $tool" >&2; exit 1; }
done

log() { echo "ab: $*" >&2; }

# rev -> full sha (dies if unknown)
resolve() {
  git -C "$repo" rev-parse --verify --quiet "$1^{commit}" || {
    echo "ab.sh: unknown revision '$1'" >&2
    exit 2
  }
}

base_sha=$(resolve "$base_arg")
base_short=$(git -C "$repo" rev-parse --short "$base_sha")
if [ -n "$new_arg" ]; then
  new_sha=$(resolve "$new_arg")
  new_short=$(git -C "$repo" rev-parse --short "$new_sha")
  new_label=$new_short
  new_desc="$new_short $(git -C "$repo" log -1 --format=%s "$new_sha")"
else
  new_sha=$(git -C "$repo" rev-parse HEAD)
  new_short=worktree
  dirty=""
  [ -z "$(git -C "$repo" status --porcelain --untracked-files=normal 2>/dev/null)" ] ||
    dirty=" + uncommitted changes"
  new_label="worktree"
  new_desc="the working tree $repo (HEAD $(git -C "$repo" rev-parse --short HEAD)$dirty)"
fi
base_desc="$base_short $(git -C "$repo" log -1 --format=%s "$base_sha")"

out=${OUT:-$abdir/results-$base_short-vs-$new_label-$(date +%Y%m%d-%H%M%S)}
raw="$out/RAW.jsonl"

# The TLS scenarios' certificate: a throwaway P-256 one, made once per sitting.
tls_args=""
if [[ " $only " == *tls* ]]; then
  mkdir -p "$out/pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
    -keyout "$out/pki/key.pem" -out "$out/pki/cert.pem" 2>/dev/null
  tls_args="--tls-cert $out/pki/cert.pem --tls-key $out/pki/key.pem"
fi

# The scenarios: key | label | JSON path in .figures | unit | roomcast-bench arguments
# | extra server arguments
scenarios_all=(
  "echo|echo 100×16×32 B|server_cpu_ns_per_msg|server ns/msg|echo --connections 100 --depth 16 --size 32 --secs $secs"
  "fanout500|fan-out 500, closed loop|server_cpu_ns_per_delivery|server ns/delivery|fanout --members 500 --rate 0 --secs $secs"
  "fanout5000|fan-out 5,000, closed loop|server_cpu_ns_per_delivery|server ns/delivery|fanout --members 5000 --rate 0 --secs $secs"
  "idle|idle $idle_conns|user_bytes_per_conn_marginal|user-space B/conn (marginal)|idle --connections $idle_conns --hold-secs $hold"
  "slow|slow: 500 members, 10% never read, drop-oldest|with.server_cpu_ns_per_delivery|server ns/delivery|slow --members 500 --fraction 0.1 --rate 0 --secs $secs|--slow-policy drop-oldest"
  "slowdeflate|slow, deflate: 500 members, 10% never read, drop-oldest|with.server_cpu_ns_per_delivery|server ns/delivery|slow --members 500 --fraction 0.1 --rate 0 --secs $secs --deflate|--slow-policy drop-oldest --deflate"
  "echotls|echo 100×16×32 B, wss|server_cpu_ns_per_msg|server ns/msg|echo --connections 100 --depth 16 --size 32 --secs $secs --tls|$tls_args"
  "fanout500tls|fan-out 500, closed loop, wss|server_cpu_ns_per_delivery|server ns/delivery|fanout --members 500 --rate 0 --secs $secs --tls|$tls_args"
  "idletls|idle $idle_conns, wss|user_bytes_per_conn_marginal|user-space B/conn (marginal)|idle --connections $idle_conns --hold-secs $hold --workers 4 --concurrency 64 --tls|$tls_args"
)
scenarios=()
for key in $only; do
  found=0
  for s in "${scenarios_all[@]}"; do
    if [ "${s%%|*}" = "$key" ]; then scenarios+=("$s"); found=1; fi
  done
  [ "$found" = 1 ] || { echo "ab.sh: ONLY: unknown scenario '$key' (echo fanout500 fanout5000 idle slow slowdeflate echotls fanout500tls idletls)" >&2; exit 2; }
done

# ---------------------------------------------------------------------------- report

# AB.md from RAW.jsonl: per figure and backend, each side's median and min–max, the ratio
# of the medians new/base, and a flag past THRESHOLD percent worse.
report() {
  local md="$out/AB.md"
  [ -s "$raw" ] || { echo "ab.sh: no results in $raw" >&2; return 1; }
  {
    echo "# roomcast A/B: $base_short vs $new_label"
    echo
    jq -rs '(map(select(.machine)) | .[0] // {}) as $r | "Machine: \($r.machine.cpu) (\($r.machine.cores) cores), kernel \($r.machine.kernel). First run \(.[0].ab.date // "?")."' "$raw"
    echo
    echo "- base: $base_desc"
    echo "- new: $new_desc"
    if [ -f "$out/binaries.txt" ]; then
      echo "- binaries run (sha256): $(tr '\n' ';' <"$out/binaries.txt" | sed 's/;$//; s/;/; /g')"
    fi
    echo "- server: \`taskset -c $server_cpu roomcast serve --shards 1 --rate 0 --backend B --listen …\`, a fresh process per run;"
    echo "  load: \`taskset -c $client_cpu roomcast-bench\` (the new side's, for both); runs alternate base, new, base, new …"
    echo "- scenarios:"
    jq -rs 'map(.ab) | unique_by(.figure) | sort_by(.date) | .[] | "  - \(.figure): `\(.args)` → `figures.\(.field)`"' "$raw"
    echo
    echo "Lower is better for every figure. ratio = new median / base median; ⚠ marks new more than ${threshold}% worse."
    echo "\"ranges overlap\": the two sides' min–max intersect (the difference may be noise)."
    echo
    echo "| figure | backend | runs base/new | base median | base min–max | new median | new min–max | new/base | flag |"
    echo "|---|---|---|---|---|---|---|---|---|"
    # One TSV row per (figure, backend): n, median, min, max per side, and notes.
    jq -rs --arg order "$only" --arg backends "$backends" '
      def med: sort | if length == 0 then null
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
      def stats: [.[] | .ab.value | select(type == "number")] as $v
        | {n: ($v | length), med: ($v | med), min: ($v | min), max: ($v | max),
           notes: ([.[] | .ab.notes[]?] | unique | join(", ")),
           failed: ([.[] | select(.ab.value == null)] | length)};
      ($order | split(" ") | map(select(. != ""))) as $keys
      | ($backends | split(" ") | map(select(. != ""))) as $bs
      | group_by([.ab.figure, .ab.backend])
      | map({key: .[0].ab.figure, "label": .[0].ab["label"], unit: .[0].ab.unit, backend: .[0].ab.backend,
             base: (map(select(.ab.side == "base")) | stats),
             new: (map(select(.ab.side == "new")) | stats)})
      | sort_by([(.key as $k | $keys | index($k)) // 99, (.backend as $b | $bs | index($b)) // 99])
      | .[]
      | [.["label"] + ", " + .unit, .backend,
         .base.n, .base.med, .base.min, .base.max, .base.failed, .base.notes,
         .new.n, .new.med, .new.min, .new.max, .new.failed, .new.notes]
      | map(if . == null then "-" else tostring end) | @tsv' "$raw" |
      awk -F '\t' -v thr="$threshold" '
        function f(v) { if (v == "-") return "–"; return (v + 0 >= 100 || v + 0 <= -100) ? sprintf("%.0f", v) : sprintf("%.1f", v) }
        function range(lo, hi) { return lo == "-" ? "–" : f(lo) "–" f(hi) }
        {
          bn = $3; bm = $4; bl = $5; bh = $6; bf = $7; bnote = $8
          nn = $9; nm = $10; nl = $11; nh = $12; nf = $13; nnote = $14
          ratio = "–"; flag = ""
          if (bm != "-" && nm != "-" && bm + 0 > 0) {
            r = nm / bm; ratio = sprintf("%.3f", r); pct = (r - 1) * 100
            if (pct > thr) flag = sprintf("⚠ %+.1f%% worse", pct)
            else if (pct < -thr) flag = sprintf("%+.1f%% better", pct)
            else flag = sprintf("%+.1f%%", pct)
            if (bl != "-" && nl != "-" && nl + 0 <= bh + 0 && bl + 0 <= nh + 0 && (bn > 1 || nn > 1)) flag = flag ", ranges overlap"
          }
          if (bf > 0) flag = flag "; base: " bf " run(s) FAILED"
          if (nf > 0) flag = flag "; new: " nf " run(s) FAILED"
          if (bnote != "") flag = flag "; base: " bnote
          if (nnote != "") flag = flag "; new: " nnote
          sub(/^; /, "", flag)
          printf "| %s | %s | %s/%s | %s | %s | %s | %s | %s | %s |\n", $1, $2, bn, nn, f(bm), range(bl, bh), f(nm), range(nl, nh), ratio, flag
        }'
    echo
    echo "Raw results: $raw (one roomcast-bench JSON line per run, with \`.ab\`: side, rev, backend, run, figure, value)."
  } >"$md"
  cat "$md"
  log "wrote $md"
}

if [ "${REPORT_ONLY:-0}" = 1 ]; then
  [ -n "${OUT:-}" ] || { echo "ab.sh: REPORT_ONLY needs OUT=<a previous results dir>" >&2; exit 2; }
  report
  exit 0
fi

# ---------------------------------------------------------------------------- build

mkdir -p "$abdir" "$out/logs" "$out/bin/base" "$out/bin/new"

# Checks out sha in $abdir/<short> (a detached worktree) and builds it into
# $abdir/target-<short>, unless that build is already there. Prints the release dir.
build_rev() {
  local sha=$1 short dir target
  short=$(git -C "$repo" rev-parse --short "$sha")
  dir="$abdir/$short"
  target="$abdir/target-$short"
  if [ -x "$target/release/roomcast" ] && [ -x "$target/release/roomcast-bench" ]; then
    log "reusing the build of $short in $target"
    echo "$target/release"
    return 0
  fi
  if [ -d "$dir" ]; then
    local head
    head=$(git -C "$dir" rev-parse HEAD 2>/dev/null || true)
    [ "$head" = "$sha" ] || {
      echo "ab.sh: $dir exists but is not a checkout of $short (HEAD: ${head:-none}); remove it" >&2
      exit 1
    }
  else
    log "git worktree add --detach $dir $short"
    git -C "$repo" worktree add --force --detach "$dir" "$sha" >&2
  fi
  log "building $short (cargo build --release --locked, target $target; takes minutes)"
  (cd "$dir" && CARGO_TARGET_DIR="$target" cargo build --release --locked -p roomcast -p roomcast-bench) \
    >"$out/logs/build-$short.log" 2>&1 || {
    tail -20 "$out/logs/build-$short.log" >&2
    echo "ab.sh: building $short failed (log: $out/logs/build-$short.log)" >&2
    exit 1
  }
  echo "$target/release"
}

base_rel=$(build_rev "$base_sha")
if [ -n "$new_arg" ]; then
  new_rel=$(build_rev "$new_sha")
else
  log "building the working tree in $repo (cargo build --release --locked)"
  cargo build --release --locked -p roomcast -p roomcast-bench >"$out/logs/build-worktree.log" 2>&1 || {
    tail -20 "$out/logs/build-worktree.log" >&2
    echo "ab.sh: building the working tree failed" >&2
    exit 1
  }
  new_rel="${CARGO_TARGET_DIR:-$repo/target}/release"
fi

# Copies of the binaries, so a rebuild elsewhere during the session changes nothing here.
cp "$base_rel/roomcast" "$out/bin/base/roomcast"
cp "$new_rel/roomcast" "$out/bin/new/roomcast"
cp "$new_rel/roomcast-bench" "$out/bin/roomcast-bench"
base_bin="$out/bin/base/roomcast"
new_bin="$out/bin/new/roomcast"
bench="$out/bin/roomcast-bench"
{
  echo "base roomcast $(sha256sum "$base_bin" | cut -c1-12)"
  echo "new roomcast $(sha256sum "$new_bin" | cut -c1-12)"
  echo "roomcast-bench $(sha256sum "$bench" | cut -c1-12)"
} >"$out/binaries.txt"
if cmp -s "$base_bin" "$new_bin"; then log "note: base and new roomcast binaries are identical (an A/A run)"; fi

for side_bin in "$base_bin" "$new_bin"; do
  "$side_bin" serve --help 2>/dev/null | grep -q -- '--backend' || {
    echo "ab.sh: $side_bin serve has no --backend flag; run with a revision that has one" >&2
    exit 1
  }
done

# ---------------------------------------------------------------------------- runs

server_pid=""
bench_pid=""
stop_server() {
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  # The first SIGTERM drains; give it 5 s, then SIGKILL.
  for _ in $(seq 50); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
cleanup() {
  if [ -n "$bench_pid" ]; then
    kill -TERM "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
    bench_pid=""
  fi
  stop_server
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# A fresh server (binary, backend, log) on the next free port; sets server_pid and port.
start_server() {
  local bin=$1 backend=$2 slog=$3 extra=${4:-}
  local tries=0
  port=$((port + 1))
  while ss -Htan "( sport = :$port )" | grep -q .; do
    tries=$((tries + 1))
    [ "$tries" -lt 200 ] || { echo "ab.sh: no free port near $port" >&2; exit 1; }
    port=$((port + 1))
  done
  # shellcheck disable=SC2086
  taskset -c "$server_cpu" "$bin" serve --shards 1 --rate 0 --backend "$backend" \
    --listen "127.0.0.1:$port" $extra >"$slog" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    kill -0 "$server_pid" 2>/dev/null || break
    if ss -Htln "( sport = :$port )" | grep -q .; then return 0; fi
    sleep 0.05
  done
  cat "$slog" >&2
  echo "ab.sh: server did not start: $bin --backend $backend on port $port" >&2
  stop_server
  return 1
}

# The longest a run may take before it is killed: its own seconds plus connecting and
# settling (idle settles 3 s twice, then 2 s; fan-out drains up to 3 s).
run_limit() { echo $((secs + hold + 180)); }

total=$(( ${#scenarios[@]} * runs * $(wc -w <<<"$backends") * 2 ))
log "$total runs (RUNS=$runs, backends: $backends); results in $out"
: >"$raw"
failures=0
n=0
for s in "${scenarios[@]}"; do
  IFS='|' read -r key label field unit args server_args <<<"$s"
  for run in $(seq "$runs"); do
    for backend in $backends; do
      for side in base new; do
        n=$((n + 1))
        if [ "$side" = base ]; then bin=$base_bin rev=$base_short; else bin=$new_bin rev=$new_label; fi
        tag=$(printf '%03d-%s-%s-%s' "$n" "$key" "$backend" "$side")
        log "[$n/$total] $side ($rev, $backend): $args (run $run/$runs)"
        one="$out/logs/$tag.json"
        : >"$one"
        value=null
        notes='[]'
        if start_server "$bin" "$backend" "$out/logs/$tag.server.log" "$server_args"; then
          # shellcheck disable=SC2086
          timeout --kill-after=10 "$(run_limit)" taskset -c "$client_cpu" "$bench" \
            --server "127.0.0.1:$port" --server-pid "$server_pid" \
            --server-name "roomcast-$side" --server-version "$rev" --out "$one" \
            $args >"$out/logs/$tag.bench.log" 2>&1 &
          bench_pid=$!
          rc=0
          wait "$bench_pid" || rc=$?
          bench_pid=""
          alive=1
          kill -0 "$server_pid" 2>/dev/null || alive=0
          stop_server
          grep -E '^(echo|fanout|idle):' "$out/logs/$tag.bench.log" | sed 's/^/    /' >&2 || true
          if [ "$rc" != 0 ] || [ "$alive" = 0 ] || [ ! -s "$one" ]; then
            log "run FAILED (bench exit $rc, server alive: $alive); logs: $out/logs/$tag.*"
            tail -5 "$out/logs/$tag.bench.log" >&2 || true
            failures=$((failures + 1))
            notes='["server died"]'
            [ "$alive" = 1 ] && notes="[\"bench exit $rc\"]"
          fi
        else
          failures=$((failures + 1))
          notes='["server did not start"]'
        fi
        # The run's JSON line with .ab added (a stub when the run produced none).
        line=$(tail -n 1 "$one" 2>/dev/null || true)
        [ -n "$line" ] || line='{"figures":{}}'
        jq -c --arg side "$side" --arg rev "$rev" --arg backend "$backend" --argjson run "$run" \
          --arg figure "$key" --arg flabel "$label" --arg unit "$unit" --arg field "$field" \
          --arg args "$args" --argjson notes "$notes" --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" '
          .figures as $f
          | ($f | getpath($field | split(".")) | if type == "number" and . > 0 then . else null end) as $v
          | .ab = {side: $side, rev: $rev, backend: $backend, run: $run, figure: $figure,
                   "label": $flabel, unit: $unit, field: $field, args: $args, date: $date, value: $v,
                   notes: ($notes
                     + (if ($f.client_busy // 0) > 0.9 then ["client-bound"] else [] end)
                     + (if $figure | startswith("fanout") then
                          (if ($f.completeness // 1) < 0.99 then ["incomplete fan-out"] else [] end)
                        else [] end)
                     + (if $figure == "idle" then
                          (if ($f.failed // 0) > 0 or ($f.connections // 0) < (.params.connections // 0)
                             then ["idle connections failed"] else [] end)
                          + (if ($f.still_open_after_hold // 0) < ($f.connections // 0)
                             then ["idle connections dropped"] else [] end)
                        else [] end))}' <<<"$line" >>"$raw"
        v=$(tail -n 1 "$raw" | jq -r '.ab.value')
        log "    -> $field = $v"
      done
    done
  done
done

echo >&2
report
if [ "$failures" -gt 0 ]; then
  log "$failures run(s) failed; see $out/logs"
  exit 1
fi
