"""Celery results through the handle, against a real prefork `celery worker` (file-system broker and
file:// result backend: the embedded default, no server). The Redis variant is test_celery_redis.py."""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read)

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import os
import pathlib
import signal
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from billiard.exceptions import WorkerLostError
from celery import Celery, chain, group
from celery.exceptions import TaskRevokedError

import asyncbridge as ab

pytestmark = pytest.mark.usefixtures("celery_worker")


#: The named pipes made by the running test, opened after it by gates_opened_after_each_test.
GATES: list[str] = []


def make_fifo(tmp_path: pathlib.Path) -> str:
    path = tmp_path / f"gate-{uuid.uuid4().hex}"
    os.mkfifo(path)
    GATES.append(str(path))
    return str(path)


@pytest.fixture(autouse=True)
def gates_opened_after_each_test() -> Iterator[None]:
    """After a test, a task still blocked on one of its gates is let go: a revoke that did not kill
    its task (Celery kills only a task whose child it knows at that moment) would otherwise hold one
    of the worker's two children for ever, and the tests after it would wait on a full pool."""
    yield
    while GATES:
        gate = GATES.pop()
        try:
            fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO: no task has it open: nothing to do
        except OSError:
            continue
        try:
            os.write(fd, b"let go after the test")
        finally:
            os.close(fd)


def release(fifo: str, text: str = "go") -> None:
    """Write to the named pipe the task waits on; the open blocks until the task reads it."""

    def write() -> None:
        with open(fifo, "w") as f:
            f.write(text)

    t = threading.Thread(target=write, daemon=True)  # a task that never opens its pipe must not hold up exit
    t.start()
    t.join(30)
    assert not t.is_alive(), "the task never opened its pipe"


def wait_for_progress(h: ab.Result[Any]) -> None:
    """Return once the work has reported progress (or already had, before the observer was added)."""
    reported = threading.Event()
    h.on_progress(lambda _meta: reported.set())
    if h.state is ab.State.PROGRESS or isinstance(h.info, dict):
        return
    assert reported.wait(30), f"{h!r} never reported progress"


def test_a_result_round_trip(celery_worker: Any) -> None:
    r = celery_worker.add.delay(2, 3)
    h = ab.wrap(r)
    assert h.id == r.id
    assert h.get(timeout=30) == 5
    assert h.state is ab.State.SUCCESS and h.successful() and h.info == 5


@pytest.mark.anyio
async def test_await_a_celery_result_on_both_backends(celery_worker: Any) -> None:
    assert await ab.wrap(celery_worker.add.delay(20, 22)) == 42


def test_a_failure_keeps_its_type_and_the_worker_traceback(celery_worker: Any) -> None:
    h = ab.wrap(celery_worker.fail.delay("bad input"))
    with pytest.raises(ValueError, match="bad input") as info:
        h.get(timeout=30)
    assert isinstance(info.value.__cause__, ab.RemoteTraceback)
    assert "raise ValueError(message)  # the source line" in (h.traceback or "")
    assert h.failed()


def test_started_progress_and_custom_states(celery_worker: Any, tmp_path: pathlib.Path) -> None:
    fifo = make_fifo(tmp_path)
    h = ab.wrap(celery_worker.report_and_wait.delay(fifo, "RESIZING"))
    wait_for_progress(h)
    assert h.state == "RESIZING" and h.info == {"step": 1, "of": 2}
    assert h.running()
    release(fifo, "resized")
    assert h.get(timeout=30) == "resized"
    assert h.state is ab.State.SUCCESS


def test_cancel_revokes_and_terminates_a_running_task(celery_worker: Any, tmp_path: pathlib.Path) -> None:
    fifo = make_fifo(tmp_path)
    h = ab.wrap(celery_worker.report_and_wait.delay(fifo, "PROGRESS"))
    wait_for_progress(h)  # running in a prefork child
    assert h.cancel()
    with pytest.raises(cf.CancelledError) as info:
        h.get(timeout=30)
    assert isinstance(info.value.__cause__, TaskRevokedError)
    assert h.state is ab.State.REVOKED
    assert ab.wrap(celery_worker.add.delay(1, 1)).get(timeout=30) == 2  # the pool replaced the child


@pytest.mark.anyio
async def test_a_task_revoked_elsewhere_wakes_every_awaiter(
    celery_worker: Any, tmp_path: pathlib.Path, anyio_backend: tuple[str, object]
) -> None:
    fifo = make_fifo(tmp_path)
    r = celery_worker.report_and_wait.delay(fifo, "PROGRESS")
    h = ab.wrap(r)
    await anyio.to_thread.run_sync(wait_for_progress, h)
    outcomes: list[str] = []

    async def waiter() -> None:
        try:
            await ab.shield(h)
        except (asyncio.CancelledError, cf.CancelledError) as exc:
            outcomes.append(type(exc).__name__)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        celery_worker.app.control.revoke(r.id, terminate=True)  # not through the handle
    expected = "CancelledError"
    assert outcomes == [expected] * 3
    assert h.state is ab.State.REVOKED


def test_a_worker_child_killed_mid_task_fails_the_handle(celery_worker: Any, tmp_path: pathlib.Path) -> None:
    fifo = make_fifo(tmp_path)
    h = ab.wrap(celery_worker.report_pid_and_wait.delay(fifo))
    wait_for_progress(h)
    os.kill(h.info["pid"], signal.SIGKILL)  # the prefork child running it dies
    exc = h.exception(timeout=30)
    assert isinstance(exc, WorkerLostError) and "SIGKILL" in str(exc)
    assert h.state is ab.State.FAILURE
    assert ab.wrap(celery_worker.add.delay(2, 2)).get(timeout=30) == 4  # the pool replaced the child


def test_async_result_by_id_for_a_task_sent_elsewhere(celery_worker: Any) -> None:
    r = celery_worker.add.delay(3, 4)
    h: ab.Result[Any] = ab.AsyncResult(r.id, app=celery_worker.app)
    assert isinstance(h, ab.Result) and h.id == r.id
    assert h.get(timeout=30) == 7


def test_a_celery_handle_is_found_by_its_id_alone(celery_worker: Any) -> None:
    h = ab.wrap(celery_worker.add.delay(20, 22))
    assert ab.Result(h.id).get(timeout=30) == 42  # this process knows it: no app needed


def test_forget_deletes_the_result_from_the_backend(celery_worker: Any) -> None:
    app = celery_worker.app
    h = ab.wrap(celery_worker.add.delay(1, 2))
    assert h.get(timeout=30) == 3
    assert app.backend.get_task_meta(h.id)["status"] == "SUCCESS"
    h.forget()
    assert app.backend.get_task_meta(h.id)["status"] == "PENDING"  # Celery's answer once forgotten
    with pytest.raises(ab.UnknownResult, match="forgotten"):
        ab.Result(h.id)
    assert h.get(timeout=0) == 3  # the handle keeps what it knows


def test_an_unknown_id_stays_pending_and_get_times_out(celery_worker: Any) -> None:
    h: ab.Result[Any] = ab.AsyncResult(str(uuid.uuid4()), app=celery_worker.app)
    assert h.state is ab.State.PENDING
    with pytest.raises(TimeoutError) as info:
        h.get(timeout=0.2)
    assert type(info.value) is TimeoutError  # the builtin, not Celery's own TimeoutError


def test_a_group_is_a_gather_of_its_members(celery_worker: Any) -> None:
    res = group(celery_worker.add.s(i, i) for i in range(5)).apply_async()
    h = ab.wrap(res)
    assert h.get(timeout=30) == [0, 2, 4, 6, 8]


def test_a_chain_follows_to_its_last_task(celery_worker: Any) -> None:
    res = chain(celery_worker.add.s(1, 1), celery_worker.add.s(10))()
    h = ab.wrap(res)
    assert h.id == res.id and h.get(timeout=30) == 12


def test_a_chain_fails_with_the_failure_of_an_earlier_task(celery_worker: Any) -> None:
    res = chain(celery_worker.fail.si("early"), celery_worker.add.s(10))()
    with pytest.raises(ValueError, match="early"):
        ab.wrap(res).get(timeout=30)


@pytest.mark.parametrize("inner_done", [False, True])
def test_get_inside_a_running_celery_task_follows_celerys_rule(celery_worker: Any, inner_done: bool) -> None:
    """As Celery's own AsyncResult.get(): a RuntimeError inside a task, even for a result already there."""
    inner = celery_worker.add.delay(1, 2)
    if inner_done:
        assert ab.wrap(inner).get(timeout=30) == 3
    outer = ab.wrap(celery_worker.get_inside_a_task.delay(inner.id))
    exc = outer.exception(timeout=30)
    assert isinstance(exc, RuntimeError) and "inside a running Celery task" in str(exc)


def test_an_app_without_a_result_backend_is_a_clear_error() -> None:
    bare = Celery("no-backend", broker="memory://")
    with pytest.raises(ValueError, match="has no result backend"):
        ab.AsyncResult("some-id", app=bare)


def test_bad_ids_and_apps_are_clear_errors(celery_worker: Any) -> None:
    with pytest.raises(TypeError, match="a task id must be a non-empty str"):
        ab.AsyncResult("", app=celery_worker.app)
    with pytest.raises(TypeError, match="needs the engine of a registered adapter \\(a Celery app.*not str"):
        ab.AsyncResult("x", app="app")
    with pytest.raises(TypeError, match="needs the task id too"):
        ab.Result(app=celery_worker.app)


@pytest.mark.parametrize("follow", ["SUCCESS", "FAILURE"])
@pytest.mark.parametrize("reason", ["terminated", "revoked"])
def test_an_outcome_stored_over_a_revoked_wins(
    celery_worker: Any, monkeypatch: pytest.MonkeyPatch, follow: str, reason: str
) -> None:
    """Celery stores REVOKED as its worker handles a revoke, yet the task may still run and store its
    own outcome over it ("terminated": a child that finished before the kill; "revoked": a task
    already handed to a child, which stores STARTED first). The handle waits for that outcome (the
    value was produced: it must not be lost) instead of ending REVOKED on the first write."""
    from asyncbridge.contrib import celery as contrib

    monkeypatch.setattr(contrib, "REVOKED_SETTLE", 60.0)  # the outcome surely lands within the wait
    backend = celery_worker.app.backend
    h: ab.Result[Any] = ab.AsyncResult(str(uuid.uuid4()), app=celery_worker.app)
    ended = threading.Event()
    h.add_done_callback(lambda _h: ended.set())
    backend.mark_as_revoked(h.id, reason)
    if reason == "revoked":
        backend.store_result(h.id, {"pid": 1}, "STARTED")
    assert not ended.wait(0.3), h  # several polls: the REVOKED alone does not end the handle
    if follow == "SUCCESS":
        backend.store_result(h.id, 42, "SUCCESS")
        assert h.get(timeout=30) == 42
    else:
        backend.store_result(h.id, ValueError("late"), "FAILURE")
        with pytest.raises(ValueError, match="late"):
            h.get(timeout=30)


def test_a_revoked_is_final_once_settled(celery_worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no outcome stored over it within REVOKED_SETTLE, a REVOKED is final."""
    from asyncbridge.contrib import celery as contrib

    monkeypatch.setattr(contrib, "REVOKED_SETTLE", 0.05)
    backend = celery_worker.app.backend
    killed: ab.Result[Any] = ab.AsyncResult(str(uuid.uuid4()), app=celery_worker.app)
    never_ran: ab.Result[Any] = ab.AsyncResult(str(uuid.uuid4()), app=celery_worker.app)
    backend.mark_as_revoked(killed.id, "terminated")
    backend.mark_as_revoked(never_ran.id, "revoked")
    for h in (killed, never_ran):
        with pytest.raises(cf.CancelledError):
            h.get(timeout=30)
        assert h.state is ab.State.REVOKED
        assert isinstance(h.get(propagate=False).__cause__, TaskRevokedError)


def test_many_awaited_results_share_one_listener_thread(celery_worker: Any) -> None:
    before = threading.active_count()
    handles: list[ab.Result[Any]] = [
        ab.AsyncResult(str(uuid.uuid4()), app=celery_worker.app) for _ in range(1_000)
    ]
    during = threading.active_count()
    assert all(h.state is ab.State.PENDING for h in handles)
    assert during - before <= 1  # at most the app's one listener, however many are pending
    refs = [weakref.ref(h) for h in handles]
    del handles
    gc.collect()
    assert all(r() is None for r in refs)  # nobody waits on them: the listener let them go


# -- progress: each report once (issue 9, item 7) ---------------------------------------------------

#: Reports of one task, a second apart: the issue's case (one report, then a 1 s sleep, gave 19
#: on_progress calls on the file system), with a report equal to the one before it, which is a new
#: report all the same (the poller must tell it from the same report read again).
REPORTS = [{"step": 1, "of": 3}, {"step": 1, "of": 3}, {"step": 2, "of": 3}, {"step": 3, "of": 3}]


def check_each_report_arrives_once(tasks: Any, tmp_path: pathlib.Path) -> None:
    """A task makes REPORTS a second apart, then returns: ``on_progress`` and ``async for`` over
    ``h.progress()`` see exactly those reports, in order, the last one included."""
    fifo = make_fifo(tmp_path)
    h = ab.wrap(tasks.reports_in_turn.delay(fifo, REPORTS, 1.0))
    called: list[dict[str, Any]] = []
    h.on_progress(called.append)
    read: list[dict[str, Any]] = []

    async def read_all() -> None:
        async for meta in h.progress():
            read.append(meta)

    reader = threading.Thread(target=asyncio.run, args=(read_all(),), name="progress-reader")
    reader.start()
    release(fifo)  # the task starts reporting only now, with both observers in place
    assert h.get(timeout=30) == len(REPORTS)
    reader.join(30)
    assert not reader.is_alive(), "progress() did not end with the task"
    assert called == REPORTS
    assert read == REPORTS


def test_each_progress_report_arrives_once(celery_worker: Any, tmp_path: pathlib.Path) -> None:
    check_each_report_arrives_once(celery_worker, tmp_path)


def check_a_late_handle_is_told(app: Celery) -> None:
    """A second handle of a task whose first one was already told a state is told that state too
    (the poller no longer repeats it every read), and the first is not told it again."""
    backend = app.backend
    task_id = str(uuid.uuid4())
    first: ab.Result[Any] = ab.AsyncResult(task_id, app=app)
    called: list[dict[str, Any]] = []
    first.on_progress(called.append)
    backend.store_result(task_id, {"step": 1}, "PROGRESS")
    wait_for_progress(first)
    late: ab.Result[Any] = ab.AsyncResult(task_id, app=app)
    wait_for_progress(late)
    assert late.state is ab.State.PROGRESS and late.info == {"step": 1}
    backend.store_result(task_id, 42, "SUCCESS")
    assert first.get(timeout=30) == 42 and late.get(timeout=30) == 42
    assert ab.AsyncResult(task_id, app=app).get(timeout=30) == 42  # one made after the end
    assert called == [{"step": 1}]


def test_a_late_handle_is_told_the_state_already_reported(celery_worker: Any) -> None:
    check_a_late_handle_is_told(celery_worker.app)


# -- Celery as the engine of @task ---------------------------------------------------------------


def test_task_with_a_celery_engine_sends_and_returns_a_handle(celery_worker: Any) -> None:
    h = celery_worker.square.delay(6, 7)
    assert isinstance(h, ab.Result) and h.get(timeout=30) == 13
    assert celery_worker.square(1, 2) == 3  # still callable inline


def test_report_progress_inside_a_celery_task_becomes_update_state(
    celery_worker: Any, tmp_path: pathlib.Path
) -> None:
    fifo = make_fifo(tmp_path)
    h = celery_worker.progress.delay(fifo, "PROGRESS")
    wait_for_progress(h)
    assert h.state is ab.State.PROGRESS and h.info == {"step": 1, "of": 2}
    release(fifo)
    assert h.get(timeout=30) == "go"


def test_a_celery_time_limit_is_time_limit_exceeded(celery_worker: Any) -> None:
    exc = celery_worker.limited.delay(30).exception(timeout=30)
    assert isinstance(exc, ab.TimeLimitExceeded) and isinstance(exc, TimeoutError)


def test_celery_retries_keep_one_handle(celery_worker: Any, tmp_path: pathlib.Path) -> None:
    h = celery_worker.flaky.delay(str(tmp_path / "count"), 2)
    assert h.get(timeout=30) == "succeeded on attempt 3"


def test_composition_takes_celery_results_as_they_are(celery_worker: Any) -> None:
    results = [celery_worker.add.delay(i, i) for i in range(4)]
    assert ab.gather(*results).get(timeout=30) == [0, 2, 4, 6]
    done, pending = ab.wait(results, timeout=30).get(timeout=60)
    assert done == set(results) and not pending


# -- @task(engine=app) as a Celery task: signatures, canvas, apply_async, names ------------------


def test_an_engine_task_has_its_celery_name_and_task(celery_worker: Any) -> None:
    square = celery_worker.square
    assert square.name == "celery_work.add"  # Celery's own rule: module and __name__
    assert celery_worker.app.tasks[square.name] is square.celery_task
    assert square.celery_task.name == square.name


def test_a_chain_of_engine_tasks(celery_worker: Any) -> None:
    square = celery_worker.square
    res = chain(square.s(1, 1), square.s(10))()
    assert ab.wrap(res).get(timeout=30) == 12
    piped = (square.s(2, 2) | square.si(5, 5)).apply_async()  # si: ignores the parent's result
    assert ab.wrap(piped).get(timeout=30) == 10


def test_a_group_of_engine_tasks(celery_worker: Any) -> None:
    res = group(celery_worker.square.s(i, i) for i in range(5)).apply_async()
    assert ab.wrap(res).get(timeout=30) == [0, 2, 4, 6, 8]


def test_apply_async_with_a_task_id(celery_worker: Any) -> None:
    task_id = f"given-{uuid.uuid4()}"
    h = celery_worker.square.apply_async((2, 3), task_id=task_id)
    assert isinstance(h, ab.Result) and h.id == task_id
    assert h.get(timeout=30) == 5
    assert ab.AsyncResult(task_id, app=celery_worker.app).get(timeout=30) == 5  # Celery stored it there


def test_apply_async_with_a_countdown(celery_worker: Any) -> None:
    sent = time.time()  # wall time, as Celery's eta
    h = celery_worker.square.apply_async(kwargs={"x": 1, "y": 2}, countdown=1.0)
    assert h.get(timeout=30) == 3
    assert time.time() - sent >= 1.0  # the worker holds a task until its eta: it cannot be done before


def test_apply_async_refuses_a_task_id_the_backend_cannot_key_before_sending(celery_worker: Any) -> None:
    with pytest.raises(ValueError, match="cannot name a file"):
        celery_worker.square.apply_async((1, 2), task_id="a/b")


def test_a_task_made_by_an_app_factory_runs_on_the_worker(celery_worker: Any) -> None:
    multiply = celery_worker.factory.multiply
    assert "<locals>" in multiply.__qualname__
    assert multiply.name == "celery_app.multiply"
    assert multiply.delay(6, 7).get(timeout=30) == 42
    double = celery_worker.factory.double  # a lambda, registered under the name it was given
    assert double.name == "abtest.double"
    assert double.delay(21).get(timeout=30) == 42


def test_a_lambda_without_a_name_is_a_clear_error() -> None:
    app = Celery("lambdas", broker="memory://", backend="cache+memory://")
    with pytest.raises(TypeError, match=r"<lambda>.*give it a name: @task\(engine=app, name="):
        ab.task(engine=app)(lambda: None)
    named = ab.task(engine=app, name="lambdas.nothing")(lambda: None)
    assert named.name == "lambdas.nothing" and app.tasks["lambdas.nothing"] is named.celery_task
