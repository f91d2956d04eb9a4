"""Checked by mypy --strict, never run (the name does not match test_*.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from typing import Any, assert_type

import asyncbridge as ab


def resize(path: str, *, width: int) -> bytes:
    return path.encode() * width


async def fetch(n: int) -> str:
    return str(n)


def sync_uses() -> None:
    h = ab.run_in_thread(resize, "a.png", width=64)
    assert_type(h, ab.Result[bytes])
    assert_type(h.get(), bytes)
    assert_type(h.get(1.0), bytes)
    assert_type(h.get(propagate=False), bytes | BaseException)
    assert_type(h.result(), bytes)
    assert_type(h.state, ab.State)
    assert_type(h.id, str)
    assert_type(ab.spawn(fetch(1)), ab.Result[str])
    assert_type(ab.wrap(fetch(1)), ab.Result[str])
    fut: cf.Future[int] = cf.Future()
    assert_type(ab.wrap(fut), ab.Result[int])
    assert_type(ab.wrap(h), ab.Result[bytes])
    ab.run_in_thread(resize, 3, width=64)  # type: ignore[arg-type]
    ab.run_in_thread(resize, "a.png")  # type: ignore[call-arg]
    ab.spawn(fetch)  # type: ignore[arg-type]


async def async_uses(loop_fut: asyncio.Future[float]) -> None:
    assert_type(await ab.run_in_thread(resize, "a", width=1), bytes)
    assert_type(await ab.wrap(loop_fut), float)
    assert_type(await ab.shield(ab.spawn(fetch(2))), str)


@ab.task
def crunch(n: int) -> int:
    return n * 2


@ab.task(engine="process", timeout=30, retry=ab.Retry(attempts=3))
def crunch_far(n: int) -> int:
    return n * 2


@ab.task
async def fetch_later(n: int) -> str:
    return str(n)


def task_uses() -> None:
    assert_type(crunch(2), int)  # inline, as before
    assert_type(crunch.delay(2), ab.Result[int])
    assert_type(crunch_far.delay(2), ab.Result[int])
    assert_type(fetch_later.delay(3), ab.Result[str])
    crunch.delay("2")  # type: ignore[arg-type]
    fetch_later.delay()  # type: ignore[call-arg]
    assert_type(ab.run_in_process(resize, "a", width=2), ab.Result[bytes])
    assert_type(ab.gather(crunch.delay(1), fetch_later.delay(2)), ab.Result[list[Any]])
    assert_type(ab.race(crunch.delay(1)), ab.Result[Any])
    assert_type(crunch.delay(1).then(str), ab.Result[Any])
