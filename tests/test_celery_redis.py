"""Celery results through the handle on a real Redis server (broker and result backend), where the
listener is pushed every state through the backend's pub/sub instead of polling."""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read)

from __future__ import annotations

import concurrent.futures as cf
import threading
import uuid
from typing import Any

import pytest
from celery import chord
from test_celery import (  # noqa: F401  # the fixture too
    check_a_late_handle_is_told,
    check_each_report_arrives_once,
    gates_opened_after_each_test,
    make_fifo,
    release,
    wait_for_progress,
)

import asyncbridge as ab


def test_a_result_round_trip_through_pub_sub(redis_celery: Any) -> None:
    r = redis_celery.add.delay(2, 3)
    h = ab.wrap(r)
    assert h.id == r.id and h.get(timeout=30) == 5


@pytest.mark.anyio
async def test_await_on_both_backends(redis_celery: Any) -> None:
    assert await ab.wrap(redis_celery.add.delay(40, 2)) == 42


def test_progress_and_custom_states_are_pushed(redis_celery: Any, tmp_path: Any) -> None:
    fifo = make_fifo(tmp_path)
    h = ab.wrap(redis_celery.report_and_wait.delay(fifo, "RESIZING"))
    wait_for_progress(h)
    assert h.state == "RESIZING" and h.info == {"step": 1, "of": 2}
    release(fifo, "done")
    assert h.get(timeout=30) == "done"


def test_each_progress_report_arrives_once_over_pub_sub(redis_celery: Any, tmp_path: Any) -> None:
    check_each_report_arrives_once(redis_celery, tmp_path)


def test_a_late_handle_is_told_the_state_already_pushed(redis_celery: Any) -> None:
    check_a_late_handle_is_told(redis_celery.app)


def test_a_state_stored_before_the_handle_is_read_back_once(redis_celery: Any) -> None:
    """A PROGRESS stored before the handle existed (its message went to no one) is read back after
    the subscription, once; the next report comes as a message, once."""
    backend = redis_celery.app.backend
    task_id = str(uuid.uuid4())
    backend.store_result(task_id, {"step": 1}, "PROGRESS")
    h: ab.Result[Any] = ab.AsyncResult(task_id, app=redis_celery.app)
    wait_for_progress(h)
    assert h.info == {"step": 1}
    called: list[dict[str, Any]] = []
    h.on_progress(called.append)
    backend.store_result(task_id, {"step": 2}, "PROGRESS")
    backend.store_result(task_id, 42, "SUCCESS")
    assert h.get(timeout=30) == 42
    assert called == [{"step": 2}]
    assert h._pversion == 2  # the handle's count of reports: each one applied once


def test_cancel_terminates_a_running_task(redis_celery: Any, tmp_path: Any) -> None:
    fifo = make_fifo(tmp_path)
    h = ab.wrap(redis_celery.report_and_wait.delay(fifo, "PROGRESS"))
    wait_for_progress(h)
    assert h.cancel()
    with pytest.raises(cf.CancelledError):
        h.get(timeout=30)
    assert h.state is ab.State.REVOKED


def test_a_failure_keeps_its_type(redis_celery: Any) -> None:
    with pytest.raises(ValueError, match="over redis"):
        ab.wrap(redis_celery.fail.delay("over redis")).get(timeout=30)


def test_the_task_decorator_with_a_redis_app(redis_celery: Any) -> None:
    assert redis_celery.square.delay(5, 6).get(timeout=30) == 11


def test_a_chord_of_engine_tasks(redis_celery: Any) -> None:
    """@task(engine=app) signatures in a chord (on Redis, whose backend joins a chord natively)."""
    res = chord(redis_celery.square.s(i, i) for i in range(4))(redis_celery.factory.total.s())
    assert ab.wrap(res).get(timeout=30) == 12


def test_many_concurrent_results_one_listener(redis_celery: Any) -> None:
    before = threading.active_count()
    handles = [ab.wrap(redis_celery.add.delay(i, i)) for i in range(300)]
    assert threading.active_count() - before <= 1
    assert [h.get(timeout=60) for h in handles] == [2 * i for i in range(300)]


def test_results_survive_a_redis_restart_while_pending(tmp_path: Any) -> None:
    """The listener reconnects, subscribes again and re-reads every pending task by itself."""
    import celery_app
    from conftest import start_celery_worker, start_redis

    from benchmarks._servers import free_port

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis = start_redis(port)
    worker = start_celery_worker({"ABTEST_REDIS_URL": url})
    try:
        tasks = celery_app.make_app(celery_app.redis_config(url))
        fifo = make_fifo(tmp_path)
        h = ab.wrap(tasks.report_and_wait.delay(fifo, "PROGRESS"))
        wait_for_progress(h)
        redis.stop()  # the result backend (and broker) goes away while the task runs
        redis = start_redis(port)  # and comes back empty, on the same address
        release(fifo, "after the restart")
        assert h.get(timeout=60) == "after the restart"
    finally:
        worker.stop()
        redis.stop()
