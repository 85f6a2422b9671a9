#!/usr/bin/env bash
# Shovel throughput: Warren's shovel vs RabbitMQ's shovel plugin, moving the same backlog
# between the same pair of Warren brokers (A -> B, release builds, their own ports).
#
# Each round fills a durable queue on A with FILL seconds of 1 KiB persistent messages
# (warren-perf, confirms), then starts a shovel A -> B (ack-mode on-confirm, prefetch
# 1000, destination a durable queue on B) and times how long until B holds every message.
# Warren's shovel runs embedded in A (a dynamic shovel parameter); RabbitMQ's runs in a
# RabbitMQ 3.10 node of this script's own (shovel plugin enabled in its own plugins file),
# also a dynamic shovel parameter. Prints messages/s per round, the medians and the ratio.
#
# Environment: ROUNDS (3), FILL (8 s of publishing per backlog), A_PORT (5712), B_PORT
#   (5713), RABBIT_PORT (5714), RABBIT_NODE (warren-shovel-bench@localhost), KEEP=1 keeps
#   the work directory.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=${ROUNDS:-3}
FILL=${FILL:-8}
A_PORT=${A_PORT:-5712}
B_PORT=${B_PORT:-5713}
RABBIT_PORT=${RABBIT_PORT:-5714}
RABBIT_NODE=${RABBIT_NODE:-warren-shovel-bench@localhost}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d /tmp/warren-shovel-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()
RABBIT_PID=

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

need=()
command -v rabbitmq-server >/dev/null 2>&1 || need+=(rabbitmq-server)
command -v jq >/dev/null 2>&1 || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

log "building warren-server, warrenctl and warren-perf (release)"
(cd "$ROOT" && cargo build --release -q -p warren-broker --bin warren-server --bin warrenctl \
    -p warren-tests --bin warren-perf)

wait_for_port() {
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "shovel.sh: nothing listens on port $1" >&2
    return 1
}

start_warren() { # name port
    WARREN_LOG=warn WARREN_COOKIE_FILE="$WORK/warren.cookie" \
        "$BIN/warren-server" --port "$2" --dist-port $(($2 + 20000)) --data-dir "$WORK/$1" \
        >>"$WORK/$1.log" 2>&1 &
    PIDS+=($!)
    wait_for_port "$2"
}

ctl() { # port args...
    local port=$1
    shift
    WARREN_COOKIE_FILE="$WORK/warren.cookie" "$BIN/warrenctl" -q -n "warren@127.0.0.1:$((port + 20000))" "$@"
}

messages() { # port queue
    ctl "$1" list_queues name messages --formatter json |
        jq -r --arg q "$2" '[.[] | select(.name == $q) | .messages][0] // 0'
}

rabbitmqctl_() { rabbitmqctl -q -n "$RABBIT_NODE" "$@"; }

start_rabbit() {
    local dir=$WORK/rabbit
    mkdir -p "$dir"
    echo '[rabbitmq_shovel].' >"$dir/enabled_plugins"
    local env=(
        RABBITMQ_NODE_PORT="$RABBIT_PORT" RABBITMQ_NODENAME="$RABBIT_NODE"
        RABBITMQ_DIST_PORT=$((RABBIT_PORT + 20000)) RABBITMQ_MNESIA_BASE="$dir/mnesia"
        RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_PID_FILE="$dir/pid"
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
    )
    if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
        chown -R rabbitmq:rabbitmq "$dir"
        env "${env[@]}" setsid su rabbitmq -s /bin/sh -c \
            "cd '$dir' && exec /usr/lib/rabbitmq/bin/rabbitmq-server" >>"$WORK/rabbit.out" 2>&1 </dev/null &
    else
        (cd "$dir" && env "${env[@]}" setsid rabbitmq-server >>"$WORK/rabbit.out" 2>&1 </dev/null &)
    fi
    for _ in $(seq 1 600); do
        [ -s "$dir/pid" ] && break
        sleep 0.1
    done
    rabbitmqctl_ await_startup --timeout 120 >/dev/null
    RABBIT_PID=$(cat "$dir/pid")
}

cleanup() {
    if [ -n "$RABBIT_PID" ]; then
        rabbitmqctl_ stop >/dev/null 2>&1 || true
        kill -KILL "$RABBIT_PID" 2>/dev/null || true
    fi
    for p in "${PIDS[@]}"; do
        kill -INT "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    [ -z "${KEEP:-}" ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_warren a "$A_PORT"
start_warren b "$B_PORT"
log "starting RabbitMQ (shovel plugin) on $RABBIT_PORT"
start_rabbit

A_URI="amqp://guest:guest@127.0.0.1:$A_PORT/%2f"
B_URI="amqp://guest:guest@127.0.0.1:$B_PORT/%2f"

run() { # impl round -> msg/s
    local impl=$1 round=$2 src="bench-$1-$2" dst="bench-$1-$2-dst"
    "$BIN/warren-perf" throughput --uri "$A_URI" -x 1 -y 0 -s 1024 --persistent --confirm 1000 \
        --time "$FILL" --queue-pattern "$src" --keep-queues --json >/dev/null
    local n
    n=$(messages "$A_PORT" "$src")
    local def
    def=$(jq -cn --arg s "$A_URI" --arg sq "$src" --arg d "$B_URI" --arg dq "$dst" \
        '{"src-uri": $s, "src-queue": $sq, "dest-uri": $d, "dest-queue": $dq,
          "src-prefetch-count": 1000, "ack-mode": "on-confirm"}')
    local start end
    start=$(date +%s.%N)
    if [ "$impl" = warren ]; then
        ctl "$A_PORT" set_parameter shovel "$src" "$def" >/dev/null
    else
        rabbitmqctl_ set_parameter shovel "$src" "$def" >/dev/null
    fi
    while [ "$(messages "$B_PORT" "$dst")" -lt "$n" ]; do
        sleep 0.05
    done
    end=$(date +%s.%N)
    if [ "$impl" = warren ]; then
        ctl "$A_PORT" clear_parameter shovel "$src" >/dev/null
    else
        rabbitmqctl_ clear_parameter shovel "$src" >/dev/null
    fi
    ctl "$A_PORT" delete_queue "$src" >/dev/null 2>&1 || true
    ctl "$B_PORT" delete_queue "$dst" >/dev/null 2>&1 || true
    jq -n "$n / ($end - $start) | floor"
    log "$impl round $round: $n messages in $(jq -n "$end - $start | . * 100 | floor / 100") s"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }

W=()
R=()
for round in $(seq 1 "$ROUNDS"); do
    W+=("$(run warren "$round")")
    R+=("$(run rabbit "$round")")
done
wm=$(printf '%s\n' "${W[@]}" | median)
rm_=$(printf '%s\n' "${R[@]}" | median)
echo "shovel A -> B, 1 KiB persistent, on-confirm, prefetch 1000 ($ROUNDS rounds)"
echo "  Warren shovel:           ${W[*]} msg/s (median $wm)"
echo "  RabbitMQ shovel plugin:  ${R[*]} msg/s (median $rm_)"
echo "  ratio Warren/RabbitMQ:   $(jq -n "$wm / $rm_ * 100 | floor / 100")"
