#!/usr/bin/env bash
# Warren vs RabbitMQ, side by side: starts its own RabbitMQ and its own Warren (release
# build) on separate ports, runs the same warren-perf scenarios against both in alternation
# (Warren, RabbitMQ, Warren, RabbitMQ, ...), and prints the median of each scenario per
# broker and the Warren/RabbitMQ ratio. Both brokers are restarted at the start of every
# round, so the memory figures are those of a fresh node. Both are stopped on exit.
#
# Usage: tests/bench/compare.sh            (3 rounds of 10 s throughput scenarios)
#   ROUNDS=1 TIME=5 tests/bench/compare.sh (a quick look)
# Environment: ROUNDS, TIME (seconds per throughput scenario), WARREN_PORT (5692),
#   RABBIT_PORT (5682), RABBIT_NODE (warren-compare@localhost), ONLY (space-separated
#   scenario ids to run, e.g. "s1 s6"), CARGO_TARGET_DIR, KEEP (keep the work directory).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=${ROUNDS:-3}
TIME=${TIME:-10}
WARREN_PORT=${WARREN_PORT:-5692}
RABBIT_PORT=${RABBIT_PORT:-5682}
RABBIT_NODE=${RABBIT_NODE:-warren-compare@localhost}
ONLY=${ONLY:-}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d /tmp/warren-compare.XXXXXX)
RESULTS=$WORK/results.tsv
WARREN_PID=
RABBIT_PID=

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- tools -----------------------------------------------------------------------------------

need_packages=()
command -v rabbitmq-server >/dev/null 2>&1 || need_packages+=(rabbitmq-server)
command -v jq >/dev/null 2>&1 || need_packages+=(jq)
if [ ${#need_packages[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "compare.sh: missing ${need_packages[*]}; install them (apt-get install -y ${need_packages[*]})" >&2
        exit 1
    fi
    log "installing ${need_packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi
# The package's own node (if the install started one) is left alone: ours has its own name,
# ports and directories.

log "building warren-server and warren-perf (release)"
(cd "$ROOT" && cargo build --release -q -p warren-broker --bin warren-server \
    -p warren-tests --bin warren-perf)

# A thousand connections need more descriptors than the usual 1024 (for both brokers and
# for warren-perf).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- brokers ---------------------------------------------------------------------------------

rabbitmqctl_() {
    rabbitmqctl -q -n "$RABBIT_NODE" "$@"
}

wait_for_port() {
    local port=$1
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "compare.sh: nothing listens on port $port after 20 s" >&2
    return 1
}

start_warren() {
    rm -rf "$WORK/warren-data"
    # The distribution port defaults to the AMQP port + 20000: let the OS pick one instead,
    # and keep the cookie out of $HOME.
    WARREN_LOG=warn WARREN_COOKIE_FILE="$WORK/warren.cookie" \
        "$BIN/warren-server" --port "$WARREN_PORT" --dist-port 0 --http-port 0 --data-dir "$WORK/warren-data" \
        >>"$WORK/warren.log" 2>&1 &
    WARREN_PID=$!
    wait_for_port "$WARREN_PORT"
}

stop_warren() {
    if [ -n "$WARREN_PID" ] && kill -0 "$WARREN_PID" 2>/dev/null; then
        kill -INT "$WARREN_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$WARREN_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$WARREN_PID" 2>/dev/null || true
        wait "$WARREN_PID" 2>/dev/null || true
    fi
    WARREN_PID=
}

start_rabbit() {
    local dir=$WORK/rabbit
    rm -rf "$dir"
    mkdir -p "$dir"
    : >"$dir/enabled_plugins"
    if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
        chown -R rabbitmq:rabbitmq "$dir"
        chmod 755 "$WORK"
    fi
    # Only RabbitMQ sees these (warren-server also reads RabbitMQ's variable names).
    local env=(
        RABBITMQ_NODE_PORT="$RABBIT_PORT"
        RABBITMQ_NODENAME="$RABBIT_NODE"
        RABBITMQ_DIST_PORT=$((RABBIT_PORT + 20000))
        RABBITMQ_MNESIA_BASE="$dir/mnesia"
        RABBITMQ_LOG_BASE="$dir/log"
        RABBITMQ_PID_FILE="$dir/pid"
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
    )
    if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
        # As the package's wrapper does, run as the rabbitmq user, but with the descriptor
        # limit raised to the hard limit (su resets it to 1024).
        env "${env[@]}" setsid su rabbitmq -s /bin/sh -c \
            "cd '$dir' && ulimit -n \"\$(ulimit -Hn)\" && exec /usr/lib/rabbitmq/bin/rabbitmq-server" \
            >>"$WORK/rabbit.out" 2>&1 </dev/null &
    else
        (cd "$dir" && env "${env[@]}" setsid rabbitmq-server >>"$WORK/rabbit.out" 2>&1 </dev/null &)
    fi
    for _ in $(seq 1 600); do
        [ -s "$dir/pid" ] && break
        sleep 0.1
    done
    if ! rabbitmqctl_ await_startup --timeout 120 >/dev/null 2>&1; then
        echo "compare.sh: RabbitMQ did not start; see $WORK/rabbit.out" >&2
        return 1
    fi
    RABBIT_PID=$(cat "$dir/pid")
    wait_for_port "$RABBIT_PORT"
}

stop_rabbit() {
    if [ -n "$RABBIT_PID" ]; then
        rabbitmqctl_ stop >/dev/null 2>&1 || true
        for _ in $(seq 1 200); do
            kill -0 "$RABBIT_PID" 2>/dev/null || break
            sleep 0.1
        done
        # Only our own node's process, by its pid, if it would not stop.
        kill -KILL "$RABBIT_PID" 2>/dev/null || true
    fi
    RABBIT_PID=
}

cleanup() {
    stop_warren
    stop_rabbit
    if [ -z "${KEEP:-}" ]; then
        rm -rf "$WORK"
    else
        echo "work directory kept: $WORK" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- scenarios -------------------------------------------------------------------------------
# id | title | metric (jq path into warren-perf's JSON) | unit | better | warren-perf arguments

SCENARIOS=(
    "s1|1 producer, 1 consumer, 16 B, no-ack, no confirms|.consumed.median|msg/s|higher|throughput -x 1 -y 1 -s 16 --autoack --time $TIME"
    "s2|16 B, confirms (window 1000), acks (multi-ack 100, qos 1000)|.consumed.median|msg/s|higher|throughput -x 1 -y 1 -s 16 --confirm 1000 --qos 1000 --multi-ack-every 100 --time $TIME"
    "s3|1 KiB persistent, durable queue, confirms, acks|.consumed.median|msg/s|higher|throughput -x 1 -y 1 -s 1024 --persistent --confirm 1000 --qos 1000 --multi-ack-every 100 --time $TIME"
    "s4|fanout to 10 queues, 10 consumers, 16 B (deliveries)|.consumed.median|msg/s|higher|throughput -x 1 -y 10 -s 16 --exchange-type fanout --queues 10 --autoack --time $TIME"
    "s5|64 KiB bodies, 1 producer, 1 consumer, no-ack|.consumed_bytes_per_s|MiB/s|higher|throughput -x 1 -y 1 -s 65536 --autoack --time $TIME"
    "s6|latency p99 at 1000 msg/s, 16 B, acks|.latency.p99_us|µs|lower|throughput -x 1 -y 1 -s 16 --rate 1000 --time $TIME"
    "s7|broker memory per connection (1000 connections)|.rss_per_connection_bytes|KiB|lower|connections --count 1000 --hold 2"
    "s8|broker memory when idle (fresh node)|idle|MiB|lower|"
    "s9|queue.declare + queue.bind (1000 queues)|.declare_bind_rate|pairs/s|higher|queues --count 1000"
)
# The order within a round: memory on a fresh node first.
ORDER=(s8 s7 s9 s1 s2 s3 s4 s5 s6)

field() { # scenario-id field-number
    local id=$1 n=$2 s
    for s in "${SCENARIOS[@]}"; do
        if [ "${s%%|*}" = "$id" ]; then
            echo "$s" | cut -d'|' -f"$n"
            return
        fi
    done
}

selected() {
    [ -z "$ONLY" ] && return 0
    [[ " $ONLY " == *" $1 "* ]]
}

scale() { # unit value -> value in the unit
    case $1 in
    MiB/s | MiB) jq -n "$2 / 1048576" ;;
    KiB) jq -n "$2 / 1024" ;;
    *) echo "$2" ;;
    esac
}

run_one() { # id broker-name uri pid round
    local id=$1 broker=$2 uri=$3 pid=$4 round=$5
    local metric unit args out value cpu
    metric=$(field "$id" 3)
    unit=$(field "$id" 4)
    args=$(field "$id" 6)
    out=$WORK/$id-$broker-$round.json
    if [ "$metric" = idle ]; then
        value=$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$pid/status")
        cpu="-|-|-|-"
    else
        # shellcheck disable=SC2086 # the arguments are meant to be split
        if ! "$BIN/warren-perf" $args --uri "$uri" --broker-pid "$pid" --json >"$out" \
            2>"$out.log"; then
            log "$id $broker round $round failed: $(tail -1 "$out.log")"
            printf '%s\t%s\t%s\tfailed\t-\t-\t-\t-\n' "$id" "$broker" "$round" >>"$RESULTS"
            return 0
        fi
        value=$(jq -r "$metric // empty" "$out")
        cpu=$(jq -r '[(.cpu.tool_core_pct // "-"), (.cpu.broker_core_pct // "-"), (.cpu.others_core_pct // "-"),
            (if (.cpu.broker_cpu_s != null) and ((.consumed.total // 0) > 0)
             then .cpu.broker_cpu_s / .consumed.total * 1e6 else "-" end)] | map(tostring) | join("|")' "$out")
    fi
    value=$(scale "$unit" "$value")
    log "$id $broker round $round: $value $unit"
    local tool_cpu broker_cpu others_cpu per_msg
    IFS='|' read -r tool_cpu broker_cpu others_cpu per_msg <<<"$cpu"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$broker" "$round" "$value" "$tool_cpu" \
        "$broker_cpu" "$others_cpu" "$per_msg" >>"$RESULTS"
}

WARREN_URI="amqp://guest:guest@127.0.0.1:$WARREN_PORT/%2f"
RABBIT_URI="amqp://guest:guest@127.0.0.1:$RABBIT_PORT/%2f"
: >"$RESULTS"
started=$(date +%s)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq 1 "$ROUNDS"); do
    log "round $round of $ROUNDS: starting fresh brokers"
    stop_warren
    stop_rabbit
    start_warren
    start_rabbit
    # Let both finish booting before the idle figure.
    sleep 5
    for id in "${ORDER[@]}"; do
        selected "$id" || continue
        run_one "$id" warren "$WARREN_URI" "$WARREN_PID" "$round"
        run_one "$id" rabbitmq "$RABBIT_URI" "$RABBIT_PID" "$round"
    done
done
elapsed=$(($(date +%s) - started))
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- summary ---------------------------------------------------------------------------------

median() { # values on stdin -> median ("-" when none)
    sort -g | awk '{v[NR] = $1} END {
        if (NR == 0) { print "-"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

values() { # id broker column -> numeric values
    awk -F'\t' -v id="$1" -v b="$2" -v c="$3" '$1 == id && $2 == b && $c != "failed" && $c != "-" {print $c}' "$RESULTS"
}

fmt() { # number -> rounded for the table
    case $1 in
    -) echo - ;;
    *) awk -v v="$1" 'BEGIN { if (v >= 100 || v <= -100) printf "%.0f", v; else printf "%.2f", v }' ;;
    esac
}

echo
echo "Warren vs RabbitMQ: medians of $ROUNDS rounds, ${TIME} s per throughput scenario ($((elapsed / 60)) min $((elapsed % 60)) s)"
echo "load average before: $load_before, after: $load_after"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r); RabbitMQ $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '?')"
echo
echo "| id | scenario | unit | Warren | RabbitMQ | Warren/RabbitMQ | warren-perf CPU % (vs Warren / vs RabbitMQ) |"
echo "|---|---|---|---:|---:|---:|---:|"
for id in s1 s2 s3 s4 s5 s6 s7 s8 s9; do
    selected "$id" || continue
    w=$(values "$id" warren 4 | median)
    r=$(values "$id" rabbitmq 4 | median)
    ratio=-
    if [ "$w" != - ] && [ "$r" != - ]; then
        ratio=$(awk -v w="$w" -v r="$r" 'BEGIN { if (r == 0) print "-"; else printf "%.2f", w / r }')
    fi
    better=$(field "$id" 5)
    [ "$better" = lower ] && ratio="$ratio (lower is better)"
    tw=$(values "$id" warren 5 | median)
    tr=$(values "$id" rabbitmq 5 | median)
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$id" "$(field "$id" 2)" \
        "$(field "$id" 4)" "$(fmt "$w")" "$(fmt "$r")" "$ratio" "$(fmt "$tw") / $(fmt "$tr")"
done
echo
echo "CPU during each throughput scenario (medians). Broker CPU per delivered message depends"
echo "less on what else the machine runs than rates do; 'others' is every other process's CPU,"
echo "which the brokers competed with (% of one core):"
echo
echo "| id | Warren CPU % | RabbitMQ CPU % | Warren µs/msg | RabbitMQ µs/msg | Warren/RabbitMQ µs/msg | others % (Warren / RabbitMQ runs) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for id in s1 s2 s3 s4 s5 s6; do
    selected "$id" || continue
    wm=$(values "$id" warren 8 | median)
    rm_=$(values "$id" rabbitmq 8 | median)
    ratio=-
    if [ "$wm" != - ] && [ "$rm_" != - ]; then
        ratio=$(awk -v w="$wm" -v r="$rm_" 'BEGIN { if (r == 0) print "-"; else printf "%.2f", w / r }')
    fi
    printf '| %s | %s | %s | %s | %s | %s | %s / %s |\n' "$id" \
        "$(fmt "$(values "$id" warren 6 | median)")" "$(fmt "$(values "$id" rabbitmq 6 | median)")" \
        "$(fmt "$wm")" "$(fmt "$rm_")" "$ratio" \
        "$(fmt "$(values "$id" warren 7 | median)")" "$(fmt "$(values "$id" rabbitmq 7 | median)")"
done
echo
echo "every run (id, broker, round, value, warren-perf CPU %, broker CPU %, others CPU %,"
echo "broker CPU µs per delivered message):"
sort -k1,1 -k2,2 -k3,3n "$RESULTS" | sed 's/^/  /'
