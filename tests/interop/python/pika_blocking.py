"""Interop scenarios for pika's BlockingConnection (pika 1.x)."""

import time

import pika
import pika.exceptions as pex

from common import (
    BODIES,
    HEADERS_ALL_TYPES,
    HEADERS_BINDING,
    HEADERS_CASES,
    SHUTDOWN_CODE,
    SHUTDOWN_TEXT,
    TOPIC_BINDINGS,
    TOPIC_KEYS,
    URL,
    check,
    digest,
    eq,
    inequivalent_durable,
    main,
    name,
    not_found_exchange,
    not_found_queue,
    request_restart,
    scenario,
    wait_until,
)


# pika cannot encode a float in a table; every other type it has goes in.
HEADERS = {k: v for k, v in HEADERS_ALL_TYPES.items() if k != "double"}


def connect(**kw):
    params = pika.URLParameters(URL)
    for k, v in kw.items():
        setattr(params, k, v)
    return pika.BlockingConnection(params)


def sentinel_drain(ch, q):
    """Publishes a sentinel to q and returns the bodies that were ahead of it."""
    ch.basic_publish("", q, b"sentinel")
    got = []
    deadline = time.monotonic() + 5
    while True:
        m, _, body = ch.basic_get(q, auto_ack=True)
        if m is None:
            check(time.monotonic() < deadline, "sentinel never reached %s" % q)
            time.sleep(0.01)
            continue
        if body == b"sentinel":
            return got
        got.append(body)


def get_one(ch, q, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        m, props, body = ch.basic_get(q, auto_ack=False)
        if m is not None:
            return m, props, body
        check(time.monotonic() < deadline, "no message in %s" % q)
        time.sleep(0.01)


def close_code(fn):
    """Runs fn, which must make the broker close the channel; returns (code, text)."""
    try:
        fn()
    except pex.ChannelClosedByBroker as e:
        return e.reply_code, e.reply_text
    raise AssertionError("the broker did not close the channel")


@scenario("connect-heartbeat")
def connect_heartbeat():
    conn = connect(heartbeat=1, client_properties={"connection_name": name("hb")})
    hb = conn._impl.params.heartbeat
    eq(conn._impl._heartbeat_checker._timeout, 1, "negotiated heartbeat")
    check(hb == 1, "heartbeat parameter kept")
    # Idle well past the 2-second window in which the broker must hear from the client
    # (pika sends heartbeats); count the broker's heartbeats meanwhile.
    conn.sleep(3.5)
    received = conn._impl._heartbeat_checker._heartbeat_frames_received
    check(received >= 2, "broker sent %d heartbeats in 3.5s at a 1s interval" % received)
    check(conn.is_open, "connection open after idling")
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    check(q.startswith("amq.gen-"), "server-named queue %r" % q)
    conn.close()
    check(conn.is_closed, "connection closed")


@scenario("exchanges")
def exchanges():
    conn = connect()
    ch = conn.channel()
    q = ch.queue_declare(name("q"), exclusive=True).method.queue
    for kind, key, args, headers in [
        ("direct", "k1", None, None),
        ("fanout", "ignored", None, None),
        ("topic", "k.*", None, None),
        ("headers", "", {"x-match": "all", "h": "v"}, {"h": "v"}),
    ]:
        x = name("x", kind)
        ch.exchange_declare(x, exchange_type=kind, durable=False, auto_delete=False)
        ch.exchange_declare(x, passive=True)
        rk = "k.1" if kind == "topic" else key
        ch.queue_bind(q, x, routing_key=key, arguments=args)
        props = pika.BasicProperties(headers=headers)
        ch.basic_publish(x, rk if kind != "direct" else "k1", b"bound-" + kind.encode(), props)
        eq(sentinel_drain(ch, q), [b"bound-" + kind.encode()], "%s: routed while bound" % kind)
        ch.queue_unbind(q, x, routing_key=key, arguments=args)
        ch.basic_publish(x, rk if kind != "direct" else "k1", b"unbound", props)
        eq(sentinel_drain(ch, q), [], "%s: routed after unbind" % kind)
        ch.exchange_delete(x)
        code, text = close_code(lambda: ch.exchange_declare(x, passive=True))
        eq((code, text), (404, not_found_exchange(x)), "passive declare after delete")
        ch = conn.channel()
    # Exchange-to-exchange binding.
    src, dst = name("x", "src"), name("x", "dst")
    ch.exchange_declare(src, exchange_type="direct")
    ch.exchange_declare(dst, exchange_type="fanout")
    ch.queue_bind(q, dst)
    ch.exchange_bind(dst, src, routing_key="e2e")
    ch.basic_publish(src, "e2e", b"via-e2e")
    ch.basic_publish(src, "other", b"not-routed")
    eq(sentinel_drain(ch, q), [b"via-e2e"], "exchange-to-exchange routing")
    ch.exchange_unbind(dst, src, routing_key="e2e")
    ch.basic_publish(src, "e2e", b"after-unbind")
    eq(sentinel_drain(ch, q), [], "after exchange.unbind")
    ch.exchange_delete(src)
    ch.exchange_delete(dst)
    ch.exchange_declare("amq.topic", exchange_type="topic", durable=True, passive=True)
    conn.close()


@scenario("topic-routing")
def topic_routing():
    conn = connect()
    ch = conn.channel()
    x = name("topic")
    ch.exchange_declare(x, exchange_type="topic", auto_delete=True)
    queues = {}
    for binding in TOPIC_BINDINGS:
        q = ch.queue_declare(name("t", binding), exclusive=True).method.queue
        ch.queue_bind(q, x, routing_key=binding)
        queues[binding] = q
    for key in TOPIC_KEYS:
        ch.basic_publish(x, key, key.encode())
    for binding, q in queues.items():
        got = [b.decode() for b in sentinel_drain(ch, q)]
        eq(got, TOPIC_BINDINGS[binding], "messages matching %r" % binding)
    conn.close()


@scenario("headers-routing")
def headers_routing():
    conn = connect()
    ch = conn.channel()
    x = name("headers")
    ch.exchange_declare(x, exchange_type="headers", auto_delete=True)
    q_all = ch.queue_declare(name("all"), exclusive=True).method.queue
    q_any = ch.queue_declare(name("any"), exclusive=True).method.queue
    ch.queue_bind(q_all, x, arguments=dict(HEADERS_BINDING, **{"x-match": "all"}))
    ch.queue_bind(q_any, x, arguments=dict(HEADERS_BINDING, **{"x-match": "any"}))
    want_all, want_any = [], []
    for i, (headers, to_all, to_any) in enumerate(HEADERS_CASES):
        body = b"m%d" % i
        ch.basic_publish(x, "", body, pika.BasicProperties(headers=headers))
        if to_all:
            want_all.append(body)
        if to_any:
            want_any.append(body)
    eq(sentinel_drain(ch, q_all), want_all, "x-match=all")
    eq(sentinel_drain(ch, q_any), want_any, "x-match=any")
    conn.close()


@scenario("ack-nack-reject")
def ack_nack_reject():
    conn = connect()
    ch = conn.channel()
    q = ch.queue_declare(name("q"), exclusive=True).method.queue
    for b in [b"m1", b"m2", b"m3", b"m4"]:
        ch.basic_publish("", q, b)
    ch.basic_qos(prefetch_count=1)
    got = []
    it = ch.consume(q, auto_ack=False, inactivity_timeout=5)

    def next_delivery():
        m, props, body = next(it)
        check(m is not None, "a delivery within 5s (got %r so far)" % got)
        got.append((body, m.redelivered))
        return m, body

    m, body = next_delivery()
    eq(body, b"m1", "first delivery")
    ch.basic_ack(m.delivery_tag)
    m, body = next_delivery()
    eq((body, m.redelivered), (b"m2", False), "second delivery")
    ch.basic_nack(m.delivery_tag, requeue=True)
    m, body = next_delivery()
    eq((body, m.redelivered), (b"m2", True), "nacked message requeued in place, redelivered")
    ch.basic_ack(m.delivery_tag)
    m, body = next_delivery()
    eq(body, b"m3", "after the requeued one")
    ch.basic_reject(m.delivery_tag, requeue=False)
    m, body = next_delivery()
    eq((body, m.redelivered), (b"m4", False), "rejected message dropped, not redelivered")
    ch.basic_reject(m.delivery_tag, requeue=True)
    m, body = next_delivery()
    eq((body, m.redelivered), (b"m4", True), "reject with requeue redelivers")
    ch.basic_ack(m.delivery_tag)
    ch.cancel()
    # basic.nack with multiple=true, without requeue, drops both.
    ch.basic_publish("", q, b"m5")
    ch.basic_publish("", q, b"m6")
    m5, _, _ = get_one(ch, q)
    m6, _, b6 = get_one(ch, q)
    eq(b6, b"m6", "last message")
    ch.basic_nack(m6.delivery_tag, multiple=True, requeue=False)
    eq(ch.queue_declare(q, passive=True).method.message_count, 0, "queue empty at the end")
    conn.close()


@scenario("basic-get")
def basic_get():
    conn = connect()
    ch = conn.channel()
    q = ch.queue_declare(name("q"), exclusive=True).method.queue
    m, _, _ = ch.basic_get(q)
    check(m is None, "basic.get on an empty queue answers get-empty")
    for b in [b"g1", b"g2", b"g3"]:
        ch.basic_publish("", q, b)
    wait_until(
        lambda: ch.queue_declare(q, passive=True).method.message_count == 3, 5, "3 messages"
    )
    m, _, body = ch.basic_get(q)
    eq((body, m.message_count, m.redelivered, m.routing_key, m.exchange), (b"g1", 2, False, q, ""),
       "first get")
    ch.basic_ack(m.delivery_tag)
    m, _, body = ch.basic_get(q, auto_ack=True)
    eq((body, m.message_count), (b"g2", 1), "second get (no-ack)")
    m, _, body = ch.basic_get(q)
    eq(body, b"g3", "third get")
    ch.basic_reject(m.delivery_tag, requeue=True)
    m, _, body = ch.basic_get(q)
    eq((body, m.redelivered, m.message_count), (b"g3", True, 0), "get after requeue")
    ch.basic_ack(m.delivery_tag)
    m, _, _ = ch.basic_get(q)
    check(m is None, "queue empty at the end")
    conn.close()


@scenario("prefetch")
def prefetch():
    conn = connect()
    ch = conn.channel()
    q = ch.queue_declare(name("q"), exclusive=True).method.queue
    for i in range(5):
        ch.basic_publish("", q, b"p%d" % i)
    ch.basic_qos(prefetch_count=2)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((m.delivery_tag, b)), auto_ack=False)
    def settle(n):
        """Waits for n deliveries, then a moment more for any that should not come."""
        wait_until(lambda: len(got) >= n, 5, "%d deliveries" % n,
                   step=lambda: conn.process_data_events(0.05))
        conn.process_data_events(time_limit=0.5)

    settle(2)
    eq([b for _, b in got], [b"p0", b"p1"], "deliveries with prefetch 2 and nothing acked")
    ch.basic_ack(got[0][0])
    settle(3)
    eq([b for _, b in got], [b"p0", b"p1", b"p2"], "one more after one ack")
    ch.basic_ack(got[2][0], multiple=True)
    settle(5)
    eq([b for _, b in got], [b"p%d" % i for i in range(5)], "the rest after a multiple ack")
    ch.basic_ack(got[4][0], multiple=True)
    conn.close()


@scenario("publisher-confirms")
def publisher_confirms():
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare(name("q"), exclusive=True).method.queue
    for i in range(50):
        ch.basic_publish("", q, b"c%d" % i)  # raises unless the broker acks
    eq(ch.queue_declare(q, passive=True).method.message_count, 50, "confirmed messages queued")
    # An unroutable mandatory message is returned, then confirmed.
    try:
        ch.basic_publish("amq.direct", name("nowhere"), b"r", mandatory=True)
        raise AssertionError("no basic.return for an unroutable mandatory publish")
    except pex.UnroutableError as e:
        eq(len(e.messages), 1, "returned messages")
        eq(e.messages[0].method.reply_code, 312, "return reply code")
    # A queue that refuses publishes past its length nacks them.
    full = ch.queue_declare(
        name("full"), exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    ).method.queue
    ch.basic_publish("", full, b"fits")
    try:
        ch.basic_publish("", full, b"overflows")
        raise AssertionError("no basic.nack for a publish the queue rejected")
    except pex.NackError:
        pass
    eq(ch.queue_declare(full, passive=True).method.message_count, 1, "the full queue kept one")
    conn.close()


@scenario("mandatory-return")
def mandatory_return():
    conn = connect()
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, p, b)))
    key = name("unroutable")
    props = pika.BasicProperties(message_id="ret-1", headers={"h": "v"})
    ch.basic_publish("amq.direct", key, b"come back", props, mandatory=True)
    q = ch.queue_declare(name("q"), exclusive=True).method.queue
    ch.basic_publish("", q, b"routed", mandatory=True)
    wait_until(lambda: returned, 5, "basic.return", step=lambda: conn.process_data_events(0.05))
    conn.process_data_events(0.3)
    eq(len(returned), 1, "only the unroutable message comes back")
    m, p, b = returned[0]
    eq((m.reply_code, m.reply_text, m.exchange, m.routing_key), (312, "NO_ROUTE", "amq.direct", key),
       "basic.return")
    eq((b, p.message_id, p.headers), (b"come back", "ret-1", {"h": "v"}), "returned content")
    # Not mandatory: silently dropped.
    ch.basic_publish("amq.direct", key, b"dropped")
    conn.process_data_events(0.3)
    eq(len(returned), 1, "a non-mandatory unroutable message is dropped")
    conn.close()


@scenario("transactions")
def transactions():
    conn = connect()
    ch = conn.channel()
    q = ch.queue_declare(name("q"), exclusive=True).method.queue
    ch.tx_select()
    ch.basic_publish("", q, b"rolled-back")
    eq(ch.queue_declare(q, passive=True).method.message_count, 0, "uncommitted publish invisible")
    ch.tx_rollback()
    eq(ch.queue_declare(q, passive=True).method.message_count, 0, "after rollback")
    ch.basic_publish("", q, b"committed")
    ch.tx_commit()
    wait_until(lambda: ch.queue_declare(q, passive=True).method.message_count == 1, 5,
               "committed message")
    m, _, body = get_one(ch, q)
    eq(body, b"committed", "body")
    ch.basic_ack(m.delivery_tag)
    ch.tx_rollback()  # the ack is undone: the message stays unacknowledged
    ch.basic_recover(requeue=True)
    m, _, body = get_one(ch, q)
    eq((body, m.redelivered), (b"committed", True), "message back after the ack was rolled back")
    ch.basic_ack(m.delivery_tag)
    ch.tx_commit()
    m, _, _ = ch.basic_get(q)
    check(m is None, "queue empty after the committed ack")
    conn.close()


@scenario("bodies")
def bodies():
    conn = connect()
    ch = conn.channel()
    q = ch.queue_declare(name("q"), exclusive=True).method.queue
    for b in BODIES:
        ch.basic_publish("", q, b)
    got = []
    for m, _, body in ch.consume(q, auto_ack=True, inactivity_timeout=10):
        check(m is not None, "all bodies delivered within 10s (%d so far)" % len(got))
        got.append(body)
        if len(got) == len(BODIES):
            break
    eq([digest(b) for b in got], [digest(b) for b in BODIES], "bodies")
    ch.cancel()
    conn.close()


@scenario("properties")
def properties():
    conn = connect()
    ch = conn.channel()
    q = ch.queue_declare(name("q"), exclusive=True).method.queue
    sent = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=HEADERS,
        delivery_mode=2,
        priority=5,
        correlation_id="corr-1",
        reply_to="reply-queue",
        expiration="60000",
        message_id="msg-1",
        timestamp=1700000000,
        type="kind",
        user_id="guest",
        app_id="interop",
        cluster_id="cluster",
    )
    ch.basic_publish("", q, b"{}", sent)
    _, p, body = get_one(ch, q)
    eq(body, b"{}", "body")
    for field in ["content_type", "content_encoding", "delivery_mode", "priority",
                  "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                  "type", "user_id", "app_id", "cluster_id"]:
        eq(getattr(p, field), getattr(sent, field), "property %s" % field)
    eq(set(p.headers), set(HEADERS), "header names")
    for k, v in HEADERS.items():
        eq(p.headers[k], v, "header %s" % k)
    # A message with no properties at all.
    ch.basic_publish("", q, b"bare")
    _, p, _ = get_one(ch, q)
    eq((p.headers, p.content_type, p.delivery_mode), (None, None, None), "empty properties")
    conn.close()


@scenario("channel-errors")
def channel_errors():
    conn = connect()
    ch = conn.channel()
    missing = name("missing")
    code, text = close_code(lambda: ch.queue_declare(missing, passive=True))
    eq((code, text), (404, not_found_queue(missing)), "passive declare of a missing queue")
    check(ch.is_closed, "channel closed after 404")
    ch = conn.channel()
    # RabbitMQ treats an exclusive queue as non-durable whatever the flag says.
    ex = ch.queue_declare(name("excl"), durable=False, exclusive=True).method.queue
    ch.queue_declare(ex, durable=True, exclusive=True)
    q = ch.queue_declare(name("q"), durable=False, auto_delete=True).method.queue
    code, text = close_code(lambda: ch.queue_declare(q, durable=True, auto_delete=True))
    eq((code, text), (406, inequivalent_durable(q)), "redeclare with another durable flag")
    ch = conn.channel()
    nox = name("no-exchange")

    def publish_to_missing():
        ch.basic_publish(nox, "k", b"lost")
        ch.queue_declare(q, passive=True)  # the close arrives before this answer

    code, text = close_code(publish_to_missing)
    eq((code, text), (404, not_found_exchange(nox)), "publish to a missing exchange")
    ch = conn.channel()
    ch.basic_publish("", q, b"still works")
    _, _, body = get_one(ch, q)
    eq(body, b"still works", "a new channel works after the errors")
    check(conn.is_open, "connection survives channel errors")
    ch.queue_delete(q)
    conn.close()


@scenario("consumer-cancel")
def consumer_cancel():
    conn = connect()
    ch = conn.channel()
    q = ch.queue_declare(name("q")).method.queue
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"before")
    wait_until(lambda: got, 5, "a delivery", step=lambda: conn.process_data_events(0.05))
    other = conn.channel()
    other.queue_delete(q)
    wait_until(lambda: cancelled, 5, "basic.cancel from the broker",
               step=lambda: conn.process_data_events(0.05))
    eq(cancelled, [tag], "cancelled consumer tag")
    # Client-initiated cancel on a live consumer.
    q2 = ch.queue_declare(name("q2"), exclusive=True).method.queue
    tag2 = ch.basic_consume(q2, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_cancel(tag2)
    ch.basic_publish("", q2, b"after-cancel")
    wait_until(lambda: ch.queue_declare(q2, passive=True).method.message_count == 1, 5,
               "the message to stay queued", step=lambda: conn.process_data_events(0.05))
    eq(got, [b"before"], "no delivery after basic.cancel")
    conn.close()


@scenario("dead-lettering")
def dead_lettering():
    conn = connect()
    ch = conn.channel()
    dlx = name("dlx")
    ch.exchange_declare(dlx, "fanout", auto_delete=True)
    dead = ch.queue_declare(name("dead"), exclusive=True).method.queue
    ch.queue_bind(dead, dlx)
    src = ch.queue_declare(
        name("src"),
        exclusive=True,
        arguments={"x-dead-letter-exchange": dlx, "x-message-ttl": 60000},
    ).method.queue
    # Expired by a per-message TTL shorter than the queue's.
    ch.basic_publish("", src, b"expires", pika.BasicProperties(expiration="20", headers={"k": 1}))
    m, props, body = get_one(ch, dead)
    eq(body, b"expires", "expired message dead-lettered")
    h = props.headers
    eq(h.get("k"), 1, "original headers kept")
    death = h["x-death"]
    eq(len(death), 1, "one x-death entry")
    d = death[0]
    eq((d["count"], d["reason"], d["queue"], d["exchange"], d["routing-keys"]),
       (1, "expired", src, "", [src]), "x-death entry for the expiry")
    eq(d.get("original-expiration"), "20", "the per-message TTL kept as original-expiration")
    check(props.expiration is None, "expiration removed from the dead-lettered message")
    eq((h["x-first-death-reason"], h["x-first-death-queue"], h["x-first-death-exchange"]),
       ("expired", src, ""), "x-first-death headers")
    ch.basic_ack(m.delivery_tag)
    # Rejected without requeue: a second entry with reason rejected, count per (queue, reason).
    ch.basic_publish("", src, b"rejected")
    m, _, body = get_one(ch, src)
    eq(body, b"rejected", "the message to reject")
    ch.basic_reject(m.delivery_tag, requeue=False)
    m, props, body = get_one(ch, dead)
    eq(body, b"rejected", "rejected message dead-lettered")
    d = props.headers["x-death"][0]
    eq((d["count"], d["reason"], d["queue"]), (1, "rejected", src), "x-death entry for the reject")
    ch.basic_ack(m.delivery_tag)
    conn.close()


@scenario("direct-reply-to")
def direct_reply_to():
    conn = connect()
    ch = conn.channel()
    rq = ch.queue_declare(name("rpc")).method.queue
    # Without a consumer on amq.rabbitmq.reply-to, a request naming it is refused.
    code, text = close_code(
        lambda: (
            ch.basic_publish("", rq, b"x", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to")),
            ch.queue_declare(rq, passive=True),
        )
    )
    eq((code, text), (406, "PRECONDITION_FAILED - fast reply consumer does not exist"),
       "reply-to without the pseudo-queue consumer")
    ch = conn.channel()
    replies = []
    ch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append((p, b)),
                     auto_ack=True)
    server_conn = connect()
    sch = server_conn.channel()
    for i in range(3):
        ch.basic_publish("", rq, b"req-%d" % i,
                         pika.BasicProperties(reply_to="amq.rabbitmq.reply-to",
                                              correlation_id="c%d" % i))
    handled = 0
    while handled < 3:
        m, props, body = get_one(sch, rq)
        check(props.reply_to.startswith("amq.rabbitmq.reply-to."),
              "the server sees a reply name, got %r" % props.reply_to)
        sch.basic_publish("", props.reply_to, b"re:" + body,
                          pika.BasicProperties(correlation_id=props.correlation_id))
        sch.basic_ack(m.delivery_tag)
        handled += 1
    wait_until(lambda: len(replies) == 3, 5, "3 replies", step=lambda: conn.process_data_events(0.05))
    eq(sorted((p.correlation_id, b) for p, b in replies),
       [("c0", b"re:req-0"), ("c1", b"re:req-1"), ("c2", b"re:req-2")], "replies")
    sch.queue_delete(rq)
    server_conn.close()
    conn.close()



@scenario("recovery")
def recovery():
    params = pika.URLParameters(URL)
    params.client_properties = {"connection_name": name("recovery")}
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    q = name("q")
    ch.queue_declare(q, auto_delete=True)
    ch.basic_publish("", q, b"before")
    m, _, body = get_one(ch, q)
    eq(body, b"before", "before the restart")
    ch.basic_ack(m.delivery_tag)
    request_restart()
    try:
        conn.process_data_events(time_limit=5)
        conn.process_data_events(time_limit=5)
        raise AssertionError("the connection survived a broker restart")
    except pex.ConnectionClosedByBroker as e:
        close = (e.reply_code, e.reply_text)
    eq(close[0], SHUTDOWN_CODE, "connection.close reply code")
    # pika leaves reconnecting to the application: retry until the broker is back.
    deadline = time.monotonic() + 20
    while True:
        try:
            conn = pika.BlockingConnection(params)
            break
        except pex.AMQPConnectionError:
            check(time.monotonic() < deadline, "reconnected within 20s")
            time.sleep(0.2)
    ch = conn.channel()
    ch.queue_declare(q, auto_delete=True)
    ch.basic_publish("", q, b"after")
    m, _, body = get_one(ch, q)
    eq(body, b"after", "after the restart")
    ch.basic_ack(m.delivery_tag)
    ch.queue_delete(q)
    conn.close()
    # Checked last, so that a wrong text does not hide whether reconnecting works.
    eq(close, (SHUTDOWN_CODE, SHUTDOWN_TEXT), "connection.close at the restart")


if __name__ == "__main__":
    main("pika-blocking")
