"""Process work: values and errors across the boundary, crashes, cancellation, start methods."""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read)

from __future__ import annotations

import concurrent.futures as cf
import copyreg
import functools
import multiprocessing
import multiprocessing.managers
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import fault_workers
import pytest
import workers

import asyncbridge as ab
from asyncbridge._process_slots import SENT, _Task

HANG = 30.0  # a hang guard only


@pytest.fixture(scope="module")
def manager() -> Iterator[multiprocessing.managers.SyncManager]:
    """Cross-process events that can travel as arguments (proxies pickle; raw mp.Events do not)."""
    with multiprocessing.Manager() as m:
        yield m


@pytest.fixture(scope="module")
def pool() -> Iterator[ab.ProcessPool]:
    p = ab.ProcessPool(2)
    yield p
    p.shutdown(wait=True, cancel_futures=True, cancel_running=True)


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


def test_shutdown_cancel_futures_revokes_queued_work_and_lets_running_work_finish(manager: Any) -> None:
    """Issue 9, item 6: as ``ProcessPoolExecutor.shutdown(cancel_futures=True)``: the queued tasks are
    revoked, the running one finishes and delivers its value, and ``wait=True`` returns after it."""
    solo = ab.ProcessPool(1)
    started, release = manager.Event(), manager.Event()
    running = solo.submit(workers.asks_politely, started, release)  # says whether it was asked to stop
    queued = [solo.submit(workers.square, i) for i in range(3)]
    assert started.wait(30)
    closer = threading.Thread(target=solo.shutdown, kwargs={"wait": True, "cancel_futures": True})
    closer.start()
    try:
        done, _ = cf.wait(queued, timeout=30)  # revoked by shutdown() itself, before it waits
        assert done == set(queued) and all(h.state is ab.State.REVOKED for h in queued)
        assert closer.is_alive() and not running.done()  # shutdown(wait=True) waits for it
        assert not running.cancel_requested()
        with pytest.raises(RuntimeError, match="shut down"):
            solo.submit(workers.square, 1)
    finally:
        release.set()
        closer.join(30)
    assert not closer.is_alive()
    assert running.state is ab.State.SUCCESS and running.get(0) == "ran to the end"


def test_shutdown_cancel_running_stops_running_work_too(manager: Any) -> None:
    """``cancel_running=True`` also cancels the running tasks, as ``handle.cancel()`` does (their
    ``checkpoint()`` raises, then their workers are terminated): the way to stop a pool now."""
    solo = ab.ProcessPool(1)
    started = manager.Event()
    running = solo.submit(workers.stubborn, started)
    queued = [solo.submit(workers.square, i) for i in range(3)]
    assert started.wait(30)
    solo.shutdown(wait=True, cancel_futures=True, cancel_running=True)
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


# -- the window: tasks queued in a worker's pipe, behind the task it runs ---------------------------


class WatchedPool(ab.ProcessPool):
    """A real pool that says when its manager has handed tasks out, so that a test can act once a
    task waits in a worker's window (sent into its pipe) rather than in the pool's queue. It never
    takes tasks back from a worker stuck on a long task (its stall is the hang guard): a task a test
    saw in a window stays there until the worker answers it."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers)
        self._stall = HANG
        self.handed = threading.Condition()

    def _dispatch(self, now: float) -> None:
        super()._dispatch(now)
        with self.handed:
            self.handed.notify_all()

    def in_window(self, h: ab.Result[Any]) -> bool:
        with self._lock:
            windows = [entry for w in self._workers for entry in w.window]
        return any(isinstance(e, _Task) and e.handle is h and e.state == SENT for e in windows)

    def wait_in_window(self, *handles: ab.Result[Any]) -> None:
        with self.handed:
            assert self.handed.wait_for(lambda: all(self.in_window(h) for h in handles), HANG), handles


def reported_pid(h: ab.Result[Any]) -> int:
    """The pid a ``fault_workers.report_pid_and_wait`` task reports once it runs (hang guard)."""
    pids: queue.SimpleQueue[int] = queue.SimpleQueue()
    h.on_progress(lambda meta: pids.put(meta["pid"]))
    meta = h.info  # a report that came before the observer was in place
    if h.state is ab.State.PROGRESS and isinstance(meta, dict):
        pids.put(meta["pid"])
    return pids.get(timeout=HANG)


def test_a_task_cancelled_in_a_workers_window_is_revoked_at_once_and_never_runs(manager: Any) -> None:
    pool = WatchedPool(1)
    release = manager.Event()
    try:
        started = manager.Event()
        first = pool.submit(workers.wait_for, started, release)
        assert started.wait(HANG)
        ran = manager.Event()
        queued = pool.submit(workers.wait_for, ran, release)
        behind = pool.submit(workers.square, 5)
        pool.wait_in_window(queued, behind)  # in the worker's pipe, behind the task it runs
        assert queued.state is ab.State.PENDING
        assert queued.cancel() and queued.state is ab.State.REVOKED  # the worker has not claimed it
        release.set()
        assert first.get(HANG) == "released"
        assert behind.get(HANG) == 25  # the worker skipped the revoked task, and ran the next one
        assert not ran.is_set()
        assert queued.state is ab.State.REVOKED
    finally:
        release.set()
        pool.shutdown(wait=True, cancel_futures=True, cancel_running=True)


def test_a_worker_killed_with_tasks_in_its_window_fails_only_the_running_one(
    manager: Any, tmp_path: Path
) -> None:
    """The tasks queued in a killed worker's pipe had not started: they go back to the queue and run
    on the next worker, each exactly once (each counts its runs in a file of its own)."""
    pool = WatchedPool(1)
    release = manager.Event()
    try:
        running = pool.submit(fault_workers.report_pid_and_wait, release)
        pid = reported_pid(running)
        counters = [str(tmp_path / f"runs-{i}") for i in range(6)]
        queued = [pool.submit(workers.fail_times, path, 0) for path in counters]
        pool.wait_in_window(*queued)
        os.kill(pid, signal.SIGKILL)
        exc = running.exception(HANG)
        assert isinstance(exc, ab.WorkerCrashed) and exc.pid == pid, repr(exc)
        assert "SIGKILL" in str(exc)
        assert [h.get(HANG) for h in queued] == ["succeeded on attempt 1"] * len(queued)
        assert [Path(path).read_text() for path in counters] == ["x"] * len(counters)  # once each
        assert pool.submit(workers.pid).get(HANG) != pid
    finally:
        release.set()
        pool.shutdown(wait=True, cancel_futures=True, cancel_running=True)


def test_a_task_in_a_workers_window_is_pending_until_the_worker_starts_it(manager: Any) -> None:
    pool = WatchedPool(1)
    release_first, release_second = manager.Event(), manager.Event()
    try:
        first_started, second_started = manager.Event(), manager.Event()
        first = pool.submit(workers.wait_for, first_started, release_first)
        assert first_started.wait(HANG)
        second = pool.submit(workers.wait_for, second_started, release_second)
        moves: list[ab.State] = []
        began = threading.Event()

        def watch(_h: object, st: ab.State, _info: object) -> None:
            moves.append(st)
            began.set()

        second._watch(watch)
        pool.wait_in_window(second)
        assert first.state is ab.State.STARTED
        assert second.state is ab.State.PENDING and not second.running()
        assert not began.is_set()
        release_first.set()
        assert first.get(HANG) == "released"
        assert began.wait(HANG) and moves == [ab.State.STARTED]  # once the worker began it
        assert second_started.wait(HANG)
        release_second.set()
        assert second.get(HANG) == "released"
    finally:
        release_first.set()
        release_second.set()
        pool.shutdown(wait=True, cancel_futures=True, cancel_running=True)


def note_step(steps: list[int], meta: dict[str, Any]) -> None:
    steps.append(meta["step"])


def test_progress_keeps_its_order_and_comes_at_once_when_tasks_are_batched(manager: Any) -> None:
    pool = ab.ProcessPool(2)
    gate, done, hold = manager.Event(), manager.Event(), manager.Event()
    done.set()  # each of the batch ends as soon as it has reported
    try:
        steps = 20
        handles = [pool.submit(workers.report_then_wait, done, steps, gate) for _ in range(30)]
        seen: list[list[int]] = [[] for _ in handles]
        for h, steps_seen in zip(handles, seen, strict=True):
            h.on_progress(functools.partial(note_step, steps_seen))
        # One more that reports and then holds on: its report must come while it runs.
        held = pool.submit(workers.report_then_wait, hold, 1, gate)
        reported = threading.Event()
        held.on_progress(lambda _meta: reported.set())
        gate.set()  # no report before every observer is in place
        assert [h.get(HANG) for h in handles] == [steps] * len(handles)
        assert seen == [list(range(steps))] * len(handles)  # every report, in order, before the end
        assert reported.wait(HANG) and not held.done()
        hold.set()
        assert held.get(HANG) == 1
    finally:
        hold.set()
        pool.shutdown(wait=True, cancel_futures=True, cancel_running=True)


def test_tasks_queued_behind_a_long_task_run_on_another_worker(manager: Any) -> None:
    """A worker stuck on a long task gives back the tasks queued in its pipe: the other worker runs
    them all while the long one still runs."""
    pool = ab.ProcessPool(2)
    started, release = manager.Event(), manager.Event()
    try:
        long = pool.submit(workers.wait_for, started, release)
        assert started.wait(HANG)
        quick = [pool.submit(workers.square, i) for i in range(200)]
        assert [h.get(HANG) for h in quick] == [i * i for i in range(200)]
        assert not long.done()
        release.set()
        assert long.get(HANG) == "released"
    finally:
        release.set()
        pool.shutdown(wait=True, cancel_futures=True, cancel_running=True)


def test_shutdown_cancel_futures_revokes_tasks_in_a_workers_window(manager: Any) -> None:
    pool = WatchedPool(1)
    started, release = manager.Event(), manager.Event()
    try:
        running = pool.submit(workers.asks_politely, started, release)
        assert started.wait(HANG)
        queued = [pool.submit(workers.square, i) for i in range(4)]
        pool.wait_in_window(*queued)
        pool.shutdown(wait=False, cancel_futures=True)
        assert all(h.state is ab.State.REVOKED for h in queued)  # at once, never started
        assert not running.done() and not running.cancel_requested()
        release.set()
        assert running.get(HANG) == "ran to the end"
    finally:
        release.set()
        pool.shutdown(wait=True)


# -- scripts of their own: fork, and what a user's main module does to process work ----------------

TESTS = Path(__file__).resolve().parent
SCRIPT_HANG = 90.0  # a hang guard only: a child interpreter that starts pools and forks


def run_python(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a child interpreter (``python *args``) to its end, with a hang guard; it finds asyncbridge
    and the tests' worker modules (and so do its worker processes, which take its sys.path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=SCRIPT_HANG,
        env=env,
        cwd=cwd,
    )


FORK_SCRIPT = """
    import os, select, sys
    import asyncbridge as ab
    import workers

    HANG = 60.0
    started, release = sys.argv[1], sys.argv[2]
    releaser = os.open(release, os.O_RDWR)  # held open: the task's open() never blocks on it
    own = ab.ProcessPool(1)
    assert ab.run_in_process(workers.square, 3).get(HANG) == 9  # the shared pool has a worker
    assert own.submit(workers.square, 4).get(HANG) == 16  # and so has a pool of the program's own
    across = ab.run_in_process(workers.signal_then_wait, started, release)  # runs across the fork
    with open(started) as f:  # blocks until the task runs
        assert f.read() == "started"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: fresh pools on first use; the parent's task is not the child's
        os.close(r)
        os.close(releaser)
        try:  # its copy of the handle must end at once: no thread or worker of the child runs it
            lost = across.get(10, propagate=False)
        except TimeoutError as exc:
            lost = exc
        square = ab.run_in_process(workers.square, 5).get(HANG)
        own_square = own.submit(workers.square, 6).get(HANG)
        os.write(w, f"{square} {own_square} {lost!r}".encode())
        sys.exit(0)  # a normal exit: the child's atexit handlers run (and must spare the parent's workers)
    os.close(w)
    report = b""
    while True:
        ready, _, _ = select.select([r], [], [], HANG)
        if not ready:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            sys.exit(f"the forked child hangs; so far {report!r}")
        chunk = os.read(r, 65536)
        if not chunk:
            break  # the child has exited (or closed everything on its way out)
        report += chunk
    _, status = os.waitpid(pid, 0)
    print("child exit", os.waitstatus_to_exitcode(status))
    print("child", report.decode())
    os.write(releaser, b"released\\n")
    print("across", across.get(HANG, propagate=False))
    os.close(releaser)
    print("parent", ab.run_in_process(workers.square, 7).get(HANG), own.submit(workers.square, 8).get(HANG))
    own.shutdown()
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_process_work_runs_in_a_child_forked_after_the_parent_used_it(tmp_path: Path) -> None:
    """Issue 9, item 3: a parent that used process work (the shared pool and a pool of its own) forks,
    as gunicorn --preload and Celery's prefork parents do. The child gets fresh pools on first use,
    the parent's task that runs across the fork fails in the child's copy only (saying so), the
    child's normal exit spares the parent's workers, and the parent's pools still serve."""
    started, release = tmp_path / "started", tmp_path / "release"
    os.mkfifo(started)
    os.mkfifo(release)
    done = run_python("-c", textwrap.dedent(FORK_SCRIPT), str(started), str(release), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "child exit 0", done.stdout + done.stderr
    child = lines[1].split(" ", 3)
    assert child[:3] == ["child", "25", "36"], done.stdout
    assert "RuntimeError" in child[3] and "forked" in child[3], child[3]
    assert lines[2:] == ["across released", "parent 49 64"], done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


# -- issue 9, item 11: messages a user reads ---------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.1, "0.1 s"),
        (0.09989834900034111, "0.0999 s"),
        (1 / 3, "0.333 s"),
        (0.09999, "0.1 s"),  # rounding up to the next decade keeps 3 significant digits, no more
        (2.5, "2.5 s"),
        (30, "30 s"),
        (30.0, "30 s"),
        (120.7, "121 s"),
        (3600, "3600 s"),
        (0, "0 s"),
        (0.0, "0 s"),
        (1e-5, "0.00001 s"),
        (float("inf"), "inf s"),
    ],
)
def test_format_seconds_is_short_and_plain(seconds: float, text: str) -> None:
    from asyncbridge._errors import format_seconds

    assert format_seconds(seconds) == text


def test_time_limit_messages_say_their_seconds_readably() -> None:
    """A TimeLimitExceeded says the limit as given, rounded: not ``0.03333333333333333 s``."""
    in_a_thread = ab.task(timeout=1 / 30)(workers.checks_forever).delay()
    exc = in_a_thread.exception(30)
    assert isinstance(exc, ab.TimeLimitExceeded), repr(exc)
    assert "exceeded its time limit of 0.0333 s" in str(exc), str(exc)
    in_a_process = ab.task(engine="process", timeout=1 / 30)(workers.sleeps_forever).delay()
    exc = in_a_process.exception(60)
    assert isinstance(exc, ab.TimeLimitExceeded), repr(exc)
    assert "exceeded its time limit of 0.0333 s and was stopped" in str(exc), str(exc)
    checked_in_a_process = ab.task(engine="process", timeout=1 / 30)(workers.checks_forever).delay()
    exc = checked_in_a_process.exception(60)  # raised by checkpoint() inside the worker
    assert isinstance(exc, ab.TimeLimitExceeded), repr(exc)
    assert "exceeded its time limit of 0.0333 s" in str(exc), str(exc)


def test_get_timeout_message_says_its_seconds_readably() -> None:
    h: ab.Result[int] = ab.Result()
    for read in (h.get, h.result, h.exception):
        with pytest.raises(TimeoutError, match=r"did not finish within 0\.0333 s \(the work goes on\)$"):
            read(1 / 30)


def test_lambdas_and_local_functions_are_refused_naming_why(pool: ab.ProcessPool) -> None:
    """They cannot be pickled by name: the error says which function, why, and what to do."""

    def local_square(x: int) -> int:
        return x * x

    with pytest.raises(TypeError) as info:
        pool.submit(lambda: 1)
    text = str(info.value)
    assert "cannot send the function <function test_lambdas" in text and "<lambda>" in text, text
    assert "a lambda has no name" in text and "module's top level" in text, text
    with pytest.raises(TypeError) as info:
        pool.submit(local_square, 3)
    text = str(info.value)
    assert "local_square" in text and "defined inside another function" in text, text
    assert "module's top level" in text and "run_in_thread()" in text, text


MAIN_WITHOUT_A_FILE = """
import asyncbridge as ab
import workers

def double(x):
    return 2 * x

class Point:
    pass

for call in (lambda: ab.run_in_process(double, 21), lambda: ab.run_in_process(workers.describe, Point())):
    try:
        h = call()
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}")
    else:
        print("no error at the call; the worker said:", repr(h.get(60, propagate=False)))
print("served", ab.run_in_process(workers.square, 4).get(60))  # importable functions still run
"""


def test_a_function_defined_in_python_c_is_refused_at_the_call(tmp_path: Path) -> None:
    """Issue 9, item 11: ``python -c`` (or the REPL) has a main module without a file, which a worker
    process cannot import: what it defines fails at the call, named, not later in the worker."""
    done = run_python("-c", MAIN_WITHOUT_A_FILE, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    double, point, served = done.stdout.splitlines()
    for line, name in ((double, "double"), (point, "Point")):
        assert line.startswith("TypeError: run_in_process() cannot send"), line
        assert f"{name} is defined in __main__" in line and "has no file" in line, line
        assert "python -c" in line and "run_in_thread()" in line, line
    assert served == "served 16", done.stdout


def test_a_program_read_from_stdin_is_refused_at_the_call(tmp_path: Path) -> None:
    """Its main module's "file" is ``<stdin>``, which every worker would fail to run: refused at the
    call, saying so, rather than a WorkerCrashed ``exited with code 1`` per task."""
    script = "import asyncbridge as ab, workers\ntry:\n    ab.run_in_process(workers.square, 3)\n"
    script += "except Exception as exc:\n    print(f'{type(exc).__name__}: {exc}')\n"
    done = run_python("-", stdin=script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("RuntimeError: "), done.stdout + done.stderr
    assert "standard input" in done.stdout and "'<stdin>'" in done.stdout, done.stdout


NO_MAIN_GUARD = """
import sys
import asyncbridge as ab
import workers

pool = ab.ProcessPool(1, start_method=sys.argv[1])
outcome = pool.submit(workers.square, 7).get(60, propagate=False)
print(f"{type(outcome).__name__}: {outcome}")
"""


@pytest.mark.parametrize("method", [m for m in ("forkserver", "spawn") if m in METHODS])
def test_a_script_without_a_main_guard_is_told_about_the_guard(tmp_path: Path, method: str) -> None:
    """Issue 9, item 11: a worker runs the main script again; without ``if __name__ == '__main__':``
    it starts process work from there, which multiprocessing forbids, and the worker fails while
    starting. The caller's handle says so and names the guard (with forkserver, the worker's own
    error comes back; with spawn, the crash names the likely cause)."""
    script = tmp_path / "unguarded.py"
    script.write_text(NO_MAIN_GUARD)
    done = run_python(str(script), method, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert "if __name__ == '__main__':" in line and "unguarded.py" in line, line
    if method == "forkserver":
        assert line.startswith("RuntimeError: the worker process could not import the main module"), line
        assert "its top-level code starts process work" in line, line  # what the worker found
    else:
        assert line.startswith("WorkerCrashed: worker process") and "while starting" in line, line


GUARDED_DEFINITION = """
import asyncbridge as ab

if __name__ == "__main__":
    def triple(x):
        return 3 * x

    outcome = ab.run_in_process(triple, 3).get(60, propagate=False)
    print(f"{type(outcome).__name__}: {outcome}")
"""


def test_a_function_defined_under_the_main_guard_is_named_by_the_worker_error(tmp_path: Path) -> None:
    """The worker imports the script as ``__mp_main__``, where the guarded block does not run: its
    unpickling error comes back as the handle's error, with the original message and what to do."""
    script = tmp_path / "guarded.py"
    script.write_text(GUARDED_DEFINITION)
    done = run_python(str(script), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("RuntimeError: the worker could not unpickle the task"), line
    assert "AttributeError: " in line and "'triple'" in line and "__mp_main__" in line, line  # pickle's own
    assert "if __name__ == '__main__':" in line and "top level" in line, line


def test_a_time_limit_of_weeks_is_accepted() -> None:
    """The manager waits in steps: a deadline weeks away once overflowed poll()'s milliseconds
    (found by tests/stress/test_bad_input.py)."""
    limited = ab.task(engine="process", timeout=2_147_484)(workers.square)
    assert limited.delay(3).get(30) == 9


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # fork, 3.12+
def test_an_exception_crosses_as_itself_even_with_tblib_reducers_installed() -> None:
    """Importing distributed installs tblib's copyreg reducers for every exception class, which
    rebuild SystemExit(3) with code None; a worker's exception must come back as it was raised."""
    import distributed  # noqa: F401  # (installs them, as in any program that uses Dask)

    assert copyreg.dispatch_table.get(SystemExit) is not None  # the reducer this test is about
    pool = ab.ProcessPool(1, start_method="fork")  # fork: the worker inherits the reducers
    try:
        exc = pool.submit(fault_workers.sys_exit, 3).exception(timeout=30)
    finally:
        pool.shutdown()
    assert type(exc) is SystemExit and exc.code == 3
