"""The Celery app of the ``celery`` benchmark family, and its one task.

The family's worker imports this module (``celery -A benchmarks._celery_app worker``, run from the
repository root) and finds the Redis URL in :data:`URL_ENV`; the benchmark process imports it too
and calls :func:`configure` once its Redis server is up. Kept light: the worker imports only
``benchmarks`` (a docstring), Celery, and this module.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

#: The environment variable that gives the worker the Redis URL (broker and result backend).
URL_ENV = "ASYNCBRIDGE_BENCH_REDIS_URL"

app: Any = Celery("abbench")
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


def configure(url: str) -> None:
    """Use the Redis server at ``url`` as broker and result backend (before the app is used)."""
    app.conf.update(broker_url=url, result_backend=url)


def noop() -> None:
    """The task: nothing, so that only the round trip is measured."""
    return None


noop_task: Any = app.task(name="abbench.noop")(noop)

if os.environ.get(URL_ENV):
    configure(os.environ[URL_ENV])
