"""cf -> await: awaiting ``concurrent.futures`` futures, done handles and tasks from a coroutine.

Three groups, each with its own floor:

- *pending*: a fresh ``cf.Future`` is wrapped, handed to a completer thread, and awaited; the timed
  span is wrap + hand-off + await. Floor: ``await asyncio.wrap_future(f)``.
- *already done*: awaiting something that is done needs no thread hop. Floor: awaiting a done
  ``asyncio.Future``; ``asyncio.wrap_future`` of a done ``cf.Future`` still hops through
  ``call_soon_threadsafe``. A sample times ``inner`` awaits (the same done object; for the wrap
  rows a new wrap each time) and divides; loop overhead is in every row alike.
- *task*: a task is created (untimed), then awaited directly (floor) or through ``ab.wrap``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import queue
import threading
from typing import TYPE_CHECKING

import asyncbridge as ab

from ._harness import BenchLoop, Candidate, Config, Estimate, Family, Group, noop_coro, perf_counter

if TYPE_CHECKING:
    from contextlib import ExitStack


class Completer:
    """A thread that completes the futures it is handed, as an executor's worker would."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[cf.Future[None] | None] = queue.SimpleQueue()
        self.put = self._q.put
        self._thread = threading.Thread(target=self._run, name="bench-completer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        get = self._q.get
        while (f := get()) is not None:
            f.set_result(None)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(10)


def _pending(cfg: Config, bench: BenchLoop, stack: ExitStack) -> Group:
    completer = Completer()
    stack.callback(completer.close)
    put = completer.put

    async def floor(n: int) -> list[float]:
        out = [0.0] * n
        for i in range(n):
            f: cf.Future[None] = cf.Future()
            t0 = perf_counter()
            aw = asyncio.wrap_future(f)
            put(f)
            await aw
            out[i] = perf_counter() - t0
        return out

    async def handle(n: int) -> list[float]:
        out = [0.0] * n
        for i in range(n):
            f: cf.Future[None] = cf.Future()
            t0 = perf_counter()
            h = ab.wrap(f)
            put(f)
            await h
            out[i] = perf_counter() - t0
        return out

    return Group(
        title="await a pending cf.Future completed by another thread",
        kind="latency",
        floor="asyncio.wrap_future(f)",
        candidates=[
            Candidate("asyncio.wrap_future(f)", bench.block(floor), "floor"),
            Candidate("ab.wrap(f)", bench.block(handle), "asyncbridge"),
        ],
        ops=cfg.latency_ops,
        rounds=cfg.rounds,
    )


def _done(cfg: Config, bench: BenchLoop) -> Group:
    inner = range(cfg.inner)
    k = cfg.inner

    async def done_future(n: int) -> list[float]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        out = [0.0] * n
        for i in range(n):
            t0 = perf_counter()
            for _ in inner:
                await fut
            out[i] = (perf_counter() - t0) / k
        return out

    async def done_handle(n: int) -> list[float]:
        h: ab.Result[None] = ab.Result()
        h.set_result(None)
        out = [0.0] * n
        for i in range(n):
            t0 = perf_counter()
            for _ in inner:
                await h
            out[i] = (perf_counter() - t0) / k
        return out

    async def wrap_future_done(n: int) -> list[float]:
        f: cf.Future[None] = cf.Future()
        f.set_result(None)
        wrap_future = asyncio.wrap_future
        out = [0.0] * n
        for i in range(n):
            t0 = perf_counter()
            for _ in inner:
                await wrap_future(f)
            out[i] = (perf_counter() - t0) / k
        return out

    async def wrap_done(n: int) -> list[float]:
        f: cf.Future[None] = cf.Future()
        f.set_result(None)
        wrap = ab.wrap
        out = [0.0] * n
        for i in range(n):
            t0 = perf_counter()
            for _ in inner:
                await wrap(f)
            out[i] = (perf_counter() - t0) / k
        return out

    floor = "done asyncio.Future"
    return Group(
        title="await something already done",
        kind="latency",
        floor=floor,
        candidates=[
            Candidate(floor, bench.block(done_future), "floor"),
            Candidate("done ab.Result", bench.block(done_handle), "asyncbridge"),
            Candidate("ab.wrap(done cf.Future)", bench.block(wrap_done), "asyncbridge", note="a new handle"),
            Candidate("asyncio.wrap_future(done cf.Future)", bench.block(wrap_future_done), "stdlib"),
        ],
        ops=cfg.latency_ops,
        rounds=cfg.rounds,
        note=f"a sample is {cfg.inner} awaits",
    )


def _task(cfg: Config, bench: BenchLoop) -> Group:
    async def plain(n: int) -> list[float]:
        loop = asyncio.get_running_loop()
        out = [0.0] * n
        for i in range(n):
            t = loop.create_task(noop_coro())
            t0 = perf_counter()
            await t
            out[i] = perf_counter() - t0
        return out

    async def wrapped(n: int) -> list[float]:
        loop = asyncio.get_running_loop()
        out = [0.0] * n
        for i in range(n):
            t = loop.create_task(noop_coro())
            t0 = perf_counter()
            await ab.wrap(t)
            out[i] = perf_counter() - t0
        return out

    return Group(
        title="await a new task on its own loop",
        kind="latency",
        floor="await task",
        candidates=[
            Candidate("await task", bench.block(plain), "floor"),
            Candidate("await ab.wrap(task)", bench.block(wrapped), "asyncbridge"),
        ],
        ops=cfg.latency_ops,
        rounds=cfg.rounds,
    )


def build(cfg: Config, stack: ExitStack) -> list[Group]:
    bench = stack.enter_context(BenchLoop())
    return [_pending(cfg, bench, stack), _done(cfg, bench), _task(cfg, bench)]


FAMILY = Family(
    "cf-await",
    "cf -> await",
    build,
    estimate=Estimate(groups=3, seconds={"quick": 1, "default": 7, "full": 28}),
)
