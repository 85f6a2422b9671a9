#!/usr/bin/env bash
# A queue reached from other nodes vs the same queue used on its own node: three release
# warren-server nodes on one machine (joined with warrenctl), a durable queue homed on node
# 1, 1 KiB persistent messages with confirms (window 1000) and manual acks (multi-ack 100,
# qos 1000). Alternating runs: "local" publishes and consumes on node 1; "remote" publishes
# on node 2 and consumes on node 3. Prints each run's median consume rate and each node's
# CPU per consumed message (from /proc/PID/stat), then the medians and remote/local.
#
# CPU_PER_NODE=0.6 gives every node the same CPU budget (0.6 of a core: a cgroup cpu quota
# per node; needs root and the cgroup cpu controller), as if each node had a machine of its
# own; without it the three nodes share the machine's cores with each other and with
# warren-perf, so the remote runs pay for three processes on the same cores.
#
# Environment: ROUNDS (3), TIME (seconds per run, 6), PORT (5801: AMQP ports PORT..PORT+2,
#   distribution ports +20000), CPU_PER_NODE (unset), CARGO_TARGET_DIR, KEEP=1.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=${ROUNDS:-3}
TIME=${TIME:-6}
PORT=${PORT:-5801}
CPU_PER_NODE=${CPU_PER_NODE:-}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d /tmp/warren-remote-bench.XXXXXX)
export WARREN_COOKIE_FILE=$WORK/cookie
PIDS=()
CGROUPS=()

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    sleep 0.5
    for g in "${CGROUPS[@]}"; do rmdir "$g" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

log "building warren-server, warrenctl and warren-perf (release)"
(cd "$ROOT" && cargo build --release -q -p warren-broker --bin warren-server --bin warrenctl \
    -p warren-tests --bin warren-perf)

# Puts process $2 in a cgroup of its own named $1 limited to CPU_PER_NODE of a core.
limit_cpu() {
    local name=$1 pid=$2 period=20000
    local quota
    quota=$(awk -v c="$CPU_PER_NODE" -v p=$period 'BEGIN { printf "%d", c * p }')
    if [ -f /sys/fs/cgroup/cpu/cgroup.procs ]; then
        local g=/sys/fs/cgroup/cpu/warren-bench-$name
        mkdir -p "$g"
        echo "$period" >"$g/cpu.cfs_period_us"
        echo "$quota" >"$g/cpu.cfs_quota_us"
        echo "$pid" >"$g/cgroup.procs"
        CGROUPS+=("$g")
    elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
        local g=/sys/fs/cgroup/warren-bench-$name
        mkdir -p "$g"
        echo "$quota $period" >"$g/cpu.max"
        echo "$pid" >"$g/cgroup.procs"
        CGROUPS+=("$g")
    else
        echo "remote.sh: CPU_PER_NODE needs the cgroup cpu controller (and root)" >&2
        exit 1
    fi
}

for i in 1 2 3; do
    port=$((PORT + i - 1))
    WARREN_LOG=warn WARREN_NODENAME=bench$i@localhost WARREN_NODE_PORT=$port \
        WARREN_DATA_DIR=$WORK/node$i "$BIN/warren-server" >"$WORK/node$i.log" 2>&1 &
    PIDS+=($!)
    if [ -n "$CPU_PER_NODE" ]; then limit_cpu "node$i" "$!"; fi
done
for i in 1 2 3; do
    ctl="$BIN/warrenctl -n bench$i@localhost:$((PORT + i - 1 + 20000))"
    for _ in $(seq 1 100); do $ctl await_startup >/dev/null 2>&1 && break; sleep 0.1; done
done
for i in 2 3; do
    ctl="$BIN/warrenctl -n bench$i@localhost:$((PORT + i - 1 + 20000))"
    $ctl stop_app >/dev/null
    $ctl join_cluster "bench1@localhost:$((PORT + 20000))" >/dev/null
    $ctl start_app >/dev/null
done
log "cluster of three formed${CPU_PER_NODE:+ (each node limited to $CPU_PER_NODE of a core)}"

uri() { echo "amqp://guest:guest@127.0.0.1:$((PORT + $1 - 1))/%2f"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

run() {
    local mode=$1 args
    if [ "$mode" = local ]; then
        args="--uri $(uri 1)"
    else
        args="--uri $(uri 1) --producer-uri $(uri 2) --consumer-uri $(uri 3)"
    fi
    local before=() after=() p
    for p in "${PIDS[@]}"; do before+=("$(cpu_ticks "$p")"); done
    # shellcheck disable=SC2086
    "$BIN/warren-perf" throughput $args -s 1024 --persistent --confirm 1000 --qos 1000 \
        --multi-ack-every 100 --time "$TIME" --json >"$WORK/run.json" 2>/dev/null
    for p in "${PIDS[@]}"; do after+=("$(cpu_ticks "$p")"); done
    local rate total nacked
    rate=$(jq '.consumed.median | floor' "$WORK/run.json")
    total=$(jq '.consumed.total' "$WORK/run.json")
    nacked=$(jq '.nacked // 0' "$WORK/run.json")
    local cpu="" i
    for i in 0 1 2; do
        cpu+=$(awk -v b="${before[$i]}" -v a="${after[$i]}" -v n="$total" -v hz="$HZ" \
            'BEGIN { printf " node%d %.1f", '"$i"' + 1, (a - b) / hz * 1e6 / (n > 0 ? n : 1) }')
    done
    printf '%s\t%s\n' "$mode" "$rate" >>"$WORK/results.tsv"
    log "$mode: median $rate msg/s consumed, $total in all, $nacked nacked; CPU µs per message:$cpu"
}

for r in $(seq 1 "$ROUNDS"); do
    log "round $r of $ROUNDS"
    run local
    run remote
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
L=$(awk -F'\t' '$1 == "local" { print $2 }' "$WORK/results.tsv" | median)
R=$(awk -F'\t' '$1 == "remote" { print $2 }' "$WORK/results.tsv" | median)
printf 'local (all on node 1): %s msg/s\nremote (publish on 2, consume on 3): %s msg/s\nremote/local: %s\n' \
    "$L" "$R" "$(awk -v l="$L" -v r="$R" 'BEGIN { printf "%.2f", r / l }')"
