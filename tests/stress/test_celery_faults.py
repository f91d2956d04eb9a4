"""The reliability rows of issue #4 for Celery results: races, faults, shutdown, fork and leaks, against
a real prefork ``celery worker`` on a real Redis server (broker and result backend), the file-system
default where the poller is what matters.

The oracle is the suite's (tests/oracle.py); here the backend is one more reader that must agree: the
state Celery stored for the task is the state the handle ended in. Counts are smaller than for local
work (each iteration is a real task, a revoke kills a real child process); ``ASYNCBRIDGE_SOAK=1``
multiplies them, and every test prints what it ran.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import pathlib
import queue
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
import redis
from billiard.exceptions import WorkerLostError
from celery.result import AsyncResult
from conftest import SOAK  # type: ignore[import-not-found, unused-ignore]  # found when mypy runs on tests/
from oracle import (  # type: ignore[import-not-found, unused-ignore]
    HANG,
    Arrivals,
    AwaitBatch,
    Calls,
    S,
    Staircase,
    await_handle,
    read_sync,
    settled,
)
from test_celery import make_fifo, wait_for_progress

import asyncbridge as ab
from asyncbridge.contrib.celery import listener_for

pytestmark = pytest.mark.stress

RecordProperty = Callable[[str, object], None]

RUNNING_RACES = 30 * SOAK  # each REVOKED one kills a worker child; the pool takes up to 5 s to replace it
QUEUED_RACES = 60 * SOAK
LISTENER_LAG = 0.5  # a handle learns what the backend stored within this (pub/sub: milliseconds)
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
            calls.watch(h)
            accepted: list[bool] = []
            written: list[bool] = []
            race(
                partial(lambda h, out: out.append(h.cancel()), h, accepted),
                partial(lambda fifo, out: out.append(write_nowait(fifo, "done")), fifo, written),
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


def send_add(tasks: Any, i: int, calls: Calls, sent: queue.SimpleQueue[ab.Result[int]]) -> None:
    h = ab.wrap(tasks.add.delay(i, 1))
    sent.put(calls.watch(h))


def cancel_first(sent: queue.SimpleQueue[ab.Result[int]]) -> None:
    h = sent.get(timeout=HANG)
    sent.put(h)
    h.cancel()


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
            sent: queue.SimpleQueue[ab.Result[int]] = queue.SimpleQueue()
            calls = Calls(3)
            race(partial(cancel_first, sent), partial(send_add, tasks, i, calls, sent), stairs.next())
            h = sent.get(timeout=HANG)
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


# -- faults: a worker child killed, raising callbacks ---------------------------------------------

KILLS = 5 * SOAK  # each costs Celery's worker_lost_wait (1 s here) and a new child
CALLBACK_HANDLES = 100 * SOAK


def test_a_worker_child_sigkilled_mid_task_fails_only_its_handle(
    redis_celery: Any, tmp_path: pathlib.Path, audit: list[str]
) -> None:
    """SIGKILL to the prefork child once it reported it runs the task (an event): the handle ends
    FAILURE with Celery's WorkerLostError naming the signal, as soon as the worker stores it (the
    worker itself takes worker_lost_wait, and at times a few seconds more, to notice); the next task
    runs."""
    tasks = redis_celery
    slowest = lag = 0.0
    for i in range(KILLS):
        fifo = make_fifo(tmp_path)
        h = ab.wrap(tasks.reported_then_read.delay(fifo))
        wait_for_progress(h)
        ended: list[datetime] = []
        h.add_done_callback(lambda _h, ended=ended: ended.append(datetime.now(UTC)))
        killed = time.monotonic()
        os.kill(h.info["pid"], signal.SIGKILL)
        exc = h.exception(timeout=HANG)
        slowest = max(slowest, time.monotonic() - killed)
        assert h.state is S.FAILURE and isinstance(exc, WorkerLostError), (h.state, exc)
        assert "SIGKILL" in str(exc), exc
        stored = AsyncResult(h.id, app=tasks.app).date_done
        assert isinstance(stored, datetime) and ended, (stored, ended)
        lag = max(lag, (ended[0] - stored.replace(tzinfo=stored.tzinfo or UTC)).total_seconds())
        assert ab.wrap(tasks.add.delay(i, i)).get(timeout=HANG) == 2 * i
    print(
        f"\ncelery SIGKILL: {KILLS} children killed; FAILURE within {slowest:.2f} s of the kill, "
        f"at most {lag * 1000:.0f} ms after the worker stored it"
    )
    assert lag < LISTENER_LAG


def test_raising_callbacks_leave_the_listener_serving(
    redis_celery: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Celery handles whose middle callback raises (Exception, then SystemExit): the other callbacks
    run for every handle, each raise is logged once, and the listener thread that ran them is still
    the one serving afterwards (a pending handle keeps it busy throughout)."""
    tasks = redis_celery
    gate = f"gate-{uuid.uuid4().hex}"
    keeper = ab.wrap(tasks.gated_add.delay(0, 0, f"{gate}-keeper"))  # pending until the end
    listener = listener_for(tasks.app)
    thread = listener._thread
    assert thread is not None and thread.is_alive()
    handles = [ab.wrap(tasks.gated_add.delay(i, 1, gate)) for i in range(CALLBACK_HANDLES)]
    ran: Counter[str] = Counter()
    where: set[str] = set()
    all_ran = threading.Semaphore(0)

    def outer(h: ab.Result[Any]) -> None:
        ran["outer"] += 1
        where.add(threading.current_thread().name)
        all_ran.release()

    def raising(h: ab.Result[Any]) -> None:
        ran["raising"] += 1
        if h.get() % 2:
            raise SystemExit("from a callback")
        raise ValueError("from a callback")

    for h in handles:
        h.add_done_callback(outer)
        h.add_done_callback(raising)
        h.add_done_callback(outer)
    with caplog.at_level(logging.ERROR, logger="asyncbridge"):
        client = redis.Redis.from_url(tasks.app.conf.result_backend)
        client.rpush(gate, *range(CALLBACK_HANDLES))
        for _ in range(2 * CALLBACK_HANDLES):
            assert all_ran.acquire(timeout=HANG), ran
        assert [h.get(timeout=HANG) for h in handles] == [i + 1 for i in range(CALLBACK_HANDLES)]
        assert listener._thread is thread and thread.is_alive()
        client.rpush(f"{gate}-keeper", 1)
        assert keeper.get(timeout=HANG) == 0
        client.close()
    records = [r for r in caplog.records if r.name == "asyncbridge" and "callback" in r.getMessage()]
    print(f"\ncelery raising callbacks: {CALLBACK_HANDLES} handles: {dict(ran)}; {len(records)} records")
    assert ran == {"outer": 2 * CALLBACK_HANDLES, "raising": CALLBACK_HANDLES}
    assert where == {"asyncbridge-celery"}, where
    assert len(records) == CALLBACK_HANDLES


# -- shutdown: the awaiting loop goes away, Ctrl-C, interpreter exit, fork -------------------------

PER_RUN = 12


async def abandon(handles: list[ab.Result[Any]], modes: list[str]) -> None:
    awaited = [(h, mode == "shielded") for h, mode in zip(handles, modes, strict=True) if mode != "unawaited"]
    arrivals = Arrivals(len(awaited))
    for h, shielded in awaited:
        asyncio.get_running_loop().create_task(await_handle(h, shielded, arrivals))
    await arrivals.all_in.wait()  # then return: asyncio.run cancels the awaiters


def test_asyncio_run_exits_with_celery_handles_pending(redis_celery: Any, quiet: None) -> None:
    """``asyncio.run`` returns while Celery handles are awaited (plain or shielded) or not: the
    abandoned plain awaits revoke their tasks (the documented default), the others run on; every
    handle ends (REVOKED, or SUCCESS with its value), nothing is logged, no "Event loop is closed"."""
    tasks = redis_celery
    seen: Counter[str] = Counter()
    gate = f"gate-{uuid.uuid4().hex}"
    handles = [ab.wrap(tasks.gated_add.delay(i, 1, gate)) for i in range(PER_RUN)]
    modes = [("unawaited", "awaited", "shielded")[i % 3] for i in range(PER_RUN)]
    asyncio.run(abandon(handles, modes))
    client = redis.Redis.from_url(tasks.app.conf.result_backend)
    client.rpush(gate, *range(PER_RUN))
    client.close()
    for i, (h, mode) in enumerate(zip(handles, modes, strict=True)):
        st, got = settled(h, HANG)
        assert (st, got) == (S.SUCCESS, i + 1) if mode != "awaited" else st is S.REVOKED, (mode, st, got)
        seen[f"{mode} {st}"] += 1
    print(f"\nasyncio.run exits with {PER_RUN} Celery handles pending: {dict(seen)}")


def test_awaiting_loop_closed_with_celery_waiters(redis_celery: Any, quiet: None) -> None:
    """A loop whose tasks await Celery handles is closed with every waiter registered: the handles
    still end, and get() reads every value."""
    tasks = redis_celery
    gate = f"gate-{uuid.uuid4().hex}"
    handles = [ab.wrap(tasks.gated_add.delay(i, 1, gate)) for i in range(PER_RUN)]
    loop = asyncio.new_event_loop()
    arrivals = Arrivals(PER_RUN)
    waiters = [loop.create_task(await_handle(h, False, arrivals)) for h in handles]
    loop.run_until_complete(arrivals.all_in.wait())
    for t in waiters:
        t._log_destroy_pending = False  # type: ignore[attr-defined]  # the test abandons them
    loop.close()
    client = redis.Redis.from_url(tasks.app.conf.result_backend)
    client.rpush(gate, *range(PER_RUN))
    client.close()
    assert [settled(h, HANG) for h in handles] == [(S.SUCCESS, i + 1) for i in range(PER_RUN)]
