"""asyncio's own functions take handles of every kind, as they take asyncio futures.

Each handle here is finished by another thread (a pool thread, a process pool's manager thread, the
Celery listener) *after* the asyncio function has registered its callbacks, which is the case that
used to hang ``asyncio.wait``: asyncio registers a callback that touches its loop without waking it,
and a ``concurrent.futures`` callback runs in the completing thread. Every scenario runs with the
loop's debug mode on (under asyncio and uvloop), and nothing may be logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import multiprocessing
import multiprocessing.managers
import pathlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop
import workers

import asyncbridge as ab

#: (handle, release): the work finishes once release() is called, from any thread.
Gated = tuple[ab.Result[Any], Callable[[], None]]


class Kind:
    """Makes handles of one kind of work whose end the test decides."""

    name = ""

    def gated(self, value: str) -> Gated:
        raise NotImplementedError

    def failing(self, message: str) -> Gated:
        raise NotImplementedError


def _wait_then(gate: threading.Event, value: str, error: str | None) -> str:
    assert gate.wait(30), "the test never released its work"
    if error is not None:
        raise workers.CustomError(error)
    return value


class ThreadKind(Kind):
    name = "thread"

    def gated(self, value: str) -> Gated:
        gate = threading.Event()
        return ab.run_in_thread(_wait_then, gate, value, None), gate.set

    def failing(self, message: str) -> Gated:
        gate = threading.Event()
        return ab.run_in_thread(_wait_then, gate, "", message), gate.set


class FutureKind(Kind):
    name = "cf"

    def __init__(self, pool: cf.ThreadPoolExecutor) -> None:
        self.pool = pool

    def gated(self, value: str) -> Gated:
        gate = threading.Event()
        return ab.wrap(self.pool.submit(_wait_then, gate, value, None)), gate.set

    def failing(self, message: str) -> Gated:
        gate = threading.Event()
        return ab.wrap(self.pool.submit(_wait_then, gate, "", message)), gate.set


class ProcessKind(Kind):
    name = "process"

    def __init__(self, manager: multiprocessing.managers.SyncManager) -> None:
        self.manager = manager

    def gated(self, value: str) -> Gated:
        gate = self.manager.Event()
        return ab.run_in_process(workers.released_outcome, gate, value), gate.set

    def failing(self, message: str) -> Gated:
        gate = self.manager.Event()
        return ab.run_in_process(workers.released_outcome, gate, "", message), gate.set


class CeleryKind(Kind):
    name = "celery"

    def __init__(self, tasks: Any, tmp_path: pathlib.Path) -> None:
        self.tasks = tasks
        self.tmp_path = tmp_path

    def gated(self, value: str) -> Gated:
        from test_celery import make_fifo, release

        fifo = make_fifo(self.tmp_path)
        # release() blocks until the task opens its pipe: from a thread, never from the loop
        return ab.wrap(self.tasks.rendezvous.delay(fifo)), lambda: _in_thread(release, fifo, value)

    def failing(self, message: str) -> Gated:
        # not gated: the listener thread reports the failure whenever the worker stores it
        return ab.wrap(self.tasks.fail.delay(message)), lambda: None


def _in_thread(fn: Callable[..., object], *args: object) -> None:
    threading.Thread(target=fn, args=args, daemon=True).start()


@pytest.fixture(scope="module")
def manager() -> Iterator[multiprocessing.managers.SyncManager]:
    with multiprocessing.Manager() as m:
        yield m


@pytest.fixture(scope="module")
def thread_pool() -> Iterator[cf.ThreadPoolExecutor]:
    with cf.ThreadPoolExecutor(8, thread_name_prefix="asyncbridge-test") as pool:
        yield pool


@pytest.fixture(params=["thread", "cf", "process", "celery"])
def kind(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Kind:
    if request.param == "thread":
        return ThreadKind()
    if request.param == "cf":
        return FutureKind(request.getfixturevalue("thread_pool"))
    if request.param == "process":
        return ProcessKind(request.getfixturevalue("manager"))
    return CeleryKind(request.getfixturevalue("celery_worker"), tmp_path)


@pytest.fixture(params=["asyncio", "uvloop"])
def run_debug(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[Runner]:
    """Run a coroutine on a new loop in debug mode; afterwards, nothing may have been logged."""

    def run(main: Coroutine[Any, Any, None]) -> None:
        factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop
        with asyncio.Runner(debug=True, loop_factory=factory) as runner:
            # A slow callback (a Celery send, a manager round trip) is not what this checks
            runner.get_loop().slow_callback_duration = 30
            runner.run(main)

    caplog.set_level(logging.DEBUG, logger="asyncio")
    caplog.set_level(logging.DEBUG, logger="asyncbridge")
    yield run
    logged = [r for r in caplog.records if r.name in ("asyncio", "asyncbridge") and r.levelno >= logging.INFO]
    assert not logged, [r.getMessage() for r in logged]


Runner = Callable[[Coroutine[Any, Any, None]], None]


# typeshed types asyncio.wait() for asyncio futures only: the ignores below say so, not a fault.


def release_soon(*releases: Callable[[], None]) -> None:
    """Release the work once the running coroutine next yields: after the asyncio function it is
    about to await has registered its callbacks."""
    loop = asyncio.get_running_loop()
    for release in releases:
        loop.call_soon(release)


def test_wait_for_all(kind: Kind, run_debug: Runner) -> None:
    async def main() -> None:
        (a, free_a), (b, free_b) = kind.gated("a"), kind.gated("b")
        release_soon(free_a, free_b)
        done, pending = await asyncio.wait([a, b], timeout=60)  # type: ignore[type-var]
        assert done == {a, b} and not pending
        assert (a.result(), b.result()) == ("a", "b")

    run_debug(main())


def test_wait_for_the_first_completed(kind: Kind, run_debug: Runner) -> None:
    async def main() -> None:
        (a, free_a), (b, free_b) = kind.gated("a"), kind.gated("b")
        release_soon(free_a)
        done, pending = await asyncio.wait([a, b], timeout=60, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        assert done == {a} and pending == {b}
        release_soon(free_b)
        done, pending = await asyncio.wait(pending, timeout=60, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        assert done == {b} and not pending

    run_debug(main())


def test_wait_for_the_first_exception(kind: Kind, run_debug: Runner) -> None:
    async def main() -> None:
        (ok, free_ok), (bad, free_bad) = kind.gated("ok"), kind.failing("boom")
        release_soon(free_bad)
        done, pending = await asyncio.wait([ok, bad], timeout=60, return_when=asyncio.FIRST_EXCEPTION)  # type: ignore[type-var]
        assert bad in done and ok in pending
        assert "boom" in str(bad.exception())
        free_ok()
        assert await ok == "ok"

    run_debug(main())


def test_as_completed_yields_in_the_order_they_finish(kind: Kind, run_debug: Runner) -> None:
    async def main() -> None:
        (a, free_a), (b, free_b) = kind.gated("a"), kind.gated("b")
        seen = []
        release_soon(free_b)
        for next_done in asyncio.as_completed([a, b], timeout=60):
            seen.append(await next_done)
            if len(seen) == 1:
                free_a()
        assert seen == ["b", "a"]

    run_debug(main())


def test_gather_wait_for_shield_and_timeout(kind: Kind, run_debug: Runner) -> None:
    async def main() -> None:
        (a, free_a), (b, free_b) = kind.gated("a"), kind.gated("b")
        release_soon(free_a, free_b)
        assert list(await asyncio.gather(a, b)) == ["a", "b"]
        (c, free_c), (d, free_d), (e, free_e) = kind.gated("c"), kind.gated("d"), kind.gated("e")
        release_soon(free_c)
        assert await asyncio.wait_for(c, 60) == "c"
        release_soon(free_d)
        assert await asyncio.shield(d) == "d"
        release_soon(free_e)
        async with asyncio.timeout(60):
            assert await e == "e"

    run_debug(main())


def test_a_task_group_awaits_handles(kind: Kind, run_debug: Runner) -> None:
    async def main() -> None:
        (a, free_a), (b, free_b) = kind.gated("a"), kind.gated("b")

        async def read(h: ab.Result[Any]) -> Any:
            return await h

        release_soon(free_a, free_b)
        async with asyncio.TaskGroup() as tg:
            ta, tb = tg.create_task(read(a)), tg.create_task(read(b))
        assert (ta.result(), tb.result()) == ("a", "b")

    run_debug(main())


def test_cf_wait_and_as_completed_keep_working(kind: Kind) -> None:
    (a, free_a), (b, free_b) = kind.gated("a"), kind.gated("b")
    free_b()
    seen = []
    for f in cf.as_completed([a, b], timeout=60):
        seen.append(f.result())
        if len(seen) == 1:
            free_a()
    assert seen == ["b", "a"]
    done, pending = cf.wait([a, b], timeout=60)
    assert done == {a, b} and not pending


def test_a_plain_callback_registered_on_a_loop_still_runs_in_the_completing_thread() -> None:
    """Only asyncio's own callbacks move to the loop: a user's follows cf's rule."""

    async def main() -> None:
        gate = threading.Event()
        h = ab.run_in_thread(_wait_then, gate, "x", None)
        ran_in: list[str] = []
        called = threading.Event()

        def record(_h: ab.Result[str]) -> None:
            ran_in.append(threading.current_thread().name)
            called.set()

        h.add_done_callback(record)
        gate.set()
        await h
        assert called.wait(30)
        assert ran_in != [threading.current_thread().name]

    asyncio.run(main())
