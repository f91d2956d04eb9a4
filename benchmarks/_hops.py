"""The thread-hop candidates, shared by the latency and the throughput families.

Every candidate runs ``noop()`` in a worker thread and awaits its end from an asyncio coroutine.
The asyncio ones run on the family's :class:`~benchmarks._harness.BenchLoop`. unsync cannot: it
runs coroutines only on its own loop (a daemon thread it starts), so its timed loop is an
``@unsync async`` function that awaits ``f()`` there, ``f`` being ``@unsync def`` (its thread pool),
and the harness waits for that function's ``.result()``: this is how unsync's users await it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

import asyncbridge as ab

from ._harness import (
    BLOCK_TIMEOUT,
    BenchLoop,
    Block,
    Candidate,
    have,
    noop,
    skipped,
    time_each_sync,
)

Timing = Callable[[int, Callable[[], Awaitable[object]]], Coroutine[Any, Any, list[float]]]


def hop_candidates(bench: BenchLoop, timing: Timing, *, sync_unsync: bool) -> list[Candidate]:
    """The candidates, each timed with ``timing`` (one-at-a-time or gathered)."""

    def on_loop(op: Callable[[], Awaitable[object]]) -> Block:
        return bench.block(lambda n: timing(n, op))

    loop = bench.loop
    out = [
        Candidate("asyncio.to_thread(noop)", on_loop(lambda: asyncio.to_thread(noop)), "floor"),
        Candidate("ab.run_in_thread(noop)", on_loop(lambda: ab.run_in_thread(noop)), "asyncbridge"),
        Candidate(
            "loop.run_in_executor(None, noop)", on_loop(lambda: loop.run_in_executor(None, noop)), "stdlib"
        ),
    ]

    name = "anyio.to_thread.run_sync(noop)"
    if have("anyio"):
        import anyio.to_thread

        out.append(Candidate(name, on_loop(lambda: anyio.to_thread.run_sync(noop))))
    else:
        out.append(skipped(name, "anyio"))

    name = "asgiref sync_to_async(noop, thread_sensitive=False)"
    if have("asgiref"):
        from asgiref.sync import sync_to_async

        s2a = sync_to_async(noop, thread_sensitive=False)
        out.append(Candidate(name, on_loop(s2a)))
    else:
        out.append(skipped(name, "asgiref"))

    out += _unsync(timing, sync_unsync)
    return out


def _unsync(timing: Timing, sync_unsync: bool) -> list[Candidate]:
    names = ["unsync: await f() in an @unsync async def"]
    if sync_unsync:
        names.append("unsync: f().result() from a plain thread")
    if not have("unsync"):
        return [skipped(name, "unsync", "unsync's own loop and thread pool") for name in names]
    from unsync import unsync

    f = unsync(noop)  # @unsync def: runs on unsync's ThreadPoolExecutor, returns an Unfuture

    async def timed(n: int) -> list[float]:
        return await timing(n, f)

    on_unsync_loop = unsync(timed)  # @unsync async def: runs on unsync's own loop thread

    def block(n: int) -> list[float]:
        return cast("list[float]", on_unsync_loop(n).result(BLOCK_TIMEOUT))

    out = [Candidate(names[0], block, note="timed on unsync's loop thread")]
    if sync_unsync:
        out.append(
            Candidate(
                names[1],
                lambda n: time_each_sync(n, lambda: f().result()),
                note="a blocking wait, not an await",
            )
        )
    return out
