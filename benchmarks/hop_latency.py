"""Thread hop latency: one ``await`` of no-op thread work at a time, each singly timed.

Floor: ``await asyncio.to_thread(noop)``. The figure is mostly two thread wake-ups (loop to
worker, worker back to the loop through ``call_soon_threadsafe``) plus each library's bookkeeping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._harness import BenchLoop, Config, Family, Group, time_each
from ._hops import hop_candidates

if TYPE_CHECKING:
    from contextlib import ExitStack


def build(cfg: Config, stack: ExitStack) -> list[Group]:
    bench = stack.enter_context(BenchLoop())
    return [
        Group(
            title="await one no-op thread call",
            kind="latency",
            floor="asyncio.to_thread(noop)",
            candidates=hop_candidates(bench, time_each, sync_unsync=True),
            ops=cfg.latency_ops,
            rounds=cfg.rounds,
        )
    ]


FAMILY = Family("hop-latency", "Thread hop latency", build)
