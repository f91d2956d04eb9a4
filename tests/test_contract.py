"""One test body, every engine: the task decorator gives the same handle and the same contract
whether the work runs in a thread, a worker process or a Celery worker."""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read)

from __future__ import annotations

import concurrent.futures as cf
import pathlib
from collections.abc import Callable
from typing import Any

import celery_work
import pytest
from test_celery import make_fifo, release, wait_for_progress
from test_dask import dask_cluster  # noqa: F401  # a real dask scheduler and worker, for "dask"

import asyncbridge as ab

ENGINES = ["thread", "process", "celery", "dask"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Callable[[Callable[..., Any]], ab.Task[..., Any]]:
    """Make a task of a module-level function on one engine."""
    if request.param == "celery":
        # registered by celery_app at import, as the worker must know them too
        registered = request.getfixturevalue("celery_worker").engine_tasks
        return lambda fn: registered[fn.__name__]
    if request.param == "dask":
        client = request.getfixturevalue("dask_cluster").client
        return lambda fn: ab.task(engine=client)(fn)
    name = request.param
    return lambda fn: ab.task(engine=name)(fn)


def test_a_value_comes_back(engine: Callable[[Callable[..., Any]], ab.Task[..., Any]]) -> None:
    h = engine(celery_work.add).delay(2, 40)
    assert h.get(timeout=60) == 42
    assert h.state is ab.State.SUCCESS and h.successful()


def test_an_error_comes_back_with_its_type_and_traceback(
    engine: Callable[[Callable[..., Any]], ab.Task[..., Any]],
) -> None:
    h = engine(celery_work.fail).delay("same everywhere")
    with pytest.raises(ValueError, match="same everywhere"):
        h.get(timeout=60)
    assert h.state is ab.State.FAILURE
    assert "raise ValueError(message)" in (h.traceback or "")


def test_progress_is_seen_while_it_runs(
    engine: Callable[[Callable[..., Any]], ab.Task[..., Any]], tmp_path: pathlib.Path
) -> None:
    fifo = make_fifo(tmp_path)
    h = engine(celery_work.report_and_wait).delay(fifo, "PROGRESS")
    wait_for_progress(h)
    assert h.state is ab.State.PROGRESS and h.info == {"step": 1, "of": 2}
    release(fifo, "finished")
    assert h.get(timeout=60) == "finished"


def test_cancel_stops_running_work(engine: Callable[[Callable[..., Any]], ab.Task[..., Any]]) -> None:
    h = engine(celery_work.checks_until_cancelled).delay()
    wait_for_progress(h)
    assert h.cancel()
    with pytest.raises(cf.CancelledError):
        h.get(timeout=60)
    assert h.state is ab.State.REVOKED and h.cancelled()


@pytest.mark.anyio
async def test_await_it(engine: Callable[[Callable[..., Any]], ab.Task[..., Any]]) -> None:
    assert await engine(celery_work.add).delay(1, 2) == 3
