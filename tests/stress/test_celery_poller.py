"""The poller of result backends that cannot push (issue 9, item 7): waiting costs little, and a
state stored after a long wait still arrives soon, on Celery's file-system backend (no worker needed:
the tests store states the way a worker does, through the backend).

Before the fix the poller read and decoded every pending task's file every 50 ms: 2,000 tasks waiting
cost 26% of a core with no file yet, 39% with a PROGRESS stored for each.
"""

from __future__ import annotations

import pathlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, states
from oracle import HANG  # type: ignore[import-not-found, unused-ignore]

import asyncbridge as ab
from asyncbridge.contrib import celery as contrib
from asyncbridge.contrib.celery import listener_for

pytestmark = pytest.mark.stress

PENDING = 2_000
IDLE = 3.0  # seconds of idle waiting measured, once the waits are long
MAX_SHARE = 0.10  # of one core, at most, for the whole process while they wait
#: A state stored after a long wait arrives within the poller's longest interval, and some slack.
LATENCY = contrib.POLL_MAX_INTERVAL + 1.0


@pytest.fixture
def app(tmp_path: pathlib.Path) -> Iterator[Celery]:
    results = tmp_path / "results"
    results.mkdir()
    app = Celery(f"poller-{uuid.uuid4().hex}", backend=f"file://{results}")
    yield app
    thread = listener_for(app)._thread  # the handles are gone: the poller ends within a sweep
    if thread is not None:
        thread.join(HANG)


def idle_share() -> float:
    """The share of one core the process uses over IDLE s in which nothing happens but waiting."""
    # Past the first reads, and past the ramp of the poll interval as the tasks stay unchanged: the
    # steady state of a long wait is what is measured.
    time.sleep(8 * contrib.POLL_MAX_INTERVAL)
    cpu, wall = time.process_time(), time.monotonic()
    time.sleep(IDLE)  # the measured idle time itself, not a synchronisation
    return (time.process_time() - cpu) / (time.monotonic() - wall)


@pytest.mark.parametrize("stored", ["nothing", "PROGRESS"])
def test_idle_waiting_on_the_file_system_costs_little(app: Celery, stored: str) -> None:
    """2,000 tasks wait, queued (no file yet) or running (a PROGRESS stored): the process uses at most
    MAX_SHARE of a core while nothing changes."""
    ids = [str(uuid.uuid4()) for _ in range(PENDING)]
    if stored == "PROGRESS":
        for task_id in ids:
            app.backend.store_result(task_id, {"step": 1}, "PROGRESS")
    handles: list[ab.Result[Any]] = [ab.AsyncResult(t, app=app) for t in ids]
    share = idle_share()
    print(f"\n{PENDING} tasks waiting ({stored} stored): {100 * share:.1f}% of a core")
    assert share < MAX_SHARE
    if stored == "PROGRESS":
        assert all(h.state is ab.State.PROGRESS for h in handles)


@pytest.mark.parametrize("stored", ["nothing", "PROGRESS"])
def test_a_state_stored_after_a_long_wait_arrives_soon(app: Celery, stored: str) -> None:
    """Tasks that waited long enough to be polled at the longest interval (and, with no file, not even
    stat'ed while the directory stays unchanged) still see a SUCCESS stored now within LATENCY."""
    ids = [str(uuid.uuid4()) for _ in range(5)]
    if stored == "PROGRESS":
        for task_id in ids:
            app.backend.store_result(task_id, {"step": 1}, "PROGRESS")
    handles: list[ab.Result[Any]] = [ab.AsyncResult(t, app=app) for t in ids]
    time.sleep(8 * contrib.POLL_MAX_INTERVAL)  # the wait whose length sets the poll interval to its longest
    slowest = 0.0
    for i, (task_id, h) in enumerate(zip(ids, handles, strict=True)):
        stored_at = time.monotonic()
        app.backend.store_result(task_id, i, states.SUCCESS)
        assert h.get(timeout=HANG) == i
        slowest = max(slowest, time.monotonic() - stored_at)
    print(f"\nafter a long wait ({stored} stored): a SUCCESS arrived within {slowest:.2f} s")
    assert slowest < LATENCY
