#!/usr/bin/env bash
# Stands in for a broker restart when the interop scenarios are checked against a shared
# local RabbitMQ (WARREN_INTEROP_RESTART_CMD): instead of stopping RabbitMQ, it force-closes
# the suite's recovery connections (client-provided name containing "interop-" and
# ".recovery") with the text RabbitMQ sends on shutdown, so clients see the same
# connection.close (320 CONNECTION_FORCED) as at a real restart and reconnect.
set -euo pipefail

closed=0
while IFS=$'\t' read -r pid props; do
    if [[ $props == *interop-* && $props == *.recovery* ]]; then
        rabbitmqctl -q close_connection "$pid" "broker forced connection closure with reason 'shutdown'" >/dev/null
        closed=$((closed + 1))
    fi
done < <(rabbitmqctl -q list_connections pid client_properties 2>/dev/null)
echo "rabbitmq-restart: closed $closed connection(s)" >&2
[[ $closed -gt 0 ]]
