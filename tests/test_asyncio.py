"""Coroutines and asyncio futures/tasks through the handle: spawn, wrap, cancel both ways."""
# mypy: disable-error-code="comparison-overlap,unreachable,func-returns-value"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read,
# and use `lambda: (a(), b())` to do two things in one callback)

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections.abc import Iterator
from typing import TypeVar

import anyio
import anyio.lowlevel
import pytest

import asyncbridge as ab

T = TypeVar("T")


async def echo(value: T) -> T:
    await anyio.lowlevel.checkpoint()
    return value


async def fail(msg: str) -> None:
    await anyio.lowlevel.checkpoint()
    raise ValueError(msg)


@pytest.fixture
def loop_in_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An asyncio loop running in its own thread, closed after the test."""
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, name="test-loop")
    t.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)
    loop.close()


# -- spawn from sync code: the background loop ---------------------------------------------------


def test_spawn_from_sync_code_runs_on_the_background_loop() -> None:
    async def where() -> str:
        await asyncio.sleep(0)
        return threading.current_thread().name

    h = ab.spawn(where())
    assert h.get(timeout=10) == "asyncbridge-loop"
    assert h.state is ab.State.SUCCESS


def test_spawn_failure_keeps_type_and_traceback() -> None:
    h = ab.spawn(fail("bad"))
    with pytest.raises(ValueError, match="bad") as info:
        h.get(10)
    assert h.failed()
    assert "in fail" in (h.traceback or "")
    assert info.value is h.exception()


def test_cancel_before_start_never_runs_the_coroutine() -> None:
    ran = threading.Event()
    blocking = threading.Event()
    gate = threading.Event()

    async def block_loop() -> None:
        blocking.set()
        gate.wait(10)  # holds the background loop so the next spawn stays queued

    async def body() -> None:
        ran.set()

    blocker = ab.spawn(block_loop())
    assert blocking.wait(10)
    h = ab.spawn(body())
    assert h.cancel()
    assert h.state is ab.State.REVOKED  # never claimed by the loop: revoked at once
    gate.set()
    blocker.get(10)
    ab.spawn(echo(None)).get(10)  # the loop has passed the queued start
    assert not ran.is_set()


def test_cancel_a_running_coroutine_reaches_the_task() -> None:
    started = threading.Event()
    cleaned = threading.Event()

    async def body() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    h = ab.spawn(body())
    assert started.wait(10)
    assert h.cancel()
    with pytest.raises(cf.CancelledError):
        h.get(10)
    assert cleaned.is_set()  # REVOKED only after the coroutine's cleanup ran (unlike cf's gh-105836)
    assert h.cancelled()


def test_a_coroutine_that_swallows_cancellation_keeps_its_result() -> None:
    started = threading.Event()

    async def stubborn() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "kept"
        return "unreachable"

    h = ab.spawn(stubborn())
    assert started.wait(10)
    assert h.cancel()
    assert h.get(10) == "kept" and h.state is ab.State.SUCCESS


def test_checkpoint_inside_a_spawned_coroutine_sees_its_handle() -> None:
    assigned = threading.Event()

    async def body() -> tuple[bool, bool]:
        assigned.wait(10)  # until `me` below exists
        before = ab.cancel_requested()
        me.cancel()  # the handle of this very coroutine, through the closure
        return before, ab.cancel_requested()

    me = ab.spawn(body())
    assigned.set()
    # cancel() inside the task: the task is cancelled at its next await, which never comes
    assert me.get(10) == (False, True)


def test_spawn_rejects_what_is_not_a_coroutine() -> None:
    with pytest.raises(TypeError, match="call it: spawn"):
        ab.spawn(echo)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a coroutine, not int"):
        ab.spawn(3)  # type: ignore[arg-type]


def test_get_inside_a_background_loop_callback_raises_instead_of_deadlocking() -> None:
    h = ab.spawn(asyncio.Event().wait())
    errors: list[BaseException] = []

    async def inner() -> None:
        try:
            h.get()
        except RuntimeError as exc:
            errors.append(exc)

    ab.spawn(inner()).get(10)
    assert "use 'await' here" in str(errors[0])
    h.cancel()
    with pytest.raises(cf.CancelledError):
        h.get(10)


# -- spawn and wrap in async code (both backends) ------------------------------------------------


@pytest.mark.anyio
async def test_spawn_in_async_code_and_await() -> None:
    h = ab.spawn(echo(5))
    assert h.state is ab.State.STARTED
    assert await h == 5


@pytest.mark.anyio
async def test_spawn_failure_is_raised_by_await() -> None:
    with pytest.raises(ValueError, match="async bad"):
        await ab.spawn(fail("async bad"))


@pytest.mark.anyio
async def test_get_on_the_loop_that_runs_the_work_raises_at_once() -> None:
    h = ab.spawn(anyio.sleep_forever())
    with pytest.raises(RuntimeError, match="could never return; use 'await' here"):
        h.get(timeout=5)
    h.cancel()
    with pytest.raises((asyncio.CancelledError, cf.CancelledError)):
        await ab.shield(h)
    assert h.cancelled()


@pytest.mark.anyio
async def test_timeout_of_an_awaiter_cancels_the_spawned_work() -> None:
    h = ab.spawn(anyio.sleep_forever())
    with anyio.move_on_after(0.01):
        await h
    with pytest.raises((asyncio.CancelledError, cf.CancelledError)):
        await ab.shield(h)
    assert h.state is ab.State.REVOKED


@pytest.mark.anyio
async def test_shielded_awaiter_timeout_leaves_the_spawned_work() -> None:
    release = anyio.Event()

    async def body() -> str:
        await release.wait()
        return "finished"

    h = ab.spawn(body())
    with anyio.move_on_after(0.01):
        await ab.shield(h)
    assert not h.done()
    release.set()
    assert await h == "finished"


@pytest.mark.anyio
async def test_spawned_work_sees_checkpoint_after_cancel() -> None:
    async def body() -> None:
        while True:
            ab.checkpoint()
            await anyio.lowlevel.checkpoint()

    h = ab.spawn(body())
    h.cancel()
    with pytest.raises((asyncio.CancelledError, cf.CancelledError)):
        await ab.shield(h)
    assert h.cancelled()


# -- asyncio-only: tasks, futures, other loops ---------------------------------------------------


def test_wrap_a_task_is_started_and_mirrors_it() -> None:
    async def main() -> None:
        task = asyncio.ensure_future(echo(3))
        h = ab.wrap(task)
        assert h.state is ab.State.STARTED
        assert await h == 3
        assert ab.wrap(task).get() == 3  # done already: no blocking, no loop trip

    asyncio.run(main())


def test_wrap_a_plain_future_is_pending_until_done() -> None:
    async def main() -> None:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        h = ab.wrap(fut)
        assert h.state is ab.State.PENDING
        fut.set_result(4)
        assert await h == 4

    asyncio.run(main())


def test_task_cancelled_elsewhere_revokes_the_handle_for_every_waiter() -> None:
    async def main() -> None:
        task = asyncio.ensure_future(asyncio.Event().wait())
        h = ab.wrap(task)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ab.shield(h)
        assert h.state is ab.State.REVOKED

    asyncio.run(main())

    # and a blocking waiter sees the cf flavour
    async def cancelled_elsewhere() -> ab.Result[bool]:
        task: asyncio.Task[bool] = asyncio.ensure_future(asyncio.Event().wait())
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        return ab.wrap(task)

    with pytest.raises(cf.CancelledError):
        asyncio.run(cancelled_elsewhere()).get(0)


def test_await_a_task_of_another_loop(loop_in_thread: asyncio.AbstractEventLoop) -> None:
    async def on_other_loop() -> str:
        await asyncio.sleep(0)
        return threading.current_thread().name

    task_handle = ab.wrap(asyncio.run_coroutine_threadsafe(on_other_loop(), loop_in_thread))

    async def main() -> str:
        return await task_handle

    assert asyncio.run(main()) == "test-loop"


def test_wrap_a_task_from_a_foreign_thread(loop_in_thread: asyncio.AbstractEventLoop) -> None:
    made = threading.Event()
    box: list[asyncio.Task[bool]] = []

    def make() -> None:
        box.append(loop_in_thread.create_task(asyncio.Event().wait()))
        made.set()

    loop_in_thread.call_soon_threadsafe(make)
    assert made.wait(10)
    h = ab.wrap(box[0])  # from the test's thread: binds through call_soon_threadsafe
    assert h.cancel()  # Task.cancel runs on its own loop
    with pytest.raises(cf.CancelledError):
        h.get(10)
    assert box[0].cancelled()


def test_get_from_another_loop_thread_blocks_and_completes(loop_in_thread: asyncio.AbstractEventLoop) -> None:
    h = ab.wrap(asyncio.run_coroutine_threadsafe(echo("x"), loop_in_thread))

    async def main() -> object:
        return h.get(10)  # documented: blocks this loop, but the work runs elsewhere

    assert asyncio.run(main()) == "x"


def test_wrap_a_future_of_a_closed_loop_fails_clearly() -> None:
    loop = asyncio.new_event_loop()
    fut: asyncio.Future[int] = loop.create_future()
    loop.close()
    h = ab.wrap(fut)
    with pytest.raises(RuntimeError, match="its event loop is closed"):
        h.get(0)


def test_asyncio_gather_wait_for_and_taskgroup_accept_handles() -> None:
    async def main() -> None:
        a = ab.run_in_thread(lambda: 1)
        b = ab.spawn(echo(2))
        assert list(await asyncio.gather(a, b)) == [1, 2]
        assert await asyncio.wait_for(ab.spawn(echo(3)), 10) == 3
        async with asyncio.TaskGroup() as tg:
            t = tg.create_task(_await(ab.run_in_thread(lambda: 4)))
        assert t.result() == 4
        assert await asyncio.shield(ab.spawn(echo(5))) == 5

    asyncio.run(main())


async def _await(h: ab.Result[int]) -> int:
    return await h


def test_asyncio_run_exiting_with_spawned_work_revokes_it() -> None:
    box: list[ab.Result[bool]] = []

    async def main() -> None:
        box.append(ab.spawn(asyncio.Event().wait()))
        await asyncio.sleep(0)

    asyncio.run(main())  # cancels the task left behind
    assert box[0].state is ab.State.REVOKED


# -- trio-only -----------------------------------------------------------------------------------


def test_spawn_under_trio_runs_in_the_trio_run_and_is_cancelled_with_it() -> None:
    import trio

    box: list[ab.Result[None]] = []

    async def main() -> str:
        h = ab.spawn(echo("trio"))
        box.append(ab.spawn(trio.sleep_forever()))  # noqa: ASYNC105  # spawn awaits it
        return await h

    result: str = trio.run(main)
    assert result == "trio"
    assert box[0].state is ab.State.REVOKED  # the run ended: its system tasks were cancelled


def test_get_inside_the_trio_run_of_the_work_raises() -> None:
    import trio

    async def main() -> None:
        h = ab.spawn(trio.sleep_forever())  # noqa: ASYNC105  # spawn awaits it
        with pytest.raises(RuntimeError, match="could never return"):
            h.get(1)
        h.cancel()
        with pytest.raises(cf.CancelledError):
            await h

    trio.run(main)


def test_get_on_work_of_a_loop_closed_by_hand_fails_instead_of_hanging() -> None:
    loop = asyncio.new_event_loop()
    fut: asyncio.Future[int] = loop.create_future()
    h = ab.wrap(fut)  # bound through call_soon_threadsafe: the loop never ran it
    loop.close()
    with pytest.raises(RuntimeError, match="can never finish: its event loop was closed"):
        h.get(timeout=10)


def test_a_result_finished_on_a_loop_closed_before_reporting_it_is_rescued() -> None:
    loop = asyncio.new_event_loop()

    async def make() -> tuple[asyncio.Future[int], ab.Result[int]]:
        fut = loop.create_future()
        return fut, ab.wrap(fut)

    fut, h = loop.run_until_complete(make())
    fut.set_result(5)  # schedules the handle's done-callback, which the closed loop never runs
    loop.close()
    assert h.get(timeout=10) == 5


@pytest.mark.parametrize("outcome", ["value", "error"])
def test_a_task_awaited_through_its_handle_on_its_own_loop_reads_done_afterwards(outcome: str) -> None:
    """``await wrap(task)`` on the task's loop reads the task directly and leaves the handle lazy;
    whoever reads the handle afterwards (state, get, callbacks, cf.wait) finds it done."""

    async def work() -> str:
        await asyncio.sleep(0)
        if outcome == "error":
            raise KeyError("from the task")
        return "v"

    async def main() -> ab.Result[str]:
        h = ab.wrap(asyncio.get_running_loop().create_task(work()))
        if outcome == "value":
            assert await h == "v"
        else:
            with pytest.raises(KeyError):
                await h
        return h

    h = asyncio.run(main())
    seen: list[ab.Result[str]] = []
    h.add_done_callback(seen.append)
    assert seen == [h]
    assert cf.wait([h], timeout=0).done == {h}
    if outcome == "value":
        assert (h.state, h.get(timeout=0), h.info) == (ab.State.SUCCESS, "v", "v")
    else:
        assert h.state is ab.State.FAILURE and isinstance(h.exception(timeout=0), KeyError)
