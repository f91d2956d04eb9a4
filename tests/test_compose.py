"""gather, as_completed, wait, race and then, over mixed kinds of work."""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read)

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from typing import Any

import anyio
import pytest
import workers

import asyncbridge as ab


async def later(value: Any, release: anyio.Event | None = None) -> Any:
    if release is not None:
        await release.wait()
    await anyio.lowlevel.checkpoint()
    return value


def blocked(gate: threading.Event, value: Any = None) -> Any:
    gate.wait(30)
    return value


def test_gather_keeps_the_order_given_across_kinds_of_work() -> None:
    gate = threading.Event()
    slow_thread = ab.run_in_thread(blocked, gate, "thread")
    proc = ab.run_in_process(workers.square, 4)
    fut: cf.Future[str] = cf.Future()
    g = ab.gather(slow_thread, proc, ab.spawn(later("coroutine")), fut)
    assert g.state is ab.State.STARTED
    fut.set_result("future")
    gate.set()
    assert g.get(60) == ["thread", 16, "coroutine", "future"]


def test_gather_of_nothing_is_an_empty_list() -> None:
    assert ab.gather().get(0) == []


def test_the_first_failure_ends_the_gather_and_cancels_the_rest() -> None:
    gate = threading.Event()
    survivor_started = threading.Event()

    def survivor() -> str:
        survivor_started.set()
        while not gate.wait(0.001):
            ab.checkpoint()
        return "unreachable"

    keep = ab.run_in_thread(survivor)
    assert survivor_started.wait(10)
    bad: ab.Result[None] = ab.Result()
    g = ab.gather(keep, bad)
    bad.set_exception(KeyError("first"))
    with pytest.raises(KeyError, match="first"):
        g.get(10)
    with pytest.raises(cf.CancelledError):
        keep.get(10)


def test_return_exceptions_collects_every_outcome() -> None:
    bad: ab.Result[int] = ab.Result()
    revoked: ab.Result[int] = ab.Result()
    g = ab.gather(ab.run_in_thread(int, "1"), bad, revoked, return_exceptions=True)
    err = ValueError("kept")
    bad.set_exception(err)
    revoked.cancel()
    values = g.get(10)
    assert values[0] == 1 and values[1] is err and isinstance(values[2], cf.CancelledError)


def test_cancelling_a_gather_cancels_its_members() -> None:
    members = [ab.Result[int]() for _ in range(3)]
    g = ab.gather(*members)
    assert g.cancel()
    assert all(m.state is ab.State.REVOKED for m in members)
    assert g.state is ab.State.REVOKED


def test_gather_rejects_what_is_not_work() -> None:
    with pytest.raises(
        TypeError,
        match="gather\\(\\) takes handles, futures, coroutines, awaitables or Celery results, not int",
    ):
        ab.gather(1)  # type: ignore[call-overload]


@pytest.mark.anyio
async def test_await_a_gather_on_both_backends() -> None:
    assert await ab.gather(ab.run_in_thread(int, "2"), ab.spawn(later(3))) == [2, 3]


# -- as_completed --------------------------------------------------------------------------------


def test_as_completed_yields_the_objects_given_in_finishing_order() -> None:
    first: cf.Future[int] = cf.Future()
    second: ab.Result[int] = ab.Result()
    third: cf.Future[int] = cf.Future()
    it = iter(ab.as_completed([first, second, third]))
    second.set_result(2)
    assert next(it) is second
    third.set_result(3)
    assert next(it) is third
    first.set_result(1)
    assert next(it) is first
    with pytest.raises(StopIteration):
        next(it)


def test_as_completed_timeout_raises_builtin_timeout_error() -> None:
    done: ab.Result[int] = ab.Result()
    done.set_result(1)
    never: ab.Result[int] = ab.Result()
    seen: list[ab.Result[int]] = []
    with pytest.raises(TimeoutError, match="1 of the objects given to as_completed\\(\\) did not finish"):
        seen.extend(ab.as_completed([done, never], timeout=0.05))
    assert seen == [done]
    never.cancel()


@pytest.mark.anyio
async def test_async_for_as_completed() -> None:
    release = anyio.Event()
    slow = ab.spawn(later("slow", release))
    fast = ab.run_in_thread(int, "5")
    order = []
    async for h in ab.as_completed([slow, fast]):
        order.append(await h)
        release.set()
    assert order == [5, "slow"]


@pytest.mark.anyio
async def test_async_for_as_completed_times_out() -> None:
    never: ab.Result[int] = ab.Result()

    async def drain() -> None:
        async for _ in ab.as_completed([never], timeout=0.05):
            pass

    with pytest.raises(TimeoutError):
        await drain()
    never.cancel()


def test_as_completed_over_many_handles() -> None:
    handles = [ab.Result[int]() for _ in range(10_000)]
    it = ab.as_completed(handles)
    for i, h in enumerate(handles):
        h.set_result(i)
    assert sorted(h.get() for h in it) == list(range(10_000))


# -- wait ----------------------------------------------------------------------------------------


def test_wait_all_completed_and_first_completed() -> None:
    a: ab.Result[int] = ab.Result()
    b: cf.Future[int] = cf.Future()
    first = ab.wait([a, b], return_when=ab.FIRST_COMPLETED)
    everything = ab.wait([a, b])
    assert not first.done()
    a.set_result(1)
    assert first.get(10) == ({a}, {b})
    assert not everything.done()
    b.set_result(2)
    assert everything.get(10) == ({a, b}, set())


def test_wait_first_exception_ignores_successes() -> None:
    ok: ab.Result[int] = ab.Result()
    bad: ab.Result[int] = ab.Result()
    pending: ab.Result[int] = ab.Result()
    w = ab.wait([ok, bad, pending], return_when=ab.FIRST_EXCEPTION)
    ok.set_result(1)
    assert not w.done()
    bad.set_exception(ValueError())
    assert w.get(10) == ({ok, bad}, {pending})


def test_wait_timeout_completes_with_the_sets_as_they_are() -> None:
    a: ab.Result[int] = ab.Result()
    a.set_result(1)
    b: ab.Result[int] = ab.Result()
    assert ab.wait([a, b], timeout=0.05).get(10) == ({a}, {b})
    assert ab.wait([a, b], timeout=0).get(0) == ({a}, {b})
    assert not b.done()  # waiting never cancels


def test_wait_constants_are_concurrent_futures_own() -> None:
    assert (ab.FIRST_COMPLETED, ab.FIRST_EXCEPTION, ab.ALL_COMPLETED) == (
        cf.FIRST_COMPLETED,
        cf.FIRST_EXCEPTION,
        cf.ALL_COMPLETED,
    )
    with pytest.raises(ValueError, match="return_when must be"):
        ab.wait([], return_when="SOMETIMES")


@pytest.mark.anyio
async def test_await_wait() -> None:
    a = ab.run_in_thread(int, "1")
    done, pending = await ab.wait([a])
    assert done == {a} and not pending


# -- race ----------------------------------------------------------------------------------------


def test_race_first_success_wins_and_the_rest_are_cancelled() -> None:
    gate = threading.Event()
    loser = ab.run_in_thread(blocked, gate, "late")
    failing: ab.Result[str] = ab.Result()
    winner: ab.Result[str] = ab.Result()
    r = ab.race(loser, failing, winner)
    failing.set_exception(ValueError("a failure does not win"))
    assert not r.done()
    winner.set_result("first")
    assert r.get(10) == "first"
    assert loser.cancel_requested()
    gate.set()


def test_race_with_every_member_failing_raises_an_exception_group() -> None:
    a: ab.Result[int] = ab.Result()
    b: ab.Result[int] = ab.Result()
    r = ab.race(a, b)
    b.set_exception(KeyError("b"))
    a.cancel()
    with pytest.raises(ExceptionGroup) as info:
        r.get(10)
    assert [type(e) for e in info.value.exceptions] == [cf.CancelledError, KeyError]


def test_race_needs_members() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        ab.race()


@pytest.mark.anyio
async def test_race_coroutines() -> None:
    release = anyio.Event()
    assert await ab.race(later("slow", release), later("fast")) == "fast"


# -- then ----------------------------------------------------------------------------------------


def test_then_runs_a_sync_step_off_the_loop() -> None:
    h = ab.run_in_thread(int, "20").then(lambda v: (v * 2, threading.current_thread().name))
    value, where = h.get(10)
    assert value == 40 and where.startswith("asyncbridge-worker")


def test_then_with_an_async_step() -> None:
    async def double(v: int) -> int:
        await asyncio.sleep(0)
        return v * 2

    assert ab.spawn(later(21)).then(double).get(10) == 42


def test_failure_flows_through_a_chain_without_running_the_steps() -> None:
    ran: list[object] = []
    src: ab.Result[int] = ab.Result()
    tail = src.then(ran.append).then(ran.append)
    src.set_exception(KeyError("root"))
    with pytest.raises(KeyError, match="root"):
        tail.get(10)
    assert ran == []


def test_cancelling_a_chain_cancels_its_source() -> None:
    src: ab.Result[int] = ab.Result()
    tail = src.then(lambda v: v)
    assert tail.cancel()
    assert src.state is ab.State.REVOKED and tail.state is ab.State.REVOKED


def test_then_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="then\\(\\) needs a callable, not int"):
        ab.Result[int]().then(3)  # type: ignore[call-overload]
