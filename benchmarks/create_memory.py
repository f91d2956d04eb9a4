"""Creation cost and memory per pending object.

- *create*: time to make one pending object (a sample times ``inner`` creations and divides).
  Floor: ``cf.Future()``.
- *memory*: bytes per pending object, from ``tracemalloc`` over many live objects (the list that
  holds them is allocated before tracing starts). A pending ``run_in_thread`` handle cannot be held
  pending, so the blank ``ab.Result()`` stands for it (``run_in_thread`` makes exactly that). Floor:
  what the stdlib needs to await a ``cf.Future`` on a loop: the ``cf.Future`` plus the
  ``asyncio.Future`` that ``asyncio.wrap_future`` chains to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import tracemalloc
from typing import TYPE_CHECKING

import asyncbridge as ab

from ._harness import BenchLoop, Block, Candidate, Config, Family, Group, perf_counter

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import ExitStack


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

    loop = bench.loop
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
            Candidate("cf.Future()", measured(cf.Future), "stdlib"),
            Candidate("asyncio.Future", measured(loop.create_future), "stdlib"),
        ],
        ops=cfg.memory_objects,
        rounds=cfg.memory_rounds,
        note=f"tracemalloc over {cfg.memory_objects:,} live objects",
    )


def build(cfg: Config, stack: ExitStack) -> list[Group]:
    bench = stack.enter_context(BenchLoop())
    return [_create(cfg, bench), _memory(cfg, bench)]


FAMILY = Family("memory", "Creation and memory", build)
