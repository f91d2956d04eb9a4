"""Progress reports from inside work: state, info, on_progress and progress(), for every kind."""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read)

from __future__ import annotations

import multiprocessing
import multiprocessing.managers
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import workers

import asyncbridge as ab


@pytest.fixture(scope="module")
def manager() -> Iterator[multiprocessing.managers.SyncManager]:
    with multiprocessing.Manager() as m:
        yield m


def start(kind: str, release: Any, steps: int, gate: Any = None) -> ab.Result[int]:
    if kind == "thread":
        return ab.run_in_thread(workers.report_then_wait, release, steps, gate)
    if kind == "process":
        return ab.run_in_process(workers.report_then_wait, release, steps, gate)
    return ab.spawn(workers.report_then_wait_async(release, steps, gate))


KINDS = ["thread", "process", "coroutine"]


@pytest.mark.parametrize("kind", KINDS)
def test_state_and_info_show_the_latest_report(kind: str, manager: Any) -> None:
    release, gate = manager.Event(), manager.Event()
    seen: list[dict[str, Any]] = []
    all_in = threading.Event()

    def observe(meta: dict[str, Any]) -> None:
        seen.append(meta)
        if meta["step"] == 2:
            all_in.set()

    h = start(kind, release, 3, gate)
    h.on_progress(observe)  # before the first report: the gate holds the work
    gate.set()
    assert all_in.wait(60)
    assert h.state is ab.State.PROGRESS and h.info == {"step": 2, "of": 3}
    assert h.running()
    release.set()
    assert h.get(60) == 3
    assert h.state is ab.State.SUCCESS and h.info == 3
    assert seen == [{"step": i, "of": 3} for i in range(3)]


def test_on_progress_gets_every_report_in_order() -> None:
    release = threading.Event()
    seen: list[dict[str, Any]] = []
    gate = threading.Event()

    def work() -> None:
        gate.wait(30)  # on_progress is in place before the first report
        for i in range(100):
            ab.report_progress(i=i)
        release.wait(30)

    h = ab.run_in_thread(work)
    h.on_progress(seen.append)
    gate.set()
    release.set()
    h.get(30)
    assert seen == [{"i": i} for i in range(100)]


def test_on_progress_with_a_loop_runs_there() -> None:
    import asyncio

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        me = threading.get_ident()
        where: list[int] = []
        gate = threading.Event()

        def work() -> None:
            gate.wait(30)
            ab.report_progress(x=1)

        h = ab.run_in_thread(work)
        h.on_progress(lambda _meta: where.append(threading.get_ident()), loop=loop)
        gate.set()
        await h
        await asyncio.sleep(0)  # the scheduled observer runs on this loop
        return [w - me for w in where]

    assert asyncio.run(main()) == [0]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["thread", "coroutine"])
async def test_async_for_progress_yields_reports_and_ends_with_the_work(kind: str) -> None:
    release = threading.Event()
    h = start(kind, release, 3)
    got: list[dict[str, Any]] = []
    async for meta in h.progress():
        got.append(meta)
        if meta["step"] == 2:
            release.set()
    assert got and got[-1] == {"step": 2, "of": 3}  # a slow reader may miss some, never the last
    assert [m["step"] for m in got] == sorted(m["step"] for m in got)
    assert await h == 3


@pytest.mark.anyio
async def test_progress_from_a_process(manager: Any) -> None:
    release = manager.Event()
    h = start("process", release, 2)
    async for meta in h.progress():
        if meta["step"] == 1:
            await anyio.to_thread.run_sync(release.set)
    assert await h == 2


@pytest.mark.anyio
async def test_cancelling_a_progress_reader_leaves_the_work() -> None:
    release = threading.Event()
    h = start("thread", release, 1)
    with anyio.move_on_after(0.05):
        async for _ in h.progress():
            await anyio.sleep_forever()
    assert not h.cancel_requested()
    release.set()
    assert await h == 1


def test_report_progress_outside_work_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="outside asyncbridge work"):
        ab.report_progress(x=1)


def test_a_report_from_a_task_reaches_the_task_handle() -> None:
    release = threading.Event()
    seen: list[dict[str, Any]] = []
    gate = threading.Event()

    def work() -> str:
        gate.wait(30)
        ab.report_progress(stage="half")
        release.wait(30)
        return "done"

    h = ab.task(retry=ab.Retry(attempts=2))(work).delay()
    h.on_progress(seen.append)
    gate.set()
    release.set()
    assert h.get(30) == "done"
    assert seen == [{"stage": "half"}]


def test_on_progress_rejects_bad_input() -> None:
    h: ab.Result[int] = ab.Result()
    with pytest.raises(TypeError, match="on_progress\\(\\) needs a callable"):
        h.on_progress(3)  # type: ignore[arg-type]
    bad_loop: Any = "loop"
    with pytest.raises(TypeError, match="loop must be an asyncio event loop"):
        h.on_progress(print, loop=bad_loop)


def test_a_raising_progress_observer_is_logged_and_the_work_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()

    def work() -> int:
        gate.wait(30)
        ab.report_progress(n=1)
        return 7

    def bad(_meta: dict[str, Any]) -> None:
        raise RuntimeError("observer broke")

    h = ab.run_in_thread(work)
    h.on_progress(bad)
    gate.set()
    assert h.get(30) == 7
    assert "observer broke" in caplog.text
