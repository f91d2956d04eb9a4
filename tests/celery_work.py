"""Plain functions the Celery tests run as tasks (registered on each test app by celery_app.py)."""

from __future__ import annotations

import os
import select
import time
from typing import Any

import asyncbridge as ab


def add(x: int, y: int) -> int:
    return x + y


def fail(message: str) -> None:
    raise ValueError(message)  # the source line the worker's traceback must show


def rendezvous(fifo: str) -> str:
    """Block until the test writes to the named pipe ``fifo`` (an event across processes)."""
    with open(fifo) as f:
        return f.read()


def report_and_wait(fifo: str, state: str) -> str:
    """Report progress under ``state`` (PROGRESS, or a custom state name), then wait on ``fifo``."""
    if state == "PROGRESS":
        ab.report_progress(step=1, of=2)  # asyncbridge's call, inside a Celery task
    else:
        from celery import current_task

        current_task.update_state(state=state, meta={"step": 1, "of": 2})  # Celery's own
    return rendezvous(fifo)


def sleep_for(seconds: float) -> str:
    time.sleep(seconds)  # stands for long work that never checks: only a kill stops it
    return "slept"


def get_inside_a_task(task_id: str) -> Any:
    from celery import current_app

    return ab.AsyncResult(task_id, app=current_app).get(timeout=10)


def pid() -> int:
    return os.getpid()


def checks_until_cancelled() -> str:
    """Report that it runs, then do pretend work between checkpoints until cancelled (30 s at most)."""
    ab.report_progress(running=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ab.checkpoint()  # raises once cancelled (a Celery task is killed by the revoke instead)
        time.sleep(0.005)
    return "never cancelled"


def report_pid_and_wait(fifo: str) -> str:
    """Report the pid of the process running the task, then wait on ``fifo``."""
    ab.report_progress(pid=os.getpid())
    return rendezvous(fifo)


def reported_then_read(fifo: str) -> str:
    """Open the named pipe ``fifo`` for reading, then report progress, then wait for a writer's text:
    once the test sees the report, a non-blocking writer finds the reader there (or the task was
    killed), so a race against a revoke needs no sleep."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        ab.report_progress(pid=os.getpid())
        select.select([fd], [], [])  # on Linux a FIFO no writer ever opened is not readable
        return os.read(fd, 1024).decode()
    finally:
        os.close(fd)


def gated_add(x: int, y: int, gate: str) -> int:
    """``x + y``, once a token arrives on the Redis list ``gate`` (the worker's ABTEST_REDIS_URL)."""
    import redis

    # socket_timeout=None: redis-py 8 gives up on a reply after 5 s by default, and a gate may wait longer
    client = redis.Redis.from_url(os.environ["ABTEST_REDIS_URL"], socket_timeout=None)
    try:
        client.blpop([gate])
    finally:
        client.close()
    return x + y


def reports_in_turn(gate: str, reports: list[dict[str, Any]], pause: float) -> int:
    """Once the test writes to the named pipe ``gate``, make each report of ``reports`` in turn, each
    followed by ``pause`` s of pretend work (the report is the task's latest state all that time);
    return how many were made."""
    rendezvous(gate)
    for meta in reports:
        ab.report_progress(**meta)
        time.sleep(pause)
    return len(reports)
