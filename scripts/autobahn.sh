#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzingclient (cases 1.* to 10.*, and 12.* and 13.* for
# permessage-deflate) against roomcast's /echo on each backend, the server run with
# --deflate (cases 1-10 offer no compression: they check the plain path is unchanged), then
# cases 1.* to 10.* again over wss:// (a self-signed certificate made with openssl), and
# fails on any FAILED case, any bad close behaviour, or any case that did not run. wstest exits 0 even when the server is down, so the report is what counts.
#
#   scripts/autobahn.sh                 both backends
#   scripts/autobahn.sh epoll           one backend
#
# Installs Autobahn|Testsuite 0.8.2 (Python 2.7 only) into .venv-autobahn on first use,
# with every dependency pinned in scripts/autobahn-requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
backends=("$@")
[ ${#backends[@]} -eq 0 ] && backends=(uring epoll)

venv="$root/.venv-autobahn"
if [ ! -x "$venv/bin/wstest" ]; then
  py2=""
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.18/bin/python" "$(command -v python2.7 || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then py2=$candidate; break; fi
  done
  if [ -z "$py2" ]; then
    echo "autobahn: needs Python 2.7 (pyenv install 2.7.18)" >&2
    exit 1
  fi
  echo "== installing Autobahn|Testsuite into $venv (Python 2.7: $py2)"
  "$py2" -m pip install -q "virtualenv==20.15.1"
  "$py2" -m virtualenv -q "$venv"
  "$venv/bin/pip" install -q --no-deps -r scripts/autobahn-requirements.txt
fi

cargo build --release --locked --bin roomcast
bin="$root/target/release/roomcast"
reports="$root/reports/autobahn"
mkdir -p "$reports"
status=0

# A self-signed certificate for the wss:// runs (the fuzzing client does not verify it).
pki="$reports/pki"
mkdir -p "$pki"
if [ ! -s "$pki/cert.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
    -keyout "$pki/key.pem" -out "$pki/cert.pem" 2>/dev/null
fi

# run AGENT BACKEND SCHEME MIN_CASES GROUP... -- SERVER_FLAG...
run() {
  local agent=$1 backend=$2 scheme=$3 min_cases=$4
  shift 4
  local groups=()
  while [ "$1" != "--" ]; do groups+=("$1"); shift; done
  shift
  local out="$reports/$agent"
  rm -rf "$out"
  local log="$reports/server-$agent.log"
  # Conformance is about /echo's answers; heartbeats (tested on their own) stay out of it.
  "$bin" serve --backend "$backend" --listen 127.0.0.1:0 --max-message 16777216 \
    --ping-interval 3600 --pong-timeout 60 "$@" >"$log.out" 2>"$log" &
  local pid=$!
  local addr=""
  for _ in $(seq 1 100); do
    addr=$(sed -n 's/.* listening on \([^ ]*\) .*/\1/p' "$log.out" | head -n1)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  if [ -z "$addr" ]; then
    echo "autobahn[$agent]: server did not start"; cat "$log" "$log.out"; kill "$pid" 2>/dev/null || true
    status=1; return
  fi
  local spec="$reports/spec-$agent.json" cases
  cases=$(printf '"%s.*", ' "${groups[@]}")
  cat >"$spec" <<SPEC
{
  "outdir": "$out",
  "servers": [{"agent": "roomcast-$agent", "url": "$scheme://$addr/echo"}],
  "cases": [${cases%, }],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
SPEC
  echo "== autobahn: $agent on $scheme://$addr"
  (cd "$reports" && "$venv/bin/wstest" -m fuzzingclient -s "$spec" >"$reports/wstest-$agent.log" 2>&1) || true
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "autobahn[$agent]: server died during the run"; tail -n 20 "$log"; status=1; return
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$out/index.json" "roomcast-$agent" "$min_cases" "${groups[@]}" <<'CHECK' || status=1
import json, sys
path, agent, min_cases, want = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
try:
    cases = json.load(open(path))[agent]
except (OSError, KeyError, ValueError) as e:
    sys.exit(f"autobahn[{agent}]: no report ({e}): did the cases run?")
ok_behavior = {"OK", "NON-STRICT", "INFORMATIONAL"}
ok_close = {"OK", "INFORMATIONAL"}
bad = [(cid, r["behavior"], r["behaviorClose"]) for cid, r in cases.items()
       if r["behavior"] not in ok_behavior or r["behaviorClose"] not in ok_close]
groups = sorted({cid.split(".")[0] for cid in cases}, key=int)
# Autobahn has no section 8.
missing = [g for g in want if g != "8" and g not in groups]
summary = {}
for r in cases.values():
    summary[r["behavior"]] = summary.get(r["behavior"], 0) + 1
print(f"autobahn[{agent}]: {len(cases)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.items())))
for cid, b, c in sorted(bad):
    print(f"  FAILED {cid}: behavior {b}, close {c}")
if missing:
    print(f"  groups that never ran: {missing}")
if len(cases) < min_cases:
    print(f"  only {len(cases)} cases ran, expected at least {min_cases}")
sys.exit(1 if bad or missing or len(cases) < min_cases else 0)
CHECK
}

# Autobahn 0.8.2 has 301 cases in groups 1-10 (with 9.* the performance cases), and 216
# in 12 and 13 (permessage-deflate: 90 and 126).
for backend in "${backends[@]}"; do
  run "$backend" "$backend" ws 517 1 2 3 4 5 6 7 8 9 10 12 13 -- --deflate
  # The same frames inside TLS records.
  run "$backend-wss" "$backend" wss 301 1 2 3 4 5 6 7 8 9 10 -- \
    --tls-cert "$pki/cert.pem" --tls-key "$pki/key.pem"
done
exit $status
