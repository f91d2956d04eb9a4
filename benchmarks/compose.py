"""Composition scaling: ``ab.gather`` and ``ab.as_completed`` over N handles, N up to 100,000.

N is 1,000, 10,000 and, in the full run only (``--full``), 100,000.

Each block makes N pending objects (untimed), then times: composing them, a completer thread
finishing every one of them, and the composite's end reaching the caller. The figure is that time
divided by N; one group per N, each with its own floor, so the ratio compares equal work.

- *gather* (awaited on a loop): ``await ab.gather(*handles)``, the thread calling
  ``h.set_result(None)`` on each handle. Floor: ``await asyncio.gather(*futures)`` over asyncio
  futures, the thread handing the loop one ``call_soon_threadsafe`` that finishes them all (the
  cheapest thread-safe way). Beside it, the usual way, one ``call_soon_threadsafe(f.set_result)``
  per future (as ``asyncio.wrap_future`` does).
- *as_completed* (a plain thread, blocking): ``for h in ab.as_completed(handles)`` against
  ``for f in concurrent.futures.as_completed(futures)``, the thread calling ``f.set_result(None)``.

The family's summary sets the per-item times of every N side by side: time that grows linearly
with N keeps the per-item time flat.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import queue
import threading
from typing import TYPE_CHECKING

from rich.table import Table

import asyncbridge as ab

from ._harness import BenchLoop, Block, Candidate, Config, Estimate, Family, Group, perf_counter
from ._report import fmt

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import ExitStack

    from ._harness import GroupResult

#: The Ns, and the most rounds per N (fewer for the big ones: each block makes N objects).
SIZES = (1_000, 10_000, 100_000)
ROUNDS = {1_000: 15, 10_000: 8, 100_000: 4}
#: The Ns that only the full run measures (the default and quick runs stop at 10,000).
FULL_ONLY = frozenset({100_000})
#: Per-item time at the largest N over that at the smallest: above this, "not linear".
LINEAR_LIMIT = 1.5

GATHER_FLOOR = "asyncio.gather(*futures)"
AS_COMPLETED_FLOOR = "cf.as_completed(futures)"


class Completer:
    """A thread that runs the jobs it is handed (completing a batch of futures or handles)."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self.put = self._q.put
        self._thread = threading.Thread(target=self._run, name="bench-completer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        get = self._q.get
        while (job := get()) is not None:
            job()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(30)


def _finish_handles(handles: list[ab.Result[None]]) -> Callable[[], None]:
    def job() -> None:
        for h in handles:
            h.set_result(None)

    return job


def _gather(bench: BenchLoop, completer: Completer, n_items: int, rounds: int) -> Group:
    put = completer.put

    def asyncio_gather(batched: bool) -> Block:
        async def block(n: int) -> list[float]:
            loop = asyncio.get_running_loop()
            futures = [loop.create_future() for _ in range(n)]

            def finish_all() -> None:
                for f in futures:
                    f.set_result(None)

            def job() -> None:
                if batched:
                    loop.call_soon_threadsafe(finish_all)
                else:
                    call = loop.call_soon_threadsafe
                    for f in futures:
                        call(f.set_result, None)

            t0 = perf_counter()
            together = asyncio.gather(*futures)
            put(job)
            await together
            return [(perf_counter() - t0) / n]

        return bench.block(block)

    async def handles(n: int) -> list[float]:
        hs: list[ab.Result[None]] = [ab.Result() for _ in range(n)]
        t0 = perf_counter()
        together = ab.gather(*hs)
        put(_finish_handles(hs))
        await together
        return [(perf_counter() - t0) / n]

    return Group(
        title=f"gather {n_items:,} pending objects completed by a thread, per item",
        kind="throughput",
        floor=GATHER_FLOOR,
        candidates=[
            Candidate(GATHER_FLOOR, asyncio_gather(True), "floor", note="one call_soon_threadsafe for all"),
            Candidate("ab.gather(*handles)", bench.block(handles), "asyncbridge", note="h.set_result each"),
            Candidate(
                "asyncio.gather(*futures), one call_soon_threadsafe each",
                asyncio_gather(False),
                "stdlib",
                note="call_soon_threadsafe(f.set_result) each",
            ),
        ],
        ops=n_items,
        rounds=rounds,
    )


def _as_completed(completer: Completer, n_items: int, rounds: int) -> Group:
    put = completer.put

    def floor(n: int) -> list[float]:
        futures: list[cf.Future[None]] = [cf.Future() for _ in range(n)]

        def job() -> None:
            for f in futures:
                f.set_result(None)

        t0 = perf_counter()
        seen = 0
        it = cf.as_completed(futures)
        put(job)
        for _ in it:
            seen += 1
        dt = perf_counter() - t0
        assert seen == n
        return [dt / n]

    def handles(n: int) -> list[float]:
        hs: list[ab.Result[None]] = [ab.Result() for _ in range(n)]
        t0 = perf_counter()
        seen = 0
        it = ab.as_completed(hs)
        put(_finish_handles(hs))
        for _ in it:
            seen += 1
        dt = perf_counter() - t0
        assert seen == n
        return [dt / n]

    return Group(
        title=f"as_completed over {n_items:,} pending objects completed by a thread, per item",
        kind="throughput",
        floor=AS_COMPLETED_FLOOR,
        candidates=[
            Candidate(AS_COMPLETED_FLOOR, floor, "floor", note="for f in ...: a plain thread"),
            Candidate(
                "ab.as_completed(handles)", handles, "asyncbridge", note="for h in ...: a plain thread"
            ),
        ],
        ops=n_items,
        rounds=rounds,
    )


def build(cfg: Config, stack: ExitStack) -> list[Group]:
    bench = stack.enter_context(BenchLoop())
    completer = Completer()
    stack.callback(completer.close)
    groups = []
    for n in SIZES:
        groups.append(_gather(bench, completer, n, min(ROUNDS[n], cfg.rounds)))
    for n in SIZES:
        groups.append(_as_completed(completer, n, min(ROUNDS[n], cfg.rounds)))
    for g in groups:
        g.full_only = g.ops in FULL_ONLY
    return groups


def summary(results: list[GroupResult]) -> Table | None:
    """Per-item medians at every N side by side, and how much they grow from the smallest N to the
    largest, beside the growth of the row's own floor (the stdlib is not flat either: at 100,000
    live objects caches miss and the cyclic GC runs full collections)."""
    sizes = sorted({r.group.ops for r in results})
    if len(sizes) < 2:
        return None
    per_item: dict[str, dict[int, float | None]] = {}
    floor_of: dict[str, str] = {}
    for r in results:
        for c in r.results:
            per_item.setdefault(c.name, {})[r.group.ops] = c.median
            floor_of[c.name] = r.group.floor

    def growth(name: str) -> float | None:
        first, last = per_item[name].get(sizes[0]), per_item[name].get(sizes[-1])
        return None if not first or last is None else last / first

    t = Table(
        title="compose: per-item time against N (flat = linear)",
        caption=(
            f"growth = per-item time at N={sizes[-1]:,} over N={sizes[0]:,}; "
            f"linear: growth within {LINEAR_LIMIT}x of its floor's growth"
        ),
        title_justify="left",
    )
    t.add_column("candidate")
    for n in sizes:
        t.add_column(f"N={n:,}", justify="right")
    t.add_column("growth", justify="right")
    t.add_column("floor's growth", justify="right")
    t.add_column("verdict")
    for name, by_n in per_item.items():
        own, floor = growth(name), growth(floor_of[name])
        if own is None or floor is None:
            verdict = "-"
        elif own <= floor * LINEAR_LIMIT:
            verdict = "linear" if name != floor_of[name] else "(floor)"
        else:
            verdict = "[red]grows faster than its floor[/red]"
        t.add_row(
            name,
            *(fmt(by_n.get(n), "s") for n in sizes),
            "-" if own is None else f"{own:.2f}x",
            "-" if floor is None else f"{floor:.2f}x",
            verdict,
        )
    return t


FAMILY = Family(
    "compose",
    "Composition scaling",
    build,
    summary,
    estimate=Estimate(groups=6, full_only=2, seconds={"quick": 2, "default": 7, "full": 29}),
)
