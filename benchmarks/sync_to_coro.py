"""Sync -> coroutine: a plain thread runs a no-op coroutine and blocks for its result.

The timed thread is the main thread, which runs no event loop. Floor:
``asyncio.run_coroutine_threadsafe(coro(), loop).result()`` with ``loop`` running in a background
thread (started once, as an application would). ``ab.spawn(coro()).get()`` uses asyncbridge's own
background loop; anyio's ``BlockingPortal`` (one portal, started once) its own. asgiref's
``async_to_sync``, called from a thread without a loop, starts a fresh one-thread executor and runs
``asyncio.run`` on it for every call; ``asyncio.run(coro())`` makes and closes a loop per call.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import asyncbridge as ab

from ._harness import (
    BenchLoop,
    Candidate,
    Config,
    Estimate,
    Family,
    Group,
    have,
    noop_coro,
    skipped,
    time_each_sync,
)

if TYPE_CHECKING:
    from contextlib import ExitStack


def build(cfg: Config, stack: ExitStack) -> list[Group]:
    loop = stack.enter_context(BenchLoop("bench-floor-loop")).loop

    candidates = [
        Candidate(
            "run_coroutine_threadsafe(coro(), loop).result()",
            lambda n: time_each_sync(n, lambda: asyncio.run_coroutine_threadsafe(noop_coro(), loop).result()),
            "floor",
            note="loop in a background thread",
        ),
        Candidate(
            "ab.spawn(coro()).get()",
            lambda n: time_each_sync(n, lambda: ab.spawn(noop_coro()).get()),
            "asyncbridge",
        ),
    ]

    name = "anyio BlockingPortal.call(coro)"
    if have("anyio"):
        from anyio.from_thread import start_blocking_portal

        portal = stack.enter_context(start_blocking_portal())
        candidates.append(
            Candidate(name, lambda n: time_each_sync(n, lambda: portal.call(noop_coro)), note="one portal")
        )
    else:
        candidates.append(skipped(name, "anyio"))

    name = "asgiref async_to_sync(coro)()"
    if have("asgiref"):
        from asgiref.sync import async_to_sync

        a2s = async_to_sync(noop_coro)
        candidates.append(
            Candidate(name, lambda n: time_each_sync(n, a2s), note="a new loop and thread per call")
        )
    else:
        candidates.append(skipped(name, "asgiref"))

    candidates.append(
        Candidate(
            "asyncio.run(coro())",
            lambda n: time_each_sync(n, lambda: asyncio.run(noop_coro())),
            "stdlib",
            note="a new loop per call",
        )
    )
    return [
        Group(
            title="run a no-op coroutine from a plain thread and wait",
            kind="latency",
            floor=candidates[0].name,
            candidates=candidates,
            ops=cfg.latency_ops,
            rounds=cfg.rounds,
        )
    ]


FAMILY = Family(
    "sync-to-coro",
    "Sync -> coroutine",
    build,
    estimate=Estimate(groups=1, seconds={"quick": 1, "default": 9, "full": 46}),
)
