"""Shared fixtures: both anyio backends, switch-interval tightening, and a thread-leak guard."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from oracle import audit, quiet, quiet_library  # noqa: F401  # the reliability fixtures, for every test module

from benchmarks import _servers as servers
from benchmarks._servers import Process

# A shell starts a background job (`cmd &`, nohup) with SIGINT ignored, and an ignored signal stays
# ignored across exec: the child interpreters of the KeyboardInterrupt tests would never see their
# SIGINT, and a server or worker stopped with SIGINT would not stop. Python's own handler in this
# process makes every child start with the default disposition, as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: ASYNCBRIDGE_SOAK=1 multiplies every stress count by this.
SOAK = 50 if os.environ.get("ASYNCBRIDGE_SOAK") else 1

# Long-lived threads kept on purpose: the library's own (all named asyncbridge-..., started on first
# use: loop, pools, managers, listeners; the test fixtures' log readers use the prefix too) and the
# idle thread caches of trio and anyio, which outlive a test by design.
LIBRARY_THREADS = ("asyncbridge-", "Trio thread", "AnyIO worker thread")


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(("asyncio", {"debug": True}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ],
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def tight_switching() -> Iterator[None]:
    """Switch threads as often as CPython allows, to widen race windows."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _foreign_threads() -> set[threading.Thread]:
    return {
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.name.startswith(LIBRARY_THREADS)
    }


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread behind (the library's named threads excepted)."""
    before = _foreign_threads()
    yield
    leaked = _foreign_threads() - before
    for t in leaked:
        t.join(5.0)  # a thread that is finishing gets its chance; a leak stays alive
    alive = [t.name for t in leaked if t.is_alive()]
    assert not alive, f"threads leaked by this test: {alive}"


# -- real Celery workers and a real Redis server -------------------------------------------------
# The embedded default needs no server: a file-system broker and a file:// result backend in a
# directory made here, before any test module imports celery_app (which reads it at import).
os.environ.setdefault("ABTEST_DIR", tempfile.mkdtemp(prefix="asyncbridge-celery-"))
TESTS_DIR = pathlib.Path(__file__).resolve().parent


#: Every Celery worker the tests started, watched by celery_workers_outlive_each_test.
CELERY_WORKERS: list[Process] = []


def start_celery_worker(extra_env: dict[str, str]) -> Process:
    # The checkout first, as in this process (pytest's pythonpath): the worker must run the code under
    # test, not a copy installed in the environment earlier.
    env = {**os.environ, **extra_env, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR.parent), str(TESTS_DIR)])}
    argv = servers.celery_worker_argv("celery_app", concurrency=2, loglevel="INFO")
    worker = Process(argv, " ready.", env, "celery-worker", TESTS_DIR)
    worker.wait_ready()
    CELERY_WORKERS.append(worker)
    return worker


@pytest.fixture(autouse=True)
def celery_workers_outlive_each_test() -> Iterator[None]:
    """A Celery worker that dies during a test is reported by that test, with the worker's last
    output, rather than by the tests after it, which would wait on it and time out."""
    yield
    for worker in CELERY_WORKERS:
        if not worker.stopped and worker.proc.poll() is not None:
            worker.stopped = True  # reported once
            pytest.fail(
                f"the Celery worker (pid {worker.proc.pid}) exited with {worker.proc.returncode} during "
                f"this test; its last output:\n{worker.output()}"
            )


@pytest.fixture(scope="session")
def celery_worker() -> Iterator[Any]:
    """A real prefork `celery worker` on the embedded file-system broker; yields the tests' app
    namespace (celery_app.tasks)."""
    import celery_app

    worker = start_celery_worker({})
    yield celery_app.tasks
    worker.stop()


def start_redis(port: int) -> Process:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed and CI must run the Redis tests (.ci/run installs it)")
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server); CI runs these")
    return servers.start_redis(port, TESTS_DIR)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis server on a free loopback port, for the session."""
    port = servers.free_port()
    redis = start_redis(port)
    yield f"redis://127.0.0.1:{port}/0"
    redis.stop()


@pytest.fixture(scope="session")
def redis_celery(redis_url: str) -> Iterator[Any]:
    """A real prefork `celery worker` on Redis (broker and result backend); yields an app namespace
    of this process configured alike."""
    import celery_app

    worker = start_celery_worker({"ABTEST_REDIS_URL": redis_url})
    yield celery_app.make_app(celery_app.redis_config(redis_url))
    worker.stop()
