"""Plain functions the Dask tests run as tasks: module-level, so that a worker in another process
imports them by name (the fixtures put tests/ on its path)."""

from __future__ import annotations

import os
import pathlib
import time

from celery_work import rendezvous

import asyncbridge as ab


def after(i: int, gate: object) -> int:
    """``i``, once the task ``gate`` (a Dask future passed as an argument) has ended."""
    return i


def fails_until(path: str, failures: int) -> int:
    """Fail the first ``failures`` calls (counted in the file ``path``), then return how many calls
    were made: an attempt counter that survives the process an attempt ran in."""
    counter = pathlib.Path(path)
    with counter.open("a") as f:
        f.write("x")
    calls = len(counter.read_text())
    if calls <= failures:
        raise ConnectionError(f"attempt {calls} failed")
    return calls


def checks_forever() -> str:
    """Pretend work between checkpoints, for 30 s at most (a time limit or a cancel ends it)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ab.checkpoint()
        time.sleep(0.005)
    return "never stopped"


def report_pid_and_wait(fifo: str) -> str:
    """Report the pid of the worker process running the task, then wait on ``fifo``."""
    ab.report_progress(pid=os.getpid())
    return rendezvous(fifo)


def waits_unchecked(fifo: str) -> str:
    """Wait on ``fifo`` without ever calling checkpoint(): only the caller's write ends it."""
    return rendezvous(fifo)
