"""Results by id in one process: ``ab.Result(h.id)`` agrees with ``h``; an id no one knows raises
``ab.UnknownResult`` at once; ``forget()`` makes an id unknown."""
# mypy: disable-error-code="comparison-overlap"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read)

from __future__ import annotations

import concurrent.futures as cf
import gc
import threading
import uuid
import weakref
from typing import Any

import anyio
import pytest

import asyncbridge as ab


def _gated() -> tuple[ab.Result[str], threading.Event, threading.Event]:
    """Thread work that reports progress once it may, then returns once it is released."""
    may_report, release = threading.Event(), threading.Event()

    def work() -> str:
        may_report.wait(30)
        ab.report_progress(step=1)
        release.wait(30)
        ab.checkpoint()
        return "done"

    return ab.run_in_thread(work), may_report, release


def _progress_seen(h: ab.Result[Any]) -> None:
    seen = threading.Event()
    h.on_progress(lambda _meta: seen.set())
    if h.state is not ab.State.PROGRESS:
        assert seen.wait(30)


def test_a_handle_found_by_its_id_agrees_with_it_from_start_to_end() -> None:
    h, may_report, release = _gated()
    same: ab.Result[Any] = ab.Result(h.id)
    assert same is not h and same.id == h.id
    assert same.state is h.state
    may_report.set()
    _progress_seen(same)
    assert same.state is ab.State.PROGRESS and same.info == {"step": 1}
    ended = threading.Event()
    same.add_done_callback(lambda _h: ended.set())
    release.set()
    assert same.get(timeout=30) == "done" == h.get(timeout=30)
    assert ended.wait(30)
    assert same.state is ab.State.SUCCESS


def test_a_handle_found_after_the_work_moved_on_starts_where_it_stands() -> None:
    h, may_report, release = _gated()
    may_report.set()
    _progress_seen(h)
    same: ab.Result[Any] = ab.Result(h.id)
    assert same.state is ab.State.PROGRESS and same.info == {"step": 1}
    release.set()
    assert same.get(timeout=30) == "done"
    assert ab.Result(h.id).get(timeout=0) == "done"  # and once it ended, as long as h lives


def test_cancel_through_the_id_stops_the_work() -> None:
    h, may_report, release = _gated()
    ab.Result(h.id).cancel()
    may_report.set()
    release.set()
    with pytest.raises(cf.CancelledError):
        h.get(timeout=30)
    assert h.state is ab.State.REVOKED


def test_a_failure_reaches_the_handle_found_by_id() -> None:
    def boom() -> None:
        raise KeyError("by id")

    h = ab.run_in_thread(boom)
    same: ab.Result[Any] = ab.Result(h.id)
    with pytest.raises(KeyError, match="by id"):
        same.get(timeout=30)
    assert same.failed() and isinstance(h.exception(0), KeyError)


@pytest.mark.anyio
async def test_await_a_handle_found_by_id(anyio_backend: Any) -> None:
    gate = threading.Event()
    h = ab.run_in_thread(lambda: gate.wait(30) and 42)
    same: ab.Result[Any] = ab.Result(h.id)
    gate.set()
    with anyio.fail_after(30):
        assert await same == 42


def test_every_kind_of_work_is_found_by_id() -> None:
    async def coro() -> str:
        return "coroutine"

    handles: list[ab.Result[Any]] = [
        ab.run_in_thread(str, "thread"),
        ab.spawn(coro()),
        ab.run_in_process(str, "process"),
        ab.task(engine="thread")(str).delay("task"),
        ab.gather(ab.run_in_thread(str, "gather")),
    ]
    found: list[ab.Result[Any]] = [ab.Result(h.id) for h in handles]
    assert [f.get(timeout=60) for f in found] == ["thread", "coroutine", "process", "task", ["gather"]]


@pytest.mark.parametrize("ident", [uuid.uuid4().hex, "never-issued"])
def test_an_id_never_issued_is_unknown_at_once(ident: str) -> None:
    with pytest.raises(ab.UnknownResult, match="never issued it") as caught:
        ab.Result(ident)
    assert isinstance(caught.value, LookupError)
    assert caught.value.task_id == ident and ident in str(caught.value)


def test_an_id_whose_handle_is_gone_is_unknown() -> None:
    h = ab.run_in_thread(str, "gone")
    h.wait(30)
    ident = h.id
    collected = threading.Event()
    weakref.finalize(h, collected.set)
    del h
    for _ in range(100):
        gc.collect()
        if collected.wait(0.01):
            break
    with pytest.raises(ab.UnknownResult, match=ident):
        ab.Result(ident)


def test_a_forgotten_id_is_unknown_and_says_so() -> None:
    h = ab.run_in_thread(str, "kept")
    h.forget()
    with pytest.raises(ab.UnknownResult, match="forgotten"):
        ab.Result(h.id)
    assert h.get(timeout=30) == "kept"  # the handle itself keeps what it knows


def test_a_blank_handle_is_found_by_id_and_completed_by_its_owner() -> None:
    blank: ab.Result[int] = ab.Result()
    same: ab.Result[int] = ab.Result(blank.id)
    with pytest.raises(RuntimeError, match="belongs to its work"):
        same.set_result(1)  # only the blank's owner completes it
    blank.set_result(7)
    assert same.get(timeout=30) == 7


def test_bad_ids_are_clear_errors() -> None:
    with pytest.raises(TypeError, match="non-empty str"):
        ab.Result("")
    with pytest.raises(TypeError, match="non-empty str"):
        ab.Result(42)  # type: ignore[arg-type]
