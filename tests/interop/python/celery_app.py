"""The Celery application of the interop suite: its broker is $AMQP_URL, its results go back
through the rpc:// backend (a reply queue per client, not direct reply-to), and its task
queue is unique to the scenario ($WARREN_INTEROP_CELERY_QUEUE)."""

import os

from celery import Celery

from common import URL

app = Celery("warren_interop", broker=URL, backend="rpc://")
app.conf.update(
    task_default_queue=os.environ["WARREN_INTEROP_CELERY_QUEUE"],
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_attempts = {}


@app.task
def add(x, y):
    return x + y


@app.task
def fail(message):
    raise ValueError(message)


@app.task(bind=True, max_retries=3)
def flaky(self, key):
    """Fails on its first run and succeeds on the retry (after a countdown)."""
    _attempts[key] = _attempts.get(key, 0) + 1
    if _attempts[key] == 1:
        raise self.retry(countdown=0.5)
    return "succeeded after %d attempts" % _attempts[key]
