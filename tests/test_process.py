"""Process work: values and errors across the boundary, crashes, cancellation, start methods."""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read)

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import multiprocessing.managers
import signal
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import workers

import asyncbridge as ab


@pytest.fixture(scope="module")
def manager() -> Iterator[multiprocessing.managers.SyncManager]:
    """Cross-process events that can travel as arguments (proxies pickle; raw mp.Events do not)."""
    with multiprocessing.Manager() as m:
        yield m


@pytest.fixture(scope="module")
def pool() -> Iterator[ab.ProcessPool]:
    p = ab.ProcessPool(2)
    yield p
    p.shutdown(wait=True, cancel_futures=True)


def test_values_and_arguments_cross_the_boundary(pool: ab.ProcessPool) -> None:
    assert pool.submit(workers.square, 12).get(30) == 144
    h = pool.submit(workers.describe, 1, "two", fn=3, timeout=4)
    assert h.get(30) == ((1, "two"), {"fn": 3, "timeout": 4})
    assert h.state is ab.State.SUCCESS
    assert repr(h).endswith("SUCCESS process describe()>")


def test_run_in_process_uses_the_shared_pool() -> None:
    assert ab.run_in_process(workers.square, 5).get(60) == 25
    assert ab.run_in_process(workers.pid).get(60) != multiprocessing.current_process().pid


def test_an_exception_keeps_its_type_and_the_worker_traceback(pool: ab.ProcessPool) -> None:
    h = pool.submit(workers.raise_custom, "bad input")
    with pytest.raises(workers.CustomError, match="bad input") as info:
        h.get(30)
    assert isinstance(info.value.__cause__, ab.RemoteTraceback)
    text = h.traceback
    assert text is not None
    assert "raise CustomError(message)  # the source line" in text
    assert "in raise_custom" in text


def test_an_unpicklable_exception_comes_back_as_runtime_error(pool: ab.ProcessPool) -> None:
    h = pool.submit(workers.raise_unpicklable)
    exc = h.exception(30)
    assert isinstance(exc, RuntimeError)
    assert "workers.Unpicklable: local only" in str(exc)
    assert "raise Unpicklable" in (h.traceback or "")


def test_sys_exit_in_the_worker_fails_only_the_handle(pool: ab.ProcessPool) -> None:
    h = pool.submit(workers.sys_exit, 4)
    exc = h.exception(30)
    assert isinstance(exc, SystemExit) and exc.code == 4
    assert pool.submit(workers.square, 2).get(30) == 4


@pytest.mark.parametrize(
    ("target", "arg", "how"),
    [
        (workers.exit_with, 3, "exited with code 3"),
        (workers.kill_self, signal.SIGKILL, "killed by signal SIGKILL"),
        (workers.kill_self, signal.SIGTERM, "killed by signal SIGTERM"),
        (workers.segfault, None, "killed by signal SIGSEGV"),
    ],
)
def test_a_dying_worker_fails_only_its_task(pool: ab.ProcessPool, target: Any, arg: Any, how: str) -> None:
    h = pool.submit(target) if arg is None else pool.submit(target, arg)
    exc = h.exception(30)
    assert isinstance(exc, ab.WorkerCrashed), exc
    assert how in str(exc) and f"worker process {exc.pid} died" in str(exc)
    assert h.state is ab.State.FAILURE
    assert pool.submit(workers.square, 3).get(30) == 9  # a new worker serves the next task


def test_a_crash_spares_the_other_running_task(pool: ab.ProcessPool, manager: Any) -> None:
    started, release = manager.Event(), manager.Event()
    survivor = pool.submit(workers.wait_for, started, release)
    assert started.wait(30)
    victim = pool.submit(workers.exit_with, 9)
    assert isinstance(victim.exception(30), ab.WorkerCrashed)
    assert not survivor.done()  # ProcessPoolExecutor would have failed it with BrokenProcessPool
    release.set()
    assert survivor.get(30) == "released"


def test_unpicklable_arguments_fail_at_the_call_naming_them(pool: ab.ProcessPool) -> None:
    with pytest.raises(TypeError, match="cannot send the function .*lambda"):
        pool.submit(lambda: 1)
    with pytest.raises(TypeError, match=r"cannot send argument 1 \(<generator"):
        pool.submit(workers.describe, 1, (i for i in range(3)))
    with pytest.raises(TypeError, match="cannot send argument key=<generator"):
        pool.submit(workers.describe, key=(i for i in range(3)))
    with pytest.raises(TypeError, match="needs a callable, not int"):
        pool.submit(3)  # type: ignore[arg-type]
    assert pool.submit(workers.square, 4).get(30) == 16


def test_an_unpicklable_result_fails_the_handle_naming_it(pool: ab.ProcessPool) -> None:
    exc = pool.submit(workers.return_unpicklable).exception(30)
    assert isinstance(exc, TypeError)
    assert "the result of return_unpicklable() could not be sent back" in str(exc)
    exc = pool.submit(workers.return_bad_on_load).exception(30)
    assert isinstance(exc, TypeError)
    assert "could not be unpickled in the parent" in str(exc)
    assert pool.submit(workers.square, 5).get(30) == 25


def test_started_is_reported_when_the_worker_really_starts(manager: Any) -> None:
    solo = ab.ProcessPool(1)
    try:
        started, release = manager.Event(), manager.Event()
        first = solo.submit(workers.wait_for, started, release)
        second = solo.submit(workers.square, 6)
        assert started.wait(30)
        assert first.state is ab.State.STARTED and first.running()
        assert second.state is ab.State.PENDING  # queued behind the only worker
        release.set()
        assert second.get(30) == 36
    finally:
        solo.shutdown()


def test_cancel_queued_work_never_starts_it(manager: Any) -> None:
    solo = ab.ProcessPool(1)
    try:
        started, release = manager.Event(), manager.Event()
        first = solo.submit(workers.wait_for, started, release)
        ran = manager.Event()
        queued = solo.submit(workers.wait_for, ran, release)
        assert started.wait(30)
        assert queued.cancel() and queued.state is ab.State.REVOKED
        release.set()
        assert first.get(30) == "released"
        assert solo.submit(workers.square, 1).get(30) == 1  # the queue moved past the revoked task
        assert not ran.is_set()
    finally:
        solo.shutdown()


def test_cancel_running_cooperative_work_stops_at_its_checkpoint(pool: ab.ProcessPool, manager: Any) -> None:
    started = manager.Event()
    h = pool.submit(workers.cooperative, started)
    assert started.wait(30)
    worker_pid = pool.submit(workers.pid).get(30)  # a second worker: the first one is busy
    assert h.cancel()
    with pytest.raises(cf.CancelledError):
        h.get(30)
    assert h.state is ab.State.REVOKED
    assert worker_pid != 0 and pool.submit(workers.square, 7).get(30) == 49


def test_cancel_running_work_that_never_checks_terminates_its_worker(
    pool: ab.ProcessPool, manager: Any
) -> None:
    started = manager.Event()
    h = pool.submit(workers.stubborn, started)
    assert started.wait(30)
    assert h.cancel()
    with pytest.raises(cf.CancelledError):
        h.get(30)
    assert h.state is ab.State.REVOKED
    assert pool.submit(workers.square, 8).get(30) == 64  # the pool replaced the worker


def test_cancel_escalates_to_kill_when_terminate_is_ignored(pool: ab.ProcessPool, manager: Any) -> None:
    started = manager.Event()
    h = pool.submit(workers.ignore_sigterm_and_hang, started)
    assert started.wait(30)
    h.cancel()
    with pytest.raises(cf.CancelledError):
        h.get(30)
    assert pool.submit(workers.square, 9).get(30) == 81


def test_cancel_requested_lets_process_work_stop_on_its_own_terms(manager: Any) -> None:
    patient = ab.ProcessPool(1, cancel_grace=60)  # no terminate: the work answers itself
    try:
        started, release = manager.Event(), manager.Event()
        h = patient.submit(workers.asks_politely, started, release)
        assert started.wait(30)
        h.cancel()
        release.set()
        assert h.get(30) == "stopped cleanly"  # it returned a value: SUCCESS, kept
    finally:
        patient.shutdown()


def test_shutdown_cancel_futures_revokes_queued_and_running_work(manager: Any) -> None:
    solo = ab.ProcessPool(1)
    started = manager.Event()
    running = solo.submit(workers.stubborn, started)
    queued = [solo.submit(workers.square, i) for i in range(3)]
    assert started.wait(30)
    solo.shutdown(wait=True, cancel_futures=True)
    assert running.state is ab.State.REVOKED
    assert all(h.state is ab.State.REVOKED for h in queued)
    with pytest.raises(RuntimeError, match="shut down"):
        solo.submit(workers.square, 1)


def test_shutdown_without_cancel_finishes_queued_work() -> None:
    solo = ab.ProcessPool(1)
    handles = [solo.submit(workers.square, i) for i in range(5)]
    solo.shutdown(wait=True)
    assert [h.get(0) for h in handles] == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_pool_sizes_are_rejected(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_workers must be a positive int"):
        ab.ProcessPool(bad)


def test_bad_cancel_grace_is_rejected() -> None:
    with pytest.raises(ValueError, match="cancel_grace must be a number of seconds"):
        ab.ProcessPool(1, cancel_grace=-1)


METHODS = [m for m in ("fork", "forkserver", "spawn") if m in multiprocessing.get_all_start_methods()]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_each_start_method_runs_fails_and_survives_crashes(method: str) -> None:
    p = ab.ProcessPool(1, start_method=method)
    try:
        assert p.start_method == method
        assert p.submit(workers.square, 11).get(60) == 121
        with pytest.raises(workers.CustomError):
            p.submit(workers.raise_custom, "x").get(60)
        assert isinstance(p.submit(workers.exit_with, 5).exception(60), ab.WorkerCrashed)
        assert p.submit(workers.square, 2).get(60) == 4
    finally:
        p.shutdown()


def test_handles_mix_with_cf_wait(pool: ab.ProcessPool) -> None:
    handles = [pool.submit(workers.square, i) for i in range(6)]
    done, not_done = cf.wait(handles, timeout=60)
    assert not not_done and {h.result() for h in done} == {i * i for i in range(6)}


@pytest.mark.anyio
async def test_await_process_work(pool: ab.ProcessPool) -> None:
    assert await pool.submit(workers.square, 13) == 169
    with pytest.raises(workers.CustomError):
        await pool.submit(workers.raise_custom, "async")


@pytest.mark.anyio
async def test_awaiter_timeout_cancels_process_work(pool: ab.ProcessPool, manager: Any) -> None:
    started = manager.Event()
    h = pool.submit(workers.stubborn, started)
    assert await anyio.to_thread.run_sync(started.wait, 30)
    with anyio.move_on_after(0.05):
        await h
    assert h.cancel_requested()
    assert isinstance(await anyio.to_thread.run_sync(lambda: h.get(30, propagate=False)), cf.CancelledError)


def test_python_version_note() -> None:
    # The default start method is chosen explicitly, whatever the platform default.
    assert ab.ProcessPool(1).start_method == ("forkserver" if sys.platform != "win32" else "spawn")
