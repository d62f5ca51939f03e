#!/usr/bin/env bash
# Runs an N-broker sluice cluster on this machine, on 127.0.0.1 with distinct ports, data under
# DIR: every node a broker and a member of the metadata quorum (KRaft's combined mode), or, with
# SLUICE_CLUSTER_CONTROLLERS=C, N broker-only nodes and C dedicated controllers.
#
#   scripts/cluster.sh start N DIR [--override key=value]...
#       starts the nodes, returns once every node sees N live brokers, and prints the bootstrap
#       servers as its last line. Broker i (1..N) serves clients on BASE+i-1; node i's
#       controller (a voter's) listens on BASE+100+i-1; its data is DIR/node-i/data, its log
#       DIR/node-i/sluice.log. Dedicated controllers are nodes N+1..N+C.
#   scripts/cluster.sh stop DIR
#       stops every node started in DIR (SIGTERM, then SIGKILL after 30 s).
#
# env:
#   SLUICE_BIN              the broker binary (default target/release/sluice, built if missing)
#   SLUICE_CLUSTER_PORT     BASE, the first client port (default 19092)
#   SLUICE_CLUSTER_CORES    cores per node (default 1)
#   SLUICE_CLUSTER_CONTROLLERS  C dedicated controllers (process.roles=controller) for N
#                           broker-only nodes (process.roles=broker); default 0: combined mode
#   SLUICE_CLUSTER_TIMEOUT  seconds to wait for the cluster to serve (default 60)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() { echo "usage: $0 start N DIR [--override k=v]... | stop DIR" >&2; exit 2; }

start() {
    local n="$1" dir="$2"
    shift 2
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || usage
    local bin="${SLUICE_BIN:-$ROOT/target/release/sluice}"
    if [ ! -x "$bin" ]; then
        (cd "$ROOT" && cargo build --release --bin sluice >&2)
    fi
    local base="${SLUICE_CLUSTER_PORT:-19092}"
    local cores="${SLUICE_CLUSTER_CORES:-1}"
    local timeout="${SLUICE_CLUSTER_TIMEOUT:-60}"
    local controllers="${SLUICE_CLUSTER_CONTROLLERS:-0}"
    [[ "$controllers" =~ ^[0-9]+$ ]] || usage
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    local voters="" bootstrap="" i first_voter=1 roles=broker,controller
    if [ "$controllers" -gt 0 ]; then
        first_voter=$((n + 1))
    fi
    for ((i = first_voter; i <= n + controllers; i++)); do
        voters+="${voters:+,}$i@127.0.0.1:$((base + 100 + i - 1))"
    done
    for ((i = 1; i <= n; i++)); do
        bootstrap+="${bootstrap:+,}127.0.0.1:$((base + i - 1))"
    done
    for ((i = 1; i <= n + controllers; i++)); do
        if [ "$controllers" -gt 0 ]; then
            roles=$([ "$i" -le "$n" ] && echo broker || echo controller)
        fi
        local node="$dir/node-$i"
        mkdir -p "$node/data"
        if [ -f "$node/pid" ] && kill -0 "$(cat "$node/pid")" 2>/dev/null; then
            echo "node $i already runs (pid $(cat "$node/pid"))" >&2
            exit 1
        fi
        nohup "$bin" --cores "$cores" \
            --override "node.id=$i" \
            --override "process.roles=$roles" \
            --override "controller.quorum.voters=$voters" \
            --override "listeners=PLAINTEXT://127.0.0.1:$((base + i - 1))" \
            --override "log.dirs=$node/data" \
            "$@" >>"$node/sluice.log" 2>&1 </dev/null &
        echo $! >"$node/pid"
    done
    local deadline=$((SECONDS + timeout))
    for ((i = 1; i <= n + controllers; i++)); do
        local node="$dir/node-$i"
        until grep -q "sluice: cluster: $n live broker(s)" "$node/sluice.log" 2>/dev/null; do
            if ! kill -0 "$(cat "$node/pid")" 2>/dev/null; then
                echo "node $i exited; its log:" >&2
                tail -n 20 "$node/sluice.log" >&2
                exit 1
            fi
            if [ "$SECONDS" -ge "$deadline" ]; then
                echo "node $i does not see $n live brokers after ${timeout}s; its log:" >&2
                tail -n 20 "$node/sluice.log" >&2
                exit 1
            fi
            sleep 0.2
        done
    done
    echo "$bootstrap"
}

stop() {
    local dir="$1" pid node
    for node in "$dir"/node-*; do
        [ -f "$node/pid" ] || continue
        pid=$(cat "$node/pid")
        kill -TERM "$pid" 2>/dev/null || true
    done
    for node in "$dir"/node-*; do
        [ -f "$node/pid" ] || continue
        pid=$(cat "$node/pid")
        local waited=0
        while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 300 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$node/pid"
    done
}

case "${1:-}" in
    start) [ $# -ge 3 ] || usage; shift; start "$@" ;;
    stop) [ $# -eq 2 ] || usage; stop "$2" ;;
    *) usage ;;
esac
