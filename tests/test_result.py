"""The handle itself: states, outcome, get/result/exception, callbacks, cf compatibility, await.

Most tests use a blank ``ab.Result()``, completed by hand as an executor would, so each property is
checked on the state machine alone; the adapters have their own modules.
"""
# mypy: disable-error-code="comparison-overlap,unreachable,func-returns-value"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read,
# and use `lambda: (a(), b())` to do two things in one callback)

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import gc
import logging
import threading
import traceback
import weakref
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import asyncbridge as ab


def finish_from_thread(h: ab.Result[Any], value: object, go: threading.Event) -> threading.Thread:
    def run() -> None:
        go.wait(10)
        h.set_result(value)

    t = threading.Thread(target=run)
    t.start()
    return t


class Boom(Exception):
    pass


def failing() -> None:
    raise Boom("boom")


def failed_handle() -> ab.Result[None]:
    h: ab.Result[None] = ab.Result()
    try:
        failing()
    except Boom as exc:
        h.set_exception(exc)
    return h


# -- states --------------------------------------------------------------------------------------


def test_state_is_a_str_enum_with_celery_strings() -> None:
    assert [str(s) for s in ab.State] == [
        "PENDING",
        "STARTED",
        "PROGRESS",
        "RETRY",
        "SUCCESS",
        "FAILURE",
        "REVOKED",
    ]
    assert ab.State.SUCCESS == "SUCCESS"
    assert f"{ab.State.REVOKED}" == "REVOKED"


def test_async_result_is_result() -> None:
    assert ab.AsyncResult is ab.Result


def test_blank_handle_moves_forward_only() -> None:
    h: ab.Result[int] = ab.Result()
    assert h.state is ab.State.PENDING
    assert (h.done(), h.running(), h.ready(), h.info) == (False, False, False, None)
    assert h.set_running_or_notify_cancel()
    assert h.state is ab.State.STARTED and h.running()
    h.set_result(3)
    assert h.state is ab.State.SUCCESS and h.status == "SUCCESS"
    assert (h.done(), h.ready(), h.successful(), h.failed(), h.cancelled()) == (
        True,
        True,
        True,
        False,
        False,
    )
    assert h.info == 3 and h.traceback is None
    with pytest.raises(cf.InvalidStateError):
        h.set_result(4)
    with pytest.raises(cf.InvalidStateError):
        h.set_exception(ValueError())
    assert not h.cancel()
    assert h.get() == 3


def test_set_running_after_cancel_reports_false() -> None:
    h: ab.Result[int] = ab.Result()
    assert h.cancel()
    assert h.cancelled() and h.state is ab.State.REVOKED
    assert not h.set_running_or_notify_cancel()


def test_set_exception_needs_an_exception() -> None:
    h: ab.Result[int] = ab.Result()
    with pytest.raises(TypeError, match="needs an exception, not str"):
        h.set_exception("nope")  # type: ignore[arg-type]


# -- id, repr ------------------------------------------------------------------------------------


def test_id_is_lazy_unique_and_stable_across_threads() -> None:
    handles = [ab.Result[int]() for _ in range(100)]
    seen: list[list[str]] = [[], []]
    go = threading.Barrier(2)

    def read(slot: int) -> None:
        go.wait()
        seen[slot].extend(h.id for h in handles)

    threads = [threading.Thread(target=read, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen[0] == seen[1]
    assert len(set(seen[0])) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in seen[0])
    assert handles[0].task_id == handles[0].id


def test_repr_shows_id_state_and_kind() -> None:
    h = ab.run_in_thread(int, "7")
    h.get(10)
    assert repr(h) == f"<Result {h.id[:8]}… SUCCESS thread int()>"


def test_handle_refuses_pickling_with_a_hint() -> None:
    import pickle

    with pytest.raises(TypeError, match="send its .id instead"):
        pickle.dumps(ab.Result())


# -- get, result, exception ----------------------------------------------------------------------


def test_get_blocks_until_another_thread_completes() -> None:
    h: ab.Result[str] = ab.Result()
    go = threading.Event()
    t = finish_from_thread(h, "done", go)
    go.set()
    assert h.get(timeout=10) == "done"
    t.join()


def test_get_timeout_raises_builtin_timeout_error_and_leaves_the_work() -> None:
    h: ab.Result[int] = ab.Result()
    with pytest.raises(TimeoutError, match=r"did not finish within 0 s"):
        h.get(timeout=0)
    with pytest.raises(TimeoutError):
        h.result(timeout=0.01)
    with pytest.raises(TimeoutError):
        h.exception(timeout=0)
    assert h.state is ab.State.PENDING
    assert not h.wait(0)
    h.set_result(1)
    assert h.wait(0) and h.get(0) == 1


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan")])
def test_get_rejects_bad_timeouts(bad: float) -> None:
    with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0 or None"):
        ab.Result[int]().get(timeout=bad)


@pytest.mark.parametrize("bad", ["1", True, [1]])
def test_get_rejects_non_numbers(bad: Any) -> None:
    with pytest.raises(TypeError, match="timeout must be a number of seconds or None"):
        ab.Result[int]().get(timeout=bad)


def test_failure_raises_the_same_object_with_a_stable_traceback() -> None:
    h = failed_handle()
    assert h.state is ab.State.FAILURE and h.failed() and not h.successful()
    lengths = []
    seen = []
    for _ in range(5):
        with pytest.raises(Boom) as info:
            h.get()
        seen.append(info.value)
        lengths.append(len(traceback.extract_tb(info.value.__traceback__)))
    assert all(e is seen[0] for e in seen)
    assert len(set(lengths)) == 1, lengths  # cf.Future.result() grows by 3 frames per call
    assert "failing" in "".join(traceback.format_tb(seen[0].__traceback__))
    assert h.exception() is seen[0] and h.info is seen[0]
    assert h.get(propagate=False) is seen[0]
    text = h.traceback
    assert text is not None and "raise Boom" in text and text.endswith("Boom: boom\n")


def test_revoked_raises_cf_cancelled_error() -> None:
    h: ab.Result[int] = ab.Result()
    assert h.cancel()
    with pytest.raises(cf.CancelledError):
        h.get()
    with pytest.raises(cf.CancelledError):
        h.result(timeout=0)
    with pytest.raises(cf.CancelledError):
        h.exception()
    assert isinstance(h.get(propagate=False), cf.CancelledError)
    assert isinstance(h.info, cf.CancelledError)
    assert h.traceback is None and not h.failed()


def test_cancel_twice_returns_true_then_false_once_done() -> None:
    h: ab.Result[int] = ab.Result()
    h.set_running_or_notify_cancel()
    assert h.cancel() and h.cancel()  # running, no way to stop it: recorded, still True
    assert h.cancel_requested() and h.state is ab.State.STARTED
    h.set_result(5)  # the work ignored the request: its result is kept
    assert h.get() == 5 and not h.cancel()


# -- callbacks -----------------------------------------------------------------------------------


def test_callbacks_run_once_in_the_completing_thread() -> None:
    h: ab.Result[int] = ab.Result()
    calls: list[tuple[ab.Result[int], str]] = []
    h.add_done_callback(lambda r: calls.append((r, threading.current_thread().name)))
    go = threading.Event()
    t = threading.Thread(target=lambda: (go.wait(10), h.set_result(1)), name="completer")
    t.start()
    go.set()
    t.join()
    assert calls == [(h, "completer")]


def test_callback_added_after_completion_runs_at_once_in_the_adding_thread() -> None:
    h: ab.Result[int] = ab.Result()
    h.set_result(1)
    calls: list[str] = []
    h.add_done_callback(lambda r: calls.append(threading.current_thread().name))
    assert calls == [threading.current_thread().name]


def test_raising_callback_is_logged_and_the_others_run(caplog: pytest.LogCaptureFixture) -> None:
    h: ab.Result[int] = ab.Result()
    calls: list[int] = []

    def bad(_: ab.Result[int]) -> None:
        raise RuntimeError("callback failed")

    h.add_done_callback(lambda _: calls.append(1))
    h.add_done_callback(bad)
    h.add_done_callback(lambda _: calls.append(3))
    with caplog.at_level(logging.ERROR, logger="asyncbridge"):
        h.set_result(0)
    assert calls == [1, 3]
    [record] = caplog.records
    assert record.name == "asyncbridge" and "exception calling done-callback" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


def test_remove_done_callback_counts_and_prevents_the_call() -> None:
    h: ab.Result[int] = ab.Result()
    calls: list[str] = []

    def cb(_: ab.Result[int]) -> None:
        calls.append("cb")

    h.add_done_callback(cb)
    h.add_done_callback(cb)
    h.add_done_callback(lambda _: calls.append("other"))
    assert h.remove_done_callback(cb) == 2
    assert h.remove_done_callback(cb) == 0
    h.set_result(1)
    assert calls == ["other"]
    assert h.remove_done_callback(cb) == 0


def test_add_done_callback_rejects_bad_input() -> None:
    h: ab.Result[int] = ab.Result()
    with pytest.raises(TypeError, match="needs a callable, not int"):
        h.add_done_callback(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loop must be an asyncio event loop"):
        h.add_done_callback(print, loop="loop")  # type: ignore[arg-type]


def test_callback_with_loop_runs_on_that_loop_thread() -> None:
    loop = asyncio.new_event_loop()
    ran = threading.Event()
    where: list[int] = []
    t = threading.Thread(target=loop.run_forever)
    t.start()
    try:
        h: ab.Result[int] = ab.Result()
        h.add_done_callback(lambda _: (where.append(threading.get_ident()), ran.set()), loop=loop)
        h.set_result(1)
        assert ran.wait(10)
        assert where == [t.ident]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join()
        loop.close()


def test_callback_for_a_closed_loop_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    h: ab.Result[int] = ab.Result()
    h.add_done_callback(print, loop=loop)
    loop.close()
    with caplog.at_level(logging.ERROR, logger="asyncbridge"):
        h.set_result(1)
    assert "its event loop is closed" in caplog.text
    assert h.get() == 1


# -- concurrent.futures compatibility ------------------------------------------------------------


def test_cf_wait_and_as_completed_accept_handles_mixed_with_futures() -> None:
    with cf.ThreadPoolExecutor(2) as pool:
        gate = threading.Event()
        plain = pool.submit(gate.wait, 10)
        handle = ab.run_in_thread(gate.wait, 10)
        blank: ab.Result[int] = ab.Result()
        mixed: list[cf.Future[Any]] = [plain, handle, blank]
        done, pending = cf.wait(mixed, timeout=0)
        assert not done and pending == {plain, handle, blank}
        gate.set()
        done, pending = cf.wait(mixed[:2], timeout=10)
        assert done == {plain, handle} and not pending
        blank.set_result(1)
        assert set(cf.as_completed(mixed, timeout=10)) == {plain, handle, blank}


def test_cf_wait_first_exception_and_first_completed() -> None:
    ok: ab.Result[int] = ab.Result()
    bad: ab.Result[int] = ab.Result()
    go = threading.Event()

    def fail_later() -> None:
        go.wait(10)
        bad.set_exception(ValueError("x"))

    t = threading.Thread(target=fail_later)
    t.start()
    go.set()
    done, pending = cf.wait([ok, bad], timeout=10, return_when=cf.FIRST_EXCEPTION)
    t.join()
    assert done == {bad} and pending == {ok}
    ok.cancel()
    done, _ = cf.wait([ok], return_when=cf.FIRST_COMPLETED, timeout=10)
    assert done == {ok}


def test_as_completed_yields_in_completion_order() -> None:
    handles = [ab.Result[int]() for _ in range(3)]
    order: list[cf.Future[int]] = []
    it: Iterator[cf.Future[int]] = cf.as_completed(handles, timeout=10)
    for i in (2, 0, 1):
        handles[i].set_result(i)
        order.append(next(it))
    assert order == [handles[2], handles[0], handles[1]]


def test_asyncio_wrap_future_accepts_a_handle() -> None:
    h: ab.Result[int] = ab.Result()

    async def main() -> int:
        fut = asyncio.wrap_future(h)
        asyncio.get_running_loop().call_soon(h.set_result, 9)
        return await fut

    assert asyncio.run(main()) == 9


# -- await (both backends) -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_await_a_handle_completed_from_a_thread() -> None:
    h: ab.Result[str] = ab.Result()
    go = threading.Event()
    t = finish_from_thread(h, "value", go)
    go.set()
    assert await h == "value"
    t.join()


@pytest.mark.anyio
async def test_await_a_done_handle_returns_without_blocking() -> None:
    h: ab.Result[int] = ab.Result()
    h.set_result(1)
    assert await h == 1
    assert await h == 1


@pytest.mark.anyio
async def test_await_a_failed_handle_raises_the_original_exception() -> None:
    h = failed_handle()
    with pytest.raises(Boom) as info:
        await h
    assert info.value is h.exception()


@pytest.mark.anyio
async def test_await_a_revoked_handle(anyio_backend: tuple[str, object]) -> None:
    h: ab.Result[int] = ab.Result()
    h.cancel()
    # asyncio: asyncio.CancelledError, as awaiting a cancelled task; trio: the cf class, an
    # Exception, so it cannot be mistaken for trio's own cancel-scope Cancelled.
    expected = asyncio.CancelledError if anyio_backend[0] == "asyncio" else cf.CancelledError
    with pytest.raises(expected):
        await h


@pytest.mark.anyio
async def test_cancelled_awaiter_cancels_the_work_by_default() -> None:
    h: ab.Result[int] = ab.Result()
    h.set_running_or_notify_cancel()
    with anyio.move_on_after(0.01):
        await h
    assert h.cancel_requested()


@pytest.mark.anyio
async def test_shield_leaves_the_work_running() -> None:
    h: ab.Result[int] = ab.Result()
    with anyio.move_on_after(0.01):
        await ab.shield(h)
    assert not h.cancel_requested() and not h.done()
    h.set_result(2)
    assert await ab.shield(h) == 2


def test_shield_needs_a_handle() -> None:
    with pytest.raises(TypeError, match="needs an asyncbridge Result"):
        ab.shield(object())  # type: ignore[arg-type]


def test_await_outside_any_event_loop_is_a_clear_error() -> None:
    h: ab.Result[int] = ab.Result()
    gen = h.__await__()
    with pytest.raises(RuntimeError, match="awaited outside an asyncio event loop or a trio run"):
        next(gen)


@pytest.mark.anyio
async def test_many_awaiters_on_one_handle_all_get_the_value() -> None:
    h: ab.Result[int] = ab.Result()
    got: list[int] = []

    async def waiter() -> None:
        got.append(await ab.shield(h))

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        h.set_result(7)
    assert got == [7] * 50


def test_await_from_loops_in_several_threads() -> None:
    h: ab.Result[int] = ab.Result()
    results: list[int] = []
    ready = threading.Barrier(5)

    async def wait_for_it() -> int:
        loop = asyncio.get_running_loop()
        loop.call_soon(ready.wait)  # once this loop is waiting
        return await h

    threads = [threading.Thread(target=lambda: results.append(asyncio.run(wait_for_it()))) for _ in range(4)]
    for t in threads:
        t.start()
    ready.wait(10)
    h.set_result(11)
    for t in threads:
        t.join(10)
    assert results == [11] * 4


# -- only the work completes the handle it owns -----------------------------------------------------


async def _gated_coroutine(gate: threading.Event) -> str:
    await anyio.to_thread.run_sync(gate.wait, 30)
    return "the work's own"


def _owned_handles(gate: threading.Event, pool: cf.ThreadPoolExecutor) -> dict[str, ab.Result[Any]]:
    """A handle of each kind of work the package makes, every one waiting on ``gate``."""
    thread = ab.run_in_thread(lambda: (gate.wait(30), "the work's own")[1])
    return {
        "run_in_thread": thread,
        "spawn": ab.spawn(_gated_coroutine(gate)),
        "wrap(cf.Future)": ab.wrap(pool.submit(lambda: (gate.wait(30), "the work's own")[1])),
        "task": ab.task(engine="thread", name="gated")(lambda: (gate.wait(30), "the work's own")[1]).delay(),
        "then": thread.then(lambda value: value),
        "gather": ab.gather(ab.run_in_thread(lambda: (gate.wait(30), "the work's own")[1])),
    }


def test_outside_code_cannot_complete_a_handle_its_work_owns() -> None:
    gate = threading.Event()
    with cf.ThreadPoolExecutor(2) as pool:
        handles = _owned_handles(gate, pool)
        for kind, h in handles.items():
            for attempt in (
                functools.partial(h.set_result, "overwritten"),
                functools.partial(h.set_exception, Boom("overwritten")),
                h.set_running_or_notify_cancel,
            ):
                with pytest.raises(RuntimeError, match="belongs to its work") as info:
                    attempt()
                assert h.id[:8] in str(info.value), kind
        gate.set()
        outcomes = {kind: h.get(30) for kind, h in handles.items()}
    assert outcomes.pop("gather") == ["the work's own"]
    assert outcomes == dict.fromkeys(outcomes, "the work's own")


def test_a_blank_handle_is_completed_by_hand() -> None:
    h: ab.Result[int] = ab.Result()
    assert h.set_running_or_notify_cancel()
    h.set_result(7)
    assert h.get(0) == 7
    with pytest.raises(cf.InvalidStateError):
        h.set_result(8)
    assert type(h) is ab.Result and repr(h).startswith("<Result ")


# -- a failure no one reads is logged when its handle is collected -----------------------------------


async def _fails(boom: Boom) -> None:
    raise boom


def _raise_boom(boom: Boom) -> None:
    raise boom


class _SetOnRecord(logging.Handler):
    def __init__(self, event: threading.Event) -> None:
        super().__init__()
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "asyncbridge":
            self.event.set()


def _finished_and_dropped(
    make: Any, read: Any = None, *, message: str = "fire and forget", kept_elsewhere: bool = False
) -> None:
    """Run ``make(exception)`` to its end (its work raises that exception), apply ``read`` (or
    nothing), drop the handle, and return once the handle is collected and its failure either
    logged or released (the test may keep it ``kept_elsewhere``). The handle's last holder may be
    another thread, which logs the failure after the handle's weak references are told it died:
    waiting for the exception's release or its record makes the test's check see the final log.
    The record is awaited on the root logger, after pytest's own capturing handler there: a handler
    on the "asyncbridge" logger would run before that one, and the test could read the captured
    records while the logging thread had yet to reach it."""
    boom = Boom(message)
    settled = threading.Event()
    weakref.finalize(boom, settled.set)
    logger = logging.getLogger()
    on_record = _SetOnRecord(settled)
    logger.addHandler(on_record)
    try:
        h = make(boom)
        del boom
        done = threading.Event()
        h.add_done_callback(lambda _h: done.set())  # a callback is not a read, as in asyncio
        assert done.wait(30)
        if read is not None:
            read(h)
        collected = threading.Event()
        weakref.finalize(h, collected.set)
        del h
        # The work may still hold the handle for a moment after it ended (a spawned coroutine's
        # frame until its task finishes its step, the completing thread until it returns).
        last = collected if kept_elsewhere else settled
        for _ in range(500):
            gc.collect()
            if collected.wait(0.01) and last.wait(0.01):
                break
    finally:
        logger.removeHandler(on_record)
    assert collected.is_set(), "the handle was never collected"
    assert last.is_set(), "the failure was neither logged nor released"


def _unread_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    gc.collect()
    return [r for r in caplog.records if r.name == "asyncbridge" and "never retrieved" in r.getMessage()]


@pytest.mark.parametrize(
    "make",
    [
        lambda boom: ab.spawn(_fails(boom)),
        lambda boom: ab.run_in_thread(_raise_boom, boom),
        lambda boom: ab.task(engine="thread")(_raise_boom).delay(boom),
    ],
    ids=["spawn", "run_in_thread", "task"],
)
def test_a_failure_no_one_read_is_logged_when_its_handle_is_collected(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _finished_and_dropped(make)
    [record] = _unread_records(caplog)
    assert record.levelno == logging.ERROR
    assert "failed and its exception was never retrieved" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], Boom)
    assert "fire and forget" in str(record.exc_info[1])
    assert "_raise_boom" in record.getMessage() or "_fails" in record.getMessage()


@pytest.mark.parametrize(
    "read",
    [
        lambda h: h.get(0, propagate=False),
        lambda h: h.exception(0),
        lambda h: _raises(Boom, h.result, 0),
        lambda h: h.info,
        lambda h: h.traceback,
        lambda h: _raises(Boom, asyncio.run, _await(h)),
        lambda h: ab.gather(h, return_exceptions=True).get(30),
    ],
    ids=["get-propagate-False", "exception", "result", "info", "traceback", "await", "gather"],
)
def test_a_failure_that_was_read_is_not_logged(read: Any, caplog: pytest.LogCaptureFixture) -> None:
    _finished_and_dropped(lambda boom: ab.run_in_thread(_raise_boom, boom), read)
    assert _unread_records(caplog) == []


def test_a_composition_carries_the_failure_of_its_members(caplog: pytest.LogCaptureFixture) -> None:
    """gather() read its member's failure: only the gather's own handle, unread, reports it."""
    _finished_and_dropped(lambda boom: ab.gather(ab.run_in_thread(_raise_boom, boom)))
    [record] = _unread_records(caplog)
    assert "gather" in record.getMessage()


def test_revoked_work_and_wrapped_futures_are_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()
    h = ab.run_in_thread(gate.wait, 30)
    h.cancel()
    gate.set()
    h.wait(30)
    del h
    with cf.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(_raise_boom, Boom("the caller holds the future"))
        _finished_and_dropped(lambda _boom: ab.wrap(fut), kept_elsewhere=True)
        assert isinstance(fut.exception(), Boom)
    assert _unread_records(caplog) == []


async def _await(h: ab.Result[Any]) -> Any:
    return await h


def _raises(kind: type[BaseException], fn: Any, *args: Any) -> None:
    with pytest.raises(kind):
        fn(*args)


def test_a_lone_callback_and_one_with_a_loop_are_removed_and_never_run() -> None:
    # One callback is kept without a list, one with a loop as a pair: both shapes are removable.
    loop = asyncio.new_event_loop()
    try:
        ran: list[object] = []
        h: ab.Result[int] = ab.Result()
        h.add_done_callback(ran.append)
        assert h.remove_done_callback(ran.append) == 1
        assert h.remove_done_callback(ran.append) == 0
        h.add_done_callback(ran.append, loop=loop)
        h.add_done_callback(ran.append)
        assert h.remove_done_callback(ran.append) == 2
        h.set_result(1)
        loop.run_until_complete(asyncio.sleep(0))  # a loop callback that was left would run here
        assert ran == []
    finally:
        loop.close()
