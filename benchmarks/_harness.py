"""The timing method shared by every family (GUIDE section 4, "Benchmarks report ratios").

- A *group* compares candidates doing the same job against one stdlib *floor*.
- Each round runs one *block* per candidate, in a fresh shuffled order, so drift (thermal, other
  processes, a growing heap) hits every candidate alike.
- A latency block is ``ops`` singly-timed operations and yields one sample per operation (for
  operations under a microsecond a sample times a batch of ``inner`` and divides, else the timer
  would dominate). A throughput block is one timed bulk operation and yields one per-call sample.
  A memory block yields bytes per object.
- Per candidate: the median and p90 of all its samples, the ratio of its median to the floor's
  median from the same run, and the min/max of its block medians as a noise gauge.
- How much is measured is a :class:`Config`: :data:`DEFAULT`, :data:`FULL` or :data:`QUICK`. They
  differ only in rounds, block sizes and whether the groups marked ``full_only`` run; the method
  above is the same in all three.

Async candidates run on a :class:`BenchLoop`: one loop in its own thread whose root task lives
for the whole family, as an application's ``asyncio.run(main())`` does (anyio keeps its worker
threads for as long as the root task lives; a loop restarted per block would start new ones).
The timed code runs inside that loop; only a finished block's samples cross back.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

if TYPE_CHECKING:
    import random
    from contextlib import ExitStack
    from types import TracebackType

T = TypeVar("T")

Kind = Literal["latency", "throughput", "memory"]
Role = Literal["floor", "asyncbridge", "stdlib", "peer"]
Block = Callable[[int], list[float]]

perf_counter = time.perf_counter

#: A block that takes longer than this is a hang: it fails, with a message, instead of the run.
BLOCK_TIMEOUT = 120.0

#: Packages whose versions go into the results.
PACKAGES = ("asyncbridge", "anyio", "trio", "unsync", "asgiref", "pebble", "loky", "rich", "matplotlib")


@dataclass(frozen=True)
class Config:
    """How much to measure: :data:`DEFAULT` (``python -m benchmarks``), :data:`FULL` (``--full``) or
    :data:`QUICK` (``--quick``, the smoke run). Every config runs every family, with the same method;
    the runs differ in rounds and block sizes, and the default and quick runs leave out the groups
    marked :attr:`Group.full_only` (the extra sizes of a family that measures several). A family that
    sizes a group by hand looks its sizes up by :attr:`name`, falling back to the full run's."""

    name: str
    rounds: int
    latency_ops: int  # samples per latency block
    inner: int  # operations per sample, for operations under a microsecond
    throughput_calls: int  # concurrent calls in one throughput block
    throughput_rounds: int
    memory_objects: int
    memory_rounds: int
    full_groups: bool  # also run the groups marked ``full_only``
    hang_timeout: float  # seconds: past this, dump every thread's stack and exit 1
    about: str = ""  # one line for the plan printed before the run

    def pick(self, sizes: Mapping[str, T]) -> T:
        """``sizes[self.name]``, else the full run's (``sizes["full"]``)."""
        return sizes.get(self.name, sizes["full"])


QUICK = Config(
    name="quick",
    rounds=3,
    latency_ops=60,
    inner=10,
    throughput_calls=1_000,
    throughput_rounds=3,
    memory_objects=20_000,
    memory_rounds=1,
    full_groups=False,
    hang_timeout=180,
    about="a smoke run: few rounds, small blocks; its figures are not for quoting",
)
DEFAULT = Config(
    name="default",
    rounds=15,
    latency_ops=400,
    inner=20,
    throughput_calls=10_000,
    throughput_rounds=3,
    memory_objects=20_000,
    memory_rounds=2,
    full_groups=False,
    hang_timeout=600,
    about="every family and its headline groups, with fewer rounds and smaller blocks than --full",
)
FULL = Config(
    name="full",
    rounds=40,
    latency_ops=800,
    inner=20,
    throughput_calls=10_000,
    throughput_rounds=20,
    memory_objects=100_000,
    memory_rounds=3,
    full_groups=True,
    hang_timeout=1800,
    about="every group, with the most rounds: the figures the README quotes",
)


@dataclass(frozen=True)
class Estimate:
    """What a family runs, for the plan printed before a run starts (building a family starts its
    servers and pools, so the plan cannot ask the family itself): ``groups``, how many groups it
    makes in the full run, ``full_only`` of them only there; ``seconds``, its wall time per config
    name (set-up and teardown included), measured on 2 cores (``results.json`` records every
    family's, in ``meta.family_seconds``: update these from a run when a family changes)."""

    groups: int
    full_only: int = 0
    seconds: Mapping[str, float] = field(default_factory=dict)

    def groups_in(self, cfg: Config) -> int:
        return self.groups - (0 if cfg.full_groups else self.full_only)

    def seconds_in(self, cfg: Config) -> float | None:
        return self.seconds.get(cfg.name)


@dataclass
class Candidate:
    """One way of doing the group's job. ``block`` is None when the candidate is skipped."""

    name: str
    block: Block | None
    role: Role = "peer"
    note: str = ""
    skip: str = ""  # why it is skipped (a missing package)


@dataclass
class Group:
    """Candidates compared against one floor, with one kind of measurement."""

    title: str
    kind: Kind
    floor: str
    candidates: list[Candidate]
    ops: int  # latency: samples per block; throughput: calls per block; memory: objects
    rounds: int
    unit: Literal["s", "B"] = "s"
    note: str = ""
    full_only: bool = False  # run by the full config only (see Config)


@dataclass
class Family:
    """A module's benchmarks: ``build`` makes its groups and registers their teardown on ``stack``
    (the runner drops the groups marked ``full_only`` unless the config runs them); ``summary``, if
    given, makes one more table (a rich renderable) from the family's results; ``estimate`` says
    what it runs and how long it takes, for the plan printed before a run."""

    key: str
    title: str
    build: Callable[[Config, ExitStack], list[Group]]
    summary: Callable[[list[GroupResult]], Any] | None = None
    estimate: Estimate = field(default_factory=lambda: Estimate(groups=1))


def have(package: str) -> bool:
    """True if ``package`` can be imported (peers that are missing are listed as skipped)."""
    return importlib.util.find_spec(package) is not None


def skipped(name: str, package: str, note: str = "") -> Candidate:
    return Candidate(name, None, "peer", note, skip=f"{package} is not installed")


def noop() -> None:
    """The thread work: nothing, so that only the hop is measured."""


async def noop_coro() -> None:
    """The coroutine work: nothing, so that only the crossing is measured."""


# -- timing loops -----------------------------------------------------------------------------------


async def time_each(n: int, op: Callable[[], Awaitable[object]]) -> list[float]:
    """``n`` singly-timed ``await op()``; seconds each."""
    out = [0.0] * n
    for i in range(n):
        t0 = perf_counter()
        await op()
        out[i] = perf_counter() - t0
    return out


async def time_gather(n: int, op: Callable[[], Awaitable[object]]) -> list[float]:
    """One timed ``asyncio.gather`` of ``n`` concurrent ``op()``; seconds per call."""
    t0 = perf_counter()
    await asyncio.gather(*[op() for _ in range(n)])
    return [(perf_counter() - t0) / n]


def time_each_sync(n: int, op: Callable[[], object]) -> list[float]:
    """``n`` singly-timed ``op()`` in the calling thread; seconds each."""
    out = [0.0] * n
    for i in range(n):
        t0 = perf_counter()
        op()
        out[i] = perf_counter() - t0
    return out


class BenchLoop:
    """An asyncio loop in a thread of its own, its root task alive until the context exits."""

    def __init__(self, name: str = "bench-loop") -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "BenchLoop used outside its context"
        return self._loop

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the benchmark event loop did not start")
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        stop = self._stop
        if stop is not None:
            self.loop.call_soon_threadsafe(stop.set)
        self._thread.join(30)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (a hang becomes a TimeoutError)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(BLOCK_TIMEOUT)

    def block(self, fn: Callable[[int], Coroutine[Any, Any, list[float]]]) -> Block:
        """A block that runs the coroutine function ``fn(n)`` on the loop."""
        return lambda n: self.run(fn(n))


# -- running and summarising ------------------------------------------------------------------------


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class CandidateResult:
    name: str
    role: Role
    note: str
    status: Literal["ok", "skipped", "error"] = "ok"
    reason: str = ""
    samples: list[float] = field(default_factory=list)
    block_medians: list[float] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples and self.status == "ok" else None

    def summary(self, floor_median: float | None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "role": self.role, "status": self.status}
        if self.note:
            out["note"] = self.note
        if self.reason:
            out["reason"] = self.reason
        median = self.median
        if median is not None:
            values = sorted(self.samples)
            out.update(
                median=median,
                p90=_quantile(values, 0.9),
                ratio=median / floor_median if floor_median else None,
                block_median_min=min(self.block_medians),
                block_median_max=max(self.block_medians),
                blocks=len(self.block_medians),
                block_medians=self.block_medians,
                samples=len(self.samples),
            )
        return out


@dataclass
class GroupResult:
    family: str
    group: Group
    results: list[CandidateResult]
    seconds: float

    @property
    def floor_median(self) -> float | None:
        for r in self.results:
            if r.name == self.group.floor:
                return r.median
        return None

    def summaries(self) -> list[dict[str, Any]]:
        floor = self.floor_median
        return [r.summary(floor) for r in self.results]

    def to_json(self) -> dict[str, Any]:
        g = self.group
        return {
            "family": self.family,
            "group": g.title,
            "kind": g.kind,
            "unit": g.unit,
            "floor": g.floor,
            "ops_per_block": g.ops,
            "rounds": g.rounds,
            "note": g.note,
            "seconds": round(self.seconds, 2),
            "candidates": self.summaries(),
        }


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def run_group(family: str, group: Group, rng: random.Random, advance: Callable[[], None]) -> GroupResult:
    """Warm every candidate up once, then run ``group.rounds`` shuffled rounds of one block each."""
    started = perf_counter()
    results = {c.name: CandidateResult(c.name, c.role, c.note) for c in group.candidates}
    active = []
    for c in group.candidates:
        if c.block is None:
            results[c.name].status = "skipped"
            results[c.name].reason = c.skip
        else:
            active.append(c)

    def one(c: Candidate, n: int, keep: bool) -> None:
        res = results[c.name]
        if res.status != "ok":
            return
        assert c.block is not None
        gc.collect()
        try:
            samples = c.block(n)
        except Exception as exc:  # a failing candidate is reported, and the others go on
            res.status, res.reason = "error", _error_text(exc)
            return
        if keep:
            res.samples.extend(samples)
            res.block_medians.append(statistics.median(samples))

    if group.kind != "memory":
        for c in active:  # warm-up: start pools and threads, fill caches; not kept
            one(c, max(group.ops // 10, 5), keep=False)
            advance()
    for _ in range(group.rounds):
        order = list(active)
        rng.shuffle(order)
        for c in order:
            one(c, group.ops, keep=True)
            advance()
    return GroupResult(family, group, [results[c.name] for c in group.candidates], perf_counter() - started)


def blocks_in(group: Group) -> int:
    """How many blocks :func:`run_group` runs (for the progress display)."""
    active = sum(c.block is not None for c in group.candidates)
    return active * (group.rounds + (group.kind != "memory"))


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def environment() -> dict[str, Any]:
    """Where the figures come from: Python, CPUs, package versions, the asyncbridge commit."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    affinity = getattr(os, "sched_getaffinity", None)
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--", "asyncbridge")
    return {
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity(0)) if affinity is not None else os.cpu_count(),
        "packages": versions,
        "git_commit": commit,
        "asyncbridge_modified": bool(dirty) if dirty is not None else None,
    }
