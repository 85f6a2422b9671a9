"""Interop scenarios for kombu (Celery's messaging library) over its py-amqp transport."""

import socket
import time

import amqp.exceptions as aex
from kombu import Connection, Consumer, Exchange, Producer, Queue, binding

from common import (
    BODIES,
    HEADERS_ALL_TYPES,
    HEADERS_BINDING,
    HEADERS_CASES,
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

# Every field type py-amqp encodes; it reads a timestamp back as a naive UTC datetime.
HEADERS = dict(HEADERS_ALL_TYPES, timestamp=HEADERS_ALL_TYPES["timestamp"].replace(tzinfo=None))
RAW = dict(serializer=None, content_type="application/octet-stream", content_encoding="binary")


def connect(**kw):
    conn = Connection(URL, **kw)
    conn.connect()
    return conn


def publish(producer, body, routing_key, exchange="", **kw):
    args = dict(RAW)
    args.update(kw)
    producer.publish(body, routing_key=routing_key, exchange=exchange, **args)


def sentinel_drain(ch, producer, q):
    """Publishes a sentinel to q and returns the bodies that were ahead of it."""
    publish(producer, b"sentinel", q.name)
    got = []
    deadline = time.monotonic() + 5
    while True:
        m = q.get(no_ack=True)
        if m is None:
            check(time.monotonic() < deadline, "sentinel never reached %s" % q.name)
            time.sleep(0.01)
            continue
        if m.body == b"sentinel":
            return got
        got.append(m.body)


def get_one(q):
    deadline = time.monotonic() + 5
    while True:
        m = q.get(no_ack=False)
        if m is not None:
            return m
        check(time.monotonic() < deadline, "no message in %s" % q.name)
        time.sleep(0.01)


def channel_error(fn, exc_type, code, text, what):
    try:
        fn()
    except exc_type as e:
        eq((e.reply_code, e.reply_text), (code, text), what)
        return
    raise AssertionError("%s: the broker did not close the channel" % what)


def drain(conn, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=max(0.01, deadline - time.monotonic()))
        except socket.timeout:
            pass


@scenario("connect-heartbeat")
def connect_heartbeat():
    conn = connect(heartbeat=1)
    eq(conn.connection.heartbeat, 1, "negotiated heartbeat")
    # kombu leaves heartbeats to the application: heartbeat_check sends ours and raises
    # ConnectionForced when the broker's stop arriving.
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        conn.heartbeat_check(rate=4)
        try:
            conn.drain_events(timeout=0.25)
        except socket.timeout:
            pass
    ch = conn.channel()
    q = Queue("", exclusive=True, channel=ch)
    qname, _, _ = q.queue_declare()
    check(qname.startswith("amq.gen-"), "server-named queue %r" % qname)
    conn.release()
    check(not conn.connected, "connection closed")


@scenario("exchanges")
def exchanges():
    conn = connect()
    ch = conn.channel()
    producer = Producer(ch)
    q = Queue(name("q"), exclusive=True, channel=ch)
    q.declare()
    for kind, key, rk, args, headers in [
        ("direct", "k1", "k1", None, None),
        ("fanout", "ignored", "other", None, None),
        ("topic", "k.*", "k.1", None, None),
        ("headers", "", "", {"x-match": "all", "h": "v"}, {"h": "v"}),
    ]:
        x = Exchange(name("x", kind), type=kind, durable=False, channel=ch)
        x.declare()
        x.declare(passive=True)
        q.bind_to(x, routing_key=key, arguments=args)
        publish(producer, b"bound-" + kind.encode(), rk, x.name, headers=headers)
        eq(sentinel_drain(ch, producer, q), [b"bound-" + kind.encode()], "%s: routed" % kind)
        q.unbind_from(x, routing_key=key, arguments=args)
        publish(producer, b"unbound", rk, x.name, headers=headers)
        eq(sentinel_drain(ch, producer, q), [], "%s: routed after unbind" % kind)
        x.delete()
        channel_error(lambda: x.declare(passive=True), aex.NotFound, 404,
                      not_found_exchange(x.name), "passive declare after delete")
        ch = conn.channel()
        producer = Producer(ch)
        q = q(ch)
    src = Exchange(name("x", "src"), type="direct", durable=False, channel=ch)
    dst = Exchange(name("x", "dst"), type="fanout", durable=False, channel=ch)
    src.declare()
    dst.declare()
    q.bind_to(dst)
    dst.bind_to(src, routing_key="e2e")
    publish(producer, b"via-e2e", "e2e", src.name)
    publish(producer, b"not-routed", "other", src.name)
    eq(sentinel_drain(ch, producer, q), [b"via-e2e"], "exchange-to-exchange routing")
    dst.unbind_from(src, routing_key="e2e")
    publish(producer, b"after-unbind", "e2e", src.name)
    eq(sentinel_drain(ch, producer, q), [], "after exchange.unbind")
    src.delete()
    dst.delete()
    conn.release()


@scenario("topic-routing")
def topic_routing():
    conn = connect()
    ch = conn.channel()
    producer = Producer(ch)
    x = Exchange(name("topic"), type="topic", auto_delete=True, durable=False, channel=ch)
    x.declare()
    queues = {}
    for binding_key in TOPIC_BINDINGS:
        q = Queue(name("t", binding_key), exchange=x, routing_key=binding_key, exclusive=True,
                  channel=ch)
        q.declare()
        queues[binding_key] = q
    for key in TOPIC_KEYS:
        publish(producer, key.encode(), key, x.name)
    for binding_key, q in queues.items():
        got = [b.decode() for b in sentinel_drain(ch, producer, q)]
        eq(got, TOPIC_BINDINGS[binding_key], "messages matching %r" % binding_key)
    conn.release()


@scenario("headers-routing")
def headers_routing():
    conn = connect()
    ch = conn.channel()
    producer = Producer(ch)
    x = Exchange(name("headers"), type="headers", auto_delete=True, durable=False)
    q_all = Queue(name("all"), exclusive=True, channel=ch, bindings=[
        binding(x, arguments=dict(HEADERS_BINDING, **{"x-match": "all"}))])
    q_any = Queue(name("any"), exclusive=True, channel=ch, bindings=[
        binding(x, arguments=dict(HEADERS_BINDING, **{"x-match": "any"}))])
    x(ch).declare()
    q_all.declare()
    q_any.declare()
    want_all, want_any = [], []
    for i, (headers, to_all, to_any) in enumerate(HEADERS_CASES):
        body = b"m%d" % i
        publish(producer, body, "", x.name, headers=headers)
        if to_all:
            want_all.append(body)
        if to_any:
            want_any.append(body)
    eq(sentinel_drain(ch, producer, q_all), want_all, "x-match=all")
    eq(sentinel_drain(ch, producer, q_any), want_any, "x-match=any")
    conn.release()


@scenario("ack-nack-reject")
def ack_nack_reject():
    conn = connect()
    ch = conn.channel()
    producer = Producer(ch)
    q = Queue(name("q"), exclusive=True, channel=ch)
    q.declare()
    for b in [b"m1", b"m2", b"m3", b"m4"]:
        publish(producer, b, q.name)
    got = []
    consumer = Consumer(ch, [q], on_message=got.append, prefetch_count=1, no_ack=False)
    consumer.consume()

    def nxt(what):
        wait_until(lambda: got, 5, what, step=lambda: drain(conn, 0.05))
        return got.pop(0)

    m = nxt("m1")
    eq(m.body, b"m1", "first delivery")
    m.ack()
    m = nxt("m2")
    eq((m.body, m.delivery_info["redelivered"]), (b"m2", False), "second delivery")
    m.requeue()
    m = nxt("m2 again")
    eq((m.body, m.delivery_info["redelivered"]), (b"m2", True), "requeued message redelivered")
    m.ack()
    m = nxt("m3")
    eq(m.body, b"m3", "after the requeued one")
    m.reject(requeue=False)
    m = nxt("m4")
    eq((m.body, m.delivery_info["redelivered"]), (b"m4", False), "rejected message dropped")
    m.ack()
    drain(conn, 0.2)
    eq(got, [], "no further delivery")
    # kombu declares exclusive queues auto-delete: cancelling the last consumer deletes it.
    consumer.cancel()
    channel_error(lambda: q.queue_declare(passive=True), aex.NotFound, 404,
                  not_found_queue(q.name), "auto-delete queue gone after its consumer")
    conn.release()


@scenario("basic-get")
def basic_get():
    conn = connect()
    ch = conn.channel()
    producer = Producer(ch)
    q = Queue(name("q"), exclusive=True, channel=ch)
    q.declare()
    check(q.get() is None, "basic.get on an empty queue answers get-empty")
    for b in [b"g1", b"g2", b"g3"]:
        publish(producer, b, q.name)
    wait_until(lambda: q.queue_declare(passive=True).message_count == 3, 5, "3 messages")
    m = get_one(q)
    eq((m.body, m.delivery_info["message_count"], m.delivery_info["redelivered"],
        m.delivery_info["routing_key"], m.delivery_info["exchange"]),
       (b"g1", 2, False, q.name, ""), "first get")
    m.ack()
    m = q.get(no_ack=True)
    eq((m.body, m.delivery_info["message_count"]), (b"g2", 1), "no-ack get")
    m = get_one(q)
    eq(m.body, b"g3", "third get")
    m.requeue()
    m = get_one(q)
    eq((m.body, m.delivery_info["redelivered"], m.delivery_info["message_count"]),
       (b"g3", True, 0), "get after requeue")
    m.ack()
    check(q.get() is None, "queue empty at the end")
    conn.release()


@scenario("prefetch")
def prefetch():
    conn = connect()
    ch = conn.channel()
    producer = Producer(ch)
    q = Queue(name("q"), exclusive=True, channel=ch)
    q.declare()
    for i in range(5):
        publish(producer, b"p%d" % i, q.name)
    got = []
    consumer = Consumer(ch, [q], on_message=got.append, no_ack=False)
    consumer.qos(prefetch_count=2)
    consumer.consume()
    def settle(n):
        """Waits for n deliveries, then a moment more for any that should not come."""
        wait_until(lambda: len(got) >= n, 5, "%d deliveries" % n, step=lambda: drain(conn, 0.05))
        drain(conn, 0.5)

    settle(2)
    eq([m.body for m in got], [b"p0", b"p1"], "deliveries with prefetch 2 and nothing acked")
    got[0].ack()
    settle(3)
    eq([m.body for m in got], [b"p0", b"p1", b"p2"], "one more after one ack")
    got[1].ack()
    got[2].ack()
    settle(5)
    eq([m.body for m in got], [b"p%d" % i for i in range(5)], "the rest")
    got[3].ack()
    got[4].ack()
    conn.release()


@scenario("publisher-confirms")
def publisher_confirms():
    conn = connect(transport_options={"confirm_publish": True})
    ch = conn.channel()
    producer = Producer(ch)
    q = Queue(name("q"), exclusive=True, channel=ch)
    q.declare()
    for i in range(50):
        publish(producer, b"c%d" % i, q.name)  # waits for each basic.ack
    eq(q.queue_declare(passive=True).message_count, 50, "confirmed messages queued")
    full = Queue(name("full"), exclusive=True, channel=ch,
                 queue_arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    full.declare()
    publish(producer, b"fits", full.name)
    try:
        publish(producer, b"overflows", full.name)
        raise AssertionError("no basic.nack for a publish the queue rejected")
    except aex.MessageNacked:
        pass
    eq(full.queue_declare(passive=True).message_count, 1, "the full queue kept one")
    conn.release()


@scenario("mandatory-return")
def mandatory_return():
    conn = connect()
    ch = conn.channel()
    returned = []
    producer = Producer(ch, on_return=lambda *a: returned.append(a))
    key = name("unroutable")
    publish(producer, b"come back", key, "amq.direct", mandatory=True,
            headers={"h": "v"}, message_id="ret-1")
    q = Queue(name("q"), exclusive=True, channel=ch)
    q.declare()
    publish(producer, b"routed", q.name, mandatory=True)
    wait_until(lambda: returned, 5, "basic.return", step=lambda: drain(conn, 0.05))
    publish(producer, b"dropped", key, "amq.direct")
    eq(sentinel_drain(ch, producer, q), [b"routed"], "routed mandatory message")
    drain(conn, 0.3)
    eq(len(returned), 1, "only the unroutable message comes back")
    exc, exchange, routing_key, message = returned[0]
    eq((exc.reply_code, exc.reply_text, exchange, routing_key), (312, "NO_ROUTE", "amq.direct", key),
       "basic.return")
    eq((message.body, message.properties["message_id"], message.headers),
       (b"come back", "ret-1", {"h": "v"}), "returned content")
    conn.release()


@scenario("bodies")
def bodies():
    conn = connect()
    ch = conn.channel()
    producer = Producer(ch)
    q = Queue(name("q"), exclusive=True, channel=ch)
    q.declare()
    for b in BODIES:
        publish(producer, b, q.name)
    got = []
    # py-amqp reads an empty body as "" (a str).
    consumer = Consumer(ch, [q], on_message=lambda m: got.append(m.body or b""), no_ack=True)
    consumer.consume()
    wait_until(lambda: len(got) == len(BODIES), 10, "all bodies", step=lambda: drain(conn, 0.05))
    eq([digest(b) for b in got], [digest(b) for b in BODIES], "bodies")
    conn.release()


@scenario("properties")
def properties():
    conn = connect()
    ch = conn.channel()
    producer = Producer(ch)
    q = Queue(name("q"), exclusive=True, channel=ch)
    q.declare()
    sent = dict(
        delivery_mode=2, priority=5, correlation_id="corr-1", reply_to="reply-queue",
        message_id="msg-1", timestamp=1700000000, type="kind", user_id="guest", app_id="interop",
    )
    # kombu takes the expiration in seconds.
    producer.publish(b"{}", routing_key=q.name, serializer=None, headers=HEADERS,
                     content_type="application/json", content_encoding="utf-8", expiration=60,
                     **sent)
    m = get_one(q)
    # py-amqp decodes a body whose content_encoding is utf-8.
    eq((m.body, m.content_type, m.content_encoding), ("{}", "application/json", "utf-8"), "body")
    eq(m.properties.get("expiration"), "60000", "property expiration")
    for k, v in sent.items():
        eq(m.properties.get(k), v, "property %s" % k)
    eq(set(m.headers), set(HEADERS), "header names")
    for k, v in HEADERS.items():
        eq(m.headers[k], v, "header %s" % k)
    conn.release()


@scenario("channel-errors")
def channel_errors():
    conn = connect()
    ch = conn.channel()
    missing = Queue(name("missing"), channel=ch)
    channel_error(lambda: missing.queue_declare(passive=True), aex.NotFound, 404,
                  not_found_queue(missing.name), "passive declare of a missing queue")
    ch = conn.channel()
    q = Queue(name("q"), durable=False, auto_delete=True, channel=ch)
    q.declare()
    again = Queue(q.name, durable=True, auto_delete=True, channel=ch)
    channel_error(lambda: again.queue_declare(), aex.PreconditionFailed, 406,
                  inequivalent_durable(q.name), "redeclare with another durable flag")
    ch = conn.channel()
    producer = Producer(ch)
    nox = name("no-exchange")

    def publish_to_missing():
        publish(producer, b"lost", "k", nox)
        q(ch).queue_declare(passive=True)

    channel_error(publish_to_missing, aex.NotFound, 404, not_found_exchange(nox),
                  "publish to a missing exchange")
    ch = conn.channel()
    publish(Producer(ch), b"still works", q.name)
    eq(get_one(q(ch)).body, b"still works", "a new channel works after the errors")
    q(ch).delete()
    conn.release()


@scenario("consumer-cancel")
def consumer_cancel():
    conn = connect()
    ch = conn.channel()
    producer = Producer(ch)
    q = Queue(name("q"), channel=ch)
    q.declare()
    got = []
    consumer = Consumer(ch, [q], on_message=got.append, no_ack=True)
    consumer.consume()
    tag = consumer._active_tags[q.name]
    publish(producer, b"before", q.name)
    wait_until(lambda: got, 5, "a delivery", step=lambda: drain(conn, 0.05))
    # py-amqp raises ConsumerCancelled while it waits for anything (here the delete-ok) once
    # the broker's basic.cancel arrives, when no cancel callback is set.
    try:
        conn.channel().queue_delete(q.name)
        drain(conn, 5)
        raise AssertionError("no basic.cancel from the broker")
    except aex.ConsumerCancelled as e:
        eq(e.reply_text, tag, "cancelled consumer tag")
    conn.release()


@scenario("recovery")
def recovery():
    conn = Connection(
        URL, transport_options={"client_properties": {"connection_name": name("recovery")}}
    )
    conn.connect()
    q = Queue(name("q"), auto_delete=False, durable=False)
    producer = Producer(conn)
    q(conn.default_channel).declare()
    publish(producer, b"before", q.name)
    m = get_one(q(conn.default_channel))
    eq(m.body, b"before", "before the restart")
    m.ack()
    errors = []
    request_restart()
    # kombu's documented way to survive a lost connection: ensure() retries the operation,
    # reconnecting (and redeclaring the queue) in between.
    safe_publish = conn.ensure(
        producer, lambda *a, **kw: (q(producer.channel).declare(), publish(producer, *a, **kw)),
        errback=lambda exc, interval: errors.append(exc), max_retries=40,
        interval_start=0.2, interval_step=0.2, interval_max=0.5,
    )
    # The first attempt may still see the connection as open: drain it to see the close.
    try:
        drain(conn, 2)
    except aex.ConnectionForced as e:
        errors.append(e)
    except (OSError, aex.RecoverableConnectionError) as e:
        errors.append(e)
    safe_publish(b"after", q.name)
    m = get_one(q(producer.channel))
    eq(m.body, b"after", "after the restart")
    m.ack()
    q(producer.channel).delete()
    conn.release()
    forced = [e for e in errors if isinstance(e, aex.ConnectionForced)]
    check(forced, "the restart was reported as ConnectionForced: %r" % errors)
    eq((forced[0].reply_code, forced[0].reply_text), (320, SHUTDOWN_TEXT),
       "connection.close at the restart")


if __name__ == "__main__":
    main("kombu")
