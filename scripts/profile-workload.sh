#!/usr/bin/env bash
# One command: start sluice (pinned to CPU ${BROKER_CPU:-0}), run a workload against it with
# sluice-bench (pinned to CPU ${CLIENT_CPU:-1}), record a flamegraph of the broker while the
# workload runs, stop everything.
#
#   scripts/profile-workload.sh bench/workloads/small-max-throughput.workload [out.svg] [seconds=8]
set -euo pipefail
cd "$(dirname "$0")/.."
workload="${1:?usage: scripts/profile-workload.sh WORKLOAD [out.svg] [seconds]}"
out="${2:-target/flamegraph-workload.svg}"
seconds="${3:-8}"
port="${PORT:-29692}"
data="$PWD/target/profile-data"
cargo build --release -p sluice-net -p sluice-bench >/dev/null
rm -rf "$data"
taskset -c "${BROKER_CPU:-0}" target/release/sluice --cores 1 \
  --override "listeners=PLAINTEXT://127.0.0.1:$port" --override "log.dirs=$data" \
  >target/profile-sluice.log 2>&1 &
broker=$!
trap 'kill "$broker" 2>/dev/null; wait "$broker" 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
taskset -c "${CLIENT_CPU:-1}" target/release/sluice-bench --workload "$workload" \
  --bootstrap "127.0.0.1:$port" --pid "$broker" --seconds $((seconds + 6)) --warmup-seconds 2 \
  >target/profile-bench.txt 2>&1 &
bench=$!
sleep 4
scripts/flamegraph.sh "$broker" "$seconds" "$out"
wait "$bench" || true
sed -n 3p target/profile-bench.txt
