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
import gc
import logging
import os
import pathlib
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest
import redis
from billiard.exceptions import WorkerLostError
from celery.result import AsyncResult
from children import BLOCKED_IN_GET_SEAM, Child, fork_child, sigint_each_ready  # type: ignore[import-not-found, unused-ignore]
from conftest import SOAK, TESTS_DIR  # type: ignore[import-not-found, unused-ignore]  # found when mypy runs on tests/
from hypothesis import HealthCheck, given, settings, strategies as st
from oracle import (  # type: ignore[import-not-found, unused-ignore]
    HANG,
    TERMINAL_WITHIN,
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
from asyncbridge.contrib.celery import _LISTENERS, listener_for

pytestmark = pytest.mark.stress

RecordProperty = Callable[[str, object], None]

RUNNING_RACES = 30 * SOAK  # each REVOKED one kills a worker child; the pool takes up to 5 s to replace it
QUEUED_RACES = 60 * SOAK
LISTENER_LAG = 0.5  # a handle learns what the backend stored within this (pub/sub: milliseconds)
MIN_SHARE = 0.20  # each outcome (REVOKED, SUCCESS) in at least this share of a variant's runs


@pytest.fixture(scope="module", autouse=True)
def listeners_stop_after_the_module() -> Iterator[None]:
    """The module leaves nothing running: once its handles are gone, the listener threads it started
    end (and with them their Redis connections), so the next module's baseline is its own. A
    listener already serving an earlier module's handles is that module's business."""
    busy = {id(listener) for listener in _LISTENERS.values() if listener._thread is not None}
    yield
    gc.collect()
    for listener in list(_LISTENERS.values()):
        if id(listener) in busy:
            continue
        thread = listener._thread
        if thread is not None:
            thread.join(HANG)
            assert not thread.is_alive(), f"the listener of {listener._app.main!r} still runs"


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


# The handle's final state -> what Celery's backend may hold then (see check_race).
BACKEND_MAY_HOLD = {
    S.SUCCESS: {"SUCCESS", "REVOKED"},
    S.FAILURE: {"FAILURE", "REVOKED"},
    S.REVOKED: {"REVOKED", "STARTED"},
}


def check_race(h: ab.Result[Any], calls: Calls, app: Any, batch: AwaitBatch, seen: Counter[str]) -> S:
    """The oracle, and the backend as one more reader. Celery's backend is not one: a revoke's
    REVOKED can be written over a SUCCESS (its "never overwrite SUCCESS" check is a read, then a
    write), and a child killed just after it stored STARTED leaves STARTED for ever. So the rule
    checked here is the one that matters: an outcome the task stored is never lost, that is, the
    handle never ends REVOKED where the backend holds the task's SUCCESS or FAILURE."""
    outcome = read_sync(h)
    assert calls.ran.wait(HANG), f"callbacks of {h!r}: {calls.seen}"
    calls.check(h.state)
    batch.add(h, outcome)
    stored = AsyncResult(h.id, app=app)
    allowed = {
        S.SUCCESS: {"SUCCESS", "REVOKED"},
        S.FAILURE: {"FAILURE", "REVOKED"},
        S.REVOKED: {"REVOKED", "STARTED"},
    }
    if stored.state not in allowed[h.state]:
        raise AssertionError(
            f"{h!r} ended {h.state} ({h.get(timeout=0, propagate=False)!r}); the backend holds "
            f"{stored.state} since {stored.date_done} (now {datetime.now(UTC)})"
        )
    if stored.state != h.state:
        seen[f"backend {stored.state} over {h.state}"] += 1
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
            st = check_race(h, calls, tasks.app, batch, seen)
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
            st = check_race(h, calls, tasks.app, batch, seen)
            if st is S.SUCCESS:
                assert h.get() == i + 1
            else:
                assert st is S.REVOKED, (st, h.info)
            seen[str(st)] += 1
            stairs.update(cancel_won=st is S.REVOKED)
    finally:
        batch.close()
    report(record_property, "celery_queued", QUEUED_RACES, seen)
    assert_shares(seen, QUEUED_RACES)


# -- faults: a worker child killed, raising callbacks ---------------------------------------------

KILLS = 5 * SOAK  # each costs Celery's worker_lost_wait (1 s here) and a new child
CALLBACK_HANDLES = 100 * SOAK


def note_time(into: list[datetime], _h: ab.Result[Any]) -> None:
    into.append(datetime.now(UTC))


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
        h.add_done_callback(partial(note_time, ended))
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
    gates = [f"gate-{uuid.uuid4().hex}" for _ in range(PER_RUN)]  # one per task: each let go in turn
    handles = [ab.wrap(tasks.gated_add.delay(i, 1, gate)) for i, gate in enumerate(gates)]
    modes = [("unawaited", "awaited", "shielded")[i % 3] for i in range(PER_RUN)]
    asyncio.run(abandon(handles, modes))
    client = redis.Redis.from_url(tasks.app.conf.result_backend)
    # The revoked tasks' gates stay shut until their handles have ended: a running one that a gate let
    # go before the worker killed it would finish, and its value must then win (a race, not the point).
    for gate, mode in zip(gates, modes, strict=True):
        if mode != "awaited":
            client.rpush(gate, 1)
    for h, mode in zip(handles, modes, strict=True):
        if mode == "awaited":
            settled(h, HANG)
    for gate, mode in zip(gates, modes, strict=True):
        if mode == "awaited":  # nothing waits on them now, unless a revoke missed its task
            client.rpush(gate, 1)
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


SIGINT_ITERATIONS = 10 * SOAK
SIGINT_WITHIN = 0.5  # the bound: Ctrl-C surfaces within 0.5 s
FORK_ITERATIONS = 10 * SOAK
EXIT_WITHIN = 10.0  # the bound: a child exits within 10 s

CELERY_CHILD_PRELUDE = """
    import asyncio, os, sys, threading, traceback
    import redis
    import celery_app
    import asyncbridge as ab

    tasks = celery_app.tasks  # Redis, from ABTEST_REDIS_URL, or the file-system default
    def say(line):
        os.write(1, f"{line}\\n".encode())
"""


@pytest.fixture
def child_env(redis_celery: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Child interpreters import the tests' Celery app, on the session's Redis; its URL."""
    url = str(redis_celery.app.conf.result_backend)
    monkeypatch.setenv("ABTEST_REDIS_URL", url)
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))
    return url


SIGINT_IN_CELERY_GET = """
    threading.Thread(target=announce, daemon=True).start()
    client = redis.Redis.from_url(os.environ["ABTEST_REDIS_URL"])
    for i in range(int(sys.argv[1])):
        gate = f"gate-{os.getpid()}-{i}"
        h = ab.wrap(tasks.gated_add.delay(i, 1, gate))
        _blocking.block_hook = hook
        try:
            h.get(timeout=30)
            say("not interrupted")
        except KeyboardInterrupt as e:
            frames = [f.name for f in traceback.extract_tb(e.__traceback__)]
            say(f"caught in-get={'get' in frames} done={h.done()}")
        finally:
            _blocking.block_hook = original
        client.rpush(gate, 1)
        say(f"final {h.get(timeout=30) == i + 1} {h.state}")
"""


def test_sigint_while_main_thread_waits_on_a_celery_handle(child_env: str, tmp_path: pathlib.Path) -> None:
    """SIGINT while the main thread is in ``get()`` on a Celery handle: KeyboardInterrupt within 0.5 s,
    the handle untouched (its task still runs), a later get() returns the value; clean exit."""
    code = textwrap.dedent(BLOCKED_IN_GET_SEAM + CELERY_CHILD_PRELUDE + SIGINT_IN_CELERY_GET)
    with Child(code, str(SIGINT_ITERATIONS), stderr=tmp_path / "err") as child:
        lines, slowest = sigint_each_ready(child, SIGINT_ITERATIONS)
        rc, err = child.finish()
    assert lines == ["caught in-get=True done=False", "final True SUCCESS"] * SIGINT_ITERATIONS, lines
    assert (rc, err) == (0, "")
    print(f"\nSIGINT in a Celery get(): {SIGINT_ITERATIONS} interrupts, slowest {slowest * 1000:.1f} ms")
    assert slowest < SIGINT_WITHIN


def test_fork_child_uses_celery_and_keeps_pending_handles(redis_celery: Any) -> None:
    """fork() while the listener thread serves a pending handle: the child sends and reads a new task
    within 5 s, and its copy of the pending handle still ends (a new listener picks it up); so does
    the parent's."""
    tasks = redis_celery
    client = redis.Redis.from_url(tasks.app.conf.result_backend)
    slowest = 0.0
    for i in range(FORK_ITERATIONS):
        gate = f"gate-{uuid.uuid4().hex}"
        pending = ab.wrap(tasks.gated_add.delay(i, 1, gate))
        assert listener_for(tasks.app)._thread is not None

        def body(i: int = i, gate: str = gate, pending: ab.Result[int] = pending) -> str:
            t0 = time.monotonic()
            assert ab.wrap(tasks.add.delay(i, 2)).get(timeout=TERMINAL_WITHIN) == i + 2
            redis.Redis.from_url(tasks.app.conf.result_backend).rpush(gate, 1)
            assert pending.get(timeout=TERMINAL_WITHIN) == i + 1
            return f"ok {time.monotonic() - t0:.3f}"

        report = fork_child(body)
        slowest = max(slowest, float(report.split()[1]))
        assert pending.get(timeout=HANG) == i + 1
    client.close()
    print(f"\nfork with Celery handles pending: {FORK_ITERATIONS} children, slowest {slowest * 1000:.0f} ms")
    assert slowest < TERMINAL_WITHIN


EXIT_VARIANTS = {
    # name -> (script, expected stdout lines)
    "redis-pending-with-callback": (
        """
        h = ab.wrap(tasks.gated_add.delay(1, 1, os.environ["ABTEST_GATE"]))
        h.add_done_callback(lambda h: say(f"callback {h.state}"))
        say("main ends")
        """,
        ["main ends"],
    ),
    "redis-get-timed-out": (
        """
        h = ab.wrap(tasks.gated_add.delay(1, 1, os.environ["ABTEST_GATE"]))
        try:
            h.get(timeout=0.1)
        except TimeoutError:
            say(f"timed out {h.state in ('PENDING', 'STARTED')}")
        """,
        ["timed out True"],
    ),
    "redis-awaited-by-asyncio-run": (
        """
        h = ab.wrap(tasks.gated_add.delay(1, 1, os.environ["ABTEST_GATE"]))
        async def main():
            try:
                await asyncio.wait_for(ab.shield(h), 0.1)
            except TimeoutError:
                say(f"wait_for timed out {h.state in ('PENDING', 'STARTED')}")
        asyncio.run(main())
        """,
        ["wait_for timed out True"],
    ),
    "file-system-poller-pending": (
        """
        import uuid
        from celery import Celery
        app = celery_app.make_app(celery_app._config()).app
        h = ab.AsyncResult(str(uuid.uuid4()), app=app)
        h.add_done_callback(lambda h: say(f"callback {h.state}"))
        say("main ends")
        """,
        ["main ends"],
    ),
}


@pytest.mark.parametrize("name", list(EXIT_VARIANTS))
def test_interpreter_exit_with_celery_handles_pending(
    name: str, child_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """A child interpreter exits with Celery handles pending (their tasks wait on a gate the test opens
    only after the exit): within 10 s, stderr clean, no callback run (the task goes on in the cluster;
    the handle was the process's)."""
    code, expected = EXIT_VARIANTS[name]
    gate = f"gate-{uuid.uuid4().hex}"
    monkeypatch.setenv("ABTEST_GATE", gate)
    if name.startswith("file-system"):
        monkeypatch.delenv("ABTEST_REDIS_URL")
        monkeypatch.setenv("ABTEST_DIR", str(tmp_path))
    script = textwrap.dedent(CELERY_CHILD_PRELUDE) + textwrap.dedent(code)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c", script],
        capture_output=True,
        text=True,
        timeout=3 * EXIT_WITHIN,
    )
    elapsed = time.monotonic() - t0
    client = redis.Redis.from_url(child_env)
    client.rpush(gate, 1)  # the worker's child goes back to work
    client.close()
    print(f"\ncelery exit variant {name}: rc {proc.returncode} in {elapsed:.2f} s")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.splitlines() == expected
    assert elapsed < EXIT_WITHIN


DEADLOCK_ITERATIONS = 20 * SOAK


def test_deadlock_guard_for_celery_handles(redis_celery: Any) -> None:
    """Inside a running Celery task, ``get()`` follows Celery's rule: RuntimeError at once (the task
    fails with it). On an event loop's thread, a Celery handle's ``get()`` completes: its task needs
    no loop of this process (asyncbridge refuses only a get() that could never return)."""
    tasks = redis_celery
    for i in range(DEADLOCK_ITERATIONS):
        inner = tasks.add.delay(i, 1)
        exc = ab.wrap(tasks.get_inside_a_task.delay(inner.id)).exception(timeout=HANG)
        assert isinstance(exc, RuntimeError) and "inside a running Celery task" in str(exc), exc

    async def on_the_loop(h: ab.Result[int]) -> tuple[int, int]:
        return h.get(timeout=HANG), await h

    values = [asyncio.run(on_the_loop(ab.wrap(tasks.add.delay(i, 1)))) for i in range(DEADLOCK_ITERATIONS)]
    assert values == [(i + 1, i + 1) for i in range(DEADLOCK_ITERATIONS)]
    n = DEADLOCK_ITERATIONS
    print(f"\ncelery deadlock guard: {n} refusals inside tasks, {n} gets on a loop thread")


# -- leaks ------------------------------------------------------------------------------------------

LEAK_ROUNDS = 3 * SOAK
PER_ROUND = 200


def listener_stopped(app: Any) -> bool:
    """Wait (hang guard) until the app's listener thread has ended; it does once nothing is pending."""
    thread = listener_for(app)._thread
    if thread is not None:
        thread.join(HANG)
    return listener_for(app)._thread is None


def test_celery_handles_leave_no_thread_fd_or_handle_behind(redis_celery: Any) -> None:
    """Rounds of Celery handles, read or dropped unread: after each, the listener thread ends, the
    process's file descriptors are back to their baseline (the pub/sub connection is closed), every
    dropped handle is collected, and the listener holds no task id."""
    tasks = redis_celery
    me = psutil.Process()

    def one_round(r: int) -> None:
        kept = [ab.wrap(tasks.add.delay(i, r)) for i in range(PER_ROUND)]
        dropped = [weakref.ref(ab.wrap(tasks.add.delay(i, r))) for i in range(PER_ROUND)]
        assert [h.get(timeout=HANG) for h in kept] == [i + r for i in range(PER_ROUND)]
        del kept
        gc.collect()
        alive = sum(ref() is not None for ref in dropped)
        assert alive == 0, f"{alive} dropped handles still alive"
        assert listener_stopped(tasks.app), "the listener thread did not end with nothing pending"
        assert not listener_for(tasks.app)._pending
        gc.collect()

    one_round(-1)  # warm-up: the Redis client's connection pools reach their size
    fds = me.num_fds()
    counts = []
    for r in range(LEAK_ROUNDS):
        one_round(r)
        counts.append(me.num_fds())
    print(f"\ncelery leaks: {LEAK_ROUNDS} rounds x {2 * PER_ROUND} handles: fds {fds} -> {counts}")
    # Celery's Redis client pool may open one more connection when two threads happen to use it at
    # once; a leak grows with every round.
    assert max(counts) <= fds + 1, (fds, counts)


# -- bad input -------------------------------------------------------------------------------------

ID_EXAMPLES = 200 * SOAK


def test_the_celery_engine_refuses_what_a_worker_could_never_run(redis_celery: Any) -> None:
    """``@task(engine=app)`` on a lambda or a callable object without ``name=``: TypeError at once,
    saying the worker finds tasks by name (a nested function has one: app factories define them).
    An argument JSON cannot encode: TypeError naming it, and nothing is sent."""

    class Callable_:
        def __call__(self, x: int) -> int:
            return x

    for fn in (lambda x: x, Callable_()):
        with pytest.raises(TypeError, match="a Celery worker finds a task by its name"):
            ab.task(engine=redis_celery.app)(fn)
    square = redis_celery.square  # add(x, y), registered through ab.task(engine=app)
    with pytest.raises(TypeError, match=r"argument 1 of Celery task .*add \(object\).*'json'"):
        square.delay(1, object())
    with pytest.raises(TypeError, match=r"argument 'y' of Celery task .*add \(set\).*'json'"):
        square.delay(1, y={2})
    assert square.delay(1, 2).get(timeout=HANG) == 3  # and the engine still works


@settings(max_examples=ID_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(task_id=st.one_of(st.text(max_size=300), st.from_regex(r"[\x00-\x7f]{0,300}", fullmatch=True)))
def test_any_task_id_gets_a_clear_error_or_a_pending_handle(celery_worker: Any, task_id: str) -> None:
    """Any string as a task id on the file-system backend (which keys results by file name): a clear
    TypeError/ValueError naming the id, or a PENDING handle whose get(timeout=0) times out; the
    poller serving the app keeps reading every other handle."""
    refused: Exception | None = None
    try:
        h: ab.Result[Any] = ab.AsyncResult(task_id, app=celery_worker.app)
    except (TypeError, ValueError) as exc:
        refused = exc
    if refused is not None:
        assert "task id" in str(refused), refused
        return
    with pytest.raises(TimeoutError):
        h.get(timeout=0)
    assert h.state is S.PENDING


def test_the_poller_outlives_every_id_tried(celery_worker: Any, caplog: pytest.LogCaptureFixture) -> None:
    """After the ids above: a real task on the same app completes, and the poller warned of nothing."""
    odd: list[ab.Result[Any]] = [
        ab.AsyncResult(t, app=celery_worker.app) for t in ("\N{SNOWMAN}" * 60, " ", "..", "-" * 200)
    ]
    with caplog.at_level(logging.WARNING, logger="asyncbridge"):
        assert ab.wrap(celery_worker.add.delay(20, 22)).get(timeout=HANG) == 42
    assert all(h.state is S.PENDING for h in odd)
    assert not [r for r in caplog.records if r.name == "asyncbridge"], caplog.records
