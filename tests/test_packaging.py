"""The package's extras, installed as a user installs them: in a fresh virtual environment, never in
the test environment (which has every extra's dependencies, and more, whatever the extras say)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: Run in the fresh environment: the Redis transport imports, and one task id makes the whole trip a
#: task makes (sent through the Redis broker, read off its queue as a worker reads it, its result
#: stored in the Redis backend and awaited through asyncbridge's pub/sub listener).
ROUND_TRIP = textwrap.dedent(
    """
    import sys

    import kombu.transport.redis  # what a fresh `pip install asyncbridge[celery]` could not import
    from celery import Celery

    import asyncbridge as ab

    url, queue, task_id = sys.argv[1:]
    app = Celery("fresh", broker=url, backend=url)
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3)
        sent = app.send_task("fresh.noop", args=(1, 2), queue=queue, task_id=task_id, connection=conn)
        message = conn.SimpleQueue(queue).get(timeout=30)
        assert message.headers["id"] == task_id and message.headers["task"] == "fresh.noop", message.headers
        message.ack()
    app.backend.store_result(task_id, "stored by hand", "SUCCESS")  # what a worker would do
    print(ab.wrap(sent).get(timeout=30))
    """
)


@pytest.mark.timeout(600)  # the first run on a machine downloads Celery; later ones use pip's cache
def test_the_celery_extra_brings_a_working_redis_broker(tmp_path: pathlib.Path, redis_url: str) -> None:
    """``pip install asyncbridge[celery]`` in a fresh environment can use a Redis broker and result
    backend: the extra pulls Celery's Redis dependencies (kombu's Redis transport needs more than
    redis-py)."""
    venv = tmp_path / "venv"
    # Without pip, installed into by this environment's pip (--python): an interpreter whose ensurepip
    # is not at hand (Debian's 3.14 unpacked by dev.py) makes environments this way too.
    made = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    python = str(venv / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python]
    install = subprocess.run(
        [*pip, "install", "-q", "--disable-pip-version-check", f"{ROOT}[celery]"],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    url = redis_url.rsplit("/", 1)[0] + "/15"  # a database of its own: the session's workers use /0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    task_id = str(uuid.uuid4())
    run = subprocess.run(
        [python, "-c", ROUND_TRIP, url, f"fresh-{task_id}", task_id],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # not the checkout: asyncbridge must come from the fresh environment
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "stored by hand"
