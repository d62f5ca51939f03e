#!/usr/bin/env bash
# Profiles a running process (the broker, or anything) and writes an SVG flamegraph.
#
#   scripts/flamegraph.sh PID [seconds=10] [out=target/flamegraph.svg]
#
# Uses perf's software cpu-clock event (this VM exposes no hardware counters) with DWARF call
# graphs, then inferno. Installs linux-perf and inferno when missing.
set -euo pipefail
pid="${1:?usage: scripts/flamegraph.sh PID [seconds] [out.svg]}"
seconds="${2:-10}"
out="${3:-target/flamegraph.svg}"
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; }
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked
data=$(mktemp /tmp/sluice-perf.XXXXXX)
trap 'rm -f "$data"' EXIT
perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$pid" -o "$data" -- sleep "$seconds" 2>/dev/null
mkdir -p "$(dirname "$out")"
perf script -i "$data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph --title "sluice pid $pid, ${seconds}s" > "$out"
echo "flamegraph: $out"
