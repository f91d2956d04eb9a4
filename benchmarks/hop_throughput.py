"""Thread hop throughput: N concurrent no-op thread calls under one ``asyncio.gather``.

A block is one timed gather (creating the N awaitables included); the figure is its time divided
by N. Floor: ``asyncio.to_thread``. Every pool here is bounded, so this measures queueing and
completion overhead, not parallelism.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._harness import BenchLoop, Config, Estimate, Family, Group, time_gather
from ._hops import hop_candidates

if TYPE_CHECKING:
    from contextlib import ExitStack


def build(cfg: Config, stack: ExitStack) -> list[Group]:
    bench = stack.enter_context(BenchLoop())
    return [
        Group(
            title=f"{cfg.throughput_calls:,} concurrent no-op thread calls, per call",
            kind="throughput",
            floor="asyncio.to_thread(noop)",
            candidates=hop_candidates(bench, time_gather, sync_unsync=False),
            ops=cfg.throughput_calls,
            rounds=cfg.throughput_rounds,
        )
    ]


FAMILY = Family(
    "hop-throughput",
    "Thread hop throughput",
    build,
    estimate=Estimate(groups=1, seconds={"quick": 2, "default": 17, "full": 117}),
)
