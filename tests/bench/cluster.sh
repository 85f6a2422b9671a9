#!/usr/bin/env bash
# Cluster operations timed on three release warren-server nodes on one machine:
#
# 1. `stop_app; join_cluster; start_app` (three warrenctl runs) for nodes 2 and 3 joining
#    node 1, as the clustering guide does it;
# 2. time to serve after a full stop: with durable queues holding persistent messages on
#    every node, all three nodes are stopped (SIGTERM), then two of them (a majority of
#    the three disc nodes; a different pair each round) are launched together. The time
#    runs from both processes being launched until, on EACH of the two, a client has
#    declared a new durable queue (a definition change: needs the majority), published a
#    persistent message to it with a confirm and got it back; the pre-filled queues homed
#    on the two nodes are then checked (message counts, from the other node too). The third
#    node is started again before the next round.
#
# The client is pika (the venv tests/src/pika.rs creates, or PY=/path/to/python with pika).
# Environment: ROUNDS (5), MESSAGES per pre-filled queue (1000), PORT (5782: AMQP ports
#   PORT..PORT+2, distribution ports +20000), KEEP=1 keeps the work directory.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=${ROUNDS:-5}
MESSAGES=${MESSAGES:-1000}
PORT=${PORT:-5782}
PY=${PY:-$HOME/.cache/warren-tests-pika/bin/python}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d /tmp/warren-cluster-bench.XXXXXX)
export WARREN_COOKIE_FILE=$WORK/cookie
declare -A PIDS=()

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    if [ "${KEEP:-0}" = 1 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

if ! "$PY" -c 'import pika' 2>/dev/null; then
    log "creating a venv with pika in $WORK/venv"
    python3 -m venv "$WORK/venv"
    "$WORK/venv/bin/pip" install -q pika==1.4.4
    PY=$WORK/venv/bin/python
fi

log "building warren-server and warrenctl (release)"
(cd "$ROOT" && cargo build --release -q -p warren-broker --bin warren-server --bin warrenctl)

amqp_port() { echo $((PORT + $1 - 1)); }
node_arg() { echo "bench$1@localhost:$(($(amqp_port "$1") + 20000))"; }
ctl() { local n=$1; shift; "$BIN/warrenctl" -n "$(node_arg "$n")" "$@" >/dev/null; }
now_ns() { date +%s%N; }
ms_since() { echo $((($(now_ns) - $1) / 1000000)); }

wait_for_port() {
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "cluster.sh: nothing listens on port $1" >&2
    return 1
}

launch() { # node
    local p
    p=$(amqp_port "$1")
    WARREN_LOG=warn "$BIN/warren-server" --nodename "bench$1@localhost" --port "$p" \
        --dist-port $((p + 20000)) --http-port $((p + 10000)) --data-dir "$WORK/bench$1" \
        >>"$WORK/bench$1.log" 2>&1 &
    PIDS[$1]=$!
    disown "$!" # no job report when the cleanup kills it
}

stop() { # node: SIGTERM, wait until gone
    local pid=${PIDS[$1]}
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.02; done
    unset "PIDS[$1]"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# The probe: waits until a client on each given port can declare, publish and get; prints
# the milliseconds since START_NS per port, then checks the pre-filled queues.
cat >"$WORK/probe.py" <<'EOF'
import sys, time, pika
start_ns, tag, messages = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ports = [int(p) for p in sys.argv[4].split(",")]
queues = sys.argv[5].split(",") if len(sys.argv) > 5 and sys.argv[5] else []
deadline = time.time() + 120
for port in ports:
    while True:
        try:
            params = pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1,
                                               socket_timeout=5, blocked_connection_timeout=5)
            conn = pika.BlockingConnection(params)
            ch = conn.channel()
            q = f"probe-{tag}-{port}"
            ch.queue_declare(q, durable=True)
            ch.confirm_delivery()
            ch.basic_publish("", q, b"hello", pika.BasicProperties(delivery_mode=2))
            method, _, body = ch.basic_get(q, auto_ack=True)
            assert body == b"hello", body
            print(f"{port} {(time.time_ns() - start_ns) // 1_000_000}")
            sys.stdout.flush()
            ch.queue_delete(q)
            conn.close()
            break
        except (pika.exceptions.AMQPError, OSError, AssertionError):
            if time.time() > deadline:
                raise
            time.sleep(0.02)
# The durable queues homed on the nodes up, seen from every node up.
for port in ports:
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    ch = conn.channel()
    for q in queues:
        n = ch.queue_declare(q, passive=True).method.message_count
        assert n == messages, f"{q} has {n} messages seen from port {port}"
    conn.close()
EOF

# Fill: one durable queue per node with MESSAGES persistent messages.
cat >"$WORK/fill.py" <<'EOF'
import sys, pika
port, q, messages = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
ch = conn.channel()
ch.queue_declare(q, durable=True)
ch.confirm_delivery()
for i in range(messages):
    ch.basic_publish("", q, b"x" * 1024, pika.BasicProperties(delivery_mode=2))
conn.close()
EOF

log "starting three nodes in $WORK"
for n in 1 2 3; do launch $n; done
for n in 1 2 3; do wait_for_port "$(amqp_port $n)"; done

JOINS=()
for n in 2 3; do
    t=$(now_ns)
    ctl $n stop_app
    ctl $n join_cluster "$(node_arg 1)"
    ctl $n start_app
    JOINS+=("$(ms_since "$t")")
done
log "stop_app; join_cluster; start_app (ms): ${JOINS[*]}"

for n in 1 2 3; do
    "$PY" "$WORK/fill.py" "$(amqp_port $n)" "filled-on-$n" "$MESSAGES"
done

SERVE=()
for r in $(seq 1 "$ROUNDS"); do
    for n in 3 2 1; do stop $n; done
    a=$(((r - 1) % 3 + 1)); b=$((r % 3 + 1)); c=$(((r + 1) % 3 + 1))
    t=$(now_ns)
    launch $a; launch $b
    out=$("$PY" "$WORK/probe.py" "$t" "r$r" "$MESSAGES" "$(amqp_port $a),$(amqp_port $b)" \
        "filled-on-$a,filled-on-$b")
    worst=$(echo "$out" | awk '{print $2}' | sort -n | tail -1)
    SERVE+=("$worst")
    log "round $r: nodes $a and $b launched; serving after (ms): $(echo "$out" | tr '\n' ' ')"
    launch $c
    wait_for_port "$(amqp_port $c)"
    "$BIN/warrenctl" -n "$(node_arg $c)" await_startup >/dev/null 2>&1 || true
    sleep 1
done

echo "join (stop_app; join_cluster; start_app), ms: ${JOINS[*]}; median $(printf '%s\n' "${JOINS[@]}" | median)"
echo "time to serve after a full stop (two of three disc nodes launched), ms: ${SERVE[*]}; median $(printf '%s\n' "${SERVE[@]}" | median)"
