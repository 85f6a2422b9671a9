"""Interop scenarios for pika's SelectConnection (asynchronous, callback-based).

Each scenario is a generator run on the connection's ioloop: it yields an operation (a
function that starts a pika call and takes the callback pika will call), and is resumed with
what pika passed to that callback. So the scenarios read top to bottom while every broker
interaction goes through SelectConnection's callbacks.
"""

import time

import pika
from pika import spec

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
)

HEADERS = {k: v for k, v in HEADERS_ALL_TYPES.items() if k != "double"}  # pika has no float
TIMEOUT = 45


class Failed(Exception):
    pass


def drive(gen_fn, **param_overrides):
    """Runs gen_fn(conn) as a scenario on a new SelectConnection; raises what it raised."""
    params = pika.URLParameters(URL)
    for k, v in param_overrides.items():
        setattr(params, k, v)
    outcome = {}

    def finish(conn, error=None):
        if "done" in outcome:
            return
        outcome["done"] = True
        if error is not None:
            outcome["error"] = error
        if conn.is_open:
            conn.close()
        elif not conn.is_closing:
            conn.ioloop.stop()

    def on_open(conn):
        gen = gen_fn(conn)

        def step(value=None, exc=None):
            if "done" in outcome:
                return
            try:
                op = gen.throw(exc) if exc is not None else gen.send(value)
            except StopIteration:
                finish(conn)
                return
            except BaseException as e:  # noqa: B036 - the scenario's failure
                finish(conn, e)
                return
            fired = []

            def callback(*args):
                if fired:
                    return
                fired.append(True)
                v = args[0] if len(args) == 1 else args
                conn.ioloop.add_callback_threadsafe(lambda: step(v))

            try:
                op(callback)
            except BaseException as e:  # noqa: B036 - delivered to the scenario
                conn.ioloop.add_callback_threadsafe(lambda err=e: step(exc=err))

        conn.ioloop.call_later(TIMEOUT, lambda: finish(conn, Failed("scenario timed out")))
        step()

    def on_open_error(conn, err):
        outcome.setdefault("error", err)
        conn.ioloop.stop()

    def on_close(conn, reason):
        if "done" not in outcome:
            outcome["done"] = True
            outcome["error"] = reason
        conn.ioloop.stop()

    conn = pika.SelectConnection(
        params, on_open_callback=on_open, on_open_error_callback=on_open_error,
        on_close_callback=on_close,
    )
    conn.ioloop.start()
    if "error" in outcome:
        raise outcome["error"]


# Operations a scenario yields.
def channel(conn):
    return lambda cb: conn.channel(on_open_callback=cb)


def sleep(conn, seconds):
    return lambda cb: conn.ioloop.call_later(seconds, cb)


def rpc(fn, **kw):
    """A pika call that takes `callback=`: resumes with the reply frame."""
    return lambda cb: fn(callback=cb, **kw)


def get(ch, q, auto_ack=False):
    """basic.get: resumes with (method, properties, body), or None for get-empty."""

    def op(cb):
        ch.add_callback(lambda _frame: cb(None), [spec.Basic.GetEmpty], one_shot=True)
        ch.basic_get(q, lambda _c, m, p, b: cb((m, p, b)), auto_ack=auto_ack)

    return op


def closed(ch, start):
    """Calls start(), which must make the broker close ch: resumes with (code, text)."""

    def op(cb):
        ch.add_on_close_callback(lambda _c, reason: cb((reason.reply_code, reason.reply_text)))
        start()

    return op


def message_count(ch, q):
    return lambda cb: ch.queue_declare(q, passive=True,
                                       callback=lambda f: cb(f.method.message_count))


def sentinel_drain(conn, ch, q):
    """Sub-scenario: publishes a sentinel to q and returns the bodies ahead of it."""
    ch.basic_publish("", q, b"sentinel")
    got = []
    for _ in range(500):
        r = yield get(ch, q, auto_ack=True)
        if r is None:
            yield sleep(conn, 0.01)
            continue
        if r[2] == b"sentinel":
            return got
        got.append(r[2])
    raise AssertionError("sentinel never reached %s" % q)


def get_one(conn, ch, q):
    for _ in range(500):
        r = yield get(ch, q)
        if r is not None:
            return r
        yield sleep(conn, 0.01)
    raise AssertionError("no message in %s" % q)


class Deliveries:
    """Collects a consumer's deliveries; next() is an operation resuming with the next one."""

    def __init__(self):
        self.items, self.waiter = [], None

    def __call__(self, _ch, method, props, body):
        if self.waiter is not None:
            w, self.waiter = self.waiter, None
            w((method, props, body))
        else:
            self.items.append((method, props, body))

    def next(self, conn, what):
        def op(cb):
            if self.items:
                cb(self.items.pop(0))
                return
            self.waiter = cb
            conn.ioloop.call_later(5, lambda: cb(Failed("%s: no delivery within 5s" % what)))

        return op

    def take(self, conn, what):
        r = yield self.next(conn, what)
        if isinstance(r, Failed):
            raise r
        return r


@scenario("connect-heartbeat")
def connect_heartbeat():
    def run(conn):
        eq(conn._heartbeat_checker._timeout, 1, "negotiated heartbeat")
        yield sleep(conn, 3.5)
        received = conn._heartbeat_checker._heartbeat_frames_received
        check(received >= 2, "broker sent %d heartbeats in 3.5s at a 1s interval" % received)
        ch = yield channel(conn)
        f = yield rpc(ch.queue_declare, queue="", exclusive=True)
        check(f.method.queue.startswith("amq.gen-"), "server-named queue %r" % f.method.queue)

    drive(run, heartbeat=1)


@scenario("exchanges")
def exchanges():
    def run(conn):
        ch = yield channel(conn)
        q = name("q")
        yield rpc(ch.queue_declare, queue=q, exclusive=True)
        for kind, key, rk, args, headers in [
            ("direct", "k1", "k1", None, None),
            ("fanout", "ignored", "other", None, None),
            ("topic", "k.*", "k.1", None, None),
            ("headers", "", "", {"x-match": "all", "h": "v"}, {"h": "v"}),
        ]:
            x = name("x", kind)
            yield rpc(ch.exchange_declare, exchange=x, exchange_type=kind)
            yield rpc(ch.exchange_declare, exchange=x, passive=True)
            yield rpc(ch.queue_bind, queue=q, exchange=x, routing_key=key, arguments=args)
            ch.basic_publish(x, rk, b"bound-" + kind.encode(), pika.BasicProperties(headers=headers))
            eq((yield from sentinel_drain(conn, ch, q)), [b"bound-" + kind.encode()], kind)
            yield rpc(ch.queue_unbind, queue=q, exchange=x, routing_key=key, arguments=args)
            ch.basic_publish(x, rk, b"unbound", pika.BasicProperties(headers=headers))
            eq((yield from sentinel_drain(conn, ch, q)), [], "%s: after unbind" % kind)
            yield rpc(ch.exchange_delete, exchange=x)
            err = yield closed(ch, lambda: ch.exchange_declare(x, passive=True))
            eq(err, (404, not_found_exchange(x)), "passive declare after delete")
            ch = yield channel(conn)
        src, dst = name("x", "src"), name("x", "dst")
        yield rpc(ch.exchange_declare, exchange=src, exchange_type="direct")
        yield rpc(ch.exchange_declare, exchange=dst, exchange_type="fanout")
        yield rpc(ch.queue_bind, queue=q, exchange=dst)
        yield rpc(ch.exchange_bind, destination=dst, source=src, routing_key="e2e")
        ch.basic_publish(src, "e2e", b"via-e2e")
        ch.basic_publish(src, "other", b"not-routed")
        eq((yield from sentinel_drain(conn, ch, q)), [b"via-e2e"], "exchange-to-exchange")
        yield rpc(ch.exchange_unbind, destination=dst, source=src, routing_key="e2e")
        ch.basic_publish(src, "e2e", b"after-unbind")
        eq((yield from sentinel_drain(conn, ch, q)), [], "after exchange.unbind")
        yield rpc(ch.exchange_delete, exchange=src)
        yield rpc(ch.exchange_delete, exchange=dst)

    drive(run)


@scenario("topic-routing")
def topic_routing():
    def run(conn):
        ch = yield channel(conn)
        x = name("topic")
        yield rpc(ch.exchange_declare, exchange=x, exchange_type="topic", auto_delete=True)
        for binding in TOPIC_BINDINGS:
            yield rpc(ch.queue_declare, queue=name("t", binding), exclusive=True)
            yield rpc(ch.queue_bind, queue=name("t", binding), exchange=x, routing_key=binding)
        for key in TOPIC_KEYS:
            ch.basic_publish(x, key, key.encode())
        for binding, want in TOPIC_BINDINGS.items():
            got = yield from sentinel_drain(conn, ch, name("t", binding))
            eq([b.decode() for b in got], want, "messages matching %r" % binding)

    drive(run)


@scenario("headers-routing")
def headers_routing():
    def run(conn):
        ch = yield channel(conn)
        x = name("headers")
        yield rpc(ch.exchange_declare, exchange=x, exchange_type="headers", auto_delete=True)
        q_all, q_any = name("all"), name("any")
        for q, match in [(q_all, "all"), (q_any, "any")]:
            yield rpc(ch.queue_declare, queue=q, exclusive=True)
            yield rpc(ch.queue_bind, queue=q, exchange=x,
                      arguments=dict(HEADERS_BINDING, **{"x-match": match}))
        want_all, want_any = [], []
        for i, (headers, to_all, to_any) in enumerate(HEADERS_CASES):
            body = b"m%d" % i
            ch.basic_publish(x, "", body, pika.BasicProperties(headers=headers))
            if to_all:
                want_all.append(body)
            if to_any:
                want_any.append(body)
        eq((yield from sentinel_drain(conn, ch, q_all)), want_all, "x-match=all")
        eq((yield from sentinel_drain(conn, ch, q_any)), want_any, "x-match=any")

    drive(run)


@scenario("ack-nack-reject")
def ack_nack_reject():
    def run(conn):
        ch = yield channel(conn)
        q = name("q")
        yield rpc(ch.queue_declare, queue=q, exclusive=True)
        for b in [b"m1", b"m2", b"m3", b"m4"]:
            ch.basic_publish("", q, b)
        yield rpc(ch.basic_qos, prefetch_count=1)
        d = Deliveries()
        tag = ch.basic_consume(q, d, auto_ack=False)
        m, _, body = yield from d.take(conn, "m1")
        eq(body, b"m1", "first delivery")
        ch.basic_ack(m.delivery_tag)
        m, _, body = yield from d.take(conn, "m2")
        eq((body, m.redelivered), (b"m2", False), "second delivery")
        ch.basic_nack(m.delivery_tag, requeue=True)
        m, _, body = yield from d.take(conn, "m2 again")
        eq((body, m.redelivered), (b"m2", True), "nacked message redelivered")
        ch.basic_ack(m.delivery_tag)
        m, _, body = yield from d.take(conn, "m3")
        eq(body, b"m3", "after the requeued one")
        ch.basic_reject(m.delivery_tag, requeue=False)
        m, _, body = yield from d.take(conn, "m4")
        eq((body, m.redelivered), (b"m4", False), "rejected message dropped")
        ch.basic_reject(m.delivery_tag, requeue=True)
        m, _, body = yield from d.take(conn, "m4 again")
        eq((body, m.redelivered), (b"m4", True), "reject with requeue redelivers")
        ch.basic_ack(m.delivery_tag)
        yield lambda cb: ch.basic_cancel(tag, callback=cb)
        ch.basic_publish("", q, b"m5")
        ch.basic_publish("", q, b"m6")
        yield from get_one(conn, ch, q)
        m6, _, b6 = yield from get_one(conn, ch, q)
        eq(b6, b"m6", "last message")
        ch.basic_nack(m6.delivery_tag, multiple=True, requeue=False)
        eq((yield message_count(ch, q)), 0, "queue empty at the end")

    drive(run)


@scenario("basic-get")
def basic_get():
    def run(conn):
        ch = yield channel(conn)
        q = name("q")
        yield rpc(ch.queue_declare, queue=q, exclusive=True)
        check((yield get(ch, q)) is None, "basic.get on an empty queue answers get-empty")
        for b in [b"g1", b"g2", b"g3"]:
            ch.basic_publish("", q, b)
        for _ in range(500):
            if (yield message_count(ch, q)) == 3:
                break
            yield sleep(conn, 0.01)
        m, _, body = yield from get_one(conn, ch, q)
        eq((body, m.message_count, m.redelivered, m.routing_key, m.exchange),
           (b"g1", 2, False, q, ""), "first get")
        ch.basic_ack(m.delivery_tag)
        m, _, body = yield get(ch, q, auto_ack=True)
        eq((body, m.message_count), (b"g2", 1), "no-ack get")
        m, _, body = yield from get_one(conn, ch, q)
        eq(body, b"g3", "third get")
        ch.basic_reject(m.delivery_tag, requeue=True)
        m, _, body = yield from get_one(conn, ch, q)
        eq((body, m.redelivered, m.message_count), (b"g3", True, 0), "get after requeue")
        ch.basic_ack(m.delivery_tag)
        check((yield get(ch, q)) is None, "queue empty at the end")

    drive(run)


@scenario("prefetch")
def prefetch():
    def run(conn):
        ch = yield channel(conn)
        q = name("q")
        yield rpc(ch.queue_declare, queue=q, exclusive=True)
        for i in range(5):
            ch.basic_publish("", q, b"p%d" % i)
        yield rpc(ch.basic_qos, prefetch_count=2)
        got = []
        ch.basic_consume(q, lambda c, m, p, b: got.append((m.delivery_tag, b)))
        def settle(n):
            """Waits for n deliveries, then a moment more for any that should not come."""
            for _ in range(250):
                if len(got) >= n:
                    break
                yield sleep(conn, 0.02)
            yield sleep(conn, 0.5)

        yield from settle(2)
        eq([b for _, b in got], [b"p0", b"p1"], "deliveries with prefetch 2 and nothing acked")
        ch.basic_ack(got[0][0])
        yield from settle(3)
        eq([b for _, b in got], [b"p0", b"p1", b"p2"], "one more after one ack")
        ch.basic_ack(got[2][0], multiple=True)
        yield from settle(5)
        eq([b for _, b in got], [b"p%d" % i for i in range(5)], "the rest after a multiple ack")
        ch.basic_ack(got[4][0], multiple=True)

    drive(run)


@scenario("publisher-confirms")
def publisher_confirms():
    def run(conn):
        ch = yield channel(conn)
        confirms, returns = [], []
        yield lambda cb: ch.confirm_delivery(lambda f: confirms.append(f.method), callback=cb)
        ch.add_on_return_callback(lambda c, m, p, b: returns.append(m.reply_code))
        q = name("q")
        yield rpc(ch.queue_declare, queue=q, exclusive=True)
        for i in range(50):
            ch.basic_publish("", q, b"c%d" % i)

        def acked_up_to():
            n = 0
            for c in confirms:
                check(isinstance(c, spec.Basic.Ack), "only acks: %r" % confirms)
                n = max(n, c.delivery_tag)
            return n

        for _ in range(500):
            if acked_up_to() == 50:
                break
            yield sleep(conn, 0.01)
        eq(acked_up_to(), 50, "every publish acked")
        eq((yield message_count(ch, q)), 50, "confirmed messages queued")
        ch.basic_publish("amq.direct", name("nowhere"), b"r", mandatory=True)
        for _ in range(500):
            if acked_up_to() == 51:
                break
            yield sleep(conn, 0.01)
        eq((returns, acked_up_to()), ([312], 51), "returned, then acked")
        full = name("full")
        yield rpc(ch.queue_declare, queue=full, exclusive=True,
                  arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
        ch.basic_publish("", full, b"fits")
        ch.basic_publish("", full, b"overflows")
        for _ in range(500):
            if any(isinstance(c, spec.Basic.Nack) for c in confirms):
                break
            yield sleep(conn, 0.01)
        nacks = [c.delivery_tag for c in confirms if isinstance(c, spec.Basic.Nack)]
        eq(nacks, [53], "the publish past x-max-length is nacked")
        eq((yield message_count(ch, full)), 1, "the full queue kept one")

    drive(run)


@scenario("mandatory-return")
def mandatory_return():
    def run(conn):
        ch = yield channel(conn)
        returned = []
        ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, p, b)))
        key = name("unroutable")
        ch.basic_publish("amq.direct", key, b"come back",
                         pika.BasicProperties(message_id="ret-1", headers={"h": "v"}), mandatory=True)
        q = name("q")
        yield rpc(ch.queue_declare, queue=q, exclusive=True)
        ch.basic_publish("", q, b"routed", mandatory=True)
        ch.basic_publish("amq.direct", key, b"dropped")
        eq((yield from sentinel_drain(conn, ch, q)), [b"routed"], "routed mandatory message")
        yield sleep(conn, 0.3)
        eq(len(returned), 1, "only the unroutable message comes back")
        m, p, b = returned[0]
        eq((m.reply_code, m.reply_text, m.exchange, m.routing_key, b, p.message_id, p.headers),
           (312, "NO_ROUTE", "amq.direct", key, b"come back", "ret-1", {"h": "v"}), "basic.return")

    drive(run)


@scenario("transactions")
def transactions():
    def run(conn):
        ch = yield channel(conn)
        q = name("q")
        yield rpc(ch.queue_declare, queue=q, exclusive=True)
        yield rpc(ch.tx_select)
        ch.basic_publish("", q, b"rolled-back")
        eq((yield message_count(ch, q)), 0, "uncommitted publish invisible")
        yield rpc(ch.tx_rollback)
        eq((yield message_count(ch, q)), 0, "after rollback")
        ch.basic_publish("", q, b"committed")
        yield rpc(ch.tx_commit)
        m, _, body = yield from get_one(conn, ch, q)
        eq(body, b"committed", "body")
        ch.basic_ack(m.delivery_tag)
        yield rpc(ch.tx_rollback)
        yield rpc(ch.basic_recover, requeue=True)
        m, _, body = yield from get_one(conn, ch, q)
        eq((body, m.redelivered), (b"committed", True), "back after the rolled-back ack")
        ch.basic_ack(m.delivery_tag)
        yield rpc(ch.tx_commit)
        check((yield get(ch, q)) is None, "queue empty after the committed ack")

    drive(run)


@scenario("bodies")
def bodies():
    def run(conn):
        ch = yield channel(conn)
        q = name("q")
        yield rpc(ch.queue_declare, queue=q, exclusive=True)
        for b in BODIES:
            ch.basic_publish("", q, b)
        d = Deliveries()
        ch.basic_consume(q, d, auto_ack=True)
        got = []
        for i in range(len(BODIES)):
            _, _, body = yield from d.take(conn, "body %d" % i)
            got.append(body)
        eq([digest(b) for b in got], [digest(b) for b in BODIES], "bodies")

    drive(run)


@scenario("properties")
def properties():
    def run(conn):
        ch = yield channel(conn)
        q = name("q")
        yield rpc(ch.queue_declare, queue=q, exclusive=True)
        sent = pika.BasicProperties(
            content_type="application/json", content_encoding="utf-8", headers=HEADERS,
            delivery_mode=2, priority=5, correlation_id="corr-1", reply_to="reply-queue",
            expiration="60000", message_id="msg-1", timestamp=1700000000, type="kind",
            user_id="guest", app_id="interop", cluster_id="cluster",
        )
        ch.basic_publish("", q, b"{}", sent)
        _, p, body = yield from get_one(conn, ch, q)
        eq(body, b"{}", "body")
        for field in ["content_type", "content_encoding", "delivery_mode", "priority",
                      "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                      "type", "user_id", "app_id", "cluster_id"]:
            eq(getattr(p, field), getattr(sent, field), "property %s" % field)
        eq(set(p.headers), set(HEADERS), "header names")
        for k, v in HEADERS.items():
            eq(p.headers[k], v, "header %s" % k)

    drive(run)


@scenario("channel-errors")
def channel_errors():
    def run(conn):
        ch = yield channel(conn)
        missing = name("missing")
        err = yield closed(ch, lambda: ch.queue_declare(missing, passive=True))
        eq(err, (404, not_found_queue(missing)), "passive declare of a missing queue")
        ch = yield channel(conn)
        q = name("q")
        yield rpc(ch.queue_declare, queue=q, auto_delete=True)
        err = yield closed(ch, lambda: ch.queue_declare(q, durable=True, auto_delete=True))
        eq(err, (406, inequivalent_durable(q)), "redeclare with another durable flag")
        ch = yield channel(conn)
        nox = name("no-exchange")
        err = yield closed(ch, lambda: ch.basic_publish(nox, "k", b"lost"))
        eq(err, (404, not_found_exchange(nox)), "publish to a missing exchange")
        ch = yield channel(conn)
        ch.basic_publish("", q, b"still works")
        _, _, body = yield from get_one(conn, ch, q)
        eq(body, b"still works", "a new channel works after the errors")
        yield rpc(ch.queue_delete, queue=q)

    drive(run)


@scenario("consumer-cancel")
def consumer_cancel():
    def run(conn):
        ch = yield channel(conn)
        q = name("q")
        yield rpc(ch.queue_declare, queue=q)
        d = Deliveries()
        tag = ch.basic_consume(q, d, auto_ack=True)
        ch.basic_publish("", q, b"before")
        _, _, body = yield from d.take(conn, "before")
        eq(body, b"before", "delivery")
        other = yield channel(conn)

        def delete_and_wait(cb):
            ch.add_on_cancel_callback(lambda frame: cb(frame.method.consumer_tag))
            other.queue_delete(q)

        eq((yield delete_and_wait), tag, "basic.cancel from the broker")

    drive(run)


@scenario("recovery")
def recovery():
    q = name("q")
    state = {}

    def before(conn):
        ch = yield channel(conn)
        yield rpc(ch.queue_declare, queue=q, auto_delete=True)
        ch.basic_publish("", q, b"before")
        m, _, body = yield from get_one(conn, ch, q)
        eq(body, b"before", "before the restart")
        ch.basic_ack(m.delivery_tag)
        eq((yield message_count(ch, q)), 0, "acked before the restart")  # flushes the ack
        # The broker restarts now (this blocks the ioloop); the connection's close ends this run.
        request_restart()
        yield sleep(conn, 20)
        raise AssertionError("the connection survived a broker restart")

    try:
        drive(before, client_properties={"connection_name": name("recovery")})
    except pika.exceptions.ConnectionClosedByBroker as e:
        state["close"] = (e.reply_code, e.reply_text)
    eq(state.get("close", (None,))[0], SHUTDOWN_CODE, "connection.close reply code")

    # pika leaves reconnecting to the application: open a new SelectConnection.
    def after(conn):
        ch = yield channel(conn)
        yield rpc(ch.queue_declare, queue=q, auto_delete=True)
        ch.basic_publish("", q, b"after")
        m, _, body = yield from get_one(conn, ch, q)
        eq(body, b"after", "after the restart")
        ch.basic_ack(m.delivery_tag)
        yield rpc(ch.queue_delete, queue=q)

    deadline = time.monotonic() + 20
    while True:
        try:
            drive(after)
            break
        except pika.exceptions.AMQPConnectionError:
            check(time.monotonic() < deadline, "reconnected within 20s")
            time.sleep(0.2)
    eq(state["close"], (SHUTDOWN_CODE, SHUTDOWN_TEXT), "connection.close at the restart")


if __name__ == "__main__":
    main("pika-select")
