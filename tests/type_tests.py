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
    assert_type(ab.gather(crunch.delay(1), fetch_later.delay(2)), ab.Result[tuple[int, str]])
    assert_type(ab.race(crunch.delay(1)), ab.Result[int])
    assert_type(crunch.delay(1).then(str), ab.Result[str])


def celery_task_uses() -> None:
    from celery import Celery
    from celery.canvas import Signature

    app = Celery("shop")

    @ab.task(engine=app, name="shop.resize")
    def resize_far(path: str, width: int) -> bytes:
        return path.encode() * width

    assert_type(resize_far.name, str)
    assert_type(resize_far.apply_async(("a.png", 2), countdown=1), ab.Result[bytes])
    assert_type(resize_far.apply_async(kwargs={"path": "a.png", "width": 2}), ab.Result[bytes])
    assert_type(resize_far.s("a.png"), Signature)  # partial, as Celery's: a chain gives the rest
    assert_type(resize_far.si("a.png", 2), Signature)
    resize_far.si("a.png")  # type: ignore[call-arg]
    resize_far.si("a.png", "2")  # type: ignore[arg-type]
    assert_type(crunch.name, str)
    assert_type(fetch_later.apply_async((1,)), ab.Result[str])


async def composition_uses(fut: cf.Future[float], loop_fut: asyncio.Future[bytes]) -> None:
    """gather, race, then, as_completed and wait carry the members' types, as asyncio's own do."""
    a, b = ab.run_in_thread(resize, "a", width=1), ab.spawn(fetch(1))
    assert_type(ab.gather(a, b), ab.Result[tuple[bytes, str]])
    assert_type(ab.gather(a, b, fut, loop_fut), ab.Result[tuple[bytes, str, float, bytes]])
    assert_type(await ab.gather(a, fetch(2)), tuple[bytes, str])
    assert_type(
        ab.gather(a, b, return_exceptions=True), ab.Result[tuple[bytes | BaseException, str | BaseException]]
    )
    assert_type(ab.gather(*[a, a, a, a, a, a]), ab.Result[list[bytes]])
    assert_type(ab.race(a, b), ab.Result[bytes | str])
    assert_type(ab.race(fetch(1), fetch(2)), ab.Result[str])
    assert_type(a.then(len), ab.Result[int])
    assert_type(a.then(lambda data: fetch(len(data))), ab.Result[str])
    assert_type(await a.then(len), int)
    for h in ab.as_completed([a, a]):
        assert_type(h, ab.Result[bytes])
    for coro_h in ab.as_completed([fetch(1), fetch(2)]):  # coroutines are spawned: handles come out
        assert_type(coro_h, ab.Result[str])
    async for mixed in ab.as_completed([a, b]):  # invariant Result: mixed value types join as Any
        assert_type(mixed, ab.Result[Any])
    for f in ab.as_completed([fut]):
        assert_type(f, cf.Future[float])
    assert_type(ab.wait([a, a]), ab.Result[tuple[set[ab.Result[bytes]], set[ab.Result[bytes]]]])
    a.then(resize)  # type: ignore[arg-type]
