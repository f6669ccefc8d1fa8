#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs
# every Rust test in the workspace and the Autobahn conformance suite on both backends.
#
#   scripts/test.sh            everything
#   scripts/test.sh --quick    Rust tests only (no Autobahn)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1

# Python 3 with the packages some tests call (tests/ops.rs parses /metrics with
# prometheus_client). Reinstalled only when the requirements change.
if [ ! -f .venv-py3/.installed ] || ! cmp -s scripts/python-requirements.txt .venv-py3/.installed; then
  echo "== Python venv for the tests (.venv-py3)"
  if ! python3 -m venv .venv-py3; then
    # Debian splits venv out of python3.
    apt-get install -y python3-venv >/dev/null && python3 -m venv .venv-py3
  fi
  .venv-py3/bin/pip install --quiet --disable-pip-version-check -r scripts/python-requirements.txt
  cp scripts/python-requirements.txt .venv-py3/.installed
fi

# Node with the `ws` client (tests/closes.rs), from Debian's packages and npm.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "== Node.js (Debian packages)"
  apt-get update >/dev/null && apt-get install -y nodejs npm >/dev/null
fi
if [ ! -f tests/clients/node_modules/.installed ] \
  || ! cmp -s tests/clients/package-lock.json tests/clients/node_modules/.installed; then
  echo "== Node packages for the tests (tests/clients)"
  (cd tests/clients && npm ci --no-audit --no-fund --loglevel=error)
  cp tests/clients/package-lock.json tests/clients/node_modules/.installed
fi

# The JavaScript client's dev dependency (`ws`, for its Node tests in clients/js/test).
if [ ! -f clients/js/node_modules/.installed ] \
  || ! cmp -s clients/js/package-lock.json clients/js/node_modules/.installed; then
  echo "== Node packages for the JavaScript client's tests (clients/js)"
  (cd clients/js && npm ci --no-audit --no-fund --loglevel=error)
  cp clients/js/package-lock.json clients/js/node_modules/.installed
fi

# HAProxy for tests/deploy.rs (sysctl/haproxy.cfg in front of two nodes), from Debian.
if ! command -v haproxy >/dev/null 2>&1; then
  echo "== HAProxy (Debian package)"
  apt-get update >/dev/null && apt-get install -y haproxy >/dev/null
fi

# The TLS tools for tests/tls.rs: openssl's s_client (a client other than rustls, which
# can send a KeyUpdate) and the scanners testssl.sh and sslscan, from Debian.
for tool in openssl:openssl testssl:testssl.sh sslscan:sslscan; do
  if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
    echo "== ${tool#*:} (Debian package)"
    apt-get update >/dev/null && apt-get install -y "${tool#*:}" >/dev/null
  fi
done

# Debian's Chromium for tests/resume.rs (an EventSource in a headless browser).
if ! command -v chromium >/dev/null 2>&1; then
  echo "== Chromium (Debian package)"
  apt-get update >/dev/null && apt-get install -y chromium >/dev/null
fi

# Debian's redis-server for tests/cluster.rs (the backplane; each test starts its own).
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "== Redis (Debian package)"
  apt-get update >/dev/null && apt-get install -y redis-server >/dev/null
fi

echo "== cargo test (workspace)"
# Everything above is installed: a test that would skip for a missing program fails instead.
export ROOMCAST_REQUIRE_ALL=1
cargo test --workspace --release --locked 2>&1

if [ "$quick" = 0 ] && [ -x scripts/autobahn.sh ]; then
  echo "== Autobahn|Testsuite"
  scripts/autobahn.sh
fi
