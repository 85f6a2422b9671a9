"""Interop scenarios for aio-pika (asyncio, on aiormq), including connect_robust recovery."""

import asyncio
import sys

import aio_pika
import aiormq.exceptions as aex
from aio_pika import ExchangeType, Message

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
)


# pamqp encodes a byte array from a bytearray (it refuses bytes).
HEADERS = {k: bytearray(v) if isinstance(v, bytes) else v for k, v in HEADERS_ALL_TYPES.items()}


def run(coro_fn):
    """Registers an async scenario as a plain function for common.main."""

    def sync():
        asyncio.run(asyncio.wait_for(coro_fn(), 50))

    sync.__name__ = coro_fn.__name__
    return sync


async def connect(**kw):
    return await aio_pika.connect(URL, **kw)


async def sentinel_drain(ch, q):
    """Publishes a sentinel to q and returns the bodies that were ahead of it."""
    await ch.default_exchange.publish(Message(b"sentinel"), q.name)
    got = []
    for _ in range(500):
        m = await q.get(no_ack=True, fail=False)
        if m is None:
            await asyncio.sleep(0.01)
            continue
        if m.body == b"sentinel":
            return got
        got.append(m.body)
    raise AssertionError("sentinel never reached %s" % q.name)


async def get_one(q):
    for _ in range(500):
        m = await q.get(no_ack=False, fail=False)
        if m is not None:
            return m
        await asyncio.sleep(0.01)
    raise AssertionError("no message in %s" % q.name)


async def message_count(ch, qname):
    q = await ch.declare_queue(qname, passive=True)
    return q.declaration_result.message_count


async def closed_with(coro, exc_type, text, what):
    try:
        await coro
    except exc_type as e:
        eq(e.args[0] if e.args else None, text, what)
        return
    raise AssertionError("%s: the broker did not close the channel" % what)


@scenario("connect-heartbeat")
@run
async def connect_heartbeat():
    conn = await aio_pika.connect(URL + "?heartbeat=1")
    eq(conn.transport.connection.connection_tune.heartbeat, 1, "negotiated heartbeat")
    # aiormq drops a connection that hears nothing for 3 heartbeat intervals; the broker one
    # that hears nothing for 2: idle past both.
    await asyncio.sleep(4)
    check(not conn.is_closed, "connection open after idling")
    ch = await conn.channel()
    q = await ch.declare_queue(exclusive=True)
    check(q.name.startswith("amq.gen-"), "server-named queue %r" % q.name)
    await conn.close()
    check(conn.is_closed, "connection closed")


@scenario("exchanges")
@run
async def exchanges():
    conn = await connect()
    ch = await conn.channel()
    q = await ch.declare_queue(name("q"), exclusive=True)
    for kind, key, rk, args, headers in [
        (ExchangeType.DIRECT, "k1", "k1", None, None),
        (ExchangeType.FANOUT, "ignored", "other", None, None),
        (ExchangeType.TOPIC, "k.*", "k.1", None, None),
        (ExchangeType.HEADERS, "", "", {"x-match": "all", "h": "v"}, {"h": "v"}),
    ]:
        x_name = name("x", kind.value)
        x = await ch.declare_exchange(x_name, kind)
        await ch.get_exchange(x_name, ensure=True)
        await q.bind(x, key, arguments=args)
        await x.publish(Message(b"bound-" + kind.value.encode(), headers=headers), rk)
        eq(await sentinel_drain(ch, q), [b"bound-" + kind.value.encode()], "%s: routed" % kind)
        await q.unbind(x, key, arguments=args)
        await x.publish(Message(b"unbound", headers=headers), rk)
        eq(await sentinel_drain(ch, q), [], "%s: routed after unbind" % kind)
        await x.delete()
        await closed_with(ch.get_exchange(x_name, ensure=True), aex.ChannelNotFoundEntity,
                          not_found_exchange(x_name), "passive declare after delete")
        ch = await conn.channel()
        q = await ch.declare_queue(name("q"), exclusive=True)
    src = await ch.declare_exchange(name("x", "src"), ExchangeType.DIRECT)
    dst = await ch.declare_exchange(name("x", "dst"), ExchangeType.FANOUT)
    await q.bind(dst)
    await dst.bind(src, "e2e")
    await src.publish(Message(b"via-e2e"), "e2e")
    await src.publish(Message(b"not-routed"), "other")
    eq(await sentinel_drain(ch, q), [b"via-e2e"], "exchange-to-exchange routing")
    await dst.unbind(src, "e2e")
    await src.publish(Message(b"after-unbind"), "e2e")
    eq(await sentinel_drain(ch, q), [], "after exchange.unbind")
    await src.delete()
    await dst.delete()
    await ch.get_exchange("amq.fanout", ensure=True)
    await conn.close()


@scenario("topic-routing")
@run
async def topic_routing():
    conn = await connect()
    ch = await conn.channel()
    x = await ch.declare_exchange(name("topic"), ExchangeType.TOPIC, auto_delete=True)
    queues = {}
    for binding in TOPIC_BINDINGS:
        # pamqp refuses "*" and "#" in queue names.
        q = await ch.declare_queue(name("t", str(len(queues))), exclusive=True)
        await q.bind(x, binding)
        queues[binding] = q
    for key in TOPIC_KEYS:
        await x.publish(Message(key.encode()), key)
    for binding, q in queues.items():
        got = [b.decode() for b in await sentinel_drain(ch, q)]
        eq(got, TOPIC_BINDINGS[binding], "messages matching %r" % binding)
    await conn.close()


@scenario("headers-routing")
@run
async def headers_routing():
    conn = await connect()
    ch = await conn.channel()
    x = await ch.declare_exchange(name("headers"), ExchangeType.HEADERS, auto_delete=True)
    q_all = await ch.declare_queue(name("all"), exclusive=True)
    q_any = await ch.declare_queue(name("any"), exclusive=True)
    await q_all.bind(x, arguments=dict(HEADERS_BINDING, **{"x-match": "all"}))
    await q_any.bind(x, arguments=dict(HEADERS_BINDING, **{"x-match": "any"}))
    want_all, want_any = [], []
    for i, (headers, to_all, to_any) in enumerate(HEADERS_CASES):
        body = b"m%d" % i
        await x.publish(Message(body, headers=headers), "")
        if to_all:
            want_all.append(body)
        if to_any:
            want_any.append(body)
    eq(await sentinel_drain(ch, q_all), want_all, "x-match=all")
    eq(await sentinel_drain(ch, q_any), want_any, "x-match=any")
    await conn.close()


@scenario("ack-nack-reject")
@run
async def ack_nack_reject():
    conn = await connect()
    ch = await conn.channel()
    q = await ch.declare_queue(name("q"), exclusive=True)
    for b in [b"m1", b"m2", b"m3", b"m4"]:
        await ch.default_exchange.publish(Message(b), q.name)
    await ch.set_qos(prefetch_count=1)
    deliveries = asyncio.Queue()
    tag = await q.consume(deliveries.put)

    async def nxt(what):
        try:
            return await asyncio.wait_for(deliveries.get(), 5)
        except asyncio.TimeoutError:
            raise AssertionError("%s: no delivery within 5s" % what) from None

    m = await nxt("m1")
    eq(m.body, b"m1", "first delivery")
    await m.ack()
    m = await nxt("m2")
    eq((m.body, m.redelivered), (b"m2", False), "second delivery")
    await m.nack(requeue=True)
    m = await nxt("m2 again")
    eq((m.body, m.redelivered), (b"m2", True), "nacked message redelivered")
    await m.ack()
    m = await nxt("m3")
    eq(m.body, b"m3", "after the requeued one")
    await m.reject(requeue=False)
    m = await nxt("m4")
    eq((m.body, m.redelivered), (b"m4", False), "rejected message dropped")
    await m.reject(requeue=True)
    m = await nxt("m4 again")
    eq((m.body, m.redelivered), (b"m4", True), "reject with requeue redelivers")
    await m.ack()
    await q.cancel(tag)
    await ch.default_exchange.publish(Message(b"m5"), q.name)
    await ch.default_exchange.publish(Message(b"m6"), q.name)
    await get_one(q)
    m6 = await get_one(q)
    eq(m6.body, b"m6", "last message")
    await m6.nack(multiple=True, requeue=False)
    eq(await message_count(ch, q.name), 0, "queue empty at the end")
    await conn.close()


@scenario("basic-get")
@run
async def basic_get():
    conn = await connect()
    ch = await conn.channel()
    q = await ch.declare_queue(name("q"), exclusive=True)
    check(await q.get(fail=False) is None, "basic.get on an empty queue answers get-empty")
    for b in [b"g1", b"g2", b"g3"]:
        await ch.default_exchange.publish(Message(b), q.name)
    m = await get_one(q)
    eq((m.body, m.message_count, m.redelivered, m.routing_key, m.exchange),
       (b"g1", 2, False, q.name, ""), "first get")
    await m.ack()
    m = await q.get(no_ack=True)
    eq((m.body, m.message_count), (b"g2", 1), "no-ack get")
    m = await get_one(q)
    eq(m.body, b"g3", "third get")
    await m.reject(requeue=True)
    m = await get_one(q)
    eq((m.body, m.redelivered, m.message_count), (b"g3", True, 0), "get after requeue")
    await m.ack()
    check(await q.get(fail=False) is None, "queue empty at the end")
    await conn.close()


@scenario("prefetch")
@run
async def prefetch():
    conn = await connect()
    ch = await conn.channel()
    q = await ch.declare_queue(name("q"), exclusive=True)
    for i in range(5):
        await ch.default_exchange.publish(Message(b"p%d" % i), q.name)
    await ch.set_qos(prefetch_count=2)
    got = []
    await q.consume(got.append)
    async def settle(n):
        """Waits for n deliveries, then a moment more for any that should not come."""
        for _ in range(250):
            if len(got) >= n:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)

    await settle(2)
    eq([m.body for m in got], [b"p0", b"p1"], "deliveries with prefetch 2 and nothing acked")
    await got[0].ack()
    await settle(3)
    eq([m.body for m in got], [b"p0", b"p1", b"p2"], "one more after one ack")
    await got[2].ack(multiple=True)
    await settle(5)
    eq([m.body for m in got], [b"p%d" % i for i in range(5)], "the rest after a multiple ack")
    await got[4].ack(multiple=True)
    await conn.close()


@scenario("publisher-confirms")
@run
async def publisher_confirms():
    conn = await connect()
    ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
    q = await ch.declare_queue(name("q"), exclusive=True)
    results = await asyncio.gather(
        *[ch.default_exchange.publish(Message(b"c%d" % i), q.name) for i in range(50)]
    )
    check(all(r.__class__.__name__ == "Ack" for r in results), "every publish acked: %r" % results)
    eq(await message_count(ch, q.name), 50, "confirmed messages queued")
    amq_direct = await ch.get_exchange("amq.direct")
    try:
        await amq_direct.publish(Message(b"r"), name("nowhere"), mandatory=True)
        raise AssertionError("no basic.return for an unroutable mandatory publish")
    except aio_pika.exceptions.DeliveryError as e:
        eq(e.frame.__class__.__name__, "Return", "returned")
        eq(e.frame.reply_code, 312, "return reply code")
    full = await ch.declare_queue(
        name("full"), exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    await ch.default_exchange.publish(Message(b"fits"), full.name)
    try:
        await ch.default_exchange.publish(Message(b"overflows"), full.name)
        raise AssertionError("no basic.nack for a publish the queue rejected")
    except aio_pika.exceptions.DeliveryError as e:
        eq(e.frame.__class__.__name__, "Nack", "nacked")
    eq(await message_count(ch, full.name), 1, "the full queue kept one")
    await conn.close()


@scenario("mandatory-return")
@run
async def mandatory_return():
    conn = await connect()
    # aiormq hands a basic.return to callbacks only on a channel in confirm mode.
    ch = await conn.channel(publisher_confirms=True, on_return_raises=False)
    returned = []
    ch.return_callbacks.add(lambda *args: returned.append(args[-1]))
    key = name("unroutable")
    amq_direct = await ch.get_exchange("amq.direct")
    await amq_direct.publish(
        Message(b"come back", message_id="ret-1", headers={"h": "v"}), key, mandatory=True
    )
    q = await ch.declare_queue(name("q"), exclusive=True)
    await ch.default_exchange.publish(Message(b"routed"), q.name, mandatory=True)
    for _ in range(250):
        if returned:
            break
        await asyncio.sleep(0.02)
    await amq_direct.publish(Message(b"dropped"), key, mandatory=False)  # aio-pika defaults to True
    eq(await sentinel_drain(ch, q), [b"routed"], "routed mandatory message")
    await asyncio.sleep(0.3)
    eq([m.body for m in returned], [b"come back"], "only the unroutable message comes back")
    m = returned[0]
    eq((m.body, m.message_id, m.headers, m.exchange, m.routing_key),
       (b"come back", "ret-1", {"h": "v"}, "amq.direct", key), "returned message")
    await conn.close()


@scenario("transactions")
@run
async def transactions():
    conn = await connect()
    ch = await conn.channel(publisher_confirms=False)
    q = await ch.declare_queue(name("q"), exclusive=True)
    tx = ch.transaction()
    await tx.select()
    await ch.default_exchange.publish(Message(b"rolled-back"), q.name)
    eq(await message_count(ch, q.name), 0, "uncommitted publish invisible")
    await tx.rollback()
    eq(await message_count(ch, q.name), 0, "after rollback")
    await ch.default_exchange.publish(Message(b"committed"), q.name)
    await tx.commit()
    m = await get_one(q)
    eq(m.body, b"committed", "body")
    await m.ack()
    await tx.rollback()
    await (await ch.get_underlay_channel()).basic_recover(requeue=True)
    m = await get_one(q)
    eq((m.body, m.redelivered), (b"committed", True), "back after the rolled-back ack")
    await m.ack()
    await tx.commit()
    check(await q.get(fail=False) is None, "queue empty after the committed ack")
    await conn.close()


@scenario("bodies")
@run
async def bodies():
    conn = await connect()
    ch = await conn.channel()
    q = await ch.declare_queue(name("q"), exclusive=True)
    for b in BODIES:
        await ch.default_exchange.publish(Message(b), q.name)
    got = []
    async with q.iterator(no_ack=True) as it:
        async for m in it:
            got.append(m.body)
            if len(got) == len(BODIES):
                break
    eq([digest(b) for b in got], [digest(b) for b in BODIES], "bodies")
    await conn.close()


@scenario("properties")
@run
async def properties():
    conn = await connect()
    ch = await conn.channel()
    q = await ch.declare_queue(name("q"), exclusive=True)
    import datetime

    sent = dict(
        content_type="application/json",
        content_encoding="utf-8",
        headers=HEADERS,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=5,
        correlation_id="corr-1",
        reply_to="reply-queue",
        expiration=60,
        message_id="msg-1",
        timestamp=datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=datetime.timezone.utc),
        type="kind",
        user_id="guest",
        app_id="interop",
    )
    await ch.default_exchange.publish(Message(b"{}", **sent), q.name)
    m = await get_one(q)
    eq(m.body, b"{}", "body")
    got = dict(
        content_type=m.content_type, content_encoding=m.content_encoding, headers=m.headers,
        delivery_mode=m.delivery_mode, priority=m.priority, correlation_id=m.correlation_id,
        reply_to=m.reply_to, expiration=m.expiration, message_id=m.message_id,
        timestamp=m.timestamp, type=m.type, user_id=m.user_id, app_id=m.app_id,
    )
    for k in sent:
        if k == "headers":
            continue
        eq(got[k], sent[k], "property %s" % k)
    eq(set(m.headers), set(HEADERS), "header names")
    for k, v in HEADERS.items():
        eq(m.headers[k], v, "header %s" % k)
    await ch.default_exchange.publish(Message(b"bare"), q.name)
    m = await get_one(q)
    eq((m.headers, m.content_type), ({}, None), "empty properties")
    await conn.close()


@scenario("channel-errors")
@run
async def channel_errors():
    conn = await connect()
    ch = await conn.channel()
    missing = name("missing")
    await closed_with(ch.declare_queue(missing, passive=True), aex.ChannelNotFoundEntity,
                      not_found_queue(missing), "passive declare of a missing queue")
    check(ch.is_closed, "channel closed after 404")
    ch = await conn.channel()
    q = await ch.declare_queue(name("q"), durable=False, auto_delete=True)
    await closed_with(ch.declare_queue(q.name, durable=True, auto_delete=True),
                      aex.ChannelPreconditionFailed, inequivalent_durable(q.name),
                      "redeclare with another durable flag")
    ch = await conn.channel(publisher_confirms=False)
    nox = name("no-exchange")
    x = await ch.get_exchange(nox, ensure=False)
    await x.publish(Message(b"lost"), "k")
    await closed_with(ch.declare_queue(q.name, passive=True), aex.ChannelNotFoundEntity,
                      not_found_exchange(nox), "publish to a missing exchange")
    ch = await conn.channel()
    await ch.default_exchange.publish(Message(b"still works"), q.name)
    q = await ch.declare_queue(q.name, passive=True)
    eq((await get_one(q)).body, b"still works", "a new channel works after the errors")
    check(not conn.is_closed, "connection survives channel errors")
    await q.delete()
    await conn.close()


@scenario("consumer-cancel")
@run
async def consumer_cancel():
    conn = await connect()
    ch = await conn.channel()
    q = await ch.declare_queue(name("q"))
    cancelled = asyncio.get_running_loop().create_future()
    underlay = await ch.get_underlay_channel()
    underlay.on_consumer_cancel_callbacks.add(
        lambda frame: cancelled.done() or cancelled.set_result(frame.consumer_tag)
    )
    got = asyncio.Queue()
    tag = await q.consume(got.put, no_ack=True)
    await ch.default_exchange.publish(Message(b"before"), q.name)
    eq((await asyncio.wait_for(got.get(), 5)).body, b"before", "delivery")
    other = await conn.channel()
    await other.queue_delete(q.name)
    eq(await asyncio.wait_for(cancelled, 5), tag, "basic.cancel from the broker")
    q2 = await ch.declare_queue(name("q2"), exclusive=True)
    tag2 = await q2.consume(got.put, no_ack=True)
    await q2.cancel(tag2)
    await ch.default_exchange.publish(Message(b"after-cancel"), q2.name)
    for _ in range(250):
        if await message_count(ch, q2.name) == 1:
            break
        await asyncio.sleep(0.02)
    eq(got.qsize(), 0, "no delivery after basic.cancel")
    eq(await message_count(ch, q2.name), 1, "message stays queued")
    await conn.close()


@scenario("recovery")
@run
async def recovery():
    conn = await aio_pika.connect_robust(
        URL, client_properties={"connection_name": name("recovery")}, reconnect_interval=0.3
    )
    closes, reconnected = [], asyncio.Event()
    conn.close_callbacks.add(lambda _c, exc: closes.append(exc))
    conn.reconnect_callbacks.add(lambda _c: reconnected.set())
    ch = await conn.channel()
    q = await ch.declare_queue(name("q"), auto_delete=True)
    got = asyncio.Queue()
    await q.consume(got.put, no_ack=True)
    await ch.default_exchange.publish(Message(b"before"), q.name)
    eq((await asyncio.wait_for(got.get(), 5)).body, b"before", "before the restart")
    await asyncio.get_running_loop().run_in_executor(None, request_restart)
    await asyncio.wait_for(reconnected.wait(), 20)
    check(closes, "the close was reported")
    # connect_robust redeclared the queue and its consumer.
    await ch.default_exchange.publish(Message(b"after"), q.name)
    eq((await asyncio.wait_for(got.get(), 5)).body, b"after", "the recovered consumer")
    await conn.close()
    # Checked last, so that a wrong text does not hide whether recovery works.
    eq(closes[0].args[:2], (320, SHUTDOWN_TEXT), "connection.close at the restart")


if __name__ == "__main__":
    sys.exit(main("aio-pika"))
