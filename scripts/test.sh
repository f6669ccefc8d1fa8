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

echo "== cargo test (workspace)"
cargo test --workspace --release --locked 2>&1

if [ "$quick" = 0 ] && [ -x scripts/autobahn.sh ]; then
  echo "== Autobahn|Testsuite"
  scripts/autobahn.sh
fi
