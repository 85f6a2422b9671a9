"""Shared plumbing for the Python scenario programs of Warren's interop suite.

A program registers scenarios with @scenario("name") and calls main(): `--list` prints the
names, `NAME` runs one (exit 0 = pass). The broker is at $AMQP_URL; names are made unique
with $WARREN_INTEROP_PREFIX. request_restart() asks the harness to restart the broker on
the same port and returns once it is back. The expected values every client checks (reply
texts, the 10 MiB body, the headers table with every field type) live here.
"""

import datetime
import decimal
import hashlib
import os
import sys
import time
import traceback

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
PREFIX = os.environ.get("WARREN_INTEROP_PREFIX", "interop-%d" % os.getpid())
RESTART_REQUEST = "WARREN-INTEROP:restart-broker"

# What a broker restart looks like to a client: connection.close with this code and text.
SHUTDOWN_CODE = 320
SHUTDOWN_TEXT = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"

_SCENARIOS = {}
_CLIENT = "py"


def scenario(name):
    """Registers the decorated function as scenario NAME."""

    def register(fn):
        _SCENARIOS[name] = fn
        return fn

    return register


def main(client):
    """Runs the scenario named on the command line, or lists them with --list."""
    global _CLIENT
    _CLIENT = client
    if len(sys.argv) != 2:
        sys.exit("usage: %s --list | SCENARIO" % sys.argv[0])
    arg = sys.argv[1]
    if arg == "--list":
        for n in _SCENARIOS:
            print(n)
        return
    fn = _SCENARIOS.get(arg)
    if fn is None:
        sys.exit("unknown scenario %r; --list shows them" % arg)
    try:
        fn()
    except BaseException as e:  # noqa: B036 - report every failure the same way
        traceback.print_exc()
        print("FAILED: %s: %s" % (type(e).__name__, e), file=sys.stderr, flush=True)
        os._exit(1)
    print("ok", flush=True)
    sys.stdout.flush()
    # Some client libraries leave threads behind; the scenario is over.
    os._exit(0)


def name(*parts):
    """A queue or exchange name unique to this run, client and scenario."""
    return ".".join((PREFIX, _CLIENT) + parts)


def request_restart():
    """Asks the harness to restart the broker on the same port; returns when it is back."""
    print(RESTART_REQUEST, flush=True)
    answer = sys.stdin.readline().strip()
    if answer != "restarted":
        raise AssertionError("the harness could not restart the broker: %r" % answer)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def eq(actual, expected, what):
    if actual != expected:
        raise AssertionError("%s: expected %r, got %r" % (what, expected, actual))


def wait_until(pred, timeout, what, step=None):
    """Polls pred (calling step between polls, e.g. to process I/O) until true or timeout."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        if step is not None:
            step()
        else:
            time.sleep(0.02)


def not_found_queue(q):
    return "NOT_FOUND - no queue '%s' in vhost '/'" % q


def not_found_exchange(x):
    return "NOT_FOUND - no exchange '%s' in vhost '/'" % x


def inequivalent_durable(q):
    return (
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '%s' in vhost '/': "
        "received 'true' but current is 'false'" % q
    )


# Bodies around the frame boundary (frame_max 131072 leaves 131064 bytes of body per frame),
# an empty one, and 10 MiB.
FRAME_BODY = 131072 - 8
LARGE = bytes(range(256)) * (10 * 1024 * 1024 // 256)
BODIES = [b"", b"x", b"y" * FRAME_BODY, b"z" * (FRAME_BODY + 1), LARGE]


def digest(b):
    return "%d bytes sha256 %s" % (len(b), hashlib.sha256(b).hexdigest()[:16])


# Topic routing: binding key -> the routing keys (published in this order) it must match.
TOPIC_BINDINGS = {
    "a.*": ["a.b"],
    "a.#": ["a.b", "a.b.c", "a", "a.b.c.d"],
    "#.c": ["a.b.c", "x.c", "c"],
    "*.b.*": ["a.b.c"],
}
TOPIC_KEYS = ["a.b", "a.b.c", "a", "x.c", "a.b.c.d", "c", "b"]

# Headers routing: (message headers, routed to the x-match=all queue, to the x-match=any queue)
HEADERS_BINDING = {"format": "pdf", "type": "report"}
HEADERS_CASES = [
    ({"format": "pdf", "type": "report"}, True, True),
    ({"format": "pdf"}, False, True),
    ({"format": "zip", "type": "log"}, False, False),
    ({}, False, False),
    ({"format": "pdf", "type": "report", "extra": 1}, True, True),
]

# Every field type a Python client can put in a headers table, and the value it must read back.
HEADERS_ALL_TYPES = {
    "string": "hello ✓",
    "bytes": b"\x00\x01\xfe\xff",
    "int32": -123456,
    "int64": 2**40 + 7,
    "bool-true": True,
    "bool-false": False,
    "double": 3.25,
    "decimal": decimal.Decimal("12.345"),
    "timestamp": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc),
    "table": {"nested": "yes", "n": 1, "deeper": {"x": "y"}},
    "array": ["a", 1, True, {"k": "v"}, ["inner"]],
    "void": None,
}
