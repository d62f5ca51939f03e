#!/usr/bin/env bash
# Side-by-side benchmark on this machine: builds the release binaries, then runs
# `sluice-bench compare` — one workload against several brokers, alternating runs (A B C A B C),
# each broker started fresh per run, pinned to the same CPUs and writing to the same wiped data
# dir, the load generator pinned to other CPUs; one Markdown row per run, then medians per broker
# with ratios to the first; reports in target/bench/ (compare.json). All flags:
# `target/release/sluice-bench compare --help`.
#
#   scripts/bench-compare.sh [--runs 3] [--brokers sluice,kafka-default,kafka-flush]
#                            [--broker-cpus 0] [--client-cpus 1] -- LOAD FLAGS
#   e.g. scripts/bench-compare.sh --runs 3 --brokers sluice,kafka-default -- \
#          --workload bench/workloads/small-max-throughput.workload
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p sluice-net -p sluice-bench >/dev/null
exec target/release/sluice-bench compare "$@"
