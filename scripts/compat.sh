#!/usr/bin/env bash
# Client-compatibility check: starts a fresh sluice broker for each client
# (Java kafka-clients, kafka-python, kcat/librdkafka, franz-go, Apache Kafka's own
# command-line tools) and asserts that records round-trip. Ends with
# "compat: N passed, M failed" and exits 1 on any failure.
#
# usage: scripts/compat.sh [java] [python] [kcat] [go] [cli]     (default: all five)
#
# env:
#   SLUICE_BIN      broker binary (default target/release/sluice, then
#                   target/debug/sluice, else built with cargo)
#   COMPAT_TIMEOUT  seconds each client may run (default 180)
#   COMPAT_KEEP     set to 1 to keep the brokers' data/log dirs
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export DEBIAN_FRONTEND=noninteractive
COMPAT_TIMEOUT=${COMPAT_TIMEOUT:-180}
JAVA_DIR="$ROOT/scripts/compat/java"
JAVA_JAR="$ROOT/target/compat-java/sluice-compat.jar" # see <directory> in the pom
CLI_DIR="$ROOT/scripts/compat/kafka-cli"
CLI_LIB="$ROOT/target/compat-kafka-cli/lib"
GO_DIR="$ROOT/scripts/compat/go"
GO_BIN="$ROOT/target/compat-go/franz-compat"
KAFKA_PYTHON_SPEC='kafka-python>=3,<4'
PY_CODEC_MODULES='lz4 zstandard python-snappy'

say() { printf 'compat: %s\n' "$*"; }

# ---------------------------------------------------------------- dependencies

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" = 0 ]; then
        say "apt-get update"
        $SUDO apt-get update -qq </dev/null
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    $SUDO apt-get install -y -qq --no-install-recommends "$@" </dev/null >/dev/null
}

ensure_kcat() {
    command -v kcat >/dev/null 2>&1 || apt_install kcat
}

ensure_python() {
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip
    if ! python3 -c 'import kafka' >/dev/null 2>&1; then
        say "pip install $KAFKA_PYTHON_SPEC"
        python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
        python3 -m pip install -q --disable-pip-version-check "$KAFKA_PYTHON_SPEC" </dev/null \
            || python3 -m pip install -q --disable-pip-version-check --break-system-packages \
                "$KAFKA_PYTHON_SPEC" </dev/null
    fi
    # Optional codec modules (kafka-python skips lz4/zstd/snappy without them): best effort.
    if ! python3 -c 'import lz4.frame, zstandard, snappy' >/dev/null 2>&1; then
        say "pip install $PY_CODEC_MODULES (optional)"
        python3 -m pip install -q --disable-pip-version-check $PY_CODEC_MODULES </dev/null >/dev/null 2>&1 \
            || python3 -m pip install -q --disable-pip-version-check --break-system-packages \
                $PY_CODEC_MODULES </dev/null >/dev/null 2>&1 \
            || say "python codec modules not installed; kafka-python will skip lz4/zstd/snappy"
    fi
}

ensure_maven() {
    command -v javac >/dev/null 2>&1 || apt_install default-jdk-headless
    command -v mvn >/dev/null 2>&1 || apt_install maven
}

# ---------------------------------------------------------------- broker binary

resolve_broker() {
    if [ -n "${SLUICE_BIN:-}" ]; then
        [ -x "$SLUICE_BIN" ] || { say "SLUICE_BIN=$SLUICE_BIN is not an executable file"; exit 1; }
    elif [ -x target/release/sluice ]; then
        SLUICE_BIN="$ROOT/target/release/sluice"
    elif [ -x target/debug/sluice ]; then
        SLUICE_BIN="$ROOT/target/debug/sluice"
    else
        say "no broker binary: cargo build --release -p sluice-net"
        cargo build --release -p sluice-net </dev/null
        SLUICE_BIN="$ROOT/target/release/sluice"
    fi
    case "$SLUICE_BIN" in /*) ;; *) SLUICE_BIN="$ROOT/$SLUICE_BIN" ;; esac
}

# ---------------------------------------------------------------- broker lifecycle

BROKER_PID=""
BROKER_DIR=""
BOOTSTRAP=""

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_broker NAME: a fresh broker on a free port with a fresh data dir.
start_broker() {
    local name=$1 attempt port i
    BROKER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/sluice-compat-$name.XXXXXX")
    for attempt in 1 2 3; do
        port=$(free_port)
        "$SLUICE_BIN" --cores 2 \
            --override "listeners=PLAINTEXT://127.0.0.1:$port" \
            --override "log.dirs=$BROKER_DIR/data" \
            </dev/null >"$BROKER_DIR/broker.out" 2>"$BROKER_DIR/broker.log" &
        BROKER_PID=$!
        for i in $(seq 1 200); do
            if grep -q 'listening on' "$BROKER_DIR/broker.log" 2>/dev/null; then
                BOOTSTRAP="127.0.0.1:$port"
                say "$name: broker pid $BROKER_PID on $BOOTSTRAP, data in $BROKER_DIR/data"
                return 0
            fi
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        # Retried (the port may have been taken meanwhile), but said loudly: a broker that
        # cannot start is a broker bug worth seeing even when a retry gets through.
        if kill -0 "$BROKER_PID" 2>/dev/null; then
            say "$name: WARNING: broker did not report 'listening on' within 20 s (attempt $attempt of 3):"
            stop_broker >/dev/null 2>&1 || true
        else
            wait "$BROKER_PID" 2>/dev/null || true
            BROKER_PID=""
            say "$name: WARNING: broker exited at start (attempt $attempt of 3):"
        fi
        sed 's/^/    broker: /' "$BROKER_DIR/broker.log" | tail -n 20
    done
    return 1
}

# stop_broker: SIGTERM, wait (then SIGKILL); fails unless the broker exited 0.
stop_broker() {
    local pid=$BROKER_PID rc=0 i t0=$SECONDS
    [ -n "$pid" ] || return 0
    BROKER_PID=""
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "broker pid $pid ignored SIGTERM for 15 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || rc=$?
    if [ $((SECONDS - t0)) -ge 5 ]; then
        say "note: broker pid $pid took $((SECONDS - t0)) s to stop after SIGTERM"
    fi
    if [ "$rc" != 0 ]; then
        say "broker pid $pid exited with status $rc (expected 0 after SIGTERM)"
        return 1
    fi
    return 0
}

remove_broker_dir() {
    if [ -n "$BROKER_DIR" ] && [ "${COMPAT_KEEP:-0}" != 1 ]; then rm -rf "$BROKER_DIR"; fi
    BROKER_DIR=""
}

cleanup() {
    stop_broker >/dev/null 2>&1 || true
    remove_broker_dir
    if [ -n "${CLUSTER_DIR:-}" ]; then scripts/cluster.sh stop "$CLUSTER_DIR" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- the clients

# Each check_* runs against $BOOTSTRAP and returns non-zero on any mismatch.

build_java() {
    local log
    ensure_maven
    say "java: mvn -B package (scripts/compat/java)"
    log=$(mktemp)
    if (cd "$JAVA_DIR" && mvn -B -q -Dstyle.color=never package </dev/null >"$log" 2>&1); then
        rm -f "$log"
        return 0
    fi
    tail -n 60 "$log"
    rm -f "$log"
    return 1
}

check_java() {
    timeout --kill-after=10 "$COMPAT_TIMEOUT" java -jar "$JAVA_JAR" "$BOOTSTRAP" </dev/null
}

# Apache Kafka's command-line tools (kafka-tools from Maven Central, scripts/compat/kafka-cli).
build_cli() {
    local log stamp
    ensure_maven
    stamp=$(sha256sum "$CLI_DIR/pom.xml" | cut -d' ' -f1)
    if [ -f "$CLI_LIB/.stamp" ] && [ "$(cat "$CLI_LIB/.stamp")" = "$stamp" ]; then
        return 0
    fi
    say "cli: mvn dependency:copy-dependencies (scripts/compat/kafka-cli)"
    log=$(mktemp)
    rm -rf "$CLI_LIB"
    if (cd "$CLI_DIR" && mvn -B -q -Dstyle.color=never dependency:copy-dependencies \
        -DoutputDirectory="$CLI_LIB" </dev/null >"$log" 2>&1); then
        rm -f "$log"
        echo "$stamp" >"$CLI_LIB/.stamp"
        return 0
    fi
    tail -n 40 "$log"
    rm -f "$log"
    return 1
}

# kafka_tool CLASS ARGS...: one of Kafka's command-line tools, as kafka-*.sh would run it.
kafka_tool() {
    local class=$1
    shift
    timeout --kill-after=10 "$COMPAT_TIMEOUT" java -cp "$CLI_LIB/*" "$class" --bootstrap-server "$BOOTSTRAP" "$@"
}

# kafka-topics, kafka-console-producer/-consumer (in a group) and kafka-consumer-groups
# (--list, --describe with lag, --reset-offsets, --delete), each checked on what it prints.
check_cli() {
    local dir=$BROKER_DIR/cli ok=0 version
    mkdir -p "$dir"
    version=$(basename "$(ls "$CLI_LIB"/kafka-tools-[0-9]*.jar)" .jar)
    say "cli: Apache Kafka command-line tools (${version#kafka-tools-})"
    kafka_tool org.apache.kafka.tools.TopicCommand --create --topic cli-compat --partitions 3 \
        </dev/null >"$dir/create.out" 2>&1 || { cat "$dir/create.out"; return 1; }
    kafka_tool org.apache.kafka.tools.TopicCommand --list </dev/null >"$dir/list.out" 2>&1
    grep -qx cli-compat "$dir/list.out" || { say "cli: kafka-topics --list lacks cli-compat:"; cat "$dir/list.out"; ok=1; }
    for i in $(seq 1 100); do echo "cli line $i"; done >"$dir/in.txt"
    kafka_tool org.apache.kafka.tools.ConsoleProducer --topic cli-compat <"$dir/in.txt" >"$dir/produce.out" 2>&1 \
        || { say "cli: kafka-console-producer failed:"; cat "$dir/produce.out"; return 1; }
    kafka_tool org.apache.kafka.tools.consumer.ConsoleConsumer --topic cli-compat --group cli-group \
        --from-beginning --max-messages 100 --timeout-ms 30000 </dev/null >"$dir/out.txt" 2>"$dir/consume.err" || true
    if [ "$(sort "$dir/in.txt")" = "$(sort "$dir/out.txt")" ]; then
        say "cli: kafka-topics --create/--list, 100 lines through kafka-console-producer and a kafka-console-consumer group"
    else
        say "cli: kafka-console-consumer read $(wc -l <"$dir/out.txt") of 100 lines:"
        tail -n 20 "$dir/consume.err"
        ok=1
    fi
    local groups=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand
    kafka_tool "$groups" --list </dev/null >"$dir/groups.out" 2>&1
    grep -qx cli-group "$dir/groups.out" || { say "cli: kafka-consumer-groups --list lacks cli-group:"; cat "$dir/groups.out"; ok=1; }
    # --describe: committed offset = log end on every partition, so the lag column is all 0.
    kafka_tool "$groups" --describe --group cli-group </dev/null >"$dir/describe.out" 2>&1
    if awk '$1 == "cli-group" && $2 == "cli-compat" { n++; if ($4 != $5 || $6 != 0) bad++ } END { exit !(n == 3 && bad == 0) }' "$dir/describe.out"; then
        say "cli: kafka-consumer-groups --describe: 3 partitions, committed = log end, lag 0"
    else
        say "cli: kafka-consumer-groups --describe:"; cat "$dir/describe.out"; ok=1
    fi
    kafka_tool "$groups" --reset-offsets --to-earliest --execute --group cli-group --topic cli-compat \
        </dev/null >"$dir/reset.out" 2>&1 || { cat "$dir/reset.out"; ok=1; }
    kafka_tool "$groups" --describe --group cli-group </dev/null >"$dir/describe2.out" 2>&1
    if awk '$1 == "cli-group" && $2 == "cli-compat" { n++; lag += $6; if ($4 != 0) bad++ } END { exit !(n == 3 && bad == 0 && lag == 100) }' "$dir/describe2.out"; then
        say "cli: kafka-consumer-groups --reset-offsets --to-earliest: lag 100 again"
    else
        say "cli: after --reset-offsets:"; cat "$dir/describe2.out"; ok=1
    fi
    kafka_tool "$groups" --delete --group cli-group </dev/null >"$dir/delete.out" 2>&1
    if grep -q "successful" "$dir/delete.out"; then
        say "cli: kafka-consumer-groups --delete: done"
    else
        say "cli: kafka-consumer-groups --delete:"; cat "$dir/delete.out"; ok=1
    fi
    # kafka-leader-election: on one node the only replica leads already.
    kafka_tool org.apache.kafka.tools.LeaderElectionCommand --election-type preferred --topic cli-compat \
        --partition 0 </dev/null >"$dir/election.out" 2>&1
    if grep -q "Valid replica already elected for partitions cli-compat-0" "$dir/election.out"; then
        say "cli: kafka-leader-election --election-type preferred: the leader is the preferred replica already"
    else
        say "cli: kafka-leader-election:"; cat "$dir/election.out"; ok=1
    fi
    check_cli_partitions "$dir" || ok=1
    check_cli_transactions "$dir" || ok=1
    return "$ok"
}

# kafka-topics --alter --partitions (CreatePartitions), kafka-reassign-partitions (on one node
# the only move is to itself: AlterPartitionReassignments, ListPartitionReassignments and
# DescribeLogDirs are still asked) and kafka-log-dirs.
check_cli_partitions() {
    local dir=$1 ok=0 topics=org.apache.kafka.tools.TopicCommand node
    local reassign=org.apache.kafka.tools.reassign.ReassignPartitionsCommand
    kafka_tool "$topics" --create --topic cli-grow --partitions 1 </dev/null >"$dir/grow.out" 2>&1 \
        || { cat "$dir/grow.out"; return 1; }
    kafka_tool "$topics" --alter --topic cli-grow --partitions 3 </dev/null >"$dir/alter.out" 2>&1 \
        || { say "cli: kafka-topics --alter --partitions:"; cat "$dir/alter.out"; return 1; }
    kafka_tool "$topics" --describe --topic cli-grow </dev/null >"$dir/grown.out" 2>&1
    if grep -q "PartitionCount: 3" "$dir/grown.out"; then
        say "cli: kafka-topics --alter --partitions 3: PartitionCount 3"
    else
        say "cli: after kafka-topics --alter --partitions 3:"; cat "$dir/grown.out"; ok=1
    fi
    node=$(awk '$3 == "Partition:" && $4 == 0 { print $6 }' "$dir/grown.out")
    printf '{"version":1,"partitions":[{"topic":"cli-grow","partition":0,"replicas":[%s]}]}\n' \
        "$node" >"$dir/move.json"
    kafka_tool "$reassign" --execute --reassignment-json-file "$dir/move.json" \
        </dev/null >"$dir/execute.out" 2>&1
    kafka_tool "$reassign" --verify --preserve-throttles --reassignment-json-file "$dir/move.json" \
        </dev/null >"$dir/verify.out" 2>&1
    if grep -q "Successfully started partition reassignment for cli-grow-0" "$dir/execute.out" \
        && grep -q "Reassignment of partition cli-grow-0 is completed" "$dir/verify.out"; then
        say "cli: kafka-reassign-partitions --execute/--verify: cli-grow-0 stays on broker $node"
    else
        say "cli: kafka-reassign-partitions:"; cat "$dir/execute.out" "$dir/verify.out"; ok=1
    fi
    kafka_tool org.apache.kafka.tools.LogDirsCommand --describe --topic-list cli-grow \
        </dev/null >"$dir/logdirs.out" 2>&1
    if grep -q '"partition":"cli-grow-2"' "$dir/logdirs.out"; then
        say "cli: kafka-log-dirs --describe lists cli-grow-0..2"
    else
        say "cli: kafka-log-dirs:"; cat "$dir/logdirs.out"; ok=1
    fi
    return "$ok"
}

# The tools against a 3-node cluster (scripts/cluster.sh): a topic with 2 replicas takes 200
# lines and grows to 4 partitions; kafka-reassign-partitions moves partition 0 onto the third
# broker and gives partition 1 a third replica, --verify until both are done; kafka-topics
# --describe shows the new replicas, and every line is read back. Then Kafka's
# TransactionalMessageCopier and kafka-transactions, as on one node.
check_cli_cluster() {
    local dir=$1 ok=0 i p0 spare target topics=org.apache.kafka.tools.TopicCommand
    local reassign=org.apache.kafka.tools.reassign.ReassignPartitionsCommand
    kafka_tool "$topics" --create --topic cli-moving --partitions 2 --replication-factor 2 \
        </dev/null >"$dir/create.out" 2>&1 || { cat "$dir/create.out"; ok=1; }
    for i in $(seq 1 200); do echo "moving line $i"; done >"$dir/in.txt"
    kafka_tool org.apache.kafka.tools.ConsoleProducer --topic cli-moving --producer-property acks=all \
        <"$dir/in.txt" >"$dir/produce.out" 2>&1 || { cat "$dir/produce.out"; ok=1; }
    kafka_tool "$topics" --alter --topic cli-moving --partitions 4 </dev/null >"$dir/alter.out" 2>&1 \
        || { cat "$dir/alter.out"; ok=1; }
    kafka_tool "$topics" --describe --topic cli-moving </dev/null >"$dir/before.out" 2>&1
    p0=$(awk '$3 == "Partition:" && $4 == 0 { print $8 }' "$dir/before.out")
    spare=$(for i in 1 2 3; do case ",$p0," in *",$i,"*) ;; *) echo "$i" ;; esac; done)
    target="$spare,${p0%%,*}"
    printf '{"version":1,"partitions":[%s,%s]}\n' \
        "{\"topic\":\"cli-moving\",\"partition\":0,\"replicas\":[$target]}" \
        '{"topic":"cli-moving","partition":1,"replicas":[1,2,3]}' >"$dir/move.json"
    kafka_tool "$reassign" --execute --reassignment-json-file "$dir/move.json" \
        </dev/null >"$dir/execute.out" 2>&1 || { cat "$dir/execute.out"; ok=1; }
    for i in $(seq 1 60); do
        kafka_tool "$reassign" --verify --preserve-throttles --reassignment-json-file "$dir/move.json" \
            </dev/null >"$dir/verify.out" 2>&1 || true
        [ "$(grep -c "is completed" "$dir/verify.out")" = 2 ] && break
        sleep 1
    done
    kafka_tool "$topics" --describe --topic cli-moving </dev/null >"$dir/after.out" 2>&1
    if [ "$(grep -c "is completed" "$dir/verify.out")" = 2 ] \
        && awk -v t="$target" '$3 == "Partition:" && $4 == 0 && $8 == t { a = 1 }
                                $3 == "Partition:" && $4 == 1 && split($8, r, ",") == 3 { b = 1 }
                                END { exit !(a && b) }' "$dir/after.out"; then
        say "cli-cluster: kafka-reassign-partitions moved cli-moving-0 from [$p0] to [$target] and gave cli-moving-1 three replicas"
    else
        say "cli-cluster: reassignment:"; cat "$dir/execute.out" "$dir/verify.out" "$dir/after.out"; ok=1
    fi
    kafka_tool org.apache.kafka.tools.consumer.ConsoleConsumer --topic cli-moving --from-beginning \
        --max-messages 200 --timeout-ms 30000 </dev/null >"$dir/out.txt" 2>"$dir/consume.err" || true
    if [ "$(sort "$dir/in.txt")" = "$(sort "$dir/out.txt")" ]; then
        say "cli-cluster: all 200 lines read back after the moves"
    else
        say "cli-cluster: read $(wc -l <"$dir/out.txt") of 200 lines"; tail -n 20 "$dir/consume.err"; ok=1
    fi
    # Exactly-once across brokers: the copier's transactions, their markers and the group's
    # offsets live on different nodes.
    check_cli_transactions "$dir" || ok=1
    kafka_tool org.apache.kafka.tools.MetadataQuorumCommand describe --status </dev/null >"$dir/quorum.out" 2>&1
    kafka_tool org.apache.kafka.tools.MetadataQuorumCommand describe --replication </dev/null >"$dir/quorum-replication.out" 2>&1
    if grep -Eq '^LeaderId:[[:space:]]+[123]$' "$dir/quorum.out" \
        && [ "$(grep -cE 'Leader|Follower' "$dir/quorum-replication.out")" = 3 ]; then
        say "cli-cluster: kafka-metadata-quorum describe --status/--replication: $(grep LeaderId "$dir/quorum.out" | tr -s ' '), 3 voters"
    else
        say "cli-cluster: kafka-metadata-quorum:"; cat "$dir/quorum.out" "$dir/quorum-replication.out"; ok=1
    fi
    return "$ok"
}

# run_cluster_check NAME: a check that starts its own brokers.
# KRaft's split roles (scripts/cluster.sh with SLUICE_CLUSTER_CONTROLLERS=3): three broker-only
# nodes and three dedicated controllers. kafka-topics creates a topic with 3 replicas, 100 lines
# go in with acks=all and come back, and kafka-metadata-quorum shows a controller leading, three
# voters and the three brokers as observers.
check_cli_split() {
    local dir=$1 ok=0 i topics=org.apache.kafka.tools.TopicCommand
    kafka_tool "$topics" --create --topic cli-split --partitions 3 --replication-factor 3 \
        </dev/null >"$dir/create.out" 2>&1 || { cat "$dir/create.out"; ok=1; }
    for i in $(seq 1 100); do echo "split line $i"; done >"$dir/in.txt"
    kafka_tool org.apache.kafka.tools.ConsoleProducer --topic cli-split --producer-property acks=all \
        <"$dir/in.txt" >"$dir/produce.out" 2>&1 || { cat "$dir/produce.out"; ok=1; }
    kafka_tool org.apache.kafka.tools.consumer.ConsoleConsumer --topic cli-split --from-beginning \
        --max-messages 100 --timeout-ms 30000 </dev/null >"$dir/out.txt" 2>"$dir/consume.err" || true
    if [ "$(sort "$dir/in.txt")" = "$(sort "$dir/out.txt")" ]; then
        say "cli-split: 100 lines through a topic with 3 replicas on broker-only nodes"
    else
        say "cli-split: read $(wc -l <"$dir/out.txt") of 100 lines"; tail -n 20 "$dir/consume.err"; ok=1
    fi
    kafka_tool org.apache.kafka.tools.MetadataQuorumCommand describe --status </dev/null >"$dir/quorum.out" 2>&1
    kafka_tool org.apache.kafka.tools.MetadataQuorumCommand describe --replication </dev/null >"$dir/quorum-replication.out" 2>&1
    if grep -Eq '^LeaderId:[[:space:]]+[456]$' "$dir/quorum.out" \
        && [ "$(grep -cE 'Leader|Follower' "$dir/quorum-replication.out")" = 3 ] \
        && [ "$(grep -cE '^[123][[:space:]].*Observer' "$dir/quorum-replication.out")" = 3 ]; then
        say "cli-split: kafka-metadata-quorum: $(grep LeaderId "$dir/quorum.out" | tr -s ' '), 3 voters, observers 1-3"
    else
        say "cli-split: kafka-metadata-quorum:"; cat "$dir/quorum.out" "$dir/quorum-replication.out"; ok=1
    fi
    return "$ok"
}

# run_cluster_check NAME CONTROLLERS: check_NAME DIR against a fresh cluster of 3 brokers
# (scripts/cluster.sh; with CONTROLLERS > 0, broker-only nodes 1-3 and that many dedicated
# controllers after them), its data under DIR; on failure the nodes' last log lines; then the
# cluster is stopped.
run_cluster_check() {
    local name=$1 controllers=$2 start=$SECONDS dir ok=0 i
    say "--- $name"
    dir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-compat-$name.XXXXXX")
    CLUSTER_DIR=$dir/cluster
    if ! SLUICE_BIN="$SLUICE_BIN" SLUICE_CLUSTER_PORT=$((21000 + RANDOM % 20000)) \
        SLUICE_CLUSTER_CONTROLLERS=$controllers \
        scripts/cluster.sh start 3 "$CLUSTER_DIR" </dev/null >"$dir/start.out" 2>&1; then
        say "$name: scripts/cluster.sh start failed:"; tail -n 20 "$dir/start.out"
        ok=1
    else
        BOOTSTRAP=$(tail -n 1 "$dir/start.out")
        say "$name: brokers 1-3 on $BOOTSTRAP$([ "$controllers" -gt 0 ] && echo ", $controllers dedicated controllers")"
        "check_${name//-/_}" "$dir" || ok=1
        if [ "$ok" != 0 ]; then
            for ((i = 1; i <= 3 + controllers; i++)); do
                tail -n 15 "$CLUSTER_DIR/node-$i/sluice.log" | sed "s/^/    node $i: /"
            done
        fi
    fi
    scripts/cluster.sh stop "$CLUSTER_DIR" >/dev/null 2>&1 || true
    CLUSTER_DIR=""
    [ "${COMPAT_KEEP:-0}" = 1 ] || rm -rf "$dir"
    if [ "$ok" = 0 ]; then
        PASSED=$((PASSED + 1))
        say "$name: PASS ($((SECONDS - start)) s)"
    else
        FAILED=$((FAILED + 1))
        FAILED_NAMES+=("$name")
        say "$name: FAIL ($((SECONDS - start)) s)"
    fi
}

# Kafka's own exactly-once tool: TransactionalMessageCopier copies a topic in transactions of 20
# with random aborts (consume, produce, sendOffsetsToTransaction, commit or abort); a
# read_committed console consumer must then read every input line exactly once, and
# kafka-transactions list/describe must show the copier's transactional id.
check_cli_transactions() {
    local dir=$1 ok=0
    local topics=org.apache.kafka.tools.TopicCommand
    kafka_tool "$topics" --create --topic cli-eos-in --partitions 1 </dev/null >/dev/null 2>&1
    kafka_tool "$topics" --create --topic cli-eos-out --partitions 1 </dev/null >/dev/null 2>&1
    for i in $(seq 1 200); do echo "eos line $i"; done >"$dir/eos-in.txt"
    kafka_tool org.apache.kafka.tools.ConsoleProducer --topic cli-eos-in <"$dir/eos-in.txt" >/dev/null 2>&1 \
        || { say "cli: kafka-console-producer (eos input) failed"; return 1; }
    timeout --kill-after=10 "$COMPAT_TIMEOUT" java -cp "$CLI_LIB/*" org.apache.kafka.tools.TransactionalMessageCopier \
        --broker-list "$BOOTSTRAP" --input-topic cli-eos-in --input-partition 0 --output-topic cli-eos-out \
        --transactional-id cli-copier --consumer-group cli-copier-group --max-messages 200 \
        --transaction-size 20 --enable-random-aborts </dev/null >"$dir/copier.out" 2>&1 \
        || { say "cli: TransactionalMessageCopier failed:"; tail -n 20 "$dir/copier.out"; return 1; }
    kafka_tool org.apache.kafka.tools.consumer.ConsoleConsumer --topic cli-eos-out --from-beginning \
        --isolation-level read_committed --max-messages 200 --timeout-ms 30000 </dev/null \
        >"$dir/eos-out.txt" 2>"$dir/eos-consume.err" || true
    if [ "$(sort "$dir/eos-in.txt")" = "$(sort "$dir/eos-out.txt")" ]; then
        say "cli: TransactionalMessageCopier (transactions of 20, random aborts): read_committed reads all 200 lines once"
    else
        say "cli: read_committed read $(wc -l <"$dir/eos-out.txt") lines of the copier's 200:"
        sort "$dir/eos-out.txt" | uniq -d | head -n 5
        ok=1
    fi
    local txns=org.apache.kafka.tools.TransactionsCommand
    kafka_tool "$txns" list </dev/null >"$dir/txn-list.out" 2>&1
    kafka_tool "$txns" describe --transactional-id cli-copier </dev/null >"$dir/txn-describe.out" 2>&1
    if grep -q "^cli-copier.*CompleteCommit" "$dir/txn-list.out" && grep -q "CompleteCommit" "$dir/txn-describe.out"; then
        say "cli: kafka-transactions list/describe: cli-copier CompleteCommit"
    else
        say "cli: kafka-transactions list/describe:"; cat "$dir/txn-list.out" "$dir/txn-describe.out"; ok=1
    fi
    return "$ok"
}

# franz-go's version is pinned by scripts/compat/go/go.mod (modules from the Go proxy).
build_go() {
    local log t0=$SECONDS
    if ! command -v go >/dev/null 2>&1; then
        say "go: no go toolchain on PATH (scripts/compat/go/go.mod says which Go it needs)"
        return 1
    fi
    say "go: go build (scripts/compat/go, $(go version | cut -d' ' -f3))"
    log=$(mktemp)
    if (cd "$GO_DIR" && go build -buildvcs=false -trimpath -o "$GO_BIN" . </dev/null >"$log" 2>&1); then
        rm -f "$log"
        say "go: built $GO_BIN in $((SECONDS - t0)) s"
        return 0
    fi
    tail -n 60 "$log"
    rm -f "$log"
    return 1
}

check_go() {
    timeout --kill-after=10 "$COMPAT_TIMEOUT" "$GO_BIN" "$BOOTSTRAP" </dev/null
}

check_python() {
    timeout --kill-after=10 "$COMPAT_TIMEOUT" python3 "$ROOT/scripts/compat/python_compat.py" "$BOOTSTRAP" </dev/null
}

# kcat_roundtrip TOPIC [PRODUCE-FLAGS...]: 100 lines in with kcat -P, same lines out with kcat -C.
kcat_roundtrip() {
    local topic=$1 dir=$BROKER_DIR/kcat
    shift
    mkdir -p "$dir"
    local i
    for i in $(seq 1 100); do
        printf 'line %03d of %s: the quick brown fox %s\n' "$i" "$topic" "$(printf '%*s' $((i % 40)) '' | tr ' ' '~')"
    done >"$dir/$topic.in"
    timeout 60 kcat -b "$BOOTSTRAP" -t "$topic" -P "$@" <"$dir/$topic.in" \
        || { say "kcat: kcat -P $* -t $topic failed"; return 1; }
    timeout 60 kcat -b "$BOOTSTRAP" -t "$topic" -C -o beginning -e -q </dev/null >"$dir/$topic.out" \
        || { say "kcat: kcat -C -t $topic failed"; return 1; }
    if ! cmp -s "$dir/$topic.in" "$dir/$topic.out"; then
        say "kcat: $topic: consumed lines differ from produced ones ($(wc -l <"$dir/$topic.out") of 100 lines back):"
        diff "$dir/$topic.in" "$dir/$topic.out" | head -n 20 || true
        return 1
    fi
    say "kcat: $topic: 100 lines round-tripped${*:+ (kcat -P $*)}"
}

check_kcat() {
    local dir=$BROKER_DIR/kcat ok=0 topic
    say "kcat: $(kcat -V 2>&1 | grep -m1 '^Version' | sed 's/ builtin\.features.*/)/' || true)"
    kcat_roundtrip kcat-compat || ok=1
    kcat_roundtrip kcat-compat-snappy -z snappy || ok=1

    # Keys and headers, lz4: key:value in, "%k:%s|%h" out.
    topic=kcat-compat-keyed
    for i in $(seq 1 50); do printf 'key-%02d:value-%02d\n' "$i" "$i"; done >"$dir/$topic.in"
    sed 's/$/|origin=kcat,n=1/' "$dir/$topic.in" >"$dir/$topic.want"
    if timeout 60 kcat -b "$BOOTSTRAP" -t "$topic" -P -z lz4 -K: -H origin=kcat -H n=1 <"$dir/$topic.in" \
        && timeout 60 kcat -b "$BOOTSTRAP" -t "$topic" -C -o beginning -e -q -f '%k:%s|%h\n' \
            </dev/null >"$dir/$topic.out"; then
        if cmp -s "$dir/$topic.want" "$dir/$topic.out"; then
            say "kcat: $topic: 50 keyed records with headers round-tripped (lz4)"
        else
            say "kcat: $topic: keyed records differ:"
            diff "$dir/$topic.want" "$dir/$topic.out" | head -n 20 || true
            ok=1
        fi
    else
        say "kcat: $topic: kcat -P/-C failed"
        ok=1
    fi

    # Metadata: kcat -L must list the topics (auto-created with 1 partition each).
    if timeout 30 kcat -b "$BOOTSTRAP" -L </dev/null >"$dir/metadata.txt"; then
        for topic in kcat-compat kcat-compat-snappy kcat-compat-keyed; do
            if ! grep -q "topic \"$topic\" with 1 partitions" "$dir/metadata.txt"; then
                say "kcat: kcat -L does not list $topic with 1 partition:"
                cat "$dir/metadata.txt"
                ok=1
            fi
        done
        [ "$ok" != 0 ] || say "kcat: kcat -L lists the topics: $(grep -c '^  topic ' "$dir/metadata.txt") topic(s), $(grep -c 'broker .* at ' "$dir/metadata.txt") broker(s)"
    else
        say "kcat: kcat -L failed"
        ok=1
    fi

    # A balanced consumer (-G: JoinGroup/SyncGroup/Heartbeat, committed offsets): the whole topic
    # once, then nothing more for the same group, which resumes from its committed offsets.
    if timeout 60 kcat -b "$BOOTSTRAP" -G kcat-compat-group -X auto.offset.reset=earliest -e -q \
        kcat-compat </dev/null >"$dir/group.out" 2>"$dir/group.err" \
        && cmp -s "$dir/kcat-compat.in" "$dir/group.out" \
        && timeout 60 kcat -b "$BOOTSTRAP" -G kcat-compat-group -X auto.offset.reset=earliest -e -q \
            kcat-compat </dev/null >"$dir/group-again.out" 2>>"$dir/group.err" \
        && [ ! -s "$dir/group-again.out" ]; then
        say "kcat: kcat -G: 100 lines through a consumer group, none again after its commit"
    else
        say "kcat: kcat -G failed ($(wc -l <"$dir/group.out" 2>/dev/null || echo 0) lines, then $(wc -l <"$dir/group-again.out" 2>/dev/null || echo 0)):"
        sed 's/^/    /' "$dir/group.err" | tail -n 20
        ok=1
    fi
    return "$ok"
}

# ---------------------------------------------------------------- driver

PASSED=0
FAILED=0
FAILED_NAMES=()

# run_check NAME: fresh broker, check_NAME, stop broker; counts the result.
run_check() {
    local name=$1 start=$SECONDS ok=0
    say "--- $name"
    if start_broker "$name"; then
        "check_$name" || ok=1
        stop_broker || ok=1
    else
        ok=1
    fi
    if [ "$ok" = 0 ]; then
        PASSED=$((PASSED + 1))
        say "$name: PASS ($((SECONDS - start)) s)"
    else
        FAILED=$((FAILED + 1))
        FAILED_NAMES+=("$name")
        say "$name: FAIL ($((SECONDS - start)) s); broker stderr (last 40 lines):"
        if [ -n "$BROKER_DIR" ] && [ -f "$BROKER_DIR/broker.log" ]; then
            tail -n 40 "$BROKER_DIR/broker.log" | sed 's/^/    broker: /'
        fi
    fi
    stop_broker >/dev/null 2>&1 || true
    remove_broker_dir
}

# record_failure NAME WHY: a check that could not even start.
record_failure() {
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$1")
    say "$1: FAIL ($2)"
}

main() {
    local checks=("$@") c t0=$SECONDS
    [ "${#checks[@]}" -gt 0 ] || checks=(java python kcat go cli)
    for c in "${checks[@]}"; do
        case "$c" in java | python | kcat | go | cli) ;; *) say "unknown check '$c' (java, python, kcat, go, cli)"; exit 2 ;; esac
    done
    command -v python3 >/dev/null 2>&1 || apt_install python3 # free_port needs it
    resolve_broker
    say "broker binary: $SLUICE_BIN"

    for c in "${checks[@]}"; do
        case "$c" in
            java)
                if build_java; then run_check java; else record_failure java "mvn package failed"; fi
                ;;
            python)
                if ensure_python; then run_check python; else record_failure python "kafka-python install failed"; fi
                ;;
            kcat)
                if ensure_kcat; then run_check kcat; else record_failure kcat "kcat install failed"; fi
                ;;
            go)
                if build_go; then run_check go; else record_failure go "go build failed"; fi
                ;;
            cli)
                if build_cli; then
                    run_check cli
                    run_cluster_check cli-cluster 0
                    run_cluster_check cli-split 3
                else
                    record_failure cli "mvn (kafka-tools) failed"
                fi
                ;;
        esac
    done

    say "total $((SECONDS - t0)) s${FAILED_NAMES[*]:+; failed: ${FAILED_NAMES[*]}}"
    echo "compat: $PASSED passed, $FAILED failed"
    [ "$FAILED" = 0 ]
}

main "$@"
