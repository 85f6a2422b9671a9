"""Interop scenarios for Celery: a real worker (a child process) runs tasks sent through the
broker, and results come back through the rpc:// result backend."""

import os
import signal
import subprocess
import sys
import time

from common import PREFIX, check, eq, main, scenario

HERE = os.path.dirname(os.path.abspath(__file__))


class Worker:
    """A `celery worker` child process consuming the scenario's task queue."""

    def __init__(self, tag):
        self.queue = "%s.celery.%s" % (PREFIX, tag)
        os.environ["WARREN_INTEROP_CELERY_QUEUE"] = self.queue
        self.log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                     "%s.worker.log" % self.queue), "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool=solo",
             "--concurrency=1", "-Q", self.queue, "-n", "%s@%%h" % self.queue,
             "--without-mingle", "-l", "INFO"],
            cwd=HERE, stdout=self.log, stderr=subprocess.STDOUT,
        )
        from celery_app import app

        self.app = app

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)  # warm shutdown
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        # The task queue is durable, and so is the exchange Celery names after it: remove them.
        with self.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(self.queue)
            conn.default_channel.exchange_delete(self.queue)
        if exc[0] is not None:
            self.log.seek(0)
            print("---- worker log ----\n" + self.log.read()[-6000:], file=sys.stderr)
        self.log.close()
        return False


@scenario("task-result")
def task_result():
    with Worker("result"):
        from celery_app import add

        eq(add.delay(2, 3).get(timeout=30), 5, "add(2, 3)")
        results = [add.delay(i, i) for i in range(20)]
        eq([r.get(timeout=30) for r in results], [2 * i for i in range(20)], "20 tasks")
        r = add.apply_async((1, 1), countdown=1)
        eq(r.get(timeout=30), 2, "task with a countdown")
        check(r.successful(), "state SUCCESS")


@scenario("task-error")
def task_error():
    with Worker("error"):
        from celery_app import fail

        r = fail.delay("boom")
        try:
            r.get(timeout=30)
            raise AssertionError("the task's exception was not raised")
        except ValueError as e:
            eq(str(e), "boom", "exception message")
        eq(r.state, "FAILURE", "state")


@scenario("task-retry")
def task_retry():
    with Worker("retry"):
        from celery_app import flaky

        eq(flaky.delay("k").get(timeout=30), "succeeded after 2 attempts", "retried task")


@scenario("group")
def group():
    with Worker("group"):
        from celery import group as celery_group

        from celery_app import add

        res = celery_group(add.s(i, 10) for i in range(10))()
        eq(res.get(timeout=30), [i + 10 for i in range(10)], "group results")


@scenario("control-ping")
def control_ping():
    # Broadcast over the celery.pidbox fanout exchange, replies through reply.celery.pidbox.
    with Worker("ping") as w:
        deadline = time.monotonic() + 30
        replies = []
        while not replies and time.monotonic() < deadline:
            replies = w.app.control.ping(timeout=1.0)
        eq(len(replies), 1, "one worker answers: %r" % replies)
        (reply,) = replies[0].values()
        eq(reply, {"ok": "pong"}, "ping reply")


if __name__ == "__main__":
    main("celery")
