#!/usr/bin/env bash
# Reference broker: Apache Kafka (KRaft, single node, combined broker+controller), assembled
# only from Maven Central artifacts (scripts/kafka/pom.xml) -- no tarball, no other download.
# Everything it writes lives under the repository's ignored target/kafka-reference/.
#
# usage:
#   scripts/kafka-reference.sh install
#       Gathers the broker's runtime classpath into target/kafka-reference/lib (cached: done
#       again only when scripts/kafka/pom.xml or KAFKA_VERSION changes).
#   scripts/kafka-reference.sh start [--profile default|flush] [--port 9192] [--data DIR]
#                                    [--cpus 0] [--heap 1G] [--keep-data] [--set KEY=VALUE]...
#       Formats DIR (default target/kafka-reference/data-PORT) and starts the broker in the
#       background: PLAINTEXT on 127.0.0.1:PORT, the KRaft controller on 127.0.0.1:PORT+1.
#       Waits until it serves (90 s at most) and prints its PID on stdout.
#         --profile default  Kafka's defaults: writes go to the page cache, no fsync.
#         --profile flush    log.flush.interval.messages=1: fsync after every appended batch
#                            (durability-equivalent to sluice's default).
#         --cpus LIST        taskset CPU list for the JVM (default 0); "all" for no pinning.
#         --heap SIZE        -Xms and -Xmx (default 1G, as kafka-server-start.sh).
#         --keep-data        reuse an already formatted DIR instead of wiping it.
#         --set KEY=VALUE    extra server.properties line (repeatable; last one wins).
#   scripts/kafka-reference.sh stop [--port PORT] [--keep-data]
#       SIGTERM (SIGKILL after 60 s) the broker on PORT, or every broker this script started;
#       removes its pidfile and the data dir (unless --keep-data). Logs stay in the run dir.
#   scripts/kafka-reference.sh cluster-start N [--profile default|flush] [--port 9192] [--cpus 0]
#                                              [--heap 1G] [--set KEY=VALUE]...
#       Starts an N-node KRaft cluster on 127.0.0.1, every node combined broker+controller in a
#       static quorum (controller.quorum.voters=1@127.0.0.1:C1,...,N@127.0.0.1:CN). Node i
#       (node.id=i, 1..N) has PLAINTEXT on PORT+2(i-1), its controller on PORT+2(i-1)+1, its
#       data in target/kafka-reference/data-<its port> (wiped first) and its files in run/<its
#       port>, as start. All formatted with one cluster id; internal topics replicated
#       min(3,N) times, min.isr min(2,N); default.replication.factor stays 1. Every node gets
#       the same --profile, --cpus (one taskset LIST for all JVMs), --heap (each) and --set.
#       Launches the N JVMs, waits until all serve (120 s at most) and prints two lines on
#       stdout: the bootstrap list 127.0.0.1:P1,...,127.0.0.1:PN, then the PIDs P1,...,PN.
#       On failure stops every node it started and exits 1.
#   scripts/kafka-reference.sh cluster-stop N [--port 9192]
#       Stops the N nodes of cluster-start (all at once, so that the quorum outlives every
#       broker's controlled shutdown) and removes their data dirs, as stop does for each.
#   scripts/kafka-reference.sh status
#   scripts/kafka-reference.sh smoke [--profile default|flush]
#       install, start on a free port, 100 records in and out with kcat, a verified run of
#       sluice-bench's own producer (--client native) when sluice-bench is built, stop.
#       Ends with "kafka-reference: 1 passed, 0 failed" (exit 0) or "... 0 passed, 1 failed".
#
# Files (per port): target/kafka-reference/run/PORT/{server.properties,log4j2*.properties,
#   kafka.pid,kafka.log,gc.log,format.log,state}
#
# env:
#   KAFKA_VERSION       override the Kafka version pinned in scripts/kafka/pom.xml
#   JAVA                java binary (default: java on PATH; must be 17 or newer)
#   KAFKA_REF_JVM_OPTS  extra JVM options for the broker
#   KAFKA_REF_MVN_OPTS  extra Maven options for install (e.g. -o, -Dmaven.repo.local=...)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export DEBIAN_FRONTEND=noninteractive
POM_DIR="$ROOT/scripts/kafka"
KDIR="$ROOT/target/kafka-reference"
LIB="$KDIR/lib"
RUNBASE="$KDIR/run"
JAVA=${JAVA:-java}
READY_TIMEOUT=90
CLUSTER_READY_TIMEOUT=120
STOP_TIMEOUT=60

say() { printf 'kafka-reference: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# ---------------------------------------------------------------- dependencies

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" = 0 ]; then
        say "apt-get update"
        $SUDO apt-get update -qq </dev/null >&2
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    $SUDO apt-get install -y -qq --no-install-recommends "$@" </dev/null >/dev/null
}

ensure_java() {
    command -v "$JAVA" >/dev/null 2>&1 || { apt_install default-jre-headless; JAVA=java; }
    local v
    v=$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)
    [ -n "$v" ] && [ "$v" -ge 17 ] || die "Kafka 4.x needs Java 17 or newer ($JAVA is version '${v:-?}')"
}

ensure_maven() {
    command -v mvn >/dev/null 2>&1 || apt_install maven
}

ensure_kcat() {
    command -v kcat >/dev/null 2>&1 || apt_install kcat
}

# ---------------------------------------------------------------- install

kafka_version() {
    if [ -n "${KAFKA_VERSION:-}" ]; then
        echo "$KAFKA_VERSION"
    else
        sed -n 's|.*<kafka.version>\(.*\)</kafka.version>.*|\1|p' "$POM_DIR/pom.xml" | head -n 1
    fi
}

install_stamp() {
    { sha256sum "$POM_DIR/pom.xml" | cut -d' ' -f1; echo "kafka=$(kafka_version)"; } | sha256sum | cut -d' ' -f1
}

cmd_install() {
    local version stamp tmp log t0=$SECONDS
    version=$(kafka_version)
    [ -n "$version" ] || die "no <kafka.version> in $POM_DIR/pom.xml"
    stamp=$(install_stamp)
    if [ -f "$LIB/.stamp" ] && [ "$(cat "$LIB/.stamp")" = "$stamp" ] && [ -f "$LIB/kafka_2.13-$version.jar" ]; then
        say "Kafka $version classpath cached in ${LIB#"$ROOT"/} ($(ls "$LIB"/*.jar | wc -l) jars)"
        return 0
    fi
    ensure_java
    ensure_maven
    say "install: Kafka $version from Maven Central (mvn dependency:copy-dependencies, scripts/kafka/pom.xml)"
    mkdir -p "$KDIR"
    tmp="$KDIR/lib.tmp.$$"
    log="$KDIR/install.log"
    rm -rf "$tmp"
    # shellcheck disable=SC2086 # KAFKA_REF_MVN_OPTS is a list of options
    if ! (cd "$POM_DIR" && mvn -q -B -Dstyle.color=never ${KAFKA_REF_MVN_OPTS:-} \
        -Dkafka.version="$version" \
        dependency:copy-dependencies -DoutputDirectory="$tmp" </dev/null >"$log" 2>&1); then
        tail -n 40 "$log" >&2
        rm -rf "$tmp"
        die "install: mvn failed (full log: ${log#"$ROOT"/})"
    fi
    [ -f "$tmp/kafka_2.13-$version.jar" ] || { rm -rf "$tmp"; die "install: kafka_2.13-$version.jar missing from the copied classpath"; }
    echo "$stamp" >"$tmp/.stamp"
    rm -rf "$LIB"
    mv "$tmp" "$LIB"
    say "install: $(ls "$LIB"/*.jar | wc -l) jars, $(du -sh "$LIB" | cut -f1) in ${LIB#"$ROOT"/} ($((SECONDS - t0)) s)"
}

# ---------------------------------------------------------------- broker lifecycle

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid_is_broker PID: alive and a kafka.Kafka JVM.
pid_is_broker() {
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q ' kafka\.Kafka '
}

cluster_id() {
    # A Kafka Uuid: 16 random bytes, URL-safe base64 without padding; one that does not start
    # with '-' so that StorageTool's argument parser cannot take it for an option.
    local id
    while :; do
        id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
        case "$id" in -*) ;; *) echo "$id"; return ;; esac
    done
}

# write_config RUN PORT CPORT DATA PROFILE NODE_ID NODES QUORUM SETS...
#   NODE_ID: node.id; NODES: the cluster's size (internal topics are replicated min(3,NODES)
#   times, min.isr min(2,NODES)); QUORUM: the quorum line, controller.quorum.bootstrap.servers=...
#   (start: one node, dynamic quorum) or controller.quorum.voters=... (cluster-start: static).
write_config() {
    local run=$1 port=$2 cport=$3 data=$4 profile=$5 node=$6 nodes=$7 quorum=$8 kv
    shift 8
    local rf=$((nodes < 3 ? nodes : 3)) isr=$((nodes < 2 ? nodes : 2))
    {
        case "$quorum" in
            controller.quorum.voters=*)
                echo "# written by scripts/kafka-reference.sh cluster-start (node $node of $nodes, profile $profile); not a"
                echo "# Kafka default: only what a KRaft combined-mode node of a static $nodes-voter quorum needs."
                echo "# Everything else is at Kafka's defaults (default.replication.factor too: 1)."
                ;;
            *)
                echo "# written by scripts/kafka-reference.sh start (profile $profile); not a Kafka default: only what"
                echo "# a single-node KRaft combined-mode broker needs. Everything else is at Kafka's defaults."
                ;;
        esac
        echo "process.roles=broker,controller"
        echo "node.id=$node"
        echo "$quorum"
        echo "listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
        echo "advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
        echo "inter.broker.listener.name=PLAINTEXT"
        echo "controller.listener.names=CONTROLLER"
        echo "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        echo "log.dirs=$data"
        echo "num.partitions=1"
        echo "offsets.topic.replication.factor=$rf"
        echo "transaction.state.log.replication.factor=$rf"
        echo "transaction.state.log.min.isr=$isr"
        echo "share.coordinator.state.topic.replication.factor=$rf"
        echo "share.coordinator.state.topic.min.isr=$isr"
        echo "group.initial.rebalance.delay.ms=0"
        case "$profile" in
            default) echo "# profile default: page cache only, fsync left to the OS (Kafka's default)" ;;
            flush)
                echo "# profile flush: fsync the log after every appended batch"
                echo "log.flush.interval.messages=1"
                ;;
        esac
        for kv in "$@"; do echo "$kv"; done
    } >"$run/server.properties"
    cat >"$run/log4j2.properties" <<'EOF'
# written by scripts/kafka-reference.sh: Kafka's levels (config/log4j2.yaml), all to stdout.
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
logger.statechange.name = state.change.logger
logger.statechange.level = INFO
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = INFO
EOF
    cat >"$run/log4j2-tools.properties" <<'EOF'
# written by scripts/kafka-reference.sh: for kafka-storage format, warnings only.
status = warn
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
EOF
}

# use_cpus WHAT LIST: sets TASKSET, the command prefix that pins a JVM to the taskset CPU LIST
# (none for "" or "all").
TASKSET=()
use_cpus() {
    local what=$1 cpus=$2
    TASKSET=()
    if [ -n "$cpus" ] && [ "$cpus" != all ]; then
        command -v taskset >/dev/null 2>&1 || apt_install util-linux
        taskset -c "$cpus" true 2>/dev/null || die "$what: taskset -c '$cpus' fails (CPUs online: $(nproc))"
        TASKSET=(taskset -c "$cpus")
    fi
}

# prepare_data WHAT DATA KEEP: the data dir, fresh unless KEEP=1 and already formatted (then
# FORMAT=0, else FORMAT=1); never wipes a non-empty dir that is not Kafka's.
FORMAT=1
prepare_data() {
    local what=$1 data=$2 keep=$3
    FORMAT=1
    if [ -d "$data" ] && [ -n "$(ls -A "$data")" ]; then
        if [ "$keep" = 1 ] && [ -f "$data/meta.properties" ]; then
            FORMAT=0 # (format --ignore-formatted would still insist on the same cluster id)
        elif [ -f "$data/meta.properties" ] || [ -f "$data/bootstrap.checkpoint" ]; then
            rm -rf "$data"
        else
            die "$what: --data $data is not empty and holds no Kafka log dir; refusing to wipe it"
        fi
    fi
}

# format_storage WHAT RUN CLUSTER_ID [OPTION...]: kafka-storage format of the log dir of
# RUN/server.properties (output in RUN/format.log).
format_storage() {
    local what=$1 run=$2 id=$3
    shift 3
    if ! "$JAVA" -Xmx256M "-Dlog4j2.configurationFile=file:$run/log4j2-tools.properties" \
        -cp "$LIB/*" kafka.tools.StorageTool format \
        -t "$id" -c "$run/server.properties" "$@" \
        </dev/null >"$run/format.log" 2>&1; then
        tail -n 30 "$run/format.log" | sed 's/^/    format: /' >&2
        die "$what: kafka-storage format failed (log: ${run#"$ROOT"/}/format.log)"
    fi
}

# launch_broker RUN HEAP: kafka.Kafka RUN/server.properties in the background, pinned with
# TASKSET, output in RUN/kafka.log; sets BROKER_PID (the JVM itself) and writes RUN/kafka.pid.
BROKER_PID=""
launch_broker() {
    local run=$1 heap=$2
    local log4j="-Dlog4j2.configurationFile=file:$run/log4j2.properties"

    # JVM options of Kafka's bin/kafka-run-class.sh and kafka-server-start.sh (heap, G1, GC log).
    local jvm=(-Xms"$heap" -Xmx"$heap"
        -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true
        "-Xlog:gc*:file=$run/gc.log:time,tags:filecount=10,filesize=100M"
        "$log4j" "-Dkafka.logs.dir=$run")
    # shellcheck disable=SC2206 # a list of options
    [ -z "${KAFKA_REF_JVM_OPTS:-}" ] || jvm+=(${KAFKA_REF_JVM_OPTS})
    # nohup and taskset exec, so $! is the JVM itself.
    nohup "${TASKSET[@]}" "$JAVA" "${jvm[@]}" -cp "$LIB/*" kafka.Kafka "$run/server.properties" \
        </dev/null >"$run/kafka.log" 2>&1 &
    BROKER_PID=$!
    echo "$BROKER_PID" >"$run/kafka.pid"
}

cmd_start() {
    local profile=default port=9192 data="" cpus=0 heap=1G keep=0 sets=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --profile) profile=${2:?--profile needs a value}; shift 2 ;;
            --port) port=${2:?--port needs a value}; shift 2 ;;
            --data) data=${2:?--data needs a value}; shift 2 ;;
            --cpus) cpus=${2?--cpus needs a value}; shift 2 ;;
            --heap) heap=${2:?--heap needs a value}; shift 2 ;;
            --keep-data) keep=1; shift ;;
            --set) sets+=("${2:?--set needs KEY=VALUE}"); shift 2 ;;
            --profile=* | --port=* | --data=* | --cpus=* | --heap=* | --set=*)
                set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
            *) die "start: unknown option '$1' (see the header of $0)" ;;
        esac
    done
    case "$profile" in default | flush) ;; *) die "start: --profile is default or flush, not '$profile'" ;; esac
    case "$port" in '' | *[!0-9]*) die "start: --port must be a number" ;; esac
    [ "$port" -ge 1 ] && [ "$port" -le 65534 ] || die "start: --port out of range"
    case "$heap" in *[!0-9kKmMgG]* | '') die "start: --heap is a JVM size such as 512M or 1G" ;; esac
    local kv
    for kv in "${sets[@]}"; do case "$kv" in *=*) ;; *) die "start: --set needs KEY=VALUE, not '$kv'" ;; esac; done
    local cport=$((port + 1)) run="$RUNBASE/$port"
    [ -n "$data" ] || data="$KDIR/data-$port"
    case "$data" in /*) ;; *) data="$PWD/$data" ;; esac

    cmd_install
    ensure_java
    if [ -f "$run/kafka.pid" ] && pid_is_broker "$(cat "$run/kafka.pid")"; then
        die "start: a broker is already running on port $port (pid $(cat "$run/kafka.pid")); stop it first"
    fi
    port_open "$port" && die "start: 127.0.0.1:$port is already in use"
    port_open "$cport" && die "start: 127.0.0.1:$cport (controller, PORT+1) is already in use"

    use_cpus start "$cpus"

    # The data dir: fresh unless --keep-data; never wipe a non-empty dir that is not Kafka's.
    prepare_data start "$data" "$keep"
    mkdir -p "$data" "$run"
    rm -f "$run/kafka.pid" "$run/kafka.log" "$run/gc.log"* "$run/format.log"
    write_config "$run" "$port" "$cport" "$data" "$profile" 1 1 \
        "controller.quorum.bootstrap.servers=127.0.0.1:$cport" "${sets[@]}"
    printf 'port=%s\ndata=%s\nprofile=%s\ncpus=%s\nheap=%s\n' "$port" "$data" "$profile" "$cpus" "$heap" >"$run/state"

    # KRaft: a fresh log dir is formatted with a new cluster id; --standalone makes this node the
    # sole voter of a dynamic quorum (controller.quorum.bootstrap.servers, KIP-853), as Kafka's
    # quickstart does. (controller.quorum.voters, the static quorum, refuses --standalone.)
    if [ "$FORMAT" = 1 ]; then
        format_storage start "$run" "$(cluster_id)" --standalone
    fi
    launch_broker "$run" "$heap"
    local pid=$BROKER_PID t0=$SECONDS
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            tail -n 40 "$run/kafka.log" | sed 's/^/    kafka: /' >&2
            rm -f "$run/kafka.pid"
            die "start: the broker exited during startup (log: ${run#"$ROOT"/}/kafka.log)"
        fi
        if port_open "$port" && grep -q 'Kafka Server started' "$run/kafka.log" 2>/dev/null; then
            break
        fi
        if [ $((SECONDS - t0)) -ge "$READY_TIMEOUT" ]; then
            tail -n 40 "$run/kafka.log" | sed 's/^/    kafka: /' >&2
            cmd_stop --port "$port" || true
            die "start: the broker did not serve on 127.0.0.1:$port within $READY_TIMEOUT s"
        fi
        sleep 0.2
    done
    say "Kafka $(kafka_version) pid $pid serving on 127.0.0.1:$port (controller :$cport), profile $profile," \
        "cpus ${cpus:-all}, heap $heap, data ${data#"$ROOT"/}, log ${run#"$ROOT"/}/kafka.log ($((SECONDS - t0)) s)"
    echo "$pid"
}

# stop_one RUNDIR KEEP: stops the broker of one run dir.
stop_one() {
    local run=$1 keep=$2 pid="" data="" i t0=$SECONDS
    [ -f "$run/kafka.pid" ] && pid=$(cat "$run/kafka.pid")
    [ -f "$run/state" ] && data=$(sed -n 's/^data=//p' "$run/state")
    if [ -n "$pid" ] && pid_is_broker "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 $((STOP_TIMEOUT * 5))); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "stop: pid $pid ignored SIGTERM for $STOP_TIMEOUT s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        say "stop: broker pid $pid on port $(basename "$run") stopped ($((SECONDS - t0)) s)"
    elif [ -n "$pid" ]; then
        say "stop: pid $pid of port $(basename "$run") is not running"
    fi
    rm -f "$run/kafka.pid"
    if [ "$keep" = 0 ] && [ -n "$data" ] && [ -d "$data" ] \
        && { [ -f "$data/meta.properties" ] || [ -z "$(ls -A "$data")" ]; }; then
        rm -rf "$data"
    fi
}

cmd_stop() {
    local port="" keep=0 run any=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --port) port=${2:?--port needs a value}; shift 2 ;;
            --port=*) port=${1#*=}; shift ;;
            --keep-data) keep=1; shift ;;
            *) die "stop: unknown option '$1'" ;;
        esac
    done
    if [ -n "$port" ]; then
        [ -d "$RUNBASE/$port" ] || { say "stop: nothing was started on port $port"; return 0; }
        stop_one "$RUNBASE/$port" "$keep"
        return 0
    fi
    for run in "$RUNBASE"/*/; do
        [ -f "$run/kafka.pid" ] || continue
        any=1
        stop_one "${run%/}" "$keep"
    done
    [ "$any" = 1 ] || say "stop: no broker running"
}

cmd_status() {
    local run pid any=0
    for run in "$RUNBASE"/*/; do
        [ -f "$run/kafka.pid" ] || continue
        pid=$(cat "$run/kafka.pid")
        any=1
        if pid_is_broker "$pid"; then
            echo "port $(basename "$run"): running, pid $pid ($(tr '\n' ' ' <"$run/state"))"
        else
            echo "port $(basename "$run"): not running (stale pidfile, pid $pid)"
        fi
    done
    [ "$any" = 1 ] || echo "no broker started"
}

# ---------------------------------------------------------------- cluster

# check_nodes WHAT N: the first argument of cluster-start/cluster-stop.
check_nodes() {
    case "$2" in '' | 0* | *[!0-9]*) die "$1: the first argument is the number of nodes N (1 or more; see the header of $0)" ;; esac
}

# stop_runs RUNDIR...: stop_one (data dir removed) on every RUNDIR at once. A combined node's
# controller outlives its broker's controlled shutdown, which needs an active controller: one
# after the other, the last nodes would wait for a quorum majority already gone (and be killed
# after STOP_TIMEOUT).
stop_runs() {
    local run pid pids=() rc=0
    for run in "$@"; do
        stop_one "$run" 0 &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    return "$rc"
}

# EXIT trap of cluster-start until every node serves: stops what it started, data dirs removed.
CLUSTER_RUNS=()
cluster_abort() {
    local STOP_TIMEOUT=15 # (dynamic scope: stop_one's SIGKILL delay) the data goes anyway
    [ "${#CLUSTER_RUNS[@]}" -gt 0 ] || return 0
    say "cluster-start: failed; stopping the ${#CLUSTER_RUNS[@]} node(s) it set up"
    stop_runs "${CLUSTER_RUNS[@]}" || true
}

cmd_cluster_start() {
    local n=${1:-} profile=default base=9192 cpus=0 heap=1G sets=()
    check_nodes cluster-start "$n"
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --profile) profile=${2:?--profile needs a value}; shift 2 ;;
            --port) base=${2:?--port needs a value}; shift 2 ;;
            --cpus) cpus=${2?--cpus needs a value}; shift 2 ;;
            --heap) heap=${2:?--heap needs a value}; shift 2 ;;
            --set) sets+=("${2:?--set needs KEY=VALUE}"); shift 2 ;;
            --profile=* | --port=* | --cpus=* | --heap=* | --set=*)
                set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
            *) die "cluster-start: unknown option '$1' (see the header of $0)" ;;
        esac
    done
    case "$profile" in default | flush) ;; *) die "cluster-start: --profile is default or flush, not '$profile'" ;; esac
    case "$base" in '' | *[!0-9]*) die "cluster-start: --port must be a number" ;; esac
    [ "$base" -ge 1 ] && [ $((base + 2 * n - 1)) -le 65535 ] \
        || die "cluster-start: --port out of range (the $n nodes use $base..$((base + 2 * n - 1)))"
    case "$heap" in *[!0-9kKmMgG]* | '') die "cluster-start: --heap is a JVM size such as 512M or 1G" ;; esac
    local kv
    for kv in "${sets[@]}"; do case "$kv" in *=*) ;; *) die "cluster-start: --set needs KEY=VALUE, not '$kv'" ;; esac; done

    cmd_install
    ensure_java
    local i j port cport run data voters="" ports=() runs=() datas=()
    for i in $(seq 1 "$n"); do
        port=$((base + 2 * (i - 1)))
        cport=$((port + 1))
        run="$RUNBASE/$port"
        if [ -f "$run/kafka.pid" ] && pid_is_broker "$(cat "$run/kafka.pid")"; then
            die "cluster-start: a broker is already running on port $port (pid $(cat "$run/kafka.pid")); stop it first"
        fi
        port_open "$port" && die "cluster-start: 127.0.0.1:$port (node $i) is already in use"
        port_open "$cport" && die "cluster-start: 127.0.0.1:$cport (node $i's controller) is already in use"
        ports+=("$port")
        runs+=("$run")
        datas+=("$KDIR/data-$port")
        voters+="${voters:+,}$i@127.0.0.1:$cport"
    done
    use_cpus cluster-start "$cpus"

    # From here on, a failure (or ^C) stops and cleans up every node set up so far.
    CLUSTER_RUNS=()
    trap cluster_abort EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    # KRaft, static quorum: every node knows all voters from controller.quorum.voters, so the
    # format takes neither --standalone nor --initial-controllers (kraft.version 0); all log dirs
    # share one cluster id.
    local id
    id=$(cluster_id)
    for i in $(seq 1 "$n"); do
        j=$((i - 1)) port=${ports[j]} run=${runs[j]} data=${datas[j]}
        prepare_data cluster-start "$data" 0
        mkdir -p "$data" "$run"
        rm -f "$run/kafka.pid" "$run/kafka.log" "$run/gc.log"* "$run/format.log"
        printf 'port=%s\ndata=%s\nprofile=%s\ncpus=%s\nheap=%s\nnode=%s of %s (cluster-start --port %s)\ncluster.id=%s\n' \
            "$port" "$data" "$profile" "$cpus" "$heap" "$i" "$n" "$base" "$id" >"$run/state"
        CLUSTER_RUNS+=("$run")
        write_config "$run" "$port" "$((port + 1))" "$data" "$profile" "$i" "$n" \
            "controller.quorum.voters=$voters" "${sets[@]}"
        format_storage cluster-start "$run" "$id"
    done

    # All JVMs first: none can finish starting before a majority of the voters is up.
    local pids=() ready=() t0=$SECONDS
    for i in $(seq 1 "$n"); do
        launch_broker "${runs[i - 1]}" "$heap"
        pids+=("$BROKER_PID")
        ready+=(0)
    done
    local nready late
    while :; do
        nready=0
        for j in "${!pids[@]}"; do
            if [ "${ready[j]}" = 0 ]; then
                if ! kill -0 "${pids[j]}" 2>/dev/null; then
                    wait "${pids[j]}" 2>/dev/null || true
                    tail -n 40 "${runs[j]}/kafka.log" | sed 's/^/    kafka: /' >&2
                    die "cluster-start: node $((j + 1)) (port ${ports[j]}, pid ${pids[j]}) exited during startup" \
                        "(log: ${runs[j]#"$ROOT"/}/kafka.log)"
                fi
                if port_open "${ports[j]}" && grep -q 'Kafka Server started' "${runs[j]}/kafka.log" 2>/dev/null; then
                    ready[j]=1
                fi
            fi
            [ "${ready[j]}" = 0 ] || nready=$((nready + 1))
        done
        [ "$nready" -lt "$n" ] || break
        if [ $((SECONDS - t0)) -ge "$CLUSTER_READY_TIMEOUT" ]; then
            late=""
            for j in "${!pids[@]}"; do
                [ "${ready[j]}" = 0 ] || continue
                late+="${late:+, }node $((j + 1)) (port ${ports[j]})"
                say "cluster-start: node $((j + 1)), ${runs[j]#"$ROOT"/}/kafka.log:"
                tail -n 40 "${runs[j]}/kafka.log" | sed 's/^/    kafka: /' >&2
            done
            die "cluster-start: $late did not serve within $CLUSTER_READY_TIMEOUT s"
        fi
        sleep 0.2
    done
    trap - EXIT INT TERM
    CLUSTER_RUNS=()

    local bootstrap=()
    for port in "${ports[@]}"; do bootstrap+=("127.0.0.1:$port"); done
    say "Kafka $(kafka_version) cluster of $n serving on $(IFS=,; echo "${bootstrap[*]}")" \
        "(controllers :$((base + 1)) and every 2 ports on), pids $(IFS=,; echo "${pids[*]}"), cluster id $id," \
        "profile $profile, cpus ${cpus:-all}, heap $heap each, logs ${RUNBASE#"$ROOT"/}/PORT/kafka.log ($((SECONDS - t0)) s)"
    (IFS=,; echo "${bootstrap[*]}"; echo "${pids[*]}")
}

cmd_cluster_stop() {
    local n=${1:-} base=9192 i port runs=()
    check_nodes cluster-stop "$n"
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --port) base=${2:?--port needs a value}; shift 2 ;;
            --port=*) base=${1#*=}; shift ;;
            *) die "cluster-stop: unknown option '$1'" ;;
        esac
    done
    case "$base" in '' | *[!0-9]*) die "cluster-stop: --port must be a number" ;; esac
    for i in $(seq 1 "$n"); do
        port=$((base + 2 * (i - 1)))
        if [ -d "$RUNBASE/$port" ]; then
            runs+=("$RUNBASE/$port")
        else
            say "cluster-stop: nothing was started on port $port (node $i)"
        fi
    done
    [ "${#runs[@]}" -gt 0 ] || return 0
    stop_runs "${runs[@]}"
}

# ---------------------------------------------------------------- smoke

# A port pair that can be bound right now, below the kernel's ephemeral range: a port in that
# range can be taken at any moment by some client's outgoing connection, which a connect test
# does not see (a CI run once lost the controller port that way).
free_port_pair() {
    python3 - <<'PY'
import random, socket
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(500):
    p = random.randrange(10000, max(lo - 2, 10002))
    try:
        for q in (p, p + 1):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", q))
            s.close()
    except OSError:
        continue
    print(p)
    raise SystemExit(0)
raise SystemExit(1)
PY
}

cmd_smoke() {
    local profile=default t0=$SECONDS ok=0 port dir topic=kafka-reference-smoke i
    while [ $# -gt 0 ]; do
        case "$1" in
            --profile) profile=${2:?--profile needs a value}; shift 2 ;;
            --profile=*) profile=${1#*=}; shift ;;
            *) die "smoke: unknown option '$1'" ;;
        esac
    done
    ensure_kcat
    cmd_install
    local started=1 attempt
    trap 'cmd_stop --port "$SMOKE_PORT" >/dev/null 2>&1 || true' EXIT
    # Up to three port pairs: between the check and Kafka's bind another process may take one.
    for attempt in 1 2 3; do
        port=$(free_port_pair) || die "smoke: no free port pair"
        SMOKE_PORT=$port
        # Another process, so that a failing start (which exits) still reaches the closing line.
        if bash "$ROOT/scripts/kafka-reference.sh" start --port "$port" --profile "$profile" --heap 512M >/dev/null; then
            started=0
            break
        fi
        grep -q 'Address already in use' "$RUNBASE/$port/kafka.log" 2>/dev/null || break
        say "smoke: port $port or $((port + 1)) was taken during start (attempt $attempt); another pair"
        cmd_stop --port "$port" >/dev/null 2>&1 || true
    done
    dir="$RUNBASE/$port/smoke"
    if [ "$started" = 0 ]; then
        mkdir -p "$dir"
        for i in $(seq 1 100); do
            printf 'record %03d: the quick brown fox %s\n' "$i" "$(printf '%*s' $((i % 40)) '' | tr ' ' '~')"
        done >"$dir/in.txt"
        if ! timeout 60 kcat -b "127.0.0.1:$port" -t "$topic" -P -X acks=all <"$dir/in.txt" 2>"$dir/produce.err"; then
            say "smoke: kcat -P failed:"; sed 's/^/    /' "$dir/produce.err" >&2; ok=1
        elif ! timeout 60 kcat -b "127.0.0.1:$port" -t "$topic" -C -o beginning -e -q \
            </dev/null >"$dir/out.txt" 2>"$dir/consume.err"; then
            say "smoke: kcat -C failed:"; sed 's/^/    /' "$dir/consume.err" >&2; ok=1
        elif ! cmp -s "$dir/in.txt" "$dir/out.txt"; then
            say "smoke: consumed records differ from produced ones ($(wc -l <"$dir/out.txt") of 100 back):"
            diff "$dir/in.txt" "$dir/out.txt" | head -n 20 >&2 || true
            ok=1
        else
            say "smoke: 100 records produced and consumed back intact (kcat, topic $topic, profile $profile)"
        fi
        # sluice-bench's own producer speaks the protocol by hand: Kafka itself must take its
        # batches, and the bench's consumer must read every record back once, in order.
        local bench=""
        for bench in "$ROOT/target/debug/sluice-bench" "$ROOT/target/release/sluice-bench"; do
            [ -x "$bench" ] && break
        done
        if [ "$ok" = 0 ] && [ -x "$bench" ]; then
            if timeout 120 "$bench" --bootstrap "127.0.0.1:$port" --topic kafka-reference-native \
                --client native --partitions 2 --record-bytes 200 --rate-mb 1 --linger-ms 1 \
                --seconds 2 --warmup-seconds 1 --consume >"$dir/native.out" 2>&1; then
                say "smoke: sluice-bench --client native verified against Kafka: $(grep -o 'every send was.*' "$dir/native.out" | head -n 1)"
            else
                say "smoke: sluice-bench --client native against Kafka failed:"; sed 's/^/    /' "$dir/native.out" >&2; ok=1
            fi
        fi
        cmd_stop --port "$port" || ok=1
    else
        ok=1
    fi
    trap - EXIT
    say "smoke: $((SECONDS - t0)) s"
    if [ "$ok" = 0 ]; then
        rm -rf "${RUNBASE:?}/$port" # logs of a failed smoke stay for a look
        echo "kafka-reference: 1 passed, 0 failed"
    else
        echo "kafka-reference: 0 passed, 1 failed"
        return 1
    fi
}

# ---------------------------------------------------------------- main

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    install) cmd_install "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    cluster-start) cmd_cluster_start "$@" ;;
    cluster-stop) cmd_cluster_stop "$@" ;;
    status) cmd_status "$@" ;;
    smoke) cmd_smoke "$@" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
