"""Process hop: one tiny task in a worker process, awaited from asyncio; singly and 2,000 at once.

The work is :func:`benchmarks._work.noop` (module-level, so every worker can import it); the
figure is the round trip: pickling the call, the pipe to a worker and back, and waking the loop.

Every pool has :data:`WORKERS` workers started with the same method (``forkserver`` where the
platform has it, else ``spawn``), and every pool is warmed before timing: all of its workers are
started and have run a task. The exceptions, said in the rows' notes: ``ab.run_in_process`` uses
the shared pool (one worker per CPU: the same count on a 2-CPU machine), and loky starts its
workers with its own ``loky`` method (spawn-like: a fresh interpreter, ``cloudpickle`` for calls).

- Floor: a raw ``concurrent.futures.ProcessPoolExecutor`` awaited through ``asyncio.wrap_future``.
- asyncbridge: ``await ab.run_in_process(noop)``, and ``ab.ProcessPool(WORKERS).submit(noop)``.
- Peers: pebble's ``ProcessPool.schedule`` and loky's ``get_reusable_executor().submit``, both
  awaited through ``asyncio.wrap_future``.

Latency: one ``await`` at a time, each singly timed. Throughput: one timed gather of all the calls
(creating them included), divided by their number.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import importlib
import multiprocessing
import os
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import asyncbridge as ab

from ._harness import (
    BenchLoop,
    Block,
    Candidate,
    Config,
    Estimate,
    Family,
    Group,
    have,
    perf_counter,
    skipped,
    time_each,
    time_gather,
)
from ._work import noop, pause

if TYPE_CHECKING:
    from contextlib import ExitStack

WORKERS = 2
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
#: Throughput: calls per block (the issue's 2,000; fewer in the quick run).
TASKS = {"full": 2_000, "default": 2_000, "quick": 500}


def warm(submit: Callable[[], cf.Future[Any]], workers: int = WORKERS) -> None:
    """Keep every worker busy at once (twice over), so that all of them are started."""
    for f in [submit() for _ in range(2 * workers)]:
        f.result(120)


Op = Callable[[], Awaitable[object]]
Timing = Callable[[int, Op], Coroutine[Any, Any, list[float]]]


def _ops(stack: ExitStack) -> list[tuple[Candidate, Op | None]]:
    """Each candidate (its block still unset) with the ``op`` whose await is timed; None: skipped."""
    ctx = multiprocessing.get_context(START_METHOD)
    cpus = os.cpu_count() or 1
    out: list[tuple[Candidate, Op | None]] = []

    # asyncbridge first: its pools ask the forkserver to preload asyncbridge._process_boot, which only
    # holds if they are made before the forkserver starts (it is shared by every pool here).
    own = ab.ProcessPool(WORKERS, start_method=START_METHOD)
    stack.callback(own.shutdown)
    warm(lambda: ab.run_in_process(pause, 0.05), cpus)
    warm(lambda: own.submit(pause, 0.05))

    floor = cf.ProcessPoolExecutor(WORKERS, mp_context=ctx)
    stack.callback(floor.shutdown)
    warm(lambda: floor.submit(pause, 0.05))
    wrap_future = asyncio.wrap_future

    out.append(
        (
            Candidate(
                "ProcessPoolExecutor + wrap_future",
                None,
                "floor",
                note=f"{WORKERS} workers, {START_METHOD}",
            ),
            lambda: wrap_future(floor.submit(noop)),
        )
    )
    out.append(
        (
            Candidate(
                "ab.run_in_process(noop)",
                None,
                "asyncbridge",
                note=f"shared pool: {cpus} workers (one per CPU), its default {START_METHOD}",
            ),
            lambda: ab.run_in_process(noop),
        )
    )
    out.append(
        (
            Candidate(f"ab.ProcessPool({WORKERS}).submit(noop)", None, "asyncbridge", note=START_METHOD),
            lambda: own.submit(noop),
        )
    )

    name = "pebble ProcessPool.schedule + wrap_future"
    if have("pebble"):
        import pebble

        pp = pebble.ProcessPool(max_workers=WORKERS, context=ctx)
        stack.callback(pp.join)
        stack.callback(pp.close)
        warm(lambda: pp.schedule(pause, args=(0.05,)))
        out.append(
            (
                Candidate(name, None, note=f"{WORKERS} workers, {START_METHOD}"),
                lambda: wrap_future(pp.schedule(noop)),
            )
        )
    else:
        out.append((skipped(name, "pebble"), None))

    name = "loky get_reusable_executor().submit + wrap_future"
    if have("loky"):
        loky: Any = importlib.import_module("loky")  # untyped: no py.typed marker
        lk = loky.get_reusable_executor(max_workers=WORKERS, timeout=3600)
        stack.callback(lk.shutdown, wait=True)
        warm(lambda: lk.submit(pause, 0.05))
        out.append(
            (
                Candidate(name, None, note=f"{WORKERS} workers, loky's own start method (spawn-like)"),
                lambda: wrap_future(lk.submit(noop)),
            )
        )
    else:
        out.append((skipped(name, "loky"), None))
    return out


def build(cfg: Config, stack: ExitStack) -> list[Group]:
    bench = stack.enter_context(BenchLoop())
    ops = _ops(stack)

    def on_loop(timing: Timing, op: Op) -> Block:
        return bench.block(lambda n: timing(n, op))

    def timed(timing: Timing) -> list[Candidate]:
        return [
            Candidate(c.name, None if op is None else on_loop(timing, op), c.role, c.note, c.skip)
            for c, op in ops
        ]

    async def ab_gather(n: int) -> list[float]:
        run = ab.run_in_process
        t0 = perf_counter()
        await ab.gather(*[run(noop) for _ in range(n)])
        return [(perf_counter() - t0) / n]

    floor = ops[0][0].name
    latency_rounds = max(cfg.rounds // 2, 3)
    throughput = timed(time_gather)
    throughput.insert(
        2, Candidate("ab.gather(*ab.run_in_process(noop)...)", bench.block(ab_gather), "asyncbridge")
    )
    tasks = cfg.pick(TASKS)
    return [
        Group(
            title="await one no-op task in a worker process",
            kind="latency",
            floor=floor,
            candidates=timed(time_each),
            ops=max(cfg.latency_ops // 4, 20),
            rounds=latency_rounds,
        ),
        Group(
            title=f"{tasks:,} concurrent no-op process tasks, per task",
            kind="throughput",
            floor=floor,
            candidates=throughput,
            ops=tasks,
            rounds=max(cfg.throughput_rounds * 3 // 4, 3),
            note="asyncio.gather unless named",
        ),
    ]


FAMILY = Family(
    "process-hop",
    "Process hop",
    build,
    estimate=Estimate(groups=2, seconds={"quick": 3, "default": 9, "full": 41}),
)
