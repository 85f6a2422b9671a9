#!/usr/bin/env bash
# Interop scenarios for rabbitmq-c, through its command-line tools (Debian's amqp-tools:
# amqp-declare-queue, amqp-publish, amqp-consume, amqp-get, amqp-delete-queue).
# `amqp_tools.sh --list` lists the scenarios; `amqp_tools.sh NAME` runs one against $AMQP_URL
# and exits 0 when it passes.
set -euo pipefail

url="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
prefix="${WARREN_INTEROP_PREFIX:-interop-$$}"
work="$(mktemp -d)"
trap 'rm -rf "$work"; kill $(jobs -p) 2>/dev/null || true' EXIT

name() { echo "$prefix.c.$1"; }
fail() {
    echo "FAILED: $*" >&2
    exit 1
}
eq() { # actual expected what
    [[ $1 == "$2" ]] || fail "$3: expected '$2', got '$1'"
}

scenario_declare_publish_get() {
    local q out rc
    q="$(name q)"
    eq "$(amqp-declare-queue -u "$url" -q "$q")" "$q" "amqp-declare-queue prints the queue name"
    amqp-publish -u "$url" -r "$q" -b "hello"
    amqp-publish -u "$url" -r "$q" -b "world" -p -C text/plain
    eq "$(amqp-get -u "$url" -q "$q")" "hello" "first amqp-get"
    eq "$(amqp-get -u "$url" -q "$q")" "world" "second amqp-get"
    rc=0
    out="$(amqp-get -u "$url" -q "$q" 2>&1)" || rc=$?
    eq "$rc" 2 "amqp-get on an empty queue exits 2 (get-empty), output '$out'"
    eq "$(amqp-delete-queue -u "$url" -q "$q")" "0" "amqp-delete-queue prints the message count"
    out="$(amqp-declare-queue -u "$url" -q "")"
    [[ $out == amq.gen-* ]] || fail "server-named queue: got '$out'"
}

scenario_consume() {
    local q
    q="$(name q)"
    amqp-declare-queue -u "$url" -q "$q" >/dev/null
    printf 'l1\nl2\nl3\n' | amqp-publish -u "$url" -r "$q" -l
    # Each message body goes to one run of the command, in order, acknowledged after it.
    eq "$(amqp-consume -u "$url" -q "$q" -c 3 -p 1 cat)" $'l1\nl2\nl3' "consumed bodies"
    eq "$(amqp-delete-queue -u "$url" -q "$q")" "0" "all consumed messages were acked"
}

scenario_exchange_routing() {
    # amqp-consume declares an exclusive server-named queue bound to amq.direct with the key.
    local key out
    key="$(name key)"
    amqp-consume -u "$url" -e amq.direct -r "$key" -x -c 1 cat >"$work/out" &
    local consumer=$!
    for _ in $(seq 1 100); do
        amqp-publish -u "$url" -e amq.direct -r "$key" -b "routed"
        kill -0 "$consumer" 2>/dev/null || break
        sleep 0.1
    done
    wait "$consumer" || fail "amqp-consume failed"
    out="$(cat "$work/out")"
    eq "$out" "routed" "message routed through amq.direct to the bound queue"
}

scenario_connect_heartbeat() {
    # A consumer idle for 3.5s with a 1s heartbeat: rabbitmq-c fails the connection when the
    # broker's heartbeats stop, the broker when the client's stop.
    local q
    q="$(name q)"
    amqp-declare-queue -u "$url" -q "$q" >/dev/null
    amqp-consume -u "$url" --heartbeat=1 -q "$q" -c 1 cat >"$work/out" 2>"$work/err" &
    local consumer=$!
    sleep 3.5
    kill -0 "$consumer" 2>/dev/null || fail "consumer died while idle: $(cat "$work/err")"
    amqp-publish -u "$url" -r "$q" -b "after idle"
    wait "$consumer" || fail "amqp-consume failed: $(cat "$work/err")"
    eq "$(cat "$work/out")" "after idle" "delivery after idling"
    amqp-delete-queue -u "$url" -q "$q" >/dev/null
}

scenario_bodies() {
    local q
    q="$(name q)"
    amqp-declare-queue -u "$url" -q "$q" >/dev/null
    amqp-publish -u "$url" -r "$q" -b ""
    amqp-get -u "$url" -q "$q" >"$work/empty"
    eq "$(stat -c %s "$work/empty")" 0 "empty body size"
    # 10 MiB from stdin, split into frames by the client, reassembled by the broker.
    head -c $((10 * 1024 * 1024)) /dev/urandom >"$work/large"
    amqp-publish -u "$url" -r "$q" <"$work/large"
    amqp-get -u "$url" -q "$q" >"$work/large.out"
    eq "$(sha256sum <"$work/large.out")" "$(sha256sum <"$work/large")" "10 MiB body"
    amqp-delete-queue -u "$url" -q "$q" >/dev/null
}

scenario_channel_errors() {
    local missing out rc
    missing="$(name missing)"
    rc=0
    out="$(amqp-get -u "$url" -q "$missing" 2>&1)" || rc=$?
    eq "$rc" 1 "amqp-get of a missing queue fails"
    eq "$out" "basic.get: server channel error 404, message: NOT_FOUND - no queue '$missing' in vhost '/'" \
        "amqp-get error"
    rc=0
    out="$(amqp-publish -u "$url" -e "$missing" -r k -b lost 2>&1)" || rc=$?
    eq "$rc" 1 "amqp-publish to a missing exchange fails"
    eq "$out" "closing channel: server channel error 404, message: NOT_FOUND - no exchange '$missing' in vhost '/'" \
        "amqp-publish error"
}

scenarios=(declare-publish-get consume exchange-routing connect-heartbeat bodies channel-errors)

case "${1:-}" in
--list) printf '%s\n' "${scenarios[@]}" ;;
"") fail "usage: $0 --list | SCENARIO" ;;
*)
    fn="scenario_${1//-/_}"
    declare -F "$fn" >/dev/null || fail "unknown scenario $1; --list shows them"
    "$fn"
    echo ok
    ;;
esac
