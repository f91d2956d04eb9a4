"""The Celery app of the tests, configured from the environment so that a worker process started
by a fixture (``celery -A celery_app worker``) and the test process agree.

- ``ABTEST_DIR``: a directory for the embedded default: a file-system broker and a ``file://``
  result backend (no server needed; revoke and ping travel as broadcasts through its control folder).
- ``ABTEST_REDIS_URL``: a Redis server, used as broker and result backend instead.
"""

from __future__ import annotations

import os
import pathlib
from types import SimpleNamespace

import celery_work
import workers
from celery import Celery

import asyncbridge as ab


def _config() -> dict[str, object]:
    redis_url = os.environ.get("ABTEST_REDIS_URL")
    if redis_url:
        return redis_config(redis_url)
    root = pathlib.Path(os.environ.get("ABTEST_DIR", "/tmp/abtest"))
    for sub in ("queue", "control", "results"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        # kombu's own file-system transport can hand a worker a message file not yet written
        "broker_transport": "asyncbridge.contrib.celery_fs:Transport",
        "broker_transport_options": {
            "data_folder_in": str(root / "queue"),
            "data_folder_out": str(root / "queue"),
            "control_folder": str(root / "control"),
            "store_processed": False,
            "polling_interval": 0.02,
        },
        "result_backend": f"file://{root / 'results'}",
    }


def make_app(config: dict[str, object]) -> SimpleNamespace:
    """An app with the tests' tasks registered: plain Celery tasks, and the same functions through
    ``ab.task(engine=app)``."""
    app = Celery("abtest")
    app.conf.update(
        config,
        task_track_started=True,  # STARTED is reported when the worker starts the task
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_lost_wait=1.0,  # how long the pool waits for a result from a child that died
    )
    plain = {
        name: app.task(name=f"abtest.{name}")(getattr(celery_work, name))
        for name in (
            "add",
            "fail",
            "rendezvous",
            "report_and_wait",
            "report_pid_and_wait",
            "sleep_for",
            "get_inside_a_task",
            "pid",
            "reported_then_read",
            "gated_add",
            "reports_in_turn",
        )
    }
    # The same functions through ab.task(engine=app): registered at import, in this process and in
    # the worker alike (a worker runs only the tasks its app registered).
    engine_tasks = {
        name: ab.task(engine=app)(getattr(celery_work, name))
        for name in ("add", "fail", "report_and_wait", "checks_until_cancelled")
    }
    return SimpleNamespace(
        app=app,
        **plain,
        engine_tasks=engine_tasks,
        square=engine_tasks["add"],
        progress=engine_tasks["report_and_wait"],
        limited=ab.task(engine=app, timeout=0.5)(celery_work.sleep_for),
        # the same flaky work as the thread and process tests
        flaky=ab.task(engine=app, retry=ab.Retry(attempts=3))(workers.fail_times),
        factory=factory_tasks(app),
    )


def factory_tasks(app: Celery) -> SimpleNamespace:
    """Tasks made as an app factory makes them (Flask's and many projects' Celery factories): defined
    inside a function that is given the app. The worker finds them as Celery finds its own, by name:
    it imports this module, which calls the factory, so both processes register the same names."""

    @ab.task(engine=app)
    def multiply(x: int, y: int) -> int:
        return x * y

    @ab.task(engine=app)
    def total(values: list[int]) -> int:
        return sum(values)

    return SimpleNamespace(
        multiply=multiply,  # named by Celery's rule, module and __name__: celery_app.multiply
        total=total,  # a chord's body
        double=ab.task(engine=app, name="abtest.double")(lambda x: 2 * x),  # nameless but for name=
    )


def redis_config(url: str) -> dict[str, object]:
    return {"broker_url": url, "result_backend": url}


tasks = make_app(_config())
app = tasks.app  # what `celery -A celery_app worker` finds
