"""The reliability rows of issue #4 for Celery results: races, faults, shutdown, fork and leaks, against
a real prefork ``celery worker`` on a real Redis server (broker and result backend), the file-system
default where the poller is what matters.

The oracle is the suite's (tests/oracle.py); here the backend is one more reader that must agree: the
state Celery stored for the task is the state the handle ended in. Counts are smaller than for local
work (each iteration is a real task, a revoke kills a real child process); ``ASYNCBRIDGE_SOAK=1``
multiplies them, and every test prints what it ran.
"""

from __future__ import annotations

import errno
import os
import pathlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from celery.result import AsyncResult
from conftest import SOAK  # type: ignore[import-not-found, unused-ignore]  # found when mypy runs on tests/
from oracle import (  # type: ignore[import-not-found, unused-ignore]
    HANG,
    AwaitBatch,
    Calls,
    S,
    Staircase,
    read_sync,
)
from test_celery import make_fifo, wait_for_progress

import asyncbridge as ab

pytestmark = pytest.mark.stress

RecordProperty = Callable[[str, object], None]

RUNNING_RACES = 30 * SOAK  # each REVOKED one kills a worker child; the pool takes up to 5 s to replace it
QUEUED_RACES = 60 * SOAK
MIN_SHARE = 0.20  # each outcome (REVOKED, SUCCESS) in at least this share of a variant's runs


def write_nowait(fifo: str, text: str) -> bool:
    """Write ``text`` to the task's pipe if the task still reads it; False if its process is gone."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no reader: the child running the task was killed
            return False
        raise
    try:
        os.write(fd, text.encode())
    except BrokenPipeError:  # the reader went away between the open and the write
        return False
    finally:
        os.close(fd)
    return True


def stored_state(h: ab.Result[Any], app: Any) -> str:
    """What the result backend holds for the handle's task, read afresh."""
    return str(AsyncResult(h.id, app=app).state)


def hold(microseconds: int) -> None:
    """Busy-wait about ``microseconds`` (none if negative), holding no lock: a skew, not a sync."""
    deadline = time.perf_counter() + microseconds / 1e6
    while time.perf_counter() < deadline:
        pass


def race(cancel: Callable[[], object], complete: Callable[[], object], skew: int) -> None:
    """Run ``cancel`` and ``complete`` in two threads released by one barrier; ``skew`` > 0 holds the
    cancelling side back that many microseconds, < 0 the completing side (see Staircase). A revoke
    travels through the broker to the worker's main process, which then kills the child: the two
    sides meet milliseconds apart, so the skew is in time, not in spins."""
    go = threading.Barrier(2)

    def side(fn: Callable[[], object], microseconds: int) -> None:
        go.wait(HANG)
        hold(microseconds)
        fn()

    threads = [
        threading.Thread(target=side, args=(cancel, skew), name="race-cancel"),
        threading.Thread(target=side, args=(complete, -skew), name="race-complete"),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG)
        assert not t.is_alive(), f"{t.name} hung"


def check_race(h: ab.Result[Any], calls: Calls, app: Any, batch: AwaitBatch) -> S:
    outcome = read_sync(h)
    assert calls.ran.wait(HANG), f"callbacks of {h!r}: {calls.seen}"
    calls.check(h.state)
    batch.add(h, outcome)
    assert stored_state(h, app) == h.state, "the handle and the result backend disagree"
    return h.state


def report(record_property: RecordProperty, name: str, n: int, seen: Counter[str]) -> None:
    print(f"\n[{name}] {n} iterations: {dict(seen)}")
    record_property(f"{name}_iterations", n)
    record_property(f"{name}_outcomes", dict(seen))


def assert_shares(seen: Counter[str], n: int) -> None:
    assert min(seen["REVOKED"], seen["SUCCESS"]) >= MIN_SHARE * n, dict(seen)


# -- cancel (revoke) against completion -----------------------------------------------------------


def test_revoke_races_the_end_of_a_running_task(
    redis_celery: Any, tmp_path: pathlib.Path, audit: list[str], record_property: RecordProperty
) -> None:
    """A running task is released (it returns at once) while another thread cancels its handle, which
    revokes it with terminate: either the task's value arrives (SUCCESS, even after cancel() said
    True) or the worker kills the child first (REVOKED). Every reader, every callback, every awaiter
    and the result backend agree; a value the backend holds is never lost."""
    tasks = redis_celery
    stairs = Staircase(step=8_000, floor=100, jitter=1_000, limit=500_000)
    seen: Counter[str] = Counter()
    batch = AwaitBatch(size=20)
    try:
        for _ in range(RUNNING_RACES):
            fifo = make_fifo(tmp_path)
            h = ab.wrap(tasks.reported_then_read.delay(fifo))
            wait_for_progress(h)  # running, with its pipe open for reading
            calls = Calls(3)
            for callback in (calls.first, calls.second, calls.third):
                h.add_done_callback(callback)
            accepted: list[bool] = []
            skew = stairs.next()
            written: list[bool] = []
            race(
                lambda: accepted.append(h.cancel()),
                lambda: written.append(write_nowait(fifo, "done")),
                stairs.next(),
            )
            st = check_race(h, calls, tasks.app, batch)
            if st is S.SUCCESS:
                assert written == [True] and h.get() == "done", (written, h.info)
                seen["SUCCESS" if accepted == [True] else "SUCCESS, cancel refused"] += 1
            else:
                assert st is S.REVOKED and accepted == [True], (st, accepted, h.info)
                seen["REVOKED"] += 1
            stairs.update(cancel_won=st is S.REVOKED)
    finally:
        batch.close()
    seen_total = Counter({"REVOKED": seen["REVOKED"], "SUCCESS": RUNNING_RACES - seen["REVOKED"]})
    report(record_property, "celery_running", RUNNING_RACES, seen)
    assert batch.checked == RUNNING_RACES
    assert_shares(seen_total, RUNNING_RACES)


def test_revoke_races_the_start_of_a_queued_task(
    redis_celery: Any, audit: list[str], record_property: RecordProperty
) -> None:
    """A task is sent and its handle cancelled at once from another thread: the revoke reaches the
    worker before the task (it never runs: REVOKED), or after it ran (SUCCESS). Readers, callbacks,
    awaiters and the backend agree."""
    tasks = redis_celery
    stairs = Staircase(step=8_000, floor=100, jitter=1_000, limit=500_000, start=40_000)
    seen: Counter[str] = Counter()
    batch = AwaitBatch(size=20)
    try:
        for i in range(QUEUED_RACES):
            sent: list[ab.Result[int]] = []
            ready = threading.Event()
            calls = Calls(3)
            skew = stairs.next()

            def send(i: int = i) -> None:
                h = ab.wrap(tasks.add.delay(i, 1))
                for callback in (calls.first, calls.second, calls.third):
                    h.add_done_callback(callback)
                sent.append(h)
                ready.set()

            def cancel() -> None:
                assert ready.wait(HANG)
                sent[0].cancel()

            race(cancel, send, skew)
            h = sent[0]
            st = check_race(h, calls, tasks.app, batch)
            if st is S.SUCCESS:
                assert h.get() == i + 1
            else:
                assert st is S.REVOKED, (st, h.info)
            seen[st] += 1
            stairs.update(cancel_won=st is S.REVOKED)
    finally:
        batch.close()
    report(record_property, "celery_queued", QUEUED_RACES, seen)
    assert_shares(seen, QUEUED_RACES)
