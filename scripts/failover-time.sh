#!/usr/bin/env bash
# Time to elect a new partition leader after `kill -9` of the old one, for a three-node sluice
# cluster and a three-node Apache Kafka cluster under the same settings: each round starts a
# fresh cluster, creates a topic with 3 replicas, writes to it, kills -9 the leader of
# partition 0 and polls Metadata (kcat) on a surviving node every 50 ms until another in-sync
# replica leads it. Prints one line per round and the medians.
#
#   scripts/failover-time.sh [ROUNDS (default 3)] [sluice|kafka|both (default both)]
#
# Both use their defaults for failure detection (broker.session.timeout.ms=9000, heartbeats
# every 2 s), so the figure is dominated by detection, as it is for a user.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROUNDS=${1:-3}
WHICH=${2:-both}
WORK=$(mktemp -d)
trap 'scripts/cluster.sh stop "$WORK/sluice" >/dev/null 2>&1 || true; scripts/kafka-reference.sh cluster-stop 3 --port 39192 >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

now_ms() { date +%s%3N; }
BENCH=target/release/sluice-bench
[ -x "$BENCH" ] && [ -x target/release/sluice ] || cargo build --release --bins >&2

# A topic with 3 replicas, written to for 2 s with acks=all (the harness creates it).
fill() {
    "$BENCH" run --bootstrap "$1" --topic failover --partitions 1 --replication-factor 3 \
        --acks all --seconds 2 --warmup-seconds 0 --record-bytes 1024 --rate-mb 10 >/dev/null
}

# leader of partition 0 of topic $2 as broker $1 answers Metadata (-1: none).
leader_of() {
    kcat -L -J -b "$1" -t "$2" 2>/dev/null | python3 -c '
import json, sys
try:
    m = json.load(sys.stdin)
    p = [p for t in m["topics"] for p in t["partitions"] if p["partition"] == 0][0]
    print(p.get("leader", -1))
except Exception:
    print(-1)'
}

# round NAME BOOTSTRAPS PIDS: kills the leader of partition 0 and prints the election time.
measure() {
    local name=$1 bootstrap=$2 pids=$3
    IFS=, read -r -a hosts <<<"$bootstrap"
    IFS=, read -r -a procs <<<"$pids"
    fill "$bootstrap"
    local old
    old=$(leader_of "${hosts[0]}" failover)
    [ "$old" -ge 1 ] || { echo "$name: no leader before the kill" >&2; return 1; }
    local watch=${hosts[0]}
    [ "$old" = 1 ] && watch=${hosts[1]}
    local t0 now
    t0=$(now_ms)
    kill -9 "${procs[$((old - 1))]}"
    while :; do
        now=$(leader_of "$watch" failover)
        if [ "$now" -ge 1 ] && [ "$now" != "$old" ]; then break; fi
        if [ $(($(now_ms) - t0)) -gt 60000 ]; then echo "$name: no new leader in 60 s" >&2; return 1; fi
        sleep 0.05
    done
    echo "$name: broker $old killed, broker $now leads after $(($(now_ms) - t0)) ms"
}

sluice_round() {
    local out bootstrap pids node
    out=$(SLUICE_BIN=target/release/sluice SLUICE_CLUSTER_PORT=38092 scripts/cluster.sh start 3 "$WORK/sluice")
    bootstrap=$(tail -n 1 <<<"$out")
    pids=""
    for node in 1 2 3; do pids+="${pids:+,}$(cat "$WORK/sluice/node-$node/pid")"; done
    # Node ids are 1..3 in cluster.sh; so are the PIDs' positions.
    SLUICE_BIN=target/release/sluice measure sluice "$bootstrap" "$pids"
    scripts/cluster.sh stop "$WORK/sluice" >/dev/null
    rm -rf "$WORK/sluice"
}

kafka_round() {
    local out bootstrap pids
    out=$(scripts/kafka-reference.sh cluster-start 3 --port 39192 --cpus all --heap 512M 2>/dev/null)
    bootstrap=$(sed -n 1p <<<"$out")
    pids=$(sed -n 2p <<<"$out")
    measure kafka "$bootstrap" "$pids"
    scripts/kafka-reference.sh cluster-stop 3 --port 39192 >/dev/null 2>&1 || true
}

results=()
for ((r = 1; r <= ROUNDS; r++)); do
    if [ "$WHICH" != kafka ]; then results+=("$(sluice_round)"); echo "${results[-1]}"; fi
    if [ "$WHICH" != sluice ]; then results+=("$(kafka_round)"); echo "${results[-1]}"; fi
done
for name in sluice kafka; do
    printf '%s\n' "${results[@]}" | sed -n "s/^$name: .* after \([0-9]*\) ms$/\1/p" | sort -n |
        awk -v n="$name" '{v[NR]=$1} END {if (NR) printf "%s: median %d ms over %d rounds\n", n, v[int((NR+1)/2)], NR}'
done
