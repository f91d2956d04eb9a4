"""Thread work: run_in_thread, context variables, checkpoint/cancel_requested, the shared pool."""
# mypy: disable-error-code="comparison-overlap,unreachable,func-returns-value"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read,
# and use `lambda: (a(), b())` to do two things in one callback)

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextvars
import inspect
import threading
from typing import Any

import anyio
import pytest

import asyncbridge as ab
from asyncbridge import _threads

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def test_every_argument_goes_to_the_function() -> None:
    def f(fn: object, /, *args: object, timeout: object = None, **kwargs: object) -> tuple[object, ...]:
        return fn, args, timeout, kwargs

    h = ab.run_in_thread(f, "fn", 1, 2, timeout=3, executor=4)
    assert h.get(10) == ("fn", (1, 2), 3, {"executor": 4})


def test_runs_on_a_named_pool_thread() -> None:
    name = ab.run_in_thread(lambda: threading.current_thread().name).get(10)
    assert name.startswith("asyncbridge-worker-")


def test_context_variables_are_copied_in_not_back() -> None:
    def work() -> str:
        seen = request_id.get()
        request_id.set("changed in the thread")
        return seen

    token = request_id.set("req-42")
    try:
        assert ab.run_in_thread(work).get(10) == "req-42"
        assert request_id.get() == "req-42"
    finally:
        request_id.reset(token)


def test_exception_keeps_type_object_and_traceback() -> None:
    def work() -> None:
        raise KeyError("missing")

    h = ab.run_in_thread(work)
    with pytest.raises(KeyError) as info:
        h.get(10)
    assert h.exception() is info.value
    assert "in work" in (h.traceback or "")


def test_base_exception_in_work_fails_only_that_handle() -> None:
    def work() -> None:
        raise KeyboardInterrupt

    h = ab.run_in_thread(work)
    with pytest.raises(KeyboardInterrupt):
        h.get(10)
    assert ab.run_in_thread(lambda: "still serving").get(10) == "still serving"


def test_cancel_pending_work_never_runs_it() -> None:
    gate = threading.Event()
    ran: list[int] = []
    # Fill the pool, so the next item stays queued.
    blockers = [ab.run_in_thread(gate.wait, 10) for _ in range(_threads.POOL._max)]
    queued = ab.run_in_thread(ran.append, 1)
    assert queued.cancel()
    assert queued.state is ab.State.REVOKED  # never claimed: revoked at once
    gate.set()
    for b in blockers:
        assert b.get(10) is True
    ab.run_in_thread(lambda: None).get(10)  # the queue has moved past the revoked item
    assert ran == []


def test_cancel_reaches_running_thread_work_through_checkpoint() -> None:
    started, resume = threading.Event(), threading.Event()

    def work() -> str:
        started.set()
        resume.wait(10)  # the test acts while the work is provably running
        ab.checkpoint()  # raises: the request was recorded before resume
        return "unreachable"

    h = ab.run_in_thread(work)
    assert started.wait(10)
    accepted = h.cancel()
    assert accepted and not h.done()  # recorded; REVOKED only once the work stops
    assert h.state is ab.State.STARTED
    resume.set()
    with pytest.raises(cf.CancelledError):
        h.get(timeout=10)
    assert h.state is ab.State.REVOKED


def test_work_that_ignores_cancel_keeps_its_result() -> None:
    started, resume = threading.Event(), threading.Event()

    def work() -> str:
        started.set()
        resume.wait(10)
        return "done anyway"

    h = ab.run_in_thread(work)
    assert started.wait(10)
    assert h.cancel()
    resume.set()
    assert h.get(10) == "done anyway"
    assert h.state is ab.State.SUCCESS


def test_cancel_requested_lets_work_stop_on_its_own_terms() -> None:
    started, resume = threading.Event(), threading.Event()

    def work() -> str:
        started.set()
        resume.wait(10)
        return "stopped cleanly" if ab.cancel_requested() else "ran to the end"

    h = ab.run_in_thread(work)
    assert started.wait(10)
    h.cancel()
    resume.set()
    assert h.get(10) == "stopped cleanly"


def test_cancelled_raised_without_a_request_is_a_failure() -> None:
    def work() -> None:
        raise ab.Cancelled("raised by hand")

    h = ab.run_in_thread(work)
    with pytest.raises(ab.Cancelled):
        h.get(10)
    assert h.state is ab.State.FAILURE


def test_checkpoint_and_cancel_requested_outside_work_are_harmless() -> None:
    ab.checkpoint()
    assert ab.cancel_requested() is False


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="needs a callable, not int"):
        ab.run_in_thread(3)  # type: ignore[arg-type]

    async def coro_fn() -> None:
        pass

    coro = coro_fn()
    with pytest.raises(TypeError, match="not a coroutine; use asyncbridge.spawn"):
        ab.run_in_thread(coro)  # type: ignore[arg-type]
    assert inspect.getcoroutinestate(coro) == "CORO_CLOSED"  # so no "never awaited" warning


def test_an_async_function_passed_as_work_fails_clearly() -> None:
    async def coro_fn() -> int:
        return 1

    h = ab.run_in_thread(coro_fn)  # the mistake under test
    with pytest.raises(TypeError, match="returned a coroutine, which a thread cannot run"):
        h.get(10)  # type: ignore[unused-coroutine]


def test_work_waiting_on_work_in_its_own_full_pool_completes() -> None:
    size = _threads.POOL._max

    def outer(i: int) -> int:
        return ab.run_in_thread(lambda: i * 2).get(30)  # queued behind a full pool of outers

    handles = [ab.run_in_thread(outer, i) for i in range(size * 2)]
    assert [h.get(30) for h in handles] == [i * 2 for i in range(size * 2)]


@pytest.mark.anyio
async def test_await_thread_work() -> None:
    h = ab.run_in_thread(str.upper, "done")
    assert await h == "DONE"
    assert h.state is ab.State.SUCCESS


@pytest.mark.anyio
async def test_awaiter_cancel_reaches_cooperative_thread_work() -> None:
    started = threading.Event()

    def work() -> None:
        started.set()
        while True:
            ab.checkpoint()
            if started.wait(0.001):  # a tick of real work
                pass

    h = ab.run_in_thread(work)
    with anyio.move_on_after(0.05):
        await h
    with pytest.raises((asyncio.CancelledError, cf.CancelledError)):
        await ab.shield(h)
    assert h.state is ab.State.REVOKED


@pytest.mark.anyio
async def test_many_concurrent_thread_calls() -> None:
    results: list[Any] = [None] * 500

    async def one(i: int) -> None:
        results[i] = await ab.run_in_thread(pow, i, 2)

    async with anyio.create_task_group() as tg:
        for i in range(500):
            tg.start_soon(one, i)
    assert results == [i * i for i in range(500)]
