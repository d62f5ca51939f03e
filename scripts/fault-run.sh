#!/usr/bin/env bash
# Longer randomized fault runs against a five-node sluice cluster in network namespaces: the
# `randomized_faults` test of net/tests/broker/faults.rs (kill -9, SIGSTOP, unplugged nodes,
# nodes cut off from the others, cut links; at most two nodes down at once), ending with the
# checker (every acks=all write present at its offset, nothing a consumer saw lost, per-partition
# order, no offset or write twice). Needs root (ip netns).
#
# usage: scripts/fault-run.sh [SECONDS] [SEED] [ROUNDS]
#   SECONDS  how long each round injects faults (default 120)
#   SEED     the first round's seed (default: from the clock); round i uses SEED + i
#   ROUNDS   how many rounds (default 1)
# A failing round prints its seed: run it again with that SEED and ROUNDS=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
seconds=${1:-120}
seed=${2:-$(date +%s%N)}
rounds=${3:-1}
cargo test -p sluice-net --test broker --no-run >/dev/null 2>&1 || cargo test -p sluice-net --test broker --no-run
for ((i = 0; i < rounds; i++)); do
    s=$((seed + i))
    echo "fault-run: round $((i + 1)) of $rounds, SLUICE_FAULT_SEED=$s, $seconds s"
    if ! SLUICE_FAULT_SEED=$s SLUICE_FAULT_SECONDS=$seconds \
        cargo test -q -p sluice-net --test broker faults::randomized_faults -- --exact --nocapture; then
        echo "fault-run: FAILED with SLUICE_FAULT_SEED=$s (rerun: scripts/fault-run.sh $seconds $s 1)"
        exit 1
    fi
done
echo "fault-run: $rounds round(s) passed"
