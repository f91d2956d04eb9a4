"""wrap(): one door for every kind of work, and a clear error for anything else."""
# mypy: disable-error-code="comparison-overlap,unreachable,func-returns-value"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read,
# and use `lambda: (a(), b())` to do two things in one callback)

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from typing import Any

import pytest

import asyncbridge as ab


def test_a_result_is_returned_as_is() -> None:
    h: ab.Result[int] = ab.Result()
    assert ab.wrap(h) is h


def test_wrapping_the_same_future_twice_gives_handles_that_agree() -> None:
    fut: cf.Future[str] = cf.Future()
    a, b = ab.wrap(fut), ab.wrap(fut)
    assert a.id != b.id
    fut.set_result("same")
    assert a.get(0) == b.get(0) == "same"
    fut2: cf.Future[str] = cf.Future()
    c, d = ab.wrap(fut2), ab.wrap(fut2)
    assert c.cancel()
    assert c.state is d.state is ab.State.REVOKED


def test_a_coroutine_is_spawned() -> None:
    async def seven() -> int:
        return 7

    assert ab.wrap(seven()).get(10) == 7


@pytest.mark.parametrize(
    ("obj", "name"),
    [(3, "int"), ("s", "str"), (None, "NoneType"), (object(), "object"), ([cf.Future()], "list")],
)
def test_anything_else_is_a_type_error_naming_it(obj: Any, name: str) -> None:
    with pytest.raises(TypeError, match=f"wrap\\(\\) cannot wrap a {name}; it accepts an asyncio Future"):
        ab.wrap(obj)


def test_a_coroutine_function_gets_a_hint() -> None:
    async def job() -> None:
        pass

    with pytest.raises(TypeError, match="call it first"):
        ab.wrap(job)


def test_a_generator_is_not_a_coroutine() -> None:
    def gen() -> Any:
        yield 1

    with pytest.raises(TypeError, match="cannot wrap a generator"):
        ab.wrap(gen())


def test_asyncio_future_and_task_are_accepted() -> None:
    async def main() -> None:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(1)
        assert ab.wrap(fut).get() == 1

    asyncio.run(main())
