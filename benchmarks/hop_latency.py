"""Thread hop latency: one ``await`` of no-op thread work at a time, each singly timed.

Floor: ``await asyncio.to_thread(noop)``. The figure is mostly two thread wake-ups (loop to
worker, worker back to the loop through ``call_soon_threadsafe``) plus each library's bookkeeping.

A second reference, the *raw two-wake-up round trip*, is that physical limit with no bookkeeping
at all: one bare worker thread (started once for the family) blocked in ``SimpleQueue.get()``; the
coroutine puts an ``asyncio.Future`` into the queue (the first wake-up), the worker calls
``noop()`` and answers at once with ``loop.call_soon_threadsafe(fut.set_result, None)`` (the
second), and the coroutine awaits the future. No executor, no context copy, no work item. The
family's summary sets every asyncbridge candidate against it: the goal is
``await ab.run_in_thread(noop)`` within :data:`RAW_GOAL` of it.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING

from rich.table import Table

from ._harness import BenchLoop, Candidate, Config, Estimate, Family, Group, noop, time_each
from ._hops import hop_candidates
from ._report import fmt

if TYPE_CHECKING:
    import asyncio
    from contextlib import ExitStack

    from ._harness import GroupResult

RAW = "raw two-wake-up round trip"
#: The goal: ``await ab.run_in_thread(noop)`` within this ratio of the raw round trip.
RAW_GOAL = 1.15
GOAL_CANDIDATE = "ab.run_in_thread(noop)"


class RawWorker:
    """One bare thread that, for every future it is handed, runs ``noop()`` and completes the future
    on its loop through ``call_soon_threadsafe``: the least a thread hop can cost."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._q: queue.SimpleQueue[asyncio.Future[None] | None] = queue.SimpleQueue()
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="bench-raw-worker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        get, answer = self._q.get, self._loop.call_soon_threadsafe
        while (fut := get()) is not None:
            noop()
            answer(fut.set_result, None)

    def hop(self) -> asyncio.Future[None]:
        """Hand the worker a new future (to be called on the loop) and return it, to be awaited."""
        fut = self._loop.create_future()
        self._q.put(fut)
        return fut

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(10)


def build(cfg: Config, stack: ExitStack) -> list[Group]:
    bench = stack.enter_context(BenchLoop())
    raw = RawWorker(bench.loop)
    stack.callback(raw.close)
    candidates = hop_candidates(bench, time_each, sync_unsync=True)
    candidates.insert(
        1,
        Candidate(
            RAW,
            bench.block(lambda n: time_each(n, raw.hop)),
            "stdlib",
            note="SimpleQueue.get() in a bare thread -> call_soon_threadsafe(fut.set_result)",
        ),
    )
    return [
        Group(
            title="await one no-op thread call",
            kind="latency",
            floor="asyncio.to_thread(noop)",
            candidates=candidates,
            ops=cfg.latency_ops,
            rounds=cfg.rounds,
        )
    ]


def summary(results: list[GroupResult]) -> Table | None:
    """Each asyncbridge candidate against the raw round trip (the physical limit) and the floor."""
    t = Table(
        title=f"hop-latency: against the {RAW} (the physical limit of one thread hop)",
        caption=(
            "vs raw: median over the raw round trip's median, and the range of block-median ratios "
            "(each block against the raw block of the same round)"
        ),
        title_justify="left",
    )
    for col in ("candidate", "median", "vs floor", "vs raw", "block ratios vs raw", "goal"):
        t.add_column(col, justify="left" if col in ("candidate", "goal") else "right")
    rows = 0
    for r in results:
        by_name = {c.name: c for c in r.results}
        raw = by_name.get(RAW)
        raw_median = raw.median if raw is not None else None
        floor_median = r.floor_median
        for c in r.results:
            median = c.median
            if c.role != "asyncbridge" or median is None:
                continue
            vs_raw = median / raw_median if raw_median else None
            spread = ""
            if raw is not None and raw_median and len(raw.block_medians) == len(c.block_medians):
                ratios = [a / b for a, b in zip(c.block_medians, raw.block_medians, strict=True) if b]
                if ratios:
                    spread = f"{min(ratios):.2f}x - {max(ratios):.2f}x"
            goal = ""
            if c.name == GOAL_CANDIDATE and vs_raw is not None:
                met = vs_raw <= RAW_GOAL
                goal = f"{'met' if met else '[red]missed[/red]'}: within {RAW_GOAL}x of the raw round trip"
            t.add_row(
                c.name,
                fmt(median, "s"),
                "-" if not floor_median else f"{median / floor_median:.2f}x",
                "-" if vs_raw is None else f"{vs_raw:.2f}x",
                spread,
                goal,
            )
            rows += 1
    return t if rows else None


FAMILY = Family(
    "hop-latency",
    "Thread hop latency",
    build,
    summary,
    estimate=Estimate(groups=1, seconds={"quick": 1, "default": 7, "full": 30}),
)
