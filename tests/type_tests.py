"""Checked by mypy --strict, never run (the name does not match test_*.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from typing import assert_type

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
