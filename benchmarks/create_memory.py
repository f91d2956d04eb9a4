"""Creation cost and memory per pending object.

- *create*: time to make one pending object (a sample times ``inner`` creations and divides).
  Floor: ``cf.Future()``.
- *memory*: bytes per pending object, from ``tracemalloc`` over many live objects (the list that
  holds them is allocated before tracing starts). A pending ``run_in_thread`` handle cannot be held
  pending, so the blank ``ab.Result()`` stands for it (``run_in_thread`` makes exactly that). Floor:
  what the stdlib needs to await a ``cf.Future`` on a loop: the ``cf.Future`` plus the
  ``asyncio.Future`` that ``asyncio.wrap_future`` chains to it.

In both groups ``ab.wrap(cf.Future())`` counts the ``cf.Future`` too. The *wrap only* rows count the
wrap alone, as an application pays it for a future an executor already made: the pending
``cf.Future`` s are made before the timed loop (a sample wraps ``inner`` of them; the futures,
which keep their handles through the done-callback, are freed after the sample, untimed), and
before ``tracemalloc`` starts (so the bytes are the handle and what the wrap adds to the future, its
done-callback entry). The family's summary judges them against the goals: the wrap within
:data:`WRAP_TIME_GOAL` of ``cf.Future()``, and at most :data:`WRAP_BYTES_GOAL` bytes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import tracemalloc
from typing import TYPE_CHECKING

from rich.table import Table

import asyncbridge as ab

from ._harness import BenchLoop, Block, Candidate, Config, Estimate, Family, Group, perf_counter
from ._report import fmt

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import ExitStack

    from ._harness import GroupResult

#: The goals: wrapping an existing pending ``cf.Future`` costs at most this ratio of ``cf.Future()``,
#: and adds at most this many bytes to it.
WRAP_TIME_GOAL = 1.0
WRAP_BYTES_GOAL = 400
WRAP_ONLY = "ab.wrap(pending cf.Future), the wrap only"
WRAP_FUTURE_ONLY = "asyncio.wrap_future(pending cf.Future), the wrap only"


def _pending() -> cf.Future[None]:
    return cf.Future()


def _create(cfg: Config, bench: BenchLoop) -> Group:
    inner = range(cfg.inner)
    k = cfg.inner

    def timed(make: Callable[[], object]) -> Block:
        async def run(n: int) -> list[float]:
            out = [0.0] * n
            for i in range(n):
                t0 = perf_counter()
                for _ in inner:
                    make()
                out[i] = (perf_counter() - t0) / k
            return out

        return bench.block(run)

    def timed_over(wrap: Callable[[cf.Future[None]], object]) -> Block:
        """Like ``timed``, but each sample first makes ``inner`` pending futures (untimed), then
        times ``wrap`` over them."""

        async def run(n: int) -> list[float]:
            out = [0.0] * n
            for i in range(n):
                futures = [_pending() for _ in inner]
                t0 = perf_counter()
                for f in futures:
                    wrap(f)
                out[i] = (perf_counter() - t0) / k
                del futures  # with their handles (each future's done-callback holds its own)
            return out

        return bench.block(run)

    loop = bench.loop
    made_before = "futures made before the sample, freed after it"
    return Group(
        title="create one pending object",
        kind="latency",
        floor="cf.Future()",
        candidates=[
            Candidate("cf.Future()", timed(cf.Future), "floor"),
            Candidate("ab.Result()", timed(ab.Result), "asyncbridge"),
            Candidate("loop.create_future()", timed(loop.create_future), "stdlib"),
            Candidate("ab.wrap(cf.Future())", timed(lambda: ab.wrap(cf.Future())), "asyncbridge"),
            Candidate(
                "asyncio.wrap_future(cf.Future())",
                timed(lambda: asyncio.wrap_future(cf.Future(), loop=loop)),
                "stdlib",
            ),
            Candidate(WRAP_ONLY, timed_over(ab.wrap), "asyncbridge", note=made_before),
            Candidate(
                WRAP_FUTURE_ONLY,
                timed_over(lambda f: asyncio.wrap_future(f, loop=loop)),
                "stdlib",
                note=made_before,
            ),
        ],
        ops=cfg.latency_ops,
        rounds=cfg.rounds,
        note=f"a sample is {cfg.inner} creations",
    )


def bytes_per_object(make: Callable[[], object], n: int) -> float:
    """Bytes that ``n`` live objects from ``make()`` hold, per object."""
    keep: list[object] = [None] * n
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            keep[i] = make()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        gc.enable()
    del keep
    return used / n


def bytes_per_wrap(wrap: Callable[[cf.Future[None]], object], n: int) -> float:
    """Bytes that ``wrap(f)`` adds to each of ``n`` live pending futures made before tracing starts
    (the handles, and what the wrap adds to the future), per future."""
    futures = [_pending() for _ in range(n)]
    keep: list[object] = [None] * n
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i, f in enumerate(futures):
            keep[i] = wrap(f)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        gc.enable()
    del keep, futures
    return used / n


def _memory(cfg: Config, bench: BenchLoop) -> Group:
    loop = bench.loop  # the futures are only created against it, in this thread; nothing runs

    def measured(make: Callable[[], object]) -> Block:
        return lambda n: [bytes_per_object(make, n)]

    floor = "cf.Future + asyncio.Future (wrap_future)"
    return Group(
        title="memory per pending object",
        kind="memory",
        unit="B",
        floor=floor,
        candidates=[
            Candidate(floor, measured(lambda: asyncio.wrap_future(cf.Future(), loop=loop)), "floor"),
            Candidate("ab.Result()", measured(ab.Result), "asyncbridge", note="as run_in_thread makes"),
            Candidate(
                "ab.wrap(cf.Future())",
                measured(lambda: ab.wrap(cf.Future())),
                "asyncbridge",
                note="the cf.Future included",
            ),
            Candidate(
                WRAP_ONLY,
                lambda n: [bytes_per_wrap(ab.wrap, n)],
                "asyncbridge",
                note="the cf.Future not included: made before tracing",
            ),
            Candidate("cf.Future()", measured(cf.Future), "stdlib"),
            Candidate("asyncio.Future", measured(loop.create_future), "stdlib"),
            Candidate(
                WRAP_FUTURE_ONLY,
                lambda n: [bytes_per_wrap(lambda f: asyncio.wrap_future(f, loop=loop), n)],
                "stdlib",
                note="the cf.Future not included: made before tracing",
            ),
        ],
        ops=cfg.memory_objects,
        rounds=cfg.memory_rounds,
        note=f"tracemalloc over {cfg.memory_objects:,} live objects",
    )


def build(cfg: Config, stack: ExitStack) -> list[Group]:
    bench = stack.enter_context(BenchLoop())
    return [_create(cfg, bench), _memory(cfg, bench)]


def summary(results: list[GroupResult]) -> Table | None:
    """The wrap-only rows against the goals."""
    t = Table(title="memory: the goals of wrapping an existing pending cf.Future", title_justify="left")
    for col in ("candidate", "median", "against", "goal"):
        t.add_column(col, justify="right" if col == "median" else "left")
    rows = 0
    for r in results:
        by_name = {c.name: c for c in r.results}
        wrap = by_name.get(WRAP_ONLY)
        median = wrap.median if wrap is not None else None
        if median is None:
            continue
        if r.group.kind == "memory":
            against = f"{median / WRAP_BYTES_GOAL:.2f}x of the goal's {WRAP_BYTES_GOAL} B"
            met, goal = median <= WRAP_BYTES_GOAL, f"at most {WRAP_BYTES_GOAL} B beyond the cf.Future itself"
        else:
            floor = r.floor_median
            if not floor:
                continue
            ratio = median / floor
            against = f"{ratio:.2f}x of {r.group.floor}"
            met, goal = ratio <= WRAP_TIME_GOAL, f"at most {WRAP_TIME_GOAL}x of {r.group.floor}"
        t.add_row(
            WRAP_ONLY, fmt(median, r.group.unit), against, f"{'met' if met else '[red]missed[/red]'}: {goal}"
        )
        rows += 1
    return t if rows else None


FAMILY = Family(
    "memory",
    "Creation and memory",
    build,
    summary,
    estimate=Estimate(groups=2, seconds={"quick": 4, "default": 13, "full": 70}),
)
