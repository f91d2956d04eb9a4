"""concurrent.futures.Future through the handle: state truth, cancel both ways, shutdown."""
# mypy: disable-error-code="comparison-overlap,unreachable,func-returns-value"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read,
# and use `lambda: (a(), b())` to do two things in one callback)

from __future__ import annotations

import concurrent.futures as cf
import threading

import pytest

import asyncbridge as ab


def test_a_running_future_reports_started_and_running() -> None:
    with cf.ThreadPoolExecutor(1) as pool:
        started, gate = threading.Event(), threading.Event()
        fut = pool.submit(lambda: (started.set(), gate.wait(10))[1])
        h = ab.wrap(fut)
        assert started.wait(10)
        assert h.running() and h.state is ab.State.STARTED
        gate.set()
        assert h.get(10) is True
        assert h.state is ab.State.SUCCESS


def test_a_queued_future_is_pending_and_cancel_revokes_it() -> None:
    with cf.ThreadPoolExecutor(1) as pool:
        gate = threading.Event()
        pool.submit(gate.wait, 10)
        queued = pool.submit(lambda: "never")
        h = ab.wrap(queued)
        assert h.state is ab.State.PENDING
        assert h.cancel()
        assert queued.cancelled() and h.state is ab.State.REVOKED
        gate.set()


def test_cancel_cannot_reach_a_running_future_and_the_result_is_kept() -> None:
    with cf.ThreadPoolExecutor(1) as pool:
        started, gate = threading.Event(), threading.Event()
        fut = pool.submit(lambda: (started.set(), gate.wait(10), "kept")[2])
        h = ab.wrap(fut)
        assert started.wait(10)
        assert h.cancel()  # True: the request is recorded (cf.Future.cancel says False here)
        assert not fut.cancelled() and h.cancel_requested()
        gate.set()
        assert h.get(10) == "kept" and h.state is ab.State.SUCCESS


def test_future_cancelled_elsewhere_revokes_the_handle() -> None:
    fut: cf.Future[int] = cf.Future()
    h = ab.wrap(fut)
    fut.cancel()
    assert h.state is ab.State.REVOKED
    with pytest.raises(cf.CancelledError):
        h.get(0)


def test_shutdown_cancel_futures_revokes_queued_handles() -> None:
    pool = cf.ThreadPoolExecutor(1)
    gate = threading.Event()
    running = ab.wrap(pool.submit(gate.wait, 10))
    queued = [ab.wrap(pool.submit(int, i)) for i in range(5)]
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    pool.shutdown(wait=True)
    assert running.get(10) is True
    assert all(h.state is ab.State.REVOKED for h in queued)


def test_failure_keeps_the_exception_object() -> None:
    fut: cf.Future[int] = cf.Future()
    h = ab.wrap(fut)
    err = ValueError("from the pool")
    fut.set_exception(err)
    assert h.exception() is err and h.failed()


@pytest.mark.anyio
async def test_await_a_pending_future_completed_by_a_thread() -> None:
    with cf.ThreadPoolExecutor(1) as pool:
        gate = threading.Event()
        h = ab.wrap(pool.submit(lambda: (gate.wait(10), 42)[1]))
        gate.set()
        assert await h == 42


class _OwnFuture(cf.Future[object]):
    """A cf.Future subclass, as pebble's and loky's are: wrapped through its own methods."""

    def running(self) -> bool:
        self.asked = True
        return super().running()


FUTURE_TYPES = [pytest.param(cf.Future, id="stdlib"), pytest.param(_OwnFuture, id="subclass")]


@pytest.mark.parametrize("make", FUTURE_TYPES)
def test_a_future_done_before_it_is_wrapped_gives_a_done_handle(make: type[cf.Future[object]]) -> None:
    ok, failed, cancelled = make(), make(), make()
    ok.set_result("value")
    err = KeyError("gone")
    failed.set_exception(err)
    cancelled.cancel()
    h_ok, h_failed, h_cancelled = ab.wrap(ok), ab.wrap(failed), ab.wrap(cancelled)
    assert h_ok.state is ab.State.SUCCESS and h_ok.get(0) == "value"
    assert h_failed.state is ab.State.FAILURE and h_failed.exception() is err
    assert h_cancelled.state is ab.State.REVOKED and h_cancelled.cancelled()
    assert not h_ok.cancel()  # done: nothing to cancel


@pytest.mark.parametrize("make", FUTURE_TYPES)
def test_a_future_that_starts_after_it_is_wrapped_is_seen_started(make: type[cf.Future[object]]) -> None:
    fut = make()
    h = ab.wrap(fut)
    assert h.state is ab.State.PENDING
    assert fut.set_running_or_notify_cancel()
    assert h.state is ab.State.STARTED and h.running()
    assert h.cancel()  # the request is recorded, but a running future is out of reach
    assert not fut.cancelled() and h.state is ab.State.STARTED
    fut.set_result(7)
    assert h.get(0) == 7
    if make is _OwnFuture:
        assert fut.asked  # the subclass's own running() was asked


@pytest.mark.parametrize("make", FUTURE_TYPES)
def test_a_running_future_wrapped_is_started_at_once(make: type[cf.Future[object]]) -> None:
    fut = make()
    fut.set_running_or_notify_cancel()
    h = ab.wrap(fut)
    assert h.state is ab.State.STARTED
    fut.set_exception(OSError("late"))
    assert isinstance(h.exception(), OSError)


@pytest.mark.parametrize("make", FUTURE_TYPES)
def test_cancelling_the_handle_of_a_pending_future_cancels_the_future(make: type[cf.Future[object]]) -> None:
    fut = make()
    h = ab.wrap(fut)
    assert h.cancel()
    assert fut.cancelled() and h.state is ab.State.REVOKED
    assert not fut.set_running_or_notify_cancel()  # an executor now skips it


@pytest.mark.parametrize("make", FUTURE_TYPES)
def test_a_future_completed_by_many_threads_racing_the_wrap_is_never_lost(
    make: type[cf.Future[object]],
) -> None:
    # The future completes while wrap() binds to it: every handle must end with the value.
    for _ in range(2000):
        fut = make()
        go = threading.Barrier(2)

        def finish(f: cf.Future[object] = fut, barrier: threading.Barrier = go) -> None:
            barrier.wait()
            f.set_result("raced")

        t = threading.Thread(target=finish)
        t.start()
        go.wait()
        h = ab.wrap(fut)
        t.join()
        assert h.get(5) == "raced"
