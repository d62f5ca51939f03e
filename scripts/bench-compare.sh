#!/usr/bin/env bash
# Side-by-side produce benchmark: sluice and Apache Kafka, same machine, same disk, same pinning
# (broker on CPU ${BROKER_CPU:-0}, load generator on CPU ${CLIENT_CPU:-1}), alternating runs
# (A B C A B C ...), each broker started fresh for each run. Prints one Markdown row per run and
# writes JSON reports under target/bench/.
#
# usage: scripts/bench-compare.sh [runs=3] [brokers="sluice kafka-default kafka-flush"] -- [sluice-bench flags]
#   e.g. scripts/bench-compare.sh 3 "sluice kafka-default" -- --partitions 8 --acks all --seconds 20
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
brokers="${2:-sluice kafka-default kafka-flush}"
shift $(( $# >= 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
bench_flags=("$@")
broker_cpu="${BROKER_CPU:-0}"
client_cpu="${CLIENT_CPU:-1}"
out=target/bench
mkdir -p "$out"

cargo build --release -p sluice-net -p sluice-bench >/dev/null
port=29092
data="$PWD/target/bench/data"

start_broker() {
  rm -rf "$data"
  case "$1" in
    sluice)
      taskset -c "$broker_cpu" target/release/sluice --cores 1 \
        --override "listeners=PLAINTEXT://127.0.0.1:$port" --override "log.dirs=$data" \
        >"$out/sluice.log" 2>&1 &
      broker_pid=$!
      for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
      ;;
    kafka-default|kafka-flush)
      broker_pid=$(scripts/kafka-reference.sh start --profile "${1#kafka-}" --port "$port" \
        --data "$data" --cpus "$broker_cpu" | tail -n 1)
      ;;
  esac
}

stop_broker() {
  case "$1" in
    sluice) kill "$broker_pid" 2>/dev/null; wait "$broker_pid" 2>/dev/null || true ;;
    kafka-*) scripts/kafka-reference.sh stop >/dev/null ;;
  esac
}

trap 'for b in $brokers; do stop_broker "$b" 2>/dev/null || true; done' EXIT
for run in $(seq 1 "$runs"); do
  for broker in $brokers; do
    start_broker "$broker"
    json="$out/$broker-run$run.json"
    taskset -c "$client_cpu" target/release/sluice-bench --bootstrap "127.0.0.1:$port" \
      --topic "bench-$run" --pid "$broker_pid" --json "$json" "${bench_flags[@]}" \
      | sed -n 3p | sed "s/^| /| $broker run $run: /"
    stop_broker "$broker"
  done
done
python3 scripts/bench-summary.py "$out" $brokers
